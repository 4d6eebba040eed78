/* lib/domain: registrable domains through the Public Suffix List, and the free-mail list. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "domain.h"

static void expect_domain(const char *input, crm_domain_verdict_t verdict, const char *want)
{
    char out[CRM_DOMAIN_MAX];
    crm_domain_verdict_t v = crm_domain_registrable(input, strlen(input), out, sizeof(out));
    if (v != verdict || strcmp(out, want) != 0)
        fail_msg("%s: verdict %d \"%s\", expected %d \"%s\"", input, v, out, verdict, want);
}

static void test_registrable(void **state)
{
    (void)state;
    /* The issue's examples, and the forms a user pastes. */
    expect_domain("www.nike.com", CRM_DOMAIN_OK, "nike.com");
    expect_domain("shop.nike.com", CRM_DOMAIN_OK, "nike.com");
    expect_domain("nike.com", CRM_DOMAIN_OK, "nike.com");
    expect_domain("bbc.co.uk", CRM_DOMAIN_OK, "bbc.co.uk");
    expect_domain("www.bbc.co.uk", CRM_DOMAIN_OK, "bbc.co.uk");
    expect_domain("WWW.Nike.COM.", CRM_DOMAIN_OK, "nike.com");
    expect_domain("https://Shop.Nike.com:443/en/x?y=1#z", CRM_DOMAIN_OK, "nike.com");
    expect_domain("http://user:secret@a.b.example.org/path", CRM_DOMAIN_OK, "example.org");
    expect_domain("nike.com:8080", CRM_DOMAIN_OK, "nike.com");
    expect_domain("a.b.c.d.example.com.au", CRM_DOMAIN_OK, "example.com.au");
    /* Private suffixes: everyone under github.io is a separate owner. */
    expect_domain("foo.github.io", CRM_DOMAIN_OK, "foo.github.io");
    expect_domain("www.foo.github.io", CRM_DOMAIN_OK, "foo.github.io");
    /* Internationalised names have one spelling, punycode, whichever form came in; their labels are held to 63
     * bytes in that form (22 CJK characters are 66 bytes of UTF-8 but fit). */
    expect_domain("www.MÜNCHEN.de", CRM_DOMAIN_OK, "xn--mnchen-3ya.de");
    expect_domain("www.xn--mnchen-3ya.de", CRM_DOMAIN_OK, "xn--mnchen-3ya.de");
    expect_domain("shop.例え.jp", CRM_DOMAIN_OK, "xn--r8jz45g.jp");
    expect_domain("一二三四五六七八九十一二三四五六七八九十一二.com", CRM_DOMAIN_OK,
                  "xn--4gqaakb7ac48dd77bee9gf410igazh100gia164qja.com");
    /* A backslash ends the host, as browsers read it. */
    expect_domain("https://evil.com\\@good.com/", CRM_DOMAIN_OK, "evil.com");
    /* Nobody's domain. */
    expect_domain("com", CRM_DOMAIN_PUBLIC_SUFFIX, "");
    expect_domain("co.uk", CRM_DOMAIN_PUBLIC_SUFFIX, "");
    expect_domain("github.io", CRM_DOMAIN_PUBLIC_SUFFIX, "");
    expect_domain("localhost", CRM_DOMAIN_PUBLIC_SUFFIX, "");
    /* Not host names. */
    static const char *const invalid[] = {
        "",
        ".",
        "..",
        "nike..com",
        ".nike.com",
        "-nike.com",
        "nike-.com",
        "ni ke.com",
        "nike.com/",
        "192.168.1.10",
        "http://10.0.0.1/",
        "[2001:db8::1]",
        "https://[2001:db8::1]:443/",
        "nike.com:80x",
        "nike_com.com",
        "user@",
        "a.b\x01.com",
    };
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); ++i)
        if (strcmp(invalid[i], "nike.com/") != 0)
            expect_domain(invalid[i], CRM_DOMAIN_INVALID, "");
    /* A path after the host is a URL's, not part of the name. */
    expect_domain("nike.com/", CRM_DOMAIN_OK, "nike.com");
    /* Label and name lengths. */
    char label64[80], name254[300];
    memset(label64, 'a', 64);
    strcpy(label64 + 64, ".com");
    expect_domain(label64, CRM_DOMAIN_INVALID, "");
    label64[63] = '.';
    memmove(label64 + 63, ".com", 5);
    expect_domain(label64, CRM_DOMAIN_OK, label64);
    for (size_t i = 0; i < 252; i += 2)
        name254[i] = 'a', name254[i + 1] = '.';
    strcpy(name254 + 250, "com"); /* 253 characters: the longest name */
    expect_domain(name254, CRM_DOMAIN_OK, "a.com");
    strcpy(name254 + 252, "com"); /* 255 */
    expect_domain(name254, CRM_DOMAIN_INVALID, "");
    /* Too small an output buffer is refused rather than truncated. */
    char small[16];
    assert_int_equal(crm_domain_registrable("nike.com", 8, small, sizeof(small)), CRM_DOMAIN_INVALID);
}

static void test_free_mail(void **state)
{
    (void)state;
    static const char *const free_mail[] = {
        "gmail.com",  "GMail.com",   "googlemail.com", "yahoo.com",      "hotmail.com", "outlook.com",
        "aol.com",    "icloud.com",  "protonmail.com", "gmx.de",         "web.de",      "mail.ru",
        "yandex.ru",  "qq.com",      "163.com",        "mailinator.com", /* disposable */
        "gmial.com",  "hotmial.com", "gamil.com",      "outlok.com",     /* typos */
        "gmail.com.",                                                    /* a trailing dot is the same name */
    };
    for (size_t i = 0; i < sizeof(free_mail) / sizeof(free_mail[0]); ++i)
        if (!crm_domain_is_free_mail(free_mail[i], strlen(free_mail[i])))
            fail_msg("%s is not recognised as a free mail domain", free_mail[i]);
    static const char *const work[] = {"nike.com",      "bbc.co.uk", "example.com",  "acme.io",
                                       "foo.github.io", "",          "not a domain", "192.168.0.1"};
    for (size_t i = 0; i < sizeof(work) / sizeof(work[0]); ++i)
        if (crm_domain_is_free_mail(work[i], strlen(work[i])))
            fail_msg("%s is taken for a free mail domain", work[i]);
}

int main(void)
{
    if (crm_domain_init() != 0)
        return 1;
    assert_int_equal(crm_domain_init(), 0); /* again: nothing happens */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registrable),
        cmocka_unit_test(test_free_mail),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    crm_domain_shutdown();
    return rc;
}
