/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_PROVIDER_H
#define GW_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The OpenSSL 3 provider built into gatewayd ("gwkeystore"). It lets any OpenSSL user that is
 * handed a key-reference file (PEM_read_bio_PrivateKey, X509_REQ_sign_ctx, ...) use
 * a keystore key without ever seeing its private part: a decoder accepts the PEM labels below,
 * a keymgmt under the EC names exposes only the public key, and an ECDSA signature operation
 * asks the keystore to sign the digest (DESIGN.md decision 4). It knows nothing of TPMs or
 * files; ksprov_ops connects it to the keystore.
 *
 * Inside an OpenSSL async job (SSL_MODE_ASYNC) a signature does not block: the job's
 * ASYNC_WAIT_CTX gets one fd per signature (SSL_get_changed_async_fds() reports it added
 * with SSL_ERROR_WANT_ASYNC), the job pauses until the fd is readable, and once resumed it
 * clears the fd from the wait context (reported deleted after that call). The keystore
 * closes a deleted fd itself, at once or moments later: epoll forgets a closed fd on its own,
 * so EPOLL_CTL_DEL of a deleted async fd may fail with EBADF or ENOENT; drop it from your
 * own bookkeeping anyway. An SSL freed while its job is paused frees the wait context but
 * not the job (OpenSSL leaks its 32 KiB stack): let such a job finish first
 * (SSL_waiting_for_async()); the keystore's side is safe either way.
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
	 * (at least KSPROV_SIG_MAX bytes) and its length to *siglen. Returns 0 or -errno. Called
	 * outside OpenSSL async jobs, from any thread (a CSR's, libcurl's, gwctl's); blocks until
	 * the signature is made.
	 */
	int (*sign)(void *arg, void *key, const uint8_t *digest, size_t dlen, uint8_t *sig,
	            size_t *siglen);
	/*
	 * The same signature without blocking, for a caller inside an OpenSSL async job (a TLS
	 * connection with SSL_MODE_ASYNC on the event loop): the provider pauses the job until
	 * the fd fires, and the loop serves other connections meanwhile (DESIGN.md decision 3).
	 * These run on the job's 32 KiB stack: keep them small, no TPM call. Optional, all four
	 * or none; without them a job's signature blocks in sign.
	 *
	 * sign_start queues the signature and returns a handle for it, and in *fd an fd that
	 * becomes readable once it is done (the handle owns the fd); NULL (logged) if it cannot
	 * be queued.
	 */
	void *(*sign_start)(void *arg, void *key, const uint8_t *digest, size_t dlen, int *fd);
	/* Whether the signature is done; lock-free. */
	bool (*sign_done)(void *op);
	/* Once done: writes the signature or returns -errno as sign does, and frees the handle. */
	int (*sign_finish)(void *op, uint8_t *sig, size_t *siglen);
	/*
	 * Frees a handle whose result nobody will take, from any thread: OpenSSL freed the wait
	 * context of a job paused on it (SSL_free of a connection mid-handshake). A signature not
	 * started is dropped; one under way finishes first, and only then go its memory and fd.
	 * Called through the ops table the handle came from, which must therefore outlive every
	 * wait context (a static table).
	 */
	void (*sign_abandon)(void *op);
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
