/*
 * HTTP server: libh2o (libuv flavour) glued to crmd's router, limits, deadlines, errors, logs and metrics.
 *
 * Serves HTTP/1.1 and h2c (prior knowledge and Upgrade) on a plain listener, or HTTP/1.1 and HTTP/2 via ALPN on a
 * TLS listener, on the caller's loop. Every request gets:
 *   - a request id: the client's X-Request-Id when it is sane (1..128 of [A-Za-z0-9._:-]), else a new UUID, echoed
 *     in the X-Request-Id response header and in every problem document's `instance`;
 *   - routing by method and path pattern; 404, 405 (with Allow) and OPTIONS (204 with Allow) are answered here;
 *   - a body limit: the route's, else the server default (413 problem+json naming the limit);
 *   - a deadline (request_timeout_ms): if the handler has not answered by then, the request is answered 504 and
 *     the handler's pending operation is cancelled through crm_http_await's cancel function;
 *   - one JSON access-log line and metrics when the response is done (or the client gone).
 * Responses carry Content-Length (h2o_send_inline does not set it), X-Request-Id, Cache-Control: no-store and
 * X-Content-Type-Options: nosniff. Errors h2o generates itself once it has parsed a request (broken chunked
 * encoding or Content-Length, a body over the global limit, an unknown Expect) are rewritten into problem+json
 * too. A request line h2o cannot parse at all is answered by h2o's HTTP/1 parser directly with a plain-text 400
 * and the connection closed: there is no request yet to attach anything to.
 *
 * Handler contract: a handler runs on the loop and must eventually answer exactly once with one of the
 * crm_http_respond* functions, either before it returns or later from a callback. While it waits for something
 * asynchronous it registers the operation with crm_http_await; if the request goes away (client reset, deadline,
 * shutdown) the cancel function runs and the handler's callback must then not touch the request. A callback that
 * resumes a request calls crm_http_await_done first. crm_http_req_t lives in the h2o request's memory pool.
 *
 * Shutdown has three steps because h2o 2.2.5 needs them: crm_http_server_drain stops accepting and waits for
 * in-flight requests (bounded by the grace period, after which pending requests are answered 503);
 * crm_http_server_close then closes every connection and calls back once they are gone and at least one second has
 * passed since the shutdown request (h2o_context_dispose aborts earlier); crm_http_server_dispose runs after
 * uv_run has returned, because h2o_context_dispose itself runs the loop.
 */
#ifndef CRM_HTTP_H
#define CRM_HTTP_H

#include <h2o.h>
#include <jansson.h>
#include <stdint.h>
#include <uv.h>

#include "json.h"
#include "metrics.h"
#include "router.h"

typedef struct st_crm_http_server_t crm_http_server_t;
typedef struct st_crm_http_req_t crm_http_req_t;

typedef struct st_crm_http_config_t {
    const char *host; /* literal address or name, resolved once at listen time */
    uint16_t port;
    SSL_CTX *ssl_ctx;      /* optional; when set the listener speaks TLS with ALPN h2/http1.1. Owned by the server */
    size_t max_body_bytes; /* default per-route body limit and h2o's global limit */
    uint64_t request_timeout_ms; /* handler deadline */
    uint64_t idle_timeout_ms;    /* HTTP/1 keep-alive and request read time; HTTP/2 idle time */
    size_t max_connections;      /* accepted beyond this are closed at once */
    crm_json_limits_t json;      /* for crm_http_parse_json; max_bytes is the route's body limit */
    int access_log;
} crm_http_config_t;

void crm_http_config_default(crm_http_config_t *cfg);

/* A server TLS context from PEM files (start-up only: reads files): TLS 1.2 or later, no compression or
 * renegotiation, ALPN offering h2 and http/1.1. NULL with a reason in err on failure. */
SSL_CTX *crm_http_tls_context(const char *cert_file, const char *key_file, char *err, size_t errcap);

struct st_crm_http_req_t {
    h2o_req_t *h2o; /* the h2o request; NULL once answered-and-gone or disposed */
    crm_http_server_t *server;
    const crm_route_t *route; /* matched route (NULL for 404/405) */
    crm_http_method_t method;
    size_t nparams;
    h2o_iovec_t params[CRM_ROUTER_MAX_PARAMS]; /* percent-decoded, NUL-terminated, in pool memory */
    h2o_iovec_t path;                          /* raw path without the query */
    h2o_iovec_t query;                         /* raw query string after '?', or empty */
    char request_id[129];
    uint64_t started_ns;  /* uv_hrtime at arrival */
    uint64_t deadline_ms; /* absolute loop time by which the handler must answer */
    int status;           /* status sent, 0 until answered */
    void *handler_data;   /* the handler's own state across its callbacks (in request memory) */
    /* private */
    int _answered;
    void *_op;
    void (*_op_cancel)(void *op);
    h2o_timeout_entry_t _timeout;
    h2o_linklist_t _link; /* server's list of unanswered requests */
};

/* Creates the server on loop with the given (complete, read-only from now on) router. */
int crm_http_server_create(uv_loop_t *loop, const crm_http_config_t *cfg, const crm_router_t *router,
                           crm_http_server_t **out);

/* Binds and listens (SO_REUSEPORT, so several crmd processes can share the port). Returns 0 or CRM_E_IO with the
 * reason logged. Writes the bound address, e.g. "127.0.0.1:8080", to addr when not NULL. */
int crm_http_server_listen(crm_http_server_t *s, char *addr, size_t addrcap);

/* Registers the HTTP collector: requests by route/method/status, latency histogram by route, in flight, open
 * connections, rejected connections. */
int crm_http_server_register_metrics(crm_http_server_t *s, crm_metrics_t *m);

/* Number of requests whose handler has not answered yet. */
size_t crm_http_server_in_flight(const crm_http_server_t *s);

/* Step 1 of shutdown: stop accepting, ask HTTP/1 connections to close after their current request and HTTP/2
 * connections to go away (GOAWAY). on_drained runs (from the loop) when no request is in flight, or when grace_ms
 * has passed, in which case every unanswered request is first answered 503 and its operation cancelled. */
void crm_http_server_drain(crm_http_server_t *s, uint64_t grace_ms, void (*on_drained)(void *data), void *data);

/* Step 2: closes every connection. on_closed runs once they are all closed, no earlier than one second after
 * step 1. */
void crm_http_server_close(crm_http_server_t *s, void (*on_closed)(void *data), void *data);

/* Step 3, after uv_run has returned: disposes h2o's context and configuration and frees the server. */
void crm_http_server_dispose(crm_http_server_t *s);

/* ---- for handlers ---- */

/* Answers with the given body and content type (both copied). */
void crm_http_respond(crm_http_req_t *req, int status, const char *content_type, const void *body, size_t len);

/* Answers with a JSON document; takes the reference to `body`. */
void crm_http_respond_json(crm_http_req_t *req, int status, json_t *body);

/* Answers RFC 9457 problem+json: {type, title, status, detail, instance, errors?}. `type` is a short slug
 * ("validation-failed") that becomes "urn:crmd:problem:<slug>"; detail may be NULL; errors, when not NULL, is an
 * array of {field, message} and is taken over. */
void crm_http_respond_problem(crm_http_req_t *req, int status, const char *type, const char *title, const char *detail,
                              json_t *errors);

/* Answers a problem document built elsewhere (taken over; NULL answers 500): sets its `instance` to the request id and
 * sends it as application/problem+json with `status`. For problems composed by the database (app/contacts). */
void crm_http_respond_problem_doc(crm_http_req_t *req, int status, json_t *doc);

/* Answers the problem that an error kind stands for (crm_err_http_status): 503 with Retry-After for shed load and
 * unavailable dependencies, 504 for deadlines, 500 otherwise (with nothing internal in the body). */
void crm_http_respond_error(crm_http_req_t *req, int err);

/* Adds a response header (copied); only before answering. */
void crm_http_add_header(crm_http_req_t *req, const char *name, const char *value);

/* The value of request header `name` (lower-case), or NULL. The value is NOT NUL-terminated: its length is
 * stored in *len (required). */
const char *crm_http_header(const crm_http_req_t *req, const char *name, size_t *len);

/* The client's address as text (IPv4, or IPv6 without brackets; an IPv4-mapped IPv6 address as IPv4) into buf,
 * for audit rows. The TCP peer: a proxy in front of crmd shows as the proxy. Returns buf, or NULL when unknown. */
const char *crm_http_peer_ip(const crm_http_req_t *req, char *buf, size_t cap);

/* Parses the request body as JSON under the server's limits (the route's body limit as max_bytes). On failure it
 * answers the request itself (415 wrong Content-Type, 400 empty/malformed/over a structural limit with line and
 * column, 413 too large) and returns a negative crm_err_t; the handler must then just return. */
int crm_http_parse_json(crm_http_req_t *req, json_t **out);

/* The decoded value of query parameter `name` (first occurrence) in pool memory, or NULL when absent. `+` decodes as
 * space. A request whose query string is not valid percent-encoding (or encodes NUL) never reaches a handler: it is
 * answered 400 invalid-query. */
const char *crm_http_query(crm_http_req_t *req, const char *name);

/* 1 when the request carries `Authorization: Bearer <expected>`, compared in constant time; 0 otherwise,
 * including when expected is NULL or empty. */
int crm_http_bearer_matches(const crm_http_req_t *req, const char *expected);

/* Registers the operation the handler is waiting for. cancel(op) runs at most once, on the loop, if the request
 * is abandoned before crm_http_await_done. */
void crm_http_await(crm_http_req_t *req, void *op, void (*cancel)(void *op));

/* The awaited operation completed; returns 1 when the request still wants an answer, 0 when it was already
 * answered (deadline) or abandoned, in which case the caller must not touch it. */
int crm_http_await_done(crm_http_req_t *req);

#endif
