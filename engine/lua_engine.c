/*
 * lua_engine: enqueue and run tasks for one lua_State; see lua_engine.h.
 *
 * The longjmp rule shapes this file: while a Lua error can be raised, no
 * C-heap object may be live. Claimed rows, decrypted plaintext and redaction
 * lists therefore live in userdata with __gc (Lua owns them), and a batch
 * runs inside one protected C call so that even an out-of-memory error in
 * our glue unwinds to a place that records the claimed tasks.
 */
// SPDX-License-Identifier: MIT
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "argwire.h"
#include "ids.h"
#include "lua_args.h"
#include "lua_engine_lua.h"
#include "lua_host.h"

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
};

static const char TASKS_KEY = 'T';
static const char CURRENT_KEY = 'C';
static const char CONTEXT_KEY = 'X';
static const char SECBUF_MT = 'S';
static const char ROWS_MT = 'R';

// ---------------------------------------------------------------- basics

double mt_engine_now(const mt_engine *e)
{
    return e->virtual_clock ? e->vnow : mt_wall_now();
}

void mt_engine_advance(mt_engine *e, double seconds)
{
    if (e->virtual_clock) {
        e->vnow += seconds;
    }
}

mt_store *mt_engine_store(mt_engine *e)
{
    return e->store;
}

const char *mt_engine_owner(const mt_engine *e)
{
    return e->owner;
}

mt_engine_stats mt_engine_get_stats(const mt_engine *e)
{
    return e->stats;
}

// Uniform draw in [0, 1) for jitter; xorshift64*, seeded from the OS.
static double next_uniform(mt_engine *e)
{
    e->rng ^= e->rng >> 12;
    e->rng ^= e->rng << 25;
    e->rng ^= e->rng >> 27;
    return (double)((e->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

mt_engine *mt_engine_current(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &CURRENT_KEY);
    mt_engine *e = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return e;
}

void mt_engine_set_current(lua_State *L, mt_engine *e)
{
    if (e != NULL) {
        lua_pushlightuserdata(L, e);
    } else {
        lua_pushnil(L);
    }
    lua_rawsetp(L, LUA_REGISTRYINDEX, &CURRENT_KEY);
}

void mt_engine_push_tasks(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &TASKS_KEY);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &TASKS_KEY);
    }
}

// ---------------------------------------------------------------- policy

static bool in_list(const char *k, const char *const *list)
{
    for (; list != NULL && *list != NULL; list++) {
        if (strcmp(k, *list) == 0) {
            return true;
        }
    }
    return false;
}

static double opt_number(lua_State *L, const char *what, const char *k, double min)
{
    if (!lua_isnumber(L, -1) || lua_type(L, -1) == LUA_TSTRING) {
        luaL_error(L, "%s: option '%s' must be a number, got %s", what, k, luaL_typename(L, -1));
    }
    double v = lua_tonumber(L, -1);
    if (!(v >= min) || isinf(v)) {
        luaL_error(L, "%s: option '%s' must be a finite number >= %f", what, k, min);
    }
    return v;
}

static bool opt_bool(lua_State *L, const char *what, const char *k)
{
    if (!lua_isboolean(L, -1)) {
        luaL_error(L, "%s: option '%s' must be a boolean, got %s", what, k, luaL_typename(L, -1));
    }
    return lua_toboolean(L, -1);
}

// One option into spec; false when k is not a policy option.
static bool policy_field(lua_State *L, const char *what, const char *k, const char *delay_name,
                         mt_policy_spec *s)
{
    if (strcmp(k, "retries") == 0) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0 || lua_tointeger(L, -1) > 1000000) {
            luaL_error(L, "%s: option 'retries' must be a whole number from 0 to 1000000", what);
        }
        s->p.retries = (int)lua_tointeger(L, -1);
        s->set |= MT_SET_RETRIES;
    } else if (strcmp(k, delay_name) == 0) {
        s->p.delay = opt_number(L, what, k, 0);
        s->set |= MT_SET_DELAY;
    } else if (strcmp(k, "backoff") == 0) {
        s->p.backoff = opt_number(L, what, k, 0);
        s->set |= MT_SET_BACKOFF;
    } else if (strcmp(k, "max_delay") == 0) {
        s->p.max_delay = opt_number(L, what, k, 0);
        s->set |= MT_SET_MAX_DELAY;
    } else if (strcmp(k, "jitter") == 0) {
        s->p.jitter = opt_number(L, what, k, 0);
        if (s->p.jitter > 1) {
            luaL_error(L, "%s: option 'jitter' must be a fraction from 0 to 1", what);
        }
        s->set |= MT_SET_JITTER;
    } else if (strcmp(k, "timeout") == 0) {
        s->p.timeout = opt_number(L, what, k, 0);
        s->set |= MT_SET_TIMEOUT;
    } else if (strcmp(k, "requeue_on_interrupt") == 0) {
        s->p.requeue_on_interrupt = opt_bool(L, what, k);
        s->set |= MT_SET_REQUEUE;
    } else if (strcmp(k, "redact") == 0) {
        s->p.redact = opt_bool(L, what, k);
        s->set |= MT_SET_REDACT;
    } else {
        return false;
    }
    return true;
}

void mt_policy_from_table(lua_State *L, int idx, const char *what, const char *const *extra,
                          const char *delay_name, mt_policy_spec *spec)
{
    idx = lua_absindex(L, idx);
    memset(spec, 0, sizeof *spec);
    spec->p = mt_policy_default();
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {  // key value
        if (lua_type(L, -2) != LUA_TSTRING) {
            luaL_error(L, "%s: option names must be strings", what);
        }
        const char *k = lua_tostring(L, -2);
        if (!in_list(k, extra) && !policy_field(L, what, k, delay_name, spec)) {
            luaL_error(L, "%s: unknown option '%s'", what, k);
        }
        lua_pop(L, 1);
    }
}

void mt_policy_overlay(mt_policy *p, const mt_policy_spec *s)
{
    if (s->set & MT_SET_RETRIES) {
        p->retries = s->p.retries;
    }
    if (s->set & MT_SET_DELAY) {
        p->delay = s->p.delay;
    }
    if (s->set & MT_SET_BACKOFF) {
        p->backoff = s->p.backoff;
    }
    if (s->set & MT_SET_MAX_DELAY) {
        p->max_delay = s->p.max_delay;
    }
    if (s->set & MT_SET_JITTER) {
        p->jitter = s->p.jitter;
    }
    if (s->set & MT_SET_TIMEOUT) {
        p->timeout = s->p.timeout;
    }
    if (s->set & MT_SET_REQUEUE) {
        p->requeue_on_interrupt = s->p.requeue_on_interrupt;
    }
    if (s->set & MT_SET_REDACT) {
        p->redact = s->p.redact;
    }
}

// ------------------------------------------------------ engine lifecycle

static int engine_init(mt_engine *e, lua_State *L, const mt_engine_cfg *cfg, mt_err *err)
{
    e->L = L;
    e->sink = cfg->sink;
    e->defaults = cfg->defaults;
    e->virtual_clock = cfg->virtual_clock;
    e->vnow = mt_wall_now();
    uint8_t seed[8];
    if (mt_random_bytes(seed, sizeof seed) != MT_OK) {
        return mt_err_set(err, MT_EIO, "cannot read random bytes from the OS");
    }
    memcpy(&e->rng, seed, sizeof seed);
    e->rng |= 1;
    e->owner = mt_owner_self();
    if (e->owner == NULL) {
        return mt_err_set(err, MT_ENOMEM, "out of memory");
    }
    if (cfg->nkeys > 0) {
        e->keys = calloc(cfg->nkeys, sizeof *e->keys);
        if (e->keys == NULL) {
            return mt_err_set(err, MT_ENOMEM, "out of memory");
        }
        memcpy(e->keys, cfg->keys, cfg->nkeys * sizeof *e->keys);
        e->nkeys = cfg->nkeys;
    }
    mt_limits *lim = mt_host_limits(L);
    lim->abort = cfg->abort;
    return mt_store_open(&e->store, cfg->database, &cfg->store, err);
}

int mt_engine_open(lua_State *L, const mt_engine_cfg *cfg, mt_engine **out, mt_err *err)
{
    *out = NULL;
    mt_engine *e = calloc(1, sizeof *e);
    if (e == NULL) {
        return mt_err_set(err, MT_ENOMEM, "out of memory");
    }
    int rc = engine_init(e, L, cfg, err);
    if (rc != MT_OK) {
        mt_engine_free(e);
        return rc;
    }
    *out = e;
    return MT_OK;
}

void mt_engine_free(mt_engine *e)
{
    if (e == NULL) {
        return;
    }
    mt_store_close(e->store);
    if (e->keys != NULL) {
        mt_wipe(e->keys, e->nkeys * sizeof *e->keys);
        free(e->keys);
    }
    free(e->owner);
    if (e->owns_state) {
        mt_host_close(e->L);
    } else if (e->L != NULL && mt_engine_current(e->L) == e) {
        mt_engine_set_current(e->L, NULL);
    }
    free(e);
}

static int load_scripts(lua_State *L)
{
    const char *const *scripts = lua_touserdata(L, 1);
    size_t n = (size_t)lua_tointeger(L, 2);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moontask");
    lua_call(L, 1, 0);
    for (size_t i = 0; i < n; i++) {
        if (mt_host_dofile(L, scripts[i]) != 0) {
            return luaL_error(L, "task script %s failed to load: %s", scripts[i],
                              lua_tostring(L, -1));
        }
    }
    return 0;
}

int mt_engine_new_worker(const mt_engine_cfg *cfg, const char *const *scripts, size_t nscripts,
                         mt_engine **out, mt_err *err)
{
    *out = NULL;
    mt_engine *e = calloc(1, sizeof *e);
    if (e == NULL) {
        return mt_err_set(err, MT_ENOMEM, "out of memory");
    }
    e->L = mt_host_newstate(cfg->mem_limit);
    e->owns_state = true;
    int rc = e->L != NULL ? engine_init(e, e->L, cfg, err)
                          : mt_err_set(err, MT_ENOMEM, "cannot create a Lua state");
    if (rc == MT_OK) {
        mt_engine_set_current(e->L, e);
        lua_pushcfunction(e->L, load_scripts);
        lua_pushlightuserdata(e->L, (void *)scripts);
        lua_pushinteger(e->L, (lua_Integer)nscripts);
        if (mt_host_pcall(e->L, 2, 0) != LUA_OK) {
            rc = mt_err_set(err, MT_EINVAL, "%s", lua_tostring(e->L, -1));
        }
    }
    if (rc != MT_OK) {
        mt_engine_free(e);
        return rc;
    }
    *out = e;
    return MT_OK;
}

static bool owner_alive(void *ud, const char *owner)
{
    (void)ud;
    return mt_owner_alive(owner);
}

int mt_engine_recover(mt_engine *e, int *interrupted, int *requeued, mt_err *err)
{
    return mt_store_recover(e->store, mt_engine_now(e), owner_alive, NULL, interrupted, requeued,
                            err);
}

// ---------------------------------------------------------------- enqueue

// Effective policy of a registered task (builtin < config < task script).
static mt_policy task_policy(lua_State *L, mt_engine *e, int entry)
{
    mt_policy p = e->defaults;
    if (entry != 0 && lua_getfield(L, entry, "spec") == LUA_TUSERDATA) {
        mt_policy_overlay(&p, lua_touserdata(L, -1));
    }
    if (entry != 0) {
        lua_pop(L, 1);
    }
    return p;
}

static int encrypt_payload(mt_engine *e, const mt_buf *plain, double now, mt_buf *token,
                           mt_err *err)
{
    return mt_fernet_encrypt(&e->keys[0], plain->data, plain->len, (int64_t)floor(now), NULL, token,
                             err);
}

int mt_engine_enqueue(lua_State *L, mt_engine *e, const char *task, int first, int n,
                      const mt_enqueue_opts *o, char id[37], mt_err *err)
{
    first = lua_absindex(L, first);
    mt_engine_push_tasks(L);  // tasks
    bool any = (lua_pushnil(L), lua_next(L, -2) != 0);
    if (any) {
        lua_pop(L, 2);
    }
    int entry = lua_getfield(L, -1, task) == LUA_TTABLE ? lua_gettop(L) : 0;  // tasks entry
    if (any && entry == 0) {
        lua_pop(L, 2);
        return mt_err_set(err, MT_ENOTFOUND,
                          "unknown task '%s': no loaded task script registers it "
                          "(check the task name and the config's scripts)",
                          task);
    }
    mt_policy p = task_policy(L, e, entry);
    lua_pop(L, 2);
    if (o != NULL) {
        mt_policy_overlay(&p, &o->spec);
    }
    mt_buf plain, token;
    mt_buf_init(&plain, true);
    mt_buf_init(&token, false);
    int rc = mt_args_encode(L, first, n, &plain, err);
    double now = mt_engine_now(e);
    if (rc == MT_OK && e->nkeys > 0) {
        rc = encrypt_payload(e, &plain, now, &token, err);
    }
    if (rc == MT_OK) {
        rc = mt_uuid4(id);
    }
    if (rc == MT_OK) {
        double run_at = now;
        if (o != NULL) {
            run_at = o->run_at > 0 ? o->run_at : now + o->delay;
        }
        mt_task_new t = {
            .id = id,
            .task = task,
            .payload = e->nkeys > 0 ? NULL : plain.data,
            .payload_len = e->nkeys > 0 ? 0 : plain.len,
            .token = e->nkeys > 0 ? (const char *)token.data : NULL,
            .created_at = now,
            .run_at = run_at,
            .policy = p,
        };
        rc = mt_store_insert(e->store, &t, 1, err);
    }
    mt_buf_clear(&plain);
    mt_buf_clear(&token);
    return rc;
}

// ------------------------------------------------- Lua-owned temporaries

static int secbuf_gc(lua_State *L)
{
    mt_buf *b = lua_touserdata(L, 1);
    mt_buf_clear(b);
    return 0;
}

// A secure mt_buf owned by Lua: wiped and freed by __gc, or earlier by
// mt_buf_clear (which leaves it empty, so the later __gc is harmless).
// [-0, +1, m]
mt_buf *mt_lua_push_buf(lua_State *L, bool secure)
{
    mt_buf *b = lua_newuserdatauv(L, sizeof *b, 0);
    mt_buf_init(b, secure);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &SECBUF_MT) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 2);
        lua_pushcfunction(L, secbuf_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &SECBUF_MT);
    }
    lua_setmetatable(L, -2);
    return b;
}

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
    rows_ud *r = lua_newuserdatauv(L, sizeof *r + n * sizeof(mt_task), 0);
    r->n = n;
    memset(r->rows, 0, n * sizeof(mt_task));
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &ROWS_MT) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 2);
        lua_pushcfunction(L, rows_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &ROWS_MT);
    }
    lua_setmetatable(L, -2);
    return r;
}

// Decrypts a token with any configured key into b. Fixed messages only.
static int open_token(mt_engine *e, const char *token, mt_buf *b, mt_err *err)
{
    if (e->nkeys == 0) {
        return mt_err_set(err, MT_ECRYPTO,
                          "cannot decrypt arguments: no encryption key is configured");
    }
    for (size_t i = 0; i < e->nkeys; i++) {
        mt_buf_reset(b);
        if (mt_fernet_decrypt(&e->keys[i], token, strlen(token), 0, 0, b, NULL, NULL) == MT_OK) {
            return MT_OK;
        }
    }
    mt_buf_reset(b);
    return mt_err_set(err, MT_ECRYPTO, "cannot decrypt arguments: no configured key matches");
}

void mt_engine_push_args(lua_State *L, mt_engine *e, const mt_task *row)
{
    const uint8_t *p = row->payload;
    size_t len = row->payload_len;
    mt_buf *b = push_secbuf(L);  // secbuf
    if (row->token != NULL) {
        if (open_token(e, row->token, b, NULL) != MT_OK) {
            lua_pop(L, 1);
            lua_pushnil(L);
            return;
        }
        p = b->data;
        len = b->len;
    }
    int top = lua_gettop(L);
    int n = 0;
    if (mt_args_decode(L, p, len, &n, NULL) != MT_OK) {
        mt_buf_clear(b);
        lua_pop(L, 1);
        lua_pushnil(L);
        return;
    }
    mt_buf_clear(b);
    lua_createtable(L, n, 1);  // secbuf a1..an t
    for (int i = n; i >= 1; i--) {
        lua_insert(L, -2);
        lua_rawseti(L, -2, i);
    }
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "n");
    lua_remove(L, top);  // t
}

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

void mt_engine_log(lua_State *L, int level, const char *msg, size_t len, const char *extras,
                   size_t elen)
{
    mt_engine *e = mt_engine_current(L);
    int ctx = push_ctx(L);  // [ctx]
    if (ctx == 0) {
        sink_entry(L, e, 0, level, msg, extras);
        return;
    }
    lua_createtable(L, 0, 5);  // ctx entry
    push_redacted(L, ctx, msg, len);
    lua_setfield(L, -2, "message");
    if (extras != NULL) {
        push_redacted(L, ctx, extras, elen);
        lua_setfield(L, -2, "extras");
    }
    lua_pushstring(L, mt_log_level_name(level));
    lua_setfield(L, -2, "level");
    lua_getfield(L, ctx, "attempt");
    lua_setfield(L, -2, "attempt");
    lua_pushnumber(L, e ? mt_engine_now(e) : mt_wall_now());
    lua_setfield(L, -2, "time");
    lua_getfield(L, -1, "message");
    lua_getfield(L, -2, "extras");  // ctx entry msg extras
    sink_entry(L, e, ctx, level, lua_tostring(L, -2), lua_tostring(L, -1));
    lua_pop(L, 2);
    lua_getfield(L, ctx, "logs");  // ctx entry logs
    lua_insert(L, -2);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    lua_pop(L, 2);
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
    mt_engine_log(L, MT_LOG_INFO, msg, len, NULL, 0);
    return 0;
}

static int refuse_exit(lua_State *L)
{
    return luaL_error(L, "os.exit called inside a task; raise an error to fail the task instead");
}

// ------------------------------------------------------------------- run

// Pushes the outcome table {status=, error=, traceback=, run_at=, logs=}.
static void push_result(lua_State *L, int ctx, int status, const char *error, double run_at)
{
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

// Swaps print and os.exit for the task's versions, or back.
static void swap_globals(lua_State *L, int ctx, bool enter)
{
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
        push_result(L, ctx, MT_PENDING, NULL, row->run_at);
        goto done;
    }
    mt_engine_push_tasks(L);  // ctx tasks
    if (lua_getfield(L, -1, row->task) != LUA_TTABLE) {
        lua_pushfstring(L,
                        "unknown task '%s': no loaded task script registers it (add its "
                        "script to the config's scripts, then `moontask retry %s`)",
                        row->task, row->id);
        push_result(L, ctx, MT_FAILED, lua_tostring(L, -1), 0);
        goto done;
    }
    lua_getfield(L, -1, "fn");       // ctx tasks entry fn
    mt_buf *plain = push_secbuf(L);  // ctx tasks entry fn plain
    lua_insert(L, -2);               // ctx tasks entry plain fn
    mt_err err = {0};
    const uint8_t *bytes = row->payload;
    size_t len = row->payload_len;
    if (row->token != NULL) {
        if (open_token(e, row->token, plain, &err) != MT_OK) {
            push_result(L, ctx, MT_FAILED, mt_err_msg(&err), 0);
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
        push_result(L, ctx, MT_FAILED, "stored arguments are corrupt; the task cannot run", 0);
        mt_err_clear(&err);
        goto done;
    }
    int status;
    const char *why;
    if (call_task(L, e, ctx, n, &row->policy, &status, &why) == 0) {
        push_result(L, ctx, MT_SUCCESS, NULL, 0);
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
        run_at = mt_engine_now(e) + mt_backoff_delay(&row->policy, tries, next_uniform(e));
    }
    push_result(L, ctx, status, msg, run_at);
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
    out->id = row->id;
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

static void count_outcome(mt_engine *e, int status)
{
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
    b->rc = mt_store_claim(e->store, mt_engine_now(e), e->owner, r->rows, b->max, &n, b->err);
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
    double now = mt_engine_now(e);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 3, (lua_Integer)i + 1);
        fill_outcome(L, lua_gettop(L), &r->rows[i], &outs[i], now);
        lua_pop(L, 1);
    }
    b->rc = mt_store_finish(e->store, outs, n, b->err);
    for (size_t i = 0; b->rc == MT_OK && i < n; i++) {
        count_outcome(e, outs[i].status);
    }
    lua_settop(L, 1);
    return 1;
}

int mt_engine_run_batch_lua(mt_engine *e, size_t max, size_t *ran, mt_err *err)
{
    lua_State *L = e->L;
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
    int rc = mt_engine_run_batch_lua(e, max, ran, err);
    lua_pop(e->L, 1);
    return rc;
}

// --------------------------------------------------- inspection helpers

void mt_engine_push_args_json(lua_State *L, mt_engine *e, const mt_task *row)
{
    mt_buf *b = push_secbuf(L);  // b
    const uint8_t *p = row->payload;
    size_t len = row->payload_len;
    if (row->token != NULL) {
        if (open_token(e, row->token, b, NULL) != MT_OK) {
            lua_pop(L, 1);
            lua_pushnil(L);
            return;
        }
        p = b->data;
        len = b->len;
    }
    char *json = NULL;
    int rc = mt_args_to_json(p, len, &json, NULL);
    mt_buf_reset(b);
    if (rc == MT_OK) {
        rc = mt_buf_append_str(b, json);
        mt_wipe(json, strlen(json));
        free(json);
    }
    if (rc != MT_OK) {
        mt_buf_clear(b);
        lua_pop(L, 1);
        lua_pushnil(L);
        return;
    }
    lua_pushlstring(L, (const char *)b->data, b->len);  // b json
    mt_buf_clear(b);
    lua_remove(L, -2);
}

// ---------------------------------------------------------- key rotation

typedef struct rotation {
    mt_engine *e;
    mt_err *err;
} rotation;

// Runs inside the store's transaction: C only, never Lua.
static int rotate_row(void *ud, const mt_task *row, char **new_token)
{
    rotation *r = ud;
    mt_buf plain, token;
    mt_buf_init(&plain, true);
    mt_buf_init(&token, false);
    int rc = MT_OK;
    if (row->token != NULL) {
        rc = open_token(r->e, row->token, &plain, NULL);
        if (rc != MT_OK) {
            rc = mt_err_set(r->err, MT_ECRYPTO,
                            "task %s: no configured key opens its arguments; add the key "
                            "that encrypted it to encrypt_args_keys and run rotate-key again "
                            "(nothing was changed)",
                            row->id);
        }
    } else {
        rc = mt_buf_append(&plain, row->payload, row->payload_len);
    }
    if (rc == MT_OK) {
        rc = mt_fernet_encrypt(&r->e->keys[0], plain.data, plain.len,
                               (int64_t)floor(mt_engine_now(r->e)), NULL, &token, r->err);
    }
    mt_buf_clear(&plain);
    if (rc == MT_OK) {
        *new_token = (char *)mt_buf_take(&token, NULL);
    }
    mt_buf_clear(&token);
    return rc;
}

int mt_engine_rotate(mt_engine *e, int64_t *count, mt_err *err)
{
    *count = 0;
    if (e->nkeys == 0) {
        return mt_err_set(err, MT_EINVAL,
                          "no encryption key is configured: set encrypt_args_key or "
                          "encrypt_args_keys (new key first) in the config");
    }
    rotation r = {.e = e, .err = err};
    return mt_store_rewrite_payloads(e->store, rotate_row, &r, count, err);
}
