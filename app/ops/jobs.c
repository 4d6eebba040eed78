/*
 * The job queue's operator endpoints (operator token; cross-tenant by design, like the rest of /v1/ops):
 *
 *   GET  /v1/ops/jobs?state=&limit=&cursor=   jobs in id order, optionally of one state (queued, running,
 *                                             succeeded, dead), keyset-paginated: {data: [...], next_cursor}
 *   POST /v1/ops/jobs/{id}/retry              replays a dead job: queued at once with its attempts reset; 404 for an
 *                                             unknown job, 409 for one that is not dead (or whose work a pending
 *                                             job with the same unique key already does); audited
 *
 * A job's payload is never shown: it can hold personal data, and what went wrong is in last_error.
 */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "app.h"
#include "err.h"
#include "http_pg.h"
#include "jobs.h"

#define LIST_DEFAULT 50
#define LIST_MAX     200

static const char *const job_states[] = {"queued", "running", "succeeded", "dead"};

static json_t *text_or_null(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? json_null() : json_string(PQgetvalue(r, row, col));
}

static json_t *job_json(PGresult *r, int row)
{
    return json_pack(
        "{s:I, s:o, s:s, s:s, s:i, s:i, s:o, s:o, s:o, s:o, s:o}", "id",
        (json_int_t)strtoll(PQgetvalue(r, row, CRM_JOBS_COL_ID), NULL, 10), "tenant_id",
        text_or_null(r, row, CRM_JOBS_COL_TENANT_ID), "kind", PQgetvalue(r, row, CRM_JOBS_COL_KIND), "state",
        PQgetvalue(r, row, CRM_JOBS_COL_STATE), "attempts", atoi(PQgetvalue(r, row, CRM_JOBS_COL_ATTEMPTS)),
        "max_attempts", atoi(PQgetvalue(r, row, CRM_JOBS_COL_MAX_ATTEMPTS)), "run_at",
        text_or_null(r, row, CRM_JOBS_COL_RUN_AT), "last_error", text_or_null(r, row, CRM_JOBS_COL_LAST_ERROR),
        "created_at", text_or_null(r, row, CRM_JOBS_COL_CREATED_AT), "updated_at",
        text_or_null(r, row, CRM_JOBS_COL_UPDATED_AT), "finished_at", text_or_null(r, row, CRM_JOBS_COL_FINISHED_AT));
}

/* ---- list ---- */

static void on_list_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    PGresult *r = crm_pg_unit_result(u, 0);
    int n = PQntuples(r);
    /* One row more than asked for was fetched: its presence says whether there is a next page. The limit was
     * validated before the query; reading it again keeps the request the only place it lives. */
    const char *lv = crm_http_query(req, "limit");
    int limit = lv != NULL ? atoi(lv) : LIST_DEFAULT;
    int shown = n > limit ? limit : n;
    json_t *items = json_array();
    for (int i = 0; i < shown; ++i)
        json_array_append_new(items, job_json(r, i));
    json_t *next = n > limit ? json_string(PQgetvalue(r, shown - 1, CRM_JOBS_COL_ID)) : json_null();
    crm_http_respond_json(req, 200, json_pack("{s:o, s:o}", "data", items, "next_cursor", next));
}

static void on_list(crm_http_req_t *req)
{
    if (!crm_api_require_operator(req))
        return;
    crm_app_t *app = crm_api_app(req);
    const char *state = crm_http_query(req, "state");
    if (state != NULL) {
        int known = 0;
        for (size_t i = 0; i < sizeof(job_states) / sizeof(job_states[0]); ++i)
            known |= strcmp(state, job_states[i]) == 0;
        if (!known) {
            crm_api_invalid(req, "state", "must be one of queued, running, succeeded, dead");
            return;
        }
    }
    long long limit, after;
    if (!crm_api_query_int(req, "limit", 1, LIST_MAX, 0, LIST_DEFAULT, &limit))
        return;
    /* The cursor is the last id of the previous page; clients treat it as opaque. */
    const char *cursor = crm_http_query(req, "cursor");
    if (cursor != NULL) {
        char *end = NULL;
        after = strtoll(cursor, &end, 10);
        if (*cursor == '\0' || *end != '\0' || after < 1) {
            crm_api_invalid(req, "cursor", "is not a cursor this endpoint returned");
            return;
        }
    } else {
        after = 0;
    }
    crm_pg_unit_t *u = crm_pg_unit_new(app->pool, CRM_PG_READ_ONLY);
    if (u == NULL || crm_jobs_list_add(app->jobs, u, state, after, (int)limit + 1) < 0) {
        crm_pg_unit_free(u);
        crm_http_respond_error(req, CRM_E_NOMEM);
        return;
    }
    crm_http_pg_submit(req, u, on_list_done);
}

/* ---- retry ---- */

static void on_retry_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_resume(data);
    if (req == NULL)
        return;
    if (err == CRM_E_DB && strcmp(crm_pg_unit_sqlstate(u), "23505") == 0) {
        crm_http_respond_problem(req, 409, "job-superseded", "Job superseded",
                                 "A pending job with the same unique key already does this work.", NULL);
        return;
    }
    if (err != 0) {
        crm_http_pg_respond_error(req, u, err);
        return;
    }
    PGresult *r = crm_pg_unit_result(u, 0);
    if (PQntuples(r) == 0) {
        crm_http_respond_problem(req, 404, "not-found", "Not found", "No job has this id.", NULL);
        return;
    }
    const char *state = PQgetvalue(r, 0, 1);
    long long id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    if (strcmp(PQgetvalue(r, 0, 2), "t") != 0) {
        char detail[96];
        snprintf(detail, sizeof(detail), "The job is %s; only dead jobs can be retried.", state);
        crm_http_respond_problem(req, 409, "job-not-dead", "Job not dead", detail, NULL);
        return;
    }
    crm_http_respond_json(req, 200, json_pack("{s:I, s:s}", "id", (json_int_t)id, "state", state));
}

static void on_retry(crm_http_req_t *req)
{
    if (!crm_api_require_operator(req))
        return;
    crm_app_t *app = crm_api_app(req);
    char *end = NULL;
    long long id = strtoll(req->params[0].base, &end, 10);
    if (req->params[0].len == 0 || *end != '\0' || id < 1) {
        crm_http_respond_problem(req, 404, "not-found", "Not found", "No job has this id.", NULL);
        return;
    }
    char ip[64];
    size_t ua_len;
    const char *ua = crm_http_header(req, "user-agent", &ua_len);
    char ua_text[256];
    if (ua != NULL)
        snprintf(ua_text, sizeof(ua_text), "%.*s", (int)(ua_len < 255 ? ua_len : 255), ua);
    crm_jobs_actor_t actor = {
        .request_id = req->request_id,
        .ip = crm_http_peer_ip(req, ip, sizeof(ip)),
        .user_agent = ua != NULL ? ua_text : NULL,
    };
    crm_pg_unit_t *u = crm_pg_unit_new(app->pool, CRM_PG_TX);
    if (u == NULL || crm_jobs_retry_add(app->jobs, u, id, &actor) < 0) {
        crm_pg_unit_free(u);
        crm_http_respond_error(req, CRM_E_NOMEM);
        return;
    }
    crm_http_pg_submit(req, u, on_retry_done);
}

int crm_ops_jobs_routes(crm_app_t *app)
{
    const char *why = NULL;
    if (crm_router_add(&app->router, CRM_HTTP_GET, "/v1/ops/jobs", on_list, app, &why) == NULL ||
        crm_router_add(&app->router, CRM_HTTP_POST, "/v1/ops/jobs/{id}/retry", on_retry, app, &why) == NULL)
        return CRM_E_INVAL;
    return 0;
}
