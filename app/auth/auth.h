/*
 * Accounts, sessions and access control (issue #4; DESIGN.md §3 invariants 5, 6, 8, 10, 12 and §5).
 *
 * Every rule about accounts lives in PostgreSQL (sql/0005_auth.sql): uniqueness of addresses, lockout counters,
 * token rotation and reuse detection, the roles and their permissions. The C side does what the database cannot:
 * parses and validates requests, runs argon2id off the loop (lib/password), mints and checks tokens (lib/jwt,
 * random refresh and e-mail tokens of which only SHA-256 digests are stored), throttles clients (lib/ratelimit),
 * composes mail, and caches briefly whether an authenticated user may still act.
 *
 * Modules: session.c (this header's shared machinery), login.c (login, refresh, logout), account.c
 * (registration, verification, password reset, invitations' acceptance), users.c (/v1/me, users, invitations,
 * audit log).
 *
 * Request flow of an authenticated route:
 *
 *     static void on_thing(crm_http_req_t *req) { crm_auth_require(req, "users.read", on_thing_authorized); }
 *     static void on_thing_authorized(crm_http_req_t *req, const crm_principal_t *who) { ... }
 *
 * crm_auth_require counts the request against the client's "api" rate limit, verifies the bearer token (HS256,
 * strict, CRMD_JWT_KEYS), then checks, from the principal cache or the database (crm.auth_principal), that the user
 * and the membership are active, that the token was issued after the user's last "log out everywhere" or password
 * reset, and that the role (read from the database, not from the token) has the permission. It answers 429, 401
 * (always the same body, whatever the reason) or 403 itself; otherwise it calls the continuation, either at once or
 * from the database callback, with the request still wanting an answer. The principal lives in the request's memory.
 */
#ifndef CRM_APP_AUTH_H
#define CRM_APP_AUTH_H

#include <stdint.h>

#include "app.h"
#include "http.h"
#include "jwt.h"
#include "password.h"
#include "ratelimit.h"

/* Raw tokens sent to clients and in mail: 32 random bytes, base64url without padding. */
#define CRM_AUTH_TOKEN_BYTES 32
#define CRM_AUTH_TOKEN_LEN   43
/* A SHA-256 digest as a bytea text parameter: "\x" and 64 hex digits. */
#define CRM_AUTH_DIGEST_PARAM_LEN 66

/* Lifetimes of e-mail tokens, in seconds. */
#define CRM_AUTH_VERIFY_TTL_S (24 * 3600)
#define CRM_AUTH_RESET_TTL_S  (30 * 60)
#define CRM_AUTH_INVITE_TTL_S (7 * 24 * 3600)
/* A refresh token presented again within this many seconds of its rotation gets the same child back. */
#define CRM_AUTH_REFRESH_GRACE_S 10
/* Clock skew allowed on exp/nbf/iat of access tokens. */
#define CRM_AUTH_JWT_LEEWAY_S 30
/* Body limit of every auth and users route. */
#define CRM_AUTH_MAX_BODY 16384

typedef enum { CRM_AUTH_LIMIT_AUTH = 0, CRM_AUTH_LIMIT_API, CRM_AUTH_LIMIT_COUNT } crm_auth_limit_class_t;

/* Who is acting: filled by crm_auth_require, in the request's memory. */
typedef struct st_crm_principal_t {
    char user_id[37];
    char tenant_id[37];
    char role[33];
    const char *permissions; /* ",perm,perm," from the roles table */
    int64_t issued_at_ms;    /* the access token's issue time: iat_ms, else iat * 1000 */
} crm_principal_t;

typedef void (*crm_auth_cont_fn)(crm_http_req_t *req, const crm_principal_t *who);

/* A trusted proxy network (CRMD_TRUSTED_PROXIES entry). */
typedef struct st_crm_auth_net_t {
    uint8_t addr[16]; /* IPv6, IPv4 mapped into ::ffff:0:0/96 */
    unsigned prefix;  /* 0..128 */
} crm_auth_net_t;

typedef struct st_crm_auth_cache_entry_t crm_auth_cache_entry_t;

typedef struct st_crm_auth_t {
    crm_app_t *app;
    crm_password_hasher_t *hasher;
    crm_jwt_keyring_t keys;
    uint8_t refresh_key[32]; /* derives a rotated refresh token from its parent (see crm_auth_refresh_child) */
    crm_ratelimit_t limits[CRM_AUTH_LIMIT_COUNT];
    crm_auth_net_t *proxies;
    size_t nproxies;
    crm_auth_cache_entry_t *cache; /* direct-mapped principal cache, CRM_AUTH_CACHE_SLOTS entries */
    struct {
        crm_pg_stmt_t principal, register_, verify_email, resend, login_lookup, login_finish, rehash, refresh, logout,
            logout_all, forgot, token_peek, reset, invite, accept, update_member, users_list, user_get, audit_list, me;
    } stmt;
    struct {
        uint64_t cache_hits, cache_misses;
        uint64_t limited[CRM_AUTH_LIMIT_COUNT];
        uint64_t logins_ok, logins_invalid, logins_unverified;
        uint64_t refresh_ok, refresh_grace, refresh_reuse, refresh_invalid;
        uint64_t password_shed; /* requests answered 503 because the hasher was full */
    } stats;
} crm_auth_t;

/* The application's auth state (app->auth). */
static inline crm_auth_t *crm_auth_of(crm_http_req_t *req)
{
    return ((crm_app_t *)req->route->data)->auth;
}

/* Creates app->auth from the configuration (keys, hasher, limiters, proxies) and prepares its statements. At
 * start-up, before the pool starts: computes the dummy hash synchronously. */
int crm_auth_init(crm_app_t *app);

/* Registers the auth collector: logins and refreshes by outcome, rate-limited requests by class, principal cache
 * hits and misses, password operations in flight and shed. */
int crm_auth_register_metrics(crm_auth_t *a, crm_metrics_t *m);

/* Registers every auth, users and audit route. Works with app->auth NULL (for `crmd routes`). */
int crm_auth_routes(crm_app_t *app);

/* Frees app->auth once the loop has stopped running requests. Accepts NULL. */
void crm_auth_free(crm_app_t *app);

/* The client's address: the TCP peer, or, when the peer is a trusted proxy, the rightmost X-Forwarded-For entry
 * that is not one. Into buf (IPv4 dotted, IPv6 without brackets). Returns buf, or NULL when unknown. */
const char *crm_auth_client_ip(const crm_http_req_t *req, char *buf, size_t cap);

/* Counts the request against the client's limit of class cls; adds RateLimit-Policy and RateLimit headers. 1:
 * go on; 0: answered 429 with Retry-After. */
int crm_auth_throttle(crm_http_req_t *req, crm_auth_limit_class_t cls);

/* See the top of this file. `permission` may be NULL (any active member). */
void crm_auth_require(crm_http_req_t *req, const char *permission, crm_auth_cont_fn cont);

/* 1 when who's role has permission. */
int crm_auth_can(const crm_principal_t *who, const char *permission);

/* Drops cached principals of user_id (all tenants): after a change of role or status in this process. */
void crm_auth_forget(crm_auth_t *a, const char *user_id);

/* A new random token (CRM_AUTH_TOKEN_LEN characters and a NUL) and its digest as a bytea parameter. */
int crm_auth_new_token(char token[CRM_AUTH_TOKEN_LEN + 1], char digest[CRM_AUTH_DIGEST_PARAM_LEN + 1]);

/* The digest parameter of a token received from a client (any length up to 256; longer → CRM_E_INVAL). */
int crm_auth_token_digest(const char *token, size_t len, char digest[CRM_AUTH_DIGEST_PARAM_LEN + 1]);

/* The refresh token that replaces `parent` on rotation: HMAC-SHA256(refresh_key, parent), base64url. Derived, not
 * random, so that a client retrying a lost answer within the grace window is given the same child again while
 * nothing but its digest is ever stored. */
int crm_auth_refresh_child(const crm_auth_t *a, const char *parent, size_t len, char child[CRM_AUTH_TOKEN_LEN + 1]);

/* Answers 200 {access_token, refresh_token, token_type, expires_in, tenant_id} with a new access token for
 * (user, tenant, role), issued at issued_ms (decimal milliseconds since the epoch, from the transaction that made
 * the session: the database's clock under the user's lock, the clock revocations are compared on). */
void crm_auth_respond_tokens(crm_http_req_t *req, const char *user_id, const char *tenant_id, const char *role,
                             const char *refresh_token, const char *issued_ms);

/* Answers the 401 of a missing, invalid or no longer honoured access token (with WWW-Authenticate: Bearer). */
void crm_auth_respond_unauthorized(crm_http_req_t *req);

/* Answers the one 401 of failed credentials (byte-identical whatever the cause). */
void crm_auth_respond_invalid_credentials(crm_http_req_t *req);

/* After crm_password_hash/verify for req returned err with op: on success makes the request await op (detached if
 * the request goes away) and returns 1; otherwise answers (503 with Retry-After when the hasher is full) and
 * returns 0. */
int crm_auth_password_started(crm_http_req_t *req, int err, crm_password_op_t *op);

/* The mail.send payload (JSON, in request memory) of a mail to one address: intro, then, when path is not NULL, the
 * link <CRMD_PUBLIC_URL><path>?token=<token> (the payload is then marked secret: redacted once sent). NULL when it
 * does not compose, which is logged: every input was validated before, so that is this server's fault. */
const char *crm_auth_mail_payload(crm_http_req_t *req, const char *to, const char *name, const char *subject,
                                  const char *intro, const char *path, const char *token);

/* The request's User-Agent, cut to 512 bytes, in request memory (NULL when absent). */
const char *crm_auth_user_agent(crm_http_req_t *req);

/* Normalises an e-mail address in place (trims ASCII whitespace, lower-cases ASCII letters) and checks it is one
 * addr-spec of at most 254 bytes. Returns the normalised string (inside s) or NULL when invalid. */
char *crm_auth_normalize_email(char *s);

/* Parses CRMD_TRUSTED_PROXIES ("ip[/prefix],..."; NULL or empty: none) into a malloc'd array. 0, CRM_E_INVAL or
 * CRM_E_NOMEM. */
int crm_auth_parse_proxies(const char *spec, crm_auth_net_t **out, size_t *count);

/* A statement a module registers with the pool. */
typedef struct st_crm_auth_stmt_def_t {
    const char *name, *sql;
    int nparams;
    crm_pg_stmt_t *out;
} crm_auth_stmt_def_t;

/* Registers defs[0..n) with the pool (crm_pg_pool_prepare); stops at the first error. */
int crm_auth_prepare_all(crm_pg_pool_t *pool, const crm_auth_stmt_def_t *defs, size_t n);

/* Statement preparation of each module (into a->stmt), called by crm_auth_init. */
int crm_auth_login_prepare(crm_auth_t *a, crm_pg_pool_t *pool);
int crm_auth_account_prepare(crm_auth_t *a, crm_pg_pool_t *pool);
int crm_auth_users_prepare(crm_auth_t *a, crm_pg_pool_t *pool);

/* A route a module registers; every one gets the CRM_AUTH_MAX_BODY body limit. */
typedef struct st_crm_auth_route_t {
    crm_http_method_t method;
    const char *pattern;
    crm_http_handler_fn fn;
} crm_auth_route_t;

/* Registers routes[0..n) with app's router; CRM_E_NOMEM (or an invalid pattern) stops it. */
int crm_auth_add_routes(crm_app_t *app, const crm_auth_route_t *routes, size_t n);

/* Route registration of each module. */
int crm_auth_login_routes(crm_app_t *app);
int crm_auth_account_routes(crm_app_t *app);
int crm_auth_users_routes(crm_app_t *app);

#endif
