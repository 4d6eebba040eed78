/*
 * Circuit breaker (count-based, in the manner of resilience4j).
 *
 * One breaker guards one dependency (PostgreSQL, Google, Gmail, Stripe, DocuSign, SMTP). It watches the outcomes
 * of the last window_size calls and, once at least minimum_calls outcomes are in that window, opens when the
 * share of failed calls or of slow calls reaches its threshold (DESIGN.md §3, invariant 2). While OPEN every call
 * fails fast (the caller answers CRM_E_BREAKER_OPEN, 503). After open_ms the breaker lets a few probe calls
 * through (HALF_OPEN): one failed or slow probe opens it again, half_open_probes successful probes close it with
 * an empty window.
 *
 * Usage, around every call to the dependency:
 *
 *     crm_breaker_permit_t p = crm_breaker_acquire(b);
 *     if (p == 0)
 *         return CRM_E_BREAKER_OPEN;
 *     ... start the call; when it completes:
 *     crm_breaker_record(b, p, failed, duration_ms);
 *     ... or, if the caller abandons it without an outcome (client went away, shutdown):
 *     crm_breaker_release(b, p);
 *
 * Every permit must end in exactly one crm_breaker_record or crm_breaker_release. A permit carries the breaker's
 * generation, which changes on every state transition, so the outcome of a call admitted before a transition is
 * ignored: a call let through while CLOSED that completes after the breaker opened does not count as a probe.
 *
 * What counts as a failure is the caller's decision: a lost connection, a deadline expiry, a 5xx or 429 from the
 * peer are failures; a 4xx caused by the request itself, or an SQL constraint violation, is not.
 *
 * Time comes from an injected monotonic millisecond clock, so the breaker has no dependency on the event loop and
 * tests drive it exactly. The clock is read only when the breaker opens and while it is OPEN.
 *
 * Thread-safety: none. A breaker belongs to one loop thread and every function must be called from it.
 *
 * Memory: crm_breaker_init allocates the outcome ring once (window_size bytes, at most 1024); nothing grows later.
 */
#ifndef CRM_BREAKER_H
#define CRM_BREAKER_H

#include <stdint.h>

/* Bounds checked by crm_breaker_init. */
#define CRM_BREAKER_MAX_WINDOW 1024
#define CRM_BREAKER_MAX_PROBES 64

typedef enum {
    CRM_BREAKER_CLOSED = 0,    /* calls flow; outcomes feed the sliding window */
    CRM_BREAKER_OPEN = 1,      /* calls are refused until open_ms have passed */
    CRM_BREAKER_HALF_OPEN = 2, /* a limited number of probe calls decide between CLOSED and OPEN */
} crm_breaker_state_t;

#define CRM_BREAKER_NSTATES 3

typedef struct st_crm_breaker_config_t {
    /* The last window_size recorded outcomes form the sliding window; 1..CRM_BREAKER_MAX_WINDOW. */
    uint32_t window_size;
    /* No evaluation happens before this many outcomes are in the window; 1..window_size. */
    uint32_t minimum_calls;
    /* Open when failures * 100 >= failure_rate_pct * outcomes; 1..100. */
    uint32_t failure_rate_pct;
    /* Open when slow * 100 >= slow_rate_pct * outcomes; 1..100, or 0 to disable the slow-call rule. With the rule
     * disabled slow calls are still counted in the window figures but never open the breaker, and a slow probe
     * counts as a success. */
    uint32_t slow_rate_pct;
    /* A call that took longer than this (strictly) is slow, whether it failed or not. */
    uint64_t slow_call_ms;
    /* Time spent OPEN before probes are allowed; > 0. */
    uint64_t open_ms;
    /* Probe calls permitted while HALF_OPEN; 1..CRM_BREAKER_MAX_PROBES. */
    uint32_t half_open_probes;
} crm_breaker_config_t;

/* Monotonic time in milliseconds. Called synchronously from acquire, record and state. */
typedef uint64_t (*crm_breaker_clock_fn)(void *ctx);

typedef struct st_crm_breaker_t crm_breaker_t;

/*
 * Called synchronously after every state transition (including the OPEN -> HALF_OPEN one, which happens lazily
 * inside crm_breaker_acquire or crm_breaker_state), once the breaker is already in state `to`. It may read the
 * breaker's public fields and call crm_breaker_state_name, but must not call any other crm_breaker_* function on
 * it: it runs in the middle of one of them.
 */
typedef void (*crm_breaker_transition_cb)(crm_breaker_t *b, crm_breaker_state_t from, crm_breaker_state_t to,
                                          void *ctx);

/* A permit to make one call; 0 means the call was refused. Opaque apart from that. */
typedef uint64_t crm_breaker_permit_t;

/* The current sliding-window figures, for /health/database and metrics. */
typedef struct st_crm_breaker_window_t {
    uint32_t outcomes; /* outcomes in the window, at most window_size */
    uint32_t failures; /* of which failed */
    uint32_t slow;     /* of which slow (a failed slow call counts in both) */
} crm_breaker_window_t;

struct st_crm_breaker_t {
    /* Public, read-only. */
    const char *name;                          /* not copied: the caller keeps it alive as long as the breaker */
    uint64_t rejected;                         /* acquires refused, while OPEN or with every probe slot taken */
    uint64_t transitions[CRM_BREAKER_NSTATES]; /* transitions into each state, indexed by crm_breaker_state_t */

    /* Private. */
    crm_breaker_config_t _cfg;
    crm_breaker_state_t _state;
    uint64_t _generation; /* never 0, so a permit (which is the generation) is never 0 */
    uint64_t _opened_at;  /* clock value when the breaker last opened */
    crm_breaker_clock_fn _clock;
    void *_clock_ctx;
    crm_breaker_transition_cb _on_transition;
    void *_on_transition_ctx;
    uint8_t *_ring; /* window_size outcome bytes: OUTCOME_FAILED | OUTCOME_SLOW bits */
    uint32_t _head; /* ring index the next outcome is written to */
    uint32_t _outcomes;
    uint32_t _failures;
    uint32_t _slow;
    uint32_t _probes_in_flight; /* HALF_OPEN: permits issued and not yet recorded or released */
    uint32_t _probes_succeeded; /* HALF_OPEN: successful probes so far */
};

/* Fills cfg with the defaults: window 100, minimum 20, failure 50 %, slow 80 % over 2000 ms, open 5000 ms, 3 probes. */
void crm_breaker_config_default(crm_breaker_config_t *cfg);

/*
 * Initialises b in the CLOSED state with an empty window. The configuration is copied; name is not (see above).
 * Returns 0, CRM_E_INVAL when an argument is NULL or a configuration field is out of its bounds, or CRM_E_NOMEM.
 * On failure b holds nothing and crm_breaker_dispose(b) is a harmless no-op.
 */
int crm_breaker_init(crm_breaker_t *b, const char *name, const crm_breaker_config_t *cfg, crm_breaker_clock_fn clock,
                     void *clock_ctx);

/* Frees the ring. Accepts NULL and a breaker whose init failed. Outstanding permits become meaningless. */
void crm_breaker_dispose(crm_breaker_t *b);

/* Sets (or, with cb NULL, clears) the transition callback. */
void crm_breaker_on_transition(crm_breaker_t *b, crm_breaker_transition_cb cb, void *ctx);

/*
 * Asks to make one call. Returns a nonzero permit, or 0 when the call is refused: the breaker is OPEN, or HALF_OPEN
 * with every probe slot taken. Each refusal increments `rejected`. In HALF_OPEN at most half_open_probes permits are
 * outstanding at once, and a successful probe keeps its slot, so no more probes are admitted than the trial needs.
 * May move the breaker from OPEN to HALF_OPEN (and run the transition callback) when open_ms have passed.
 */
crm_breaker_permit_t crm_breaker_acquire(crm_breaker_t *b);

/*
 * Records the outcome of a permitted call: failed nonzero if it failed, and how long it took. Ignored when p is 0
 * or was issued before the latest state transition. May open or close the breaker (and run the callback).
 */
void crm_breaker_record(crm_breaker_t *b, crm_breaker_permit_t p, int failed, uint64_t duration_ms);

/*
 * Ends a permitted call without an outcome (the caller gave up on it). In HALF_OPEN it frees the probe slot for
 * another caller; otherwise, and for a permit from an older generation, it does nothing.
 */
void crm_breaker_release(crm_breaker_t *b, crm_breaker_permit_t p);

/* The current state, after applying a due OPEN -> HALF_OPEN transition (which runs the callback). */
crm_breaker_state_t crm_breaker_state(crm_breaker_t *b);

/*
 * While OPEN, the milliseconds left before probes are allowed (at least 1), for a Retry-After header; 0 in any
 * other state (including HALF_OPEN with every probe slot taken, where the wait cannot be known). Like
 * crm_breaker_state it first applies a due OPEN -> HALF_OPEN transition.
 */
uint64_t crm_breaker_retry_after_ms(crm_breaker_t *b);

/*
 * The current sliding-window figures. Probes do not enter the window, so while OPEN or HALF_OPEN the figures are
 * those of the CLOSED period that ended when the breaker opened; closing empties the window.
 */
crm_breaker_window_t crm_breaker_window(const crm_breaker_t *b);

/* "closed", "open", "half_open", or "unknown" for a value outside the enum. */
const char *crm_breaker_state_name(crm_breaker_state_t s);

#endif
