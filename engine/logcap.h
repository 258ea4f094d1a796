/*
 * logcap: log levels, the sinks that task log entries go to (a file in a
 * one-line grep-friendly format, and stdout), and redaction of secret
 * argument strings. Knows no library; the sink is thread-safe.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_LOGCAP_H
#define MT_LOGCAP_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "err.h"

enum { MT_LOG_DEBUG = 10, MT_LOG_INFO = 20, MT_LOG_WARNING = 30, MT_LOG_ERROR = 40 };

// "debug", "info", "warning" (or "warn"), "error" -> level; -1 otherwise.
int mt_log_level_parse(const char *name);
// Canonical lower-case name; "info" for unknown values.
const char *mt_log_level_name(int level);

typedef struct mt_sink mt_sink;

// Opens the sinks: file_path (appended; NULL for none) and/or stdout, each
// receiving entries at or above min_level. MT_EIO naming the file.
int mt_sink_open(mt_sink **out, const char *file_path, bool to_stdout, int min_level, mt_err *err);
void mt_sink_close(mt_sink *s);  // NULL is a no-op

typedef struct mt_sink_entry {
    double time;
    int level;
    const char *task;  // may be NULL outside a task
    const char *id;    // may be NULL outside a task
    int attempt;
    const char *message;
    const char *extras_json;  // may be NULL
} mt_sink_entry;

// Writes one line per entry, newlines in the message escaped:
// 2026-12-03T16:40:01.123Z INFO  [charge_payment 3f2a... #1] message {"k":1}
// Thread-safe; write errors are ignored (logging must not fail a task).
void mt_sink_write(mt_sink *s, const mt_sink_entry *e);

// Formats the line above into out (no trailing newline). For tests.
int mt_sink_format(const mt_sink_entry *e, mt_buf *out);

// A borrowed byte string.
typedef struct mt_span {
    const char *p;
    size_t n;
} mt_span;

// Appends text to out with every verbatim occurrence of any secret replaced
// by "[redacted]"; at each position the longest matching secret wins.
// Empty secrets are ignored.
int mt_redact(const char *text, size_t len, const mt_span *secrets, size_t n, mt_buf *out);

#endif
