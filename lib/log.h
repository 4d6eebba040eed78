/*
 * crmd structured logging: one JSON object per line, written without ever blocking the event loop.
 *
 * DESIGN.md §3, invariant 1 forbids blocking I/O on the loop thread, and the log destination (usually stderr) may be
 * a slow pipe, a full terminal or a file on a busy disk. So a caller only formats its line into a stack buffer and
 * appends it to a bounded in-memory buffer under a short critical section; a dedicated writer thread performs the
 * blocking write(2). When the buffer is full the line is dropped and counted (crm_log_dropped): logging never
 * blocks the loop and never grows without bound (invariant 3).
 *
 * Lifecycle:
 *   - Before crm_log_start and after crm_log_stop, each line is written synchronously to fd 2 by the calling thread.
 *     That is meant for start-up and shutdown messages, which happen only while no loop runs.
 *   - crm_log_start(fd, ...) starts the writer thread; from then on lines go through the buffer to fd.
 *   - crm_log_stop() writes out everything queued, joins the thread and returns to synchronous mode.
 *   crm_log_start and crm_log_stop must not run concurrently with each other (call them from the main thread);
 *   every other function is thread-safe and may be called from the loop thread and from thread-pool threads at any
 *   time. None of them is async-signal-safe: do not log from a signal handler.
 *
 * Line format (one line, no pretty printing, at most CRM_LOG_LINE_MAX bytes including the newline):
 *   {"ts":"2026-11-23T16:54:04.123Z","level":"info","event":"http.listen","addr":"127.0.0.1:8080"}
 *   - ts is CLOCK_REALTIME in UTC, RFC 3339 with milliseconds (truncated, not rounded);
 *   - the fields follow "event" in the order given;
 *   - strings (event, keys, values) are JSON-escaped: '"' and '\' are backslash-escaped, control characters
 *     become \b \f \n \r \t or \u00XX, DEL and valid multibyte UTF-8 are written as they are, and every ill-formed
 *     UTF-8 sequence is replaced by \ufffd (one per maximal ill-formed subpart, as Unicode recommends), so every
 *     line is valid JSON whatever bytes the caller passes;
 *   - a NULL string value (or NULL event) is written as null; doubles are written with the fewest digits (15 to 17)
 *     that read back as the same value, and NaN and infinities are written as null.
 *
 * Truncation: a line never exceeds CRM_LOG_LINE_MAX. When the fields do not fit, the string value that overflows
 * (or the event) is cut at a character boundary and ends with "…" (U+2026), fields that no longer fit at all are
 * omitted, and the line ends with "truncated":true as its last key. An untruncated line never carries that key.
 *
 * Signals: the writer thread runs with every signal blocked, so no signal handler ever runs on it and a write to a
 * closed pipe there fails with EPIPE (the line is dropped and counted) instead of killing the process. The
 * synchronous path writes from the caller's thread, so ignoring SIGPIPE for the process is the program's job.
 */
#ifndef CRM_LOG_H
#define CRM_LOG_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* The longest line written, in bytes, including the trailing newline. Lines are formatted into a stack buffer of
 * this size, so a thread that logs needs this much stack. */
#define CRM_LOG_LINE_MAX 8192

/* The smallest buffer crm_log_start accepts. */
#define CRM_LOG_BUFFER_MIN 4096

typedef enum { CRM_LOG_DEBUG = 0, CRM_LOG_INFO, CRM_LOG_WARN, CRM_LOG_ERROR, CRM_LOG_OFF } crm_log_level_t;

/* Parses a level name: "debug", "info", "warn", "error" or "off", in any letter case. Stores it in *out and returns
 * 0, or returns CRM_E_INVAL (leaving *out untouched) for anything else, including NULL. */
int crm_log_level_parse(const char *s, crm_log_level_t *out);

/* The lower-case name of l ("info", ...), or "unknown" for a value outside the enum. Static; never NULL. */
const char *crm_log_level_name(crm_log_level_t l);

/*
 * Starts the writer thread: from now on lines are queued and written to fd, and the minimum level is set to level.
 *
 * fd stays owned by the caller, who must keep it open until crm_log_stop returns; the logger never closes it. If fd
 * is non-blocking (libuv may set O_NONBLOCK on a shared stderr), the writer waits for it with poll(2).
 * buffer_bytes is the capacity of the queue, fixed here: two buffers of that size are allocated, one that callers
 * fill and one that the writer is writing out. A line longer than buffer_bytes can never be queued and is always
 * dropped, so give at least CRM_LOG_LINE_MAX (64 KiB or more is typical).
 *
 * Returns 0; CRM_E_INVAL if fd is not an open descriptor, level is not a crm_log_level_t or buffer_bytes is below
 * CRM_LOG_BUFFER_MIN; CRM_E_STATE if the writer is already running; CRM_E_NOMEM if the buffers or the thread cannot
 * be created. On failure nothing changed.
 */
int crm_log_start(int fd, crm_log_level_t level, size_t buffer_bytes);

/*
 * Writes out every line queued so far, joins the writer thread and frees the buffers; afterwards lines are written
 * synchronously to fd 2 again. This blocks until fd has accepted everything queued, so call it only once the loop
 * has stopped. Lines logged by other threads while it runs wait until it has finished and are then written
 * synchronously, after the queued ones. Does nothing if the writer is not running.
 */
void crm_log_stop(void);

/* Sets the minimum level written; CRM_LOG_OFF writes nothing. Values outside the enum are ignored. The level before
 * the first crm_log_start is CRM_LOG_INFO; crm_log_stop leaves it unchanged. */
void crm_log_set_level(crm_log_level_t level);

/* Nonzero when a line at level would be written. A single atomic load: callers use it to skip building fields.
 * Always 0 for CRM_LOG_OFF and values outside the enum. */
int crm_log_enabled(crm_log_level_t level);

/* How many lines were lost since the process started: the queue was full, the line was longer than the queue, or
 * write(2) failed (EPIPE, EBADF, ...; the rest of that batch is discarded). Monotonic, for metrics. */
uint64_t crm_log_dropped(void);

/* Field types. STRN is a string with an explicit length that may hold any bytes, including NUL. */
typedef enum {
    CRM_LOG_T_STR,
    CRM_LOG_T_STRN,
    CRM_LOG_T_INT,
    CRM_LOG_T_UINT,
    CRM_LOG_T_DBL,
    CRM_LOG_T_BOOL
} crm_log_type_t;

/* One key/value pair. The key must not be NULL (a NULL key is written as ""). Pointers are only read during the
 * call: the caller keeps ownership and nothing is retained. */
typedef struct {
    const char *key;
    crm_log_type_t type;
    union {
        const char *s;
        struct {
            const char *p;
            size_t n;
        } sn;
        int64_t i;
        uint64_t u;
        double d;
        int b;
    } v;
} crm_log_field_t;

#define CRM_LOG_STR(k, x)         ((crm_log_field_t){.key = (k), .type = CRM_LOG_T_STR, .v.s = (x)})
#define CRM_LOG_STRN(k, ptr, len) ((crm_log_field_t){.key = (k), .type = CRM_LOG_T_STRN, .v.sn = {(ptr), (len)}})
#define CRM_LOG_INT(k, x)         ((crm_log_field_t){.key = (k), .type = CRM_LOG_T_INT, .v.i = (int64_t)(x)})
#define CRM_LOG_UINT(k, x)        ((crm_log_field_t){.key = (k), .type = CRM_LOG_T_UINT, .v.u = (uint64_t)(x)})
#define CRM_LOG_DBL(k, x)         ((crm_log_field_t){.key = (k), .type = CRM_LOG_T_DBL, .v.d = (double)(x)})
#define CRM_LOG_BOOL(k, x)        ((crm_log_field_t){.key = (k), .type = CRM_LOG_T_BOOL, .v.b = !!(x)})

/*
 * Logs one line with the n fields (a NULL fields counts as none) if level is enabled. Formats in the calling
 * thread, then queues the line (or drops and counts it when the queue is full) or, with no writer running, writes it
 * to fd 2 synchronously. Never blocks while the writer runs, except for the short critical section that appends.
 * CRM_LOG_OFF is not a message level: such a line is never written.
 */
void crm_log_fields(crm_log_level_t level, const char *event, const crm_log_field_t *fields, size_t n);

/*
 * crm_log(level, event, fields...) logs the CRM_LOG_* fields given, possibly none:
 *     crm_log(CRM_LOG_INFO, "started");
 *     crm_log(CRM_LOG_INFO, "http.listen", CRM_LOG_STR("addr", addr), CRM_LOG_UINT("port", port));
 * The field expressions are evaluated only when level is enabled. The leading element of the array is a
 * placeholder that makes an empty field list valid C (a trailing comma in an initializer); it is never passed on.
 */
#define crm_log(level, event, ...)                                                                                     \
    do {                                                                                                               \
        crm_log_level_t crm_log_level_ = (level);                                                                      \
        if (crm_log_enabled(crm_log_level_)) {                                                                         \
            const crm_log_field_t crm_log_fields_[] = {{NULL}, __VA_ARGS__};                                           \
            crm_log_fields(crm_log_level_, (event), crm_log_fields_ + 1,                                               \
                           sizeof(crm_log_fields_) / sizeof(crm_log_fields_[0]) - 1);                                  \
        }                                                                                                              \
    } while (0)

/* Test only: replaces the clock that stamps "ts" (NULL restores clock_gettime(CLOCK_REALTIME)). Call it only while
 * no other thread is logging. */
void crm_log_set_clock_for_test(void (*fn)(struct timespec *));

#endif
