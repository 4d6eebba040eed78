#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "mail/address.h"
#include "mail/rfc2047.h"

#define FFFD "\xEF\xBF\xBD"

typedef struct {
    const char *name, *addr, *group;
} want_t;

typedef struct {
    const char *in;
    size_t len; /* 0: strlen(in) */
    int rc;
    size_t count, invalid, groups;
    want_t items[3];
} case_t;

static const case_t cases[] = {
    /* Basic forms */
    {"john@x.com", 0, 0, 1, 0, 0, {{"", "john@x.com", NULL}}},
    {"John Doe <john@x.com>", 0, 0, 1, 0, 0, {{"John Doe", "john@x.com", NULL}}},
    {"<john@x.com>", 0, 0, 1, 0, 0, {{"", "john@x.com", NULL}}},
    {"\"Doe, John \\\"JD\\\"\" <john@x.com>", 0, 0, 1, 0, 0, {{"Doe, John \"JD\"", "john@x.com", NULL}}},
    {"\"Doe, John\" <john@x.com>, jane@y.org",
     0,
     0,
     2,
     0,
     0,
     {{"Doe, John", "john@x.com", NULL}, {"", "jane@y.org", NULL}}},
    {"John Q. Public <jqp@x.com>", 0, 0, 1, 0, 0, {{"John Q. Public", "jqp@x.com", NULL}}},
    {"A <a@x.com>, B <b@y.com>, C <c@z.com>",
     0,
     0,
     3,
     0,
     0,
     {{"A", "a@x.com", NULL}, {"B", "b@y.com", NULL}, {"C", "c@z.com", NULL}}},
    {"\"quoted (not a comment)\" <a@x.com>", 0, 0, 1, 0, 0, {{"quoted (not a comment)", "a@x.com", NULL}}},
    {"\"\" <a@x.com>", 0, 0, 1, 0, 0, {{"", "a@x.com", NULL}}},
    {"john@x.com <real@y.com>", 0, 0, 1, 0, 0, {{"john@x.com", "real@y.com", NULL}}},
    {"  \t john@x.com \t ", 0, 0, 1, 0, 0, {{"", "john@x.com", NULL}}},
    /* RFC 2047 in display names */
    {"=?UTF-8?Q?Jos=C3=A9?= <jose@x.com>", 0, 0, 1, 0, 0, {{"Jos\xC3\xA9", "jose@x.com", NULL}}},
    {"\"=?utf-8?B?SsO8cmdlbg==?=\" <j@x.com>", 0, 0, 1, 0, 0, {{"J\xC3\xBCrgen", "j@x.com", NULL}}},
    {"=?utf-8?q?Andr=C3=A9?= =?utf-8?q?_Pirard?= <a@x.com>", 0, 0, 1, 0, 0, {{"Andr\xC3\xA9 Pirard", "a@x.com", NULL}}},
    {"=?utf-8?q?Doe=2C_John?= <a@x.com>", 0, 0, 1, 0, 0, {{"Doe, John", "a@x.com", NULL}}},
    {"=?bogus?q?x?= <a@x.com>", 0, 0, 1, 0, 0, {{"=?bogus?q?x?=", "a@x.com", NULL}}},
    {"J\xC3\xBCrgen <j@x.com>", 0, 0, 1, 0, 0, {{"J\xC3\xBCrgen", "j@x.com", NULL}}},
    {"Jos\xE9 <j@x.com>", 0, 0, 1, 0, 0, {{"Jos" FFFD, "j@x.com", NULL}}},
    {"Jo\0hn <j@x.com>", 15, 0, 1, 0, 0, {{"Jo" FFFD "hn", "j@x.com", NULL}}},
    /* Groups */
    {"undisclosed-recipients:;", 0, 0, 0, 0, 1, {{NULL, NULL, NULL}}},
    {":;", 0, 0, 0, 0, 1, {{NULL, NULL, NULL}}},
    {"Team: a@x.com, B <b@y.com>;", 0, 0, 2, 0, 1, {{"", "a@x.com", "Team"}, {"B", "b@y.com", "Team"}}},
    {"Team: a@x.com;, c@z.com", 0, 0, 2, 0, 1, {{"", "a@x.com", "Team"}, {"", "c@z.com", NULL}}},
    {"Team:;a@x.com", 0, 0, 1, 0, 1, {{"", "a@x.com", NULL}}},
    {"Team: a@x.com", 0, 0, 1, 0, 1, {{"", "a@x.com", "Team"}}},
    {"=?utf-8?q?=C3=89quipe?= (the team): a@x.com;", 0, 0, 1, 0, 1, {{"", "a@x.com", "\xC3\x89quipe"}}},
    {"G1: a@x.com, G2: b@y.com; c@z.com", 0, 0, 2, 1, 1, {{"", "a@x.com", "G1"}, {"", "c@z.com", NULL}}},
    /* Comments */
    {"john@x.com (John Doe)", 0, 0, 1, 0, 0, {{"John Doe", "john@x.com", NULL}}},
    {"john(first)@x(second).com", 0, 0, 1, 0, 0, {{"first", "john@x.com", NULL}}},
    {"(outer (inner) text) john@x.com", 0, 0, 1, 0, 0, {{"outer (inner) text", "john@x.com", NULL}}},
    {"() ( ) (x) john@x.com", 0, 0, 1, 0, 0, {{"x", "john@x.com", NULL}}},
    {"John <john@x.com> (ignored)", 0, 0, 1, 0, 0, {{"John", "john@x.com", NULL}}},
    {"<john@x.com> (John \\(JD\\))", 0, 0, 1, 0, 0, {{"John (JD)", "john@x.com", NULL}}},
    {"john@x.com (=?utf-8?q?Ren=C3=A9?=)", 0, 0, 1, 0, 0, {{"Ren\xC3\xA9", "john@x.com", NULL}}},
    {"John (middle) Doe <a@x.com>", 0, 0, 1, 0, 0, {{"John Doe", "a@x.com", NULL}}},
    {"a@x.com, (comment only), b@y.com", 0, 0, 2, 0, 0, {{"", "a@x.com", NULL}, {"", "b@y.com", NULL}}},
    /* Address forms */
    {"<@route1.com,@route2.com:user@x.com>", 0, 0, 1, 0, 0, {{"", "user@x.com", NULL}}},
    {"Name <,@a.com,,@b.com:user@x.com>", 0, 0, 1, 0, 0, {{"Name", "user@x.com", NULL}}},
    {"\"john doe\"@x.com", 0, 0, 1, 0, 0, {{"", "\"john doe\"@x.com", NULL}}},
    {"\"john\"@x.com", 0, 0, 1, 0, 0, {{"", "john@x.com", NULL}}},
    {"\"john\".\"doe\"@x.com", 0, 0, 1, 0, 0, {{"", "john.doe@x.com", NULL}}},
    {"\"john doe\".smith@x.com", 0, 0, 1, 0, 0, {{"", "\"john doe.smith\"@x.com", NULL}}},
    {"\"a\\\"b\\\\c\"@x.com", 0, 0, 1, 0, 0, {{"", "\"a\\\"b\\\\c\"@x.com", NULL}}},
    {"\"john..doe\"@x.com", 0, 0, 1, 0, 0, {{"", "\"john..doe\"@x.com", NULL}}},
    {"john . doe @ x . com", 0, 0, 1, 0, 0, {{"", "john.doe@x.com", NULL}}},
    {"john@[192.0.2.1]", 0, 0, 1, 0, 0, {{"", "john@[192.0.2.1]", NULL}}},
    {"user@[ IPv6:2001:DB8::1 ]", 0, 0, 1, 0, 0, {{"", "user@[ipv6:2001:db8::1]", NULL}}},
    {"Mixed <John.Doe@Example.COM>", 0, 0, 1, 0, 0, {{"Mixed", "John.Doe@example.com", NULL}}},
    {"j\xC3\xBCrgen@B\xC3\xBC"
     "cher.DE",
     0,
     0,
     1,
     0,
     0,
     {{"",
       "j\xC3\xBCrgen@b\xC3\xBC"
       "cher.de",
       NULL}}},
    {"localhost-user@localhost", 0, 0, 1, 0, 0, {{"", "localhost-user@localhost", NULL}}},
    /* Folding */
    {"John\r\n Doe\r\n <john@x.com>", 0, 0, 1, 0, 0, {{"John Doe", "john@x.com", NULL}}},
    {"\"John\r\n Doe\" <j@x.com>,\r\n\tk@y.com", 0, 0, 2, 0, 0, {{"John Doe", "j@x.com", NULL}, {"", "k@y.com", NULL}}},
    /* Separators and empty entries */
    {"a@x.com,,b@y.com", 0, 0, 2, 0, 0, {{"", "a@x.com", NULL}, {"", "b@y.com", NULL}}},
    {"a@x.com; b@y.com;", 0, 0, 2, 0, 0, {{"", "a@x.com", NULL}, {"", "b@y.com", NULL}}},
    {",,, ,", 0, 0, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"", 0, 0, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"   (just a comment)  ", 0, 0, 0, 0, 0, {{NULL, NULL, NULL}}},
    /* Trailing garbage */
    {"a@x.com garbage, b@y.com", 0, 0, 1, 1, 0, {{"", "b@y.com", NULL}}},
    {"John <john@x.com> trailing: junk <x>", 0, 0, 1, 0, 0, {{"John", "john@x.com", NULL}}},
    {"John <john@x.com, b@y.com", 0, 0, 1, 1, 0, {{"", "b@y.com", NULL}}},
    {"a@x.com\0, b@y.com", 17, 0, 1, 1, 0, {{"", "b@y.com", NULL}}},
    /* Nothing valid */
    {"not an address", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"\"unterminated <john@x.com>", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"john@x.com (unterminated", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"John <john@x.com", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"john@[192.0.2.1", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"john@[]", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"a@x..com", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"a@x.com.", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"a..b@x.com", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"<>", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"<@x.com>", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"john@", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"@x.com", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"john doe@x.com", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"\"a\0b\"@x.com", 11, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"\"a\tb\"@x.com", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"j\xFFrgen@x.com", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"j@x\x01y.com", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"A <b <c@x.com>>", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {"Team: garbage;", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
    {")(", 0, CRM_E_PARSE, 0, 0, 0, {{NULL, NULL, NULL}}},
};

/* Every output invariant, for every item of every list. */
static void check_item(const crm_mail_address_t *a)
{
    size_t ll = strlen(a->local), dl = strlen(a->domain);
    assert_int_equal(strlen(a->addr), ll + 1 + dl);
    assert_memory_equal(a->addr, a->local, ll);
    assert_int_equal(a->addr[ll], '@');
    assert_string_equal(a->addr + ll + 1, a->domain);
    assert_true(ll <= CRM_MAIL_LOCAL_MAX && dl <= CRM_MAIL_DOMAIN_MAX && ll + 1 + dl <= CRM_MAIL_ADDR_MAX);
    for (const char *d = a->domain; *d; ++d)
        assert_false(*d >= 'A' && *d <= 'Z');
    assert_true(crm_rfc2047_utf8_valid(a->name, strlen(a->name)));
    assert_null(strpbrk(a->name, "\r\n"));
}

static void test_table(void **state)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
        const case_t *c = &cases[i];
        size_t len = c->len ? c->len : strlen(c->in);
        crm_mail_address_list_t *l = (crm_mail_address_list_t *)1;
        int rc = crm_mail_address_parse(c->in, len, NULL, &l);
        if (rc != c->rc)
            print_error("case %zu (%s): rc %d\n", i, c->in, rc);
        assert_int_equal(rc, c->rc);
        if (rc != 0) {
            assert_null(l);
            continue;
        }
        if (l->count != c->count || l->invalid != c->invalid || l->groups != c->groups)
            print_error("case %zu (%s): %zu %zu %zu\n", i, c->in, l->count, l->invalid, l->groups);
        assert_int_equal(l->count, c->count);
        assert_int_equal(l->invalid, c->invalid);
        assert_int_equal(l->groups, c->groups);
        for (size_t k = 0; k < l->count && k < 3; ++k) {
            const crm_mail_address_t *a = &l->items[k];
            if (strcmp(a->name, c->items[k].name) != 0 || strcmp(a->addr, c->items[k].addr) != 0)
                print_error("case %zu (%s): item %zu [%s] [%s]\n", i, c->in, k, a->name, a->addr);
            assert_string_equal(a->name, c->items[k].name);
            assert_string_equal(a->addr, c->items[k].addr);
            if (c->items[k].group == NULL)
                assert_null(a->group);
            else
                assert_string_equal(a->group, c->items[k].group);
            check_item(a);
        }
        crm_mail_address_list_free(l);
    }
}

static void test_parts(void **state)
{
    crm_mail_address_list_t *l;
    const char *in = "\"John Doe\".x@[192.0.2.1], Bob <Bob.Smith@Mail.Example.ORG>";
    assert_int_equal(crm_mail_address_parse(in, strlen(in), NULL, &l), 0);
    assert_int_equal(l->count, 2);
    assert_string_equal(l->items[0].local, "\"John Doe.x\"");
    assert_string_equal(l->items[0].domain, "[192.0.2.1]");
    assert_string_equal(l->items[1].local, "Bob.Smith");
    assert_string_equal(l->items[1].domain, "mail.example.org");
    assert_string_equal(l->items[1].addr, "Bob.Smith@mail.example.org");
    crm_mail_address_list_free(l);
    crm_mail_address_list_free(NULL);
}

static int parse_one(const char *in, crm_mail_address_list_t **l)
{
    return crm_mail_address_parse(in, strlen(in), NULL, l);
}

static void test_lengths(void **state)
{
    char buf[600], local[100], label[100];
    crm_mail_address_list_t *l;

    memset(local, 'a', 64);
    local[64] = '\0';
    snprintf(buf, sizeof(buf), "%s@x.com", local);
    assert_int_equal(parse_one(buf, &l), 0);
    assert_string_equal(l->items[0].addr, buf);
    crm_mail_address_list_free(l);
    local[64] = 'a';
    local[65] = '\0';
    snprintf(buf, sizeof(buf), "%s@x.com", local);
    assert_int_equal(parse_one(buf, &l), CRM_E_PARSE);

    /* A quoted local part is measured with its quotes and escapes. */
    memset(local, 'a', 62);
    local[62] = '\0';
    snprintf(buf, sizeof(buf), "\"%s \"@x.com", local);
    assert_int_equal(parse_one(buf, &l), CRM_E_PARSE);
    local[61] = '\0';
    snprintf(buf, sizeof(buf), "\"%s \"@x.com", local);
    assert_int_equal(parse_one(buf, &l), 0);
    assert_int_equal(strlen(l->items[0].local), 64);
    crm_mail_address_list_free(l);

    memset(label, 'b', 63);
    label[63] = '\0';
    snprintf(buf, sizeof(buf), "a@%s.com", label);
    assert_int_equal(parse_one(buf, &l), 0);
    crm_mail_address_list_free(l);
    label[63] = 'b';
    label[64] = '\0';
    snprintf(buf, sizeof(buf), "a@%s.com", label);
    assert_int_equal(parse_one(buf, &l), CRM_E_PARSE);

    /* addr of exactly 254, then 255: 64 + 1 + 62 + 1 + 62 + 1 + 63 (+ 1). */
    label[62] = '\0';
    memset(local, 'a', 64);
    local[64] = '\0';
    snprintf(buf, sizeof(buf), "%s@%s.%s.%sb", local, label, label, label);
    assert_int_equal(strlen(buf), 254);
    assert_int_equal(parse_one(buf, &l), 0);
    crm_mail_address_list_free(l);
    snprintf(buf, sizeof(buf), "%s@%s.%s.%sb.c", local, label, label, label);
    assert_int_equal(strlen(buf), 256);
    assert_int_equal(parse_one(buf, &l), CRM_E_PARSE);
    snprintf(buf, sizeof(buf), "%s@%s.%s.x%sb", local, label, label, label);
    assert_int_equal(strlen(buf), 255);
    assert_int_equal(parse_one(buf, &l), CRM_E_PARSE);

    /* A domain over 255 by itself. */
    size_t n = 0;
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "a@");
    for (int k = 0; k < 5; ++k)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s.", label);
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "com");
    assert_int_equal(parse_one(buf, &l), CRM_E_PARSE);
}

static void test_limits(void **state)
{
    crm_mail_address_limits_t lim;
    crm_mail_address_list_t *l = (crm_mail_address_list_t *)1;
    crm_mail_address_limits_default(&lim);
    assert_int_equal(lim.max_bytes, 256 * 1024);
    assert_int_equal(lim.max_addresses, 5000);
    assert_int_equal(lim.max_name_bytes, 1024);
    assert_int_equal(lim.max_comment_depth, 16);

    /* Input size: checked first. */
    lim.max_bytes = 10;
    assert_int_equal(crm_mail_address_parse("a@x.com, b", 10, &lim, &l), 0);
    assert_int_equal(l->count, 1);
    assert_int_equal(l->invalid, 1);
    crm_mail_address_list_free(l);
    assert_int_equal(crm_mail_address_parse("a@x.com, b@", 11, &lim, &l), CRM_E_TOO_LARGE);
    assert_null(l);

    /* Number of addresses. */
    crm_mail_address_limits_default(&lim);
    lim.max_addresses = 3;
    const char *three = "a@x.com, b@x.com, c@x.com, bad, ,";
    assert_int_equal(crm_mail_address_parse(three, strlen(three), &lim, &l), 0);
    assert_int_equal(l->count, 3);
    assert_int_equal(l->invalid, 1);
    crm_mail_address_list_free(l);
    const char *four = "a@x.com, b@x.com, c@x.com, d@x.com";
    assert_int_equal(crm_mail_address_parse(four, strlen(four), &lim, &l), CRM_E_LIMIT);
    assert_null(l);

    /* Display name bytes, counted after decoding and trimming: "é" x 3 = 6 bytes. */
    crm_mail_address_limits_default(&lim);
    lim.max_name_bytes = 6;
    const char *six = "  =?utf-8?q?=C3=A9=C3=A9=C3=A9?=   <a@x.com>";
    assert_int_equal(crm_mail_address_parse(six, strlen(six), &lim, &l), 0);
    assert_string_equal(l->items[0].name, "\xC3\xA9\xC3\xA9\xC3\xA9");
    crm_mail_address_list_free(l);
    const char *seven = "=?utf-8?q?=C3=A9=C3=A9=C3=A9x?= <a@x.com>";
    assert_int_equal(crm_mail_address_parse(seven, strlen(seven), &lim, &l), CRM_E_LIMIT);
    const char *group = "Seven77: a@x.com;";
    assert_int_equal(crm_mail_address_parse(group, strlen(group), &lim, &l), CRM_E_LIMIT);
    const char *comment = "a@x.com (Seven77)";
    assert_int_equal(crm_mail_address_parse(comment, strlen(comment), &lim, &l), CRM_E_LIMIT);
    const char *bad_entry = "Seven77 <garbage>, b@x.com";
    assert_int_equal(crm_mail_address_parse(bad_entry, strlen(bad_entry), &lim, &l), CRM_E_LIMIT);

    /* Comment nesting. */
    char buf[256];
    crm_mail_address_limits_default(&lim);
    for (int depth = 16; depth <= 17; ++depth) {
        size_t n = 0;
        for (int k = 0; k < depth; ++k)
            buf[n++] = '(';
        for (int k = 0; k < depth; ++k)
            buf[n++] = ')';
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "a@x.com");
        int rc = crm_mail_address_parse(buf, n, &lim, &l);
        assert_int_equal(rc, depth == 16 ? 0 : CRM_E_LIMIT);
        crm_mail_address_list_free(l);
    }
    /* Depth counts even inside an unterminated comment or an invalid entry. */
    memset(buf, '(', 100);
    assert_int_equal(crm_mail_address_parse(buf, 100, &lim, &l), CRM_E_LIMIT);
    lim.max_comment_depth = 0;
    assert_int_equal(crm_mail_address_parse("a@x.com (c)", 11, &lim, &l), CRM_E_LIMIT);
    assert_int_equal(crm_mail_address_parse("\"(c)\" <a@x.com>", 15, &lim, &l), 0);
    crm_mail_address_list_free(l);

    assert_int_equal(crm_mail_address_parse(NULL, 1, NULL, &l), CRM_E_INVAL);
    assert_int_equal(crm_mail_address_parse("a@x.com", 7, NULL, NULL), CRM_E_INVAL);
    assert_int_equal(crm_mail_address_parse(NULL, 0, NULL, &l), 0);
    assert_int_equal(l->count, 0);
    crm_mail_address_list_free(l);
}

/* The default maximum of mailboxes in one header, each checked. */
static void test_many(void **state)
{
    size_t cap = 5000 * 40, n = 0;
    char *buf = malloc(cap);
    for (int i = 0; i < 5000; ++i)
        n += (size_t)snprintf(buf + n, cap - n, "%s\"U %d\" <u%d@D%d.example>", i ? ", " : "", i, i, i);
    crm_mail_address_list_t *l;
    assert_int_equal(crm_mail_address_parse(buf, n, NULL, &l), 0);
    assert_int_equal(l->count, 5000);
    for (int i = 0; i < 5000; ++i) {
        char name[32], addr[64];
        snprintf(name, sizeof(name), "U %d", i);
        snprintf(addr, sizeof(addr), "u%d@d%d.example", i, i);
        assert_string_equal(l->items[i].name, name);
        assert_string_equal(l->items[i].addr, addr);
        check_item(&l->items[i]);
    }
    crm_mail_address_list_free(l);
    n += (size_t)snprintf(buf + n, cap - n, ", one@more.example");
    assert_int_equal(crm_mail_address_parse(buf, n, NULL, &l), CRM_E_LIMIT);
    free(buf);
}

/* Hostile input: random bytes, random fragments of header syntax, huge unterminated constructs. Whatever happens,
 * the result is one of the documented errors or a list whose every item keeps the invariants. */
static uint64_t rng = 0x2545f4914f6cdd1dull;

static uint32_t rnd(uint32_t bound)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % bound);
}

static void check_any(const char *in, size_t len, const crm_mail_address_limits_t *lim)
{
    crm_mail_address_list_t *l = (crm_mail_address_list_t *)1;
    int rc = crm_mail_address_parse(in, len, lim, &l);
    if (rc != 0) {
        assert_true(rc == CRM_E_PARSE || rc == CRM_E_LIMIT || rc == CRM_E_TOO_LARGE);
        assert_null(l);
        return;
    }
    for (size_t i = 0; i < l->count; ++i) {
        check_item(&l->items[i]);
        assert_true(strlen(l->items[i].name) <= lim->max_name_bytes);
    }
    crm_mail_address_list_free(l);
}

static void test_hostile(void **state)
{
    static const char *frags[] = {
        "a",          "@",  ".",      ",",     ";",    ":",   "<",    ">",  "\"",    "\\",
        "(",          ")",  "[",      "]",     " ",    "\t",  "\r\n", "\0", "\x80",  "\xC3\xA9",
        "=?utf-8?q?", "?=", "=?x?b?", "x.com", "john", "=C3", "\xFF", "_",  "IPv6:", "1.2.3.4",
    };
    crm_mail_address_limits_t lim;
    crm_mail_address_limits_default(&lim);
    lim.max_addresses = 50;
    lim.max_name_bytes = 64;
    lim.max_comment_depth = 4;
    char buf[4096];
    for (int iter = 0; iter < 20000; ++iter) {
        size_t n = 0, pieces = rnd(60);
        for (size_t k = 0; k < pieces; ++k) {
            const char *f = frags[rnd(sizeof(frags) / sizeof(frags[0]))];
            size_t fl = f[0] == '\0' ? 1 : strlen(f);
            memcpy(buf + n, f, fl);
            n += fl;
        }
        /* Exact-size copy, so that a read past the end is caught by ASan. */
        char *exact = malloc(n ? n : 1);
        memcpy(exact, buf, n);
        check_any(exact, n, &lim);
        free(exact);
    }
    for (int iter = 0; iter < 2000; ++iter) {
        size_t n = rnd(300);
        char *exact = malloc(n ? n : 1);
        for (size_t k = 0; k < n; ++k)
            exact[k] = (char)rnd(256);
        check_any(exact, n, &lim);
        free(exact);
    }

    /* Huge unterminated constructs at the default limits: linear, no crash, no valid mailbox. */
    crm_mail_address_limits_default(&lim);
    size_t big = lim.max_bytes;
    char *huge = malloc(big);
    static const char openers[] = {'"', '(', '[', '<', '\\', ','};
    for (size_t o = 0; o < sizeof(openers); ++o) {
        memset(huge, 'x', big);
        huge[0] = openers[o];
        check_any(huge, big, &lim);
    }
    /* Many "=?" starts in a display name. */
    for (size_t k = 0; k + 12 < big; k += 12)
        memcpy(huge + k, "=?utf-8?q?a=", 12);
    memcpy(huge + big - 8, "<a@x.co>", 8);
    check_any(huge, big, &lim);
    /* The largest decoded name: every byte invalid UTF-8. */
    memset(huge, 0xFF, big);
    check_any(huge, big, &lim);
    memcpy(huge + big - 8, "<a@x.co>", 8);
    check_any(huge, big, &lim);
    free(huge);
}

typedef struct {
    const char *addr;
    int valid;
} valid_case_t;

static void test_is_valid(void **state)
{
    static const valid_case_t vcases[] = {
        {"a@x.com", 1},
        {"john.doe+tag@sub.example.co.uk", 1},
        {"A@X.COM", 1},
        {"!#$%&'*+-/=?^_`{|}~@x.com", 1},
        {"\"john doe\"@x.com", 1},
        {"\"a\\\"b\"@x.com", 1},
        {"\"a@b\"@x.com", 1},
        {"a@[192.0.2.1]", 1},
        {"a@[IPv6:2001:db8::1]", 1},
        {"a@[ipv6:::1]", 1},
        {"a@x1.c0m", 1},
        {"a@x-y.example", 1},
        {"a@123.example", 1},
        {NULL, 0},
        {"", 0},
        {"a", 0},
        {"a@", 0},
        {"@x.com", 0},
        {"a@x", 0},
        {"a@x.", 0},
        {"a@.x.com", 0},
        {"a@x..com", 0},
        {"a..b@x.com", 0},
        {".a@x.com", 0},
        {"a.@x.com", 0},
        {"a b@x.com", 0},
        {"a@x.com ", 0},
        {" a@x.com", 0},
        {"John <a@x.com>", 0},
        {"(c)a@x.com", 0},
        {"a@-x.com", 0},
        {"a@x-.com", 0},
        {"a@x_y.com", 0},
        {"a@1.2.3.4", 0},
        {"a@x.123", 0},
        {"a@[1.2.3]", 0},
        {"a@[999.1.1.1]", 0},
        {"a@[01.2.3.4]", 0},
        {"a@[IPv6:zz]", 0},
        {"a@[x]", 0},
        {"a@[192.0.2.1", 0},
        {"\"\"@x.com", 0},
        {"\"a@x.com", 0},
        {"\"a\nb\"@x.com", 0},
        {"\"a\\\n\"@x.com", 0},
        {"j\xC3\xBCrgen@x.com", 0},
        {"a@b\xC3\xBC"
         "cher.de",
         0},
        {"a@x.com\n", 0},
        {"a@x.com\r\nBcc: b@y.com", 0},
        {"a@b@x.com", 0},
    };
    for (size_t i = 0; i < sizeof(vcases) / sizeof(vcases[0]); ++i) {
        if (crm_mail_address_is_valid(vcases[i].addr) != vcases[i].valid)
            print_error("case %zu: %s\n", i, vcases[i].addr ? vcases[i].addr : "(null)");
        assert_int_equal(crm_mail_address_is_valid(vcases[i].addr), vcases[i].valid);
    }

    char buf[600], local[80], label[80];
    memset(local, 'a', 64);
    local[64] = '\0';
    snprintf(buf, sizeof(buf), "%s@x.com", local);
    assert_true(crm_mail_address_is_valid(buf));
    snprintf(buf, sizeof(buf), "%sa@x.com", local);
    assert_false(crm_mail_address_is_valid(buf));
    memset(label, 'b', 63);
    label[63] = '\0';
    snprintf(buf, sizeof(buf), "a@%s.com", label);
    assert_true(crm_mail_address_is_valid(buf));
    snprintf(buf, sizeof(buf), "a@%sb.com", label);
    assert_false(crm_mail_address_is_valid(buf));
    label[62] = '\0';
    snprintf(buf, sizeof(buf), "%s@%s.%s.%sb", local, label, label, label);
    assert_int_equal(strlen(buf), 254);
    assert_true(crm_mail_address_is_valid(buf));
    snprintf(buf, sizeof(buf), "%s@%s.%s.%sbb", local, label, label, label);
    assert_false(crm_mail_address_is_valid(buf));

    assert_true(crm_mail_address_domain_is_valid("example.com"));
    assert_true(crm_mail_address_domain_is_valid("Mail.EXAMPLE.com"));
    assert_false(crm_mail_address_domain_is_valid("localhost"));
    assert_false(crm_mail_address_domain_is_valid("[192.0.2.1]"));
    assert_false(crm_mail_address_domain_is_valid("example.com."));
    assert_false(crm_mail_address_domain_is_valid(""));
    assert_false(crm_mail_address_domain_is_valid(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),    cmocka_unit_test(test_parts), cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_limits),   cmocka_unit_test(test_many),  cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_is_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
