/* libFuzzer target: route matching and percent-decoding (lib/router.h) on arbitrary paths. A match must point
 * its parameters inside the input; decoding must never write more than it read. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void noop(struct st_crm_http_req_t *req)
{
}

static crm_router_t router;
static int ready;

static void setup(void)
{
    static const char *const patterns[] = {"/health/live",
                                           "/v1/contacts",
                                           "/v1/contacts/{id}",
                                           "/v1/contacts/bulk",
                                           "/v1/contacts/{id}/tags/{name}",
                                           "/v1/contacts:upsert-by-email",
                                           "/v1/brands/{id}/contacts",
                                           "/v1/ops/jobs/{id}/retry",
                                           "/"};
    const char *why;
    assert(crm_router_init(&router) == 0);
    for (size_t i = 0; i < sizeof(patterns) / sizeof(patterns[0]); ++i)
        assert(crm_router_add(&router, CRM_HTTP_GET, patterns[i], noop, NULL, &why) != NULL);
    assert(crm_router_add(&router, CRM_HTTP_POST, "/v1/contacts", noop, NULL, &why) != NULL);
    ready = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ready)
        setup();
    /* Copy into an exact-size allocation so that any read past `size` is caught by the sanitizer. */
    char *path = malloc(size > 0 ? size : 1);
    memcpy(path, data, size);
    for (int m = 0; m < CRM_HTTP_METHOD_COUNT; ++m) {
        crm_route_match_t match;
        crm_route_result_t r = crm_router_match(&router, (crm_http_method_t)m, path, size, &match);
        if (r == CRM_ROUTE_FOUND) {
            assert(match.route != NULL);
            assert(match.nparams == match.route->nparams);
        }
        if (r != CRM_ROUTE_NOT_FOUND)
            for (size_t i = 0; i < match.nparams; ++i) {
                assert(match.params[i].base >= path && match.params[i].base + match.params[i].len <= path + size);
                char *out = malloc(match.params[i].len + 1);
                size_t n = 0;
                if (crm_percent_decode(match.params[i].base, match.params[i].len, out, &n) == 0)
                    assert(n <= match.params[i].len);
                free(out);
            }
    }
    char *out = malloc(size + 1);
    size_t n = 0;
    if (crm_percent_decode(path, size, out, &n) == 0)
        assert(n <= size && memchr(out, '\0', n) == NULL);
    free(out);
    free(path);
    return 0;
}
