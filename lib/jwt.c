#include "jwt.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "crypto.h"
#include "err.h"
#include "json.h"

#define MAC_LEN     32
#define MAC_B64_LEN CRM_BASE64URL_ENCODED_LEN(MAC_LEN)
/* Length of {"alg":"HS256","typ":"JWT","kid":""} without the kid. */
#define HEADER_FIXED_LEN 36

/* crm_jwt_sign needs no check of the token's total length: the largest claims and kid always fit. */
_Static_assert(CRM_BASE64URL_ENCODED_LEN(HEADER_FIXED_LEN + CRM_JWT_KID_MAX) + 1 +
                       CRM_BASE64URL_ENCODED_LEN(CRM_JWT_CLAIMS_MAX) + 1 + MAC_B64_LEN <=
                   CRM_JWT_MAX_LEN,
               "the largest signed token must verify");

/* Header and claims are tiny, flat objects; anything deeper or longer is not a token crmd issued. */
static const crm_json_limits_t token_json_limits = {
    .max_bytes = CRM_JWT_MAX_LEN,
    .max_depth = 4,
    .max_string_bytes = 1024,
    .max_array_items = 64,
};

static const char b64url_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* The value of one base64 character, or -1. The standard alphabet's '+' and '/' count only when std is set (key
 * specifications), never in tokens. */
static int b64_value(unsigned char c, int std)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-' || (std && c == '+'))
        return 62;
    if (c == '_' || (std && c == '/'))
        return 63;
    return -1;
}

/* Decodes in[0..n) without padding. Unused low bits of a final partial group must be zero so that the encoding
 * is canonical. */
static int b64_decode(const char *in, size_t n, int std, uint8_t *out, size_t cap, size_t *len)
{
    size_t rem = n % 4;
    if (rem == 1)
        return CRM_E_PARSE;
    size_t need = n / 4 * 3 + (rem == 0 ? 0 : rem - 1);
    *len = need;
    for (size_t i = 0; i < n; ++i)
        if (b64_value((unsigned char)in[i], std) < 0)
            return CRM_E_PARSE;
    if (need > cap)
        return CRM_E_TOO_LARGE;

    size_t o = 0, i = 0;
    for (; i + 4 <= n; i += 4) {
        uint32_t v = (uint32_t)b64_value((unsigned char)in[i], std) << 18 |
                     (uint32_t)b64_value((unsigned char)in[i + 1], std) << 12 |
                     (uint32_t)b64_value((unsigned char)in[i + 2], std) << 6 |
                     (uint32_t)b64_value((unsigned char)in[i + 3], std);
        out[o++] = (uint8_t)(v >> 16);
        out[o++] = (uint8_t)(v >> 8);
        out[o++] = (uint8_t)v;
    }
    if (rem == 2) {
        uint32_t v =
            (uint32_t)b64_value((unsigned char)in[i], std) << 6 | (uint32_t)b64_value((unsigned char)in[i + 1], std);
        if (v & 0xf)
            return CRM_E_PARSE;
        out[o++] = (uint8_t)(v >> 4);
    } else if (rem == 3) {
        uint32_t v = (uint32_t)b64_value((unsigned char)in[i], std) << 12 |
                     (uint32_t)b64_value((unsigned char)in[i + 1], std) << 6 |
                     (uint32_t)b64_value((unsigned char)in[i + 2], std);
        if (v & 0x3)
            return CRM_E_PARSE;
        out[o++] = (uint8_t)(v >> 10);
        out[o++] = (uint8_t)(v >> 2);
    }
    return 0;
}

int crm_base64url_encode(const void *in, size_t n, char *out, size_t cap, size_t *len)
{
    const uint8_t *p = in;
    size_t need = CRM_BASE64URL_ENCODED_LEN(n);
    *len = need;
    if (need > cap)
        return CRM_E_TOO_LARGE;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = b64url_alphabet[v >> 18];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
        out[o++] = b64url_alphabet[(v >> 6) & 63];
        out[o++] = b64url_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = b64url_alphabet[v >> 18];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = b64url_alphabet[v >> 18];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
        out[o++] = b64url_alphabet[(v >> 6) & 63];
    }
    return 0;
}

int crm_base64url_decode(const char *in, size_t n, uint8_t *out, size_t cap, size_t *len)
{
    return b64_decode(in, n, 0, out, cap, len);
}

/* ---- keys ---- */

static void set_why(char *why, size_t whycap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void set_why(char *why, size_t whycap, const char *fmt, ...)
{
    if (why == NULL || whycap == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whycap, fmt, ap);
    va_end(ap);
}

static int kid_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
}

/* Parses one "kid:key" entry e[0..n) into *key. The message names the entry by position only (see jwt.h). */
static int parse_entry(const char *e, size_t n, size_t pos, crm_jwt_key_t *key, char *why, size_t whycap)
{
    const char *colon = memchr(e, ':', n);
    if (n == 0) {
        set_why(why, whycap, "entry %zu is empty", pos);
        return CRM_E_CONFIG;
    }
    if (colon == NULL) {
        set_why(why, whycap, "entry %zu has no ':' between kid and key", pos);
        return CRM_E_CONFIG;
    }
    size_t kid_len = (size_t)(colon - e);
    if (kid_len == 0 || kid_len > CRM_JWT_KID_MAX) {
        set_why(why, whycap, "entry %zu: kid must be 1 to %d characters", pos, CRM_JWT_KID_MAX);
        return CRM_E_CONFIG;
    }
    for (size_t i = 0; i < kid_len; ++i) {
        if (!kid_char((unsigned char)e[i])) {
            set_why(why, whycap, "entry %zu: kid may contain only A-Z a-z 0-9 . _ -", pos);
            return CRM_E_CONFIG;
        }
    }
    memcpy(key->kid, e, kid_len);
    key->kid[kid_len] = '\0';
    key->kid_len = kid_len;

    /* Padding is optional, but when present it must be complete: the encoded length is then a multiple of 4. */
    const char *b = colon + 1;
    size_t blen = n - kid_len - 1;
    size_t pad = 0;
    while (pad < 2 && pad < blen && b[blen - 1 - pad] == '=')
        ++pad;
    if (pad > 0 && (blen % 4 != 0)) {
        set_why(why, whycap, "entry %zu: key is not valid base64 (incomplete padding)", pos);
        return CRM_E_CONFIG;
    }
    /* With the total a multiple of 4, one '=' leaves 3 characters in the last group and two leave 2, exactly the
     * partial groups the unpadded decoder expects. */
    blen -= pad;
    size_t klen = 0;
    int rc = b64_decode(b, blen, 1, key->key, sizeof key->key, &klen);
    if (rc == CRM_E_PARSE) {
        set_why(why, whycap, "entry %zu: key is not valid base64", pos);
        return CRM_E_CONFIG;
    }
    if (rc == CRM_E_TOO_LARGE || klen > CRM_JWT_KEY_MAX) {
        set_why(why, whycap, "entry %zu: key decodes to %zu bytes, at most %d allowed", pos, klen, CRM_JWT_KEY_MAX);
        return CRM_E_CONFIG;
    }
    if (klen < CRM_JWT_KEY_MIN) {
        set_why(why, whycap, "entry %zu: key decodes to %zu bytes, at least %d required", pos, klen, CRM_JWT_KEY_MIN);
        return CRM_E_CONFIG;
    }
    key->key_len = klen;
    return 0;
}

int crm_jwt_keys_parse(const char *spec, crm_jwt_keyring_t *out, char *why, size_t whycap)
{
    set_why(why, whycap, "%s", "");
    if (out == NULL)
        return CRM_E_INVAL;
    out->count = 0;
    out->_keys = NULL;
    if (spec == NULL)
        return CRM_E_INVAL;
    if (spec[0] == '\0') {
        set_why(why, whycap, "no keys given");
        return CRM_E_CONFIG;
    }
    for (const char *p = spec; *p != '\0'; ++p) {
        if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\v' || *p == '\f') {
            set_why(why, whycap, "whitespace is not allowed in the key list (at offset %zu)", (size_t)(p - spec));
            return CRM_E_CONFIG;
        }
    }
    size_t entries = 1;
    for (const char *p = spec; *p != '\0'; ++p)
        entries += *p == ',';
    if (entries > CRM_JWT_KEYS_MAX) {
        set_why(why, whycap, "%zu keys given, at most %d allowed", entries, CRM_JWT_KEYS_MAX);
        return CRM_E_CONFIG;
    }

    crm_jwt_keyring_t ring = {.count = 0, ._keys = calloc(entries, sizeof(crm_jwt_key_t))};
    if (ring._keys == NULL)
        return CRM_E_NOMEM;
    int rc = 0;
    const char *e = spec;
    for (size_t pos = 1; pos <= entries; ++pos) {
        const char *end = strchr(e, ',');
        size_t n = end != NULL ? (size_t)(end - e) : strlen(e);
        crm_jwt_key_t *key = &ring._keys[ring.count];
        /* Count the entry before parsing it so that crm_jwt_keyring_free wipes a half-decoded key too. */
        ring.count++;
        rc = parse_entry(e, n, pos, key, why, whycap);
        if (rc != 0)
            goto error;
        for (size_t j = 0; j + 1 < ring.count; ++j) {
            if (ring._keys[j].kid_len == key->kid_len && memcmp(ring._keys[j].kid, key->kid, key->kid_len) == 0) {
                set_why(why, whycap, "entry %zu: duplicate kid (same as entry %zu)", pos, j + 1);
                rc = CRM_E_CONFIG;
                goto error;
            }
        }
        e += n + 1;
    }
    *out = ring;
    return 0;

error:
    crm_jwt_keyring_free(&ring);
    return rc;
}

void crm_jwt_keyring_free(crm_jwt_keyring_t *k)
{
    if (k == NULL)
        return;
    if (k->_keys != NULL) {
        OPENSSL_cleanse(k->_keys, k->count * sizeof(crm_jwt_key_t));
        free(k->_keys);
    }
    k->_keys = NULL;
    k->count = 0;
}

const char *crm_jwt_keyring_kid(const crm_jwt_keyring_t *k, size_t i)
{
    if (k == NULL || i >= k->count)
        return NULL;
    return k->_keys[i].kid;
}

/* ---- sign and verify ---- */

static int hs256(const uint8_t *key, size_t key_len, const char *data, size_t n, uint8_t mac[MAC_LEN])
{
    unsigned int mac_len = 0;
    if (HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)data, n, mac, &mac_len) == NULL ||
        mac_len != MAC_LEN)
        return CRM_E_IO;
    return 0;
}

int crm_jwt_sign(const crm_jwt_keyring_t *k, const json_t *claims, char *out, size_t cap, size_t *len)
{
    if (len == NULL)
        return CRM_E_INVAL;
    *len = 0;
    if (k == NULL || k->count == 0 || claims == NULL || (out == NULL && cap > 0) || !json_is_object(claims) ||
        !json_is_integer(json_object_get(claims, "exp")))
        return CRM_E_INVAL;

    const crm_jwt_key_t *key = &k->_keys[0];
    char header[HEADER_FIXED_LEN + CRM_JWT_KID_MAX + 1];
    /* The kid's alphabet needs no JSON escaping, so the header can be written directly. */
    int hlen = snprintf(header, sizeof header, "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"%s\"}", key->kid);
    if (hlen < 0 || (size_t)hlen >= sizeof header)
        return CRM_E_INVAL;

    char payload[CRM_JWT_CLAIMS_MAX];
    size_t plen = json_dumpb(claims, payload, sizeof payload, JSON_COMPACT | JSON_SORT_KEYS);
    if (plen == 0)
        return CRM_E_INVAL;
    if (plen > sizeof payload)
        return CRM_E_TOO_LARGE;

    size_t h64 = CRM_BASE64URL_ENCODED_LEN((size_t)hlen), p64 = CRM_BASE64URL_ENCODED_LEN(plen);
    size_t total = h64 + 1 + p64 + 1 + MAC_B64_LEN;
    *len = total;
    if (cap < total + 1)
        return CRM_E_TOO_LARGE;

    size_t w = 0;
    crm_base64url_encode(header, (size_t)hlen, out, cap, &w);
    out[h64] = '.';
    crm_base64url_encode(payload, plen, out + h64 + 1, cap - h64 - 1, &w);
    size_t signed_len = h64 + 1 + p64;
    uint8_t mac[MAC_LEN];
    int rc = hs256(key->key, key->key_len, out, signed_len, mac);
    if (rc != 0) {
        *len = 0;
        return rc;
    }
    out[signed_len] = '.';
    crm_base64url_encode(mac, MAC_LEN, out + signed_len + 1, cap - signed_len - 1, &w);
    out[total] = '\0';
    return 0;
}

/* a + b for b >= 0, saturating at INT64_MAX, so that time comparisons near the ends of the range cannot overflow. */
static int64_t sat_add(int64_t a, int64_t b)
{
    return a > INT64_MAX - b ? INT64_MAX : a + b;
}

/* Decodes a base64url segment and parses it as a JSON object within token_json_limits. */
static int decode_json(const char *seg, size_t n, json_t **out)
{
    uint8_t buf[CRM_JWT_MAX_LEN];
    size_t blen = 0;
    *out = NULL;
    if (crm_base64url_decode(seg, n, buf, sizeof buf, &blen) != 0)
        return CRM_E_PARSE;
    json_t *v = NULL;
    int rc = crm_json_parse((const char *)buf, blen, &token_json_limits, &v, NULL);
    if (rc == CRM_E_NOMEM)
        return rc;
    if (rc != 0)
        return CRM_E_PARSE;
    if (!json_is_object(v)) {
        json_decref(v);
        return CRM_E_PARSE;
    }
    *out = v;
    return 0;
}

static int string_is(const json_t *v, const char *s)
{
    size_t n = strlen(s);
    return json_is_string(v) && json_string_length(v) == n && memcmp(json_string_value(v), s, n) == 0;
}

/* Checks exp (required), nbf and iat against now with leeway. */
static int check_times(const json_t *claims, int64_t now, int64_t leeway)
{
    const json_t *exp = json_object_get(claims, "exp");
    const json_t *nbf = json_object_get(claims, "nbf");
    const json_t *iat = json_object_get(claims, "iat");
    if (!json_is_integer(exp) || (nbf != NULL && !json_is_integer(nbf)) || (iat != NULL && !json_is_integer(iat)))
        return CRM_E_INVAL;
    if (now >= sat_add((int64_t)json_integer_value(exp), leeway))
        return CRM_E_DEADLINE;
    int64_t late = sat_add(now, leeway);
    if (nbf != NULL && late < (int64_t)json_integer_value(nbf))
        return CRM_E_STATE;
    if (iat != NULL && (int64_t)json_integer_value(iat) > late)
        return CRM_E_STATE;
    return 0;
}

/*
 * The whole verification; the key is k's entry for the header's kid when k is not NULL, else key[0..key_len).
 */
static int verify(const crm_jwt_keyring_t *k, const uint8_t *key, size_t key_len, const char *token, size_t len,
                  int64_t now, int64_t leeway, json_t **claims_out)
{
    json_t *header = NULL, *claims = NULL;
    int rc = 0;
    if (claims_out != NULL)
        *claims_out = NULL;
    if (token == NULL || leeway < 0 || leeway > CRM_JWT_LEEWAY_MAX)
        return CRM_E_INVAL;
    if (len > CRM_JWT_MAX_LEN)
        return CRM_E_TOO_LARGE;

    const char *dot1 = memchr(token, '.', len);
    if (dot1 == NULL)
        return CRM_E_PARSE;
    const char *dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token));
    if (dot2 == NULL || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) != NULL)
        return CRM_E_PARSE;
    size_t hn = (size_t)(dot1 - token), pn = (size_t)(dot2 - dot1 - 1), sn = len - (size_t)(dot2 + 1 - token);
    const char *pseg = dot1 + 1, *sseg = dot2 + 1;

    uint8_t sig[MAC_LEN];
    size_t siglen = 0;
    if (crm_base64url_decode(sseg, sn, sig, sizeof sig, &siglen) != 0 || siglen != MAC_LEN)
        return CRM_E_PARSE;
    /* Check the payload's encoding now so that a malformed token is CRM_E_PARSE whatever its signature. */
    for (size_t i = 0; i < pn; ++i)
        if (b64_value((unsigned char)pseg[i], 0) < 0)
            return CRM_E_PARSE;

    rc = decode_json(token, hn, &header);
    if (rc != 0)
        goto out;
    const json_t *kid = json_object_get(header, "kid");
    const json_t *typ = json_object_get(header, "typ");
    if (!string_is(json_object_get(header, "alg"), "HS256") || (typ != NULL && !string_is(typ, "JWT")) ||
        json_object_get(header, "crit") != NULL || (kid != NULL && !json_is_string(kid)) ||
        (k != NULL && kid == NULL)) {
        rc = CRM_E_INVAL;
        goto out;
    }
    if (k != NULL) {
        const crm_jwt_key_t *found = NULL;
        size_t kn = json_string_length(kid);
        for (size_t i = 0; i < k->count && found == NULL; ++i)
            if (k->_keys[i].kid_len == kn && memcmp(k->_keys[i].kid, json_string_value(kid), kn) == 0)
                found = &k->_keys[i];
        if (found == NULL) {
            rc = CRM_E_NOT_FOUND;
            goto out;
        }
        key = found->key;
        key_len = found->key_len;
    }

    uint8_t mac[MAC_LEN];
    rc = hs256(key, key_len, token, hn + 1 + pn, mac);
    if (rc != 0)
        goto out;
    int ok = crm_ct_equal(mac, sizeof mac, sig, sizeof sig);
    OPENSSL_cleanse(mac, sizeof mac);
    if (!ok) {
        rc = CRM_E_INVAL;
        goto out;
    }

    rc = decode_json(pseg, pn, &claims);
    if (rc != 0)
        goto out;
    rc = check_times(claims, now, leeway);
    if (rc != 0)
        goto out;
    if (claims_out != NULL) {
        *claims_out = claims;
        claims = NULL;
    }

out:
    json_decref(header);
    json_decref(claims);
    return rc;
}

int crm_jwt_verify(const crm_jwt_keyring_t *k, const char *token, size_t len, int64_t now, int64_t leeway_s,
                   json_t **claims_out)
{
    if (k == NULL || k->count == 0) {
        if (claims_out != NULL)
            *claims_out = NULL;
        return CRM_E_INVAL;
    }
    return verify(k, NULL, 0, token, len, now, leeway_s, claims_out);
}

int crm_jwt_verify_with_key(const uint8_t *key, size_t key_len, const char *token, size_t len, int64_t now,
                            int64_t leeway_s, json_t **claims_out)
{
    if (key == NULL || key_len < CRM_JWT_KEY_MIN || key_len > CRM_JWT_KEY_MAX) {
        if (claims_out != NULL)
            *claims_out = NULL;
        return CRM_E_INVAL;
    }
    return verify(NULL, key, key_len, token, len, now, leeway_s, claims_out);
}
