/* SPDX-License-Identifier: Apache-2.0 */
#include "enc.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "xalloc.h"

/*
 * Hex is ours: OpenSSL's (OPENSSL_buf2hexstr_ex, OPENSSL_hexstr2buf_ex) writes uppercase and
 * reads ':' between bytes, neither of which the key files or gwctl's options have ever had.
 */
void
enc_hex(char *out, const uint8_t *in, size_t len)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < len; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * len] = '\0';
}

static int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)tolower((unsigned char)c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

ssize_t
enc_unhex(const char *s, size_t len, uint8_t *out, size_t max)
{
	if (len % 2 || len / 2 > max)
		return -EINVAL;
	for (size_t i = 0; i < len; i += 2) {
		int hi = hex_value(s[i]), lo = hex_value(s[i + 1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i / 2] = (uint8_t)(hi << 4 | lo);
	}
	return (ssize_t)(len / 2);
}

char *
enc_base64(const void *in, size_t len)
{
	char *out = xmalloc((len + 2) / 3 * 4 + 1);

	EVP_EncodeBlock((unsigned char *)out, in, (int)len);
	return out;
}

uint8_t *
enc_unbase64(const char *in, size_t inlen, size_t *outlen)
{
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	                               "0123456789+/";
	char *compact = xmalloc(inlen + 1);
	uint8_t *out = NULL;
	size_t n = 0, pad;
	int len;

	for (size_t i = 0; i < inlen; i++) {
		if (!isspace((unsigned char)in[i]))
			compact[n++] = in[i];
	}
	compact[n] = '\0';
	/*
	 * The alphabet, then "=" or "==" (RFC 4648 section 4). EVP_DecodeBlock() takes a '='
	 * anywhere as six zero bits ("AB=D" gave 3 bytes, "====" a length of -1) and drops any
	 * '-' at the end.
	 */
	pad = n >= 2 && compact[n - 1] == '=' ? 1 + (compact[n - 2] == '=') : 0;
	if (n % 4 == 0 && n > 0 && strspn(compact, alphabet) == n - pad)
		out = xmalloc(n / 4 * 3);
	len = out ? EVP_DecodeBlock(out, (unsigned char *)compact, (int)n) : -1;
	free(compact);
	if (len < 0) {
		free(out);
		return NULL;
	}
	/* EVP_DecodeBlock() counts the padding as zero bytes. */
	*outlen = (size_t)len - pad;
	return out;
}
