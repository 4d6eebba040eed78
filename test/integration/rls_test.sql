-- Row-level security, checked from the serving role's own session (issue #2): crmd_app cannot see or touch another
-- tenant's rows even with hand-written SQL that has no tenant filter, cannot change the audit log, and cannot
-- switch the policies off. Run by test_rls.py as crmd_app after two tenants' rows were inserted as the owner;
-- test.tenant_a / test.tenant_b name them. Every check raises on failure; psql stops at the first error.
\set ON_ERROR_STOP 1
SET search_path = crm;

DO $$
DECLARE
    r record;
BEGIN
    SELECT rolsuper, rolbypassrls INTO r FROM pg_roles WHERE rolname = current_user;
    ASSERT current_user = 'crmd_app', 'runs as the serving role';
    ASSERT NOT r.rolsuper AND NOT r.rolbypassrls, 'the serving role is neither superuser nor BYPASSRLS';
    ASSERT NOT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = 'crm' AND pg_has_role(current_user, c.relowner, 'USAGE')),
        'the serving role owns nothing';
END
$$;

-- No tenant context: nothing at all is visible (fails closed).
DO $$
BEGIN
    ASSERT (SELECT count(*) FROM tenants) = 0, 'no tenant visible without a tenant context';
    ASSERT (SELECT count(*) FROM audit_log) = 0, 'no audit row visible without a tenant context';
END
$$;

-- Tenant A's context: only A, even when asking for B by id.
BEGIN;
SELECT set_config('app.tenant_id', current_setting('test.tenant_a'), true) \g /dev/null
DO $$
DECLARE
    a uuid := current_setting('test.tenant_a')::uuid;
    b uuid := current_setting('test.tenant_b')::uuid;
BEGIN
    ASSERT (SELECT count(*) FROM audit_log) = 3, 'A sees its 3 rows';
    ASSERT (SELECT count(*) FROM audit_log WHERE tenant_id = b) = 0, 'A cannot read B by filtering for B';
    ASSERT (SELECT count(*) FROM tenants) = 1, 'A sees only its tenant row';
    ASSERT (SELECT tenant_id FROM tenants) = a, 'and it is A';
    ASSERT (SELECT count(*) FROM audit_log a1 JOIN tenants t USING (tenant_id)) = 3, 'joins are confined too';
END
$$;
COMMIT;

-- Writes: into another tenant is refused; updates and deletes of the audit log are not even granted.
CREATE FUNCTION pg_temp.expect_error(stmt text, code text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    RAISE EXCEPTION 'expected SQLSTATE % from: %', code, stmt;
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> code THEN
        RAISE EXCEPTION 'expected SQLSTATE %, got % (%) from: %', code, SQLSTATE, SQLERRM, stmt;
    END IF;
END
$$;

BEGIN;
SELECT set_config('app.tenant_id', current_setting('test.tenant_a'), true) \g /dev/null
SELECT pg_temp.expect_error(format(
    'INSERT INTO audit_log (tenant_id, actor_type, action) VALUES (%L, ''system'', ''x.y'')',
    current_setting('test.tenant_b')), '42501') \g /dev/null
SELECT pg_temp.expect_error('UPDATE audit_log SET action = ''x.z''', '42501') \g /dev/null
SELECT pg_temp.expect_error('DELETE FROM audit_log', '42501') \g /dev/null
SELECT pg_temp.expect_error('TRUNCATE audit_log', '42501') \g /dev/null
SELECT pg_temp.expect_error(format('UPDATE tenants SET tenant_id = %L', current_setting('test.tenant_b')), '42501')
    \g /dev/null
SELECT pg_temp.expect_error('ALTER TABLE audit_log DISABLE ROW LEVEL SECURITY', '42501') \g /dev/null
SELECT pg_temp.expect_error('SET LOCAL ROLE crmd_owner', '42501') \g /dev/null
DO $$
DECLARE
    n bigint;
BEGIN
    UPDATE tenants SET name = 'taken over' WHERE tenant_id = current_setting('test.tenant_b')::uuid;
    GET DIAGNOSTICS n = ROW_COUNT;
    ASSERT n = 0, 'A cannot update B';
END
$$;
COMMIT;

-- Turning row security off does not reveal rows: for a role it applies to, queries then fail instead.
BEGIN;
SET LOCAL row_security = off;
SELECT pg_temp.expect_error('SELECT count(*) FROM audit_log', '42501') \g /dev/null
COMMIT;

-- The audit log keeps growing for the right tenant only.
BEGIN;
SELECT set_config('app.tenant_id', current_setting('test.tenant_b'), true) \g /dev/null
INSERT INTO audit_log (tenant_id, actor_type, action) VALUES (current_setting('test.tenant_b')::uuid, 'system', 'rls.test');
DO $$
BEGIN
    ASSERT (SELECT count(*) FROM audit_log) = 6, 'B sees its 5 rows plus the new one';
END
$$;
COMMIT;

\echo RLS OK
