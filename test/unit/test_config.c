/*
 * Tests for lib/env.c (typed environment readers, problem list, secret and loopback checks) and app/config.c
 * (crmd's variables, defaults and production refusals). The environment is a table behind an injected lookup
 * function that also records which names were asked for; the real environment is never read.
 */
#include "config.h"
#include "env.h"
#include "err.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

/* 64 hex digits: what `openssl rand -hex 32` prints. */
#define GOOD_TOKEN "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
/* The password put into database URLs; no problem message may ever contain it. */
#define PW  "Zq8Wm3Kx"
#define CWD "/srv/crmd"

/* ---- the fake environment ---- */

#define FAKE_MAX 64

typedef struct {
    const char *names[FAKE_MAX];
    const char *values[FAKE_MAX];
    size_t n;
    const char *asked[FAKE_MAX * 2];
    size_t nasked;
} fake_env_t;

static const char *fake_get(void *ctx, const char *name)
{
    fake_env_t *f = ctx;
    size_t i;

    for (i = 0; i < f->nasked && strcmp(f->asked[i], name) != 0; i++)
        ;
    if (i == f->nasked) {
        assert_true(f->nasked < FAKE_MAX * 2);
        f->asked[f->nasked++] = name;
    }
    for (i = 0; i < f->n; i++) {
        if (strcmp(f->names[i], name) == 0)
            return f->values[i];
    }
    return NULL;
}

static void fake_set(fake_env_t *f, const char *name, const char *value)
{
    for (size_t i = 0; i < f->n; i++) {
        if (strcmp(f->names[i], name) == 0) {
            f->values[i] = value;
            return;
        }
    }
    assert_true(f->n < FAKE_MAX);
    f->names[f->n] = name;
    f->values[f->n++] = value;
}

static void fake_unset(fake_env_t *f, const char *name)
{
    for (size_t i = 0; i < f->n; i++) {
        if (strcmp(f->names[i], name) == 0) {
            f->names[i] = f->names[f->n - 1];
            f->values[i] = f->values[f->n - 1];
            f->n--;
            return;
        }
    }
}

static int fake_was_asked(const fake_env_t *f, const char *name)
{
    for (size_t i = 0; i < f->nasked; i++) {
        if (strcmp(f->asked[i], name) == 0)
            return 1;
    }
    return 0;
}

/* ---- fixtures ---- */

static char cert_path[64], key_path[64];

static int make_file(char *path, size_t cap, const char *tmpl)
{
    int fd;

    snprintf(path, cap, "%s", tmpl);
    fd = mkstemp(path);
    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}

static int group_setup(void **state)
{
    if (make_file(cert_path, sizeof(cert_path), "/tmp/crmd-test-cert-XXXXXX") != 0)
        return -1;
    return make_file(key_path, sizeof(key_path), "/tmp/crmd-test-key-XXXXXX");
}

static int group_teardown(void **state)
{
    unlink(cert_path);
    unlink(key_path);
    return 0;
}

/* 32 random bytes, base64. */
#define STRONG_JWT_KEY "q3J7fz0Xc1WmLr9T2vYbN8pKdE4sHgA6uJiO5wQyZxM="

/* A production environment with nothing to complain about. */
static void prod_baseline(fake_env_t *f)
{
    fake_set(f, "CRMD_ENV", "production");
    fake_set(f, "CRMD_DATABASE_URL", "postgresql://crmd_app:" PW "@db.internal:5432/crmd?sslmode=verify-full");
    fake_set(f, "CRMD_MIGRATE_DATABASE_URL", "postgresql://crmd_owner:" PW "@db.internal/crmd?sslmode=verify-full");
    fake_set(f, "CRMD_OPERATOR_TOKEN", GOOD_TOKEN);
    fake_set(f, "CRMD_TLS_CERT", cert_path);
    fake_set(f, "CRMD_TLS_KEY", key_path);
    fake_set(f, "CRMD_SMTP_URL", "smtps://smtp.example.com:465");
    fake_set(f, "CRMD_MAIL_FROM", "Example CRM <no-reply@example.com>");
    fake_set(f, "CRMD_JWT_KEYS", "k2:" STRONG_JWT_KEY);
    fake_set(f, "CRMD_PUBLIC_URL", "https://crm.example.com");
}

static int load(fake_env_t *f, crm_env_t *e, crm_config_t *c)
{
    crm_env_init(e, fake_get, f);
    return crm_config_load(c, e, CWD);
}

static size_t count_var(const crm_env_t *e, const char *var, int warning)
{
    size_t n = 0;

    for (size_t i = 0; i < e->nproblems; i++) {
        const crm_env_problem_t *p = &e->problems[i];
        n += p->var != NULL && strcmp(p->var, var) == 0 && p->warning == warning;
    }
    return n;
}

static size_t count_warnings(const crm_env_t *e)
{
    size_t n = 0;

    for (size_t i = 0; i < e->nproblems; i++)
        n += e->problems[i].warning;
    return n;
}

/* Exactly one problem, on var, with this severity and message. */
static void assert_only_problem(const crm_env_t *e, const char *var, int warning, const char *message)
{
    assert_int_equal(e->nproblems, 1);
    assert_non_null(e->problems[0].var);
    assert_string_equal(e->problems[0].var, var);
    assert_int_equal(e->problems[0].warning, warning);
    if (message != NULL)
        assert_string_equal(e->problems[0].message, message);
}

/* crm_env_print_problems into a heap string the caller frees. */
static char *print_to_string(const crm_env_t *e)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);

    assert_non_null(out);
    crm_env_print_problems(e, out);
    fclose(out);
    return buf;
}

/* ---- lib/env.c ---- */

static void test_env_str_empty_is_unset(void **state)
{
    fake_env_t f = {0};
    crm_env_t e;

    fake_set(&f, "A", "");
    fake_set(&f, "B", "value");
    crm_env_init(&e, fake_get, &f);
    assert_string_equal(crm_env_str(&e, "A", "def"), "def");
    assert_null(crm_env_str(&e, "A", NULL));
    assert_string_equal(crm_env_str(&e, "B", "def"), "value");
    assert_string_equal(crm_env_str(&e, "C", "def"), "def");
    assert_int_equal(e.nproblems, 0);
}

static void test_env_int(void **state)
{
    static const char *const bad[] = {"abc",
                                      "12x",
                                      " 5",
                                      "5 ",
                                      "+5",
                                      "0x10",
                                      "1e3",
                                      "-",
                                      "--1",
                                      "1.0",
                                      "1_000",
                                      "٣",
                                      "5\n",
                                      "99999999999999999999",
                                      "-99999999999999999999"};
    fake_env_t f = {0};
    crm_env_t e;

    crm_env_init(&e, fake_get, &f);
    assert_int_equal(crm_env_int(&e, "N", 7, 0, 10), 7);
    fake_set(&f, "N", "0010");
    assert_int_equal(crm_env_int(&e, "N", 7, 0, 10), 10);
    fake_set(&f, "N", "-0");
    assert_int_equal(crm_env_int(&e, "N", 7, 0, 10), 0);
    fake_set(&f, "N", "-5");
    assert_int_equal(crm_env_int(&e, "N", 7, -5, 10), -5);
    fake_set(&f, "N", "9223372036854775807");
    assert_true(crm_env_int(&e, "N", 0, INT64_MIN, INT64_MAX) == INT64_MAX);
    fake_set(&f, "N", "-9223372036854775808");
    assert_true(crm_env_int(&e, "N", 0, INT64_MIN, INT64_MAX) == INT64_MIN);
    assert_int_equal(e.nproblems, 0);

    fake_set(&f, "N", "9223372036854775808");
    assert_int_equal(crm_env_int(&e, "N", 3, INT64_MIN, INT64_MAX), 3);
    assert_only_problem(&e, "N", 0,
                        "must be an integer between -9223372036854775808 and 9223372036854775807 "
                        "(got \"9223372036854775808\")");

    fake_set(&f, "N", "11");
    crm_env_init(&e, fake_get, &f);
    assert_int_equal(crm_env_int(&e, "N", 7, 0, 10), 7);
    assert_only_problem(&e, "N", 0, "must be an integer between 0 and 10 (got \"11\")");

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char want[200];
        crm_env_init(&e, fake_get, &f);
        fake_set(&f, "N", bad[i]);
        assert_int_equal(crm_env_int(&e, "N", 7, INT64_MIN, INT64_MAX), 7);
        assert_int_equal(e.nproblems, 1);
        assert_int_equal(crm_env_count_errors(&e), 1);
        snprintf(want, sizeof(want), "must be an integer between %" PRId64 " and %" PRId64 " (got \"", INT64_MIN,
                 INT64_MAX);
        assert_memory_equal(e.problems[0].message, want, strlen(want));
    }
}

static void test_env_int_quotes_safely(void **state)
{
    fake_env_t f = {0};
    crm_env_t e;

    fake_set(&f, "N", "1\x1b[2J\"\\\xc3\xa9");
    crm_env_init(&e, fake_get, &f);
    crm_env_int(&e, "N", 1, 0, 9);
    assert_only_problem(&e, "N", 0, "must be an integer between 0 and 9 (got \"1?[2J????\")");

    fake_set(&f, "N", "1234567890123456789012345678901234567890123");
    crm_env_init(&e, fake_get, &f);
    crm_env_int(&e, "N", 1, 0, 9);
    assert_only_problem(&e, "N", 0,
                        "must be an integer between 0 and 9 (got \"1234567890123456789012345678901234567890...\")");
}

static void test_env_bool(void **state)
{
    static const struct {
        const char *text;
        int value;
    } good[] = {{"1", 1},  {"0", 0},  {"true", 1}, {"FALSE", 0}, {"Yes", 1},
                {"nO", 0}, {"ON", 1}, {"off", 0},  {"True", 1},  {"oFF", 0}};
    static const char *const bad[] = {"2", "maybe", "y", "n", "enabled", " true", "true ", "01", "-1"};
    fake_env_t f = {0};
    crm_env_t e;

    crm_env_init(&e, fake_get, &f);
    assert_int_equal(crm_env_bool(&e, "B", 1), 1);
    assert_int_equal(crm_env_bool(&e, "B", 0), 0);
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        fake_set(&f, "B", good[i].text);
        assert_int_equal(crm_env_bool(&e, "B", !good[i].value), good[i].value);
    }
    assert_int_equal(e.nproblems, 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char want[200];
        crm_env_init(&e, fake_get, &f);
        fake_set(&f, "B", bad[i]);
        assert_int_equal(crm_env_bool(&e, "B", 1), 1);
        snprintf(want, sizeof(want), "must be a boolean: 1, 0, true, false, yes, no, on or off (got \"%s\")", bad[i]);
        assert_only_problem(&e, "B", 0, want);
    }
}

static void test_env_enum(void **state)
{
    static const char *const names[] = {"red", "green", "blue"};
    fake_env_t f = {0};
    crm_env_t e;

    crm_env_init(&e, fake_get, &f);
    assert_int_equal(crm_env_enum(&e, "C", names, 3, 1), 1);
    fake_set(&f, "C", "blue");
    assert_int_equal(crm_env_enum(&e, "C", names, 3, 1), 2);
    fake_set(&f, "C", "RED");
    assert_int_equal(crm_env_enum(&e, "C", names, 3, 1), 0);
    assert_int_equal(e.nproblems, 0);
    fake_set(&f, "C", "purple");
    assert_int_equal(crm_env_enum(&e, "C", names, 3, 1), 1);
    assert_only_problem(&e, "C", 0, "must be one of red, green, blue (got \"purple\")");
}

static void test_env_hostport(void **state)
{
    static const struct {
        const char *text;
        const char *host;
        uint16_t port;
    } good[] = {
        {"127.0.0.1:8080", "127.0.0.1", 8080},
        {"0.0.0.0:80", "0.0.0.0", 80},
        {"localhost:8080", "localhost", 8080},
        {"[::1]:8080", "::1", 8080},
        {"[::]:443", "::", 443},
        {"[2001:db8::1]:65535", "2001:db8::1", 65535},
        {"[::ffff:10.0.0.1]:1", "::ffff:10.0.0.1", 1},
        {"api.example.com:8443", "api.example.com", 8443},
        {"my-host:08080", "my-host", 8080},
        {"127.0.0.1:0", "127.0.0.1", 0},
        {"a1.b2:9", "a1.b2", 9},
    };
    static const struct {
        const char *text;
        const char *why;
    } bad[] = {
        {"localhost", "missing port"},
        {"127.0.0.1", "missing port"},
        {"127.0.0.1:", "port must be 0..65535"},
        {":8080", "missing host"},
        {"host:65536", "port must be 0..65535"},
        {"host:123456", "port must be 0..65535"},
        {"host:-1", "port must be 0..65535"},
        {"host:+80", "port must be 0..65535"},
        {"host:80x", "port must be 0..65535"},
        {"host: 80", "port must be 0..65535"},
        {"::1:8080", "IPv6 addresses must be in brackets"},
        {"2001:db8::1:80", "IPv6 addresses must be in brackets"},
        {"[::1]", "missing port"},
        {"[::1]8080", "missing port"},
        {"[::1:8080", "missing ']'"},
        {"[127.0.0.1]:80", "invalid IPv6 address"},
        {"[]:80", "invalid IPv6 address"},
        {"[fe80::1%eth0]:80", "invalid IPv6 address"},
        {"256.1.1.1:80", "invalid host"},
        {"127.1:80", "invalid host"},
        {"-host:80", "invalid host"},
        {"host-:80", "invalid host"},
        {"ho_st:80", "invalid host"},
        {"a..b:80", "invalid host"},
        {".a:80", "invalid host"},
        {"a.:80", "invalid host"},
        {"ho st:80", "invalid host"},
        {"http://x:80", "not a URL"},
        {"https://x", "not a URL"},
    };
    fake_env_t f = {0};
    crm_env_t e;
    char host[64], small[4];
    uint16_t port;

    crm_env_init(&e, fake_get, &f);
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        fake_set(&f, "L", good[i].text);
        assert_int_equal(crm_env_hostport(&e, "L", "1.2.3.4:5", host, sizeof(host), &port), 0);
        assert_string_equal(host, good[i].host);
        assert_int_equal(port, good[i].port);
    }
    assert_int_equal(e.nproblems, 0);

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char want[200];
        crm_env_init(&e, fake_get, &f);
        fake_set(&f, "L", bad[i].text);
        assert_int_equal(crm_env_hostport(&e, "L", "1.2.3.4:5", host, sizeof(host), &port), CRM_E_CONFIG);
        /* The default stands in for the bad value. */
        assert_string_equal(host, "1.2.3.4");
        assert_int_equal(port, 5);
        snprintf(want, sizeof(want), "must be host:port such as 127.0.0.1:8080 or [::1]:8080: %s (got \"%s\")",
                 bad[i].why, bad[i].text);
        assert_only_problem(&e, "L", 0, want);
    }

    /* Unset: the default; unset without a default: nothing configured, not an error. */
    fake_unset(&f, "L");
    crm_env_init(&e, fake_get, &f);
    assert_int_equal(crm_env_hostport(&e, "L", "[::1]:7", host, sizeof(host), &port), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 7);
    assert_int_equal(crm_env_hostport(&e, "L", NULL, host, sizeof(host), &port), 0);
    assert_string_equal(host, "");
    assert_int_equal(port, 0);
    assert_int_equal(e.nproblems, 0);

    /* A bad value without a default leaves nothing configured. */
    fake_set(&f, "L", "nope");
    assert_int_equal(crm_env_hostport(&e, "L", NULL, host, sizeof(host), &port), CRM_E_CONFIG);
    assert_string_equal(host, "");
    assert_int_equal(port, 0);

    /* The host must fit the caller's buffer, brackets removed. */
    fake_set(&f, "L", "abc:1");
    crm_env_init(&e, fake_get, &f);
    assert_int_equal(crm_env_hostport(&e, "L", NULL, small, sizeof(small), &port), 0);
    assert_string_equal(small, "abc");
    fake_set(&f, "L", "[::1]:1");
    assert_int_equal(crm_env_hostport(&e, "L", NULL, small, sizeof(small), &port), 0);
    assert_string_equal(small, "::1");
    fake_set(&f, "L", "abcd:1");
    assert_int_equal(crm_env_hostport(&e, "L", NULL, small, sizeof(small), &port), CRM_E_CONFIG);
    assert_string_equal(small, "");
    assert_only_problem(&e, "L", 0,
                        "must be host:port such as 127.0.0.1:8080 or [::1]:8080: host too long (got \"abcd:1\")");
}

static void test_problem_list(void **state)
{
    crm_env_t e;
    char *out, longmsg[300];

    crm_env_init(&e, fake_get, NULL);
    crm_env_problem(&e, "CRMD_A", 0, "bad %d", 1);
    crm_env_problem(&e, "CRMD_B", 1, "odd");
    crm_env_problem(&e, NULL, 1, "general");
    crm_env_problem(&e, NULL, 0, "general error");
    assert_int_equal(crm_env_count_errors(&e), 2);
    out = print_to_string(&e);
    assert_string_equal(out, "CRMD_A: bad 1\nwarning: CRMD_B: odd\nwarning: general\ngeneral error\n");
    free(out);

    /* A message too long for the buffer is cut and marked. */
    memset(longmsg, 'm', sizeof(longmsg) - 1);
    longmsg[sizeof(longmsg) - 1] = '\0';
    crm_env_init(&e, fake_get, NULL);
    crm_env_problem(&e, "V", 0, "%s", longmsg);
    assert_int_equal(strlen(e.problems[0].message), sizeof(e.problems[0].message) - 1);
    assert_string_equal(e.problems[0].message + sizeof(e.problems[0].message) - 4, "...");
    assert_memory_equal(e.problems[0].message, longmsg, sizeof(e.problems[0].message) - 4);
}

static void test_problem_list_overflow(void **state)
{
    crm_env_t e;
    char *out;
    const char *last;

    /* Full of warnings: an error evicts the latest warning, so the configuration still fails. */
    crm_env_init(&e, fake_get, NULL);
    for (int i = 0; i < CRM_ENV_MAX_PROBLEMS; i++)
        crm_env_problem(&e, "W", 1, "w%d", i);
    assert_int_equal(e.nproblems, CRM_ENV_MAX_PROBLEMS);
    assert_int_equal(crm_env_count_errors(&e), 0);
    crm_env_problem(&e, "W", 1, "one warning too many");
    assert_int_equal(e.dropped, 1);
    crm_env_problem(&e, "E", 0, "the error");
    assert_int_equal(e.dropped, 2);
    assert_int_equal(e.nproblems, CRM_ENV_MAX_PROBLEMS);
    assert_int_equal(crm_env_count_errors(&e), 1);
    assert_string_equal(e.problems[CRM_ENV_MAX_PROBLEMS - 2].message, "w62");
    assert_string_equal(e.problems[CRM_ENV_MAX_PROBLEMS - 1].message, "the error");
    out = print_to_string(&e);
    last = strrchr(out, 'E');
    assert_non_null(last);
    assert_string_equal(last, "E: the error\n(2 more problems not shown)\n");
    free(out);

    /* Full of errors: further problems of either kind are only counted. */
    crm_env_init(&e, fake_get, NULL);
    for (int i = 0; i < CRM_ENV_MAX_PROBLEMS; i++)
        crm_env_problem(&e, "E", 0, "e%d", i);
    crm_env_problem(&e, "E", 0, "one more error");
    crm_env_problem(&e, "W", 1, "one more warning");
    crm_env_problem(&e, "E", 0, "yet another error");
    assert_int_equal(e.nproblems, CRM_ENV_MAX_PROBLEMS);
    assert_int_equal(e.dropped, 3);
    assert_string_equal(e.problems[CRM_ENV_MAX_PROBLEMS - 1].message, "e63");
    assert_int_equal(crm_env_count_errors(&e), CRM_ENV_MAX_PROBLEMS);
    for (size_t i = 0; i < e.nproblems; i++)
        assert_int_equal(e.problems[i].warning, 0);
}

static void test_excerpt(void **state)
{
    char buf[16];

    assert_string_equal(crm_env_excerpt(buf, sizeof(buf), "short", 40), "short");
    assert_string_equal(crm_env_excerpt(buf, sizeof(buf), "abcdefghijklmnopqrstuvwxyz", 40), "abcdefghijkl...");
    assert_string_equal(crm_env_excerpt(buf, sizeof(buf), "abcdefgh", 4), "abcd...");
    assert_string_equal(crm_env_excerpt(buf, sizeof(buf), "abcd", 4), "abcd");
    assert_string_equal(crm_env_excerpt(buf, sizeof(buf), "a\tb\"c\\d\x7f", 40), "a?b?c?d?");
    assert_string_equal(crm_env_excerpt(buf, sizeof(buf), NULL, 40), "");
}

static void test_secret_is_weak(void **state)
{
    static const struct {
        const char *secret;
        const char *why;
    } weak[] = {
        {NULL, "not set"},
        {"", "too short"},
        {"9f86d081884c7d659a2feaa0c55ad01", "too short"}, /* 31 bytes */
        {"aTeSTbcdefghijklmnopqrstuvwxyz0123456789", "contains a placeholder word"},
        {"changeme-9f86d081884c7d659a2feaa0c55ad015", "contains a placeholder word"},
        {"CHANGE-ME-9f86d081884c7d659a2feaa0c55ad015", "contains a placeholder word"},
        {"9f86d081884c7d659a2feaa0c55ad015-SECRET", "contains a placeholder word"},
        {"my-password-9f86d081884c7d659a2feaa0c55ad", "contains a placeholder word"},
        {"example9f86d081884c7d659a2feaa0c55ad015a3", "contains a placeholder word"},
        {"DEFAULT9f86d081884c7d659a2feaa0c55ad015a3", "contains a placeholder word"},
        {"dummy9f86d081884c7d659a2feaa0c55ad015a3bf", "contains a placeholder word"},
        {"Placeholder9f86d081884c7d659a2feaa0c55ad0", "contains a placeholder word"},
        {"todo9f86d081884c7d659a2feaa0c55ad015a3bf4", "contains a placeholder word"},
        {"9f86d081884c7d659a2fXXXeaa0c55ad015a3bf4f", "contains a placeholder word"},
        {"abababababababababababababababababababab", "too few distinct characters"},
        {"012345678001234567800123456780012345678", "too few distinct characters"}, /* 9 distinct */
    };
    const char *why = "untouched";

    for (size_t i = 0; i < sizeof(weak) / sizeof(weak[0]); i++) {
        why = NULL;
        assert_int_equal(crm_secret_is_weak(weak[i].secret, 32, &why), 1);
        assert_non_null(why);
        assert_string_equal(why, weak[i].why);
    }
    why = "untouched";
    assert_int_equal(crm_secret_is_weak(GOOD_TOKEN, 32, &why), 0);
    assert_string_equal(why, "untouched");
    assert_int_equal(crm_secret_is_weak("01234567890123456789012345678901", 32, &why), 0); /* 10 distinct */
    assert_int_equal(crm_secret_is_weak("9f86d081884c7d659a2feaa0c55ad015", 32, NULL), 0); /* exactly 32 */
    assert_int_equal(crm_secret_is_weak("short", 0, NULL), 1);                             /* 5 distinct */
    assert_int_equal(crm_secret_is_weak("xx", 0, NULL), 1);
    assert_int_equal(crm_secret_is_weak("test", 0, NULL), 1);
}

static void test_host_is_loopback(void **state)
{
    static const char *const local[] = {
        "localhost", "LocalHost", "localhost.",      "127.0.0.1",        "127.255.255.254",    "127.1.2.3",
        "::1",       "[::1]",     "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1", "[::ffff:127.0.0.9]", "/var/run/postgresql",
        "/",         "@abstract"};
    static const char *const remote[] = {"",
                                         "db",
                                         "db.internal",
                                         "localhost.example.com",
                                         "mylocalhost",
                                         "128.0.0.1",
                                         "126.255.255.255",
                                         "10.0.0.1",
                                         "0.0.0.0",
                                         "::",
                                         "::2",
                                         "[::2]",
                                         "::ffff:10.0.0.1",
                                         "[127.0.0.1]",
                                         "[::1",
                                         "::1]",
                                         "127.1",
                                         "127.0.0.1 ",
                                         "var/run/postgresql"};

    for (size_t i = 0; i < sizeof(local) / sizeof(local[0]); i++) {
        if (!crm_host_is_loopback(local[i]))
            fail_msg("%s should be loopback", local[i]);
    }
    for (size_t i = 0; i < sizeof(remote) / sizeof(remote[0]); i++) {
        if (crm_host_is_loopback(remote[i]))
            fail_msg("%s should not be loopback", remote[i]);
    }
    assert_int_equal(crm_host_is_loopback(NULL), 0);
}

/* ---- app/config.c ---- */

typedef struct {
    const char *name;
    int64_t min, max, def;
    const char *def_text;
    size_t off;
    size_t size;
} int_var_t;

#define INT_VAR(name, field, min, max, def)                                                                            \
    {                                                                                                                  \
        name, min, max, def, #def, offsetof(crm_config_t, field), sizeof(((crm_config_t *)0)->field)                   \
    }

/* Written from the specification, independently of config.c's own table. */
static const int_var_t int_vars[] = {
    INT_VAR("CRMD_DB_POOL_SIZE", db_pool_size, 1, 256, 4),
    INT_VAR("CRMD_DB_PIPELINE_DEPTH", db_pipeline_depth, 1, 1024, 128),
    INT_VAR("CRMD_DB_QUEUE_MAX", db_queue_max, 0, 1000000, 1024),
    INT_VAR("CRMD_DB_QUEUE_TIMEOUT_MS", db_queue_timeout_ms, 1, 60000, 1000),
    INT_VAR("CRMD_DB_STATEMENT_TIMEOUT_MS", db_statement_timeout_ms, 1, 600000, 5000),
    INT_VAR("CRMD_DB_CONNECT_TIMEOUT_MS", db_connect_timeout_ms, 100, 60000, 5000),
    INT_VAR("CRMD_DB_BREAKER_OPEN_MS", db_breaker_open_ms, 100, 600000, 5000),
    INT_VAR("CRMD_REQUEST_TIMEOUT_MS", request_timeout_ms, 1, 600000, 10000),
    INT_VAR("CRMD_HTTP_IDLE_TIMEOUT_MS", http_idle_timeout_ms, 1000, 3600000, 10000),
    INT_VAR("CRMD_MAX_BODY_BYTES", max_body_bytes, 1, 67108864, 1048576),
    INT_VAR("CRMD_MAX_CONNECTIONS", max_connections, 1, 1000000, 10000),
    INT_VAR("CRMD_SHUTDOWN_GRACE_MS", shutdown_grace_ms, 0, 600000, 10000),
};

static int64_t int_field(const crm_config_t *c, const int_var_t *v)
{
    const char *p = (const char *)c + v->off;

    if (v->size == sizeof(int64_t)) {
        int64_t x;
        memcpy(&x, p, sizeof(x));
        return x;
    }
    int x;
    assert_int_equal(v->size, sizeof(int));
    memcpy(&x, p, sizeof(x));
    return x;
}

static const char *conninfo_value(const char *url, const char *keyword, char *buf, size_t cap)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &err);
    const char *result = NULL;

    assert_non_null(opts);
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (strcmp(o->keyword, keyword) == 0 && o->val != NULL) {
            snprintf(buf, cap, "%s", o->val);
            result = buf;
        }
    }
    PQconninfoFree(opts);
    return result;
}

static void test_defaults(void **state)
{
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;
    char buf[256];

    assert_int_equal(load(&f, &e, &c), 0);
    assert_int_equal(e.nproblems, 0);
    assert_int_equal(c.env, CRM_ENV_DEVELOPMENT);
    assert_string_equal(c.listen_host, "127.0.0.1");
    assert_int_equal(c.listen_port, 8080);
    assert_null(c.tls_cert);
    assert_null(c.tls_key);
    assert_int_equal(c.behind_proxy, 0);
    assert_string_equal(c.database_url, "postgresql:///crmd?host=/srv/crmd/var/pg/run&user=crmd_app");
    assert_string_equal(c.migrate_database_url, "postgresql:///crmd?host=/srv/crmd/var/pg/run&user=postgres");
    assert_int_equal(c.migrate_on_start, 1);
    for (size_t i = 0; i < sizeof(int_vars) / sizeof(int_vars[0]); i++)
        assert_int_equal(int_field(&c, &int_vars[i]), int_vars[i].def);
    assert_int_equal(c.db_pool_size, 4);
    assert_int_equal(c.db_pipeline_depth, 128);
    assert_int_equal(c.max_body_bytes, 1048576);
    assert_null(c.operator_token);
    assert_int_equal(c.log_level, CRM_LOG_INFO);
    assert_int_equal(c.log_level, 1);
    assert_int_equal(c.access_log, 1);

    /* The embedded default is a valid libpq string that points at the private cluster's socket directory. */
    assert_string_equal(conninfo_value(c.database_url, "host", buf, sizeof(buf)), "/srv/crmd/var/pg/run");
    assert_string_equal(conninfo_value(c.database_url, "user", buf, sizeof(buf)), "crmd_app");
    assert_string_equal(conninfo_value(c.database_url, "dbname", buf, sizeof(buf)), "crmd");
    assert_string_equal(conninfo_value(c.migrate_database_url, "user", buf, sizeof(buf)), "postgres");

    /* Empty values count as unset. */
    fake_set(&f, "CRMD_ENV", "");
    fake_set(&f, "CRMD_LISTEN", "");
    fake_set(&f, "CRMD_DB_POOL_SIZE", "");
    fake_set(&f, "CRMD_TLS_CERT", "");
    fake_set(&f, "CRMD_OPERATOR_TOKEN", "");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_int_equal(e.nproblems, 0);
    assert_int_equal(c.db_pool_size, 4);
    assert_null(c.tls_cert);
    assert_null(c.operator_token);
}

static void test_all_values_set(void **state)
{
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;

    fake_set(&f, "CRMD_ENV", "test");
    fake_set(&f, "CRMD_LISTEN", "[::]:9443");
    fake_set(&f, "CRMD_TLS_CERT", cert_path);
    fake_set(&f, "CRMD_TLS_KEY", key_path);
    fake_set(&f, "CRMD_BEHIND_PROXY", "yes");
    fake_set(&f, "CRMD_DATABASE_URL", "host=/tmp dbname=x");
    fake_set(&f, "CRMD_MIGRATE_DATABASE_URL", "postgresql://owner@localhost/x");
    fake_set(&f, "CRMD_MIGRATE", "off");
    fake_set(&f, "CRMD_OPERATOR_TOKEN", GOOD_TOKEN);
    fake_set(&f, "CRMD_LOG_LEVEL", "ERROR");
    fake_set(&f, "CRMD_ACCESS_LOG", "false");
    char values[sizeof(int_vars) / sizeof(int_vars[0])][24];
    for (size_t i = 0; i < sizeof(int_vars) / sizeof(int_vars[0]); i++) {
        snprintf(values[i], sizeof(values[i]), "%" PRId64, int_vars[i].min + 1);
        fake_set(&f, int_vars[i].name, values[i]);
    }
    assert_int_equal(load(&f, &e, &c), 0);
    assert_int_equal(e.nproblems, 0);
    assert_int_equal(c.env, CRM_ENV_TEST);
    assert_string_equal(c.listen_host, "::");
    assert_int_equal(c.listen_port, 9443);
    assert_string_equal(c.tls_cert, cert_path);
    assert_string_equal(c.tls_key, key_path);
    assert_int_equal(c.behind_proxy, 1);
    assert_string_equal(c.database_url, "host=/tmp dbname=x");
    assert_string_equal(c.migrate_database_url, "postgresql://owner@localhost/x");
    assert_int_equal(c.migrate_on_start, 0);
    assert_string_equal(c.operator_token, GOOD_TOKEN);
    assert_int_equal(c.log_level, CRM_LOG_ERROR);
    assert_int_equal(c.access_log, 0);
    for (size_t i = 0; i < sizeof(int_vars) / sizeof(int_vars[0]); i++)
        assert_int_equal(int_field(&c, &int_vars[i]), int_vars[i].min + 1);
}

static void test_int_vars_bad_values(void **state)
{
    static const char *const junk[] = {"abc",  "12x", " 5",  "5 ", "+5",
                                       "0x10", "1e3", "1.5", "-",  "99999999999999999999"};

    for (size_t i = 0; i < sizeof(int_vars) / sizeof(int_vars[0]); i++) {
        const int_var_t *v = &int_vars[i];
        char text[32], want[200];
        fake_env_t f = {0};
        crm_env_t e;
        crm_config_t c;

        /* Both ends of the range are accepted. */
        snprintf(text, sizeof(text), "%" PRId64, v->min);
        fake_set(&f, v->name, text);
        assert_int_equal(load(&f, &e, &c), 0);
        assert_int_equal(int_field(&c, v), v->min);
        snprintf(text, sizeof(text), "%" PRId64, v->max);
        assert_int_equal(load(&f, &e, &c), 0);
        assert_int_equal(int_field(&c, v), v->max);

        /* One past either end is refused, naming the range and the value; the default stands in. */
        for (int side = 0; side < 2; side++) {
            snprintf(text, sizeof(text), "%" PRId64, side == 0 ? v->min - 1 : v->max + 1);
            assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
            snprintf(want, sizeof(want), "must be an integer between %" PRId64 " and %" PRId64 " (got \"%s\")", v->min,
                     v->max, text);
            assert_only_problem(&e, v->name, 0, want);
            assert_int_equal(int_field(&c, v), v->def);
        }
        for (size_t j = 0; j < sizeof(junk) / sizeof(junk[0]); j++) {
            fake_set(&f, v->name, junk[j]);
            assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
            snprintf(want, sizeof(want), "must be an integer between %" PRId64 " and %" PRId64 " (got \"%s\")", v->min,
                     v->max, junk[j]);
            assert_only_problem(&e, v->name, 0, want);
            assert_int_equal(int_field(&c, v), v->def);
        }
    }
}

static void test_bool_and_enum_vars_bad_values(void **state)
{
    static const char *const bools[] = {"CRMD_BEHIND_PROXY", "CRMD_MIGRATE", "CRMD_ACCESS_LOG"};
    static const char *const levels[] = {"debug", "info", "warn", "error", "off"};
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;

    for (size_t i = 0; i < sizeof(bools) / sizeof(bools[0]); i++)
        fake_set(&f, bools[i], "2");
    fake_set(&f, "CRMD_LOG_LEVEL", "verbose");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_int_equal(e.nproblems, 4);
    assert_int_equal(crm_env_count_errors(&e), 4);
    for (size_t i = 0; i < sizeof(bools) / sizeof(bools[0]); i++)
        assert_int_equal(count_var(&e, bools[i], 0), 1);
    assert_int_equal(count_var(&e, "CRMD_LOG_LEVEL", 0), 1);
    for (size_t i = 0; i < e.nproblems; i++) {
        if (strcmp(e.problems[i].var, "CRMD_LOG_LEVEL") == 0)
            assert_string_equal(e.problems[i].message,
                                "must be one of debug, info, warn, error, off (got \"verbose\")");
        else
            assert_string_equal(e.problems[i].message,
                                "must be a boolean: 1, 0, true, false, yes, no, on or off (got \"2\")");
    }
    /* Defaults stand in. */
    assert_int_equal(c.behind_proxy, 0);
    assert_int_equal(c.migrate_on_start, 1);
    assert_int_equal(c.access_log, 1);
    assert_int_equal(c.log_level, CRM_LOG_INFO);

    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
        fake_env_t g = {0};
        fake_set(&g, "CRMD_LOG_LEVEL", levels[i]);
        assert_int_equal(load(&g, &e, &c), 0);
        assert_int_equal(c.log_level, (int)i);
    }
}

static void test_env_var(void **state)
{
    static const char *const names[] = {"development", "test", "production"};
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;

    fake_set(&f, "CRMD_ENV", "Production");
    fake_set(&f, "CRMD_BEHIND_PROXY", "1");
    load(&f, &e, &c);
    assert_int_equal(c.env, CRM_ENV_PRODUCTION);

    /* An unknown environment is an error, and validation goes on under development rules: no production refusals,
     * the embedded database default applies, and the other variables are still checked. */
    fake_set(&f, "CRMD_ENV", "prod");
    fake_set(&f, "CRMD_DB_POOL_SIZE", "0");
    fake_set(&f, "CRMD_JWT_KEYS", "k:" STRONG_JWT_KEY);
    fake_set(&f, "CRMD_PUBLIC_URL", "https://crm.example.com");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_int_equal(c.env, CRM_ENV_DEVELOPMENT);
    assert_int_equal(e.nproblems, 2);
    assert_string_equal(e.problems[0].var, "CRMD_ENV");
    assert_string_equal(e.problems[0].message, "must be one of development, test, production (got \"prod\")");
    assert_string_equal(e.problems[1].var, "CRMD_DB_POOL_SIZE");
    assert_string_equal(c.database_url, "postgresql:///crmd?host=/srv/crmd/var/pg/run&user=crmd_app");

    for (int i = 0; i < 3; i++)
        assert_string_equal(crm_deploy_env_name((crm_deploy_env_t)i), names[i]);
    assert_string_equal(crm_deploy_env_name((crm_deploy_env_t)3), "unknown");
    assert_string_equal(crm_deploy_env_name((crm_deploy_env_t)-1), "unknown");
}

static void test_listen_var(void **state)
{
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;

    fake_set(&f, "CRMD_LISTEN", "[::1]:8081");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_string_equal(c.listen_host, "::1");
    assert_int_equal(c.listen_port, 8081);
    fake_set(&f, "CRMD_LISTEN", "::1:8081");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_LISTEN", 0,
                        "must be host:port such as 127.0.0.1:8080 or [::1]:8080: IPv6 addresses must be in brackets "
                        "(got \"::1:8081\")");
    assert_string_equal(c.listen_host, "127.0.0.1");
    assert_int_equal(c.listen_port, 8080);
    fake_set(&f, "CRMD_LISTEN", "8080");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_LISTEN", 0, NULL);
}

static void test_tls_vars(void **state)
{
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;

    fake_set(&f, "CRMD_TLS_CERT", cert_path);
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_TLS_KEY", 0, "must be set together with CRMD_TLS_CERT");

    fake_unset(&f, "CRMD_TLS_CERT");
    fake_set(&f, "CRMD_TLS_KEY", key_path);
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_TLS_CERT", 0, "must be set together with CRMD_TLS_KEY");

    fake_set(&f, "CRMD_TLS_CERT", cert_path);
    assert_int_equal(load(&f, &e, &c), 0);
    assert_int_equal(e.nproblems, 0);

    fake_set(&f, "CRMD_TLS_KEY", "/nonexistent/crmd/key.pem");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_TLS_KEY", 0, "cannot read \"/nonexistent/crmd/key.pem\": No such file or directory");

    fake_set(&f, "CRMD_TLS_CERT", "/nonexistent/crmd/cert.pem");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_int_equal(e.nproblems, 2);
    assert_int_equal(count_var(&e, "CRMD_TLS_CERT", 0), 1);
    assert_int_equal(count_var(&e, "CRMD_TLS_KEY", 0), 1);

    /* Unreadable and unpaired are reported together. */
    fake_unset(&f, "CRMD_TLS_KEY");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_int_equal(e.nproblems, 2);
    assert_string_equal(e.problems[0].message, "cannot read \"/nonexistent/crmd/cert.pem\": No such file or directory");
    assert_string_equal(e.problems[1].message, "must be set together with CRMD_TLS_CERT");
}

static void test_database_url_vars(void **state)
{
    char big[1100];
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;

    /* Both forms are accepted as given. */
    fake_set(&f, "CRMD_DATABASE_URL", "postgresql://crmd_app:" PW "@db.internal/crmd");
    fake_set(&f, "CRMD_MIGRATE_DATABASE_URL", "host=db.internal dbname=crmd user=owner password=" PW);
    assert_int_equal(load(&f, &e, &c), 0);
    assert_int_equal(e.nproblems, 0);
    assert_string_equal(c.database_url, "postgresql://crmd_app:" PW "@db.internal/crmd");
    assert_string_equal(c.migrate_database_url, "host=db.internal dbname=crmd user=owner password=" PW);

    /* Malformed, with libpq's reason made safe to print. */
    fake_set(&f, "CRMD_DATABASE_URL", "postgresql://u:" PW "@h/db?foo=bar");
    fake_set(&f, "CRMD_MIGRATE_DATABASE_URL", "host=h password=" PW " junk");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_int_equal(e.nproblems, 2);
    assert_string_equal(e.problems[0].var, "CRMD_DATABASE_URL");
    assert_string_equal(e.problems[0].message, "is not a valid libpq connection string (URI or key=value): invalid URI "
                                               "query parameter: \"<redacted>\"");
    assert_string_equal(e.problems[1].var, "CRMD_MIGRATE_DATABASE_URL");
    assert_string_equal(e.problems[1].message, "is not a valid libpq connection string (URI or key=value): missing "
                                               "\"=\" after \"<redacted>\" in connection info string");
    assert_string_equal(c.database_url, "");
    assert_string_equal(c.migrate_database_url, "");

    /* Too long for the buffer: refused without being parsed or printed. */
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    memcpy(big, "dbname=", 7);
    fake_set(&f, "CRMD_DATABASE_URL", big);
    fake_unset(&f, "CRMD_MIGRATE_DATABASE_URL");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_DATABASE_URL", 0, "is 1099 bytes long; at most 1023 are supported");
    big[1024] = '\0';
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_DATABASE_URL", 0, "is 1024 bytes long; at most 1023 are supported");
    big[1023] = '\0';
    assert_int_equal(load(&f, &e, &c), 0);
    assert_string_equal(c.database_url, big);

    /* Ports are checked now rather than at the first connection; the value itself is not shown. */
    fake_set(&f, "CRMD_DATABASE_URL", "postgresql://localhost:5432,db2:65535,db3/crmd");
    assert_int_equal(load(&f, &e, &c), 0);
    static const char *const bad_ports[] = {"postgresql://u:" PW "@h:5432x/db", "postgresql://u:pw@h:0/db",
                                            "postgresql://u:pw@h:65536/db",     "host=a,b port=5432,-1",
                                            "postgresql://u:Zq8W/m3Kx@db/x",    "port=123456"};
    for (size_t i = 0; i < sizeof(bad_ports) / sizeof(bad_ports[0]); i++) {
        fake_set(&f, "CRMD_DATABASE_URL", bad_ports[i]);
        assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
        assert_only_problem(&e, "CRMD_DATABASE_URL", 0, "port must be a number from 1 to 65535 (one per host)");
    }

    /* An unknown sslmode is refused in every environment. */
    fake_set(&f, "CRMD_DATABASE_URL", "postgresql://localhost/crmd?sslmode=on");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_DATABASE_URL", 0,
                        "sslmode is not one of disable, allow, prefer, require, verify-ca, verify-full");
}

static void test_database_url_default_needs_absolute_cwd(void **state)
{
    char longcwd[1100];
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;
    char buf[256];

    crm_env_init(&e, fake_get, &f);
    assert_int_equal(crm_config_load(&c, &e, "/home/a b/x&y%#?/"), 0);
    assert_string_equal(c.database_url, "postgresql:///crmd?host=/home/a%20b/x%26y%25%23%3F/var/pg/run&user=crmd_app");
    assert_string_equal(conninfo_value(c.database_url, "host", buf, sizeof(buf)), "/home/a b/x&y%#?/var/pg/run");
    assert_string_equal(conninfo_value(c.migrate_database_url, "host", buf, sizeof(buf)),
                        "/home/a b/x&y%#?/var/pg/run");

    crm_env_init(&e, fake_get, &f);
    assert_int_equal(crm_config_load(&c, &e, "/"), 0);
    assert_string_equal(c.database_url, "postgresql:///crmd?host=/var/pg/run&user=crmd_app");

    static const char *const bad_cwds[] = {NULL, "relative/dir", ""};
    for (size_t i = 0; i < 3; i++) {
        crm_env_init(&e, fake_get, &f);
        assert_int_equal(crm_config_load(&c, &e, bad_cwds[i]), CRM_E_CONFIG);
        assert_int_equal(e.nproblems, 2);
        assert_string_equal(e.problems[0].var, "CRMD_DATABASE_URL");
        assert_string_equal(e.problems[1].var, "CRMD_MIGRATE_DATABASE_URL");
        assert_string_equal(e.problems[0].message, "is not set and the working directory cannot form the embedded "
                                                   "default (not absolute, or too long); set it");
        assert_string_equal(c.database_url, "");
    }

    memset(longcwd, 'd', sizeof(longcwd) - 1);
    longcwd[0] = '/';
    longcwd[sizeof(longcwd) - 1] = '\0';
    crm_env_init(&e, fake_get, &f);
    assert_int_equal(crm_config_load(&c, &e, longcwd), CRM_E_CONFIG);
    assert_int_equal(e.nproblems, 2);

    /* A set URL needs no working directory. */
    fake_set(&f, "CRMD_DATABASE_URL", "dbname=a");
    fake_set(&f, "CRMD_MIGRATE_DATABASE_URL", "dbname=a");
    crm_env_init(&e, fake_get, &f);
    assert_int_equal(crm_config_load(&c, &e, NULL), 0);
}

static void test_production_ok(void **state)
{
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;

    prod_baseline(&f);
    assert_int_equal(load(&f, &e, &c), 0);
    assert_int_equal(e.nproblems, 0);
    assert_int_equal(c.env, CRM_ENV_PRODUCTION);
    assert_string_equal(c.operator_token, GOOD_TOKEN);

    /* Behind a proxy, TLS files are not needed. */
    fake_unset(&f, "CRMD_TLS_CERT");
    fake_unset(&f, "CRMD_TLS_KEY");
    fake_set(&f, "CRMD_BEHIND_PROXY", "1");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_int_equal(e.nproblems, 0);

    /* Without start-up migrations, the migration URL is not needed. */
    fake_unset(&f, "CRMD_MIGRATE_DATABASE_URL");
    fake_set(&f, "CRMD_MIGRATE", "0");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_int_equal(e.nproblems, 0);
    assert_string_equal(c.migrate_database_url, "");
}

static void test_production_refusals_one_by_one(void **state)
{
    static const char *const weak_tokens[] = {"k9Jw2x", "changeme-9f86d081884c7d659a2feaa0c55ad015",
                                              "abababababababababababababababababababab"};
    static const char *const weak_why[] = {"too short", "contains a placeholder word", "too few distinct characters"};
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;
    char want[200];

    prod_baseline(&f);
    fake_unset(&f, "CRMD_DATABASE_URL");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_DATABASE_URL", 0, "is required in production (the serving role's connection string)");
    assert_string_equal(c.database_url, "");

    prod_baseline(&f);
    fake_unset(&f, "CRMD_MIGRATE_DATABASE_URL");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_MIGRATE_DATABASE_URL", 0,
                        "is required in production when CRMD_MIGRATE=1 (the schema owner's connection string); or set "
                        "CRMD_MIGRATE=0");

    prod_baseline(&f);
    fake_unset(&f, "CRMD_OPERATOR_TOKEN");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_OPERATOR_TOKEN", 0,
                        "must be at least 32 bytes of random data (not set); generate one with: openssl rand -hex 32");
    for (size_t i = 0; i < 3; i++) {
        prod_baseline(&f);
        fake_set(&f, "CRMD_OPERATOR_TOKEN", weak_tokens[i]);
        assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
        snprintf(want, sizeof(want),
                 "must be at least 32 bytes of random data (%s); generate one with: openssl rand -hex 32", weak_why[i]);
        assert_only_problem(&e, "CRMD_OPERATOR_TOKEN", 0, want);
        assert_null(strstr(e.problems[0].message, weak_tokens[i]));
    }

    prod_baseline(&f);
    fake_unset(&f, "CRMD_TLS_CERT");
    fake_unset(&f, "CRMD_TLS_KEY");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_TLS_CERT", 0,
                        "is not set: production serves HTTPS; set CRMD_TLS_CERT and CRMD_TLS_KEY, or set "
                        "CRMD_BEHIND_PROXY=1 when a TLS-terminating proxy forwards to crmd");
    fake_set(&f, "CRMD_BEHIND_PROXY", "0");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_TLS_CERT", 0, NULL);

    /* Half a TLS pair is reported once, as the missing half, not also as "TLS not configured". */
    prod_baseline(&f);
    fake_unset(&f, "CRMD_TLS_KEY");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_TLS_KEY", 0, "must be set together with CRMD_TLS_CERT");

    prod_baseline(&f);
    fake_set(&f, "CRMD_DATABASE_URL", "postgresql://crmd_app:" PW "@db.internal/crmd?sslmode=disable");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_DATABASE_URL", 0,
                        "sslmode=disable permits plaintext to non-loopback host \"db.internal\"; production needs "
                        "sslmode=verify-full");

    prod_baseline(&f);
    fake_set(&f, "CRMD_MIGRATE_DATABASE_URL", "host=10.1.2.3 sslmode=allow password=" PW);
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_MIGRATE_DATABASE_URL", 0,
                        "sslmode=allow permits plaintext to non-loopback host \"10.1.2.3\"; production needs "
                        "sslmode=verify-full");

    /* With CRMD_MIGRATE=0 a given migration URL is still checked. */
    fake_set(&f, "CRMD_MIGRATE", "0");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_MIGRATE_DATABASE_URL", 0, NULL);
}

/* Outbound calls: upstream URLs, the mail relay and the sender, in production and elsewhere. */
static void test_outbound_rules(void **state)
{
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;
    (void)state;

    /* Defaults outside production: the real services, a local relay. */
    fake_set(&f, "CRMD_ENV", "test");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_string_equal(c.gmail_api_url, "https://gmail.googleapis.com");
    assert_string_equal(c.smtp_url, "smtp://127.0.0.1:25");
    assert_non_null(c.mail_from);
    assert_int_equal(c.jobs_enabled, 1);
    assert_int_equal(c.jobs_lease_ms, 30000);
    assert_int_equal(c.mail_timeout_ms, 15000);

    /* Test fakes on loopback over plain HTTP are fine outside production. */
    fake_set(&f, "CRMD_GMAIL_API_URL", "http://127.0.0.1:9999");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_string_equal(c.gmail_api_url, "http://127.0.0.1:9999");

    static const struct {
        const char *var, *value, *message;
    } bad[] = {
        {"CRMD_STRIPE_API_URL", "ftp://api.stripe.com", "must be an absolute http:// or https:// URL"},
        {"CRMD_STRIPE_API_URL", "api.stripe.com", "must be an absolute http:// or https:// URL"},
        {"CRMD_STRIPE_API_URL", "https://api.stripe.com/", "must not end with a slash"},
        {"CRMD_DOCUSIGN_API_URL", "https://u:p@docusign.example",
         "must be a base URL without credentials, query or "
         "fragment"},
        {"CRMD_GOOGLE_OAUTH_URL", "https://oauth2.googleapis.com?x=1",
         "must be a base URL without credentials, "
         "query or fragment"},
        {"CRMD_SMTP_URL", "http://smtp.example.com", "must be smtp://host[:port] or smtps://host[:port]"},
        {"CRMD_SMTP_URL", "smtp://user:pw@smtp.example.com",
         "must not carry credentials; use "
         "CRMD_SMTP_USERNAME/PASSWORD"},
        {"CRMD_SMTP_URL", "smtp://smtp.example.com/helo",
         "must be smtp://host[:port] or smtps://host[:port], without "
         "a path"},
        {"CRMD_SMTP_USERNAME", "crmd", "must be set together with CRMD_SMTP_PASSWORD"},
        {"CRMD_MAIL_FROM", "not an address",
         "must be one mailbox, addr@domain or Name <addr@domain>, with a domain of at least two labels"},
        {"CRMD_MAIL_FROM", "crmd <crmd@localhost>",
         "must be one mailbox, addr@domain or Name <addr@domain>, with a domain of at least two labels"},
        {"CRMD_MAIL_FROM", "a@example.com, b@example.com",
         "must be one mailbox, addr@domain or Name <addr@domain>, with a domain of at least two labels"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        fake_env_t g = {0};
        fake_set(&g, "CRMD_ENV", "test");
        fake_set(&g, bad[i].var, bad[i].value);
        assert_int_equal(load(&g, &e, &c), CRM_E_CONFIG);
        assert_only_problem(&e, bad[i].var, 0, bad[i].message);
    }

    /* Production: https only, and a remote relay only over TLS. */
    static const struct {
        const char *var, *value, *message;
    } prod[] = {
        {"CRMD_GMAIL_API_URL", "http://gmail.googleapis.com", "must be https:// in production"},
        {"CRMD_SMTP_URL", "smtp://smtp.example.com:587",
         "reaches a remote relay without TLS; use smtps://, or set credentials (STARTTLS is then required)"},
    };
    for (size_t i = 0; i < sizeof(prod) / sizeof(prod[0]); ++i) {
        fake_env_t g = {0};
        prod_baseline(&g);
        fake_set(&g, prod[i].var, prod[i].value);
        assert_int_equal(load(&g, &e, &c), CRM_E_CONFIG);
        assert_only_problem(&e, prod[i].var, 0, prod[i].message);
    }
    /* … but smtp:// with credentials (STARTTLS required) and a relay on this host are accepted. */
    fake_env_t g = {0};
    prod_baseline(&g);
    fake_set(&g, "CRMD_SMTP_URL", "smtp://smtp.example.com:587");
    fake_set(&g, "CRMD_SMTP_USERNAME", "crmd");
    fake_set(&g, "CRMD_SMTP_PASSWORD", "q7Vt9zKp2mWx4Rj8");
    assert_int_equal(load(&g, &e, &c), 0);
    fake_env_t h = {0};
    prod_baseline(&h);
    fake_set(&h, "CRMD_SMTP_URL", "smtp://localhost:25");
    assert_int_equal(load(&h, &e, &c), 0);
}

static void test_production_refusals_all_at_once(void **state)
{
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;
    char *out;

    /* Nothing but CRMD_ENV: every required production setting is named. */
    fake_set(&f, "CRMD_ENV", "production");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_int_equal(crm_env_count_errors(&e), 8);
    assert_int_equal(e.nproblems, 8);
    assert_int_equal(count_var(&e, "CRMD_JWT_KEYS", 0), 1);
    assert_int_equal(count_var(&e, "CRMD_PUBLIC_URL", 0), 1);
    assert_int_equal(count_var(&e, "CRMD_SMTP_URL", 0), 1);
    assert_int_equal(count_var(&e, "CRMD_MAIL_FROM", 0), 1);
    assert_int_equal(count_var(&e, "CRMD_DATABASE_URL", 0), 1);
    assert_int_equal(count_var(&e, "CRMD_MIGRATE_DATABASE_URL", 0), 1);
    assert_int_equal(count_var(&e, "CRMD_OPERATOR_TOKEN", 0), 1);
    assert_int_equal(count_var(&e, "CRMD_TLS_CERT", 0), 1);

    /* Every kind of refusal plus an ordinary error and a warning, printed in one go. */
    fake_set(&f, "CRMD_SMTP_URL", "smtps://smtp.example.com");
    fake_set(&f, "CRMD_MAIL_FROM", "no-reply@example.com");
    fake_set(&f, "CRMD_DATABASE_URL", "postgresql://crmd_app:" PW "@db.internal/crmd?sslmode=disable");
    fake_set(&f, "CRMD_MIGRATE_DATABASE_URL", "postgresql://owner:" PW "@db.internal/crmd?sslmode=prefer");
    fake_set(&f, "CRMD_OPERATOR_TOKEN", "changeme-changeme-changeme-changeme");
    fake_set(&f, "CRMD_DB_POOL_SIZE", "0");
    fake_set(&f, "CRMD_JWT_KEYS", "k:" STRONG_JWT_KEY);
    fake_set(&f, "CRMD_PUBLIC_URL", "https://crm.example.com");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_int_equal(crm_env_count_errors(&e), 4);
    assert_int_equal(count_warnings(&e), 1);
    out = print_to_string(&e);
    assert_string_equal(out,
                        "CRMD_DATABASE_URL: sslmode=disable permits plaintext to non-loopback host \"db.internal\"; "
                        "production needs sslmode=verify-full\n"
                        "warning: CRMD_MIGRATE_DATABASE_URL: sslmode=prefer may fall back to plaintext with "
                        "non-loopback host \"db.internal\"; use sslmode=verify-full\n"
                        "CRMD_DB_POOL_SIZE: must be an integer between 1 and 256 (got \"0\")\n"
                        "CRMD_OPERATOR_TOKEN: must be at least 32 bytes of random data (contains a placeholder word); "
                        "generate one with: openssl rand -hex 32\n"
                        "CRMD_TLS_CERT: is not set: production serves HTTPS; set CRMD_TLS_CERT and CRMD_TLS_KEY, or "
                        "set CRMD_BEHIND_PROXY=1 when a TLS-terminating proxy forwards to crmd\n");
    assert_null(strstr(out, PW));
    assert_null(strstr(out, "changeme-changeme"));
    free(out);
}

/* Access-token keys, trusted proxies and the public URL. */
static void test_auth_rules(void **state)
{
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;

    /* Outside production: the published development key, no proxies, a local public URL. */
    fake_set(&f, "CRMD_ENV", "test");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_non_null(c.jwt_keys);
    assert_int_equal(strncmp(c.jwt_keys, "dev:", 4), 0);
    assert_null(c.trusted_proxies);
    assert_string_equal(c.public_url, "http://127.0.0.1:8080");
    assert_int_equal(c.access_token_ttl_s, 900);
    assert_int_equal(c.refresh_absolute_s, 2592000);

    fake_set(&f, "CRMD_TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1,::1,fd00::/8");
    assert_int_equal(load(&f, &e, &c), 0);
    static const char *const bad_proxies[] = {"10.0.0.0/33", "10.0.0.0/", "proxy.local", "10.0.0.1, 10.0.0.2", ""};
    for (size_t i = 0; i + 1 < sizeof(bad_proxies) / sizeof(bad_proxies[0]); ++i) {
        fake_set(&f, "CRMD_TRUSTED_PROXIES", bad_proxies[i]);
        assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
        assert_only_problem(&e, "CRMD_TRUSTED_PROXIES", 0, NULL);
    }
    fake_set(&f, "CRMD_TRUSTED_PROXIES", NULL);

    /* Keys that do not parse are refused everywhere, and the message never quotes them. */
    fake_set(&f, "CRMD_JWT_KEYS", "k1:c2hvcnQ=");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_JWT_KEYS", 0, NULL);
    assert_null(strstr(e.problems[0].message, "c2hvcnQ"));

    /* Production: the development key and placeholders are refused; random keys pass. */
    fake_env_t p = {0};
    prod_baseline(&p);
    assert_int_equal(load(&p, &e, &c), 0);
    fake_set(&p, "CRMD_JWT_KEYS", "new:" STRONG_JWT_KEY ",dev:Y3JtZCBkZXZlbG9wbWVudCBrZXksIG5vdCBhIHNlY3JldCE=");
    assert_int_equal(load(&p, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_JWT_KEYS", 0, NULL);
    fake_set(&p, "CRMD_JWT_KEYS", "k:YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=");
    assert_int_equal(load(&p, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_JWT_KEYS", 0, NULL);
    fake_set(&p, "CRMD_JWT_KEYS", NULL);
    assert_int_equal(load(&p, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_JWT_KEYS", 0, NULL);
    fake_set(&p, "CRMD_JWT_KEYS", "k2:" STRONG_JWT_KEY);
    fake_set(&p, "CRMD_PUBLIC_URL", "http://crm.example.com");
    assert_int_equal(load(&p, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_PUBLIC_URL", 0, "must be https:// in production");
    fake_set(&p, "CRMD_PUBLIC_URL", NULL);
    assert_int_equal(load(&p, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_PUBLIC_URL", 0, NULL);
}

static void test_warnings_do_not_fail(void **state)
{
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;

    /* Outside production a weak token is a warning, a missing one is nothing. */
    fake_set(&f, "CRMD_OPERATOR_TOKEN", "test");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_only_problem(
        &e, "CRMD_OPERATOR_TOKEN", 1,
        "must be at least 32 bytes of random data (too short); generate one with: openssl rand -hex 32");
    assert_string_equal(c.operator_token, "test");
    assert_int_equal(crm_env_count_errors(&e), 0);

    /* Plaintext to a remote database is only production's business. */
    fake_unset(&f, "CRMD_OPERATOR_TOKEN");
    fake_set(&f, "CRMD_DATABASE_URL", "postgresql://db.internal/crmd?sslmode=disable");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_int_equal(e.nproblems, 0);

    /* In production, a transport warning alone does not fail. */
    prod_baseline(&f);
    fake_set(&f, "CRMD_DATABASE_URL", "postgresql://db.internal/crmd?sslmode=require");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_only_problem(&e, "CRMD_DATABASE_URL", 1,
                        "sslmode=require does not verify the certificate of non-loopback host \"db.internal\" unless a "
                        "root CA file is present; use sslmode=verify-full");
}

static void test_serving_role_is_not_the_owner(void **state)
{
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;

    prod_baseline(&f);
    fake_set(&f, "CRMD_DATABASE_URL", "postgresql://crmd_owner:" PW "@db.internal/crmd?sslmode=verify-full");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_only_problem(&e, "CRMD_DATABASE_URL", 1,
                        "connects as the same user as CRMD_MIGRATE_DATABASE_URL; serve with a role that does not own "
                        "the schema, or row-level security can be bypassed");
    fake_set(&f, "CRMD_DATABASE_URL", "host=db.internal user=crmd_owner sslmode=verify-full");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_only_problem(&e, "CRMD_DATABASE_URL", 1, NULL);

    /* A user left to PGUSER is unknown here; user names are case-sensitive in a URL. */
    fake_set(&f, "CRMD_DATABASE_URL", "postgresql://db.internal/crmd?sslmode=verify-full");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_int_equal(e.nproblems, 0);
    fake_set(&f, "CRMD_DATABASE_URL", "postgresql://CRMD_OWNER@db.internal/crmd?sslmode=verify-full");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_int_equal(e.nproblems, 0);

    /* Outside production the embedded defaults already use two roles, and given URLs are not compared. */
    fake_env_t g = {0};
    fake_set(&g, "CRMD_DATABASE_URL", "postgresql://same@localhost/crmd");
    fake_set(&g, "CRMD_MIGRATE_DATABASE_URL", "postgresql://same@localhost/crmd");
    assert_int_equal(load(&g, &e, &c), 0);
    assert_int_equal(e.nproblems, 0);
}

static void test_sslmode_rules(void **state)
{
    /* expect: 0 nothing, 1 warning, 2 error. */
    static const struct {
        const char *url;
        int expect;
    } cases[] = {
        {"postgresql://db.internal/crmd?sslmode=disable", 2},
        {"postgresql://db.internal/crmd?sslmode=allow", 2},
        {"postgresql://db.internal/crmd", 1},
        {"postgresql://db.internal/crmd?sslmode=prefer", 1},
        {"postgresql://db.internal/crmd?sslmode=require", 1},
        {"postgresql://db.internal/crmd?requiressl=1", 1},
        {"postgresql://db.internal/crmd?sslmode=verify-ca", 0},
        {"postgresql://db.internal/crmd?sslmode=verify-full", 0},
        {"postgresql://localhost/crmd?sslmode=disable", 0},
        {"postgresql://127.0.0.2:5433/crmd?sslmode=disable", 0},
        {"postgresql://[::1]:5432/crmd?sslmode=disable", 0},
        {"postgresql://[2001:db8::5]/crmd?sslmode=disable", 2},
        {"postgresql:///crmd?host=/var/run/postgresql&sslmode=disable", 0},
        {"postgresql://%2Fvar%2Frun%2Fpostgresql/crmd?sslmode=disable", 0},
        {"postgresql:///crmd?sslmode=disable", 0},
        {"postgresql://localhost,127.0.0.1/crmd?sslmode=disable", 0},
        {"postgresql://localhost:5432,db2:5433/crmd?sslmode=disable", 2},
        {"postgresql://localhost,db2/crmd?sslmode=prefer", 1},
        {"postgresql://u:" PW "@localhost/crmd?hostaddr=10.0.0.5&sslmode=disable", 2},
        {"host=localhost,/tmp,db2 dbname=crmd sslmode=disable", 2},
        {"host=localhost,/tmp,,@sock dbname=crmd sslmode=disable", 0},
        {"host=,db2 sslmode=disable", 2},
        {"host=db2, sslmode=disable", 2},
        {"hostaddr=127.0.0.1 sslmode=disable", 0},
        {"hostaddr=127.0.0.1,10.9.9.9 sslmode=disable", 2},
        {"host=localhost hostaddr=10.0.0.5 sslmode=disable", 2},
        {"host=db.internal hostaddr=127.0.0.1 sslmode=disable", 2},
        {"dbname=crmd sslmode=disable", 0},
        {"dbname=crmd", 0},
        {"service=prod sslmode=disable", 2},
        {"service=prod", 1},
        {"service=prod sslmode=verify-full", 0},
        {"host=/tmp service=prod sslmode=disable", 0},
    };
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc;
        prod_baseline(&f);
        fake_set(&f, "CRMD_DATABASE_URL", cases[i].url);
        rc = load(&f, &e, &c);
        if (e.nproblems != (cases[i].expect ? 1u : 0u) ||
            (cases[i].expect &&
             (strcmp(e.problems[0].var, "CRMD_DATABASE_URL") != 0 || e.problems[0].warning != (cases[i].expect == 1))))
            fail_msg("%s: %zu problems, first: %s", cases[i].url, e.nproblems,
                     e.nproblems ? e.problems[0].message : "-");
        assert_int_equal(rc, cases[i].expect == 2 ? CRM_E_CONFIG : 0);
        if (cases[i].expect)
            assert_null(strstr(e.problems[0].message, PW));
    }

    /* The exact wording: the first offending host is named. */
    prod_baseline(&f);
    fake_set(&f, "CRMD_DATABASE_URL", "host=localhost,db2,db3 dbname=crmd");
    load(&f, &e, &c);
    assert_only_problem(&e, "CRMD_DATABASE_URL", 1,
                        "sslmode is not set (libpq then uses prefer) and may fall back to plaintext with non-loopback "
                        "host \"db2\"; use sslmode=verify-full");
    fake_set(&f, "CRMD_DATABASE_URL", "service=prod sslmode=disable");
    load(&f, &e, &c);
    assert_only_problem(&e, "CRMD_DATABASE_URL", 0,
                        "sslmode=disable permits plaintext to the hosts of service \"prod\" (not inspected); "
                        "production needs sslmode=verify-full");
}

static void test_sslmode_rules_libpq_environment(void **state)
{
    fake_env_t f = {0};
    crm_env_t e;
    crm_config_t c;

    /* Without host or hostaddr in the URL, libpq uses PGHOST/PGHOSTADDR. */
    prod_baseline(&f);
    fake_set(&f, "CRMD_DATABASE_URL", "dbname=crmd sslmode=disable");
    fake_set(&f, "PGHOST", "db.remote");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_DATABASE_URL", 0,
                        "sslmode=disable permits plaintext to non-loopback host \"db.remote\"; production needs "
                        "sslmode=verify-full");
    fake_set(&f, "PGHOST", "/var/run/postgresql");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_int_equal(e.nproblems, 0);
    fake_set(&f, "PGHOSTADDR", "192.0.2.7");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_DATABASE_URL", 0, NULL);
    fake_unset(&f, "PGHOSTADDR");
    fake_unset(&f, "PGHOST");

    /* Hosts in the URL win over PGHOST. */
    fake_set(&f, "CRMD_DATABASE_URL", "host=localhost sslmode=disable");
    fake_set(&f, "PGHOST", "db.remote");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_int_equal(e.nproblems, 0);

    /* Without sslmode in the URL, libpq uses PGSSLMODE. */
    fake_set(&f, "CRMD_DATABASE_URL", "postgresql://db.internal/crmd");
    fake_set(&f, "PGSSLMODE", "disable");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_DATABASE_URL", 0,
                        "sslmode=disable (from PGSSLMODE) permits plaintext to non-loopback host \"db.internal\"; "
                        "production needs sslmode=verify-full");
    fake_set(&f, "PGSSLMODE", "verify-full");
    assert_int_equal(load(&f, &e, &c), 0);
    assert_int_equal(e.nproblems, 0);
    fake_set(&f, "PGSSLMODE", "bogus");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(
        &e, "CRMD_DATABASE_URL", 0,
        "sslmode (from PGSSLMODE) is not one of disable, allow, prefer, require, verify-ca, verify-full");
    /* The URL's sslmode wins over PGSSLMODE. */
    fake_set(&f, "CRMD_DATABASE_URL", "postgresql://db.internal/crmd?sslmode=verify-full");
    fake_set(&f, "PGSSLMODE", "disable");
    assert_int_equal(load(&f, &e, &c), 0);
    fake_unset(&f, "PGSSLMODE");

    /* PGSERVICE stands in for the URL's service. */
    fake_set(&f, "CRMD_DATABASE_URL", "dbname=crmd sslmode=disable");
    fake_set(&f, "PGSERVICE", "prod");
    assert_int_equal(load(&f, &e, &c), CRM_E_CONFIG);
    assert_only_problem(&e, "CRMD_DATABASE_URL", 0, NULL);
}

static void test_password_never_in_messages(void **state)
{
    static const char *const urls[] = {
        "postgresql://u:" PW "@h/db?x",
        "postgresql://u:" PW "@h/db?foo=bar",
        "postgresql://u:" PW "@h/db?a=b=c",
        "postgresql://u:" PW "@h/db?sslmode=%zz",
        "postgresql://u:" PW "@h/db?sslmode=%00",
        "postgresql://u:" PW "@[::1/db",
        "postgresql://u:" PW "@[]/db",
        "postgresql://u:" PW "@h:5432x/db?sslmode=disable&x",
        "postgres://" PW "@h/db?" PW "=1",
        "postgresql://u:" PW "\"=\"" PW "\"@h/db?x",
        "postgresql://u:\"=\" " PW " \"=\"@h/db?y",
        "host=h password=" PW " junk",
        "host=h password='" PW " junk",
        "password=" PW " " PW "=x",
        "password=" PW "\"=\" " PW " \"=\" x",
        "\"=\"" PW "\"",
        PW,
        "host=db.internal password=" PW " sslmode=disable",
        "postgresql://u:" PW "@db.internal/crmd?sslmode=disable",
        "postgresql://u:" PW "@db.internal/crmd?sslmode=" PW,
        "postgresql://u:" PW "@db.internal/crmd?sslmode=prefer",
        "postgresql://u:" PW "@db.internal/crmd",
    };
    /* A password with an unescaped '@' makes libpq read its tail as the host: that host is not shown. */
    static const char *const at_urls[] = {
        "postgresql://u:p@" PW "@db.internal/x?sslmode=disable",
        "postgresql://u:p@" PW "@db.internal/x",
        "postgresql://u:p@" PW "@db.internal,db2/x?sslmode=prefer",
        "host=db.internal hostaddr=10.0.0.1 sslmode=disable service=p@" PW,
        "service=p@" PW " sslmode=disable",
    };
    for (size_t i = 0; i < sizeof(at_urls) / sizeof(at_urls[0]); i++) {
        fake_env_t f = {0};
        crm_env_t e;
        crm_config_t c;
        char *out;
        prod_baseline(&f);
        fake_set(&f, "CRMD_DATABASE_URL", at_urls[i]);
        load(&f, &e, &c);
        assert_int_equal(e.nproblems, 1);
        out = print_to_string(&e);
        if (strstr(out, PW) != NULL)
            fail_msg("secret leaked for %s:\n%s", at_urls[i], out);
        free(out);
    }
    {
        fake_env_t f = {0};
        crm_env_t e;
        crm_config_t c;
        prod_baseline(&f);
        fake_set(&f, "CRMD_DATABASE_URL", at_urls[0]);
        load(&f, &e, &c);
        assert_only_problem(&e, "CRMD_DATABASE_URL", 0,
                            "sslmode=disable permits plaintext to a non-loopback host; production needs "
                            "sslmode=verify-full");
        fake_set(&f, "CRMD_DATABASE_URL", at_urls[4]);
        load(&f, &e, &c);
        assert_only_problem(&e, "CRMD_DATABASE_URL", 0,
                            "sslmode=disable permits plaintext to the hosts of a service (not inspected); production "
                            "needs sslmode=verify-full");
    }

    for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
        for (int env = 0; env < 2; env++) {
            fake_env_t f = {0};
            crm_env_t e;
            crm_config_t c;
            char *out;
            if (env)
                prod_baseline(&f);
            fake_set(&f, "CRMD_DATABASE_URL", urls[i]);
            fake_set(&f, "CRMD_MIGRATE_DATABASE_URL", urls[i]);
            load(&f, &e, &c);
            out = print_to_string(&e);
            if (strstr(out, PW) != NULL || strstr(out, urls[i]) != NULL)
                fail_msg("secret leaked for %s:\n%s", urls[i], out);
            free(out);
        }
    }
}

/* crm_config_vars names exactly the CRMD_* variables crm_config_load reads, each once. */
static void test_vars_table_matches_reads(void **state)
{
    static const char *const libpq_vars[] = {"PGHOST", "PGHOSTADDR", "PGSERVICE", "PGSSLMODE"};
    for (int scenario = 0; scenario < 3; scenario++) {
        fake_env_t f = {0};
        crm_env_t e;
        crm_config_t c;

        if (scenario == 1)
            prod_baseline(&f);
        if (scenario == 2) {
            /* Production, migrations off, URLs that send libpq to its environment. */
            prod_baseline(&f);
            fake_set(&f, "CRMD_MIGRATE", "0");
            fake_set(&f, "CRMD_DATABASE_URL", "dbname=crmd");
        }
        load(&f, &e, &c);
        for (size_t i = 0; i < crm_config_nvars; i++) {
            if (!fake_was_asked(&f, crm_config_vars[i].name))
                fail_msg("scenario %d: %s is documented but not read", scenario, crm_config_vars[i].name);
        }
        for (size_t i = 0; i < f.nasked; i++) {
            int documented = 0;
            for (size_t j = 0; j < crm_config_nvars; j++)
                documented |= strcmp(f.asked[i], crm_config_vars[j].name) == 0;
            for (size_t j = 0; j < sizeof(libpq_vars) / sizeof(libpq_vars[0]); j++)
                documented |= strcmp(f.asked[i], libpq_vars[j]) == 0;
            if (!documented)
                fail_msg("scenario %d: %s is read but not documented", scenario, f.asked[i]);
        }
        if (scenario == 2) {
            assert_true(fake_was_asked(&f, "PGHOST"));
            assert_true(fake_was_asked(&f, "PGSERVICE"));
        } else {
            assert_false(fake_was_asked(&f, "PGHOST"));
        }
    }

    assert_int_equal(crm_config_nvars, 54);
    for (size_t i = 0; i < crm_config_nvars; i++) {
        assert_non_null(crm_config_vars[i].default_text);
        assert_true(strlen(crm_config_vars[i].help) > 10);
        assert_int_equal(strncmp(crm_config_vars[i].name, "CRMD_", 5), 0);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(crm_config_vars[i].name, crm_config_vars[j].name);
    }
    /* The documented defaults and ranges of the integer variables are the enforced ones. */
    for (size_t i = 0; i < sizeof(int_vars) / sizeof(int_vars[0]); i++) {
        char range[64];
        size_t j;
        for (j = 0; j < crm_config_nvars && strcmp(crm_config_vars[j].name, int_vars[i].name) != 0; j++)
            ;
        assert_true(j < crm_config_nvars);
        assert_string_equal(crm_config_vars[j].default_text, int_vars[i].def_text);
        snprintf(range, sizeof(range), " (%" PRId64 "..%" PRId64 ")", int_vars[i].min, int_vars[i].max);
        assert_non_null(strstr(crm_config_vars[j].help, range));
    }
}

static void test_warn_unknown(void **state)
{
    char *const envp[] = {
        "PATH=/usr/bin",       "CRMD_LISTEN=127.0.0.1:1", "CRMD_DATABSE_URL=postgresql://u:" PW "@h/db",
        "CRMD_FOO=" PW,        "CRMD_log_level=debug",    "CRMD_NOVALUE",
        "CRMD_DB_POOL_SIZE=3", "XCRMD_LISTEN=1",          NULL};
    crm_env_t e;
    char *out;

    crm_env_init(&e, fake_get, NULL);
    crm_config_warn_unknown(&e, envp);
    assert_int_equal(crm_env_count_errors(&e), 0);
    out = print_to_string(&e);
    assert_string_equal(out, "warning: unknown variable CRMD_DATABSE_URL is ignored; did you mean CRMD_DATABASE_URL?\n"
                             "warning: unknown variable CRMD_FOO is ignored\n"
                             "warning: unknown variable CRMD_log_level is ignored; did you mean CRMD_LOG_LEVEL?\n"
                             "warning: unknown variable CRMD_NOVALUE is ignored\n");
    free(out);
    crm_config_warn_unknown(&e, NULL);
    assert_int_equal(e.nproblems, 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_env_str_empty_is_unset),
        cmocka_unit_test(test_env_int),
        cmocka_unit_test(test_env_int_quotes_safely),
        cmocka_unit_test(test_env_bool),
        cmocka_unit_test(test_env_enum),
        cmocka_unit_test(test_env_hostport),
        cmocka_unit_test(test_problem_list),
        cmocka_unit_test(test_problem_list_overflow),
        cmocka_unit_test(test_excerpt),
        cmocka_unit_test(test_secret_is_weak),
        cmocka_unit_test(test_host_is_loopback),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_all_values_set),
        cmocka_unit_test(test_int_vars_bad_values),
        cmocka_unit_test(test_bool_and_enum_vars_bad_values),
        cmocka_unit_test(test_env_var),
        cmocka_unit_test(test_listen_var),
        cmocka_unit_test(test_tls_vars),
        cmocka_unit_test(test_database_url_vars),
        cmocka_unit_test(test_database_url_default_needs_absolute_cwd),
        cmocka_unit_test(test_production_ok),
        cmocka_unit_test(test_production_refusals_one_by_one),
        cmocka_unit_test(test_production_refusals_all_at_once),
        cmocka_unit_test(test_outbound_rules),
        cmocka_unit_test(test_warnings_do_not_fail),
        cmocka_unit_test(test_serving_role_is_not_the_owner),
        cmocka_unit_test(test_sslmode_rules),
        cmocka_unit_test(test_sslmode_rules_libpq_environment),
        cmocka_unit_test(test_password_never_in_messages),
        cmocka_unit_test(test_vars_table_matches_reads),
        cmocka_unit_test(test_auth_rules),
        cmocka_unit_test(test_warn_unknown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
