#!/usr/bin/env python3
"""Fake upstream HTTP/1.1 server for crmd's tests (DESIGN.md §7).

It stands in for the HTTP services crmd calls (Google token endpoint, Gmail, Stripe, DocuSign): by default it
answers every request with a small JSON document, and a control API on a separate port installs rules that
answer chosen requests with chosen statuses, headers and bodies or inject faults (delays, dropped connections,
truncated or malformed bodies, chunked and slow bodies). Every request is logged so that tests can assert what
crmd sent. See README.md in this directory for the control API.

The HTTP/1.1 parser is hand-written on asyncio.Protocol because http.server is an order of magnitude too slow to
serve as a benchmark peer. The parts that fake_smtp.py reuses for its own control port (HttpProtocol,
json_reply, the command-line and ready-file helpers) live here so that both fakes speak identical HTTP.

Only the Python standard library is used.
"""
import argparse
import asyncio
import collections
import http
import json
import os
import re
import signal
import ssl
import sys
import time

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4096
MAX_TRAILERS = 100
MAX_LOGGED_BODY = 64 * 1024
MAX_LOG = 10_000
# A connection whose client pipelines more than this many requests behind a delayed answer stops being read
# until the backlog drains, so that a flood cannot grow the queue without bound.
MAX_QUEUED = 256

REASONS = {s.value: s.phrase for s in http.HTTPStatus}
TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HEX_RE = re.compile(rb"[0-9A-Fa-f]{1,15}")
DIGITS_RE = re.compile(r"[0-9]{1,18}")

_MODE_NONE, _MODE_LENGTH, _MODE_CHUNKED = 0, 1, 2
_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_TRAILER = 0, 1, 2


class HttpError(Exception):
    """A request that cannot be parsed; answered with `status` and the connection is closed."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    """One parsed request. Header names are lower-case; repeated headers keep every occurrence."""

    __slots__ = ("method", "target", "path", "query", "version", "headers", "body", "keep_alive", "conn",
                 "_mode", "_left", "_chunk_state", "_chunks", "_trailers", "_expect_continue")

    def header(self, name):
        """The value of header `name` (lower-case), repeated occurrences joined with ", ", or None."""
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    def header_dict(self):
        d = {}
        for k, v in self.headers:
            d[k] = d[k] + ", " + v if k in d else v
        return d


def status_line(status):
    return b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Unknown").encode())


def render_head(status, headers):
    """The status line and header block for `headers`, a list of (name, value) strings."""
    out = [status_line(status)]
    for k, v in headers:
        out.append(b"%s: %s\r\n" % (k.encode("latin-1"), str(v).encode("latin-1")))
    out.append(b"\r\n")
    return b"".join(out)


def json_reply(status, obj, req=None):
    """A complete JSON response and whether the connection must close after it: the plan HttpProtocol runs."""
    body = json.dumps(obj).encode()
    close = req is None or not req.keep_alive
    headers = [("Content-Type", "application/json"), ("Content-Length", len(body))]
    if close:
        headers.append(("Connection", "close"))
    elif req.version == "HTTP/1.0":
        headers.append(("Connection", "keep-alive"))
    head_only = req is not None and req.method == "HEAD"
    return render_head(status, headers) + (b"" if head_only else body), close


def parse_head(text, max_body):
    """Parse the request line and headers (without the final blank line) into a Request awaiting its body."""
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not TOKEN_RE.fullmatch(method):
        raise HttpError(400, "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/"):
            raise HttpError(505, "unsupported HTTP version")
        raise HttpError(400, "malformed HTTP version")
    if target.startswith("/"):
        origin = target
    elif target == "*" and method == "OPTIONS":
        origin = "*"
    elif target.startswith(("http://", "https://")):
        # Absolute form (RFC 9112 §3.2.2): the path is what follows the authority.
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        origin = rest[slash:] if slash >= 0 else "/"
    else:
        raise HttpError(400, "malformed request target")
    path, _, query = origin.partition("?")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not TOKEN_RE.fullmatch(name):
            # Also rejects obsolete line folding and whitespace before the colon (RFC 9112 §5.1-5.2).
            raise HttpError(400, "malformed header line")
        headers.append((name.lower(), value.strip(" \t")))
    req = Request()
    req.method, req.target, req.path, req.query, req.version = method, target, path, query, version
    req.headers = headers
    req.body = b""
    req._mode = _MODE_NONE
    req._left = 0
    req._expect_continue = False
    te = req.header("transfer-encoding")
    cl_values = [v for k, v in headers if k == "content-length"]
    connection = {t.strip().lower() for t in (req.header("connection") or "").split(",")}
    if version == "HTTP/1.1":
        req.keep_alive = "close" not in connection
    else:
        req.keep_alive = "keep-alive" in connection
    if te is not None:
        if cl_values:
            raise HttpError(400, "both Transfer-Encoding and Content-Length")
        if te.strip().lower() != "chunked":
            raise HttpError(501, "unsupported transfer coding")
        req._mode = _MODE_CHUNKED
        req._chunk_state = _CHUNK_SIZE
        req._chunks = []
        req._trailers = 0
    elif cl_values:
        values = {v.strip() for cv in cl_values for v in cv.split(",")}
        if len(values) != 1 or not DIGITS_RE.fullmatch(next(iter(values))):
            raise HttpError(400, "invalid Content-Length")
        n = int(next(iter(values)))
        if n > max_body:
            raise HttpError(413, "request body too large")
        if n:
            req._mode = _MODE_LENGTH
            req._left = n
    if req._mode != _MODE_NONE and version == "HTTP/1.1":
        req._expect_continue = (req.header("expect") or "").lower() == "100-continue"
    return req


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 server connection: parses requests and runs the app's plan for each, in order.

    `handler(req, proto)` is called as soon as a request is complete (so logs and counters see requests in
    arrival order, even pipelined ones behind a delayed answer) and returns (plan, close): `plan` is either the
    response bytes or an async function taking this protocol, which writes the answer itself through write();
    `close` says the connection closes after the plan has run. Plans run strictly one after another.
    """

    def __init__(self, handler, max_body, conns=None, on_close=None):
        self._handler = handler
        self._max_body = max_body
        self._conns = conns
        self._on_close = on_close
        self._buf = bytearray()
        self._req = None
        self._queue = collections.deque()
        self._task = None
        self._closing = False
        self._paused = False
        self.transport = None
        self.conn_id = 0

    # asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport
        if self._conns is not None:
            self._conns.add(self)

    def connection_lost(self, exc):
        self._closing = True
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
        if self._conns is not None:
            self._conns.discard(self)
        if self._on_close is not None:
            self._on_close(self)

    def data_received(self, data):
        if self._closing:
            return
        self._buf += data
        try:
            while not self._closing:
                req = self._parse()
                if req is None:
                    break
                req.conn = self.conn_id
                plan, close = self._handler(req, self)
                self._submit(plan, close or not req.keep_alive)
        except HttpError as e:
            self._submit(json_reply(e.status, {"error": e.message})[0], True)

    # helpers for plans

    def write(self, data):
        """Write `data` unless the connection is already closing (the peer may have gone during a delay)."""
        if not self.transport.is_closing():
            self.transport.write(data)

    def is_closing(self):
        return self.transport.is_closing()

    def abort(self):
        self._closing = True
        self.transport.abort()

    # internals

    def _submit(self, plan, close):
        if close:
            self._closing = True
        if self._task is None and not self._queue and not callable(plan):
            self.write(plan)
            if close:
                self.transport.close()
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(plan, close))
            return
        self._queue.append((plan, close))
        if len(self._queue) >= MAX_QUEUED and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    async def _run(self, plan, close):
        try:
            while True:
                if callable(plan):
                    await plan(self)
                else:
                    self.write(plan)
                if close or self.transport.is_closing():
                    self._queue.clear()
                    self.transport.close()
                    return
                if not self._queue:
                    return
                plan, close = self._queue.popleft()
                if self._paused and len(self._queue) < MAX_QUEUED // 2:
                    self._paused = False
                    self.transport.resume_reading()
        finally:
            self._task = None

    def _parse(self):
        """The next complete request from the buffer, or None when more bytes are needed."""
        buf = self._buf
        if self._req is None:
            # RFC 9112 §2.2: ignore empty lines received before a request line.
            while buf[:2] == b"\r\n":
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise HttpError(431, "request head too large")
                return None
            if end > MAX_HEAD:
                raise HttpError(431, "request head too large")
            text = buf[:end].decode("latin-1")
            del buf[: end + 4]
            self._req = parse_head(text, self._max_body)
            if self._req._mode == _MODE_NONE:
                req, self._req = self._req, None
                return req
        req = self._req
        if req._mode == _MODE_LENGTH:
            if len(buf) < req._left:
                self._continue(req)
                return None
            req.body = bytes(buf[: req._left])
            del buf[: req._left]
        elif not self._parse_chunked(req):
            self._continue(req)
            return None
        self._req = None
        return req

    def _continue(self, req):
        # Clients such as libcurl wait for "100 Continue" before sending a large body. It may only be sent when
        # no earlier answer is still pending on this connection; otherwise the client sends after its timeout.
        if req._expect_continue and self._task is None and not self._queue:
            req._expect_continue = False
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _parse_chunked(self, req):
        buf = self._buf
        while True:
            if req._chunk_state == _CHUNK_SIZE:
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > MAX_CHUNK_LINE:
                        raise HttpError(400, "chunk size line too long")
                    return False
                size = bytes(buf[:i]).split(b";", 1)[0].strip(b" \t")
                if not HEX_RE.fullmatch(size):
                    raise HttpError(400, "malformed chunk size")
                del buf[: i + 2]
                n = int(size, 16)
                if n == 0:
                    req._chunk_state = _CHUNK_TRAILER
                    continue
                req._left += n
                if req._left > self._max_body:
                    raise HttpError(413, "request body too large")
                req._chunk_state = _CHUNK_DATA
                req._chunks.append(n)
            elif req._chunk_state == _CHUNK_DATA:
                n = req._chunks[-1]
                if len(buf) < n + 2:
                    return False
                if buf[n : n + 2] != b"\r\n":
                    raise HttpError(400, "chunk not terminated by CRLF")
                req._chunks[-1] = bytes(buf[:n])
                del buf[: n + 2]
                req._chunk_state = _CHUNK_SIZE
            else:
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > MAX_HEAD:
                        raise HttpError(431, "trailer section too large")
                    return False
                del buf[: i + 2]
                if i == 0:
                    req.body = b"".join(req._chunks)
                    req._chunks = None
                    return True
                req._trailers += 1
                if req._trailers > MAX_TRAILERS:
                    raise HttpError(431, "too many trailer fields")


# ---- rules ----

RULE_KEYS = {"method", "path", "prefix", "times", "then", "response"}
RESPONSE_KEYS = {"status", "headers", "body", "json", "delay_ms", "retry_after", "close_after_bytes",
                 "close_before_response", "malformed_json", "chunked", "body_bytes", "slow_body_ms",
                 "slow_piece_bytes"}


class RuleError(Exception):
    pass


def _int(obj, key, lo, hi):
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise RuleError(f"{key} must be an integer in [{lo}, {hi}]")
    return v


def _bool(obj, key):
    v = obj[key]
    if not isinstance(v, bool):
        raise RuleError(f"{key} must be a boolean")
    return v


def _header_text(s, what):
    if not isinstance(s, (str, int)) or isinstance(s, bool):
        raise RuleError(f"{what} must be a string")
    s = str(s)
    if "\r" in s or "\n" in s:
        raise RuleError(f"{what} must not contain CR or LF")
    try:
        s.encode("latin-1")
    except UnicodeEncodeError:
        raise RuleError(f"{what} must be Latin-1") from None
    return s


def validate_rule(obj):
    """Check a POST /rules document; unknown keys are errors so that a misspelt fault cannot pass silently."""
    if not isinstance(obj, dict):
        raise RuleError("rule must be a JSON object")
    unknown = set(obj) - RULE_KEYS
    if unknown:
        raise RuleError(f"unknown rule keys: {sorted(unknown)}")
    method = obj.get("method", "*")
    if not isinstance(method, str) or not (method == "*" or TOKEN_RE.fullmatch(method)):
        raise RuleError("method must be an HTTP method or \"*\"")
    if "path" in obj and "prefix" in obj:
        raise RuleError("give path or prefix, not both")
    for key in ("path", "prefix"):
        if key in obj and not isinstance(obj[key], str):
            raise RuleError(f"{key} must be a string")
    times = None
    if obj.get("times") is not None:
        times = _int(obj, "times", -1, 2**62)
        if times == -1:
            times = None
    if obj.get("then") not in (None, "fallthrough"):
        raise RuleError("then may only be null or \"fallthrough\": an exhausted rule always falls through")
    resp = obj.get("response", {})
    if not isinstance(resp, dict):
        raise RuleError("response must be a JSON object")
    unknown = set(resp) - RESPONSE_KEYS
    if unknown:
        raise RuleError(f"unknown response keys: {sorted(unknown)}")
    if "status" in resp:
        _int(resp, "status", 100, 999)
    if len({"body", "json", "body_bytes", "malformed_json"} & set(resp)) > 1:
        raise RuleError("give at most one of body, json, body_bytes, malformed_json")
    if "body" in resp and not isinstance(resp["body"], str):
        raise RuleError("body must be a string")
    for key in ("delay_ms", "close_after_bytes", "body_bytes", "slow_body_ms"):
        if key in resp:
            _int(resp, key, 0, 2**40)
    if "slow_piece_bytes" in resp:
        _int(resp, "slow_piece_bytes", 1, 2**30)
    for key in ("close_before_response", "malformed_json", "chunked"):
        if key in resp:
            _bool(resp, key)
    headers = resp.get("headers", {})
    if not isinstance(headers, dict):
        raise RuleError("headers must be a JSON object")
    for k, v in headers.items():
        if not TOKEN_RE.fullmatch(k):
            raise RuleError(f"invalid header name {k!r}")
        _header_text(v, f"header {k}")
    if "retry_after" in resp:
        _header_text(resp["retry_after"], "retry_after")
    return method, obj.get("path"), obj.get("prefix"), times, resp


class Rule:
    __slots__ = ("id", "method", "path", "prefix", "remaining", "hits", "response", "spec")

    def matches(self, req):
        if self.remaining == 0:
            return False
        if self.method != "*" and self.method != req.method:
            return False
        if self.path is not None and req.path != self.path:
            return False
        if self.prefix is not None and not req.path.startswith(self.prefix):
            return False
        return True

    def describe(self):
        d = dict(self.spec)
        d["id"] = self.id
        d["hits"] = self.hits
        d["remaining"] = -1 if self.remaining is None else self.remaining
        return d


def _split(data, size):
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


# ---- the fake upstream ----


class Upstream:
    def __init__(self, max_body):
        self.max_body = max_body
        self.rules = []
        self.next_rule_id = 1
        self.log = collections.deque(maxlen=MAX_LOG)
        self.requests = 0
        self.accepted = 0
        self.conns = set()

    def protocol(self):
        self.accepted += 1
        p = HttpProtocol(self.handle, self.max_body, self.conns)
        p.conn_id = self.accepted
        return p

    # main port

    def default_body(self, req, n, ok=True):
        return ('{"ok":%s,"path":%s,"method":%s,"n":%d}' % (
            "true" if ok else "false", json.dumps(req.path), json.dumps(req.method), n)).encode()

    def handle(self, req, proto):
        self.requests += 1
        n = self.requests
        self.log.append((req, n, time.monotonic()))
        for rule in self.rules:
            if rule.matches(req):
                if rule.remaining is not None:
                    rule.remaining -= 1
                rule.hits += 1
                return self.rule_plan(rule.response, req, n)
        if req.path == "/_fake/echo":
            return json_reply(200, {"method": req.method, "path": req.path, "query": req.query,
                                    "headers": req.header_dict(),
                                    "body": req.body.decode("utf-8", "replace")}, req)
        body = self.default_body(req, n)
        if req.keep_alive and req.version == "HTTP/1.1":
            conn = b""
        else:
            conn = b"Connection: keep-alive\r\n" if req.keep_alive else b"Connection: close\r\n"
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (
            len(body), conn)
        return (head if req.method == "HEAD" else head + body), False

    def rule_plan(self, r, req, n):
        status = r.get("status", 200)
        user = r.get("headers", {})
        user_lower = {k.lower() for k in user}
        if "json" in r:
            body, ctype = json.dumps(r["json"]).encode(), "application/json"
        elif "body" in r:
            body, ctype = r["body"].encode(), "text/plain; charset=utf-8"
        elif "body_bytes" in r:
            body, ctype = b"x" * r["body_bytes"], "application/octet-stream"
        elif r.get("malformed_json"):
            # Cut the default document in half: it starts with "{" and only its last byte closes it, so any
            # prefix is invalid JSON.
            full = self.default_body(req, n)
            body, ctype = full[: len(full) // 2], "application/json"
        else:
            body, ctype = self.default_body(req, n, status < 400), "application/json"
        no_body = status < 200 or status in (204, 304)
        if no_body:
            body = b""
        headers = []
        if not no_body and "content-type" not in user_lower:
            headers.append(("Content-Type", ctype))
        if "retry_after" in r:
            headers.append(("Retry-After", str(r["retry_after"])))
        headers.extend((k, str(v)) for k, v in user.items())
        slow = r.get("slow_body_ms")
        piece = r.get("slow_piece_bytes", 16) if slow else 8192
        if r.get("chunked") and not no_body:
            if "transfer-encoding" not in user_lower:
                headers.append(("Transfer-Encoding", "chunked"))
            segs = [b"%x\r\n%s\r\n" % (len(c), c) for c in _split(body, piece) if c] + [b"0\r\n\r\n"]
        else:
            if not no_body and "content-length" not in user_lower:
                headers.append(("Content-Length", len(body)))
            segs = _split(body, piece) if slow else [body]
        if req.method == "HEAD":
            segs = []
        cut = r.get("close_after_bytes")
        if cut is not None:
            kept, left = [], cut
            for s in segs:
                if left <= 0:
                    break
                kept.append(s[:left])
                left -= len(s)
            segs = kept
        close_before = r.get("close_before_response", False)
        close = close_before or cut is not None or not req.keep_alive
        if not req.keep_alive:
            headers.append(("Connection", "close"))
        elif req.version == "HTTP/1.0":
            headers.append(("Connection", "keep-alive"))
        head = render_head(status, headers)
        delay = r.get("delay_ms", 0)
        if not delay and not slow:
            return (b"" if close_before else head + b"".join(segs)), close

        async def run(proto):
            if delay:
                await asyncio.sleep(delay / 1000)
            if close_before:
                return
            if not slow:
                proto.write(head + b"".join(segs))
                return
            proto.write(head)
            for s in segs:
                await asyncio.sleep(slow / 1000)
                if proto.is_closing():
                    return
                proto.write(s)

        return run, close

    # control port

    def control(self, req, proto):
        try:
            return self.route(req)
        except RuleError as e:
            return json_reply(400, {"error": str(e)}, req)

    def route(self, req):
        key = (req.method, req.path)
        if key == ("POST", "/rules"):
            try:
                obj = json.loads(req.body or b"null")
            except ValueError as e:
                raise RuleError(f"invalid JSON: {e}") from None
            method, path, prefix, times, resp = validate_rule(obj)
            rule = Rule()
            rule.id, rule.method, rule.path, rule.prefix = self.next_rule_id, method, path, prefix
            rule.remaining, rule.hits, rule.response, rule.spec = times, 0, resp, obj
            self.next_rule_id += 1
            self.rules.append(rule)
            return json_reply(200, {"id": rule.id}, req)
        if key == ("GET", "/rules"):
            return json_reply(200, {"rules": [r.describe() for r in self.rules]}, req)
        if key == ("DELETE", "/rules"):
            self.rules.clear()
            self.log.clear()
            return json_reply(200, {"ok": True}, req)
        if req.method == "DELETE" and req.path.startswith("/rules/"):
            tail = req.path[len("/rules/"):]
            before = len(self.rules)
            self.rules = [r for r in self.rules if str(r.id) != tail]
            if len(self.rules) == before:
                return json_reply(404, {"error": "no such rule"}, req)
            return json_reply(200, {"ok": True}, req)
        if key == ("GET", "/requests"):
            out = []
            for r, n, t in self.log:
                out.append({"method": r.method, "path": r.path, "query": r.query, "headers": r.header_dict(),
                            "body": r.body[:MAX_LOGGED_BODY].decode("utf-8", "replace"),
                            "body_length": len(r.body), "t": t, "conn": r.conn, "n": n})
            return json_reply(200, {"requests": out, "count": len(out)}, req)
        if key == ("DELETE", "/requests"):
            self.log.clear()
            return json_reply(200, {"ok": True}, req)
        if key == ("GET", "/stats"):
            return json_reply(200, {"connections_accepted": self.accepted, "requests": self.requests,
                                    "open_connections": len(self.conns)}, req)
        if req.path in ("/rules", "/requests", "/stats"):
            return json_reply(405, {"error": "method not allowed"}, req)
        return json_reply(404, {"error": "not found"}, req)


# ---- process plumbing shared with fake_smtp.py ----


def parse_listen(value):
    """"HOST:PORT" or "[V6]:PORT" -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def server_ssl_context(cert, key, alpn=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def write_ready_file(path, info):
    """Write `info` as JSON atomically (temporary file, then rename) so a reader never sees a partial file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def wait_for_signal():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def common_args(description):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 0),
                    help="HOST:PORT of the service port (0: ephemeral)")
    ap.add_argument("--control-port", type=int, default=0,
                    help="port of the control API on the same host (default: ephemeral)")
    ap.add_argument("--ready-file", required=True,
                    help='written atomically once listening: {"port": N, "control_port": M, "pid": P}')
    ap.add_argument("--tls-cert", help="PEM certificate (chain) for TLS")
    ap.add_argument("--tls-key", help="PEM private key for TLS")
    return ap


def check_tls_args(ap, args):
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")


async def amain(args):
    loop = asyncio.get_running_loop()
    host, port = args.listen
    ctx = server_ssl_context(args.tls_cert, args.tls_key, ["http/1.1"]) if args.tls_cert else None
    app = Upstream(args.max_body)
    ctl_conns = set()
    server = await loop.create_server(app.protocol, host, port, ssl=ctx, backlog=1024)
    control = await loop.create_server(lambda: HttpProtocol(app.control, 64 << 20, ctl_conns), host,
                                       args.control_port)
    write_ready_file(args.ready_file, {"port": server.sockets[0].getsockname()[1],
                                       "control_port": control.sockets[0].getsockname()[1],
                                       "pid": os.getpid()})
    await wait_for_signal()
    server.close()
    control.close()
    for p in list(app.conns) + list(ctl_conns):
        p.abort()
    await asyncio.sleep(0)


def main():
    ap = common_args("Fake upstream HTTP/1.1 server with fault injection (see README.md).")
    ap.add_argument("--max-body", type=int, default=64 << 20, help="largest accepted request body in bytes")
    args = ap.parse_args()
    check_tls_args(ap, args)
    try:
        asyncio.run(amain(args))
    except OSError as e:
        print(f"fake_upstream: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
