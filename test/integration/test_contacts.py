"""Contacts and brands (issue #5) through the real binary, against a real PostgreSQL (and the fake SMTP sink, for the
sign-ups and invitations the tenants need).

Concurrent creates of one email (and one brand domain) leave one live row; soft delete and restore; keyset
pagination that neither repeats nor skips while rows are inserted; search by name prefix, email substring, brand
name and tag; bulk operations, atomic and partial; Idempotency-Key replay, mismatch and in-progress; If-Match;
tenant isolation and roles; validation listing every field error at once and writing nothing; lead scoring and
its recomputation; tags and the audit trail.

One database, one SMTP sink and one crmd serve every test. Each test registers a tenant of its own (contacts are
unique per tenant, and lead-scoring weights and custom-field definitions are tenant settings), so tests never see
each other's rows.

SQL checks read the tables crm.contacts (tenant_id, email, deleted_at) and crm.brands (tenant_id, domain, deleted_at)
as the superuser: CONTACTS and BRANDS below name them.
"""
import asyncio
import atexit
import collections
import datetime
import email
import email.policy
import json
import re
import secrets
import select
import socket
import sys
import threading
import time
import urllib.parse
import uuid

from harness import (
    SUPERUSER,
    Crmd,
    Fake,
    Response,
    arequest,
    check,
    fail,
    log,
    request,
    run,
    shared_database,
    wait_for,
)

PROBLEM = "urn:crmd:problem:"
PUBLIC_URL = "https://crm.example.test"
PASSWORD = "correct-horse-battery-staple-42"
PASSWORD2 = "purple-walrus-juggles-nine-kites"
SUBJECT_VERIFY = "Verify your email address"

# The tables the SQL checks read (schema of issue #5).
CONTACTS = "crm.contacts"
BRANDS = "crm.brands"

CONTACT_KEYS = {"id", "email", "first_name", "last_name", "display_name", "phone", "title", "brand_id", "brand",
                "owner_id", "lifecycle_stage", "lead_score", "source", "custom_fields", "tags", "last_activity_at",
                "version", "created_at", "updated_at", "deleted_at"}
BRAND_KEYS = {"id", "name", "domain", "website", "source", "created_by", "version", "created_at", "updated_at",
              "deleted_at"}
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

DEFAULT_SCORING = {"work_email": 10, "has_phone": 5, "has_title": 5, "recent_activity": 10, "recent_activity_days": 30,
                   "stages": {"subscriber": 0, "lead": 5, "marketing_qualified_lead": 10, "sales_qualified_lead": 15,
                              "opportunity": 20, "customer": 25, "evangelist": 25, "other": 0}}
STAGES = list(DEFAULT_SCORING["stages"])

ENV = {
    "CRMD_JOBS_POLL_MS": "50",
    "CRMD_JOBS_BACKOFF_BASE_MS": "200",
    "CRMD_JOBS_BACKOFF_MAX_MS": "1000",
    "CRMD_MAIL_TIMEOUT_MS": "5000",
    "CRMD_PUBLIC_URL": PUBLIC_URL,
    "CRMD_RATELIMIT_AUTH_PER_MIN": "1000000",
    "CRMD_RATELIMIT_API_PER_MIN": "1000000",
    "CRMD_PASSWORD_MAX_IN_FLIGHT": "64",
    # Hundreds of concurrent writes and 1000-item bulk requests on two shared cores (and under ASan): queueing for
    # a connection is expected, a 503 or 504 from impatience is not what these tests are about.
    "CRMD_DB_POOL_SIZE": "8",
    "CRMD_DB_QUEUE_TIMEOUT_MS": "20000",
    "CRMD_DB_STATEMENT_TIMEOUT_MS": "60000",
    "CRMD_REQUEST_TIMEOUT_MS": "90000",
}

# ---- fixtures: one database, one SMTP sink and one crmd for the whole script ----

_sink = None
_main = None


def db():
    return shared_database()


def sink():
    global _sink
    if _sink is None:
        _sink = Fake("fake_smtp.py")
    return _sink


def main_crmd():
    global _main
    if _main is None:
        _main = Crmd(db(), env=dict(ENV, CRMD_SMTP_URL="smtp://127.0.0.1:%d" % sink().port))
        _main.wait_ready()
    return _main


def _cleanup():
    # Registered after the database's drop (atexit runs in reverse order): crmd must be gone before its database.
    if _main is not None and _main.proc.poll() is None:
        _main.proc.kill()
        _main.proc.wait()
    if _sink is not None:
        _sink.stop()


db()
atexit.register(_cleanup)


def sql(q):
    return db().psql(q, user=SUPERUSER)


# ---- HTTP ----

_retried = [0]


def _headers(token, body, headers, ctype):
    h = {}
    if token:
        h["authorization"] = "Bearer " + token
    if body is not None:
        h["content-type"] = ctype
    h.update(headers or {})
    return h


def _encode(body):
    if body is None or isinstance(body, (bytes, str)):
        return body
    return json.dumps(body)


def call(c, method, path, token=None, body=None, headers=None, ctype="application/json"):
    """One request; a 503 (load shed, with Retry-After) is retried: it means the request was not processed."""
    h, data = _headers(token, body, headers, ctype), _encode(body)
    for _ in range(300):
        r = request(c, method, path, h, data, timeout=120)
        if r.status != 503:
            return r
        check(r.headers.get("retry-after"), "%s %s: 503 without Retry-After" % (method, path))
        _retried[0] += 1
        time.sleep(0.1)
    fail("%s %s kept answering 503" % (method, path))


async def acall(c, method, path, token=None, body=None, headers=None, ctype="application/json"):
    h, data = _headers(token, body, headers, ctype), _encode(body)
    for _ in range(300):
        r = await arequest(c, method, path, h, data, timeout=120)
        if r.status != 503:
            return r
        check(r.headers.get("retry-after"), "%s %s: 503 without Retry-After" % (method, path))
        _retried[0] += 1
        await asyncio.sleep(0.1)
    fail("%s %s kept answering 503" % (method, path))


def gather(coros):
    async def all_of():
        return await asyncio.gather(*coros)

    return asyncio.run(all_of())


def body_of(r):
    return r.body[:600]


def check_json(r, status, what):
    check(r.status == status, "%s: status %d, expected %d: %r" % (what, r.status, status, body_of(r)))
    check((r.headers.get("content-type") or "").startswith("application/json"),
          "%s: content-type %r" % (what, r.headers.get("content-type")))
    return json.loads(r.body)


def check_problem(r, status, slug, what):
    """An RFC 9457 problem document of the given status and type (slug None: any type); returns the document."""
    check(r.status == status, "%s: status %d, expected %d: %r" % (what, r.status, status, body_of(r)))
    check(r.headers.get("content-type") == "application/problem+json",
          "%s: content-type %r" % (what, r.headers.get("content-type")))
    doc = json.loads(r.body)
    if slug is not None:
        check(doc.get("type") == PROBLEM + slug, "%s: type %r, expected %r" % (what, doc.get("type"),
                                                                               PROBLEM + slug))
    check(doc.get("status") == status, "%s: problem status %r" % (what, doc.get("status")))
    check(isinstance(doc.get("title"), str) and doc["title"], "%s: no title in %r" % (what, doc))
    check(doc.get("instance") == r.headers.get("x-request-id"),
          "%s: instance %r != X-Request-Id %r" % (what, doc.get("instance"), r.headers.get("x-request-id")))
    return doc


def error_map(doc):
    """{field: [messages]} of a problem document's errors."""
    out = {}
    for e in doc.get("errors") or []:
        out.setdefault(e.get("field"), []).append(e.get("message"))
    return out


def _named(spec, got):
    """The error fields that a spec names: "a|b" is either, "tags*" any field starting with "tags"."""
    out = []
    for alt in spec.split("|"):
        out += [f for f in got if (f or "").startswith(alt[:-1])] if alt.endswith("*") else [alt] if alt in got else []
    return out


def check_fields(doc, expected, what):
    """Every expected field is named in errors[] (others may be too); expected: {field spec: message or None}."""
    got = error_map(doc)
    missing = [f for f in expected if not _named(f, got)]
    check(not missing, "%s: fields %r not among the errors %r" % (what, missing, doc.get("errors")))
    for f, msg in expected.items():
        if msg is not None:
            msgs = [m for name in _named(f, got) for m in got[name]]
            check(msg in msgs, "%s: %s has messages %r, expected %r" % (what, f, msgs, msg))
    return got


def check_invalid(r, expected, what):
    doc = check_problem(r, 400, "validation-failed", what)
    check_fields(doc, expected, what)
    return doc


def q(s):
    return urllib.parse.quote(s, safe="")


def send_large(c, path, body, token):
    """POSTs a large body while watching for the answer: the server may answer (and close) before reading it all,
    so sending stops at the first byte of the answer or the first send error, and reading goes on."""
    s = socket.create_connection((c.host, c.port), timeout=30)
    try:
        s.sendall(("POST %s HTTP/1.1\r\nhost: %s\r\nauthorization: Bearer %s\r\ncontent-type: application/json\r\n"
                   "content-length: %d\r\nconnection: close\r\n\r\n" % (path, c.host, token, len(body))).encode())
        s.setblocking(False)
        sent, data, deadline = 0, b"", time.monotonic() + 60
        while time.monotonic() < deadline:
            rd, wr, _ = select.select([s], [s] if sent < len(body) else [], [], 1.0)
            if rd:
                try:
                    chunk = s.recv(1 << 16)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
                sent = len(body)
                head, sep, rest = data.partition(b"\r\n\r\n")
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if sep and m and len(rest) >= int(m.group(1)):
                    break
            elif wr:
                try:
                    sent += s.send(body[sent:sent + (1 << 16)])
                except (BrokenPipeError, ConnectionResetError):
                    sent = len(body)
    finally:
        s.close()
    check(b"\r\n\r\n" in data, "POST %s with %d bytes: no answer (got %r)" % (path, len(body), data[:200]))
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", len(rest)))
    return Response(int(lines[0].split(" ")[1]), headers, rest[:n])


# ---- mail and accounts ----


def parsed_mails():
    out = []
    for m in sink().control("GET", "/messages")["messages"]:
        msg = email.message_from_string(m["data"], policy=email.policy.default)
        if msg.is_multipart():
            part = msg.get_body(preferencelist=("plain",))
            text = part.get_content() if part is not None else ""
        else:
            text = msg.get_content()
        out.append({"to": [a.lower() for a in m["rcpt_to"]], "subject": str(msg["Subject"] or ""), "text": text})
    return out


def wait_mail(addr, subject):
    def found():
        ms = [m for m in parsed_mails() if addr.lower() in m["to"] and m["subject"] == subject]
        return ms or None

    return wait_for("mail %r to %s" % (subject, addr), found, timeout=30, interval=0.1)


def link_token(m, path):
    found = re.findall(re.escape(PUBLIC_URL + path) + r"\?token=([A-Za-z0-9_-]{43})(?![A-Za-z0-9_-])", m["text"])
    check(found, "no %s%s?token= link in the mail %r: %r" % (PUBLIC_URL, path, m["subject"], m["text"]))
    return found[0]


def new_email(tag):
    return "%s-%s@example.com" % (tag, secrets.token_hex(5))


class User:
    def __init__(self, addr, password):
        self.email, self.password = addr, password
        self.access = self.tenant = self.id = self.tenant_name = None


def login(c, u):
    r = call(c, "POST", "/v1/auth/login", body={"email": u.email, "password": u.password})
    doc = check_json(r, 200, "login %s" % u.email)
    u.access, u.tenant = doc["access_token"], doc["tenant_id"]
    me = check_json(call(c, "GET", "/v1/me", u.access), 200, "me %s" % u.email)
    u.id = me["user"]["id"]
    return u


def make_tenant(c, tag):
    """A verified, logged-in owner of a tenant of its own."""
    u = User(new_email(tag), PASSWORD)
    u.tenant_name = "Contacts %s %s" % (tag, secrets.token_hex(3))
    r = call(c, "POST", "/v1/auth/register", body={"email": u.email, "password": PASSWORD, "name": "Owner " + tag,
                                                   "tenant_name": u.tenant_name})
    check_json(r, 201, "register %s" % u.email)
    [m] = wait_mail(u.email, SUBJECT_VERIFY)
    r = call(c, "POST", "/v1/auth/verify-email", body={"token": link_token(m, "/verify-email")})
    check(r.status == 200, "verify %s: %d %r" % (u.email, r.status, body_of(r)))
    return login(c, u)


def invite(c, owner, role):
    """A new user invited into owner's tenant with role, accepted and logged in."""
    addr = new_email("inv-" + role)
    r = call(c, "POST", "/v1/users/invitations", owner.access, {"email": addr, "role": role})
    check_json(r, 201, "invite a %s" % role)
    [m] = wait_mail(addr, "You are invited to " + owner.tenant_name)
    r = call(c, "POST", "/v1/auth/accept-invitation", body={"token": link_token(m, "/accept-invitation"),
                                                            "password": PASSWORD2, "name": "The " + role})
    acc = check_json(r, 200, "accept the %s invitation" % role)
    check(acc.get("tenant_id") == owner.tenant and acc.get("role") == role, "accept answered %r" % acc)
    u = login(c, User(addr, PASSWORD2))
    check(u.tenant == owner.tenant, "the %s logged in to tenant %s, not %s" % (role, u.tenant, owner.tenant))
    return u


# ---- contacts and brands ----


def check_contact(doc, what, r=None):
    check(set(doc) - {"created"} == CONTACT_KEYS, "%s: contact members %r" % (what, sorted(doc)))
    check(UUID_RE.match(doc["id"]), "%s: id %r" % (what, doc["id"]))
    check(isinstance(doc["version"], int) and doc["version"] >= 1, "%s: version %r" % (what, doc["version"]))
    check(isinstance(doc["lead_score"], int), "%s: lead_score %r" % (what, doc["lead_score"]))
    check(isinstance(doc["custom_fields"], dict), "%s: custom_fields %r" % (what, doc["custom_fields"]))
    check(isinstance(doc["tags"], list) and doc["tags"] == sorted(doc["tags"]), "%s: tags %r" % (what, doc["tags"]))
    for k in ("created_at", "updated_at"):
        check(TS_RE.match(doc[k] or ""), "%s: %s %r is not RFC 3339 UTC with milliseconds" % (what, k, doc[k]))
    for k in ("deleted_at", "last_activity_at"):
        check(doc[k] is None or TS_RE.match(doc[k]), "%s: %s %r" % (what, k, doc[k]))
    if doc["brand_id"] is None:
        check(doc["brand"] is None, "%s: brand %r without brand_id" % (what, doc["brand"]))
    else:
        check(isinstance(doc["brand"], dict) and set(doc["brand"]) == {"id", "name", "domain"} and
              doc["brand"]["id"] == doc["brand_id"], "%s: brand %r for brand_id %r" % (what, doc["brand"],
                                                                                       doc["brand_id"]))
    if r is not None:
        check(r.headers.get("etag") == '"%d"' % doc["version"],
              "%s: ETag %r, version %d" % (what, r.headers.get("etag"), doc["version"]))
    return doc


def check_brand(doc, what, r=None):
    check(set(doc) == BRAND_KEYS, "%s: brand members %r" % (what, sorted(doc)))
    check(UUID_RE.match(doc["id"]), "%s: id %r" % (what, doc["id"]))
    if r is not None:
        check(r.headers.get("etag") == '"%d"' % doc["version"],
              "%s: ETag %r, version %d" % (what, r.headers.get("etag"), doc["version"]))
    return doc


def create(c, u, what="create a contact", **fields):
    body = dict(fields)
    body.setdefault("email", new_email("c"))
    r = call(c, "POST", "/v1/contacts", u.access, body)
    doc = check_contact(check_json(r, 201, what), what, r)
    check(r.headers.get("location") == "/v1/contacts/" + doc["id"], "%s: Location %r" % (what, r.headers.get(
        "location")))
    check(doc["version"] == 1 and doc["deleted_at"] is None, "%s: %r" % (what, doc))
    return doc


def create_brand(c, u, what="create a brand", **fields):
    r = call(c, "POST", "/v1/brands", u.access, fields)
    return check_brand(check_json(r, 201, what), what, r)


def get_contact(c, u, cid, what, status=200, query=""):
    r = call(c, "GET", "/v1/contacts/%s%s" % (cid, query), u.access)
    if status != 200:
        check_problem(r, status, "not-found" if status == 404 else None, what)
        return None
    return check_contact(check_json(r, 200, what), what, r)


def list_contacts(c, u, query, what=None):
    what = what or "GET /v1/contacts" + query
    doc = check_json(call(c, "GET", "/v1/contacts" + query, u.access), 200, what)
    check(set(doc) == {"data", "next_cursor"}, "%s: members %r" % (what, sorted(doc)))
    return doc


def all_ids(c, u, query, what=None):
    """Every id of a (possibly paged) contact list."""
    out, cursor = [], None
    sep = "&" if "?" in query else "?"
    for _ in range(1000):
        doc = list_contacts(c, u, query + (sep + "cursor=" + q(cursor) if cursor else ""), what)
        out += [it["id"] for it in doc["data"]]
        cursor = doc["next_cursor"]
        if not cursor:
            return out
    fail("%s: pagination does not end" % query)


def bulk(c, u, body, status=200, what=None, headers=None):
    what = what or "bulk %s (%s)" % (body.get("op"), body.get("mode", "atomic"))
    r = call(c, "POST", "/v1/contacts/bulk", u.access, body, headers=headers)
    if status == 200:
        doc = check_json(r, 200, what)
        n = len(body.get("items") or body.get("ids") or [])
        check(doc.get("op") == body["op"] and doc.get("mode") == body.get("mode", "atomic"), "%s: %r" % (what, {
            k: doc.get(k) for k in ("op", "mode")}))
        res = doc.get("results")
        check(isinstance(res, list) and [x.get("index") for x in res] == list(range(n)),
              "%s: results are not one per index in order: %r" % (what, (res or [])[:5]))
        ok = sum(1 for x in res if x["status"] < 300)
        check(doc.get("succeeded") == ok and doc.get("failed") == n - ok,
              "%s: succeeded %r, failed %r, results say %d ok of %d" % (what, doc.get("succeeded"), doc.get("failed"),
                                                                       ok, n))
        for x in res:
            if x["status"] >= 400:
                check(isinstance(x.get("error"), dict) and x["error"].get("type", "").startswith(PROBLEM),
                      "%s: failed item without an error: %r" % (what, x))
        return doc, r
    return check_problem(r, status, "bulk-failed" if status == 422 else None, what), r


def statuses(doc):
    return [x["status"] for x in doc["results"]]


def count_contacts(tenant, where="TRUE"):
    return int(sql("SELECT count(*) FROM %s WHERE tenant_id = '%s' AND (%s)" % (CONTACTS, tenant, where)))


def live_with_email(tenant, addr):
    return count_contacts(tenant, "lower(email) = '%s' AND deleted_at IS NULL" % addr.lower())


def audit(c, u, action):
    doc = check_json(call(c, "GET", "/v1/audit-log?limit=200&action=" + q(action), u.access), 200,
                     "audit-log ?action=" + action)
    return doc["data"]


def now_minus(days):
    t = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t.microsecond // 1000)


def mixed_case(s):
    return "".join(ch.upper() if secrets.randbelow(2) else ch.lower() for ch in s)


def spaced(s):
    return " " * secrets.randbelow(3) + s + " " * secrets.randbelow(3)


# ---- 1. concurrent creates ----


def test_concurrency_create():
    c = main_crmd()
    u = make_tenant(c, "race")

    # 200 creates of one address, spelled differently: one 201, 199 times 409 naming it.
    variants = ["  Ann@Acme.COM ", "ann@acme.com ", "ANN@ACME.COM", " ann@Acme.com"]
    variants += [spaced(mixed_case("ann@acme.com")) for _ in range(200 - len(variants))]
    t0 = time.monotonic()
    answers = gather([acall(c, "POST", "/v1/contacts", u.access, {"email": v, "first_name": "Racer %d" % i})
                      for i, v in enumerate(variants)])
    log("   200 concurrent creates of one email in %.1f s" % (time.monotonic() - t0))
    by = {}
    for r in answers:
        by.setdefault(r.status, []).append(r)
    check(set(by) <= {201, 409} and len(by.get(201, [])) == 1,
          "creates of one email answered %r; first odd one %r" % ({k: len(v) for k, v in by.items()},
                                                                 next((body_of(r) for r in answers
                                                                       if r.status not in (201, 409)), None)))
    created = check_contact(json.loads(by[201][0].body), "the created contact", by[201][0])
    check(created["email"] == "ann@acme.com", "stored email %r is not trimmed and lower-cased" % created["email"])
    for r in by[409]:
        doc = check_problem(r, 409, "duplicate", "a concurrent duplicate")
        check(doc.get("existing_id") == created["id"], "409 existing_id %r, created %r" % (doc.get("existing_id"),
                                                                                          created["id"]))

    # 200 upserts of another address: one created, the others see it unchanged.
    variants = [spaced(mixed_case("bob@acme.com")) for _ in range(200)]
    answers = gather([acall(c, "POST", "/v1/contacts:upsert-by-email", u.access,
                            {"email": v, "first_name": "Upserter %d" % i}) for i, v in enumerate(variants)])
    made = [r for r in answers if r.status == 201]
    found = [r for r in answers if r.status == 200]
    check(len(made) == 1 and len(found) == 199, "upserts answered %r; odd: %r" % (
        sorted({r.status for r in answers}), [body_of(r) for r in answers if r.status not in (200, 201)][:2]))
    first = json.loads(made[0].body)
    check(first.get("created") is True, "the 201 upsert has created %r" % first.get("created"))
    check_contact(first, "the upserted contact")
    check(first["email"] == "bob@acme.com", "upserted email %r" % first["email"])
    for r in found:
        doc = check_json(r, 200, "an upsert of an existing email")
        check(doc.get("created") is False and doc["id"] == first["id"], "upsert answered %r (created %r, id %r)"
              % ({k: doc.get(k) for k in ("created", "id")}, True, first["id"]))
        check(doc["first_name"] == first["first_name"] and doc["version"] == 1,
              "an upsert of an existing contact changed it: %r" % doc)

    for addr in ("ann@acme.com", "bob@acme.com"):
        check(live_with_email(u.tenant, addr) == 1, "%d live rows for %s" % (live_with_email(u.tenant, addr), addr))
    total = count_contacts(u.tenant)
    check(total == 2, "the tenant has %d contact rows after the races, expected 2" % total)

    # 50 brands of one registrable domain.
    domains = ["www.acme.com", "acme.com", "shop.acme.com"]
    answers = gather([acall(c, "POST", "/v1/brands", u.access, {"name": "Acme %d" % i, "domain": domains[i % 3]})
                      for i in range(50)])
    made = [r for r in answers if r.status == 201]
    check(len(made) == 1 and all(r.status in (201, 409) for r in answers),
          "brand creates answered %r" % sorted((r.status for r in answers)))
    brand = check_brand(json.loads(made[0].body), "the created brand", made[0])
    check(brand["domain"] == "acme.com", "brand domain %r, expected acme.com" % brand["domain"])
    for r in answers:
        if r.status == 409:
            doc = check_problem(r, 409, "duplicate", "a concurrent duplicate brand")
            check(doc.get("existing_id") == brand["id"], "brand 409 existing_id %r" % doc.get("existing_id"))
    n = int(sql("SELECT count(*) FROM %s WHERE tenant_id = '%s' AND domain = 'acme.com' AND deleted_at IS NULL"
                % (BRANDS, u.tenant)))
    check(n == 1, "%d live brands with domain acme.com" % n)
    n = int(sql("SELECT count(*) FROM %s WHERE tenant_id = '%s'" % (BRANDS, u.tenant)))
    check(n == 1, "%d brand rows after the race" % n)


# ---- 2. soft delete and restore ----


def test_soft_delete_restore():
    c = main_crmd()
    u = make_tenant(c, "softdel")
    addr = new_email("gone")
    old = create(c, u, email=addr)
    r = call(c, "DELETE", "/v1/contacts/" + old["id"], u.access)
    check(r.status == 204 and r.body == b"", "delete: %d %r" % (r.status, body_of(r)))
    get_contact(c, u, old["id"], "GET a deleted contact", status=404)
    gone = get_contact(c, u, old["id"], "GET a deleted contact with include_deleted", query="?include_deleted=true")
    check(gone["deleted_at"] is not None and gone["id"] == old["id"], "deleted contact %r" % gone)
    check_problem(call(c, "DELETE", "/v1/contacts/" + old["id"], u.access), 404, "not-found", "delete again")
    check_problem(call(c, "PATCH", "/v1/contacts/" + old["id"], u.access, {"title": "x"}), 404, "not-found",
                  "PATCH a deleted contact")
    check(old["id"] not in all_ids(c, u, "?limit=200"), "the deleted contact is listed")
    check(old["id"] in all_ids(c, u, "?limit=200&include_deleted=true"), "include_deleted does not list it")

    new = create(c, u, "create the same email again", email=addr.upper())
    check(new["id"] != old["id"], "the new contact reused the deleted one's id")
    doc = check_problem(call(c, "POST", "/v1/contacts/%s/restore" % old["id"], u.access), 409, "duplicate",
                        "restore while the email is taken")
    check(doc.get("existing_id") == new["id"], "restore 409 existing_id %r, expected %r" % (doc.get("existing_id"),
                                                                                           new["id"]))
    get_contact(c, u, old["id"], "still deleted after the refused restore", status=404)

    r = call(c, "DELETE", "/v1/contacts/" + new["id"], u.access)
    check(r.status == 204, "delete the new one: %d %r" % (r.status, body_of(r)))
    r = call(c, "POST", "/v1/contacts/%s/restore" % old["id"], u.access)
    back = check_contact(check_json(r, 200, "restore"), "restore", r)
    check(back["id"] == old["id"] and back["deleted_at"] is None and back["email"] == addr.lower(),
          "restored %r" % back)
    check(get_contact(c, u, old["id"], "GET the restored contact")["deleted_at"] is None, "restored still deleted")
    again = check_json(call(c, "POST", "/v1/contacts/%s/restore" % old["id"], u.access), 200, "restore a live one")
    check(again["version"] == back["version"], "restoring a live contact changed it: %r" % again)
    check_problem(call(c, "POST", "/v1/contacts/%s/restore" % uuid.uuid4(), u.access), 404, "not-found",
                  "restore an unknown id")
    check(live_with_email(u.tenant, addr) == 1, "not exactly one live row for the email")

    # Brands behave alike.
    b_old = create_brand(c, u, name="Gone Corp", domain="gone-corp.com")
    check(call(c, "DELETE", "/v1/brands/" + b_old["id"], u.access).status == 204, "delete a brand")
    check_problem(call(c, "GET", "/v1/brands/" + b_old["id"], u.access), 404, "not-found", "GET a deleted brand")
    r = call(c, "GET", "/v1/brands/%s?include_deleted=true" % b_old["id"], u.access)
    check(check_brand(check_json(r, 200, "deleted brand with include_deleted"), "deleted brand")["deleted_at"],
          "deleted brand without deleted_at")
    b_new = create_brand(c, u, "the same domain again", name="Gone Corp II", website="https://www.gone-corp.com/x")
    check(b_new["domain"] == "gone-corp.com", "domain from the website %r" % b_new["domain"])
    doc = check_problem(call(c, "POST", "/v1/brands/%s/restore" % b_old["id"], u.access), 409, "duplicate",
                        "restore a brand whose domain is taken")
    check(doc.get("existing_id") == b_new["id"], "brand restore existing_id %r" % doc.get("existing_id"))
    check(call(c, "DELETE", "/v1/brands/" + b_new["id"], u.access).status == 204, "delete the new brand")
    check_json(call(c, "POST", "/v1/brands/%s/restore" % b_old["id"], u.access), 200, "restore the old brand")


# ---- 3. keyset pagination under inserts ----

FIRST = ["Ann", "Bob", "Cleo", "Dan", "Eve", "Finn", "Gus"]
LAST = ["Ames", "Byrd", "Cole", "Dunn", "Eng", "Fox", "Gray", "Hale", "Ives", "Joy", "Kerr", "Lamb", "Moss"]


def page_item(i, tag):
    item = {"email": "%s-%05d@initech-%s.com" % (tag, i, tag), "first_name": FIRST[i % 7], "last_name": LAST[i % 13]}
    if i % 4 == 0:
        item["phone"] = "+1 555 %04d" % (i % 10000)
    if i % 3 == 0:
        item["title"] = "Engineer"
    if i % 5:
        item["lifecycle_stage"] = STAGES[i % len(STAGES)]
    return item


def test_keyset_pagination():
    c = main_crmd()
    u = make_tenant(c, "pages")
    tag = secrets.token_hex(3)
    existing, first_of = set(), {}
    t0 = time.monotonic()
    for b in range(5):
        items = [page_item(b * 1000 + i, tag) for i in range(1000)]
        doc, _ = bulk(c, u, {"op": "create", "mode": "atomic", "items": items})
        check(statuses(doc) == [201] * 1000, "bulk create %d: statuses %r" % (b, sorted(set(statuses(doc)))))
        existing.update(x["id"] for x in doc["results"])
        first_of.update((x["id"], items[x["index"]]["first_name"]) for x in doc["results"])
    log("   5,000 contacts in %.1f s" % (time.monotonic() - t0))
    check(len(existing) == 5000, "bulk creates returned %d distinct ids" % len(existing))
    check(count_contacts(u.tenant) == 5000, "the tenant has %d rows" % count_contacts(u.tenant))

    stop, inserted, errors = threading.Event(), [], []

    def inserter():
        i = 0
        while not stop.is_set():
            r = call(c, "POST", "/v1/contacts", u.access, page_item(100000 + i, tag))
            i += 1
            if r.status != 201:
                errors.append((r.status, body_of(r)))
                return
            inserted.append(json.loads(r.body)["id"])

    def walk(sort, search=None):
        seen, rows, cursor, pages = [], [], None, 0
        while True:
            query = "?limit=200" + ("&sort=" + q(sort) if sort else "") + ("&cursor=" + q(cursor) if cursor else "")
            query += "&q=" + q(search) if search else ""
            doc = list_contacts(c, u, query)
            pages += 1
            check(len(doc["data"]) <= 200, "sort %r: a page of %d" % (sort, len(doc["data"])))
            check(doc["data"] or not cursor, "sort %r: an empty page after a cursor" % sort)
            rows += doc["data"]
            seen += [it["id"] for it in doc["data"]]
            cursor = doc["next_cursor"]
            if not cursor:
                break
            check(pages < 200, "sort %r: pagination does not end" % sort)
            if pages == 2:
                last_cursor[sort] = cursor
        return seen, rows

    last_cursor = {}
    th = threading.Thread(target=inserter, daemon=True)
    th.start()
    try:
        for sort in (None, "name", "-lead_score", "created_at"):
            t0 = time.monotonic()
            seen, rows = walk(sort)
            n_ins = len(inserted)
            dup = {i for i, n in collections.Counter(seen).items() if n > 1}
            check(not dup, "sort %r: %d ids listed twice, e.g. %r" % (sort, len(dup), sorted(dup)[:3]))
            missing = existing - set(seen)
            check(not missing, "sort %r: %d pre-existing contacts never listed, e.g. %r"
                  % (sort, len(missing), sorted(missing)[:3]))
            if sort is None:
                keys = [it["updated_at"] for it in rows]
                check(keys == sorted(keys, reverse=True), "default sort is not -updated_at")
            elif sort == "-lead_score":
                keys = [it["lead_score"] for it in rows]
                check(keys == sorted(keys, reverse=True), "sort=-lead_score is not descending")
            elif sort == "created_at":
                keys = [it["created_at"] for it in rows]
                check(keys == sorted(keys), "sort=created_at is not ascending")
            log("   sort %r: %d rows in %.1f s, %d inserts so far" % (sort, len(seen), time.monotonic() - t0, n_ins))
        # Searches page the same way: one matching every contact (more than the 2,000 ids crmd sorts itself, so
        # the sort key's index is walked) and one matching a seventh of them (answered from the search indexes).
        for search, expected in (("initech-" + tag, existing),
                                 (FIRST[0], {i for i, f in first_of.items() if f == FIRST[0]})):
            seen, rows = walk("name", search)
            dup = {i for i, n in collections.Counter(seen).items() if n > 1}
            check(not dup, "q=%s: %d ids listed twice" % (search, len(dup)))
            missing = expected - set(seen)
            check(not missing, "q=%s: %d matching contacts never listed" % (search, len(missing)))
            log("   q=%s sort name: %d rows (%d expected at least)" % (search, len(seen), len(expected)))
    finally:
        stop.set()
        th.join(60)
    check(not errors, "the concurrent inserter failed: %r" % errors)
    check(inserted, "no insert ran while paging")

    # Many matches behind a block of newer contacts that do not match: the first 5,000 rows in sort order hold none,
    # so crmd reads the matches through the search indexes instead (its third way of answering a search).
    for b in range(5):
        items = [{"email": "zulu-%s-%05d@umbrella-%s.com" % (tag, b * 1000 + i, tag), "first_name": "Zed"}
                 for i in range(1000)]
        doc, _ = bulk(c, u, {"op": "create", "mode": "atomic", "items": items})
        check(statuses(doc) == [201] * 1000, "newer non-matching contacts: %r" % sorted(set(statuses(doc))))
    matching = existing | set(inserted)
    seen, _ = walk(None, "initech-" + tag)
    check(len(seen) == len(set(seen)), "q behind newer contacts: ids listed twice")
    check(set(seen) == matching, "q behind newer contacts: %d listed, %d match" % (len(set(seen)), len(matching)))

    # Cursors: bound to their sort, and not forgeable.
    check_invalid(call(c, "GET", "/v1/contacts?cursor=" + q(last_cursor["name"]), u.access), {"cursor": None},
                  "a sort=name cursor with the default sort")
    check_invalid(call(c, "GET", "/v1/contacts?cursor=not-a-cursor", u.access), {"cursor": None}, "a bad cursor")
    for query, field in (("limit=0", "limit"), ("limit=201", "limit"), ("limit=x", "limit"), ("sort=email", "sort"),
                         ("sort=--name", "sort"), ("include_deleted=maybe", "include_deleted"),
                         ("updated_since=yesterday", "updated_since")):
        check_invalid(call(c, "GET", "/v1/contacts?" + query, u.access), {field: None}, "GET /v1/contacts?" + query)
    doc = list_contacts(c, u, "")
    check(len(doc["data"]) == 50 and doc["next_cursor"], "the default limit is not 50: %d" % len(doc["data"]))


# ---- 4. search and filters ----


def test_search():
    c = main_crmd()
    u = make_tenant(c, "search")
    brand = create_brand(c, u, name="Vandelay Industries", domain="vandelay-industries.com")
    ann = create(c, u, first_name="Annabelle", last_name="Smith", email="annabelle.smith@initech.com", tags=["VIP"],
                 lifecycle_stage="lead", owner_id=u.id)
    art = create(c, u, first_name="Art", last_name="Buck", email="art.buck@importer.biz", brand_id=brand["id"],
                 lifecycle_stage="customer")
    check(art["brand"] == {"id": brand["id"], "name": "Vandelay Industries", "domain": "vandelay-industries.com"},
          "inlined brand %r" % art["brand"])
    check(ann["tags"] == ["vip"] and ann["owner_id"] == u.id, "created %r" % ann)
    carol = create(c, u, first_name="Carol", last_name="White", email="carol@umbrella-corp.org", tags=["newsletter"])
    ghost = create(c, u, first_name="Annika", last_name="Ghost", email="annika@ghost-town.net", tags=["vip"])
    check(call(c, "DELETE", "/v1/contacts/" + ghost["id"], u.access).status == 204, "delete Annika")

    def found(query, what):
        return set(all_ids(c, u, "?limit=200&" + query, what))

    for term, want, not_want in (
        ("Ann", {ann["id"]}, {art["id"], carol["id"], ghost["id"]}),
        ("ann", {ann["id"]}, {art["id"], carol["id"]}),
        ("annabelle.smith@initech.com", {ann["id"]}, {art["id"], carol["id"]}),
        ("smith@init", {ann["id"]}, {art["id"], carol["id"]}),
        ("initech", {ann["id"]}, {carol["id"]}),
        ("Vandelay", {art["id"]}, {ann["id"], carol["id"]}),
        ("vandel", {art["id"]}, {ann["id"], carol["id"]}),
        ("vip", {ann["id"]}, {art["id"], carol["id"], ghost["id"]}),
        ("newsletter", {carol["id"]}, {ann["id"], art["id"]}),
        ("Carol White", {carol["id"]}, {ann["id"], art["id"]}),
    ):
        got = found("q=" + q(term), "q=%r" % term)
        check(want <= got, "q=%r does not find %r (found %r)" % (term, want - got, got))
        check(not (got & not_want), "q=%r finds %r" % (term, got & not_want))
    got = found("q=Ann&include_deleted=true", "q=Ann with include_deleted")
    check({ann["id"], ghost["id"]} <= got, "q=Ann&include_deleted=true found %r" % got)
    got = found("q=vip&include_deleted=true", "q=vip with include_deleted")
    check(ghost["id"] in got, "q=vip&include_deleted=true does not find the deleted contact")

    for query, want in (
        ("tag=vip", {ann["id"]}),
        ("tag=newsletter", {carol["id"]}),
        ("tag=nobody-has-this", set()),
        ("brand_id=" + brand["id"], {art["id"]}),
        ("stage=customer", {art["id"]}),
        ("stage=lead", {ann["id"]}),
        ("owner_id=" + u.id, {x["id"] for x in (ann, art, carol) if x["owner_id"] == u.id}),
        ("q=Ann&tag=vip", {ann["id"]}),
        ("q=Ann&stage=customer", set()),
        ("tag=vip&include_deleted=true", {ann["id"], ghost["id"]}),
        ("updated_since=" + q("2999-01-01T00:00:00Z"), set()),
    ):
        got = found(query, query)
        check(got == want, "?%s listed %r, expected %r" % (query, got, want))
    everything = found("updated_since=" + q("2000-01-01T00:00:00.000Z"), "updated_since 2000")
    check(everything == {ann["id"], art["id"], carol["id"]}, "updated_since 2000 listed %r" % everything)
    for query, field in (("stage=king", "stage"), ("brand_id=not-a-uuid", "brand_id"),
                         ("owner_id=not-a-uuid", "owner_id")):
        check_invalid(call(c, "GET", "/v1/contacts?" + query, u.access), {field: None}, "GET /v1/contacts?" + query)

    # The brand's side.
    doc = check_json(call(c, "GET", "/v1/brands?q=vandelay", u.access), 200, "brands ?q=vandelay")
    check([b["id"] for b in doc["data"]] == [brand["id"]], "brands ?q=vandelay: %r" % doc["data"])
    doc = check_json(call(c, "GET", "/v1/brands/%s/contacts" % brand["id"], u.access), 200, "the brand's contacts")
    check([x["id"] for x in doc["data"]] == [art["id"]] and doc["next_cursor"] is None,
          "the brand's contacts: %r" % doc)


# ---- 5. bulk ----


def test_bulk():
    c = main_crmd()
    u = make_tenant(c, "bulk")
    tag = secrets.token_hex(4)
    items = [{"email": "bulk%d-%s@initech.com" % (i, tag), "first_name": "Bulk %d" % i} for i in range(10)]
    items[7]["email"] = "not-an-email-%s" % tag
    emails = [it["email"] for it in items]
    in_list = ",".join("'%s'" % e for e in emails)

    doc, _ = bulk(c, u, {"op": "create", "mode": "atomic", "items": items}, status=422)
    check(doc.get("index") == 7 and doc.get("item_status") == 400, "atomic failure names index %r, status %r"
          % (doc.get("index"), doc.get("item_status")))
    fields = set(error_map(doc))
    check(fields & {"items[7].email", "email"}, "atomic failure's errors %r do not name the email" % doc.get("errors"))
    check(count_contacts(u.tenant, "lower(email) IN (%s)" % in_list) == 0, "the failed atomic bulk wrote rows")

    doc, _ = bulk(c, u, {"op": "create", "mode": "partial", "items": items})
    check(statuses(doc) == [201] * 7 + [400] + [201] * 2, "partial create statuses %r" % statuses(doc))
    for x in doc["results"]:
        if x["status"] == 201:
            check(UUID_RE.match(x.get("id") or ""), "a created item without an id: %r" % x)
    err = doc["results"][7]["error"]
    check(err.get("type") == PROBLEM + "validation-failed", "item 7's error type %r" % err.get("type"))
    check({e.get("field") for e in err.get("errors") or []} & {"items[7].email", "email"},
          "item 7's errors %r" % err.get("errors"))
    ids = [x["id"] for x in doc["results"] if x["status"] == 201]
    check(count_contacts(u.tenant, "lower(email) IN (%s) AND deleted_at IS NULL" % in_list) == 9,
          "partial create wrote %d rows" % count_contacts(u.tenant, "lower(email) IN (%s)" % in_list))
    a, b, cc = ids[0], ids[1], ids[2]
    ghost = str(uuid.uuid4())

    # Limits and shapes.
    for body, field in (({"op": "delete", "ids": [str(uuid.uuid4()) for _ in range(1001)]}, "ids"),
                        ({"op": "create", "items": [{"email": "x%d@initech.com" % i} for i in range(1001)]}, "items"),
                        ({"op": "create", "items": []}, "items"),
                        ({"op": "delete", "ids": []}, "ids"),
                        ({"op": "merge", "ids": [a]}, "op"),
                        ({"op": "delete", "mode": "lenient", "ids": [a]}, "mode"),
                        ({"op": "tag", "ids": [a]}, "tag")):
        check_invalid(call(c, "POST", "/v1/contacts/bulk", u.access, body), {field: None},
                      "bulk %s with %s" % (body["op"], field))
    doc = check_invalid(call(c, "POST", "/v1/contacts/bulk", u.access,
                             {"op": "delete", "ids": [str(uuid.uuid4()) for _ in range(1001)]}), {"ids": None},
                        "1001 ids")
    check(any("1000" in (m or "") for m in error_map(doc)["ids"]), "1001 ids: message %r" % error_map(doc)["ids"])

    # Duplicates: inside the batch and against a live contact.
    dup = "dup-%s@initech.com" % tag
    batch = [{"email": dup}, {"email": "other-%s@initech.com" % tag}, {"email": "  " + dup.upper()},
             {"email": emails[0]}]
    doc, _ = bulk(c, u, {"op": "create", "mode": "atomic", "items": batch}, status=422)
    check(doc.get("index") == 2 and doc.get("item_status") == 409, "atomic duplicate: index %r status %r"
          % (doc.get("index"), doc.get("item_status")))
    check(live_with_email(u.tenant, dup) == 0, "the failed atomic batch wrote the duplicate's first copy")
    doc, _ = bulk(c, u, {"op": "create", "mode": "partial", "items": batch})
    check(statuses(doc) == [201, 201, 409, 409], "partial duplicates: %r" % statuses(doc))
    check(doc["results"][2]["error"].get("existing_id") == doc["results"][0]["id"],
          "in-batch duplicate's existing_id %r, first copy %r" % (doc["results"][2]["error"], doc["results"][0]["id"]))
    check(doc["results"][3]["error"].get("existing_id") == a, "duplicate of a live contact: %r" % doc["results"][3])
    check(live_with_email(u.tenant, dup) == 1, "not one live row for the in-batch duplicate")

    # Update.
    doc, _ = bulk(c, u, {"op": "update", "mode": "atomic", "items": [{"id": a, "title": "T-atomic"},
                                                                     {"id": ghost, "title": "x"}]}, status=422)
    check(doc.get("index") == 1 and doc.get("item_status") == 404, "atomic update: %r" % doc)
    check(get_contact(c, u, a, "a after the failed update")["title"] is None, "the failed atomic update wrote")
    doc, _ = bulk(c, u, {"op": "update", "mode": "partial", "items": [
        {"id": a, "title": "T1"}, {"id": ghost, "title": "x"}, {"id": b, "first_name": 5}]})
    check(statuses(doc) == [200, 404, 400], "partial update statuses %r" % statuses(doc))
    check({e.get("field") for e in doc["results"][2]["error"].get("errors") or []} & {"items[2].first_name",
                                                                                       "first_name"},
          "update item 2's errors %r" % doc["results"][2]["error"])
    got = get_contact(c, u, a, "a after the partial update")
    check(got["title"] == "T1" and got["version"] == 2, "a after the update: %r" % got)

    # Delete.
    doc, _ = bulk(c, u, {"op": "delete", "mode": "atomic", "ids": [a, ghost]}, status=422)
    check(doc.get("index") == 1 and doc.get("item_status") == 404, "atomic delete: %r" % doc)
    get_contact(c, u, a, "a after the failed atomic delete")
    doc, _ = bulk(c, u, {"op": "delete", "mode": "partial", "ids": [a, b, ghost]})
    check(statuses(doc) == [204, 204, 404], "partial delete statuses %r" % statuses(doc))
    for x in (a, b):
        get_contact(c, u, x, "bulk-deleted contact", status=404)

    # Restore.
    doc, _ = bulk(c, u, {"op": "restore", "mode": "atomic", "ids": [a, ghost]}, status=422)
    check(doc.get("index") == 1 and doc.get("item_status") == 404, "atomic restore: %r" % doc)
    get_contact(c, u, a, "a after the failed atomic restore", status=404)
    doc, _ = bulk(c, u, {"op": "restore", "mode": "partial", "ids": [a, ghost, b]})
    check(statuses(doc) == [200, 404, 200], "partial restore statuses %r" % statuses(doc))
    get_contact(c, u, a, "a after the restore")

    # Tag and untag (success is 200 or 204: the spec names both for items and 204 for the single route).
    ok = (200, 204)
    doc, _ = bulk(c, u, {"op": "tag", "mode": "atomic", "ids": [cc, ghost], "tag": "atomic-tag"}, status=422)
    check(doc.get("index") == 1 and doc.get("item_status") == 404, "atomic tag: %r" % doc)
    check(get_contact(c, u, cc, "c after the failed tag")["tags"] == [], "the failed atomic tag wrote")
    doc, _ = bulk(c, u, {"op": "tag", "mode": "partial", "ids": [a, ghost, b], "tag": " Bulk-VIP "})
    st = statuses(doc)
    check(st[0] in ok and st[1] == 404 and st[2] in ok, "partial tag statuses %r" % st)
    check(get_contact(c, u, a, "a after tag")["tags"] == ["bulk-vip"], "a's tags after the bulk tag")
    doc, _ = bulk(c, u, {"op": "tag", "mode": "atomic", "ids": [a, cc], "tag": "bulk-vip"})
    check(all(s in ok for s in statuses(doc)), "atomic tag (one already tagged): %r" % statuses(doc))
    doc, _ = bulk(c, u, {"op": "untag", "mode": "partial", "ids": [a, ghost], "tag": "bulk-vip"})
    st = statuses(doc)
    check(st[0] in ok and st[1] == 404, "partial untag statuses %r" % st)
    check(get_contact(c, u, a, "a after untag")["tags"] == [], "a's tags after the bulk untag")
    doc, _ = bulk(c, u, {"op": "untag", "mode": "atomic", "ids": [a, b, cc], "tag": "bulk-vip"})
    check(all(s in ok for s in statuses(doc)), "atomic untag (a without the tag): %r" % statuses(doc))
    for x in (b, cc):
        check(get_contact(c, u, x, "after the atomic untag")["tags"] == [], "bulk untag left the tag")
    check_invalid(call(c, "POST", "/v1/contacts/bulk", u.access, {"op": "tag", "ids": [a], "tag": "a,b"}),
                  {"tag": None}, "bulk tag with a comma")


# ---- 6. idempotency ----


def test_idempotency():
    c = main_crmd()
    u = make_tenant(c, "idem")
    key = "idem-" + secrets.token_hex(8)
    addr = new_email("idem")
    body = json.dumps({"email": addr, "first_name": "Idem"})
    hk = {"idempotency-key": key}
    r1 = call(c, "POST", "/v1/contacts", u.access, body, hk)
    first = check_contact(check_json(r1, 201, "first keyed create"), "first keyed create", r1)
    check((r1.headers.get("idempotent-replayed") or "").lower() != "true", "the original is marked replayed")
    r2 = call(c, "POST", "/v1/contacts", u.access, body, hk)
    check(r2.status == 201 and r2.body == r1.body, "replay: %d %r vs %r" % (r2.status, body_of(r2), body_of(r1)))
    check(r2.headers.get("idempotent-replayed") == "true", "replay header %r" % r2.headers.get("idempotent-replayed"))
    for h in ("etag", "location", "content-type"):
        check(r2.headers.get(h) == r1.headers.get(h), "replay header %s %r vs %r" % (h, r2.headers.get(h),
                                                                                   r1.headers.get(h)))
    check(live_with_email(u.tenant, addr) == 1 and count_contacts(u.tenant) == 1, "the replay wrote a row")

    check_problem(call(c, "POST", "/v1/contacts", u.access, {"email": addr, "first_name": "Other"}, hk), 422,
                  "idempotency-mismatch", "same key, different body")
    check_problem(call(c, "POST", "/v1/brands", u.access, {"name": "Idem Co"}, hk), 422, "idempotency-mismatch",
                  "same key, different path")
    check(int(sql("SELECT count(*) FROM %s WHERE tenant_id = '%s'" % (BRANDS, u.tenant))) == 0,
          "the mismatched request created a brand")

    # A validation failure is not stored: the key still works for a valid body.
    k3 = {"idempotency-key": "idem-invalid-" + secrets.token_hex(6)}
    check_invalid(call(c, "POST", "/v1/contacts", u.access, {"email": "nope"}, k3), {"email": None},
                  "keyed invalid create")
    check_contact(check_json(call(c, "POST", "/v1/contacts", u.access, {"email": new_email("idem3")}, k3), 201,
                             "the same key after a 400"), "the same key after a 400")

    # Keys are per tenant: another tenant's identical request is its own.
    v = make_tenant(c, "idem-other")
    r = call(c, "POST", "/v1/contacts", v.access, body, hk)
    other = check_json(r, 201, "another tenant with the same key")
    check((r.headers.get("idempotent-replayed") or "").lower() != "true" and other["id"] != first["id"],
          "another tenant got the first tenant's stored answer")

    for bad in ("x" * 256, "caf\u00e9".encode("utf-8").decode("latin-1")):
        r = call(c, "POST", "/v1/contacts", u.access, {"email": new_email("badkey")}, {"idempotency-key": bad})
        check_problem(r, 400, None, "Idempotency-Key %r" % bad[:20])

    # 20 at once with one fresh key: one row; every answer the stored 201 or "in progress".
    key = {"idempotency-key": "idem-burst-" + secrets.token_hex(6)}
    addr = new_email("burst")
    body = json.dumps({"email": addr, "title": "Burst"})
    answers = gather([acall(c, "POST", "/v1/contacts", u.access, body, key) for _ in range(20)])
    ok = [r for r in answers if r.status == 201]
    busy = [r for r in answers if r.status == 409]
    check(len(ok) + len(busy) == 20 and ok, "burst answered %r; odd: %r" % (
        sorted(r.status for r in answers), [body_of(r) for r in answers if r.status not in (201, 409)][:2]))
    check(len({r.body for r in ok}) == 1, "the 201 answers differ: %r" % [body_of(r) for r in ok[:2]])
    for r in busy:
        check_problem(r, 409, "idempotency-in-progress", "a concurrent duplicate key")
    check(live_with_email(u.tenant, addr) == 1 and count_contacts(u.tenant, "lower(email) = '%s'" % addr) == 1,
          "the burst wrote %d rows" % count_contacts(u.tenant, "lower(email) = '%s'" % addr))
    r = call(c, "POST", "/v1/contacts", u.access, body, key)
    check(r.status == 201 and r.body == ok[0].body and r.headers.get("idempotent-replayed") == "true",
          "replay after the burst: %d %r" % (r.status, body_of(r)))
    log("   burst: %d created/replayed, %d in progress" % (len(ok), len(busy)))

    # Bulk is a POST too.
    bk = {"idempotency-key": "idem-bulk-" + secrets.token_hex(6)}
    bbody = {"op": "create", "mode": "partial", "items": [{"email": new_email("ib%d" % i)} for i in range(3)]}
    before = count_contacts(u.tenant)
    _, r1 = bulk(c, u, bbody, headers=bk)
    _, r2 = bulk(c, u, bbody, headers=bk)
    check(r2.body == r1.body and r2.headers.get("idempotent-replayed") == "true", "bulk replay differs")
    check(count_contacts(u.tenant) == before + 3, "the bulk replay wrote rows")


# ---- 7. If-Match ----


def test_if_match():
    c = main_crmd()
    u = make_tenant(c, "ifmatch")
    x = create(c, u)
    path = "/v1/contacts/" + x["id"]
    r = call(c, "GET", path, u.access)
    check(r.status == 200 and r.headers.get("etag") == '"1"', "GET: %d ETag %r" % (r.status, r.headers.get("etag")))
    r = call(c, "PATCH", path, u.access, {"title": "CEO"}, {"if-match": '"1"'})
    doc = check_contact(check_json(r, 200, "PATCH with the current version"), "PATCH", r)
    check(doc["version"] == 2 and doc["title"] == "CEO" and r.headers.get("etag") == '"2"',
          "after PATCH: version %r ETag %r" % (doc["version"], r.headers.get("etag")))
    check_problem(call(c, "PATCH", path, u.access, {"title": "CTO"}, {"if-match": '"1"'}), 412,
                  "precondition-failed", "PATCH with a stale version")
    check_problem(call(c, "DELETE", path, u.access, headers={"if-match": '"1"'}), 412, "precondition-failed",
                  "DELETE with a stale version")
    got = get_contact(c, u, x["id"], "after the refused writes")
    check(got["title"] == "CEO" and got["version"] == 2, "the refused writes changed the contact: %r" % got)

    r = call(c, "PATCH", path, u.access, {"title": None, "first_name": "Merge"}, {"if-match": "*"},
             ctype="application/merge-patch+json")
    doc = check_json(r, 200, "PATCH If-Match * as merge-patch+json")
    check(doc["version"] == 3 and doc["title"] is None and doc["first_name"] == "Merge", "after merge patch %r" % doc)
    r = call(c, "PATCH", path, u.access, {})
    doc = check_json(r, 200, "empty PATCH")
    check(doc["version"] == 3 and r.headers.get("etag") == '"3"', "an empty PATCH bumped the version: %r" % doc)
    r = call(c, "PATCH", path, u.access, {"first_name": "Merge"})
    check(check_json(r, 200, "a PATCH that changes nothing")["version"] in (3, 4), "version after a no-op")
    version = json.loads(r.body)["version"]
    r = call(c, "DELETE", path, u.access, headers={"if-match": '"%d"' % version})
    check(r.status == 204, "DELETE with the current version: %d %r" % (r.status, body_of(r)))

    # Brands honour it too.
    br = create_brand(c, u, name="Match Co", domain="match-co.com")
    bpath = "/v1/brands/" + br["id"]
    check(call(c, "GET", bpath, u.access).headers.get("etag") == '"1"', "brand ETag")
    r = call(c, "PATCH", bpath, u.access, {"name": "Match Company"}, {"if-match": '"1"'})
    check(check_json(r, 200, "brand PATCH")["version"] == 2 and r.headers.get("etag") == '"2"', "brand after PATCH")
    check_problem(call(c, "PATCH", bpath, u.access, {"name": "X"}, {"if-match": '"1"'}), 412, "precondition-failed",
                  "brand PATCH with a stale version")
    check_problem(call(c, "DELETE", bpath, u.access, headers={"if-match": '"1"'}), 412, "precondition-failed",
                  "brand DELETE with a stale version")


# ---- 8. isolation and roles ----


def test_isolation_and_roles():
    c = main_crmd()
    a = make_tenant(c, "iso-a")
    b = make_tenant(c, "iso-b")
    brand = create_brand(c, a, name="Secret Brand", domain="secret-brand.com")
    x = create(c, a, email="shared@globex.com", brand_id=brand["id"], tags=["a-only"])
    xp, bp = "/v1/contacts/" + x["id"], "/v1/brands/" + brand["id"]
    for what, method, path, body in (
        ("GET", "GET", xp, None), ("GET include_deleted", "GET", xp + "?include_deleted=true", None),
        ("PATCH", "PATCH", xp, {"title": "pwned"}), ("DELETE", "DELETE", xp, None),
        ("restore", "POST", xp + "/restore", None), ("PUT tag", "PUT", xp + "/tags/b-tag", None),
        ("DELETE tag", "DELETE", xp + "/tags/a-only", None),
        ("GET brand", "GET", bp, None), ("PATCH brand", "PATCH", bp, {"name": "pwned"}),
        ("DELETE brand", "DELETE", bp, None), ("restore brand", "POST", bp + "/restore", None),
        ("brand contacts", "GET", bp + "/contacts", None),
        ("GET a malformed id", "GET", "/v1/contacts/not-a-uuid", None),
        ("GET an unknown id", "GET", "/v1/contacts/%s" % uuid.uuid4(), None),
    ):
        check_problem(call(c, method, path, b.access, body), 404, "not-found", "tenant B: %s of A's" % what)
    got = get_contact(c, a, x["id"], "A's contact after B's attempts")
    check(got["version"] == 1 and got["tags"] == ["a-only"] and got["title"] is None, "B changed A's contact: %r" % got)
    check(list_contacts(c, b, "?limit=200")["data"] == [], "B's list is not empty")
    check(list_contacts(c, b, "?q=shared%40globex.com&include_deleted=true")["data"] == [], "B's search finds A's")
    check(check_json(call(c, "GET", "/v1/brands", b.access), 200, "B lists brands")["data"] == [], "B sees brands")
    doc, _ = bulk(c, b, {"op": "delete", "mode": "partial", "ids": [x["id"]]})
    check(statuses(doc) == [404], "B's bulk delete of A's contact: %r" % statuses(doc))
    check_invalid(call(c, "POST", "/v1/contacts", b.access, {"email": new_email("b"), "brand_id": brand["id"]}),
                  {"brand_id": "no such brand"}, "B uses A's brand")
    check_invalid(call(c, "POST", "/v1/contacts", b.access, {"email": new_email("b"), "owner_id": a.id}),
                  {"owner_id": "no such user"}, "B names A's owner")
    mine = create(c, b, "B creates A's email", email="shared@globex.com")
    check(mine["id"] != x["id"], "B got A's contact")
    get_contact(c, a, x["id"], "A's contact is still A's")

    # Roles within A.
    viewer, member, admin = invite(c, a, "viewer"), invite(c, a, "member"), invite(c, a, "admin")
    check(get_contact(c, viewer, x["id"], "viewer GET")["id"] == x["id"], "viewer GET")
    check(x["id"] in [it["id"] for it in list_contacts(c, viewer, "?limit=200")["data"]], "viewer list")
    check_json(call(c, "GET", bp, viewer.access), 200, "viewer GET brand")
    check_json(call(c, "GET", "/v1/settings/lead-scoring", viewer.access), 200, "viewer reads lead scoring")
    check_json(call(c, "GET", "/v1/tags", viewer.access), 200, "viewer lists tags")
    forbidden = (
        ("POST contact", "POST", "/v1/contacts", {"email": new_email("v")}),
        ("upsert", "POST", "/v1/contacts:upsert-by-email", {"email": new_email("v")}),
        ("PATCH", "PATCH", xp, {"title": "viewer"}),
        ("DELETE", "DELETE", xp, None),
        ("PUT tag", "PUT", xp + "/tags/viewer", None),
        ("bulk create", "POST", "/v1/contacts/bulk", {"op": "create", "items": [{"email": new_email("v")}]}),
        ("bulk tag", "POST", "/v1/contacts/bulk", {"op": "tag", "ids": [x["id"]], "tag": "v"}),
        ("POST brand", "POST", "/v1/brands", {"name": "Viewer Co"}),
        ("PATCH brand", "PATCH", bp, {"name": "Viewer Co"}),
        ("PUT lead scoring", "PUT", "/v1/settings/lead-scoring", DEFAULT_SCORING),
    )
    for what, method, path, body in forbidden:
        check_problem(call(c, method, path, viewer.access, body), 403, "forbidden", "viewer: " + what)

    y = create(c, member, "member creates")
    check_json(call(c, "PATCH", "/v1/contacts/" + y["id"], member.access, {"title": "Member"}), 200, "member PATCH")
    check(call(c, "PUT", "/v1/contacts/%s/tags/member" % y["id"], member.access).status == 204, "member tags")
    doc, _ = bulk(c, member, {"op": "update", "mode": "partial", "items": [{"id": y["id"], "title": "Bulk"}]})
    check(statuses(doc) == [200], "member bulk update: %r" % statuses(doc))
    for what, method, path, body in (
        ("DELETE", "DELETE", "/v1/contacts/" + y["id"], None),
        ("bulk delete", "POST", "/v1/contacts/bulk", {"op": "delete", "ids": [y["id"]]}),
        ("DELETE brand", "DELETE", bp, None),
        ("PUT lead scoring", "PUT", "/v1/settings/lead-scoring", DEFAULT_SCORING),
        ("PUT custom field", "PUT", "/v1/settings/custom-fields/member_field", {"type": "text"}),
    ):
        check_problem(call(c, method, path, member.access, body), 403, "forbidden", "member: " + what)
    get_contact(c, a, y["id"], "the member's contact after the refused delete")

    r = call(c, "DELETE", "/v1/contacts/" + y["id"], admin.access)
    check(r.status == 204, "admin DELETE: %d %r" % (r.status, body_of(r)))
    check_json(call(c, "POST", "/v1/contacts/%s/restore" % y["id"], admin.access), 200, "admin restore")
    doc, _ = bulk(c, admin, {"op": "delete", "mode": "atomic", "ids": [y["id"]]})
    check(statuses(doc) == [204], "admin bulk delete: %r" % statuses(doc))
    check_json(call(c, "PUT", "/v1/settings/lead-scoring", admin.access, DEFAULT_SCORING), 200, "admin PUT scoring")


# ---- 9. bad input ----


def test_bad_input():
    c = main_crmd()
    u = make_tenant(c, "badin")
    r = call(c, "PUT", "/v1/settings/custom-fields/code", u.access, {"type": "text", "max_length": 5,
                                                                      "required": True, "label": "Code"})
    d = check_json(r, 200, "define code")
    check(d.get("name") == "code" and d.get("type") == "text" and d.get("max_length") == 5 and d.get("required")
          is True, "code definition %r" % d)
    check_json(call(c, "PUT", "/v1/settings/custom-fields/size", u.access, {"type": "number"}), 200, "define size")
    defs = check_json(call(c, "GET", "/v1/settings/custom-fields", u.access), 200, "list custom fields")["data"]
    check({f["name"] for f in defs} == {"code", "size"}, "custom fields %r" % defs)
    for name, body, field in (("Bad", {"type": "text"}, "name"), ("1x", {"type": "text"}, "name"),
                              ("ok_name", {"type": "blob"}, "type"),
                              ("ok_name", {"type": "text", "max_length": 0}, "max_length"),
                              ("ok_name", {"type": "text", "max_length": 10001}, "max_length"),
                              ("ok_name", {"type": "text", "label": "l" * 101}, "label")):
        r = call(c, "PUT", "/v1/settings/custom-fields/" + name, u.access, body)
        check(r.status in (400, 404), "custom field %s %r: %d %r" % (name, body, r.status, body_of(r)))
        if r.status == 400:
            check_invalid(r, {field: None}, "custom field %s %r" % (name, body))
    brand = create_brand(c, u, name="Bad Input Co", domain="bad-input.com")
    victim = create(c, u, email=new_email("victim"), custom_fields={"code": "abc"})
    check(victim["custom_fields"] == {"code": "abc"}, "custom fields stored %r" % victim["custom_fields"])

    def snapshot():
        return sql("SELECT (SELECT count(*) FROM %s WHERE tenant_id = '%s') || ',' || (SELECT count(*) FROM %s WHERE "
                   "tenant_id = '%s') || ',' || (SELECT count(*) FROM crm.audit_log WHERE tenant_id = '%s') || ',' || "
                   "(SELECT max(version) FROM %s WHERE tenant_id = '%s')"
                   % (CONTACTS, u.tenant, BRANDS, u.tenant, u.tenant, CONTACTS, u.tenant))

    before = snapshot()
    good = {"email": new_email("good"), "custom_fields": {"code": "ab"}}
    cases = [
        ("wrong types", dict(good, first_name=5, tags="x", custom_fields=[]),
         {"first_name": "must be a string or null", "tags": None, "custom_fields": None}),
        ("more wrong types", dict(good, last_name=True, phone=12345, lead_score="high", lifecycle_stage=3,
                                  brand_id=7, last_activity_at=1),
         {"last_name": None, "phone": None, "lifecycle_stage": None, "brand_id": None, "last_activity_at": None}),
        ("unknown fields", dict(good, nickname="Nick", foo=1),
         {"nickname": "is not a known field", "foo": "is not a known field"}),
        ("read-only fields", dict(good, id=str(uuid.uuid4()), version=9, lead_score=99),
         {"id": None, "version": None, "lead_score": None}),
        ("over-long strings", dict(good, first_name="f" * 101, last_name="l" * 101, display_name="d" * 201,
                                   title="t" * 201, phone="1" * 33),
         {"first_name": None, "last_name": None, "display_name": None, "title": None, "phone": None}),
        ("bad phone", dict(good, phone="call me maybe"), {"phone": None}),
        ("phone with two digits", dict(good, phone="+1 2"), {"phone": None}),
        ("no email", {"custom_fields": {"code": "ab"}}, {"email": None}),
        ("null email", dict(good, email=None), {"email": None}),
        ("email no-at-sign", dict(good, email="no-at-sign"), {"email": "is not a valid e-mail address"}),
        ("email a@", dict(good, email="a@"), {"email": "is not a valid e-mail address"}),
        ("email a b@c.com", dict(good, email="a b@c.com"), {"email": "is not a valid e-mail address"}),
        ("email two addresses", dict(good, email="a@b.com, c@d.com"), {"email": "is not a valid e-mail address"}),
        ("email 255 bytes", dict(good, email="a" * 243 + "@example.com"), {"email": "is longer than 254 characters"}),
        ("bad stage", dict(good, lifecycle_stage="king"), {"lifecycle_stage": None}),
        ("bad source", dict(good, source="web"), {"source": None}),
        ("malformed brand_id", dict(good, brand_id="not-a-uuid"), {"brand_id": None}),
        ("unknown brand", dict(good, brand_id=str(uuid.uuid4())), {"brand_id": "no such brand"}),
        ("unknown owner", dict(good, owner_id=str(uuid.uuid4())), {"owner_id": "no such user"}),
        ("bad last_activity_at", dict(good, last_activity_at="yesterday"), {"last_activity_at": None}),
        ("tag with a comma", dict(good, tags=["a,b"]), {"tags*": None}),
        ("empty tag", dict(good, tags=["  "]), {"tags*": None}),
        ("long tag", dict(good, tags=["t" * 65]), {"tags*": None}),
        ("tag with a control character", dict(good, tags=["a\x01b"]), {"tags*": None}),
        ("51 tags", dict(good, tags=["t%d" % i for i in range(51)]), {"tags": None}),
        ("custom fields failing their definitions",
         dict(good, custom_fields={"code": "toolong", "size": "big", "undefined_cf": 1}),
         {"custom_fields.code": "is longer than 5 characters", "custom_fields.size": "must be a number",
          "custom_fields.undefined_cf": "is not a defined custom field"}),
        ("required custom field omitted", dict(good, custom_fields={"size": 3}),
         {"custom_fields.code": "is required"}),
        ("required custom field null", dict(good, custom_fields={"code": None}), {"custom_fields.code": None}),
        ("no custom fields at all", {"email": new_email("nocf")}, {"custom_fields.code": "is required"}),
        ("everything at once", {"email": "a@", "first_name": 5, "last_name": "l" * 101, "tags": "x", "nickname": 1,
                                "foo": 2, "lifecycle_stage": "king",
                                "custom_fields": {"code": "toolong", "size": "big", "undefined_cf": 1}},
         {"email": None, "first_name": None, "last_name": None, "tags": None, "nickname": None, "foo": None,
          "lifecycle_stage": None, "custom_fields.code": None, "custom_fields.size": None,
          "custom_fields.undefined_cf": None}),
    ]
    for what, body, expected in cases:
        check_invalid(call(c, "POST", "/v1/contacts", u.access, body), expected, "create with " + what)
        check_invalid(call(c, "POST", "/v1/contacts:upsert-by-email", u.access, body), expected, "upsert with " + what)

    # PATCH: the same rules, plus source and tags are not patchable, email cannot be cleared, and a required custom
    # field cannot be set to null.
    vp = "/v1/contacts/" + victim["id"]
    for what, body, expected in (
        ("wrong types and unknown fields", {"first_name": 5, "nickname": "x", "custom_fields": []},
         {"first_name": "must be a string or null", "nickname": "is not a known field", "custom_fields": None}),
        ("source and tags", {"source": "import", "tags": ["x"]}, {"source": None, "tags": None}),
        ("null email", {"email": None}, {"email": None}),
        ("bad email", {"email": "a b@c.com"}, {"email": "is not a valid e-mail address"}),
        ("required custom field to null", {"custom_fields": {"code": None}}, {"custom_fields.code": "is required"}),
        ("custom fields", {"custom_fields": {"code": "toolong", "size": "big", "undefined_cf": True}},
         {"custom_fields.code": None, "custom_fields.size": None, "custom_fields.undefined_cf": None}),
    ):
        check_invalid(call(c, "PATCH", vp, u.access, body), expected, "PATCH with " + what)

    # Bodies that are not JSON objects.
    for what, raw in (("invalid UTF-8", b'{"email":"\xff@x.com"}'),
                      ("overlong UTF-8", b'{"email":"a@x.com","first_name":"\xc0\xaf"}'),
                      ("invalid JSON", b'{"email": "a@x.com", '), ("a JSON array", b"[]"),
                      ("a JSON string", b'"x"'), ("empty body", b""),
                      ("duplicate key", b'{"email":"a@x.com","email":"b@x.com","custom_fields":{"code":"a"}}')):
        for method, path in (("POST", "/v1/contacts"), ("PATCH", vp), ("POST", "/v1/brands"),
                             ("POST", "/v1/contacts/bulk")):
            check_problem(call(c, method, path, u.access, raw), 400, None, "%s %s with %s" % (method, path, what))
    r = call(c, "POST", "/v1/contacts", u.access, json.dumps(good), ctype="text/plain")
    check(r.status in (400, 415), "text/plain body: %d %r" % (r.status, body_of(r)))
    r = send_large(c, "/v1/contacts", json.dumps(dict(good, title="t" * 70000)).encode(), u.access)
    check_problem(r, 413, "payload-too-large", "a 70 KB contact")
    check(r.status == 413 and "65536" in json.loads(r.body).get("detail", ""), "413 does not name 65536: %r"
          % body_of(r))

    # Brands.
    for what, body, expected in (
        ("no name", {"domain": "nameless.com"}, {"name": None}),
        ("empty name", {"name": ""}, {"name": None}),
        ("long name", {"name": "n" * 201}, {"name": None}),
        ("free mail domain", {"name": "G", "domain": "gmail.com"}, {"domain": None}),
        ("free mail website", {"name": "Y", "website": "https://www.yahoo.com/"}, {"domain|website": None}),
        ("public suffix", {"name": "P", "domain": "co.uk"}, {"domain": None}),
        ("IP address", {"name": "I", "domain": "127.0.0.1"}, {"domain": None}),
        ("garbage domain", {"name": "X", "domain": "not a domain"}, {"domain": None}),
        ("long website", {"name": "W", "website": "https://w.com/" + "p" * 2048}, {"website": None}),
        ("unknown field", {"name": "U", "colour": "red"}, {"colour": "is not a known field"}),
        ("all at once", {"name": 5, "domain": "gmail.com", "colour": 1},
         {"name": None, "domain": None, "colour": None}),
    ):
        check_invalid(call(c, "POST", "/v1/brands", u.access, body), expected, "brand with " + what)
    check_invalid(call(c, "PATCH", "/v1/brands/" + brand["id"], u.access, {"domain": "hotmail.com", "name": ""}),
                  {"domain": None, "name": None}, "brand PATCH")

    after = snapshot()
    check(after == before, "refused requests wrote (contacts, brands, audit rows, max version): %s -> %s"
          % (before, after))

    # The limits themselves are accepted.
    ok = create(c, u, "create at the limits", email=new_email("limits"), first_name="f" * 100, display_name="d" * 200,
                phone="+1 (555) 010-0199", tags=["t%d" % i for i in range(50)], last_activity_at=now_minus(1),
                custom_fields={"code": "abcde", "size": 3.5}, source="import")
    check(ok["custom_fields"] == {"code": "abcde", "size": 3.5} and ok["source"] == "import" and len(ok["tags"]) == 50,
          "created at the limits: %r" % {k: ok[k] for k in ("custom_fields", "source", "tags")})
    for domain, want in (("www.nike.com", "nike.com"), ("https://shop.nike-x.com/x", "nike-x.com"),
                         ("bbc.co.uk", "bbc.co.uk"), ("WWW.Example-Brand.COM", "example-brand.com")):
        b = create_brand(c, u, "brand with domain %r" % domain, name="Brand " + domain, domain=domain)
        check(b["domain"] == want, "domain %r stored as %r, expected %r" % (domain, b["domain"], want))
    b = create_brand(c, u, "brand from a website", name="Site Co", website="https://shop.site-co.com/x")
    check(b["domain"] == "site-co.com" and b["website"], "brand from a website %r" % b)

    # A query string that does not decode is refused, not read as if the parameter were absent (the filter would
    # silently vanish and the whole tenant be listed).
    for query in ("owner_id=%zz", "q=a%00b", "stage=lead%2", "tag=%"):
        check_problem(call(c, "GET", "/v1/contacts?" + query, u.access), 400, "invalid-query", "GET ?" + query)
    check_problem(call(c, "GET", "/v1/contacts/%zz", u.access), 400, "invalid-path", "a malformed id in the path")


# ---- 10. lead scoring ----


def test_lead_scoring():
    c = main_crmd()
    u = make_tenant(c, "score")
    doc = check_json(call(c, "GET", "/v1/settings/lead-scoring", u.access), 200, "GET lead scoring")
    check(doc == DEFAULT_SCORING, "default lead scoring %r" % doc)
    full = create(c, u, email=new_email("full").replace("example.com", "initech.com"), phone="+1 555 0100",
                  title="CTO", lifecycle_stage="customer")
    check(full["lead_score"] == 45, "work email + phone + title + customer scored %d, expected 45"
          % full["lead_score"])
    gmail = create(c, u, email="score-%s@gmail.com" % secrets.token_hex(4), phone="555 0101", title="CEO",
                   lifecycle_stage="customer")
    check(gmail["lead_score"] == 35, "a gmail.com contact scored %d, expected 35 (no work_email)" % gmail["lead_score"])
    bare = create(c, u, email="bare-%s@yahoo.com" % secrets.token_hex(4), lifecycle_stage="subscriber")
    check(bare["lead_score"] == 0, "a bare free-mail subscriber scored %d" % bare["lead_score"])
    recent = create(c, u, email=new_email("recent").replace("example.com", "initech.com"),
                    last_activity_at=now_minus(1))
    check(recent["lead_score"] == 20, "work email + recent activity scored %d, expected 20" % recent["lead_score"])
    old = create(c, u, email=new_email("old").replace("example.com", "initech.com"), last_activity_at=now_minus(40))
    check(old["lead_score"] == 10, "activity 40 days ago scored %d, expected 10" % old["lead_score"])
    r = call(c, "PATCH", "/v1/contacts/" + bare["id"], u.access, {"lifecycle_stage": "opportunity", "title": "VP"})
    check(check_json(r, 200, "PATCH stage")["lead_score"] == 25, "PATCH to opportunity + title: %r"
          % json.loads(r.body)["lead_score"])

    weights = {"work_email": 1, "has_phone": 2, "has_title": 3, "recent_activity": 4, "recent_activity_days": 60,
               "stages": {"subscriber": 0, "lead": 0, "marketing_qualified_lead": 0, "sales_qualified_lead": 0,
                          "opportunity": 7, "customer": 50, "evangelist": 0, "other": 0}}
    for what, bad, field in (
        ("missing member", {k: v for k, v in weights.items() if k != "has_title"}, "has_title"),
        ("over 100", dict(weights, work_email=101), "work_email"),
        ("negative", dict(weights, has_phone=-1), "has_phone"),
        ("days 0", dict(weights, recent_activity_days=0), "recent_activity_days"),
        ("days 366", dict(weights, recent_activity_days=366), "recent_activity_days"),
        ("a string", dict(weights, has_title="3"), "has_title"),
        ("unknown stage", dict(weights, stages=dict(weights["stages"], king=5)), None),
        ("missing stage", dict(weights, stages={k: 0 for k in STAGES if k != "lead"}), None),
    ):
        r = call(c, "PUT", "/v1/settings/lead-scoring", u.access, bad)
        doc = check_problem(r, 400, "validation-failed", "PUT lead scoring with " + what)
        if field:
            check_fields(doc, {field: None}, "PUT lead scoring with " + what)
    check(check_json(call(c, "GET", "/v1/settings/lead-scoring", u.access), 200, "GET") == DEFAULT_SCORING,
          "a refused PUT changed the weights")
    # Enough contacts for three batches: the chain must reach the last one.
    many_tag = secrets.token_hex(3)
    for b in range(5):
        doc, _ = bulk(c, u, {"op": "create", "items": [{"email": "many-%s-%d@initech.com" % (many_tag, b * 820 + i)}
                                                         for i in range(820)]})
        check(statuses(doc) == [201] * 820, "create the many: %r" % sorted(set(statuses(doc))))
    many = "tenant_id = '%s' AND email LIKE 'many-%s-%%'" % (u.tenant, many_tag)
    check(int(sql("SELECT count(*) FROM %s WHERE %s AND lead_score = 10" % (CONTACTS, many))) == 4100,
          "the many are not all scored 10 before the PUT")
    check(check_json(call(c, "PUT", "/v1/settings/lead-scoring", u.access, weights), 200, "PUT weights") == weights,
          "PUT answered something else than the document")
    check(check_json(call(c, "GET", "/v1/settings/lead-scoring", u.access), 200, "GET") == weights, "GET after PUT")
    want = {full["id"]: 1 + 2 + 3 + 50, gmail["id"]: 2 + 3 + 50, bare["id"]: 3 + 7, recent["id"]: 1 + 4,
            old["id"]: 1 + 4}
    # Existing contacts are rescored by background jobs (contacts.rescore, 2,000 contacts a batch, each enqueuing
    # the next); a contact written now is scored with the new weights at once.
    now_written = create(c, u, email="now-%s@initech.com" % secrets.token_hex(3))
    check(now_written["lead_score"] == 1, "a contact created after the PUT scored %d, expected 1"
          % now_written["lead_score"])
    for cid, score in want.items():
        got = wait_for("contact %s rescored to %d" % (cid, score),
                       lambda: get_contact(c, u, cid, "after the new weights")["lead_score"] == score, 30)
        check(got, "contact %s was not rescored" % cid)
    wait_for("4,100 contacts rescored in batches of 2,000",
             lambda: int(sql("SELECT count(*) FROM %s WHERE %s AND lead_score = 1" % (CONTACTS, many))) == 4100, 60)
    sql("DELETE FROM %s WHERE %s" % (CONTACTS, many))
    rescored = get_contact(c, u, full["id"], "a rescored contact")
    check(rescored["version"] > full["version"], "a rescore did not give a new version: %r" % rescored["version"])
    sql("DELETE FROM %s WHERE tenant_id = '%s' AND contact_id = '%s'" % (CONTACTS, u.tenant, now_written["id"]))
    n = int(sql("SELECT count(*) FROM %s WHERE tenant_id = '%s' AND lead_score = 56" % (CONTACTS, u.tenant)))
    check(n == 1, "the database holds %d contacts scored 56" % n)

    rows = list_contacts(c, u, "?sort=-lead_score")["data"]
    check([x["lead_score"] for x in rows] == [56, 55, 10, 5, 5], "sort=-lead_score gave %r"
          % [x["lead_score"] for x in rows])
    check([x["id"] for x in rows[:3]] == [full["id"], gmail["id"], bare["id"]], "sort=-lead_score order")
    rows = list_contacts(c, u, "?sort=lead_score")["data"]
    check([x["lead_score"] for x in rows] == [5, 5, 10, 55, 56], "sort=lead_score gave %r"
          % [x["lead_score"] for x in rows])
    # Paged by one, ties and all.
    check(all_ids(c, u, "?sort=-lead_score&limit=1")[:3] == [full["id"], gmail["id"], bare["id"]],
          "sort=-lead_score paged by 1")
    check(len(set(all_ids(c, u, "?sort=-lead_score&limit=1"))) == 5, "paging by 1 lost or repeated contacts")


# ---- 11. tags and the audit log ----


def test_tags_and_audit():
    c = main_crmd()
    u = make_tenant(c, "audit")
    check_json(call(c, "PUT", "/v1/settings/custom-fields/region", u.access, {"type": "text"}), 200, "define region")
    check_json(call(c, "PUT", "/v1/settings/custom-fields/tier", u.access, {"type": "number"}), 200, "define tier")
    secret1, secret2 = "SECRET-" + secrets.token_hex(6), "SECRET-" + secrets.token_hex(6)
    x = create(c, u, custom_fields={"region": secret1, "tier": 2})
    y = create(c, u)
    xp = "/v1/contacts/" + x["id"]

    for cid, name in ((x["id"], "VIP"), (x["id"], "vip"), (y["id"], " vip "), (x["id"], "partner")):
        r = call(c, "PUT", "/v1/contacts/%s/tags/%s" % (cid, q(name)), u.access)
        check(r.status == 204, "PUT tag %r: %d %r" % (name, r.status, body_of(r)))
    got = get_contact(c, u, x["id"], "x after tagging")
    check(got["tags"] == ["partner", "vip"], "x's tags %r" % got["tags"])
    tags = check_json(call(c, "GET", "/v1/tags", u.access), 200, "GET /v1/tags")
    check(tags["data"] == [{"name": "partner", "contacts": 1}, {"name": "vip", "contacts": 2}],
          "tags %r" % tags["data"])
    for _ in range(2):
        r = call(c, "DELETE", "/v1/contacts/%s/tags/vip" % y["id"], u.access)
        check(r.status == 204, "DELETE tag: %d %r" % (r.status, body_of(r)))
    counts = {t["name"]: t["contacts"] for t in check_json(call(c, "GET", "/v1/tags", u.access), 200, "tags")["data"]}
    check(counts.get("vip") == 1, "vip count after untagging y: %r" % counts)
    for name in ("a%2Cb", "t" * 65, "%01ctl", "%20%20"):
        check_invalid(call(c, "PUT", "/v1/contacts/%s/tags/%s" % (x["id"], name), u.access), {"name": None},
                      "PUT tag %r" % name)
    check_problem(call(c, "PUT", "/v1/contacts/%s/tags/vip" % uuid.uuid4(), u.access), 404, "not-found",
                  "tag an unknown contact")
    names, cursor = [], None
    for _ in range(10):
        page = check_json(call(c, "GET", "/v1/tags?limit=1" + ("&cursor=" + q(cursor) if cursor else ""), u.access),
                          200, "tags page")
        names += [t["name"] for t in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    check(names == ["partner", "vip"], "tags paged by 1: %r" % names)

    # Merge patch of custom fields, key by key; the audit row names fields, never values.
    r = call(c, "PATCH", xp, u.access, {"title": "Boss", "custom_fields": {"region": secret2}})
    doc = check_json(r, 200, "PATCH title and region")
    check(doc["custom_fields"] == {"region": secret2, "tier": 2}, "merged custom fields %r" % doc["custom_fields"])
    doc = check_json(call(c, "PATCH", xp, u.access, {"custom_fields": {"tier": None}}), 200, "PATCH tier away")
    check(doc["custom_fields"] == {"region": secret2}, "custom fields after removing tier %r" % doc["custom_fields"])
    check(call(c, "DELETE", xp, u.access).status == 204, "delete x")
    counts = {t["name"]: t["contacts"] for t in check_json(call(c, "GET", "/v1/tags", u.access), 200, "tags")["data"]}
    check(counts.get("vip", 0) == 0 and counts.get("partner", 0) == 0, "deleted contacts are counted: %r" % counts)
    check_json(call(c, "POST", xp + "/restore", u.access), 200, "restore x")
    check(call(c, "DELETE", "/v1/contacts/%s/tags/partner" % x["id"], u.access).status == 204, "untag x")
    doc, _ = bulk(c, u, {"op": "create", "items": [{"email": new_email("ab%d" % i)} for i in range(3)]})
    bulk_ids = [it["id"] for it in doc["results"]]

    def rows_for(action, target):
        return [it for it in audit(c, u, action) if it.get("target_id") == target]

    for action in ("contact.created", "contact.deleted", "contact.restored", "contact.tagged", "contact.untagged"):
        check(rows_for(action, x["id"]), "no %s audit row for x" % action)
    check(len(rows_for("contact.created", y["id"])) == 1, "y's contact.created rows")
    tagged = rows_for("contact.tagged", x["id"])
    check(len(tagged) >= 2, "x was tagged with 2 names: %d contact.tagged rows" % len(tagged))
    updates = rows_for("contact.updated", x["id"])
    check(len(updates) == 2, "%d contact.updated rows for x, expected 2" % len(updates))
    fields = [set(it["metadata"].get("fields") or []) for it in reversed(updates)]
    check(fields[0] == {"title", "custom_fields.region"}, "first update's fields %r" % fields[0])
    check(fields[1] == {"custom_fields.tier"}, "second update's fields %r" % fields[1])
    for it in updates:
        check(it.get("actor_id") == u.id, "contact.updated actor %r" % it.get("actor_id"))
    check(audit(c, u, "contact.bulk_create"), "no contact.bulk_create audit row")
    everything = check_json(call(c, "GET", "/v1/audit-log?limit=200", u.access), 200, "audit log")["data"]
    targets = {it.get("target_id") for it in everything}
    check(set(bulk_ids) <= targets, "bulk-created contacts without their own audit rows: %r"
          % (set(bulk_ids) - targets))
    text = json.dumps(everything)
    check(secret1 not in text and secret2 not in text, "a custom field value reached the audit log API")
    leaked = sql("SELECT count(*) FROM crm.audit_log WHERE tenant_id = '%s' AND (metadata::text LIKE '%%%s%%' OR "
                 "metadata::text LIKE '%%%s%%')" % (u.tenant, secret1, secret2))
    check(leaked == "0", "a custom field value reached crm.audit_log")


# ---- the end: crmd exits cleanly ----


def test_races_and_edges():
    """Overlapping bulk imports in opposite orders, a brand renamed under its contacts, forged cursors, clearing custom
    fields, If-Match on restore and tags."""
    c = main_crmd()
    u = make_tenant(c, "races")
    tag = secrets.token_hex(3)

    # Two importers with the same 200 addresses, one in reverse order, four times at once: no 500 (a deadlock would
    # be one), every answer says what happened, and each address ends with exactly one live contact.
    addrs = ["race-%s-%03d@globex.com" % (tag, i) for i in range(200)]
    bodies = [{"op": "create", "mode": "partial", "items": [{"email": a, "tags": ["imp-%d" % (i % 3), "shared"]}
                                                               for i, a in enumerate(order)]}
              for order in (addrs, addrs[::-1]) * 4]
    answers = gather([acall(c, "POST", "/v1/contacts/bulk", u.access, b) for b in bodies])
    codes = collections.Counter(r.status for r in answers)
    check(set(codes) <= {200, 409}, "overlapping imports answered %r" % dict(codes))
    created = sum(1 for r in answers if r.status == 200
                  for x in json.loads(r.body)["results"] if x["status"] == 201)
    check(created == 200, "overlapping imports created %d contacts, expected 200" % created)
    n = int(sql("SELECT count(*) FROM %s WHERE tenant_id = '%s' AND email LIKE 'race-%s-%%' AND deleted_at IS NULL"
                % (CONTACTS, u.tenant, tag)))
    check(n == 200, "%d live contacts for 200 addresses" % n)
    log("   overlapping imports: %r" % dict(codes))

    # A brand renamed: its contacts' search documents follow, and their representation gets a new version.
    b = create_brand(c, u, name="Zorblax Corp", domain="brand-%s.com" % tag)
    ct = create(c, u, email="emp-%s@brand-%s.com" % (tag, tag), brand_id=b["id"])
    r = call(c, "PATCH", "/v1/brands/" + b["id"], u.access, {"name": "Quuxly Corp"})
    check_json(r, 200, "rename the brand")
    after = get_contact(c, u, ct["id"], "the brand's contact after the rename")
    check(after["brand"]["name"] == "Quuxly Corp" and after["version"] > ct["version"],
          "after the rename: brand %r, version %r (was %r)" % (after["brand"], after["version"], ct["version"]))
    check([x["id"] for x in list_contacts(c, u, "?q=quuxly")["data"]] == [ct["id"]], "search by the new brand name")
    check(list_contacts(c, u, "?q=zorblax")["data"] == [], "the old brand name still finds the contact")

    # Forged cursors are the client's error, whatever they hold.
    import base64
    for sort, key in (("lead_score", "x"), ("updated_at", "not a time"), ("-created_at", "2026-13-45 99:00:00+00")):
        forged = base64.urlsafe_b64encode(json.dumps([sort, key, str(uuid.uuid4())]).encode()).decode().rstrip("=")
        check_invalid(call(c, "GET", "/v1/contacts?sort=%s&cursor=%s" % (q(sort), forged), u.access),
                      {"cursor": None}, "a forged %s cursor" % sort)
    check_invalid(call(c, "GET", "/v1/contacts?q=" + q(" ".join("w%d" % i for i in range(11))), u.access),
                  {"q": None}, "q with 11 words")

    # custom_fields: null clears them all; a value whose definition was deleted can still be removed.
    r = call(c, "PUT", "/v1/settings/custom-fields/shoe", u.access, {"type": "number"})
    check_json(r, 200, "define shoe")
    r = call(c, "PUT", "/v1/settings/custom-fields/hat", u.access, {"type": "text"})
    check_json(r, 200, "define hat")
    cf = create(c, u, custom_fields={"shoe": 42, "hat": "fedora"})
    r = call(c, "DELETE", "/v1/settings/custom-fields/shoe", u.access)
    check(r.status == 204, "delete the definition of shoe: %d" % r.status)
    doc = check_json(call(c, "PATCH", "/v1/contacts/" + cf["id"], u.access, {"custom_fields": {"shoe": None}}), 200,
                     "remove an undefined field's value")
    check(doc["custom_fields"] == {"hat": "fedora"}, "custom fields %r" % doc["custom_fields"])
    check_invalid(call(c, "PATCH", "/v1/contacts/" + cf["id"], u.access, {"custom_fields": {"shoe": 43}}),
                  {"custom_fields.shoe": "is not a defined custom field"}, "set an undefined field")
    doc = check_json(call(c, "PATCH", "/v1/contacts/" + cf["id"], u.access, {"custom_fields": None}), 200,
                     "custom_fields: null")
    check(doc["custom_fields"] == {}, "custom_fields: null left %r" % doc["custom_fields"])

    # If-Match on restore and on tags.
    t = create(c, u)
    check_problem(call(c, "PUT", "/v1/contacts/%s/tags/x" % t["id"], u.access, headers={"If-Match": '"7"'}), 412,
                  "precondition-failed", "tag with a stale If-Match")
    r = call(c, "PUT", "/v1/contacts/%s/tags/x" % t["id"], u.access, headers={"If-Match": '"1"'})
    check(r.status == 204, "tag with the current If-Match: %d" % r.status)
    r = call(c, "DELETE", "/v1/contacts/" + t["id"], u.access)
    check(r.status == 204, "delete: %d" % r.status)
    check_problem(call(c, "POST", "/v1/contacts/%s/restore" % t["id"], u.access, headers={"If-Match": '"1"'}), 412,
                  "precondition-failed", "restore with a stale If-Match")
    check_json(call(c, "POST", "/v1/contacts/%s/restore" % t["id"], u.access, headers={"If-Match": '"3"'}), 200,
               "restore with the current If-Match")


def test_crash_mid_bulk():
    """A crmd killed (SIGKILL) while its atomic bulk create runs leaves all of the batch or none of it, and the audit
    trail agrees with the rows."""
    c = main_crmd()
    u = make_tenant(c, "crash")
    victim = Crmd(db(), env=dict(ENV, CRMD_JOBS="0", CRMD_SMTP_URL="smtp://127.0.0.1:%d" % sink().port))
    victim.wait_ready()
    tag = secrets.token_hex(4)
    items = [{"email": "crash-%s-%04d@crash.example" % (tag, i), "first_name": "Crash", "title": "t%d" % i}
             for i in range(1000)]
    payload = json.dumps({"op": "create", "mode": "atomic", "items": items}).encode()

    def send():
        try:
            s = socket.create_connection((victim.host, victim.port), timeout=10)
            s.sendall(b"POST /v1/contacts/bulk HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + u.access.encode()
                      + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(payload)).encode()
                      + b"\r\n\r\n" + payload)
            s.recv(1)
        except OSError:
            pass

    t = threading.Thread(target=send, daemon=True)
    t.start()
    # Kill it once its transaction is running in the database (the function is executing the batch).
    wait_for("the bulk transaction to start",
             lambda: sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                         " AND usename = 'crmd_app' AND state = 'active' AND query LIKE '%api_write%'") not in ("", "0"),
             20, 0.005)
    victim.proc.kill()
    victim.proc.wait()
    t.join(10)
    # The server notices the lost client when the statement ends; wait until no transaction of the batch is left.
    wait_for("the killed crmd's transaction to end",
             lambda: sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                         " AND usename = 'crmd_app' AND query LIKE '%api_write%' AND state <> 'idle'") in ("", "0"), 30)
    n = count_contacts(u.tenant, "email LIKE 'crash-%s-%%'" % tag)
    audited = int(sql("SELECT count(*) FROM crm.audit_log WHERE tenant_id = '%s' AND action = 'contact.created'"
                      " AND target_id IN (SELECT contact_id::text FROM %s WHERE email LIKE 'crash-%s-%%')"
                      % (u.tenant, CONTACTS, tag)) or 0)
    log("   contacts of the killed batch: %d (audited %d)" % (n, audited))
    check(n in (0, 1000), "a killed atomic batch left %d of its 1000 contacts" % n)
    check(audited == n, "%d contacts but %d contact.created rows" % (n, audited))


def test_main_exits_cleanly():
    c = main_crmd()
    log("   503 answers retried over the run: %d" % _retried[0])
    code = c.stop()
    check(code == 0, "crmd exited with %s" % code)


ALL = [
    test_concurrency_create,
    test_soft_delete_restore,
    test_keyset_pagination,
    test_search,
    test_bulk,
    test_idempotency,
    test_if_match,
    test_isolation_and_roles,
    test_bad_input,
    test_lead_scoring,
    test_tags_and_audit,
    test_races_and_edges,
    test_crash_mid_bulk,
    test_main_exits_cleanly,
]

if __name__ == "__main__":
    # Names on the command line (with or without the test_ prefix) run just those tests, and the clean exit.
    wanted = {a if a.startswith("test_") else "test_" + a for a in sys.argv[1:]}
    chosen = [t for t in ALL if t.__name__ in wanted] if wanted else ALL
    unknown = wanted - {t.__name__ for t in ALL}
    if unknown:
        fail("unknown tests: %s" % ", ".join(sorted(unknown)))
    run(chosen + ([] if test_main_exits_cleanly in chosen else [test_main_exits_cleanly]))
