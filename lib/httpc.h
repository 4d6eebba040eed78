/*
 * Outbound HTTP (and SMTP) client: libcurl's multi interface driven by the crmd loop (DESIGN.md §1, §3).
 *
 * One crm_httpc_t owns one curl multi handle on one loop. curl tells us which sockets to watch
 * (CURLMOPT_SOCKETFUNCTION → one uv_poll_t per socket) and when to call it back (CURLMOPT_TIMERFUNCTION → one
 * uv_timer_t); every readiness event goes to curl_multi_socket_action and every completed transfer is collected
 * with curl_multi_info_read. Nothing blocks the loop: curl resolves names on its own threads (AsynchDNS is
 * required at create), and the CA store is loaded once and cached for the multi handle's lifetime.
 *
 * Every request goes to a named *upstream* (google-oauth, gmail, stripe, docusign, smtp, …), which carries the
 * policy for that dependency:
 *   - a circuit breaker (breaker.h). An attempt that ends in a connection error, a deadline expiry, a 5xx or a 429
 *     is a failure. While the breaker is open crm_httpc_send fails at once with CRM_E_BREAKER_OPEN, without
 *     touching the network;
 *   - at most max_in_flight attempts at once, and at most queue_max requests waiting (FIFO) for a slot; a full
 *     queue fails the send at once with CRM_E_QUEUE_FULL (invariant 3);
 *   - retries: only for requests that are safe to repeat (GET, HEAD, OPTIONS, PUT, DELETE, or any method with an
 *     idempotency key), on connection errors and on 429, 502, 503 and 504; after full-jitter exponential backoff
 *     (backoff.h), or after the upstream's Retry-After when it sent one (seconds or HTTP-date). A request that may
 *     have reached the upstream is never repeated otherwise; one that certainly did not (connection refused, name
 *     not resolved) is retried whatever its method. No retry is started that could not finish by the deadline,
 *     and a Retry-After longer than retry_after_max_ms ends the request with that response instead;
 *   - metrics: requests by upstream and outcome, latency, retries, deadline expiries, breaker state, queue figures.
 *
 * Every request has a deadline (absolute loop milliseconds) covering the wait for a slot, every attempt and every
 * backoff. At the deadline the transfer is removed from the multi handle, which makes curl close its connection
 * (a half-read response never goes back to the connection cache), and the request completes with CRM_E_DEADLINE.
 * Attempts also carry a connect timeout.
 *
 * TLS peer and host verification are always on; there is no option to turn them off. Connections are reused through
 * the multi handle's connection cache (HTTP/1.1 keep-alive, HTTP/2 multiplexing over TLS), and TLS sessions are
 * shared between transfers. Redirects are not followed. Only http/https (and smtp/smtps for SMTP requests) URLs are
 * accepted.
 *
 * SMTP: a request with `smtp` set is a mail submission through curl's SMTP support on the same multi handle: the
 * body is the RFC 5322 message, sent after MAIL FROM/RCPT TO. smtps:// is implicit TLS; for smtp:// STARTTLS is used
 * when the server offers it, and required when credentials are given (they are never sent in clear). An SMTP
 * submission is retried here only when the connection could not even be made (a mail accepted twice is delivered
 * twice); otherwise the job queue decides.
 *
 * Callbacks: the completion callback runs exactly once, from the loop, never from inside crm_httpc_send (libuv's
 * rule): if send fails, it never runs. It receives the final outcome after any retries. It may send new requests,
 * cancel others and free anything; the request itself is freed after it returns.
 *
 * Thread-safety: none; everything belongs to the loop thread.
 */
#ifndef CRM_HTTPC_H
#define CRM_HTTPC_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "breaker.h"
#include "metrics.h"

#define CRM_HTTPC_MAX_UPSTREAMS 32
#define CRM_HTTPC_MAX_HEADERS   64

typedef struct st_crm_httpc_t crm_httpc_t;
typedef struct st_crm_httpc_upstream_t crm_httpc_upstream_t;
typedef struct st_crm_httpc_req_t crm_httpc_req_t;

typedef struct st_crm_httpc_config_t {
    size_t max_requests;       /* requests alive at once over all upstreams (in flight, queued, backing off) */
    long max_connections;      /* open connections over all hosts (CURLMOPT_MAX_TOTAL_CONNECTIONS) */
    long max_idle_connections; /* connections kept in the cache for reuse (CURLMOPT_MAXCONNECTS) */
    size_t max_response_bytes; /* default response body limit */
    size_t max_request_bytes;  /* largest request body accepted by send */
    const char *user_agent;    /* copied */
    const char *ca_file;       /* PEM CA bundle to trust instead of the system store (tests); copied; NULL = system */
} crm_httpc_config_t;

/* Defaults: 4096 requests, 256 connections, 64 idle, responses ≤ 1 MiB, request bodies ≤ 16 MiB, "crmd/<version>". */
void crm_httpc_config_default(crm_httpc_config_t *cfg);

typedef struct st_crm_httpc_upstream_config_t {
    const char *name;            /* metrics label and breaker name, e.g. "gmail"; copied; ≤ 63 bytes */
    size_t max_in_flight;        /* attempts in progress at once, 1..4096 */
    size_t queue_max;            /* requests waiting for a slot, 0..1000000 */
    uint64_t connect_timeout_ms; /* per attempt */
    unsigned max_attempts;       /* attempts per request including the first, 1..20 */
    uint64_t backoff_base_ms;    /* first retry waits up to this (full jitter) */
    uint64_t backoff_max_ms;     /* cap of the exponential growth */
    uint64_t retry_after_max_ms; /* a longer Retry-After is not waited for: the response is final */
    crm_breaker_config_t breaker;
} crm_httpc_upstream_config_t;

/* Defaults for `name`: 64 in flight, queue 1024, connect 5 s, 3 attempts, backoff 100 ms .. 5 s, Retry-After up to
 * 60 s, the breaker defaults (breaker.h). */
void crm_httpc_upstream_config_default(crm_httpc_upstream_config_t *cfg, const char *name);

/* Creates a client on loop. Fails with CRM_E_CONFIG when the linked libcurl lacks asynchronous name resolution or
 * TLS (crmd never resolves names or loads files on the loop), CRM_E_INVAL for a bad configuration, CRM_E_NOMEM. */
int crm_httpc_create(uv_loop_t *loop, const crm_httpc_config_t *cfg, crm_httpc_t **out);

/* Adds an upstream (before or after requests start). Names are unique (CRM_E_EXISTS); at most CRM_HTTPC_MAX_UPSTREAMS
 * (CRM_E_LIMIT). The upstream lives as long as the client. The breaker reads the loop clock. */
int crm_httpc_upstream_add(crm_httpc_t *client, const crm_httpc_upstream_config_t *cfg, crm_httpc_upstream_t **out);

/* The upstream called name, or NULL. */
crm_httpc_upstream_t *crm_httpc_upstream_find(crm_httpc_t *client, const char *name);

/* The upstream's breaker, for readiness and tests (read-only use). */
crm_breaker_t *crm_httpc_upstream_breaker(crm_httpc_upstream_t *up);

/* Closes the client: every request still alive completes with CRM_E_SHUTDOWN (from the loop, after this returns),
 * every connection and handle is closed, then on_closed runs and the client is freed. Sends after this fail with
 * CRM_E_SHUTDOWN. */
void crm_httpc_close(crm_httpc_t *client, void (*on_closed)(void *data), void *data);

/* Registers the Prometheus collector (crmd_upstream_* families). */
int crm_httpc_register_metrics(crm_httpc_t *client, crm_metrics_t *metrics);

/* SMTP envelope and credentials (see above). Strings are copied at send. */
typedef struct st_crm_httpc_smtp_t {
    const char *mail_from;   /* envelope sender, a bare address */
    const char *const *rcpt; /* envelope recipients, bare addresses */
    size_t nrcpt;            /* 1..100 */
    const char *username;    /* NULL: no AUTH */
    const char *password;    /* never logged */
} crm_httpc_smtp_t;

typedef struct st_crm_httpc_request_t {
    const char *method;         /* "GET", "POST", …; ignored for SMTP */
    const char *url;            /* absolute http(s):// (or smtp(s):// with smtp) URL */
    const char *const *headers; /* "Name: value" lines, at most CRM_HTTPC_MAX_HEADERS; none may hold CR/LF */
    size_t nheaders;
    const void *body; /* request body (SMTP: the message); NULL with body_len 0 for none */
    size_t body_len;
    const char *content_type;     /* Content-Type of the body, NULL for none */
    const char *idempotency_key;  /* sent as Idempotency-Key; makes the request retryable whatever its method */
    uint64_t deadline;            /* absolute loop ms (uv_now); required */
    size_t max_response_bytes;    /* 0: the client's default */
    const crm_httpc_smtp_t *smtp; /* non-NULL: an SMTP submission */
} crm_httpc_request_t;

/* How a request ended, readable inside the completion callback only. */
typedef struct st_crm_httpc_response_t {
    int status;       /* final HTTP status (or the last SMTP reply code); 0 when no response was received */
    const char *body; /* response body, NUL-terminated after body_len bytes; "" when none */
    size_t body_len;
    unsigned attempts;   /* attempts made, 1.. (0 when the request never started) */
    uint64_t elapsed_ms; /* from send to completion */
    int curl_code;       /* the last attempt's CURLcode, 0 for none */
    const char *error;   /* what went wrong with the last attempt, for logs; "" when nothing did. Names no secret. */
    int smtp_refused;    /* SMTP: the relay refused this message itself (5xx to MAIL, RCPT, DATA or the end of the
                            data): sending it again cannot succeed. A 5xx earlier (greeting, EHLO, AUTH) is not. */
} crm_httpc_response_t;

/*
 * Completion. err is 0 when an HTTP response arrived (whatever its status: 4xx and 5xx are the caller's to
 * interpret; after retries it is the last response), or:
 *   CRM_E_DEADLINE      the deadline passed (waiting for a slot, during an attempt or between attempts);
 *   CRM_E_UNAVAILABLE   no response: connection refused or lost, name not resolved, TLS failure, SMTP refusal
 *                       (status then holds the SMTP reply code when there was one);
 *   CRM_E_BREAKER_OPEN  the breaker opened before a retry could start;
 *   CRM_E_TOO_LARGE     the response exceeded max_response_bytes (its headers or its body);
 *   CRM_E_SHUTDOWN      the client is closing.
 */
typedef void (*crm_httpc_cb)(crm_httpc_req_t *req, int err, const crm_httpc_response_t *resp, void *data);

/*
 * Starts a request on upstream up. Everything in *r is copied, so the caller's buffers may go away at once. On 0 the
 * request is running and cb will run exactly once; *out (if not NULL) receives a handle for crm_httpc_cancel, valid
 * until cb runs. On failure cb never runs: CRM_E_BREAKER_OPEN, CRM_E_QUEUE_FULL (slots and queue taken, or the
 * client's max_requests reached), CRM_E_DEADLINE (already past), CRM_E_INVAL (bad URL scheme, header with CR/LF,
 * no deadline, …), CRM_E_TOO_LARGE (request body), CRM_E_SHUTDOWN, CRM_E_NOMEM.
 */
int crm_httpc_send(crm_httpc_upstream_t *up, const crm_httpc_request_t *r, crm_httpc_cb cb, void *data,
                   crm_httpc_req_t **out);

/* Abandons a request whose callback has not run yet (its caller went away): the transfer is stopped, its connection
 * closed if a response was half-read, and cb never runs. Not from inside the request's own callback. */
void crm_httpc_cancel(crm_httpc_req_t *req);

/* Looks up a header of the final response (case-insensitive name), inside the callback. Returns the value with
 * surrounding whitespace removed and its length in *len, or NULL. The value is not NUL-terminated. */
const char *crm_httpc_response_header(const crm_httpc_req_t *req, const char *name, size_t *len);

/* Per-upstream figures, for tests and health output. */
typedef struct st_crm_httpc_upstream_stats_t {
    size_t in_flight, queued, backing_off;
    uint64_t requests;          /* sends accepted */
    uint64_t attempts, retries; /* attempts started; of which retries */
    uint64_t completed;         /* callbacks run */
    uint64_t deadline_expiries;
    uint64_t rejected_breaker, rejected_queue_full;
} crm_httpc_upstream_stats_t;

void crm_httpc_upstream_stats(const crm_httpc_upstream_t *up, crm_httpc_upstream_stats_t *out);

/* Sockets open right now: connections in use or kept alive in the cache, and any of curl's resolver sockets. For
 * tests. */
size_t crm_httpc_open_sockets(const crm_httpc_t *client);

#endif
