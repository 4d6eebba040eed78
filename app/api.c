#include "api.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int crm_api_require_operator(crm_http_req_t *req)
{
    if (crm_http_bearer_matches(req, crm_api_app(req)->config->operator_token))
        return 1;
    crm_http_add_header(req, "www-authenticate", "Bearer realm=\"crmd-ops\"");
    crm_http_respond_problem(req, 401, "unauthorized", "Unauthorized",
                             "This endpoint requires Authorization: Bearer <CRMD_OPERATOR_TOKEN>.", NULL);
    return 0;
}

json_t *crm_api_field_error(const char *field, const char *message)
{
    json_t *errors = json_array();
    json_array_append_new(errors, json_pack("{s:s, s:s}", "field", field, "message", message));
    return errors;
}

void crm_api_invalid(crm_http_req_t *req, const char *field, const char *message)
{
    crm_http_respond_problem(req, 400, "validation-failed", "Validation failed", "The request is not valid.",
                             crm_api_field_error(field, message));
}

int crm_api_query_int(crm_http_req_t *req, const char *name, long long min, long long max, int required, long long def,
                      long long *out)
{
    const char *v = crm_http_query(req, name);
    if (v == NULL && !required) {
        *out = def;
        return 1;
    }
    char *end = NULL;
    errno = 0;
    long long n = v != NULL ? strtoll(v, &end, 10) : 0;
    if (v == NULL || *v == '\0' || *end != '\0' || errno != 0 || n < min || n > max) {
        char msg[96];
        snprintf(msg, sizeof(msg), "must be an integer between %lld and %lld", min, max);
        crm_api_invalid(req, name, msg);
        return 0;
    }
    *out = n;
    return 1;
}

int crm_api_is_uuid(const char *s)
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
