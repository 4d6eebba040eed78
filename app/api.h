/*
 * Request helpers shared by crmd's handlers (DESIGN.md §5): the operator-token check of the ops endpoints, the
 * field-level problem+json of a validation failure, and the strict parsing of query parameters and ids.
 *
 * Each function that can refuse a request answers it itself and returns 0; the handler then returns at once.
 */
#ifndef CRM_APP_API_H
#define CRM_APP_API_H

#include <jansson.h>

#include "app.h"
#include "http.h"

/* The application a route was registered for (crm_router_add's data). */
static inline crm_app_t *crm_api_app(crm_http_req_t *req)
{
    return req->route->data;
}

/* 1 when the request carries the operator token (constant-time compare); otherwise answers 401 with a
 * WWW-Authenticate challenge and returns 0. */
int crm_api_require_operator(crm_http_req_t *req);

/* A new `errors` array holding one {field, message} entry, for crm_http_respond_problem. */
json_t *crm_api_field_error(const char *field, const char *message);

/* Answers 400 validation-failed naming `field` and what is wrong with it. */
void crm_api_invalid(crm_http_req_t *req, const char *field, const char *message);

/* Reads query parameter `name` as a decimal integer in [min, max] into *out. A missing parameter gives def when
 * `required` is 0. On a bad value answers 400 naming the parameter and returns 0. */
int crm_api_query_int(crm_http_req_t *req, const char *name, long long min, long long max, int required, long long def,
                      long long *out);

/* 1 when s is a canonical UUID (8-4-4-4-12 hex digits). */
int crm_api_is_uuid(const char *s);

#endif
