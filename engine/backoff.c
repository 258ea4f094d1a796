/*
 * backoff: retry schedule arithmetic; see backoff.h.
 */
// SPDX-License-Identifier: MIT
#include "backoff.h"

#include <math.h>

mt_policy mt_policy_default(void)
{
    mt_policy p = {
        .retries = 0,
        .delay = 0,
        .backoff = 1,
        .max_delay = 0,
        .jitter = 0,
        .timeout = 0,
        .requeue_on_interrupt = false,
        .redact = true,
    };
    return p;
}

bool mt_backoff_should_retry(const mt_policy *p, int attempt)
{
    return attempt >= 1 && attempt <= p->retries;
}

double mt_backoff_delay(const mt_policy *p, int attempt, double u)
{
    if (attempt < 1) {
        attempt = 1;
    }
    double d = p->delay * pow(p->backoff, attempt - 1);
    if (!isfinite(d)) {
        d = p->max_delay > 0 ? p->max_delay : HUGE_VAL;
    }
    if (p->max_delay > 0 && d > p->max_delay) {
        d = p->max_delay;
    }
    if (p->jitter > 0) {
        d *= 1 + p->jitter * (2 * u - 1);
    }
    return d > 0 ? d : 0;
}
