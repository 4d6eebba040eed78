#include "mail/rfc2047.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "err.h"

/* Windows-1252 0x80..0x9F; 0 marks the five undefined bytes. 0xA0..0xFF equal their code points (Latin-1). */
static const uint16_t cp1252_high[32] = {
    0x20AC, 0,      0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0,      0x017D, 0,      0,      0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0,      0x017E, 0x0178,
};

typedef enum {
    CHARSET_UNKNOWN = 0,
    CHARSET_UTF8,
    CHARSET_CP1252, /* also US-ASCII and ISO-8859-1, see the header */
} charset_t;

/* Output with a fixed capacity and a streaming UTF-8 checker: bytes that claim to be UTF-8 go through put_byte,
 * which holds an incomplete sequence in pending[] until it is known to be well-formed. */
typedef struct {
    char *buf;
    size_t cap; /* including the NUL */
    size_t len;
    int overflow;
    unsigned char pending[4];
    size_t npending;
    size_t need; /* total length of the pending sequence */
} sink_t;

static void put_raw(sink_t *s, const void *p, size_t n)
{
    if (s->overflow || n > s->cap - 1 - s->len) {
        s->overflow = 1;
        return;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
}

static void put_fffd(sink_t *s)
{
    put_raw(s, "\xEF\xBF\xBD", 3);
}

static void put_cp(sink_t *s, uint32_t cp)
{
    unsigned char u[4];
    if (cp == 0) {
        put_fffd(s);
    } else if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        put_raw(s, u, 1);
    } else if (cp < 0x800) {
        u[0] = (unsigned char)(0xC0 | (cp >> 6));
        u[1] = (unsigned char)(0x80 | (cp & 0x3F));
        put_raw(s, u, 2);
    } else {
        /* Only the Windows-1252 table and U+FFFD come here, all in the BMP. */
        u[0] = (unsigned char)(0xE0 | (cp >> 12));
        u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (unsigned char)(0x80 | (cp & 0x3F));
        put_raw(s, u, 3);
    }
}

/* The range the second byte of a sequence may take, given its lead byte (Unicode Table 3-7). */
static void second_range(unsigned char lead, unsigned char *lo, unsigned char *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (lead == 0xE0)
        *lo = 0xA0;
    else if (lead == 0xED)
        *hi = 0x9F;
    else if (lead == 0xF0)
        *lo = 0x90;
    else if (lead == 0xF4)
        *hi = 0x8F;
}

/* Length of the sequence a lead byte starts, or 0 if it cannot start one. */
static size_t lead_length(unsigned char c)
{
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return 2;
    if (c >= 0xE0 && c <= 0xEF)
        return 3;
    if (c >= 0xF0 && c <= 0xF4)
        return 4;
    return 0;
}

static void put_byte(sink_t *s, unsigned char c)
{
    if (s->npending > 0) {
        unsigned char lo = 0x80, hi = 0xBF;
        if (s->npending == 1)
            second_range(s->pending[0], &lo, &hi);
        if (c >= lo && c <= hi) {
            s->pending[s->npending++] = c;
            if (s->npending == s->need) {
                put_raw(s, s->pending, s->need);
                s->npending = 0;
            }
            return;
        }
        /* The pending bytes are a maximal ill-formed subpart; c starts afresh. */
        s->npending = 0;
        put_fffd(s);
    }
    size_t n = lead_length(c);
    if (n == 0 || c == 0) {
        put_fffd(s);
    } else if (n == 1) {
        put_raw(s, &c, 1);
    } else {
        s->pending[0] = c;
        s->npending = 1;
        s->need = n;
    }
}

static void flush_pending(sink_t *s)
{
    if (s->npending > 0) {
        s->npending = 0;
        put_fffd(s);
    }
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* A charset name's characters: RFC 2047 token characters, plus "." which real mail uses ("ANSI_X3.4-1968"). */
static int is_charset_char(unsigned char c)
{
    if (c <= 0x20 || c >= 0x7F)
        return 0;
    return strchr("()<>@,;:\"/[]?=\\", c) == NULL;
}

static charset_t lookup_charset(const char *name, size_t n)
{
    static const struct {
        const char *name;
        charset_t cs;
    } names[] = {
        {"utf-8", CHARSET_UTF8},
        {"utf8", CHARSET_UTF8},
        {"us-ascii", CHARSET_CP1252},
        {"ascii", CHARSET_CP1252},
        {"ansi_x3.4-1968", CHARSET_CP1252},
        {"iso-8859-1", CHARSET_CP1252},
        {"iso8859-1", CHARSET_CP1252},
        {"iso_8859-1", CHARSET_CP1252},
        {"latin1", CHARSET_CP1252},
        {"latin-1", CHARSET_CP1252},
        {"l1", CHARSET_CP1252},
        {"cp819", CHARSET_CP1252},
        {"windows-1252", CHARSET_CP1252},
        {"cp1252", CHARSET_CP1252},
    };
    /* The RFC 2231 language suffix does not change the bytes. */
    const char *star = memchr(name, '*', n);
    if (star != NULL)
        n = (size_t)(star - name);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); ++i) {
        if (strlen(names[i].name) == n && strncasecmp(names[i].name, name, n) == 0)
            return names[i].cs;
    }
    return CHARSET_UNKNOWN;
}

typedef struct {
    charset_t cs;
    int b64;          /* 1 for B, 0 for Q */
    const char *text; /* encoded text, between "?X?" and "?=" */
    size_t text_len;  /* for B: without trailing padding */
    size_t end;       /* offset just past "?=" */
} word_t;

/* Recognises a well-formed encoded-word with a known charset starting at in[at] (which holds "=?"). Scans at most
 * to the third '?' after `at`, which keeps decoding linear in the input. */
static int parse_word(const char *in, size_t len, size_t at, word_t *w)
{
    size_t i = at + 2;
    size_t cs_start = i;
    while (i < len && is_charset_char((unsigned char)in[i]))
        ++i;
    if (i == cs_start || i >= len || in[i] != '?')
        return 0;
    w->cs = lookup_charset(in + cs_start, i - cs_start);
    ++i;
    if (i + 1 >= len || in[i + 1] != '?')
        return 0;
    if (in[i] == 'B' || in[i] == 'b')
        w->b64 = 1;
    else if (in[i] == 'Q' || in[i] == 'q')
        w->b64 = 0;
    else
        return 0;
    i += 2;
    size_t t = i;
    while (i < len && in[i] != '?' && (unsigned char)in[i] > 0x20 && (unsigned char)in[i] < 0x7F)
        ++i;
    if (i + 1 >= len || in[i] != '?' || in[i + 1] != '=')
        return 0;
    if (w->cs == CHARSET_UNKNOWN)
        return 0;
    w->text = in + t;
    w->text_len = i - t;
    w->end = i + 2;
    if (w->b64) {
        size_t n = w->text_len;
        for (int pad = 0; pad < 2 && n > 0 && w->text[n - 1] == '='; ++pad)
            --n;
        for (size_t k = 0; k < n; ++k) {
            if (b64val((unsigned char)w->text[k]) < 0)
                return 0;
        }
        if (n % 4 == 1)
            return 0;
        w->text_len = n;
    } else {
        for (size_t k = 0; k < w->text_len; ++k) {
            if (w->text[k] == '=') {
                if (k + 2 >= w->text_len || hexval((unsigned char)w->text[k + 1]) < 0 ||
                    hexval((unsigned char)w->text[k + 2]) < 0)
                    return 0;
                k += 2;
            }
        }
    }
    return 1;
}

/* One decoded byte of the word, converted from its charset. */
static void put_word_byte(sink_t *s, charset_t cs, unsigned char c)
{
    /* A line break inside an encoded-word must not break the header line the caller shows or stores. */
    if (c == '\r' || c == '\n')
        c = ' ';
    if (cs == CHARSET_UTF8) {
        put_byte(s, c);
    } else if (c < 0x80) {
        put_cp(s, c);
    } else if (c < 0xA0) {
        uint16_t cp = cp1252_high[c - 0x80];
        put_cp(s, cp != 0 ? cp : 0xFFFD);
    } else {
        put_cp(s, c);
    }
}

static void decode_word(sink_t *s, const word_t *w)
{
    if (w->b64) {
        uint32_t acc = 0;
        int bits = 0;
        for (size_t k = 0; k < w->text_len; ++k) {
            acc = (acc << 6) | (uint32_t)b64val((unsigned char)w->text[k]);
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                put_word_byte(s, w->cs, (unsigned char)(acc >> bits));
                acc &= (1u << bits) - 1;
            }
        }
    } else {
        for (size_t k = 0; k < w->text_len; ++k) {
            unsigned char c = (unsigned char)w->text[k];
            if (c == '_') {
                c = ' ';
            } else if (c == '=') {
                c = (unsigned char)(hexval((unsigned char)w->text[k + 1]) * 16 + hexval((unsigned char)w->text[k + 2]));
                k += 2;
            }
            put_word_byte(s, w->cs, c);
        }
    }
    /* A sequence cannot continue into the next word (RFC 2047 §5: each word holds whole characters). */
    flush_pending(s);
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int at_word(const char *in, size_t len, size_t i, word_t *w)
{
    return i + 1 < len && in[i] == '=' && in[i + 1] == '?' && parse_word(in, len, i, w);
}

int crm_rfc2047_decode(const char *in, size_t len, char *out, size_t cap, size_t *out_len)
{
    if ((in == NULL && len > 0) || out == NULL || cap == 0)
        return CRM_E_INVAL;
    sink_t s = {.buf = out, .cap = cap};
    size_t i = 0;
    while (i < len) {
        word_t w;
        if (at_word(in, len, i, &w)) {
            flush_pending(&s);
            decode_word(&s, &w);
            i = w.end;
            size_t j = i;
            while (j < len && is_ws(in[j]))
                ++j;
            word_t next;
            if (j > i && at_word(in, len, j, &next))
                i = j;
            continue;
        }
        unsigned char c = (unsigned char)in[i++];
        if (c == '\r' || c == '\n')
            continue;
        put_byte(&s, c);
    }
    flush_pending(&s);
    if (s.overflow) {
        out[0] = '\0';
        return CRM_E_TOO_LARGE;
    }
    out[s.len] = '\0';
    if (out_len != NULL)
        *out_len = s.len;
    return 0;
}

int crm_rfc2047_decode_alloc(const char *in, size_t len, char **out, size_t *out_len)
{
    if (out == NULL)
        return CRM_E_INVAL;
    *out = NULL;
    if (in == NULL && len > 0)
        return CRM_E_INVAL;
    if (len > (SIZE_MAX - 1) / 3)
        return CRM_E_TOO_LARGE;
    size_t cap = CRM_RFC2047_DECODE_MAX(len);
    char *buf = malloc(cap);
    if (buf == NULL)
        return CRM_E_NOMEM;
    int rc = crm_rfc2047_decode(in, len, buf, cap, out_len);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

/* Length of the well-formed sequence at s[0..n), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    size_t need = lead_length(s[0]);
    if (need == 0 || need > n)
        return 0;
    if (need > 1) {
        unsigned char lo, hi;
        second_range(s[0], &lo, &hi);
        if (s[1] < lo || s[1] > hi)
            return 0;
        for (size_t k = 2; k < need; ++k) {
            if (s[k] < 0x80 || s[k] > 0xBF)
                return 0;
        }
    }
    return need;
}

int crm_rfc2047_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        size_t n = utf8_seq(p + i, len - i);
        if (n == 0)
            return 0;
        i += n;
    }
    return 1;
}

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Appends one B word carrying in[0..n) to out at *pos (the caller checked the room). */
static void put_b_word(char *out, size_t *pos, const unsigned char *in, size_t n)
{
    size_t o = *pos;
    memcpy(out + o, "=?UTF-8?B?", 10);
    o += 10;
    for (size_t k = 0; k < n; k += 3) {
        uint32_t v = (uint32_t)in[k] << 16;
        if (k + 1 < n)
            v |= (uint32_t)in[k + 1] << 8;
        if (k + 2 < n)
            v |= in[k + 2];
        out[o++] = b64chars[(v >> 18) & 63];
        out[o++] = b64chars[(v >> 12) & 63];
        out[o++] = k + 1 < n ? b64chars[(v >> 6) & 63] : '=';
        out[o++] = k + 2 < n ? b64chars[v & 63] : '=';
    }
    out[o++] = '?';
    out[o++] = '=';
    *pos = o;
}

/* "=?UTF-8?B?" and "?=" */
#define WORD_OVERHEAD 12

int crm_rfc2047_encode(const char *in, size_t len, size_t first_line_used, unsigned flags, char *out, size_t cap,
                       size_t *out_len)
{
    if (in == NULL || out == NULL || cap == 0)
        return CRM_E_INVAL;
    out[0] = '\0';
    if (!crm_rfc2047_utf8_valid(in, len) || memchr(in, '\0', len) != NULL || memchr(in, '\r', len) != NULL ||
        memchr(in, '\n', len) != NULL)
        return CRM_E_INVAL;

    int plain = (flags & CRM_RFC2047_ENCODE_ALWAYS) == 0;
    for (size_t i = 0; plain && i < len; ++i) {
        unsigned char c = (unsigned char)in[i];
        /* Text that looks like an encoded-word would be decoded by the reader: it must be encoded to survive. */
        if (c < 0x20 || c > 0x7E || (c == '=' && i + 1 < len && in[i + 1] == '?'))
            plain = 0;
    }
    if (plain) {
        if (len >= cap)
            return CRM_E_TOO_LARGE;
        memcpy(out, in, len);
        out[len] = '\0';
        if (out_len != NULL)
            *out_len = len;
        return 0;
    }

    const unsigned char *p = (const unsigned char *)in;
    size_t pos = 0, i = 0;
    /* The first word fills what is left of the first line, but always has room for one character (8 base64
     * characters hold up to 6 bytes, enough for any UTF-8 sequence). */
    size_t room = first_line_used + WORD_OVERHEAD + 8 < CRM_RFC2047_LINE_MAX
                      ? CRM_RFC2047_LINE_MAX - first_line_used - WORD_OVERHEAD
                      : 8;
    if (room > CRM_RFC2047_WORD_MAX - WORD_OVERHEAD)
        room = CRM_RFC2047_WORD_MAX - WORD_OVERHEAD;
    int first = 1;
    do {
        if (!first)
            room = CRM_RFC2047_WORD_MAX - WORD_OVERHEAD;
        size_t max_bytes = room / 4 * 3;
        size_t n = 0;
        while (i + n < len) {
            size_t k = utf8_seq(p + i + n, len - i - n);
            if (n + k > max_bytes)
                break;
            n += k;
        }
        size_t need = (first ? 0 : 3) + WORD_OVERHEAD + (n + 2) / 3 * 4;
        if (need >= cap - pos) {
            out[0] = '\0';
            return CRM_E_TOO_LARGE;
        }
        if (!first) {
            memcpy(out + pos, "\r\n ", 3);
            pos += 3;
        }
        put_b_word(out, &pos, p + i, n);
        i += n;
        first = 0;
    } while (i < len);
    out[pos] = '\0';
    if (out_len != NULL)
        *out_len = pos;
    return 0;
}
