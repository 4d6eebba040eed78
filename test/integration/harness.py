"""Integration-test harness: the real crmd binary against a real PostgreSQL (DESIGN.md §7).

test/run.sh starts one throwaway cluster and exports CRMD_TEST_PG_DIR; meson passes CRMD_BIN and
CRMD_SOURCE_ROOT. Each test gets its own database on that cluster (or its own cluster when it must stop
PostgreSQL), starts crmd with CRMD_LISTEN=127.0.0.1:0 and reads the bound address from its first line of output.

Only the Python standard library is used. HTTP is spoken over raw sockets (asyncio streams) so that tests control
exactly what goes on the wire: keep-alive, slow bodies, concurrency.
"""
import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.environ.get("CRMD_SOURCE_ROOT", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
CRMD = os.environ.get("CRMD_BIN", os.path.join(ROOT, "build", "app", "crmd"))
PG_SH = os.path.join(ROOT, "test", "tools", "pg.sh")
TOKEN = "it-" + secrets.token_hex(24)
SUPERUSER = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def fail(msg):
    raise AssertionError(msg)


def check(cond, msg):
    if not cond:
        fail(msg)


# ---- PostgreSQL ----


class Cluster:
    """A PostgreSQL cluster driven through test/tools/pg.sh."""

    def __init__(self, directory, owned=False):
        self.dir = directory
        self.host = os.path.join(directory, "run")
        self.owned = owned

    @classmethod
    def shared(cls):
        d = os.environ.get("CRMD_TEST_PG_DIR")
        if not d:
            fail("CRMD_TEST_PG_DIR is not set: run the tests through test/run.sh")
        return cls(d)

    @classmethod
    def private(cls):
        """A cluster of the test's own, for tests that stop and restart PostgreSQL."""
        d = tempfile.mkdtemp(prefix="crmd-it-pg.")
        c = cls(d, owned=True)
        env = dict(os.environ, PG_FSYNC="off", PG_SYNCHRONOUS_COMMIT="off")
        subprocess.run(["sh", PG_SH, "init", d], check=True, env=env)
        c.start()
        return c

    def start(self):
        subprocess.run(["sh", PG_SH, "start", self.dir], check=True, stdout=subprocess.DEVNULL)

    def stop(self, mode="fast"):
        subprocess.run(["sh", PG_SH, "stop", self.dir, mode], check=True)

    def psql(self, sql, db="postgres", user=None):
        args = ["sh", PG_SH, "psql", self.dir, "-d", db, "-tA", "-c", sql]
        if user:
            args += ["-U", user]
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            fail("psql failed (%s): %s" % (sql, r.stderr.strip()))
        return r.stdout.strip()

    def destroy(self):
        if self.owned:
            self.stop("immediate")
            subprocess.run(["rm", "-rf", self.dir])


class Database:
    """A fresh database on a cluster, dropped at the end."""

    def __init__(self, cluster=None, name=None):
        self.cluster = cluster or Cluster.shared()
        self.name = name or "crmd_it_%d_%s" % (os.getpid(), secrets.token_hex(3))
        self.cluster.psql('CREATE DATABASE "%s"' % self.name)

    def url(self, user="crmd_app"):
        return "postgresql:///%s?host=%s&user=%s" % (self.name, self.cluster.host, user)

    def psql(self, sql, user=None):
        return self.cluster.psql(sql, db=self.name, user=user)

    def drop(self):
        try:
            self.cluster.psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % self.name)
        except AssertionError as e:
            log("warning:", e)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.drop()


_shared_db = None


def shared_database():
    """One database for a whole test script, dropped when the script exits."""
    global _shared_db
    if _shared_db is None:
        import atexit

        _shared_db = Database()
        atexit.register(_shared_db.drop)
    return _shared_db


# ---- crmd ----


class Crmd:
    """The real binary, started with a test environment."""

    started = []  # every instance, for run()'s report of a failure

    def __init__(self, db, env=None, args=("serve",), wait=True):
        self.db = db
        # crmd sees only the configuration the test gives it: the test's own CRMD_* variables (CRMD_BIN, ...) and
        # the developer's are dropped.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CRMD_")}
        self.env.update(
            {
                "CRMD_ENV": "test",
                "CRMD_LISTEN": "127.0.0.1:0",
                "CRMD_DATABASE_URL": db.url("crmd_app"),
                "CRMD_MIGRATE_DATABASE_URL": db.url(SUPERUSER),
                "CRMD_OPERATOR_TOKEN": TOKEN,
                "CRMD_LOG_LEVEL": "info",
                "CRMD_SHUTDOWN_GRACE_MS": "5000",
            }
        )
        self.env.update(env or {})
        self.stderr_lines = []
        self.proc = subprocess.Popen(
            [CRMD] + list(args),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        Crmd.started.append(self)
        self._err_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._err_thread.start()
        self.host, self.port = None, None
        if wait:
            self._wait_listening()

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))
            if os.environ.get("CRMD_IT_VERBOSE"):
                log("crmd:", line.rstrip("\n"))

    def _wait_listening(self, timeout=60):
        deadline = time.monotonic() + timeout
        line = ""
        # The first stdout line names the bound address; readline blocks until it comes or crmd exits.
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"listening on https?://(\[[^\]]+\]|[^:]+):(\d+)", line)
            if m:
                self.host, self.port = m.group(1).strip("[]"), int(m.group(2))
                return
        code = self.proc.poll()
        fail("crmd did not start (exit %s):\n%s" % (code, "\n".join(self.stderr_lines[-30:])))

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status, _, _ = get(self, "/health/ready")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        fail("crmd never became ready:\n%s" % "\n".join(self.stderr_lines[-30:]))

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stops crmd and returns its exit code; fails on any sanitizer report."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            fail("crmd did not exit within %ss of %s" % (timeout, sig))
        self._err_thread.join(timeout=5)
        self.assert_clean()
        return code

    def wait_exit(self, timeout=60):
        code = self.proc.wait(timeout=timeout)
        self._err_thread.join(timeout=5)
        return code

    def assert_clean(self):
        text = "\n".join(self.stderr_lines)
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:", "leaked_handle", "loop_not_closed"):
            check(marker not in text, "crmd reported %r:\n%s" % (marker, text[-4000:]))

    def events(self, name):
        out = []
        for line in self.stderr_lines:
            if line.startswith("{"):
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if doc.get("event") == name:
                    out.append(doc)
        return out

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        if self.proc.poll() is None:
            code = self.stop()
            if exc_type is None:
                check(code == 0, "crmd exited with %s" % code)


# ---- HTTP ----


def auth():
    return {"authorization": "Bearer " + TOKEN}


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


async def read_response(reader, method="GET"):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = b""
    if method != "HEAD" and status not in (204, 304):
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readline()).strip(), 16)
                if size == 0:
                    await reader.readline()
                    break
                body += await reader.readexactly(size)
                await reader.readline()
        else:
            body = await reader.read()
    return Response(status, headers, body)


def build_request(host, method, path, headers=None, body=None, keep_alive=True):
    h = {"host": host, "connection": "keep-alive" if keep_alive else "close"}
    h.update(headers or {})
    if body is not None:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("content-type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        h["content-length"] = str(len(body))
    raw = "%s %s HTTP/1.1\r\n" % (method, path) + "".join("%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
    return raw.encode() + (body or b"")


async def arequest(crmd, method, path, headers=None, body=None, timeout=30):
    """One request on a new connection."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(crmd.host, crmd.port), timeout)
    try:
        writer.write(build_request(crmd.host, method, path, headers, body, keep_alive=False))
        await writer.drain()
        return await asyncio.wait_for(read_response(reader, method), timeout)
    finally:
        writer.close()


def request(crmd, method, path, headers=None, body=None, timeout=30):
    return asyncio.run(arequest(crmd, method, path, headers, body, timeout))


def get(crmd, path, headers=None):
    r = request(crmd, "GET", path, headers)
    return r.status, r.headers, r.body


def metric(crmd, name, labels=None):
    """The value of one sample from /metrics (labels: dict that must be a subset), or None."""
    r = request(crmd, "GET", "/metrics", auth())
    check(r.status == 200, "/metrics answered %d" % r.status)
    for line in r.body.decode().splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in (labels or {}).items()):
            return float(m.group(4))
    return None


def run(tests):
    """Runs the given test functions in order; exits non-zero on the first failure (meson reads the code)."""
    for t in tests:
        t0 = time.monotonic()
        log("-- %s" % t.__name__)
        try:
            t()
        except BaseException:
            # What the servers said last is usually the quickest way to the cause (SQLSTATEs are logged there);
            # crmd writes its log from a buffer, so give it a moment.
            time.sleep(0.5)
            for c in Crmd.started:
                if c.stderr_lines:
                    log("   last log lines of crmd pid %s:" % c.proc.pid)
                    for line in c.stderr_lines[-20:]:
                        log("     " + line)
            raise
        log("   ok (%.1fs)" % (time.monotonic() - t0))


# ---- fakes (test/fakes) ----


class Fake:
    """A fake upstream (fake_upstream.py) or SMTP sink (fake_smtp.py) on loopback, with its control API."""

    def __init__(self, script, *args):
        import urllib.request  # noqa: F401 (used by control)

        self.dir = tempfile.mkdtemp(prefix="crmd-fake-")
        ready = os.path.join(self.dir, "ready.json")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "test", "fakes", script), "--listen", "127.0.0.1:0",
             "--ready-file", ready] + list(args))
        deadline = time.monotonic() + 15
        while not os.path.exists(ready):
            check(self.proc.poll() is None, "%s exited before it was ready" % script)
            check(time.monotonic() < deadline, "%s did not become ready" % script)
            time.sleep(0.02)
        with open(ready) as f:
            doc = json.load(f)
        self.port, self.control_port = doc["port"], doc["control_port"]

    def control(self, method, path, body=None):
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.control_port, path), data=data, method=method,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def wait_for(what, fn, timeout=30, interval=0.05):
    """Polls fn until it returns a true value (which is returned), failing after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        check(time.monotonic() < deadline, "timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)
