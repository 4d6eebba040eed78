/*
 * crmd — command line.
 *
 *   crmd [serve]        run the server (the default)
 *   crmd migrate        apply pending migrations and exit
 *   crmd check-config   print every configuration problem and exit non-zero if there is an error
 *   crmd routes         print every route (METHOD PATTERN), for tooling and the OpenAPI contract test
 *   crmd --help | --version
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "config.h"
#include "err.h"
#include "log.h"

extern char **environ;

#define LOG_BUFFER_BYTES (1u << 20)

static void usage(FILE *out)
{
    fprintf(out, "usage: crmd [serve | migrate | check-config | routes | --help | --version]\n\n"
                 "  serve          run the HTTP server (default); applies migrations first unless CRMD_MIGRATE=0\n"
                 "  migrate        apply pending schema migrations and exit\n"
                 "  check-config   validate the CRMD_* environment, print every problem, exit 1 on any error\n"
                 "  routes         print every route as METHOD PATTERN\n\n"
                 "Configuration (environment variables):\n");
    for (size_t i = 0; i < crm_config_nvars; ++i)
        fprintf(out, "  %-30s %s (default: %s)\n", crm_config_vars[i].name, crm_config_vars[i].help,
                crm_config_vars[i].default_text);
}

/* Loads the configuration, printing problems. Returns 0 when it has no errors. */
static int load_config(crm_config_t *cfg, int verbose_ok)
{
    static crm_env_t env;
    char cwd[4096];
    crm_env_init(&env, NULL, NULL);
    int err = crm_config_load(cfg, &env, getcwd(cwd, sizeof(cwd)));
    crm_config_warn_unknown(&env, environ);
    crm_env_print_problems(&env, stderr);
    if (err == 0 && verbose_ok)
        printf("configuration OK (%s)\n", crm_deploy_env_name(cfg->env));
    return err;
}

static int cmd_migrate(const crm_config_t *cfg)
{
    if (cfg->migrate_database_url[0] == '\0') {
        fprintf(stderr, "crmd migrate: CRMD_MIGRATE_DATABASE_URL is not set\n");
        return 1;
    }
    crm_migrate_report_t rep;
    int err = crm_migrate_apply(cfg->migrate_database_url, crm_migrations, crm_migrations_count, 60000, &rep);
    if (err != 0) {
        fprintf(stderr, "crmd migrate: %s\n", rep.error);
        return 1;
    }
    printf("migrations: %zu applied now, %zu applied in total, latest version %d", rep.applied_now, rep.applied_total,
           rep.latest);
    if (rep.unknown > 0)
        printf(", %zu applied by a newer release", rep.unknown);
    printf("\n");
    return 0;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "serve";
    if (argc > 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("crmd %s\n", CRMD_VERSION);
        return 0;
    }
    if (strcmp(cmd, "routes") == 0)
        return crm_app_print_routes(stdout) == 0 ? 0 : 1;
    int serve = strcmp(cmd, "serve") == 0, migrate = strcmp(cmd, "migrate") == 0;
    int check = strcmp(cmd, "check-config") == 0;
    if (!serve && !migrate && !check) {
        fprintf(stderr, "crmd: unknown command '%s'\n", cmd);
        usage(stderr);
        return 2;
    }
    crm_config_t cfg;
    if (load_config(&cfg, check) != 0)
        return 1;
    if (check)
        return 0;
    crm_log_set_level(cfg.log_level);
    if (migrate)
        return cmd_migrate(&cfg);
    if (crm_log_start(STDERR_FILENO, cfg.log_level, LOG_BUFFER_BYTES) != 0) {
        fprintf(stderr, "crmd: cannot start the log writer\n");
        return 1;
    }
    int rc = crm_app_run(&cfg);
    crm_log_stop();
    return rc;
}
