#include "migrate.h"

#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "err.h"
#include "log.h"

/* 'crmd' as a 32-bit number: the advisory-lock key every crmd process agrees on. */
#define MIGRATE_LOCK_KEY "1668443492"
#define MAX_APPLIED      10000

typedef struct {
    int version;
    char name[128];
    char checksum[65];
} applied_t;

void crm_migration_checksum(const crm_migration_t *m, char out[65])
{
    uint8_t digest[32];
    if (crm_sha256(m->sql, m->len, digest) != 0) {
        memset(out, '0', 64);
        out[64] = '\0';
        return;
    }
    crm_hex(digest, 32, out);
}

static void fail(crm_migrate_report_t *rep, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail(crm_migrate_report_t *rep, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rep->error, sizeof(rep->error), fmt, ap);
    va_end(ap);
    for (char *p = rep->error; *p != '\0'; ++p)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
}

/* Maps a failed result to an error kind: 55P03 lock_not_available and 57014 query_canceled are our timeouts. */
static int result_err(const PGresult *r)
{
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (state != NULL && (strcmp(state, "55P03") == 0 || strcmp(state, "57014") == 0))
        return CRM_E_DEADLINE;
    return CRM_E_DB;
}

static int exec_ok(PGconn *c, const char *sql, crm_migrate_report_t *rep, const char *what)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    int err = 0;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        err = result_err(r);
        fail(rep, "%s: %s", what, PQresultErrorMessage(r));
    }
    PQclear(r);
    return err;
}

static PGconn *connect_db(const char *conninfo, unsigned timeout_ms, crm_migrate_report_t *rep)
{
    char timeout_s[16], user_timeout[16];
    /* libpq's connect_timeout has a 2-second floor and whole seconds. A dead network must not hang the
     * blocking calls either: TCP keepalives and tcp_user_timeout bound every read and write. */
    snprintf(timeout_s, sizeof(timeout_s), "%u", timeout_ms < 2000 ? 2 : (timeout_ms + 999) / 1000);
    snprintf(user_timeout, sizeof(user_timeout), "%u", timeout_ms);
    const char *keys[] = {"dbname",           "connect_timeout",  "application_name",
                          "keepalives",       "keepalives_idle",  "keepalives_interval",
                          "keepalives_count", "tcp_user_timeout", NULL};
    const char *vals[] = {conninfo, timeout_s, "crmd-migrate", "1", "5", "2", "3", user_timeout, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (c == NULL || PQstatus(c) != CONNECTION_OK) {
        /* The message may name the host and user, never the password. */
        fail(rep, "cannot connect to the database: %s", c != NULL ? PQerrorMessage(c) : "out of memory");
        PQfinish(c);
        return NULL;
    }
    /* Session settings by SET rather than the options keyword, which would replace the operator's own. */
    char set[160];
    snprintf(set, sizeof(set), "SET statement_timeout = %u; SET lock_timeout = %u; SET client_min_messages = warning",
             timeout_ms, timeout_ms);
    PGresult *r = PQexec(c, set);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fail(rep, "cannot configure the session: %s", PQresultErrorMessage(r));
        PQclear(r);
        PQfinish(c);
        return NULL;
    }
    PQclear(r);
    return c;
}

PGconn *crm_migrate_connect(const char *conninfo, unsigned timeout_ms, char *err, size_t errcap)
{
    crm_migrate_report_t rep;
    memset(&rep, 0, sizeof(rep));
    PGconn *c = connect_db(conninfo, timeout_ms, &rep);
    if (c == NULL && err != NULL)
        snprintf(err, errcap, "%s", rep.error);
    return c;
}

/* Reads crm.schema_migrations (creating it when `create`), verifies every checksum it can and fills the report.
 * Returns the rows through *applied (malloc'd) or an error. */
static int load_applied(PGconn *c, const crm_migration_t *m, size_t n, int create, applied_t **applied,
                        size_t *napplied, crm_migrate_report_t *rep)
{
    int err;
    *applied = NULL;
    *napplied = 0;
    if (create) {
        /* The ledger itself is the one object created outside a migration: migrations need it to exist. The first
         * migration hands it to the owner role. */
        if ((err = exec_ok(c,
                           "CREATE SCHEMA IF NOT EXISTS crm; "
                           "CREATE TABLE IF NOT EXISTS crm.schema_migrations ("
                           " version integer PRIMARY KEY CHECK (version > 0),"
                           " name text NOT NULL,"
                           " checksum text NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),"
                           " applied_at timestamptz NOT NULL DEFAULT now(),"
                           " applied_by text NOT NULL DEFAULT current_user,"
                           " execution_ms integer NOT NULL DEFAULT 0)",
                           rep, "creating crm.schema_migrations")) != 0)
            return err;
    } else {
        PGresult *r = PQexec(c, "SELECT to_regclass('crm.schema_migrations') IS NOT NULL");
        int exists = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            err = result_err(r);
            fail(rep, "reading crm.schema_migrations: %s", PQresultErrorMessage(r));
            PQclear(r);
            return err;
        }
        PQclear(r);
        if (!exists) {
            rep->pending = n;
            return 0;
        }
    }
    PGresult *r = PQexec(c, "SELECT version, name, checksum FROM crm.schema_migrations ORDER BY version");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        err = result_err(r);
        fail(rep, "reading crm.schema_migrations: %s", PQresultErrorMessage(r));
        PQclear(r);
        return err;
    }
    int rows = PQntuples(r);
    if (rows > MAX_APPLIED) {
        fail(rep, "crm.schema_migrations has %d rows, more than %d", rows, MAX_APPLIED);
        PQclear(r);
        return CRM_E_STATE;
    }
    applied_t *a = calloc(rows > 0 ? (size_t)rows : 1, sizeof(*a));
    if (a == NULL) {
        PQclear(r);
        return CRM_E_NOMEM;
    }
    for (int i = 0; i < rows; ++i) {
        a[i].version = atoi(PQgetvalue(r, i, 0));
        snprintf(a[i].name, sizeof(a[i].name), "%s", PQgetvalue(r, i, 1));
        snprintf(a[i].checksum, sizeof(a[i].checksum), "%s", PQgetvalue(r, i, 2));
    }
    PQclear(r);
    rep->applied_total = (size_t)rows;
    rep->latest = rows > 0 ? a[rows - 1].version : 0;
    /* Both lists are sorted: walk them together. */
    size_t i = 0, j = 0;
    while (i < n || j < (size_t)rows) {
        if (j == (size_t)rows || (i < n && m[i].version < a[j].version)) {
            ++rep->pending;
            ++i;
        } else if (i == n || a[j].version < m[i].version) {
            ++rep->unknown;
            crm_log(CRM_LOG_WARN, "migrate.unknown_version", CRM_LOG_INT("version", a[j].version),
                    CRM_LOG_STR("name", a[j].name));
            ++j;
        } else {
            char sum[65];
            crm_migration_checksum(&m[i], sum);
            if (strcmp(sum, a[j].checksum) != 0) {
                fail(rep,
                     "migration %s was changed after it was applied (checksum %.12s… recorded, %.12s… in this "
                     "binary); applied migrations are immutable: revert the file and add a new migration",
                     m[i].name, a[j].checksum, sum);
                free(a);
                return CRM_E_STATE;
            }
            ++i;
            ++j;
        }
    }
    *applied = a;
    *napplied = (size_t)rows;
    return 0;
}

static int is_applied(const applied_t *a, size_t n, int version)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (a[mid].version == version)
            return 1;
        if (a[mid].version < version)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

/* The 1-based line of a byte position (1-based, as the server reports it) in the migration text. */
static int line_of(const crm_migration_t *m, const char *position)
{
    if (position == NULL)
        return 0;
    long pos = strtol(position, NULL, 10);
    int line = 1;
    /* The server counts characters; for the ASCII SQL we ship this equals bytes. */
    for (long i = 0; i < pos - 1 && (size_t)i < m->len; ++i)
        if (m->sql[i] == '\n')
            ++line;
    return line;
}

static int apply_one(PGconn *c, const crm_migration_t *m, crm_migrate_report_t *rep)
{
    int err;
    if ((err = exec_ok(c, "BEGIN", rep, m->name)) != 0)
        return err;
    /* Once the first migration has handed the schema to the owner role, run as that role so that it owns what
     * gets created. (The role alone is not enough: roles are cluster-wide and may predate this database.) */
    if ((err = exec_ok(c,
                       "DO $$ BEGIN IF EXISTS (SELECT FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner "
                       "WHERE n.nspname = 'crm' AND r.rolname = 'crmd_owner') THEN "
                       "EXECUTE 'SET LOCAL ROLE crmd_owner'; END IF; END $$; SET LOCAL search_path = crm, public",
                       rep, m->name)) != 0)
        goto rollback;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    /* The text may hold several statements: the simple query protocol runs them in this transaction. */
    char *sql = malloc(m->len + 1);
    if (sql == NULL) {
        err = CRM_E_NOMEM;
        goto rollback;
    }
    memcpy(sql, m->sql, m->len);
    sql[m->len] = '\0';
    PGresult *r = PQexec(c, sql);
    free(sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        err = result_err(r);
        const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
        int line = line_of(m, PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION));
        if (line > 0)
            fail(rep, "migration %s failed at line %d: %s", m->name, line, msg != NULL ? msg : PQerrorMessage(c));
        else
            fail(rep, "migration %s failed: %s", m->name, msg != NULL ? msg : PQerrorMessage(c));
        PQclear(r);
        goto rollback;
    }
    PQclear(r);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    char version[16], checksum[65], elapsed[24];
    snprintf(version, sizeof(version), "%d", m->version);
    snprintf(elapsed, sizeof(elapsed), "%ld", ms);
    crm_migration_checksum(m, checksum);
    const char *params[] = {version, m->name, checksum, elapsed};
    r = PQexecParams(
        c, "INSERT INTO crm.schema_migrations (version, name, checksum, execution_ms) VALUES ($1, $2, $3, $4)", 4, NULL,
        params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        err = result_err(r);
        fail(rep, "recording migration %s: %s", m->name, PQresultErrorMessage(r));
        PQclear(r);
        goto rollback;
    }
    PQclear(r);
    if ((err = exec_ok(c, "COMMIT", rep, m->name)) != 0)
        return err;
    crm_log(CRM_LOG_INFO, "migrate.applied", CRM_LOG_STR("name", m->name), CRM_LOG_INT("ms", ms));
    return 0;
rollback:
    PQclear(PQexec(c, "ROLLBACK"));
    return err;
}

static int run(const char *conninfo, const crm_migration_t *m, size_t n, unsigned timeout_ms, int apply,
               crm_migrate_report_t *rep)
{
    memset(rep, 0, sizeof(*rep));
    for (size_t i = 1; i < n; ++i)
        if (m[i].version <= m[i - 1].version) {
            fail(rep, "migrations are not strictly ordered at %s", m[i].name);
            return CRM_E_INVAL;
        }
    PGconn *c = connect_db(conninfo, timeout_ms, rep);
    if (c == NULL)
        return CRM_E_UNAVAILABLE;
    int err = 0, locked = 0;
    applied_t *applied = NULL;
    size_t napplied = 0;
    if (apply) {
        /* Waits at most lock_timeout for another process that is migrating right now. */
        if ((err = exec_ok(c, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")", rep, "taking the migration lock")) != 0)
            goto out;
        locked = 1;
    }
    if ((err = load_applied(c, m, n, apply, &applied, &napplied, rep)) != 0 || !apply)
        goto out;
    for (size_t i = 0; i < n; ++i) {
        if (is_applied(applied, napplied, m[i].version))
            continue;
        if ((err = apply_one(c, &m[i], rep)) != 0)
            goto out;
        ++rep->applied_now;
        ++rep->applied_total;
        --rep->pending;
        if (m[i].version > rep->latest)
            rep->latest = m[i].version;
    }
out:
    if (locked)
        PQclear(PQexec(c, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")"));
    free(applied);
    PQfinish(c);
    return err;
}

int crm_migrate_apply(const char *conninfo, const crm_migration_t *m, size_t n, unsigned timeout_ms,
                      crm_migrate_report_t *rep)
{
    return run(conninfo, m, n, timeout_ms, 1, rep);
}

int crm_migrate_check(const char *conninfo, const crm_migration_t *m, size_t n, unsigned timeout_ms,
                      crm_migrate_report_t *rep)
{
    return run(conninfo, m, n, timeout_ms, 0, rep);
}
