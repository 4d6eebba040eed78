/* Unit tests for lib/timerq: ordering, stop, restart, capacity, re-entrancy and clean close, on a real loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "err.h"
#include "rand.h"
#include "timerq.h"

#define N 500

typedef struct {
    crm_timer_t timer;
    int id;
} item_t;

static int fired[N * 2];
static size_t nfired;
static crm_timerq_t *current_q;

static void on_fire(crm_timer_t *t)
{
    item_t *it = (item_t *)((char *)t - offsetof(item_t, timer));
    fired[nfired++] = it->id;
}

static void run_until_idle(uv_loop_t *loop, crm_timerq_t *q)
{
    while (crm_timerq_size(q) > 0)
        uv_run(loop, UV_RUN_ONCE);
}

static void close_and_check(uv_loop_t *loop, crm_timerq_t *q)
{
    crm_timerq_close(q, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}

static void test_fires_in_deadline_order(void **state)
{
    uv_loop_t loop;
    crm_timerq_t q;
    static item_t items[N];
    uv_loop_init(&loop);
    assert_int_equal(crm_timerq_init(&loop, &q, N), 0);
    uint64_t now = uv_now(&loop);
    nfired = 0;
    /* Deadlines in a random order, many equal, some already past. */
    for (int i = 0; i < N; ++i) {
        items[i].id = i;
        crm_timer_init(&items[i].timer);
        uint64_t d = now + crm_rand_below(40);
        assert_int_equal(crm_timerq_start(&q, &items[i].timer, d, on_fire), 0);
    }
    assert_int_equal(crm_timerq_size(&q), N);
    run_until_idle(&loop, &q);
    assert_int_equal(nfired, N);
    for (size_t i = 1; i < nfired; ++i)
        assert_true(items[fired[i - 1]].timer.deadline <= items[fired[i]].timer.deadline);
    for (int i = 0; i < N; ++i)
        assert_false(crm_timer_is_active(&items[i].timer));
    close_and_check(&loop, &q);
}

static void test_stop_and_restart(void **state)
{
    uv_loop_t loop;
    crm_timerq_t q;
    static item_t items[N];
    uv_loop_init(&loop);
    assert_int_equal(crm_timerq_init(&loop, &q, N), 0);
    uint64_t now = uv_now(&loop);
    nfired = 0;
    for (int i = 0; i < N; ++i) {
        items[i].id = i;
        crm_timer_init(&items[i].timer);
        assert_int_equal(crm_timerq_start(&q, &items[i].timer, now + 5 + (uint64_t)(i % 17), on_fire), 0);
    }
    /* Stop every third (from the middle of the heap too), move every fifth much later, then earlier again. */
    size_t expected = 0;
    for (int i = 0; i < N; ++i) {
        if (i % 3 == 0) {
            crm_timerq_stop(&q, &items[i].timer);
            crm_timerq_stop(&q, &items[i].timer); /* stopping twice is a no-op */
            assert_false(crm_timer_is_active(&items[i].timer));
            continue;
        }
        ++expected;
        if (i % 5 == 0) {
            assert_int_equal(crm_timerq_start(&q, &items[i].timer, now + 1000, on_fire), 0);
            assert_int_equal(crm_timerq_start(&q, &items[i].timer, now + 1, on_fire), 0);
        }
    }
    assert_int_equal(crm_timerq_size(&q), expected);
    run_until_idle(&loop, &q);
    assert_int_equal(nfired, expected);
    for (size_t i = 0; i < nfired; ++i)
        assert_int_not_equal(fired[i] % 3, 0);
    for (size_t i = 1; i < nfired; ++i)
        assert_true(items[fired[i - 1]].timer.deadline <= items[fired[i]].timer.deadline);
    close_and_check(&loop, &q);
}

static void test_capacity_is_a_hard_bound(void **state)
{
    uv_loop_t loop;
    crm_timerq_t q;
    item_t items[4];
    uv_loop_init(&loop);
    assert_int_equal(crm_timerq_init(&loop, &q, 3), 0);
    uint64_t now = uv_now(&loop);
    for (int i = 0; i < 4; ++i)
        crm_timer_init(&items[i].timer);
    for (int i = 0; i < 3; ++i)
        assert_int_equal(crm_timerq_start(&q, &items[i].timer, now + 10, on_fire), 0);
    assert_int_equal(crm_timerq_start(&q, &items[3].timer, now + 10, on_fire), CRM_E_LIMIT);
    assert_false(crm_timer_is_active(&items[3].timer));
    /* Restarting an active timer on a full queue moves it; it is not a new entry. */
    assert_int_equal(crm_timerq_start(&q, &items[0].timer, now + 1, on_fire), 0);
    for (int i = 0; i < 3; ++i)
        crm_timerq_stop(&q, &items[i].timer);
    assert_int_equal(crm_timerq_size(&q), 0);
    assert_int_equal(crm_timerq_init(&loop, &(crm_timerq_t){0}, 0), CRM_E_INVAL);
    close_and_check(&loop, &q);
}

/* A callback that re-arms itself for "now" must not be fired again before the loop has polled for I/O: with the
 * re-arm repeated until the third firing, a spinning queue would reach 3 within one uv_run(UV_RUN_ONCE), whose
 * timer phases (one before and one after the poll) allow at most 2. */
static int rearm_count;
static void on_rearm(crm_timer_t *t)
{
    ++rearm_count;
    if (rearm_count < 3)
        assert_int_equal(crm_timerq_start(current_q, t, crm_timerq_now(current_q), on_rearm), 0);
}

static void test_rearm_from_callback_runs_next_iteration(void **state)
{
    uv_loop_t loop;
    crm_timerq_t q;
    item_t it;
    uv_loop_init(&loop);
    assert_int_equal(crm_timerq_init(&loop, &q, 4), 0);
    current_q = &q;
    crm_timer_init(&it.timer);
    rearm_count = 0;
    assert_int_equal(crm_timerq_start(&q, &it.timer, uv_now(&loop), on_rearm), 0);
    uv_run(&loop, UV_RUN_ONCE);
    assert_true(rearm_count >= 1 && rearm_count <= 2);
    run_until_idle(&loop, &q);
    assert_int_equal(rearm_count, 3);
    close_and_check(&loop, &q);
}

/* The same with many timers pending far in the future: their presence must not let the re-armed timer fire again
 * within the pass (a budget counting all timers, rather than the pass a timer was started in, would). */
static void test_rearm_with_other_timers_pending(void **state)
{
    uv_loop_t loop;
    crm_timerq_t q;
    item_t it, far[8];
    uv_loop_init(&loop);
    assert_int_equal(crm_timerq_init(&loop, &q, 16), 0);
    current_q = &q;
    uint64_t now = uv_now(&loop);
    for (int i = 0; i < 8; ++i) {
        crm_timer_init(&far[i].timer);
        assert_int_equal(crm_timerq_start(&q, &far[i].timer, now + 600000, on_fire), 0);
    }
    crm_timer_init(&it.timer);
    rearm_count = 0;
    assert_int_equal(crm_timerq_start(&q, &it.timer, now, on_rearm), 0);
    uv_run(&loop, UV_RUN_ONCE);
    assert_true(rearm_count >= 1 && rearm_count <= 2);
    while (rearm_count < 3)
        uv_run(&loop, UV_RUN_ONCE);
    for (int i = 0; i < 8; ++i)
        crm_timerq_stop(&q, &far[i].timer);
    close_and_check(&loop, &q);
}

/* Stopping the earliest timer and then everything leaves no armed uv timer: uv_run returns instead of waiting. */
static void test_idle_after_stop_does_not_keep_the_loop_alive(void **state)
{
    uv_loop_t loop;
    crm_timerq_t q;
    item_t a, b;
    uv_loop_init(&loop);
    assert_int_equal(crm_timerq_init(&loop, &q, 4), 0);
    crm_timer_init(&a.timer);
    crm_timer_init(&b.timer);
    uint64_t now = uv_now(&loop);
    assert_int_equal(crm_timerq_start(&q, &a.timer, now + 60000, on_fire), 0);
    assert_int_equal(crm_timerq_start(&q, &b.timer, now + 120000, on_fire), 0);
    crm_timerq_stop(&q, &a.timer);
    crm_timerq_stop(&q, &b.timer);
    uint64_t t0 = uv_hrtime();
    uv_run(&loop, UV_RUN_DEFAULT); /* must return at once: nothing is pending */
    assert_true(uv_hrtime() - t0 < 1000000000ull);
    close_and_check(&loop, &q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fires_in_deadline_order),
        cmocka_unit_test(test_stop_and_restart),
        cmocka_unit_test(test_capacity_is_a_hard_bound),
        cmocka_unit_test(test_rearm_from_callback_runs_next_iteration),
        cmocka_unit_test(test_rearm_with_other_timers_pending),
        cmocka_unit_test(test_idle_after_stop_does_not_keep_the_loop_alive),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
