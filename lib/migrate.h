/*
 * Forward-only schema migrations.
 *
 * Migrations are SQL files NNNN_name.sql compiled into the binary (so the binary is the unit of deployment and
 * cannot run against files that drifted from it). Each is applied once, in version order, in its own transaction,
 * and recorded in crm.schema_migrations with its SHA-256 checksum. Several processes may start at once: a session
 * advisory lock serialises them, so each migration is applied exactly once. An applied migration whose file has
 * changed since is refused by name: history is never rewritten, a fix is a new migration.
 *
 * Migrations after the first run as the owner role (`SET LOCAL ROLE crmd_owner`, created by the first migration)
 * so that every object they create belongs to it and not to whoever connected.
 *
 * These functions BLOCK (plain libpq). They are for `crmd migrate` and start-up before the event loop runs, never
 * for the loop itself. Every wait is bounded by timeout_ms: connect, the advisory lock, each statement.
 */
#ifndef CRM_MIGRATE_H
#define CRM_MIGRATE_H

#include <libpq-fe.h>
#include <stddef.h>

typedef struct st_crm_migration_t {
    int version;
    const char *name; /* file name, e.g. "0002_tenants.sql" */
    const char *sql;
    size_t len;
} crm_migration_t;

typedef struct st_crm_migrate_report_t {
    size_t applied_now;   /* applied by this call */
    size_t applied_total; /* recorded in the database */
    size_t pending;       /* in the binary, not yet applied */
    size_t unknown;       /* recorded in the database but unknown to this binary (a newer release applied them) */
    int latest;           /* highest version recorded */
    char error[512];      /* why it failed, one line, naming the migration; empty on success */
} crm_migrate_report_t;

/* Applies every pending migration. Returns 0, CRM_E_STATE (an applied migration changed; nothing applied),
 * CRM_E_DB (a migration failed; it was rolled back, later ones not attempted), CRM_E_UNAVAILABLE (cannot connect)
 * or CRM_E_DEADLINE (lock or statement timeout). `migrations` must be sorted by version without duplicates. */
int crm_migrate_apply(const char *conninfo, const crm_migration_t *migrations, size_t n, unsigned timeout_ms,
                      crm_migrate_report_t *report);

/* Checks without changing anything: verifies checksums and counts pending migrations. Same errors as apply. */
int crm_migrate_check(const char *conninfo, const crm_migration_t *migrations, size_t n, unsigned timeout_ms,
                      crm_migrate_report_t *report);

/* A blocking connection for start-up checks, bounded like the migration runner's: connect timeout, TCP keepalives,
 * tcp_user_timeout, and statement and lock timeouts of timeout_ms. NULL with the reason in err on failure. */
PGconn *crm_migrate_connect(const char *conninfo, unsigned timeout_ms, char *err, size_t errcap);

/* SHA-256 of a migration's text as lower-case hex (65 bytes with the NUL). */
void crm_migration_checksum(const crm_migration_t *m, char out[65]);

#endif
