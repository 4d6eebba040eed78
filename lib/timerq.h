/*
 * Deadline queue: many cheap timers multiplexed on one uv_timer_t.
 *
 * Every pending operation in crmd has a deadline (DESIGN.md §3, invariant 2): pool waits, queries, requests.
 * A uv_timer_t per operation would need an asynchronous uv_close before its owner could be freed, which is
 * awkward for objects that live in a request's memory pool. A crm_timer_t instead is a plain struct embedded in
 * its owner (recover the owner with H2O_STRUCT_FROM_MEMBER / container_of); start and stop are synchronous
 * O(log n) operations on a binary min-heap, and the owner may be freed as soon as the timer is stopped.
 *
 * Times are absolute milliseconds on the loop's clock (uv_now). The heap's capacity is fixed at init: starting
 * a timer on a full queue fails with CRM_E_LIMIT, so the queue can never grow without bound.
 *
 * Callbacks run on the loop thread from the uv_timer callback, never from inside crm_timerq_start. A callback may
 * start or stop any timer, including its own; a timer a callback starts for a deadline already due fires after the
 * loop has polled for I/O at least once (about a millisecond later), so no owner can starve the loop. Not
 * thread-safe.
 */
#ifndef CRM_TIMERQ_H
#define CRM_TIMERQ_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct st_crm_timer_t crm_timer_t;
typedef void (*crm_timer_cb)(crm_timer_t *timer);

struct st_crm_timer_t {
    uint64_t deadline; /* absolute, uv_now() milliseconds; read-only while active */
    crm_timer_cb cb;
    size_t _index;  /* position in the heap + 1; 0 when not active */
    uint64_t _pass; /* the queue's pass counter when the timer was (re)started */
};

typedef struct st_crm_timerq_t {
    uv_timer_t _uv;
    crm_timer_t **_heap;
    size_t _size, _capacity;
    uint64_t _armed_at; /* deadline the uv timer is armed for, UINT64_MAX when idle */
    int _closing;
    int _firing;    /* inside on_uv_timer */
    uint64_t _pass; /* incremented on every on_uv_timer pass */
} crm_timerq_t;

/* Initialises q on loop with room for `capacity` active timers. */
int crm_timerq_init(uv_loop_t *loop, crm_timerq_t *q, size_t capacity);

/* Closes the uv handle; on_closed (may be NULL) runs from the loop once it is closed, after which q's memory may be
 * released. No timer may be active. */
void crm_timerq_close(crm_timerq_t *q, void (*on_closed)(crm_timerq_t *q));

/* (Re)starts t to fire at `deadline` (absolute loop ms). A deadline in the past fires on the next loop iteration.
 * Restarting an active timer moves it. Returns CRM_E_LIMIT when the queue is full (t is then inactive). */
int crm_timerq_start(crm_timerq_t *q, crm_timer_t *t, uint64_t deadline, crm_timer_cb cb);

/* Stops t if it is active; a no-op otherwise. */
void crm_timerq_stop(crm_timerq_t *q, crm_timer_t *t);

static inline int crm_timer_is_active(const crm_timer_t *t)
{
    return t->_index != 0;
}

static inline void crm_timer_init(crm_timer_t *t)
{
    t->deadline = 0;
    t->cb = NULL;
    t->_index = 0;
    t->_pass = 0;
}

/* Number of active timers. */
static inline size_t crm_timerq_size(const crm_timerq_t *q)
{
    return q->_size;
}

/* Current loop time in ms (uv_now), the clock all deadlines use. */
static inline uint64_t crm_timerq_now(const crm_timerq_t *q)
{
    return uv_now(q->_uv.loop);
}

#endif
