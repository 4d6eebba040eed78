"""Migrations (issue #2): applied twice is a no-op; concurrent runs apply each migration once; a modified applied
migration blocks start-up; a database whose schema is behind is reported not ready until it is migrated, and then
becomes ready on its own."""
import os
import subprocess
import time

from harness import CRMD, SUPERUSER, Crmd, Database, check, log, request, run

# Every migration in the tree, as the ledger records them: "version:name".
SQL_DIR = os.path.join(os.environ.get("CRMD_SOURCE_ROOT", "."), "sql")
MIGRATIONS = sorted(f for f in os.listdir(SQL_DIR) if f.endswith(".sql") and f[:4].isdigit())
N = len(MIGRATIONS)
LEDGER = ",".join("%d:%s" % (int(f[:4]), f) for f in MIGRATIONS)


def migrate_env(db):
    return {"CRMD_ENV": "test", "CRMD_DATABASE_URL": db.url("crmd_app"), "CRMD_MIGRATE_DATABASE_URL": db.url(SUPERUSER)}


def migrate(db):
    return subprocess.run([CRMD, "migrate"], env=migrate_env(db), capture_output=True, text=True, timeout=120)


def ledger(db):
    return db.psql("SELECT string_agg(version || ':' || name, ',' ORDER BY version) FROM crm.schema_migrations")


def test_twice_is_a_no_op():
    with Database() as db:
        first = migrate(db)
        check(first.returncode == 0, "first migrate: %s" % first.stderr)
        check("%d applied now" % N in first.stdout, "first run applies every migration: %r" % first.stdout)
        before = ledger(db)
        applied_at = db.psql("SELECT string_agg(applied_at::text, ',' ORDER BY version) FROM crm.schema_migrations")
        second = migrate(db)
        check(second.returncode == 0, "second migrate: %s" % second.stderr)
        check("0 applied now, %d applied in total" % N in second.stdout, "second run is a no-op: %r" % second.stdout)
        check(N >= 4 and ledger(db) == before == LEDGER, "ledger unchanged: %r" % before)
        check(db.psql("SELECT string_agg(applied_at::text, ',' ORDER BY version) FROM crm.schema_migrations")
              == applied_at, "nothing re-applied")
        # Start-up migration on an up-to-date schema is a no-op as well.
        with Crmd(db) as crmd:
            crmd.wait_ready()
            check(crmd.events("startup.migrated")[0]["applied"] == 0, "start-up applied nothing")


def test_concurrent_runs_apply_each_migration_once():
    with Database() as db:
        procs = [subprocess.Popen([CRMD, "migrate"], env=migrate_env(db), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (out, err) in zip(procs, outs):
            check(p.returncode == 0, "concurrent migrate failed: %s" % err)
        applied = sum(int(out.split(" applied now")[0].split()[-1]) for out, _ in outs)
        check(applied == N, "each migration applied exactly once across the processes (%d)" % applied)
        check(db.psql("SELECT count(*) FROM crm.schema_migrations") == str(N), "one ledger row per migration")


def test_modified_applied_migration_blocks_start_up():
    with Database() as db:
        check(migrate(db).returncode == 0, "migrate")
        # Equivalent to editing 0002_tenants.sql after it was applied: the recorded and compiled-in checksums
        # now differ.
        db.psql("UPDATE crm.schema_migrations SET checksum = repeat('0', 64) WHERE version = 2")
        r = migrate(db)
        check(r.returncode != 0, "migrate must refuse")
        check("0002_tenants.sql" in r.stderr and "changed" in r.stderr, "names the file: %r" % r.stderr)
        crmd = Crmd(db, wait=False)
        code = crmd.wait_exit(timeout=60)
        check(code != 0, "crmd must refuse to start")
        text = "\n".join(crmd.stderr_lines)
        check("0002_tenants.sql" in text, "the refusal names the changed migration: %s" % text[-2000:])
        check(crmd.proc.stdout.read() == "", "it never listened")
        # With start-up migration off the check still runs (as the serving role) and still refuses.
        crmd = Crmd(db, {"CRMD_MIGRATE": "0"}, wait=False)
        check(crmd.wait_exit(timeout=60) != 0, "crmd must refuse to start with CRMD_MIGRATE=0 too")


def test_schema_behind_is_not_ready_until_migrated():
    with Database() as db:
        with Crmd(db, {"CRMD_MIGRATE": "0", "CRMD_DB_CONNECT_TIMEOUT_MS": "1000"}) as crmd:
            time.sleep(1.0)
            r = request(crmd, "GET", "/health/ready")
            check(r.status == 503, "not ready before migrations: %d %r" % (r.status, r.body))
            log("   reasons before migrating: %s" % r.json()["reasons"])
            check(migrate(db).returncode == 0, "migrate while crmd runs")
            # The pool's connections retry with backoff (at most 5 s apart) and prepare their statements once the
            # schema exists; the schema check follows within a second.
            crmd.wait_ready(timeout=20)
            check(request(crmd, "GET", "/health/ready").json()["schema_current"] is True, "schema current")


if __name__ == "__main__":
    run([
        test_twice_is_a_no_op,
        test_concurrent_runs_apply_each_migration_once,
        test_modified_applied_migration_blocks_start_up,
        test_schema_behind_is_not_ready_until_migrated,
    ])
