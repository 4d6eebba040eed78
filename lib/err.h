/*
 * crmd error kinds.
 *
 * Every function that can fail returns 0 or one of these negative values; every asynchronous completion callback
 * receives one. Messages are static strings (crm_err_str), safe to log and to put in responses: they never carry
 * input or secrets. Where a kind maps to an HTTP answer, crm_err_http_status says which, so every module answers
 * the same failure the same way (DESIGN.md §3, invariant 2: deadline → 504, shed load → 503).
 */
#ifndef CRM_ERR_H
#define CRM_ERR_H

typedef enum {
    CRM_OK = 0,
    CRM_E_NOMEM = -1,         /* allocation failed */
    CRM_E_INVAL = -2,         /* invalid argument or input */
    CRM_E_QUEUE_FULL = -3,    /* a bounded queue is full; shed at once (503 + Retry-After) */
    CRM_E_QUEUE_TIMEOUT = -4, /* waited past the deadline for a resource (pool connection, worker) (503) */
    CRM_E_DEADLINE = -5,      /* the operation itself ran past its deadline (504) */
    CRM_E_BREAKER_OPEN = -6,  /* the dependency's circuit breaker is open; failed fast (503) */
    CRM_E_UNAVAILABLE = -7,   /* the dependency could not be reached or the connection was lost (503) */
    CRM_E_SHUTDOWN = -8,      /* the process is shutting down (503) */
    CRM_E_DB = -9,            /* the database reported an SQL error; the result carries SQLSTATE and message */
    CRM_E_TOO_LARGE = -10,    /* input over a size limit (413) */
    CRM_E_LIMIT = -11,        /* input over a structural limit: depth, count, length (400) */
    CRM_E_PARSE = -12,        /* malformed input (400) */
    CRM_E_NOT_FOUND = -13,
    CRM_E_EXISTS = -14,
    CRM_E_IO = -15,       /* operating-system I/O error */
    CRM_E_CONFIG = -16,   /* invalid configuration */
    CRM_E_STATE = -17,    /* the object is in a state that does not allow the call */
    CRM_E_PROTOCOL = -18, /* the peer violated its protocol */
} crm_err_t;

/* A static, human-readable description of err (never NULL). */
const char *crm_err_str(int err);

/* A short stable identifier for err ("queue_full", "deadline", ...), for logs, metrics labels and problem types. */
const char *crm_err_name(int err);

/* The HTTP status that answers a request failed by err: 503, 504, 413, 400, 404, 409 or 500. */
int crm_err_http_status(int err);

#endif
