/*
 * The shared machinery of app/auth (see auth.h): set-up from the configuration, client addresses behind trusted
 * proxies, rate limiting, access-token checks with the principal cache, and token helpers.
 */
#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "auth/auth.h"
#include "crypto.h"
#include "err.h"
#include "http_pg.h"
#include "log.h"
#include "mailer/mailer.h"
#include "mail/address.h"
#include "rand.h"

/* Principal cache: direct-mapped, fixed size. A collision only costs a database read. */
#define CRM_AUTH_CACHE_SLOTS 4096
/* Keys tracked per rate-limit class. */
#define CRM_AUTH_LIMIT_KEYS 65536

struct st_crm_auth_cache_entry_t {
    char key[74]; /* "user_id/tenant_id", "" when empty */
    uint64_t loaded_ms;
    int valid; /* a membership exists and both it and the account are active */
    double tokens_valid_after;
    char role[33];
    char permissions[512];
};

/* ---- set-up ---- */

static int parse_net(const char *s, size_t len, crm_auth_net_t *out)
{
    char buf[64];
    if (len == 0 || len >= sizeof(buf))
        return CRM_E_INVAL;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *slash = strchr(buf, '/');
    long prefix = -1;
    if (slash != NULL) {
        char *end;
        *slash = '\0';
        prefix = strtol(slash + 1, &end, 10);
        if (slash[1] == '\0' || *end != '\0')
            return CRM_E_INVAL;
    }
    struct in_addr v4;
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, buf, &v4) == 1) {
        out->addr[10] = out->addr[11] = 0xff;
        memcpy(out->addr + 12, &v4, 4);
        if (prefix > 32)
            return CRM_E_INVAL;
        out->prefix = (unsigned)(prefix < 0 ? 128 : 96 + prefix);
        return 0;
    }
    if (inet_pton(AF_INET6, buf, out->addr) == 1 && prefix <= 128) {
        out->prefix = (unsigned)(prefix < 0 ? 128 : prefix);
        return 0;
    }
    return CRM_E_INVAL;
}

int crm_auth_parse_proxies(const char *spec, crm_auth_net_t **out, size_t *count)
{
    *out = NULL;
    *count = 0;
    if (spec == NULL || *spec == '\0')
        return 0;
    size_t n = 1;
    for (const char *p = spec; *p; ++p)
        n += *p == ',';
    crm_auth_net_t *nets = calloc(n, sizeof(*nets));
    if (nets == NULL)
        return CRM_E_NOMEM;
    size_t i = 0;
    for (const char *p = spec;;) {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        if (parse_net(p, len, &nets[i++]) != 0) {
            free(nets);
            return CRM_E_INVAL;
        }
        if (end == NULL)
            break;
        p = end + 1;
    }
    *out = nets;
    *count = i;
    return 0;
}

static int init_limit(crm_ratelimit_t *rl, int per_min)
{
    crm_ratelimit_config_t c = {
        .rate = (uint64_t)per_min,
        .period_ms = 60000,
        .burst = (uint64_t)per_min,
        .max_keys = CRM_AUTH_LIMIT_KEYS,
        .evict_scan = CRM_RATELIMIT_DEFAULT_EVICT_SCAN,
    };
    return crm_ratelimit_init(rl, &c);
}

int crm_auth_init(crm_app_t *app)
{
    const crm_config_t *cfg = app->config;
    crm_auth_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return CRM_E_NOMEM;
    app->auth = a;
    a->app = app;
    char why[160];
    int err = crm_jwt_keys_parse(cfg->jwt_keys, &a->keys, why, sizeof(why));
    if (err != 0) {
        crm_log(CRM_LOG_ERROR, "startup.jwt_keys", CRM_LOG_STR("error", why));
        return err;
    }
    /* The rotation key is derived from the signing key, so that every process sharing CRMD_JWT_KEYS derives the
     * same child for a retried refresh token; a separate label keeps it from ever equalling a signing key. */
    const crm_jwt_key_t *k = &a->keys._keys[0];
    unsigned len = 0;
    static const char label[] = "crmd refresh-token rotation v1";
    if (HMAC(EVP_sha256(), k->key, (int)k->key_len, (const unsigned char *)label, sizeof(label) - 1, a->refresh_key,
             &len) == NULL)
        return CRM_E_IO;
    crm_password_params_t params;
    crm_password_params_default(&params);
    if ((err = crm_password_policy_init()) != 0 ||
        (err = crm_password_hasher_create(app->loop, &params, (size_t)cfg->password_max_in_flight, &a->hasher)) != 0 ||
        (err = init_limit(&a->limits[CRM_AUTH_LIMIT_AUTH], cfg->ratelimit_auth_per_min)) != 0 ||
        (err = init_limit(&a->limits[CRM_AUTH_LIMIT_API], cfg->ratelimit_api_per_min)) != 0 ||
        (err = crm_auth_parse_proxies(cfg->trusted_proxies, &a->proxies, &a->nproxies)) != 0)
        return err;
    if ((a->cache = calloc(CRM_AUTH_CACHE_SLOTS, sizeof(*a->cache))) == NULL)
        return CRM_E_NOMEM;
    if ((err = crm_auth_users_prepare(a, app->pool)) != 0 || (err = crm_auth_login_prepare(a, app->pool)) != 0 ||
        (err = crm_auth_account_prepare(a, app->pool)) != 0)
        return err;
    crm_log(CRM_LOG_INFO, "startup.auth", CRM_LOG_STR("signing_kid", crm_jwt_keyring_kid(&a->keys, 0)),
            CRM_LOG_UINT("verifying_keys", a->keys.count), CRM_LOG_UINT("trusted_proxies", a->nproxies));
    return 0;
}

void crm_auth_free(crm_app_t *app)
{
    crm_auth_t *a = app->auth;
    if (a == NULL)
        return;
    crm_password_hasher_free(a->hasher);
    crm_jwt_keyring_free(&a->keys);
    OPENSSL_cleanse(a->refresh_key, sizeof(a->refresh_key));
    for (int i = 0; i < CRM_AUTH_LIMIT_COUNT; ++i)
        crm_ratelimit_dispose(&a->limits[i]);
    free(a->proxies);
    free(a->cache);
    free(a);
    app->auth = NULL;
}

int crm_auth_prepare_all(crm_pg_pool_t *pool, const crm_auth_stmt_def_t *defs, size_t n)
{
    for (size_t i = 0; i < n; ++i) {
        int err = crm_pg_pool_prepare(pool, defs[i].name, defs[i].sql, defs[i].nparams, defs[i].out);
        if (err != 0)
            return err;
    }
    return 0;
}

int crm_auth_add_routes(crm_app_t *app, const crm_auth_route_t *routes, size_t n)
{
    for (size_t i = 0; i < n; ++i) {
        const char *why;
        crm_route_t *rt = crm_router_add(&app->router, routes[i].method, routes[i].pattern, routes[i].fn, app, &why);
        if (rt == NULL) {
            crm_log(CRM_LOG_ERROR, "startup.route_failed", CRM_LOG_STR("pattern", routes[i].pattern),
                    CRM_LOG_STR("error", why));
            return CRM_E_NOMEM;
        }
        rt->max_body_bytes = CRM_AUTH_MAX_BODY;
    }
    return 0;
}

int crm_auth_routes(crm_app_t *app)
{
    int err = crm_auth_login_routes(app);
    if (err == 0)
        err = crm_auth_account_routes(app);
    if (err == 0)
        err = crm_auth_users_routes(app);
    return err;
}

static void collect(void *ctx, crm_prom_t *w)
{
    const crm_auth_t *a = ctx;
    static const char *const limit_classes[CRM_AUTH_LIMIT_COUNT] = {"auth", "api"};
    crm_prom_family(w, "crmd_auth_logins_total", "counter", "Completed logins by outcome.");
    const struct {
        const char *outcome;
        uint64_t n;
    } logins[] = {{"ok", a->stats.logins_ok},
                  {"invalid", a->stats.logins_invalid},
                  {"unverified", a->stats.logins_unverified}},
      refreshes[] = {{"ok", a->stats.refresh_ok},
                     {"grace", a->stats.refresh_grace},
                     {"reuse", a->stats.refresh_reuse},
                     {"invalid", a->stats.refresh_invalid}};
    for (size_t i = 0; i < sizeof(logins) / sizeof(logins[0]); ++i)
        crm_prom_sample_u64(w, "crmd_auth_logins_total", &(crm_label_t){"outcome", logins[i].outcome}, 1, logins[i].n);
    crm_prom_family(w, "crmd_auth_refreshes_total", "counter",
                    "Refresh-token presentations by outcome (reuse revokes the whole session).");
    for (size_t i = 0; i < sizeof(refreshes) / sizeof(refreshes[0]); ++i)
        crm_prom_sample_u64(w, "crmd_auth_refreshes_total", &(crm_label_t){"outcome", refreshes[i].outcome}, 1,
                            refreshes[i].n);
    crm_prom_family(w, "crmd_auth_rate_limited_total", "counter", "Requests answered 429, by limit class.");
    for (int i = 0; i < CRM_AUTH_LIMIT_COUNT; ++i)
        crm_prom_sample_u64(w, "crmd_auth_rate_limited_total", &(crm_label_t){"class", limit_classes[i]}, 1,
                            a->stats.limited[i]);
    crm_prom_family(w, "crmd_auth_principal_cache_total", "counter",
                    "Access checks answered from the principal cache (hit) or the database (miss).");
    crm_prom_sample_u64(w, "crmd_auth_principal_cache_total", &(crm_label_t){"result", "hit"}, 1, a->stats.cache_hits);
    crm_prom_sample_u64(w, "crmd_auth_principal_cache_total", &(crm_label_t){"result", "miss"}, 1,
                        a->stats.cache_misses);
    crm_prom_family(w, "crmd_auth_password_in_flight", "gauge", "argon2id operations queued or running.");
    crm_prom_sample_u64(w, "crmd_auth_password_in_flight", NULL, 0, crm_password_in_flight(a->hasher));
    crm_prom_family(w, "crmd_auth_password_shed_total", "counter",
                    "Requests answered 503 because CRMD_PASSWORD_MAX_IN_FLIGHT operations were already in flight.");
    crm_prom_sample_u64(w, "crmd_auth_password_shed_total", NULL, 0, a->stats.password_shed);
}

int crm_auth_register_metrics(crm_auth_t *a, crm_metrics_t *m)
{
    return crm_metrics_register(m, collect, a);
}

/* ---- client address ---- */

/* The address as 16 bytes (IPv4 mapped). */
static int addr_bytes(const char *ip, size_t len, uint8_t out[16])
{
    char buf[64];
    struct in_addr v4;
    if (len == 0 || len >= sizeof(buf))
        return 0;
    memcpy(buf, ip, len);
    buf[len] = '\0';
    memset(out, 0, 16);
    if (inet_pton(AF_INET, buf, &v4) == 1) {
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &v4, 4);
        return 1;
    }
    return inet_pton(AF_INET6, buf, out) == 1;
}

static int is_trusted(const crm_auth_t *a, const uint8_t addr[16])
{
    for (size_t i = 0; i < a->nproxies; ++i) {
        unsigned bits = a->proxies[i].prefix, full = bits / 8, rest = bits % 8;
        if (memcmp(addr, a->proxies[i].addr, full) != 0)
            continue;
        if (rest == 0 || ((addr[full] ^ a->proxies[i].addr[full]) & (0xff << (8 - rest))) == 0)
            return 1;
    }
    return 0;
}

/* xff_walk's answer when every hop of its line is a trusted proxy and earlier lines remain. */
static const char xff_continue[1];
#define XFF_CONTINUE xff_continue

/* Walks one X-Forwarded-For line from its right end. Returns buf holding the first hop that is not a trusted
 * proxy (or the leftmost hop of the first line when all are trusted), NULL when a hop is malformed (believe
 * nothing beyond the peer), or XFF_CONTINUE to go on with the line before. */
static const char *xff_walk(const crm_auth_t *a, const char *xff, size_t len, int first_line, char *buf, size_t cap)
{
    uint8_t bytes[16];
    size_t end = len;
    for (;;) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',')
            --start;
        size_t s = start, e = end;
        while (s < e && (xff[s] == ' ' || xff[s] == '\t'))
            ++s;
        while (e > s && (xff[e - 1] == ' ' || xff[e - 1] == '\t'))
            --e;
        if (!addr_bytes(xff + s, e - s, bytes) || e - s >= cap)
            return NULL;
        if (!is_trusted(a, bytes) || (start == 0 && first_line)) {
            memcpy(buf, xff + s, e - s);
            buf[e - s] = '\0';
            return buf;
        }
        if (start == 0)
            return XFF_CONTINUE;
        end = start - 1;
    }
}

const char *crm_auth_client_ip(const crm_http_req_t *req, char *buf, size_t cap)
{
    const crm_auth_t *a = ((crm_app_t *)req->route->data)->auth;
    const char *peer = crm_http_peer_ip(req, buf, cap);
    uint8_t bytes[16];
    if (peer == NULL || a == NULL || a->nproxies == 0 || !addr_bytes(peer, strlen(peer), bytes) ||
        !is_trusted(a, bytes))
        return peer;
    /* Walk X-Forwarded-For from the right: each hop a trusted proxy appended; the first untrusted one is the
     * client. Everything to its left was written by the client and proves nothing. Several header lines are one
     * list in order (RFC 9110 §5.3): some proxies append a line of their own rather than extend the last one. */
    enum { MAX_LINES = 16 };
    ssize_t lines[MAX_LINES]; /* the last MAX_LINES lines, in a ring: only the right end of the list matters */
    size_t nlines = 0;
    const h2o_headers_t *headers = &req->h2o->headers;
    for (ssize_t i = h2o_find_header(headers, H2O_TOKEN_X_FORWARDED_FOR, -1); i != -1;
         i = h2o_find_header(headers, H2O_TOKEN_X_FORWARDED_FOR, i))
        lines[nlines++ % MAX_LINES] = i;
    size_t kept = nlines < MAX_LINES ? nlines : MAX_LINES;
    for (size_t k = 0; k < kept; ++k) {
        size_t index = nlines - 1 - k; /* from the last line backwards */
        const h2o_iovec_t *v = &headers->entries[lines[index % MAX_LINES]].value;
        const char *chosen = xff_walk(a, v->base, v->len, index == 0, buf, cap);
        if (chosen != XFF_CONTINUE)
            return chosen != NULL ? chosen : peer;
    }
    /* Sixteen lines of trusted proxies and still more to the left: no real chain; believe the proxy. */
    return peer;
}

/* ---- rate limits ---- */

int crm_auth_throttle(crm_http_req_t *req, crm_auth_limit_class_t cls)
{
    crm_auth_t *a = crm_auth_of(req);
    char ip[64];
    uint8_t key[17] = {0};
    const char *client = crm_auth_client_ip(req, ip, sizeof(ip));
    if (client != NULL)
        addr_bytes(client, strlen(client), key);
    /* One IPv6 client usually holds a whole /64: key it by the prefix (IPv4 stays whole). */
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(key, mapped, 12) != 0)
        memset(key + 8, 0, 8);
    key[16] = (uint8_t)cls;
    crm_ratelimit_t *rl = &a->limits[cls];
    crm_ratelimit_result_t res;
    int ok = crm_ratelimit_check(rl, key, sizeof(key), uv_now(a->app->loop), &res);
    if (ok < 0)
        return 1;
    crm_ratelimit_headers_t h;
    crm_ratelimit_format_headers(rl, &res, &h);
    crm_http_add_header(req, "ratelimit-policy", h.policy);
    crm_http_add_header(req, "ratelimit", h.ratelimit);
    if (ok)
        return 1;
    a->stats.limited[cls]++;
    crm_http_add_header(req, "retry-after", h.retry_after);
    crm_http_respond_problem(req, 429, "rate-limited", "Too many requests",
                             "This client has sent too many requests; retry after the time in Retry-After.", NULL);
    return 0;
}

/* ---- authenticated requests ---- */

typedef struct st_require_t {
    crm_auth_cont_fn cont;
    const char *permission;
    crm_principal_t who;
    char key[74];
} require_t;

void crm_auth_respond_unauthorized(crm_http_req_t *req)
{
    crm_http_add_header(req, "www-authenticate", "Bearer realm=\"crmd\"");
    crm_http_respond_problem(req, 401, "unauthorized", "Unauthorized",
                             "A valid access token is required: Authorization: Bearer <access_token>.", NULL);
}

int crm_auth_can(const crm_principal_t *who, const char *permission)
{
    if (permission == NULL)
        return 1;
    size_t n = strlen(permission);
    for (const char *p = strstr(who->permissions, permission); p != NULL; p = strstr(p + 1, permission))
        if (p[-1] == ',' && p[n] == ',')
            return 1;
    return 0;
}

static crm_auth_cache_entry_t *cache_slot(crm_auth_t *a, const char *key)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = key; *p; ++p)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    return &a->cache[h % CRM_AUTH_CACHE_SLOTS];
}

static void decide(crm_http_req_t *req, require_t *r, const crm_auth_cache_entry_t *e)
{
    /* A token from before the account's last "log out everywhere" or password reset is refused, to the
     * millisecond: iat alone has one-second resolution, which would either spare a token minted in the same second
     * before the change or refuse a fresh login in the same second after it. */
    if (!e->valid || (double)r->who.issued_at_ms < e->tokens_valid_after * 1000.0) {
        crm_auth_respond_unauthorized(req);
        return;
    }
    snprintf(r->who.role, sizeof(r->who.role), "%s", e->role);
    char *perms = h2o_mem_alloc_pool(&req->h2o->pool, strlen(e->permissions) + 1);
    memcpy(perms, e->permissions, strlen(e->permissions) + 1);
    r->who.permissions = perms;
    if (!crm_auth_can(&r->who, r->permission)) {
        crm_http_respond_problem(req, 403, "forbidden", "Forbidden", "Your role does not allow this.", NULL);
        return;
    }
    r->cont(req, &r->who);
}

/* "{a,b,c}" (a PostgreSQL text[] of plain words) → ",a,b,c,". */
static void permissions_of(const char *array, char *out, size_t cap)
{
    size_t len = strlen(array);
    if (len < 2 || cap < 3) {
        snprintf(out, cap, ",");
        return;
    }
    snprintf(out, cap, ",%.*s,", (int)(len - 2), array + 1);
}

static void on_principal(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    crm_auth_t *a = crm_auth_of(req);
    require_t *r = req->handler_data;
    PGresult *res = crm_pg_unit_result(u, 0);
    crm_auth_cache_entry_t fresh, *e = a->app->config->auth_cache_ms > 0 ? cache_slot(a, r->key) : &fresh;
    memset(e, 0, sizeof(*e));
    snprintf(e->key, sizeof(e->key), "%s", r->key);
    e->loaded_ms = uv_now(a->app->loop);
    if (PQntuples(res) == 1) {
        e->valid = strcmp(PQgetvalue(res, 0, 0), "active") == 0 && strcmp(PQgetvalue(res, 0, 1), "active") == 0;
        snprintf(e->role, sizeof(e->role), "%s", PQgetvalue(res, 0, 2));
        permissions_of(PQgetvalue(res, 0, 3), e->permissions, sizeof(e->permissions));
        e->tokens_valid_after = strtod(PQgetvalue(res, 0, 4), NULL);
    }
    decide(req, r, e);
}

static int claim_uuid(json_t *claims, const char *name, char out[37])
{
    const char *v = json_string_value(json_object_get(claims, name));
    if (!crm_api_is_uuid(v))
        return 0;
    memcpy(out, v, 37);
    return 1;
}

void crm_auth_require(crm_http_req_t *req, const char *permission, crm_auth_cont_fn cont)
{
    crm_auth_t *a = crm_auth_of(req);
    if (!crm_auth_throttle(req, CRM_AUTH_LIMIT_API))
        return;
    size_t len;
    const char *h = crm_http_header(req, "authorization", &len);
    if (h == NULL || len <= 7 || strncasecmp(h, "bearer ", 7) != 0) {
        crm_auth_respond_unauthorized(req);
        return;
    }
    json_t *claims = NULL;
    int err = crm_jwt_verify(&a->keys, h + 7, len - 7, (int64_t)time(NULL), CRM_AUTH_JWT_LEEWAY_S, &claims);
    require_t *r = h2o_mem_alloc_pool(&req->h2o->pool, sizeof(*r));
    memset(r, 0, sizeof(*r));
    json_t *iat = json_object_get(claims, "iat");
    if (err != 0 || !claim_uuid(claims, "sub", r->who.user_id) || !claim_uuid(claims, "tid", r->who.tenant_id) ||
        !json_is_integer(iat)) {
        crm_log(CRM_LOG_DEBUG, "auth.token_refused", CRM_LOG_STR("request_id", req->request_id),
                CRM_LOG_STR("reason", err != 0 ? crm_err_name(err) : "claims"));
        json_decref(claims);
        crm_auth_respond_unauthorized(req);
        return;
    }
    /* iat_ms is crmd's own precise issue time; a token without it counts from the start of its iat second, the
     * earliest it can have been issued, so that missing precision never spares a revoked token. */
    json_t *iat_ms = json_object_get(claims, "iat_ms");
    r->who.issued_at_ms =
        json_is_integer(iat_ms) ? (int64_t)json_integer_value(iat_ms) : (int64_t)json_integer_value(iat) * 1000;
    json_decref(claims);
    r->cont = cont;
    r->permission = permission;
    snprintf(r->key, sizeof(r->key), "%s/%s", r->who.user_id, r->who.tenant_id);
    req->handler_data = r;

    uint64_t ttl = (uint64_t)a->app->config->auth_cache_ms;
    crm_auth_cache_entry_t *e = cache_slot(a, r->key);
    if (ttl > 0 && strcmp(e->key, r->key) == 0 && uv_now(a->app->loop) - e->loaded_ms < ttl) {
        a->stats.cache_hits++;
        decide(req, r, e);
        return;
    }
    a->stats.cache_misses++;
    crm_http_pg_submit_one(req, a->app->pool, CRM_PG_READ_ONLY, NULL, a->stmt.principal, 2,
                           (const char *[]){r->who.user_id, r->who.tenant_id}, on_principal);
}

void crm_auth_forget(crm_auth_t *a, const char *user_id)
{
    size_t n = strlen(user_id);
    for (size_t i = 0; i < CRM_AUTH_CACHE_SLOTS; ++i)
        if (strncmp(a->cache[i].key, user_id, n) == 0 && a->cache[i].key[n] == '/')
            a->cache[i].key[0] = '\0';
}

/* ---- tokens ---- */

static void digest_param(const uint8_t *data, size_t len, char out[CRM_AUTH_DIGEST_PARAM_LEN + 1])
{
    uint8_t d[32];
    crm_sha256(data, len, d);
    out[0] = '\\';
    out[1] = 'x';
    crm_hex(d, sizeof(d), out + 2);
    out[CRM_AUTH_DIGEST_PARAM_LEN] = '\0';
}

int crm_auth_new_token(char token[CRM_AUTH_TOKEN_LEN + 1], char digest[CRM_AUTH_DIGEST_PARAM_LEN + 1])
{
    uint8_t raw[CRM_AUTH_TOKEN_BYTES];
    size_t len;
    if (crm_random_bytes(raw, sizeof(raw)) != 0)
        return CRM_E_IO;
    crm_base64url_encode(raw, sizeof(raw), token, CRM_AUTH_TOKEN_LEN, &len);
    token[len] = '\0';
    OPENSSL_cleanse(raw, sizeof(raw));
    digest_param((const uint8_t *)token, len, digest);
    return 0;
}

int crm_auth_token_digest(const char *token, size_t len, char digest[CRM_AUTH_DIGEST_PARAM_LEN + 1])
{
    if (token == NULL || len > 256)
        return CRM_E_INVAL;
    digest_param((const uint8_t *)token, len, digest);
    return 0;
}

int crm_auth_refresh_child(const crm_auth_t *a, const char *parent, size_t len, char child[CRM_AUTH_TOKEN_LEN + 1])
{
    uint8_t mac[32];
    unsigned maclen = 0;
    size_t n;
    if (HMAC(EVP_sha256(), a->refresh_key, sizeof(a->refresh_key), (const unsigned char *)parent, len, mac, &maclen) ==
        NULL)
        return CRM_E_IO;
    crm_base64url_encode(mac, sizeof(mac), child, CRM_AUTH_TOKEN_LEN, &n);
    child[n] = '\0';
    OPENSSL_cleanse(mac, sizeof(mac));
    return 0;
}

void crm_auth_respond_tokens(crm_http_req_t *req, const char *user_id, const char *tenant_id, const char *role,
                             const char *refresh_token, const char *issued_ms)
{
    crm_auth_t *a = crm_auth_of(req);
    /* iat and exp on this host's clock, which verifies them; iat_ms on the database's, which revocations use. */
    int64_t now = (int64_t)time(NULL), now_ms = strtoll(issued_ms, NULL, 10), ttl = a->app->config->access_token_ttl_s;
    uint8_t jti_raw[16];
    char jti[32], token[1024];
    size_t len;
    if (crm_random_bytes(jti_raw, sizeof(jti_raw)) != 0) {
        crm_http_respond_error(req, CRM_E_IO);
        return;
    }
    crm_base64url_encode(jti_raw, sizeof(jti_raw), jti, sizeof(jti) - 1, &len);
    jti[len] = '\0';
    json_t *claims =
        json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s}", "sub", user_id, "tid", tenant_id, "role", role, "iat",
                  (json_int_t)now, "iat_ms", (json_int_t)now_ms, "exp", (json_int_t)(now + ttl), "jti", jti);
    int err = claims != NULL ? crm_jwt_sign(&a->keys, claims, token, sizeof(token), &len) : CRM_E_NOMEM;
    json_decref(claims);
    if (err != 0) {
        crm_http_respond_error(req, err);
        return;
    }
    crm_http_respond_json(req, 200,
                          json_pack("{s:s, s:s, s:s, s:I, s:s}", "access_token", token, "refresh_token", refresh_token,
                                    "token_type", "Bearer", "expires_in", (json_int_t)ttl, "tenant_id", tenant_id));
}

void crm_auth_respond_invalid_credentials(crm_http_req_t *req)
{
    crm_http_respond_problem(req, 401, "invalid-credentials", "Invalid email or password", NULL, NULL);
}

/* ---- small request helpers ---- */

const char *crm_auth_mail_payload(crm_http_req_t *req, const char *to, const char *name, const char *subject,
                                  const char *intro, const char *path, const char *token)
{
    crm_app_t *app = crm_api_app(req);
    char text[2048];
    if (path != NULL)
        snprintf(text, sizeof(text), "%s\n\n%s%s?token=%s\n\nIf you did not ask for this, ignore this mail.\n", intro,
                 app->config->public_url, path, token);
    else
        snprintf(text, sizeof(text), "%s\n", intro);
    crm_mail_mailbox_t box = {to, name};
    crm_app_mail_t m = {.to = &box, .to_count = 1, .subject = subject, .text = text, .secret = token != NULL};
    char *json = NULL;
    int err = crm_app_mail_payload(app, &m, &json);
    if (err != 0) {
        crm_log(CRM_LOG_ERROR, "auth.mail_compose_failed", CRM_LOG_STR("request_id", req->request_id),
                CRM_LOG_STR("error", crm_err_str(err)));
        return NULL;
    }
    /* Request memory keeps it until the request ends (the unit copies its parameters anyway). */
    char *copy = h2o_strdup(&req->h2o->pool, json, SIZE_MAX).base;
    free(json);
    return copy;
}

static void cancel_password_op(void *op)
{
    crm_password_op_detach(op);
}

int crm_auth_password_started(crm_http_req_t *req, int err, crm_password_op_t *op)
{
    if (err != 0) {
        if (err == CRM_E_QUEUE_FULL) {
            crm_auth_of(req)->stats.password_shed++;
            crm_http_add_header(req, "retry-after", "1");
        }
        crm_http_respond_error(req, err);
        return 0;
    }
    crm_http_await(req, op, cancel_password_op);
    return 1;
}

const char *crm_auth_user_agent(crm_http_req_t *req)
{
    size_t len;
    const char *ua = crm_http_header(req, "user-agent", &len);
    if (ua == NULL)
        return NULL;
    if (len > 512) {
        /* Cut on a character boundary: the column is text and must stay valid UTF-8. */
        len = 512;
        while (len > 0 && ((uint8_t)ua[len] & 0xC0) == 0x80)
            --len;
    }
    /* Anything else that is not UTF-8 (PostgreSQL would refuse the whole statement) is not recorded at all. */
    json_t *valid = json_stringn(ua, len);
    if (valid == NULL)
        return NULL;
    json_decref(valid);
    return h2o_strdup(&req->h2o->pool, ua, len).base;
}

char *crm_auth_normalize_email(char *s)
{
    if (s == NULL)
        return NULL;
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
        ++s;
    size_t len = strlen(s);
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r' || s[len - 1] == '\n'))
        s[--len] = '\0';
    for (char *p = s; *p; ++p)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return len >= 3 && len <= 254 && crm_mail_address_is_valid(s) ? s : NULL;
}
