/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <openssl/store.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "provider.h"

/*
 * A fake keystore: the "GWTEST KEY" PEM body is the DER of a real P-256 private key; load()
 * decodes it with the default provider and sign() signs with it, counting calls. The counter
 * is how the tests see that a signature really went through ops->sign.
 */
struct fake {
	atomic_int loads;
	atomic_int frees;
	atomic_int signs;
	atomic_bool fail_sign;
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

static const struct ksprov_ops fake_ops = {
        .labels = fake_labels,
        .load = fake_load,
        .free = fake_free,
        .sign = fake_sign,
};

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
group_setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	unsigned char *der = NULL;
	int len;
	BIO *b;

	assert_non_null(f);
	*state = f;
	/* As the daemon does: the provider first, before any other OpenSSL use. */
	assert_int_equal(ksprov_init(&fake_ops, &f->fake), 0);

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
	ksprov_finish();
	/* Every key the provider loaded was handed back to the keystore. */
	assert_int_equal(atomic_load(&f->fake.loads), atomic_load(&f->fake.frees));
	free(f);
	return 0;
}

/* The way paho gets there: SSL_CTX_use_PrivateKey_file() reads with this call. */
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

/* TLS, client side as paho sets it up, server side entirely on the default provider. */

static SSL_CTX *
client_ctx(struct fixture *f, int max_version, bool verify_server)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	assert_non_null(ctx);
	assert_int_equal(SSL_CTX_set_max_proto_version(ctx, max_version), 1);
	assert_int_equal(
	        SSL_CTX_use_certificate_file(ctx, f->path[F_CLIENT_CERT], SSL_FILETYPE_PEM), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey_file(ctx, f->path[F_CLIENT_KEY], SSL_FILETYPE_PEM),
	                 1);
	assert_int_equal(SSL_CTX_check_private_key(ctx), 1);
	if (verify_server) {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
		assert_int_equal(SSL_CTX_load_verify_locations(ctx, f->path[F_CA], NULL), 1);
	}
	return ctx;
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

/* paho loads and signs from its own threads; several at once must all work. */
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
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
