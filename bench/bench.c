/*
 * moontask_bench: moontask's benchmark. Runs every scenario in its own
 * forked process (so each has its own peak RSS and nothing leaks from one
 * into the next), on databases in one temporary folder (one disk for all),
 * and prints one table row per scenario as it finishes, each with its
 * durability setting; then the encrypted / plain ratios and the targets of
 * issue 5. The raw SQLite baseline runs first so that every moontask row
 * can be shown as a fraction of it.
 *
 * Usage: moontask_bench [-w WORKERS] [-p PRODUCERS] [N] [SCENARIO ...]
 * Not a test: no CTest target runs it (timings never go in tests).
 */
// SPDX-License-Identifier: MIT
#define _XOPEN_SOURCE 700  // nftw
#define _DEFAULT_SOURCE    // mkdtemp
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lua.h>

enum kind { K_SQLITE, K_LUA };

typedef struct scenario {
    const char *key;    // name on the command line
    const char *title;  // first column of the table
    enum kind kind;
    const char *fn;  // K_LUA: function of bench.lua
    bench_txn txn;   // K_SQLITE: transaction grouping
    bool encrypt, full;
    long cap;  // at most this many tasks (0 = N); FULL commits fsync each
} scenario;

static const scenario scenarios[] = {
    {"sqlite-one", "5a SQLite, one transaction", K_SQLITE, NULL, BENCH_TXN_ONE, false, false, 0},
    {"sqlite-row", "5b SQLite, txn per row", K_SQLITE, NULL, BENCH_TXN_PER_ROW, false, false, 0},
    {"sqlite-stmt", "5c SQLite, txn per statement", K_SQLITE, NULL, BENCH_TXN_PER_STMT, false,
     false, 0},
    {"sqlite-row-full", "5b SQLite, txn per row", K_SQLITE, NULL, BENCH_TXN_PER_ROW, false, true,
     5000},
    {"burn", "1 burn-down", K_LUA, "burn_down", 0, false, false, 0},
    {"burn-enc", "1e burn-down, encrypted", K_LUA, "burn_down", 0, true, false, 0},
    {"concurrent", "2 concurrent add+run", K_LUA, "concurrent", 0, false, false, 0},
    {"concurrent-enc", "3 concurrent, encrypted", K_LUA, "concurrent", 0, true, false, 0},
    {"concurrent-batch", "2b concurrent, add_many x100", K_LUA, "concurrent_batch", 0, false, false,
     0},
    {"retries", "4 retries (each fails once)", K_LUA, "retries", 0, false, false, 0},
    {"idle", "6 idle engine, N queued", K_LUA, "idle", 0, false, false, 0},
    {"concurrent-full", "2f concurrent", K_LUA, "concurrent", 0, false, true, 5000},
};
enum { NSCEN = sizeof scenarios / sizeof scenarios[0] };

static const char *const notes =
    "Columns: add/s = tasks / time to add them all (each add its own committed transaction);\n"
    "run/s = tasks / time for a fresh engine to drain them; total/s = tasks / (first add to\n"
    "last completion); add = latency of one committed add; done = add to completion; RSS =\n"
    "peak RSS of the engine process (idle: now/peak); vs SQLite = total/s as a share of\n"
    "rows/s of 5a / 5b at the same synchronous setting. All databases in WAL mode.\n";

static bench_result results[NSCEN];
static bool ran[NSCEN];

void bench_result_init(bench_result *r)
{
    memset(r, 0, sizeof *r);
    r->tasks = r->enqueue_s = r->run_s = r->total_s = r->attempts = NAN;
    r->add_p50_us = r->add_p99_us = r->done_p50_ms = r->done_p99_ms = NAN;
    r->rss_kib = r->idle_rss_kib = NAN;
}

static int usage(FILE *out, int code)
{
    fputs("usage: moontask_bench [-w WORKERS] [-p PRODUCERS] [N] [SCENARIO ...]\n"
          "  N: tasks per scenario (default 100000); scenarios (default all; a moontask\n"
          "  scenario brings the SQLite baselines it is compared with):\n",
          out);
    for (int i = 0; i < NSCEN; i++) {
        const scenario *s = &scenarios[i];
        fprintf(out, "    %-16s %s%s\n", s->key, s->title,
                s->full ? " (synchronous=FULL; N capped at 5000)" : "");
    }
    return code;
}

static long tasks_for(const scenario *s, const bench_opts *o)
{
    return s->cap > 0 && s->cap < o->n ? s->cap : o->n;
}

// In the child: runs the scenario, writes the result to fd, exits.
static void child(const scenario *s, const bench_opts *o, int fd)
{
    // The engine prints its summary line on stdout; the table is ours.
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0) {
        dup2(null, STDOUT_FILENO);
        close(null);
    }
    bench_result r;
    bench_result_init(&r);
    char db[4096];
    bench_opts so = *o;
    so.n = tasks_for(s, o);
    if (snprintf(db, sizeof db, "%s/%s.db", o->dir, s->key) >= (int)sizeof db) {
        snprintf(r.error, sizeof r.error, "database path too long");
    } else if (s->kind == K_SQLITE) {
        bench_run_sqlite(db, so.n, s->txn, s->full, &r);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        r.rss_kib = (double)ru.ru_maxrss;
    } else {
        bench_run_lua(s->fn, &so, db, s->encrypt, s->full, &r);
    }
    const char *p = (const char *)&r;
    size_t left = sizeof r;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            _exit(1);
        }
        p += w;
        left -= (size_t)w;
    }
    _exit(0);
}

// Runs scenario s in a child process and returns its result.
static bench_result run_one(const scenario *s, const bench_opts *o)
{
    bench_result r;
    bench_result_init(&r);
    int fds[2];
    if (pipe(fds) != 0) {
        snprintf(r.error, sizeof r.error, "pipe: %s", strerror(errno));
        return r;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        child(s, o, fds[1]);
    }
    close(fds[1]);
    size_t got = 0;
    while (pid > 0 && got < sizeof r) {
        ssize_t n = read(fds[0], (char *)&r + got, sizeof r - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        got += (size_t)n;
    }
    close(fds[0]);
    int status = 0;
    while (pid > 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (pid < 0 || got != sizeof r) {
        bench_result_init(&r);
        snprintf(r.error, sizeof r.error, "scenario process %s",
                 pid < 0               ? "could not be started"
                 : WIFSIGNALED(status) ? "was killed by a signal"
                                       : "ended without a result");
    }
    return r;
}

// Formats x with the given decimals and suffix into buf, or "-" for NAN.
static const char *fmt(char *buf, size_t len, int decimals, double x, const char *suffix)
{
    if (isnan(x) || isinf(x)) {
        snprintf(buf, len, "-");
    } else {
        snprintf(buf, len, "%.*f%s", decimals, x, suffix);
    }
    return buf;
}

// "a / b", or "-" when a is NAN.
static const char *pair(char *buf, size_t len, int decimals, double a, double b, const char *suffix)
{
    char x[40], y[40];
    if (isnan(a)) {
        snprintf(buf, len, "-");
    } else {
        snprintf(buf, len, "%s / %s", fmt(x, sizeof x, decimals, a, suffix),
                 fmt(y, sizeof y, decimals, b, suffix));
    }
    return buf;
}

static int find(const char *key)
{
    for (int i = 0; i < NSCEN; i++) {
        if (strcmp(scenarios[i].key, key) == 0) {
            return i;
        }
    }
    return -1;
}

// Tasks (or rows) per second over the scenario's end-to-end time.
static double total_rate(int i)
{
    if (i < 0 || !ran[i] || !results[i].ok) {
        return NAN;
    }
    return results[i].tasks / results[i].total_s;
}

static void print_header(void)
{
    printf("%-30s %-6s %7s %8s %8s %8s %15s %15s %13s %13s\n", "scenario", "sync", "tasks", "add/s",
           "run/s", "total/s", "add p50/p99 us", "done p50/p99 ms", "RSS MiB", "vs SQLite a/b");
}

static void print_row(int i)
{
    const scenario *s = &scenarios[i];
    const bench_result *r = &results[i];
    const char *sync = s->full ? "FULL" : "NORMAL";
    if (!r->ok) {
        printf("%-30s %-6s FAILED: %s\n", s->title, sync, r->error);
        fflush(stdout);
        return;
    }
    char a[40], b[40], c[40], e[96], f[96], g[96], h[96];
    double rate = r->tasks / r->total_s;
    double a_rate = total_rate(find("sqlite-one"));
    double b_rate = total_rate(find(s->full ? "sqlite-row-full" : "sqlite-row"));
    double rss = isnan(r->idle_rss_kib) ? r->rss_kib / 1024 : r->idle_rss_kib / 1024;
    double rss2 = isnan(r->idle_rss_kib) ? NAN : r->rss_kib / 1024;
    if (isnan(rss2)) {
        fmt(g, sizeof g, 1, rss, "");
    } else {
        pair(g, sizeof g, 1, rss, rss2, "");
    }
    if (s->kind == K_SQLITE) {
        snprintf(h, sizeof h, "-");
    } else {
        pair(h, sizeof h, 0, 100 * rate / a_rate, 100 * rate / b_rate, "%");
    }
    printf("%-30s %-6s %7.0f %8s %8s %8s %15s %15s %13s %13s%s%s\n", s->title, sync, r->tasks,
           fmt(a, sizeof a, 0, r->tasks / r->enqueue_s, ""),
           fmt(b, sizeof b, 0, r->tasks / r->run_s, ""), fmt(c, sizeof c, 0, rate, ""),
           pair(e, sizeof e, 0, r->add_p50_us, r->add_p99_us, ""),
           pair(f, sizeof f, 1, r->done_p50_ms, r->done_p99_ms, ""), g, h, r->note[0] ? "  " : "",
           r->note);
    fflush(stdout);
}

static void print_ratio(const char *label, const char *enc, const char *plain, bool *first)
{
    double r = total_rate(find(enc)) / total_rate(find(plain));
    if (!isnan(r)) {
        printf("%s%s %.2f", *first ? "" : ",", label, r);
        *first = false;
    }
}

static void check(const char *what, double value, double limit, bool at_most, const char *unit)
{
    if (isnan(value)) {
        return;
    }
    bool met = at_most ? value <= limit : value >= limit;
    printf("  %-40s %10.1f %-8s %s %g: %s\n", what, value, unit, at_most ? "<=" : ">=", limit,
           met ? "met" : "MISSED");
}

static double field(const char *key, size_t off)
{
    int i = find(key);
    if (i < 0 || !ran[i] || !results[i].ok) {
        return NAN;
    }
    return *(const double *)((const char *)&results[i] + off);
}

static void print_summary(const bench_opts *o)
{
    bool first = true;
    printf("\nencrypted / plain total/s, same run:");
    print_ratio(" burn-down", "burn-enc", "burn", &first);
    print_ratio(" concurrent", "concurrent-enc", "concurrent", &first);
    printf("%s (target >= 0.85)\n", first ? " not measured" : "");
    printf("targets of issue 5 (set for 1000000 queued and 200000 concurrent; N here = %ld):\n",
           o->n);
    double burn =
        field("burn", offsetof(bench_result, tasks)) / field("burn", offsetof(bench_result, run_s));
    check("burn-down, run/s", burn, 100000, false, "tasks/s");
    check("concurrent add+run, total/s", total_rate(find("concurrent")), 50000, false, "tasks/s");
    check("encrypted / plain, concurrent (%)",
          100 * total_rate(find("concurrent-enc")) / total_rate(find("concurrent")), 85, false,
          "%");
    check("committed add p99, engine idle (burn-down)",
          field("burn", offsetof(bench_result, add_p99_us)), 200, true, "us");
    check("committed add p99, engine running",
          field("concurrent", offsetof(bench_result, add_p99_us)), 200, true, "us");
    check("peak RSS, engine with N queued (idle)",
          field("idle", offsetof(bench_result, rss_kib)) / 1024, 64, true, "MiB");
    check("peak RSS, engine draining N (burn-down)",
          field("burn", offsetof(bench_result, rss_kib)) / 1024, 64, true, "MiB");
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static bool parse_count(const char *s, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
        return false;
    }
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    bench_opts o = {.n = 100000, .workers = 2, .producers = 2};
    bool want[NSCEN] = {false}, any = false;
    for (int i = 1; i < argc; i++) {
        long v = 0;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            return usage(stdout, 0);
        }
        if ((strcmp(argv[i], "-w") == 0 || strcmp(argv[i], "-p") == 0) && i + 1 < argc) {
            if (!parse_count(argv[i + 1], 1, 64, &v)) {
                return usage(stderr, 2);
            }
            *(argv[i][1] == 'w' ? &o.workers : &o.producers) = (int)v;
            i++;
        } else if (parse_count(argv[i], 1, 100000000, &v)) {
            o.n = v;
        } else if (find(argv[i]) >= 0) {
            want[find(argv[i])] = any = true;
        } else {
            return usage(stderr, 2);
        }
    }
    // Picked moontask scenarios bring the SQLite baselines they are compared with.
    for (int i = 0; any && i < NSCEN; i++) {
        if (want[i] && scenarios[i].kind == K_LUA) {
            want[find("sqlite-one")] = true;
            want[find(scenarios[i].full ? "sqlite-row-full" : "sqlite-row")] = true;
        }
    }
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/moontask-bench.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        fprintf(stderr, "moontask_bench: cannot make a folder in %s: %s\n",
                tmp && *tmp ? tmp : "/tmp", strerror(errno));
        return 1;
    }
    o.dir = dir;
    printf("moontask_bench: N = %ld tasks per scenario, %d worker(s), %d producer(s), batch 16;\n"
           "%ld CPU(s), SQLite %s, %s; databases in %s\n\n",
           o.n, o.workers, o.producers, sysconf(_SC_NPROCESSORS_ONLN), bench_sqlite_version(),
           LUA_RELEASE, dir);
    fputs(notes, stdout);
    putchar('\n');
    print_header();
    int failed = 0;
    for (int i = 0; i < NSCEN; i++) {
        if (any && !want[i]) {
            continue;
        }
        results[i] = run_one(&scenarios[i], &o);
        ran[i] = true;
        failed += !results[i].ok;
        print_row(i);
    }
    print_summary(&o);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return failed ? 1 : 0;
}
