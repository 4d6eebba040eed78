#include "api.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jwt.h"

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

void crm_api_invalid_many(crm_http_req_t *req, json_t *errors)
{
    crm_http_respond_problem(req, 400, "validation-failed", "Validation failed", "The request is not valid.", errors);
}

static size_t utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; ++i)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

int crm_api_read_body(crm_http_req_t *req, const crm_api_field_t *fields, size_t n)
{
    json_t *body = NULL;
    if (crm_http_parse_json(req, &body) != 0)
        return 0;
    json_t *errors = json_array();
    if (!json_is_object(body)) {
        json_array_append_new(errors, json_pack("{s:s, s:s}", "field", "", "message", "must be a JSON object"));
    } else {
        const char *key;
        json_t *value;
        json_object_foreach(body, key, value)
        {
            size_t i = 0;
            while (i < n && strcmp(fields[i].name, key) != 0)
                ++i;
            if (i == n)
                json_array_append_new(errors, json_pack("{s:s, s:s}", "field", key, "message", "is not a known field"));
        }
        for (size_t i = 0; i < n; ++i) {
            json_t *v = json_object_get(body, fields[i].name);
            char msg[96];
            *fields[i].out = NULL;
            if (v == NULL || json_is_null(v)) {
                if (fields[i].required)
                    json_array_append_new(errors,
                                          json_pack("{s:s, s:s}", "field", fields[i].name, "message", "is required"));
                continue;
            }
            if (!json_is_string(v)) {
                json_array_append_new(errors,
                                      json_pack("{s:s, s:s}", "field", fields[i].name, "message", "must be a string"));
                continue;
            }
            size_t chars = utf8_chars(json_string_value(v), json_string_length(v));
            if (chars < fields[i].min_chars || chars > fields[i].max_chars) {
                snprintf(msg, sizeof(msg), "must be %zu to %zu characters long", fields[i].min_chars,
                         fields[i].max_chars);
                json_array_append_new(errors, json_pack("{s:s, s:s}", "field", fields[i].name, "message", msg));
                continue;
            }
            *fields[i].out = h2o_strdup(&req->h2o->pool, json_string_value(v), json_string_length(v)).base;
        }
    }
    json_decref(body);
    if (json_array_size(errors) != 0) {
        crm_api_invalid_many(req, errors);
        return 0;
    }
    json_decref(errors);
    return 1;
}

int crm_api_cursor_decode(crm_http_req_t *req, json_t **out)
{
    *out = NULL;
    const char *c = crm_http_query(req, "cursor");
    if (c == NULL)
        return 1;
    uint8_t raw[512];
    size_t len = 0;
    json_t *v = NULL;
    if (crm_base64url_decode(c, strlen(c), raw, sizeof(raw), &len) == 0)
        v = json_loadb((const char *)raw, len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_array(v)) {
        json_decref(v);
        crm_api_invalid(req, "cursor", "is not a cursor this endpoint returned");
        return 0;
    }
    *out = v;
    return 1;
}

json_t *crm_api_cursor_encode(json_t *position)
{
    char *text = json_dumps(position, JSON_COMPACT);
    json_decref(position);
    char enc[700];
    size_t len = 0;
    json_t *out = NULL;
    if (text != NULL && strlen(text) <= 500 && crm_base64url_encode(text, strlen(text), enc, sizeof(enc), &len) == 0)
        out = json_stringn(enc, len);
    free(text);
    return out != NULL ? out : json_null();
}
