#include "env.h"

#include "err.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Values quoted back in messages are cut to this many bytes so one long value cannot crowd out the advice. */
#define EXCERPT_MAX 40

static const char *getenv_adapter(void *ctx, const char *name)
{
    return getenv(name);
}

void crm_env_init(crm_env_t *e, crm_env_get_fn get, void *ctx)
{
    memset(e, 0, sizeof(*e));
    e->get = get != NULL ? get : getenv_adapter;
    e->ctx = get != NULL ? ctx : NULL;
}

/* Removes the most recent warning to make room for an error; 0 when every recorded problem is an error. */
static int evict_last_warning(crm_env_t *e)
{
    size_t i = e->nproblems;

    while (i > 0 && !e->problems[i - 1].warning)
        i--;
    if (i == 0)
        return 0;
    memmove(&e->problems[i - 1], &e->problems[i], (e->nproblems - i) * sizeof(e->problems[0]));
    e->nproblems--;
    return 1;
}

void crm_env_problem(crm_env_t *e, const char *var, int warning, const char *fmt, ...)
{
    crm_env_problem_t *p;
    va_list ap;
    int n;

    if (e->nproblems == CRM_ENV_MAX_PROBLEMS) {
        e->dropped++;
        if (warning || !evict_last_warning(e))
            return;
    }
    p = &e->problems[e->nproblems++];
    p->var = var;
    p->warning = warning != 0;
    va_start(ap, fmt);
    n = vsnprintf(p->message, sizeof(p->message), fmt, ap);
    va_end(ap);
    if (n < 0)
        snprintf(p->message, sizeof(p->message), "(message could not be formatted)");
    else if ((size_t)n >= sizeof(p->message))
        memcpy(p->message + sizeof(p->message) - 4, "...", 4);
}

const char *crm_env_str(crm_env_t *e, const char *var, const char *def)
{
    const char *v = e->get(e->ctx, var);

    return v != NULL && v[0] != '\0' ? v : def;
}

const char *crm_env_excerpt(char *buf, size_t cap, const char *s, size_t max)
{
    size_t lim = max < cap - 4 ? max : cap - 4;
    size_t i;

    if (s == NULL)
        s = "";
    for (i = 0; s[i] != '\0' && i < lim; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf[i] = ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\' ? (char)ch : '?';
    }
    if (s[i] != '\0')
        memcpy(buf + i, "...", 4);
    else
        buf[i] = '\0';
    return buf;
}

/* Strict decimal: optional '-', at least one digit, nothing after. Overflow is a failure, not a clamp. */
static int parse_int64(const char *s, int64_t *out)
{
    uint64_t limit = INT64_MAX, acc = 0;
    int neg = 0;

    if (*s == '-') {
        neg = 1;
        limit = (uint64_t)INT64_MAX + 1;
        s++;
    }
    if (*s < '0' || *s > '9')
        return -1;
    for (; *s != '\0'; s++) {
        unsigned d;
        if (*s < '0' || *s > '9')
            return -1;
        d = (unsigned)(*s - '0');
        if (acc > (limit - d) / 10)
            return -1;
        acc = acc * 10 + d;
    }
    if (!neg)
        *out = (int64_t)acc;
    else if (acc == (uint64_t)INT64_MAX + 1)
        *out = INT64_MIN;
    else
        *out = -(int64_t)acc;
    return 0;
}

int64_t crm_env_int(crm_env_t *e, const char *var, int64_t def, int64_t min, int64_t max)
{
    const char *v = crm_env_str(e, var, NULL);
    char got[EXCERPT_MAX + 4];
    int64_t n;

    if (v == NULL)
        return def;
    if (parse_int64(v, &n) == 0 && n >= min && n <= max)
        return n;
    crm_env_problem(e, var, 0, "must be an integer between %" PRId64 " and %" PRId64 " (got \"%s\")", min, max,
                    crm_env_excerpt(got, sizeof(got), v, EXCERPT_MAX));
    return def;
}

int crm_env_bool(crm_env_t *e, const char *var, int def)
{
    static const struct {
        const char *name;
        int value;
    } words[] = {{"1", 1}, {"0", 0}, {"true", 1}, {"false", 0}, {"yes", 1}, {"no", 0}, {"on", 1}, {"off", 0}};
    const char *v = crm_env_str(e, var, NULL);
    char got[EXCERPT_MAX + 4];
    size_t i;

    if (v == NULL)
        return def;
    for (i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        if (strcasecmp(v, words[i].name) == 0)
            return words[i].value;
    }
    crm_env_problem(e, var, 0, "must be a boolean: 1, 0, true, false, yes, no, on or off (got \"%s\")",
                    crm_env_excerpt(got, sizeof(got), v, EXCERPT_MAX));
    return def;
}

int crm_env_enum(crm_env_t *e, const char *var, const char *const *names, size_t n, int def)
{
    const char *v = crm_env_str(e, var, NULL);
    char got[EXCERPT_MAX + 4], list[160];
    size_t i, len = 0;

    if (v == NULL)
        return def;
    for (i = 0; i < n; i++) {
        if (strcasecmp(v, names[i]) == 0)
            return (int)i;
    }
    list[0] = '\0';
    for (i = 0; i < n && len < sizeof(list); i++) {
        int w = snprintf(list + len, sizeof(list) - len, "%s%s", i == 0 ? "" : ", ", names[i]);
        if (w < 0)
            break;
        len += (size_t)w;
    }
    crm_env_problem(e, var, 0, "must be one of %s (got \"%s\")", list,
                    crm_env_excerpt(got, sizeof(got), v, EXCERPT_MAX));
    return def;
}

/* RFC 1123 host name: dot-separated labels of 1..63 letters, digits and '-', no '-' at either end of a label. */
static int is_hostname(const char *s, size_t len)
{
    size_t i, label = 0;
    int last_all_digits = 1;

    if (len == 0 || len > 253)
        return 0;
    for (i = 0; i <= len; i++) {
        char ch = i < len ? s[i] : '.';
        if (ch == '.') {
            if (label == 0 || label > 63 || s[i - label] == '-' || s[i - 1] == '-')
                return 0;
            label = 0;
            continue;
        }
        if (label == 0)
            last_all_digits = 1;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-'))
            return 0;
        if (ch < '0' || ch > '9')
            last_all_digits = 0;
        label++;
    }
    /* An all-numeric last label means a malformed IPv4 literal such as "256.1.1.1" or "127.1", not a name. */
    return !last_all_digits;
}

/* Port 0 asks the kernel for a free port (crmd prints the one it got): tests and side-by-side instances use it. */
static int parse_port(const char *s, uint16_t *port)
{
    int64_t n;

    if (strlen(s) > 5 || s[0] == '-' || parse_int64(s, &n) != 0 || n < 0 || n > 65535)
        return -1;
    *port = (uint16_t)n;
    return 0;
}

/* Parses s into host/port; on failure returns -1 and sets *why to a static reason. */
static int parse_hostport(const char *s, char *host, size_t hostcap, uint16_t *port, const char **why)
{
    char addr[INET6_ADDRSTRLEN];
    const char *h, *colon;
    size_t hlen;

    if (strstr(s, "://") != NULL) {
        *why = "not a URL";
        return -1;
    }
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        struct in6_addr a6;
        if (close == NULL) {
            *why = "missing ']'";
            return -1;
        }
        h = s + 1;
        hlen = (size_t)(close - h);
        if (hlen >= sizeof(addr)) {
            *why = "invalid IPv6 address";
            return -1;
        }
        memcpy(addr, h, hlen);
        addr[hlen] = '\0';
        if (inet_pton(AF_INET6, addr, &a6) != 1) {
            *why = "invalid IPv6 address";
            return -1;
        }
        if (close[1] != ':') {
            *why = "missing port";
            return -1;
        }
        colon = close + 1;
    } else {
        struct in_addr a4;
        colon = strrchr(s, ':');
        if (colon == NULL) {
            *why = "missing port";
            return -1;
        }
        if (strchr(s, ':') != colon) {
            *why = "IPv6 addresses must be in brackets";
            return -1;
        }
        h = s;
        hlen = (size_t)(colon - s);
        if (hlen == 0) {
            *why = "missing host";
            return -1;
        }
        if (hlen < sizeof(addr)) {
            memcpy(addr, h, hlen);
            addr[hlen] = '\0';
        }
        if (!(hlen < sizeof(addr) && inet_pton(AF_INET, addr, &a4) == 1) && !is_hostname(h, hlen)) {
            *why = "invalid host";
            return -1;
        }
    }
    if (parse_port(colon + 1, port) != 0) {
        *why = "port must be 0..65535";
        return -1;
    }
    if (hlen >= hostcap) {
        *why = "host too long";
        return -1;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    return 0;
}

int crm_env_hostport(crm_env_t *e, const char *var, const char *def, char *host, size_t hostcap, uint16_t *port)
{
    const char *v = crm_env_str(e, var, NULL), *why = NULL;
    char got[EXCERPT_MAX + 4];

    host[0] = '\0';
    *port = 0;
    if (v == NULL) {
        if (def == NULL)
            return 0;
        v = def;
    }
    if (parse_hostport(v, host, hostcap, port, &why) == 0)
        return 0;
    crm_env_problem(e, var, 0, "must be host:port such as 127.0.0.1:8080 or [::1]:8080: %s (got \"%s\")", why,
                    crm_env_excerpt(got, sizeof(got), v, EXCERPT_MAX));
    host[0] = '\0';
    *port = 0;
    if (def != NULL && v != def && parse_hostport(def, host, hostcap, port, &why) != 0) {
        host[0] = '\0';
        *port = 0;
    }
    return CRM_E_CONFIG;
}

int crm_env_count_errors(const crm_env_t *e)
{
    int n = 0;
    size_t i;

    for (i = 0; i < e->nproblems; i++)
        n += !e->problems[i].warning;
    return n;
}

void crm_env_print_problems(const crm_env_t *e, FILE *out)
{
    size_t i;

    for (i = 0; i < e->nproblems; i++) {
        const crm_env_problem_t *p = &e->problems[i];
        fprintf(out, "%s%s%s%s\n", p->warning ? "warning: " : "", p->var != NULL ? p->var : "",
                p->var != NULL ? ": " : "", p->message);
    }
    if (e->dropped > 0)
        fprintf(out, "(%zu more problems not shown)\n", e->dropped);
}

int crm_secret_is_weak(const char *s, size_t min_len, const char **why)
{
    static const char *const placeholders[] = {"test",    "changeme", "change-me",   "secret", "password", "example",
                                               "default", "dummy",    "placeholder", "todo",   "xxx"};
    unsigned char seen[256] = {0};
    const char *reason = NULL;
    size_t i, distinct = 0;

    if (s == NULL) {
        reason = "not set";
        goto out;
    }
    if (strlen(s) < min_len) {
        reason = "too short";
        goto out;
    }
    for (i = 0; i < sizeof(placeholders) / sizeof(placeholders[0]); i++) {
        if (strcasestr(s, placeholders[i]) != NULL) {
            reason = "contains a placeholder word";
            goto out;
        }
    }
    for (i = 0; s[i] != '\0'; i++) {
        distinct += !seen[(unsigned char)s[i]];
        seen[(unsigned char)s[i]] = 1;
    }
    if (distinct < 10)
        reason = "too few distinct characters";
out:
    if (reason != NULL && why != NULL)
        *why = reason;
    return reason != NULL;
}

int crm_host_is_loopback(const char *host)
{
    char addr[INET6_ADDRSTRLEN];
    struct in6_addr a6;
    struct in_addr a4;
    size_t len;

    if (host == NULL || host[0] == '\0')
        return 0;
    if (host[0] == '/' || host[0] == '@')
        return 1;
    if (strcasecmp(host, "localhost") == 0 || strcasecmp(host, "localhost.") == 0)
        return 1;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    len = strlen(host);
    if (host[0] == '[' && len >= 2 && host[len - 1] == ']' && len - 2 < sizeof(addr)) {
        memcpy(addr, host + 1, len - 2);
        addr[len - 2] = '\0';
        host = addr;
    }
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return 0;
}
