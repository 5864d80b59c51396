/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_KS_INTERNAL_H
#define GW_KS_INTERNAL_H

/*
 * What keystore/'s own files share behind keystore.h: the store and its devices, and the
 * helpers a lower file defines for a higher one. The files are layers, calls going only
 * downwards (issue 14: no circles): entry.c, a device's folder and its files as data (checked
 * reads, the record, the PSK file, keys, certificates as loaded, a whole folder); store.c
 * above it, the store (its folder and lock, the table of devices on the registry, adding and
 * removing devices, the provider's view); record.c (records, PSKs, attributes, pairing) and
 * cert.c (certificates, requests, renewal, the gateway's own identity) on top, calling both
 * and never each other. Where the keys live is a backend's business (backend.h).
 */

#include "device.h"
#include "keystore.h"
#include "kspsk.h"
#include "provider.h"
#include "tpmq.h"

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#define PSK_IDENTITY_MAX KEYSTORE_IDENTITY_MAX
/* Bytes of a device record file, read back whole at every start. */
#define RECORD_MAX 65536

struct ks_backend;
struct ks_backend_ops;

struct psk {
	char identity[PSK_IDENTITY_MAX + 1]; /* "" when there is none */
	uint8_t key[KEYSTORE_PSK_MAX];
	size_t len;
};

/* The PSK file's plaintext, identities and keys in hex, is at most this long. */
#define PSK_TEXT_MAX KSPSK_TEXT_MAX

struct attr {
	char *key;
	char *value;
};

/* A key and the certificate issued for it. */
struct ks_tls {
	char *cert_file; /* NULL until a certificate is imported */
	char *key_file;  /* what the TLS library is given; NULL: no key */
	uint8_t pub[KSPROV_P256_POINT_LEN];
	char subject[256];
	time_t not_before, not_after;
};

/*
 * The keystore's slot on a device (device.h), and the gateway's own identity, which is no
 * device (dev NULL).
 */
struct device_ks {
	char *id;
	struct device *dev; /* its registry entry, whose state and enabled it keeps in step */
	/* The record's backend= (the store's: ks_load_device() refuses another). */
	const struct ks_backend_ops *backend;
	enum keystore_state state;
	/* The gateway's own identity (GATEWAY_DIR): no PSK, no sensor. */
	bool self;
	/* The sensor's PSK, and during a rotation's grace period the one it replaced. */
	struct psk psk;
	struct psk prev;
	time_t prev_until;
	struct ks_tls cur;
	/* A renewal under way: its new key, then the certificate on trial (the "next." files). */
	struct ks_tls next;
	struct attr *attrs;
	size_t nattrs;
};

/* The gateway's own key and certificate live beside the devices, under a name no id can take. */
#define GATEWAY_DIR "@gateway"

struct keystore {
	char *dir;
	int dirfd;
	int lockfd;
	char *device_ca_file;
	unsigned psk_grace;
	/*
	 * The worker that runs every TPM command and every signature (tpmq.h): once the store is
	 * open no other thread calls kstpm_*() with a TPM command in it.
	 */
	struct tpmq *tpmq;
	/* Where the keys are (keystore.backend); its TPM commands run on tpmq. */
	struct ks_backend *be;
	/* The devices, each with its record in its ks slot (one registry, made by the store). */
	struct device_registry *reg;
	/* The gateway's own identity, for EST; id NULL until it has a key. */
	struct device_ks gateway;
};

/* entry.c: files */
void ks_log_openssl(const char *what);
int ks_read_file(int dirfd, const char *dir, const char *name, bool secret, size_t max,
                 uint8_t **out, size_t *len);
int ks_fsync_dir(int dirfd, const char *dir);
/*
 * A cache beside the file it was derived from (key.pem.pub, cert.pem.sum), in the folder fd:
 * read, true only when it holds exactly len bytes (at most KS_CACHE_MAX), which the caller
 * then checks against the file's digest; written, not durably (one lost in a crash is made
 * again), failures logged at debug level only.
 */
#define KS_CACHE_MAX 512
bool ks_cache_read(int fd, const char *name, void *buf, size_t len);
void ks_cache_write(int fd, const char *dir, const char *name, const void *buf, size_t len,
                    mode_t mode);
int ks_open_dir(int at, const char *name, const char *path);
int ks_unlink_secrets(int fd, const char *dir);
int ks_unlink_next(int fd, const char *dir);

/* entry.c: the record and the PSK file */
int ks_random_alnum(uint8_t *out, size_t len);
void ks_psk_clear(struct psk *p);
void ks_tls_finish(struct ks_tls *t);
void ks_device_finish(struct device_ks *d);
/* One key of the record: state, backend or attr.NAME; -EINVAL for a value it does not know. */
int ks_record_set(struct device_ks *d, const char *key, const char *value);
/* The attribute enabled is not "false". */
bool ks_enabled(const struct device_ks *d);
int ks_record_parse(struct device_ks *d, const char *dir, char *text);
/* The record file's text, malloc'd. */
char *ks_record_format(const struct device_ks *d);
int ks_load_psk(struct keystore *ks, struct device_ks *d, int fd, const char *dir);
int ks_write_psk(struct keystore *ks, int fd, const char *dir, const struct device_ks *d);

/* entry.c: keys and certificates */
int ks_load_key(struct keystore *ks, struct device_ks *d, int fd, const char *dir, bool next);
int ks_write_key(struct keystore *ks, int fd, const char *dir, const char *id, bool next,
                 enum tpmq_prio prio);
STACK_OF(X509) * ks_read_chain(const char *file, const char *pem, size_t len);
/* t's subject and validity, from its certificate file (zeros without one). */
void ks_cert_summary(struct ks_tls *t);
EVP_PKEY *ks_public_key(const uint8_t pub[KSPROV_P256_POINT_LEN]);
int ks_point_of(EVP_PKEY *pkey, uint8_t pub[KSPROV_P256_POINT_LEN]);
void ks_load_cert(struct keystore *ks, struct device_ks *d, int fd, bool next);
int ks_load_next(struct keystore *ks, struct device_ks *d, int fd, const char *dir);
void ks_tls_info(const struct device_ks *d, struct keystore_info *out);

/* entry.c: a whole device folder into d */
int ks_load_device(struct keystore *ks, struct device_ks *d, const char *id, bool self);

/* store.c */
struct device_ks *ks_find_device(const struct keystore *ks, const char *id);
/* After d's state or attributes changed: its registry entry says the same. */
void ks_sync_device(struct device_ks *d);
const struct device_ks *ks_identity_owner(const struct keystore *ks, const char *identity,
                                          size_t len, bool *prev);
/* The priority of the provider's signatures on this thread while a CSR is signed, or -1. */
extern __thread int ks_csr_prio;
int ks_create_entry(struct keystore *ks, const struct device_ks *rec);
int ks_save_record(struct keystore *ks, const struct device_ks *d);
void ks_reload_device(struct keystore *ks, struct device_ks *d);

#endif
