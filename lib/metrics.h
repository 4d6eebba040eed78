/*
 * Metrics primitives and the Prometheus text exposition format, version 0.0.4.
 *
 * Hot paths never touch this module's text machinery: each module keeps plain fields of its own (uint64_t counters
 * it increments, figures it can read on demand for gauges, crm_histogram_t for latencies) and registers one collector
 * callback at start-up. A scrape of /metrics calls crm_metrics_render, which runs every collector in registration
 * order; each collector writes its families with crm_prom_family and its samples with crm_prom_sample*.
 *
 * Threading: nothing here locks. Every object belongs to the thread that updates it (the loop thread in crmd); a
 * collector must only read state owned by the thread that renders. Number formatting is thread-safe and does not
 * depend on the process or thread locale (setlocale/uselocale).
 *
 * Names: metric names must match [a-zA-Z_:][a-zA-Z0-9_:]* and label names [a-zA-Z_][a-zA-Z0-9_]*. They come from
 * the program text, never from input, so they are checked with assert() in debug builds and not validated at run
 * time. Label values and HELP texts may be anything and are escaped as the format requires.
 */
#ifndef CRM_METRICS_H
#define CRM_METRICS_H

#include <stddef.h>
#include <stdint.h>

/*
 * A histogram with fixed, cumulative-on-output buckets.
 *
 * Observations are counted in the first bucket whose upper bound is >= the value (Prometheus `le` is inclusive);
 * values above the last bound go to the implicit +Inf bucket. NaN is ignored (neither counted nor summed); +Inf and
 * -Inf are counted in the +Inf and first bucket respectively and make `sum` infinite, as in the reference clients.
 */
typedef struct st_crm_histogram_t {
    const double *bounds; /* borrowed, strictly increasing upper bounds; usually a static array */
    size_t nbounds;
    uint64_t *_buckets; /* nbounds + 1 non-cumulative counts, the last is the +Inf bucket */
    uint64_t count;
    double sum;
} crm_histogram_t;

#define CRM_HISTOGRAM_MAX_BOUNDS 64

/*
 * Initialises h with the given bucket upper bounds, which are not copied: the array must outlive h (a static array).
 * Returns CRM_E_INVAL unless there are 1..CRM_HISTOGRAM_MAX_BOUNDS finite, strictly increasing bounds, CRM_E_NOMEM if
 * the bucket array cannot be allocated. On failure h is left in a state crm_histogram_dispose accepts.
 */
int crm_histogram_init(crm_histogram_t *h, const double *bounds, size_t nbounds);

/* Frees the bucket array. Accepts NULL and a histogram whose init failed. */
void crm_histogram_dispose(crm_histogram_t *h);

/* Records one observation: a binary search over the bounds, no allocation. NaN is ignored. */
void crm_histogram_observe(crm_histogram_t *h, double v);

/* Default buckets for request and dependency latencies in seconds: 0.5 ms .. 10 s, 16 bounds. */
extern const double crm_latency_buckets_seconds[];
extern const size_t crm_latency_buckets_count;

/*
 * A bounded text writer for the exposition format.
 *
 * The buffer grows (doubling) up to `max` bytes of text and is always NUL-terminated after `len` bytes, so `buf` can
 * be used as a C string; the allocation is one byte larger than `cap` for the terminator. A write that would take
 * the text beyond `max`, or whose growth fails to allocate, sets `overflow` and is dropped; so is every later write.
 * Each crm_prom_* call is all-or-nothing: when it overflows, the text it had already appended is removed again, so
 * `buf` always holds whole lines and `len` never exceeds `max`.
 */
typedef struct st_crm_prom_t {
    char *buf;
    size_t len, cap, max;
    int overflow;
    int _nomem; /* the overflow was an allocation failure, not the size limit */
} crm_prom_t;

/*
 * Allocates `initial` bytes (plus the terminator). Returns CRM_E_INVAL unless 0 < initial <= max, CRM_E_NOMEM if the
 * allocation fails. On failure w is left in a state crm_prom_dispose accepts.
 */
int crm_prom_init(crm_prom_t *w, size_t initial, size_t max);

/* Frees the buffer. Accepts NULL and a writer whose init failed. */
void crm_prom_dispose(crm_prom_t *w);

/*
 * Writes a family header: "# HELP name help\n# TYPE name type\n". type is one of "counter", "gauge", "histogram",
 * "summary", "untyped" (asserted). help may be NULL, which omits the HELP line; backslash and newline in help are
 * escaped. Each family must be written once, immediately before its samples; the writer does not check this.
 */
void crm_prom_family(crm_prom_t *w, const char *name, const char *type, const char *help);

/* A label pair. Both strings are only read during the call. */
typedef struct {
    const char *name;
    const char *value;
} crm_label_t;

/*
 * Writes `name{a="x",b="y"} value\n`, or `name value\n` when nlabels is 0 (labels may then be NULL). Label values are
 * escaped (backslash, double quote, newline). The value is written exactly and locale-independently: an integral
 * value of magnitude below 2^64 as plain digits (12345678901, not 1.2345678901e+10), any other finite value as the
 * shortest decimal that reads back as the same double (0.1, not 0.10000000000000001), and +Inf, -Inf, NaN as the
 * format spells them.
 */
void crm_prom_sample(crm_prom_t *w, const char *name, const crm_label_t *labels, size_t nlabels, double value);

/* As crm_prom_sample, for a counter that may exceed 2^53: the value is written as an exact integer. */
void crm_prom_sample_u64(crm_prom_t *w, const char *name, const crm_label_t *labels, size_t nlabels, uint64_t value);

/*
 * Writes the samples of one histogram series: name_bucket{labels...,le="<bound>"} with cumulative counts for every
 * bound and for le="+Inf", then name_sum and name_count with the same labels. Bounds are written like sample values
 * ("0.005", "1", "10"). The caller's labels must not include "le" (asserted); the caller writes the family header.
 */
void crm_prom_histogram(crm_prom_t *w, const char *name, const crm_label_t *labels, size_t nlabels,
                        const crm_histogram_t *h);

/*
 * A collector writes the current values of one module's metrics into w. It runs on the rendering thread, inside
 * crm_metrics_render, and must not keep w.
 */
typedef void (*crm_metrics_collect_fn)(void *ctx, crm_prom_t *w);

#define CRM_METRICS_MAX_COLLECTORS 64

/* The registry of collectors. Collectors are registered at start-up and never removed. */
typedef struct st_crm_metrics_t {
    struct {
        crm_metrics_collect_fn fn;
        void *ctx;
    } _collectors[CRM_METRICS_MAX_COLLECTORS];
    size_t _count;
} crm_metrics_t;

/* Initialises an empty registry. It owns no memory, so there is no dispose. */
void crm_metrics_init(crm_metrics_t *m);

/*
 * Adds a collector that every later render runs, after those registered before it. ctx is borrowed and must stay
 * valid while renders may happen. Returns CRM_E_INVAL if fn is NULL, CRM_E_LIMIT when CRM_METRICS_MAX_COLLECTORS
 * collectors are already registered.
 */
int crm_metrics_register(crm_metrics_t *m, crm_metrics_collect_fn fn, void *ctx);

/*
 * Appends the output of every collector, in registration order, to w. Once the writer has overflowed the remaining
 * collectors are skipped, since their output would be dropped. Returns 0, CRM_E_TOO_LARGE if the text exceeded the
 * writer's maximum, or CRM_E_NOMEM if the writer could not grow; in both error cases w holds an incomplete exposition
 * that must not be served.
 */
int crm_metrics_render(crm_metrics_t *m, crm_prom_t *w);

/*
 * A counter with a small, bounded set of label combinations, e.g. requests by route pattern and status class.
 *
 * Series are keyed by up to CRM_COUNTER_VEC_MAX_LABELS label values. The values are stored by pointer, not copied:
 * the caller keeps them alive as long as the vector (static strings, route patterns). Two keys are the same series
 * when their values are pointer-equal or string-equal. At most max_series distinct series are created; after that an
 * increment for a new key goes to one extra overflow series whose label values are all "__overflow__", so a label
 * set that turns out to be unbounded cannot grow memory or the exposition. All memory is allocated by init.
 */
#define CRM_COUNTER_VEC_MAX_LABELS 3
#define CRM_COUNTER_VEC_MAX_SERIES 65536

typedef struct st_crm_counter_vec_series_t crm_counter_vec_series_t;

typedef struct st_crm_counter_vec_t {
    const char *const *_label_names;
    size_t _nlabels;
    size_t _max_series;
    size_t _nseries;
    crm_counter_vec_series_t *_series; /* _max_series slots, filled in creation order (the output order) */
    uint32_t *_index;                  /* open-addressing hash table of series index + 1; 0 is an empty slot */
    size_t _index_mask;
    uint64_t _overflow_value;
    int _overflow_used;
} crm_counter_vec_t;

/*
 * Initialises v for nlabels (0..CRM_COUNTER_VEC_MAX_LABELS) label names, which are borrowed (a static array of static
 * strings). Returns CRM_E_INVAL if nlabels or max_series (1..CRM_COUNTER_VEC_MAX_SERIES) is out of range, CRM_E_NOMEM
 * if allocation fails. On failure v is left in a state crm_counter_vec_dispose accepts.
 */
int crm_counter_vec_init(crm_counter_vec_t *v, const char *const *label_names, size_t nlabels, size_t max_series);

/* Frees the vector's memory. Accepts NULL and a vector whose init failed. */
void crm_counter_vec_dispose(crm_counter_vec_t *v);

/*
 * Adds delta to the series keyed by label_values (nlabels non-NULL strings; label_values may be NULL when nlabels is
 * 0), creating it if there is room, else adding to the overflow series. A delta of 0 still creates the series, which
 * lets a module make its known series visible at zero. No allocation; the cost is one hash of the values.
 */
void crm_counter_vec_add(crm_counter_vec_t *v, const char *const *label_values, uint64_t delta);

/*
 * Writes one sample per series, in creation order, then the overflow series if anything was added to it. Samples
 * only: the caller writes the family header (type "counter").
 */
void crm_counter_vec_write(const crm_counter_vec_t *v, crm_prom_t *w, const char *name);

#endif
