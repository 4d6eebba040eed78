#include "mail/smtp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

#define MAX_RCPT 100

typedef struct {
    crm_mail_submit_cb cb;
    void *data;
} submit_t;

crm_mail_outcome_t crm_mail_submit_outcome(int err, int refused)
{
    switch (err) {
    case 0:
        return CRM_MAIL_SENT;
    case CRM_E_INVAL:
    case CRM_E_TOO_LARGE:
        return CRM_MAIL_PERMFAIL;
    case CRM_E_UNAVAILABLE:
        /* Only a refusal of the message itself is final; a 5xx greeting, EHLO or AUTH is the relay's state or
         * crmd's configuration, which can change while the job waits. */
        return refused ? CRM_MAIL_PERMFAIL : CRM_MAIL_TEMPFAIL;
    default:
        return CRM_MAIL_TEMPFAIL;
    }
}

static void on_done(crm_httpc_req_t *req, int err, const crm_httpc_response_t *resp, void *data)
{
    (void)req;
    submit_t s = *(submit_t *)data;
    free(data);
    crm_mail_outcome_t outcome = crm_mail_submit_outcome(err, resp->smtp_refused);
    const char *why = err == 0 ? "" : (resp->error[0] != '\0' ? resp->error : crm_err_str(err));
    s.cb(outcome, resp->status, why, s.data);
}

int crm_mail_submit(const crm_mail_relay_t *relay, const char *from, const char *const *rcpt, size_t nrcpt,
                    const char *message, size_t len, uint64_t deadline, crm_mail_submit_cb cb, void *data)
{
    if (relay == NULL || relay->upstream == NULL || relay->url == NULL || from == NULL || rcpt == NULL || nrcpt == 0 ||
        nrcpt > MAX_RCPT || cb == NULL)
        return CRM_E_INVAL;
    /* libcurl takes the envelope addresses as written in the SMTP commands: in angle brackets. */
    char *buf = NULL;
    size_t cap = 0;
    int err = CRM_E_NOMEM;
    const char *bracketed[MAX_RCPT];
    char from_b[300];
    if (snprintf(from_b, sizeof(from_b), "<%s>", from) >= (int)sizeof(from_b))
        return CRM_E_INVAL;
    for (size_t i = 0; i < nrcpt; ++i)
        cap += strlen(rcpt[i]) + 3;
    if ((buf = malloc(cap)) == NULL)
        return CRM_E_NOMEM;
    char *p = buf;
    for (size_t i = 0; i < nrcpt; ++i) {
        bracketed[i] = p;
        p += sprintf(p, "<%s>", rcpt[i]) + 1;
    }
    /* The EHLO name is the URL's path in libcurl's SMTP URL syntax. */
    char url[512];
    if (snprintf(url, sizeof(url), "%s/%s", relay->url, relay->helo_domain != NULL ? relay->helo_domain : "") >=
        (int)sizeof(url)) {
        err = CRM_E_INVAL;
        goto out;
    }
    submit_t *s = malloc(sizeof(*s));
    if (s == NULL)
        goto out;
    s->cb = cb;
    s->data = data;
    crm_httpc_smtp_t smtp = {
        .mail_from = from_b,
        .rcpt = bracketed,
        .nrcpt = nrcpt,
        .username = relay->username,
        .password = relay->password,
    };
    crm_httpc_request_t q = {
        .url = url,
        .body = message,
        .body_len = len,
        .deadline = deadline,
        .smtp = &smtp,
    };
    if ((err = crm_httpc_send(relay->upstream, &q, on_done, s, NULL)) != 0)
        free(s);
out:
    free(buf);
    return err;
}
