/*
 * Sessions: POST /v1/auth/login, /v1/auth/refresh, /v1/auth/logout and /v1/auth/logout-all.
 *
 * A login is three steps so that the loop never waits for argon2 and the lockout stays exact across processes:
 * look the account up (read-only), verify the password on the thread pool (against the dummy hash when there is
 * no usable account, so that every failure costs the same), then record the verdict in one transaction
 * (crm.auth_login_finish), which counts failures under a row lock, may lock the account, and creates the refresh
 * family on success. Every failure the client may not tell apart gets the same 401 body.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "auth/auth.h"
#include "err.h"
#include "http_pg.h"
#include "log.h"

typedef struct st_login_t {
    const char *email, *password, *tenant_id;
    size_t password_len;
    char user_id[37];
    const char *hash; /* stored hash; NULL: verify against the dummy */
    int password_ok, needs_rehash;
    char refresh[CRM_AUTH_TOKEN_LEN + 1], refresh_digest[CRM_AUTH_DIGEST_PARAM_LEN + 1];
} login_t;

/* Stores a fresh hash after a login with an outdated one; runs on its own, after the response. */
typedef struct st_rehash_t {
    crm_app_t *app;
    char user_id[37];
    char old_hash[CRM_PASSWORD_ENCODED_MAX];
} rehash_t;

static void on_rehash_stored(crm_pg_unit_t *u, int err, void *data)
{
    rehash_t *r = data;
    if (err != 0)
        crm_log(CRM_LOG_WARN, "auth.rehash_failed", CRM_LOG_STR("error", crm_err_str(err)));
    free(r);
}

static void on_rehashed(int err, const char *encoded, void *data)
{
    rehash_t *r = data;
    crm_auth_t *a = r->app->auth;
    /* Once shutdown has begun the pool may be gone: the old hash simply stays. */
    crm_pg_unit_t *u = err == 0 && !r->app->shutting_down ? crm_pg_unit_new(r->app->pool, 0) : NULL;
    if (u != NULL &&
        crm_pg_unit_add(u, a->stmt.rehash, 3, (const char *[]){r->user_id, r->old_hash, encoded}, NULL) >= 0 &&
        crm_pg_unit_submit(u, on_rehash_stored, r) == 0)
        return;
    crm_pg_unit_free(u);
    free(r);
}

static void start_rehash(crm_app_t *app, const login_t *l)
{
    rehash_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return;
    r->app = app;
    memcpy(r->user_id, l->user_id, sizeof(r->user_id));
    snprintf(r->old_hash, sizeof(r->old_hash), "%s", l->hash);
    /* Best effort: a full hasher just leaves the old hash for the next login. */
    if (crm_password_hash(app->auth->hasher, l->password, l->password_len, on_rehashed, r, NULL) != 0)
        free(r);
}

static void on_finished(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    login_t *l = req->handler_data;
    PGresult *r = crm_pg_unit_result(u, 0);
    const char *outcome = PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "invalid";
    crm_auth_t *a = crm_auth_of(req);
    if (strcmp(outcome, "ok") == 0) {
        a->stats.logins_ok++;
        if (l->needs_rehash)
            start_rehash(crm_api_app(req), l);
        crm_auth_respond_tokens(req, l->user_id, PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), l->refresh,
                                PQgetvalue(r, 0, 3));
    } else if (strcmp(outcome, "unverified") == 0) {
        a->stats.logins_unverified++;
        crm_http_respond_problem(req, 403, "email_not_verified", "Email address not verified",
                                 "Follow the link in the verification mail first; "
                                 "POST /v1/auth/resend-verification sends a new one.",
                                 NULL);
    } else {
        a->stats.logins_invalid++;
        crm_auth_respond_invalid_credentials(req);
    }
}

static void finish(crm_http_req_t *req, login_t *l)
{
    crm_auth_t *a = crm_auth_of(req);
    const crm_config_t *cfg = a->app->config;
    char ip[64], idle[16], absolute[16];
    snprintf(idle, sizeof(idle), "%d", cfg->refresh_idle_s);
    snprintf(absolute, sizeof(absolute), "%d", cfg->refresh_absolute_s);
    if (crm_auth_new_token(l->refresh, l->refresh_digest) != 0) {
        crm_http_respond_error(req, CRM_E_IO);
        return;
    }
    /* Unknown accounts run the same round trip (the function returns at once) so they take the same time. */
    const char *values[] = {l->user_id[0] != '\0' ? l->user_id : NULL,
                            l->password_ok ? "true" : "false",
                            l->hash,
                            l->tenant_id,
                            l->refresh_digest,
                            idle,
                            absolute,
                            crm_auth_client_ip(req, ip, sizeof(ip)),
                            crm_auth_user_agent(req),
                            req->request_id};
    crm_http_pg_submit_one(req, a->app->pool, CRM_PG_TX, NULL, a->stmt.login_finish, 10, values, on_finished);
}

static void on_verified(int err, int match, int needs_rehash, void *data)
{
    crm_http_req_t *req = data;
    if (!crm_http_await_done(req))
        return;
    login_t *l = req->handler_data;
    if (err == CRM_E_PARSE) {
        /* argon2 itself refused the stored hash (a field parse_encoded lets through): a wrong password all the same. */
        l->hash = NULL;
        err = match = 0;
    }
    if (err != 0) {
        crm_http_respond_error(req, err);
        return;
    }
    l->password_ok = match && l->hash != NULL;
    l->needs_rehash = l->password_ok && needs_rehash;
    finish(req, l);
}

/* Starts a verification for the request; on refusal (hasher full) answers 503 with Retry-After. */
static void verify(crm_http_req_t *req, login_t *l)
{
    crm_password_hasher_t *h = crm_auth_of(req)->hasher;
    crm_password_op_t *op = NULL;
    /* A password longer than any stored one can be is wrong; it is checked against the dummy, never cut to fit. */
    if (l->password_len > CRM_PASSWORD_MAX_BYTES)
        l->hash = NULL;
    size_t len = l->password_len > CRM_PASSWORD_MAX_BYTES ? CRM_PASSWORD_MAX_BYTES : l->password_len;
    int err = crm_password_verify(h, l->hash, l->password, len, on_verified, req, &op);
    if (err == CRM_E_PARSE) {
        /* A stored hash argon2 cannot read is a wrong password too, answered in the time of a real check. */
        l->hash = NULL;
        err = crm_password_verify(h, NULL, l->password, len, on_verified, req, &op);
    }
    crm_auth_password_started(req, err, op);
}

static void on_looked_up(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    login_t *l = req->handler_data;
    PGresult *r = crm_pg_unit_result(u, 0);
    if (PQntuples(r) == 1) {
        snprintf(l->user_id, sizeof(l->user_id), "%s", PQgetvalue(r, 0, 0));
        /* A locked or disabled account is not checked at all (the dummy costs the same): a locked account must
         * not let an attacker keep testing passwords. */
        if (strcmp(PQgetvalue(r, 0, 2), "ok") == 0) {
            size_t n = (size_t)PQgetlength(r, 0, 1);
            char *hash = h2o_mem_alloc_pool(&req->h2o->pool, n + 1);
            memcpy(hash, PQgetvalue(r, 0, 1), n + 1);
            l->hash = hash;
        }
    }
    verify(req, l);
}

static void on_login(crm_http_req_t *req)
{
    if (!crm_auth_throttle(req, CRM_AUTH_LIMIT_AUTH))
        return;
    login_t *l = h2o_mem_alloc_pool(&req->h2o->pool, sizeof(*l));
    memset(l, 0, sizeof(*l));
    char *email = NULL;
    const crm_api_field_t fields[] = {
        {"email", 1, 1, 320, (const char **)&email},
        {"password", 1, 1, 1024, &l->password},
        {"tenant_id", 0, 36, 36, &l->tenant_id},
    };
    if (!crm_api_read_body(req, fields, sizeof(fields) / sizeof(fields[0])))
        return;
    if (l->tenant_id != NULL && !crm_api_is_uuid(l->tenant_id)) {
        crm_api_invalid(req, "tenant_id", "must be a UUID");
        return;
    }
    l->password_len = strlen(l->password);
    l->email = crm_auth_normalize_email(email);
    req->handler_data = l;
    /* An address that cannot exist is an unknown account: same path, same time, same answer. */
    if (l->email == NULL) {
        verify(req, l);
        return;
    }
    crm_auth_t *a = crm_auth_of(req);
    /* A login the hasher could not take is refused before it costs a database round trip. */
    if (crm_password_in_flight(a->hasher) >= (size_t)a->app->config->password_max_in_flight) {
        crm_auth_password_started(req, CRM_E_QUEUE_FULL, NULL);
        return;
    }
    crm_http_pg_submit_one(req, a->app->pool, CRM_PG_READ_ONLY, NULL, a->stmt.login_lookup, 1,
                           (const char *[]){l->email}, on_looked_up);
}

/* ---- refresh ---- */

typedef struct st_refresh_t {
    char child[CRM_AUTH_TOKEN_LEN + 1];
} refresh_t;

static void respond_invalid_token(crm_http_req_t *req)
{
    crm_http_respond_problem(req, 401, "invalid-token", "Invalid refresh token",
                             "The refresh token is unknown, expired, revoked or already used; log in again.", NULL);
}

static void on_refreshed(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    refresh_t *rf = req->handler_data;
    crm_auth_t *a = crm_auth_of(req);
    PGresult *r = crm_pg_unit_result(u, 0);
    const char *outcome = PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "invalid";
    if (strcmp(outcome, "ok") != 0) {
        if (strcmp(outcome, "reuse") == 0) {
            a->stats.refresh_reuse++;
            crm_log(CRM_LOG_WARN, "auth.refresh_reuse", CRM_LOG_STR("request_id", req->request_id));
        } else {
            a->stats.refresh_invalid++;
        }
        respond_invalid_token(req);
        return;
    }
    if (strcmp(PQgetvalue(r, 0, 4), "t") == 0)
        a->stats.refresh_grace++;
    else
        a->stats.refresh_ok++;
    crm_auth_respond_tokens(req, PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 3), rf->child,
                            PQgetvalue(r, 0, 5));
}

/* Reads {refresh_token} and returns its digest parameter in request memory, or NULL when answered. */
static const char *read_refresh_token(crm_http_req_t *req, const char **token)
{
    const crm_api_field_t fields[] = {{"refresh_token", 1, 1, 256, token}};
    if (!crm_api_read_body(req, fields, 1))
        return NULL;
    char *digest = h2o_mem_alloc_pool(&req->h2o->pool, CRM_AUTH_DIGEST_PARAM_LEN + 1);
    crm_auth_token_digest(*token, strlen(*token), digest);
    return digest;
}

static void on_refresh(crm_http_req_t *req)
{
    if (!crm_auth_throttle(req, CRM_AUTH_LIMIT_AUTH))
        return;
    crm_auth_t *a = crm_auth_of(req);
    const char *token = NULL, *digest = read_refresh_token(req, &token);
    if (digest == NULL)
        return;
    refresh_t *rf = h2o_mem_alloc_pool(&req->h2o->pool, sizeof(*rf));
    char child_digest[CRM_AUTH_DIGEST_PARAM_LEN + 1], ip[64], idle[16], grace[16];
    if (crm_auth_refresh_child(a, token, strlen(token), rf->child) != 0) {
        crm_http_respond_error(req, CRM_E_IO);
        return;
    }
    crm_auth_token_digest(rf->child, strlen(rf->child), child_digest);
    snprintf(idle, sizeof(idle), "%d", a->app->config->refresh_idle_s);
    snprintf(grace, sizeof(grace), "%d", CRM_AUTH_REFRESH_GRACE_S);
    req->handler_data = rf;
    const char *values[] = {
        digest,         child_digest, idle, grace, crm_auth_client_ip(req, ip, sizeof(ip)), crm_auth_user_agent(req),
        req->request_id};
    crm_http_pg_submit_one(req, a->app->pool, CRM_PG_TX, NULL, a->stmt.refresh, 7, values, on_refreshed);
}

/* ---- logout ---- */

static void on_logged_out(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    crm_http_respond(req, 204, NULL, NULL, 0);
}

static void on_logout(crm_http_req_t *req)
{
    if (!crm_auth_throttle(req, CRM_AUTH_LIMIT_AUTH))
        return;
    crm_auth_t *a = crm_auth_of(req);
    const char *token = NULL, *digest = read_refresh_token(req, &token);
    if (digest == NULL)
        return;
    char ip[64];
    const char *values[] = {digest, crm_auth_client_ip(req, ip, sizeof(ip)), crm_auth_user_agent(req), req->request_id};
    crm_http_pg_submit_one(req, a->app->pool, CRM_PG_TX, NULL, a->stmt.logout, 4, values, on_logged_out);
}

static void on_logout_all_authorized(crm_http_req_t *req, const crm_principal_t *who)
{
    crm_auth_t *a = crm_auth_of(req);
    char ip[64];
    const char *values[] = {who->user_id, who->tenant_id, crm_auth_client_ip(req, ip, sizeof(ip)),
                            crm_auth_user_agent(req), req->request_id};
    /* This process stops accepting the user's older access tokens at once, others within CRMD_AUTH_CACHE_MS. */
    crm_auth_forget(a, who->user_id);
    crm_http_pg_submit_one(req, a->app->pool, CRM_PG_TX, NULL, a->stmt.logout_all, 5, values, on_logged_out);
}

static void on_logout_all(crm_http_req_t *req)
{
    /* No body is needed; one that is sent must be an empty object, like every other body here without unknowns. */
    if (req->h2o->entity.len != 0 && !crm_api_read_body(req, NULL, 0))
        return;
    crm_auth_require(req, NULL, on_logout_all_authorized);
}

/* ---- statements and routes ---- */

int crm_auth_login_prepare(crm_auth_t *a, crm_pg_pool_t *pool)
{
    const crm_auth_stmt_def_t defs[] = {
        {"auth.login_lookup", "SELECT * FROM crm.auth_login_lookup($1)", 1, &a->stmt.login_lookup},
        {"auth.login_finish", "SELECT * FROM crm.auth_login_finish($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", 10,
         &a->stmt.login_finish},
        {"auth.rehash", "SELECT crm.auth_rehash($1, $2, $3)", 3, &a->stmt.rehash},
        {"auth.refresh", "SELECT * FROM crm.auth_refresh($1, $2, $3, $4, $5, $6, $7)", 7, &a->stmt.refresh},
        {"auth.logout", "SELECT crm.auth_logout($1, $2, $3, $4)", 4, &a->stmt.logout},
        {"auth.logout_all", "SELECT crm.auth_logout_all($1, $2, $3, $4, $5)", 5, &a->stmt.logout_all},
    };
    return crm_auth_prepare_all(pool, defs, sizeof(defs) / sizeof(defs[0]));
}

int crm_auth_login_routes(crm_app_t *app)
{
    static const crm_auth_route_t routes[] = {
        {CRM_HTTP_POST, "/v1/auth/login", on_login},
        {CRM_HTTP_POST, "/v1/auth/refresh", on_refresh},
        {CRM_HTTP_POST, "/v1/auth/logout", on_logout},
        {CRM_HTTP_POST, "/v1/auth/logout-all", on_logout_all},
    };
    return crm_auth_add_routes(app, routes, sizeof(routes) / sizeof(routes[0]));
}
