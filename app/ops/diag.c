/*
 * Diagnostics for the integration tests, registered only with CRMD_ENV=test and only for the operator token.
 *
 * They exercise the real runtime end to end — router, deadlines, pool, pipeline, transactions, row-level
 * security — through the real binary, with no test doubles:
 *   GET  /v1/_diag/echo?value=N            one pipelined point query returning N (correctness under concurrency)
 *   GET  /v1/_diag/sleep?ms=N              pg_sleep on the server (queueing, deadlines, shutdown while in flight)
 *   POST /v1/_diag/audit                   {tenant_id, actions[≤60]}: one transaction inserting the tenant (if new)
 *                                          and one audit row per action; an invalid action violates a CHECK and
 *                                          must roll back that whole unit and nothing else
 *   GET  /v1/_diag/audit?tenant_id=T       count of audit rows visible under tenant T: the query has no tenant
 *                                          filter, only row-level security limits it
 *   POST /v1/_diag/jobs                    {tenant_id, count ≤ 50, payload, max_attempts, unique_key}: one transaction
 *                                          creating the tenant (if new) and enqueueing `count` diag.record jobs
 *   POST /v1/_diag/mail                    {to: [{email, name}], subject, text, html}: enqueues a mail (a system job)
 *
 * and the job kind diag.record, whose payload scripts its behaviour: {"sleep_ms": N, "sleep_attempts": K} waits N ms
 * on attempts 1..K (all when K is absent); {"fail_times": N} fails attempts 1..N; {"always_fail": true} always
 * fails; otherwise it records its run as an audit_log row (action diag.job_run, target the job, metadata the
 * attempt and the runner's lease owner) and succeeds. Tests count those rows to prove each job ran exactly once.
 * The job kind diag.noop succeeds at once (bench/jobs).
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "app.h"
#include "err.h"
#include "http_pg.h"
#include "jobs.h"
#include "log.h"
#include "mailer/mailer.h"

/* One statement per action plus the tenant's, within the pool's default of 64 statements per unit. */
#define MAX_ACTIONS 60

/* ---- echo ---- */

static void on_echo_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    PGresult *r = crm_pg_unit_result(u, 0);
    crm_http_respond_json(req, 200, json_pack("{s:I}", "value", (json_int_t)strtoll(PQgetvalue(r, 0, 0), NULL, 10)));
}

static void on_echo(crm_http_req_t *req)
{
    long long value;
    if (!crm_api_require_operator(req) ||
        !crm_api_query_int(req, "value", -1000000000000LL, 1000000000000LL, 1, 0, &value))
        return;
    crm_app_t *app = crm_api_app(req);
    char text[24];
    snprintf(text, sizeof(text), "%lld", value);
    crm_pg_unit_t *u = crm_pg_unit_new(app->pool, CRM_PG_READ_ONLY);
    if (u == NULL || crm_pg_unit_add(u, app->_diag_stmts.echo, 1, (const char *const[]){text}, NULL) < 0) {
        crm_pg_unit_free(u);
        crm_http_respond_error(req, CRM_E_NOMEM);
        return;
    }
    crm_http_pg_submit(req, u, on_echo_done);
}

/* ---- sleep ---- */

static void on_sleep_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    crm_http_respond_json(req, 200, json_pack("{s:b}", "slept", 1));
}

static void on_sleep(crm_http_req_t *req)
{
    long long ms;
    if (!crm_api_require_operator(req) || !crm_api_query_int(req, "ms", 0, 600000, 1, 0, &ms))
        return;
    crm_app_t *app = crm_api_app(req);
    char text[24];
    snprintf(text, sizeof(text), "%lld", ms);
    crm_pg_unit_t *u = crm_pg_unit_new(app->pool, CRM_PG_READ_ONLY);
    if (u == NULL || crm_pg_unit_add(u, app->_diag_stmts.sleep, 1, (const char *const[]){text}, NULL) < 0) {
        crm_pg_unit_free(u);
        crm_http_respond_error(req, CRM_E_NOMEM);
        return;
    }
    crm_http_pg_submit(req, u, on_sleep_done);
}

/* ---- audit: a multi-statement transaction ---- */

static void on_audit_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_resume(data);
    if (req == NULL)
        return;
    const char *state = crm_pg_unit_sqlstate(u);
    if (err == CRM_E_DB && state != NULL && strcmp(state, "23514") == 0) {
        /* A CHECK constraint rejected one action; statement 0 is the tenant, so action i is statement i + 1. */
        int index = crm_pg_unit_error_index(u) - 1;
        char field[32];
        snprintf(field, sizeof(field), "actions[%d]", index);
        crm_http_respond_problem(req, 422, "validation-failed", "Validation failed",
                                 "An action was rejected by the database; nothing was written.",
                                 crm_api_field_error(field, "violates the audit_log action format"));
        return;
    }
    if (err != 0) {
        crm_http_pg_respond_error(req, u, err);
        return;
    }
    crm_http_respond_json(req, 201, json_pack("{s:i}", "inserted", (int)crm_pg_unit_count(u) - 1));
}

static void on_audit_post(crm_http_req_t *req)
{
    if (!crm_api_require_operator(req))
        return;
    json_t *body;
    if (crm_http_parse_json(req, &body) != 0)
        return;
    crm_app_t *app = crm_api_app(req);
    const char *tenant = json_string_value(json_object_get(body, "tenant_id"));
    json_t *actions = json_object_get(body, "actions");
    if (!crm_api_is_uuid(tenant)) {
        crm_api_invalid(req, "tenant_id", "must be a UUID");
        goto out;
    }
    if (!json_is_array(actions) || json_array_size(actions) == 0 || json_array_size(actions) > MAX_ACTIONS) {
        crm_api_invalid(req, "actions", "must be an array of 1 to 60 strings");
        goto out;
    }
    crm_pg_unit_t *u = crm_pg_unit_new(app->pool, CRM_PG_TX);
    if (u == NULL || crm_pg_unit_set_tenant(u, tenant) != 0 ||
        crm_pg_unit_add(u, app->_diag_stmts.tenant, 1, (const char *const[]){tenant}, NULL) < 0) {
        crm_pg_unit_free(u);
        crm_http_respond_error(req, CRM_E_NOMEM);
        goto out;
    }
    size_t i;
    json_t *a;
    json_array_foreach(actions, i, a)
    {
        const char *action = json_string_value(a);
        if (action == NULL || crm_pg_unit_add(u, app->_diag_stmts.audit, 3,
                                              (const char *const[]){tenant, action, req->request_id}, NULL) < 0) {
            char field[32];
            snprintf(field, sizeof(field), "actions[%zu]", i);
            crm_pg_unit_free(u);
            crm_api_invalid(req, field, "must be a string");
            goto out;
        }
    }
    crm_http_pg_submit(req, u, on_audit_done);
out:
    json_decref(body);
}

static void on_audit_count_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    PGresult *r = crm_pg_unit_result(u, 0);
    crm_http_respond_json(req, 200, json_pack("{s:I}", "count", (json_int_t)strtoll(PQgetvalue(r, 0, 0), NULL, 10)));
}

static void on_audit_count(crm_http_req_t *req)
{
    if (!crm_api_require_operator(req))
        return;
    const char *tenant = crm_http_query(req, "tenant_id");
    if (!crm_api_is_uuid(tenant)) {
        crm_api_invalid(req, "tenant_id", "must be a UUID");
        return;
    }
    crm_app_t *app = crm_api_app(req);
    crm_pg_unit_t *u = crm_pg_unit_new(app->pool, CRM_PG_READ_ONLY);
    if (u == NULL || crm_pg_unit_set_tenant(u, tenant) != 0 ||
        crm_pg_unit_add(u, app->_diag_stmts.audit_count, 0, NULL, NULL) < 0) {
        crm_pg_unit_free(u);
        crm_http_respond_error(req, CRM_E_NOMEM);
        return;
    }
    crm_http_pg_submit(req, u, on_audit_count_done);
}

/* ---- jobs ---- */

#define MAX_DIAG_JOBS 50

static void on_jobs_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    json_t *ids = json_array();
    for (size_t i = 1; i < crm_pg_unit_count(u); ++i) {
        PGresult *r = crm_pg_unit_result(u, i);
        json_array_append_new(ids, PQgetisnull(r, 0, 0) ? json_null()
                                                        : json_integer(strtoll(PQgetvalue(r, 0, 0), NULL, 10)));
    }
    crm_http_respond_json(req, 201, json_pack("{s:o}", "ids", ids));
}

static void on_jobs_post(crm_http_req_t *req)
{
    if (!crm_api_require_operator(req))
        return;
    json_t *body;
    if (crm_http_parse_json(req, &body) != 0)
        return;
    crm_app_t *app = crm_api_app(req);
    const char *tenant = json_string_value(json_object_get(body, "tenant_id"));
    json_t *count_v = json_object_get(body, "count"), *payload = json_object_get(body, "payload");
    json_int_t count = count_v != NULL ? json_integer_value(count_v) : 1;
    char *payload_json = NULL;
    if (!crm_api_is_uuid(tenant)) {
        crm_api_invalid(req, "tenant_id", "must be a UUID");
        goto out;
    }
    if (count < 1 || count > MAX_DIAG_JOBS) {
        crm_api_invalid(req, "count", "must be an integer from 1 to 50");
        goto out;
    }
    if (payload != NULL && !json_is_object(payload)) {
        crm_api_invalid(req, "payload", "must be an object");
        goto out;
    }
    payload_json = payload != NULL ? json_dumps(payload, JSON_COMPACT) : NULL;
    crm_job_spec_t spec = {
        .kind = "diag.record",
        .payload_json = payload_json,
        .max_attempts = (int)json_integer_value(json_object_get(body, "max_attempts")),
        .unique_key = json_string_value(json_object_get(body, "unique_key")),
    };
    crm_pg_unit_t *u = crm_pg_unit_new(app->pool, CRM_PG_TX);
    int err = u == NULL || crm_pg_unit_set_tenant(u, tenant) != 0 ||
                      crm_pg_unit_add(u, app->_diag_stmts.tenant, 1, (const char *const[]){tenant}, NULL) < 0
                  ? CRM_E_NOMEM
                  : 0;
    for (json_int_t i = 0; err == 0 && i < count; ++i)
        if ((err = crm_jobs_enqueue_add(app->jobs, u, &spec)) > 0)
            err = 0;
    if (err != 0) {
        crm_pg_unit_free(u);
        if (err == CRM_E_INVAL)
            crm_api_invalid(req, "max_attempts", "the job spec is invalid (attempts 0..1000, key 1..200 bytes)");
        else
            crm_http_respond_error(req, err);
        goto out;
    }
    crm_http_pg_submit(req, u, on_jobs_done);
out:
    free(payload_json);
    json_decref(body);
}

static void on_mail_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    crm_jobs_wake(crm_api_app(req)->jobs);
    crm_http_respond_json(
        req, 202,
        json_pack("{s:I}", "job_id", (json_int_t)strtoll(PQgetvalue(crm_pg_unit_result(u, 0), 0, 0), NULL, 10)));
}

static void on_mail_post(crm_http_req_t *req)
{
    if (!crm_api_require_operator(req))
        return;
    json_t *body;
    if (crm_http_parse_json(req, &body) != 0)
        return;
    crm_app_t *app = crm_api_app(req);
    json_t *to = json_object_get(body, "to");
    crm_mail_mailbox_t boxes[CRM_APP_MAIL_MAX_TO];
    size_t n = crm_app_mail_recipients(to, boxes);
    if (n == 0) {
        crm_api_invalid(req, "to", "must be 1 to 50 objects with an email");
        goto out;
    }
    crm_app_mail_t m = {
        .to = boxes,
        .to_count = n,
        .subject = json_string_value(json_object_get(body, "subject")),
        .text = json_string_value(json_object_get(body, "text")),
        .html = json_string_value(json_object_get(body, "html")),
    };
    crm_pg_unit_t *u = crm_pg_unit_new(app->pool, 0);
    int err = u == NULL ? CRM_E_NOMEM : crm_app_mail_enqueue_add(app, u, &m);
    if (err < 0) {
        crm_pg_unit_free(u);
        if (err == CRM_E_INVAL)
            crm_api_invalid(req, "to", "the mail does not compose (addresses, subject or bodies are invalid)");
        else
            crm_http_respond_error(req, err);
        goto out;
    }
    crm_http_pg_submit(req, u, on_mail_done);
out:
    json_decref(body);
}

/* The diag.record job kind (see the top of this file). */
typedef struct {
    uv_timer_t timer;
    crm_job_t *job;
    crm_app_t *app;
} diag_sleep_t;

static void record_run(crm_app_t *app, crm_job_t *job);

static void on_sleep_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_diag_slept(uv_timer_t *t)
{
    diag_sleep_t *s = t->data;
    crm_job_t *job = s->job;
    crm_app_t *app = s->app;
    uv_close((uv_handle_t *)t, on_sleep_closed);
    record_run(app, job);
}

static void on_recorded(crm_pg_unit_t *u, int err, void *data)
{
    crm_job_t *job = data;
    if (err == 0)
        crm_job_succeed(job);
    else
        crm_job_fail(job, crm_err_str(err), 0, 0);
}

static void record_run(crm_app_t *app, crm_job_t *job)
{
    const json_t *p = job->payload;
    json_int_t fail_times = json_integer_value(json_object_get(p, "fail_times"));
    if (json_is_true(json_object_get(p, "always_fail")) || job->attempt <= fail_times) {
        crm_job_fail(job, "diag: scripted failure", 0, 0);
        return;
    }
    if (job->tenant_id == NULL) {
        crm_job_fail(job, "diag: a recording job needs a tenant", 0, 1);
        return;
    }
    if (app->pool == NULL) {
        /* A sleep that outlived shutdown: the runner ignores this outcome anyway. */
        crm_job_fail(job, "diag: shutting down", 0, 0);
        return;
    }
    char id[24], attempt[16];
    snprintf(id, sizeof(id), "%lld", (long long)job->id);
    snprintf(attempt, sizeof(attempt), "%d", job->attempt);
    crm_pg_unit_t *u = crm_pg_unit_new(app->pool, 0);
    if (u == NULL || crm_pg_unit_set_tenant(u, job->tenant_id) != 0 ||
        crm_pg_unit_add(u, app->_diag_stmts.job_run, 4,
                        (const char *const[]){job->tenant_id, id, attempt, crm_jobs_owner(job->runner)}, NULL) < 0) {
        crm_pg_unit_free(u);
        crm_job_fail(job, "diag: out of memory", 0, 0);
        return;
    }
    crm_pg_unit_set_deadline(u, job->deadline);
    int err = crm_pg_unit_submit(u, on_recorded, job);
    if (err != 0) {
        crm_pg_unit_free(u);
        crm_job_fail(job, crm_err_str(err), 0, 0);
    }
}

static void on_diag_job(crm_job_t *job, void *ctx)
{
    crm_app_t *app = ctx;
    json_int_t sleep_ms = json_integer_value(json_object_get(job->payload, "sleep_ms"));
    const json_t *sleep_attempts = json_object_get(job->payload, "sleep_attempts");
    if (sleep_ms > 0 && (sleep_attempts == NULL || job->attempt <= json_integer_value(sleep_attempts))) {
        diag_sleep_t *s = malloc(sizeof(*s));
        if (s == NULL) {
            crm_job_fail(job, "diag: out of memory", 0, 0);
            return;
        }
        s->job = job;
        s->app = app;
        s->timer.data = s;
        uv_timer_init(app->loop, &s->timer);
        uv_timer_start(&s->timer, on_diag_slept, (uint64_t)sleep_ms, 0);
        return;
    }
    record_run(app, job);
}

/* diag.noop: succeeds at once, for bench/jobs (the queue's own cost, nothing else). */
static void on_noop_job(crm_job_t *job, void *ctx)
{
    (void)ctx;
    crm_job_succeed(job);
}

int crm_diag_jobs_register(crm_app_t *app)
{
    uint64_t most = 10 * (uint64_t)app->config->jobs_lease_ms;
    int err = crm_jobs_register(app->jobs, "diag.record", on_diag_job, app, most < 60000 ? most : 60000);
    return err != 0 ? err : crm_jobs_register(app->jobs, "diag.noop", on_noop_job, app, 1000);
}

int crm_diag_prepare(crm_app_t *app)
{
    int err;
    if ((err = crm_pg_pool_prepare(app->pool, "diag.echo", "SELECT $1::bigint", 1, &app->_diag_stmts.echo)) != 0 ||
        (err = crm_pg_pool_prepare(app->pool, "diag.sleep", "SELECT pg_sleep($1::double precision / 1000)", 1,
                                   &app->_diag_stmts.sleep)) != 0 ||
        (err = crm_pg_pool_prepare(app->pool, "diag.tenant",
                                   "INSERT INTO crm.tenants (tenant_id, name) VALUES ($1, 'diagnostics') "
                                   "ON CONFLICT (tenant_id) DO NOTHING",
                                   1, &app->_diag_stmts.tenant)) != 0 ||
        (err = crm_pg_pool_prepare(app->pool, "diag.audit",
                                   "INSERT INTO crm.audit_log (tenant_id, actor_type, action, request_id) "
                                   "VALUES ($1, 'operator', $2, $3)",
                                   3, &app->_diag_stmts.audit)) != 0 ||
        /* Deliberately no WHERE tenant_id = …: row-level security alone must confine the count. */
        (err = crm_pg_pool_prepare(app->pool, "diag.audit_count", "SELECT count(*) FROM crm.audit_log", 0,
                                   &app->_diag_stmts.audit_count)) != 0 ||
        (err = crm_pg_pool_prepare(app->pool, "diag.job_run",
                                   "INSERT INTO crm.audit_log (tenant_id, actor_type, action, target_type, target_id, "
                                   "metadata) VALUES ($1, 'system', 'diag.job_run', 'job', $2, "
                                   "jsonb_build_object('attempt', $3::int, 'owner', $4::text))",
                                   4, &app->_diag_stmts.job_run)) != 0)
        return err;
    return 0;
}

int crm_diag_routes(crm_app_t *app)
{
    const char *why = NULL;
    struct {
        crm_http_method_t method;
        const char *pattern;
        crm_http_handler_fn fn;
    } routes[] = {
        {CRM_HTTP_GET, "/v1/_diag/echo", on_echo},         {CRM_HTTP_GET, "/v1/_diag/sleep", on_sleep},
        {CRM_HTTP_POST, "/v1/_diag/audit", on_audit_post}, {CRM_HTTP_GET, "/v1/_diag/audit", on_audit_count},
        {CRM_HTTP_POST, "/v1/_diag/jobs", on_jobs_post},   {CRM_HTTP_POST, "/v1/_diag/mail", on_mail_post},
    };
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); ++i)
        if (crm_router_add(&app->router, routes[i].method, routes[i].pattern, routes[i].fn, app, &why) == NULL)
            return CRM_E_INVAL;
    return 0;
}
