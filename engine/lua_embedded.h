/*
 * lua_embedded: the Lua library sources (lua/moontask/NAME.lua) compiled into
 * the binary and module by cmake/embed_lua.cmake.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_LUA_EMBEDDED_H
#define MT_LUA_EMBEDDED_H

#include <stddef.h>

typedef struct mt_embedded_lua {
    const char *name;  // module name, e.g. "moontask.config"
    const char *source;
    size_t len;
} mt_embedded_lua;

// Terminated by an entry with name NULL.
extern const mt_embedded_lua mt_embedded_lua_files[];

#endif
