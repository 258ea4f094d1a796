/*
 * lua_api: the `moontask` Lua module: task registration, enqueueing, task
 * logging and context, keys, and the Engine userdata. The Lua-side library
 * (lua/moontask/engine.lua, embedded) adds moontask.open on top of
 * moontask._open.
 *
 * Error rule (as io.open): misuse raises (wrong types, closed engine,
 * unknown option, arguments that are not data); expected operational
 * failures (unknown id, database locked, no key opens a payload) return
 * nil, message, code.
 */
// SPDX-License-Identifier: MIT
#define _DEFAULT_SOURCE  // glob
#include "lua_api.h"

#include <glob.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "argwire.h"
#include "fernet.h"
#include "lua_args.h"
#include "lua_engine_lua.h"
#include "lua_host.h"

#define ENGINE_MT "moontask.Engine"

typedef struct engine_ud {
    mt_engine *e;  // NULL once closed
    mt_sink *sink;
} engine_ud;

// ------------------------------------------------------------ helpers

// Pushes nil, message, code name and clears err. [-0, +3, m]
static int push_fail(lua_State *L, mt_err *err)
{
    lua_pushnil(L);
    lua_pushstring(L, mt_err_msg(err));
    lua_pushstring(L, mt_errname(err->code));
    mt_err_clear(err);
    return 3;
}

// An enqueue that failed: misuse (bad arguments, unknown task) raises,
// anything else returns nil, message, code. Clears err.
static int enqueue_failed(lua_State *L, int rc, mt_err *err)
{
    if (rc == MT_EINVAL || rc == MT_ENOTFOUND) {
        lua_pushstring(L, mt_err_msg(err));
        mt_err_clear(err);
        return lua_error(L);
    }
    return push_fail(L, err);
}

static mt_engine *check_engine(lua_State *L, int idx)
{
    engine_ud *u = luaL_checkudata(L, idx, ENGINE_MT);
    if (u->e == NULL) {
        luaL_error(L, "attempt to use a closed moontask engine");
    }
    return u->e;
}

static mt_engine *current_engine(lua_State *L)
{
    mt_engine *e = mt_engine_current(L);
    if (e == NULL) {
        luaL_error(L, "no moontask engine is open in this Lua state: call moontask.open{...} "
                      "first, or use an engine's own add/enqueue");
    }
    return e;
}

// ------------------------------------------------------ registration

// moontask.task(name, [options], fn)
static int m_task(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    int fn_idx = lua_istable(L, 2) ? 3 : 2;
    luaL_checktype(L, fn_idx, LUA_TFUNCTION);
    if (!mt_engine_valid_name(name)) {
        return luaL_argerror(L, 1, "task name must be 1 to 200 bytes without control characters");
    }
    mt_policy_spec *spec = lua_newuserdatauv(L, sizeof *spec, 0);
    memset(spec, 0, sizeof *spec);
    spec->p = mt_policy_default();
    if (fn_idx == 3) {
        lua_pushfstring(L, "task '%s'", name);
        mt_policy_from_table(L, 2, lua_tostring(L, -1), NULL, "delay", spec);
        lua_pop(L, 1);
    }
    mt_engine_push_tasks(L);   // spec tasks
    lua_createtable(L, 0, 3);  // spec tasks entry
    lua_pushvalue(L, fn_idx);
    lua_setfield(L, -2, "fn");
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "spec");
    if (fn_idx == 3) {
        lua_pushvalue(L, 2);
        lua_setfield(L, -2, "options");
    }
    lua_setfield(L, -2, name);
    return 0;
}

// ---------------------------------------------------------- enqueueing

static const char *const ENQUEUE_KEYS[] = {"task", "args", "delay", "run_at", NULL};

// Adds and returns the id, or raises (bad arguments, unknown task) /
// returns nil, msg, code (database failure).
static int do_enqueue(lua_State *L, mt_engine *e, const char *task, int first, int n,
                      const mt_enqueue_opts *o)
{
    char id[37];
    mt_err err = {0};
    int rc = mt_engine_enqueue(L, e, task, first, n, o, id, &err);
    if (rc != MT_OK) {
        return enqueue_failed(L, rc, &err);
    }
    lua_pushstring(L, id);
    return 1;
}

static int add_impl(lua_State *L, mt_engine *e, int name_idx)
{
    const char *task = luaL_checkstring(L, name_idx);
    int n = lua_gettop(L) - name_idx;
    return do_enqueue(L, e, task, name_idx + 1, n, NULL);
}

static int m_add(lua_State *L)
{
    return add_impl(L, current_engine(L), 1);
}

static int enqueue_impl(lua_State *L, mt_engine *e, int t)
{
    luaL_checktype(L, t, LUA_TTABLE);
    mt_enqueue_opts o;
    memset(&o, 0, sizeof o);
    mt_policy_from_table(L, t, "enqueue", ENQUEUE_KEYS, "retry_delay", &o.spec);
    if (lua_getfield(L, t, "task") != LUA_TSTRING) {
        return luaL_error(L, "enqueue: field 'task' must be a task name (string)");
    }
    const char *task = lua_tostring(L, -1);
    if (lua_getfield(L, t, "delay") != LUA_TNIL) {
        lua_Number d = lua_tonumber(L, -1);
        if (!lua_isnumber(L, -1) || !(d >= 0) || d > 1e12) {
            return luaL_error(L, "enqueue: field 'delay' must be a number of seconds >= 0");
        }
        o.delay = d;
    }
    if (lua_getfield(L, t, "run_at") != LUA_TNIL) {
        lua_Number at = lua_tonumber(L, -1);
        if (!lua_isnumber(L, -1) || !(at >= 0) || at > 1e12) {
            return luaL_error(L, "enqueue: field 'run_at' must be a Unix time in seconds");
        }
        o.run_at = at;
    }
    lua_pop(L, 2);
    int first = lua_gettop(L) + 1;
    int n = 0;
    int at = lua_getfield(L, t, "args");  // task args
    if (at == LUA_TTABLE) {
        lua_getfield(L, -1, "n");
        n = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : (int)lua_rawlen(L, -2);
        lua_pop(L, 1);
        if (n < 0 || n > 10000) {
            return luaL_error(L, "enqueue: args.n must be from 0 to 10000");
        }
        luaL_checkstack(L, n, "too many arguments");
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, first, i);
        }
        lua_remove(L, first);
        first = lua_gettop(L) - n + 1;
    } else if (at == LUA_TNIL) {
        lua_pop(L, 1);
    } else {
        return luaL_error(L, "enqueue: field 'args' must be a list of arguments");
    }
    return do_enqueue(L, e, task, first, n, &o);
}

static int m_enqueue(lua_State *L)
{
    return enqueue_impl(L, current_engine(L), 1);
}

// ------------------------------------------------------------ logging

// moontask.log(message, [fields])
static int m_log(lua_State *L)
{
    bool has_fields = !lua_isnoneornil(L, 2);
    if (has_fields) {
        luaL_checktype(L, 2, LUA_TTABLE);
    }
    lua_settop(L, 2);
    size_t len;
    const char *msg = luaL_tolstring(L, 1, &len);  // msg fields text
    int level = MT_LOG_INFO;
    int extras = 0;
    if (has_fields) {
        if (lua_getfield(L, 2, "level") != LUA_TNIL) {
            level = mt_log_level_parse(lua_tostring(L, -1));
            if (level < 0) {
                return luaL_error(L, "moontask.log: level must be debug, info, warning or "
                                     "error");
            }
        }
        lua_pop(L, 1);
        lua_newtable(L);  // msg fields text extras
        extras = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, 2) != 0) {
            if (lua_type(L, -2) == LUA_TSTRING && strcmp(lua_tostring(L, -2), "level") == 0) {
                lua_pop(L, 1);
                continue;
            }
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, extras);
        }
    }
    mt_engine_log(L, level, msg, len, extras);
    return 0;
}

static int m_context(lua_State *L)
{
    mt_engine_push_context(L);
    return 1;
}

// -------------------------------------------------------------- keys

static int m_keygen(lua_State *L)
{
    char key[45];
    mt_err err = {0};
    if (mt_fernet_keygen(key, &err) != MT_OK) {
        return push_fail(L, &err);
    }
    lua_pushstring(L, key);
    mt_wipe(key, sizeof key);
    return 1;
}

// moontask._check_key(text) -> true | nil, msg (never echoes the key)
static int m_check_key(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    mt_fernet_key k;
    mt_err err = {0};
    int rc = mt_fernet_key_parse(&k, text, len, &err);
    mt_fernet_key_clear(&k);
    if (rc != MT_OK) {
        return push_fail(L, &err);
    }
    lua_pushboolean(L, 1);
    return 1;
}

// --------------------------------------------------------------- misc

static int m_env(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    const char *v = getenv(name);
    if (v == NULL) {
        return luaL_error(L, "environment variable %s is not set", name);
    }
    lua_pushstring(L, v);
    return 1;
}

static int m_glob(lua_State *L)
{
    const char *pattern = luaL_checkstring(L, 1);
    glob_t g;
    memset(&g, 0, sizeof g);
    int rc = glob(pattern, 0, NULL, &g);
    if (rc != 0 && rc != GLOB_NOMATCH) {
        globfree(&g);
        return luaL_error(L, "cannot expand pattern %s", pattern);
    }
    // Copy out before anything can raise, so the glob_t is never leaked.
    size_t n = g.gl_pathc;
    char **paths = g.gl_pathv;
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushstring(L, paths[i]);  // may raise on OOM: accepted, see ARCHITECTURE
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    globfree(&g);
    return 1;
}

static int m_json_decode(lua_State *L)
{
    const char *text = luaL_checkstring(L, 1);
    mt_err err = {0};
    if (mt_args_push_json(L, text, &err) != MT_OK) {
        return push_fail(L, &err);
    }
    lua_pushboolean(L, 1);
    lua_insert(L, -2);
    return 2;  // true, value (value may be nil)
}

static int m_json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    mt_buf *b = mt_lua_push_buf(L, false);
    mt_err err = {0};
    int rc = mt_lua_to_json(L, 1, b, &err);
    if (rc == MT_OK) {
        lua_pushlstring(L, (const char *)b->data, b->len);
    }
    mt_buf_clear(b);
    if (rc != MT_OK) {
        return push_fail(L, &err);
    }
    return 1;
}

// moontask._load_script(path): runs a task script (text only).
static int m_load_script(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    if (mt_host_dofile(L, path) != 0) {
        return luaL_error(L, "task script %s failed to load: %s", path, lua_tostring(L, -1));
    }
    return 0;
}

static const luaL_Reg module_fns[] = {
    {"task", m_task},
    {"add", m_add},
    {"enqueue", m_enqueue},
    {"log", m_log},
    {"task_log", m_log},
    {"context", m_context},
    {"keygen", m_keygen},
    {"env", m_env},
    {"_check_key", m_check_key},
    {"_glob", m_glob},
    {"_json_decode", m_json_decode},
    {"_json_encode", m_json_encode},
    {"_load_script", m_load_script},
    {"_open", mt_api_open},
    {"_run", mt_api_run},
    {NULL, NULL},
};

// ------------------------------------------------------------ engine

void mt_api_push_engine(lua_State *L)
{
    engine_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->e = NULL;  // born closed: the C objects are attached once they exist
    u->sink = NULL;
    luaL_setmetatable(L, ENGINE_MT);
}

void mt_api_attach(lua_State *L, int idx, mt_engine *e, mt_sink *sink)
{
    engine_ud *u = lua_touserdata(L, idx);
    u->e = e;
    u->sink = sink;
}

static int engine_close(lua_State *L)
{
    engine_ud *u = luaL_checkudata(L, 1, ENGINE_MT);
    mt_engine_free(u->e);
    mt_sink_close(u->sink);
    u->e = NULL;
    u->sink = NULL;
    return 0;
}

static int engine_add(lua_State *L)
{
    return add_impl(L, check_engine(L, 1), 2);
}

static int engine_enqueue(lua_State *L)
{
    return enqueue_impl(L, check_engine(L, 1), 2);
}

// e:add_many(task, { {args...}, {args...}, ... }) -> list of ids, in one
// transaction (a producer's group commit).
static int engine_add_many(lua_State *L)
{
    mt_engine *e = check_engine(L, 1);
    const char *task = luaL_checkstring(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    mt_err err = {0};
    int rc = mt_engine_enqueue_many(L, e, task, 3, &err);
    return rc == MT_OK ? 1 : enqueue_failed(L, rc, &err);
}

// e:run_one() / e:run_batch(max) -> number of tasks run, list of their ids
static int engine_run_batch(lua_State *L, size_t max)
{
    mt_engine *e = check_engine(L, 1);
    size_t ran = 0;
    mt_err err = {0};
    if (mt_engine_run_batch_lua(L, e, max, &ran, &err) != MT_OK) {
        lua_pop(L, 1);
        return push_fail(L, &err);
    }
    lua_pushinteger(L, (lua_Integer)ran);  // ids n
    lua_insert(L, -2);                     // n ids
    return 2;
}

static int engine_run_one(lua_State *L)
{
    return engine_run_batch(L, 1);
}

static int engine_run_batch_m(lua_State *L)
{
    lua_Integer max = luaL_optinteger(L, 2, 64);
    luaL_argcheck(L, max >= 1 && max <= 4096, 2, "batch size must be from 1 to 4096");
    return engine_run_batch(L, (size_t)max);
}

static int engine_now(lua_State *L)
{
    lua_pushnumber(L, mt_engine_now(check_engine(L, 1)));
    return 1;
}

static int engine_advance(lua_State *L)
{
    mt_engine *e = check_engine(L, 1);
    lua_Number s = luaL_checknumber(L, 2);
    luaL_argcheck(L, s >= 0, 2, "cannot move time backwards");
    mt_engine_advance(e, s);
    lua_pushnumber(L, mt_engine_now(e));
    return 1;
}

static int engine_stats(lua_State *L)
{
    mt_engine_stats s = mt_engine_get_stats(check_engine(L, 1));
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, s.succeeded);
    lua_setfield(L, -2, "succeeded");
    lua_pushinteger(L, s.failed);
    lua_setfield(L, -2, "failed");
    lua_pushinteger(L, s.retried);
    lua_setfield(L, -2, "retried");
    return 1;
}

static int engine_strict(lua_State *L)
{
    mt_engine_set_strict(check_engine(L, 1));
    return 0;
}

static int engine_tostring(lua_State *L)
{
    engine_ud *u = luaL_checkudata(L, 1, ENGINE_MT);
    lua_pushfstring(L, "moontask.Engine (%s)", u->e ? "open" : "closed");
    return 1;
}

static const luaL_Reg engine_methods[] = {
    {"add", engine_add},
    {"enqueue", engine_enqueue},
    {"add_many", engine_add_many},
    {"run_one", engine_run_one},
    {"run_batch", engine_run_batch_m},
    {"now", engine_now},
    {"advance", engine_advance},
    {"stats", engine_stats},
    {"_strict", engine_strict},
    {"close", engine_close},
    {NULL, NULL},
};

static const luaL_Reg engine_meta[] = {
    {"__gc", engine_close},
    {"__close", engine_close},
    {"__tostring", engine_tostring},
    {NULL, NULL},
};

mt_engine *mt_api_check_engine(lua_State *L, int idx)
{
    return check_engine(L, idx);
}

int mt_api_fail(lua_State *L, mt_err *err)
{
    return push_fail(L, err);
}

int mt_api_luaopen(lua_State *L)
{
    mt_host_preload(L);
    if (luaL_newmetatable(L, ENGINE_MT)) {
        luaL_setfuncs(L, engine_meta, 0);
        lua_createtable(L, 0, 32);
        luaL_setfuncs(L, engine_methods, 0);
        mt_api_inspect_methods(L);  // mt methods
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_newlib(L, module_fns);
    luaL_getmetatable(L, ENGINE_MT);
    lua_getfield(L, -1, "__index");
    lua_setfield(L, -3, "_Engine");  // the Lua half adds methods (drain) here
    lua_pop(L, 1);
    lua_pushliteral(L, "0.1.0");
    lua_setfield(L, -2, "version");
    // The Lua half of the library extends the table (moontask.open, ...).
    lua_getglobal(L, "require");  // M require
    lua_pushliteral(L, "moontask.engine");
    lua_call(L, 1, 1);  // M ext
    lua_pushvalue(L, -2);
    lua_call(L, 1, 0);  // M
    return 1;
}
