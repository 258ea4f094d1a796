/*
 * store_int: what store.c (open, schema, insert, claim, the group-commit
 * round) and store_admin.c (inspection, retry, recovery, counts, key
 * rotation) share: the connection struct, the prepared-statement and column
 * numbers, and the statement helpers. Only store*.c include this header.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_STORE_INT_H
#define MT_STORE_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <sqlite3.h>

#include "store.h"

enum {
    C_SEQ,
    C_ID,
    C_TASK,
    C_STATUS,
    C_ATTEMPTS,
    C_RETRY_BASE,
    C_PAYLOAD,
    C_TOKEN,
    C_CREATED,
    C_RUN_AT,
    C_STARTED,
    C_FINISHED,
    C_ERROR,
    C_TRACEBACK,
    C_OWNER,
    C_RETRIES,
    C_DELAY,
    C_BACKOFF,
    C_MAX_DELAY,
    C_JITTER,
    C_TIMEOUT,
    C_REQUEUE,
    C_REDACT
};

enum {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_INSERT,
    S_CLAIM,
    S_CLAIM_AHEAD,
    S_START,
    S_RELEASE,
    S_RESTORE_UNSTARTED,
    S_FINISH,
    S_FINISH_SEQ,
    S_UNCLAIM,
    S_WAITING,
    S_FIND,
    S_LOG_ADD,
    S_GET,
    S_LIST,
    S_LIST_STATUS,
    S_LOGS,
    S_RETRY,
    S_OWNERS,
    S_REQUEUE,
    S_INTERRUPT,
    S_COUNTS,
    S_NEXT,
    S_COUNT_ENC,
    S_REWRITE_GET,
    S_REWRITE_SET,
    NSTMT
};

struct mt_store {
    sqlite3 *db;
    char *path;
    int busy_ms;
    struct timespec busy_since;
    bool readonly;
    sqlite3_stmt *stmt[NSTMT];
};

// Maps a SQLite failure to an MT_E code with a message naming the file.
int mt_sq_db_err(const mt_store *st, int rc, const char *what, mt_err *err);
int mt_sq_run(mt_store *st, sqlite3_stmt *s, const char *what, mt_err *err);
int mt_sq_begin(mt_store *st, const char *what, mt_err *err);
int mt_sq_commit(mt_store *st, const char *what, mt_err *err);
void mt_sq_rollback(mt_store *st);
int mt_sq_bind_err(mt_store *st, const char *what, mt_err *err);
int mt_sq_col_dup(sqlite3_stmt *s, int i, char **out);
int mt_sq_fill_task(sqlite3_stmt *s, mt_task *t);
int mt_sq_query_ints(mt_store *st, const char *sql, int *out, int ncol, const char *what,
                     mt_err *err);
int mt_sq_exec(mt_store *st, const char *sql, const char *what, mt_err *err);
int mt_sq_find_task(mt_store *st, const char *id, int64_t *seq, int *status, bool *found,
                    mt_err *err);
int mt_sq_insert_logs(mt_store *st, int64_t seq, const mt_log_entry *logs, size_t n, mt_err *err);

#endif
