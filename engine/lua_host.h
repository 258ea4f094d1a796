/*
 * lua_host: lua_State life cycle for states the engine owns (the binary's
 * workers), the allocator that accounts and caps memory, the count hook
 * that enforces task deadlines and shutdown, and the one protected-call
 * helper every script and task call goes through. Knows Lua, not SQLite or
 * OpenSSL.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_LUA_HOST_H
#define MT_LUA_HOST_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include <lua.h>

// Per-state limits and the flags the count hook watches. Lives in the
// registry as a full userdata, so it exists for every state that runs tasks
// (owned or not).
typedef struct mt_limits {
    size_t mem_used;          // bytes, accounted by our allocator (owned states)
    size_t mem_limit;         // 0 = none; enforced only while a task runs
    bool mem_enforced;        // a task is running: the cap applies
    bool owned_alloc;         // the state uses mt_host's allocator
    double deadline;          // monotonic seconds; 0 = none
    double timeout;           // the task's timeout, for the message
    bool armed;               // a task is running under these limits
    bool fired;               // deadline or abort passed while the task ran
    bool aborted;             // fired because of *abort (shutdown)
    const atomic_int *abort;  // set by the engine on forced shutdown; may be NULL
    lua_Hook saved_hook;      // a foreign hook replaced while a task runs
    int saved_mask, saved_count;
    bool restore;
} mt_limits;

// A new state with our allocator, standard libraries, package.path and
// package.cpath without relative entries, and `moontask` plus the embedded
// Lua library preloaded. NULL on out of memory. Close with mt_host_close.
lua_State *mt_host_newstate(size_t mem_limit);
void mt_host_close(lua_State *L);  // NULL is a no-op

// The limits block of L, created on first use. [-0, +0, m]
mt_limits *mt_host_limits(lua_State *L);

// Preloads `moontask` and the embedded `moontask.*` Lua modules into
// package.preload. [-0, +0, m]
void mt_host_preload(lua_State *L);

// Installs the deadline hook on L when L has no hook, so that coroutines
// created from L (e.g. by a task script at load time) inherit it. The hook
// does nothing while no task is armed. [-0, +0, -]
void mt_host_install_hook(lua_State *L);

// Arms the deadline (timeout <= 0: none) and the memory cap for one task
// call on thread L, installing the hook (a foreign hook is saved); disarm
// restores it.
void mt_host_arm(lua_State *L, double timeout);
void mt_host_disarm(lua_State *L);

// lua_pcall with a traceback handler. On error, leaves the message (a
// string, whatever was raised) on the stack and, when traceback is not
// NULL, pushes nothing more but stores the traceback text in the registry
// for mt_host_pop_traceback. Returns the lua_pcall status.
// [-(nargs+1), +(nresults|1), -]
int mt_host_pcall(lua_State *L, int nargs, int nresults);

// Pushes the traceback of the last failed mt_host_pcall (or nil).
// [-0, +1, -]
void mt_host_push_traceback(lua_State *L);

// Loads and runs a Lua file in text mode only under mt_host_pcall.
// On error returns non-zero with the message on the stack. [-0, +(0|1), -]
int mt_host_dofile(lua_State *L, const char *path);

#endif
