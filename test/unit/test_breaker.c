#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "breaker.h"
#include "err.h"

/* A clock the tests move by hand; calls counts the reads, to check the breaker reads it only when it must. */
typedef struct {
    uint64_t now;
    unsigned calls;
} fake_clock_t;

static uint64_t fake_now(void *ctx)
{
    fake_clock_t *c = ctx;
    c->calls++;
    return c->now;
}

#define MAX_LOG 16

typedef struct {
    int n;
    crm_breaker_t *b[MAX_LOG];
    crm_breaker_state_t from[MAX_LOG];
    crm_breaker_state_t to[MAX_LOG];
    uint64_t count_seen[MAX_LOG]; /* b->transitions[to] as the callback saw it */
} transition_log_t;

static void log_transition(crm_breaker_t *b, crm_breaker_state_t from, crm_breaker_state_t to, void *ctx)
{
    transition_log_t *log = ctx;
    assert_true(log->n < MAX_LOG);
    log->b[log->n] = b;
    log->from[log->n] = from;
    log->to[log->n] = to;
    log->count_seen[log->n] = b->transitions[to];
    log->n++;
}

/* A small breaker whose figures are easy to reason about; each test adjusts what it exercises. */
static crm_breaker_config_t small_config(void)
{
    return (crm_breaker_config_t){
        .window_size = 10,
        .minimum_calls = 4,
        .failure_rate_pct = 50,
        .slow_rate_pct = 0,
        .slow_call_ms = 100,
        .open_ms = 500,
        .half_open_probes = 2,
    };
}

static void init_ok(crm_breaker_t *b, const crm_breaker_config_t *cfg, fake_clock_t *clock)
{
    assert_int_equal(crm_breaker_init(b, "test", cfg, fake_now, clock), 0);
}

/* One complete call: acquire (which must be permitted) and record. */
static void call(crm_breaker_t *b, int failed, uint64_t duration_ms)
{
    crm_breaker_permit_t p = crm_breaker_acquire(b);
    assert_true(p != 0);
    crm_breaker_record(b, p, failed, duration_ms);
}

static void assert_window(const crm_breaker_t *b, uint32_t outcomes, uint32_t failures, uint32_t slow)
{
    crm_breaker_window_t w = crm_breaker_window(b);
    assert_int_equal(w.outcomes, outcomes);
    assert_int_equal(w.failures, failures);
    assert_int_equal(w.slow, slow);
}

/* Opens a CLOSED breaker at the current fake time with failed calls, however many the window needs. */
static void trip(crm_breaker_t *b)
{
    for (int i = 0; i < CRM_BREAKER_MAX_WINDOW && crm_breaker_state(b) == CRM_BREAKER_CLOSED; i++)
        call(b, 1, 1);
    assert_int_equal(crm_breaker_state(b), CRM_BREAKER_OPEN);
}

static void test_config_default(void **state)
{
    crm_breaker_config_t cfg;
    memset(&cfg, 0xff, sizeof(cfg));
    crm_breaker_config_default(&cfg);
    assert_int_equal(cfg.window_size, 100);
    assert_int_equal(cfg.minimum_calls, 20);
    assert_int_equal(cfg.failure_rate_pct, 50);
    assert_int_equal(cfg.slow_rate_pct, 80);
    assert_int_equal(cfg.slow_call_ms, 2000);
    assert_int_equal(cfg.open_ms, 5000);
    assert_int_equal(cfg.half_open_probes, 3);

    fake_clock_t clock = {0};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);
    assert_string_equal(b.name, "test");
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    assert_int_equal(b.rejected, 0);
    assert_int_equal(b.transitions[0], 0);
    assert_int_equal(b.transitions[1], 0);
    assert_int_equal(b.transitions[2], 0);
    assert_window(&b, 0, 0, 0);
    assert_int_equal(crm_breaker_retry_after_ms(&b), 0);
    /* Nothing so far needed the time. */
    assert_int_equal(clock.calls, 0);
    crm_breaker_dispose(&b);
}

static void test_state_names(void **state)
{
    assert_int_equal(CRM_BREAKER_CLOSED, 0);
    assert_int_equal(CRM_BREAKER_OPEN, 1);
    assert_int_equal(CRM_BREAKER_HALF_OPEN, 2);
    assert_string_equal(crm_breaker_state_name(CRM_BREAKER_CLOSED), "closed");
    assert_string_equal(crm_breaker_state_name(CRM_BREAKER_OPEN), "open");
    assert_string_equal(crm_breaker_state_name(CRM_BREAKER_HALF_OPEN), "half_open");
    assert_string_equal(crm_breaker_state_name((crm_breaker_state_t)3), "unknown");
}

static void expect_inval(const crm_breaker_config_t *cfg)
{
    fake_clock_t clock = {0};
    crm_breaker_t b;
    assert_int_equal(crm_breaker_init(&b, "test", cfg, fake_now, &clock), CRM_E_INVAL);
    /* Disposing after a failed init is harmless (and, under ASan, shows init left nothing allocated). */
    crm_breaker_dispose(&b);
}

static void expect_ok(const crm_breaker_config_t *cfg)
{
    fake_clock_t clock = {0};
    crm_breaker_t b;
    init_ok(&b, cfg, &clock);
    crm_breaker_dispose(&b);
}

static void test_invalid_config(void **state)
{
    crm_breaker_config_t base = small_config(), cfg;
    fake_clock_t clock = {0};
    crm_breaker_t b;

    assert_int_equal(crm_breaker_init(NULL, "test", &base, fake_now, &clock), CRM_E_INVAL);
    assert_int_equal(crm_breaker_init(&b, NULL, &base, fake_now, &clock), CRM_E_INVAL);
    crm_breaker_dispose(&b);
    assert_int_equal(crm_breaker_init(&b, "test", NULL, fake_now, &clock), CRM_E_INVAL);
    crm_breaker_dispose(&b);
    assert_int_equal(crm_breaker_init(&b, "test", &base, NULL, &clock), CRM_E_INVAL);
    crm_breaker_dispose(&b);
    /* The clock context is the caller's business and may be NULL (init does not read the clock). */
    assert_int_equal(crm_breaker_init(&b, "test", &base, fake_now, NULL), 0);
    crm_breaker_dispose(&b);
    crm_breaker_dispose(NULL);

    cfg = base, cfg.window_size = 0, expect_inval(&cfg);
    cfg = base, cfg.window_size = 1025, cfg.minimum_calls = 1, expect_inval(&cfg);
    cfg = base, cfg.window_size = 1024, cfg.minimum_calls = 1024, expect_ok(&cfg);
    cfg = base, cfg.window_size = 1, cfg.minimum_calls = 1, expect_ok(&cfg);

    cfg = base, cfg.minimum_calls = 0, expect_inval(&cfg);
    cfg = base, cfg.minimum_calls = 11, expect_inval(&cfg);
    cfg = base, cfg.minimum_calls = 10, expect_ok(&cfg);

    cfg = base, cfg.failure_rate_pct = 0, expect_inval(&cfg);
    cfg = base, cfg.failure_rate_pct = 101, expect_inval(&cfg);
    cfg = base, cfg.failure_rate_pct = 1, expect_ok(&cfg);
    cfg = base, cfg.failure_rate_pct = 100, expect_ok(&cfg);

    cfg = base, cfg.slow_rate_pct = 101, expect_inval(&cfg);
    cfg = base, cfg.slow_rate_pct = 0, expect_ok(&cfg);
    cfg = base, cfg.slow_rate_pct = 1, expect_ok(&cfg);
    cfg = base, cfg.slow_rate_pct = 100, expect_ok(&cfg);

    cfg = base, cfg.slow_call_ms = 0, expect_ok(&cfg);

    cfg = base, cfg.open_ms = 0, expect_inval(&cfg);
    cfg = base, cfg.open_ms = 1, expect_ok(&cfg);

    cfg = base, cfg.half_open_probes = 0, expect_inval(&cfg);
    cfg = base, cfg.half_open_probes = 65, expect_inval(&cfg);
    cfg = base, cfg.half_open_probes = 1, expect_ok(&cfg);
    cfg = base, cfg.half_open_probes = 64, expect_ok(&cfg);
}

static void test_opens_exactly_at_failure_threshold(void **state)
{
    crm_breaker_config_t cfg = small_config(); /* window 10, minimum 4, failure 50 % */
    fake_clock_t clock = {.now = 7000};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    call(&b, 0, 1);
    call(&b, 0, 1);
    call(&b, 0, 1);
    call(&b, 1, 1);
    assert_window(&b, 4, 1, 0); /* 25 % */
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    call(&b, 1, 1);
    assert_window(&b, 5, 2, 0); /* 40 % */
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    assert_int_equal(clock.calls, 0);
    call(&b, 1, 1);
    assert_window(&b, 6, 3, 0); /* 50 %: the threshold itself opens */
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    assert_int_equal(b.transitions[CRM_BREAKER_OPEN], 1);
    assert_int_equal(crm_breaker_retry_after_ms(&b), 500);
    crm_breaker_dispose(&b);
}

static void test_rate_uses_exact_integer_comparison(void **state)
{
    /* 1 failure in 3 is 33.3 %: at a 34 % threshold it must stay closed, at 33 % it must open. */
    crm_breaker_config_t cfg = small_config();
    cfg.window_size = 3, cfg.minimum_calls = 3, cfg.failure_rate_pct = 34;
    fake_clock_t clock = {0};
    crm_breaker_t b;

    init_ok(&b, &cfg, &clock);
    call(&b, 1, 1);
    call(&b, 0, 1);
    call(&b, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    crm_breaker_dispose(&b);

    cfg.failure_rate_pct = 33;
    init_ok(&b, &cfg, &clock);
    call(&b, 1, 1);
    call(&b, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    call(&b, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    crm_breaker_dispose(&b);
}

static void test_no_evaluation_before_minimum_calls(void **state)
{
    crm_breaker_config_t cfg = small_config();
    cfg.minimum_calls = 5;
    fake_clock_t clock = {0};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    for (int i = 0; i < 4; i++)
        call(&b, 1, 1);
    assert_window(&b, 4, 4, 0); /* 100 % failures, but only 4 outcomes */
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    assert_int_equal(b.transitions[CRM_BREAKER_OPEN], 0);
    call(&b, 1, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    crm_breaker_dispose(&b);
}

static void test_opens_on_slow_rate(void **state)
{
    crm_breaker_config_t cfg = small_config();
    cfg.minimum_calls = 5, cfg.slow_rate_pct = 80, cfg.slow_call_ms = 100;
    fake_clock_t clock = {0};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    call(&b, 0, 100); /* exactly slow_call_ms is not slow */
    call(&b, 0, 101);
    call(&b, 0, 5000);
    call(&b, 0, 101);
    assert_window(&b, 4, 0, 3);
    call(&b, 0, 101);
    assert_window(&b, 5, 0, 4); /* 80 %, every call successful */
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    crm_breaker_dispose(&b);
}

static void test_slow_failure_counts_in_both(void **state)
{
    crm_breaker_config_t cfg = small_config();
    cfg.minimum_calls = 2, cfg.failure_rate_pct = 100, cfg.slow_rate_pct = 100;
    fake_clock_t clock = {0};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    call(&b, 1, 101);
    assert_window(&b, 1, 1, 1);
    call(&b, 0, 1);
    assert_window(&b, 2, 1, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    crm_breaker_dispose(&b);
}

static void test_slow_rule_disabled(void **state)
{
    crm_breaker_config_t cfg = small_config(); /* slow_rate_pct 0 */
    cfg.half_open_probes = 1;
    fake_clock_t clock = {0};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    for (int i = 0; i < 10; i++)
        call(&b, 0, 10000);
    /* Slow calls are still counted for the figures, but do not open the breaker. */
    assert_window(&b, 10, 0, 10);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);

    /* Nor does a slow probe reopen it: with the rule disabled slowness is not a verdict. */
    trip(&b);
    clock.now += 500;
    call(&b, 0, 10000);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    crm_breaker_dispose(&b);
}

static void test_window_forgets_old_outcomes(void **state)
{
    crm_breaker_config_t cfg = small_config();
    cfg.window_size = 4, cfg.minimum_calls = 4, cfg.failure_rate_pct = 75;
    fake_clock_t clock = {0};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    call(&b, 1, 1);
    call(&b, 1, 1);
    call(&b, 0, 1);
    call(&b, 0, 1);
    assert_window(&b, 4, 2, 0); /* 50 %, below 75 % */
    call(&b, 0, 1);
    assert_window(&b, 4, 1, 0); /* the first failure fell out */
    call(&b, 0, 1);
    assert_window(&b, 4, 0, 0); /* and the second */
    call(&b, 1, 1);
    call(&b, 1, 1);
    /* Four failures recorded in all, but only two are in the window: a cumulative count would have opened. */
    assert_window(&b, 4, 2, 0);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    call(&b, 1, 1);
    assert_window(&b, 4, 3, 0);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    crm_breaker_dispose(&b);
}

static void test_window_wraps_many_times(void **state)
{
    /* Slow bits are evicted as exactly as failure bits, across many trips round the ring. */
    crm_breaker_config_t cfg = small_config();
    cfg.window_size = 3, cfg.minimum_calls = 3, cfg.failure_rate_pct = 100, cfg.slow_rate_pct = 100;
    fake_clock_t clock = {0};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    for (int i = 0; i < 100; i++) {
        /* Pattern F, S, ok repeating: the window always holds one of each. */
        call(&b, i % 3 == 0, i % 3 == 1 ? 101 : 1);
        if (i >= 2)
            assert_window(&b, 3, 1, 1);
    }
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    crm_breaker_dispose(&b);
}

static void test_open_refuses_and_counts(void **state)
{
    crm_breaker_config_t cfg = small_config();
    fake_clock_t clock = {.now = 1000};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    trip(&b);
    assert_int_equal(b.rejected, 0);
    for (int i = 1; i <= 5; i++) {
        assert_int_equal(crm_breaker_acquire(&b), 0);
        assert_int_equal(b.rejected, (uint64_t)i);
    }
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    assert_int_equal(b.transitions[CRM_BREAKER_HALF_OPEN], 0);
    /* The window that opened the breaker is still reported. */
    assert_window(&b, 4, 4, 0);
    crm_breaker_dispose(&b);
}

static void test_half_open_only_after_open_ms(void **state)
{
    crm_breaker_config_t cfg = small_config(); /* open_ms 500 */
    fake_clock_t clock = {.now = 1000};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    trip(&b); /* opened_at 1000 */
    assert_int_equal(crm_breaker_retry_after_ms(&b), 500);
    clock.now = 1250;
    assert_int_equal(crm_breaker_retry_after_ms(&b), 250);
    clock.now = 1499;
    assert_int_equal(crm_breaker_retry_after_ms(&b), 1);
    assert_int_equal(crm_breaker_acquire(&b), 0);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    assert_int_equal(b.rejected, 1);

    clock.now = 1500;
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_HALF_OPEN);
    assert_int_equal(b.transitions[CRM_BREAKER_HALF_OPEN], 1);
    assert_int_equal(crm_breaker_retry_after_ms(&b), 0);
    assert_true(crm_breaker_acquire(&b) != 0);
    crm_breaker_dispose(&b);
}

static void test_half_open_through_acquire(void **state)
{
    /* The lazy transition also happens inside acquire, which then admits the caller as a probe. */
    crm_breaker_config_t cfg = small_config();
    fake_clock_t clock = {.now = 1000};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    trip(&b);
    clock.now = 5000;
    assert_true(crm_breaker_acquire(&b) != 0);
    assert_int_equal(b.transitions[CRM_BREAKER_HALF_OPEN], 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_HALF_OPEN);
    assert_int_equal(b.rejected, 0);
    crm_breaker_dispose(&b);
}

static void test_clock_going_backwards_keeps_open(void **state)
{
    crm_breaker_config_t cfg = small_config();
    fake_clock_t clock = {.now = 1000};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    trip(&b);
    clock.now = 10;
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    assert_int_equal(crm_breaker_retry_after_ms(&b), 500);
    crm_breaker_dispose(&b);
}

/* Trips the breaker and waits out open_ms (which the caller passes: it is the config's), leaving it HALF_OPEN. */
static void to_half_open(crm_breaker_t *b, fake_clock_t *clock, uint64_t open_ms)
{
    trip(b);
    clock->now += open_ms;
    assert_int_equal(crm_breaker_state(b), CRM_BREAKER_HALF_OPEN);
}

static void test_half_open_probe_limit(void **state)
{
    crm_breaker_config_t cfg = small_config();
    cfg.half_open_probes = 3;
    fake_clock_t clock = {.now = 1000};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    to_half_open(&b, &clock, cfg.open_ms);
    crm_breaker_permit_t p1 = crm_breaker_acquire(&b);
    crm_breaker_permit_t p2 = crm_breaker_acquire(&b);
    crm_breaker_permit_t p3 = crm_breaker_acquire(&b);
    assert_true(p1 != 0);
    assert_true(p2 != 0);
    assert_true(p3 != 0);
    assert_int_equal(crm_breaker_acquire(&b), 0);
    assert_int_equal(crm_breaker_acquire(&b), 0);
    assert_int_equal(b.rejected, 2);
    assert_int_equal(crm_breaker_retry_after_ms(&b), 0);

    /* A successful probe keeps its slot: the trial needs no more calls than the three already admitted. */
    crm_breaker_record(&b, p1, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_HALF_OPEN);
    assert_int_equal(crm_breaker_acquire(&b), 0);
    assert_int_equal(b.rejected, 3);
    crm_breaker_record(&b, p2, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_HALF_OPEN);
    crm_breaker_record(&b, p3, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    crm_breaker_dispose(&b);
}

static void test_half_open_closes_with_empty_window(void **state)
{
    crm_breaker_config_t cfg = small_config(); /* minimum 4, failure 50 %, 2 probes */
    fake_clock_t clock = {.now = 1000};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    to_half_open(&b, &clock, cfg.open_ms);
    assert_window(&b, 4, 4, 0);
    call(&b, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_HALF_OPEN);
    call(&b, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    assert_window(&b, 0, 0, 0);

    /* With the old four failures still in the window this one would reopen it; in an empty window it cannot. */
    call(&b, 1, 1);
    assert_window(&b, 1, 1, 0);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    call(&b, 1, 1);
    call(&b, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    call(&b, 1, 1); /* 3 of 4 */
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    crm_breaker_dispose(&b);
}

static void test_half_open_reopens_on_failed_probe(void **state)
{
    crm_breaker_config_t cfg = small_config();
    cfg.half_open_probes = 3;
    fake_clock_t clock = {.now = 1000};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    to_half_open(&b, &clock, cfg.open_ms); /* now 1500 */
    crm_breaker_permit_t p1 = crm_breaker_acquire(&b);
    crm_breaker_permit_t p2 = crm_breaker_acquire(&b);
    crm_breaker_record(&b, p1, 0, 1);
    clock.now = 1600;
    crm_breaker_record(&b, p2, 1, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    assert_int_equal(b.transitions[CRM_BREAKER_OPEN], 2);
    /* The new open period counts from the failed probe. */
    assert_int_equal(crm_breaker_retry_after_ms(&b), 500);
    assert_int_equal(crm_breaker_acquire(&b), 0);
    clock.now = 2099;
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    clock.now = 2100;
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_HALF_OPEN);

    /* The new trial starts from nothing: the earlier success does not carry over. */
    call(&b, 0, 1);
    call(&b, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_HALF_OPEN);
    call(&b, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    crm_breaker_dispose(&b);
}

static void test_half_open_reopens_on_slow_probe(void **state)
{
    crm_breaker_config_t cfg = small_config();
    cfg.slow_rate_pct = 100, cfg.slow_call_ms = 100;
    fake_clock_t clock = {.now = 1000};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    to_half_open(&b, &clock, cfg.open_ms);
    call(&b, 0, 100); /* at the limit: not slow, a success */
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_HALF_OPEN);
    call(&b, 0, 101);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    assert_int_equal(b.transitions[CRM_BREAKER_OPEN], 2);
    assert_int_equal(b.transitions[CRM_BREAKER_CLOSED], 0);
    crm_breaker_dispose(&b);
}

static void test_stale_permits_ignored(void **state)
{
    crm_breaker_config_t cfg = small_config();
    cfg.half_open_probes = 1;
    fake_clock_t clock = {.now = 1000};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    /* Admitted while CLOSED, still running when the breaker opens. */
    crm_breaker_permit_t slow_call = crm_breaker_acquire(&b);
    crm_breaker_permit_t slow_call2 = crm_breaker_acquire(&b);
    assert_true(slow_call != 0);
    to_half_open(&b, &clock, cfg.open_ms);

    /* Its success must not close the breaker as if it were the probe, nor its failure reopen it. */
    crm_breaker_record(&b, slow_call, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_HALF_OPEN);
    crm_breaker_record(&b, slow_call2, 1, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_HALF_OPEN);

    crm_breaker_permit_t probe = crm_breaker_acquire(&b);
    assert_true(probe != 0);
    assert_true(probe != slow_call);
    /* Releasing a stale permit frees no probe slot. */
    crm_breaker_release(&b, slow_call);
    assert_int_equal(crm_breaker_acquire(&b), 0);
    /* A refusal passed back as a permit is ignored too. */
    crm_breaker_record(&b, 0, 1, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_HALF_OPEN);

    crm_breaker_record(&b, probe, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);

    /* The probe's permit is stale in the new CLOSED period: recording it again changes nothing. */
    crm_breaker_record(&b, probe, 1, 1);
    assert_window(&b, 0, 0, 0);
    crm_breaker_permit_t fresh = crm_breaker_acquire(&b);
    assert_true(fresh != 0);
    assert_true(fresh != probe);
    crm_breaker_record(&b, fresh, 1, 1);
    assert_window(&b, 1, 1, 0);
    crm_breaker_dispose(&b);
}

static void test_stale_permit_after_closed_trip(void **state)
{
    /* A call admitted while CLOSED that completes after a later call opened the breaker is not counted. */
    crm_breaker_config_t cfg = small_config();
    fake_clock_t clock = {.now = 1000};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    crm_breaker_permit_t p = crm_breaker_acquire(&b);
    trip(&b);
    crm_breaker_record(&b, p, 1, 1);
    assert_window(&b, 4, 4, 0);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    crm_breaker_release(&b, p);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    crm_breaker_dispose(&b);
}

static void test_release_returns_probe_slot(void **state)
{
    crm_breaker_config_t cfg = small_config();
    cfg.half_open_probes = 1;
    fake_clock_t clock = {.now = 1000};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    /* In CLOSED a release is a no-op. */
    crm_breaker_permit_t c = crm_breaker_acquire(&b);
    crm_breaker_release(&b, c);
    assert_window(&b, 0, 0, 0);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);

    to_half_open(&b, &clock, cfg.open_ms);
    crm_breaker_permit_t p = crm_breaker_acquire(&b);
    assert_true(p != 0);
    assert_int_equal(crm_breaker_acquire(&b), 0);
    crm_breaker_release(&b, p);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_HALF_OPEN);
    /* A second release of the same permit does not make a second slot. */
    crm_breaker_release(&b, p);
    crm_breaker_permit_t q = crm_breaker_acquire(&b);
    assert_true(q != 0);
    assert_int_equal(q, p); /* same generation: no transition happened */
    assert_int_equal(crm_breaker_acquire(&b), 0);
    assert_int_equal(b.rejected, 2);

    /* The replacement probe decides the trial. */
    crm_breaker_record(&b, q, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    crm_breaker_dispose(&b);
}

static void test_double_record_in_half_open_ignored(void **state)
{
    crm_breaker_config_t cfg = small_config();
    cfg.half_open_probes = 2;
    fake_clock_t clock = {.now = 1000};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    to_half_open(&b, &clock, cfg.open_ms);
    crm_breaker_permit_t p = crm_breaker_acquire(&b);
    crm_breaker_record(&b, p, 0, 1);
    /* A caller bug: the same permit recorded twice. It must not count as the second success. */
    crm_breaker_record(&b, p, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_HALF_OPEN);
    call(&b, 0, 1);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    crm_breaker_dispose(&b);
}

static void test_transition_callback_and_counters(void **state)
{
    crm_breaker_config_t cfg = small_config(); /* 2 probes */
    fake_clock_t clock = {.now = 1000};
    transition_log_t log = {0};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);
    crm_breaker_on_transition(&b, log_transition, &log);

    crm_breaker_permit_t g1 = crm_breaker_acquire(&b);
    trip(&b);         /* closed -> open */
    clock.now += 500; /* open -> half_open in state() */
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_HALF_OPEN);
    crm_breaker_permit_t g3 = crm_breaker_acquire(&b);
    crm_breaker_record(&b, g3, 1, 1); /* half_open -> open */
    clock.now += 500;
    crm_breaker_permit_t g5 = crm_breaker_acquire(&b); /* open -> half_open inside acquire */
    crm_breaker_record(&b, g5, 0, 1);
    call(&b, 0, 1); /* half_open -> closed */

    assert_int_equal(log.n, 5);
    const crm_breaker_state_t from[] = {CRM_BREAKER_CLOSED, CRM_BREAKER_OPEN, CRM_BREAKER_HALF_OPEN, CRM_BREAKER_OPEN,
                                        CRM_BREAKER_HALF_OPEN};
    const crm_breaker_state_t to[] = {CRM_BREAKER_OPEN, CRM_BREAKER_HALF_OPEN, CRM_BREAKER_OPEN, CRM_BREAKER_HALF_OPEN,
                                      CRM_BREAKER_CLOSED};
    const uint64_t seen[] = {1, 1, 2, 2, 1};
    for (int i = 0; i < 5; i++) {
        assert_ptr_equal(log.b[i], &b);
        assert_int_equal(log.from[i], from[i]);
        assert_int_equal(log.to[i], to[i]);
        /* The counter is already updated when the callback runs. */
        assert_int_equal(log.count_seen[i], seen[i]);
    }
    assert_int_equal(b.transitions[CRM_BREAKER_CLOSED], 1);
    assert_int_equal(b.transitions[CRM_BREAKER_OPEN], 2);
    assert_int_equal(b.transitions[CRM_BREAKER_HALF_OPEN], 2);

    /* Every transition produced a new generation: permits from each period differ. */
    crm_breaker_permit_t g6 = crm_breaker_acquire(&b);
    assert_true(g1 != g3 && g3 != g5 && g5 != g6 && g1 != g6);

    /* Clearing the callback stops the calls. */
    crm_breaker_on_transition(&b, NULL, NULL);
    trip(&b);
    assert_int_equal(log.n, 5);
    assert_int_equal(b.transitions[CRM_BREAKER_OPEN], 3);
    crm_breaker_dispose(&b);
}

static void test_window_of_one(void **state)
{
    crm_breaker_config_t cfg = small_config();
    cfg.window_size = 1, cfg.minimum_calls = 1, cfg.failure_rate_pct = 100;
    fake_clock_t clock = {0};
    crm_breaker_t b;
    init_ok(&b, &cfg, &clock);

    call(&b, 0, 1);
    call(&b, 0, 1);
    assert_window(&b, 1, 0, 0);
    call(&b, 1, 1);
    assert_window(&b, 1, 1, 0);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    crm_breaker_dispose(&b);
}

static void test_issue_scenario(void **state)
{
    /* Twenty consecutive database failures with the production window open the breaker; while open calls fail
     * fast; after open_ms one probe goes through and its success closes the breaker. */
    crm_breaker_config_t cfg;
    crm_breaker_config_default(&cfg);
    cfg.half_open_probes = 1;
    fake_clock_t clock = {.now = 100000};
    transition_log_t log = {0};
    crm_breaker_t b;
    assert_int_equal(crm_breaker_init(&b, "postgresql", &cfg, fake_now, &clock), 0);
    crm_breaker_on_transition(&b, log_transition, &log);

    for (int i = 0; i < 19; i++) {
        call(&b, 1, 10);
        clock.now += 1;
    }
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    call(&b, 1, 10);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_OPEN);
    assert_window(&b, 20, 20, 0);

    for (int i = 0; i < 50; i++)
        assert_int_equal(crm_breaker_acquire(&b), 0);
    assert_int_equal(b.rejected, 50);
    assert_int_equal(crm_breaker_retry_after_ms(&b), 5000);

    clock.now += 4999;
    assert_int_equal(crm_breaker_acquire(&b), 0);
    clock.now += 1;
    crm_breaker_permit_t probe = crm_breaker_acquire(&b);
    assert_true(probe != 0);
    assert_int_equal(crm_breaker_acquire(&b), 0); /* only one probe */
    assert_int_equal(b.rejected, 52);
    crm_breaker_record(&b, probe, 0, 3);
    assert_int_equal(crm_breaker_state(&b), CRM_BREAKER_CLOSED);
    assert_window(&b, 0, 0, 0);
    assert_true(crm_breaker_acquire(&b) != 0);

    assert_int_equal(log.n, 3);
    assert_int_equal(log.to[0], CRM_BREAKER_OPEN);
    assert_int_equal(log.to[1], CRM_BREAKER_HALF_OPEN);
    assert_int_equal(log.to[2], CRM_BREAKER_CLOSED);
    crm_breaker_dispose(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_default),
        cmocka_unit_test(test_state_names),
        cmocka_unit_test(test_invalid_config),
        cmocka_unit_test(test_opens_exactly_at_failure_threshold),
        cmocka_unit_test(test_rate_uses_exact_integer_comparison),
        cmocka_unit_test(test_no_evaluation_before_minimum_calls),
        cmocka_unit_test(test_opens_on_slow_rate),
        cmocka_unit_test(test_slow_failure_counts_in_both),
        cmocka_unit_test(test_slow_rule_disabled),
        cmocka_unit_test(test_window_forgets_old_outcomes),
        cmocka_unit_test(test_window_wraps_many_times),
        cmocka_unit_test(test_open_refuses_and_counts),
        cmocka_unit_test(test_half_open_only_after_open_ms),
        cmocka_unit_test(test_half_open_through_acquire),
        cmocka_unit_test(test_clock_going_backwards_keeps_open),
        cmocka_unit_test(test_half_open_probe_limit),
        cmocka_unit_test(test_half_open_closes_with_empty_window),
        cmocka_unit_test(test_half_open_reopens_on_failed_probe),
        cmocka_unit_test(test_half_open_reopens_on_slow_probe),
        cmocka_unit_test(test_stale_permits_ignored),
        cmocka_unit_test(test_stale_permit_after_closed_trip),
        cmocka_unit_test(test_release_returns_probe_slot),
        cmocka_unit_test(test_double_record_in_half_open_ignored),
        cmocka_unit_test(test_transition_callback_and_counters),
        cmocka_unit_test(test_window_of_one),
        cmocka_unit_test(test_issue_scenario),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
