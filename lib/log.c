#include "log.h"

#include "err.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* IDLE: no writer, lines are written synchronously to fd 2. RUNNING: lines are queued for the writer. STOPPING:
 * crm_log_stop asked the writer to finish; callers wait for IDLE so that their lines follow the queued ones. */
/* Longest a line waits in the buffer before the writer picks it up. */
#define BATCH_MS 10

typedef enum { STATE_IDLE, STATE_RUNNING, STATE_STOPPING } state_t;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake; /* the writer waits here for data or for STOPPING */
    pthread_cond_t idle; /* callers wait here while STOPPING */
    state_t state;
    int fd;
    char *fill;  /* callers append here, under mu */
    char *drain; /* owned by the writer while it writes, outside mu */
    size_t fill_len;
    size_t cap;   /* capacity of each buffer */
    int sleeping; /* the writer waits for the first line of a batch (no timeout) */
    pthread_t thread;
} lg = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .idle = PTHREAD_COND_INITIALIZER,
    .state = STATE_IDLE,
    .fd = -1,
};

/* Read on every call without the mutex, hence atomic. */
static atomic_int min_level = CRM_LOG_INFO;
static atomic_uint_least64_t dropped;

static void (*clock_fn)(struct timespec *);

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

int crm_log_level_parse(const char *s, crm_log_level_t *out)
{
    if (s == NULL || out == NULL)
        return CRM_E_INVAL;
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (crm_log_level_t)i;
            return 0;
        }
    }
    return CRM_E_INVAL;
}

const char *crm_log_level_name(crm_log_level_t l)
{
    if ((unsigned)l > CRM_LOG_OFF)
        return "unknown";
    return level_names[l];
}

void crm_log_set_level(crm_log_level_t level)
{
    if ((unsigned)level > CRM_LOG_OFF)
        return;
    atomic_store_explicit(&min_level, (int)level, memory_order_relaxed);
}

int crm_log_enabled(crm_log_level_t level)
{
    if ((unsigned)level >= CRM_LOG_OFF)
        return 0;
    return (int)level >= atomic_load_explicit(&min_level, memory_order_relaxed);
}

uint64_t crm_log_dropped(void)
{
    return atomic_load_explicit(&dropped, memory_order_relaxed);
}

void crm_log_set_clock_for_test(void (*fn)(struct timespec *))
{
    clock_fn = fn;
}

static void count_dropped(uint64_t lines)
{
    atomic_fetch_add_explicit(&dropped, lines, memory_order_relaxed);
}

static uint64_t count_lines(const char *p, size_t n)
{
    uint64_t lines = 0;
    for (const char *end = p + n; (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++)
        lines++;
    return lines;
}

/*
 * Writes all n bytes to fd, retrying on EINTR and after partial writes, and waiting with poll(2) when fd is
 * non-blocking. On any other error the unwritten rest is discarded and its lines counted as dropped: a log whose
 * destination is gone (EPIPE, EBADF) must not stop the program.
 */
static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            if (poll(&pfd, 1, -1) >= 0 || errno == EINTR)
                continue;
        }
        /* A write that returns 0 for a nonzero count would otherwise loop forever; treat it as an error too. */
        count_dropped(count_lines(p, n));
        return;
    }
}

/* ---- formatting ---- */

/* A line under construction: bytes [0, len) of p, never more than lim. */
typedef struct {
    char *p;
    size_t len;
    size_t lim;
} out_t;

static int put(out_t *o, const void *s, size_t n)
{
    if (n > o->lim - o->len)
        return -1;
    memcpy(o->p + o->len, s, n);
    o->len += n;
    return 0;
}

static int put_lit(out_t *o, const char *s)
{
    return put(o, s, strlen(s));
}

/*
 * Decodes the next output unit of a JSON string from s[0, n) into u (at most 6 bytes) and returns its length; stores
 * in *used how many input bytes it covers. A unit is an escape, one ASCII byte, one well-formed UTF-8 character
 * copied as it is, or \ufffd for one maximal ill-formed subpart (Unicode §3.9, "U+FFFD substitution of maximal
 * subparts"): a lead byte followed by as many of its expected continuation bytes as are valid, or one stray byte.
 */
static size_t next_unit(const unsigned char *s, size_t n, char u[6], size_t *used)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char c = s[0];

    *used = 1;
    if (c == '"' || c == '\\') {
        u[0] = '\\';
        u[1] = (char)c;
        return 2;
    }
    if (c < 0x20) {
        static const char short_esc[0x20] = {['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't'};
        u[0] = '\\';
        if (short_esc[c] != 0) {
            u[1] = short_esc[c];
            return 2;
        }
        memcpy(u, "\\u00", 4);
        u[4] = hex[c >> 4];
        u[5] = hex[c & 0xf];
        return 6;
    }
    if (c < 0x80) {
        u[0] = (char)c;
        return 1;
    }

    /* The number of continuation bytes, and the valid range of the first one (Unicode Table 3-7), which excludes
     * overlong forms, surrogates and code points above U+10FFFF. */
    size_t need;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
        need = 1;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 2;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 3;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else {
        need = 0; /* a continuation byte without a lead, C0, C1 or F5..FF: never valid */
    }

    size_t i = 1;
    for (; need > 0 && i <= need && i < n; i++) {
        if (s[i] < lo || s[i] > hi)
            break;
        lo = 0x80;
        hi = 0xbf;
    }
    if (need > 0 && i == need + 1) {
        memcpy(u, s, i);
        *used = i;
        return i;
    }
    *used = i;
    memcpy(u, "\\ufffd", 6);
    return 6;
}

/* The escaped length of s[0, n) without quotes, or SIZE_MAX as soon as it exceeds max. Scanning stops there, so
 * a huge value costs no more than the room left in the line. */
static size_t escaped_len(const unsigned char *s, size_t n, size_t max)
{
    size_t total = 0, used;
    char u[6];
    for (size_t i = 0; i < n; i += used) {
        total += next_unit(s + i, n - i, u, &used);
        if (total > max)
            return SIZE_MAX;
    }
    return total;
}

#define ELLIPSIS "\xe2\x80\xa6" /* U+2026 */

/*
 * Writes s[0, n) as a JSON string (null for a NULL s). If it does not fit, writes as many whole units as leave room
 * for the ellipsis and the closing quote, and sets *truncated. Fails only when not even "…" fits.
 */
static int put_string(out_t *o, const char *s, size_t n, int *truncated)
{
    if (s == NULL)
        return put_lit(o, "null");

    size_t room = o->lim - o->len;
    if (room >= 2 && escaped_len((const unsigned char *)s, n, room - 2) != SIZE_MAX) {
        size_t used;
        char u[6];
        o->p[o->len++] = '"';
        for (size_t i = 0; i < n; i += used)
            put(o, u, next_unit((const unsigned char *)s + i, n - i, u, &used));
        o->p[o->len++] = '"';
        return 0;
    }

    const size_t tail = sizeof(ELLIPSIS "\"") - 1;
    if (room < 1 + tail)
        return -1;
    size_t stop = o->len + room - tail, used;
    char u[6];
    o->p[o->len++] = '"';
    for (size_t i = 0; i < n; i += used) {
        size_t ul = next_unit((const unsigned char *)s + i, n - i, u, &used);
        if (ul > stop - o->len)
            break;
        put(o, u, ul);
    }
    put_lit(o, ELLIPSIS "\"");
    *truncated = 1;
    return 0;
}

/* Appends d with the fewest digits (15 to 17) that read back as d, or null when d is not finite (JSON has no NaN or
 * infinity). */
static int put_double(out_t *o, double d)
{
    if (!isfinite(d))
        return put_lit(o, "null");

    char tmp[32];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
        if (strtod(tmp, NULL) == d)
            break;
    }
    /* printf and strtod follow LC_NUMERIC, so the round-trip test above is consistent under any locale, but JSON
     * needs '.': anything that is not a digit, sign or exponent marker is the locale's decimal point. */
    char num[32];
    size_t len = 0;
    for (const char *c = tmp; *c != '\0';) {
        if ((*c >= '0' && *c <= '9') || *c == '-' || *c == '+' || *c == 'e') {
            num[len++] = *c++;
            continue;
        }
        num[len++] = '.';
        while (*c != '\0' && !((*c >= '0' && *c <= '9') || *c == '-' || *c == '+' || *c == 'e'))
            c++;
    }
    return put(o, num, len);
}

static int put_value(out_t *o, const crm_log_field_t *f, int *truncated)
{
    char num[24];
    switch (f->type) {
    case CRM_LOG_T_STR:
        return put_string(o, f->v.s, f->v.s != NULL ? strlen(f->v.s) : 0, truncated);
    case CRM_LOG_T_STRN:
        return put_string(o, f->v.sn.p, f->v.sn.n, truncated);
    case CRM_LOG_T_INT:
        return put(o, num, (size_t)snprintf(num, sizeof(num), "%" PRId64, f->v.i));
    case CRM_LOG_T_UINT:
        return put(o, num, (size_t)snprintf(num, sizeof(num), "%" PRIu64, f->v.u));
    case CRM_LOG_T_DBL:
        return put_double(o, f->v.d);
    case CRM_LOG_T_BOOL:
        return put_lit(o, f->v.b ? "true" : "false");
    }
    /* An out-of-range type (a corrupted field) still yields valid JSON. */
    return put_lit(o, "null");
}

/* Appends ,"key": with the key escaped in full; a key is never cut, because a cut key would be a different key. */
static int put_key(out_t *o, const char *key)
{
    if (key == NULL)
        key = "";
    size_t n = strlen(key);
    size_t elen = escaped_len((const unsigned char *)key, n, o->lim - o->len);
    if (elen == SIZE_MAX || put_lit(o, ",\"") != 0 || elen + 2 > o->lim - o->len)
        return -1;
    size_t used;
    char u[6];
    for (size_t i = 0; i < n; i += used)
        put(o, u, next_unit((const unsigned char *)key + i, n - i, u, &used));
    return put_lit(o, "\":");
}

/*
 * Formats everything but the closing "}\n" into o (whose lim is the room for it). Returns nonzero if anything was
 * cut or left out. The header (timestamp and level) is short and always fits; the event is cut like any string.
 */
static int format_body(out_t *o, const struct timespec *ts, crm_log_level_t level, const char *event,
                       const crm_log_field_t *fields, size_t n)
{
    int truncated = 0;

    /* The date and time down to the second change once a second: format them once per second and thread, and only
     * the milliseconds per line (gmtime_r and snprintf were a visible share of a request's cost). */
    static __thread time_t cached_sec = -1;
    static __thread char cached_prefix[64];
    int have_time = ts->tv_sec == cached_sec;
    if (!have_time) {
        struct tm tm;
        if (gmtime_r(&ts->tv_sec, &tm) != NULL) {
            snprintf(cached_prefix, sizeof(cached_prefix), "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
            cached_sec = ts->tv_sec;
            have_time = 1;
        }
    }
    if (have_time) {
        int ms = (int)(ts->tv_nsec / 1000000);
        char frac[6] = {'.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), 'Z', '\0'};
        put_lit(o, "{\"ts\":\"");
        put_lit(o, cached_prefix);
        put_lit(o, frac);
        put_lit(o, "\",\"level\":\"");
    } else {
        /* Only a clock beyond the range of struct tm gets here; null keeps the line valid without inventing a
         * time. */
        put_lit(o, "{\"ts\":null,\"level\":\"");
    }
    put_lit(o, level_names[level]);
    put_lit(o, "\",\"event\":");
    put_string(o, event, event != NULL ? strlen(event) : 0, &truncated);

    for (size_t i = 0; i < n; i++) {
        size_t mark = o->len;
        if (put_key(o, fields[i].key) != 0 || put_value(o, &fields[i], &truncated) != 0) {
            /* Fields keep their order, so once one no longer fits the rest are left out. */
            o->len = mark;
            return 1;
        }
    }
    return truncated;
}

/* Formats the whole line into buf (CRM_LOG_LINE_MAX bytes) and returns its length. */
static size_t format_line(char *buf, crm_log_level_t level, const char *event, const crm_log_field_t *fields, size_t n)
{
    static const char marker[] = ",\"truncated\":true";
    static const char end[] = "}\n";
    struct timespec ts;

    if (clock_fn != NULL)
        clock_fn(&ts);
    else
        clock_gettime(CLOCK_REALTIME, &ts);

    /* Format with the whole line available first, so that a line that fits uses all of it. Only an overlong line
     * is formatted a second time, with room kept for the marker. */
    out_t o = {.p = buf, .len = 0, .lim = CRM_LOG_LINE_MAX - (sizeof(end) - 1)};
    if (format_body(&o, &ts, level, event, fields, n) != 0) {
        o.len = 0;
        o.lim -= sizeof(marker) - 1;
        format_body(&o, &ts, level, event, fields, n);
        o.lim += sizeof(marker) - 1;
        put_lit(&o, marker);
    }
    o.lim += sizeof(end) - 1;
    put_lit(&o, end);
    return o.len;
}

void crm_log_fields(crm_log_level_t level, const char *event, const crm_log_field_t *fields, size_t n)
{
    if (!crm_log_enabled(level))
        return;
    if (fields == NULL)
        n = 0;

    char line[CRM_LOG_LINE_MAX];
    size_t len = format_line(line, level, event, fields, n);

    pthread_mutex_lock(&lg.mu);
    while (lg.state == STATE_STOPPING)
        pthread_cond_wait(&lg.idle, &lg.mu);
    if (lg.state == STATE_RUNNING) {
        if (len > lg.cap - lg.fill_len) {
            count_dropped(1);
        } else {
            memcpy(lg.fill + lg.fill_len, line, len);
            size_t before = lg.fill_len;
            lg.fill_len += len;
            /* Waking the writer for every line costs a futex call and a context switch per request (measured: it
             * doubled the cost of a request). Wake it for the first line of a batch, when it sleeps with no
             * timeout, and when the buffer passes a quarter full; otherwise it collects for up to BATCH_MS. */
            if ((before == 0 && lg.sleeping) || (before < lg.cap / 4 && lg.fill_len >= lg.cap / 4))
                pthread_cond_signal(&lg.wake);
        }
    } else {
        /* No writer: start-up or shutdown, when no loop runs. Writing under the mutex keeps lines from concurrent
         * threads whole. */
        write_all(STDERR_FILENO, line, len);
    }
    pthread_mutex_unlock(&lg.mu);
}

/* ---- writer thread ---- */

static void *writer_main(void *arg)
{
    pthread_mutex_lock(&lg.mu);
    for (;;) {
        lg.sleeping = 1;
        while (lg.fill_len == 0 && lg.state == STATE_RUNNING)
            pthread_cond_wait(&lg.wake, &lg.mu);
        lg.sleeping = 0;
        /* A batch has begun: give it up to BATCH_MS to grow, so one write(2) carries many lines. A quarter-full
         * buffer or a stop request ends the wait early. */
        if (lg.state == STATE_RUNNING && lg.fill_len < lg.cap / 4) {
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_nsec += BATCH_MS * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec += 1;
                until.tv_nsec -= 1000000000L;
            }
            while (lg.state == STATE_RUNNING && lg.fill_len < lg.cap / 4)
                if (pthread_cond_timedwait(&lg.wake, &lg.mu, &until) != 0)
                    break;
        }
        if (lg.fill_len == 0)
            break; /* STOPPING and everything written */

        /* Swap under the mutex, write outside it: callers keep appending to the other buffer meanwhile. */
        char *batch = lg.fill;
        size_t len = lg.fill_len;
        lg.fill = lg.drain;
        lg.drain = batch;
        lg.fill_len = 0;
        int fd = lg.fd;
        pthread_mutex_unlock(&lg.mu);
        write_all(fd, batch, len);
        pthread_mutex_lock(&lg.mu);
    }
    lg.state = STATE_IDLE;
    pthread_cond_broadcast(&lg.idle);
    pthread_mutex_unlock(&lg.mu);
    return NULL;
}

int crm_log_start(int fd, crm_log_level_t level, size_t buffer_bytes)
{
    if (fd < 0 || fcntl(fd, F_GETFD) < 0 || (unsigned)level > CRM_LOG_OFF || buffer_bytes < CRM_LOG_BUFFER_MIN)
        return CRM_E_INVAL;

    int err = 0;
    char *a = NULL, *b = NULL;
    sigset_t all, old;

    pthread_mutex_lock(&lg.mu);
    if (lg.state != STATE_IDLE) {
        err = CRM_E_STATE;
        goto out;
    }
    a = malloc(buffer_bytes);
    b = malloc(buffer_bytes);
    if (a == NULL || b == NULL) {
        err = CRM_E_NOMEM;
        goto out;
    }
    /* The writer's batching wait is timed on the monotonic clock, so wall-clock steps cannot stretch it. Nobody
     * waits on `wake` while no writer runs, so it can be re-initialised here. */
    static int wake_is_monotonic;
    if (!wake_is_monotonic) {
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_destroy(&lg.wake);
        pthread_cond_init(&lg.wake, &attr);
        pthread_condattr_destroy(&attr);
        wake_is_monotonic = 1;
    }
    lg.fd = fd;
    lg.fill = a;
    lg.drain = b;
    lg.fill_len = 0;
    lg.cap = buffer_bytes;
    lg.state = STATE_RUNNING;

    /* The thread inherits the signal mask: with every signal blocked, handlers run elsewhere and a broken pipe
     * surfaces as EPIPE. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&lg.thread, NULL, writer_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        lg.state = STATE_IDLE;
        lg.fill = lg.drain = NULL;
        lg.cap = 0;
        lg.fd = -1;
        err = CRM_E_NOMEM;
        goto out;
    }
    a = b = NULL;
    atomic_store_explicit(&min_level, (int)level, memory_order_relaxed);

out:
    pthread_mutex_unlock(&lg.mu);
    free(a);
    free(b);
    return err;
}

void crm_log_stop(void)
{
    pthread_mutex_lock(&lg.mu);
    if (lg.state != STATE_RUNNING) {
        pthread_mutex_unlock(&lg.mu);
        return;
    }
    lg.state = STATE_STOPPING;
    pthread_cond_signal(&lg.wake);
    pthread_mutex_unlock(&lg.mu);

    pthread_join(lg.thread, NULL);

    /* The writer set IDLE before exiting, and in IDLE nobody touches the buffers. */
    pthread_mutex_lock(&lg.mu);
    free(lg.fill);
    free(lg.drain);
    lg.fill = lg.drain = NULL;
    lg.fill_len = 0;
    lg.cap = 0;
    lg.fd = -1;
    pthread_mutex_unlock(&lg.mu);
}
