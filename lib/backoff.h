/*
 * Retry timing shared by every retrying part of crmd: the PostgreSQL pool's reconnects, outbound HTTP retries and
 * the job queue (DESIGN.md §3, invariant 9).
 *
 * Backoff is exponential with full jitter (the AWS Architecture Blog analysis): the wait before retry n is uniform in
 * [0, min(max, base * 2^(n-1))]. Full jitter spreads the clients that failed together over the whole interval, so a
 * dependency that comes back is not hit by all of them in the same millisecond.
 *
 * Retry-After (RFC 9110 §10.2.3) is either delay-seconds or an HTTP-date. Both forms are parsed without the C
 * library's locale-dependent functions. Pure functions; thread-safe (the jitter uses the thread-local generator of
 * rand.h).
 */
#ifndef CRM_BACKOFF_H
#define CRM_BACKOFF_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* The full-jitter wait before retry `attempt` (1 = the first retry): uniform in [0, min(max_ms, base_ms * 2^(attempt
 * - 1))]. attempt 0 is treated as 1; a base of 0 gives 0. Never overflows. */
uint64_t crm_backoff_full_jitter(uint64_t base_ms, uint64_t max_ms, unsigned attempt);

/* The cap of that interval, min(max_ms, base_ms * 2^(attempt - 1)), for tests and documentation. */
uint64_t crm_backoff_cap(uint64_t base_ms, uint64_t max_ms, unsigned attempt);

/*
 * Parses a Retry-After value of len bytes (surrounding whitespace allowed): delay-seconds (1*DIGIT) or an HTTP-date
 * in any of the three forms RFC 9110 §5.6.7 requires recipients to accept (IMF-fixdate "Sun, 06 Nov 1994 08:49:37
 * GMT", obsolete RFC 850 "Sunday, 06-Nov-94 08:49:37 GMT" and asctime "Sun Nov  6 08:49:37 1994"). now is the
 * current wall-clock time; a date in the past gives 0. Delays are capped at one day, so an absurd value cannot
 * overflow anything. Returns 0 with *out_ms set, or CRM_E_PARSE.
 */
int crm_retry_after_parse(const char *value, size_t len, time_t now, uint64_t *out_ms);

#endif
