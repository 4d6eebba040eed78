#include "app.h"

#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "auth/auth.h"
#include "contacts/contacts.h"
#include "mailer/mailer.h"

#define PREFLIGHT_TIMEOUT_MS 10000

static void close_handle_noop(uv_handle_t *h)
{
}

/*
 * Shutdown order: the HTTP server drains while the job runner lets its handlers finish (both within
 * CRMD_SHUTDOWN_GRACE_MS); then the outbound client closes (ending any call still in flight), then the database
 * pool, then the signal handles; h2o's context is disposed after uv_run returns.
 */
static void on_pool_closed(void *data)
{
    crm_app_t *app = data;
    app->pool = NULL;
    uv_close((uv_handle_t *)&app->_sigterm, close_handle_noop);
    uv_close((uv_handle_t *)&app->_sigint, close_handle_noop);
    /* h2o's context keeps handles of its own until crm_http_server_dispose, which must run outside uv_run. */
    uv_stop(app->loop);
}

static void on_httpc_closed(void *data)
{
    crm_app_t *app = data;
    app->httpc = NULL;
    crm_log(CRM_LOG_INFO, "shutdown.outbound_closed");
    if (app->pool != NULL)
        crm_pg_pool_close(app->pool, on_pool_closed, app);
    else
        on_pool_closed(app);
}

/* The last steps, once nothing that calls out or into the database is left. */
static void close_outbound_and_pool(crm_app_t *app)
{
    if (app->httpc != NULL)
        crm_httpc_close(app->httpc, on_httpc_closed, app);
    else
        on_httpc_closed(app);
}

static void part_stopped(crm_app_t *app)
{
    if (--app->_stopping_parts == 0)
        close_outbound_and_pool(app);
}

static void on_jobs_stopped(void *data)
{
    crm_app_t *app = data;
    crm_jobs_stats_t st;
    crm_jobs_stats(app->jobs, &st);
    crm_log(CRM_LOG_INFO, "shutdown.jobs_stopped", CRM_LOG_UINT("released", st.released));
    /* The runner stays allocated (HTTP handlers may still enqueue, /metrics may still render) until crm_app_run
     * frees it after the loop has finished. */
    part_stopped(app);
}

static void on_http_closed(void *data)
{
    crm_app_t *app = data;
    crm_log(CRM_LOG_INFO, "shutdown.http_closed");
    part_stopped(app);
}

static void on_http_drained(void *data)
{
    crm_app_t *app = data;
    crm_log(CRM_LOG_INFO, "shutdown.drained", CRM_LOG_UINT("in_flight", crm_http_server_in_flight(app->http)));
    crm_http_server_close(app->http, on_http_closed, app);
}

static void begin_shutdown(crm_app_t *app, const char *why)
{
    if (app->shutting_down)
        return;
    app->shutting_down = 1;
    crm_log(CRM_LOG_INFO, "shutdown.begin", CRM_LOG_STR("reason", why),
            CRM_LOG_UINT("in_flight", crm_http_server_in_flight(app->http)),
            CRM_LOG_INT("grace_ms", app->config->shutdown_grace_ms));
    crm_ops_stop(app);
    app->_stopping_parts = 2;
    crm_http_server_drain(app->http, (uint64_t)app->config->shutdown_grace_ms, on_http_drained, app);
    if (crm_jobs_stop(app->jobs, (uint64_t)app->config->shutdown_grace_ms, on_jobs_stopped, app) != 0)
        part_stopped(app);
}

static void on_signal(uv_signal_t *h, int signum)
{
    crm_app_t *app = h->data;
    if (app->shutting_down) {
        /* A second signal means the operator will not wait for the grace period. */
        crm_log(CRM_LOG_WARN, "shutdown.forced", CRM_LOG_STR("signal", signum == SIGINT ? "SIGINT" : "SIGTERM"));
        crm_log_stop();
        _exit(1);
    }
    begin_shutdown(app, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

static void report_handle(uv_handle_t *h, void *arg)
{
    crm_log(CRM_LOG_ERROR, "shutdown.leaked_handle", CRM_LOG_STR("type", uv_handle_type_name(h->type)),
            CRM_LOG_BOOL("active", uv_is_active(h)), CRM_LOG_BOOL("closing", uv_is_closing(h)));
}

/* The service must run as a role that row-level security applies to (DESIGN.md §3, invariant 5): not a
 * superuser, not BYPASSRLS, not the owner (or a member of the owner) of the tables. Also confirms that the
 * migrations applied are the ones this binary carries. Blocking, before the loop starts. Returns 0 to go on. */
static int preflight(const crm_config_t *cfg)
{
    crm_migrate_report_t rep;
    int err = crm_migrate_check(cfg->database_url, crm_migrations, crm_migrations_count, PREFLIGHT_TIMEOUT_MS, &rep);
    if (err == CRM_E_STATE) {
        crm_log(CRM_LOG_ERROR, "startup.schema_changed", CRM_LOG_STR("error", rep.error));
        return -1;
    }
    if (err == CRM_E_UNAVAILABLE) {
        /* The pool reconnects on its own and /health/ready reports it; a database that is briefly down at start-up
         * is not a reason to refuse to start. */
        crm_log(CRM_LOG_WARN, "startup.database_unreachable", CRM_LOG_STR("error", rep.error));
        return 0;
    }
    if (err != 0) {
        crm_log(CRM_LOG_ERROR, "startup.schema_check_failed", CRM_LOG_STR("error", rep.error));
        return -1;
    }
    if (rep.pending > 0)
        crm_log(CRM_LOG_WARN, "startup.migrations_pending", CRM_LOG_UINT("pending", rep.pending));

    PGconn *c = crm_migrate_connect(cfg->database_url, PREFLIGHT_TIMEOUT_MS, NULL, 0);
    if (c == NULL)
        return 0;
    PGresult *r = PQexec(c, "SELECT r.rolsuper, r.rolbypassrls, "
                            "(SELECT count(*) FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace "
                            " WHERE n.nspname = 'crm' AND pg_has_role(current_user, k.relowner, 'USAGE')), "
                            "current_user "
                            "FROM pg_roles r WHERE r.rolname = current_user");
    int unsafe = 0;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        int super = PQgetvalue(r, 0, 0)[0] == 't', bypass = PQgetvalue(r, 0, 1)[0] == 't';
        long owned = strtol(PQgetvalue(r, 0, 2), NULL, 10);
        if (super || bypass || owned > 0) {
            unsafe = 1;
            crm_log(cfg->env == CRM_ENV_PRODUCTION ? CRM_LOG_ERROR : CRM_LOG_WARN, "startup.serving_role_unsafe",
                    CRM_LOG_STR("role", PQgetvalue(r, 0, 3)), CRM_LOG_BOOL("superuser", super),
                    CRM_LOG_BOOL("bypassrls", bypass), CRM_LOG_INT("owns_tables", owned),
                    CRM_LOG_STR("why", "row-level security does not apply to this role"));
        }
    }
    PQclear(r);
    PQfinish(c);
    return unsafe && cfg->env == CRM_ENV_PRODUCTION ? -1 : 0;
}

static void raise_fd_limit(void)
{
    /* Every client connection is a descriptor; take the hard limit so max_connections is reachable. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int build_pool(crm_app_t *app)
{
    const crm_config_t *cfg = app->config;
    crm_pg_config_t pc;
    crm_pg_config_default(&pc);
    pc.conninfo = cfg->database_url;
    pc.size = (size_t)cfg->db_pool_size;
    pc.pipeline_depth = (size_t)cfg->db_pipeline_depth;
    pc.queue_max = (size_t)cfg->db_queue_max;
    pc.queue_timeout_ms = (uint64_t)cfg->db_queue_timeout_ms;
    pc.statement_timeout_ms = (uint64_t)cfg->db_statement_timeout_ms;
    pc.connect_timeout_ms = (uint64_t)cfg->db_connect_timeout_ms;
    pc.breaker.open_ms = (uint64_t)cfg->db_breaker_open_ms;
    /* A unit slower than most of its statement timeout is a slow call for the breaker. */
    pc.breaker.slow_call_ms = (uint64_t)cfg->db_statement_timeout_ms * 4 / 5;
    int err = crm_pg_pool_create(app->loop, &pc, &app->pool);
    if (err != 0)
        crm_log(CRM_LOG_ERROR, "startup.pool_failed", CRM_LOG_STR("error", crm_err_str(err)));
    return err;
}

static int build_http(crm_app_t *app, char *addr, size_t addrcap)
{
    const crm_config_t *cfg = app->config;
    crm_http_config_t hc;
    crm_http_config_default(&hc);
    hc.host = cfg->listen_host;
    hc.port = cfg->listen_port;
    hc.max_body_bytes = (size_t)cfg->max_body_bytes;
    hc.request_timeout_ms = (uint64_t)cfg->request_timeout_ms;
    hc.idle_timeout_ms = (uint64_t)cfg->http_idle_timeout_ms;
    hc.max_connections = (size_t)cfg->max_connections;
    hc.access_log = cfg->access_log;
    if (cfg->tls_cert != NULL) {
        char why[256];
        if ((hc.ssl_ctx = crm_http_tls_context(cfg->tls_cert, cfg->tls_key, why, sizeof(why))) == NULL) {
            crm_log(CRM_LOG_ERROR, "startup.tls_failed", CRM_LOG_STR("error", why));
            return CRM_E_CONFIG;
        }
    }
    int err = crm_http_server_create(app->loop, &hc, &app->router, &app->http);
    if (err != 0) {
        SSL_CTX_free(hc.ssl_ctx);
        return err;
    }
    return crm_http_server_listen(app->http, addr, addrcap);
}

static int build_outbound(crm_app_t *app)
{
    const crm_config_t *cfg = app->config;
    crm_httpc_config_t hc;
    crm_httpc_config_default(&hc);
    hc.ca_file = cfg->upstream_ca_file;
    int err = crm_httpc_create(app->loop, &hc, &app->httpc);
    if (err != 0) {
        crm_log(CRM_LOG_ERROR, "startup.outbound_failed", CRM_LOG_STR("error", crm_err_str(err)));
        return err;
    }
    static const char *const upstreams[] = {"google-oauth", "gmail", "stripe", "docusign", "smtp"};
    for (size_t i = 0; i < sizeof(upstreams) / sizeof(upstreams[0]) && err == 0; ++i) {
        crm_httpc_upstream_config_t uc;
        crm_httpc_upstream_config_default(&uc, upstreams[i]);
        uc.max_in_flight = (size_t)cfg->upstream_max_in_flight;
        uc.queue_max = (size_t)cfg->upstream_queue_max;
        uc.connect_timeout_ms = (uint64_t)cfg->upstream_connect_timeout_ms;
        uc.max_attempts = (unsigned)cfg->upstream_max_attempts;
        uc.breaker.open_ms = (uint64_t)cfg->upstream_breaker_open_ms;
        err = crm_httpc_upstream_add(app->httpc, &uc, NULL);
    }
    if (err == 0)
        err = crm_httpc_register_metrics(app->httpc, &app->metrics);
    return err;
}

static int build_jobs(crm_app_t *app)
{
    const crm_config_t *cfg = app->config;
    crm_jobs_config_t jc;
    crm_jobs_config_default(&jc);
    jc.concurrency = (size_t)cfg->jobs_concurrency;
    jc.lease_ms = (uint64_t)cfg->jobs_lease_ms;
    jc.poll_ms = (uint64_t)cfg->jobs_poll_ms;
    jc.backoff_base_ms = (uint64_t)cfg->jobs_backoff_base_ms;
    jc.backoff_max_ms = (uint64_t)cfg->jobs_backoff_max_ms;
    /* A crashed process's jobs wait for their lease to expire plus at most this. */
    jc.reclaim_ms = jc.lease_ms / 4 < 100 ? 100 : (jc.lease_ms / 4 > 5000 ? 5000 : jc.lease_ms / 4);
    int err = crm_jobs_create(app->loop, app->pool, &jc, &app->jobs);
    if (err == 0)
        err = crm_jobs_prepare(app->jobs);
    if (err == 0 && (err = crm_app_mail_init(app)) == 0)
        err = crm_app_mail_register(app);
    if (err == 0 && cfg->env == CRM_ENV_TEST)
        err = crm_diag_jobs_register(app);
    if (err == 0)
        err = crm_jobs_register_metrics(app->jobs, &app->metrics);
    if (err != 0)
        crm_log(CRM_LOG_ERROR, "startup.jobs_failed", CRM_LOG_STR("error", crm_err_str(err)));
    return err;
}

int crm_app_print_routes(FILE *out)
{
    crm_app_t app;
    memset(&app, 0, sizeof(app));
    int err = crm_router_init(&app.router);
    size_t public_routes = 0;
    if (err == 0 && (err = crm_ops_routes(&app)) == 0 && (err = crm_ops_jobs_routes(&app)) == 0 &&
        (err = crm_auth_routes(&app)) == 0 && (err = crm_contacts_routes(&app)) == 0) {
        public_routes = crm_router_count(&app.router);
        err = crm_diag_routes(&app);
    }
    for (uint32_t i = 0; err == 0 && i < crm_router_count(&app.router); ++i) {
        const crm_route_t *rt = crm_router_route(&app.router, i);
        fprintf(out, "%s %s%s\n", crm_http_method_name(rt->method), rt->pattern,
                i >= public_routes ? " test-only" : "");
    }
    crm_router_dispose(&app.router);
    return err;
}

int crm_app_run(const crm_config_t *cfg)
{
    crm_app_t app;
    memset(&app, 0, sizeof(app));
    app.config = cfg;
    app._exit_code = 0;
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    /* jansson seeds its hash function from /dev/urandom on first use; do it now, not on the loop. */
    json_object_seed(0);

    if (cfg->migrate_on_start) {
        crm_migrate_report_t rep;
        int err = crm_migrate_apply(cfg->migrate_database_url, crm_migrations, crm_migrations_count,
                                    PREFLIGHT_TIMEOUT_MS * 6, &rep);
        if (err != 0) {
            crm_log(CRM_LOG_ERROR, "startup.migrate_failed", CRM_LOG_STR("kind", crm_err_name(err)),
                    CRM_LOG_STR("error", rep.error));
            return 1;
        }
        crm_log(CRM_LOG_INFO, "startup.migrated", CRM_LOG_UINT("applied", rep.applied_now),
                CRM_LOG_UINT("total", rep.applied_total), CRM_LOG_INT("latest", rep.latest));
    }
    if (preflight(cfg) != 0)
        return 1;

    uv_loop_t loop;
    uv_loop_init(&loop);
    app.loop = &loop;
    app.started_at_ms = uv_now(&loop);
    crm_metrics_init(&app.metrics);
    char addr[300] = "";
    int err = crm_router_init(&app.router);
    if (err == 0)
        err = build_pool(&app);
    if (err == 0)
        err = build_outbound(&app);
    if (err == 0)
        err = build_jobs(&app);
    if (err == 0)
        err = crm_auth_init(&app);
    if (err == 0)
        err = crm_contacts_init(&app);
    if (err == 0 && (err = crm_ops_prepare(&app)) == 0 && (err = crm_ops_routes(&app)) == 0 &&
        (err = crm_ops_jobs_routes(&app)) == 0 && (err = crm_auth_routes(&app)) == 0 &&
        (err = crm_contacts_routes(&app)) == 0 && cfg->env == CRM_ENV_TEST && (err = crm_diag_prepare(&app)) == 0)
        err = crm_diag_routes(&app);
    if (err == 0)
        err = build_http(&app, addr, sizeof(addr));
    if (err == 0 && (err = crm_http_server_register_metrics(app.http, &app.metrics)) == 0)
        err = crm_pg_pool_register_metrics(app.pool, &app.metrics);
    if (err == 0)
        err = crm_auth_register_metrics(app.auth, &app.metrics);
    if (err == 0)
        err = crm_pg_pool_start(app.pool);
    if (err == 0 && cfg->jobs_enabled && (err = crm_jobs_start(app.jobs)) == 0)
        app.jobs_running = 1;

    uv_signal_init(&loop, &app._sigterm);
    uv_signal_init(&loop, &app._sigint);
    app._sigterm.data = app._sigint.data = &app;
    if (err == 0) {
        uv_signal_start(&app._sigterm, on_signal, SIGTERM);
        uv_signal_start(&app._sigint, on_signal, SIGINT);
        crm_ops_start(&app);
        const char *scheme = cfg->tls_cert != NULL ? "https" : "http";
        crm_log(CRM_LOG_INFO, "startup.listening", CRM_LOG_STR("url_scheme", scheme), CRM_LOG_STR("addr", addr),
                CRM_LOG_STR("env", crm_deploy_env_name(cfg->env)), CRM_LOG_STR("version", CRMD_VERSION),
                CRM_LOG_BOOL("jobs", app.jobs_running));
        printf("crmd %s listening on %s://%s (pid %d)\n", CRMD_VERSION, scheme, addr, (int)getpid());
        fflush(stdout);
        uv_run(&loop, UV_RUN_DEFAULT);
    } else {
        app._exit_code = 1;
        crm_log(CRM_LOG_ERROR, "startup.failed", CRM_LOG_STR("error", crm_err_str(err)));
        app.shutting_down = 1;
        app._stopping_parts = 1;
        if (app.jobs == NULL || crm_jobs_stop(app.jobs, 0, on_jobs_stopped, &app) != 0)
            part_stopped(&app);
        uv_run(&loop, UV_RUN_DEFAULT);
    }

    crm_http_server_dispose(app.http);
    crm_router_dispose(&app.router);
    /* Password operations still on the thread pool come back in the uv_run below; the hasher goes with the last. */
    crm_auth_free(&app);
    crm_contacts_free(&app);
    /* Let every close callback run; then the loop must close cleanly: a handle left open is a leak. */
    uv_run(&loop, UV_RUN_DEFAULT);
    crm_jobs_free(app.jobs);
    int rc = uv_loop_close(&loop);
    if (rc != 0) {
        uv_walk(&loop, report_handle, NULL);
        crm_log(CRM_LOG_ERROR, "shutdown.loop_not_closed", CRM_LOG_STR("error", uv_strerror(rc)));
        return 1;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    crm_log(CRM_LOG_INFO, "shutdown.complete", CRM_LOG_INT("exit_code", app._exit_code),
            CRM_LOG_INT("max_rss_kb", ru.ru_maxrss));
    return app._exit_code;
}
