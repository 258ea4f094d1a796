/*
 * lua_settings: the settings table -> mt_settings, and moontask._open.
 * The Lua side (lua/moontask/config.lua) has already checked names and
 * types with file-and-key messages; this unit re-checks what C relies on.
 */
// SPDX-License-Identifier: MIT
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lua_api.h"
#include "lua_engine_lua.h"

static int keys_gc(lua_State *L)
{
    size_t len = lua_rawlen(L, 1);
    mt_wipe(lua_touserdata(L, 1), len);
    return 0;
}

static double num_field(lua_State *L, int idx, const char *k, double dflt, double min)
{
    double v = dflt;
    if (lua_getfield(L, idx, k) != LUA_TNIL) {
        if (!lua_isnumber(L, -1) || lua_tonumber(L, -1) < min) {
            luaL_error(L, "settings: '%s' must be a number >= %f", k, min);
        }
        v = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

// Parses settings.keys into a userdata of mt_fernet_key. [-0, +1, v]
static void parse_keys(lua_State *L, int idx, mt_settings *s)
{
    lua_getfield(L, idx, "keys");
    size_t n = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
    mt_fernet_key *keys = lua_newuserdatauv(L, (n ? n : 1) * sizeof *keys, 0);
    memset(keys, 0, (n ? n : 1) * sizeof *keys);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, keys_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);  // keystable ud
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -2, (lua_Integer)i + 1);
        size_t len;
        const char *text = lua_tolstring(L, -1, &len);
        mt_err err = {0};
        if (text == NULL || mt_fernet_key_parse(&keys[i], text, len, &err) != MT_OK) {
            lua_pushfstring(L, "encryption key %d: %s", (int)i + 1,
                            text ? mt_err_msg(&err) : "not a string");
            mt_err_clear(&err);
            lua_error(L);
        }
        lua_pop(L, 1);
    }
    lua_remove(L, -2);  // ud
    s->cfg.keys = keys;
    s->cfg.nkeys = n;
}

static void parse_log(lua_State *L, int idx, mt_settings *s)
{
    s->log_level = MT_LOG_INFO;
    if (lua_getfield(L, idx, "log") == LUA_TTABLE) {
        if (lua_getfield(L, -1, "file") == LUA_TSTRING) {
            s->log_file = lua_tostring(L, -1);  // anchored by the settings table
        }
        lua_getfield(L, -2, "stdout");
        s->log_stdout = lua_toboolean(L, -1);
        if (lua_getfield(L, -3, "level") == LUA_TSTRING) {
            s->log_level = mt_log_level_parse(lua_tostring(L, -1));
            if (s->log_level < 0) {
                luaL_error(L, "settings: log.level must be debug, info, warning or error");
            }
        }
        lua_pop(L, 3);
    }
    lua_pop(L, 1);
}

void mt_api_settings(lua_State *L, int idx, mt_settings *s)
{
    idx = lua_absindex(L, idx);
    memset(s, 0, sizeof *s);
    if (lua_getfield(L, idx, "database") != LUA_TSTRING) {
        luaL_error(L, "settings: 'database' must be a path (string)");
    }
    s->cfg.database = lua_tostring(L, -1);
    lua_pop(L, 1);
    s->cfg.defaults = mt_policy_default();
    if (lua_getfield(L, idx, "defaults") == LUA_TTABLE) {
        mt_policy_spec spec;
        mt_policy_from_table(L, -1, "defaults", NULL, "delay", &spec);
        mt_policy_overlay(&s->cfg.defaults, &spec);
    }
    lua_pop(L, 1);
    lua_getfield(L, idx, "durability");
    s->cfg.store.full_durability = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "full") == 0;
    lua_getfield(L, idx, "virtual_clock");
    s->cfg.virtual_clock = lua_toboolean(L, -1);
    lua_pop(L, 2);
    s->cfg.store.busy_timeout_ms = (int)num_field(L, idx, "busy_timeout", 5000, 0);
    s->cfg.mem_limit = (size_t)(num_field(L, idx, "memory_limit", 0, 0) * 1024 * 1024);
    s->workers = (int)num_field(L, idx, "workers", 1, 1);
    s->poll_interval = num_field(L, idx, "poll_interval", 0.5, 0.001);
    s->shutdown_grace = num_field(L, idx, "shutdown_grace", 10, 0);
    s->batch = (size_t)num_field(L, idx, "batch", 256, 1);
    lua_getfield(L, idx, "readonly");
    s->cfg.store.readonly = lua_toboolean(L, -1);
    lua_pop(L, 1);
    parse_log(L, idx, s);
    parse_keys(L, idx, s);
}

// moontask._open(settings) -> Engine | nil, msg, code
int mt_api_open(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    mt_settings s;
    mt_api_settings(L, 1, &s);  // settings keys
    mt_api_push_engine(L);      // settings keys engine
    mt_err err = {0};
    mt_sink *sink = NULL;
    int rc = MT_OK;
    if (s.log_file != NULL || s.log_stdout) {
        rc = mt_sink_open(&sink, s.log_file, s.log_stdout, s.log_level, &err);
    }
    s.cfg.sink = sink;
    mt_engine *e = NULL;
    if (rc == MT_OK) {
        rc = mt_engine_open(L, &s.cfg, &e, &err);
    }
    mt_api_attach(L, -1, e, sink);  // owned by the userdata from here on
    if (rc != MT_OK) {
        return mt_api_fail(L, &err);
    }
    mt_engine_set_current(L, e);
    return 1;
}
