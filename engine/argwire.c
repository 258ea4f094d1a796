/*
 * argwire: the task-argument wire format read without Lua. Owns the
 * bounds-checked MessagePack reader (also used by lua_args.c to decode),
 * the structural check every reader runs first, JSON rendering for
 * `moontask show --json`, and string collection for log redaction.
 * Knows msgpack's format and jansson; must not know Lua or SQLite.
 */
// SPDX-License-Identifier: MIT
#include "argwire.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// One prefix for every structural complaint, so the CLI and the worker say
// the same thing about the same bytes. The format must be a string literal.
#define CORRUPT(err, ...) \
    mt_err_set((err), MT_ECORRUPT, "stored arguments are corrupt: " __VA_ARGS__)

static uint64_t get_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

// Sets it->kind and the size of the header bytes after the type byte.
// Returns false for the byte values we never accept (0xc1, ext types).
static bool classify(uint8_t c, mt_wire_item *it, size_t *hdr)
{
    *hdr = 0;
    if (c <= 0x7f || c >= 0xe0) {
        it->kind = MT_WIRE_INT;
        it->i = (int8_t)c;  // positive and negative fixints in one cast
        return true;
    }
    if (c <= 0xbf) {
        it->kind = c <= 0x8f ? MT_WIRE_MAP : c <= 0x9f ? MT_WIRE_ARRAY : MT_WIRE_STR;
        it->n = c <= 0x9f ? (c & 0x0fu) : (c & 0x1fu);
        return true;
    }
    switch (c) {
    case 0xc0:
        it->kind = MT_WIRE_NIL;
        return true;
    case 0xc2:
    case 0xc3:
        it->kind = MT_WIRE_BOOL;
        it->b = c == 0xc3;
        return true;
    case 0xc4:
    case 0xc5:
    case 0xc6:
        it->kind = MT_WIRE_BIN;
        *hdr = (size_t)1 << (c - 0xc4);
        return true;
    case 0xca:
        it->kind = MT_WIRE_FLOAT;
        *hdr = 4;
        return true;
    case 0xcb:
        it->kind = MT_WIRE_FLOAT;
        *hdr = 8;
        return true;
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf:
        it->kind = MT_WIRE_UINT;
        *hdr = (size_t)1 << (c - 0xcc);
        return true;
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3:
        it->kind = MT_WIRE_INT;
        *hdr = (size_t)1 << (c - 0xd0);
        return true;
    case 0xd9:
    case 0xda:
    case 0xdb:
        it->kind = MT_WIRE_STR;
        *hdr = (size_t)1 << (c - 0xd9);
        return true;
    case 0xdc:
    case 0xdd:
        it->kind = MT_WIRE_ARRAY;
        *hdr = c == 0xdc ? 2 : 4;
        return true;
    case 0xde:
    case 0xdf:
        it->kind = MT_WIRE_MAP;
        *hdr = c == 0xde ? 2 : 4;
        return true;
    default:
        return false;
    }
}

// Fills the value of a non-fix item from its header bytes q[0..hdr).
static void decode_header(const uint8_t *q, size_t hdr, mt_wire_item *it)
{
    uint64_t v = get_be(q, hdr);
    switch (it->kind) {
    case MT_WIRE_FLOAT:
        if (hdr == 4) {
            uint32_t bits = (uint32_t)v;
            float f;
            memcpy(&f, &bits, sizeof f);
            it->d = f;
        } else {
            memcpy(&it->d, &v, sizeof it->d);
        }
        break;
    case MT_WIRE_UINT:
        if (v > INT64_MAX) {
            it->u = v;
        } else {
            it->kind = MT_WIRE_INT;
            it->i = (int64_t)v;
        }
        break;
    case MT_WIRE_INT:
        // Sign-extend from the stored width (GCC and Clang convert modulo 2^n).
        it->i = hdr == 1 ? (int8_t)v : hdr == 2 ? (int16_t)v : hdr == 4 ? (int32_t)v : (int64_t)v;
        break;
    default:
        it->n = (uint32_t)v;
        break;  // lengths and counts
    }
}

int mt_wire_next(const uint8_t *p, size_t len, size_t *off, mt_wire_item *it, mt_err *err)
{
    size_t at = *off;
    if (at >= len) {
        return CORRUPT(err, "cut off at byte %zu", at);
    }
    memset(it, 0, sizeof *it);
    uint8_t c = p[at];
    size_t hdr;
    if (!classify(c, it, &hdr)) {
        return CORRUPT(err, "unsupported type byte 0x%02x at byte %zu", c, at);
    }
    size_t rest = len - at - 1;
    if (hdr > rest) {
        return CORRUPT(err, "cut off at byte %zu", at);
    }
    if (hdr > 0) {
        decode_header(p + at + 1, hdr, it);
    }
    rest -= hdr;
    size_t body = 0;
    // Every element takes at least one byte, so a count larger than what is
    // left is a lie; refusing it here bounds what readers preallocate.
    switch (it->kind) {
    case MT_WIRE_STR:
    case MT_WIRE_BIN:
        body = it->n;
        if (body > rest) {
            return CORRUPT(err, "string of %u bytes at byte %zu is cut off", it->n, at);
        }
        it->s = p + at + 1 + hdr;
        break;
    case MT_WIRE_ARRAY:
    case MT_WIRE_MAP:
        if ((uint64_t)it->n * (it->kind == MT_WIRE_MAP ? 2 : 1) > rest) {
            return CORRUPT(err, "container at byte %zu claims %u items but %zu bytes remain", at,
                           it->n, rest);
        }
        break;
    default:
        break;
    }
    *off = at + 1 + hdr + body;
    return MT_OK;
}

static int check_key(const uint8_t *p, size_t len, size_t *off, mt_err *err)
{
    size_t at = *off;
    mt_wire_item k;
    int rc = mt_wire_next(p, len, off, &k, err);
    if (rc != MT_OK) {
        return rc;
    }
    if (k.kind == MT_WIRE_NIL || k.kind == MT_WIRE_ARRAY || k.kind == MT_WIRE_MAP) {
        return CORRUPT(err, "map key at byte %zu is not a string, number or boolean", at);
    }
    if (k.kind == MT_WIRE_FLOAT && isnan(k.d)) {
        return CORRUPT(err, "map key at byte %zu is NaN", at);
    }
    return MT_OK;
}

// level is the nesting level a container read here would have: 1 for an
// argument itself. Recursion is bounded by MT_WIRE_MAX_DEPTH.
static int check_item(const uint8_t *p, size_t len, size_t *off, int level, mt_err *err)
{
    size_t at = *off;
    mt_wire_item it;
    int rc = mt_wire_next(p, len, off, &it, err);
    if (rc != MT_OK || (it.kind != MT_WIRE_ARRAY && it.kind != MT_WIRE_MAP)) {
        return rc;
    }
    if (level > MT_WIRE_MAX_DEPTH) {
        return CORRUPT(err, "nested deeper than %d levels at byte %zu", MT_WIRE_MAX_DEPTH, at);
    }
    for (uint32_t i = 0; i < it.n && rc == MT_OK; i++) {
        if (it.kind == MT_WIRE_MAP) {
            rc = check_key(p, len, off, err);
        }
        if (rc == MT_OK) {
            rc = check_item(p, len, off, level + 1, err);
        }
    }
    return rc;
}

int mt_wire_check(const uint8_t *p, size_t len, uint32_t *count, mt_err *err)
{
    size_t off = 0;
    mt_wire_item top;
    int rc = mt_wire_next(p, len, &off, &top, err);
    if (rc != MT_OK) {
        return rc;
    }
    if (top.kind != MT_WIRE_ARRAY) {
        return CORRUPT(err, "the top level is not an array");
    }
    for (uint32_t i = 0; i < top.n; i++) {
        rc = check_item(p, len, &off, 1, err);
        if (rc != MT_OK) {
            return rc;
        }
    }
    if (off != len) {
        return CORRUPT(err, "%zu trailing bytes after the argument array", len - off);
    }
    if (count != NULL) {
        *count = top.n;
    }
    return MT_OK;
}

size_t mt_utf8_seq(const uint8_t *s, size_t n)
{
    if (n == 0) {
        return 0;
    }
    uint8_t c = s[0];
    if (c < 0x80) {
        return 1;
    }
    // RFC 3629 table: the second byte's range excludes overlongs (e0, f0),
    // surrogates (ed) and code points above U+10FFFF (f4).
    size_t need;
    uint8_t lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
        need = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 3;
        lo = c == 0xe0 ? 0xa0 : 0x80;
        hi = c == 0xed ? 0x9f : 0xbf;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 4;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf;
    } else {
        return 0;
    }
    if (n < need || s[1] < lo || s[1] > hi) {
        return 0;
    }
    for (size_t i = 2; i < need; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
    }
    return need;
}

bool mt_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t k = mt_utf8_seq(s + i, n - i);
        if (k == 0) {
            return false;
        }
        i += k;
    }
    return true;
}

int mt_real_digits(double d)
{
    if (!isfinite(d)) {
        return 17;
    }
    // Every precision from the answer up to 17 must read back: one value's
    // digits become the precision of the whole document. The exponent form
    // is only accepted where %g would use it anyway at 17 digits, so 100.0
    // prints as 100.0 rather than 1e+02.
    double a = fabs(d);
    bool sci = a != 0 && (a < 1e-4 || a >= 1e17);
    int best = 17;
    char buf[48];
    for (int prec = 16; prec >= 1; prec--) {
        snprintf(buf, sizeof buf, "%.*g", prec, d);
        if (strtod(buf, NULL) != d || (!sci && strchr(buf, 'e') != NULL)) {
            break;
        }
        best = prec;
    }
    return best;
}

// ---- JSON rendering ----

typedef struct jw {
    const uint8_t *p;
    size_t len;
    size_t off;
    int digits;  // jansson real precision for the whole document
    mt_buf scratch;
    mt_err *err;
} jw;

static int put_base64(mt_buf *b, const uint8_t *s, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    mt_buf_reset(b);
    int rc = mt_buf_reserve(b, (n + 2) / 3 * 4);
    for (size_t i = 0; i < n && rc == MT_OK; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16;
        v |= i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0;
        v |= i + 2 < n ? s[i + 2] : 0;
        char q[4] = {tab[v >> 18], tab[(v >> 12) & 63], tab[(v >> 6) & 63], tab[v & 63]};
        if (i + 1 >= n) {
            q[2] = '=';
        }
        if (i + 2 >= n) {
            q[3] = '=';
        }
        rc = mt_buf_append(b, q, 4);
    }
    return rc;
}

// Appends s with every byte that does not start a valid UTF-8 sequence
// replaced by U+FFFD, since jansson refuses invalid UTF-8 in keys.
static int put_utf8_fixed(mt_buf *b, const uint8_t *s, size_t n)
{
    int rc = MT_OK;
    size_t i = 0;
    while (i < n && rc == MT_OK) {
        size_t k = mt_utf8_seq(s + i, n - i);
        rc = k > 0 ? mt_buf_append(b, s + i, k) : mt_buf_append(b, "\xef\xbf\xbd", 3);
        i += k > 0 ? k : 1;
    }
    return rc;
}

static json_t *j_bytes(jw *w, const mt_wire_item *it)
{
    if (it->kind == MT_WIRE_STR && mt_utf8_valid(it->s, it->n)) {
        return json_stringn((const char *)it->s, it->n);
    }
    if (put_base64(&w->scratch, it->s, it->n) != MT_OK) {
        return NULL;
    }
    return json_pack("{s:s%}", "$base64", (const char *)w->scratch.data, w->scratch.len);
}

static json_t *j_real(jw *w, double d)
{
    if (isnan(d)) {
        return json_string("nan");
    }
    if (isinf(d)) {
        return json_string(d > 0 ? "inf" : "-inf");
    }
    int digits = mt_real_digits(d);
    w->digits = digits > w->digits ? digits : w->digits;
    return json_real(d);
}

// The text form of a map key (already checked to be a scalar).
static int key_text(jw *w, const mt_wire_item *k)
{
    mt_buf *b = &w->scratch;
    mt_buf_reset(b);
    switch (k->kind) {
    case MT_WIRE_BOOL:
        return mt_buf_append_str(b, k->b ? "true" : "false");
    case MT_WIRE_INT:
        return mt_buf_printf(b, "%lld", (long long)k->i);
    case MT_WIRE_UINT:
        return mt_buf_printf(b, "%llu", (unsigned long long)k->u);
    case MT_WIRE_FLOAT:
        return mt_buf_printf(b, "%.17g", k->d);
    default:
        return put_utf8_fixed(b, k->s, k->n);
    }
}

static int j_value(jw *w, json_t **out);

static int j_container(jw *w, const mt_wire_item *it, json_t **out)
{
    bool map = it->kind == MT_WIRE_MAP;
    json_t *c = map ? json_object() : json_array();
    int rc = c != NULL ? MT_OK : MT_ENOMEM;
    for (uint32_t i = 0; i < it->n && rc == MT_OK; i++) {
        mt_wire_item k;
        json_t *v = NULL;
        if (map) {
            rc = mt_wire_next(w->p, w->len, &w->off, &k, w->err);
        }
        if (rc == MT_OK) {
            rc = j_value(w, &v);
        }
        if (rc == MT_OK && map) {
            rc = key_text(w, &k);
            if (rc != MT_OK) {
                json_decref(v);
            }
        }
        // The *_new setters take v and release it themselves on failure.
        if (rc == MT_OK && map &&
            json_object_setn_new(c, (const char *)w->scratch.data, w->scratch.len, v) != 0) {
            rc = MT_ENOMEM;
        } else if (rc == MT_OK && !map && json_array_append_new(c, v) != 0) {
            rc = MT_ENOMEM;
        }
    }
    if (rc != MT_OK) {
        json_decref(c);
        c = NULL;
    }
    *out = c;
    return rc;
}

// Reads one item at w->off and returns its JSON value (*out owned by caller).
// Uint64 values above INT64_MAX become reals: jansson integers are long
// long and Lua could not hold them either; lua_args never writes them.
static int j_value(jw *w, json_t **out)
{
    mt_wire_item it;
    int rc = mt_wire_next(w->p, w->len, &w->off, &it, w->err);
    if (rc != MT_OK) {
        return rc;
    }
    json_t *v;
    switch (it.kind) {
    case MT_WIRE_NIL:
        v = json_null();
        break;
    case MT_WIRE_BOOL:
        v = json_boolean(it.b);
        break;
    case MT_WIRE_INT:
        v = json_integer(it.i);
        break;
    case MT_WIRE_UINT:
        v = j_real(w, (double)it.u);
        break;
    case MT_WIRE_FLOAT:
        v = j_real(w, it.d);
        break;
    case MT_WIRE_STR:
    case MT_WIRE_BIN:
        v = j_bytes(w, &it);
        break;
    default:
        return j_container(w, &it, out);
    }
    *out = v;
    return v != NULL ? MT_OK : MT_ENOMEM;
}

int mt_args_to_json(const uint8_t *p, size_t len, char **json, mt_err *err)
{
    *json = NULL;
    int rc = mt_wire_check(p, len, NULL, err);
    if (rc != MT_OK) {
        return rc;
    }
    jw w = {.p = p, .len = len, .off = 0, .digits = 1, .err = err};
    mt_buf_init(&w.scratch, false);
    json_t *root = NULL;
    rc = j_value(&w, &root);
    if (rc == MT_OK) {
        // Sorted keys: the wire keeps Lua's table order, which is arbitrary.
        *json = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(w.digits));
        rc = *json != NULL ? MT_OK : MT_ENOMEM;
    }
    json_decref(root);
    mt_buf_clear(&w.scratch);
    if (rc == MT_ENOMEM) {
        mt_err_set(err, rc, "out of memory rendering arguments as JSON");
    }
    return rc;
}

// ---- String collection ----

typedef struct cs {
    const uint8_t *p;
    size_t len;
    size_t off;
    size_t min_len;
    mt_buf *list;
    mt_err *err;
} cs;

// Values only: map keys name the structure ("password", "token"), and
// redacting them from every log line would hide what the log is about.
static int collect(cs *c)
{
    mt_wire_item it;
    int rc = mt_wire_next(c->p, c->len, &c->off, &it, c->err);
    if (rc != MT_OK) {
        return rc;
    }
    if ((it.kind == MT_WIRE_STR || it.kind == MT_WIRE_BIN) && it.n >= c->min_len) {
        uint32_t n = it.n;
        rc = mt_buf_reserve(c->list, sizeof n + n + 1);
        if (rc == MT_OK) {
            mt_buf_append(c->list, &n, sizeof n);
            mt_buf_append(c->list, it.s, n);
            mt_buf_append(c->list, "", 1);
        }
    } else if (it.kind == MT_WIRE_ARRAY || it.kind == MT_WIRE_MAP) {
        for (uint32_t i = 0; i < it.n && rc == MT_OK; i++) {
            mt_wire_item key;
            if (it.kind == MT_WIRE_MAP) {
                rc = mt_wire_next(c->p, c->len, &c->off, &key, c->err);
            }
            if (rc == MT_OK) {
                rc = collect(c);
            }
        }
    }
    return rc;
}

int mt_args_collect_strings(const uint8_t *p, size_t len, size_t min_len, mt_buf *list, mt_err *err)
{
    int rc = mt_wire_check(p, len, NULL, err);
    if (rc != MT_OK) {
        return rc;
    }
    size_t start = list->len;
    cs c = {.p = p, .len = len, .off = 0, .min_len = min_len, .list = list, .err = err};
    rc = collect(&c);
    if (rc != MT_OK) {
        // All or nothing: drop (and wipe) the records this call added.
        if (list->data != NULL) {
            mt_wipe(list->data + start, list->len - start);
            list->len = start;
            list->data[start] = 0;
        }
        if (rc == MT_ENOMEM) {
            mt_err_set(err, rc, "out of memory collecting argument strings");
        }
    }
    return rc;
}
