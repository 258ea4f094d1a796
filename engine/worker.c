/*
 * worker: the threaded engine behind `moontask run`. One thread per
 * worker, each with its own lua_State and store connection (never shared);
 * the main thread recovers tasks of dead engines, handles signals and the
 * shutdown grace period, and decides when --drain is done.
 *
 * Called from Lua as moontask._run(settings, scripts, {drain=, workers=});
 * after the arguments are read no Lua error can be raised in the calling
 * state, so the C objects here need no Lua-side owner.
 */
// SPDX-License-Identifier: MIT
#define _DEFAULT_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "ids.h"
#include "lua_api.h"
#include "lua_engine.h"

typedef struct pool {
    mt_settings s;
    bool drain;
    atomic_int stop;   // no more claims
    atomic_int abort;  // interrupt running tasks (grace period over)
    atomic_int busy;   // workers inside a batch
    atomic_long gen;   // batches started, to detect races in drain checks
    atomic_int exited;
    atomic_int engine_errors;
} pool;

typedef struct worker {
    pool *p;
    mt_engine *e;
    pthread_t thread;
    bool started;
} worker;

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
    got_signal = sig;
}

static void sleep_for(double s)
{
    if (s <= 0) {
        return;
    }
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

// Whether --drain is finished: nothing runnable or waiting for a retry, and
// nobody running a batch,
// with no batch started while we looked.
static bool drained(pool *p, mt_store *st)
{
    long g1 = atomic_load(&p->gen);
    if (atomic_load(&p->busy) != 0) {
        return false;
    }
    int64_t waiting = 0;
    if (mt_store_count_waiting(st, mt_wall_now(), &waiting, NULL) != MT_OK) {
        return false;
    }
    return waiting == 0 && atomic_load(&p->busy) == 0 && atomic_load(&p->gen) == g1;
}

// How long an idle worker sleeps: until the next retry is due, at most one
// poll interval, in slices short enough to notice a stop quickly.
static double idle_wait(pool *p, mt_engine *e)
{
    double wait = p->s.poll_interval;
    double at = 0;
    bool any = false;
    if (mt_store_next_run_at(mt_engine_store(e), &at, &any, NULL) == MT_OK && any) {
        double until = at - mt_engine_now(e);
        if (until < wait) {
            wait = until > 0.001 ? until : 0.001;
        }
    }
    return wait < 0.05 ? wait : 0.05;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    pool *p = w->p;
    while (!atomic_load(&p->stop)) {
        atomic_fetch_add(&p->busy, 1);
        atomic_fetch_add(&p->gen, 1);
        size_t ran = 0;
        mt_err err = {0};
        int rc = mt_engine_run_batch(w->e, p->s.batch, &ran, &err);
        atomic_fetch_sub(&p->busy, 1);
        if (rc != MT_OK) {
            atomic_fetch_add(&p->engine_errors, 1);
            fprintf(stderr, "moontask: worker error: %s\n", mt_err_msg(&err));
            mt_err_clear(&err);
            sleep_for(p->s.poll_interval);
            continue;
        }
        if (ran > 0) {
            continue;
        }
        if (p->drain && drained(p, mt_engine_store(w->e))) {
            atomic_store(&p->stop, 1);
            break;
        }
        sleep_for(idle_wait(p, w->e));
    }
    atomic_fetch_add(&p->exited, 1);
    return NULL;
}

static bool alive(void *ud, const char *owner)
{
    (void)ud;
    return mt_owner_alive(owner);
}

// Before any worker starts: recover tasks of dead engines, and refuse to
// start when encrypted arguments wait but no key is configured.
static int prepare(pool *p, mt_err *err)
{
    mt_store *st = NULL;
    int rc = mt_store_open(&st, p->s.cfg.database, &p->s.cfg.store, err);
    int interrupted = 0, requeued = 0;
    if (rc == MT_OK) {
        rc = mt_store_recover(st, mt_wall_now(), alive, NULL, &interrupted, &requeued, err);
    }
    if (rc == MT_OK && (interrupted || requeued)) {
        fprintf(stderr,
                "moontask: recovered tasks of a stopped engine: %d interrupted, %d requeued\n",
                interrupted, requeued);
    }
    int64_t enc = 0;
    if (rc == MT_OK && p->s.cfg.nkeys == 0) {
        rc = mt_store_count_encrypted(st, &enc, err);
        if (rc == MT_OK && enc > 0) {
            rc = mt_err_set(err, MT_EINVAL,
                            "%lld task(s) in %s have encrypted arguments but no encryption key "
                            "is configured; set encrypt_args_key (or encrypt_args_key_file) "
                            "in the config",
                            (long long)enc, p->s.cfg.database);
        }
    }
    mt_store_close(st);
    return rc;
}

// Grace period, then abort, then a last chance to record outcomes.
static void shutdown_workers(pool *p, worker *ws, int n)
{
    atomic_store(&p->stop, 1);
    double deadline = mt_mono_now() + p->s.shutdown_grace;
    while (atomic_load(&p->exited) < n && mt_mono_now() < deadline) {
        sleep_for(0.01);
    }
    if (atomic_load(&p->exited) < n) {
        atomic_store(&p->abort, 1);
        deadline = mt_mono_now() + 2;
        while (atomic_load(&p->exited) < n && mt_mono_now() < deadline) {
            sleep_for(0.01);
        }
    }
    for (int i = 0; i < n; i++) {
        if (ws[i].started && atomic_load(&p->exited) == n) {
            pthread_join(ws[i].thread, NULL);
            ws[i].started = false;
        }
    }
}

// Threads stuck in C code (a blocking call) cannot be interrupted: their
// tasks are marked here and the process exits without joining them.
static void abandon_stuck(pool *p, const char *owner)
{
    mt_store *st = NULL;
    mt_err err = {0};
    if (mt_store_open(&st, p->s.cfg.database, &p->s.cfg.store, &err) == MT_OK) {
        mt_store_interrupt_owner(st, owner, mt_wall_now(),
                                 "interrupted: the engine stopped while the task was blocked", NULL,
                                 NULL, &err);
    }
    mt_store_close(st);
    mt_err_clear(&err);
    fflush(NULL);
    _exit(0);
}

static int start_workers(pool *p, worker *ws, int n, const char *const *scripts, size_t nscripts,
                         mt_err *err)
{
    for (int i = 0; i < n; i++) {
        int rc = mt_engine_new_worker(&p->s.cfg, scripts, nscripts, &ws[i].e, err);
        if (rc != MT_OK) {
            return rc;
        }
    }
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old);  // workers never take the signals
    for (int i = 0; i < n; i++) {
        ws[i].p = p;
        if (pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]) != 0) {
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            return mt_err_set(err, MT_ENOMEM, "cannot start worker thread %d", i + 1);
        }
        ws[i].started = true;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return MT_OK;
}

static void print_summary(pool *p, worker *ws, int n, double elapsed)
{
    mt_engine_stats t = {0};
    for (int i = 0; i < n; i++) {
        if (ws[i].e != NULL) {
            mt_engine_stats s = mt_engine_get_stats(ws[i].e);
            t.succeeded += s.succeeded;
            t.failed += s.failed;
            t.retried += s.retried;
        }
    }
    long long done = (long long)(t.succeeded + t.failed);
    printf("moontask: %lld task(s) finished: %lld succeeded, %lld failed; %lld retried "
           "attempt(s); %.2f s, %.0f tasks/s\n",
           done, (long long)t.succeeded, (long long)t.failed, (long long)t.retried, elapsed,
           elapsed > 0 ? (double)done / elapsed : 0.0);
    fflush(stdout);
    (void)p;
}

static int64_t total_failed(worker *ws, int n)
{
    int64_t f = 0;
    for (int i = 0; i < n; i++) {
        if (ws[i].e != NULL) {
            f += mt_engine_get_stats(ws[i].e).failed;
        }
    }
    return f;
}

// moontask._run(settings, scripts, {drain=bool, workers=int}) -> exit code, message?
int mt_api_run(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    pool *p = lua_newuserdatauv(L, sizeof *p, 0);  // Lua-owned: freed with the state
    memset(p, 0, sizeof *p);
    mt_api_settings(L, 1, &p->s);  // keeps the keys alive on the stack
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "drain");
        p->drain = lua_toboolean(L, -1);
        lua_getfield(L, 3, "workers");
        if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1 && lua_tointeger(L, -1) <= 256) {
            p->s.workers = (int)lua_tointeger(L, -1);
        }
        lua_pop(L, 2);
    }
    size_t nscripts = lua_rawlen(L, 2);
    const char **scripts = lua_newuserdatauv(L, (nscripts + 1) * sizeof *scripts, 0);
    for (size_t i = 0; i < nscripts; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i + 1);
        scripts[i] = luaL_checkstring(L, -1);  // anchored by the scripts table
        lua_pop(L, 1);
    }
    int n = p->s.workers;
    worker *ws = lua_newuserdatauv(L, (size_t)n * sizeof *ws, 0);
    memset(ws, 0, (size_t)n * sizeof *ws);
    // From here on: C only.
    mt_err err = {0};
    mt_sink *sink = NULL;
    int rc = MT_OK;
    if (p->s.log_file != NULL || p->s.log_stdout) {
        rc = mt_sink_open(&sink, p->s.log_file, p->s.log_stdout, p->s.log_level, &err);
    }
    p->s.cfg.sink = sink;
    p->s.cfg.abort = &p->abort;
    if (rc == MT_OK) {
        rc = prepare(p, &err);
    }
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    got_signal = 0;
    double t0 = mt_mono_now();
    if (rc == MT_OK) {
        rc = start_workers(p, ws, n, scripts, nscripts, &err);
    }
    int code = 0;
    if (rc == MT_OK) {
        while (!got_signal && atomic_load(&p->exited) < n) {
            sleep_for(0.02);
        }
        shutdown_workers(p, ws, n);
        if (atomic_load(&p->exited) < n) {
            abandon_stuck(p, mt_engine_owner(ws[0].e));
        }
        print_summary(p, ws, n, mt_mono_now() - t0);
        code =
            (p->drain && !got_signal && (total_failed(ws, n) > 0 || p->engine_errors > 0)) ? 1 : 0;
    } else {
        atomic_store(&p->stop, 1);
        atomic_store(&p->abort, 1);
        for (int i = 0; i < n; i++) {
            if (ws[i].started) {
                pthread_join(ws[i].thread, NULL);
            }
        }
        code = rc == MT_EINVAL ? 2 : 1;
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    for (int i = 0; i < n; i++) {
        mt_engine_free(ws[i].e);
        ws[i].e = NULL;
    }
    mt_sink_close(sink);
    lua_pushinteger(L, code);
    if (rc != MT_OK) {
        lua_pushstring(L, mt_err_msg(&err));  // all C objects are released by now
        mt_err_clear(&err);
        return 2;
    }
    return 1;
}
