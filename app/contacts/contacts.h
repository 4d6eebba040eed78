/*
 * Contacts, brands, tags and their settings (issue #5; DESIGN.md §3 invariants 1, 5, 8, 12 and §5).
 *
 * The rules live in PostgreSQL (sql/0006_contacts.sql): uniqueness of live e-mail addresses and domains (partial
 * unique indexes, INSERT … ON CONFLICT), validation against the tenant's custom field definitions, the search
 * document, lead scores, audit rows, idempotency keys and the all-or-nothing of atomic bulk operations, each
 * request one transaction. This module is the HTTP side, deliberately thin:
 *
 *   - authorises the route's permission (crm_auth_require: viewer reads, member writes, admin deletes);
 *   - checks that a body is JSON within the limits (lib/json: UTF-8, depth, sizes, no duplicate keys), so the
 *     database only ever receives a well-formed document;
 *   - computes what the database cannot: registrable domains of brands (libpsl, lib/domain) and which addresses
 *     are at free-mail providers (the lead score's "work e-mail"), passed beside the body as `aux`;
 *   - binds an Idempotency-Key to a fingerprint of (user, method, path, body);
 *   - calls crm.api_write (every change) or crm.api_read (lists, brands, settings) in one unit, or, for the hot
 *     GET /v1/contacts/{id}, its own prepared statement; and relays the answer: status, body, ETag, Location,
 *     Idempotent-Replayed. Problems composed by the database get the request's `instance` here.
 *
 * A change of the lead-score weights rescores the tenant's existing contacts in the background: a chain of
 * CRM_CONTACTS_RESCORE_KIND jobs, 2,000 contacts each, every batch enqueuing the next in its own transaction.
 *
 * Bodies: 64 KiB per route, 1 MiB for bulk. Every handler answers from its unit's callback; a request that goes
 * away detaches its unit (lib/http_pg), and every unit has the request's deadline.
 */
#ifndef CRM_APP_CONTACTS_H
#define CRM_APP_CONTACTS_H

#include "app.h"

/* Body limits. */
#define CRM_CONTACTS_MAX_BODY      (64 * 1024)
#define CRM_CONTACTS_MAX_BULK_BODY (1024 * 1024)
/* Longest Idempotency-Key accepted (printable ASCII). */
#define CRM_CONTACTS_IDEMPOTENCY_KEY_MAX 255

/* The job kind that rescores one batch of a tenant's contacts, and its handler's deadline. */
#define CRM_CONTACTS_RESCORE_KIND       "contacts.rescore"
#define CRM_CONTACTS_RESCORE_TIMEOUT_MS 20000

/* Creates app->contacts, prepares its statements with the pool and registers the rescoring job's handler (start-up,
 * after app->jobs exists and before the pool and the runner start). */
int crm_contacts_init(crm_app_t *app);

/* Registers every contacts, brands, tags and settings route. Works with app->contacts NULL (for `crmd routes`). */
int crm_contacts_routes(crm_app_t *app);

/* Frees app->contacts. Accepts an app without it. */
void crm_contacts_free(crm_app_t *app);

#endif
