#include "pg.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "err.h"
#include "log.h"
#include "timerq.h"

/* PostgreSQL accepts up to 65535 parameters per statement; crmd's statements use a handful, and a bound keeps the
 * per-pool scratch arrays small. */
#define MAX_PARAMS_PER_STMT 1024
#define MAX_HOSTS           8
#define UNIT_INLINE_STMTS   4
#define UNIT_INLINE_PARAMS  16
#define UNIT_INLINE_ARENA   256

/* The pool's own statements, prepared on every connection before the registered ones. */
enum {
    STMT_BEGIN = 0,
    STMT_COMMIT,
    STMT_SET_TENANT,
    STMT_SET_TIMEOUT,
    STMT_SET_TENANT_TIMEOUT,
    INTERNAL_STMTS,
};

typedef struct {
    char *name; /* for logs */
    char *sql;
    int nparams;
    char wire_name[16]; /* the prepared statement's name on the server */
} stmt_def_t;

typedef enum {
    UNIT_NEW = 0,
    UNIT_QUEUED,
    UNIT_IN_FLIGHT,
} unit_state_t;

typedef struct {
    crm_pg_stmt_t id;
    uint32_t nparams;
    uint32_t first_param; /* index into the unit's param offsets */
} unit_stmt_t;

typedef struct st_pg_conn_t pg_conn_t;

struct st_crm_pg_unit_t {
    crm_pg_pool_t *pool;
    unsigned flags;
    unit_state_t state;
    int detached;
    int answered; /* the caller already had CRM_E_DEADLINE (answer_early); the answers still due are discarded */
    crm_pg_unit_cb cb;
    void *data;
    crm_timer_t timer; /* queue wait, then the client-side backstop */
    uint64_t deadline; /* absolute loop ms; 0 = default at submit */
    uint64_t queued_at;
    uint64_t sent_at_ns;
    crm_breaker_permit_t permit;
    char tenant[64];
    /* Links: the pool's wait queue (doubly linked, for O(1) removal on timeout or detach) or a connection's
     * in-flight FIFO (singly linked, answers arrive in order). */
    crm_pg_unit_t *next, *prev;
    pg_conn_t *conn;
    /* What was sent, to walk the answers: see send_unit. */
    uint8_t has_begin, has_setup;
    size_t step;    /* index of the command whose answer comes next */
    int await_null; /* the command's result arrived; libpq's terminating NULL is next */
    int sql_error;  /* a statement failed */
    char sqlstate[6];
    char *error_message;
    int error_index;
    /* Statements and their parameters. Parameter values live NUL-terminated in one arena; offsets survive the
     * arena's reallocation. */
    unit_stmt_t *stmts;
    size_t nstmts, stmts_cap;
    int32_t *params; /* arena offset, or -1 for SQL NULL */
    size_t nparams, params_cap;
    char *arena;
    size_t arena_len, arena_cap;
    PGresult **results;
    unit_stmt_t inline_stmts[UNIT_INLINE_STMTS];
    int32_t inline_params[UNIT_INLINE_PARAMS];
    PGresult *inline_results[UNIT_INLINE_STMTS];
    char inline_arena[UNIT_INLINE_ARENA];
};

typedef struct {
    uv_poll_t handle;
    crm_pg_pool_t *pool;
    pg_conn_t *conn; /* NULL once the connection let go of this handle */
} pg_poll_t;

typedef struct {
    uv_getaddrinfo_t req;
    crm_pg_pool_t *pool;
    pg_conn_t *conn; /* NULL when the attempt was abandoned (timeout, close) before the answer came */
} pg_resolve_t;

struct st_pg_conn_t {
    crm_pg_pool_t *pool;
    size_t index;
    crm_pg_conn_state_t state;
    PGconn *pg;
    pg_poll_t *poll;
    int poll_fd;
    int poll_events;
    PostgresPollingStatusType connect_poll;
    crm_timer_t timer; /* connect deadline, or backoff */
    pg_resolve_t *resolve;
    size_t resolve_next; /* next host to resolve */
    char hostaddr[MAX_HOSTS][INET6_ADDRSTRLEN];
    size_t prepares_pending; /* prepare answers still expected, then the Sync */
    int prepare_await_null;
    int prepare_error;
    crm_pg_unit_t *head, *tail; /* units in flight, in send order */
    size_t in_flight;
    unsigned failures; /* consecutive failed attempts, for the backoff exponent */
    int ever_ready;
    uint64_t state_since;
};

struct st_crm_pg_pool_t {
    uv_loop_t *loop;
    crm_pg_config_t cfg;
    char *conninfo;
    char *application_name;
    /* Connection parameters from PQconninfoParse plus crmd's additions; `hostaddr_slot` is filled per attempt
     * with addresses crmd resolved itself, so that libpq never calls getaddrinfo on the loop. */
    const char **keys, **vals;
    size_t nkeys;
    int hostaddr_slot;
    char *hostaddr_value;
    size_t nhosts;
    char *hosts[MAX_HOSTS];
    int host_needs_dns[MAX_HOSTS];
    int any_dns;
    stmt_def_t *stmts;
    size_t nstmts, stmts_cap;
    pg_conn_t *conns;
    crm_timerq_t timers;
    crm_breaker_t breaker;
    crm_pg_unit_t *q_head, *q_tail;
    size_t q_len;
    crm_pg_stats_t stats;
    crm_histogram_t queue_wait;
    crm_histogram_t exec_time;
    const char **scratch_values;
    int started, closing, closed;
    crm_timer_t close_timer;
    void (*on_closed)(void *data);
    void *on_closed_data;
    size_t open_handles; /* poll handles and resolver requests not yet finished */
    /* Submits only queue; the check handle sends everything queued during a loop iteration right after that
     * iteration's I/O callbacks, and the idle handle keeps the loop from blocking in poll while a dispatch is
     * pending (for submits made from timer callbacks). Deferring keeps callbacks out of submit's stack frame. */
    uv_check_t dispatch_check;
    uv_idle_t dispatch_idle;
    int dispatch_pending;
};

static void conn_start(pg_conn_t *c);
static void conn_fail(pg_conn_t *c, int err, const char *why, crm_pg_unit_t *expired);
static void conn_process(pg_conn_t *c);
static void dispatch(crm_pg_pool_t *pool);
static void unit_finish(crm_pg_unit_t *u, int err);
static void maybe_finish_close(crm_pg_pool_t *pool);

/* ---- configuration ---- */

void crm_pg_config_default(crm_pg_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->application_name = "crmd";
    cfg->size = 4;
    cfg->pipeline_depth = 128;
    cfg->queue_max = 1024;
    cfg->queue_timeout_ms = 1000;
    cfg->statement_timeout_ms = 5000;
    cfg->connect_timeout_ms = 5000;
    cfg->reconnect_min_ms = 100;
    cfg->reconnect_max_ms = 5000;
    cfg->backstop_grace_ms = 250;
    cfg->max_statements = 64;
    cfg->max_param_bytes = 16u << 20;
    crm_breaker_config_default(&cfg->breaker);
}

const char *crm_pg_conn_state_name(crm_pg_conn_state_t s)
{
    static const char *const names[] = {"idle", "connecting", "preparing", "ready", "backoff"};
    return (unsigned)s < CRM_PG_CONN_STATE_COUNT ? names[s] : "unknown";
}

static uint64_t now_ms(const crm_pg_pool_t *pool)
{
    return uv_now(pool->loop);
}

static uint64_t breaker_clock(void *ctx)
{
    return uv_now((uv_loop_t *)ctx);
}

/* libpq's messages end with a newline and may span lines; logs want one line. */
static void one_line(const char *in, char *out, size_t cap)
{
    size_t n = 0;
    for (; in != NULL && *in != '\0' && n + 1 < cap; ++in)
        out[n++] = (*in == '\n' || *in == '\r' || *in == '\t') ? ' ' : *in;
    while (n > 0 && out[n - 1] == ' ')
        --n;
    out[n] = '\0';
}

static int host_needs_dns(const char *h)
{
    unsigned char buf[sizeof(struct in6_addr)];
    if (h[0] == '\0' || h[0] == '/' || h[0] == '@')
        return 0;
    return inet_pton(AF_INET, h, buf) != 1 && inet_pton(AF_INET6, h, buf) != 1;
}

/* Parses conninfo once, keeps every parameter the operator set, and adds crmd's session settings to `options`:
 * the default statement_timeout (the server-side half of the per-query deadline), a check for vanished clients
 * during long queries, and a cap on idle-in-transaction time. TCP keepalives detect a dead peer on a quiet link. */
static int build_conn_params(crm_pg_pool_t *pool)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(pool->conninfo, &errmsg);
    if (opts == NULL) {
        char line[256];
        one_line(errmsg, line, sizeof(line));
        crm_log(CRM_LOG_ERROR, "pg.conninfo_invalid", CRM_LOG_STR("error", line));
        PQfreemem(errmsg);
        return CRM_E_CONFIG;
    }
    size_t n = 0;
    for (PQconninfoOption *o = opts; o->keyword != NULL; ++o)
        ++n;
    /* Room for every parsed option plus the ones crmd may add, plus the NULL terminator. */
    size_t cap = n + 8;
    pool->keys = calloc(cap, sizeof(*pool->keys));
    pool->vals = calloc(cap, sizeof(*pool->vals));
    if (pool->keys == NULL || pool->vals == NULL) {
        PQconninfoFree(opts);
        return CRM_E_NOMEM;
    }
    char extra[256];
    snprintf(extra, sizeof(extra),
             "-c statement_timeout=%llu -c client_connection_check_interval=1000 "
             "-c idle_in_transaction_session_timeout=%llu",
             (unsigned long long)pool->cfg.statement_timeout_ms,
             (unsigned long long)(pool->cfg.statement_timeout_ms * 4 + 10000));
    int have_options = 0, have_appname = 0, have_keepalives = 0;
    const char *host = NULL, *hostaddr = NULL;
    size_t k = 0;
    for (PQconninfoOption *o = opts; o->keyword != NULL; ++o) {
        if (o->val == NULL || o->val[0] == '\0')
            continue;
        const char *val = o->val;
        char *owned = NULL;
        if (strcmp(o->keyword, "options") == 0) {
            size_t len = strlen(val) + strlen(extra) + 2;
            owned = malloc(len);
            if (owned != NULL)
                snprintf(owned, len, "%s %s", val, extra);
            have_options = 1;
        } else {
            owned = strdup(val);
        }
        if (owned == NULL) {
            PQconninfoFree(opts);
            return CRM_E_NOMEM;
        }
        if (strcmp(o->keyword, "application_name") == 0)
            have_appname = 1;
        if (strcmp(o->keyword, "keepalives") == 0)
            have_keepalives = 1;
        if (strcmp(o->keyword, "host") == 0)
            host = owned;
        if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = owned;
        pool->keys[k] = strdup(o->keyword);
        pool->vals[k] = owned;
        if (pool->keys[k] == NULL) {
            PQconninfoFree(opts);
            return CRM_E_NOMEM;
        }
        ++k;
    }
    PQconninfoFree(opts);
#define ADD(key, value)                                                                                                \
    do {                                                                                                               \
        pool->keys[k] = strdup(key);                                                                                   \
        pool->vals[k] = strdup(value);                                                                                 \
        if (pool->keys[k] == NULL || pool->vals[k] == NULL)                                                            \
            return CRM_E_NOMEM;                                                                                        \
        ++k;                                                                                                           \
    } while (0)
    if (!have_options)
        ADD("options", extra);
    if (!have_appname)
        ADD("application_name", pool->application_name);
    if (!have_keepalives) {
        ADD("keepalives", "1");
        ADD("keepalives_idle", "30");
        ADD("keepalives_interval", "10");
        ADD("keepalives_count", "3");
    }
#undef ADD
    pool->nkeys = k;
    pool->hostaddr_slot = -1;
    /* Host names are resolved by crmd on the thread pool (uv_getaddrinfo) and handed to libpq as hostaddr: libpq
     * would otherwise call getaddrinfo on the loop thread inside PQconnectStart. Skipped when the operator gave
     * hostaddr, and for unix sockets and address literals. libpq falls back to PGHOST when the URL names no host,
     * so that is looked at too (this runs at start-up). A host taken from a service file is not seen here. */
    if (host == NULL && hostaddr == NULL && getenv("PGHOSTADDR") == NULL)
        host = getenv("PGHOST");
    if (host != NULL && hostaddr == NULL) {
        /* Split exactly as libpq does: on every comma, keeping empty elements (libpq's default host), so that
         * the hostaddr list lines up with libpq's host list element by element. */
        const char *p = host;
        for (;;) {
            const char *comma = strchr(p, ',');
            size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
            if (pool->nhosts == MAX_HOSTS) {
                crm_log(CRM_LOG_ERROR, "pg.conninfo_invalid", CRM_LOG_STR("error", "more than 8 hosts"));
                return CRM_E_CONFIG;
            }
            while (len > 0 && *p == ' ') {
                ++p;
                --len;
            }
            if ((pool->hosts[pool->nhosts] = strndup(p, len)) == NULL)
                return CRM_E_NOMEM;
            pool->host_needs_dns[pool->nhosts] = host_needs_dns(pool->hosts[pool->nhosts]);
            pool->any_dns |= pool->host_needs_dns[pool->nhosts];
            ++pool->nhosts;
            if (comma == NULL)
                break;
            p = comma + 1;
        }
        if (pool->any_dns) {
            pool->hostaddr_slot = (int)k;
            pool->keys[k] = strdup("hostaddr");
            if (pool->keys[k] == NULL)
                return CRM_E_NOMEM;
            pool->vals[k] = NULL; /* filled per attempt */
            pool->nkeys = ++k;
        }
    }
    pool->keys[k] = NULL;
    pool->vals[k] = NULL;
    return 0;
}

/* ---- pool lifecycle ---- */

static int add_stmt(crm_pg_pool_t *pool, const char *name, const char *sql, int nparams, crm_pg_stmt_t *out)
{
    if (pool->nstmts == pool->stmts_cap) {
        size_t cap = pool->stmts_cap ? pool->stmts_cap * 2 : 32;
        stmt_def_t *grown = realloc(pool->stmts, cap * sizeof(*grown));
        if (grown == NULL)
            return CRM_E_NOMEM;
        pool->stmts = grown;
        pool->stmts_cap = cap;
    }
    stmt_def_t *d = &pool->stmts[pool->nstmts];
    d->name = strdup(name);
    d->sql = strdup(sql);
    if (d->name == NULL || d->sql == NULL) {
        free(d->name);
        free(d->sql);
        return CRM_E_NOMEM;
    }
    d->nparams = nparams;
    snprintf(d->wire_name, sizeof(d->wire_name), "crm_%zu", pool->nstmts);
    if (out != NULL)
        *out = (crm_pg_stmt_t)pool->nstmts;
    ++pool->nstmts;
    return 0;
}

static void on_breaker_transition(crm_breaker_t *b, crm_breaker_state_t from, crm_breaker_state_t to, void *ctx)
{
    crm_log(to == CRM_BREAKER_OPEN ? CRM_LOG_WARN : CRM_LOG_INFO, "breaker.transition", CRM_LOG_STR("breaker", b->name),
            CRM_LOG_STR("from", crm_breaker_state_name(from)), CRM_LOG_STR("to", crm_breaker_state_name(to)));
}

static void pool_free(crm_pg_pool_t *pool)
{
    if (pool == NULL)
        return;
    for (size_t i = 0; pool->keys != NULL && i < pool->nkeys; ++i) {
        free((char *)pool->keys[i]);
        free((char *)pool->vals[i]);
    }
    free(pool->keys);
    free(pool->vals);
    free(pool->hostaddr_value);
    for (size_t i = 0; i < pool->nhosts; ++i)
        free(pool->hosts[i]);
    for (size_t i = 0; i < pool->nstmts; ++i) {
        free(pool->stmts[i].name);
        free(pool->stmts[i].sql);
    }
    free(pool->stmts);
    free(pool->conns);
    free(pool->scratch_values);
    crm_breaker_dispose(&pool->breaker);
    crm_histogram_dispose(&pool->queue_wait);
    crm_histogram_dispose(&pool->exec_time);
    free(pool->conninfo);
    free(pool->application_name);
    free(pool);
}

int crm_pg_pool_create(uv_loop_t *loop, const crm_pg_config_t *cfg, crm_pg_pool_t **out)
{
    int err = CRM_E_NOMEM;
    *out = NULL;
    if (cfg->conninfo == NULL || cfg->size < 1 || cfg->size > 256 || cfg->pipeline_depth < 1 ||
        cfg->pipeline_depth > 1024 || cfg->queue_max > 1000000 || cfg->statement_timeout_ms == 0 ||
        cfg->connect_timeout_ms == 0 || cfg->reconnect_min_ms == 0 || cfg->reconnect_max_ms < cfg->reconnect_min_ms ||
        cfg->max_statements == 0 || cfg->max_param_bytes == 0)
        return CRM_E_INVAL;
    crm_pg_pool_t *pool = calloc(1, sizeof(*pool));
    if (pool == NULL)
        return CRM_E_NOMEM;
    pool->loop = loop;
    pool->cfg = *cfg;
    pool->conninfo = strdup(cfg->conninfo);
    pool->application_name = strdup(cfg->application_name != NULL ? cfg->application_name : "crmd");
    pool->scratch_values = calloc(MAX_PARAMS_PER_STMT, sizeof(*pool->scratch_values));
    pool->conns = calloc(cfg->size, sizeof(*pool->conns));
    if (pool->conninfo == NULL || pool->application_name == NULL || pool->scratch_values == NULL || pool->conns == NULL)
        goto error;
    pool->cfg.conninfo = pool->conninfo;
    pool->cfg.application_name = pool->application_name;
    if ((err = crm_breaker_init(&pool->breaker, "postgresql", &cfg->breaker, breaker_clock, loop)) != 0)
        goto error;
    crm_breaker_on_transition(&pool->breaker, on_breaker_transition, pool);
    if ((err = crm_histogram_init(&pool->queue_wait, crm_latency_buckets_seconds, crm_latency_buckets_count)) != 0 ||
        (err = crm_histogram_init(&pool->exec_time, crm_latency_buckets_seconds, crm_latency_buckets_count)) != 0)
        goto error;
    if ((err = build_conn_params(pool)) != 0)
        goto error;
    /* The order here must match the STMT_* enum. */
    if ((err = add_stmt(pool, "begin", "BEGIN", 0, NULL)) != 0 || (err = add_stmt(pool, "commit", "COMMIT", 0, NULL)) ||
        (err = add_stmt(pool, "set_tenant", "SELECT set_config('app.tenant_id', $1, true)", 1, NULL)) != 0 ||
        (err = add_stmt(pool, "set_timeout", "SELECT set_config('statement_timeout', $1, true)", 1, NULL)) != 0 ||
        (err = add_stmt(pool, "set_tenant_timeout",
                        "SELECT set_config('app.tenant_id', $1, true), set_config('statement_timeout', $2, true)", 2,
                        NULL)) != 0)
        goto error;
    for (size_t i = 0; i < cfg->size; ++i) {
        pool->conns[i].pool = pool;
        pool->conns[i].index = i;
        pool->conns[i].state = CRM_PG_CONN_IDLE;
        pool->conns[i].poll_fd = -1;
        crm_timer_init(&pool->conns[i].timer);
    }
    crm_timer_init(&pool->close_timer);
    /* Every timer the pool can have at once: one per connection, one per waiting or in-flight unit, and the
     * deferred close. */
    size_t capacity = cfg->size + cfg->queue_max + cfg->size * cfg->pipeline_depth + 1;
    if ((err = crm_timerq_init(loop, &pool->timers, capacity)) != 0)
        goto error;
    uv_check_init(loop, &pool->dispatch_check);
    uv_idle_init(loop, &pool->dispatch_idle);
    pool->dispatch_check.data = pool;
    pool->dispatch_idle.data = pool;
    pool->open_handles += 2;
    *out = pool;
    return 0;
error:
    pool_free(pool);
    return err;
}

int crm_pg_pool_prepare(crm_pg_pool_t *pool, const char *name, const char *sql, int nparams, crm_pg_stmt_t *out)
{
    if (pool->started || name == NULL || sql == NULL || nparams < 0 || nparams > MAX_PARAMS_PER_STMT)
        return CRM_E_INVAL;
    for (size_t i = INTERNAL_STMTS; i < pool->nstmts; ++i)
        if (strcmp(pool->stmts[i].name, name) == 0)
            return CRM_E_EXISTS;
    return add_stmt(pool, name, sql, nparams, out);
}

int crm_pg_pool_start(crm_pg_pool_t *pool)
{
    if (pool->started || pool->closing)
        return CRM_E_STATE;
    pool->started = 1;
    for (size_t i = 0; i < pool->cfg.size; ++i)
        conn_start(&pool->conns[i]);
    return 0;
}

crm_breaker_t *crm_pg_pool_breaker(crm_pg_pool_t *pool)
{
    return &pool->breaker;
}

void crm_pg_pool_stats(const crm_pg_pool_t *pool, crm_pg_stats_t *out)
{
    *out = pool->stats;
    memset(out->conns, 0, sizeof(out->conns));
    out->in_flight = 0;
    for (size_t i = 0; i < pool->cfg.size; ++i) {
        out->conns[pool->conns[i].state]++;
        out->in_flight += pool->conns[i].in_flight;
    }
    out->queued = pool->q_len;
}

int crm_pg_pool_is_serving(crm_pg_pool_t *pool)
{
    if (pool->closing || crm_breaker_state(&pool->breaker) == CRM_BREAKER_OPEN)
        return 0;
    for (size_t i = 0; i < pool->cfg.size; ++i)
        if (pool->conns[i].state == CRM_PG_CONN_READY)
            return 1;
    return 0;
}

/* ---- connection I/O ---- */

static void set_state(pg_conn_t *c, crm_pg_conn_state_t s)
{
    c->state = s;
    c->state_since = now_ms(c->pool);
}

static void on_poll_closed(uv_handle_t *handle)
{
    pg_poll_t *p = (pg_poll_t *)handle;
    crm_pg_pool_t *pool = p->pool;
    free(p);
    --pool->open_handles;
    maybe_finish_close(pool);
}

/* Stops watching the socket. Must run before PQfinish closes the descriptor: uv_close removes it from epoll at
 * once, so a new connection that reuses the same descriptor number can be watched right away. */
static void conn_unwatch(pg_conn_t *c)
{
    if (c->poll == NULL)
        return;
    c->poll->conn = NULL;
    uv_close((uv_handle_t *)&c->poll->handle, on_poll_closed);
    c->poll = NULL;
    c->poll_fd = -1;
    c->poll_events = 0;
}

static void on_poll(uv_poll_t *handle, int status, int events);

/* Watches PQsocket for `events`. libpq may switch sockets while connecting (another host, a retry without TLS),
 * so the descriptor is re-read every time and a changed one gets a fresh handle. */
static int conn_watch(pg_conn_t *c, int events)
{
    int fd = PQsocket(c->pg);
    if (fd < 0)
        return CRM_E_UNAVAILABLE;
    if (c->poll != NULL && c->poll_fd != fd)
        conn_unwatch(c);
    if (c->poll == NULL) {
        pg_poll_t *p = malloc(sizeof(*p));
        if (p == NULL)
            return CRM_E_NOMEM;
        if (uv_poll_init(c->pool->loop, &p->handle, fd) != 0) {
            free(p);
            return CRM_E_IO;
        }
        p->pool = c->pool;
        p->conn = c;
        c->poll = p;
        c->poll_fd = fd;
        c->poll_events = 0;
        ++c->pool->open_handles;
    }
    if (events != c->poll_events) {
        if (uv_poll_start(&c->poll->handle, events, on_poll) != 0)
            return CRM_E_IO;
        c->poll_events = events;
    }
    return 0;
}

/* After sending, libpq may hold unsent bytes (the socket buffer was full); wait for writability only then. */
static int conn_flush(pg_conn_t *c)
{
    int r = PQflush(c->pg);
    if (r < 0)
        return CRM_E_UNAVAILABLE;
    return conn_watch(c, UV_READABLE | (r > 0 ? UV_WRITABLE : 0));
}

static void conn_close_pg(pg_conn_t *c)
{
    conn_unwatch(c);
    if (c->pg != NULL) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    if (c->resolve != NULL) {
        /* The resolver callback still owns the request; it sees conn == NULL and just frees it. */
        c->resolve->conn = NULL;
        uv_cancel((uv_req_t *)&c->resolve->req);
        c->resolve = NULL;
    }
}

static void on_conn_timer(crm_timer_t *t);
static void on_notice(void *arg, const PGresult *r);

static void conn_begin_connect(pg_conn_t *c)
{
    crm_pg_pool_t *pool = c->pool;
    if (pool->hostaddr_slot >= 0) {
        /* Join the per-host addresses into libpq's comma-separated hostaddr list; an empty element tells libpq
         * to use that host's name as is (a socket path or a literal address). */
        size_t len = 1;
        for (size_t i = 0; i < pool->nhosts; ++i)
            len += strlen(c->hostaddr[i]) + 1;
        char *list = malloc(len);
        if (list == NULL) {
            conn_fail(c, CRM_E_NOMEM, "out of memory", NULL);
            return;
        }
        list[0] = '\0';
        for (size_t i = 0; i < pool->nhosts; ++i) {
            if (i > 0)
                strcat(list, ",");
            strcat(list, c->hostaddr[i]);
        }
        free(pool->hostaddr_value);
        pool->hostaddr_value = list;
        pool->vals[pool->hostaddr_slot] = list;
    }
    c->pg = PQconnectStartParams(pool->keys, pool->vals, 0);
    if (pool->hostaddr_slot >= 0)
        pool->vals[pool->hostaddr_slot] = NULL;
    if (c->pg == NULL) {
        conn_fail(c, CRM_E_NOMEM, "out of memory", NULL);
        return;
    }
    PQsetNoticeReceiver(c->pg, on_notice, c);
    if (PQstatus(c->pg) == CONNECTION_BAD || PQsetnonblocking(c->pg, 1) != 0) {
        conn_fail(c, CRM_E_UNAVAILABLE, PQerrorMessage(c->pg), NULL);
        return;
    }
    /* libpq's protocol: behave as if PQconnectPoll had returned PGRES_POLLING_WRITING. */
    c->connect_poll = PGRES_POLLING_WRITING;
    if (conn_watch(c, UV_WRITABLE) != 0)
        conn_fail(c, CRM_E_UNAVAILABLE, "cannot watch the connection socket", NULL);
}

static void resolve_next(pg_conn_t *c);

/* Server notices and warnings (and the FATAL message of a terminated connection) go to the JSON log instead of
 * libpq's default, which prints free text on stderr. */
static void on_notice(void *arg, const PGresult *r)
{
    pg_conn_t *c = arg;
    const char *severity = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    char line[512];
    one_line(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY), line, sizeof(line));
    int serious = severity != NULL && (strcmp(severity, "WARNING") == 0 || strcmp(severity, "ERROR") == 0 ||
                                       strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0);
    crm_log(serious ? CRM_LOG_WARN : CRM_LOG_DEBUG, "pg.notice", CRM_LOG_UINT("conn", c->index),
            CRM_LOG_STR("severity", severity), CRM_LOG_STR("sqlstate", PQresultErrorField(r, PG_DIAG_SQLSTATE)),
            CRM_LOG_STR("message", line));
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    pg_resolve_t *r = (pg_resolve_t *)req;
    crm_pg_pool_t *pool = r->pool;
    pg_conn_t *c = r->conn;
    if (c != NULL) {
        c->resolve = NULL;
        size_t i = c->resolve_next;
        int err = status;
        if (err == 0) {
            if (res->ai_family == AF_INET)
                err = uv_ip4_name((const struct sockaddr_in *)res->ai_addr, c->hostaddr[i], sizeof(c->hostaddr[i]));
            else
                err = uv_ip6_name((const struct sockaddr_in6 *)res->ai_addr, c->hostaddr[i], sizeof(c->hostaddr[i]));
        }
        if (err != 0) {
            char why[300];
            snprintf(why, sizeof(why), "could not resolve host \"%s\": %s", pool->hosts[i], uv_strerror(err));
            conn_fail(c, CRM_E_UNAVAILABLE, why, NULL);
        } else {
            c->resolve_next = i + 1;
            resolve_next(c);
        }
    }
    uv_freeaddrinfo(res);
    free(r);
    --pool->open_handles;
    maybe_finish_close(pool);
}

static void resolve_next(pg_conn_t *c)
{
    crm_pg_pool_t *pool = c->pool;
    while (c->resolve_next < pool->nhosts && !pool->host_needs_dns[c->resolve_next])
        c->hostaddr[c->resolve_next++][0] = '\0';
    if (c->resolve_next == pool->nhosts) {
        conn_begin_connect(c);
        return;
    }
    pg_resolve_t *r = malloc(sizeof(*r));
    if (r == NULL) {
        conn_fail(c, CRM_E_NOMEM, "out of memory", NULL);
        return;
    }
    r->pool = pool;
    r->conn = c;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int err = uv_getaddrinfo(pool->loop, &r->req, on_resolved, pool->hosts[c->resolve_next], NULL, &hints);
    if (err != 0) {
        free(r);
        conn_fail(c, CRM_E_UNAVAILABLE, uv_strerror(err), NULL);
        return;
    }
    c->resolve = r;
    ++pool->open_handles;
}

static void conn_start(pg_conn_t *c)
{
    crm_pg_pool_t *pool = c->pool;
    set_state(c, CRM_PG_CONN_CONNECTING);
    c->prepare_error = 0;
    /* One deadline for the whole attempt: name resolution, TCP, TLS, authentication and statement preparation. */
    crm_timerq_start(&pool->timers, &c->timer, now_ms(pool) + pool->cfg.connect_timeout_ms, on_conn_timer);
    c->resolve_next = 0;
    if (pool->any_dns)
        resolve_next(c);
    else
        conn_begin_connect(c);
}

static void send_prepares(pg_conn_t *c)
{
    crm_pg_pool_t *pool = c->pool;
    if (PQenterPipelineMode(c->pg) != 1) {
        conn_fail(c, CRM_E_UNAVAILABLE, PQerrorMessage(c->pg), NULL);
        return;
    }
    for (size_t i = 0; i < pool->nstmts; ++i) {
        const stmt_def_t *d = &pool->stmts[i];
        if (PQsendPrepare(c->pg, d->wire_name, d->sql, d->nparams, NULL) != 1) {
            conn_fail(c, CRM_E_UNAVAILABLE, PQerrorMessage(c->pg), NULL);
            return;
        }
    }
    if (PQpipelineSync(c->pg) != 1) {
        conn_fail(c, CRM_E_UNAVAILABLE, PQerrorMessage(c->pg), NULL);
        return;
    }
    set_state(c, CRM_PG_CONN_PREPARING);
    c->prepares_pending = pool->nstmts;
    c->prepare_await_null = 0;
    if (conn_flush(c) != 0)
        conn_fail(c, CRM_E_UNAVAILABLE, "cannot send to the server", NULL);
}

static void conn_ready(pg_conn_t *c)
{
    crm_pg_pool_t *pool = c->pool;
    crm_timerq_stop(&pool->timers, &c->timer);
    if (c->failures > 0 || c->ever_ready)
        ++pool->stats.reconnects;
    if (c->ever_ready || c->failures > 0)
        crm_log(CRM_LOG_INFO, "pg.reconnected", CRM_LOG_UINT("conn", c->index),
                CRM_LOG_UINT("attempts", c->failures + 1));
    c->failures = 0;
    c->ever_ready = 1;
    pool->stats.prepare_failed = 0;
    set_state(c, CRM_PG_CONN_READY);
    dispatch(pool);
}

/* Handles one answer while the registered statements are being prepared: a result and its NULL per statement,
 * then the Sync. A statement that does not prepare is a deployment error (schema missing or older than the code);
 * the connection is dropped and retried with backoff while /health/ready reports it. */
static int prepare_consume(pg_conn_t *c, PGresult *r)
{
    crm_pg_pool_t *pool = c->pool;
    if (c->prepare_await_null) {
        if (r != NULL) {
            PQclear(r);
            return CRM_E_PROTOCOL;
        }
        c->prepare_await_null = 0;
        --c->prepares_pending;
        return 0;
    }
    if (r == NULL)
        return CRM_E_PROTOCOL;
    ExecStatusType st = PQresultStatus(r);
    if (c->prepares_pending == 0) {
        PQclear(r);
        if (st != PGRES_PIPELINE_SYNC)
            return CRM_E_PROTOCOL;
        if (c->prepare_error) {
            pool->stats.prepare_failed = 1;
            return CRM_E_DB;
        }
        conn_ready(c);
        return 0;
    }
    if (st == PGRES_FATAL_ERROR && !c->prepare_error) {
        size_t i = pool->nstmts - c->prepares_pending;
        char line[512];
        one_line(PQresultErrorMessage(r), line, sizeof(line));
        crm_log(CRM_LOG_ERROR, "pg.prepare_failed", CRM_LOG_STR("statement", pool->stmts[i].name),
                CRM_LOG_STR("sqlstate", PQresultErrorField(r, PG_DIAG_SQLSTATE)), CRM_LOG_STR("error", line));
        c->prepare_error = 1;
    } else if (st != PGRES_COMMAND_OK && st != PGRES_PIPELINE_ABORTED && st != PGRES_FATAL_ERROR) {
        PQclear(r);
        return CRM_E_PROTOCOL;
    }
    PQclear(r);
    c->prepare_await_null = 1;
    return 0;
}

static void connect_step(pg_conn_t *c)
{
    PostgresPollingStatusType st = PQconnectPoll(c->pg);
    c->connect_poll = st;
    /* While connecting, libpq may close the socket and open another (the next host, a retry without TLS) that
     * gets the same descriptor number: neither the number nor the event mask tells that the kernel object
     * changed, and libuv would neither re-register it nor restart a handle it stopped after POLLERR. A fresh
     * handle per step is cheap (a handful per connection) and always right. */
    if (st == PGRES_POLLING_READING || st == PGRES_POLLING_WRITING)
        conn_unwatch(c);
    switch (st) {
    case PGRES_POLLING_READING:
        if (conn_watch(c, UV_READABLE) != 0)
            conn_fail(c, CRM_E_UNAVAILABLE, "cannot watch the connection socket", NULL);
        return;
    case PGRES_POLLING_WRITING:
        if (conn_watch(c, UV_WRITABLE) != 0)
            conn_fail(c, CRM_E_UNAVAILABLE, "cannot watch the connection socket", NULL);
        return;
    case PGRES_POLLING_OK:
        send_prepares(c);
        return;
    default:
        conn_fail(c, CRM_E_UNAVAILABLE, PQerrorMessage(c->pg), NULL);
        return;
    }
}

static void on_poll(uv_poll_t *handle, int status, int events)
{
    pg_poll_t *p = (pg_poll_t *)handle;
    pg_conn_t *c = p->conn;
    if (c == NULL)
        return;
    if (c->state == CRM_PG_CONN_CONNECTING) {
        /* An error on the socket is for PQconnectPoll to discover and report. */
        connect_step(c);
        return;
    }
    if (status < 0) {
        /* libuv only says that the socket is in error (and has stopped the handle); reading makes libpq find out
         * why and say so. Should the connection survive, the handle must be started again. */
        c->poll_events = 0;
        conn_process(c);
        if (c->pg != NULL && c->state == CRM_PG_CONN_READY && conn_flush(c) != 0)
            conn_fail(c, CRM_E_UNAVAILABLE, PQerrorMessage(c->pg), NULL);
        return;
    }
    if ((events & UV_WRITABLE) != 0 && conn_flush(c) != 0) {
        conn_fail(c, CRM_E_UNAVAILABLE, PQerrorMessage(c->pg), NULL);
        return;
    }
    if ((events & UV_READABLE) != 0)
        conn_process(c);
}

/* ---- units ---- */

crm_pg_unit_t *crm_pg_unit_new(crm_pg_pool_t *pool, unsigned flags)
{
    crm_pg_unit_t *u = malloc(sizeof(*u));
    if (u == NULL)
        return NULL;
    /* Only the header needs zeroing; the inline arrays are written before they are read. */
    memset(u, 0, offsetof(crm_pg_unit_t, inline_stmts));
    u->pool = pool;
    u->flags = flags;
    u->error_index = -1;
    crm_timer_init(&u->timer);
    u->stmts = u->inline_stmts;
    u->stmts_cap = UNIT_INLINE_STMTS;
    u->params = u->inline_params;
    u->params_cap = UNIT_INLINE_PARAMS;
    u->arena = u->inline_arena;
    u->arena_cap = UNIT_INLINE_ARENA;
    return u;
}

static void unit_clear_results(crm_pg_unit_t *u)
{
    if (u->results == NULL)
        return;
    for (size_t i = 0; i < u->nstmts; ++i)
        if (u->results[i] != NULL) {
            PQclear(u->results[i]);
            u->results[i] = NULL;
        }
}

void crm_pg_unit_free(crm_pg_unit_t *u)
{
    if (u == NULL)
        return;
    assert(u->state == UNIT_NEW);
    unit_clear_results(u);
    if (u->results != u->inline_results)
        free(u->results);
    if (u->stmts != u->inline_stmts)
        free(u->stmts);
    if (u->params != u->inline_params)
        free(u->params);
    if (u->arena != u->inline_arena)
        free(u->arena);
    free(u->error_message);
    free(u);
}

int crm_pg_unit_set_tenant(crm_pg_unit_t *u, const char *tenant_id)
{
    size_t len = strlen(tenant_id);
    if (len == 0 || len >= sizeof(u->tenant))
        return CRM_E_INVAL;
    memcpy(u->tenant, tenant_id, len + 1);
    return 0;
}

void crm_pg_unit_set_deadline(crm_pg_unit_t *u, uint64_t deadline_ms)
{
    u->deadline = deadline_ms;
}

static int grow(void **buf, size_t *cap, size_t elem, size_t need, size_t max, void *inline_buf)
{
    if (need <= *cap)
        return 0;
    if (need > max)
        return CRM_E_LIMIT;
    size_t cap2 = *cap * 2;
    while (cap2 < need)
        cap2 *= 2;
    if (cap2 > max)
        cap2 = max;
    void *grown;
    if (*buf == inline_buf) {
        if ((grown = malloc(cap2 * elem)) != NULL)
            memcpy(grown, *buf, *cap * elem);
    } else {
        grown = realloc(*buf, cap2 * elem);
    }
    if (grown == NULL)
        return CRM_E_NOMEM;
    *buf = grown;
    *cap = cap2;
    return 0;
}

int crm_pg_unit_add(crm_pg_unit_t *u, crm_pg_stmt_t stmt, int nparams, const char *const *values, const int *lengths)
{
    crm_pg_pool_t *pool = u->pool;
    if (u->state != UNIT_NEW || stmt < INTERNAL_STMTS || stmt >= pool->nstmts || nparams != pool->stmts[stmt].nparams ||
        (nparams > 0 && values == NULL))
        return CRM_E_INVAL;
    size_t bytes = 0;
    for (int i = 0; i < nparams; ++i) {
        if (values[i] == NULL)
            continue;
        size_t len = lengths != NULL ? (size_t)lengths[i] : strlen(values[i]);
        /* Text-format parameters travel NUL-terminated; an embedded NUL would silently cut the value short. */
        if (lengths != NULL && (lengths[i] < 0 || memchr(values[i], '\0', len) != NULL))
            return CRM_E_INVAL;
        bytes += len + 1;
    }
    int err;
    if ((err = grow((void **)&u->stmts, &u->stmts_cap, sizeof(*u->stmts), u->nstmts + 1, pool->cfg.max_statements,
                    u->inline_stmts)) != 0 ||
        (err = grow((void **)&u->params, &u->params_cap, sizeof(*u->params), u->nparams + (size_t)nparams,
                    pool->cfg.max_statements * MAX_PARAMS_PER_STMT, u->inline_params)) != 0 ||
        (err = grow((void **)&u->arena, &u->arena_cap, 1, u->arena_len + bytes, pool->cfg.max_param_bytes,
                    u->inline_arena)) != 0)
        return err;
    unit_stmt_t *s = &u->stmts[u->nstmts];
    s->id = stmt;
    s->nparams = (uint32_t)nparams;
    s->first_param = (uint32_t)u->nparams;
    for (int i = 0; i < nparams; ++i) {
        if (values[i] == NULL) {
            u->params[u->nparams++] = -1;
            continue;
        }
        size_t len = lengths != NULL ? (size_t)lengths[i] : strlen(values[i]);
        u->params[u->nparams++] = (int32_t)u->arena_len;
        memcpy(u->arena + u->arena_len, values[i], len);
        u->arena[u->arena_len + len] = '\0';
        u->arena_len += len + 1;
    }
    return (int)u->nstmts++;
}

crm_pg_pool_t *crm_pg_unit_pool(const crm_pg_unit_t *u)
{
    return u->pool;
}

size_t crm_pg_unit_count(const crm_pg_unit_t *u)
{
    return u->nstmts;
}

PGresult *crm_pg_unit_result(const crm_pg_unit_t *u, size_t index)
{
    return u->results != NULL && index < u->nstmts ? u->results[index] : NULL;
}

const char *crm_pg_unit_sqlstate(const crm_pg_unit_t *u)
{
    return u->sqlstate[0] != '\0' ? u->sqlstate : NULL;
}

const char *crm_pg_unit_error_message(const crm_pg_unit_t *u)
{
    return u->error_message;
}

int crm_pg_unit_error_index(const crm_pg_unit_t *u)
{
    return u->error_index;
}

/* ---- the wait queue ---- */

static void queue_push_back(crm_pg_pool_t *pool, crm_pg_unit_t *u)
{
    u->next = NULL;
    u->prev = pool->q_tail;
    if (pool->q_tail != NULL)
        pool->q_tail->next = u;
    else
        pool->q_head = u;
    pool->q_tail = u;
    ++pool->q_len;
    u->state = UNIT_QUEUED;
}

static void queue_push_front(crm_pg_pool_t *pool, crm_pg_unit_t *u)
{
    u->prev = NULL;
    u->next = pool->q_head;
    if (pool->q_head != NULL)
        pool->q_head->prev = u;
    else
        pool->q_tail = u;
    pool->q_head = u;
    ++pool->q_len;
    u->state = UNIT_QUEUED;
}

static void queue_remove(crm_pg_pool_t *pool, crm_pg_unit_t *u)
{
    if (u->prev != NULL)
        u->prev->next = u->next;
    else
        pool->q_head = u->next;
    if (u->next != NULL)
        u->next->prev = u->prev;
    else
        pool->q_tail = u->prev;
    u->next = u->prev = NULL;
    --pool->q_len;
    u->state = UNIT_NEW;
}

static void on_unit_timer(crm_timer_t *t);

static uint64_t unit_queue_deadline(const crm_pg_unit_t *u)
{
    uint64_t qd = u->queued_at + u->pool->cfg.queue_timeout_ms;
    return qd < u->deadline ? qd : u->deadline;
}

static void fail_queue(crm_pg_pool_t *pool, int err)
{
    while (pool->q_head != NULL) {
        crm_pg_unit_t *u = pool->q_head;
        queue_remove(pool, u);
        unit_finish(u, err);
    }
}

/* ---- sending a unit and reading its answers ---- */

typedef enum { CMD_BEGIN, CMD_SETUP, CMD_USER, CMD_SYNC, CMD_COMMIT } cmd_kind_t;

/* unit->await_null: a command's result arrived and libpq's terminating NULL comes next. */
enum { AWAIT_NULL_THEN_NEXT = 1, AWAIT_NULL_THEN_SYNC = 2 };

/* The commands a unit sent, in order: [BEGIN] [setup] user statements Sync [COMMIT Sync]. */
static size_t unit_ncmds(const crm_pg_unit_t *u)
{
    return u->has_begin + u->has_setup + u->nstmts + 1 + (u->has_begin ? 2 : 0);
}

static cmd_kind_t unit_cmd(const crm_pg_unit_t *u, size_t step, size_t *user_index)
{
    size_t pre = u->has_begin + u->has_setup;
    if (step < pre)
        return (u->has_begin && step == 0) ? CMD_BEGIN : CMD_SETUP;
    if (step < pre + u->nstmts) {
        *user_index = step - pre;
        return CMD_USER;
    }
    if (step == pre + u->nstmts)
        return CMD_SYNC;
    return step == pre + u->nstmts + 1 ? CMD_COMMIT : CMD_SYNC;
}

static int send_stmt(pg_conn_t *c, crm_pg_unit_t *u, const unit_stmt_t *s)
{
    crm_pg_pool_t *pool = c->pool;
    for (uint32_t i = 0; i < s->nparams; ++i) {
        int32_t off = u->params[s->first_param + i];
        pool->scratch_values[i] = off < 0 ? NULL : u->arena + off;
    }
    return PQsendQueryPrepared(c->pg, pool->stmts[s->id].wire_name, (int)s->nparams, pool->scratch_values, NULL, NULL,
                               0) == 1
               ? 0
               : CRM_E_UNAVAILABLE;
}

static int send_internal(pg_conn_t *c, int id, int n, const char *const *values)
{
    return PQsendQueryPrepared(c->pg, c->pool->stmts[id].wire_name, n, values, NULL, NULL, 0) == 1 ? 0
                                                                                                   : CRM_E_UNAVAILABLE;
}

static int send_unit(pg_conn_t *c, crm_pg_unit_t *u)
{
    crm_pg_pool_t *pool = c->pool;
    uint64_t now = now_ms(pool);
    uint64_t remaining = u->deadline > now ? u->deadline - now : 1;
    /* The server-side half of the deadline costs an extra statement, so it is sent only when the connection's
     * default statement_timeout would fire well after the unit's deadline: later than half the backstop's grace.
     * A unit that merely waited a few milliseconds for a connection runs without it. */
    int short_deadline = remaining + pool->cfg.backstop_grace_ms / 2 < pool->cfg.statement_timeout_ms;
    int has_tenant = u->tenant[0] != '\0';
    char timeout_text[24];
    if (short_deadline)
        snprintf(timeout_text, sizeof(timeout_text), "%llu", (unsigned long long)remaining);
    u->has_begin = (u->flags & CRM_PG_TX) != 0;
    u->has_setup = has_tenant || short_deadline;
    u->step = 0;
    u->await_null = 0;
    int err = 0;
    if (u->has_begin)
        err = send_internal(c, STMT_BEGIN, 0, NULL);
    if (err == 0 && u->has_setup) {
        if (has_tenant && short_deadline)
            err = send_internal(c, STMT_SET_TENANT_TIMEOUT, 2, (const char *const[]){u->tenant, timeout_text});
        else if (has_tenant)
            err = send_internal(c, STMT_SET_TENANT, 1, (const char *const[]){u->tenant});
        else
            err = send_internal(c, STMT_SET_TIMEOUT, 1, (const char *const[]){timeout_text});
    }
    for (size_t i = 0; err == 0 && i < u->nstmts; ++i)
        err = send_stmt(c, u, &u->stmts[i]);
    if (err == 0 && PQpipelineSync(c->pg) != 1)
        err = CRM_E_UNAVAILABLE;
    if (err == 0 && u->has_begin) {
        /* COMMIT after the Sync on purpose; see the header. */
        err = send_internal(c, STMT_COMMIT, 0, NULL);
        if (err == 0 && PQpipelineSync(c->pg) != 1)
            err = CRM_E_UNAVAILABLE;
    }
    if (err != 0)
        return err;
    u->next = NULL;
    u->prev = NULL;
    if (c->tail != NULL)
        c->tail->next = u;
    else
        c->head = u;
    c->tail = u;
    ++c->in_flight;
    u->conn = c;
    u->state = UNIT_IN_FLIGHT;
    u->sent_at_ns = uv_hrtime();
    /* The backstop fires a little after the deadline, so that the server's statement_timeout (which keeps the
     * connection usable) normally answers first. */
    crm_timerq_start(&pool->timers, &u->timer, u->deadline + pool->cfg.backstop_grace_ms, on_unit_timer);
    return conn_flush(c);
}

static int unit_record_error(crm_pg_unit_t *u, PGresult *r, int user_index)
{
    if (u->sql_error)
        return 0;
    u->sql_error = 1;
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (state != NULL) {
        strncpy(u->sqlstate, state, sizeof(u->sqlstate) - 1);
        u->sqlstate[sizeof(u->sqlstate) - 1] = '\0';
    }
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    u->error_message = strdup(msg != NULL ? msg : PQresultErrorMessage(r));
    u->error_index = user_index;
    return 0;
}

/* Feeds one PQgetResult answer to the head unit. Returns 1 when the unit has all its answers, 0 when it needs
 * more, CRM_E_PROTOCOL when the answer does not fit what was sent (the connection is then unusable). */
static int unit_consume(crm_pg_unit_t *u, PGresult *r)
{
    if (u->await_null) {
        if (r != NULL) {
            PQclear(r);
            return CRM_E_PROTOCOL;
        }
        /* After an error reported at a Sync, the Sync's own result is still to come: stay on that step. */
        int same_step = u->await_null == AWAIT_NULL_THEN_SYNC;
        u->await_null = 0;
        if (same_step)
            return 0;
        ++u->step;
        return u->step == unit_ncmds(u);
    }
    if (r == NULL)
        return CRM_E_PROTOCOL;
    size_t user_index = 0;
    cmd_kind_t kind = unit_cmd(u, u->step, &user_index);
    ExecStatusType st = PQresultStatus(r);
    if (kind == CMD_SYNC) {
        if (st == PGRES_FATAL_ERROR) {
            /* The implicit transaction commits at the Sync, and the commit itself can fail: a deferred constraint,
             * a serialization failure. libpq reports that error, then NULL, then the Sync. It is this unit's SQL
             * error like any other; the unit rolled back and the connection is fine. */
            unit_record_error(u, r, -1);
            PQclear(r);
            u->await_null = AWAIT_NULL_THEN_SYNC;
            return 0;
        }
        PQclear(r);
        if (st != PGRES_PIPELINE_SYNC)
            return CRM_E_PROTOCOL;
        ++u->step;
        return u->step == unit_ncmds(u);
    }
    switch (st) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_PIPELINE_ABORTED:
        break;
    case PGRES_FATAL_ERROR:
        unit_record_error(u, r, kind == CMD_USER ? (int)user_index : -1);
        break;
    default:
        PQclear(r);
        return CRM_E_PROTOCOL;
    }
    if (kind == CMD_USER && st != PGRES_PIPELINE_ABORTED) {
        if (u->results == NULL) {
            /* Allocated lazily: most units never get here with more than the inline capacity. */
            if (u->nstmts <= UNIT_INLINE_STMTS) {
                u->results = u->inline_results;
            } else if ((u->results = malloc(u->nstmts * sizeof(*u->results))) == NULL) {
                PQclear(r);
                return CRM_E_NOMEM;
            }
            memset(u->results, 0, u->nstmts * sizeof(*u->results));
        }
        u->results[user_index] = r;
    } else {
        PQclear(r);
    }
    u->await_null = AWAIT_NULL_THEN_NEXT;
    return 0;
}

/* SQLSTATE classes that say the database itself is in trouble, as opposed to the request being wrong. */
static int sqlstate_is_dependency_failure(const char *s)
{
    if (s == NULL || s[0] == '\0')
        return 1;
    return strncmp(s, "08", 2) == 0 || strncmp(s, "53", 2) == 0 || strncmp(s, "57", 2) == 0 ||
           strncmp(s, "58", 2) == 0 || strncmp(s, "XX", 2) == 0;
}

static void unit_unlink_head(pg_conn_t *c, crm_pg_unit_t *u)
{
    assert(c->head == u);
    c->head = u->next;
    if (c->head == NULL)
        c->tail = NULL;
    --c->in_flight;
    u->next = NULL;
    u->conn = NULL;
}

/* Completes a unit: stops its timer, settles its breaker permit, runs its callback (unless detached) and frees it.
 * The unit must already be out of the queue and off its connection. */
static void unit_finish(crm_pg_unit_t *u, int err)
{
    crm_pg_pool_t *pool = u->pool;
    crm_timerq_stop(&pool->timers, &u->timer);
    u->state = UNIT_NEW;
    if (u->answered) {
        /* Its outcome was counted and its caller answered when its deadline passed (answer_early). */
        unit_clear_results(u);
        crm_pg_unit_free(u);
        return;
    }
    uint64_t duration_ms = 0;
    if (u->sent_at_ns != 0) {
        uint64_t ns = uv_hrtime() - u->sent_at_ns;
        duration_ms = ns / 1000000;
        crm_histogram_observe(&pool->exec_time, (double)ns / 1e9);
    }
    switch (err) {
    case 0:
        crm_breaker_record(&pool->breaker, u->permit, 0, duration_ms);
        break;
    case CRM_E_DB:
        ++pool->stats.sql_errors;
        crm_breaker_record(&pool->breaker, u->permit, sqlstate_is_dependency_failure(u->sqlstate), duration_ms);
        break;
    case CRM_E_DEADLINE:
        ++pool->stats.deadline_expiries;
        crm_breaker_record(&pool->breaker, u->permit, 1, duration_ms);
        break;
    case CRM_E_UNAVAILABLE:
        crm_breaker_record(&pool->breaker, u->permit, 1, duration_ms);
        break;
    case CRM_E_QUEUE_TIMEOUT:
        ++pool->stats.queue_timeouts;
        /* Waiting for a free connection says the pool is saturated, not that the database failed; the units that
         * do run report slowness through their own durations. */
        crm_breaker_release(&pool->breaker, u->permit);
        break;
    default:
        crm_breaker_release(&pool->breaker, u->permit);
        break;
    }
    ++pool->stats.completed;
    if (!u->detached && u->cb != NULL)
        u->cb(u, err, u->data);
    unit_clear_results(u);
    crm_pg_unit_free(u);
}

/* Answers a read-only unit that is still in a connection's pipeline with CRM_E_DEADLINE, counted as unit_finish
 * would count it. The unit stays in the pipeline, detached, until its answers arrive (the server runs it with its
 * own short statement_timeout), and is then freed without a second callback or a second breaker outcome. Only
 * read-only units: running after the answer changes nothing. */
static void answer_early(crm_pg_unit_t *u)
{
    crm_pg_pool_t *pool = u->pool;
    ++pool->stats.deadline_expiries;
    ++pool->stats.completed;
    crm_breaker_record(&pool->breaker, u->permit, 1, (uv_hrtime() - u->sent_at_ns) / 1000000);
    u->answered = 1;
    int detached = u->detached;
    u->detached = 1;
    if (!detached && u->cb != NULL)
        u->cb(u, CRM_E_DEADLINE, u->data);
}

static int unit_result_err(const crm_pg_unit_t *u)
{
    if (!u->sql_error)
        return 0;
    /* 57014 query_canceled: the server's statement_timeout, i.e. this unit's deadline. */
    return strcmp(u->sqlstate, "57014") == 0 ? CRM_E_DEADLINE : CRM_E_DB;
}

static void conn_process(pg_conn_t *c)
{
    if (PQconsumeInput(c->pg) != 1) {
        conn_fail(c, CRM_E_UNAVAILABLE, PQerrorMessage(c->pg), NULL);
        return;
    }
    while (c->pg != NULL && !PQisBusy(c->pg)) {
        if (c->state == CRM_PG_CONN_PREPARING) {
            int err = prepare_consume(c, PQgetResult(c->pg));
            if (err == CRM_E_DB) {
                conn_fail(c, CRM_E_UNAVAILABLE, "registered statements failed to prepare", NULL);
                return;
            }
            if (err != 0) {
                conn_fail(c, CRM_E_PROTOCOL, "unexpected answer while preparing statements", NULL);
                return;
            }
            continue;
        }
        if (c->state != CRM_PG_CONN_READY)
            return;
        crm_pg_unit_t *u = c->head;
        if (u == NULL) {
            /* Nothing is expected: libpq reports that with NULL. Anything else is the server talking out of turn. */
            PGresult *r = PQgetResult(c->pg);
            if (r == NULL)
                break;
            PQclear(r);
            conn_fail(c, CRM_E_PROTOCOL, "unexpected result with no query in flight", NULL);
            return;
        }
        int done = unit_consume(u, PQgetResult(c->pg));
        if (done < 0) {
            conn_fail(c, CRM_E_PROTOCOL, "answer does not match the pipeline", NULL);
            return;
        }
        if (done) {
            unit_unlink_head(c, u);
            unit_finish(u, unit_result_err(u));
            /* A callback may have submitted more work, or the pool may be closing; the loop re-checks the state. */
        }
    }
    dispatch(c->pool);
}

/* ---- failure, backoff, timers ---- */

static uint64_t backoff_delay(const crm_pg_pool_t *pool, unsigned failures)
{
    /* Full jitter: many crmd processes that lost the database at the same moment must not come back in step. */
    return crm_backoff_full_jitter(pool->cfg.reconnect_min_ms, pool->cfg.reconnect_max_ms, failures);
}

static int pool_can_connect_soon(const crm_pg_pool_t *pool)
{
    uint64_t now = now_ms(pool);
    for (size_t i = 0; i < pool->cfg.size; ++i) {
        const pg_conn_t *c = &pool->conns[i];
        if (c->state == CRM_PG_CONN_READY || c->state == CRM_PG_CONN_CONNECTING || c->state == CRM_PG_CONN_PREPARING)
            return 1;
        /* A connection in BACKOFF whose next attempt is already due (recycled after a client backstop, which
         * reconnects at once, or a jittered backoff that came out as zero) starts connecting on the next loop
         * iteration: it is on its way. Without this, recycling the only connection of a pool failed the read-only
         * units conn_fail had just requeued for it, and everything waiting in the queue, with CRM_E_UNAVAILABLE. */
        if (c->state == CRM_PG_CONN_BACKOFF && crm_timer_is_active(&c->timer) && c->timer.deadline <= now)
            return 1;
    }
    return 0;
}

/* Drops the connection and everything in flight on it. `expired` is the unit whose backstop fired (answered
 * CRM_E_DEADLINE); the rest either re-run elsewhere (read-only, time left) or fail with CRM_E_UNAVAILABLE, since
 * a writing unit's outcome is unknown once its connection is gone. */
static void conn_fail(pg_conn_t *c, int err, const char *why, crm_pg_unit_t *expired)
{
    crm_pg_pool_t *pool = c->pool;
    char line[512];
    one_line(why, line, sizeof(line));
    int was_ready = c->state == CRM_PG_CONN_READY;
    crm_log(CRM_LOG_WARN, was_ready ? "pg.connection_lost" : "pg.connect_failed", CRM_LOG_UINT("conn", c->index),
            CRM_LOG_STR("error", line), CRM_LOG_STR("kind", crm_err_name(err)),
            CRM_LOG_UINT("in_flight", c->in_flight));
    crm_timerq_stop(&pool->timers, &c->timer);
    conn_close_pg(c);
    ++pool->stats.conn_failures;
    ++c->failures;
    /* A failed attempt is a failed call to the database as far as the breaker is concerned. While the breaker is
     * open no permit is given and attempts do not count, which is what keeps the open period meaningful. */
    if (!was_ready && !pool->closing) {
        crm_breaker_permit_t p = crm_breaker_acquire(&pool->breaker);
        if (p != 0)
            crm_breaker_record(&pool->breaker, p, 1, 0);
    }
    if (pool->closing) {
        set_state(c, CRM_PG_CONN_IDLE);
    } else {
        set_state(c, CRM_PG_CONN_BACKOFF);
        /* Reconnect at once when the connection was serving until now (a backend restart, an idle-session kill, a
         * proxy recycling it) or was recycled because one query overran: the server is probably fine, and the
         * read-only units just re-queued need a connection on its way. Failed attempts back off. */
        uint64_t delay = (expired != NULL || was_ready) ? 0 : backoff_delay(pool, c->failures);
        crm_timerq_start(&pool->timers, &c->timer, now_ms(pool) + delay, on_conn_timer);
    }
    /* Read-only units go back to the front of the queue in their original order, ahead of work that arrived
     * after them: collect them newest-first, then push each to the front. */
    crm_pg_unit_t *requeue = NULL;
    uint64_t now = now_ms(pool);
    while (c->head != NULL) {
        crm_pg_unit_t *u = c->head;
        unit_unlink_head(c, u);
        unit_clear_results(u);
        if (u == expired) {
            unit_finish(u, CRM_E_DEADLINE);
        } else if (!pool->closing && (u->flags & CRM_PG_READ_ONLY) && !u->detached && u->deadline > now) {
            u->sql_error = 0;
            u->sqlstate[0] = '\0';
            free(u->error_message);
            u->error_message = NULL;
            u->error_index = -1;
            u->sent_at_ns = 0;
            crm_timerq_stop(&pool->timers, &u->timer);
            u->next = requeue;
            requeue = u;
            ++pool->stats.requeued;
        } else {
            unit_finish(u, pool->closing ? CRM_E_SHUTDOWN : CRM_E_UNAVAILABLE);
        }
    }
    while (requeue != NULL) {
        crm_pg_unit_t *u = requeue;
        requeue = u->next;
        u->queued_at = now;
        queue_push_front(pool, u);
        crm_timerq_start(&pool->timers, &u->timer, unit_queue_deadline(u), on_unit_timer);
    }
    if (!pool->closing && !pool_can_connect_soon(pool))
        fail_queue(pool, CRM_E_UNAVAILABLE);
    dispatch(pool);
}

static void on_conn_timer(crm_timer_t *t)
{
    pg_conn_t *c = (pg_conn_t *)((char *)t - offsetof(pg_conn_t, timer));
    if (c->state == CRM_PG_CONN_BACKOFF) {
        conn_start(c);
        return;
    }
    if (c->state == CRM_PG_CONN_CONNECTING || c->state == CRM_PG_CONN_PREPARING)
        conn_fail(c, CRM_E_DEADLINE, "connection attempt timed out", NULL);
}

static void on_unit_timer(crm_timer_t *t)
{
    crm_pg_unit_t *u = (crm_pg_unit_t *)((char *)t - offsetof(crm_pg_unit_t, timer));
    crm_pg_pool_t *pool = u->pool;
    if (u->state == UNIT_QUEUED) {
        queue_remove(pool, u);
        unit_finish(u, CRM_E_QUEUE_TIMEOUT);
        return;
    }
    assert(u->state == UNIT_IN_FLIGHT);
    /* Answers arrive in pipeline order, so the server is working on the head unit. If that is not this one and the
     * head is still within its own deadline, the connection is busy, not stuck: this unit has not even started.
     * Recycling would fail every unit on the connection (writes with an unknown outcome) for one short deadline, so
     * answer this unit alone; the head's own backstop still catches a connection that really is stuck. */
    pg_conn_t *c = u->conn;
    uint64_t head_backstop = c->head->deadline + pool->cfg.backstop_grace_ms;
    if (c->head != u && head_backstop > now_ms(pool)) {
        if (u->flags & CRM_PG_READ_ONLY) {
            answer_early(u);
        } else {
            /* A write cannot be answered now: it is still in the pipeline and would run, and might commit, after
             * its caller was told it had failed. It waits for the connection instead, bounded by the head's own
             * backstop; its caller's deadline is kept by the caller (the HTTP request answers 504 on time). */
            crm_timerq_start(&pool->timers, &u->timer, head_backstop, on_unit_timer);
        }
        return;
    }
    /* In flight past deadline + grace: the server did not enforce statement_timeout (stuck server, dead network,
     * or a unit whose statements each stayed under it). The connection's state is unknown; recycle it. */
    crm_log(CRM_LOG_WARN, "pg.deadline_backstop", CRM_LOG_UINT("conn", u->conn->index));
    conn_fail(u->conn, CRM_E_DEADLINE, "query ran past its deadline; connection recycled", u);
}

/* ---- submit and dispatch ---- */

static pg_conn_t *pick_conn(crm_pg_pool_t *pool)
{
    pg_conn_t *best = NULL;
    for (size_t i = 0; i < pool->cfg.size; ++i) {
        pg_conn_t *c = &pool->conns[i];
        if (c->state != CRM_PG_CONN_READY || c->in_flight >= pool->cfg.pipeline_depth)
            continue;
        if (best == NULL || c->in_flight < best->in_flight)
            best = c;
        if (c->in_flight == 0)
            break;
    }
    return best;
}

static void observe_wait(crm_pg_pool_t *pool, const crm_pg_unit_t *u)
{
    uint64_t waited = now_ms(pool) - u->queued_at;
    crm_histogram_observe(&pool->queue_wait, (double)waited / 1000.0);
}

static void dispatch(crm_pg_pool_t *pool)
{
    while (pool->q_head != NULL && !pool->closing) {
        pg_conn_t *c = pick_conn(pool);
        if (c == NULL)
            return;
        crm_pg_unit_t *u = pool->q_head;
        queue_remove(pool, u);
        observe_wait(pool, u);
        crm_timerq_stop(&pool->timers, &u->timer);
        int err = send_unit(c, u);
        if (err != 0) {
            /* The unit never made it onto the connection's list only if sending itself failed; either way the
             * connection is broken. Put the unit back first so that conn_fail can re-run or fail it. */
            if (u->state != UNIT_IN_FLIGHT) {
                u->queued_at = now_ms(pool);
                queue_push_front(pool, u);
                crm_timerq_start(&pool->timers, &u->timer, unit_queue_deadline(u), on_unit_timer);
            }
            conn_fail(c, CRM_E_UNAVAILABLE, PQerrorMessage(c->pg), NULL);
        }
    }
}

static void on_dispatch_idle(uv_idle_t *handle)
{
    /* Exists only to make the loop poll without blocking; the work happens in the check callback. */
}

static void on_dispatch_check(uv_check_t *handle)
{
    crm_pg_pool_t *pool = (crm_pg_pool_t *)((char *)handle - offsetof(crm_pg_pool_t, dispatch_check));
    pool->dispatch_pending = 0;
    uv_check_stop(&pool->dispatch_check);
    uv_idle_stop(&pool->dispatch_idle);
    dispatch(pool);
}

static void schedule_dispatch(crm_pg_pool_t *pool)
{
    if (pool->dispatch_pending)
        return;
    pool->dispatch_pending = 1;
    uv_check_start(&pool->dispatch_check, on_dispatch_check);
    uv_idle_start(&pool->dispatch_idle, on_dispatch_idle);
}

int crm_pg_unit_submit(crm_pg_unit_t *u, crm_pg_unit_cb cb, void *data)
{
    crm_pg_pool_t *pool = u->pool;
    if (u->state != UNIT_NEW || u->nstmts == 0 || cb == NULL)
        return CRM_E_INVAL;
    if (pool->closing || !pool->started) {
        ++pool->stats.rejected_shutdown;
        return CRM_E_SHUTDOWN;
    }
    uint64_t now = now_ms(pool);
    uint64_t latest = now + pool->cfg.statement_timeout_ms;
    if (u->deadline == 0 || u->deadline > latest)
        u->deadline = latest;
    if (u->deadline <= now)
        return CRM_E_DEADLINE;
    /* The bound covers what is waiting beyond the free pipeline slots, so a burst that the connections can take
     * at once is never refused. Checked before the breaker: a full queue is not the database's fault. */
    size_t free_slots = 0;
    for (size_t i = 0; i < pool->cfg.size; ++i)
        if (pool->conns[i].state == CRM_PG_CONN_READY)
            free_slots += pool->cfg.pipeline_depth - pool->conns[i].in_flight;
    if (pool->q_len >= free_slots + pool->cfg.queue_max) {
        ++pool->stats.rejected_queue_full;
        return CRM_E_QUEUE_FULL;
    }
    u->permit = crm_breaker_acquire(&pool->breaker);
    if (u->permit == 0) {
        ++pool->stats.rejected_breaker;
        return CRM_E_BREAKER_OPEN;
    }
    /* Fail fast rather than wait when no connection is up and none is on its way (the database is down and every
     * connection is backing off): a queued unit could only time out. It is a failed call to the database, so the
     * breaker hears of it and opens under sustained failure, after which refusals cost nothing at all. */
    if (!pool_can_connect_soon(pool)) {
        crm_breaker_record(&pool->breaker, u->permit, 1, 0);
        ++pool->stats.rejected_unavailable;
        return CRM_E_UNAVAILABLE;
    }
    u->queued_at = now;
    if (crm_timerq_start(&pool->timers, &u->timer, unit_queue_deadline(u), on_unit_timer) != 0) {
        crm_breaker_release(&pool->breaker, u->permit);
        ++pool->stats.rejected_queue_full;
        return CRM_E_QUEUE_FULL;
    }
    u->cb = cb;
    u->data = data;
    ++pool->stats.submitted;
    queue_push_back(pool, u);
    schedule_dispatch(pool);
    return 0;
}

void crm_pg_unit_detach(crm_pg_unit_t *u)
{
    if (u == NULL)
        return;
    if (u->state == UNIT_QUEUED) {
        crm_pg_pool_t *pool = u->pool;
        queue_remove(pool, u);
        crm_timerq_stop(&pool->timers, &u->timer);
        crm_breaker_release(&pool->breaker, u->permit);
        ++pool->stats.completed;
        crm_pg_unit_free(u);
        return;
    }
    u->detached = 1;
}

/* ---- close ---- */

static void maybe_finish_close(crm_pg_pool_t *pool)
{
    if (!pool->closing || !pool->closed || pool->open_handles != 0)
        return;
    void (*cb)(void *) = pool->on_closed;
    void *data = pool->on_closed_data;
    pool_free(pool);
    if (cb != NULL)
        cb(data);
}

static void on_timers_closed(crm_timerq_t *q)
{
    crm_pg_pool_t *pool = (crm_pg_pool_t *)((char *)q - offsetof(crm_pg_pool_t, timers));
    pool->closed = 1;
    maybe_finish_close(pool);
}

static void on_dispatch_handle_closed(uv_handle_t *handle)
{
    crm_pg_pool_t *pool = handle->data;
    --pool->open_handles;
    maybe_finish_close(pool);
}

/* Runs from the loop, never inside a caller's stack frame: a unit callback that decides to close the pool must not
 * have the connection it is being called from freed underneath it. */
static void on_close_timer(crm_timer_t *t)
{
    crm_pg_pool_t *pool = (crm_pg_pool_t *)((char *)t - offsetof(crm_pg_pool_t, close_timer));
    fail_queue(pool, CRM_E_SHUTDOWN);
    for (size_t i = 0; i < pool->cfg.size; ++i) {
        pg_conn_t *c = &pool->conns[i];
        crm_timerq_stop(&pool->timers, &c->timer);
        conn_close_pg(c);
        while (c->head != NULL) {
            crm_pg_unit_t *u = c->head;
            unit_unlink_head(c, u);
            unit_finish(u, CRM_E_SHUTDOWN);
        }
        set_state(c, CRM_PG_CONN_IDLE);
    }
    /* Callbacks above could not queue new work (submit refuses while closing), so every timer is now stopped. */
    uv_close((uv_handle_t *)&pool->dispatch_check, on_dispatch_handle_closed);
    uv_close((uv_handle_t *)&pool->dispatch_idle, on_dispatch_handle_closed);
    crm_timerq_close(&pool->timers, on_timers_closed);
}

void crm_pg_pool_close(crm_pg_pool_t *pool, void (*on_closed)(void *data), void *data)
{
    if (pool->closing)
        return;
    pool->closing = 1;
    pool->on_closed = on_closed;
    pool->on_closed_data = data;
    crm_timerq_start(&pool->timers, &pool->close_timer, now_ms(pool), on_close_timer);
}

/* ---- metrics ---- */

static void collect(void *ctx, crm_prom_t *w)
{
    crm_pg_pool_t *pool = ctx;
    crm_pg_stats_t s;
    crm_pg_pool_stats(pool, &s);
    crm_prom_family(w, "crmd_db_pool_connections", "gauge", "Database pool connections by state.");
    for (int i = 0; i < CRM_PG_CONN_STATE_COUNT; ++i) {
        crm_label_t l = {"state", crm_pg_conn_state_name((crm_pg_conn_state_t)i)};
        crm_prom_sample_u64(w, "crmd_db_pool_connections", &l, 1, s.conns[i]);
    }
    crm_prom_family(w, "crmd_db_pool_size", "gauge", "Configured number of database connections.");
    crm_prom_sample_u64(w, "crmd_db_pool_size", NULL, 0, pool->cfg.size);
    crm_prom_family(w, "crmd_db_in_flight", "gauge", "Units of work sent to the database and not yet answered.");
    crm_prom_sample_u64(w, "crmd_db_in_flight", NULL, 0, s.in_flight);
    crm_prom_family(w, "crmd_db_queue_depth", "gauge", "Units of work waiting for a database connection.");
    crm_prom_sample_u64(w, "crmd_db_queue_depth", NULL, 0, s.queued);
    crm_prom_family(w, "crmd_db_queue_wait_seconds", "histogram", "Time units of work waited for a connection.");
    crm_prom_histogram(w, "crmd_db_queue_wait_seconds", NULL, 0, &pool->queue_wait);
    crm_prom_family(w, "crmd_db_unit_duration_seconds", "histogram",
                    "Time from sending a unit of work to its last answer.");
    crm_prom_histogram(w, "crmd_db_unit_duration_seconds", NULL, 0, &pool->exec_time);
    crm_prom_family(w, "crmd_db_units_total", "counter", "Units of work by outcome.");
    static const char *const outcomes[] = {"submitted", "completed", "sql_error", "requeued"};
    uint64_t values[] = {s.submitted, s.completed, s.sql_errors, s.requeued};
    for (size_t i = 0; i < 4; ++i) {
        crm_label_t l = {"outcome", outcomes[i]};
        crm_prom_sample_u64(w, "crmd_db_units_total", &l, 1, values[i]);
    }
    crm_prom_family(w, "crmd_db_rejections_total", "counter", "Units of work refused at submit, by reason.");
    static const char *const reasons[] = {"queue_full", "breaker_open", "unavailable", "shutdown"};
    uint64_t rej[] = {s.rejected_queue_full, s.rejected_breaker, s.rejected_unavailable, s.rejected_shutdown};
    for (size_t i = 0; i < 4; ++i) {
        crm_label_t l = {"reason", reasons[i]};
        crm_prom_sample_u64(w, "crmd_db_rejections_total", &l, 1, rej[i]);
    }
    crm_prom_family(w, "crmd_db_queue_timeouts_total", "counter",
                    "Units of work that waited too long for a connection.");
    crm_prom_sample_u64(w, "crmd_db_queue_timeouts_total", NULL, 0, s.queue_timeouts);
    crm_prom_family(w, "crmd_db_deadline_expiries_total", "counter", "Units of work that ran past their deadline.");
    crm_prom_sample_u64(w, "crmd_db_deadline_expiries_total", NULL, 0, s.deadline_expiries);
    crm_prom_family(w, "crmd_db_connection_failures_total", "counter",
                    "Failed connection attempts and lost connections.");
    crm_prom_sample_u64(w, "crmd_db_connection_failures_total", NULL, 0, s.conn_failures);
    crm_prom_family(w, "crmd_db_reconnects_total", "counter", "Connections re-established after a failure.");
    crm_prom_sample_u64(w, "crmd_db_reconnects_total", NULL, 0, s.reconnects);
}

int crm_pg_pool_register_metrics(crm_pg_pool_t *pool, crm_metrics_t *metrics)
{
    return crm_metrics_register(metrics, collect, pool);
}
