/*
 * Password hashing with argon2id (libargon2) on the libuv thread pool, and the password policy.
 *
 * Hashing costs tens of milliseconds of CPU and ~19 MiB of memory by design, so it never runs on the loop (DESIGN.md
 * §1, §3 invariant 1): each hash or verification is a uv_queue_work job whose result comes back to the loop. The
 * number of jobs queued or running is bounded (max_in_flight): beyond it a call fails at once with
 * CRM_E_QUEUE_FULL, for the caller to answer 503 with Retry-After (invariant 3). libuv's thread pool is shared with
 * its other users (name resolution for the database pool), so max_in_flight should stay near the pool's size
 * (UV_THREADPOOL_SIZE, 4 by default) for those not to wait behind a queue of hashes.
 *
 * Stored hashes are PHC strings, "$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>": the algorithm, its version and its
 * parameters travel with each hash, so the parameters can be raised later and old hashes still verify; a
 * verification reports needs_rehash when a hash was made with other parameters than the current ones, for the
 * caller to store a fresh hash after a successful login. Defaults are OWASP's argon2id minimum: m=19456 KiB, t=2,
 * p=1, a 16-byte random salt and a 32-byte hash.
 *
 * Unknown accounts: crm_password_verify with encoded NULL verifies against a hash made at create time from a random
 * password, so a login for an address that has no account costs the same time as a wrong password.
 *
 * Callbacks run exactly once, on the loop, never inside the call that started the operation. A caller that goes
 * away detaches its operation: the work finishes on its thread, its result is dropped, its memory freed. Password
 * copies are wiped (OPENSSL_cleanse) as soon as the worker is done with them. Not thread-safe apart from the work
 * itself: everything else belongs to the loop thread.
 */
#ifndef CRM_PASSWORD_H
#define CRM_PASSWORD_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define CRM_PASSWORD_ENCODED_MAX 160 /* longest PHC string accepted or produced, with its NUL */
#define CRM_PASSWORD_MAX_BYTES   1024

typedef struct st_crm_password_params_t {
    uint32_t m_kib; /* memory, KiB: 8 * p .. 4194304 */
    uint32_t t;     /* passes: 1 .. 64 */
    uint32_t p;     /* lanes: 1 .. 16 */
} crm_password_params_t;

/* OWASP's argon2id recommendation: m=19456, t=2, p=1. */
void crm_password_params_default(crm_password_params_t *p);

typedef struct st_crm_password_hasher_t crm_password_hasher_t;
typedef struct st_crm_password_op_t crm_password_op_t;

/*
 * Creates a hasher on loop. Computes the dummy hash for unknown accounts synchronously: call it at start-up, before
 * the loop runs. Returns 0, CRM_E_INVAL (parameters out of range, max_in_flight 0), CRM_E_IO (no randomness),
 * CRM_E_NOMEM.
 */
int crm_password_hasher_create(uv_loop_t *loop, const crm_password_params_t *params, size_t max_in_flight,
                               crm_password_hasher_t **out);

/* Frees the hasher once the operations still on the thread pool have come back: their callbacks (those not
 * detached) then run with CRM_E_SHUTDOWN, from the loop, so that their callers can release what they hold.
 * Accepts NULL. */
void crm_password_hasher_free(crm_password_hasher_t *h);

/* Operations queued or running on the thread pool, detached ones included. */
size_t crm_password_in_flight(const crm_password_hasher_t *h);

/* encoded: the new PHC string (NUL-terminated; valid during the call only) when err is 0. Errors: CRM_E_NOMEM,
 * CRM_E_IO (no randomness), CRM_E_SHUTDOWN (the loop is closing). */
typedef void (*crm_password_hash_cb)(int err, const char *encoded, void *data);

/* match: 1 when the password is right. needs_rehash: with a match, the hash uses other parameters than the hasher's.
 * Errors: CRM_E_PARSE (argon2 could not decode the stored hash), CRM_E_NOMEM, CRM_E_SHUTDOWN. */
typedef void (*crm_password_verify_cb)(int err, int match, int needs_rehash, void *data);

/*
 * Hashes password[0..len) (copied; up to CRM_PASSWORD_MAX_BYTES) with a fresh salt. Returns 0 (cb will run) or, with
 * cb never running: CRM_E_QUEUE_FULL (max_in_flight reached), CRM_E_TOO_LARGE, CRM_E_INVAL, CRM_E_NOMEM, CRM_E_IO.
 * *out (optional) receives a handle for crm_password_op_detach, valid until cb runs.
 */
int crm_password_hash(crm_password_hasher_t *h, const char *password, size_t len, crm_password_hash_cb cb, void *data,
                      crm_password_op_t **out);

/*
 * Verifies password[0..len) against encoded (a stored PHC string, copied), or against the dummy hash when encoded
 * is NULL (the answer is then always "no match", in the time a real verification takes). Same returns as
 * crm_password_hash, and CRM_E_PARSE when encoded is not an argon2id v=19 PHC string whose costs are within
 * m ≤ 256 MiB, t ≤ 64, p ≤ 16 (a corrupted or forged row must not make one verification arbitrarily expensive).
 */
int crm_password_verify(crm_password_hasher_t *h, const char *encoded, const char *password, size_t len,
                        crm_password_verify_cb cb, void *data, crm_password_op_t **out);

/* The caller no longer wants the answer: cb will not run. The work itself cannot be stopped once a thread runs it;
 * it finishes and is freed. */
void crm_password_op_detach(crm_password_op_t *op);

/* ---- policy ---- */

typedef enum {
    CRM_PASSWORD_OK = 0,
    CRM_PASSWORD_TOO_SHORT,    /* fewer than 12 characters (code points) */
    CRM_PASSWORD_TOO_LONG,     /* more than 256 characters or CRM_PASSWORD_MAX_BYTES bytes */
    CRM_PASSWORD_INVALID_UTF8, /* not well-formed UTF-8, or holds a NUL */
    CRM_PASSWORD_COMMON,       /* among the 30,000 most common passwords (case-insensitively) */
    CRM_PASSWORD_IS_EMAIL,     /* equal to the account's email address (case-insensitively) */
} crm_password_verdict_t;

/* Loads the common-password list (compiled into the binary) into memory. Call once at start-up; 0 or CRM_E_NOMEM. */
int crm_password_policy_init(void);

/* Checks a new password against the policy (OWASP ASVS 2.1: 12..256 characters, no common or derived passwords).
 * email may be NULL. Requires crm_password_policy_init. Pure; no I/O. */
crm_password_verdict_t crm_password_policy_check(const char *password, size_t len, const char *email);

/* A short English sentence for a verdict, for a validation problem's message. */
const char *crm_password_verdict_message(crm_password_verdict_t v);

#endif
