/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_KSPSK_H
#define GW_KSPSK_H

#include <stddef.h>
#include <stdint.h>

/*
 * The tpm backend's psk.enc: a device's PSK file (its text) under AES-256-GCM with the store's
 * master key, which is sealed in the TPM; the device id is the associated data, so that a file
 * copied to another device does not open. The file: "GWPSK1", the 12-byte nonce, the 16-byte
 * tag, the ciphertext. Bytes in, bytes out: no TPM, no file.
 */
#define KSPSK_KEY_LEN  32
#define KSPSK_TEXT_MAX 1024          /* bytes of a PSK file's text, at most */
#define KSPSK_OVERHEAD (6 + 12 + 16) /* magic, nonce, tag */

/*
 * Encrypts len (at most KSPSK_TEXT_MAX) bytes of text for device id into out, which holds
 * KSPSK_OVERHEAD + len bytes, with a fresh random nonce. 0, or -EIO with OpenSSL's reason left
 * in its error queue.
 */
int kspsk_seal(const uint8_t key[KSPSK_KEY_LEN], const char *id, const uint8_t *text, size_t len,
               uint8_t *out, size_t *outlen);

/*
 * Decrypts a psk.enc of device id into text, which holds KSPSK_TEXT_MAX bytes. -EBADMSG if it
 * is not one, is damaged, or is another key's or another device's (text is then wiped).
 */
int kspsk_open(const uint8_t key[KSPSK_KEY_LEN], const char *id, const uint8_t *in, size_t inlen,
               uint8_t *text, size_t *len);

#endif
