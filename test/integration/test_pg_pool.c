/*
 * Pool-level integration test of lib/pg.c against a real PostgreSQL (DESIGN.md §7: PostgreSQL is real everywhere).
 *
 * Scenarios: 1 many concurrent units (no cross-wiring), 2 queue overflow, 3 queue timeout, 4 server-side deadline,
 * 5 client-side backstop, 6 isolation of units in one pipeline and a transaction-local tenant, 7 database down and
 * back under load (breaker), 8 detach and close, 9 statements that do not prepare, 10 large parameters and results
 * and many statements per unit, 11 a server that accepts connections but never answers.
 *
 * The test creates its own throwaway cluster (pg_cluster.h: test/tools/pg.sh in a private directory under /tmp; it
 * has to: scenario 7 stops and restarts the server, scenarios 5 and 11 stop server processes with SIGSTOP), talks to
 * it over the cluster's unix socket as the superuser, and removes it on every way out: normal exit, failed check
 * (exit), abort (sanitizers), SIGTERM from the test runner's timeout, SIGINT and SIGHUP; a server process left
 * stopped is resumed first. SIGSTOP needs the right to signal the server's processes: run it as root (the server
 * then runs as postgres) or as the user who owns the cluster.
 *
 * Every scenario runs on a fresh uv_loop_t and ends by closing its pool and asserting uv_loop_close() == 0, so a
 * handle the pool forgot to close fails the test. The test code drives the loop itself (uv_run UV_RUN_ONCE until a
 * condition holds, with a bound on the wait); blocking calls (pg.sh, psql, sleeps) happen only while the loop is not
 * running, or on the libuv thread pool when PostgreSQL must stop or start under load.
 *
 * Environment: CRMD_SOURCE_ROOT, the repository root (for test/tools/pg.sh); PGPORT (optional) names the socket.
 * Arguments: scenario numbers to run only those (`test_pg_pool 5 7`); none runs all. Figures (latencies, counts)
 * are printed as "figure:" lines on stdout.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "breaker.h"
#include "err.h"
#include "pg.h"
#include "pg_cluster.h"
#include "scenario.h"

static double ms_between(uint64_t from_ns, uint64_t to_ns)
{
    return (double)(to_ns - from_ns) / 1e6;
}

/* ---- the private cluster (pg_cluster.h) ---- */

/* A server process stopped with SIGSTOP (scenario 5: a backend, 11: the postmaster): resumed on any exit, or
 * PostgreSQL could not shut down. */
static volatile pid_t g_stopped_backend;

static void resume_stopped(void)
{
    if (g_stopped_backend > 0)
        kill(g_stopped_backend, SIGCONT);
}

/* Scenario 15 needs TCP (host failover): the cluster listens on 127.0.0.1 too. */
static void cluster_setup(void)
{
    CHECK(crm_pg_cluster_start("pgpool", CRM_PG_CLUSTER_TCP) == 0, "cannot start the cluster (see above)");
    crm_pg_cluster_on_cleanup(resume_stopped);
    CHECK(crm_pg_cluster_migrate() == 0, "cannot create the database (see above)");
}

/* ---- driving the loop (scenario.h) ---- */

static void env_init(env_t *e, const char *scenario)
{
    env_open(e, scenario, NULL);
}

/* ---- pools, units, results ---- */

typedef struct {
    crm_pg_stmt_t dbl, sleep, pid, one, setting, timeout, echo, div, ins, list, bad;
} stmts_t;

enum {
    WITH_TABLE = 1u << 0,   /* statements on table t (scenario 6 creates it first) */
    WITH_MISSING = 1u << 1, /* a statement on a table that does not exist (scenario 9) */
};

static crm_pg_stats_t stats(crm_pg_pool_t *p)
{
    crm_pg_stats_t s;
    crm_pg_pool_stats(p, &s);
    return s;
}

static void config(crm_pg_config_t *cfg, size_t size, size_t depth, size_t queue_max)
{
    crm_pg_config_default(cfg);
    cfg->conninfo = crm_pg_cluster_conninfo();
    cfg->application_name = "test_pg_pool";
    cfg->size = size;
    cfg->pipeline_depth = depth;
    cfg->queue_max = queue_max;
}

static crm_pg_pool_t *pool_new(env_t *e, const crm_pg_config_t *cfg, stmts_t *s, unsigned with)
{
    crm_pg_pool_t *p = NULL;
    int rc = crm_pg_pool_create(&e->loop, cfg, &p);
    CHECK(rc == 0 && p != NULL, "crm_pg_pool_create: %s", crm_err_name(rc));
    CHECK(crm_pg_pool_prepare(p, "double", "SELECT $1::int * 2", 1, &s->dbl) == 0, "prepare double");
    CHECK(crm_pg_pool_prepare(p, "sleep", "SELECT pg_sleep($1::float8)", 1, &s->sleep) == 0, "prepare sleep");
    CHECK(crm_pg_pool_prepare(p, "pid", "SELECT pg_backend_pid()", 0, &s->pid) == 0, "prepare pid");
    CHECK(crm_pg_pool_prepare(p, "one", "SELECT 1", 0, &s->one) == 0, "prepare one");
    CHECK(crm_pg_pool_prepare(p, "setting", "SELECT current_setting('app.tenant_id', true)", 0, &s->setting) == 0,
          "prepare setting");
    CHECK(crm_pg_pool_prepare(p, "timeout", "SELECT current_setting('statement_timeout')", 0, &s->timeout) == 0,
          "prepare timeout");
    CHECK(crm_pg_pool_prepare(p, "echo", "SELECT $1::text", 1, &s->echo) == 0, "prepare echo");
    CHECK(crm_pg_pool_prepare(p, "div", "SELECT 1 / $1::int", 1, &s->div) == 0, "prepare div");
    if (with & WITH_TABLE) {
        CHECK(crm_pg_pool_prepare(p, "ins", "INSERT INTO t (x) VALUES ($1::int)", 1, &s->ins) == 0, "prepare ins");
        CHECK(crm_pg_pool_prepare(p, "list", "SELECT coalesce(string_agg(x::text, ',' ORDER BY x), '') FROM t", 0,
                                  &s->list) == 0,
              "prepare list");
    }
    if (with & WITH_MISSING)
        CHECK(crm_pg_pool_prepare(p, "bad", "SELECT x FROM no_such_table", 0, &s->bad) == 0, "prepare bad");
    return p;
}

static void pool_start_ready(env_t *e, crm_pg_pool_t *p, size_t n)
{
    uint64_t t0 = uv_hrtime();
    CHECK(crm_pg_pool_start(p) == 0, "crm_pg_pool_start");
    RUN_UNTIL(e, stats(p).conns[CRM_PG_CONN_READY] == n, 10000);
    printf("figure: %zu connection(s) ready in %.1f ms\n", n, ms_since(t0));
}

static void on_pool_closed(void *data)
{
    ++*(int *)data;
}

static void pool_close(env_t *e, crm_pg_pool_t *p)
{
    int closed = 0;
    crm_pg_pool_close(p, on_pool_closed, &closed);
    RUN_UNTIL(e, closed != 0, 10000);
    CHECK(closed == 1, "on_closed ran %d times", closed);
}

static void unit_append(crm_pg_unit_t *u, crm_pg_stmt_t s, const char *param)
{
    const char *values[1] = {param};
    int rc = crm_pg_unit_add(u, s, param != NULL ? 1 : 0, param != NULL ? values : NULL, NULL);
    CHECK(rc >= 0, "crm_pg_unit_add: %s", crm_err_name(rc));
}

static crm_pg_unit_t *unit_one(crm_pg_pool_t *p, unsigned flags, crm_pg_stmt_t s, const char *param)
{
    crm_pg_unit_t *u = crm_pg_unit_new(p, flags);
    CHECK(u != NULL, "crm_pg_unit_new");
    unit_append(u, s, param);
    return u;
}

/* What a unit's callback saw. */
typedef struct {
    int calls;
    int err;
    uint64_t submit_ns, done_ns;
    char sqlstate[6];
    int error_index;
    int has_value, is_null;
    char value[128];
    char value0[128]; /* the first statement's, when the unit has several */
    unsigned seq;     /* completion order across the scenario */
    long expect;      /* scenario 1: the value the unit must get back */
} rec_t;

static unsigned g_seq;

static void on_rec(crm_pg_unit_t *u, int err, void *data)
{
    rec_t *r = data;
    ++r->calls;
    r->err = err;
    r->done_ns = uv_hrtime();
    r->seq = ++g_seq;
    const char *ss = crm_pg_unit_sqlstate(u);
    snprintf(r->sqlstate, sizeof(r->sqlstate), "%s", ss != NULL ? ss : "");
    r->error_index = crm_pg_unit_error_index(u);
    if (err != 0)
        return;
    /* The value of the last statement's first row and column. */
    PGresult *res = crm_pg_unit_result(u, crm_pg_unit_count(u) - 1);
    if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) >= 1 && PQnfields(res) >= 1) {
        r->has_value = 1;
        r->is_null = PQgetisnull(res, 0, 0);
        snprintf(r->value, sizeof(r->value), "%s", PQgetvalue(res, 0, 0));
    }
    res = crm_pg_unit_result(u, 0);
    if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) >= 1 && PQnfields(res) >= 1)
        snprintf(r->value0, sizeof(r->value0), "%s", PQgetvalue(res, 0, 0));
}

static void submit_ok(crm_pg_unit_t *u, rec_t *r)
{
    r->submit_ns = uv_hrtime();
    int rc = crm_pg_unit_submit(u, on_rec, r);
    CHECK(rc == 0, "crm_pg_unit_submit: %s", crm_err_name(rc));
}

static double rec_ms(const rec_t *r)
{
    return ms_between(r->submit_ns, r->done_ns);
}

/* Runs one single-statement unit to completion and returns its record (err checked by the caller). */
static rec_t run_unit(env_t *e, crm_pg_pool_t *p, unsigned flags, crm_pg_stmt_t s, const char *param)
{
    rec_t r;
    memset(&r, 0, sizeof(r));
    submit_ok(unit_one(p, flags, s, param), &r);
    RUN_UNTIL(e, r.calls > 0, 10000);
    CHECK(r.calls == 1, "callback ran %d times", r.calls);
    return r;
}

/* A statement_timeout as PostgreSQL shows it, in its largest exact unit ("5s", "4999ms"), in ms; -1 if neither. */
static long setting_ms(const char *v)
{
    char *end = NULL;
    long n = strtol(v, &end, 10);
    if (end == v)
        return -1;
    if (strcmp(end, "s") == 0)
        return n * 1000;
    return strcmp(end, "ms") == 0 ? n : -1;
}

static long backend_pid(env_t *e, crm_pg_pool_t *p, const stmts_t *s)
{
    rec_t r = run_unit(e, p, 0, s->pid, NULL);
    CHECK(r.err == 0 && r.has_value, "SELECT pg_backend_pid() failed: %s", crm_err_name(r.err));
    return strtol(r.value, NULL, 10);
}

/* ---- 1. many concurrent units, no cross-wiring ---- */

#define S1_UNITS  2000
#define S1_CHAINS 64
#define S1_LINKS  16

typedef struct {
    crm_pg_pool_t *pool;
    crm_pg_stmt_t stmt;
    int id, done, bad;
    int in_callback; /* set while this chain's callback runs: the next link's callback must not run inside it */
} chain_t;

static void chain_next(chain_t *c);

static void on_chain(crm_pg_unit_t *u, int err, void *data)
{
    chain_t *c = data;
    CHECK(!c->in_callback, "chain %d: a callback ran from inside crm_pg_unit_submit", c->id);
    PGresult *r = crm_pg_unit_result(u, 0);
    long want = 2L * (c->id * 1000 + c->done);
    if (err != 0 || r == NULL || PQntuples(r) != 1 || strtol(PQgetvalue(r, 0, 0), NULL, 10) != want)
        ++c->bad;
    ++c->done;
    c->in_callback = 1;
    if (c->done < S1_LINKS)
        chain_next(c);
    c->in_callback = 0;
}

static void chain_next(chain_t *c)
{
    char v[24];
    snprintf(v, sizeof(v), "%d", c->id * 1000 + c->done);
    crm_pg_unit_t *u = unit_one(c->pool, 0, c->stmt, v);
    int rc = crm_pg_unit_submit(u, on_chain, c);
    CHECK(rc == 0, "chain %d: submit %s", c->id, crm_err_name(rc));
}

static void scenario_concurrency(void)
{
    env_t e;
    env_init(&e, "1 concurrency");
    stmts_t s;
    crm_pg_config_t cfg;
    config(&cfg, 4, 128, 4096);
    /* Generous, so that a slow sanitizer build measures throughput rather than failing on the queue wait. */
    cfg.queue_timeout_ms = 10000;
    crm_pg_pool_t *p = pool_new(&e, &cfg, &s, 0);
    pool_start_ready(&e, p, 4);

    static rec_t recs[S1_UNITS];
    memset(recs, 0, sizeof(recs));
    uv_update_time(&e.loop);
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < S1_UNITS; ++i) {
        char v[24];
        /* Distinct values, negative and positive, so that a misrouted answer cannot match by accident. */
        recs[i].expect = (long)(i - S1_UNITS / 2) * 7919;
        snprintf(v, sizeof(v), "%ld", recs[i].expect);
        submit_ok(unit_one(p, 0, s.dbl, v), &recs[i]);
    }
    size_t peak_in_flight = 0;
    while (stats(p).completed < S1_UNITS) {
        CHECK(ms_since(t0) < 60000, "only %llu of %d units completed after 60 s",
              (unsigned long long)stats(p).completed, S1_UNITS);
        uv_run(&e.loop, UV_RUN_ONCE);
        size_t inf = stats(p).in_flight;
        if (inf > peak_in_flight)
            peak_in_flight = inf;
    }
    double elapsed = ms_since(t0);
    double max_ms = 0;
    for (int i = 0; i < S1_UNITS; ++i) {
        rec_t *r = &recs[i];
        CHECK(r->calls == 1, "unit %d: callback ran %d times", i, r->calls);
        CHECK(r->err == 0, "unit %d: err %s (sqlstate %s)", i, crm_err_name(r->err), r->sqlstate);
        CHECK(r->has_value && !r->is_null, "unit %d: no value", i);
        long got = strtol(r->value, NULL, 10);
        CHECK(got == 2 * r->expect, "unit %d: sent %ld, got %ld instead of %ld (answers cross-wired)", i, r->expect,
              got, 2 * r->expect);
        if (rec_ms(r) > max_ms)
            max_ms = rec_ms(r);
    }
    crm_pg_stats_t st = stats(p);
    CHECK(st.submitted == S1_UNITS && st.completed == S1_UNITS, "submitted %llu completed %llu, expected %d each",
          (unsigned long long)st.submitted, (unsigned long long)st.completed, S1_UNITS);
    CHECK(st.conn_failures == 0 && st.sql_errors == 0 && st.queue_timeouts == 0,
          "conn_failures %llu sql_errors %llu queue_timeouts %llu", (unsigned long long)st.conn_failures,
          (unsigned long long)st.sql_errors, (unsigned long long)st.queue_timeouts);
    CHECK(peak_in_flight > 4, "peak in-flight %zu: units were not pipelined", peak_in_flight);
    printf("figure: %d units in %.1f ms (%.0f units/s), slowest unit %.1f ms, peak in flight %zu\n", S1_UNITS, elapsed,
           S1_UNITS / (elapsed / 1000.0), max_ms, peak_in_flight);

    /* Units submitted from callbacks: 64 chains of 16 units, each link submitted by the previous one's callback. */
    static chain_t chains[S1_CHAINS];
    memset(chains, 0, sizeof(chains));
    t0 = uv_hrtime();
    for (int i = 0; i < S1_CHAINS; ++i) {
        chains[i].pool = p;
        chains[i].stmt = s.dbl;
        chains[i].id = i;
        chain_next(&chains[i]);
    }
    RUN_UNTIL(&e, stats(p).completed == S1_UNITS + S1_CHAINS * S1_LINKS, 30000);
    for (int i = 0; i < S1_CHAINS; ++i)
        CHECK(chains[i].done == S1_LINKS && chains[i].bad == 0, "chain %d: %d links done, %d wrong", i, chains[i].done,
              chains[i].bad);
    printf("figure: %d chains of %d units submitted from callbacks done in %.1f ms\n", S1_CHAINS, S1_LINKS,
           ms_since(t0));
    pool_close(&e, p);
    env_close(&e);
}

/* ---- 2. queue overflow ---- */

static void on_never(crm_pg_unit_t *u, int err, void *data)
{
    ++*(int *)data;
}

/* Submits pg_sleep(0.2) units until one is refused and returns how many were accepted. The refused unit was
 * submitted with recs[returned index] as its callback data too: that record must never see a call. */
static int fill_until_refused(crm_pg_pool_t *p, const stmts_t *s, rec_t *recs, int max)
{
    for (int i = 0; i < max; ++i) {
        crm_pg_unit_t *u = unit_one(p, 0, s->sleep, "0.2");
        uint64_t t0 = uv_hrtime();
        int rc = crm_pg_unit_submit(u, on_rec, &recs[i]);
        double dt = ms_since(t0);
        if (rc == 0) {
            recs[i].submit_ns = t0;
            continue;
        }
        CHECK(rc == CRM_E_QUEUE_FULL, "refusal was %s, expected queue_full", crm_err_name(rc));
        CHECK(dt < 1.0, "the refusal took %.3f ms (must be < 1 ms)", dt);
        CHECK(recs[i].calls == 0, "the refused unit's callback ran inside submit");
        printf("figure: refusal after %d accepted took %.1f us\n", i, dt * 1000.0);
        /* The caller still owns a refused unit. */
        crm_pg_unit_free(u);
        return i;
    }
    crm_test_fail(__FILE__, __LINE__, "refused", "%d submits were all accepted", max);
}

static void scenario_queue_full(void)
{
    env_t e;
    env_init(&e, "2 queue overflow");
    stmts_t s;
    crm_pg_config_t cfg;
    config(&cfg, 1, 1, 3);
    /* Four 200 ms units run one after another; the last waits 600 ms, well within this. */
    cfg.queue_timeout_ms = 5000;
    crm_pg_pool_t *p = pool_new(&e, &cfg, &s, 0);
    pool_start_ready(&e, p, 1);

    /* (a) The first unit is already on the connection when the rest arrive: 1 in flight + 3 queued. */
    rec_t a[8];
    memset(a, 0, sizeof(a));
    submit_ok(unit_one(p, 0, s.sleep, "0.2"), &a[0]);
    RUN_UNTIL(&e, stats(p).in_flight == 1, 2000);
    int accepted = 1 + fill_until_refused(p, &s, a + 1, 7);
    CHECK(accepted == 4, "%d units accepted, expected 1 (depth) + 3 (queue_max)", accepted);
    CHECK(stats(p).queued == 3, "queued %zu, expected 3", stats(p).queued);
    RUN_UNTIL(&e, stats(p).completed == 4, 5000);
    for (int i = 0; i < 4; ++i)
        CHECK(a[i].calls == 1 && a[i].err == 0, "(a) unit %d: calls %d err %s", i, a[i].calls, crm_err_name(a[i].err));
    printf("figure: (a) 4 sequential pg_sleep(0.2) units done in %.0f ms\n", ms_between(a[0].submit_ns, a[3].done_ns));

    /* (b) A burst submitted at once, before the loop dispatches anything: the free pipeline slot plus the queue. */
    rec_t b[8];
    memset(b, 0, sizeof(b));
    accepted = fill_until_refused(p, &s, b, 8);
    CHECK(accepted == 4, "%d units accepted in a burst, expected 1 (free slot) + 3 (queue_max)", accepted);
    RUN_UNTIL(&e, stats(p).completed == 8, 5000);
    for (int i = 0; i < 4; ++i)
        CHECK(b[i].calls == 1 && b[i].err == 0, "(b) unit %d: calls %d err %s", i, b[i].calls, crm_err_name(b[i].err));
    run_for(&e, 50);
    CHECK(a[4].calls == 0 && b[4].calls == 0, "the callback of a refused unit ran (%d, %d times)", a[4].calls,
          b[4].calls);
    crm_pg_stats_t st = stats(p);
    CHECK(st.submitted == 8 && st.rejected_queue_full == 2, "submitted %llu rejected_queue_full %llu",
          (unsigned long long)st.submitted, (unsigned long long)st.rejected_queue_full);
    pool_close(&e, p);
    env_close(&e);
}

/* ---- 3. queue timeout ---- */

static void scenario_queue_timeout(void)
{
    env_t e;
    env_init(&e, "3 queue timeout");
    stmts_t s;
    crm_pg_config_t cfg;
    config(&cfg, 1, 1, 10);
    cfg.queue_timeout_ms = 200;
    crm_pg_pool_t *p = pool_new(&e, &cfg, &s, 0);
    pool_start_ready(&e, p, 1);
    rec_t slow, waiting;
    memset(&slow, 0, sizeof(slow));
    memset(&waiting, 0, sizeof(waiting));
    uv_update_time(&e.loop);
    submit_ok(unit_one(p, 0, s.sleep, "1"), &slow);
    submit_ok(unit_one(p, 0, s.dbl, "21"), &waiting);
    RUN_UNTIL(&e, waiting.calls > 0, 3000);
    CHECK(waiting.err == CRM_E_QUEUE_TIMEOUT, "the waiting unit completed %s", crm_err_name(waiting.err));
    double w = rec_ms(&waiting);
    CHECK(w >= 150 && w <= 600, "queue timeout after %.1f ms, expected 150..600", w);
    CHECK(slow.calls == 0, "the 1 s unit finished before the queue timeout");
    RUN_UNTIL(&e, slow.calls > 0, 5000);
    CHECK(slow.err == 0, "pg_sleep(1) completed %s", crm_err_name(slow.err));
    CHECK(waiting.calls == 1, "the timed-out unit's callback ran %d times", waiting.calls);
    crm_pg_stats_t st = stats(p);
    CHECK(st.queue_timeouts == 1 && st.completed == 2, "queue_timeouts %llu completed %llu",
          (unsigned long long)st.queue_timeouts, (unsigned long long)st.completed);
    printf("figure: queue timeout after %.1f ms; pg_sleep(1) unit %.1f ms\n", w, rec_ms(&slow));
    pool_close(&e, p);
    env_close(&e);
}

/* ---- 4. server-side deadline ---- */

static void scenario_server_deadline(void)
{
    env_t e;
    env_init(&e, "4 server-side deadline");
    stmts_t s;
    crm_pg_config_t cfg;
    config(&cfg, 1, 128, 64);
    cfg.statement_timeout_ms = 5000;
    crm_pg_pool_t *p = pool_new(&e, &cfg, &s, 0);
    pool_start_ready(&e, p, 1);
    long pid1 = backend_pid(&e, p, &s);
    crm_pg_stats_t s0 = stats(p);

    /* Plain units end in an implicit transaction, CRM_PG_TX ones in COMMIT after the Sync: both must get the
     * shortened statement_timeout, and both must leave the connection usable for the unit pipelined behind. */
    static const unsigned shapes[] = {0, CRM_PG_TX};
    double ms[2];
    for (size_t k = 0; k < 2; ++k) {
        rec_t r, behind;
        memset(&r, 0, sizeof(r));
        memset(&behind, 0, sizeof(behind));
        crm_pg_unit_t *u = unit_one(p, shapes[k], s.sleep, "3");
        uv_update_time(&e.loop);
        crm_pg_unit_set_deadline(u, uv_now(&e.loop) + 300);
        submit_ok(u, &r);
        submit_ok(unit_one(p, 0, s.dbl, "21"), &behind);
        RUN_UNTIL(&e, r.calls > 0 && behind.calls > 0, 5000);
        ms[k] = rec_ms(&r);
        CHECK(r.err == CRM_E_DEADLINE, "%s pg_sleep(3) with a 300 ms deadline completed %s", k ? "tx" : "plain",
              crm_err_name(r.err));
        CHECK(strcmp(r.sqlstate, "57014") == 0, "sqlstate '%s', expected 57014 (server statement_timeout)", r.sqlstate);
        CHECK(r.error_index == 0, "error index %d, expected 0", r.error_index);
        CHECK(ms[k] >= 280 && ms[k] < 1000, "deadline answered after %.1f ms, expected ~300 (< 1000)", ms[k]);
        CHECK(behind.err == 0 && strcmp(behind.value, "42") == 0, "the unit pipelined behind: err %s value '%s'",
              crm_err_name(behind.err), behind.value);
        CHECK(r.seq < behind.seq, "answers out of order");
    }
    crm_pg_stats_t s1 = stats(p);
    CHECK(s1.conn_failures == s0.conn_failures, "conn_failures %llu -> %llu: the connection was recycled",
          (unsigned long long)s0.conn_failures, (unsigned long long)s1.conn_failures);
    CHECK(s1.deadline_expiries == s0.deadline_expiries + 2, "deadline_expiries %llu -> %llu",
          (unsigned long long)s0.deadline_expiries, (unsigned long long)s1.deadline_expiries);

    /* A short deadline behind a long unit in the same pipeline: the server has not started the short one when its
     * deadline passes, because it is busy, within its deadline, with the long one. The caller is answered
     * CRM_E_DEADLINE by the backstop, but the connection is not stuck: the long unit must complete normally and
     * the connection must stay. */
    rec_t lng, shrt;
    memset(&lng, 0, sizeof(lng));
    memset(&shrt, 0, sizeof(shrt));
    submit_ok(unit_one(p, 0, s.sleep, "1"), &lng);
    crm_pg_unit_t *su = unit_one(p, CRM_PG_READ_ONLY, s.dbl, "8");
    uv_update_time(&e.loop);
    crm_pg_unit_set_deadline(su, uv_now(&e.loop) + 300);
    submit_ok(su, &shrt);
    RUN_UNTIL(&e, lng.calls > 0 && shrt.calls > 0, 5000);
    double shrt_ms = rec_ms(&shrt);
    CHECK(shrt.err == CRM_E_DEADLINE, "the short unit behind a 1 s one completed %s", crm_err_name(shrt.err));
    CHECK(shrt_ms >= 295 && shrt_ms <= 300 + cfg.backstop_grace_ms + 100,
          "the short unit was answered after %.1f ms, expected by its deadline + grace", shrt_ms);
    CHECK(lng.err == 0, "the 1 s unit ahead of it completed %s: an innocent unit was failed", crm_err_name(lng.err));
    CHECK(stats(p).conn_failures == s0.conn_failures, "the busy (not stuck) connection was recycled");
    run_for(&e, 20);
    CHECK(stats(p).in_flight == 0 && stats(p).completed == stats(p).submitted, "in flight %zu, completed %llu of %llu",
          stats(p).in_flight, (unsigned long long)stats(p).completed, (unsigned long long)stats(p).submitted);
    CHECK(shrt.calls == 1, "the short unit was called back %d times", shrt.calls);
    printf("figure: a 300 ms unit behind a 1 s one answered deadline after %.1f ms; the 1 s unit ok after %.1f ms\n",
           shrt_ms, rec_ms(&lng));

    /* The shortened timeout was transaction-local: the connection's default is back, and a unit without a deadline
     * of its own may run longer than the 300 ms of the units above. */
    /* (The unit reading it may itself carry its remaining time, a few ms under the 5 s default, if it was sent in
     * a later loop iteration than it was submitted in.) */
    rec_t st = run_unit(&e, p, 0, s.timeout, NULL);
    CHECK(st.err == 0 && setting_ms(st.value) > 4500 && setting_ms(st.value) <= 5000,
          "statement_timeout after the deadline units: '%s', expected the 5 s default", st.value);
    rec_t longer = run_unit(&e, p, 0, s.sleep, "0.5");
    CHECK(longer.err == 0, "pg_sleep(0.5) without a deadline completed %s (sqlstate %s)", crm_err_name(longer.err),
          longer.sqlstate);
    long pid2 = backend_pid(&e, p, &s);
    CHECK(pid2 == pid1, "backend pid %ld -> %ld: not the same connection", pid1, pid2);
    CHECK(stats(p).conn_failures == s0.conn_failures, "conn_failures changed");
    printf("figure: server-side deadline answered in %.1f ms (plain) and %.1f ms (tx), sqlstate 57014; same backend "
           "%ld serves on\n",
           ms[0], ms[1], pid1);
    pool_close(&e, p);
    env_close(&e);
}

/* ---- 5. client-side backstop ---- */

static void scenario_backstop(void)
{
    env_t e;
    env_init(&e, "5 client backstop");
    stmts_t s;
    crm_pg_config_t cfg;
    config(&cfg, 1, 128, 64);
    crm_pg_pool_t *p = pool_new(&e, &cfg, &s, 0);
    pool_start_ready(&e, p, 1);
    long pid = backend_pid(&e, p, &s);
    crm_pg_stats_t s0 = stats(p);

    g_stopped_backend = (pid_t)pid;
    CHECK(kill((pid_t)pid, SIGSTOP) == 0, "kill(%ld, SIGSTOP): %s", pid, strerror(errno));
    rec_t r;
    memset(&r, 0, sizeof(r));
    crm_pg_unit_t *u = unit_one(p, 0, s.dbl, "21");
    uv_update_time(&e.loop);
    crm_pg_unit_set_deadline(u, uv_now(&e.loop) + 300);
    submit_ok(u, &r);
    /* Pipelined behind it on the same stuck connection: a read-only unit, which the pool must re-run on the new
     * connection, and a writing one, whose outcome is unknown once the connection is dropped. */
    rec_t ro, wr;
    memset(&ro, 0, sizeof(ro));
    memset(&wr, 0, sizeof(wr));
    submit_ok(unit_one(p, CRM_PG_READ_ONLY, s.dbl, "5"), &ro);
    submit_ok(unit_one(p, 0, s.dbl, "6"), &wr);
    RUN_UNTIL(&e, stats(p).in_flight == 3 || r.calls > 0, 2000);
    CHECK(stats(p).in_flight == 3, "in flight %zu, expected 3 units on the stopped backend", stats(p).in_flight);
    RUN_UNTIL(&e, r.calls > 0, 5000);
    double ms = rec_ms(&r);
    double expect = 300.0 + (double)cfg.backstop_grace_ms;
    CHECK(r.err == CRM_E_DEADLINE, "unit on a stopped backend completed %s", crm_err_name(r.err));
    CHECK(r.sqlstate[0] == '\0', "sqlstate '%s': the answer came from the server, not the backstop", r.sqlstate);
    CHECK(ms >= expect - 5 && ms <= expect + 300, "backstop after %.1f ms, expected ~%.0f (deadline + grace)", ms,
          expect);
    crm_pg_stats_t s1 = stats(p);
    CHECK(s1.conn_failures == s0.conn_failures + 1, "conn_failures %llu -> %llu: the connection was not recycled",
          (unsigned long long)s0.conn_failures, (unsigned long long)s1.conn_failures);
    uint64_t t0 = uv_hrtime();
    RUN_UNTIL(&e, stats(p).conns[CRM_PG_CONN_READY] == 1 && stats(p).reconnects > s0.reconnects, 5000);
    double reconnect_ms = ms_since(t0);
    RUN_UNTIL(&e, ro.calls > 0 && wr.calls > 0, 5000);
    CHECK(wr.err == CRM_E_UNAVAILABLE, "the writing unit behind the stuck one completed %s, expected unavailable",
          crm_err_name(wr.err));
    CHECK(ro.err == 0 && strcmp(ro.value, "10") == 0,
          "the read-only unit behind the stuck one completed %s (value '%s'); it must be re-run on the new connection",
          crm_err_name(ro.err), ro.value);
    CHECK(stats(p).requeued == s0.requeued + 1, "requeued %llu", (unsigned long long)stats(p).requeued);

    rec_t after = run_unit(&e, p, 0, s.dbl, "21");
    CHECK(after.err == 0 && strcmp(after.value, "42") == 0, "the next unit: err %s value '%s'", crm_err_name(after.err),
          after.value);
    long pid2 = backend_pid(&e, p, &s);
    CHECK(pid2 != pid, "still on the stopped backend %ld", pid);

    /* Let the stopped backend go: terminate it, then resume it so that it can act on the signal. */
    kill((pid_t)pid, SIGTERM);
    kill((pid_t)pid, SIGCONT);
    g_stopped_backend = 0;
    uint64_t t1 = uv_hrtime();
    while (kill((pid_t)pid, 0) == 0) {
        CHECK(ms_since(t1) < 10000, "backend %ld still alive 10 s after SIGTERM+SIGCONT", pid);
        run_for(&e, 10);
    }
    printf("figure: backstop answered in %.1f ms (deadline 300 + grace %llu), new connection ready %.1f ms later, "
           "old backend %ld -> new %ld\n",
           ms, (unsigned long long)cfg.backstop_grace_ms, reconnect_ms, pid, pid2);
    pool_close(&e, p);
    env_close(&e);
}

/* ---- 6. isolation in one pipeline; transaction-local tenant ---- */

static void scenario_isolation(void)
{
    env_t e;
    env_init(&e, "6 isolation in one pipeline");
    CHECK(crm_pg_cluster_psql(
              "SET client_min_messages = warning; DROP TABLE IF EXISTS t; CREATE TABLE t (x int PRIMARY KEY)") == 0,
          "psql: CREATE TABLE t failed");
    stmts_t s;
    crm_pg_config_t cfg;
    config(&cfg, 1, 128, 64);
    crm_pg_pool_t *p = pool_new(&e, &cfg, &s, WITH_TABLE);
    pool_start_ready(&e, p, 1);

    rec_t a, b, c, d;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&c, 0, sizeof(c));
    memset(&d, 0, sizeof(d));
    crm_pg_unit_t *ua = unit_one(p, CRM_PG_TX, s.ins, "1");
    unit_append(ua, s.ins, "1");
    crm_pg_unit_t *ub = unit_one(p, CRM_PG_TX, s.ins, "2");
    crm_pg_unit_t *uc = unit_one(p, 0, s.ins, "3");
    unit_append(uc, s.div, "0");
    crm_pg_unit_t *ud = unit_one(p, 0, s.ins, "4");
    submit_ok(ua, &a);
    submit_ok(ub, &b);
    submit_ok(uc, &c);
    submit_ok(ud, &d);
    /* All four must be on the wire together: that is the point of the scenario. */
    RUN_UNTIL(&e, stats(p).in_flight == 4 || stats(p).completed > 0, 2000);
    CHECK(stats(p).in_flight == 4, "in flight %zu, expected all 4 units pipelined", stats(p).in_flight);
    RUN_UNTIL(&e, a.calls && b.calls && c.calls && d.calls, 5000);
    CHECK(a.err == CRM_E_DB && strcmp(a.sqlstate, "23505") == 0 && a.error_index == 1,
          "A: err %s sqlstate '%s' index %d, expected db 23505 at 1", crm_err_name(a.err), a.sqlstate, a.error_index);
    CHECK(b.err == 0, "B: err %s sqlstate '%s'", crm_err_name(b.err), b.sqlstate);
    CHECK(c.err == CRM_E_DB && strcmp(c.sqlstate, "22012") == 0 && c.error_index == 1,
          "C: err %s sqlstate '%s' index %d, expected db 22012 at 1", crm_err_name(c.err), c.sqlstate, c.error_index);
    CHECK(d.err == 0, "D: err %s sqlstate '%s'", crm_err_name(d.err), d.sqlstate);
    CHECK(a.seq < b.seq && b.seq < c.seq && c.seq < d.seq, "completion order %u %u %u %u", a.seq, b.seq, c.seq, d.seq);
    rec_t l = run_unit(&e, p, 0, s.list, NULL);
    CHECK(l.err == 0 && strcmp(l.value, "2,4") == 0, "table t holds {%s}, expected {2,4}", l.value);
    CHECK(stats(p).conn_failures == 0, "the connection failed");

    /* Tenant: set for its own unit only (plain and CRM_PG_TX), gone for the next unit on the same connection. */
    static const char *const t1 = "7d9f6f3e-2b1c-4a5e-9d3f-0123456789ab";
    static const char *const t2 = "0f0e0d0c-0b0a-4909-8807-060504030201";
    rec_t n0, r1, n1, r2, n2;
    memset(&n0, 0, sizeof(n0));
    memset(&r1, 0, sizeof(r1));
    memset(&n1, 0, sizeof(n1));
    memset(&r2, 0, sizeof(r2));
    memset(&n2, 0, sizeof(n2));
    crm_pg_unit_t *u1 = unit_one(p, 0, s.setting, NULL);
    CHECK(crm_pg_unit_set_tenant(u1, t1) == 0, "set_tenant");
    crm_pg_unit_t *u2 = unit_one(p, CRM_PG_TX, s.setting, NULL);
    CHECK(crm_pg_unit_set_tenant(u2, t2) == 0, "set_tenant");
    submit_ok(unit_one(p, 0, s.setting, NULL), &n0);
    submit_ok(u1, &r1);
    submit_ok(unit_one(p, 0, s.setting, NULL), &n1);
    submit_ok(u2, &r2);
    submit_ok(unit_one(p, CRM_PG_TX, s.setting, NULL), &n2);
    RUN_UNTIL(&e, n0.calls && r1.calls && n1.calls && r2.calls && n2.calls, 5000);
    rec_t *unset[] = {&n0, &n1, &n2};
    for (size_t i = 0; i < 3; ++i)
        CHECK(unset[i]->err == 0 && unset[i]->has_value && (unset[i]->is_null || unset[i]->value[0] == '\0'),
              "untenanted unit %zu: err %s, app.tenant_id '%s' (must be unset)", i, crm_err_name(unset[i]->err),
              unset[i]->value);
    CHECK(r1.err == 0 && strcmp(r1.value, t1) == 0, "plain tenant unit: err %s, app.tenant_id '%s'",
          crm_err_name(r1.err), r1.value);
    CHECK(r2.err == 0 && strcmp(r2.value, t2) == 0, "CRM_PG_TX tenant unit: err %s, app.tenant_id '%s'",
          crm_err_name(r2.err), r2.value);
    /* Tenant and a deadline shorter than the default statement_timeout travel in one setup statement. */
    rec_t both;
    memset(&both, 0, sizeof(both));
    crm_pg_unit_t *u3 = unit_one(p, 0, s.timeout, NULL);
    unit_append(u3, s.setting, NULL);
    CHECK(crm_pg_unit_set_tenant(u3, t1) == 0, "set_tenant");
    uv_update_time(&e.loop);
    crm_pg_unit_set_deadline(u3, uv_now(&e.loop) + 2000);
    submit_ok(u3, &both);
    RUN_UNTIL(&e, both.calls > 0, 5000);
    long tmo = setting_ms(both.value0);
    CHECK(both.err == 0 && strcmp(both.value, t1) == 0, "tenant + deadline unit: err %s, app.tenant_id '%s'",
          crm_err_name(both.err), both.value);
    CHECK(tmo > 1500 && tmo <= 2000, "statement_timeout inside a unit with a 2000 ms deadline: '%s'", both.value0);
    rec_t n3 = run_unit(&e, p, 0, s.setting, NULL);
    CHECK(n3.err == 0 && (n3.is_null || n3.value[0] == '\0'), "app.tenant_id leaked into the next unit: '%s'",
          n3.value);
    CHECK(stats(p).conns[CRM_PG_CONN_READY] == 1 && stats(p).conn_failures == 0, "one connection served everything");
    printf("figure: A=%s/%s@%d B=ok C=%s/%s@%d D=ok, t={2,4}; tenant after tenant unit: %s\n", crm_err_name(a.err),
           a.sqlstate, a.error_index, crm_err_name(c.err), c.sqlstate, c.error_index, n1.is_null ? "NULL" : "''");
    pool_close(&e, p);
    CHECK(crm_pg_cluster_psql("DROP TABLE t") == 0, "psql: DROP TABLE t failed");
    env_close(&e);
}

/* ---- 7. database down and back ---- */

#define NKINDS 32

typedef struct {
    uv_work_t req;
    const char *cmd, *arg;
    int rc, done;
    uint64_t start_ns, end_ns;
} pg_job_t;

static void job_work(uv_work_t *req)
{
    pg_job_t *j = req->data;
    j->rc = crm_pg_cluster_pgsh(j->cmd, j->arg);
}

static void job_after(uv_work_t *req, int status)
{
    pg_job_t *j = req->data;
    j->end_ns = uv_hrtime();
    j->done = 1;
}

/* Runs pg.sh on the thread pool, so that the loop keeps serving (and failing) units while PostgreSQL stops or
 * starts; returns once pg.sh has finished. */
static void pg_job(env_t *e, pg_job_t *j, const char *cmd, const char *arg)
{
    memset(j, 0, sizeof(*j));
    j->cmd = cmd;
    j->arg = arg;
    j->req.data = j;
    j->start_ns = uv_hrtime();
    CHECK(uv_queue_work(&e->loop, &j->req, job_work, job_after) == 0, "uv_queue_work");
    RUN_UNTIL(e, j->done, 90000);
    CHECK(j->rc == 0, "pg.sh %s failed: %d", cmd, j->rc);
}

enum { PH_HEALTHY = 0, PH_DOWN, PH_RESTARTING, PH_RECOVERED, NPHASES };

typedef struct {
    crm_pg_pool_t *pool;
    const stmts_t *stmts;
    uv_timer_t timer;
    int phase;
    int submitting;
    uint64_t n, outstanding;
    /* Outcomes by phase at completion and kind (index -err); refusals by phase and kind. */
    uint64_t done[NPHASES][NKINDS], refused[NPHASES][NKINDS];
    uint64_t db_states[4]; /* CRM_E_DB after the stop: 57P01, 57P02, 57P03, other */
    uint64_t max_latency_ns, max_refusal_ns;
    uint64_t accepted_while_open, refused_while_open;
    uint64_t open_seen_ns, last_success_ns;
    uint64_t recovered_failures; /* units submitted once recovered that did not succeed */
    char first_bad[160];
} load_t;

typedef struct {
    load_t *load;
    uint64_t submit_ns;
    int phase;
} load_unit_t;

static int err_index(int err)
{
    return -err >= 0 && -err < NKINDS ? -err : NKINDS - 1;
}

static void on_load_unit(crm_pg_unit_t *u, int err, void *data)
{
    load_unit_t *lu = data;
    load_t *l = lu->load;
    uint64_t now = uv_hrtime();
    uint64_t lat = now - lu->submit_ns;
    if (lat > l->max_latency_ns)
        l->max_latency_ns = lat;
    ++l->done[l->phase][err_index(err)];
    --l->outstanding;
    if (err == 0)
        l->last_success_ns = now;
    int ok;
    if (l->phase == PH_HEALTHY) {
        ok = err == 0;
    } else {
        ok = err == 0 || err == CRM_E_UNAVAILABLE || err == CRM_E_QUEUE_TIMEOUT;
        if (err == CRM_E_DB) {
            /* A unit in flight when the server shuts down gets the server's own answer, an SQL error in class 57
             * (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now). */
            const char *ss = crm_pg_unit_sqlstate(u);
            ss = ss != NULL ? ss : "";
            int i = strcmp(ss, "57P01") == 0 ? 0 : strcmp(ss, "57P02") == 0 ? 1 : strcmp(ss, "57P03") == 0 ? 2 : 3;
            ++l->db_states[i];
            ok = i < 3;
        }
    }
    if (lu->phase == PH_RECOVERED && err != 0)
        ++l->recovered_failures;
    if (!ok && l->first_bad[0] == '\0')
        snprintf(l->first_bad, sizeof(l->first_bad), "phase %d: completion %s (sqlstate %s)", l->phase,
                 crm_err_name(err), crm_pg_unit_sqlstate(u) != NULL ? crm_pg_unit_sqlstate(u) : "-");
    free(lu);
}

static void on_load_timer(uv_timer_t *t)
{
    load_t *l = t->data;
    if (!l->submitting)
        return;
    crm_breaker_t *b = crm_pg_pool_breaker(l->pool);
    int open = crm_breaker_state(b) == CRM_BREAKER_OPEN;
    if (open && l->open_seen_ns == 0)
        l->open_seen_ns = uv_hrtime();
    /* Read-only and writing units alternate: when a connection is lost, the former may be re-run elsewhere, the
     * latter must be answered. */
    crm_pg_unit_t *u = unit_one(l->pool, (l->n++ & 1) ? CRM_PG_READ_ONLY : 0, l->stmts->one, NULL);
    load_unit_t *lu = malloc(sizeof(*lu));
    CHECK(lu != NULL, "malloc");
    lu->load = l;
    lu->phase = l->phase;
    lu->submit_ns = uv_hrtime();
    int rc = crm_pg_unit_submit(u, on_load_unit, lu);
    uint64_t dt = uv_hrtime() - lu->submit_ns;
    if (rc == 0) {
        ++l->outstanding;
        if (open)
            ++l->accepted_while_open;
        return;
    }
    if (dt > l->max_refusal_ns)
        l->max_refusal_ns = dt;
    ++l->refused[l->phase][err_index(rc)];
    if (open)
        ++l->refused_while_open;
    /* Refusals are expected only while the database is down or coming back, and only for those two reasons;
     * a full queue would mean units piled up instead of failing fast. */
    int ok =
        (l->phase == PH_DOWN || l->phase == PH_RESTARTING) && (rc == CRM_E_UNAVAILABLE || rc == CRM_E_BREAKER_OPEN);
    if (!ok && l->first_bad[0] == '\0')
        snprintf(l->first_bad, sizeof(l->first_bad), "phase %d: refusal %s (breaker %s)", l->phase, crm_err_name(rc),
                 open ? "open" : "not open");
    crm_pg_unit_free(u);
    free(lu);
}

static void print_kinds(const char *what, const uint64_t *counts)
{
    printf("figure:   %s:", what);
    for (int k = 0; k < NKINDS; ++k)
        if (counts[k] != 0)
            printf(" %s=%llu", crm_err_name(-k), (unsigned long long)counts[k]);
    printf("\n");
}

static void scenario_database_down(void)
{
    env_t e;
    env_init(&e, "7 database down");
    stmts_t s;
    crm_pg_config_t cfg;
    config(&cfg, 2, 128, 1024);
    cfg.breaker.window_size = 20;
    cfg.breaker.minimum_calls = 10;
    cfg.breaker.failure_rate_pct = 50;
    cfg.breaker.open_ms = 1000;
    cfg.reconnect_min_ms = 50;
    cfg.reconnect_max_ms = 500;
    crm_pg_pool_t *p = pool_new(&e, &cfg, &s, 0);
    pool_start_ready(&e, p, 2);
    crm_breaker_t *b = crm_pg_pool_breaker(p);

    static load_t l;
    memset(&l, 0, sizeof(l));
    l.pool = p;
    l.stmts = &s;
    l.submitting = 1;
    uv_timer_init(&e.loop, &l.timer);
    l.timer.data = &l;
    uv_timer_start(&l.timer, on_load_timer, 1, 1);

    run_for(&e, 300);
    uint64_t healthy_ok = l.done[PH_HEALTHY][0];
    CHECK(l.first_bad[0] == '\0', "%s", l.first_bad);
    CHECK(healthy_ok >= 50, "only %llu units succeeded in 300 ms of healthy load", (unsigned long long)healthy_ok);

    crm_pg_stats_t s0 = stats(p);
    l.phase = PH_DOWN;
    pg_job_t job;
    pg_job(&e, &job, "stop", "fast");
    double stop_ms = ms_between(job.start_ns, job.end_ns);
    RUN_UNTIL(&e, l.open_seen_ns != 0, 5000);
    double open_after_ms = ms_between(job.start_ns, l.open_seen_ns);
    /* Stay down for a while: the breaker goes OPEN -> HALF_OPEN -> OPEN as reconnect attempts keep failing. */
    run_for(&e, 2500);
    CHECK(l.first_bad[0] == '\0', "%s", l.first_bad);
    CHECK(l.accepted_while_open == 0, "%llu units were accepted while the breaker was open",
          (unsigned long long)l.accepted_while_open);
    CHECK(l.refused_while_open > 0, "no submit was refused while the breaker was open");
    CHECK(l.done[PH_DOWN][err_index(CRM_E_UNAVAILABLE)] + l.refused[PH_DOWN][err_index(CRM_E_UNAVAILABLE)] > 0,
          "nothing was answered unavailable while the database was down");
    CHECK(crm_pg_pool_is_serving(p) == 0, "the pool claims to serve with the database down");
    crm_pg_stats_t s1 = stats(p);
    CHECK(s1.conns[CRM_PG_CONN_READY] == 0, "%zu connections ready with the database down",
          s1.conns[CRM_PG_CONN_READY]);

    l.phase = PH_RESTARTING;
    pg_job(&e, &job, "start", NULL);
    uint64_t started_ns = job.end_ns;
    RUN_UNTIL(&e, l.last_success_ns > started_ns, 10000);
    double first_success_ms = ms_between(started_ns, l.last_success_ns);
    RUN_UNTIL(&e, crm_breaker_state(b) == CRM_BREAKER_CLOSED && stats(p).conns[CRM_PG_CONN_READY] == 2, 10000);
    double closed_ms = ms_between(started_ns, uv_hrtime());

    l.phase = PH_RECOVERED;
    run_for(&e, 300);
    l.submitting = 0;
    RUN_UNTIL(&e, l.outstanding == 0, 5000);
    CHECK(l.first_bad[0] == '\0', "%s", l.first_bad);
    CHECK(l.recovered_failures == 0, "%llu units failed after recovery", (unsigned long long)l.recovered_failures);
    CHECK(l.done[PH_RECOVERED][0] >= 50, "only %llu units succeeded after recovery",
          (unsigned long long)l.done[PH_RECOVERED][0]);
    double max_lat = (double)l.max_latency_ns / 1e6;
    CHECK(max_lat < 1500, "a unit took %.1f ms to complete (must be < 1500: nothing hangs)", max_lat);
    double max_ref = (double)l.max_refusal_ns / 1e6;
    CHECK(max_ref < 1.0, "a refusal took %.3f ms (must be synchronous, < 1 ms)", max_ref);
    crm_pg_stats_t s2 = stats(p);
    CHECK(s2.reconnects > s0.reconnects, "reconnects %llu", (unsigned long long)s2.reconnects);
    CHECK(b->transitions[CRM_BREAKER_OPEN] >= 1 && b->transitions[CRM_BREAKER_CLOSED] >= 1,
          "breaker transitions: open %llu closed %llu", (unsigned long long)b->transitions[CRM_BREAKER_OPEN],
          (unsigned long long)b->transitions[CRM_BREAKER_CLOSED]);
    CHECK(s2.submitted == s2.completed, "submitted %llu completed %llu", (unsigned long long)s2.submitted,
          (unsigned long long)s2.completed);

    printf("figure: pg.sh stop fast took %.0f ms; breaker OPEN %.0f ms after the stop began\n", stop_ms, open_after_ms);
    printf("figure: after start: first success %.0f ms, breaker CLOSED + 2 ready %.0f ms; max completion latency "
           "%.1f ms; max refusal %.3f ms\n",
           first_success_ms, closed_ms, max_lat, max_ref);
    printf("figure: breaker transitions open=%llu half_open=%llu closed=%llu; conn_failures=%llu reconnects=%llu; "
           "refused while open=%llu\n",
           (unsigned long long)b->transitions[CRM_BREAKER_OPEN],
           (unsigned long long)b->transitions[CRM_BREAKER_HALF_OPEN],
           (unsigned long long)b->transitions[CRM_BREAKER_CLOSED], (unsigned long long)s2.conn_failures,
           (unsigned long long)s2.reconnects, (unsigned long long)l.refused_while_open);
    static const char *const names[NPHASES] = {"healthy", "down", "restarting", "recovered"};
    for (int ph = 0; ph < NPHASES; ++ph) {
        char what[64];
        snprintf(what, sizeof(what), "%s completions", names[ph]);
        print_kinds(what, l.done[ph]);
        snprintf(what, sizeof(what), "%s refusals", names[ph]);
        print_kinds(what, l.refused[ph]);
    }
    printf("figure:   db errors after the stop: 57P01=%llu 57P02=%llu 57P03=%llu other=%llu\n",
           (unsigned long long)l.db_states[0], (unsigned long long)l.db_states[1], (unsigned long long)l.db_states[2],
           (unsigned long long)l.db_states[3]);
    uv_close((uv_handle_t *)&l.timer, NULL);
    pool_close(&e, p);
    env_close(&e);
}

/* ---- 8. detach and close ---- */

typedef struct {
    crm_pg_pool_t *pool;
    int calls, err, closed;
    char value[32];
} closer_t;

static void on_closer_closed(void *data)
{
    ++((closer_t *)data)->closed;
}

static void on_close_in_callback(crm_pg_unit_t *u, int err, void *data)
{
    closer_t *c = data;
    ++c->calls;
    c->err = err;
    PGresult *r = crm_pg_unit_result(u, 0);
    if (err == 0 && r != NULL && PQntuples(r) == 1)
        snprintf(c->value, sizeof(c->value), "%s", PQgetvalue(r, 0, 0));
    crm_pg_pool_close(c->pool, on_closer_closed, c);
    /* The unit's results stay readable after the close call: nothing is torn down under the callback. */
    r = crm_pg_unit_result(u, 0);
    CHECK(err != 0 || (r != NULL && strcmp(PQgetvalue(r, 0, 0), c->value) == 0), "result gone after close");
}

static void scenario_detach_close(void)
{
    env_t e;
    env_init(&e, "8 detach and close");
    stmts_t s;
    crm_pg_config_t cfg;
    config(&cfg, 1, 1, 10);
    crm_pg_pool_t *p = pool_new(&e, &cfg, &s, 0);
    pool_start_ready(&e, p, 1);

    /* A queued unit detached: removed and freed at once, never called back. An in-flight unit detached: its answer
     * is consumed silently. */
    rec_t x, y;
    memset(&x, 0, sizeof(x));
    memset(&y, 0, sizeof(y));
    crm_pg_unit_t *ux = unit_one(p, 0, s.sleep, "0.3");
    crm_pg_unit_t *uy = unit_one(p, 0, s.dbl, "1");
    submit_ok(ux, &x);
    submit_ok(uy, &y);
    RUN_UNTIL(&e, stats(p).in_flight == 1 && stats(p).queued == 1, 2000);
    crm_pg_unit_detach(uy);
    CHECK(stats(p).queued == 0, "the detached unit is still queued");
    crm_pg_unit_detach(ux);
    CHECK(stats(p).in_flight == 1, "the detached in-flight unit left the connection before its answer");
    RUN_UNTIL(&e, stats(p).in_flight == 0, 3000);
    run_for(&e, 50);
    CHECK(x.calls == 0 && y.calls == 0, "detached units called back: in-flight %d, queued %d", x.calls, y.calls);
    crm_pg_stats_t s0 = stats(p);
    CHECK(s0.completed == s0.submitted && s0.conn_failures == 0, "completed %llu of %llu, conn_failures %llu",
          (unsigned long long)s0.completed, (unsigned long long)s0.submitted, (unsigned long long)s0.conn_failures);
    rec_t z = run_unit(&e, p, 0, s.dbl, "4");
    CHECK(z.err == 0 && strcmp(z.value, "8") == 0, "unit after the detached ones: err %s value '%s'",
          crm_err_name(z.err), z.value);
    pool_close(&e, p);
    env_close(&e);

    /* Closing with work in flight and queued: every callback once with CRM_E_SHUTDOWN, then on_closed. */
    env_init(&e, "8 close with work pending");
    config(&cfg, 1, 2, 10);
    p = pool_new(&e, &cfg, &s, 0);
    pool_start_ready(&e, p, 1);
    rec_t r[5];
    memset(r, 0, sizeof(r));
    crm_pg_unit_t *detached_in_flight = NULL;
    for (int i = 0; i < 5; ++i) {
        crm_pg_unit_t *u = unit_one(p, i == 0 ? CRM_PG_TX : 0, s.sleep, "2");
        if (i == 1)
            detached_in_flight = u;
        submit_ok(u, &r[i]);
    }
    RUN_UNTIL(&e, stats(p).in_flight == 2 && stats(p).queued == 3, 2000);
    crm_pg_unit_detach(detached_in_flight);
    int closed = 0;
    crm_pg_pool_close(p, on_pool_closed, &closed);
    for (int i = 0; i < 5; ++i)
        CHECK(r[i].calls == 0, "unit %d called back from inside crm_pg_pool_close", i);
    crm_pg_unit_t *late = unit_one(p, 0, s.dbl, "1");
    int never = 0;
    int rc = crm_pg_unit_submit(late, on_never, &never);
    CHECK(rc == CRM_E_SHUTDOWN, "submit on a closing pool returned %s", crm_err_name(rc));
    crm_pg_unit_free(late);
    uint64_t t0 = uv_hrtime();
    unsigned seq_before = g_seq;
    RUN_UNTIL(&e, closed != 0, 5000);
    double close_ms = ms_since(t0);
    unsigned closed_seq = ++g_seq;
    for (int i = 0; i < 5; ++i) {
        if (i == 1) {
            CHECK(r[i].calls == 0, "the detached in-flight unit called back on close");
            continue;
        }
        CHECK(r[i].calls == 1 && r[i].err == CRM_E_SHUTDOWN, "unit %d: %d calls, err %s", i, r[i].calls,
              crm_err_name(r[i].err));
        CHECK(r[i].seq > seq_before && r[i].seq < closed_seq, "unit %d completed out of order with on_closed", i);
    }
    CHECK(closed == 1 && never == 0, "on_closed %d, refused unit's callback %d", closed, never);
    printf("figure: close with 2 in flight + 3 queued finished in %.1f ms\n", close_ms);
    env_close(&e);

    /* Closing from inside a unit's callback, with more units pipelined behind it on the same connection: the
     * connection must not be torn down under the callback, and the rest end with CRM_E_SHUTDOWN. */
    env_init(&e, "8 close from a callback");
    config(&cfg, 1, 128, 10);
    p = pool_new(&e, &cfg, &s, 0);
    pool_start_ready(&e, p, 1);
    static closer_t cl;
    memset(&cl, 0, sizeof(cl));
    cl.pool = p;
    rec_t behind[2];
    memset(behind, 0, sizeof(behind));
    crm_pg_unit_t *first = unit_one(p, 0, s.dbl, "3");
    CHECK(crm_pg_unit_submit(first, on_close_in_callback, &cl) == 0, "submit");
    submit_ok(unit_one(p, 0, s.sleep, "1"), &behind[0]);
    submit_ok(unit_one(p, CRM_PG_TX, s.dbl, "4"), &behind[1]);
    RUN_UNTIL(&e, cl.closed != 0, 5000);
    CHECK(cl.calls == 1 && cl.err == 0 && strcmp(cl.value, "6") == 0, "the closing unit: calls %d err %s value '%s'",
          cl.calls, crm_err_name(cl.err), cl.value);
    CHECK(behind[0].calls == 1 && behind[0].err == CRM_E_SHUTDOWN, "pg_sleep(1) behind it: calls %d err %s",
          behind[0].calls, crm_err_name(behind[0].err));
    /* The last unit may have been answered before the close ran (its answer can arrive in the same read). */
    CHECK(behind[1].calls == 1 && (behind[1].err == CRM_E_SHUTDOWN || behind[1].err == 0),
          "the unit behind: calls %d err %s", behind[1].calls, crm_err_name(behind[1].err));
    CHECK(cl.closed == 1, "on_closed ran %d times", cl.closed);
    env_close(&e);

    /* A pool that was never started closes cleanly too. */
    env_init(&e, "8 close without start");
    config(&cfg, 2, 4, 4);
    p = pool_new(&e, &cfg, &s, 0);
    closed = 0;
    crm_pg_pool_close(p, on_pool_closed, &closed);
    RUN_UNTIL(&e, closed != 0, 2000);
    env_close(&e);
}

/* ---- 9. statements that do not prepare ---- */

typedef struct {
    crm_pg_pool_t *pool;
    const stmts_t *stmts;
    uv_timer_t timer;
    int submitting;
    uint64_t outstanding, accepted, max_latency_ns, max_refusal_ns;
    uint64_t refused[NKINDS], done[NKINDS];
    uint64_t ready_seen;
} s9_t;

typedef struct {
    s9_t *load;
    uint64_t submit_ns;
} s9_unit_t;

static void on_s9_unit(crm_pg_unit_t *u, int err, void *data)
{
    s9_unit_t *lu = data;
    s9_t *l = lu->load;
    uint64_t lat = uv_hrtime() - lu->submit_ns;
    if (lat > l->max_latency_ns)
        l->max_latency_ns = lat;
    ++l->done[err_index(err)];
    --l->outstanding;
    free(lu);
}

static void on_s9_timer(uv_timer_t *t)
{
    s9_t *l = t->data;
    l->ready_seen += stats(l->pool).conns[CRM_PG_CONN_READY];
    if (!l->submitting)
        return;
    crm_pg_unit_t *u = unit_one(l->pool, 0, l->stmts->one, NULL);
    s9_unit_t *lu = malloc(sizeof(*lu));
    CHECK(lu != NULL, "malloc");
    lu->load = l;
    lu->submit_ns = uv_hrtime();
    int rc = crm_pg_unit_submit(u, on_s9_unit, lu);
    uint64_t dt = uv_hrtime() - lu->submit_ns;
    if (rc == 0) {
        ++l->outstanding;
        ++l->accepted;
        return;
    }
    if (dt > l->max_refusal_ns)
        l->max_refusal_ns = dt;
    ++l->refused[err_index(rc)];
    crm_pg_unit_free(u);
    free(lu);
}

static void scenario_prepare_failure(void)
{
    env_t e;
    env_init(&e, "9 prepare failure");
    stmts_t s;
    crm_pg_config_t cfg;
    config(&cfg, 2, 128, 64);
    cfg.queue_timeout_ms = 300;
    cfg.reconnect_min_ms = 50;
    cfg.reconnect_max_ms = 200;
    crm_pg_pool_t *p = pool_new(&e, &cfg, &s, WITH_MISSING);
    CHECK(crm_pg_pool_start(p) == 0, "crm_pg_pool_start");
    static s9_t l;
    memset(&l, 0, sizeof(l));
    l.pool = p;
    l.stmts = &s;
    l.submitting = 1;
    uv_timer_init(&e.loop, &l.timer);
    l.timer.data = &l;
    uv_timer_start(&l.timer, on_s9_timer, 1, 1);
    RUN_UNTIL(&e, stats(p).prepare_failed == 1, 5000);
    run_for(&e, 1500);
    l.submitting = 0;
    RUN_UNTIL(&e, l.outstanding == 0, 3000);
    crm_pg_stats_t st = stats(p);
    CHECK(l.ready_seen == 0 && st.conns[CRM_PG_CONN_READY] == 0 && st.reconnects == 0,
          "a connection became ready although a statement cannot prepare");
    CHECK(st.prepare_failed == 1, "prepare_failed %d", st.prepare_failed);
    CHECK(st.conn_failures >= 2, "conn_failures %llu: the pool stopped retrying", (unsigned long long)st.conn_failures);
    /* Accepted units are answered unavailable (their connection attempt failed and none other is under way) or
     * time out in the queue; refused ones are refused at once: unavailable, or breaker_open once the failed
     * attempts and unavailable refusals (which count as failed calls) have opened the breaker. */
    uint64_t bad = 0;
    for (int k = 0; k < NKINDS; ++k) {
        if (k != err_index(CRM_E_UNAVAILABLE) && k != err_index(CRM_E_QUEUE_TIMEOUT))
            bad += l.done[k];
        if (k != err_index(CRM_E_UNAVAILABLE) && k != err_index(CRM_E_BREAKER_OPEN))
            bad += l.refused[k];
    }
    print_kinds("completions", l.done);
    print_kinds("refusals", l.refused);
    CHECK(bad == 0, "an outcome other than unavailable / queue_timeout / a synchronous breaker_open (see above)");
    double max_lat = (double)l.max_latency_ns / 1e6;
    CHECK(max_lat <= 300 + 100, "an accepted unit took %.1f ms to be answered (queue timeout 300)", max_lat);
    double max_ref = (double)l.max_refusal_ns / 1e6;
    CHECK(max_ref < 1.0, "a refusal took %.3f ms (must be synchronous, < 1 ms)", max_ref);
    CHECK(crm_pg_pool_is_serving(p) == 0, "the pool claims to serve");
    printf("figure: prepare_failed=%d conn_failures=%llu accepted=%llu max latency %.1f ms max refusal %.3f ms\n",
           st.prepare_failed, (unsigned long long)st.conn_failures, (unsigned long long)l.accepted, max_lat, max_ref);
    uv_close((uv_handle_t *)&l.timer, NULL);
    pool_close(&e, p);
    env_close(&e);
}

/* ---- 10. large parameters and results, many statements per unit ---- */

#define S10_BIG   (1u << 20)
#define S10_NBIG  6
#define S10_STMTS 12

typedef struct {
    int calls, err;
    char fill;
    size_t len;
    int intact;
} big_t;

static void on_big(crm_pg_unit_t *u, int err, void *data)
{
    big_t *b = data;
    ++b->calls;
    b->err = err;
    PGresult *r = crm_pg_unit_result(u, 0);
    if (err != 0 || r == NULL || PQntuples(r) != 1)
        return;
    const char *v = PQgetvalue(r, 0, 0);
    b->len = (size_t)PQgetlength(r, 0, 0);
    b->intact = b->len == S10_BIG;
    for (size_t i = 0; b->intact && i < b->len; ++i)
        b->intact = v[i] == b->fill;
}

typedef struct {
    int calls, err;
    size_t count;
    int wrong; /* index of the first statement with a wrong answer, or -1 */
} multi_t;

static void on_multi(crm_pg_unit_t *u, int err, void *data)
{
    multi_t *m = data;
    ++m->calls;
    m->err = err;
    m->count = crm_pg_unit_count(u);
    m->wrong = -1;
    for (size_t i = 0; err == 0 && i < m->count; ++i) {
        PGresult *r = crm_pg_unit_result(u, i);
        if (r == NULL || PQntuples(r) != 1 || strtol(PQgetvalue(r, 0, 0), NULL, 10) != 2 * (long)(i + 100)) {
            m->wrong = (int)i;
            break;
        }
    }
    if (crm_pg_unit_result(u, m->count) != NULL)
        m->wrong = (int)m->count;
}

static void scenario_large(void)
{
    env_t e;
    env_init(&e, "10 large payloads, many statements");
    stmts_t s;
    crm_pg_config_t cfg;
    config(&cfg, 1, 128, 64);
    cfg.max_statements = 16;
    crm_pg_pool_t *p = pool_new(&e, &cfg, &s, 0);
    pool_start_ready(&e, p, 1);

    /* Megabyte parameters overflow the socket buffer, so sending has to wait for writability while the answers
     * of earlier units arrive; small units are interleaved to check that nothing gets out of step. */
    char *buf = malloc(S10_BIG + 1);
    CHECK(buf != NULL, "malloc");
    static big_t big[S10_NBIG];
    static rec_t small[S10_NBIG];
    memset(big, 0, sizeof(big));
    memset(small, 0, sizeof(small));
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < S10_NBIG; ++i) {
        big[i].fill = (char)('a' + i);
        memset(buf, big[i].fill, S10_BIG);
        buf[S10_BIG] = '\0';
        crm_pg_unit_t *u = unit_one(p, i % 2 ? CRM_PG_TX : 0, s.echo, buf);
        CHECK(crm_pg_unit_submit(u, on_big, &big[i]) == 0, "submit big %d", i);
        char v[16];
        snprintf(v, sizeof(v), "%d", i);
        submit_ok(unit_one(p, 0, s.dbl, v), &small[i]);
    }
    free(buf);
    RUN_UNTIL(&e, stats(p).completed == 2 * S10_NBIG, 30000);
    double big_ms = ms_since(t0);
    for (int i = 0; i < S10_NBIG; ++i) {
        CHECK(big[i].calls == 1 && big[i].err == 0, "big %d: calls %d err %s", i, big[i].calls,
              crm_err_name(big[i].err));
        CHECK(big[i].intact, "big %d: %zu bytes came back, not the %u '%c' sent", i, big[i].len, S10_BIG, big[i].fill);
        char want[16];
        snprintf(want, sizeof(want), "%d", 2 * i);
        CHECK(small[i].calls == 1 && small[i].err == 0 && strcmp(small[i].value, want) == 0,
              "small %d: err %s value '%s'", i, crm_err_name(small[i].err), small[i].value);
    }

    /* More statements than the unit's inline room, in both shapes; then the statement limit. */
    multi_t m[2];
    memset(m, 0, sizeof(m));
    for (int k = 0; k < 2; ++k) {
        crm_pg_unit_t *u = crm_pg_unit_new(p, k ? CRM_PG_TX : 0);
        CHECK(u != NULL, "crm_pg_unit_new");
        for (int i = 0; i < S10_STMTS; ++i) {
            char v[16];
            snprintf(v, sizeof(v), "%d", i + 100);
            const char *values[1] = {v};
            int idx = crm_pg_unit_add(u, s.dbl, 1, values, NULL);
            CHECK(idx == i, "crm_pg_unit_add returned %d for statement %d", idx, i);
        }
        CHECK(crm_pg_unit_submit(u, on_multi, &m[k]) == 0, "submit multi");
    }
    RUN_UNTIL(&e, m[0].calls && m[1].calls, 5000);
    for (int k = 0; k < 2; ++k)
        CHECK(m[k].calls == 1 && m[k].err == 0 && m[k].count == S10_STMTS && m[k].wrong == -1,
              "%s unit of %d statements: err %s, count %zu, first wrong answer at %d", k ? "tx" : "plain", S10_STMTS,
              crm_err_name(m[k].err), m[k].count, m[k].wrong);
    crm_pg_unit_t *u = crm_pg_unit_new(p, 0);
    CHECK(u != NULL, "crm_pg_unit_new");
    for (size_t i = 0; i < cfg.max_statements; ++i)
        CHECK(crm_pg_unit_add(u, s.one, 0, NULL, NULL) == (int)i, "add %zu", i);
    int rc = crm_pg_unit_add(u, s.one, 0, NULL, NULL);
    CHECK(rc == CRM_E_LIMIT, "statement %zu of a unit limited to %zu: %s", cfg.max_statements + 1, cfg.max_statements,
          crm_err_name(rc));
    crm_pg_unit_free(u);
    CHECK(stats(p).conn_failures == 0, "the connection failed");
    printf("figure: %d x 1 MiB echo units + %d small, pipelined on one connection, in %.1f ms\n", S10_NBIG, S10_NBIG,
           big_ms);
    pool_close(&e, p);
    env_close(&e);
}

/* ---- 11. a server that accepts connections but never answers them ---- */

static pid_t postmaster_pid(void)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/data/postmaster.pid", crm_pg_cluster_dir());
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "cannot open %s: %s", path, strerror(errno));
    long pid = 0;
    int n = fscanf(f, "%ld", &pid);
    fclose(f);
    CHECK(n == 1 && pid > 1, "no pid in %s", path);
    return (pid_t)pid;
}

static void scenario_unresponsive(void)
{
    env_t e;
    env_init(&e, "11 unresponsive server");
    stmts_t s;
    crm_pg_config_t cfg;
    config(&cfg, 2, 128, 64);
    cfg.connect_timeout_ms = 300;
    cfg.queue_timeout_ms = 200;
    cfg.reconnect_min_ms = 50;
    cfg.reconnect_max_ms = 200;
    cfg.breaker.open_ms = 500;
    crm_pg_pool_t *p = pool_new(&e, &cfg, &s, 0);

    /* A stopped postmaster still has its socket listening: connect() succeeds, the startup packet is never
     * answered. Only the pool's connect timeout can end such an attempt. */
    pid_t pm = postmaster_pid();
    g_stopped_backend = pm;
    CHECK(kill(pm, SIGSTOP) == 0, "kill(%ld, SIGSTOP): %s", (long)pm, strerror(errno));
    CHECK(crm_pg_pool_start(p) == 0, "crm_pg_pool_start");
    static s9_t l;
    memset(&l, 0, sizeof(l));
    l.pool = p;
    l.stmts = &s;
    l.submitting = 1;
    uv_timer_init(&e.loop, &l.timer);
    l.timer.data = &l;
    uv_timer_start(&l.timer, on_s9_timer, 5, 5);
    uint64_t t0 = uv_hrtime();
    RUN_UNTIL(&e, stats(p).conn_failures >= 2, 3000);
    double first_timeout_ms = ms_since(t0);
    run_for(&e, 700);
    crm_pg_stats_t st = stats(p);
    CHECK(l.ready_seen == 0 && st.conns[CRM_PG_CONN_READY] == 0, "a connection became ready with the server stopped");
    CHECK(first_timeout_ms >= 290 && first_timeout_ms < 1000, "attempts failed after %.1f ms (connect timeout 300)",
          first_timeout_ms);
    uint64_t bad = 0;
    for (int k = 0; k < NKINDS; ++k) {
        if (k != err_index(CRM_E_UNAVAILABLE) && k != err_index(CRM_E_QUEUE_TIMEOUT))
            bad += l.done[k];
        if (k != err_index(CRM_E_UNAVAILABLE) && k != err_index(CRM_E_BREAKER_OPEN))
            bad += l.refused[k];
    }
    print_kinds("completions while stopped", l.done);
    print_kinds("refusals while stopped", l.refused);
    CHECK(bad == 0, "an outcome other than unavailable / queue_timeout / a synchronous breaker_open (see above)");
    CHECK(l.done[err_index(CRM_E_QUEUE_TIMEOUT)] > 0, "no unit waited for the hanging attempts");
    double max_lat = (double)l.max_latency_ns / 1e6;
    CHECK(max_lat <= 200 + 100, "a unit took %.1f ms to be answered (queue timeout 200)", max_lat);

    CHECK(kill(pm, SIGCONT) == 0, "kill(%ld, SIGCONT): %s", (long)pm, strerror(errno));
    g_stopped_backend = 0;
    uint64_t done_before = l.done[0];
    t0 = uv_hrtime();
    RUN_UNTIL(&e, stats(p).conns[CRM_PG_CONN_READY] == 2 && l.done[0] > done_before, 10000);
    double recover_ms = ms_since(t0);
    l.submitting = 0;
    RUN_UNTIL(&e, l.outstanding == 0, 3000);
    printf("figure: connect attempts timed out after %.1f ms; max unit latency while stopped %.1f ms; serving again "
           "%.1f ms after SIGCONT\n",
           first_timeout_ms, max_lat, recover_ms);
    uv_close((uv_handle_t *)&l.timer, NULL);
    pool_close(&e, p);
    env_close(&e);
}

/* With arguments, runs only the scenarios named by number (for example `test_pg_pool 5 7`); without, all of them. */
/* ---- 12. an error raised by the commit at the Sync ---- */

static void scenario_commit_time_error(void)
{
    env_t e;
    env_init(&e, "12 error at commit time (deferred constraint)");
    CHECK(crm_pg_cluster_psql("SET client_min_messages = warning; DROP TABLE IF EXISTS child, parent; "
                              "CREATE TABLE parent (id int PRIMARY KEY); "
                              "CREATE TABLE child (pid int REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)") == 0,
          "psql: CREATE TABLE parent/child failed");
    stmts_t s;
    crm_pg_config_t cfg;
    config(&cfg, 1, 128, 64);
    crm_pg_pool_t *p = pool_new(&e, &cfg, &s, 0);
    crm_pg_stmt_t orphan;
    CHECK(crm_pg_pool_prepare(p, "orphan", "INSERT INTO child (pid) VALUES ($1::int)", 1, &orphan) == 0,
          "prepare orphan");
    pool_start_ready(&e, p, 1);
    /* The deferred foreign key is checked when the transaction commits: in a plain unit at its Sync, in a CRM_PG_TX
     * unit at its COMMIT. Both must be that unit's SQL error, with the units around them untouched. */
    rec_t a, b, c, d;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&c, 0, sizeof(c));
    memset(&d, 0, sizeof(d));
    submit_ok(unit_one(p, 0, orphan, "999"), &a);
    submit_ok(unit_one(p, 0, s.dbl, "21"), &b);
    submit_ok(unit_one(p, CRM_PG_TX, orphan, "998"), &c);
    submit_ok(unit_one(p, 0, s.dbl, "4"), &d);
    RUN_UNTIL(&e, a.calls && b.calls && c.calls && d.calls, 5000);
    CHECK(a.err == CRM_E_DB && strcmp(a.sqlstate, "23503") == 0 && a.error_index == -1,
          "plain unit: err %s sqlstate '%s' index %d, expected db 23503 at -1", crm_err_name(a.err), a.sqlstate,
          a.error_index);
    CHECK(b.err == 0 && strcmp(b.value, "42") == 0, "unit after it: err %s value '%s'", crm_err_name(b.err), b.value);
    CHECK(c.err == CRM_E_DB && strcmp(c.sqlstate, "23503") == 0 && c.error_index == -1,
          "CRM_PG_TX unit: err %s sqlstate '%s' index %d, expected db 23503 at -1", crm_err_name(c.err), c.sqlstate,
          c.error_index);
    CHECK(d.err == 0 && strcmp(d.value, "8") == 0, "unit after it: err %s value '%s'", crm_err_name(d.err), d.value);
    CHECK(stats(p).conn_failures == 0 && stats(p).sql_errors == 2, "conn_failures %llu sql_errors %llu",
          (unsigned long long)stats(p).conn_failures, (unsigned long long)stats(p).sql_errors);
    pool_close(&e, p);
    CHECK(crm_pg_cluster_psql("SELECT count(*) FROM child") == 0 &&
              crm_pg_cluster_psql("DROP TABLE child, parent") == 0,
          "psql: cleanup");
    env_close(&e);
}

/* ---- 13. read-only units survive the loss of the only connection ---- */

static void scenario_terminated_backend(void)
{
    env_t e;
    env_init(&e, "13 read-only units re-run after the only connection is terminated");
    stmts_t s;
    crm_pg_config_t cfg;
    config(&cfg, 1, 128, 64);
    crm_pg_pool_t *p = pool_new(&e, &cfg, &s, 0);
    pool_start_ready(&e, p, 1);
    long pid = backend_pid(&e, p, &s);
    enum { N = 8 };
    rec_t r[N];
    memset(r, 0, sizeof(r));
    submit_ok(unit_one(p, CRM_PG_READ_ONLY, s.sleep, "0.5"), &r[0]);
    for (int i = 1; i < N; ++i) {
        char v[8];
        snprintf(v, sizeof(v), "%d", i);
        submit_ok(unit_one(p, CRM_PG_READ_ONLY, s.dbl, v), &r[i]);
    }
    RUN_UNTIL(&e, stats(p).in_flight == N, 2000);
    char sql[96];
    snprintf(sql, sizeof(sql), "-cSELECT pg_terminate_backend(%ld)", pid);
    pg_job_t job;
    pg_job(&e, &job, "psql", sql);
    int all = 0;
    RUN_UNTIL(&e,
              (all = r[0].calls && r[1].calls && r[2].calls && r[3].calls && r[4].calls && r[5].calls && r[6].calls &&
                     r[7].calls),
              10000);
    for (int i = 0; i < N; ++i)
        CHECK(r[i].calls == 1 && r[i].err == 0, "unit %d: err %s (read-only units must be re-run)", i,
              crm_err_name(r[i].err));
    for (int i = 1; i < N; ++i) {
        char want[8];
        snprintf(want, sizeof(want), "%d", 2 * i);
        CHECK(strcmp(r[i].value, want) == 0, "unit %d got '%s'", i, r[i].value);
    }
    crm_pg_stats_t st = stats(p);
    CHECK(st.conn_failures == 1 && st.requeued >= N - 1 && st.reconnects == 1,
          "conn_failures %llu requeued %llu "
          "reconnects %llu",
          (unsigned long long)st.conn_failures, (unsigned long long)st.requeued, (unsigned long long)st.reconnects);
    CHECK(backend_pid(&e, p, &s) != pid, "a new backend serves");
    printf("figure: %llu units re-run after pg_terminate_backend, all answered correctly\n",
           (unsigned long long)st.requeued);
    pool_close(&e, p);
    env_close(&e);
}

/* ---- 14. a write queued behind a slow unit is never answered before it has run ---- */

static void scenario_write_behind_slow_unit(void)
{
    env_t e;
    env_init(&e, "14 a write behind a slow unit keeps its true outcome");
    CHECK(crm_pg_cluster_psql(
              "SET client_min_messages = warning; DROP TABLE IF EXISTS t; CREATE TABLE t (x int PRIMARY KEY)") == 0,
          "psql: CREATE TABLE t failed");
    stmts_t s;
    crm_pg_config_t cfg;
    config(&cfg, 1, 128, 64);
    crm_pg_pool_t *p = pool_new(&e, &cfg, &s, WITH_TABLE);
    pool_start_ready(&e, p, 1);
    rec_t slow, w, rd;
    memset(&slow, 0, sizeof(slow));
    memset(&w, 0, sizeof(w));
    memset(&rd, 0, sizeof(rd));
    submit_ok(unit_one(p, 0, s.sleep, "1"), &slow);
    uv_update_time(&e.loop);
    crm_pg_unit_t *uw = unit_one(p, 0, s.ins, "42");
    crm_pg_unit_set_deadline(uw, uv_now(&e.loop) + 100);
    submit_ok(uw, &w);
    crm_pg_unit_t *ur = unit_one(p, CRM_PG_READ_ONLY, s.one, NULL);
    crm_pg_unit_set_deadline(ur, uv_now(&e.loop) + 100);
    submit_ok(ur, &rd);
    RUN_UNTIL(&e, slow.calls && w.calls && rd.calls, 5000);
    /* The read may be answered early: running later changes nothing. The write must not be: it waits for its turn
     * and reports what really happened to it. */
    CHECK(rd.err == CRM_E_DEADLINE && rec_ms(&rd) < 800, "read: err %s after %.0f ms", crm_err_name(rd.err),
          rec_ms(&rd));
    CHECK(slow.err == 0, "slow unit: %s", crm_err_name(slow.err));
    rec_t l = run_unit(&e, p, 0, s.list, NULL);
    int committed = strcmp(l.value, "42") == 0;
    CHECK((w.err == 0) == committed, "write answered %s but the row is %s", crm_err_name(w.err),
          committed ? "there" : "absent");
    CHECK(rec_ms(&w) >= 900, "the write was answered after %.0f ms, before the slow unit ahead of it finished",
          rec_ms(&w));
    CHECK(stats(p).conn_failures == 0, "no connection was recycled");
    printf("figure: read answered early at %.0f ms; write answered %s at %.0f ms, row %s\n", rec_ms(&rd),
           crm_err_name(w.err), rec_ms(&w), committed ? "committed" : "absent");
    pool_close(&e, p);
    CHECK(crm_pg_cluster_psql("DROP TABLE t") == 0, "psql: DROP TABLE t failed");
    env_close(&e);
}

/* ---- 15. failover to the next host ---- */

static void scenario_host_failover(void)
{
    env_t e;
    env_init(&e, "15 the first host refuses, the second serves");
    char conninfo[256];
    const char *port = getenv("PGPORT");
    /* Port 1 on loopback refuses at once; libpq moves on to the second host, usually on the same descriptor
     * number. The pool must follow it to that new socket. */
    snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1,127.0.0.1 port=1,%s user=%s dbname=crmd", port,
             geteuid() == 0 ? "postgres" : getpwuid(geteuid())->pw_name);
    stmts_t s;
    crm_pg_config_t cfg;
    config(&cfg, 2, 128, 64);
    cfg.conninfo = conninfo;
    cfg.connect_timeout_ms = 3000;
    crm_pg_pool_t *p = pool_new(&e, &cfg, &s, 0);
    uint64_t t0 = uv_hrtime();
    CHECK(crm_pg_pool_start(p) == 0, "start");
    RUN_UNTIL(&e, stats(p).conns[CRM_PG_CONN_READY] == 2, 10000);
    double ms = ms_since(t0);
    CHECK(ms < 2000, "connections became ready after %.0f ms (a connect timeout would be 3000)", ms);
    rec_t r = run_unit(&e, p, 0, s.dbl, "5");
    CHECK(r.err == 0 && strcmp(r.value, "10") == 0, "unit over the second host: %s", crm_err_name(r.err));
    CHECK(stats(p).conn_failures == 0, "no attempt failed");
    printf("figure: both connections ready over the second host in %.1f ms\n", ms);
    pool_close(&e, p);
    env_close(&e);
}

int main(int argc, char **argv)
{
    static void (*const scenarios[])(void) = {
        NULL,
        scenario_concurrency,
        scenario_queue_full,
        scenario_queue_timeout,
        scenario_server_deadline,
        scenario_backstop,
        scenario_isolation,
        scenario_database_down,
        scenario_detach_close,
        scenario_prepare_failure,
        scenario_large,
        scenario_unresponsive,
        scenario_commit_time_error,
        scenario_terminated_backend,
        scenario_write_behind_slow_unit,
        scenario_host_failover,
    };
    const int n = (int)(sizeof(scenarios) / sizeof(scenarios[0]));
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; ++i) {
        int k = atoi(argv[i]);
        CHECK(k >= 1 && k < n, "no scenario '%s' (1..%d)", argv[i], n - 1);
    }
    uint64_t t0 = uv_hrtime();
    cluster_setup();
    for (int k = 1; k < n; ++k) {
        int selected = argc == 1;
        for (int i = 1; i < argc; ++i)
            selected |= atoi(argv[i]) == k;
        if (selected)
            scenarios[k]();
    }
    g_scenario = "teardown";
    printf("figure: scenarios passed in %.1f s (including cluster setup)\n", ms_since(t0) / 1000.0);
    return 0;
}
