/*
 * store_admin: the store's operations off the hot path: task and log
 * inspection, manual retry, recovery of dead engines' tasks, counts, and key
 * rotation's payload rewrite. Shares the connection and statements with
 * store.c through store_int.h; knows nothing of Lua or crypto.
 */
// SPDX-License-Identifier: MIT
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "buf.h"
#include "store_int.h"

#define REWRITE_BATCH 256
#define STOPPED_WHY   "interrupted: the engine running it stopped"

int mt_store_add_logs(mt_store *st, const char *id, const mt_log_entry *logs, size_t n, mt_err *err)
{
    if (id == NULL || (n > 0 && logs == NULL)) {
        return mt_err_set(err, MT_EINVAL, "add_logs needs a task id and log entries");
    }
    int64_t seq = 0;
    int status = 0;
    bool found = false;
    int ret = mt_sq_begin(st, "store task logs", err);
    if (ret == MT_OK) {
        ret = mt_sq_find_task(st, id, &seq, &status, &found, err);
    }
    if (ret == MT_OK && !found) {
        ret = mt_err_set(err, MT_ENOTFOUND, "no task with id %s", id);
    }
    if (ret == MT_OK) {
        ret = mt_sq_insert_logs(st, seq, logs, n, err);
    }
    if (ret == MT_OK) {
        ret = mt_sq_commit(st, "store task logs", err);
    }
    if (ret != MT_OK) {
        mt_sq_rollback(st);
    }
    return ret;
}

int mt_store_get(mt_store *st, const char *id, mt_task *out, mt_err *err)
{
    memset(out, 0, sizeof *out);
    if (id == NULL) {
        return mt_err_set(err, MT_EINVAL, "no task id given");
    }
    sqlite3_stmt *s = st->stmt[S_GET];
    if (sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC) != SQLITE_OK) {
        return mt_sq_bind_err(st, "read a task", err);
    }
    int rc = sqlite3_step(s);
    int ret = MT_OK;
    if (rc == SQLITE_ROW) {
        if (mt_sq_fill_task(s, out) != MT_OK) {
            ret = mt_err_set(err, MT_ENOMEM, "out of memory reading task %s", id);
        }
    } else if (rc == SQLITE_DONE) {
        ret = mt_err_set(err, MT_ENOTFOUND, "no task with id %s", id);
    } else {
        ret = mt_sq_db_err(st, rc, "read a task", err);
    }
    sqlite3_reset(s);
    return ret;
}

// A callback that calls back into the same walk would reset the statement
// under our feet; refuse instead.
static int check_idle(sqlite3_stmt *s, const char *what, mt_err *err)
{
    if (sqlite3_stmt_busy(s)) {
        return mt_err_set(err, MT_ESTATE, "%s called from its own callback", what);
    }
    return MT_OK;
}

static int bind_filter(sqlite3_stmt *s, int status, const char *task, size_t limit)
{
    sqlite3_int64 lim = limit == 0 || limit > INT64_MAX ? -1 : (sqlite3_int64)limit;
    int rc = status >= 0 ? sqlite3_bind_int(s, 1, status) : SQLITE_OK;
    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_text(s, 2, task, -1, SQLITE_STATIC);
    }
    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int64(s, 3, lim);
    }
    return rc;
}

int mt_store_list(mt_store *st, const mt_filter *f, mt_task_cb cb, void *ud, mt_err *err)
{
    mt_filter all = {.status = -1, .task = NULL, .limit = 0};
    if (f == NULL) {
        f = &all;
    }
    if (cb == NULL || f->status < -1 || f->status >= MT_NSTATUS) {
        return mt_err_set(err, MT_EINVAL, "list needs a callback and a valid status filter");
    }
    sqlite3_stmt *s = st->stmt[f->status >= 0 ? S_LIST_STATUS : S_LIST];
    int ret = check_idle(s, "mt_store_list", err);
    if (ret != MT_OK) {
        return ret;
    }
    if (bind_filter(s, f->status, f->task, f->limit) != SQLITE_OK) {
        return mt_sq_bind_err(st, "list tasks", err);
    }
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        mt_task t;
        if (mt_sq_fill_task(s, &t) != MT_OK) {
            ret = mt_err_set(err, MT_ENOMEM, "out of memory listing tasks in %s", st->path);
            break;
        }
        ret = cb(ud, &t);
        mt_task_clear(&t);
        if (ret != 0) {
            break;
        }
    }
    if (ret == MT_OK && rc != SQLITE_DONE) {
        ret = mt_sq_db_err(st, rc, "list tasks", err);
    }
    sqlite3_reset(s);
    return ret;
}

int mt_store_logs(mt_store *st, const char *id, mt_log_cb cb, void *ud, mt_err *err)
{
    if (id == NULL || cb == NULL) {
        return mt_err_set(err, MT_EINVAL, "logs needs a task id and a callback");
    }
    sqlite3_stmt *s = st->stmt[S_LOGS];
    int64_t seq = 0;
    int status = 0;
    bool found = false;
    int ret = check_idle(s, "mt_store_logs", err);
    if (ret == MT_OK) {
        ret = mt_sq_find_task(st, id, &seq, &status, &found, err);
    }
    if (ret == MT_OK && !found) {
        ret = mt_err_set(err, MT_ENOTFOUND, "no task with id %s", id);
    }
    if (ret != MT_OK) {
        return ret;
    }
    if (sqlite3_bind_int64(s, 1, seq) != SQLITE_OK) {
        return mt_sq_bind_err(st, "read task logs", err);
    }
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        // Column pointers stay valid until the next step: borrowed as promised.
        mt_log_row row = {
            .attempt = sqlite3_column_int(s, 0),
            .time = sqlite3_column_double(s, 1),
            .level = (const char *)sqlite3_column_text(s, 2),
            .message = (const char *)sqlite3_column_text(s, 3),
            .extras_json = (const char *)sqlite3_column_text(s, 4),
        };
        ret = cb(ud, &row);
        if (ret != 0) {
            break;
        }
    }
    if (ret == MT_OK && rc != SQLITE_DONE) {
        ret = mt_sq_db_err(st, rc, "read task logs", err);
    }
    sqlite3_reset(s);
    return ret;
}

int mt_store_retry(mt_store *st, const char *id, double now, mt_err *err)
{
    if (id == NULL) {
        return mt_err_set(err, MT_EINVAL, "no task id given");
    }
    sqlite3_stmt *s = st->stmt[S_RETRY];
    if (sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_double(s, 2, now) != SQLITE_OK) {
        return mt_sq_bind_err(st, "retry a task", err);
    }
    // The guarded UPDATE is the atomic check; the lookup after it only
    // explains a refusal.
    int ret = mt_sq_run(st, s, "retry a task", err);
    if (ret != MT_OK || sqlite3_changes(st->db) > 0) {
        return ret;
    }
    int64_t seq = 0;
    int status = 0;
    bool found = false;
    ret = mt_sq_find_task(st, id, &seq, &status, &found, err);
    if (ret != MT_OK) {
        return ret;
    }
    if (!found) {
        return mt_err_set(err, MT_ENOTFOUND, "no task with id %s", id);
    }
    return mt_err_set(err, MT_ESTATE,
                      "task %s is %s; only FAILED or INTERRUPTED tasks can be retried", id,
                      mt_status_name(status));
}

// Requeues or interrupts the RUNNING tasks of one owner (NULL matches rows
// with no owner). Runs inside the caller's transaction.
static int stop_owner(mt_store *st, const char *owner, double now, const char *why,
                      int *interrupted, int *requeued, mt_err *err)
{
    sqlite3_stmt *u = st->stmt[S_RESTORE_UNSTARTED];
    if (sqlite3_bind_text(u, 1, owner, -1, SQLITE_STATIC) != SQLITE_OK) {
        return mt_sq_bind_err(st, "interrupt tasks", err);
    }
    int r0 = mt_sq_run(st, u, "give back unstarted tasks", err);
    if (r0 != MT_OK) {
        return r0;
    }
    *requeued += sqlite3_changes(st->db);
    static const int order[2] = {S_REQUEUE, S_INTERRUPT};  // requeue first: it is narrower
    int *counts[2] = {requeued, interrupted};
    for (int i = 0; i < 2; i++) {
        sqlite3_stmt *s = st->stmt[order[i]];
        if (sqlite3_bind_text(s, 1, owner, -1, SQLITE_STATIC) != SQLITE_OK ||
            sqlite3_bind_double(s, 2, now) != SQLITE_OK ||
            sqlite3_bind_text(s, 3, why, -1, SQLITE_STATIC) != SQLITE_OK) {
            return mt_sq_bind_err(st, "interrupt tasks", err);
        }
        int ret = mt_sq_run(st, s, "interrupt tasks", err);
        if (ret != MT_OK) {
            return ret;
        }
        *counts[i] += sqlite3_changes(st->db);
    }
    return MT_OK;
}

typedef struct owner_entry {
    char *name;  // NULL for RUNNING rows without an owner
    bool dead;
} owner_entry;

// Copies the distinct owners of RUNNING tasks, so that the liveness
// callback runs with no statement open (it may be slow, or use the store).
static int running_owners(mt_store *st, owner_entry **out, size_t *n, mt_err *err)
{
    sqlite3_stmt *s = st->stmt[S_OWNERS];
    owner_entry *v = NULL;
    size_t len = 0, cap = 0;
    int ret = MT_OK;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (len == cap) {
            cap = cap ? cap * 2 : 8;
            owner_entry *nv = realloc(v, cap * sizeof *v);
            if (nv == NULL) {
                ret = MT_ENOMEM;
                break;
            }
            v = nv;
        }
        v[len].dead = false;
        if (mt_sq_col_dup(s, 0, &v[len].name) != MT_OK) {
            ret = MT_ENOMEM;
            break;
        }
        len++;
    }
    if (ret == MT_ENOMEM) {
        mt_err_set(err, ret, "out of memory reading engine owners from %s", st->path);
    } else if (rc != SQLITE_DONE) {
        ret = mt_sq_db_err(st, rc, "find running tasks", err);
    }
    sqlite3_reset(s);
    *out = v;
    *n = len;
    return ret;
}

int mt_store_recover(mt_store *st, double now, mt_alive_cb alive, void *ud, int *interrupted,
                     int *requeued, mt_err *err)
{
    int ni = 0, nr = 0;
    if (alive == NULL) {
        return mt_err_set(err, MT_EINVAL, "recover needs a liveness callback");
    }
    owner_entry *owners = NULL;
    size_t n = 0;
    int ret = running_owners(st, &owners, &n, err);
    size_t ndead = 0;
    for (size_t i = 0; ret == MT_OK && i < n; i++) {
        // Nothing can be running a task with no owner.
        owners[i].dead = owners[i].name == NULL || !alive(ud, owners[i].name);
        ndead += owners[i].dead;
    }
    if (ret == MT_OK && ndead > 0) {
        ret = mt_sq_begin(st, "recover tasks", err);
        for (size_t i = 0; ret == MT_OK && i < n; i++) {
            if (owners[i].dead) {
                ret = stop_owner(st, owners[i].name, now, STOPPED_WHY, &ni, &nr, err);
            }
        }
        if (ret == MT_OK) {
            ret = mt_sq_commit(st, "recover tasks", err);
        }
        if (ret != MT_OK) {
            mt_sq_rollback(st);
            ni = nr = 0;
        }
    }
    for (size_t i = 0; i < n; i++) {
        free(owners[i].name);
    }
    free(owners);
    if (interrupted != NULL) {
        *interrupted = ni;
    }
    if (requeued != NULL) {
        *requeued = nr;
    }
    return ret;
}

int mt_store_interrupt_owner(mt_store *st, const char *owner, double now, const char *why,
                             int *interrupted, int *requeued, mt_err *err)
{
    int ni = 0, nr = 0;
    if (owner == NULL) {
        return mt_err_set(err, MT_EINVAL, "interrupt_owner needs an owner");
    }
    int ret = mt_sq_begin(st, "interrupt tasks", err);
    if (ret == MT_OK) {
        ret = stop_owner(st, owner, now, why != NULL ? why : STOPPED_WHY, &ni, &nr, err);
    }
    if (ret == MT_OK) {
        ret = mt_sq_commit(st, "interrupt tasks", err);
    }
    if (ret != MT_OK) {
        mt_sq_rollback(st);
        ni = nr = 0;
    }
    if (interrupted != NULL) {
        *interrupted = ni;
    }
    if (requeued != NULL) {
        *requeued = nr;
    }
    return ret;
}

int mt_store_counts(mt_store *st, int64_t counts[MT_NSTATUS], mt_err *err)
{
    for (int i = 0; i < MT_NSTATUS; i++) {
        counts[i] = 0;
    }
    sqlite3_stmt *s = st->stmt[S_COUNTS];
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        int status = sqlite3_column_int(s, 0);
        if (status >= 0 && status < MT_NSTATUS) {
            counts[status] = sqlite3_column_int64(s, 1);
        }
    }
    int ret = rc == SQLITE_DONE ? MT_OK : mt_sq_db_err(st, rc, "count tasks", err);
    sqlite3_reset(s);
    return ret;
}

// Steps a one-row aggregate; *isnull says whether its value is NULL.
static int aggregate(mt_store *st, int which, sqlite3_int64 *i, double *d, bool *isnull,
                     const char *what, mt_err *err)
{
    sqlite3_stmt *s = st->stmt[which];
    int rc = sqlite3_step(s);
    int ret = MT_OK;
    if (rc == SQLITE_ROW) {
        *isnull = sqlite3_column_type(s, 0) == SQLITE_NULL;
        *i = sqlite3_column_int64(s, 0);
        *d = sqlite3_column_double(s, 0);
    } else {
        ret = mt_sq_db_err(st, rc, what, err);
    }
    sqlite3_reset(s);
    return ret;
}

int mt_store_next_run_at(mt_store *st, double *at, bool *any, mt_err *err)
{
    sqlite3_int64 i = 0;
    bool isnull = true;
    *at = 0;
    int ret = aggregate(st, S_NEXT, &i, at, &isnull, "find the next due task", err);
    *any = ret == MT_OK && !isnull;
    return ret;
}

int mt_store_count_waiting(mt_store *st, double now, int64_t *n, mt_err *err)
{
    sqlite3_int64 i = 0;
    double d = 0;
    bool isnull = true;
    *n = 0;
    if (sqlite3_bind_double(st->stmt[S_WAITING], 1, now) != SQLITE_OK) {
        return mt_sq_bind_err(st, "count waiting tasks", err);
    }
    int ret = aggregate(st, S_WAITING, &i, &d, &isnull, "count waiting tasks", err);
    *n = ret == MT_OK ? i : 0;
    return ret;
}

int mt_store_count_encrypted(mt_store *st, int64_t *n, mt_err *err)
{
    sqlite3_int64 i = 0;
    double d = 0;
    bool isnull = true;
    int ret = aggregate(st, S_COUNT_ENC, &i, &d, &isnull, "count encrypted tasks", err);
    *n = ret == MT_OK ? i : 0;
    return ret;
}

typedef struct rewrite_row {
    int64_t seq;
    mt_task t;
} rewrite_row;

// Reads the next batch of rewritable rows after seq `after`. Batches keep
// memory bounded and mean no SELECT cursor is open while rows are updated.
static int rewrite_fetch(mt_store *st, int64_t after, rewrite_row *rows, size_t *n, mt_err *err)
{
    sqlite3_stmt *s = st->stmt[S_REWRITE_GET];
    *n = 0;
    if (sqlite3_bind_int64(s, 1, after) != SQLITE_OK ||
        sqlite3_bind_int(s, 2, REWRITE_BATCH) != SQLITE_OK) {
        return mt_sq_bind_err(st, "read tasks to re-encrypt", err);
    }
    int ret = MT_OK;
    int rc = SQLITE_DONE;
    while (*n < REWRITE_BATCH && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        rows[*n].seq = sqlite3_column_int64(s, C_SEQ);
        if (mt_sq_fill_task(s, &rows[*n].t) != MT_OK) {
            ret = mt_err_set(err, MT_ENOMEM, "out of memory re-encrypting tasks in %s", st->path);
            break;
        }
        (*n)++;
    }
    if (ret == MT_OK && *n < REWRITE_BATCH && rc != SQLITE_DONE) {
        ret = mt_sq_db_err(st, rc, "read tasks to re-encrypt", err);
    }
    sqlite3_reset(s);
    return ret;
}

static int rewrite_apply(mt_store *st, const rewrite_row *rows, size_t n, mt_rewrite_cb cb,
                         void *ud, int64_t *count, mt_err *err)
{
    sqlite3_stmt *s = st->stmt[S_REWRITE_SET];
    int ret = MT_OK;
    for (size_t i = 0; ret == MT_OK && i < n; i++) {
        char *token = NULL;
        int rc = cb(ud, &rows[i].t, &token);
        if (rc != MT_OK && err != NULL && err->code == rc && err->msg != NULL) {
            ret = rc;  // the callback said why, in its own words
        } else if (rc != MT_OK) {
            ret = mt_err_set(err, rc, "key rotation stopped at task %s (%s); nothing was changed",
                             rows[i].t.id, mt_strerror(rc));
        } else if (token == NULL) {
            ret = mt_err_set(err, MT_EINVAL, "key rotation got no token for task %s", rows[i].t.id);
        } else if (sqlite3_bind_int64(s, 1, rows[i].seq) != SQLITE_OK ||
                   sqlite3_bind_text(s, 2, token, -1, SQLITE_STATIC) != SQLITE_OK) {
            ret = mt_sq_bind_err(st, "re-encrypt tasks", err);
        } else {
            ret = mt_sq_run(st, s, "re-encrypt tasks", err);
            *count += ret == MT_OK;
        }
        free(token);
    }
    return ret;
}

// Rewrites every eligible row inside one transaction; rolls back on error.
static int rewrite_all(mt_store *st, mt_rewrite_cb cb, void *ud, int64_t *count, mt_err *err)
{
    rewrite_row *rows = calloc(REWRITE_BATCH, sizeof *rows);
    if (rows == NULL) {
        return mt_err_set(err, MT_ENOMEM, "out of memory re-encrypting tasks in %s", st->path);
    }
    int ret = mt_sq_begin(st, "re-encrypt tasks", err);
    int64_t after = INT64_MIN;
    while (ret == MT_OK) {
        size_t n = 0;
        ret = rewrite_fetch(st, after, rows, &n, err);
        if (ret == MT_OK && n > 0) {
            after = rows[n - 1].seq;
            ret = rewrite_apply(st, rows, n, cb, ud, count, err);
        }
        for (size_t i = 0; i < n; i++) {
            mt_task_clear(&rows[i].t);  // wipes plaintext payloads
        }
        if (n < REWRITE_BATCH) {
            break;
        }
    }
    if (ret == MT_OK) {
        ret = mt_sq_commit(st, "re-encrypt tasks", err);
    }
    if (ret != MT_OK) {
        mt_sq_rollback(st);
        *count = 0;
    }
    free(rows);
    return ret;
}

int mt_store_rewrite_payloads(mt_store *st, mt_rewrite_cb cb, void *ud, int64_t *count, mt_err *err)
{
    static const char *const secure_sql[3] = {
        "PRAGMA secure_delete = OFF", "PRAGMA secure_delete = ON", "PRAGMA secure_delete = FAST"};
    int64_t done = 0;
    if (cb == NULL) {
        return mt_err_set(err, MT_EINVAL, "key rotation needs a callback");
    }
    // secure_delete zeroes the pages and cells the old payloads leave behind
    // in the main file; it is set before BEGIN as SQLite reads it per page.
    int prior = 0;
    int ret = mt_sq_query_ints(st, "PRAGMA secure_delete", &prior, 1, "read secure_delete", err);
    bool restore = false;
    if (ret == MT_OK) {
        ret = mt_sq_exec(st, secure_sql[1], "turn on secure_delete", err);
        restore = ret == MT_OK;
    }
    if (ret == MT_OK) {
        ret = rewrite_all(st, cb, ud, &done, err);
    }
    // The WAL still holds old page images (maybe plaintext) until a TRUNCATE
    // checkpoint copies them home and empties it; a reader that pins them
    // makes the checkpoint report busy.
    int busy = 0;
    if (ret == MT_OK) {
        ret = mt_sq_query_ints(st, "PRAGMA wal_checkpoint(TRUNCATE)", &busy, 1,
                               "checkpoint the write-ahead log", err);
    }
    if (ret == MT_OK && busy != 0) {
        ret = mt_err_set(err, MT_EBUSY,
                         "re-encrypted %lld tasks, but another connection kept old copies in "
                         "the write-ahead log of %s; run the rotation again with engines stopped",
                         (long long)done, st->path);
    }
    if (restore) {
        int r = mt_sq_exec(st, secure_sql[prior >= 0 && prior <= 2 ? prior : 1],
                           "restore secure_delete", ret == MT_OK ? err : NULL);
        ret = ret == MT_OK ? r : ret;
    }
    if (count != NULL) {
        *count = done;
    }
    return ret;
}
