/*
 * outcome: deep copies of task outcomes (mt_outcome with its strings and
 * log entries) in one allocation, so that a worker thread can hand the
 * results of its Lua state to the thread that commits them. Knows only
 * store.h's types.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_OUTCOME_H
#define MT_OUTCOME_H

#include <stddef.h>

#include "store.h"

// Copies n outcomes, their logs and every string into one block; the
// returned array is the start of that block. Caller frees with free().
// NULL on out of memory.
mt_outcome *mt_outcomes_dup(const mt_outcome *outs, size_t n);

#endif
