/*
 * crmd's HTTP API contract (protocols/openapi.yaml, OpenAPI 3.1), embedded at build time and served at
 * GET /openapi.yaml. A test checks every registered route against it (test/integration/test_openapi.py).
 */
#ifndef CRM_OPENAPI_H
#define CRM_OPENAPI_H

#include <stddef.h>

extern const char crm_openapi_yaml[];
extern const size_t crm_openapi_yaml_len;

#endif
