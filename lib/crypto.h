/*
 * Small cryptographic helpers on OpenSSL. Comparisons of secrets and signatures go through crm_ct_equal so their
 * timing does not depend on where the inputs first differ (DESIGN.md, security standards).
 */
#ifndef CRM_CRYPTO_H
#define CRM_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

/* 1 when a[0..alen) equals b[0..blen), in time that depends only on the lengths. Different lengths compare
 * unequal; the comparison still runs so that a length mismatch is not faster than a content mismatch. */
int crm_ct_equal(const void *a, size_t alen, const void *b, size_t blen);

/* SHA-256 of data into out (32 bytes). Returns 0 or CRM_E_IO. */
int crm_sha256(const void *data, size_t len, uint8_t out[32]);

/* Lower-case hex of n bytes into out (2n+1 bytes, NUL-terminated). */
void crm_hex(const uint8_t *bytes, size_t n, char *out);

#endif
