#include "domain.h"

#include <idn2.h>
#include <libpsl.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "wordset.h"

/* The list, compiled in from lib/data/free_mail_domains.txt. */
extern const char crm_free_mail_domains[];
extern const size_t crm_free_mail_domains_len;

static psl_ctx_t *g_latest;    /* the system's list, when it could be read */
static const psl_ctx_t *g_psl; /* g_latest or libpsl's built-in list */
static crm_wordset_t g_free_mail;

int crm_domain_init(void)
{
    if (g_psl != NULL)
        return 0;
    /* psl_latest picks the newest of the system file and the built-in data; NULL only when neither loads. */
    g_latest = psl_latest(NULL);
    g_psl = g_latest != NULL ? g_latest : psl_builtin();
    if (g_psl == NULL)
        return CRM_E_NOMEM;
    int err = crm_wordset_init(&g_free_mail, crm_free_mail_domains, crm_free_mail_domains_len);
    if (err != 0)
        crm_domain_shutdown();
    return err;
}

void crm_domain_shutdown(void)
{
    psl_free(g_latest);
    g_latest = NULL;
    g_psl = NULL;
    crm_wordset_dispose(&g_free_mail);
}

/* The host part of a URL or host name: after "scheme://" and "user@", before the port, path, query or fragment.
 * Sets *host and *hlen; 0 when the shape is wrong (a bracketed IPv6 literal, a port that is not digits). */
static int host_of(const char *s, size_t len, const char **host, size_t *hlen)
{
    const char *p = s, *end = s + len;
    for (const char *q = p; q + 2 < end; ++q) {
        if (q[0] == ':' && q[1] == '/' && q[2] == '/') {
            p = q + 3;
            break;
        }
        if (q[0] == '/' || q[0] == '.' || q[0] == '@')
            break;
    }
    const char *stop = p;
    /* A backslash ends the host as a slash does: browsers read "https://evil.com\@good.com/" as evil.com. */
    while (stop < end && *stop != '/' && *stop != '\\' && *stop != '?' && *stop != '#')
        ++stop;
    for (const char *q = stop; q > p; --q)
        if (q[-1] == '@') {
            p = q;
            break;
        }
    if (p < stop && *p == '[')
        return 0;
    const char *colon = memchr(p, ':', (size_t)(stop - p));
    if (colon != NULL) {
        for (const char *q = colon + 1; q < stop; ++q)
            if (*q < '0' || *q > '9')
                return 0;
        stop = colon;
    }
    *host = p;
    *hlen = (size_t)(stop - p);
    return 1;
}

/* Checks the host name's labels and writes it, ASCII lower-cased, without a trailing dot, to out[0..cap). Labels are
 * LDH (letters, digits, hyphens not first or last) or hold UTF-8; ASCII names must fit DNS's limits (63-byte labels,
 * 253 characters), internationalised ones are held to them once converted to punycode. Sets *ascii. 0 when it is
 * not a host name (an IPv4 address included). */
static int host_name(const char *h, size_t len, char *out, size_t cap, int *ascii)
{
    if (len > 0 && h[len - 1] == '.')
        --len;
    if (len == 0 || len >= cap)
        return 0;
    size_t label = 0;
    int last_all_digits = 1, label_ascii = 1;
    *ascii = 1;
    for (size_t i = 0; i <= len; ++i) {
        unsigned char c = i < len ? (unsigned char)h[i] : '.';
        if (c == '.') {
            if (label == 0 || (label_ascii && label > 63) || out[i - 1] == '-' || out[i - label] == '-')
                return 0;
            if (i < len) {
                label = 0;
                last_all_digits = label_ascii = 1;
                out[i] = '.';
            }
            continue;
        }
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c >= 0x80))
            return 0;
        if (c >= 0x80)
            label_ascii = *ascii = 0;
        last_all_digits &= c >= '0' && c <= '9';
        out[i] = (char)c;
        ++label;
    }
    out[len] = '\0';
    if (*ascii && len > CRM_DOMAIN_MAX - 1)
        return 0;
    return !last_all_digits; /* a top-level label of digits only is an IPv4 address, not a name */
}

/* The ASCII form of a host name in out (CRM_DOMAIN_MAX): itself, or its punycode (IDNA2008, UTS #46
 * non-transitional, NFC), so that "MÜNCHEN.de" and "xn--mnchen-3ya.de" are one name. 0 when it is none. */
static int ascii_name(const char *h, size_t len, char *out)
{
    char raw[4 * CRM_DOMAIN_MAX];
    int ascii;
    if (!host_name(h, len, raw, sizeof(raw), &ascii))
        return 0;
    if (ascii) {
        memcpy(out, raw, strlen(raw) + 1);
        return 1;
    }
    char *puny = NULL;
    int ok = idn2_to_ascii_8z(raw, &puny, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL) == IDN2_OK &&
             host_name(puny, strlen(puny), out, CRM_DOMAIN_MAX, &ascii) && ascii;
    idn2_free(puny);
    return ok;
}

crm_domain_verdict_t crm_domain_registrable(const char *input, size_t len, char *out, size_t cap)
{
    const char *host;
    size_t hlen;
    char name[CRM_DOMAIN_MAX];
    if (cap < CRM_DOMAIN_MAX)
        return CRM_DOMAIN_INVALID;
    out[0] = '\0';
    if (g_psl == NULL || input == NULL || !host_of(input, len, &host, &hlen) || !ascii_name(host, hlen, name))
        return CRM_DOMAIN_INVALID;
    /* libpsl matches punycode labels against the list's internationalised suffixes itself. */
    const char *reg = psl_registrable_domain(g_psl, name);
    if (reg == NULL)
        return CRM_DOMAIN_PUBLIC_SUFFIX;
    memcpy(out, reg, strlen(reg) + 1);
    return CRM_DOMAIN_OK;
}

int crm_domain_is_free_mail(const char *domain, size_t len)
{
    char reg[CRM_DOMAIN_MAX], name[CRM_DOMAIN_MAX];
    if (domain == NULL || !ascii_name(domain, len, name))
        return 0;
    if (crm_wordset_has(&g_free_mail, name, strlen(name)))
        return 1;
    return crm_domain_registrable(name, strlen(name), reg, sizeof(reg)) == CRM_DOMAIN_OK &&
           crm_wordset_has(&g_free_mail, reg, strlen(reg));
}
