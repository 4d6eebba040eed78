/*
 * Integration test of lib/jobs.c against a real PostgreSQL (DESIGN.md §7), with the schema of sql/ applied by the
 * migration runner and every unit of work running as the serving role crmd_app, as in production.
 *
 * Scenarios: 1 retries with backoff (and Retry-After) until success, 2 dead after max_attempts, listed and
 * replayed by the operator, 3 two runners draining 5,000 jobs exactly once, 4 a crashed process (SIGKILL) whose
 * leases expire and are reclaimed, 5 renewal keeps a long job's lease, 6 de-duplication, outbox rollback and tenant
 * isolation, 7 stop with a running job (released), 8 throughput, 9 a handler past its deadline, 10 a lease lost to
 * someone else, 11 outcomes recorded after the database refused them for a while, 12 retention.
 *
 * The test creates its own throwaway cluster (test/integration/pg_cluster.c) and removes it on every way out.
 * Every scenario runs on a fresh uv_loop_t and ends by stopping its runners, closing their pools and asserting
 * uv_loop_close() == 0. The test drives the loop itself (uv_run UV_RUN_ONCE until a condition holds, bounded);
 * blocking calls (psql, libpq assertions, fork) happen only while the loop is not running.
 *
 * Environment: CRMD_SOURCE_ROOT, the repository root. Arguments: scenario numbers to run only those
 * (`test_jobs 4 7`); none runs all. Figures are printed as "figure:" lines on stdout.
 */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "err.h"
#include "jobs.h"
#include "log.h"
#include "metrics.h"
#include "pg.h"
#include "pg_cluster.h"
#include "scenario.h"

/* ---- blocking SQL for setup and assertions (never while the loop runs) ---- */

static PGconn *g_su;  /* superuser: sees everything (RLS does not apply), sets up and inspects */
static PGconn *g_app; /* crmd_app: enqueues the way the service does */
static const char *const TENANT_A = "aaaaaaaa-0000-4000-8000-000000000001";
static const char *const TENANT_B = "bbbbbbbb-0000-4000-8000-000000000002";

static void sql_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    CHECK(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

static long sql_long(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static long sql_long(PGconn *c, const char *fmt, ...)
{
    char sql[2048], out[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    CHECK(crm_pg_cluster_value(c, sql, out, sizeof(out)) == 0, "query failed: %s", sql);
    CHECK(out[0] != '\0', "no value from: %s", sql);
    return strtol(out, NULL, 10);
}

static void sql_text(PGconn *c, char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void sql_text(PGconn *c, char *out, size_t cap, const char *fmt, ...)
{
    char sql[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    CHECK(crm_pg_cluster_value(c, sql, out, cap) == 0, "query failed: %s", sql);
}

/* The SQLSTATE a statement fails with, as crmd_app ("" when it succeeds). */
static void sql_error(PGconn *c, const char *sql, char out[6])
{
    PGresult *r = PQexec(c, sql);
    const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    snprintf(out, 6, "%s", s != NULL ? s : "");
    PQclear(r);
}

/* Enqueues n jobs as crmd_app through crm.job_enqueue, payload {"i": 0..n-1}, for tenant (NULL = system). */
static void enqueue_bulk(const char *tenant, const char *kind, int n, int max_attempts)
{
    char sql[1024];
    sql_ok(g_app, "BEGIN");
    if (tenant != NULL) {
        snprintf(sql, sizeof(sql), "SELECT set_config('app.tenant_id', '%s', true)", tenant);
        sql_ok(g_app, sql);
    }
    char attempts[16];
    snprintf(attempts, sizeof(attempts), "%d", max_attempts);
    snprintf(sql, sizeof(sql),
             "SELECT count(crm.job_enqueue('%s', jsonb_build_object('i', g), 0, %s, NULL)) "
             "FROM generate_series(0, %d) g",
             kind, max_attempts > 0 ? attempts : "NULL", n - 1);
    sql_ok(g_app, sql);
    sql_ok(g_app, "COMMIT");
}

static void reset_jobs(void)
{
    sql_ok(g_su, "DELETE FROM crm.jobs");
}

/* ---- driving the loop ---- */

/* Jobs a handler asked to complete later, from a loop callback rather than from inside the handler call. */
typedef struct {
    crm_job_t *job;
    uint64_t due_ns;
    int fail;
    uint64_t retry_after_ms;
} deferred_t;

#define MAX_DEFERRED 32768
static deferred_t g_deferred[MAX_DEFERRED];
static size_t g_ndeferred;

static void defer_end(crm_job_t *job, uint64_t after_ms, int fail_it, uint64_t retry_after_ms)
{
    CHECK(g_ndeferred < MAX_DEFERRED, "too many deferred jobs");
    g_deferred[g_ndeferred++] = (deferred_t){
        .job = job, .due_ns = uv_hrtime() + after_ms * 1000000, .fail = fail_it, .retry_after_ms = retry_after_ms};
}

static void run_deferred(void)
{
    /* Take the due ones out first, then end them: the list stays consistent whatever ending a job does. */
    uint64_t now = uv_hrtime();
    deferred_t due[256];
    size_t ndue = 0, keep = 0;
    for (size_t i = 0; i < g_ndeferred; ++i) {
        if (g_deferred[i].due_ns <= now && ndue < sizeof(due) / sizeof(due[0]))
            due[ndue++] = g_deferred[i];
        else
            g_deferred[keep++] = g_deferred[i];
    }
    g_ndeferred = keep;
    for (size_t i = 0; i < ndue; ++i) {
        if (due[i].fail)
            crm_job_fail(due[i].job, "deferred failure", due[i].retry_after_ms, 0);
        else
            crm_job_succeed(due[i].job);
    }
}

static void on_tick(uv_timer_t *t)
{
    run_deferred();
}

/* Starts a scenario on a fresh loop; `reset` empties crm.jobs first. */
static void env_init_ex(env_t *e, const char *scenario, int reset)
{
    env_open(e, scenario, on_tick); /* the tick also completes deferred jobs */
    g_ndeferred = 0;
    if (reset)
        reset_jobs();
}

static void env_init(env_t *e, const char *scenario)
{
    env_init_ex(e, scenario, 1);
}

/* Every deferred job must have ended before a scenario closes its loop. */
static void env_finish(env_t *e)
{
    CHECK(g_ndeferred == 0, "%zu deferred jobs never ended", g_ndeferred);
    env_close(e);
}

/* ---- a pool with a runner ---- */

typedef struct {
    crm_pg_pool_t *pool;
    crm_jobs_t *jobs;
    crm_pg_stmt_t one, div; /* test statements: SELECT 1, SELECT 1 / $1 */
    int stopped;
} rig_t;

static crm_jobs_stats_t jstats(const rig_t *g)
{
    crm_jobs_stats_t s;
    crm_jobs_stats(g->jobs, &s);
    return s;
}

static void pool_config(crm_pg_config_t *pc, size_t size)
{
    crm_pg_config_default(pc);
    pc->conninfo = crm_pg_cluster_app_conninfo();
    pc->application_name = "test_jobs";
    pc->size = size;
}

/* Creates the pool and the runner and prepares the statements; the caller registers handlers, then rig_start. */
static void rig_open(env_t *e, rig_t *g, const crm_pg_config_t *pc, const crm_jobs_config_t *jc)
{
    memset(g, 0, sizeof(*g));
    CHECK(crm_pg_pool_create(&e->loop, pc, &g->pool) == 0, "crm_pg_pool_create");
    int rc = crm_jobs_create(&e->loop, g->pool, jc, &g->jobs);
    CHECK(rc == 0, "crm_jobs_create: %s", crm_err_name(rc));
    CHECK((rc = crm_jobs_prepare(g->jobs)) == 0, "crm_jobs_prepare: %s", crm_err_name(rc));
    CHECK(crm_jobs_prepare(g->jobs) == CRM_E_STATE, "a second prepare is refused");
    CHECK(crm_pg_pool_prepare(g->pool, "test.one", "SELECT 1", 0, &g->one) == 0, "prepare one");
    CHECK(crm_pg_pool_prepare(g->pool, "test.div", "SELECT 1 / $1::int", 1, &g->div) == 0, "prepare div");
}

static void rig_pool_start(env_t *e, rig_t *g)
{
    CHECK(crm_pg_pool_start(g->pool) == 0, "crm_pg_pool_start");
    RUN_UNTIL(e, crm_pg_pool_is_serving(g->pool), 10000);
}

static void rig_start(env_t *e, rig_t *g)
{
    rig_pool_start(e, g);
    int rc = crm_jobs_start(g->jobs);
    CHECK(rc == 0, "crm_jobs_start: %s", crm_err_name(rc));
}

static void on_stopped(void *data)
{
    ++((rig_t *)data)->stopped;
}

static void on_pool_closed(void *data)
{
    ++*(int *)data;
}

static void rig_stop_runner(env_t *e, rig_t *g, uint64_t grace_ms)
{
    int rc = crm_jobs_stop(g->jobs, grace_ms, on_stopped, g);
    CHECK(rc == 0, "crm_jobs_stop: %s", crm_err_name(rc));
    CHECK(g->stopped == 0, "on_stopped ran inside crm_jobs_stop");
    CHECK(crm_jobs_stop(g->jobs, grace_ms, on_stopped, g) == CRM_E_STATE, "a second stop is refused");
    RUN_UNTIL(e, g->stopped != 0, grace_ms + 15000);
    CHECK(g->stopped == 1, "on_stopped ran %d times", g->stopped);
    crm_jobs_free(g->jobs);
    g->jobs = NULL;
}

static void rig_close_pool(env_t *e, rig_t *g)
{
    int closed = 0;
    crm_pg_pool_close(g->pool, on_pool_closed, &closed);
    RUN_UNTIL(e, closed != 0, 10000);
    g->pool = NULL;
}

static void rig_close(env_t *e, rig_t *g, uint64_t grace_ms)
{
    rig_stop_runner(e, g, grace_ms);
    rig_close_pool(e, g);
}

/* ---- units run by the test ---- */

#define MAX_STMTS 8

typedef struct {
    int rows, cols;
    char **cells; /* rows * cols; NULL for SQL NULL */
} table_t;

typedef struct {
    int done;
    int err;
    char sqlstate[6];
    int error_index;
    int nstmts;
    table_t t[MAX_STMTS];
} outcome_t;

static void on_unit(crm_pg_unit_t *u, int err, void *data)
{
    outcome_t *o = data;
    o->done = 1;
    o->err = err;
    const char *ss = crm_pg_unit_sqlstate(u);
    snprintf(o->sqlstate, sizeof(o->sqlstate), "%s", ss != NULL ? ss : "");
    o->error_index = crm_pg_unit_error_index(u);
    o->nstmts = (int)crm_pg_unit_count(u);
    for (int s = 0; s < o->nstmts && s < MAX_STMTS; ++s) {
        PGresult *r = crm_pg_unit_result(u, (size_t)s);
        if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK)
            continue;
        table_t *t = &o->t[s];
        t->rows = PQntuples(r);
        t->cols = PQnfields(r);
        t->cells = calloc((size_t)(t->rows * t->cols) + 1, sizeof(char *));
        CHECK(t->cells != NULL, "out of memory");
        for (int i = 0; i < t->rows; ++i)
            for (int j = 0; j < t->cols; ++j)
                if (!PQgetisnull(r, i, j))
                    t->cells[i * t->cols + j] = strdup(PQgetvalue(r, i, j));
    }
}

static void outcome_free(outcome_t *o)
{
    for (int s = 0; s < MAX_STMTS; ++s) {
        for (int i = 0; i < o->t[s].rows * o->t[s].cols; ++i)
            free(o->t[s].cells[i]);
        free(o->t[s].cells);
    }
    memset(o, 0, sizeof(*o));
}

static const char *cell(const outcome_t *o, int stmt, int row, int col)
{
    const table_t *t = &o->t[stmt];
    CHECK(row < t->rows && col < t->cols, "statement %d has %d rows x %d cols, wanted (%d, %d)", stmt, t->rows, t->cols,
          row, col);
    return t->cells[row * t->cols + col];
}

static void run_unit(env_t *e, crm_pg_unit_t *u, outcome_t *o)
{
    memset(o, 0, sizeof(*o));
    int rc = crm_pg_unit_submit(u, on_unit, o);
    CHECK(rc == 0, "crm_pg_unit_submit: %s", crm_err_name(rc));
    RUN_UNTIL(e, o->done, 10000);
}

static crm_pg_unit_t *unit_new(rig_t *g, unsigned flags, const char *tenant)
{
    crm_pg_unit_t *u = crm_pg_unit_new(g->pool, flags);
    CHECK(u != NULL, "crm_pg_unit_new");
    if (tenant != NULL)
        CHECK(crm_pg_unit_set_tenant(u, tenant) == 0, "crm_pg_unit_set_tenant");
    return u;
}

/* Enqueues one job in its own unit and returns its id (0 when absorbed by de-duplication). */
static int64_t enqueue_one(env_t *e, rig_t *g, const char *tenant, const crm_job_spec_t *spec)
{
    crm_pg_unit_t *u = unit_new(g, 0, tenant);
    int idx = crm_jobs_enqueue_add(g->jobs, u, spec);
    CHECK(idx == 0, "crm_jobs_enqueue_add: %s", crm_err_name(idx));
    outcome_t o;
    run_unit(e, u, &o);
    CHECK(o.err == 0, "enqueue unit: %s %s", crm_err_name(o.err), o.sqlstate);
    const char *v = cell(&o, 0, 0, 0);
    int64_t id = v != NULL ? strtoll(v, NULL, 10) : 0;
    outcome_free(&o);
    return id;
}

static int64_t payload_i(const crm_job_t *job)
{
    json_t *v = json_object_get(job->payload, "i");
    CHECK(json_is_integer(v), "job %" PRId64 ": payload has no integer i", job->id);
    return json_integer_value(v);
}

static int metrics_contain(crm_jobs_t *jobs, const char *needle)
{
    crm_metrics_t m;
    crm_metrics_init(&m);
    CHECK(crm_jobs_register_metrics(jobs, &m) == 0, "register metrics");
    crm_prom_t w;
    CHECK(crm_prom_init(&w, 4096, 1 << 20) == 0, "crm_prom_init");
    CHECK(crm_metrics_render(&m, &w) == 0, "render");
    int found = strstr(w.buf, needle) != NULL;
    if (!found)
        fprintf(stderr, "metrics:\n%s\n", w.buf);
    crm_prom_dispose(&w);
    return found;
}

/* ---- 1. fails twice, then succeeds: backoff with full jitter, growing cap, Retry-After ---- */

#define FLAKY_JOBS 100

static struct {
    int calls[FLAKY_JOBS][4];
    int after_calls;
    uint64_t after_failed_ns, after_rerun_ns;
} s1;

static void flaky_handler(crm_job_t *job, void *ctx)
{
    int64_t i = payload_i(job);
    CHECK(i >= 0 && i < FLAKY_JOBS && job->attempt >= 1 && job->attempt <= 3, "job %" PRId64 " attempt %d", i,
          job->attempt);
    CHECK(job->max_attempts == 10 && job->tenant_id == NULL && strcmp(job->kind, "retry.flaky") == 0,
          "max_attempts %d tenant %s kind %s", job->max_attempts, job->tenant_id ? job->tenant_id : "-", job->kind);
    /* Every earlier attempt has run, and this one runs once. */
    for (int a = 1; a < job->attempt; ++a)
        CHECK(s1.calls[i][a] == 1, "job %" PRId64 ": attempt %d ran %d times before attempt %d", i, a, s1.calls[i][a],
              job->attempt);
    ++s1.calls[i][job->attempt];
    if (job->attempt < 3) {
        char msg[64];
        snprintf(msg, sizeof(msg), "flaky attempt %d", job->attempt);
        crm_job_fail(job, msg, 0, 0);
    } else {
        crm_job_succeed(job);
    }
}

static void after_handler(crm_job_t *job, void *ctx)
{
    ++s1.after_calls;
    if (job->attempt == 1) {
        s1.after_failed_ns = uv_hrtime();
        /* From a later loop iteration, as a handler waiting for an upstream's 429 would. */
        defer_end(job, 0, 1, 400);
    } else {
        s1.after_rerun_ns = uv_hrtime();
        crm_job_succeed(job);
    }
}

static void scenario_backoff(void)
{
    env_t e;
    env_init(&e, "1 fails twice then succeeds: exponential backoff, full jitter, Retry-After");
    memset(&s1, 0, sizeof(s1));
    /* Every failure's chosen delay, exactly: the function sets run_at = now() + delay and updated_at = now(). */
    sql_ok(g_su, "DROP TABLE IF EXISTS public.test_delays");
    sql_ok(g_su, "CREATE TABLE public.test_delays (job_id bigint, attempts int, delay_ms numeric, last_error text, "
                 "run_at timestamptz, failed_at timestamptz)");
    sql_ok(g_su, "CREATE OR REPLACE FUNCTION public.test_log_delay() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
                 "AS $$ BEGIN IF OLD.state = 'running' AND NEW.state = 'queued' THEN "
                 "INSERT INTO public.test_delays VALUES (NEW.job_id, NEW.attempts, "
                 "extract(epoch FROM NEW.run_at - NEW.updated_at) * 1000, NEW.last_error, NEW.run_at, NEW.updated_at); "
                 "END IF; RETURN NEW; END $$");
    sql_ok(g_su, "CREATE TRIGGER test_delay AFTER UPDATE ON crm.jobs FOR EACH ROW EXECUTE FUNCTION "
                 "public.test_log_delay()");
    enqueue_bulk(NULL, "retry.flaky", FLAKY_JOBS, 0);
    enqueue_bulk(NULL, "retry.after", 1, 0);

    crm_pg_config_t pc;
    pool_config(&pc, 2);
    crm_jobs_config_t jc;
    crm_jobs_config_default(&jc);
    jc.backoff_base_ms = 50;
    jc.backoff_max_ms = 80;
    jc.poll_ms = 10;
    rig_t g;
    rig_open(&e, &g, &pc, &jc);
    CHECK(crm_jobs_register(g.jobs, "retry.flaky", flaky_handler, NULL, 5000) == 0, "register");
    CHECK(crm_jobs_register(g.jobs, "retry.after", after_handler, NULL, 5000) == 0, "register");
    CHECK(crm_jobs_register(g.jobs, "retry.after", after_handler, NULL, 5000) == CRM_E_EXISTS, "duplicate kind");
    CHECK(crm_jobs_register(g.jobs, "Bad.Kind", after_handler, NULL, 5000) == CRM_E_INVAL, "bad kind");
    CHECK(crm_jobs_register(g.jobs, "a..b", after_handler, NULL, 5000) == CRM_E_INVAL, "empty segment");
    CHECK(crm_jobs_register(g.jobs, "ok.kind", after_handler, NULL, 10 * jc.lease_ms + 1) == CRM_E_INVAL,
          "timeout above 10 leases");
    CHECK(crm_jobs_register(g.jobs, "ok.kind", NULL, NULL, 5000) == CRM_E_INVAL, "NULL handler");
    uint64_t t0 = uv_hrtime();
    rig_start(&e, &g);
    CHECK(crm_jobs_register(g.jobs, "late.kind", after_handler, NULL, 5000) == CRM_E_STATE, "register after start");
    RUN_UNTIL(&e, jstats(&g).succeeded == FLAKY_JOBS + 1, 20000);
    double ms = ms_since(t0);
    crm_jobs_stats_t st = jstats(&g);
    CHECK(st.claimed == 3 * FLAKY_JOBS + 2 && st.failed == 2 * FLAKY_JOBS + 1 && st.dead == 0 && st.lost == 0 &&
              st.timeouts == 0 && st.abandoned == 0 && st.running == 0 && st.leases == 0,
          "claimed %" PRIu64 " failed %" PRIu64 " dead %" PRIu64 " lost %" PRIu64 " timeouts %" PRIu64
          " running %zu leases %zu",
          st.claimed, st.failed, st.dead, st.lost, st.timeouts, st.running, st.leases);
    for (int i = 0; i < FLAKY_JOBS; ++i)
        CHECK(s1.calls[i][1] == 1 && s1.calls[i][2] == 1 && s1.calls[i][3] == 1, "job %d ran %d/%d/%d times", i,
              s1.calls[i][1], s1.calls[i][2], s1.calls[i][3]);
    CHECK(s1.after_calls == 2, "retry.after ran %d times", s1.after_calls);
    double gap = (double)(s1.after_rerun_ns - s1.after_failed_ns) / 1e6;
    CHECK(gap >= 400, "Retry-After 400 ms honoured, but the job ran again after %.1f ms", gap);
    CHECK(metrics_contain(g.jobs, "crmd_jobs_total{kind=\"retry.flaky\",outcome=\"failed\"} 200\n") &&
              metrics_contain(g.jobs, "crmd_jobs_total{kind=\"retry.flaky\",outcome=\"succeeded\"} 100\n") &&
              metrics_contain(g.jobs, "crmd_jobs_total{kind=\"retry.after\",outcome=\"dead\"} 0\n") &&
              metrics_contain(g.jobs, "crmd_job_duration_seconds_count{kind=\"retry.flaky\"} 300\n"),
          "metrics");
    rig_close(&e, &g, 1000);

    /* The database's view. */
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE kind = 'retry.flaky' AND state = 'succeeded' AND "
                         "attempts = 3 AND last_error = 'flaky attempt 2' AND finished_at IS NOT NULL") == FLAKY_JOBS,
          "every flaky job succeeded at attempt 3");
    CHECK(sql_long(g_su,
                   "SELECT count(*) FROM public.test_delays d JOIN crm.jobs j USING (job_id) "
                   "WHERE j.kind = 'retry.flaky' AND d.last_error = 'flaky attempt ' || d.attempts") == 2 * FLAKY_JOBS,
          "two recorded failures per flaky job");
    /* Full jitter: every delay within [0, min(max, base * 2^(attempt-1))]: 50 ms after attempt 1, 80 (not 100) after
     * attempt 2. */
    CHECK(sql_long(g_su, "SELECT count(*) FROM public.test_delays d JOIN crm.jobs j USING (job_id) WHERE j.kind = "
                         "'retry.flaky' AND (d.delay_ms < 0 OR d.delay_ms > CASE d.attempts WHEN 1 THEN 50 ELSE 80 "
                         "END)") == 0,
          "a delay outside its cap");
    /* The cap grows: with 100 uniform draws in [0, 80], all of them at or below 50 has probability (51/81)^100,
     * about 1e-20. */
    CHECK(sql_long(g_su, "SELECT count(*) FROM public.test_delays d JOIN crm.jobs j USING (job_id) WHERE j.kind = "
                         "'retry.flaky' AND d.attempts = 2 AND d.delay_ms > 50") > 0,
          "no delay after attempt 2 exceeded the first attempt's cap");
    /* run_at moves forward from one failure to the next. */
    CHECK(sql_long(g_su,
                   "SELECT count(*) FROM public.test_delays a JOIN public.test_delays b USING (job_id) "
                   "WHERE a.attempts = 1 AND b.attempts = 2 AND b.run_at > a.run_at AND b.failed_at > a.run_at") ==
              FLAKY_JOBS,
          "run_at did not move forward");
    CHECK(sql_long(g_su, "SELECT count(*) FROM public.test_delays d JOIN crm.jobs j USING (job_id) WHERE j.kind = "
                         "'retry.after' AND d.delay_ms = 400") == 1,
          "Retry-After: the delay is exactly max(jitter <= 50, 400) = 400 ms");
    char means[128];
    sql_text(g_su, means, sizeof(means),
             "SELECT round(avg(d.delay_ms) FILTER (WHERE d.attempts = 1), 1) || ' ms after attempt 1, ' || "
             "round(avg(d.delay_ms) FILTER (WHERE d.attempts = 2), 1) || ' ms after attempt 2 (max ' || "
             "round(max(d.delay_ms) FILTER (WHERE d.attempts = 2), 1) || ')' FROM public.test_delays d "
             "JOIN crm.jobs j USING (job_id) WHERE j.kind = 'retry.flaky'");
    printf("figure: mean retry delay %s; caps 50/80 ms\n", means);
    printf("figure: %d jobs x 3 attempts done in %.0f ms; Retry-After job re-ran after %.1f ms\n", FLAKY_JOBS, ms, gap);
    sql_ok(g_su, "DROP TRIGGER test_delay ON crm.jobs");
    sql_ok(g_su, "DROP FUNCTION public.test_log_delay()");
    sql_ok(g_su, "DROP TABLE public.test_delays");
    env_finish(&e);
}

/* ---- 2. dead after max_attempts, listed, replayed by the operator ---- */

static struct {
    int calls;
    int succeed_now;
    int attempts_seen[8];
    int tenant_ok;
} s2;

static void always_fails(crm_job_t *job, void *ctx)
{
    s2.attempts_seen[s2.calls < 8 ? s2.calls : 7] = job->attempt;
    ++s2.calls;
    s2.tenant_ok += job->tenant_id != NULL && strcmp(job->tenant_id, TENANT_A) == 0 && payload_i(job) == 7;
    if (s2.succeed_now)
        crm_job_succeed(job);
    else
        crm_job_fail(job, "nope: \"quoted\" \\ and \xff invalid", 0, 0);
}

static void scenario_dead_and_retry(void)
{
    env_t e;
    env_init(&e, "2 dead after max_attempts, listed, replayed");
    memset(&s2, 0, sizeof(s2));
    crm_pg_config_t pc;
    pool_config(&pc, 1);
    crm_jobs_config_t jc;
    crm_jobs_config_default(&jc);
    jc.backoff_base_ms = 1;
    jc.backoff_max_ms = 5;
    jc.poll_ms = 10;
    rig_t g;
    rig_open(&e, &g, &pc, &jc);
    CHECK(crm_jobs_register(g.jobs, "ops.always_fails", always_fails, NULL, 5000) == 0, "register");
    rig_start(&e, &g);
    crm_job_spec_t spec = {.kind = "ops.always_fails", .payload_json = "{\"i\": 7}", .max_attempts = 3};
    int64_t id = enqueue_one(&e, &g, TENANT_A, &spec);
    CHECK(id > 0, "enqueued");
    crm_jobs_wake(g.jobs);
    RUN_UNTIL(&e, jstats(&g).dead == 1, 10000);
    crm_jobs_stats_t st = jstats(&g);
    CHECK(s2.calls == 3 && s2.attempts_seen[0] == 1 && s2.attempts_seen[1] == 2 && s2.attempts_seen[2] == 3 &&
              s2.tenant_ok == 3,
          "calls %d attempts %d,%d,%d tenant_ok %d", s2.calls, s2.attempts_seen[0], s2.attempts_seen[1],
          s2.attempts_seen[2], s2.tenant_ok);
    CHECK(st.failed == 2 && st.dead == 1 && st.succeeded == 0, "failed %" PRIu64 " dead %" PRIu64, st.failed, st.dead);
    CHECK(metrics_contain(g.jobs, "crmd_jobs_total{kind=\"ops.always_fails\",outcome=\"dead\"} 1\n"), "dead metric");
    rig_close(&e, &g, 1000);
    CHECK(
        sql_long(g_su,
                 "SELECT count(*) FROM crm.jobs WHERE job_id = %" PRId64 " AND state = 'dead' AND attempts = 3 AND "
                 "finished_at IS NOT NULL AND lease_owner IS NULL AND last_error = 'nope: \"quoted\" \\ and ? invalid'",
                 id) == 1,
        "dead in the database, error sanitised");

    /* The operator's side: a pool with a runner that is prepared but not started yet. */
    rig_open(&e, &g, &pc, &jc);
    CHECK(crm_jobs_register(g.jobs, "ops.always_fails", always_fails, NULL, 5000) == 0, "register");
    rig_pool_start(&e, &g);
    outcome_t o;
    crm_pg_unit_t *u = unit_new(&g, CRM_PG_READ_ONLY, NULL);
    CHECK(crm_jobs_list_add(g.jobs, u, "dead", 0, 10) == 0, "list_add");
    CHECK(crm_jobs_list_add(g.jobs, u, "dead", id, 10) == 1, "list_add after id");
    CHECK(crm_jobs_list_add(g.jobs, u, NULL, 0, 1000) == 2, "list_add all");
    CHECK(crm_jobs_list_add(g.jobs, u, "bogus", 0, 10) == CRM_E_INVAL, "bad state");
    CHECK(crm_jobs_list_add(g.jobs, u, "dead", 0, 0) == CRM_E_INVAL, "limit 0");
    CHECK(crm_jobs_list_add(g.jobs, u, "dead", 0, 1001) == CRM_E_INVAL, "limit 1001");
    CHECK(crm_jobs_list_add(g.jobs, u, "dead", -1, 10) == CRM_E_INVAL, "negative cursor");
    run_unit(&e, u, &o);
    CHECK(o.err == 0, "list: %s %s", crm_err_name(o.err), o.sqlstate);
    CHECK(o.t[0].rows == 1 && o.t[0].cols == CRM_JOBS_LIST_COLUMNS, "one dead job listed, %d rows %d cols", o.t[0].rows,
          o.t[0].cols);
    char idtext[24];
    snprintf(idtext, sizeof(idtext), "%" PRId64, id);
    CHECK(strcmp(cell(&o, 0, 0, CRM_JOBS_COL_ID), idtext) == 0 &&
              strcmp(cell(&o, 0, 0, CRM_JOBS_COL_TENANT_ID), TENANT_A) == 0 &&
              strcmp(cell(&o, 0, 0, CRM_JOBS_COL_KIND), "ops.always_fails") == 0 &&
              strcmp(cell(&o, 0, 0, CRM_JOBS_COL_STATE), "dead") == 0 &&
              strcmp(cell(&o, 0, 0, CRM_JOBS_COL_ATTEMPTS), "3") == 0 &&
              strcmp(cell(&o, 0, 0, CRM_JOBS_COL_MAX_ATTEMPTS), "3") == 0 &&
              strcmp(cell(&o, 0, 0, CRM_JOBS_COL_LAST_ERROR), "nope: \"quoted\" \\ and ? invalid") == 0 &&
              cell(&o, 0, 0, CRM_JOBS_COL_FINISHED_AT) != NULL,
          "listed row");
    const char *ts = cell(&o, 0, 0, CRM_JOBS_COL_CREATED_AT);
    CHECK(strlen(ts) == 24 && ts[4] == '-' && ts[10] == 'T' && ts[19] == '.' && ts[23] == 'Z',
          "RFC 3339 UTC timestamp, got %s", ts);
    CHECK(o.t[1].rows == 0, "nothing after the last id");
    CHECK(o.t[2].rows == 1, "all states: one job");
    outcome_free(&o);

    crm_jobs_actor_t actor = {.request_id = "req-2", .ip = "127.0.0.1", .user_agent = "test_jobs"};
    u = unit_new(&g, 0, NULL);
    CHECK(crm_jobs_retry_add(g.jobs, u, id, &actor) == 0, "retry_add");
    CHECK(crm_jobs_retry_add(g.jobs, u, id, NULL) == 1, "retry_add again");
    CHECK(crm_jobs_retry_add(g.jobs, u, id + 1000, NULL) == 2, "retry_add missing");
    CHECK(crm_jobs_retry_add(g.jobs, u, 0, NULL) == CRM_E_INVAL, "id 0");
    run_unit(&e, u, &o);
    CHECK(o.err == 0, "retry: %s %s", crm_err_name(o.err), o.sqlstate);
    CHECK(o.t[0].rows == 1 && strcmp(cell(&o, 0, 0, 0), idtext) == 0 && strcmp(cell(&o, 0, 0, 1), "queued") == 0 &&
              strcmp(cell(&o, 0, 0, 2), "t") == 0,
          "replayed: queued");
    CHECK(o.t[1].rows == 1 && strcmp(cell(&o, 1, 0, 1), "queued") == 0 && strcmp(cell(&o, 1, 0, 2), "f") == 0,
          "second replay reports the state, unchanged, not replayed");
    CHECK(o.t[2].rows == 0, "missing job: no row");
    outcome_free(&o);
    CHECK(sql_long(g_su,
                   "SELECT count(*) FROM crm.jobs WHERE job_id = %" PRId64 " AND state = 'queued' AND attempts = 0 AND "
                   "finished_at IS NULL AND last_error LIKE 'nope%%' AND run_at <= now()",
                   id) == 1,
          "queued again with fresh attempts, last_error kept");
    CHECK(sql_long(g_su,
                   "SELECT count(*) FROM crm.audit_log WHERE tenant_id = '%s' AND actor_type = 'operator' AND "
                   "action = 'job.retry' AND target_type = 'job' AND target_id = '%" PRId64 "' AND "
                   "request_id = 'req-2' AND ip = '127.0.0.1' AND user_agent = 'test_jobs' AND "
                   "metadata->>'kind' = 'ops.always_fails' AND (metadata->>'attempts')::int = 3",
                   TENANT_A, id) == 1,
          "one audit row for the replay");

    /* It runs again, from attempt 1, and this time succeeds. */
    s2.succeed_now = 1;
    s2.calls = 0;
    CHECK(crm_jobs_start(g.jobs) == 0, "start");
    RUN_UNTIL(&e, jstats(&g).succeeded == 1, 10000);
    CHECK(s2.calls == 1 && s2.attempts_seen[0] == 1, "replayed job ran once, attempt %d", s2.attempts_seen[0]);
    rig_close(&e, &g, 1000);
    CHECK(sql_long(g_su,
                   "SELECT count(*) FROM crm.jobs WHERE job_id = %" PRId64 " AND state = 'succeeded' AND "
                   "attempts = 1",
                   id) == 1,
          "succeeded after replay");
    env_finish(&e);
}

/* ---- 3. two runners drain 5,000 jobs, each exactly once ---- */

#define DRAIN_JOBS 5000

static struct {
    int count[DRAIN_JOBS];
    int by_runner[2];
} s3;

static void drain_handler(crm_job_t *job, void *ctx)
{
    int64_t i = payload_i(job);
    CHECK(i >= 0 && i < DRAIN_JOBS, "payload i %" PRId64, i);
    ++s3.count[i];
    ++s3.by_runner[(intptr_t)ctx];
    /* Half end at once, half from a later loop iteration. */
    if (i % 2 == 0)
        crm_job_succeed(job);
    else
        defer_end(job, 0, 0, 0);
}

static void scenario_two_runners(void)
{
    env_t e;
    env_init(&e, "3 two runners drain 5,000 jobs, each exactly once");
    memset(&s3, 0, sizeof(s3));
    enqueue_bulk(NULL, "bulk.work", DRAIN_JOBS, 0);
    crm_pg_config_t pc;
    pool_config(&pc, 2);
    crm_jobs_config_t jc;
    crm_jobs_config_default(&jc);
    jc.poll_ms = 50;
    rig_t a, b;
    jc.owner_prefix = "runner-a";
    rig_open(&e, &a, &pc, &jc);
    jc.owner_prefix = "runner-b";
    rig_open(&e, &b, &pc, &jc);
    CHECK(strncmp(crm_jobs_owner(a.jobs), "runner-a:", 9) == 0 && strlen(crm_jobs_owner(a.jobs)) == 17, "owner %s",
          crm_jobs_owner(a.jobs));
    CHECK(crm_jobs_register(a.jobs, "bulk.work", drain_handler, (void *)(intptr_t)0, 5000) == 0, "register a");
    CHECK(crm_jobs_register(b.jobs, "bulk.work", drain_handler, (void *)(intptr_t)1, 5000) == 0, "register b");
    rig_pool_start(&e, &a);
    rig_pool_start(&e, &b);
    uint64_t t0 = uv_hrtime();
    CHECK(crm_jobs_start(a.jobs) == 0 && crm_jobs_start(b.jobs) == 0, "start");
    RUN_UNTIL(&e, jstats(&a).succeeded + jstats(&b).succeeded == DRAIN_JOBS, 60000);
    double ms = ms_since(t0);
    for (int i = 0; i < DRAIN_JOBS; ++i)
        CHECK(s3.count[i] == 1, "job %d ran %d times", i, s3.count[i]);
    CHECK(s3.by_runner[0] > 0 && s3.by_runner[1] > 0, "both runners worked: %d / %d", s3.by_runner[0], s3.by_runner[1]);
    crm_jobs_stats_t sa = jstats(&a), sb = jstats(&b);
    CHECK(sa.lost + sb.lost + sa.failed + sb.failed + sa.abandoned + sb.abandoned == 0, "nothing lost or failed");
    rig_close(&e, &a, 1000);
    rig_close(&e, &b, 1000);
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE kind = 'bulk.work' AND state = 'succeeded' AND "
                         "attempts = 1 AND lease_owner IS NULL") == DRAIN_JOBS,
          "every row succeeded at its first attempt");
    printf("figure: 2 runners drained %d jobs in %.0f ms = %.0f jobs/s (split %d / %d, %" PRIu64 " + %" PRIu64
           " claims)\n",
           DRAIN_JOBS, ms, DRAIN_JOBS / (ms / 1000.0), s3.by_runner[0], s3.by_runner[1], sa.claims, sb.claims);
    env_finish(&e);
}

/* ---- 4. a crashed process: leases expire, another runner reclaims ---- */

#define CRASH_JOBS 20

static int g_crash_pipe = -1;
static int g_crash_seen;

static void crash_hold_handler(crm_job_t *job, void *ctx)
{
    /* Never ends the job: the process is about to be killed holding it. */
    if (++g_crash_seen == CRASH_JOBS + 1) {
        char c = 'x';
        CHECK(write(g_crash_pipe, &c, 1) == 1, "write");
    }
}

/* The crashing process: claims everything and is killed by the parent, without releasing anything. */
static void crash_child(int fd) __attribute__((noreturn));

static void crash_child(int fd)
{
    crm_pg_cluster_disown();
    alarm(60); /* should the parent die first */
    g_crash_pipe = fd;
    uv_loop_t loop;
    uv_loop_init(&loop);
    crm_pg_config_t pc;
    pool_config(&pc, 1);
    crm_jobs_config_t jc;
    crm_jobs_config_default(&jc);
    jc.lease_ms = 1000;
    jc.owner_prefix = "crashing";
    crm_pg_pool_t *pool;
    crm_jobs_t *jobs;
    if (crm_pg_pool_create(&loop, &pc, &pool) != 0 || crm_jobs_create(&loop, pool, &jc, &jobs) != 0 ||
        crm_jobs_prepare(jobs) != 0 || crm_jobs_register(jobs, "crash.victim", crash_hold_handler, NULL, 5000) != 0 ||
        crm_pg_pool_start(pool) != 0 || crm_jobs_start(jobs) != 0)
        _exit(3);
    uv_run(&loop, UV_RUN_DEFAULT);
    _exit(4);
}

static struct {
    int runs[CRASH_JOBS + 1];
    int attempt_ok;
} s4;

static void crash_reclaim_handler(crm_job_t *job, void *ctx)
{
    int64_t i = payload_i(job);
    CHECK(i >= 0 && i <= CRASH_JOBS, "i %" PRId64, i);
    ++s4.runs[i];
    s4.attempt_ok += job->attempt == 2;
    crm_job_succeed(job);
}

static void scenario_crash(void)
{
    env_t e;
    g_scenario = "4";
    reset_jobs();
    enqueue_bulk(NULL, "crash.victim", CRASH_JOBS, 5);
    /* The last job has one attempt: the crash uses it up, so reclaim must kill it rather than requeue it. */
    sql_ok(g_app, "SELECT crm.job_enqueue('crash.victim', '{\"i\": 20}', 0, 1, NULL)");
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    fflush(stdout);
    fflush(stderr);
    pid_t child = fork();
    CHECK(child >= 0, "fork: %s", strerror(errno));
    if (child == 0) {
        close(fds[0]);
        crash_child(fds[1]);
    }
    close(fds[1]);
    struct pollfd p = {.fd = fds[0], .events = POLLIN};
    int ready = poll(&p, 1, 20000);
    char c;
    CHECK(ready == 1 && read(fds[0], &c, 1) == 1, "the crashing process did not claim its jobs in time");
    close(fds[0]);
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE state = 'running' AND attempts = 1 AND "
                         "lease_owner LIKE 'crashing:%%'") == CRASH_JOBS + 1,
          "all jobs running under the crashing process");
    kill(child, SIGKILL);
    int status;
    CHECK(waitpid(child, &status, 0) == child && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
          "the child died of SIGKILL");
    uint64_t t_kill = uv_hrtime();
    sql_ok(g_su, "DROP TABLE IF EXISTS public.test_leases");
    sql_ok(g_su, "CREATE TABLE public.test_leases AS SELECT job_id, lease_expires_at FROM crm.jobs");

    env_init_ex(&e, "4 a crashed process: leases expire, another runner reclaims", 0);
    memset(&s4, 0, sizeof(s4));
    crm_pg_config_t pc;
    pool_config(&pc, 1);
    crm_jobs_config_t jc;
    crm_jobs_config_default(&jc);
    jc.reclaim_ms = 200;
    jc.poll_ms = 20;
    rig_t g;
    rig_open(&e, &g, &pc, &jc);
    CHECK(crm_jobs_register(g.jobs, "crash.victim", crash_reclaim_handler, NULL, 5000) == 0, "register");
    rig_start(&e, &g);
    RUN_UNTIL(&e, jstats(&g).succeeded == CRASH_JOBS && jstats(&g).reclaimed == CRASH_JOBS + 1, 15000);
    double ms = ms_since(t_kill);
    crm_jobs_stats_t st = jstats(&g);
    rig_close(&e, &g, 1000);
    for (int i = 0; i < CRASH_JOBS; ++i)
        CHECK(s4.runs[i] == 1, "job %d ran %d times after the crash", i, s4.runs[i]);
    CHECK(s4.runs[CRASH_JOBS] == 0, "the job without attempts left ran again");
    CHECK(s4.attempt_ok == CRASH_JOBS, "reclaimed jobs run as attempt 2");
    CHECK(st.claimed == CRASH_JOBS && st.reclaimed == CRASH_JOBS + 1, "claimed %" PRIu64 " reclaimed %" PRIu64,
          st.claimed, st.reclaimed);
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs j JOIN public.test_leases l USING (job_id) WHERE "
                         "j.state = 'succeeded' AND j.attempts = 2 AND j.last_error = 'lease expired' AND "
                         "j.run_at > l.lease_expires_at") == CRASH_JOBS,
          "requeued only after the lease expired, then succeeded at attempt 2");
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs j JOIN public.test_leases l USING (job_id) WHERE "
                         "j.state = 'dead' AND j.attempts = 1 AND j.max_attempts = 1 AND "
                         "j.last_error = 'lease expired' AND j.finished_at > l.lease_expires_at") == 1,
          "the job out of attempts is dead");
    sql_ok(g_su, "DROP TABLE public.test_leases");
    printf("figure: %d jobs of a SIGKILLed process finished elsewhere %.0f ms after the kill (lease 1000 ms)\n",
           CRASH_JOBS, ms);
    env_finish(&e);
}

/* ---- 5. renewal keeps a long job's lease ---- */

static struct {
    int runs;
    crm_job_t *job;
} s5;

static void long_handler(crm_job_t *job, void *ctx)
{
    ++s5.runs;
    s5.job = job;
    defer_end(job, 2700, 0, 0);
}

static void scenario_renewal(void)
{
    env_t e;
    env_init(&e, "5 renewal keeps the lease of a job running 3x lease_ms");
    memset(&s5, 0, sizeof(s5));
    enqueue_bulk(NULL, "long.job", 1, 0);
    crm_pg_config_t pc;
    pool_config(&pc, 1);
    crm_jobs_config_t jc;
    crm_jobs_config_default(&jc);
    jc.lease_ms = 900;
    jc.reclaim_ms = 100;
    jc.poll_ms = 20;
    rig_t a, b;
    rig_open(&e, &a, &pc, &jc);
    rig_open(&e, &b, &pc, &jc);
    CHECK(crm_jobs_register(a.jobs, "long.job", long_handler, NULL, 4000) == 0,
          "a timeout beyond the lease is allowed");
    CHECK(crm_jobs_register(b.jobs, "long.job", long_handler, NULL, 4000) == 0, "register b");
    rig_pool_start(&e, &b);
    CHECK(crm_jobs_start(b.jobs) == 0, "b reclaims every 100 ms and would run the job");
    rig_start(&e, &a);
    RUN_UNTIL(&e, s5.runs == 1, 5000);
    /* Sample the lease while the job runs: it must never be expired, and must move forward. */
    long long prev = 0;
    char cur[64];
    int moves = 0, samples = 0;
    uint64_t t0 = uv_hrtime();
    while (ms_since(t0) < 2500) {
        run_for(&e, 150);
        sql_text(g_su, cur, sizeof(cur),
                 "SELECT CASE WHEN lease_expires_at > now() "
                 "THEN (extract(epoch FROM lease_expires_at) * 1000000)::bigint ELSE -1 END "
                 "FROM crm.jobs WHERE state = 'running'");
        if (cur[0] == '\0')
            break; /* finished */
        long long us = strtoll(cur, NULL, 10);
        CHECK(us > 0, "the lease expired while the job ran");
        ++samples;
        CHECK(us >= prev, "the lease moved backwards: %lld after %lld", us, prev);
        if (prev != 0 && us != prev)
            ++moves;
        prev = us;
    }
    RUN_UNTIL(&e, jstats(&a).succeeded + jstats(&b).succeeded == 1, 5000);
    run_for(&e, 300); /* give reclaim more chances to misbehave */
    crm_jobs_stats_t sa = jstats(&a), sb = jstats(&b);
    CHECK(s5.runs == 1, "the job ran %d times", s5.runs);
    CHECK(moves >= 4, "lease renewed only %d times in %d samples", moves, samples);
    CHECK(sa.reclaimed + sb.reclaimed == 0 && sa.lost + sb.lost == 0, "reclaimed %" PRIu64 " lost %" PRIu64,
          sa.reclaimed + sb.reclaimed, sa.lost + sb.lost);
    CHECK(sa.renewals + sb.renewals >= 4, "renewals %" PRIu64, sa.renewals + sb.renewals);
    rig_close(&e, &a, 1000);
    rig_close(&e, &b, 1000);
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE state = 'succeeded' AND attempts = 1") == 1,
          "succeeded at attempt 1");
    printf("figure: 2700 ms job under a 900 ms lease: %d lease moves seen in %d samples, %" PRIu64
           " renewals, 0 reclaims\n",
           moves, samples, sa.renewals + sb.renewals);
    env_finish(&e);
}

/* ---- 6. de-duplication, outbox rollback, tenant isolation ---- */

static void scenario_dedup_outbox_rls(void)
{
    env_t e;
    env_init(&e, "6 de-duplication, outbox rollback, tenant isolation");
    crm_pg_config_t pc;
    pool_config(&pc, 1);
    crm_jobs_config_t jc;
    crm_jobs_config_default(&jc);
    rig_t g, other;
    rig_open(&e, &g, &pc, &jc);
    rig_open(&e, &other, &pc, &jc);
    /* Configuration bounds, and a runner used before it is prepared. */
    crm_jobs_t *bad = NULL;
    crm_jobs_config_t b = jc;
    b.concurrency = 0;
    CHECK(crm_jobs_create(&e.loop, g.pool, &b, &bad) == CRM_E_INVAL && bad == NULL, "concurrency 0");
    b = jc;
    b.batch = 1025;
    CHECK(crm_jobs_create(&e.loop, g.pool, &b, &bad) == CRM_E_INVAL, "batch 1025");
    b = jc;
    b.lease_ms = 299;
    CHECK(crm_jobs_create(&e.loop, g.pool, &b, &bad) == CRM_E_INVAL, "lease 299");
    b = jc;
    b.backoff_max_ms = b.backoff_base_ms - 1;
    CHECK(crm_jobs_create(&e.loop, g.pool, &b, &bad) == CRM_E_INVAL, "max below base");
    b = jc;
    b.owner_prefix = "";
    CHECK(crm_jobs_create(&e.loop, g.pool, &b, &bad) == CRM_E_INVAL, "empty owner prefix");
    CHECK(crm_jobs_create(&e.loop, g.pool, &jc, &bad) == 0, "create");
    CHECK(crm_jobs_start(bad) == CRM_E_STATE, "start before prepare");
    crm_pg_unit_t *early = unit_new(&g, 0, NULL);
    CHECK(crm_jobs_enqueue_add(bad, early, &(crm_job_spec_t){.kind = "a"}) == CRM_E_INVAL, "enqueue unprepared");
    crm_pg_unit_free(early);
    CHECK(crm_jobs_prepare(bad) == CRM_E_EXISTS, "a second runner on one pool");
    int bad_stopped = 0;
    CHECK(crm_jobs_stop(bad, 0, on_pool_closed, &bad_stopped) == 0, "stop a runner never started");
    CHECK(bad_stopped == 0, "not from inside stop");
    RUN_UNTIL(&e, bad_stopped == 1, 1000);
    crm_jobs_free(bad);
    crm_jobs_free(NULL);
    CHECK(crm_jobs_stop(NULL, 0, NULL, NULL) == CRM_E_INVAL, "NULL");
    rig_pool_start(&e, &g);
    rig_pool_start(&e, &other);

    /* De-duplication while pending, per tenant (and for system jobs), inside one unit too. */
    crm_job_spec_t k = {.kind = "dedup.sync", .payload_json = "{\"account\": 1}", .unique_key = "account-1"};
    int64_t a1 = enqueue_one(&e, &g, TENANT_A, &k);
    CHECK(a1 > 0, "first enqueue");
    CHECK(enqueue_one(&e, &g, TENANT_A, &k) == 0, "same key, same tenant: absorbed");
    CHECK(enqueue_one(&e, &g, TENANT_B, &k) > 0, "same key, other tenant: a job of its own");
    CHECK(enqueue_one(&e, &g, NULL, &k) > 0, "system job");
    CHECK(enqueue_one(&e, &g, NULL, &k) == 0, "system job absorbed too (NULLS NOT DISTINCT)");
    crm_pg_unit_t *u = unit_new(&g, 0, TENANT_A);
    crm_job_spec_t k2 = {.kind = "dedup.sync", .unique_key = "account-2"};
    CHECK(crm_jobs_enqueue_add(g.jobs, u, &k2) == 0 && crm_jobs_enqueue_add(g.jobs, u, &k2) == 1, "two in one unit");
    outcome_t o;
    run_unit(&e, u, &o);
    CHECK(o.err == 0 && cell(&o, 0, 0, 0) != NULL && cell(&o, 1, 0, 0) == NULL,
          "within one transaction the second is absorbed");
    outcome_free(&o);
    sql_ok(g_su, "UPDATE crm.jobs SET state = 'succeeded', finished_at = now() WHERE unique_key = 'account-1' AND "
                 "tenant_id = 'aaaaaaaa-0000-4000-8000-000000000001'");
    CHECK(enqueue_one(&e, &g, TENANT_A, &k) > a1, "a finished job no longer absorbs");
    CHECK(enqueue_one(&e, &g, TENANT_A, &(crm_job_spec_t){.kind = "dedup.sync"}) > 0, "no key: never absorbed");

    /* The outbox: a job enqueued in a transaction that rolls back does not exist. */
    crm_job_spec_t mail = {.kind = "outbox.mail", .payload_json = "{\"to\": \"x@example.com\"}"};
    const char *zero[1] = {"0"};
    u = unit_new(&g, CRM_PG_TX, TENANT_A);
    CHECK(crm_jobs_enqueue_add(g.jobs, u, &mail) == 0 && crm_pg_unit_add(u, g.div, 1, zero, NULL) == 1, "tx unit");
    run_unit(&e, u, &o);
    CHECK(o.err == CRM_E_DB && strcmp(o.sqlstate, "22012") == 0 && o.error_index == 1, "tx: %s %s %d",
          crm_err_name(o.err), o.sqlstate, o.error_index);
    outcome_free(&o);
    u = unit_new(&g, 0, TENANT_A);
    CHECK(crm_jobs_enqueue_add(g.jobs, u, &mail) == 0 && crm_pg_unit_add(u, g.div, 1, zero, NULL) == 1, "plain unit");
    run_unit(&e, u, &o);
    CHECK(o.err == CRM_E_DB && o.error_index == 1, "plain: %s", crm_err_name(o.err));
    outcome_free(&o);
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE kind = 'outbox.mail'") == 0,
          "rolled-back enqueues left no job");
    u = unit_new(&g, 0, TENANT_A);
    CHECK(crm_jobs_enqueue_add(g.jobs, u, &mail) == 0 && crm_pg_unit_add(u, g.one, 0, NULL, NULL) == 1, "commit");
    run_unit(&e, u, &o);
    CHECK(o.err == 0, "commit: %s", crm_err_name(o.err));
    outcome_free(&o);
    CHECK(sql_long(g_su,
                   "SELECT count(*) FROM crm.jobs WHERE kind = 'outbox.mail' AND tenant_id = '%s' AND "
                   "payload->>'to' = 'x@example.com' AND state = 'queued' AND max_attempts = 10",
                   TENANT_A) == 1,
          "the committed enqueue exists");

    /* Validation: in C before anything is sent, and in the database. */
    u = unit_new(&g, 0, NULL);
    char big[CRM_JOBS_PAYLOAD_MAX + 16];
    memset(big, ' ', sizeof(big) - 1);
    big[0] = '{';
    big[sizeof(big) - 2] = '}';
    big[sizeof(big) - 1] = '\0';
    char longkey[CRM_JOBS_UNIQUE_KEY_MAX + 2];
    memset(longkey, 'k', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = '\0';
    CHECK(crm_jobs_enqueue_add(g.jobs, u, &(crm_job_spec_t){.kind = "Bad"}) == CRM_E_INVAL, "bad kind");
    CHECK(crm_jobs_enqueue_add(g.jobs, u, &(crm_job_spec_t){.kind = "a.", .payload_json = "{}"}) == CRM_E_INVAL,
          "trailing dot");
    CHECK(crm_jobs_enqueue_add(g.jobs, u, &(crm_job_spec_t){.kind = "a", .payload_json = big}) == CRM_E_TOO_LARGE,
          "payload too large");
    CHECK(crm_jobs_enqueue_add(g.jobs, u, &(crm_job_spec_t){.kind = "a", .max_attempts = 1001}) == CRM_E_INVAL,
          "attempts");
    CHECK(crm_jobs_enqueue_add(g.jobs, u, &(crm_job_spec_t){.kind = "a", .unique_key = longkey}) == CRM_E_INVAL, "key");
    CHECK(crm_jobs_enqueue_add(g.jobs, u, &(crm_job_spec_t){.kind = "a", .unique_key = ""}) == CRM_E_INVAL,
          "empty key");
    CHECK(crm_jobs_enqueue_add(g.jobs, u, &(crm_job_spec_t){.kind = "a", .delay_ms = CRM_JOBS_MAX_DELAY_MS + 1}) ==
              CRM_E_INVAL,
          "delay");
    crm_pg_unit_t *foreign = unit_new(&other, 0, NULL);
    CHECK(crm_jobs_enqueue_add(g.jobs, foreign, &mail) == CRM_E_INVAL, "a unit of another pool");
    CHECK(crm_jobs_list_add(g.jobs, foreign, NULL, 0, 10) == CRM_E_INVAL, "a unit of another pool");
    crm_pg_unit_free(foreign);
    CHECK(crm_pg_unit_count(u) == 0, "nothing was added");
    CHECK(crm_jobs_enqueue_add(g.jobs, u, &(crm_job_spec_t){.kind = "a", .payload_json = "[1]"}) == 0, "array");
    run_unit(&e, u, &o);
    CHECK(o.err == CRM_E_DB && strcmp(o.sqlstate, "23514") == 0, "a payload that is not an object: %s %s",
          crm_err_name(o.err), o.sqlstate);
    outcome_free(&o);
    u = unit_new(&g, 0, NULL);
    CHECK(crm_jobs_enqueue_add(g.jobs, u, &(crm_job_spec_t){.kind = "a", .payload_json = "{"}) == 0, "malformed");
    run_unit(&e, u, &o);
    CHECK(o.err == CRM_E_DB && strcmp(o.sqlstate, "22P02") == 0, "malformed JSON: %s %s", crm_err_name(o.err),
          o.sqlstate);
    outcome_free(&o);

    /* Tenant isolation, enforced by PostgreSQL for the serving role. */
    long total = sql_long(g_su, "SELECT count(*) FROM crm.jobs");
    long of_a = sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE tenant_id = '%s'", TENANT_A);
    CHECK(total == 7 && of_a == 5, "%ld jobs, %ld of tenant A", total, of_a);
    sql_ok(g_app, "BEGIN");
    sql_ok(g_app, "SELECT set_config('app.tenant_id', 'aaaaaaaa-0000-4000-8000-000000000001', true)");
    CHECK(sql_long(g_app, "SELECT count(*) FROM crm.jobs") == of_a, "tenant A sees its jobs only");
    CHECK(sql_long(g_app, "SELECT count(*) FROM crm.jobs WHERE tenant_id IS DISTINCT FROM '%s'", TENANT_A) == 0,
          "nothing of anyone else");
    sql_ok(g_app, "COMMIT");
    CHECK(sql_long(g_app, "SELECT count(*) FROM crm.jobs") == 0, "no tenant set: nothing visible (fails closed)");
    char state[6];
    sql_ok(g_app, "BEGIN");
    sql_ok(g_app, "SELECT set_config('app.tenant_id', 'aaaaaaaa-0000-4000-8000-000000000001', true)");
    sql_error(g_app, "INSERT INTO crm.jobs (tenant_id, kind) VALUES ('aaaaaaaa-0000-4000-8000-000000000001', 'x')",
              state);
    CHECK(strcmp(state, "42501") == 0, "direct INSERT: %s", state);
    sql_ok(g_app, "ROLLBACK");
    sql_ok(g_app, "BEGIN");
    sql_ok(g_app, "SELECT set_config('app.tenant_id', 'aaaaaaaa-0000-4000-8000-000000000001', true)");
    sql_error(g_app, "UPDATE crm.jobs SET state = 'dead'", state);
    CHECK(strcmp(state, "42501") == 0, "direct UPDATE: %s", state);
    sql_ok(g_app, "ROLLBACK");
    sql_error(g_app, "DELETE FROM crm.jobs", state);
    CHECK(strcmp(state, "42501") == 0, "direct DELETE: %s", state);
    sql_error(g_app, "TRUNCATE crm.jobs", state);
    CHECK(strcmp(state, "42501") == 0, "TRUNCATE: %s", state);

    rig_close(&e, &g, 0);
    rig_close(&e, &other, 0);
    env_finish(&e);
}

/* ---- 7. stop with a running job ---- */

static struct {
    crm_job_t *slow;
    int quick_runs, slow_runs;
    uint64_t stop_ns, stopped_ns;
} s7;

static void stop_slow_handler(crm_job_t *job, void *ctx)
{
    ++s7.slow_runs;
    s7.slow = job;
}

static void stop_quick_handler(crm_job_t *job, void *ctx)
{
    ++s7.quick_runs;
    defer_end(job, 100, 0, 0);
}

static void on_stopped_7(void *data)
{
    rig_t *g = data;
    ++g->stopped;
    s7.stopped_ns = uv_hrtime();
    /* The slow job is still the handler's: valid, payload readable. */
    CHECK(s7.slow != NULL && payload_i(s7.slow) == 0 && strcmp(s7.slow->kind, "stop.slow") == 0,
          "the running job stays valid after on_stopped");
}

static void scenario_stop(void)
{
    env_t e;
    env_init(&e, "7 stop with a running job: left to lease expiry after grace");
    memset(&s7, 0, sizeof(s7));
    enqueue_bulk(NULL, "stop.slow", 1, 0);
    enqueue_bulk(NULL, "stop.quick", 1, 0);
    crm_pg_config_t pc;
    pool_config(&pc, 1);
    crm_jobs_config_t jc;
    crm_jobs_config_default(&jc);
    jc.lease_ms = 1000;
    rig_t g;
    rig_open(&e, &g, &pc, &jc);
    CHECK(crm_jobs_register(g.jobs, "stop.slow", stop_slow_handler, NULL, 10000) == 0, "register");
    CHECK(crm_jobs_register(g.jobs, "stop.quick", stop_quick_handler, NULL, 10000) == 0, "register");
    rig_start(&e, &g);
    RUN_UNTIL(&e, s7.slow_runs == 1 && s7.quick_runs == 1, 5000);
    crm_jobs_t *jobs = g.jobs;
    s7.stop_ns = uv_hrtime();
    CHECK(crm_jobs_stop(jobs, 400, on_stopped_7, &g) == 0, "stop");
    CHECK(g.stopped == 0, "on_stopped ran inside crm_jobs_stop");
    crm_jobs_wake(jobs); /* ignored while stopping */
    RUN_UNTIL(&e, g.stopped == 1, 5000);
    double ms = (double)(s7.stopped_ns - s7.stop_ns) / 1e6;
    CHECK(ms >= 395, "stopped after %.0f ms, before the grace period ended", ms);
    CHECK(s7.quick_runs == 1 && s7.slow_runs == 1, "nothing was claimed during stop");
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE kind = 'stop.quick' AND state = 'succeeded'") == 1,
          "the job that ended within grace was recorded");
    /* The handler may still be doing the job's work: it keeps the lease, unrenewed, so nobody else starts the job
     * before the lease runs out. */
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE kind = 'stop.slow' AND state = 'running' AND "
                         "attempts = 1 AND lease_owner IS NOT NULL") == 1,
          "the running job was not handed back while its handler ran");
    /* The late outcome is ignored; freeing the runner waits for it. */
    crm_jobs_free(jobs);
    crm_job_succeed(s7.slow);
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE kind = 'stop.slow' AND state = 'running'") == 1,
          "a late outcome after stop changes nothing");
    /* Once the lease has run out, any runner's reclaim queues it again, the attempt counted. */
    for (int waited = 0; sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE kind = 'stop.slow' AND "
                                        "lease_expires_at < now()") != 1;
         waited += 50) {
        CHECK(waited < 3000, "the lease did not expire");
        usleep(50 * 1000);
    }
    CHECK(sql_long(g_su, "SELECT crm.jobs_reclaim(10)") == 1, "reclaim after expiry");
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE kind = 'stop.slow' AND state = 'queued' AND "
                         "attempts = 1 AND last_error = 'lease expired'") == 1,
          "queued again after the lease expired");
    rig_close_pool(&e, &g);
    printf("figure: stop took %.0f ms with grace 400 ms; 1 left to lease expiry, 1 recorded\n", ms);
    env_finish(&e);
}

/* ---- 8. throughput ---- */

#define THROUGHPUT_JOBS 20000

static int g_noop_runs;

static void noop_handler(crm_job_t *job, void *ctx)
{
    ++g_noop_runs;
    crm_job_succeed(job);
}

static void throughput_run(env_t *e, size_t concurrency, size_t batch)
{
    /* Each run starts from a vacuumed table: dead rows left by an earlier run slow the claim's index scan, and that
     * would measure autovacuum's timing rather than the runner. */
    reset_jobs();
    sql_ok(g_su, "VACUUM crm.jobs");
    g_noop_runs = 0;
    uint64_t t_enq = uv_hrtime();
    enqueue_bulk(NULL, "noop", THROUGHPUT_JOBS, 0);
    double enq_ms = ms_since(t_enq);
    crm_pg_config_t pc;
    pool_config(&pc, 4);
    crm_jobs_config_t jc;
    crm_jobs_config_default(&jc);
    jc.concurrency = concurrency;
    jc.batch = batch;
    rig_t g;
    rig_open(e, &g, &pc, &jc);
    CHECK(crm_jobs_register(g.jobs, "noop", noop_handler, NULL, 5000) == 0, "register");
    rig_pool_start(e, &g);
    uint64_t t0 = uv_hrtime();
    CHECK(crm_jobs_start(g.jobs) == 0, "start");
    RUN_UNTIL(e, jstats(&g).succeeded == THROUGHPUT_JOBS, 120000);
    double ms = ms_since(t0);
    crm_jobs_stats_t st = jstats(&g);
    CHECK(g_noop_runs == THROUGHPUT_JOBS && st.claimed == THROUGHPUT_JOBS, "handler ran %d times", g_noop_runs);
    rig_close(e, &g, 1000);
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE kind = 'noop' AND state = 'succeeded'") ==
              THROUGHPUT_JOBS,
          "all succeeded");
    printf("figure: %d no-op jobs in %.0f ms = %.0f jobs/s (one runner, concurrency %zu, batch %zu, %" PRIu64
           " claims, %" PRIu64 " outcome batches); enqueue via crm.job_enqueue %.0f jobs/s\n",
           THROUGHPUT_JOBS, ms, THROUGHPUT_JOBS / (ms / 1000.0), concurrency, batch, st.claims, st.flushes,
           THROUGHPUT_JOBS / (enq_ms / 1000.0));
}

static void scenario_throughput(void)
{
    env_t e;
    env_init(&e, "8 throughput: 20,000 no-op jobs, one runner");
    throughput_run(&e, 64, 64); /* the defaults */
    throughput_run(&e, 1024, 512);
    env_finish(&e);
}

/* ---- 9. a handler past its deadline ---- */

static struct {
    crm_job_t *first;
    int runs;
} s9;

static void timeout_handler(crm_job_t *job, void *ctx)
{
    ++s9.runs;
    if (job->attempt == 1)
        s9.first = job; /* hangs */
    else
        crm_job_succeed(job);
}

static void scenario_timeout(void)
{
    env_t e;
    env_init(&e, "9 a handler past its deadline: failed 'timeout', retried, late outcome ignored");
    memset(&s9, 0, sizeof(s9));
    enqueue_bulk(NULL, "slow.timeout", 1, 0);
    crm_pg_config_t pc;
    pool_config(&pc, 1);
    crm_jobs_config_t jc;
    crm_jobs_config_default(&jc);
    jc.backoff_base_ms = 1;
    jc.backoff_max_ms = 1;
    jc.poll_ms = 20;
    jc.concurrency = 2;
    rig_t g;
    rig_open(&e, &g, &pc, &jc);
    CHECK(crm_jobs_register(g.jobs, "slow.timeout", timeout_handler, NULL, 200) == 0, "register");
    rig_start(&e, &g);
    uint64_t t0 = uv_hrtime();
    RUN_UNTIL(&e, jstats(&g).succeeded == 1, 5000);
    double ms = ms_since(t0);
    crm_jobs_stats_t st = jstats(&g);
    CHECK(s9.runs == 2 && st.timeouts == 1 && st.failed == 1 && st.overdue == 1 && st.running == 0,
          "runs %d timeouts %" PRIu64 " failed %" PRIu64 " overdue %zu", s9.runs, st.timeouts, st.failed, st.overdue);
    CHECK(ms >= 200 + CRM_JOBS_TIMEOUT_GRACE_MS, "timed out after %.0f ms", ms);
    CHECK(s9.first->attempt == 1 && payload_i(s9.first) == 0, "the hung job is still valid");
    CHECK(metrics_contain(g.jobs, "crmd_jobs_total{kind=\"slow.timeout\",outcome=\"timeout\"} 1\n") &&
              metrics_contain(g.jobs, "crmd_jobs_overdue 1\n"),
          "metrics");
    crm_job_fail(s9.first, "too late", 0, 1);
    CHECK(jstats(&g).overdue == 0 && jstats(&g).dead == 0, "late outcome ignored");
    run_for(&e, 50);
    rig_close(&e, &g, 1000);
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE state = 'succeeded' AND attempts = 2 AND "
                         "last_error = 'timeout'") == 1,
          "recorded: timeout, then success at attempt 2");
    printf("figure: 200 ms handler timeout detected and retried; done in %.0f ms\n", ms);
    env_finish(&e);
}

/* ---- 10. a lease lost to someone else ---- */

static struct {
    crm_job_t *job;
    int runs;
} s10;

static void held_handler(crm_job_t *job, void *ctx)
{
    ++s10.runs;
    s10.job = job;
}

static void scenario_lost(void)
{
    env_t e;
    env_init(&e, "10 a lease lost: renewal finds it gone, the late outcome is ignored");
    memset(&s10, 0, sizeof(s10));
    enqueue_bulk(NULL, "held.job", 1, 0);
    crm_pg_config_t pc;
    pool_config(&pc, 1);
    crm_jobs_config_t jc;
    crm_jobs_config_default(&jc);
    jc.lease_ms = 600;
    rig_t g;
    rig_open(&e, &g, &pc, &jc);
    CHECK(crm_jobs_register(g.jobs, "held.job", held_handler, NULL, 5000) == 0, "register");
    rig_start(&e, &g);
    RUN_UNTIL(&e, s10.runs == 1, 5000);
    /* Someone else (an operator, or a reclaim after a long pause) has taken the job. */
    sql_ok(g_su, "UPDATE crm.jobs SET lease_owner = 'thief' WHERE state = 'running'");
    RUN_UNTIL(&e, jstats(&g).lost == 1, 3000);
    crm_jobs_stats_t st = jstats(&g);
    CHECK(st.overdue == 1 && st.leases == 0 && st.running == 0, "overdue %zu leases %zu", st.overdue, st.leases);
    crm_job_succeed(s10.job);
    run_for(&e, 50);
    CHECK(jstats(&g).succeeded == 0 && jstats(&g).overdue == 0, "the lost job's outcome was not recorded");
    CHECK(metrics_contain(g.jobs, "crmd_jobs_total{kind=\"held.job\",outcome=\"lost\"} 1\n"), "lost metric");
    rig_close(&e, &g, 1000);
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE state = 'running' AND lease_owner = 'thief'") == 1,
          "the thief's lease is untouched");
    env_finish(&e);
}

/* ---- 11. outcomes are kept and retried while the database refuses them ---- */

#define LOCKED_JOBS 50

static int g_locked_runs;

static void locked_handler(crm_job_t *job, void *ctx)
{
    ++g_locked_runs;
    defer_end(job, 300, 0, 0);
}

static void scenario_flush_retry(void)
{
    env_t e;
    env_init(&e, "11 outcomes retried after the database refused them for a while");
    g_locked_runs = 0;
    enqueue_bulk(NULL, "locked.job", LOCKED_JOBS, 0);
    crm_pg_config_t pc;
    pool_config(&pc, 2);
    pc.statement_timeout_ms = 300;
    crm_jobs_config_t jc;
    crm_jobs_config_default(&jc);
    rig_t g;
    rig_open(&e, &g, &pc, &jc);
    CHECK(crm_jobs_register(g.jobs, "locked.job", locked_handler, NULL, 5000) == 0, "register");
    rig_start(&e, &g);
    RUN_UNTIL(&e, g_locked_runs == LOCKED_JOBS, 5000);
    /* Every statement on the table now waits for this lock until its statement timeout. */
    PGconn *locker = crm_pg_cluster_connect(crm_pg_cluster_conninfo());
    CHECK(locker != NULL, "connect");
    sql_ok(locker, "BEGIN");
    sql_ok(locker, "LOCK TABLE crm.jobs IN ACCESS EXCLUSIVE MODE");
    run_for(&e, 2000);
    crm_jobs_stats_t st = jstats(&g);
    CHECK(st.flush_errors >= 1 && st.succeeded == 0 && st.leases == LOCKED_JOBS,
          "flush_errors %" PRIu64 " succeeded %" PRIu64 " leases %zu", st.flush_errors, st.succeeded, st.leases);
    sql_ok(locker, "COMMIT");
    PQfinish(locker);
    RUN_UNTIL(&e, jstats(&g).succeeded == LOCKED_JOBS, 20000);
    st = jstats(&g);
    CHECK(g_locked_runs == LOCKED_JOBS && st.lost == 0 && st.abandoned == 0, "runs %d lost %" PRIu64, g_locked_runs,
          st.lost);
    rig_close(&e, &g, 1000);
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE state = 'succeeded' AND attempts = 1") == LOCKED_JOBS,
          "all recorded once, none re-run");
    printf("figure: %d outcomes held through %" PRIu64 " failed attempts to record them, then recorded\n", LOCKED_JOBS,
           st.flush_errors);
    env_finish(&e);
}

/* ---- 12. retention: succeeded jobs are purged, dead and recent ones stay ---- */

#define PURGE_JOBS 1500

static void scenario_retention(void)
{
    env_t e;
    env_init(&e, "12 retention: old succeeded jobs purged in bounded batches");
    enqueue_bulk(NULL, "old.done", PURGE_JOBS, 0);
    enqueue_bulk(NULL, "old.dead", 1, 0);
    sql_ok(g_su, "UPDATE crm.jobs SET state = 'succeeded', attempts = 1, finished_at = now() - interval '1 hour' "
                 "WHERE kind = 'old.done'");
    sql_ok(g_su, "UPDATE crm.jobs SET state = 'dead', attempts = 1, finished_at = now() - interval '1 hour' "
                 "WHERE kind = 'old.dead'");
    enqueue_bulk(NULL, "noop", 1, 0);
    g_noop_runs = 0;
    crm_pg_config_t pc;
    pool_config(&pc, 1);
    crm_jobs_config_t jc;
    crm_jobs_config_default(&jc);
    jc.retention_ms = 60000;
    jc.purge_ms = 20;
    rig_t g;
    rig_open(&e, &g, &pc, &jc);
    CHECK(crm_jobs_register(g.jobs, "noop", noop_handler, NULL, 5000) == 0, "register");
    rig_start(&e, &g);
    RUN_UNTIL(&e, jstats(&g).purged == PURGE_JOBS && jstats(&g).succeeded == 1, 10000);
    run_for(&e, 100);
    crm_jobs_stats_t st = jstats(&g);
    CHECK(st.purged == PURGE_JOBS && st.purge_errors == 0, "purged %" PRIu64, st.purged);
    CHECK(metrics_contain(g.jobs, "crmd_jobs_purged_total 1500\n"), "purge metric");
    rig_close(&e, &g, 1000);
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE kind = 'old.done'") == 0, "old succeeded jobs gone");
    CHECK(sql_long(g_su, "SELECT count(*) FROM crm.jobs WHERE kind IN ('old.dead', 'noop')") == 2,
          "the dead job and the recent success stay");
    env_finish(&e);
}

int main(int argc, char **argv)
{
    static void (*const scenarios[])(void) = {
        NULL,
        scenario_backoff,
        scenario_dead_and_retry,
        scenario_two_runners,
        scenario_crash,
        scenario_renewal,
        scenario_dedup_outbox_rls,
        scenario_stop,
        scenario_throughput,
        scenario_timeout,
        scenario_lost,
        scenario_flush_retry,
        scenario_retention,
    };
    const int n = (int)(sizeof(scenarios) / sizeof(scenarios[0]));
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    for (int i = 1; i < argc; ++i) {
        int k = atoi(argv[i]);
        CHECK(k >= 1 && k < n, "no scenario '%s' (1..%d)", argv[i], n - 1);
    }
    /* The runner logs every failure it records; the scenarios cause hundreds on purpose. */
    crm_log_set_level(getenv("CRMD_TEST_VERBOSE") != NULL ? CRM_LOG_DEBUG : CRM_LOG_OFF);
    json_object_seed(0);
    uint64_t t0 = uv_hrtime();
    CHECK(crm_pg_cluster_start("jobs", 0) == 0, "cluster");
    CHECK(crm_pg_cluster_migrate() == 0, "migrations");
    g_su = crm_pg_cluster_connect(crm_pg_cluster_conninfo());
    g_app = crm_pg_cluster_connect(crm_pg_cluster_app_conninfo());
    CHECK(g_su != NULL && g_app != NULL, "connect");
    sql_ok(g_su, "SET client_min_messages = warning");
    sql_ok(g_su, "INSERT INTO crm.tenants (tenant_id, name) VALUES ('aaaaaaaa-0000-4000-8000-000000000001', 'A'), "
                 "('bbbbbbbb-0000-4000-8000-000000000002', 'B')");
    for (int k = 1; k < n; ++k) {
        int selected = argc == 1;
        for (int i = 1; i < argc; ++i)
            selected |= atoi(argv[i]) == k;
        if (selected)
            scenarios[k]();
    }
    g_scenario = "teardown";
    PQfinish(g_su);
    PQfinish(g_app);
    printf("figure: scenarios passed in %.1f s (including cluster setup)\n", ms_since(t0) / 1000.0);
    return 0;
}
