#include "err.h"

#include <stddef.h>

typedef struct {
    const char *name;
    const char *text;
    int status;
} err_info_t;

/* Indexed by -err. */
static const err_info_t errs[] = {
    [0] = {"ok", "success", 200},
    [-CRM_E_NOMEM] = {"nomem", "out of memory", 503},
    [-CRM_E_INVAL] = {"invalid", "invalid argument", 400},
    [-CRM_E_QUEUE_FULL] = {"queue_full", "queue is full", 503},
    [-CRM_E_QUEUE_TIMEOUT] = {"queue_timeout", "timed out waiting for a resource", 503},
    [-CRM_E_DEADLINE] = {"deadline", "deadline exceeded", 504},
    [-CRM_E_BREAKER_OPEN] = {"breaker_open", "circuit breaker is open", 503},
    [-CRM_E_UNAVAILABLE] = {"unavailable", "dependency unavailable", 503},
    [-CRM_E_SHUTDOWN] = {"shutdown", "shutting down", 503},
    [-CRM_E_DB] = {"db", "database error", 500},
    [-CRM_E_TOO_LARGE] = {"too_large", "input too large", 413},
    [-CRM_E_LIMIT] = {"limit", "input exceeds a limit", 400},
    [-CRM_E_PARSE] = {"parse", "malformed input", 400},
    [-CRM_E_NOT_FOUND] = {"not_found", "not found", 404},
    [-CRM_E_EXISTS] = {"exists", "already exists", 409},
    [-CRM_E_IO] = {"io", "I/O error", 500},
    [-CRM_E_CONFIG] = {"config", "invalid configuration", 500},
    [-CRM_E_STATE] = {"state", "operation not allowed in the current state", 500},
    [-CRM_E_PROTOCOL] = {"protocol", "peer protocol violation", 502},
};

static const err_info_t *lookup(int err)
{
    static const err_info_t unknown = {"unknown", "unknown error", 500};
    if (err > 0 || (size_t)-err >= sizeof(errs) / sizeof(errs[0]) || errs[-err].name == NULL)
        return &unknown;
    return &errs[-err];
}

const char *crm_err_str(int err)
{
    return lookup(err)->text;
}

const char *crm_err_name(int err)
{
    return lookup(err)->name;
}

int crm_err_http_status(int err)
{
    return lookup(err)->status;
}
