#include "wordset.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

static uint64_t hash_lower(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; ++i)
        h = (h ^ lower((unsigned char)s[i])) * 1099511628211ull;
    return h;
}

/* a[0..alen) equals the NUL-terminated, lower-case b, ignoring a's ASCII case. */
static int equal_lower(const char *a, size_t alen, const char *b)
{
    size_t i = 0;
    for (; i < alen && b[i] != '\0'; ++i)
        if (lower((unsigned char)a[i]) != (unsigned char)b[i])
            return 0;
    return i == alen && b[i] == '\0';
}

int crm_wordset_init(crm_wordset_t *s, const char *text, size_t len)
{
    memset(s, 0, sizeof(*s));
    size_t lines = 1;
    for (size_t i = 0; i < len; ++i)
        lines += text[i] == '\n';
    size_t cap = 1;
    while (cap < 2 * lines)
        cap *= 2;
    s->_text = malloc(len + 1);
    s->_slots = calloc(cap, sizeof(*s->_slots));
    if (s->_text == NULL || s->_slots == NULL) {
        crm_wordset_dispose(s);
        return CRM_E_NOMEM;
    }
    s->_mask = cap - 1;
    memcpy(s->_text, text, len);
    s->_text[len] = '\0';
    for (char *p = s->_text, *end = s->_text + len; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        if (n > 0 && p[n - 1] == '\r')
            --n;
        p[n] = '\0';
        if (n > 0 && p[0] != '#') {
            for (size_t i = 0; i < n; ++i)
                p[i] = (char)lower((unsigned char)p[i]);
            size_t i = hash_lower(p, n) & s->_mask;
            while (s->_slots[i] != NULL && strcmp(s->_slots[i], p) != 0)
                i = (i + 1) & s->_mask;
            if (s->_slots[i] == NULL) {
                s->_slots[i] = p;
                ++s->count;
            }
        }
        p = nl != NULL ? nl + 1 : end;
    }
    return 0;
}

int crm_wordset_has(const crm_wordset_t *s, const char *word, size_t len)
{
    if (s->_slots == NULL)
        return 0;
    for (size_t i = hash_lower(word, len) & s->_mask; s->_slots[i] != NULL; i = (i + 1) & s->_mask)
        if (equal_lower(word, len, s->_slots[i]))
            return 1;
    return 0;
}

void crm_wordset_dispose(crm_wordset_t *s)
{
    free((void *)s->_slots);
    free(s->_text);
    memset(s, 0, sizeof(*s));
}
