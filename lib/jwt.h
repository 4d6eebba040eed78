/*
 * JSON Web Tokens (RFC 7519) in JWS compact serialisation (RFC 7515), restricted to HS256: crmd's access tokens
 * (DESIGN.md §5: HS256 with `kid`, several keys accepted for rotation, 15 minutes).
 *
 * Only one algorithm exists here on purpose. The algorithm is never chosen by the token: a header whose alg is not
 * exactly "HS256" is refused, which closes the classic "alg":"none" and algorithm-confusion attacks. The key is
 * chosen by the header's kid among the configured keys and nothing else; an unknown kid is refused rather than
 * tried against every key, so a retired key stops working the moment it leaves the configuration.
 *
 * Verification order, and why: the size and the shape of the token (three base64url segments) are checked before
 * any decoding; the header is decoded and checked next because it names the key; the HMAC over the exact received
 * "header.payload" bytes is compared in constant time; only then is the payload (the claims) parsed, so
 * unauthenticated claim bytes never reach the JSON parser beyond the small header.
 *
 * Errors of crm_jwt_verify (the HTTP layer answers all of them with 401 and must not use crm_err_http_status,
 * which maps CRM_E_DEADLINE to 504 and CRM_E_TOO_LARGE to 413):
 *   CRM_E_TOO_LARGE  the token is longer than CRM_JWT_MAX_LEN;
 *   CRM_E_PARSE      not a well-formed token: not exactly three segments, a segment that is not unpadded
 *                    canonical base64url, a signature that is not 32 bytes, a header or payload that is not a
 *                    JSON object within the limits (depth 4, strings of at most 1024 bytes, 64 array items);
 *   CRM_E_INVAL      a well-formed token that is refused: alg missing or not exactly "HS256", typ present and
 *                    not "JWT", a crit header, kid missing or not a string, a wrong signature, exp missing or not
 *                    an integer, nbf or iat present and not an integer; also invalid arguments (NULL keyring or
 *                    token, a negative or over CRM_JWT_LEEWAY_MAX leeway, a key of the wrong size);
 *   CRM_E_NOT_FOUND  the kid names no configured key (typically a key retired by rotation);
 *   CRM_E_DEADLINE   expired: now >= exp + leeway;
 *   CRM_E_STATE      not yet valid: nbf > now + leeway, or issued in the future: iat > now + leeway;
 *   CRM_E_NOMEM, CRM_E_IO  memory or OpenSSL failed.
 * Error kinds are for logs and metrics (why tokens are refused); they never go to the client.
 *
 * Thread-safety: a keyring is immutable after crm_jwt_keys_parse, so any number of threads may sign and verify
 * with the same keyring at once; it must not be freed while they do. Nothing here blocks or does I/O, except that
 * jansson seeds its hash function from /dev/urandom the first time it ever creates an object (see json.h: call
 * json_object_seed(0) at start-up).
 */
#ifndef CRM_JWT_H
#define CRM_JWT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define CRM_JWT_MAX_LEN    8192 /* longest token accepted by crm_jwt_verify and produced by crm_jwt_sign */
#define CRM_JWT_KID_MAX    64   /* longest kid; a kid is 1..64 characters of [A-Za-z0-9._-] */
#define CRM_JWT_KEY_MIN    32   /* shortest key in bytes: RFC 7518 §3.2 asks for at least the hash size */
#define CRM_JWT_KEY_MAX    256  /* longest key in bytes */
#define CRM_JWT_KEYS_MAX   16   /* most keys in one keyring */
#define CRM_JWT_LEEWAY_MAX 3600 /* largest clock-skew allowance crm_jwt_verify accepts, in seconds */
#define CRM_JWT_CLAIMS_MAX 6000 /* longest compact claims JSON crm_jwt_sign accepts, in bytes */

/* Length of the unpadded base64url encoding of n bytes. */
#define CRM_BASE64URL_ENCODED_LEN(n) ((n) / 3 * 4 + ((n) % 3 == 0 ? 0 : (n) % 3 + 1))

typedef struct st_crm_jwt_key_t {
    char kid[CRM_JWT_KID_MAX + 1]; /* NUL-terminated */
    size_t kid_len;
    uint8_t key[CRM_JWT_KEY_MAX];
    size_t key_len;
} crm_jwt_key_t;

typedef struct st_crm_jwt_keyring_t {
    size_t count;         /* number of keys, 1..CRM_JWT_KEYS_MAX after a successful parse, 0 otherwise */
    crm_jwt_key_t *_keys; /* count entries from malloc; _keys[0] signs, all verify */
} crm_jwt_keyring_t;

/*
 * Parses a key specification "kid:base64key,kid2:base64key2" into *out. Each key is standard or url-safe base64,
 * padding optional, and decodes to CRM_JWT_KEY_MIN..CRM_JWT_KEY_MAX bytes; each kid is 1..CRM_JWT_KID_MAX
 * characters of [A-Za-z0-9._-] and unique; there are 1..CRM_JWT_KEYS_MAX entries; no whitespace anywhere. The
 * first key signs; all of them verify (list the new key first and keep the old one while its tokens live).
 *
 * Returns 0, or CRM_E_CONFIG with *out empty (count 0) and a one-line reason in why[0..whycap) (always
 * NUL-terminated when whycap > 0; "" on success). The reason names entries by position ("entry 2: ...") and never
 * quotes the spec, not even a kid, because a spec with kid and key swapped would put the key where the kid
 * belongs. CRM_E_INVAL when spec or out is NULL; CRM_E_NOMEM when memory runs out. why may be NULL with whycap 0.
 * The keys are copied; the caller should wipe spec itself when it is done with it. Release *out with
 * crm_jwt_keyring_free.
 */
int crm_jwt_keys_parse(const char *spec, crm_jwt_keyring_t *out, char *why, size_t whycap);

/* Wipes the key bytes (OPENSSL_cleanse), frees them and leaves *k empty. Accepts NULL and an empty keyring; the
 * crm_jwt_keyring_t itself belongs to the caller. */
void crm_jwt_keyring_free(crm_jwt_keyring_t *k);

/* The kid of key i (0 is the signing key), or NULL when i >= k->count. For start-up logs; kids are not secret. */
const char *crm_jwt_keyring_kid(const crm_jwt_keyring_t *k, size_t i);

/*
 * Signs claims with the keyring's first key. The header is exactly {"alg":"HS256","typ":"JWT","kid":"<kid>"};
 * the payload is claims serialised with JSON_COMPACT | JSON_SORT_KEYS, so equal claims give equal tokens. claims
 * must be an object with an integer "exp" (a token without one would never expire and crm_jwt_verify refuses it)
 * whose compact form is at most CRM_JWT_CLAIMS_MAX bytes.
 *
 * Writes the token and a NUL terminator to out[0..cap) and sets *len to the token's length without the NUL.
 * Returns 0; CRM_E_TOO_LARGE when cap < *len + 1, with *len set to the token length needed (out unspecified), or
 * when the claims are over CRM_JWT_CLAIMS_MAX (then *len is 0); CRM_E_INVAL for NULL arguments, an empty keyring,
 * claims that are not an object with an integer exp or that jansson cannot encode; CRM_E_IO when OpenSSL fails.
 */
int crm_jwt_sign(const crm_jwt_keyring_t *k, const json_t *claims, char *out, size_t cap, size_t *len);

/*
 * Verifies token[0..len) (need not be NUL-terminated) against the keyring at time now (Unix seconds), allowing
 * leeway_s (0..CRM_JWT_LEEWAY_MAX) seconds of clock skew, as described at the top of this file. On success returns
 * 0 and, when claims_out is not NULL, sets *claims_out to the claims object, a new reference the caller releases
 * with json_decref. On failure returns the error kind listed at the top and sets *claims_out to NULL.
 */
int crm_jwt_verify(const crm_jwt_keyring_t *k, const char *token, size_t len, int64_t now, int64_t leeway_s,
                   json_t **claims_out);

/*
 * Like crm_jwt_verify, but with the single key key[0..key_len) (CRM_JWT_KEY_MIN..CRM_JWT_KEY_MAX bytes) whatever
 * the header's kid says: the kid is then optional, and must be a string when present. Every other check is the
 * same. crm_jwt_verify is this function after the kid lookup; it exists on its own for tokens from elsewhere that
 * carry no kid (RFC 7515's own example) and for tests.
 */
int crm_jwt_verify_with_key(const uint8_t *key, size_t key_len, const char *token, size_t len, int64_t now,
                            int64_t leeway_s, json_t **claims_out);

/*
 * Base64url (RFC 4648 §5) without padding, as JWS uses it.
 *
 * crm_base64url_encode writes exactly CRM_BASE64URL_ENCODED_LEN(n) characters (no NUL) to out[0..cap) and sets
 * *len to that count. Returns 0, or CRM_E_TOO_LARGE when cap is smaller (*len is then the size needed).
 *
 * crm_base64url_decode is strict: only [A-Za-z0-9_-], no padding, no whitespace, a length that is not 1 modulo 4,
 * and zero bits in the unused low bits of the last character, so every byte string has exactly one accepted
 * encoding (no malleable signatures). Writes the bytes to out[0..cap) and sets *len to their count. Returns 0,
 * CRM_E_PARSE for input that is not strict base64url, or CRM_E_TOO_LARGE when cap is too small (*len is then the
 * size needed).
 */
int crm_base64url_encode(const void *in, size_t n, char *out, size_t cap, size_t *len);
int crm_base64url_decode(const char *in, size_t n, uint8_t *out, size_t cap, size_t *len);

#endif
