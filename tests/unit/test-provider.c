/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/async.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <openssl/store.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "keystore.h"
#include "log.h"
#include "provider.h"
#include "tpmq.h"

/*
 * A fake keystore: the "GWTEST KEY" PEM body is the DER of a real P-256 private key; load()
 * decodes it with the default provider and sign() signs with it, counting calls. The counter
 * is how the tests see that a signature really went through ops->sign. Signatures inside an
 * OpenSSL async job go through a worker of its own (tpmq), which the tests can hold.
 */
struct fake {
	atomic_int loads;
	atomic_int frees;
	atomic_int signs;
	atomic_bool fail_sign;
	struct tpmq *q;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool held;          /* the worker waits before signing */
	int entered;        /* signatures the worker began */
	atomic_int pending; /* async signatures not yet freed */
};

static const char *const fake_labels[] = {"GWTEST KEY", NULL};

static void *
fake_load(void *arg, const char *label, const uint8_t *der, size_t len,
          uint8_t pub[KSPROV_P256_POINT_LEN])
{
	struct fake *fk = arg;
	const unsigned char *p = der;
	EVP_PKEY *pk;
	size_t publen = 0;

	if (strcmp(label, "GWTEST KEY") != 0)
		return NULL;
	pk = d2i_PrivateKey_ex(EVP_PKEY_EC, NULL, &p, (long)len, NULL, "provider=default");
	if (!pk ||
	    !EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_PUB_KEY, pub,
	                                     KSPROV_P256_POINT_LEN, &publen) ||
	    publen != KSPROV_P256_POINT_LEN) {
		EVP_PKEY_free(pk);
		ERR_clear_error();
		return NULL;
	}
	atomic_fetch_add(&fk->loads, 1);
	return pk;
}

static void
fake_free(void *arg, void *key)
{
	struct fake *fk = arg;

	atomic_fetch_add(&fk->frees, 1);
	EVP_PKEY_free(key);
}

static int
fake_sign(void *arg, void *key, const uint8_t *digest, size_t dlen, uint8_t *sig, size_t *siglen)
{
	struct fake *fk = arg;
	EVP_PKEY_CTX *ctx;
	size_t len = 72; /* the room ops->sign promises */
	int ok;

	if (atomic_load(&fk->fail_sign))
		return -EIO;
	ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, "provider=default");
	ok = ctx && EVP_PKEY_sign_init(ctx) > 0 && EVP_PKEY_sign(ctx, sig, &len, digest, dlen) > 0;
	EVP_PKEY_CTX_free(ctx);
	if (!ok)
		return -EIO;
	*siglen = len;
	atomic_fetch_add(&fk->signs, 1);
	return 0;
}

struct fake_op {
	struct fake *fk;
	EVP_PKEY *key;
	uint8_t digest[EVP_MAX_MD_SIZE];
	size_t dlen;
	uint8_t sig[KSPROV_SIG_MAX];
	size_t siglen;
};

static int
fake_op_run(void *data)
{
	struct fake_op *op = data;
	struct fake *fk = op->fk;

	pthread_mutex_lock(&fk->lock);
	fk->entered++;
	pthread_cond_broadcast(&fk->cond);
	while (fk->held)
		pthread_cond_wait(&fk->cond, &fk->lock);
	pthread_mutex_unlock(&fk->lock);
	return fake_sign(fk, op->key, op->digest, op->dlen, op->sig, &op->siglen);
}

static void
fake_op_free(void *data)
{
	struct fake_op *op = data;

	atomic_fetch_sub(&op->fk->pending, 1);
	EVP_PKEY_free(op->key);
	free(op);
}

static void *
fake_sign_start(void *arg, void *key, const uint8_t *digest, size_t dlen, int *fd)
{
	struct fake *fk = arg;
	struct fake_op *op = calloc(1, sizeof(*op));
	struct tpmq_req *req;

	if (!op || dlen > sizeof(op->digest) || !EVP_PKEY_up_ref(key)) {
		free(op);
		return NULL;
	}
	*op = (struct fake_op){.fk = fk, .key = key, .dlen = dlen};
	memcpy(op->digest, digest, dlen);
	atomic_fetch_add(&fk->pending, 1);
	if (tpmq_submit(fk->q, TPMQ_HANDSHAKE, fake_op_run, op, fake_op_free, &req) < 0) {
		fake_op_free(op);
		return NULL;
	}
	*fd = tpmq_req_fd(req);
	return req;
}

static bool
fake_sign_done(void *op)
{
	return tpmq_req_done(op);
}

static int
fake_sign_finish(void *op, uint8_t *sig, size_t *siglen)
{
	struct fake_op *o = tpmq_req_data(op);
	int r = tpmq_req_result(op);

	if (r == 0) {
		memcpy(sig, o->sig, o->siglen);
		*siglen = o->siglen;
	}
	tpmq_req_release(op);
	return r;
}

static void
fake_sign_abandon(void *op)
{
	tpmq_req_release(op);
}

static const struct ksprov_ops fake_ops = {
        .labels = fake_labels,
        .load = fake_load,
        .free = fake_free,
        .sign = fake_sign,
        .sign_start = fake_sign_start,
        .sign_done = fake_sign_done,
        .sign_finish = fake_sign_finish,
        .sign_abandon = fake_sign_abandon,
};

static void
hold_worker(struct fake *fk, bool held)
{
	pthread_mutex_lock(&fk->lock);
	fk->held = held;
	pthread_cond_broadcast(&fk->cond);
	pthread_mutex_unlock(&fk->lock);
}

/* Signatures the fake's worker began so far. */
static int
entered(struct fake *fk)
{
	int n;

	pthread_mutex_lock(&fk->lock);
	n = fk->entered;
	pthread_mutex_unlock(&fk->lock);
	return n;
}

/* Waits (at most 10 s) until the fake's worker has begun n signatures in all. */
static void
wait_entered(struct fake *fk, int n)
{
	struct timespec dl;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 10;
	pthread_mutex_lock(&fk->lock);
	while (fk->entered < n) {
		if (pthread_cond_timedwait(&fk->cond, &fk->lock, &dl) == ETIMEDOUT) {
			pthread_mutex_unlock(&fk->lock);
			fail_msg("the worker began %d signatures, not %d", fk->entered, n);
		}
	}
	pthread_mutex_unlock(&fk->lock);
}

/* Polls (at most 10 s) until the fake holds no async signature any more. */
static void
wait_no_pending(struct fake *fk)
{
	for (int i = 0; i < 10000 && atomic_load(&fk->pending) > 0; i++)
		usleep(1000);
	assert_int_equal(atomic_load(&fk->pending), 0);
}

enum file {
	F_CA,
	F_CLIENT_CERT,
	F_CLIENT_KEY, /* GWTEST KEY */
	F_SERVER_CERT,
	F_SERVER_KEY,
	F_OTHER_CERT,
	F_OTHER_KEY,    /* PRIVATE KEY (PKCS#8) */
	F_OTHER_EC_KEY, /* EC PRIVATE KEY (traditional) */
	F_BROKEN_KEY,   /* GWTEST KEY with a body that is no key */
	F_COUNT,
};

static const char *const file_names[F_COUNT] = {
        "ca.pem",    "client.pem", "client.key",   "server.pem", "server.key",
        "other.pem", "other.key",  "other-ec.key", "broken.key",
};

struct fixture {
	struct fake fake;
	char dir[32];
	char path[F_COUNT][64];
	EVP_PKEY *device_key; /* the key behind client.key, default provider */
	EVP_PKEY *ca_key, *server_key, *other_key;
	X509 *ca, *client, *server, *other;
	/* The second group: a soft keystore and its device's TLS files. */
	struct keystore *ks;
	const char *ks_cert, *ks_key;
};

static EVP_PKEY *
new_p256(void)
{
	EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");

	assert_non_null(pk);
	return pk;
}

static void
add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;

	X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	assert_non_null(ext);
	assert_int_equal(X509_add_ext(x, ext, -1), 1);
	X509_EXTENSION_free(ext);
}

/* A certificate for key, signed by issuer (self-signed when issuer is NULL). */
static X509 *
make_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, long serial)
{
	X509 *x = X509_new();
	X509_NAME *name;

	assert_non_null(x);
	assert_int_equal(X509_set_version(x, X509_VERSION_3), 1);
	assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), serial), 1);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -60));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 86400));
	name = X509_get_subject_name(x);
	assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
	                                            (const unsigned char *)cn, -1, -1, 0),
	                 1);
	assert_int_equal(X509_set_issuer_name(x, X509_get_subject_name(issuer ? issuer : x)), 1);
	assert_int_equal(X509_set_pubkey(x, key), 1);
	if (!issuer) {
		add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
		add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
	} else {
		add_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE");
		if (strcmp(cn, "localhost") == 0)
			add_ext(x, issuer, NID_subject_alt_name, "DNS:localhost");
	}
	assert_true(X509_sign(x, issuer_key, EVP_sha256()) > 0);
	return x;
}

static BIO *
open_out(struct fixture *f, enum file which)
{
	BIO *b = BIO_new_file(f->path[which], "w");

	assert_non_null(b);
	return b;
}

static void
write_cert(struct fixture *f, enum file which, X509 *x)
{
	BIO *b = open_out(f, which);

	assert_int_equal(PEM_write_bio_X509(b, x), 1);
	BIO_free(b);
}

static void
write_pem(struct fixture *f, enum file which, const char *label, const uint8_t *der, long len)
{
	BIO *b = open_out(f, which);

	assert_true(PEM_write_bio(b, label, "", der, len) > 0);
	BIO_free(b);
}

static int
fixture_setup(void **state, bool fake)
{
	struct fixture *f = calloc(1, sizeof(*f));
	unsigned char *der = NULL;
	int len;
	BIO *b;

	assert_non_null(f);
	*state = f;
	pthread_mutex_init(&f->fake.lock, NULL);
	pthread_cond_init(&f->fake.cond, NULL);
	/* As the daemon does: the provider first, before any other OpenSSL use. */
	if (fake) {
		assert_int_equal(tpmq_new(&f->fake.q), 0);
		assert_int_equal(ksprov_init(&fake_ops, &f->fake), 0);
	}

	strcpy(f->dir, "/tmp/gw-prov-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	for (int i = 0; i < F_COUNT; i++)
		snprintf(f->path[i], sizeof(f->path[i]), "%s/%s", f->dir, file_names[i]);

	f->device_key = new_p256();
	f->ca_key = new_p256();
	f->server_key = new_p256();
	f->other_key = new_p256();
	f->ca = make_cert("Test CA", f->ca_key, NULL, f->ca_key, 1);
	f->client = make_cert("device-1", f->device_key, f->ca, f->ca_key, 2);
	f->server = make_cert("localhost", f->server_key, f->ca, f->ca_key, 3);
	f->other = make_cert("other", f->other_key, f->ca, f->ca_key, 4);
	write_cert(f, F_CA, f->ca);
	write_cert(f, F_CLIENT_CERT, f->client);
	write_cert(f, F_SERVER_CERT, f->server);
	write_cert(f, F_OTHER_CERT, f->other);

	len = i2d_PrivateKey(f->device_key, &der);
	assert_true(len > 0);
	write_pem(f, F_CLIENT_KEY, "GWTEST KEY", der, len);
	OPENSSL_clear_free(der, (size_t)len);
	write_pem(f, F_BROKEN_KEY, "GWTEST KEY", (const uint8_t *)"\x30\x03\x02\x01\x01", 5);

	b = open_out(f, F_SERVER_KEY);
	assert_int_equal(PEM_write_bio_PrivateKey(b, f->server_key, NULL, NULL, 0, NULL, NULL), 1);
	BIO_free(b);
	b = open_out(f, F_OTHER_KEY);
	assert_int_equal(PEM_write_bio_PrivateKey(b, f->other_key, NULL, NULL, 0, NULL, NULL), 1);
	BIO_free(b);
	b = open_out(f, F_OTHER_EC_KEY);
	assert_int_equal(
	        PEM_write_bio_PrivateKey_traditional(b, f->other_key, NULL, NULL, 0, NULL, NULL),
	        1);
	BIO_free(b);
	return 0;
}

static int
group_teardown(void **state)
{
	struct fixture *f = *state;

	/* Also after a failed setup: every step below accepts what setup did not get to. */
	for (int i = 0; i < F_COUNT; i++) {
		if (f->path[i][0])
			unlink(f->path[i]);
	}
	if (f->dir[0])
		rmdir(f->dir);
	X509_free(f->ca);
	X509_free(f->client);
	X509_free(f->server);
	X509_free(f->other);
	EVP_PKEY_free(f->device_key);
	EVP_PKEY_free(f->ca_key);
	EVP_PKEY_free(f->server_key);
	EVP_PKEY_free(f->other_key);
	keystore_free(f->ks);
	ksprov_finish();
	hold_worker(&f->fake, false);
	tpmq_free(f->fake.q);
	/* Every key the provider loaded was handed back to the keystore. */
	assert_int_equal(atomic_load(&f->fake.loads), atomic_load(&f->fake.frees));
	assert_int_equal(atomic_load(&f->fake.pending), 0);
	pthread_cond_destroy(&f->fake.cond);
	pthread_mutex_destroy(&f->fake.lock);
	free(f);
	return 0;
}

static int
group_setup(void **state)
{
	return fixture_setup(state, true);
}

/* The way bridges/mqtt gets there (load_key()): it reads with this call. */
static EVP_PKEY *
read_key(struct fixture *f, enum file which)
{
	BIO *b = BIO_new_file(f->path[which], "r");
	EVP_PKEY *pk;

	assert_non_null(b);
	pk = PEM_read_bio_PrivateKey_ex(b, NULL, NULL, NULL, NULL, NULL);
	BIO_free(b);
	return pk;
}

static const char *
provider_of(const EVP_PKEY *pk)
{
	return OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(pk));
}

/*
 * The public key as a CA or TLS peer sees it: SubjectPublicKeyInfo, default provider. No
 * cmocka asserts here and in the two helpers below: worker threads use them too.
 */
static EVP_PKEY *
peer_view(EVP_PKEY *pk)
{
	unsigned char *der = NULL;
	const unsigned char *p;
	EVP_PKEY *pub = NULL;
	int len = i2d_PUBKEY(pk, &der);

	p = der;
	if (len > 0)
		pub = d2i_PUBKEY_ex(NULL, &p, len, NULL, "provider=default");
	OPENSSL_free(der);
	return pub;
}

static const unsigned char msg[] = "temperature=21.5";

/* Signs msg with pk through EVP_DigestSign; returns the signature length, 0 on failure. */
static size_t
digest_sign(EVP_PKEY *pk, const char *md, unsigned char *sig, size_t cap)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	size_t len = 0;
	int ok;

	ok = ctx && EVP_DigestSignInit_ex(ctx, NULL, md, NULL, NULL, pk, NULL) > 0 &&
	     EVP_DigestSign(ctx, NULL, &len, msg, sizeof(msg)) > 0 && len <= cap;
	len = cap;
	ok = ok && EVP_DigestSign(ctx, sig, &len, msg, sizeof(msg)) > 0;
	EVP_MD_CTX_free(ctx);
	ERR_clear_error();
	return ok ? len : 0;
}

static int
verify(EVP_PKEY *pub, const char *md, const unsigned char *sig, size_t siglen,
       const unsigned char *data, size_t len)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int r = -1;

	if (ctx && EVP_DigestVerifyInit_ex(ctx, NULL, md, NULL, "provider=default", pub, NULL) == 1)
		r = EVP_DigestVerify(ctx, sig, siglen, data, len);
	EVP_MD_CTX_free(ctx);
	ERR_clear_error();
	return r;
}

static void
key_file_loads_and_signs_through_keystore(void **state)
{
	struct fixture *f = *state;
	static const char *const mds[] = {"SHA256", "SHA384", "SHA512"};
	unsigned char sig[256], tampered[sizeof(msg)];
	char group[32];
	EVP_PKEY *pk, *pub;
	EVP_MD_CTX *ctx;
	size_t len;
	int before;

	pk = read_key(f, F_CLIENT_KEY);
	assert_non_null(pk);
	assert_string_equal(provider_of(pk), KSPROV_NAME);
	assert_true(EVP_PKEY_is_a(pk, "EC"));
	assert_int_equal(EVP_PKEY_get_bits(pk), 256);
	assert_int_equal(EVP_PKEY_get_security_bits(pk), 128);
	assert_int_equal(EVP_PKEY_get_size(pk), 72);
	assert_int_equal(EVP_PKEY_get_group_name(pk, group, sizeof(group), NULL), 1);
	assert_string_equal(group, "prime256v1");
	/* The same key pair as the keystore's, whichever side OpenSSL compares from. */
	assert_int_equal(EVP_PKEY_eq(pk, f->device_key), 1);
	assert_int_equal(EVP_PKEY_eq(f->device_key, pk), 1);
	pub = peer_view(pk);
	assert_non_null(pub);
	assert_string_equal(provider_of(pub), "default");
	assert_int_equal(EVP_PKEY_eq(pub, f->device_key), 1);

	for (size_t i = 0; i < sizeof(mds) / sizeof(mds[0]); i++) {
		before = atomic_load(&f->fake.signs);
		len = digest_sign(pk, mds[i], sig, sizeof(sig));
		assert_true(len > 0);
		assert_int_equal(atomic_load(&f->fake.signs), before + 1);
		assert_int_equal(verify(pub, mds[i], sig, len, msg, sizeof(msg)), 1);
		memcpy(tampered, msg, sizeof(msg));
		tampered[0] ^= 1;
		assert_int_not_equal(verify(pub, mds[i], sig, len, tampered, sizeof(tampered)), 1);
	}

	/* Streaming: Update in pieces, then Final. */
	ctx = EVP_MD_CTX_new();
	assert_non_null(ctx);
	before = atomic_load(&f->fake.signs);
	assert_int_equal(EVP_DigestSignInit_ex(ctx, NULL, "SHA256", NULL, NULL, pk, NULL), 1);
	assert_int_equal(EVP_DigestSignUpdate(ctx, msg, 5), 1);
	assert_int_equal(EVP_DigestSignUpdate(ctx, msg + 5, sizeof(msg) - 5), 1);
	len = sizeof(sig);
	assert_int_equal(EVP_DigestSignFinal(ctx, sig, &len), 1);
	EVP_MD_CTX_free(ctx);
	assert_int_equal(atomic_load(&f->fake.signs), before + 1);
	assert_int_equal(verify(pub, "SHA256", sig, len, msg, sizeof(msg)), 1);

	/* A digest ECDSA-with is not defined for here (SHA-1 is too weak anyway) is refused. */
	before = atomic_load(&f->fake.signs);
	assert_int_equal(digest_sign(pk, "SHA1", sig, sizeof(sig)), 0);
	assert_int_equal(atomic_load(&f->fake.signs), before);

	EVP_PKEY_free(pub);
	EVP_PKEY_free(pk);
}

/* EVP_PKEY_sign(): the caller hashes, the keystore signs the digest as given. */
static void
precomputed_digest_signs_through_keystore(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *pk = read_key(f, F_CLIENT_KEY), *pub;
	unsigned char digest[EVP_MAX_MD_SIZE], sig[128];
	unsigned int dlen;
	size_t len = 0;
	EVP_PKEY_CTX *ctx, *vctx;
	int before = atomic_load(&f->fake.signs);

	assert_non_null(pk);
	pub = peer_view(pk);
	assert_non_null(pub);
	assert_int_equal(EVP_Digest(msg, sizeof(msg), digest, &dlen, EVP_sha256(), NULL), 1);
	ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
	assert_non_null(ctx);
	assert_int_equal(EVP_PKEY_sign_init(ctx), 1);
	assert_int_equal(EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()), 1);
	assert_int_equal(EVP_PKEY_sign(ctx, NULL, &len, digest, dlen), 1);
	assert_true(len >= 72 && len <= sizeof(sig));
	/* A digest of the wrong size for SHA-256 never reaches the keystore. */
	assert_true(EVP_PKEY_sign(ctx, sig, &len, digest, 20) <= 0);
	assert_int_equal(atomic_load(&f->fake.signs), before);
	len = sizeof(sig);
	assert_int_equal(EVP_PKEY_sign(ctx, sig, &len, digest, dlen), 1);
	assert_int_equal(atomic_load(&f->fake.signs), before + 1);

	vctx = EVP_PKEY_CTX_new_from_pkey(NULL, pub, "provider=default");
	assert_non_null(vctx);
	assert_int_equal(EVP_PKEY_verify_init(vctx), 1);
	assert_int_equal(EVP_PKEY_verify(vctx, sig, len, digest, dlen), 1);
	EVP_PKEY_CTX_free(vctx);
	EVP_PKEY_CTX_free(ctx);
	EVP_PKEY_free(pub);
	EVP_PKEY_free(pk);
	ERR_clear_error();
}

/* OSSL_STORE (what the openssl CLI and URI-taking code use) finds the same key. */
static void
key_file_loads_through_ossl_store(void **state)
{
	struct fixture *f = *state;
	OSSL_STORE_CTX *store = OSSL_STORE_open(f->path[F_CLIENT_KEY], NULL, NULL, NULL, NULL);
	OSSL_STORE_INFO *info;
	unsigned char sig[128];
	EVP_PKEY *pk;
	int before = atomic_load(&f->fake.signs);

	assert_non_null(store);
	info = OSSL_STORE_load(store);
	assert_non_null(info);
	assert_int_equal(OSSL_STORE_INFO_get_type(info), OSSL_STORE_INFO_PKEY);
	pk = OSSL_STORE_INFO_get0_PKEY(info);
	assert_string_equal(provider_of(pk), KSPROV_NAME);
	assert_int_equal(EVP_PKEY_eq(pk, f->device_key), 1);
	assert_true(digest_sign(pk, "SHA256", sig, sizeof(sig)) > 0);
	assert_int_equal(atomic_load(&f->fake.signs), before + 1);
	OSSL_STORE_INFO_free(info);
	OSSL_STORE_close(store);
}

static void
keystore_failure_fails_the_signature(void **state)
{
	struct fixture *f = *state;
	unsigned char sig[128];
	EVP_PKEY *pk = read_key(f, F_CLIENT_KEY);

	assert_non_null(pk);
	atomic_store(&f->fake.fail_sign, true);
	assert_int_equal(digest_sign(pk, "SHA256", sig, sizeof(sig)), 0);
	atomic_store(&f->fake.fail_sign, false);
	assert_true(digest_sign(pk, "SHA256", sig, sizeof(sig)) > 0);
	EVP_PKEY_free(pk);
}

static void
private_key_cannot_be_exported(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *pk = read_key(f, F_CLIENT_KEY);
	OSSL_PARAM *params = NULL;
	unsigned char *der = NULL;
	BIGNUM *priv = NULL;
	BIO *mem;

	assert_non_null(pk);
	assert_int_equal(EVP_PKEY_todata(pk, EVP_PKEY_KEYPAIR, &params), 0);
	assert_null(params);
	assert_true(i2d_PrivateKey(pk, &der) <= 0);
	assert_null(der);
	assert_int_equal(EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_PRIV_KEY, &priv), 0);
	mem = BIO_new(BIO_s_mem());
	assert_non_null(mem);
	assert_int_equal(PEM_write_bio_PrivateKey(mem, pk, NULL, NULL, 0, NULL, NULL), 0);
	assert_int_equal(BIO_pending(mem), 0);
	BIO_free(mem);

	/* The public half is there for whoever needs it (CSRs, certificate checks). */
	assert_int_equal(EVP_PKEY_todata(pk, EVP_PKEY_PUBLIC_KEY, &params), 1);
	assert_non_null(OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_PUB_KEY));
	assert_null(OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_PRIV_KEY));
	OSSL_PARAM_free(params);
	ERR_clear_error();
	EVP_PKEY_free(pk);
}

/* TLS, client side with the device key, server side entirely on the default provider. */

static SSL_CTX *
client_ctx_with(struct fixture *f, const char *cert, const char *key, int max_version,
                bool verify_server)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	assert_non_null(ctx);
	assert_int_equal(SSL_CTX_set_max_proto_version(ctx, max_version), 1);
	assert_int_equal(SSL_CTX_use_certificate_file(ctx, cert, SSL_FILETYPE_PEM), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM), 1);
	assert_int_equal(SSL_CTX_check_private_key(ctx), 1);
	if (verify_server) {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
		assert_int_equal(SSL_CTX_load_verify_locations(ctx, f->path[F_CA], NULL), 1);
	}
	return ctx;
}

static SSL_CTX *
client_ctx(struct fixture *f, int max_version, bool verify_server)
{
	return client_ctx_with(f, f->path[F_CLIENT_CERT], f->path[F_CLIENT_KEY], max_version,
	                       verify_server);
}

static SSL_CTX *
server_ctx(struct fixture *f)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	assert_non_null(ctx);
	assert_int_equal(
	        SSL_CTX_use_certificate_file(ctx, f->path[F_SERVER_CERT], SSL_FILETYPE_PEM), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey_file(ctx, f->path[F_SERVER_KEY], SSL_FILETYPE_PEM),
	                 1);
	assert_string_equal(provider_of(SSL_CTX_get0_privatekey(ctx)), "default");
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	assert_int_equal(SSL_CTX_load_verify_locations(ctx, f->path[F_CA], NULL), 1);
	return ctx;
}

struct session {
	SSL *client, *server;
};

/* Runs the handshake over an in-memory BIO pair; true if both sides completed. */
static bool
handshake(struct session *s, SSL_CTX *cctx, SSL_CTX *sctx, const char *host)
{
	BIO *bc, *bs;
	int rc = 0, rs = 0;

	s->client = SSL_new(cctx);
	s->server = SSL_new(sctx);
	assert_non_null(s->client);
	assert_non_null(s->server);
	assert_int_equal(BIO_new_bio_pair(&bc, 0, &bs, 0), 1);
	SSL_set_bio(s->client, bc, bc);
	SSL_set_bio(s->server, bs, bs);
	SSL_set_connect_state(s->client);
	SSL_set_accept_state(s->server);
	assert_int_equal(SSL_set_tlsext_host_name(s->client, host), 1);
	assert_int_equal(SSL_set1_host(s->client, host), 1);
	for (int i = 0; i < 50 && (rc != 1 || rs != 1); i++) {
		rc = SSL_do_handshake(s->client);
		if (rc <= 0 && SSL_get_error(s->client, rc) != SSL_ERROR_WANT_READ)
			break;
		rs = SSL_do_handshake(s->server);
		if (rs <= 0 && SSL_get_error(s->server, rs) != SSL_ERROR_WANT_READ)
			break;
	}
	ERR_clear_error();
	return rc == 1 && rs == 1;
}

static void
session_free(struct session *s)
{
	SSL_free(s->client);
	SSL_free(s->server);
}

/* A full mutually authenticated handshake plus one record each way. */
static void
check_mtls(struct fixture *f, int version, const char *groups, int expect_group)
{
	SSL_CTX *cctx = client_ctx(f, version, true), *sctx = server_ctx(f);
	struct session s;
	char buf[16];
	int before = atomic_load(&f->fake.signs), group;

	if (groups) {
		assert_int_equal(SSL_CTX_set1_groups_list(cctx, groups), 1);
		assert_int_equal(SSL_CTX_set1_groups_list(sctx, groups), 1);
	}
	assert_true(handshake(&s, cctx, sctx, "localhost"));
	assert_int_equal(SSL_version(s.client), version);
	/* One CertificateVerify, signed by the keystore. */
	assert_int_equal(atomic_load(&f->fake.signs), before + 1);
	/* The server verified the client certificate and the client the server's. */
	assert_int_equal(SSL_get_verify_result(s.server), X509_V_OK);
	assert_int_equal(X509_cmp(SSL_get0_peer_certificate(s.server), f->client), 0);
	assert_int_equal(SSL_get_verify_result(s.client), X509_V_OK);
	/* Key exchange still on the default provider's usual groups. */
	group = SSL_get_negotiated_group(s.client);
	if (expect_group)
		assert_int_equal(group, expect_group);
	else
		assert_true(group == NID_X9_62_prime256v1 || group == NID_X25519);

	assert_int_equal(SSL_write(s.client, "ping", 4), 4);
	assert_int_equal(SSL_read(s.server, buf, sizeof(buf)), 4);
	assert_memory_equal(buf, "ping", 4);
	assert_int_equal(SSL_write(s.server, "pong", 4), 4);
	assert_int_equal(SSL_read(s.client, buf, sizeof(buf)), 4);
	assert_memory_equal(buf, "pong", 4);

	session_free(&s);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

static void
tls13_client_auth_signs_through_keystore(void **state)
{
	check_mtls(*state, TLS1_3_VERSION, NULL, 0);
}

static void
tls12_client_auth_signs_through_keystore(void **state)
{
	check_mtls(*state, TLS1_2_VERSION, NULL, 0);
}

static void
tls_key_exchange_on_p256_still_works(void **state)
{
	check_mtls(*state, TLS1_3_VERSION, "P-256", NID_X9_62_prime256v1);
	check_mtls(*state, TLS1_2_VERSION, "P-256", NID_X9_62_prime256v1);
}

static void
tls_client_still_rejects_wrong_server(void **state)
{
	struct fixture *f = *state;
	SSL_CTX *cctx = client_ctx(f, TLS1_3_VERSION, true), *sctx = server_ctx(f);
	struct session s;

	/* The chain verifies (else this would be another error) but the name does not match. */
	assert_false(handshake(&s, cctx, sctx, "broker.example"));
	assert_int_equal(SSL_get_verify_result(s.client), X509_V_ERR_HOSTNAME_MISMATCH);
	session_free(&s);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

static void
tls_fails_when_keystore_cannot_sign(void **state)
{
	struct fixture *f = *state;
	SSL_CTX *cctx = client_ctx(f, TLS1_3_VERSION, true), *sctx = server_ctx(f);
	struct session s;

	atomic_store(&f->fake.fail_sign, true);
	assert_false(handshake(&s, cctx, sctx, "localhost"));
	atomic_store(&f->fake.fail_sign, false);
	session_free(&s);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

static void
csr_signed_with_keystore_key_verifies(void **state)
{
	struct fixture *f = *state;
	static const struct {
		const EVP_MD *(*md)(void);
		int nid;
	} cases[] = {{EVP_sha256, NID_ecdsa_with_SHA256}, {EVP_sha384, NID_ecdsa_with_SHA384}};
	EVP_PKEY *pk = read_key(f, F_CLIENT_KEY);

	assert_non_null(pk);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		X509_REQ *req = X509_REQ_new(), *parsed;
		unsigned char *der = NULL;
		const unsigned char *p;
		int len, before = atomic_load(&f->fake.signs);
		EVP_PKEY *pub;

		assert_non_null(req);
		assert_int_equal(X509_NAME_add_entry_by_txt(
		                         X509_REQ_get_subject_name(req), "CN", MBSTRING_ASC,
		                         (const unsigned char *)"device-1", -1, -1, 0),
		                 1);
		assert_int_equal(X509_REQ_set_pubkey(req, pk), 1);
		assert_true(X509_REQ_sign(req, pk, cases[i].md()) > 0);
		assert_int_equal(atomic_load(&f->fake.signs), before + 1);

		/* What the CA gets: the DER, parsed on the default provider. */
		len = i2d_X509_REQ(req, &der);
		assert_true(len > 0);
		p = der;
		parsed = d2i_X509_REQ(NULL, &p, len);
		assert_non_null(parsed);
		assert_int_equal(X509_REQ_get_signature_nid(parsed), cases[i].nid);
		pub = X509_REQ_get0_pubkey(parsed);
		assert_non_null(pub);
		assert_string_equal(provider_of(pub), "default");
		assert_int_equal(EVP_PKEY_eq(pub, f->device_key), 1);
		assert_int_equal(X509_REQ_verify(parsed, pub), 1);

		OPENSSL_free(der);
		X509_REQ_free(parsed);
		X509_REQ_free(req);
	}
	EVP_PKEY_free(pk);
}

static void
other_pem_keys_still_load_as_before(void **state)
{
	struct fixture *f = *state;
	static const enum file files[] = {F_OTHER_KEY, F_OTHER_EC_KEY, F_SERVER_KEY};
	int loads = atomic_load(&f->fake.loads);

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		EVP_PKEY *pk = read_key(f, files[i]);
		OSSL_PARAM *params = NULL;

		assert_non_null(pk);
		assert_string_equal(provider_of(pk), "default");
		assert_true(EVP_PKEY_is_a(pk, "EC"));
		/* A normal key keeps its private half: our decoder did not intercept it. */
		assert_int_equal(EVP_PKEY_todata(pk, EVP_PKEY_KEYPAIR, &params), 1);
		assert_non_null(OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_PRIV_KEY));
		OSSL_PARAM_free(params);
		EVP_PKEY_free(pk);
	}
	assert_int_equal(atomic_load(&f->fake.loads), loads);
}

static void
broken_key_file_is_an_error(void **state)
{
	struct fixture *f = *state;
	int loads = atomic_load(&f->fake.loads);
	SSL_CTX *ctx;

	assert_null(read_key(f, F_BROKEN_KEY));
	ctx = SSL_CTX_new(TLS_client_method());
	assert_non_null(ctx);
	assert_int_equal(SSL_CTX_use_PrivateKey_file(ctx, f->path[F_BROKEN_KEY], SSL_FILETYPE_PEM),
	                 0);
	SSL_CTX_free(ctx);
	ERR_clear_error();
	assert_int_equal(atomic_load(&f->fake.loads), loads);
}

static void
key_does_not_match_foreign_certificate(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *pk = read_key(f, F_CLIENT_KEY);
	SSL_CTX *ctx;

	assert_non_null(pk);
	assert_int_equal(X509_check_private_key(f->client, pk), 1);
	assert_int_equal(X509_check_private_key(f->other, pk), 0);
	assert_int_not_equal(EVP_PKEY_eq(pk, f->other_key), 1);
	EVP_PKEY_free(pk);

	ctx = SSL_CTX_new(TLS_client_method());
	assert_non_null(ctx);
	assert_int_equal(SSL_CTX_use_certificate_file(ctx, f->path[F_OTHER_CERT], SSL_FILETYPE_PEM),
	                 1);
	assert_int_equal(SSL_CTX_use_PrivateKey_file(ctx, f->path[F_CLIENT_KEY], SSL_FILETYPE_PEM),
	                 0);
	assert_int_equal(SSL_CTX_check_private_key(ctx), 0);
	SSL_CTX_free(ctx);
	ERR_clear_error();
}

/* Keys load and sign on several threads (gwctl, libcurl, the worker); all must work. */
#define THREADS          4
#define SIGNS_PER_THREAD 25

struct worker {
	struct fixture *f;
	int good;
};

static void *
sign_worker(void *arg)
{
	struct worker *w = arg;
	EVP_PKEY *pk = read_key(w->f, F_CLIENT_KEY), *pub;
	unsigned char sig[128];
	size_t len;

	if (!pk)
		return NULL;
	pub = peer_view(pk);
	for (int i = 0; pub && i < SIGNS_PER_THREAD; i++) {
		len = digest_sign(pk, "SHA256", sig, sizeof(sig));
		if (len > 0 && verify(pub, "SHA256", sig, len, msg, sizeof(msg)) == 1)
			w->good++;
	}
	EVP_PKEY_free(pub);
	EVP_PKEY_free(pk);
	return NULL;
}

static void
concurrent_signing_from_threads(void **state)
{
	struct fixture *f = *state;
	struct worker w[THREADS];
	pthread_t t[THREADS];
	int before = atomic_load(&f->fake.signs);

	for (int i = 0; i < THREADS; i++) {
		w[i] = (struct worker){.f = f};
		assert_int_equal(pthread_create(&t[i], NULL, sign_worker, &w[i]), 0);
	}
	for (int i = 0; i < THREADS; i++) {
		assert_int_equal(pthread_join(t[i], NULL), 0);
		assert_int_equal(w[i].good, SIGNS_PER_THREAD);
	}
	assert_int_equal(atomic_load(&f->fake.signs), before + THREADS * SIGNS_PER_THREAD);
}

/* ---- signatures inside OpenSSL async jobs (SSL_MODE_ASYNC's machinery, without TLS) ---- */

/*
 * A job OpenSSL can never finish: its wait context was freed while it was paused, and OpenSSL
 * frees neither the job nor its 32 KiB stack (DESIGN.md decision 3). Kept here, reachable, so
 * that LeakSanitizer reports only what the provider and the keystore might leak.
 */
static ASYNC_JOB *abandoned_jobs[8];
static size_t nabandoned;

/* A digest-sign context set up outside the job, as TLS does; the job only signs. */
struct job_args {
	EVP_MD_CTX *md;
	unsigned char *sig;
	size_t *len;
	bool block_pause;
};

static int
sign_job(void *arg)
{
	struct job_args *a = arg;
	int ok;

	if (a->block_pause)
		ASYNC_block_pause();
	ok = EVP_DigestSign(a->md, a->sig, a->len, msg, sizeof(msg)) > 0;
	if (a->block_pause)
		ASYNC_unblock_pause();
	return ok;
}

static EVP_MD_CTX *
sign_ctx(EVP_PKEY *pk)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();

	assert_non_null(md);
	assert_int_equal(EVP_DigestSignInit_ex(md, NULL, "SHA256", NULL, NULL, pk, NULL), 1);
	return md;
}

/* The one fd the job's wait context holds. */
static int
wait_fd(ASYNC_WAIT_CTX *w)
{
	OSSL_ASYNC_FD fd;
	size_t n = 0;

	assert_int_equal(ASYNC_WAIT_CTX_get_all_fds(w, NULL, &n), 1);
	assert_int_equal(n, 1);
	assert_int_equal(ASYNC_WAIT_CTX_get_all_fds(w, &fd, &n), 1);
	return fd;
}

static bool
readable_within(int fd, int ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};

	return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

static bool
fd_closed(int fd)
{
	return fcntl(fd, F_GETFD) < 0 && errno == EBADF;
}

/*
 * The job pauses on the signature, with the wait context holding one fd; the fd fires once
 * the worker signs; resumed, the job finishes with a signature that verifies and the fd is
 * gone from the wait context (and, once the worker lets go, closed).
 */
static void
check_job_pauses_until_signed(EVP_PKEY *pk, EVP_PKEY *pub, struct fake *fk)
{
	ASYNC_WAIT_CTX *w = ASYNC_WAIT_CTX_new();
	ASYNC_JOB *job = NULL;
	unsigned char sig[KSPROV_SIG_MAX];
	size_t len = sizeof(sig), added, deleted;
	struct job_args a = {.md = sign_ctx(pk), .sig = sig, .len = &len};
	OSSL_ASYNC_FD delfd;
	int ret = 0, fd, began = fk ? entered(fk) : 0;

	assert_non_null(w);
	assert_int_equal(ASYNC_start_job(&job, w, &ret, sign_job, &a, sizeof(a)), ASYNC_PAUSE);
	assert_non_null(job);
	fd = wait_fd(w);
	assert_int_equal(ASYNC_WAIT_CTX_get_changed_fds(w, NULL, &added, NULL, &deleted), 1);
	assert_int_equal(added, 1);
	if (fk) {
		/* The worker holds the signature: the fd stays quiet until it lets go. */
		wait_entered(fk, began + 1);
		assert_false(readable_within(fd, 0));
		hold_worker(fk, false);
	}
	assert_true(readable_within(fd, 10000));
	assert_int_equal(ASYNC_start_job(&job, w, &ret, sign_job, &a, sizeof(a)), ASYNC_FINISH);
	assert_null(job);
	assert_int_equal(ret, 1);
	assert_int_equal(verify(pub, "SHA256", sig, len, msg, sizeof(msg)), 1);
	/* Cleared: reported deleted to whoever watches the wait context, then closed. */
	assert_int_equal(ASYNC_WAIT_CTX_get_all_fds(w, NULL, &added), 1);
	assert_int_equal(added, 0);
	assert_int_equal(ASYNC_WAIT_CTX_get_changed_fds(w, NULL, &added, &delfd, &deleted), 1);
	assert_int_equal(deleted, 1);
	assert_int_equal(delfd, fd);
	if (fk) {
		wait_no_pending(fk);
		assert_true(fd_closed(fd));
	}
	ASYNC_WAIT_CTX_free(w);
	EVP_MD_CTX_free(a.md);
}

static void
signature_in_job_pauses_until_the_worker_signs(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *pk = read_key(f, F_CLIENT_KEY), *pub;
	int before = atomic_load(&f->fake.signs);

	assert_non_null(pk);
	pub = peer_view(pk);
	hold_worker(&f->fake, true);
	check_job_pauses_until_signed(pk, pub, &f->fake);
	assert_int_equal(atomic_load(&f->fake.signs), before + 1);
	EVP_PKEY_free(pub);
	EVP_PKEY_free(pk);
}

static void
failed_signature_in_job_fails_the_job(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *pk = read_key(f, F_CLIENT_KEY);
	ASYNC_WAIT_CTX *w = ASYNC_WAIT_CTX_new();
	ASYNC_JOB *job = NULL;
	unsigned char sig[KSPROV_SIG_MAX];
	size_t len = sizeof(sig);
	struct job_args a = {.md = sign_ctx(pk), .sig = sig, .len = &len};
	int ret = 1;

	atomic_store(&f->fake.fail_sign, true);
	assert_int_equal(ASYNC_start_job(&job, w, &ret, sign_job, &a, sizeof(a)), ASYNC_PAUSE);
	assert_true(readable_within(wait_fd(w), 10000));
	assert_int_equal(ASYNC_start_job(&job, w, &ret, sign_job, &a, sizeof(a)), ASYNC_FINISH);
	assert_int_equal(ret, 0);
	atomic_store(&f->fake.fail_sign, false);
	ERR_clear_error();
	wait_no_pending(&f->fake);
	ASYNC_WAIT_CTX_free(w);
	EVP_MD_CTX_free(a.md);
	EVP_PKEY_free(pk);
}

/* Where OpenSSL forbids a pause (ASYNC_block_pause), the job waits for the worker instead. */
static void
job_that_cannot_pause_waits(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *pk = read_key(f, F_CLIENT_KEY), *pub = peer_view(pk);
	ASYNC_WAIT_CTX *w = ASYNC_WAIT_CTX_new();
	ASYNC_JOB *job = NULL;
	unsigned char sig[KSPROV_SIG_MAX];
	size_t len = sizeof(sig), n;
	struct job_args a = {.md = sign_ctx(pk), .sig = sig, .len = &len, .block_pause = true};
	int ret = 0;

	assert_int_equal(ASYNC_start_job(&job, w, &ret, sign_job, &a, sizeof(a)), ASYNC_FINISH);
	assert_int_equal(ret, 1);
	assert_int_equal(verify(pub, "SHA256", sig, len, msg, sizeof(msg)), 1);
	assert_int_equal(ASYNC_WAIT_CTX_get_all_fds(w, NULL, &n), 1);
	assert_int_equal(n, 0);
	wait_no_pending(&f->fake);
	ASYNC_WAIT_CTX_free(w);
	EVP_MD_CTX_free(a.md);
	EVP_PKEY_free(pub);
	EVP_PKEY_free(pk);
}

/*
 * OpenSSL frees the wait context of a paused job (SSL_free mid-handshake) while the worker is
 * signing: the cleanup only lets go of the request; the worker finishes, then the request, its
 * key reference and its fd go. Nothing is freed under the worker (ASan) and nothing leaks.
 */
static void
wait_ctx_freed_while_the_worker_signs(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *pk = read_key(f, F_CLIENT_KEY);
	ASYNC_WAIT_CTX *w = ASYNC_WAIT_CTX_new();
	ASYNC_JOB *job = NULL;
	unsigned char sig[KSPROV_SIG_MAX];
	size_t len = sizeof(sig);
	struct job_args a = {.md = sign_ctx(pk), .sig = sig, .len = &len};
	int ret = 0, fd, before = atomic_load(&f->fake.signs), began = entered(&f->fake);

	hold_worker(&f->fake, true);
	assert_int_equal(ASYNC_start_job(&job, w, &ret, sign_job, &a, sizeof(a)), ASYNC_PAUSE);
	fd = wait_fd(w);
	wait_entered(&f->fake, began + 1);
	ASYNC_WAIT_CTX_free(w);
	abandoned_jobs[nabandoned++] = job;
	/* The worker is inside the signature: its request, key and fd must stay. */
	assert_int_equal(atomic_load(&f->fake.pending), 1);
	assert_false(fd_closed(fd));
	/* The job's own context is the test's to free; the job never runs again. */
	EVP_MD_CTX_free(a.md);
	EVP_PKEY_free(pk);

	hold_worker(&f->fake, false);
	wait_no_pending(&f->fake);
	assert_true(fd_closed(fd));
	assert_int_equal(atomic_load(&f->fake.signs), before + 1);
}

/* ... and while the signature still waits in the queue, it is dropped without signing. */
static void
wait_ctx_freed_while_queued_drops_the_signature(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *pk = read_key(f, F_CLIENT_KEY), *pub = peer_view(pk);
	ASYNC_WAIT_CTX *w1 = ASYNC_WAIT_CTX_new(), *w2 = ASYNC_WAIT_CTX_new();
	ASYNC_JOB *j1 = NULL, *j2 = NULL;
	unsigned char sig1[KSPROV_SIG_MAX], sig2[KSPROV_SIG_MAX];
	size_t len1 = sizeof(sig1), len2 = sizeof(sig2);
	struct job_args a1 = {.md = sign_ctx(pk), .sig = sig1, .len = &len1};
	struct job_args a2 = {.md = sign_ctx(pk), .sig = sig2, .len = &len2};
	int r1 = 0, r2 = 0, fd2, before = atomic_load(&f->fake.signs), began = entered(&f->fake);

	hold_worker(&f->fake, true);
	assert_int_equal(ASYNC_start_job(&j1, w1, &r1, sign_job, &a1, sizeof(a1)), ASYNC_PAUSE);
	wait_entered(&f->fake, began + 1);
	assert_int_equal(ASYNC_start_job(&j2, w2, &r2, sign_job, &a2, sizeof(a2)), ASYNC_PAUSE);
	fd2 = wait_fd(w2);
	assert_int_equal(atomic_load(&f->fake.pending), 2);

	/* Queued, nobody else holds it: gone at once, fd closed, never signed. */
	ASYNC_WAIT_CTX_free(w2);
	abandoned_jobs[nabandoned++] = j2;
	assert_int_equal(atomic_load(&f->fake.pending), 1);
	assert_true(fd_closed(fd2));
	EVP_MD_CTX_free(a2.md);

	/* The first one still completes, and is the only signature made. */
	hold_worker(&f->fake, false);
	assert_true(readable_within(wait_fd(w1), 10000));
	assert_int_equal(ASYNC_start_job(&j1, w1, &r1, sign_job, &a1, sizeof(a1)), ASYNC_FINISH);
	assert_int_equal(r1, 1);
	assert_int_equal(verify(pub, "SHA256", sig1, len1, msg, sizeof(msg)), 1);
	wait_no_pending(&f->fake);
	assert_int_equal(atomic_load(&f->fake.signs), before + 1);
	ASYNC_WAIT_CTX_free(w1);
	EVP_MD_CTX_free(a1.md);
	EVP_PKEY_free(pub);
	EVP_PKEY_free(pk);
}

/* ---- the same with a real keystore (soft backend) and a TLS handshake ---- */

static int
ks_group_setup(void **state)
{
	struct fixture *f;
	struct keystore_config cfg = {.backend = "soft"};
	char dir[96], *csr;
	uint8_t psk[KEYSTORE_PSK_MAX];
	size_t psklen;
	char why[256];
	X509_REQ *req;
	BUF_MEM *mem;
	X509 *cert;
	BIO *b;

	fixture_setup(state, false);
	f = *state;
	snprintf(dir, sizeof(dir), "%s/state", f->dir);
	assert_int_equal(mkdir(dir, 0700), 0);
	cfg.state_dir = dir;
	cfg.device_ca_file = f->path[F_CA];
	assert_int_equal(keystore_open(&f->ks, &cfg), 0);
	assert_int_equal(keystore_device_add(f->ks, "dev-1", NULL, NULL, 0, psk, &psklen), 0);
	assert_int_equal(keystore_device_csr(f->ks, "dev-1", &csr), 0);
	b = BIO_new_mem_buf(csr, -1);
	req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
	BIO_free(b);
	free(csr);
	assert_non_null(req);
	cert = make_cert("dev-1", X509_REQ_get0_pubkey(req), f->ca, f->ca_key, 10);
	X509_REQ_free(req);
	b = BIO_new(BIO_s_mem());
	assert_int_equal(PEM_write_bio_X509(b, cert), 1);
	X509_free(cert);
	BIO_get_mem_ptr(b, &mem);
	assert_int_equal(keystore_device_import_cert(f->ks, "dev-1", mem->data, mem->length, why,
	                                             sizeof(why)),
	                 0);
	BIO_free(b);
	assert_int_equal(keystore_tls_files(f->ks, "dev-1", &f->ks_cert, &f->ks_key), 0);
	return 0;
}

static int
ks_group_teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[96];

	keystore_free(f->ks);
	f->ks = NULL;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s/state'", f->dir);
	assert_int_equal(system(cmd), 0);
	return group_teardown(state);
}

static EVP_PKEY *
ks_key(struct fixture *f)
{
	BIO *b = BIO_new_file(f->ks_key, "r");
	EVP_PKEY *pk;

	assert_non_null(b);
	pk = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	BIO_free(b);
	assert_non_null(pk);
	assert_string_equal(provider_of(pk), KSPROV_NAME);
	return pk;
}

static void
keystore_key_signs_in_job(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *pk = ks_key(f), *pub = peer_view(pk);
	struct keystore_stats before, after;

	keystore_get_stats(f->ks, &before);
	check_job_pauses_until_signed(pk, pub, NULL);
	keystore_get_stats(f->ks, &after);
	/* A handshake's signature in the statistics the connect scheduler paces by. */
	assert_int_equal(after.handshake_signs, before.handshake_signs + 1);
	assert_true(after.handshake_sign_ns > 0);
	assert_true(after.busy_ns > before.busy_ns);
	assert_int_equal(after.signs, 0); /* TPM signatures: none with the soft backend */
	EVP_PKEY_free(pub);
	EVP_PKEY_free(pk);
}

/* A CSR is an operator's request: it signs at ADMIN priority, not as a handshake. */
static void
keystore_csr_is_not_a_handshake(void **state)
{
	struct fixture *f = *state;
	struct keystore_stats before, after;
	char *csr;

	keystore_get_stats(f->ks, &before);
	assert_int_equal(keystore_device_csr(f->ks, "dev-1", &csr), 0);
	free(csr);
	keystore_get_stats(f->ks, &after);
	assert_int_equal(after.handshake_signs, before.handshake_signs);
	assert_true(after.busy_ns > before.busy_ns);
	assert_int_equal(keystore_tpm_ping(f->ks), -ENODEV);
}

/* Freed right after the pause: whatever the worker is doing then, nothing breaks or leaks. */
static void
keystore_wait_ctx_freed_after_pause(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *pk = ks_key(f);
	ASYNC_WAIT_CTX *w = ASYNC_WAIT_CTX_new();
	ASYNC_JOB *job = NULL;
	unsigned char sig[KSPROV_SIG_MAX];
	size_t len = sizeof(sig);
	struct job_args a = {.md = sign_ctx(pk), .sig = sig, .len = &len};
	struct keystore_stats before, st;
	int ret = 0, i;

	keystore_get_stats(f->ks, &before);
	assert_int_equal(ASYNC_start_job(&job, w, &ret, sign_job, &a, sizeof(a)), ASYNC_PAUSE);
	ASYNC_WAIT_CTX_free(w);
	abandoned_jobs[nabandoned++] = job;
	EVP_MD_CTX_free(a.md);
	EVP_PKEY_free(pk);
	/* Signed (the worker had it) or dropped (still queued): one or the other. */
	for (i = 0; i < 10000; i++) {
		keystore_get_stats(f->ks, &st);
		if (st.handshake_signs + st.cancelled ==
		            before.handshake_signs + before.cancelled + 1 &&
		    !st.busy)
			break;
		usleep(1000);
	}
	assert_true(i < 10000);
}

/*
 * A TLS handshake as the MQTT engine will drive it: non-blocking sockets, SSL_MODE_ASYNC on
 * the client, one poll() for everything. The client's signature pauses the handshake
 * (SSL_ERROR_WANT_ASYNC); the client is resumed only when its async fd fires.
 */
static void
check_async_handshake(struct fixture *f, int version)
{
	SSL_CTX *cctx = client_ctx_with(f, f->ks_cert, f->ks_key, version, true);
	SSL_CTX *sctx = server_ctx(f);
	struct keystore_stats before, after;
	bool cdone = false, sdone = false, waiting = false;
	int sv[2], want_async = 0, async_fd = -1, r;
	struct pollfd ps;
	char buf[8];
	SSL *c, *s;

	keystore_get_stats(f->ks, &before);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	c = SSL_new(cctx);
	s = SSL_new(sctx);
	assert_non_null(c);
	assert_non_null(s);
	assert_int_equal(SSL_set_fd(c, sv[0]), 1);
	assert_int_equal(SSL_set_fd(s, sv[1]), 1);
	SSL_set_mode(c, SSL_MODE_ASYNC);
	SSL_set_connect_state(c);
	SSL_set_accept_state(s);
	assert_int_equal(SSL_set_tlsext_host_name(c, "localhost"), 1);
	assert_int_equal(SSL_set1_host(c, "localhost"), 1);

	for (int i = 0; i < 1000 && !(cdone && sdone); i++) {
		struct pollfd p[3] = {{.fd = sv[0], .events = POLLIN},
		                      {.fd = sv[1], .events = POLLIN},
		                      {.fd = async_fd, .events = POLLIN}};
		OSSL_ASYNC_FD add, del;
		size_t nadd, ndel;

		if (i > 0)
			assert_true(poll(p, waiting ? 3 : 2, 10000) > 0);
		if (!cdone && (!waiting || (p[2].revents & POLLIN))) {
			r = SSL_do_handshake(c);
			/* The fd the job cleared when it resumed is reported deleted. */
			assert_int_equal(SSL_get_changed_async_fds(c, NULL, &nadd, NULL, &ndel), 1);
			if (waiting) {
				assert_int_equal(ndel, 1);
				assert_int_equal(
				        SSL_get_changed_async_fds(c, NULL, &nadd, &del, &ndel), 1);
				assert_int_equal(del, async_fd);
			}
			waiting = false;
			if (r == 1) {
				cdone = true;
			} else if (SSL_get_error(c, r) == SSL_ERROR_WANT_ASYNC) {
				assert_true(SSL_waiting_for_async(c));
				assert_int_equal(
				        SSL_get_changed_async_fds(c, &add, &nadd, NULL, &ndel), 1);
				assert_int_equal(nadd, 1);
				async_fd = add;
				waiting = true;
				want_async++;
			} else {
				assert_int_equal(SSL_get_error(c, r), SSL_ERROR_WANT_READ);
			}
		}
		if (!sdone) {
			r = SSL_do_handshake(s);
			if (r == 1)
				sdone = true;
			else
				assert_int_equal(SSL_get_error(s, r), SSL_ERROR_WANT_READ);
		}
	}
	assert_true(cdone && sdone);
	assert_int_equal(SSL_version(c), version);
	/* One signature, one pause, resumed by its fd (DESIGN.md decision 3). */
	assert_int_equal(want_async, 1);
	assert_int_equal(SSL_get_verify_result(s), X509_V_OK);
	assert_non_null(SSL_get0_peer_certificate(s));
	keystore_get_stats(f->ks, &after);
	assert_int_equal(after.handshake_signs, before.handshake_signs + 1);

	/* The session carries data; reads and writes run in jobs too, without pausing. */
	assert_int_equal(SSL_write(c, "ping", 4), 4);
	ps = (struct pollfd){.fd = sv[1], .events = POLLIN};
	assert_int_equal(poll(&ps, 1, 10000), 1);
	assert_int_equal(SSL_read(s, buf, sizeof(buf)), 4);
	assert_memory_equal(buf, "ping", 4);

	SSL_free(c);
	SSL_free(s);
	close(sv[0]);
	close(sv[1]);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

static void
keystore_tls13_handshake_waits_for_the_signature_asynchronously(void **state)
{
	check_async_handshake(*state, TLS1_3_VERSION);
}

static void
keystore_tls12_handshake_waits_for_the_signature_asynchronously(void **state)
{
	check_async_handshake(*state, TLS1_2_VERSION);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(key_file_loads_and_signs_through_keystore),
	        cmocka_unit_test(precomputed_digest_signs_through_keystore),
	        cmocka_unit_test(key_file_loads_through_ossl_store),
	        cmocka_unit_test(keystore_failure_fails_the_signature),
	        cmocka_unit_test(private_key_cannot_be_exported),
	        cmocka_unit_test(tls13_client_auth_signs_through_keystore),
	        cmocka_unit_test(tls12_client_auth_signs_through_keystore),
	        cmocka_unit_test(tls_key_exchange_on_p256_still_works),
	        cmocka_unit_test(tls_client_still_rejects_wrong_server),
	        cmocka_unit_test(tls_fails_when_keystore_cannot_sign),
	        cmocka_unit_test(csr_signed_with_keystore_key_verifies),
	        cmocka_unit_test(other_pem_keys_still_load_as_before),
	        cmocka_unit_test(broken_key_file_is_an_error),
	        cmocka_unit_test(key_does_not_match_foreign_certificate),
	        cmocka_unit_test(concurrent_signing_from_threads),
	        cmocka_unit_test(signature_in_job_pauses_until_the_worker_signs),
	        cmocka_unit_test(failed_signature_in_job_fails_the_job),
	        cmocka_unit_test(job_that_cannot_pause_waits),
	        cmocka_unit_test(wait_ctx_freed_while_the_worker_signs),
	        cmocka_unit_test(wait_ctx_freed_while_queued_drops_the_signature),
	};
	const struct CMUnitTest ks_tests[] = {
	        cmocka_unit_test(keystore_key_signs_in_job),
	        cmocka_unit_test(keystore_csr_is_not_a_handshake),
	        cmocka_unit_test(keystore_wait_ctx_freed_after_pause),
	        cmocka_unit_test(keystore_tls13_handshake_waits_for_the_signature_asynchronously),
	        cmocka_unit_test(keystore_tls12_handshake_waits_for_the_signature_asynchronously),
	};
	int failed;

	log_init("test-provider", true, LOG_LEVEL_INFO);
	failed = cmocka_run_group_tests_name("fake keystore", tests, group_setup, group_teardown);
	/* The provider again, now serving a real keystore (soft backend) as the daemon does. */
	failed += cmocka_run_group_tests_name("soft keystore", ks_tests, ks_group_setup,
	                                      ks_group_teardown);
	return failed;
}
