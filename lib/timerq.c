#include "timerq.h"

#include <assert.h>
#include <stdlib.h>

#include "err.h"

static inline int earlier(const crm_timer_t *a, const crm_timer_t *b)
{
    return a->deadline < b->deadline;
}

static inline void place(crm_timerq_t *q, size_t i, crm_timer_t *t)
{
    q->_heap[i] = t;
    t->_index = i + 1;
}

static void sift_up(crm_timerq_t *q, size_t i)
{
    crm_timer_t *t = q->_heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!earlier(t, q->_heap[parent]))
            break;
        place(q, i, q->_heap[parent]);
        i = parent;
    }
    place(q, i, t);
}

static void sift_down(crm_timerq_t *q, size_t i)
{
    crm_timer_t *t = q->_heap[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= q->_size)
            break;
        if (child + 1 < q->_size && earlier(q->_heap[child + 1], q->_heap[child]))
            ++child;
        if (!earlier(q->_heap[child], t))
            break;
        place(q, i, q->_heap[child]);
        i = child;
    }
    place(q, i, t);
}

static void remove_at(crm_timerq_t *q, size_t i)
{
    crm_timer_t *removed = q->_heap[i];
    crm_timer_t *last = q->_heap[--q->_size];
    removed->_index = 0;
    if (i == q->_size)
        return;
    place(q, i, last);
    if (i > 0 && earlier(last, q->_heap[(i - 1) / 2]))
        sift_up(q, i);
    else
        sift_down(q, i);
}

static void on_uv_timer(uv_timer_t *handle);

/* Keeps the uv timer armed for the earliest deadline; re-arming only when that deadline changes keeps the common
 * case (many timers with later deadlines) free of uv_timer_start calls. */
static void rearm(crm_timerq_t *q)
{
    if (q->_size == 0) {
        if (q->_armed_at != UINT64_MAX) {
            uv_timer_stop(&q->_uv);
            q->_armed_at = UINT64_MAX;
        }
        return;
    }
    uint64_t first = q->_heap[0]->deadline;
    if (first == q->_armed_at)
        return;
    uint64_t now = uv_now(q->_uv.loop);
    /* libuv runs a timer restarted with timeout 0 from inside its own callback again in the same pass; a deadline
     * that is already due when re-arming from on_uv_timer therefore waits one millisecond, so that the loop polls
     * for I/O between two passes and an owner that keeps re-arming cannot starve it. */
    uint64_t floor = q->_firing ? 1 : 0;
    uint64_t timeout = first > now ? first - now : 0;
    uv_timer_start(&q->_uv, on_uv_timer, timeout > floor ? timeout : floor, 0);
    q->_armed_at = first;
}

static void on_uv_timer(uv_timer_t *handle)
{
    crm_timerq_t *q = (crm_timerq_t *)handle;
    uint64_t now = uv_now(handle->loop);
    q->_armed_at = UINT64_MAX;
    q->_firing = 1;
    /* Fire only timers started before this pass: one a callback starts (or restarts) for a deadline already due
     * waits for the next pass, after the loop has polled for I/O. When such a timer reaches the top of the heap
     * the pass ends, and due timers behind it fire in the next pass, a millisecond later. */
    uint64_t pass = ++q->_pass;
    while (q->_size > 0 && q->_heap[0]->deadline <= now && q->_heap[0]->_pass < pass) {
        crm_timer_t *t = q->_heap[0];
        remove_at(q, 0);
        t->cb(t);
    }
    rearm(q);
    q->_firing = 0;
}

int crm_timerq_init(uv_loop_t *loop, crm_timerq_t *q, size_t capacity)
{
    if (capacity == 0)
        return CRM_E_INVAL;
    q->_heap = calloc(capacity, sizeof(*q->_heap));
    if (q->_heap == NULL)
        return CRM_E_NOMEM;
    q->_size = 0;
    q->_capacity = capacity;
    q->_armed_at = UINT64_MAX;
    q->_closing = 0;
    q->_firing = 0;
    q->_pass = 0;
    uv_timer_init(loop, &q->_uv);
    return 0;
}

static void on_closed_handle(uv_handle_t *handle)
{
    crm_timerq_t *q = (crm_timerq_t *)handle;
    void (*cb)(crm_timerq_t *) = (void (*)(crm_timerq_t *))q->_uv.data;
    free(q->_heap);
    q->_heap = NULL;
    if (cb != NULL)
        cb(q);
}

void crm_timerq_close(crm_timerq_t *q, void (*on_closed)(crm_timerq_t *q))
{
    assert(q->_size == 0 && "timers still active at close");
    q->_closing = 1;
    q->_uv.data = (void *)on_closed;
    uv_close((uv_handle_t *)&q->_uv, on_closed_handle);
}

int crm_timerq_start(crm_timerq_t *q, crm_timer_t *t, uint64_t deadline, crm_timer_cb cb)
{
    assert(!q->_closing);
    t->cb = cb;
    t->_pass = q->_pass;
    if (t->_index != 0) {
        size_t i = t->_index - 1;
        uint64_t old = t->deadline;
        t->deadline = deadline;
        if (deadline < old)
            sift_up(q, i);
        else
            sift_down(q, i);
    } else {
        if (q->_size == q->_capacity)
            return CRM_E_LIMIT;
        t->deadline = deadline;
        place(q, q->_size++, t);
        sift_up(q, q->_size - 1);
    }
    rearm(q);
    return 0;
}

void crm_timerq_stop(crm_timerq_t *q, crm_timer_t *t)
{
    if (t->_index == 0)
        return;
    remove_at(q, t->_index - 1);
    /* Leaving the uv timer armed for a deadline that no longer exists costs one spurious wake-up at most; skipping
     * the re-arm keeps stop cheap on the hot path (every query stops its timer). */
    if (q->_size == 0)
        rearm(q);
}
