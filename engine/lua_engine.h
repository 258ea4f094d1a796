/*
 * lua_engine: one engine bound to one lua_State: enqueue (serialise ->
 * encrypt -> insert) and run (claim -> decrypt -> decode -> protected call
 * -> log capture -> done/retry). The only unit that knows both Lua and the
 * store/crypto headers. worker.c drives it through the Lua-free part of
 * this header.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_LUA_ENGINE_H
#define MT_LUA_ENGINE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backoff.h"
#include "err.h"
#include "fernet.h"
#include "logcap.h"
#include "store.h"

typedef struct mt_engine mt_engine;

// Settings shared by every engine of one process (parsed from the config).
typedef struct mt_engine_cfg {
    const char *database;
    mt_store_opts store;
    const mt_fernet_key *keys;  // borrowed; keys[0] encrypts, any decrypts
    size_t nkeys;
    mt_sink *sink;            // borrowed; may be NULL
    size_t mem_limit;         // bytes per task state; 0 = none
    bool virtual_clock;       // time moves only with mt_engine_advance
    const atomic_int *abort;  // forced shutdown flag; may be NULL
    mt_policy defaults;       // built-in defaults overlaid with the config's
} mt_engine_cfg;

// Counts of final outcomes this engine recorded.
typedef struct mt_engine_stats {
    int64_t succeeded;
    int64_t failed;   // FAILED or INTERRUPTED
    int64_t retried;  // attempts that failed and were rescheduled
} mt_engine_stats;

double mt_engine_now(const mt_engine *e);
void mt_engine_advance(mt_engine *e, double seconds);
mt_store *mt_engine_store(mt_engine *e);
const char *mt_engine_owner(const mt_engine *e);
mt_engine_stats mt_engine_get_stats(const mt_engine *e);

// Claims up to max runnable tasks, runs each in the engine's state and
// records their outcomes in one transaction. *ran = tasks claimed (0 when
// nothing was due). Engine-level failures (database) return an error; task
// failures are outcomes, not errors.
int mt_engine_run_batch(mt_engine *e, size_t max, size_t *ran, mt_err *err);

// Runs n rows claimed by someone else (the dispatcher of `moontask run`)
// in the engine's state. Takes ownership of the rows (they are cleared).
// *outs receives a deep copy of the n outcomes for the caller to commit
// (caller frees with free()); nothing is written to the store.
int mt_engine_run_rows(mt_engine *e, mt_task *rows, size_t n, mt_outcome **outs, mt_err *err);

// A worker engine with its own lua_State (created with mt_host_newstate)
// and its own store connection, with the task scripts loaded. Script
// errors come back as MT_EINVAL naming the script. Free with
// mt_engine_free.
int mt_engine_new_worker(const mt_engine_cfg *cfg, const char *const *scripts, size_t nscripts,
                         mt_engine **out, mt_err *err);

// Closes the store, wipes the keys copy, and closes the state if owned.
void mt_engine_free(mt_engine *e);  // NULL is a no-op

// Re-encrypts with the first key, in one transaction, the arguments of
// every task that may still run (plain payloads included). MT_EINVAL when
// no key is configured; MT_ECRYPTO naming the task when no key opens one
// (nothing is changed then). *count = tasks rewritten.
int mt_engine_rotate(mt_engine *e, int64_t *count, mt_err *err);

// Marks tasks of dead engines INTERRUPTED/PENDING (see mt_store_recover).
int mt_engine_recover(mt_engine *e, int *interrupted, int *requeued, mt_err *err);

#endif
