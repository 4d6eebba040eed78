/*
 * Typed reading of configuration from the environment (12-factor), collecting every problem instead of stopping
 * at the first one.
 *
 * A crm_env_t wraps a getenv-like function and a bounded list of problems. Each crm_env_<type> reader looks a
 * variable up, validates it, records a problem when the value is unusable and returns the default in that case,
 * so a caller reads all of its variables in one pass and then prints every problem at once (`crmd check-config`).
 * The lookup function is injectable so tests never touch the real environment.
 *
 * This module knows nothing about crmd: variable names, defaults and policies belong to the caller.
 *
 * Thread-safety: none. A crm_env_t is meant for start-up, on one thread, before the loop runs. Strings returned
 * by the readers are the lookup function's own (for getenv, the process environment): they stay valid as long
 * as that storage does, that is for the whole process unless someone calls setenv/putenv/unsetenv.
 */
#ifndef CRM_ENV_H
#define CRM_ENV_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Returns the value of name, or NULL when unset. Like getenv, the result must stay valid while it is in use. */
typedef const char *(*crm_env_get_fn)(void *ctx, const char *name);

/* The problem list holds at most this many entries; see crm_env_problem for what happens past it. */
#define CRM_ENV_MAX_PROBLEMS 64

typedef struct {
    const char *var;   /* the variable concerned (not owned; must outlive the crm_env_t), or NULL */
    char message[200]; /* what is wrong and how to fix it; never contains a secret value */
    int warning;       /* 1: reported but does not fail the configuration */
} crm_env_problem_t;

typedef struct st_crm_env_t {
    crm_env_get_fn get;
    void *ctx;
    size_t nproblems;
    crm_env_problem_t problems[CRM_ENV_MAX_PROBLEMS];
    size_t dropped; /* problems that did not fit in problems[] */
} crm_env_t;

/* Prepares e with an empty problem list. get == NULL means getenv (ctx is then ignored). */
void crm_env_init(crm_env_t *e, crm_env_get_fn get, void *ctx);

/*
 * Records a problem with var (a string that outlives e, normally a literal; NULL for none). The formatted message
 * is cut to fit crm_env_problem_t.message, ending in "..." when cut. Callers must never format a secret into it.
 *
 * When the list is full, an error takes the place of the most recent warning so that crm_env_count_errors stays
 * non-zero whenever any error was recorded; otherwise the new problem is dropped. Either way `dropped` counts
 * what was lost and crm_env_print_problems says so.
 */
void crm_env_problem(crm_env_t *e, const char *var, int warning, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The value of var, or def when var is unset or empty (an empty value counts as unset). Never records problems. */
const char *crm_env_str(crm_env_t *e, const char *var, const char *def);

/*
 * var as a decimal integer: an optional '-' then digits, nothing else (no spaces, no '+', no hex). Unset or empty
 * returns def. A malformed or out-of-range value records the error
 * "must be an integer between MIN and MAX (got "X")" and returns def. Requires min <= def <= max.
 */
int64_t crm_env_int(crm_env_t *e, const char *var, int64_t def, int64_t min, int64_t max);

/*
 * var as a boolean: 1/0, true/false, yes/no, on/off, case-insensitive. Unset or empty returns def; anything else
 * records an error and returns def.
 */
int crm_env_bool(crm_env_t *e, const char *var, int def);

/*
 * The index in names[0..n) of var's value, compared case-insensitively. Unset or empty → def; any other value
 * records an error listing the accepted names and returns def.
 */
int crm_env_enum(crm_env_t *e, const char *var, const char *const *names, size_t n, int def);

/*
 * var (or def when unset or empty) as "host:port": host is an IPv4 literal ("0.0.0.0"), a DNS name ("localhost",
 * "api.example.com") or a bracketed IPv6 literal ("[::1]"; an unbracketed IPv6 address is refused because its
 * colons are ambiguous); port is decimal 0..65535 (0: the kernel picks a free port). On success writes host (brackets
 * removed, so it can be handed to uv_ip6_addr) and *port and returns 0.
 *
 * On a bad value records an error, writes the parsed def instead (host "" and port 0 when def is NULL or bad
 * too) and returns CRM_E_CONFIG. Unset with def == NULL writes host "" and port 0 and returns 0: nothing
 * configured, which the caller decides about. hostcap must be at least 1.
 */
int crm_env_hostport(crm_env_t *e, const char *var, const char *def, char *host, size_t hostcap, uint16_t *port);

/* The number of errors (not warnings) in e->problems: 0 if and only if no error was ever recorded. */
int crm_env_count_errors(const crm_env_t *e);

/*
 * Writes the problems to out in the order recorded, one line each: "CRMD_X: message" for an error,
 * "warning: CRMD_X: message" for a warning (the "CRMD_X: " part is left out when var is NULL), then a final
 * line saying how many were dropped, if any.
 */
void crm_env_print_problems(const crm_env_t *e, FILE *out);

/*
 * Writes into buf (capacity cap >= 5) a printable excerpt of s for a problem message: at most max bytes, every
 * byte outside printable ASCII and every '"' or '\\' replaced by '?', "..." appended when cut. Returns buf.
 * Only for values that are not secret.
 */
const char *crm_env_excerpt(char *buf, size_t cap, const char *s, size_t max);

/*
 * 1 when s cannot be a real secret: NULL, shorter than min_len bytes, containing (case-insensitively) a
 * placeholder word — test, changeme, change-me, secret, password, example, default, dummy, placeholder, todo,
 * xxx — or made of fewer than 10 distinct bytes. *why (when why != NULL) then receives a static reason without
 * the secret in it, e.g. "too short"; 0 leaves *why untouched.
 */
int crm_secret_is_weak(const char *s, size_t min_len, const char **why);

/*
 * 1 when host certainly stays on this machine: "localhost" (any case, optional trailing dot), an IPv4 literal in
 * 127.0.0.0/8, the IPv6 loopback ("::1", also bracketed, also IPv4-mapped 127.x), or a unix-socket path (starts
 * with '/', or '@' for the Linux abstract namespace). 0 for anything else, including NULL and "", since what an
 * empty host means is up to the caller.
 */
int crm_host_is_loopback(const char *host);

#endif
