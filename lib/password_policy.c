/* The password policy of lib/password.h: lengths, well-formed UTF-8, the common-password list, the email. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "err.h"
#include "password.h"
#include "wordset.h"

/* The list, compiled in from lib/data/common_passwords.txt: one password per line. */
extern const char crm_common_passwords[];
extern const size_t crm_common_passwords_len;

#define MIN_CHARS 12
#define MAX_CHARS 256

static crm_wordset_t g_common;

int crm_password_policy_init(void)
{
    if (g_common.count != 0)
        return 0;
    return crm_wordset_init(&g_common, crm_common_passwords, crm_common_passwords_len);
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
    if (crm_wordset_has(&g_common, pw, len))
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
