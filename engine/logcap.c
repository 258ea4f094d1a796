/*
 * logcap: sinks and redaction; see logcap.h. One mutex per sink keeps lines
 * from several worker threads whole.
 */
// SPDX-License-Identifier: MIT
#define _DEFAULT_SOURCE
#include "logcap.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct mt_sink {
    FILE *file;
    bool to_stdout;
    int min_level;
    pthread_mutex_t lock;
};

int mt_log_level_parse(const char *name)
{
    if (name == NULL) {
        return -1;
    }
    if (strcasecmp(name, "debug") == 0) {
        return MT_LOG_DEBUG;
    }
    if (strcasecmp(name, "info") == 0) {
        return MT_LOG_INFO;
    }
    if (strcasecmp(name, "warning") == 0 || strcasecmp(name, "warn") == 0) {
        return MT_LOG_WARNING;
    }
    if (strcasecmp(name, "error") == 0) {
        return MT_LOG_ERROR;
    }
    return -1;
}

const char *mt_log_level_name(int level)
{
    switch (level) {
    case MT_LOG_DEBUG:
        return "debug";
    case MT_LOG_WARNING:
        return "warning";
    case MT_LOG_ERROR:
        return "error";
    default:
        return "info";
    }
}

int mt_sink_open(mt_sink **out, const char *file_path, bool to_stdout, int min_level, mt_err *err)
{
    *out = NULL;
    mt_sink *s = calloc(1, sizeof *s);
    if (s == NULL) {
        return mt_err_set(err, MT_ENOMEM, "out of memory opening the log sink");
    }
    if (file_path != NULL) {
        s->file = fopen(file_path, "a");
        if (s->file == NULL) {
            int e = errno;
            free(s);
            return mt_err_set(err, MT_EIO,
                              "cannot open log file %s: %s; check the path in the config's "
                              "log.file",
                              file_path, strerror(e));
        }
        setvbuf(s->file, NULL, _IOLBF, 0);
    }
    s->to_stdout = to_stdout;
    s->min_level = min_level;
    pthread_mutex_init(&s->lock, NULL);
    *out = s;
    return MT_OK;
}

void mt_sink_close(mt_sink *s)
{
    if (s == NULL) {
        return;
    }
    if (s->file != NULL) {
        fclose(s->file);
    }
    pthread_mutex_destroy(&s->lock);
    free(s);
}

// One line per entry, and no terminal control sequences from task text:
// line breaks and other control bytes are written as escapes.
static int append_escaped(mt_buf *out, const char *s)
{
    int rc = MT_OK;
    for (; *s && rc == MT_OK; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\n') {
            rc = mt_buf_append(out, "\\n", 2);
        } else if (c == '\r') {
            rc = mt_buf_append(out, "\\r", 2);
        } else if ((c < 0x20 && c != '\t') || c == 0x7f) {
            rc = mt_buf_printf(out, "\\x%02x", c);
        } else {
            rc = mt_buf_append(out, s, 1);
        }
    }
    return rc;
}

int mt_sink_format(const mt_sink_entry *e, mt_buf *out)
{
    double whole = floor(e->time);
    time_t t = (time_t)whole;
    int ms = (int)((e->time - whole) * 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char stamp[64];
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    char level[16];
    snprintf(level, sizeof level, "%s", mt_log_level_name(e->level));
    for (char *p = level; *p; p++) {
        *p = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    }
    int rc = mt_buf_printf(out, "%s.%03dZ %-7s ", stamp, ms, level);
    if (rc == MT_OK && e->id != NULL) {
        rc = mt_buf_append(out, "[", 1);
        if (rc == MT_OK) {
            rc = append_escaped(out, e->task ? e->task : "?");
        }
        if (rc == MT_OK) {
            rc = mt_buf_printf(out, " %s #%d] ", e->id, e->attempt);
        }
    }
    if (rc == MT_OK) {
        rc = append_escaped(out, e->message ? e->message : "");
    }
    if (rc == MT_OK && e->extras_json != NULL && strcmp(e->extras_json, "{}") != 0) {
        rc = mt_buf_append(out, " ", 1);
        if (rc == MT_OK) {
            rc = append_escaped(out, e->extras_json);
        }
    }
    return rc;
}

void mt_sink_write(mt_sink *s, const mt_sink_entry *e)
{
    if (s == NULL || e->level < s->min_level || (s->file == NULL && !s->to_stdout)) {
        return;
    }
    mt_buf line;
    mt_buf_init(&line, false);
    if (mt_sink_format(e, &line) == MT_OK && mt_buf_append(&line, "\n", 1) == MT_OK) {
        pthread_mutex_lock(&s->lock);
        if (s->file != NULL) {
            fwrite(line.data, 1, line.len, s->file);
        }
        if (s->to_stdout) {
            fwrite(line.data, 1, line.len, stdout);
            fflush(stdout);
        }
        pthread_mutex_unlock(&s->lock);
    }
    mt_buf_clear(&line);
}

int mt_redact(const char *text, size_t len, const mt_span *secrets, size_t n, mt_buf *out)
{
    static const char mark[] = "[redacted]";
    size_t i = 0, plain_from = 0;
    while (i < len) {
        size_t best = 0;
        for (size_t k = 0; k < n; k++) {
            size_t m = secrets[k].n;
            if (m > best && m <= len - i && memcmp(text + i, secrets[k].p, m) == 0) {
                best = m;
            }
        }
        if (best == 0) {
            i++;
            continue;
        }
        int rc = mt_buf_append(out, text + plain_from, i - plain_from);
        if (rc == MT_OK) {
            rc = mt_buf_append(out, mark, sizeof mark - 1);
        }
        if (rc != MT_OK) {
            return rc;
        }
        i += best;
        plain_from = i;
    }
    return mt_buf_append(out, text + plain_from, len - plain_from);
}
