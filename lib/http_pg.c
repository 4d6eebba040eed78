#include "http_pg.h"

#include <stdio.h>

#include "err.h"
#include "log.h"

static void detach_unit(void *op)
{
    crm_pg_unit_detach(op);
}

/* While the breaker is open, its remaining open time is the honest Retry-After; crm_http_respond_error supplies
 * a default for the other refusals. */
static void set_retry_after(crm_http_req_t *req, crm_pg_unit_t *unit, int err)
{
    if (err != CRM_E_BREAKER_OPEN)
        return;
    uint64_t ms = crm_breaker_retry_after_ms(crm_pg_pool_breaker(crm_pg_unit_pool(unit)));
    char secs[24];
    snprintf(secs, sizeof(secs), "%llu", (unsigned long long)((ms + 999) / 1000 > 0 ? (ms + 999) / 1000 : 1));
    crm_http_add_header(req, "retry-after", secs);
}

int crm_http_pg_submit(crm_http_req_t *req, crm_pg_unit_t *unit, crm_pg_unit_cb cb)
{
    crm_pg_unit_set_deadline(unit, req->deadline_ms);
    int err = crm_pg_unit_submit(unit, cb, req);
    if (err != 0) {
        set_retry_after(req, unit, err);
        crm_pg_unit_free(unit);
        crm_http_respond_error(req, err);
        return err;
    }
    crm_http_pg_await(req, unit);
    return 0;
}

void crm_http_pg_await(crm_http_req_t *req, crm_pg_unit_t *unit)
{
    crm_http_await(req, unit, detach_unit);
}

crm_http_req_t *crm_http_pg_resume(void *data)
{
    crm_http_req_t *req = data;
    return crm_http_await_done(req) ? req : NULL;
}

void crm_http_pg_respond_error(crm_http_req_t *req, crm_pg_unit_t *unit, int err)
{
    if (err == CRM_E_DB) {
        crm_log(CRM_LOG_ERROR, "db.statement_failed", CRM_LOG_STR("request_id", req->request_id),
                CRM_LOG_STR("route", req->route != NULL ? req->route->pattern : "-"),
                CRM_LOG_STR("sqlstate", crm_pg_unit_sqlstate(unit)),
                CRM_LOG_INT("statement", crm_pg_unit_error_index(unit)),
                CRM_LOG_STR("error", crm_pg_unit_error_message(unit)));
        crm_http_respond_error(req, CRM_E_STATE);
        return;
    }
    crm_http_respond_error(req, err);
}

int crm_http_pg_submit_one(crm_http_req_t *req, crm_pg_pool_t *pool, unsigned flags, const char *tenant_id,
                           crm_pg_stmt_t stmt, int nparams, const char *const *values, crm_pg_unit_cb cb)
{
    crm_pg_unit_t *u = crm_pg_unit_new(pool, flags);
    int err = u == NULL ? CRM_E_NOMEM : 0;
    if (err == 0 && tenant_id != NULL)
        err = crm_pg_unit_set_tenant(u, tenant_id);
    if (err == 0) {
        int index = crm_pg_unit_add(u, stmt, nparams, values, NULL);
        err = index < 0 ? index : 0;
    }
    if (err != 0) {
        /* Not the client's doing: the statement and its parameters are the handler's, bounded by the body limit. */
        crm_pg_unit_free(u);
        crm_http_respond_error(req, err == CRM_E_NOMEM ? CRM_E_NOMEM : CRM_E_STATE);
        return err;
    }
    return crm_http_pg_submit(req, u, cb);
}

crm_http_req_t *crm_http_pg_result(void *data, crm_pg_unit_t *unit, int err)
{
    crm_http_req_t *req = crm_http_pg_resume(data);
    if (req != NULL && err != 0) {
        crm_http_pg_respond_error(req, unit, err);
        return NULL;
    }
    return req;
}
