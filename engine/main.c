/*
 * main: the `moontask` binary. Everything, even start-up, runs under a
 * protected call with a traceback (lua.c's pmain). `moontask lua FILE
 * [ARGS]` runs a Lua script with the module built in (used to run busted
 * under the sanitizers); every other command is lua/moontask/cli.lua.
 */
// SPDX-License-Identifier: MIT
#define _DEFAULT_SOURCE  // setenv
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lua_host.h"

// busted ends with os.exit(code, true), which closes the state but skips
// mt_host_close: keeping the allocator's block reachable from here stops
// LeakSanitizer from reporting it.
static void *main_alloc_ud;

typedef struct args {
    int argc;
    char **argv;
    int code;
} args;

// Runs a script as lua.c would: arg table, then the chunk with its args.
static int run_lua_file(lua_State *L, args *a)
{
    if (a->argc < 3) {
        fputs("usage: moontask lua FILE [ARG ...]\n", stderr);
        a->code = 2;
        return 0;
    }
    lua_createtable(L, a->argc, 2);
    for (int i = 0; i < a->argc; i++) {
        lua_pushstring(L, a->argv[i]);
        lua_rawseti(L, -2, i - 2);
    }
    lua_setglobal(L, "arg");
    if (luaL_loadfilex(L, a->argv[2], "t") != LUA_OK) {
        fprintf(stderr, "moontask: %s\n", lua_tostring(L, -1));
        a->code = 2;  // a missing or malformed script is a usage error
        return 0;
    }
    luaL_checkstack(L, a->argc, "too many arguments");
    for (int i = 3; i < a->argc; i++) {
        lua_pushstring(L, a->argv[i]);
    }
    if (mt_host_pcall(L, a->argc - 3, 0) != LUA_OK) {
        fprintf(stderr, "moontask: %s\n", lua_tostring(L, -1));
        mt_host_push_traceback(L);
        if (lua_isstring(L, -1)) {
            fprintf(stderr, "%s\n", lua_tostring(L, -1));
        }
        a->code = 1;
        return 0;
    }
    a->code = 0;
    return 0;
}

static int pmain(lua_State *L)
{
    args *a = lua_touserdata(L, 1);
    // `moontask -c FILE lua SCRIPT`: the script's moontask.open{config=...}
    // calls can read the config path from MOONTASK_CONFIG.
    if (a->argc >= 4 && (strcmp(a->argv[1], "-c") == 0 || strcmp(a->argv[1], "--config") == 0) &&
        strcmp(a->argv[3], "lua") == 0) {
        setenv("MOONTASK_CONFIG", a->argv[2], 1);
        a->argv += 2;
        a->argc -= 2;
    }
    if (a->argc >= 2 && strcmp(a->argv[1], "lua") == 0) {
        return run_lua_file(L, a);
    }
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moontask.cli");
    lua_call(L, 1, 1);  // cli
    lua_getfield(L, -1, "main");
    lua_createtable(L, a->argc, 0);
    for (int i = 1; i < a->argc; i++) {
        lua_pushstring(L, a->argv[i]);
        lua_rawseti(L, -2, i);
    }
    if (mt_host_pcall(L, 1, 1) != LUA_OK) {
        fprintf(stderr, "moontask: internal error: %s\n", lua_tostring(L, -1));
        mt_host_push_traceback(L);
        if (lua_isstring(L, -1)) {
            fprintf(stderr, "%s\n", lua_tostring(L, -1));
        }
        a->code = 1;
        return 0;
    }
    a->code = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : 0;
    return 0;
}

int main(int argc, char **argv)
{
    lua_State *L = mt_host_newstate(0);
    if (L == NULL) {
        fputs("moontask: cannot create a Lua state: out of memory\n", stderr);
        return 1;
    }
    lua_getallocf(L, &main_alloc_ud);
    args a = {.argc = argc, .argv = argv, .code = 1};
    lua_pushcfunction(L, pmain);
    lua_pushlightuserdata(L, &a);
    if (mt_host_pcall(L, 1, 0) != LUA_OK) {
        fprintf(stderr, "moontask: %s\n", lua_tostring(L, -1));
        a.code = 1;
    }
    fflush(stdout);
    mt_host_close(L);
    return a.code;
}
