/*
 * Unit tests for lib/router.c.
 *
 * Every match goes through match_path, which copies the path into a heap buffer of exactly its length with no
 * terminating NUL, so AddressSanitizer reports any read past len. Allocation failures are injected through the
 * linker's --wrap=calloc and --wrap=realloc, which redirect the router's calls (and this file's) to the wrappers
 * below.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "router.h"

#define BIT(m) (1u << (m))

void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t size);

/* -1: allocations succeed; k >= 0: the allocation after k more successful ones fails, then injection disarms. */
static int fail_countdown = -1;

static int inject_failure(void)
{
    if (fail_countdown < 0)
        return 0;
    return fail_countdown-- == 0;
}

void *__wrap_calloc(size_t n, size_t size)
{
    return inject_failure() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t size)
{
    return inject_failure() ? NULL : __real_realloc(p, size);
}

static void handler_a(struct st_crm_http_req_t *req)
{
}

static void handler_b(struct st_crm_http_req_t *req)
{
}

/* The heap copy of the last matched path; params point into it until the next match or teardown. */
static char *path_copy;

static crm_route_result_t match_path(const crm_router_t *r, crm_http_method_t m, const char *path,
                                     crm_route_match_t *out)
{
    size_t len = strlen(path);
    free(path_copy);
    path_copy = malloc(len != 0 ? len : 1);
    assert_non_null(path_copy);
    memcpy(path_copy, path, len);
    return crm_router_match(r, m, path_copy, len, out);
}

static int setup(void **state)
{
    crm_router_t *r = malloc(sizeof(*r));
    if (r == NULL || crm_router_init(r) != 0) {
        free(r);
        return -1;
    }
    *state = r;
    return 0;
}

static int teardown(void **state)
{
    crm_router_dispose(*state);
    free(*state);
    free(path_copy);
    path_copy = NULL;
    fail_countdown = -1;
    return 0;
}

/* Registers pattern for m with the pattern itself as data, and checks that the call reports success. */
static crm_route_t *add_ok(crm_router_t *r, crm_http_method_t m, const char *pattern)
{
    const char *err = "unset";
    crm_route_t *route = crm_router_add(r, m, pattern, handler_a, (void *)pattern, &err);
    assert_non_null(route);
    assert_null(err);
    assert_string_equal(route->pattern, pattern);
    assert_int_equal(route->method, m);
    assert_ptr_equal(route->data, pattern);
    assert_int_equal(route->max_body_bytes, 0);
    return route;
}

static void expect_reject(crm_router_t *r, crm_http_method_t m, const char *pattern, const char *msg)
{
    size_t before = crm_router_count(r);
    const char *err = NULL;
    assert_null(crm_router_add(r, m, pattern, handler_a, NULL, &err));
    assert_non_null(err);
    assert_string_equal(err, msg);
    assert_int_equal(crm_router_count(r), before);
}

static void expect_found(const crm_router_t *r, crm_http_method_t m, const char *path, const crm_route_t *route,
                         crm_route_match_t *out)
{
    assert_int_equal(match_path(r, m, path, out), CRM_ROUTE_FOUND);
    assert_ptr_equal(out->route, route);
}

static void expect_not_found(const crm_router_t *r, crm_http_method_t m, const char *path)
{
    crm_route_match_t out;
    memset(&out, 0xa5, sizeof(out));
    assert_int_equal(match_path(r, m, path, &out), CRM_ROUTE_NOT_FOUND);
    assert_null(out.route);
    assert_int_equal(out.nparams, 0);
    assert_int_equal(out.allowed, 0);
}

static void expect_param(const crm_route_match_t *out, size_t i, const char *value)
{
    assert_true(i < out->nparams);
    assert_int_equal(out->params[i].len, strlen(value));
    assert_memory_equal(out->params[i].base, value, strlen(value));
    /* The slice points into the matched path itself. */
    assert_true(out->params[i].base >= path_copy);
}

static void test_method_parse_and_name(void **state)
{
    static const char *names[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
    for (int m = 0; m < CRM_HTTP_METHOD_COUNT; ++m) {
        assert_int_equal(crm_http_method_parse(names[m], strlen(names[m])), m);
        assert_string_equal(crm_http_method_name((crm_http_method_t)m), names[m]);
    }
    assert_int_equal(crm_http_method_parse("TRACE", 5), -1);
    assert_int_equal(crm_http_method_parse("CONNECT", 7), -1);
    assert_int_equal(crm_http_method_parse("get", 3), -1);
    assert_int_equal(crm_http_method_parse("Get", 3), -1);
    assert_int_equal(crm_http_method_parse("GETS", 4), -1);
    assert_int_equal(crm_http_method_parse("GE", 2), -1);
    assert_int_equal(crm_http_method_parse("", 0), -1);
    /* Only len bytes count: "GETX" cut to 3 bytes is GET, and "POS" is no method. */
    assert_int_equal(crm_http_method_parse("GETX", 3), CRM_HTTP_GET);
    assert_int_equal(crm_http_method_parse("POST", 3), -1);
    assert_null(crm_http_method_name(CRM_HTTP_METHOD_COUNT));
    assert_null(crm_http_method_name((crm_http_method_t)-1));
}

static void test_literals(void **state)
{
    crm_router_t *r = *state;
    crm_route_match_t out;
    const crm_route_t *live = add_ok(r, CRM_HTTP_GET, "/health/live");
    const crm_route_t *ready = add_ok(r, CRM_HTTP_GET, "/health/ready");
    const crm_route_t *metrics = add_ok(r, CRM_HTTP_GET, "/metrics");

    expect_not_found(r, CRM_HTTP_GET, "/");
    const crm_route_t *root = add_ok(r, CRM_HTTP_GET, "/");

    expect_found(r, CRM_HTTP_GET, "/health/live", live, &out);
    assert_int_equal(out.nparams, 0);
    assert_int_equal(out.allowed, BIT(CRM_HTTP_GET) | BIT(CRM_HTTP_HEAD) | BIT(CRM_HTTP_OPTIONS));
    expect_found(r, CRM_HTTP_GET, "/health/ready", ready, &out);
    expect_found(r, CRM_HTTP_GET, "/metrics", metrics, &out);
    expect_found(r, CRM_HTTP_GET, "/", root, &out);
    assert_int_equal(out.nparams, 0);

    /* Literals compare exact bytes: no case folding, no percent-decoding. */
    expect_not_found(r, CRM_HTTP_GET, "/Health/live");
    expect_not_found(r, CRM_HTTP_GET, "/health/LIVE");
    expect_not_found(r, CRM_HTTP_GET, "/health/liv%65");
    expect_not_found(r, CRM_HTTP_GET, "/health/liv");
    expect_not_found(r, CRM_HTTP_GET, "/health/lives");
    expect_not_found(r, CRM_HTTP_GET, "/metric");
}

static void test_params(void **state)
{
    crm_router_t *r = *state;
    crm_route_match_t out;
    const crm_route_t *contact = add_ok(r, CRM_HTTP_GET, "/v1/contacts/{id}");
    const crm_route_t *msg = add_ok(r, CRM_HTTP_GET, "/v1/accounts/{account_id}/messages/{message_id}");

    assert_int_equal(contact->nparams, 1);
    assert_string_equal(contact->param_names[0], "id");
    assert_int_equal(msg->nparams, 2);
    assert_string_equal(msg->param_names[0], "account_id");
    assert_string_equal(msg->param_names[1], "message_id");

    expect_found(r, CRM_HTTP_GET, "/v1/contacts/0b7e4c1a-5f7a-4f7e-9d55-2c1f0a0b0c0d", contact, &out);
    assert_int_equal(out.nparams, 1);
    expect_param(&out, 0, "0b7e4c1a-5f7a-4f7e-9d55-2c1f0a0b0c0d");

    expect_found(r, CRM_HTTP_GET, "/v1/accounts/acc%201/messages/m:9", msg, &out);
    assert_int_equal(out.nparams, 2);
    expect_param(&out, 0, "acc%201");
    expect_param(&out, 1, "m:9");
    assert_ptr_equal(out.params[0].base, path_copy + strlen("/v1/accounts/"));

    /* A one-byte segment is a valid value; an empty one never is. */
    expect_found(r, CRM_HTTP_GET, "/v1/contacts/x", contact, &out);
    expect_param(&out, 0, "x");
    expect_not_found(r, CRM_HTTP_GET, "/v1/contacts/");
    expect_not_found(r, CRM_HTTP_GET, "/v1/accounts//messages/m");
    expect_not_found(r, CRM_HTTP_GET, "/v1/accounts/a/messages/");
}

static void test_literal_precedence_and_backtracking(void **state)
{
    crm_router_t *r = *state;
    crm_route_match_t out;
    const crm_route_t *bulk = add_ok(r, CRM_HTTP_GET, "/v1/contacts/bulk");
    const crm_route_t *byid = add_ok(r, CRM_HTTP_GET, "/v1/contacts/{id}");

    expect_found(r, CRM_HTTP_GET, "/v1/contacts/bulk", bulk, &out);
    assert_int_equal(out.nparams, 0);
    expect_found(r, CRM_HTTP_GET, "/v1/contacts/bulkx", byid, &out);
    expect_param(&out, 0, "bulkx");
    expect_found(r, CRM_HTTP_GET, "/v1/contacts/bul", byid, &out);
    expect_param(&out, 0, "bul");

    /* /a/x exists only as a prefix of /a/x/y: /a/x/c and /a/x fall back to the parameter. */
    const crm_route_t *axy = add_ok(r, CRM_HTTP_GET, "/a/x/y");
    const crm_route_t *apc = add_ok(r, CRM_HTTP_GET, "/a/{p}/c");
    const crm_route_t *ap = add_ok(r, CRM_HTTP_GET, "/a/{p}");
    expect_found(r, CRM_HTTP_GET, "/a/x/y", axy, &out);
    assert_int_equal(out.nparams, 0);
    expect_found(r, CRM_HTTP_GET, "/a/x/c", apc, &out);
    assert_int_equal(out.nparams, 1);
    expect_param(&out, 0, "x");
    expect_found(r, CRM_HTTP_GET, "/a/x", ap, &out);
    expect_param(&out, 0, "x");
    expect_not_found(r, CRM_HTTP_GET, "/a/x/d");

    /* Backtracking over several levels. */
    const crm_route_t *deep_lit = add_ok(r, CRM_HTTP_GET, "/b/x/y/z");
    const crm_route_t *deep_par = add_ok(r, CRM_HTTP_GET, "/b/{p}/y/w");
    expect_found(r, CRM_HTTP_GET, "/b/x/y/z", deep_lit, &out);
    expect_found(r, CRM_HTTP_GET, "/b/x/y/w", deep_par, &out);
    assert_int_equal(out.nparams, 1);
    expect_param(&out, 0, "x");

    /* The literal branch binds a parameter, fails, and must give it back before the parameter branch binds its own. */
    const crm_route_t *s1 = add_ok(r, CRM_HTTP_GET, "/s/lit/{y}/z");
    const crm_route_t *s2 = add_ok(r, CRM_HTTP_GET, "/s/{p}/q/r");
    expect_found(r, CRM_HTTP_GET, "/s/lit/q/z", s1, &out);
    assert_int_equal(out.nparams, 1);
    expect_param(&out, 0, "q");
    expect_found(r, CRM_HTTP_GET, "/s/lit/q/r", s2, &out);
    assert_int_equal(out.nparams, 1);
    expect_param(&out, 0, "lit");
    expect_not_found(r, CRM_HTTP_GET, "/s/lit/q/x");
}

static void test_path_decides_before_method(void **state)
{
    crm_router_t *r = *state;
    crm_route_match_t out;
    char allow[CRM_ROUTER_ALLOW_MAX];
    const crm_route_t *bulk = add_ok(r, CRM_HTTP_POST, "/v1/contacts/bulk");
    const crm_route_t *byid = add_ok(r, CRM_HTTP_GET, "/v1/contacts/{id}");

    /* The literal node exists with routes, so it answers even though the parameter route has GET. */
    assert_int_equal(match_path(r, CRM_HTTP_GET, "/v1/contacts/bulk", &out), CRM_ROUTE_METHOD_NOT_ALLOWED);
    assert_null(out.route);
    assert_int_equal(out.nparams, 0);
    assert_int_equal(out.allowed, BIT(CRM_HTTP_POST) | BIT(CRM_HTTP_OPTIONS));
    assert_int_equal(crm_router_format_allow(out.allowed, allow, sizeof(allow)), strlen("POST, OPTIONS"));
    assert_string_equal(allow, "POST, OPTIONS");
    expect_found(r, CRM_HTTP_POST, "/v1/contacts/bulk", bulk, &out);
    expect_found(r, CRM_HTTP_GET, "/v1/contacts/other", byid, &out);
}

static void test_not_found(void **state)
{
    crm_router_t *r = *state;
    crm_route_match_t out;
    const crm_route_t *contact = add_ok(r, CRM_HTTP_GET, "/v1/contacts/{id}");
    const crm_route_t *live = add_ok(r, CRM_HTTP_GET, "/health/live");

    /* Prefixes of a route are not routes. */
    expect_not_found(r, CRM_HTTP_GET, "/v1");
    expect_not_found(r, CRM_HTTP_GET, "/v1/");
    expect_not_found(r, CRM_HTTP_GET, "/v1/contacts");
    expect_not_found(r, CRM_HTTP_GET, "/health");
    /* Extra segments. */
    expect_not_found(r, CRM_HTTP_GET, "/v1/contacts/1/2");
    expect_not_found(r, CRM_HTTP_GET, "/health/live/x");
    /* The trailing slash is significant. */
    expect_not_found(r, CRM_HTTP_GET, "/health/live/");
    expect_not_found(r, CRM_HTTP_GET, "/v1/contacts/1/");
    /* Empty segments never match. */
    expect_not_found(r, CRM_HTTP_GET, "//health/live");
    expect_not_found(r, CRM_HTTP_GET, "/health//live");
    expect_not_found(r, CRM_HTTP_GET, "//");
    /* Not a path at all; the root has no route here. */
    expect_not_found(r, CRM_HTTP_GET, "");
    expect_not_found(r, CRM_HTTP_GET, "/");
    expect_not_found(r, CRM_HTTP_GET, "health/live");
    expect_not_found(r, CRM_HTTP_GET, "*");
    expect_not_found(r, CRM_HTTP_OPTIONS, "*");
    /* NOT_FOUND takes precedence over the method. */
    expect_not_found(r, CRM_HTTP_DELETE, "/nothing");

    expect_found(r, CRM_HTTP_GET, "/v1/contacts/1", contact, &out);
    expect_found(r, CRM_HTTP_GET, "/health/live", live, &out);
}

static void test_method_not_allowed(void **state)
{
    crm_router_t *r = *state;
    crm_route_match_t out;
    char allow[CRM_ROUTER_ALLOW_MAX];
    const crm_route_t *get = add_ok(r, CRM_HTTP_GET, "/v1/contacts/{id}");
    const crm_route_t *patch = add_ok(r, CRM_HTTP_PATCH, "/v1/contacts/{id}");
    const crm_route_t *del = add_ok(r, CRM_HTTP_DELETE, "/v1/contacts/{id}");
    const unsigned mask =
        BIT(CRM_HTTP_GET) | BIT(CRM_HTTP_HEAD) | BIT(CRM_HTTP_PATCH) | BIT(CRM_HTTP_DELETE) | BIT(CRM_HTTP_OPTIONS);

    assert_int_equal(match_path(r, CRM_HTTP_POST, "/v1/contacts/42", &out), CRM_ROUTE_METHOD_NOT_ALLOWED);
    assert_null(out.route);
    assert_int_equal(out.allowed, mask);
    assert_int_equal(out.nparams, 1);
    expect_param(&out, 0, "42");
    assert_int_equal(crm_router_format_allow(out.allowed, allow, sizeof(allow)),
                     strlen("GET, HEAD, PATCH, DELETE, OPTIONS"));
    assert_string_equal(allow, "GET, HEAD, PATCH, DELETE, OPTIONS");

    assert_int_equal(match_path(r, CRM_HTTP_PUT, "/v1/contacts/42", &out), CRM_ROUTE_METHOD_NOT_ALLOWED);
    assert_int_equal(out.allowed, mask);

    /* The same mask accompanies a successful match. */
    expect_found(r, CRM_HTTP_PATCH, "/v1/contacts/42", patch, &out);
    assert_int_equal(out.allowed, mask);
    expect_found(r, CRM_HTTP_DELETE, "/v1/contacts/42", del, &out);
    expect_found(r, CRM_HTTP_GET, "/v1/contacts/42", get, &out);

    /* A method value outside the enum is not allowed rather than undefined. */
    assert_int_equal(match_path(r, CRM_HTTP_METHOD_COUNT, "/v1/contacts/42", &out), CRM_ROUTE_METHOD_NOT_ALLOWED);
    assert_null(out.route);
    assert_int_equal(out.allowed, mask);
    assert_int_equal(match_path(r, (crm_http_method_t)-1, "/v1/contacts/42", &out), CRM_ROUTE_METHOD_NOT_ALLOWED);
    assert_null(out.route);
}

static void test_head(void **state)
{
    crm_router_t *r = *state;
    crm_route_match_t out;
    const crm_route_t *get_x = add_ok(r, CRM_HTTP_GET, "/x");
    const crm_route_t *get_y = add_ok(r, CRM_HTTP_GET, "/y");
    const crm_route_t *head_y = add_ok(r, CRM_HTTP_HEAD, "/y");
    const crm_route_t *head_z = add_ok(r, CRM_HTTP_HEAD, "/z");
    add_ok(r, CRM_HTTP_POST, "/p");

    /* HEAD falls back to GET. */
    expect_found(r, CRM_HTTP_HEAD, "/x", get_x, &out);
    assert_int_equal(out.allowed, BIT(CRM_HTTP_GET) | BIT(CRM_HTTP_HEAD) | BIT(CRM_HTTP_OPTIONS));

    /* An explicit HEAD route wins over the fallback. */
    expect_found(r, CRM_HTTP_HEAD, "/y", head_y, &out);
    expect_found(r, CRM_HTTP_GET, "/y", get_y, &out);

    /* HEAD alone does not imply GET. */
    expect_found(r, CRM_HTTP_HEAD, "/z", head_z, &out);
    assert_int_equal(match_path(r, CRM_HTTP_GET, "/z", &out), CRM_ROUTE_METHOD_NOT_ALLOWED);
    assert_int_equal(out.allowed, BIT(CRM_HTTP_HEAD) | BIT(CRM_HTTP_OPTIONS));

    /* Without GET there is no fallback. */
    assert_int_equal(match_path(r, CRM_HTTP_HEAD, "/p", &out), CRM_ROUTE_METHOD_NOT_ALLOWED);
    assert_null(out.route);
    assert_int_equal(out.allowed, BIT(CRM_HTTP_POST) | BIT(CRM_HTTP_OPTIONS));
}

static void test_options(void **state)
{
    crm_router_t *r = *state;
    crm_route_match_t out;
    char allow[CRM_ROUTER_ALLOW_MAX];
    add_ok(r, CRM_HTTP_GET, "/x");
    add_ok(r, CRM_HTTP_POST, "/x");
    const crm_route_t *opt = add_ok(r, CRM_HTTP_OPTIONS, "/o");
    add_ok(r, CRM_HTTP_PUT, "/o");

    /* Without an explicit route the HTTP layer answers OPTIONS itself from the mask. */
    assert_int_equal(match_path(r, CRM_HTTP_OPTIONS, "/x", &out), CRM_ROUTE_METHOD_NOT_ALLOWED);
    assert_null(out.route);
    assert_int_equal(out.allowed, BIT(CRM_HTTP_GET) | BIT(CRM_HTTP_HEAD) | BIT(CRM_HTTP_POST) | BIT(CRM_HTTP_OPTIONS));
    crm_router_format_allow(out.allowed, allow, sizeof(allow));
    assert_string_equal(allow, "GET, HEAD, POST, OPTIONS");

    expect_found(r, CRM_HTTP_OPTIONS, "/o", opt, &out);
    assert_int_equal(out.allowed, BIT(CRM_HTTP_PUT) | BIT(CRM_HTTP_OPTIONS));

    expect_not_found(r, CRM_HTTP_OPTIONS, "/nothing");
}

static void test_custom_method_segments(void **state)
{
    crm_router_t *r = *state;
    crm_route_match_t out;
    const crm_route_t *list = add_ok(r, CRM_HTTP_GET, "/v1/contacts");
    const crm_route_t *upsert = add_ok(r, CRM_HTTP_POST, "/v1/contacts:upsert-by-email");
    const crm_route_t *batch = add_ok(r, CRM_HTTP_POST, "/v1/contacts:batchGet");
    const crm_route_t *byid = add_ok(r, CRM_HTTP_GET, "/v1/contacts/{id}");
    const crm_route_t *any = add_ok(r, CRM_HTTP_GET, "/v1/{collection}");

    expect_found(r, CRM_HTTP_GET, "/v1/contacts", list, &out);
    expect_found(r, CRM_HTTP_POST, "/v1/contacts:upsert-by-email", upsert, &out);
    assert_int_equal(out.nparams, 0);
    expect_found(r, CRM_HTTP_POST, "/v1/contacts:batchGet", batch, &out);
    assert_int_equal(match_path(r, CRM_HTTP_GET, "/v1/contacts:upsert-by-email", &out), CRM_ROUTE_METHOD_NOT_ALLOWED);
    assert_int_equal(out.allowed, BIT(CRM_HTTP_POST) | BIT(CRM_HTTP_OPTIONS));
    /* An unknown custom method is just another segment value. */
    expect_found(r, CRM_HTTP_GET, "/v1/contacts:unknown", any, &out);
    expect_param(&out, 0, "contacts:unknown");
    expect_found(r, CRM_HTTP_GET, "/v1/contacts/abc:def", byid, &out);
    expect_param(&out, 0, "abc:def");

    /* Every pchar sub-delimiter is a literal character. */
    const crm_route_t *odd = add_ok(r, CRM_HTTP_GET, "/x/a-b.c_d~e:f@g!h$i&j'k(l)m*n+o,p;q=r");
    expect_found(r, CRM_HTTP_GET, "/x/a-b.c_d~e:f@g!h$i&j'k(l)m*n+o,p;q=r", odd, &out);
}

static void test_add_rejections(void **state)
{
    crm_router_t *r = *state;
    crm_route_match_t out;
    const char *err = NULL;

    add_ok(r, CRM_HTTP_GET, "/a/{id}");
    add_ok(r, CRM_HTTP_GET, "/");

    expect_reject(r, CRM_HTTP_GET, "", "pattern must start with '/'");
    expect_reject(r, CRM_HTTP_GET, "health", "pattern must start with '/'");
    expect_reject(r, CRM_HTTP_GET, "{id}", "pattern must start with '/'");

    expect_reject(r, CRM_HTTP_GET, "//", "empty path segment");
    expect_reject(r, CRM_HTTP_GET, "//a", "empty path segment");
    expect_reject(r, CRM_HTTP_GET, "/a//b", "empty path segment");
    expect_reject(r, CRM_HTTP_GET, "/a/", "empty path segment");
    expect_reject(r, CRM_HTTP_GET, "/a/{id}/", "empty path segment");

    expect_reject(r, CRM_HTTP_GET, "/a b", "invalid character in pattern");
    expect_reject(r, CRM_HTTP_GET, "/a%20b", "invalid character in pattern");
    expect_reject(r, CRM_HTTP_GET, "/a?b", "invalid character in pattern");
    expect_reject(r, CRM_HTTP_GET, "/a#b", "invalid character in pattern");
    expect_reject(r, CRM_HTTP_GET, "/a\"b", "invalid character in pattern");
    expect_reject(r, CRM_HTTP_GET, "/a\\b", "invalid character in pattern");
    expect_reject(r, CRM_HTTP_GET, "/a\tb", "invalid character in pattern");
    expect_reject(r, CRM_HTTP_GET, "/caf\xc3\xa9", "invalid character in pattern");

    expect_reject(r, CRM_HTTP_GET, "/b/{id", "a parameter must be a whole segment of the form {name}");
    expect_reject(r, CRM_HTTP_GET, "/b/{", "a parameter must be a whole segment of the form {name}");
    expect_reject(r, CRM_HTTP_GET, "/b/}", "a parameter must be a whole segment of the form {name}");
    expect_reject(r, CRM_HTTP_GET, "/b/x{id}", "a parameter must be a whole segment of the form {name}");
    expect_reject(r, CRM_HTTP_GET, "/b/{id}x", "a parameter must be a whole segment of the form {name}");
    expect_reject(r, CRM_HTTP_GET, "/b/{id}:archive", "a parameter must be a whole segment of the form {name}");

    expect_reject(r, CRM_HTTP_GET, "/b/{}", "invalid parameter name");
    expect_reject(r, CRM_HTTP_GET, "/b/{Id}", "invalid parameter name");
    expect_reject(r, CRM_HTTP_GET, "/b/{1d}", "invalid parameter name");
    expect_reject(r, CRM_HTTP_GET, "/b/{i-d}", "invalid parameter name");
    expect_reject(r, CRM_HTTP_GET, "/b/{{id}}", "invalid parameter name");
    expect_reject(r, CRM_HTTP_GET, "/b/{a}b}", "invalid parameter name");
    /* 33 characters is one too many; 32 is accepted. */
    expect_reject(r, CRM_HTTP_GET, "/b/{abcdefghijklmnopqrstuvwxyz_123456}", "invalid parameter name");
    const crm_route_t *longname = add_ok(r, CRM_HTTP_GET, "/b/{abcdefghijklmnopqrstuvwxyz_12345}");
    assert_string_equal(longname->param_names[0], "abcdefghijklmnopqrstuvwxyz_12345");
    add_ok(r, CRM_HTTP_GET, "/c/{_}/{a_9}");

    expect_reject(r, CRM_HTTP_GET, "/d/{x}/{x}", "duplicate parameter name");
    expect_reject(r, CRM_HTTP_GET, "/d/{x}/lit/{x}", "duplicate parameter name");

    expect_reject(r, CRM_HTTP_GET, "/e/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}", "too many parameters");
    const crm_route_t *eight = add_ok(r, CRM_HTTP_GET, "/e/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}");
    assert_int_equal(eight->nparams, CRM_ROUTER_MAX_PARAMS);
    assert_int_equal(match_path(r, CRM_HTTP_GET, "/e/1/2/3/4/5/6/7/8", &out), CRM_ROUTE_FOUND);
    assert_int_equal(out.nparams, 8);
    expect_param(&out, 7, "8");

    {
        char pat[3 * CRM_ROUTER_MAX_SEGMENTS + 4] = "";
        for (int i = 0; i < CRM_ROUTER_MAX_SEGMENTS; ++i)
            strcat(pat, "/s");
        add_ok(r, CRM_HTTP_GET, pat);
        strcat(pat, "/s");
        expect_reject(r, CRM_HTTP_GET, pat, "too many segments");
    }

    expect_reject(r, CRM_HTTP_GET, "/a/{id}", "route already registered for this method and path");
    expect_reject(r, CRM_HTTP_GET, "/", "route already registered for this method and path");
    add_ok(r, CRM_HTTP_POST, "/a/{id}");
    expect_reject(r, CRM_HTTP_POST, "/a/{id}", "route already registered for this method and path");

    expect_reject(r, CRM_HTTP_GET, "/a/{key}", "conflicting parameter name at the same position");
    expect_reject(r, CRM_HTTP_GET, "/a/{key}/b", "conflicting parameter name at the same position");
    add_ok(r, CRM_HTTP_GET, "/a/{id}/b/{x}");
    expect_reject(r, CRM_HTTP_PUT, "/a/{id}/b/{y}/c", "conflicting parameter name at the same position");
    /* The rejected patterns left nothing behind. */
    expect_not_found(r, CRM_HTTP_GET, "/a/1/b");
    expect_not_found(r, CRM_HTTP_PUT, "/a/1/b/2/c");

    /* Argument errors. */
    expect_reject(r, CRM_HTTP_GET, NULL, "invalid argument");
    expect_reject(r, CRM_HTTP_METHOD_COUNT, "/f", "invalid argument");
    expect_reject(r, (crm_http_method_t)-1, "/f", "invalid argument");
    assert_null(crm_router_add(r, CRM_HTTP_GET, "/f", NULL, NULL, &err));
    assert_string_equal(err, "invalid argument");
    /* errmsg is optional. */
    assert_null(crm_router_add(r, CRM_HTTP_GET, "bad", handler_a, NULL, NULL));
    assert_non_null(crm_router_add(r, CRM_HTTP_GET, "/f", handler_b, NULL, NULL));
    assert_ptr_equal(crm_router_route(r, (uint32_t)crm_router_count(r) - 1)->handler, handler_b);
}

static void test_ids_and_enumeration(void **state)
{
    crm_router_t *r = *state;
    char pattern[32] = "/v1/things/{thing_id}";
    const char *expect[] = {"/v1/things/{thing_id}", "/v1/things", "/v1/things/{thing_id}", "/"};

    crm_route_t *a = add_ok(r, CRM_HTTP_GET, pattern);
    /* The router keeps its own copy of the pattern. */
    memset(pattern, 'X', sizeof(pattern) - 1);
    assert_string_equal(a->pattern, "/v1/things/{thing_id}");
    assert_string_equal(a->param_names[0], "thing_id");
    add_ok(r, CRM_HTTP_POST, "/v1/things");
    add_ok(r, CRM_HTTP_DELETE, "/v1/things/{thing_id}");
    expect_reject(r, CRM_HTTP_GET, "/v1/things/{other}", "conflicting parameter name at the same position");
    add_ok(r, CRM_HTTP_GET, "/");

    assert_int_equal(crm_router_count(r), 4);
    for (uint32_t id = 0; id < 4; ++id) {
        const crm_route_t *route = crm_router_route(r, id);
        assert_non_null(route);
        assert_int_equal(route->id, id);
        assert_string_equal(route->pattern, expect[id]);
    }
    assert_ptr_equal(crm_router_route(r, 0), a);
    assert_null(crm_router_route(r, 4));
    assert_null(crm_router_route(r, UINT32_MAX));

    /* max_body_bytes belongs to the caller and is visible through the match. */
    crm_route_match_t out;
    a->max_body_bytes = 4096;
    expect_found(r, CRM_HTTP_GET, "/v1/things/t1", a, &out);
    assert_int_equal(out.route->max_body_bytes, 4096);
}

static void test_percent_decode(void **state)
{
    char out[64];
    size_t n = 99;

    assert_int_equal(crm_percent_decode("abc", 3, out, &n), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(out, "abc", 3);
    assert_int_equal(crm_percent_decode("", 0, out, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(crm_percent_decode("a%20b", 5, out, &n), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(out, "a b", 3);
    assert_int_equal(crm_percent_decode("%41%62%7e%7E", 12, out, &n), 0);
    assert_int_equal(n, 4);
    assert_memory_equal(out, "Ab~~", 4);
    assert_int_equal(crm_percent_decode("a%2Fb%2fc", 9, out, &n), 0);
    assert_int_equal(n, 5);
    assert_memory_equal(out, "a/b/c", 5);
    assert_int_equal(crm_percent_decode("a+b", 3, out, &n), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(out, "a+b", 3);
    assert_int_equal(crm_percent_decode("%ff%C3%A9", 9, out, &n), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(out, "\xff\xc3\xa9", 3);

    /* Bad escapes; *outlen is reset. */
    static const char *bad[] = {"%", "%4", "a%", "ab%4", "%G0", "%0G", "%-1", "% 1", "%%41", "%00", "a%00b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        n = 99;
        assert_int_equal(crm_percent_decode(bad[i], strlen(bad[i]), out, &n), CRM_E_PARSE);
        assert_int_equal(n, 0);
    }
    n = 99;
    assert_int_equal(crm_percent_decode("a\0b", 3, out, &n), CRM_E_PARSE);
    assert_int_equal(n, 0);

    /* An escape cut by len is truncated even when the bytes after len would complete it; the exact-size heap copy
     * lets AddressSanitizer catch a read past len. */
    char *buf = malloc(2);
    assert_non_null(buf);
    memcpy(buf, "%4", 2);
    assert_int_equal(crm_percent_decode(buf, 2, out, &n), CRM_E_PARSE);
    assert_int_equal(crm_percent_decode("%41", 2, out, &n), CRM_E_PARSE);
    free(buf);

    /* Decoding in place. */
    char inplace[] = "x%2Fy%20z";
    assert_int_equal(crm_percent_decode(inplace, strlen(inplace), inplace, &n), 0);
    assert_int_equal(n, 5);
    assert_memory_equal(inplace, "x/y z", 5);
}

static void test_param_with_encoded_slash(void **state)
{
    crm_router_t *r = *state;
    crm_route_match_t out;
    char decoded[64];
    size_t n;
    const crm_route_t *files = add_ok(r, CRM_HTTP_GET, "/files/{name}/meta");

    expect_found(r, CRM_HTTP_GET, "/files/dir%2Fsub%2Ffile.txt/meta", files, &out);
    expect_param(&out, 0, "dir%2Fsub%2Ffile.txt");
    assert_int_equal(crm_percent_decode(out.params[0].base, out.params[0].len, decoded, &n), 0);
    assert_int_equal(n, strlen("dir/sub/file.txt"));
    assert_memory_equal(decoded, "dir/sub/file.txt", n);
    /* An unencoded slash is a segment boundary. */
    expect_not_found(r, CRM_HTTP_GET, "/files/dir/file.txt/meta");
}

static void test_format_allow(void **state)
{
    char buf[CRM_ROUTER_ALLOW_MAX];
    const unsigned all = (1u << CRM_HTTP_METHOD_COUNT) - 1;
    const char *full = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

    assert_int_equal(crm_router_format_allow(all, buf, sizeof(buf)), strlen(full));
    assert_string_equal(buf, full);
    assert_true(strlen(full) < CRM_ROUTER_ALLOW_MAX);
    /* Unknown bits are ignored. */
    assert_int_equal(crm_router_format_allow(all | (1u << CRM_HTTP_METHOD_COUNT) | (1u << 31), buf, sizeof(buf)),
                     strlen(full));
    assert_string_equal(buf, full);
    assert_int_equal(crm_router_format_allow(0, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "");
    assert_int_equal(crm_router_format_allow(BIT(CRM_HTTP_DELETE), buf, sizeof(buf)), 6);
    assert_string_equal(buf, "DELETE");

    /* Exact fit and one byte short, at every cut point of the full value. */
    assert_int_equal(crm_router_format_allow(all, buf, strlen(full) + 1), strlen(full));
    assert_string_equal(buf, full);
    assert_int_equal(crm_router_format_allow(all, buf, strlen(full)), strlen("GET, HEAD, POST, PUT, PATCH, DELETE"));
    assert_string_equal(buf, "GET, HEAD, POST, PUT, PATCH, DELETE");
    assert_int_equal(crm_router_format_allow(BIT(CRM_HTTP_GET) | BIT(CRM_HTTP_HEAD), buf, 10), 9);
    assert_string_equal(buf, "GET, HEAD");
    assert_int_equal(crm_router_format_allow(BIT(CRM_HTTP_GET) | BIT(CRM_HTTP_HEAD), buf, 9), 3);
    assert_string_equal(buf, "GET");
    /* A later, shorter name is not squeezed in after one that did not fit. */
    assert_int_equal(crm_router_format_allow(BIT(CRM_HTTP_GET) | BIT(CRM_HTTP_OPTIONS) | BIT(CRM_HTTP_PUT), buf, 10),
                     8);
    assert_string_equal(buf, "GET, PUT");
    assert_int_equal(crm_router_format_allow(all, buf, 4), 3);
    assert_string_equal(buf, "GET");
    assert_int_equal(crm_router_format_allow(all, buf, 3), 0);
    assert_string_equal(buf, "");
    assert_int_equal(crm_router_format_allow(all, buf, 1), 0);
    assert_string_equal(buf, "");

    /* cap 0 writes nothing. */
    memset(buf, 'Z', sizeof(buf));
    assert_int_equal(crm_router_format_allow(all, buf, 0), 0);
    assert_int_equal(buf[0], 'Z');
}

/* 200 routes of four shapes, registered in a scrambled order, each matched with its own method and another. */
#define TABLE_RESOURCES 50
#define TABLE_ROUTES    (4 * TABLE_RESOURCES)

static const crm_http_method_t table_methods[4] = {CRM_HTTP_GET, CRM_HTTP_PATCH, CRM_HTTP_POST, CRM_HTTP_PUT};

static void table_pattern(char *buf, size_t cap, int res, int shape)
{
    switch (shape) {
    case 0:
        snprintf(buf, cap, "/v1/res%d", res);
        break;
    case 1:
        snprintf(buf, cap, "/v1/res%d/{id}", res);
        break;
    case 2:
        snprintf(buf, cap, "/v1/res%d/{id}/sub", res);
        break;
    default:
        snprintf(buf, cap, "/v1/res%d:action", res);
        break;
    }
}

/* A concrete path for the pattern, with the parameter value "k<31 * res>". */
static void table_path(char *buf, size_t cap, int res, int shape)
{
    switch (shape) {
    case 0:
        snprintf(buf, cap, "/v1/res%d", res);
        break;
    case 1:
        snprintf(buf, cap, "/v1/res%d/k%d", res, res * 31);
        break;
    case 2:
        snprintf(buf, cap, "/v1/res%d/k%d/sub", res, res * 31);
        break;
    default:
        snprintf(buf, cap, "/v1/res%d:action", res);
        break;
    }
}

static void test_table_200_routes(void **state)
{
    crm_router_t *r = *state;
    char patterns[TABLE_ROUTES][48];
    const crm_route_t *routes[TABLE_ROUTES];
    crm_route_match_t out;
    char path[64], value[16];

    /* 77 is coprime with 200, so i * 77 mod 200 visits every entry once, far from registration order. */
    for (int i = 0; i < TABLE_ROUTES; ++i) {
        int k = (i * 77) % TABLE_ROUTES;
        table_pattern(patterns[k], sizeof(patterns[k]), k / 4, k % 4);
        routes[k] = add_ok(r, table_methods[k % 4], patterns[k]);
        assert_int_equal(routes[k]->id, (uint32_t)i);
    }
    assert_int_equal(crm_router_count(r), TABLE_ROUTES);

    for (int k = 0; k < TABLE_ROUTES; ++k) {
        int res = k / 4, shape = k % 4;
        crm_http_method_t m = table_methods[shape];
        table_path(path, sizeof(path), res, shape);
        snprintf(value, sizeof(value), "k%d", res * 31);
        expect_found(r, m, path, routes[k], &out);
        assert_ptr_equal(out.route->data, patterns[k]);
        assert_int_equal(out.nparams, shape == 1 || shape == 2 ? 1 : 0);
        if (out.nparams == 1)
            expect_param(&out, 0, value);
        assert_int_equal(match_path(r, CRM_HTTP_DELETE, path, &out), CRM_ROUTE_METHOD_NOT_ALLOWED);
        unsigned mask = BIT(m) | BIT(CRM_HTTP_OPTIONS) | (m == CRM_HTTP_GET ? BIT(CRM_HTTP_HEAD) : 0);
        assert_int_equal(out.allowed, mask);
        /* A trailing slash and two extra segments miss (one extra segment after shape 0 is shape 1). */
        strcat(path, "/");
        expect_not_found(r, m, path);
        strcat(path, "x/y");
        expect_not_found(r, m, path);
    }
    expect_not_found(r, CRM_HTTP_GET, "/v1/res50");
    expect_not_found(r, CRM_HTTP_GET, "/v1/res");
    expect_not_found(r, CRM_HTTP_GET, "/v1/res01");
    expect_not_found(r, CRM_HTTP_PUT, "/v1/res1:other");
}

static void test_max_routes(void **state)
{
    crm_router_t *r = *state;
    crm_route_match_t out;
    char pattern[32];

    for (int i = 0; i < CRM_ROUTER_MAX_ROUTES; ++i) {
        snprintf(pattern, sizeof(pattern), "/r/%d", i);
        assert_non_null(crm_router_add(r, CRM_HTTP_GET, pattern, handler_a, NULL, NULL));
    }
    expect_reject(r, CRM_HTTP_GET, "/one/more", "too many routes");
    /* The limit applies to routes, not paths: a new method on an existing node is also refused. */
    expect_reject(r, CRM_HTTP_POST, "/r/0", "too many routes");
    assert_int_equal(crm_router_count(r), CRM_ROUTER_MAX_ROUTES);

    assert_int_equal(match_path(r, CRM_HTTP_GET, "/r/0", &out), CRM_ROUTE_FOUND);
    assert_int_equal(out.route->id, 0);
    assert_string_equal(out.route->pattern, "/r/0");
    assert_int_equal(match_path(r, CRM_HTTP_GET, "/r/1023", &out), CRM_ROUTE_FOUND);
    assert_int_equal(out.route->id, 1023);
    assert_string_equal(out.route->pattern, "/r/1023");
    expect_not_found(r, CRM_HTTP_GET, "/one/more");
}

static void test_no_read_past_len(void **state)
{
    crm_router_t *r = *state;
    crm_route_match_t out;
    const crm_route_t *live = add_ok(r, CRM_HTTP_GET, "/health/live");
    const crm_route_t *contact = add_ok(r, CRM_HTTP_GET, "/v1/contacts/{id}");
    add_ok(r, CRM_HTTP_GET, "/health/live/deep");
    const char *longer = "/health/live/deep?x=1";
    const char *withparam = "/v1/contacts/abc/extra";

    /* A prefix of a longer buffer matches as the prefix, wherever the cut falls. */
    assert_int_equal(crm_router_match(r, CRM_HTTP_GET, longer, strlen("/health/live"), &out), CRM_ROUTE_FOUND);
    assert_ptr_equal(out.route, live);
    assert_int_equal(crm_router_match(r, CRM_HTTP_GET, longer, strlen("/health/liv"), &out), CRM_ROUTE_NOT_FOUND);
    assert_int_equal(crm_router_match(r, CRM_HTTP_GET, longer, strlen("/health/live/"), &out), CRM_ROUTE_NOT_FOUND);
    assert_int_equal(crm_router_match(r, CRM_HTTP_GET, withparam, strlen("/v1/contacts/abc"), &out), CRM_ROUTE_FOUND);
    assert_ptr_equal(out.route, contact);
    assert_int_equal(out.nparams, 1);
    assert_ptr_equal(out.params[0].base, withparam + strlen("/v1/contacts/"));
    assert_int_equal(out.params[0].len, 3);
    assert_int_equal(crm_router_match(r, CRM_HTTP_GET, withparam, strlen("/v1/contacts/a"), &out), CRM_ROUTE_FOUND);
    assert_int_equal(out.params[0].len, 1);
    assert_int_equal(crm_router_match(r, CRM_HTTP_GET, "/", 0, &out), CRM_ROUTE_NOT_FOUND);

    /* Every prefix of a path, in a buffer of exactly that length, so ASan sees any overread. */
    for (size_t len = 0; len <= strlen(longer); ++len) {
        char *buf = malloc(len != 0 ? len : 1);
        assert_non_null(buf);
        memcpy(buf, longer, len);
        crm_route_result_t res = crm_router_match(r, CRM_HTTP_GET, buf, len, &out);
        int is_route = len == strlen("/health/live") || len == strlen("/health/live/deep");
        assert_int_equal(res, is_route ? CRM_ROUTE_FOUND : CRM_ROUTE_NOT_FOUND);
        free(buf);
    }
}

static void test_allocation_failures(void **state)
{
    crm_router_t *r = *state;
    crm_route_match_t out;
    const crm_route_t *base = add_ok(r, CRM_HTTP_GET, "/v1/contacts/{id}");
    const char *err;
    int k;

    /* Fail each allocation of an add that needs a literal slot, a route, three nodes and their child arrays in
     * turn, until the add needs no more than were allowed; every failure must leave the router as it was. */
    for (k = 0;; ++k) {
        fail_countdown = k;
        err = NULL;
        crm_route_t *route =
            crm_router_add(r, CRM_HTTP_POST, "/v1/contacts/{id}/notes/{note_id}/x", handler_a, NULL, &err);
        int exhausted = fail_countdown >= 0;
        fail_countdown = -1;
        if (route != NULL) {
            assert_true(exhausted);
            assert_null(err);
            break;
        }
        assert_false(exhausted);
        assert_string_equal(err, "out of memory");
        assert_int_equal(crm_router_count(r), 1);
        expect_not_found(r, CRM_HTTP_POST, "/v1/contacts/1/notes/2/x");
        expect_not_found(r, CRM_HTTP_POST, "/v1/contacts/1/notes");
        expect_found(r, CRM_HTTP_GET, "/v1/contacts/1", base, &out);
    }
    /* Six allocations: the literal slot in {id}, the route, the nodes x, {note_id} and notes, and the child array of
     * {note_id}. The slot reserved by the earlier attempts is kept (spare capacity, not a change), so the last
     * attempt needs five and succeeds with k == 5. */
    assert_int_equal(k, 5);
    assert_int_equal(crm_router_count(r), 2);
    assert_int_equal(match_path(r, CRM_HTTP_POST, "/v1/contacts/1/notes/2/x", &out), CRM_ROUTE_FOUND);
    assert_int_equal(out.nparams, 2);
    expect_param(&out, 1, "2");

    /* A new method on an existing node needs only the route. */
    fail_countdown = 0;
    expect_reject(r, CRM_HTTP_DELETE, "/v1/contacts/{id}", "out of memory");
    fail_countdown = -1;
    assert_int_equal(match_path(r, CRM_HTTP_DELETE, "/v1/contacts/1", &out), CRM_ROUTE_METHOD_NOT_ALLOWED);

    /* init reports failure and leaves a router that dispose accepts. */
    crm_router_t r2;
    for (k = 0; k < 2; ++k) {
        fail_countdown = k;
        assert_int_equal(crm_router_init(&r2), CRM_E_NOMEM);
        fail_countdown = -1;
        crm_router_dispose(&r2);
    }
}

static void test_init_dispose(void **state)
{
    crm_router_t r;
    assert_int_equal(crm_router_init(&r), 0);
    assert_int_equal(crm_router_count(&r), 0);
    assert_null(crm_router_route(&r, 0));
    add_ok(&r, CRM_HTTP_GET, "/x/{y}");
    crm_router_dispose(&r);
    /* Disposing twice and disposing NULL are harmless. */
    crm_router_dispose(&r);
    crm_router_dispose(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_method_parse_and_name),
        cmocka_unit_test_setup_teardown(test_literals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_params, setup, teardown),
        cmocka_unit_test_setup_teardown(test_literal_precedence_and_backtracking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_path_decides_before_method, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_method_not_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_options, setup, teardown),
        cmocka_unit_test_setup_teardown(test_custom_method_segments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_rejections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ids_and_enumeration, setup, teardown),
        cmocka_unit_test(test_percent_decode),
        cmocka_unit_test_setup_teardown(test_param_with_encoded_slash, setup, teardown),
        cmocka_unit_test(test_format_allow),
        cmocka_unit_test_setup_teardown(test_table_200_routes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_routes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_read_past_len, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allocation_failures, setup, teardown),
        cmocka_unit_test(test_init_dispose),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
