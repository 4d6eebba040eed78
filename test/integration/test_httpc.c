/*
 * lib/httpc against the fake upstream and the fake SMTP sink (test/fakes), through the real network stack.
 *
 * Scenarios: 1 breaker (20 consecutive 500s open it; while open sends fail in under a millisecond without reaching
 * the network; after the open duration one probe goes through and its success closes the breaker), 2 deadline (an
 * answer after 3 s with a 500 ms deadline → CRM_E_DEADLINE at 500 ms; the connection is not reused), 3 retries (503
 * then 200; 429 with Retry-After: 1 waits a second; a POST without an idempotency key is not retried, with one it
 * is; retries stop at the deadline; a Retry-After beyond the deadline ends at once), 4 faults (connection closed
 * mid-response, response over the size limit, connection refused, malformed JSON passed through untouched, queue
 * full, cancel), 5 10,000 requests with 64 in flight, 6 SMTP submission to the sink (with STARTTLS + AUTH, and a
 * refused one), 7 close with requests in flight.
 *
 * Every scenario runs on a fresh uv_loop_t and ends by closing the client and asserting uv_loop_close() == 0: a
 * handle httpc forgot to close fails the test. Figures are printed as "figure:" lines.
 *
 * Arguments: scenario numbers to run only those. Environment: CRMD_SOURCE_ROOT (for test/fakes).
 */
#include <curl/curl.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "err.h"
#include "fake_proc.h"
#include "httpc.h"

static const char *g_scenario = "setup";
static fake_proc_t g_up, g_smtp;
static char g_tmpdir[64], g_cert[128], g_key[128];

static void fail(const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));

static void fail(const char *file, int line, const char *expr, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "\nFAIL [%s] %s:%d: check `%s` failed: ", g_scenario, file, line, expr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fake_stop_all();
    exit(1);
}

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (!(cond))                                                                                                   \
            fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                                                              \
    } while (0)

static void on_fatal(int sig)
{
    fake_stop_all();
    signal(sig, SIG_DFL);
    raise(sig);
}

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- fake control ---- */

static void rule(const char *json)
{
    json_t *r = fake_control(&g_up, "POST", "/rules", json);
    CHECK(r != NULL, "rule %s refused", json);
    json_decref(r);
}

static void reset_fake(void)
{
    json_t *r = fake_control(&g_up, "DELETE", "/rules", NULL);
    CHECK(r != NULL, "cannot reset the fake");
    json_decref(r);
    r = fake_control(&g_up, "DELETE", "/requests", NULL);
    CHECK(r != NULL, "cannot clear the request log");
    json_decref(r);
}

/* The fake's request log: count of requests to path, and the connection id of the i-th one (-1 for the last). */
static size_t requests_to(const char *path, int index, long *conn)
{
    json_t *r = fake_control(&g_up, "GET", "/requests", NULL);
    CHECK(r != NULL, "no request log");
    json_t *list = json_object_get(r, "requests");
    size_t n = 0, i;
    json_t *item;
    long last_conn = -1, nth_conn = -1;
    json_array_foreach(list, i, item)
    {
        if (strcmp(json_string_value(json_object_get(item, "path")), path) != 0)
            continue;
        last_conn = (long)json_integer_value(json_object_get(item, "conn"));
        if ((int)n == index)
            nth_conn = last_conn;
        ++n;
    }
    if (conn != NULL)
        *conn = index < 0 ? last_conn : nth_conn;
    json_decref(r);
    return n;
}

/* ---- loop environment ---- */

typedef struct {
    uv_loop_t loop;
    crm_httpc_t *client;
    int closed;
} env_t;

static void env_init(env_t *e, const char *scenario, size_t max_requests)
{
    g_scenario = scenario;
    fprintf(stderr, "scenario: %s\n", scenario);
    memset(e, 0, sizeof(*e));
    CHECK(uv_loop_init(&e->loop) == 0, "loop");
    crm_httpc_config_t cfg;
    crm_httpc_config_default(&cfg);
    cfg.max_requests = max_requests;
    CHECK(crm_httpc_create(&e->loop, &cfg, &e->client) == 0, "create");
}

static void on_closed(void *data)
{
    ((env_t *)data)->closed = 1;
}

static void print_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    fprintf(stderr, "  leaked handle: %s%s\n", uv_handle_type_name(h->type), uv_is_closing(h) ? " (closing)" : "");
}

static void env_close(env_t *e)
{
    crm_httpc_close(e->client, on_closed, e);
    for (int i = 0; i < 1000 && !e->closed; ++i)
        uv_run(&e->loop, UV_RUN_ONCE);
    CHECK(e->closed, "client did not close");
    uv_run(&e->loop, UV_RUN_NOWAIT);
    int rc = uv_loop_close(&e->loop);
    if (rc != 0)
        uv_walk(&e->loop, print_handle, NULL);
    CHECK(rc == 0, "uv_loop_close: %s", uv_strerror(rc));
}

static void on_sleep_done(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

/* Runs the loop (serving whatever is in flight) for ms. */
static void run_for(env_t *e, uint64_t ms)
{
    uv_timer_t t;
    int done = 0;
    uv_timer_init(&e->loop, &t);
    t.data = &done;
    uv_timer_start(&t, on_sleep_done, ms, 0);
    while (!done)
        uv_run(&e->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&e->loop, UV_RUN_NOWAIT);
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until *flag or timeout_ms. A ticking timer makes every uv_run(UV_RUN_ONCE) return within a few
 * milliseconds: a completion can run in the timer phase at the start of an iteration, after which the poll phase
 * would otherwise block for as long as any handle (a kept-alive connection's watcher) stays active. */
static void run_until(env_t *e, const int *flag, double timeout_ms)
{
    uv_timer_t tick;
    uv_timer_init(&e->loop, &tick);
    uv_timer_start(&tick, on_tick, 5, 5);
    double end = mono_ms() + timeout_ms;
    while (!*flag && mono_ms() < end)
        uv_run(&e->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&e->loop, UV_RUN_NOWAIT);
    CHECK(*flag, "timed out after %.0f ms", timeout_ms);
}

static crm_httpc_upstream_t *upstream(env_t *e, const char *name, void (*tweak)(crm_httpc_upstream_config_t *))
{
    crm_httpc_upstream_config_t cfg;
    crm_httpc_upstream_config_default(&cfg, name);
    cfg.backoff_base_ms = 20;
    cfg.backoff_max_ms = 200;
    if (tweak != NULL)
        tweak(&cfg);
    crm_httpc_upstream_t *up;
    CHECK(crm_httpc_upstream_add(e->client, &cfg, &up) == 0, "upstream");
    return up;
}

/* ---- one request ---- */

typedef struct {
    int done;
    int err;
    int status;
    unsigned attempts;
    double at_ms; /* when the callback ran */
    char body[512];
    size_t body_len;
    char retry_after[64];
} result_t;

static void on_result(crm_httpc_req_t *req, int err, const crm_httpc_response_t *resp, void *data)
{
    result_t *r = data;
    CHECK(!r->done, "callback ran twice");
    r->done = 1;
    r->err = err;
    r->status = resp->status;
    r->attempts = resp->attempts;
    r->at_ms = mono_ms();
    r->body_len = resp->body_len;
    snprintf(r->body, sizeof(r->body), "%.*s", (int)(resp->body_len < 511 ? resp->body_len : 511), resp->body);
    size_t len;
    const char *ra = crm_httpc_response_header(req, "Retry-After", &len);
    if (ra != NULL)
        snprintf(r->retry_after, sizeof(r->retry_after), "%.*s", (int)len, ra);
}

static char g_url[256];

static const char *url(const char *path)
{
    snprintf(g_url, sizeof(g_url), "http://127.0.0.1:%d%s", g_up.port, path);
    return g_url;
}

static int send_req(env_t *e, crm_httpc_upstream_t *up, const char *method, const char *path, uint64_t timeout_ms,
                    const char *idem, result_t *r, crm_httpc_req_t **out)
{
    memset(r, 0, sizeof(*r));
    crm_httpc_request_t q = {
        .method = method,
        .url = url(path),
        .deadline = uv_now(&e->loop) + timeout_ms,
        .idempotency_key = idem,
    };
    if (strcmp(method, "POST") == 0) {
        q.body = "{\"a\":1}";
        q.body_len = 7;
        q.content_type = "application/json";
    }
    return crm_httpc_send(up, &q, on_result, r, out);
}

static result_t run_one(env_t *e, crm_httpc_upstream_t *up, const char *method, const char *path, uint64_t timeout_ms,
                        const char *idem, double *elapsed)
{
    result_t r;
    uv_update_time(&e->loop);
    double start = mono_ms();
    int rc = send_req(e, up, method, path, timeout_ms, idem, &r, NULL);
    CHECK(rc == 0, "send %s %s: %s", method, path, crm_err_name(rc));
    run_until(e, &r.done, (double)timeout_ms + 5000);
    if (elapsed != NULL)
        *elapsed = r.at_ms - start;
    return r;
}

/* ---- 1 breaker ---- */

static void breaker_cfg(crm_httpc_upstream_config_t *c)
{
    c->max_attempts = 1;
    c->breaker.window_size = 20;
    c->breaker.minimum_calls = 20;
    c->breaker.failure_rate_pct = 50;
    c->breaker.open_ms = 1000;
    c->breaker.half_open_probes = 1;
}

static void scenario_breaker(void)
{
    env_t e;
    env_init(&e, "1 breaker", 64);
    reset_fake();
    rule("{\"path\":\"/b\",\"times\":20,\"response\":{\"status\":500,\"json\":{\"error\":\"boom\"}}}");
    crm_httpc_upstream_t *up = upstream(&e, "stripe", breaker_cfg);
    crm_breaker_t *b = crm_httpc_upstream_breaker(up);
    for (int i = 0; i < 20; ++i) {
        CHECK(crm_breaker_state(b) == CRM_BREAKER_CLOSED, "breaker opened early, after %d failures", i);
        result_t r = run_one(&e, up, "GET", "/b", 2000, NULL, NULL);
        CHECK(r.err == 0 && r.status == 500 && r.attempts == 1, "500 #%d: err %s status %d attempts %u", i,
              crm_err_name(r.err), r.status, r.attempts);
    }
    CHECK(crm_breaker_state(b) == CRM_BREAKER_OPEN, "20 consecutive 500s did not open the breaker");
    CHECK(requests_to("/b", 0, NULL) == 20, "the fake did not see 20 requests");

    /* While open: refused synchronously, fast, and nothing reaches the fake. */
    double worst = 0;
    for (int i = 0; i < 1000; ++i) {
        result_t r;
        double t0 = mono_ms();
        int rc = send_req(&e, up, "GET", "/b", 2000, NULL, &r, NULL);
        double dt = mono_ms() - t0;
        if (dt > worst)
            worst = dt;
        CHECK(rc == CRM_E_BREAKER_OPEN, "send while open returned %s", crm_err_name(rc));
    }
    printf("figure: breaker-open send worst %.3f ms over 1000 calls\n", worst);
    CHECK(worst < 1.0, "a refused send took %.3f ms", worst);
    run_for(&e, 100);
    CHECK(requests_to("/b", 0, NULL) == 20, "requests reached the fake while the breaker was open");

    /* After the open duration exactly one probe goes through; the 500 rule is used up, so it succeeds. */
    run_for(&e, 1000);
    result_t probe, second;
    CHECK(send_req(&e, up, "GET", "/b", 2000, NULL, &probe, NULL) == 0, "the probe was refused");
    CHECK(send_req(&e, up, "GET", "/b", 2000, NULL, &second, NULL) == CRM_E_BREAKER_OPEN,
          "a second call was let through while the probe was in flight");
    run_until(&e, &probe.done, 3000);
    CHECK(probe.err == 0 && probe.status == 200, "probe: err %s status %d", crm_err_name(probe.err), probe.status);
    CHECK(crm_breaker_state(b) == CRM_BREAKER_CLOSED, "a successful probe did not close the breaker");
    CHECK(requests_to("/b", 0, NULL) == 21, "the fake did not see exactly one probe");
    result_t after = run_one(&e, up, "GET", "/b", 2000, NULL, NULL);
    CHECK(after.err == 0 && after.status == 200, "after closing: %d", after.status);
    env_close(&e);
}

/* ---- 2 deadline ---- */

static void scenario_deadline(void)
{
    env_t e;
    env_init(&e, "2 deadline", 64);
    reset_fake();
    rule("{\"path\":\"/slow\",\"times\":1,\"response\":{\"status\":500,\"delay_ms\":3000}}");
    crm_httpc_upstream_t *up = upstream(&e, "gmail", NULL);
    /* A warm connection first, so the slow request reuses it and its fate is visible. */
    result_t warm = run_one(&e, up, "GET", "/warm", 2000, NULL, NULL);
    CHECK(warm.err == 0 && warm.status == 200, "warm-up failed");
    double elapsed;
    result_t r = run_one(&e, up, "GET", "/slow", 500, NULL, &elapsed);
    printf("figure: deadline 500 ms expired after %.1f ms\n", elapsed);
    CHECK(r.err == CRM_E_DEADLINE, "expected a deadline, got %s status %d", crm_err_name(r.err), r.status);
    CHECK(elapsed >= 495 && elapsed < 600, "deadline fired after %.1f ms", elapsed);
    CHECK(r.attempts == 1, "attempts %u", r.attempts);
    crm_httpc_upstream_stats_t st;
    crm_httpc_upstream_stats(up, &st);
    CHECK(st.deadline_expiries == 1 && st.in_flight == 0, "stats: %lu expiries, %zu in flight",
          (unsigned long)st.deadline_expiries, st.in_flight);

    long slow_conn, next_conn;
    requests_to("/slow", 0, &slow_conn);
    result_t next = run_one(&e, up, "GET", "/next", 2000, NULL, NULL);
    CHECK(next.err == 0 && next.status == 200, "request after the deadline failed: %s %d", crm_err_name(next.err),
          next.status);
    requests_to("/next", 0, &next_conn);
    CHECK(slow_conn >= 0 && next_conn != slow_conn, "the timed-out connection %ld was reused", slow_conn);
    env_close(&e);
}

/* ---- 3 retries ---- */

static void retry_cfg(crm_httpc_upstream_config_t *c)
{
    c->max_attempts = 5;
}

static void patient_cfg(crm_httpc_upstream_config_t *c)
{
    c->max_attempts = 20;
    c->backoff_base_ms = 100;
    c->backoff_max_ms = 400;
}

static void scenario_retries(void)
{
    env_t e;
    env_init(&e, "3 retries", 64);
    crm_httpc_upstream_t *up = upstream(&e, "docusign", retry_cfg);

    reset_fake();
    rule("{\"path\":\"/r\",\"times\":1,\"response\":{\"status\":503}}");
    result_t r = run_one(&e, up, "GET", "/r", 3000, NULL, NULL);
    CHECK(r.err == 0 && r.status == 200 && r.attempts == 2, "503 then 200: err %s status %d attempts %u",
          crm_err_name(r.err), r.status, r.attempts);

    reset_fake();
    rule("{\"path\":\"/ra\",\"times\":1,\"response\":{\"status\":429,\"retry_after\":\"1\"}}");
    double elapsed;
    r = run_one(&e, up, "GET", "/ra", 5000, NULL, &elapsed);
    printf("figure: 429 Retry-After 1 answered after %.1f ms\n", elapsed);
    CHECK(r.err == 0 && r.status == 200 && r.attempts == 2, "429 then 200: %d, %u attempts", r.status, r.attempts);
    CHECK(elapsed >= 990 && elapsed < 1500, "Retry-After: 1 waited %.1f ms", elapsed);

    /* An HTTP-date Retry-After two seconds ahead. */
    reset_fake();
    char date[64], json[256];
    time_t at = time(NULL) + 2;
    struct tm tm;
    gmtime_r(&at, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    snprintf(json, sizeof(json), "{\"path\":\"/rd\",\"times\":1,\"response\":{\"status\":503,\"retry_after\":\"%s\"}}",
             date);
    rule(json);
    r = run_one(&e, up, "GET", "/rd", 5000, NULL, &elapsed);
    printf("figure: 503 Retry-After <date +2 s> answered after %.1f ms\n", elapsed);
    CHECK(r.err == 0 && r.status == 200 && elapsed >= 900 && elapsed < 2600, "date Retry-After: %d after %.1f ms",
          r.status, elapsed);

    /* POST without an idempotency key: the 503 is final. With one: retried, and the key is sent each time. */
    reset_fake();
    rule("{\"path\":\"/p\",\"times\":1,\"response\":{\"status\":503}}");
    r = run_one(&e, up, "POST", "/p", 3000, NULL, NULL);
    CHECK(r.err == 0 && r.status == 503 && r.attempts == 1, "keyless POST: status %d attempts %u", r.status,
          r.attempts);
    CHECK(requests_to("/p", 0, NULL) == 1, "keyless POST reached the fake more than once");
    reset_fake();
    rule("{\"path\":\"/pk\",\"times\":1,\"response\":{\"status\":503}}");
    r = run_one(&e, up, "POST", "/pk", 3000, "idem-123", NULL);
    CHECK(r.err == 0 && r.status == 200 && r.attempts == 2, "keyed POST: status %d attempts %u", r.status, r.attempts);
    json_t *log = fake_control(&g_up, "GET", "/requests", NULL);
    size_t i, keyed = 0;
    json_t *item;
    json_array_foreach(json_object_get(log, "requests"), i, item)
    {
        const char *k = json_string_value(json_object_get(json_object_get(item, "headers"), "idempotency-key"));
        keyed += k != NULL && strcmp(k, "idem-123") == 0;
    }
    json_decref(log);
    CHECK(keyed == 2, "the idempotency key was sent %zu times, not 2", keyed);

    /* Retries stop at the deadline: always 503 with up to 20 attempts and backoff up to 400 ms → answered before
     * the 700 ms deadline with the last 503, long before the attempts run out. */
    reset_fake();
    rule("{\"path\":\"/always\",\"response\":{\"status\":503}}");
    crm_httpc_upstream_t *patient = upstream(&e, "patient", patient_cfg);
    r = run_one(&e, patient, "GET", "/always", 700, NULL, &elapsed);
    printf("figure: always-503 with 700 ms deadline: %u attempts, %.1f ms\n", r.attempts, elapsed);
    CHECK(r.err == 0 && r.status == 503 && r.attempts >= 2 && r.attempts < 20 && elapsed < 700,
          "always 503: err %s status %d attempts %u after %.1f ms", crm_err_name(r.err), r.status, r.attempts, elapsed);
    /* A Retry-After the deadline cannot accommodate ends the request at once with that answer. */
    reset_fake();
    rule("{\"path\":\"/far\",\"response\":{\"status\":429,\"retry_after\":\"5\"}}");
    r = run_one(&e, up, "GET", "/far", 1000, NULL, &elapsed);
    CHECK(r.err == 0 && r.status == 429 && r.attempts == 1 && elapsed < 200 && strcmp(r.retry_after, "5") == 0,
          "far Retry-After: status %d attempts %u after %.1f ms, Retry-After '%s'", r.status, r.attempts, elapsed,
          r.retry_after);
    env_close(&e);
}

/* ---- 4 faults ---- */

static void small_cfg(crm_httpc_upstream_config_t *c)
{
    c->max_in_flight = 2;
    c->queue_max = 3;
}

static void scenario_faults(void)
{
    env_t e;
    env_init(&e, "4 faults", 64);
    crm_httpc_upstream_t *up = upstream(&e, "google-oauth", NULL);

    /* Closed mid-response once: a GET is retried and succeeds. */
    reset_fake();
    rule(
        "{\"path\":\"/cut\",\"times\":1,\"response\":{\"status\":200,\"body_bytes\":10000,\"close_after_bytes\":100}}");
    result_t r = run_one(&e, up, "GET", "/cut", 3000, NULL, NULL);
    CHECK(r.err == 0 && r.status == 200 && r.attempts == 2, "cut: err %s status %d attempts %u", crm_err_name(r.err),
          r.status, r.attempts);
    /* … and a keyless POST is not: the outcome is unknown to the caller, who learns it was a lost connection. */
    reset_fake();
    rule("{\"path\":\"/"
         "cutp\",\"times\":1,\"response\":{\"status\":200,\"body_bytes\":10000,\"close_after_bytes\":100}}");
    r = run_one(&e, up, "POST", "/cutp", 3000, NULL, NULL);
    CHECK(r.err == CRM_E_UNAVAILABLE && r.attempts == 1, "cut POST: err %s attempts %u", crm_err_name(r.err),
          r.attempts);

    /* Too large: 2 MiB against the 1 MiB default, announced by Content-Length and (chunked) not announced. */
    reset_fake();
    rule("{\"path\":\"/big\",\"response\":{\"status\":200,\"body_bytes\":2097152}}");
    rule("{\"path\":\"/bigc\",\"response\":{\"status\":200,\"body_bytes\":2097152,\"chunked\":true}}");
    r = run_one(&e, up, "GET", "/big", 3000, NULL, NULL);
    CHECK(r.err == CRM_E_TOO_LARGE, "big: %s", crm_err_name(r.err));
    r = run_one(&e, up, "GET", "/bigc", 3000, NULL, NULL);
    CHECK(r.err == CRM_E_TOO_LARGE, "big chunked: %s", crm_err_name(r.err));

    /* Malformed JSON is passed through: httpc does not interpret bodies. */
    reset_fake();
    rule("{\"path\":\"/mal\",\"response\":{\"malformed_json\":true}}");
    r = run_one(&e, up, "GET", "/mal", 3000, NULL, NULL);
    json_error_t jerr;
    json_t *doc = json_loadb(r.body, r.body_len, 0, &jerr);
    CHECK(r.err == 0 && r.status == 200 && doc == NULL, "malformed: %d '%s'", r.status, r.body);

    /* Connection refused: a port nobody listens on (bound, not listening), retried, then UNAVAILABLE. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    CHECK(bind(s, (struct sockaddr *)&a, sizeof(a)) == 0 && getsockname(s, (struct sockaddr *)&a, &alen) == 0, "bind");
    char refused[128];
    snprintf(refused, sizeof(refused), "http://127.0.0.1:%d/x", ntohs(a.sin_port));
    result_t rr = {0};
    crm_httpc_request_t q = {.method = "POST", .url = refused, .deadline = uv_now(&e.loop) + 3000};
    CHECK(crm_httpc_send(up, &q, on_result, &rr, NULL) == 0, "send refused");
    run_until(&e, &rr.done, 5000);
    close(s);
    CHECK(rr.err == CRM_E_UNAVAILABLE && rr.attempts == 3,
          "refused: err %s attempts %u (a POST that never left is "
          "safe to retry)",
          crm_err_name(rr.err), rr.attempts);

    /* Bad requests are refused at send. */
    crm_httpc_request_t bad = {.method = "GET", .url = "ftp://127.0.0.1/x", .deadline = uv_now(&e.loop) + 1000};
    CHECK(crm_httpc_send(up, &bad, on_result, &rr, NULL) == CRM_E_INVAL, "ftp URL accepted");
    const char *inject[] = {"X-Evil: a\r\nInjected: b"};
    bad = (crm_httpc_request_t){
        .method = "GET", .url = url("/x"), .headers = inject, .nheaders = 1, .deadline = uv_now(&e.loop) + 1000};
    CHECK(crm_httpc_send(up, &bad, on_result, &rr, NULL) == CRM_E_INVAL, "header injection accepted");
    bad.nheaders = 0;
    bad.deadline = 0;
    CHECK(crm_httpc_send(up, &bad, on_result, &rr, NULL) == CRM_E_INVAL, "no deadline accepted");

    /* Queue full: 2 in flight + 3 queued, the sixth is refused at once; cancel one queued and one active. */
    crm_httpc_upstream_t *small = upstream(&e, "small", small_cfg);
    reset_fake();
    rule("{\"path\":\"/hold\",\"response\":{\"status\":200,\"delay_ms\":300}}");
    result_t rs[6];
    crm_httpc_req_t *handles[6];
    for (int i = 0; i < 5; ++i)
        CHECK(send_req(&e, small, "GET", "/hold", 3000, NULL, &rs[i], &handles[i]) == 0, "send %d", i);
    CHECK(send_req(&e, small, "GET", "/hold", 3000, NULL, &rs[5], NULL) == CRM_E_QUEUE_FULL, "sixth not refused");
    crm_httpc_cancel(handles[0]); /* active */
    crm_httpc_cancel(handles[3]); /* queued */
    /* The freed slot is handed on from the loop, not inside cancel (which must not run other callbacks). */
    crm_httpc_upstream_stats_t st;
    crm_httpc_upstream_stats(small, &st);
    CHECK(st.in_flight == 1 && st.queued == 2, "right after cancels: %zu in flight, %zu queued", st.in_flight,
          st.queued);
    run_for(&e, 20);
    crm_httpc_upstream_stats(small, &st);
    CHECK(st.in_flight == 2 && st.queued == 1, "after cancels: %zu in flight, %zu queued", st.in_flight, st.queued);
    run_until(&e, &rs[4].done, 5000);
    run_until(&e, &rs[2].done, 5000);
    run_until(&e, &rs[1].done, 5000);
    CHECK(!rs[0].done && !rs[3].done, "a cancelled request's callback ran");
    CHECK(rs[1].status == 200 && rs[2].status == 200 && rs[4].status == 200, "held requests failed");
    env_close(&e);
}

/* ---- 5 load ---- */

typedef struct {
    env_t *e;
    crm_httpc_upstream_t *up;
    int sent, done, ok, total, in_flight_max;
    int finished;
} load_t;

static void load_next(load_t *l);

static void on_load(crm_httpc_req_t *req, int err, const crm_httpc_response_t *resp, void *data)
{
    (void)req;
    load_t *l = data;
    ++l->done;
    if (err == 0 && resp->status == 200 && resp->body_len > 0)
        ++l->ok;
    else
        fprintf(stderr, "load request failed: %s status %d (%s)\n", crm_err_name(err), resp->status, resp->error);
    if (l->done == l->total)
        l->finished = 1;
    else
        load_next(l);
}

static void load_next(load_t *l)
{
    if (l->sent == l->total)
        return;
    crm_httpc_request_t q = {.method = "GET", .url = url("/load"), .deadline = uv_now(&l->e->loop) + 30000};
    int rc = crm_httpc_send(l->up, &q, on_load, l, NULL);
    CHECK(rc == 0, "load send %d: %s", l->sent, crm_err_name(rc));
    ++l->sent;
}

static void scenario_load(void)
{
    env_t e;
    env_init(&e, "5 load", 256);
    reset_fake();
    crm_httpc_upstream_t *up = upstream(&e, "load", NULL);
    load_t l = {.e = &e, .up = up, .total = 10000};
    double t0 = mono_ms();
    for (int i = 0; i < 64; ++i)
        load_next(&l);
    run_until(&e, &l.finished, 120000);
    double ms = mono_ms() - t0;
    printf("figure: 10000 requests, 64 in flight: %.0f ms, %.0f req/s, %zu sockets open at the end\n", ms,
           10000 / (ms / 1000), crm_httpc_open_sockets(e.client));
    CHECK(l.ok == 10000, "%d of 10000 succeeded", l.ok);
    json_t *stats = fake_control(&g_up, "GET", "/stats", NULL);
    long accepted = (long)json_integer_value(json_object_get(stats, "connections_accepted"));
    json_decref(stats);
    printf("figure: the fake accepted %ld connections in total so far\n", accepted);
    CHECK(crm_httpc_open_sockets(e.client) <= 64, "%zu sockets open", crm_httpc_open_sockets(e.client));
    env_close(&e);
}

/* ---- 6 SMTP ---- */

static void scenario_smtp(void)
{
    env_t e;
    g_scenario = "6 smtp";
    fprintf(stderr, "scenario: %s\n", g_scenario);
    memset(&e, 0, sizeof(e));
    CHECK(uv_loop_init(&e.loop) == 0, "loop");
    crm_httpc_config_t cfg;
    crm_httpc_config_default(&cfg);
    cfg.ca_file = g_cert;
    CHECK(crm_httpc_create(&e.loop, &cfg, &e.client) == 0, "create");
    crm_httpc_upstream_t *up = upstream(&e, "smtp", NULL);

    json_t *r = fake_control(&g_smtp, "DELETE", "/messages", NULL);
    json_decref(r);
    const char *msg =
        "From: crmd <noreply@crmd.test>\r\nTo: <user@example.com>\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n";
    const char *rcpt[] = {"<user@example.com>"};
    crm_httpc_smtp_t smtp = {
        .mail_from = "<noreply@crmd.test>", .rcpt = rcpt, .nrcpt = 1, .username = "crmd", .password = "sink-password"};
    char smtp_url[128];
    snprintf(smtp_url, sizeof(smtp_url), "smtp://localhost:%d/crmd.test", g_smtp.port);
    crm_httpc_request_t q = {
        .url = smtp_url, .body = msg, .body_len = strlen(msg), .smtp = &smtp, .deadline = uv_now(&e.loop) + 5000};
    result_t res = {0};
    CHECK(crm_httpc_send(up, &q, on_result, &res, NULL) == 0, "smtp send");
    run_until(&e, &res.done, 8000);
    CHECK(res.err == 0 && res.status == 250, "smtp: err %s status %d", crm_err_name(res.err), res.status);
    r = fake_control(&g_smtp, "GET", "/messages", NULL);
    json_t *m = json_array_get(json_object_get(r, "messages"), 0);
    CHECK(m != NULL, "no message at the sink");
    CHECK(json_is_true(json_object_get(m, "tls")), "credentials were sent without TLS");
    CHECK(strcmp(json_string_value(json_object_get(m, "auth_user")), "crmd") == 0, "no AUTH");
    CHECK(strstr(json_string_value(json_object_get(m, "data")), "\r\n.leading dot\r\n") != NULL, "dot not unstuffed");
    json_decref(r);

    /* A temporary refusal after DATA: UNAVAILABLE with the reply code, and never retried here. */
    r = fake_control(&g_smtp, "POST", "/faults", "{\"mode\":\"tempfail\",\"times\":1}");
    json_decref(r);
    memset(&res, 0, sizeof(res));
    q.deadline = uv_now(&e.loop) + 5000;
    CHECK(crm_httpc_send(up, &q, on_result, &res, NULL) == 0, "smtp send 2");
    run_until(&e, &res.done, 8000);
    CHECK(res.err == CRM_E_UNAVAILABLE && res.status == 451 && res.attempts == 1, "tempfail: err %s status %d",
          crm_err_name(res.err), res.status);
    r = fake_control(&g_smtp, "POST", "/faults", "{\"mode\":\"ok\"}");
    json_decref(r);
    env_close(&e);
}

/* ---- 7 close with requests alive ---- */

static void scenario_close(void)
{
    env_t e;
    env_init(&e, "7 close", 64);
    reset_fake();
    rule("{\"path\":\"/hold\",\"response\":{\"status\":200,\"delay_ms\":2000}}");
    crm_httpc_upstream_t *up = upstream(&e, "close", small_cfg);
    result_t rs[4];
    for (int i = 0; i < 4; ++i)
        CHECK(send_req(&e, up, "GET", "/hold", 5000, NULL, &rs[i], NULL) == 0, "send %d", i);
    run_for(&e, 100);
    crm_httpc_close(e.client, on_closed, &e);
    result_t late;
    CHECK(send_req(&e, up, "GET", "/hold", 5000, NULL, &late, NULL) == CRM_E_SHUTDOWN, "send after close accepted");
    for (int i = 0; i < 4; ++i)
        CHECK(!rs[i].done, "a callback ran inside crm_httpc_close");
    while (!e.closed)
        uv_run(&e.loop, UV_RUN_ONCE);
    for (int i = 0; i < 4; ++i)
        CHECK(rs[i].done && rs[i].err == CRM_E_SHUTDOWN, "request %d: %s", i, crm_err_name(rs[i].err));
    uv_run(&e.loop, UV_RUN_NOWAIT);
    CHECK(uv_loop_close(&e.loop) == 0, "loop not closed");
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_fatal);
    signal(SIGINT, on_fatal);
    signal(SIGABRT, on_fatal);
    atexit(fake_stop_all);
    srandom((unsigned)getpid());
    curl_global_init(CURL_GLOBAL_DEFAULT);
    /* A throwaway certificate for the sink's STARTTLS, trusted through ca_file: verification stays on. */
    char auth[] = "crmd:sink-password", cmd[512];
    snprintf(g_tmpdir, sizeof(g_tmpdir), "/tmp/crmd-httpc-XXXXXX");
    CHECK(mkdtemp(g_tmpdir) != NULL, "mkdtemp");
    snprintf(g_cert, sizeof(g_cert), "%s/cert.pem", g_tmpdir);
    snprintf(g_key, sizeof(g_key), "%s/key.pem", g_tmpdir);
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost "
             "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout %s -out %s 2>/dev/null",
             g_key, g_cert);
    CHECK(system(cmd) == 0, "openssl could not make a test certificate");
    CHECK(fake_start(&g_up, "fake_upstream.py", NULL) == 0, "fake upstream");
    const char *smtp_args[] = {"--tls-cert", g_cert, "--tls-key", g_key, "--auth", auth, NULL};
    CHECK(fake_start(&g_smtp, "fake_smtp.py", smtp_args) == 0, "fake smtp");

    static void (*const scenarios[])(void) = {
        NULL,          scenario_breaker, scenario_deadline, scenario_retries, scenario_faults,
        scenario_load, scenario_smtp,    scenario_close};
    int n = (int)(sizeof(scenarios) / sizeof(scenarios[0]));
    if (argc > 1) {
        for (int i = 1; i < argc; ++i) {
            int k = atoi(argv[i]);
            CHECK(k >= 1 && k < n, "no scenario %s", argv[i]);
            scenarios[k]();
        }
    } else {
        for (int k = 1; k < n; ++k)
            scenarios[k]();
    }
    fake_stop(&g_up);
    fake_stop(&g_smtp);
    unlink(g_cert);
    unlink(g_key);
    rmdir(g_tmpdir);
    curl_global_cleanup();
    printf("all httpc scenarios passed\n");
    return 0;
}
