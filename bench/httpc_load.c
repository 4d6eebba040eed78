/*
 * Load program of bench/httpc: keeps `concurrency` GET requests in flight through lib/httpc (one loop, one upstream,
 * keep-alive) against one URL for a number of seconds, after a warm-up, and prints one line:
 *
 *     req/s p50_ms p99_ms errors requests
 *
 * Usage: httpc_load URL CONCURRENCY SECONDS [WARMUP_SECONDS]
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "err.h"
#include "httpc.h"

#define MAX_SAMPLES (8u << 20)

typedef struct {
    uv_loop_t loop;
    crm_httpc_t *client;
    crm_httpc_upstream_t *up;
    const char *url;
    uint64_t measure_from, stop_at; /* loop ms */
    uint64_t ok, errors, in_flight;
    float *lat_ms;
    size_t nlat;
    int closed;
} bench_t;

typedef struct {
    bench_t *b;
    uint64_t sent_ns;
} slot_t;

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void send_one(slot_t *s);

static void on_done(crm_httpc_req_t *req, int err, const crm_httpc_response_t *resp, void *data)
{
    (void)req;
    slot_t *s = data;
    bench_t *b = s->b;
    --b->in_flight;
    uint64_t now = uv_now(&b->loop);
    if (now >= b->measure_from && now < b->stop_at) {
        if (err == 0 && resp->status == 200) {
            ++b->ok;
            if (b->nlat < MAX_SAMPLES)
                b->lat_ms[b->nlat++] = (float)((mono_ns() - s->sent_ns) / 1e6);
        } else {
            ++b->errors;
        }
    }
    if (now < b->stop_at)
        send_one(s);
    else if (b->in_flight == 0)
        uv_stop(&b->loop);
}

static void send_one(slot_t *s)
{
    bench_t *b = s->b;
    crm_httpc_request_t q = {.method = "GET", .url = b->url, .deadline = uv_now(&b->loop) + 10000};
    s->sent_ns = mono_ns();
    int rc = crm_httpc_send(b->up, &q, on_done, s, NULL);
    if (rc != 0) {
        fprintf(stderr, "httpc_load: send: %s\n", crm_err_str(rc));
        exit(1);
    }
    ++b->in_flight;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void on_closed(void *data)
{
    ((bench_t *)data)->closed = 1;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: httpc_load URL CONCURRENCY SECONDS [WARMUP_SECONDS]\n");
        return 2;
    }
    static bench_t b;
    b.url = argv[1];
    size_t conc = (size_t)atoi(argv[2]);
    uint64_t secs = (uint64_t)atoi(argv[3]), warm = argc > 4 ? (uint64_t)atoi(argv[4]) : 1;
    if (conc == 0 || conc > 4096 || secs == 0)
        return 2;
    b.lat_ms = malloc(MAX_SAMPLES * sizeof(float));
    uv_loop_init(&b.loop);
    crm_httpc_config_t cfg;
    crm_httpc_config_default(&cfg);
    cfg.max_requests = conc * 2;
    cfg.max_idle_connections = (long)conc;
    if (crm_httpc_create(&b.loop, &cfg, &b.client) != 0)
        return 1;
    crm_httpc_upstream_config_t ucfg;
    crm_httpc_upstream_config_default(&ucfg, "bench");
    ucfg.max_in_flight = conc;
    if (crm_httpc_upstream_add(b.client, &ucfg, &b.up) != 0)
        return 1;
    uv_update_time(&b.loop);
    b.measure_from = uv_now(&b.loop) + warm * 1000;
    b.stop_at = b.measure_from + secs * 1000;
    slot_t *slots = calloc(conc, sizeof(*slots));
    for (size_t i = 0; i < conc; ++i) {
        slots[i].b = &b;
        send_one(&slots[i]);
    }
    uv_run(&b.loop, UV_RUN_DEFAULT);
    crm_httpc_close(b.client, on_closed, &b);
    while (!b.closed)
        uv_run(&b.loop, UV_RUN_ONCE);
    int rc = uv_loop_close(&b.loop);

    qsort(b.lat_ms, b.nlat, sizeof(float), cmp_float);
    double p50 = b.nlat ? b.lat_ms[b.nlat / 2] : 0, p99 = b.nlat ? b.lat_ms[(size_t)(b.nlat * 0.99)] : 0;
    printf("%.0f %.3f %.3f %lu %lu\n", (double)b.ok / (double)secs, p50, p99, (unsigned long)b.errors,
           (unsigned long)b.ok);
    free(slots);
    free(b.lat_ms);
    return rc == 0 ? 0 : 1;
}
