#include "mail/address.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "err.h"
#include "mail/rfc2047.h"

#define NONE SIZE_MAX

void crm_mail_address_limits_default(crm_mail_address_limits_t *l)
{
    l->max_bytes = 256 * 1024;
    l->max_addresses = 5000;
    l->max_name_bytes = 1024;
    l->max_comment_depth = 16;
}

/* ---- Lexer ---------------------------------------------------------------------------------------------------- */

typedef enum {
    T_EOF,
    T_ATOM,    /* a run of atext and 8-bit bytes */
    T_QSTR,    /* a quoted string, quotes included */
    T_DLIT,    /* a domain literal, brackets included */
    T_SPECIAL, /* any other single byte: < > : ; @ , . ] \ ) controls, NUL, DEL */
    T_BAD,     /* an unterminated quoted string, comment or domain literal; it runs to the end of the input */
} kind_t;

typedef struct {
    kind_t kind;
    size_t start, end;
    int ws_before; /* whitespace or a comment came before the token */
    unsigned char c;
} tok_t;

/* A mailbox while it is being parsed: offsets into the string arena, which moves as it grows. */
typedef struct {
    size_t name, local, domain, addr, group;
} item_t;

typedef struct {
    const char *in;
    size_t len;
    size_t pos;
    crm_mail_address_limits_t lim;
    int fatal; /* the error that ends the parse, or 0 */
    /* The content of the first comment of the current entry that holds more than whitespace and parentheses: the
     * display name of last resort. Reset after each entry is classified, so only the parse of the entry counts. */
    size_t cmt_start, cmt_end;
    char *scratch; /* len + 1 bytes: the raw text of a phrase, comment, local part or domain */
    char *dec;     /* CRM_RFC2047_DECODE_MAX(len) bytes: a decoded name */
    item_t *items;
    size_t nitems, items_cap;
    char *str; /* the string arena; offset 0 holds "" */
    size_t str_len, str_cap, str_max;
    size_t invalid, groups;
} parser_t;

static int is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int is_atext(unsigned char c)
{
    if (c >= 0x80)
        return 1;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* Skips the comment at p->pos. Returns 1 when it is closed, 0 when the input ends first (or the depth limit is
 * hit, with p->fatal set). */
static int skip_comment(parser_t *p)
{
    const unsigned char *in = (const unsigned char *)p->in;
    size_t start = p->pos, i = p->pos, depth = 0;
    int content = 0;
    while (i < p->len) {
        unsigned char c = in[i];
        if (c == '\\') {
            content = 1;
            i += 2;
            continue;
        }
        if (c == '(') {
            if (++depth > p->lim.max_comment_depth) {
                p->fatal = CRM_E_LIMIT;
                return 0;
            }
        } else if (c == ')') {
            if (--depth == 0) {
                if (p->cmt_start == NONE && content) {
                    p->cmt_start = start + 1;
                    p->cmt_end = i;
                }
                p->pos = i + 1;
                return 1;
            }
        } else if (!is_ws(c)) {
            content = 1;
        }
        ++i;
    }
    return 0;
}

/* Scans a quoted string or domain literal opened at p->in[start]; returns the offset past its closing byte, or
 * NONE when the input ends first. */
static size_t scan_quoted(const parser_t *p, size_t start, char close)
{
    size_t i = start + 1;
    while (i < p->len) {
        if (p->in[i] == '\\')
            i += 2;
        else if (p->in[i] == close)
            return i + 1;
        else
            ++i;
    }
    return NONE;
}

static void lex(parser_t *p, tok_t *t)
{
    t->ws_before = 0;
    t->c = 0;
    for (;;) {
        if (p->fatal || p->pos >= p->len) {
            t->kind = T_EOF;
            t->start = t->end = p->len;
            return;
        }
        unsigned char c = (unsigned char)p->in[p->pos];
        if (is_ws(c)) {
            ++p->pos;
            t->ws_before = 1;
        } else if (c == '(') {
            size_t start = p->pos;
            if (!skip_comment(p)) {
                t->kind = p->fatal ? T_EOF : T_BAD;
                t->start = start;
                t->end = p->pos = p->len;
                return;
            }
            t->ws_before = 1;
        } else {
            break;
        }
    }
    size_t s = p->pos;
    unsigned char c = (unsigned char)p->in[s];
    t->start = s;
    if (c == '"' || c == '[') {
        size_t e = scan_quoted(p, s, c == '"' ? '"' : ']');
        t->kind = e == NONE ? T_BAD : c == '"' ? T_QSTR : T_DLIT;
        t->end = e == NONE ? p->len : e;
    } else if (is_atext(c)) {
        size_t e = s + 1;
        while (e < p->len && is_atext((unsigned char)p->in[e]))
            ++e;
        t->kind = T_ATOM;
        t->end = e;
    } else {
        t->kind = T_SPECIAL;
        t->c = c;
        t->end = s + 1;
    }
    p->pos = t->end;
}

/* Consumes the next token if it is the special character c. */
static int take(parser_t *p, unsigned char c)
{
    size_t save = p->pos;
    tok_t t;
    lex(p, &t);
    if (t.kind == T_SPECIAL && t.c == c)
        return 1;
    p->pos = save;
    return 0;
}

/* Copies the inside of a quoted string, domain literal or comment, in[s..e), unescaping quoted-pairs and dropping
 * CR and LF (unfolding). Returns the number of bytes written. */
static size_t unquote(const char *in, size_t s, size_t e, char *out)
{
    size_t n = 0;
    for (size_t i = s; i < e; ++i) {
        char c = in[i];
        if (c == '\\' && i + 1 < e)
            c = in[++i];
        else if (c == '\r' || c == '\n')
            continue;
        out[n++] = c;
    }
    return n;
}

/* ---- Output --------------------------------------------------------------------------------------------------- */

/* Makes room for n more bytes in the arena; sets p->fatal and returns 0 when it cannot. */
static int reserve(parser_t *p, size_t n)
{
    if (n <= p->str_cap - p->str_len)
        return 1;
    if (n > p->str_max - p->str_len) {
        /* Cannot happen within the bound computed in crm_mail_address_parse; kept as the buffer's hard limit. */
        p->fatal = CRM_E_LIMIT;
        return 0;
    }
    size_t cap = p->str_cap;
    while (n > cap - p->str_len)
        cap = cap > p->str_max / 2 ? p->str_max : cap * 2;
    char *grown = realloc(p->str, cap);
    if (grown == NULL) {
        p->fatal = CRM_E_NOMEM;
        return 0;
    }
    p->str = grown;
    p->str_cap = cap;
    return 1;
}

/* Appends s[0..n) and a NUL to the arena; returns its offset, or NONE with p->fatal set. */
static size_t put_str(parser_t *p, const char *s, size_t n)
{
    if (!reserve(p, n + 1))
        return NONE;
    size_t off = p->str_len;
    memcpy(p->str + off, s, n);
    p->str[off + n] = '\0';
    p->str_len += n + 1;
    return off;
}

/* Decodes raw[0..n) (RFC 2047), trims it and stores it as a name; returns its offset, or NONE with p->fatal set. */
static size_t put_name(parser_t *p, const char *raw, size_t n)
{
    size_t dlen = 0;
    /* n <= len, so the buffer is always large enough. */
    crm_rfc2047_decode(raw, n, p->dec, CRM_RFC2047_DECODE_MAX(p->len), &dlen);
    const char *d = p->dec;
    while (dlen > 0 && (*d == ' ' || *d == '\t')) {
        ++d;
        --dlen;
    }
    while (dlen > 0 && (d[dlen - 1] == ' ' || d[dlen - 1] == '\t'))
        --dlen;
    if (dlen == 0)
        return 0;
    if (dlen > p->lim.max_name_bytes) {
        p->fatal = CRM_E_LIMIT;
        return NONE;
    }
    return put_str(p, d, dlen);
}

/* ---- Grammar -------------------------------------------------------------------------------------------------- */

/* Reads a display name or group name up to the special character stop, which the caller knows is there, and
 * consumes it. Leniently, every token counts as text. Returns the name's offset, or NONE with p->fatal set. */
static size_t parse_phrase(parser_t *p, unsigned char stop)
{
    size_t r = 0;
    for (;;) {
        tok_t t;
        lex(p, &t);
        if (t.kind == T_EOF)
            return NONE; /* only after a fatal error: the classification saw `stop` */
        if (t.kind == T_SPECIAL && t.c == stop)
            break;
        if (t.ws_before && r > 0)
            p->scratch[r++] = ' ';
        if (t.kind == T_QSTR) {
            r += unquote(p->in, t.start + 1, t.end - 1, p->scratch + r);
        } else {
            memcpy(p->scratch + r, p->in + t.start, t.end - t.start);
            r += t.end - t.start;
        }
    }
    return put_name(p, p->scratch, r);
}

/* A local part or domain must be one line of text: no control characters, and well-formed UTF-8 (RFC 6532). */
static int clean_text(const char *s, size_t n)
{
    for (size_t i = 0; i < n; ++i) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7F)
            return 0;
    }
    return crm_rfc2047_utf8_valid(s, n);
}

static int is_dot_atom(const char *s, size_t n)
{
    if (n == 0 || s[0] == '.' || s[n - 1] == '.')
        return 0;
    for (size_t i = 0; i < n; ++i) {
        if (s[i] == '.') {
            if (s[i - 1] == '.')
                return 0;
        } else if (!is_atext((unsigned char)s[i])) {
            return 0;
        }
    }
    return 1;
}

/* Parses local-part "@" into the arena in its simplest form; returns its offset, or NONE (entry invalid, or
 * p->fatal set). A token that does not fit is left unconsumed. */
static size_t parse_local(parser_t *p)
{
    char *s = p->scratch;
    size_t r = 0;
    for (;;) {
        size_t save = p->pos;
        tok_t t;
        lex(p, &t);
        if (t.kind == T_ATOM) {
            memcpy(s + r, p->in + t.start, t.end - t.start);
            r += t.end - t.start;
        } else if (t.kind == T_QSTR) {
            r += unquote(p->in, t.start + 1, t.end - 1, s + r);
        } else {
            p->pos = save;
            return NONE;
        }
        if (!take(p, '.'))
            break;
        s[r++] = '.';
    }
    if (!take(p, '@') || !clean_text(s, r))
        return NONE;
    if (is_dot_atom(s, r))
        return r <= CRM_MAIL_LOCAL_MAX ? put_str(p, s, r) : NONE;
    size_t quoted = r + 2;
    for (size_t i = 0; i < r; ++i)
        quoted += s[i] == '"' || s[i] == '\\';
    if (quoted > CRM_MAIL_LOCAL_MAX || !reserve(p, quoted + 1))
        return NONE;
    size_t off = p->str_len;
    char *o = p->str + off;
    *o++ = '"';
    for (size_t i = 0; i < r; ++i) {
        if (s[i] == '"' || s[i] == '\\')
            *o++ = '\\';
        *o++ = s[i];
    }
    *o++ = '"';
    *o = '\0';
    p->str_len += quoted + 1;
    return off;
}

static void lower_ascii(char *s, size_t n)
{
    for (size_t i = 0; i < n; ++i) {
        if (s[i] >= 'A' && s[i] <= 'Z')
            s[i] = (char)(s[i] - 'A' + 'a');
    }
}

/* Parses a domain (dot-atom with CFWS around the dots, or a domain literal) into p->scratch, lower-cased and
 * checked; returns its length, or NONE. A token that does not fit is left unconsumed. */
static size_t parse_domain(parser_t *p)
{
    char *s = p->scratch;
    size_t save = p->pos;
    tok_t t;
    lex(p, &t);
    if (t.kind == T_DLIT) {
        size_t n = unquote(p->in, t.start + 1, t.end - 1, s + 1);
        size_t k = 0;
        for (size_t i = 0; i < n; ++i) {
            unsigned char c = (unsigned char)s[1 + i];
            if (c == ' ' || c == '\t')
                continue;
            if (c < 33 || c > 126 || c == '[' || c == ']' || c == '\\')
                return NONE;
            s[1 + k++] = (char)c;
        }
        if (k == 0 || k + 2 > CRM_MAIL_DOMAIN_MAX)
            return NONE;
        s[0] = '[';
        s[k + 1] = ']';
        lower_ascii(s, k + 2);
        return k + 2;
    }
    size_t r = 0;
    for (;;) {
        if (t.kind != T_ATOM) {
            p->pos = save;
            return NONE;
        }
        size_t n = t.end - t.start;
        if (n > CRM_MAIL_LABEL_MAX)
            return NONE;
        memcpy(s + r, p->in + t.start, n);
        r += n;
        if (!take(p, '.'))
            break;
        s[r++] = '.';
        save = p->pos;
        lex(p, &t);
    }
    if (r > CRM_MAIL_DOMAIN_MAX || !crm_rfc2047_utf8_valid(s, r))
        return NONE;
    lower_ascii(s, r);
    return r;
}

/* Parses an addr-spec into it->local, it->domain and it->addr. Returns 1, or 0 (entry invalid, or p->fatal set). */
static int parse_addr_spec(parser_t *p, item_t *it)
{
    it->local = parse_local(p);
    if (it->local == NONE)
        return 0;
    size_t dlen = parse_domain(p);
    if (dlen == NONE)
        return 0;
    it->domain = put_str(p, p->scratch, dlen);
    if (it->domain == NONE)
        return 0;
    size_t llen = strlen(p->str + it->local);
    if (llen + 1 + dlen > CRM_MAIL_ADDR_MAX || !reserve(p, llen + 1 + dlen + 1))
        return 0;
    it->addr = p->str_len;
    char *o = p->str + it->addr;
    memcpy(o, p->str + it->local, llen);
    o[llen] = '@';
    memcpy(o + llen + 1, p->str + it->domain, dlen + 1);
    p->str_len += llen + 1 + dlen + 1;
    return 1;
}

/* The rest of a name-addr after the display name and "<": an optional obsolete route, the addr-spec, ">". */
static int parse_angle_addr(parser_t *p, item_t *it)
{
    size_t save = p->pos;
    tok_t t;
    lex(p, &t);
    p->pos = save;
    if (t.kind == T_SPECIAL && (t.c == '@' || t.c == ',')) {
        /* obs-route: *(CFWS / ",") "@" domain *("," [CFWS] ["@" domain]) ":"; the route itself is dropped. */
        int domains = 0;
        for (;;) {
            if (take(p, ',')) {
                continue;
            } else if (take(p, '@')) {
                if (parse_domain(p) == NONE)
                    return 0;
                ++domains;
            } else if (domains > 0 && take(p, ':')) {
                break;
            } else {
                return 0;
            }
        }
    }
    return parse_addr_spec(p, it) && take(p, '>');
}

/* Consumes tokens up to and including the next "," or ";"; returns it, or 0 at the end of the input. */
static unsigned char skip_entry(parser_t *p)
{
    for (;;) {
        tok_t t;
        lex(p, &t);
        if (t.kind == T_EOF)
            return 0;
        if (t.kind == T_SPECIAL && (t.c == ',' || t.c == ';'))
            return t.c;
    }
}

/* Looks ahead, without consuming anything, for the first "<", ":", "," or ";" (0: end of input) and counts the
 * tokens before it. */
static unsigned char classify(parser_t *p, size_t *ntok)
{
    size_t save = p->pos;
    unsigned char stop = 0;
    *ntok = 0;
    for (;;) {
        tok_t t;
        lex(p, &t);
        if (t.kind == T_EOF)
            break;
        if (t.kind == T_SPECIAL && t.c != '\0' && strchr("<:,;", t.c) != NULL) {
            stop = t.c;
            break;
        }
        ++*ntok;
    }
    p->pos = save;
    return stop;
}

static int add_item(parser_t *p, const item_t *it)
{
    if (p->nitems == p->lim.max_addresses) {
        p->fatal = CRM_E_LIMIT;
        return 0;
    }
    if (p->nitems == p->items_cap) {
        /* The cap is max_addresses, so the array never grows past it. */
        size_t cap = p->items_cap ? p->items_cap * 2 : 8;
        if (cap > p->lim.max_addresses)
            cap = p->lim.max_addresses;
        item_t *grown = realloc(p->items, cap * sizeof(*grown));
        if (grown == NULL) {
            p->fatal = CRM_E_NOMEM;
            return 0;
        }
        p->items = grown;
        p->items_cap = cap;
    }
    p->items[p->nitems++] = *it;
    return 1;
}

/* Parses one mailbox entry ending at a "," or ";" or the end; returns the delimiter that ended it (0: the end). */
static unsigned char parse_mailbox(parser_t *p, unsigned char stop, size_t group)
{
    size_t mark = p->str_len;
    item_t it = {.name = 0, .group = group};
    unsigned char delim = 0;
    int ok;
    if (stop == '<') {
        it.name = parse_phrase(p, '<');
        ok = it.name != NONE && parse_angle_addr(p, &it);
        /* Text after the ">" cannot change which address was meant. */
        if (ok)
            delim = skip_entry(p);
    } else {
        ok = parse_addr_spec(p, &it);
        if (ok) {
            size_t save = p->pos;
            tok_t t;
            lex(p, &t);
            if (t.kind == T_SPECIAL && (t.c == ',' || t.c == ';'))
                delim = t.c;
            else if (t.kind != T_EOF)
                ok = 0;
            if (!ok)
                p->pos = save;
        }
    }
    if (ok && it.name == 0 && p->cmt_start != NONE) {
        size_t n = unquote(p->in, p->cmt_start, p->cmt_end, p->scratch);
        it.name = put_name(p, p->scratch, n);
        ok = it.name != NONE;
    }
    if (ok)
        ok = add_item(p, &it);
    if (!ok) {
        p->str_len = mark;
        if (p->fatal)
            return 0;
        ++p->invalid;
        delim = skip_entry(p);
    }
    return delim;
}

static void parse_list(parser_t *p)
{
    size_t group = NONE;
    while (!p->fatal) {
        size_t ntok;
        unsigned char stop = classify(p, &ntok);
        if (p->fatal)
            break;
        p->cmt_start = NONE;
        unsigned char delim;
        if (stop == ':' && group == NONE) {
            group = parse_phrase(p, ':');
            ++p->groups;
            continue;
        } else if (stop == ':') {
            /* Groups do not nest. */
            ++p->invalid;
            delim = skip_entry(p);
        } else if (ntok == 0 && stop != '<') {
            if (stop == 0)
                break;
            delim = skip_entry(p);
        } else {
            delim = parse_mailbox(p, stop, group);
        }
        if (delim == ';')
            group = NONE;
        if (delim == 0)
            break;
    }
}

int crm_mail_address_parse(const char *in, size_t len, const crm_mail_address_limits_t *limits,
                           crm_mail_address_list_t **out)
{
    if (out == NULL)
        return CRM_E_INVAL;
    *out = NULL;
    if (in == NULL && len > 0)
        return CRM_E_INVAL;
    parser_t p = {.in = in, .len = len};
    if (limits != NULL)
        p.lim = *limits;
    else
        crm_mail_address_limits_default(&p.lim);
    if (len > p.lim.max_bytes)
        return CRM_E_TOO_LARGE;
    /* The arena's maximum: a name takes at most 3 bytes per input byte (RFC 2047 decoding), the local part, domain
     * and their copy in addr at most 2 bytes per input byte plus quotes, and each mailbox or group adds at most 16
     * bytes of quotes and NULs; groups are fewer than len / 2 + 1. */
    size_t slots = p.lim.max_addresses < SIZE_MAX / 64 ? p.lim.max_addresses : SIZE_MAX / 64;
    if (len > SIZE_MAX / 64 - slots)
        return CRM_E_TOO_LARGE;
    p.str_max = 3 * len + 16 * (slots + len / 2 + 2);
    int rc = CRM_E_NOMEM;
    p.scratch = malloc(len + 1);
    p.dec = malloc(CRM_RFC2047_DECODE_MAX(len));
    p.str_cap = p.str_max < 256 ? p.str_max : 256;
    p.str = malloc(p.str_cap);
    if (p.scratch == NULL || p.dec == NULL || p.str == NULL)
        goto out;
    p.str[0] = '\0';
    p.str_len = 1;

    parse_list(&p);
    if (p.fatal) {
        rc = p.fatal;
        goto out;
    }
    if (p.nitems == 0 && p.invalid > 0) {
        rc = CRM_E_PARSE;
        goto out;
    }
    crm_mail_address_list_t *list = malloc(sizeof(*list) + p.nitems * sizeof(crm_mail_address_t) + p.str_len);
    if (list == NULL)
        goto out;
    list->items = (crm_mail_address_t *)(list + 1);
    list->count = p.nitems;
    list->invalid = p.invalid;
    list->groups = p.groups;
    char *str = (char *)(list->items + p.nitems);
    memcpy(str, p.str, p.str_len);
    for (size_t i = 0; i < p.nitems; ++i) {
        const item_t *it = &p.items[i];
        list->items[i] = (crm_mail_address_t){
            .name = str + it->name,
            .local = str + it->local,
            .domain = str + it->domain,
            .addr = str + it->addr,
            .group = it->group == NONE ? NULL : str + it->group,
        };
    }
    *out = list;
    rc = 0;
out:
    free(p.scratch);
    free(p.dec);
    free(p.str);
    free(p.items);
    return rc;
}

void crm_mail_address_list_free(crm_mail_address_list_t *list)
{
    free(list);
}

/* ---- Strict validation ---------------------------------------------------------------------------------------- */

static int is_ldh_label(const char *s, size_t n)
{
    if (n == 0 || n > CRM_MAIL_LABEL_MAX || s[0] == '-' || s[n - 1] == '-')
        return 0;
    for (size_t i = 0; i < n; ++i) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-'))
            return 0;
    }
    return 1;
}

static int host_ok(const char *s, size_t n)
{
    if (n == 0 || n > CRM_MAIL_DOMAIN_MAX)
        return 0;
    size_t labels = 0, start = 0;
    int all_digits = 1;
    for (size_t i = 0; i <= n; ++i) {
        if (i < n && s[i] != '.')
            continue;
        if (!is_ldh_label(s + start, i - start))
            return 0;
        ++labels;
        all_digits = 1;
        for (size_t k = start; k < i; ++k)
            all_digits &= s[k] >= '0' && s[k] <= '9';
        start = i + 1;
    }
    /* RFC 3696 §2: a top-level domain is never all-numeric, so "x@1.2.3.4" is a mistyped address literal. */
    return labels >= 2 && !all_digits;
}

int crm_mail_address_domain_is_valid(const char *domain)
{
    return domain != NULL && host_ok(domain, strlen(domain));
}

static int literal_ok(const char *s, size_t n)
{
    char buf[64];
    unsigned char addr[16];
    if (n < 3 || s[0] != '[' || s[n - 1] != ']' || n - 2 >= sizeof(buf))
        return 0;
    memcpy(buf, s + 1, n - 2);
    buf[n - 2] = '\0';
    if (strncasecmp(buf, "IPv6:", 5) == 0)
        return inet_pton(AF_INET6, buf + 5, addr) == 1;
    return inet_pton(AF_INET, buf, addr) == 1;
}

int crm_mail_address_is_valid(const char *addr)
{
    if (addr == NULL)
        return 0;
    size_t n = strlen(addr);
    if (n > CRM_MAIL_ADDR_MAX)
        return 0;
    size_t i = 0;
    if (addr[0] == '"') {
        i = 1;
        for (;;) {
            unsigned char c = (unsigned char)addr[i];
            if (c == '"')
                break;
            if (c == '\\') {
                c = (unsigned char)addr[++i];
                if (c < 32 || c > 126)
                    return 0;
            } else if (c < 32 || c > 126) {
                return 0; /* NUL (the end) included: unterminated */
            }
            ++i;
        }
        if (i == 1)
            return 0; /* "" is legal syntax but never a real mailbox */
        ++i;
    } else {
        while (addr[i] != '\0' && addr[i] != '@')
            ++i;
        for (size_t k = 0; k < i; ++k) {
            if ((unsigned char)addr[k] >= 0x80)
                return 0;
        }
        if (!is_dot_atom(addr, i))
            return 0;
    }
    if (i > CRM_MAIL_LOCAL_MAX || addr[i] != '@')
        return 0;
    const char *domain = addr + i + 1;
    size_t dlen = n - i - 1;
    return domain[0] == '[' ? literal_ok(domain, dlen) : host_ok(domain, dlen);
}
