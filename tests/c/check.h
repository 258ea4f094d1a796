/*
 * check: minimal libuv-style test macros. A failed check prints both sides
 * with file and line and exits 1, so each test executable stops at the first
 * broken expectation.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_CHECK_H
#define MT_CHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_FAIL_(...)                                              \
    do {                                                              \
        fprintf(stderr, "%s:%d: check failed: ", __FILE__, __LINE__); \
        fprintf(stderr, __VA_ARGS__);                                 \
        fputc('\n', stderr);                                          \
        exit(1);                                                      \
    } while (0)

#define CHECK(c)                   \
    do {                           \
        if (!(c)) {                \
            CHECK_FAIL_("%s", #c); \
        }                          \
    } while (0)

#define CHECK_EQ(a, b)                                              \
    do {                                                            \
        long long a_ = (long long)(a), b_ = (long long)(b);         \
        if (a_ != b_) {                                             \
            CHECK_FAIL_("%s == %s (%lld vs %lld)", #a, #b, a_, b_); \
        }                                                           \
    } while (0)

#define CHECK_DBL_EQ(a, b)                                            \
    do {                                                              \
        double a_ = (a), b_ = (b);                                    \
        if (a_ != b_) {                                               \
            CHECK_FAIL_("%s == %s (%.17g vs %.17g)", #a, #b, a_, b_); \
        }                                                             \
    } while (0)

#define CHECK_STR_EQ(a, b)                                                         \
    do {                                                                           \
        const char *a_ = (a), *b_ = (b);                                           \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0) {                     \
            CHECK_FAIL_("%s == %s (\"%s\" vs \"%s\")", #a, #b, a_ ? a_ : "(null)", \
                        b_ ? b_ : "(null)");                                       \
        }                                                                          \
    } while (0)

#define CHECK_MEM_EQ(a, b, n)                                                \
    do {                                                                     \
        if (memcmp((a), (b), (n)) != 0) {                                    \
            CHECK_FAIL_("%s == %s (%zu bytes differ)", #a, #b, (size_t)(n)); \
        }                                                                    \
    } while (0)

// rc must be MT_OK; prints the mt_err message when one is given.
#define CHECK_OK(rc, errp)                                                 \
    do {                                                                   \
        int rc_ = (rc);                                                    \
        if (rc_ != 0) {                                                    \
            CHECK_FAIL_("%s returned %d: %s", #rc, rc_, mt_err_msg(errp)); \
        }                                                                  \
    } while (0)

#define RUN(fn)                 \
    do {                        \
        fn();                   \
        printf("ok %s\n", #fn); \
    } while (0)

#endif
