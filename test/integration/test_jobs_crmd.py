"""The job queue through the real binary (issue #3): retries with growing backoff until success; a job that always
fails ends dead, is listed at GET /v1/ops/jobs?state=dead and can be replayed; kill -9 of a process holding leased
jobs → a second process finishes them after the lease expires; two processes draining 5,000 jobs run each exactly
once (counted in the database).

Jobs are of the test-only kind diag.record (app/ops/diag.c), whose payload scripts failures and sleeps and whose
successful run writes one audit_log row naming the job, the attempt and the runner: the rows are the count."""
import json
import time
import uuid

from harness import SUPERUSER, Crmd, Database, auth, check, log, request, run, wait_for

FAST = {"CRMD_JOBS_POLL_MS": "50", "CRMD_JOBS_BACKOFF_BASE_MS": "200", "CRMD_JOBS_BACKOFF_MAX_MS": "2000"}


def enqueue(crmd, tenant, payload=None, count=1, max_attempts=0):
    body = {"tenant_id": tenant, "count": count, "payload": payload or {}, "max_attempts": max_attempts}
    r = request(crmd, "POST", "/v1/_diag/jobs", dict(auth(), **{"content-type": "application/json"}),
                json.dumps(body))
    check(r.status == 201, "enqueue: %d %r" % (r.status, r.body))
    return r.json()["ids"]


def job(db, job_id):
    row = db.psql("SELECT state || ',' || attempts || ',' || coalesce(last_error, '') FROM crm.jobs WHERE job_id = %d"
                  % job_id, user=SUPERUSER)
    state, attempts, error = row.split(",", 2)
    return state, int(attempts), error


def runs(db, job_id):
    """The diag.job_run audit rows of a job: [(attempt, owner)]."""
    out = db.psql("SELECT string_agg((metadata->>'attempt') || '|' || (metadata->>'owner'), ';') FROM crm.audit_log "
                  "WHERE action = 'diag.job_run' AND target_id = '%d'" % job_id, user=SUPERUSER)
    return [tuple(x.split("|")) for x in out.split(";")] if out else []


def test_retried_with_backoff_then_succeeds():
    tenant = str(uuid.uuid4())
    with Database() as db, Crmd(db, env=FAST) as crmd:
        crmd.wait_ready()
        [jid] = enqueue(crmd, tenant, {"fail_times": 3})
        wait_for("the job to succeed", lambda: job(db, jid)[0] == "succeeded", timeout=30)
        state, attempts, _ = job(db, jid)
        check(attempts == 4, "succeeded on attempt %d, expected 4" % attempts)
        check(runs(db, jid) and [r[0] for r in runs(db, jid)] == ["4"], "one recorded run, attempt 4: %r"
              % runs(db, jid))
        failures = [e for e in crmd.events("job.failed") if e["job_id"] == jid]
        check([e["attempt"] for e in failures] == [1, 2, 3], "failures logged: %r" % failures)
        # Full jitter: each wait lies in [0, cap], and the cap doubles with every attempt (200, 400, 800 ms).
        for e in failures:
            cap = 200 * 2 ** (e["attempt"] - 1)
            check(0 <= e["retry_in_ms"] <= cap, "attempt %d waited %d ms, cap %d" % (e["attempt"], e["retry_in_ms"],
                                                                                     cap))
        log("   retry waits:", [e["retry_in_ms"] for e in failures])


def list_jobs(crmd, query):
    r = request(crmd, "GET", "/v1/ops/jobs" + query, auth())
    check(r.status == 200, "list %s: %d %r" % (query, r.status, r.body))
    return r.json()


def test_dead_letter_and_replay():
    tenant = str(uuid.uuid4())
    with Database() as db, Crmd(db, env=FAST) as crmd:
        crmd.wait_ready()
        [jid] = enqueue(crmd, tenant, {"always_fail": True}, max_attempts=3)
        wait_for("the job to die", lambda: job(db, jid)[0] == "dead", timeout=30)
        check(job(db, jid)[1] == 3, "dead after %d attempts" % job(db, jid)[1])
        dead = list_jobs(crmd, "?state=dead")
        mine = [j for j in dead["data"] if j["id"] == jid]
        check(len(mine) == 1, "the dead job is not listed: %r" % dead)
        j = mine[0]
        check(j["state"] == "dead" and j["attempts"] == 3 and j["max_attempts"] == 3 and j["kind"] == "diag.record"
              and j["tenant_id"] == tenant and j["last_error"] == "diag: scripted failure"
              and j["finished_at"] is not None and "payload" not in j, "dead job listed as %r" % j)

        # Operator access only; bad input named.
        check(request(crmd, "GET", "/v1/ops/jobs?state=dead").status == 401, "listing without the token")
        check(request(crmd, "POST", "/v1/ops/jobs/%d/retry" % jid).status == 401, "retry without the token")
        r = request(crmd, "GET", "/v1/ops/jobs?state=zombie", auth())
        check(r.status == 400 and r.json()["errors"][0]["field"] == "state", "bad state: %d %r" % (r.status, r.body))
        r = request(crmd, "GET", "/v1/ops/jobs?limit=500", auth())
        check(r.status == 400 and r.json()["errors"][0]["field"] == "limit", "bad limit: %d" % r.status)
        check(request(crmd, "POST", "/v1/ops/jobs/999999999/retry", auth()).status == 404, "missing job")
        check(request(crmd, "POST", "/v1/ops/jobs/abc/retry", auth()).status == 404, "non-numeric id")

        # Replay: queued again with fresh attempts, audited; it runs (and, scripted to fail, dies) again.
        r = request(crmd, "POST", "/v1/ops/jobs/%d/retry" % jid, dict(auth(), **{"user-agent": "ops-cli/1"}))
        check(r.status == 200 and r.json() == {"id": jid, "state": "queued"}, "retry: %d %r" % (r.status, r.body))
        audit = db.psql("SELECT count(*) FROM crm.audit_log WHERE action = 'job.retry' AND target_id = '%d' AND "
                        "actor_type = 'operator' AND user_agent = 'ops-cli/1' AND ip = '127.0.0.1' AND "
                        "request_id = '%s'" % (jid, r.headers["x-request-id"]), user=SUPERUSER)
        check(audit == "1", "the replay was not audited (%s)" % audit)
        wait_for("the replayed job to die again", lambda: job(db, jid) == ("dead", 3, "diag: scripted failure"),
                 timeout=30)
        # The log line of the last failure may still be on its way through crmd's log writer and our stderr reader.
        def logged_failures():
            return [e for e in crmd.events("job.failed") if e["job_id"] == jid]

        wait_for("six failures in the log", lambda: len(logged_failures()) >= 6, timeout=10)
        failures = logged_failures()
        check(len(failures) == 6, "the replay ran 3 more attempts (%d failures logged)" % len(failures))

        # A job that is not dead cannot be replayed.
        [ok] = enqueue(crmd, tenant, {})
        wait_for("the job to succeed", lambda: job(db, ok)[0] == "succeeded")
        r = request(crmd, "POST", "/v1/ops/jobs/%d/retry" % ok, auth())
        check(r.status == 409 and r.json()["type"] == "urn:crmd:problem:job-not-dead", "retry of a succeeded job: %d %r"
              % (r.status, r.body))

        # Keyset pagination over dead jobs: every one exactly once, in id order.
        more = enqueue(crmd, tenant, {"always_fail": True}, count=5, max_attempts=1)
        wait_for("five more dead jobs", lambda: all(job(db, i)[0] == "dead" for i in more))
        seen, cursor, pages = [], None, 0
        while True:
            page = list_jobs(crmd, "?state=dead&limit=2" + ("&cursor=" + cursor if cursor else ""))
            pages += 1
            check(len(page["data"]) <= 2, "page over the limit")
            seen += [j["id"] for j in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        check(seen == sorted([jid] + more), "pagination saw %r" % seen)
        check(pages == 3, "6 dead jobs in pages of 2 took %d pages" % pages)
        r = request(crmd, "GET", "/v1/ops/jobs?cursor=xyz", auth())
        check(r.status == 400, "a bad cursor: %d" % r.status)


def test_kill_9_leases_are_reclaimed():
    tenant = str(uuid.uuid4())
    env = dict(FAST, CRMD_JOBS_LEASE_MS="2000")
    with Database() as db:
        a = Crmd(db, env=env)
        try:
            a.wait_ready()
            # Each job sleeps 15 s on its first attempt only: A holds them, B (attempt 2) finishes them at once.
            ids = enqueue(crmd=a, tenant=tenant, payload={"sleep_ms": 15000, "sleep_attempts": 1}, count=20)
            owner_a = wait_for("A to lease all 20 jobs", lambda: db.psql(
                "SELECT CASE WHEN count(*) = 20 AND count(DISTINCT lease_owner) = 1 THEN max(lease_owner) END "
                "FROM crm.jobs WHERE state = 'running'", user=SUPERUSER))
            check(":%d:" % a.proc.pid in owner_a, "the lease owner %r does not name A's pid" % owner_a)
        finally:
            a.proc.kill()
            a.proc.wait()
        killed_at = time.monotonic()
        with Crmd(db, env=env) as b:
            b.wait_ready()
            wait_for("B to finish A's jobs", lambda: db.psql(
                "SELECT count(*) FROM crm.jobs WHERE state = 'succeeded'", user=SUPERUSER) == "20", timeout=30)
            took = time.monotonic() - killed_at
            log("   A's 20 jobs finished by B %.1f s after kill -9 (lease 2 s)" % took)
            check(took >= 1.5, "jobs were taken over before A's lease could have expired (%.1f s)" % took)
            for jid in ids:
                r = runs(db, jid)
                check(len(r) == 1 and r[0][0] == "2" and r[0][1] != owner_a, "job %d runs: %r" % (jid, r))
                check(job(db, jid)[:2] == ("succeeded", 2), "job %d: %r" % (jid, job(db, jid)))


def test_two_processes_run_each_job_exactly_once():
    tenant = str(uuid.uuid4())
    n = 5000
    with Database() as db:
        with Crmd(db, env=FAST) as a, Crmd(db, env=FAST) as b:
            a.wait_ready()
            b.wait_ready()
            db.psql("INSERT INTO crm.tenants (tenant_id, name) VALUES ('%s', 'two processes')" % tenant,
                    user=SUPERUSER)
            t0 = time.monotonic()
            # Enqueued as the service role, in one transaction, through the same function the outbox uses.
            db.psql("SELECT set_config('app.tenant_id', '%s', false); "
                    "SELECT count(crm.job_enqueue('diag.record', '{}', 0, 5, NULL)) FROM generate_series(1, %d)"
                    % (tenant, n), user="crmd_app")
            wait_for("%d jobs to succeed" % n, lambda: db.psql(
                "SELECT count(*) FROM crm.jobs WHERE state = 'succeeded'", user=SUPERUSER) == str(n), timeout=120)
            took = time.monotonic() - t0
        stats = db.psql("SELECT count(*) || ',' || count(DISTINCT target_id) || ',' || "
                        "count(DISTINCT metadata->>'owner') FROM crm.audit_log WHERE action = 'diag.job_run'",
                        user=SUPERUSER)
        rows, distinct, owners = (int(x) for x in stats.split(","))
        log("   %d jobs by two processes in %.1f s (%.0f jobs/s); %d runs by %d runners" % (n, took, n / took, rows,
                                                                                          owners))
        check(rows == n and distinct == n, "%d runs of %d distinct jobs for %d jobs: not exactly once" % (rows,
                                                                                                         distinct, n))
        check(owners == 2, "only %d of the two processes ran jobs" % owners)
        check(db.psql("SELECT count(*) FROM crm.jobs WHERE attempts <> 1", user=SUPERUSER) == "0",
              "a job took more than one attempt")


if __name__ == "__main__":
    run([test_retried_with_backoff_then_succeeds, test_dead_letter_and_replay, test_kill_9_leases_are_reclaimed,
         test_two_processes_run_each_job_exactly_once])
