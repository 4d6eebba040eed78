#include "router.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

typedef struct st_crm_router_node_t node_t;

/* A literal child. The key points at the child's own copy of its segment, so the sorted array can be searched
 * without dereferencing every child. */
typedef struct {
    const char *seg;
    size_t len;
    node_t *child;
} lit_t;

/*
 * One trie node per distinct path prefix. Literal children are kept sorted by (length, bytes) for binary search;
 * ordering by length first settles most comparisons without touching the bytes. The array grows by doubling and is
 * bounded because one crm_router_add creates at most one new child of an existing node, so no node ever has more
 * than CRM_ROUTER_MAX_ROUTES children.
 */
struct st_crm_router_node_t {
    lit_t *lits;
    size_t nlits;
    size_t caplits;
    node_t *param;
    const crm_route_t *routes[CRM_HTTP_METHOD_COUNT];
    unsigned methods; /* bit (1u << m) for every non-NULL routes[m]; non-zero makes the node a match target */
    size_t namelen;
    char name[]; /* literal segment, or the parameter name of a parameter node; empty for the root */
};

/* A pattern segment as parsed; for a parameter, p and len describe the name without the braces. */
typedef struct {
    const char *p;
    size_t len;
    int is_param;
} seg_t;

static const struct {
    const char *name;
    size_t len;
} method_table[CRM_HTTP_METHOD_COUNT] = {
    [CRM_HTTP_GET] = {"GET", 3},         [CRM_HTTP_HEAD] = {"HEAD", 4},   [CRM_HTTP_POST] = {"POST", 4},
    [CRM_HTTP_PUT] = {"PUT", 3},         [CRM_HTTP_PATCH] = {"PATCH", 5}, [CRM_HTTP_DELETE] = {"DELETE", 6},
    [CRM_HTTP_OPTIONS] = {"OPTIONS", 7},
};

int crm_http_method_parse(const char *s, size_t len)
{
    for (int m = 0; m < CRM_HTTP_METHOD_COUNT; ++m)
        if (method_table[m].len == len && memcmp(method_table[m].name, s, len) == 0)
            return m;
    return -1;
}

const char *crm_http_method_name(crm_http_method_t m)
{
    return (unsigned)m < CRM_HTTP_METHOD_COUNT ? method_table[m].name : NULL;
}

/* Explicit ASCII ranges rather than <ctype.h>, whose answers depend on the locale. */
static int is_lower_or_underscore(char c)
{
    return (c >= 'a' && c <= 'z') || c == '_';
}

static int is_literal_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("-._~:@!$&'()*+,;=", c) != NULL);
}

static const char *parse_param(const char *name, size_t len, const seg_t *segs, size_t nsegs, size_t nparams)
{
    if (len == 0 || len > CRM_ROUTER_PARAM_NAME_MAX || !is_lower_or_underscore(name[0]))
        return "invalid parameter name";
    for (size_t i = 1; i < len; ++i)
        if (!is_lower_or_underscore(name[i]) && !(name[i] >= '0' && name[i] <= '9'))
            return "invalid parameter name";
    if (nparams == CRM_ROUTER_MAX_PARAMS)
        return "too many parameters";
    for (size_t i = 0; i < nsegs; ++i)
        if (segs[i].is_param && segs[i].len == len && memcmp(segs[i].p, name, len) == 0)
            return "duplicate parameter name";
    return NULL;
}

/* Splits pattern into segs (room for CRM_ROUTER_MAX_SEGMENTS). Returns NULL or a static message. */
static const char *parse_pattern(const char *pattern, seg_t *segs, size_t *nsegs_out, size_t *nparams_out)
{
    size_t nsegs = 0, nparams = 0;
    const char *p = pattern, *msg;

    if (*p != '/')
        return "pattern must start with '/'";
    /* The root "/" is the only pattern whose single '/' is not followed by a segment. */
    if (p[1] != '\0') {
        while (*p == '/') {
            const char *s = p + 1, *e = s;
            while (*e != '\0' && *e != '/')
                ++e;
            if (e == s)
                return "empty path segment";
            if (nsegs == CRM_ROUTER_MAX_SEGMENTS)
                return "too many segments";
            if (*s == '{' && e - s >= 2 && e[-1] == '}') {
                if ((msg = parse_param(s + 1, (size_t)(e - s) - 2, segs, nsegs, nparams)) != NULL)
                    return msg;
                segs[nsegs++] = (seg_t){s + 1, (size_t)(e - s) - 2, 1};
                ++nparams;
            } else {
                for (const char *c = s; c != e; ++c) {
                    if (*c == '{' || *c == '}')
                        return "a parameter must be a whole segment of the form {name}";
                    if (!is_literal_char(*c))
                        return "invalid character in pattern";
                }
                segs[nsegs++] = (seg_t){s, (size_t)(e - s), 0};
            }
            p = e;
        }
    }
    *nsegs_out = nsegs;
    *nparams_out = nparams;
    return NULL;
}

static int cmp_seg(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return alen < blen ? -1 : 1;
    return memcmp(a, b, alen);
}

/* The literal child of n named by seg, or NULL; *pos receives the index where it is or would be inserted. */
static node_t *find_lit(const node_t *n, const char *seg, size_t len, size_t *pos)
{
    size_t lo = 0, hi = n->nlits;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_seg(n->lits[mid].seg, n->lits[mid].len, seg, len);
        if (c == 0) {
            *pos = mid;
            return n->lits[mid].child;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *pos = lo;
    return NULL;
}

/* Makes room for one more literal child so that the later insert_lit cannot fail. */
static int reserve_lit(node_t *n)
{
    if (n->nlits < n->caplits)
        return 0;
    size_t cap = n->caplits != 0 ? n->caplits * 2 : 2;
    lit_t *lits = realloc(n->lits, cap * sizeof(*lits));
    if (lits == NULL)
        return CRM_E_NOMEM;
    n->lits = lits;
    n->caplits = cap;
    return 0;
}

static void insert_lit(node_t *n, size_t pos, node_t *child)
{
    memmove(n->lits + pos + 1, n->lits + pos, (n->nlits - pos) * sizeof(*n->lits));
    n->lits[pos] = (lit_t){child->name, child->namelen, child};
    ++n->nlits;
}

static node_t *new_node(const char *name, size_t len)
{
    node_t *n = calloc(1, sizeof(*n) + len + 1);
    if (n == NULL)
        return NULL;
    memcpy(n->name, name, len);
    n->namelen = len;
    return n;
}

/* Recursion depth is bounded by CRM_ROUTER_MAX_SEGMENTS. */
static void free_tree(node_t *n)
{
    if (n == NULL)
        return;
    for (size_t i = 0; i < n->nlits; ++i)
        free_tree(n->lits[i].child);
    free(n->lits);
    free_tree(n->param);
    free(n);
}

/* Builds the detached chain of new nodes for segs[0..n-1], deepest first, so that a failed allocation leaves the
 * trie untouched. Returns its head and sets *tail to its deepest node, or returns NULL with nothing allocated. */
static node_t *build_chain(const seg_t *segs, size_t n, node_t **tail)
{
    node_t *head = NULL;

    for (size_t j = n; j-- > 0;) {
        node_t *node = new_node(segs[j].p, segs[j].len);
        if (node == NULL)
            goto error;
        if (head == NULL) {
            *tail = node;
        } else if (segs[j + 1].is_param) {
            node->param = head;
        } else {
            if (reserve_lit(node) != 0) {
                free(node);
                goto error;
            }
            insert_lit(node, 0, head);
        }
        head = node;
    }
    return head;

error:
    free_tree(head);
    return NULL;
}

/* Allocates the route with its pattern and parameter names in one block, so the route frees with one free(). */
static crm_route_t *new_route(crm_http_method_t m, const char *pattern, const seg_t *segs, size_t nsegs,
                              crm_http_handler_fn h, void *data)
{
    size_t patlen = strlen(pattern), size = sizeof(crm_route_t) + patlen + 1;
    for (size_t i = 0; i < nsegs; ++i)
        if (segs[i].is_param)
            size += segs[i].len + 1;

    crm_route_t *route = calloc(1, size);
    if (route == NULL)
        return NULL;
    char *p = (char *)(route + 1);
    memcpy(p, pattern, patlen + 1);
    route->pattern = p;
    p += patlen + 1;
    for (size_t i = 0; i < nsegs; ++i) {
        if (!segs[i].is_param)
            continue;
        memcpy(p, segs[i].p, segs[i].len);
        p[segs[i].len] = '\0';
        route->param_names[route->nparams++] = p;
        p += segs[i].len + 1;
    }
    route->method = m;
    route->handler = h;
    route->data = data;
    return route;
}

int crm_router_init(crm_router_t *r)
{
    memset(r, 0, sizeof(*r));
    if ((r->_root = new_node("", 0)) == NULL ||
        (r->_routes = calloc(CRM_ROUTER_MAX_ROUTES, sizeof(*r->_routes))) == NULL)
        goto error;
    return 0;

error:
    crm_router_dispose(r);
    return CRM_E_NOMEM;
}

void crm_router_dispose(crm_router_t *r)
{
    if (r == NULL)
        return;
    free_tree(r->_root);
    for (size_t i = 0; i < r->_nroutes; ++i)
        free(r->_routes[i]);
    free(r->_routes);
    memset(r, 0, sizeof(*r));
}

crm_route_t *crm_router_add(crm_router_t *r, crm_http_method_t m, const char *pattern, crm_http_handler_fn h,
                            void *data, const char **errmsg)
{
    seg_t segs[CRM_ROUTER_MAX_SEGMENTS];
    size_t nsegs = 0, nparams = 0, i, pos = 0;
    const char *msg;
    crm_route_t *route = NULL;
    node_t *n, *chain = NULL, *tail = NULL;

    if (pattern == NULL || h == NULL || (unsigned)m >= CRM_HTTP_METHOD_COUNT) {
        msg = "invalid argument";
        goto error;
    }
    if ((msg = parse_pattern(pattern, segs, &nsegs, &nparams)) != NULL)
        goto error;

    /* Follow the existing nodes as far as the pattern goes, checking the parameter names on the way. Every
     * check happens before the first change, so a rejected pattern leaves the router as it was. */
    n = r->_root;
    for (i = 0; i < nsegs; ++i) {
        node_t *next;
        if (segs[i].is_param) {
            if ((next = n->param) == NULL)
                break;
            if (cmp_seg(next->name, next->namelen, segs[i].p, segs[i].len) != 0) {
                msg = "conflicting parameter name at the same position";
                goto error;
            }
        } else if ((next = find_lit(n, segs[i].p, segs[i].len, &pos)) == NULL) {
            break;
        }
        n = next;
    }
    if (i == nsegs && n->routes[m] != NULL) {
        msg = "route already registered for this method and path";
        goto error;
    }
    if (r->_nroutes == CRM_ROUTER_MAX_ROUTES) {
        msg = "too many routes";
        goto error;
    }

    if (i < nsegs && !segs[i].is_param && reserve_lit(n) != 0)
        goto nomem;
    if ((route = new_route(m, pattern, segs, nsegs, h, data)) == NULL)
        goto nomem;
    if (i < nsegs) {
        if ((chain = build_chain(segs + i, nsegs - i, &tail)) == NULL)
            goto nomem;
        /* pos still holds the insertion point from the failed lookup of segs[i]. */
        if (segs[i].is_param)
            n->param = chain;
        else
            insert_lit(n, pos, chain);
    } else {
        tail = n;
    }
    tail->routes[m] = route;
    tail->methods |= 1u << m;
    route->id = (uint32_t)r->_nroutes;
    r->_routes[r->_nroutes++] = route;
    if (errmsg != NULL)
        *errmsg = NULL;
    return route;

nomem:
    msg = "out of memory";
error:
    free(route);
    if (errmsg != NULL)
        *errmsg = msg;
    return NULL;
}

/*
 * Matches the rest of the path below n. rest is either end or points at the '/' that starts the next segment.
 * Returns the first node with routes in literal-before-parameter order, or NULL with out->nparams restored. A node
 * is reached only through its parent and always at the same depth, so it is visited at most once per match.
 */
static const node_t *descend(const node_t *n, const char *rest, const char *end, crm_route_match_t *out)
{
    if (rest == end)
        return n->methods != 0 ? n : NULL;

    const char *seg = rest + 1;
    const char *slash = memchr(seg, '/', (size_t)(end - seg));
    const char *segend = slash != NULL ? slash : end;
    size_t seglen = (size_t)(segend - seg), pos;
    const node_t *child, *found;

    if (seglen == 0)
        return NULL;
    if ((child = find_lit(n, seg, seglen, &pos)) != NULL && (found = descend(child, segend, end, out)) != NULL)
        return found;
    if (n->param != NULL) {
        /* A path in the trie holds at most CRM_ROUTER_MAX_PARAMS parameter nodes, because every node was created
         * for a pattern that passed that limit. */
        assert(out->nparams < CRM_ROUTER_MAX_PARAMS);
        /* h2o_iovec_t has no const variant; the slice is only ever read. */
        out->params[out->nparams++] = (h2o_iovec_t){(char *)seg, seglen};
        if ((found = descend(n->param, segend, end, out)) != NULL)
            return found;
        --out->nparams;
    }
    return NULL;
}

crm_route_result_t crm_router_match(const crm_router_t *r, crm_http_method_t m, const char *path, size_t len,
                                    crm_route_match_t *out)
{
    const node_t *n = NULL;

    out->route = NULL;
    out->nparams = 0;
    out->allowed = 0;
    if (len == 1 && path[0] == '/')
        n = r->_root->methods != 0 ? r->_root : NULL;
    else if (len > 1 && path[0] == '/')
        n = descend(r->_root, path, path + len, out);
    if (n == NULL)
        return CRM_ROUTE_NOT_FOUND;

    out->allowed = n->methods | (1u << CRM_HTTP_OPTIONS);
    if (n->routes[CRM_HTTP_GET] != NULL)
        out->allowed |= 1u << CRM_HTTP_HEAD;
    if ((unsigned)m < CRM_HTTP_METHOD_COUNT && n->routes[m] != NULL) {
        out->route = n->routes[m];
        return CRM_ROUTE_FOUND;
    }
    if (m == CRM_HTTP_HEAD && n->routes[CRM_HTTP_GET] != NULL) {
        out->route = n->routes[CRM_HTTP_GET];
        return CRM_ROUTE_FOUND;
    }
    return CRM_ROUTE_METHOD_NOT_ALLOWED;
}

size_t crm_router_format_allow(unsigned allowed, char *buf, size_t cap)
{
    size_t len = 0;

    if (cap == 0)
        return 0;
    for (int m = 0; m < CRM_HTTP_METHOD_COUNT; ++m) {
        if ((allowed & (1u << m)) == 0)
            continue;
        size_t sep = len != 0 ? 2 : 0;
        /* Stop at the first name that does not fit, so a short buffer yields a prefix of the full value. */
        if (len + sep + method_table[m].len >= cap)
            break;
        memcpy(buf + len, ", ", sep);
        memcpy(buf + len + sep, method_table[m].name, method_table[m].len);
        len += sep + method_table[m].len;
    }
    buf[len] = '\0';
    return len;
}

size_t crm_router_count(const crm_router_t *r)
{
    return r->_nroutes;
}

const crm_route_t *crm_router_route(const crm_router_t *r, uint32_t id)
{
    return id < r->_nroutes ? r->_routes[id] : NULL;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int crm_percent_decode(const char *in, size_t len, char *out, size_t *outlen)
{
    size_t i = 0, o = 0;

    /* o never passes i, and in[i..i+2] is read before out[o] is written, so in and out may be the same buffer. */
    while (i < len) {
        char c = in[i];
        if (c == '%') {
            int hi, lo;
            if (len - i < 3 || (hi = hex_value(in[i + 1])) < 0 || (lo = hex_value(in[i + 2])) < 0)
                goto error;
            c = (char)(hi << 4 | lo);
            i += 3;
        } else {
            ++i;
        }
        if (c == '\0')
            goto error;
        out[o++] = c;
    }
    *outlen = o;
    return 0;

error:
    *outlen = 0;
    return CRM_E_PARSE;
}
