#!/usr/bin/env python3
"""Graceful shutdown (app/app.c, lib/http.h): SIGTERM and SIGINT stop accepting, let in-flight requests finish
within CRMD_SHUTDOWN_GRACE_MS, answer 503 to whatever is left after it, close every connection and exit 0 with a
clean log: no sanitizer report, no leaked handle. A second signal forces the exit.
"""
import asyncio
import signal
import socket
import threading
import time

from harness import Crmd, Database, auth, build_request, check, fail, log, metric, read_response, request, run, shared_database



class InFlight:
    """One request on its own thread, so that the test can signal crmd while it is under way."""

    def __init__(self, c, path, headers=None):
        self.response, self.error, self.done_at = None, None, None
        self.thread = threading.Thread(target=self._run, args=(c, path, headers), daemon=True)
        self.thread.start()

    def _run(self, c, path, headers):
        try:
            self.response = request(c, "GET", path, headers, timeout=60)
        except Exception as e:  # reported by result()
            self.error = e
        self.done_at = time.monotonic()

    def result(self, timeout=60):
        self.thread.join(timeout)
        check(not self.thread.is_alive(), "the in-flight request did not finish")
        if self.error is not None:
            fail("the in-flight request failed: %r" % self.error)
        return self.response


def wait_until(predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    fail("timed out waiting for %s" % what)


def start_sleep(c, ms):
    """Starts GET /v1/_diag/sleep?ms=<ms> and returns once PostgreSQL is running it."""
    f = InFlight(c, "/v1/_diag/sleep?ms=%d" % ms, auth())
    wait_until(lambda: (metric(c, "crmd_db_in_flight") or 0) >= 1, "the sleep to reach PostgreSQL")
    return f


def wait_exit(c, timeout):
    """Waits for crmd to exit on its own (Crmd.stop would signal it again, which forces exit code 1)."""
    try:
        code = c.wait_exit(timeout=timeout)
    except Exception:
        c.proc.kill()
        c.proc.wait()
        fail("crmd did not exit within %.1f s:\n%s" % (timeout, "\n".join(c.stderr_lines[-20:])))
    c.assert_clean()
    return code


def check_refuses_new_connections(c, what):
    """After the shutdown began, a new connection is refused, or accepted by a lingering backlog and closed
    without an answer."""
    try:
        s = socket.create_connection((c.host, c.port), timeout=5)
    except ConnectionRefusedError:
        return
    try:
        s.settimeout(5)
        s.sendall(build_request(c.host, "GET", "/health/live", keep_alive=False))
        data = s.recv(65536)
    except (ConnectionError, OSError):
        data = b""
    finally:
        s.close()
    check(data == b"", "%s: a new connection was answered: %r" % (what, data[:200]))


def check_shutdown_log(c, reason):
    begin = c.events("shutdown.begin")
    check(len(begin) == 1 and begin[0].get("reason") == reason, "shutdown.begin events %r" % begin)
    complete = c.events("shutdown.complete")
    check(len(complete) == 1 and complete[0].get("exit_code") == 0, "shutdown.complete events %r" % complete)
    order = [e.get("event") for e in (c.events("shutdown.begin") + c.events("shutdown.drained")
                                      + c.events("shutdown.http_closed") + c.events("shutdown.complete"))]
    check(order == ["shutdown.begin", "shutdown.drained", "shutdown.http_closed", "shutdown.complete"],
          "shutdown steps %r" % order)


def in_flight_finishes(sig, reason):
    c = Crmd(shared_database())
    try:
        c.wait_ready()
        f = start_sleep(c, 1000)
        t_sig = time.monotonic()
        c.proc.send_signal(sig)
        wait_until(lambda: c.events("shutdown.begin"), "shutdown.begin in the log")
        # The log line is written just before the listener is closed; give the loop a moment to get there.
        time.sleep(0.1)
        check_refuses_new_connections(c, reason)
        r = f.result()
        check(r.status == 200 and r.json() == {"slept": True}, "in-flight sleep: %d %r" % (r.status, r.body))
        answered = f.done_at - t_sig
        # The sleep had at most 1 s left when the signal came.
        check(answered < 1.5, "the in-flight request was answered %.2f s after %s" % (answered, reason))
        code = wait_exit(c, 15)
        took = time.monotonic() - t_sig
        check(code == 0, "crmd exited with %s after %s" % (code, reason))
        # At most 1 s of sleep, then h2o's 1 s floor between the shutdown request and disposing of its context;
        # 3 s of slack for a shared machine.
        check(took < 5.0, "crmd took %.2f s to exit after %s" % (took, reason))
        log("   %s: request answered after %.2f s, exit after %.2f s" % (reason, answered, took))
        check_shutdown_log(c, reason)
        drained = c.events("shutdown.drained")[0]
        check(drained.get("in_flight") == 0, "drained with requests in flight: %r" % drained)
    finally:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()


def test_sigterm_lets_in_flight_requests_finish():
    in_flight_finishes(signal.SIGTERM, "SIGTERM")


def test_sigint_behaves_like_sigterm():
    in_flight_finishes(signal.SIGINT, "SIGINT")


def test_grace_period_expires():
    c = Crmd(shared_database(), env={"CRMD_SHUTDOWN_GRACE_MS": "300"})
    try:
        c.wait_ready()
        f = start_sleep(c, 3000)
        t_sig = time.monotonic()
        c.proc.send_signal(signal.SIGTERM)
        r = f.result()
        answered = f.done_at - t_sig
        check(r.status == 503, "past the grace period: %d %r" % (r.status, r.body))
        check(r.headers.get("content-type") == "application/problem+json", "503 content-type %r"
              % r.headers.get("content-type"))
        doc = r.json()
        check(doc.get("type") == "urn:crmd:problem:service-unavailable" and doc.get("status") == 503, "503 %r" % doc)
        check(doc.get("instance") == r.headers.get("x-request-id"), "503 instance %r" % doc.get("instance"))
        retry = r.headers.get("retry-after", "")
        check(retry.isdigit() and int(retry) >= 1, "503 retry-after %r" % retry)
        check(int(r.headers.get("content-length", -1)) == len(r.body), "503 content-length")
        # Answered at the end of the 300 ms grace, long before the 3 s sleep would end.
        check(0.25 <= answered < 2.0, "the 503 came %.2f s after SIGTERM" % answered)
        code = wait_exit(c, 15)
        took = time.monotonic() - t_sig
        check(code == 0, "crmd exited with %s" % code)
        check(took < 5.0, "crmd took %.2f s to exit" % took)
        log("   503 after %.2f s, exit after %.2f s" % (answered, took))
        check_shutdown_log(c, "SIGTERM")
    finally:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()


def test_idle_connections_do_not_delay_exit():
    """An idle keep-alive connection, one that sent half a header block and one that sent half a body are all
    closed by the shutdown; none holds the exit up."""
    c = Crmd(shared_database())
    try:
        c.wait_ready()

        async def scenario():
            idle_r, idle_w = await asyncio.open_connection(c.host, c.port)
            idle_w.write(build_request(c.host, "GET", "/health/live"))
            r = await asyncio.wait_for(read_response(idle_r), 10)
            check(r.status == 200, "idle connection's request: %d" % r.status)
            half_head_r, half_head_w = await asyncio.open_connection(c.host, c.port)
            half_head_w.write(b"GET /health/live HTTP/1.1\r\nhost: x\r\n")
            half_body_r, half_body_w = await asyncio.open_connection(c.host, c.port)
            half_body_w.write(b"POST /v1/_diag/audit HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                              b"content-length: 100\r\n\r\n{\"tenant_id\"")
            await idle_w.drain()
            await half_head_w.drain()
            await half_body_w.drain()
            # Let crmd read what was sent before the signal arrives.
            await asyncio.sleep(0.2)
            t_sig = time.monotonic()
            c.proc.send_signal(signal.SIGTERM)
            closed = {}
            for name, reader in (("idle", idle_r), ("half header", half_head_r), ("half body", half_body_r)):
                try:
                    data = await asyncio.wait_for(reader.read(65536), 10)
                except (ConnectionError, OSError):
                    data = b""
                except asyncio.TimeoutError:
                    fail("the %s connection was still open 10 s after SIGTERM" % name)
                # No answer to the idle connection; the half-sent requests may get an error, never a 2xx.
                check(data == b"" or (name != "idle" and not data.startswith(b"HTTP/1.1 2")),
                      "the %s connection received %r" % (name, data[:200]))
                closed[name] = time.monotonic() - t_sig
            for w in (idle_w, half_head_w, half_body_w):
                w.close()
            return t_sig, closed

        t_sig, closed = asyncio.run(scenario())
        code = wait_exit(c, 15)
        took = time.monotonic() - t_sig
        check(code == 0, "crmd exited with %s" % code)
        # h2o needs about 1 s between the shutdown request and disposing of its context (lib/http.h); 3 s leaves
        # room for a loaded machine and is still far below the 10 s idle timeout that would otherwise end them.
        check(took < 3.0, "crmd took %.2f s to exit with idle connections open" % took)
        log("   connections closed after %s; exit after %.2f s"
            % (", ".join("%s %.2f s" % kv for kv in closed.items()), took))
        check_shutdown_log(c, "SIGTERM")
    finally:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()


def test_second_signal_forces_exit():
    """The operator who signals twice does not wait for the grace period: exit code 1 at once."""
    c = Crmd(shared_database(), env={"CRMD_SHUTDOWN_GRACE_MS": "30000"})
    try:
        c.wait_ready()
        f = start_sleep(c, 5000)
        c.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: c.events("shutdown.begin"), "shutdown.begin in the log")
        t_sig = time.monotonic()
        c.proc.send_signal(signal.SIGTERM)
        code = wait_exit(c, 10)
        took = time.monotonic() - t_sig
        check(code == 1, "forced exit code %s" % code)
        check(took < 2.0, "the forced exit took %.2f s" % took)
        check(len(c.events("shutdown.forced")) == 1, "no shutdown.forced in the log")
        # The request in flight loses its connection.
        f.thread.join(10)
        check(f.error is not None or (f.response is not None and f.response.status != 200),
              "the in-flight request still succeeded: %r" % (f.response and f.response.body))
    finally:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()


run(
    [
        test_sigterm_lets_in_flight_requests_finish,
        test_sigint_behaves_like_sigterm,
        test_grace_period_expires,
        test_idle_connections_do_not_delay_exit,
        test_second_signal_forces_exit,
    ]
)
