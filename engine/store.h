/*
 * store: the durable queue. Owns the SQLite schema, its migrations, every
 * SQL statement, and task/log persistence. Knows nothing of Lua or crypto:
 * payloads are opaque bytes (MessagePack) or opaque text (a Fernet token).
 * Only this unit includes <sqlite3.h>.
 *
 * One mt_store is one connection: use it from one thread at a time. Several
 * stores (threads or processes) may share one database file; claims are
 * atomic across all of them.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_STORE_H
#define MT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backoff.h"
#include "err.h"

typedef struct mt_store mt_store;

// Stored as these integers; names via mt_status_name.
enum mt_status {
    MT_PENDING = 0,
    MT_RUNNING = 1,
    MT_SUCCESS = 2,
    MT_FAILED = 3,
    MT_INTERRUPTED = 4,
    MT_NSTATUS = 5
};

// "PENDING", ... ; "UNKNOWN" for anything else.
const char *mt_status_name(int status);
// Case-insensitive name -> status, or -1.
int mt_status_parse(const char *name);

typedef struct mt_store_opts {
    bool full_durability;  // synchronous=FULL (survives power loss); else NORMAL
    int busy_timeout_ms;   // 0 = default 5000
    bool readonly;         // open read-only (inspection commands)
} mt_store_opts;

// Opens (creating if needed) the database at path (":memory:" allowed), in
// WAL mode, and creates or migrates the schema. *out is NULL on failure.
// Errors say which file and what to do (MT_EIO, MT_EBUSY, MT_EREADONLY,
// MT_ECORRUPT for a file that is not a moontask database).
int mt_store_open(mt_store **out, const char *path, const mt_store_opts *opts, mt_err *err);
void mt_store_close(mt_store *st);  // NULL is a no-op

// MT_OK when this connection can write (takes and drops the write lock);
// MT_EREADONLY naming the file, or MT_EBUSY, otherwise.
int mt_store_check_writable(mt_store *st, mt_err *err);

// A task to insert. All pointers borrowed for the call.
typedef struct mt_task_new {
    const char *id;  // 36-char UUID text
    const char *task;
    const uint8_t *payload;  // MessagePack, or NULL when token is set
    size_t payload_len;
    const char *token;  // Fernet token, or NULL when payload is set
    double created_at;
    double run_at;
    mt_policy policy;
} mt_task_new;

// A stored task. Caller-allocated; strings and payload owned by the struct,
// released by mt_task_clear (safe on a zeroed struct, safe twice).
typedef struct mt_task {
    int64_t seq;  // row number (insertion order)
    char id[37];
    char *task;
    int status;
    int attempts;    // attempts started in total
    int retry_base;  // value of attempts at the last manual retry
    uint8_t *payload;
    size_t payload_len;
    char *token;
    double created_at;
    double run_at;
    double started_at;   // 0 = never started
    double finished_at;  // 0 = not finished
    char *error;
    char *traceback;
    char *owner;  // engine that claimed it, NULL if never claimed
    mt_policy policy;
} mt_task;

void mt_task_clear(mt_task *t);

// Inserts n tasks in one transaction; returns only after it committed.
int mt_store_insert(mt_store *st, const mt_task_new *tasks, size_t n, mt_err *err);

// Atomically claims up to max PENDING tasks with run_at <= now, oldest
// run_at first (FIFO among equals): sets RUNNING, attempts += 1,
// started_at = now, owner. Fills rows[0..*n) (caller clears each).
int mt_store_claim(mt_store *st, double now, const char *owner, mt_task *rows, size_t max,
                   size_t *n, mt_err *err);

// One captured log line. Borrowed.
typedef struct mt_log_entry {
    int attempt;
    double time;
    const char *level;  // "debug", "info", "warning", "error"
    const char *message;
    const char *extras_json;  // JSON object text, or NULL
} mt_log_entry;

// What happened to one claimed task. Borrowed.
typedef struct mt_outcome {
    const char *id;
    int64_t seq;  // the task's seq when known (faster than by id), else 0
    int status;   // MT_SUCCESS, MT_FAILED, MT_PENDING (retry) or MT_INTERRUPTED
    double finished_at;
    double run_at;          // the retry time when status is MT_PENDING
    const char *error;      // NULL on success
    const char *traceback;  // NULL on success
    const mt_log_entry *logs;
    size_t nlogs;
    bool unclaim;  // claimed and counted as started, but never ran: back to PENDING,
                   // attempts - 1 (status ignored)
    bool release;  // claimed ahead and never started: back to PENDING (by seq)
} mt_outcome;

// Records n outcomes and their logs in one transaction. Only a task still
// RUNNING changes status (a task another engine already recovered keeps
// its state); logs are always kept.
int mt_store_finish(mt_store *st, const mt_outcome *outs, size_t n, mt_err *err);

// A task that a claim-ahead round handed to a worker and that started.
typedef struct mt_start {
    int64_t seq;
    double at;
} mt_start;

// One group commit of `moontask run`'s dispatcher, in one transaction: record
// task starts, then outcomes, then claim up to max due tasks. With
// claim_ahead the claimed rows are RUNNING but not started: attempts and
// started_at change only when their start is recorded, and recovery puts
// unstarted rows of a dead engine back to PENDING untouched. On failure
// nothing is recorded or claimed. r->claimed receives the rows claimed.
typedef struct mt_round {
    const mt_start *starts;
    size_t nstarts;
    const mt_outcome *outs;
    size_t nouts;
    double now;
    const char *owner;
    mt_task *rows;
    size_t max;
    bool claim_ahead;
    size_t claimed;
} mt_round;
int mt_store_round(mt_store *st, mt_round *r, mt_err *err);

// Appends log entries of one task outside a completion.
int mt_store_add_logs(mt_store *st, const char *id, const mt_log_entry *logs, size_t n,
                      mt_err *err);

// MT_ENOTFOUND (with the id in the message) when there is no such task.
int mt_store_get(mt_store *st, const char *id, mt_task *out, mt_err *err);

typedef struct mt_filter {
    int status;        // -1: any
    const char *task;  // NULL: any
    size_t limit;      // 0: no limit
} mt_filter;

// Calls cb for each task matching the filter, oldest created first. The row
// is borrowed for the call; a non-zero return from cb stops the walk and is
// returned.
typedef int (*mt_task_cb)(void *ud, const mt_task *row);
int mt_store_list(mt_store *st, const mt_filter *f, mt_task_cb cb, void *ud, mt_err *err);

// A stored log line, borrowed for the callback.
typedef struct mt_log_row {
    int attempt;
    double time;
    const char *level;
    const char *message;
    const char *extras_json;  // NULL when none
} mt_log_row;
typedef int (*mt_log_cb)(void *ud, const mt_log_row *row);
// Logs of one task in the order written. MT_ENOTFOUND for an unknown task.
int mt_store_logs(mt_store *st, const char *id, mt_log_cb cb, void *ud, mt_err *err);

// FAILED or INTERRUPTED -> PENDING with run_at = now, retry_base = attempts
// (a fresh retry budget). MT_ENOTFOUND, or MT_ESTATE naming the status.
int mt_store_retry(mt_store *st, const char *id, double now, mt_err *err);

// Liveness of an engine that claimed tasks (owner string as given to claim).
typedef bool (*mt_alive_cb)(void *ud, const char *owner);

// Tasks left RUNNING by owners that are not alive become INTERRUPTED (error
// "interrupted: the engine running it stopped"), or PENDING (run_at = now)
// when their policy says requeue_on_interrupt; tasks they claimed ahead but
// never started go back to PENDING untouched (counted as requeued). Counts
// are optional.
int mt_store_recover(mt_store *st, double now, mt_alive_cb alive, void *ud, int *interrupted,
                     int *requeued, mt_err *err);

// The same for the RUNNING tasks of one owner (graceful shutdown), with the
// given error text.
int mt_store_interrupt_owner(mt_store *st, const char *owner, double now, const char *why,
                             int *interrupted, int *requeued, mt_err *err);

// Number of tasks in each status.
int mt_store_counts(mt_store *st, int64_t counts[MT_NSTATUS], mt_err *err);

// Earliest run_at among PENDING tasks; *any = false when there are none.
int mt_store_next_run_at(mt_store *st, double *at, bool *any, mt_err *err);

// PENDING tasks due at `now` or waiting for a retry (what `run --drain`
// waits for; a first run scheduled for later does not count).
int mt_store_count_waiting(mt_store *st, double now, int64_t *n, mt_err *err);

// Tasks that may still run (not SUCCESS) whose arguments are encrypted.
int mt_store_count_encrypted(mt_store *st, int64_t *n, mt_err *err);

// Key rotation: in one transaction, for every PENDING, FAILED and
// INTERRUPTED task (RUNNING ones are skipped), calls cb with the row; cb
// sets *new_token to a malloc'd token (the store frees it) and returns MT_OK,
// or returns an error, which rolls everything back and is returned. The row
// then holds the token and no payload. Afterwards old page images are wiped
// (secure_delete, WAL checkpoint TRUNCATE). *count = rows rewritten.
typedef int (*mt_rewrite_cb)(void *ud, const mt_task *row, char **new_token);
int mt_store_rewrite_payloads(mt_store *st, mt_rewrite_cb cb, void *ud, int64_t *count,
                              mt_err *err);

#endif
