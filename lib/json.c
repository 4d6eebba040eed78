#include "json.h"

#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every dump is compact: responses are read by programs, and whitespace only costs bytes. JSON_ENCODE_ANY lets a
 * caller serialise a single value (a string for a header, a number) as well as a whole document. */
#define DUMP_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY)

void crm_json_limits_default(crm_json_limits_t *l)
{
    l->max_bytes = 1024 * 1024;
    l->max_depth = 32;
    l->max_string_bytes = 65536;
    l->max_array_items = 10000;
}

/* Fills *err and returns kind, so that every failure path is a single `return fail(...)`. The message is made one
 * line of printable ASCII because it ends up in problem+json responses and in logs, and jansson's text may quote
 * bytes of the client's input. */
__attribute__((format(printf, 6, 7))) static int fail(crm_json_error_t *err, int kind, size_t line, size_t column,
                                                      size_t position, const char *fmt, ...)
{
    va_list ap;

    err->err = kind;
    err->line = line;
    err->column = column;
    err->position = position;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    for (char *p = err->message; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (c < 0x20 || c > 0x7e)
            *p = '?';
    }
    return kind;
}

static int is_json_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/*
 * One pass over the bytes, before jansson sees them. It rejects an empty body and a bare scalar with clearer
 * messages than jansson's, and it bounds the nesting depth: jansson's parser recurses once per level up to a
 * compile-time 2048, so a deep document must be refused here, by a loop, rather than by the recursion itself.
 *
 * Brackets count only outside strings; inside a string a backslash escapes the next byte, so "\"" does not end it.
 * For any prefix of the input that is valid JSON this tracks exactly the nesting jansson would reach, and jansson
 * stops at the first invalid byte, so jansson never nests deeper than the count checked here. The scan stops when
 * the top-level container closes: jansson reads only one more token after it ("end of file expected").
 *
 * Line and column are counted like jansson counts them (column in Unicode characters: UTF-8 continuation bytes do
 * not advance it), so the positions this reports and the ones jansson reports agree.
 */
static int prescan(const char *buf, size_t len, size_t max_depth, crm_json_error_t *err)
{
    size_t line = 1, column = 0, depth = 0, i = 0;
    int in_string = 0, escaped = 0;

    for (; i < len && is_json_space((unsigned char)buf[i]); i++) {
        if (buf[i] == '\n') {
            line++;
            column = 0;
        } else {
            column++;
        }
    }
    if (i == len)
        return fail(err, CRM_E_PARSE, 0, 0, 0, "empty body");
    if (buf[i] != '[' && buf[i] != '{')
        return fail(err, CRM_E_PARSE, line, column + 1, i, "top-level value must be an object or array");

    for (; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];

        if (c == '\n') {
            line++;
            column = 0;
        } else if ((c & 0xc0) != 0x80) {
            column++;
        }

        if (in_string) {
            if (escaped)
                escaped = 0;
            else if (c == '\\')
                escaped = 1;
            else if (c == '"')
                in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '[' || c == '{') {
            depth++;
            if (depth > max_depth)
                return fail(err, CRM_E_LIMIT, line, column, i, "nesting deeper than %zu levels", max_depth);
        } else if (c == ']' || c == '}') {
            depth--;
            if (depth == 0)
                break;
        }
    }
    return 0;
}

/*
 * Enforces the string and array limits on the parsed tree, in document order, so the first violation in the text
 * is the one reported. The recursion is bounded: prescan guaranteed at most max_depth (<= CRM_JSON_DEPTH_MAX)
 * levels of containers.
 */
static int walk(json_t *v, const crm_json_limits_t *l, crm_json_error_t *err)
{
    const char *key;
    size_t key_len, index;
    json_t *child;
    int rc;

    switch (json_typeof(v)) {
    case JSON_STRING:
        if (l->max_string_bytes != 0 && json_string_length(v) > l->max_string_bytes)
            return fail(err, CRM_E_LIMIT, 0, 0, 0, "string longer than %zu bytes", l->max_string_bytes);
        return 0;
    case JSON_ARRAY:
        if (l->max_array_items != 0 && json_array_size(v) > l->max_array_items)
            return fail(err, CRM_E_LIMIT, 0, 0, 0, "array longer than %zu items", l->max_array_items);
        json_array_foreach(v, index, child)
        {
            if ((rc = walk(child, l, err)) != 0)
                return rc;
        }
        return 0;
    case JSON_OBJECT:
        json_object_keylen_foreach(v, key, key_len, child)
        {
            if (l->max_string_bytes != 0 && key_len > l->max_string_bytes)
                return fail(err, CRM_E_LIMIT, 0, 0, 0, "object key longer than %zu bytes", l->max_string_bytes);
            if ((rc = walk(child, l, err)) != 0)
                return rc;
        }
        return 0;
    default:
        return 0;
    }
}

/* jansson's line and column are ints, -1 when it has no position; the API reports 0 for "not applicable". */
static size_t position_field(int v)
{
    return v < 0 ? 0 : (size_t)v;
}

int crm_json_parse(const char *buf, size_t len, const crm_json_limits_t *limits, json_t **out, crm_json_error_t *err)
{
    crm_json_limits_t defaults;
    crm_json_error_t scratch;
    json_error_t jerr;
    json_t *doc = NULL;
    int rc;

    if (err == NULL)
        err = &scratch;
    memset(err, 0, sizeof(*err));
    if (out == NULL)
        return fail(err, CRM_E_INVAL, 0, 0, 0, "invalid arguments");
    *out = NULL;
    if (limits == NULL) {
        crm_json_limits_default(&defaults);
        limits = &defaults;
    }
    if ((buf == NULL && len > 0) || limits->max_bytes == 0 || limits->max_depth == 0 ||
        limits->max_depth > CRM_JSON_DEPTH_MAX)
        return fail(err, CRM_E_INVAL, 0, 0, 0, "invalid arguments");

    if (len > limits->max_bytes)
        return fail(err, CRM_E_TOO_LARGE, 0, 0, 0, "document larger than %zu bytes", limits->max_bytes);
    if ((rc = prescan(buf, len, limits->max_depth, err)) != 0)
        return rc;

    /* JSON_DECODE_ANY stays off (prescan already demands a container) and JSON_ALLOW_NUL stays off, because a NUL
     * inside a string would silently truncate it wherever it is later used as a C string. */
    doc = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        /* jansson's parser reports every syntax problem with a text; a failure without one is an allocation
         * failure inside jansson (json_object() or json_array() returned NULL). */
        if (json_error_code(&jerr) == json_error_out_of_memory || jerr.text[0] == '\0')
            return fail(err, CRM_E_NOMEM, 0, 0, 0, "out of memory");
        return fail(err, CRM_E_PARSE, position_field(jerr.line), position_field(jerr.column),
                    position_field(jerr.position), "invalid JSON at line %d, column %d: %s", jerr.line, jerr.column,
                    jerr.text);
    }

    if ((limits->max_string_bytes != 0 || limits->max_array_items != 0) && (rc = walk(doc, limits, err)) != 0) {
        json_decref(doc);
        return rc;
    }

    *out = doc;
    return 0;
}

int crm_json_dump(const json_t *v, char *buf, size_t cap, size_t *len)
{
    char none;
    size_t need;

    if (len == NULL)
        return CRM_E_INVAL;
    *len = 0;
    if (v == NULL || (buf == NULL && cap > 0))
        return CRM_E_INVAL;
    /* jansson computes &buf[used] even when nothing is copied; give it a real address when asked only for the
     * size. */
    if (buf == NULL)
        buf = &none;

    /* json_dumpb returns the full size the output needs even when it does not fit, and 0 only on failure (no
     * encoding is empty). */
    need = json_dumpb(v, buf, cap, DUMP_FLAGS);
    if (need == 0)
        return CRM_E_INVAL;
    *len = need;
    if (need > cap)
        return CRM_E_TOO_LARGE;
    return 0;
}

char *crm_json_dump_alloc(const json_t *v, size_t *len)
{
    char *out = NULL;
    size_t need, got;

    if (len != NULL)
        *len = 0;
    /* Sizing first and then writing into our own malloc'd buffer (rather than json_dumps) guarantees the caller
     * can release the result with free() even if jansson's allocator was replaced with json_set_alloc_funcs. */
    if (crm_json_dump(v, NULL, 0, &need) != CRM_E_TOO_LARGE)
        goto error;
    out = malloc(need + 1);
    if (out == NULL)
        goto error;
    if (crm_json_dump(v, out, need, &got) != 0 || got != need)
        goto error;
    out[need] = '\0';
    if (len != NULL)
        *len = need;
    return out;

error:
    free(out);
    return NULL;
}
