/*
 * The signed-in side of accounts (issue #4): who am I, the members of the session's tenant, invitations, changes
 * of role and status, and the tenant's audit log.
 *
 *   GET   /v1/me                  any active member
 *   GET   /v1/users               users.read     keyset on (membership created_at, user_id)
 *   GET   /v1/users/{id}          users.read     another tenant's user is 404 like an unknown one
 *   PATCH /v1/users/{id}          users.manage   crm.auth_update_member decides; the answer is read in the same
 *                                                transaction, so it shows the member as the change left it
 *   POST  /v1/users/invitations   users.invite   crm.auth_invite decides and enqueues the mail composed here
 *   GET   /v1/audit-log           audit.read     newest first, keyset on audit_id
 *
 * Reads run as crmd_app under row-level security with the session's tenant set on the unit; writes go through the
 * SECURITY DEFINER functions of sql/0005_auth.sql, which check every rule and append the audit row in the
 * transaction that makes the change. Timestamps are formatted by PostgreSQL as RFC 3339 UTC with milliseconds; the
 * users cursor keeps microseconds, so that two members created within one millisecond are neither skipped nor
 * repeated across pages.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "auth/auth.h"
#include "err.h"
#include "http_pg.h"

#define LIST_DEFAULT 50
#define LIST_MAX     200
/* Longest accepted RFC 3339 date-time (with nine fraction digits and an offset it is 35 characters). */
#define TIMESTAMP_MAX 40

/* Columns of sql_users_list and sql_user_get. */
enum { USER_ID = 0, USER_EMAIL, USER_NAME, USER_ROLE, USER_STATUS, USER_CREATED_AT, USER_CURSOR };
/* Columns of sql_me. */
enum { ME_ROLE = 0, ME_PERMISSIONS, ME_EMAIL, ME_NAME, ME_VERIFIED_AT, ME_CREATED_AT, ME_TENANT_NAME };

/* Columns of sql_audit_list. */
enum {
    AUDIT_ID = 0,
    AUDIT_OCCURRED_AT,
    AUDIT_ACTOR_TYPE,
    AUDIT_ACTOR_ID,
    AUDIT_ACTION,
    AUDIT_TARGET_TYPE,
    AUDIT_TARGET_ID,
    AUDIT_IP,
    AUDIT_REQUEST_ID,
    AUDIT_METADATA
};

/* The statements. Timestamps are formatted as RFC 3339 UTC, with milliseconds for clients and with microseconds in
 * a cursor. First the check crm_auth_require runs (shared with session.c). */
static const char sql_principal[] = "SELECT * FROM crm.auth_principal($1::uuid, $2::uuid)";

static const char sql_me[] = "SELECT p.role, array_to_json(p.permissions)::text, p.email, p.name,"
                             " to_char(p.email_verified_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
                             " to_char(p.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
                             " p.tenant_name"
                             " FROM crm.auth_principal($1::uuid, $2::uuid) p";

static const char sql_invite[] =
    "SELECT i.outcome, i.invitation_id, i.role,"
    " to_char(i.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
    " FROM crm.auth_invite($1::uuid, $2::text, $3::text, $4::bytea, $5::integer, $6::jsonb, $7::inet, $8::text,"
    " $9::text) i";

static const char sql_update_member[] =
    "SELECT * FROM crm.auth_update_member($1::uuid, $2::uuid, $3::text, $4::text, $5::inet, $6::text, $7::text)";

/* $1, $2: the cursor (created_at with microseconds, user_id) or both NULL for the first page; $3: limit + 1. */
static const char sql_users_list[] =
    "SELECT m.user_id, u.email, u.name, m.role, m.status,"
    " to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
    " to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    " FROM crm.memberships m JOIN crm.users u ON u.user_id = m.user_id"
    " WHERE m.tenant_id = crm.current_tenant()"
    " AND ($1::timestamptz IS NULL OR (m.created_at, m.user_id) > ($1::timestamptz, $2::uuid))"
    " ORDER BY m.created_at, m.user_id LIMIT $3::integer";

static const char sql_user_get[] = "SELECT m.user_id, u.email, u.name, m.role, m.status,"
                                   " to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
                                   " to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
                                   " FROM crm.memberships m JOIN crm.users u ON u.user_id = m.user_id"
                                   " WHERE m.tenant_id = crm.current_tenant() AND m.user_id = $1::uuid";

/* Filters action ($1), actor ($2) and since ($3), each ignored when NULL; $4: the cursor (the last audit_id shown)
 * or NULL; $5: limit + 1. */
static const char sql_audit_list[] =
    "SELECT a.audit_id,"
    " to_char(a.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
    " a.actor_type, a.actor_id, a.action, a.target_type, a.target_id, host(a.ip), a.request_id, a.metadata::text"
    " FROM crm.audit_log a"
    " WHERE a.tenant_id = crm.current_tenant()"
    " AND ($1::text IS NULL OR a.action = $1::text)"
    " AND ($2::text IS NULL OR a.actor_id = $2::text)"
    " AND ($3::timestamptz IS NULL OR a.occurred_at >= $3::timestamptz)"
    " AND ($4::bigint IS NULL OR a.audit_id < $4::bigint)"
    " ORDER BY a.audit_id DESC LIMIT $5::integer";

/* Per-request state across the database callbacks (in request memory; replaces crm_auth_require's own). */
typedef struct st_users_req_t {
    const crm_principal_t *who;
    long long limit;
    const char *user_id; /* PATCH: the member changed, lower case */
    const char *email;   /* invitation: the normalised address */
    const char *role;    /* invitation: the requested role or NULL */
} users_req_t;

static users_req_t *state_of(crm_http_req_t *req, const crm_principal_t *who)
{
    users_req_t *st = h2o_mem_alloc_pool(&req->h2o->pool, sizeof(*st));
    memset(st, 0, sizeof(*st));
    st->who = who;
    req->handler_data = st;
    return st;
}

static json_t *text_or_null(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? json_null() : json_string(PQgetvalue(r, row, col));
}

static void respond_json(crm_http_req_t *req, int status, json_t *body)
{
    if (body == NULL) {
        crm_http_respond_error(req, CRM_E_NOMEM);
        return;
    }
    crm_http_respond_json(req, status, body);
}

static void respond_not_found(crm_http_req_t *req)
{
    crm_http_respond_problem(req, 404, "not-found", "Not found", "No member of this tenant has this id.", NULL);
}

/* A copy of s in request memory with ASCII letters lower-cased (ids are compared as text in places). */
static char *lower_dup(crm_http_req_t *req, const char *s)
{
    size_t n = strlen(s);
    char *out = h2o_mem_alloc_pool(&req->h2o->pool, n + 1);
    for (size_t i = 0; i <= n; ++i)
        out[i] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] - 'A' + 'a' : s[i]);
    return out;
}

/* A role name as the roles table allows it (^[a-z][a-z_]{0,31}$); anything else cannot be a known role. */
static int role_shaped(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 32 || s[0] < 'a' || s[0] > 'z')
        return 0;
    for (size_t i = 1; i < n; ++i)
        if (!((s[i] >= 'a' && s[i] <= 'z') || s[i] == '_'))
            return 0;
    return 1;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Checks that s is an RFC 3339 date-time (full-date "T" full-time) and copies it into out (TIMESTAMP_MAX + 1 bytes)
 * the way PostgreSQL reads it: upper-case T and Z, and a space where a '+' of the offset arrived unencoded in the
 * query string (which decodes '+' as a space). Returns 1, or 0 when s is not one. Whether the calendar agrees (month
 * 13, February 30, hour 25) is left to PostgreSQL, which answers SQLSTATE 22007/22008/22009. */
static int rfc3339_copy(const char *s, char out[TIMESTAMP_MAX + 1])
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    size_t n = strlen(s), i;
    if (n < sizeof(shape) || n > TIMESTAMP_MAX)
        return 0;
    for (i = 0; i < sizeof(shape) - 1; ++i) {
        char want = shape[i], c = s[i];
        if (want == 'd' ? !is_digit(c) : want == 'T' ? (c != 'T' && c != 't' && c != ' ') : c != want)
            return 0;
        out[i] = want == 'T' ? 'T' : c;
    }
    if (s[i] == '.') {
        out[i] = s[i];
        size_t start = ++i;
        while (i < n && is_digit(s[i])) {
            out[i] = s[i];
            ++i;
        }
        if (i == start || i - start > 9)
            return 0;
    }
    if ((s[i] == 'Z' || s[i] == 'z') && i + 1 == n) {
        out[i++] = 'Z';
    } else if ((s[i] == '+' || s[i] == '-' || s[i] == ' ') && i + 6 == n && is_digit(s[i + 1]) && is_digit(s[i + 2]) &&
               s[i + 3] == ':' && is_digit(s[i + 4]) && is_digit(s[i + 5])) {
        out[i] = s[i] == ' ' ? '+' : s[i];
        memcpy(out + i + 1, s + i + 1, 5);
        i += 6;
    } else {
        return 0;
    }
    out[i] = '\0';
    return 1;
}

static int is_datetime_error(crm_pg_unit_t *u, int err)
{
    if (err != CRM_E_DB)
        return 0;
    const char *state = crm_pg_unit_sqlstate(u);
    return state != NULL && (strcmp(state, "22007") == 0 || strcmp(state, "22008") == 0 || strcmp(state, "22009") == 0);
}

static json_t *user_json(PGresult *r, int row)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "id", PQgetvalue(r, row, USER_ID), "email",
                     PQgetvalue(r, row, USER_EMAIL), "name", PQgetvalue(r, row, USER_NAME), "role",
                     PQgetvalue(r, row, USER_ROLE), "status", PQgetvalue(r, row, USER_STATUS), "created_at",
                     PQgetvalue(r, row, USER_CREATED_AT));
}

/* ---- GET /v1/me ---- */

static void on_me_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    users_req_t *st = req->handler_data;
    PGresult *r = crm_pg_unit_result(u, 0);
    if (PQntuples(r) != 1) {
        /* The membership vanished between the check and this read: the token no longer stands for anyone. */
        crm_auth_respond_unauthorized(req);
        return;
    }
    json_t *permissions = json_loads(PQgetvalue(r, 0, ME_PERMISSIONS), JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_array(permissions)) {
        json_decref(permissions);
        permissions = json_array();
    }
    respond_json(req, 200,
                 json_pack("{s:{s:s, s:s, s:s, s:o, s:s}, s:{s:s, s:s}, s:s, s:o}", "user", "id", st->who->user_id,
                           "email", PQgetvalue(r, 0, ME_EMAIL), "name", PQgetvalue(r, 0, ME_NAME), "email_verified_at",
                           text_or_null(r, 0, ME_VERIFIED_AT), "created_at", PQgetvalue(r, 0, ME_CREATED_AT), "tenant",
                           "id", st->who->tenant_id, "name", PQgetvalue(r, 0, ME_TENANT_NAME), "role",
                           PQgetvalue(r, 0, ME_ROLE), "permissions", permissions));
}

static void on_me_authorized(crm_http_req_t *req, const crm_principal_t *who)
{
    state_of(req, who);
    crm_http_pg_submit_one(req, crm_api_app(req)->pool, CRM_PG_READ_ONLY, who->tenant_id, crm_auth_of(req)->stmt.me, 2,
                           (const char *[]){who->user_id, who->tenant_id}, on_me_done);
}

static void on_me(crm_http_req_t *req)
{
    crm_auth_require(req, NULL, on_me_authorized);
}

/* ---- GET /v1/users ---- */

static void on_users_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_resume(data);
    if (req == NULL)
        return;
    if (is_datetime_error(u, err)) {
        crm_api_invalid(req, "cursor", "is not a cursor this endpoint returned");
        return;
    }
    if (err != 0) {
        crm_http_pg_respond_error(req, u, err);
        return;
    }
    users_req_t *st = req->handler_data;
    PGresult *r = crm_pg_unit_result(u, 0);
    int n = PQntuples(r);
    int shown = n > st->limit ? (int)st->limit : n;
    json_t *items = json_array();
    for (int i = 0; i < shown; ++i)
        json_array_append_new(items, user_json(r, i));
    /* One row more than asked for was fetched: its presence says whether there is a next page. */
    json_t *next = n > st->limit ? crm_api_cursor_encode(json_pack("[s, s]", PQgetvalue(r, shown - 1, USER_CURSOR),
                                                                   PQgetvalue(r, shown - 1, USER_ID)))
                                 : json_null();
    respond_json(req, 200, json_pack("{s:o, s:o}", "data", items, "next_cursor", next));
}

static void on_users_authorized(crm_http_req_t *req, const crm_principal_t *who)
{
    users_req_t *st = state_of(req, who);
    if (!crm_api_query_int(req, "limit", 1, LIST_MAX, 0, LIST_DEFAULT, &st->limit))
        return;
    json_t *cursor = NULL;
    if (!crm_api_cursor_decode(req, &cursor))
        return;
    char after_at[TIMESTAMP_MAX + 1];
    const char *after_id = NULL;
    if (cursor != NULL) {
        const char *at = json_string_value(json_array_get(cursor, 0));
        after_id = json_string_value(json_array_get(cursor, 1));
        if (json_array_size(cursor) != 2 || at == NULL || !rfc3339_copy(at, after_at) || !crm_api_is_uuid(after_id)) {
            json_decref(cursor);
            crm_api_invalid(req, "cursor", "is not a cursor this endpoint returned");
            return;
        }
        after_id = lower_dup(req, after_id);
        json_decref(cursor);
    }
    char limit[24];
    snprintf(limit, sizeof(limit), "%lld", st->limit + 1);
    crm_auth_t *a = crm_auth_of(req);
    crm_http_pg_submit_one(req, crm_api_app(req)->pool, CRM_PG_READ_ONLY, who->tenant_id, a->stmt.users_list, 3,
                           (const char *[]){after_id != NULL ? after_at : NULL, after_id, limit}, on_users_done);
}

static void on_users(crm_http_req_t *req)
{
    crm_auth_require(req, "users.read", on_users_authorized);
}

/* ---- GET /v1/users/{id} ---- */

static void on_user_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    PGresult *r = crm_pg_unit_result(u, 0);
    if (PQntuples(r) != 1) {
        respond_not_found(req);
        return;
    }
    respond_json(req, 200, user_json(r, 0));
}

static void on_user_authorized(crm_http_req_t *req, const crm_principal_t *who)
{
    state_of(req, who);
    if (req->nparams != 1 || !crm_api_is_uuid(req->params[0].base)) {
        respond_not_found(req);
        return;
    }
    crm_http_pg_submit_one(req, crm_api_app(req)->pool, CRM_PG_READ_ONLY, who->tenant_id,
                           crm_auth_of(req)->stmt.user_get, 1, (const char *[]){req->params[0].base}, on_user_done);
}

static void on_user(crm_http_req_t *req)
{
    crm_auth_require(req, "users.read", on_user_authorized);
}

/* ---- PATCH /v1/users/{id} ---- */

static void on_patch_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    users_req_t *st = req->handler_data;
    PGresult *r = crm_pg_unit_result(u, 0);
    const char *outcome = PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "";
    if (strcmp(outcome, "ok") == 0) {
        /* This process stops honouring the member's old role or status at once; the others within
         * CRMD_AUTH_CACHE_MS. */
        crm_auth_forget(crm_auth_of(req), st->user_id);
        PGresult *item = crm_pg_unit_result(u, 1);
        if (item == NULL || PQntuples(item) != 1) {
            respond_not_found(req);
            return;
        }
        respond_json(req, 200, user_json(item, 0));
    } else if (strcmp(outcome, "not_found") == 0) {
        respond_not_found(req);
    } else if (strcmp(outcome, "self") == 0) {
        crm_http_respond_problem(req, 409, "conflict", "Conflict", "You cannot change your own membership.", NULL);
    } else if (strcmp(outcome, "forbidden") == 0) {
        crm_http_respond_problem(req, 403, "forbidden", "Forbidden",
                                 "Only an owner may grant the owner role or change an owner.", NULL);
    } else if (strcmp(outcome, "last_owner") == 0) {
        crm_http_respond_problem(req, 409, "conflict", "Conflict", "The tenant would be left without an active owner.",
                                 NULL);
    } else if (strcmp(outcome, "unknown_role") == 0) {
        crm_api_invalid(req, "role", "is not a known role");
    } else {
        crm_http_respond_error(req, CRM_E_STATE);
    }
}

static void on_patch_authorized(crm_http_req_t *req, const crm_principal_t *who)
{
    users_req_t *st = state_of(req, who);
    if (req->nparams != 1 || !crm_api_is_uuid(req->params[0].base)) {
        respond_not_found(req);
        return;
    }
    const char *role, *status;
    const crm_api_field_t fields[] = {
        {"role", 0, 1, 32, &role},
        {"status", 0, 1, 16, &status},
    };
    if (!crm_api_read_body(req, fields, sizeof(fields) / sizeof(fields[0])))
        return;
    json_t *errors = json_array();
    if (role == NULL && status == NULL)
        json_array_append_new(errors, json_pack("{s:s, s:s}", "field", "", "message", "must set role, status or both"));
    if (role != NULL && !role_shaped(role))
        json_array_append_new(errors, json_pack("{s:s, s:s}", "field", "role", "message", "is not a known role"));
    if (status != NULL && strcmp(status, "active") != 0 && strcmp(status, "disabled") != 0)
        json_array_append_new(errors,
                              json_pack("{s:s, s:s}", "field", "status", "message", "must be active or disabled"));
    if (json_array_size(errors) != 0) {
        crm_api_invalid_many(req, errors);
        return;
    }
    json_decref(errors);
    st->user_id = lower_dup(req, req->params[0].base);

    char ip[64];
    const char *client_ip = crm_auth_client_ip(req, ip, sizeof(ip));
    /* Two statements, one transaction: the answer shows the member as the change left it. */
    crm_auth_t *a = crm_auth_of(req);
    crm_pg_unit_t *u = crm_pg_unit_new(a->app->pool, CRM_PG_TX);
    if (u == NULL || crm_pg_unit_set_tenant(u, who->tenant_id) != 0 ||
        crm_pg_unit_add(u, a->stmt.update_member, 7,
                        (const char *[]){who->user_id, st->user_id, role, status, client_ip, crm_auth_user_agent(req),
                                         req->request_id},
                        NULL) < 0 ||
        crm_pg_unit_add(u, a->stmt.user_get, 1, (const char *[]){st->user_id}, NULL) < 0) {
        crm_pg_unit_free(u);
        crm_http_respond_error(req, CRM_E_NOMEM);
        return;
    }
    crm_http_pg_submit(req, u, on_patch_done);
}

static void on_patch(crm_http_req_t *req)
{
    crm_auth_require(req, "users.manage", on_patch_authorized);
}

/* ---- POST /v1/users/invitations ---- */

static void on_invite_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    users_req_t *st = req->handler_data;
    PGresult *r = crm_pg_unit_result(u, 0);
    const char *outcome = PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "";
    if (strcmp(outcome, "ok") == 0) {
        respond_json(req, 201,
                     json_pack("{s:I, s:s, s:s, s:s}", "id", (json_int_t)strtoll(PQgetvalue(r, 0, 1), NULL, 10),
                               "email", st->email, "role", PQgetvalue(r, 0, 2), "expires_at", PQgetvalue(r, 0, 3)));
    } else if (strcmp(outcome, "unknown_role") == 0) {
        crm_api_invalid(req, "role", "is not a known role");
    } else if (strcmp(outcome, "forbidden") == 0) {
        crm_http_respond_problem(req, 403, "forbidden", "Forbidden", "Only an owner may invite an owner.", NULL);
    } else if (strcmp(outcome, "member") == 0) {
        crm_http_respond_problem(req, 409, "conflict", "Conflict",
                                 "This address already belongs to a member of the tenant.", NULL);
    } else {
        crm_http_respond_error(req, CRM_E_STATE);
    }
}

/* A copy of s (at most 1 KiB of it) in request memory with control characters turned into spaces: a tenant name
 * goes into a mail's Subject, which a CR or LF would break. */
static char *one_line(crm_http_req_t *req, const char *s)
{
    size_t n = strnlen(s, 1024);
    char *out = h2o_mem_alloc_pool(&req->h2o->pool, n + 1);
    for (size_t i = 0; i < n; ++i)
        out[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? ' ' : s[i];
    out[n] = '\0';
    return out;
}

/* The tenant's name is known: composes the mail with a new token and submits the invitation. The token exists only
 * on this stack and in the mail, both wiped before returning; the database keeps its digest. */
static void on_invite_tenant(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    users_req_t *st = req->handler_data;
    PGresult *r = crm_pg_unit_result(u, 0);
    if (PQntuples(r) != 1) {
        crm_http_respond_error(req, CRM_E_STATE);
        return;
    }
    const char *tenant = one_line(req, PQgetvalue(r, 0, ME_TENANT_NAME));
    const char *inviter = one_line(req, PQgetvalue(r, 0, ME_NAME));

    char token[CRM_AUTH_TOKEN_LEN + 1], digest[CRM_AUTH_DIGEST_PARAM_LEN + 1], subject[1100], intro[2200];
    snprintf(subject, sizeof(subject), "You are invited to %s", tenant);
    snprintf(intro, sizeof(intro),
             "%s has invited you to join %s on crmd. To accept, open this link within 7 days:", inviter, tenant);
    const char *payload = NULL;
    if (crm_auth_new_token(token, digest) != 0 ||
        (payload = crm_auth_mail_payload(req, st->email, NULL, subject, intro, "/accept-invitation", token)) == NULL) {
        crm_http_respond_error(req, CRM_E_STATE);
        return;
    }

    char ip[64], ttl[16];
    const char *client_ip = crm_auth_client_ip(req, ip, sizeof(ip));
    snprintf(ttl, sizeof(ttl), "%d", CRM_AUTH_INVITE_TTL_S);
    crm_http_pg_submit_one(req, crm_api_app(req)->pool, 0, st->who->tenant_id, crm_auth_of(req)->stmt.invite, 9,
                           (const char *[]){st->who->user_id, st->email, st->role, digest, ttl, payload, client_ip,
                                            crm_auth_user_agent(req), req->request_id},
                           on_invite_done);
}

static void on_invite_authorized(crm_http_req_t *req, const crm_principal_t *who)
{
    users_req_t *st = state_of(req, who);
    const char *email, *role;
    const crm_api_field_t fields[] = {
        {"email", 1, 1, 320, &email},
        {"role", 0, 1, 32, &role},
    };
    if (!crm_api_read_body(req, fields, sizeof(fields) / sizeof(fields[0])))
        return;
    /* crm_api_read_body's copies are the request's own, so normalising in place is safe. */
    st->email = crm_auth_normalize_email((char *)email);
    json_t *errors = json_array();
    if (st->email == NULL)
        json_array_append_new(errors,
                              json_pack("{s:s, s:s}", "field", "email", "message", "must be a valid email address"));
    if (role != NULL && !role_shaped(role))
        json_array_append_new(errors, json_pack("{s:s, s:s}", "field", "role", "message", "is not a known role"));
    if (json_array_size(errors) != 0) {
        crm_api_invalid_many(req, errors);
        return;
    }
    json_decref(errors);
    st->role = role;

    /* The mail's subject names the tenant: read it first, then compose and submit the invitation. */
    crm_http_pg_submit_one(req, crm_api_app(req)->pool, CRM_PG_READ_ONLY, who->tenant_id, crm_auth_of(req)->stmt.me, 2,
                           (const char *[]){who->user_id, who->tenant_id}, on_invite_tenant);
}

static void on_invite(crm_http_req_t *req)
{
    crm_auth_require(req, "users.invite", on_invite_authorized);
}

/* ---- GET /v1/audit-log ---- */

static json_t *audit_json(PGresult *r, int row)
{
    json_t *metadata = json_loads(PQgetvalue(r, row, AUDIT_METADATA), JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(metadata)) {
        json_decref(metadata);
        metadata = json_object();
    }
    return json_pack("{s:I, s:s, s:s, s:o, s:s, s:o, s:o, s:o, s:o, s:o}", "id",
                     (json_int_t)strtoll(PQgetvalue(r, row, AUDIT_ID), NULL, 10), "occurred_at",
                     PQgetvalue(r, row, AUDIT_OCCURRED_AT), "actor_type", PQgetvalue(r, row, AUDIT_ACTOR_TYPE),
                     "actor_id", text_or_null(r, row, AUDIT_ACTOR_ID), "action", PQgetvalue(r, row, AUDIT_ACTION),
                     "target_type", text_or_null(r, row, AUDIT_TARGET_TYPE), "target_id",
                     text_or_null(r, row, AUDIT_TARGET_ID), "ip", text_or_null(r, row, AUDIT_IP), "request_id",
                     text_or_null(r, row, AUDIT_REQUEST_ID), "metadata", metadata);
}

static void on_audit_done(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_resume(data);
    if (req == NULL)
        return;
    if (is_datetime_error(u, err)) {
        crm_api_invalid(req, "since", "must be an RFC 3339 date-time");
        return;
    }
    if (err != 0) {
        crm_http_pg_respond_error(req, u, err);
        return;
    }
    users_req_t *st = req->handler_data;
    PGresult *r = crm_pg_unit_result(u, 0);
    int n = PQntuples(r);
    int shown = n > st->limit ? (int)st->limit : n;
    json_t *items = json_array();
    for (int i = 0; i < shown; ++i)
        json_array_append_new(items, audit_json(r, i));
    json_t *next =
        n > st->limit
            ? crm_api_cursor_encode(json_pack("[I]", (json_int_t)strtoll(PQgetvalue(r, shown - 1, AUDIT_ID), NULL, 10)))
            : json_null();
    respond_json(req, 200, json_pack("{s:o, s:o}", "data", items, "next_cursor", next));
}

static void on_audit_authorized(crm_http_req_t *req, const crm_principal_t *who)
{
    users_req_t *st = state_of(req, who);
    const char *action = crm_http_query(req, "action");
    const char *actor = crm_http_query(req, "actor");
    const char *since = crm_http_query(req, "since");
    json_t *errors = json_array();
    if (action != NULL && (action[0] == '\0' || strlen(action) > 64))
        json_array_append_new(errors,
                              json_pack("{s:s, s:s}", "field", "action", "message", "must be 1 to 64 characters long"));
    if (actor != NULL && !crm_api_is_uuid(actor))
        json_array_append_new(errors, json_pack("{s:s, s:s}", "field", "actor", "message", "must be a user id (UUID)"));
    char since_ts[TIMESTAMP_MAX + 1];
    if (since != NULL && !rfc3339_copy(since, since_ts))
        json_array_append_new(errors,
                              json_pack("{s:s, s:s}", "field", "since", "message", "must be an RFC 3339 date-time"));
    if (json_array_size(errors) != 0) {
        crm_api_invalid_many(req, errors);
        return;
    }
    json_decref(errors);
    if (!crm_api_query_int(req, "limit", 1, LIST_MAX, 0, LIST_DEFAULT, &st->limit))
        return;
    json_t *cursor = NULL;
    if (!crm_api_cursor_decode(req, &cursor))
        return;
    char before[24];
    int has_before = cursor != NULL;
    if (has_before) {
        json_t *id = json_array_get(cursor, 0);
        json_int_t v = json_is_integer(id) && json_array_size(cursor) == 1 ? json_integer_value(id) : 0;
        json_decref(cursor);
        if (v < 1) {
            crm_api_invalid(req, "cursor", "is not a cursor this endpoint returned");
            return;
        }
        snprintf(before, sizeof(before), "%lld", (long long)v);
    }
    char limit[24];
    snprintf(limit, sizeof(limit), "%lld", st->limit + 1);
    crm_http_pg_submit_one(req, crm_api_app(req)->pool, CRM_PG_READ_ONLY, who->tenant_id,
                           crm_auth_of(req)->stmt.audit_list, 5,
                           (const char *[]){action, actor != NULL ? lower_dup(req, actor) : NULL,
                                            since != NULL ? since_ts : NULL, has_before ? before : NULL, limit},
                           on_audit_done);
}

static void on_audit(crm_http_req_t *req)
{
    crm_auth_require(req, "audit.read", on_audit_authorized);
}

/* ---- registration ---- */

int crm_auth_users_prepare(crm_auth_t *a, crm_pg_pool_t *pool)
{
    const crm_auth_stmt_def_t defs[] = {
        {"auth.principal", sql_principal, 2, &a->stmt.principal},
        {"auth.me", sql_me, 2, &a->stmt.me},
        {"auth.invite", sql_invite, 9, &a->stmt.invite},
        {"auth.update_member", sql_update_member, 7, &a->stmt.update_member},
        {"auth.users_list", sql_users_list, 3, &a->stmt.users_list},
        {"auth.user_get", sql_user_get, 1, &a->stmt.user_get},
        {"auth.audit_list", sql_audit_list, 5, &a->stmt.audit_list},
    };
    return crm_auth_prepare_all(pool, defs, sizeof(defs) / sizeof(defs[0]));
}

int crm_auth_users_routes(crm_app_t *app)
{
    static const crm_auth_route_t routes[] = {
        {CRM_HTTP_GET, "/v1/me", on_me},
        {CRM_HTTP_GET, "/v1/users", on_users},
        {CRM_HTTP_POST, "/v1/users/invitations", on_invite},
        {CRM_HTTP_GET, "/v1/users/{id}", on_user},
        {CRM_HTTP_PATCH, "/v1/users/{id}", on_patch},
        {CRM_HTTP_GET, "/v1/audit-log", on_audit},
    };
    return crm_auth_add_routes(app, routes, sizeof(routes) / sizeof(routes[0]));
}
