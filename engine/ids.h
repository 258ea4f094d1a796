/*
 * ids: task ids (UUID version 4 text) and the engine's owner tag that marks
 * which process claimed a task. Knows no library.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_IDS_H
#define MT_IDS_H

#include <stdbool.h>

#include "err.h"

// 36 characters + NUL, lower-case hex, from the OS CSPRNG.
int mt_uuid4(char out[37]);

// "host:pid:starttime" for this process; caller frees with free().
char *mt_owner_self(void);

// Whether the process named by an owner tag still runs. Tags from another
// host are assumed alive (we cannot tell); a reused pid is detected by its
// start time.
bool mt_owner_alive(const char *owner);

// Monotonic seconds (for deadlines) and wall-clock Unix seconds.
double mt_mono_now(void);
double mt_wall_now(void);

#endif
