#include "metrics.h"

#include "err.h"

#include <assert.h>
#include <locale.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room for any number this module writes: "%.17g" of a double needs at most 24 bytes, a uint64_t 20 digits. */
#define NUMBER_MAX 32

/*
 * Names come from the program text, so a bad one is a programming error caught by assert() in debug builds. The
 * checkers are only compiled where assert() uses them, so release builds carry no dead code.
 */
#ifndef NDEBUG
static int is_name_char(char c, int first, int allow_colon)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':'))
        return 1;
    return !first && c >= '0' && c <= '9';
}

static int valid_name(const char *name, int allow_colon)
{
    if (name == NULL || name[0] == '\0')
        return 0;
    for (size_t i = 0; name[i] != '\0'; ++i) {
        if (!is_name_char(name[i], i == 0, allow_colon))
            return 0;
    }
    return 1;
}

static int valid_metric_name(const char *name)
{
    return valid_name(name, 1);
}

static int valid_labels(const crm_label_t *labels, size_t nlabels)
{
    if (nlabels != 0 && labels == NULL)
        return 0;
    for (size_t i = 0; i < nlabels; ++i) {
        /* Names starting with "__" are reserved for Prometheus itself. */
        if (!valid_name(labels[i].name, 0) || strncmp(labels[i].name, "__", 2) == 0 || labels[i].value == NULL)
            return 0;
    }
    return 1;
}

static int valid_type(const char *type)
{
    static const char *const types[] = {"counter", "gauge", "histogram", "summary", "untyped"};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); ++i) {
        if (type != NULL && strcmp(type, types[i]) == 0)
            return 1;
    }
    return 0;
}
#endif

/* Histograms. */

const double crm_latency_buckets_seconds[] = {0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05,
                                              0.075,  0.1,   0.25,   0.5,   1,      2.5,  5,     10};
const size_t crm_latency_buckets_count = sizeof(crm_latency_buckets_seconds) / sizeof(crm_latency_buckets_seconds[0]);

int crm_histogram_init(crm_histogram_t *h, const double *bounds, size_t nbounds)
{
    *h = (crm_histogram_t){0};
    if (bounds == NULL || nbounds == 0 || nbounds > CRM_HISTOGRAM_MAX_BOUNDS)
        return CRM_E_INVAL;
    for (size_t i = 0; i < nbounds; ++i) {
        if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
            return CRM_E_INVAL;
    }
    h->_buckets = calloc(nbounds + 1, sizeof(h->_buckets[0]));
    if (h->_buckets == NULL)
        return CRM_E_NOMEM;
    h->bounds = bounds;
    h->nbounds = nbounds;
    return 0;
}

void crm_histogram_dispose(crm_histogram_t *h)
{
    if (h == NULL)
        return;
    free(h->_buckets);
    h->_buckets = NULL;
}

void crm_histogram_observe(crm_histogram_t *h, double v)
{
    if (isnan(v))
        return;
    /* The first bound >= v; nbounds (the +Inf bucket) when every bound is below v. */
    size_t lo = 0, hi = h->nbounds;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (h->bounds[mid] >= v)
            hi = mid;
        else
            lo = mid + 1;
    }
    ++h->_buckets[lo];
    ++h->count;
    h->sum += v;
}

/* Number formatting. */

static size_t format_u64(char *out, uint64_t v)
{
    char rev[NUMBER_MAX];
    size_t n = 0;
    do {
        rev[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; ++i)
        out[i] = rev[n - 1 - i];
    out[n] = '\0';
    return n;
}

/*
 * printf writes the decimal point of the LC_NUMERIC locale, which may be "," or even a multibyte sequence. Everything
 * else "%g" produces for a finite value is ASCII digits, signs and 'e', so any other run of bytes is the decimal
 * point and is replaced by '.'.
 */
static size_t normalize_decimal_point(char *dst, const char *src)
{
    size_t n = 0;
    int in_point = 0;
    for (; *src != '\0' && n < NUMBER_MAX - 1; ++src) {
        char c = *src;
        if ((c >= '0' && c <= '9') || c == '-' || c == '+' || c == 'e') {
            dst[n++] = c;
            in_point = 0;
        } else if (!in_point) {
            dst[n++] = '.';
            in_point = 1;
        }
    }
    dst[n] = '\0';
    return n;
}

/*
 * The "C" locale, for reading candidates back with strtod_l whatever locale the process or thread has set. Created
 * once and kept for the life of the process; concurrent first calls race with a compare-and-swap and the loser frees
 * its copy. Returns (locale_t)0 if it cannot be created.
 */
static _Atomic(locale_t) c_numeric_locale;

static locale_t get_c_locale(void)
{
    locale_t loc = atomic_load_explicit(&c_numeric_locale, memory_order_acquire);
    if (loc != (locale_t)0)
        return loc;
    locale_t fresh = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (fresh == (locale_t)0)
        return (locale_t)0;
    locale_t expected = (locale_t)0;
    if (atomic_compare_exchange_strong_explicit(&c_numeric_locale, &expected, fresh, memory_order_acq_rel,
                                                memory_order_acquire))
        return fresh;
    freelocale(fresh);
    return expected;
}

/*
 * Writes v as the exposition format reads it (Go's strconv.ParseFloat): integers below 2^64 in magnitude as digits,
 * other finite values as the shortest "%g" form that reads back as exactly v, falling back to 17 significant
 * digits, which always round-trip (and are used directly if the C locale cannot be created).
 */
static size_t format_double(char *out, double v)
{
    if (isnan(v))
        return (size_t)snprintf(out, NUMBER_MAX, "NaN");
    if (isinf(v))
        return (size_t)snprintf(out, NUMBER_MAX, v > 0 ? "+Inf" : "-Inf");

    double mag = v < 0 ? -v : v;
    if (mag < 18446744073709551616.0) {
        uint64_t u = (uint64_t)mag;
        if ((double)u == mag) {
            /* -0.0 is written as 0, which Prometheus reads as the same value. */
            if (v < 0 && u != 0) {
                out[0] = '-';
                return 1 + format_u64(out + 1, u);
            }
            return format_u64(out, u);
        }
    }

    locale_t loc = get_c_locale();
    char raw[64];
    size_t n = 0;
    for (int prec = loc != (locale_t)0 ? 1 : 17; prec <= 17; ++prec) {
        snprintf(raw, sizeof(raw), "%.*g", prec, v);
        n = normalize_decimal_point(out, raw);
        if (loc != (locale_t)0 && strtod_l(out, NULL, loc) == v)
            break;
    }
    return n;
}

/* The bounded writer. */

int crm_prom_init(crm_prom_t *w, size_t initial, size_t max)
{
    *w = (crm_prom_t){0};
    if (initial == 0 || initial > max || max == SIZE_MAX)
        return CRM_E_INVAL;
    w->buf = malloc(initial + 1);
    if (w->buf == NULL)
        return CRM_E_NOMEM;
    w->buf[0] = '\0';
    w->cap = initial;
    w->max = max;
    return 0;
}

void crm_prom_dispose(crm_prom_t *w)
{
    if (w == NULL)
        return;
    free(w->buf);
    w->buf = NULL;
    w->len = w->cap = 0;
}

static void put(crm_prom_t *w, const char *s, size_t n)
{
    if (w->overflow)
        return;
    if (n > w->max - w->len) {
        w->overflow = 1;
        return;
    }
    if (w->len + n > w->cap) {
        size_t cap = w->cap;
        while (cap < w->len + n)
            cap = cap > w->max / 2 ? w->max : cap * 2;
        char *buf = realloc(w->buf, cap + 1);
        if (buf == NULL) {
            w->overflow = 1;
            w->_nomem = 1;
            return;
        }
        w->buf = buf;
        w->cap = cap;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    w->buf[w->len] = '\0';
}

static void put_str(crm_prom_t *w, const char *s)
{
    put(w, s, strlen(s));
}

/* Writes s with backslash and newline escaped, and double quote too when in_label_value (the format's two rules). */
static void put_escaped(crm_prom_t *w, const char *s, int in_label_value)
{
    const char *run = s;
    for (; *s != '\0'; ++s) {
        const char *esc;
        if (*s == '\\')
            esc = "\\\\";
        else if (*s == '\n')
            esc = "\\n";
        else if (*s == '"' && in_label_value)
            esc = "\\\"";
        else
            continue;
        put(w, run, (size_t)(s - run));
        put(w, esc, 2);
        run = s + 1;
    }
    put(w, run, (size_t)(s - run));
}

/*
 * Every public writer call is all-or-nothing: begin notes where its text starts, and end removes that text again if
 * the call overflowed, so the buffer only ever holds whole lines. begin returns 0 when an earlier call overflowed.
 */
static int begin(crm_prom_t *w, size_t *start)
{
    *start = w->len;
    return !w->overflow;
}

static void end(crm_prom_t *w, size_t start)
{
    if (w->overflow) {
        w->len = start;
        w->buf[start] = '\0';
    }
}

/* One sample line; suffix ("_bucket", ...) is appended to name, and le, when not NULL, is added as the last label. */
static void put_sample(crm_prom_t *w, const char *name, const char *suffix, const crm_label_t *labels, size_t nlabels,
                       const char *le, const char *value, size_t value_len)
{
    assert(valid_metric_name(name));
    assert(valid_labels(labels, nlabels));
    put_str(w, name);
    put_str(w, suffix);
    if (nlabels != 0 || le != NULL) {
        put(w, "{", 1);
        for (size_t i = 0; i < nlabels; ++i) {
            if (i != 0)
                put(w, ",", 1);
            put_str(w, labels[i].name);
            put(w, "=\"", 2);
            put_escaped(w, labels[i].value, 1);
            put(w, "\"", 1);
        }
        if (le != NULL) {
            if (nlabels != 0)
                put(w, ",", 1);
            put(w, "le=\"", 4);
            put_str(w, le);
            put(w, "\"", 1);
        }
        put(w, "}", 1);
    }
    put(w, " ", 1);
    put(w, value, value_len);
    put(w, "\n", 1);
}

void crm_prom_family(crm_prom_t *w, const char *name, const char *type, const char *help)
{
    size_t start;
    assert(valid_metric_name(name));
    assert(valid_type(type));
    if (!begin(w, &start))
        return;
    if (help != NULL) {
        put(w, "# HELP ", 7);
        put_str(w, name);
        put(w, " ", 1);
        put_escaped(w, help, 0);
        put(w, "\n", 1);
    }
    put(w, "# TYPE ", 7);
    put_str(w, name);
    put(w, " ", 1);
    put_str(w, type);
    put(w, "\n", 1);
    end(w, start);
}

void crm_prom_sample(crm_prom_t *w, const char *name, const crm_label_t *labels, size_t nlabels, double value)
{
    size_t start;
    char num[NUMBER_MAX];
    if (!begin(w, &start))
        return;
    size_t n = format_double(num, value);
    put_sample(w, name, "", labels, nlabels, NULL, num, n);
    end(w, start);
}

void crm_prom_sample_u64(crm_prom_t *w, const char *name, const crm_label_t *labels, size_t nlabels, uint64_t value)
{
    size_t start;
    char num[NUMBER_MAX];
    if (!begin(w, &start))
        return;
    size_t n = format_u64(num, value);
    put_sample(w, name, "", labels, nlabels, NULL, num, n);
    end(w, start);
}

void crm_prom_histogram(crm_prom_t *w, const char *name, const crm_label_t *labels, size_t nlabels,
                        const crm_histogram_t *h)
{
    size_t start;
    char le[NUMBER_MAX], num[NUMBER_MAX];
    uint64_t cumulative = 0;
#ifndef NDEBUG
    for (size_t i = 0; i < nlabels; ++i)
        assert(labels[i].name == NULL || strcmp(labels[i].name, "le") != 0);
#endif
    if (!begin(w, &start))
        return;
    for (size_t i = 0; i <= h->nbounds; ++i) {
        cumulative += h->_buckets[i];
        if (i < h->nbounds)
            format_double(le, h->bounds[i]);
        else
            strcpy(le, "+Inf");
        size_t n = format_u64(num, cumulative);
        put_sample(w, name, "_bucket", labels, nlabels, le, num, n);
    }
    size_t n = format_double(num, h->sum);
    put_sample(w, name, "_sum", labels, nlabels, NULL, num, n);
    n = format_u64(num, h->count);
    put_sample(w, name, "_count", labels, nlabels, NULL, num, n);
    end(w, start);
}

/* The collector registry. */

void crm_metrics_init(crm_metrics_t *m)
{
    m->_count = 0;
}

int crm_metrics_register(crm_metrics_t *m, crm_metrics_collect_fn fn, void *ctx)
{
    if (fn == NULL)
        return CRM_E_INVAL;
    if (m->_count == CRM_METRICS_MAX_COLLECTORS)
        return CRM_E_LIMIT;
    m->_collectors[m->_count].fn = fn;
    m->_collectors[m->_count].ctx = ctx;
    ++m->_count;
    return 0;
}

int crm_metrics_render(crm_metrics_t *m, crm_prom_t *w)
{
    for (size_t i = 0; i < m->_count && !w->overflow; ++i)
        m->_collectors[i].fn(m->_collectors[i].ctx, w);
    if (w->_nomem)
        return CRM_E_NOMEM;
    if (w->overflow)
        return CRM_E_TOO_LARGE;
    return 0;
}

/* Label-keyed counters. */

struct st_crm_counter_vec_series_t {
    const char *values[CRM_COUNTER_VEC_MAX_LABELS];
    uint32_t hash;
    uint64_t value;
};

static const char overflow_value[] = "__overflow__";

/* FNV-1a over the values' bytes, each followed by a NUL so ("ab", "c") and ("a", "bc") differ. */
static uint32_t hash_values(const char *const *values, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; ++i) {
        const unsigned char *p = (const unsigned char *)values[i];
        do {
            h ^= *p;
            h *= 16777619u;
        } while (*p++ != '\0');
    }
    return h;
}

static int same_values(const char *const *a, const char *const *b, size_t n)
{
    for (size_t i = 0; i < n; ++i) {
        if (a[i] != b[i] && strcmp(a[i], b[i]) != 0)
            return 0;
    }
    return 1;
}

int crm_counter_vec_init(crm_counter_vec_t *v, const char *const *label_names, size_t nlabels, size_t max_series)
{
    *v = (crm_counter_vec_t){0};
    if (nlabels > CRM_COUNTER_VEC_MAX_LABELS || (nlabels != 0 && label_names == NULL) || max_series == 0 ||
        max_series > CRM_COUNTER_VEC_MAX_SERIES)
        return CRM_E_INVAL;
#ifndef NDEBUG
    for (size_t i = 0; i < nlabels; ++i)
        assert(valid_name(label_names[i], 0) && strncmp(label_names[i], "__", 2) != 0);
#endif
    /* At most half full, so a probe always reaches an empty slot quickly. */
    size_t slots = 1;
    while (slots < 2 * max_series)
        slots *= 2;
    v->_series = calloc(max_series, sizeof(v->_series[0]));
    v->_index = calloc(slots, sizeof(v->_index[0]));
    if (v->_series == NULL || v->_index == NULL) {
        crm_counter_vec_dispose(v);
        return CRM_E_NOMEM;
    }
    v->_label_names = label_names;
    v->_nlabels = nlabels;
    v->_max_series = max_series;
    v->_index_mask = slots - 1;
    return 0;
}

void crm_counter_vec_dispose(crm_counter_vec_t *v)
{
    if (v == NULL)
        return;
    free(v->_series);
    free(v->_index);
    v->_series = NULL;
    v->_index = NULL;
    v->_nseries = 0;
}

void crm_counter_vec_add(crm_counter_vec_t *v, const char *const *label_values, uint64_t delta)
{
#ifndef NDEBUG
    for (size_t i = 0; i < v->_nlabels; ++i)
        assert(label_values != NULL && label_values[i] != NULL);
#endif
    uint32_t hash = hash_values(label_values, v->_nlabels);
    size_t slot = hash & v->_index_mask;
    for (; v->_index[slot] != 0; slot = (slot + 1) & v->_index_mask) {
        crm_counter_vec_series_t *s = &v->_series[v->_index[slot] - 1];
        if (s->hash == hash && same_values(s->values, label_values, v->_nlabels)) {
            s->value += delta;
            return;
        }
    }
    if (v->_nseries == v->_max_series) {
        v->_overflow_value += delta;
        v->_overflow_used = 1;
        return;
    }
    crm_counter_vec_series_t *s = &v->_series[v->_nseries++];
    for (size_t i = 0; i < v->_nlabels; ++i)
        s->values[i] = label_values[i];
    s->hash = hash;
    s->value = delta;
    v->_index[slot] = (uint32_t)v->_nseries;
}

void crm_counter_vec_write(const crm_counter_vec_t *v, crm_prom_t *w, const char *name)
{
    size_t start;
    crm_label_t labels[CRM_COUNTER_VEC_MAX_LABELS];
    char num[NUMBER_MAX];
    if (!begin(w, &start))
        return;
    for (size_t i = 0; i < v->_nlabels; ++i)
        labels[i].name = v->_label_names[i];
    for (size_t k = 0; k < v->_nseries; ++k) {
        const crm_counter_vec_series_t *s = &v->_series[k];
        for (size_t i = 0; i < v->_nlabels; ++i)
            labels[i].value = s->values[i];
        size_t n = format_u64(num, s->value);
        put_sample(w, name, "", labels, v->_nlabels, NULL, num, n);
    }
    if (v->_overflow_used) {
        for (size_t i = 0; i < v->_nlabels; ++i)
            labels[i].value = overflow_value;
        size_t n = format_u64(num, v->_overflow_value);
        put_sample(w, name, "", labels, v->_nlabels, NULL, num, n);
    }
    end(w, start);
}
