/*
 * Unit tests for lib/log.c: the exact line format under a fixed clock, escaping and UTF-8 repair, level filtering,
 * truncation, ordering across threads, drop counting with a blocked writer, write errors, and the synchronous mode
 * before crm_log_start and after crm_log_stop. Every line is parsed with jansson to prove it is valid JSON.
 */
#include "log.h"

#include "err.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

/* 2026-11-23T16:54:04.123456789Z */
#define FIXED_SEC  1795452844
#define FIXED_NSEC 123456789
#define L_DEBUG    "{\"ts\":\"2026-11-23T16:54:04.123Z\",\"level\":\"debug\",\"event\":"
#define L_INFO     "{\"ts\":\"2026-11-23T16:54:04.123Z\",\"level\":\"info\",\"event\":"
#define L_WARN     "{\"ts\":\"2026-11-23T16:54:04.123Z\",\"level\":\"warn\",\"event\":"
#define L_ERROR    "{\"ts\":\"2026-11-23T16:54:04.123Z\",\"level\":\"error\",\"event\":"
#define N_OF(a)    (sizeof(a) / sizeof((a)[0]))

static long clock_nsec = FIXED_NSEC;

static void fixed_clock(struct timespec *ts)
{
    ts->tv_sec = FIXED_SEC;
    ts->tv_nsec = clock_nsec;
}

static int setup(void **state)
{
    clock_nsec = FIXED_NSEC;
    crm_log_set_clock_for_test(fixed_clock);
    crm_log_set_level(CRM_LOG_INFO);
    return 0;
}

static int teardown(void **state)
{
    crm_log_stop();
    crm_log_set_clock_for_test(NULL);
    crm_log_set_level(CRM_LOG_INFO);
    return 0;
}

/* ---- helpers ---- */

typedef struct {
    int fd;
    char *buf;
    size_t len;
    size_t cap;
} reader_t;

/* Reads fd to EOF into a NUL-terminated buffer. Runs on its own thread in the tests that need the pipe drained
 * while logging, so it must not call cmocka assertions. */
static void *read_all(void *arg)
{
    reader_t *r = arg;
    for (;;) {
        if (r->cap - r->len < 65536 + 1) {
            r->cap = r->cap * 2 + 65536 + 1;
            r->buf = realloc(r->buf, r->cap);
            if (r->buf == NULL)
                abort();
        }
        ssize_t n = read(r->fd, r->buf + r->len, r->cap - r->len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        r->len += (size_t)n;
    }
    r->buf[r->len] = '\0';
    return NULL;
}

static int cap_rfd = -1, cap_wfd = -1;

/* Starts the writer on a fresh pipe. */
static void capture_start(crm_log_level_t level, size_t buffer_bytes)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    cap_rfd = p[0];
    cap_wfd = p[1];
    assert_int_equal(crm_log_start(cap_wfd, level, buffer_bytes), 0);
}

/* Stops the writer and returns everything it wrote (caller frees). The output of these tests fits in the pipe, so
 * the writer never waits for a reader. */
static char *capture_end(size_t *len)
{
    crm_log_stop();
    close(cap_wfd);
    reader_t r = {.fd = cap_rfd};
    read_all(&r);
    close(cap_rfd);
    cap_rfd = cap_wfd = -1;
    if (len != NULL)
        *len = r.len;
    return r.buf;
}

/* Asserts that [line, line+len) is one JSON object followed by exactly one newline, and returns it parsed with the
 * extra jansson decoding flags. */
static json_t *parse_line_flags(const char *line, size_t len, size_t flags)
{
    json_error_t e;
    assert_true(len >= 1);
    assert_int_equal(line[len - 1], '\n');
    assert_null(memchr(line, '\n', len - 1));
    json_t *j = json_loadb(line, len - 1, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | flags, &e);
    if (j == NULL)
        fail_msg("invalid JSON (%s at %d): %.*s", e.text, e.position, (int)len, line);
    assert_true(json_is_object(j));
    return j;
}

static json_t *parse_line(const char *line, size_t len)
{
    return parse_line_flags(line, len, 0);
}

/* Asserts that the captured output is exactly the n expected lines, and that each is valid JSON. Integers are
 * decoded as reals here because jansson refuses integers above INT64_MAX, which JSON allows and a UINT field may
 * hold. */
static void assert_lines(const char *const *lines, size_t n)
{
    size_t len, off = 0;
    char *out = capture_end(&len);
    for (size_t i = 0; i < n; i++) {
        size_t ll = strlen(lines[i]);
        assert_true(ll <= len - off);
        assert_memory_equal(out + off, lines[i], ll);
        json_decref(parse_line_flags(out + off, ll, JSON_DECODE_INT_AS_REAL));
        off += ll;
    }
    assert_int_equal(off, len);
    free(out);
}
/* ---- levels ---- */

static void test_level_parse_and_name(void **state)
{
    static const struct {
        const char *s;
        crm_log_level_t l;
    } ok[] = {{"debug", CRM_LOG_DEBUG}, {"info", CRM_LOG_INFO},   {"warn", CRM_LOG_WARN},
              {"error", CRM_LOG_ERROR}, {"off", CRM_LOG_OFF},     {"INFO", CRM_LOG_INFO},
              {"Warn", CRM_LOG_WARN},   {"DeBuG", CRM_LOG_DEBUG}, {"OFF", CRM_LOG_OFF}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        crm_log_level_t l = CRM_LOG_OFF;
        if (ok[i].l == CRM_LOG_OFF)
            l = CRM_LOG_DEBUG;
        assert_int_equal(crm_log_level_parse(ok[i].s, &l), 0);
        assert_int_equal(l, ok[i].l);
    }

    static const char *const bad[] = {"", "warning", "inf", "infos", " info", "info ", "fatal", "0", "err"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        crm_log_level_t l = CRM_LOG_ERROR;
        assert_int_equal(crm_log_level_parse(bad[i], &l), CRM_E_INVAL);
        assert_int_equal(l, CRM_LOG_ERROR);
    }
    crm_log_level_t l;
    assert_int_equal(crm_log_level_parse(NULL, &l), CRM_E_INVAL);
    assert_int_equal(crm_log_level_parse("info", NULL), CRM_E_INVAL);

    assert_string_equal(crm_log_level_name(CRM_LOG_DEBUG), "debug");
    assert_string_equal(crm_log_level_name(CRM_LOG_INFO), "info");
    assert_string_equal(crm_log_level_name(CRM_LOG_WARN), "warn");
    assert_string_equal(crm_log_level_name(CRM_LOG_ERROR), "error");
    assert_string_equal(crm_log_level_name(CRM_LOG_OFF), "off");
    assert_string_equal(crm_log_level_name((crm_log_level_t)5), "unknown");
    assert_string_equal(crm_log_level_name((crm_log_level_t)-1), "unknown");
}

static int evaluations;

static int64_t evaluated(void)
{
    evaluations++;
    return 7;
}

static void test_level_filtering(void **state)
{
    capture_start(CRM_LOG_WARN, 65536);

    assert_false(crm_log_enabled(CRM_LOG_DEBUG));
    assert_false(crm_log_enabled(CRM_LOG_INFO));
    assert_true(crm_log_enabled(CRM_LOG_WARN));
    assert_true(crm_log_enabled(CRM_LOG_ERROR));
    assert_false(crm_log_enabled(CRM_LOG_OFF));
    assert_false(crm_log_enabled((crm_log_level_t)7));
    assert_false(crm_log_enabled((crm_log_level_t)-1));

    evaluations = 0;
    crm_log(CRM_LOG_DEBUG, "d", CRM_LOG_INT("x", evaluated()));
    crm_log(CRM_LOG_INFO, "i", CRM_LOG_INT("x", evaluated()));
    assert_int_equal(evaluations, 0); /* fields of a disabled line are never built */
    crm_log(CRM_LOG_WARN, "w", CRM_LOG_INT("x", evaluated()));
    crm_log(CRM_LOG_ERROR, "e");
    crm_log(CRM_LOG_OFF, "never");
    crm_log_fields((crm_log_level_t)9, "never", NULL, 0);
    assert_int_equal(evaluations, 1);

    crm_log_set_level(CRM_LOG_DEBUG);
    assert_true(crm_log_enabled(CRM_LOG_DEBUG));
    crm_log(CRM_LOG_DEBUG, "d2");
    crm_log_set_level((crm_log_level_t)42); /* ignored */
    assert_true(crm_log_enabled(CRM_LOG_DEBUG));
    crm_log_set_level(CRM_LOG_OFF);
    assert_false(crm_log_enabled(CRM_LOG_ERROR));
    crm_log(CRM_LOG_ERROR, "off");

    static const char *const expected[] = {
        L_WARN "\"w\",\"x\":7}\n",
        L_ERROR "\"e\"}\n",
        L_DEBUG "\"d2\"}\n",
    };
    assert_lines(expected, N_OF(expected));
}

/* ---- format ---- */

static void test_format_exact(void **state)
{
    capture_start(CRM_LOG_DEBUG, 65536);
    crm_log(CRM_LOG_INFO, "http.listen", CRM_LOG_STR("addr", "127.0.0.1:8080"));
    crm_log(CRM_LOG_INFO, "started");
    crm_log_fields(CRM_LOG_WARN, "nofields", NULL, 0);
    crm_log_fields(CRM_LOG_WARN, "nullfields", NULL, 3);
    crm_log(CRM_LOG_ERROR, NULL, CRM_LOG_STR("s", NULL), CRM_LOG_STRN("sn", NULL, 5), CRM_LOG_STRN("e", "xyz", 0));
    crm_log(CRM_LOG_DEBUG, "order", CRM_LOG_INT("z", 1), CRM_LOG_INT("a", 2), CRM_LOG_INT("m", 3));
    const crm_log_field_t nullkey[] = {{.key = NULL, .type = CRM_LOG_T_BOOL, .v.b = 1}};
    crm_log_fields(CRM_LOG_INFO, "nullkey", nullkey, 1);
    const crm_log_field_t badtype[] = {{.key = "t", .type = (crm_log_type_t)99}};
    crm_log_fields(CRM_LOG_INFO, "badtype", badtype, 1);

    /* Milliseconds are truncated, never rounded up into the next second. */
    clock_nsec = 999999999;
    crm_log(CRM_LOG_INFO, "ms");
    clock_nsec = 0;
    crm_log(CRM_LOG_INFO, "ms");
    clock_nsec = 1000000;
    crm_log(CRM_LOG_INFO, "ms");

    static const char *const expected[] = {
        "{\"ts\":\"2026-11-23T16:54:04.123Z\",\"level\":\"info\",\"event\":\"http.listen\",\"addr\":\"127.0.0.1:8080\"}"
        "\n",
        L_INFO "\"started\"}\n",
        L_WARN "\"nofields\"}\n",
        L_WARN "\"nullfields\"}\n",
        L_ERROR "null,\"s\":null,\"sn\":null,\"e\":\"\"}\n",
        L_DEBUG "\"order\",\"z\":1,\"a\":2,\"m\":3}\n",
        L_INFO "\"nullkey\",\"\":true}\n",
        L_INFO "\"badtype\",\"t\":null}\n",
        "{\"ts\":\"2026-11-23T16:54:04.999Z\",\"level\":\"info\",\"event\":\"ms\"}\n",
        "{\"ts\":\"2026-11-23T16:54:04.000Z\",\"level\":\"info\",\"event\":\"ms\"}\n",
        "{\"ts\":\"2026-11-23T16:54:04.001Z\",\"level\":\"info\",\"event\":\"ms\"}\n",
    };
    assert_lines(expected, N_OF(expected));
}

static void test_numbers(void **state)
{
    capture_start(CRM_LOG_DEBUG, 65536);
    crm_log(CRM_LOG_INFO, "int", CRM_LOG_INT("min", INT64_MIN), CRM_LOG_INT("max", INT64_MAX), CRM_LOG_INT("z", 0),
            CRM_LOG_INT("neg", -42));
    crm_log(CRM_LOG_INFO, "uint", CRM_LOG_UINT("max", UINT64_MAX), CRM_LOG_UINT("z", 0));
    crm_log(CRM_LOG_INFO, "bool", CRM_LOG_BOOL("t", 5), CRM_LOG_BOOL("f", 0));
    crm_log(CRM_LOG_INFO, "dbl", CRM_LOG_DBL("a", 0.1), CRM_LOG_DBL("b", 1.0), CRM_LOG_DBL("c", -0.0),
            CRM_LOG_DBL("d", 1e300), CRM_LOG_DBL("e", 0.1 + 0.2), CRM_LOG_DBL("f", 1.0 / 3.0), CRM_LOG_DBL("g", 5e-324),
            CRM_LOG_DBL("h", -2.5), CRM_LOG_DBL("i", 123456789012345678.0));
    crm_log(CRM_LOG_INFO, "nonfinite", CRM_LOG_DBL("nan", NAN), CRM_LOG_DBL("inf", INFINITY),
            CRM_LOG_DBL("ninf", -INFINITY));
    static const char *const expected[] = {
        L_INFO "\"int\",\"min\":-9223372036854775808,\"max\":9223372036854775807,\"z\":0,\"neg\":-42}\n",
        L_INFO "\"uint\",\"max\":18446744073709551615,\"z\":0}\n",
        L_INFO "\"bool\",\"t\":true,\"f\":false}\n",
        L_INFO "\"dbl\",\"a\":0.1,\"b\":1,\"c\":-0,\"d\":1e+300,\"e\":0.30000000000000004,\"f\":0.3333333333333333,"
               "\"g\":4.94065645841247e-324,\"h\":-2.5,\"i\":1.2345678901234568e+17}\n",
        L_INFO "\"nonfinite\",\"nan\":null,\"inf\":null,\"ninf\":null}\n",
    };
    assert_lines(expected, N_OF(expected));
}

/* ---- escaping and UTF-8 ---- */

static void test_escape_control_chars(void **state)
{
    char in[0x20 + 5];
    for (int c = 1; c < 0x20; c++)
        in[c - 1] = (char)c;
    memcpy(in + 0x1f, "\x7f\"\\/", 4);
    in[0x23] = '\0';

    capture_start(CRM_LOG_DEBUG, 65536);
    crm_log(CRM_LOG_INFO, "esc", CRM_LOG_STR("s", in));
    crm_log(CRM_LOG_INFO, "nul", CRM_LOG_STRN("s", "a\0b", 3));
    /* Keys and the event are escaped the same way. */
    crm_log(CRM_LOG_INFO, "ev\"\n", CRM_LOG_INT("k\\\"\t", 1));

    size_t len;
    char *out = capture_end(&len);
    static const char *const lines[] = {
        L_INFO "\"esc\",\"s\":\"\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r"
               "\\u000e\\u000f\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018\\u0019\\u001a"
               "\\u001b\\u001c\\u001d\\u001e\\u001f\x7f\\\"\\\\/\"}\n",
        L_INFO "\"nul\",\"s\":\"a\\u0000b\"}\n",
        L_INFO "\"ev\\\"\\n\",\"k\\\\\\\"\\t\":1}\n",
    };
    char expected[512];
    snprintf(expected, sizeof(expected), "%s%s%s", lines[0], lines[1], lines[2]);
    assert_string_equal(out, expected);

    /* The parser gives back exactly the bytes that went in. */
    char *nl1 = strchr(out, '\n'), *nl2 = strchr(nl1 + 1, '\n'), *nl3 = strchr(nl2 + 1, '\n');
    json_t *j = parse_line(out, (size_t)(nl1 - out + 1));
    assert_string_equal(json_string_value(json_object_get(j, "s")), in);
    json_decref(j);
    j = parse_line(nl1 + 1, (size_t)(nl2 - nl1));
    assert_int_equal(json_string_length(json_object_get(j, "s")), 3);
    assert_memory_equal(json_string_value(json_object_get(j, "s")), "a\0b", 3);
    json_decref(j);
    j = parse_line(nl2 + 1, (size_t)(nl3 - nl2));
    assert_string_equal(json_string_value(json_object_get(j, "event")), "ev\"\n");
    assert_int_equal(json_integer_value(json_object_get(j, "k\\\"\t")), 1);
    json_decref(j);
    free(out);
}

static void test_utf8(void **state)
{
    static const struct {
        const char *in;
        size_t n;
        const char *out; /* the JSON string body */
    } cases[] = {
        /* Well-formed: copied byte for byte, including the boundaries of each range. */
        {"h\xc3\xa9llo \xe2\x82\xac \xf0\x9d\x84\x9e", 0, "h\xc3\xa9llo \xe2\x82\xac \xf0\x9d\x84\x9e"},
        {"\xc2\x80\xdf\xbf", 0, "\xc2\x80\xdf\xbf"},
        {"\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf", 0, "\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf"},
        {"\xf0\x90\x80\x80\xf4\x8f\xbf\xbf", 0, "\xf0\x90\x80\x80\xf4\x8f\xbf\xbf"},
        /* Ill-formed: one \ufffd per maximal subpart. */
        {"\x80", 0, "\\ufffd"},
        {"a\xbf"
         "b",
         0, "a\\ufffdb"},
        {"\xc0\x80", 0, "\\ufffd\\ufffd"}, /* overlong NUL */
        {"\xc1\xbf", 0, "\\ufffd\\ufffd"},
        {"\xc2", 0, "\\ufffd"}, /* cut at the end */
        {"\xc2"
         "A",
         0, "\\ufffdA"},
        {"\xe0\x80\x80", 0, "\\ufffd\\ufffd\\ufffd"}, /* overlong */
        {"\xe0\xa0", 0, "\\ufffd"},                   /* two-byte maximal subpart */
        {"\xe2\x82"
         "x",
         0, "\\ufffdx"},
        {"\xed\xa0\x80", 0, "\\ufffd\\ufffd\\ufffd"},            /* surrogate D800 */
        {"\xf0\x8f\xbf\xbf", 0, "\\ufffd\\ufffd\\ufffd\\ufffd"}, /* overlong */
        {"\xf0\x9f\x98"
         "x",
         0, "\\ufffdx"},
        {"\xf4\x90\x80\x80", 0, "\\ufffd\\ufffd\\ufffd\\ufffd"}, /* above U+10FFFF */
        {"\xf5\x80\x80\x80", 0, "\\ufffd\\ufffd\\ufffd\\ufffd"},
        {"\xfe\xff", 0, "\\ufffd\\ufffd"},
        {"\xf0\x9f\x98\x80\x80", 0, "\xf0\x9f\x98\x80\\ufffd"},
        /* A character cut by the length of a STRN is ill-formed at the end of the value. */
        {"\xe2\x82\xac", 2, "\\ufffd"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        capture_start(CRM_LOG_DEBUG, 65536);
        size_t n = cases[i].n != 0 ? cases[i].n : strlen(cases[i].in);
        crm_log(CRM_LOG_INFO, "u", CRM_LOG_STRN("s", cases[i].in, n));
        char line[256];
        snprintf(line, sizeof(line), L_INFO "\"u\",\"s\":\"%s\"}\n", cases[i].out);
        const char *const expected[] = {line};
        assert_lines(expected, 1);
    }
}

/* ---- truncation ---- */

static char *repeat(const char *unit, size_t count)
{
    size_t ul = strlen(unit);
    char *s = malloc(ul * count + 1);
    assert_non_null(s);
    for (size_t i = 0; i < count; i++)
        memcpy(s + i * ul, unit, ul);
    s[ul * count] = '\0';
    return s;
}

#define BODY_PREFIX L_INFO "\"e\",\"body\":\""
#define ELLIPSIS    "\xe2\x80\xa6"
#define TRUNC_TAIL  ELLIPSIS "\",\"truncated\":true}\n"

static void test_truncation_boundary(void **state)
{
    const size_t prefix = strlen(BODY_PREFIX);
    const size_t fit = CRM_LOG_LINE_MAX - prefix - strlen("\"}\n");
    const size_t cut = CRM_LOG_LINE_MAX - prefix - strlen(TRUNC_TAIL);
    char *big = repeat("a", fit + 1);
    char *expected = malloc(2 * CRM_LOG_LINE_MAX + 1);
    assert_non_null(expected);

    capture_start(CRM_LOG_DEBUG, 65536);
    /* A line of exactly CRM_LOG_LINE_MAX bytes is written whole. */
    crm_log(CRM_LOG_INFO, "e", CRM_LOG_STRN("body", big, fit));
    /* One byte more and the value is cut, with room made for the marker; a field after it no longer fits. */
    crm_log(CRM_LOG_INFO, "e", CRM_LOG_STRN("body", big, fit + 1), CRM_LOG_INT("after", 1));
    size_t len;
    char *out = capture_end(&len);

    size_t e = 0;
    memcpy(expected + e, BODY_PREFIX, prefix);
    e += prefix;
    memcpy(expected + e, big, fit);
    e += fit;
    memcpy(expected + e, "\"}\n", 3);
    e += 3;
    assert_int_equal(e, CRM_LOG_LINE_MAX);
    memcpy(expected + e, BODY_PREFIX, prefix);
    e += prefix;
    memcpy(expected + e, big, cut);
    e += cut;
    memcpy(expected + e, TRUNC_TAIL, strlen(TRUNC_TAIL));
    e += strlen(TRUNC_TAIL);
    assert_int_equal(e, 2 * CRM_LOG_LINE_MAX);
    expected[e] = '\0';

    assert_int_equal(len, e);
    assert_string_equal(out, expected);
    json_decref(parse_line(out, CRM_LOG_LINE_MAX));
    json_t *j = parse_line(out + CRM_LOG_LINE_MAX, CRM_LOG_LINE_MAX);
    assert_true(json_is_true(json_object_get(j, "truncated")));
    assert_null(json_object_get(j, "after"));
    json_decref(j);
    free(out);
    free(expected);
    free(big);
}

/* Cuts fall between whole characters and whole escapes, so the line stays valid and the value is a prefix of the
 * input followed by the ellipsis. */
static void test_truncation_multibyte(void **state)
{
    static const struct {
        const char *unit;    /* input unit */
        const char *decoded; /* what the parser gives back for it */
        size_t width;        /* its width in the line */
    } units[] = {{"\xc3\xa9", "\xc3\xa9", 2},
                 {"\x01", "\x01", 6},
                 {"\xf0\x9d\x84\x9e", "\xf0\x9d\x84\x9e", 4},
                 {"\xff", "\xef\xbf\xbd", 6}};

    for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
        char *big = repeat(units[u].unit, 5000);
        capture_start(CRM_LOG_DEBUG, 65536);
        crm_log(CRM_LOG_INFO, "e", CRM_LOG_STR("body", big));
        size_t len;
        char *out = capture_end(&len);

        /* The line is as long as whole units allow: short of the maximum by less than one unit. */
        assert_true(len <= CRM_LOG_LINE_MAX);
        assert_true(len > CRM_LOG_LINE_MAX - units[u].width);
        json_t *j = parse_line(out, len);
        assert_true(json_is_true(json_object_get(j, "truncated")));
        const char *v = json_string_value(json_object_get(j, "body"));
        size_t vl = json_string_length(json_object_get(j, "body"));
        size_t dl = strlen(units[u].decoded);
        assert_true(vl > strlen(ELLIPSIS));
        size_t count = (vl - strlen(ELLIPSIS)) / dl;
        assert_int_equal(count * dl + strlen(ELLIPSIS), vl);
        assert_int_equal(len, strlen(BODY_PREFIX) + count * units[u].width + strlen(TRUNC_TAIL));
        for (size_t i = 0; i < count; i++)
            assert_memory_equal(v + i * dl, units[u].decoded, dl);
        assert_memory_equal(v + count * dl, ELLIPSIS, strlen(ELLIPSIS));
        json_decref(j);
        free(out);
        free(big);
    }
}

static void test_truncation_key_and_event(void **state)
{
    char *longkey = repeat("k", 9000);
    char *longevent = repeat("x", 10000);

    capture_start(CRM_LOG_DEBUG, 65536);
    /* A key is never cut: the field that does not fit is left out with everything after it. */
    crm_log(CRM_LOG_INFO, "e", CRM_LOG_INT("a", 1), CRM_LOG_INT(longkey, 2), CRM_LOG_INT("c", 3));
    crm_log(CRM_LOG_INFO, longevent, CRM_LOG_INT("a", 1));
    size_t len;
    char *out = capture_end(&len);

    static const char first[] = L_INFO "\"e\",\"a\":1,\"truncated\":true}\n";
    assert_true(len > strlen(first));
    assert_memory_equal(out, first, strlen(first));

    const char *second = out + strlen(first);
    size_t second_len = len - strlen(first);
    assert_int_equal(second_len, CRM_LOG_LINE_MAX);
    const size_t head = strlen(L_INFO "\"");
    const size_t xs = CRM_LOG_LINE_MAX - head - strlen(TRUNC_TAIL);
    assert_memory_equal(second, L_INFO "\"", head);
    assert_memory_equal(second + head, longevent, xs);
    assert_memory_equal(second + head + xs, TRUNC_TAIL, strlen(TRUNC_TAIL));
    json_decref(parse_line(out, strlen(first)));
    json_decref(parse_line(second, second_len));
    free(out);
    free(longkey);
    free(longevent);
}

/* ---- the writer ---- */

#define THREADS    4
#define PER_THREAD 10000

static pthread_barrier_t barrier;

static void *log_thread(void *arg)
{
    int64_t t = (int64_t)(intptr_t)arg;
    pthread_barrier_wait(&barrier);
    for (int64_t i = 0; i < PER_THREAD; i++)
        crm_log(CRM_LOG_INFO, "seq", CRM_LOG_INT("t", t), CRM_LOG_INT("n", i), CRM_LOG_STR("pad", "some payload"));
    return NULL;
}

/* Lines from several threads arrive whole and, per thread, in order. The buffer holds every line, so none may be
 * dropped however the threads are scheduled. */
static void test_threads_in_order(void **state)
{
    crm_log_set_clock_for_test(NULL);
    capture_start(CRM_LOG_INFO, 8u << 20);
    reader_t r = {.fd = cap_rfd};
    pthread_t reader, th[THREADS];
    uint64_t dropped = crm_log_dropped();

    assert_int_equal(pthread_create(&reader, NULL, read_all, &r), 0);
    assert_int_equal(pthread_barrier_init(&barrier, NULL, THREADS), 0);
    for (intptr_t t = 0; t < THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, log_thread, (void *)t), 0);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    pthread_barrier_destroy(&barrier);
    crm_log_stop();
    close(cap_wfd);
    pthread_join(reader, NULL);
    close(cap_rfd);
    cap_rfd = cap_wfd = -1;

    assert_int_equal(crm_log_dropped(), dropped);
    int64_t next[THREADS] = {0};
    size_t lines = 0;
    for (char *p = r.buf, *nl; (nl = strchr(p, '\n')) != NULL; p = nl + 1) {
        json_t *j = parse_line(p, (size_t)(nl - p + 1));
        assert_string_equal(json_string_value(json_object_get(j, "event")), "seq");
        assert_string_equal(json_string_value(json_object_get(j, "pad")), "some payload");
        json_int_t t = json_integer_value(json_object_get(j, "t"));
        assert_in_range(t, 0, THREADS - 1);
        assert_int_equal(json_integer_value(json_object_get(j, "n")), next[t]);
        next[t]++;
        json_decref(j);
        lines++;
    }
    assert_int_equal(lines, THREADS * PER_THREAD);
    assert_int_equal(strlen(r.buf), r.len); /* nothing after the last newline, no NUL inside */
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(next[t], PER_THREAD);
    free(r.buf);
}

/* Checks that out holds whole, valid "n" lines with strictly increasing n, and returns how many. */
static size_t check_increasing(char *out, size_t len)
{
    size_t lines = 0;
    json_int_t last = -1;
    for (char *p = out, *nl; (nl = strchr(p, '\n')) != NULL; p = nl + 1) {
        json_t *j = parse_line(p, (size_t)(nl - p + 1));
        json_int_t n = json_integer_value(json_object_get(j, "n"));
        assert_true(n > last);
        last = n;
        json_decref(j);
        lines++;
    }
    assert_int_equal(strlen(out), len);
    assert_true(len == 0 || out[len - 1] == '\n');
    return lines;
}

/* With the pipe not drained the writer blocks in write(2); callers keep going and drop what does not fit. Once a
 * reader drains the pipe, crm_log_stop writes out everything that was queued. */
static void test_drop_when_blocked(void **state)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    (void)fcntl(p[1], F_SETPIPE_SZ, 4096); /* best effort: the arithmetic below uses whatever size the pipe has */
    int pipe_size = fcntl(p[1], F_GETPIPE_SZ);
    assert_true(pipe_size > 0);
    cap_rfd = p[0];
    cap_wfd = p[1];
    assert_int_equal(crm_log_start(cap_wfd, CRM_LOG_INFO, CRM_LOG_BUFFER_MIN), 0);

    /* At most pipe_size + 2 * buffer bytes can be absorbed (the pipe, the batch being written, the buffer being
     * filled), so twice that is sure to overflow. Numbers of equal width make all lines equally long. */
    const size_t line_len = strlen(L_INFO "\"n\",\"n\":1000000}\n");
    const size_t total = 2 * ((size_t)pipe_size + 2 * CRM_LOG_BUFFER_MIN) / line_len + 16;
    uint64_t before = crm_log_dropped();
    for (size_t i = 0; i < total; i++)
        crm_log(CRM_LOG_INFO, "n", CRM_LOG_UINT("n", 1000000 + i));
    uint64_t dropped = crm_log_dropped() - before;
    assert_true(dropped > 0);

    reader_t r = {.fd = cap_rfd};
    pthread_t reader;
    assert_int_equal(pthread_create(&reader, NULL, read_all, &r), 0);
    crm_log_stop();
    close(cap_wfd);
    pthread_join(reader, NULL);
    close(cap_rfd);
    cap_rfd = cap_wfd = -1;

    /* Writing out the queue loses nothing more: every line was either written whole or counted. */
    assert_int_equal(crm_log_dropped() - before, dropped);
    size_t lines = check_increasing(r.buf, r.len);
    assert_int_equal(r.len, lines * line_len);
    assert_int_equal(lines + dropped, total);
    assert_true(lines > 0);
    free(r.buf);
}

/* A non-blocking descriptor (libuv may make stderr one) is waited for with poll, not spun on or given up. */
static void test_nonblocking_fd(void **state)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    (void)fcntl(p[1], F_SETPIPE_SZ, 4096);
    assert_int_equal(fcntl(p[1], F_SETFL, fcntl(p[1], F_GETFL) | O_NONBLOCK), 0);
    cap_rfd = p[0];
    cap_wfd = p[1];
    assert_int_equal(crm_log_start(cap_wfd, CRM_LOG_INFO, 1u << 20), 0);

    uint64_t before = crm_log_dropped();
    const size_t total = 2000; /* about 90 KB: many times the pipe */
    for (size_t i = 0; i < total; i++)
        crm_log(CRM_LOG_INFO, "n", CRM_LOG_UINT("n", 1000000 + i));

    reader_t r = {.fd = cap_rfd};
    pthread_t reader;
    assert_int_equal(pthread_create(&reader, NULL, read_all, &r), 0);
    crm_log_stop();
    close(cap_wfd);
    pthread_join(reader, NULL);
    close(cap_rfd);
    cap_rfd = cap_wfd = -1;

    assert_int_equal(crm_log_dropped(), before);
    assert_int_equal(check_increasing(r.buf, r.len), total);
    free(r.buf);
}

/* The writer wakes for each new batch: a line arrives while the logger runs, not only when crm_log_stop flushes. (If
 * the wake-up were lost, the read below would wait forever and the test would time out.) */
static void test_written_while_running(void **state)
{
    static const char first[] = L_INFO "\"one\"}\n", second[] = L_INFO "\"two\"}\n";
    char buf[128];
    capture_start(CRM_LOG_INFO, 65536);
    for (int round = 0; round < 2; round++) {
        const char *want = round == 0 ? first : second;
        crm_log(CRM_LOG_INFO, round == 0 ? "one" : "two");
        size_t got = 0;
        while (got < strlen(want)) {
            ssize_t n = read(cap_rfd, buf + got, strlen(want) - got);
            assert_true(n > 0);
            got += (size_t)n;
        }
        assert_memory_equal(buf, want, got);
    }
    static const char *const expected[] = {NULL};
    assert_lines(expected, 0); /* nothing else was written */
}

/* A line longer than the whole buffer can never be queued; it is counted, and later lines still go through. */
static void test_line_longer_than_buffer(void **state)
{
    char *big = repeat("b", 6000);
    capture_start(CRM_LOG_INFO, CRM_LOG_BUFFER_MIN);
    uint64_t before = crm_log_dropped();
    crm_log(CRM_LOG_INFO, "big", CRM_LOG_STR("s", big));
    assert_int_equal(crm_log_dropped() - before, 1);
    crm_log(CRM_LOG_INFO, "small");
    static const char *const expected[] = {L_INFO "\"small\"}\n"};
    assert_lines(expected, 1);
    free(big);
}

/* A destination that fails (here EPIPE: nobody reads) costs the lines, counted, and never the process: the writer
 * thread has SIGPIPE blocked, and this test does not ignore it. */
static void test_write_error_counts(void **state)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    close(p[0]);
    assert_int_equal(crm_log_start(p[1], CRM_LOG_INFO, 65536), 0);
    uint64_t before = crm_log_dropped();
    for (int i = 0; i < 5; i++)
        crm_log(CRM_LOG_INFO, "lost", CRM_LOG_INT("i", i));
    crm_log_stop();
    assert_int_equal(crm_log_dropped() - before, 5);
    close(p[1]);
}

static void test_start_errors(void **state)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(crm_log_start(-1, CRM_LOG_INFO, 65536), CRM_E_INVAL);
    assert_int_equal(crm_log_start(p[1], CRM_LOG_INFO, CRM_LOG_BUFFER_MIN - 1), CRM_E_INVAL);
    assert_int_equal(crm_log_start(p[1], (crm_log_level_t)5, 65536), CRM_E_INVAL);
    int closed = dup(p[1]);
    close(closed);
    assert_int_equal(crm_log_start(closed, CRM_LOG_INFO, 65536), CRM_E_INVAL);

    assert_int_equal(crm_log_start(p[1], CRM_LOG_WARN, CRM_LOG_BUFFER_MIN), 0);
    assert_false(crm_log_enabled(CRM_LOG_INFO)); /* start sets the level */
    assert_int_equal(crm_log_start(p[1], CRM_LOG_INFO, 65536), CRM_E_STATE);
    assert_false(crm_log_enabled(CRM_LOG_INFO)); /* a failed start changes nothing */
    crm_log(CRM_LOG_WARN, "still");
    crm_log_stop();
    crm_log_stop(); /* a second stop does nothing */
    close(p[1]);

    char buf[128];
    ssize_t n = read(p[0], buf, sizeof(buf) - 1);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_string_equal(buf, L_WARN "\"still\"}\n");
    close(p[0]);
}

/* Before start and after stop lines go straight to fd 2; in between they go to the writer's fd only; a second
 * start/stop cycle works like the first. */
static void test_sync_mode_and_restart(void **state)
{
    int err_pipe[2];
    assert_int_equal(pipe(err_pipe), 0);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_int_equal(dup2(err_pipe[1], STDERR_FILENO), STDERR_FILENO);

    crm_log(CRM_LOG_INFO, "before");
    capture_start(CRM_LOG_INFO, 65536);
    crm_log(CRM_LOG_INFO, "first");
    size_t len1;
    char *out1 = capture_end(&len1);
    crm_log(CRM_LOG_INFO, "between");
    capture_start(CRM_LOG_INFO, 65536);
    crm_log(CRM_LOG_INFO, "second");
    size_t len2;
    char *out2 = capture_end(&len2);
    crm_log(CRM_LOG_WARN, "after");

    dup2(saved, STDERR_FILENO);
    close(saved);
    close(err_pipe[1]);
    reader_t r = {.fd = err_pipe[0]};
    read_all(&r);
    close(err_pipe[0]);

    assert_string_equal(out1, L_INFO "\"first\"}\n");
    assert_string_equal(out2, L_INFO "\"second\"}\n");
    static const char expected[] = L_INFO "\"before\"}\n" L_INFO "\"between\"}\n" L_WARN "\"after\"}\n";
    assert_string_equal(r.buf, expected);
    free(out1);
    free(out2);
    free(r.buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_level_parse_and_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_level_filtering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_numbers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_escape_control_chars, setup, teardown),
        cmocka_unit_test_setup_teardown(test_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncation_boundary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncation_multibyte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncation_key_and_event, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drop_when_blocked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nonblocking_fd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_written_while_running, setup, teardown),
        cmocka_unit_test_setup_teardown(test_line_longer_than_buffer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_error_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_start_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_mode_and_restart, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
