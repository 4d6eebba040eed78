#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "metrics.h"

static crm_prom_t *new_writer(size_t initial, size_t max)
{
    crm_prom_t *w = malloc(sizeof(*w));
    assert_non_null(w);
    assert_int_equal(crm_prom_init(w, initial, max), 0);
    return w;
}

static void free_writer(crm_prom_t *w)
{
    crm_prom_dispose(w);
    free(w);
}

/* The text one crm_prom_sample call writes for value, without the name and the trailing newline. */
static void format_value(double value, char *out, size_t size)
{
    crm_prom_t w;
    assert_int_equal(crm_prom_init(&w, 16, 256), 0);
    crm_prom_sample(&w, "x", NULL, 0, value);
    assert_true(w.len >= 3 && w.len - 3 < size);
    assert_memory_equal(w.buf, "x ", 2);
    assert_int_equal(w.buf[w.len - 1], '\n');
    memcpy(out, w.buf + 2, w.len - 3);
    out[w.len - 3] = '\0';
    crm_prom_dispose(&w);
}

static void assert_value_text(double value, const char *expected)
{
    char got[64];
    format_value(value, got, sizeof(got));
    assert_string_equal(got, expected);
}

static void test_family_and_counters(void **state)
{
    crm_prom_t *w = new_writer(16, 4096);
    crm_prom_family(w, "crmd_http_requests_total", "counter", "Requests answered.");
    crm_prom_sample_u64(w, "crmd_http_requests_total", NULL, 0, 42);
    crm_prom_family(w, "crmd:ratio", "gauge", NULL);
    crm_prom_sample(w, "crmd:ratio", NULL, 0, 0.25);
    assert_string_equal(w->buf, "# HELP crmd_http_requests_total Requests answered.\n"
                                "# TYPE crmd_http_requests_total counter\n"
                                "crmd_http_requests_total 42\n"
                                "# TYPE crmd:ratio gauge\n"
                                "crmd:ratio 0.25\n");
    assert_int_equal(w->len, strlen(w->buf));
    assert_int_equal(w->overflow, 0);
    free_writer(w);
}

static void test_help_escaping(void **state)
{
    crm_prom_t *w = new_writer(8, 4096);
    /* Only backslash and newline are escaped in HELP; a double quote stays as it is. */
    crm_prom_family(w, "m", "untyped", "a \\ b\nc \"d\"");
    assert_string_equal(w->buf, "# HELP m a \\\\ b\\nc \"d\"\n"
                                "# TYPE m untyped\n");
    free_writer(w);
}

static void test_gauge_labels_escaped(void **state)
{
    crm_prom_t *w = new_writer(8, 4096);
    const crm_label_t labels[] = {{"path", "a\"b\\c\nd"}, {"empty", ""}, {"plain", "x y,z{}="}};
    crm_prom_family(w, "crmd_pool_connections", "gauge", "Connections.");
    crm_prom_sample(w, "crmd_pool_connections", labels, 3, 7);
    crm_prom_sample(w, "crmd_pool_connections", labels, 1, -2.5);
    assert_string_equal(w->buf, "# HELP crmd_pool_connections Connections.\n"
                                "# TYPE crmd_pool_connections gauge\n"
                                "crmd_pool_connections{path=\"a\\\"b\\\\c\\nd\",empty=\"\",plain=\"x y,z{}=\"} 7\n"
                                "crmd_pool_connections{path=\"a\\\"b\\\\c\\nd\"} -2.5\n");
    free_writer(w);
}

static void test_number_formatting(void **state)
{
    assert_value_text(0, "0");
    assert_value_text(-0.0, "0");
    assert_value_text(1, "1");
    assert_value_text(-3, "-3");
    assert_value_text(12345678901.0, "12345678901");
    assert_value_text(1e15, "1000000000000000");
    /* The largest double below 2^64 is an integer and is still written as digits. */
    assert_value_text(18446744073709549568.0, "18446744073709549568");
    assert_value_text(-9007199254740992.0, "-9007199254740992");
    assert_value_text(18446744073709551616.0, "1.8446744073709552e+19");
    assert_value_text(1e300, "1e+300");
    assert_value_text(0.1, "0.1");
    assert_value_text(0.1 + 0.2, "0.30000000000000004");
    assert_value_text(1.0 / 3.0, "0.3333333333333333");
    assert_value_text(-1.5, "-1.5");
    assert_value_text(0.0005, "0.0005");
    assert_value_text(1e-7, "1e-07");
    assert_value_text(123.456, "123.456");
    assert_value_text(DBL_MAX, "1.7976931348623157e+308");
    assert_value_text(DBL_MIN, "2.2250738585072014e-308");
    assert_value_text(4.9406564584124654e-324, "5e-324");
    assert_value_text(INFINITY, "+Inf");
    assert_value_text(-INFINITY, "-Inf");
    assert_value_text(NAN, "NaN");
}

/*
 * Every finite double must read back as itself, be written in digits when it is an integer below 2^64, and be the
 * shortest "%g" form that does (one significant digit fewer must not round-trip).
 */
static void test_number_round_trip(void **state)
{
    uint64_t x = 0x9E3779B97F4A7C15u;
    int checked = 0;
    for (int i = 0; i < 20000; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double d;
        if (i % 3 == 0) {
            memcpy(&d, &x, sizeof(d));
        } else if (i % 3 == 1) {
            d = (double)(x >> (i % 64)) / 1024.0;
        } else {
            d = (double)(x >> 11) * 0x1.0p-53 * 1000.0;
        }
        if (!isfinite(d))
            continue;
        char text[64];
        format_value(d, text, sizeof(text));
        char *end;
        double back = strtod(text, &end);
        assert_int_equal(*end, '\0');
        assert_true(back == d);
        double mag = fabs(d);
        if (mag < 18446744073709551616.0 && mag == floor(mag)) {
            assert_int_equal(strspn(text, "-0123456789"), strlen(text));
        } else {
            int digits = 0;
            for (const char *p = text; *p != '\0' && *p != 'e'; ++p)
                digits += *p >= '0' && *p <= '9';
            /* Leading zeros of a fraction such as 0.05 are not significant. */
            const char *p = text + (text[0] == '-');
            if (p[0] == '0' && p[1] == '.') {
                for (p += 2, digits -= 1; *p == '0'; ++p)
                    --digits;
            }
            assert_true(digits >= 1 && digits <= 17);
            if (digits > 1) {
                char shorter[320];
                snprintf(shorter, sizeof(shorter), "%.*g", digits - 1, d);
                assert_true(strtod(shorter, NULL) != d);
            }
        }
        ++checked;
    }
    assert_true(checked > 19000);
}

static void test_u64_exact(void **state)
{
    crm_prom_t *w = new_writer(8, 4096);
    const crm_label_t labels[] = {{"kind", "big"}};
    crm_prom_sample_u64(w, "c_total", labels, 1, 9007199254740993u);
    crm_prom_sample_u64(w, "c_total", NULL, 0, UINT64_MAX);
    crm_prom_sample_u64(w, "c_total", NULL, 0, 0);
    assert_string_equal(w->buf, "c_total{kind=\"big\"} 9007199254740993\n"
                                "c_total 18446744073709551615\n"
                                "c_total 0\n");
    free_writer(w);
}

/*
 * Output must not change under a locale whose decimal point is not "." (",", or the multibyte U+066B of ps_AF). Such
 * locales are often not installed; the test is skipped then. To run it anyway:
 *   localedef -i de_DE -f UTF-8 /tmp/loc/de_DE.UTF-8 && LOCPATH=/tmp/loc ./test_metrics
 */
static void test_locale_independent(void **state)
{
    static const char *const comma_locales[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "fr_FR.utf8",
                                                "ps_AF.UTF-8", "de_DE",      "fr_FR"};
    const char *set = NULL;
    for (size_t i = 0; i < sizeof(comma_locales) / sizeof(comma_locales[0]) && set == NULL; ++i)
        set = setlocale(LC_NUMERIC, comma_locales[i]);
    if (set == NULL)
        skip();
    assert_string_not_equal(localeconv()->decimal_point, ".");
    crm_histogram_t h;
    assert_int_equal(crm_histogram_init(&h, crm_latency_buckets_seconds, 2), 0);
    crm_histogram_observe(&h, 0.75);
    crm_prom_t *w = new_writer(8, 4096);
    crm_prom_sample(w, "g", NULL, 0, 0.1);
    crm_prom_sample(w, "g", NULL, 0, 1.0 / 3.0);
    crm_prom_sample(w, "g", NULL, 0, -2.5e-9);
    crm_prom_histogram(w, "h", NULL, 0, &h);
    setlocale(LC_NUMERIC, "C");
    assert_string_equal(w->buf, "g 0.1\n"
                                "g 0.3333333333333333\n"
                                "g -2.5e-09\n"
                                "h_bucket{le=\"0.0005\"} 0\n"
                                "h_bucket{le=\"0.001\"} 0\n"
                                "h_bucket{le=\"+Inf\"} 1\n"
                                "h_sum 0.75\n"
                                "h_count 1\n");
    free_writer(w);
    crm_histogram_dispose(&h);
}

static void test_histogram_output(void **state)
{
    static const double bounds[] = {0.25, 0.5, 1, 10};
    crm_histogram_t h;
    assert_int_equal(crm_histogram_init(&h, bounds, 4), 0);
    crm_histogram_observe(&h, 0.125);
    crm_histogram_observe(&h, 0.25); /* on a bound: counted in that bucket, `le` is inclusive */
    crm_histogram_observe(&h, 0.375);
    crm_histogram_observe(&h, 2);
    crm_histogram_observe(&h, 100);
    crm_histogram_observe(&h, NAN);
    assert_int_equal(h.count, 5);
    assert_true(h.sum == 102.75);

    crm_prom_t *w = new_writer(8, 4096);
    const crm_label_t labels[] = {{"route", "/v1/\"x\""}, {"method", "GET"}};
    crm_prom_family(w, "crmd_http_request_duration_seconds", "histogram", "Latency.");
    crm_prom_histogram(w, "crmd_http_request_duration_seconds", labels, 2, &h);
    assert_string_equal(
        w->buf, "# HELP crmd_http_request_duration_seconds Latency.\n"
                "# TYPE crmd_http_request_duration_seconds histogram\n"
                "crmd_http_request_duration_seconds_bucket{route=\"/v1/\\\"x\\\"\",method=\"GET\",le=\"0.25\"} 2\n"
                "crmd_http_request_duration_seconds_bucket{route=\"/v1/\\\"x\\\"\",method=\"GET\",le=\"0.5\"} 3\n"
                "crmd_http_request_duration_seconds_bucket{route=\"/v1/\\\"x\\\"\",method=\"GET\",le=\"1\"} 3\n"
                "crmd_http_request_duration_seconds_bucket{route=\"/v1/\\\"x\\\"\",method=\"GET\",le=\"10\"} 4\n"
                "crmd_http_request_duration_seconds_bucket{route=\"/v1/\\\"x\\\"\",method=\"GET\",le=\"+Inf\"} 5\n"
                "crmd_http_request_duration_seconds_sum{route=\"/v1/\\\"x\\\"\",method=\"GET\"} 102.75\n"
                "crmd_http_request_duration_seconds_count{route=\"/v1/\\\"x\\\"\",method=\"GET\"} 5\n");
    free_writer(w);
    crm_histogram_dispose(&h);
}

static void test_histogram_no_labels_and_latency_bounds(void **state)
{
    assert_int_equal(crm_latency_buckets_count, 16);
    for (size_t i = 1; i < crm_latency_buckets_count; ++i)
        assert_true(crm_latency_buckets_seconds[i] > crm_latency_buckets_seconds[i - 1]);

    crm_histogram_t h;
    assert_int_equal(crm_histogram_init(&h, crm_latency_buckets_seconds, crm_latency_buckets_count), 0);
    crm_histogram_observe(&h, 0.005); /* exactly the 0.005 bound */
    crm_histogram_observe(&h, 0.0051);
    crm_histogram_observe(&h, 3);
    crm_histogram_observe(&h, 11);
    crm_prom_t *w = new_writer(8, 8192);
    crm_prom_histogram(w, "lat", NULL, 0, &h);
    char expected[2048];
    snprintf(expected, sizeof(expected),
             "lat_bucket{le=\"0.0005\"} 0\n"
             "lat_bucket{le=\"0.001\"} 0\n"
             "lat_bucket{le=\"0.0025\"} 0\n"
             "lat_bucket{le=\"0.005\"} 1\n"
             "lat_bucket{le=\"0.0075\"} 2\n"
             "lat_bucket{le=\"0.01\"} 2\n"
             "lat_bucket{le=\"0.025\"} 2\n"
             "lat_bucket{le=\"0.05\"} 2\n"
             "lat_bucket{le=\"0.075\"} 2\n"
             "lat_bucket{le=\"0.1\"} 2\n"
             "lat_bucket{le=\"0.25\"} 2\n"
             "lat_bucket{le=\"0.5\"} 2\n"
             "lat_bucket{le=\"1\"} 2\n"
             "lat_bucket{le=\"2.5\"} 2\n"
             "lat_bucket{le=\"5\"} 3\n"
             "lat_bucket{le=\"10\"} 3\n"
             "lat_bucket{le=\"+Inf\"} 4\n"
             "lat_sum %.17g\n"
             "lat_count 4\n",
             0.005 + 0.0051 + 3 + 11);
    assert_string_equal(w->buf, expected);
    free_writer(w);
    crm_histogram_dispose(&h);
}

static void test_histogram_bounds_validation(void **state)
{
    static const double ok[] = {1, 2, 3};
    static const double equal[] = {1, 2, 2};
    static const double decreasing[] = {3, 2, 1};
    static const double with_nan[] = {1, NAN, 3};
    static const double with_inf[] = {1, 2, INFINITY};
    static const double with_neg_inf[] = {-INFINITY, 2};
    double many[CRM_HISTOGRAM_MAX_BOUNDS + 1];
    for (size_t i = 0; i < CRM_HISTOGRAM_MAX_BOUNDS + 1; ++i)
        many[i] = (double)i - 10;

    crm_histogram_t h;
    assert_int_equal(crm_histogram_init(&h, NULL, 3), CRM_E_INVAL);
    crm_histogram_dispose(&h);
    assert_int_equal(crm_histogram_init(&h, ok, 0), CRM_E_INVAL);
    crm_histogram_dispose(&h);
    assert_int_equal(crm_histogram_init(&h, equal, 3), CRM_E_INVAL);
    assert_int_equal(crm_histogram_init(&h, decreasing, 3), CRM_E_INVAL);
    assert_int_equal(crm_histogram_init(&h, with_nan, 3), CRM_E_INVAL);
    assert_int_equal(crm_histogram_init(&h, with_inf, 3), CRM_E_INVAL);
    assert_int_equal(crm_histogram_init(&h, with_neg_inf, 2), CRM_E_INVAL);
    assert_int_equal(crm_histogram_init(&h, many, CRM_HISTOGRAM_MAX_BOUNDS + 1), CRM_E_INVAL);
    assert_null(h._buckets);
    crm_histogram_dispose(&h);
    crm_histogram_dispose(NULL);

    assert_int_equal(crm_histogram_init(&h, many, CRM_HISTOGRAM_MAX_BOUNDS), 0);
    crm_histogram_observe(&h, 1000);
    crm_histogram_observe(&h, -1000);
    crm_histogram_observe(&h, -10);
    assert_int_equal(h._buckets[CRM_HISTOGRAM_MAX_BOUNDS], 1);
    assert_int_equal(h._buckets[0], 2);
    crm_histogram_dispose(&h);

    assert_int_equal(crm_histogram_init(&h, ok, 1), 0);
    assert_int_equal(h.nbounds, 1);
    crm_histogram_dispose(&h);
}

static void test_histogram_nan_and_infinities(void **state)
{
    static const double bounds[] = {1, 2};
    crm_histogram_t h;
    assert_int_equal(crm_histogram_init(&h, bounds, 2), 0);
    crm_histogram_observe(&h, NAN);
    crm_histogram_observe(&h, -NAN);
    assert_int_equal(h.count, 0);
    assert_true(h.sum == 0);
    for (size_t i = 0; i <= 2; ++i)
        assert_int_equal(h._buckets[i], 0);

    crm_histogram_observe(&h, 1.5);
    crm_histogram_observe(&h, NAN);
    assert_int_equal(h.count, 1);
    assert_true(h.sum == 1.5);
    assert_int_equal(h._buckets[1], 1);

    crm_histogram_observe(&h, INFINITY);
    assert_int_equal(h._buckets[2], 1);
    crm_histogram_observe(&h, -INFINITY);
    assert_int_equal(h._buckets[0], 1);
    assert_int_equal(h.count, 3);

    crm_prom_t *w = new_writer(8, 4096);
    crm_prom_histogram(w, "h", NULL, 0, &h);
    assert_string_equal(w->buf, "h_bucket{le=\"1\"} 1\n"
                                "h_bucket{le=\"2\"} 2\n"
                                "h_bucket{le=\"+Inf\"} 3\n"
                                "h_sum NaN\n"
                                "h_count 3\n");
    free_writer(w);
    crm_histogram_dispose(&h);
}

static void test_writer_init(void **state)
{
    crm_prom_t w;
    assert_int_equal(crm_prom_init(&w, 0, 10), CRM_E_INVAL);
    crm_prom_dispose(&w);
    assert_int_equal(crm_prom_init(&w, 11, 10), CRM_E_INVAL);
    assert_null(w.buf);
    crm_prom_dispose(&w);
    crm_prom_dispose(NULL);

    assert_int_equal(crm_prom_init(&w, 10, 10), 0);
    assert_int_equal(w.len, 0);
    assert_int_equal(w.cap, 10);
    assert_int_equal(w.max, 10);
    assert_int_equal(w.overflow, 0);
    assert_string_equal(w.buf, "");
    crm_prom_dispose(&w);
}

static void test_writer_grows_to_max(void **state)
{
    /* 23 lines of "g 1000000\n" (10 bytes) need 230 bytes; the writer starts at 4 and may grow to exactly 230. */
    crm_prom_t *w = new_writer(4, 230);
    char expected[256] = "";
    for (int i = 0; i < 23; ++i) {
        crm_prom_sample_u64(w, "g", NULL, 0, 1000000);
        strcat(expected, "g 1000000\n");
        assert_true(w->cap <= w->max);
        assert_true(w->cap >= w->len);
    }
    assert_int_equal(w->overflow, 0);
    assert_int_equal(w->len, 230);
    assert_string_equal(w->buf, expected);
    free_writer(w);
}

static void test_writer_overflow(void **state)
{
    crm_prom_t *w = new_writer(8, 41);
    crm_prom_family(w, "a_total", "counter", NULL);    /* 23 bytes */
    crm_prom_sample_u64(w, "a_total", NULL, 0, 12345); /* 14 bytes: 37 in all */
    assert_int_equal(w->len, 37);
    assert_int_equal(w->overflow, 0);

    /* Would end at 47: dropped whole, even though the first 4 of its bytes would fit. */
    crm_prom_sample_u64(w, "a_total", NULL, 0, 1);
    assert_int_equal(w->overflow, 1);
    assert_int_equal(w->len, 37);
    assert_true(w->cap <= 41);
    assert_string_equal(w->buf, "# TYPE a_total counter\n"
                                "a_total 12345\n");

    /* "b 1\n" would fit in the remaining 4 bytes, but everything after an overflow is dropped. */
    crm_prom_sample_u64(w, "b", NULL, 0, 1);
    crm_prom_family(w, "b", "gauge", "x");
    crm_prom_sample(w, "b", NULL, 0, 1);
    assert_int_equal(w->len, 37);
    assert_int_equal(w->overflow, 1);
    assert_string_equal(w->buf, "# TYPE a_total counter\n"
                                "a_total 12345\n");
    free_writer(w);
}

static void test_writer_overflow_mid_histogram(void **state)
{
    static const double bounds[] = {1, 2, 3};
    crm_histogram_t h;
    assert_int_equal(crm_histogram_init(&h, bounds, 3), 0);
    crm_prom_t *w = new_writer(4, 60);
    crm_prom_sample_u64(w, "first", NULL, 0, 1);
    /* The histogram's lines fit partly; the call leaves none of them behind. */
    crm_prom_histogram(w, "h", NULL, 0, &h);
    assert_int_equal(w->overflow, 1);
    assert_string_equal(w->buf, "first 1\n");
    assert_int_equal(w->len, 8);
    free_writer(w);
    crm_histogram_dispose(&h);
}

static void test_writer_exact_fit(void **state)
{
    crm_prom_t *w = new_writer(1, 23);
    crm_prom_family(w, "a_total", "counter", NULL);
    assert_int_equal(w->overflow, 0);
    assert_int_equal(w->len, 23);
    assert_int_equal(w->cap, 23);
    crm_prom_sample_u64(w, "a", NULL, 0, 0);
    assert_int_equal(w->overflow, 1);
    assert_int_equal(w->len, 23);
    assert_string_equal(w->buf, "# TYPE a_total counter\n");
    free_writer(w);
}

typedef struct {
    char order[CRM_METRICS_MAX_COLLECTORS + 1];
    size_t n;
} order_log_t;

typedef struct {
    order_log_t *log;
    char id;
    int big;
} collector_ctx_t;

static void collect(void *ctx, crm_prom_t *w)
{
    collector_ctx_t *c = ctx;
    c->log->order[c->log->n++] = c->id;
    const crm_label_t labels[] = {{"id", (char[]){c->id, '\0'}}};
    if (c->big) {
        for (int i = 0; i < 100; ++i)
            crm_prom_sample_u64(w, "big", labels, 1, (uint64_t)i);
    } else {
        crm_prom_sample_u64(w, "m", labels, 1, 1);
    }
}

static void test_render_order(void **state)
{
    crm_metrics_t m;
    order_log_t log = {{0}, 0};
    collector_ctx_t ctxs[3] = {{&log, 'c', 0}, {&log, 'a', 0}, {&log, 'b', 0}};
    crm_metrics_init(&m);
    for (int i = 0; i < 3; ++i)
        assert_int_equal(crm_metrics_register(&m, collect, &ctxs[i]), 0);
    crm_prom_t *w = new_writer(8, 4096);
    assert_int_equal(crm_metrics_render(&m, w), 0);
    assert_string_equal(log.order, "cab");
    assert_string_equal(w->buf, "m{id=\"c\"} 1\n"
                                "m{id=\"a\"} 1\n"
                                "m{id=\"b\"} 1\n");
    free_writer(w);

    /* An empty registry renders nothing, successfully. */
    crm_metrics_init(&m);
    w = new_writer(8, 16);
    assert_int_equal(crm_metrics_render(&m, w), 0);
    assert_int_equal(w->len, 0);
    free_writer(w);
}

static void test_render_too_large(void **state)
{
    crm_metrics_t m;
    order_log_t log = {{0}, 0};
    collector_ctx_t ctxs[3] = {{&log, 'a', 0}, {&log, 'b', 1}, {&log, 'c', 0}};
    crm_metrics_init(&m);
    for (int i = 0; i < 3; ++i)
        assert_int_equal(crm_metrics_register(&m, collect, &ctxs[i]), 0);
    crm_prom_t *w = new_writer(8, 256);
    assert_int_equal(crm_metrics_render(&m, w), CRM_E_TOO_LARGE);
    assert_int_equal(w->overflow, 1);
    assert_true(w->len <= 256);
    assert_int_equal(w->buf[w->len - 1], '\n');
    assert_int_equal(strncmp(w->buf, "m{id=\"a\"} 1\nbig{id=\"b\"} 0\n", 26), 0);
    /* The collector after the overflow was skipped. */
    assert_string_equal(log.order, "ab");
    /* Rendering into a writer that has overflowed runs nothing and keeps failing. */
    assert_int_equal(crm_metrics_render(&m, w), CRM_E_TOO_LARGE);
    assert_string_equal(log.order, "ab");
    free_writer(w);
}

static void test_register_limits(void **state)
{
    crm_metrics_t m;
    order_log_t log = {{0}, 0};
    collector_ctx_t ctx = {&log, 'x', 0};
    crm_metrics_init(&m);
    assert_int_equal(crm_metrics_register(&m, NULL, &ctx), CRM_E_INVAL);
    for (int i = 0; i < CRM_METRICS_MAX_COLLECTORS; ++i)
        assert_int_equal(crm_metrics_register(&m, collect, &ctx), 0);
    assert_int_equal(crm_metrics_register(&m, collect, &ctx), CRM_E_LIMIT);
    crm_prom_t *w = new_writer(64, 4096);
    assert_int_equal(crm_metrics_render(&m, w), 0);
    assert_int_equal(log.n, CRM_METRICS_MAX_COLLECTORS);
    free_writer(w);
}

static void test_counter_vec_basic(void **state)
{
    static const char *const names[] = {"route", "status"};
    crm_counter_vec_t v;
    assert_int_equal(crm_counter_vec_init(&v, names, 2, 8), 0);

    const char *k1[] = {"/v1/contacts", "2xx"};
    const char *k2[] = {"/v1/contacts", "5xx"};
    const char *k3[] = {"/v1/a\"b", "4xx"};
    crm_counter_vec_add(&v, k1, 1);
    crm_counter_vec_add(&v, k2, 3);
    /* The same key through different pointers is the same series. */
    char *route = strdup("/v1/contacts");
    char *status = strdup("2xx");
    assert_non_null(route);
    assert_non_null(status);
    const char *k1_copy[] = {route, status};
    crm_counter_vec_add(&v, k1_copy, 10);
    crm_counter_vec_add(&v, k3, 0);
    crm_counter_vec_add(&v, k1, UINT64_C(9007199254740993) - 11);
    free(route);
    free(status);

    crm_prom_t *w = new_writer(8, 4096);
    crm_prom_family(w, "crmd_http_responses_total", "counter", "Responses.");
    crm_counter_vec_write(&v, w, "crmd_http_responses_total");
    assert_string_equal(w->buf, "# HELP crmd_http_responses_total Responses.\n"
                                "# TYPE crmd_http_responses_total counter\n"
                                "crmd_http_responses_total{route=\"/v1/contacts\",status=\"2xx\"} 9007199254740993\n"
                                "crmd_http_responses_total{route=\"/v1/contacts\",status=\"5xx\"} 3\n"
                                "crmd_http_responses_total{route=\"/v1/a\\\"b\",status=\"4xx\"} 0\n");
    free_writer(w);
    crm_counter_vec_dispose(&v);
}

static void test_counter_vec_overflow(void **state)
{
    static const char *const names[] = {"a", "b", "c"};
    crm_counter_vec_t v;
    assert_int_equal(crm_counter_vec_init(&v, names, 3, 2), 0);
    const char *k1[] = {"1", "x", "y"};
    const char *k2[] = {"2", "x", "y"};
    const char *k3[] = {"3", "x", "y"};
    const char *k4[] = {"1", "x", "z"};

    /* Before anything reaches it, the overflow series is not written. */
    crm_counter_vec_add(&v, k1, 1);
    crm_counter_vec_add(&v, k2, 2);
    crm_prom_t *w = new_writer(8, 4096);
    crm_counter_vec_write(&v, w, "c_total");
    assert_string_equal(w->buf, "c_total{a=\"1\",b=\"x\",c=\"y\"} 1\n"
                                "c_total{a=\"2\",b=\"x\",c=\"y\"} 2\n");
    free_writer(w);

    crm_counter_vec_add(&v, k3, 4);
    crm_counter_vec_add(&v, k4, 8);
    crm_counter_vec_add(&v, k1, 16); /* existing series still count normally */
    crm_counter_vec_add(&v, k3, 32);
    w = new_writer(8, 4096);
    crm_counter_vec_write(&v, w, "c_total");
    assert_string_equal(w->buf, "c_total{a=\"1\",b=\"x\",c=\"y\"} 17\n"
                                "c_total{a=\"2\",b=\"x\",c=\"y\"} 2\n"
                                "c_total{a=\"__overflow__\",b=\"__overflow__\",c=\"__overflow__\"} 44\n");
    free_writer(w);
    crm_counter_vec_dispose(&v);
}

static void test_counter_vec_overflow_zero_delta(void **state)
{
    static const char *const names[] = {"k"};
    crm_counter_vec_t v;
    assert_int_equal(crm_counter_vec_init(&v, names, 1, 1), 0);
    const char *k1[] = {"a"};
    const char *k2[] = {"b"};
    crm_counter_vec_add(&v, k1, 5);
    crm_counter_vec_add(&v, k2, 0);
    crm_prom_t *w = new_writer(8, 4096);
    crm_counter_vec_write(&v, w, "z");
    assert_string_equal(w->buf, "z{k=\"a\"} 5\n"
                                "z{k=\"__overflow__\"} 0\n");
    free_writer(w);
    crm_counter_vec_dispose(&v);
}

static void test_counter_vec_no_labels(void **state)
{
    crm_counter_vec_t v;
    assert_int_equal(crm_counter_vec_init(&v, NULL, 0, 1), 0);
    crm_prom_t *w = new_writer(8, 4096);
    crm_counter_vec_write(&v, w, "n_total");
    assert_string_equal(w->buf, "");
    crm_counter_vec_add(&v, NULL, 2);
    crm_counter_vec_add(&v, NULL, 3);
    crm_counter_vec_write(&v, w, "n_total");
    assert_string_equal(w->buf, "n_total 5\n");
    free_writer(w);
    crm_counter_vec_dispose(&v);
}

/* Many series with similar keys: every one is found again (hash collisions and probing), in creation order. */
static void test_counter_vec_many(void **state)
{
    enum { N = 500 };
    static const char *const names[] = {"a", "b"};
    static char keys[N][2][8];
    crm_counter_vec_t v;
    assert_int_equal(crm_counter_vec_init(&v, names, 2, N), 0);
    for (int round = 0; round < 2; ++round) {
        for (int i = 0; i < N; ++i) {
            snprintf(keys[i][0], sizeof(keys[i][0]), "%d", i / 7);
            snprintf(keys[i][1], sizeof(keys[i][1]), "%d", i % 7);
            const char *k[] = {keys[i][0], keys[i][1]};
            crm_counter_vec_add(&v, k, (uint64_t)i + 1);
        }
    }
    const char *extra[] = {"new", "key"};
    crm_counter_vec_add(&v, extra, 1);

    crm_prom_t *w = new_writer(64, 1 << 16);
    crm_counter_vec_write(&v, w, "m");
    char *expected = malloc(1 << 16);
    assert_non_null(expected);
    size_t len = 0;
    for (int i = 0; i < N; ++i)
        len +=
            (size_t)snprintf(expected + len, (1 << 16) - len, "m{a=\"%d\",b=\"%d\"} %d\n", i / 7, i % 7, 2 * (i + 1));
    snprintf(expected + len, (1 << 16) - len, "m{a=\"__overflow__\",b=\"__overflow__\"} 1\n");
    assert_string_equal(w->buf, expected);
    free(expected);
    free_writer(w);
    crm_counter_vec_dispose(&v);
}

static void test_counter_vec_init_errors(void **state)
{
    static const char *const names[] = {"a", "b", "c", "d"};
    crm_counter_vec_t v;
    assert_int_equal(crm_counter_vec_init(&v, names, 4, 10), CRM_E_INVAL);
    crm_counter_vec_dispose(&v);
    assert_int_equal(crm_counter_vec_init(&v, names, 1, 0), CRM_E_INVAL);
    assert_int_equal(crm_counter_vec_init(&v, NULL, 1, 10), CRM_E_INVAL);
    assert_int_equal(crm_counter_vec_init(&v, names, 1, CRM_COUNTER_VEC_MAX_SERIES + 1), CRM_E_INVAL);
    crm_counter_vec_dispose(&v);
    crm_counter_vec_dispose(NULL);
    assert_int_equal(crm_counter_vec_init(&v, names, 3, CRM_COUNTER_VEC_MAX_SERIES), 0);
    crm_counter_vec_dispose(&v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_family_and_counters),
        cmocka_unit_test(test_help_escaping),
        cmocka_unit_test(test_gauge_labels_escaped),
        cmocka_unit_test(test_number_formatting),
        cmocka_unit_test(test_number_round_trip),
        cmocka_unit_test(test_u64_exact),
        cmocka_unit_test(test_locale_independent),
        cmocka_unit_test(test_histogram_output),
        cmocka_unit_test(test_histogram_no_labels_and_latency_bounds),
        cmocka_unit_test(test_histogram_bounds_validation),
        cmocka_unit_test(test_histogram_nan_and_infinities),
        cmocka_unit_test(test_writer_init),
        cmocka_unit_test(test_writer_grows_to_max),
        cmocka_unit_test(test_writer_overflow),
        cmocka_unit_test(test_writer_overflow_mid_histogram),
        cmocka_unit_test(test_writer_exact_fit),
        cmocka_unit_test(test_render_order),
        cmocka_unit_test(test_render_too_large),
        cmocka_unit_test(test_register_limits),
        cmocka_unit_test(test_counter_vec_basic),
        cmocka_unit_test(test_counter_vec_overflow),
        cmocka_unit_test(test_counter_vec_overflow_zero_delta),
        cmocka_unit_test(test_counter_vec_no_labels),
        cmocka_unit_test(test_counter_vec_many),
        cmocka_unit_test(test_counter_vec_init_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
