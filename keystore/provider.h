/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_PROVIDER_H
#define GW_PROVIDER_H

#include <stddef.h>
#include <stdint.h>

/*
 * The OpenSSL 3 provider built into gatewayd ("gwkeystore"). It lets any OpenSSL user that is
 * handed a key-reference file (paho's SSL_CTX_use_PrivateKey_file, X509_REQ_sign_ctx, ...) use
 * a keystore key without ever seeing its private part: a decoder accepts the PEM labels below,
 * a keymgmt under the EC names exposes only the public key, and an ECDSA signature operation
 * asks the keystore to sign the digest (DESIGN.md decision 4). It knows nothing of TPMs or
 * files; ksprov_ops connects it to the keystore.
 *
 * Only P-256 ECDSA keys. The default provider stays loaded first and keeps serving everything
 * else; no process-wide property override is set.
 */

#define KSPROV_NAME           "gwkeystore"
#define KSPROV_P256_POINT_LEN 65 /* 0x04 || X || Y */
/* DER ECDSA-Sig-Value for P-256: SEQUENCE { INTEGER r, INTEGER s }, 2 + 2 * (2 + 33) bytes. */
#define KSPROV_SIG_MAX 72

struct ksprov_ops {
	/* NULL-terminated PEM labels the decoder accepts, e.g. "TSS2 PRIVATE KEY". */
	const char *const *labels;
	/*
	 * Decodes a PEM body (DER) carrying one of labels into a key handle, and writes the key's
	 * public point (uncompressed P-256). Returns NULL if der is not a usable key (logged).
	 */
	void *(*load)(void *arg, const char *label, const uint8_t *der, size_t len,
	              uint8_t pub[KSPROV_P256_POINT_LEN]);
	void (*free)(void *arg, void *key);
	/*
	 * Signs a SHA-256 (or other) digest with the key; writes a DER ECDSA-Sig-Value to sig
	 * (at least 72 bytes) and its length to *siglen. Returns 0 or -errno. Called from any
	 * thread (paho's); the implementation serialises as it needs.
	 */
	int (*sign)(void *arg, void *key, const uint8_t *digest, size_t dlen, uint8_t *sig,
	            size_t *siglen);
};

/*
 * Registers the provider with OSSL_PROVIDER_add_builtin and loads it into the default library
 * context after the "default" provider. ops and arg must outlive ksprov_finish(). Returns 0 or
 * -errno (the OpenSSL error queue logged).
 */
int ksprov_init(const struct ksprov_ops *ops, void *arg);
/* Unloads the provider (not "default"); safe to call if ksprov_init failed or never ran. */
void ksprov_finish(void);

#endif
