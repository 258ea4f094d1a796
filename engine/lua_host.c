/*
 * lua_host: owned lua_States, memory accounting, deadlines and protected
 * calls; see lua_host.h.
 *
 * The deadline hook follows Redis's script timeout: a count hook checks a
 * monotonic clock every HOOK_COUNT instructions; once the deadline passes it
 * re-arms itself to fire on every line and every instruction, so a task that
 * catches the error with pcall is interrupted again at once and can only
 * unwind. Our traceback handler is a C function (hooks do not run inside
 * it) and disarms the hook, so the outermost call always returns.
 */
// SPDX-License-Identifier: MIT
#include "lua_host.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "ids.h"
#include "lua_api.h"
#include "lua_embedded.h"

enum { HOOK_COUNT = 1000 };

static const char LIMITS_KEY = 'L';
static const char TRACEBACK_KEY = 'T';

// A lua_Alloc that accounts every byte and refuses growth past the cap
// while a task runs (the cap never applies to loading scripts or to the
// engine's own bookkeeping between tasks).
static void *host_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    mt_limits *lim = ud;
    size_t old = ptr != NULL ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        lim->mem_used -= old <= lim->mem_used ? old : lim->mem_used;
        return NULL;
    }
    if (lim->mem_enforced && lim->mem_limit > 0 && nsize > old &&
        lim->mem_used + (nsize - old) > lim->mem_limit) {
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (p != NULL) {
        lim->mem_used = lim->mem_used - (old <= lim->mem_used ? old : lim->mem_used) + nsize;
    }
    return p;
}

// Drops "./?.lua"-style entries: the working folder is not a trust boundary.
static void strip_relative(lua_State *L, const char *field)
{
    lua_getglobal(L, "package");  // package
    lua_getfield(L, -1, field);   // package path
    const char *path = lua_tostring(L, -1);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    bool first = true;
    while (path != NULL && *path) {
        const char *end = strchr(path, ';');
        size_t n = end ? (size_t)(end - path) : strlen(path);
        if (n > 0 && !(path[0] == '.' && n > 1 && path[1] == '/')) {
            if (!first) {
                luaL_addchar(&b, ';');
            }
            luaL_addlstring(&b, path, n);
            first = false;
        }
        path = end ? end + 1 : NULL;
    }
    luaL_pushresult(&b);         // package path newpath
    lua_setfield(L, -3, field);  // package path
    lua_pop(L, 2);
}

static int embedded_loader(lua_State *L)
{
    const mt_embedded_lua *m = lua_touserdata(L, lua_upvalueindex(1));
    lua_pushfstring(L, "=[moontask]/%s.lua", m->name);
    if (luaL_loadbufferx(L, m->source, m->len, lua_tostring(L, -1), "t") != LUA_OK) {
        return lua_error(L);
    }
    lua_pushstring(L, m->name);
    lua_call(L, 1, 1);
    return 1;
}

void mt_host_preload(lua_State *L)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);  // preload
    lua_pushcfunction(L, mt_api_luaopen);
    lua_setfield(L, -2, "moontask");
    for (const mt_embedded_lua *m = mt_embedded_lua_files; m->name != NULL; m++) {
        lua_pushlightuserdata(L, (void *)m);
        lua_pushcclosure(L, embedded_loader, 1);
        lua_setfield(L, -2, m->name);
    }
    lua_pop(L, 1);
}

static int newstate_body(lua_State *L)
{
    luaL_openlibs(L);
    strip_relative(L, "path");
    strip_relative(L, "cpath");
    mt_host_preload(L);
    return 0;
}

lua_State *mt_host_newstate(size_t mem_limit)
{
    mt_limits *lim = calloc(1, sizeof *lim);
    if (lim == NULL) {
        return NULL;
    }
    lim->mem_limit = mem_limit;
    lim->owned_alloc = true;
    lua_State *L = lua_newstate(host_alloc, lim);
    if (L == NULL) {
        free(lim);
        return NULL;
    }
    lua_pushlightuserdata(L, lim);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &LIMITS_KEY);
    lua_pushcfunction(L, newstate_body);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        mt_host_close(L);
        return NULL;
    }
    mt_host_install_hook(L);
    return L;
}

void mt_host_close(lua_State *L)
{
    if (L == NULL) {
        return;
    }
    void *ud = NULL;
    lua_getallocf(L, &ud);
    lua_close(L);
    free(ud);
}

mt_limits *mt_host_limits(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &LIMITS_KEY);
    mt_limits *lim = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (lim == NULL) {
        lim = lua_newuserdatauv(L, sizeof *lim, 0);
        memset(lim, 0, sizeof *lim);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &LIMITS_KEY);
    }
    return lim;
}

static void deadline_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    mt_limits *lim = mt_host_limits(L);
    if (!lim->armed) {
        if (lua_gethookmask(L) != LUA_MASKCOUNT) {
            // A thread that fired keeps its per-line mask: make it cheap again.
            lua_sethook(L, deadline_hook, LUA_MASKCOUNT, HOOK_COUNT);
        }
        return;
    }
    if (!lim->fired) {
        bool abort_now = lim->abort != NULL && atomic_load(lim->abort) != 0;
        if (!abort_now && (lim->deadline <= 0 || mt_mono_now() < lim->deadline)) {
            return;
        }
        lim->fired = true;
        lim->aborted = abort_now;
    }
    // Fire on every line and instruction from now on, in whichever thread
    // (task or coroutine) is running, so pcall cannot swallow the error.
    lua_sethook(L, deadline_hook, LUA_MASKCOUNT | LUA_MASKLINE, 1);
    if (lim->aborted) {
        luaL_error(L, "interrupted: the engine is shutting down");
    }
    luaL_error(L, "task timed out after %f seconds", lim->timeout);
}

void mt_host_install_hook(lua_State *L)
{
    if (lua_gethook(L) == NULL) {
        lua_sethook(L, deadline_hook, LUA_MASKCOUNT, HOOK_COUNT);
    }
}

void mt_host_arm(lua_State *L, double timeout)
{
    mt_limits *lim = mt_host_limits(L);
    lim->fired = false;
    lim->aborted = false;
    lim->timeout = timeout;
    lim->deadline = timeout > 0 ? mt_mono_now() + timeout : 0;
    lim->mem_enforced = lim->owned_alloc && lim->mem_limit > 0;
    lim->armed = true;
    lua_Hook h = lua_gethook(L);
    lim->restore = h != deadline_hook;
    if (lim->restore) {
        lim->saved_hook = h;
        lim->saved_mask = lua_gethookmask(L);
        lim->saved_count = lua_gethookcount(L);
    }
    if (lim->deadline > 0 || lim->abort != NULL || !lim->restore) {
        lua_sethook(L, deadline_hook, LUA_MASKCOUNT, HOOK_COUNT);
    }
}

void mt_host_disarm(lua_State *L)
{
    mt_limits *lim = mt_host_limits(L);
    lim->mem_enforced = false;
    lim->deadline = 0;
    lim->armed = false;
    if (lim->restore) {
        lua_sethook(L, lim->saved_hook, lim->saved_mask, lim->saved_count);
    } else {
        lua_sethook(L, deadline_hook, LUA_MASKCOUNT, HOOK_COUNT);
    }
}

// Message handler: turns any error value into text, records a traceback,
// and stops the deadline hook so the unwinding cannot be interrupted.
static int traceback_handler(lua_State *L)
{
    lua_sethook(L, NULL, 0, 0);
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) {
            msg = lua_tostring(L, -1);
        } else {
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
        }
    }
    luaL_traceback(L, L, NULL, 1);  // err [msg] tb
    lua_rawsetp(L, LUA_REGISTRYINDEX, &TRACEBACK_KEY);
    lua_pushstring(L, msg);
    return 1;
}

int mt_host_pcall(lua_State *L, int nargs, int nresults)
{
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, traceback_handler);
    lua_insert(L, base);
    int status = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    if (status == LUA_ERRMEM) {
        // The handler is not called for memory errors.
        lua_pushnil(L);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &TRACEBACK_KEY);
    }
    return status;
}

void mt_host_push_traceback(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &TRACEBACK_KEY);
}

static int refuse_exit_at_load(lua_State *L)
{
    return luaL_error(L, "os.exit called while loading a task script; raise an error instead");
}

// Replaces os.exit (enter) or puts the saved one back; the saved function
// sits in the registry under our key. [-0, +0, m]
static const char SAVED_EXIT_KEY = 'E';
static void guard_exit(lua_State *L, bool enter)
{
    if (lua_getglobal(L, "os") != LUA_TTABLE) {
        lua_pop(L, 1);
        return;
    }
    if (enter) {
        lua_getfield(L, -1, "exit");
        lua_rawsetp(L, LUA_REGISTRYINDEX, &SAVED_EXIT_KEY);
        lua_pushcfunction(L, refuse_exit_at_load);
    } else {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &SAVED_EXIT_KEY);
    }
    lua_setfield(L, -2, "exit");
    lua_pop(L, 1);
}

int mt_host_dofile(lua_State *L, const char *path)
{
    if (luaL_loadfilex(L, path, "t") != LUA_OK) {
        return 1;
    }
    // A script that exits would take the engine (or a busted run) with it.
    guard_exit(L, true);
    int failed = mt_host_pcall(L, 0, 0) != LUA_OK;
    guard_exit(L, false);
    return failed;
}
