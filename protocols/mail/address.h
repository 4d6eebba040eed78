/*
 * Mail addresses: a lenient RFC 5322 §3.4 address-list parser for the From/To/Cc headers of real mail (the Gmail
 * sync), and a strict check of one addr-spec (the email fields of the API).
 *
 * crm_mail_address_parse reads a header value the way a good mail client does, and never fails on bad input
 * beyond the limits below:
 *   - mailboxes as "Display Name <local@domain>", bare "local@domain", and the obsolete route form
 *     "<@route1,@route2:local@domain>" (the route is dropped);
 *   - display names made of atoms, quoted strings (with quoted-pairs and commas: "Doe, John \"JD\""), periods
 *     ("John Q. Public") and, leniently, any other character before the "<" ("john@x.com <john@x.com>"); words
 *     are joined by one SP where the header had whitespace or a comment between them; RFC 2047 encoded-words are
 *     decoded to UTF-8 (mail/rfc2047.h), also inside quoted strings, as real mail needs; the result is trimmed of
 *     SP and TAB at both ends and is always valid UTF-8 without NUL, CR or LF;
 *   - when a mailbox has no display name, the first non-empty comment in its entry becomes one, decoded the same
 *     way ("john@x.com (John Doe)"); nested parentheses are kept as written, quoted-pairs are unescaped;
 *   - comments, nested and with quoted-pairs, and folding whitespace (CRLF WSP) anywhere CFWS is allowed, also
 *     around the "." and "@" of an address (obsolete syntax); a CR or LF not followed by WSP is whitespace too;
 *   - groups: "undisclosed-recipients:;" and "Team: a@x.com, b@y.com;". Each member is reported with the decoded
 *     group name; a group without its closing ";" ends at the end of the input. A ";" outside a group separates
 *     entries like "," (Outlook users type lists that way);
 *   - empty entries ("a@x.com,,b@y.com") are ignored;
 *   - an entry that is not a mailbox (no "@", two words in a local part, an unterminated quoted string, comment,
 *     domain literal or "<", a nested group, an address over the RFC 5321 lengths, a NUL or control character in
 *     an address, ill-formed UTF-8 in an address) is skipped and counted in `invalid`; parsing resumes after the
 *     next "," or ";". Text after the ">" of a mailbox is ignored; text after a bare addr-spec makes it invalid.
 *
 * Each address is normalised: the local part keeps its case (it is case-sensitive per RFC 5321) and is stored in
 * its simplest form (RFC 5321 §4.1.2): a dot-atom as written, or, when it needs quoting, one quoted string with
 * only '"' and '\' escaped; a quoted local part that is a valid dot-atom loses its quotes ("john"@x.com is
 * john@x.com), and the obsolete form "a"."b c" becomes "a.b c". The domain is lower-cased (ASCII letters only;
 * UTF-8 labels of RFC 6532 are kept as they are); a domain literal keeps its brackets without whitespace. Lengths
 * are checked on the normalised form: local part at most 64 bytes, domain at most 255 with labels of at most 63,
 * local@domain at most 254.
 *
 * Thread-safety: all functions are reentrant; a parsed list is immutable and may be read from any thread.
 */
#ifndef CRM_MAIL_ADDRESS_H
#define CRM_MAIL_ADDRESS_H

#include <stddef.h>

#define CRM_MAIL_LOCAL_MAX  64
#define CRM_MAIL_DOMAIN_MAX 255
#define CRM_MAIL_LABEL_MAX  63
#define CRM_MAIL_ADDR_MAX   254

typedef struct st_crm_mail_address_limits_t {
    size_t max_bytes;         /* input length; over it → CRM_E_TOO_LARGE before any parsing */
    size_t max_addresses;     /* mailboxes reported; one more → CRM_E_LIMIT */
    size_t max_name_bytes;    /* a decoded display name or group name; over it → CRM_E_LIMIT */
    size_t max_comment_depth; /* nesting of comments, the outermost is 1; over it → CRM_E_LIMIT */
} crm_mail_address_limits_t;

/* Fills *l with the defaults: 256 KiB, 5000 addresses, 1024-byte names, comment depth 16. */
void crm_mail_address_limits_default(crm_mail_address_limits_t *l);

typedef struct st_crm_mail_address_t {
    const char *name;   /* display name, UTF-8; "" when there is none */
    const char *local;  /* local part, normalised as described above */
    const char *domain; /* domain, lower-cased */
    const char *addr;   /* local "@" domain */
    const char *group;  /* the decoded name of the group the mailbox belongs to, or NULL */
} crm_mail_address_t;

/* The result of a parse. Everything it points to (items, every string) lives in the same single allocation as the
 * list itself and stays valid until crm_mail_address_list_free. */
typedef struct st_crm_mail_address_list_t {
    crm_mail_address_t *items; /* in the order of the header */
    size_t count;              /* number of items */
    size_t invalid;            /* entries skipped because they were not mailboxes */
    size_t groups;             /* groups seen, empty ones included */
} crm_mail_address_list_t;

/*
 * Parses the address-list in[0..len) (which may contain any bytes, NUL included) under limits (NULL: defaults).
 * On success *out is a new list, possibly with count 0 when the input holds only whitespace, comments, empty
 * entries or empty groups. Returns 0; CRM_E_INVAL if in is NULL with len > 0 or out is NULL; CRM_E_TOO_LARGE or
 * CRM_E_LIMIT as described with the limits; CRM_E_PARSE if no mailbox was found but some entry was invalid;
 * CRM_E_NOMEM. *out is NULL on failure.
 */
int crm_mail_address_parse(const char *in, size_t len, const crm_mail_address_limits_t *limits,
                           crm_mail_address_list_t **out);

/* Frees a list from crm_mail_address_parse; NULL is allowed. */
void crm_mail_address_list_free(crm_mail_address_list_t *list);

/*
 * 1 if addr is one bare addr-spec acceptable as an email address field, else 0 (also for NULL). Strict: no
 * whitespace, comments or display name; ASCII only; the local part a dot-atom or a quoted string of printable
 * ASCII (RFC 5321 Quoted-string); the domain either at least two LDH labels (letters, digits, inner hyphens, 1 to 63
 * characters each) whose last label is not all digits, in any case, or an address literal "[192.0.2.1]" or
 * "[IPv6:2001:db8::1]"; the RFC 5321 lengths above.
 */
int crm_mail_address_is_valid(const char *addr);

/* 1 if domain is a host name by the rule crm_mail_address_is_valid applies to domains (at least two LDH labels,
 * the last not all digits, at most 255 characters; no address literal), else 0 (also for NULL). */
int crm_mail_address_domain_is_valid(const char *domain);

#endif
