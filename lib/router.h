/*
 * crmd HTTP router: maps (method, path) to a registered route.
 *
 * The router is a pure data structure. It performs no I/O, knows nothing about h2o beyond the h2o_iovec_t slice
 * type, and never allocates while matching, so the HTTP layer can call crm_router_match on every request.
 *
 * Patterns
 *   A pattern starts with '/' and is a sequence of segments separated by single '/'. The root pattern "/" has no
 *   segments. Every other segment is either
 *     - a literal made of RFC 3986 pchar characters other than '%', '{' and '}': ASCII letters, digits and
 *       - . _ ~ : @ ! $ & ' ( ) * + , ; =   (':' allows Google-style custom methods, "/v1/contacts:upsert"), or
 *     - exactly "{name}", a parameter matching one whole non-empty path segment, with name [a-z_][a-z0-9_]* and at
 *       most CRM_ROUTER_PARAM_NAME_MAX characters.
 *   crm_router_add rejects (returns NULL and sets a static message): a missing leading '/', empty segments ("//"
 *   or a trailing '/' other than the root "/"), any other character, a '{' or '}' that is not a whole "{name}"
 *   segment, a bad or duplicate parameter name, more than CRM_ROUTER_MAX_PARAMS parameters, more than
 *   CRM_ROUTER_MAX_SEGMENTS segments, a method already registered for the same path shape, a parameter whose name
 *   differs from the parameter another pattern already has at the same position (the routes share one trie node,
 *   so "/a/{id}" and "/a/{key}/b" cannot coexist), and more than CRM_ROUTER_MAX_ROUTES routes. A rejected call
 *   leaves the router unchanged.
 *
 * Matching
 *   The path is matched without its query string (the caller strips it) and exactly as received: no
 *   percent-decoding or normalisation happens before literals are compared, and a trailing '/' is significant.
 *   Segments are walked one at a time through a trie; a literal child is preferred over the parameter child, and
 *   when the literal branch leads to no node with routes the walk backtracks and tries the parameter, so
 *   "/v1/contacts/bulk" and "/v1/contacts/{id}" coexist. The path is resolved first and the method second: the first
 *   node with routes in that order decides the answer, even when it lacks the method and a parameter route would
 *   have it (GET /v1/contacts/bulk is 405 when only POST is registered there), so the Allow header always describes
 *   one resource. Each trie node is visited at most once per match, so the cost is bounded by the size of the
 *   trie and is O(path length) for ordinary route sets; recursion depth is bounded by CRM_ROUTER_MAX_SEGMENTS.
 *   The match never reads path[len] or beyond.
 *
 * Thread-safety: building (init, add, dispose) is single-threaded. Once the last route is added the router is
 * read-only and crm_router_match, crm_router_count and crm_router_route may run concurrently from any thread.
 */
#ifndef CRM_ROUTER_H
#define CRM_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include <h2o/memory.h>

#define CRM_ROUTER_MAX_PARAMS     8
#define CRM_ROUTER_MAX_ROUTES     1024
#define CRM_ROUTER_MAX_SEGMENTS   32
#define CRM_ROUTER_PARAM_NAME_MAX 32
/* A buffer of this size always holds the longest Allow value crm_router_format_allow can produce, plus its NUL. */
#define CRM_ROUTER_ALLOW_MAX 64

typedef enum {
    CRM_HTTP_GET = 0,
    CRM_HTTP_HEAD,
    CRM_HTTP_POST,
    CRM_HTTP_PUT,
    CRM_HTTP_PATCH,
    CRM_HTTP_DELETE,
    CRM_HTTP_OPTIONS,
    CRM_HTTP_METHOD_COUNT
} crm_http_method_t;

/* The method named by the len bytes at s, compared exactly and case-sensitively (RFC 9110 §9.1), or -1 for any
 * other token, including TRACE, CONNECT and "get". s need not be NUL-terminated. */
int crm_http_method_parse(const char *s, size_t len);

/* The canonical upper-case name of m ("GET"), a static string; NULL when m is not a valid method. */
const char *crm_http_method_name(crm_http_method_t m);

struct st_crm_http_req_t; /* defined by the HTTP layer */
typedef void (*crm_http_handler_fn)(struct st_crm_http_req_t *req);

typedef struct st_crm_route_t {
    /* The pattern as registered, e.g. "/v1/contacts/{id}"; a copy owned by the router. It is the low-cardinality
     * label for metrics and logs, never the concrete path. */
    const char *pattern;
    crm_http_method_t method;
    crm_http_handler_fn handler;
    void *data; /* opaque to the router, for the handler */
    /* Request body limit in bytes; 0 means the server default. The router never reads it: the caller sets it
     * after crm_router_add returns. */
    size_t max_body_bytes;
    /* Dense 0..n-1 in registration order, so per-route metric arrays can be indexed by it. */
    uint32_t id;
    size_t nparams;
    /* Parameter names in path order, NUL-terminated copies owned by the router; they correspond one-to-one with
     * crm_route_match_t.params. */
    const char *param_names[CRM_ROUTER_MAX_PARAMS];
} crm_route_t;

typedef struct st_crm_route_match_t {
    /* The route to run; set only for CRM_ROUTE_FOUND, NULL otherwise. */
    const crm_route_t *route;
    /* Parameter values of the matched node in path order, for FOUND and METHOD_NOT_ALLOWED; zero for NOT_FOUND.
     * They are raw slices into the caller's path, still percent-encoded (decode with crm_percent_decode) and
     * valid as long as the path is. */
    size_t nparams;
    h2o_iovec_t params[CRM_ROUTER_MAX_PARAMS];
    /* Bit (1u << method) for every method the matched node answers: the registered ones, HEAD when GET is
     * registered, and OPTIONS always. Set for FOUND and METHOD_NOT_ALLOWED; zero for NOT_FOUND. */
    unsigned allowed;
} crm_route_match_t;

typedef enum { CRM_ROUTE_FOUND = 0, CRM_ROUTE_NOT_FOUND, CRM_ROUTE_METHOD_NOT_ALLOWED } crm_route_result_t;

struct st_crm_router_node_t;

typedef struct st_crm_router_t {
    struct st_crm_router_node_t *_root;
    /* Fixed capacity CRM_ROUTER_MAX_ROUTES, allocated at init; indexed by route id. Routes are allocated one by
     * one so the pointers crm_router_add returns stay valid until dispose. */
    crm_route_t **_routes;
    size_t _nroutes;
} crm_router_t;

/* Initialises an empty router. Returns 0 or CRM_E_NOMEM (r is then safe to pass to crm_router_dispose). */
int crm_router_init(crm_router_t *r);

/* Frees every node, route, pattern and name; route pointers and match results become invalid. Accepts NULL and a
 * router whose init failed or that was already disposed. */
void crm_router_dispose(crm_router_t *r);

/* Registers handler h with opaque data for method m on pattern (copied; see the pattern rules above). Returns the
 * new route, owned by the router and valid until dispose; the caller may set its max_body_bytes. On failure
 * returns NULL and, when errmsg is not NULL, sets *errmsg to a static description ("out of memory" when an
 * allocation failed, otherwise what is wrong with the arguments); on success *errmsg is set to NULL. */
crm_route_t *crm_router_add(crm_router_t *r, crm_http_method_t m, const char *pattern, crm_http_handler_fn h,
                            void *data, const char **errmsg);

/* Matches method m and the len bytes at path (no query string, not NUL-terminated) and fills *out as described
 * on crm_route_match_t:
 *   - CRM_ROUTE_FOUND: a route is registered for m at the matched node; HEAD without an explicit HEAD route is
 *     served by the GET route (out->route is then the GET route and the HTTP layer omits the body).
 *   - CRM_ROUTE_METHOD_NOT_ALLOWED: the path matched a node with routes but none for m. OPTIONS without an
 *     explicit route lands here too, and the HTTP layer answers it itself with 204 and the Allow header.
 *   - CRM_ROUTE_NOT_FOUND: no node with routes matches, including for an empty path, a path not starting with
 *     '/', any empty segment and a trailing '/' the pattern does not have.
 * Never allocates. */
crm_route_result_t crm_router_match(const crm_router_t *r, crm_http_method_t m, const char *path, size_t len,
                                    crm_route_match_t *out);

/* Writes the Allow header value for the bitmask allowed ("GET, HEAD, POST, OPTIONS", in enum order; bits beyond
 * the known methods are ignored) into buf and NUL-terminates it. When cap is too small the value is cut after the
 * last whole method name that fits, never inside one. Returns the number of bytes written before the NUL; 0 when
 * cap is 0 (nothing is written then). CRM_ROUTER_ALLOW_MAX bytes always suffice. */
size_t crm_router_format_allow(unsigned allowed, char *buf, size_t cap);

/* The number of registered routes; their ids are 0..count-1. */
size_t crm_router_count(const crm_router_t *r);

/* The route with the given id, or NULL when id >= crm_router_count(r). For enumeration, e.g. to check every route
 * against protocols/openapi.yaml. */
const crm_route_t *crm_router_route(const crm_router_t *r, uint32_t id);

/* Percent-decodes the len bytes at in (RFC 3986 §2.1, hex digits in either case) into out, which must have room
 * for len bytes and may be the same buffer as in (decoding never grows). '+' is left as is: this is for path
 * segments, not form bodies. An encoded '/' (%2F) is decoded like any other byte, which is how a parameter value
 * carries a slash. Returns 0 and sets *outlen, or CRM_E_PARSE (with *outlen set to 0) on a '%' not followed by two
 * hex digits, and on a NUL byte, encoded (%00) or raw, because decoded values travel as C strings. */
int crm_percent_decode(const char *in, size_t len, char *out, size_t *outlen);

#endif
