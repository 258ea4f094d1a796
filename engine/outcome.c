/*
 * outcome: one-allocation deep copies of outcomes; see outcome.h.
 */
// SPDX-License-Identifier: MIT
#include "outcome.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static size_t str_size(const char *s)
{
    return s != NULL ? strlen(s) + 1 : 0;
}

// Bytes needed for the strings of one outcome and its logs.
static size_t strings_size(const mt_outcome *o)
{
    size_t total = str_size(o->id) + str_size(o->error) + str_size(o->traceback);
    for (size_t i = 0; i < o->nlogs; i++) {
        total += str_size(o->logs[i].level) + str_size(o->logs[i].message) +
                 str_size(o->logs[i].extras_json);
    }
    return total;
}

static const char *put(char **cursor, const char *s)
{
    if (s == NULL) {
        return NULL;
    }
    size_t n = strlen(s) + 1;
    char *d = *cursor;
    memcpy(d, s, n);
    *cursor += n;
    return d;
}

mt_outcome *mt_outcomes_dup(const mt_outcome *outs, size_t n)
{
    size_t nlogs = 0, strings = 0;
    for (size_t i = 0; i < n; i++) {
        nlogs += outs[i].nlogs;
        strings += strings_size(&outs[i]);
    }
    size_t head = n * sizeof(mt_outcome) + nlogs * sizeof(mt_log_entry);
    if (n == 0 || head / sizeof(mt_log_entry) < nlogs || SIZE_MAX - head < strings) {
        return NULL;
    }
    mt_outcome *copy = malloc(head + strings);
    if (copy == NULL) {
        return NULL;
    }
    mt_log_entry *logs = (mt_log_entry *)(copy + n);
    char *cursor = (char *)(logs + nlogs);
    for (size_t i = 0; i < n; i++) {
        const mt_outcome *o = &outs[i];
        copy[i] = *o;
        copy[i].id = put(&cursor, o->id);
        copy[i].error = put(&cursor, o->error);
        copy[i].traceback = put(&cursor, o->traceback);
        copy[i].logs = o->nlogs > 0 ? logs : NULL;
        for (size_t k = 0; k < o->nlogs; k++) {
            logs[k] = o->logs[k];
            logs[k].level = put(&cursor, o->logs[k].level);
            logs[k].message = put(&cursor, o->logs[k].message);
            logs[k].extras_json = put(&cursor, o->logs[k].extras_json);
        }
        logs += o->nlogs;
    }
    return copy;
}
