/*
 * Contacts, brands, tags and settings over HTTP: see contacts.h. The routes are one table; each entry names the
 * database operation it runs, the permission it needs and how its request is read.
 */
#include "contacts/contacts.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "auth/auth.h"
#include "crypto.h"
#include "domain.h"
#include "err.h"
#include "http_pg.h"
#include "jobs.h"
#include "log.h"

typedef enum {
    KIND_WRITE = 0,  /* crm.api_write */
    KIND_READ,       /* crm.api_read */
    KIND_GET_CONTACT /* crm.contact_get, the hot path */
} route_kind_t;

enum {
    F_BODY = 1u << 0,   /* a JSON object body is required */
    F_EMAILS = 1u << 1, /* the body holds contact addresses ("email", or items[].email) */
    F_DOMAIN = 1u << 2, /* the body holds a brand's domain and website */
    F_CREATE = 1u << 3, /* brand creation: the domain may come from the website */
    F_BULK = 1u << 4,   /* the larger body limit; deleting and restoring also need contacts.delete */
};

typedef struct st_contacts_route_t {
    crm_http_method_t method;
    const char *pattern;
    route_kind_t kind;
    const char *op; /* crm.api_write / crm.api_read operation */
    const char *permission;
    unsigned flags;
} contacts_route_t;

static void on_request(crm_http_req_t *req);

static const contacts_route_t routes[] = {
    {CRM_HTTP_POST, "/v1/contacts", KIND_WRITE, "contact.create", "contacts.write", F_BODY | F_EMAILS},
    {CRM_HTTP_GET, "/v1/contacts", KIND_READ, "contact.list", "contacts.read", 0},
    {CRM_HTTP_POST, "/v1/contacts:upsert-by-email", KIND_WRITE, "contact.upsert", "contacts.write", F_BODY | F_EMAILS},
    {CRM_HTTP_POST, "/v1/contacts/bulk", KIND_WRITE, "contact.bulk", "contacts.write", F_BODY | F_EMAILS | F_BULK},
    {CRM_HTTP_GET, "/v1/contacts/{id}", KIND_GET_CONTACT, NULL, "contacts.read", 0},
    {CRM_HTTP_PATCH, "/v1/contacts/{id}", KIND_WRITE, "contact.update", "contacts.write", F_BODY | F_EMAILS},
    {CRM_HTTP_DELETE, "/v1/contacts/{id}", KIND_WRITE, "contact.delete", "contacts.delete", 0},
    {CRM_HTTP_POST, "/v1/contacts/{id}/restore", KIND_WRITE, "contact.restore", "contacts.delete", 0},
    {CRM_HTTP_PUT, "/v1/contacts/{id}/tags/{name}", KIND_WRITE, "contact.tag", "contacts.write", 0},
    {CRM_HTTP_DELETE, "/v1/contacts/{id}/tags/{name}", KIND_WRITE, "contact.untag", "contacts.write", 0},
    {CRM_HTTP_GET, "/v1/tags", KIND_READ, "tag.list", "contacts.read", 0},
    {CRM_HTTP_POST, "/v1/brands", KIND_WRITE, "brand.create", "contacts.write", F_BODY | F_DOMAIN | F_CREATE},
    {CRM_HTTP_GET, "/v1/brands", KIND_READ, "brand.list", "contacts.read", 0},
    {CRM_HTTP_GET, "/v1/brands/{id}", KIND_READ, "brand.get", "contacts.read", 0},
    {CRM_HTTP_PATCH, "/v1/brands/{id}", KIND_WRITE, "brand.update", "contacts.write", F_BODY | F_DOMAIN},
    {CRM_HTTP_DELETE, "/v1/brands/{id}", KIND_WRITE, "brand.delete", "contacts.delete", 0},
    {CRM_HTTP_POST, "/v1/brands/{id}/restore", KIND_WRITE, "brand.restore", "contacts.delete", 0},
    {CRM_HTTP_GET, "/v1/brands/{id}/contacts", KIND_READ, "brand.contacts", "contacts.read", 0},
    {CRM_HTTP_GET, "/v1/settings/lead-scoring", KIND_READ, "settings.lead_scoring", "settings.read", 0},
    {CRM_HTTP_PUT, "/v1/settings/lead-scoring", KIND_WRITE, "settings.lead_scoring", "settings.write", F_BODY},
    {CRM_HTTP_GET, "/v1/settings/custom-fields", KIND_READ, "settings.custom_fields", "settings.read", 0},
    {CRM_HTTP_PUT, "/v1/settings/custom-fields/{name}", KIND_WRITE, "settings.custom_field_put", "settings.write",
     F_BODY},
    {CRM_HTTP_DELETE, "/v1/settings/custom-fields/{name}", KIND_WRITE, "settings.custom_field_delete", "settings.write",
     0},
};
#define NROUTES (sizeof(routes) / sizeof(routes[0]))

/* The query parameters any list reads; crm.api_read validates those its operation uses and ignores the rest. */
static const char *const list_params[] = {"q",    "tag",   "brand_id",        "owner_id", "stage", "updated_since",
                                          "sort", "limit", "include_deleted", "cursor"};

struct st_crm_contacts_t {
    crm_pg_stmt_t write, read, get, rescore;
    /* routes[] entry of each registered route, by crm_route_t.id */
    const contacts_route_t **by_route;
    size_t nby_route;
};

static const char sql_write[] = "SELECT status, etag, location, replayed, body FROM crm.api_write($1::uuid, $2::text,"
                                " $3::text, $4::text, $5::text, $6::jsonb, $7::text, $8::text, $9::inet, $10::text,"
                                " $11::text)";
static const char sql_read[] = "SELECT status, etag, body FROM crm.api_read($1::text, $2::text, $3::jsonb)";
static const char sql_get[] = "SELECT version, body FROM crm.contact_get($1::uuid, $2::boolean)";
static const char sql_rescore[] = "SELECT crm.contacts_rescore_batch($1::jsonb)";

/* Columns of sql_write. */
enum { W_STATUS = 0, W_ETAG, W_LOCATION, W_REPLAYED, W_BODY };
/* Columns of sql_read. */
enum { R_STATUS = 0, R_ETAG, R_BODY };

static struct st_crm_contacts_t *state_of(crm_http_req_t *req)
{
    return crm_api_app(req)->contacts;
}

static const contacts_route_t *route_of(crm_http_req_t *req)
{
    struct st_crm_contacts_t *c = state_of(req);
    return req->route->id < c->nby_route ? c->by_route[req->route->id] : NULL;
}

/* The value of path parameter `name` (percent-decoded, NUL-terminated), or NULL. */
static const char *path_param(crm_http_req_t *req, const char *name)
{
    for (size_t i = 0; i < req->nparams && i < req->route->nparams; ++i)
        if (strcmp(req->route->param_names[i], name) == 0)
            return req->params[i].base;
    return NULL;
}

/* A copy of a header value as a C string in request memory, or NULL when absent. */
static const char *header_dup(crm_http_req_t *req, const char *name)
{
    size_t len;
    const char *v = crm_http_header(req, name, &len);
    if (v == NULL)
        return NULL;
    return h2o_strdup(&req->h2o->pool, v, len).base;
}

/* JSON text of v in request memory (NULL on failure). */
static const char *dump(crm_http_req_t *req, const json_t *v)
{
    size_t need = json_dumpb(v, NULL, 0, JSON_COMPACT);
    if (need == 0)
        return NULL;
    char *s = h2o_mem_alloc_pool(&req->h2o->pool, need + 1);
    json_dumpb(v, s, need, JSON_COMPACT);
    s[need] = '\0';
    return s;
}

/* ---- answers ---- */

/* Relays an answer composed by the database: 204 without a body, problems with this request's instance, anything
 * else as the JSON text it is. */
static void respond_db(crm_http_req_t *req, int status, const char *etag, const char *location, int replayed,
                       const char *body)
{
    if (etag != NULL)
        crm_http_add_header(req, "etag", etag);
    if (location != NULL)
        crm_http_add_header(req, "location", location);
    if (replayed)
        crm_http_add_header(req, "idempotent-replayed", "true");
    if (status == 204 || body == NULL) {
        crm_http_respond(req, status, NULL, NULL, 0);
    } else if (status >= 400) {
        json_error_t jerr;
        json_t *doc = json_loads(body, 0, &jerr);
        if (doc == NULL)
            crm_log(CRM_LOG_ERROR, "contacts.bad_problem", CRM_LOG_INT("status", status));
        crm_http_respond_problem_doc(req, doc != NULL ? status : 500, doc);
    } else {
        crm_http_respond(req, status, "application/json", body, strlen(body));
    }
}

static const char *text_or_null(PGresult *r, int col)
{
    return PQgetisnull(r, 0, col) ? NULL : PQgetvalue(r, 0, col);
}

static int one_row(crm_http_req_t *req, PGresult *r, int ncols)
{
    if (r == NULL || PQntuples(r) != 1 || PQnfields(r) != ncols) {
        crm_log(CRM_LOG_ERROR, "contacts.bad_result", CRM_LOG_STR("route", req->route->pattern));
        crm_http_respond_error(req, CRM_E_STATE);
        return 0;
    }
    return 1;
}

static void on_written(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    PGresult *r = crm_pg_unit_result(u, 0);
    if (!one_row(req, r, 5))
        return;
    respond_db(req, atoi(PQgetvalue(r, 0, W_STATUS)), text_or_null(r, W_ETAG), text_or_null(r, W_LOCATION),
               PQgetvalue(r, 0, W_REPLAYED)[0] == 't', text_or_null(r, W_BODY));
}

static void on_read(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    PGresult *r = crm_pg_unit_result(u, 0);
    if (!one_row(req, r, 3))
        return;
    respond_db(req, atoi(PQgetvalue(r, 0, R_STATUS)), text_or_null(r, R_ETAG), NULL, 0, text_or_null(r, R_BODY));
}

static void respond_contact_not_found(crm_http_req_t *req)
{
    crm_http_respond_problem(req, 404, "not-found", "Not found", "No contact of this tenant has this id.", NULL);
}

static void on_got_contact(crm_pg_unit_t *u, int err, void *data)
{
    crm_http_req_t *req = crm_http_pg_result(data, u, err);
    if (req == NULL)
        return;
    PGresult *r = crm_pg_unit_result(u, 0);
    if (r == NULL || PQntuples(r) == 0) {
        respond_contact_not_found(req);
        return;
    }
    char etag[16];
    snprintf(etag, sizeof(etag), "\"%s\"", PQgetvalue(r, 0, 0));
    crm_http_add_header(req, "etag", etag);
    crm_http_respond(req, 200, "application/json", PQgetvalue(r, 0, 1), (size_t)PQgetlength(r, 0, 1));
}

/* ---- what the database cannot compute ---- */

/* Adds the domain of address `email` to `free` when it is a free or disposable mail provider's. The address is
 * validated by the database; this only needs its part after the last '@', trimmed and lower-cased. */
static void note_free_mail(json_t *free, const json_t *email)
{
    const char *s = json_string_value(email);
    if (s == NULL)
        return;
    const char *at = strrchr(s, '@');
    if (at == NULL)
        return;
    char domain[256];
    size_t n = 0;
    for (const char *p = at + 1; *p != '\0' && n < sizeof(domain) - 1; ++p)
        domain[n++] = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    while (n > 0 && (domain[n - 1] == ' ' || domain[n - 1] == '\t' || domain[n - 1] == '\r' || domain[n - 1] == '\n'))
        --n;
    domain[n] = '\0';
    if (n > 0 && crm_domain_is_free_mail(domain, n))
        json_array_append_new(free, json_string(domain));
}

/* aux.free: the free-mail domains among the body's addresses (one contact, or a bulk create/update's items). */
static int add_free_mail(json_t *aux, const json_t *body)
{
    json_t *free = json_array();
    if (free == NULL)
        return CRM_E_NOMEM;
    note_free_mail(free, json_object_get(body, "email"));
    json_t *items = json_object_get(body, "items");
    size_t i;
    json_t *item;
    json_array_foreach(items, i, item) note_free_mail(free, json_object_get(item, "email"));
    return json_object_set_new(aux, "free", free) == 0 ? 0 : CRM_E_NOMEM;
}

/* aux.domain (the registrable domain, or null to clear it) or aux.domain_error + aux.domain_field, from the body's
 * domain or, on creation without one, its website. A free-mail provider's domain is refused: a brand is a company. */
static int add_domain(json_t *aux, const json_t *body, int create)
{
    const char *field = "domain";
    const json_t *v = json_object_get(body, "domain");
    if (v == NULL && create && json_is_string(json_object_get(body, "website"))) {
        field = "website";
        v = json_object_get(body, "website");
    }
    if (json_is_null(v))
        return json_object_set_new(aux, "domain", json_null());
    if (!json_is_string(v))
        return 0; /* absent, or a type error the database reports */
    char out[256];
    const char *error = NULL;
    switch (crm_domain_registrable(json_string_value(v), json_string_length(v), out, sizeof(out))) {
    case CRM_DOMAIN_OK:
        if (crm_domain_is_free_mail(out, strlen(out)))
            error = "is a free or disposable mail provider's domain; a brand needs the company's own domain";
        break;
    case CRM_DOMAIN_PUBLIC_SUFFIX:
        error = "is a public suffix, not a registrable domain";
        break;
    default:
        error = strcmp(field, "website") == 0 ? "has no registrable domain name (a URL or host name is expected)"
                                              : "is not a valid domain name";
        break;
    }
    if (error == NULL)
        return json_object_set_new(aux, "domain", json_string(out));
    if (json_object_set_new(aux, "domain_error", json_string(error)) != 0 ||
        json_object_set_new(aux, "domain_field", json_string(field)) != 0)
        return CRM_E_NOMEM;
    return 0;
}

/* An Idempotency-Key is 1..255 printable ASCII characters. */
static int idempotency_key_ok(const char *k, size_t len)
{
    if (len < 1 || len > CRM_CONTACTS_IDEMPOTENCY_KEY_MAX)
        return 0;
    for (size_t i = 0; i < len; ++i)
        if (k[i] < 0x20 || k[i] > 0x7e)
            return 0;
    return 1;
}

/* The key's fingerprint: SHA-256 over user, method, path and body, so that the key answers only the request that
 * first used it. */
static const char *fingerprint(crm_http_req_t *req, const crm_principal_t *who)
{
    size_t ulen = strlen(who->user_id), mlen = req->h2o->method.len, plen = req->path.len,
           blen = req->h2o->entity.base != NULL ? req->h2o->entity.len : 0;
    size_t n = ulen + 1 + mlen + 1 + plen + 1 + blen;
    char *buf = h2o_mem_alloc_pool(&req->h2o->pool, n);
    char *p = buf;
    memcpy(p, who->user_id, ulen), p += ulen, *p++ = '\n';
    memcpy(p, req->h2o->method.base, mlen), p += mlen, *p++ = '\n';
    memcpy(p, req->path.base, plen), p += plen, *p++ = '\n';
    if (blen > 0)
        memcpy(p, req->h2o->entity.base, blen);
    uint8_t digest[32];
    if (crm_sha256(buf, n, digest) != 0)
        return NULL;
    char *hex = h2o_mem_alloc_pool(&req->h2o->pool, 65);
    crm_hex(digest, sizeof(digest), hex);
    return hex;
}

/* ---- handlers ---- */

/* Bulk deleting and restoring take the permission that deleting and restoring one contact take. */
static int bulk_allowed(const crm_principal_t *who, const json_t *body)
{
    const char *op = json_string_value(json_object_get(body, "op"));
    if (op != NULL && (strcmp(op, "delete") == 0 || strcmp(op, "restore") == 0))
        return crm_auth_can(who, "contacts.delete");
    return 1;
}

static void write_authorized(crm_http_req_t *req, const crm_principal_t *who, const contacts_route_t *rt)
{
    json_t *body = NULL, *aux = json_object();
    const char *body_text = NULL, *key = NULL, *fp = NULL;
    if (aux == NULL) {
        crm_http_respond_error(req, CRM_E_NOMEM);
        return;
    }
    if (rt->flags & F_BODY) {
        if (crm_http_parse_json(req, &body) != 0)
            goto done;
        if (!json_is_object(body)) {
            crm_api_invalid(req, "body", "must be a JSON object");
            goto done;
        }
        if ((rt->flags & F_BULK) && !bulk_allowed(who, body)) {
            crm_http_respond_problem(req, 403, "forbidden", "Forbidden", "Your role does not allow this.", NULL);
            goto done;
        }
        body_text = h2o_strdup(&req->h2o->pool, req->h2o->entity.base, req->h2o->entity.len).base;
        if (((rt->flags & F_EMAILS) && add_free_mail(aux, body) != 0) ||
            ((rt->flags & F_DOMAIN) && add_domain(aux, body, (rt->flags & F_CREATE) != 0) != 0)) {
            crm_http_respond_error(req, CRM_E_NOMEM);
            goto done;
        }
    }
    const char *if_match = header_dup(req, "if-match");
    if (if_match != NULL && json_object_set_new(aux, "if_match", json_string(if_match)) != 0) {
        crm_api_invalid(req, "If-Match", "must be ASCII entity tags");
        goto done;
    }
    if (req->method == CRM_HTTP_POST) {
        size_t klen;
        const char *k = crm_http_header(req, "idempotency-key", &klen);
        if (k != NULL) {
            if (!idempotency_key_ok(k, klen)) {
                crm_api_invalid(req, "Idempotency-Key", "must be 1 to 255 printable ASCII characters");
                goto done;
            }
            key = header_dup(req, "idempotency-key");
            if ((fp = fingerprint(req, who)) == NULL) {
                crm_http_respond_error(req, CRM_E_STATE);
                goto done;
            }
        }
    }
    const char *aux_text = dump(req, aux);
    char ip[64];
    const char *values[11] = {who->user_id,
                              rt->op,
                              path_param(req, "id"),
                              path_param(req, "name"),
                              body_text,
                              aux_text,
                              key,
                              fp,
                              crm_auth_client_ip(req, ip, sizeof(ip)),
                              crm_auth_user_agent(req),
                              req->request_id};
    if (aux_text == NULL)
        crm_http_respond_error(req, CRM_E_NOMEM);
    else
        crm_http_pg_submit_one(req, crm_api_app(req)->pool, CRM_PG_TX, who->tenant_id, state_of(req)->write, 11, values,
                               on_written);
done:
    json_decref(body);
    json_decref(aux);
}

static void read_authorized(crm_http_req_t *req, const crm_principal_t *who, const contacts_route_t *rt)
{
    json_t *params = json_object();
    if (params == NULL) {
        crm_http_respond_error(req, CRM_E_NOMEM);
        return;
    }
    for (size_t i = 0; i < sizeof(list_params) / sizeof(list_params[0]); ++i) {
        const char *v = crm_http_query(req, list_params[i]);
        if (v == NULL)
            continue;
        json_t *s = json_string(v); /* NULL when the decoded value is not UTF-8 */
        if (s == NULL || json_object_set_new(params, list_params[i], s) != 0) {
            crm_api_invalid(req, list_params[i], "must be UTF-8 text");
            json_decref(params);
            return;
        }
    }
    const char *params_text = dump(req, params);
    json_decref(params);
    const char *values[3] = {rt->op, path_param(req, "id"), params_text};
    if (params_text == NULL)
        crm_http_respond_error(req, CRM_E_NOMEM);
    else
        crm_http_pg_submit_one(req, crm_api_app(req)->pool, CRM_PG_READ_ONLY, who->tenant_id, state_of(req)->read, 3,
                               values, on_read);
}

static void get_contact_authorized(crm_http_req_t *req, const crm_principal_t *who)
{
    const char *id = path_param(req, "id");
    if (id == NULL || !crm_api_is_uuid(id)) {
        respond_contact_not_found(req);
        return;
    }
    const char *deleted = crm_http_query(req, "include_deleted");
    if (deleted != NULL && strcmp(deleted, "true") != 0 && strcmp(deleted, "false") != 0) {
        crm_api_invalid(req, "include_deleted", "must be true or false");
        return;
    }
    const char *values[2] = {id, deleted != NULL && strcmp(deleted, "true") == 0 ? "true" : "false"};
    crm_http_pg_submit_one(req, crm_api_app(req)->pool, CRM_PG_READ_ONLY, who->tenant_id, state_of(req)->get, 2, values,
                           on_got_contact);
}

static void on_authorized(crm_http_req_t *req, const crm_principal_t *who)
{
    const contacts_route_t *rt = route_of(req);
    if (rt == NULL) {
        crm_http_respond_error(req, CRM_E_STATE);
        return;
    }
    switch (rt->kind) {
    case KIND_WRITE:
        write_authorized(req, who, rt);
        break;
    case KIND_READ:
        read_authorized(req, who, rt);
        break;
    case KIND_GET_CONTACT:
        get_contact_authorized(req, who);
        break;
    }
}

static void on_request(crm_http_req_t *req)
{
    const contacts_route_t *rt = route_of(req);
    if (rt == NULL) {
        crm_http_respond_error(req, CRM_E_STATE);
        return;
    }
    crm_auth_require(req, rt->permission, on_authorized);
}

/* ---- the contacts.rescore job: one batch of a tenant's rescoring after its weights changed ---- */

static void on_rescored(crm_pg_unit_t *u, int err, void *data)
{
    crm_job_t *job = data;
    if (err != 0) {
        crm_job_fail(job, err == CRM_E_DB ? crm_pg_unit_sqlstate(u) : crm_err_str(err), 0, 0);
        return;
    }
    crm_job_succeed(job);
    /* The batch enqueued the next one in its transaction: claim it now rather than at the next poll. */
    crm_jobs_wake(job->runner);
}

static void on_rescore_job(crm_job_t *job, void *ctx)
{
    crm_app_t *app = ctx;
    if (job->tenant_id == NULL) {
        crm_job_fail(job, "a rescoring job needs a tenant", 0, 1);
        return;
    }
    char *payload = json_dumps(job->payload, JSON_COMPACT);
    crm_pg_unit_t *u = crm_pg_unit_new(app->pool, CRM_PG_TX);
    int err = payload == NULL || u == NULL ? CRM_E_NOMEM : crm_pg_unit_set_tenant(u, job->tenant_id);
    if (err == 0) {
        crm_pg_unit_set_deadline(u, job->deadline);
        err = crm_pg_unit_add(u, app->contacts->rescore, 1, (const char *const[]){payload}, NULL);
    }
    free(payload);
    if (err >= 0 && (err = crm_pg_unit_submit(u, on_rescored, job)) == 0)
        return;
    crm_pg_unit_free(u);
    crm_job_fail(job, crm_err_str(err), 0, 0);
}

/* ---- set-up ---- */

int crm_contacts_init(crm_app_t *app)
{
    struct st_crm_contacts_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return CRM_E_NOMEM;
    app->contacts = c;
    int err = crm_domain_init();
    if (err != 0) {
        crm_log(CRM_LOG_ERROR, "startup.domain_lists_failed", CRM_LOG_STR("error", crm_err_str(err)));
        return err;
    }
    if ((err = crm_pg_pool_prepare(app->pool, "contacts_write", sql_write, 11, &c->write)) != 0 ||
        (err = crm_pg_pool_prepare(app->pool, "contacts_read", sql_read, 3, &c->read)) != 0 ||
        (err = crm_pg_pool_prepare(app->pool, "contacts_get", sql_get, 2, &c->get)) != 0 ||
        (err = crm_pg_pool_prepare(app->pool, "contacts_rescore", sql_rescore, 1, &c->rescore)) != 0)
        return err;
    /* A batch of 2,000 takes a few hundred milliseconds; the deadline leaves room for a busy database. */
    return crm_jobs_register(app->jobs, CRM_CONTACTS_RESCORE_KIND, on_rescore_job, app,
                             CRM_CONTACTS_RESCORE_TIMEOUT_MS);
}

int crm_contacts_routes(crm_app_t *app)
{
    struct st_crm_contacts_t *c = app->contacts;
    for (size_t i = 0; i < NROUTES; ++i) {
        const char *why;
        crm_route_t *rt = crm_router_add(&app->router, routes[i].method, routes[i].pattern, on_request, app, &why);
        if (rt == NULL) {
            crm_log(CRM_LOG_ERROR, "startup.route_failed", CRM_LOG_STR("pattern", routes[i].pattern),
                    CRM_LOG_STR("error", why));
            return CRM_E_NOMEM;
        }
        rt->max_body_bytes = (routes[i].flags & F_BULK) ? CRM_CONTACTS_MAX_BULK_BODY : CRM_CONTACTS_MAX_BODY;
        if (c == NULL)
            continue;
        if (rt->id >= c->nby_route) {
            size_t n = rt->id + 16;
            const contacts_route_t **grown = realloc(c->by_route, n * sizeof(*grown));
            if (grown == NULL)
                return CRM_E_NOMEM;
            memset(grown + c->nby_route, 0, (n - c->nby_route) * sizeof(*grown));
            c->by_route = grown;
            c->nby_route = n;
        }
        c->by_route[rt->id] = &routes[i];
    }
    return 0;
}

void crm_contacts_free(crm_app_t *app)
{
    if (app->contacts == NULL)
        return;
    crm_domain_shutdown();
    free(app->contacts->by_route);
    free(app->contacts);
    app->contacts = NULL;
}
