/*
 * Mail submission (RFC 5321 through libcurl's SMTP client) on an httpc upstream, so that a mail relay gets the
 * same treatment as every other dependency: the loop drives it, a deadline bounds it, the upstream's breaker and
 * concurrency cap guard it, and its metrics count it (DESIGN.md §3, invariant 2).
 *
 * crm_mail_submit sends one composed message (mail/message.h) to a relay and reports one of three outcomes:
 *   SENT      the relay accepted the message (250 after the data);
 *   TEMPFAIL  try again later: no connection, no answer, a deadline, a 4xx reply, a 5xx before the envelope
 *             (greeting, EHLO, AUTH, STARTTLS: the relay's state or crmd's configuration, which an operator can fix
 *             without the message changing), the breaker is open, or crmd is shutting down;
 *   PERMFAIL  sending this message again will not help: a 5xx reply to the envelope or the data (unknown
 *             recipient, message refused), or a message the client itself refuses (invalid, too large).
 * Submissions are not retried here; the job queue decides (mail is a job kind: DESIGN.md §3, invariant 9). A
 * submission whose answer never came may have been delivered, so a retry can deliver twice; the composer keeps the
 * Message-ID stable across retries, which lets mail clients fold such copies into one.
 *
 * The relay URL is smtp://host[:port] (STARTTLS when offered, and required when credentials are set: they never
 * travel in clear) or smtps://host[:port] (implicit TLS). Certificates are always verified.
 */
#ifndef CRM_MAIL_SMTP_H
#define CRM_MAIL_SMTP_H

#include <stddef.h>
#include <stdint.h>

#include "httpc.h"

typedef struct st_crm_mail_relay_t {
    crm_httpc_upstream_t *upstream; /* the upstream named "smtp" */
    const char *url;                /* smtp(s)://host[:port]; not copied: lives as long as the relay */
    const char *helo_domain;        /* the EHLO name; NULL for libcurl's default */
    const char *username;           /* NULL: no AUTH */
    const char *password;
} crm_mail_relay_t;

typedef enum {
    CRM_MAIL_SENT = 0,
    CRM_MAIL_TEMPFAIL = 1,
    CRM_MAIL_PERMFAIL = 2,
} crm_mail_outcome_t;

/* Completion: outcome, the relay's last reply code (0 when none), and a short description for logs (no addresses,
 * no secrets). Runs exactly once, from the loop, never inside crm_mail_submit. */
typedef void (*crm_mail_submit_cb)(crm_mail_outcome_t outcome, int smtp_code, const char *error, void *data);

/*
 * Submits message[0..len) (CRLF lines, as crm_mail_message_compose makes them) from envelope sender `from` to the
 * nrcpt bare addresses in rcpt. Everything is copied. deadline is absolute loop ms. Returns 0 (cb will run) or a
 * negative crm_err_t from crm_httpc_send (cb will not run): CRM_E_BREAKER_OPEN, CRM_E_QUEUE_FULL, CRM_E_INVAL, …
 * crm_mail_submit_outcome maps such an error to the outcome a caller should act on.
 */
int crm_mail_submit(const crm_mail_relay_t *relay, const char *from, const char *const *rcpt, size_t nrcpt,
                    const char *message, size_t len, uint64_t deadline, crm_mail_submit_cb cb, void *data);

/* The outcome that an error from crm_mail_submit (or an httpc completion error, with its smtp_refused) stands
 * for. */
crm_mail_outcome_t crm_mail_submit_outcome(int err, int refused);

#endif
