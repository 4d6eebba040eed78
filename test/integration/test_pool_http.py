"""The database pool through the real binary: concurrency, shedding, deadlines, isolation of units, RLS.

Issue #2's integration list: 2,000 concurrent pool requests complete with correct results; queue overflow answers
503 immediately; a query slower than its deadline answers 504 and the pool keeps serving; a pipelined unit of work
with one failing statement rolls back only itself.
"""
import asyncio
import time
import uuid

from harness import Crmd, Database, arequest, auth, check, metric, request, run


def test_2000_concurrent_requests_all_correct():
    with Database() as db, Crmd(db, {"CRMD_DB_POOL_SIZE": "4", "CRMD_DB_QUEUE_MAX": "4096",
                                     "CRMD_ACCESS_LOG": "0"}) as crmd:
        crmd.wait_ready()

        async def one(i, sem):
            async with sem:
                r = await arequest(crmd, "GET", "/v1/_diag/echo?value=%d" % (i * 7919), auth())
                return i, r

        async def main():
            # 2,000 requests in flight at once on 2,000 connections would exhaust the client's descriptors on
            # some machines; 500 connections with 2,000 requests queued behind them still keep the pool's queue
            # and every connection's pipeline full.
            sem = asyncio.Semaphore(500)
            return await asyncio.gather(*(one(i, sem) for i in range(2000)))

        t0 = time.monotonic()
        results = asyncio.run(main())
        elapsed = time.monotonic() - t0
        for i, r in results:
            check(r.status == 200, "request %d answered %d: %r" % (i, r.status, r.body[:200]))
            check(r.json() == {"value": i * 7919}, "request %d got %r" % (i, r.body))
        print("2000 requests in %.2fs" % elapsed)
        check(metric(crmd, "crmd_db_units_total", {"outcome": "sql_error"}) == 0, "no SQL errors expected")


def test_queue_overflow_answers_503_at_once():
    # One connection, one unit in flight, two waiting: the fourth concurrent request cannot even queue.
    env = {"CRMD_DB_POOL_SIZE": "1", "CRMD_DB_PIPELINE_DEPTH": "1", "CRMD_DB_QUEUE_MAX": "2",
           "CRMD_DB_QUEUE_TIMEOUT_MS": "10000", "CRMD_DB_STATEMENT_TIMEOUT_MS": "10000"}
    with Database() as db, Crmd(db, env) as crmd:
        crmd.wait_ready()

        async def timed(path):
            t0 = time.monotonic()
            r = await arequest(crmd, "GET", path, auth())
            return r, time.monotonic() - t0

        async def main():
            slow = [asyncio.create_task(timed("/v1/_diag/sleep?ms=1500")) for _ in range(3)]
            await asyncio.sleep(0.3)  # let the three occupy the connection and the queue
            shed = await asyncio.gather(*(timed("/v1/_diag/echo?value=1") for _ in range(5)))
            return await asyncio.gather(*slow), shed

        slow, shed = asyncio.run(main())
        for r, _ in slow:
            check(r.status == 200, "the admitted requests must complete: %d %r" % (r.status, r.body))
        for r, took in shed:
            check(r.status == 503, "overflow must answer 503, got %d" % r.status)
            check(r.headers.get("content-type") == "application/problem+json", "problem+json expected")
            check(int(r.headers.get("retry-after", "0")) >= 1, "Retry-After expected")
            # "Immediately": not after any wait for a connection. 0.5 s is far above a shed request's cost and far
            # below the 1.5 s it would take if it had queued behind the sleeps.
            check(took < 0.5, "a shed request must not wait (took %.3fs)" % took)
        check(metric(crmd, "crmd_db_rejections_total", {"reason": "queue_full"}) >= 5, "rejections counted")


def test_slow_query_answers_504_and_pool_keeps_serving():
    env = {"CRMD_DB_POOL_SIZE": "1", "CRMD_DB_STATEMENT_TIMEOUT_MS": "500", "CRMD_REQUEST_TIMEOUT_MS": "10000"}
    with Database() as db, Crmd(db, env) as crmd:
        crmd.wait_ready()
        t0 = time.monotonic()
        r = request(crmd, "GET", "/v1/_diag/sleep?ms=3000", auth())
        took = time.monotonic() - t0
        check(r.status == 504, "a query past its deadline answers 504, got %d %r" % (r.status, r.body))
        check(r.json()["type"] == "urn:crmd:problem:timeout", "timeout problem type")
        check(0.4 < took < 2.0, "answered near the 500 ms deadline, took %.3fs" % took)
        # The same (only) connection serves the next request: the server cancelled the statement itself.
        for i in range(20):
            r = request(crmd, "GET", "/v1/_diag/echo?value=%d" % i, auth())
            check(r.status == 200 and r.json()["value"] == i, "pool keeps serving after a deadline")
        check(metric(crmd, "crmd_db_deadline_expiries_total") == 1, "one deadline expiry counted")
        check(metric(crmd, "crmd_db_connection_failures_total") == 0, "the connection was not lost")


def test_failing_unit_rolls_back_only_itself():
    # One connection: every unit below is pipelined on it, each with its own Sync.
    with Database() as db, Crmd(db, {"CRMD_DB_POOL_SIZE": "1"}) as crmd:
        crmd.wait_ready()
        tenant_ok, tenant_bad = str(uuid.uuid4()), str(uuid.uuid4())

        async def main():
            reqs = []
            for round_ in range(20):
                reqs.append(arequest(crmd, "POST", "/v1/_diag/audit", auth(),
                                     {"tenant_id": tenant_ok, "actions": ["test.ok", "test.ok_again"]}))
                # The third action violates the CHECK on audit_log.action: the whole unit must roll back,
                # including the tenant row and the two valid actions before it.
                reqs.append(arequest(crmd, "POST", "/v1/_diag/audit", auth(),
                                     {"tenant_id": tenant_bad, "actions": ["test.a", "test.b", "Not Valid!"]}))
            return await asyncio.gather(*reqs)

        results = asyncio.run(main())
        for i, r in enumerate(results):
            if i % 2 == 0:
                check(r.status == 201 and r.json() == {"inserted": 2}, "good unit %d: %d %r" % (i, r.status, r.body))
            else:
                check(r.status == 422, "bad unit %d: %d %r" % (i, r.status, r.body))
                check(r.json()["errors"][0]["field"] == "actions[2]", "the failing action is named")
        good = request(crmd, "GET", "/v1/_diag/audit?tenant_id=" + tenant_ok, auth()).json()["count"]
        bad = request(crmd, "GET", "/v1/_diag/audit?tenant_id=" + tenant_bad, auth()).json()["count"]
        check(good == 40, "every good unit committed: %d" % good)
        check(bad == 0, "no bad unit left anything: %d" % bad)
        check(db.psql("SELECT count(*) FROM crm.tenants WHERE tenant_id = '%s'" % tenant_bad) == "0",
              "the failed unit's tenant row was rolled back too")


def test_rls_confines_unfiltered_queries():
    # GET /v1/_diag/audit counts with a query that has no tenant filter: only row-level security confines it.
    with Database() as db, Crmd(db) as crmd:
        crmd.wait_ready()
        a, b = str(uuid.uuid4()), str(uuid.uuid4())
        check(request(crmd, "POST", "/v1/_diag/audit", auth(), {"tenant_id": a, "actions": ["x.y"] * 3}).status == 201,
              "insert a")
        check(request(crmd, "POST", "/v1/_diag/audit", auth(), {"tenant_id": b, "actions": ["x.y"] * 5}).status == 201,
              "insert b")
        check(request(crmd, "GET", "/v1/_diag/audit?tenant_id=" + a, auth()).json()["count"] == 3, "a sees 3")
        check(request(crmd, "GET", "/v1/_diag/audit?tenant_id=" + b, auth()).json()["count"] == 5, "b sees 5")
        check(request(crmd, "GET", "/v1/_diag/audit?tenant_id=" + str(uuid.uuid4()), auth()).json()["count"] == 0,
              "a third tenant sees nothing")


if __name__ == "__main__":
    run([
        test_2000_concurrent_requests_all_correct,
        test_queue_overflow_answers_503_at_once,
        test_slow_query_answers_504_and_pool_keeps_serving,
        test_failing_unit_rolls_back_only_itself,
        test_rls_confines_unfiltered_queries,
    ])
