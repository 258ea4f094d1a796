/*
 * store: the durable queue on SQLite. Owns the schema (version 1), every SQL
 * statement of the project, and the mapping of SQLite result codes to MT_E...
 * codes with messages that name the file. Must not know Lua, crypto or
 * MessagePack: payloads and tokens are opaque. Called by worker.c, lua_api.c
 * and the CLI through store.h.
 *
 * Every statement is prepared once at open and reused. Writes run inside
 * BEGIN IMMEDIATE so that several processes on one file queue on the write
 * lock (busy_timeout) instead of failing on a read-to-write lock upgrade.
 */
// SPDX-License-Identifier: MIT
#define _DEFAULT_SOURCE  // nanosleep, clock_gettime
#include "store.h"

#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "buf.h"
#include "store_int.h"

#define SCHEMA_VERSION  1
#define DEFAULT_BUSY_MS 5000

// The hot path (claim, finish, insert, get by id) must never scan the table:
// tasks_due serves claim and next_run_at, tasks_running serves recovery, and
// the id UNIQUE index serves everything by id. Every index costs each insert
// and status change, so there are no more. An index on status was tried and
// dropped: it cost ~20% of claim+finish throughput, and without statistics
// the planner preferred it to tasks_due and sorted every pending row. Counts
// and listing therefore scan, which is fine off the hot path.
static const char schema_sql[] =
    "CREATE TABLE tasks ("
    " seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, task TEXT NOT NULL,"
    " status INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " retry_base INTEGER NOT NULL DEFAULT 0, payload BLOB, encrypted_payload TEXT,"
    " created_at REAL NOT NULL, run_at REAL NOT NULL, started_at REAL, finished_at REAL,"
    " error TEXT, traceback TEXT, owner TEXT, retries INTEGER, delay REAL, backoff REAL,"
    " max_delay REAL, jitter REAL, timeout REAL, requeue_on_interrupt INTEGER, redact INTEGER,"
    " CHECK ((payload IS NULL) <> (encrypted_payload IS NULL)));"
    "CREATE INDEX tasks_due ON tasks(run_at, seq) WHERE status = 0;"
    "CREATE INDEX tasks_running ON tasks(owner) WHERE status = 1;"
    "CREATE TABLE task_logs ("
    " seq INTEGER PRIMARY KEY, task_seq INTEGER NOT NULL REFERENCES tasks(seq),"
    " attempt INTEGER, time REAL, level TEXT, message TEXT, extras TEXT);"
    "CREATE INDEX task_logs_task ON task_logs(task_seq);"
    "PRAGMA user_version = 1;";

// Version, table count and how many of our tables exist, in one read.
static const char version_sql[] = "SELECT (SELECT user_version FROM pragma_user_version),"
                                  " (SELECT count(*) FROM sqlite_master WHERE type = 'table'),"
                                  " (SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                                  "  AND name IN ('tasks', 'task_logs'))";

// Column order shared by every statement that fills an mt_task (fill_task).
// A task claimed ahead by `moontask run` but not started yet is RUNNING in
// the table and PENDING to everyone who looks (it has not begun).
#define SHOWN_STATUS "(CASE WHEN status = 1 AND started_at IS NULL THEN 0 ELSE status END)"

#define TASK_COLS                                                                 \
    "seq, id, task, status, attempts, retry_base, payload, encrypted_payload, "   \
    "created_at, run_at, started_at, finished_at, error, traceback, owner, "      \
    "retries, delay, backoff, max_delay, jitter, timeout, requeue_on_interrupt, " \
    "redact"


static const char *const stmt_sql[NSTMT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_INSERT] = "INSERT INTO tasks (id, task, status, payload, encrypted_payload, created_at,"
                 " run_at, retries, delay, backoff, max_delay, jitter, timeout,"
                 " requeue_on_interrupt, redact)"
                 " VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    // INDEXED BY turns "claim never scans" from a planner choice into an
    // error at prepare time. The subquery walks tasks_due in order, but
    // RETURNING order is unspecified, so claim sorts the rows itself.
    [S_CLAIM] = "UPDATE tasks SET status = 1, attempts = attempts + 1, started_at = ?1,"
                " owner = ?2 WHERE seq IN (SELECT seq FROM tasks INDEXED BY tasks_due"
                " WHERE status = 0 AND run_at <= ?3 ORDER BY run_at, seq LIMIT ?4)"
                " RETURNING " TASK_COLS,
    [S_FINISH] = "UPDATE tasks SET status = ?2, finished_at = ?3, run_at = coalesce(?4, run_at),"
                 " error = ?5, traceback = ?6 WHERE id = ?1 AND status = 1",
    // Claim-ahead (the dispatcher): not started yet, so neither attempts nor
    // started_at change until a start is recorded (nullif(?1, ?1) is NULL).
    [S_CLAIM_AHEAD] = "UPDATE tasks SET status = 1, started_at = nullif(?1, ?1), owner = ?2"
                      " WHERE seq IN (SELECT seq FROM tasks INDEXED BY tasks_due"
                      " WHERE status = 0 AND run_at <= ?3 ORDER BY run_at, seq LIMIT ?4)"
                      " RETURNING " TASK_COLS,
    [S_START] = "UPDATE tasks SET attempts = attempts + 1, started_at = ?2"
                " WHERE seq = ?1 AND status = 1 AND started_at IS NULL",
    [S_RELEASE] = "UPDATE tasks SET status = 0, owner = NULL"
                  " WHERE seq = ?1 AND status = 1 AND started_at IS NULL",
    // Claimed ahead by a dead engine but never started: simply due again.
    [S_RESTORE_UNSTARTED] = "UPDATE tasks INDEXED BY tasks_running SET status = 0, owner = NULL"
                            " WHERE status = 1 AND owner IS ?1 AND started_at IS NULL",
    [S_FINISH_SEQ] = "UPDATE tasks SET status = ?2, finished_at = ?3,"
                     " run_at = coalesce(?4, run_at), error = ?5, traceback = ?6"
                     " WHERE seq = ?1 AND status = 1",
    // Gives back a claimed task that never started, as if it was never claimed.
    [S_UNCLAIM] = "UPDATE tasks SET status = 0, attempts = attempts - 1, owner = NULL,"
                  " started_at = CASE WHEN attempts = 1 THEN NULL ELSE started_at END"
                  " WHERE id = ?1 AND status = 1",
    // PENDING tasks that --drain must wait for: due now, or waiting for a retry.
    [S_WAITING] = "SELECT count(*) FROM tasks INDEXED BY tasks_due WHERE status = 0"
                  " AND (run_at <= ?1 OR attempts > retry_base)",
    [S_FIND] = "SELECT seq, status FROM tasks WHERE id = ?1",
    [S_LOG_ADD] = "INSERT INTO task_logs (task_seq, attempt, time, level, message, extras)"
                  " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [S_GET] = "SELECT " TASK_COLS " FROM tasks WHERE id = ?1",
    [S_LIST] = "SELECT " TASK_COLS " FROM tasks WHERE (?2 IS NULL OR task = ?2)"
               " ORDER BY seq LIMIT ?3",
    [S_LIST_STATUS] = "SELECT " TASK_COLS " FROM tasks WHERE " SHOWN_STATUS " = ?1"
                      " AND (?2 IS NULL OR task = ?2) ORDER BY seq LIMIT ?3",
    [S_LOGS] = "SELECT attempt, time, level, message, extras FROM task_logs"
               " WHERE task_seq = ?1 ORDER BY seq",
    [S_RETRY] = "UPDATE tasks SET status = 0, run_at = ?2, retry_base = attempts,"
                " finished_at = NULL WHERE id = ?1 AND status IN (3, 4)",
    [S_OWNERS] = "SELECT DISTINCT owner FROM tasks INDEXED BY tasks_running WHERE status = 1",
    [S_REQUEUE] = "UPDATE tasks INDEXED BY tasks_running SET status = 0, run_at = ?2,"
                  " error = ?3, traceback = NULL"
                  " WHERE status = 1 AND owner IS ?1 AND requeue_on_interrupt",
    [S_INTERRUPT] = "UPDATE tasks INDEXED BY tasks_running SET status = 4, finished_at = ?2,"
                    " error = ?3, traceback = NULL WHERE status = 1 AND owner IS ?1",
    [S_COUNTS] = "SELECT " SHOWN_STATUS ", count(*) FROM tasks GROUP BY 1",
    [S_NEXT] = "SELECT min(run_at) FROM tasks INDEXED BY tasks_due WHERE status = 0",
    [S_COUNT_ENC] = "SELECT count(*) FROM tasks WHERE status <> 2"
                    " AND encrypted_payload IS NOT NULL",
    [S_REWRITE_GET] = "SELECT " TASK_COLS " FROM tasks WHERE seq > ?1"
                      " AND status IN (0, 3, 4) ORDER BY seq LIMIT ?2",
    [S_REWRITE_SET] = "UPDATE tasks SET encrypted_payload = ?2, payload = NULL WHERE seq = ?1",
};


static const char *const status_names[MT_NSTATUS] = {
    "PENDING", "RUNNING", "SUCCESS", "FAILED", "INTERRUPTED",
};

const char *mt_status_name(int status)
{
    return status >= 0 && status < MT_NSTATUS ? status_names[status] : "UNKNOWN";
}

int mt_status_parse(const char *name)
{
    for (int i = 0; name != NULL && i < MT_NSTATUS; i++) {
        const char *a = name, *b = status_names[i];
        while (*a != 0 && toupper((unsigned char)*a) == *b) {
            a++;
            b++;
        }
        if (*a == 0 && *b == 0) {
            return i;
        }
    }
    return -1;
}

void mt_task_clear(mt_task *t)
{
    // The payload may be plaintext arguments; don't leave it in freed memory.
    mt_wipe(t->payload, t->payload_len);
    free(t->payload);
    free(t->task);
    free(t->token);
    free(t->error);
    free(t->traceback);
    free(t->owner);
    memset(t, 0, sizeof *t);
}

// Turns a failed SQLite call into an MT code and a message naming the file.
// Reads sqlite3_errmsg first, since the next call on the connection
// replaces it.
int mt_sq_db_err(const mt_store *st, int rc, const char *what, mt_err *err)
{
    const char *msg = sqlite3_errmsg(st->db);
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return mt_err_set(err, MT_EBUSY,
                          "database %s is locked by another process (waited %d ms); "
                          "try again or raise busy_timeout",
                          st->path, st->busy_ms);
    case SQLITE_READONLY:
        if (st->readonly) {
            return mt_err_set(err, MT_EREADONLY, "cannot %s: database %s was opened read-only",
                              what, st->path);
        }
        return mt_err_set(err, MT_EREADONLY,
                          "cannot write to database %s: %s; check the file and folder "
                          "permissions",
                          st->path, msg);
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
        return mt_err_set(err, MT_ECORRUPT,
                          "cannot %s: database %s is damaged (%s); restore it from a backup", what,
                          st->path, msg);
    case SQLITE_NOMEM:
        return mt_err_set(err, MT_ENOMEM, "out of memory trying to %s on database %s", what,
                          st->path);
    case SQLITE_CONSTRAINT:
        return mt_err_set(err, MT_EINVAL, "cannot %s in database %s: %s", what, st->path, msg);
    case SQLITE_FULL:
        return mt_err_set(err, MT_EIO, "cannot %s: database %s: %s; free some disk space", what,
                          st->path, msg);
    default:
        return mt_err_set(err, MT_EIO, "cannot %s: database %s: %s", what, st->path, msg);
    }
}

// Steps a statement that returns no rows and resets it.
int mt_sq_run(mt_store *st, sqlite3_stmt *s, const char *what, mt_err *err)
{
    int rc = sqlite3_step(s);
    int ret = rc == SQLITE_DONE ? MT_OK : mt_sq_db_err(st, rc, what, err);
    sqlite3_reset(s);  // repeats the step's error, already reported
    return ret;
}

int mt_sq_begin(mt_store *st, const char *what, mt_err *err)
{
    return mt_sq_run(st, st->stmt[S_BEGIN], what, err);
}

int mt_sq_commit(mt_store *st, const char *what, mt_err *err)
{
    return mt_sq_run(st, st->stmt[S_COMMIT], what, err);
}

int mt_store_check_writable(mt_store *st, mt_err *err)
{
    if (sqlite3_db_readonly(st->db, "main") == 1) {
        return mt_err_set(err, MT_EREADONLY,
                          "cannot write to database %s: it is read-only (check the file's and "
                          "its folder's permissions)",
                          st->path);
    }
    int ret = mt_sq_begin(st, "check that the database is writable", err);
    if (ret == MT_OK) {
        ret = mt_sq_run(st, st->stmt[S_ROLLBACK], "check that the database is writable", err);
    }
    return ret;
}

// Undoes a failed transaction. SQLite may already have rolled back (after
// SQLITE_FULL, NOMEM, ...), and a failing ROLLBACK has nothing left to undo,
// so its result only matters to SQLite, not to the caller's error.
void mt_sq_rollback(mt_store *st)
{
    if (!sqlite3_get_autocommit(st->db)) {
        sqlite3_step(st->stmt[S_ROLLBACK]);
        sqlite3_reset(st->stmt[S_ROLLBACK]);
    }
}

int mt_sq_bind_err(mt_store *st, const char *what, mt_err *err)
{
    return mt_sq_db_err(st, sqlite3_errcode(st->db), what, err);
}

// Copies a text column; NULL stays NULL.
int mt_sq_col_dup(sqlite3_stmt *s, int i, char **out)
{
    *out = NULL;
    if (sqlite3_column_type(s, i) == SQLITE_NULL) {
        return MT_OK;
    }
    const unsigned char *v = sqlite3_column_text(s, i);
    size_t n = (size_t)sqlite3_column_bytes(s, i);
    char *c = v != NULL ? malloc(n + 1) : NULL;
    if (c == NULL) {
        return MT_ENOMEM;
    }
    memcpy(c, v, n);
    c[n] = 0;
    *out = c;
    return MT_OK;
}

// Copies a blob column. An empty blob still yields a non-NULL pointer, so
// that a task with a zero-byte payload is told apart from a token task.
static int col_blob(sqlite3_stmt *s, int i, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (sqlite3_column_type(s, i) == SQLITE_NULL) {
        return MT_OK;
    }
    const void *v = sqlite3_column_blob(s, i);
    size_t n = (size_t)sqlite3_column_bytes(s, i);
    uint8_t *c = malloc(n > 0 ? n : 1);
    if (c == NULL || (v == NULL && n > 0)) {
        free(c);
        return MT_ENOMEM;
    }
    if (n > 0) {
        memcpy(c, v, n);
    }
    *out = c;
    *len = n;
    return MT_OK;
}

static double col_dbl(sqlite3_stmt *s, int i, double dflt)
{
    return sqlite3_column_type(s, i) == SQLITE_NULL ? dflt : sqlite3_column_double(s, i);
}

// Fills t (overwritten, caller clears) from a row in TASK_COLS order.
int mt_sq_fill_task(sqlite3_stmt *s, mt_task *t)
{
    memset(t, 0, sizeof *t);
    const unsigned char *id = sqlite3_column_text(s, C_ID);
    if (id != NULL) {
        strncpy(t->id, (const char *)id, sizeof t->id - 1);
    }
    t->seq = sqlite3_column_int64(s, C_SEQ);
    t->status = sqlite3_column_int(s, C_STATUS);
    if (t->status == MT_RUNNING && sqlite3_column_type(s, C_STARTED) == SQLITE_NULL) {
        t->status = MT_PENDING;  // claimed ahead, not started: see SHOWN_STATUS
    }
    t->attempts = sqlite3_column_int(s, C_ATTEMPTS);
    t->retry_base = sqlite3_column_int(s, C_RETRY_BASE);
    t->created_at = sqlite3_column_double(s, C_CREATED);
    t->run_at = sqlite3_column_double(s, C_RUN_AT);
    t->started_at = sqlite3_column_double(s, C_STARTED);
    t->finished_at = sqlite3_column_double(s, C_FINISHED);
    mt_policy d = mt_policy_default();
    mt_policy *p = &t->policy;
    p->retries = (int)col_dbl(s, C_RETRIES, d.retries);
    p->delay = col_dbl(s, C_DELAY, d.delay);
    p->backoff = col_dbl(s, C_BACKOFF, d.backoff);
    p->max_delay = col_dbl(s, C_MAX_DELAY, d.max_delay);
    p->jitter = col_dbl(s, C_JITTER, d.jitter);
    p->timeout = col_dbl(s, C_TIMEOUT, d.timeout);
    p->requeue_on_interrupt = col_dbl(s, C_REQUEUE, d.requeue_on_interrupt) != 0;
    p->redact = col_dbl(s, C_REDACT, d.redact) != 0;
    int ret = mt_sq_col_dup(s, C_TASK, &t->task);
    if (ret == MT_OK) {
        ret = col_blob(s, C_PAYLOAD, &t->payload, &t->payload_len);
    }
    if (ret == MT_OK) {
        ret = mt_sq_col_dup(s, C_TOKEN, &t->token);
    }
    if (ret == MT_OK) {
        ret = mt_sq_col_dup(s, C_ERROR, &t->error);
    }
    if (ret == MT_OK) {
        ret = mt_sq_col_dup(s, C_TRACEBACK, &t->traceback);
    }
    if (ret == MT_OK) {
        ret = mt_sq_col_dup(s, C_OWNER, &t->owner);
    }
    if (ret != MT_OK) {
        mt_task_clear(t);
    }
    return ret;
}

// Runs a one-row query (PRAGMA or SELECT) used only at open or rarely, and
// returns its first ncol integer columns.
int mt_sq_query_ints(mt_store *st, const char *sql, int *out, int ncol, const char *what,
                     mt_err *err)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(st->db, sql, -1, &s, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(s);
    }
    int ret = MT_OK;
    if (rc == SQLITE_ROW) {
        for (int i = 0; i < ncol; i++) {
            out[i] = sqlite3_column_int(s, i);
        }
    } else {
        ret = mt_sq_db_err(st, rc, what, err);
    }
    sqlite3_finalize(s);
    return ret;
}

int mt_sq_exec(mt_store *st, const char *sql, const char *what, mt_err *err)
{
    int rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? MT_OK : mt_sq_db_err(st, rc, what, err);
}

// Creates the schema unless another process did so since we looked.
static int create_schema(mt_store *st, mt_err *err)
{
    int ret = mt_sq_exec(st, "BEGIN IMMEDIATE", "create the schema", err);
    int v[3] = {0};
    if (ret == MT_OK) {
        ret = mt_sq_query_ints(st, version_sql, v, 3, "read the schema version", err);
    }
    if (ret == MT_OK && v[0] == 0 && v[1] == 0) {
        ret = mt_sq_exec(st, schema_sql, "create the schema", err);
    }
    if (ret == MT_OK) {
        ret = mt_sq_exec(st, "COMMIT", "create the schema", err);
    }
    if (ret != MT_OK && !sqlite3_get_autocommit(st->db)) {
        sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);  // nothing else to undo
    }
    return ret;
}

// Accepts an empty file (creating the schema unless read-only) or a file
// holding exactly our schema version; anything else is someone else's.
static int check_schema(mt_store *st, mt_err *err)
{
    int v[3] = {0};
    int ret = mt_sq_query_ints(st, version_sql, v, 3, "read the schema version", err);
    if (ret == MT_OK && v[0] == 0 && v[1] == 0 && !st->readonly) {
        ret = create_schema(st, err);
        if (ret == MT_OK) {
            ret = mt_sq_query_ints(st, version_sql, v, 3, "read the schema version", err);
        }
    }
    if (ret != MT_OK || (v[0] == SCHEMA_VERSION && v[2] == 2)) {
        return ret;
    }
    const char *hint = v[0] > SCHEMA_VERSION ? "it was written by a newer moontask; upgrade "
                                               "moontask or point it at another file"
                       : v[1] == 0           ? "it is empty; open it once without read-only "
                                               "mode to create the schema"
                                             : "it holds other data; point moontask at another "
                                               "file";
    return mt_err_set(err, MT_ECORRUPT, "%s is not a moontask database (schema version %d); %s",
                      st->path, v[0], hint);
}

// Waits for another connection's write lock. SQLite's own busy_timeout
// handler sleeps whole milliseconds (1, 2, 5, 10 ... 100 ms) while our write
// transactions last tens of microseconds, so under contention it turned a
// 50 us wait into a 10 ms one: poll in short sleeps first, then longer.
static int busy_wait(void *ud, int count)
{
    mt_store *st = ud;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (count == 0) {
        st->busy_since = now;
    }
    double waited_ms = (double)(now.tv_sec - st->busy_since.tv_sec) * 1e3 +
                       (double)(now.tv_nsec - st->busy_since.tv_nsec) / 1e6;
    if (waited_ms >= st->busy_ms) {
        return 0;
    }
    long us = count < 20 ? 20 : count < 200 ? 200 : 2000;
    struct timespec nap = {.tv_sec = 0, .tv_nsec = us * 1000};
    nanosleep(&nap, NULL);
    return 1;
}

// After each commit. SQLite's own auto-checkpoint is PASSIVE: with several
// connections writing back to back (producers, the dispatcher) some reader
// always holds the log, the WAL never restarts, and it grew to gigabytes in
// the concurrent benchmark. Past WAL_RESTART_PAGES a RESTART checkpoint
// waits (busy handler) for readers to leave so that the log starts over.
enum { WAL_PASSIVE_PAGES = 1000, WAL_RESTART_PAGES = 8000 };

static int wal_hook(void *ud, sqlite3 *db, const char *name, int pages)
{
    (void)ud;
    if (pages >= WAL_RESTART_PAGES) {
        sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_RESTART, NULL, NULL);
    } else if (pages >= WAL_PASSIVE_PAGES) {
        sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    }
    return SQLITE_OK;  // a checkpoint that could not finish is retried after a later commit
}

// Connection settings, then the schema. The first read of a file that is
// not SQLite at all fails here with SQLITE_NOTADB.
static int configure(mt_store *st, const mt_store_opts *opts, mt_err *err)
{
    int rc = sqlite3_extended_result_codes(st->db, 1);
    if (rc == SQLITE_OK) {
        rc = sqlite3_busy_handler(st->db, busy_wait, st);
    }
    if (rc == SQLITE_OK) {
        sqlite3_wal_hook(st->db, wal_hook, NULL);  // replaces the PASSIVE auto-checkpoint
    }
    if (rc != SQLITE_OK) {
        return mt_sq_db_err(st, rc, "configure the connection", err);
    }
    // The schema check comes first: a file that is not ours is refused before
    // anything (such as its journal mode) is changed.
    int ret = check_schema(st, err);
    if (ret == MT_OK && !st->readonly) {
        // In-memory databases answer "memory"; either way the mode is fine.
        ret = mt_sq_exec(st, "PRAGMA journal_mode = WAL", "switch to WAL mode", err);
    }
    if (ret == MT_OK) {
        const char *sync =
            opts->full_durability ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL";
        ret = mt_sq_exec(st, sync, "set the durability level", err);
    }
    if (ret == MT_OK) {
        // 16 MiB of page cache per connection: the default 2 MiB made the hot
        // path re-read index pages with pread on every claim.
        ret = mt_sq_exec(st, "PRAGMA cache_size = -16384", "set the page cache size", err);
    }
    if (ret == MT_ECORRUPT && (sqlite3_errcode(st->db) & 0xff) == SQLITE_NOTADB) {
        ret = mt_err_set(err, MT_ECORRUPT,
                         "%s is not a moontask database (not a SQLite file: %s); point "
                         "moontask at another file or move this one away",
                         st->path, sqlite3_errmsg(st->db));
    }
    return ret;
}

static int prepare_all(mt_store *st, mt_err *err)
{
    for (int i = 0; i < NSTMT; i++) {
        int rc = sqlite3_prepare_v3(st->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                                    &st->stmt[i], NULL);
        if (rc != SQLITE_OK) {
            return mt_sq_db_err(st, rc, "prepare statements", err);
        }
    }
    return MT_OK;
}

int mt_store_open(mt_store **out, const char *path, const mt_store_opts *opts, mt_err *err)
{
    *out = NULL;
    if (path == NULL) {
        return mt_err_set(err, MT_EINVAL, "no database path given");
    }
    mt_store_opts dflt = {0};
    if (opts == NULL) {
        opts = &dflt;
    }
    mt_store *st = calloc(1, sizeof *st);
    size_t plen = strlen(path);
    char *p = malloc(plen + 1);
    if (st == NULL || p == NULL) {
        free(st);
        free(p);
        return mt_err_set(err, MT_ENOMEM, "out of memory opening database %s", path);
    }
    memcpy(p, path, plen + 1);
    st->path = p;
    st->readonly = opts->readonly;
    st->busy_ms = opts->busy_timeout_ms > 0 ? opts->busy_timeout_ms : DEFAULT_BUSY_MS;
    // One mt_store is used by one thread at a time, so SQLite's own
    // per-connection mutex is pure overhead.
    int flags = SQLITE_OPEN_NOMUTEX |
                (st->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    int rc = sqlite3_open_v2(path, &st->db, flags, NULL);
    int ret = MT_OK;
    if (st->db == NULL) {
        ret = mt_err_set(err, MT_ENOMEM, "out of memory opening database %s", path);
    } else if (rc != SQLITE_OK) {
        const char *hint = st->readonly ? "check that the file exists and is readable"
                                        : "check that the folder exists and is writable";
        ret = mt_err_set(err, (rc & 0xff) == SQLITE_NOMEM ? MT_ENOMEM : MT_EIO,
                         "cannot open database %s: %s; %s", path, sqlite3_errmsg(st->db), hint);
    } else {
        ret = configure(st, opts, err);
    }
    if (ret == MT_OK) {
        ret = prepare_all(st, err);
    }
    if (ret != MT_OK) {
        mt_store_close(st);
        return ret;
    }
    *out = st;
    return MT_OK;
}

void mt_store_close(mt_store *st)
{
    if (st == NULL) {
        return;
    }
    for (int i = 0; i < NSTMT; i++) {
        sqlite3_finalize(st->stmt[i]);
    }
    // All statements are finalised, so close cannot report SQLITE_BUSY; an
    // I/O error at this point has no one left to tell.
    sqlite3_close(st->db);
    free(st->path);
    free(st);
}

// Binds one new task to S_INSERT. The caller's buffers are borrowed for the
// whole call and every parameter is rebound per row, so SQLITE_STATIC is
// safe and saves a copy per column on the insert path.
static bool bind_new(sqlite3_stmt *s, const mt_task_new *t)
{
    const mt_policy *p = &t->policy;
    return sqlite3_bind_text(s, 1, t->id, -1, SQLITE_STATIC) == SQLITE_OK &&
           sqlite3_bind_text(s, 2, t->task, -1, SQLITE_STATIC) == SQLITE_OK &&
           sqlite3_bind_blob64(s, 3, t->payload, t->payload_len, SQLITE_STATIC) == SQLITE_OK &&
           sqlite3_bind_text(s, 4, t->token, -1, SQLITE_STATIC) == SQLITE_OK &&
           sqlite3_bind_double(s, 5, t->created_at) == SQLITE_OK &&
           sqlite3_bind_double(s, 6, t->run_at) == SQLITE_OK &&
           sqlite3_bind_int(s, 7, p->retries) == SQLITE_OK &&
           sqlite3_bind_double(s, 8, p->delay) == SQLITE_OK &&
           sqlite3_bind_double(s, 9, p->backoff) == SQLITE_OK &&
           sqlite3_bind_double(s, 10, p->max_delay) == SQLITE_OK &&
           sqlite3_bind_double(s, 11, p->jitter) == SQLITE_OK &&
           sqlite3_bind_double(s, 12, p->timeout) == SQLITE_OK &&
           sqlite3_bind_int(s, 13, p->requeue_on_interrupt) == SQLITE_OK &&
           sqlite3_bind_int(s, 14, p->redact) == SQLITE_OK;
}

static int check_new(const mt_task_new *t, mt_err *err)
{
    size_t idlen = t->id != NULL ? strlen(t->id) : 0;
    if (idlen == 0 || idlen > 36) {
        return mt_err_set(err, MT_EINVAL, "task id must be 1 to 36 characters");
    }
    if (t->task == NULL || t->task[0] == 0) {
        return mt_err_set(err, MT_EINVAL, "task %s has no task name", t->id);
    }
    if ((t->payload == NULL) == (t->token == NULL)) {
        return mt_err_set(err, MT_EINVAL, "task %s must have exactly one of payload and token",
                          t->id);
    }
    return MT_OK;
}

// Inserts one row; a constraint failure is almost always a duplicate id,
// so the message names the task.
static int insert_one(mt_store *st, const mt_task_new *t, mt_err *err)
{
    sqlite3_stmt *s = st->stmt[S_INSERT];
    if (!bind_new(s, t)) {
        return mt_sq_bind_err(st, "insert tasks", err);
    }
    int rc = sqlite3_step(s);
    int ret = MT_OK;
    if ((rc & 0xff) == SQLITE_CONSTRAINT) {
        ret = mt_err_set(err, MT_EINVAL, "cannot insert task %s into %s: %s", t->id, st->path,
                         sqlite3_errmsg(st->db));
    } else if (rc != SQLITE_DONE) {
        ret = mt_sq_db_err(st, rc, "insert tasks", err);
    }
    sqlite3_reset(s);  // repeats the step's error, already reported
    return ret;
}

int mt_store_insert(mt_store *st, const mt_task_new *tasks, size_t n, mt_err *err)
{
    for (size_t i = 0; i < n; i++) {
        int ret = check_new(&tasks[i], err);
        if (ret != MT_OK) {
            return ret;
        }
    }
    if (n == 0) {
        return MT_OK;
    }
    int ret = mt_sq_begin(st, "insert tasks", err);
    for (size_t i = 0; ret == MT_OK && i < n; i++) {
        ret = insert_one(st, &tasks[i], err);
    }
    if (ret == MT_OK) {
        ret = mt_sq_commit(st, "insert tasks", err);
    }
    if (ret != MT_OK) {
        mt_sq_rollback(st);
    }
    return ret;
}

// A claimed row with its sort key; RETURNING hands rows back in no
// particular order.
typedef struct claimed {
    double run_at;
    int64_t seq;
    mt_task t;
} claimed;

static int claimed_cmp(const void *pa, const void *pb)
{
    const claimed *a = pa, *b = pb;
    if (a->run_at != b->run_at) {
        return a->run_at < b->run_at ? -1 : 1;
    }
    return (a->seq > b->seq) - (a->seq < b->seq);
}

// Steps the claim UPDATE ... RETURNING into c; *got rows are filled even on
// failure, for the caller to clear.
static int claim_rows(mt_store *st, double now, const char *owner, bool ahead, claimed *c,
                      size_t max, size_t *got, mt_err *err)
{
    sqlite3_stmt *s = st->stmt[ahead ? S_CLAIM_AHEAD : S_CLAIM];
    sqlite3_int64 limit = max > INT64_MAX ? INT64_MAX : (sqlite3_int64)max;
    if (sqlite3_bind_double(s, 1, now) != SQLITE_OK ||
        sqlite3_bind_text(s, 2, owner, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_double(s, 3, now) != SQLITE_OK ||
        sqlite3_bind_int64(s, 4, limit) != SQLITE_OK) {
        return mt_sq_bind_err(st, "claim tasks", err);
    }
    int ret = MT_OK;
    int rc = SQLITE_DONE;
    while (*got < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        claimed *r = &c[*got];
        r->run_at = sqlite3_column_double(s, C_RUN_AT);
        r->seq = sqlite3_column_int64(s, C_SEQ);
        if (mt_sq_fill_task(s, &r->t) != MT_OK) {
            ret = mt_err_set(err, MT_ENOMEM, "out of memory claiming tasks from %s", st->path);
            break;
        }
        (*got)++;
    }
    if (ret == MT_OK && *got < max && rc != SQLITE_DONE) {
        ret = mt_sq_db_err(st, rc, "claim tasks", err);
    }
    sqlite3_reset(s);
    return ret;
}

// Looks a task up by id; *found says whether it exists (no error if not).
int mt_sq_find_task(mt_store *st, const char *id, int64_t *seq, int *status, bool *found,
                    mt_err *err)
{
    sqlite3_stmt *s = st->stmt[S_FIND];
    *found = false;
    if (sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC) != SQLITE_OK) {
        return mt_sq_bind_err(st, "look up a task", err);
    }
    int rc = sqlite3_step(s);
    int ret = MT_OK;
    if (rc == SQLITE_ROW) {
        *found = true;
        *seq = sqlite3_column_int64(s, 0);
        *status = sqlite3_column_int(s, 1);
    } else if (rc != SQLITE_DONE) {
        ret = mt_sq_db_err(st, rc, "look up a task", err);
    }
    sqlite3_reset(s);
    return ret;
}

int mt_sq_insert_logs(mt_store *st, int64_t seq, const mt_log_entry *logs, size_t n, mt_err *err)
{
    sqlite3_stmt *s = st->stmt[S_LOG_ADD];
    int ret = MT_OK;
    for (size_t i = 0; ret == MT_OK && i < n; i++) {
        const mt_log_entry *l = &logs[i];
        if (sqlite3_bind_int64(s, 1, seq) != SQLITE_OK ||
            sqlite3_bind_int(s, 2, l->attempt) != SQLITE_OK ||
            sqlite3_bind_double(s, 3, l->time) != SQLITE_OK ||
            sqlite3_bind_text(s, 4, l->level, -1, SQLITE_STATIC) != SQLITE_OK ||
            sqlite3_bind_text(s, 5, l->message, -1, SQLITE_STATIC) != SQLITE_OK ||
            sqlite3_bind_text(s, 6, l->extras_json, -1, SQLITE_STATIC) != SQLITE_OK) {
            ret = mt_sq_bind_err(st, "store task logs", err);
        } else {
            ret = mt_sq_run(st, s, "store task logs", err);
        }
    }
    return ret;
}

static int unclaim_one(mt_store *st, const mt_outcome *o, mt_err *err)
{
    sqlite3_stmt *s = st->stmt[S_UNCLAIM];
    if (sqlite3_bind_text(s, 1, o->id, -1, SQLITE_STATIC) != SQLITE_OK) {
        return mt_sq_bind_err(st, "give back an unstarted task", err);
    }
    return mt_sq_run(st, s, "give back an unstarted task", err);
}

static int seq_step(mt_store *st, int which, int64_t seq, const double *at, const char *what,
                    mt_err *err)
{
    sqlite3_stmt *s = st->stmt[which];
    if (sqlite3_bind_int64(s, 1, seq) != SQLITE_OK ||
        (at != NULL && sqlite3_bind_double(s, 2, *at) != SQLITE_OK)) {
        return mt_sq_bind_err(st, what, err);
    }
    return mt_sq_run(st, s, what, err);
}

static int finish_one(mt_store *st, const mt_outcome *o, mt_err *err)
{
    if (o->release) {
        return seq_step(st, S_RELEASE, o->seq, NULL, "give back an unstarted task", err);
    }
    if (o->unclaim) {
        return unclaim_one(st, o, err);
    }
    sqlite3_stmt *s = st->stmt[o->seq > 0 ? S_FINISH_SEQ : S_FINISH];
    bool retry = o->status == MT_PENDING;
    // A retry keeps finished_at NULL and moves run_at; a final status stamps
    // finished_at and leaves run_at (NULL in ?4 keeps the column).
    int rc = o->seq > 0 ? sqlite3_bind_int64(s, 1, o->seq)
                        : sqlite3_bind_text(s, 1, o->id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) {
        rc = sqlite3_bind_int(s, 2, o->status);
    }
    if (rc == SQLITE_OK) {
        rc = retry ? sqlite3_bind_null(s, 3) : sqlite3_bind_double(s, 3, o->finished_at);
    }
    if (rc == SQLITE_OK) {
        rc = retry ? sqlite3_bind_double(s, 4, o->run_at) : sqlite3_bind_null(s, 4);
    }
    if (rc != SQLITE_OK || sqlite3_bind_text(s, 5, o->error, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_text(s, 6, o->traceback, -1, SQLITE_STATIC) != SQLITE_OK) {
        return mt_sq_bind_err(st, "record task results", err);
    }
    int ret = mt_sq_run(st, s, "record task results", err);
    if (ret != MT_OK || o->nlogs == 0) {
        return ret;
    }
    int64_t seq = o->seq;
    int status = 0;
    bool found = seq > 0;
    if (!found) {
        ret = mt_sq_find_task(st, o->id, &seq, &status, &found, err);
    }
    if (ret == MT_OK && found) {  // logs of a task deleted meanwhile have no home
        ret = mt_sq_insert_logs(st, seq, o->logs, o->nlogs, err);
    }
    return ret;
}

static int check_outcomes(const mt_outcome *outs, size_t n, mt_err *err)
{
    for (size_t i = 0; i < n; i++) {
        const mt_outcome *o = &outs[i];
        if (o->id == NULL || o->status < 0 || o->status >= MT_NSTATUS || o->status == MT_RUNNING ||
            (o->nlogs > 0 && o->logs == NULL)) {
            return mt_err_set(err, MT_EINVAL, "invalid outcome for task %s",
                              o->id != NULL ? o->id : "(no id)");
        }
    }
    return MT_OK;
}

int mt_store_round(mt_store *st, mt_round *r, mt_err *err)
{
    r->claimed = 0;
    if (r->max > 0 && (r->owner == NULL || r->rows == NULL)) {
        return mt_err_set(err, MT_EINVAL, "claim needs an owner and a row array");
    }
    int ret = check_outcomes(r->outs, r->nouts, err);
    if (ret != MT_OK || (r->nouts == 0 && r->max == 0 && r->nstarts == 0)) {
        return ret;
    }
    claimed *c = NULL;
    if (r->max > 0) {
        c = r->max <= SIZE_MAX / sizeof *c ? malloc(r->max * sizeof *c) : NULL;
        if (c == NULL) {
            return mt_err_set(err, MT_ENOMEM, "out of memory claiming %zu tasks", r->max);
        }
    }
    size_t got = 0;
    ret = mt_sq_begin(st, "record results and claim tasks", err);
    for (size_t i = 0; ret == MT_OK && i < r->nstarts; i++) {
        ret = seq_step(st, S_START, r->starts[i].seq, &r->starts[i].at, "record a task start", err);
    }
    for (size_t i = 0; ret == MT_OK && i < r->nouts; i++) {
        ret = finish_one(st, &r->outs[i], err);
    }
    if (ret == MT_OK && r->max > 0) {
        ret = claim_rows(st, r->now, r->owner, r->claim_ahead, c, r->max, &got, err);
    }
    if (ret == MT_OK) {
        ret = mt_sq_commit(st, "record results and claim tasks", err);
    }
    if (ret != MT_OK) {
        mt_sq_rollback(st);
        for (size_t i = 0; i < got; i++) {
            mt_task_clear(&c[i].t);
        }
        got = 0;
    }
    if (got > 0) {
        qsort(c, got, sizeof *c, claimed_cmp);
        for (size_t i = 0; i < got; i++) {
            r->rows[i] = c[i].t;
        }
        r->claimed = got;
    }
    free(c);
    return ret;
}

int mt_store_claim(mt_store *st, double now, const char *owner, mt_task *rows, size_t max,
                   size_t *n, mt_err *err)
{
    if (owner == NULL || (rows == NULL && max > 0)) {
        *n = 0;
        return mt_err_set(err, MT_EINVAL, "claim needs an owner and a row array");
    }
    mt_round r = {.now = now, .owner = owner, .rows = rows, .max = max};
    int ret = mt_store_round(st, &r, err);
    *n = r.claimed;
    return ret;
}

int mt_store_finish(mt_store *st, const mt_outcome *outs, size_t n, mt_err *err)
{
    mt_round r = {.outs = outs, .nouts = n};
    return mt_store_round(st, &r, err);
}
