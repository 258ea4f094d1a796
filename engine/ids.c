/*
 * ids: UUIDs, owner tags and clocks. Liveness reads /proc so that a pid
 * reused by an unrelated process is not mistaken for a live engine.
 */
// SPDX-License-Identifier: MIT
#define _DEFAULT_SOURCE
#include "ids.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"

int mt_uuid4(char out[37])
{
    unsigned char b[16];
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t n = getrandom(b + got, sizeof b - got, 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return MT_EIO;
        }
        got += (size_t)n;
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) {
            out[o++] = '-';
        }
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = 0;
    return MT_OK;
}

// Field 22 of /proc/PID/stat (clock ticks since boot); 0 when unreadable
// or when the process is a zombie (dead, waiting to be reaped).
static unsigned long long proc_starttime(long pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return 0;
    }
    mt_buf line;
    mt_buf_init(&line, false);
    int c;
    while ((c = fgetc(f)) != EOF && c != '\n') {
        char ch = (char)c;
        if (mt_buf_append(&line, &ch, 1) != MT_OK) {
            break;
        }
    }
    fclose(f);
    unsigned long long start = 0;
    // The command name may hold spaces and parentheses: count from the last ')'.
    const char *p = line.data ? strrchr((const char *)line.data, ')') : NULL;
    if (p != NULL && (p[1] == ' ') && (p[2] == 'Z' || p[2] == 'X')) {
        p = NULL;
    }
    if (p != NULL) {
        int field = 2;
        for (p++; *p && field < 22; p++) {
            if (*p == ' ') {
                field++;
            }
        }
        start = strtoull(p, NULL, 10);
    }
    mt_buf_clear(&line);
    return start;
}

static char *host_name(void)
{
    size_t cap = 256;
    char *h = calloc(cap + 1, 1);
    if (h != NULL && gethostname(h, cap) != 0) {
        strcpy(h, "localhost");
    }
    return h;
}

char *mt_owner_self(void)
{
    char *h = host_name();
    if (h == NULL) {
        return NULL;
    }
    long pid = (long)getpid();
    mt_buf b;
    mt_buf_init(&b, false);
    int rc = mt_buf_printf(&b, "%s:%ld:%llu", h, pid, proc_starttime(pid));
    free(h);
    if (rc != MT_OK) {
        mt_buf_clear(&b);
        return NULL;
    }
    return (char *)mt_buf_take(&b, NULL);
}

bool mt_owner_alive(const char *owner)
{
    const char *c2 = strrchr(owner, ':');
    if (c2 == NULL || c2 == owner) {
        return false;
    }
    const char *c1 = c2 - 1;
    while (c1 > owner && *c1 != ':') {
        c1--;
    }
    if (*c1 != ':') {
        return false;
    }
    char *h = host_name();
    bool same_host = h != NULL && (size_t)(c1 - owner) == strlen(h) &&
                     strncmp(owner, h, (size_t)(c1 - owner)) == 0;
    free(h);
    if (!same_host) {
        return true;
    }
    long pid = strtol(c1 + 1, NULL, 10);
    unsigned long long start = strtoull(c2 + 1, NULL, 10);
    if (pid <= 0) {
        return false;
    }
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
        return false;
    }
    return proc_starttime(pid) == start;
}

double mt_mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double mt_wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
