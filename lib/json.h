/*
 * JSON request-body parsing with limits, on top of jansson.
 *
 * A request body is untrusted: it may be huge, nested deep enough to exhaust a recursive parser's stack, hold
 * megabyte strings or arrays with millions of items. crm_json_parse enforces the limits of DESIGN.md §5 (body
 * size, depth, string length, array length) and answers every violation with an error kind that maps to the HTTP
 * status the client gets (CRM_E_TOO_LARGE → 413, CRM_E_LIMIT and CRM_E_PARSE → 400) and a one-line message that is
 * safe to put in a problem+json detail.
 *
 * The order of the checks, and why:
 *   1. size: len > max_bytes fails before a single byte is looked at, so an oversized body costs nothing;
 *   2. a linear pre-scan of the bytes finds the first significant byte (empty body, bare scalar) and counts
 *      '[' / '{' nesting outside strings; a document deeper than max_depth fails here, so deep input never
 *      reaches jansson's recursive descent parser;
 *   3. jansson (json_loadb with JSON_REJECT_DUPLICATES, without JSON_ALLOW_NUL and JSON_DECODE_ANY) checks the
 *      syntax, UTF-8 validity, duplicate keys and "\u0000";
 *   4. a walk of the parsed tree enforces max_string_bytes (values and object keys) and max_array_items.
 * Strings and arrays are checked after parsing, so a body within max_bytes is always parsed in full first. The
 * tree's memory is bounded by max_bytes times jansson's per-value overhead, which is large for tiny values:
 * measured with jansson 2.14 on x86-64, 1 MiB of "[{},{},...]" peaks at about 80 MB and 130 ms of CPU before the
 * array limit rejects it. Choose max_bytes per route with that factor in mind.
 *
 * Object keys keep their insertion order: jansson has done so unconditionally since 2.8 (JSON_PRESERVE_ORDER is
 * a no-op in 2.14), so a parsed document dumps with its keys in the order the client sent them, and an object
 * built with json_object_set* dumps in the order of the calls.
 *
 * All functions are reentrant and thread-safe for distinct arguments; they allocate only through jansson and
 * malloc and never block, with one exception inside jansson: the first object it ever creates seeds its hash
 * function by reading /dev/urandom. The process should call json_object_seed(0) once at start-up, before the loop
 * runs, so that read never happens on the loop thread (DESIGN.md §3, invariant 1).
 */
#ifndef CRM_JSON_H
#define CRM_JSON_H

#include <jansson.h>
#include <stddef.h>

/* jansson 2.14 refuses values nested deeper than its compile-time JSON_PARSER_MAX_DEPTH (2048), and counts a
 * scalar inside the innermost container as one more level. 2047 containers therefore always parse, whatever they
 * hold; a larger max_depth would let jansson's own limit answer first with a different error. */
#define CRM_JSON_DEPTH_MAX 2047

typedef struct {
    size_t max_bytes;        /* whole document, 1 or more; over it → CRM_E_TOO_LARGE before any parsing */
    size_t max_depth;        /* nesting of objects and arrays, 1..CRM_JSON_DEPTH_MAX; the top-level container is
                                depth 1; over it → CRM_E_LIMIT */
    size_t max_string_bytes; /* longest string value or object key in decoded bytes; 0 = unlimited; over it →
                                CRM_E_LIMIT */
    size_t max_array_items;  /* longest array; 0 = unlimited; over it → CRM_E_LIMIT */
} crm_json_limits_t;

/* Fills *l with the defaults: 1 MiB, depth 32, strings 65536 bytes, arrays 10000 items. */
void crm_json_limits_default(crm_json_limits_t *l);

typedef struct {
    int err; /* 0, CRM_E_TOO_LARGE, CRM_E_LIMIT, CRM_E_PARSE, or CRM_E_NOMEM / CRM_E_INVAL (see crm_json_parse) */
    /* Where the document broke or exceeded a limit; all three are 0 when not applicable (size, string and array
     * limits, empty body). line is 1-based; column is 1-based and counts Unicode characters, not bytes, like
     * jansson (jansson reports column 0 when the error is at the very start of a line, e.g. end of input after a
     * final newline). For the depth limit and a bare scalar, position is the 0-based byte offset of the offending
     * byte; for syntax errors it is jansson's position, the number of bytes it consumed, which is the offset just
     * past the token it was looking at. */
    size_t line, column;
    size_t position;
    /* One line of printable ASCII, NUL-terminated, safe to return to the client: bytes outside 0x20..0x7e in
     * jansson's text (which may quote up to 20 bytes of the offending token) are replaced by '?'. Empty on
     * success. */
    char message[160];
} crm_json_error_t;

/*
 * Parses buf[0..len) as one JSON object or array under limits (NULL means crm_json_limits_default).
 *
 * On success returns 0, sets *out to a new reference owned by the caller (release it with json_decref) and
 * err->err to 0. On failure returns the error kind, sets *out to NULL and fills *err:
 *   CRM_E_TOO_LARGE  len > max_bytes: "document larger than 1048576 bytes";
 *   CRM_E_PARSE      "empty body" (len 0 or only JSON whitespace), "top-level value must be an object or array",
 *                    or jansson's verdict: "invalid JSON at line 3, column 14: '}' expected near '\"c\"'" — this
 *                    covers syntax errors, invalid UTF-8, duplicate keys and "\u0000" in strings;
 *   CRM_E_LIMIT      "nesting deeper than 32 levels" (with the position of the first bracket too deep),
 *                    "string longer than 65536 bytes", "object key longer than 65536 bytes",
 *                    "array longer than 10000 items";
 *   CRM_E_NOMEM      jansson ran out of memory;
 *   CRM_E_INVAL      out is NULL, buf is NULL with len > 0, or a limit is out of range (max_bytes 0, max_depth 0
 *                    or above CRM_JSON_DEPTH_MAX) — a programming error, not the client's.
 * err may be NULL when the caller needs only the return value. buf need not be NUL-terminated and may contain
 * NUL bytes (which are a syntax error). Runs in time linear in len.
 */
int crm_json_parse(const char *buf, size_t len, const crm_json_limits_t *limits, json_t **out, crm_json_error_t *err);

/*
 * Serialises v compactly (JSON_COMPACT, no whitespace; any value, not only objects and arrays) into buf[0..cap).
 * The output is not NUL-terminated. Returns 0 and sets *len to the bytes written; CRM_E_TOO_LARGE when the output
 * does not fit, with *len set to the size needed (buf's contents are then unspecified); CRM_E_INVAL when v or len
 * is NULL, buf is NULL with cap > 0, or jansson cannot encode v (a string holding invalid UTF-8 created with a
 * *_nocheck function, a reference cycle), with *len set to 0. buf may be NULL with cap 0 to ask for the size.
 */
int crm_json_dump(const json_t *v, char *buf, size_t cap, size_t *len);

/*
 * Serialises v compactly like crm_json_dump into a new NUL-terminated buffer from malloc, which the caller frees
 * with free(). Sets *len (when len is not NULL) to the length without the terminator. Returns NULL when v cannot
 * be encoded or memory runs out.
 */
char *crm_json_dump_alloc(const json_t *v, size_t *len);

#endif
