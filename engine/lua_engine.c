/*
 * lua_engine: an engine bound to one lua_State: life cycle, task policy,
 * enqueue (serialise -> encrypt -> insert), argument views for inspection,
 * and key rotation. Running tasks is in lua_run.c.
 *
 * While a Lua error can be raised, no C-heap object may be live: plaintext
 * lives in Lua-owned secure buffers (mt_lua_push_buf).
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
#include "lua_engine_int.h"
#include "lua_host.h"

static const char TASKS_KEY = 'T';
static const char CURRENT_KEY = 'C';
static const char SECBUF_MT = 'S';

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

bool mt_engine_valid_name(const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c < 0x20 || c == 0x7f) {
            return false;
        }
    }
    return n > 0 && n <= 200;
}

void mt_engine_set_strict(mt_engine *e)
{
    e->strict = true;
}

mt_engine_stats mt_engine_get_stats(const mt_engine *e)
{
    return e->stats;
}

// Uniform draw in [0, 1) for jitter; xorshift64*, seeded from the OS.
double mt_engine_uniform(mt_engine *e)
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
    // Keep the main thread: the caller may be a coroutine that dies before
    // the engine does. Methods run tasks on the thread that calls them.
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    e->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    mt_host_install_hook(L);
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
        e->strict = true;
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

// The policy of a task about to be enqueued, or MT_ENOTFOUND for a name the
// loaded registry lacks. [-0, +0, m]
static int lookup_policy(lua_State *L, mt_engine *e, const char *task, mt_policy *p, mt_err *err)
{
    if (!mt_engine_valid_name(task)) {
        return mt_err_set(err, MT_EINVAL,
                          "task name must be 1 to 200 bytes without control characters");
    }
    mt_engine_push_tasks(L);  // tasks
    bool any = e->strict || (lua_pushnil(L), lua_next(L, -2) != 0);
    if (any && !e->strict) {
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
    *p = task_policy(L, e, entry);
    lua_pop(L, 2);
    return MT_OK;
}

// Serialises (and encrypts) the n values at first.. into t, whose payload
// or token then lives in a Lua-owned buffer left on the stack; the
// plaintext of an encrypted task is wiped at once. [-0, +1, m]
static int prepare_task(lua_State *L, mt_engine *e, int first, int n, double now, mt_task_new *t,
                        char id[37], mt_err *err)
{
    first = lua_absindex(L, first);
    mt_buf *out = mt_lua_push_buf(L, e->nkeys == 0);  // out
    int rc = MT_OK;
    if (e->nkeys == 0) {
        rc = mt_args_encode(L, first, n, out, err);
    } else {
        mt_buf *plain = mt_lua_push_buf(L, true);  // out plain
        rc = mt_args_encode(L, first, n, plain, err);
        if (rc == MT_OK) {
            rc = encrypt_payload(e, plain, now, out, err);
        }
        mt_buf_clear(plain);
        lua_pop(L, 1);  // out
    }
    if (rc == MT_OK) {
        rc = mt_uuid4(id);
    }
    t->id = id;
    t->created_at = now;
    t->payload = e->nkeys > 0 ? NULL : out->data;
    t->payload_len = e->nkeys > 0 ? 0 : out->len;
    t->token = e->nkeys > 0 ? (const char *)out->data : NULL;
    return rc;
}

int mt_engine_enqueue(lua_State *L, mt_engine *e, const char *task, int first, int n,
                      const mt_enqueue_opts *o, char id[37], mt_err *err)
{
    first = lua_absindex(L, first);
    mt_policy p;
    int rc = lookup_policy(L, e, task, &p, err);
    if (rc != MT_OK) {
        return rc;
    }
    if (o != NULL) {
        mt_policy_overlay(&p, &o->spec);
    }
    double now = mt_engine_now(e);
    mt_task_new t = {.task = task, .policy = p};
    rc = prepare_task(L, e, first, n, now, &t, id, err);  // buf
    if (rc == MT_OK) {
        t.run_at = now;
        if (o != NULL) {
            t.run_at = o->run_at > 0 ? o->run_at : now + o->delay;
        }
        rc = mt_store_insert(e->store, &t, 1, err);
    }
    mt_buf_clear(lua_touserdata(L, -1));
    lua_pop(L, 1);
    return rc;
}

int mt_engine_enqueue_many(lua_State *L, mt_engine *e, const char *task, int list, mt_err *err)
{
    list = lua_absindex(L, list);
    mt_policy p;
    int rc = lookup_policy(L, e, task, &p, err);
    if (rc != MT_OK) {
        return rc;
    }
    size_t count = lua_rawlen(L, list);
    int base = lua_gettop(L);
    // Plain memory owned by Lua: the rows point into the buffers on the stack.
    mt_task_new *ts = lua_newuserdatauv(L, (count ? count : 1) * (sizeof *ts + 37), 0);  // ts
    char *ids = (char *)(ts + (count ? count : 1));
    double now = mt_engine_now(e);
    luaL_checkstack(L, 8, "enqueue_many");
    for (size_t i = 0; rc == MT_OK && i < count; i++) {
        if (lua_rawgeti(L, list, (lua_Integer)i + 1) != LUA_TTABLE) {  // ts ... args
            lua_pop(L, 1);
            rc = mt_err_set(err, MT_EINVAL, "task %zu: expected a table of arguments", i + 1);
            break;
        }
        lua_getfield(L, -1, "n");
        int n = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : (int)lua_rawlen(L, -2);
        lua_pop(L, 1);
        if (n < 0 || n > 10000) {
            lua_pop(L, 1);
            rc = mt_err_set(err, MT_EINVAL, "task %zu: args.n must be from 0 to 10000", i + 1);
            break;
        }
        luaL_checkstack(L, n + 4, "too many arguments");
        int args = lua_gettop(L);
        for (int k = 1; k <= n; k++) {
            lua_rawgeti(L, args, k);
        }
        ts[i] = (mt_task_new){.task = task, .policy = p, .run_at = now};
        rc = prepare_task(L, e, args + 1, n, now, &ts[i], ids + i * 37, err);  // .. args a* buf
        if (rc == MT_EINVAL) {
            lua_pushfstring(L, "task %d: %s", (int)i + 1, mt_err_msg(err));
            rc = mt_err_set(err, MT_EINVAL, "%s", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        lua_replace(L, args);  // the buffer stays anchored where the table was
        lua_settop(L, args);
    }
    if (rc == MT_OK && count > 0) {
        rc = mt_store_insert(e->store, ts, count, err);
    }
    for (int k = base + 2; k <= lua_gettop(L); k++) {
        mt_buf *b = lua_touserdata(L, k);  // only buffers sit above ts
        mt_buf_clear(b);                   // wipe and free now, not at the next GC
    }
    if (rc != MT_OK) {
        lua_settop(L, base);
        return rc;
    }
    lua_createtable(L, (int)count, 0);  // ts bufs... ids
    for (size_t i = 0; i < count; i++) {
        lua_pushstring(L, ids + i * 37);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_replace(L, base + 1);
    lua_settop(L, base + 1);
    return MT_OK;
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
void *mt_lua_new_owned(lua_State *L, size_t size, const char *key, lua_CFunction gc)
{
    void *p = lua_newuserdatauv(L, size, 0);
    memset(p, 0, size);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, key) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, key);
    }
    lua_setmetatable(L, -2);
    return p;
}

// [-0, +1, m]
mt_buf *mt_lua_push_buf(lua_State *L, bool secure)
{
    mt_buf *b = mt_lua_new_owned(L, sizeof *b, &SECBUF_MT, secbuf_gc);
    mt_buf_init(b, secure);
    return b;
}

static mt_buf *push_secbuf(lua_State *L)
{
    return mt_lua_push_buf(L, true);
}

int mt_engine_open_token(mt_engine *e, const char *token, mt_buf *b, mt_err *err)
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


// --------------------------------------------------- inspection helpers

void mt_engine_push_arg_views(lua_State *L, mt_engine *e, const mt_task *row)
{
    mt_buf *b = push_secbuf(L);  // b
    int bi = lua_gettop(L);
    const uint8_t *p = row->payload;
    size_t len = row->payload_len;
    if (row->token != NULL) {
        if (mt_engine_open_token(e, row->token, b, NULL) != MT_OK) {
            lua_pop(L, 1);
            lua_pushnil(L);
            lua_pushnil(L);
            return;
        }
        p = b->data;
        len = b->len;
    }
    // Both views come from one decryption. The JSON text goes into a
    // Lua-owned buffer before any Lua value is built.
    mt_buf *j = push_secbuf(L);  // b j
    char *json = NULL;
    bool has_json = mt_args_to_json(p, len, &json, NULL) == MT_OK;
    if (has_json) {
        has_json = mt_buf_append_str(j, json) == MT_OK;
        mt_wipe(json, strlen(json));
        free(json);
    }
    int n = 0;
    if (mt_args_decode(L, p, len, &n, NULL) != MT_OK) {
        mt_buf_clear(b);
        mt_buf_clear(j);
        lua_settop(L, bi - 1);
        lua_pushnil(L);
        lua_pushnil(L);
        return;
    }
    mt_buf_clear(b);
    lua_createtable(L, n, 1);  // b j a1..an t
    for (int i = n; i >= 1; i--) {
        lua_insert(L, -2);
        lua_rawseti(L, -2, i);
    }
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "n");
    if (has_json) {
        lua_pushlstring(L, (const char *)j->data, j->len);  // b j t json
    } else {
        lua_pushnil(L);
    }
    mt_buf_clear(j);
    lua_remove(L, bi + 1);
    lua_remove(L, bi);  // t json
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
        rc = mt_engine_open_token(r->e, row->token, &plain, NULL);
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
