#include "mailer/mailer.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "jobs.h"
#include "log.h"
#include "mail/address.h"
#include "mail/smtp.h"

/* The runner's deadline for one attempt is the submission's plus this, so the submission always ends first. */
#define HANDLER_SLACK_MS 1000

size_t crm_app_mail_recipients(const json_t *to, crm_mail_mailbox_t *boxes)
{
    size_t n = json_array_size(to);
    if (n == 0 || n > CRM_APP_MAIL_MAX_TO)
        return 0;
    for (size_t i = 0; i < n; ++i) {
        const json_t *t = json_array_get(to, i);
        boxes[i].addr = json_string_value(json_object_get(t, "email"));
        boxes[i].name = json_string_value(json_object_get(t, "name"));
        if (boxes[i].addr == NULL)
            return 0;
    }
    return n;
}

int crm_app_mail_init(crm_app_t *app)
{
    const crm_config_t *cfg = app->config;
    crm_mail_address_list_t *from = NULL;
    if (cfg->mail_from == NULL || crm_mail_address_parse(cfg->mail_from, strlen(cfg->mail_from), NULL, &from) != 0 ||
        from->count != 1) {
        crm_mail_address_list_free(from);
        return CRM_E_CONFIG;
    }
    const crm_mail_address_t *a = &from->items[0];
    int fits = strlen(a->addr) < sizeof(app->mail.from_addr) && strlen(a->name) < sizeof(app->mail.from_name) &&
               strlen(a->domain) < sizeof(app->mail.domain);
    if (fits) {
        strcpy(app->mail.from_addr, a->addr);
        strcpy(app->mail.from_name, a->name);
        strcpy(app->mail.domain, a->domain);
    }
    crm_mail_address_list_free(from);
    if (!fits)
        return CRM_E_CONFIG;
    app->mail.relay = (crm_mail_relay_t){
        .upstream = crm_httpc_upstream_find(app->httpc, "smtp"),
        .url = cfg->smtp_url,
        .helo_domain = app->mail.domain,
        .username = cfg->smtp_username,
        .password = cfg->smtp_password,
    };
    return app->mail.relay.upstream != NULL ? 0 : CRM_E_CONFIG;
}

/* Fills m from the parts that the payload and the configuration give; to[] must hold CRM_APP_MAIL_MAX_TO. */
static void message_of(const crm_app_t *app, crm_mail_message_t *msg, const crm_mail_mailbox_t *to, size_t to_count,
                       const char *subject, const char *text, const char *html, const char *message_id)
{
    memset(msg, 0, sizeof(*msg));
    msg->from.addr = app->mail.from_addr;
    msg->from.name = app->mail.from_name;
    msg->to = to;
    msg->to_count = to_count;
    msg->subject = subject;
    msg->text = text;
    msg->html = html;
    msg->date = time(NULL);
    msg->message_id = message_id;
    msg->message_id_domain = app->mail.domain;
}

int crm_app_mail_payload(crm_app_t *app, const crm_app_mail_t *m, char **json_out)
{
    *json_out = NULL;
    if (m == NULL || m->to == NULL || m->to_count == 0 || m->to_count > CRM_APP_MAIL_MAX_TO || m->text == NULL)
        return CRM_E_INVAL;
    char message_id[CRM_MAIL_MESSAGE_ID_SIZE];
    int err = crm_mail_message_id_generate(app->mail.domain, message_id);
    if (err != 0)
        return err;
    /* Composing once now proves every input is acceptable; the runner composes again with the Date of sending. */
    crm_mail_message_t msg;
    message_of(app, &msg, m->to, m->to_count, m->subject, m->text, m->html, message_id);
    msg.max_bytes = CRM_JOBS_PAYLOAD_MAX / 2;
    char *text = NULL;
    size_t len;
    if ((err = crm_mail_message_compose(&msg, &text, &len, NULL)) != 0)
        return err;
    free(text);

    json_t *to = json_array();
    for (size_t i = 0; i < m->to_count; ++i)
        json_array_append_new(
            to, json_pack("{s:s, s:s}", "email", m->to[i].addr, "name", m->to[i].name != NULL ? m->to[i].name : ""));
    json_t *payload = json_pack("{s:o, s:s, s:s, s:s}", "to", to, "text", m->text, "message_id", message_id, "subject",
                                m->subject != NULL ? m->subject : "");
    if (payload == NULL)
        return CRM_E_NOMEM;
    if (m->html != NULL)
        json_object_set_new(payload, "html", json_string(m->html));
    if (m->secret) /* sql/0005_auth.sql's trigger redacts such payloads when the job succeeds */
        json_object_set_new(payload, "secret", json_true());
    *json_out = json_dumps(payload, JSON_COMPACT);
    json_decref(payload);
    return *json_out != NULL ? 0 : CRM_E_NOMEM;
}

int crm_app_mail_enqueue_add(crm_app_t *app, crm_pg_unit_t *unit, const crm_app_mail_t *m)
{
    char *json;
    int err = crm_app_mail_payload(app, m, &json);
    if (err != 0)
        return err;
    crm_job_spec_t spec = {
        .kind = CRM_APP_MAIL_KIND,
        .payload_json = json,
        .max_attempts = CRM_APP_MAIL_MAX_ATTEMPTS,
        .unique_key = m->unique_key,
    };
    err = crm_jobs_enqueue_add(app->jobs, unit, &spec);
    free(json);
    return err;
}

/* ---- the job ---- */

static void on_submitted(crm_mail_outcome_t outcome, int code, const char *error, void *data)
{
    crm_job_t *job = data;
    switch (outcome) {
    case CRM_MAIL_SENT:
        crm_log(CRM_LOG_INFO, "mail.sent", CRM_LOG_INT("job_id", job->id), CRM_LOG_INT("attempt", job->attempt));
        crm_job_succeed(job);
        break;
    case CRM_MAIL_TEMPFAIL:
    case CRM_MAIL_PERMFAIL: {
        char why[200];
        snprintf(why, sizeof(why), "smtp %d: %s", code, error);
        crm_job_fail(job, why, 0, outcome == CRM_MAIL_PERMFAIL);
        break;
    }
    }
}

static void on_mail_job(crm_job_t *job, void *ctx)
{
    crm_app_t *app = ctx;
    const json_t *p = job->payload;
    const json_t *to = json_object_get(p, "to");
    const char *subject = json_string_value(json_object_get(p, "subject"));
    const char *text = json_string_value(json_object_get(p, "text"));
    const json_t *html_v = json_object_get(p, "html");
    const char *html = json_string_value(html_v);
    const char *message_id = json_string_value(json_object_get(p, "message_id"));
    crm_mail_mailbox_t boxes[CRM_APP_MAIL_MAX_TO];
    const char *rcpt[CRM_APP_MAIL_MAX_TO];
    size_t n = crm_app_mail_recipients(to, boxes);
    for (size_t i = 0; i < n; ++i)
        rcpt[i] = boxes[i].addr;
    if (n == 0 || text == NULL || message_id == NULL || (html_v != NULL && html == NULL)) {
        crm_job_fail(job, "payload is not a mail", 0, 1);
        return;
    }
    crm_mail_message_t msg;
    message_of(app, &msg, boxes, n, subject != NULL && subject[0] != '\0' ? subject : NULL, text, html, message_id);
    char *text_out = NULL;
    size_t len;
    int err = crm_mail_message_compose(&msg, &text_out, &len, NULL);
    if (err != 0) {
        crm_job_fail(job, crm_err_str(err), 0, err == CRM_E_INVAL || err == CRM_E_TOO_LARGE);
        return;
    }
    uint64_t now = uv_now(app->loop), deadline = now + (uint64_t)app->config->mail_timeout_ms;
    if (deadline + HANDLER_SLACK_MS > job->deadline)
        deadline = job->deadline > now + HANDLER_SLACK_MS ? job->deadline - HANDLER_SLACK_MS : now + 1;
    err = crm_mail_submit(&app->mail.relay, app->mail.from_addr, rcpt, n, text_out, len, deadline, on_submitted, job);
    free(text_out);
    if (err != 0) {
        /* Refused before anything was sent: an open breaker says how long to wait at least. */
        uint64_t wait = err == CRM_E_BREAKER_OPEN
                            ? crm_breaker_retry_after_ms(crm_httpc_upstream_breaker(app->mail.relay.upstream))
                            : 0;
        crm_job_fail(job, crm_err_str(err), wait, crm_mail_submit_outcome(err, 0) == CRM_MAIL_PERMFAIL);
    }
}

int crm_app_mail_register(crm_app_t *app)
{
    /* A submission must be over before the lease taken at the claim could run out, even if no renewal gets
     * through: otherwise a runner cut off from the database could still be talking to the relay while another
     * process, having reclaimed the job, sends the same mail. Two thirds of the lease leaves the claim's own
     * round trip and clock drift their margin. The submission's deadline follows the job's (on_mail_job). */
    uint64_t timeout = (uint64_t)app->config->mail_timeout_ms + HANDLER_SLACK_MS,
             most = 2 * (uint64_t)app->config->jobs_lease_ms / 3;
    return crm_jobs_register(app->jobs, CRM_APP_MAIL_KIND, on_mail_job, app, timeout < most ? timeout : most);
}
