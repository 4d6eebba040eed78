/*
 * PostgreSQL connection pool on the event loop.
 *
 * A fixed number of libpq connections in nonblocking pipeline mode, each watched by a uv_poll_t, driven entirely
 * by the crmd loop (DESIGN.md §1, §3). Callers submit *units of work*: one or more prepared statements that run
 * as one transaction and end in one pipeline Sync (invariant 7). Many units from different requests are in flight
 * on one connection at once; each unit has its own Sync, so an error in one never affects another.
 *
 * Two transaction shapes:
 *   - plain (default): [setup] stmt… Sync. The extended-protocol implicit transaction makes the statements before
 *     the Sync atomic: the server commits at the Sync, or rolls everything back if any statement failed.
 *   - CRM_PG_TX: BEGIN [setup] stmt… Sync COMMIT Sync. A real transaction block (SAVEPOINT, LOCK and SET LOCAL
 *     work). COMMIT travels after the first Sync on purpose: if a statement fails, the server skips to that Sync and
 *     the COMMIT then ends the aborted block as a ROLLBACK. With COMMIT before the Sync the aborted block would
 *     outlive the unit and fail every unit pipelined behind it (SQLSTATE 25P02) until someone sent ROLLBACK.
 * [setup] is one statement, sent only when needed: `set_config('app.tenant_id', $1, true)` for tenant-scoped
 * units (row-level security, invariant 5) and `set_config('statement_timeout', …, true)` when the unit's remaining
 * time is shorter than the connection's default statement_timeout. Both are transaction-local.
 *
 * Deadlines (invariant 2). Every unit has one: by default now + statement_timeout. It covers the wait for a
 * connection (at most queue_timeout_ms → CRM_E_QUEUE_TIMEOUT, HTTP 503) and execution. The server enforces it with
 * statement_timeout (→ CRM_E_DEADLINE, HTTP 504; the connection stays usable); a client-side backstop timer fires
 * slightly later in case the server or network is stuck, answers CRM_E_DEADLINE and recycles the connection.
 *
 * Bounded everything (invariant 3): at most `pipeline_depth` units in flight per connection, at most `queue_max`
 * waiting (FIFO); a full queue fails the submit at once with CRM_E_QUEUE_FULL (HTTP 503 + Retry-After).
 *
 * Circuit breaker: every unit takes a permit from the pool's breaker; connection failures, lost connections,
 * deadline expiries and server-side resource errors (SQLSTATE classes 08, 53, 57, 58, XX) count as failures;
 * ordinary SQL errors (constraint violations, bad input) are the caller's business and count as successes. While
 * the breaker is open, submits fail at once with CRM_E_BREAKER_OPEN. When no connection is up and none is being
 * established, submits fail at once with CRM_E_UNAVAILABLE rather than waiting: a database that is down must not
 * turn into requests that hang. Connections come back on their own with exponential backoff and full jitter.
 *
 * Callbacks: a unit's callback runs exactly once, on the loop, never from inside crm_pg_unit_submit; if submit
 * fails, it never runs (libuv's rule). Not thread-safe: everything here belongs to the loop thread.
 */
#ifndef CRM_PG_H
#define CRM_PG_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "breaker.h"
#include "metrics.h"

typedef struct st_crm_pg_pool_t crm_pg_pool_t;
typedef struct st_crm_pg_unit_t crm_pg_unit_t;

typedef struct st_crm_pg_config_t {
    const char *conninfo;          /* libpq URI or key=value string for the serving role; copied */
    const char *application_name;  /* reported in pg_stat_activity unless conninfo sets one; copied */
    size_t size;                   /* connections kept open, 1..256 */
    size_t pipeline_depth;         /* units in flight per connection, 1..1024 */
    size_t queue_max;              /* units waiting for a connection, 0..1000000 */
    uint64_t queue_timeout_ms;     /* longest wait for a connection */
    uint64_t statement_timeout_ms; /* server-side per-statement limit and the default unit deadline */
    uint64_t connect_timeout_ms;   /* one connection attempt, including statement preparation */
    uint64_t reconnect_min_ms; /* backoff after a failed or lost connection: full jitter in [0, min(max, min*2^n)] */
    uint64_t reconnect_max_ms;
    uint64_t backstop_grace_ms; /* the client-side timer fires this long after the unit deadline */
    size_t max_statements;      /* statements per unit, default 64 */
    size_t max_param_bytes;     /* parameter bytes per unit, default 16 MiB */
    crm_breaker_config_t breaker;
} crm_pg_config_t;

/* Fills cfg with defaults (size 4, depth 128, queue 1024/1000 ms, statement timeout 5000 ms, connect 5000 ms,
 * backoff 100..5000 ms, grace 250 ms); conninfo stays NULL. */
void crm_pg_config_default(crm_pg_config_t *cfg);

/* Connection states, for metrics and /health/database. */
typedef enum {
    CRM_PG_CONN_IDLE = 0,   /* not started, or closed */
    CRM_PG_CONN_CONNECTING, /* TCP/TLS/auth handshake in progress */
    CRM_PG_CONN_PREPARING,  /* connected; registered statements being prepared */
    CRM_PG_CONN_READY,      /* serving units */
    CRM_PG_CONN_BACKOFF,    /* waiting before the next attempt */
    CRM_PG_CONN_STATE_COUNT
} crm_pg_conn_state_t;

const char *crm_pg_conn_state_name(crm_pg_conn_state_t s);

/* Pool figures, cheap to read at any time (for /health/database, /health/ready and tests). */
typedef struct st_crm_pg_stats_t {
    size_t conns[CRM_PG_CONN_STATE_COUNT]; /* connections by state */
    size_t in_flight;                      /* units sent and not yet answered */
    size_t queued;                         /* units waiting for a connection */
    uint64_t submitted, completed;         /* units accepted by submit / whose callback ran */
    uint64_t rejected_queue_full, rejected_breaker, rejected_unavailable, rejected_shutdown;
    uint64_t queue_timeouts;    /* units that waited longer than queue_timeout_ms */
    uint64_t deadline_expiries; /* units answered CRM_E_DEADLINE (server statement_timeout or client backstop) */
    uint64_t sql_errors;        /* units answered CRM_E_DB */
    uint64_t conn_failures;     /* connection attempts that failed, or connections lost */
    uint64_t reconnects;        /* connections that became ready after an earlier failure */
    uint64_t requeued;          /* read-only units re-run after their connection was lost */
    int prepare_failed;         /* the registered statements do not prepare (schema missing or wrong) */
} crm_pg_stats_t;

/* A prepared-statement handle, valid for the pool that returned it. */
typedef uint32_t crm_pg_stmt_t;

/* Creates a pool on loop; does not connect yet. The breaker named "postgresql" reads the loop clock. */
int crm_pg_pool_create(uv_loop_t *loop, const crm_pg_config_t *cfg, crm_pg_pool_t **out);

/* Registers a statement that every connection prepares right after connecting, before it serves units. Only
 * before crm_pg_pool_start. `name` is for logs and must be unique; sql and name are copied. nparams is the number
 * of $n placeholders; parameter types are inferred by the server. */
int crm_pg_pool_prepare(crm_pg_pool_t *pool, const char *name, const char *sql, int nparams, crm_pg_stmt_t *out);

/* Starts connecting every connection. Units may be submitted right away; they wait (bounded) for the first
 * connection to become ready. */
int crm_pg_pool_start(crm_pg_pool_t *pool);

/* Shuts the pool down: queued and in-flight units complete with CRM_E_SHUTDOWN (their callbacks run, as always,
 * from the loop), every connection is closed (an open transaction is rolled back by the server), every handle is
 * closed, and then on_closed runs and the pool is freed. Submits after this fail with CRM_E_SHUTDOWN. Call it once
 * the callers are done, typically after the HTTP server has drained its in-flight requests. */
void crm_pg_pool_close(crm_pg_pool_t *pool, void (*on_closed)(void *data), void *data);

/* The pool's breaker (read-only use: state for /health/ready and metrics). */
crm_breaker_t *crm_pg_pool_breaker(crm_pg_pool_t *pool);

/* Current figures. */
void crm_pg_pool_stats(const crm_pg_pool_t *pool, crm_pg_stats_t *out);

/* True when at least one connection is ready and the breaker is not open: the pool can serve right now. */
int crm_pg_pool_is_serving(crm_pg_pool_t *pool);

/* Registers the pool's Prometheus collector (connections by state, queue depth, queue wait histogram, deadline
 * expiries, rejections, breaker state and transitions). */
int crm_pg_pool_register_metrics(crm_pg_pool_t *pool, crm_metrics_t *metrics);

/* ---- units of work ---- */

enum {
    CRM_PG_TX = 1u << 0,        /* run inside BEGIN … COMMIT (see above) */
    CRM_PG_READ_ONLY = 1u << 1, /* changes nothing: if its connection is lost before the answer arrives the pool
                                   re-runs it on another connection (within its deadline) instead of failing it */
};

typedef void (*crm_pg_unit_cb)(crm_pg_unit_t *unit, int err, void *data);

/* Creates an empty unit. flags: CRM_PG_TX | CRM_PG_READ_ONLY. NULL when out of memory. */
crm_pg_unit_t *crm_pg_unit_new(crm_pg_pool_t *pool, unsigned flags);

/* Frees a unit that was never submitted, or whose submit failed. Accepts NULL. Units that were submitted are
 * freed by the pool after their callback returns (or, if detached, when their answer arrives). */
void crm_pg_unit_free(crm_pg_unit_t *unit);

/* Runs the unit with app.tenant_id set to `tenant_id` (a UUID string; copied), transaction-locally. */
int crm_pg_unit_set_tenant(crm_pg_unit_t *unit, const char *tenant_id);

/* Sets the unit's absolute deadline in loop milliseconds (uv_now based). Default: submit time + statement
 * timeout. A deadline later than that default is clamped to it. */
void crm_pg_unit_set_deadline(crm_pg_unit_t *unit, uint64_t deadline_ms);

/* Appends a statement. values[i] are text-format parameters (NUL-terminated, or lengths[i] bytes when lengths is
 * not NULL; NULL means SQL NULL); all are copied, so the caller's buffers may go away at once. Returns the
 * statement's index within the unit (0, 1, …) or CRM_E_LIMIT (too many statements or parameter bytes),
 * CRM_E_INVAL (unknown statement or wrong parameter count). */
int crm_pg_unit_add(crm_pg_unit_t *unit, crm_pg_stmt_t stmt, int nparams, const char *const *values,
                    const int *lengths);

/* Submits the unit. On 0 the pool owns it and `cb` runs exactly once, later, with:
 *   0                    every statement succeeded and the transaction committed;
 *   CRM_E_DB             a statement failed (crm_pg_unit_sqlstate/…); the whole unit was rolled back;
 *   CRM_E_DEADLINE       it ran past its deadline. From the server's statement_timeout (SQLSTATE 57014) the unit
 *                        was rolled back; from the client backstop (stuck connection, recycled) a writing unit's
 *                        outcome is unknown, as it is for any timeout. A writing unit is never answered while it
 *                        is still queued in a pipeline, where it could run later; a read-only one may be;
 *   CRM_E_QUEUE_TIMEOUT  no connection became free within queue_timeout_ms (or the deadline);
 *   CRM_E_UNAVAILABLE    the connection was lost (for a writing unit the outcome is then unknown) or none exists;
 *   CRM_E_SHUTDOWN       the pool is closing.
 * Results are readable inside the callback only. On a negative return nothing was sent, cb never runs and the
 * caller still owns the unit: CRM_E_QUEUE_FULL (every pipeline slot and the wait queue are taken), CRM_E_BREAKER_OPEN,
 * CRM_E_UNAVAILABLE (no connection is up or on its way; counted by the breaker as a failed call),
 * CRM_E_DEADLINE (the deadline has already passed), CRM_E_SHUTDOWN, CRM_E_INVAL (empty unit, no callback). */
int crm_pg_unit_submit(crm_pg_unit_t *unit, crm_pg_unit_cb cb, void *data);

/* Detaches a submitted unit from its caller (for example, the HTTP request it served has gone away): its
 * callback will not run. A unit still waiting in the queue is removed and freed at once; one already sent is
 * freed by the pool when its answer arrives. */
void crm_pg_unit_detach(crm_pg_unit_t *unit);

/* Inside the callback: the result of statement `index` (NULL if it did not run). Owned by the unit. */
PGresult *crm_pg_unit_result(const crm_pg_unit_t *unit, size_t index);

/* Inside the callback after CRM_E_DB (or a server-side deadline): SQLSTATE (5 chars), the server's primary message,
 * and the index of the failing statement (-1 when it was one of the pool's own statements). The message may
 * quote data; log it, do not send it to clients. */
const char *crm_pg_unit_sqlstate(const crm_pg_unit_t *unit);
const char *crm_pg_unit_error_message(const crm_pg_unit_t *unit);
int crm_pg_unit_error_index(const crm_pg_unit_t *unit);

/* The pool the unit belongs to. */
crm_pg_pool_t *crm_pg_unit_pool(const crm_pg_unit_t *unit);

/* Number of statements added to the unit. */
size_t crm_pg_unit_count(const crm_pg_unit_t *unit);

#endif
