#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "err.h"
#include "mail/address.h"
#include "mail/message.h"
#include "mail/rfc2047.h"

/* 2026-11-23T18:40:00Z */
#define FIXED_DATE 1795459200

/* ---- A small reader for what the composer writes ------------------------------------------------------------- */

#define MAX_FIELDS 64

typedef struct {
    char *name[MAX_FIELDS];
    char *value[MAX_FIELDS]; /* unfolded: CRLF removed, leading whitespace after the colon removed */
    size_t n;
    const char *body;
    size_t body_len;
} parsed_t;

static void parsed_free(parsed_t *p)
{
    for (size_t i = 0; i < p->n; ++i) {
        free(p->name[i]);
        free(p->value[i]);
    }
}

/* Every line break is CRLF; every line of the header section is at most max_line characters. */
static void check_lines(const char *s, size_t len, size_t max_line, int header)
{
    size_t col = 0;
    for (size_t i = 0; i < len; ++i) {
        if (s[i] == '\r') {
            assert_true(i + 1 < len && s[i + 1] == '\n');
            if (header && col == 0)
                return; /* the empty line ends the header */
            assert_true(col <= max_line);
            col = 0;
            ++i;
        } else {
            assert_int_not_equal(s[i], '\n');
            assert_int_not_equal(s[i], '\0');
            ++col;
        }
    }
    assert_int_equal(col, 0);
}

static void parse_message(const char *msg, size_t len, parsed_t *p)
{
    memset(p, 0, sizeof(*p));
    assert_int_equal(strlen(msg), len);
    check_lines(msg, len, 78, 1);
    check_lines(msg, len, 998, 0);
    const char *end = strstr(msg, "\r\n\r\n");
    assert_non_null(end);
    const char *s = msg;
    while (s < end + 2) {
        const char *colon = strchr(s, ':');
        assert_non_null(colon);
        assert_true(colon < end);
        assert_true(p->n < MAX_FIELDS);
        p->name[p->n] = strndup(s, (size_t)(colon - s));
        /* The field runs until a CRLF not followed by WSP. */
        const char *e = colon + 1;
        for (;;) {
            e = strstr(e, "\r\n");
            if (e[2] != ' ' && e[2] != '\t')
                break;
            e += 2;
        }
        char *v = malloc((size_t)(e - colon) + 1);
        size_t vn = 0;
        for (const char *c = colon + 1; c < e; ++c) {
            if (*c == '\r' || *c == '\n')
                continue;
            v[vn++] = *c;
        }
        v[vn] = '\0';
        size_t skip = 0;
        while (v[skip] == ' ' || v[skip] == '\t')
            ++skip;
        memmove(v, v + skip, vn - skip + 1);
        p->value[p->n++] = v;
        s = e + 2;
    }
    p->body = end + 4;
    p->body_len = len - (size_t)(p->body - msg);
}

static const char *field(const parsed_t *p, const char *name)
{
    const char *found = NULL;
    for (size_t i = 0; i < p->n; ++i) {
        if (strcasecmp(p->name[i], name) == 0) {
            assert_null(found); /* every field at most once */
            found = p->value[i];
        }
    }
    return found;
}

static int hexv(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    fail_msg("bad hex digit %c", c);
    return -1;
}

/* Decodes quoted-printable s[0..len), checking it as it goes: lines of at most 76, no whitespace before a line break,
 * only upper-case hex escapes, no unencoded byte outside 33..126 but SP and TAB. */
static char *qp_decode(const char *s, size_t len, size_t *out_len)
{
    char *o = malloc(len + 1);
    size_t n = 0, col = 0;
    for (size_t i = 0; i < len; ++i) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r') {
            assert_true(i + 1 < len && s[i + 1] == '\n');
            assert_true(col <= 76);
            assert_true(i == 0 || (s[i - 1] != ' ' && s[i - 1] != '\t'));
            o[n++] = '\r';
            o[n++] = '\n';
            ++i;
            col = 0;
        } else if (c == '=') {
            assert_true(i + 2 < len);
            if (s[i + 1] == '\r') {
                assert_int_equal(s[i + 2], '\n');
                assert_true(col + 1 <= 76);
                i += 2;
                col = 0;
            } else {
                o[n++] = (char)(hexv(s[i + 1]) * 16 + hexv(s[i + 2]));
                i += 2;
                col += 3;
            }
        } else {
            assert_true((c >= 33 && c <= 126) || c == ' ' || c == '\t');
            o[n++] = (char)c;
            ++col;
        }
    }
    assert_true(col <= 76);
    o[n] = '\0';
    *out_len = n;
    return o;
}

/* LF and CRLF as CRLF, as the composer writes line breaks. */
static char *crlf(const char *s)
{
    char *o = malloc(2 * strlen(s) + 1);
    size_t n = 0;
    for (size_t i = 0; s[i]; ++i) {
        if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r'))
            o[n++] = '\r';
        o[n++] = s[i];
    }
    o[n] = '\0';
    return o;
}

static crm_mail_message_t basic(void)
{
    static const crm_mail_mailbox_t to = {"john@x.com", "John Doe"};
    return (crm_mail_message_t){
        .from = {"sender@example.com", "CRM"},
        .to = &to,
        .to_count = 1,
        .subject = "Hello",
        .text = "Hi John,\nsee you.\n",
        .date = FIXED_DATE,
        .message_id = "<abc.123@example.com>",
    };
}

/* ---- Tests ---------------------------------------------------------------------------------------------------- */

static void test_exact(void **state)
{
    static const char want[] = "Date: Mon, 23 Nov 2026 18:40:00 +0000\r\n"
                               "From: CRM <sender@example.com>\r\n"
                               "To: John Doe <john@x.com>\r\n"
                               "Message-ID: <abc.123@example.com>\r\n"
                               "Subject: Hello\r\n"
                               "MIME-Version: 1.0\r\n"
                               "Content-Type: text/plain; charset=utf-8\r\n"
                               "Content-Transfer-Encoding: quoted-printable\r\n"
                               "\r\n"
                               "Hi John,\r\n"
                               "see you.\r\n"
                               "\r\n";
    crm_mail_message_t m = basic();
    char *out = NULL, id[CRM_MAIL_MESSAGE_ID_SIZE];
    size_t len = 0;
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, id), 0);
    assert_string_equal(out, want);
    assert_int_equal(len, sizeof(want) - 1);
    assert_string_equal(id, "<abc.123@example.com>");
    free(out);

    /* The output limit is exact. */
    m.max_bytes = sizeof(want) - 1;
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), 0);
    free(out);
    m.max_bytes = sizeof(want) - 2;
    out = (char *)1;
    strcpy(id, "junk");
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, id), CRM_E_TOO_LARGE);
    assert_null(out);
    assert_string_equal(id, "");
    m.max_bytes = 10;
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), CRM_E_TOO_LARGE);
}

static void test_date(void **state)
{
    static const struct {
        time_t t;
        const char *s;
    } dates[] = {
        {0, "Thu, 01 Jan 1970 00:00:00 +0000"},          {951782400, "Tue, 29 Feb 2000 00:00:00 +0000"},
        {1234567890, "Fri, 13 Feb 2009 23:31:30 +0000"}, {1709251199, "Thu, 29 Feb 2024 23:59:59 +0000"},
        {FIXED_DATE, "Mon, 23 Nov 2026 18:40:00 +0000"}, {253402300799, "Fri, 31 Dec 9999 23:59:59 +0000"},
    };
    char buf[CRM_MAIL_DATE_SIZE];
    for (size_t i = 0; i < sizeof(dates) / sizeof(dates[0]); ++i) {
        assert_int_equal(crm_mail_message_format_date(dates[i].t, buf), 0);
        assert_string_equal(buf, dates[i].s);
    }
    assert_int_equal(crm_mail_message_format_date(-1, buf), CRM_E_INVAL);
    assert_string_equal(buf, "");
    assert_int_equal(crm_mail_message_format_date(253402300800, buf), CRM_E_INVAL);

    crm_mail_message_t m = basic();
    char *out;
    size_t len;
    m.date = -1;
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), CRM_E_INVAL);
}

static int is_generated_id(const char *id, const char *domain)
{
    if (strlen(id) != 1 + 32 + 1 + strlen(domain) + 1 || id[0] != '<' || id[33] != '@')
        return 0;
    for (int i = 1; i <= 32; ++i) {
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return 0;
    }
    return strncmp(id + 34, domain, strlen(domain)) == 0 && id[34 + strlen(domain)] == '>';
}

static void test_message_id(void **state)
{
    crm_mail_message_t m = basic();
    m.message_id = NULL;
    m.message_id_domain = "mail.example.com";
    char *out, id1[CRM_MAIL_MESSAGE_ID_SIZE], id2[CRM_MAIL_MESSAGE_ID_SIZE];
    size_t len;
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, id1), 0);
    assert_true(is_generated_id(id1, "mail.example.com"));
    parsed_t p;
    parse_message(out, len, &p);
    assert_string_equal(field(&p, "Message-ID"), id1);
    parsed_free(&p);
    free(out);
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, id2), 0);
    assert_true(is_generated_id(id2, "mail.example.com"));
    assert_string_not_equal(id1, id2);
    free(out);

    assert_int_equal(crm_mail_message_id_generate("example.org", id1), 0);
    assert_true(is_generated_id(id1, "example.org"));
    assert_int_equal(crm_mail_message_id_generate("localhost", id1), CRM_E_INVAL);
    assert_string_equal(id1, "");
    assert_int_equal(crm_mail_message_id_generate(NULL, id1), CRM_E_INVAL);

    static const char *bad_domains[] = {NULL, "", "localhost", "exa mple.com", "x.com\r\nBcc: a@b.com", "[1.2.3.4]"};
    for (size_t i = 0; i < sizeof(bad_domains) / sizeof(bad_domains[0]); ++i) {
        m.message_id_domain = bad_domains[i];
        assert_int_equal(crm_mail_message_compose(&m, &out, &len, id1), CRM_E_INVAL);
    }
    static const char *bad_ids[] = {"abc@example.com",
                                    "<abc@example.com",
                                    "<@example.com>",
                                    "<abc@>",
                                    "<a b@x.com>",
                                    "<abc@x.com>\r\nBcc: a@b.com",
                                    "<a..b@x.com>",
                                    "<abc>",
                                    "<>"};
    for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); ++i) {
        m.message_id = bad_ids[i];
        assert_int_equal(crm_mail_message_compose(&m, &out, &len, id1), CRM_E_INVAL);
    }
}

typedef struct {
    const char *name;
    const char *rendered; /* the To field value as written */
} name_case_t;

static void test_display_names(void **state)
{
    static const name_case_t names[] = {
        {NULL, "a@x.com"},
        {"", "a@x.com"},
        {"John Doe", "John Doe <a@x.com>"},
        {"O'Brien-Smith", "O'Brien-Smith <a@x.com>"},
        {"Doe, John", "\"Doe, John\" <a@x.com>"},
        {"John Q. Public", "\"John Q. Public\" <a@x.com>"},
        {"a\"b\\c", "\"a\\\"b\\\\c\" <a@x.com>"},
        {"two  spaces", "\"two  spaces\" <a@x.com>"},
        {"(not a comment)", "\"(not a comment)\" <a@x.com>"},
        {"Jos\xC3\xA9", "=?UTF-8?B?Sm9zw6k=?= <a@x.com>"},
        {"=?utf-8?q?x?=", "=?UTF-8?B?PT91dGYtOD9xP3g/PQ==?= <a@x.com>"},
        {"tab\there", "=?UTF-8?B?dGFiCWhlcmU=?= <a@x.com>"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); ++i) {
        crm_mail_mailbox_t to = {"a@x.com", names[i].name};
        crm_mail_message_t m = basic();
        m.to = &to;
        char *out;
        size_t len;
        assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), 0);
        parsed_t p;
        parse_message(out, len, &p);
        assert_string_equal(field(&p, "To"), names[i].rendered);
        /* And a mail client reads back what was meant. */
        crm_mail_address_list_t *l;
        const char *v = field(&p, "To");
        assert_int_equal(crm_mail_address_parse(v, strlen(v), NULL, &l), 0);
        assert_int_equal(l->count, 1);
        assert_string_equal(l->items[0].addr, "a@x.com");
        assert_string_equal(l->items[0].name, names[i].name ? names[i].name : "");
        crm_mail_address_list_free(l);
        parsed_free(&p);
        free(out);
    }
}

static void test_many_recipients(void **state)
{
    enum { N = 40 };
    crm_mail_mailbox_t to[N];
    char names[N][400], addrs[N][80];
    for (int i = 0; i < N; ++i) {
        size_t n = 0;
        switch (i % 5) {
        case 0:
            n = (size_t)snprintf(names[i], sizeof(names[i]), "Person %d", i);
            break;
        case 1:
            n = (size_t)snprintf(names[i], sizeof(names[i]), "Doe, Person %d", i);
            break;
        case 2:
            n = (size_t)snprintf(names[i], sizeof(names[i]), "Zo\xC3\xAB %d \xE6\x9D\xB1\xE4\xBA\xAC", i);
            break;
        case 3:
            /* A long ASCII name: too long for one line as it is, so it is encoded. */
            for (int k = 0; k < 12; ++k)
                n += (size_t)snprintf(names[i] + n, sizeof(names[i]) - n, "Longname%d ", k);
            names[i][n - 1] = '\0';
            break;
        default:
            for (int k = 0; k < 40; ++k)
                n += (size_t)snprintf(names[i] + n, sizeof(names[i]) - n, "\xF0\x9F\x98\x80\xC3\xA9");
            break;
        }
        snprintf(addrs[i], sizeof(addrs[i]), "person.%d@sub%d.example.com", i, i);
        to[i] = (crm_mail_mailbox_t){addrs[i], i % 7 == 6 ? NULL : names[i]};
    }
    crm_mail_message_t m = basic();
    m.to = to;
    m.to_count = N;
    m.reply_to = &to[2];
    m.from.name = to[4].name;
    char *out;
    size_t len;
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), 0);
    parsed_t p;
    parse_message(out, len, &p); /* every header line within 78 */
    crm_mail_address_list_t *l;
    const char *v = field(&p, "To");
    assert_int_equal(crm_mail_address_parse(v, strlen(v), NULL, &l), 0);
    assert_int_equal(l->count, N);
    assert_int_equal(l->invalid, 0);
    for (int i = 0; i < N; ++i) {
        assert_string_equal(l->items[i].addr, addrs[i]);
        assert_string_equal(l->items[i].name, to[i].name ? to[i].name : "");
    }
    crm_mail_address_list_free(l);
    v = field(&p, "Reply-To");
    assert_int_equal(crm_mail_address_parse(v, strlen(v), NULL, &l), 0);
    assert_string_equal(l->items[0].name, names[2]);
    crm_mail_address_list_free(l);
    v = field(&p, "From");
    assert_int_equal(crm_mail_address_parse(v, strlen(v), NULL, &l), 0);
    assert_string_equal(l->items[0].name, names[4]);
    assert_string_equal(l->items[0].addr, "sender@example.com");
    crm_mail_address_list_free(l);
    /* Field order. */
    static const char *order[] = {"Date",         "From",         "To",
                                  "Reply-To",     "Message-ID",   "Subject",
                                  "MIME-Version", "Content-Type", "Content-Transfer-Encoding"};
    assert_int_equal(p.n, 9);
    for (size_t i = 0; i < 9; ++i)
        assert_string_equal(p.name[i], order[i]);
    parsed_free(&p);
    free(out);
}

/* Returns the raw (still folded) Subject field of out, from "Subject:" to its final CRLF. */
static char *raw_subject(const char *out)
{
    const char *s = strstr(out, "\r\nSubject:");
    assert_non_null(s);
    s += 2;
    const char *e = strstr(s, "\r\nMIME-Version:");
    return strndup(s, (size_t)(e - s));
}

static void test_subject(void **state)
{
    char long_ascii[400], long_utf8[600], long_word[1600];
    size_t n = 0;
    for (int k = 0; k < 30; ++k)
        n += (size_t)snprintf(long_ascii + n, sizeof(long_ascii) - n, "word%d ", k);
    long_ascii[n - 1] = '\0';
    n = 0;
    for (int k = 0; k < 60; ++k)
        n += (size_t)snprintf(long_utf8 + n, sizeof(long_utf8) - n, "\xD0\x9F\xD1\x80\xE2\x82\xAC ");
    long_utf8[n - 1] = '\0';
    memset(long_word, 'w', 1500);
    long_word[1500] = '\0';

    static const struct {
        int which;
        const char *s;
        const char *raw; /* the exact field, when given */
        int encoded;
    } subjects[] = {
        {0, "Hello", "Subject: Hello", 0},
        {0, "", "Subject:", 0},
        {0, "  spaced  out  ", "Subject:   spaced  out  ", 0},
        {0, "caf\xC3\xA9", "Subject: =?UTF-8?B?Y2Fmw6k=?=", 1},
        {0, "100% =?not encoded?=", "Subject: =?UTF-8?B?MTAwJSA9P25vdCBlbmNvZGVkPz0=?=", 1},
        {1, NULL, NULL, 0},
        {2, NULL, NULL, 1},
        {3, NULL, NULL, 1},
    };
    for (size_t i = 0; i < sizeof(subjects) / sizeof(subjects[0]); ++i) {
        const char *subject = subjects[i].which == 0   ? subjects[i].s
                              : subjects[i].which == 1 ? long_ascii
                              : subjects[i].which == 2 ? long_utf8
                                                       : long_word;
        crm_mail_message_t m = basic();
        m.subject = subject;
        char *out;
        size_t len;
        assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), 0);
        parsed_t p;
        parse_message(out, len, &p);
        char *raw = raw_subject(out);
        if (subjects[i].raw != NULL)
            assert_string_equal(raw, subjects[i].raw);
        assert_int_equal(strstr(raw, "=?UTF-8?B?") != NULL, subjects[i].encoded);
        if (subjects[i].encoded) {
            /* Lines holding encoded-words are at most 76 characters. */
            for (const char *line = raw; line != NULL;) {
                const char *e = strstr(line, "\r\n");
                assert_true((e ? (size_t)(e - line) : strlen(line)) <= 76);
                line = e ? e + 2 : NULL;
            }
        } else if (subjects[i].which == 1) {
            assert_non_null(strstr(raw, "\r\n "));
        }
        const char *v = field(&p, "Subject");
        char dec[4096];
        assert_int_equal(crm_rfc2047_decode(v, strlen(v), dec, sizeof(dec), NULL), 0);
        /* The unfolded value lost the leading whitespace parse_message strips; compare from the first word. */
        const char *want = subject;
        while (*want == ' ')
            ++want;
        assert_string_equal(subjects[i].encoded ? dec : v, want);
        free(raw);
        parsed_free(&p);
        free(out);
    }

    crm_mail_message_t m = basic();
    m.subject = NULL;
    char *out;
    size_t len;
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), 0);
    assert_null(strstr(out, "Subject"));
    free(out);
}

/* The single part's body: everything after the header, without the final CRLF that ends the message. */
static char *body_of(const char *out, size_t len, size_t *blen)
{
    parsed_t p;
    parse_message(out, len, &p);
    assert_true(p.body_len >= 2);
    assert_memory_equal(p.body + p.body_len - 2, "\r\n", 2);
    char *b = qp_decode(p.body, p.body_len - 2, blen);
    parsed_free(&p);
    return b;
}

static void test_quoted_printable(void **state)
{
    static const struct {
        const char *text;
        const char *qp; /* the encoded body, final CRLF included */
    } bodies[] = {
        {"", "\r\n"},
        {"a = b", "a =3D b\r\n"},
        {"end  \nx\t\n", "end =20\r\nx=09\r\n\r\n"},
        {"end ", "end=20\r\n"},
        {"caf\xC3\xA9", "caf=C3=A9\r\n"},
        {"lone\rcr\r\n", "lone=0Dcr\r\n\r\n"},
        {".dot\n..two\n", ".dot\r\n..two\r\n\r\n"},
        {"From here", "From here\r\n"},
        {"=_boundary-ish", "=3D_boundary-ish\r\n"},
        {"ctl\x01\x7F~", "ctl=01=7F~\r\n"},
        {"\n\n", "\r\n\r\n\r\n"},
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); ++i) {
        crm_mail_message_t m = basic();
        m.text = bodies[i].text;
        char *out;
        size_t len;
        assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), 0);
        parsed_t p;
        parse_message(out, len, &p);
        assert_string_equal(p.body, bodies[i].qp);
        parsed_free(&p);
        size_t blen;
        char *b = body_of(out, len, &blen);
        char *want = crlf(bodies[i].text);
        assert_string_equal(b, want);
        free(want);
        free(b);
        free(out);
    }

    /* Long lines: soft breaks keep every line within 76, never inside an escape. */
    char text[1000];
    memset(text, 'x', 200);
    text[200] = '\0';
    crm_mail_message_t m = basic();
    m.text = text;
    char *out;
    size_t len;
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), 0);
    parsed_t p;
    parse_message(out, len, &p);
    char want[400];
    snprintf(want, sizeof(want), "%.75s=\r\n%.75s=\r\n%.50s\r\n", text, text, text);
    assert_string_equal(p.body, want);
    parsed_free(&p);
    free(out);

    /* 74 x's then "é": the escape "=C3" does not fit after 74 characters, so the break comes before it. */
    memset(text, 'x', 74);
    strcpy(text + 74, "\xC3\xA9 ");
    m.text = text;
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), 0);
    parse_message(out, len, &p);
    snprintf(want, sizeof(want), "%.74s=\r\n=C3=A9=20\r\n", text);
    assert_string_equal(p.body, want);
    parsed_free(&p);
    free(out);
}

static uint64_t rng = 0x1234567887654321ull;

static uint32_t rnd(uint32_t bound)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % bound);
}

static void test_quoted_printable_random(void **state)
{
    static const char *pieces[] = {
        "a", "Z", " ",  "\t", "=",   "\n", "\r\n", "\r", ".", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80",
        "~", "_", "--", "=_", "\x01"};
    char text[3000];
    for (int iter = 0; iter < 500; ++iter) {
        size_t n = 0, count = rnd(600);
        for (size_t k = 0; k < count; ++k) {
            const char *s = pieces[rnd(sizeof(pieces) / sizeof(pieces[0]))];
            memcpy(text + n, s, strlen(s));
            n += strlen(s);
        }
        text[n] = '\0';
        crm_mail_message_t m = basic();
        m.text = text;
        char *out;
        size_t len, blen;
        assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), 0);
        char *b = body_of(out, len, &blen);
        char *want = crlf(text);
        assert_int_equal(blen, strlen(want));
        assert_memory_equal(b, want, blen);
        free(want);
        free(b);
        free(out);
    }
}

static void test_multipart(void **state)
{
    crm_mail_message_t m = basic();
    m.text = "Plain = text\n";
    m.html = "<p>Caf\xC3\xA9 =_ --</p>\n";
    char *out, boundary[64], prev[64] = "";
    size_t len;
    for (int round = 0; round < 2; ++round) {
        assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), 0);
        parsed_t p;
        parse_message(out, len, &p);
        assert_null(field(&p, "Content-Transfer-Encoding"));
        const char *ct = field(&p, "Content-Type");
        assert_int_equal(strlen(ct), strlen("multipart/alternative; boundary=\"=_\"") + 32);
        assert_memory_equal(ct, "multipart/alternative; boundary=\"=_", 35);
        assert_int_equal(ct[strlen(ct) - 1], '"');
        snprintf(boundary, sizeof(boundary), "%.34s", ct + 33);
        for (int k = 2; k < 34; ++k)
            assert_non_null(strchr("0123456789ABCDEF", boundary[k]));
        assert_string_not_equal(boundary, prev);
        strcpy(prev, boundary);
        assert_non_null(strstr(out, "Content-Type: multipart/alternative;\r\n boundary=\"=_"));

        char want[2048];
        snprintf(want, sizeof(want),
                 "--%s\r\n"
                 "Content-Type: text/plain; charset=utf-8\r\n"
                 "Content-Transfer-Encoding: quoted-printable\r\n"
                 "\r\n"
                 "Plain =3D text\r\n"
                 "\r\n"
                 "--%s\r\n"
                 "Content-Type: text/html; charset=utf-8\r\n"
                 "Content-Transfer-Encoding: quoted-printable\r\n"
                 "\r\n"
                 "<p>Caf=C3=A9 =3D_ --</p>\r\n"
                 "\r\n"
                 "--%s--\r\n",
                 boundary, boundary, boundary);
        assert_string_equal(p.body, want);
        /* The boundary occurs exactly three times in the whole message: as the two delimiters and the close. */
        int seen = 0;
        for (const char *s = out; (s = strstr(s, boundary)) != NULL; ++s)
            ++seen;
        assert_int_equal(seen, 4); /* and once in the Content-Type parameter */
        parsed_free(&p);
        free(out);
    }

    /* Parts decode back to their bodies, whatever they hold. */
    char text[2000], html[2000];
    for (int k = 0; k < 1999; ++k) {
        text[k] = (char)(k % 3 == 0 ? '=' : k % 7 == 0 ? '\n' : '-');
        html[k] = (char)(k % 5 == 0 ? '_' : k % 11 == 0 ? ' ' : '=');
    }
    text[1999] = html[1999] = '\0';
    m.text = text;
    m.html = html;
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), 0);
    parsed_t p;
    parse_message(out, len, &p);
    const char *ct = field(&p, "Content-Type");
    snprintf(boundary, sizeof(boundary), "\r\n--%.34s", ct + 33);
    const char *b1 = strstr(p.body, boundary + 2);
    assert_ptr_equal(b1, p.body);
    const char *h1 = strstr(b1, "\r\n\r\n") + 4;
    const char *e1 = strstr(h1, boundary);
    const char *h2 = strstr(e1 + 2, "\r\n\r\n") + 4;
    const char *e2 = strstr(h2, boundary);
    assert_string_equal(e2 + strlen(boundary), "--\r\n");
    size_t n1, n2;
    char *d1 = qp_decode(h1, (size_t)(e1 - h1), &n1);
    char *d2 = qp_decode(h2, (size_t)(e2 - h2), &n2);
    char *w1 = crlf(text), *w2 = crlf(html);
    assert_string_equal(d1, w1);
    assert_string_equal(d2, w2);
    free(d1);
    free(d2);
    free(w1);
    free(w2);
    parsed_free(&p);
    free(out);
}

static void test_extra_headers(void **state)
{
    char long_value[1000];
    size_t n = 0;
    for (int k = 0; k < 25; ++k)
        n += (size_t)snprintf(long_value + n, sizeof(long_value) - n, "<https://x.example/%d>, ", k);
    long_value[n - 2] = '\0';
    crm_mail_header_t headers[] = {
        {"List-Unsubscribe", "<mailto:unsubscribe@example.com>"},
        {"X-CRM-Tenant", "t-42\twith tab"},
        {"X-Empty", ""},
        {"X-Long", long_value},
    };
    crm_mail_message_t m = basic();
    m.headers = headers;
    m.header_count = 4;
    char *out;
    size_t len;
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), 0);
    parsed_t p;
    parse_message(out, len, &p);
    assert_string_equal(p.name[6], "List-Unsubscribe");
    assert_string_equal(p.value[6], "<mailto:unsubscribe@example.com>");
    assert_string_equal(p.name[7], "X-CRM-Tenant");
    assert_string_equal(p.value[7], "t-42\twith tab");
    assert_string_equal(p.name[8], "X-Empty");
    assert_string_equal(p.value[8], "");
    assert_string_equal(p.name[9], "X-Long");
    assert_string_equal(p.value[9], long_value);
    assert_non_null(strstr(out, "\r\nX-Empty:\r\n"));
    assert_string_equal(p.name[10], "Content-Type");
    parsed_free(&p);
    free(out);

    static const crm_mail_header_t bad[] = {
        {"X-Bad:Name", "v"},
        {"X Bad", "v"},
        {"", "v"},
        {NULL, "v"},
        {"X-Null", NULL},
        {"X-Inject", "v\r\nBcc: evil@x.com"},
        {"X-LF", "v\nw"},
        {"X-8bit", "caf\xC3\xA9"},
        {"X-Ctl", "a\x01"},
        {"bcc", "evil@x.com"},
        {"To", "evil@x.com"},
        {"content-type", "text/html"},
        {"Content-Transfer-Encoding", "8bit"},
        {"MIME-Version", "2.0"},
        {"X-\xC3\xA9", "v"},
        {"X-Word", "<a-word-too-long-for-998-characters>"},
    };
    static char huge_word[1200];
    memset(huge_word, 'w', sizeof(huge_word) - 1);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        crm_mail_header_t h = bad[i];
        if (strcmp(h.name ? h.name : "", "X-Word") == 0)
            h.value = huge_word;
        m.headers = &h;
        m.header_count = 1;
        out = (char *)1;
        assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), CRM_E_INVAL);
        assert_null(out);
    }
    m.headers = NULL;
    m.header_count = 1;
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), CRM_E_INVAL);
}

static void test_rejects(void **state)
{
    crm_mail_mailbox_t bad_to[] = {
        {"a@x.com\r\nBcc: evil@x.com", NULL},
        {"not-an-address", NULL},
        {"a@localhost", NULL},
        {"John <a@x.com>", NULL},
        {NULL, NULL},
        {"a@x.com", "Name\r\nBcc: evil@x.com"},
        {"a@x.com", "Name\n"},
        {"a@x.com", "caf\xE9"},
    };
    char *out = (char *)1;
    size_t len;
    for (size_t i = 0; i < sizeof(bad_to) / sizeof(bad_to[0]); ++i) {
        crm_mail_message_t m = basic();
        m.to = &bad_to[i];
        assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), CRM_E_INVAL);
        m = basic();
        m.from = bad_to[i];
        assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), CRM_E_INVAL);
        m = basic();
        m.reply_to = &bad_to[i];
        assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), CRM_E_INVAL);
    }
    crm_mail_message_t m = basic();
    m.subject = "Hi\r\nBcc: evil@x.com";
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), CRM_E_INVAL);
    m.subject = "Hi\xFF";
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), CRM_E_INVAL);
    m = basic();
    m.text = NULL;
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), CRM_E_INVAL);
    m.text = "bad \xC0\x80 utf-8";
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), CRM_E_INVAL);
    m = basic();
    m.html = "\xED\xA0\x80";
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), CRM_E_INVAL);
    m = basic();
    m.to_count = 0;
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), CRM_E_INVAL);
    m.to = NULL;
    m.to_count = 1;
    assert_int_equal(crm_mail_message_compose(&m, &out, &len, NULL), CRM_E_INVAL);
    m = basic();
    assert_int_equal(crm_mail_message_compose(NULL, &out, &len, NULL), CRM_E_INVAL);
    assert_null(out);
    assert_int_equal(crm_mail_message_compose(&m, NULL, &len, NULL), CRM_E_INVAL);
    assert_int_equal(crm_mail_message_compose(&m, &out, NULL, NULL), CRM_E_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact),
        cmocka_unit_test(test_date),
        cmocka_unit_test(test_message_id),
        cmocka_unit_test(test_display_names),
        cmocka_unit_test(test_many_recipients),
        cmocka_unit_test(test_subject),
        cmocka_unit_test(test_quoted_printable),
        cmocka_unit_test(test_quoted_printable_random),
        cmocka_unit_test(test_multipart),
        cmocka_unit_test(test_extra_headers),
        cmocka_unit_test(test_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
