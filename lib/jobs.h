/*
 * The durable job queue: work that must happen, eventually and at least once, outside the request that caused it.
 *
 * Jobs live in PostgreSQL (crm.jobs, sql/0004_jobs.sql). Application code enqueues a job by appending
 * crm_jobs_enqueue_add() to the unit of work that makes the change, so the job commits or rolls back with it: this
 * is the outbox of DESIGN.md §3, invariant 9. A runner (crm_jobs_t) in every crmd process claims due jobs of the
 * kinds it has handlers for, with FOR UPDATE SKIP LOCKED, so any number of processes share the queue without
 * waiting for each other, and a job is handed to one runner at a time: a claim takes a lease (lease_ms) that the
 * runner renews every lease_ms/3 while the handler runs; a process that dies stops renewing, and after expiry any
 * runner's periodic crm.jobs_reclaim() hands the job to someone else, counting the attempt that died. (A runner cut
 * off from the database for longer than a lease cannot renew either: its jobs then go to others while its own
 * handlers may still be running, whose outcomes it then ignores. Handler deadlines shorter than the lease keep that
 * window closed.) A failed attempt is
 * retried after an exponential backoff with full jitter, never sooner than the Retry-After the handler passes on;
 * after max_attempts the job is dead, visible to an operator (crm_jobs_list_add) who may replay it
 * (crm_jobs_retry_add).
 *
 * Delivery is at least once: a handler may run again after a crash, a lost lease, an unknown database outcome or a
 * timeout. Handlers make their effects idempotent (idempotency keys on outbound POSTs, ON CONFLICT in SQL).
 *
 * The runner's loop:
 *   - claim only with a free handler slot, min(batch, free slots) at a time, one claim in flight; a claim that comes
 *     back full claims again at once, a partial one waits poll_ms (or crm_jobs_wake);
 *   - call each claimed job's handler from a plain loop over the claim's rows, on the loop thread;
 *   - collect outcomes and record them in batches, one unit of work per kind of outcome (succeeded, failed,
 *     released), sent on the next loop iteration or as soon as a batch is full;
 *   - renew every held lease every lease_ms/3 in one unit; a job the database no longer lists under this runner
 *     was lost (reclaimed after expiry): its handler's outcome is ignored and the loss is logged and counted;
 *   - run crm.jobs_reclaim() every reclaim_ms and crm.jobs_purge() (retention of succeeded jobs) every purge_ms.
 * Every unit has a deadline (clamp(lease_ms/3, 200 ms, 10 s), and never more than the pool's statement timeout).
 * When the pool refuses or fails a unit (breaker open, queue full, unavailable, deadline, SQL error) the runner
 * backs off and tries again later: a claim after a jittered exponential delay, a renewal after lease_ms/6, a
 * batch of outcomes after an exponential delay with the jobs kept. A job whose outcome failed to record
 * CRM_JOBS_MAX_FLUSH_FAILURES times in a row is let go ("abandoned"): its lease expires and the job runs again
 * elsewhere. Nothing is ever lost; at worst it runs twice.
 *
 * Bounds (invariant 3): at most `concurrency` handlers run at once (a handler past its deadline keeps its slot
 * until it returns, so a hung handler is visible and cannot multiply); at most 2 * concurrency leases are held
 * (running handlers plus outcomes not yet recorded); every array is sized at crm_jobs_create. A payload is at
 * most CRM_JOBS_PAYLOAD_MAX bytes of JSON text; the runner holds the parsed payload of each running job.
 *
 * Logs carry job ids, kinds, attempts and the handler's error text, never payloads (they can hold personal data).
 *
 * Threading: everything belongs to the loop thread. Not thread-safe.
 */
#ifndef CRM_JOBS_H
#define CRM_JOBS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "metrics.h"
#include "pg.h"
#include "timerq.h"

#define CRM_JOBS_MAX_KINDS          64             /* handlers per runner */
#define CRM_JOBS_KIND_MAX           64             /* bytes in a kind name: ^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$ */
#define CRM_JOBS_PAYLOAD_MAX        262144         /* bytes of payload JSON text, see crm_job_spec_t */
#define CRM_JOBS_ERROR_MAX          1000           /* bytes of a failure message kept (cut at a UTF-8 boundary) */
#define CRM_JOBS_UNIQUE_KEY_MAX     200            /* bytes in a de-duplication key */
#define CRM_JOBS_MAX_ATTEMPTS       1000           /* largest max_attempts */
#define CRM_JOBS_DEFAULT_ATTEMPTS   10             /* max_attempts when the spec says 0 */
#define CRM_JOBS_MAX_DELAY_MS       31622400000ull /* 366 days: the furthest an enqueue may defer a job */
#define CRM_JOBS_MAX_RETRY_AFTER_MS 604800000ull   /* 7 days: a longer Retry-After is cut to this */
#define CRM_JOBS_MAX_FLUSH_FAILURES 10             /* failed attempts to record one outcome before letting the job go */
#define CRM_JOBS_TIMEOUT_GRACE_MS   250 /* the runner declares a handler timed out this long after its deadline */

typedef struct st_crm_jobs_t crm_jobs_t;
typedef struct st_crm_job_t crm_job_t;
typedef struct st_crm_jobs_kind_t crm_jobs_kind_t;

typedef struct st_crm_jobs_config_t {
    size_t concurrency;       /* handlers running at once, 1..4096; default 64 */
    size_t batch;             /* most jobs per claim and per outcome unit, 1..1024; default 64 */
    uint64_t lease_ms;        /* lease taken by a claim and by each renewal, 300..86400000; default 30000 */
    uint64_t poll_ms;         /* idle wait between claims that found less than a batch, 1..3600000; default 500 */
    uint64_t backoff_base_ms; /* retry delay: random in [0, min(backoff_max, base * 2^(attempt-1))]; default 1000 */
    uint64_t backoff_max_ms;  /* >= base, <= 30 days; default 3600000 */
    uint64_t reclaim_ms;      /* period of crm.jobs_reclaim(), 10..3600000; default 5000 */
    uint64_t retention_ms;    /* succeeded jobs are deleted this long after finishing; 0 keeps them; default 7 d */
    uint64_t purge_ms;        /* period of crm.jobs_purge() (retention), 10..86400000; default 60000 */
    const char *owner_prefix; /* names this runner in lease_owner; copied, at most 100 bytes; NULL = "host:pid".
                                 A random suffix is appended so that a restarted process never inherits leases. */
} crm_jobs_config_t;

/* Fills cfg with the defaults above. */
void crm_jobs_config_default(crm_jobs_config_t *cfg);

/*
 * A claimed job, as its handler sees it. The runner owns it and everything it points to. The public fields are
 * read-only and valid from the handler call until the handler ends the job with crm_job_succeed or crm_job_fail;
 * after that call returns the handler must not touch the job again.
 */
struct st_crm_job_t {
    int64_t id;
    const char *kind;
    const char *tenant_id; /* the tenant's UUID, or NULL for a system job; run tenant work with this tenant set */
    const json_t *payload; /* the parsed payload object (jansson); borrow, never decref */
    int attempt;           /* 1-based: 1 on the first run */
    int max_attempts;      /* attempt == max_attempts is the last one: a failure then makes the job dead */
    uint64_t deadline;     /* loop ms (uv_now) by which the handler should have ended the job */
    crm_jobs_t *runner;
    /* private to the runner */
    crm_timer_t _timer; /* the handler's deadline plus CRM_JOBS_TIMEOUT_GRACE_MS */
    crm_jobs_kind_t *_kind;
    uint8_t _handler;   /* the handler has been called and has not ended the job yet */
    uint8_t _ignored;   /* the runner gave up on this handler (timeout, lost lease, stop): its outcome is ignored */
    uint8_t _lease;     /* lease_state_t in jobs.c */
    uint8_t _op;        /* the outcome to record */
    uint8_t _permanent; /* with a failure: dead at once */
    uint8_t _confirmed; /* scratch while reading an answer */
    unsigned _flush_failures;
    uint64_t _renew_gen;
    uint64_t _delay_ms; /* with a failure: when to run again */
    uint64_t _started_ns;
    char *_error; /* with a failure: the message, sanitised */
    json_t *_payload;
    char _tenant[40];
};

/*
 * A handler. Runs on the loop thread, called by the runner with the claimed job and the ctx given at registration.
 * It must end the job exactly once, with crm_job_succeed or crm_job_fail, either before it returns or later from
 * any loop callback (typically when its own I/O completes). It should respect job->deadline; if it has not ended
 * the job by then (plus CRM_JOBS_TIMEOUT_GRACE_MS) the runner records the failure "timeout" (so the job is retried,
 * possibly elsewhere, while this handler may still be running) and ignores the handler's late outcome. The job
 * stays valid until the handler ends it, however late.
 */
typedef void (*crm_job_handler_fn)(crm_job_t *job, void *ctx);

/* Ends the job: its work is done. Records success (batched; see above). */
void crm_job_succeed(crm_job_t *job);

/*
 * Ends the job: this attempt failed. `error` (may be NULL) is copied into last_error, cut to CRM_JOBS_ERROR_MAX
 * bytes with invalid UTF-8 replaced by '?'; it is logged and shown to operators, so it must not contain secrets or
 * payload data. retry_after_ms 0 leaves the delay to the backoff; otherwise the job runs no sooner than that (an
 * upstream's Retry-After; cut to CRM_JOBS_MAX_RETRY_AFTER_MS). permanent nonzero makes the job dead at once (input
 * that can never work); so does failing the last attempt.
 */
void crm_job_fail(crm_job_t *job, const char *error, uint64_t retry_after_ms, int permanent);

/*
 * Creates a runner that will use `pool` (which must outlive it, see crm_jobs_stop) on `loop`. Does not touch the
 * database. Returns 0, CRM_E_INVAL (a configuration value out of range) or CRM_E_NOMEM.
 */
int crm_jobs_create(uv_loop_t *loop, crm_pg_pool_t *pool, const crm_jobs_config_t *cfg, crm_jobs_t **out);

/*
 * Registers the runner's statements with the pool (crm_pg_pool_prepare). Call it once, before crm_pg_pool_start;
 * the enqueue, list and retry helpers need it too, so a process that only enqueues calls it as well. One runner per
 * pool: the statement names are fixed. Returns 0, CRM_E_STATE (called twice), or the pool's error (CRM_E_INVAL when
 * the pool has already started, CRM_E_EXISTS when another runner registered on this pool).
 */
int crm_jobs_prepare(crm_jobs_t *jobs);

/*
 * Registers the handler for jobs of `kind` (copied), before crm_jobs_start. timeout_ms is the handler's deadline,
 * 1 .. 10 * lease_ms: it may exceed the lease because renewal keeps the lease while the handler runs. Returns 0,
 * CRM_E_INVAL (bad kind, NULL fn, timeout out of range), CRM_E_EXISTS (kind already registered), CRM_E_LIMIT
 * (CRM_JOBS_MAX_KINDS reached), CRM_E_STATE (already started or stopping).
 */
int crm_jobs_register(crm_jobs_t *jobs, const char *kind, crm_job_handler_fn fn, void *ctx, uint64_t timeout_ms);

/*
 * Starts claiming (at once), renewing, reclaiming and purging. The pool may still be connecting: units wait for it
 * within their deadlines, and failures back off. Returns 0, CRM_E_STATE (not prepared, or started before) or
 * CRM_E_NOMEM. A runner without handlers claims nothing but still reclaims and purges.
 */
int crm_jobs_start(crm_jobs_t *jobs);

/*
 * Claims now instead of waiting for the next poll: after this process enqueued work (once its unit committed).
 * A claim already in flight is followed by another. Ignored while claims are backing off after database errors,
 * and unless started.
 */
void crm_jobs_wake(crm_jobs_t *jobs);

/*
 * Stops the runner. It claims no more jobs at once; handlers already running get up to grace_ms to end their jobs,
 * and outcomes keep being recorded meanwhile. After grace_ms (or as soon as no handler runs), jobs claimed but not
 * yet handed to a handler are released (crm.jobs_release: queued again at once, the attempt not counted), while
 * jobs whose handlers are still running keep their lease, unrenewed, until it expires: their handlers may still be
 * doing the work (an SMTP submission until the outbound client closes), and releasing them at once would let
 * another process start the same job meanwhile. Their outcomes are ignored from then on. Then the outcomes still
 * pending are recorded, within at most 2 * clamp(lease_ms/3, 200 ms, 10 s); what cannot be recorded by then is
 * left to lease expiry and reclaim. Then every handle is closed and on_stopped(data) runs (from the loop, never
 * inside this call; it may be NULL). The pool must stay open until on_stopped has run; after it the runner touches
 * neither the pool nor the loop.
 *
 * A stopped runner still serves crm_jobs_enqueue_add, crm_jobs_list_add, crm_jobs_retry_add, crm_jobs_owner,
 * crm_jobs_stats and its metrics collector, until crm_jobs_free.
 *
 * Works in any state after crm_jobs_create (a runner never started just closes its handles). Returns 0, or
 * CRM_E_STATE when already stopping (the callback then never runs), CRM_E_INVAL for NULL.
 */
int crm_jobs_stop(crm_jobs_t *jobs, uint64_t grace_ms, void (*on_stopped)(void *data), void *data);

/*
 * Frees a runner that has stopped (on_stopped has run) or was never started and stopped. Memory a running handler
 * still holds (its crm_job_t, and with it the runner) is freed when the handler ends its job, which then only frees
 * memory. Call it once nothing renders metrics or enqueues through this runner any more. Accepts NULL.
 */
void crm_jobs_free(crm_jobs_t *jobs);

/* The lease owner this runner writes: owner_prefix plus ":" and 8 random hex digits. */
const char *crm_jobs_owner(const crm_jobs_t *jobs);

/* ---- enqueueing inside the caller's transaction (the outbox) ---- */

typedef struct st_crm_job_spec_t {
    const char *kind;         /* as for crm_jobs_register; need not be registered in this process */
    const char *payload_json; /* a JSON object as text; NULL = {}. At most CRM_JOBS_PAYLOAD_MAX bytes here, and
                                 again as PostgreSQL prints it back (jsonb puts a space after every ':' and ','),
                                 which the database checks (SQLSTATE 54000): keep payloads well below the limit;
                                 they are references to data, not the data */
    uint64_t delay_ms;        /* run no sooner than this; at most CRM_JOBS_MAX_DELAY_MS */
    int max_attempts;         /* 0 = CRM_JOBS_DEFAULT_ATTEMPTS; else 1..CRM_JOBS_MAX_ATTEMPTS */
    const char *unique_key;   /* NULL = none; else 1..CRM_JOBS_UNIQUE_KEY_MAX bytes: while a job of the same
                                 tenant, kind and key is queued or running, this one is absorbed */
} crm_job_spec_t;

/*
 * Appends `SELECT crm.job_enqueue(...)` to unit, a unit of the runner's pool (the tenant is the unit's, see
 * crm_pg_unit_set_tenant; none makes a system job). Everything is copied. Returns the statement's index: its single
 * row holds the new job's id, or NULL when a pending job with the same unique_key absorbed it. Errors: CRM_E_INVAL
 * (bad kind, key, attempts, delay; another pool; not prepared), CRM_E_TOO_LARGE (payload), or crm_pg_unit_add's.
 * The payload's JSON syntax is checked by the database (the unit then fails with CRM_E_DB, SQLSTATE 22P02, or 23514
 * for a payload that is not an object). Runners elsewhere learn of the job at their next poll; call crm_jobs_wake
 * after the unit committed for this process to claim it at once.
 */
int crm_jobs_enqueue_add(crm_jobs_t *jobs, crm_pg_unit_t *unit, const crm_job_spec_t *spec);

/* ---- operator endpoints (the application guards them with the operator token and builds the responses) ---- */

/* Columns of a crm_jobs_list_add row, all text; timestamps are RFC 3339 UTC with milliseconds; NULL where empty. */
enum {
    CRM_JOBS_COL_ID = 0,
    CRM_JOBS_COL_TENANT_ID,
    CRM_JOBS_COL_KIND,
    CRM_JOBS_COL_STATE,
    CRM_JOBS_COL_ATTEMPTS,
    CRM_JOBS_COL_MAX_ATTEMPTS,
    CRM_JOBS_COL_RUN_AT,
    CRM_JOBS_COL_LAST_ERROR,
    CRM_JOBS_COL_CREATED_AT,
    CRM_JOBS_COL_UPDATED_AT,
    CRM_JOBS_COL_FINISHED_AT,
    CRM_JOBS_LIST_COLUMNS
};

/*
 * Appends the listing of jobs across all tenants in `state` ("queued", "running", "succeeded", "dead"; NULL = all)
 * with id > after_id (0 = from the start), in id order, at most `limit` (1..1000) rows; the last row's id is the
 * next cursor. Returns the statement's index, or CRM_E_INVAL, or crm_pg_unit_add's error.
 */
int crm_jobs_list_add(crm_jobs_t *jobs, crm_pg_unit_t *unit, const char *state, int64_t after_id, int limit);

/* Who asked, for the audit log row of a replay; any field may be NULL. ip is an IPv4 or IPv6 address as text. */
typedef struct st_crm_jobs_actor_t {
    const char *request_id;
    const char *ip;
    const char *user_agent;
} crm_jobs_actor_t;

/*
 * Appends the replay of dead job `id`: queued at once with its attempts reset to 0 (last_error kept until the next
 * outcome), and an audit_log row (actor_type operator, action job.retry, target job/<id>, with actor's fields) when
 * the job belongs to a tenant. The statement returns no row when the job does not exist (404), or one row
 * (job_id, state, replayed): ("queued", true) after a replay, or the job's unchanged current state and false when
 * it was not dead (409). Replaying a job whose unique_key a pending job now holds fails the unit with CRM_E_DB,
 * SQLSTATE 23505 (409: that job already does the work). actor may be NULL. Returns the statement's index, or
 * CRM_E_INVAL / the pool's.
 */
int crm_jobs_retry_add(crm_jobs_t *jobs, crm_pg_unit_t *unit, int64_t id, const crm_jobs_actor_t *actor);

/* ---- figures ---- */

typedef struct st_crm_jobs_stats_t {
    size_t running;     /* handlers in progress whose outcome counts */
    size_t overdue;     /* handlers in progress whose outcome is ignored (timed out, lease lost, released) */
    size_t leases;      /* jobs whose lease this runner holds: running, or outcome not yet recorded */
    size_t pending;     /* outcomes waiting to be sent (not counting those in flight) */
    uint64_t claimed;   /* jobs claimed */
    uint64_t succeeded; /* successes recorded */
    uint64_t failed;    /* failures recorded that queued the job again */
    uint64_t dead;      /* failures recorded that made the job dead */
    uint64_t released;  /* jobs handed back at stop (or claimed while stopping) */
    uint64_t lost;      /* leases found lost: renewal or outcome not accepted by the database */
    uint64_t timeouts;  /* handlers that ran past their deadline */
    uint64_t abandoned; /* outcomes given up after repeated failures or at the end of stop */
    uint64_t claims, claim_errors;
    uint64_t renewals, renew_errors;
    uint64_t flushes, flush_errors;
    uint64_t reclaimed, reclaim_errors; /* jobs crm.jobs_reclaim() requeued or killed, by this runner's calls */
    uint64_t purged, purge_errors;
} crm_jobs_stats_t;

void crm_jobs_stats(const crm_jobs_t *jobs, crm_jobs_stats_t *out);

/*
 * Registers the runner's collector: crmd_jobs_total{kind,outcome} (outcome: succeeded, failed, dead, timeout, lost,
 * released, abandoned; every registered kind's series exist from start, at zero), crmd_jobs_running,
 * crmd_jobs_overdue and crmd_jobs_leases gauges, crmd_job_duration_seconds{kind} (handler run time),
 * crmd_jobs_claimed_total, crmd_jobs_reclaimed_total, crmd_jobs_purged_total and
 * crmd_jobs_errors_total{operation} (claim, renew, flush, reclaim, purge).
 */
int crm_jobs_register_metrics(crm_jobs_t *jobs, crm_metrics_t *metrics);

#endif
