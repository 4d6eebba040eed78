#include "httpc.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h"
#include "err.h"
#include "log.h"
#include "timerq.h"

#ifndef CRMD_VERSION
#define CRMD_VERSION "dev"
#endif

/* curl's own timeout is only a backstop: the request timer fires at the deadline and removes the transfer first. */
#define CURL_BACKSTOP_MS 1000
/* Response header blocks larger than this are refused: no legitimate API answer needs more. */
#define MAX_HEADER_BYTES (64 * 1024)
/* Easy handles kept for reuse; beyond this they are freed. */
#define MAX_SPARE_EASY 64
/* A retry is only started when at least this much of the deadline is left after the backoff. */
#define MIN_ATTEMPT_MS 5

typedef enum {
    REQ_QUEUED,  /* waiting for an in-flight slot; timer = deadline */
    REQ_ACTIVE,  /* attempt in progress on the multi handle; timer = deadline */
    REQ_BACKOFF, /* waiting before the next attempt; timer = wake-up time (always before the deadline) */
    REQ_DONE,
} req_state_t;

typedef struct st_link_t {
    struct st_link_t *prev, *next;
} link_t;

/*
 * A socket curl uses, watched by one uv_poll_t. Connection sockets are opened and closed through our own callbacks
 * (CURLOPT_OPENSOCKETFUNCTION/CLOSESOCKETFUNCTION), so we know their whole life: when curl stops watching one
 * between two transfers on a kept-alive connection (CURL_POLL_REMOVE), its watcher is only *parked*, still
 * registered with epoll, and the next transfer on that connection reuses it without an epoll_ctl DEL and ADD. A
 * parked socket that becomes readable (the peer closed the idle connection) is stopped at once, since nobody reads
 * it. Sockets curl opens itself (its resolver's) are closed on REMOVE, because we would not learn of their close.
 */
typedef struct st_sock_t {
    uv_poll_t poll;
    curl_socket_t fd;
    crm_httpc_t *client;
    link_t link;
    int owned;  /* opened by on_open_socket: closed only through on_close_socket */
    int parked; /* curl is not watching it right now */
} sock_t;

struct st_crm_httpc_req_t {
    crm_httpc_t *client;
    crm_httpc_upstream_t *up;
    req_state_t state;
    link_t all;   /* client->reqs */
    link_t queue; /* up->queue while QUEUED */
    crm_timer_t timer;

    crm_httpc_cb cb;
    void *data;

    /* The request, copied at send. */
    char *method;
    char *url;
    struct curl_slist *headers;
    char *body;
    size_t body_len;
    size_t body_sent; /* SMTP upload position */
    int retryable_method;
    uint64_t deadline;
    size_t max_response;
    struct curl_slist *rcpt; /* SMTP */
    char *mail_from, *username, *password;

    /* The current attempt. */
    CURL *easy;
    crm_breaker_permit_t permit;
    uint64_t sent_at, attempt_at;
    unsigned attempts;
    int too_large;
    char *resp_body;
    size_t resp_len, resp_cap;
    char *resp_headers;
    size_t hdr_len, hdr_cap;
    long status;
    int curl_code;
    const char *error;
    char errbuf[CURL_ERROR_SIZE];
};

struct st_crm_httpc_upstream_t {
    crm_httpc_t *client;
    char name[64];
    crm_httpc_upstream_config_t cfg;
    crm_breaker_t breaker;
    size_t in_flight, queued, backing_off;
    link_t queue;
    crm_httpc_upstream_stats_t stats;
    crm_histogram_t latency;
};

struct st_crm_httpc_t {
    uv_loop_t *loop;
    crm_httpc_config_t cfg;
    char *user_agent, *ca_file;
    CURLM *multi;
    CURLSH *share;
    uv_timer_t curl_timer;
    uv_timer_t close_timer;
    uv_timer_t pump_timer; /* hands slots freed by crm_httpc_cancel to waiting requests, outside the caller */
    crm_timerq_t timers;
    crm_httpc_upstream_t *ups[CRM_HTTPC_MAX_UPSTREAMS];
    size_t nups;
    link_t reqs;
    size_t nreqs;
    link_t socks;
    size_t nsocks;
    sock_t **by_fd; /* owned sockets by descriptor; grows to the highest descriptor seen */
    size_t by_fd_cap;
    CURL *spare[MAX_SPARE_EASY];
    size_t nspare;
    crm_counter_vec_t outcomes; /* {upstream, outcome}: HTTP status or error name */
    int closing;
    int handles_closing; /* the last close step has started: the client is freed once handles_open is 0 */
    int handles_open;
    void (*on_closed)(void *data);
    void *on_closed_data;
};

/* Label values must outlive the counter vector: one static string per HTTP status. */
static char status_labels[600][4];
static const char *const outcome_label_names[] = {"upstream", "outcome"};

static void pump(crm_httpc_upstream_t *up);
static int message_refused(const crm_httpc_req_t *r, CURLcode code);

/* ---- small helpers ---- */

static void list_init(link_t *l)
{
    l->prev = l->next = l;
}

static int list_empty(const link_t *l)
{
    return l->next == l;
}

static void list_push_back(link_t *l, link_t *n)
{
    n->prev = l->prev;
    n->next = l;
    l->prev->next = n;
    l->prev = n;
}

static void list_push_front(link_t *l, link_t *n)
{
    n->next = l->next;
    n->prev = l;
    l->next->prev = n;
    l->next = n;
}

static void list_unlink(link_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#define CONTAINER_OF(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

static uint64_t now_ms(const crm_httpc_t *c)
{
    return uv_now(c->loop);
}

static uint64_t breaker_clock(void *ctx)
{
    return uv_now((uv_loop_t *)ctx);
}

static int has_prefix_ci(const char *s, const char *prefix)
{
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

static int has_crlf_or_nul(const char *s, size_t len)
{
    for (size_t i = 0; i < len; ++i)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return 1;
    return 0;
}

static int header_line_valid(const char *h)
{
    const char *colon = strchr(h, ':');
    return colon != NULL && colon != h && !has_crlf_or_nul(h, strlen(h));
}

static int append_header(struct curl_slist **list, const char *line)
{
    struct curl_slist *l = curl_slist_append(*list, line);
    if (l == NULL)
        return CRM_E_NOMEM;
    *list = l;
    return 0;
}

static int append_header_fmt(struct curl_slist **list, const char *name, const char *value)
{
    size_t n = strlen(name) + strlen(value) + 3;
    char *line = malloc(n);
    if (line == NULL)
        return CRM_E_NOMEM;
    snprintf(line, n, "%s: %s", name, value);
    int err = append_header(list, line);
    free(line);
    return err;
}

static char *dup_or_null(const char *s, int *failed)
{
    if (s == NULL)
        return NULL;
    char *d = strdup(s);
    if (d == NULL)
        *failed = 1;
    return d;
}

/* ---- configuration ---- */

void crm_httpc_config_default(crm_httpc_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->max_requests = 4096;
    cfg->max_connections = 256;
    cfg->max_idle_connections = 64;
    cfg->max_response_bytes = 1024 * 1024;
    cfg->max_request_bytes = 16 * 1024 * 1024;
    cfg->user_agent = "crmd/" CRMD_VERSION;
}

void crm_httpc_upstream_config_default(crm_httpc_upstream_config_t *cfg, const char *name)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->name = name;
    cfg->max_in_flight = 64;
    cfg->queue_max = 1024;
    cfg->connect_timeout_ms = 5000;
    cfg->max_attempts = 3;
    cfg->backoff_base_ms = 100;
    cfg->backoff_max_ms = 5000;
    cfg->retry_after_max_ms = 60000;
    crm_breaker_config_default(&cfg->breaker);
}

/* ---- curl ↔ loop glue ---- */

static void drain_completions(crm_httpc_t *c);

static void maybe_freed(crm_httpc_t *c);

static void on_sock_closed(uv_handle_t *h)
{
    sock_t *sk = CONTAINER_OF(h, sock_t, poll);
    crm_httpc_t *c = sk->client;
    free(sk);
    --c->handles_open;
    maybe_freed(c);
}

static void sock_close(crm_httpc_t *c, sock_t *sk)
{
    if (sk->owned && (size_t)sk->fd < c->by_fd_cap && c->by_fd[sk->fd] == sk)
        c->by_fd[sk->fd] = NULL;
    list_unlink(&sk->link);
    --c->nsocks;
    uv_poll_stop(&sk->poll);
    uv_close((uv_handle_t *)&sk->poll, on_sock_closed);
}

static sock_t *sock_new(crm_httpc_t *c, curl_socket_t fd, int owned)
{
    sock_t *sk = calloc(1, sizeof(*sk));
    if (sk == NULL)
        return NULL;
    if (uv_poll_init_socket(c->loop, &sk->poll, fd) != 0) {
        free(sk);
        return NULL;
    }
    sk->fd = fd;
    sk->client = c;
    sk->owned = owned;
    sk->parked = owned; /* an owned socket is watched from the first time curl asks for it */
    list_push_back(&c->socks, &sk->link);
    ++c->nsocks;
    ++c->handles_open;
    return sk;
}

static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    crm_httpc_t *c = clientp;
    (void)purpose;
    curl_socket_t fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    if (fd == CURL_SOCKET_BAD)
        return CURL_SOCKET_BAD;
    if ((size_t)fd >= c->by_fd_cap) {
        size_t cap = c->by_fd_cap ? c->by_fd_cap : 64;
        while (cap <= (size_t)fd)
            cap *= 2;
        sock_t **m = realloc(c->by_fd, cap * sizeof(*m));
        if (m == NULL) {
            close(fd);
            return CURL_SOCKET_BAD;
        }
        memset(m + c->by_fd_cap, 0, (cap - c->by_fd_cap) * sizeof(*m));
        c->by_fd = m;
        c->by_fd_cap = cap;
    }
    sock_t *sk = sock_new(c, fd, 1);
    if (sk == NULL) {
        close(fd);
        return CURL_SOCKET_BAD;
    }
    c->by_fd[fd] = sk;
    return fd;
}

static int on_close_socket(void *clientp, curl_socket_t fd)
{
    crm_httpc_t *c = clientp;
    /* The watcher goes first, while the descriptor is still open: epoll must never hold a closed descriptor.
     * libcurl has already forgotten the socket (it reports CURL_POLL_REMOVE before calling this), so there is no
     * association of its to clear; this also runs inside curl_multi_cleanup. */
    if ((size_t)fd < c->by_fd_cap && c->by_fd[fd] != NULL)
        sock_close(c, c->by_fd[fd]);
    return close(fd);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    sock_t *sk = CONTAINER_OF(h, sock_t, poll);
    crm_httpc_t *c = sk->client;
    int flags = 0;
    if (status < 0) {
        /* curl must see the error on its own read or write of the socket; CSELECT_ERR makes it look. */
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    if (sk->parked) {
        /* An idle kept-alive connection the peer closed or wrote to: curl will notice when it next uses it. */
        uv_poll_stop(&sk->poll);
        return;
    }
    int running;
    /* sk may be closed (CURL_POLL_REMOVE) inside this call; it is not touched afterwards. */
    curl_multi_socket_action(c->multi, sk->fd, flags, &running);
    drain_completions(c);
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    crm_httpc_t *c = userp;
    sock_t *sk = socketp;
    (void)easy;

    if (what == CURL_POLL_REMOVE) {
        if (sk != NULL) {
            curl_multi_assign(c->multi, fd, NULL);
            if (sk->owned)
                sk->parked = 1;
            else
                sock_close(c, sk);
        }
        return 0;
    }
    if (sk == NULL) {
        /* curl forgets a socket at REMOVE; ours are found again by descriptor, others get a fresh watcher. */
        sk = (size_t)fd < c->by_fd_cap ? c->by_fd[fd] : NULL;
        if (sk == NULL && (sk = sock_new(c, fd, 0)) == NULL)
            return -1;
        sk->parked = 0;
        curl_multi_assign(c->multi, fd, sk);
    }
    int events = 0;
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    return uv_poll_start(&sk->poll, events, on_poll) == 0 ? 0 : -1;
}

static void on_curl_timeout(uv_timer_t *t)
{
    crm_httpc_t *c = CONTAINER_OF(t, crm_httpc_t, curl_timer);
    int running;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain_completions(c);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    crm_httpc_t *c = userp;
    (void)multi;
    /* curl forbids calling socket_action from inside this callback; a 0 timeout runs it on the next iteration. */
    if (timeout_ms < 0)
        uv_timer_stop(&c->curl_timer);
    else
        uv_timer_start(&c->curl_timer, on_curl_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- request buffers ---- */

static size_t on_body(char *ptr, size_t size, size_t n, void *ud)
{
    crm_httpc_req_t *r = ud;
    size_t len = size * n;
    if (len > r->max_response - r->resp_len) {
        r->too_large = 1;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (r->resp_len + len + 1 > r->resp_cap) {
        size_t cap = r->resp_cap ? r->resp_cap : 4096;
        while (cap < r->resp_len + len + 1)
            cap *= 2;
        if (cap > r->max_response + 1)
            cap = r->max_response + 1;
        char *b = realloc(r->resp_body, cap);
        if (b == NULL)
            return 0;
        r->resp_body = b;
        r->resp_cap = cap;
    }
    memcpy(r->resp_body + r->resp_len, ptr, len);
    r->resp_len += len;
    r->resp_body[r->resp_len] = '\0';
    return len;
}

static size_t on_header(char *ptr, size_t size, size_t n, void *ud)
{
    crm_httpc_req_t *r = ud;
    size_t len = size * n;
    /* A new status line starts the final response's headers afresh (after 1xx interim responses). */
    if (len >= 5 && memcmp(ptr, "HTTP/", 5) == 0)
        r->hdr_len = 0;
    if (len > MAX_HEADER_BYTES - r->hdr_len) {
        r->too_large = 1;
        return 0;
    }
    if (r->hdr_len + len > r->hdr_cap) {
        size_t cap = r->hdr_cap ? r->hdr_cap : 1024;
        while (cap < r->hdr_len + len)
            cap *= 2;
        char *b = realloc(r->resp_headers, cap);
        if (b == NULL)
            return 0;
        r->resp_headers = b;
        r->hdr_cap = cap;
    }
    memcpy(r->resp_headers + r->hdr_len, ptr, len);
    r->hdr_len += len;
    return len;
}

static size_t on_upload(char *buf, size_t size, size_t n, void *ud)
{
    crm_httpc_req_t *r = ud;
    size_t left = r->body_len - r->body_sent;
    size_t len = size * n < left ? size * n : left;
    memcpy(buf, r->body + r->body_sent, len);
    r->body_sent += len;
    return len;
}

const char *crm_httpc_response_header(const crm_httpc_req_t *req, const char *name, size_t *len)
{
    size_t nlen = strlen(name);
    const char *p = req->resp_headers, *end = req->resp_headers + req->hdr_len;
    while (p != NULL && p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = eol != NULL ? eol : end;
        if ((size_t)(line_end - p) > nlen && p[nlen] == ':' && strncasecmp(p, name, nlen) == 0) {
            const char *v = p + nlen + 1, *ve = line_end;
            while (v < ve && (*v == ' ' || *v == '\t'))
                ++v;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                --ve;
            *len = (size_t)(ve - v);
            return v;
        }
        p = eol != NULL ? eol + 1 : NULL;
    }
    return NULL;
}

/* ---- easy handles ---- */

static CURL *easy_get(crm_httpc_t *c)
{
    if (c->nspare > 0) {
        CURL *e = c->spare[--c->nspare];
        curl_easy_reset(e);
        return e;
    }
    return curl_easy_init();
}

static void easy_put(crm_httpc_t *c, CURL *e)
{
    if (c->nspare < MAX_SPARE_EASY && !c->closing)
        c->spare[c->nspare++] = e;
    else
        curl_easy_cleanup(e);
}

static int configure_easy(crm_httpc_req_t *r, CURL *e, uint64_t remaining)
{
    crm_httpc_t *c = r->client;
    uint64_t connect_ms = r->up->cfg.connect_timeout_ms < remaining ? r->up->cfg.connect_timeout_ms : remaining;
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                                                  \
    do {                                                                                                               \
        if (rc == CURLE_OK)                                                                                            \
            rc = curl_easy_setopt(e, opt, val);                                                                        \
    } while (0)
    SET(CURLOPT_PRIVATE, r);
    SET(CURLOPT_URL, r->url);
    SET(CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    SET(CURLOPT_OPENSOCKETDATA, c);
    SET(CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    SET(CURLOPT_CLOSESOCKETDATA, c);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_SHARE, c->share);
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)(connect_ms > 0 ? connect_ms : 1));
    SET(CURLOPT_TIMEOUT_MS, (long)(remaining + CURL_BACKSTOP_MS));
    SET(CURLOPT_ERRORBUFFER, r->errbuf);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, r);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, r);
    SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max_response);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    /* The CA store is parsed once, from one bundle file, and kept in the multi handle for the process's life, so new
     * TLS connections read no files on the loop: no CA directory (OpenSSL would look certificates up in it lazily,
     * per handshake) and no expiry of the cache (a CA change takes a restart). */
    SET(CURLOPT_CA_CACHE_TIMEOUT, -1L);
    SET(CURLOPT_CAPATH, NULL);
    if (c->ca_file != NULL)
        SET(CURLOPT_CAINFO, c->ca_file);
    if (r->rcpt != NULL) {
        SET(CURLOPT_PROTOCOLS_STR, "smtp,smtps");
        SET(CURLOPT_MAIL_FROM, r->mail_from);
        SET(CURLOPT_MAIL_RCPT, r->rcpt);
        SET(CURLOPT_UPLOAD, 1L);
        SET(CURLOPT_READFUNCTION, on_upload);
        SET(CURLOPT_READDATA, r);
        SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->body_len);
        /* Credentials only ever travel encrypted; without them, STARTTLS is still used whenever it is offered. */
        SET(CURLOPT_USE_SSL, r->username != NULL ? (long)CURLUSESSL_ALL : (long)CURLUSESSL_TRY);
        if (r->username != NULL) {
            SET(CURLOPT_USERNAME, r->username);
            SET(CURLOPT_PASSWORD, r->password != NULL ? r->password : "");
        }
        r->body_sent = 0;
    } else {
        SET(CURLOPT_PROTOCOLS_STR, "http,https");
        SET(CURLOPT_USERAGENT, c->user_agent);
        SET(CURLOPT_ACCEPT_ENCODING, "");
        SET(CURLOPT_PIPEWAIT, 1L);
        SET(CURLOPT_HTTPHEADER, r->headers);
        if (strcmp(r->method, "GET") == 0) {
            SET(CURLOPT_HTTPGET, 1L);
        } else if (strcmp(r->method, "HEAD") == 0) {
            SET(CURLOPT_NOBODY, 1L);
        } else {
            if (strcmp(r->method, "POST") != 0)
                SET(CURLOPT_CUSTOMREQUEST, r->method);
            if (r->body != NULL || strcmp(r->method, "GET") != 0) {
                SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
                SET(CURLOPT_POSTFIELDS, r->body != NULL ? r->body : "");
            }
        }
    }
#undef SET
    return rc == CURLE_OK ? 0 : (rc == CURLE_OUT_OF_MEMORY ? CRM_E_NOMEM : CRM_E_INVAL);
}

/* ---- request lifecycle ---- */

static void req_free(crm_httpc_req_t *r)
{
    curl_slist_free_all(r->headers);
    curl_slist_free_all(r->rcpt);
    free(r->method);
    free(r->url);
    free(r->body);
    free(r->mail_from);
    free(r->username);
    if (r->password != NULL) {
        /* The SMTP password never lingers in freed memory. */
        explicit_bzero(r->password, strlen(r->password));
        free(r->password);
    }
    free(r->resp_body);
    free(r->resp_headers);
    free(r);
}

static const char *outcome_label(int err, long status)
{
    if (err == 0 && status >= 100 && status <= 599)
        return status_labels[status];
    return crm_err_name(err != 0 ? err : CRM_E_PROTOCOL);
}

/* Ends the request: the callback runs, then the request is freed. */
static void finish(crm_httpc_req_t *r, int err)
{
    crm_httpc_t *c = r->client;
    crm_httpc_upstream_t *up = r->up;
    r->state = REQ_DONE;
    crm_timerq_stop(&c->timers, &r->timer);
    list_unlink(&r->all);
    --c->nreqs;

    uint64_t elapsed = now_ms(c) - r->sent_at;
    ++up->stats.completed;
    if (err == CRM_E_DEADLINE)
        ++up->stats.deadline_expiries;
    crm_histogram_observe(&up->latency, (double)elapsed / 1000.0);
    const char *labels[2] = {up->name, outcome_label(err, r->status)};
    crm_counter_vec_add(&c->outcomes, labels, 1);

    crm_httpc_response_t resp = {
        .status = (int)r->status,
        .body = r->resp_body != NULL ? r->resp_body : "",
        .body_len = r->resp_len,
        .attempts = r->attempts,
        .elapsed_ms = elapsed,
        .curl_code = r->curl_code,
        .error = r->error != NULL ? r->error : "",
        .smtp_refused = r->rcpt != NULL && err != 0 && message_refused(r, (CURLcode)r->curl_code),
    };
    r->cb(r, err, &resp, r->data);
    req_free(r);
}

/* Takes the request's attempt off the multi handle, giving its slot back. */
static void detach_attempt(crm_httpc_req_t *r)
{
    crm_httpc_t *c = r->client;
    curl_multi_remove_handle(c->multi, r->easy);
    easy_put(c, r->easy);
    r->easy = NULL;
    --r->up->in_flight;
}

static int start_attempt(crm_httpc_req_t *r, crm_breaker_permit_t permit)
{
    crm_httpc_t *c = r->client;
    crm_httpc_upstream_t *up = r->up;
    uint64_t now = now_ms(c);
    CURL *e = easy_get(c);
    if (e == NULL)
        return CRM_E_NOMEM;
    r->resp_len = 0;
    r->hdr_len = 0;
    r->status = 0;
    r->too_large = 0;
    r->errbuf[0] = '\0';
    int err = configure_easy(r, e, r->deadline > now ? r->deadline - now : 1);
    if (err != 0 || curl_multi_add_handle(c->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        return err != 0 ? err : CRM_E_NOMEM;
    }
    r->easy = e;
    r->permit = permit;
    r->attempt_at = now;
    r->state = REQ_ACTIVE;
    ++r->attempts;
    ++up->in_flight;
    ++up->stats.attempts;
    if (r->attempts > 1)
        ++up->stats.retries;
    return 0;
}

typedef struct {
    int err;             /* the request's result if this attempt is the last */
    int breaker_failure; /* counts against the upstream */
    int retryable;       /* worth repeating, if the request may be repeated */
    int never_sent;      /* the request certainly did not reach the upstream */
} attempt_outcome_t;

/* SMTP: did the relay refuse this message itself, with a 5xx to MAIL FROM, RCPT TO or DATA (libcurl reports those
 * as CURLE_SEND_ERROR) or to the end of the data (CURLE_WEIRD_SERVER_REPLY once the whole message went out)? A 5xx
 * at any earlier stage (greeting, EHLO, AUTH, STARTTLS) is about the relay or crmd's configuration instead. */
static int message_refused(const crm_httpc_req_t *r, CURLcode code)
{
    if (r->status < 500 || r->status > 599)
        return 0;
    return code == CURLE_SEND_ERROR || (code == CURLE_WEIRD_SERVER_REPLY && r->body_sent == r->body_len);
}

static attempt_outcome_t classify_smtp(const crm_httpc_req_t *r, CURLcode code)
{
    attempt_outcome_t o = {0, 0, 0, 0};
    if (code == CURLE_OK)
        return o;
    o.err = CRM_E_UNAVAILABLE;
    o.never_sent = code == CURLE_COULDNT_CONNECT || code == CURLE_COULDNT_RESOLVE_HOST;
    o.retryable = o.never_sent;
    /* A permanent refusal of this message says nothing about the relay; everything else does (no answer, 4xx,
     * a 5xx greeting or EHLO, rejected credentials, a failed STARTTLS). */
    o.breaker_failure = !message_refused(r, code);
    return o;
}

static attempt_outcome_t classify(const crm_httpc_req_t *r, CURLcode code)
{
    attempt_outcome_t o = {0, 0, 0, 0};
    if (r->too_large || code == CURLE_FILESIZE_EXCEEDED) {
        o.err = CRM_E_TOO_LARGE;
        return o;
    }
    if (r->rcpt != NULL)
        return classify_smtp(r, code);
    if (code == CURLE_OK) {
        long s = r->status;
        o.breaker_failure = s >= 500 || s == 429;
        o.retryable = s == 429 || s == 502 || s == 503 || s == 504;
        return o;
    }
    o.err = CRM_E_UNAVAILABLE;
    o.breaker_failure = 1;
    switch (code) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
        o.retryable = o.never_sent = 1;
        break;
    case CURLE_OPERATION_TIMEDOUT: /* only the connect timeout gets here first: the request timer owns the deadline */
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        o.retryable = 1;
        break;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_BAD_CONTENT_ENCODING:
        o.err = CRM_E_PROTOCOL;
        break;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        o.err = CRM_E_INVAL;
        o.breaker_failure = 0;
        break;
    default:
        /* TLS verification failures and the like: no response to return, and nothing a retry would change. */
        break;
    }
    return o;
}

static uint64_t retry_wait(crm_httpc_req_t *r, int *give_up)
{
    crm_httpc_upstream_t *up = r->up;
    uint64_t wait = crm_backoff_full_jitter(up->cfg.backoff_base_ms, up->cfg.backoff_max_ms, r->attempts);
    if (r->status == 429 || r->status == 503) {
        size_t len;
        const char *v = crm_httpc_response_header(r, "retry-after", &len);
        uint64_t ra;
        if (v != NULL && crm_retry_after_parse(v, len, time(NULL), &ra) == 0) {
            if (ra > up->cfg.retry_after_max_ms)
                *give_up = 1;
            wait = ra;
        }
    }
    return wait;
}

static void on_req_timer(crm_timer_t *t);

static void attempt_done(crm_httpc_req_t *r, CURLcode code)
{
    crm_httpc_t *c = r->client;
    crm_httpc_upstream_t *up = r->up;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
    r->curl_code = (int)code;
    r->error = code == CURLE_OK ? "" : (r->errbuf[0] != '\0' ? r->errbuf : curl_easy_strerror(code));
    detach_attempt(r);

    uint64_t now = now_ms(c);
    attempt_outcome_t o = classify(r, code);
    crm_breaker_record(&up->breaker, r->permit, o.breaker_failure, now - r->attempt_at);
    r->permit = 0;

    int may_repeat = r->retryable_method || o.never_sent;
    int retry = o.retryable && may_repeat && r->attempts < up->cfg.max_attempts && !c->closing;
    if (retry) {
        int give_up = 0;
        uint64_t wait = retry_wait(r, &give_up);
        if (!give_up && now + wait + MIN_ATTEMPT_MS < r->deadline) {
            r->state = REQ_BACKOFF;
            ++up->backing_off;
            crm_timerq_start(&c->timers, &r->timer, now + wait, on_req_timer);
            pump(up);
            return;
        }
    }
    /* The request ends before its slot is handed on: the callbacks pump may run could otherwise cancel r. */
    finish(r, o.err);
    pump(up);
}

static void drain_completions(crm_httpc_t *c)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *e = msg->easy_handle;
        CURLcode code = msg->data.result;
        crm_httpc_req_t *r = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r);
        /* msg is not used past this point: the callbacks below may add and remove handles. */
        if (r != NULL && r->state == REQ_ACTIVE && r->easy == e)
            attempt_done(r, code);
    }
}

/* Starts queued requests while the upstream has free slots. Runs callbacks (of requests it cannot start), so it is
 * only called where no request is half-way through a state change. */
static void pump(crm_httpc_upstream_t *up)
{
    crm_httpc_t *c = up->client;
    while (!c->closing && up->in_flight < up->cfg.max_in_flight && !list_empty(&up->queue)) {
        crm_httpc_req_t *r = CONTAINER_OF(up->queue.next, crm_httpc_req_t, queue);
        list_unlink(&r->queue);
        --up->queued;
        /* A request whose deadline is (nearly) gone is not started: the attempt could only time out, and the
         * breaker would count the upstream's failure for a wait that happened here. */
        if (r->deadline <= now_ms(c) + MIN_ATTEMPT_MS) {
            finish(r, CRM_E_DEADLINE);
            continue;
        }
        crm_breaker_permit_t p = crm_breaker_acquire(&up->breaker);
        if (p == 0) {
            ++up->stats.rejected_breaker;
            finish(r, CRM_E_BREAKER_OPEN);
            continue;
        }
        int err = start_attempt(r, p);
        if (err != 0) {
            crm_breaker_release(&up->breaker, p);
            finish(r, err);
        }
    }
}

static void on_req_timer(crm_timer_t *t)
{
    crm_httpc_req_t *r = CONTAINER_OF(t, crm_httpc_req_t, timer);
    crm_httpc_t *c = r->client;
    crm_httpc_upstream_t *up = r->up;
    switch (r->state) {
    case REQ_QUEUED:
        list_unlink(&r->queue);
        --up->queued;
        finish(r, CRM_E_DEADLINE);
        break;
    case REQ_ACTIVE:
        /* Removing an unfinished transfer makes curl close its connection: nothing half-read is reused. */
        detach_attempt(r);
        crm_breaker_record(&up->breaker, r->permit, 1, now_ms(c) - r->attempt_at);
        r->permit = 0;
        r->error = "deadline exceeded";
        r->status = 0;
        finish(r, CRM_E_DEADLINE);
        pump(up);
        break;
    case REQ_BACKOFF:
        --up->backing_off;
        /* A retry waits behind nobody: it has already waited its turn once. */
        r->state = REQ_QUEUED;
        list_push_front(&up->queue, &r->queue);
        ++up->queued;
        crm_timerq_start(&c->timers, &r->timer, r->deadline, on_req_timer);
        pump(up);
        break;
    case REQ_DONE:
        break;
    }
}

static int copy_request(crm_httpc_req_t *r, const crm_httpc_request_t *q)
{
    int failed = 0;
    r->url = dup_or_null(q->url, &failed);
    r->method = dup_or_null(q->smtp != NULL ? "SMTP" : q->method, &failed);
    if (failed)
        return CRM_E_NOMEM;
    if (q->body_len > 0) {
        if ((r->body = malloc(q->body_len + 1)) == NULL)
            return CRM_E_NOMEM;
        memcpy(r->body, q->body, q->body_len);
        r->body[q->body_len] = '\0';
        r->body_len = q->body_len;
    }
    if (q->smtp != NULL) {
        const crm_httpc_smtp_t *s = q->smtp;
        r->mail_from = dup_or_null(s->mail_from, &failed);
        r->username = dup_or_null(s->username, &failed);
        r->password = dup_or_null(s->password, &failed);
        if (failed)
            return CRM_E_NOMEM;
        for (size_t i = 0; i < s->nrcpt; ++i)
            if (append_header(&r->rcpt, s->rcpt[i]) != 0)
                return CRM_E_NOMEM;
        return 0;
    }
    for (size_t i = 0; i < q->nheaders; ++i)
        if (append_header(&r->headers, q->headers[i]) != 0)
            return CRM_E_NOMEM;
    /* No "Expect: 100-continue" round trip before bodies; no form content type curl would otherwise invent. */
    if (append_header(&r->headers, "Expect:") != 0 ||
        (q->content_type != NULL ? append_header_fmt(&r->headers, "Content-Type", q->content_type)
                                 : append_header(&r->headers, "Content-Type:")) != 0)
        return CRM_E_NOMEM;
    if (q->idempotency_key != NULL && append_header_fmt(&r->headers, "Idempotency-Key", q->idempotency_key) != 0)
        return CRM_E_NOMEM;
    return 0;
}

static int validate_request(const crm_httpc_t *c, const crm_httpc_request_t *q)
{
    if (q->url == NULL || q->deadline == 0 || has_crlf_or_nul(q->url, strlen(q->url)))
        return CRM_E_INVAL;
    if (q->body_len > 0 && q->body == NULL)
        return CRM_E_INVAL;
    if (q->body_len > c->cfg.max_request_bytes)
        return CRM_E_TOO_LARGE;
    if (q->smtp != NULL) {
        const crm_httpc_smtp_t *s = q->smtp;
        if (!has_prefix_ci(q->url, "smtp://") && !has_prefix_ci(q->url, "smtps://"))
            return CRM_E_INVAL;
        if (s->mail_from == NULL || s->nrcpt == 0 || s->nrcpt > 100 || s->rcpt == NULL ||
            has_crlf_or_nul(s->mail_from, strlen(s->mail_from)))
            return CRM_E_INVAL;
        for (size_t i = 0; i < s->nrcpt; ++i)
            if (s->rcpt[i] == NULL || has_crlf_or_nul(s->rcpt[i], strlen(s->rcpt[i])))
                return CRM_E_INVAL;
        if ((s->username != NULL && has_crlf_or_nul(s->username, strlen(s->username))) ||
            (s->password != NULL && has_crlf_or_nul(s->password, strlen(s->password))))
            return CRM_E_INVAL;
        return 0;
    }
    if (!has_prefix_ci(q->url, "http://") && !has_prefix_ci(q->url, "https://"))
        return CRM_E_INVAL;
    if (q->method == NULL || q->method[0] == '\0' || strlen(q->method) > 16 || q->nheaders > CRM_HTTPC_MAX_HEADERS ||
        (q->nheaders > 0 && q->headers == NULL))
        return CRM_E_INVAL;
    for (const char *m = q->method; *m != '\0'; ++m)
        if (*m < 'A' || *m > 'Z')
            return CRM_E_INVAL;
    for (size_t i = 0; i < q->nheaders; ++i)
        if (q->headers[i] == NULL || !header_line_valid(q->headers[i]))
            return CRM_E_INVAL;
    if ((q->content_type != NULL && has_crlf_or_nul(q->content_type, strlen(q->content_type))) ||
        (q->idempotency_key != NULL &&
         (q->idempotency_key[0] == '\0' || has_crlf_or_nul(q->idempotency_key, strlen(q->idempotency_key)))))
        return CRM_E_INVAL;
    return 0;
}

static int method_is_idempotent(const char *m)
{
    static const char *const idempotent[] = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"};
    for (size_t i = 0; i < sizeof(idempotent) / sizeof(idempotent[0]); ++i)
        if (strcmp(m, idempotent[i]) == 0)
            return 1;
    return 0;
}

int crm_httpc_send(crm_httpc_upstream_t *up, const crm_httpc_request_t *q, crm_httpc_cb cb, void *data,
                   crm_httpc_req_t **out)
{
    crm_httpc_t *c = up->client;
    if (c->closing)
        return CRM_E_SHUTDOWN;
    if (cb == NULL)
        return CRM_E_INVAL;
    int err = validate_request(c, q);
    if (err != 0)
        return err;
    uint64_t now = now_ms(c);
    if (q->deadline <= now)
        return CRM_E_DEADLINE;

    /* Fail fast while the breaker is open: no queueing, no network. */
    int start_now = up->in_flight < up->cfg.max_in_flight && list_empty(&up->queue);
    crm_breaker_permit_t permit = 0;
    if (start_now) {
        if ((permit = crm_breaker_acquire(&up->breaker)) == 0) {
            ++up->stats.rejected_breaker;
            return CRM_E_BREAKER_OPEN;
        }
    } else if (crm_breaker_state(&up->breaker) == CRM_BREAKER_OPEN) {
        ++up->stats.rejected_breaker;
        return CRM_E_BREAKER_OPEN;
    } else if (up->queued >= up->cfg.queue_max) {
        ++up->stats.rejected_queue_full;
        return CRM_E_QUEUE_FULL;
    }
    if (c->nreqs >= c->cfg.max_requests) {
        err = CRM_E_QUEUE_FULL;
        ++up->stats.rejected_queue_full;
        goto fail;
    }

    crm_httpc_req_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        err = CRM_E_NOMEM;
        goto fail;
    }
    r->client = c;
    r->up = up;
    r->cb = cb;
    r->data = data;
    r->deadline = q->deadline;
    r->sent_at = now;
    r->max_response = q->max_response_bytes != 0 ? q->max_response_bytes : c->cfg.max_response_bytes;
    crm_timer_init(&r->timer);
    list_init(&r->queue);
    if ((err = copy_request(r, q)) != 0)
        goto fail_req;
    r->retryable_method = q->smtp == NULL && (method_is_idempotent(r->method) || q->idempotency_key != NULL);
    /* The timer queue has room for max_requests timers, and nreqs < max_requests here. */
    if ((err = crm_timerq_start(&c->timers, &r->timer, r->deadline, on_req_timer)) != 0)
        goto fail_req;
    if (start_now) {
        if ((err = start_attempt(r, permit)) != 0) {
            crm_timerq_stop(&c->timers, &r->timer);
            goto fail_req;
        }
    } else {
        r->state = REQ_QUEUED;
        list_push_back(&up->queue, &r->queue);
        ++up->queued;
    }
    list_push_back(&c->reqs, &r->all);
    ++c->nreqs;
    ++up->stats.requests;
    if (out != NULL)
        *out = r;
    return 0;

fail_req:
    req_free(r);
fail:
    if (permit != 0)
        crm_breaker_release(&up->breaker, permit);
    return err;
}

static void on_pump_timer(uv_timer_t *t)
{
    crm_httpc_t *c = CONTAINER_OF(t, crm_httpc_t, pump_timer);
    for (size_t i = 0; i < c->nups; ++i)
        pump(c->ups[i]);
}

void crm_httpc_cancel(crm_httpc_req_t *r)
{
    crm_httpc_t *c = r->client;
    crm_httpc_upstream_t *up = r->up;
    req_state_t state = r->state;
    switch (state) {
    case REQ_QUEUED:
        list_unlink(&r->queue);
        --up->queued;
        break;
    case REQ_ACTIVE:
        detach_attempt(r);
        crm_breaker_release(&up->breaker, r->permit);
        break;
    case REQ_BACKOFF:
        --up->backing_off;
        break;
    case REQ_DONE:
        return;
    }
    crm_timerq_stop(&c->timers, &r->timer);
    list_unlink(&r->all);
    --c->nreqs;
    req_free(r);
    /* The freed slot goes to the next waiting request on the next loop iteration: pumping here would run other
     * requests' callbacks inside the caller's cancel. */
    if (state == REQ_ACTIVE)
        uv_timer_start(&c->pump_timer, on_pump_timer, 0, 0);
}

/* ---- client ---- */

static void upstream_free(crm_httpc_upstream_t *up)
{
    if (up == NULL)
        return;
    crm_breaker_dispose(&up->breaker);
    crm_histogram_dispose(&up->latency);
    free(up);
}

static void client_free(crm_httpc_t *c)
{
    for (size_t i = 0; i < c->nups; ++i)
        upstream_free(c->ups[i]);
    for (size_t i = 0; i < c->nspare; ++i)
        curl_easy_cleanup(c->spare[i]);
    if (c->multi != NULL)
        curl_multi_cleanup(c->multi);
    if (c->share != NULL)
        curl_share_cleanup(c->share);
    crm_counter_vec_dispose(&c->outcomes);
    free(c->by_fd);
    free(c->user_agent);
    free(c->ca_file);
    free(c);
    curl_global_cleanup();
}

int crm_httpc_create(uv_loop_t *loop, const crm_httpc_config_t *cfg, crm_httpc_t **out)
{
    if (loop == NULL || cfg == NULL || out == NULL || cfg->max_requests == 0 || cfg->max_requests > 1000000 ||
        cfg->max_connections < 1 || cfg->max_idle_connections < 1 || cfg->max_response_bytes == 0 ||
        cfg->max_response_bytes > SIZE_MAX / 2 || cfg->user_agent == NULL)
        return CRM_E_INVAL;
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    if (!(v->features & CURL_VERSION_ASYNCHDNS) || !(v->features & CURL_VERSION_SSL))
        return CRM_E_CONFIG;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return CRM_E_NOMEM;
    for (int s = 100; s <= 599; ++s)
        snprintf(status_labels[s], sizeof(status_labels[s]), "%d", s);

    int err = CRM_E_NOMEM;
    crm_httpc_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        curl_global_cleanup();
        return CRM_E_NOMEM;
    }
    c->loop = loop;
    c->cfg = *cfg;
    list_init(&c->reqs);
    list_init(&c->socks);
    c->user_agent = strdup(cfg->user_agent);
    c->ca_file = cfg->ca_file != NULL ? strdup(cfg->ca_file) : NULL;
    if (c->user_agent == NULL || (cfg->ca_file != NULL && c->ca_file == NULL))
        goto fail;
    if ((c->share = curl_share_init()) == NULL ||
        curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK ||
        (c->multi = curl_multi_init()) == NULL)
        goto fail;
    /* Upstreams × outcomes (statuses seen plus error kinds) stays far below this; overflow is counted, not grown. */
    if ((err = crm_counter_vec_init(&c->outcomes, outcome_label_names, 2, 2048)) != 0)
        goto fail;
    /* The last fallible step, and it touches the loop only when it succeeds. */
    if ((err = crm_timerq_init(loop, &c->timers, cfg->max_requests)) != 0)
        goto fail;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, cfg->max_connections);
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, cfg->max_idle_connections);
    uv_timer_init(loop, &c->curl_timer);
    uv_timer_init(loop, &c->close_timer);
    uv_timer_init(loop, &c->pump_timer);
    *out = c;
    return 0;

fail:
    client_free(c);
    return err;
}

int crm_httpc_upstream_add(crm_httpc_t *c, const crm_httpc_upstream_config_t *cfg, crm_httpc_upstream_t **out)
{
    if (cfg == NULL || cfg->name == NULL || cfg->name[0] == '\0' ||
        strlen(cfg->name) >= sizeof(((crm_httpc_upstream_t *)0)->name) || cfg->max_in_flight == 0 ||
        cfg->max_in_flight > 4096 || cfg->queue_max > 1000000 || cfg->max_attempts == 0 || cfg->max_attempts > 20 ||
        cfg->connect_timeout_ms == 0)
        return CRM_E_INVAL;
    if (c->closing)
        return CRM_E_SHUTDOWN;
    if (crm_httpc_upstream_find(c, cfg->name) != NULL)
        return CRM_E_EXISTS;
    if (c->nups >= CRM_HTTPC_MAX_UPSTREAMS)
        return CRM_E_LIMIT;
    crm_httpc_upstream_t *up = calloc(1, sizeof(*up));
    if (up == NULL)
        return CRM_E_NOMEM;
    up->client = c;
    memcpy(up->name, cfg->name, strlen(cfg->name) + 1);
    up->cfg = *cfg;
    up->cfg.name = up->name;
    list_init(&up->queue);
    int err;
    if ((err = crm_breaker_init(&up->breaker, up->name, &cfg->breaker, breaker_clock, c->loop)) != 0 ||
        (err = crm_histogram_init(&up->latency, crm_latency_buckets_seconds, crm_latency_buckets_count)) != 0) {
        upstream_free(up);
        return err;
    }
    c->ups[c->nups++] = up;
    if (out != NULL)
        *out = up;
    return 0;
}

crm_httpc_upstream_t *crm_httpc_upstream_find(crm_httpc_t *c, const char *name)
{
    for (size_t i = 0; i < c->nups; ++i)
        if (strcmp(c->ups[i]->name, name) == 0)
            return c->ups[i];
    return NULL;
}

crm_breaker_t *crm_httpc_upstream_breaker(crm_httpc_upstream_t *up)
{
    return &up->breaker;
}

void crm_httpc_upstream_stats(const crm_httpc_upstream_t *up, crm_httpc_upstream_stats_t *out)
{
    *out = up->stats;
    out->in_flight = up->in_flight;
    out->queued = up->queued;
    out->backing_off = up->backing_off;
}

size_t crm_httpc_open_sockets(const crm_httpc_t *c)
{
    return c->nsocks;
}

/* ---- closing ---- */

static void on_handle_closed(uv_handle_t *h);

static void maybe_freed(crm_httpc_t *c)
{
    if (!c->handles_closing || c->handles_open != 0)
        return;
    void (*cb)(void *) = c->on_closed;
    void *data = c->on_closed_data;
    client_free(c);
    if (cb != NULL)
        cb(data);
}

static void on_handle_closed(uv_handle_t *h)
{
    crm_httpc_t *c = h->data;
    --c->handles_open;
    maybe_freed(c);
}

static void on_timers_closed(crm_timerq_t *q)
{
    crm_httpc_t *c = CONTAINER_OF(q, crm_httpc_t, timers);
    --c->handles_open;
    maybe_freed(c);
}

static void on_close_step(uv_timer_t *t)
{
    crm_httpc_t *c = CONTAINER_OF(t, crm_httpc_t, close_timer);
    /* Every request still alive ends now; their callbacks may not start new ones (sends fail with SHUTDOWN). */
    while (!list_empty(&c->reqs)) {
        crm_httpc_req_t *r = CONTAINER_OF(c->reqs.next, crm_httpc_req_t, all);
        crm_httpc_upstream_t *up = r->up;
        switch (r->state) {
        case REQ_QUEUED:
            list_unlink(&r->queue);
            --up->queued;
            break;
        case REQ_ACTIVE:
            detach_attempt(r);
            crm_breaker_release(&up->breaker, r->permit);
            r->permit = 0;
            break;
        case REQ_BACKOFF:
            --up->backing_off;
            break;
        case REQ_DONE:
            break;
        }
        finish(r, CRM_E_SHUTDOWN);
    }
    /* Closing the multi handle closes every cached connection; curl reports each socket with CURL_POLL_REMOVE. */
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    while (!list_empty(&c->socks))
        sock_close(c, CONTAINER_OF(c->socks.next, sock_t, link));
    c->handles_closing = 1;
    c->handles_open += 4; /* curl timer, close timer, pump timer, timer queue */
    c->curl_timer.data = c;
    c->close_timer.data = c;
    c->pump_timer.data = c;
    uv_close((uv_handle_t *)&c->curl_timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->close_timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->pump_timer, on_handle_closed);
    crm_timerq_close(&c->timers, on_timers_closed);
}

void crm_httpc_close(crm_httpc_t *c, void (*on_closed)(void *data), void *data)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->on_closed = on_closed;
    c->on_closed_data = data;
    uv_timer_start(&c->close_timer, on_close_step, 0, 0);
}

/* ---- metrics ---- */

static void collect(void *ctx, crm_prom_t *w)
{
    crm_httpc_t *c = ctx;
    static const struct {
        const char *name, *type, *help;
    } families[] = {
        {"crmd_upstream_requests_total", "counter",
         "Outbound requests completed, by upstream and outcome (HTTP status or error)."},
        {"crmd_upstream_request_duration_seconds", "histogram",
         "Outbound request latency from send to completion, retries included."},
        {"crmd_upstream_attempts_total", "counter", "Outbound attempts started."},
        {"crmd_upstream_retries_total", "counter", "Outbound attempts that were retries."},
        {"crmd_upstream_deadline_expiries_total", "counter", "Outbound requests that ran past their deadline."},
        {"crmd_upstream_rejected_total", "counter", "Outbound requests refused at send, by reason."},
        {"crmd_upstream_in_flight", "gauge", "Outbound attempts in progress."},
        {"crmd_upstream_queued", "gauge", "Outbound requests waiting for a slot or a retry."},
        {"crmd_upstream_breaker_state", "gauge", "Circuit breaker state: 0 closed, 1 open, 2 half-open."},
        {"crmd_upstream_breaker_transitions_total", "counter", "Circuit breaker transitions, by state entered."},
    };
    for (size_t f = 0; f < sizeof(families) / sizeof(families[0]); ++f) {
        crm_prom_family(w, families[f].name, families[f].type, families[f].help);
        for (size_t i = 0; i < c->nups; ++i) {
            crm_httpc_upstream_t *up = c->ups[i];
            crm_label_t l[2] = {{"upstream", up->name}, {NULL, NULL}};
            switch (f) {
            case 0:
                if (i == 0)
                    crm_counter_vec_write(&c->outcomes, w, families[f].name);
                break;
            case 1:
                crm_prom_histogram(w, families[f].name, l, 1, &up->latency);
                break;
            case 2:
                crm_prom_sample_u64(w, families[f].name, l, 1, up->stats.attempts);
                break;
            case 3:
                crm_prom_sample_u64(w, families[f].name, l, 1, up->stats.retries);
                break;
            case 4:
                crm_prom_sample_u64(w, families[f].name, l, 1, up->stats.deadline_expiries);
                break;
            case 5:
                l[1] = (crm_label_t){"reason", "breaker_open"};
                crm_prom_sample_u64(w, families[f].name, l, 2, up->stats.rejected_breaker);
                l[1] = (crm_label_t){"reason", "queue_full"};
                crm_prom_sample_u64(w, families[f].name, l, 2, up->stats.rejected_queue_full);
                break;
            case 6:
                crm_prom_sample_u64(w, families[f].name, l, 1, up->in_flight);
                break;
            case 7:
                crm_prom_sample_u64(w, families[f].name, l, 1, up->queued + up->backing_off);
                break;
            case 8:
                crm_prom_sample_u64(w, families[f].name, l, 1, (uint64_t)crm_breaker_state(&up->breaker));
                break;
            case 9:
                for (int s = 0; s < CRM_BREAKER_NSTATES; ++s) {
                    l[1] = (crm_label_t){"state", crm_breaker_state_name((crm_breaker_state_t)s)};
                    crm_prom_sample_u64(w, families[f].name, l, 2, up->breaker.transitions[s]);
                }
                break;
            }
        }
    }
}

int crm_httpc_register_metrics(crm_httpc_t *c, crm_metrics_t *metrics)
{
    return crm_metrics_register(metrics, collect, c);
}
