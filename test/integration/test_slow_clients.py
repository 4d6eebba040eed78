#!/usr/bin/env python3
"""Slow and idle clients must not hurt anybody else (DESIGN.md invariant 3: bounded everything).

1. 500 idle keep-alive connections and 50 clients trickling a request body (1 byte every 200 ms) stay open while
   one more client makes 200 GET /health/live and 200 GET /v1/_diag/echo in sequence: every answer is right and
   the p99 latency stays low. The idle timeout is long here, so that nothing is cut during the measurement.
2. With CRMD_HTTP_IDLE_TIMEOUT_MS=2000 the trickling clients and idle connections are closed by the server once
   the timeout has passed, and not before.
3. With CRMD_MAX_CONNECTIONS=20 the 21st connection is closed at once and counted.
"""
import asyncio
import math
import re
import resource
import time

from harness import TOKEN, Crmd, Database, auth, build_request, check, fail, log, metric, read_response, run, shared_database

IDLE = 500
SLOW = 50
SAMPLES = 200
TRICKLE_INTERVAL = 0.2
# A sequential request to /health/live or a one-row query takes about a millisecond here (a few under ASan);
# 100 ms for the 99th percentile leaves room for a shared 2-core machine while still catching a loop that is
# blocked or starved by the 550 other connections.
P99_BOUND = 0.100



def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    check(soft == resource.RLIM_INFINITY or soft >= need, "RLIMIT_NOFILE is %d, the test needs %d" % (soft, need))


def wait_for_metric(c, name, predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = metric(c, name)
        if value is not None and predicate(value):
            return value
        time.sleep(0.05)
    fail("%s: %s is %r" % (what, name, value))


def percentile(samples, p):
    """Nearest-rank percentile."""
    s = sorted(samples)
    return s[max(0, math.ceil(p / 100.0 * len(s)) - 1)]


class IdleConn:
    """A keep-alive connection that makes one request and then stays silent."""

    async def open(self, c, sem):
        async with sem:
            self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(c.host, c.port), 30)
            self.writer.write(build_request(c.host, "GET", "/health/live"))
            r = await asyncio.wait_for(read_response(self.reader), 30)
            check(r.status == 200, "idle connection's request: %d" % r.status)
            self.ready_at = time.monotonic()
        self.closed_at, self.received = None, b""
        self.watch = asyncio.ensure_future(self._watch())

    async def _watch(self):
        try:
            self.received = await self.reader.read(65536)
        except (ConnectionError, OSError):
            self.received = b""
        self.closed_at = time.monotonic()

    def close(self):
        self.watch.cancel()
        self.writer.close()


class SlowBody:
    """Sends the headers of a 1000-byte POST, then one byte every TRICKLE_INTERVAL until stopped or cut off."""

    async def open(self, c, sem):
        async with sem:
            self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(c.host, c.port), 30)
        head = (
            "POST /v1/_diag/audit HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            "authorization: Bearer %s\r\ncontent-length: 1000\r\n\r\n" % (c.host, TOKEN)
        )
        self.writer.write(head.encode())
        self.started_at = time.monotonic()
        self.sent, self.closed_at, self.received = 0, None, b""
        self.stop = asyncio.Event()
        self.trickle = asyncio.ensure_future(self._trickle())
        self.watch = asyncio.ensure_future(self._watch())

    async def _trickle(self):
        try:
            while not self.stop.is_set() and self.closed_at is None:
                self.writer.write(b" ")
                await self.writer.drain()
                self.sent += 1
                try:
                    await asyncio.wait_for(self.stop.wait(), TRICKLE_INTERVAL)
                except asyncio.TimeoutError:
                    pass
        except (ConnectionError, OSError):
            pass

    async def _watch(self):
        try:
            self.received = await self.reader.read(65536)
        except (ConnectionError, OSError):
            self.received = b""
        self.closed_at = time.monotonic()

    async def close(self):
        self.stop.set()
        await self.trickle
        self.watch.cancel()
        self.writer.close()


async def measure(c):
    """200 GET /health/live, then 200 GET /v1/_diag/echo, sequentially on one keep-alive connection."""
    reader, writer = await asyncio.open_connection(c.host, c.port)
    live, echo = [], []
    try:
        for i in range(SAMPLES):
            t0 = time.perf_counter()
            writer.write(build_request(c.host, "GET", "/health/live"))
            r = await asyncio.wait_for(read_response(reader), 30)
            live.append(time.perf_counter() - t0)
            check(r.status == 200 and r.json() == {"status": "ok"}, "live #%d: %d %r" % (i, r.status, r.body))
        for i in range(SAMPLES):
            value = i * 7919 - 500000
            t0 = time.perf_counter()
            writer.write(build_request(c.host, "GET", "/v1/_diag/echo?value=%d" % value, auth()))
            r = await asyncio.wait_for(read_response(reader), 30)
            echo.append(time.perf_counter() - t0)
            check(r.status == 200 and r.json() == {"value": value}, "echo %d: %d %r" % (value, r.status, r.body))
    finally:
        writer.close()
    return live, echo


def test_latency_under_idle_and_slow_clients():
    raise_fd_limit(IDLE + SLOW + 200)
    env = {"CRMD_MAX_CONNECTIONS": str(IDLE + SLOW + 100), "CRMD_HTTP_IDLE_TIMEOUT_MS": "120000",
           "CRMD_ACCESS_LOG": "0"}
    with Crmd(shared_database(), env=env) as c:
        c.wait_ready()

        async def scenario():
            sem = asyncio.Semaphore(64)
            idle = [IdleConn() for _ in range(IDLE)]
            slow = [SlowBody() for _ in range(SLOW)]
            t0 = time.monotonic()
            await asyncio.gather(*(x.open(c, sem) for x in idle + slow))
            log("   %d idle and %d slow connections open in %.2f s" % (IDLE, SLOW, time.monotonic() - t0))
            try:
                # Let the slow clients get going first: the measurement itself may take well under a second.
                await asyncio.sleep(1.0)
                sent_before = sum(x.sent for x in slow)
                live, echo = await measure(c)
                await asyncio.sleep(0)
                # Nobody was cut off or answered meanwhile: the idle ones are still open, the slow ones are still
                # sending a body that is far from complete.
                gone = [x for x in idle if x.closed_at is not None]
                check(not gone, "%d idle connections were closed during the measurement: %r"
                      % (len(gone), gone[0].received[:100] if gone else b""))
                cut = [x for x in slow if x.closed_at is not None or x.received]
                check(not cut, "%d slow clients were answered or closed: %r" % (len(cut), cut[0].received[:200]
                                                                              if cut else b""))
                check(min(x.sent for x in slow) >= 3, "the slow clients did not trickle")
                log("   the slow clients sent %d body bytes during the measurement" % (sum(x.sent for x in slow)
                                                                                    - sent_before))
                # crmd holds every one of them (plus the measuring connection, if not yet closed, and this one).
                r = await _get(c, "/metrics", auth())
                m = re.search(r"^crmd_http_connections (\d+)$", r.body.decode(), re.M)
                check(m is not None and IDLE + SLOW + 1 <= int(m.group(1)) <= IDLE + SLOW + 2,
                      "crmd_http_connections during the measurement: %r" % (m and m.group(1)))
                return live, echo
            finally:
                for x in idle:
                    x.close()
                await asyncio.gather(*(x.close() for x in slow))

        t0 = time.monotonic()
        live, echo = asyncio.run(scenario())
        for name, samples in (("GET /health/live", live), ("GET /v1/_diag/echo", echo)):
            p50, p99, worst = percentile(samples, 50), percentile(samples, 99), max(samples)
            log("   %-20s p50 %.2f ms, p99 %.2f ms, max %.2f ms" % (name, p50 * 1e3, p99 * 1e3, worst * 1e3))
            check(p99 < P99_BOUND, "%s: p99 %.1f ms with %d idle and %d slow clients" % (name, p99 * 1e3, IDLE, SLOW))
        log("   scenario took %.2f s" % (time.monotonic() - t0))
        wait_for_metric(c, "crmd_http_connections", lambda v: v == 1, "connections after the clients left")


def test_idle_timeout_cuts_slow_and_idle_clients():
    timeout_ms = 2000
    env = {"CRMD_HTTP_IDLE_TIMEOUT_MS": str(timeout_ms)}
    with Crmd(shared_database(), env=env) as c:
        c.wait_ready()

        async def scenario():
            sem = asyncio.Semaphore(64)
            idle = [IdleConn() for _ in range(20)]
            slow = [SlowBody() for _ in range(SLOW)]
            await asyncio.gather(*(x.open(c, sem) for x in idle + slow))
            try:
                # Generous: the timeout plus scheduling delays on a shared machine; an unbounded client would
                # still be open long after this.
                deadline = time.monotonic() + timeout_ms / 1000.0 + 8
                while time.monotonic() < deadline and any(x.closed_at is None for x in idle + slow):
                    await asyncio.sleep(0.05)
                return idle, slow
            finally:
                for x in idle:
                    x.close()
                await asyncio.gather(*(x.close() for x in slow))

        idle, slow = asyncio.run(scenario())
        limit = timeout_ms / 1000.0
        # Lower bound: not before the timeout, less a little because the loop's cached clock may lag by one busy
        # iteration. Upper bound: 3 s of slack for a loaded machine, well below anything a missing timeout would
        # produce (the trickle would go on for 200 s).
        for what, conns, since in (("slow", slow, "started_at"), ("idle", idle, "ready_at")):
            open_for = [x.closed_at - getattr(x, since) for x in conns if x.closed_at is not None]
            check(len(open_for) == len(conns), "%d of %d %s clients were never closed by the server"
                  % (len(conns) - len(open_for), len(conns), what))
            log("   %s clients closed after %.2f..%.2f s" % (what, min(open_for), max(open_for)))
            check(min(open_for) >= limit - 0.25, "a %s client was closed after %.2f s, before the %.1f s timeout"
                  % (what, min(open_for), limit))
            check(max(open_for) < limit + 3.0, "a %s client was closed only after %.2f s" % (what, max(open_for)))
            for x in conns:
                # Closed without an answer, or with 408 (Request Timeout): never a response to a half-sent body.
                check(x.received == b"" or x.received.startswith(b"HTTP/1.1 408 "),
                      "a %s client received %r" % (what, x.received[:200]))
        check(max(x.sent for x in slow) < 1000, "a slow client completed its body")
        # The server serves on.
        r = asyncio.run(_get(c, "/health/live"))
        check(r.status == 200, "live after the cut-off: %d" % r.status)
        wait_for_metric(c, "crmd_http_connections", lambda v: v == 1, "connections after the cut-off")


async def _get(c, path, headers=None):
    reader, writer = await asyncio.open_connection(c.host, c.port)
    try:
        writer.write(build_request(c.host, "GET", path, headers, keep_alive=False))
        return await asyncio.wait_for(read_response(reader), 30)
    finally:
        writer.close()


def test_connection_limit():
    limit = 20
    with Crmd(shared_database(), env={"CRMD_MAX_CONNECTIONS": str(limit)}) as c:
        c.wait_ready()
        # The readiness polls' connections are closed by now; this connection is the only one.
        wait_for_metric(c, "crmd_http_connections", lambda v: v == 1, "connections before the test")
        rejected_before = metric(c, "crmd_http_connections_rejected_total")
        check(rejected_before == 0, "rejected connections before the test: %r" % rejected_before)

        async def scenario():
            conns = []
            try:
                for i in range(limit):
                    reader, writer = await asyncio.open_connection(c.host, c.port)
                    conns.append((reader, writer))
                    writer.write(build_request(c.host, "GET", "/health/live"))
                    r = await asyncio.wait_for(read_response(reader), 10)
                    check(r.status == 200, "connection %d of %d: %d" % (i + 1, limit, r.status))
                # One over the limit: accepted by the kernel, then closed by crmd without a word.
                t0 = time.monotonic()
                reader, writer = await asyncio.open_connection(c.host, c.port)
                writer.write(build_request(c.host, "GET", "/health/live"))
                try:
                    data = await asyncio.wait_for(reader.read(65536), 10)
                except (ConnectionError, OSError):
                    data = b""
                except asyncio.TimeoutError:
                    fail("connection %d was neither answered nor closed within 10 s" % (limit + 1))
                rejected_after = time.monotonic() - t0
                writer.close()
                check(data == b"", "connection %d over the limit was answered: %r" % (limit + 1, data[:200]))
                # "At once": far below the 10 s idle timeout that would otherwise close a silent connection.
                check(rejected_after < 2.0, "connection %d closed only after %.2f s" % (limit + 1, rejected_after))
                log("   connection %d closed after %.1f ms" % (limit + 1, rejected_after * 1e3))
                # The connections within the limit are unaffected.
                for i, (reader, writer) in enumerate(conns):
                    writer.write(build_request(c.host, "GET", "/health/live"))
                    r = await asyncio.wait_for(read_response(reader), 10)
                    check(r.status == 200, "connection %d after the rejection: %d" % (i + 1, r.status))
            finally:
                for _, writer in conns:
                    writer.close()

        asyncio.run(scenario())
        # Reading the counter takes a connection of its own; until crmd has seen the 20 close, it may be refused
        # too (and counted), so the expected count includes those attempts.
        refused, value = 0, None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                value = metric(c, "crmd_http_connections_rejected_total")
                break
            except (asyncio.IncompleteReadError, ConnectionError):
                refused += 1
                time.sleep(0.05)
        check(value == 1 + refused, "crmd_http_connections_rejected_total is %r, expected %d" % (value, 1 + refused))
        r = asyncio.run(_get(c, "/health/live"))
        check(r.status == 200, "live after the connections closed: %d" % r.status)


run(
    [
        test_latency_under_idle_and_slow_clients,
        test_idle_timeout_cuts_slow_and_idle_clients,
        test_connection_limit,
    ]
)
