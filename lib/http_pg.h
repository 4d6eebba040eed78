/*
 * Glue between an HTTP request and a database unit of work: the one pattern every database-backed handler uses.
 *
 *     crm_pg_unit_t *u = crm_pg_unit_new(pool, CRM_PG_READ_ONLY);
 *     crm_pg_unit_add(u, stmt, 1, (const char *[]){id}, NULL);
 *     crm_http_pg_submit(req, u, on_done);      // answers the request itself if the submit is refused
 *
 *     static void on_done(crm_pg_unit_t *u, int err, void *data) {
 *         crm_http_req_t *req = crm_http_pg_resume(data);   // NULL: the request is gone, do nothing
 *         if (req == NULL) return;
 *         if (err != 0) { crm_http_pg_respond_error(req, u, err); return; }
 *         ... read crm_pg_unit_result(u, 0) and answer ...
 *     }
 *
 * The unit's deadline is the request's (never later), and the request's cancellation detaches the unit, so a
 * client that goes away or a request that times out never receives a late callback.
 */
#ifndef CRM_HTTP_PG_H
#define CRM_HTTP_PG_H

#include "http.h"
#include "pg.h"

/* Submits `unit` on behalf of `req`. On success the request awaits the unit. On failure the unit is freed and the
 * request answered (503 with Retry-After for a full queue, an open breaker or no database; 500 otherwise);
 * returns the error. */
int crm_http_pg_submit(crm_http_req_t *req, crm_pg_unit_t *unit, crm_pg_unit_cb cb);

/* Makes `req` await a unit that its handler submitted itself (for handlers that answer a refused submit their own
 * way): if the request goes away first, the unit is detached and its callback never runs. */
void crm_http_pg_await(crm_http_req_t *req, crm_pg_unit_t *unit);

/* In a unit callback: the request to answer, or NULL when it no longer wants an answer. */
crm_http_req_t *crm_http_pg_resume(void *data);

/* The one-statement unit most handlers need: builds it (flags as crm_pg_unit_new; app.tenant_id set when tenant_id
 * is not NULL), adds stmt with values (as crm_pg_unit_add) and submits it for req as crm_http_pg_submit does. On
 * any failure the request is answered (500 when the unit cannot be built) and the error returned. */
int crm_http_pg_submit_one(crm_http_req_t *req, crm_pg_pool_t *pool, unsigned flags, const char *tenant_id,
                           crm_pg_stmt_t stmt, int nparams, const char *const *values, crm_pg_unit_cb cb);

/* In a unit callback of a handler that has no SQL error of its own to tell apart: the request when the unit
 * succeeded; NULL when the request is gone, or when the unit failed, which has then been answered as
 * crm_http_pg_respond_error does. */
crm_http_req_t *crm_http_pg_result(void *data, crm_pg_unit_t *unit, int err);

/* Answers a failed unit: 503/504 for the pool's own errors; 500 for an SQL error, which is logged with its
 * SQLSTATE (the server's message may quote data, so it goes to the log, never to the client). Handlers that
 * expect particular SQLSTATEs (unique violations → 409) check crm_pg_unit_sqlstate first. */
void crm_http_pg_respond_error(crm_http_req_t *req, crm_pg_unit_t *unit, int err);

#endif
