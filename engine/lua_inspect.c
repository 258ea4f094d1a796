/*
 * lua_inspect: opening an engine from a settings table, and the Engine's
 * inspection and maintenance methods (get, tasks, logs, retry, counts,
 * recover, rotate_key).
 *
 * Store callbacks run inside SQLite frames, where a Lua error must never
 * unwind: they only copy rows into a C vector that a Lua userdata owns
 * (freed by its __gc), and the Lua values are built after the store call.
 */
// SPDX-License-Identifier: MIT
#define _DEFAULT_SOURCE  // strdup
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "argwire.h"
#include "lua_api.h"
#include "lua_args.h"
#include "lua_engine_lua.h"

static const char TASKVEC_MT = 'V';
static const char LOGVEC_MT = 'G';

// ------------------------------------------------------ Lua-owned vectors

typedef struct taskvec {
    mt_task *v;
    size_t n, cap;
    bool oom;
} taskvec;

typedef struct logrec {
    int attempt;
    double time;
    char *level, *message, *extras;
} logrec;

typedef struct logvec {
    logrec *v;
    size_t n, cap;
    bool oom;
} logvec;

static int taskvec_gc(lua_State *L)
{
    taskvec *tv = lua_touserdata(L, 1);
    for (size_t i = 0; i < tv->n; i++) {
        mt_task_clear(&tv->v[i]);
    }
    free(tv->v);
    memset(tv, 0, sizeof *tv);
    return 0;
}

static int logvec_gc(lua_State *L)
{
    logvec *lv = lua_touserdata(L, 1);
    for (size_t i = 0; i < lv->n; i++) {
        free(lv->v[i].level);
        free(lv->v[i].message);
        free(lv->v[i].extras);
    }
    free(lv->v);
    memset(lv, 0, sizeof *lv);
    return 0;
}


static bool grow(void **v, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap) {
        return true;
    }
    size_t nc = *cap ? *cap * 2 : 16;
    void *p = realloc(*v, nc * elem);
    if (p == NULL) {
        return false;
    }
    *v = p;
    *cap = nc;
    return true;
}

static char *dup_or_null(const char *s, bool *oom)
{
    if (s == NULL) {
        return NULL;
    }
    char *d = strdup(s);
    *oom |= d == NULL;
    return d;
}

static int copy_task(void *ud, const mt_task *row)
{
    taskvec *tv = ud;
    if (!grow((void **)&tv->v, &tv->cap, tv->n, sizeof(mt_task))) {
        tv->oom = true;
        return 1;
    }
    mt_task *t = &tv->v[tv->n++];
    *t = *row;
    t->task = dup_or_null(row->task, &tv->oom);
    t->token = dup_or_null(row->token, &tv->oom);
    t->error = dup_or_null(row->error, &tv->oom);
    t->traceback = dup_or_null(row->traceback, &tv->oom);
    t->owner = dup_or_null(row->owner, &tv->oom);
    t->payload = NULL;
    if (row->payload != NULL) {
        t->payload = malloc(row->payload_len ? row->payload_len : 1);
        tv->oom |= t->payload == NULL;
        if (t->payload != NULL) {
            memcpy(t->payload, row->payload, row->payload_len);
        }
    }
    return tv->oom ? 1 : 0;
}

static int copy_log(void *ud, const mt_log_row *row)
{
    logvec *lv = ud;
    if (!grow((void **)&lv->v, &lv->cap, lv->n, sizeof(logrec))) {
        lv->oom = true;
        return 1;
    }
    logrec *r = &lv->v[lv->n++];
    r->attempt = row->attempt;
    r->time = row->time;
    r->level = dup_or_null(row->level, &lv->oom);
    r->message = dup_or_null(row->message, &lv->oom);
    r->extras = dup_or_null(row->extras_json, &lv->oom);
    return lv->oom ? 1 : 0;
}

// ------------------------------------------------------------ task rows

static void set_num_or_nil(lua_State *L, const char *k, double v)
{
    if (v > 0) {
        lua_pushnumber(L, v);
        lua_setfield(L, -2, k);
    }
}

static void set_str(lua_State *L, const char *k, const char *v)
{
    if (v != NULL) {
        lua_pushstring(L, v);
        lua_setfield(L, -2, k);
    }
}

// Pushes the Lua view of a task row. [-0, +1, m]
static void push_task(lua_State *L, mt_engine *e, const mt_task *t, bool traceback)
{
    lua_createtable(L, 0, 20);
    set_str(L, "id", t->id);
    set_str(L, "task", t->task);
    set_str(L, "status", mt_status_name(t->status));
    lua_pushinteger(L, t->attempts);
    lua_setfield(L, -2, "attempts");
    lua_pushinteger(L, t->attempts - t->retry_base);
    lua_setfield(L, -2, "attempts_since_retry");
    lua_pushnumber(L, t->created_at);
    lua_setfield(L, -2, "created_at");
    lua_pushnumber(L, t->run_at);
    lua_setfield(L, -2, "run_at");
    set_num_or_nil(L, "started_at", t->started_at);
    set_num_or_nil(L, "finished_at", t->finished_at);
    set_str(L, "error", t->error);
    if (traceback) {
        set_str(L, "traceback", t->traceback);
    }
    lua_pushboolean(L, t->token != NULL);
    lua_setfield(L, -2, "encrypted");
    lua_pushinteger(L, t->policy.retries);
    lua_setfield(L, -2, "retries");
    mt_engine_push_arg_views(L, e, t);  // row args|nil json|nil
    lua_setfield(L, -3, "args_json");
    lua_setfield(L, -2, "args");
}

// ------------------------------------------------------------- methods

// e:get(id) -> row | nil, msg, code
static int engine_get(lua_State *L)
{
    mt_engine *e = mt_api_check_engine(L, 1);
    const char *id = luaL_checkstring(L, 2);
    taskvec *tv = mt_lua_new_owned(L, sizeof *tv, &TASKVEC_MT, taskvec_gc);
    if (!grow((void **)&tv->v, &tv->cap, 0, sizeof(mt_task))) {
        return luaL_error(L, "out of memory");
    }
    memset(&tv->v[0], 0, sizeof(mt_task));
    mt_err err = {0};
    int rc = mt_store_get(mt_engine_store(e), id, &tv->v[0], &err);
    tv->n = 1;
    if (rc != MT_OK) {
        return mt_api_fail(L, &err);
    }
    push_task(L, e, &tv->v[0], true);
    return 1;
}

// e:tasks{status=, task=, limit=} -> list of rows
static int engine_tasks(lua_State *L)
{
    mt_engine *e = mt_api_check_engine(L, 1);
    mt_filter f = {.status = -1, .task = NULL, .limit = 0};
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        if (lua_getfield(L, 2, "status") != LUA_TNIL) {
            f.status = mt_status_parse(luaL_checkstring(L, -1));
            if (f.status < 0) {
                return luaL_error(L,
                                  "unknown status '%s' (use PENDING, RUNNING, SUCCESS, "
                                  "FAILED or INTERRUPTED)",
                                  lua_tostring(L, -1));
            }
        }
        if (lua_getfield(L, 2, "task") != LUA_TNIL) {
            f.task = luaL_checkstring(L, -1);
        }
        if (lua_getfield(L, 2, "limit") != LUA_TNIL) {
            f.limit = (size_t)luaL_checkinteger(L, -1);
        }
    }
    bool traceback = lua_toboolean(L, 3);
    taskvec *tv = mt_lua_new_owned(L, sizeof *tv, &TASKVEC_MT, taskvec_gc);
    mt_err err = {0};
    int rc = mt_store_list(mt_engine_store(e), &f, copy_task, tv, &err);
    if (tv->oom) {
        return luaL_error(L, "out of memory listing tasks");
    }
    if (rc != MT_OK) {
        return mt_api_fail(L, &err);
    }
    lua_createtable(L, (int)tv->n, 0);
    for (size_t i = 0; i < tv->n; i++) {
        push_task(L, e, &tv->v[i], traceback);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

// e:logs(id) -> list of {attempt, time, level, message, extras_json}
static int engine_logs(lua_State *L)
{
    mt_engine *e = mt_api_check_engine(L, 1);
    const char *id = luaL_checkstring(L, 2);
    logvec *lv = mt_lua_new_owned(L, sizeof *lv, &LOGVEC_MT, logvec_gc);
    mt_err err = {0};
    int rc = mt_store_logs(mt_engine_store(e), id, copy_log, lv, &err);
    if (lv->oom) {
        return luaL_error(L, "out of memory reading logs");
    }
    if (rc != MT_OK) {
        return mt_api_fail(L, &err);
    }
    lua_createtable(L, (int)lv->n, 0);
    for (size_t i = 0; i < lv->n; i++) {
        lua_createtable(L, 0, 6);
        lua_pushinteger(L, lv->v[i].attempt);
        lua_setfield(L, -2, "attempt");
        lua_pushnumber(L, lv->v[i].time);
        lua_setfield(L, -2, "time");
        set_str(L, "level", lv->v[i].level);
        set_str(L, "message", lv->v[i].message);
        set_str(L, "extras_json", lv->v[i].extras ? lv->v[i].extras : "{}");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static int engine_retry(lua_State *L)
{
    mt_engine *e = mt_api_check_engine(L, 1);
    const char *id = luaL_checkstring(L, 2);
    mt_err err = {0};
    if (mt_store_retry(mt_engine_store(e), id, mt_engine_now(e), &err) != MT_OK) {
        return mt_api_fail(L, &err);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int engine_counts(lua_State *L)
{
    mt_engine *e = mt_api_check_engine(L, 1);
    int64_t c[MT_NSTATUS];
    mt_err err = {0};
    if (mt_store_counts(mt_engine_store(e), c, &err) != MT_OK) {
        return mt_api_fail(L, &err);
    }
    lua_createtable(L, 0, MT_NSTATUS);
    for (int s = 0; s < MT_NSTATUS; s++) {
        lua_pushinteger(L, c[s]);
        lua_setfield(L, -2, mt_status_name(s));
    }
    return 1;
}

static int engine_next_run_at(lua_State *L)
{
    mt_engine *e = mt_api_check_engine(L, 1);
    double at = 0;
    bool any = false;
    mt_err err = {0};
    if (mt_store_next_run_at(mt_engine_store(e), &at, &any, &err) != MT_OK) {
        return mt_api_fail(L, &err);
    }
    if (any) {
        lua_pushnumber(L, at);
    } else {
        lua_pushnil(L);
    }
    return 1;
}

static int engine_recover(lua_State *L)
{
    mt_engine *e = mt_api_check_engine(L, 1);
    int interrupted = 0, requeued = 0;
    mt_err err = {0};
    if (mt_engine_recover(e, &interrupted, &requeued, &err) != MT_OK) {
        return mt_api_fail(L, &err);
    }
    lua_pushinteger(L, interrupted);
    lua_pushinteger(L, requeued);
    return 2;
}

static int engine_count_encrypted(lua_State *L)
{
    mt_engine *e = mt_api_check_engine(L, 1);
    int64_t n = 0;
    mt_err err = {0};
    if (mt_store_count_encrypted(mt_engine_store(e), &n, &err) != MT_OK) {
        return mt_api_fail(L, &err);
    }
    lua_pushinteger(L, n);
    return 1;
}

static int engine_rotate_key(lua_State *L)
{
    mt_engine *e = mt_api_check_engine(L, 1);
    int64_t n = 0;
    mt_err err = {0};
    if (mt_engine_rotate(e, &n, &err) != MT_OK) {
        return mt_api_fail(L, &err);
    }
    lua_pushinteger(L, n);
    return 1;
}

static const luaL_Reg inspect_methods[] = {
    {"get", engine_get},
    {"tasks", engine_tasks},
    {"logs", engine_logs},
    {"retry", engine_retry},
    {"counts", engine_counts},
    {"next_run_at", engine_next_run_at},
    {"recover", engine_recover},
    {"count_encrypted", engine_count_encrypted},
    {"rotate_key", engine_rotate_key},
    {NULL, NULL},
};

void mt_api_inspect_methods(lua_State *L)
{
    luaL_setfuncs(L, inspect_methods, 0);
}
