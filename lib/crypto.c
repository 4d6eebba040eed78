#include "crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "err.h"

int crm_ct_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    /* Compare b against itself when lengths differ so that the work done is the same as for an equal-length
     * mismatch; CRYPTO_memcmp is OpenSSL's constant-time comparison. */
    const void *other = alen == blen ? a : b;
    int same = CRYPTO_memcmp(other, b, blen) == 0;
    return same & (alen == blen);
}

int crm_sha256(const void *data, size_t len, uint8_t out[32])
{
    unsigned int outlen = 0;
    if (EVP_Digest(data, len, out, &outlen, EVP_sha256(), NULL) != 1 || outlen != 32)
        return CRM_E_IO;
    return 0;
}

void crm_hex(const uint8_t *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; ++i) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = '\0';
}
