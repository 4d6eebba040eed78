#!/usr/bin/env python3
"""Self-test of the fakes: starts fake_upstream.py and fake_smtp.py as subprocesses and drives every feature and
fault through raw sockets, http.client and smtplib. Exit status 0 when everything passes.

    python3 test/fakes/test_fakes.py [-v]

Timing checks are lower bounds only (a delay of D ms must not be answered before D ms) so that a loaded machine
cannot make them fail.
"""
import base64
import http.client
import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
UPSTREAM = os.path.join(HERE, "fake_upstream.py")
SMTP = os.path.join(HERE, "fake_smtp.py")
TMP = None
CERT = KEY = None


def setUpModule():
    global TMP, CERT, KEY
    TMP = tempfile.mkdtemp(prefix="crmd-fakes-test.")
    CERT, KEY = os.path.join(TMP, "cert.pem"), os.path.join(TMP, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", KEY, "-out", CERT],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def client_ctx():
    return ssl.create_default_context(cafile=CERT)


class Fake:
    """A fake running as a subprocess, found through its ready file."""

    def __init__(self, script, *args):
        self.dir = tempfile.mkdtemp(dir=TMP)
        ready = os.path.join(self.dir, "ready.json")
        self.proc = subprocess.Popen([sys.executable, script, "--listen", "127.0.0.1:0", "--ready-file", ready, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while not os.path.exists(ready):
            if self.proc.poll() is not None:
                raise AssertionError(f"{script} exited {self.proc.returncode}: {self.proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"{script} did not write its ready file")
            time.sleep(0.02)
        with open(ready) as f:
            self.info = json.load(f)
        self.port, self.control_port = self.info["port"], self.info["control_port"]

    def ctl(self, method, path, body=None, raw=None):
        c = http.client.HTTPConnection("127.0.0.1", self.control_port, timeout=10)
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        r = c.getresponse()
        out = r.status, json.loads(r.read())
        c.close()
        return out

    def ok(self, method, path, body=None):
        status, obj = self.ctl(method, path, body)
        if status != 200:
            raise AssertionError(f"control {method} {path} -> {status} {obj}")
        return obj

    def stop(self, sig=signal.SIGTERM):
        """Signal the fake and return (exit status, stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            return None, out, err
        return self.proc.returncode, out, err


def connect(port, timeout=10):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_response(f, head_only=False):
    """Read one HTTP/1.1 response from a binary file object: (status, {lower-name: value}, body)."""
    line = f.readline()
    if not line:
        raise EOFError("connection closed before a response")
    status = int(line.split(b" ", 2)[1])
    headers = {}
    while True:
        h = f.readline()
        if h in (b"\r\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if head_only or status in (204, 304) or 100 <= status < 200:
        return status, headers, b""
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                if f.readline() != b"\r\n":
                    raise AssertionError("no CRLF after the last chunk")
                return status, headers, body
            body += f.read(size)
            if f.read(2) != b"\r\n":
                raise AssertionError("chunk not followed by CRLF")
    n = int(headers["content-length"])
    body = f.read(n)
    if len(body) != n:
        raise EOFError(f"short body: {len(body)} of {n}")
    return status, headers, body


def read_all(sock):
    out = b""
    while True:
        b = sock.recv(65536)
        if not b:
            return out
        out += b


def get(port, path, method="GET", body=None, headers=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r, r.read()
    finally:
        c.close()


class UpstreamTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fake = Fake(UPSTREAM)

    @classmethod
    def tearDownClass(cls):
        rc, out, err = cls.fake.stop()
        assert rc == 0 and out == b"" and err == b"", (rc, out, err)

    def setUp(self):
        self.fake.ok("DELETE", "/rules")
        self.port = self.fake.port

    def rule(self, **spec):
        return self.fake.ok("POST", "/rules", spec)["id"]

    def requests(self):
        return self.fake.ok("GET", "/requests")["requests"]

    def test_ready_file(self):
        info = self.fake.info
        self.assertEqual(set(info), {"port", "control_port", "pid"})
        self.assertEqual(info["pid"], self.fake.proc.pid)
        self.assertGreater(info["port"], 0)
        self.assertGreater(info["control_port"], 0)
        self.assertNotEqual(info["port"], info["control_port"])
        self.assertEqual([f for f in os.listdir(self.fake.dir)], ["ready.json"])

    def test_default_answer_and_counter(self):
        r, data = get(self.port, "/some/path?a=1")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Content-Type"), "application/json")
        doc = json.loads(data)
        self.assertEqual(set(doc), {"ok", "path", "method", "n"})
        self.assertEqual((doc["ok"], doc["path"], doc["method"]), (True, "/some/path", "GET"))
        r, data = get(self.port, "/other", method="DELETE")
        doc2 = json.loads(data)
        self.assertEqual((doc2["method"], doc2["path"], doc2["n"]), ("DELETE", "/other", doc["n"] + 1))
        stats = self.fake.ok("GET", "/stats")
        self.assertEqual(set(stats), {"connections_accepted", "requests", "open_connections"})
        self.assertEqual(stats["requests"], doc2["n"])

    def test_keep_alive_and_request_log(self):
        before = self.fake.ok("GET", "/stats")["connections_accepted"]
        t0 = time.monotonic()
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        for i in range(3):
            c.request("POST", f"/k{i}?q={i}", body=f"body-{i}", headers={"X-Test": f"v{i}"})
            r = c.getresponse()
            self.assertEqual(r.status, 200)
            r.read()
        self.assertEqual(self.fake.ok("GET", "/stats")["open_connections"], 1)
        c.close()
        t1 = time.monotonic()
        self.assertEqual(self.fake.ok("GET", "/stats")["connections_accepted"], before + 1)
        log = self.fake.ok("GET", "/requests")
        self.assertEqual(log["count"], 3)
        reqs = log["requests"]
        self.assertEqual([r["path"] for r in reqs], ["/k0", "/k1", "/k2"])
        self.assertEqual([r["query"] for r in reqs], ["q=0", "q=1", "q=2"])
        self.assertEqual([r["body"] for r in reqs], ["body-0", "body-1", "body-2"])
        self.assertEqual({r["method"] for r in reqs}, {"POST"})
        self.assertEqual(len({r["conn"] for r in reqs}), 1)
        self.assertEqual(reqs[1]["headers"]["x-test"], "v1")
        self.assertEqual(reqs[1]["headers"]["content-length"], "6")
        ts = [r["t"] for r in reqs]
        self.assertEqual(ts, sorted(ts))
        self.assertTrue(t0 <= ts[0] and ts[-1] <= t1, (t0, ts, t1))  # CLOCK_MONOTONIC is system-wide
        for r in reqs:
            self.assertTrue({"method", "path", "query", "headers", "body", "t", "conn"} <= set(r))

    def test_pipelining(self):
        s = connect(self.port)
        s.sendall(b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"POST /_fake/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                  b"GET /p3 HTTP/1.1\r\nHost: x\r\n\r\n")
        f = s.makefile("rb")
        a = json.loads(read_response(f)[2])
        b = json.loads(read_response(f)[2])
        c = json.loads(read_response(f)[2])
        s.close()
        self.assertEqual(a["path"], "/p1")
        self.assertEqual((b["method"], b["path"], b["body"]), ("POST", "/_fake/echo", "abc"))
        self.assertEqual(c["path"], "/p3")
        self.assertEqual(c["n"], a["n"] + 2)

    def test_request_bodies_and_echo(self):
        s = connect(self.port)
        s.sendall(b"PUT /_fake/echo?z=9 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
                  b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer-Field: t\r\n\r\n")
        f = s.makefile("rb")
        status, _, body = read_response(f)
        self.assertEqual(status, 200)
        echo = json.loads(body)
        self.assertEqual(set(echo), {"method", "path", "query", "headers", "body"})
        self.assertEqual((echo["method"], echo["path"], echo["query"], echo["body"]),
                         ("PUT", "/_fake/echo", "z=9", "hello, world"))
        self.assertEqual(echo["headers"]["x-a"], "1, 2")
        # The body may arrive in pieces; the parser must wait for all of it.
        s.sendall(b"POST /_fake/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
        time.sleep(0.05)
        s.sendall(b"56789")
        self.assertEqual(json.loads(read_response(f)[2])["body"], "0123456789")
        s.close()
        r, data = get(self.port, "/_fake/echo", method="POST", body=b"\xc3\xa9t\xc3\xa9")
        self.assertEqual(json.loads(data)["body"], "\u00e9t\u00e9")
        self.assertEqual(self.requests()[-1]["body"], "\u00e9t\u00e9")

    def test_expect_continue(self):
        s = connect(self.port)
        s.sendall(b"POST /_fake/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        self.assertEqual(s.recv(100), b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"abcde")
        status, _, body = read_response(s.makefile("rb"))
        self.assertEqual((status, json.loads(body)["body"]), (200, "abcde"))
        s.close()

    def test_malformed_requests(self):
        cases = [
            (b"GARBAGE\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
            (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
        ]
        for raw, want in cases:
            s = connect(self.port)
            s.sendall(raw)
            data = read_all(s)
            s.close()
            self.assertTrue(data.startswith(b"HTTP/1.1 %d " % want), (raw[:60], data[:80]))
            self.assertIn(b"Connection: close\r\n", data)

    def test_http10_and_connection_close(self):
        for raw in (b"GET /old HTTP/1.0\r\n\r\n", b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"):
            s = connect(self.port)
            s.sendall(raw)
            data = read_all(s)  # returns only because the fake closes
            s.close()
            self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"))
            self.assertIn(b"Connection: close\r\n", data)
        s = connect(self.port)
        s.sendall(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        f = s.makefile("rb")
        self.assertEqual(read_response(f)[1]["connection"], "keep-alive")
        self.assertEqual(json.loads(read_response(f)[2])["path"], "/b")
        s.close()

    def test_head(self):
        s = connect(self.port)
        s.sendall(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        f = s.makefile("rb")
        status, headers, _ = read_response(f, head_only=True)
        self.assertEqual(status, 200)
        self.assertGreater(int(headers["content-length"]), 0)
        self.assertEqual(json.loads(read_response(f)[2])["path"], "/after")  # no stray body in between
        s.close()

    def test_times_then_default(self):
        rid = self.rule(path="/flaky", times=2, response={"status": 503})
        statuses = [get(self.port, "/flaky")[0].status for _ in range(4)]
        self.assertEqual(statuses, [503, 503, 200, 200])
        rules = self.fake.ok("GET", "/rules")["rules"]
        self.assertEqual([(r["id"], r["hits"], r["remaining"]) for r in rules], [(rid, 2, 0)])

    def test_rule_matching(self):
        self.rule(method="POST", path="/m", response={"status": 201})
        self.rule(prefix="/pre/", times=1, response={"status": 418})
        self.rule(prefix="/pre/", response={"status": 419})
        exact = self.rule(path="/exact", times=-1, response={"status": 409})
        self.assertEqual(get(self.port, "/m")[0].status, 200)
        self.assertEqual(get(self.port, "/m", method="POST", body=b"")[0].status, 201)
        self.assertEqual(get(self.port, "/pre/a")[0].status, 418)
        self.assertEqual(get(self.port, "/pre/b?x=1")[0].status, 419)
        self.assertEqual(get(self.port, "/pre")[0].status, 200)
        self.assertEqual(get(self.port, "/exact?q=1")[0].status, 409)
        self.assertEqual(get(self.port, "/exact/sub")[0].status, 200)
        self.assertEqual(get(self.port, "/exact")[0].status, 409)
        self.assertEqual(self.fake.ok("DELETE", f"/rules/{exact}"), {"ok": True})
        self.assertEqual(self.fake.ctl("DELETE", f"/rules/{exact}")[0], 404)
        self.assertEqual(get(self.port, "/exact")[0].status, 200)
        self.rule(response={"status": 500, "body": "everything"})
        r, data = get(self.port, "/anything/at/all")
        self.assertEqual((r.status, data), (500, b"everything"))

    def test_response_fields(self):
        self.rule(path="/j", response={"status": 201, "headers": {"X-One": "1", "Location": "/j/7"},
                                       "json": {"id": 7, "list": [1, None]}})
        r, data = get(self.port, "/j")
        self.assertEqual((r.status, r.getheader("X-One"), r.getheader("Location")), (201, "1", "/j/7"))
        self.assertEqual(r.getheader("Content-Type"), "application/json")
        self.assertEqual(json.loads(data), {"id": 7, "list": [1, None]})

        self.rule(path="/t", response={"body": "plain \u00e9"})
        r, data = get(self.port, "/t")
        self.assertEqual((r.getheader("Content-Type"), data.decode()), ("text/plain; charset=utf-8", "plain \u00e9"))

        self.rule(path="/ct", response={"body": "<x/>", "headers": {"Content-Type": "application/xml"}})
        r, data = get(self.port, "/ct")
        self.assertEqual(r.getheader("Content-Type"), "application/xml")
        self.assertEqual(len(r.headers.get_all("Content-Type")), 1)

        self.rule(path="/429", response={"status": 429, "retry_after": "3", "json": {"error": "rate"}})
        r, data = get(self.port, "/429")
        self.assertEqual((r.status, r.getheader("Retry-After")), (429, "3"))
        date = "Wed, 21 Oct 2015 07:28:00 GMT"
        self.rule(path="/429d", response={"status": 429, "retry_after": date})
        self.assertEqual(get(self.port, "/429d")[0].getheader("Retry-After"), date)

        self.rule(path="/big", response={"body_bytes": 300000})
        r, data = get(self.port, "/big")
        self.assertEqual((int(r.getheader("Content-Length")), data), (300000, b"x" * 300000))

        self.rule(path="/204", response={"status": 204})
        s = connect(self.port)
        s.sendall(b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        f = s.makefile("rb")
        status, headers, _ = read_response(f)
        self.assertEqual(status, 204)
        self.assertNotIn("content-length", headers)
        self.assertEqual(json.loads(read_response(f)[2])["path"], "/after")
        s.close()

        self.rule(path="/err", response={"status": 502})
        r, data = get(self.port, "/err")
        self.assertEqual((r.status, json.loads(data)["ok"]), (502, False))

    def test_delay_ms(self):
        self.rule(path="/slow", times=2, response={"delay_ms": 400})
        t = time.monotonic()
        r, data = get(self.port, "/slow")
        self.assertGreaterEqual(time.monotonic() - t, 0.4)
        self.assertEqual((r.status, json.loads(data)["path"]), (200, "/slow"))
        # A client deadline shorter than the delay expires.
        with self.assertRaises(socket.timeout):
            get(self.port, "/slow", timeout=0.1)
        # Answers stay in order behind a delayed one on a pipelined connection.
        self.rule(path="/slow2", response={"delay_ms": 200, "status": 202})
        s = connect(self.port)
        s.sendall(b"GET /slow2 HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        f = s.makefile("rb")
        self.assertEqual(read_response(f)[0], 202)
        self.assertEqual(json.loads(read_response(f)[2])["path"], "/fast")
        s.close()

    def test_close_after_bytes(self):
        self.rule(path="/cut", response={"body_bytes": 1000, "close_after_bytes": 100})
        s = connect(self.port)
        s.sendall(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_all(s)
        s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b"\r\nContent-Length: 1000", head)
        self.assertEqual(body, b"x" * 100)
        with self.assertRaises(http.client.IncompleteRead):
            get(self.port, "/cut")
        # Chunked: the cut counts bytes of the encoded stream.
        self.rule(path="/cutc", response={"body": "abcdefghij", "chunked": True, "close_after_bytes": 6})
        s = connect(self.port)
        s.sendall(b"GET /cutc HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(read_all(s).partition(b"\r\n\r\n")[2], b"a\r\nabc")
        s.close()

    def test_close_before_response(self):
        self.rule(path="/drop", times=2, response={"close_before_response": True})
        s = connect(self.port)
        s.sendall(b"GET /drop HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(read_all(s), b"")
        s.close()
        with self.assertRaises(http.client.RemoteDisconnected):
            get(self.port, "/drop")
        self.assertEqual(get(self.port, "/drop")[0].status, 200)
        self.assertEqual([r["path"] for r in self.requests()], ["/drop"] * 3)  # dropped requests are logged
        self.rule(path="/dropslow", response={"close_before_response": True, "delay_ms": 300})
        t = time.monotonic()
        s = connect(self.port)
        s.sendall(b"GET /dropslow HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(read_all(s), b"")
        self.assertGreaterEqual(time.monotonic() - t, 0.3)
        s.close()

    def test_malformed_json(self):
        self.rule(path="/bad", response={"malformed_json": True})
        r, data = get(self.port, "/bad")
        self.assertEqual((r.status, r.getheader("Content-Type")), (200, "application/json"))
        self.assertEqual(int(r.getheader("Content-Length")), len(data))
        self.assertTrue(data.startswith(b"{"))
        with self.assertRaises(ValueError):
            json.loads(data)

    def test_chunked_response(self):
        body = "chunk" * 5000
        self.rule(path="/ch", response={"body": body, "chunked": True})
        r, data = get(self.port, "/ch")
        self.assertEqual((r.getheader("Transfer-Encoding"), r.getheader("Content-Length")), ("chunked", None))
        self.assertEqual(data.decode(), body)
        s = connect(self.port)
        s.sendall(b"GET /ch HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        f = s.makefile("rb")
        status, headers, got = read_response(f)  # checks the 0-chunk and final CRLF
        self.assertEqual((status, got.decode()), (200, body))
        self.assertEqual(json.loads(read_response(f)[2])["path"], "/next")
        s.close()
        self.rule(path="/che", response={"status": 200, "body": "", "chunked": True})
        s = connect(self.port)
        s.sendall(b"GET /che HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(read_response(s.makefile("rb"))[2], b"")
        s.close()

    def test_slow_body(self):
        self.rule(path="/drip", response={"body_bytes": 64, "slow_body_ms": 60})
        s = connect(self.port)
        t = time.monotonic()
        s.sendall(b"GET /drip HTTP/1.1\r\nHost: x\r\n\r\n")
        data, reads = b"", 0
        while True:
            b = s.recv(65536)
            data += b
            reads += 1
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and len(body) >= 64:
                break
        elapsed = time.monotonic() - t
        s.close()
        self.assertIn(b"Content-Length: 64", head)
        self.assertEqual(body, b"x" * 64)
        self.assertGreaterEqual(elapsed, 0.24)  # 4 pieces of 16 bytes, 60 ms before each
        self.assertGreaterEqual(reads, 2)
        self.rule(path="/dripc", response={"body": "abcdef", "chunked": True, "slow_body_ms": 10,
                                           "slow_piece_bytes": 2})
        r, data = get(self.port, "/dripc")
        self.assertEqual(data, b"abcdef")

    def test_control_api_errors(self):
        bad = [
            {"path": "/a", "prefix": "/b"},
            {"path": "/a", "response": {"status": 200, "dealy_ms": 5}},
            {"pth": "/a"},
            {"response": {"body": "a", "json": 1}},
            {"response": {"status": "200"}},
            {"response": {"status": 99}},
            {"times": -2},
            {"times": 1.5},
            {"method": "GE T"},
            {"response": {"headers": {"X": "a\r\nInjected: 1"}}},
            {"response": {"chunked": 1}},
            {"then": "repeat"},
            [],
        ]
        for spec in bad:
            status, obj = self.fake.ctl("POST", "/rules", spec)
            self.assertEqual(status, 400, spec)
            self.assertIn("error", obj)
        self.assertEqual(self.fake.ctl("POST", "/rules", raw="{not json")[0], 400)
        self.assertEqual(self.fake.ctl("GET", "/nope")[0], 404)
        self.assertEqual(self.fake.ctl("PUT", "/rules")[0], 405)
        self.assertEqual(self.fake.ok("GET", "/rules"), {"rules": []})
        self.assertIn("id", self.fake.ok("POST", "/rules", {"path": "/x", "then": "fallthrough"}))

    def test_log_clearing(self):
        self.rule(path="/r", response={"status": 500})
        get(self.port, "/r")
        self.assertEqual(len(self.requests()), 1)
        self.assertEqual(self.fake.ok("DELETE", "/requests"), {"ok": True})
        self.assertEqual(self.fake.ok("GET", "/requests"), {"requests": [], "count": 0})
        self.assertEqual(get(self.port, "/r")[0].status, 500)  # rules survive DELETE /requests
        self.assertEqual(self.fake.ok("DELETE", "/rules"), {"ok": True})
        self.assertEqual(self.requests(), [])  # DELETE /rules clears the log too
        self.assertEqual(get(self.port, "/r")[0].status, 200)

    def test_log_limits(self):
        s = connect(self.port)
        s.sendall(b"GET /log HTTP/1.1\r\nHost: x\r\n\r\n" * 10050)
        f = s.makefile("rb")
        last = None
        for _ in range(10050):
            last = json.loads(read_response(f)[2])["n"]
        s.close()
        log = self.fake.ok("GET", "/requests")
        self.assertEqual(log["count"], 10000)
        self.assertEqual(len(log["requests"]), 10000)
        self.assertEqual(log["requests"][0]["n"], last - 9999)
        self.assertEqual(log["requests"][-1]["n"], last)
        self.fake.ok("DELETE", "/requests")
        get(self.port, "/large", method="POST", body=b"y" * 70000)
        (entry,) = self.requests()
        self.assertEqual((len(entry["body"]), entry["body_length"]), (65536, 70000))

    def test_tls(self):
        fake = Fake(UPSTREAM, "--tls-cert", CERT, "--tls-key", KEY)
        try:
            c = http.client.HTTPSConnection("127.0.0.1", fake.port, timeout=10, context=client_ctx())
            c.request("GET", "/secure")
            r = c.getresponse()
            self.assertEqual((r.status, json.loads(r.read())["path"]), (200, "/secure"))
            self.assertEqual(c.sock.version()[:3], "TLS")
            c.request("GET", "/again")  # keep-alive over TLS
            self.assertEqual(json.loads(c.getresponse().read())["path"], "/again")
            c.close()
            c = http.client.HTTPSConnection("localhost", fake.port, timeout=10, context=client_ctx())
            c.request("GET", "/byname")
            self.assertEqual(c.getresponse().status, 200)
            c.close()
            fake.ok("POST", "/rules", {"path": "/cut", "response": {"body_bytes": 500, "close_after_bytes": 10}})
            c = http.client.HTTPSConnection("127.0.0.1", fake.port, timeout=10, context=client_ctx())
            c.request("GET", "/cut")
            with self.assertRaises(http.client.IncompleteRead):
                c.getresponse().read()
            c.close()
        finally:
            rc, out, err = fake.stop()
        self.assertEqual((rc, out, err), (0, b"", b""))

    def test_signals(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            fake = Fake(UPSTREAM)
            fake.ok("POST", "/rules", {"response": {"delay_ms": 60000}})
            s = connect(fake.port)
            s.sendall(b"GET /pending HTTP/1.1\r\nHost: x\r\n\r\n")
            while not fake.ok("GET", "/requests")["count"]:
                time.sleep(0.01)
            t = time.monotonic()
            rc, out, err = fake.stop(sig)
            self.assertLess(time.monotonic() - t, 5)
            self.assertEqual((rc, out, err), (0, b"", b""), sig)
            self.assertEqual(read_all(s), b"")
            s.close()


class SmtpRaw:
    """A line-level SMTP client for what smtplib will not do (bad sequences, pipelining, raw DATA)."""

    def __init__(self, port, timeout=10):
        self.sock = connect(port, timeout)
        self.f = self.sock.makefile("rb")

    def reply(self):
        lines = []
        while True:
            line = self.f.readline()
            if not line:
                raise EOFError("connection closed")
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] == b" ":
                return int(lines[0][:3]), lines

    def cmd(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.reply()[0]

    def close(self):
        self.f.close()
        self.sock.close()


def msg_text(body):
    return "From: a@example.com\r\nTo: b@example.com\r\nSubject: t\r\n\r\n" + body


class SmtpPlainTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fake = Fake(SMTP, "--max-size", "100000")

    @classmethod
    def tearDownClass(cls):
        rc, out, err = cls.fake.stop()
        assert rc == 0 and out == b"" and err == b"", (rc, out, err)

    def setUp(self):
        self.fake.ok("POST", "/faults", {"mode": "ok"})
        self.fake.ok("DELETE", "/messages")
        self.port = self.fake.port

    def messages(self):
        return self.fake.ok("GET", "/messages")["messages"]

    def test_greeting_and_capabilities(self):
        s = SmtpRaw(self.port)
        code, lines = s.reply()
        self.assertEqual(code, 220)
        s.sock.sendall(b"EHLO client.test\r\n")
        code, lines = s.reply()
        self.assertEqual(code, 250)
        self.assertEqual([l[4:] for l in lines[1:]], ["SIZE 100000", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES"])
        self.assertEqual(s.cmd("QUIT"), 221)
        self.assertEqual(s.f.read(), b"")
        s.close()

    def test_send_with_dot_unstuffing(self):
        body = "line one\r\n.starts with a dot\r\n..two dots\r\n.\r\nnot the end\r\n"
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as c:
            refused = c.sendmail("a@example.com", ["b@example.com", "c@example.com"], msg_text(body))
            self.assertEqual(refused, {})
        (m,) = self.messages()
        self.assertEqual(set(m), {"mail_from", "rcpt_to", "data", "tls", "auth_user", "t", "helo"})
        self.assertEqual((m["mail_from"], m["rcpt_to"]), ("a@example.com", ["b@example.com", "c@example.com"]))
        self.assertEqual(m["data"], msg_text(body))
        self.assertEqual((m["tls"], m["auth_user"]), (False, None))
        self.assertLessEqual(m["t"], time.monotonic())

    def test_raw_data_terminator(self):
        s = SmtpRaw(self.port)
        s.reply()
        self.assertEqual(s.cmd("HELO client.test"), 250)
        self.assertEqual(s.cmd("MAIL FROM:<>"), 250)
        self.assertEqual(s.cmd("RCPT TO:<x@example.com>"), 250)
        self.assertEqual(s.cmd("DATA"), 354)
        # A dot line after a bare LF is text, and so is a lone dot not followed by CRLF.
        s.sock.sendall(b"Subject: raw\r\n\r\nbare\n.\nstill text\r\n..x\r\n.y\r\n.\r\n")
        self.assertEqual(s.reply()[0], 250)
        self.assertEqual(s.cmd("QUIT"), 221)
        s.close()
        (m,) = self.messages()
        self.assertEqual(m["mail_from"], "")
        self.assertEqual(m["data"], "Subject: raw\r\n\r\nbare\n.\nstill text\r\n.x\r\ny\r\n")
        self.assertEqual(m["helo"], "client.test")

    def test_empty_message(self):
        s = SmtpRaw(self.port)
        s.reply()
        for c in ("EHLO c", "MAIL FROM:<a@b>", "RCPT TO:<c@d>"):
            self.assertEqual(s.cmd(c), 250)
        self.assertEqual(s.cmd("DATA"), 354)
        self.assertEqual(s.cmd("."), 250)
        s.close()
        self.assertEqual(self.messages()[0]["data"], "")

    def test_command_sequence_errors(self):
        s = SmtpRaw(self.port)
        s.reply()
        self.assertEqual(s.cmd("MAIL FROM:<a@b>"), 503)  # before HELO
        self.assertEqual(s.cmd("EHLO"), 501)
        self.assertEqual(s.cmd("EHLO c"), 250)
        self.assertEqual(s.cmd("RCPT TO:<c@d>"), 503)
        self.assertEqual(s.cmd("DATA"), 503)
        self.assertEqual(s.cmd("MAIL FROM:a@b"), 501)
        self.assertEqual(s.cmd("MAIL FROM:<a@b> SIZE=100001"), 552)
        self.assertEqual(s.cmd("MAIL FROM:<a@b> FOO=1"), 555)
        self.assertEqual(s.cmd("MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME"), 250)
        self.assertEqual(s.cmd("MAIL FROM:<a@b>"), 503)  # nested
        self.assertEqual(s.cmd("DATA"), 503)  # no recipient yet
        self.assertEqual(s.cmd("RCPT TO:<>"), 501)
        self.assertEqual(s.cmd("RCPT TO:<c@d>"), 250)
        self.assertEqual(s.cmd("RSET"), 250)
        self.assertEqual(s.cmd("DATA"), 503)  # RSET dropped the transaction
        self.assertEqual(s.cmd("NOOP"), 250)
        self.assertEqual(s.cmd("VRFY x"), 252)
        self.assertEqual(s.cmd("BOGUS"), 500)
        self.assertEqual(s.cmd("AUTH PLAIN AGEAYg=="), 502)  # not configured
        self.assertEqual(s.cmd("STARTTLS"), 502)  # no certificate
        s.sock.sendall(b"NOOP\n")
        self.assertEqual(s.reply()[0], 500)  # bare LF
        self.assertEqual(s.cmd("QUIT"), 221)
        s.close()
        self.assertEqual(self.messages(), [])

    def test_message_too_large(self):
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as c:
            c.ehlo()
            c.esmtp_features.pop("size")  # keep smtplib from announcing SIZE, so the fake must count itself
            with self.assertRaises(smtplib.SMTPDataError) as e:
                c.sendmail("a@b", ["c@d"], msg_text("x" * 100001))
            self.assertEqual(e.exception.smtp_code, 552)
            self.assertEqual(c.noop()[0], 250)  # the session survives
        self.assertEqual(self.messages(), [])

    def test_pipelining(self):
        s = SmtpRaw(self.port)
        s.reply()
        s.cmd("EHLO c")
        s.sock.sendall(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\n")
        self.assertEqual([s.reply()[0] for _ in range(4)], [250, 250, 250, 354])
        s.sock.sendall(b"hi\r\n.\r\nRSET\r\nQUIT\r\n")
        self.assertEqual([s.reply()[0] for _ in range(3)], [250, 250, 221])
        s.close()
        self.assertEqual(self.messages()[0]["rcpt_to"], ["c@d", "e@f"])

    def test_fault_down_and_ok(self):
        self.assertEqual(self.fake.ok("POST", "/faults", {"mode": "down"}),
                         {"mode": "down", "remaining": -1, "delay_ms": 0})
        self.assertFalse(self.fake.ok("GET", "/stats")["listening"])
        with self.assertRaises(ConnectionRefusedError):
            smtplib.SMTP("127.0.0.1", self.port, timeout=5)
        with self.assertRaises(ConnectionRefusedError):
            connect(self.port, 5)
        self.fake.ok("POST", "/faults", {"mode": "ok"})
        self.assertTrue(self.fake.ok("GET", "/stats")["listening"])
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as c:  # the same port again
            c.sendmail("a@b", ["c@d"], msg_text("back\r\n"))
        self.assertEqual(len(self.messages()), 1)

    def test_down_keeps_open_sessions(self):
        c = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
        self.fake.ok("POST", "/faults", {"mode": "down"})
        c.sendmail("a@b", ["c@d"], msg_text("during down\r\n"))
        c.quit()
        self.fake.ok("POST", "/faults", {"mode": "tempfail", "times": 1})  # leaving "down" reopens too
        self.assertTrue(self.fake.ok("GET", "/stats")["listening"])
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as c:
            with self.assertRaises(smtplib.SMTPDataError):
                c.sendmail("a@b", ["c@d"], msg_text("x\r\n"))
        self.assertEqual(len(self.messages()), 1)

    def test_fault_tempfail_times(self):
        self.fake.ok("POST", "/faults", {"mode": "tempfail", "times": 2})
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as c:
            for _ in range(2):
                with self.assertRaises(smtplib.SMTPDataError) as e:
                    c.sendmail("a@b", ["c@d"], msg_text("t\r\n"))
                self.assertEqual(e.exception.smtp_code, 451)
            self.assertEqual(self.fake.ok("GET", "/faults")["mode"], "ok")
            self.assertEqual(c.sendmail("a@b", ["c@d"], msg_text("third\r\n")), {})
        (m,) = self.messages()
        self.assertEqual(m["data"], msg_text("third\r\n"))
        self.assertEqual(self.fake.ok("GET", "/stats")["messages_tempfailed"] >= 2, True)

    def test_fault_permfail(self):
        self.fake.ok("POST", "/faults", {"mode": "permfail"})
        for _ in range(2):
            with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as c:
                with self.assertRaises(smtplib.SMTPDataError) as e:
                    c.sendmail("a@b", ["c@d"], msg_text("p\r\n"))
                self.assertEqual(e.exception.smtp_code, 554)
        self.assertEqual(self.fake.ok("GET", "/faults"), {"mode": "permfail", "remaining": -1, "delay_ms": 0})
        self.assertEqual(self.messages(), [])

    def test_fault_drop_after_data(self):
        self.fake.ok("POST", "/faults", {"mode": "drop_after_data", "times": 1})
        before = self.fake.ok("GET", "/stats")["messages_dropped"]
        c = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
        with self.assertRaises(smtplib.SMTPServerDisconnected):
            c.sendmail("a@b", ["c@d"], msg_text("d\r\n"))
        c.close()
        self.assertEqual(self.messages(), [])
        self.assertEqual(self.fake.ok("GET", "/stats")["messages_dropped"], before + 1)
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as c:
            c.sendmail("a@b", ["c@d"], msg_text("d\r\n"))
        self.assertEqual(len(self.messages()), 1)

    def test_fault_slow(self):
        self.fake.ok("POST", "/faults", {"mode": "slow", "delay_ms": 300, "times": 2})
        t = time.monotonic()
        s = SmtpRaw(self.port)
        self.assertEqual(s.reply()[0], 220)
        self.assertGreaterEqual(time.monotonic() - t, 0.3)
        s.sock.settimeout(0.1)  # the second reply is delayed past this deadline
        s.sock.sendall(b"NOOP\r\n")
        with self.assertRaises(socket.timeout):
            s.f.readline()
        s.close()
        self.assertEqual(self.fake.ok("GET", "/faults"), {"mode": "ok", "remaining": -1, "delay_ms": 0})
        self.fake.ok("POST", "/faults", {"mode": "slow", "delay_ms": 200})
        with self.assertRaises((socket.timeout, smtplib.SMTPServerDisconnected)):
            smtplib.SMTP("127.0.0.1", self.port, timeout=0.05)

    def test_fault_validation(self):
        bad = [{"mode": "broken"}, {"mode": "slow"}, {"mode": "tempfail", "delay_ms": 5}, {"mode": "down", "times": 1},
               {"mode": "tempfail", "times": 0}, {"mode": "tempfail", "times": "1"}, {"mode": "ok", "x": 1}, []]
        for spec in bad:
            status, obj = self.fake.ctl("POST", "/faults", spec)
            self.assertEqual(status, 400, spec)
            self.assertIn("error", obj)
        self.assertEqual(self.fake.ctl("GET", "/nothing")[0], 404)
        self.assertEqual(self.fake.ctl("PUT", "/messages")[0], 405)

    def test_stats(self):
        before = self.fake.ok("GET", "/stats")
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as c:
            c.sendmail("a@b", ["c@d"], msg_text("s\r\n"))
            mid = self.fake.ok("GET", "/stats")
            self.assertEqual(mid["open_connections"], before["open_connections"] + 1)
        after = self.fake.ok("GET", "/stats")
        self.assertEqual(after["connections_accepted"], before["connections_accepted"] + 1)
        self.assertEqual(after["messages_accepted"], before["messages_accepted"] + 1)
        self.assertEqual((after["listening"], after["fault"]), (True, "ok"))
        for k in ("messages_tempfailed", "messages_permfailed", "messages_dropped", "auth_successes",
                  "auth_failures", "starttls_upgrades", "commands"):
            self.assertIn(k, after)
        self.assertEqual(self.fake.ok("GET", "/messages")["count"], 1)


class SmtpAuthTlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fake = Fake(SMTP, "--auth", "user:s3cret", "--tls-cert", CERT, "--tls-key", KEY)

    @classmethod
    def tearDownClass(cls):
        rc, out, err = cls.fake.stop()
        assert rc == 0 and out == b"" and err == b"", (rc, out, err)

    def setUp(self):
        self.fake.ok("DELETE", "/messages")
        self.port = self.fake.port

    def smtp(self):
        return smtplib.SMTP("localhost", self.port, timeout=10)

    def test_capabilities_and_auth_required(self):
        with self.smtp() as c:
            c.ehlo()
            self.assertEqual(c.esmtp_features["auth"].split(), ["PLAIN", "LOGIN"])
            self.assertIn("starttls", c.esmtp_features)
            self.assertEqual(c.mail("a@b")[0], 530)
            c.starttls(context=client_ctx())
            c.ehlo()
            self.assertNotIn("starttls", c.esmtp_features)
            self.assertEqual(c.docmd("STARTTLS")[0], 503)
            self.assertEqual(c.mail("a@b")[0], 530)

    def test_wrong_credentials(self):
        before = self.fake.ok("GET", "/stats")["auth_failures"]
        with self.smtp() as c:
            c.starttls(context=client_ctx())
            with self.assertRaises(smtplib.SMTPAuthenticationError) as e:
                c.login("user", "wrong")
            self.assertEqual(e.exception.smtp_code, 535)
            c.user, c.password = "nobody", "s3cret"
            with self.assertRaises(smtplib.SMTPAuthenticationError) as e:
                c.auth("LOGIN", c.auth_login, initial_response_ok=False)
            self.assertEqual(e.exception.smtp_code, 535)
            self.assertEqual(c.mail("a@b")[0], 530)
            self.assertEqual(c.docmd("AUTH", "PLAIN !!!")[0], 501)
            self.assertEqual(c.docmd("AUTH", "CRAM-MD5")[0], 504)
            self.assertEqual(c.docmd("AUTH", "PLAIN")[0], 334)
            self.assertEqual(c.docmd("*")[0], 501)
        # smtplib's login() tries PLAIN, then LOGIN: two failures, plus the explicit LOGIN.
        self.assertEqual(self.fake.ok("GET", "/stats")["auth_failures"], before + 3)

    def test_starttls_plain_auth_send(self):
        with self.smtp() as c:
            c.starttls(context=client_ctx())
            self.assertEqual(c.login("user", "s3cret")[0], 235)
            self.assertEqual(c.docmd("AUTH", "PLAIN")[0], 503)  # already authenticated
            c.sendmail("a@example.com", ["b@example.com"], msg_text("over tls\r\n"))
        (m,) = self.fake.ok("GET", "/messages")["messages"]
        self.assertEqual((m["tls"], m["auth_user"], m["data"]), (True, "user", msg_text("over tls\r\n")))

    def test_auth_variants(self):
        for mech, initial in (("LOGIN", False), ("LOGIN", True), ("PLAIN", False), ("PLAIN", True)):
            with self.smtp() as c:
                c.starttls(context=client_ctx())
                c.ehlo()
                c.user, c.password = "user", "s3cret"
                obj = c.auth_login if mech == "LOGIN" else c.auth_plain
                self.assertEqual(c.auth(mech, obj, initial_response_ok=initial)[0], 235, (mech, initial))
                c.sendmail("a@b", ["c@d"], msg_text(f"{mech} {initial}\r\n"))
        msgs = self.fake.ok("GET", "/messages")["messages"]
        self.assertEqual([m["auth_user"] for m in msgs], ["user"] * 4)

    def test_auth_without_tls_and_reset_by_starttls(self):
        # AUTH is offered before TLS too (the fake does not insist on TLS); STARTTLS forgets it (RFC 3207 §4.2).
        with self.smtp() as c:
            c.ehlo()
            c.login("user", "s3cret")
            c.sendmail("a@b", ["c@d"], msg_text("plain\r\n"))
            c.starttls(context=client_ctx())
            self.assertEqual(c.docmd("MAIL", "FROM:<a@b>")[0], 503)  # EHLO needed again
            c.ehlo()
            self.assertEqual(c.mail("a@b")[0], 530)  # and AUTH
        (m,) = self.fake.ok("GET", "/messages")["messages"]
        self.assertEqual((m["tls"], m["auth_user"]), (False, "user"))
        self.assertGreaterEqual(self.fake.ok("GET", "/stats")["starttls_upgrades"], 1)

    def test_auth_plain_authzid(self):
        with self.smtp() as c:
            c.starttls(context=client_ctx())
            c.ehlo()
            bad = base64.b64encode(b"other\0user\0s3cret").decode()
            self.assertEqual(c.docmd("AUTH", "PLAIN " + bad)[0], 535)
            good = base64.b64encode(b"user\0user\0s3cret").decode()
            self.assertEqual(c.docmd("AUTH", "PLAIN " + good)[0], 235)

    def test_pipelined_starttls_injection_is_dropped(self):
        s = SmtpRaw(self.port)
        s.reply()
        s.cmd("EHLO c")
        s.sock.sendall(b"STARTTLS\r\nNOOP\r\n")
        self.assertEqual(s.reply()[0], 220)
        self.assertEqual(s.f.read(), b"")  # the fake hung up instead of running the plaintext NOOP
        s.close()


class SmtpImplicitTlsTest(unittest.TestCase):
    def test_implicit_tls(self):
        fake = Fake(SMTP, "--implicit-tls", "--tls-cert", CERT, "--tls-key", KEY, "--auth", "u:p")
        try:
            with smtplib.SMTP_SSL("127.0.0.1", fake.port, timeout=10, context=client_ctx()) as c:
                c.ehlo()
                self.assertNotIn("starttls", c.esmtp_features)
                c.login("u", "p")
                c.sendmail("a@b", ["c@d"], msg_text("smtps\r\n"))
            (m,) = fake.ok("GET", "/messages")["messages"]
            self.assertEqual((m["tls"], m["auth_user"]), (True, "u"))
        finally:
            rc, out, err = fake.stop()
        self.assertEqual((rc, out), (0, b""))
        self.assertEqual(err, b"")

    def test_signals_with_open_session(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            fake = Fake(SMTP)
            s = SmtpRaw(fake.port)
            s.reply()
            t = time.monotonic()
            rc, out, err = fake.stop(sig)
            self.assertLess(time.monotonic() - t, 5)
            self.assertEqual((rc, out, err), (0, b"", b""))
            self.assertEqual(s.f.read(), b"")
            s.close()


if __name__ == "__main__":
    unittest.main()
