/*
 * RFC 5322 / MIME message composition for outgoing mail (the SMTP sender hands the result to libcurl).
 *
 * crm_mail_message_compose turns a crm_mail_message_t into one message, ready to send:
 *   - CRLF line endings throughout; header fields in this order: Date, From, To, Reply-To (when given),
 *     Message-ID, Subject (when given), MIME-Version: 1.0, the extra headers in their order, then Content-Type and,
 *     for a single part, Content-Transfer-Encoding;
 *   - header lines are folded at whitespace (CRLF SP) to at most 78 characters where possible (RFC 5322 §2.1.1);
 *     only an address or Message-ID too long for a line of its own makes a longer line, never longer than 998;
 *   - Date in UTC: "Mon, 23 Nov 2026 18:40:00 +0000" (two-digit day). It is computed arithmetically: gmtime_r
 *     may read the time zone database from disk on its first call, which the loop must never do (DESIGN.md §3,
 *     invariant 1);
 *   - display names: as they are when they are atoms separated by single spaces, as a quoted string (with '"' and
 *     '\' escaped) when they are other printable ASCII, as RFC 2047 B encoded-words (mail/rfc2047.h) when they hold
 *     anything else, hold "=?", or are too long for one line. The Subject is left as it is when it is printable
 *     ASCII without "=?" (folded at its spaces), encoded otherwise, and also when a word is too long for a line;
 *   - a text body only: "Content-Type: text/plain; charset=utf-8" and quoted-printable; with an HTML body:
 *     multipart/alternative, text part first, both parts quoted-printable, with the boundary "=_" followed by 32
 *     random hex digits. Quoted-printable output never holds "=_" ('=' is always followed by two hex digits or a
 *     line break), so the boundary cannot occur in a part;
 *   - quoted-printable (RFC 2045 §6.7): lines of at most 76 characters with soft line breaks ("=" CRLF), '=' and
 *     every byte outside 33..126 encoded except SP and TAB, which are encoded only at the end of a line. A line
 *     break in a body (LF or CRLF) becomes CRLF; a lone CR is encoded as =0D. A line may begin with "." as it is:
 *     the SMTP client (libcurl) dot-stuffs the DATA. Each body is followed by one CRLF that is not part of it (before
 *     the next boundary, or ending the message), so decoding a part gives back the body exactly, line breaks as
 *     CRLF.
 *
 * Every input is validated, so a header cannot be injected, and a bad message is refused as a whole (nothing is
 * returned): addresses must satisfy crm_mail_address_is_valid; names and the subject must be well-formed
 * UTF-8 without CR, LF or NUL; bodies well-formed UTF-8 without NUL; extra header names ftext (printable ASCII
 * without ':'), at most 76 characters and not one the composer writes or an addressing header (Date, From,
 * Sender, To, Cc, Bcc, Reply-To, Subject, Message-ID, MIME-Version, Content-*), their values printable ASCII and
 * TAB.
 *
 * Randomness (Message-ID, boundary) comes from crm_random_bytes (lib/rand.h). Everything else is pure: no I/O,
 * reentrant, thread-safe.
 */
#ifndef CRM_MAIL_MESSAGE_H
#define CRM_MAIL_MESSAGE_H

#include <stddef.h>
#include <time.h>

/* Buffer size for a Message-ID ("<" id "@" domain ">") with its NUL. */
#define CRM_MAIL_MESSAGE_ID_SIZE 320
/* Buffer size for a formatted date with its NUL: "Mon, 23 Nov 2026 18:40:00 +0000". */
#define CRM_MAIL_DATE_SIZE 32
/* The output limit when crm_mail_message_t.max_bytes is 0. */
#define CRM_MAIL_MESSAGE_MAX_DEFAULT (16 * 1024 * 1024)

typedef struct st_crm_mail_mailbox_t {
    const char *addr; /* a bare addr-spec; required */
    const char *name; /* display name, UTF-8; NULL or "" for none */
} crm_mail_mailbox_t;

typedef struct st_crm_mail_header_t {
    const char *name;
    const char *value;
} crm_mail_header_t;

typedef struct st_crm_mail_message_t {
    crm_mail_mailbox_t from;
    const crm_mail_mailbox_t *to; /* to_count >= 1 mailboxes */
    size_t to_count;
    const crm_mail_mailbox_t *reply_to; /* optional */
    const char *subject;                /* UTF-8; NULL for no Subject field */
    const char *text;                   /* the text/plain body, UTF-8; required ("" is allowed) */
    const char *html;                   /* the text/html alternative, UTF-8; optional */
    time_t date;                        /* seconds since the epoch, 1970 to 9999 */
    /* The Message-ID, "<id-left@id-right>" with dot-atom-text on both sides, when the caller has one: a job that is
     * retried must send the same Message-ID every time, so that the copies are recognisably one message. When
     * NULL, a new one "<32 random hex digits@message_id_domain>" is generated. */
    const char *message_id;
    const char *message_id_domain;    /* a host name (crm_mail_address_domain_is_valid); needed without message_id */
    const crm_mail_header_t *headers; /* extra header fields, header_count of them */
    size_t header_count;
    size_t max_bytes; /* largest message to produce; 0 for CRM_MAIL_MESSAGE_MAX_DEFAULT */
} crm_mail_message_t;

/*
 * Composes m. On success *out is a malloc'ed, NUL-terminated message the caller frees, *out_len its length
 * without the NUL, and message_id (when not NULL, CRM_MAIL_MESSAGE_ID_SIZE bytes) the Message-ID it carries, for
 * the caller to record. Returns 0; CRM_E_INVAL for any invalid input (see above; also m, out or out_len NULL);
 * CRM_E_TOO_LARGE when the message would exceed the limit; CRM_E_IO if the random generator fails; CRM_E_NOMEM.
 * On failure *out is NULL and message_id holds "".
 */
int crm_mail_message_compose(const crm_mail_message_t *m, char **out, size_t *out_len, char *message_id);

/* Writes a new Message-ID "<32 random hex digits@domain>" into out (CRM_MAIL_MESSAGE_ID_SIZE bytes). Returns 0,
 * CRM_E_INVAL (domain not a host name) or CRM_E_IO. */
int crm_mail_message_id_generate(const char *domain, char *out);

/* Formats t as an RFC 5322 date in UTC into out (CRM_MAIL_DATE_SIZE bytes). Returns 0, or CRM_E_INVAL when t is
 * before 1970 or after 9999. */
int crm_mail_message_format_date(time_t t, char *out);

#endif
