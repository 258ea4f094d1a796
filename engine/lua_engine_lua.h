/*
 * lua_engine_lua: the Lua-facing half of lua_engine.h, for lua_api.c.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_LUA_ENGINE_LUA_H
#define MT_LUA_ENGINE_LUA_H

#include <lua.h>

#include "lua_engine.h"

// Bits of mt_policy fields that a table set explicitly.
enum {
    MT_SET_RETRIES = 1 << 0,
    MT_SET_DELAY = 1 << 1,
    MT_SET_BACKOFF = 1 << 2,
    MT_SET_MAX_DELAY = 1 << 3,
    MT_SET_JITTER = 1 << 4,
    MT_SET_TIMEOUT = 1 << 5,
    MT_SET_REQUEUE = 1 << 6,
    MT_SET_REDACT = 1 << 7
};

// Task options as given by a script or an enqueue call.
typedef struct mt_policy_spec {
    mt_policy p;
    unsigned set;
} mt_policy_spec;

// Reads policy options from the table at idx into spec. Keys listed in
// `extra` (NULL-terminated, may be NULL) are skipped; any other unknown key
// or a wrong type raises an error naming `what` and the key. retry_delay is
// accepted as the name of `delay` when delay_name says so. [-0, +0, v]
void mt_policy_from_table(lua_State *L, int idx, const char *what, const char *const *extra,
                          const char *delay_name, mt_policy_spec *spec);

// Applies the set fields of spec over p.
void mt_policy_overlay(mt_policy *p, const mt_policy_spec *spec);

// Creates an engine that runs tasks in L, which it does not own.
int mt_engine_open(lua_State *L, const mt_engine_cfg *cfg, mt_engine **out, mt_err *err);

// A task name: 1 to 200 bytes, no control characters (names are printed on
// terminals and in log lines).
bool mt_engine_valid_name(const char *name);

// From now on enqueue refuses task names the state's registry lacks, even
// when no task is registered at all (the engine's scripts are loaded).
void mt_engine_set_strict(mt_engine *e);

// The engine that moontask.add uses in this state (the one running the
// current task, else the last one opened), or NULL. [-0, +0, -]
mt_engine *mt_engine_current(lua_State *L);
void mt_engine_set_current(lua_State *L, mt_engine *e);

typedef struct mt_enqueue_opts {
    mt_policy_spec spec;  // overrides over the task's options
    double delay;         // seconds until the first run
    double run_at;        // absolute Unix time; 0 = use delay
} mt_enqueue_opts;

// Enqueues task with the n values at first..first+n-1 as its arguments.
// Unknown task (when any task is registered in L) -> MT_ENOTFOUND; bad
// argument -> MT_EINVAL naming the path; both messages are safe to show.
// [-0, +0, m]
int mt_engine_enqueue(lua_State *L, mt_engine *e, const char *task, int first, int n,
                      const mt_enqueue_opts *o, char id[37], mt_err *err);

// Enqueues task once for each table in the list at index list (each a
// sequence of arguments, with an optional n for trailing nils), all in one
// transaction. Pushes the list of ids on success; errors as
// mt_engine_enqueue (argument errors say which task). [-0, +(0|1), m]
int mt_engine_enqueue_many(lua_State *L, mt_engine *e, const char *task, int list, mt_err *err);

// Decrypts (if needed, once) and pushes the stored arguments twice: as a
// sequence table with field n, and as JSON array text (see argwire.h).
// Pushes nil, nil when they are encrypted and no key opens them.
// [-0, +2, m]
void mt_engine_push_arg_views(lua_State *L, mt_engine *e, const mt_task *row);

// Records a log entry: inside a task, redacted, kept for the store and
// written to the sink; outside a task, written to the sink of the current
// engine, or to stderr when there is none. extras: stack index of a table
// of structured fields, or 0. Strings in extras (keys and values, at any
// depth) are redacted before the table is rendered as JSON, so escaping
// cannot hide a secret. [-0, +0, m]
void mt_engine_log(lua_State *L, int level, const char *msg, size_t len, int extras);

// Pushes {task_id=, task=, attempt=} inside a task, nil outside. [-0, +1, m]
void mt_engine_push_context(lua_State *L);

// mt_engine_run_batch on thread L (the caller's; tasks run there), also
// pushing the list of task ids it ran (or nil when none ran). [-0, +1, -]
int mt_engine_run_batch_lua(lua_State *L, mt_engine *e, size_t max, size_t *ran, mt_err *err);

// A zeroed userdata of size bytes whose metatable (cached in the registry
// under key) has gc as __gc: C memory hung off it is freed even when a Lua
// error unwinds past its owner. [-0, +1, m]
void *mt_lua_new_owned(lua_State *L, size_t size, const char *key, lua_CFunction gc);

// A buffer owned by Lua (wiped when secure, freed by __gc or earlier by
// mt_buf_clear), for C work that must survive a Lua error. [-0, +1, m]
mt_buf *mt_lua_push_buf(lua_State *L, bool secure);

// The registered task table of L (name -> {fn, spec}). [-0, +1, m]
void mt_engine_push_tasks(lua_State *L);

#endif
