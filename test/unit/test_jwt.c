/* Unit tests for lib/jwt: HS256 tokens, RFC 7515's example, every refusal path of verification, key specs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "err.h"
#include "jwt.h"

/* Bytes 0..31, standard base64 with padding. */
#define K1_B64 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
/* Bytes 200..239, url-safe base64 without padding. */
#define K2_B64 "yMnKy8zNzs_Q0dLT1NXW19jZ2tvc3d7f4OHi4-Tl5ufo6err7O3u7w"

static const char *const spec12 = "k1:" K1_B64 ",k2:" K2_B64;

/* RFC 7515 Appendix A.1. */
static const char *const rfc_key_b64 =
    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
static const char *const rfc_token =
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ."
    "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

static void key1(uint8_t k[32])
{
    for (int i = 0; i < 32; ++i)
        k[i] = (uint8_t)i;
}

static void key2(uint8_t k[40])
{
    for (int i = 0; i < 40; ++i)
        k[i] = (uint8_t)(200 + i);
}

/* Builds header.payload.signature from raw JSON texts, signing with HMAC-SHA256 directly (independently of the
 * library's signing path) so that tests can craft tokens the library would never produce. */
static size_t make_token(const uint8_t *key, size_t klen, const char *header, const char *payload, char *out,
                         size_t cap)
{
    size_t n = 0, w = 0;
    assert_int_equal(crm_base64url_encode(header, strlen(header), out, cap, &w), 0);
    n += w;
    out[n++] = '.';
    assert_int_equal(crm_base64url_encode(payload, strlen(payload), out + n, cap - n, &w), 0);
    n += w;
    uint8_t mac[32];
    unsigned int maclen = 0;
    assert_non_null(HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)out, n, mac, &maclen));
    assert_int_equal(maclen, 32);
    out[n++] = '.';
    assert_int_equal(crm_base64url_encode(mac, 32, out + n, cap - n, &w), 0);
    n += w;
    assert_true(n < cap);
    out[n] = '\0';
    return n;
}

static crm_jwt_keyring_t ring12(void)
{
    crm_jwt_keyring_t k;
    char why[160];
    assert_int_equal(crm_jwt_keys_parse(spec12, &k, why, sizeof why), 0);
    assert_string_equal(why, "");
    return k;
}

/* Verifies a token crafted from header and payload with key 1 against the k1,k2 keyring at now 500. */
static int verify_k1(const char *header, const char *payload, int64_t now, int64_t leeway)
{
    uint8_t k[32];
    key1(k);
    char tok[CRM_JWT_MAX_LEN + 64];
    size_t n = make_token(k, sizeof k, header, payload, tok, sizeof tok);
    crm_jwt_keyring_t ring = ring12();
    json_t *claims = (json_t *)1;
    int rc = crm_jwt_verify(&ring, tok, n, now, leeway, &claims);
    if (rc != 0)
        assert_null(claims);
    else
        assert_true(json_is_object(claims));
    json_decref(claims);
    crm_jwt_keyring_free(&ring);
    return rc;
}

#define H1 "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"k1\"}"

static void test_sign_exact_and_round_trip(void **state)
{
    (void)state;
    crm_jwt_keyring_t ring = ring12();
    json_t *c = json_pack("{s:s, s:i, s:i}", "sub", "u1", "iat", 100, "exp", 1000);
    char tok[512];
    size_t len = 0;
    assert_int_equal(crm_jwt_sign(&ring, c, tok, sizeof tok, &len), 0);
    const char *expect = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImsxIn0."
                         "eyJleHAiOjEwMDAsImlhdCI6MTAwLCJzdWIiOiJ1MSJ9."
                         "zl_md6JmcLFkFlpPVO3b2XZsQ8f1gM6xsmakhb2Wg6U";
    assert_string_equal(tok, expect);
    assert_int_equal(len, strlen(expect));

    json_t *out = NULL;
    assert_int_equal(crm_jwt_verify(&ring, tok, len, 500, 0, &out), 0);
    assert_true(json_equal(out, c));
    json_decref(out);
    assert_int_equal(crm_jwt_verify(&ring, tok, len, 500, 0, NULL), 0);

    /* The buffer must hold the NUL too; one byte short reports the length needed. */
    char small[256];
    size_t need = 0;
    assert_int_equal(crm_jwt_sign(&ring, c, small, len, &need), CRM_E_TOO_LARGE);
    assert_int_equal(need, len);
    assert_int_equal(crm_jwt_sign(&ring, c, small, len + 1, &need), 0);
    assert_string_equal(small, expect);
    json_decref(c);
    crm_jwt_keyring_free(&ring);
}

static void test_sign_rejects_bad_claims(void **state)
{
    (void)state;
    crm_jwt_keyring_t ring = ring12();
    char tok[512];
    size_t len = 99;
    json_t *noexp = json_pack("{s:s}", "sub", "u1");
    json_t *strexp = json_pack("{s:s}", "exp", "1000");
    json_t *realexp = json_pack("{s:f}", "exp", 1000.0);
    json_t *arr = json_pack("[i]", 1);
    assert_int_equal(crm_jwt_sign(&ring, noexp, tok, sizeof tok, &len), CRM_E_INVAL);
    assert_int_equal(len, 0);
    assert_int_equal(crm_jwt_sign(&ring, strexp, tok, sizeof tok, &len), CRM_E_INVAL);
    assert_int_equal(crm_jwt_sign(&ring, realexp, tok, sizeof tok, &len), CRM_E_INVAL);
    assert_int_equal(crm_jwt_sign(&ring, arr, tok, sizeof tok, &len), CRM_E_INVAL);
    assert_int_equal(crm_jwt_sign(NULL, noexp, tok, sizeof tok, &len), CRM_E_INVAL);
    crm_jwt_keyring_t empty = {0};
    json_t *ok = json_pack("{s:i}", "exp", 5);
    assert_int_equal(crm_jwt_sign(&empty, ok, tok, sizeof tok, &len), CRM_E_INVAL);

    /* Claims over CRM_JWT_CLAIMS_MAX. */
    char *big = malloc(CRM_JWT_CLAIMS_MAX);
    memset(big, 'a', CRM_JWT_CLAIMS_MAX - 1);
    big[CRM_JWT_CLAIMS_MAX - 1] = '\0';
    json_t *huge = json_pack("{s:i, s:s}", "exp", 5, "x", big);
    char *out = malloc(2 * CRM_JWT_MAX_LEN);
    assert_int_equal(crm_jwt_sign(&ring, huge, out, 2 * CRM_JWT_MAX_LEN, &len), CRM_E_TOO_LARGE);
    assert_int_equal(len, 0);
    free(out);
    free(big);
    json_decref(huge);
    json_decref(ok);
    json_decref(noexp);
    json_decref(strexp);
    json_decref(realexp);
    json_decref(arr);
    crm_jwt_keyring_free(&ring);
}

static void test_rfc7515_a1(void **state)
{
    (void)state;
    uint8_t key[64];
    size_t klen = 0;
    assert_int_equal(crm_base64url_decode(rfc_key_b64, strlen(rfc_key_b64), key, sizeof key, &klen), 0);
    assert_int_equal(klen, 64);
    json_t *claims = NULL;
    assert_int_equal(crm_jwt_verify_with_key(key, klen, rfc_token, strlen(rfc_token), 1300819379, 0, &claims), 0);
    assert_string_equal(json_string_value(json_object_get(claims, "iss")), "joe");
    assert_int_equal(json_integer_value(json_object_get(claims, "exp")), 1300819380);
    assert_true(json_is_true(json_object_get(claims, "http://example.com/is_root")));
    json_decref(claims);
    assert_int_equal(crm_jwt_verify_with_key(key, klen, rfc_token, strlen(rfc_token), 1300819380, 0, &claims),
                     CRM_E_DEADLINE);
    assert_null(claims);

    /* The example has no kid, so a keyring holding the very same key refuses it rather than guessing. */
    crm_jwt_keyring_t ring;
    char spec[128];
    snprintf(spec, sizeof spec, "rfc:%s", rfc_key_b64);
    assert_int_equal(crm_jwt_keys_parse(spec, &ring, NULL, 0), 0);
    assert_int_equal(crm_jwt_verify(&ring, rfc_token, strlen(rfc_token), 1300819379, 0, NULL), CRM_E_INVAL);
    crm_jwt_keyring_free(&ring);

    /* One bit of the key changed. */
    key[0] ^= 1;
    assert_int_equal(crm_jwt_verify_with_key(key, klen, rfc_token, strlen(rfc_token), 1300819379, 0, NULL),
                     CRM_E_INVAL);
    /* Keys outside 32..256 bytes are a programming error. */
    assert_int_equal(crm_jwt_verify_with_key(key, 31, rfc_token, strlen(rfc_token), 1300819379, 0, NULL), CRM_E_INVAL);
    assert_int_equal(crm_jwt_verify_with_key(NULL, 64, rfc_token, strlen(rfc_token), 1300819379, 0, NULL), CRM_E_INVAL);
}

static void test_time_claims(void **state)
{
    (void)state;
    const char *p = "{\"sub\":\"u\",\"exp\":1000}";
    assert_int_equal(verify_k1(H1, p, 999, 0), 0);
    assert_int_equal(verify_k1(H1, p, 1000, 0), CRM_E_DEADLINE);
    assert_int_equal(verify_k1(H1, p, 1001, 0), CRM_E_DEADLINE);
    assert_int_equal(verify_k1(H1, p, 1029, 30), 0);
    assert_int_equal(verify_k1(H1, p, 1030, 30), CRM_E_DEADLINE);

    const char *nbf = "{\"exp\":1000,\"nbf\":600}";
    assert_int_equal(verify_k1(H1, nbf, 500, 0), CRM_E_STATE);
    assert_int_equal(verify_k1(H1, nbf, 500, 99), CRM_E_STATE);
    assert_int_equal(verify_k1(H1, nbf, 500, 100), 0);
    assert_int_equal(verify_k1(H1, nbf, 600, 0), 0);

    const char *iat = "{\"exp\":1000,\"iat\":600}";
    assert_int_equal(verify_k1(H1, iat, 500, 0), CRM_E_STATE);
    assert_int_equal(verify_k1(H1, iat, 599, 0), CRM_E_STATE);
    assert_int_equal(verify_k1(H1, iat, 600, 0), 0);
    assert_int_equal(verify_k1(H1, iat, 550, 50), 0);

    /* The ends of the integer range neither overflow nor wrap around. */
    assert_int_equal(verify_k1(H1, "{\"exp\":9223372036854775807}", INT64_MAX - 1, CRM_JWT_LEEWAY_MAX), 0);
    assert_int_equal(verify_k1(H1, "{\"exp\":-9223372036854775808}", 0, 0), CRM_E_DEADLINE);
    assert_int_equal(verify_k1(H1, "{\"exp\":9223372036854775807,\"nbf\":9223372036854775807}", INT64_MAX - 10, 3600),
                     0);
}

static void test_claim_types(void **state)
{
    (void)state;
    assert_int_equal(verify_k1(H1, "{\"sub\":\"u\"}", 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1(H1, "{\"exp\":\"1000\"}", 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1(H1, "{\"exp\":1000.0}", 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1(H1, "{\"exp\":1e3}", 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1(H1, "{\"exp\":null}", 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1(H1, "{\"exp\":true}", 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1(H1, "{\"exp\":1000,\"nbf\":1.5}", 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1(H1, "{\"exp\":1000,\"iat\":\"100\"}", 500, 0), CRM_E_INVAL);
    /* Beyond int64: jansson refuses the number itself. */
    assert_int_equal(verify_k1(H1, "{\"exp\":9223372036854775808}", 500, 0), CRM_E_PARSE);
    /* Payload that is valid JSON, validly signed, but not an object. */
    assert_int_equal(verify_k1(H1, "[1000]", 500, 0), CRM_E_PARSE);
    assert_int_equal(verify_k1(H1, "{\"exp\":1000", 500, 0), CRM_E_PARSE);
    assert_int_equal(verify_k1(H1, "", 500, 0), CRM_E_PARSE);
    assert_int_equal(verify_k1(H1, "{\"exp\":1000,\"exp\":2000}", 500, 0), CRM_E_PARSE);
    /* Limits: depth 4, strings of 1024 bytes. */
    assert_int_equal(verify_k1(H1, "{\"exp\":1000,\"a\":[[[1]]]}", 500, 0), 0);
    assert_int_equal(verify_k1(H1, "{\"exp\":1000,\"a\":[[[[1]]]]}", 500, 0), CRM_E_PARSE);
    char p[1200];
    snprintf(p, sizeof p, "{\"exp\":1000,\"s\":\"%01024d\"}", 7);
    assert_int_equal(verify_k1(H1, p, 500, 0), 0);
    snprintf(p, sizeof p, "{\"exp\":1000,\"s\":\"%01025d\"}", 7);
    assert_int_equal(verify_k1(H1, p, 500, 0), CRM_E_PARSE);
}

static void test_header_checks(void **state)
{
    (void)state;
    const char *p = "{\"exp\":1000}";
    assert_int_equal(verify_k1("{\"alg\":\"HS256\",\"kid\":\"k1\"}", p, 500, 0), 0);
    assert_int_equal(verify_k1("{\"kid\":\"k1\",\"alg\":\"HS256\",\"typ\":\"JWT\",\"x\":1}", p, 500, 0), 0);
    assert_int_equal(verify_k1("{\"alg\":\"none\",\"typ\":\"JWT\",\"kid\":\"k1\"}", p, 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1("{\"alg\":\"HS512\",\"typ\":\"JWT\",\"kid\":\"k1\"}", p, 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1("{\"alg\":\"hs256\",\"typ\":\"JWT\",\"kid\":\"k1\"}", p, 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1("{\"alg\":\"HS256 \",\"kid\":\"k1\"}", p, 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1("{\"alg\":\"RS256\",\"kid\":\"k1\"}", p, 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1("{\"typ\":\"JWT\",\"kid\":\"k1\"}", p, 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1("{\"alg\":256,\"kid\":\"k1\"}", p, 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1("{\"alg\":[\"HS256\"],\"kid\":\"k1\"}", p, 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1("{\"alg\":\"HS256\",\"typ\":\"jwt\",\"kid\":\"k1\"}", p, 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1("{\"alg\":\"HS256\",\"typ\":null,\"kid\":\"k1\"}", p, 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1("{\"alg\":\"HS256\",\"kid\":\"k1\",\"crit\":[\"exp\"]}", p, 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1("{\"alg\":\"HS256\",\"kid\":\"k1\",\"crit\":[]}", p, 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1("{\"alg\":\"HS256\"}", p, 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1("{\"alg\":\"HS256\",\"kid\":1}", p, 500, 0), CRM_E_INVAL);
    assert_int_equal(verify_k1("{\"alg\":\"HS256\",\"kid\":\"k3\"}", p, 500, 0), CRM_E_NOT_FOUND);
    assert_int_equal(verify_k1("{\"alg\":\"HS256\",\"kid\":\"\"}", p, 500, 0), CRM_E_NOT_FOUND);
    assert_int_equal(verify_k1("{\"alg\":\"HS256\",\"kid\":\"K1\"}", p, 500, 0), CRM_E_NOT_FOUND);
    /* Header not an object, not JSON, duplicate members. */
    assert_int_equal(verify_k1("[\"HS256\"]", p, 500, 0), CRM_E_PARSE);
    assert_int_equal(verify_k1("\"HS256\"", p, 500, 0), CRM_E_PARSE);
    assert_int_equal(verify_k1("{alg:HS256}", p, 500, 0), CRM_E_PARSE);
    assert_int_equal(verify_k1("", p, 500, 0), CRM_E_PARSE);
    assert_int_equal(verify_k1("{\"alg\":\"HS256\",\"alg\":\"none\",\"kid\":\"k1\"}", p, 500, 0), CRM_E_PARSE);
}

static void test_keys_and_kids(void **state)
{
    (void)state;
    const char *p = "{\"exp\":1000}";
    uint8_t k1[32], k2[40], other[32];
    key1(k1);
    key2(k2);
    memset(other, 7, sizeof other);
    char tok[512];
    crm_jwt_keyring_t ring = ring12();

    /* The second key verifies tokens that name it. */
    size_t n = make_token(k2, sizeof k2, "{\"alg\":\"HS256\",\"kid\":\"k2\"}", p, tok, sizeof tok);
    assert_int_equal(crm_jwt_verify(&ring, tok, n, 500, 0, NULL), 0);
    /* ... but not tokens signed with it that name the first: no falling back to the other keys. */
    n = make_token(k2, sizeof k2, "{\"alg\":\"HS256\",\"kid\":\"k1\"}", p, tok, sizeof tok);
    assert_int_equal(crm_jwt_verify(&ring, tok, n, 500, 0, NULL), CRM_E_INVAL);
    /* A key that is in no configuration. */
    n = make_token(other, sizeof other, H1, p, tok, sizeof tok);
    assert_int_equal(crm_jwt_verify(&ring, tok, n, 500, 0, NULL), CRM_E_INVAL);
    /* A valid signature under a kid that is not configured. */
    n = make_token(k1, sizeof k1, "{\"alg\":\"HS256\",\"kid\":\"k3\"}", p, tok, sizeof tok);
    assert_int_equal(crm_jwt_verify(&ring, tok, n, 500, 0, NULL), CRM_E_NOT_FOUND);

    /* Rotation: the new keyring signs with k2 and still accepts k1; the old one accepts k2's tokens. */
    crm_jwt_keyring_t rotated;
    assert_int_equal(crm_jwt_keys_parse("k2:" K2_B64 ",k1:" K1_B64, &rotated, NULL, 0), 0);
    assert_string_equal(crm_jwt_keyring_kid(&rotated, 0), "k2");
    json_t *c = json_pack("{s:i}", "exp", 1000);
    size_t len = 0;
    assert_int_equal(crm_jwt_sign(&rotated, c, tok, sizeof tok, &len), 0);
    assert_int_equal(crm_jwt_verify(&ring, tok, len, 500, 0, NULL), 0);
    assert_int_equal(crm_jwt_verify(&rotated, tok, len, 500, 0, NULL), 0);
    crm_jwt_keyring_t only1;
    assert_int_equal(crm_jwt_keys_parse("k1:" K1_B64, &only1, NULL, 0), 0);
    assert_int_equal(crm_jwt_verify(&only1, tok, len, 500, 0, NULL), CRM_E_NOT_FOUND);
    json_decref(c);
    crm_jwt_keyring_free(&only1);
    crm_jwt_keyring_free(&rotated);
    crm_jwt_keyring_free(&ring);
}

static void test_tampering(void **state)
{
    (void)state;
    uint8_t k1[32];
    key1(k1);
    char tok[512], bad[600];
    size_t n = make_token(k1, sizeof k1, H1, "{\"exp\":1000,\"sub\":\"alice\"}", tok, sizeof tok);
    crm_jwt_keyring_t ring = ring12();
    assert_int_equal(crm_jwt_verify(&ring, tok, n, 500, 0, NULL), 0);
    const char *d1 = strchr(tok, '.'), *d2 = strrchr(tok, '.');

    /* One character of the payload: still valid base64url and valid JSON, only the signature catches it. */
    memcpy(bad, tok, n + 1);
    size_t at = (size_t)(d1 - tok) + 3;
    bad[at] = bad[at] == 'A' ? 'B' : 'A';
    assert_int_equal(crm_jwt_verify(&ring, bad, n, 500, 0, NULL), CRM_E_INVAL);
    /* One character of the header. */
    memcpy(bad, tok, n + 1);
    bad[5] = bad[5] == 'A' ? 'B' : 'A';
    int rc = crm_jwt_verify(&ring, bad, n, 500, 0, NULL);
    assert_true(rc == CRM_E_INVAL || rc == CRM_E_PARSE);
    /* The first and a middle character of the signature. */
    memcpy(bad, tok, n + 1);
    at = (size_t)(d2 - tok) + 1;
    bad[at] = bad[at] == 'A' ? 'B' : 'A';
    assert_int_equal(crm_jwt_verify(&ring, bad, n, 500, 0, NULL), CRM_E_INVAL);
    memcpy(bad, tok, n + 1);
    at = (size_t)(d2 - tok) + 20;
    bad[at] = bad[at] == 'A' ? 'B' : 'A';
    assert_int_equal(crm_jwt_verify(&ring, bad, n, 500, 0, NULL), CRM_E_INVAL);
    /* A truncated signature (42 characters cannot be 32 bytes) and a missing one. */
    assert_int_equal(crm_jwt_verify(&ring, tok, n - 1, 500, 0, NULL), CRM_E_PARSE);
    assert_int_equal(crm_jwt_verify(&ring, tok, (size_t)(d2 - tok) + 1, 500, 0, NULL), CRM_E_PARSE);
    /* A non-canonical last character: 43 characters carry 258 bits, the last two must be zero. */
    memcpy(bad, tok, n + 1);
    char last = bad[n - 1];
    bad[n - 1] = (char)(last == 'A' ? 'B' : last == 'z' ? 'y' : last + 1);
    rc = crm_jwt_verify(&ring, bad, n, 500, 0, NULL);
    assert_true(rc == CRM_E_PARSE || rc == CRM_E_INVAL);
    crm_jwt_keyring_free(&ring);
}

static void test_structure(void **state)
{
    (void)state;
    uint8_t k1[32];
    key1(k1);
    char tok[512], bad[600];
    size_t n = make_token(k1, sizeof k1, H1, "{\"exp\":1000}", tok, sizeof tok);
    crm_jwt_keyring_t ring = ring12();

    snprintf(bad, sizeof bad, "%s.", tok);
    assert_int_equal(crm_jwt_verify(&ring, bad, strlen(bad), 500, 0, NULL), CRM_E_PARSE);
    snprintf(bad, sizeof bad, "%s.eyJ9", tok);
    assert_int_equal(crm_jwt_verify(&ring, bad, strlen(bad), 500, 0, NULL), CRM_E_PARSE);
    snprintf(bad, sizeof bad, "%s=", tok);
    assert_int_equal(crm_jwt_verify(&ring, bad, strlen(bad), 500, 0, NULL), CRM_E_PARSE);
    snprintf(bad, sizeof bad, "%s\n", tok);
    assert_int_equal(crm_jwt_verify(&ring, bad, strlen(bad), 500, 0, NULL), CRM_E_PARSE);
    snprintf(bad, sizeof bad, " %s", tok);
    assert_int_equal(crm_jwt_verify(&ring, bad, strlen(bad), 500, 0, NULL), CRM_E_PARSE);
    /* Two segments, one, none. */
    const char *d2 = strrchr(tok, '.');
    assert_int_equal(crm_jwt_verify(&ring, tok, (size_t)(d2 - tok), 500, 0, NULL), CRM_E_PARSE);
    assert_int_equal(crm_jwt_verify(&ring, tok, (size_t)(strchr(tok, '.') - tok), 500, 0, NULL), CRM_E_PARSE);
    assert_int_equal(crm_jwt_verify(&ring, "", 0, 500, 0, NULL), CRM_E_PARSE);
    assert_int_equal(crm_jwt_verify(&ring, "..", 2, 500, 0, NULL), CRM_E_PARSE);
    /* Characters outside base64url in each segment, and a NUL inside the token. */
    const char *subst[] = {"+", "/", "=", " ", "%", "\x80"};
    for (size_t i = 0; i < sizeof subst / sizeof subst[0]; ++i) {
        size_t positions[] = {2, (size_t)(strchr(tok, '.') - tok) + 2, (size_t)(d2 - tok) + 2};
        for (size_t j = 0; j < 3; ++j) {
            memcpy(bad, tok, n + 1);
            bad[positions[j]] = subst[i][0];
            assert_int_equal(crm_jwt_verify(&ring, bad, n, 500, 0, NULL), CRM_E_PARSE);
        }
    }
    memcpy(bad, tok, n + 1);
    bad[10] = '\0';
    assert_int_equal(crm_jwt_verify(&ring, bad, n, 500, 0, NULL), CRM_E_PARSE);

    /* A padded header segment: {"alg":"HS256","kid":"k1"} is 26 bytes, whose padded encoding ends in one '='. */
    char payload_sig[512];
    size_t m = make_token(k1, sizeof k1, "{\"alg\":\"HS256\",\"kid\":\"k1\"}", "{\"exp\":1000}", payload_sig,
                          sizeof payload_sig);
    assert_int_equal(crm_jwt_verify(&ring, payload_sig, m, 500, 0, NULL), 0);
    const char *dot = strchr(payload_sig, '.');
    snprintf(bad, sizeof bad, "%.*s=%s", (int)(dot - payload_sig), payload_sig, dot);
    assert_int_equal(crm_jwt_verify(&ring, bad, strlen(bad), 500, 0, NULL), CRM_E_PARSE);

    /* Size: one byte over the limit fails before anything else; at the limit the shape decides. */
    char *huge = malloc(CRM_JWT_MAX_LEN + 2);
    memset(huge, 'A', CRM_JWT_MAX_LEN + 1);
    huge[CRM_JWT_MAX_LEN + 1] = '\0';
    assert_int_equal(crm_jwt_verify(&ring, huge, CRM_JWT_MAX_LEN + 1, 500, 0, NULL), CRM_E_TOO_LARGE);
    assert_int_equal(crm_jwt_verify(&ring, huge, CRM_JWT_MAX_LEN, 500, 0, NULL), CRM_E_PARSE);
    free(huge);

    /* Arguments. */
    json_t *claims = (json_t *)1;
    assert_int_equal(crm_jwt_verify(&ring, tok, n, 500, -1, &claims), CRM_E_INVAL);
    assert_null(claims);
    assert_int_equal(crm_jwt_verify(&ring, tok, n, 500, CRM_JWT_LEEWAY_MAX + 1, NULL), CRM_E_INVAL);
    assert_int_equal(crm_jwt_verify(&ring, tok, n, 500, CRM_JWT_LEEWAY_MAX, NULL), 0);
    assert_int_equal(crm_jwt_verify(&ring, NULL, 0, 500, 0, NULL), CRM_E_INVAL);
    claims = (json_t *)1;
    assert_int_equal(crm_jwt_verify(NULL, tok, n, 500, 0, &claims), CRM_E_INVAL);
    assert_null(claims);
    crm_jwt_keyring_t empty = {0};
    assert_int_equal(crm_jwt_verify(&empty, tok, n, 500, 0, NULL), CRM_E_INVAL);
    crm_jwt_keyring_free(&ring);
}

static void test_large_valid_token(void **state)
{
    (void)state;
    /* Claims of several kilobytes, each string within the 1024-byte limit, make a token that verifies. */
    crm_jwt_keyring_t ring = ring12();
    json_t *c = json_object();
    json_object_set_new(c, "exp", json_integer(1000));
    char name[8], val[1001];
    memset(val, 'v', 1000);
    val[1000] = '\0';
    for (int i = 0; i < 5; ++i) {
        snprintf(name, sizeof name, "c%d", i);
        json_object_set_new(c, name, json_string(val));
    }
    char *tok = malloc(CRM_JWT_MAX_LEN + 1);
    size_t len = 0;
    assert_int_equal(crm_jwt_sign(&ring, c, tok, CRM_JWT_MAX_LEN + 1, &len), 0);
    assert_true(len > 6000 && len <= CRM_JWT_MAX_LEN);
    json_t *out = NULL;
    assert_int_equal(crm_jwt_verify(&ring, tok, len, 500, 0, &out), 0);
    assert_true(json_equal(out, c));
    json_decref(out);
    free(tok);
    json_decref(c);
    crm_jwt_keyring_free(&ring);
}

/* Parses spec expecting CRM_E_CONFIG with exactly message; the message must not contain secret. */
static void expect_spec_error(const char *spec, const char *message, const char *secret)
{
    crm_jwt_keyring_t k = {.count = 9, ._keys = (crm_jwt_key_t *)1};
    char why[160];
    int rc = crm_jwt_keys_parse(spec, &k, why, sizeof why);
    if (rc != CRM_E_CONFIG)
        fail_msg("spec %s: rc %d", spec, rc);
    assert_string_equal(why, message);
    assert_int_equal(k.count, 0);
    assert_null(k._keys);
    if (secret != NULL)
        assert_null(strstr(why, secret));
}

static void test_keys_parse(void **state)
{
    (void)state;
    crm_jwt_keyring_t k;
    char why[160] = "x";
    assert_int_equal(crm_jwt_keys_parse(spec12, &k, why, sizeof why), 0);
    assert_string_equal(why, "");
    assert_int_equal(k.count, 2);
    assert_string_equal(crm_jwt_keyring_kid(&k, 0), "k1");
    assert_string_equal(crm_jwt_keyring_kid(&k, 1), "k2");
    assert_null(crm_jwt_keyring_kid(&k, 2));
    uint8_t k1[32], k2[40];
    key1(k1);
    key2(k2);
    assert_int_equal(k._keys[0].key_len, 32);
    assert_memory_equal(k._keys[0].key, k1, 32);
    assert_int_equal(k._keys[1].key_len, 40);
    assert_memory_equal(k._keys[1].key, k2, 40);
    crm_jwt_keyring_free(&k);
    assert_int_equal(k.count, 0);
    assert_null(k._keys);
    crm_jwt_keyring_free(&k);
    crm_jwt_keyring_free(NULL);
    assert_null(crm_jwt_keyring_kid(NULL, 0));

    /* Both alphabets, with and without padding, and every kid character. */
    assert_int_equal(crm_jwt_keys_parse("a.B_9-z:"
                                        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
                                        &k, NULL, 0),
                     0);
    assert_string_equal(crm_jwt_keyring_kid(&k, 0), "a.B_9-z");
    crm_jwt_keyring_free(&k);
    /* 33 bytes of 0xfb: standard "+/", url "-_". */
    const char *std33 = "x:+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7+/v7";
    const char *url33 = "x:-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7";
    assert_int_equal(crm_jwt_keys_parse(std33, &k, NULL, 0), 0);
    assert_int_equal(k._keys[0].key_len, 33);
    assert_int_equal(k._keys[0].key[32], 0xfb);
    crm_jwt_keyring_free(&k);
    assert_int_equal(crm_jwt_keys_parse(url33, &k, NULL, 0), 0);
    assert_int_equal(k._keys[0].key[0], 0xfb);
    crm_jwt_keyring_free(&k);

    /* Short key: 31 bytes. */
    const char *short_b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg";
    char spec[2048];
    snprintf(spec, sizeof spec, "k1:%s", short_b64);
    expect_spec_error(spec, "entry 1: key decodes to 31 bytes, at least 32 required", short_b64);
    snprintf(spec, sizeof spec, "k1:" K1_B64 ",k2:%s", short_b64);
    expect_spec_error(spec, "entry 2: key decodes to 31 bytes, at least 32 required", short_b64);
    /* Long key: 257 bytes (344 characters). */
    char longkey[400];
    memset(longkey, 'Q', 344);
    longkey[344] = '\0';
    snprintf(spec, sizeof spec, "k:%s", longkey);
    expect_spec_error(spec, "entry 1: key decodes to 258 bytes, at most 256 allowed", NULL);
    memset(longkey, 'Q', 340);
    memcpy(longkey + 340, "QQ==", 5);
    snprintf(spec, sizeof spec, "k:%s", longkey);
    crm_jwt_keyring_t max;
    assert_int_equal(crm_jwt_keys_parse(spec, &max, NULL, 0), 0);
    assert_int_equal(max._keys[0].key_len, 256);
    crm_jwt_keyring_free(&max);
    memcpy(longkey + 340, "QQQ=", 5);
    snprintf(spec, sizeof spec, "k:%s", longkey);
    expect_spec_error(spec, "entry 1: key decodes to 257 bytes, at most 256 allowed", NULL);
}

static void test_keys_parse_errors(void **state)
{
    (void)state;
    const char *secret = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd";
    expect_spec_error("", "no keys given", NULL);
    expect_spec_error("k1:" K1_B64 ",", "entry 2 is empty", K1_B64);
    expect_spec_error(",k1:" K1_B64, "entry 1 is empty", K1_B64);
    expect_spec_error("k1:" K1_B64 ",,k2:" K2_B64, "entry 2 is empty", K1_B64);
    expect_spec_error("k1:" K1_B64 ",k1:" K2_B64, "entry 2: duplicate kid (same as entry 1)", K2_B64);
    expect_spec_error(K1_B64, "entry 1 has no ':' between kid and key", "AAECAwQF");
    expect_spec_error(":" K1_B64, "entry 1: kid must be 1 to 64 characters", "AAECAwQF");
    expect_spec_error("k/1:" K1_B64, "entry 1: kid may contain only A-Z a-z 0-9 . _ -", "AAECAwQF");
    expect_spec_error("k1:" K1_B64 "\n", "whitespace is not allowed in the key list (at offset 47)", "AAECAwQF");
    expect_spec_error("k1: " K1_B64, "whitespace is not allowed in the key list (at offset 3)", "AAECAwQF");
    expect_spec_error("k1:" K1_B64 ", k2:" K2_B64, "whitespace is not allowed in the key list (at offset 48)",
                      "AAECAwQF");
    expect_spec_error("k1:", "entry 1: key decodes to 0 bytes, at least 32 required", NULL);
    expect_spec_error("k1:AAEC!wQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8", "entry 1: key is not valid base64", secret);
    expect_spec_error("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8AA", "entry 1: key is not valid base64", secret);
    /* Non-canonical final character ("Hh9" leaves two one bits over). */
    expect_spec_error("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9", "entry 1: key is not valid base64", secret);
    expect_spec_error("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8==",
                      "entry 1: key is not valid base64 (incomplete padding)", secret);
    expect_spec_error("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd=Hh8", "entry 1: key is not valid base64", secret);
    expect_spec_error("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh==", "entry 1: key is not valid base64", secret);
    expect_spec_error("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8===",
                      "entry 1: key is not valid base64 (incomplete padding)", secret);
    char longkid[128];
    memset(longkid, 'k', 65);
    snprintf(longkid + 65, sizeof longkid - 65, ":%s", K1_B64);
    expect_spec_error(longkid, "entry 1: kid must be 1 to 64 characters", "AAECAwQF");
    crm_jwt_keyring_t k;
    longkid[64] = ':';
    snprintf(longkid + 65, sizeof longkid - 65, "%s", K1_B64);
    assert_int_equal(crm_jwt_keys_parse(longkid, &k, NULL, 0), 0);
    assert_int_equal(strlen(crm_jwt_keyring_kid(&k, 0)), 64);
    crm_jwt_keyring_free(&k);

    /* 16 keys are fine, 17 are not. */
    char spec[17 * 64];
    size_t o = 0;
    for (int i = 0; i < 16; ++i)
        o += (size_t)snprintf(spec + o, sizeof spec - o, "%sk%d:%s", i ? "," : "", i, K1_B64);
    assert_int_equal(crm_jwt_keys_parse(spec, &k, NULL, 0), 0);
    assert_int_equal(k.count, 16);
    assert_string_equal(crm_jwt_keyring_kid(&k, 15), "k15");
    crm_jwt_keyring_free(&k);
    snprintf(spec + o, sizeof spec - o, ",k16:%s", K1_B64);
    expect_spec_error(spec, "17 keys given, at most 16 allowed", "AAECAwQF");

    /* Programming errors. */
    assert_int_equal(crm_jwt_keys_parse(NULL, &k, NULL, 0), CRM_E_INVAL);
    assert_int_equal(crm_jwt_keys_parse("k1:" K1_B64, NULL, NULL, 0), CRM_E_INVAL);
    /* A tiny why buffer is truncated but terminated. */
    char why[8];
    assert_int_equal(crm_jwt_keys_parse("", &k, why, sizeof why), CRM_E_CONFIG);
    assert_string_equal(why, "no keys");
}

static void test_base64url(void **state)
{
    (void)state;
    static const char *const vec[][2] = {
        {"", ""},           {"f", "Zg"},          {"fo", "Zm8"},         {"foo", "Zm9v"},
        {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"}};
    char enc[32];
    uint8_t dec[32];
    size_t n = 0;
    for (size_t i = 0; i < sizeof vec / sizeof vec[0]; ++i) {
        assert_int_equal(crm_base64url_encode(vec[i][0], strlen(vec[i][0]), enc, sizeof enc, &n), 0);
        assert_int_equal(n, strlen(vec[i][1]));
        assert_memory_equal(enc, vec[i][1], n);
        assert_int_equal(CRM_BASE64URL_ENCODED_LEN(strlen(vec[i][0])), n);
        assert_int_equal(crm_base64url_decode(vec[i][1], strlen(vec[i][1]), dec, sizeof dec, &n), 0);
        assert_int_equal(n, strlen(vec[i][0]));
        assert_memory_equal(dec, vec[i][0], n);
    }
    const uint8_t hi[] = {0xfb, 0xff, 0xbf};
    assert_int_equal(crm_base64url_encode(hi, 3, enc, sizeof enc, &n), 0);
    assert_int_equal(n, 4);
    assert_memory_equal(enc, "-_-_", 4);
    assert_int_equal(crm_base64url_decode("-_-_", 4, dec, sizeof dec, &n), 0);
    assert_memory_equal(dec, hi, 3);

    assert_int_equal(crm_base64url_decode("+/+/", 4, dec, sizeof dec, &n), CRM_E_PARSE);
    assert_int_equal(crm_base64url_decode("Zg==", 4, dec, sizeof dec, &n), CRM_E_PARSE);
    assert_int_equal(crm_base64url_decode("Z", 1, dec, sizeof dec, &n), CRM_E_PARSE);
    assert_int_equal(crm_base64url_decode("Zm9vY", 5, dec, sizeof dec, &n), CRM_E_PARSE);
    assert_int_equal(crm_base64url_decode("Zh", 2, dec, sizeof dec, &n), CRM_E_PARSE);
    assert_int_equal(crm_base64url_decode("Zm9", 3, dec, sizeof dec, &n), CRM_E_PARSE);
    assert_int_equal(crm_base64url_decode("Zm 9v", 5, dec, sizeof dec, &n), CRM_E_PARSE);

    assert_int_equal(crm_base64url_encode("foobar", 6, enc, 7, &n), CRM_E_TOO_LARGE);
    assert_int_equal(n, 8);
    assert_int_equal(crm_base64url_decode("Zm9vYmFy", 8, dec, 5, &n), CRM_E_TOO_LARGE);
    assert_int_equal(n, 6);
    assert_int_equal(crm_base64url_decode("Zm9vYmFy", 8, dec, 6, &n), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_exact_and_round_trip),
        cmocka_unit_test(test_sign_rejects_bad_claims),
        cmocka_unit_test(test_rfc7515_a1),
        cmocka_unit_test(test_time_claims),
        cmocka_unit_test(test_claim_types),
        cmocka_unit_test(test_header_checks),
        cmocka_unit_test(test_keys_and_kids),
        cmocka_unit_test(test_tampering),
        cmocka_unit_test(test_structure),
        cmocka_unit_test(test_large_valid_token),
        cmocka_unit_test(test_keys_parse),
        cmocka_unit_test(test_keys_parse_errors),
        cmocka_unit_test(test_base64url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
