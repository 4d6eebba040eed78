/*
 * pg_pool — drives lib's PostgreSQL pool (lib/pg.h) directly with primary-key point lookups, for bench/pg.
 *
 * The table is pgbench's: `pgbench -i -s N` creates pgbench_accounts with aid 1..100000*N and abalance 0, so this
 * program and `pgbench -S` read exactly the same rows. The program keeps `-c` units of work in flight for the whole
 * run, each one `SELECT abalance FROM pgbench_accounts WHERE aid = $1` with a uniformly random aid; whenever one
 * completes, the next is submitted from its callback. After a warm-up it counts, for `-T` seconds, the lookups that
 * complete and their latency (submit to callback, which includes any wait in the pool's queue), then stops
 * submitting, lets the lookups in flight finish and closes the pool.
 *
 * Every answer is checked: exactly one row and one column holding an integer, and 0 when the table held only zero
 * balances at start (pgbench -i writes zeros and -S never writes). A wrong answer makes the exit status 2.
 *
 * Output, one line of key=value pairs on stdout (bench/pg parses it):
 *   pool_size= pipeline_depth= in_flight= seconds= lookups= rate= p50_us= p99_us= max_us= errors= wrong=
 *   cpu_us_per_lookup= vmhwm_kb=
 * errors counts lookups that failed (a negative crm_err_t in the callback, or a refused submit); wrong counts
 * answers that failed the check above.
 *
 * Usage: pg_pool -d CONNINFO [-T seconds] [-W warm-up seconds] [-c in flight] [-s pool size] [-p pipeline depth]
 */
#include <getopt.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "err.h"
#include "log.h"
#include "pg.h"
#include "rand.h"

#define LOOKUP_SQL "SELECT abalance FROM pgbench_accounts WHERE aid = $1"

/* Latency histogram with log-linear buckets (the HdrHistogram layout): values below 64 ns have a bucket each;
 * above, every power of two is split into 64 buckets, so a bucket's width is under 1/64 (1.6 %) of its values.
 * 59 groups cover every uint64_t, so the table has a fixed size and recording never allocates. */
#define SUB_BUCKETS 64
#define HIST_GROUPS 59
#define HIST_SIZE   (HIST_GROUPS * SUB_BUCKETS)

/* At most this many failures are described on stderr; the rest are only counted. */
#define MAX_REPORTED 5

/* How long the pool may take to get its first connection ready. */
#define CONNECT_TIMEOUT_MS 30000

typedef struct {
    uint64_t counts[HIST_SIZE];
    uint64_t total;
    uint64_t max;
} hist_t;

typedef enum { PHASE_CONNECTING, PHASE_WARMUP, PHASE_MEASURE, PHASE_DRAIN } phase_t;

typedef struct st_bench_t bench_t;

/* One lookup in flight. Slots are allocated once, so the steady state allocates nothing of its own. */
typedef struct {
    bench_t *bench;
    uint64_t started_ns;
    int busy;
} slot_t;

struct st_bench_t {
    uv_loop_t loop;
    crm_pg_pool_t *pool;
    crm_pg_stmt_t lookup;
    uint64_t naccounts;
    int expect_zero;
    size_t target;
    size_t in_flight;
    slot_t *slots;
    phase_t phase;
    uint64_t warmup_ms, measure_ms;
    uint64_t connect_deadline_ms;
    int failed;
    uint64_t measure_start_ns, measure_end_ns;
    uint64_t completed, errors, wrong, reported;
    struct rusage usage_start, usage_end;
    hist_t hist;
    uv_timer_t phase_timer;
    uv_timer_t topup_timer; /* resubmits into free slots after a refused submit */
};

static size_t hist_index(uint64_t v)
{
    if (v < SUB_BUCKETS)
        return (size_t)v;
    int e = 63 - __builtin_clzll(v); /* 6..63 */
    return (size_t)(e - 5) * SUB_BUCKETS + (size_t)((v >> (e - 6)) - SUB_BUCKETS);
}

/* The middle of bucket i, the value reported for every sample in it. */
static double hist_value(size_t i)
{
    if (i < SUB_BUCKETS)
        return (double)i;
    unsigned shift = (unsigned)(i / SUB_BUCKETS - 1);
    double low = (double)((uint64_t)(i % SUB_BUCKETS + SUB_BUCKETS) << shift);
    return low + (double)((uint64_t)1 << shift) / 2.0;
}

static void hist_record(hist_t *h, uint64_t v)
{
    ++h->counts[hist_index(v)];
    ++h->total;
    if (v > h->max)
        h->max = v;
}

/* The value at quantile q (0..1]: the smallest bucket whose cumulative count reaches ceil(q * total). */
static double hist_quantile(const hist_t *h, double q)
{
    if (h->total == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)h->total + 0.999999);
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < HIST_SIZE; ++i) {
        seen += h->counts[i];
        if (seen >= rank)
            return hist_value(i);
    }
    return (double)h->max;
}

static void submit_into(bench_t *b, slot_t *s);

static void report_failure(bench_t *b, const char *what, int err, crm_pg_unit_t *u)
{
    if (b->reported++ >= MAX_REPORTED)
        return;
    const char *state = u != NULL ? crm_pg_unit_sqlstate(u) : NULL;
    const char *msg = u != NULL ? crm_pg_unit_error_message(u) : NULL;
    fprintf(stderr, "pg_pool: %s: %s%s%s%s%s\n", what, crm_err_name(err), state != NULL ? " SQLSTATE " : "",
            state != NULL ? state : "", msg != NULL ? ": " : "", msg != NULL ? msg : "");
}

/* Checks one answer: one row, one integer column, and 0 when the table held only zero balances. */
static int answer_is_sane(const bench_t *b, const PGresult *r)
{
    if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) != 1 ||
        PQgetisnull(r, 0, 0))
        return 0;
    const char *v = PQgetvalue(r, 0, 0);
    char *end = NULL;
    long long n = strtoll(v, &end, 10);
    if (end == v || *end != '\0')
        return 0;
    return !b->expect_zero || n == 0;
}

static void on_lookup(crm_pg_unit_t *u, int err, void *data)
{
    slot_t *s = data;
    bench_t *b = s->bench;
    uint64_t now = uv_hrtime();
    s->busy = 0;
    --b->in_flight;
    int counted = b->phase == PHASE_MEASURE;
    if (err != 0) {
        if (counted)
            ++b->errors;
        report_failure(b, "lookup failed", err, u);
    } else if (!answer_is_sane(b, crm_pg_unit_result(u, 0))) {
        /* Wrong answers count whatever the phase: a warm-up that reads wrong data invalidates the run too. */
        ++b->wrong;
        if (b->reported++ < MAX_REPORTED)
            fprintf(stderr, "pg_pool: unexpected answer to a lookup\n");
    } else if (counted) {
        ++b->completed;
        hist_record(&b->hist, now - s->started_ns);
    }
    if (b->phase != PHASE_DRAIN)
        submit_into(b, s);
}

static void on_topup(uv_timer_t *t)
{
    bench_t *b = t->data;
    if (b->phase == PHASE_DRAIN)
        return;
    for (size_t i = 0; i < b->target; ++i)
        if (!b->slots[i].busy)
            submit_into(b, &b->slots[i]);
}

static void submit_into(bench_t *b, slot_t *s)
{
    char aid[24];
    snprintf(aid, sizeof(aid), "%llu", (unsigned long long)(crm_rand_below(b->naccounts) + 1));
    const char *values[1] = {aid};
    crm_pg_unit_t *u = crm_pg_unit_new(b->pool, CRM_PG_READ_ONLY);
    int err = u != NULL ? crm_pg_unit_add(u, b->lookup, 1, values, NULL) : CRM_E_NOMEM;
    if (err >= 0) {
        s->started_ns = uv_hrtime();
        err = crm_pg_unit_submit(u, on_lookup, s);
    }
    if (err < 0) {
        crm_pg_unit_free(u);
        if (b->phase == PHASE_MEASURE)
            ++b->errors;
        report_failure(b, "submit refused", err, NULL);
        /* Try again shortly rather than from here, which would spin while the pool keeps refusing. */
        if (!uv_is_active((uv_handle_t *)&b->topup_timer))
            uv_timer_start(&b->topup_timer, on_topup, 1, 0);
        return;
    }
    s->busy = 1;
    ++b->in_flight;
}

static void on_pool_closed(void *data)
{
    bench_t *b = data;
    b->pool = NULL;
    uv_close((uv_handle_t *)&b->phase_timer, NULL);
    uv_close((uv_handle_t *)&b->topup_timer, NULL);
}

/* Leaves the measured window: no more submits; the pool closes once the lookups in flight have come back. */
static void check_drained(uv_timer_t *t)
{
    bench_t *b = t->data;
    if (b->in_flight > 0) {
        uv_timer_start(&b->phase_timer, check_drained, 1, 0);
        return;
    }
    uv_timer_stop(&b->topup_timer);
    crm_pg_pool_close(b->pool, on_pool_closed, b);
}

static void on_phase(uv_timer_t *t)
{
    bench_t *b = t->data;
    switch (b->phase) {
    case PHASE_CONNECTING:
        /* Start only once a connection is ready, so that connecting is not part of the warm-up or the figures. */
        if (!crm_pg_pool_is_serving(b->pool)) {
            if (uv_now(&b->loop) < b->connect_deadline_ms) {
                uv_timer_start(&b->phase_timer, on_phase, 5, 0);
                return;
            }
            fprintf(stderr, "pg_pool: no connection became ready within %d ms\n", CONNECT_TIMEOUT_MS);
            b->failed = 1;
            b->phase = PHASE_DRAIN;
            check_drained(t);
            return;
        }
        b->phase = PHASE_WARMUP;
        for (size_t i = 0; i < b->target; ++i)
            submit_into(b, &b->slots[i]);
        uv_timer_start(&b->phase_timer, on_phase, b->warmup_ms, 0);
        return;
    case PHASE_WARMUP:
        b->phase = PHASE_MEASURE;
        b->measure_start_ns = uv_hrtime();
        getrusage(RUSAGE_SELF, &b->usage_start);
        uv_timer_start(&b->phase_timer, on_phase, b->measure_ms, 0);
        return;
    case PHASE_MEASURE:
        b->phase = PHASE_DRAIN;
        b->measure_end_ns = uv_hrtime();
        getrusage(RUSAGE_SELF, &b->usage_end);
        check_drained(t);
        return;
    case PHASE_DRAIN:
        return;
    }
}

/* Reads the table's shape before the loop starts (blocking libpq is fine here: nothing else runs yet). The lookups
 * draw aid from 1..count, so the ids must be exactly that range. */
static int check_table(const char *conninfo, bench_t *b)
{
    PGconn *c = PQconnectdb(conninfo);
    int rc = -1;
    PGresult *r = NULL;
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "pg_pool: cannot connect: %s", PQerrorMessage(c));
        goto out;
    }
    r = PQexec(c, "SELECT count(*), coalesce(min(aid), 0), coalesce(max(aid), 0), "
                  "count(*) FILTER (WHERE abalance <> 0) FROM pgbench_accounts");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "pg_pool: cannot read pgbench_accounts (run pgbench -i first): %s", PQerrorMessage(c));
        goto out;
    }
    unsigned long long count = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    unsigned long long min = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    unsigned long long max = strtoull(PQgetvalue(r, 0, 2), NULL, 10);
    unsigned long long nonzero = strtoull(PQgetvalue(r, 0, 3), NULL, 10);
    if (count == 0 || min != 1 || max != count) {
        fprintf(stderr, "pg_pool: pgbench_accounts must hold aid 1..N (found %llu rows, aid %llu..%llu)\n", count, min,
                max);
        goto out;
    }
    b->naccounts = count;
    b->expect_zero = nonzero == 0;
    rc = 0;
out:
    PQclear(r);
    PQfinish(c);
    return rc;
}

static long vmhwm_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kb;
}

static double cpu_seconds(const struct rusage *a, const struct rusage *b)
{
    return (double)(b->ru_utime.tv_sec - a->ru_utime.tv_sec + b->ru_stime.tv_sec - a->ru_stime.tv_sec) +
           (double)(b->ru_utime.tv_usec - a->ru_utime.tv_usec + b->ru_stime.tv_usec - a->ru_stime.tv_usec) / 1e6;
}

static int parse_count(const char *s, unsigned long lo, unsigned long hi, unsigned long *out)
{
    char *end = NULL;
    unsigned long v = strtoul(s, &end, 10);
    if (end == s || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: pg_pool -d CONNINFO [-T seconds] [-W warm-up seconds] [-c in flight] [-s pool size] "
                    "[-p pipeline depth]\n");
}

int main(int argc, char **argv)
{
    static bench_t bench; /* the histogram is large; keep it off the stack */
    bench_t *b = &bench;
    const char *conninfo = NULL;
    unsigned long seconds = 10, warmup = 2, in_flight = 64, size = 4, depth = 128;
    int opt, bad = 0;
    while ((opt = getopt(argc, argv, "d:T:W:c:s:p:")) != -1) {
        switch (opt) {
        case 'd':
            conninfo = optarg;
            break;
        case 'T':
            bad |= parse_count(optarg, 1, 86400, &seconds);
            break;
        case 'W':
            bad |= parse_count(optarg, 0, 3600, &warmup);
            break;
        case 'c':
            bad |= parse_count(optarg, 1, 100000, &in_flight);
            break;
        case 's':
            bad |= parse_count(optarg, 1, 256, &size);
            break;
        case 'p':
            bad |= parse_count(optarg, 1, 1024, &depth);
            break;
        default:
            bad = 1;
            break;
        }
    }
    if (bad || conninfo == NULL || optind != argc) {
        usage();
        return 64;
    }
    if (check_table(conninfo, b) != 0)
        return 1;

    b->target = in_flight;
    b->warmup_ms = warmup * 1000;
    b->measure_ms = seconds * 1000;
    b->slots = calloc(in_flight, sizeof(*b->slots));
    if (b->slots == NULL)
        return 1;
    for (size_t i = 0; i < in_flight; ++i)
        b->slots[i].bench = b;
    uv_loop_init(&b->loop);

    crm_pg_config_t cfg;
    crm_pg_config_default(&cfg);
    cfg.conninfo = conninfo;
    cfg.application_name = "pg_pool";
    cfg.size = size;
    cfg.pipeline_depth = depth;
    /* Whatever the pipelines cannot take waits in the pool's queue; it must hold the rest of the in-flight set. */
    if (cfg.queue_max < in_flight)
        cfg.queue_max = in_flight;
    int err = crm_pg_pool_create(&b->loop, &cfg, &b->pool);
    if (err == 0)
        err = crm_pg_pool_prepare(b->pool, "lookup", LOOKUP_SQL, 1, &b->lookup);
    if (err == 0)
        err = crm_pg_pool_start(b->pool);
    if (err != 0) {
        fprintf(stderr, "pg_pool: cannot start the pool: %s\n", crm_err_str(err));
        return 1;
    }
    uv_timer_init(&b->loop, &b->phase_timer);
    uv_timer_init(&b->loop, &b->topup_timer);
    b->phase_timer.data = b->topup_timer.data = b;
    b->connect_deadline_ms = uv_now(&b->loop) + CONNECT_TIMEOUT_MS;
    uv_timer_start(&b->phase_timer, on_phase, 0, 0);
    uv_run(&b->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&b->loop);
    free(b->slots);
    if (rc != 0) {
        fprintf(stderr, "pg_pool: the loop did not close cleanly: %s\n", uv_strerror(rc));
        return 1;
    }
    if (b->failed)
        return 1;

    double secs = (double)(b->measure_end_ns - b->measure_start_ns) / 1e9;
    double cpu = cpu_seconds(&b->usage_start, &b->usage_end);
    printf("pool_size=%lu pipeline_depth=%lu in_flight=%lu seconds=%.3f lookups=%llu rate=%.1f p50_us=%.1f "
           "p99_us=%.1f max_us=%.1f errors=%llu wrong=%llu cpu_us_per_lookup=%.2f vmhwm_kb=%ld\n",
           size, depth, in_flight, secs, (unsigned long long)b->completed, secs > 0 ? (double)b->completed / secs : 0,
           hist_quantile(&b->hist, 0.50) / 1e3, hist_quantile(&b->hist, 0.99) / 1e3, (double)b->hist.max / 1e3,
           (unsigned long long)b->errors, (unsigned long long)b->wrong,
           b->completed > 0 ? cpu * 1e6 / (double)b->completed : 0, vmhwm_kb());
    return b->wrong > 0 ? 2 : 0;
}
