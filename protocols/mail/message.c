#include "mail/message.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "err.h"
#include "mail/address.h"
#include "mail/rfc2047.h"
#include "rand.h"

/* RFC 5322 §2.1.1: lines SHOULD be at most 78 characters and MUST be at most 998. */
#define LINE_SOFT 78
#define LINE_HARD 998
/* Quoted-printable lines hold at most 76 characters, the soft-break "=" included (RFC 2045 §6.7). */
#define QP_LINE 76

static const char hexdigits[] = "0123456789ABCDEF";

/* The message being written: a buffer that grows up to max bytes (plus the NUL), and the column of its last line. */
typedef struct {
    char *p;
    size_t len, cap, max;
    size_t col;
    int err;
} out_t;

static void put(out_t *o, const char *s, size_t n)
{
    if (o->err)
        return;
    if (n > o->max - o->len) {
        o->err = CRM_E_TOO_LARGE;
        return;
    }
    if (n >= o->cap - o->len) {
        size_t cap = o->cap;
        while (n >= cap - o->len)
            cap = cap > o->max / 2 ? o->max + 1 : cap * 2;
        char *grown = realloc(o->p, cap);
        if (grown == NULL) {
            o->err = CRM_E_NOMEM;
            return;
        }
        o->p = grown;
        o->cap = cap;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    const char *nl = memrchr(s, '\n', n);
    o->col = nl != NULL ? (size_t)(s + n - nl - 1) : o->col + n;
}

static void puts_(out_t *o, const char *s)
{
    put(o, s, strlen(s));
}

static void fold(out_t *o)
{
    put(o, "\r\n ", 3);
}

/* ---- Validation ----------------------------------------------------------------------------------------------- */

static int is_atext_ascii(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

static int is_dot_atom_text(const char *s, size_t n)
{
    if (n == 0 || s[0] == '.' || s[n - 1] == '.')
        return 0;
    for (size_t i = 0; i < n; ++i) {
        if (s[i] == '.' ? s[i - 1] == '.' : !is_atext_ascii((unsigned char)s[i]))
            return 0;
    }
    return 1;
}

static int message_id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n < 5 || n >= CRM_MAIL_MESSAGE_ID_SIZE || id[0] != '<' || id[n - 1] != '>')
        return 0;
    const char *at = memchr(id, '@', n);
    return at != NULL && is_dot_atom_text(id + 1, (size_t)(at - id - 1)) &&
           is_dot_atom_text(at + 1, (size_t)(id + n - 1 - at - 1));
}

/* A display name or subject: one line of well-formed UTF-8. */
static int header_text_ok(const char *s)
{
    size_t n = strlen(s);
    return memchr(s, '\r', n) == NULL && memchr(s, '\n', n) == NULL && crm_rfc2047_utf8_valid(s, n);
}

static int mailbox_ok(const crm_mail_mailbox_t *mb)
{
    return crm_mail_address_is_valid(mb->addr) && (mb->name == NULL || header_text_ok(mb->name));
}

static int body_ok(const char *s)
{
    /* strlen stops at the first NUL, so a NUL cannot be inside a C string body. */
    return crm_rfc2047_utf8_valid(s, strlen(s));
}

static int extra_header_ok(const crm_mail_header_t *h)
{
    static const char *const reserved[] = {
        "Date", "From", "Sender", "To", "Cc", "Bcc", "Reply-To", "Subject", "Message-ID", "MIME-Version",
    };
    if (h->name == NULL || h->value == NULL)
        return 0;
    size_t n = strlen(h->name);
    if (n == 0 || n > LINE_SOFT - 2)
        return 0;
    for (size_t i = 0; i < n; ++i) {
        unsigned char c = (unsigned char)h->name[i];
        if (c < 33 || c > 126 || c == ':')
            return 0;
    }
    for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); ++i) {
        if (strcasecmp(h->name, reserved[i]) == 0)
            return 0;
    }
    if (strncasecmp(h->name, "Content-", 8) == 0)
        return 0;
    for (const char *v = h->value; *v != '\0'; ++v) {
        unsigned char c = (unsigned char)*v;
        if ((c < 32 && c != '\t') || c > 126)
            return 0;
    }
    return 1;
}

static int message_ok(const crm_mail_message_t *m)
{
    if (!mailbox_ok(&m->from) || m->to == NULL || m->to_count == 0)
        return 0;
    for (size_t i = 0; i < m->to_count; ++i) {
        if (!mailbox_ok(&m->to[i]))
            return 0;
    }
    if (m->reply_to != NULL && !mailbox_ok(m->reply_to))
        return 0;
    if (m->subject != NULL && !header_text_ok(m->subject))
        return 0;
    if (m->text == NULL || !body_ok(m->text) || (m->html != NULL && !body_ok(m->html)))
        return 0;
    if (m->message_id != NULL ? !message_id_ok(m->message_id) : !crm_mail_address_domain_is_valid(m->message_id_domain))
        return 0;
    if (m->header_count > 0 && m->headers == NULL)
        return 0;
    for (size_t i = 0; i < m->header_count; ++i) {
        if (!extra_header_ok(&m->headers[i]))
            return 0;
    }
    return 1;
}

/* ---- Pieces --------------------------------------------------------------------------------------------------- */

static char *put2(char *o, unsigned v)
{
    o[0] = (char)('0' + v / 10);
    o[1] = (char)('0' + v % 10);
    return o + 2;
}

int crm_mail_message_format_date(time_t t, char *out)
{
    static const char days[7][4] = {"Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    out[0] = '\0';
    /* 9999-12-31T23:59:59Z */
    if (t < 0 || (int64_t)t > INT64_C(253402300799))
        return CRM_E_INVAL;
    int64_t secs = (int64_t)t;
    int64_t z = secs / 86400;
    int64_t rem = secs % 86400;
    unsigned wday = (unsigned)(z % 7); /* 1970-01-01 was a Thursday */
    /* Howard Hinnant's civil_from_days, for days >= 0. */
    z += 719468;
    int64_t era = z / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned day = doy - (153 * mp + 2) / 5 + 1;
    unsigned month = mp < 10 ? mp + 3 : mp - 9;
    int64_t year = (int64_t)yoe + era * 400 + (month <= 2);
    unsigned hms = (unsigned)rem;
    unsigned y = (unsigned)year;
    char *o = out;
    memcpy(o, days[wday], 3);
    o += 3;
    *o++ = ',';
    *o++ = ' ';
    o = put2(o, day);
    *o++ = ' ';
    memcpy(o, months[month - 1], 3);
    o += 3;
    *o++ = ' ';
    o = put2(o, y / 100);
    o = put2(o, y % 100);
    *o++ = ' ';
    o = put2(o, hms / 3600);
    *o++ = ':';
    o = put2(o, hms / 60 % 60);
    *o++ = ':';
    o = put2(o, hms % 60);
    memcpy(o, " +0000", 7);
    return 0;
}

static int random_hex(char *out, size_t bytes)
{
    unsigned char r[32];
    if (crm_random_bytes(r, bytes) != 0)
        return CRM_E_IO;
    for (size_t i = 0; i < bytes; ++i) {
        out[2 * i] = hexdigits[r[i] >> 4];
        out[2 * i + 1] = hexdigits[r[i] & 15];
    }
    out[2 * bytes] = '\0';
    return 0;
}

int crm_mail_message_id_generate(const char *domain, char *out)
{
    out[0] = '\0';
    if (!crm_mail_address_domain_is_valid(domain))
        return CRM_E_INVAL;
    char hex[33];
    if (random_hex(hex, 16) != 0)
        return CRM_E_IO;
    /* Lower case, as the rest of the id: some receivers compare Message-IDs as plain strings. */
    for (char *h = hex; *h != '\0'; ++h)
        *h = (char)(*h >= 'A' && *h <= 'F' ? *h - 'A' + 'a' : *h);
    snprintf(out, CRM_MAIL_MESSAGE_ID_SIZE, "<%s@%s>", hex, domain);
    return 0;
}

/* Writes printable ASCII s[0..n) folded before whitespace so that lines stay within LINE_SOFT where a break is
 * possible. Returns 0, or CRM_E_INVAL when a line would exceed LINE_HARD (one word too long). */
static int put_folded(out_t *o, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && (s[j] == ' ' || s[j] == '\t'))
            ++j;
        int has_word = j < n;
        while (j < n && s[j] != ' ' && s[j] != '\t')
            ++j;
        /* A piece is whitespace and the word after it; folding goes before its whitespace, and never leaves a
         * line of whitespace only. */
        if (i > 0 && has_word && o->col + (j - i) > LINE_SOFT)
            put(o, "\r\n", 2);
        put(o, s + i, j - i);
        if (o->col > LINE_HARD)
            return CRM_E_INVAL;
        i = j;
    }
    return 0;
}

/* Encodes s with RFC 2047 starting at the current column and writes it. */
static void put_encoded(out_t *o, const char *s, unsigned flags)
{
    size_t n = strlen(s);
    char *enc = malloc(CRM_RFC2047_ENCODE_MAX(n));
    if (enc == NULL) {
        o->err = o->err ? o->err : CRM_E_NOMEM;
        return;
    }
    size_t elen;
    /* Cannot fail: s was validated and the buffer has the maximum size. */
    crm_rfc2047_encode(s, n, o->col, flags, enc, CRM_RFC2047_ENCODE_MAX(n), &elen);
    put(o, enc, elen);
    free(enc);
}

typedef enum {
    NAME_ATOMS,  /* atoms separated by single spaces: written as it is */
    NAME_QUOTED, /* other printable ASCII: a quoted string */
    NAME_ENCODE, /* anything else: encoded-words */
} name_kind_t;

static name_kind_t name_kind(const char *s, size_t *width)
{
    size_t n = strlen(s);
    int atoms = s[0] != ' ' && s[n - 1] != ' ';
    *width = n;
    for (size_t i = 0; i < n; ++i) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7E || (c == '=' && s[i + 1] == '?'))
            return NAME_ENCODE;
        if (c == ' ')
            atoms &= s[i + 1] != ' ';
        else
            atoms &= is_atext_ascii(c);
        if (c == '"' || c == '\\')
            ++*width;
    }
    if (atoms)
        return NAME_ATOMS;
    *width += 2;
    return NAME_QUOTED;
}

static void put_mailboxes(out_t *o, const crm_mail_mailbox_t *mbs, size_t count)
{
    for (size_t i = 0; i < count; ++i) {
        const char *name = mbs[i].name != NULL && mbs[i].name[0] != '\0' ? mbs[i].name : NULL;
        /* A "," follows every mailbox but the last and must fit on its line too. */
        size_t alen = strlen(mbs[i].addr), width = 0, comma = i + 1 < count;
        name_kind_t kind = name != NULL ? name_kind(name, &width) : NAME_ATOMS;
        /* What must begin on this line: the name, the first encoded-word (at least 21 characters), or the addr. */
        size_t first = name == NULL ? alen + comma : kind == NAME_ENCODE ? 21 : width;
        if (i > 0)
            put(o, ",", 1);
        if (i > 0 && o->col + 1 + first > LINE_SOFT)
            fold(o);
        else
            put(o, " ", 1);
        if (name == NULL) {
            put(o, mbs[i].addr, alen);
            continue;
        }
        if (kind == NAME_ENCODE || o->col + width > LINE_SOFT) {
            put_encoded(o, name, CRM_RFC2047_ENCODE_ALWAYS);
        } else if (kind == NAME_ATOMS) {
            puts_(o, name);
        } else {
            put(o, "\"", 1);
            for (const char *c = name; *c != '\0'; ++c) {
                if (*c == '"' || *c == '\\')
                    put(o, "\\", 1);
                put(o, c, 1);
            }
            put(o, "\"", 1);
        }
        if (o->col + 1 + alen + 2 + comma > LINE_SOFT)
            fold(o);
        else
            put(o, " ", 1);
        put(o, "<", 1);
        put(o, mbs[i].addr, alen);
        put(o, ">", 1);
    }
}

static void put_subject(out_t *o, const char *subject)
{
    puts_(o, "Subject:");
    if (subject[0] == '\0') {
        put(o, "\r\n", 2);
        return;
    }
    put(o, " ", 1);
    size_t n = strlen(subject), mark = o->len, col = o->col;
    char *enc = malloc(CRM_RFC2047_ENCODE_MAX(n));
    if (enc == NULL) {
        o->err = o->err ? o->err : CRM_E_NOMEM;
        return;
    }
    size_t elen;
    crm_rfc2047_encode(subject, n, o->col, 0, enc, CRM_RFC2047_ENCODE_MAX(n), &elen);
    if (elen != n || memcmp(enc, subject, n) != 0) {
        put(o, enc, elen);
    } else if (put_folded(o, subject, n) != 0 && !o->err) {
        /* A word too long for any line: only encoded-words can split it. */
        o->len = mark;
        o->col = col;
        put_encoded(o, subject, CRM_RFC2047_ENCODE_ALWAYS);
    }
    free(enc);
    put(o, "\r\n", 2);
}

/* Quoted-printable (RFC 2045 §6.7) of the UTF-8 text s, line breaks (LF or CRLF) as CRLF. */
static void put_qp(out_t *o, const char *s)
{
    size_t n = strlen(s), line = 0;
    for (size_t i = 0; i < n; ++i) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n' || (c == '\r' && i + 1 < n && s[i + 1] == '\n')) {
            i += c == '\r';
            put(o, "\r\n", 2);
            line = 0;
            continue;
        }
        int literal;
        if (c == ' ' || c == '\t') {
            /* Whitespace at the end of a line would be stripped in transport. */
            size_t k = i + 1;
            literal = k < n && s[k] != '\n' && !(s[k] == '\r' && k + 1 < n && s[k + 1] == '\n');
        } else {
            literal = c >= 33 && c <= 126 && c != '=';
        }
        size_t w = literal ? 1 : 3;
        if (line + w > QP_LINE - 1) {
            put(o, "=\r\n", 3);
            line = 0;
        }
        if (literal) {
            put(o, (const char *)&c, 1);
        } else {
            char e[3] = {'=', hexdigits[c >> 4], hexdigits[c & 15]};
            put(o, e, 3);
        }
        line += w;
    }
}

static void put_part(out_t *o, const char *subtype, const char *body)
{
    puts_(o, "Content-Type: text/");
    puts_(o, subtype);
    puts_(o, "; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n");
    put_qp(o, body);
    put(o, "\r\n", 2);
}

int crm_mail_message_compose(const crm_mail_message_t *m, char **out, size_t *out_len, char *message_id)
{
    if (message_id != NULL)
        message_id[0] = '\0';
    if (out == NULL || out_len == NULL)
        return CRM_E_INVAL;
    *out = NULL;
    if (m == NULL || !message_ok(m))
        return CRM_E_INVAL;
    char date[CRM_MAIL_DATE_SIZE], id[CRM_MAIL_MESSAGE_ID_SIZE], boundary[35];
    int rc = crm_mail_message_format_date(m->date, date);
    if (rc != 0)
        return rc;
    if (m->message_id != NULL)
        snprintf(id, sizeof(id), "%s", m->message_id);
    else if ((rc = crm_mail_message_id_generate(m->message_id_domain, id)) != 0)
        return rc;
    if (m->html != NULL) {
        boundary[0] = '=';
        boundary[1] = '_';
        if (random_hex(boundary + 2, 16) != 0)
            return CRM_E_IO;
    }

    out_t o = {.max = m->max_bytes != 0 ? m->max_bytes : CRM_MAIL_MESSAGE_MAX_DEFAULT};
    o.cap = o.max < 4096 ? o.max + 1 : 4096;
    o.p = malloc(o.cap);
    if (o.p == NULL)
        return CRM_E_NOMEM;

    puts_(&o, "Date: ");
    puts_(&o, date);
    puts_(&o, "\r\nFrom:");
    put_mailboxes(&o, &m->from, 1);
    puts_(&o, "\r\nTo:");
    put_mailboxes(&o, m->to, m->to_count);
    if (m->reply_to != NULL) {
        puts_(&o, "\r\nReply-To:");
        put_mailboxes(&o, m->reply_to, 1);
    }
    puts_(&o, "\r\nMessage-ID: ");
    puts_(&o, id);
    put(&o, "\r\n", 2);
    if (m->subject != NULL)
        put_subject(&o, m->subject);
    puts_(&o, "MIME-Version: 1.0\r\n");
    for (size_t i = 0; i < m->header_count; ++i) {
        puts_(&o, m->headers[i].name);
        put(&o, ":", 1);
        if (m->headers[i].value[0] != '\0') {
            put(&o, " ", 1);
            if (put_folded(&o, m->headers[i].value, strlen(m->headers[i].value)) != 0 && !o.err)
                o.err = CRM_E_INVAL;
        }
        put(&o, "\r\n", 2);
    }
    if (m->html == NULL) {
        put_part(&o, "plain", m->text);
    } else {
        puts_(&o, "Content-Type: multipart/alternative;\r\n boundary=\"");
        puts_(&o, boundary);
        puts_(&o, "\"\r\n\r\n--");
        puts_(&o, boundary);
        put(&o, "\r\n", 2);
        put_part(&o, "plain", m->text);
        puts_(&o, "--");
        puts_(&o, boundary);
        put(&o, "\r\n", 2);
        put_part(&o, "html", m->html);
        puts_(&o, "--");
        puts_(&o, boundary);
        puts_(&o, "--\r\n");
    }
    if (o.err) {
        free(o.p);
        return o.err;
    }
    o.p[o.len] = '\0';
    *out = o.p;
    *out_len = o.len;
    if (message_id != NULL)
        memcpy(message_id, id, strlen(id) + 1);
    return 0;
}
