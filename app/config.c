#include "config.h"

#include "auth/auth.h"
#include "err.h"
#include "jwt.h"
#include "mail/address.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* An operator token guards /metrics and /health/database; 32 bytes is the usual floor for a bearer secret. */
#define TOKEN_MIN_BYTES 32

/* The real services; tests point these at test/fakes. */
#define DEFAULT_GOOGLE_OAUTH_URL "https://oauth2.googleapis.com"
#define DEFAULT_GMAIL_API_URL    "https://gmail.googleapis.com"
#define DEFAULT_STRIPE_API_URL   "https://api.stripe.com"
#define DEFAULT_DOCUSIGN_API_URL "https://www.docusign.net/restapi"
#define DEFAULT_SMTP_URL         "smtp://127.0.0.1:25"
/* .localhost is reserved (RFC 6761) and, unlike a bare "localhost", has the two labels a Message-ID domain needs. */
#define DEFAULT_MAIL_FROM  "crmd <crmd@crmd.localhost>"
#define DEFAULT_PUBLIC_URL "http://127.0.0.1:8080"
/* Outside production only: a published key, refused in production. base64 of "crmd development key, not a secret!" */
#define DEV_JWT_KEY  "Y3JtZCBkZXZlbG9wbWVudCBrZXksIG5vdCBhIHNlY3JldCE="
#define DEV_JWT_KEYS "dev:" DEV_JWT_KEY

/* Host names quoted back in messages are cut to this length. */
#define HOST_EXCERPT_MAX 40

/*
 * The integer variables, each written once: crm_config_load reads them from this list and crm_config_vars
 * documents them from it, so the help text's range and default cannot drift from what is enforced.
 * X(name, field, min, max, default, help)
 */
#define CRM_CONFIG_INT_VARS(X)                                                                                         \
    X("CRMD_DB_POOL_SIZE", db_pool_size, 1, 256, 4, "PostgreSQL connections in the pool")                              \
    X("CRMD_DB_PIPELINE_DEPTH", db_pipeline_depth, 1, 1024, 128, "Units of work in flight per connection")             \
    X("CRMD_DB_QUEUE_MAX", db_queue_max, 0, 1000000, 1024,                                                             \
      "Units of work waiting for a connection before new ones are shed with 503")                                      \
    X("CRMD_DB_QUEUE_TIMEOUT_MS", db_queue_timeout_ms, 1, 60000, 1000,                                                 \
      "Longest wait for a connection, in milliseconds, before 503")                                                    \
    X("CRMD_DB_STATEMENT_TIMEOUT_MS", db_statement_timeout_ms, 1, 600000, 5000,                                        \
      "Longest a unit of work may run in PostgreSQL, in milliseconds")                                                 \
    X("CRMD_DB_CONNECT_TIMEOUT_MS", db_connect_timeout_ms, 100, 60000, 5000,                                           \
      "Longest a PostgreSQL connection attempt may take, in milliseconds")                                             \
    X("CRMD_DB_BREAKER_OPEN_MS", db_breaker_open_ms, 100, 600000, 5000,                                                \
      "How long the PostgreSQL circuit breaker stays open before a trial call, in milliseconds")                       \
    X("CRMD_REQUEST_TIMEOUT_MS", request_timeout_ms, 1, 600000, 10000,                                                 \
      "Deadline of a whole HTTP request, in milliseconds")                                                             \
    X("CRMD_HTTP_IDLE_TIMEOUT_MS", http_idle_timeout_ms, 1000, 3600000, 10000,                                         \
      "How long an idle HTTP connection is kept open, in milliseconds")                                                \
    X("CRMD_MAX_BODY_BYTES", max_body_bytes, 1, 67108864, 1048576,                                                     \
      "Default limit on a request body, in bytes (routes may set lower ones)")                                         \
    X("CRMD_MAX_CONNECTIONS", max_connections, 1, 1000000, 10000, "Simultaneous client connections accepted")          \
    X("CRMD_SHUTDOWN_GRACE_MS", shutdown_grace_ms, 0, 600000, 10000,                                                   \
      "How long in-flight requests may finish after SIGTERM, in milliseconds")                                         \
    X("CRMD_UPSTREAM_MAX_IN_FLIGHT", upstream_max_in_flight, 1, 4096, 64,                                              \
      "Outbound requests in progress at once, per upstream; more wait in a bounded queue")                             \
    X("CRMD_UPSTREAM_QUEUE_MAX", upstream_queue_max, 0, 1000000, 1024,                                                 \
      "Outbound requests waiting for a slot, per upstream, before new ones are refused")                               \
    X("CRMD_UPSTREAM_CONNECT_TIMEOUT_MS", upstream_connect_timeout_ms, 100, 60000, 5000,                               \
      "Longest an outbound connection attempt may take, in milliseconds")                                              \
    X("CRMD_UPSTREAM_MAX_ATTEMPTS", upstream_max_attempts, 1, 10, 3,                                                   \
      "Attempts per outbound request that may be repeated (idempotent, or with an idempotency key)")                   \
    X("CRMD_UPSTREAM_BREAKER_OPEN_MS", upstream_breaker_open_ms, 100, 600000, 30000,                                   \
      "How long an upstream's circuit breaker stays open before a trial call, in milliseconds")                        \
    X("CRMD_JOBS_CONCURRENCY", jobs_concurrency, 1, 4096, 64, "Jobs this process runs at once")                        \
    X("CRMD_JOBS_LEASE_MS", jobs_lease_ms, 1000, 3600000, 30000,                                                       \
      "Lease on a claimed job, renewed while it runs; a crashed process's jobs run again after it expires")            \
    X("CRMD_JOBS_POLL_MS", jobs_poll_ms, 10, 60000, 500, "How often an idle job runner looks for due jobs, in ms")     \
    X("CRMD_JOBS_BACKOFF_BASE_MS", jobs_backoff_base_ms, 10, 3600000, 1000,                                            \
      "A failed job waits up to this before its second attempt; the cap doubles with every attempt (full jitter)")     \
    X("CRMD_JOBS_BACKOFF_MAX_MS", jobs_backoff_max_ms, 10, 86400000, 3600000,                                          \
      "The longest wait between two attempts of a job, in milliseconds")                                               \
    X("CRMD_MAIL_TIMEOUT_MS", mail_timeout_ms, 1000, 600000, 15000,                                                    \
      "Deadline of one SMTP submission, in milliseconds; at most two thirds of CRMD_JOBS_LEASE_MS apply")              \
    X("CRMD_ACCESS_TOKEN_TTL_S", access_token_ttl_s, 60, 86400, 900, "Lifetime of an access token, in seconds")        \
    X("CRMD_REFRESH_IDLE_S", refresh_idle_s, 300, 31622400, 1209600,                                                   \
      "A session (refresh-token family) ends when unused this long, in seconds")                                       \
    X("CRMD_REFRESH_ABSOLUTE_S", refresh_absolute_s, 3600, 31622400, 2592000,                                          \
      "Absolute lifetime of a session, in seconds, however often it is refreshed")                                     \
    X("CRMD_PASSWORD_MAX_IN_FLIGHT", password_max_in_flight, 1, 4096, 16,                                              \
      "argon2id operations queued and running at once; beyond it requests that need one answer 503 with Retry-After")  \
    X("CRMD_AUTH_CACHE_MS", auth_cache_ms, 0, 60000, 2000,                                                             \
      "How long a process trusts its cached check that a user is active and what their role allows, in milliseconds")  \
    X("CRMD_RATELIMIT_AUTH_PER_MIN", ratelimit_auth_per_min, 1, 1000000, 30,                                           \
      "Requests per minute per client address to POST /v1/auth/*, with a burst of the same number")                    \
    X("CRMD_RATELIMIT_API_PER_MIN", ratelimit_api_per_min, 1, 1000000, 6000,                                           \
      "Requests per minute per client address to the other /v1 routes, with a burst of the same number")

#define CRM_CONFIG_INT_ENTRY(name, field, min, max, def, help) {name, #def, help " (" #min ".." #max ")"},
#define CRM_CONFIG_INT_LOAD(name, field, min, max, def, help)  c->field = crm_env_int(e, name, def, min, max);

const crm_config_var_t crm_config_vars[] = {
    {"CRMD_ENV", "development",
     "development, test or production; production refuses missing or weak secrets and plaintext database links"},
    {"CRMD_LISTEN", "127.0.0.1:8080", "Address to listen on, host:port, IPv6 in brackets as in [::]:8080"},
    {"CRMD_TLS_CERT", "(none)", "PEM certificate chain file for HTTPS; set together with CRMD_TLS_KEY"},
    {"CRMD_TLS_KEY", "(none)", "PEM private key file for HTTPS; set together with CRMD_TLS_CERT"},
    {"CRMD_BEHIND_PROXY", "0",
     "1 when a TLS-terminating proxy forwards to crmd, which lets production run without CRMD_TLS_CERT"},
    {"CRMD_DATABASE_URL", "postgresql:///crmd?host=$PWD/var/pg/run&user=crmd_app outside production",
     "libpq URI or key=value string of the serving role (no BYPASSRLS, not the table owner); required in "
     "production, where a remote host needs sslmode=verify-full"},
    {"CRMD_MIGRATE_DATABASE_URL", "postgresql:///crmd?host=$PWD/var/pg/run&user=postgres outside production",
     "libpq URI or key=value string of the role that owns the schema and runs migrations; required in production "
     "when CRMD_MIGRATE=1"},
    {"CRMD_MIGRATE", "1", "1 to apply pending migrations at start-up, 0 to leave them to a separate step"},
    {"CRMD_OPERATOR_TOKEN", "(none)",
     "Bearer token for /metrics and /health/database, at least 32 random bytes (openssl rand -hex 32); required in "
     "production; unset, those endpoints answer 401"},
    {"CRMD_LOG_LEVEL", "info", "debug, info, warn, error or off"},
    {"CRMD_ACCESS_LOG", "1", "1 to log one line per HTTP request"},
    {"CRMD_GOOGLE_OAUTH_URL", DEFAULT_GOOGLE_OAUTH_URL,
     "Base URL of Google's OAuth 2.0 endpoints; https in production"},
    {"CRMD_GMAIL_API_URL", DEFAULT_GMAIL_API_URL, "Base URL of the Gmail API; https in production"},
    {"CRMD_STRIPE_API_URL", DEFAULT_STRIPE_API_URL, "Base URL of the Stripe API; https in production"},
    {"CRMD_DOCUSIGN_API_URL", DEFAULT_DOCUSIGN_API_URL, "Base URL of the DocuSign eSignature API; https in production"},
    {"CRMD_SMTP_URL", DEFAULT_SMTP_URL " outside production",
     "Mail relay, smtp://host[:port] (STARTTLS when offered, required with credentials) or smtps://host[:port] "
     "(implicit TLS); required in production, where a remote relay needs smtps:// or credentials"},
    {"CRMD_SMTP_USERNAME", "(none)", "SMTP AUTH user name; unset, no AUTH"},
    {"CRMD_SMTP_PASSWORD", "(none)", "SMTP AUTH password; sent only over TLS"},
    {"CRMD_MAIL_FROM", DEFAULT_MAIL_FROM " outside production",
     "From address of the mail crmd sends, addr@domain or Name <addr@domain>; required in production"},
    {"CRMD_UPSTREAM_CA_FILE", "(none)",
     "PEM file of CA certificates to trust for outbound TLS instead of the system store"},
    {"CRMD_JOBS", "1", "1 to run queued jobs in this process, 0 to only enqueue them (another process runs them)"},
    {"CRMD_JWT_KEYS", "a fixed development key outside production",
     "Access-token keys, kid:base64key,... (each key at least 32 random bytes; the first signs, all verify); "
     "required in production, which refuses the development key and weak keys"},
    {"CRMD_TRUSTED_PROXIES", "(none)",
     "Comma-separated addresses or CIDRs of proxies whose X-Forwarded-For is believed; the rightmost hop that is "
     "not one of them is the client"},
    {"CRMD_PUBLIC_URL", DEFAULT_PUBLIC_URL " outside production",
     "Base URL of the links in mails (verification, password reset, invitations); https:// and required in "
     "production"},
    CRM_CONFIG_INT_VARS(CRM_CONFIG_INT_ENTRY)};

const size_t crm_config_nvars = sizeof(crm_config_vars) / sizeof(crm_config_vars[0]);

static const char *const deploy_env_names[] = {"development", "test", "production"};
static const char *const log_level_names[] = {"debug", "info", "warn", "error", "off"};

const char *crm_deploy_env_name(crm_deploy_env_t e)
{
    if ((unsigned)e >= sizeof(deploy_env_names) / sizeof(deploy_env_names[0]))
        return "unknown";
    return deploy_env_names[e];
}

/*
 * The embedded default: the private cluster that the README's run command starts under <cwd>/var. The socket
 * directory goes into a URI query value, so everything but unreserved characters and '/' is percent-encoded
 * (a working directory may contain spaces, '&' or '%'). Fails when cwd is not absolute or the result is too long.
 */
static int build_default_url(char *out, size_t cap, const char *cwd, const char *user)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t len = 0, cwdlen;
    int n;

    if (cwd == NULL || cwd[0] != '/')
        return -1;
    cwdlen = strlen(cwd);
    while (cwdlen > 0 && cwd[cwdlen - 1] == '/')
        cwdlen--;
    n = snprintf(out, cap, "postgresql:///crmd?host=");
    if (n < 0 || (size_t)n >= cap)
        return -1;
    len = (size_t)n;
    for (size_t i = 0; i < cwdlen; i++) {
        unsigned char ch = (unsigned char)cwd[i];
        int keep = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                   strchr("-._~/", ch) != NULL;
        if (len + 4 > cap)
            return -1;
        if (keep) {
            out[len++] = (char)ch;
        } else {
            out[len++] = '%';
            out[len++] = hex[ch >> 4];
            out[len++] = hex[ch & 15];
        }
    }
    n = snprintf(out + len, cap - len, "/var/pg/run&user=%s", user);
    if (n < 0 || (size_t)n >= cap - len)
        return -1;
    return 0;
}

/*
 * Makes libpq's parse error safe to print. libpq quotes the fragment of the connection string it objects to, and
 * sometimes the whole string, which may hold a password; everything from the first quote that can carry such a
 * fragment to the last quote is therefore replaced. Only a leading one-character literal such as "=" is kept,
 * because in libpq's messages that first quoted item is always its own text or a single character. As a second
 * line of defence (a translated message might quote differently), anything non-ASCII or sharing six consecutive
 * bytes with the string itself is replaced by a generic text.
 */
static void redact_libpq_error(char *out, size_t cap, const char *msg, const char *url)
{
    static const char generic[] = "libpq could not parse it";
    const char *first, *cut, *last;
    size_t len, i;
    int n;

    if (msg == NULL)
        goto generic;
    len = strlen(msg);
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' ' || msg[len - 1] == '.'))
        len--;
    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)msg[i];
        if (ch < 0x20 || ch >= 0x7f)
            goto generic;
    }
    first = memchr(msg, '"', len);
    cut = first;
    if (first != NULL && (size_t)(first - msg) + 2 < len && strchr("=:/]", first[1]) != NULL && first[2] == '"')
        cut = memchr(first + 3, '"', len - (size_t)(first + 3 - msg));
    if (cut == NULL) {
        n = snprintf(out, cap, "%.*s", (int)len, msg);
    } else {
        last = cut;
        for (i = (size_t)(cut - msg) + 1; i < len; i++) {
            if (msg[i] == '"')
                last = msg + i;
        }
        n = snprintf(out, cap, "%.*s\"<redacted>\"%.*s", (int)(cut - msg), msg, (int)(len - (size_t)(last + 1 - msg)),
                     last + 1);
    }
    if (n < 0 || (size_t)n >= cap)
        goto generic;
    len = strlen(url);
    for (i = 0; i + 6 <= len; i++) {
        if (memmem(out, strlen(out), url + i, 6) != NULL)
            goto generic;
    }
    return;
generic:
    snprintf(out, cap, "%s", generic);
}

static const char *conninfo_get(const PQconninfoOption *opts, const char *keyword)
{
    for (; opts->keyword != NULL; opts++) {
        if (strcmp(opts->keyword, keyword) == 0)
            return opts->val != NULL && opts->val[0] != '\0' ? opts->val : NULL;
    }
    return NULL;
}

/*
 * Whether a name taken from a database URL may be quoted in a message. Host names, IP literals and service names
 * are not secret, but a password with an unescaped '@' makes libpq read the rest of it as the host
 * ("postgresql://u:pa@ss@db" gives host "ss@db"), so only names made of the characters that real ones use are
 * shown.
 */
static int is_showable_name(const char *s)
{
    return s[0] != '\0' && strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:") == strlen(s);
}

/*
 * Looks through a comma-separated libpq host or hostaddr list for an entry that leaves this machine and writes
 * `non-loopback host "<excerpt>"` about the first one into buf. An empty entry means libpq's default unix socket.
 */
static int find_remote_host(const char *list, char *buf, size_t cap)
{
    char entry[256];

    while (list != NULL) {
        const char *comma = strchr(list, ',');
        size_t len = comma != NULL ? (size_t)(comma - list) : strlen(list);
        if (len > 0 && list[0] != '/' && list[0] != '@') {
            int local = 0;
            if (len < sizeof(entry)) {
                memcpy(entry, list, len);
                entry[len] = '\0';
                local = crm_host_is_loopback(entry);
            }
            if (!local) {
                char shown[HOST_EXCERPT_MAX + 4];
                snprintf(entry, sizeof(entry), "%.*s", (int)(len < sizeof(entry) ? len : sizeof(entry) - 1), list);
                if (is_showable_name(entry))
                    snprintf(buf, cap, "non-loopback host \"%s\"",
                             crm_env_excerpt(shown, sizeof(shown), entry, HOST_EXCERPT_MAX));
                else
                    snprintf(buf, cap, "a non-loopback host");
                return 1;
            }
        }
        list = comma != NULL ? comma + 1 : NULL;
    }
    return 0;
}

/*
 * libpq checks ports only when connecting; checking here lets check-config report a bad one with everything else.
 * Each comma-separated entry is empty (the default port) or 1..65535.
 */
static int ports_valid(const char *list)
{
    while (list != NULL) {
        const char *comma = strchr(list, ',');
        size_t len = comma != NULL ? (size_t)(comma - list) : strlen(list);
        unsigned long port = 0;
        if (len > 5 || strspn(list, "0123456789") < len)
            return 0;
        for (size_t i = 0; i < len; i++)
            port = port * 10 + (unsigned long)(list[i] - '0');
        if (len > 0 && (port < 1 || port > 65535))
            return 0;
        list = comma != NULL ? comma + 1 : NULL;
    }
    return 1;
}

static const char *const sslmodes[] = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"};

static int sslmode_index(const char *mode)
{
    for (size_t i = 0; i < sizeof(sslmodes) / sizeof(sslmodes[0]); i++) {
        if (strcmp(mode, sslmodes[i]) == 0)
            return (int)i;
    }
    return -1;
}

/*
 * Production's rule for a database link: plaintext may only stay on this machine. Where the URL is silent, the
 * host and sslmode that libpq will actually use come from a service or the PG* variables, read through e.
 */
static void check_db_transport(crm_env_t *e, const char *var, const PQconninfoOption *opts)
{
    const char *host = conninfo_get(opts, "host"), *hostaddr = conninfo_get(opts, "hostaddr");
    const char *mode = conninfo_get(opts, "sslmode"), *from = "";
    char remote[HOST_EXCERPT_MAX + 64];
    int remote_found = 0, idx;

    if (host == NULL && hostaddr == NULL) {
        const char *service = conninfo_get(opts, "service");
        if (service == NULL)
            service = crm_env_str(e, "PGSERVICE", NULL);
        if (service != NULL) {
            char name[HOST_EXCERPT_MAX + 4];
            if (is_showable_name(service))
                snprintf(remote, sizeof(remote), "the hosts of service \"%s\" (not inspected)",
                         crm_env_excerpt(name, sizeof(name), service, 24));
            else
                snprintf(remote, sizeof(remote), "the hosts of a service (not inspected)");
            remote_found = 1;
        } else {
            host = crm_env_str(e, "PGHOST", NULL);
            hostaddr = crm_env_str(e, "PGHOSTADDR", NULL);
        }
    }
    if (!remote_found)
        remote_found =
            find_remote_host(host, remote, sizeof(remote)) || find_remote_host(hostaddr, remote, sizeof(remote));
    if (!remote_found)
        return;
    if (mode == NULL) {
        mode = crm_env_str(e, "PGSSLMODE", NULL);
        from = " (from PGSSLMODE)";
    }
    if (mode == NULL) {
        crm_env_problem(e, var, 1,
                        "sslmode is not set (libpq then uses prefer) and may fall back to plaintext with %s; use "
                        "sslmode=verify-full",
                        remote);
        return;
    }
    idx = sslmode_index(mode);
    if (idx < 0) {
        crm_env_problem(e, var, 0, "sslmode%s is not one of disable, allow, prefer, require, verify-ca, verify-full",
                        from);
    } else if (idx <= 1) {
        crm_env_problem(e, var, 0, "sslmode=%s%s permits plaintext to %s; production needs sslmode=verify-full", mode,
                        from, remote);
    } else if (idx == 2) {
        crm_env_problem(e, var, 1, "sslmode=prefer%s may fall back to plaintext with %s; use sslmode=verify-full", from,
                        remote);
    } else if (idx == 3) {
        crm_env_problem(e, var, 1,
                        "sslmode=require%s does not verify the certificate of %s unless a root CA file is present; "
                        "use sslmode=verify-full",
                        from, remote);
    }
}

/*
 * Reads one database URL into out (cap bytes) and the user it names, if any and if it fits, into out_user. Unset:
 * the embedded default outside production, an error in production when required, "" otherwise. Set: it must fit,
 * parse, and name valid ports and a known sslmode; in production its transport is checked too. The value itself
 * never reaches a message.
 */
static void load_db_url(crm_env_t *e, const char *var, char *out, size_t cap, char *out_user, size_t usercap,
                        crm_deploy_env_t env, int required, const char *required_why, const char *cwd,
                        const char *default_user)
{
    const char *v = crm_env_str(e, var, NULL), *mode, *user;
    PQconninfoOption *opts;
    char *err = NULL, why[160];
    size_t len;

    out[0] = '\0';
    out_user[0] = '\0';
    if (v == NULL) {
        if (env == CRM_ENV_PRODUCTION) {
            if (required)
                crm_env_problem(e, var, 0, "is required in production %s", required_why);
        } else if (build_default_url(out, cap, cwd, default_user) != 0) {
            out[0] = '\0';
            crm_env_problem(e, var, 0,
                            "is not set and the working directory cannot form the embedded default (not absolute, "
                            "or too long); set it");
        }
        return;
    }
    len = strlen(v);
    if (len >= cap) {
        crm_env_problem(e, var, 0, "is %zu bytes long; at most %zu are supported", len, cap - 1);
        return;
    }
    opts = PQconninfoParse(v, &err);
    if (opts == NULL) {
        redact_libpq_error(why, sizeof(why), err, v);
        crm_env_problem(e, var, 0, "is not a valid libpq connection string (URI or key=value): %s", why);
        PQfreemem(err);
        return;
    }
    mode = conninfo_get(opts, "sslmode");
    /* Values are not quoted back: a mangled URL can put any part of itself, password included, anywhere. */
    if (!ports_valid(conninfo_get(opts, "port")))
        crm_env_problem(e, var, 0, "port must be a number from 1 to 65535 (one per host)");
    if (mode != NULL && sslmode_index(mode) < 0)
        crm_env_problem(e, var, 0, "sslmode is not one of disable, allow, prefer, require, verify-ca, verify-full");
    else if (env == CRM_ENV_PRODUCTION)
        check_db_transport(e, var, opts);
    user = conninfo_get(opts, "user");
    if (user != NULL && strlen(user) < usercap)
        memcpy(out_user, user, strlen(user) + 1);
    memcpy(out, v, len + 1);
    PQconninfoFree(opts);
}

static void load_tls(crm_config_t *c, crm_env_t *e)
{
    static const char *const vars[2] = {"CRMD_TLS_CERT", "CRMD_TLS_KEY"};
    const char *paths[2];

    paths[0] = c->tls_cert = crm_env_str(e, vars[0], NULL);
    paths[1] = c->tls_key = crm_env_str(e, vars[1], NULL);
    for (int i = 0; i < 2; i++) {
        char shown[64];
        if (paths[i] == NULL) {
            if (paths[1 - i] != NULL)
                crm_env_problem(e, vars[i], 0, "must be set together with %s", vars[1 - i]);
            continue;
        }
        if (access(paths[i], R_OK) != 0)
            crm_env_problem(e, vars[i], 0, "cannot read \"%s\": %s",
                            crm_env_excerpt(shown, sizeof(shown), paths[i], 48), strerror(errno));
    }
}

static void load_operator_token(crm_config_t *c, crm_env_t *e)
{
    const char *why = NULL;

    c->operator_token = crm_env_str(e, "CRMD_OPERATOR_TOKEN", NULL);
    if (!crm_secret_is_weak(c->operator_token, TOKEN_MIN_BYTES, &why))
        return;
    /* Outside production an unset token only closes the ops endpoints; a weak one deserves a nudge. */
    if (c->env == CRM_ENV_PRODUCTION || c->operator_token != NULL)
        crm_env_problem(e, "CRMD_OPERATOR_TOKEN", c->env != CRM_ENV_PRODUCTION,
                        "must be at least %d bytes of random data (%s); generate one with: openssl rand -hex %d",
                        TOKEN_MIN_BYTES, why, TOKEN_MIN_BYTES);
}

/* Reads an upstream base URL: absolute, http(s) (https in production), no query or fragment, no credentials, no
 * trailing slash (paths are appended to it). */
static const char *load_upstream_url(crm_env_t *e, const char *var, const char *def, int prod)
{
    const char *v = crm_env_str(e, var, def);
    CURLU *u = curl_url();
    char *scheme = NULL, *query = NULL, *fragment = NULL, *user = NULL;
    if (u == NULL)
        return v;
    size_t len = strlen(v);
    if (curl_url_set(u, CURLUPART_URL, v, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        (strcmp(scheme, "https") != 0 && strcmp(scheme, "http") != 0))
        crm_env_problem(e, var, 0, "must be an absolute http:// or https:// URL");
    else if (prod && strcmp(scheme, "https") != 0)
        crm_env_problem(e, var, 0, "must be https:// in production");
    else if (curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK ||
             curl_url_get(u, CURLUPART_FRAGMENT, &fragment, 0) == CURLUE_OK ||
             curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK)
        crm_env_problem(e, var, 0, "must be a base URL without credentials, query or fragment");
    else if (len > 0 && v[len - 1] == '/')
        crm_env_problem(e, var, 0, "must not end with a slash");
    curl_free(scheme);
    curl_free(query);
    curl_free(fragment);
    curl_free(user);
    curl_url_cleanup(u);
    return v;
}

/* The mail relay: smtp:// or smtps://. In production a relay that is not on this host must be reached over TLS:
 * smtps://, or smtp:// with credentials (which makes STARTTLS mandatory). */
static void load_smtp(crm_config_t *c, crm_env_t *e, int prod)
{
    c->smtp_url = crm_env_str(e, "CRMD_SMTP_URL", prod ? NULL : DEFAULT_SMTP_URL);
    c->smtp_username = crm_env_str(e, "CRMD_SMTP_USERNAME", NULL);
    c->smtp_password = crm_env_str(e, "CRMD_SMTP_PASSWORD", NULL);
    if ((c->smtp_username == NULL) != (c->smtp_password == NULL))
        crm_env_problem(e, "CRMD_SMTP_USERNAME", 0, "must be set together with CRMD_SMTP_PASSWORD");
    if (c->smtp_url == NULL) {
        crm_env_problem(e, "CRMD_SMTP_URL", 0, "is required in production (the relay verification mail goes through)");
        return;
    }
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *user = NULL, *path = NULL;
    if (u == NULL)
        return;
    if (curl_url_set(u, CURLUPART_URL, c->smtp_url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        (strcmp(scheme, "smtp") != 0 && strcmp(scheme, "smtps") != 0) ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
        crm_env_problem(e, "CRMD_SMTP_URL", 0, "must be smtp://host[:port] or smtps://host[:port]");
    else if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK)
        crm_env_problem(e, "CRMD_SMTP_URL", 0, "must not carry credentials; use CRMD_SMTP_USERNAME/PASSWORD");
    else if (curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK && strcmp(path, "/") != 0 && path[0] != '\0')
        /* libcurl reads an SMTP URL's path as the EHLO name, which crmd takes from CRMD_MAIL_FROM. */
        crm_env_problem(e, "CRMD_SMTP_URL", 0, "must be smtp://host[:port] or smtps://host[:port], without a path");
    else if (prod && strcmp(scheme, "smtps") != 0 && c->smtp_username == NULL && !crm_host_is_loopback(host))
        crm_env_problem(e, "CRMD_SMTP_URL", 0,
                        "reaches a remote relay without TLS; use smtps://, or set credentials (STARTTLS is then "
                        "required)");
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_free(path);
    curl_url_cleanup(u);
    if (c->smtp_password != NULL && prod) {
        const char *why;
        if (crm_secret_is_weak(c->smtp_password, 8, &why))
            crm_env_problem(e, "CRMD_SMTP_PASSWORD", 0, "is a placeholder or too weak (%s)", why);
    }
}

static void load_outbound(crm_config_t *c, crm_env_t *e, int prod)
{
    c->google_oauth_url = load_upstream_url(e, "CRMD_GOOGLE_OAUTH_URL", DEFAULT_GOOGLE_OAUTH_URL, prod);
    c->gmail_api_url = load_upstream_url(e, "CRMD_GMAIL_API_URL", DEFAULT_GMAIL_API_URL, prod);
    c->stripe_api_url = load_upstream_url(e, "CRMD_STRIPE_API_URL", DEFAULT_STRIPE_API_URL, prod);
    c->docusign_api_url = load_upstream_url(e, "CRMD_DOCUSIGN_API_URL", DEFAULT_DOCUSIGN_API_URL, prod);
    load_smtp(c, e, prod);
    c->mail_from = crm_env_str(e, "CRMD_MAIL_FROM", prod ? NULL : DEFAULT_MAIL_FROM);
    crm_mail_address_list_t *from = NULL;
    if (c->mail_from == NULL)
        crm_env_problem(e, "CRMD_MAIL_FROM", 0, "is required in production (the From of verification mail)");
    else if (crm_mail_address_parse(c->mail_from, strlen(c->mail_from), NULL, &from) != 0 || from->count != 1 ||
             from->invalid != 0 || from->items[0].group != NULL || !crm_mail_address_is_valid(from->items[0].addr))
        crm_env_problem(e, "CRMD_MAIL_FROM", 0,
                        "must be one mailbox, addr@domain or Name <addr@domain>, with a domain of at least two labels");
    crm_mail_address_list_free(from);
    c->upstream_ca_file = crm_env_str(e, "CRMD_UPSTREAM_CA_FILE", NULL);
    if (c->upstream_ca_file != NULL && access(c->upstream_ca_file, R_OK) != 0) {
        char shown[64];
        crm_env_problem(e, "CRMD_UPSTREAM_CA_FILE", 0, "cannot read \"%s\": %s",
                        crm_env_excerpt(shown, sizeof(shown), c->upstream_ca_file, 48), strerror(errno));
    }
    c->jobs_enabled = crm_env_bool(e, "CRMD_JOBS", 1);
    if (c->jobs_backoff_max_ms < c->jobs_backoff_base_ms)
        crm_env_problem(e, "CRMD_JOBS_BACKOFF_MAX_MS", 0, "must not be less than CRMD_JOBS_BACKOFF_BASE_MS");
}

/* Access-token keys, trusted proxies and the public URL of mail links. */
static void load_auth(crm_config_t *c, crm_env_t *e, int prod)
{
    c->jwt_keys = crm_env_str(e, "CRMD_JWT_KEYS", prod ? NULL : DEV_JWT_KEYS);
    crm_jwt_keyring_t ring = {0};
    char why[160];
    if (c->jwt_keys == NULL) {
        crm_env_problem(e, "CRMD_JWT_KEYS", 0, "is required in production (generate a key: openssl rand -base64 32)");
    } else if (crm_jwt_keys_parse(c->jwt_keys, &ring, why, sizeof(why)) != 0) {
        crm_env_problem(e, "CRMD_JWT_KEYS", 0, "%s", why);
    } else if (prod) {
        /* Each key's base64 text is what an operator pasted: refuse the published one and obvious placeholders. */
        for (const char *p = c->jwt_keys; p != NULL && *p != '\0';) {
            const char *colon = strchr(p, ':'), *comma = strchr(p, ',');
            size_t len = comma != NULL ? (size_t)(comma - colon - 1) : strlen(colon + 1);
            char key[512];
            const char *weak;
            snprintf(key, sizeof(key), "%.*s", (int)(len < sizeof(key) ? len : sizeof(key) - 1), colon + 1);
            if (strcmp(key, DEV_JWT_KEY) == 0 || crm_secret_is_weak(key, 43, &weak))
                crm_env_problem(e, "CRMD_JWT_KEYS", 0,
                                "holds the development key or a placeholder; use random keys (openssl rand -base64 "
                                "32)");
            OPENSSL_cleanse(key, sizeof(key));
            p = comma != NULL ? comma + 1 : NULL;
        }
    }
    crm_jwt_keyring_free(&ring);

    c->trusted_proxies = crm_env_str(e, "CRMD_TRUSTED_PROXIES", NULL);
    crm_auth_net_t *nets = NULL;
    size_t n = 0;
    if (crm_auth_parse_proxies(c->trusted_proxies, &nets, &n) != 0)
        crm_env_problem(e, "CRMD_TRUSTED_PROXIES", 0, "must be addresses or CIDRs separated by commas, no spaces");
    free(nets);

    if (prod && crm_env_str(e, "CRMD_PUBLIC_URL", NULL) == NULL)
        crm_env_problem(e, "CRMD_PUBLIC_URL", 0, "is required in production (the base of links in mails)");
    else
        c->public_url = load_upstream_url(e, "CRMD_PUBLIC_URL", DEFAULT_PUBLIC_URL, prod);
}

int crm_config_load(crm_config_t *c, crm_env_t *e, const char *cwd)
{
    char serving_user[64], migrating_user[64];
    int prod;

    memset(c, 0, sizeof(*c));
    c->env = (crm_deploy_env_t)crm_env_enum(
        e, "CRMD_ENV", deploy_env_names, sizeof(deploy_env_names) / sizeof(deploy_env_names[0]), CRM_ENV_DEVELOPMENT);
    prod = c->env == CRM_ENV_PRODUCTION;
    crm_env_hostport(e, "CRMD_LISTEN", "127.0.0.1:8080", c->listen_host, sizeof(c->listen_host), &c->listen_port);
    load_tls(c, e);
    c->behind_proxy = crm_env_bool(e, "CRMD_BEHIND_PROXY", 0);
    c->migrate_on_start = crm_env_bool(e, "CRMD_MIGRATE", 1);
    load_db_url(e, "CRMD_DATABASE_URL", c->database_url, sizeof(c->database_url), serving_user, sizeof(serving_user),
                c->env, 1, "(the serving role's connection string)", cwd, "crmd_app");
    load_db_url(e, "CRMD_MIGRATE_DATABASE_URL", c->migrate_database_url, sizeof(c->migrate_database_url),
                migrating_user, sizeof(migrating_user), c->env, c->migrate_on_start,
                "when CRMD_MIGRATE=1 (the schema owner's connection string); or set CRMD_MIGRATE=0", cwd, "postgres");
    /* Tenant isolation rests on the serving role not owning the tables (DESIGN.md §3, invariant 5). Only users
     * written in both URLs are compared: an omitted one comes from PGUSER or the OS account and is not known here. */
    if (prod && serving_user[0] != '\0' && strcmp(serving_user, migrating_user) == 0)
        crm_env_problem(e, "CRMD_DATABASE_URL", 1,
                        "connects as the same user as CRMD_MIGRATE_DATABASE_URL; serve with a role that does not own "
                        "the schema, or row-level security can be bypassed");
    CRM_CONFIG_INT_VARS(CRM_CONFIG_INT_LOAD)
    load_operator_token(c, e);
    c->log_level = (crm_log_level_t)crm_env_enum(e, "CRMD_LOG_LEVEL", log_level_names,
                                                 sizeof(log_level_names) / sizeof(log_level_names[0]), CRM_LOG_INFO);
    c->access_log = crm_env_bool(e, "CRMD_ACCESS_LOG", 1);
    load_outbound(c, e, prod);
    load_auth(c, e, prod);
    if (prod && c->tls_cert == NULL && c->tls_key == NULL && !c->behind_proxy)
        crm_env_problem(e, "CRMD_TLS_CERT", 0,
                        "is not set: production serves HTTPS; set CRMD_TLS_CERT and CRMD_TLS_KEY, or set "
                        "CRMD_BEHIND_PROXY=1 when a TLS-terminating proxy forwards to crmd");
    return crm_env_count_errors(e) == 0 ? 0 : CRM_E_CONFIG;
}

/*
 * Case-insensitive edit distance between two short names, for "did you mean"; names longer than 64 bytes get no
 * suggestion.
 */
static size_t edit_distance(const char *a, size_t alen, const char *b)
{
    size_t row[65], blen = strlen(b);

    if (alen > 64 || blen > 64)
        return SIZE_MAX;
    for (size_t j = 0; j <= blen; j++)
        row[j] = j;
    for (size_t i = 1; i <= alen; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= blen; j++) {
            size_t up = row[j], best = diag + (tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]));
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    return row[blen];
}

void crm_config_warn_unknown(crm_env_t *e, char *const *envp)
{
    for (; envp != NULL && *envp != NULL; envp++) {
        const char *entry = *envp, *eq = strchr(entry, '='), *suggestion = NULL;
        size_t len = eq != NULL ? (size_t)(eq - entry) : strlen(entry), best = 3;
        char name[64], shown[64];
        int known = 0;

        if (strncmp(entry, "CRMD_", 5) != 0)
            continue;
        for (size_t i = 0; i < crm_config_nvars && !known; i++) {
            const char *candidate = crm_config_vars[i].name;
            size_t d;
            known = strlen(candidate) == len && memcmp(candidate, entry, len) == 0;
            d = edit_distance(entry, len, candidate);
            if (d < best) {
                best = d;
                suggestion = candidate;
            }
        }
        if (known)
            continue;
        snprintf(name, sizeof(name), "%.*s", (int)(len < sizeof(name) ? len : sizeof(name) - 1), entry);
        crm_env_excerpt(shown, sizeof(shown), name, 56);
        if (suggestion != NULL)
            crm_env_problem(e, NULL, 1, "unknown variable %s is ignored; did you mean %s?", shown, suggestion);
        else
            crm_env_problem(e, NULL, 1, "unknown variable %s is ignored", shown);
    }
}
