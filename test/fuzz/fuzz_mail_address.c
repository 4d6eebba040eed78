/* libFuzzer target: the address-list parser (mail/address.h) and RFC 2047 (mail/rfc2047.h) on untrusted header
 * text. Any input must give either a list whose every mailbox keeps the documented invariants or one of the
 * documented errors; decoding must give one line of valid UTF-8 within the documented bound; encoding must refuse
 * exactly what it documents and round-trip everything else. Never a crash, a leak or a read past the end. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "mail/address.h"
#include "mail/rfc2047.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_ADDRESSES 32
#define MAX_NAME      128

static void check_text(const char *s, size_t max)
{
    size_t n = strlen(s);
    assert(n <= max);
    assert(crm_rfc2047_utf8_valid(s, n));
    assert(strchr(s, '\r') == NULL && strchr(s, '\n') == NULL);
}

static void check_list(const crm_mail_address_list_t *l)
{
    assert(l->count <= MAX_ADDRESSES);
    for (size_t i = 0; i < l->count; ++i) {
        const crm_mail_address_t *a = &l->items[i];
        size_t ll = strlen(a->local), dl = strlen(a->domain);
        assert(ll >= 1 && ll <= CRM_MAIL_LOCAL_MAX);
        assert(dl >= 1 && dl <= CRM_MAIL_DOMAIN_MAX);
        assert(ll + 1 + dl <= CRM_MAIL_ADDR_MAX);
        assert(strlen(a->addr) == ll + 1 + dl);
        assert(memcmp(a->addr, a->local, ll) == 0 && a->addr[ll] == '@');
        assert(strcmp(a->addr + ll + 1, a->domain) == 0);
        for (const char *d = a->domain; *d != '\0'; ++d)
            assert(!(*d >= 'A' && *d <= 'Z') && (unsigned char)*d >= 0x20);
        for (const char *c = a->local; *c != '\0'; ++c)
            assert((unsigned char)*c >= 0x20 && *c != 0x7F);
        check_text(a->name, MAX_NAME);
        if (a->group != NULL)
            check_text(a->group, MAX_NAME);

        /* The normalised address is a fixed point: parsed again, it gives itself. */
        crm_mail_address_list_t *again = NULL;
        assert(crm_mail_address_parse(a->addr, strlen(a->addr), NULL, &again) == 0);
        assert(again->count == 1 && again->invalid == 0);
        assert(strcmp(again->items[0].addr, a->addr) == 0);
        crm_mail_address_list_free(again);
    }
}

static void check_rfc2047(const char *in, size_t size)
{
    size_t cap = CRM_RFC2047_DECODE_MAX(size), n = 0;
    char *dec = malloc(cap);
    assert(dec != NULL);
    assert(crm_rfc2047_decode(in, size, dec, cap, &n) == 0);
    assert(n == strlen(dec) && n <= 3 * size);
    check_text(dec, 3 * size);
    free(dec);

    size_t first = size > 0 ? (unsigned char)in[0] % 90 : 0;
    cap = CRM_RFC2047_ENCODE_MAX(size);
    char *enc = malloc(cap);
    assert(enc != NULL);
    int rc = crm_rfc2047_encode(in, size, first, size % 2 ? CRM_RFC2047_ENCODE_ALWAYS : 0, enc, cap, &n);
    int acceptable = crm_rfc2047_utf8_valid(in, size) && memchr(in, '\0', size) == NULL &&
                     memchr(in, '\r', size) == NULL && memchr(in, '\n', size) == NULL;
    if (!acceptable) {
        assert(rc == CRM_E_INVAL && enc[0] == '\0');
        free(enc);
        return;
    }
    assert(rc == 0 && n == strlen(enc));
    int plain = n == size && memcmp(enc, in, size) == 0 && size % 2 == 0;
    if (!plain) {
        /* Encoded-words, each at most 75 characters, separated by CRLF SP; every line at most 76, the first one
         * counting what precedes it, unless that left no room for even one word. */
        size_t col = first, word = 0;
        int first_line = 1;
        for (size_t i = 0; i <= n; ++i) {
            if (i == n || enc[i] == '\r') {
                assert(word <= CRM_RFC2047_WORD_MAX);
                assert(col <= CRM_RFC2047_LINE_MAX || (first_line && first + 20 > CRM_RFC2047_LINE_MAX));
                if (i == n)
                    break;
                assert(enc[i + 1] == '\n' && enc[i + 2] == ' ');
                col = 1;
                word = 0;
                first_line = 0;
                i += 2;
            } else {
                ++col;
                ++word;
            }
        }
    }
    cap = CRM_RFC2047_DECODE_MAX(n);
    dec = malloc(cap);
    assert(dec != NULL);
    size_t dl;
    assert(crm_rfc2047_decode(enc, n, dec, cap, &dl) == 0);
    assert(dl == size && memcmp(dec, in, size) == 0);
    free(dec);
    free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    crm_mail_address_limits_t limits = {
        .max_bytes = 4096,
        .max_addresses = MAX_ADDRESSES,
        .max_name_bytes = MAX_NAME,
        .max_comment_depth = 8,
    };
    crm_mail_address_list_t *l = (crm_mail_address_list_t *)1;
    int rc = crm_mail_address_parse(in, size, &limits, &l);
    if (rc == 0) {
        assert(l != NULL);
        check_list(l);
        crm_mail_address_list_free(l);
    } else {
        assert(l == NULL);
        assert(rc == CRM_E_PARSE || rc == CRM_E_LIMIT || rc == CRM_E_TOO_LARGE);
        assert(rc != CRM_E_TOO_LARGE || size > limits.max_bytes);
    }

    /* What the strict check accepts, the lenient parser reads as exactly one valid mailbox. */
    char *z = malloc(size + 1);
    assert(z != NULL);
    memcpy(z, data, size);
    z[size] = '\0';
    if (memchr(data, '\0', size) == NULL && crm_mail_address_is_valid(z)) {
        l = NULL;
        assert(crm_mail_address_parse(z, size, NULL, &l) == 0);
        assert(l->count == 1 && l->invalid == 0 && l->items[0].group == NULL);
        assert(crm_mail_address_is_valid(l->items[0].addr));
        crm_mail_address_list_free(l);
    }
    free(z);

    check_rfc2047(in, size);
    return 0;
}
