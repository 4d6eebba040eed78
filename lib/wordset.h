/*
 * A read-only set of words built once from a text of lines (a list compiled into the binary: common passwords,
 * free mail domains), with ASCII-case-insensitive lookups.
 *
 * Each line is one word; blank lines and lines starting with '#' are skipped; words are stored lower-cased (ASCII
 * letters only: the lists are ASCII or compared byte for byte beyond it). Open addressing with linear probing at
 * most half full, FNV-1a hashing: the words are public data, so no secret seed is needed and the lookup cost is a
 * hash and a short probe. Nothing is allocated after crm_wordset_init. Immutable after init: any number of threads
 * may look up at once.
 */
#ifndef CRM_WORDSET_H
#define CRM_WORDSET_H

#include <stddef.h>

typedef struct st_crm_wordset_t {
    const char **_slots; /* 2^k slots, NULL or a word in _text */
    size_t _mask;
    char *_text;  /* a copy of the input, lines NUL-terminated and lower-cased */
    size_t count; /* distinct words */
} crm_wordset_t;

/* Builds the set from text[0..len). Returns 0 or CRM_E_NOMEM (s is then empty; dispose is still allowed). */
int crm_wordset_init(crm_wordset_t *s, const char *text, size_t len);

/* 1 when word[0..len) is in the set, ignoring ASCII case. An empty set (or one whose init failed) has nothing. */
int crm_wordset_has(const crm_wordset_t *s, const char *word, size_t len);

/* Frees the set; accepts one that was never initialised if zeroed, or whose init failed. */
void crm_wordset_dispose(crm_wordset_t *s);

#endif
