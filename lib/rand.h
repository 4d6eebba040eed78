/*
 * Randomness.
 *
 * Two kinds, never to be confused: crm_random_bytes is cryptographically secure (OpenSSL's CSPRNG) and is what
 * tokens, keys and salts use; crm_rand_u64 is a fast non-cryptographic generator (xoshiro256**, one state per
 * thread, seeded from the CSPRNG) for backoff jitter and request ids, where unpredictability does not matter
 * and the cost per request does.
 */
#ifndef CRM_RAND_H
#define CRM_RAND_H

#include <stddef.h>
#include <stdint.h>

/* Fills buf with n cryptographically secure random bytes. Returns 0 or CRM_E_IO. */
int crm_random_bytes(void *buf, size_t n);

/* Fast, thread-local, non-cryptographic 64-bit random number. */
uint64_t crm_rand_u64(void);

/* Uniform in [0, bound) (bound > 0), without modulo bias. */
uint64_t crm_rand_below(uint64_t bound);

/* Writes a random (version 4, RFC 9562) UUID in canonical lower-case form plus NUL: 37 bytes. Uses the fast
 * generator: good for identifiers, not for secrets. */
void crm_uuid_v4(char out[37]);

#endif
