#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "json.h"

/* A json_t pointer no parse can return, to prove that failures overwrite *out with NULL. */
static json_t *const not_null = (json_t *)&not_null;

static crm_json_limits_t limits_with(size_t max_bytes, size_t max_depth, size_t max_string, size_t max_items)
{
    crm_json_limits_t l = {max_bytes, max_depth, max_string, max_items};
    return l;
}

/* Parses len bytes and asserts the exact error: kind, position, message, and that nothing was returned. */
static void expect_error_len(const char *doc, size_t len, const crm_json_limits_t *l, int kind, size_t line,
                             size_t column, size_t position, const char *message)
{
    crm_json_error_t e;
    json_t *out = not_null;

    memset(&e, 0x5a, sizeof(e));
    assert_int_equal(crm_json_parse(doc, len, l, &out, &e), kind);
    assert_null(out);
    assert_int_equal(e.err, kind);
    assert_string_equal(e.message, message);
    assert_int_equal(e.line, line);
    assert_int_equal(e.column, column);
    assert_int_equal(e.position, position);
}

static void expect_error(const char *doc, const crm_json_limits_t *l, int kind, size_t line, size_t column,
                         size_t position, const char *message)
{
    expect_error_len(doc, strlen(doc), l, kind, line, column, position, message);
}

/* Parses doc, asserts success with a clean error record, and returns the document. */
static json_t *expect_ok_len(const char *doc, size_t len, const crm_json_limits_t *l)
{
    crm_json_error_t e;
    json_t *out = NULL;

    memset(&e, 0x5a, sizeof(e));
    assert_int_equal(crm_json_parse(doc, len, l, &out, &e), 0);
    assert_non_null(out);
    assert_int_equal(e.err, 0);
    assert_string_equal(e.message, "");
    return out;
}

static json_t *expect_ok(const char *doc, const crm_json_limits_t *l)
{
    return expect_ok_len(doc, strlen(doc), l);
}

static void expect_ok_free(const char *doc, const crm_json_limits_t *l)
{
    json_decref(expect_ok(doc, l));
}

/* Dumps v with crm_json_dump_alloc and compares with the expected text. */
static void expect_dump(const json_t *v, const char *expected)
{
    size_t len = 0;
    char *s = crm_json_dump_alloc(v, &len);

    assert_non_null(s);
    assert_string_equal(s, expected);
    assert_int_equal(len, strlen(expected));
    free(s);
}

/* n opening brackets, then inner, then n closing ones; malloc'd, length in *len. */
static char *nested(size_t n, const char *inner, size_t *len)
{
    size_t inner_len = strlen(inner);
    char *s = malloc(2 * n + inner_len + 1);

    assert_non_null(s);
    memset(s, '[', n);
    memcpy(s + n, inner, inner_len);
    memset(s + n + inner_len, ']', n);
    s[2 * n + inner_len] = '\0';
    *len = 2 * n + inner_len;
    return s;
}

static void test_limits_default(void **state)
{
    crm_json_limits_t l;

    memset(&l, 0xff, sizeof(l));
    crm_json_limits_default(&l);
    assert_int_equal(l.max_bytes, 1048576);
    assert_int_equal(l.max_depth, 32);
    assert_int_equal(l.max_string_bytes, 65536);
    assert_int_equal(l.max_array_items, 10000);
}

static void test_valid_object(void **state)
{
    json_t *v =
        expect_ok("{\"name\":\"Ada \\u00e9\\ud83d\\ude00\",\"n\":[1,-2.5,true,false,null],\"o\":{},\"e\":\"\"}", NULL);
    json_t *n;

    assert_true(json_is_object(v));
    assert_int_equal(json_object_size(v), 4);
    assert_string_equal(json_string_value(json_object_get(v, "name")), "Ada \xc3\xa9\xf0\x9f\x98\x80");
    assert_int_equal(json_string_length(json_object_get(v, "name")), 10);
    n = json_object_get(v, "n");
    assert_int_equal(json_array_size(n), 5);
    assert_int_equal(json_integer_value(json_array_get(n, 0)), 1);
    assert_true(json_real_value(json_array_get(n, 1)) == -2.5);
    assert_true(json_is_true(json_array_get(n, 2)));
    assert_true(json_is_false(json_array_get(n, 3)));
    assert_true(json_is_null(json_array_get(n, 4)));
    assert_true(json_is_object(json_object_get(v, "o")));
    assert_int_equal(json_string_length(json_object_get(v, "e")), 0);
    json_decref(v);
}

static void test_valid_array_with_whitespace(void **state)
{
    json_t *v = expect_ok(" \r\n\t[ {\"a\" : 1} , [ ] , \"x\" ]\n\n", NULL);

    assert_true(json_is_array(v));
    assert_int_equal(json_array_size(v), 3);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(v, 0), "a")), 1);
    assert_int_equal(json_array_size(json_array_get(v, 1)), 0);
    assert_string_equal(json_string_value(json_array_get(v, 2)), "x");
    json_decref(v);

    json_decref(expect_ok("{}", NULL));
    json_decref(expect_ok("[]", NULL));
}

/* The input need not be NUL-terminated: only len bytes are read. */
static void test_not_nul_terminated(void **state)
{
    const char doc[] = {'[', '1', ']', 'x'};
    json_t *v = expect_ok_len(doc, 3, NULL);

    assert_int_equal(json_integer_value(json_array_get(v, 0)), 1);
    json_decref(v);
}

static void test_key_order_preserved(void **state)
{
    json_t *v = expect_ok("{\"zeta\":1,\"alpha\":2,\"mid\":{\"y\":0,\"b\":1},\"beta\":3}", NULL);
    json_t *o = json_object();

    expect_dump(v, "{\"zeta\":1,\"alpha\":2,\"mid\":{\"y\":0,\"b\":1},\"beta\":3}");
    json_decref(v);

    /* Built objects keep the order of the set calls, too, and replacing a key keeps its place. */
    assert_int_equal(json_object_set_new(o, "z", json_integer(1)), 0);
    assert_int_equal(json_object_set_new(o, "a", json_integer(2)), 0);
    assert_int_equal(json_object_set_new(o, "m", json_integer(3)), 0);
    assert_int_equal(json_object_set_new(o, "z", json_integer(4)), 0);
    expect_dump(o, "{\"z\":4,\"a\":2,\"m\":3}");
    json_decref(o);
}

static void test_depth_exact_and_one_over(void **state)
{
    crm_json_limits_t l = limits_with(1 << 20, 3, 0, 0);
    size_t len;
    char *doc;

    expect_ok_free("[[[1]]]", &l);
    expect_ok_free("{\"a\":{\"b\":[]}}", &l);
    expect_ok_free("[[[]],[[]],{\"a\":[]}]", &l);
    expect_error("[[[[1]]]]", &l, CRM_E_LIMIT, 1, 4, 3, "nesting deeper than 3 levels");
    expect_error("{\"a\":{\"b\":[{}]}}", &l, CRM_E_LIMIT, 1, 12, 11, "nesting deeper than 3 levels");
    /* Depth goes back down: siblings at depth 3 are fine, the first one too deep is reported. */
    expect_error("[[[]],[[]],[[[1]]]]", &l, CRM_E_LIMIT, 1, 14, 13, "nesting deeper than 3 levels");

    /* The default depth, 32. */
    doc = nested(32, "1", &len);
    json_decref(expect_ok_len(doc, len, NULL));
    free(doc);
    doc = nested(33, "1", &len);
    expect_error_len(doc, len, NULL, CRM_E_LIMIT, 1, 33, 32, "nesting deeper than 32 levels");
    free(doc);

    /* max_depth 1 allows exactly the top-level container. */
    l.max_depth = 1;
    expect_ok_free("[1,\"[\",\"{\"]", &l);
    expect_error("[1,\"[\",{}]", &l, CRM_E_LIMIT, 1, 8, 7, "nesting deeper than 1 levels");
}

/* Line, column and offset of the bracket that is too deep, across lines and with multi-byte characters before it
 * on its line: the column counts characters (like jansson), the position counts bytes. */
static void test_depth_position_multiline(void **state)
{
    crm_json_limits_t l = limits_with(1 << 20, 3, 0, 0);
    const char *doc = "{\n"
                      "  \"a\": [\n"
                      "    {\"\xc3\xa9[\": \"\\\"{\", \"k\": [1]}\n"
                      "  ]\n"
                      "}\n";
    const char *bad = "{\n"
                      "  \"a\": [\n"
                      "    {\"\xc3\xa9[\": \"\\\"{\", \"k\": [x]}\n"
                      "  ]\n"
                      "}\n";

    expect_error(doc, &l, CRM_E_LIMIT, 3, 24, 35, "nesting deeper than 3 levels");
    assert_int_equal(doc[35], '[');
    l.max_depth = 4;
    expect_ok_free(doc, &l);
    /* jansson, counting the same way, puts the token right after that bracket at column 25, offset 36 (its
     * position is the number of bytes consumed, i.e. just past the token). */
    expect_error(bad, &l, CRM_E_PARSE, 3, 25, 37, "invalid JSON at line 3, column 25: invalid token near 'x'");
    assert_int_equal(bad[36], 'x');
}

static void test_depth_ignores_brackets_in_strings(void **state)
{
    crm_json_limits_t l = limits_with(1 << 20, 2, 0, 0);

    expect_ok_free("[[\"[[[{{{\", \"]]]}}}\", \"\\\"[[\", \"[\\\"[\"], {\"[[[\": \"{{{\"}]", &l);
    /* An escaped backslash ends the escape: the quote after "\\" closes the string, so the brackets after it
     * count. A scanner that treats any quote preceded by a backslash as escaped would miss this one. */
    expect_error("[\"\\\\\", [[1]]]", &l, CRM_E_LIMIT, 1, 9, 8, "nesting deeper than 2 levels");
    expect_ok_free("[\"\\\\\", [1]]", &l);
    /* \" inside a string does not end it, so the brackets after it are still inside the string. */
    expect_ok_free("[\"\\\"[[[[\", [1]]", &l);
    /* A string never closed: the brackets are inside it, jansson reports the missing quote. */
    expect_error("[\"[[[[[[", &l, CRM_E_PARSE, 1, 8, 8,
                 "invalid JSON at line 1, column 8: premature end of input near '\"[[[[[['");
}

/* Once the top-level container closes, the scan stops: trailing brackets are jansson's "end of file expected",
 * not a depth violation (jansson reads just one token past the document). */
static void test_depth_stops_after_top_level(void **state)
{
    crm_json_limits_t l = limits_with(1 << 20, 1, 0, 0);

    expect_error("[] [[[[", &l, CRM_E_PARSE, 1, 4, 4,
                 "invalid JSON at line 1, column 4: end of file expected near '['");
    expect_error("[1]]", &l, CRM_E_PARSE, 1, 4, 4, "invalid JSON at line 1, column 4: end of file expected near ']'");
}

/* The depth check runs before jansson, so a deep document with a syntax error inside reports the depth. */
static void test_depth_checked_before_syntax(void **state)
{
    crm_json_limits_t l = limits_with(1 << 20, 3, 0, 0);

    expect_error("[x, [[[", &l, CRM_E_LIMIT, 1, 7, 6, "nesting deeper than 3 levels");
}

static void test_very_deep_document(void **state)
{
    crm_json_limits_t l = limits_with(1 << 20, 32, 65536, 10000);
    size_t n = 100000, len;
    char *open_only = malloc(n);
    char *closed;

    assert_non_null(open_only);
    memset(open_only, '[', n);
    expect_error_len(open_only, n, &l, CRM_E_LIMIT, 1, 33, 32, "nesting deeper than 32 levels");
    /* Alternating objects and arrays count alike. */
    for (size_t i = 0; i + 6 <= n; i += 6)
        memcpy(open_only + i, "{\"a\":[", 6);
    expect_error_len(open_only, n - n % 6, &l, CRM_E_LIMIT, 1, 97, 96, "nesting deeper than 32 levels");
    free(open_only);

    closed = nested(n, "", &len);
    expect_error_len(closed, len, &l, CRM_E_LIMIT, 1, 33, 32, "nesting deeper than 32 levels");
    /* Even at the largest allowed max_depth, jansson never sees the deep part. */
    l.max_depth = CRM_JSON_DEPTH_MAX;
    expect_error_len(closed, len, &l, CRM_E_LIMIT, 1, 2048, 2047, "nesting deeper than 2047 levels");
    free(closed);
}

/* CRM_JSON_DEPTH_MAX containers parse whatever they hold: jansson counts the scalar inside as one more level and
 * its own limit is 2048. One more container is our limit, not jansson's. */
static void test_depth_max_matches_jansson(void **state)
{
    crm_json_limits_t l = limits_with(1 << 20, CRM_JSON_DEPTH_MAX, 0, 0);
    size_t len;
    char *doc;

    doc = nested(CRM_JSON_DEPTH_MAX, "\"x\"", &len);
    json_decref(expect_ok_len(doc, len, &l));
    free(doc);
    doc = nested(CRM_JSON_DEPTH_MAX + 1, "\"x\"", &len);
    expect_error_len(doc, len, &l, CRM_E_LIMIT, 1, 2048, 2047, "nesting deeper than 2047 levels");
    free(doc);
}

static void test_size_limit(void **state)
{
    crm_json_limits_t l = limits_with(10, 32, 0, 0);

    expect_ok_free("[1,2,3,45]", &l);
    expect_error("[1,2,3,456]", &l, CRM_E_TOO_LARGE, 0, 0, 0, "document larger than 10 bytes");
    /* Checked before anything else: oversized garbage and oversized deep input are both just too large. */
    expect_error("xxxxxxxxxxx", &l, CRM_E_TOO_LARGE, 0, 0, 0, "document larger than 10 bytes");
    expect_error("[[[[[[[[[[[", &l, CRM_E_TOO_LARGE, 0, 0, 0, "document larger than 10 bytes");
    /* Trailing whitespace counts: the limit is on the body. */
    expect_error("[1,2,3,45] ", &l, CRM_E_TOO_LARGE, 0, 0, 0, "document larger than 10 bytes");
}

static void test_scalars_rejected(void **state)
{
    const char *msg = "top-level value must be an object or array";

    expect_error("1", NULL, CRM_E_PARSE, 1, 1, 0, msg);
    expect_error("\"[1]\"", NULL, CRM_E_PARSE, 1, 1, 0, msg);
    expect_error("true", NULL, CRM_E_PARSE, 1, 1, 0, msg);
    expect_error("null", NULL, CRM_E_PARSE, 1, 1, 0, msg);
    expect_error("-0.5e3", NULL, CRM_E_PARSE, 1, 1, 0, msg);
    expect_error("\r\n  42", NULL, CRM_E_PARSE, 2, 3, 4, msg);
    expect_error("]", NULL, CRM_E_PARSE, 1, 1, 0, msg);
}

static void test_empty(void **state)
{
    expect_error_len(NULL, 0, NULL, CRM_E_PARSE, 0, 0, 0, "empty body");
    expect_error("", NULL, CRM_E_PARSE, 0, 0, 0, "empty body");
    expect_error(" \t\r\n \n", NULL, CRM_E_PARSE, 0, 0, 0, "empty body");
}

static void test_syntax_errors(void **state)
{
    /* The missing comma after "b": 2 on line 3: jansson stops at the next token, "c", whose last character is at
     * column 12; 24 bytes were consumed by then. */
    expect_error("{\n  \"a\": 1,\n  \"b\": 2 \"c\": 3\n}", NULL, CRM_E_PARSE, 3, 12, 24,
                 "invalid JSON at line 3, column 12: '}' expected near '\"c\"'");
    expect_error("[1,]", NULL, CRM_E_PARSE, 1, 4, 4, "invalid JSON at line 1, column 4: unexpected token near ']'");
    expect_error("{\"a\" 1}", NULL, CRM_E_PARSE, 1, 6, 6, "invalid JSON at line 1, column 6: ':' expected near '1'");
    expect_error("{1:2}", NULL, CRM_E_PARSE, 1, 2, 2,
                 "invalid JSON at line 1, column 2: string or '}' expected near '1'");
    expect_error("[tru]", NULL, CRM_E_PARSE, 1, 4, 4, "invalid JSON at line 1, column 4: invalid token near 'tru'");
    /* End of input right after a newline: jansson reports column 0 of the new line. */
    expect_error("{\"a\":1\n", NULL, CRM_E_PARSE, 2, 0, 7,
                 "invalid JSON at line 2, column 0: '}' expected near end of file");
    /* A raw control character inside a string. */
    expect_error("[\"a\tb\"]", NULL, CRM_E_PARSE, 1, 3, 3,
                 "invalid JSON at line 1, column 3: control character 0x9 near '\"a'");
    /* An embedded NUL byte outside strings (jansson's text says "end of file" because its context buffer is a C
     * string that the NUL ends). */
    expect_error_len("[1,\0]", 5, NULL, CRM_E_PARSE, 1, 4, 4,
                     "invalid JSON at line 1, column 4: invalid token near end of file");
    expect_error("[99999999999999999999]", NULL, CRM_E_PARSE, 1, 21, 21,
                 "invalid JSON at line 1, column 21: too big integer near '99999999999999999999'");
}

static void test_duplicate_keys(void **state)
{
    expect_error("{\"a\":1,\"a\":2}", NULL, CRM_E_PARSE, 1, 10, 10,
                 "invalid JSON at line 1, column 10: duplicate object key near '\"a\"'");
    expect_error("[{\"x\":{\"k\":1,\"j\":2,\"k\":3}}]", NULL, CRM_E_PARSE, 1, 22, 22,
                 "invalid JSON at line 1, column 22: duplicate object key near '\"k\"'");
    /* An escape that decodes to the same key is the same key. */
    expect_error("{\"a\":1,\"\\u0061\":2}", NULL, CRM_E_PARSE, 1, 15, 15,
                 "invalid JSON at line 1, column 15: duplicate object key near '\"\\u0061\"'");
    /* The same key in different objects is fine. */
    expect_ok_free("[{\"a\":1},{\"a\":2},{\"b\":{\"a\":3}}]", NULL);
}

static void test_nul_escape_rejected(void **state)
{
    json_t *v;

    expect_error("[\"ab\\u0000cd\"]", NULL, CRM_E_PARSE, 1, 13, 13,
                 "invalid JSON at line 1, column 13: \\u0000 is not allowed without JSON_ALLOW_NUL near "
                 "'\"ab\\u0000cd\"'");
    expect_error("{\"k\\u0000\":1}", NULL, CRM_E_PARSE, 1, 10, 10,
                 "invalid JSON at line 1, column 10: NUL byte in object key not supported near '\"k\\u0000\"'");
    /* Other escapes of control characters are fine. */
    v = expect_ok("[\"\\u0001\\n\"]", NULL);
    assert_int_equal(json_string_length(json_array_get(v, 0)), 2);
    json_decref(v);
}

static void test_invalid_utf8_rejected(void **state)
{
    expect_error("[\"\xff\"]", NULL, CRM_E_PARSE, 1, 2, 2,
                 "invalid JSON at line 1, column 2: unable to decode byte 0xff near '\"'");
    /* A truncated two-byte sequence. */
    expect_error("[\"\xc3\"]", NULL, CRM_E_PARSE, 1, 2, 2,
                 "invalid JSON at line 1, column 2: unable to decode byte 0xc3 near '\"'");
    /* An overlong encoding of '/'. */
    expect_error("[\"\xc0\xaf\"]", NULL, CRM_E_PARSE, 1, 2, 2,
                 "invalid JSON at line 1, column 2: unable to decode byte 0xc0 near '\"'");
    /* A UTF-16 surrogate encoded as UTF-8. */
    expect_error("[\"\xed\xa0\x80\"]", NULL, CRM_E_PARSE, 1, 2, 2,
                 "invalid JSON at line 1, column 2: unable to decode byte 0xed near '\"'");
    /* In a key. */
    expect_error("{\"a\xfe\":1}", NULL, CRM_E_PARSE, 1, 3, 3,
                 "invalid JSON at line 1, column 3: unable to decode byte 0xfe near '\"a'");
    /* A lone surrogate escape. */
    expect_error("[\"\\ud800\"]", NULL, CRM_E_PARSE, 1, 9, 9,
                 "invalid JSON at line 1, column 9: invalid Unicode '\\uD800' near '\"\\ud800\"'");
    expect_ok_free("[\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"]", NULL);
}

/* jansson quotes the offending token; bytes outside printable ASCII become '?' so the message stays one safe line
 * whatever the client sent. */
static void test_message_is_printable_ascii(void **state)
{
    expect_error("[\xc3\xa9]", NULL, CRM_E_PARSE, 1, 2, 3,
                 "invalid JSON at line 1, column 2: invalid token near '?"
                 "?'");
}

static void test_string_limit(void **state)
{
    crm_json_limits_t l = limits_with(1 << 20, 32, 5, 0);

    expect_ok_free("[\"abcde\"]", &l);
    expect_error("[\"abcdef\"]", &l, CRM_E_LIMIT, 0, 0, 0, "string longer than 5 bytes");
    /* Decoded bytes count, not source bytes: six escapes of two UTF-8 bytes each are 4 bytes, three are 6. */
    expect_ok_free("[\"\\u00e9\\u00e9a\"]", &l);
    expect_error("[\"\\u00e9\\u00e9\\u00e9\"]", &l, CRM_E_LIMIT, 0, 0, 0, "string longer than 5 bytes");
    /* And "\n" is one byte. */
    expect_ok_free("[\"\\n\\n\\n\\n\\n\"]", &l);
    /* Keys. */
    expect_ok_free("{\"abcde\":\"abcde\"}", &l);
    expect_error("{\"abcdef\":1}", &l, CRM_E_LIMIT, 0, 0, 0, "object key longer than 5 bytes");
    /* Deep in the tree, and the first violation in document order is the one reported. */
    expect_error("{\"a\":[1,{\"b\":[\"ok\",\"toolong\"]}],\"keytoolong\":1}", &l, CRM_E_LIMIT, 0, 0, 0,
                 "string longer than 5 bytes");
    expect_error("{\"keytoolong\":1,\"a\":[1,{\"b\":[\"ok\",\"toolong\"]}]}", &l, CRM_E_LIMIT, 0, 0, 0,
                 "object key longer than 5 bytes");
}

static void test_string_limit_default_and_unlimited(void **state)
{
    size_t n = 65536;
    char *doc = malloc(n + 5);
    crm_json_limits_t l;

    assert_non_null(doc);
    memcpy(doc, "[\"", 2);
    memset(doc + 2, 'x', n + 1);
    memcpy(doc + 2 + n, "\"]", 2);
    json_decref(expect_ok_len(doc, n + 4, NULL));
    doc[2 + n] = 'x';
    memcpy(doc + 3 + n, "\"]", 2);
    expect_error_len(doc, n + 5, NULL, CRM_E_LIMIT, 0, 0, 0, "string longer than 65536 bytes");

    crm_json_limits_default(&l);
    l.max_string_bytes = 0;
    json_decref(expect_ok_len(doc, n + 5, &l));
    free(doc);
}

static void test_array_limit(void **state)
{
    crm_json_limits_t l = limits_with(1 << 20, 32, 0, 3);

    expect_ok_free("[1,2,3]", &l);
    expect_error("[1,2,3,4]", &l, CRM_E_LIMIT, 0, 0, 0, "array longer than 3 items");
    expect_ok_free("{\"a\":[1,2,3],\"b\":[[1,2,3],[],[4]]}", &l);
    expect_error("{\"a\":[1,2,3],\"b\":[[1,2,3],[],[4,5,6,7]]}", &l, CRM_E_LIMIT, 0, 0, 0, "array longer than 3 items");
    /* Objects are not arrays: four members are fine. */
    expect_ok_free("{\"a\":1,\"b\":2,\"c\":3,\"d\":4}", &l);
    l.max_array_items = 0;
    expect_ok_free("[1,2,3,4,5,6,7,8,9,10]", &l);
}

static void test_array_limit_default(void **state)
{
    size_t n = 10001, len = 0;
    char *doc = malloc(2 * n + 2);

    assert_non_null(doc);
    doc[len++] = '[';
    for (size_t i = 0; i < n; i++) {
        doc[len++] = '0';
        doc[len++] = ',';
    }
    doc[len - 1] = ']';
    expect_error_len(doc, len, NULL, CRM_E_LIMIT, 0, 0, 0, "array longer than 10000 items");
    /* Drop one item: "[0,...,0]" with 10000 zeros. */
    doc[len - 3] = ']';
    json_decref(expect_ok_len(doc, len - 2, NULL));
    free(doc);
}

static void test_invalid_arguments(void **state)
{
    crm_json_limits_t l = limits_with(100, 32, 0, 0);
    crm_json_error_t e;
    json_t *out = not_null;

    assert_int_equal(crm_json_parse("[]", 2, NULL, NULL, &e), CRM_E_INVAL);
    assert_int_equal(e.err, CRM_E_INVAL);
    assert_int_equal(crm_json_parse(NULL, 2, NULL, &out, &e), CRM_E_INVAL);
    assert_null(out);
    l.max_depth = 0;
    assert_int_equal(crm_json_parse("[]", 2, &l, &out, &e), CRM_E_INVAL);
    l.max_depth = CRM_JSON_DEPTH_MAX + 1;
    assert_int_equal(crm_json_parse("[]", 2, &l, &out, &e), CRM_E_INVAL);
    l.max_depth = CRM_JSON_DEPTH_MAX;
    l.max_bytes = 0;
    assert_int_equal(crm_json_parse("[]", 2, &l, &out, &e), CRM_E_INVAL);
    assert_string_equal(e.message, "invalid arguments");
}

/* err may be NULL; the return value still tells the kind. */
static void test_null_err(void **state)
{
    json_t *out = not_null;

    assert_int_equal(crm_json_parse("[1", 2, NULL, &out, NULL), CRM_E_PARSE);
    assert_null(out);
    assert_int_equal(crm_json_parse("[1]", 3, NULL, &out, NULL), 0);
    assert_int_equal(json_array_size(out), 1);
    json_decref(out);
}

static void test_dump(void **state)
{
    json_t *v = expect_ok("{ \"a\" : [ 1 , \"x/\\u00e9\" , null ] , \"b\" : { } }", NULL);
    const char *expected = "{\"a\":[1,\"x/\xc3\xa9\",null],\"b\":{}}";
    size_t need = strlen(expected), len = 99;
    char buf[64];

    memset(buf, '#', sizeof(buf));
    assert_int_equal(crm_json_dump(v, buf, sizeof(buf), &len), 0);
    assert_int_equal(len, need);
    assert_memory_equal(buf, expected, need);
    /* Not NUL-terminated. */
    assert_int_equal(buf[need], '#');

    /* Exactly the size fits. */
    len = 0;
    assert_int_equal(crm_json_dump(v, buf, need, &len), 0);
    assert_int_equal(len, need);
    assert_memory_equal(buf, expected, need);

    /* One byte short: too large, and *len says how much is needed. */
    len = 0;
    assert_int_equal(crm_json_dump(v, buf, need - 1, &len), CRM_E_TOO_LARGE);
    assert_int_equal(len, need);
    len = 0;
    assert_int_equal(crm_json_dump(v, buf, 1, &len), CRM_E_TOO_LARGE);
    assert_int_equal(len, need);
    len = 0;
    assert_int_equal(crm_json_dump(v, NULL, 0, &len), CRM_E_TOO_LARGE);
    assert_int_equal(len, need);

    expect_dump(v, expected);
    json_decref(v);
}

static void test_dump_scalars_and_errors(void **state)
{
    json_t *s = json_string("q\"\n");
    json_t *bad = json_string_nocheck("\xff");
    json_t *i = json_integer(-42);
    size_t len = 99;
    char buf[16];

    expect_dump(s, "\"q\\\"\\n\"");
    expect_dump(i, "-42");

    assert_int_equal(crm_json_dump(NULL, buf, sizeof(buf), &len), CRM_E_INVAL);
    assert_int_equal(len, 0);
    assert_int_equal(crm_json_dump(i, buf, sizeof(buf), NULL), CRM_E_INVAL);
    assert_int_equal(crm_json_dump(i, NULL, 4, &len), CRM_E_INVAL);
    len = 99;
    assert_int_equal(crm_json_dump(bad, buf, sizeof(buf), &len), CRM_E_INVAL);
    assert_int_equal(len, 0);

    len = 99;
    assert_null(crm_json_dump_alloc(bad, &len));
    assert_int_equal(len, 0);
    assert_null(crm_json_dump_alloc(NULL, NULL));

    {
        char *out = crm_json_dump_alloc(i, NULL);
        assert_string_equal(out, "-42");
        free(out);
    }

    json_decref(s);
    json_decref(bad);
    json_decref(i);
}

/* A parsed document dumps back to its compact form byte for byte. */
static void test_round_trip(void **state)
{
    const char *doc = "{\"id\":\"9b2f\",\"tags\":[\"a\",\"b\"],\"n\":-3,\"ok\":true,\"nested\":{\"z\":[],\"a\":{}}}";
    json_t *v = expect_ok(doc, NULL);

    expect_dump(v, doc);
    json_decref(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limits_default),
        cmocka_unit_test(test_valid_object),
        cmocka_unit_test(test_valid_array_with_whitespace),
        cmocka_unit_test(test_not_nul_terminated),
        cmocka_unit_test(test_key_order_preserved),
        cmocka_unit_test(test_depth_exact_and_one_over),
        cmocka_unit_test(test_depth_position_multiline),
        cmocka_unit_test(test_depth_ignores_brackets_in_strings),
        cmocka_unit_test(test_depth_stops_after_top_level),
        cmocka_unit_test(test_depth_checked_before_syntax),
        cmocka_unit_test(test_very_deep_document),
        cmocka_unit_test(test_depth_max_matches_jansson),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_scalars_rejected),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_nul_escape_rejected),
        cmocka_unit_test(test_invalid_utf8_rejected),
        cmocka_unit_test(test_message_is_printable_ascii),
        cmocka_unit_test(test_string_limit),
        cmocka_unit_test(test_string_limit_default_and_unlimited),
        cmocka_unit_test(test_array_limit),
        cmocka_unit_test(test_array_limit_default),
        cmocka_unit_test(test_invalid_arguments),
        cmocka_unit_test(test_null_err),
        cmocka_unit_test(test_dump),
        cmocka_unit_test(test_dump_scalars_and_errors),
        cmocka_unit_test(test_round_trip),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
