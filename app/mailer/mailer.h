/*
 * crmd's outbound mail (verification, password reset, notices): a job kind, so that a mail leaves only when the
 * change that caused it commits, survives restarts, and is retried with backoff until the relay takes it or it is
 * dead (DESIGN.md §3, invariant 9).
 *
 *     crm_app_mail_t m = {.to = &(crm_mail_mailbox_t){addr, name}, .to_count = 1, .subject = …, .text = …};
 *     crm_app_mail_enqueue_add(app, unit, &m);   // in the unit of work that makes the change
 *
 * Enqueueing composes the message once to validate every input (a mail that cannot be composed is refused then,
 * not discovered by the runner) and fixes its Message-ID in the payload, so every attempt sends the same one. The
 * job payload holds the recipients, subject and bodies (it lives in crm.jobs like any other personal data and is
 * never logged). The job kind "mail.send" composes the message with the current Date and submits it through the
 * "smtp" upstream (protocols/mail/smtp.h): a temporary failure retries the job with backoff (an open breaker's wait
 * as the minimum), a permanent one (5xx from the relay, a payload that no longer composes) makes it dead.
 */
#ifndef CRM_APP_MAILER_H
#define CRM_APP_MAILER_H

#include <jansson.h>
#include <stddef.h>

#include "app.h"
#include "mail/message.h"

#define CRM_APP_MAIL_KIND "mail.send"
/* Recipients per mail. */
#define CRM_APP_MAIL_MAX_TO 50
/* Attempts before a mail is dead: with the default backoff (1 s doubling to 1 h) about nine hours of trying. */
#define CRM_APP_MAIL_MAX_ATTEMPTS 16

typedef struct st_crm_app_mail_t {
    const crm_mail_mailbox_t *to; /* 1..CRM_APP_MAIL_MAX_TO */
    size_t to_count;
    const char *subject;    /* UTF-8 */
    const char *text;       /* UTF-8, required */
    const char *html;       /* UTF-8, optional */
    const char *unique_key; /* optional de-duplication key (lib/jobs.h) */
    int secret; /* the text carries a live token: the payload is redacted once the relay has taken the mail */
} crm_app_mail_t;

/* Reads recipients from a JSON array of {"email": …, "name": …} objects (the payload's and the diagnostics' form)
 * into boxes (CRM_APP_MAIL_MAX_TO of them); the strings are borrowed from the array. Returns the count, or 0 when
 * the array is empty, too long, or an entry has no email string. Addresses are validated when the mail is
 * composed. */
size_t crm_app_mail_recipients(const json_t *to, crm_mail_mailbox_t *boxes);

/* Reads the sender from the configuration and sets up the relay. Before crm_app_mail_register. Returns 0 or
 * CRM_E_CONFIG (CRMD_MAIL_FROM unusable: the configuration check refuses that first). */
int crm_app_mail_init(crm_app_t *app);

/* Registers the "mail.send" handler with the job runner. */
int crm_app_mail_register(crm_app_t *app);

/* Appends the enqueueing of mail m to unit (see above). Returns the statement index (its row holds the job id), or
 * CRM_E_INVAL (m does not compose: a bad address, a CR/LF in the subject, …), CRM_E_TOO_LARGE, CRM_E_NOMEM, or
 * crm_jobs_enqueue_add's error. */
int crm_app_mail_enqueue_add(crm_app_t *app, crm_pg_unit_t *unit, const crm_app_mail_t *m);

/* The job payload of mail m (validated by composing it, as crm_app_mail_enqueue_add does) as JSON text in *json
 * (malloc'd; the caller frees it), for SQL functions that decide inside their transaction whether and which mail
 * to enqueue (crm.auth_enqueue_mail). Returns 0 or the errors of crm_app_mail_enqueue_add. */
int crm_app_mail_payload(crm_app_t *app, const crm_app_mail_t *m, char **json);

#endif
