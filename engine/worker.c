/*
 * worker: the threaded engine behind `moontask run`.
 *
 * One dispatcher thread owns the process's writing store connection: in one
 * transaction it records the outcomes workers have finished and claims the
 * next due tasks into an in-memory ready queue (group commit). Worker
 * threads, each with its own lua_State (never shared), take tasks from that
 * queue one at a time and hand back deep copies of their outcomes. So a
 * finished task is committed as soon as the dispatcher gets to it, any idle
 * worker takes the next ready task (a slow task holds up nothing), and
 * SQLite sees one writer per process instead of one per worker.
 *
 * The main thread recovers tasks of dead engines before starting, handles
 * SIGINT/SIGTERM and the shutdown grace period. Called from Lua as
 * moontask._run(settings, scripts, {drain=, workers=}); after the arguments
 * are read no Lua error can be raised in the calling state.
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

// Finished outcomes waiting for the dispatcher (one worker's hand-over).
typedef struct done_item {
    mt_outcome *outs;  // from mt_engine_run_rows; freed with free()
    size_t n;
    struct done_item *next;
} done_item;

typedef struct pool {
    mt_settings s;
    bool drain;
    int nworkers;
    bool disp_started;
    pthread_t disp;
    pthread_mutex_t mu;
    pthread_cond_t work_cv;   // workers wait for ready tasks
    pthread_cond_t store_cv;  // the dispatcher waits for outcomes or idle workers
    mt_task *ready;           // claimed, not started; ready[head..head+nready)
    size_t head, nready, cap;
    done_item *done, *done_tail;
    mt_start *starts;  // tasks workers started since the last round
    size_t nstarts, cap_starts;
    int idle;     // workers waiting for a task
    int running;  // workers running a task
    bool stop_claims;
    bool all_idle_seen;  // the last round saw every worker idle (for --drain)
    size_t target;       // ready-queue size the dispatcher aims for (adaptive)
    bool finished;       // the dispatcher is done: workers exit
    atomic_int abort;
    atomic_int engine_errors;
    mt_store *store;  // the dispatcher's connection
    const char *owner;
} pool;

typedef struct worker {
    pool *p;
    mt_engine *e;
    pthread_t thread;
    bool started;
} worker;

static volatile sig_atomic_t got_signal;
static volatile sig_atomic_t signal_count;

static void on_signal(int sig)
{
    got_signal = sig;
    signal_count++;
}

static void sleep_for(double s)
{
    if (s <= 0) {
        return;
    }
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static void wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, double wall_deadline)
{
    struct timespec ts = {.tv_sec = (time_t)wall_deadline,
                          .tv_nsec = (long)((wall_deadline - (double)(time_t)wall_deadline) * 1e9)};
    pthread_cond_timedwait(cv, mu, &ts);
}

// ------------------------------------------------------------- workers

// Records (locked) that a claimed-ahead task starts now, for the
// dispatcher's next round; the row's started_at follows.
static bool note_start(pool *p, mt_task *row)
{
    if (p->nstarts == p->cap_starts) {
        size_t cap = p->cap_starts ? p->cap_starts * 2 : 64;
        mt_start *v = realloc(p->starts, cap * sizeof *v);
        if (v == NULL) {
            return false;
        }
        p->starts = v;
        p->cap_starts = cap;
    }
    row->started_at = mt_wall_now();
    p->starts[p->nstarts++] = (mt_start){.seq = row->seq, .at = row->started_at};
    pthread_cond_signal(&p->store_cv);
    return true;
}

static void push_done(pool *p, done_item *d)
{
    if (p->done_tail != NULL) {
        p->done_tail->next = d;
    } else {
        p->done = d;
    }
    p->done_tail = d;
    pthread_cond_signal(&p->store_cv);
}

// Hands a claimed-ahead task that never started back (locked).
static void give_back(pool *p, mt_task *row)
{
    mt_outcome *o = calloc(1, sizeof *o + 37);
    done_item *d = malloc(sizeof *d);
    if (o != NULL && d != NULL) {
        char *id = (char *)(o + 1);
        memcpy(id, row->id, 37);
        *o = (mt_outcome){.id = id, .seq = row->seq, .status = MT_PENDING, .release = true};
        *d = (done_item){.outs = o, .n = 1, .next = NULL};
        push_done(p, d);
    } else {
        free(o);  // stays RUNNING, unstarted: the next start gives it back
        free(d);
    }
    mt_task_clear(row);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    pool *p = w->p;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        p->idle++;
        pthread_cond_signal(&p->store_cv);
        while (p->nready == 0 && !p->finished) {
            pthread_cond_wait(&p->work_cv, &p->mu);
        }
        p->idle--;
        if (p->nready == 0) {
            break;
        }
        mt_task row = p->ready[p->head];
        p->head++;
        p->nready--;
        if (atomic_load(&p->abort) || !note_start(p, &row)) {
            // Shutting down (or no memory to record the start): never started.
            give_back(p, &row);
            continue;
        }
        p->running++;
        pthread_mutex_unlock(&p->mu);
        mt_outcome *outs = NULL;
        mt_err err = {0};
        if (mt_engine_run_rows(w->e, &row, 1, &outs, &err) != MT_OK) {
            atomic_fetch_add(&p->engine_errors, 1);
            fprintf(stderr, "moontask: worker error: %s\n", mt_err_msg(&err));
        }
        mt_err_clear(&err);
        done_item *d = outs != NULL ? malloc(sizeof *d) : NULL;
        if (d != NULL) {
            *d = (done_item){.outs = outs, .n = 1, .next = NULL};
        } else {
            free(outs);  // the task stays RUNNING and is recovered at the next start
        }
        pthread_mutex_lock(&p->mu);
        p->running--;
        if (d != NULL) {
            push_done(p, d);
        }
        pthread_cond_signal(&p->store_cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

// ---------------------------------------------------------- dispatcher

// Makes room for `more` rows at the end of the ready queue (called locked).
static bool ready_reserve(pool *p, size_t more)
{
    if (p->head > 0 && p->nready > 0) {
        memmove(p->ready, p->ready + p->head, p->nready * sizeof *p->ready);
    }
    p->head = 0;
    if (p->nready + more <= p->cap) {
        return true;
    }
    size_t cap = p->nready + more;
    mt_task *r = realloc(p->ready, cap * sizeof *r);
    if (r == NULL) {
        return false;
    }
    p->ready = r;
    p->cap = cap;
    return true;
}

// Flattens the done list into one outcome array (borrowing the copies).
static mt_outcome *gather(done_item *d, size_t *n)
{
    size_t total = 0;
    for (done_item *i = d; i != NULL; i = i->next) {
        total += i->n;
    }
    *n = total;
    if (total == 0) {
        return NULL;
    }
    mt_outcome *all = malloc(total * sizeof *all);
    size_t k = 0;
    for (done_item *i = d; all != NULL && i != NULL; i = i->next) {
        memcpy(all + k, i->outs, i->n * sizeof *all);
        k += i->n;
    }
    return all;
}

static void free_done(done_item *d)
{
    while (d != NULL) {
        done_item *next = d->next;
        free(d->outs);
        free(d);
        d = next;
    }
}

// Claimed rows that will never start (shutdown) go back as they were
// (called locked). NULL when there are none, or out of memory: then they
// stay RUNNING and are recovered at the next start.
static done_item *unclaim_ready(pool *p)
{
    size_t n = p->nready;
    if (n == 0) {
        return NULL;
    }
    // One block: the outcomes, then the ids they point to.
    mt_outcome *outs = malloc(n * (sizeof *outs + 37));
    done_item *d = malloc(sizeof *d);
    if (outs == NULL || d == NULL) {
        free(outs);
        free(d);
        return NULL;
    }
    char *ids = (char *)(outs + n);
    for (size_t i = 0; i < n; i++) {
        memcpy(ids + i * 37, p->ready[p->head + i].id, 37);
        outs[i] = (mt_outcome){.id = ids + i * 37,
                               .seq = p->ready[p->head + i].seq,
                               .status = MT_PENDING,
                               .release = true};
        mt_task_clear(&p->ready[p->head + i]);
    }
    p->nready = 0;
    p->head = 0;
    *d = (done_item){.outs = outs, .n = n, .next = NULL};
    return d;
}

typedef struct round {
    done_item *done;
    mt_start *starts;  // owned by the round; freed after the commit
    size_t nstarts;
    size_t want;
    bool stopping;
} round;

// Waits (locked) until there is something to commit, an idle worker to
// feed, ready tasks to give back at a stop, or the wake-up time (0: none,
// only a signal wakes it); takes the work for one round.
static round next_round(pool *p, double wake_at)
{
    size_t target = p->target;
    for (;;) {
        bool timed_out = wake_at > 0 && mt_wall_now() >= wake_at;
        bool feed = !p->stop_claims && wake_at == 0 && p->idle > 0 && p->nready == 0;
        bool give_back = p->stop_claims && p->nready > 0;
        bool drain_check = p->drain && p->idle == p->nworkers && !p->all_idle_seen;
        if (p->done != NULL || p->nstarts > 0 || feed || give_back || timed_out || drain_check) {
            break;
        }
        if (p->stop_claims && p->running == 0) {
            break;  // nothing left to wait for
        }
        if (wake_at > 0) {
            wait_until(&p->store_cv, &p->mu, wake_at);
        } else {
            pthread_cond_wait(&p->store_cv, &p->mu);
        }
    }
    round r = {.done = p->done, .stopping = p->stop_claims};
    p->all_idle_seen = p->idle == p->nworkers;
    p->done = p->done_tail = NULL;
    r.starts = p->starts;
    r.nstarts = p->nstarts;
    p->starts = NULL;
    p->nstarts = p->cap_starts = 0;
    if (!p->stop_claims && p->nready < target) {
        r.want = target - p->nready;
    }
    if (r.stopping) {
        done_item *u = unclaim_ready(p);
        if (u != NULL) {
            u->next = r.done;
            r.done = u;
        }
    }
    return r;
}

// Puts the starts of a failed round back in front of newer ones (locked).
static void requeue_starts(pool *p, round *r)
{
    if (r->nstarts == 0) {
        free(r->starts);
        return;
    }
    size_t n = r->nstarts + p->nstarts;
    mt_start *v = realloc(r->starts, n * sizeof *v);
    if (v == NULL) {
        free(r->starts);  // those tasks are recovered as unstarted: they may run again
        return;
    }
    memcpy(v + r->nstarts, p->starts, p->nstarts * sizeof *v);
    free(p->starts);
    p->starts = v;
    p->nstarts = p->cap_starts = n;
}

// Whether --drain (or a stop) is complete; called locked after a round.
static bool all_done(pool *p, bool claimed_any)
{
    if (p->running > 0 || p->nready > 0 || p->done != NULL || p->nstarts > 0 || claimed_any) {
        return false;
    }
    if (p->stop_claims) {
        return true;
    }
    if (!p->drain || p->idle < p->nworkers) {
        return false;
    }
    int64_t waiting = 0;
    return mt_store_count_waiting(p->store, mt_wall_now(), &waiting, NULL) == MT_OK && waiting == 0;
}

// When to look for due tasks again if nothing is due now.
static double next_wake(pool *p)
{
    double wake = mt_wall_now() + p->s.poll_interval;
    double at = 0;
    bool any = false;
    if (mt_store_next_run_at(p->store, &at, &any, NULL) == MT_OK && any && at < wake) {
        wake = at;
    }
    return wake;
}

// Sizes the ready queue to about 5 ms of work at the recent completion
// rate, between one task per worker and `batch`: fast tasks get big group
// commits, while slow tasks are not claimed long before a worker is free
// (claimed tasks that never started are INTERRUPTED after a crash).
static void adapt_target(pool *p, size_t completed, double *window_start, size_t *window_n)
{
    *window_n += completed;
    double now = mt_mono_now();
    double span = now - *window_start;
    if (span < 0.05) {
        return;
    }
    double rate = (double)*window_n / span;
    size_t t = (size_t)(rate * 0.005);
    size_t lo = (size_t)p->nworkers, hi = p->s.batch;
    t = t < lo ? lo : t > hi ? hi : t;
    pthread_mutex_lock(&p->mu);
    p->target = t;
    pthread_mutex_unlock(&p->mu);
    *window_start = now;
    *window_n = 0;
}

static void *dispatcher_main(void *arg)
{
    pool *p = arg;
    mt_task *rows = calloc(p->s.batch, sizeof *rows);
    double wake_at = 0, window_start = mt_mono_now();
    size_t window_n = 0;
    int failures = 0;
    pthread_mutex_lock(&p->mu);
    while (rows != NULL) {
        round r = next_round(p, wake_at);
        pthread_mutex_unlock(&p->mu);
        size_t nouts = 0;
        mt_outcome *outs = gather(r.done, &nouts);
        mt_err err = {0};
        mt_round sr = {.starts = r.starts,
                       .nstarts = r.nstarts,
                       .outs = outs,
                       .nouts = nouts,
                       .now = mt_wall_now(),
                       .owner = p->owner,
                       .rows = rows,
                       .max = r.want,
                       .claim_ahead = true};
        int rc = (nouts > 0 && outs == NULL) ? mt_err_set(&err, MT_ENOMEM, "out of memory")
                                             : mt_store_round(p->store, &sr, &err);
        size_t got = rc == MT_OK ? sr.claimed : 0;
        free(outs);
        if (rc != MT_OK && rc != MT_EBUSY) {
            // Not a passing lock: stop rather than loop (the outcomes stay
            // uncommitted and are recovered at the next start).
            fprintf(stderr, "moontask: stopping: %s\n", mt_err_msg(&err));
            mt_err_clear(&err);
            atomic_fetch_add(&p->engine_errors, 1);
            free(r.starts);
            free_done(r.done);
            pthread_mutex_lock(&p->mu);
            for (size_t i = 0; i < p->nready; i++) {
                mt_task_clear(&p->ready[p->head + i]);  // claimed, never started
            }
            p->nready = 0;
            p->stop_claims = true;
            break;
        }
        if (rc != MT_OK) {
            // Keep the outcomes and try again; the database is busy.
            fprintf(stderr, "moontask: %s%s\n", mt_err_msg(&err),
                    ++failures > 1 ? " (retrying)" : "");
            mt_err_clear(&err);
            sleep_for(failures < 20 ? 0.01 * failures : 0.2);
            pthread_mutex_lock(&p->mu);
            requeue_starts(p, &r);
            done_item *t = r.done;
            while (t != NULL && t->next != NULL) {
                t = t->next;
            }
            if (t != NULL) {
                t->next = p->done;
                if (p->done == NULL) {
                    p->done_tail = t;
                }
                p->done = r.done;
            }
            if (failures >= 100) {
                atomic_fetch_add(&p->engine_errors, 1);
                break;
            }
            continue;
        }
        failures = 0;
        free_done(r.done);
        free(r.starts);
        adapt_target(p, nouts, &window_start, &window_n);
        bool nothing_due = r.want > 0 && got == 0;
        if (nothing_due) {
            wake_at = next_wake(p);
        }
        for (size_t i = 0; i < got; i++) {
            rows[i].attempts++;  // the attempt it will be once a worker starts it
        }
        pthread_mutex_lock(&p->mu);
        if (got > 0 && ready_reserve(p, got)) {
            memcpy(p->ready + p->nready, rows, got * sizeof *rows);
            p->nready += got;
            pthread_cond_broadcast(&p->work_cv);
        } else {
            for (size_t i = 0; i < got; i++) {
                mt_task_clear(&rows[i]);  // out of memory: recovered at the next start
            }
        }
        if (all_done(p, got > 0)) {
            break;
        }
        if (!nothing_due) {
            wake_at = 0;  // keep going while there is work
        }
    }
    p->finished = true;
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    free(rows);
    return NULL;
}

// ------------------------------------------------------------ lifecycle

static bool alive(void *ud, const char *owner)
{
    (void)ud;
    return mt_owner_alive(owner);
}

// Before any worker starts: recover tasks of dead engines, and refuse to
// start when encrypted arguments wait but no key is configured.
static int prepare(pool *p, mt_err *err)
{
    int interrupted = 0, requeued = 0;
    int rc = mt_store_check_writable(p->store, err);
    if (rc == MT_OK) {
        rc = mt_store_recover(p->store, mt_wall_now(), alive, NULL, &interrupted, &requeued, err);
    }
    if (rc == MT_OK && (interrupted || requeued)) {
        fprintf(stderr,
                "moontask: recovered tasks of a stopped engine: %d interrupted, %d requeued\n",
                interrupted, requeued);
    }
    int64_t enc = 0;
    if (rc == MT_OK && p->s.cfg.nkeys == 0) {
        rc = mt_store_count_encrypted(p->store, &enc, err);
        if (rc == MT_OK && enc > 0) {
            rc = mt_err_set(err, MT_EINVAL,
                            "%lld task(s) in %s have encrypted arguments but no encryption key "
                            "is configured; set encrypt_args_key (or encrypt_args_key_file) "
                            "in the config",
                            (long long)enc, p->s.cfg.database);
        }
    }
    return rc;
}

static int locked_running(pool *p)
{
    pthread_mutex_lock(&p->mu);
    int n = p->running;
    bool fin = p->finished;
    pthread_mutex_unlock(&p->mu);
    return fin ? 0 : n;
}

// Grace period for running tasks, then abort them, then give up on any
// stuck in C code: their tasks are marked and the process exits.
static void shutdown_pool(pool *p)
{
    pthread_mutex_lock(&p->mu);
    p->stop_claims = true;
    pthread_cond_signal(&p->store_cv);
    pthread_mutex_unlock(&p->mu);
    int running = locked_running(p);
    if (running > 0 && got_signal != 0) {
        fprintf(stderr,
                "moontask: stopping: no new tasks; waiting up to %g s for %d running task(s) "
                "(signal again to interrupt them now)\n",
                p->s.shutdown_grace, running);
    }
    double deadline = mt_mono_now() + p->s.shutdown_grace;
    while (locked_running(p) > 0 && mt_mono_now() < deadline && signal_count < 2) {
        sleep_for(0.01);
    }
    if (locked_running(p) > 0) {
        atomic_store(&p->abort, 1);
        deadline = mt_mono_now() + 2;
        while (locked_running(p) > 0 && mt_mono_now() < deadline) {
            sleep_for(0.01);
        }
    }
    if (locked_running(p) > 0) {
        mt_err err = {0};
        mt_store_interrupt_owner(p->store, p->owner, mt_wall_now(),
                                 "interrupted: the engine stopped while the task was blocked", NULL,
                                 NULL, &err);
        mt_err_clear(&err);
        fflush(NULL);
        _exit(0);
    }
}

static int create_engines(pool *p, worker *ws, const char *const *scripts, size_t nscripts,
                          mt_err *err)
{
    for (int i = 0; i < p->nworkers; i++) {
        int rc = mt_engine_new_worker(&p->s.cfg, scripts, nscripts, &ws[i].e, err);
        if (rc != MT_OK) {
            return rc;
        }
        ws[i].p = p;
    }
    return MT_OK;
}

static int start_threads(pool *p, worker *ws, mt_err *err)
{
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &block, &old);  // only the main thread takes signals
    int rc = MT_OK;
    if (pthread_create(&p->disp, NULL, dispatcher_main, p) != 0) {
        rc = mt_err_set(err, MT_ENOMEM, "cannot start the dispatcher thread");
    } else {
        p->disp_started = true;
    }
    for (int i = 0; rc == MT_OK && i < p->nworkers; i++) {
        if (pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]) != 0) {
            rc = mt_err_set(err, MT_ENOMEM, "cannot start worker thread %d", i + 1);
        } else {
            ws[i].started = true;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

static mt_engine_stats total_stats(worker *ws, int n)
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
    return t;
}

static void print_summary(mt_engine_stats t, double elapsed)
{
    long long done = (long long)(t.succeeded + t.failed);
    printf("moontask: %lld task(s) finished: %lld succeeded, %lld failed; %lld retried "
           "attempt(s); %.2f s, %.0f tasks/s\n",
           done, (long long)t.succeeded, (long long)t.failed, (long long)t.retried, elapsed,
           elapsed > 0 ? (double)done / elapsed : 0.0);
    fflush(stdout);
}

// Runs the pool until drained or signalled; returns the exit code.
static int serve(pool *p, worker *ws)
{
    double t0 = mt_mono_now();
    for (;;) {
        pthread_mutex_lock(&p->mu);
        bool fin = p->finished;
        pthread_mutex_unlock(&p->mu);
        if (fin || got_signal) {
            break;
        }
        sleep_for(0.02);
    }
    if (got_signal) {
        shutdown_pool(p);
    }
    pthread_join(p->disp, NULL);
    for (int i = 0; i < p->nworkers; i++) {
        if (ws[i].started) {
            pthread_join(ws[i].thread, NULL);
            ws[i].started = false;
        }
    }
    mt_engine_stats t = total_stats(ws, p->nworkers);
    print_summary(t, mt_mono_now() - t0);
    if (atomic_load(&p->engine_errors) > 0) {
        return 1;
    }
    return p->drain && !got_signal && t.failed > 0 ? 1 : 0;
}

// Reads moontask._run's arguments into p and the scripts array. [-0, +2, v]
static const char **read_args(lua_State *L, pool *p, size_t *nscripts)
{
    mt_api_settings(L, 1, &p->s);  // keeps the keys alive on the stack
    p->nworkers = p->s.workers;
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "drain");
        p->drain = lua_toboolean(L, -1);
        lua_getfield(L, 3, "workers");
        if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1 && lua_tointeger(L, -1) <= 256) {
            p->nworkers = (int)lua_tointeger(L, -1);
        }
        lua_pop(L, 2);
    }
    *nscripts = lua_rawlen(L, 2);
    const char **scripts = lua_newuserdatauv(L, (*nscripts + 1) * sizeof *scripts, 0);
    for (size_t i = 0; i < *nscripts; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i + 1);
        scripts[i] = luaL_checkstring(L, -1);  // anchored by the scripts table
        lua_pop(L, 1);
    }
    return scripts;
}

// moontask._run(settings, scripts, {drain=bool, workers=int}) -> exit code [, message]
int mt_api_run(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    pool *p = lua_newuserdatauv(L, sizeof *p, 0);  // Lua-owned: freed with the state
    memset(p, 0, sizeof *p);
    size_t nscripts = 0;
    const char **scripts = read_args(L, p, &nscripts);
    worker *ws = lua_newuserdatauv(L, (size_t)p->nworkers * sizeof *ws, 0);
    memset(ws, 0, (size_t)p->nworkers * sizeof *ws);
    char *owner = mt_owner_self();  // from here on: C only, no Lua errors
    p->owner = owner;
    p->target = (size_t)p->nworkers < p->s.batch ? (size_t)p->nworkers : p->s.batch;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    pthread_cond_init(&p->store_cv, NULL);
    mt_err err = {0};
    mt_sink *sink = NULL;
    int rc = owner != NULL ? MT_OK : mt_err_set(&err, MT_ENOMEM, "out of memory");
    if (rc == MT_OK && (p->s.log_file != NULL || p->s.log_stdout)) {
        rc = mt_sink_open(&sink, p->s.log_file, p->s.log_stdout, p->s.log_level, &err);
    }
    p->s.cfg.sink = sink;
    p->s.cfg.abort = &p->abort;
    if (rc == MT_OK) {
        rc = mt_store_open(&p->store, p->s.cfg.database, &p->s.cfg.store, &err);
    }
    if (rc == MT_OK) {
        rc = prepare(p, &err);
    }
    // Scripts load before the handlers exist: a script stuck at load time
    // still dies on SIGINT/SIGTERM (nothing is claimed yet).
    if (rc == MT_OK) {
        rc = create_engines(p, ws, scripts, nscripts, &err);
    }
    struct sigaction sa, ign, old_int, old_term, old_hup, old_pipe;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGHUP, &sa, &old_hup);     // a closed terminal: shut down gracefully
    sigaction(SIGPIPE, &ign, &old_pipe);  // a closed stdout pipe: writes fail, tasks go on
    got_signal = 0;
    signal_count = 0;
    if (rc == MT_OK) {
        rc = start_threads(p, ws, &err);
    }
    int code = 0;
    if (p->disp_started) {
        if (rc != MT_OK) {
            got_signal = SIGTERM;  // stop what started, then report the error
        }
        code = serve(p, ws);
    }
    if (rc != MT_OK) {
        code = rc == MT_EINVAL ? 2 : 1;
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGHUP, &old_hup, NULL);
    sigaction(SIGPIPE, &old_pipe, NULL);
    for (int i = 0; i < p->nworkers; i++) {
        mt_engine_free(ws[i].e);
        ws[i].e = NULL;
    }
    for (size_t i = 0; i < p->nready; i++) {
        mt_task_clear(&p->ready[p->head + i]);
    }
    free(p->ready);
    free(p->starts);
    free_done(p->done);
    mt_store_close(p->store);
    mt_sink_close(sink);
    free(owner);
    pthread_cond_destroy(&p->store_cv);
    pthread_cond_destroy(&p->work_cv);
    pthread_mutex_destroy(&p->mu);
    lua_pushinteger(L, code);
    if (rc != MT_OK) {
        lua_pushstring(L, mt_err_msg(&err));
        mt_err_clear(&err);
        return 2;
    }
    return 1;
}
