/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_KS_BACKEND_H
#define GW_KS_BACKEND_H

#include "keystore.h"
#include "provider.h"
#include "tpmq.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Where the keys live (keystore.backend), private to keystore/: the files a backend keeps in
 * a device's folder, how it makes, reads, seals and signs with them. The rest of the store
 * calls a backend only through its ops, so that each one is one file (backend-soft.c,
 * backend-tpm.c) and a new one is another.
 *
 * A backend's state starts with struct ks_backend, whose ops tag it; the backend's own
 * functions downcast with an assert. Every function runs on the caller's thread except sign(),
 * which runs on the worker (tpmq.h), as every TPM command does.
 */
struct ks_backend {
	const struct ks_backend_ops *ops;
};

struct ks_backend_ops {
	/* keystore.backend's word, and the device record's backend= value. */
	const char *name;
	/* A device's key file; [true]: a renewal's new key. */
	const char *key_file[2];
	/* What the TLS library is given for that key (the key file itself, or a reference). */
	const char *tls_ref[2];
	/* The PEM label of a tls_ref file: the provider hands those to key_decode(). */
	const char *pem_label;
	/*
	 * The PSK file, read whole (at most psk_file_max bytes) and checked as a secret file
	 * (ours, mode 0600) when psk_file_secret is set.
	 */
	const char *psk_file;
	bool psk_file_secret;
	size_t psk_file_max;

	/* Connects the backend; the worker q runs its TPM commands. Logs why it cannot. */
	int (*open)(struct ks_backend **out, const struct keystore_config *cfg, struct tpmq *q,
	            int dirfd, const char *dir);
	/* Once the worker has stopped. */
	void (*free)(struct ks_backend *b);
	/*
	 * A new key in the folder fd (path dir) for device id: its key_file[next] and
	 * tls_ref[next]. prio: an operator's or a renewal's place in the worker's queue.
	 */
	int (*create_key)(struct ks_backend *b, int fd, const char *dir, const char *id, bool next,
	                  enum tpmq_prio prio);
	/*
	 * Reads key_file[next] in the folder fd (path dir) of device id, and its public point
	 * into pub; makes sure tls_ref[next] is there. -ENOENT (not logged): no such key.
	 */
	int (*load_key)(struct ks_backend *b, int fd, const char *dir, const char *id, bool next,
	                uint8_t pub[KSPROV_P256_POINT_LEN]);
	/*
	 * The PSK file's bytes (in, inlen) of device id in dir to its text (at most
	 * KSPSK_TEXT_MAX bytes), and back (out holds KSPSK_OVERHEAD + len bytes).
	 */
	int (*psk_open)(struct ks_backend *b, const char *dir, const char *id, const uint8_t *in,
	                size_t inlen, char *text, size_t *len);
	int (*psk_seal)(struct ks_backend *b, const char *id, const char *text, size_t len,
	                uint8_t *out, size_t *outlen);
	/*
	 * For the provider: a pem_label file's DER body (in the store dirfd, path dir) to a key
	 * for sign() and its public point, or NULL. b is NULL when the store uses another backend.
	 */
	void *(*key_decode)(struct ks_backend *b, int dirfd, const char *dir, const uint8_t *der,
	                    size_t len, uint8_t pub[KSPROV_P256_POINT_LEN]);
	/* On the worker: a DER ECDSA signature of digest (sig holds KSPROV_SIG_MAX bytes). */
	int (*sign)(struct ks_backend *b, void *key, const uint8_t *digest, size_t dlen,
	            uint8_t *sig, size_t *siglen);
	/* Accepts NULL. */
	void (*key_free)(void *key);
	/* keystore_tpm_ping(): -ENODEV without a TPM. */
	int (*ping)(struct ks_backend *b);
	/* Adds the TPM's own counters to out (left zero without a TPM). */
	void (*stats)(struct ks_backend *b, struct keystore_stats *out);
	/* keystore_tpm_latency(): NULL without a TPM. */
	const struct histogram *(*latency)(struct ks_backend *b, enum keystore_tpm_op op);
};

extern const struct ks_backend_ops ks_soft_ops, ks_tpm_ops;

/*
 * entry.c: every backend, in the order the provider lists their labels (store.c). The count
 * is spelled out because store.c sizes an array by it; entry.c asserts that it matches.
 */
#define KS_NBACKENDS 2
extern const struct ks_backend_ops *const ks_backends[];

/* entry.c: the backend called name, or NULL. */
const struct ks_backend_ops *ks_backend_find(const char *name);

#endif
