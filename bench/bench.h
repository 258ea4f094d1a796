/*
 * bench: what the benchmark driver (bench.c) shares with the two kinds of
 * scenario it runs: moontask scenarios written in Lua (bench_lua.c runs
 * bench.lua in a fresh lua_State) and the raw SQLite baseline
 * (sqlite_limit.c). Each scenario runs in its own forked process and hands
 * back one bench_result through a pipe, so its peak RSS is its own.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_BENCH_H
#define MT_BENCH_H

#include <stdbool.h>
#include <stddef.h>

// One scenario's figures. Fields that do not apply are NAN. Plain data
// only: it is written to a pipe as bytes by the same binary that reads it.
typedef struct bench_result {
    bool ok;
    char error[512];    // when !ok
    double tasks;       // tasks (or rows) measured
    double enqueue_s;   // time to add them all
    double run_s;       // time to execute them all (burn-down: from engine start)
    double total_s;     // first add to last completion
    double attempts;    // task attempts executed (retries scenario: 2 per task)
    double add_p50_us;  // latency of one committed add
    double add_p99_us;
    double done_p50_ms;  // add to completion
    double done_p99_ms;
    double rss_kib;       // peak RSS of the process that ran the engine (or SQLite)
    double idle_rss_kib;  // RSS of an idle engine with the tasks queued
    char note[160];
} bench_result;

// Settings of one run, the same for every scenario.
typedef struct bench_opts {
    long n;           // tasks per scenario
    int workers;      // engine worker threads
    int producers;    // concurrent scenarios: processes adding tasks
    const char *dir;  // folder for the databases (one disk for all scenarios)
} bench_opts;

// Sets every figure of r to NAN and clears the texts.
void bench_result_init(bench_result *r);

// Runs the Lua scenario fn (a function of bench.lua) with the given options
// in a new lua_State, in the calling process, and fills r. `encrypt` turns
// on argument encryption with a fresh key; `full` selects
// durability = "full". The state is closed before returning.
void bench_run_lua(const char *fn, const bench_opts *o, const char *db, bool encrypt, bool full,
                   bench_result *r);

// How the raw SQLite baseline groups its statements into transactions.
typedef enum bench_txn {
    BENCH_TXN_ONE,       // every row in one transaction
    BENCH_TXN_PER_ROW,   // insert + two updates of a row in one transaction
    BENCH_TXN_PER_STMT,  // each statement its own transaction (add, claim, finish)
} bench_txn;

// Inserts rows rows into a fresh database at path (WAL, synchronous NORMAL
// or FULL), updating each twice, grouped as txn says; fills r.
void bench_run_sqlite(const char *path, long rows, bench_txn txn, bool full, bench_result *r);

// The SQLite library version, for the report header. Borrowed, static.
const char *bench_sqlite_version(void);

#endif
