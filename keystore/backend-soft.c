/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The soft backend: a device's key is a PKCS#8 file (key.pem, 0600) that only this process
 * reads, the TLS library is given a reference to it (keyref.pem: the device's id, no secret),
 * and the PSK file is its text (psk.key, 0600). It has no state of its own.
 */
#include "backend.h"
#include "ks-internal.h"
#include "atomicfile.h"
#include "device.h"
#include "log.h"
#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REF_LABEL "GATEWAYD KEY REFERENCE"
/* A soft key reference names ID (key.pem) or ID NEXT_REF (next.key.pem). */
#define NEXT_REF ":next"

static int
soft_open(struct ks_backend **out, const struct keystore_config *cfg, struct tpmq *q, int dirfd,
          const char *dir)
{
	struct ks_backend *b = xcalloc(1, sizeof(*b));

	(void)cfg, (void)q, (void)dirfd, (void)dir;
	b->ops = &ks_soft_ops;
	*out = b;
	return 0;
}

static void
soft_free(struct ks_backend *b)
{
	free(b);
}

/* A soft key's reference: it names the device; only this process's provider can follow it. */
static int
write_key_ref(int fd, const char *dir, const char *id, bool next)
{
	BIO *b = BIO_new(BIO_s_mem());
	char ref[96], *data;
	long len;
	int r = -EIO;

	snprintf(ref, sizeof(ref), "%s%s", id, next ? NEXT_REF : "");
	if (b &&
	    PEM_write_bio(b, REF_LABEL, "", (const unsigned char *)ref, (long)strlen(ref)) > 0) {
		len = BIO_get_mem_data(b, &data);
		r = atomic_write(fd, dir, ks_soft_ops.tls_ref[next], data, (size_t)len, 0600);
	}
	BIO_free(b);
	return r;
}

static int
soft_create_key(struct ks_backend *be, int fd, const char *dir, const char *id, bool next,
                enum tpmq_prio prio)
{
	EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, "provider=default", "EC", "P-256");
	BIO *b = BIO_new(BIO_s_mem());
	char *data;
	long len;
	int r = -EIO;

	(void)be, (void)prio;
	if (!pkey || !b || PEM_write_bio_PKCS8PrivateKey(b, pkey, NULL, NULL, 0, NULL, NULL) != 1) {
		ks_log_openssl("keystore: cannot create a P-256 key");
		goto out;
	}
	len = BIO_get_mem_data(b, &data);
	r = atomic_write(fd, dir, ks_soft_ops.key_file[next], data, (size_t)len, 0600);
	if (r < 0)
		goto out;
	r = write_key_ref(fd, dir, id, next);
out:
	/* The mem BIO held the private key's PEM: clear it before it is freed. */
	if (b && (len = BIO_get_mem_data(b, &data)) > 0)
		OPENSSL_cleanse(data, (size_t)len);
	BIO_free(b);
	EVP_PKEY_free(pkey);
	return r;
}

/*
 * The public point of a key file, cached beside it (NAME.pub: the SHA-256 of the key file, then
 * the point). OpenSSL 3 decodes a PEM key through its decoder framework, about 0.8 ms a key on
 * the development machine, which made every offline gwctl call and gatewayd's start cost that
 * per device of the store (issue 15); loading needs only the point. The digest ties the cache
 * to the very file: any other content (a renewal's key put in place, damage) is decoded again
 * and the cache written anew. Not written durably: a cache lost in a crash is made again.
 */
#define PUB_CACHE_LEN (SHA256_DIGEST_LENGTH + KSPROV_P256_POINT_LEN)

static bool
cached_point(int fd, const char *name, const uint8_t digest[SHA256_DIGEST_LENGTH],
             uint8_t pub[KSPROV_P256_POINT_LEN])
{
	char cache[64];
	uint8_t b[PUB_CACHE_LEN];

	snprintf(cache, sizeof(cache), "%s.pub", name);
	if (!ks_cache_read(fd, cache, b, sizeof(b)) || memcmp(b, digest, SHA256_DIGEST_LENGTH) != 0)
		return false;
	memcpy(pub, b + SHA256_DIGEST_LENGTH, KSPROV_P256_POINT_LEN);
	return true;
}

static void
cache_point(int fd, const char *dir, const char *name, const uint8_t digest[SHA256_DIGEST_LENGTH],
            const uint8_t pub[KSPROV_P256_POINT_LEN])
{
	char cache[64];
	uint8_t b[PUB_CACHE_LEN];

	snprintf(cache, sizeof(cache), "%s.pub", name);
	memcpy(b, digest, SHA256_DIGEST_LENGTH);
	memcpy(b + SHA256_DIGEST_LENGTH, pub, KSPROV_P256_POINT_LEN);
	ks_cache_write(fd, dir, cache, b, sizeof(b), 0600);
}

/* The public point of a PEM private key, decoded: 0, or -EINVAL if it is not a P-256 key. */
static int
point_of_pem(const uint8_t *pem, size_t len, uint8_t pub[KSPROV_P256_POINT_LEN])
{
	BIO *b = BIO_new_mem_buf(pem, (int)len);
	EVP_PKEY *pkey =
	        b ? PEM_read_bio_PrivateKey_ex(b, NULL, NULL, NULL, NULL, "provider=default")
	          : NULL;
	int r = 0;

	BIO_free(b);
	if (!pkey || !EVP_PKEY_is_a(pkey, "EC") || ks_point_of(pkey, pub) < 0) {
		ks_log_openssl("keystore: a key file is not a P-256 EC private key");
		r = -EINVAL;
	}
	EVP_PKEY_free(pkey);
	return r;
}

static int
soft_load_key(struct ks_backend *be, int fd, const char *dir, const char *id, bool next,
              uint8_t pub[KSPROV_P256_POINT_LEN])
{
	const char *name = ks_soft_ops.key_file[next], *ref = ks_soft_ops.tls_ref[next];
	uint8_t digest[SHA256_DIGEST_LENGTH];
	uint8_t *pem;
	size_t len;
	bool hashed, cached;
	int r;

	(void)be;
	r = ks_read_file(fd, dir, name, true, 16384, &pem, &len);
	if (r < 0)
		return r;
	hashed = SHA256(pem, len, digest) != NULL;
	cached = hashed && cached_point(fd, name, digest, pub);
	if (!cached)
		r = point_of_pem(pem, len, pub);
	explicit_bzero(pem, len);
	free(pem);
	if (r < 0)
		return r;
	if (!cached && hashed)
		cache_point(fd, dir, name, digest, pub);
	/*
	 * A soft key's reference holds no secret, only the device's id: one lost by hand or by
	 * damage (or by a crash between a renewal's two files) is written again, rather than
	 * handed to the TLS library missing.
	 */
	if (faccessat(fd, ref, F_OK, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT) {
		log_warnx("keystore: %s/%s was missing; written again", dir, ref);
		r = write_key_ref(fd, dir, id, next);
		if (r < 0)
			return r;
	}
	return 0;
}

/* The file is the text itself, closed to everyone else (psk_file_secret). */
static int
soft_psk_open(struct ks_backend *b, const char *dir, const char *id, const uint8_t *in,
              size_t inlen, char *text, size_t *len)
{
	(void)b, (void)dir, (void)id;
	/* At most psk_file_max (PSK_TEXT_MAX) bytes: the store read no more. */
	memcpy(text, in, inlen);
	*len = inlen;
	return 0;
}

static int
soft_psk_seal(struct ks_backend *b, const char *id, const char *text, size_t len, uint8_t *out,
              size_t *outlen)
{
	(void)b, (void)id;
	memcpy(out, text, len);
	*outlen = len;
	return 0;
}

/*
 * The body is the device id, with NEXT_REF for a renewal's key: the soft key stays in its 0600
 * file until now. It needs no state, so a store of another backend follows it too (b NULL).
 */
static void *
soft_key_decode(struct ks_backend *be, int dirfd, const char *dir, const uint8_t *der, size_t len,
                uint8_t pub[KSPROV_P256_POINT_LEN])
{
	char id[96], *suffix;
	EVP_PKEY *pkey;
	uint8_t *pem;
	size_t pemlen;
	bool next;
	int fd;
	BIO *b;

	(void)be;
	if (len == 0 || len >= sizeof(id))
		return NULL;
	memcpy(id, der, len);
	id[len] = '\0';
	suffix = strchr(id, ':');
	next = suffix && strcmp(suffix, NEXT_REF) == 0;
	if (suffix && !next)
		return NULL;
	if (suffix)
		*suffix = '\0';
	if (!device_id_valid(id) && strcmp(id, GATEWAY_DIR) != 0)
		return NULL;
	/* A valid id has no '/' or "..": it names a folder of the store, nothing else. */
	fd = openat(dirfd, id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		log_warnx("keystore: key reference to unknown device %s", id);
		return NULL;
	}
	if (ks_read_file(fd, dir, ks_soft_ops.key_file[next], true, 16384, &pem, &pemlen) < 0) {
		close(fd);
		return NULL;
	}
	close(fd);
	b = BIO_new_mem_buf(pem, (int)pemlen);
	pkey = b ? PEM_read_bio_PrivateKey_ex(b, NULL, NULL, NULL, NULL, "provider=default") : NULL;
	BIO_free(b);
	explicit_bzero(pem, pemlen);
	free(pem);
	if (!pkey || ks_point_of(pkey, pub) < 0) {
		EVP_PKEY_free(pkey);
		return NULL;
	}
	return pkey;
}

static int
soft_sign(struct ks_backend *b, void *key, const uint8_t *digest, size_t dlen, uint8_t *sig,
          size_t *siglen)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, "provider=default");
	int r = -EIO;

	(void)b;
	if (ctx && EVP_PKEY_sign_init(ctx) == 1 &&
	    EVP_PKEY_sign(ctx, sig, siglen, digest, dlen) == 1)
		r = 0;
	else
		ks_log_openssl("keystore: soft signature failed");
	EVP_PKEY_CTX_free(ctx);
	return r;
}

static void
soft_key_free(void *key)
{
	EVP_PKEY_free(key);
}

static int
soft_ping(struct ks_backend *b)
{
	(void)b;
	return -ENODEV;
}

static void
soft_stats(struct ks_backend *b, struct keystore_stats *out)
{
	(void)b, (void)out;
}

static const struct histogram *
soft_latency(struct ks_backend *b, enum keystore_tpm_op op)
{
	(void)b, (void)op;
	return NULL;
}

const struct ks_backend_ops ks_soft_ops = {
        .name = "soft",
        .key_file = {"key.pem", "next.key.pem"},
        .tls_ref = {"keyref.pem", "next.keyref.pem"},
        .pem_label = REF_LABEL,
        .psk_file = "psk.key",
        .psk_file_secret = true,
        .psk_file_max = PSK_TEXT_MAX,
        .open = soft_open,
        .free = soft_free,
        .create_key = soft_create_key,
        .load_key = soft_load_key,
        .psk_open = soft_psk_open,
        .psk_seal = soft_psk_seal,
        .key_decode = soft_key_decode,
        .sign = soft_sign,
        .key_free = soft_key_free,
        .ping = soft_ping,
        .stats = soft_stats,
        .latency = soft_latency,
};
