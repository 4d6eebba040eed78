#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "mail/rfc2047.h"

#define FFFD "\xEF\xBF\xBD"

typedef struct {
    const char *in;
    size_t len; /* 0: strlen(in) */
    const char *out;
} decode_case_t;

static const decode_case_t decode_cases[] = {
    {"plain text", 0, "plain text"},
    {"", 0, ""},
    {"=?UTF-8?B?SGVsbG8=?=", 0, "Hello"},
    {"=?utf-8?b?SGVsbG8?=", 0, "Hello"}, /* padding missing */
    {"=?utf-8?q?caf=C3=A9?=", 0, "caf\xC3\xA9"},
    {"=?utf-8?q?=c3=a9_x?=", 0, "\xC3\xA9 x"},
    {"=?Utf-8?Q?x?=", 0, "x"},
    {"=?utf8?Q?x?=", 0, "x"},
    {"=?UTF-8*en?Q?hi?=", 0, "hi"}, /* RFC 2231 language */
    {"=?utf-8?b?8J+YgA==?=", 0, "\xF0\x9F\x98\x80"},
    {"=?ISO-8859-1?Q?Andr=E9?= Pirard", 0, "Andr\xC3\xA9 Pirard"},
    {"=?latin1?q?=E9?=", 0, "\xC3\xA9"},
    {"=?ANSI_X3.4-1968?Q?abc?=", 0, "abc"},
    {"=?us-ascii?q?=80?=", 0, "\xE2\x82\xAC"}, /* read as Windows-1252 */
    {"=?iso-8859-1?q?this=20is=20some=20text?=", 0, "this is some text"},
    {"=?windows-1252?Q?=93hi=94_=80?=", 0, "\xE2\x80\x9Chi\xE2\x80\x9D \xE2\x82\xAC"},
    {"=?cp1252?q?=81=9F=A0=FF?=", 0, FFFD "\xC5\xB8\xC2\xA0\xC3\xBF"},
    /* RFC 2047 §8 */
    {"(=?ISO-8859-1?Q?a?=)", 0, "(a)"},
    {"(=?ISO-8859-1?Q?a?= b)", 0, "(a b)"},
    {"(=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=)", 0, "(ab)"},
    {"(=?ISO-8859-1?Q?a?=  =?ISO-8859-1?Q?b?=)", 0, "(ab)"},
    {"(=?ISO-8859-1?Q?a?=\r\n    =?ISO-8859-1?Q?b?=)", 0, "(ab)"},
    {"(=?ISO-8859-1?Q?a_b?=)", 0, "(a b)"},
    {"(=?ISO-8859-1?Q?a?= =?ISO-8859-2?Q?_b?=)", 0, "(a =?ISO-8859-2?Q?_b?=)"},
    /* Lenient placement */
    {"=?utf-8?q?a?==?utf-8?q?b?=", 0, "ab"},
    {"foo=?utf-8?q?bar?=baz", 0, "foobarbaz"},
    {"=?utf-8?q?a?= b", 0, "a b"},
    {"x =?utf-8?q?a?= \t =?utf-8?b?Yg==?= y", 0, "x ab y"},
    {"=?utf-8?q?\?=", 0, ""},
    /* Malformed or unknown: verbatim */
    {"=?koi8-r?B?8NLJ18XU?=", 0, "=?koi8-r?B?8NLJ18XU?="},
    {"=?utf-8?B?SGV$sbG8=?=", 0, "=?utf-8?B?SGV$sbG8=?="},
    {"=?utf-8?b?SGVsb?=", 0, "=?utf-8?b?SGVsb?="},
    {"=?utf-8?b?SG=Vs?=", 0, "=?utf-8?b?SG=Vs?="},
    {"=?utf-8?q?a=Zb?=", 0, "=?utf-8?q?a=Zb?="},
    {"=?utf-8?q?a=4?=", 0, "=?utf-8?q?a=4?="},
    {"=?utf-8?x?abc?=", 0, "=?utf-8?x?abc?="},
    {"=?utf-8?q?abc", 0, "=?utf-8?q?abc"},
    {"=?utf-8?q?a b?=", 0, "=?utf-8?q?a b?="},
    {"=??q?a?=", 0, "=??q?a?="},
    {"a =? b ?= c", 0, "a =? b ?= c"},
    {"=?utf-8?q?a?b?=", 0, "=?utf-8?q?a?b?="},
    /* Output hygiene */
    {"Hello\r\n World", 0, "Hello World"},
    {"caf\xE9", 0, "caf" FFFD},
    {"a\0b", 3, "a" FFFD "b"},
    {"J\xC3\xBCrgen", 0, "J\xC3\xBCrgen"},
    {"=?utf-8?q?a=0D=0Ab?=", 0, "a  b"},
    {"=?utf-8?q?a=00b?=", 0, "a" FFFD "b"},
    {"=?latin1?q?a=00b?=", 0, "a" FFFD "b"},
    {"=?utf-8?q?a=FFb?=", 0, "a" FFFD "b"},
    {"=?utf-8?q?=E2=82?=", 0, FFFD},
    {"=?utf-8?q?=E2=82?= =?utf-8?q?=AC?=", 0, FFFD FFFD}, /* no sequence spans two words */
    {"=?utf-8?q?=ED=A0=80?=", 0, FFFD FFFD FFFD},         /* surrogate */
    {"=?utf-8?q?=C0=80?=", 0, FFFD FFFD},                 /* overlong */
    {"=?utf-8?q?=F4=90=80=80?=", 0, FFFD FFFD FFFD FFFD}, /* above U+10FFFF */
    {"\xE2\x82=?utf-8?q?x?=", 0, FFFD "x"},
    {"\xF0\x9F\x98", 0, FFFD},
};

static void test_decode_table(void **state)
{
    for (size_t i = 0; i < sizeof(decode_cases) / sizeof(decode_cases[0]); ++i) {
        const decode_case_t *c = &decode_cases[i];
        size_t len = c->len ? c->len : strlen(c->in);
        char out[512];
        size_t out_len = 12345;
        int rc = crm_rfc2047_decode(c->in, len, out, sizeof(out), &out_len);
        if (rc != 0 || strcmp(out, c->out) != 0)
            print_error("case %zu: %s\n", i, c->in);
        assert_int_equal(rc, 0);
        assert_string_equal(out, c->out);
        assert_int_equal(out_len, strlen(c->out));
    }
}

static void test_decode_capacity(void **state)
{
    char out[8];
    size_t n = 99;
    assert_int_equal(crm_rfc2047_decode("abc", 3, out, 4, &n), 0);
    assert_string_equal(out, "abc");
    assert_int_equal(n, 3);
    assert_int_equal(crm_rfc2047_decode("abcd", 4, out, 4, &n), CRM_E_TOO_LARGE);
    assert_string_equal(out, "");
    assert_int_equal(crm_rfc2047_decode("\xFF", 1, out, 3, NULL), CRM_E_TOO_LARGE);
    assert_int_equal(crm_rfc2047_decode("\xFF", 1, out, 4, NULL), 0);
    assert_string_equal(out, FFFD);
    assert_int_equal(crm_rfc2047_decode(NULL, 0, out, 1, &n), 0);
    assert_string_equal(out, "");
    assert_int_equal(n, 0);
    assert_int_equal(crm_rfc2047_decode(NULL, 1, out, 8, NULL), CRM_E_INVAL);
    assert_int_equal(crm_rfc2047_decode("a", 1, NULL, 8, NULL), CRM_E_INVAL);
    assert_int_equal(crm_rfc2047_decode("a", 1, out, 0, NULL), CRM_E_INVAL);
}

/* The worst cases for expansion fit exactly in CRM_RFC2047_DECODE_MAX. */
static void test_decode_bound(void **state)
{
    char in[400], *out;
    size_t n;
    memset(in, 0xFF, sizeof(in));
    out = malloc(CRM_RFC2047_DECODE_MAX(sizeof(in)));
    assert_int_equal(crm_rfc2047_decode(in, sizeof(in), out, CRM_RFC2047_DECODE_MAX(sizeof(in)), &n), 0);
    assert_int_equal(n, 3 * sizeof(in));
    free(out);

    /* Windows-1252 0x80 in B: 4 characters give 3 bytes, each the 3-byte euro sign. */
    size_t len = 0;
    len += (size_t)sprintf(in, "=?cp1252?b?");
    for (int k = 0; k < 20; ++k)
        len += (size_t)sprintf(in + len, "gICA");
    len += (size_t)sprintf(in + len, "?=");
    out = malloc(CRM_RFC2047_DECODE_MAX(len));
    assert_int_equal(crm_rfc2047_decode(in, len, out, CRM_RFC2047_DECODE_MAX(len), &n), 0);
    assert_int_equal(n, 60 * 3);
    for (size_t k = 0; k < 60; ++k)
        assert_memory_equal(out + 3 * k, "\xE2\x82\xAC", 3);
    free(out);
}

static void test_decode_alloc(void **state)
{
    char *out = (char *)1;
    size_t n = 0;
    assert_int_equal(crm_rfc2047_decode_alloc("=?utf-8?q?=C3=A9t=C3=A9?=", 25, &out, &n), 0);
    assert_string_equal(out, "\xC3\xA9t\xC3\xA9");
    assert_int_equal(n, 5);
    free(out);
    out = (char *)1;
    assert_int_equal(crm_rfc2047_decode_alloc(NULL, 2, &out, &n), CRM_E_INVAL);
    assert_null(out);
    assert_int_equal(crm_rfc2047_decode_alloc("x", 1, NULL, &n), CRM_E_INVAL);
    assert_int_equal(crm_rfc2047_decode_alloc("x", SIZE_MAX / 2, &out, &n), CRM_E_TOO_LARGE);
    assert_null(out);
}

typedef struct {
    const char *in;
    size_t len;
    unsigned flags;
    const char *out;
} encode_case_t;

static const encode_case_t encode_cases[] = {
    {"Hello World", 0, 0, "Hello World"},
    {"", 0, 0, ""},
    {"", 0, CRM_RFC2047_ENCODE_ALWAYS, "=?UTF-8?B?\?="},
    {"~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./", 0, 0, "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./"},
    {"a =?b", 0, 0, "=?UTF-8?B?YSA9P2I=?="},
    {"tab\there", 0, 0, "=?UTF-8?B?dGFiCWhlcmU=?="},
    {"caf\xC3\xA9", 0, 0, "=?UTF-8?B?Y2Fmw6k=?="},
    {"Hi", 0, CRM_RFC2047_ENCODE_ALWAYS, "=?UTF-8?B?SGk=?="},
    {"\xF0\x9F\x98\x80", 0, 0, "=?UTF-8?B?8J+YgA==?="},
};

static void test_encode_table(void **state)
{
    for (size_t i = 0; i < sizeof(encode_cases) / sizeof(encode_cases[0]); ++i) {
        const encode_case_t *c = &encode_cases[i];
        size_t len = c->len ? c->len : strlen(c->in);
        char out[256];
        size_t n = 999;
        assert_int_equal(crm_rfc2047_encode(c->in, len, 9, c->flags, out, sizeof(out), &n), 0);
        assert_string_equal(out, c->out);
        assert_int_equal(n, strlen(c->out));
    }
}

static void test_encode_rejects(void **state)
{
    static const struct {
        const char *s;
        size_t len;
    } bad[] = {
        {"a\r\nBcc: x@y.com", 15},
        {"a\rb", 3},
        {"a\nb", 3},
        {"a\0b", 3},
        {"caf\xE9", 4},
        {"\xC0\x80", 2},
        {"\xED\xA0\x80", 3},
        {"\xF4\x90\x80\x80", 4},
        {"\xE2\x82", 2},
    };
    char out[256];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        strcpy(out, "junk");
        assert_int_equal(crm_rfc2047_encode(bad[i].s, bad[i].len, 0, 0, out, sizeof(out), NULL), CRM_E_INVAL);
        assert_string_equal(out, "");
    }
    assert_int_equal(crm_rfc2047_encode(NULL, 0, 0, 0, out, sizeof(out), NULL), CRM_E_INVAL);
    assert_int_equal(crm_rfc2047_encode("a", 1, 0, 0, NULL, 10, NULL), CRM_E_INVAL);
    assert_int_equal(crm_rfc2047_encode("a", 1, 0, 0, out, 0, NULL), CRM_E_INVAL);
    /* Capacity: "abc" needs 4 bytes; "é" needs 17 (=?UTF-8?B?w6k=?= and NUL). */
    assert_int_equal(crm_rfc2047_encode("abc", 3, 0, 0, out, 3, NULL), CRM_E_TOO_LARGE);
    assert_string_equal(out, "");
    assert_int_equal(crm_rfc2047_encode("abc", 3, 0, 0, out, 4, NULL), 0);
    assert_int_equal(crm_rfc2047_encode("\xC3\xA9", 2, 0, 0, out, 16, NULL), CRM_E_TOO_LARGE);
    assert_string_equal(out, "");
    assert_int_equal(crm_rfc2047_encode("\xC3\xA9", 2, 0, 0, out, 17, NULL), 0);
    assert_string_equal(out, "=?UTF-8?B?w6k=?=");
}

/* Checks the shape of encoded output: words separated by CRLF SP, each word at most 75 characters, each line at
 * most 76 (the first counting first_line_used), and each word's payload whole UTF-8 characters. */
static void check_words(const char *enc, size_t first_line_used)
{
    const char *p = enc;
    int first = 1;
    for (;;) {
        const char *e = strstr(p, "\r\n ");
        size_t wl = e ? (size_t)(e - p) : strlen(p);
        assert_true(wl <= CRM_RFC2047_WORD_MAX);
        assert_true(wl >= 12);
        assert_memory_equal(p, "=?UTF-8?B?", 10);
        assert_memory_equal(p + wl - 2, "?=", 2);
        size_t line = wl + (first ? first_line_used : 1);
        if (first_line_used + 20 <= CRM_RFC2047_LINE_MAX || !first)
            assert_true(line <= CRM_RFC2047_LINE_MAX);
        char word[80], dec[256];
        memcpy(word, p, wl);
        word[wl] = '\0';
        /* A word on its own decodes to valid UTF-8 without any U+FFFD, so no character was split. */
        size_t dl;
        assert_int_equal(crm_rfc2047_decode(word, wl, dec, sizeof(dec), &dl), 0);
        assert_null(strstr(dec, FFFD));
        if (e == NULL)
            break;
        p = e + 3;
        first = 0;
    }
}

static void test_encode_long_subject(void **state)
{
    /* 100 x "é" then "€" x 30 then "😀" x 20: every split point is a multibyte character. */
    char in[1024];
    size_t len = 0;
    for (int i = 0; i < 100; ++i)
        len += (size_t)sprintf(in + len, "\xC3\xA9");
    for (int i = 0; i < 30; ++i)
        len += (size_t)sprintf(in + len, "\xE2\x82\xAC");
    for (int i = 0; i < 20; ++i)
        len += (size_t)sprintf(in + len, "\xF0\x9F\x98\x80");
    char out[CRM_RFC2047_ENCODE_MAX(1024)];
    size_t n;
    assert_int_equal(crm_rfc2047_encode(in, len, 9, 0, out, sizeof(out), &n), 0);
    check_words(out, 9);
    /* The first word has 76 - 9 - 12 = 55 characters for base64, room for 39 bytes: 19 whole "é". */
    assert_memory_equal(out, "=?UTF-8?B?w6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6nDqcOpw6k=?=\r\n ", 67);
    char dec[2048];
    size_t dl;
    assert_int_equal(crm_rfc2047_decode(out, n, dec, sizeof(dec), &dl), 0);
    assert_int_equal(dl, len);
    assert_memory_equal(dec, in, len);

    /* A first line that is already full still gets one word carrying at least one character. */
    assert_int_equal(crm_rfc2047_encode(in, len, 70, 0, out, sizeof(out), &n), 0);
    assert_memory_equal(out, "=?UTF-8?B?w6nDqcOp?=\r\n ", 23);
    check_words(out, 70);
}

/* A deterministic generator, so that a failure reproduces. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(uint32_t bound)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % bound);
}

static size_t put_utf8(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static uint32_t random_cp(void)
{
    for (;;) {
        uint32_t cp;
        switch (rnd(5)) {
        case 0:
            cp = 0x20 + rnd(0x5F);
            break;
        case 1:
            cp = 1 + rnd(0x7F);
            break;
        case 2:
            cp = 0x80 + rnd(0x780);
            break;
        case 3:
            cp = 0x800 + rnd(0xF800);
            break;
        default:
            cp = 0x10000 + rnd(0x100000);
            break;
        }
        if (cp != '\r' && cp != '\n' && (cp < 0xD800 || cp > 0xDFFF))
            return cp;
    }
}

static void test_round_trip_random(void **state)
{
    static char in[2048], enc[CRM_RFC2047_ENCODE_MAX(2048)], dec[3 * CRM_RFC2047_ENCODE_MAX(2048) + 1];
    for (int iter = 0; iter < 3000; ++iter) {
        size_t len = 0, chars = rnd(300);
        for (size_t k = 0; k < chars; ++k)
            len += put_utf8(in + len, random_cp());
        assert_true(crm_rfc2047_utf8_valid(in, len));
        size_t first = rnd(90);
        unsigned flags = rnd(2) ? CRM_RFC2047_ENCODE_ALWAYS : 0;
        size_t n, dl;
        assert_int_equal(crm_rfc2047_encode(in, len, first, flags, enc, CRM_RFC2047_ENCODE_MAX(len), &n), 0);
        assert_true(n < CRM_RFC2047_ENCODE_MAX(len));
        assert_int_equal(strlen(enc), n);
        if (strncmp(enc, "=?UTF-8?B?", 10) == 0 && (flags || n != len || memcmp(enc, in, len) != 0))
            check_words(enc, first);
        else
            assert_memory_equal(enc, in, len);
        assert_int_equal(crm_rfc2047_decode(enc, n, dec, sizeof(dec), &dl), 0);
        assert_int_equal(dl, len);
        assert_memory_equal(dec, in, len);
    }
}

static void test_utf8_valid(void **state)
{
    assert_true(crm_rfc2047_utf8_valid("", 0));
    assert_true(crm_rfc2047_utf8_valid("a\0b", 3));
    assert_true(crm_rfc2047_utf8_valid("\xC2\x80\xDF\xBF\xE0\xA0\x80\xEF\xBF\xBF", 10));
    assert_true(crm_rfc2047_utf8_valid("\xF0\x90\x80\x80\xF4\x8F\xBF\xBF", 8));
    assert_false(crm_rfc2047_utf8_valid("\x80", 1));
    assert_false(crm_rfc2047_utf8_valid("\xC1\xBF", 2));
    assert_false(crm_rfc2047_utf8_valid("\xE0\x9F\xBF", 3));
    assert_false(crm_rfc2047_utf8_valid("\xED\xA0\x80", 3));
    assert_false(crm_rfc2047_utf8_valid("\xF0\x8F\xBF\xBF", 4));
    assert_false(crm_rfc2047_utf8_valid("\xF4\x90\x80\x80", 4));
    assert_false(crm_rfc2047_utf8_valid("\xF5\x80\x80\x80", 4));
    assert_false(crm_rfc2047_utf8_valid("\xE2\x82", 2));
    assert_false(crm_rfc2047_utf8_valid("\xFF", 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_table),        cmocka_unit_test(test_decode_capacity),
        cmocka_unit_test(test_decode_bound),        cmocka_unit_test(test_decode_alloc),
        cmocka_unit_test(test_encode_table),        cmocka_unit_test(test_encode_rejects),
        cmocka_unit_test(test_encode_long_subject), cmocka_unit_test(test_round_trip_random),
        cmocka_unit_test(test_utf8_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
