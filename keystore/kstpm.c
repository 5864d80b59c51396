/* SPDX-License-Identifier: Apache-2.0 */
#include "kstpm.h"
#include "histogram.h"
#include "log.h"
#include "tpmkey.h"
#include "xalloc.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

/*
 * ESYS 3.2.1 already resubmits a command at once, up to 5 times, when the TPM answers
 * TPM_RC_RETRY, TPM_RC_YIELDED or TPM_RC_TESTING (_ESYS_MAX_SUBMISSIONS in esys_int.h; those
 * resubmissions are invisible to us and not counted). If that was not enough the TPM is busy for
 * longer, e.g. testing an algorithm on first use (TPM 2.0 Part 1, "Self-Test Modes"), so we wait
 * and send again: 10, 20, 40, 80 and 160 ms, 310 ms in all, while holding the one mutex.
 */
#define RETRY_MAX      5
#define RETRY_FIRST_MS 10

/* DER ECDSA-Sig-Value (RFC 3279, 2.2.3) for P-256: 2 + 2 * (2 + 33) bytes at most. */
#define ECDSA_P256_SIG_MAX 72
#define P256_COORD_LEN     32

/* Serialised sealed objects start with this version byte, then TPM2B_PUBLIC, TPM2B_PRIVATE. */
#define SEAL_BLOB_VERSION 1

struct kstpm {
	pthread_mutex_t lock; /* serialises everything below: one ESYS context, one command */
	char *tcti_conf;
	uint32_t parent_handle;
	bool create_parent;
	TSS2_TCTI_CONTEXT *tcti;
	ESYS_CONTEXT *esys; /* NULL while disconnected: the next call reconnects */
	ESYS_TR parent;
	bool broken; /* the TCTI failed: drop the context before the next command */
	/* Counted under lock, read without it: status must not wait for a TPM command. */
	struct {
		atomic_uint_fast64_t commands, signs, sign_ns, retries;
	} stats;
	/* TPM time per operation, lock waits excluded; observed under lock, read without. */
	struct histogram latency[KSTPM_OPS];
};

struct kstpm_key {
	uint32_t parent;
	TPM2B_PUBLIC pub;
	TPM2B_PRIVATE priv;
};

static uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * The TPM's own response code without its handle/parameter/session number (TPM 2.0 Part 2,
 * 6.6: format-one codes carry it in bits 6 and 8 to 11), or 0 if rc did not come from the TPM.
 * A resource manager passes TPM codes on under its own layer number.
 */
static uint32_t
tpm_rc_base(TSS2_RC rc)
{
	TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;

	if (rc == TSS2_RC_SUCCESS ||
	    (layer != TSS2_TPM_RC_LAYER && layer != TSS2_RESMGR_TPM_RC_LAYER))
		return 0;
	rc &= ~TSS2_RC_LAYER_MASK;
	if (rc & TPM2_RC_FMT1)
		return rc & (TPM2_RC_FMT1 | 0x3f);
	return rc;
}

/*
 * Called after every ESYS call that sends a command: counts it, and says whether to send it
 * again after a short sleep.
 */
static bool
again(struct kstpm *tpm, TSS2_RC rc, unsigned *attempt)
{
	uint32_t base = tpm_rc_base(rc);
	struct timespec ts;
	unsigned ms;

	atomic_fetch_add_explicit(&tpm->stats.commands, 1, memory_order_relaxed);
	if (base != TPM2_RC_RETRY && base != TPM2_RC_YIELDED && base != TPM2_RC_TESTING)
		return false;
	if (*attempt >= RETRY_MAX)
		return false;
	ms = RETRY_FIRST_MS << *attempt;
	(*attempt)++;
	atomic_fetch_add_explicit(&tpm->stats.retries, 1, memory_order_relaxed);
	log_debug("kstpm: TPM busy (%s), retry %u of %u in %u ms", Tss2_RC_Decode(rc), *attempt,
	          RETRY_MAX, ms);
	ts = (struct timespec){.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
	return true;
}

/* Turns a failed ESYS call into -errno and one log line that says what to do about it. */
static int
tpm_fail(struct kstpm *tpm, const char *what, TSS2_RC rc)
{
	TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;
	uint32_t base = tpm_rc_base(rc);
	const char *msg = Tss2_RC_Decode(rc);

	if (layer != TSS2_TPM_RC_LAYER && (rc & ~TSS2_RC_LAYER_MASK) == TSS2_BASE_RC_MEMORY) {
		log_warnx("kstpm: %s: out of memory (%s)", what, msg);
		return -ENOMEM;
	}
	if (layer == TSS2_TCTI_RC_LAYER) {
		/* The connection is gone (swtpm or abrmd restarted, device reset): reconnect. */
		tpm->broken = true;
		log_warnx("kstpm: %s: TPM unreachable at %s: %s; will reconnect on next use", what,
		          tpm->tcti_conf, msg);
		return -EIO;
	}
	switch (base) {
	case TPM2_RC_LOCKOUT:
		log_warnx(
		        "kstpm: %s: TPM is in dictionary-attack lockout: %s; wait for the lockout "
		        "recovery time or clear it with tpm2_dictionarylockout --clear-lockout",
		        what, msg);
		return -EACCES;
	case TPM2_RC_OBJECT_MEMORY:
	case TPM2_RC_SESSION_MEMORY:
	case TPM2_RC_MEMORY:
		log_warnx(
		        "kstpm: %s: TPM object memory full (TPM_RC_OBJECT_MEMORY or similar): %s; "
		        "another program keeps objects loaded on this TPM: use the kernel resource "
		        "manager (tcti device:/dev/tpmrm0) or flush them (tpm2_flushcontext -t)",
		        what, msg);
		return -ENOSPC;
	case TPM2_RC_RETRY:
	case TPM2_RC_YIELDED:
	case TPM2_RC_TESTING:
		log_warnx("kstpm: %s: TPM still busy after %d retries: %s", what, RETRY_MAX, msg);
		return -EAGAIN;
	case TPM2_RC_INITIALIZE:
		log_warnx("kstpm: %s: TPM not started (%s): run tpm2_startup -c", what, msg);
		return -EIO;
	case TPM2_RC_INTEGRITY:
		log_warnx("kstpm: %s: the blob is damaged or was not made by this TPM under the "
		          "storage key at 0x%08x: %s",
		          what, tpm->parent_handle, msg);
		return -EBADMSG;
	case TPM2_RC_BAD_AUTH:
	case TPM2_RC_AUTH_FAIL:
		log_warnx("kstpm: %s: authorization refused: %s; the keystore uses empty "
		          "passwords (owner hierarchy and storage key)",
		          what, msg);
		return -EACCES;
	case TPM2_RC_HANDLE:
		log_warnx("kstpm: %s: no such object: %s", what, msg);
		return -ENOENT;
	default:
		log_warnx("kstpm: %s failed: %s (0x%x)", what, msg, rc);
		return -EIO;
	}
}

/*
 * The standard storage key: the SRK template of the TCG TPM v2.0 Provisioning Guidance (ECC
 * NIST P-256, AES-128-CFB, restricted decrypt, noDA) with an empty unique field, as
 * tpm2_createprimary uses. Attributes: Part 2, 8.3.
 */
static const TPM2B_PUBLIC srk_template = {
        .publicArea.type = TPM2_ALG_ECC,
        .publicArea.nameAlg = TPM2_ALG_SHA256,
        .publicArea.objectAttributes = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT |
                                       TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                       TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                                       TPMA_OBJECT_NODA,
        .publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES,
        .publicArea.parameters.eccDetail.symmetric.keyBits.aes = 128,
        .publicArea.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB,
        .publicArea.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL,
        .publicArea.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256,
        .publicArea.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL,
};

/*
 * Device keys. The scheme is TPM_ALG_NULL so that each TPM2_Sign names its own (ECDSA with the
 * hash the digest's length implies): a key whose scheme is set accepts only that scheme and
 * hash (TPM 2.0 Part 3, 20.2), which would tie a P-256 key to SHA-256 for good.
 * noDA: an empty password cannot be guessed, so dictionary-attack protection buys nothing, and
 * without noDA a lockout caused by any other program on the box (wrong passwords on its own
 * keys) stops every device's TLS handshake: measured on swtpm, such a key's TPM2_Sign fails
 * with TPM_RC_LOCKOUT (0x921) until the lockout ends; with noDA it signs (Part 1, "Dictionary
 * Attack Protection").
 */
static const TPM2B_PUBLIC device_key_template = {
        .publicArea.type = TPM2_ALG_ECC,
        .publicArea.nameAlg = TPM2_ALG_SHA256,
        .publicArea.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                       TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                                       TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_NODA,
        .publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL,
        .publicArea.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL,
        .publicArea.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256,
        .publicArea.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL,
};

/*
 * Sealed data: a keyedHash object with sign and decrypt CLEAR (TPM 2.0 Part 3, 12.7) whose
 * sensitive data we supply, so sensitiveDataOrigin must be CLEAR (Part 2, 8.3). Its authValue
 * is empty and userWithAuth SET: whoever can talk to this TPM and holds the blob can unseal, so
 * the blob protects the secret from copies of the disk, not from root on this machine. noDA
 * for the same reason as device keys: a lockout must not take the gateway's PSKs away.
 */
static const TPM2B_PUBLIC seal_template = {
        .publicArea.type = TPM2_ALG_KEYEDHASH,
        .publicArea.nameAlg = TPM2_ALG_SHA256,
        .publicArea.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                       TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA,
        .publicArea.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL,
};

/*
 * Finds the storage key, or creates it. Authorisation is by password sessions with empty
 * passwords (ESYS_TR_PASSWORD) for the owner hierarchy and the storage key: acceptable while
 * the gateway owns its TPM. An HMAC or salted session (parameter encryption on the bus) is the
 * next step if the sealed secrets must be protected from someone probing the TPM's bus.
 */
static int
parent_attach(struct kstpm *tpm)
{
	TPM2B_SENSITIVE_CREATE sens = {0};
	TPM2B_DATA outside = {0};
	TPML_PCR_SELECTION pcrs = {0};
	TPMS_CAPABILITY_DATA *caps = NULL;
	TPM2B_PUBLIC *pub = NULL;
	ESYS_TR obj = ESYS_TR_NONE;
	unsigned attempt = 0;
	bool found;
	TPMA_OBJECT a;
	TSS2_RC rc;
	int r;

	/*
	 * Ask first whether the handle is in use: on a miss, Esys_TR_FromTPMPublic itself works
	 * (TPM_RC_HANDLE) but tpm2-tss 3.2.1 prints three WARNING/ERROR lines to stderr, which
	 * would greet every operator on the normal first start.
	 */
	do {
		rc = Esys_GetCapability(tpm->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
		                        TPM2_CAP_HANDLES, tpm->parent_handle, 1, NULL, &caps);
	} while (again(tpm, rc, &attempt));
	if (rc != TSS2_RC_SUCCESS)
		return tpm_fail(tpm, "listing persistent handles (TPM2_GetCapability)", rc);
	found = caps->data.handles.count > 0 && caps->data.handles.handle[0] == tpm->parent_handle;
	Esys_Free(caps);
	rc = TPM2_RC_HANDLE;
	attempt = 0;
	while (found) {
		rc = Esys_TR_FromTPMPublic(tpm->esys, tpm->parent_handle, ESYS_TR_NONE,
		                           ESYS_TR_NONE, ESYS_TR_NONE, &tpm->parent);
		if (!again(tpm, rc, &attempt))
			break;
	}
	if (rc == TSS2_RC_SUCCESS) {
		attempt = 0;
		do {
			rc = Esys_ReadPublic(tpm->esys, tpm->parent, ESYS_TR_NONE, ESYS_TR_NONE,
			                     ESYS_TR_NONE, &pub, NULL, NULL);
		} while (again(tpm, rc, &attempt));
		if (rc != TSS2_RC_SUCCESS)
			return tpm_fail(tpm, "reading the storage key's public area", rc);
		a = pub->publicArea.objectAttributes;
		Esys_Free(pub);
		if (!(a & TPMA_OBJECT_RESTRICTED) || !(a & TPMA_OBJECT_DECRYPT) ||
		    (a & TPMA_OBJECT_SIGN_ENCRYPT)) {
			log_warnx("kstpm: the key at 0x%08x is not a storage key (restricted "
			          "decrypt, not sign; attributes 0x%08x); choose another parent "
			          "handle",
			          tpm->parent_handle, a);
			return -EINVAL;
		}
		log_debug("kstpm: using storage key at 0x%08x", tpm->parent_handle);
		return 0;
	}
	if (tpm_rc_base(rc) != TPM2_RC_HANDLE)
		return tpm_fail(tpm, "looking up the storage key", rc);
	if (!tpm->create_parent) {
		log_warnx(
		        "kstpm: no storage key at 0x%08x (create it with tpm2_createprimary -C o "
		        "-G ecc256:aes128cfb -a "
		        "'restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|"
		        "noda' -c srk.ctx && tpm2_evictcontrol -C o -c srk.ctx 0x%08x, or set "
		        "keystore.create_parent)",
		        tpm->parent_handle, tpm->parent_handle);
		return -ENOENT;
	}

	attempt = 0;
	do {
		rc = Esys_CreatePrimary(tpm->esys, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE,
		                        ESYS_TR_NONE, &sens, &srk_template, &outside, &pcrs, &obj,
		                        NULL, NULL, NULL, NULL);
	} while (again(tpm, rc, &attempt));
	if (rc != TSS2_RC_SUCCESS)
		return tpm_fail(tpm, "creating the storage key (TPM2_CreatePrimary)", rc);
	attempt = 0;
	do {
		rc = Esys_EvictControl(tpm->esys, ESYS_TR_RH_OWNER, obj, ESYS_TR_PASSWORD,
		                       ESYS_TR_NONE, ESYS_TR_NONE, tpm->parent_handle,
		                       &tpm->parent);
	} while (again(tpm, rc, &attempt));
	r = 0;
	if (rc != TSS2_RC_SUCCESS)
		r = tpm_fail(tpm, "making the storage key persistent (TPM2_EvictControl)", rc);
	/* The persistent copy is what we use; the transient one would hold a slot. */
	attempt = 0;
	do {
		rc = Esys_FlushContext(tpm->esys, obj);
	} while (again(tpm, rc, &attempt));
	if (rc != TSS2_RC_SUCCESS && r == 0)
		r = tpm_fail(tpm, "flushing the transient storage key", rc);
	if (r == 0)
		log_info("kstpm: created the storage key at 0x%08x", tpm->parent_handle);
	return r;
}

static void
tpm_disconnect(struct kstpm *tpm)
{
	/* Frees ESYS's object metadata; the persistent storage key stays in the TPM. */
	if (tpm->esys)
		Esys_Finalize(&tpm->esys);
	if (tpm->tcti)
		Tss2_TctiLdr_Finalize(&tpm->tcti);
	tpm->parent = ESYS_TR_NONE;
	tpm->broken = false;
}

static int
tpm_connect(struct kstpm *tpm)
{
	TSS2_RC rc;
	int r;

	rc = Tss2_TctiLdr_Initialize(tpm->tcti_conf, &tpm->tcti);
	if (rc != TSS2_RC_SUCCESS) {
		log_warnx("kstpm: TPM unreachable at %s: %s", tpm->tcti_conf, Tss2_RC_Decode(rc));
		return -EIO;
	}
	rc = Esys_Initialize(&tpm->esys, tpm->tcti, NULL);
	if (rc != TSS2_RC_SUCCESS) {
		log_warnx("kstpm: TPM unreachable at %s: %s", tpm->tcti_conf, Tss2_RC_Decode(rc));
		tpm_disconnect(tpm);
		return -EIO;
	}
	r = parent_attach(tpm);
	if (r < 0)
		tpm_disconnect(tpm);
	return r;
}

/* With the lock held, before the first command of an operation. */
static int
tpm_ready(struct kstpm *tpm)
{
	if (tpm->broken)
		tpm_disconnect(tpm);
	if (tpm->esys)
		return 0;
	log_info("kstpm: reconnecting to the TPM at %s", tpm->tcti_conf);
	return tpm_connect(tpm);
}

int
kstpm_open(struct kstpm **out, const char *tcti, uint32_t parent, bool create_parent)
{
	struct kstpm *tpm;
	int r;

	*out = NULL;
	if (!tcti || !*tcti) {
		log_warnx("kstpm: no TCTI configured (e.g. device:/dev/tpmrm0)");
		return -EINVAL;
	}
	/*
	 * Persistent object handles are 0x81xxxxxx (Part 2, 7.2, TPM_HT_PERSISTENT); the owner
	 * may make objects persistent only below 0x81800000 (TCG handle registry: the rest is the
	 * platform's). Not TPM2_HR_PERSISTENT: tss2 3.2.1 computes it as an int shifted into the
	 * sign bit, which UBSan reports.
	 */
	if ((parent & 0xff000000u) != 0x81000000u || (create_parent && parent >= 0x81800000u)) {
		log_warnx("kstpm: 0x%08x is not a persistent handle in the owner's range "
		          "0x81000000 to 0x817fffff",
		          parent);
		return -EINVAL;
	}
	tpm = xcalloc(1, sizeof(*tpm));
	tpm->tcti_conf = xstrdup(tcti);
	pthread_mutex_init(&tpm->lock, NULL);
	tpm->parent_handle = parent;
	tpm->create_parent = create_parent;
	tpm->parent = ESYS_TR_NONE;
	r = tpm_connect(tpm);
	if (r < 0) {
		kstpm_free(tpm);
		return r;
	}
	log_info("kstpm: TPM at %s, storage key 0x%08x", tcti, parent);
	*out = tpm;
	return 0;
}

void
kstpm_free(struct kstpm *tpm)
{
	if (!tpm)
		return;
	tpm_disconnect(tpm);
	pthread_mutex_destroy(&tpm->lock);
	free(tpm->tcti_conf);
	free(tpm);
}

/* ---- TSS2 key files: TPMKey DER in tpmkey.c, the TPM structures inside here ---- */

/* 0x04 || X || Y from a TPM ECC point, whose coordinates may come without leading zeros. */
static int
point_from_tpm(const TPMS_ECC_POINT *pt, uint8_t out[KSTPM_P256_POINT_LEN])
{
	if (pt->x.size == 0 || pt->x.size > P256_COORD_LEN || pt->y.size == 0 ||
	    pt->y.size > P256_COORD_LEN)
		return -EBADMSG;
	memset(out, 0, KSTPM_P256_POINT_LEN);
	out[0] = 0x04;
	memcpy(out + 1 + P256_COORD_LEN - pt->x.size, pt->x.buffer, pt->x.size);
	memcpy(out + 1 + 2 * P256_COORD_LEN - pt->y.size, pt->y.buffer, pt->y.size);
	return 0;
}

/* The only keys we load: ECC P-256, unrestricted, signing, not decrypting, password usable. */
static int
check_device_key(const TPMT_PUBLIC *pub)
{
	TPMA_OBJECT a = pub->objectAttributes;
	TPMI_ALG_ECC_SCHEME scheme = pub->parameters.eccDetail.scheme.scheme;

	if (pub->type != TPM2_ALG_ECC || pub->parameters.eccDetail.curveID != TPM2_ECC_NIST_P256) {
		log_warnx("kstpm: TSS2 key is not an ECC NIST P-256 key (type 0x%x); only P-256 "
		          "device keys are supported",
		          pub->type);
		return -ENOTSUP;
	}
	if (!(a & TPMA_OBJECT_SIGN_ENCRYPT) || (a & TPMA_OBJECT_X509SIGN)) {
		log_warnx("kstpm: TSS2 key cannot sign with TPM2_Sign (attributes 0x%08x)", a);
		return -ENOTSUP;
	}
	if (a & (TPMA_OBJECT_DECRYPT | TPMA_OBJECT_RESTRICTED)) {
		log_warnx("kstpm: TSS2 key is a decrypt or restricted key (attributes 0x%08x); "
		          "device keys sign only",
		          a);
		return -ENOTSUP;
	}
	if (!(a & TPMA_OBJECT_USERWITHAUTH)) {
		log_warnx("kstpm: TSS2 key needs a policy session (userWithAuth clear)");
		return -ENOTSUP;
	}
	if (scheme != TPM2_ALG_NULL && scheme != TPM2_ALG_ECDSA) {
		log_warnx("kstpm: TSS2 key has signing scheme 0x%x; only ECDSA is supported",
		          scheme);
		return -ENOTSUP;
	}
	return 0;
}

/* The TPMKey DER of a key made under parent: its public and private areas, marshalled. */
static int
key_to_tpmkey(uint32_t parent, const TPM2B_PUBLIC *pub, const TPM2B_PRIVATE *priv, uint8_t **der,
              size_t *len)
{
	uint8_t pubbuf[sizeof(*pub)], privbuf[sizeof(*priv)];
	struct tpmkey tk = {.parent = parent, .pub = pubbuf, .priv = privbuf};

	if (Tss2_MU_TPM2B_PUBLIC_Marshal(pub, pubbuf, sizeof(pubbuf), &tk.publen) ||
	    Tss2_MU_TPM2B_PRIVATE_Marshal(priv, privbuf, sizeof(privbuf), &tk.privlen)) {
		log_warnx("kstpm: cannot marshal the key the TPM returned");
		return -EINVAL;
	}
	return tpmkey_encode(&tk, der, len);
}

/* A TPMKey's TPM structures: a loadable key's public and private areas (Part 2, 12.2.5, 12.3.7). */
static int
key_from_tpmkey(const struct tpmkey *tk, struct kstpm_key *key)
{
	size_t off = 0;

	key->parent = tk->parent;
	if (Tss2_MU_TPM2B_PUBLIC_Unmarshal(tk->pub, tk->publen, &off, &key->pub) !=
	            TSS2_RC_SUCCESS ||
	    off != tk->publen)
		goto bad;
	off = 0;
	if (Tss2_MU_TPM2B_PRIVATE_Unmarshal(tk->priv, tk->privlen, &off, &key->priv) !=
	            TSS2_RC_SUCCESS ||
	    off != tk->privlen || key->priv.size == 0)
		goto bad;
	return check_device_key(&key->pub.publicArea);
bad:
	/* tpmkey.c's words for a broken file: to a user, damaged TPM structures are one too. */
	log_warnx("kstpm: malformed TSS2 key (not a DER TPMKey structure)");
	return -EBADMSG;
}

int
kstpm_key_from_der(const uint8_t *der, size_t len, struct kstpm_key **out,
                   uint8_t pub[KSTPM_P256_POINT_LEN])
{
	struct kstpm_key *key;
	struct tpmkey tk;
	uint8_t point[KSTPM_P256_POINT_LEN];
	int r;

	*out = NULL;
	r = tpmkey_decode(der, len, &tk);
	if (r < 0)
		return r;
	key = xcalloc(1, sizeof(*key));
	r = key_from_tpmkey(&tk, key);
	if (r == 0 && point_from_tpm(&key->pub.publicArea.unique.ecc, point) < 0) {
		log_warnx("kstpm: TSS2 key has no valid P-256 public point");
		r = -EBADMSG;
	}
	if (r < 0) {
		free(key);
		return r;
	}
	if (pub)
		memcpy(pub, point, sizeof(point));
	*out = key;
	return 0;
}

int
kstpm_key_from_pem(const char *pem, size_t len, struct kstpm_key **out,
                   uint8_t pub[KSTPM_P256_POINT_LEN])
{
	char *label = NULL, *header = NULL;
	uint8_t *der = NULL;
	long derlen = 0;
	BIO *b;
	int r;

	*out = NULL;
	if (len > INT_MAX)
		return -EINVAL;
	b = BIO_new_mem_buf(pem, (int)len);
	if (!b || PEM_read_bio(b, &label, &header, &der, &derlen) != 1 ||
	    strcmp(label, KSTPM_PEM_LABEL) != 0)
		r = -EINVAL;
	else
		r = kstpm_key_from_der(der, (size_t)derlen, out, pub);
	ERR_clear_error();
	BIO_free(b);
	OPENSSL_free(label);
	OPENSSL_free(header);
	OPENSSL_free(der);
	return r;
}

void
kstpm_key_free(struct kstpm_key *key)
{
	free(key);
}

uint32_t
kstpm_key_attributes(const struct kstpm_key *key)
{
	return key->pub.publicArea.objectAttributes;
}

uint32_t
kstpm_key_parent(const struct kstpm_key *key)
{
	return key->parent;
}

/* DER in a malloc'd, NUL-terminated PEM string under label. */
static int
pem_encode(const char *label, const uint8_t *der, int len, char **pem)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data;
	long n;
	int r = -ENOMEM; /* a memory BIO fails only when OpenSSL's own allocation does */

	if (!bio)
		return -ENOMEM;
	if (PEM_write_bio(bio, label, "", der, len) <= 0)
		goto out;
	n = BIO_get_mem_data(bio, &data);
	*pem = xmalloc((size_t)n + 1);
	memcpy(*pem, data, (size_t)n);
	(*pem)[n] = '\0';
	r = 0;
out:
	BIO_free(bio);
	return r;
}

/*
 * After an operation failed: true, once, if the TCTI connection broke (swtpm, abrmd or the
 * chip was reset), so that the caller runs the operation again on a fresh connection instead
 * of failing a TLS handshake. Load/Sign/Flush and Create are safe to repeat: a transient
 * object of the old connection is gone with it (a resource manager flushes on close).
 */
static bool
once_more(struct kstpm *tpm, int r, int *pass)
{
	if (r == 0 || !tpm->broken || (*pass)++ > 0)
		return false;
	return true;
}

/* TPM2_Create under the storage key (TPM 2.0 Part 3, 12.1). */
static int
create_locked(struct kstpm *tpm, const TPM2B_SENSITIVE_CREATE *sens, const TPM2B_PUBLIC *tmpl,
              const char *what, TPM2B_PRIVATE **opriv, TPM2B_PUBLIC **opub)
{
	const TPM2B_DATA outside = {0};
	const TPML_PCR_SELECTION pcrs = {0};
	unsigned attempt = 0;
	TSS2_RC rc;

	do {
		rc = Esys_Create(tpm->esys, tpm->parent, ESYS_TR_PASSWORD, ESYS_TR_NONE,
		                 ESYS_TR_NONE, sens, tmpl, &outside, &pcrs, opriv, opub, NULL, NULL,
		                 NULL);
	} while (again(tpm, rc, &attempt));
	if (rc != TSS2_RC_SUCCESS)
		return tpm_fail(tpm, what, rc);
	return 0;
}

int
kstpm_create_key(struct kstpm *tpm, char **pem, uint8_t pub[KSTPM_P256_POINT_LEN])
{
	const TPM2B_SENSITIVE_CREATE sens = {0};
	TPM2B_PRIVATE *opriv = NULL;
	TPM2B_PUBLIC *opub = NULL;
	uint8_t *der = NULL;
	size_t derlen = 0;
	uint64_t t0;
	int r, pass = 0;

	*pem = NULL;
	pthread_mutex_lock(&tpm->lock);
	t0 = now_ns();
	do {
		r = tpm_ready(tpm);
		if (r == 0)
			r = create_locked(tpm, &sens, &device_key_template,
			                  "creating a device key (TPM2_Create)", &opriv, &opub);
	} while (once_more(tpm, r, &pass));
	histogram_observe(&tpm->latency[KSTPM_OP_CREATE], (double)(now_ns() - t0) / 1e9);
	pthread_mutex_unlock(&tpm->lock);
	if (r < 0)
		goto out;

	r = check_device_key(&opub->publicArea);
	if (r == 0)
		r = point_from_tpm(&opub->publicArea.unique.ecc, pub);
	if (r < 0) {
		log_warnx("kstpm: the TPM returned an unexpected key");
		r = -EIO;
		goto out;
	}
	r = key_to_tpmkey(tpm->parent_handle, opub, opriv, &der, &derlen);
	if (r == 0)
		r = pem_encode(KSTPM_PEM_LABEL, der, (int)derlen, pem);
out:
	free(der);
	Esys_Free(opriv);
	Esys_Free(opub);
	return r;
}

/* Loads a wrapped object under the storage key; the caller must flush it. */
static int
load(struct kstpm *tpm, const TPM2B_PRIVATE *priv, const TPM2B_PUBLIC *pub, const char *what,
     ESYS_TR *obj)
{
	unsigned attempt = 0;
	TSS2_RC rc;

	do {
		rc = Esys_Load(tpm->esys, tpm->parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
		               priv, pub, obj);
	} while (again(tpm, rc, &attempt));
	if (rc != TSS2_RC_SUCCESS) {
		*obj = ESYS_TR_NONE;
		return tpm_fail(tpm, what, rc);
	}
	return 0;
}

/*
 * Frees the object's slot: a TPM has 3 (PC Client profile minimum; swtpm too), so a forgotten
 * flush makes the fourth load fail. If even that fails the connection is likely gone; ESYS's
 * record of the object is dropped so that it does not pile up.
 */
static int
flush(struct kstpm *tpm, ESYS_TR *obj)
{
	unsigned attempt = 0;
	TSS2_RC rc;

	if (*obj == ESYS_TR_NONE)
		return 0;
	do {
		rc = Esys_FlushContext(tpm->esys, *obj);
	} while (again(tpm, rc, &attempt));
	if (rc != TSS2_RC_SUCCESS) {
		int r = tpm_fail(tpm, "flushing a transient object (TPM2_FlushContext)", rc);

		Esys_TR_Close(tpm->esys, obj);
		*obj = ESYS_TR_NONE;
		return r;
	}
	*obj = ESYS_TR_NONE;
	return 0;
}

/* TPMS_SIGNATURE_ECDSA's r and s as a DER ECDSA-Sig-Value (RFC 3279, 2.2.3). */
static int
ecdsa_sig_der(const TPMS_SIGNATURE_ECDSA *in, uint8_t *sig, size_t *siglen)
{
	ECDSA_SIG *es = ECDSA_SIG_new();
	BIGNUM *br = NULL, *bs = NULL;
	unsigned char *p = sig;
	int n, r = -ENOMEM; /* OpenSSL's allocations, which fail as they do */

	if (!es)
		return -ENOMEM;
	br = BN_bin2bn(in->signatureR.buffer, in->signatureR.size, NULL);
	bs = BN_bin2bn(in->signatureS.buffer, in->signatureS.size, NULL);
	if (!br || !bs || !ECDSA_SIG_set0(es, br, bs)) {
		BN_free(br);
		BN_free(bs);
		goto out;
	}
	n = i2d_ECDSA_SIG(es, NULL);
	if (n <= 0 || n > ECDSA_P256_SIG_MAX) {
		r = -EBADMSG;
		goto out;
	}
	i2d_ECDSA_SIG(es, &p);
	*siglen = (size_t)n;
	r = 0;
out:
	ECDSA_SIG_free(es);
	return r;
}

/* TPM2_Load, TPM2_Sign, TPM2_FlushContext; the flush whatever happened. */
static int
sign_locked(struct kstpm *tpm, const struct kstpm_key *key, const TPM2B_DIGEST *d,
            const TPMT_SIG_SCHEME *scheme, TPMT_SIGNATURE **out)
{
	/* A NULL ticket: the digest need not have been hashed by this TPM (Part 3, 20.2). */
	const TPMT_TK_HASHCHECK validation = {.tag = TPM2_ST_HASHCHECK, .hierarchy = TPM2_RH_NULL};
	ESYS_TR obj = ESYS_TR_NONE;
	unsigned attempt = 0;
	TSS2_RC rc;
	int r;

	r = load(tpm, &key->priv, &key->pub, "loading a device key (TPM2_Load)", &obj);
	if (r < 0)
		return r;
	do {
		rc = Esys_Sign(tpm->esys, obj, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, d,
		               scheme, &validation, out);
	} while (again(tpm, rc, &attempt));
	if (rc != TSS2_RC_SUCCESS)
		r = tpm_fail(tpm, "signing (TPM2_Sign)", rc);
	/* A signature made is still good if only its flush failed; that was logged. */
	flush(tpm, &obj);
	return r;
}

int
kstpm_sign(struct kstpm *tpm, const struct kstpm_key *key, const uint8_t *digest, size_t dlen,
           uint8_t *sig, size_t *siglen)
{
	const TPMT_ECC_SCHEME *kscheme = &key->pub.publicArea.parameters.eccDetail.scheme;
	TPMT_SIG_SCHEME scheme = {.scheme = TPM2_ALG_ECDSA};
	TPM2B_DIGEST d = {0};
	TPMT_SIGNATURE *out = NULL;
	int r, pass = 0;
	uint64_t t0;

	*siglen = 0;
	switch (dlen) {
	case 32:
		scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
		break;
	case 48:
		scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA384;
		break;
	case 64:
		scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA512;
		break;
	default:
		log_warnx("kstpm: cannot sign a %zu-byte digest (SHA-256, -384 or -512 only)",
		          dlen);
		return -EINVAL;
	}
	/* A key made elsewhere with a fixed scheme accepts only that scheme's hash. */
	if (kscheme->scheme == TPM2_ALG_ECDSA &&
	    kscheme->details.ecdsa.hashAlg != scheme.details.ecdsa.hashAlg) {
		log_warnx("kstpm: this key signs only with hash 0x%x, not a %zu-byte digest",
		          kscheme->details.ecdsa.hashAlg, dlen);
		return -EINVAL;
	}
	if (key->parent != tpm->parent_handle) {
		log_warnx("kstpm: key was made under the storage key at 0x%08x, the keystore uses "
		          "0x%08x",
		          key->parent, tpm->parent_handle);
		return -EINVAL;
	}
	d.size = (UINT16)dlen;
	memcpy(d.buffer, digest, dlen);

	pthread_mutex_lock(&tpm->lock);
	/* TPM time only: waiting for the lock is the callers' queue, not the signature's cost. */
	t0 = now_ns();
	do {
		r = tpm_ready(tpm);
		if (r == 0)
			r = sign_locked(tpm, key, &d, &scheme, &out);
	} while (once_more(tpm, r, &pass));
	atomic_fetch_add_explicit(&tpm->stats.sign_ns, now_ns() - t0, memory_order_relaxed);
	histogram_observe(&tpm->latency[KSTPM_OP_SIGN], (double)(now_ns() - t0) / 1e9);
	if (r == 0)
		atomic_fetch_add_explicit(&tpm->stats.signs, 1, memory_order_relaxed);
	pthread_mutex_unlock(&tpm->lock);

	if (r == 0 && out->sigAlg != TPM2_ALG_ECDSA)
		r = -EBADMSG;
	if (r == 0)
		r = ecdsa_sig_der(&out->signature.ecdsa, sig, siglen);
	Esys_Free(out);
	return r;
}

int
kstpm_seal(struct kstpm *tpm, const uint8_t *secret, size_t len, uint8_t **blob, size_t *bloblen)
{
	TPM2B_SENSITIVE_CREATE sens = {0};
	TPM2B_PRIVATE *opriv = NULL;
	TPM2B_PUBLIC *opub = NULL;
	size_t n = 1, size = 1 + sizeof(*opub) + sizeof(*opriv);
	uint8_t *b;
	uint64_t t0;
	int r, pass = 0;

	*blob = NULL;
	*bloblen = 0;
	if (len == 0 || len > KSTPM_SEAL_MAX) {
		log_warnx("kstpm: cannot seal %zu bytes (1 to %d)", len, KSTPM_SEAL_MAX);
		return -EINVAL;
	}
	sens.sensitive.data.size = (UINT16)len;
	memcpy(sens.sensitive.data.buffer, secret, len);

	/*
	 * Without a session the secret crosses the TCTI (and the TPM's bus) in the clear, and
	 * ESYS's command buffer keeps a copy until the next command overwrites it.
	 */
	pthread_mutex_lock(&tpm->lock);
	t0 = now_ns();
	do {
		r = tpm_ready(tpm);
		if (r == 0)
			r = create_locked(tpm, &sens, &seal_template, "sealing (TPM2_Create)",
			                  &opriv, &opub);
	} while (once_more(tpm, r, &pass));
	histogram_observe(&tpm->latency[KSTPM_OP_SEAL], (double)(now_ns() - t0) / 1e9);
	pthread_mutex_unlock(&tpm->lock);
	explicit_bzero(&sens, sizeof(sens));
	if (r < 0)
		goto out;

	b = xmalloc(size);
	b[0] = SEAL_BLOB_VERSION;
	if (Tss2_MU_TPM2B_PUBLIC_Marshal(opub, b, size, &n) ||
	    Tss2_MU_TPM2B_PRIVATE_Marshal(opriv, b, size, &n)) {
		free(b);
		r = -EIO;
		goto out;
	}
	*blob = b;
	*bloblen = n;
out:
	Esys_Free(opriv);
	Esys_Free(opub);
	return r;
}

/* TPM2_Load, TPM2_Unseal (Part 3, 12.7), TPM2_FlushContext; the flush whatever happened. */
static int
unseal_locked(struct kstpm *tpm, const TPM2B_PUBLIC *pub, const TPM2B_PRIVATE *priv,
              TPM2B_SENSITIVE_DATA **data)
{
	ESYS_TR obj = ESYS_TR_NONE;
	unsigned attempt = 0;
	TSS2_RC rc;
	int r;

	r = load(tpm, priv, pub, "loading sealed data (TPM2_Load)", &obj);
	if (r < 0)
		return r;
	do {
		rc = Esys_Unseal(tpm->esys, obj, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
		                 data);
	} while (again(tpm, rc, &attempt));
	if (rc != TSS2_RC_SUCCESS)
		r = tpm_fail(tpm, "unsealing (TPM2_Unseal)", rc);
	flush(tpm, &obj);
	return r;
}

int
kstpm_unseal(struct kstpm *tpm, const uint8_t *blob, size_t bloblen, uint8_t *secret, size_t *len)
{
	TPM2B_PUBLIC pub = {0};
	TPM2B_PRIVATE priv = {0};
	TPM2B_SENSITIVE_DATA *data = NULL;
	size_t off = 1;
	uint64_t t0;
	int r, pass = 0;

	*len = 0;
	if (bloblen < 1 || blob[0] != SEAL_BLOB_VERSION ||
	    Tss2_MU_TPM2B_PUBLIC_Unmarshal(blob, bloblen, &off, &pub) != TSS2_RC_SUCCESS ||
	    Tss2_MU_TPM2B_PRIVATE_Unmarshal(blob, bloblen, &off, &priv) != TSS2_RC_SUCCESS ||
	    off != bloblen || pub.publicArea.type != TPM2_ALG_KEYEDHASH ||
	    (pub.publicArea.objectAttributes &
	     (TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_DECRYPT | TPMA_OBJECT_RESTRICTED))) {
		log_warnx("kstpm: malformed sealed blob (not version %d sealed data)",
		          SEAL_BLOB_VERSION);
		return -EBADMSG;
	}

	pthread_mutex_lock(&tpm->lock);
	t0 = now_ns();
	do {
		r = tpm_ready(tpm);
		if (r == 0)
			r = unseal_locked(tpm, &pub, &priv, &data);
	} while (once_more(tpm, r, &pass));
	histogram_observe(&tpm->latency[KSTPM_OP_UNSEAL], (double)(now_ns() - t0) / 1e9);
	pthread_mutex_unlock(&tpm->lock);

	if (r == 0 && data->size > KSTPM_SEAL_MAX) {
		log_warnx("kstpm: sealed data is %u bytes, more than %d", data->size,
		          KSTPM_SEAL_MAX);
		r = -EOVERFLOW;
	}
	if (r == 0) {
		memcpy(secret, data->buffer, data->size);
		*len = data->size;
	}
	if (data) {
		explicit_bzero(data, sizeof(*data));
		Esys_Free(data);
	}
	return r;
}

const struct histogram *
kstpm_latency(const struct kstpm *tpm, enum kstpm_op op)
{
	return &tpm->latency[op];
}

int
kstpm_ping(struct kstpm *tpm)
{
	TPM2B_DIGEST *random = NULL;
	unsigned attempt = 0;
	TSS2_RC rc;
	int r;

	/*
	 * Never wait: in a reconnect storm signatures queue on the lock for seconds, and the
	 * caller is the event loop. A TPM in use answers; that is reachable enough to say busy.
	 */
	if (pthread_mutex_trylock(&tpm->lock) != 0)
		return -EBUSY;
	r = tpm_ready(tpm);
	if (r == 0) {
		do {
			rc = Esys_GetRandom(tpm->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, 8,
			                    &random);
		} while (again(tpm, rc, &attempt));
		r = rc == TSS2_RC_SUCCESS
		            ? 0
		            : tpm_fail(tpm, "asking for 8 random bytes (TPM2_GetRandom)", rc);
		Esys_Free(random);
	}
	pthread_mutex_unlock(&tpm->lock);
	return r;
}

void
kstpm_get_stats(struct kstpm *tpm, struct kstpm_stats *out)
{
	*out = (struct kstpm_stats){
	        .commands = atomic_load_explicit(&tpm->stats.commands, memory_order_relaxed),
	        .signs = atomic_load_explicit(&tpm->stats.signs, memory_order_relaxed),
	        .sign_ns = atomic_load_explicit(&tpm->stats.sign_ns, memory_order_relaxed),
	        .retries = atomic_load_explicit(&tpm->stats.retries, memory_order_relaxed),
	};
}
