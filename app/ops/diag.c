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
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "err.h"
#include "http_pg.h"

/* One statement per action plus the tenant's, within the pool's default of 64 statements per unit. */
#define MAX_ACTIONS 60

static crm_app_t *app_of(crm_http_req_t *req)
{
    return req->route->data;
}

static int allowed(crm_http_req_t *req)
{
    if (crm_http_bearer_matches(req, app_of(req)->config->operator_token))
        return 1;
    crm_http_respond_problem(req, 401, "unauthorized", "Unauthorized", "Operator token required.", NULL);
    return 0;
}

static json_t *field_error(const char *field, const char *message)
{
    json_t *errors = json_array();
    json_array_append_new(errors, json_pack("{s:s, s:s}", "field", field, "message", message));
    return errors;
}

static int query_int(crm_http_req_t *req, const char *name, long long min, long long max, long long *out)
{
    const char *v = crm_http_query(req, name);
    char *end = NULL;
    errno = 0;
    long long n = v != NULL ? strtoll(v, &end, 10) : 0;
    if (v == NULL || *v == '\0' || *end != '\0' || errno != 0 || n < min || n > max) {
        char msg[96];
        snprintf(msg, sizeof(msg), "must be an integer between %lld and %lld", min, max);
        crm_http_respond_problem(req, 400, "validation-failed", "Validation failed", "Invalid query parameter.",
                                 field_error(name, msg));
        return 0;
    }
    *out = n;
    return 1;
}

static int is_uuid(const char *s)
{
    if (s == NULL || strlen(s) != 36)
        return 0;
    for (int i = 0; i < 36; ++i) {
        char c = s[i];
        int hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        if ((i == 8 || i == 13 || i == 18 || i == 23) ? c != '-' : !hex)
            return 0;
    }
    return 1;
}

/* ---- echo ---- */

static void on_echo_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_resume(data);
    if (req == NULL)
        return;
    if (err != 0) {
        crm_http_pg_respond_error(req, u, err);
        return;
    }
    PGresult *r = crm_pg_unit_result(u, 0);
    crm_http_respond_json(req, 200, json_pack("{s:I}", "value", (json_int_t)strtoll(PQgetvalue(r, 0, 0), NULL, 10)));
}

static void on_echo(crm_http_req_t *req)
{
    long long value;
    if (!allowed(req) || !query_int(req, "value", -1000000000000LL, 1000000000000LL, &value))
        return;
    crm_app_t *app = app_of(req);
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
    crm_http_req_t *req = crm_http_pg_resume(data);
    if (req == NULL)
        return;
    if (err != 0) {
        crm_http_pg_respond_error(req, u, err);
        return;
    }
    crm_http_respond_json(req, 200, json_pack("{s:b}", "slept", 1));
}

static void on_sleep(crm_http_req_t *req)
{
    long long ms;
    if (!allowed(req) || !query_int(req, "ms", 0, 600000, &ms))
        return;
    crm_app_t *app = app_of(req);
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
                                 field_error(field, "violates the audit_log action format"));
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
    if (!allowed(req))
        return;
    json_t *body;
    if (crm_http_parse_json(req, &body) != 0)
        return;
    crm_app_t *app = app_of(req);
    const char *tenant = json_string_value(json_object_get(body, "tenant_id"));
    json_t *actions = json_object_get(body, "actions");
    if (!is_uuid(tenant)) {
        crm_http_respond_problem(req, 400, "validation-failed", "Validation failed", "Invalid body.",
                                 field_error("tenant_id", "must be a UUID"));
        goto out;
    }
    if (!json_is_array(actions) || json_array_size(actions) == 0 || json_array_size(actions) > MAX_ACTIONS) {
        crm_http_respond_problem(req, 400, "validation-failed", "Validation failed", "Invalid body.",
                                 field_error("actions", "must be an array of 1 to 60 strings"));
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
            crm_http_respond_problem(req, 400, "validation-failed", "Validation failed", "Invalid body.",
                                     field_error(field, "must be a string"));
            goto out;
        }
    }
    crm_http_pg_submit(req, u, on_audit_done);
out:
    json_decref(body);
}

static void on_audit_count_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_resume(data);
    if (req == NULL)
        return;
    if (err != 0) {
        crm_http_pg_respond_error(req, u, err);
        return;
    }
    PGresult *r = crm_pg_unit_result(u, 0);
    crm_http_respond_json(req, 200, json_pack("{s:I}", "count", (json_int_t)strtoll(PQgetvalue(r, 0, 0), NULL, 10)));
}

static void on_audit_count(crm_http_req_t *req)
{
    if (!allowed(req))
        return;
    const char *tenant = crm_http_query(req, "tenant_id");
    if (!is_uuid(tenant)) {
        crm_http_respond_problem(req, 400, "validation-failed", "Validation failed", "Invalid query parameter.",
                                 field_error("tenant_id", "must be a UUID"));
        return;
    }
    crm_app_t *app = app_of(req);
    crm_pg_unit_t *u = crm_pg_unit_new(app->pool, CRM_PG_READ_ONLY);
    if (u == NULL || crm_pg_unit_set_tenant(u, tenant) != 0 ||
        crm_pg_unit_add(u, app->_diag_stmts.audit_count, 0, NULL, NULL) < 0) {
        crm_pg_unit_free(u);
        crm_http_respond_error(req, CRM_E_NOMEM);
        return;
    }
    crm_http_pg_submit(req, u, on_audit_count_done);
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
                                   &app->_diag_stmts.audit_count)) != 0)
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
        {CRM_HTTP_GET, "/v1/_diag/echo", on_echo},
        {CRM_HTTP_GET, "/v1/_diag/sleep", on_sleep},
        {CRM_HTTP_POST, "/v1/_diag/audit", on_audit_post},
        {CRM_HTTP_GET, "/v1/_diag/audit", on_audit_count},
    };
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); ++i)
        if (crm_router_add(&app->router, routes[i].method, routes[i].pattern, routes[i].fn, app, &why) == NULL)
            return CRM_E_INVAL;
    return 0;
}
