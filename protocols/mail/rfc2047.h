/*
 * RFC 2047 encoded-words ("=?charset?B|Q?text?=") in mail header fields, and the UTF-8 checks the mail module
 * shares.
 *
 * Decoding is lenient, like a mail client reading real mail, and its output is always safe to store and display:
 *   - an encoded-word is decoded wherever it appears, also inside a word or a quoted string (RFC 2047 forbids
 *     both, mail in the wild does both); whitespace (SP, TAB, CR, LF) between two decoded encoded-words is dropped
 *     (RFC 2047 §6.2);
 *   - charsets, matched without regard to case and with an RFC 2231 language suffix ("UTF-8*en") ignored: UTF-8
 *     (also "utf8"), US-ASCII (also "ascii", "ANSI_X3.4-1968"), ISO-8859-1 (also "latin1", "latin-1", "l1",
 *     "iso8859-1", "iso_8859-1", "cp819") and Windows-1252 (also "cp1252"). The conversion is a hand-written
 *     table, not iconv: iconv_open loads conversion modules from disk, which the event loop must never do
 *     (DESIGN.md §3, invariant 1). As the WHATWG Encoding Standard and every browser do, US-ASCII and ISO-8859-1
 *     are decoded as Windows-1252: mislabelled Windows text (curly quotes, the euro sign in 0x80..0x9F) is the
 *     common case, while C1 control characters never occur in real text. The five bytes Windows-1252 leaves
 *     undefined (0x81 0x8D 0x8F 0x90 0x9D) become U+FFFD;
 *   - an encoded-word with an unknown charset, an encoding other than B or Q, or a malformed text (a Q "=" not
 *     followed by two hex digits, a B text with a character outside the base64 alphabet, "=" before the end, or a
 *     length of 4n+1) is left as it is written, as mail clients do. B padding may be missing. In Q, "_" is SP;
 *   - the output is valid UTF-8 whatever the input: every ill-formed UTF-8 sequence, in the raw text or produced
 *     by a UTF-8 encoded-word, is replaced by U+FFFD (one per maximal ill-formed subpart, Unicode §3.9);
 *   - the output never contains NUL, CR or LF: CR and LF in the raw text are unfolding and are dropped (a folded
 *     header "a\r\n b" reads "a b"), CR and LF produced by an encoded-word become SP, and NUL becomes U+FFFD, so
 *     the result is one line and a valid PostgreSQL text value.
 * No input byte yields more than 3 output bytes (U+FFFD, or a Windows-1252 character, for one byte), hence
 * CRM_RFC2047_DECODE_MAX.
 *
 * Encoding produces a header value that is safe to write after "Name: ": printable ASCII (0x20..0x7E) that does not
 * contain "=?" is returned unchanged (the caller folds it); anything else becomes UTF-8 B encoded-words. B rather
 * than Q because a B word is valid both in unstructured text (Subject) and in a phrase (a display name), where Q
 * must escape a different set of characters, and because its size is predictable (4/3) for mostly non-Latin text,
 * where Q triples every byte. Each word is at most 75 characters and carries only whole UTF-8 characters (RFC
 * 2047 §5); words are separated by CRLF SP, so every line holding a word is at most 76 characters (RFC 2047 §2)
 * when the caller says how much of the first line is used. CR, LF, NUL and ill-formed UTF-8 are refused: header
 * injection through an encoded value is impossible.
 *
 * All functions are pure computations: no allocation except in crm_rfc2047_decode_alloc, no I/O, reentrant and
 * thread-safe.
 */
#ifndef CRM_MAIL_RFC2047_H
#define CRM_MAIL_RFC2047_H

#include <stddef.h>

/* Output buffer size for crm_rfc2047_decode that can never be too small for len input bytes (with the NUL). */
#define CRM_RFC2047_DECODE_MAX(len) (3 * (size_t)(len) + 1)

/* Longest encoded-word crm_rfc2047_encode writes (RFC 2047 §2), and longest line holding one. */
#define CRM_RFC2047_WORD_MAX 75
#define CRM_RFC2047_LINE_MAX 76

/* Output buffer size for crm_rfc2047_encode that can never be too small for len input bytes (with the NUL): every
 * word after the first carries at least 42 bytes of input and takes at most 75 characters plus CRLF SP. */
#define CRM_RFC2047_ENCODE_MAX(len) (((size_t)(len) / 42 + 2) * (CRM_RFC2047_WORD_MAX + 3) + 1)

/* crm_rfc2047_encode flag: encode even printable ASCII, e.g. a value with a word too long for a 998-character
 * line, which only encoded-words can split. */
#define CRM_RFC2047_ENCODE_ALWAYS 1u

/*
 * Decodes the header text in[0..len) (which may contain NUL bytes) into UTF-8 in out, NUL-terminated, as described
 * above; *out_len (if not NULL) gets the length without the NUL.
 * Returns 0; CRM_E_INVAL if in is NULL with len > 0, out is NULL or cap is 0; CRM_E_TOO_LARGE if the result does
 * not fit in cap bytes (never when cap >= CRM_RFC2047_DECODE_MAX(len)). On failure out holds "" when cap > 0.
 */
int crm_rfc2047_decode(const char *in, size_t len, char *out, size_t cap, size_t *out_len);

/* As crm_rfc2047_decode, into a malloc'ed string the caller frees. Returns 0, CRM_E_INVAL (in NULL with len > 0,
 * out NULL), CRM_E_TOO_LARGE (the buffer size would overflow size_t) or CRM_E_NOMEM; *out is NULL on failure. */
int crm_rfc2047_decode_alloc(const char *in, size_t len, char **out, size_t *out_len);

/*
 * Encodes the UTF-8 header value in[0..len) into out, NUL-terminated, as described above; *out_len (if not NULL)
 * gets the length without the NUL. first_line_used is the number of characters already on the line the value
 * starts (e.g. 9 for "Subject: "); the first word is shortened so that this line stays within
 * CRM_RFC2047_LINE_MAX, but always carries at least one character. flags: 0 or CRM_RFC2047_ENCODE_ALWAYS.
 * Returns 0; CRM_E_INVAL if in or out is NULL, cap is 0, or the value holds ill-formed UTF-8, CR, LF or NUL;
 * CRM_E_TOO_LARGE if the result does not fit in cap bytes (never when cap >= CRM_RFC2047_ENCODE_MAX(len)). On
 * failure out holds "".
 */
int crm_rfc2047_encode(const char *in, size_t len, size_t first_line_used, unsigned flags, char *out, size_t cap,
                       size_t *out_len);

/* 1 if s[0..len) is well-formed UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF; NUL bytes are
 * well-formed), else 0. */
int crm_rfc2047_utf8_valid(const char *s, size_t len);

#endif
