/*
 * lua_args: task arguments, Lua values <-> MessagePack wire bytes, and the
 * JSON forms the CLI reads (`moontask add`) and prints (`show --json`).
 *
 * Wire format: one MessagePack array holding the n arguments in order, nil
 * as msgpack nil (so trailing and embedded nils survive). Lua integers are
 * msgpack ints, Lua floats always float64 (1.0 stays a float; inf and nan
 * kept). Strings that are valid UTF-8 are str, others bin; both decode to
 * Lua strings. A table whose keys are exactly 1..n is an array (the empty
 * table too), any other table a map; map keys are strings, numbers or
 * booleans.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_LUA_ARGS_H
#define MT_LUA_ARGS_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "buf.h"
#include "err.h"

// Encodes the n values at stack slots first..first+n-1 into out (appended).
// Refuses functions, userdata, threads, light userdata, cyclic tables,
// non-data map keys and nesting deeper than 64 with MT_EINVAL and a message
// naming the path: "argument 2: field 'card.cb' is a function",
// "argument 1: field 'items[3]' is a cyclic reference". Never raises except
// on memory errors from Lua itself. [-0, +0, m]
int mt_args_encode(lua_State *L, int first, int n, mt_buf *out, mt_err *err);

// Decodes wire bytes and pushes the n arguments; *n receives their count.
// MT_ECORRUPT (nothing pushed) when the bytes are not a valid argument
// array. [-0, +n, m]
int mt_args_decode(lua_State *L, const uint8_t *p, size_t len, int *n, mt_err *err);

// Pushes the Lua value of one JSON text (any JSON value; null -> nil;
// integers stay integers, numbers with '.', 'e' -> floats). MT_EINVAL with
// the parse position on bad JSON, nothing pushed. [-0, +1, m]
int mt_args_push_json(lua_State *L, const char *text, mt_err *err);

// Appends the JSON text of the value at idx (a table of log extras, or any
// data value) to out. Non-data values (functions, userdata, ...) are
// rendered as their tostring() text in quotes rather than refused: log
// extras must never make logging fail. Cycles render as "<cycle>".
// [-0, +0, m]
int mt_lua_to_json(lua_State *L, int idx, mt_buf *out, mt_err *err);

#endif
