/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "device.h"
#include "keystore.h"

/* The soft backend in a temp state dir, with a test CA for device certificates. */
struct fixture {
	char state[64];
	char ks[96];
	char ca_file[128];
	EVP_PKEY *ca_key;
	X509 *ca;
	struct keystore_config cfg;
};

static void
add_name(X509_NAME *name, const char *cn)
{
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
}

/* A certificate for pub, issued by the fixture's CA (or by key/self when ca is NULL). */
static X509 *
issue(EVP_PKEY *pub, const char *cn, X509 *ca, EVP_PKEY *ca_key, long from_days, long to_days)
{
	X509 *x = X509_new();

	assert_non_null(x);
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), rand());
	X509_gmtime_adj(X509_getm_notBefore(x), from_days * 86400);
	X509_gmtime_adj(X509_getm_notAfter(x), to_days * 86400);
	X509_set_pubkey(x, pub);
	add_name(X509_get_subject_name(x), cn);
	X509_set_issuer_name(x, ca ? X509_get_subject_name(ca) : X509_get_subject_name(x));
	if (!ca && pub == ca_key) {
		/* A root: RFC 5280 4.2.1.9 wants basicConstraints CA:TRUE to issue. */
		X509V3_CTX v3;
		X509_EXTENSION *ext;

		X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
		ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
		X509_add_ext(x, ext, -1);
		X509_EXTENSION_free(ext);
	}
	assert_true(X509_sign(x, ca_key, EVP_sha256()) > 0);
	return x;
}

static char *
pem_of(X509 *x)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *data, *out;
	long len;

	PEM_write_bio_X509(b, x);
	len = BIO_get_mem_data(b, &data);
	out = strndup(data, (size_t)len);
	BIO_free(b);
	return out;
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	FILE *fp;

	strcpy(f->state, "/tmp/gw-ks-XXXXXX");
	assert_non_null(mkdtemp(f->state));
	snprintf(f->ks, sizeof(f->ks), "%s/keystore", f->state);
	snprintf(f->ca_file, sizeof(f->ca_file), "%s/ca.pem", f->state);
	f->ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	f->ca = issue(f->ca_key, "test CA", NULL, f->ca_key, -1, 30);
	fp = fopen(f->ca_file, "w");
	PEM_write_X509(fp, f->ca);
	fclose(fp);
	f->cfg = (struct keystore_config){
	        .state_dir = f->state, .backend = "soft", .device_ca_file = f->ca_file};
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->state);
	assert_int_equal(system(cmd), 0);
	X509_free(f->ca);
	EVP_PKEY_free(f->ca_key);
	free(f);
	return 0;
}

static struct keystore *
open_ok(struct fixture *f)
{
	struct keystore *ks;

	assert_int_equal(keystore_open(&ks, &f->cfg), 0);
	return ks;
}

static void
add(struct keystore *ks, const char *id, const char *identity, const char *psk)
{
	uint8_t out[KEYSTORE_PSK_MAX];
	size_t len;

	assert_int_equal(keystore_device_add(ks, id, identity, (const uint8_t *)psk,
	                                     psk ? strlen(psk) : 0, out, &len),
	                 0);
}

/* A CSR's public key taken out and certified (by the CA, or by a stranger); csr is freed. */
static char *
certify_csr(struct fixture *f, char *csr, const char *id, long from, long to, bool own_ca)
{
	EVP_PKEY *other = NULL;
	X509_REQ *req;
	X509 *x;
	char *pem;
	BIO *b;

	b = BIO_new_mem_buf(csr, -1);
	req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
	BIO_free(b);
	assert_non_null(req);
	/* The request is signed by the device key itself. */
	assert_int_equal(X509_REQ_verify(req, X509_REQ_get0_pubkey(req)), 1);
	if (own_ca) {
		x = issue(X509_REQ_get0_pubkey(req), id, f->ca, f->ca_key, from, to);
	} else {
		other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
		x = issue(X509_REQ_get0_pubkey(req), id, NULL, other, from, to);
	}
	pem = pem_of(x);
	X509_free(x);
	EVP_PKEY_free(other);
	X509_REQ_free(req);
	free(csr);
	return pem;
}

/* The device's CSR, certified. */
static char *
certify(struct fixture *f, struct keystore *ks, const char *id, long from, long to, bool own_ca)
{
	char *csr;

	assert_int_equal(keystore_device_csr(ks, id, &csr), 0);
	return certify_csr(f, csr, id, from, to, own_ca);
}

static void
import_ok(struct keystore *ks, const char *id, const char *pem)
{
	char why[512];
	int r = keystore_device_import_cert(ks, id, pem, strlen(pem), why, sizeof(why));

	if (r != 0)
		fail_msg("import-cert %s: %d: %s", id, r, why);
}

static void
adds_devices_and_finds_their_psks(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	uint8_t key[KEYSTORE_PSK_MAX], given[KEYSTORE_PSK_MAX];
	struct device *device;
	size_t len, glen;

	assert_int_equal(keystore_device_add(ks, "dev-b", "sensor-b", NULL, 0, given, &glen), 0);
	add(ks, "dev-a", NULL, "0123456789abcdef0123");
	assert_int_equal(keystore_count(ks), 2);
	assert_string_equal(keystore_device_id(ks, 0), "dev-a");

	/* A generated PSK: 32 letters and digits. */
	assert_int_equal(glen, 32);
	for (size_t i = 0; i < glen; i++)
		assert_true(isalnum(given[i]));
	assert_int_equal(
	        keystore_psk_lookup(ks, (const uint8_t *)"sensor-b", 8, &device, key, &len), 0);
	assert_string_equal(device->id, "dev-b");
	assert_memory_equal(key, given, glen);
	/* Without an explicit identity the identity is the device id; a prefix is not one. */
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)"dev-a", 5, &device, key, &len),
	                 0);
	assert_memory_equal(key, "0123456789abcdef0123", 20);
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)"dev-", 4, &device, key, &len),
	                 -ENOENT);
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)"dev-b", 5, &device, key, &len),
	                 -ENOENT);

	/* Refusals: same id, same identity, short key, bad id. */
	assert_int_equal(keystore_device_add(ks, "dev-a", NULL, NULL, 0, key, &len), -EEXIST);
	assert_int_equal(keystore_device_add(ks, "dev-c", "sensor-b", NULL, 0, key, &len), -EEXIST);
	assert_int_equal(
	        keystore_device_add(ks, "dev-c", NULL, (const uint8_t *)"short", 5, key, &len),
	        -EINVAL);
	assert_int_equal(keystore_device_add(ks, "dev/c", NULL, NULL, 0, key, &len), -EINVAL);
	keystore_free(ks);

	/* Everything survives a reopen. */
	ks = open_ok(f);
	assert_int_equal(keystore_count(ks), 2);
	assert_int_equal(
	        keystore_psk_lookup(ks, (const uint8_t *)"sensor-b", 8, &device, key, &len), 0);
	assert_memory_equal(key, given, glen);
	keystore_free(ks);
}

static void
installs_only_a_certificate_for_the_device_key(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	struct keystore_info info;
	const char *cert, *keyfile;
	char why[512], *pem;

	add(ks, "dev-a", NULL, NULL);
	add(ks, "dev-b", NULL, NULL);
	assert_int_equal(keystore_tls_files(ks, "dev-a", &cert, &keyfile), -ENOKEY);
	assert_int_equal(keystore_tls_files(ks, "dev-c", &cert, &keyfile), -ENOENT);

	/* dev-b's certificate is not dev-a's. */
	pem = certify(f, ks, "dev-b", -1, 30, true);
	assert_int_equal(
	        keystore_device_import_cert(ks, "dev-a", pem, strlen(pem), why, sizeof(why)),
	        -EKEYREJECTED);
	assert_non_null(strstr(why, "is not device dev-a's key"));
	free(pem);

	pem = certify(f, ks, "dev-a", -3, -1, true);
	assert_int_equal(
	        keystore_device_import_cert(ks, "dev-a", pem, strlen(pem), why, sizeof(why)),
	        -EKEYEXPIRED);
	assert_non_null(strstr(why, "it expired on "));
	free(pem);

	pem = certify(f, ks, "dev-a", -1, 30, false);
	assert_int_equal(
	        keystore_device_import_cert(ks, "dev-a", pem, strlen(pem), why, sizeof(why)),
	        -EINVAL);
	assert_non_null(strstr(why, "does not chain to the device CA"));
	free(pem);

	assert_int_equal(keystore_device_import_cert(ks, "dev-a", "junk", 4, why, sizeof(why)),
	                 -EINVAL);
	assert_int_equal(keystore_tls_files(ks, "dev-a", &cert, &keyfile), -ENOKEY);

	pem = certify(f, ks, "dev-a", -1, 30, true);
	import_ok(ks, "dev-a", pem);
	free(pem);
	assert_int_equal(keystore_tls_files(ks, "dev-a", &cert, &keyfile), 0);
	assert_non_null(strstr(keyfile, "/keystore/dev-a/keyref.pem"));
	assert_int_equal(keystore_device_info(ks, "dev-a", &info), 0);
	assert_true(info.has_cert);
	assert_string_equal(info.subject, "/CN=dev-a");
	assert_true(info.not_after > time(NULL) + 29 * 86400);
	keystore_free(ks);
}

static void
key_reference_signs_through_the_provider(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	const char *cert, *keyfile;
	char *pem;
	unsigned char sig[80];
	size_t siglen = sizeof(sig);
	EVP_PKEY *key, *pub;
	EVP_MD_CTX *md;
	X509 *x;
	BIO *b;

	add(ks, "dev-a", NULL, NULL);
	pem = certify(f, ks, "dev-a", -1, 30, true);
	import_ok(ks, "dev-a", pem);
	assert_int_equal(keystore_tls_files(ks, "dev-a", &cert, &keyfile), 0);
	/* What bridges/mqtt does with the file it is given: load it as a private key. */
	b = BIO_new_file(keyfile, "r");
	key = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	BIO_free(b);
	assert_non_null(key);
	md = EVP_MD_CTX_new();
	assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key), 1);
	assert_int_equal(EVP_DigestSign(md, sig, &siglen, (const unsigned char *)"hello", 5), 1);
	EVP_MD_CTX_free(md);
	/* ... and the signature verifies with the certificate's key. */
	b = BIO_new_mem_buf(pem, -1);
	x = PEM_read_bio_X509(b, NULL, NULL, NULL);
	BIO_free(b);
	pub = X509_get0_pubkey(x);
	md = EVP_MD_CTX_new();
	assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub), 1);
	assert_int_equal(EVP_DigestVerify(md, sig, siglen, (const unsigned char *)"hello", 5), 1);
	EVP_MD_CTX_free(md);
	X509_free(x);
	EVP_PKEY_free(key);
	free(pem);
	keystore_free(ks);
}

static void
removes_devices_for_good(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	uint8_t key[KEYSTORE_PSK_MAX];
	struct device *device;
	char path[256];
	size_t len;

	add(ks, "dev-a", NULL, NULL);
	add(ks, "dev-b", NULL, NULL);
	assert_int_equal(keystore_device_remove(ks, "dev-a"), 0);
	assert_int_equal(keystore_device_remove(ks, "dev-a"), -ENOENT);
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)"dev-a", 5, &device, key, &len),
	                 -ENOENT);
	snprintf(path, sizeof(path), "%s/dev-a", f->ks);
	assert_int_equal(access(path, F_OK), -1);
	keystore_free(ks);
	ks = open_ok(f);
	assert_int_equal(keystore_count(ks), 1);
	assert_string_equal(keystore_device_id(ks, 0), "dev-b");
	keystore_free(ks);
}

/*
 * The registry the other modules hang their state on is the store's: its devices, their state
 * and enabled as the store has them; a removed device held by a sensor's session keeps its id
 * and reads GONE, and its id is free again at once.
 */
static void
registry_follows_the_store(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	struct device_registry *reg = keystore_devices(ks);
	uint8_t key[KEYSTORE_PSK_MAX];
	struct device *dev, *held;
	size_t len;

	add(ks, "dev-b", NULL, NULL);
	add(ks, "dev-a", NULL, NULL);
	assert_int_equal(device_count(reg), 2);
	assert_string_equal(device_at(reg, 0)->id, "dev-a");
	dev = device_find(reg, "dev-b");
	assert_non_null(dev);
	assert_true(device_usable(dev));

	assert_int_equal(keystore_device_set_state(ks, "dev-b", KEYSTORE_SUSPENDED), 0);
	assert_int_equal(dev->state, DEVICE_SUSPENDED);
	assert_false(device_usable(dev));
	assert_int_equal(keystore_device_set_state(ks, "dev-b", KEYSTORE_ACTIVE), 0);
	assert_int_equal(keystore_device_set_attr(ks, "dev-b", "enabled", "false"), 0);
	assert_false(dev->enabled);
	assert_false(device_usable(dev));
	/* Refused as not active, the device is still named: the sensor's log line says which. */
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)"dev-b", 5, &dev, key, &len),
	                 -EPERM);
	assert_string_equal(dev->id, "dev-b");
	assert_int_equal(keystore_device_set_attr(ks, "dev-b", "enabled", NULL), 0);
	assert_true(device_usable(dev));

	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)"dev-b", 5, &dev, key, &len), 0);
	held = device_ref(dev);
	assert_int_equal(keystore_device_remove(ks, "dev-b"), 0);
	assert_int_equal(held->state, DEVICE_GONE);
	assert_string_equal(held->id, "dev-b");
	assert_null(device_find(reg, "dev-b"));
	assert_int_equal(device_count(reg), 1);
	add(ks, "dev-b", NULL, NULL);
	assert_ptr_not_equal(device_find(reg, "dev-b"), held);
	device_unref(held);

	/* What a reopen finds is registered too, as the records say. */
	assert_int_equal(keystore_device_set_state(ks, "dev-a", KEYSTORE_SUSPENDED), 0);
	keystore_free(ks);
	ks = open_ok(f);
	reg = keystore_devices(ks);
	assert_int_equal(device_count(reg), 2);
	assert_int_equal(device_find(reg, "dev-a")->state, DEVICE_SUSPENDED);
	assert_int_equal(device_find(reg, "dev-b")->state, DEVICE_ACTIVE);
	keystore_free(ks);
}

static void
refuses_secrets_others_can_read(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	char path[256];

	add(ks, "dev-a", NULL, NULL);
	keystore_free(ks);

	snprintf(path, sizeof(path), "%s/dev-a/psk.key", f->ks);
	assert_int_equal(chmod(path, 0644), 0);
	assert_int_equal(keystore_open(&ks, &f->cfg), -EPERM);
	assert_int_equal(chmod(path, 0600), 0);

	snprintf(path, sizeof(path), "%s/dev-a/key.pem", f->ks);
	assert_int_equal(chmod(path, 0640), 0);
	assert_int_equal(keystore_open(&ks, &f->cfg), -EPERM);
	assert_int_equal(chmod(path, 0600), 0);

	snprintf(path, sizeof(path), "%s/dev-a", f->ks);
	assert_int_equal(chmod(path, 0755), 0);
	assert_int_equal(keystore_open(&ks, &f->cfg), -EPERM);
	assert_int_equal(chmod(path, 0700), 0);

	assert_int_equal(chmod(f->ks, 0750), 0);
	assert_int_equal(keystore_open(&ks, &f->cfg), -EPERM);
	assert_int_equal(chmod(f->ks, 0700), 0);

	ks = open_ok(f);
	keystore_free(ks);
}

static void
states_and_attributes_persist(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	uint8_t key[KEYSTORE_PSK_MAX];
	struct keystore_info info;
	struct device *device;
	char path[256];
	size_t len;

	add(ks, "dev-a", NULL, NULL);
	add(ks, "dev-b", NULL, NULL);
	assert_int_equal(keystore_device_set_state(ks, "dev-a", KEYSTORE_SUSPENDED), 0);
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)"dev-a", 5, &device, key, &len),
	                 -EPERM);
	assert_false(keystore_device_usable(ks, "dev-a"));
	assert_int_equal(keystore_device_set_attr(ks, "dev-b", "enabled", "false"), 0);
	assert_int_equal(keystore_device_set_attr(ks, "dev-b", "room", "barn 2"), 0);
	assert_false(keystore_device_usable(ks, "dev-b"));
	assert_int_equal(keystore_device_set_attr(ks, "dev-b", "bad key", "x"), -EINVAL);
	assert_int_equal(keystore_device_set_attr(ks, "dev-b", "room", "two\nlines"), -EINVAL);
	keystore_free(ks);

	/* All of it was on disk. */
	ks = open_ok(f);
	assert_int_equal(keystore_device_info(ks, "dev-a", &info), 0);
	assert_int_equal(info.state, KEYSTORE_SUSPENDED);
	assert_int_equal(keystore_device_info(ks, "dev-b", &info), 0);
	assert_false(info.enabled);
	assert_string_equal(keystore_device_attr(ks, "dev-b", "room"), "barn 2");
	assert_int_equal(keystore_device_set_attr(ks, "dev-b", "enabled", ""), 0);
	assert_null(keystore_device_attr(ks, "dev-b", "enabled"));
	assert_true(keystore_device_usable(ks, "dev-b"));
	assert_int_equal(keystore_device_set_state(ks, "dev-a", KEYSTORE_ACTIVE), 0);
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)"dev-a", 5, &device, key, &len),
	                 0);

	/* Revoked: secrets gone, and no way back. */
	assert_int_equal(keystore_device_set_state(ks, "dev-a", KEYSTORE_REVOKED), 0);
	snprintf(path, sizeof(path), "%s/dev-a/key.pem", f->ks);
	assert_int_equal(access(path, F_OK), -1);
	snprintf(path, sizeof(path), "%s/dev-a/psk.key", f->ks);
	assert_int_equal(access(path, F_OK), -1);
	assert_int_equal(keystore_device_set_state(ks, "dev-a", KEYSTORE_ACTIVE), -EPERM);
	keystore_free(ks);
	ks = open_ok(f);
	assert_int_equal(keystore_device_info(ks, "dev-a", &info), 0);
	assert_int_equal(info.state, KEYSTORE_REVOKED);
	/* Its PSK, identity included, went with its key: a stranger now. */
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)"dev-a", 5, &device, key, &len),
	                 -ENOENT);
	keystore_free(ks);
}

/*
 * Attributes past what a record may hold (64 KiB, read back whole at every start) are refused
 * when set: written, they would have made the store refuse to open.
 */
static void
attributes_stop_at_the_record_limit(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	char key[32], value[257];
	int i, r = 0;

	add(ks, "dev-a", NULL, NULL);
	memset(value, 'v', sizeof(value) - 1);
	value[sizeof(value) - 1] = '\0';
	for (i = 0; i < 1000; i++) {
		snprintf(key, sizeof(key), "a%04d", i);
		r = keystore_device_set_attr(ks, "dev-a", key, value);
		if (r < 0)
			break;
	}
	assert_int_equal(r, -EFBIG);
	assert_true(i > 200);
	/* The refused one is not kept in memory either. */
	assert_null(keystore_device_attr(ks, "dev-a", key));
	assert_int_equal(keystore_device_attr_count(ks, "dev-a"), (size_t)i);
	keystore_free(ks);
	ks = open_ok(f);
	assert_int_equal(keystore_device_attr_count(ks, "dev-a"), (size_t)i);
	assert_true(keystore_device_usable(ks, "dev-a"));
	keystore_free(ks);
}

static void
rotation_keeps_the_old_key_for_its_grace_period(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	uint8_t key[KEYSTORE_PSK_MAX], newkey[KEYSTORE_PSK_MAX];
	char identity[KEYSTORE_IDENTITY_MAX + 1];
	struct keystore_info info;
	struct device *device;
	size_t len, newlen;

	add(ks, "dev-a", NULL, "0123456789abcdef0123");
	assert_int_equal(
	        keystore_device_pair(ks, "dev-a", 3600, NULL, 0, identity, newkey, &newlen), 0);
	assert_int_equal(strncmp(identity, "dev-a-", 6), 0);
	assert_int_equal(newlen, 32);
	/* Both work: the old one until the grace period ends. */
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)"dev-a", 5, &device, key, &len),
	                 0);
	assert_memory_equal(key, "0123456789abcdef0123", 20);
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)identity, strlen(identity),
	                                     &device, key, &len),
	                 0);
	assert_string_equal(device->id, "dev-a");
	assert_memory_equal(key, newkey, newlen);
	keystore_free(ks);

	/* Across a restart too. */
	ks = open_ok(f);
	assert_int_equal(keystore_device_info(ks, "dev-a", &info), 0);
	assert_string_equal(info.psk_identity, identity);
	assert_string_equal(info.prev_psk_identity, "dev-a");
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)"dev-a", 5, &device, key, &len),
	                 0);

	/* A rotation without grace: the old identity is refused at once. */
	assert_int_equal(keystore_device_pair(ks, "dev-a", 0, NULL, 0, identity, newkey, &newlen),
	                 0);
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)"dev-a", 5, &device, key, &len),
	                 -ENOENT);
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)identity, strlen(identity),
	                                     &device, key, &len),
	                 0);
	assert_int_equal(keystore_device_pair(ks, "nobody", 0, NULL, 0, identity, newkey, &newlen),
	                 -ENOENT);
	keystore_free(ks);
}

static void
write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_TRUNC);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

/* What a careless hand or a bad disk can do to files gwctl wrote: refused, not half-used. */
static void
refuses_a_damaged_store(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	char path[256];

	add(ks, "dev-a", NULL, NULL);
	add(ks, "dev-b", NULL, NULL);
	keystore_free(ks);

	snprintf(path, sizeof(path), "%s/dev-a/psk.key", f->ks);
	/* RFC 7925: at least 128 bits; hex only; whole bytes; an identity. */
	write_text(path, "identity=dev-a\nkey=00112233445566778899aabbccddee\n");
	assert_int_equal(keystore_open(&ks, &f->cfg), -EINVAL);
	write_text(path, "identity=dev-a\nkey=zz112233445566778899aabbccddeeff\n");
	assert_int_equal(keystore_open(&ks, &f->cfg), -EINVAL);
	write_text(path, "identity=dev-a\nkey=00112233445566778899aabbccddeeff0\n");
	assert_int_equal(keystore_open(&ks, &f->cfg), -EINVAL);
	write_text(path, "key=00112233445566778899aabbccddeeff\n");
	assert_int_equal(keystore_open(&ks, &f->cfg), -EINVAL);
	write_text(path, "identity=dev-a\nkey=00112233445566778899aabbccddeeff\n");
	ks = open_ok(f);
	keystore_free(ks);

	/* Two devices claiming one PSK identity: which sensor is which? Refused. */
	snprintf(path, sizeof(path), "%s/dev-b/psk.key", f->ks);
	write_text(path, "identity=dev-a\nkey=00112233445566778899aabbccddeeff\n");
	assert_int_equal(keystore_open(&ks, &f->cfg), -EEXIST);
	write_text(path, "identity=dev-b\nkey=00112233445566778899aabbccddeeff\n");
	snprintf(path, sizeof(path), "%s/dev-b/device", f->ks);
	write_text(path, "state=active\nbackend=tpm\n");
	assert_int_equal(keystore_open(&ks, &f->cfg), -EINVAL);
	write_text(path, "state=sleepy\nbackend=soft\n");
	assert_int_equal(keystore_open(&ks, &f->cfg), -EINVAL);
}

static size_t
read_text(const char *path, char *buf, size_t max)
{
	FILE *fp = fopen(path, "r");
	size_t n;

	assert_non_null(fp);
	n = fread(buf, 1, max - 1, fp);
	buf[n] = '\0';
	fclose(fp);
	return n;
}

/* Reads (mode "r") or writes ("w") exactly n bytes of the file at path. */
static void
file_bytes(const char *path, const char *mode, uint8_t *b, size_t n)
{
	FILE *fp = fopen(path, mode);

	assert_non_null(fp);
	assert_int_equal(mode[0] == 'r' ? fread(b, 1, n, fp) : fwrite(b, 1, n, fp), n);
	assert_int_equal(fclose(fp), 0);
}

/*
 * A soft key's public point is cached beside it (key.pem.pub: the key file's SHA-256, then the
 * point), so that loading a store decodes no key: a cache that does not match the key file is
 * not used, and is written again.
 */
static void
caches_the_public_key_of_its_file(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	const char *cert, *keyfile;
	char path[256], why[512], *pem;
	uint8_t good[97], b[97];

	add(ks, "dev-a", NULL, NULL);
	pem = certify(f, ks, "dev-a", -1, 30, true);
	import_ok(ks, "dev-a", pem);
	keystore_free(ks);
	ks = open_ok(f);
	keystore_free(ks);
	snprintf(path, sizeof(path), "%s/dev-a/key.pem.pub", f->ks);
	file_bytes(path, "r", good, sizeof(good));

	/* Another file's digest: decoded again, the certificate still the key's, the cache mended.
	 */
	memcpy(b, good, sizeof(b));
	b[0] ^= 1;
	file_bytes(path, "w", b, sizeof(b));
	ks = open_ok(f);
	assert_int_equal(keystore_tls_files(ks, "dev-a", &cert, &keyfile), 0);
	keystore_free(ks);
	file_bytes(path, "r", b, sizeof(b));
	assert_memory_equal(b, good, sizeof(b));

	/* The matching digest with another point: the cache is what loading used, and the
	 * device's own certificate no longer matches what the store takes for its key. */
	b[40] ^= 1;
	file_bytes(path, "w", b, sizeof(b));
	ks = open_ok(f);
	assert_int_equal(
	        keystore_device_import_cert(ks, "dev-a", pem, strlen(pem), why, sizeof(why)),
	        -EKEYREJECTED);
	keystore_free(ks);
	free(pem);
}

/* The store opened afresh says dev-a's certificate subject is want. */
static void
expect_subject_at_open(struct fixture *f, const char *want)
{
	struct keystore *ks = open_ok(f);
	struct keystore_info info;

	assert_int_equal(keystore_device_info(ks, "dev-a", &info), 0);
	assert_string_equal(info.subject, want);
	keystore_free(ks);
}

/*
 * The current certificate's summary is cached beside it (cert.pem.sum: cert.pem's SHA-256,
 * then validity and subject), so that loading a store parses no certificate: the cache is what
 * loading uses while it matches the file, and a certificate put in place by hand is read anew.
 */
static void
caches_the_certificate_summary_of_its_file(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	char path[256], *pem;
	uint8_t good[320], b[320];
	FILE *fp;

	add(ks, "dev-a", NULL, NULL);
	pem = certify(f, ks, "dev-a", -1, 30, true);
	import_ok(ks, "dev-a", pem);
	free(pem);
	keystore_free(ks);
	expect_subject_at_open(f, "/CN=dev-a");
	snprintf(path, sizeof(path), "%s/dev-a/cert.pem.sum", f->ks);
	file_bytes(path, "r", good, 312);

	/* The matching digest with another subject: loading took the cache. */
	memcpy(b, good, 312);
	b[8 + 32 + 16 + 4] = 'X'; /* "/CN=dev-a" becomes "/CN=Xev-a" */
	file_bytes(path, "w", b, 312);
	expect_subject_at_open(f, "/CN=Xev-a");

	/* Another certificate put in place by hand: parsed, and the cache written anew. */
	ks = open_ok(f);
	pem = certify(f, ks, "dev-a", -1, 60, true);
	keystore_free(ks);
	snprintf(path, sizeof(path), "%s/dev-a/cert.pem", f->ks);
	fp = fopen(path, "w");
	assert_non_null(fp);
	fputs(pem, fp);
	fclose(fp);
	free(pem);
	expect_subject_at_open(f, "/CN=dev-a");
	snprintf(path, sizeof(path), "%s/dev-a/cert.pem.sum", f->ks);
	file_bytes(path, "r", b, 312);
	assert_memory_not_equal(b, good, 312);
	assert_memory_equal(b, "gwsum01", 8);
}

/*
 * A soft key's reference (no secret: the device's id) lost by hand or damage is written again,
 * not handed to the TLS library missing (found by tests/fuzz/fuzz-keystore.c).
 */
static void
rewrites_a_lost_key_reference(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	char path[256], before[512], after[512];
	const char *cert, *key;
	struct stat st;
	char *pem;

	add(ks, "dev-a", NULL, NULL);
	pem = certify(f, ks, "dev-a", -1, 30, true);
	import_ok(ks, "dev-a", pem);
	free(pem);
	keystore_free(ks);
	snprintf(path, sizeof(path), "%s/dev-a/keyref.pem", f->ks);
	assert_true(read_text(path, before, sizeof(before)) > 0);
	assert_int_equal(unlink(path), 0);

	ks = open_ok(f);
	assert_int_equal(keystore_tls_files(ks, "dev-a", &cert, &key), 0);
	assert_string_equal(key, path);
	read_text(path, after, sizeof(after));
	assert_string_equal(after, before);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	keystore_free(ks);
}

static void
recovers_from_an_interrupted_add(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks;
	char path[256];
	struct stat st;

	/* What a crash in the middle of "device add" leaves: a half-written folder. */
	assert_int_equal(mkdir(f->ks, 0700), 0);
	snprintf(path, sizeof(path), "%s/.dev-a.new", f->ks);
	assert_int_equal(mkdir(path, 0700), 0);
	snprintf(path, sizeof(path), "%s/.dev-a.new/key.pem", f->ks);
	close(open(path, O_CREAT | O_WRONLY, 0600));
	ks = open_ok(f);
	assert_int_equal(keystore_count(ks), 0);
	snprintf(path, sizeof(path), "%s/.dev-a.new", f->ks);
	assert_int_equal(stat(path, &st), -1);
	/* The id is free to be added again. */
	add(ks, "dev-a", NULL, NULL);
	keystore_free(ks);
}

static void
creates_a_missing_store_closed_to_others(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	struct stat st;

	assert_int_equal(keystore_count(ks), 0);
	assert_int_equal(stat(f->ks, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
	keystore_free(ks);
}

static bool
exists(const struct fixture *f, const char *id, const char *name)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s/%s", f->ks, id, name);
	return access(path, F_OK) == 0;
}

/* A renewal's certificate for dev-a, staged; returns what keystore_tls_files() hands out. */
static void
stage_renewal(struct fixture *f, struct keystore *ks, const char **cert, const char **key)
{
	char *csr, *pem, why[512];

	assert_int_equal(keystore_device_rekey(ks, "dev-a", &csr), 0);
	pem = certify_csr(f, csr, "dev-a", -1, 60, true);
	assert_int_equal(
	        keystore_device_stage_cert(ks, "dev-a", pem, strlen(pem), why, sizeof(why)), 0);
	free(pem);
	assert_int_equal(keystore_tls_files(ks, "dev-a", cert, key), 0);
}

static void
renewal_switches_on_commit_and_survives_restarts(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	struct keystore_info info;
	const char *cert, *key;
	char *old, *csr, why[512];

	add(ks, "dev-a", NULL, NULL);
	old = certify(f, ks, "dev-a", -1, 30, true);
	import_ok(ks, "dev-a", old);

	/* A new key without a certificate does not outlive the process. */
	assert_int_equal(keystore_device_rekey(ks, "dev-a", &csr), 0);
	free(csr);
	assert_true(exists(f, "dev-a", "next.key.pem"));
	keystore_free(ks);
	ks = open_ok(f);
	assert_false(exists(f, "dev-a", "next.key.pem"));
	assert_int_equal(keystore_device_info(ks, "dev-a", &info), 0);
	assert_false(info.renewing);

	/* On trial: the new pair is handed out, and still after a restart. */
	stage_renewal(f, ks, &cert, &key);
	assert_non_null(strstr(cert, "next.cert.pem"));
	assert_non_null(strstr(key, "next.keyref.pem"));
	keystore_free(ks);
	ks = open_ok(f);
	assert_int_equal(keystore_device_info(ks, "dev-a", &info), 0);
	assert_true(info.on_trial);
	assert_int_equal(keystore_tls_files(ks, "dev-a", &cert, &key), 0);
	assert_non_null(strstr(cert, "next.cert.pem"));

	/* Discarded: the old pair again, the new key gone. */
	assert_int_equal(keystore_device_discard(ks, "dev-a"), 0);
	assert_int_equal(keystore_tls_files(ks, "dev-a", &cert, &key), 0);
	assert_null(strstr(cert, "next."));
	assert_false(exists(f, "dev-a", "next.key.pem"));

	/* Committed: the new pair under the usual names; the old certificate is no longer ours. */
	stage_renewal(f, ks, &cert, &key);
	assert_int_equal(keystore_device_commit(ks, "dev-a"), 0);
	assert_int_equal(keystore_tls_files(ks, "dev-a", &cert, &key), 0);
	assert_null(strstr(cert, "next."));
	assert_null(strstr(key, "next."));
	assert_false(exists(f, "dev-a", "next.key.pem"));
	assert_false(exists(f, "dev-a", "next.cert.pem"));
	assert_int_equal(keystore_device_info(ks, "dev-a", &info), 0);
	assert_false(info.renewing);
	assert_true(info.not_after - time(NULL) > 50 * 86400);
	assert_int_equal(
	        keystore_device_import_cert(ks, "dev-a", old, strlen(old), why, sizeof(why)),
	        -EKEYREJECTED);
	free(old);
	keystore_free(ks);
}

static void
finishes_a_switch_cut_short(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	struct keystore_info info;
	const char *cert, *key;
	char *pem, from[256], to[256];
	time_t trial_until;

	add(ks, "dev-a", NULL, NULL);
	pem = certify(f, ks, "dev-a", -1, 30, true);
	import_ok(ks, "dev-a", pem);
	free(pem);
	stage_renewal(f, ks, &cert, &key);
	assert_int_equal(keystore_device_info(ks, "dev-a", &info), 0);
	trial_until = info.next_not_after;
	keystore_free(ks);
	/* The process died right after the commit's first rename. */
	snprintf(from, sizeof(from), "%s/dev-a/next.key.pem", f->ks);
	snprintf(to, sizeof(to), "%s/dev-a/key.pem", f->ks);
	assert_int_equal(rename(from, to), 0);
	ks = open_ok(f);
	assert_int_equal(keystore_device_info(ks, "dev-a", &info), 0);
	assert_false(info.renewing);
	assert_int_equal(info.not_after, trial_until);
	assert_false(exists(f, "dev-a", "next.cert.pem"));
	keystore_free(ks);
}

static void
drops_a_discard_cut_short(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	struct keystore_info info;
	const char *cert, *key;
	char *pem, path[256];
	time_t before;

	add(ks, "dev-a", NULL, NULL);
	pem = certify(f, ks, "dev-a", -1, 30, true);
	import_ok(ks, "dev-a", pem);
	free(pem);
	assert_int_equal(keystore_device_info(ks, "dev-a", &info), 0);
	before = info.not_after;
	stage_renewal(f, ks, &cert, &key);
	keystore_free(ks);
	/* The process died discarding the renewal: its key gone, its certificate not yet. */
	snprintf(path, sizeof(path), "%s/dev-a/next.key.pem", f->ks);
	assert_int_equal(unlink(path), 0);
	ks = open_ok(f);
	assert_int_equal(keystore_device_info(ks, "dev-a", &info), 0);
	assert_false(info.renewing);
	assert_int_equal(info.not_after, before);
	assert_false(exists(f, "dev-a", "next.cert.pem"));
	keystore_free(ks);
}

static void
keeps_the_gateways_own_identity(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks = open_ok(f);
	struct keystore_info info;
	const char *cert, *key;
	char *pem, why[512];

	assert_int_equal(keystore_gateway_tls_files(ks, &cert, &key), -ENOKEY);
	assert_int_equal(keystore_gateway_info(ks, &info), -ENOENT);
	assert_int_equal(keystore_gateway_csr(ks, "gw-1", &pem), 0);
	/* Any issuer: the EST server is the judge of the gateway's certificate. */
	pem = certify_csr(f, pem, "gw-1", -1, 30, false);
	assert_int_equal(keystore_gateway_import_cert(ks, pem, strlen(pem), why, sizeof(why)), 0);
	free(pem);
	/* A device's certificate is not the gateway's. */
	add(ks, "dev-a", NULL, NULL);
	pem = certify(f, ks, "dev-a", -1, 30, true);
	assert_int_equal(keystore_gateway_import_cert(ks, pem, strlen(pem), why, sizeof(why)),
	                 -EKEYREJECTED);
	free(pem);
	keystore_free(ks);
	/* Not a device, and still there after a restart. */
	ks = open_ok(f);
	assert_int_equal(keystore_count(ks), 1);
	assert_int_equal(keystore_gateway_info(ks, &info), 0);
	assert_non_null(strstr(info.subject, "gw-1"));
	assert_int_equal(keystore_gateway_tls_files(ks, &cert, &key), 0);
	keystore_free(ks);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(adds_devices_and_finds_their_psks, setup, teardown),
	        cmocka_unit_test_setup_teardown(installs_only_a_certificate_for_the_device_key,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(key_reference_signs_through_the_provider, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(removes_devices_for_good, setup, teardown),
	        cmocka_unit_test_setup_teardown(registry_follows_the_store, setup, teardown),
	        cmocka_unit_test_setup_teardown(refuses_secrets_others_can_read, setup, teardown),
	        cmocka_unit_test_setup_teardown(states_and_attributes_persist, setup, teardown),
	        cmocka_unit_test_setup_teardown(attributes_stop_at_the_record_limit, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(rotation_keeps_the_old_key_for_its_grace_period,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(refuses_a_damaged_store, setup, teardown),
	        cmocka_unit_test_setup_teardown(recovers_from_an_interrupted_add, setup, teardown),
	        cmocka_unit_test_setup_teardown(rewrites_a_lost_key_reference, setup, teardown),
	        cmocka_unit_test_setup_teardown(creates_a_missing_store_closed_to_others, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(renewal_switches_on_commit_and_survives_restarts,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(finishes_a_switch_cut_short, setup, teardown),
	        cmocka_unit_test_setup_teardown(drops_a_discard_cut_short, setup, teardown),
	        cmocka_unit_test_setup_teardown(keeps_the_gateways_own_identity, setup, teardown),
	        cmocka_unit_test_setup_teardown(caches_the_public_key_of_its_file, setup, teardown),
	        cmocka_unit_test_setup_teardown(caches_the_certificate_summary_of_its_file, setup,
	                                        teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
