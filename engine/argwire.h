/*
 * argwire: reading task-argument wire bytes (the MessagePack array written
 * by lua_args) without Lua: JSON rendering for the CLI and string
 * collection for redaction. Knows msgpack and jansson, not Lua or SQLite.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_ARGWIRE_H
#define MT_ARGWIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "err.h"

// Renders wire bytes as a JSON array text (caller frees with free()).
// nil -> null, bin strings -> {"$base64": "..."}, maps with non-string
// keys use the key's text form, inf/nan -> the strings "inf", "-inf",
// "nan". No Lua needed; used by `show --json`. MT_ECORRUPT on bad bytes.
int mt_args_to_json(const uint8_t *p, size_t len, char **json, mt_err *err);

// Appends every string at any depth of length >= min_len to *list as
// NUL-terminated copies in one secure buffer, each prefixed by its length as
// a uint32 (for redaction). Used on decoded arguments inside the worker.
int mt_args_collect_strings(const uint8_t *p, size_t len, size_t min_len, mt_buf *list,
                            mt_err *err);

// ---- Wire reader, shared with lua_args.c ----
// Wire bytes are read with this bounds-checked reader rather than
// libmsgpackc's msgpack_unpack_next: that one allocates count * 24 bytes up
// front for a forged array header (six corrupt bytes can ask for gigabytes)
// and the Debian build caps nesting at 32 containers, below
// MT_WIRE_MAX_DEPTH. Writing still uses msgpack_packer.

// Deepest table nesting inside one argument (the argument itself is level 1).
#define MT_WIRE_MAX_DEPTH 64

typedef enum mt_wire_kind {
    MT_WIRE_NIL,
    MT_WIRE_BOOL,
    MT_WIRE_INT,    // i: every integer that fits int64
    MT_WIRE_UINT,   // u: only unsigned values above INT64_MAX
    MT_WIRE_FLOAT,  // d: float64, or float32 widened
    MT_WIRE_STR,    // s, n: bytes borrowed from the input
    MT_WIRE_BIN,    // s, n
    MT_WIRE_ARRAY,  // n elements follow
    MT_WIRE_MAP     // n key/value pairs follow
} mt_wire_kind;

typedef struct mt_wire_item {
    mt_wire_kind kind;
    bool b;
    int64_t i;
    uint64_t u;
    double d;
    const uint8_t *s;
    uint32_t n;
} mt_wire_item;

// Reads the item at p[*off] and advances *off past its header (and past the
// bytes of a string). MT_ECORRUPT when cut off, for ext types and the
// reserved byte, and when a container claims more items than bytes remain.
int mt_wire_next(const uint8_t *p, size_t len, size_t *off, mt_wire_item *it, mt_err *err);

// Checks that p holds exactly one argument array (no trailing bytes),
// nesting at most MT_WIRE_MAX_DEPTH, map keys that are strings, numbers
// (not NaN) or booleans. *count (may be NULL) receives the argument count.
// MT_ECORRUPT "stored arguments are corrupt: ..." otherwise.
int mt_wire_check(const uint8_t *p, size_t len, uint32_t *count, mt_err *err);

// Length (1-4) of the well-formed UTF-8 sequence at s, or 0 when s[0..n)
// does not start one (stray or missing continuation byte, overlong form,
// surrogate, above U+10FFFF).
size_t mt_utf8_seq(const uint8_t *s, size_t n);
bool mt_utf8_valid(const uint8_t *s, size_t n);

// Fewest significant digits (1-17) with which "%.*g" prints d so that it
// reads back exactly; 17 for inf and nan. Used to pick the jansson real
// precision so 0.1 prints as 0.1, not 0.10000000000000001.
int mt_real_digits(double d);

#endif
