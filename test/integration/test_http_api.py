#!/usr/bin/env python3
"""The HTTP layer's contract (lib/http.h, DESIGN.md §5, protocols/openapi.yaml) observed through the real binary.

Covers the fixed headers every response carries, request ids, 404/405/OPTIONS/HEAD, body limits (the route's and
the global one that h2o enforces itself), JSON errors with their positions, the operator token, metrics,
readiness, the compiled-in OpenAPI document, the request deadline, h2c and TLS with ALPN.

Most checks share one crmd (CRMD_MAX_BODY_BYTES=1024, so the body-limit checks need no large bodies); the
deadline, HTTP/2 and TLS checks start their own with the configuration they need.
"""
import asyncio
import atexit
import os
import re
import shutil
import subprocess
import tempfile
import time

import yaml

from harness import (
    ROOT,
    TOKEN,
    Crmd,
    Database,
    auth,
    build_request,
    check,
    fail,
    log,
    metric,
    read_response,
    request,
    run,
    shared_database,
)

UUID_V4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
PROBLEM = "urn:crmd:problem:"
MAX_BODY = 1024
JSON_CT = {"content-type": "application/json"}

# ---- fixtures: one database for the whole script, one shared crmd ----

_main = None


def main_crmd():
    """The crmd most checks talk to; stopped (and its exit checked) by test_main_instance_exits_cleanly."""
    global _main
    if _main is None:
        _main = Crmd(shared_database(), env={"CRMD_MAX_BODY_BYTES": str(MAX_BODY)})
        # Registered after the database's drop, so it runs first: crmd must be gone before its database is.
        atexit.register(_kill_main)
        _main.wait_ready()
    return _main


def _kill_main():
    if _main is not None and _main.proc.poll() is None:
        _main.proc.kill()
        _main.proc.wait()


# ---- helpers ----


def check_fixed_headers(r, what):
    """The headers lib/http.h promises on every response crmd writes."""
    check(r.headers.get("cache-control") == "no-store", "%s: cache-control %r" % (what, r.headers.get("cache-control")))
    check(
        r.headers.get("x-content-type-options") == "nosniff",
        "%s: x-content-type-options %r" % (what, r.headers.get("x-content-type-options")),
    )
    check("x-request-id" in r.headers, "%s: no x-request-id in %r" % (what, r.headers))


def check_problem(r, status, slug, what):
    """An RFC 9457 problem document whose instance is the response's request id; returns the document."""
    check(r.status == status, "%s: status %d, expected %d: %r" % (what, r.status, status, r.body[:300]))
    check(
        r.headers.get("content-type") == "application/problem+json",
        "%s: content-type %r" % (what, r.headers.get("content-type")),
    )
    check_fixed_headers(r, what)
    check(int(r.headers.get("content-length", -1)) == len(r.body), "%s: content-length differs from body" % what)
    doc = r.json()
    check(doc.get("type") == PROBLEM + slug, "%s: type %r, expected %r" % (what, doc.get("type"), PROBLEM + slug))
    check(doc.get("status") == status, "%s: problem status %r" % (what, doc.get("status")))
    check(isinstance(doc.get("title"), str) and doc["title"] != "", "%s: no title in %r" % (what, doc))
    check(
        doc.get("instance") == r.headers["x-request-id"],
        "%s: instance %r != X-Request-Id %r" % (what, doc.get("instance"), r.headers["x-request-id"]),
    )
    return doc


def wait_for_metric(c, name, labels, predicate, what, timeout=5.0):
    """Metrics are recorded when h2o disposes of a request, which may be just after the client has its answer."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = metric(c, name, labels)
        if value is not None and predicate(value):
            return value
        time.sleep(0.05)
    fail("%s: %s%r is %r" % (what, name, labels, value))


def wait_event(c, name, predicate=lambda e: True, timeout=10.0):
    """The first log event `name` that satisfies predicate. The log reaches stderr through crmd's writer thread,
    so it may lag the HTTP answers and stdout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [e for e in c.events(name) if predicate(e)]
        if events:
            return events[0]
        time.sleep(0.02)
    fail("no matching %s event in the log" % name)


def curl(*args):
    check(shutil.which("curl") is not None, "curl is required for the HTTP/2 and TLS checks")
    r = subprocess.run(["curl", "-sS", "--max-time", "20"] + list(args), capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, "curl %s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr.strip()))
    return r.stdout


async def nothing_arrives(reader, seconds, what):
    """Fails if any byte arrives on the connection within `seconds`."""
    try:
        data = await asyncio.wait_for(reader.read(1), seconds)
    except asyncio.TimeoutError:
        return
    fail("%s: unexpected bytes on the connection: %r" % (what, data))


# ---- /health/live and the fixed headers ----


def test_live():
    c = main_crmd()
    r = request(c, "GET", "/health/live")
    check(r.status == 200, "live: status %d" % r.status)
    check(r.headers.get("content-type") == "application/json", "live: content-type %r" % r.headers.get("content-type"))
    check(r.json() == {"status": "ok"}, "live: body %r" % r.body)
    check(int(r.headers["content-length"]) == len(r.body), "live: content-length %s, body %d bytes"
          % (r.headers["content-length"], len(r.body)))
    check_fixed_headers(r, "live")
    check(UUID_V4.match(r.headers["x-request-id"]) is not None, "live: request id %r" % r.headers["x-request-id"])
    # A fresh id per request.
    r2 = request(c, "GET", "/health/live")
    check(r2.headers["x-request-id"] != r.headers["x-request-id"], "live: request id reused")


def test_request_id():
    c = main_crmd()
    allowed = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-"
    sane = ["abc-123.x:y_z", "a", (allowed * 2)[:128]]
    for rid in sane:
        r = request(c, "GET", "/health/live", {"x-request-id": rid})
        check(r.status == 200, "request id %r: status %d" % (rid, r.status))
        got = r.headers.get("x-request-id")
        check(got == rid, "sane id %r was replaced by %r" % (rid, got))
    # The client's id also becomes the problem's instance.
    r = request(c, "GET", "/no/such/thing", {"x-request-id": "abc-123.x:y_z"})
    doc = check_problem(r, 404, "not-found", "404 with client id")
    check(doc["instance"] == "abc-123.x:y_z", "404 instance %r" % doc["instance"])

    insane = ["a" * 129, "abc def", "<script>", "a/b", "caf\u00e9", "a,b", ""]
    for rid in insane:
        r = request(c, "GET", "/health/live", {"x-request-id": rid})
        got = r.headers.get("x-request-id")
        check(r.status == 200, "request id %r: status %d" % (rid, r.status))
        check(got != rid and UUID_V4.match(got or "") is not None, "insane id %r answered with id %r" % (rid, got))


# ---- routing: 404, 405, OPTIONS, HEAD ----


def test_not_found():
    c = main_crmd()
    for path in ("/nope", "/health/live/", "/health", "/HEALTH/LIVE", "/health/live/x", "//health/live"):
        r = request(c, "GET", path)
        doc = check_problem(r, 404, "not-found", "GET %s" % path)
        check(UUID_V4.match(doc["instance"]) is not None, "GET %s: instance %r" % (path, doc["instance"]))
    # A query string does not change the resource.
    r = request(c, "GET", "/health/live?x=1")
    check(r.status == 200, "GET /health/live?x=1: %d" % r.status)


def test_method_not_allowed():
    c = main_crmd()
    for method, body in (("POST", ""), ("PUT", None), ("DELETE", None), ("PATCH", None), ("PROPFIND", None)):
        r = request(c, method, "/health/live", body=body)
        check_problem(r, 405, "method-not-allowed", "%s /health/live" % method)
        check(r.headers.get("allow") == "GET, HEAD, OPTIONS", "%s: allow %r" % (method, r.headers.get("allow")))
    # An unknown method on an unknown path is a 404: the path decides first.
    check_problem(request(c, "PROPFIND", "/nope"), 404, "not-found", "PROPFIND /nope")
    # Methods are case-sensitive (RFC 9110 §9.1): "get" is an unknown method, answered with the allowed set.
    r = request(c, "get", "/health/live")
    check_problem(r, 405, "method-not-allowed", "get /health/live")
    check(r.headers.get("allow") == "GET, HEAD, OPTIONS", "get: allow %r" % r.headers.get("allow"))
    # A route with two methods lists both.
    r = request(c, "DELETE", "/v1/_diag/audit", auth())
    check_problem(r, 405, "method-not-allowed", "DELETE /v1/_diag/audit")
    check(r.headers.get("allow") == "GET, HEAD, POST, OPTIONS", "audit allow %r" % r.headers.get("allow"))


def test_options_and_head_on_the_wire():
    """OPTIONS and HEAD answer without a body: on a keep-alive connection, the next response follows the header
    block directly (a stray body would be read as the start of the next response)."""
    c = main_crmd()

    async def scenario():
        reader, writer = await asyncio.open_connection(c.host, c.port)
        try:
            writer.write(build_request(c.host, "GET", "/health/live"))
            got = await asyncio.wait_for(read_response(reader), 10)
            check(got.status == 200 and len(got.body) > 0, "GET before HEAD: %d %r" % (got.status, got.body))

            writer.write(build_request(c.host, "HEAD", "/health/live"))
            head = await asyncio.wait_for(read_response(reader, "HEAD"), 10)
            check(head.status == 200, "HEAD: status %d" % head.status)
            check(
                head.headers.get("content-length") == str(len(got.body)),
                "HEAD: content-length %r, GET body is %d bytes" % (head.headers.get("content-length"), len(got.body)),
            )
            check(head.headers.get("content-type") == "application/json", "HEAD: content-type")
            check_fixed_headers(head, "HEAD")
            await nothing_arrives(reader, 0.3, "after HEAD")

            writer.write(build_request(c.host, "OPTIONS", "/health/live"))
            opt = await asyncio.wait_for(read_response(reader, "OPTIONS"), 10)
            check(opt.status == 204, "OPTIONS: status %d" % opt.status)
            check(opt.headers.get("allow") == "GET, HEAD, OPTIONS", "OPTIONS: allow %r" % opt.headers.get("allow"))
            check(
                opt.headers.get("content-length") in (None, "0"),
                "OPTIONS: content-length %r" % opt.headers.get("content-length"),
            )
            check_fixed_headers(opt, "OPTIONS")
            await nothing_arrives(reader, 0.3, "after OPTIONS")

            writer.write(build_request(c.host, "GET", "/health/live"))
            first = await asyncio.wait_for(reader.readexactly(13), 10)
            check(first == b"HTTP/1.1 200 ", "the response after HEAD/OPTIONS starts with %r" % first)
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            check(await asyncio.wait_for(reader.readexactly(len(got.body)), 10) == got.body, "GET after HEAD: body")
        finally:
            writer.close()

    asyncio.run(scenario())


# ---- body limits ----


def padded_json(size):
    """A valid diagnostics-audit document of exactly `size` bytes (whitespace padding inside the object)."""
    doc = '{"tenant_id":"6f1c2a52-0d3e-4c4e-9a55-3a8f0b1c2d3e","actions":["diag.limit"]'
    check(size >= len(doc) + 1, "padded_json: %d is too small" % size)
    return doc + " " * (size - len(doc) - 1) + "}"


def test_body_limit_global():
    """A body over CRMD_MAX_BODY_BYTES is refused by h2o before crmd's handler runs; crmd rewrites that answer."""
    c = main_crmd()
    body = padded_json(2000)
    r = request(c, "POST", "/v1/_diag/audit", dict(auth(), **JSON_CT), body=body)
    check(r.status == 413, "2000-byte body: status %d %r" % (r.status, r.body[:200]))
    check(r.headers.get("content-type") == "application/problem+json", "413: content-type %r"
          % r.headers.get("content-type"))
    check(int(r.headers.get("content-length", -1)) == len(r.body), "413: content-length differs from the body")
    check(r.headers.get("cache-control") == "no-store", "413: cache-control %r" % r.headers.get("cache-control"))
    doc = r.json()
    check(doc.get("type") == PROBLEM + "payload-too-large", "413: type %r" % doc.get("type"))
    check(doc.get("status") == 413, "413: status in body %r" % doc.get("status"))
    check(str(MAX_BODY) in (doc.get("detail") or ""), "413 does not name the limit: %r" % doc.get("detail"))
    check(UUID_V4.match(doc.get("instance") or "") is not None, "413: instance %r" % doc.get("instance"))

    # Exactly at the limit is accepted and reaches the handler, which inserts the audit row.
    r = request(c, "POST", "/v1/_diag/audit", dict(auth(), **JSON_CT), body=padded_json(MAX_BODY))
    check(r.status == 201 and r.json() == {"inserted": 1}, "body of exactly %d bytes: %d %r"
          % (MAX_BODY, r.status, r.body))
    # The server still answers normally afterwards.
    check(request(c, "GET", "/health/live").status == 200, "live after 413")


def test_body_limit_per_route():
    """The ops routes accept at most 1 byte of body (rt->max_body_bytes = 1), far below the global limit."""
    c = main_crmd()
    r = request(c, "GET", "/health/live", body="0123456789")
    doc = check_problem(r, 413, "payload-too-large", "GET /health/live with 10 bytes")
    check(re.search(r"\b1 bytes?\b", doc.get("detail") or "") is not None, "413 does not name the limit of 1 byte: %r"
          % doc.get("detail"))
    r = request(c, "GET", "/health/live", body="x")
    check(r.status == 200, "GET /health/live with a 1-byte body: %d" % r.status)
    r = request(c, "GET", "/metrics", auth(), body="xy")
    check_problem(r, 413, "payload-too-large", "GET /metrics with 2 bytes")


# ---- JSON bodies ----


def post_audit(c, body, headers=None):
    h = dict(auth())
    h.update(JSON_CT if headers is None else headers)
    return request(c, "POST", "/v1/_diag/audit", h, body=body)


def test_json_content_type():
    c = main_crmd()
    valid = '{"tenant_id":"x","actions":["a.b"]}'
    for headers in ({}, {"content-type": "text/plain"}, {"content-type": "application/jsonx"}):
        r = post_audit(c, valid, headers)
        check_problem(r, 415, "unsupported-media-type", "content-type %r" % headers.get("content-type"))
    # Parameters and +json suffixes are JSON: the body is parsed and the handler's own validation answers.
    for ct in ("application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"):
        r = post_audit(c, valid, {"content-type": ct})
        doc = check_problem(r, 400, "validation-failed", "content-type %r" % ct)
        check(doc["errors"][0]["field"] == "tenant_id", "content-type %r: errors %r" % (ct, doc["errors"]))


def test_json_syntax_errors():
    c = main_crmd()
    # The comma after "a": 1 is missing; jansson stops at the "b" token: line 3, columns 3..5, bytes 13..15.
    body = '{\n  "a": 1\n  "b": 2\n}'
    doc = check_problem(post_audit(c, body), 400, "invalid-json", "missing comma")
    e = doc["errors"][0]
    check(e.get("field") == "body", "missing comma: field %r" % e.get("field"))
    check((e.get("line"), e.get("column")) == (3, 5), "missing comma: line/column %r" % e)
    # lib/json.h: for syntax errors, position is the offset just past the token jansson was looking at.
    check(e.get("position") == body.index('"b"') + 3, "missing comma: position %r" % e.get("position"))
    check("line 3" in doc.get("detail", ""), "missing comma: detail %r" % doc.get("detail"))

    # A single-character token: the column is exactly the offending character.
    body = '{"a": 1,\n "b": }'
    e = check_problem(post_audit(c, body), 400, "invalid-json", "missing value")["errors"][0]
    check((e.get("line"), e.get("column"), e.get("position")) == (2, 7, len(body)), "missing value: %r" % e)

    doc = check_problem(post_audit(c, '{"a": 1, "a": 2}'), 400, "invalid-json", "duplicate key")
    check("duplicate" in doc["errors"][0]["message"], "duplicate key: message %r" % doc["errors"][0]["message"])
    check(doc["errors"][0].get("line") == 1, "duplicate key: %r" % doc["errors"][0])

    doc = check_problem(post_audit(c, ""), 400, "invalid-json", "empty body")
    check(doc["errors"][0]["message"] == "empty body", "empty body: %r" % doc["errors"])
    check_problem(post_audit(c, '"just a string"'), 400, "invalid-json", "bare scalar")
    check_problem(post_audit(c, '{"a": "\\u0000"}'), 400, "invalid-json", "NUL in a string")
    check_problem(post_audit(c, b'{"a": "\xff"}'), 400, "invalid-json", "invalid UTF-8")


def test_json_depth():
    c = main_crmd()
    # 32 levels is the limit (lib/json.h): parsed, then refused by the handler for having no tenant_id.
    check_problem(post_audit(c, "[" * 32 + "]" * 32), 400, "validation-failed", "depth 32")
    doc = check_problem(post_audit(c, "[" * 33 + "]" * 33), 400, "json-limit-exceeded", "depth 33")
    e = doc["errors"][0]
    check("32" in e.get("message", ""), "depth 33: message does not name the limit: %r" % e)
    # The position is the 0-based offset of the first bracket too deep.
    check((e.get("line"), e.get("column"), e.get("position")) == (1, 33, 32), "depth 33: %r" % e)
    # Deep objects count the same as deep arrays; far deeper input (within the body limit) fails the same way.
    deep = '{"a":' * 40 + "1" + "}" * 40
    check_problem(post_audit(c, deep), 400, "json-limit-exceeded", "objects 40 deep")
    check_problem(post_audit(c, "[" * 500 + "]" * 500), 400, "json-limit-exceeded", "depth 500")


# ---- operator token ----


def test_operator_endpoints():
    c = main_crmd()
    for path in ("/metrics", "/health/database"):
        for what, headers in (
            ("no token", {}),
            ("wrong token", {"authorization": "Bearer " + TOKEN[:-1] + ("x" if TOKEN[-1] != "x" else "y")}),
            ("token prefix", {"authorization": "Bearer " + TOKEN[:-4]}),
            ("basic auth", {"authorization": "Basic " + TOKEN}),
            ("bare token", {"authorization": TOKEN}),
        ):
            r = request(c, "GET", path, headers)
            check_problem(r, 401, "unauthorized", "%s with %s" % (path, what))
            check(
                (r.headers.get("www-authenticate") or "").startswith("Bearer"),
                "%s with %s: www-authenticate %r" % (path, what, r.headers.get("www-authenticate")),
            )
            check(TOKEN not in r.body.decode(), "%s: the token is echoed" % path)
    r = request(c, "GET", "/health/database", auth())
    check(r.status == 200, "/health/database: %d %r" % (r.status, r.body))
    check_fixed_headers(r, "/health/database")
    doc = r.json()
    check(doc["probe"]["ok"] is True, "/health/database probe %r" % doc["probe"])
    check(doc["connections"]["ready"] >= 1, "/health/database connections %r" % doc["connections"])
    check(doc["breaker"]["state"] == "closed", "/health/database breaker %r" % doc["breaker"])


def test_metrics():
    c = main_crmd()
    labels = {"route": "/health/live", "method": "GET", "status": "200"}
    before = metric(c, "crmd_http_requests_total", labels) or 0
    for _ in range(3):
        check(request(c, "GET", "/health/live").status == 200, "live")
    wait_for_metric(c, "crmd_http_requests_total", labels, lambda v: v == before + 3, "three GET /health/live")

    r = request(c, "GET", "/metrics", auth())
    check(r.status == 200, "/metrics: %d" % r.status)
    ct = r.headers.get("content-type", "")
    check(ct.startswith("text/plain") and "version=0.0.4" in ct, "/metrics content-type %r" % ct)
    check_fixed_headers(r, "/metrics")
    text = r.body.decode()
    for family in ("crmd_http_requests_total", "crmd_http_request_duration_seconds", "crmd_db_pool_connections",
                   "crmd_breaker_state", "crmd_http_connections", "crmd_db_queue_depth"):
        check("# TYPE %s " % family in text, "/metrics lacks the %s family" % family)
    ready = metric(c, "crmd_db_pool_connections", {"state": "ready"})
    check(ready is not None and ready >= 1, "crmd_db_pool_connections{state=ready} = %r" % ready)
    breaker = metric(c, "crmd_breaker_state", {"dependency": "postgresql"})
    check(breaker == 0, "crmd_breaker_state{dependency=postgresql} = %r" % breaker)
    # Unmatched paths share one label value instead of creating a series per path.
    request(c, "GET", "/no/such/%s" % os.getpid())
    wait_for_metric(c, "crmd_http_requests_total", {"route": "unmatched", "status": "404"}, lambda v: v >= 1,
                    "404 counted as unmatched")
    check("/no/such/" not in request(c, "GET", "/metrics", auth()).body.decode(), "a raw path became a label")


# ---- readiness and the API description ----


def test_ready():
    c = main_crmd()
    r = request(c, "GET", "/health/ready")
    check(r.status == 200, "/health/ready: %d %r" % (r.status, r.body))
    check_fixed_headers(r, "/health/ready")
    doc = r.json()
    check(doc.get("status") == "ready", "/health/ready status %r" % doc)
    check(doc.get("reasons") == [], "/health/ready reasons %r" % doc.get("reasons"))
    check(doc.get("database_breaker") == "closed" and doc.get("schema_current") is True, "/health/ready %r" % doc)


def test_openapi_document():
    c = main_crmd()
    r = request(c, "GET", "/openapi.yaml")
    check(r.status == 200, "/openapi.yaml: %d" % r.status)
    check(r.headers.get("content-type") == "application/yaml", "/openapi.yaml content-type %r"
          % r.headers.get("content-type"))
    check(int(r.headers["content-length"]) == len(r.body), "/openapi.yaml content-length")
    check_fixed_headers(r, "/openapi.yaml")
    with open(os.path.join(ROOT, "protocols", "openapi.yaml"), encoding="utf-8") as f:
        source = yaml.safe_load(f)
    served = yaml.safe_load(r.body.decode("utf-8"))
    check(served == source, "the served /openapi.yaml differs from protocols/openapi.yaml (rebuild crmd?)")


def test_main_instance_exits_cleanly():
    """SIGTERM stops the shared instance with exit code 0 and a clean log (no sanitizer report, no leak)."""
    global _main
    c = main_crmd()
    code = c.stop()
    _main = None
    check(code == 0, "crmd exited with %s" % code)
    check(len(c.events("shutdown.complete")) == 1, "no shutdown.complete in the log")


# ---- deadline ----


def test_request_timeout():
    env = {"CRMD_REQUEST_TIMEOUT_MS": "300", "CRMD_DB_STATEMENT_TIMEOUT_MS": "5000"}
    with Crmd(shared_database(), env=env) as c:
        c.wait_ready()
        t0 = time.monotonic()
        r = request(c, "GET", "/v1/_diag/sleep?ms=2000", auth())
        elapsed = time.monotonic() - t0
        # Either the HTTP layer's timer or the pool's deadline for the unit (the same instant) answers first; both
        # answer 504 timeout, with different details.
        doc = check_problem(r, 504, "timeout", "sleep past the deadline")
        # Not before the deadline (a little slack for the loop's millisecond clock); the upper bound only has to
        # tell "at the deadline" from "when the 2 s sleep ends" on a shared machine.
        check(0.25 <= elapsed < 1.5, "504 after %.3f s, expected about 0.3 s" % elapsed)
        log("   504 after %.3f s" % elapsed)
        event = wait_event(c, "http.access", lambda e: e.get("request_id") == doc["instance"])
        check(event.get("route") == "/v1/_diag/sleep" and event.get("status") == 504, "access log %r" % event)
        # The server keeps serving, the database too (the abandoned sleep holds one pool connection at most).
        check(request(c, "GET", "/health/live").status == 200, "live after a 504")
        r = request(c, "GET", "/v1/_diag/echo?value=42", auth())
        check(r.status == 200 and r.json() == {"value": 42}, "echo after a 504: %d %r" % (r.status, r.body))
        r = request(c, "GET", "/v1/_diag/sleep?ms=10", auth())
        check(r.status == 200 and r.json() == {"slept": True}, "short sleep after a 504: %d %r" % (r.status, r.body))


# ---- HTTP/2 ----


def test_h2c():
    with Crmd(shared_database()) as c:
        url = "http://%s:%d/health/live" % (c.host, c.port)
        out = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", url)
        check(out == "2 200", "h2c prior knowledge: %r" % out)
        # Upgrade: h2c from HTTP/1.1 is offered too (lib/http.h).
        out = curl("--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", url)
        check(out == "2 200", "h2c upgrade: %r" % out)
        # The fixed headers hold on HTTP/2 as well.
        head = curl("--http2-prior-knowledge", "-D", "-", "-o", "/dev/null", url).lower()
        check(head.startswith("http/2 200"), "h2 status line %r" % head[:40])
        for line in ("content-length: 16", "cache-control: no-store", "x-content-type-options: nosniff"):
            check(line in head, "h2 response lacks %r:\n%s" % (line, head))
        check(re.search(r"^x-request-id: [0-9a-f-]{36}\r?$", head, re.M) is not None, "h2 request id:\n%s" % head)
        # Problems too.
        body = curl("--http2-prior-knowledge", "http://%s:%d/nope" % (c.host, c.port))
        check('"type":"urn:crmd:problem:not-found"' in body, "h2 404 body %r" % body)


# ---- TLS ----


def test_tls():
    check(shutil.which("openssl") is not None, "the openssl CLI is required for the TLS check")
    tmp = tempfile.mkdtemp(prefix="crmd-it-tls.")
    try:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True, timeout=60,
        )
        c = Crmd(shared_database(), env={"CRMD_TLS_CERT": cert, "CRMD_TLS_KEY": key}, wait=False)
        try:
            # The harness reads the address from the first line; here the line itself is checked, so read it here.
            line = c.proc.stdout.readline()
            m = re.search(r"listening on (\w+)://([0-9.]+):(\d+)", line)
            check(m is not None, "no listening line (exit %s): %r\n%s" % (c.proc.poll(), line,
                                                                            "\n".join(c.stderr_lines[-20:])))
            check(m.group(1) == "https", "printed URL scheme %r in %r" % (m.group(1), line))
            c.host, c.port = m.group(2), int(m.group(3))
            check(wait_event(c, "startup.listening").get("url_scheme") == "https", "startup.listening scheme")
            url = "https://%s:%d/health/live" % (c.host, c.port)
            out = curl("-k", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", url)
            check(out == "2 200", "TLS with ALPN h2: %r" % out)
            out = curl("-k", "--http1.1", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", url)
            check(out == "1.1 200", "TLS with HTTP/1.1: %r" % out)
            # The certificate is the one configured.
            out = curl("--cacert", cert, "--http1.1", "-o", "/dev/null", "-w", "%{http_code}", url)
            check(out == "200", "TLS verified against the configured certificate: %r" % out)
            # Plain HTTP on the TLS port gets no HTTP answer.
            r = subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
                                "http://%s:%d/health/live" % (c.host, c.port)], capture_output=True, text=True)
            check(r.stdout in ("000", "400"), "plain HTTP on the TLS port answered %r" % r.stdout)
            code = c.stop()
            check(code == 0, "TLS crmd exited with %s" % code)
        finally:
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- a known defect, kept last so that it does not hide the checks above ----


def test_h2o_generated_errors_carry_the_fixed_headers():
    """Errors h2o produces itself (body over the global limit, malformed headers) are rewritten by crmd into
    problem+json; they must carry the same X-Request-Id as their `instance`, and nosniff like every response."""
    with Crmd(shared_database(), env={"CRMD_MAX_BODY_BYTES": str(MAX_BODY)}) as c:

        async def raw(data):
            reader, writer = await asyncio.open_connection(c.host, c.port)
            try:
                writer.write(data)
                return await asyncio.wait_for(read_response(reader), 10)
            finally:
                writer.close()

        cases = [
            ("global body limit", build_request(c.host, "POST", "/v1/_diag/audit", dict(auth(), **JSON_CT),
                                                padded_json(2000), keep_alive=False), 413),
            ("bad content-length", b"GET /health/live HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n", 400),
        ]
        for what, data, status in cases:
            r = asyncio.run(raw(data))
            check(r.status == status, "%s: status %d" % (what, r.status))
            doc = r.json()
            rid = r.headers.get("x-request-id", "")
            check(UUID_V4.match(rid) is not None, "%s: X-Request-Id is not a UUID: %r" % (what, rid))
            check(doc.get("instance") == rid, "%s: instance %r != X-Request-Id %r" % (what, doc.get("instance"), rid))
            check(r.headers.get("x-content-type-options") == "nosniff", "%s: no nosniff" % what)


run(
    [
        test_live,
        test_request_id,
        test_not_found,
        test_method_not_allowed,
        test_options_and_head_on_the_wire,
        test_body_limit_global,
        test_body_limit_per_route,
        test_json_content_type,
        test_json_syntax_errors,
        test_json_depth,
        test_operator_endpoints,
        test_metrics,
        test_ready,
        test_openapi_document,
        test_main_instance_exits_cleanly,
        test_request_timeout,
        test_h2c,
        test_tls,
        test_h2o_generated_errors_carry_the_fixed_headers,
    ]
)
