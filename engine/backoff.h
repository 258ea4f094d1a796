/*
 * backoff: retry policy arithmetic. Pure: the clock and the random draw are
 * passed in, so schedules are exactly reproducible in tests.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_BACKOFF_H
#define MT_BACKOFF_H

#include <stdbool.h>

// Per-task options (defaults in mt_policy_default).
typedef struct mt_policy {
    int retries;       // extra attempts after the first failure
    double delay;      // seconds before the first retry
    double backoff;    // multiplier for each further retry
    double max_delay;  // cap on one delay; <= 0 means no cap
    double jitter;     // fraction in [0, 1]; 0 = exact schedule
    double timeout;    // seconds; <= 0 means no timeout
    bool requeue_on_interrupt;
    bool redact;  // redact secret arguments from logs/errors
} mt_policy;

mt_policy mt_policy_default(void);

// Whether a task whose attempt number `attempt` (1-based, counted since the
// last manual retry) just failed may run again.
bool mt_backoff_should_retry(const mt_policy *p, int attempt);

// Delay after failed attempt n (1-based): delay * backoff^(n-1), capped by
// max_delay, then spread by jitter: d * (1 + jitter * (2u - 1)) where u in
// [0,1) is the caller's random draw. Never negative.
double mt_backoff_delay(const mt_policy *p, int attempt, double u);

#endif
