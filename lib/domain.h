/*
 * Company domains: the registrable domain of a host name or URL (the Public Suffix List, through libpsl), and
 * whether a domain belongs to a free, disposable or typo mail provider (a list compiled into the binary from
 * lib/data/free_mail_domains.txt). For brands (one company = one registrable domain) and for telling work addresses
 * from personal ones.
 *
 * "www.nike.com", "shop.nike.com" and "https://Shop.Nike.com:443/x?y" are all nike.com; "bbc.co.uk" stays bbc.co.uk
 * (co.uk is a public suffix); "foo.github.io" stays foo.github.io (github.io is a private suffix: everyone under
 * it is a separate owner). Nothing here does I/O after crm_domain_init, which reads the system's public-suffix
 * file once (the publicsuffix package's, newer than libpsl's built-in copy when present). Read-only afterwards: any
 * thread may call the lookups.
 */
#ifndef CRM_DOMAIN_H
#define CRM_DOMAIN_H

#include <stddef.h>

/* Longest domain name (RFC 1035: 253 characters in text form) plus its NUL. */
#define CRM_DOMAIN_MAX 254

/* Start-up only (reads a file): loads the Public Suffix List and the free-mail list. 0 or CRM_E_NOMEM. Calling it
 * again does nothing. */
int crm_domain_init(void);

/* Releases what crm_domain_init built (for leak checks at exit). */
void crm_domain_shutdown(void);

typedef enum {
    CRM_DOMAIN_OK = 0,
    CRM_DOMAIN_INVALID,       /* not a host name: empty, over 253 characters, a bad label, an IP address, a port
                                 that is not a number, an unbracketed IPv6 literal, ... */
    CRM_DOMAIN_PUBLIC_SUFFIX, /* a public suffix itself (com, co.uk, github.io) or a single label: no one's domain */
} crm_domain_verdict_t;

/*
 * The registrable domain of input[0..len): a host name, or a URL whose scheme, user info, port, path, query and
 * fragment are ignored (a backslash ends the host, as browsers read it); any case; a trailing dot is dropped.
 * Labels are letters, digits and hyphens (not first or last), 1..63 bytes, or UTF-8: an internationalised name is
 * converted to its punycode form (IDNA2008 with UTS #46), so that each domain has exactly one spelling. Writes the
 * registrable domain, lower-case ASCII, to out[0..cap) with its NUL; cap must be at least CRM_DOMAIN_MAX. Returns
 * the verdict (out is "" unless OK).
 */
crm_domain_verdict_t crm_domain_registrable(const char *input, size_t len, char *out, size_t cap);

/* 1 when domain[0..len) (any case, a trailing dot allowed) is a free, disposable or typo mail domain, either itself
 * or through its registrable domain (mail.yahoo.co.jp as yahoo.co.jp); 0 otherwise, and for anything that is not a
 * domain. */
int crm_domain_is_free_mail(const char *domain, size_t len);

#endif
