/*
 * crmd's application object: the loop, the database pool, the HTTP server, metrics and the routes, wired from the
 * configuration. One per process.
 *
 * crm_app_run blocks in uv_run until SIGTERM or SIGINT, then shuts down in order: stop accepting and let in-flight
 * requests finish (CRMD_SHUTDOWN_GRACE_MS), close the database pool, close the remaining connections, close every
 * handle, and check that the loop closes cleanly. Returns the process exit code.
 */
#ifndef CRM_APP_H
#define CRM_APP_H

#include <stdio.h>
#include <uv.h>

#include "config.h"
#include "http.h"
#include "httpc.h"
#include "jobs.h"
#include "mail/smtp.h"
#include "metrics.h"
#include "migrate.h"
#include "pg.h"
#include "router.h"

/* The migrations compiled into this binary (generated from sql/ at build time). */
extern const crm_migration_t crm_migrations[];
extern const unsigned crm_migrations_count;

typedef struct st_crm_app_t crm_app_t;

/* Readiness facts kept up to date in the background, so that /health/ready never queries the database. */
typedef struct st_crm_readiness_t {
    int schema_checked; /* a schema check has completed at least once */
    int schema_current; /* every migration in this binary is applied with an unchanged checksum */
    char schema_problem[160];
    uint64_t schema_checked_at; /* loop ms */
} crm_readiness_t;

struct st_crm_app_t {
    const crm_config_t *config;
    uv_loop_t *loop;
    crm_pg_pool_t *pool;
    crm_http_server_t *http;
    crm_httpc_t *httpc;                 /* outbound calls: upstreams google-oauth, gmail, stripe, docusign, smtp */
    crm_jobs_t *jobs;                   /* the job queue; its runner claims jobs only with CRMD_JOBS=1 */
    struct st_crm_auth_t *auth;         /* accounts and sessions (app/auth) */
    struct st_crm_contacts_t *contacts; /* contacts, brands, tags, settings (app/contacts) */
    struct {
        char from_addr[256], from_name[256], domain[256]; /* from CRMD_MAIL_FROM */
        crm_mail_relay_t relay;
    } mail;
    crm_router_t router;
    crm_metrics_t metrics;
    crm_readiness_t ready;
    int shutting_down;
    int jobs_running; /* the runner was started (CRMD_JOBS=1) */
    uint64_t started_at_ms;
    /* private */
    uv_signal_t _sigterm, _sigint;
    uv_timer_t _schema_timer;
    int _exit_code;
    struct {
        crm_pg_stmt_t ping, schema_versions;
    } _ops_stmts;
    struct {
        crm_pg_stmt_t echo, sleep, tenant, audit, audit_count, job_run;
    } _diag_stmts;
    int _stopping_parts; /* HTTP server and job runner still stopping */
};

/* Prints every route crmd can register, one per line: "METHOD PATTERN" plus " test-only" for the diagnostics
 * that exist only with CRMD_ENV=test. Used by `crmd routes` and the OpenAPI contract test. */
int crm_app_print_routes(FILE *out);

/* Runs crmd until a signal stops it; returns the exit code. The configuration must have loaded without errors. */
int crm_app_run(const crm_config_t *config);

/* Routes and statements of the ops endpoints (app/ops/health.c). */
int crm_ops_prepare(crm_app_t *app);
int crm_ops_routes(crm_app_t *app);
void crm_ops_start(crm_app_t *app);
void crm_ops_stop(crm_app_t *app);

/* Test-environment diagnostics (app/ops/diag.c): registered only with CRMD_ENV=test. */
int crm_diag_prepare(crm_app_t *app);
int crm_diag_routes(crm_app_t *app);
int crm_diag_jobs_register(crm_app_t *app);

/* The job queue's operator endpoints (app/ops/jobs.c). */
int crm_ops_jobs_routes(crm_app_t *app);

#endif
