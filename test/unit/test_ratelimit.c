#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "err.h"
#include "ratelimit.h"

static crm_ratelimit_config_t config(uint64_t rate, uint64_t period_ms, uint64_t burst, size_t max_keys)
{
    return (crm_ratelimit_config_t){
        .rate = rate,
        .period_ms = period_ms,
        .burst = burst,
        .max_keys = max_keys,
        .evict_scan = CRM_RATELIMIT_DEFAULT_EVICT_SCAN,
    };
}

static void init_ok(crm_ratelimit_t *rl, crm_ratelimit_config_t cfg)
{
    assert_int_equal(crm_ratelimit_init(rl, &cfg), 0);
}

/* A distinct 17-byte key per number: 16 bytes of address and a route-class byte, as crmd builds them. */
typedef struct {
    uint8_t b[17];
} test_key_t;

static test_key_t key_of(unsigned n)
{
    test_key_t k;
    memset(&k, 0, sizeof(k));
    k.b[10] = 0xff;
    k.b[11] = 0xff;
    k.b[12] = (uint8_t)(n >> 24);
    k.b[13] = (uint8_t)(n >> 16);
    k.b[14] = (uint8_t)(n >> 8);
    k.b[15] = (uint8_t)n;
    k.b[16] = 1;
    return k;
}

/* One check of key n that must give exactly the expected decision and figures. */
static void expect(crm_ratelimit_t *rl, unsigned n, uint64_t now, int allowed, uint64_t remaining, uint64_t reset_ms,
                   uint64_t retry_after_ms)
{
    test_key_t k = key_of(n);
    crm_ratelimit_result_t res;
    memset(&res, 0xa5, sizeof(res));
    assert_int_equal(crm_ratelimit_check(rl, k.b, sizeof(k.b), now, &res), allowed);
    assert_int_equal(res.limit, rl->_cfg.burst);
    assert_int_equal(res.remaining, remaining);
    assert_int_equal(res.reset_ms, reset_ms);
    assert_int_equal(res.retry_after_ms, retry_after_ms);
}

static void test_init_rejects_bad_config(void **state)
{
    crm_ratelimit_t rl;
    crm_ratelimit_config_t good = config(10, 1000, 5, 100);
    crm_ratelimit_config_t bad[] = {good, good, good, good, good, good, good, good, good};
    bad[0].rate = 0;
    bad[1].rate = CRM_RATELIMIT_MAX_RATE + 1;
    bad[2].period_ms = 0;
    bad[3].period_ms = CRM_RATELIMIT_MAX_PERIOD_MS + 1;
    bad[4].burst = 0;
    bad[5].burst = CRM_RATELIMIT_MAX_BURST + 1;
    bad[6].max_keys = 0;
    bad[7].max_keys = CRM_RATELIMIT_MAX_KEYS + 1;
    bad[8].evict_scan = 0;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(crm_ratelimit_init(&rl, &bad[i]), CRM_E_INVAL);
        crm_ratelimit_dispose(&rl);
    }
    assert_int_equal(crm_ratelimit_init(&rl, NULL), CRM_E_INVAL);
    crm_ratelimit_dispose(&rl);
    assert_int_equal(crm_ratelimit_init(NULL, &good), CRM_E_INVAL);
    crm_ratelimit_dispose(NULL);

    /* The bounds themselves are accepted. */
    crm_ratelimit_config_t edge =
        config(CRM_RATELIMIT_MAX_RATE, CRM_RATELIMIT_MAX_PERIOD_MS, CRM_RATELIMIT_MAX_BURST, 1);
    edge.evict_scan = 1;
    init_ok(&rl, edge);
    crm_ratelimit_dispose(&rl);
}

static void test_check_rejects_bad_key(void **state)
{
    crm_ratelimit_t rl;
    init_ok(&rl, config(10, 1000, 5, 100));
    uint8_t key[CRM_RATELIMIT_MAX_KEY_LEN + 1] = {0};
    crm_ratelimit_result_t res = {0};

    assert_int_equal(crm_ratelimit_check(&rl, NULL, 4, 0, &res), CRM_E_INVAL);
    assert_int_equal(crm_ratelimit_check(&rl, key, 0, 0, &res), CRM_E_INVAL);
    assert_int_equal(crm_ratelimit_check(&rl, key, CRM_RATELIMIT_MAX_KEY_LEN + 1, 0, &res), CRM_E_INVAL);
    assert_int_equal(rl.allowed + rl.limited + rl.full_rejections, 0);
    assert_int_equal(crm_ratelimit_count(&rl), 0);

    /* The longest key and a NULL result are fine. */
    assert_int_equal(crm_ratelimit_check(&rl, key, CRM_RATELIMIT_MAX_KEY_LEN, 0, NULL), 1);
    assert_int_equal(crm_ratelimit_check(&rl, key, CRM_RATELIMIT_MAX_KEY_LEN, 0, &res), 1);
    assert_int_equal(res.remaining, 3);
    assert_int_equal(rl.allowed, 2);
    crm_ratelimit_dispose(&rl);
}

/* 10 per second with a burst of 5: T = 100 ms, tau = 400 ms. */
static void test_burst_then_refused(void **state)
{
    crm_ratelimit_t rl;
    init_ok(&rl, config(10, 1000, 5, 100));

    for (unsigned i = 0; i < 5; i++)
        expect(&rl, 1, 1000, 1, 4 - i, 100 * (i + 1), 0);
    expect(&rl, 1, 1000, 0, 0, 500, 100);
    /* Refusals do not move the TAT: the wait only shrinks with time. */
    expect(&rl, 1, 1000, 0, 0, 500, 100);
    expect(&rl, 1, 1099, 0, 0, 401, 1);
    expect(&rl, 1, 1100, 1, 0, 500, 0);
    expect(&rl, 1, 1100, 0, 0, 500, 100);
    assert_int_equal(rl.allowed, 6);
    assert_int_equal(rl.limited, 4);
    crm_ratelimit_dispose(&rl);
}

/* 3 per second with a burst of 2: T = 333.33 ms, which must not be rounded in the arithmetic. */
static void test_fractional_interval(void **state)
{
    crm_ratelimit_t rl;
    init_ok(&rl, config(3, 1000, 2, 100));

    expect(&rl, 1, 0, 1, 1, 334, 0);
    expect(&rl, 1, 0, 1, 0, 667, 0);
    /* The next one passes at 333.33 ms: refused at 333 (0.33 ms early, reported as 1 ms), allowed at 334. */
    expect(&rl, 1, 0, 0, 0, 667, 334);
    expect(&rl, 1, 333, 0, 0, 334, 1);
    expect(&rl, 1, 334, 1, 0, 666, 0);

    /*
     * With burst 2, 3000 requests each at its theoretical time rounded up to the millisecond all pass: the tolerance
     * absorbs the rounding, which never accumulates. With burst 1 it could not: spacings of 333 ms alternate with
     * 334 ms, and 333 ms is shorter than T.
     */
    crm_ratelimit_t steady;
    crm_ratelimit_result_t res;
    init_ok(&steady, config(3, 1000, 2, 100));
    for (uint64_t k = 0; k < 3000; k++)
        assert_int_equal(crm_ratelimit_check(&steady, "k", 1, (k * 1000 + 2) / 3, NULL), 1);
    /* The last at 999667 ms (2999001/3) left the TAT at 3000002/3 ms: 1001/3 ms of backlog. */
    assert_int_equal(crm_ratelimit_check(&steady, "k", 1, 999667, &res), 0);
    assert_int_equal(res.remaining, 0);
    assert_int_equal(res.reset_ms, 334);
    assert_int_equal(res.retry_after_ms, 1);
    assert_int_equal(crm_ratelimit_check(&steady, "k", 1, 999668, &res), 1);
    assert_int_equal(steady.allowed, 3001);
    assert_int_equal(steady.limited, 1);
    crm_ratelimit_dispose(&steady);
    crm_ratelimit_dispose(&rl);
}

static void test_steady_rate_passes(void **state)
{
    crm_ratelimit_t rl;
    init_ok(&rl, config(10, 1000, 1, 100));
    for (uint64_t t = 0; t < 100000; t += 100)
        expect(&rl, 1, t, 1, 0, 100, 0);
    assert_int_equal(rl.limited, 0);

    /* With a burst, spacing at T keeps the bucket one request below full. */
    crm_ratelimit_t b;
    init_ok(&b, config(10, 1000, 5, 100));
    for (uint64_t t = 5000; t < 6000; t += 100)
        expect(&b, 1, t, 1, 4, 100, 0);
    crm_ratelimit_dispose(&b);
    crm_ratelimit_dispose(&rl);
}

/*
 * A request every 99 ms against T = 100 ms and tau = 400 ms: request k sees base - now = k ms, so requests 0..400
 * pass and request 401 (at 39699 ms) is the first refused, 1 ms early.
 */
static void test_slightly_faster_refused(void **state)
{
    crm_ratelimit_t rl;
    init_ok(&rl, config(10, 1000, 5, 100));

    expect(&rl, 1, 0, 1, 4, 100, 0);
    expect(&rl, 1, 99, 1, 3, 101, 0); /* backlog 101 ms: 3 more fit in 500, not 4 */
    for (unsigned k = 2; k <= 400; k++) {
        test_key_t key = key_of(1);
        assert_int_equal(crm_ratelimit_check(&rl, key.b, sizeof(key.b), 99 * (uint64_t)k, NULL), 1);
    }
    expect(&rl, 1, 99 * 401, 0, 0, 401, 1);
    assert_int_equal(rl.allowed, 401);
    assert_int_equal(rl.limited, 1);
    crm_ratelimit_dispose(&rl);
}

static void test_remaining_and_reset(void **state)
{
    crm_ratelimit_t rl;
    init_ok(&rl, config(10, 1000, 5, 100));

    expect(&rl, 1, 0, 1, 4, 100, 0);
    expect(&rl, 1, 0, 1, 3, 200, 0);
    expect(&rl, 1, 0, 1, 2, 300, 0);
    expect(&rl, 1, 150, 1, 2, 250, 0); /* TAT 400, backlog 250: two more fit */
    expect(&rl, 1, 200, 1, 2, 300, 0); /* TAT 500, backlog 300 */
    expect(&rl, 1, 201, 1, 1, 399, 0); /* TAT 600, backlog 399 */
    expect(&rl, 1, 600, 1, 4, 100, 0); /* the bucket had just become full */
    expect(&rl, 1, 5000, 1, 4, 100, 0);

    /* The same at a T of 333.33 ms, where reset rounds up. */
    expect(&rl, 2, 5000, 1, 4, 100, 0);
    crm_ratelimit_t f;
    init_ok(&f, config(3, 1000, 3, 100));
    expect(&f, 1, 0, 1, 2, 334, 0);
    expect(&f, 1, 1, 1, 1, 666, 0); /* TAT 666.67, now 1: backlog 665.67 ms */
    expect(&f, 1, 2, 1, 0, 998, 0); /* TAT 1000 */
    expect(&f, 1, 2, 0, 0, 998, 332);
    expect(&f, 1, 334, 1, 0, 1000, 0); /* TAT 1333.33, backlog 999.33 */
    crm_ratelimit_dispose(&f);
    crm_ratelimit_dispose(&rl);
}

static void test_independent_keys(void **state)
{
    crm_ratelimit_t rl;
    init_ok(&rl, config(1, 1000, 2, 100));

    expect(&rl, 1, 0, 1, 1, 1000, 0);
    expect(&rl, 1, 0, 1, 0, 2000, 0);
    expect(&rl, 1, 0, 0, 0, 2000, 1000);
    expect(&rl, 2, 0, 1, 1, 1000, 0);
    expect(&rl, 1, 0, 0, 0, 2000, 1000);

    /* A key that is a prefix of another, or differs in the last byte, is a different key. */
    assert_int_equal(crm_ratelimit_check(&rl, "ab", 2, 0, NULL), 1);
    assert_int_equal(crm_ratelimit_check(&rl, "ab", 2, 0, NULL), 1);
    assert_int_equal(crm_ratelimit_check(&rl, "ab", 2, 0, NULL), 0);
    assert_int_equal(crm_ratelimit_check(&rl, "ab\0", 3, 0, NULL), 1);
    assert_int_equal(crm_ratelimit_check(&rl, "a", 1, 0, NULL), 1);
    assert_int_equal(crm_ratelimit_check(&rl, "ac", 2, 0, NULL), 1);
    assert_int_equal(crm_ratelimit_count(&rl), 6);
    crm_ratelimit_dispose(&rl);
}

static void test_time_going_backwards(void **state)
{
    crm_ratelimit_t rl;
    init_ok(&rl, config(1, 1000, 2, 100));

    expect(&rl, 1, 10000, 1, 1, 1000, 0);
    expect(&rl, 1, 10000, 1, 0, 2000, 0);
    /* Earlier readings count as 10000: the same refusal, no underflow, no extra requests. */
    expect(&rl, 1, 9999, 0, 0, 2000, 1000);
    expect(&rl, 1, 0, 0, 0, 2000, 1000);
    /* A new key at an earlier reading is stored at the latest time, not in the past. */
    expect(&rl, 2, 0, 1, 1, 1000, 0);
    expect(&rl, 2, 0, 1, 0, 2000, 0);
    expect(&rl, 2, 0, 0, 0, 2000, 1000);
    /* Forward again, then back: the clamp follows the latest reading. */
    expect(&rl, 1, 11500, 1, 0, 1500, 0);
    expect(&rl, 1, 11000, 0, 0, 1500, 500);
    crm_ratelimit_dispose(&rl);
}

static void test_large_values(void **state)
{
    /* 999983 is prime, so T = 31622400000 / 999983 ms has no exact representation at a coarser scale. */
    const uint64_t rate = 999983, period = CRM_RATELIMIT_MAX_PERIOD_MS, burst = CRM_RATELIMIT_MAX_BURST;
    const uint64_t now = (UINT64_C(1) << 43) - 1;
    crm_ratelimit_t rl;
    crm_ratelimit_result_t res;
    init_ok(&rl, config(rate, period, burst, 4));

    assert_int_equal(crm_ratelimit_check(&rl, "k", 1, UINT64_MAX, &res), CRM_E_INVAL);
    assert_int_equal(rl.allowed + rl.limited, 0);

    const uint64_t t_ceil = (period + rate - 1) / rate;
    assert_int_equal(crm_ratelimit_check(&rl, "k", 1, now, &res), 1);
    assert_int_equal(res.remaining, burst - 1);
    assert_int_equal(res.reset_ms, t_ceil);
    for (uint64_t i = 1; i < burst; i++)
        assert_int_equal(crm_ratelimit_check(&rl, "k", 1, now, NULL), 1);
    assert_int_equal(crm_ratelimit_check(&rl, "k", 1, now, &res), 0);
    assert_int_equal(res.remaining, 0);
    assert_int_equal(res.reset_ms, (burst * period + rate - 1) / rate);
    assert_int_equal(res.retry_after_ms, t_ceil);
    assert_int_equal(crm_ratelimit_check(&rl, "k", 1, now + t_ceil - 1, &res), 0);
    assert_int_equal(res.retry_after_ms, 1);
    assert_int_equal(crm_ratelimit_check(&rl, "k", 1, now + t_ceil, &res), 1);
    assert_int_equal(rl.allowed, burst + 1);
    crm_ratelimit_dispose(&rl);

    /* The finest scale: a million per millisecond, T = 1 ns. */
    init_ok(&rl, config(CRM_RATELIMIT_MAX_RATE, 1, CRM_RATELIMIT_MAX_BURST, 4));
    assert_int_equal(crm_ratelimit_check(&rl, "k", 1, now, &res), 1);
    assert_int_equal(res.remaining, CRM_RATELIMIT_MAX_BURST - 1);
    assert_int_equal(res.reset_ms, 1);
    crm_ratelimit_dispose(&rl);

    /* The coarsest: one per 366 days. */
    init_ok(&rl, config(1, period, 1, 4));
    expect(&rl, 1, UINT64_MAX - period, 1, 0, period, 0);
    expect(&rl, 1, UINT64_MAX - period, 0, 0, period, period);
    assert_int_equal(crm_ratelimit_check(&rl, "k", 1, UINT64_MAX - period + 1, &res), CRM_E_INVAL);
    crm_ratelimit_dispose(&rl);
}

/* One per second, burst 1: a key's entry expires 1000 ms after its request. */
static void test_full_table_recycles_expired(void **state)
{
    crm_ratelimit_t rl;
    crm_ratelimit_config_t cfg = config(1, 1000, 1, 3);
    cfg.evict_scan = 1000;
    init_ok(&rl, cfg);

    expect(&rl, 1, 0, 1, 0, 1000, 0);
    expect(&rl, 2, 500, 1, 0, 1000, 0);
    expect(&rl, 3, 900, 1, 0, 1000, 0);
    assert_int_equal(crm_ratelimit_count(&rl), 3);

    /* At 1200 only key 1 has expired: it makes room for key 4; keys 2 and 3 keep their state. */
    expect(&rl, 4, 1200, 1, 0, 1000, 0);
    assert_int_equal(rl.evictions, 1);
    assert_int_equal(crm_ratelimit_count(&rl), 3);
    expect(&rl, 2, 1200, 0, 0, 300, 300);
    expect(&rl, 3, 1200, 0, 0, 700, 700);
    expect(&rl, 4, 1200, 0, 0, 1000, 1000);
    /* Key 1 comes back as new, which is exactly what its expired entry said, but now there is no room. */
    expect(&rl, 1, 1200, 0, 0, 1000, 1000);
    assert_int_equal(rl.full_rejections, 1);

    /* At 5000 all three have expired; one scan removes them all. */
    expect(&rl, 5, 5000, 1, 0, 1000, 0);
    assert_int_equal(rl.evictions, 4);
    assert_int_equal(crm_ratelimit_count(&rl), 1);
    expect(&rl, 1, 5000, 1, 0, 1000, 0);
    expect(&rl, 2, 5000, 1, 0, 1000, 0);
    assert_int_equal(rl.full_rejections, 1);
    assert_int_equal(rl.limited, 3);
    assert_int_equal(rl.allowed, 7);
    crm_ratelimit_dispose(&rl);
}

static void test_full_table_of_live_entries_fails_closed(void **state)
{
    crm_ratelimit_t rl;
    crm_ratelimit_config_t cfg = config(3, 1000, 2, 4);
    cfg.evict_scan = 1000;
    init_ok(&rl, cfg);

    for (unsigned n = 1; n <= 4; n++)
        expect(&rl, n, 0, 1, 1, 334, 0);
    /* Refused with remaining 0 and T rounded up as the wait. */
    for (unsigned n = 5; n <= 8; n++)
        expect(&rl, n, 100, 0, 0, 334, 334);
    assert_int_equal(rl.full_rejections, 4);
    assert_int_equal(rl.limited, 0);
    assert_int_equal(rl.evictions, 0);
    assert_int_equal(crm_ratelimit_count(&rl), 4);
    /* Tracked keys are unaffected. */
    expect(&rl, 1, 100, 1, 0, 567, 0);
    expect(&rl, 1, 100, 0, 0, 567, 234);
    expect(&rl, 2, 100, 1, 0, 567, 0);
    /* Once key 3's entry expires (at 333.33 ms) a new key gets its place. */
    expect(&rl, 9, 333, 0, 0, 334, 334);
    expect(&rl, 9, 334, 1, 1, 334, 0);
    assert_int_equal(rl.evictions, 2); /* keys 3 and 4 */
    assert_int_equal(rl.full_rejections, 5);
    crm_ratelimit_dispose(&rl);
}

/* With evict_scan 1 each call moves over one slot, so a full table with expired entries frees one within a sweep. */
static void test_bounded_eviction_scan(void **state)
{
    crm_ratelimit_t rl;
    crm_ratelimit_config_t cfg = config(1, 1000, 1, 6); /* 8 slots */
    cfg.evict_scan = 1;
    init_ok(&rl, cfg);

    for (unsigned n = 1; n <= 6; n++)
        expect(&rl, n, 0, 1, 0, 1000, 0);
    /* Keys 1..5 expire at 1000; key 6 is refreshed so it stays live. */
    expect(&rl, 6, 1000, 1, 0, 1000, 0);

    unsigned calls = 0;
    test_key_t k = key_of(100);
    int r;
    do {
        r = crm_ratelimit_check(&rl, k.b, sizeof(k.b), 1000, NULL);
        assert_true(r == 0 || r == 1);
        calls++;
    } while (r == 0 && calls <= 8);
    /* Two empty slots and the live one can be passed over without a removal; an expired one is met within 4. */
    assert_int_equal(r, 1);
    assert_in_range(calls, 1, 4);
    assert_int_equal(rl.full_rejections, calls - 1);
    assert_in_range(rl.evictions, 1, 5);
    assert_int_equal(crm_ratelimit_count(&rl), 7 - rl.evictions);

    /*
     * More new keys: each refused one moves the cursor one slot, so every 8 refusals sweep the table and at most 32
     * free the (at most 4) expired entries left. Exactly as many new keys are admitted as there were expired keys
     * besides the one key 100 replaced (4), since the table stays full of live entries; the other 60 are refused.
     */
    for (unsigned n = 200; n < 264; n++) {
        test_key_t nk = key_of(n);
        r = crm_ratelimit_check(&rl, nk.b, sizeof(nk.b), 1000, NULL);
        assert_true(r == 0 || r == 1);
    }
    assert_int_equal(rl.evictions, 5);
    assert_int_equal(crm_ratelimit_count(&rl), 6);
    assert_int_equal(rl.full_rejections, calls - 1 + 60);
    assert_int_equal(rl.allowed, 6 + 1 + 1 + 4);
    expect(&rl, 6, 1000, 0, 0, 1000, 1000);
    expect(&rl, 100, 1000, 0, 0, 1000, 1000);
    crm_ratelimit_dispose(&rl);
}

/*
 * Three keys in a four-slot table, 200 rounds of fresh keys: the home slots of three random keys differ in only
 * 3/8 of the rounds, so lookups that probe past other keys are exercised (the chance that no round has a collision
 * is 0.375^200), as is a scan that empties the whole table. Every figure must still be exact for every key.
 */
static void test_collisions_in_tiny_table(void **state)
{
    crm_ratelimit_t rl;
    crm_ratelimit_config_t cfg = config(1, 1000, 2, 3);
    cfg.evict_scan = 4;
    init_ok(&rl, cfg);

    for (unsigned round = 0; round < 200; round++) {
        uint64_t t = 10000 * (uint64_t)round;
        unsigned base = round * 3;
        for (unsigned i = 0; i < 3; i++)
            expect(&rl, base + i, t, 1, 1, 1000, 0);
        assert_int_equal(crm_ratelimit_count(&rl), 3);
        expect(&rl, base + 3, t, 0, 0, 1000, 1000); /* no room */
        for (unsigned i = 0; i < 3; i++)
            expect(&rl, base + i, t + 10, 1, 0, 1990, 0);
        for (unsigned i = 0; i < 3; i++)
            expect(&rl, base + 2 - i, t + 20, 0, 0, 1980, 980);
        /* Keys from the previous round were evicted and are new again. */
        if (round > 0)
            expect(&rl, base - 1, t + 20, 0, 0, 1000, 1000);
    }
    assert_int_equal(rl.evictions, 3 * 199);
    assert_int_equal(rl.full_rejections, 200 + 199);
    assert_int_equal(rl.allowed, 200 * 6);
    assert_int_equal(rl.limited, 200 * 3);
    crm_ratelimit_dispose(&rl);
}

/*
 * Eviction of one entry while others stay, 300 times over in a four-slot table: every 400 ms a new key arrives at a
 * full table whose oldest entry has just expired. The removal must keep the probe chains of the two live keys intact
 * (backward shift, including clusters that wrap from the last slot to the first); a broken chain would make a live
 * key look new and answer with the full-table figures instead of its own.
 */
static void test_partial_eviction_keeps_probe_chains(void **state)
{
    crm_ratelimit_t rl;
    crm_ratelimit_config_t cfg = config(1, 1000, 1, 3);
    cfg.evict_scan = 4;
    init_ok(&rl, cfg);

    for (unsigned s = 0; s < 300; s++) {
        uint64_t t = 400 * (uint64_t)s;
        expect(&rl, s, t, 1, 0, 1000, 0);
        if (s >= 1)
            expect(&rl, s - 1, t, 0, 0, 600, 600);
        if (s >= 2)
            expect(&rl, s - 2, t, 0, 0, 200, 200);
        if (s >= 3) {
            assert_int_equal(rl.evictions, s - 2);
            expect(&rl, s - 3, t, 0, 0, 1000, 1000); /* evicted, and no room */
        }
        assert_int_equal(crm_ratelimit_count(&rl), s < 3 ? s + 1 : 3);
    }
    assert_int_equal(rl.evictions, 297);
    assert_int_equal(rl.full_rejections, 297);
    assert_int_equal(rl.limited, 1 + 2 * 298);
    assert_int_equal(rl.allowed, 300);
    crm_ratelimit_dispose(&rl);
}

static void test_format_headers(void **state)
{
    crm_ratelimit_t rl;
    crm_ratelimit_headers_t h;
    crm_ratelimit_result_t res;
    init_ok(&rl, config(10, 1000, 5, 100));

    assert_int_equal(crm_ratelimit_check(&rl, "k", 1, 0, &res), 1);
    crm_ratelimit_format_headers(&rl, &res, &h);
    assert_string_equal(h.policy, "5;w=1");
    assert_string_equal(h.ratelimit, "limit=5, remaining=4, reset=1");
    assert_string_equal(h.retry_after, "");
    for (int i = 0; i < 4; i++)
        assert_int_equal(crm_ratelimit_check(&rl, "k", 1, 0, NULL), 1);
    assert_int_equal(crm_ratelimit_check(&rl, "k", 1, 0, &res), 0);
    crm_ratelimit_format_headers(&rl, &res, &h);
    assert_string_equal(h.ratelimit, "limit=5, remaining=0, reset=1");
    assert_string_equal(h.retry_after, "1");
    crm_ratelimit_dispose(&rl);

    /* Seconds round up: a 1500 ms window is w=2, 1000 ms is 1, 1001 ms is 2; no time left is reset=0. */
    init_ok(&rl, config(3, 1500, 7, 100));
    res = (crm_ratelimit_result_t){.limit = 7, .remaining = 7, .reset_ms = 0, .retry_after_ms = 0};
    crm_ratelimit_format_headers(&rl, &res, &h);
    assert_string_equal(h.policy, "7;w=2");
    assert_string_equal(h.ratelimit, "limit=7, remaining=7, reset=0");
    assert_string_equal(h.retry_after, "");
    res = (crm_ratelimit_result_t){.limit = 7, .remaining = 0, .reset_ms = 1001, .retry_after_ms = 1};
    crm_ratelimit_format_headers(&rl, &res, &h);
    assert_string_equal(h.ratelimit, "limit=7, remaining=0, reset=2");
    assert_string_equal(h.retry_after, "1");
    res.retry_after_ms = 1000;
    crm_ratelimit_format_headers(&rl, &res, &h);
    assert_string_equal(h.retry_after, "1");
    res.retry_after_ms = 2001;
    crm_ratelimit_format_headers(&rl, &res, &h);
    assert_string_equal(h.retry_after, "3");
    crm_ratelimit_dispose(&rl);

    /* The widest values fit. */
    init_ok(&rl, config(1, CRM_RATELIMIT_MAX_PERIOD_MS, CRM_RATELIMIT_MAX_BURST, 1));
    res = (crm_ratelimit_result_t){
        .limit = UINT64_MAX, .remaining = UINT64_MAX, .reset_ms = UINT64_MAX, .retry_after_ms = UINT64_MAX};
    crm_ratelimit_format_headers(&rl, &res, &h);
    assert_string_equal(h.policy, "1000000;w=31622400");
    assert_string_equal(h.ratelimit,
                        "limit=18446744073709551615, remaining=18446744073709551615, reset=18446744073709552");
    assert_string_equal(h.retry_after, "18446744073709552");
    crm_ratelimit_dispose(&rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_rejects_bad_config),
        cmocka_unit_test(test_check_rejects_bad_key),
        cmocka_unit_test(test_burst_then_refused),
        cmocka_unit_test(test_fractional_interval),
        cmocka_unit_test(test_steady_rate_passes),
        cmocka_unit_test(test_slightly_faster_refused),
        cmocka_unit_test(test_remaining_and_reset),
        cmocka_unit_test(test_independent_keys),
        cmocka_unit_test(test_time_going_backwards),
        cmocka_unit_test(test_large_values),
        cmocka_unit_test(test_full_table_recycles_expired),
        cmocka_unit_test(test_full_table_of_live_entries_fails_closed),
        cmocka_unit_test(test_bounded_eviction_scan),
        cmocka_unit_test(test_collisions_in_tiny_table),
        cmocka_unit_test(test_partial_eviction_keeps_probe_chains),
        cmocka_unit_test(test_format_headers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
