/* Unit tests for lib/password: argon2id on the thread pool (hash, verify, dummy, rehash, bounds, detach) and the
 * password policy. Hashing tests use small costs except one, which checks the production defaults' format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include <cmocka.h>

#include "err.h"
#include "password.h"

typedef struct {
    int done, err, match, rehash;
    char encoded[CRM_PASSWORD_ENCODED_MAX];
} res_t;

static void on_hash(int err, const char *encoded, void *data)
{
    res_t *r = data;
    ++r->done;
    r->err = err;
    if (encoded != NULL)
        snprintf(r->encoded, sizeof(r->encoded), "%s", encoded);
}

static void on_verify(int err, int match, int rehash, void *data)
{
    res_t *r = data;
    ++r->done;
    r->err = err;
    r->match = match;
    r->rehash = rehash;
}

static const crm_password_params_t small = {.m_kib = 64, .t = 1, .p = 1};

static void run(uv_loop_t *loop, const int *flag)
{
    while (!*flag)
        uv_run(loop, UV_RUN_ONCE);
}

static void close_loop(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}

static void test_hash_and_verify(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    crm_password_hasher_t *h;
    assert_int_equal(crm_password_hasher_create(&loop, &small, 4, &h), 0);
    res_t r = {0};
    const char *pw = "correct horse battery staple";
    assert_int_equal(crm_password_hash(h, pw, strlen(pw), on_hash, &r, NULL), 0);
    assert_int_equal(r.done, 0); /* never inside the call */
    assert_int_equal(crm_password_in_flight(h), 1);
    run(&loop, &r.done);
    assert_int_equal(r.err, 0);
    assert_int_equal(strncmp(r.encoded, "$argon2id$v=19$m=64,t=1,p=1$", 28), 0);
    char stored[CRM_PASSWORD_ENCODED_MAX];
    strcpy(stored, r.encoded);

    /* Two hashes of one password differ (fresh salt). */
    res_t r2 = {0};
    assert_int_equal(crm_password_hash(h, pw, strlen(pw), on_hash, &r2, NULL), 0);
    run(&loop, &r2.done);
    assert_string_not_equal(r2.encoded, stored);

    res_t v = {0};
    assert_int_equal(crm_password_verify(h, stored, pw, strlen(pw), on_verify, &v, NULL), 0);
    run(&loop, &v.done);
    assert_int_equal(v.err, 0);
    assert_int_equal(v.match, 1);
    assert_int_equal(v.rehash, 0);

    res_t w = {0};
    assert_int_equal(crm_password_verify(h, stored, "correct horse battery stapl", 27, on_verify, &w, NULL), 0);
    run(&loop, &w.done);
    assert_int_equal(w.err, 0);
    assert_int_equal(w.match, 0);

    /* The dummy never matches, whatever the password. */
    res_t d = {0};
    assert_int_equal(crm_password_verify(h, NULL, pw, strlen(pw), on_verify, &d, NULL), 0);
    run(&loop, &d.done);
    assert_int_equal(d.err, 0);
    assert_int_equal(d.match, 0);
    assert_int_equal(crm_password_in_flight(h), 0);
    crm_password_hasher_free(h);
    close_loop(&loop);
}

static void test_rehash_and_bad_hashes(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    crm_password_hasher_t *old, *cur;
    crm_password_params_t stronger = {.m_kib = 128, .t = 2, .p = 1};
    assert_int_equal(crm_password_hasher_create(&loop, &small, 4, &old), 0);
    assert_int_equal(crm_password_hasher_create(&loop, &stronger, 4, &cur), 0);
    res_t r = {0};
    assert_int_equal(crm_password_hash(old, "old-params-password", 19, on_hash, &r, NULL), 0);
    run(&loop, &r.done);
    res_t v = {0};
    assert_int_equal(crm_password_verify(cur, r.encoded, "old-params-password", 19, on_verify, &v, NULL), 0);
    run(&loop, &v.done);
    assert_int_equal(v.match, 1);
    assert_int_equal(v.rehash, 1); /* made with other parameters than cur's */
    res_t x = {0};
    assert_int_equal(crm_password_verify(cur, r.encoded, "wrong-params-password", 21, on_verify, &x, NULL), 0);
    run(&loop, &x.done);
    assert_int_equal(x.match, 0);
    assert_int_equal(x.rehash, 0); /* only reported with a match */

    /* Not argon2id, another version, costs over the bounds, garbage: refused before any work. */
    static const char *const bad[] = {
        "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaA",
        "$argon2id$v=16$m=64,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaA",
        "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaA",
        "$argon2id$v=19$m=64,t=65,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaA",
        "$argon2id$v=19$m=64,t=1,p=17$c2FsdHNhbHRzYWx0c2FsdA$aGFzaA",
        "$argon2id$v=19$m=4,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaA",
        "bcrypt$2b$12$abcdefghijklmnopqrstuv",
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i)
        assert_int_equal(crm_password_verify(cur, bad[i], "x", 1, on_verify, &x, NULL), CRM_E_PARSE);
    /* Well-formed header, undecodable body: the worker reports it. */
    res_t p = {0};
    assert_int_equal(crm_password_verify(cur, "$argon2id$v=19$m=64,t=1,p=1$!!!$???", "x", 1, on_verify, &p, NULL), 0);
    run(&loop, &p.done);
    assert_int_equal(p.err, CRM_E_PARSE);
    assert_int_equal(p.match, 0);
    crm_password_hasher_free(old);
    crm_password_hasher_free(cur);
    close_loop(&loop);
}

static void test_bounds_and_detach(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    crm_password_hasher_t *h;
    crm_password_params_t bad = {.m_kib = 4, .t = 1, .p = 1};
    assert_int_equal(crm_password_hasher_create(&loop, &bad, 4, &h), CRM_E_INVAL);
    assert_int_equal(crm_password_hasher_create(&loop, &small, 0, &h), CRM_E_INVAL);
    assert_int_equal(crm_password_hasher_create(&loop, &small, 2, &h), 0);
    res_t a = {0}, b = {0}, c = {0};
    crm_password_op_t *op;
    assert_int_equal(crm_password_hash(h, "aaaaaaaaaaaaaaa", 15, on_hash, &a, &op), 0);
    assert_int_equal(crm_password_hash(h, "bbbbbbbbbbbbbbb", 15, on_hash, &b, NULL), 0);
    /* Bounded: the third is refused at once and its callback never runs. */
    assert_int_equal(crm_password_hash(h, "ccccccccccccccc", 15, on_hash, &c, NULL), CRM_E_QUEUE_FULL);
    char big[CRM_PASSWORD_MAX_BYTES + 1];
    memset(big, 'x', sizeof(big));
    assert_int_equal(crm_password_verify(h, NULL, big, sizeof(big), on_verify, &c, NULL), CRM_E_TOO_LARGE);
    crm_password_op_detach(op);
    run(&loop, &b.done);
    while (crm_password_in_flight(h) > 0)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(a.done, 0); /* detached: never called */
    assert_int_equal(c.done, 0);
    /* Freeing with work in flight defers the free until it is back; its callbacks still run, once, with
     * CRM_E_SHUTDOWN, so that their callers can release what they hold. */
    res_t v = {0};
    assert_int_equal(crm_password_hash(h, "ddddddddddddddd", 15, on_hash, &c, NULL), 0);
    assert_int_equal(crm_password_verify(h, NULL, "ddddddddddddddd", 15, on_verify, &v, NULL), 0);
    crm_password_hasher_free(h);
    close_loop(&loop);
    assert_int_equal(c.done, 1);
    assert_int_equal(c.err, CRM_E_SHUTDOWN);
    assert_int_equal(v.done, 1);
    assert_int_equal(v.err, CRM_E_SHUTDOWN);
    assert_int_equal(v.match, 0);
}

static void test_default_parameters(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    crm_password_params_t p;
    crm_password_params_default(&p);
    assert_int_equal(p.m_kib, 19456);
    assert_int_equal(p.t, 2);
    assert_int_equal(p.p, 1);
    crm_password_hasher_t *h;
    assert_int_equal(crm_password_hasher_create(&loop, &p, 1, &h), 0);
    res_t r = {0};
    assert_int_equal(crm_password_hash(h, "Tr0ub4dor&3-but-longer", 22, on_hash, &r, NULL), 0);
    run(&loop, &r.done);
    assert_int_equal(strncmp(r.encoded, "$argon2id$v=19$m=19456,t=2,p=1$", 31), 0);
    /* 16-byte salt and 32-byte hash, unpadded base64: 22 and 43 characters. */
    const char *salt = r.encoded + 31, *dollar = strchr(salt, '$');
    assert_non_null(dollar);
    assert_int_equal(dollar - salt, 22);
    assert_int_equal(strlen(dollar + 1), 43);
    crm_password_hasher_free(h);
    close_loop(&loop);
}

static void test_policy(void **state)
{
    (void)state;
    assert_int_equal(crm_password_policy_init(), 0);
    assert_int_equal(crm_password_policy_init(), 0); /* idempotent */
#define CHECK_PW(pw, email, want) assert_int_equal(crm_password_policy_check(pw, strlen(pw), email), want)
    CHECK_PW("short", NULL, CRM_PASSWORD_TOO_SHORT);
    CHECK_PW("elevenchars", NULL, CRM_PASSWORD_TOO_SHORT);
    CHECK_PW("twelve chars", NULL, CRM_PASSWORD_OK);
    /* Characters, not bytes: 11 two-byte characters are too short, 12 are enough. */
    CHECK_PW("ééééééééééé", NULL, CRM_PASSWORD_TOO_SHORT);
    CHECK_PW("éééééééééééé", NULL, CRM_PASSWORD_OK);
    /* From the list (ranks 850, 1000, 1353), in any case. */
    CHECK_PW("123qweasdzxc", NULL, CRM_PASSWORD_COMMON);
    CHECK_PW("1QAZ2WSX3EDC", NULL, CRM_PASSWORD_COMMON);
    CHECK_PW("1q2w3e4r5t6y", NULL, CRM_PASSWORD_COMMON);
    CHECK_PW("1q2w3e4r5t6y7", NULL, CRM_PASSWORD_OK);
    CHECK_PW("Jane.Doe@Example.com", "jane.doe@example.com", CRM_PASSWORD_IS_EMAIL);
    CHECK_PW("jane.doe@example.com!", "jane.doe@example.com", CRM_PASSWORD_OK);
    CHECK_PW("\xff\xfe not utf-8 at all", NULL, CRM_PASSWORD_INVALID_UTF8);
    CHECK_PW("overlong \xc0\xaf slash....", NULL, CRM_PASSWORD_INVALID_UTF8);
    CHECK_PW("surrogate \xed\xa0\x80 here...", NULL, CRM_PASSWORD_INVALID_UTF8);
    CHECK_PW("truncated at the end \xe2\x82", NULL, CRM_PASSWORD_INVALID_UTF8);
    assert_int_equal(crm_password_policy_check("with a NUL\0inside it", 20, NULL), CRM_PASSWORD_INVALID_UTF8);
    char many[1100];
    memset(many, 'a', 257);
    assert_int_equal(crm_password_policy_check(many, 256, NULL), CRM_PASSWORD_OK);
    assert_int_equal(crm_password_policy_check(many, 257, NULL), CRM_PASSWORD_TOO_LONG);
    /* 256 four-byte characters are 1024 bytes: allowed; one byte more is not. */
    for (int i = 0; i < 256; ++i)
        memcpy(many + 4 * i, "\xf0\x9f\x98\x80", 4);
    assert_int_equal(crm_password_policy_check(many, 1024, NULL), CRM_PASSWORD_OK);
    many[1024] = 'a';
    assert_int_equal(crm_password_policy_check(many, 1025, NULL), CRM_PASSWORD_TOO_LONG);
    assert_string_equal(crm_password_verdict_message(CRM_PASSWORD_COMMON), "is one of the most common passwords");
#undef CHECK_PW
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_and_verify),
        cmocka_unit_test(test_rehash_and_bad_hashes),
        cmocka_unit_test(test_bounds_and_detach),
        cmocka_unit_test(test_default_parameters),
        cmocka_unit_test(test_policy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
