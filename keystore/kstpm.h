/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_KSTPM_H
#define GW_KSTPM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The keystore's TPM 2.0 access through tpm2-tss ESYS (only kstpm.c includes tss2 headers).
 * One ESYS context, serialised by a mutex: callers may be on any thread. The keystore calls
 * it only from its TPM worker (tpmq.h), so that nothing else ever waits for the TPM.
 *
 * Keys are ECC P-256 signing keys created under a persistent storage key (the "parent"),
 * with fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth and sign, and no password.
 * They are stored only as TPM-wrapped blobs in the standard "TSS2 PRIVATE KEY" PEM format
 * (the ASN.1 TPMKey of tpm2-tss-engine and tpm2-openssl, emptyAuth TRUE), and are loaded
 * only for the moment of a signature (TPM2_Load, TPM2_Sign, TPM2_FlushContext), so that any
 * number of devices can use the TPM's three transient object slots.
 *
 * Every function returns 0 or -errno and logs what failed in words (lockout, missing storage
 * key, TPM unreachable, ...). TPM_RC_RETRY, TPM_RC_YIELDED and TPM_RC_TESTING are retried.
 */

#define KSTPM_DEFAULT_PARENT 0x81000001u
#define KSTPM_P256_POINT_LEN 65 /* 0x04 || X || Y */
#define KSTPM_SEAL_MAX       128
/* The PEM label of a TPMKey file. */
#define KSTPM_PEM_LABEL "TSS2 PRIVATE KEY"

/* Bits of TPMA_OBJECT (TPM 2.0 Part 2, 8.3), for callers and tests that check a key. */
#define KSTPM_ATTR_FIXED_TPM             0x00000002u
#define KSTPM_ATTR_FIXED_PARENT          0x00000010u
#define KSTPM_ATTR_SENSITIVE_DATA_ORIGIN 0x00000020u
#define KSTPM_ATTR_USER_WITH_AUTH        0x00000040u
#define KSTPM_ATTR_DECRYPT               0x00020000u
#define KSTPM_ATTR_SIGN                  0x00040000u

struct kstpm;
struct kstpm_key;
struct histogram;

/* The operations whose TPM time is kept as a latency histogram (for metrics). */
enum kstpm_op { KSTPM_OP_SIGN, KSTPM_OP_CREATE, KSTPM_OP_SEAL, KSTPM_OP_UNSEAL, KSTPM_OPS };

/* TPM time of each op so far (load + sign + flush for a signature); read from any thread. */
const struct histogram *kstpm_latency(const struct kstpm *tpm, enum kstpm_op op);

/*
 * Whether the TPM answers now: one TPM2_GetRandom. 0, -EBUSY if another command holds the TPM
 * (not waited for), or -errno (the reason is logged).
 */
int kstpm_ping(struct kstpm *tpm);

struct kstpm_stats {
	uint64_t commands; /* TPM commands sent (each Esys_* call counts one) */
	uint64_t signs;    /* completed kstpm_sign() calls */
	uint64_t sign_ns;  /* wall time inside kstpm_sign(), load + sign + flush */
	uint64_t retries;  /* commands repeated after RETRY / YIELDED / TESTING */
};

/*
 * Connects through a TCTI configuration string ("device:/dev/tpmrm0",
 * "swtpm:host=127.0.0.1,port=2321", ...). Uses the persistent storage key at parent, or, if
 * none is there and create_parent is set, creates the standard ECC P-256 storage key in the
 * owner hierarchy and makes it persistent at that handle.
 */
int kstpm_open(struct kstpm **out, const char *tcti, uint32_t parent, bool create_parent);
/* Accepts NULL. */
void kstpm_free(struct kstpm *tpm);

/*
 * Creates a new device key inside the TPM. *pem: malloc'd NUL-terminated "TSS2 PRIVATE KEY"
 * PEM text (TPM-wrapped blobs only: safe to store). pub: its public point.
 */
int kstpm_create_key(struct kstpm *tpm, char **pem, uint8_t pub[KSTPM_P256_POINT_LEN]);

/*
 * Parses a TPMKey structure (the DER body of a "TSS2 PRIVATE KEY" PEM); no TPM command.
 * Refuses anything but a loadable, password-less P-256 ECC signing key. pub may be NULL.
 */
int kstpm_key_from_der(const uint8_t *der, size_t len, struct kstpm_key **out,
                       uint8_t pub[KSTPM_P256_POINT_LEN]);
/*
 * The same from a key file's text: its first PEM block, which must carry KSTPM_PEM_LABEL
 * (-EINVAL if there is none, or another label), as kstpm_key_from_der() otherwise.
 */
int kstpm_key_from_pem(const char *pem, size_t len, struct kstpm_key **out,
                       uint8_t pub[KSTPM_P256_POINT_LEN]);
void kstpm_key_free(struct kstpm_key *key);
/* The key's TPMA_OBJECT attributes, as stored in its public area. */
uint32_t kstpm_key_attributes(const struct kstpm_key *key);
/* The persistent handle of the key's parent, as recorded in its TPMKey. */
uint32_t kstpm_key_parent(const struct kstpm_key *key);

/*
 * Load, ECDSA sign (the digest's own length picks SHA-256/384/512 scheme hash; 32 bytes for
 * TLS with P-256), flush. Writes a DER ECDSA-Sig-Value (at most 72 bytes) to sig.
 */
int kstpm_sign(struct kstpm *tpm, const struct kstpm_key *key, const uint8_t *digest, size_t dlen,
               uint8_t *sig, size_t *siglen);

/*
 * Seals a secret of at most KSTPM_SEAL_MAX bytes to this TPM as a keyedHash data object
 * under the parent; *blob is malloc'd opaque bytes (TPM-wrapped: safe to store).
 */
int kstpm_seal(struct kstpm *tpm, const uint8_t *secret, size_t len, uint8_t **blob,
               size_t *bloblen);
/* Load, Unseal, flush. secret must hold KSTPM_SEAL_MAX bytes. */
int kstpm_unseal(struct kstpm *tpm, const uint8_t *blob, size_t bloblen, uint8_t *secret,
                 size_t *len);

/* Without the lock (atomic counters): never waits for a command in progress. */
void kstpm_get_stats(struct kstpm *tpm, struct kstpm_stats *out);

#endif
