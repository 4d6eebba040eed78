/*
 * crmd's configuration: every CRMD_* variable, its default, and the refusals that apply in production
 * (DESIGN.md §6).
 *
 * crm_config_load reads every variable in one pass and records every problem in the crm_env_t, so
 * `crmd check-config` and start-up print the complete list at once (crm_env_print_problems) instead of failing
 * one variable per attempt. crm_config_vars is the single list of variables, for `crmd --help` and the README.
 *
 * Start-up only: crm_config_load calls access(2) on the TLS files and must not run on the loop thread.
 */
#ifndef CRM_CONFIG_H
#define CRM_CONFIG_H

#include "env.h"
#include "log.h"

#include <stddef.h>
#include <stdint.h>

typedef enum { CRM_ENV_DEVELOPMENT = 0, CRM_ENV_TEST, CRM_ENV_PRODUCTION } crm_deploy_env_t;

/*
 * The loaded configuration. The const char * members point into the lookup function's storage (the process
 * environment in crmd) and are not owned; they stay valid while that storage does (see env.h). The rest is
 * copied in.
 */
typedef struct st_crm_config_t {
    crm_deploy_env_t env; /* CRMD_ENV development|test|production, default development */
    char listen_host[256];
    uint16_t listen_port;            /* CRMD_LISTEN, default 127.0.0.1:8080; IPv6 without brackets */
    const char *tls_cert;            /* CRMD_TLS_CERT, PEM chain file, or NULL */
    const char *tls_key;             /* CRMD_TLS_KEY, PEM key file, or NULL; set together with tls_cert or not at all */
    int behind_proxy;                /* CRMD_BEHIND_PROXY, default 0: a TLS-terminating proxy forwards to crmd */
    char database_url[1024];         /* CRMD_DATABASE_URL: libpq connection string of the serving role */
    char migrate_database_url[1024]; /* CRMD_MIGRATE_DATABASE_URL: the role that runs migrations; "" if none */
    int migrate_on_start;            /* CRMD_MIGRATE, default 1 */
    int db_pool_size;                /* CRMD_DB_POOL_SIZE 1..256, default 4 */
    int db_pipeline_depth;           /* CRMD_DB_PIPELINE_DEPTH 1..1024, default 128: units in flight per connection */
    int db_queue_max;                /* CRMD_DB_QUEUE_MAX 0..1000000, default 1024 */
    int db_queue_timeout_ms;         /* CRMD_DB_QUEUE_TIMEOUT_MS 1..60000, default 1000 */
    int db_statement_timeout_ms;     /* CRMD_DB_STATEMENT_TIMEOUT_MS 1..600000, default 5000 */
    int db_connect_timeout_ms;       /* CRMD_DB_CONNECT_TIMEOUT_MS 100..60000, default 5000 */
    int db_breaker_open_ms;          /* CRMD_DB_BREAKER_OPEN_MS 100..600000, default 5000 */
    int request_timeout_ms;          /* CRMD_REQUEST_TIMEOUT_MS 1..600000, default 10000 */
    int http_idle_timeout_ms;        /* CRMD_HTTP_IDLE_TIMEOUT_MS 1000..3600000, default 10000 */
    int64_t max_body_bytes;          /* CRMD_MAX_BODY_BYTES 1..67108864, default 1048576 */
    int max_connections;             /* CRMD_MAX_CONNECTIONS 1..1000000, default 10000 */
    const char *operator_token;      /* CRMD_OPERATOR_TOKEN or NULL (ops endpoints then answer 401 to everyone) */
    int shutdown_grace_ms;           /* CRMD_SHUTDOWN_GRACE_MS 0..600000, default 10000 */
    crm_log_level_t log_level;       /* CRMD_LOG_LEVEL debug|info|warn|error|off, default info */
    int access_log;                  /* CRMD_ACCESS_LOG, default 1 */

    /* Outbound calls (lib/httpc). Every upstream base URL is configurable so that tests point at the fakes;
     * the defaults are the real services. No trailing slash. */
    const char *google_oauth_url;    /* CRMD_GOOGLE_OAUTH_URL */
    const char *gmail_api_url;       /* CRMD_GMAIL_API_URL */
    const char *stripe_api_url;      /* CRMD_STRIPE_API_URL */
    const char *docusign_api_url;    /* CRMD_DOCUSIGN_API_URL */
    const char *smtp_url;            /* CRMD_SMTP_URL smtp://host[:port] or smtps://host[:port] */
    const char *smtp_username;       /* CRMD_SMTP_USERNAME or NULL (no AUTH) */
    const char *smtp_password;       /* CRMD_SMTP_PASSWORD or NULL */
    const char *mail_from;           /* CRMD_MAIL_FROM, the From of every mail crmd sends */
    const char *upstream_ca_file;    /* CRMD_UPSTREAM_CA_FILE: PEM CAs to trust instead of the system store */
    int upstream_max_in_flight;      /* CRMD_UPSTREAM_MAX_IN_FLIGHT 1..4096, default 64, per upstream */
    int upstream_queue_max;          /* CRMD_UPSTREAM_QUEUE_MAX 0..1000000, default 1024, per upstream */
    int upstream_connect_timeout_ms; /* CRMD_UPSTREAM_CONNECT_TIMEOUT_MS 100..60000, default 5000 */
    int upstream_max_attempts;       /* CRMD_UPSTREAM_MAX_ATTEMPTS 1..10, default 3 */
    int upstream_breaker_open_ms;    /* CRMD_UPSTREAM_BREAKER_OPEN_MS 100..600000, default 30000 */

    /* The job queue (lib/jobs). */
    int jobs_enabled;         /* CRMD_JOBS, default 1: this process runs jobs (0: it only enqueues them) */
    int jobs_concurrency;     /* CRMD_JOBS_CONCURRENCY 1..4096, default 64 */
    int jobs_lease_ms;        /* CRMD_JOBS_LEASE_MS 1000..3600000, default 30000 */
    int jobs_poll_ms;         /* CRMD_JOBS_POLL_MS 10..60000, default 500 */
    int jobs_backoff_base_ms; /* CRMD_JOBS_BACKOFF_BASE_MS 10..3600000, default 1000 */
    int jobs_backoff_max_ms;  /* CRMD_JOBS_BACKOFF_MAX_MS 10..86400000, default 3600000 */
    int mail_timeout_ms;      /* CRMD_MAIL_TIMEOUT_MS 1000..600000, default 15000: one SMTP submission */

    /* Accounts and sessions (app/auth). */
    const char *jwt_keys;        /* CRMD_JWT_KEYS kid:base64key,...; a published development key outside production */
    const char *trusted_proxies; /* CRMD_TRUSTED_PROXIES ip[/prefix],... or NULL */
    const char *public_url;      /* CRMD_PUBLIC_URL, base of links in mail */
    int access_token_ttl_s;      /* CRMD_ACCESS_TOKEN_TTL_S 60..86400, default 900 */
    int refresh_idle_s;          /* CRMD_REFRESH_IDLE_S, default 14 days */
    int refresh_absolute_s;      /* CRMD_REFRESH_ABSOLUTE_S, default 30 days */
    int password_max_in_flight;  /* CRMD_PASSWORD_MAX_IN_FLIGHT 1..4096, default 16 */
    int auth_cache_ms;           /* CRMD_AUTH_CACHE_MS 0..60000, default 2000 */
    int ratelimit_auth_per_min;  /* CRMD_RATELIMIT_AUTH_PER_MIN, default 30 */
    int ratelimit_api_per_min;   /* CRMD_RATELIMIT_API_PER_MIN, default 6000 */
} crm_config_t;

/*
 * Fills c from e's lookup function and records every problem in e. Every CRMD_* variable is read on every call,
 * whatever the others say, so the list of problems is complete. Returns 0, or CRM_E_CONFIG when e holds any error
 * (including errors recorded before the call); warnings alone do not fail. c is filled in either case: the
 * default stands in for each bad number, boolean, name or address, and a bad or missing database URL is left "".
 *
 * cwd is the absolute working directory, used for the embedded default outside production:
 *   CRMD_DATABASE_URL         postgresql:///crmd?host=<cwd>/var/pg/run&user=crmd_app
 *   CRMD_MIGRATE_DATABASE_URL postgresql:///crmd?host=<cwd>/var/pg/run&user=postgres
 * (cwd percent-encoded as needed). With cwd NULL or relative there is no default and an unset URL is an error.
 *
 * Checked in every environment: values parse and are in range; TLS cert and key come together and are readable;
 * the database URLs parse with PQconninfoParse, fit their buffers and carry valid ports and a valid sslmode if
 * any; a set operator token that is weak is a warning. A CRMD_ENV that is not recognised is an error and validation
 * continues with the development rules.
 *
 * With CRMD_ENV=production, additionally errors: CRMD_DATABASE_URL unset; CRMD_MIGRATE_DATABASE_URL unset while
 * CRMD_MIGRATE=1; CRMD_OPERATOR_TOKEN unset or weak (crm_secret_is_weak, 32 bytes); neither TLS file set while
 * CRMD_BEHIND_PROXY is not 1; a database URL with sslmode disable or allow that reaches any non-loopback host
 * or hostaddr. Warnings: sslmode unset or prefer (may fall back to plaintext) or require (does not authenticate
 * the server) towards a non-loopback host. Every host and hostaddr entry counts (comma-separated lists
 * included); an empty entry means libpq's default unix socket. Where the URL has no host or hostaddr, libpq takes
 * them from a service (the URL's `service` or PGSERVICE) or from PGHOST/PGHOSTADDR, and where it has no sslmode,
 * from PGSSLMODE, so those are read through e as well. A service's pg_service.conf entry is not inspected: its
 * hosts are judged non-loopback. Also a warning: both URLs naming the same user, since the serving role must not
 * own the schema (DESIGN.md §3, invariant 5).
 *
 * No problem message contains a database URL, a password or the operator token. Host names may appear.
 */
int crm_config_load(crm_config_t *c, crm_env_t *e, const char *cwd);

/*
 * Records a warning in e for each CRMD_* entry of envp ("NAME=value" strings, as in environ) that crmd does not
 * read, suggesting the closest known name when one is near: a misspelt variable otherwise goes unnoticed and
 * its default silently applies. Values are never printed.
 */
void crm_config_warn_unknown(crm_env_t *e, char *const *envp);

typedef struct {
    const char *name;
    const char *default_text; /* human-readable default; "(none)" when unset by default */
    const char *help;         /* one sentence, with the accepted range or values */
} crm_config_var_t;

/* Every variable crm_config_load reads, in a stable order: the single source for `crmd --help` and the README. */
extern const crm_config_var_t crm_config_vars[];
extern const size_t crm_config_nvars;

/* "development", "test" or "production"; "unknown" for any other value. */
const char *crm_deploy_env_name(crm_deploy_env_t e);

#endif
