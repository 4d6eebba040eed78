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

/* One expected member of a JSON request body, for crm_api_read_body. */
typedef struct st_crm_api_field_t {
    const char *name;
    int required;
    size_t min_chars, max_chars; /* length in characters (code points) of the string */
    const char **out;            /* receives a NUL-terminated copy in request memory, or stays NULL when absent */
} crm_api_field_t;

/* Parses the body as a JSON object whose members are all strings and all listed in fields: every unknown member,
 * missing required member, non-string value and out-of-range length is reported at once in one 400
 * validation-failed problem (and JSON errors as crm_http_parse_json answers them). On success copies each present
 * value into request memory, sets *fields[i].out and returns 1; otherwise the request is answered and 0 returned. */
int crm_api_read_body(crm_http_req_t *req, const crm_api_field_t *fields, size_t n);

/* Answers 400 validation-failed with `errors` (an array of {field, message}; taken over). */
void crm_api_invalid_many(crm_http_req_t *req, json_t *errors);

/* Reads the opaque keyset cursor of a list endpoint: base64url of a JSON array written by crm_api_cursor_encode.
 * Absent: *out = NULL and 1. Malformed: answers 400 naming "cursor" and returns 0. *out is a new reference. */
int crm_api_cursor_decode(crm_http_req_t *req, json_t **out);

/* Encodes a JSON array (taken over) as an opaque cursor string (a new json string), or json null on failure. */
json_t *crm_api_cursor_encode(json_t *position);

/* 1 when s is a canonical UUID (8-4-4-4-12 hex digits). */
int crm_api_is_uuid(const char *s);

#endif
