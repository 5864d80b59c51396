/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_ENC_H
#define GW_ENC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * The text encodings of bytes the gateway reads and writes: hex for PSKs (psk.key, gwctl's
 * --psk-key and its output), base64 for EST bodies (RFC 8951) and gwctl's output.
 */

/* len bytes as lowercase hex into out, which holds 2 * len + 1 (NUL-terminated). */
void enc_hex(char *out, const uint8_t *in, size_t len);
/*
 * The len characters at s as hex digits (either case, nothing else) into out: the number of
 * bytes, or -EINVAL when they are not an even number of digits or more than max bytes.
 */
ssize_t enc_unhex(const char *s, size_t len, uint8_t *out, size_t max);
/* len bytes as padded base64 on one line (RFC 4648 section 4), new (xmalloc). */
char *enc_base64(const void *in, size_t len);
/*
 * Base64 with line breaks or not (RFC 8951 section 3.2) to new bytes (xmalloc), their number
 * in *outlen; NULL when in is not base64: a character outside the alphabet, padding anywhere
 * but at the end, or a length that is not a multiple of four.
 */
uint8_t *enc_unbase64(const char *in, size_t inlen, size_t *outlen);

#endif
