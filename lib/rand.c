#include "rand.h"

#include <openssl/rand.h>
#include <string.h>

#include "err.h"

int crm_random_bytes(void *buf, size_t n)
{
    while (n > 0) {
        int chunk = n > (1u << 30) ? (1 << 30) : (int)n;
        if (RAND_bytes(buf, chunk) != 1)
            return CRM_E_IO;
        buf = (char *)buf + chunk;
        n -= (size_t)chunk;
    }
    return 0;
}

static __thread uint64_t state[4];
static __thread int seeded;

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static void seed(void)
{
    /* An all-zero state would be a fixed point; the CSPRNG makes that impossible in practice, and the constant
     * below makes it impossible even if the CSPRNG failed. */
    if (crm_random_bytes(state, sizeof(state)) != 0 || (state[0] | state[1] | state[2] | state[3]) == 0) {
        state[0] = 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)&state;
        state[1] = 0xbf58476d1ce4e5b9ull;
        state[2] = 0x94d049bb133111ebull;
        state[3] = 0x2545f4914f6cdd1dull;
    }
    seeded = 1;
}

uint64_t crm_rand_u64(void)
{
    if (!seeded)
        seed();
    uint64_t result = rotl(state[1] * 5, 7) * 9;
    uint64_t t = state[1] << 17;
    state[2] ^= state[0];
    state[3] ^= state[1];
    state[1] ^= state[2];
    state[0] ^= state[3];
    state[2] ^= t;
    state[3] = rotl(state[3], 45);
    return result;
}

uint64_t crm_rand_below(uint64_t bound)
{
    /* Lemire's nearly-divisionless method: multiply into 128 bits and reject the few values that would bias. */
    unsigned __int128 m = (unsigned __int128)crm_rand_u64() * bound;
    uint64_t low = (uint64_t)m;
    if (low < bound) {
        uint64_t threshold = -bound % bound;
        while (low < threshold) {
            m = (unsigned __int128)crm_rand_u64() * bound;
            low = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

void crm_uuid_v4(char out[37])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t b[16];
    uint64_t a = crm_rand_u64(), c = crm_rand_u64();
    memcpy(b, &a, 8);
    memcpy(b + 8, &c, 8);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    char *p = out;
    for (int i = 0; i < 16; ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = hex[b[i] >> 4];
        *p++ = hex[b[i] & 15];
    }
    *p = '\0';
}
