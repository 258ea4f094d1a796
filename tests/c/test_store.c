/*
 * test_store: the SQLite queue. Each test opens its own database in a fresh
 * temporary folder (or ":memory:"). SQLite is used directly only to play a
 * second process (holding a lock) or to forge foreign files.
 */
// SPDX-License-Identifier: MIT
#define _POSIX_C_SOURCE 200809L  // mkdtemp
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "check.h"
#include "store.h"

typedef struct tmpdb {
    char dir[64];
    char path[96];
} tmpdb;

static void tmp_make(tmpdb *t)
{
    snprintf(t->dir, sizeof t->dir, "/tmp/mt_store_XXXXXX");
    CHECK(mkdtemp(t->dir) != NULL);
    snprintf(t->path, sizeof t->path, "%s/queue.db", t->dir);
}

static void tmp_remove(const tmpdb *t)
{
    static const char *const suffix[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
        char p[128];
        snprintf(p, sizeof p, "%s%s", t->path, suffix[i]);
        unlink(p);
    }
    CHECK(rmdir(t->dir) == 0);
}

static mt_store *open_ok(const char *path)
{
    mt_store *st = NULL;
    mt_err e = {0};
    CHECK_OK(mt_store_open(&st, path, NULL, &e), &e);
    CHECK(st != NULL);
    return st;
}

// Makes a 36-character id from a number, so ordering tests read easily.
static void make_id(char id[37], int n)
{
    snprintf(id, 37, "00000000-0000-0000-0000-%012d", n);
}

static const uint8_t msgpack_nil[1] = {0xc0};

// Inserts one task with payload 0xc0 due at run_at.
static void add(mt_store *st, int n, const char *task, double run_at)
{
    char id[37];
    make_id(id, n);
    mt_task_new t = {.id = id,
                     .task = task,
                     .payload = msgpack_nil,
                     .payload_len = 1,
                     .created_at = 1000 + n,
                     .run_at = run_at,
                     .policy = mt_policy_default()};
    mt_err e = {0};
    CHECK_OK(mt_store_insert(st, &t, 1, &e), &e);
}

static int status_of(mt_store *st, int n)
{
    char id[37];
    make_id(id, n);
    mt_task t;
    mt_err e = {0};
    CHECK_OK(mt_store_get(st, id, &t, &e), &e);
    int s = t.status;
    mt_task_clear(&t);
    return s;
}

// Claims up to max tasks at `now` for owner, returning their numbers.
static size_t claim(mt_store *st, double now, const char *owner, size_t max, int *nums)
{
    mt_task rows[64];
    size_t n = 0;
    mt_err e = {0};
    CHECK(max <= 64);
    CHECK_OK(mt_store_claim(st, now, owner, rows, max, &n, &e), &e);
    for (size_t i = 0; i < n; i++) {
        CHECK_EQ(rows[i].status, MT_RUNNING);
        CHECK_STR_EQ(rows[i].owner, owner);
        if (nums != NULL) {
            nums[i] = atoi(rows[i].id + 24);
        }
        mt_task_clear(&rows[i]);
    }
    return n;
}

static void test_store_open_create_reopen(void)
{
    tmpdb d;
    tmp_make(&d);
    mt_store *st = open_ok(d.path);
    CHECK(access(d.path, F_OK) == 0);
    add(st, 1, "mail", 5);
    mt_store_close(st);
    mt_store_close(NULL);

    mt_store_opts o = {.full_durability = true, .busy_timeout_ms = 100};
    mt_err e = {0};
    CHECK_OK(mt_store_open(&st, d.path, &o, &e), &e);
    CHECK_EQ(status_of(st, 1), MT_PENDING);
    mt_store_close(st);

    // The journal really is WAL (several processes share the file).
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(d.path, &db) == SQLITE_OK);
    sqlite3_stmt *s = NULL;
    CHECK(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL) == SQLITE_OK);
    CHECK(sqlite3_step(s) == SQLITE_ROW);
    CHECK_STR_EQ((const char *)sqlite3_column_text(s, 0), "wal");
    sqlite3_finalize(s);
    sqlite3_close(db);
    tmp_remove(&d);
}

static void test_store_memory(void)
{
    mt_store *st = open_ok(":memory:");
    add(st, 1, "a", 0);
    CHECK_EQ(claim(st, 1, "me", 10, NULL), 1);
    mt_store_close(st);
}

static void test_store_roundtrip(void)
{
    mt_store *st = open_ok(":memory:");
    static const uint8_t bytes[] = {0x93, 0x00, 0x01, 0x00, 0xa1, 'x', 0x00};
    mt_policy p = {.retries = 3,
                   .delay = 1.5,
                   .backoff = 2,
                   .max_delay = 60,
                   .jitter = 0.25,
                   .timeout = 30,
                   .requeue_on_interrupt = true,
                   .redact = false};
    mt_task_new in[3] = {
        {.id = "0b0e5b1c-5c3e-4c1a-9a43-7f1d1c3c0a01",
         .task = "report.build",
         .payload = bytes,
         .payload_len = sizeof bytes,
         .created_at = 1700000000.125,
         .run_at = 1700000100.5,
         .policy = p},
        {.id = "0b0e5b1c-5c3e-4c1a-9a43-7f1d1c3c0a02",
         .task = "mail",
         .token = "gAAAAABl-token",
         .created_at = 1,
         .run_at = 2,
         .policy = mt_policy_default()},
        {.id = "e", .task = "empty", .payload = bytes, .payload_len = 0, .policy = p},
    };
    mt_err e = {0};
    CHECK_OK(mt_store_insert(st, in, 3, &e), &e);

    mt_task t;
    CHECK_OK(mt_store_get(st, in[0].id, &t, &e), &e);
    CHECK_STR_EQ(t.id, in[0].id);
    CHECK_STR_EQ(t.task, "report.build");
    CHECK_EQ(t.status, MT_PENDING);
    CHECK_EQ(t.attempts, 0);
    CHECK_EQ(t.retry_base, 0);
    CHECK_EQ(t.payload_len, sizeof bytes);
    CHECK_MEM_EQ(t.payload, bytes, sizeof bytes);
    CHECK(t.token == NULL);
    CHECK_DBL_EQ(t.created_at, 1700000000.125);
    CHECK_DBL_EQ(t.run_at, 1700000100.5);
    CHECK_DBL_EQ(t.started_at, 0);
    CHECK_DBL_EQ(t.finished_at, 0);
    CHECK(t.error == NULL && t.traceback == NULL && t.owner == NULL);
    CHECK_EQ(t.policy.retries, 3);
    CHECK_DBL_EQ(t.policy.delay, 1.5);
    CHECK_DBL_EQ(t.policy.backoff, 2);
    CHECK_DBL_EQ(t.policy.max_delay, 60);
    CHECK_DBL_EQ(t.policy.jitter, 0.25);
    CHECK_DBL_EQ(t.policy.timeout, 30);
    CHECK(t.policy.requeue_on_interrupt && !t.policy.redact);
    mt_task_clear(&t);
    mt_task_clear(&t);  // safe twice

    CHECK_OK(mt_store_get(st, in[1].id, &t, &e), &e);
    CHECK(t.payload == NULL && t.payload_len == 0);
    CHECK_STR_EQ(t.token, "gAAAAABl-token");
    CHECK(t.policy.redact && !t.policy.requeue_on_interrupt);
    mt_task_clear(&t);

    // A zero-byte payload is still a payload, not a token task.
    CHECK_OK(mt_store_get(st, "e", &t, &e), &e);
    CHECK(t.payload != NULL && t.payload_len == 0 && t.token == NULL);
    mt_task_clear(&t);

    CHECK_EQ(mt_store_get(st, "nope", &t, &e), MT_ENOTFOUND);
    CHECK(strstr(mt_err_msg(&e), "no task with id nope") != NULL);
    mt_task zero = {0};
    mt_task_clear(&zero);
    mt_err_clear(&e);
    mt_store_close(st);
}

static void test_store_payload_xor_token(void)
{
    mt_store *st = open_ok(":memory:");
    mt_task_new both = {
        .id = "both", .task = "t", .payload = msgpack_nil, .payload_len = 1, .token = "tok"};
    mt_task_new neither = {.id = "neither", .task = "t"};
    mt_err e = {0};
    CHECK_EQ(mt_store_insert(st, &both, 1, &e), MT_EINVAL);
    CHECK_EQ(mt_store_insert(st, &neither, 1, &e), MT_EINVAL);
    mt_task_new noid = {.task = "t", .token = "x"};
    CHECK_EQ(mt_store_insert(st, &noid, 1, &e), MT_EINVAL);

    // A duplicate id fails the whole batch: nothing of it is kept.
    add(st, 1, "t", 0);
    char id1[37], id2[37];
    make_id(id1, 1);
    make_id(id2, 2);
    mt_task_new batch[2] = {{.id = id2, .task = "t", .token = "x"},
                            {.id = id1, .task = "t", .token = "y"}};
    CHECK_EQ(mt_store_insert(st, batch, 2, &e), MT_EINVAL);
    CHECK(strstr(mt_err_msg(&e), id1) != NULL);
    mt_task t;
    CHECK_EQ(mt_store_get(st, id2, &t, &e), MT_ENOTFOUND);
    CHECK_OK(mt_store_insert(st, batch, 0, &e), &e);
    mt_err_clear(&e);
    mt_store_close(st);
}

static void test_store_claim_order(void)
{
    mt_store *st = open_ok(":memory:");
    add(st, 1, "t", 30);
    add(st, 2, "t", 10);
    add(st, 3, "t", 20);
    add(st, 4, "t", 10);  // same run_at as 2: FIFO
    add(st, 5, "t", 99);  // not due yet
    add(st, 6, "t", 20);
    int got[64];
    CHECK_EQ(claim(st, 50, "e1", 2, got), 2);
    CHECK_EQ(got[0], 2);
    CHECK_EQ(got[1], 4);
    CHECK_EQ(claim(st, 50, "e1", 64, got), 3);
    CHECK_EQ(got[0], 3);
    CHECK_EQ(got[1], 6);
    CHECK_EQ(got[2], 1);
    CHECK_EQ(claim(st, 50, "e1", 64, got), 0);  // claimed ones are gone
    CHECK_EQ(claim(st, 99, "e1", 0, got), 0);   // max 0 claims nothing
    CHECK_EQ(status_of(st, 5), MT_PENDING);

    mt_task rows[1];
    size_t n = 0;
    mt_err e = {0};
    CHECK_OK(mt_store_claim(st, 99, "e2", rows, 1, &n, &e), &e);
    CHECK_EQ(n, 1);
    CHECK_EQ(rows[0].attempts, 1);
    CHECK_DBL_EQ(rows[0].started_at, 99);
    CHECK_STR_EQ(rows[0].owner, "e2");
    CHECK_MEM_EQ(rows[0].payload, msgpack_nil, 1);
    mt_task_clear(&rows[0]);
    mt_store_close(st);
}

// Two connections on one file (as two engines would be) claim in turns and
// never get the same task.
static void test_store_claim_two_connections(void)
{
    tmpdb d;
    tmp_make(&d);
    mt_store *a = open_ok(d.path);
    mt_store *b = open_ok(d.path);
    enum { N = 200 };
    for (int i = 0; i < N; i++) {
        add(i % 2 ? a : b, i, "t", i % 7);
    }
    int seen[N] = {0};
    size_t total = 0;
    for (int turn = 0;; turn++) {
        int got[64];
        size_t n = claim(turn % 2 ? a : b, 100, turn % 2 ? "a" : "b", 7, got);
        if (n == 0) {
            break;
        }
        for (size_t i = 0; i < n; i++) {
            CHECK(got[i] >= 0 && got[i] < N);
            CHECK_EQ(seen[got[i]]++, 0);
        }
        total += n;
    }
    CHECK_EQ(total, N);
    mt_store_close(a);
    mt_store_close(b);
    tmp_remove(&d);
}

typedef struct log_seen {
    int n;
    char text[8][32];
    int attempt[8];
    bool extras[8];
} log_seen;

static int collect_log(void *ud, const mt_log_row *r)
{
    log_seen *s = ud;
    CHECK(s->n < 8);
    snprintf(s->text[s->n], sizeof s->text[0], "%s:%s", r->level, r->message);
    s->attempt[s->n] = r->attempt;
    s->extras[s->n] = r->extras_json != NULL;
    s->n++;
    return 0;
}

static void test_store_finish(void)
{
    mt_store *st = open_ok(":memory:");
    for (int i = 1; i <= 4; i++) {
        add(st, i, "t", 0);
    }
    CHECK_EQ(claim(st, 10, "e", 4, NULL), 4);
    char ids[5][37];
    for (int i = 1; i <= 4; i++) {
        make_id(ids[i], i);
    }
    mt_log_entry logs[2] = {{1, 10.5, "info", "hello", "{\"k\":1}"},
                            {1, 11.0, "error", "boom", NULL}};
    mt_outcome outs[4] = {
        {.id = ids[1], .status = MT_SUCCESS, .finished_at = 12, .logs = logs, .nlogs = 2},
        {.id = ids[2], .status = MT_FAILED, .finished_at = 13, .error = "bad", .traceback = "tb"},
        {.id = ids[3], .status = MT_PENDING, .finished_at = 14, .run_at = 40, .error = "again"},
        {.id = ids[4], .status = MT_INTERRUPTED, .finished_at = 15, .error = "stop"},
    };
    mt_err e = {0};
    CHECK_OK(mt_store_finish(st, outs, 4, &e), &e);

    mt_task t;
    CHECK_OK(mt_store_get(st, ids[1], &t, &e), &e);
    CHECK_EQ(t.status, MT_SUCCESS);
    CHECK_DBL_EQ(t.finished_at, 12);
    CHECK(t.error == NULL && t.traceback == NULL);
    mt_task_clear(&t);
    CHECK_OK(mt_store_get(st, ids[2], &t, &e), &e);
    CHECK_EQ(t.status, MT_FAILED);
    CHECK_STR_EQ(t.error, "bad");
    CHECK_STR_EQ(t.traceback, "tb");
    mt_task_clear(&t);
    CHECK_OK(mt_store_get(st, ids[3], &t, &e), &e);
    CHECK_EQ(t.status, MT_PENDING);
    CHECK_DBL_EQ(t.run_at, 40);
    CHECK_DBL_EQ(t.finished_at, 0);
    CHECK_EQ(t.attempts, 1);
    CHECK_STR_EQ(t.error, "again");
    mt_task_clear(&t);
    CHECK_OK(mt_store_get(st, ids[4], &t, &e), &e);
    CHECK_EQ(t.status, MT_INTERRUPTED);
    CHECK_DBL_EQ(t.finished_at, 15);
    mt_task_clear(&t);

    // The retried task comes back at its new run_at with attempts counting on.
    int got[4];
    CHECK_EQ(claim(st, 39, "e", 4, got), 0);
    CHECK_EQ(claim(st, 40, "e", 4, got), 1);
    CHECK_EQ(got[0], 3);
    CHECK_OK(mt_store_get(st, ids[3], &t, &e), &e);
    CHECK_EQ(t.attempts, 2);
    mt_task_clear(&t);

    mt_log_entry more = {2, 50, "debug", "later", NULL};
    CHECK_OK(mt_store_add_logs(st, ids[1], &more, 1, &e), &e);
    log_seen seen = {0};
    CHECK_OK(mt_store_logs(st, ids[1], collect_log, &seen, &e), &e);
    CHECK_EQ(seen.n, 3);
    CHECK_STR_EQ(seen.text[0], "info:hello");
    CHECK_STR_EQ(seen.text[1], "error:boom");
    CHECK_STR_EQ(seen.text[2], "debug:later");
    CHECK(seen.extras[0] && !seen.extras[1]);
    CHECK_EQ(seen.attempt[2], 2);
    seen.n = 0;
    CHECK_OK(mt_store_logs(st, ids[2], collect_log, &seen, &e), &e);
    CHECK_EQ(seen.n, 0);
    CHECK_EQ(mt_store_logs(st, "nope", collect_log, &seen, &e), MT_ENOTFOUND);
    CHECK_EQ(mt_store_add_logs(st, "nope", &more, 1, &e), MT_ENOTFOUND);

    mt_outcome running = {.id = ids[1], .status = MT_RUNNING};
    CHECK_EQ(mt_store_finish(st, &running, 1, &e), MT_EINVAL);
    mt_err_clear(&e);
    mt_store_close(st);
}

// A task no longer RUNNING (recovered by another engine) keeps its status,
// but the logs of the late finish are kept; unknown ids are skipped.
static void test_store_finish_not_running(void)
{
    mt_store *st = open_ok(":memory:");
    add(st, 1, "t", 0);
    char id[37];
    make_id(id, 1);
    mt_log_entry log = {1, 1, "info", "late", NULL};
    mt_outcome outs[2] = {
        {.id = id, .status = MT_SUCCESS, .finished_at = 5, .logs = &log, .nlogs = 1},
        {.id = "unknown", .status = MT_FAILED, .logs = &log, .nlogs = 1},
    };
    mt_err e = {0};
    CHECK_OK(mt_store_finish(st, outs, 2, &e), &e);
    CHECK_EQ(status_of(st, 1), MT_PENDING);
    log_seen seen = {0};
    CHECK_OK(mt_store_logs(st, id, collect_log, &seen, &e), &e);
    CHECK_EQ(seen.n, 1);
    CHECK_STR_EQ(seen.text[0], "info:late");
    mt_store_close(st);
}

// Brings task n to status s through the public API. The task is due long
// before any other test task, so the claim picks exactly this one.
static void drive(mt_store *st, int n, int s)
{
    char id[37];
    make_id(id, n);
    double due = -1e6 + n;
    add(st, n, "t", due);
    if (s == MT_PENDING) {
        return;
    }
    int got[1];
    CHECK_EQ(claim(st, due, "drv", 1, got), 1);
    CHECK_EQ(got[0], n);
    if (s != MT_RUNNING) {
        mt_outcome o = {.id = id, .status = s, .finished_at = 7};
        mt_err e = {0};
        CHECK_OK(mt_store_finish(st, &o, 1, &e), &e);
    }
}

static void test_store_retry(void)
{
    mt_store *st = open_ok(":memory:");
    drive(st, 1, MT_FAILED);
    drive(st, 2, MT_INTERRUPTED);
    drive(st, 3, MT_SUCCESS);
    drive(st, 4, MT_RUNNING);
    drive(st, 5, MT_PENDING);
    char id[37];
    mt_err e = {0};
    for (int n = 1; n <= 2; n++) {
        make_id(id, n);
        CHECK_OK(mt_store_retry(st, id, 500, &e), &e);
        mt_task t;
        CHECK_OK(mt_store_get(st, id, &t, &e), &e);
        CHECK_EQ(t.status, MT_PENDING);
        CHECK_DBL_EQ(t.run_at, 500);
        CHECK_DBL_EQ(t.finished_at, 0);
        CHECK_EQ(t.retry_base, 1);
        CHECK_EQ(t.attempts, 1);
        mt_task_clear(&t);
    }
    static const char *const names[] = {"SUCCESS", "RUNNING", "PENDING"};
    for (int n = 3; n <= 5; n++) {
        make_id(id, n);
        CHECK_EQ(mt_store_retry(st, id, 500, &e), MT_ESTATE);
        char want[128];
        snprintf(want, sizeof want,
                 "task %s is %s; only FAILED or INTERRUPTED tasks can be retried", id,
                 names[n - 3]);
        CHECK_STR_EQ(mt_err_msg(&e), want);
    }
    CHECK_EQ(mt_store_retry(st, "ghost", 500, &e), MT_ENOTFOUND);
    CHECK_STR_EQ(mt_err_msg(&e), "no task with id ghost");
    mt_err_clear(&e);
    mt_store_close(st);
}

// Inserts task n with the requeue flag and claims it for owner.
static void running_for(mt_store *st, int n, const char *owner, bool requeue)
{
    char id[37];
    make_id(id, n);
    mt_task_new t = {
        .id = id, .task = "t", .token = "x", .run_at = n, .policy = mt_policy_default()};
    t.policy.requeue_on_interrupt = requeue;
    mt_err e = {0};
    CHECK_OK(mt_store_insert(st, &t, 1, &e), &e);
    int got[1];
    CHECK_EQ(claim(st, n, owner, 1, got), 1);
    CHECK_EQ(got[0], n);
}

static bool alive_only_a(void *ud, const char *owner)
{
    (*(int *)ud)++;
    return strcmp(owner, "engine-a") == 0;
}

static void test_store_recover(void)
{
    mt_store *st = open_ok(":memory:");
    running_for(st, 1, "engine-a", false);
    running_for(st, 2, "engine-b", false);
    running_for(st, 3, "engine-b", true);
    running_for(st, 4, "engine-b", false);
    running_for(st, 5, "engine-c", true);
    int calls = 0, ni = -1, nr = -1;
    mt_err e = {0};
    CHECK_OK(mt_store_recover(st, 77, alive_only_a, &calls, &ni, &nr, &e), &e);
    CHECK_EQ(calls, 3);
    CHECK_EQ(ni, 2);
    CHECK_EQ(nr, 2);
    CHECK_EQ(status_of(st, 1), MT_RUNNING);
    CHECK_EQ(status_of(st, 3), MT_PENDING);
    CHECK_EQ(status_of(st, 5), MT_PENDING);
    mt_task t;
    char id[37];
    make_id(id, 2);
    CHECK_OK(mt_store_get(st, id, &t, &e), &e);
    CHECK_EQ(t.status, MT_INTERRUPTED);
    CHECK_DBL_EQ(t.finished_at, 77);
    CHECK_STR_EQ(t.error, "interrupted: the engine running it stopped");
    mt_task_clear(&t);
    make_id(id, 3);
    CHECK_OK(mt_store_get(st, id, &t, &e), &e);
    CHECK_DBL_EQ(t.run_at, 77);
    CHECK_DBL_EQ(t.finished_at, 0);
    mt_task_clear(&t);
    calls = 0;
    CHECK_OK(mt_store_recover(st, 78, alive_only_a, &calls, NULL, NULL, &e), &e);
    CHECK_EQ(calls, 1);  // only engine-a still runs something
    mt_store_close(st);
}

static void test_store_interrupt_owner(void)
{
    mt_store *st = open_ok(":memory:");
    running_for(st, 1, "me", false);
    running_for(st, 2, "me", true);
    running_for(st, 3, "other", false);
    int ni = -1, nr = -1;
    mt_err e = {0};
    CHECK_OK(mt_store_interrupt_owner(st, "me", 9, "shutting down", &ni, &nr, &e), &e);
    CHECK_EQ(ni, 1);
    CHECK_EQ(nr, 1);
    char id[37];
    make_id(id, 1);
    mt_task t;
    CHECK_OK(mt_store_get(st, id, &t, &e), &e);
    CHECK_EQ(t.status, MT_INTERRUPTED);
    CHECK_STR_EQ(t.error, "shutting down");
    mt_task_clear(&t);
    CHECK_EQ(status_of(st, 2), MT_PENDING);
    CHECK_EQ(status_of(st, 3), MT_RUNNING);
    CHECK_OK(mt_store_interrupt_owner(st, "nobody", 9, NULL, &ni, &nr, &e), &e);
    CHECK_EQ(ni + nr, 0);
    mt_store_close(st);
}

static void test_store_counts_next_encrypted(void)
{
    mt_store *st = open_ok(":memory:");
    int64_t c[MT_NSTATUS];
    double at = -1;
    bool any = true;
    int64_t enc = -1;
    mt_err e = {0};
    CHECK_OK(mt_store_counts(st, c, &e), &e);
    for (int i = 0; i < MT_NSTATUS; i++) {
        CHECK_EQ(c[i], 0);
    }
    CHECK_OK(mt_store_next_run_at(st, &at, &any, &e), &e);
    CHECK(!any);
    CHECK_OK(mt_store_count_encrypted(st, &enc, &e), &e);
    CHECK_EQ(enc, 0);

    drive(st, 1, MT_SUCCESS);  // payload tasks
    drive(st, 2, MT_FAILED);
    drive(st, 3, MT_RUNNING);
    add(st, 4, "t", 30);
    add(st, 5, "t", 20);
    running_for(st, 6, "x", false);  // token tasks
    mt_task_new tok[2] = {{.id = "tok-soon", .task = "t", .token = "x", .run_at = 25},
                          {.id = "tok-later", .task = "t", .token = "x", .run_at = 1e12}};
    CHECK_OK(mt_store_insert(st, tok, 2, &e), &e);
    drive(st, 7, MT_PENDING);  // the earliest due
    CHECK_OK(mt_store_counts(st, c, &e), &e);
    CHECK_EQ(c[MT_PENDING], 5);
    CHECK_EQ(c[MT_RUNNING], 2);
    CHECK_EQ(c[MT_SUCCESS], 1);
    CHECK_EQ(c[MT_FAILED], 1);
    CHECK_EQ(c[MT_INTERRUPTED], 0);
    CHECK_OK(mt_store_next_run_at(st, &at, &any, &e), &e);
    CHECK(any);
    CHECK_DBL_EQ(at, -1e6 + 7);
    CHECK_OK(mt_store_count_encrypted(st, &enc, &e), &e);
    CHECK_EQ(enc, 3);
    mt_store_close(st);
}

typedef struct rot {
    int calls;
    int fail_at;  // 1-based call that fails, 0 = never
} rot;

static int rotate(void *ud, const mt_task *row, char **new_token)
{
    rot *r = ud;
    r->calls++;
    CHECK(row->status == MT_PENDING || row->status == MT_FAILED || row->status == MT_INTERRUPTED);
    CHECK((row->payload != NULL) != (row->token != NULL));
    if (r->calls == r->fail_at) {
        return MT_ECRYPTO;
    }
    size_t n = strlen(row->id) + 8;
    *new_token = malloc(n);
    CHECK(*new_token != NULL);
    snprintf(*new_token, n, "new:%s", row->id);
    return MT_OK;
}

static void test_store_rewrite_payloads(void)
{
    tmpdb d;
    tmp_make(&d);
    mt_store *st = open_ok(d.path);
    drive(st, 1, MT_SUCCESS);
    drive(st, 2, MT_RUNNING);
    drive(st, 3, MT_FAILED);
    drive(st, 4, MT_INTERRUPTED);
    running_for(st, 5, "x", false);  // RUNNING token task
    enum { MANY = 600 };             // more than one internal batch
    for (int i = 100; i < 100 + MANY; i++) {
        add(st, i, "t", 1e12);
    }
    int eligible = 2 + MANY;

    rot r = {.fail_at = 450};
    int64_t count = -1;
    mt_err e = {0};
    CHECK_EQ(mt_store_rewrite_payloads(st, rotate, &r, &count, &e), MT_ECRYPTO);
    CHECK_EQ(count, 0);
    CHECK_EQ(r.calls, 450);
    mt_task t;
    char id[37];
    make_id(id, 100);
    CHECK_OK(mt_store_get(st, id, &t, &e), &e);
    CHECK(t.token == NULL && t.payload != NULL);  // rolled back
    mt_task_clear(&t);

    r = (rot){0};
    CHECK_OK(mt_store_rewrite_payloads(st, rotate, &r, &count, &e), &e);
    CHECK_EQ(count, eligible);
    CHECK_EQ(r.calls, eligible);
    static const int rewritten[] = {3, 4, 100, 699};
    for (size_t i = 0; i < sizeof rewritten / sizeof rewritten[0]; i++) {
        make_id(id, rewritten[i]);
        CHECK_OK(mt_store_get(st, id, &t, &e), &e);
        char want[48];
        snprintf(want, sizeof want, "new:%s", id);
        CHECK_STR_EQ(t.token, want);
        CHECK(t.payload == NULL);
        mt_task_clear(&t);
    }
    static const int kept[] = {1, 2};
    for (size_t i = 0; i < 2; i++) {
        make_id(id, kept[i]);
        CHECK_OK(mt_store_get(st, id, &t, &e), &e);
        CHECK(t.token == NULL && t.payload != NULL);
        mt_task_clear(&t);
    }
    make_id(id, 5);
    CHECK_OK(mt_store_get(st, id, &t, &e), &e);
    CHECK_STR_EQ(t.token, "x");
    mt_task_clear(&t);
    int64_t enc = 0;
    CHECK_OK(mt_store_count_encrypted(st, &enc, &e), &e);
    CHECK_EQ(enc, eligible + 1);

    // The checkpoint emptied the write-ahead log (checked while the store is
    // open: closing the last connection removes the file anyway).
    char wal[128];
    snprintf(wal, sizeof wal, "%s-wal", d.path);
    FILE *f = fopen(wal, "rb");
    CHECK(f != NULL);
    CHECK(fseek(f, 0, SEEK_END) == 0);
    CHECK_EQ(ftell(f), 0);
    fclose(f);
    mt_err_clear(&e);
    mt_store_close(st);
    tmp_remove(&d);
}

typedef struct listed {
    int n;
    int nums[16];
    int stop_after;
} listed;

static int collect_task(void *ud, const mt_task *row)
{
    listed *l = ud;
    CHECK(l->n < 16);
    l->nums[l->n++] = atoi(row->id + 24);
    return l->n == l->stop_after ? 42 : 0;
}

static void test_store_list(void)
{
    mt_store *st = open_ok(":memory:");
    add(st, 1, "mail", 50);
    add(st, 2, "report", 10);
    add(st, 3, "mail", 5);
    add(st, 4, "mail", 1);
    CHECK_EQ(claim(st, 1, "e", 1, NULL), 1);  // 4 is RUNNING
    mt_err e = {0};
    listed l = {0};
    CHECK_OK(mt_store_list(st, NULL, collect_task, &l, &e), &e);
    CHECK_EQ(l.n, 4);
    for (int i = 0; i < 4; i++) {
        CHECK_EQ(l.nums[i], i + 1);  // creation order, not run_at
    }
    l = (listed){0};
    mt_filter f = {.status = MT_PENDING, .task = "mail"};
    CHECK_OK(mt_store_list(st, &f, collect_task, &l, &e), &e);
    CHECK_EQ(l.n, 2);
    CHECK_EQ(l.nums[0], 1);
    CHECK_EQ(l.nums[1], 3);
    l = (listed){0};
    f = (mt_filter){.status = -1, .task = "mail", .limit = 2};
    CHECK_OK(mt_store_list(st, &f, collect_task, &l, &e), &e);
    CHECK_EQ(l.n, 2);
    l = (listed){0};
    f = (mt_filter){.status = MT_RUNNING};
    CHECK_OK(mt_store_list(st, &f, collect_task, &l, &e), &e);
    CHECK_EQ(l.n, 1);
    CHECK_EQ(l.nums[0], 4);
    l = (listed){.stop_after = 2};
    CHECK_EQ(mt_store_list(st, NULL, collect_task, &l, &e), 42);
    CHECK_EQ(l.n, 2);
    f = (mt_filter){.status = 9};
    CHECK_EQ(mt_store_list(st, &f, collect_task, &l, &e), MT_EINVAL);
    mt_err_clear(&e);
    mt_store_close(st);
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK_EQ(fwrite(data, 1, n, f), n);
    CHECK(fclose(f) == 0);
}

static void raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
}

static void expect_foreign(const char *path, const char *needle)
{
    static char sentinel;
    mt_store *st = (mt_store *)&sentinel;  // must come back NULL
    mt_err e = {0};
    CHECK_EQ(mt_store_open(&st, path, NULL, &e), MT_ECORRUPT);
    CHECK(st == NULL);
    CHECK(strstr(mt_err_msg(&e), path) != NULL);
    CHECK(strstr(mt_err_msg(&e), "is not a moontask database") != NULL);
    if (strstr(mt_err_msg(&e), needle) == NULL) {
        CHECK_STR_EQ(mt_err_msg(&e), needle);
    }
    mt_err_clear(&e);
}

static void test_store_foreign_file(void)
{
    tmpdb d;
    tmp_make(&d);
    uint8_t junk[4096];
    for (size_t i = 0; i < sizeof junk; i++) {
        junk[i] = (uint8_t)(i * 131 + 7);
    }
    write_file(d.path, junk, sizeof junk);
    expect_foreign(d.path, "not a SQLite file");
    write_file(d.path, "hello, world\n", 13);
    expect_foreign(d.path, "not a SQLite file");
    unlink(d.path);

    raw_exec(d.path, "CREATE TABLE people (name TEXT)");
    expect_foreign(d.path, "(schema version 0); it holds other data");
    unlink(d.path);
    raw_exec(d.path, "CREATE TABLE tasks (x); CREATE TABLE task_logs (y); PRAGMA user_version = 7");
    expect_foreign(d.path, "(schema version 7); it was written by a newer moontask");
    tmp_remove(&d);
}

static void test_store_readonly(void)
{
    tmpdb d;
    tmp_make(&d);
    mt_store *st = open_ok(d.path);
    add(st, 1, "t", 0);
    mt_store_close(st);

    mt_store_opts o = {.readonly = true};
    mt_err e = {0};
    CHECK_OK(mt_store_open(&st, d.path, &o, &e), &e);
    CHECK_EQ(status_of(st, 1), MT_PENDING);
    mt_task_new t = {.id = "new", .task = "t", .token = "x"};
    CHECK_EQ(mt_store_insert(st, &t, 1, &e), MT_EREADONLY);
    CHECK(strstr(mt_err_msg(&e), d.path) != NULL);
    mt_task row;
    size_t n = 9;
    CHECK_EQ(mt_store_claim(st, 10, "e", &row, 1, &n, &e), MT_EREADONLY);
    CHECK_EQ(n, 0);
    mt_store_close(st);

    char missing[128];
    snprintf(missing, sizeof missing, "%s/missing.db", d.dir);
    CHECK_EQ(mt_store_open(&st, missing, &o, &e), MT_EIO);
    CHECK(strstr(mt_err_msg(&e), missing) != NULL);
    snprintf(missing, sizeof missing, "%s/no/such/dir.db", d.dir);
    CHECK_EQ(mt_store_open(&st, missing, NULL, &e), MT_EIO);
    mt_err_clear(&e);
    tmp_remove(&d);
}

static void test_store_busy(void)
{
    tmpdb d;
    tmp_make(&d);
    mt_store_opts o = {.busy_timeout_ms = 50};
    mt_store *st = NULL;
    mt_err e = {0};
    CHECK_OK(mt_store_open(&st, d.path, &o, &e), &e);
    add(st, 1, "t", 0);

    sqlite3 *other = NULL;  // plays another process holding the write lock
    CHECK(sqlite3_open(d.path, &other) == SQLITE_OK);
    CHECK(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK);
    mt_task_new t = {.id = "blocked", .task = "t", .token = "x"};
    CHECK_EQ(mt_store_insert(st, &t, 1, &e), MT_EBUSY);
    CHECK(strstr(mt_err_msg(&e), "is locked by another process (waited 50 ms)") != NULL);
    mt_task row;
    size_t n = 0;
    CHECK_EQ(mt_store_claim(st, 10, "e", &row, 1, &n, &e), MT_EBUSY);
    CHECK_EQ(status_of(st, 1), MT_PENDING);  // reading still works under WAL
    CHECK(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(other);

    CHECK_OK(mt_store_insert(st, &t, 1, &e), &e);  // the store recovered
    mt_err_clear(&e);
    mt_store_close(st);
    tmp_remove(&d);
}

static void test_store_status_names(void)
{
    CHECK_STR_EQ(mt_status_name(MT_PENDING), "PENDING");
    CHECK_STR_EQ(mt_status_name(MT_INTERRUPTED), "INTERRUPTED");
    CHECK_STR_EQ(mt_status_name(5), "UNKNOWN");
    CHECK_STR_EQ(mt_status_name(-1), "UNKNOWN");
    for (int i = 0; i < MT_NSTATUS; i++) {
        CHECK_EQ(mt_status_parse(mt_status_name(i)), i);
    }
    CHECK_EQ(mt_status_parse("failed"), MT_FAILED);
    CHECK_EQ(mt_status_parse("Running"), MT_RUNNING);
    CHECK_EQ(mt_status_parse("RUN"), -1);
    CHECK_EQ(mt_status_parse("PENDINGX"), -1);
    CHECK_EQ(mt_status_parse(""), -1);
    CHECK_EQ(mt_status_parse(NULL), -1);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;  // the vectors folder is not needed here
    RUN(test_store_open_create_reopen);
    RUN(test_store_memory);
    RUN(test_store_roundtrip);
    RUN(test_store_payload_xor_token);
    RUN(test_store_claim_order);
    RUN(test_store_claim_two_connections);
    RUN(test_store_finish);
    RUN(test_store_finish_not_running);
    RUN(test_store_retry);
    RUN(test_store_recover);
    RUN(test_store_interrupt_owner);
    RUN(test_store_counts_next_encrypted);
    RUN(test_store_rewrite_payloads);
    RUN(test_store_list);
    RUN(test_store_foreign_file);
    RUN(test_store_readonly);
    RUN(test_store_busy);
    RUN(test_store_status_names);
    return 0;
}
