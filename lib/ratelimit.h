/*
 * Per-key rate limiting with GCRA, the generic cell rate algorithm (as described by Brandur Leach and implemented
 * by redis-cell), for crmd's per-client limits (DESIGN.md §5: 429 with Retry-After, RateLimit-Policy, RateLimit).
 *
 * Policy: `burst` requests may pass at once, after which requests pass at `rate` per `period_ms`. GCRA keeps one
 * number per key, the theoretical arrival time (TAT): the time at which the key's bucket would be full again if no
 * more requests came. With the emission interval T = period_ms / rate and the tolerance tau = T * (burst - 1),
 *
 *     base    = max(TAT, now)              (a key never seen, or whose TAT has passed, has base = now)
 *     allowed = base - now <= tau
 *     TAT'    = base + T                   (stored only when the request is allowed)
 *
 * so from a full bucket exactly `burst` requests pass at the same instant (the k-th sees base - now = (k-1) * T),
 * and from then on one passes every T. A refused request changes nothing: clients that keep retrying while
 * limited are not punished beyond the limit itself.
 *
 * Exact arithmetic: T is rarely a whole number of milliseconds (3 per 1000 ms gives 333.33 ms), and rounding it
 * would let the long-run rate drift from the policy. Internally every time is therefore kept in units of 1/s ms,
 * where s = rate / gcd(rate, period_ms), which makes T = period_ms / gcd(rate, period_ms) units exactly; when T is
 * a whole number of milliseconds the unit is the millisecond. Times reported to the caller are rounded up to whole
 * milliseconds, so a client that waits the reported time is never refused for having come too early.
 *
 * Time is injected: every call takes `now_ms` from a monotonic millisecond clock (uv_now on the loop). A reading
 * earlier than the latest one seen is treated as the latest one, so a clock that steps back can neither underflow
 * the arithmetic nor hand out extra requests. Any now_ms below 2^43 (278 years) is accepted with every valid policy;
 * a larger one fails with CRM_E_INVAL only when it would overflow the internal 64-bit arithmetic.
 *
 * Keys are short byte strings (1..CRM_RATELIMIT_MAX_KEY_LEN bytes), e.g. a client's IPv6 address (IPv4 mapped into
 * ::ffff:0:0/96) followed by a route-class id. Note that one IPv6 client usually controls at least a /64, so keying
 * by the full address lets it spread over 2^64 keys: key IPv6 clients by their /64 prefix.
 *
 * Memory: crm_ratelimit_init allocates a fixed open-addressing hash table (linear probing, backward-shift deletion,
 * no tombstones) for max_keys entries: the smallest power of two of at least 4/3 * max_keys slots of 48 bytes, so
 * 100,000 keys take 262,144 slots, 12 MiB. Nothing is allocated afterwards. The hash is SipHash-1-3 under a random
 * 128-bit key drawn at init, so clients cannot choose keys that collide and degrade the table to a list.
 *
 * A full table: an entry whose TAT has passed carries no state (the key would be treated exactly like a new one),
 * so when a new key finds max_keys entries in use, the limiter evicts such entries. To keep every call bounded its
 * scan moves over at most evict_scan slots per call (removing every expired entry it meets), continuing from where
 * the previous scan stopped, so successive calls sweep the whole table; an evict_scan of at least the number of
 * slots sweeps all of it in one call. If that scan frees nothing, the new key is refused (fail closed) and counted in
 * full_rejections. Failing open instead would let anyone bypass every limit by first filling the table with live
 * entries. Keys already in the table are never affected by a full table. An entry stays live for at most
 * burst * T after its last allowed request (T after a single one), so max_keys should exceed the number of distinct
 * keys expected within that time.
 *
 * Thread-safety: none. A limiter belongs to the loop thread; every function must be called from it.
 */
#ifndef CRM_RATELIMIT_H
#define CRM_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

/* Bounds checked by crm_ratelimit_init. They keep every internal product below 2^64 (see the header comment). */
#define CRM_RATELIMIT_MAX_RATE      1000000u
#define CRM_RATELIMIT_MAX_PERIOD_MS UINT64_C(31622400000) /* 366 days */
#define CRM_RATELIMIT_MAX_BURST     1000000u
#define CRM_RATELIMIT_MAX_KEYS      (1u << 22)
#define CRM_RATELIMIT_MAX_KEY_LEN   32

/* A reasonable evict_scan: 64 slots (3 KiB of table) per call at most, one sequential read. */
#define CRM_RATELIMIT_DEFAULT_EVICT_SCAN 64

typedef struct st_crm_ratelimit_config_t {
    uint64_t rate;      /* requests per period once the burst is spent; 1..CRM_RATELIMIT_MAX_RATE */
    uint64_t period_ms; /* 1..CRM_RATELIMIT_MAX_PERIOD_MS */
    uint64_t burst;     /* requests that may pass at once; 1..CRM_RATELIMIT_MAX_BURST */
    size_t max_keys;    /* keys tracked at once; 1..CRM_RATELIMIT_MAX_KEYS */
    size_t evict_scan;  /* slots scanned per call when the table is full; >= 1 (values above the table size mean all) */
} crm_ratelimit_config_t;

/* The table's slot; defined in ratelimit.c. */
typedef struct st_crm_ratelimit_entry_t crm_ratelimit_entry_t;

typedef struct st_crm_ratelimit_t {
    crm_ratelimit_config_t _cfg;
    uint64_t _scale;     /* internal time units per millisecond: rate / gcd(rate, period_ms) */
    uint64_t _interval;  /* T in internal units: period_ms / gcd(rate, period_ms) */
    uint64_t _tolerance; /* tau = T * (burst - 1), internal units */
    uint64_t _max_now;   /* largest now_ms whose internal time plus T * burst fits in 64 bits */
    uint64_t _now;       /* latest clock reading, internal units; readings never go back below it */
    crm_ratelimit_entry_t *_slots;
    size_t _mask; /* number of slots - 1 (a power of two minus one) */
    size_t _count;
    size_t _cursor; /* next slot the eviction scan examines */
    uint8_t _seed[16];
    /* Statistics, read-only for the caller. allowed + limited + full_rejections counts every successful check. */
    uint64_t allowed;
    uint64_t limited;         /* refused by the rate policy */
    uint64_t evictions;       /* expired entries removed to make room for a new key */
    uint64_t full_rejections; /* new keys refused because the table was full and the scan freed nothing */
} crm_ratelimit_t;

/* What crm_ratelimit_check reports, for the response headers. */
typedef struct st_crm_ratelimit_result_t {
    uint64_t limit;          /* the policy's burst */
    uint64_t remaining;      /* requests that could still pass right now, after this one */
    uint64_t reset_ms;       /* time until the key's bucket is full again (0 when it is) */
    uint64_t retry_after_ms; /* 0 when allowed; else time until a request would pass, >= 1 */
} crm_ratelimit_result_t;

/*
 * Initialises rl with the policy and table size in cfg (copied) and draws the hash key. Returns CRM_E_INVAL if a
 * field of cfg is out of range, CRM_E_NOMEM if the table cannot be allocated, CRM_E_IO if the random key cannot be
 * drawn. On failure rl is left in a state crm_ratelimit_dispose accepts.
 */
int crm_ratelimit_init(crm_ratelimit_t *rl, const crm_ratelimit_config_t *cfg);

/* Frees the table. Accepts NULL and a limiter whose init failed. */
void crm_ratelimit_dispose(crm_ratelimit_t *rl);

/*
 * Counts one request for key (len bytes, copied if stored) at now_ms. Returns 1 if the request is allowed, 0 if it
 * is refused (by the policy, or because the key is new and the table is full), or CRM_E_INVAL if key is NULL, len
 * is not 1..CRM_RATELIMIT_MAX_KEY_LEN or now_ms is too large (see above); res (which may be NULL) is filled on 0 and
 * 1 only. A new key refused for a full table gets remaining 0 and reset_ms = retry_after_ms = T rounded up: the
 * time after which the client's request would have been admitted had it been tracked. No allocation; the cost is
 * one hash and a probe, plus at most evict_scan slots when a new key meets a full table.
 */
int crm_ratelimit_check(crm_ratelimit_t *rl, const void *key, size_t len, uint64_t now_ms, crm_ratelimit_result_t *res);

/*
 * Header values (without the names) for a response, after the IETF draft draft-ietf-httpapi-ratelimit-headers
 * (the -07 syntax). Every buffer is NUL-terminated and large enough for any value.
 */
typedef struct st_crm_ratelimit_headers_t {
    char policy[48];      /* RateLimit-Policy: "<burst>;w=<period in seconds, rounded up, at least 1>" */
    char ratelimit[96];   /* RateLimit: "limit=<n>, remaining=<n>, reset=<seconds, rounded up>" */
    char retry_after[24]; /* Retry-After: "<seconds, rounded up, at least 1>", or "" when the request was allowed */
} crm_ratelimit_headers_t;

/* Formats the header values for res, a result crm_ratelimit_check filled for rl. */
void crm_ratelimit_format_headers(const crm_ratelimit_t *rl, const crm_ratelimit_result_t *res,
                                  crm_ratelimit_headers_t *out);

/* Number of keys in the table, including expired ones not yet evicted. */
static inline size_t crm_ratelimit_count(const crm_ratelimit_t *rl)
{
    return rl->_count;
}

#endif
