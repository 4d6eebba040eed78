#include "jobs.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "err.h"
#include "json.h"
#include "log.h"
#include "rand.h"

/* crm.jobs_reclaim() and crm.jobs_purge() change at most this many rows per call; a full answer runs the next call
 * at once, so a large backlog is worked off in bounded transactions. */
#define RECLAIM_BATCH 1000
#define PURGE_BATCH   1000
/* Claims that fail back off exponentially from this to the larger of poll_ms and ERROR_BACKOFF_MAX_MS; outcome
 * batches that fail to record back off up to ERROR_BACKOFF_MAX_MS. */
#define ERROR_BACKOFF_MIN_MS 100
#define ERROR_BACKOFF_MAX_MS 5000

/* Where a job's lease stands, from this runner's point of view. */
typedef enum {
    LEASE_NONE = 0, /* not held (never, or no longer): the job is out of the lease map */
    LEASE_HELD,     /* claimed, handler running; renewed */
    LEASE_PENDING,  /* outcome known, waiting to be sent; still renewed */
    LEASE_FLUSHING, /* outcome sent, answer awaited; still renewed (the send may fail and be retried) */
} lease_state_t;

/* The three kinds of outcome, each recorded in its own batches. */
typedef enum { OP_SUCCEED = 0, OP_FAIL, OP_RELEASE, OP_COUNT } op_t;

static const char *const op_names[OP_COUNT] = {"succeed", "fail", "release"};

typedef enum {
    RUNNER_CREATED = 0,
    RUNNER_STARTED,
    RUNNER_STOPPING, /* no claims; waiting up to the grace period for handlers */
    RUNNER_DRAINING, /* handlers released or done; recording the last outcomes */
    RUNNER_CLOSING,  /* handles closing */
    RUNNER_STOPPED,  /* on_stopped has run; memory kept while a handler still holds a job */
} runner_state_t;

/* Outcome labels of crmd_jobs_total, in this order. */
enum { OUT_SUCCEEDED = 0, OUT_FAILED, OUT_DEAD, OUT_TIMEOUT, OUT_LOST, OUT_RELEASED, OUT_ABANDONED, OUT_COUNT };
static const char *const outcome_names[OUT_COUNT] = {"succeeded", "failed",   "dead",     "timeout",
                                                     "lost",      "released", "abandoned"};

/* Handler run times: jobs call upstream APIs, so the range reaches minutes. */
static const double duration_buckets[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                          2.5,   5,     10,   30,    60,   120, 300,  600};

struct st_crm_jobs_kind_t {
    char name[CRM_JOBS_KIND_MAX + 1];
    crm_job_handler_fn fn;
    void *ctx;
    uint64_t timeout_ms;
    crm_histogram_t duration;
};

/* One batch of outcomes in flight. */
typedef struct st_flush_t {
    crm_jobs_t *runner;
    op_t op;
    crm_pg_unit_t *unit;
    struct st_flush_t *prev, *next;
    size_t n;
    crm_job_t *jobs[];
} flush_t;

struct st_crm_jobs_t {
    uv_loop_t *loop;
    crm_pg_pool_t *pool;
    crm_jobs_config_t cfg;
    char owner[128];
    runner_state_t state;
    int prepared;
    struct {
        crm_pg_stmt_t enqueue, claim, reclaim, renew, succeed, fail, release, list, retry, purge;
    } stmt;
    crm_jobs_kind_t kinds[CRM_JOBS_MAX_KINDS];
    size_t nkinds;
    char *kinds_literal; /* the kinds as a text[] literal, built at start */
    size_t max_leases;   /* 2 * concurrency */
    uint64_t unit_timeout_ms;

    size_t n_handlers; /* handlers called and not yet returned their job, overdue ones included */
    size_t n_overdue;  /* of those, the ones whose outcome is ignored */
    size_t n_jobs;     /* crm_job_t alive */

    /* Held leases by (job_id, attempt): open addressing, linear probing, at most half full. */
    crm_job_t **map;
    size_t map_mask;
    size_t n_leases;

    crm_job_t **pending[OP_COUNT]; /* max_leases each: a lease is in at most one of them */
    size_t npending[OP_COUNT];
    flush_t *flushes; /* in flight */
    unsigned flush_failures;
    uint64_t flush_blocked_until;

    crm_pg_unit_t *claim_unit;
    size_t claim_requested;
    int claim_wanted; /* a claim should run as soon as slots allow */
    int claim_again;  /* woken while a claim was in flight */
    unsigned claim_failures;

    crm_pg_unit_t *renew_unit;
    int64_t *renew_ids; /* what the renewal in flight asked for */
    int *renew_attempts;
    size_t renew_n;
    uint64_t renew_gen;
    uint64_t renew_sent_at;

    crm_pg_unit_t *reclaim_unit, *purge_unit;

    crm_timerq_t timers;
    crm_timer_t poll_timer, renew_timer, reclaim_timer, purge_timer, flush_timer, stop_timer;
    /* The tick runs once per loop iteration when something asked for it: the check handle runs after the
     * iteration's I/O callbacks, and the idle handle keeps the loop from blocking in poll meanwhile. */
    uv_check_t tick_check;
    uv_idle_t tick_idle;
    int tick_pending;
    int handles_open;

    void (*on_stopped)(void *data);
    void *on_stopped_data;
    int notifying;      /* inside on_stopped: a job ending now must not free the runner under it */
    int free_requested; /* crm_jobs_free was called: the last job to end frees the runner */

    crm_jobs_stats_t stats;
    crm_counter_vec_t totals;
};

static void schedule_tick(crm_jobs_t *r);
static void flush_op(crm_jobs_t *r, op_t op);
static void begin_close(crm_jobs_t *r);
static void on_poll_timer(crm_timer_t *t);
static void on_renew_timer(crm_timer_t *t);
static void on_reclaim_timer(crm_timer_t *t);
static void on_purge_timer(crm_timer_t *t);
static void on_stop_timer(crm_timer_t *t);

/* ---- configuration and small helpers ---- */

void crm_jobs_config_default(crm_jobs_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->concurrency = 64;
    cfg->batch = 64;
    cfg->lease_ms = 30000;
    cfg->poll_ms = 500;
    cfg->backoff_base_ms = 1000;
    cfg->backoff_max_ms = 3600000;
    cfg->reclaim_ms = 5000;
    cfg->retention_ms = 7ull * 24 * 3600 * 1000;
    /* Retention is housekeeping: once a minute is plenty. */
    cfg->purge_ms = 60000;
    cfg->owner_prefix = NULL;
}

static uint64_t now_ms(const crm_jobs_t *r)
{
    return uv_now(r->loop);
}

static int kind_valid(const char *k)
{
    size_t n = strlen(k);
    if (n == 0 || n > CRM_JOBS_KIND_MAX)
        return 0;
    int segment_start = 1;
    for (const char *p = k; *p != '\0'; ++p) {
        char c = *p;
        if (segment_start) {
            if (c < 'a' || c > 'z')
                return 0;
            segment_start = 0;
        } else if (c == '.') {
            segment_start = 1;
        } else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
            return 0;
        }
    }
    return !segment_start;
}

/* Length of the valid UTF-8 sequence at p (at most `avail` bytes), or 0 when it is not one. */
static size_t utf8_len(const unsigned char *p, size_t avail)
{
    unsigned char c = p[0];
    size_t n;
    uint32_t min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n > avail)
        return 0;
    uint32_t cp = c & (0x7f >> n);
    for (size_t i = 1; i < n; ++i) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* A copy of a handler's error fit for a text column: at most CRM_JOBS_ERROR_MAX bytes, cut between characters, every
 * invalid UTF-8 byte replaced by '?' (PostgreSQL refuses invalid text, which would fail the whole batch). */
static char *sanitize_error(const char *in)
{
    if (in == NULL || in[0] == '\0')
        in = "failed";
    size_t len = strlen(in);
    char *out = malloc((len < CRM_JOBS_ERROR_MAX ? len : CRM_JOBS_ERROR_MAX) + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_len((const unsigned char *)in + i, len - i);
        if (n == 0) {
            if (o + 1 > CRM_JOBS_ERROR_MAX)
                break;
            out[o++] = '?';
            ++i;
            continue;
        }
        if (o + n > CRM_JOBS_ERROR_MAX)
            break;
        memcpy(out + o, in + i, n);
        o += n;
        i += n;
    }
    out[o] = '\0';
    return out;
}

static uint64_t error_backoff(unsigned failures, uint64_t max_ms)
{
    /* Full jitter, with a floor so that a zero draw does not retry in a tight loop. */
    return ERROR_BACKOFF_MIN_MS / 2 + crm_backoff_full_jitter(ERROR_BACKOFF_MIN_MS, max_ms, failures);
}

/* The retry delay for a failed attempt: full jitter over an exponentially growing cap, never below Retry-After. */
static uint64_t retry_delay(const crm_jobs_t *r, int attempt, uint64_t retry_after_ms)
{
    uint64_t delay = crm_backoff_full_jitter(r->cfg.backoff_base_ms, r->cfg.backoff_max_ms, (unsigned)attempt);
    if (retry_after_ms > CRM_JOBS_MAX_RETRY_AFTER_MS)
        retry_after_ms = CRM_JOBS_MAX_RETRY_AFTER_MS;
    return delay > retry_after_ms ? delay : retry_after_ms;
}

static void count_outcome(crm_jobs_t *r, const crm_jobs_kind_t *k, int outcome)
{
    const char *labels[2] = {k != NULL ? k->name : "unknown", outcome_names[outcome]};
    crm_counter_vec_add(&r->totals, labels, 1);
}

/* ---- text[] / bigint[] literals ---- */

typedef struct {
    char *buf;
    size_t len, cap;
} text_t;

static int text_reserve(text_t *t, size_t more)
{
    if (t->len + more + 1 <= t->cap)
        return 0;
    size_t cap = t->cap ? t->cap : 256;
    while (cap < t->len + more + 1)
        cap *= 2;
    char *grown = realloc(t->buf, cap);
    if (grown == NULL)
        return CRM_E_NOMEM;
    t->buf = grown;
    t->cap = cap;
    return 0;
}

static int text_append(text_t *t, const char *s, size_t n)
{
    if (text_reserve(t, n) != 0)
        return CRM_E_NOMEM;
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = '\0';
    return 0;
}

static int text_int(text_t *t, int64_t v)
{
    char num[24];
    int n = snprintf(num, sizeof(num), "%" PRId64, v);
    return text_append(t, num, (size_t)n);
}

/* Appends s as a double-quoted array element: backslash and double quote are escaped, everything else is literal. */
static int text_append_quoted(text_t *t, const char *s)
{
    size_t len = strlen(s);
    if (text_reserve(t, 2 * len + 2) != 0)
        return CRM_E_NOMEM;
    t->buf[t->len++] = '"';
    for (size_t i = 0; i < len; ++i) {
        if (s[i] == '"' || s[i] == '\\')
            t->buf[t->len++] = '\\';
        t->buf[t->len++] = s[i];
    }
    t->buf[t->len++] = '"';
    t->buf[t->len] = '\0';
    return 0;
}

/* ---- the lease map ---- */

static size_t map_slot(const crm_jobs_t *r, int64_t id, int attempt)
{
    uint64_t h = ((uint64_t)id * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)(uint32_t)attempt * 0xc2b2ae3d27d4eb4full);
    h ^= h >> 29;
    return (size_t)h & r->map_mask;
}

static crm_job_t *map_find(const crm_jobs_t *r, int64_t id, int attempt)
{
    for (size_t i = map_slot(r, id, attempt);; i = (i + 1) & r->map_mask) {
        crm_job_t *j = r->map[i];
        if (j == NULL)
            return NULL;
        if (j->id == id && j->attempt == attempt)
            return j;
    }
}

/* Room is guaranteed: at most max_leases entries in a table of at least 2 * max_leases slots. */
static void map_insert(crm_jobs_t *r, crm_job_t *job)
{
    size_t i = map_slot(r, job->id, job->attempt);
    while (r->map[i] != NULL)
        i = (i + 1) & r->map_mask;
    r->map[i] = job;
    ++r->n_leases;
}

/* Removal with backward shift, so that lookups never need tombstones. */
static void map_remove(crm_jobs_t *r, crm_job_t *job)
{
    size_t i = map_slot(r, job->id, job->attempt);
    while (r->map[i] != job)
        i = (i + 1) & r->map_mask;
    r->map[i] = NULL;
    --r->n_leases;
    for (size_t j = (i + 1) & r->map_mask; r->map[j] != NULL; j = (j + 1) & r->map_mask) {
        size_t home = map_slot(r, r->map[j]->id, r->map[j]->attempt);
        /* Move the entry at j into the hole at i unless its home lies cyclically in (i, j]. */
        int stays = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            r->map[i] = r->map[j];
            r->map[j] = NULL;
            i = j;
        }
    }
}

/* ---- jobs: lifetime ---- */

static void runner_free(crm_jobs_t *r)
{
    for (size_t i = 0; i < r->nkinds; ++i)
        crm_histogram_dispose(&r->kinds[i].duration);
    crm_counter_vec_dispose(&r->totals);
    for (int op = 0; op < OP_COUNT; ++op)
        free(r->pending[op]);
    free(r->map);
    free(r->renew_ids);
    free(r->renew_attempts);
    free(r->kinds_literal);
    free(r);
}

/* Frees the job once neither its handler nor its lease needs it; frees a stopped runner with its last job. */
static void job_maybe_free(crm_job_t *job)
{
    if (job->_handler || job->_lease != LEASE_NONE)
        return;
    crm_jobs_t *r = job->runner;
    json_decref(job->_payload);
    free(job->_error);
    free(job);
    --r->n_jobs;
    if (r->state == RUNNER_STOPPED && r->free_requested && r->n_jobs == 0 && !r->notifying)
        runner_free(r);
}

/* The lease is over (outcome recorded, lost or abandoned). */
static void lease_end(crm_jobs_t *r, crm_job_t *job)
{
    map_remove(r, job);
    job->_lease = LEASE_NONE;
    job_maybe_free(job);
    if (r->claim_wanted)
        schedule_tick(r);
}

/* The handler's outcome will be ignored from now on; it keeps its slot until it returns the job. */
static void job_ignore(crm_jobs_t *r, crm_job_t *job)
{
    if (!job->_handler || job->_ignored)
        return;
    job->_ignored = 1;
    ++r->n_overdue;
    crm_timerq_stop(&r->timers, &job->_timer);
}

static void pending_push(crm_jobs_t *r, crm_job_t *job, op_t op)
{
    assert(r->npending[op] < r->max_leases);
    job->_lease = LEASE_PENDING;
    job->_op = (uint8_t)op;
    r->pending[op][r->npending[op]++] = job;
    /* A full batch goes at once; anything less waits for the end of this loop iteration to gather company. */
    if (r->npending[op] >= r->cfg.batch)
        flush_op(r, op);
    schedule_tick(r);
}

static void pending_remove(crm_jobs_t *r, crm_job_t *job)
{
    op_t op = (op_t)job->_op;
    for (size_t i = 0; i < r->npending[op]; ++i)
        if (r->pending[op][i] == job) {
            memmove(&r->pending[op][i], &r->pending[op][i + 1], (r->npending[op] - i - 1) * sizeof(crm_job_t *));
            --r->npending[op];
            return;
        }
}

static void job_lost(crm_jobs_t *r, crm_job_t *job, const char *why)
{
    ++r->stats.lost;
    count_outcome(r, job->_kind, OUT_LOST);
    crm_log(CRM_LOG_WARN, "job.lease_lost", CRM_LOG_INT("job_id", job->id), CRM_LOG_STR("kind", job->kind),
            CRM_LOG_INT("attempt", job->attempt), CRM_LOG_STR("reason", why));
    if (job->_lease == LEASE_PENDING)
        pending_remove(r, job);
    job_ignore(r, job);
    lease_end(r, job);
}

static void job_abandon(crm_jobs_t *r, crm_job_t *job)
{
    ++r->stats.abandoned;
    count_outcome(r, job->_kind, OUT_ABANDONED);
    crm_log(CRM_LOG_ERROR, "job.outcome_abandoned", CRM_LOG_INT("job_id", job->id), CRM_LOG_STR("kind", job->kind),
            CRM_LOG_INT("attempt", job->attempt), CRM_LOG_STR("outcome", op_names[job->_op]));
    job_ignore(r, job);
    lease_end(r, job);
}

/* ---- handlers ---- */

static void on_job_timer(crm_timer_t *t)
{
    crm_job_t *job = (crm_job_t *)((char *)t - offsetof(crm_job_t, _timer));
    crm_jobs_t *r = job->runner;
    ++r->stats.timeouts;
    count_outcome(r, job->_kind, OUT_TIMEOUT);
    crm_log(CRM_LOG_WARN, "job.timeout", CRM_LOG_INT("job_id", job->id), CRM_LOG_STR("kind", job->kind),
            CRM_LOG_INT("attempt", job->attempt), CRM_LOG_UINT("timeout_ms", job->_kind->timeout_ms));
    job_ignore(r, job);
    /* Out of memory for the message: the fail function records "failed" for a NULL error. */
    job->_error = sanitize_error("timeout");
    job->_delay_ms = retry_delay(r, job->attempt, 0);
    job->_permanent = 0;
    pending_push(r, job, OP_FAIL);
}

static void job_end(crm_job_t *job, op_t op, const char *error, uint64_t retry_after_ms, int permanent)
{
    crm_jobs_t *r = job->runner;
    assert(job->_handler && "a job ended twice, or a job the runner never handed out");
    if (!job->_handler)
        return;
    job->_handler = 0;
    --r->n_handlers;
    crm_histogram_observe(&job->_kind->duration, (double)(uv_hrtime() - job->_started_ns) / 1e9);
    /* The handler is done with the job; its payload is not needed while the outcome is recorded. */
    json_decref(job->_payload);
    job->_payload = NULL;
    job->payload = NULL;
    if (job->_ignored) {
        --r->n_overdue;
        crm_log(CRM_LOG_DEBUG, "job.late_outcome_ignored", CRM_LOG_INT("job_id", job->id),
                CRM_LOG_STR("kind", job->kind), CRM_LOG_INT("attempt", job->attempt));
        if (r->claim_wanted)
            schedule_tick(r);
        job_maybe_free(job);
        return;
    }
    crm_timerq_stop(&r->timers, &job->_timer);
    if (op == OP_FAIL) {
        job->_error = sanitize_error(error);
        job->_permanent = permanent != 0;
        job->_delay_ms = permanent ? 0 : retry_delay(r, job->attempt, retry_after_ms);
        crm_log(CRM_LOG_WARN, "job.failed", CRM_LOG_INT("job_id", job->id), CRM_LOG_STR("kind", job->kind),
                CRM_LOG_INT("attempt", job->attempt), CRM_LOG_INT("max_attempts", job->max_attempts),
                CRM_LOG_STR("error", job->_error), CRM_LOG_BOOL("permanent", permanent),
                CRM_LOG_UINT("retry_in_ms", job->_delay_ms));
    }
    pending_push(r, job, op);
}

void crm_job_succeed(crm_job_t *job)
{
    job_end(job, OP_SUCCEED, NULL, 0, 0);
}

void crm_job_fail(crm_job_t *job, const char *error, uint64_t retry_after_ms, int permanent)
{
    job_end(job, OP_FAIL, error, retry_after_ms, permanent);
}

static crm_jobs_kind_t *find_kind(crm_jobs_t *r, const char *name)
{
    for (size_t i = 0; i < r->nkinds; ++i)
        if (strcmp(r->kinds[i].name, name) == 0)
            return &r->kinds[i];
    return NULL;
}

/* Builds a job from row i of a claim. NULL when out of memory: the job's lease then simply expires. */
static crm_job_t *job_from_row(crm_jobs_t *r, PGresult *res, int i)
{
    crm_job_t *job = calloc(1, sizeof(*job));
    if (job == NULL)
        return NULL;
    job->runner = r;
    job->id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
    if (!PQgetisnull(res, i, 1)) {
        snprintf(job->_tenant, sizeof(job->_tenant), "%s", PQgetvalue(res, i, 1));
        job->tenant_id = job->_tenant;
    }
    job->_kind = find_kind(r, PQgetvalue(res, i, 2));
    job->kind = job->_kind != NULL ? job->_kind->name : "unknown";
    job->attempt = (int)strtol(PQgetvalue(res, i, 4), NULL, 10);
    job->max_attempts = (int)strtol(PQgetvalue(res, i, 5), NULL, 10);
    crm_timer_init(&job->_timer);
    ++r->n_jobs;
    return job;
}

static int parse_payload(crm_job_t *job, PGresult *res, int i)
{
    crm_json_limits_t limits = {.max_bytes = 4 * CRM_JOBS_PAYLOAD_MAX,
                                .max_depth = CRM_JSON_DEPTH_MAX,
                                .max_string_bytes = 0,
                                .max_array_items = 0};
    json_t *v = NULL;
    int err = crm_json_parse(PQgetvalue(res, i, 3), (size_t)PQgetlength(res, i, 3), &limits, &v, NULL);
    if (err != 0)
        return err;
    if (!json_is_object(v)) {
        json_decref(v);
        return CRM_E_PARSE;
    }
    job->_payload = v;
    job->payload = v;
    return 0;
}

static void start_handler(crm_jobs_t *r, crm_job_t *job)
{
    crm_jobs_kind_t *k = job->_kind;
    job->deadline = now_ms(r) + k->timeout_ms;
    if (crm_timerq_start(&r->timers, &job->_timer, job->deadline + CRM_JOBS_TIMEOUT_GRACE_MS, on_job_timer) != 0) {
        /* Cannot happen (the queue has a slot per handler); without a deadline the job must not run. */
        pending_push(r, job, OP_RELEASE);
        return;
    }
    job->_handler = 1;
    ++r->n_handlers;
    job->_started_ns = uv_hrtime();
    k->fn(job, k->ctx);
}

/* ---- units: common ---- */

static crm_pg_unit_t *unit_begin(crm_jobs_t *r)
{
    crm_pg_unit_t *u = crm_pg_unit_new(r->pool, 0);
    if (u != NULL)
        crm_pg_unit_set_deadline(u, now_ms(r) + r->unit_timeout_ms);
    return u;
}

static void log_unit_error(const char *event, crm_pg_unit_t *u, int err, size_t jobs)
{
    const char *sqlstate = u != NULL ? crm_pg_unit_sqlstate(u) : NULL;
    const char *msg = u != NULL ? crm_pg_unit_error_message(u) : NULL;
    crm_log(CRM_LOG_WARN, event, CRM_LOG_STR("error", crm_err_name(err)), CRM_LOG_STR("sqlstate", sqlstate),
            CRM_LOG_STR("message", msg), CRM_LOG_UINT("jobs", jobs));
}

/* ---- claiming ---- */

static void claim_backoff(crm_jobs_t *r)
{
    ++r->claim_failures;
    uint64_t max = r->cfg.poll_ms > ERROR_BACKOFF_MAX_MS ? r->cfg.poll_ms : ERROR_BACKOFF_MAX_MS;
    crm_timerq_start(&r->timers, &r->poll_timer, now_ms(r) + error_backoff(r->claim_failures, max), on_poll_timer);
}

static void on_claim(crm_pg_unit_t *u, int err, void *data)
{
    crm_jobs_t *r = data;
    r->claim_unit = NULL;
    if (err != 0) {
        ++r->stats.claim_errors;
        log_unit_error("jobs.claim_failed", u, err, r->claim_requested);
        if (r->state == RUNNER_STARTED)
            claim_backoff(r);
        schedule_tick(r);
        return;
    }
    r->claim_failures = 0;
    ++r->stats.claims;
    PGresult *res = crm_pg_unit_result(u, 0);
    int rows = PQntuples(res);
    for (int i = 0; i < rows; ++i) {
        crm_job_t *job = job_from_row(r, res, i);
        if (job == NULL) {
            crm_log(CRM_LOG_ERROR, "job.claim_dropped", CRM_LOG_STR("job_id", PQgetvalue(res, i, 0)),
                    CRM_LOG_STR("error", crm_err_name(CRM_E_NOMEM)));
            continue;
        }
        ++r->stats.claimed;
        map_insert(r, job);
        job->_lease = LEASE_HELD;
        if (r->state != RUNNER_STARTED || job->_kind == NULL) {
            /* Claimed while stopping (or, impossibly, a kind without handler): hand it back untouched. */
            pending_push(r, job, OP_RELEASE);
            continue;
        }
        int perr = parse_payload(job, res, i);
        if (perr != 0) {
            /* jsonb always prints as valid JSON, but jansson refuses numbers beyond double range and very deep
             * nesting; such a payload can never run here. */
            crm_log(CRM_LOG_ERROR, "job.payload_unreadable", CRM_LOG_INT("job_id", job->id),
                    CRM_LOG_STR("kind", job->kind), CRM_LOG_STR("error", crm_err_name(perr)));
            job->_error = sanitize_error(perr == CRM_E_NOMEM ? "out of memory reading the payload"
                                                             : "payload unreadable by the runner");
            job->_permanent = perr != CRM_E_NOMEM;
            job->_delay_ms = retry_delay(r, job->attempt, 0);
            pending_push(r, job, OP_FAIL);
            continue;
        }
        start_handler(r, job);
    }
    if (r->state == RUNNER_STARTED) {
        if ((size_t)rows >= r->claim_requested || r->claim_again) {
            r->claim_wanted = 1;
            r->claim_again = 0;
        } else if (!r->claim_wanted) {
            crm_timerq_start(&r->timers, &r->poll_timer, now_ms(r) + r->cfg.poll_ms, on_poll_timer);
        }
    }
    schedule_tick(r);
}

static void claim(crm_jobs_t *r)
{
    if (!r->claim_wanted || r->claim_unit != NULL || r->nkinds == 0)
        return;
    size_t n = r->cfg.batch;
    size_t slots = r->cfg.concurrency - r->n_handlers;
    size_t room = r->max_leases - r->n_leases;
    if (slots < n)
        n = slots;
    if (room < n)
        n = room;
    if (n == 0)
        return; /* stays wanted: a handler or a lease that ends schedules the tick again */
    r->claim_wanted = 0;
    r->claim_again = 0;
    crm_timerq_stop(&r->timers, &r->poll_timer);
    char lease[24], count[24];
    snprintf(lease, sizeof(lease), "%" PRIu64, r->cfg.lease_ms);
    snprintf(count, sizeof(count), "%zu", n);
    const char *values[4] = {r->owner, lease, r->kinds_literal, count};
    crm_pg_unit_t *u = unit_begin(r);
    int err = u == NULL ? CRM_E_NOMEM : crm_pg_unit_add(u, r->stmt.claim, 4, values, NULL);
    if (err >= 0)
        err = crm_pg_unit_submit(u, on_claim, r);
    if (err < 0) {
        crm_pg_unit_free(u);
        ++r->stats.claim_errors;
        log_unit_error("jobs.claim_failed", NULL, err, n);
        claim_backoff(r);
        return;
    }
    r->claim_unit = u;
    r->claim_requested = n;
}

/* The poll timer doubles as the claim backoff: either way its expiry means "claim now". */
static void on_poll_timer(crm_timer_t *t)
{
    crm_jobs_t *r = (crm_jobs_t *)((char *)t - offsetof(crm_jobs_t, poll_timer));
    if (r->state != RUNNER_STARTED)
        return;
    r->claim_wanted = 1;
    schedule_tick(r);
}

void crm_jobs_wake(crm_jobs_t *r)
{
    if (r == NULL || r->state != RUNNER_STARTED || r->claim_failures > 0)
        return;
    if (r->claim_unit != NULL) {
        r->claim_again = 1;
        return;
    }
    crm_timerq_stop(&r->timers, &r->poll_timer);
    r->claim_wanted = 1;
    schedule_tick(r);
}

/* ---- recording outcomes ---- */

static void on_flush_timer(crm_timer_t *t)
{
    crm_jobs_t *r = (crm_jobs_t *)((char *)t - offsetof(crm_jobs_t, flush_timer));
    schedule_tick(r);
}

static void flush_unlink(crm_jobs_t *r, flush_t *f)
{
    if (f->prev != NULL)
        f->prev->next = f->next;
    else
        r->flushes = f->next;
    if (f->next != NULL)
        f->next->prev = f->prev;
}

static void on_flush(crm_pg_unit_t *u, int err, void *data)
{
    flush_t *f = data;
    crm_jobs_t *r = f->runner;
    flush_unlink(r, f);
    if (err != 0) {
        ++r->stats.flush_errors;
        log_unit_error(f->op == OP_SUCCEED ? "jobs.record_succeeded_failed"
                       : f->op == OP_FAIL  ? "jobs.record_failed_failed"
                                           : "jobs.record_released_failed",
                       u, err, f->n);
        /* Back to the front of the pending batch, in their order, unless they have failed too often: the lease
         * is still held (and renewed), so the outcome may still be recorded. */
        size_t keep = 0;
        for (size_t i = 0; i < f->n; ++i)
            if (++f->jobs[i]->_flush_failures < CRM_JOBS_MAX_FLUSH_FAILURES)
                f->jobs[keep++] = f->jobs[i];
            else
                job_abandon(r, f->jobs[i]);
        memmove(&r->pending[f->op][keep], r->pending[f->op], r->npending[f->op] * sizeof(crm_job_t *));
        for (size_t i = 0; i < keep; ++i) {
            f->jobs[i]->_lease = LEASE_PENDING;
            r->pending[f->op][i] = f->jobs[i];
        }
        r->npending[f->op] += keep;
        ++r->flush_failures;
        r->flush_blocked_until = now_ms(r) + error_backoff(r->flush_failures, ERROR_BACKOFF_MAX_MS);
        crm_timerq_start(&r->timers, &r->flush_timer, r->flush_blocked_until, on_flush_timer);
        free(f);
        schedule_tick(r);
        return;
    }
    r->flush_failures = 0;
    ++r->stats.flushes;
    PGresult *res = crm_pg_unit_result(u, 0);
    int rows = PQntuples(res);
    for (int i = 0; i < rows; ++i) {
        int64_t id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        int attempt = (int)strtol(PQgetvalue(res, i, 1), NULL, 10);
        crm_job_t *job = map_find(r, id, attempt);
        if (job == NULL || job->_lease != LEASE_FLUSHING)
            continue;
        job->_confirmed = 1;
        switch (f->op) {
        case OP_SUCCEED:
            ++r->stats.succeeded;
            count_outcome(r, job->_kind, OUT_SUCCEEDED);
            break;
        case OP_FAIL:
            if (strcmp(PQgetvalue(res, i, 2), "dead") == 0) {
                ++r->stats.dead;
                count_outcome(r, job->_kind, OUT_DEAD);
                crm_log(CRM_LOG_ERROR, "job.dead", CRM_LOG_INT("job_id", job->id), CRM_LOG_STR("kind", job->kind),
                        CRM_LOG_INT("attempts", job->attempt), CRM_LOG_STR("error", job->_error));
            } else {
                ++r->stats.failed;
                count_outcome(r, job->_kind, OUT_FAILED);
            }
            break;
        default:
            ++r->stats.released;
            count_outcome(r, job->_kind, OUT_RELEASED);
            break;
        }
    }
    for (size_t i = 0; i < f->n; ++i) {
        crm_job_t *job = f->jobs[i];
        if (job->_confirmed) {
            lease_end(r, job);
        } else if (f->op == OP_RELEASE) {
            /* Not ours any more: reclaimed after expiry. Being let go was all it needed. */
            lease_end(r, job);
        } else {
            job_lost(r, job, "outcome not accepted");
        }
    }
    free(f);
    schedule_tick(r);
}

static int add_flush_statement(crm_jobs_t *r, crm_pg_unit_t *u, op_t op, crm_job_t *const *jobs, size_t n)
{
    text_t ids = {0}, attempts = {0}, delays = {0}, errors = {0}, permanent = {0};
    int err = 0;
    err |= text_append(&ids, "{", 1) | text_append(&attempts, "{", 1);
    if (op == OP_FAIL)
        err |= text_append(&delays, "{", 1) | text_append(&errors, "{", 1) | text_append(&permanent, "{", 1);
    for (size_t i = 0; i < n && err == 0; ++i) {
        const char *sep = i > 0 ? "," : "";
        err |= text_append(&ids, sep, strlen(sep)) | text_int(&ids, jobs[i]->id);
        err |= text_append(&attempts, sep, strlen(sep)) | text_int(&attempts, jobs[i]->attempt);
        if (op == OP_FAIL) {
            err |= text_append(&delays, sep, strlen(sep)) | text_int(&delays, (int64_t)jobs[i]->_delay_ms);
            err |= text_append(&errors, sep, strlen(sep)) |
                   text_append_quoted(&errors, jobs[i]->_error != NULL ? jobs[i]->_error : "failed");
            err |=
                text_append(&permanent, sep, strlen(sep)) | text_append(&permanent, jobs[i]->_permanent ? "t" : "f", 1);
        }
    }
    err |= text_append(&ids, "}", 1) | text_append(&attempts, "}", 1);
    if (op == OP_FAIL)
        err |= text_append(&delays, "}", 1) | text_append(&errors, "}", 1) | text_append(&permanent, "}", 1);
    if (err != 0) {
        err = CRM_E_NOMEM;
    } else if (op == OP_FAIL) {
        const char *values[6] = {r->owner, ids.buf, attempts.buf, delays.buf, errors.buf, permanent.buf};
        err = crm_pg_unit_add(u, r->stmt.fail, 6, values, NULL);
    } else {
        const char *values[3] = {r->owner, ids.buf, attempts.buf};
        err = crm_pg_unit_add(u, op == OP_SUCCEED ? r->stmt.succeed : r->stmt.release, 3, values, NULL);
    }
    free(ids.buf);
    free(attempts.buf);
    free(delays.buf);
    free(errors.buf);
    free(permanent.buf);
    return err < 0 ? err : 0;
}

/* Sends the pending outcomes of one kind, a batch per unit, unless a recent failure asks to wait. */
static void flush_op(crm_jobs_t *r, op_t op)
{
    if (r->state >= RUNNER_CLOSING || now_ms(r) < r->flush_blocked_until)
        return;
    while (r->npending[op] > 0) {
        size_t n = r->npending[op] < r->cfg.batch ? r->npending[op] : r->cfg.batch;
        flush_t *f = malloc(sizeof(*f) + n * sizeof(crm_job_t *));
        crm_pg_unit_t *u = f != NULL ? unit_begin(r) : NULL;
        int err = u == NULL ? CRM_E_NOMEM : add_flush_statement(r, u, op, r->pending[op], n);
        if (err == 0)
            err = crm_pg_unit_submit(u, on_flush, f);
        if (err != 0) {
            crm_pg_unit_free(u);
            free(f);
            ++r->stats.flush_errors;
            log_unit_error("jobs.record_failed_to_send", NULL, err, n);
            ++r->flush_failures;
            r->flush_blocked_until = now_ms(r) + error_backoff(r->flush_failures, ERROR_BACKOFF_MAX_MS);
            crm_timerq_start(&r->timers, &r->flush_timer, r->flush_blocked_until, on_flush_timer);
            return;
        }
        f->runner = r;
        f->op = op;
        f->unit = u;
        f->n = n;
        memcpy(f->jobs, r->pending[op], n * sizeof(crm_job_t *));
        for (size_t i = 0; i < n; ++i) {
            f->jobs[i]->_lease = LEASE_FLUSHING;
            f->jobs[i]->_confirmed = 0;
        }
        memmove(r->pending[op], r->pending[op] + n, (r->npending[op] - n) * sizeof(crm_job_t *));
        r->npending[op] -= n;
        f->prev = NULL;
        f->next = r->flushes;
        if (r->flushes != NULL)
            r->flushes->prev = f;
        r->flushes = f;
    }
}

/* ---- renewal ---- */

static void renew_schedule(crm_jobs_t *r, uint64_t at)
{
    crm_timerq_start(&r->timers, &r->renew_timer, at, on_renew_timer);
}

static void on_renew(crm_pg_unit_t *u, int err, void *data)
{
    crm_jobs_t *r = data;
    r->renew_unit = NULL;
    int renewing = r->state == RUNNER_STARTED || r->state == RUNNER_STOPPING;
    if (err != 0) {
        ++r->stats.renew_errors;
        log_unit_error("jobs.renew_failed", u, err, r->renew_n);
        /* The leases still have about two thirds of their time: try again soon. */
        if (renewing)
            renew_schedule(r, now_ms(r) + r->cfg.lease_ms / 6);
        schedule_tick(r);
        return;
    }
    ++r->stats.renewals;
    uint64_t gen = ++r->renew_gen;
    PGresult *res = crm_pg_unit_result(u, 0);
    int rows = PQntuples(res);
    for (int i = 0; i < rows; ++i) {
        crm_job_t *job =
            map_find(r, strtoll(PQgetvalue(res, i, 0), NULL, 10), (int)strtol(PQgetvalue(res, i, 1), NULL, 10));
        if (job != NULL)
            job->_renew_gen = gen;
    }
    /* Asked for, not renewed, and not in the middle of being recorded (whose answer will tell): lost. A job whose
     * outcome was recorded meanwhile has left the map. */
    for (size_t i = 0; i < r->renew_n; ++i) {
        crm_job_t *job = map_find(r, r->renew_ids[i], r->renew_attempts[i]);
        if (job != NULL && job->_renew_gen != gen && job->_lease != LEASE_FLUSHING)
            job_lost(r, job, "lease not renewed");
    }
    if (renewing)
        renew_schedule(r, r->renew_sent_at + r->cfg.lease_ms / 3);
    schedule_tick(r);
}

static void on_renew_timer(crm_timer_t *t)
{
    crm_jobs_t *r = (crm_jobs_t *)((char *)t - offsetof(crm_jobs_t, renew_timer));
    if ((r->state != RUNNER_STARTED && r->state != RUNNER_STOPPING) || r->renew_unit != NULL)
        return;
    text_t ids = {0}, attempts = {0};
    int err = text_append(&ids, "{", 1) | text_append(&attempts, "{", 1);
    size_t n = 0;
    for (size_t i = 0; i <= r->map_mask && err == 0; ++i) {
        crm_job_t *job = r->map[i];
        if (job == NULL)
            continue;
        const char *sep = n > 0 ? "," : "";
        err |= text_append(&ids, sep, strlen(sep)) | text_int(&ids, job->id);
        err |= text_append(&attempts, sep, strlen(sep)) | text_int(&attempts, job->attempt);
        r->renew_ids[n] = job->id;
        r->renew_attempts[n] = job->attempt;
        ++n;
    }
    err |= text_append(&ids, "}", 1) | text_append(&attempts, "}", 1);
    crm_pg_unit_t *u = NULL;
    if (n == 0 || err != 0) {
        if (err != 0)
            ++r->stats.renew_errors;
        renew_schedule(r, now_ms(r) + (err != 0 ? r->cfg.lease_ms / 6 : r->cfg.lease_ms / 3));
        goto out;
    }
    char lease[24];
    snprintf(lease, sizeof(lease), "%" PRIu64, r->cfg.lease_ms);
    const char *values[4] = {r->owner, ids.buf, attempts.buf, lease};
    u = unit_begin(r);
    err = u == NULL ? CRM_E_NOMEM : crm_pg_unit_add(u, r->stmt.renew, 4, values, NULL);
    if (err >= 0)
        err = crm_pg_unit_submit(u, on_renew, r);
    if (err < 0) {
        crm_pg_unit_free(u);
        ++r->stats.renew_errors;
        log_unit_error("jobs.renew_failed", NULL, err, n);
        renew_schedule(r, now_ms(r) + r->cfg.lease_ms / 6);
        goto out;
    }
    r->renew_unit = u;
    r->renew_n = n;
    r->renew_sent_at = now_ms(r);
out:
    free(ids.buf);
    free(attempts.buf);
}

/* ---- reclaim and purge ---- */

static void on_reclaim(crm_pg_unit_t *u, int err, void *data)
{
    crm_jobs_t *r = data;
    r->reclaim_unit = NULL;
    uint64_t next = r->cfg.reclaim_ms;
    if (err != 0) {
        ++r->stats.reclaim_errors;
        log_unit_error("jobs.reclaim_failed", u, err, 0);
    } else {
        long n = strtol(PQgetvalue(crm_pg_unit_result(u, 0), 0, 0), NULL, 10);
        r->stats.reclaimed += (uint64_t)n;
        if (n > 0) {
            crm_log(CRM_LOG_INFO, "jobs.reclaimed", CRM_LOG_INT("jobs", n));
            /* They are due now; this runner may as well take its share. */
            crm_jobs_wake(r);
        }
        if (n >= RECLAIM_BATCH)
            next = 0;
    }
    if (r->state == RUNNER_STARTED)
        crm_timerq_start(&r->timers, &r->reclaim_timer, now_ms(r) + next, on_reclaim_timer);
    schedule_tick(r);
}

static void on_reclaim_timer(crm_timer_t *t)
{
    crm_jobs_t *r = (crm_jobs_t *)((char *)t - offsetof(crm_jobs_t, reclaim_timer));
    if (r->state != RUNNER_STARTED || r->reclaim_unit != NULL)
        return;
    char n[16];
    snprintf(n, sizeof(n), "%d", RECLAIM_BATCH);
    const char *values[1] = {n};
    crm_pg_unit_t *u = unit_begin(r);
    int err = u == NULL ? CRM_E_NOMEM : crm_pg_unit_add(u, r->stmt.reclaim, 1, values, NULL);
    if (err >= 0)
        err = crm_pg_unit_submit(u, on_reclaim, r);
    if (err < 0) {
        crm_pg_unit_free(u);
        ++r->stats.reclaim_errors;
        log_unit_error("jobs.reclaim_failed", NULL, err, 0);
        crm_timerq_start(&r->timers, &r->reclaim_timer, now_ms(r) + r->cfg.reclaim_ms, on_reclaim_timer);
        return;
    }
    r->reclaim_unit = u;
}

static void on_purge(crm_pg_unit_t *u, int err, void *data)
{
    crm_jobs_t *r = data;
    r->purge_unit = NULL;
    uint64_t next = r->cfg.purge_ms;
    if (err != 0) {
        ++r->stats.purge_errors;
        log_unit_error("jobs.purge_failed", u, err, 0);
    } else {
        long n = strtol(PQgetvalue(crm_pg_unit_result(u, 0), 0, 0), NULL, 10);
        r->stats.purged += (uint64_t)n;
        /* A full batch means a backlog: continue soon, but leave the database room for real work. */
        if (n >= PURGE_BATCH && next > 1000)
            next = 1000;
    }
    if (r->state == RUNNER_STARTED)
        crm_timerq_start(&r->timers, &r->purge_timer, now_ms(r) + next, on_purge_timer);
    schedule_tick(r);
}

static void on_purge_timer(crm_timer_t *t)
{
    crm_jobs_t *r = (crm_jobs_t *)((char *)t - offsetof(crm_jobs_t, purge_timer));
    if (r->state != RUNNER_STARTED || r->purge_unit != NULL)
        return;
    char age[24], n[16];
    snprintf(age, sizeof(age), "%" PRIu64, r->cfg.retention_ms);
    snprintf(n, sizeof(n), "%d", PURGE_BATCH);
    const char *values[2] = {age, n};
    crm_pg_unit_t *u = unit_begin(r);
    int err = u == NULL ? CRM_E_NOMEM : crm_pg_unit_add(u, r->stmt.purge, 2, values, NULL);
    if (err >= 0)
        err = crm_pg_unit_submit(u, on_purge, r);
    if (err < 0) {
        crm_pg_unit_free(u);
        ++r->stats.purge_errors;
        log_unit_error("jobs.purge_failed", NULL, err, 0);
        crm_timerq_start(&r->timers, &r->purge_timer, now_ms(r) + r->cfg.purge_ms, on_purge_timer);
        return;
    }
    r->purge_unit = u;
}

/* ---- the tick, stop and close ---- */

static void set_state(crm_jobs_t *r, runner_state_t s)
{
    r->state = s;
}

static int drained(const crm_jobs_t *r)
{
    for (int op = 0; op < OP_COUNT; ++op)
        if (r->npending[op] > 0)
            return 0;
    return r->flushes == NULL && r->claim_unit == NULL && r->renew_unit == NULL && r->reclaim_unit == NULL &&
           r->purge_unit == NULL;
}

/* After grace: jobs no handler has started are released; jobs whose handler still runs keep their lease until it
 * expires (see crm_jobs_stop) and their outcomes are ignored from now on. */
static void begin_drain(crm_jobs_t *r)
{
    set_state(r, RUNNER_DRAINING);
    /* Renewal stops: a lease still held lapses at most lease_ms after its last renewal, and nothing here waits for
     * that; what is left to record is bounded by the drain period. */
    crm_timerq_stop(&r->timers, &r->renew_timer);
    size_t released = 0, left = 0;
    for (size_t i = 0; i <= r->map_mask; ++i) {
        crm_job_t *job = r->map[i];
        if (job == NULL || job->_lease != LEASE_HELD || job->_handler)
            continue;
        pending_push(r, job, OP_RELEASE);
        ++released;
    }
    /* Removing from the map moves entries, so each removal starts a fresh scan (at most 2 * concurrency jobs). */
    for (;;) {
        crm_job_t *running = NULL;
        for (size_t i = 0; i <= r->map_mask && running == NULL; ++i)
            if (r->map[i] != NULL && r->map[i]->_lease == LEASE_HELD && r->map[i]->_handler)
                running = r->map[i];
        if (running == NULL)
            break;
        job_ignore(r, running);
        lease_end(r, running);
        ++left;
    }
    if (released > 0 || left > 0)
        crm_log(CRM_LOG_INFO, "jobs.releasing", CRM_LOG_STR("owner", r->owner), CRM_LOG_UINT("jobs", released),
                CRM_LOG_UINT("left_to_lease_expiry", left));
    crm_timerq_start(&r->timers, &r->stop_timer, now_ms(r) + 2 * r->unit_timeout_ms, on_stop_timer);
    schedule_tick(r);
}

/* The drain period is over: whatever is still unrecorded is left to lease expiry, and units still in flight are
 * detached (their callbacks will not run). */
static void abandon_all(crm_jobs_t *r)
{
    crm_pg_unit_t **units[] = {&r->claim_unit, &r->renew_unit, &r->reclaim_unit, &r->purge_unit};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); ++i)
        if (*units[i] != NULL) {
            crm_pg_unit_detach(*units[i]);
            *units[i] = NULL;
        }
    while (r->flushes != NULL) {
        flush_t *f = r->flushes;
        flush_unlink(r, f);
        crm_pg_unit_detach(f->unit);
        for (size_t i = 0; i < f->n; ++i)
            job_abandon(r, f->jobs[i]);
        free(f);
    }
    for (int op = 0; op < OP_COUNT; ++op)
        while (r->npending[op] > 0) {
            crm_job_t *job = r->pending[op][--r->npending[op]];
            job_abandon(r, job);
        }
}

static void tick(crm_jobs_t *r)
{
    for (int op = 0; op < OP_COUNT; ++op)
        flush_op(r, (op_t)op);
    switch (r->state) {
    case RUNNER_STARTED:
        claim(r);
        break;
    case RUNNER_STOPPING:
        if (r->n_handlers == r->n_overdue)
            begin_drain(r);
        break;
    case RUNNER_DRAINING:
        if (drained(r))
            begin_close(r);
        break;
    default:
        break;
    }
}

static void on_tick_idle(uv_idle_t *handle)
{
    /* Exists only to keep the loop from blocking in poll while a tick is due; the work runs in the check. */
}

static void on_tick_check(uv_check_t *handle)
{
    crm_jobs_t *r = handle->data;
    r->tick_pending = 0;
    uv_check_stop(&r->tick_check);
    uv_idle_stop(&r->tick_idle);
    tick(r);
}

static void schedule_tick(crm_jobs_t *r)
{
    if (r->tick_pending || r->state >= RUNNER_CLOSING || r->state == RUNNER_CREATED)
        return;
    r->tick_pending = 1;
    uv_check_start(&r->tick_check, on_tick_check);
    uv_idle_start(&r->tick_idle, on_tick_idle);
}

static void on_stop_timer(crm_timer_t *t)
{
    crm_jobs_t *r = (crm_jobs_t *)((char *)t - offsetof(crm_jobs_t, stop_timer));
    if (r->state == RUNNER_STOPPING) {
        begin_drain(r);
    } else if (r->state == RUNNER_DRAINING) {
        abandon_all(r);
        begin_close(r);
    }
}

static void finish_close(crm_jobs_t *r)
{
    set_state(r, RUNNER_STOPPED);
    crm_log(CRM_LOG_INFO, "jobs.stopped", CRM_LOG_STR("owner", r->owner), CRM_LOG_UINT("released", r->stats.released),
            CRM_LOG_UINT("abandoned", r->stats.abandoned), CRM_LOG_UINT("handlers_still_running", r->n_handlers));
    if (r->on_stopped != NULL) {
        r->notifying = 1;
        r->on_stopped(r->on_stopped_data);
        r->notifying = 0;
    }
    if (r->free_requested && r->n_jobs == 0)
        runner_free(r);
}

void crm_jobs_free(crm_jobs_t *r)
{
    if (r == NULL)
        return;
    assert(r->state == RUNNER_STOPPED);
    r->free_requested = 1;
    if (r->n_jobs == 0 && !r->notifying)
        runner_free(r);
}

static void on_handle_closed(uv_handle_t *h)
{
    crm_jobs_t *r = h->data;
    if (--r->handles_open == 0)
        finish_close(r);
}

static void on_timers_closed(crm_timerq_t *q)
{
    crm_jobs_t *r = (crm_jobs_t *)((char *)q - offsetof(crm_jobs_t, timers));
    if (--r->handles_open == 0)
        finish_close(r);
}

static void begin_close(crm_jobs_t *r)
{
    set_state(r, RUNNER_CLOSING);
    assert(r->n_leases == 0 && drained(r));
    crm_timer_t *timers[] = {&r->poll_timer,  &r->renew_timer, &r->reclaim_timer,
                             &r->purge_timer, &r->flush_timer, &r->stop_timer};
    for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); ++i)
        crm_timerq_stop(&r->timers, timers[i]);
    r->tick_pending = 0;
    r->handles_open = 3;
    uv_close((uv_handle_t *)&r->tick_check, on_handle_closed);
    uv_close((uv_handle_t *)&r->tick_idle, on_handle_closed);
    crm_timerq_close(&r->timers, on_timers_closed);
}

int crm_jobs_stop(crm_jobs_t *r, uint64_t grace_ms, void (*on_stopped)(void *data), void *data)
{
    if (r == NULL)
        return CRM_E_INVAL;
    if (r->state >= RUNNER_STOPPING)
        return CRM_E_STATE;
    r->on_stopped = on_stopped;
    r->on_stopped_data = data;
    if (r->state == RUNNER_CREATED) {
        begin_close(r);
        return 0;
    }
    set_state(r, RUNNER_STOPPING);
    r->claim_wanted = 0;
    crm_timerq_stop(&r->timers, &r->poll_timer);
    crm_timerq_stop(&r->timers, &r->reclaim_timer);
    crm_timerq_stop(&r->timers, &r->purge_timer);
    crm_timerq_start(&r->timers, &r->stop_timer, now_ms(r) + grace_ms, on_stop_timer);
    crm_log(CRM_LOG_INFO, "jobs.stopping", CRM_LOG_STR("owner", r->owner), CRM_LOG_UINT("running", r->n_handlers),
            CRM_LOG_UINT("grace_ms", grace_ms));
    schedule_tick(r);
    return 0;
}

/* ---- creation, registration, start ---- */

int crm_jobs_create(uv_loop_t *loop, crm_pg_pool_t *pool, const crm_jobs_config_t *cfg, crm_jobs_t **out)
{
    *out = NULL;
    if (loop == NULL || pool == NULL || cfg == NULL || cfg->concurrency < 1 || cfg->concurrency > 4096 ||
        cfg->batch < 1 || cfg->batch > 1024 || cfg->lease_ms < 300 || cfg->lease_ms > 86400000 || cfg->poll_ms < 1 ||
        cfg->poll_ms > 3600000 || cfg->backoff_base_ms < 1 || cfg->backoff_max_ms < cfg->backoff_base_ms ||
        cfg->backoff_max_ms > 30ull * 86400000 || cfg->reclaim_ms < 10 || cfg->reclaim_ms > 3600000 ||
        cfg->purge_ms < 10 || cfg->purge_ms > 86400000 ||
        (cfg->owner_prefix != NULL && (cfg->owner_prefix[0] == '\0' || strlen(cfg->owner_prefix) > 100)))
        return CRM_E_INVAL;
    crm_jobs_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return CRM_E_NOMEM;
    r->loop = loop;
    r->pool = pool;
    r->cfg = *cfg;
    r->max_leases = 2 * cfg->concurrency;
    uint64_t t = cfg->lease_ms / 3;
    r->unit_timeout_ms = t < 200 ? 200 : t > 10000 ? 10000 : t;
    int err = CRM_E_NOMEM;
    size_t slots = 1;
    while (slots < 2 * r->max_leases)
        slots *= 2;
    r->map = calloc(slots, sizeof(*r->map));
    r->map_mask = slots - 1;
    r->renew_ids = calloc(r->max_leases, sizeof(*r->renew_ids));
    r->renew_attempts = calloc(r->max_leases, sizeof(*r->renew_attempts));
    if (r->map == NULL || r->renew_ids == NULL || r->renew_attempts == NULL)
        goto error;
    for (int op = 0; op < OP_COUNT; ++op)
        if ((r->pending[op] = calloc(r->max_leases, sizeof(crm_job_t *))) == NULL)
            goto error;
    static const char *const label_names[2] = {"kind", "outcome"};
    if ((err = crm_counter_vec_init(&r->totals, label_names, 2, CRM_JOBS_MAX_KINDS * OUT_COUNT)) != 0)
        goto error;
    /* The owner must be unique among every runner that ever touches the queue: a process restarted with the same
     * pid (containers often run as pid 1) must not find its predecessor's leases its own. */
    char prefix[112];
    if (cfg->owner_prefix != NULL) {
        snprintf(prefix, sizeof(prefix), "%s", cfg->owner_prefix);
    } else {
        char host[64];
        if (gethostname(host, sizeof(host)) != 0)
            snprintf(host, sizeof(host), "unknown");
        host[sizeof(host) - 1] = '\0';
        snprintf(prefix, sizeof(prefix), "%s:%ld", host, (long)getpid());
    }
    snprintf(r->owner, sizeof(r->owner), "%s:%08" PRIx32, prefix, (uint32_t)crm_rand_u64());
    /* Timers: one per handler with a deadline, plus the runner's six. */
    if ((err = crm_timerq_init(loop, &r->timers, cfg->concurrency + 6)) != 0)
        goto error;
    crm_timer_init(&r->poll_timer);
    crm_timer_init(&r->renew_timer);
    crm_timer_init(&r->reclaim_timer);
    crm_timer_init(&r->purge_timer);
    crm_timer_init(&r->flush_timer);
    crm_timer_init(&r->stop_timer);
    uv_check_init(loop, &r->tick_check);
    uv_idle_init(loop, &r->tick_idle);
    r->tick_check.data = r;
    r->tick_idle.data = r;
    *out = r;
    return 0;
error:
    runner_free(r);
    return err;
}

int crm_jobs_prepare(crm_jobs_t *r)
{
    if (r->prepared)
        return CRM_E_STATE;
    static const struct {
        const char *name;
        const char *sql;
        int nparams;
        size_t offset;
    } defs[] = {
        {"jobs.enqueue", "SELECT crm.job_enqueue($1::text, $2::jsonb, $3::bigint, $4::integer, $5::text)", 5,
         offsetof(crm_jobs_t, stmt.enqueue)},
        {"jobs.claim",
         "SELECT job_id, tenant_id, kind, payload, attempts, max_attempts "
         "FROM crm.jobs_claim($1::text, $2::bigint, $3::text[], $4::integer)",
         4, offsetof(crm_jobs_t, stmt.claim)},
        {"jobs.reclaim", "SELECT crm.jobs_reclaim($1::integer)", 1, offsetof(crm_jobs_t, stmt.reclaim)},
        {"jobs.renew", "SELECT job_id, attempts FROM crm.jobs_renew($1::text, $2::bigint[], $3::integer[], $4::bigint)",
         4, offsetof(crm_jobs_t, stmt.renew)},
        {"jobs.succeed", "SELECT job_id, attempts FROM crm.jobs_succeed($1::text, $2::bigint[], $3::integer[])", 3,
         offsetof(crm_jobs_t, stmt.succeed)},
        {"jobs.fail",
         "SELECT job_id, attempts, state FROM crm.jobs_fail($1::text, $2::bigint[], $3::integer[], $4::bigint[], "
         "$5::text[], $6::boolean[])",
         6, offsetof(crm_jobs_t, stmt.fail)},
        {"jobs.release", "SELECT job_id, attempts FROM crm.jobs_release($1::text, $2::bigint[], $3::integer[])", 3,
         offsetof(crm_jobs_t, stmt.release)},
        /* Timestamps leave as RFC 3339 UTC text (DESIGN.md §5), so the HTTP layer copies them as they are. */
        {"jobs.list",
         "SELECT job_id, tenant_id, kind, state, attempts, max_attempts, "
         "to_char(run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), last_error, "
         "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), "
         "to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), "
         "to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') "
         "FROM crm.jobs_list($1::text, $2::bigint, $3::integer)",
         3, offsetof(crm_jobs_t, stmt.list)},
        {"jobs.retry", "SELECT job_id, state, replayed FROM crm.jobs_retry($1::bigint, $2::text, $3::inet, $4::text)",
         4, offsetof(crm_jobs_t, stmt.retry)},
        {"jobs.purge", "SELECT crm.jobs_purge($1::bigint, $2::integer)", 2, offsetof(crm_jobs_t, stmt.purge)},
    };
    for (size_t i = 0; i < sizeof(defs) / sizeof(defs[0]); ++i) {
        int err = crm_pg_pool_prepare(r->pool, defs[i].name, defs[i].sql, defs[i].nparams,
                                      (crm_pg_stmt_t *)((char *)r + defs[i].offset));
        if (err != 0)
            return err;
    }
    r->prepared = 1;
    return 0;
}

int crm_jobs_register(crm_jobs_t *r, const char *kind, crm_job_handler_fn fn, void *ctx, uint64_t timeout_ms)
{
    if (r->state != RUNNER_CREATED)
        return CRM_E_STATE;
    if (kind == NULL || !kind_valid(kind) || fn == NULL || timeout_ms < 1 || timeout_ms > 10 * r->cfg.lease_ms)
        return CRM_E_INVAL;
    if (find_kind(r, kind) != NULL)
        return CRM_E_EXISTS;
    if (r->nkinds == CRM_JOBS_MAX_KINDS)
        return CRM_E_LIMIT;
    crm_jobs_kind_t *k = &r->kinds[r->nkinds];
    int err =
        crm_histogram_init(&k->duration, duration_buckets, sizeof(duration_buckets) / sizeof(duration_buckets[0]));
    if (err != 0)
        return err;
    snprintf(k->name, sizeof(k->name), "%s", kind);
    k->fn = fn;
    k->ctx = ctx;
    k->timeout_ms = timeout_ms;
    ++r->nkinds;
    return 0;
}

int crm_jobs_start(crm_jobs_t *r)
{
    if (r->state != RUNNER_CREATED || !r->prepared)
        return CRM_E_STATE;
    text_t kinds = {0};
    int err = text_append(&kinds, "{", 1);
    for (size_t i = 0; i < r->nkinds && err == 0; ++i)
        err |= text_append(&kinds, i > 0 ? "," : "", i > 0 ? 1 : 0) | text_append_quoted(&kinds, r->kinds[i].name);
    err |= text_append(&kinds, "}", 1);
    if (err != 0) {
        free(kinds.buf);
        return CRM_E_NOMEM;
    }
    r->kinds_literal = kinds.buf;
    /* Every series visible from the start, at zero. */
    for (size_t i = 0; i < r->nkinds; ++i)
        for (int o = 0; o < OUT_COUNT; ++o) {
            const char *labels[2] = {r->kinds[i].name, outcome_names[o]};
            crm_counter_vec_add(&r->totals, labels, 0);
        }
    set_state(r, RUNNER_STARTED);
    uint64_t now = now_ms(r);
    r->claim_wanted = 1;
    crm_timerq_start(&r->timers, &r->renew_timer, now + r->cfg.lease_ms / 3, on_renew_timer);
    /* Spread the housekeeping of a fleet started together (and keep it off the start-up path). */
    crm_timerq_start(&r->timers, &r->reclaim_timer, now + crm_rand_below(r->cfg.reclaim_ms + 1), on_reclaim_timer);
    if (r->cfg.retention_ms > 0)
        crm_timerq_start(&r->timers, &r->purge_timer, now + crm_rand_below(r->cfg.purge_ms + 1), on_purge_timer);
    crm_log(CRM_LOG_INFO, "jobs.started", CRM_LOG_STR("owner", r->owner), CRM_LOG_UINT("kinds", r->nkinds),
            CRM_LOG_UINT("concurrency", r->cfg.concurrency), CRM_LOG_UINT("lease_ms", r->cfg.lease_ms));
    schedule_tick(r);
    return 0;
}

const char *crm_jobs_owner(const crm_jobs_t *r)
{
    return r->owner;
}

/* ---- statements for the application ---- */

int crm_jobs_enqueue_add(crm_jobs_t *r, crm_pg_unit_t *unit, const crm_job_spec_t *spec)
{
    if (!r->prepared || unit == NULL || spec == NULL || crm_pg_unit_pool(unit) != r->pool || spec->kind == NULL ||
        !kind_valid(spec->kind) || spec->delay_ms > CRM_JOBS_MAX_DELAY_MS || spec->max_attempts < 0 ||
        spec->max_attempts > CRM_JOBS_MAX_ATTEMPTS)
        return CRM_E_INVAL;
    if (spec->unique_key != NULL) {
        size_t n = strlen(spec->unique_key);
        if (n == 0 || n > CRM_JOBS_UNIQUE_KEY_MAX)
            return CRM_E_INVAL;
    }
    if (spec->payload_json != NULL && strlen(spec->payload_json) > CRM_JOBS_PAYLOAD_MAX)
        return CRM_E_TOO_LARGE;
    char delay[24], attempts[16];
    snprintf(delay, sizeof(delay), "%" PRIu64, spec->delay_ms);
    snprintf(attempts, sizeof(attempts), "%d", spec->max_attempts > 0 ? spec->max_attempts : CRM_JOBS_DEFAULT_ATTEMPTS);
    const char *values[5] = {spec->kind, spec->payload_json != NULL ? spec->payload_json : "{}", delay, attempts,
                             spec->unique_key};
    return crm_pg_unit_add(unit, r->stmt.enqueue, 5, values, NULL);
}

int crm_jobs_list_add(crm_jobs_t *r, crm_pg_unit_t *unit, const char *state, int64_t after_id, int limit)
{
    if (!r->prepared || unit == NULL || crm_pg_unit_pool(unit) != r->pool || after_id < 0 || limit < 1 || limit > 1000)
        return CRM_E_INVAL;
    if (state != NULL && strcmp(state, "queued") != 0 && strcmp(state, "running") != 0 &&
        strcmp(state, "succeeded") != 0 && strcmp(state, "dead") != 0)
        return CRM_E_INVAL;
    char after[24], n[16];
    snprintf(after, sizeof(after), "%" PRId64, after_id);
    snprintf(n, sizeof(n), "%d", limit);
    const char *values[3] = {state, after, n};
    return crm_pg_unit_add(unit, r->stmt.list, 3, values, NULL);
}

int crm_jobs_retry_add(crm_jobs_t *r, crm_pg_unit_t *unit, int64_t id, const crm_jobs_actor_t *actor)
{
    if (!r->prepared || unit == NULL || crm_pg_unit_pool(unit) != r->pool || id < 1)
        return CRM_E_INVAL;
    char idtext[24];
    snprintf(idtext, sizeof(idtext), "%" PRId64, id);
    const char *values[4] = {idtext, actor != NULL ? actor->request_id : NULL, actor != NULL ? actor->ip : NULL,
                             actor != NULL ? actor->user_agent : NULL};
    return crm_pg_unit_add(unit, r->stmt.retry, 4, values, NULL);
}

/* ---- figures ---- */

void crm_jobs_stats(const crm_jobs_t *r, crm_jobs_stats_t *out)
{
    *out = r->stats;
    out->running = r->n_handlers - r->n_overdue;
    out->overdue = r->n_overdue;
    out->leases = r->n_leases;
    out->pending = r->npending[OP_SUCCEED] + r->npending[OP_FAIL] + r->npending[OP_RELEASE];
}

static void collect(void *ctx, crm_prom_t *w)
{
    crm_jobs_t *r = ctx;
    crm_jobs_stats_t s;
    crm_jobs_stats(r, &s);
    crm_prom_family(w, "crmd_jobs_total", "counter", "Job attempts by kind and recorded outcome.");
    crm_counter_vec_write(&r->totals, w, "crmd_jobs_total");
    crm_prom_family(w, "crmd_jobs_running", "gauge", "Job handlers running within their deadline.");
    crm_prom_sample_u64(w, "crmd_jobs_running", NULL, 0, s.running);
    crm_prom_family(w, "crmd_jobs_overdue", "gauge",
                    "Job handlers still running whose outcome is ignored (timed out, lease lost, released).");
    crm_prom_sample_u64(w, "crmd_jobs_overdue", NULL, 0, s.overdue);
    crm_prom_family(w, "crmd_jobs_leases", "gauge", "Job leases held by this process.");
    crm_prom_sample_u64(w, "crmd_jobs_leases", NULL, 0, s.leases);
    crm_prom_family(w, "crmd_job_duration_seconds", "histogram", "Job handler run time by kind.");
    for (size_t i = 0; i < r->nkinds; ++i) {
        crm_label_t l = {"kind", r->kinds[i].name};
        crm_prom_histogram(w, "crmd_job_duration_seconds", &l, 1, &r->kinds[i].duration);
    }
    crm_prom_family(w, "crmd_jobs_claimed_total", "counter", "Jobs claimed by this process.");
    crm_prom_sample_u64(w, "crmd_jobs_claimed_total", NULL, 0, s.claimed);
    crm_prom_family(w, "crmd_jobs_reclaimed_total", "counter",
                    "Jobs with expired leases requeued or killed by this process's reclaim calls.");
    crm_prom_sample_u64(w, "crmd_jobs_reclaimed_total", NULL, 0, s.reclaimed);
    crm_prom_family(w, "crmd_jobs_purged_total", "counter", "Succeeded jobs deleted by retention.");
    crm_prom_sample_u64(w, "crmd_jobs_purged_total", NULL, 0, s.purged);
    crm_prom_family(w, "crmd_jobs_errors_total", "counter", "Job queue database operations that failed.");
    static const char *const ops[] = {"claim", "renew", "flush", "reclaim", "purge"};
    uint64_t values[] = {s.claim_errors, s.renew_errors, s.flush_errors, s.reclaim_errors, s.purge_errors};
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); ++i) {
        crm_label_t l = {"operation", ops[i]};
        crm_prom_sample_u64(w, "crmd_jobs_errors_total", &l, 1, values[i]);
    }
}

int crm_jobs_register_metrics(crm_jobs_t *r, crm_metrics_t *metrics)
{
    return crm_metrics_register(metrics, collect, r);
}
