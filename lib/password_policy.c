/* The password policy of lib/password.h: lengths, well-formed UTF-8, the common-password list, the email. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "err.h"
#include "password.h"

/* The list, compiled in from lib/data/common_passwords.txt: one password per line. */
extern const char crm_common_passwords[];
extern const size_t crm_common_passwords_len;

#define MIN_CHARS 12
#define MAX_CHARS 256

/* An open-addressing set of the list's lines (lower-cased), built once at start-up. */
static const char **g_set;
static size_t g_mask;
static char *g_text;

static uint64_t hash_lower(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a: the keys are public data, so no seed is needed */
    for (size_t i = 0; i < len; ++i) {
        unsigned char c = (unsigned char)s[i];
        h = (h ^ (c >= 'A' && c <= 'Z' ? c + 32 : c)) * 1099511628211ull;
    }
    return h;
}

static int equal_lower(const char *a, size_t alen, const char *b)
{
    size_t i = 0;
    for (; i < alen && b[i] != '\0'; ++i) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if ((x >= 'A' && x <= 'Z' ? x + 32 : x) != y)
            return 0;
    }
    return i == alen && b[i] == '\0';
}

int crm_password_policy_init(void)
{
    if (g_set != NULL)
        return 0;
    size_t lines = 0;
    for (size_t i = 0; i < crm_common_passwords_len; ++i)
        lines += crm_common_passwords[i] == '\n';
    size_t cap = 1;
    while (cap < 2 * lines + 2)
        cap *= 2;
    g_text = malloc(crm_common_passwords_len + 1);
    g_set = calloc(cap, sizeof(*g_set));
    if (g_text == NULL || g_set == NULL) {
        free(g_text);
        free((void *)g_set);
        g_text = NULL;
        g_set = NULL;
        return CRM_E_NOMEM;
    }
    g_mask = cap - 1;
    memcpy(g_text, crm_common_passwords, crm_common_passwords_len);
    g_text[crm_common_passwords_len] = '\0';
    for (char *p = g_text, *end = g_text + crm_common_passwords_len; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        p[len] = '\0';
        for (size_t i = 0; i < len; ++i)
            if (p[i] >= 'A' && p[i] <= 'Z')
                p[i] = (char)(p[i] + 32);
        if (len > 0) {
            size_t i = hash_lower(p, len) & g_mask;
            while (g_set[i] != NULL && strcmp(g_set[i], p) != 0)
                i = (i + 1) & g_mask;
            g_set[i] = p;
        }
        p += len + 1;
    }
    return 0;
}

static int is_common(const char *pw, size_t len)
{
    size_t i = hash_lower(pw, len) & g_mask;
    for (; g_set[i] != NULL; i = (i + 1) & g_mask)
        if (equal_lower(pw, len, g_set[i]))
            return 1;
    return 0;
}

/* Counts code points of well-formed UTF-8 (no overlongs, no surrogates, ≤ U+10FFFF, no NUL); -1 if malformed. */
static long utf8_chars(const unsigned char *s, size_t len)
{
    long n = 0;
    for (size_t i = 0; i < len; ++n) {
        unsigned char c = s[i];
        size_t k;
        uint32_t cp;
        if (c == 0)
            return -1;
        if (c < 0x80) {
            ++i;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF)
            k = 1, cp = c & 0x1F;
        else if (c >= 0xE0 && c <= 0xEF)
            k = 2, cp = c & 0x0F;
        else if (c >= 0xF0 && c <= 0xF4)
            k = 3, cp = c & 0x07;
        else
            return -1;
        if (len - i <= k) /* the sequence runs past the end */
            return -1;
        for (size_t j = 1; j <= k; ++j) {
            if ((s[i + j] & 0xC0) != 0x80)
                return -1;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return -1;
        i += k + 1;
    }
    return n;
}

crm_password_verdict_t crm_password_policy_check(const char *pw, size_t len, const char *email)
{
    if (len > CRM_PASSWORD_MAX_BYTES)
        return CRM_PASSWORD_TOO_LONG;
    long chars = utf8_chars((const unsigned char *)pw, len);
    if (chars < 0)
        return CRM_PASSWORD_INVALID_UTF8;
    if (chars < MIN_CHARS)
        return CRM_PASSWORD_TOO_SHORT;
    if (chars > MAX_CHARS)
        return CRM_PASSWORD_TOO_LONG;
    if (email != NULL && strlen(email) == len && strncasecmp(pw, email, len) == 0)
        return CRM_PASSWORD_IS_EMAIL;
    if (g_set != NULL && is_common(pw, len))
        return CRM_PASSWORD_COMMON;
    return CRM_PASSWORD_OK;
}

const char *crm_password_verdict_message(crm_password_verdict_t v)
{
    switch (v) {
    case CRM_PASSWORD_OK:
        return "acceptable";
    case CRM_PASSWORD_TOO_SHORT:
        return "must be at least 12 characters";
    case CRM_PASSWORD_TOO_LONG:
        return "must be at most 256 characters (1024 bytes)";
    case CRM_PASSWORD_INVALID_UTF8:
        return "must be valid UTF-8 text";
    case CRM_PASSWORD_COMMON:
        return "is one of the most common passwords";
    case CRM_PASSWORD_IS_EMAIL:
        return "must not be the email address";
    }
    return "is not acceptable";
}
