/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The tpm backend: a device's key exists only inside the TPM and as its TPM-wrapped blobs
 * (key.tss2.pem, "TSS2 PRIVATE KEY", no secret), which the TLS library is given as they are;
 * the PSK file is its text under AES-256-GCM (psk.enc, kspsk.h) with a master key sealed to
 * the TPM (master.sealed). Every TPM command runs on the worker (tpmq.h).
 */
#include "backend.h"
#include "ks-internal.h"
#include "atomicfile.h"
#include "kspsk.h"
#include "kstpm.h"
#include "log.h"
#include "xalloc.h"

#include <assert.h>
#include <errno.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#define MASTER_KEY_LEN KSPSK_KEY_LEN
#define TSS2_LABEL     KSTPM_PEM_LABEL

struct ks_tpm {
	struct ks_backend base;
	/*
	 * The worker that runs every TPM command and every signature (tpmq.h): once the store is
	 * open no other thread calls kstpm_*() with a TPM command in it.
	 */
	struct tpmq *tpmq;
	struct kstpm *tpm;
	uint8_t master[MASTER_KEY_LEN];
};

static struct ks_tpm *
tpm_of(struct ks_backend *b)
{
	assert(b->ops == &ks_tpm_ops);
	return (struct ks_tpm *)b;
}

/* ---- the worker's jobs: everything that talks to the TPM runs on it ---- */

struct open_job {
	struct kstpm **tpm;
	const struct keystore_config *cfg;
};

static int
run_open(void *data)
{
	struct open_job *j = data;

	return kstpm_open(j->tpm, j->cfg->tcti, j->cfg->parent, j->cfg->create_parent);
}

struct seal_job {
	struct kstpm *tpm;
	const uint8_t *in;
	size_t inlen;
	uint8_t *out; /* unseal: KSTPM_SEAL_MAX bytes */
	uint8_t **blob;
	size_t *outlen;
};

static int
run_seal(void *data)
{
	struct seal_job *j = data;

	return kstpm_seal(j->tpm, j->in, j->inlen, j->blob, j->outlen);
}

static int
run_unseal(void *data)
{
	struct seal_job *j = data;

	return kstpm_unseal(j->tpm, j->in, j->inlen, j->out, j->outlen);
}

struct create_job {
	struct kstpm *tpm;
	char **pem;
	uint8_t *pub;
};

static int
run_create(void *data)
{
	struct create_job *j = data;

	return kstpm_create_key(j->tpm, j->pem, j->pub);
}

static int
run_ping(void *data)
{
	return kstpm_ping(data);
}

/* The master key: unsealed from master.sealed, or made and sealed on first use. */
static int
load_master(struct ks_tpm *t, int dirfd, const char *dir)
{
	uint8_t *blob = NULL;
	size_t bloblen, len;
	int r;

	r = ks_read_file(dirfd, dir, "master.sealed", false, 4096, &blob, &bloblen);
	if (r == 0) {
		uint8_t secret[KSTPM_SEAL_MAX];

		/* kstpm_unseal() may write KSTPM_SEAL_MAX bytes, more than the key's 32. */
		struct seal_job j = {
		        .tpm = t->tpm, .in = blob, .inlen = bloblen, .out = secret, .outlen = &len};

		r = tpmq_call(t->tpmq, TPMQ_ADMIN, run_unseal, &j);
		free(blob);
		if (r == 0 && len != MASTER_KEY_LEN)
			r = -EBADMSG;
		if (r == 0)
			memcpy(t->master, secret, MASTER_KEY_LEN);
		explicit_bzero(secret, sizeof(secret));
		if (r < 0)
			log_warnx("keystore: cannot unseal %s/master.sealed with this TPM and "
			          "storage "
			          "key; the PSKs of the tpm backend cannot be read",
			          dir);
		return r;
	}
	if (r != -ENOENT)
		return r;
	if (RAND_bytes(t->master, MASTER_KEY_LEN) != 1)
		return -EIO;
	struct seal_job j = {.tpm = t->tpm,
	                     .in = t->master,
	                     .inlen = MASTER_KEY_LEN,
	                     .blob = &blob,
	                     .outlen = &bloblen};

	r = tpmq_call(t->tpmq, TPMQ_ADMIN, run_seal, &j);
	if (r < 0)
		return r;
	r = atomic_write(dirfd, dir, "master.sealed", blob, bloblen, 0600);
	free(blob);
	if (r == 0)
		log_info("keystore: new master key sealed to the TPM");
	return r;
}

/* ---- the ops ---- */

static void
tpm_free(struct ks_backend *b)
{
	struct ks_tpm *t;

	if (!b)
		return;
	t = tpm_of(b);
	kstpm_free(t->tpm);
	explicit_bzero(t->master, sizeof(t->master));
	free(t);
}

static int
tpm_open(struct ks_backend **out, const struct keystore_config *cfg, struct tpmq *q, int dirfd,
         const char *dir)
{
	struct ks_tpm *t = xcalloc(1, sizeof(*t));
	struct open_job j = {.tpm = &t->tpm, .cfg = cfg};
	int r;

	t->base.ops = &ks_tpm_ops;
	t->tpmq = q;
	r = tpmq_call(q, TPMQ_ADMIN, run_open, &j);
	if (r == 0)
		r = load_master(t, dirfd, dir);
	if (r < 0) {
		/* The worker is idle: nothing else uses the TPM while it is closed here. */
		tpm_free(&t->base);
		return r;
	}
	*out = &t->base;
	return 0;
}

static int
tpm_create_key(struct ks_backend *b, int fd, const char *dir, const char *id, bool next,
               enum tpmq_prio prio)
{
	struct ks_tpm *t = tpm_of(b);
	uint8_t pub[KSTPM_P256_POINT_LEN];
	char *pem;
	struct create_job j = {.tpm = t->tpm, .pem = &pem, .pub = pub};
	int r = tpmq_call(t->tpmq, prio, run_create, &j);

	(void)id;
	if (r < 0)
		return r;
	r = atomic_write(fd, dir, ks_tpm_ops.key_file[next], pem, strlen(pem), 0600);
	free(pem);
	return r;
}

/* Parsing only: the key is loaded into the TPM for the moment of a signature. */
static int
tpm_load_key(struct ks_backend *b, int fd, const char *dir, const char *id, bool next,
             uint8_t pub[KSPROV_P256_POINT_LEN])
{
	const char *name = ks_tpm_ops.key_file[next];
	struct kstpm_key *key;
	uint8_t *pem;
	size_t len;
	int r;

	(void)b, (void)id;
	r = ks_read_file(fd, dir, name, false, 16384, &pem, &len);
	if (r < 0)
		return r;
	r = kstpm_key_from_pem((const char *)pem, len, &key, pub);
	if (r == -EINVAL)
		log_warnx("keystore: %s/%s is not a \"" TSS2_LABEL "\" PEM", dir, name);
	kstpm_key_free(key);
	free(pem);
	return r;
}

static int
tpm_psk_open(struct ks_backend *b, const char *dir, const char *id, const uint8_t *in, size_t inlen,
             char *text, size_t *len)
{
	int r = kspsk_open(tpm_of(b)->master, id, in, inlen, (uint8_t *)text, len);

	if (r < 0)
		log_warnx("keystore: %s/psk.enc does not open with this gateway's master key "
		          "(corrupted, or from another gateway)",
		          dir);
	return r;
}

static int
tpm_psk_seal(struct ks_backend *b, const char *id, const char *text, size_t len, uint8_t *out,
             size_t *outlen)
{
	int r = kspsk_seal(tpm_of(b)->master, id, (const uint8_t *)text, len, out, outlen);

	if (r < 0)
		ks_log_openssl("keystore: cannot encrypt a PSK");
	return r;
}

/* A soft store has no TPM to sign with (b NULL): its TSS2 keys are refused. */
static void *
tpm_key_decode(struct ks_backend *b, int dirfd, const char *dir, const uint8_t *der, size_t len,
               uint8_t pub[KSPROV_P256_POINT_LEN])
{
	struct kstpm_key *key;

	(void)dirfd, (void)dir;
	if (!b) {
		log_warnx("keystore: a TSS2 key was given but the keystore has no TPM "
		          "(keystore.backend is \"soft\")");
		return NULL;
	}
	if (kstpm_key_from_der(der, len, &key, pub) < 0)
		return NULL;
	return key;
}

static int
tpm_sign(struct ks_backend *b, void *key, const uint8_t *digest, size_t dlen, uint8_t *sig,
         size_t *siglen)
{
	return kstpm_sign(tpm_of(b)->tpm, key, digest, dlen, sig, siglen);
}

static void
tpm_key_free(void *key)
{
	kstpm_key_free(key);
}

static int
tpm_ping(struct ks_backend *b)
{
	struct ks_tpm *t = tpm_of(b);
	struct tpmq_stats st;

	/* Never behind a signing storm: a busy worker means a TPM that answers. */
	tpmq_get_stats(t->tpmq, &st);
	if (st.running || st.queued[TPMQ_ADMIN] || st.queued[TPMQ_HANDSHAKE] ||
	    st.queued[TPMQ_BACKGROUND])
		return -EBUSY;
	return tpmq_call(t->tpmq, TPMQ_ADMIN, run_ping, t->tpm);
}

static void
tpm_stats(struct ks_backend *b, struct keystore_stats *out)
{
	struct kstpm_stats t = {0};

	kstpm_get_stats(tpm_of(b)->tpm, &t);
	out->tpm_commands = t.commands;
	out->signs = t.signs;
	out->sign_ns = t.sign_ns;
}

static const struct histogram *
tpm_latency(struct ks_backend *b, enum keystore_tpm_op op)
{
	static const enum kstpm_op ops[KEYSTORE_TPM_OPS] = {
	        [KEYSTORE_TPM_SIGN] = KSTPM_OP_SIGN,
	        [KEYSTORE_TPM_CREATE] = KSTPM_OP_CREATE,
	        [KEYSTORE_TPM_SEAL] = KSTPM_OP_SEAL,
	        [KEYSTORE_TPM_UNSEAL] = KSTPM_OP_UNSEAL,
	};

	return kstpm_latency(tpm_of(b)->tpm, ops[op]);
}

const struct ks_backend_ops ks_tpm_ops = {
        .name = "tpm",
        /* The TLS library is given the TSS2 file itself: it holds no secret. */
        .key_file = {"key.tss2.pem", "next.key.tss2.pem"},
        .tls_ref = {"key.tss2.pem", "next.key.tss2.pem"},
        .pem_label = TSS2_LABEL,
        .psk_file = "psk.enc",
        .psk_file_secret = false,
        .psk_file_max = 2 * PSK_TEXT_MAX,
        .open = tpm_open,
        .free = tpm_free,
        .create_key = tpm_create_key,
        .load_key = tpm_load_key,
        .psk_open = tpm_psk_open,
        .psk_seal = tpm_psk_seal,
        .key_decode = tpm_key_decode,
        .sign = tpm_sign,
        .key_free = tpm_key_free,
        .ping = tpm_ping,
        .stats = tpm_stats,
        .latency = tpm_latency,
};
