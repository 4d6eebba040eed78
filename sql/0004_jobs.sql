-- The durable job queue (DESIGN.md §1, §3 invariants 3, 5, 9): the outbox that side effects leave through.
--
-- Application code enqueues a job with crm.job_enqueue() inside the transaction that caused it, so the job exists
-- exactly when the change does. Any number of crmd processes claim due jobs with FOR UPDATE SKIP LOCKED, hold them
-- under a lease they renew, and record the outcome; a process that dies loses its leases when they expire and
-- crm.jobs_reclaim() hands the jobs to someone else. Failures are retried with the delay the runner chose
-- (exponential backoff with full jitter, Retry-After honoured); after max_attempts a job is dead, and stays visible
-- to an operator who may replay it.
--
-- Everything the service does to this table goes through the SECURITY DEFINER functions below, which run as the
-- owner: crmd_app has no INSERT, UPDATE or DELETE privilege on it at all, so jobs change only in the ways those
-- functions allow (an enqueue in the caller's tenant, claims, outcomes under the caller's lease, an operator's
-- replay). They are the runner's doors and cross tenants by design: that crm.jobs_list and crm.jobs_retry are for
-- operators only is enforced by the application (the operator token), not here. crmd_app may read its own tenant's
-- jobs (row-level security), for example to show a tenant the state of its exports.

CREATE TABLE crm.jobs (
    job_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- NULL for system jobs (retention, maintenance) that belong to no tenant.
    tenant_id uuid REFERENCES crm.tenants (tenant_id),
    kind text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$' AND length(kind) <= 64),
    -- The bound is on the stored size, which is cheap to read on every update of the row; crm.job_enqueue() checks
    -- the size of the JSON text as well, since compression can make the stored size much smaller.
    payload jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object' AND pg_column_size(payload) <= 262144),
    state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'succeeded', 'dead')),
    run_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 10 CHECK (max_attempts BETWEEN 1 AND 1000),
    lease_owner text CHECK (length(lease_owner) BETWEEN 1 AND 200),
    lease_expires_at timestamptz,
    last_error text CHECK (length(last_error) <= 1000),
    unique_key text CHECK (length(unique_key) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    -- A claim counts the attempt, so a job is never claimed once it has used every attempt: it is dead instead.
    CHECK (attempts BETWEEN 0 AND max_attempts),
    -- A lease exists exactly while the job runs, and only finished jobs carry a finishing time.
    CHECK ((state = 'running') = (lease_owner IS NOT NULL) AND (state = 'running') = (lease_expires_at IS NOT NULL)),
    CHECK ((state IN ('succeeded', 'dead')) = (finished_at IS NOT NULL))
);

-- The queue table churns: every job is inserted, updated three times or more and deleted by retention. Vacuum it
-- much earlier than the default 20 % of dead rows, or the claim's index scan wades through dead entries.
ALTER TABLE crm.jobs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);

-- Due work in claim order. Partial: only queued rows, so the index stays as small as the backlog.
CREATE INDEX jobs_ready ON crm.jobs (run_at, job_id) WHERE state = 'queued';
-- Expired leases, for crm.jobs_reclaim().
CREATE INDEX jobs_leases ON crm.jobs (lease_expires_at) WHERE state = 'running';
-- The operator's listing by state in id order (keyset pagination), and retention's walk over succeeded jobs.
CREATE INDEX jobs_by_state ON crm.jobs (state, job_id);
-- De-duplication: while a job with the same key is pending (queued or running), enqueueing another is absorbed.
-- NULLS NOT DISTINCT makes system jobs (tenant NULL) de-duplicate against each other too.
CREATE UNIQUE INDEX jobs_unique_pending ON crm.jobs (tenant_id, kind, unique_key) NULLS NOT DISTINCT
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');

ALTER TABLE crm.jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.jobs FORCE ROW LEVEL SECURITY;
-- The service sees its current tenant's jobs and nothing else; system jobs are visible to no tenant.
CREATE POLICY jobs_tenant_read ON crm.jobs FOR SELECT TO crmd_app
    USING (tenant_id = crm.current_tenant());
-- FORCE applies the policies to the owner as well; the functions below run as the owner and serve every tenant.
CREATE POLICY jobs_owner_all ON crm.jobs TO crmd_owner
    USING (true) WITH CHECK (true);

GRANT SELECT ON crm.jobs TO crmd_app;

-- Enqueues a job for the current tenant (app.tenant_id; none makes a system job), in the caller's transaction:
-- the job commits or rolls back with the change that caused it (invariant 9). Returns the new job's id, or NULL
-- when a pending job with the same (tenant, kind, unique_key) already exists and absorbs this one. No NOTIFY: it
-- would take PostgreSQL's cluster-wide notification lock for the whole commit of every enqueuing transaction, and
-- runners poll (every CRMD_JOBS_POLL_MS) anyway; a process that enqueued work wakes its own runner.
CREATE FUNCTION crm.job_enqueue(p_kind text, p_payload jsonb, p_delay_ms bigint, p_max_attempts integer,
                                p_unique_key text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
DECLARE
    v_id bigint;
BEGIN
    IF p_payload IS NOT NULL AND octet_length(p_payload::text) > 262144 THEN
        RAISE EXCEPTION 'job payload larger than 262144 bytes' USING ERRCODE = 'program_limit_exceeded';
    END IF;
    IF p_delay_ms IS NOT NULL AND (p_delay_ms < 0 OR p_delay_ms > 31622400000) THEN
        RAISE EXCEPTION 'job delay out of range (0 .. 366 days)' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO crm.jobs (tenant_id, kind, payload, run_at, max_attempts, unique_key)
    VALUES (crm.current_tenant(), p_kind, coalesce(p_payload, '{}'),
            now() + coalesce(p_delay_ms, 0) * interval '1 millisecond', coalesce(p_max_attempts, 10), p_unique_key)
    ON CONFLICT (tenant_id, kind, unique_key) WHERE unique_key IS NOT NULL AND state IN ('queued', 'running')
    DO NOTHING
    RETURNING job_id INTO v_id;
    RETURN v_id;
END
$$;

-- A note on durability. The runner's own bookkeeping (claims, renewals, outcomes, reclaims, releases, purges)
-- commits asynchronously (synchronous_commit off, transaction-local): if PostgreSQL itself crashes before such a
-- commit reaches disk, the change is lost and the job is claimed or run again, which at-least-once delivery already
-- allows. Waiting for a WAL flush on every claim and every batch of outcomes would cap the whole queue at the disk's
-- flush rate. Enqueueing is not affected: it commits, durably, with the change that caused it.
--
-- And on plan stability. A queue swings between empty and large faster than autovacuum's ANALYZE follows, and a
-- plan made from an empty table's statistics (a bitmap scan of every queued row and a sort, per claim) turns each
-- claim of 64 jobs from 20000 queued into milliseconds of work. The runner's functions therefore carry planner
-- settings that leave only the plan that fits whatever the size: the claim walks jobs_ready in order and stops at its
-- LIMIT (no bitmap scan, which would collect every queued row and sort them), then updates the claimed rows by
-- their physical address. JIT is off in all of them: compiling a plan costs a hundred milliseconds, and these
-- queries take well under one.

-- Claims up to p_n due jobs of the given kinds for p_owner, in run_at order, under a lease of p_lease_ms. Rows
-- another transaction holds are skipped, so concurrent runners never wait for or double-claim each other. The
-- attempt is counted here: a runner that dies mid-job has used it.
CREATE FUNCTION crm.jobs_claim(p_owner text, p_lease_ms bigint, p_kinds text[], p_n integer)
    RETURNS TABLE (job_id bigint, tenant_id uuid, kind text, payload jsonb, attempts integer, max_attempts integer)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    SET enable_bitmapscan = off SET jit = off -- plan stability: see above
    AS $$
#variable_conflict use_column
DECLARE
    v_rows tid[];
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true); -- runner bookkeeping: see the note above
    IF p_lease_ms IS NULL OR p_lease_ms < 1 OR p_lease_ms > 86400000 OR p_n IS NULL OR p_n < 1 OR p_n > 4096 THEN
        RAISE EXCEPTION 'jobs_claim: lease 1 .. 86400000 ms and 1 .. 4096 jobs' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- First the candidates, in order, along jobs_ready; then the update of exactly those rows by their physical
    -- address (a TID scan; the rows are locked, so it cannot move). Two statements, so that neither plan depends
    -- on a join estimate.
    SELECT array_agg(d.ctid) INTO v_rows FROM (
        SELECT j.ctid FROM crm.jobs j
        WHERE j.state = 'queued' AND j.run_at <= now() AND j.kind = ANY (p_kinds)
        ORDER BY j.run_at, j.job_id
        LIMIT p_n
        FOR UPDATE SKIP LOCKED
    ) d;
    IF v_rows IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH claimed AS (
        UPDATE crm.jobs j
        SET state = 'running', attempts = j.attempts + 1, lease_owner = p_owner,
            lease_expires_at = now() + p_lease_ms * interval '1 millisecond', updated_at = now()
        WHERE j.ctid = ANY (v_rows)
        RETURNING j.job_id, j.tenant_id, j.kind, j.payload, j.attempts, j.max_attempts, j.run_at
    )
    SELECT c.job_id, c.tenant_id, c.kind, c.payload, c.attempts, c.max_attempts FROM claimed c
    ORDER BY c.run_at, c.job_id;
END
$$;

-- Returns running jobs whose lease has expired (their runner died or lost the database) to the queue, due at once,
-- up to p_n per call. A job that has used its last attempt is dead instead: a job that crashes every runner it
-- touches must end, not go round forever. Returns how many rows it changed.
CREATE FUNCTION crm.jobs_reclaim(p_n integer) RETURNS integer
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    SET jit = off -- plan stability: see above
    AS $$
DECLARE
    v_count integer;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true); -- runner bookkeeping: see the note above
    IF p_n IS NULL OR p_n < 1 OR p_n > 100000 THEN
        RAISE EXCEPTION 'jobs_reclaim: 1 .. 100000 jobs' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH expired AS (
        SELECT j.job_id FROM crm.jobs j
        WHERE j.state = 'running' AND j.lease_expires_at < now()
        ORDER BY j.lease_expires_at
        LIMIT p_n
        FOR UPDATE SKIP LOCKED
    ), changed AS (
        UPDATE crm.jobs j
        SET state = CASE WHEN j.attempts >= j.max_attempts THEN 'dead' ELSE 'queued' END,
            run_at = CASE WHEN j.attempts >= j.max_attempts THEN j.run_at ELSE now() END,
            finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
            lease_owner = NULL, lease_expires_at = NULL, last_error = 'lease expired', updated_at = now()
        FROM expired
        WHERE j.job_id = expired.job_id
        RETURNING 1
    )
    SELECT count(*) INTO v_count FROM changed;
    RETURN v_count;
END
$$;

-- The functions below take the runner's jobs as parallel arrays of (job_id, attempts): the attempt number names
-- one lease, so an answer that arrives late (a retried completion whose first try did commit) can never touch a
-- later attempt of the same job. They lock their rows in job_id order, so two of them working on overlapping sets
-- (a renewal and a completion of the same runner, on two connections) wait for each other instead of deadlocking.

-- Extends the leases p_owner still holds. The jobs not returned were lost (reclaimed after expiry).
CREATE FUNCTION crm.jobs_renew(p_owner text, p_ids bigint[], p_attempts integer[], p_lease_ms bigint)
    RETURNS TABLE (job_id bigint, attempts integer)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    SET jit = off -- plan stability: see above
    AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true); -- runner bookkeeping: see the note above
    IF p_lease_ms IS NULL OR p_lease_ms < 1 OR p_lease_ms > 86400000 THEN
        RAISE EXCEPTION 'jobs_renew: lease 1 .. 86400000 ms' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH mine AS (
        SELECT j.job_id FROM crm.jobs j
        JOIN unnest(p_ids, p_attempts) AS l(id, attempt) ON l.id = j.job_id AND l.attempt = j.attempts
        WHERE j.state = 'running' AND j.lease_owner = p_owner
        ORDER BY j.job_id
        FOR UPDATE OF j
    ), renewed AS (
        UPDATE crm.jobs j
        SET lease_expires_at = now() + p_lease_ms * interval '1 millisecond', updated_at = now()
        FROM mine
        WHERE j.job_id = mine.job_id
        RETURNING j.job_id, j.attempts
    )
    SELECT r.job_id, r.attempts FROM renewed r;
END
$$;

-- Records success for the jobs still running under p_owner's lease; returns those it changed.
CREATE FUNCTION crm.jobs_succeed(p_owner text, p_ids bigint[], p_attempts integer[])
    RETURNS TABLE (job_id bigint, attempts integer)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    SET jit = off -- plan stability: see above
    AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true); -- runner bookkeeping: see the note above
    RETURN QUERY
    WITH mine AS (
        SELECT j.job_id FROM crm.jobs j
        JOIN unnest(p_ids, p_attempts) AS l(id, attempt) ON l.id = j.job_id AND l.attempt = j.attempts
        WHERE j.state = 'running' AND j.lease_owner = p_owner
        ORDER BY j.job_id
        FOR UPDATE OF j
    ), done AS (
        UPDATE crm.jobs j
        SET state = 'succeeded', lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
        FROM mine
        WHERE j.job_id = mine.job_id
        RETURNING j.job_id, j.attempts
    )
    SELECT d.job_id, d.attempts FROM done d;
END
$$;

-- Records failures for the jobs still running under p_owner's lease: dead when permanent or out of attempts,
-- otherwise queued again after the runner's delay. The error is cut to 1000 characters. Returns the new states.
CREATE FUNCTION crm.jobs_fail(p_owner text, p_ids bigint[], p_attempts integer[], p_delays_ms bigint[],
                              p_errors text[], p_permanent boolean[])
    RETURNS TABLE (job_id bigint, attempts integer, state text)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    SET jit = off -- plan stability: see above
    AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true); -- runner bookkeeping: see the note above
    RETURN QUERY
    WITH mine AS (
        SELECT j.job_id, f.delay_ms, f.error, f.permanent FROM crm.jobs j
        JOIN unnest(p_ids, p_attempts, p_delays_ms, p_errors, p_permanent) AS f(id, attempt, delay_ms, error, permanent)
            ON f.id = j.job_id AND f.attempt = j.attempts
        WHERE j.state = 'running' AND j.lease_owner = p_owner
        ORDER BY j.job_id
        FOR UPDATE OF j
    ), failed AS (
        UPDATE crm.jobs j
        SET state = CASE WHEN mine.permanent OR j.attempts >= j.max_attempts THEN 'dead' ELSE 'queued' END,
            run_at = CASE WHEN mine.permanent OR j.attempts >= j.max_attempts THEN j.run_at
                          ELSE now() + least(greatest(coalesce(mine.delay_ms, 0), 0), 31622400000)
                                       * interval '1 millisecond' END,
            finished_at = CASE WHEN mine.permanent OR j.attempts >= j.max_attempts THEN now() END,
            last_error = left(coalesce(mine.error, 'failed'), 1000),
            lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
        FROM mine
        WHERE j.job_id = mine.job_id
        RETURNING j.job_id, j.attempts, j.state
    )
    SELECT f.job_id, f.attempts, f.state FROM failed f;
END
$$;

-- Graceful shutdown: hands running jobs back, due at once, without counting the attempt (it did not happen).
CREATE FUNCTION crm.jobs_release(p_owner text, p_ids bigint[], p_attempts integer[])
    RETURNS TABLE (job_id bigint, attempts integer)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    SET jit = off -- plan stability: see above
    AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true); -- runner bookkeeping: see the note above
    RETURN QUERY
    WITH mine AS (
        SELECT j.job_id FROM crm.jobs j
        JOIN unnest(p_ids, p_attempts) AS l(id, attempt) ON l.id = j.job_id AND l.attempt = j.attempts
        WHERE j.state = 'running' AND j.lease_owner = p_owner
        ORDER BY j.job_id
        FOR UPDATE OF j
    ), released AS (
        UPDATE crm.jobs j
        SET state = 'queued', run_at = now(), attempts = j.attempts - 1, lease_owner = NULL,
            lease_expires_at = NULL, updated_at = now()
        FROM mine
        WHERE j.job_id = mine.job_id
        RETURNING j.job_id, j.attempts + 1 AS attempts
    )
    SELECT r.job_id, r.attempts FROM released r;
END
$$;

-- The operator's view across tenants (the application guards it with the operator token): jobs in one state, or
-- all when p_state is NULL, after p_after_id in id order (keyset pagination), at most p_n (1 .. 1000).
CREATE FUNCTION crm.jobs_list(p_state text, p_after_id bigint, p_n integer)
    RETURNS TABLE (job_id bigint, tenant_id uuid, kind text, state text, attempts integer, max_attempts integer,
                   run_at timestamptz, last_error text, created_at timestamptz, updated_at timestamptz,
                   finished_at timestamptz)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
#variable_conflict use_column
BEGIN
    IF p_n IS NULL OR p_n < 1 OR p_n > 1000 THEN
        RAISE EXCEPTION 'jobs_list: 1 .. 1000 jobs' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Two statements rather than `p_state IS NULL OR state = p_state`, which would keep the planner from using
    -- the (state, job_id) index.
    IF p_state IS NULL THEN
        RETURN QUERY
        SELECT j.job_id, j.tenant_id, j.kind, j.state, j.attempts, j.max_attempts, j.run_at, j.last_error,
               j.created_at, j.updated_at, j.finished_at
        FROM crm.jobs j
        WHERE j.job_id > coalesce(p_after_id, 0)
        ORDER BY j.job_id
        LIMIT p_n;
    ELSE
        RETURN QUERY
        SELECT j.job_id, j.tenant_id, j.kind, j.state, j.attempts, j.max_attempts, j.run_at, j.last_error,
               j.created_at, j.updated_at, j.finished_at
        FROM crm.jobs j
        WHERE j.state = p_state AND j.job_id > coalesce(p_after_id, 0)
        ORDER BY j.job_id
        LIMIT p_n;
    END IF;
END
$$;

-- The operator replays a dead job: queued at once with a fresh set of attempts; last_error stays until the next
-- outcome. No row when the job does not exist; the job's current state, unchanged, when it is not dead (the
-- caller answers 404 or 409). A tenant's job gets an audit_log row (invariant 8) carrying the request's id, address
-- and user agent when given. Replaying a job whose unique_key a pending job now holds fails with unique_violation
-- (23505): that pending job already does the work.
CREATE FUNCTION crm.jobs_retry(p_job_id bigint, p_request_id text, p_ip inet, p_user_agent text)
    RETURNS TABLE (job_id bigint, state text, replayed boolean)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_job crm.jobs%ROWTYPE;
    v_previous_tenant text;
BEGIN
    SELECT * INTO v_job FROM crm.jobs j WHERE j.job_id = p_job_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_job.state <> 'dead' THEN
        job_id := v_job.job_id;
        state := v_job.state;
        replayed := false;
        RETURN NEXT;
        RETURN;
    END IF;
    UPDATE crm.jobs j
    SET state = 'queued', run_at = now(), attempts = 0, finished_at = NULL, updated_at = now()
    WHERE j.job_id = p_job_id;
    IF v_job.tenant_id IS NOT NULL THEN
        -- The audit log admits rows for the current tenant only; set it for this insert and restore the caller's.
        v_previous_tenant := current_setting('app.tenant_id', true);
        PERFORM set_config('app.tenant_id', v_job.tenant_id::text, true);
        INSERT INTO crm.audit_log (tenant_id, actor_type, action, target_type, target_id, ip, user_agent, request_id,
                                   metadata)
        VALUES (v_job.tenant_id, 'operator', 'job.retry', 'job', v_job.job_id::text, p_ip, left(p_user_agent, 512),
                left(p_request_id, 128),
                jsonb_build_object('kind', v_job.kind, 'attempts', v_job.attempts, 'last_error', v_job.last_error));
        PERFORM set_config('app.tenant_id', coalesce(v_previous_tenant, ''), true);
    END IF;
    job_id := v_job.job_id;
    state := 'queued';
    replayed := true;
    RETURN NEXT;
END
$$;

-- Retention: deletes up to p_n succeeded jobs that finished more than p_older_than_ms ago. Dead jobs stay until an
-- operator has looked at them. Bounded per call so that one purge never holds many locks or runs long.
CREATE FUNCTION crm.jobs_purge(p_older_than_ms bigint, p_n integer) RETURNS integer
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    SET jit = off -- plan stability: see above
    AS $$
DECLARE
    v_count integer;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true); -- runner bookkeeping: see the note above
    IF p_older_than_ms IS NULL OR p_older_than_ms < 0 OR p_n IS NULL OR p_n < 1 OR p_n > 100000 THEN
        RAISE EXCEPTION 'jobs_purge: age >= 0 ms and 1 .. 100000 jobs' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH old AS (
        SELECT j.job_id FROM crm.jobs j
        WHERE j.state = 'succeeded' AND j.finished_at < now() - p_older_than_ms * interval '1 millisecond'
        ORDER BY j.job_id
        LIMIT p_n
        FOR UPDATE SKIP LOCKED
    ), deleted AS (
        DELETE FROM crm.jobs j USING old WHERE j.job_id = old.job_id RETURNING 1
    )
    SELECT count(*) INTO v_count FROM deleted;
    RETURN v_count;
END
$$;

REVOKE ALL ON FUNCTION crm.job_enqueue(text, jsonb, bigint, integer, text),
    crm.jobs_claim(text, bigint, text[], integer),
    crm.jobs_reclaim(integer),
    crm.jobs_renew(text, bigint[], integer[], bigint),
    crm.jobs_succeed(text, bigint[], integer[]),
    crm.jobs_fail(text, bigint[], integer[], bigint[], text[], boolean[]),
    crm.jobs_release(text, bigint[], integer[]),
    crm.jobs_list(text, bigint, integer),
    crm.jobs_retry(bigint, text, inet, text),
    crm.jobs_purge(bigint, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION crm.job_enqueue(text, jsonb, bigint, integer, text),
    crm.jobs_claim(text, bigint, text[], integer),
    crm.jobs_reclaim(integer),
    crm.jobs_renew(text, bigint[], integer[], bigint),
    crm.jobs_succeed(text, bigint[], integer[]),
    crm.jobs_fail(text, bigint[], integer[], bigint[], text[], boolean[]),
    crm.jobs_release(text, bigint[], integer[]),
    crm.jobs_list(text, bigint, integer),
    crm.jobs_retry(bigint, text, inet, text),
    crm.jobs_purge(bigint, integer) TO crmd_app;
