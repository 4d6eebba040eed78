#include "breaker.h"

#include "err.h"

#include <stdlib.h>
#include <string.h>

/* Bits of one outcome byte in the ring. */
#define OUTCOME_FAILED 0x1u
#define OUTCOME_SLOW   0x2u

void crm_breaker_config_default(crm_breaker_config_t *cfg)
{
    *cfg = (crm_breaker_config_t){
        .window_size = 100,
        .minimum_calls = 20,
        .failure_rate_pct = 50,
        .slow_rate_pct = 80,
        .slow_call_ms = 2000,
        .open_ms = 5000,
        .half_open_probes = 3,
    };
}

static int config_valid(const crm_breaker_config_t *cfg)
{
    if (cfg->window_size < 1 || cfg->window_size > CRM_BREAKER_MAX_WINDOW)
        return 0;
    if (cfg->minimum_calls < 1 || cfg->minimum_calls > cfg->window_size)
        return 0;
    if (cfg->failure_rate_pct < 1 || cfg->failure_rate_pct > 100)
        return 0;
    if (cfg->slow_rate_pct > 100)
        return 0;
    if (cfg->open_ms == 0)
        return 0;
    if (cfg->half_open_probes < 1 || cfg->half_open_probes > CRM_BREAKER_MAX_PROBES)
        return 0;
    return 1;
}

int crm_breaker_init(crm_breaker_t *b, const char *name, const crm_breaker_config_t *cfg, crm_breaker_clock_fn clock,
                     void *clock_ctx)
{
    if (b == NULL)
        return CRM_E_INVAL;
    /* Zeroed first so that crm_breaker_dispose is safe whatever happens below. */
    memset(b, 0, sizeof(*b));
    if (name == NULL || cfg == NULL || clock == NULL || !config_valid(cfg))
        return CRM_E_INVAL;
    b->_ring = calloc(cfg->window_size, 1);
    if (b->_ring == NULL)
        return CRM_E_NOMEM;
    b->name = name;
    b->_cfg = *cfg;
    b->_state = CRM_BREAKER_CLOSED;
    b->_generation = 1;
    b->_clock = clock;
    b->_clock_ctx = clock_ctx;
    return 0;
}

void crm_breaker_dispose(crm_breaker_t *b)
{
    if (b == NULL)
        return;
    free(b->_ring);
    b->_ring = NULL;
}

void crm_breaker_on_transition(crm_breaker_t *b, crm_breaker_transition_cb cb, void *ctx)
{
    b->_on_transition = cb;
    b->_on_transition_ctx = ctx;
}

/*
 * The single place the state changes. Bumping the generation invalidates every permit issued so far, which is
 * what keeps a call admitted in one state from being counted in the next. now is only meaningful when entering
 * OPEN.
 */
static void set_state(crm_breaker_t *b, crm_breaker_state_t to, uint64_t now)
{
    crm_breaker_state_t from = b->_state;

    b->_state = to;
    /* A 64-bit counter bumped once per transition does not wrap in practice, but 0 must stay the refusal value. */
    if (++b->_generation == 0)
        b->_generation = 1;
    b->_probes_in_flight = 0;
    b->_probes_succeeded = 0;
    switch (to) {
    case CRM_BREAKER_OPEN:
        b->_opened_at = now;
        break;
    case CRM_BREAKER_CLOSED:
        /* The trial passed: judge the dependency afresh, not by the failures that opened the breaker. The ring's
         * bytes need no clearing: a slot is read (for eviction) only once the window is full again, by which time
         * every slot has been rewritten. */
        b->_head = 0;
        b->_outcomes = 0;
        b->_failures = 0;
        b->_slow = 0;
        break;
    case CRM_BREAKER_HALF_OPEN:
        break;
    }
    b->transitions[to]++;
    if (b->_on_transition != NULL)
        b->_on_transition(b, from, to, b->_on_transition_ctx);
}

/* Milliseconds left in OPEN, or 0 if the wait is over. A clock reading before opened_at counts as no time passed. */
static uint64_t open_remaining(const crm_breaker_t *b, uint64_t now)
{
    uint64_t elapsed = now > b->_opened_at ? now - b->_opened_at : 0;
    return elapsed >= b->_cfg.open_ms ? 0 : b->_cfg.open_ms - elapsed;
}

/* Applies the lazy OPEN -> HALF_OPEN transition if open_ms have passed. Returns the clock reading (0 if unread). */
static uint64_t refresh(crm_breaker_t *b)
{
    if (b->_state != CRM_BREAKER_OPEN)
        return 0;
    uint64_t now = b->_clock(b->_clock_ctx);
    if (open_remaining(b, now) == 0)
        set_state(b, CRM_BREAKER_HALF_OPEN, now);
    return now;
}

crm_breaker_permit_t crm_breaker_acquire(crm_breaker_t *b)
{
    refresh(b);
    switch (b->_state) {
    case CRM_BREAKER_CLOSED:
        return b->_generation;
    case CRM_BREAKER_HALF_OPEN:
        /* Successful probes keep their slot: the trial needs exactly half_open_probes successes, no more calls. */
        if (b->_probes_in_flight + b->_probes_succeeded < b->_cfg.half_open_probes) {
            b->_probes_in_flight++;
            return b->_generation;
        }
        break;
    case CRM_BREAKER_OPEN:
        break;
    }
    b->rejected++;
    return 0;
}

static int trips(const crm_breaker_t *b)
{
    uint64_t n = b->_outcomes;

    if (n < b->_cfg.minimum_calls)
        return 0;
    if ((uint64_t)b->_failures * 100 >= (uint64_t)b->_cfg.failure_rate_pct * n)
        return 1;
    return b->_cfg.slow_rate_pct != 0 && (uint64_t)b->_slow * 100 >= (uint64_t)b->_cfg.slow_rate_pct * n;
}

/* Adds one outcome to the ring, evicting the oldest when the window is full, in O(1). */
static void window_push(crm_breaker_t *b, uint8_t outcome)
{
    if (b->_outcomes == b->_cfg.window_size) {
        uint8_t old = b->_ring[b->_head];
        b->_failures -= (old & OUTCOME_FAILED) != 0;
        b->_slow -= (old & OUTCOME_SLOW) != 0;
    } else {
        b->_outcomes++;
    }
    b->_ring[b->_head] = outcome;
    b->_failures += (outcome & OUTCOME_FAILED) != 0;
    b->_slow += (outcome & OUTCOME_SLOW) != 0;
    if (++b->_head == b->_cfg.window_size)
        b->_head = 0;
}

void crm_breaker_record(crm_breaker_t *b, crm_breaker_permit_t p, int failed, uint64_t duration_ms)
{
    /* The generation is never 0, so this also ignores a refusal passed in as if it were a permit. */
    if (p != b->_generation)
        return;
    int slow = duration_ms > b->_cfg.slow_call_ms;

    switch (b->_state) {
    case CRM_BREAKER_CLOSED:
        window_push(b, (uint8_t)((failed ? OUTCOME_FAILED : 0) | (slow ? OUTCOME_SLOW : 0)));
        if (trips(b))
            set_state(b, CRM_BREAKER_OPEN, b->_clock(b->_clock_ctx));
        break;
    case CRM_BREAKER_HALF_OPEN:
        /* A second record or release of the same permit would otherwise underflow the count and wedge the trial. */
        if (b->_probes_in_flight == 0)
            break;
        b->_probes_in_flight--;
        if (failed || (slow && b->_cfg.slow_rate_pct != 0)) {
            set_state(b, CRM_BREAKER_OPEN, b->_clock(b->_clock_ctx));
        } else if (++b->_probes_succeeded == b->_cfg.half_open_probes) {
            set_state(b, CRM_BREAKER_CLOSED, 0);
        }
        break;
    case CRM_BREAKER_OPEN:
        /* No permit is issued while OPEN and entering OPEN bumps the generation, so no current permit gets here. */
        break;
    }
}

void crm_breaker_release(crm_breaker_t *b, crm_breaker_permit_t p)
{
    if (p != b->_generation)
        return;
    if (b->_state == CRM_BREAKER_HALF_OPEN && b->_probes_in_flight > 0)
        b->_probes_in_flight--;
}

crm_breaker_state_t crm_breaker_state(crm_breaker_t *b)
{
    refresh(b);
    return b->_state;
}

uint64_t crm_breaker_retry_after_ms(crm_breaker_t *b)
{
    uint64_t now = refresh(b);
    if (b->_state != CRM_BREAKER_OPEN)
        return 0;
    return open_remaining(b, now);
}

crm_breaker_window_t crm_breaker_window(const crm_breaker_t *b)
{
    return (crm_breaker_window_t){.outcomes = b->_outcomes, .failures = b->_failures, .slow = b->_slow};
}

const char *crm_breaker_state_name(crm_breaker_state_t s)
{
    switch (s) {
    case CRM_BREAKER_CLOSED:
        return "closed";
    case CRM_BREAKER_OPEN:
        return "open";
    case CRM_BREAKER_HALF_OPEN:
        return "half_open";
    }
    return "unknown";
}
