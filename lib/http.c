#include "http.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>

#include "crypto.h"
#include "err.h"
#include "log.h"
#include "rand.h"

#define PROBLEM_PREFIX "urn:crmd:problem:"
#define MAX_STATUS     600

struct st_crm_http_server_t {
    uv_loop_t *loop;
    crm_http_config_t cfg;
    const crm_router_t *router;
    h2o_globalconf_t globalconf;
    h2o_hostconf_t *hostconf;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    int ctx_initialised;
    uv_tcp_t listener;
    int listening;
    h2o_timeout_t req_timeout;
    h2o_linklist_t conns; /* http_conn_t */
    size_t nconns;
    h2o_linklist_t pending; /* crm_http_req_t not yet answered */
    size_t unanswered;
    size_t active; /* requests not yet disposed (answered or not) */
    /* metrics */
    crm_counter_vec_t requests;
    crm_histogram_t *latency; /* per route id, then one for unmatched */
    size_t nlatency;
    uint64_t conns_accepted, conns_rejected;
    /* shutdown */
    uv_timer_t shutdown_timer;
    int draining, forced, closing;
    uint64_t shutdown_requested_at;
    void (*on_drained)(void *data);
    void *on_drained_data;
    void (*on_closed)(void *data);
    void *on_closed_data;
};

typedef struct {
    uv_tcp_t tcp;
    crm_http_server_t *server;
    h2o_linklist_t link;
} http_conn_t;

/* h2o_req_t has no user-data field; a prefilter is a per-request object h2o lets us attach, so it doubles as the
 * link from an h2o request to crmd's request state (found again by its callback address). */
typedef struct {
    h2o_req_prefilter_t super;
    crm_http_req_t *req;
} req_slot_t;

typedef struct {
    h2o_handler_t super;
    crm_http_server_t *server;
} handler_t;

typedef struct {
    h2o_logger_t super;
    crm_http_server_t *server;
} logger_t;

typedef struct {
    h2o_filter_t super;
    crm_http_server_t *server;
} filter_t;

typedef struct {
    h2o_ostream_t super;
    h2o_iovec_t body;
} problem_ostream_t;

static char status_text[MAX_STATUS][4];

void crm_http_config_default(crm_http_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->host = "127.0.0.1";
    cfg->port = 8080;
    cfg->max_body_bytes = 1u << 20;
    cfg->request_timeout_ms = 10000;
    cfg->idle_timeout_ms = 10000;
    cfg->max_connections = 10000;
    crm_json_limits_default(&cfg->json);
    cfg->access_log = 1;
}

SSL_CTX *crm_http_tls_context(const char *cert_file, const char *key_file, char *err, size_t errcap)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    const char *step = "creating the TLS context";
    if (ctx == NULL)
        goto error;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    step = "loading the certificate chain (CRMD_TLS_CERT)";
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1)
        goto error;
    step = "loading the private key (CRMD_TLS_KEY)";
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1)
        goto error;
    step = "matching the private key to the certificate";
    if (SSL_CTX_check_private_key(ctx) != 1)
        goto error;
    h2o_ssl_register_alpn_protocols(ctx, h2o_http2_alpn_protocols);
    return ctx;
error:;
    char ossl[160] = "";
    unsigned long e = ERR_get_error();
    if (e != 0)
        ERR_error_string_n(e, ossl, sizeof(ossl));
    ERR_clear_error();
    snprintf(err, errcap, "%s: %s", step, ossl[0] != '\0' ? ossl : "failed");
    SSL_CTX_free(ctx);
    return NULL;
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Content";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status < 300 ? "OK" : status < 400 ? "Redirect" : status < 500 ? "Client Error" : "Server Error";
    }
}

static void slot_on_setup_ostream(h2o_req_prefilter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    h2o_setup_next_prefilter(self, req, slot);
}

static crm_http_req_t *find_req(h2o_req_t *req)
{
    for (h2o_req_prefilter_t *p = req->prefilters; p != NULL; p = p->next)
        if (p->on_setup_ostream == slot_on_setup_ostream)
            return ((req_slot_t *)p)->req;
    return NULL;
}

static int request_id_is_sane(const char *s, size_t len)
{
    if (len == 0 || len > 128)
        return 0;
    for (size_t i = 0; i < len; ++i) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
              c == '.' || c == ':'))
            return 0;
    }
    return 1;
}

static void set_request_id(crm_http_req_t *r, const h2o_req_t *req)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("x-request-id"), -1);
    if (i != -1) {
        const h2o_iovec_t *v = &req->headers.entries[i].value;
        if (request_id_is_sane(v->base, v->len)) {
            memcpy(r->request_id, v->base, v->len);
            r->request_id[v->len] = '\0';
            return;
        }
    }
    crm_uuid_v4(r->request_id);
}

/* ---- answering ---- */

static void on_shutdown_timer(uv_timer_t *t);

static void notify_if_drained(crm_http_server_t *s)
{
    if (s->draining && s->on_drained != NULL && s->active == 0 && !s->closing)
        uv_timer_start(&s->shutdown_timer, on_shutdown_timer, 0, 0);
}

static void mark_answered(crm_http_req_t *r)
{
    crm_http_server_t *s = r->server;
    r->_answered = 1;
    h2o_timeout_unlink(&r->_timeout);
    if (h2o_linklist_is_linked(&r->_link)) {
        h2o_linklist_unlink(&r->_link);
        --s->unanswered;
    }
}

static void cancel_op(crm_http_req_t *r)
{
    void (*cancel)(void *) = r->_op_cancel;
    void *op = r->_op;
    r->_op = NULL;
    r->_op_cancel = NULL;
    if (cancel != NULL)
        cancel(op);
}

static void add_common_headers(crm_http_req_t *r, h2o_req_t *req)
{
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL, r->request_id,
                          strlen(r->request_id));
    h2o_set_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, H2O_STRLIT("no-store"), 0);
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-content-type-options"), 0, NULL,
                          H2O_STRLIT("nosniff"));
}

/* Sends a complete response whose body already lives in the request's pool (or is static). */
static void send_response(crm_http_req_t *r, int status, const char *ctype, h2o_iovec_t body)
{
    h2o_req_t *req = r->h2o;
    if (r->_answered || req == NULL)
        return;
    mark_answered(r);
    cancel_op(r);
    r->status = status;
    req->res.status = status;
    req->res.reason = reason_phrase(status);
    /* 204 and 304 carry no Content-Length (RFC 9110 §8.6); everything else states it, since h2o does not. */
    req->res.content_length = (status == 204 || status == 304) ? SIZE_MAX : body.len;
    if (ctype != NULL) {
        /* h2o keeps the pointer until the response is written; the caller's string may not live that long. */
        h2o_iovec_t ct = h2o_strdup(&req->pool, ctype, SIZE_MAX);
        h2o_set_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, ct.base, ct.len, 1);
    }
    add_common_headers(r, req);
    static h2o_generator_t generator = {NULL, NULL};
    h2o_start_response(req, &generator);
    int with_body = body.len != 0 && r->method != CRM_HTTP_HEAD && status != 204 && status != 304;
    h2o_send(req, &body, with_body ? 1 : 0, H2O_SEND_STATE_FINAL);
}

void crm_http_respond(crm_http_req_t *r, int status, const char *content_type, const void *body, size_t len)
{
    if (r->h2o == NULL || r->_answered)
        return;
    h2o_iovec_t b = h2o_iovec_init(NULL, 0);
    if (len > 0) {
        b.base = h2o_mem_alloc_pool(&r->h2o->pool, len);
        memcpy(b.base, body, len);
        b.len = len;
    }
    send_response(r, status, content_type, b);
}

static h2o_iovec_t dump_to_pool(h2o_mem_pool_t *pool, const json_t *v)
{
    size_t need = json_dumpb(v, NULL, 0, JSON_COMPACT | JSON_REAL_PRECISION(15));
    if (need == 0)
        return h2o_iovec_init(NULL, 0);
    char *buf = h2o_mem_alloc_pool(pool, need + 1);
    size_t len = json_dumpb(v, buf, need, JSON_COMPACT | JSON_REAL_PRECISION(15));
    buf[len] = '\n';
    return h2o_iovec_init(buf, len + 1);
}

void crm_http_respond_json(crm_http_req_t *r, int status, json_t *body)
{
    if (r->h2o == NULL || r->_answered || body == NULL) {
        json_decref(body);
        if (r->h2o != NULL && !r->_answered)
            crm_http_respond_error(r, CRM_E_NOMEM);
        return;
    }
    h2o_iovec_t b = dump_to_pool(&r->h2o->pool, body);
    json_decref(body);
    if (b.base == NULL) {
        crm_http_respond_error(r, CRM_E_NOMEM);
        return;
    }
    send_response(r, status, "application/json", b);
}

static json_t *problem_doc(int status, const char *type, const char *title, const char *detail, const char *instance,
                           json_t *errors)
{
    char type_uri[128];
    snprintf(type_uri, sizeof(type_uri), PROBLEM_PREFIX "%s", type);
    json_t *doc = json_object();
    if (doc == NULL) {
        json_decref(errors);
        return NULL;
    }
    json_object_set_new(doc, "type", json_string(type_uri));
    json_object_set_new(doc, "title", json_string(title));
    json_object_set_new(doc, "status", json_integer(status));
    if (detail != NULL)
        json_object_set_new(doc, "detail", json_string(detail));
    json_object_set_new(doc, "instance", json_string(instance));
    if (errors != NULL)
        json_object_set_new(doc, "errors", errors);
    return doc;
}

void crm_http_respond_problem(crm_http_req_t *r, int status, const char *type, const char *title, const char *detail,
                              json_t *errors)
{
    if (r->h2o == NULL || r->_answered) {
        json_decref(errors);
        return;
    }
    crm_http_respond_problem_doc(r, status, problem_doc(status, type, title, detail, r->request_id, errors));
}

void crm_http_respond_problem_doc(crm_http_req_t *r, int status, json_t *doc)
{
    if (r->h2o == NULL || r->_answered) {
        json_decref(doc);
        return;
    }
    if (doc != NULL && json_object_set_new(doc, "instance", json_string(r->request_id)) != 0) {
        json_decref(doc);
        doc = NULL;
    }
    h2o_iovec_t b = doc != NULL ? dump_to_pool(&r->h2o->pool, doc) : h2o_iovec_init(NULL, 0);
    json_decref(doc);
    if (b.base == NULL) {
        /* Out of memory while building an error: send the smallest valid answer that needs no allocation. */
        static const char fallback[] = "{\"type\":\"" PROBLEM_PREFIX "internal\",\"status\":500}\n";
        send_response(r, 500, "application/problem+json", h2o_iovec_init(H2O_STRLIT(fallback)));
        return;
    }
    send_response(r, status, "application/problem+json", b);
}

void crm_http_add_header(crm_http_req_t *r, const char *name, const char *value)
{
    if (r->h2o == NULL || r->_answered)
        return;
    h2o_req_t *req = r->h2o;
    size_t nlen = strlen(name);
    char *lname = h2o_mem_alloc_pool(&req->pool, nlen);
    for (size_t i = 0; i < nlen; ++i)
        lname[i] = (char)tolower((unsigned char)name[i]);
    h2o_iovec_t v = h2o_strdup(&req->pool, value, SIZE_MAX);
    h2o_add_header_by_str(&req->pool, &req->res.headers, lname, nlen, 1, NULL, v.base, v.len);
}

void crm_http_respond_error(crm_http_req_t *r, int err)
{
    if (r->h2o == NULL || r->_answered)
        return;
    int status = crm_err_http_status(err);
    const char *type, *title = reason_phrase(status), *detail = crm_err_str(err);
    switch (status) {
    case 503:
        type = "service-unavailable";
        /* Shed load tells the client when to come back (invariant 3); a caller that knows better (a breaker's
         * remaining open time) sets Retry-After itself first. */
        if (h2o_find_header(&r->h2o->res.headers, H2O_TOKEN_RETRY_AFTER, -1) == -1)
            crm_http_add_header(r, "retry-after", err == CRM_E_BREAKER_OPEN || err == CRM_E_UNAVAILABLE ? "5" : "1");
        break;
    case 504:
        type = "timeout";
        break;
    case 413:
        type = "payload-too-large";
        break;
    case 400:
        type = "bad-request";
        break;
    case 404:
        type = "not-found";
        break;
    case 409:
        type = "conflict";
        break;
    default:
        type = "internal";
        detail = NULL; /* nothing about internals leaves the process */
        status = 500;
        title = reason_phrase(500);
        break;
    }
    crm_http_respond_problem(r, status, type, title, detail, NULL);
}

/* ---- request helpers ---- */

const char *crm_http_header(const crm_http_req_t *r, const char *name, size_t *len)
{
    *len = 0;
    if (r->h2o == NULL)
        return NULL;
    ssize_t i = h2o_find_header_by_str(&r->h2o->headers, name, strlen(name), -1);
    if (i == -1)
        return NULL;
    *len = r->h2o->headers.entries[i].value.len;
    return r->h2o->headers.entries[i].value.base;
}

const char *crm_http_peer_ip(const crm_http_req_t *r, char *buf, size_t cap)
{
    struct sockaddr_storage ss;
    if (r->h2o == NULL || r->h2o->conn->callbacks->get_peername == NULL ||
        r->h2o->conn->callbacks->get_peername(r->h2o->conn, (struct sockaddr *)&ss) == 0)
        return NULL;
    if (ss.ss_family == AF_INET)
        return inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, buf, (socklen_t)cap);
    if (ss.ss_family == AF_INET6) {
        const struct in6_addr *a = &((struct sockaddr_in6 *)&ss)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a))
            return inet_ntop(AF_INET, &a->s6_addr[12], buf, (socklen_t)cap);
        return inet_ntop(AF_INET6, a, buf, (socklen_t)cap);
    }
    return NULL;
}

static int is_json_media_type(const char *v, size_t len)
{
    size_t end = 0;
    while (end < len && v[end] != ';')
        ++end;
    while (end > 0 && (v[end - 1] == ' ' || v[end - 1] == '\t'))
        --end;
    size_t start = 0;
    while (start < end && (v[start] == ' ' || v[start] == '\t'))
        ++start;
    size_t n = end - start;
    const char *t = v + start;
    if (n == 16 && strncasecmp(t, "application/json", 16) == 0)
        return 1;
    /* Structured-syntax suffix (RFC 6839): application/merge-patch+json and friends. */
    return n > 17 && strncasecmp(t, "application/", 12) == 0 && strncasecmp(t + n - 5, "+json", 5) == 0;
}

static size_t route_body_limit(const crm_http_req_t *r)
{
    if (r->route != NULL && r->route->max_body_bytes != 0)
        return r->route->max_body_bytes;
    return r->server->cfg.max_body_bytes;
}

static void respond_too_large(crm_http_req_t *r, size_t limit)
{
    char detail[128];
    snprintf(detail, sizeof(detail), "The request body exceeds the limit of %zu bytes for this resource.", limit);
    crm_http_respond_problem(r, 413, "payload-too-large", reason_phrase(413), detail, NULL);
}

int crm_http_parse_json(crm_http_req_t *r, json_t **out)
{
    *out = NULL;
    if (r->h2o == NULL || r->_answered)
        return CRM_E_STATE;
    size_t ctlen = 0;
    const char *ct = crm_http_header(r, "content-type", &ctlen);
    if (ct == NULL || !is_json_media_type(ct, ctlen)) {
        crm_http_respond_problem(r, 415, "unsupported-media-type", reason_phrase(415),
                                 "The request body must be JSON (Content-Type: application/json).", NULL);
        return CRM_E_PARSE;
    }
    crm_json_limits_t limits = r->server->cfg.json;
    limits.max_bytes = route_body_limit(r);
    crm_json_error_t jerr;
    int err = crm_json_parse(r->h2o->entity.base, r->h2o->entity.len, &limits, out, &jerr);
    if (err == 0)
        return 0;
    if (err == CRM_E_TOO_LARGE) {
        respond_too_large(r, limits.max_bytes);
        return err;
    }
    json_t *errors = json_array();
    json_t *e = json_object();
    json_object_set_new(e, "field", json_string("body"));
    json_object_set_new(e, "message", json_string(jerr.message));
    if (jerr.line != 0) {
        json_object_set_new(e, "line", json_integer((json_int_t)jerr.line));
        json_object_set_new(e, "column", json_integer((json_int_t)jerr.column));
        json_object_set_new(e, "position", json_integer((json_int_t)jerr.position));
    }
    json_array_append_new(errors, e);
    crm_http_respond_problem(r, 400, err == CRM_E_LIMIT ? "json-limit-exceeded" : "invalid-json",
                             err == CRM_E_LIMIT ? "JSON limit exceeded" : "Invalid JSON", jerr.message, errors);
    return err;
}

/* Whether every '%' of a query string starts a hex pair that does not encode NUL: what query_decode accepts. Checked
 * before any handler runs, so that crm_http_query's NULL means absent, never "present but undecodable" (a filter
 * that silently vanished). */
static int query_well_formed(const char *q, size_t len)
{
    for (size_t i = 0; i < len; ++i) {
        if (q[i] != '%')
            continue;
        if (len - i < 3 || !isxdigit((unsigned char)q[i + 1]) || !isxdigit((unsigned char)q[i + 2]) ||
            (q[i + 1] == '0' && q[i + 2] == '0'))
            return 0;
        i += 2;
    }
    return 1;
}

static int query_decode(h2o_mem_pool_t *pool, const char *in, size_t len, h2o_iovec_t *out)
{
    char *buf = h2o_mem_alloc_pool(pool, len + 1);
    /* application/x-www-form-urlencoded: '+' is a space; then ordinary percent-decoding. */
    for (size_t i = 0; i < len; ++i)
        buf[i] = in[i] == '+' ? ' ' : in[i];
    size_t n = 0;
    if (crm_percent_decode(buf, len, buf, &n) != 0)
        return CRM_E_PARSE;
    buf[n] = '\0';
    *out = h2o_iovec_init(buf, n);
    return 0;
}

const char *crm_http_query(crm_http_req_t *r, const char *name)
{
    if (r->h2o == NULL || r->query.len == 0)
        return NULL;
    size_t nlen = strlen(name);
    const char *p = r->query.base, *end = p + r->query.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *pair_end = amp != NULL ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(pair_end - p));
        const char *key_end = eq != NULL ? eq : pair_end;
        h2o_iovec_t key;
        if (query_decode(&r->h2o->pool, p, (size_t)(key_end - p), &key) == 0 && key.len == nlen &&
            memcmp(key.base, name, nlen) == 0) {
            h2o_iovec_t val = h2o_iovec_init("", 0);
            if (eq != NULL && query_decode(&r->h2o->pool, eq + 1, (size_t)(pair_end - eq - 1), &val) != 0)
                return NULL;
            return val.base;
        }
        p = pair_end + 1;
    }
    return NULL;
}

int crm_http_bearer_matches(const crm_http_req_t *r, const char *expected)
{
    if (expected == NULL || expected[0] == '\0')
        return 0;
    size_t len = 0;
    const char *v = crm_http_header(r, "authorization", &len);
    if (v == NULL || len < 7 || strncasecmp(v, "Bearer ", 7) != 0)
        return 0;
    return crm_ct_equal(v + 7, len - 7, expected, strlen(expected));
}

void crm_http_await(crm_http_req_t *r, void *op, void (*cancel)(void *op))
{
    r->_op = op;
    r->_op_cancel = cancel;
}

int crm_http_await_done(crm_http_req_t *r)
{
    r->_op = NULL;
    r->_op_cancel = NULL;
    return r->h2o != NULL && !r->_answered;
}

/* ---- the request path ---- */

static void on_req_timeout(h2o_timeout_entry_t *entry)
{
    crm_http_req_t *r = H2O_STRUCT_FROM_MEMBER(crm_http_req_t, _timeout, entry);
    char detail[96];
    snprintf(detail, sizeof(detail), "The request did not complete within %llu ms.",
             (unsigned long long)r->server->cfg.request_timeout_ms);
    crm_log(CRM_LOG_WARN, "http.request_timeout", CRM_LOG_STR("request_id", r->request_id),
            CRM_LOG_STR("route", r->route != NULL ? r->route->pattern : "-"));
    crm_http_respond_problem(r, 504, "timeout", reason_phrase(504), detail, NULL);
}

static void on_req_dispose(void *p)
{
    crm_http_req_t *r = p;
    crm_http_server_t *s = r->server;
    if (!r->_answered)
        mark_answered(r);
    cancel_op(r);
    r->h2o = NULL;
    --s->active;
    notify_if_drained(s);
}

static int decode_params(crm_http_req_t *r, const crm_route_match_t *m)
{
    r->nparams = m->nparams;
    for (size_t i = 0; i < m->nparams; ++i) {
        char *buf = h2o_mem_alloc_pool(&r->h2o->pool, m->params[i].len + 1);
        size_t n = 0;
        if (crm_percent_decode(m->params[i].base, m->params[i].len, buf, &n) != 0)
            return (int)i;
        buf[n] = '\0';
        r->params[i] = h2o_iovec_init(buf, n);
    }
    return -1;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    crm_http_server_t *s = ((handler_t *)self)->server;
    crm_http_req_t *r = h2o_mem_alloc_shared(&req->pool, sizeof(*r), on_req_dispose);
    memset(r, 0, sizeof(*r));
    r->h2o = req;
    r->server = s;
    r->started_ns = uv_hrtime();
    r->deadline_ms = uv_now(s->loop) + s->cfg.request_timeout_ms;
    req_slot_t *slot = (req_slot_t *)h2o_add_prefilter(req, sizeof(*slot));
    slot->super.on_setup_ostream = slot_on_setup_ostream;
    slot->req = r;
    ++s->active;
    h2o_linklist_insert(&s->pending, &r->_link);
    ++s->unanswered;
    r->_timeout.cb = on_req_timeout;
    h2o_timeout_link(s->loop, &s->req_timeout, &r->_timeout);
    set_request_id(r, req);

    const char *q = memchr(req->path.base, '?', req->path.len);
    r->path = h2o_iovec_init(req->path.base, q != NULL ? (size_t)(q - req->path.base) : req->path.len);
    r->query = q != NULL ? h2o_iovec_init(q + 1, req->path.len - r->path.len - 1) : h2o_iovec_init(NULL, 0);

    int method = crm_http_method_parse(req->method.base, req->method.len);
    r->method = method >= 0 ? (crm_http_method_t)method : CRM_HTTP_METHOD_COUNT;
    crm_route_match_t match;
    /* An unknown method still needs to know whether the path exists (405 with Allow, not 404). Matching it as
     * OPTIONS gives exactly that: the allowed set, or not found. */
    crm_route_result_t res = crm_router_match(s->router, method >= 0 ? (crm_http_method_t)method : CRM_HTTP_OPTIONS,
                                              r->path.base, r->path.len, &match);
    if (res == CRM_ROUTE_FOUND && method < 0)
        res = CRM_ROUTE_METHOD_NOT_ALLOWED;
    switch (res) {
    case CRM_ROUTE_NOT_FOUND:
        crm_http_respond_problem(r, 404, "not-found", reason_phrase(404), "No resource exists at this path.", NULL);
        return 0;
    case CRM_ROUTE_METHOD_NOT_ALLOWED: {
        char allow[CRM_ROUTER_ALLOW_MAX];
        crm_router_format_allow(match.allowed, allow, sizeof(allow));
        crm_http_add_header(r, "allow", allow);
        if (method == CRM_HTTP_OPTIONS) {
            send_response(r, 204, NULL, h2o_iovec_init(NULL, 0));
        } else {
            char detail[CRM_ROUTER_ALLOW_MAX + 48];
            snprintf(detail, sizeof(detail), "This resource supports: %s.", allow);
            crm_http_respond_problem(r, 405, "method-not-allowed", reason_phrase(405), detail, NULL);
        }
        return 0;
    }
    case CRM_ROUTE_FOUND:
        break;
    }
    r->route = match.route;
    int bad = decode_params(r, &match);
    if (bad >= 0) {
        char detail[128];
        snprintf(detail, sizeof(detail), "Path parameter '%s' is not valid percent-encoding.",
                 match.route->param_names[bad]);
        crm_http_respond_problem(r, 400, "invalid-path", reason_phrase(400), detail, NULL);
        return 0;
    }
    if (!query_well_formed(r->query.base, r->query.len)) {
        crm_http_respond_problem(r, 400, "invalid-query", reason_phrase(400),
                                 "The query string is not valid percent-encoding.", NULL);
        return 0;
    }
    size_t limit = route_body_limit(r);
    if (req->entity.len > limit) {
        respond_too_large(r, limit);
        return 0;
    }
    r->route->handler(r);
    return 0;
}

/* ---- h2o's own error responses, rewritten as problem+json ---- */

static void problem_ostream_send(h2o_ostream_t *self, h2o_req_t *req, h2o_iovec_t *bufs, size_t bufcnt,
                                 h2o_send_state_t state)
{
    problem_ostream_t *o = (problem_ostream_t *)self;
    if (h2o_send_state_is_in_progress(state)) {
        h2o_ostream_send_next(self, req, NULL, 0, state);
        return;
    }
    int head = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
    h2o_ostream_send_next(self, req, &o->body, head ? 0 : 1, state);
}

static void filter_on_setup_ostream(h2o_filter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    filter_t *f = (filter_t *)self;
    if (find_req(req) != NULL || req->res.status < 400) {
        h2o_setup_next_ostream(req, slot);
        return;
    }
    /* An error h2o produced before crmd saw the request: a malformed request, a body over the global limit. The id
     * lives in the request's pool: h2o keeps pointers to header values until the response has been written. */
    char *id = h2o_mem_alloc_pool(&req->pool, 37);
    crm_uuid_v4(id);
    const char *type = "bad-request", *detail = "The request could not be processed.";
    char buf[128];
    if (req->res.status == 413) {
        type = "payload-too-large";
        snprintf(buf, sizeof(buf), "The request body exceeds the limit of %zu bytes.", f->server->cfg.max_body_bytes);
        detail = buf;
    } else if (req->res.status == 417) {
        type = "expectation-failed";
        detail = "Only the 100-continue expectation is supported.";
    } else if (req->res.status >= 500) {
        type = "internal";
        detail = NULL;
    }
    json_t *doc = problem_doc(req->res.status, type, reason_phrase(req->res.status), detail, id, NULL);
    h2o_iovec_t body = doc != NULL ? dump_to_pool(&req->pool, doc) : h2o_iovec_init(NULL, 0);
    json_decref(doc);
    if (body.base == NULL) {
        h2o_setup_next_ostream(req, slot);
        return;
    }
    req->res.reason = reason_phrase(req->res.status);
    req->res.content_length = body.len;
    h2o_set_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, H2O_STRLIT("application/problem+json"), 1);
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL, id, strlen(id));
    h2o_set_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, H2O_STRLIT("no-store"), 0);
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-content-type-options"), 0, NULL,
                          H2O_STRLIT("nosniff"));
    problem_ostream_t *o = (problem_ostream_t *)h2o_add_ostream(req, sizeof(*o), slot);
    o->super.do_send = problem_ostream_send;
    o->body = body;
    h2o_setup_next_ostream(req, &o->super.next);
}

/* ---- access log and metrics, when h2o disposes of a request ---- */

static const char *proto_name(int version)
{
    return version >= 0x200 ? "HTTP/2" : version == 0x101 ? "HTTP/1.1" : "HTTP/1.0";
}

static void format_peer(h2o_req_t *req, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    out[0] = '\0';
    if (req->conn->callbacks->get_peername == NULL)
        return;
    socklen_t len = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);
    if (len == 0)
        return;
    char host[INET6_ADDRSTRLEN];
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
        snprintf(out, cap, "%s:%u", host, ntohs(sin->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
        snprintf(out, cap, "[%s]:%u", host, ntohs(sin6->sin6_port));
    }
}

static const char *response_request_id(h2o_req_t *req)
{
    ssize_t i = h2o_find_header_by_str(&req->res.headers, H2O_STRLIT("x-request-id"), -1);
    return i == -1 ? "" : req->res.headers.entries[i].value.base;
}

static void log_access(h2o_logger_t *self, h2o_req_t *req)
{
    crm_http_server_t *s = ((logger_t *)self)->server;
    crm_http_req_t *r = find_req(req);
    /* 499 (nginx's "client closed request") when the client went away before any answer. */
    int status = r != NULL && !r->_answered ? 499 : req->res.status;
    if (status < 100 || status >= MAX_STATUS)
        status = 500;
    const char *route = r != NULL && r->route != NULL ? r->route->pattern : "unmatched";
    const char *method = r != NULL && r->method < CRM_HTTP_METHOD_COUNT ? crm_http_method_name(r->method) : "OTHER";
    double seconds;
    if (r != NULL) {
        seconds = (double)(uv_hrtime() - r->started_ns) / 1e9;
    } else {
        struct timeval now;
        gettimeofday(&now, NULL);
        seconds = (double)(now.tv_sec - req->timestamps.request_begin_at.tv_sec) +
                  (double)(now.tv_usec - req->timestamps.request_begin_at.tv_usec) / 1e6;
        if (seconds < 0)
            seconds = 0;
    }
    const char *labels[3] = {route, method, status_text[status]};
    crm_counter_vec_add(&s->requests, labels, 1);
    size_t h = r != NULL && r->route != NULL ? r->route->id : s->nlatency - 1;
    crm_histogram_observe(&s->latency[h], seconds);
    if (!s->cfg.access_log || !crm_log_enabled(CRM_LOG_INFO))
        return;
    char peer[INET6_ADDRSTRLEN + 10];
    format_peer(req, peer, sizeof(peer));
    crm_log(CRM_LOG_INFO, "http.access", CRM_LOG_STR("method", method), CRM_LOG_STR("route", route),
            CRM_LOG_INT("status", status), CRM_LOG_UINT("duration_us", (uint64_t)(seconds * 1e6)),
            CRM_LOG_UINT("bytes", req->bytes_sent), CRM_LOG_STR("request_id", response_request_id(req)),
            CRM_LOG_STR("peer", peer), CRM_LOG_STR("proto", proto_name(req->version)));
}

/* ---- connections ---- */

static void on_conn_closed(uv_handle_t *handle)
{
    http_conn_t *c = (http_conn_t *)handle;
    crm_http_server_t *s = c->server;
    h2o_linklist_unlink(&c->link);
    --s->nconns;
    free(c);
}

static void on_rejected_closed(uv_handle_t *handle)
{
    free(handle);
}

static void on_accept(uv_stream_t *listener, int status)
{
    crm_http_server_t *s = listener->data;
    if (status != 0)
        return;
    if (s->nconns >= s->cfg.max_connections) {
        /* Over the connection bound: accept and close at once, so the client learns now instead of waiting in
         * the kernel's backlog (invariant 3). */
        uv_tcp_t *t = malloc(sizeof(*t));
        if (t == NULL)
            return;
        uv_tcp_init(s->loop, t);
        if (uv_accept(listener, (uv_stream_t *)t) == 0)
            ++s->conns_rejected;
        uv_close((uv_handle_t *)t, on_rejected_closed);
        return;
    }
    http_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    uv_tcp_init(s->loop, &c->tcp);
    c->server = s;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, on_rejected_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    h2o_linklist_insert(&s->conns, &c->link);
    ++s->nconns;
    ++s->conns_accepted;
    h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)&c->tcp, on_conn_closed);
    h2o_accept(&s->accept_ctx, sock);
}

/* ---- lifecycle ---- */

static void init_status_text(void)
{
    for (int i = 0; i < MAX_STATUS; ++i)
        snprintf(status_text[i], sizeof(status_text[i]), "%d", i);
}

int crm_http_server_create(uv_loop_t *loop, const crm_http_config_t *cfg, const crm_router_t *router,
                           crm_http_server_t **out)
{
    *out = NULL;
    if (cfg->max_body_bytes == 0 || cfg->request_timeout_ms == 0 || cfg->idle_timeout_ms == 0 ||
        cfg->max_connections == 0)
        return CRM_E_INVAL;
    crm_http_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return CRM_E_NOMEM;
    init_status_text();
    s->loop = loop;
    s->cfg = *cfg;
    s->router = router;
    h2o_linklist_init_anchor(&s->conns);
    h2o_linklist_init_anchor(&s->pending);

    /* h2o keeps at most 16 freed socket input buffers for reuse; with more connections than that busy, glibc
     * returned memory to the kernel and took it back every few requests (brk and page faults were a fifth of a
     * request's cost under 64 connections). Keep up to one per connection, bounded. */
    size_t recycle = cfg->max_connections < 1024 ? cfg->max_connections : 1024;
    if (h2o_socket_buffer_prototype.allocator.max < recycle)
        h2o_socket_buffer_prototype.allocator.max = recycle;
    h2o_config_init(&s->globalconf);
    s->globalconf.server_name = h2o_iovec_init(H2O_STRLIT("crmd"));
    /* h2o buffers whole bodies before calling the handler: its global limit must be the largest any route
     * accepts, not its 1 GiB default. Per-route limits below it are checked in on_req. */
    size_t global_limit = cfg->max_body_bytes;
    for (uint32_t i = 0; i < crm_router_count(router); ++i) {
        const crm_route_t *rt = crm_router_route(router, i);
        if (rt->max_body_bytes > global_limit)
            global_limit = rt->max_body_bytes;
    }
    s->globalconf.max_request_entity_size = global_limit;
    s->globalconf.http1.req_timeout = cfg->idle_timeout_ms;
    s->globalconf.http2.idle_timeout = cfg->idle_timeout_ms;
    s->globalconf.http1.upgrade_to_http2 = 1;
    s->hostconf = h2o_config_register_host(&s->globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    /* No paths are registered, so every request lands on the fallback path, and so do the errors h2o emits on its
     * own: one handler, one logger and one filter see everything. */
    h2o_pathconf_t *pathconf = &s->hostconf->fallback_path;
    handler_t *handler = (handler_t *)h2o_create_handler(pathconf, sizeof(*handler));
    handler->super.on_req = on_req;
    handler->server = s;
    logger_t *logger = (logger_t *)h2o_create_logger(pathconf, sizeof(*logger));
    logger->super.log_access = log_access;
    logger->server = s;
    filter_t *filter = (filter_t *)h2o_create_filter(pathconf, sizeof(*filter));
    filter->super.on_setup_ostream = filter_on_setup_ostream;
    filter->server = s;

    h2o_context_init(&s->ctx, loop, &s->globalconf);
    s->ctx_initialised = 1;
    h2o_timeout_init(loop, &s->req_timeout, cfg->request_timeout_ms);
    s->accept_ctx.ctx = &s->ctx;
    s->accept_ctx.hosts = s->globalconf.hosts;
    s->accept_ctx.ssl_ctx = cfg->ssl_ctx;
    uv_timer_init(loop, &s->shutdown_timer);
    s->shutdown_timer.data = s;

    static const char *const label_names[] = {"route", "method", "status"};
    int err = crm_counter_vec_init(&s->requests, label_names, 3, 4096);
    s->nlatency = crm_router_count(router) + 1;
    s->latency = calloc(s->nlatency, sizeof(*s->latency));
    if (err != 0 || s->latency == NULL) {
        crm_http_server_dispose(s);
        return err != 0 ? err : CRM_E_NOMEM;
    }
    for (size_t i = 0; i < s->nlatency; ++i)
        if ((err = crm_histogram_init(&s->latency[i], crm_latency_buckets_seconds, crm_latency_buckets_count)) != 0) {
            crm_http_server_dispose(s);
            return err;
        }
    *out = s;
    return 0;
}

static int resolve_listen(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
    /* Start-up only, before the loop runs: a blocking lookup is allowed here. */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%u", port);
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        crm_log(CRM_LOG_ERROR, "http.listen_failed", CRM_LOG_STR("host", host), CRM_LOG_STR("error", gai_strerror(rc)));
        return CRM_E_IO;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int crm_http_server_listen(crm_http_server_t *s, char *addr, size_t addrcap)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    if (resolve_listen(s->cfg.host, s->cfg.port, &ss, &sslen) != 0)
        return CRM_E_IO;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int on = 1;
    const char *step = "socket";
    if (fd < 0)
        goto error;
    step = "setsockopt";
    /* SO_REUSEPORT lets one crmd process per core share the port, the kernel spreading connections (DESIGN.md §1). */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0)
        goto error;
    step = "bind";
    if (bind(fd, (struct sockaddr *)&ss, sslen) != 0)
        goto error;
    uv_tcp_init(s->loop, &s->listener);
    s->listener.data = s;
    s->listening = 1;
    int rc = uv_tcp_open(&s->listener, fd);
    if (rc != 0)
        close(fd); /* not adopted by the handle */
    else
        rc = uv_listen((uv_stream_t *)&s->listener, 1024, on_accept);
    if (rc != 0) {
        crm_log(CRM_LOG_ERROR, "http.listen_failed", CRM_LOG_STR("error", uv_strerror(rc)));
        return CRM_E_IO;
    }
    if (addr != NULL) {
        struct sockaddr_storage bound;
        int blen = sizeof(bound);
        char host[INET6_ADDRSTRLEN] = "?";
        uint16_t port = 0;
        uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen);
        if (bound.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&bound, host, sizeof(host));
            port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
            snprintf(addr, addrcap, "[%s]:%u", host, port);
        } else {
            uv_ip4_name((struct sockaddr_in *)&bound, host, sizeof(host));
            port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
            snprintf(addr, addrcap, "%s:%u", host, port);
        }
    }
    return 0;
error:
    crm_log(CRM_LOG_ERROR, "http.listen_failed", CRM_LOG_STR("step", step), CRM_LOG_STR("error", strerror(errno)),
            CRM_LOG_STR("host", s->cfg.host), CRM_LOG_UINT("port", s->cfg.port));
    if (fd >= 0)
        close(fd);
    return CRM_E_IO;
}

size_t crm_http_server_in_flight(const crm_http_server_t *s)
{
    return s->active;
}

static void collect(void *ctx, crm_prom_t *w)
{
    crm_http_server_t *s = ctx;
    crm_prom_family(w, "crmd_http_requests_total", "counter", "HTTP requests by route pattern, method and status.");
    crm_counter_vec_write(&s->requests, w, "crmd_http_requests_total");
    crm_prom_family(w, "crmd_http_request_duration_seconds", "histogram", "HTTP request latency by route pattern.");
    for (size_t i = 0; i < s->nlatency; ++i) {
        if (s->latency[i].count == 0)
            continue;
        const crm_route_t *rt = i + 1 < s->nlatency ? crm_router_route(s->router, (uint32_t)i) : NULL;
        crm_label_t l = {"route", rt != NULL ? rt->pattern : "unmatched"};
        crm_prom_histogram(w, "crmd_http_request_duration_seconds", &l, 1, &s->latency[i]);
    }
    crm_prom_family(w, "crmd_http_requests_in_flight", "gauge", "HTTP requests received and not yet completed.");
    crm_prom_sample_u64(w, "crmd_http_requests_in_flight", NULL, 0, s->active);
    crm_prom_family(w, "crmd_http_connections", "gauge", "Open client connections.");
    crm_prom_sample_u64(w, "crmd_http_connections", NULL, 0, s->nconns);
    crm_prom_family(w, "crmd_http_connections_accepted_total", "counter", "Client connections accepted.");
    crm_prom_sample_u64(w, "crmd_http_connections_accepted_total", NULL, 0, s->conns_accepted);
    crm_prom_family(w, "crmd_http_connections_rejected_total", "counter",
                    "Client connections closed at once because the connection limit was reached.");
    crm_prom_sample_u64(w, "crmd_http_connections_rejected_total", NULL, 0, s->conns_rejected);
}

int crm_http_server_register_metrics(crm_http_server_t *s, crm_metrics_t *m)
{
    return crm_metrics_register(m, collect, s);
}

static void on_listener_closed(uv_handle_t *h)
{
}

void crm_http_server_drain(crm_http_server_t *s, uint64_t grace_ms, void (*on_drained)(void *data), void *data)
{
    if (s->draining)
        return;
    s->draining = 1;
    s->on_drained = on_drained;
    s->on_drained_data = data;
    s->shutdown_requested_at = uv_now(s->loop);
    if (s->listening) {
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        s->listening = 0;
    }
    h2o_context_request_shutdown(&s->ctx);
    uv_timer_start(&s->shutdown_timer, on_shutdown_timer, s->active == 0 ? 0 : grace_ms, 0);
}

/* Past the grace period: answer whatever is still waiting so that its connection can finish and close. */
static void force_answers(crm_http_server_t *s)
{
    s->forced = 1;
    while (!h2o_linklist_is_empty(&s->pending)) {
        crm_http_req_t *r = H2O_STRUCT_FROM_MEMBER(crm_http_req_t, _link, s->pending.next);
        crm_http_add_header(r, "retry-after", "1");
        crm_http_respond_problem(r, 503, "service-unavailable", reason_phrase(503), "The server is shutting down.",
                                 NULL);
        if (h2o_linklist_is_linked(&r->_link)) {
            /* Could not be answered (the request is already gone); drop it from the list all the same. */
            mark_answered(r);
        }
    }
}

static void shutdown_close_connections(crm_http_server_t *s)
{
    for (h2o_linklist_t *n = s->conns.next; n != &s->conns; n = n->next) {
        http_conn_t *c = H2O_STRUCT_FROM_MEMBER(http_conn_t, link, n);
        uv_os_fd_t fd;
        /* Shutting the socket down makes h2o's pending read fail, and h2o then closes the connection through its
         * own path; closing the handle underneath h2o would leave it with a dangling socket. */
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            shutdown(fd, SHUT_RDWR);
    }
}

static void on_shutdown_timer(uv_timer_t *t)
{
    crm_http_server_t *s = t->data;
    if (s->closing) {
        uint64_t since = uv_now(s->loop) - s->shutdown_requested_at;
        if (s->nconns > 0 || since < 1100) {
            if (s->nconns > 0)
                shutdown_close_connections(s);
            uv_timer_start(&s->shutdown_timer, on_shutdown_timer, since < 1100 ? 1100 - since : 50, 0);
            return;
        }
        uv_close((uv_handle_t *)&s->shutdown_timer, NULL);
        if (s->on_closed != NULL)
            s->on_closed(s->on_closed_data);
        return;
    }
    if (s->active > 0 && !s->forced)
        force_answers(s);
    void (*cb)(void *) = s->on_drained;
    s->on_drained = NULL;
    if (cb != NULL)
        cb(s->on_drained_data);
}

void crm_http_server_close(crm_http_server_t *s, void (*on_closed)(void *data), void *data)
{
    if (!s->draining)
        crm_http_server_drain(s, 0, NULL, NULL);
    s->on_drained = NULL;
    s->closing = 1;
    s->on_closed = on_closed;
    s->on_closed_data = data;
    force_answers(s);
    shutdown_close_connections(s);
    uv_timer_start(&s->shutdown_timer, on_shutdown_timer, 0, 0);
}

void crm_http_server_dispose(crm_http_server_t *s)
{
    if (s == NULL)
        return;
    /* A server that never went through drain and close (start-up failed) still has its own handles open; their
     * closes complete inside h2o_context_dispose, which runs the loop once. */
    if (s->listening) {
        uv_close((uv_handle_t *)&s->listener, NULL);
        s->listening = 0;
    }
    if (s->ctx_initialised && !uv_is_closing((uv_handle_t *)&s->shutdown_timer))
        uv_close((uv_handle_t *)&s->shutdown_timer, NULL);
    if (s->ctx_initialised) {
        h2o_timeout_dispose(s->loop, &s->req_timeout);
        h2o_context_dispose(&s->ctx);
    }
    h2o_config_dispose(&s->globalconf);
    if (s->cfg.ssl_ctx != NULL)
        SSL_CTX_free(s->cfg.ssl_ctx);
    crm_counter_vec_dispose(&s->requests);
    for (size_t i = 0; s->latency != NULL && i < s->nlatency; ++i)
        crm_histogram_dispose(&s->latency[i]);
    free(s->latency);
    free(s);
}
