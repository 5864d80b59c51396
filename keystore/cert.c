/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Certificates through the API: which files TLS is given, requests (CSRs) signed through the
 * provider, the check before a certificate is installed, renewal's three steps, and the
 * gateway's own identity. Reading certificates from disk is entry.c's, the table store.c's;
 * this file calls down into both and never into record.c, its sibling (issue 14).
 */
#include "backend.h"
#include "ks-internal.h"
#include "atomicfile.h"
#include "log.h"
#include "xalloc.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- queries ---- */

/* The certificate on trial while there is one (see keystore_device_stage_cert()). */
static int
tls_files(const struct device_ks *d, const char **cert_file, const char **key_file)
{
	const struct ks_tls *t = d->next.cert_file ? &d->next : &d->cur;

	if (!t->cert_file || !t->key_file)
		return -ENOKEY;
	*cert_file = t->cert_file;
	*key_file = t->key_file;
	return 0;
}

int
keystore_tls_files(const struct keystore *ks, const char *device_id, const char **cert_file,
                   const char **key_file)
{
	const struct device_ks *d = ks_find_device(ks, device_id);

	return d ? tls_files(d, cert_file, key_file) : -ENOENT;
}

int
keystore_gateway_tls_files(const struct keystore *ks, const char **cert_file, const char **key_file)
{
	return ks->gateway.id ? tls_files(&ks->gateway, cert_file, key_file) : -ENOKEY;
}

int
keystore_gateway_info(const struct keystore *ks, struct keystore_info *out)
{
	if (!ks->gateway.id)
		return -ENOENT;
	*out = (struct keystore_info){
	        .id = ks->gateway.id,
	        .backend = ks->gateway.backend->name,
	        .psk_identity = "-",
	        .state = KEYSTORE_ACTIVE,
	        .enabled = true,
	};
	ks_tls_info(&ks->gateway, out);
	return 0;
}

/* ---- requests ---- */

/* A key as an EVP_PKEY whose signatures go through the provider. */
static EVP_PKEY *
signing_key(const char *key_file)
{
	BIO *b = BIO_new_file(key_file, "r");
	EVP_PKEY *pkey = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;

	if (!pkey)
		ks_log_openssl("keystore: cannot load a key through the provider");
	BIO_free(b);
	return pkey;
}

/* X509_REQ_sign() with the provider's signature queued at prio (ks_csr_prio). */
static bool
sign_req(X509_REQ *req, EVP_PKEY *key, enum tpmq_prio prio)
{
	int ok;

	ks_csr_prio = (int)prio;
	ok = X509_REQ_sign(req, key, EVP_sha256()) > 0;
	ks_csr_prio = -1;
	return ok;
}

/*
 * A PKCS#10 request for t's key, subject CN=cn, signed by that key at prio in the TPM's queue;
 * *pem is malloc'd.
 */
static int
make_csr(const struct ks_tls *t, const char *cn, char **pem, enum tpmq_prio prio)
{
	EVP_PKEY *priv = signing_key(t->key_file), *pub = ks_public_key(t->pub);
	X509_REQ *req = X509_REQ_new();
	BIO *b = BIO_new(BIO_s_mem());
	X509_NAME *name;
	char *data;
	long len;
	int r = -EIO;

	if (!priv || !pub || !req || !b)
		goto out;
	name = X509_REQ_get_subject_name(req);
	if (X509_REQ_set_version(req, 0) != 1 ||
	    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
	                               0) != 1 ||
	    X509_REQ_set_pubkey(req, pub) != 1 || !sign_req(req, priv, prio) ||
	    PEM_write_bio_X509_REQ(b, req) != 1) {
		ks_log_openssl("keystore: cannot make a certificate request");
		goto out;
	}
	len = BIO_get_mem_data(b, &data);
	*pem = xstrndup(data, (size_t)len);
	r = 0;
out:
	BIO_free(b);
	X509_REQ_free(req);
	EVP_PKEY_free(pub);
	EVP_PKEY_free(priv);
	return r;
}

int
keystore_device_csr(struct keystore *ks, const char *id, char **pem)
{
	const struct device_ks *d = ks_find_device(ks, id);

	if (!d)
		return -ENOENT;
	if (d->state == KEYSTORE_REVOKED)
		return -EKEYREVOKED;
	return make_csr(&d->cur, id, pem, TPMQ_ADMIN);
}

/* ---- check and install ---- */

static void
format_time(const ASN1_TIME *t, char *buf, size_t len)
{
	struct tm tm;

	if (ASN1_TIME_to_tm(t, &tm) != 1 || strftime(buf, len, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
		snprintf(buf, len, "(unreadable time)");
}

/*
 * The reasons a certificate cannot be for the key pub of d, one at a time, in words. A
 * device's must chain to the device CA; the gateway's own is checked by the EST server.
 */
static int
check_cert(const struct keystore *ks, const struct device_ks *d,
           const uint8_t pub_point[KSPROV_P256_POINT_LEN], STACK_OF(X509) * chain, char *why,
           size_t whylen)
{
	X509 *leaf = sk_X509_value(chain, 0);
	EVP_PKEY *pub = ks_public_key(pub_point);
	X509_STORE *store = NULL;
	X509_STORE_CTX *ctx = NULL;
	STACK_OF(X509) *untrusted = NULL;
	char when[64];
	int r = -EINVAL;

	if (!pub || EVP_PKEY_eq(X509_get0_pubkey(leaf), pub) != 1) {
		if (d->self)
			snprintf(why, whylen,
			         "its public key is not the gateway's key (make the request with "
			         "gwctl gateway csr)");
		else
			snprintf(why, whylen,
			         "its public key is not device %s's key (was the request made by "
			         "another device, or before the device was added again?)",
			         d->id);
		r = -EKEYREJECTED;
		goto out;
	}
	if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
		format_time(X509_get0_notAfter(leaf), when, sizeof(when));
		snprintf(why, whylen, "it expired on %s", when);
		r = -EKEYEXPIRED;
		goto out;
	}
	if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
		format_time(X509_get0_notBefore(leaf), when, sizeof(when));
		snprintf(why, whylen, "it is not valid before %s (is the gateway's clock right?)",
		         when);
		r = -EKEYEXPIRED;
		goto out;
	}
	if (d->self) {
		r = 0;
		goto out;
	}
	if (!ks->device_ca_file) {
		snprintf(why, whylen, "no device CA is configured (keystore.device_ca_file)");
		goto out;
	}
	store = X509_STORE_new();
	ctx = X509_STORE_CTX_new();
	untrusted = sk_X509_dup(chain);
	/* These fail only when OpenSSL's own allocations do; so does the init below. */
	if (!store || !ctx || !untrusted) {
		r = -ENOMEM;
		goto out;
	}
	(void)sk_X509_shift(untrusted);
	if (X509_STORE_load_file(store, ks->device_ca_file) != 1) {
		snprintf(why, whylen, "the device CA file %s cannot be read", ks->device_ca_file);
		goto out;
	}
	if (X509_STORE_CTX_init(ctx, store, leaf, untrusted) != 1 ||
	    X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT) != 1) {
		r = -ENOMEM;
		goto out;
	}
	if (X509_verify_cert(ctx) != 1) {
		snprintf(why, whylen, "it does not chain to the device CA in %s: %s",
		         ks->device_ca_file,
		         X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
		goto out;
	}
	r = 0;
out:
	ERR_clear_error();
	sk_X509_free(untrusted);
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	EVP_PKEY_free(pub);
	return r;
}

/*
 * Checks a certificate chain against d's current key (next false) or its renewal's new key,
 * and writes it as cert.pem or next.cert.pem. On refusal, the reason is in why.
 */
static int
install_cert(struct keystore *ks, struct device_ks *d, bool next, const char *pem, size_t pemlen,
             char *why, size_t whylen)
{
	struct ks_tls *t = next ? &d->next : &d->cur;
	const char *name = next ? "next.cert.pem" : "cert.pem";
	STACK_OF(X509) * chain;
	char dir[4096], *data;
	BIO *b = NULL;
	long len;
	int fd = -1, r;

	snprintf(why, whylen, "%s", "");
	if (d->state == KEYSTORE_REVOKED) {
		snprintf(why, whylen, "the device is revoked: its key no longer exists");
		return -EKEYREVOKED;
	}
	if (!t->key_file) {
		snprintf(why, whylen, "no renewal is under way: there is no new key to certify");
		return -ENOKEY;
	}
	if (pemlen > INT32_MAX || !(chain = ks_read_chain(NULL, pem, pemlen))) {
		snprintf(why, whylen, "no PEM certificate in it");
		return -EINVAL;
	}
	r = check_cert(ks, d, t->pub, chain, why, whylen);
	if (r < 0)
		goto out;
	b = BIO_new(BIO_s_mem());
	if (!b) {
		r = -ENOMEM; /* OpenSSL's allocation */
		goto out;
	}
	for (int i = 0; i < sk_X509_num(chain); i++)
		PEM_write_bio_X509(b, sk_X509_value(chain, i));
	len = BIO_get_mem_data(b, &data);
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, d->id);
	fd = ks_open_dir(ks->dirfd, d->id, dir);
	if (fd < 0) {
		r = fd;
		goto out;
	}
	r = atomic_write(fd, dir, name, data, (size_t)len, 0644);
	if (r < 0)
		goto out;
	if (!t->cert_file)
		t->cert_file = xasprintf("%s/%s", dir, name);
	ks_cert_summary(t);
out:
	if (fd >= 0)
		close(fd);
	BIO_free(b);
	sk_X509_pop_free(chain, X509_free);
	return r;
}

/* Drops d's renewal: its new key (the only copy) and the certificate on trial. */
static int
discard_next(struct keystore *ks, struct device_ks *d)
{
	char dir[4096];
	int fd, r;

	ks_tls_finish(&d->next);
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, d->id);
	fd = ks_open_dir(ks->dirfd, d->id, dir);
	if (fd < 0)
		return fd;
	r = ks_unlink_next(fd, dir);
	close(fd);
	return r;
}

int
keystore_device_import_cert(struct keystore *ks, const char *id, const char *pem, size_t pemlen,
                            char *why, size_t whylen)
{
	struct device_ks *d = ks_find_device(ks, id);
	int r;

	if (!d)
		return -ENOENT;
	r = install_cert(ks, d, false, pem, pemlen, why, whylen);
	if (r < 0)
		return r;
	log_info("%s: certificate installed: %s", id, d->cur.subject);
	/* The operator's certificate wins over a renewal that was under way. */
	if (d->next.key_file)
		r = discard_next(ks, d);
	return r;
}

/* ---- renewal ---- */

/* A new key beside d's current one, and a request for it (CN=cn). */
static int
rekey(struct keystore *ks, struct device_ks *d, const char *cn, char **csr)
{
	char dir[4096];
	int fd, r;

	r = discard_next(ks, d);
	if (r < 0)
		return r;
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, d->id);
	fd = ks_open_dir(ks->dirfd, d->id, dir);
	if (fd < 0)
		return fd;
	r = ks_write_key(ks, fd, dir, d->id, true, TPMQ_BACKGROUND);
	if (r == 0)
		r = ks_load_key(ks, d, fd, dir, true);
	if (r == 0)
		r = make_csr(&d->next, cn, csr, TPMQ_BACKGROUND);
	close(fd);
	if (r < 0)
		discard_next(ks, d);
	return r;
}

int
keystore_device_rekey(struct keystore *ks, const char *id, char **csr)
{
	struct device_ks *d = ks_find_device(ks, id);

	if (!d)
		return -ENOENT;
	if (d->state == KEYSTORE_REVOKED)
		return -EKEYREVOKED;
	return rekey(ks, d, d->id, csr);
}

int
keystore_device_stage_cert(struct keystore *ks, const char *id, const char *pem, size_t pemlen,
                           char *why, size_t whylen)
{
	struct device_ks *d = ks_find_device(ks, id);
	int r;

	if (!d)
		return -ENOENT;
	r = install_cert(ks, d, true, pem, pemlen, why, whylen);
	if (r == 0)
		log_info("%s: new certificate on trial: %s", id, d->next.subject);
	return r;
}

int
keystore_device_commit(struct keystore *ks, const char *id)
{
	struct device_ks *d = ks_find_device(ks, id);
	char dir[4096];
	int fd, r;

	if (!d)
		return -ENOENT;
	if (!d->next.cert_file)
		return -ENOKEY;
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, d->id);
	fd = ks_open_dir(ks->dirfd, d->id, dir);
	if (fd < 0)
		return fd;
	/* The key's rename is the commit; ks_load_next() finishes the rest after a crash. */
	if (renameat(fd, d->backend->key_file[true], fd, d->backend->key_file[false]) < 0 ||
	    fsync(fd) < 0 || renameat(fd, "next.cert.pem", fd, "cert.pem") < 0) {
		r = -errno;
		log_warn("keystore: %s: cannot switch to the new key and certificate", dir);
		close(fd);
		/* What the disk now holds is what the next start will find: follow it. */
		ks_reload_device(ks, d);
		return r;
	}
	r = ks_unlink_next(fd, dir);
	close(fd);
	ks_reload_device(ks, d);
	log_info("%s: switched to its new certificate: %s", id, d->cur.subject);
	return r;
}

int
keystore_device_discard(struct keystore *ks, const char *id)
{
	struct device_ks *d = ks_find_device(ks, id);

	if (!d)
		return -ENOENT;
	return d->next.key_file ? discard_next(ks, d) : 0;
}

/* ---- the gateway's own identity ---- */

int
keystore_gateway_csr(struct keystore *ks, const char *cn, char **pem)
{
	struct device_ks rec = {.id = (char *)GATEWAY_DIR, .backend = ks->be->ops, .self = true};
	int r;

	if (!ks->gateway.id) {
		r = ks_create_entry(ks, &rec);
		if (r == 0)
			r = ks_load_device(ks, &ks->gateway, GATEWAY_DIR, true);
		if (r < 0) {
			ks_device_finish(&ks->gateway);
			return r;
		}
		log_info("keystore: the gateway's own key created (%s backend)", ks->be->ops->name);
	}
	return make_csr(&ks->gateway.cur, cn, pem, TPMQ_ADMIN);
}

int
keystore_gateway_import_cert(struct keystore *ks, const char *pem, size_t pemlen, char *why,
                             size_t whylen)
{
	int r;

	if (!ks->gateway.id) {
		snprintf(why, whylen,
		         "the gateway has no key yet (make one with gwctl gateway csr)");
		return -ENOKEY;
	}
	r = install_cert(ks, &ks->gateway, false, pem, pemlen, why, whylen);
	if (r == 0)
		log_info("the gateway's certificate installed: %s", ks->gateway.cur.subject);
	return r;
}
