"""PostgreSQL stopped under load, then restarted (issue #2).

While the database is down, requests that need it must fail fast with 503 (never hang), the database breaker must
open and /health/ready must say not ready; once PostgreSQL is back, the pool must reconnect and requests succeed
again with no action from anyone.
"""
import asyncio
import threading
import time

from harness import Cluster, Crmd, Database, arequest, auth, check, log, metric, request, run


class Load:
    """Keeps `concurrency` echo requests in flight on a background event loop and records every answer."""

    def __init__(self, crmd, concurrency=16):
        self.crmd, self.concurrency = crmd, concurrency
        self.results = []  # (started_at, duration, status)
        self._stop = False
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _worker(self, n):
        i = 0
        while not self._stop:
            t0 = time.monotonic()
            try:
                r = await arequest(self.crmd, "GET", "/v1/_diag/echo?value=%d" % (n * 100000 + i), auth(), timeout=20)
                status = r.status
                if status == 200:
                    check(r.json()["value"] == n * 100000 + i, "echo must return its own value")
            except (OSError, asyncio.TimeoutError) as e:
                status = "error: %r" % e
            self.results.append((t0, time.monotonic() - t0, status))
            i += 1
            if status != 200:
                await asyncio.sleep(0.005)

    async def _main(self):
        await asyncio.gather(*(self._worker(n) for n in range(self.concurrency)))

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop = True
        self._thread.join(timeout=60)

    def window(self, t0, t1):
        return [r for r in self.results if t0 <= r[0] < t1]


def test_database_outage_fails_fast_and_recovers():
    cluster = Cluster.private()
    try:
        with Database(cluster) as db:
            env = {
                "CRMD_DB_POOL_SIZE": "4",
                "CRMD_DB_BREAKER_OPEN_MS": "1000",
                "CRMD_DB_CONNECT_TIMEOUT_MS": "2000",
                "CRMD_DB_QUEUE_TIMEOUT_MS": "1000",
                "CRMD_ACCESS_LOG": "0",
            }
            with Crmd(db, env) as crmd:
                crmd.wait_ready()
                load = Load(crmd).start()
                time.sleep(1.0)
                before = load.window(0, time.monotonic())
                check(len(before) > 50 and all(s == 200 for _, _, s in before),
                      "healthy load first (%d requests)" % len(before))

                t_stop = time.monotonic()
                cluster.stop("fast")
                log("   PostgreSQL stopped")
                time.sleep(3.0)
                t_down_end = time.monotonic()
                # /health/ready must tell the load balancer, without asking the database.
                r = request(crmd, "GET", "/health/ready")
                check(r.status == 503, "not ready while the database is down: %d %r" % (r.status, r.body))
                check(metric(crmd, "crmd_breaker_transitions_total", {"dependency": "postgresql", "to": "open"}) >= 1,
                      "the database breaker opened")

                cluster.start()
                log("   PostgreSQL started")
                t_start = time.monotonic()
                recovered_at = None
                while time.monotonic() - t_start < 20:
                    recent = load.window(time.monotonic() - 0.5, time.monotonic())
                    if len(recent) >= 10 and all(s == 200 for _, _, s in recent):
                        recovered_at = time.monotonic()
                        break
                    time.sleep(0.1)
                load.stop()
                check(recovered_at is not None, "requests never succeeded again after PostgreSQL restarted")
                log("   recovered %.2fs after restart" % (recovered_at - t_start))

                down = load.window(t_stop + 0.2, t_down_end)
                statuses = {s for _, _, s in down}
                check(len(down) > 20, "load kept running while the database was down (%d)" % len(down))
                check(statuses <= {503, 504}, "only 503 (or 504 for units caught mid-flight) while down: %r" % statuses)
                slowest = max(d for _, d, _ in down)
                # Fail fast: nothing waits for a database that is not there. The bound is the queue timeout (1 s)
                # plus scheduling slack on a shared 2-core machine; a hang would show as the 20 s client timeout.
                check(slowest < 1.5, "requests must fail fast while the database is down (slowest %.3fs)" % slowest)
                fast = sum(1 for _, d, _ in down if d < 0.1)
                check(fast >= len(down) * 0.8, "most refusals are immediate: %d of %d under 100 ms" % (fast, len(down)))

                crmd.wait_ready(timeout=15)
                check(metric(crmd, "crmd_breaker_state", {"dependency": "postgresql"}) == 0, "breaker closed again")
                check(metric(crmd, "crmd_db_reconnects_total") >= 1, "reconnects counted")
                for i in range(10):
                    r = request(crmd, "GET", "/v1/_diag/echo?value=%d" % i, auth())
                    check(r.status == 200 and r.json()["value"] == i, "serving normally after recovery")
    finally:
        cluster.destroy()


if __name__ == "__main__":
    run([test_database_outage_fails_fast_and_recovers])
