#include "scenario.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

const char *g_scenario = "setup";

void crm_test_fail(const char *file, int line, const char *expr, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "\nFAIL [%s] %s:%d: check `%s` failed: ", g_scenario, file, line, expr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    exit(1);
}

double ms_since(uint64_t start_ns)
{
    return (double)(uv_hrtime() - start_ns) / 1e6;
}

static void on_idle_tick(uv_timer_t *t)
{
    (void)t;
}

void env_open(env_t *e, const char *name, uv_timer_cb on_tick)
{
    g_scenario = name;
    printf("== %s\n", name);
    fflush(stdout);
    CHECK(uv_loop_init(&e->loop) == 0, "uv_loop_init");
    uv_timer_init(&e->loop, &e->tick);
    uv_timer_start(&e->tick, on_tick != NULL ? on_tick : on_idle_tick, 2, 2);
}

static void print_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    fprintf(stderr, "  leaked handle: %s active=%d closing=%d\n", uv_handle_type_name(uv_handle_get_type(h)),
            uv_is_active(h), uv_is_closing(h));
}

void env_close(env_t *e)
{
    uv_close((uv_handle_t *)&e->tick, NULL);
    uint64_t t0 = uv_hrtime();
    while (uv_run(&e->loop, UV_RUN_NOWAIT) != 0 && ms_since(t0) < 2000)
        ;
    int rc = uv_loop_close(&e->loop);
    if (rc != 0)
        uv_walk(&e->loop, print_handle, NULL);
    CHECK(rc == 0, "uv_loop_close returned %s: handles leaked", uv_err_name(rc));
}

void run_for(env_t *e, double ms)
{
    uint64_t t0 = uv_hrtime();
    while (ms_since(t0) < ms)
        uv_run(&e->loop, UV_RUN_ONCE);
}
