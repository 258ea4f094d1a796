/*
 * lua_args: task arguments between Lua values and wire bytes (MessagePack),
 * plus the JSON forms the CLI reads and log extras are written in. The
 * only unit that knows both Lua and the wire format; reading the wire goes
 * through argwire's bounds-checked reader, writing through msgpack_packer.
 * Called by lua_api.c (enqueue), worker.c (decode before the task call) and
 * the CLI. Knows no SQLite or OpenSSL.
 *
 * The longjmp rule shapes this file: a Lua memory error may unwind any
 * function here, so no C heap is owned across a Lua call. The encoder keeps
 * its visited set in a Lua table and builds the error path only when it
 * fails; packing appends straight into the caller's mt_buf. The JSON
 * functions own jansson trees, so their Lua work runs under lua_pcall and
 * the tree is freed before any error is raised again.
 */
// SPDX-License-Identifier: MIT
#include "lua_args.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <msgpack.h>

#include "argwire.h"

// ---- Encoding: Lua values -> wire bytes ----

// Longest field name shown in an error path; longer or odd string keys are
// not shown at all (a key can be a secret).
#define KEY_SHOWN 32

typedef struct enc {
    lua_State *L;
    msgpack_packer pk;
    mt_err *err;
    int argn;                     // 1-based argument being encoded, for messages
    int visited;                  // stack index of {table = true} for tables on the current path
    int keys[MT_WIRE_MAX_DEPTH];  // stack index of each key on the current path
} enc;

static int put(void *data, const char *p, size_t n)
{
    return mt_buf_append(data, p, n);
}

static int nomem(enc *e)
{
    return mt_err_set(e->err, MT_ENOMEM, "out of memory encoding task arguments");
}

static bool is_ident(const char *s, size_t n)
{
    if (n == 0 || (s[0] >= '0' && s[0] <= '9')) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_')) {
            return false;
        }
    }
    return true;
}

// Pushes the text of the path keys[0..plen): card.items[3][<string key>].
// Keys are read where lua_next left them, never converted in place.
// [-0, +1, m]
static void push_path(lua_State *L, const enc *e, int plen)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 0; i < plen; i++) {
        int k = e->keys[i];
        size_t n;
        const char *s;
        switch (lua_type(L, k)) {
        case LUA_TSTRING:
            s = lua_tolstring(L, k, &n);
            if (is_ident(s, n) && n <= KEY_SHOWN) {
                if (i > 0) {
                    luaL_addchar(&b, '.');
                }
                luaL_addlstring(&b, s, n);
            } else {
                // Arguments may be secret (and are encrypted at rest): a key that
                // does not look like a field name is not quoted in a message.
                luaL_addstring(&b, "[<string key>]");
            }
            break;
        case LUA_TNUMBER:
            if (lua_isinteger(L, k)) {
                lua_pushfstring(L, "[%I]", (lua_Integer)lua_tointeger(L, k));
            } else {
                lua_pushfstring(L, "[%f]", (lua_Number)lua_tonumber(L, k));
            }
            luaL_addvalue(&b);
            break;
        default:
            luaL_addstring(&b, lua_toboolean(L, k) ? "[true]" : "[false]");
            break;
        }
    }
    luaL_pushresult(&b);
}

// Records "argument N: field 'path' <what>", or "argument N <what>" for the
// argument itself; what is the concatenation of a, b and c. [-0, +0, m]
static int fail(enc *e, int plen, const char *a, const char *b, const char *c)
{
    lua_State *L = e->L;
    if (plen == 0 || !lua_checkstack(L, 10)) {
        return mt_err_set(e->err, MT_EINVAL, "argument %d %s%s%s", e->argn, a, b, c);
    }
    push_path(L, e, plen);
    mt_err_set(e->err, MT_EINVAL, "argument %d: field '%s' %s%s%s", e->argn, lua_tostring(L, -1), a,
               b, c);
    lua_pop(L, 1);
    return MT_EINVAL;
}

// Valid UTF-8 becomes str, anything else bin; Lua strings are bytes.
static int enc_string(enc *e, int idx, int plen)
{
    size_t n;
    const char *s = lua_tolstring(e->L, idx, &n);  // a string already: no conversion
    if (n > UINT32_MAX) {
        return fail(e, plen, "is a string longer than 4 GiB", "", "");
    }
    int r = mt_utf8_valid((const uint8_t *)s, n) ? msgpack_pack_str_with_body(&e->pk, s, n)
                                                 : msgpack_pack_bin_with_body(&e->pk, s, n);
    return r == 0 ? MT_OK : nomem(e);
}

// Counts the entries of the table at idx and decides its shape: an array
// when the keys are exactly 1..count (the empty table too), else a map.
// Refuses key types a map cannot carry. [-0, +0, -]
static int shape(enc *e, int idx, int plen, lua_Unsigned *count, bool *seq)
{
    lua_State *L = e->L;
    lua_Unsigned n = 0;
    lua_Integer max = 0;
    bool ints = true;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {  // key value
        int kt = lua_type(L, -2);
        if (kt != LUA_TSTRING && kt != LUA_TNUMBER && kt != LUA_TBOOLEAN) {
            const char *tname = luaL_typename(L, -2);  // static text, survives the pop
            lua_pop(L, 2);
            return fail(e, plen, "has a ", tname, " key");
        }
        n++;
        if (ints && lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1) {
            lua_Integer k = lua_tointeger(L, -2);
            max = k > max ? k : max;
        } else {
            ints = false;
        }
        lua_pop(L, 1);  // key
    }
    if (n > UINT32_MAX) {
        return fail(e, plen, "has more than 2^32 entries", "", "");
    }
    *count = n;
    *seq = ints && (lua_Unsigned)max == n;  // n distinct keys in 1..n
    return MT_OK;
}

static int enc_value(enc *e, int idx, int plen);

// Packs a map key; shape() has already refused other key types.
static int enc_key(enc *e, int idx, int plen)
{
    lua_State *L = e->L;
    int r;
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        return enc_string(e, idx, plen);
    case LUA_TNUMBER:
        r = lua_isinteger(L, idx) ? msgpack_pack_int64(&e->pk, lua_tointeger(L, idx))
                                  : msgpack_pack_double(&e->pk, lua_tonumber(L, idx));
        break;
    default:
        r = lua_toboolean(L, idx) ? msgpack_pack_true(&e->pk) : msgpack_pack_false(&e->pk);
        break;
    }
    return r == 0 ? MT_OK : nomem(e);
}

// [-0, +0, m]
static int enc_entries(enc *e, int idx, int plen, lua_Unsigned count, bool seq)
{
    lua_State *L = e->L;
    int rc = MT_OK;
    if (seq) {
        if (msgpack_pack_array(&e->pk, (size_t)count) != 0) {
            return nomem(e);
        }
        for (lua_Unsigned i = 1; i <= count && rc == MT_OK; i++) {
            lua_pushinteger(L, (lua_Integer)i);   // key, kept for the error path
            lua_rawgeti(L, idx, (lua_Integer)i);  // key value
            e->keys[plen] = lua_gettop(L) - 1;
            rc = enc_value(e, lua_gettop(L), plen + 1);
            lua_pop(L, 2);
        }
        return rc;
    }
    if (msgpack_pack_map(&e->pk, (size_t)count) != 0) {
        return nomem(e);
    }
    lua_pushnil(L);
    while (rc == MT_OK && lua_next(L, idx) != 0) {  // key value
        int top = lua_gettop(L);
        e->keys[plen] = top - 1;
        rc = enc_key(e, top - 1, plen);
        if (rc == MT_OK) {
            rc = enc_value(e, top, plen + 1);
        }
        lua_pop(L, rc == MT_OK ? 1 : 2);  // leave the key for lua_next unless stopping
    }
    return rc;
}

// [-0, +0, m]
static int enc_table(enc *e, int idx, int plen)
{
    lua_State *L = e->L;
    if (!lua_checkstack(L, 8)) {
        return nomem(e);
    }
    lua_pushvalue(L, idx);
    if (lua_rawget(L, e->visited) != LUA_TNIL) {
        lua_pop(L, 1);
        return fail(e, plen, "is a cyclic reference", "", "");
    }
    lua_pop(L, 1);
    if (plen >= MT_WIRE_MAX_DEPTH) {
        return fail(e, plen, "is nested deeper than 64 levels", "", "");
    }
    // Only tables on the current path are marked, so a table reached twice
    // without a cycle (a DAG) is simply encoded twice.
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, e->visited);
    lua_Unsigned count = 0;
    bool seq = false;
    int rc = shape(e, idx, plen, &count, &seq);
    if (rc == MT_OK) {
        rc = enc_entries(e, idx, plen, count, seq);
    }
    lua_pushvalue(L, idx);
    lua_pushnil(L);
    lua_rawset(L, e->visited);  // an existing key: no allocation
    return rc;
}

// Packs the value at absolute index idx, reached by the path keys[0..plen).
static int enc_value(enc *e, int idx, int plen)
{
    lua_State *L = e->L;
    int r;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        r = msgpack_pack_nil(&e->pk);
        break;
    case LUA_TBOOLEAN:
        r = lua_toboolean(L, idx) ? msgpack_pack_true(&e->pk) : msgpack_pack_false(&e->pk);
        break;
    case LUA_TNUMBER:
        // Floats stay float64 even when integral, so 1.0 comes back a float.
        r = lua_isinteger(L, idx) ? msgpack_pack_int64(&e->pk, lua_tointeger(L, idx))
                                  : msgpack_pack_double(&e->pk, lua_tonumber(L, idx));
        break;
    case LUA_TSTRING:
        return enc_string(e, idx, plen);
    case LUA_TTABLE:
        return enc_table(e, idx, plen);
    default:
        return fail(e, plen, "is a ", luaL_typename(L, idx), "");
    }
    return r == 0 ? MT_OK : nomem(e);
}

int mt_args_encode(lua_State *L, int first, int n, mt_buf *out, mt_err *err)
{
    int base = lua_gettop(L);
    first = n > 0 ? lua_absindex(L, first) : 1;
    if (n < 0 || first < 1 || first > base - n + 1) {
        return mt_err_set(err, MT_EINVAL, "mt_args_encode: slots %d..%d are not on the stack",
                          first, first + n - 1);
    }
    if (!lua_checkstack(L, 8)) {
        return mt_err_set(err, MT_ENOMEM, "out of memory encoding task arguments");
    }
    size_t start = out->len;
    enc e = {.L = L, .err = err};
    msgpack_packer_init(&e.pk, out, put);
    lua_newtable(L);  // visited
    e.visited = lua_gettop(L);
    int rc = msgpack_pack_array(&e.pk, (size_t)n) == 0 ? MT_OK : nomem(&e);
    for (int i = 0; i < n && rc == MT_OK; i++) {
        e.argn = i + 1;
        rc = enc_value(&e, first + i, 0);
    }
    lua_settop(L, base);
    // On failure the partial bytes go (wiped if out is secure). A Lua memory
    // error unwinding past here leaves them; the caller drops out then.
    if (rc != MT_OK && out->data != NULL) {
        if (out->secure) {
            mt_wipe(out->data + start, out->len - start);
        }
        out->len = start;
        out->data[start] = 0;
    }
    return rc;
}

// ---- Decoding: wire bytes -> Lua values ----

// Pushes the item at *off. The bytes passed mt_wire_check, which bounds
// counts by input size and nesting by MT_WIRE_MAX_DEPTH; reader errors are
// still passed on. No C memory is held, so a Lua memory error leaks
// nothing. [-0, +1, m]
static int dec_value(lua_State *L, const uint8_t *p, size_t len, size_t *off, mt_err *err)
{
    mt_wire_item it;
    int rc = mt_wire_next(p, len, off, &it, err);
    if (rc != MT_OK) {
        return rc;
    }
    bool map = it.kind == MT_WIRE_MAP;
    switch (it.kind) {
    case MT_WIRE_NIL:
        lua_pushnil(L);
        return MT_OK;
    case MT_WIRE_BOOL:
        lua_pushboolean(L, it.b);
        return MT_OK;
    case MT_WIRE_INT:
        lua_pushinteger(L, (lua_Integer)it.i);
        return MT_OK;
    case MT_WIRE_UINT:
        lua_pushnumber(L, (lua_Number)it.u);
        return MT_OK;
    case MT_WIRE_FLOAT:
        lua_pushnumber(L, (lua_Number)it.d);
        return MT_OK;
    case MT_WIRE_STR:
    case MT_WIRE_BIN:
        lua_pushlstring(L, (const char *)it.s, it.n);
        return MT_OK;
    default:
        break;
    }
    if (!lua_checkstack(L, 4)) {
        return mt_err_set(err, MT_ENOMEM, "out of memory decoding task arguments");
    }
    int hint = it.n > INT_MAX ? INT_MAX : (int)it.n;
    lua_createtable(L, map ? 0 : hint, map ? hint : 0);
    for (uint32_t i = 0; i < it.n && rc == MT_OK; i++) {
        if (map) {
            rc = dec_value(L, p, len, off, err);  // t key
        }
        if (rc == MT_OK) {
            rc = dec_value(L, p, len, off, err);  // t [key] value
        }
        if (rc != MT_OK) {
            break;
        }
        if (map) {
            lua_rawset(L, -3);  // key checked: not nil, not NaN
        } else if (lua_isnil(L, -1)) {
            lua_pop(L, 1);  // a hole: t[i] stays absent
        } else {
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
    }
    return rc;
}

int mt_args_decode(lua_State *L, const uint8_t *p, size_t len, int *n, mt_err *err)
{
    *n = 0;
    uint32_t count = 0;
    int rc = mt_wire_check(p, len, &count, err);
    if (rc != MT_OK) {
        return rc;
    }
    if (count > INT_MAX - 8 || !lua_checkstack(L, (int)count + 8)) {
        return mt_err_set(err, MT_ECORRUPT,
                          "stored arguments are corrupt: %u arguments do not fit the Lua stack",
                          count);
    }
    int base = lua_gettop(L);
    size_t off = 0;
    mt_wire_item top;
    rc = mt_wire_next(p, len, &off, &top, err);
    for (uint32_t i = 0; i < count && rc == MT_OK; i++) {
        rc = dec_value(L, p, len, &off, err);
    }
    if (rc != MT_OK) {
        lua_settop(L, base);
        return rc;
    }
    *n = (int)count;
    return MT_OK;
}

// ---- JSON text -> Lua value ----

// Pushes the Lua form of v. Runs under lua_pcall (p_push_json) so a memory
// error cannot leak the jansson tree. [-0, +1, m]
static void push_json_value(lua_State *L, json_t *v)
{
    luaL_checkstack(L, 4, "JSON nested too deeply");
    switch (json_typeof(v)) {
    case JSON_NULL:
        lua_pushnil(L);
        break;
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        break;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        break;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(v));
        break;
    case JSON_REAL:
        lua_pushnumber(L, (lua_Number)json_real_value(v));
        break;
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(v), json_string_length(v));
        break;
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        lua_createtable(L, n > INT_MAX ? 0 : (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            push_json_value(L, json_array_get(v, i));
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);  // null leaves a hole
            } else {
                lua_rawseti(L, -2, (lua_Integer)i + 1);
            }
        }
        break;
    }
    case JSON_OBJECT: {
        size_t n = json_object_size(v);
        lua_createtable(L, 0, n > INT_MAX ? 0 : (int)n);
        const char *key;
        size_t klen;
        json_t *x;
        json_object_keylen_foreach(v, key, klen, x)
        {
            lua_pushlstring(L, key, klen);
            push_json_value(L, x);
            lua_rawset(L, -3);  // a null value sets nothing
        }
        break;
    }
    }
}

static int p_push_json(lua_State *L)
{
    push_json_value(L, lua_touserdata(L, 1));
    return 1;
}

int mt_args_push_json(lua_State *L, const char *text, mt_err *err)
{
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (root == NULL) {
        // jansson quotes the offending input ("near 'tok_...'"); the input may be
        // a secret argument, so only the position and the kind of error are kept.
        char *near = strstr(jerr.text, " near ");
        if (near != NULL) {
            *near = 0;
        }
        return mt_err_set(err, MT_EINVAL, "invalid JSON at line %d column %d: %s", jerr.line,
                          jerr.column, jerr.text);
    }
    if (!lua_checkstack(L, 4)) {
        json_decref(root);
        return mt_err_set(err, MT_ENOMEM, "out of memory converting JSON");
    }
    lua_pushcfunction(L, p_push_json);
    lua_pushlightuserdata(L, root);
    int st = lua_pcall(L, 1, 1, 0);  // value | error
    json_decref(root);
    if (st == LUA_ERRMEM) {
        lua_error(L);  // raise it again; nothing C-owned is live any more
    }
    if (st != LUA_OK) {
        int rc = mt_err_set(err, MT_EINVAL, "cannot convert JSON: %s",
                            lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error");
        lua_pop(L, 1);
        return rc;
    }
    return MT_OK;
}

// ---- Lua value -> JSON text ----

typedef struct tj {
    json_t *root;
    int visited;  // stack index of {table = true} for tables on the current path
    int digits;   // jansson real precision, see mt_real_digits
    bool nomem;   // a jansson allocation failed; the tree is incomplete
} tj;

static int p_tostring(lua_State *L)
{
    luaL_tolstring(L, 1, NULL);
    return 1;
}

// Pushes tostring(v) for the value at idx. A __tostring that fails is
// caught: log extras must never make logging fail. [-0, +1, m]
static void push_tostring(lua_State *L, int idx)
{
    lua_pushcfunction(L, p_tostring);
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        lua_pop(L, 1);
        lua_pushfstring(L, "<%s>", luaL_typename(L, idx));
    }
}

// Pushes the string at idx with bytes that do not start valid UTF-8
// replaced by U+FFFD: jansson accepts only UTF-8. [-0, +1, m]
static void push_utf8(lua_State *L, int idx)
{
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (mt_utf8_valid((const uint8_t *)s, n)) {
        lua_pushvalue(L, idx);
        return;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n;) {
        size_t k = mt_utf8_seq((const uint8_t *)s + i, n - i);
        luaL_addlstring(&b, k > 0 ? s + i : "\xef\xbf\xbd", k > 0 ? k : 3);
        i += k > 0 ? k : 1;
    }
    luaL_pushresult(&b);
}

// Pushes the object-key text of the key at idx. [-0, +1, m]
static void push_key_text(lua_State *L, int idx)
{
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        push_utf8(L, idx);
        return;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            lua_pushfstring(L, "%I", (lua_Integer)lua_tointeger(L, idx));
        } else {
            lua_pushfstring(L, "%f", (lua_Number)lua_tonumber(L, idx));
        }
        return;
    case LUA_TBOOLEAN:
        lua_pushstring(L, lua_toboolean(L, idx) ? "true" : "false");
        return;
    default:
        push_tostring(L, idx);
        push_utf8(L, -1);
        lua_remove(L, -2);
        return;
    }
}

// Hands node to parent (under key for an object) or makes it the root.
// Nothing may raise between creating a node and attaching it, or a Lua
// error would leak the node. Returns node (borrowed) or NULL on failure.
static json_t *attach(tj *c, json_t *parent, const char *key, size_t klen, json_t *node)
{
    int r = node != NULL ? 0 : -1;
    if (r == 0 && parent == NULL) {
        c->root = node;
    } else if (r == 0 && json_is_object(parent)) {
        r = json_object_setn_new(parent, key, klen, node);  // takes node even on failure
    } else if (r == 0) {
        r = json_array_append_new(parent, node);
    }
    c->nomem |= r != 0;
    return r == 0 ? node : NULL;
}

static void j_put(lua_State *L, tj *c, json_t *parent, const char *key, size_t klen, int idx,
                  int depth);

// Attaches the text at the stack top as a string and pops it. [-1, +0, -]
static void j_put_text(lua_State *L, tj *c, json_t *parent, const char *key, size_t klen)
{
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    attach(c, parent, key, klen, json_stringn(s, n));
    lua_pop(L, 1);
}

// [-0, +0, m]
static void j_table(lua_State *L, tj *c, json_t *parent, const char *key, size_t klen, int idx,
                    int depth)
{
    lua_pushvalue(L, idx);
    bool cyclic = lua_rawget(L, c->visited) != LUA_TNIL;
    lua_pop(L, 1);
    if (cyclic || depth >= MT_WIRE_MAX_DEPTH || !lua_checkstack(L, 8)) {
        lua_pushstring(L, cyclic ? "<cycle>" : "<too deep>");
        j_put_text(L, c, parent, key, klen);
        return;
    }
    lua_Unsigned n = 0;
    lua_Integer max = 0;
    bool ints = true;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {  // key value
        n++;
        lua_Integer k = lua_isinteger(L, -2) ? lua_tointeger(L, -2) : 0;
        ints = ints && k >= 1;
        max = k > max ? k : max;
        lua_pop(L, 1);
    }
    bool seq = ints && (lua_Unsigned)max == n;
    json_t *node = attach(c, parent, key, klen, seq ? json_array() : json_object());
    if (node == NULL) {
        return;
    }
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, c->visited);
    if (seq) {
        for (lua_Unsigned i = 1; i <= n && !c->nomem; i++) {
            lua_rawgeti(L, idx, (lua_Integer)i);
            j_put(L, c, node, NULL, 0, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
        }
    } else {
        lua_pushnil(L);
        while (!c->nomem && lua_next(L, idx) != 0) {  // key value
            int v = lua_gettop(L);
            push_key_text(L, v - 1);  // key value text
            size_t kn;
            const char *ks = lua_tolstring(L, -1, &kn);  // anchored on the stack
            j_put(L, c, node, ks, kn, v, depth + 1);
            lua_pop(L, 2);
        }
        if (c->nomem) {
            lua_pop(L, 1);  // the key lua_next would have taken
        }
    }
    lua_pushvalue(L, idx);
    lua_pushnil(L);
    lua_rawset(L, c->visited);
}

static json_t *j_number(lua_State *L, tj *c, int idx)
{
    if (lua_isinteger(L, idx)) {
        return json_integer((json_int_t)lua_tointeger(L, idx));
    }
    double d = (double)lua_tonumber(L, idx);
    if (!isfinite(d)) {
        return json_string(isnan(d) ? "nan" : d > 0 ? "inf" : "-inf");
    }
    int digits = mt_real_digits(d);
    c->digits = digits > c->digits ? digits : c->digits;
    return json_real(d);
}

// Converts the value at absolute idx and attaches it. [-0, +0, m]
static void j_put(lua_State *L, tj *c, json_t *parent, const char *key, size_t klen, int idx,
                  int depth)
{
    json_t *node;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        node = json_null();
        break;
    case LUA_TBOOLEAN:
        node = json_boolean(lua_toboolean(L, idx));
        break;
    case LUA_TNUMBER:
        node = j_number(L, c, idx);
        break;
    case LUA_TSTRING:
        push_utf8(L, idx);
        j_put_text(L, c, parent, key, klen);
        return;
    case LUA_TTABLE:
        j_table(L, c, parent, key, klen, idx, depth);
        return;
    default:
        push_tostring(L, idx);
        push_utf8(L, -1);
        lua_remove(L, -2);
        j_put_text(L, c, parent, key, klen);
        return;
    }
    attach(c, parent, key, klen, node);
}

static int p_to_json(lua_State *L)
{
    tj *c = lua_touserdata(L, 1);
    lua_newtable(L);  // ctx value visited
    c->visited = lua_gettop(L);
    j_put(L, c, NULL, NULL, 0, 2, 0);
    return 0;
}

int mt_lua_to_json(lua_State *L, int idx, mt_buf *out, mt_err *err)
{
    idx = lua_absindex(L, idx);
    if (!lua_checkstack(L, 4)) {
        return mt_err_set(err, MT_ENOMEM, "out of memory rendering a value as JSON");
    }
    tj c = {.root = NULL, .visited = 0, .digits = 1, .nomem = false};
    lua_pushcfunction(L, p_to_json);
    lua_pushlightuserdata(L, &c);
    lua_pushvalue(L, idx);
    int st = lua_pcall(L, 2, 0, 0);  // | error
    int rc = MT_ENOMEM;
    if (st == LUA_OK && !c.nomem) {
        // Sorted keys: Lua's table order is arbitrary and logs should diff.
        char *text = json_dumps(c.root, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS |
                                            JSON_REAL_PRECISION(c.digits));
        rc = text != NULL ? mt_buf_append_str(out, text) : MT_ENOMEM;
        free(text);
    }
    json_decref(c.root);
    if (st == LUA_ERRMEM) {
        lua_error(L);  // raise it again now the tree is gone
    }
    if (st != LUA_OK) {
        // Only a __tostring that rewrites the table being walked gets here
        // (lua_next on a vanished key); report it rather than raise.
        rc = mt_err_set(err, MT_EINVAL, "cannot render a value as JSON: %s",
                        lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error");
        lua_pop(L, 1);
        return rc;
    }
    if (rc != MT_OK) {
        return mt_err_set(err, rc, "out of memory rendering a value as JSON");
    }
    return MT_OK;
}
