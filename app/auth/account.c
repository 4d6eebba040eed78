/*
 * Accounts: POST /v1/auth/register, /verify-email, /resend-verification, /password/forgot, /password/reset and
 * /accept-invitation.
 *
 * Every mail these send is composed here (so it is validated before anything commits) and handed to an SQL
 * function that decides inside its transaction whether to enqueue it: a registration of a known address sends the
 * "someone tried" mail instead of the verification, a reset request for an unknown address sends nothing, and the
 * client gets the same answer either way (no account enumeration). Passwords are hashed on the thread pool before
 * the transaction; a hash that turns out unused (duplicate registration) costs what a new account costs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "auth/auth.h"
#include "err.h"
#include "http_pg.h"
#include "log.h"

/* State of one request across its steps, in request memory. */
typedef struct st_account_t {
    const char *email, *password, *name, *tenant_name, *token;
    char digest[CRM_AUTH_DIGEST_PARAM_LEN + 1];
    char *hash; /* new password hash, once computed */
    /* accept-invitation: the invited address's existing account */
    const char *existing_user, *existing_hash;
    void (*next)(crm_http_req_t *req); /* what runs once the password operation has come back */
} account_t;

static account_t *account_new(crm_http_req_t *req)
{
    account_t *acc = h2o_mem_alloc_pool(&req->h2o->pool, sizeof(*acc));
    memset(acc, 0, sizeof(*acc));
    req->handler_data = acc;
    return acc;
}

static void respond_invalid_token(crm_http_req_t *req)
{
    crm_http_respond_problem(req, 400, "invalid-token", "Invalid or expired token",
                             "The token is unknown, expired or already used.", NULL);
}

/* ---- passwords on the thread pool ---- */

static void on_hashed(int err, const char *encoded, void *data)
{
    crm_http_req_t *req = data;
    if (!crm_http_await_done(req))
        return;
    if (err != 0) {
        crm_http_respond_error(req, err);
        return;
    }
    account_t *acc = req->handler_data;
    acc->hash = h2o_strdup(&req->h2o->pool, encoded, SIZE_MAX).base;
    acc->next(req);
}

/* Hashes acc->password, then runs next. */
static void hash_then(crm_http_req_t *req, account_t *acc, void (*next)(crm_http_req_t *req))
{
    crm_password_op_t *op = NULL;
    acc->next = next;
    int err = crm_password_hash(crm_auth_of(req)->hasher, acc->password, strlen(acc->password), on_hashed, req, &op);
    crm_auth_password_started(req, err, op);
}

/* Appends an error for field when a display name is blank or holds a control character (names go into mail
 * headers, and the database keeps them trimmed and non-empty: the same rules are checked before anything depends on
 * whether an address has an account). */
static void check_name(json_t *errors, const char *field, const char *s)
{
    int blank = 1;
    for (const unsigned char *p = (const unsigned char *)s; s != NULL && *p; ++p) {
        if (*p < 0x20 || *p == 0x7f) {
            json_array_append_new(
                errors, json_pack("{s:s, s:s}", "field", field, "message", "must not hold control characters"));
            return;
        }
        blank &= *p == ' ';
    }
    if (s != NULL && blank)
        json_array_append_new(errors, json_pack("{s:s, s:s}", "field", field, "message", "must not be blank"));
}

/* Answers 400 naming field when password fails the policy for email; returns 1 when it passes. */
static int password_acceptable(crm_http_req_t *req, const char *field, const char *password, const char *email)
{
    crm_password_verdict_t v = crm_password_policy_check(password, strlen(password), email);
    if (v == CRM_PASSWORD_OK)
        return 1;
    crm_api_invalid(req, field, crm_password_verdict_message(v));
    return 0;
}

/* ---- register ---- */

static void on_registered(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    crm_jobs_wake(crm_api_app(req)->jobs);
    crm_http_respond_json(req, 201, json_pack("{s:s}", "status", "verification_pending"));
}

static void register_store(crm_http_req_t *req)
{
    account_t *acc = req->handler_data;
    char token[CRM_AUTH_TOKEN_LEN + 1], ttl[16], ip[64];
    if (crm_auth_new_token(token, acc->digest) != 0) {
        crm_http_respond_error(req, CRM_E_IO);
        return;
    }
    const char *verify =
        crm_auth_mail_payload(req, acc->email, acc->name, "Verify your email address",
                              "Welcome to crmd. Confirm your email address by opening this link within 24 "
                              "hours:",
                              "/verify-email", token);
    const char *exists =
        crm_auth_mail_payload(req, acc->email, NULL, "Someone tried to register with your email address",
                              "Someone just tried to create a crmd account with this email address, which "
                              "already has one. If it was you, log in, or reset your password if you have "
                              "forgotten it. If it was not you, you need not do anything: your account is "
                              "unchanged.",
                              NULL, NULL);
    if (verify == NULL || exists == NULL) {
        /* Every input was validated before: a mail that does not compose is this server's fault (logged). */
        crm_http_respond_error(req, CRM_E_STATE);
        return;
    }
    snprintf(ttl, sizeof(ttl), "%d", CRM_AUTH_VERIFY_TTL_S);
    const char *values[] = {acc->email,
                            acc->hash,
                            acc->name,
                            acc->tenant_name,
                            acc->digest,
                            ttl,
                            verify,
                            exists,
                            crm_auth_client_ip(req, ip, sizeof(ip)),
                            crm_auth_user_agent(req),
                            req->request_id};
    crm_http_pg_submit_one(req, crm_api_app(req)->pool, CRM_PG_TX, NULL, crm_auth_of(req)->stmt.register_, 11, values,
                           on_registered);
}

static void on_register(crm_http_req_t *req)
{
    if (!crm_auth_throttle(req, CRM_AUTH_LIMIT_AUTH))
        return;
    account_t *acc = account_new(req);
    char *email = NULL;
    const crm_api_field_t fields[] = {
        {"email", 1, 1, 320, (const char **)&email},
        {"password", 1, 1, 1024, &acc->password},
        {"name", 1, 1, 200, &acc->name},
        {"tenant_name", 1, 1, 200, &acc->tenant_name},
    };
    if (!crm_api_read_body(req, fields, sizeof(fields) / sizeof(fields[0])))
        return;
    json_t *errors = json_array();
    if ((acc->email = crm_auth_normalize_email(email)) == NULL)
        json_array_append_new(errors, json_pack("{s:s, s:s}", "field", "email", "message",
                                                "must be one email address (local@domain) of at most 254 bytes"));
    crm_password_verdict_t v = crm_password_policy_check(acc->password, strlen(acc->password), acc->email);
    if (v != CRM_PASSWORD_OK)
        json_array_append_new(errors,
                              json_pack("{s:s, s:s}", "field", "password", "message", crm_password_verdict_message(v)));
    check_name(errors, "name", acc->name);
    check_name(errors, "tenant_name", acc->tenant_name);
    if (json_array_size(errors) != 0) {
        crm_api_invalid_many(req, errors);
        return;
    }
    json_decref(errors);
    hash_then(req, acc, register_store);
}

/* ---- verify-email ---- */

static void on_email_verified(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    PGresult *r = crm_pg_unit_result(u, 0);
    if (strcmp(PQgetvalue(r, 0, 0), "t") != 0) {
        respond_invalid_token(req);
        return;
    }
    crm_http_respond_json(req, 200, json_pack("{s:s}", "status", "verified"));
}

/* Reads {token} plus the extra fields; fills acc->token and acc->digest. */
static int read_token_body(crm_http_req_t *req, account_t *acc, const crm_api_field_t *extra, size_t nextra)
{
    crm_api_field_t fields[4] = {{"token", 1, 1, 256, &acc->token}};
    for (size_t i = 0; i < nextra && i < 3; ++i)
        fields[i + 1] = extra[i];
    if (!crm_api_read_body(req, fields, 1 + nextra))
        return 0;
    crm_auth_token_digest(acc->token, strlen(acc->token), acc->digest);
    return 1;
}

static void on_verify_email(crm_http_req_t *req)
{
    if (!crm_auth_throttle(req, CRM_AUTH_LIMIT_AUTH))
        return;
    account_t *acc = account_new(req);
    if (!read_token_body(req, acc, NULL, 0))
        return;
    char ip[64];
    const char *values[] = {acc->digest, crm_auth_client_ip(req, ip, sizeof(ip)), crm_auth_user_agent(req),
                            req->request_id};
    crm_http_pg_submit_one(req, crm_api_app(req)->pool, CRM_PG_TX, NULL, crm_auth_of(req)->stmt.verify_email, 4, values,
                           on_email_verified);
}

/* ---- resend-verification and password/forgot: always 202 ---- */

static void on_accepted(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    crm_jobs_wake(crm_api_app(req)->jobs);
    crm_http_respond_json(req, 202, json_pack("{s:s}", "status", "accepted"));
}

/* A mail with a fresh single-use token, asked for by address (the SQL function decides whether it goes). */
typedef struct st_token_mail_t {
    const char *email, *mail;
    char digest[CRM_AUTH_DIGEST_PARAM_LEN + 1];
} token_mail_t;

/* Reads {email} and composes the mail with a new token's link into *t. Returns 0 when the request has been
 * answered: 202 at once for an address that cannot exist (there is no such account), 500 when composing fails. */
static int token_mail_request(crm_http_req_t *req, const char *subject, const char *intro, const char *path,
                              token_mail_t *t)
{
    char *email = NULL, token[CRM_AUTH_TOKEN_LEN + 1];
    const crm_api_field_t fields[] = {{"email", 1, 1, 320, (const char **)&email}};
    if (!crm_api_read_body(req, fields, 1))
        return 0;
    if ((t->email = crm_auth_normalize_email(email)) == NULL) {
        crm_http_respond_json(req, 202, json_pack("{s:s}", "status", "accepted"));
        return 0;
    }
    if (crm_auth_new_token(token, t->digest) != 0 ||
        (t->mail = crm_auth_mail_payload(req, t->email, NULL, subject, intro, path, token)) == NULL) {
        crm_http_respond_error(req, CRM_E_STATE);
        return 0;
    }
    return 1;
}

static void on_resend_verification(crm_http_req_t *req)
{
    token_mail_t t;
    if (!crm_auth_throttle(req, CRM_AUTH_LIMIT_AUTH) ||
        !token_mail_request(req, "Verify your email address",
                            "Confirm your crmd email address by opening this link within 24 hours:", "/verify-email",
                            &t))
        return;
    char ttl[16];
    snprintf(ttl, sizeof(ttl), "%d", CRM_AUTH_VERIFY_TTL_S);
    const char *values[] = {t.email, t.digest, ttl, t.mail};
    crm_http_pg_submit_one(req, crm_api_app(req)->pool, CRM_PG_TX, NULL, crm_auth_of(req)->stmt.resend, 4, values,
                           on_accepted);
}

static void on_password_forgot(crm_http_req_t *req)
{
    token_mail_t t;
    if (!crm_auth_throttle(req, CRM_AUTH_LIMIT_AUTH) ||
        !token_mail_request(req, "Reset your password",
                            "Someone asked to reset the password of your crmd account. Choose a new one by opening "
                            "this link within 30 minutes:",
                            "/reset-password", &t))
        return;
    char ttl[16], ip[64];
    snprintf(ttl, sizeof(ttl), "%d", CRM_AUTH_RESET_TTL_S);
    const char *values[] = {
        t.email,        t.digest, ttl, t.mail, crm_auth_client_ip(req, ip, sizeof(ip)), crm_auth_user_agent(req),
        req->request_id};
    crm_http_pg_submit_one(req, crm_api_app(req)->pool, CRM_PG_TX, NULL, crm_auth_of(req)->stmt.forgot, 7, values,
                           on_accepted);
}

/* ---- password/reset ---- */

static void on_reset_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    if (strcmp(PQgetvalue(crm_pg_unit_result(u, 0), 0, 0), "t") != 0) {
        respond_invalid_token(req);
        return;
    }
    crm_jobs_wake(crm_api_app(req)->jobs);
    crm_http_respond_json(req, 200, json_pack("{s:s}", "status", "password_reset"));
}

static void reset_store(crm_http_req_t *req)
{
    account_t *acc = req->handler_data;
    char ip[64];
    const char *notice =
        crm_auth_mail_payload(req, acc->email, NULL, "Your password was changed",
                              "The password of your crmd account was just changed and every session was "
                              "ended. If this was not you, reset your password at once and contact your "
                              "administrator.",
                              NULL, NULL);
    if (notice == NULL) {
        crm_http_respond_error(req, CRM_E_INVAL);
        return;
    }
    const char *values[] = {
        acc->digest,    acc->hash, notice, crm_auth_client_ip(req, ip, sizeof(ip)), crm_auth_user_agent(req),
        req->request_id};
    crm_http_pg_submit_one(req, crm_api_app(req)->pool, CRM_PG_TX, NULL, crm_auth_of(req)->stmt.reset, 6, values,
                           on_reset_done);
}

/* A live e-mail token's row (crm.auth_email_token_peek) is in; fills the account state or answers. */
static int peeked(crm_http_req_t *req, crm_pg_unit_t *u, account_t *acc)
{
    PGresult *r = crm_pg_unit_result(u, 0);
    if (PQntuples(r) != 1) {
        respond_invalid_token(req);
        return 0;
    }
    for (int col = 0; col < 3; ++col) {
        const char **dst = col == 0 ? &acc->email : col == 1 ? &acc->existing_user : &acc->existing_hash;
        if (PQgetisnull(r, 0, col))
            continue;
        *dst = h2o_strdup(&req->h2o->pool, PQgetvalue(r, 0, col), (size_t)PQgetlength(r, 0, col)).base;
    }
    return 1;
}

static void on_reset_peeked(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    account_t *acc = req->handler_data;
    if (!peeked(req, u, acc))
        return;
    if (password_acceptable(req, "new_password", acc->password, acc->email))
        hash_then(req, acc, reset_store);
}

static void peek(crm_http_req_t *req, account_t *acc, const char *purpose, crm_pg_unit_cb cb)
{
    const char *values[] = {acc->digest, purpose};
    crm_http_pg_submit_one(req, crm_api_app(req)->pool, CRM_PG_READ_ONLY, NULL, crm_auth_of(req)->stmt.token_peek, 2,
                           values, cb);
}

static void on_password_reset(crm_http_req_t *req)
{
    if (!crm_auth_throttle(req, CRM_AUTH_LIMIT_AUTH))
        return;
    account_t *acc = account_new(req);
    const crm_api_field_t extra[] = {{"new_password", 1, 1, 1024, &acc->password}};
    if (read_token_body(req, acc, extra, 1))
        peek(req, acc, "reset", on_reset_peeked);
}

/* ---- accept-invitation ---- */

static void on_invitation_accepted(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    PGresult *r = crm_pg_unit_result(u, 0);
    const char *outcome = PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "invalid";
    if (strcmp(outcome, "conflict") == 0) {
        crm_http_respond_problem(req, 409, "conflict", "Conflict",
                                 "The account of this address changed meanwhile; try again.", NULL);
        return;
    }
    if (strcmp(outcome, "ok") != 0) {
        respond_invalid_token(req);
        return;
    }
    crm_http_respond_json(req, 200,
                          json_pack("{s:s, s:s, s:s}", "user_id", PQgetvalue(r, 0, 1), "tenant_id", PQgetvalue(r, 0, 2),
                                    "role", PQgetvalue(r, 0, 3)));
}

static void accept_store(crm_http_req_t *req)
{
    account_t *acc = req->handler_data;
    char ip[64];
    /* Without a new hash the existing account joins, and only if its hash is still the one its password was
     * checked against. */
    const char *values[] = {acc->digest,
                            acc->hash,
                            acc->hash == NULL ? acc->existing_hash : NULL,
                            acc->name,
                            crm_auth_client_ip(req, ip, sizeof(ip)),
                            crm_auth_user_agent(req),
                            req->request_id};
    crm_http_pg_submit_one(req, crm_api_app(req)->pool, CRM_PG_TX, NULL, crm_auth_of(req)->stmt.accept, 7, values,
                           on_invitation_accepted);
}

static void on_existing_verified(int err, int match, int needs_rehash, void *data)
{
    crm_http_req_t *req = data;
    if (!crm_http_await_done(req))
        return;
    if (err != 0 && err != CRM_E_PARSE) {
        crm_http_respond_error(req, err);
        return;
    }
    if (err == CRM_E_PARSE || !match) { /* a stored hash argon2 refuses is a wrong password too */
        crm_auth_respond_invalid_credentials(req);
        return;
    }
    accept_store(req); /* hash stays NULL: the existing account joins */
}

static void on_invitation_peeked(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    account_t *acc = req->handler_data;
    if (!peeked(req, u, acc))
        return;
    if (acc->existing_user != NULL) {
        /* The address already has an account: joining the tenant takes that account's password. */
        crm_password_op_t *op = NULL;
        size_t len = strlen(acc->password);
        int e = len <= CRM_PASSWORD_MAX_BYTES ? crm_password_verify(crm_auth_of(req)->hasher, acc->existing_hash,
                                                                    acc->password, len, on_existing_verified, req, &op)
                                              : CRM_E_PARSE;
        if (e == CRM_E_PARSE) /* a password no account can have, or a stored hash argon2 cannot read */
            crm_auth_respond_invalid_credentials(req);
        else
            crm_auth_password_started(req, e, op);
        return;
    }
    if (password_acceptable(req, "password", acc->password, acc->email))
        hash_then(req, acc, accept_store);
}

static void on_accept_invitation(crm_http_req_t *req)
{
    if (!crm_auth_throttle(req, CRM_AUTH_LIMIT_AUTH))
        return;
    account_t *acc = account_new(req);
    const crm_api_field_t extra[] = {{"password", 1, 1, 1024, &acc->password}, {"name", 1, 1, 200, &acc->name}};
    if (!read_token_body(req, acc, extra, 2))
        return;
    json_t *errors = json_array();
    check_name(errors, "name", acc->name);
    if (json_array_size(errors) != 0) {
        crm_api_invalid_many(req, errors);
        return;
    }
    json_decref(errors);
    peek(req, acc, "invite", on_invitation_peeked);
}

/* ---- statements and routes ---- */

int crm_auth_account_prepare(crm_auth_t *a, crm_pg_pool_t *pool)
{
    const crm_auth_stmt_def_t defs[] = {
        {"auth.register", "SELECT crm.auth_register($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)", 11,
         &a->stmt.register_},
        {"auth.verify_email", "SELECT crm.auth_verify_email($1, $2, $3, $4)", 4, &a->stmt.verify_email},
        {"auth.resend", "SELECT crm.auth_resend_verification($1, $2, $3, $4)", 4, &a->stmt.resend},
        {"auth.forgot", "SELECT crm.auth_password_forgot($1, $2, $3, $4, $5, $6, $7)", 7, &a->stmt.forgot},
        {"auth.token_peek", "SELECT * FROM crm.auth_email_token_peek($1, $2)", 2, &a->stmt.token_peek},
        {"auth.reset", "SELECT crm.auth_password_reset($1, $2, $3, $4, $5, $6)", 6, &a->stmt.reset},
        {"auth.accept", "SELECT * FROM crm.auth_accept_invitation($1, $2, $3, $4, $5, $6, $7)", 7, &a->stmt.accept},
    };
    return crm_auth_prepare_all(pool, defs, sizeof(defs) / sizeof(defs[0]));
}

int crm_auth_account_routes(crm_app_t *app)
{
    static const crm_auth_route_t routes[] = {
        {CRM_HTTP_POST, "/v1/auth/register", on_register},
        {CRM_HTTP_POST, "/v1/auth/verify-email", on_verify_email},
        {CRM_HTTP_POST, "/v1/auth/resend-verification", on_resend_verification},
        {CRM_HTTP_POST, "/v1/auth/password/forgot", on_password_forgot},
        {CRM_HTTP_POST, "/v1/auth/password/reset", on_password_reset},
        {CRM_HTTP_POST, "/v1/auth/accept-invitation", on_accept_invitation},
    };
    return crm_auth_add_routes(app, routes, sizeof(routes) / sizeof(routes[0]));
}
