/*
 * lua_api: shared pieces of the `moontask` module, split over lua_api.c
 * (registration, enqueue, logs, keys), lua_inspect.c (engine open and
 * inspection methods) and worker.c (moontask._run, the threaded engine).
 */
// SPDX-License-Identifier: MIT
#ifndef MT_LUA_API_H
#define MT_LUA_API_H

#include <lua.h>

#include "lua_engine.h"

// The module's open function (luaopen_moontask in lua_module.c calls it).
int mt_api_luaopen(lua_State *L);

// Pushes a new, closed Engine userdata. [-0, +1, m]
void mt_api_push_engine(lua_State *L);
// Hands e and sink (either may be NULL) to the Engine at idx, which then
// owns them. Never raises.
void mt_api_attach(lua_State *L, int idx, mt_engine *e, mt_sink *sink);
// The open engine at idx; raises for a closed one or a wrong type.
mt_engine *mt_api_check_engine(lua_State *L, int idx);
// Pushes nil, message, code name and clears err; returns 3.
int mt_api_fail(lua_State *L, mt_err *err);

// Adds the inspection methods (get, logs, tasks, retry, counts, recover,
// rotate_key, next_run_at) to the methods table on top. [-0, +0, m]
void mt_api_inspect_methods(lua_State *L);

// Reads a settings table (as built by lua/moontask/engine.lua from the
// config) into s. Pushes one value that owns the parsed keys (keep it on
// the stack while s is used); strings in s are borrowed from the table.
// Raises on a bad value. [-0, +1, v]
typedef struct mt_settings {
    mt_engine_cfg cfg;
    const char *log_file;
    bool log_stdout;
    int log_level;
    int workers;
    double poll_interval;
    double shutdown_grace;
    size_t batch;
} mt_settings;
void mt_api_settings(lua_State *L, int idx, mt_settings *s);

// moontask._open(settings) -> Engine | nil, msg, code
int mt_api_open(lua_State *L);
// moontask._run(settings, scripts, {drain=, workers=}) -> exit code
int mt_api_run(lua_State *L);

#endif
