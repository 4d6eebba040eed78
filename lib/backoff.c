#include "backoff.h"

#include <string.h>

#include "err.h"
#include "rand.h"

#define RETRY_AFTER_MAX_SECONDS (24 * 3600)

uint64_t crm_backoff_cap(uint64_t base_ms, uint64_t max_ms, unsigned attempt)
{
    if (base_ms == 0)
        return 0;
    uint64_t cap = base_ms < max_ms ? base_ms : max_ms;
    /* Doubling stops at max_ms, so cap never overflows whatever the attempt number. */
    for (unsigned i = 1; i < attempt && cap < max_ms; ++i)
        cap = cap > max_ms / 2 ? max_ms : cap * 2;
    return cap;
}

uint64_t crm_backoff_full_jitter(uint64_t base_ms, uint64_t max_ms, unsigned attempt)
{
    uint64_t cap = crm_backoff_cap(base_ms, max_ms, attempt);
    return cap == UINT64_MAX ? crm_rand_u64() : crm_rand_below(cap + 1);
}

/* ---- HTTP-date ---- */

typedef struct {
    const char *p, *end;
} cursor_t;

static int digits(cursor_t *c, size_t min, size_t max, int *out)
{
    size_t n = 0;
    int v = 0;
    while (c->p < c->end && n < max && *c->p >= '0' && *c->p <= '9') {
        v = v * 10 + (*c->p - '0');
        ++c->p;
        ++n;
    }
    if (n < min)
        return -1;
    *out = v;
    return 0;
}

static int literal(cursor_t *c, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, s, n) != 0)
        return -1;
    c->p += n;
    return 0;
}

static int month(cursor_t *c, int *out)
{
    static const char names[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    if (c->end - c->p < 3)
        return -1;
    for (int i = 0; i < 12; ++i) {
        if (memcmp(c->p, names + 3 * i, 3) == 0) {
            *out = i + 1;
            c->p += 3;
            return 0;
        }
    }
    return -1;
}

/* Skips a day name: the three-letter one, or (RFC 850) the full one; its value is not checked against the date,
 * as RFC 9110 lets recipients ignore it. */
static int day_name(cursor_t *c)
{
    const char *start = c->p;
    while (c->p < c->end && ((*c->p >= 'A' && *c->p <= 'Z') || (*c->p >= 'a' && *c->p <= 'z')))
        ++c->p;
    return c->p - start >= 3 ? 0 : -1;
}

static int time_of_day(cursor_t *c, int *h, int *m, int *s)
{
    if (digits(c, 2, 2, h) != 0 || literal(c, ":") != 0 || digits(c, 2, 2, m) != 0 || literal(c, ":") != 0 ||
        digits(c, 2, 2, s) != 0)
        return -1;
    return *h <= 23 && *m <= 59 && *s <= 60 ? 0 : -1;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (Howard Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int valid_day(int y, int m, int d)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return d >= 1 && d <= mdays[m - 1] + (m == 2 && leap);
}

static int http_date(cursor_t *c, int64_t *out)
{
    int y, mo, d, h, mi, s;
    if (day_name(c) != 0)
        return -1;
    if (c->p < c->end && *c->p == ',') {
        ++c->p;
        if (literal(c, " ") != 0 || digits(c, 2, 2, &d) != 0)
            return -1;
        if (c->p < c->end && *c->p == ' ') {
            /* IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT" */
            if (literal(c, " ") != 0 || month(c, &mo) != 0 || literal(c, " ") != 0 || digits(c, 4, 4, &y) != 0)
                return -1;
        } else {
            /* RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"; a two-digit year more than 50 years ahead is in the past
             * century (RFC 9110 §5.6.7). Anchored at 2000 rather than today: retry dates are near the present. */
            if (literal(c, "-") != 0 || month(c, &mo) != 0 || literal(c, "-") != 0 || digits(c, 2, 2, &y) != 0)
                return -1;
            y += y >= 70 ? 1900 : 2000;
        }
        if (literal(c, " ") != 0 || time_of_day(c, &h, &mi, &s) != 0 || literal(c, " GMT") != 0)
            return -1;
    } else {
        /* asctime: "Sun Nov  6 08:49:37 1994" */
        if (literal(c, " ") != 0 || month(c, &mo) != 0 || literal(c, " ") != 0)
            return -1;
        if (c->p < c->end && *c->p == ' ')
            ++c->p;
        if (digits(c, 1, 2, &d) != 0 || literal(c, " ") != 0 || time_of_day(c, &h, &mi, &s) != 0 ||
            literal(c, " ") != 0 || digits(c, 4, 4, &y) != 0)
            return -1;
    }
    if (!valid_day(y, mo, d))
        return -1;
    *out = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + s;
    return 0;
}

int crm_retry_after_parse(const char *value, size_t len, time_t now, uint64_t *out_ms)
{
    cursor_t c = {value, value + len};
    while (c.p < c.end && (*c.p == ' ' || *c.p == '\t'))
        ++c.p;
    while (c.end > c.p && (c.end[-1] == ' ' || c.end[-1] == '\t'))
        --c.end;
    if (c.p == c.end)
        return CRM_E_PARSE;

    if (*c.p >= '0' && *c.p <= '9') {
        uint64_t seconds = 0;
        for (; c.p < c.end; ++c.p) {
            if (*c.p < '0' || *c.p > '9')
                return CRM_E_PARSE;
            if (seconds < RETRY_AFTER_MAX_SECONDS)
                seconds = seconds * 10 + (uint64_t)(*c.p - '0');
        }
        if (seconds > RETRY_AFTER_MAX_SECONDS)
            seconds = RETRY_AFTER_MAX_SECONDS;
        *out_ms = seconds * 1000;
        return 0;
    }

    int64_t at;
    if (http_date(&c, &at) != 0 || c.p != c.end)
        return CRM_E_PARSE;
    int64_t delta = at - (int64_t)now;
    if (delta < 0)
        delta = 0;
    if (delta > RETRY_AFTER_MAX_SECONDS)
        delta = RETRY_AFTER_MAX_SECONDS;
    *out_ms = (uint64_t)delta * 1000;
    return 0;
}
