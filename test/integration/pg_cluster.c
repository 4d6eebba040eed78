#include "pg_cluster.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "err.h"

static char g_pgsh[4096];
static char g_dir[96];
static char g_port[8];
static char g_user[64];
static char g_conninfo[512];
static char g_app_conninfo[512];
static pid_t g_owner_pid;
static volatile sig_atomic_t g_cleaned;

static double ms_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/* Runs argv (argv[0] is a path) and returns its exit status, or -1. Only fork, open, dup2, execv, _exit and waitpid:
 * all async-signal-safe, so the fatal-signal handler can clean up with it too. */
static int run_cmd(char *const argv[], int quiet)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (quiet) {
            int fd = open("/dev/null", O_WRONLY);
            if (fd >= 0) {
                dup2(fd, STDOUT_FILENO);
                close(fd);
            }
        }
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int crm_pg_cluster_pgsh(const char *cmd, const char *arg)
{
    char *argv[] = {"/bin/sh", g_pgsh, (char *)cmd, g_dir, (char *)arg, NULL};
    return run_cmd(argv, 1);
}

static int psql_db(const char *db, const char *sql)
{
    char *argv[] = {"/bin/sh", g_pgsh, "psql", g_dir, "-d", (char *)db, "-c", (char *)sql, NULL};
    return run_cmd(argv, 1);
}

int crm_pg_cluster_psql(const char *sql)
{
    return psql_db("crmd", sql);
}

static void (*volatile g_on_cleanup)(void);

void crm_pg_cluster_on_cleanup(void (*fn)(void))
{
    g_on_cleanup = fn;
}

void crm_pg_cluster_cleanup(void)
{
    if (g_cleaned || g_owner_pid != getpid())
        return;
    g_cleaned = 1;
    if (g_on_cleanup != NULL)
        g_on_cleanup();
    if (g_dir[0] != '\0') {
        crm_pg_cluster_pgsh("stop", "immediate");
        char *argv[] = {"/bin/rm", "-rf", g_dir, NULL};
        run_cmd(argv, 1);
    }
}

void crm_pg_cluster_disown(void)
{
    g_owner_pid = 0;
}

static void on_fatal_signal(int sig)
{
    crm_pg_cluster_cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_cleanup(void)
{
    atexit(crm_pg_cluster_cleanup);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_fatal_signal;
    sigemptyset(&sa.sa_mask);
    int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGABRT};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); ++i)
        sigaction(sigs[i], &sa, NULL);
    /* Crashes: only where nobody else handles them. AddressSanitizer's handler reports the crash and then aborts,
     * which reaches the SIGABRT handler above. */
    int crashes[] = {SIGSEGV, SIGBUS};
    for (size_t i = 0; i < sizeof(crashes) / sizeof(crashes[0]); ++i) {
        struct sigaction old;
        if (sigaction(crashes[i], NULL, &old) == 0 && !(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_DFL)
            sigaction(crashes[i], &sa, NULL);
    }
}

/* A port the kernel says is free right now: the socket's name depends on it even without TCP. */
static int pick_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) != 0) {
        fprintf(stderr, "pg_cluster: finding a free port: %s\n", strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    snprintf(g_port, sizeof(g_port), "%u", ntohs(sin.sin_port));
    close(fd);
    return 0;
}

int crm_pg_cluster_start(const char *tag, unsigned flags)
{
    const char *root = getenv("CRMD_SOURCE_ROOT");
    if (root == NULL || root[0] == '\0') {
        fprintf(stderr, "pg_cluster: CRMD_SOURCE_ROOT must name the repository (for test/tools/pg.sh)\n");
        return -1;
    }
    snprintf(g_pgsh, sizeof(g_pgsh), "%s/test/tools/pg.sh", root);
    if (access(g_pgsh, R_OK) != 0) {
        fprintf(stderr, "pg_cluster: cannot read %s: %s\n", g_pgsh, strerror(errno));
        return -1;
    }
    snprintf(g_dir, sizeof(g_dir), "/tmp/crmd-test-%.32s.XXXXXX", tag);
    if (mkdtemp(g_dir) == NULL) {
        fprintf(stderr, "pg_cluster: mkdtemp: %s\n", strerror(errno));
        g_dir[0] = '\0';
        return -1;
    }
    g_owner_pid = getpid();
    install_cleanup();
    /* Durability is not under test; this makes initdb and the writes fast on a shared machine. */
    setenv("PG_FSYNC", "off", 1);
    setenv("PG_SYNCHRONOUS_COMMIT", "off", 1);
    if (getenv("PGPORT") != NULL) {
        snprintf(g_port, sizeof(g_port), "%s", getenv("PGPORT"));
    } else {
        if (pick_port() != 0)
            return -1;
        setenv("PGPORT", g_port, 1);
    }
    if (flags & CRM_PG_CLUSTER_TCP) {
        setenv("PG_LISTEN_ADDRESSES", "127.0.0.1", 1);
        setenv("PG_AUTH_HOST", "trust", 1);
    }
    if (crm_pg_cluster_pgsh("init", NULL) != 0) {
        fprintf(stderr, "pg_cluster: pg.sh init %s failed (see its output above)\n", g_dir);
        return -1;
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (crm_pg_cluster_pgsh("start", NULL) != 0) {
        fprintf(stderr, "pg_cluster: pg.sh start %s failed (see its output above)\n", g_dir);
        return -1;
    }
    printf("figure: cluster %s started in %.0f ms\n", g_dir, ms_since(&t0));
    if (geteuid() == 0) {
        snprintf(g_user, sizeof(g_user), "postgres");
    } else {
        struct passwd *pw = getpwuid(geteuid());
        if (pw == NULL) {
            fprintf(stderr, "pg_cluster: no passwd entry for uid %u\n", (unsigned)geteuid());
            return -1;
        }
        snprintf(g_user, sizeof(g_user), "%s", pw->pw_name);
    }
    snprintf(g_conninfo, sizeof(g_conninfo), "host=%s/run port=%s user=%s dbname=crmd", g_dir, g_port, g_user);
    snprintf(g_app_conninfo, sizeof(g_app_conninfo), "host=%s/run port=%s user=crmd_app dbname=crmd", g_dir, g_port);
    return 0;
}

int crm_pg_cluster_migrate(void)
{
    if (psql_db("postgres", "CREATE DATABASE crmd") != 0) {
        fprintf(stderr, "pg_cluster: CREATE DATABASE crmd failed\n");
        return -1;
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    crm_migrate_report_t rep;
    memset(&rep, 0, sizeof(rep));
    int err = crm_migrate_apply(g_conninfo, crm_migrations, crm_migrations_count, 30000, &rep);
    if (err != 0) {
        fprintf(stderr, "pg_cluster: migrations failed (%s): %s\n", crm_err_name(err), rep.error);
        return -1;
    }
    printf("figure: %zu migrations applied in %.0f ms (latest %d)\n", rep.applied_now, ms_since(&t0), rep.latest);
    return 0;
}

const char *crm_pg_cluster_dir(void)
{
    return g_dir;
}

const char *crm_pg_cluster_port(void)
{
    return g_port;
}

const char *crm_pg_cluster_conninfo(void)
{
    return g_conninfo;
}

const char *crm_pg_cluster_app_conninfo(void)
{
    return g_app_conninfo;
}

PGconn *crm_pg_cluster_connect(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "pg_cluster: connecting with \"%s\": %s", conninfo, PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    return c;
}

int crm_pg_cluster_value(PGconn *c, const char *sql, char *out, size_t cap)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        fprintf(stderr, "pg_cluster: \"%s\": %s", sql, PQresultErrorMessage(r));
        PQclear(r);
        return -1;
    }
    const char *v = st == PGRES_TUPLES_OK && PQntuples(r) > 0 && PQnfields(r) > 0 && !PQgetisnull(r, 0, 0)
                        ? PQgetvalue(r, 0, 0)
                        : "";
    snprintf(out, cap, "%s", v);
    PQclear(r);
    return 0;
}
