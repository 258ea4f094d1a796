/*
 * lua_engine_int: the engine struct and helpers shared by lua_engine.c
 * (life cycle, enqueue, inspection, rotation) and lua_run.c (running
 * tasks, logs, context). Not for any other unit.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_LUA_ENGINE_INT_H
#define MT_LUA_ENGINE_INT_H

#include <lua.h>

#include "lua_engine_lua.h"

struct mt_engine {
    lua_State *L;
    bool owns_state;
    mt_store *store;
    mt_fernet_key *keys;  // owned copy, wiped on free
    size_t nkeys;
    mt_sink *sink;  // borrowed
    char *owner;
    mt_policy defaults;
    bool virtual_clock;
    double vnow;
    uint64_t rng;
    mt_engine_stats stats;
    bool strict;  // the task registry is loaded: refuse unknown names even if it is empty
};

// Uniform draw in [0, 1) for jitter.
double mt_engine_uniform(mt_engine *e);

// Decrypts a token with any configured key into b (fixed messages only).
int mt_engine_open_token(mt_engine *e, const char *token, mt_buf *b, mt_err *err);

#endif
