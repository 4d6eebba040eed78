#include "ratelimit.h"

#include "err.h"
#include "rand.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * One slot. len == 0 marks an empty slot (keys have at least one byte). The low 32 bits of the key's hash are kept
 * so that probing compares keys only on a hash match and deletion can find an entry's home slot without rehashing;
 * 32 bits cover every table size init accepts.
 */
struct st_crm_ratelimit_entry_t {
    uint64_t tat; /* internal time units */
    uint32_t hash;
    uint8_t len;
    uint8_t key[CRM_RATELIMIT_MAX_KEY_LEN];
};

static inline uint64_t rotl64(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

#define SIPROUND                                                                                                       \
    do {                                                                                                               \
        v0 += v1;                                                                                                      \
        v1 = rotl64(v1, 13);                                                                                           \
        v1 ^= v0;                                                                                                      \
        v0 = rotl64(v0, 32);                                                                                           \
        v2 += v3;                                                                                                      \
        v3 = rotl64(v3, 16);                                                                                           \
        v3 ^= v2;                                                                                                      \
        v0 += v3;                                                                                                      \
        v3 = rotl64(v3, 21);                                                                                           \
        v3 ^= v0;                                                                                                      \
        v2 += v1;                                                                                                      \
        v1 = rotl64(v1, 17);                                                                                           \
        v1 ^= v2;                                                                                                      \
        v2 = rotl64(v2, 32);                                                                                           \
    } while (0)

static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* SipHash-1-3 (one compression round, three finalisation rounds), the variant Rust and CPython use for tables. */
static uint64_t siphash13(const uint8_t seed[16], const uint8_t *in, size_t len)
{
    uint64_t k0 = load_le64(seed), k1 = load_le64(seed + 8);
    uint64_t v0 = UINT64_C(0x736f6d6570736575) ^ k0;
    uint64_t v1 = UINT64_C(0x646f72616e646f6d) ^ k1;
    uint64_t v2 = UINT64_C(0x6c7967656e657261) ^ k0;
    uint64_t v3 = UINT64_C(0x7465646279746573) ^ k1;
    size_t full = len & ~(size_t)7;
    uint64_t m;

    for (size_t i = 0; i < full; i += 8) {
        m = load_le64(in + i);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    m = (uint64_t)len << 56;
    for (size_t i = len - full; i > 0; i--)
        m |= (uint64_t)in[full + i - 1] << (8 * (i - 1));
    v3 ^= m;
    SIPROUND;
    v0 ^= m;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
    while (b != 0) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* Internal time units to milliseconds, rounded up. */
static inline uint64_t units_to_ms_ceil(const crm_ratelimit_t *rl, uint64_t units)
{
    return units / rl->_scale + (units % rl->_scale != 0);
}

static int config_valid(const crm_ratelimit_config_t *cfg)
{
    if (cfg->rate < 1 || cfg->rate > CRM_RATELIMIT_MAX_RATE)
        return 0;
    if (cfg->period_ms < 1 || cfg->period_ms > CRM_RATELIMIT_MAX_PERIOD_MS)
        return 0;
    if (cfg->burst < 1 || cfg->burst > CRM_RATELIMIT_MAX_BURST)
        return 0;
    if (cfg->max_keys < 1 || cfg->max_keys > CRM_RATELIMIT_MAX_KEYS)
        return 0;
    return cfg->evict_scan >= 1;
}

int crm_ratelimit_init(crm_ratelimit_t *rl, const crm_ratelimit_config_t *cfg)
{
    if (rl == NULL)
        return CRM_E_INVAL;
    /* Zeroed first so that crm_ratelimit_dispose is safe whatever happens below. */
    memset(rl, 0, sizeof(*rl));
    if (cfg == NULL || !config_valid(cfg))
        return CRM_E_INVAL;

    uint64_t g = gcd(cfg->rate, cfg->period_ms);
    rl->_cfg = *cfg;
    rl->_scale = cfg->rate / g;
    rl->_interval = cfg->period_ms / g;
    rl->_tolerance = rl->_interval * (cfg->burst - 1);
    /* A stored TAT is at most now + T * burst; the bounds on the policy keep T * burst below 2^55. */
    rl->_max_now = (UINT64_MAX - rl->_interval * cfg->burst) / rl->_scale;

    /* At most 3/4 full, so linear probes stay short, and always at least one empty slot, so every probe ends. */
    size_t want = cfg->max_keys + (cfg->max_keys + 2) / 3, slots = 1;
    while (slots < want)
        slots <<= 1;

    if (crm_random_bytes(rl->_seed, sizeof(rl->_seed)) != 0)
        return CRM_E_IO;
    rl->_slots = calloc(slots, sizeof(*rl->_slots));
    if (rl->_slots == NULL)
        return CRM_E_NOMEM;
    rl->_mask = slots - 1;
    return 0;
}

void crm_ratelimit_dispose(crm_ratelimit_t *rl)
{
    if (rl == NULL)
        return;
    free(rl->_slots);
    rl->_slots = NULL;
    rl->_count = 0;
}

/* The slot holding key, or the empty slot that ends its probe sequence. */
static size_t find(const crm_ratelimit_t *rl, const uint8_t *key, size_t len, uint32_t hash)
{
    size_t i = hash & rl->_mask;
    for (;;) {
        const crm_ratelimit_entry_t *e = &rl->_slots[i];
        if (e->len == 0 || (e->hash == hash && e->len == len && memcmp(e->key, key, len) == 0))
            return i;
        i = (i + 1) & rl->_mask;
    }
}

/*
 * Empties slot i by backward-shift deletion: every later entry of the same cluster that may live at i (its home slot
 * is not cyclically within (i, j]) moves back, so probe sequences stay unbroken without tombstones. Entries only
 * ever move to lower positions (cyclically), never past slot i.
 */
static void remove_at(crm_ratelimit_t *rl, size_t i)
{
    size_t j = i;
    for (;;) {
        j = (j + 1) & rl->_mask;
        crm_ratelimit_entry_t *e = &rl->_slots[j];
        if (e->len == 0)
            break;
        size_t home = e->hash & rl->_mask;
        int stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (stays)
            continue;
        rl->_slots[i] = *e;
        i = j;
    }
    rl->_slots[i].len = 0;
    rl->_count--;
}

/*
 * Advances the cursor over up to evict_scan slots, removing every entry met whose TAT is not after now. A removal
 * may pull a later entry into the slot at the cursor, so that slot is examined again before the cursor moves on;
 * each removal empties a slot, so the loop ends. Returns whether anything was removed.
 */
static int evict_expired(crm_ratelimit_t *rl, uint64_t now)
{
    size_t steps = rl->_cfg.evict_scan, freed = 0;
    if (steps > rl->_mask + 1)
        steps = rl->_mask + 1;
    while (steps > 0) {
        crm_ratelimit_entry_t *e = &rl->_slots[rl->_cursor];
        if (e->len != 0 && e->tat <= now) {
            remove_at(rl, rl->_cursor);
            freed++;
            continue;
        }
        rl->_cursor = (rl->_cursor + 1) & rl->_mask;
        steps--;
    }
    rl->evictions += freed;
    return freed != 0;
}

int crm_ratelimit_check(crm_ratelimit_t *rl, const void *key, size_t len, uint64_t now_ms, crm_ratelimit_result_t *res)
{
    if (key == NULL || len < 1 || len > CRM_RATELIMIT_MAX_KEY_LEN || now_ms > rl->_max_now)
        return CRM_E_INVAL;

    uint64_t now = now_ms * rl->_scale;
    if (now < rl->_now)
        now = rl->_now;
    rl->_now = now;

    uint32_t hash = (uint32_t)siphash13(rl->_seed, key, len);
    size_t i = find(rl, key, len, hash);
    crm_ratelimit_entry_t *e = &rl->_slots[i];
    uint64_t burst = rl->_cfg.burst;

    if (e->len == 0 && rl->_count == rl->_cfg.max_keys) {
        if (!evict_expired(rl, now)) {
            rl->full_rejections++;
            if (res != NULL) {
                uint64_t wait = units_to_ms_ceil(rl, rl->_interval);
                *res = (crm_ratelimit_result_t){.limit = burst, .reset_ms = wait, .retry_after_ms = wait};
            }
            return 0;
        }
        /* The removals may have shifted the key's probe sequence. */
        i = find(rl, key, len, hash);
        e = &rl->_slots[i];
    }

    /* A new key behaves exactly like one whose TAT has passed: base = now. */
    uint64_t tat = e->len == 0 ? now : e->tat;
    uint64_t base = tat > now ? tat : now;
    int allowed = base - now <= rl->_tolerance;
    uint64_t retry = 0;

    if (allowed) {
        tat = base + rl->_interval;
        if (e->len == 0) {
            e->hash = hash;
            e->len = (uint8_t)len;
            memcpy(e->key, key, len);
            rl->_count++;
        }
        e->tat = tat;
        rl->allowed++;
    } else {
        /* The next request passes once base - now' <= tau, i.e. at now' = TAT - tau, which is after now. */
        retry = units_to_ms_ceil(rl, tat - rl->_tolerance - now);
        rl->limited++;
    }

    if (res != NULL) {
        /* The backlog never exceeds T * burst: a stored TAT is at most (an earlier now) + T * burst, and now never
         * goes back. So remaining cannot underflow. */
        uint64_t backlog = tat > now ? tat - now : 0;
        uint64_t used = backlog / rl->_interval + (backlog % rl->_interval != 0);
        res->limit = burst;
        res->remaining = burst - used;
        res->reset_ms = units_to_ms_ceil(rl, backlog);
        res->retry_after_ms = retry;
    }
    return allowed;
}

static uint64_t ms_to_seconds_ceil(uint64_t ms)
{
    return ms / 1000 + (ms % 1000 != 0);
}

void crm_ratelimit_format_headers(const crm_ratelimit_t *rl, const crm_ratelimit_result_t *res,
                                  crm_ratelimit_headers_t *out)
{
    uint64_t window = ms_to_seconds_ceil(rl->_cfg.period_ms);
    snprintf(out->policy, sizeof(out->policy), "%" PRIu64 ";w=%" PRIu64, rl->_cfg.burst, window);
    snprintf(out->ratelimit, sizeof(out->ratelimit), "limit=%" PRIu64 ", remaining=%" PRIu64 ", reset=%" PRIu64,
             res->limit, res->remaining, ms_to_seconds_ceil(res->reset_ms));
    if (res->retry_after_ms == 0) {
        out->retry_after[0] = '\0';
    } else {
        /* Retry-After has whole seconds; rounding up keeps a client that obeys it from being refused again. */
        snprintf(out->retry_after, sizeof(out->retry_after), "%" PRIu64, ms_to_seconds_ceil(res->retry_after_ms));
    }
}
