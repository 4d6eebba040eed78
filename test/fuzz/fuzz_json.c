/* libFuzzer target: request-body JSON parsing under limits (lib/json.h). Any input must give either a document
 * within the limits or an error with a position inside the input; never a crash, a leak or a read past the end. */
#include <assert.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "err.h"
#include "json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    crm_json_limits_t limits;
    crm_json_limits_default(&limits);
    limits.max_bytes = 64 * 1024;
    limits.max_depth = 16;
    limits.max_string_bytes = 256;
    limits.max_array_items = 64;
    json_t *doc = NULL;
    crm_json_error_t err;
    int rc = crm_json_parse((const char *)data, size, &limits, &doc, &err);
    if (rc == 0) {
        assert(doc != NULL && (json_is_object(doc) || json_is_array(doc)));
        /* What was accepted serialises, and re-parses to an equal document. */
        char *text = crm_json_dump_alloc(doc, NULL);
        assert(text != NULL);
        json_t *again = NULL;
        limits.max_bytes = strlen(text) + 1;
        assert(crm_json_parse(text, strlen(text), &limits, &again, &err) == 0);
        assert(json_equal(doc, again));
        json_decref(again);
        free(text);
        json_decref(doc);
    } else {
        assert(doc == NULL);
        assert(rc == CRM_E_PARSE || rc == CRM_E_LIMIT || rc == CRM_E_TOO_LARGE);
        assert(err.position <= size + 1);
        assert(memchr(err.message, '\0', sizeof(err.message)) != NULL);
    }
    return 0;
}
