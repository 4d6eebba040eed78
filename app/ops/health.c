/*
 * Operational endpoints (DESIGN.md §5):
 *   GET /health/live      200 while the process runs; touches nothing.
 *   GET /health/ready     200 when the database breaker is not open, a connection is ready, every migration in this
 *                         binary is applied unchanged, and the process is not shutting down; 503 with the reasons
 *                         otherwise. Answered from facts kept in memory: load balancers may poll it at any rate.
 *   GET /health/database  pool figures, breaker state and a live round trip (operator token).
 *   GET /metrics          Prometheus text (operator token).
 *   GET /openapi.yaml     the API description compiled into this binary.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "api.h"
#include "app.h"
#include "err.h"
#include "http_pg.h"
#include "log.h"
#include "openapi.h"

#define SCHEMA_RECHECK_MS 15000
#define SCHEMA_RETRY_MS   1000
#define PROBE_TIMEOUT_MS  2000

/* ---- /health/live ---- */

static void on_live(crm_http_req_t *req)
{
    static const char body[] = "{\"status\":\"ok\"}\n";
    crm_http_respond(req, 200, "application/json", body, sizeof(body) - 1);
}

/* ---- /health/ready ---- */

static void on_ready(crm_http_req_t *req)
{
    crm_app_t *app = crm_api_app(req);
    json_t *reasons = json_array();
    if (app->shutting_down)
        json_array_append_new(reasons, json_string("shutting down"));
    crm_breaker_state_t bs = crm_breaker_state(crm_pg_pool_breaker(app->pool));
    if (bs == CRM_BREAKER_OPEN)
        json_array_append_new(reasons, json_string("database circuit breaker is open"));
    crm_pg_stats_t st;
    crm_pg_pool_stats(app->pool, &st);
    if (st.conns[CRM_PG_CONN_READY] == 0)
        json_array_append_new(reasons, json_string(st.prepare_failed ? "database statements fail to prepare"
                                                                     : "no database connection is ready"));
    if (!app->ready.schema_checked)
        json_array_append_new(reasons, json_string("schema not checked yet"));
    else if (!app->ready.schema_current)
        json_array_append_new(reasons, json_string(app->ready.schema_problem));
    int ok = json_array_size(reasons) == 0;
    json_t *body =
        json_pack("{s:s, s:o, s:s, s:b}", "status", ok ? "ready" : "not_ready", "reasons", reasons, "database_breaker",
                  crm_breaker_state_name(bs), "schema_current", app->ready.schema_current);
    if (!ok)
        crm_http_add_header(req, "retry-after", "1");
    crm_http_respond_json(req, ok ? 200 : 503, body);
}

/* ---- /health/database ---- */

static json_t *pool_figures(crm_app_t *app)
{
    crm_pg_stats_t st;
    crm_pg_pool_stats(app->pool, &st);
    json_t *conns = json_object();
    for (int i = 0; i < CRM_PG_CONN_STATE_COUNT; ++i)
        json_object_set_new(conns, crm_pg_conn_state_name((crm_pg_conn_state_t)i),
                            json_integer((json_int_t)st.conns[i]));
    crm_breaker_t *b = crm_pg_pool_breaker(app->pool);
    crm_breaker_window_t w = crm_breaker_window(b);
    return json_pack("{s:o, s:i, s:i, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I},"
                     " s:{s:s, s:i, s:i, s:i, s:I, s:I}}",
                     "connections", conns, "in_flight", (int)st.in_flight, "queued", (int)st.queued, "totals",
                     "submitted", (json_int_t)st.submitted, "completed", (json_int_t)st.completed, "sql_errors",
                     (json_int_t)st.sql_errors, "queue_full", (json_int_t)st.rejected_queue_full, "breaker_rejected",
                     (json_int_t)st.rejected_breaker, "unavailable", (json_int_t)st.rejected_unavailable,
                     "queue_timeouts", (json_int_t)st.queue_timeouts, "deadline_expiries",
                     (json_int_t)st.deadline_expiries, "connection_failures", (json_int_t)st.conn_failures,
                     "reconnects", (json_int_t)st.reconnects, "requeued", (json_int_t)st.requeued, "shutdown_rejected",
                     (json_int_t)st.rejected_shutdown, "breaker", "state", crm_breaker_state_name(crm_breaker_state(b)),
                     "window_calls", (int)w.outcomes, "window_failures", (int)w.failures, "window_slow", (int)w.slow,
                     "retry_after_ms", (json_int_t)crm_breaker_retry_after_ms(b), "rejected", (json_int_t)b->rejected);
}

static void on_probe_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_resume(data);
    if (req == NULL)
        return;
    crm_app_t *app = crm_api_app(req);
    json_t *doc = pool_figures(app);
    json_t *probe = json_object();
    json_object_set_new(probe, "ok", json_boolean(err == 0));
    json_object_set_new(probe, "round_trip_ms", json_real((double)(uv_hrtime() - req->started_ns) / 1e6));
    if (err != 0)
        json_object_set_new(probe, "error", json_string(crm_err_name(err)));
    json_object_set_new(doc, "probe", probe);
    crm_http_respond_json(req, err == 0 ? 200 : 503, doc);
}

static void on_database(crm_http_req_t *req)
{
    if (!crm_api_require_operator(req))
        return;
    crm_app_t *app = crm_api_app(req);
    crm_pg_unit_t *u = crm_pg_unit_new(app->pool, CRM_PG_READ_ONLY);
    if (u == NULL || crm_pg_unit_add(u, app->_ops_stmts.ping, 0, NULL, NULL) < 0) {
        crm_pg_unit_free(u);
        crm_http_respond_error(req, CRM_E_NOMEM);
        return;
    }
    uint64_t probe_deadline = uv_now(app->loop) + PROBE_TIMEOUT_MS;
    crm_pg_unit_set_deadline(u, probe_deadline < req->deadline_ms ? probe_deadline : req->deadline_ms);
    int err = crm_pg_unit_submit(u, on_probe_done, req);
    if (err != 0) {
        /* The figures are the point of this endpoint; a refused probe is one of them. */
        crm_pg_unit_free(u);
        json_t *doc = pool_figures(app);
        json_object_set_new(doc, "probe", json_pack("{s:b, s:s}", "ok", 0, "error", crm_err_name(err)));
        crm_http_respond_json(req, 503, doc);
        return;
    }
    crm_http_pg_await(req, u);
}

/* ---- /openapi.yaml ---- */

static void on_openapi(crm_http_req_t *req)
{
    crm_http_respond(req, 200, "application/yaml", crm_openapi_yaml, crm_openapi_yaml_len);
}

/* ---- /metrics ---- */

static void on_metrics(crm_http_req_t *req)
{
    if (!crm_api_require_operator(req))
        return;
    crm_app_t *app = crm_api_app(req);
    crm_prom_t w;
    if (crm_prom_init(&w, 16384, 8u << 20) != 0) {
        crm_http_respond_error(req, CRM_E_NOMEM);
        return;
    }
    int err = crm_metrics_render(&app->metrics, &w);
    if (err != 0)
        crm_http_respond_error(req, err);
    else
        crm_http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", w.buf, w.len);
    crm_prom_dispose(&w);
}

static void collect_process(void *ctx, crm_prom_t *w)
{
    crm_app_t *app = ctx;
    crm_label_t version = {"version", CRMD_VERSION};
    crm_prom_family(w, "crmd_build_info", "gauge", "crmd build information.");
    crm_prom_sample_u64(w, "crmd_build_info", &version, 1, 1);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    crm_prom_family(w, "crmd_process_max_resident_memory_bytes", "gauge", "Peak resident set size.");
    crm_prom_sample_u64(w, "crmd_process_max_resident_memory_bytes", NULL, 0, (uint64_t)ru.ru_maxrss * 1024);
    crm_prom_family(w, "crmd_process_cpu_seconds_total", "counter", "User and system CPU time.");
    crm_prom_sample(w, "crmd_process_cpu_seconds_total", NULL, 0,
                    (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                        (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
    crm_prom_family(w, "crmd_uptime_seconds", "gauge", "Seconds since start-up.");
    crm_prom_sample(w, "crmd_uptime_seconds", NULL, 0, (double)(uv_now(app->loop) - app->started_at_ms) / 1000.0);
    crm_prom_family(w, "crmd_log_dropped_lines_total", "counter", "Log lines dropped because the log buffer was full.");
    crm_prom_sample_u64(w, "crmd_log_dropped_lines_total", NULL, 0, crm_log_dropped());
    crm_prom_family(w, "crmd_schema_current", "gauge", "1 when every migration in this binary is applied unchanged.");
    crm_prom_sample_u64(w, "crmd_schema_current", NULL, 0, (uint64_t)app->ready.schema_current);

    /* Breakers: one series per dependency. Only PostgreSQL exists so far; outbound dependencies add theirs. */
    crm_breaker_t *breakers[] = {crm_pg_pool_breaker(app->pool)};
    crm_prom_family(w, "crmd_breaker_state", "gauge", "Circuit breaker state: 0 closed, 1 open, 2 half-open.");
    for (size_t i = 0; i < sizeof(breakers) / sizeof(breakers[0]); ++i) {
        crm_label_t l = {"dependency", breakers[i]->name};
        crm_prom_sample_u64(w, "crmd_breaker_state", &l, 1, (uint64_t)crm_breaker_state(breakers[i]));
    }
    crm_prom_family(w, "crmd_breaker_transitions_total", "counter", "Circuit breaker transitions by target state.");
    for (size_t i = 0; i < sizeof(breakers) / sizeof(breakers[0]); ++i)
        for (int to = 0; to < CRM_BREAKER_NSTATES; ++to) {
            crm_label_t l[2] = {{"dependency", breakers[i]->name},
                                {"to", crm_breaker_state_name((crm_breaker_state_t)to)}};
            crm_prom_sample_u64(w, "crmd_breaker_transitions_total", l, 2, breakers[i]->transitions[to]);
        }
    crm_prom_family(w, "crmd_breaker_rejected_total", "counter", "Calls refused by a circuit breaker.");
    for (size_t i = 0; i < sizeof(breakers) / sizeof(breakers[0]); ++i) {
        crm_label_t l = {"dependency", breakers[i]->name};
        crm_prom_sample_u64(w, "crmd_breaker_rejected_total", &l, 1, breakers[i]->rejected);
    }
}

/* ---- schema currency, checked in the background ---- */

static void schema_check(crm_app_t *app);

static void on_schema_timer(uv_timer_t *t)
{
    schema_check(t->data);
}

static void schedule_schema_check(crm_app_t *app, uint64_t delay)
{
    if (!app->shutting_down)
        uv_timer_start(&app->_schema_timer, on_schema_timer, delay, 0);
}

static void on_schema_versions(crm_pg_unit_t *u, int err, void *data)
{
    crm_app_t *app = data;
    if (err != 0) {
        /* Unknown is not "not current": keep the last verdict and look again soon. */
        schedule_schema_check(app, SCHEMA_RETRY_MS);
        return;
    }
    PGresult *r = crm_pg_unit_result(u, 0);
    int rows = PQntuples(r), row = 0, current = 1;
    char problem[sizeof(app->ready.schema_problem)] = "";
    for (unsigned i = 0; i < crm_migrations_count && current; ++i) {
        const crm_migration_t *m = &crm_migrations[i];
        while (row < rows && atoi(PQgetvalue(r, row, 0)) < m->version)
            ++row;
        if (row == rows || atoi(PQgetvalue(r, row, 0)) != m->version) {
            snprintf(problem, sizeof(problem), "migration %s is not applied", m->name);
            current = 0;
            break;
        }
        char sum[65];
        crm_migration_checksum(m, sum);
        if (strcmp(sum, PQgetvalue(r, row, 1)) != 0) {
            snprintf(problem, sizeof(problem), "migration %s was changed after it was applied", m->name);
            current = 0;
        }
    }
    if (current != app->ready.schema_current || !app->ready.schema_checked)
        crm_log(current ? CRM_LOG_INFO : CRM_LOG_WARN, "schema.check", CRM_LOG_BOOL("current", current),
                CRM_LOG_STR("problem", problem));
    app->ready.schema_checked = 1;
    app->ready.schema_current = current;
    snprintf(app->ready.schema_problem, sizeof(app->ready.schema_problem), "%s", problem);
    app->ready.schema_checked_at = uv_now(app->loop);
    schedule_schema_check(app, SCHEMA_RECHECK_MS);
}

static void schema_check(crm_app_t *app)
{
    crm_pg_unit_t *u = crm_pg_unit_new(app->pool, CRM_PG_READ_ONLY);
    if (u == NULL || crm_pg_unit_add(u, app->_ops_stmts.schema_versions, 0, NULL, NULL) < 0 ||
        crm_pg_unit_submit(u, on_schema_versions, app) != 0) {
        crm_pg_unit_free(u);
        schedule_schema_check(app, SCHEMA_RETRY_MS);
    }
}

/* ---- wiring ---- */

int crm_ops_prepare(crm_app_t *app)
{
    int err;
    if ((err = crm_pg_pool_prepare(app->pool, "ops.ping", "SELECT 1", 0, &app->_ops_stmts.ping)) != 0 ||
        (err = crm_pg_pool_prepare(app->pool, "ops.schema_versions",
                                   "SELECT version, checksum FROM crm.schema_migrations ORDER BY version", 0,
                                   &app->_ops_stmts.schema_versions)) != 0)
        return err;
    return crm_metrics_register(&app->metrics, collect_process, app);
}

int crm_ops_routes(crm_app_t *app)
{
    const char *why = NULL;
    struct {
        const char *pattern;
        crm_http_handler_fn fn;
    } routes[] = {
        {"/health/live", on_live}, {"/health/ready", on_ready},   {"/health/database", on_database},
        {"/metrics", on_metrics},  {"/openapi.yaml", on_openapi},
    };
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); ++i) {
        crm_route_t *rt = crm_router_add(&app->router, CRM_HTTP_GET, routes[i].pattern, routes[i].fn, app, &why);
        if (rt == NULL) {
            crm_log(CRM_LOG_ERROR, "routes.invalid", CRM_LOG_STR("pattern", routes[i].pattern),
                    CRM_LOG_STR("error", why));
            return CRM_E_INVAL;
        }
        /* None of these accepts a body. */
        rt->max_body_bytes = 1;
    }
    return 0;
}

void crm_ops_start(crm_app_t *app)
{
    uv_timer_init(app->loop, &app->_schema_timer);
    app->_schema_timer.data = app;
    schedule_schema_check(app, 0);
}

void crm_ops_stop(crm_app_t *app)
{
    uv_timer_stop(&app->_schema_timer);
    uv_close((uv_handle_t *)&app->_schema_timer, NULL);
}
