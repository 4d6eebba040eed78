"""Row-level security from the serving role's own session: rls_test.sql, run with psql as crmd_app."""
import os
import subprocess
import uuid

from harness import CRMD, PG_SH, SUPERUSER, Database, check, run

HERE = os.path.dirname(os.path.abspath(__file__))


def test_serving_role_is_confined_by_rls():
    with Database() as db:
        env = {"CRMD_ENV": "test", "CRMD_DATABASE_URL": db.url("crmd_app"), "CRMD_MIGRATE_DATABASE_URL": db.url(SUPERUSER)}
        r = subprocess.run([CRMD, "migrate"], env=env, capture_output=True, text=True, timeout=120)
        check(r.returncode == 0, "migrate: %s" % r.stderr)
        a, b = str(uuid.uuid4()), str(uuid.uuid4())
        # The owner inserts both tenants' rows (it is the table owner and the policies are FORCEd, so it sets each
        # tenant's context in turn).
        for tenant, n in ((a, 3), (b, 5)):
            db.psql("BEGIN; SET LOCAL ROLE crmd_owner; SELECT set_config('app.tenant_id', '%s', true);"
                    "INSERT INTO crm.tenants (tenant_id, name) VALUES ('%s', 'tenant');"
                    "INSERT INTO crm.audit_log (tenant_id, actor_type, action)"
                    " SELECT '%s', 'system', 'seed.row' FROM generate_series(1, %d); COMMIT;" % (tenant, tenant, tenant, n))
        r = subprocess.run(
            ["sh", PG_SH, "psql", db.cluster.dir, "-d", db.name, "-U", "crmd_app", "-v", "ON_ERROR_STOP=1",
             "-c", "SET test.tenant_a = '%s'" % a, "-c", "SET test.tenant_b = '%s'" % b,
             "-f", os.path.join(HERE, "rls_test.sql")],
            capture_output=True, text=True)
        check(r.returncode == 0 and "RLS OK" in r.stdout, "rls_test.sql failed:\n%s\n%s" % (r.stdout, r.stderr))


if __name__ == "__main__":
    run([test_serving_role_is_confined_by_rls])
