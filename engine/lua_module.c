/*
 * lua_module: the entry point of moontask.so for `require "moontask"` from
 * lua5.4 and busted. Lua's symbols come from the host interpreter; this
 * module never links a Lua library of its own.
 */
// SPDX-License-Identifier: MIT
#include <lua.h>

#include "lua_api.h"

int luaopen_moontask(lua_State *L);

int luaopen_moontask(lua_State *L)
{
    return mt_api_luaopen(L);
}
