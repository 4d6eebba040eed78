/*
 * Scaffolding shared by the C integration tests that drive an event loop scenario by scenario: failing loudly with
 * the scenario's name, a loop with a ticking timer (so that uv_run(UV_RUN_ONCE) returns within milliseconds and
 * every wait can be bounded), and the end-of-scenario check that the loop closes cleanly (a handle left open is a
 * leak).
 */
#ifndef CRM_TEST_SCENARIO_H
#define CRM_TEST_SCENARIO_H

#include <stdint.h>
#include <uv.h>

/* The scenario running now, named in failure messages. */
extern const char *g_scenario;

/* Prints "FAIL [scenario] file:line: check `expr` failed: message" and exits 1 (exit, not abort: atexit handlers
 * remove throwaway clusters and fakes). */
void crm_test_fail(const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (!(cond))                                                                                                   \
            crm_test_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                                                     \
    } while (0)

/* Milliseconds since a uv_hrtime() reading. */
double ms_since(uint64_t start_ns);

typedef struct st_env_t {
    uv_loop_t loop;
    uv_timer_t tick; /* fires every 2 ms: keeps UV_RUN_ONCE from blocking longer than that */
} env_t;

/* Starts scenario `name` on a fresh loop whose tick calls on_tick (NULL: nothing). Prints "== name". */
void env_open(env_t *e, const char *name, uv_timer_cb on_tick);

/* Closes the tick, lets every close callback run (for at most 2 s) and requires uv_loop_close() == 0, listing the
 * handles left open otherwise. */
void env_close(env_t *e);

/* Runs the loop for ms milliseconds. */
void run_for(env_t *e, double ms);

/* Runs the loop until cond holds, failing after timeout_ms. */
#define RUN_UNTIL(e, cond, timeout_ms)                                                                                 \
    do {                                                                                                               \
        uint64_t run_until_t0_ = uv_hrtime();                                                                          \
        while (!(cond)) {                                                                                              \
            CHECK(ms_since(run_until_t0_) < (timeout_ms), "still false after %d ms", (int)(timeout_ms));               \
            uv_run(&(e)->loop, UV_RUN_ONCE);                                                                           \
        }                                                                                                              \
    } while (0)

#endif
