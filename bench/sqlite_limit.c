/*
 * sqlite_limit: the machine's own limit, measured on the same disk in the
 * same run as the moontask scenarios: raw SQLite inserting a row and
 * updating it twice (the writes of add, claim and finish), grouped into
 * transactions three ways. The table has the shape of moontask's tasks
 * table where it costs writes: a 36-character text key with a UNIQUE
 * index and a partial index on due rows. Nothing of moontask is used, so
 * every moontask figure can be read as a fraction of what SQLite can do.
 */
// SPDX-License-Identifier: MIT
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "bench.h"

static const char schema_sql[] =
    "PRAGMA journal_mode = WAL;"
    "CREATE TABLE t (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, status INTEGER NOT NULL,"
    " payload BLOB, run_at REAL NOT NULL, finished_at REAL);"
    "CREATE INDEX t_due ON t(run_at, seq) WHERE status = 0;";

enum { S_INSERT, S_CLAIM, S_FINISH, S_BEGIN, S_COMMIT, S_COUNT };

static const char *const stmt_sql[S_COUNT] = {
    [S_INSERT] = "INSERT INTO t (seq, id, status, payload, run_at) VALUES (?1, ?2, 0, ?3, ?4)",
    [S_CLAIM] = "UPDATE t SET status = 1 WHERE seq = ?1",
    [S_FINISH] = "UPDATE t SET status = 2, finished_at = ?2 WHERE seq = ?1",
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

const char *bench_sqlite_version(void)
{
    return sqlite3_libversion();
}

// Steps and resets one statement; false with the message in r on failure.
static bool step(sqlite3 *db, sqlite3_stmt *s, bench_result *r)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
        snprintf(r->error, sizeof r->error, "sqlite: %s", sqlite3_errmsg(db));
        return false;
    }
    return true;
}

// One row's three writes; transactions around them are the caller's.
static bool row(sqlite3 *db, sqlite3_stmt **st, long i, bool txn_each, bench_result *r)
{
    char id[64];
    snprintf(id, sizeof id, "%08lx-0000-4000-8000-%012lx", (unsigned long)i, (unsigned long)i);
    static const unsigned char payload[] = {0x90};  // an empty MessagePack array
    sqlite3_bind_int64(st[S_INSERT], 1, i + 1);
    sqlite3_bind_text(st[S_INSERT], 2, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st[S_INSERT], 3, payload, sizeof payload, SQLITE_STATIC);
    sqlite3_bind_double(st[S_INSERT], 4, (double)i);
    sqlite3_bind_int64(st[S_CLAIM], 1, i + 1);
    sqlite3_bind_int64(st[S_FINISH], 1, i + 1);
    sqlite3_bind_double(st[S_FINISH], 2, (double)i);
    static const int order[] = {S_INSERT, S_CLAIM, S_FINISH};
    for (size_t k = 0; k < sizeof order / sizeof order[0]; k++) {
        if (txn_each && !step(db, st[S_BEGIN], r)) {
            return false;
        }
        if (!step(db, st[order[k]], r)) {
            return false;
        }
        if (txn_each && !step(db, st[S_COMMIT], r)) {
            return false;
        }
    }
    return true;
}

static bool run_rows(sqlite3 *db, sqlite3_stmt **st, long rows, bench_txn txn, bench_result *r)
{
    bool one = txn == BENCH_TXN_ONE, per_row = txn == BENCH_TXN_PER_ROW;
    if (one && !step(db, st[S_BEGIN], r)) {
        return false;
    }
    for (long i = 0; i < rows; i++) {
        if (per_row && !step(db, st[S_BEGIN], r)) {
            return false;
        }
        if (!row(db, st, i, txn == BENCH_TXN_PER_STMT, r)) {
            return false;
        }
        if (per_row && !step(db, st[S_COMMIT], r)) {
            return false;
        }
    }
    return !one || step(db, st[S_COMMIT], r);
}

void bench_run_sqlite(const char *path, long rows, bench_txn txn, bool full, bench_result *r)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st[S_COUNT] = {0};
    unlink(path);
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        snprintf(r->error, sizeof r->error, "sqlite: cannot open %s: %s", path,
                 db ? sqlite3_errmsg(db) : "out of memory");
        goto out;
    }
    if (sqlite3_exec(db, schema_sql, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL", NULL,
                     NULL, NULL) != SQLITE_OK) {
        snprintf(r->error, sizeof r->error, "sqlite: schema: %s", sqlite3_errmsg(db));
        goto out;
    }
    for (int k = 0; k < S_COUNT; k++) {
        if (sqlite3_prepare_v2(db, stmt_sql[k], -1, &st[k], NULL) != SQLITE_OK) {
            snprintf(r->error, sizeof r->error, "sqlite: prepare: %s", sqlite3_errmsg(db));
            goto out;
        }
    }
    double t0 = mono_now();
    if (!run_rows(db, st, rows, txn, r)) {
        goto out;
    }
    double t1 = mono_now();
    r->tasks = (double)rows;
    r->total_s = t1 - t0;
    r->ok = true;
out:
    for (int k = 0; k < S_COUNT; k++) {
        sqlite3_finalize(st[k]);
    }
    sqlite3_close(db);
}
