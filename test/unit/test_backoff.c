/* Unit tests for lib/backoff: the full-jitter interval and every Retry-After form RFC 9110 asks recipients to read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "backoff.h"
#include "err.h"

static void test_cap_grows_and_saturates(void **state)
{
    (void)state;
    assert_int_equal(crm_backoff_cap(100, 5000, 0), 100);
    assert_int_equal(crm_backoff_cap(100, 5000, 1), 100);
    assert_int_equal(crm_backoff_cap(100, 5000, 2), 200);
    assert_int_equal(crm_backoff_cap(100, 5000, 3), 400);
    assert_int_equal(crm_backoff_cap(100, 5000, 6), 3200);
    assert_int_equal(crm_backoff_cap(100, 5000, 7), 5000);
    assert_int_equal(crm_backoff_cap(100, 5000, 4000000000u), 5000);
    assert_int_equal(crm_backoff_cap(0, 5000, 9), 0);
    assert_int_equal(crm_backoff_cap(9000, 5000, 1), 5000);
    assert_true(crm_backoff_cap(1, UINT64_MAX, 200) == UINT64_MAX);
}

static void test_jitter_within_interval_and_spread(void **state)
{
    (void)state;
    uint64_t lo = UINT64_MAX, hi = 0;
    for (int i = 0; i < 20000; ++i) {
        uint64_t d = crm_backoff_full_jitter(100, 5000, 3);
        assert_true(d <= 400);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
    }
    /* Full jitter covers the whole interval, both ends included in practice. */
    assert_true(lo <= 5);
    assert_true(hi >= 395);
    assert_int_equal(crm_backoff_full_jitter(0, 100, 5), 0);
    (void)crm_backoff_full_jitter(1, UINT64_MAX, 100); /* must not overflow */
}

static uint64_t ra(const char *v, time_t now)
{
    uint64_t ms = 12345;
    assert_int_equal(crm_retry_after_parse(v, strlen(v), now, &ms), 0);
    return ms;
}

static void ra_bad(const char *v)
{
    uint64_t ms = 777;
    assert_int_equal(crm_retry_after_parse(v, strlen(v), 0, &ms), CRM_E_PARSE);
    assert_int_equal(ms, 777);
}

static void test_retry_after_seconds(void **state)
{
    (void)state;
    assert_int_equal(ra("0", 0), 0);
    assert_int_equal(ra("1", 0), 1000);
    assert_int_equal(ra("  120 ", 0), 120000);
    assert_int_equal(ra("\t7\t", 0), 7000);
    /* Capped at a day, however many digits. */
    assert_int_equal(ra("99999999999999999999999999", 0), 86400000);
    assert_int_equal(ra("86401", 0), 86400000);
    ra_bad("");
    ra_bad("   ");
    ra_bad("-1");
    ra_bad("1.5");
    ra_bad("12abc");
    ra_bad("+3");
}

static void test_retry_after_dates(void **state)
{
    (void)state;
    /* 1994-11-06 08:49:37 UTC = 784111777 */
    time_t t = 784111777;
    assert_int_equal(ra("Sun, 06 Nov 1994 08:49:37 GMT", t - 10), 10000);
    assert_int_equal(ra("Sunday, 06-Nov-94 08:49:37 GMT", t - 3), 3000);
    assert_int_equal(ra("Sun Nov  6 08:49:37 1994", t - 1), 1000);
    /* Ten days ahead is capped at one. */
    assert_int_equal(ra("Wed Nov 16 08:49:37 1994", t), 86400000);
    /* Past dates mean "now". */
    assert_int_equal(ra("Sun, 06 Nov 1994 08:49:37 GMT", t + 100), 0);
    /* Leap day and the RFC 850 century rule. */
    assert_int_equal(ra("Thu, 29 Feb 2024 00:00:00 GMT", 1709164800 - 60), 60000);
    assert_int_equal(ra("Thursday, 29-Feb-24 00:00:01 GMT", 1709164800), 1000);
    assert_int_equal(ra("Mon, 23 Nov 2026 18:40:00 GMT", 1795459200 - 5), 5000);
    ra_bad("Sun, 06 Nov 1994 08:49:37 UTC");
    ra_bad("Sun, 06 Nov 1994 08:49:37");
    ra_bad("Sun, 31 Nov 1994 08:49:37 GMT");
    ra_bad("Sun, 29 Feb 2023 08:49:37 GMT");
    ra_bad("Sun, 06 Foo 1994 08:49:37 GMT");
    ra_bad("Sun, 06 Nov 1994 24:49:37 GMT");
    ra_bad("Sun, 06 Nov 94 08:49:37 GMT");
    ra_bad("Sun, 06 Nov 1994 08:49:37 GMT trailing");
    ra_bad("Su, 06 Nov 1994 08:49:37 GMT");
    ra_bad("Sun Nov  6 08:49:37");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cap_grows_and_saturates),
        cmocka_unit_test(test_jitter_within_interval_and_spread),
        cmocka_unit_test(test_retry_after_seconds),
        cmocka_unit_test(test_retry_after_dates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
