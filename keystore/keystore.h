/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_KEYSTORE_H
#define GW_KEYSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

/*
 * Per-device credentials: the upstream key and certificate, the sensor's DTLS PSK, the
 * device's state and attributes. The API is message-shaped (sign this, give me the PSK for
 * that identity) and never hands out private key bytes, so the store could move into a
 * separate, privileged process without changing its callers.
 *
 * Layout under STATE_DIR/keystore/ (0700), one folder per device (0700):
 *   device          state, backend, PSK identity, attributes (text, key=value lines)
 *   cert.pem        the device's certificate chain, once imported
 *   backend "tpm":  key.tss2.pem  TPM-wrapped key blobs ("TSS2 PRIVATE KEY"; no secret)
 *                   psk.enc       the PSK, AES-256-GCM under a master key sealed in the TPM
 *   backend "soft": key.pem       PKCS#8 private key (0600)
 *                   keyref.pem    a reference to it for the TLS library (no secret)
 *                   psk.key       the PSK in hex (0600)
 *   master.sealed   (tpm) the master key, sealed to this TPM
 *   .lock           held by whoever may change the store (gatewayd, or gwctl without it)
 * Every change is written to a temp file, fsync'd and renamed, and the folder fsync'd; a new
 * device is assembled in a temp folder and renamed into place. A crash leaves the old or the
 * new state, never a mix.
 */

#define KEYSTORE_PSK_MAX      64
#define KEYSTORE_PSK_MIN      16
#define KEYSTORE_IDENTITY_MAX 128
/* keystore_device_pair()'s grace: keystore_config.psk_grace. */
#define KEYSTORE_GRACE_DEFAULT UINT_MAX

struct device;
struct device_registry;
struct keystore;

struct keystore_config {
	const char *state_dir;
	const char *backend;        /* "soft" or "tpm" */
	const char *tcti;           /* tpm: TCTI configuration string */
	uint32_t parent;            /* tpm: persistent handle of the storage key */
	bool create_parent;         /* tpm: create the storage key if it is missing */
	const char *device_ca_file; /* CA(s) a device certificate must chain to */
	unsigned psk_grace;         /* seconds a rotated-out PSK stays valid */
	/*
	 * Only this device is loaded (NULL: every device), for a tool's command on one device,
	 * which then costs the same in a store of 10,000 as in one of 10. A command that adds
	 * a PSK identity (unique in the store) or lists the devices needs them all.
	 */
	const char *only;
};

/* A reload: cfg's psk_grace and device_ca_file from now on (the rest needs a restart). */
void keystore_reconfigure(struct keystore *ks, const struct keystore_config *cfg);

enum keystore_state { KEYSTORE_ACTIVE, KEYSTORE_SUSPENDED, KEYSTORE_REVOKED };

struct keystore_info {
	const char *id;
	const char *backend;
	const char *psk_identity;
	const char *prev_psk_identity; /* still accepted until prev_psk_until, or NULL */
	time_t prev_psk_until;
	enum keystore_state state;
	bool enabled; /* attribute enabled is not "false" */
	bool has_cert;
	char subject[256]; /* certificate subject, one line */
	time_t not_before;
	time_t not_after; /* certificate expiry */
	bool renewing;    /* a renewal's new key exists */
	bool on_trial;    /* ... and its certificate is being tried upstream */
	time_t next_not_after;
};

/*
 * Opens the store (creating it if missing), takes its lock (-EBUSY if another process holds
 * it), starts the worker thread that runs every TPM command and signature (with all signals
 * blocked), connects the backend and registers the OpenSSL provider. Errors are logged with
 * the file or TPM condition and what to do.
 */
int keystore_open(struct keystore **out, const struct keystore_config *cfg);
/*
 * Stops the worker (requests still queued fail with -ECANCELED; the one running finishes)
 * and closes the store. Free the TLS connections that use keystore keys first.
 */
void keystore_free(struct keystore *ks);

size_t keystore_count(const struct keystore *ks);
/* The i-th device id, in sorted order, or NULL past the end. */
const char *keystore_device_id(const struct keystore *ks, size_t i);
/*
 * The store's devices as the registry the other modules hang their state on (device.h): the
 * keystore adds, updates (state, enabled) and removes them; it lives as long as the keystore.
 */
struct device_registry *keystore_devices(const struct keystore *ks);
int keystore_device_info(const struct keystore *ks, const char *id, struct keystore_info *out);
const char *keystore_state_name(enum keystore_state state);

/*
 * Creates a device: a new key in the backend and a PSK. psk_identity NULL: the device id.
 * psk NULL: 32 random letters and digits (about 190 bits, and printable for sensors whose
 * tools take keys as text). The PSK is written to psk_out (KEYSTORE_PSK_MAX bytes) for the
 * technician to flash into the sensor, once.
 */
int keystore_device_add(struct keystore *ks, const char *id, const char *psk_identity,
                        const uint8_t *psk, size_t psk_len, uint8_t *psk_out, size_t *psk_out_len);
/*
 * Gives the device's sensor a new PSK identity (ID-xxxxxx) and key (psk, or 32 random letters
 * and digits when NULL); the previous identity and key stay valid for grace seconds, so that a
 * sensor can be re-flashed without a gap. Writes the new identity (KEYSTORE_IDENTITY_MAX + 1
 * bytes) and key (KEYSTORE_PSK_MAX bytes) for the technician.
 */
int keystore_device_pair(struct keystore *ks, const char *id, unsigned grace, const uint8_t *psk,
                         size_t psk_len, char *identity_out, uint8_t *psk_out, size_t *psk_out_len);

/* Removes a device and destroys its key (the only copy of a TPM key's blob). */
int keystore_device_remove(struct keystore *ks, const char *id);

/*
 * Suspends, resumes or revokes a device. Revoking is final: the key and the PSK are destroyed
 * (the record and certificate stay, for the operator) and -EPERM refuses any other state
 * afterwards.
 */
int keystore_device_set_state(struct keystore *ks, const char *id, enum keystore_state state);
/* Sets a free-form attribute; an empty or NULL value removes it. enabled=false suspends. */
int keystore_device_set_attr(struct keystore *ks, const char *id, const char *key,
                             const char *value);
/* 0 if key=value may be stored as an attribute, else -EINVAL with the reason in why. */
int keystore_check_attr(const char *key, const char *value, char *why, size_t len);
const char *keystore_device_attr(const struct keystore *ks, const char *id, const char *key);
/* The same for a device already found (the data path's: no lookup by id); NULL: not set. */
const char *keystore_attr(const struct device *dev, const char *key);
size_t keystore_device_attr_count(const struct keystore *ks, const char *id);
int keystore_device_attr_at(const struct keystore *ks, const char *id, size_t i, const char **key,
                            const char **value);
/* Active and not disabled by enabled=false: may handshake, connect and forward. */
bool keystore_device_usable(const struct keystore *ks, const char *id);

/* A PKCS#10 request, subject CN=id, signed by the device key; *pem is malloc'd. */
int keystore_device_csr(struct keystore *ks, const char *id, char **pem);
/*
 * Installs a certificate (chain) for the device after checking that its public key is the
 * device's, that it chains to the device CA and that it is valid now. On refusal returns
 * -EINVAL (or -EKEYREJECTED for a foreign key, -EKEYEXPIRED for an expired one) and writes
 * the reason to why.
 */
int keystore_device_import_cert(struct keystore *ks, const char *id, const char *pem, size_t pemlen,
                                char *why, size_t whylen);

/*
 * Looks up the sensor PSK for a DTLS identity. On success copies the key into key (at least
 * KEYSTORE_PSK_MAX bytes), its length into *keylen and the owning device into *dev (also with
 * -EPERM); *dev is borrowed: take a reference (device_ref()) to keep it. -ENOENT for an unknown
 * identity, -EPERM for a device that is not active.
 */
int keystore_psk_lookup(const struct keystore *ks, const uint8_t *identity, size_t idlen,
                        struct device **dev, uint8_t *key, size_t *keylen);

/*
 * Whether a PSK identity is one device's sensor may use now (its current one, or its previous
 * one within the grace period).
 */
bool keystore_identity_valid(const struct device *dev, const uint8_t *identity, size_t len);

/*
 * Files to hand to the TLS library for a device's upstream session: its certificate chain and
 * its key reference (which only this process's provider can sign with); while a renewed
 * certificate is on trial, that one and its new key. -ENOENT: no such device; -ENOKEY: no
 * certificate imported yet.
 */
int keystore_tls_files(const struct keystore *ks, const char *device_id, const char **cert_file,
                       const char **key_file);

/*
 * Renewal, in three steps that survive a crash at any point:
 *   keystore_device_rekey()       a new key beside the current one, and a request (CSR) for it;
 *   keystore_device_stage_cert()  the certificate issued for it, checked like an import, goes
 *                                 on trial: keystore_tls_files() hands out the new pair;
 *   keystore_device_commit()      the new pair replaces the old (whose key is destroyed), or
 *   keystore_device_discard()     the new pair is destroyed and the old one serves again.
 * A new key without a certificate does not outlive the process; a pair on trial does.
 */
int keystore_device_rekey(struct keystore *ks, const char *id, char **csr_pem);
int keystore_device_stage_cert(struct keystore *ks, const char *id, const char *pem, size_t pemlen,
                               char *why, size_t whylen);
int keystore_device_commit(struct keystore *ks, const char *id);
int keystore_device_discard(struct keystore *ks, const char *id);

/*
 * The gateway's own identity, with which it authenticates to the EST server on behalf of its
 * devices: a key in the same backend (made by the first keystore_gateway_csr()) and a
 * certificate checked against that key and the clock (the EST server judges its issuer).
 */
int keystore_gateway_csr(struct keystore *ks, const char *cn, char **pem);
int keystore_gateway_import_cert(struct keystore *ks, const char *pem, size_t pemlen, char *why,
                                 size_t whylen);
/* -ENOENT: no key yet. */
int keystore_gateway_info(const struct keystore *ks, struct keystore_info *out);
/* -ENOKEY: no key or no certificate yet. */
int keystore_gateway_tls_files(const struct keystore *ks, const char **cert_file,
                               const char **key_file);

/*
 * The TPM is a co-processor with a queue: every TPM command and every signature with a
 * keystore key (either backend) runs on one worker thread, in this order of priority and
 * first come first served within a priority (DESIGN.md decisions 3 and 5).
 */
enum keystore_prio {
	KEYSTORE_PRIO_ADMIN,      /* an operator waits: key creation, CSRs, gwctl, status */
	KEYSTORE_PRIO_HANDSHAKE,  /* a TLS handshake waits for its signature */
	KEYSTORE_PRIO_BACKGROUND, /* renewals: a new key and its CSR */
	KEYSTORE_PRIOS
};

/*
 * Statistics for status, metrics, benchmarks and the connect scheduler. Read without locks
 * (atomic counters): keystore_get_stats() never waits for the TPM and may run on the event
 * loop as often as it likes.
 */
struct keystore_stats {
	/* The TPM itself (zeros for the soft backend). */
	uint64_t tpm_commands; /* TPM commands sent (each TPM2_* call, retries included) */
	uint64_t signs;        /* TPM signatures made (TPM2_Load + TPM2_Sign + TPM2_FlushContext) */
	uint64_t sign_ns;      /* the TPM's time for those, in all */

	/* The worker (both backends; with the soft backend its time is CPU time). */
	unsigned queued[KEYSTORE_PRIOS]; /* requests waiting now, per priority */
	bool busy;                       /* a request is running now */
	/*
	 * Time the worker has spent running requests since the keystore opened, the one running
	 * now included. The TPM's busy fraction over an interval is the difference of two samples
	 * divided by the wall time between them.
	 */
	uint64_t busy_ns;
	/* TLS handshake signatures run (KEYSTORE_PRIO_HANDSHAKE), failed ones included. */
	uint64_t handshake_signs;
	/*
	 * Their time on the worker (queueing excluded), as a moving average: each signature
	 * moves it an eighth of the way to its own time; 0 before the first. The pace at which
	 * the TPM serves handshakes is about 1 / this per second while it does nothing else.
	 */
	uint64_t handshake_sign_ns;
	/* Requests dropped before they ran: abandoned by their TLS connection, or at shutdown. */
	uint64_t cancelled;
};
void keystore_get_stats(const struct keystore *ks, struct keystore_stats *out);

/* TPM operations timed for metrics; their latencies are NULL for the soft backend. */
enum keystore_tpm_op {
	KEYSTORE_TPM_SIGN,   /* a TLS handshake's signature: load + sign + flush */
	KEYSTORE_TPM_CREATE, /* a new device key */
	KEYSTORE_TPM_SEAL,
	KEYSTORE_TPM_UNSEAL,
	KEYSTORE_TPM_OPS
};
const char *keystore_tpm_op_name(enum keystore_tpm_op op);
struct histogram;
const struct histogram *keystore_tpm_latency(const struct keystore *ks, enum keystore_tpm_op op);

/*
 * Whether the keystore's TPM answers now: one TPM2_GetRandom on the worker, at ADMIN priority,
 * and only when the worker is idle, so that it never waits behind a signing storm. 0, -EBUSY
 * while the worker runs or has requests queued (a TPM in use answers: reachable enough),
 * -ENODEV for the soft backend, or -errno (the reason is logged).
 */
int keystore_tpm_ping(struct keystore *ks);

#endif
