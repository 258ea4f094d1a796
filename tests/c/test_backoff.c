/*
 * test_backoff: the retry schedule is exact and reproducible.
 */
// SPDX-License-Identifier: MIT
#include <math.h>

#include "backoff.h"
#include "check.h"

static void test_backoff_defaults(void)
{
    mt_policy p = mt_policy_default();
    CHECK_EQ(p.retries, 0);
    CHECK_DBL_EQ(p.backoff, 1);
    CHECK_DBL_EQ(p.jitter, 0);
    CHECK(!p.requeue_on_interrupt);
    CHECK(!mt_backoff_should_retry(&p, 1));
}

static void test_backoff_exponential(void)
{
    mt_policy p = mt_policy_default();
    p.retries = 3;
    p.delay = 10;
    p.backoff = 2;
    CHECK_DBL_EQ(mt_backoff_delay(&p, 1, 0.5), 10);
    CHECK_DBL_EQ(mt_backoff_delay(&p, 2, 0.5), 20);
    CHECK_DBL_EQ(mt_backoff_delay(&p, 3, 0.5), 40);
    CHECK(mt_backoff_should_retry(&p, 1));
    CHECK(mt_backoff_should_retry(&p, 3));
    CHECK(!mt_backoff_should_retry(&p, 4));
}

static void test_backoff_cap(void)
{
    mt_policy p = mt_policy_default();
    p.delay = 1;
    p.backoff = 10;
    p.max_delay = 50;
    CHECK_DBL_EQ(mt_backoff_delay(&p, 2, 0), 10);
    CHECK_DBL_EQ(mt_backoff_delay(&p, 3, 0), 50);
    CHECK_DBL_EQ(mt_backoff_delay(&p, 2000, 0), 50);  // overflow to inf is capped
}

static void test_backoff_uncapped_overflow(void)
{
    mt_policy p = mt_policy_default();
    p.delay = 1;
    p.backoff = 10;
    double d = mt_backoff_delay(&p, 2000, 0);
    CHECK(d > 1e300);
}

static void test_backoff_jitter(void)
{
    mt_policy p = mt_policy_default();
    p.delay = 100;
    p.jitter = 0.1;
    CHECK_DBL_EQ(mt_backoff_delay(&p, 1, 0.5), 100);
    CHECK(fabs(mt_backoff_delay(&p, 1, 0.0) - 90) < 1e-9);
    CHECK(mt_backoff_delay(&p, 1, 0.999999) < 110);
    CHECK(mt_backoff_delay(&p, 1, 0.999999) > 109.99);
}

int main(void)
{
    RUN(test_backoff_defaults);
    RUN(test_backoff_exponential);
    RUN(test_backoff_cap);
    RUN(test_backoff_uncapped_overflow);
    RUN(test_backoff_jitter);
    return 0;
}
