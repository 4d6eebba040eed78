"""Mail through the job queue and SMTP (issue #3), against the fake SMTP sink (test/fakes/fake_smtp.py): a
verification-style message arrives with correct headers and an RFC 2047-encoded subject; with the relay down the
job is retried and delivered once it is back; a temporary refusal is retried, a permanent one makes the job dead at
once; credentials travel only over STARTTLS, with the relay's certificate verified."""
import email
import email.header
import email.policy
import json
import os
import re
import subprocess
import tempfile

from harness import SUPERUSER, Crmd, Database, Fake, auth, check, log, request, run, wait_for

SUBJECT = "Vérifiez votre adresse ✓ — étape 1"
FROM = "CRM Tëst <no-reply@crmd.test>"
FAST = {"CRMD_JOBS_POLL_MS": "50", "CRMD_JOBS_BACKOFF_BASE_MS": "200", "CRMD_JOBS_BACKOFF_MAX_MS": "500",
        "CRMD_MAIL_FROM": FROM, "CRMD_MAIL_TIMEOUT_MS": "5000"}


def send(crmd, to, subject=SUBJECT, text="Your code is 123456.\n.a line starting with a dot\n", html=None):
    body = {"to": to, "subject": subject, "text": text}
    if html is not None:
        body["html"] = html
    r = request(crmd, "POST", "/v1/_diag/mail", dict(auth(), **{"content-type": "application/json"}),
                json.dumps(body))
    check(r.status == 202, "enqueue mail: %d %r" % (r.status, r.body))
    return r.json()["job_id"]


def job(db, jid):
    row = db.psql("SELECT state || ',' || attempts || ',' || coalesce(last_error, '') FROM crm.jobs WHERE job_id = %d"
                  % jid, user=SUPERUSER)
    state, attempts, error = row.split(",", 2)
    return state, int(attempts), error


def messages(sink):
    return sink.control("GET", "/messages")["messages"]


def test_verification_mail_arrives():
    with Fake("fake_smtp.py") as sink, Database() as db, \
            Crmd(db, env=dict(FAST, CRMD_SMTP_URL="smtp://127.0.0.1:%d" % sink.port)) as crmd:
        crmd.wait_ready()
        jid = send(crmd, [{"email": "Jane.Doe@Example.COM", "name": "Doe, Jane"}],
                   html="<p>Your code is <b>123456</b>.</p>")
        [m] = wait_for("the mail at the sink", lambda: messages(sink), timeout=20)
        wait_for("the job to succeed", lambda: job(db, jid)[0] == "succeeded")
        check(m["mail_from"] == "no-reply@crmd.test", "envelope from %r" % m["mail_from"])
        check(m["rcpt_to"] == ["Jane.Doe@Example.COM"], "envelope to %r" % m["rcpt_to"])
        raw = m["data"]
        check("\r\n" in raw and not re.search(r"(?<!\r)\n", raw), "not CRLF throughout")
        head = raw.split("\r\n\r\n", 1)[0]
        for line in head.split("\r\n"):
            check(len(line) <= 78, "header line over 78 characters: %r" % line)
        # The subject is not ASCII: RFC 2047 encoded-words, UTF-8, decoding to the original.
        subject_raw = re.search(r"^Subject: ([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head, re.M).group(1)
        check("=?UTF-8?B?" in subject_raw.upper() or "=?UTF-8?Q?" in subject_raw.upper(),
              "subject not encoded: %r" % subject_raw)
        check(str(email.header.make_header(email.header.decode_header(subject_raw))) == SUBJECT,
              "subject %r decodes to %r" % (subject_raw, str(email.header.make_header(email.header.decode_header(subject_raw)))))
        msg = email.message_from_string(raw, policy=email.policy.default)
        check(msg["Subject"] == SUBJECT, "parsed subject %r" % msg["Subject"])
        check(msg["From"].addresses[0].display_name == "CRM Tëst" and
              msg["From"].addresses[0].addr_spec == "no-reply@crmd.test", "From %r" % msg["From"])
        check(msg["To"].addresses[0].display_name == "Doe, Jane", "To %r" % msg["To"])
        check(re.fullmatch(r"<[0-9a-f]{32}@crmd\.test>", msg["Message-ID"]), "Message-ID %r" % msg["Message-ID"])
        check(re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000", msg["Date"]),
              "Date %r" % msg["Date"])
        check(msg["MIME-Version"] == "1.0", "MIME-Version %r" % msg["MIME-Version"])
        check(msg.get_content_type() == "multipart/alternative", "content type %r" % msg.get_content_type())
        parts = {p.get_content_type(): p for p in msg.iter_parts()}
        check(parts["text/plain"].get_content() == "Your code is 123456.\r\n.a line starting with a dot\r\n",
              "text part %r" % parts["text/plain"].get_content())
        check("<b>123456</b>" in parts["text/html"].get_content(), "html part")
        check(len(crmd.events("mail.sent")) == 1, "mail.sent not logged once")
        check("Jane" not in "\n".join(crmd.stderr_lines), "a recipient reached the log")


def test_relay_down_then_back():
    with Fake("fake_smtp.py") as sink, Database() as db, \
            Crmd(db, env=dict(FAST, CRMD_SMTP_URL="smtp://127.0.0.1:%d" % sink.port)) as crmd:
        crmd.wait_ready()
        sink.control("POST", "/faults", {"mode": "down"})
        jid = send(crmd, [{"email": "user@example.com"}], subject="Reset your password")
        wait_for("two failed attempts", lambda: job(db, jid)[1] >= 2 and job(db, jid)[0] == "queued", timeout=20)
        state, attempts, error = job(db, jid)
        check(error.startswith("smtp 0:"), "last_error %r" % error)
        check(messages(sink) == [], "a message arrived while the relay was down")
        sink.control("POST", "/faults", {"mode": "ok"})
        wait_for("the mail after the relay came back", lambda: messages(sink), timeout=20)
        wait_for("the job to succeed", lambda: job(db, jid)[0] == "succeeded")
        log("   delivered on attempt %d" % job(db, jid)[1])
        check(len(messages(sink)) == 1, "delivered %d times" % len(messages(sink)))

        # 451 after the data: retried, delivered next time.
        sink.control("DELETE", "/messages")
        sink.control("POST", "/faults", {"mode": "tempfail", "times": 1})
        jid = send(crmd, [{"email": "user@example.com"}], subject="Second")
        wait_for("the retried mail", lambda: job(db, jid)[0] == "succeeded", timeout=20)
        check(job(db, jid)[1] == 2, "tempfail: %r" % (job(db, jid),))
        check(len(messages(sink)) == 1, "tempfail: %d messages" % len(messages(sink)))

        # 554 after the data: dead at once, visible to the operator.
        sink.control("POST", "/faults", {"mode": "permfail", "times": 1})
        jid = send(crmd, [{"email": "user@example.com"}], subject="Third")
        wait_for("the refused mail to die", lambda: job(db, jid)[0] == "dead", timeout=20)
        state, attempts, error = job(db, jid)
        check(attempts == 1 and error.startswith("smtp 554"), "permfail: %r" % (job(db, jid),))
        dead = request(crmd, "GET", "/v1/ops/jobs?state=dead", auth()).json()["data"]
        check([j["kind"] for j in dead if j["id"] == jid] == ["mail.send"], "the dead mail is not listed")

        # A mail that cannot be composed is refused when it is enqueued, not discovered later.
        r = request(crmd, "POST", "/v1/_diag/mail", dict(auth(), **{"content-type": "application/json"}),
                    json.dumps({"to": [{"email": "user@example.com"}], "subject": "a\r\nBcc: x@evil.test",
                                "text": "x"}))
        check(r.status == 400, "header injection in the subject: %d %r" % (r.status, r.body))
        r = request(crmd, "POST", "/v1/_diag/mail", dict(auth(), **{"content-type": "application/json"}),
                    json.dumps({"to": [{"email": "not an address"}], "text": "x"}))
        check(r.status == 400, "an invalid recipient: %d" % r.status)


def test_starttls_and_auth():
    tmp = tempfile.mkdtemp(prefix="crmd-mail-")
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    env = dict(FAST, CRMD_SMTP_USERNAME="crmd", CRMD_SMTP_PASSWORD="q7Vt9zKp2mWx4Rj8", CRMD_UPSTREAM_CA_FILE=cert)
    with Fake("fake_smtp.py", "--tls-cert", cert, "--tls-key", key, "--auth", "crmd:q7Vt9zKp2mWx4Rj8") as sink, \
            Database() as db, Crmd(db, env=dict(env, CRMD_SMTP_URL="smtp://localhost:%d" % sink.port)) as crmd:
        crmd.wait_ready()
        jid = send(crmd, [{"email": "user@example.com"}], subject="Over TLS")
        [m] = wait_for("the mail over STARTTLS", lambda: messages(sink), timeout=20)
        check(m["tls"] is True and m["auth_user"] == "crmd", "tls %r auth %r" % (m["tls"], m["auth_user"]))
        wait_for("the job to succeed", lambda: job(db, jid)[0] == "succeeded")
        check("q7Vt9zKp2mWx4Rj8" not in "\n".join(crmd.stderr_lines), "the SMTP password reached the log")
    # A relay whose certificate is not trusted never gets the credentials: the job keeps failing.
    with Fake("fake_smtp.py", "--tls-cert", cert, "--tls-key", key, "--auth", "crmd:q7Vt9zKp2mWx4Rj8") as sink, \
            Database() as db, Crmd(db, env=dict({k: v for k, v in env.items() if k != "CRMD_UPSTREAM_CA_FILE"},
                                               CRMD_SMTP_URL="smtp://localhost:%d" % sink.port)) as crmd:
        crmd.wait_ready()
        jid = send(crmd, [{"email": "user@example.com"}], subject="Untrusted")
        wait_for("a failed attempt", lambda: job(db, jid)[1] >= 1 and job(db, jid)[0] == "queued", timeout=20)
        check(sink.control("GET", "/stats")["auth_successes"] == 0 and messages(sink) == [],
              "credentials or mail went to an unverified relay")
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    run([test_verification_mail_arrives, test_relay_down_then_back, test_starttls_and_auth])
