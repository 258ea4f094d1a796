/*
 * bench_lua: runs one moontask scenario of bench.lua in a fresh lua_State
 * (made by mt_host_newstate, as the `moontask` binary makes its own), and
 * gives the Lua side the few process and clock primitives it cannot have
 * from the standard library: a monotonic clock, fork/wait/kill, peak and
 * current RSS. The moontask work itself goes through the public Lua API
 * only (moontask.open, Engine:add, moontask._run as `moontask run` uses it).
 */
// SPDX-License-Identifier: MIT
#define _DEFAULT_SOURCE
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "bench.h"
#include "lua_host.h"

#ifndef MT_BENCH_LUA
#    error "MT_BENCH_LUA must name bench/bench.lua (set by bench/CMakeLists.txt)"
#endif

static double clock_secs(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

// bench.now() -> monotonic seconds
static int b_now(lua_State *L)
{
    lua_pushnumber(L, clock_secs(CLOCK_MONOTONIC));
    return 1;
}

// bench.wall() -> Unix seconds, the clock of the store's timestamps
static int b_wall(lua_State *L)
{
    lua_pushnumber(L, clock_secs(CLOCK_REALTIME));
    return 1;
}

// bench.sleep(seconds)
static int b_sleep(lua_State *L)
{
    double s = luaL_checknumber(L, 1);
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - floor(s)) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    return 0;
}

// bench.fork() -> pid in the parent, 0 in the child. The child must end
// with bench.exit: its copy of the caller's C frames must never return.
static int b_fork(lua_State *L)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        return luaL_error(L, "fork: %s", strerror(errno));
    }
    lua_pushinteger(L, pid);
    return 1;
}

// bench.exit(code): leaves at once (no atexit, no lua_close), so a child
// never touches what it shares with its parent.
static int b_exit(lua_State *L)
{
    int code = (int)luaL_optinteger(L, 1, 0);
    fflush(NULL);
    _exit(code);
}

// bench.wait(pid) -> exit code (or nil, "signal N"), peak RSS in KiB
static int b_wait(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int status = 0;
    struct rusage ru;
    pid_t got;
    while ((got = wait4(pid, &status, 0, &ru)) < 0 && errno == EINTR) {
    }
    if (got < 0) {
        return luaL_error(L, "wait %d: %s", (int)pid, strerror(errno));
    }
    if (WIFEXITED(status)) {
        lua_pushinteger(L, WEXITSTATUS(status));
    } else {
        lua_pushnil(L);
    }
    lua_pushinteger(L, ru.ru_maxrss);
    if (WIFSIGNALED(status)) {
        lua_pushfstring(L, "killed by signal %d", WTERMSIG(status));
        return 3;
    }
    return 2;
}

// bench.kill(pid, "TERM" | "INT" | "KILL")
static int b_kill(lua_State *L)
{
    static const char *const names[] = {"TERM", "INT", "KILL", NULL};
    static const int sigs[] = {SIGTERM, SIGINT, SIGKILL};
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int sig = sigs[luaL_checkoption(L, 2, "TERM", names)];
    if (kill(pid, sig) != 0) {
        return luaL_error(L, "kill %d: %s", (int)pid, strerror(errno));
    }
    return 0;
}

// bench.maxrss() -> peak RSS of this process in KiB
static int b_maxrss(lua_State *L)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    lua_pushinteger(L, ru.ru_maxrss);
    return 1;
}

// bench.rss(pid) -> current RSS of a process in KiB (VmRSS), or nil
static int b_rss(lua_State *L)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)luaL_checkinteger(L, 1));
    FILE *f = fopen(path, "r");
    long kib = -1;
    if (f != NULL) {
        char line[256];
        while (fgets(line, sizeof line, f) != NULL) {
            if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) {
                break;
            }
        }
        fclose(f);
    }
    if (kib < 0) {
        lua_pushnil(L);
    } else {
        lua_pushinteger(L, kib);
    }
    return 1;
}

static const luaL_Reg prims[] = {
    {"now", b_now},   {"wall", b_wall}, {"sleep", b_sleep},   {"fork", b_fork}, {"exit", b_exit},
    {"wait", b_wait}, {"kill", b_kill}, {"maxrss", b_maxrss}, {"rss", b_rss},   {NULL, NULL},
};

typedef struct call {
    const char *fn;
    const bench_opts *o;
    const char *db;
    bool encrypt, full;
    bench_result *r;
} call;

// Field k of the table at idx as a number; NAN when absent. [-0, +0, -]
static double num_field(lua_State *L, int idx, const char *k)
{
    double v = lua_getfield(L, idx, k) == LUA_TNUMBER ? lua_tonumber(L, -1) : NAN;
    lua_pop(L, 1);
    return v;
}

// Runs under mt_host_pcall: load bench.lua, call M[fn](opts), copy out.
static int pscenario(lua_State *L)
{
    call *c = lua_touserdata(L, 1);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moontask");
    lua_call(L, 1, 0);
    if (luaL_loadfilex(L, MT_BENCH_LUA, "t") != LUA_OK) {
        return lua_error(L);
    }
    luaL_newlib(L, prims);                              // chunk prims
    lua_call(L, 1, 1);                                  // M
    if (lua_getfield(L, -1, c->fn) != LUA_TFUNCTION) {  // M fn
        return luaL_error(L, "bench.lua has no scenario '%s'", c->fn);
    }
    lua_createtable(L, 0, 8);  // M fn opts
    lua_pushinteger(L, c->o->n);
    lua_setfield(L, -2, "n");
    lua_pushinteger(L, c->o->workers);
    lua_setfield(L, -2, "workers");
    lua_pushinteger(L, c->o->producers);
    lua_setfield(L, -2, "producers");
    lua_pushstring(L, c->o->dir);
    lua_setfield(L, -2, "dir");
    lua_pushstring(L, c->db);
    lua_setfield(L, -2, "db");
    lua_pushboolean(L, c->encrypt);
    lua_setfield(L, -2, "encrypt");
    lua_pushboolean(L, c->full);
    lua_setfield(L, -2, "full");
    lua_call(L, 1, 1);  // M res
    luaL_checktype(L, -1, LUA_TTABLE);
    bench_result *r = c->r;
    r->tasks = num_field(L, -1, "tasks");
    r->enqueue_s = num_field(L, -1, "enqueue_s");
    r->run_s = num_field(L, -1, "run_s");
    r->total_s = num_field(L, -1, "total_s");
    r->attempts = num_field(L, -1, "attempts");
    r->add_p50_us = num_field(L, -1, "add_p50_us");
    r->add_p99_us = num_field(L, -1, "add_p99_us");
    r->done_p50_ms = num_field(L, -1, "done_p50_ms");
    r->done_p99_ms = num_field(L, -1, "done_p99_ms");
    r->rss_kib = num_field(L, -1, "rss_kib");
    r->idle_rss_kib = num_field(L, -1, "idle_rss_kib");
    if (lua_getfield(L, -1, "note") == LUA_TSTRING) {
        snprintf(r->note, sizeof r->note, "%s", lua_tostring(L, -1));
    }
    r->ok = true;
    return 0;
}

void bench_run_lua(const char *fn, const bench_opts *o, const char *db, bool encrypt, bool full,
                   bench_result *r)
{
    lua_State *L = mt_host_newstate(0);
    if (L == NULL) {
        snprintf(r->error, sizeof r->error, "cannot create a Lua state: out of memory");
        return;
    }
    call c = {.fn = fn, .o = o, .db = db, .encrypt = encrypt, .full = full, .r = r};
    lua_pushcfunction(L, pscenario);
    lua_pushlightuserdata(L, &c);
    if (mt_host_pcall(L, 1, 0) != LUA_OK) {
        r->ok = false;
        const char *msg = lua_tostring(L, -1);
        snprintf(r->error, sizeof r->error, "%s", msg ? msg : "(error object is not a string)");
    }
    mt_host_close(L);
}
