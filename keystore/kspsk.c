/* SPDX-License-Identifier: Apache-2.0 */
#include "kspsk.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <string.h>

#define PSK_MAGIC     "GWPSK1"
#define PSK_MAGIC_LEN 6
#define GCM_NONCE_LEN 12
#define GCM_TAG_LEN   16

_Static_assert(KSPSK_OVERHEAD == PSK_MAGIC_LEN + GCM_NONCE_LEN + GCM_TAG_LEN,
               "KSPSK_OVERHEAD is the header's size");

int
kspsk_seal(const uint8_t key[KSPSK_KEY_LEN], const char *id, const uint8_t *text, size_t len,
           uint8_t *out, size_t *outlen)
{
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	uint8_t *nonce = out + PSK_MAGIC_LEN, *tag = nonce + GCM_NONCE_LEN, *ct = tag + GCM_TAG_LEN;
	int n, r = -EIO;

	memcpy(out, PSK_MAGIC, PSK_MAGIC_LEN);
	/* The device id as associated data: a record copied to another device will not open. */
	if (c && RAND_bytes(nonce, GCM_NONCE_LEN) == 1 &&
	    EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce) == 1 &&
	    EVP_EncryptUpdate(c, NULL, &n, (const uint8_t *)id, (int)strlen(id)) == 1 &&
	    EVP_EncryptUpdate(c, ct, &n, text, (int)len) == 1 &&
	    EVP_EncryptFinal_ex(c, ct + n, &n) == 1 &&
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, GCM_TAG_LEN, tag) == 1) {
		*outlen = KSPSK_OVERHEAD + len;
		r = 0;
	}
	EVP_CIPHER_CTX_free(c);
	return r;
}

int
kspsk_open(const uint8_t key[KSPSK_KEY_LEN], const char *id, const uint8_t *in, size_t inlen,
           uint8_t *text, size_t *len)
{
	const size_t head = KSPSK_OVERHEAD;
	const uint8_t *nonce = in + PSK_MAGIC_LEN, *tag = nonce + GCM_NONCE_LEN,
	              *ct = tag + GCM_TAG_LEN;
	EVP_CIPHER_CTX *c;
	int n, r = -EBADMSG;

	if (inlen <= head || inlen > head + KSPSK_TEXT_MAX ||
	    memcmp(in, PSK_MAGIC, PSK_MAGIC_LEN) != 0)
		return -EBADMSG;
	c = EVP_CIPHER_CTX_new();
	if (c && EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce) == 1 &&
	    EVP_DecryptUpdate(c, NULL, &n, (const uint8_t *)id, (int)strlen(id)) == 1 &&
	    EVP_DecryptUpdate(c, text, &n, ct, (int)(inlen - head)) == 1 &&
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, GCM_TAG_LEN, (void *)tag) == 1 &&
	    EVP_DecryptFinal_ex(c, text + n, &n) == 1) {
		*len = inlen - head;
		r = 0;
	} else {
		explicit_bzero(text, inlen - head);
	}
	ERR_clear_error();
	EVP_CIPHER_CTX_free(c);
	return r;
}
