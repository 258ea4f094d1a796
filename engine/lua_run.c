/*
 * lua_run: running claimed tasks in an engine's state: the context, log
 * capture and redaction, limits, outcomes, and the batch that records
 * them in one transaction.
 *
 * The longjmp rule shapes this file: while a Lua error can be raised, no
 * C-heap object may be live. Claimed rows, decrypted plaintext and
 * redaction lists therefore live in userdata with __gc (Lua owns them), and
 * a batch runs inside one protected C call so that even an out-of-memory
 * error in our glue unwinds to a place that records the claimed tasks.
 */
// SPDX-License-Identifier: MIT
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "argwire.h"
#include "ids.h"
#include "lua_args.h"
#include "lua_engine_int.h"
#include "lua_host.h"
#include "outcome.h"

static const char CONTEXT_KEY = 'X';
static const char ROWS_MT = 'R';

static mt_buf *push_secbuf(lua_State *L)
{
    return mt_lua_push_buf(L, true);
}

typedef struct rows_ud {
    size_t n;
    mt_task rows[];
} rows_ud;

static int rows_gc(lua_State *L)
{
    rows_ud *r = lua_touserdata(L, 1);
    for (size_t i = 0; i < r->n; i++) {
        mt_task_clear(&r->rows[i]);
    }
    return 0;
}

// [-0, +1, m]
static rows_ud *push_rows(lua_State *L, size_t n)
{
    rows_ud *r = mt_lua_new_owned(L, sizeof *r + n * sizeof(mt_task), &ROWS_MT, rows_gc);
    r->n = n;
    return r;
}

// Decrypts a token with any configured key into b. Fixed messages only.
// ------------------------------------------------------------- redaction

typedef struct secrets_ud {
    size_t n;
    mt_span spans[];
} secrets_ud;

// Builds ctx.secrets from the plaintext wire bytes: every argument string
// of 6 bytes or more. The bytes live in a Lua-owned secure buffer kept in
// ctx.secret_bytes and wiped when the task ends. [-0, +0, m]
static void collect_secrets(lua_State *L, int ctx, const mt_buf *plain)
{
    mt_buf *list = push_secbuf(L);  // list
    if (mt_args_collect_strings(plain->data, plain->len, 6, list, NULL) != MT_OK) {
        lua_pop(L, 1);
        return;
    }
    lua_setfield(L, ctx, "secret_bytes");
    size_t n = 0;
    for (size_t off = 0; off + 4 <= list->len; n++) {
        uint32_t len;
        memcpy(&len, list->data + off, 4);
        off += 4 + (size_t)len + 1;
    }
    secrets_ud *s = lua_newuserdatauv(L, sizeof *s + n * sizeof(mt_span), 0);
    s->n = n;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t len;
        memcpy(&len, list->data + off, 4);
        s->spans[i].p = (const char *)list->data + off + 4;
        s->spans[i].n = len;
        off += 4 + (size_t)len + 1;
    }
    lua_setfield(L, ctx, "secrets");
}

// Pushes s with the context's secrets replaced, or s itself. [-0, +1, m]
static void push_redacted(lua_State *L, int ctx, const char *s, size_t len)
{
    secrets_ud *sec = NULL;
    if (ctx != 0) {
        lua_getfield(L, ctx, "secrets");
        sec = lua_touserdata(L, -1);
        lua_pop(L, 1);
    }
    if (sec == NULL || sec->n == 0) {
        lua_pushlstring(L, s, len);
        return;
    }
    mt_buf *out = push_secbuf(L);  // out
    if (mt_redact(s, len, sec->spans, sec->n, out) != MT_OK) {
        lua_pop(L, 1);
        lua_pushliteral(L, "[redacted: out of memory]");
        return;
    }
    lua_pushlstring(L, (const char *)out->data, out->len);  // out text
    mt_buf_clear(out);
    lua_remove(L, -2);
}

// ------------------------------------------------------------------- logs

// The running task's context table, or 0 (nothing pushed) outside a task.
static int push_ctx(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &CONTEXT_KEY) == LUA_TTABLE) {
        return lua_gettop(L);
    }
    lua_pop(L, 1);
    return 0;
}

static void sink_entry(lua_State *L, mt_engine *e, int ctx, int level, const char *msg,
                       const char *extras)
{
    mt_sink_entry se = {.time = e ? mt_engine_now(e) : mt_wall_now(),
                        .level = level,
                        .message = msg,
                        .extras_json = extras};
    if (ctx != 0) {
        lua_getfield(L, ctx, "task");
        lua_getfield(L, ctx, "task_id");
        lua_getfield(L, ctx, "attempt");
        se.task = lua_tostring(L, -3);
        se.id = lua_tostring(L, -2);
        se.attempt = (int)lua_tointeger(L, -1);
    }
    if (e != NULL && e->sink != NULL) {
        mt_sink_write(e->sink, &se);
    } else if (ctx == 0) {
        fprintf(stderr, "moontask: %s: %s\n", mt_log_level_name(level), msg);
    }
    if (ctx != 0) {
        lua_pop(L, 3);
    }
}

enum { REDACT_DEPTH = 64 };

// Pushes a copy of the value at idx with every string (table keys and
// values, at any depth) redacted; shared and cyclic tables map to one copy
// each, through `seen` (a table at stack index seen). [-0, +1, m]
static void push_redacted_value(lua_State *L, int ctx, int idx, int seen, int depth)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        push_redacted(L, ctx, s, len);
        return;
    }
    if (lua_type(L, idx) != LUA_TTABLE || depth > REDACT_DEPTH) {
        lua_pushvalue(L, idx);
        return;
    }
    lua_pushvalue(L, idx);
    if (lua_rawget(L, seen) != LUA_TNIL) {
        return;
    }
    lua_pop(L, 1);
    luaL_checkstack(L, 6, "log extras nested too deeply");
    lua_newtable(L);  // copy
    lua_pushvalue(L, idx);
    lua_pushvalue(L, -2);
    lua_rawset(L, seen);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {                        // copy k v
        push_redacted_value(L, ctx, -2, seen, depth + 1);  // copy k v k'
        push_redacted_value(L, ctx, -2, seen, depth + 1);  // copy k v k' v'
        lua_rawset(L, -5);                                 // copy k v
        lua_pop(L, 1);
    }
}

// Pushes the JSON text of the extras table at idx, redacted when ctx has
// secrets. [-0, +1, m]
static void push_extras_json(lua_State *L, int ctx, int idx)
{
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    if (lua_next(L, idx) == 0) {
        lua_pushliteral(L, "{}");  // an empty table is an empty object, not []
        return;
    }
    lua_pop(L, 2);
    if (ctx != 0) {
        lua_newtable(L);                                     // seen
        push_redacted_value(L, ctx, idx, lua_gettop(L), 0);  // seen copy
        lua_remove(L, -2);
        idx = lua_gettop(L);
    }
    mt_buf *b = mt_lua_push_buf(L, false);
    mt_err err = {0};
    int rc = mt_lua_to_json(L, idx, b, &err);
    mt_err_clear(&err);
    if (rc == MT_OK) {
        lua_pushlstring(L, (const char *)b->data, b->len);
    } else {
        lua_pushliteral(L, "{}");
    }
    mt_buf_clear(b);
    lua_remove(L, -2);  // [copy] json
    if (ctx != 0) {
        lua_remove(L, -2);
    }
}

// Appends an entry to the context's logs (redacted) and writes it to the
// sink. extras: stack index of a fields table, or 0. [-0, +0, m]
static void ctx_log(lua_State *L, mt_engine *e, int ctx, int level, const char *msg, size_t len,
                    int extras)
{
    if (extras != 0) {
        extras = lua_absindex(L, extras);
    }
    lua_createtable(L, 0, 5);  // entry
    push_redacted(L, ctx, msg, len);
    lua_setfield(L, -2, "message");
    if (extras != 0) {
        push_extras_json(L, ctx, extras);
        lua_setfield(L, -2, "extras");
    }
    lua_pushstring(L, mt_log_level_name(level));
    lua_setfield(L, -2, "level");
    lua_getfield(L, ctx, "attempt");
    lua_setfield(L, -2, "attempt");
    lua_pushnumber(L, e ? mt_engine_now(e) : mt_wall_now());
    lua_setfield(L, -2, "time");
    lua_getfield(L, -1, "message");
    lua_getfield(L, -2, "extras");  // entry msg extras
    sink_entry(L, e, ctx, level, lua_tostring(L, -2), lua_tostring(L, -1));
    lua_pop(L, 2);
    lua_getfield(L, ctx, "logs");  // entry logs
    lua_insert(L, -2);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    lua_pop(L, 1);
}

void mt_engine_log(lua_State *L, int level, const char *msg, size_t len, int extras)
{
    if (extras != 0) {
        extras = lua_absindex(L, extras);
    }
    mt_engine *e = mt_engine_current(L);
    int ctx = push_ctx(L);  // [ctx]
    if (ctx == 0) {
        const char *json = NULL;
        if (extras != 0) {
            push_extras_json(L, 0, extras);
            json = lua_tostring(L, -1);
        }
        sink_entry(L, e, 0, level, msg, json);
        if (extras != 0) {
            lua_pop(L, 1);
        }
        return;
    }
    ctx_log(L, e, ctx, level, msg, len, extras);
    lua_pop(L, 1);
}

void mt_engine_push_context(lua_State *L)
{
    int ctx = push_ctx(L);
    if (ctx == 0) {
        lua_pushnil(L);
        return;
    }
    lua_createtable(L, 0, 3);
    lua_getfield(L, ctx, "task_id");
    lua_setfield(L, -2, "task_id");
    lua_getfield(L, ctx, "task");
    lua_setfield(L, -2, "task");
    lua_getfield(L, ctx, "attempt");
    lua_setfield(L, -2, "attempt");
    lua_remove(L, ctx);
}

// print() inside a task: one info entry, arguments joined by tabs.
static int capture_print(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        size_t len;
        const char *s = luaL_tolstring(L, i, &len);
        if (i > 1) {
            luaL_addchar(&b, '\t');
        }
        luaL_addvalue(&b);
        (void)s;
    }
    luaL_pushresult(&b);
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    mt_engine_log(L, MT_LOG_INFO, msg, len, 0);
    return 0;
}

static int refuse_exit(lua_State *L)
{
    return luaL_error(L, "os.exit called inside a task; raise an error to fail the task instead");
}

// ------------------------------------------------------------------- run

// Records why an attempt did not succeed as a log entry of the task, so
// that failures show in the log file and on stdout, not only on the row.
static void log_failure(lua_State *L, mt_engine *e, int ctx, int status, const char *error,
                        double run_at)
{
    lua_getfield(L, ctx, "attempt");
    lua_Integer attempt = lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (status == MT_PENDING) {
        double wait = run_at - mt_engine_now(e);
        char secs[32];
        snprintf(secs, sizeof secs, "%.3g", wait > 0 ? wait : 0.0);
        lua_pushfstring(L, "attempt %I failed, retrying in %s s: %s", attempt, secs, error);
    } else if (status == MT_INTERRUPTED) {
        lua_pushfstring(L, "attempt %I: %s", attempt, error);
    } else {
        lua_pushfstring(L, "attempt %I failed, no retries left: %s", attempt, error);
    }
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    ctx_log(L, e, ctx, status == MT_PENDING ? MT_LOG_WARNING : MT_LOG_ERROR, msg, len, 0);
    lua_pop(L, 1);
}

// Pushes the outcome table {status=, error=, traceback=, run_at=, logs=}.
static void push_result(lua_State *L, mt_engine *e, int ctx, int status, const char *error,
                        double run_at)
{
    if (error != NULL) {
        log_failure(L, e, ctx, status, error, run_at);
    }
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    lua_pushnumber(L, run_at);
    lua_setfield(L, -2, "run_at");
    if (error != NULL) {
        push_redacted(L, ctx, error, strlen(error));
        lua_setfield(L, -2, "error");
    }
    lua_getfield(L, ctx, "logs");
    lua_setfield(L, -2, "logs");
}

// Lua runs the message handler of an error raised by a hook with hooks off,
// so a task's own xpcall handler that loops would escape the timeout. Once
// the deadline fired, this wrapper hands the error back without calling it.
static int guarded_handler(lua_State *L)
{
    if (mt_host_limits(L)->fired) {
        return 1;  // the error value, unchanged
    }
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

static int xpcall_done(lua_State *L, int status, lua_KContext base)
{
    (void)status;
    return lua_gettop(L) - (int)base;
}

// xpcall(f, msgh, ...) inside tasks: the real xpcall (upvalue 1) with msgh
// wrapped by guarded_handler; yields inside f still work (lua_callk).
static int task_xpcall(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checkany(L, 2);
    luaL_checkstack(L, n + 2, "too many arguments to xpcall");
    lua_pushvalue(L, lua_upvalueindex(1));  // args xpcall
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, guarded_handler, 1);  // args xpcall f guarded
    for (int i = 3; i <= n; i++) {
        lua_pushvalue(L, i);
    }
    lua_callk(L, n, LUA_MULTRET, n, xpcall_done);
    return xpcall_done(L, LUA_OK, n);
}

// Swaps print, os.exit and xpcall for the task's versions, or back.
static void swap_globals(lua_State *L, int ctx, bool enter)
{
    lua_getglobal(L, "xpcall");
    if (enter) {
        lua_pushvalue(L, -1);
        lua_setfield(L, ctx, "saved_xpcall");
        lua_pushcclosure(L, task_xpcall, 1);
    } else {
        lua_pop(L, 1);
        lua_getfield(L, ctx, "saved_xpcall");
    }
    lua_setglobal(L, "xpcall");
    lua_getglobal(L, "print");
    if (enter) {
        lua_setfield(L, ctx, "saved_print");
        lua_pushcfunction(L, capture_print);
    } else {
        lua_pop(L, 1);
        lua_getfield(L, ctx, "saved_print");
    }
    lua_setglobal(L, "print");
    if (lua_getglobal(L, "os") == LUA_TTABLE) {
        if (enter) {
            lua_getfield(L, -1, "exit");
            lua_setfield(L, ctx, "saved_exit");
            lua_pushcfunction(L, refuse_exit);
        } else {
            lua_getfield(L, ctx, "saved_exit");
        }
        lua_setfield(L, -2, "exit");
    }
    lua_pop(L, 1);
}

// Calls the task function with its arguments (fn a1..an on top of the
// stack) under the limits; leaves the error message or nothing.
static int call_task(lua_State *L, mt_engine *e, int ctx, int n, const mt_policy *p, int *status,
                     const char **why)
{
    mt_engine *prev = mt_engine_current(L);
    lua_pushvalue(L, ctx);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &CONTEXT_KEY);
    mt_engine_set_current(L, e);
    swap_globals(L, ctx, true);
    mt_host_arm(L, p->timeout);
    mt_limits *lim = mt_host_limits(L);
    bool capped = lim->mem_enforced;
    int rc = mt_host_pcall(L, n, 0);
    mt_host_disarm(L);
    swap_globals(L, ctx, false);
    mt_engine_set_current(L, prev);
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &CONTEXT_KEY);
    *why = NULL;
    *status = MT_SUCCESS;
    if (rc == LUA_OK) {
        return 0;
    }
    *status = MT_FAILED;
    if (lim->fired && lim->aborted) {
        *status = MT_INTERRUPTED;
        *why = "interrupted: the engine is shutting down";
    } else if (lim->fired) {
        lua_pushfstring(L, "task timed out after %f seconds", p->timeout);
        lua_replace(L, -2);
    } else if (rc == LUA_ERRMEM) {
        lua_pushstring(L, capped ? "task exceeded its memory limit" : "not enough memory");
        lua_replace(L, -2);
        lua_gc(L, LUA_GCCOLLECT, 0);
    }
    return 1;
}

// Runs one claimed task; pushes its outcome table. [-0, +1, m]
static void run_task(lua_State *L, mt_engine *e, const mt_task *row)
{
    int base = lua_gettop(L);
    lua_createtable(L, 0, 8);  // ctx
    int ctx = lua_gettop(L);
    lua_pushstring(L, row->id);
    lua_setfield(L, ctx, "task_id");
    lua_pushstring(L, row->task);
    lua_setfield(L, ctx, "task");
    lua_pushinteger(L, row->attempts);
    lua_setfield(L, ctx, "attempt");
    lua_newtable(L);
    lua_setfield(L, ctx, "logs");
    const mt_limits *lim = mt_host_limits(L);
    if (lim->abort != NULL && atomic_load(lim->abort)) {
        // Shutting down: a claimed task that never started goes back as it was.
        push_result(L, e, ctx, MT_PENDING, NULL, row->run_at);
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "unclaim");
        goto done;
    }
    mt_engine_push_tasks(L);  // ctx tasks
    if (lua_getfield(L, -1, row->task) != LUA_TTABLE) {
        lua_pushfstring(L,
                        "unknown task '%s': no loaded task script registers it (add its "
                        "script to the config's scripts, then `moontask retry %s`)",
                        row->task, row->id);
        push_result(L, e, ctx, MT_FAILED, lua_tostring(L, -1), 0);
        goto done;
    }
    lua_getfield(L, -1, "fn");       // ctx tasks entry fn
    mt_buf *plain = push_secbuf(L);  // ctx tasks entry fn plain
    lua_insert(L, -2);               // ctx tasks entry plain fn
    mt_err err = {0};
    const uint8_t *bytes = row->payload;
    size_t len = row->payload_len;
    if (row->token != NULL) {
        if (mt_engine_open_token(e, row->token, plain, &err) != MT_OK) {
            push_result(L, e, ctx, MT_FAILED, mt_err_msg(&err), 0);
            mt_err_clear(&err);
            goto done;
        }
        bytes = plain->data;
        len = plain->len;
        if (row->policy.redact) {
            mt_buf view = {.data = (uint8_t *)bytes, .len = len};
            collect_secrets(L, ctx, &view);
        }
    }
    int n = 0;
    int rc = mt_args_decode(L, bytes, len, &n, &err);
    mt_buf_clear(plain);  // the arguments now exist only as Lua values
    if (rc != MT_OK) {
        push_result(L, e, ctx, MT_FAILED, "stored arguments are corrupt; the task cannot run", 0);
        mt_err_clear(&err);
        goto done;
    }
    int status;
    const char *why;
    if (call_task(L, e, ctx, n, &row->policy, &status, &why) == 0) {
        push_result(L, e, ctx, MT_SUCCESS, NULL, 0);
        goto done;
    }
    const char *msg = why != NULL ? why : lua_tostring(L, -1);
    int tries = row->attempts - row->retry_base;
    double run_at = 0;
    if (status == MT_INTERRUPTED && row->policy.requeue_on_interrupt) {
        status = MT_PENDING;
        run_at = mt_engine_now(e);
    } else if (status == MT_FAILED && mt_backoff_should_retry(&row->policy, tries)) {
        status = MT_PENDING;
        run_at = mt_engine_now(e) + mt_backoff_delay(&row->policy, tries, mt_engine_uniform(e));
    }
    push_result(L, e, ctx, status, msg, run_at);
    mt_host_push_traceback(L);
    if (lua_isstring(L, -1)) {
        size_t tlen;
        const char *tb = lua_tolstring(L, -1, &tlen);
        push_redacted(L, ctx, tb, tlen);
        lua_setfield(L, -3, "traceback");
    }
    lua_pop(L, 1);
done:
    lua_getfield(L, ctx, "secret_bytes");
    mt_buf *sb = lua_touserdata(L, -1);
    if (sb != NULL) {
        mt_buf_clear(sb);
    }
    lua_pop(L, 1);
    lua_replace(L, base + 1);
    lua_settop(L, base + 1);
}

typedef struct batch {
    mt_engine *e;
    size_t max;
    size_t ran;
    int rc;
    mt_err *err;
    mt_task *given;    // rows handed in by the caller instead of claimed here
    mt_outcome *copy;  // with given rows: deep copy of the outcomes, not stored
} batch;

// Fills out from the outcome table at idx; strings stay owned by it.
static void fill_outcome(lua_State *L, int idx, const mt_task *row, mt_outcome *out, double now)
{
    lua_getfield(L, idx, "status");
    out->status = (int)lua_tointeger(L, -1);
    lua_getfield(L, idx, "run_at");
    out->run_at = lua_tonumber(L, -1);
    lua_getfield(L, idx, "error");
    out->error = lua_tostring(L, -1);
    lua_getfield(L, idx, "traceback");
    out->traceback = lua_tostring(L, -1);
    lua_pop(L, 4);
    lua_getfield(L, idx, "unclaim");
    out->unclaim = lua_toboolean(L, -1);
    lua_pop(L, 1);
    out->id = row->id;
    out->seq = row->seq;
    out->finished_at = now;
    lua_getfield(L, idx, "logs");  // logs
    size_t n = lua_rawlen(L, -1);
    mt_log_entry *logs = lua_newuserdatauv(L, (n ? n : 1) * sizeof *logs, 0);
    lua_setfield(L, idx, "logs_c");  // anchored in the outcome
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i + 1);  // logs entry
        lua_getfield(L, -1, "attempt");
        lua_getfield(L, -2, "time");
        lua_getfield(L, -3, "level");
        lua_getfield(L, -4, "message");
        lua_getfield(L, -5, "extras");
        logs[i] = (mt_log_entry){.attempt = (int)lua_tointeger(L, -5),
                                 .time = lua_tonumber(L, -4),
                                 .level = lua_tostring(L, -3),
                                 .message = lua_tostring(L, -2),
                                 .extras_json = lua_tostring(L, -1)};
        lua_pop(L, 6);
    }
    lua_pop(L, 1);
    out->logs = logs;
    out->nlogs = n;
}

static void count_outcome(mt_engine *e, const mt_outcome *o)
{
    int status = o->status;
    if (o->unclaim) {
        return;
    }
    if (status == MT_SUCCESS) {
        e->stats.succeeded++;
    } else if (status == MT_PENDING) {
        e->stats.retried++;
    } else {
        e->stats.failed++;
    }
}

static int batch_body(lua_State *L)
{
    batch *b = lua_touserdata(L, 1);
    mt_engine *e = b->e;
    rows_ud *r = push_rows(L, b->max);  // b rows
    size_t n = 0;
    if (b->given != NULL) {
        // From here the rows belong to Lua (rows_gc), whatever happens.
        memcpy(r->rows, b->given, b->max * sizeof(mt_task));
        memset(b->given, 0, b->max * sizeof(mt_task));
        n = b->max;
    } else {
        b->rc = mt_store_claim(e->store, mt_engine_now(e), e->owner, r->rows, b->max, &n, b->err);
    }
    if (b->rc != MT_OK || n == 0) {
        lua_pushnil(L);
        return 1;
    }
    b->ran = n;
    lua_createtable(L, (int)n, 0);  // b rows results
    for (size_t i = 0; i < n; i++) {
        run_task(L, e, &r->rows[i]);
        lua_rawseti(L, 3, (lua_Integer)i + 1);
    }
    lua_createtable(L, (int)n, 0);  // b rows results ids
    for (size_t i = 0; i < n; i++) {
        lua_pushstring(L, r->rows[i].id);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_replace(L, 1);                                             // ids rows results
    mt_outcome *outs = lua_newuserdatauv(L, n * sizeof *outs, 0);  // b rows results outs
    memset(outs, 0, n * sizeof *outs);
    double now = mt_engine_now(e);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 3, (lua_Integer)i + 1);
        fill_outcome(L, lua_gettop(L), &r->rows[i], &outs[i], now);
        lua_pop(L, 1);
    }
    if (b->given != NULL) {
        b->copy = mt_outcomes_dup(outs, n);
        if (b->copy == NULL) {
            b->rc = mt_err_set(b->err, MT_ENOMEM, "out of memory recording task results");
        }
    } else {
        b->rc = mt_store_finish(e->store, outs, n, b->err);
    }
    for (size_t i = 0; b->rc == MT_OK && i < n; i++) {
        count_outcome(e, &outs[i]);
    }
    lua_settop(L, 1);
    return 1;
}

int mt_engine_run_rows(mt_engine *e, mt_task *rows, size_t n, mt_outcome **outs, mt_err *err)
{
    lua_State *L = e->L;
    batch b = {.e = e, .max = n, .err = err, .given = rows};
    *outs = NULL;
    lua_pushcfunction(L, batch_body);
    lua_pushlightuserdata(L, &b);
    if (mt_host_pcall(L, 1, 1) != LUA_OK) {
        b.rc =
            mt_err_set(err, MT_ENOMEM, "engine error while running tasks: %s", lua_tostring(L, -1));
    }
    lua_pop(L, 1);
    for (size_t i = 0; i < n; i++) {
        mt_task_clear(&rows[i]);  // only rows never handed to Lua still hold anything
    }
    *outs = b.copy;
    return b.rc;
}

int mt_engine_run_batch_lua(lua_State *L, mt_engine *e, size_t max, size_t *ran, mt_err *err)
{
    batch b = {.e = e, .max = max ? max : 1, .err = err};
    lua_pushcfunction(L, batch_body);
    lua_pushlightuserdata(L, &b);
    int st = mt_host_pcall(L, 1, 1);
    if (st != LUA_OK) {
        b.rc =
            mt_err_set(err, MT_ENOMEM, "engine error while running tasks: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        lua_pushnil(L);
    }
    *ran = b.ran;
    return b.rc;
}

int mt_engine_run_batch(mt_engine *e, size_t max, size_t *ran, mt_err *err)
{
    int rc = mt_engine_run_batch_lua(e->L, e, max, ran, err);
    lua_pop(e->L, 1);
    return rc;
}
