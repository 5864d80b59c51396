/* SPDX-License-Identifier: Apache-2.0 */
#include "provider.h"
#include "log.h"
#include "xalloc.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/async.h>
#include <openssl/bio.h>
#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>

/*
 * The first decoder stage hands the second one the PEM body wrapped in this envelope:
 * "GWKS", the index of the PEM label in ops->labels, then the DER. The second stage also sees
 * DER from other decoder chains that carry no structure name (d2i_AutoPrivateKey and the
 * like), so it only acts on input that starts with the magic.
 */
#define ENVELOPE_MAGIC "GWKS"
#define ENVELOPE_HDR   5
#define STRUCTURE_NAME "gwks"
/* Key-reference files are small (a TSS2 PRIVATE KEY is under 1 KiB); refuse anything huge. */
#define BODY_MAX 16384
#define SIG_MAX  KSPROV_SIG_MAX

#define SIG_ALG_NAME "GWKS-ECDSA"

struct ksprov_ctx {
	/* Only for BIO_new_from_core_bio(): the decoders read through the core's BIOs. */
	OSSL_LIB_CTX *libctx;
	const struct ksprov_ops *ops;
	void *arg;
};

/*
 * Key data of our EC keymgmt. Either a keystore key (handle set, from the decoder) or a
 * public key imported for comparison (handle NULL), e.g. a certificate's key during
 * X509_check_private_key(). Immutable once built, so threads may share it.
 */
struct ksprov_key {
	struct ksprov_ctx *pc;
	void *handle;
	bool has_pub;
	uint8_t pub[KSPROV_P256_POINT_LEN];
};

static const struct {
	const char *md; /* a name EVP_MD_is_a() knows */
	/* DER AlgorithmIdentifier of ecdsa-with-SHAx; parameters absent (RFC 5758 section 3.2). */
	uint8_t aid[12];
} sig_digests[] = {
        {"SHA2-256", {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}},
        {"SHA2-384", {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03}},
        {"SHA2-512", {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04}},
};

struct ksprov_sig {
	struct ksprov_ctx *pc;
	/* Borrowed: OpenSSL holds the EVP_PKEY for as long as this context lives. */
	struct ksprov_key *key;
	EVP_MD *md;
	size_t digest; /* index into sig_digests, valid when md is set */
	EVP_MD_CTX *mdctx;
	/* Set by digest_sign_init: the digest is running and can no longer change. */
	bool streaming;
};

static OSSL_PROVIDER *prov_default;
static OSSL_PROVIDER *prov_ks;
static bool registered;

/* Drains OpenSSL's error queue into the log, so the reason is not lost with the queue. */
static void
log_openssl(const char *what)
{
	unsigned long e;
	char buf[256];
	bool any = false;

	while ((e = ERR_get_error()) != 0) {
		ERR_error_string_n(e, buf, sizeof(buf));
		log_warnx("gwkeystore: %s: %s", what, buf);
		any = true;
	}
	if (!any)
		log_warnx("gwkeystore: %s", what);
}

/*
 * Checks that in is a point on P-256 and writes it uncompressed. Imported keys may come
 * compressed; keystore keys are checked too so a backend bug cannot reach a TLS peer.
 */
static int
p256_point(const uint8_t *in, size_t len, uint8_t out[KSPROV_P256_POINT_LEN])
{
	EC_GROUP *group;
	EC_POINT *pt = NULL;
	int r = -EINVAL;

	/* A bad point is an answer here, not an error for whoever reads the queue later. */
	ERR_set_mark();
	group = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
	/* These two fail only when OpenSSL's own allocation does. */
	if (!group) {
		r = -ENOMEM;
		goto out;
	}
	pt = EC_POINT_new(group);
	if (!pt) {
		r = -ENOMEM;
		goto out;
	}
	/* oct2point refuses points off the curve; the point at infinity encodes to one byte. */
	if (EC_POINT_oct2point(group, pt, in, len, NULL) &&
	    EC_POINT_point2oct(group, pt, POINT_CONVERSION_UNCOMPRESSED, out, KSPROV_P256_POINT_LEN,
	                       NULL) == KSPROV_P256_POINT_LEN)
		r = 0;
out:
	EC_POINT_free(pt);
	EC_GROUP_free(group);
	ERR_pop_to_mark();
	return r;
}

static bool
is_p256_name(const char *name)
{
	return strcasecmp(name, "prime256v1") == 0 || strcasecmp(name, "P-256") == 0 ||
	       strcasecmp(name, "secp256r1") == 0;
}

static void
key_free(struct ksprov_key *key)
{
	if (!key)
		return;
	if (key->handle)
		key->pc->ops->free(key->pc->arg, key->handle);
	free(key);
}

/* Decoder stage 1: PEM with one of our labels to an envelope with structure "gwks". */

static void *
dec_newctx(void *provctx)
{
	return provctx;
}

static void
dec_freectx(void *ctx)
{
	(void)ctx;
}

static int
label_index(const struct ksprov_ctx *pc, const char *name)
{
	for (int i = 0; i < 256 && pc->ops->labels[i]; i++) {
		if (strcmp(pc->ops->labels[i], name) == 0)
			return i;
	}
	return -1;
}

static int
pem_decode(void *ctx, OSSL_CORE_BIO *cin, int selection, OSSL_CALLBACK *data_cb, void *data_cbarg,
           OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
	struct ksprov_ctx *pc = ctx;
	char *name = NULL, *header = NULL;
	unsigned char *body = NULL, *env = NULL;
	long len = 0;
	size_t envlen = 0;
	int idx, ok = 1;
	OSSL_PARAM params[3];
	BIO *in;

	(void)selection;
	(void)pw_cb;
	(void)pw_cbarg;
	if (!pc->ops)
		return 1;
	in = BIO_new_from_core_bio(pc->libctx, cin);
	if (!in)
		return 0;
	/*
	 * Not PEM, or a label that is not ours: return 1 without an object so the default
	 * provider's decoders get their turn (returning 0 would end the whole decode).
	 */
	if (!PEM_read_bio(in, &name, &header, &body, &len) || len <= 0)
		goto out;
	idx = label_index(pc, name);
	if (idx < 0)
		goto out;
	if (len > BODY_MAX) {
		log_warnx("gwkeystore: %s PEM body of %ld bytes is larger than %d", name, len,
		          BODY_MAX);
		ok = 0;
		goto out;
	}
	envlen = ENVELOPE_HDR + (size_t)len;
	env = OPENSSL_malloc(envlen);
	if (!env) {
		ok = 0;
		goto out;
	}
	memcpy(env, ENVELOPE_MAGIC, 4);
	env[4] = (unsigned char)idx;
	memcpy(env + ENVELOPE_HDR, body, (size_t)len);

	params[0] = OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_DATA, env, envlen);
	params[1] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_STRUCTURE,
	                                             (char *)STRUCTURE_NAME, 0);
	params[2] = OSSL_PARAM_construct_end();
	ok = data_cb(params, data_cbarg);
out:
	/* The soft backend's body is a real private key: do not leave copies in the heap. */
	OPENSSL_clear_free(env, envlen);
	OPENSSL_clear_free(body, len > 0 ? (size_t)len : 0);
	OPENSSL_free(name);
	OPENSSL_free(header);
	BIO_free(in);
	return ok;
}

/* Decoder stage 2: envelope to a keystore key, passed by reference to our keymgmt's load(). */

static int
key_does_selection(void *provctx, int selection)
{
	(void)provctx;
	/* Asked for domain parameters alone, let the default provider's decoders answer. */
	return selection == 0 || (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0;
}

/* Reads up to len bytes; fewer only at the end of the input. */
static size_t
read_full(BIO *in, uint8_t *buf, size_t len)
{
	size_t got = 0, n;

	while (got < len && BIO_read_ex(in, buf + got, len - got, &n) && n > 0)
		got += n;
	return got;
}

static int
key_decode(void *ctx, OSSL_CORE_BIO *cin, int selection, OSSL_CALLBACK *data_cb, void *data_cbarg,
           OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
	struct ksprov_ctx *pc = ctx;
	struct ksprov_key *key = NULL;
	uint8_t hdr[ENVELOPE_HDR], *der = NULL, pub[KSPROV_P256_POINT_LEN];
	const char *label;
	size_t dlen;
	int type = OSSL_OBJECT_PKEY, ok = 1;
	OSSL_PARAM params[4];
	BIO *in;

	(void)selection;
	(void)pw_cb;
	(void)pw_cbarg;
	if (!pc->ops)
		return 1;
	in = BIO_new_from_core_bio(pc->libctx, cin);
	if (!in)
		return 0;
	if (read_full(in, hdr, sizeof(hdr)) != sizeof(hdr) || memcmp(hdr, ENVELOPE_MAGIC, 4) != 0)
		goto out;
	for (int i = 0; i <= hdr[4]; i++) {
		if (!pc->ops->labels[i])
			goto out;
	}
	label = pc->ops->labels[hdr[4]];
	der = OPENSSL_malloc(BODY_MAX + 1);
	if (!der) {
		ok = 0;
		goto out;
	}
	dlen = read_full(in, der, BODY_MAX + 1);
	if (dlen == 0 || dlen > BODY_MAX)
		goto out;

	key = xcalloc(1, sizeof(*key));
	key->pc = pc;
	/* A file that carries our label but cannot be loaded is an error, not "try others". */
	key->handle = pc->ops->load(pc->arg, label, der, dlen, pub);
	if (!key->handle) {
		ok = 0;
		goto out;
	}
	if (p256_point(pub, sizeof(pub), key->pub) < 0) {
		log_warnx("gwkeystore: the keystore gave an invalid P-256 public key for a %s",
		          label);
		ok = 0;
		goto out;
	}
	key->has_pub = true;

	params[0] = OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &type);
	params[1] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE, (char *)"EC", 0);
	params[2] =
	        OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &key, sizeof(key));
	params[3] = OSSL_PARAM_construct_end();
	/* km_load() takes the key and clears the reference; otherwise it is still ours. */
	ok = data_cb(params, data_cbarg);
out:
	key_free(key);
	OPENSSL_clear_free(der, BODY_MAX + 1);
	BIO_free(in);
	return ok;
}

/* Keymgmt, under the EC names so that TLS, X.509 and EVP treat the key as any EC key. */

static void *
km_new(void *provctx)
{
	struct ksprov_key *key = xcalloc(1, sizeof(*key));

	key->pc = provctx;
	return key;
}

static void
km_free(void *keydata)
{
	key_free(keydata);
}

static void *
km_load(const void *reference, size_t reference_sz)
{
	struct ksprov_key *key;

	/* Only our own decoder passes references to this keymgmt (same-provider rule). */
	if (!reference || reference_sz != sizeof(key))
		return NULL;
	memcpy(&key, reference, sizeof(key));
	memset((void *)reference, 0, sizeof(key));
	return key;
}

static int
km_has(const void *keydata, int selection)
{
	const struct ksprov_key *key = keydata;

	if (!key)
		return 0;
	if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) && !key->has_pub)
		return 0;
	/* "Has a private key" means "can sign": true for keystore keys only. */
	if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) && !key->handle)
		return 0;
	/* The domain parameters are always P-256. */
	return 1;
}

static int
km_match(const void *keydata1, const void *keydata2, int selection)
{
	const struct ksprov_key *a = keydata1, *b = keydata2;

	/* Equal public points mean the same key pair; parameters are P-256 on both sides. */
	if (selection & OSSL_KEYMGMT_SELECT_KEYPAIR)
		return a->has_pub && b->has_pub && memcmp(a->pub, b->pub, sizeof(a->pub)) == 0;
	return 1;
}

static const OSSL_PARAM km_public_types[] = {
        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
        OSSL_PARAM_END,
};

/*
 * Public keys only, so that EVP_PKEY_eq() (X509_check_private_key(), SSL_CTX_use_PrivateKey)
 * can bring a certificate's key over from the default provider and compare points here.
 * OpenSSL 3.0.22 also manages the other way round, through the public-only export below.
 * A private key among the params is ignored, never copied; the result cannot sign.
 */
static int
km_import(void *keydata, int selection, const OSSL_PARAM params[])
{
	struct ksprov_key *key = keydata;
	const OSSL_PARAM *p;
	const char *group;
	const void *pub;
	size_t len;

	if (!key || key->handle || !(selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY))
		return 0;
	p = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_GROUP_NAME);
	if (!p || !OSSL_PARAM_get_utf8_string_ptr(p, &group) || !is_p256_name(group))
		return 0;
	p = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_PUB_KEY);
	if (!p || !OSSL_PARAM_get_octet_string_ptr(p, &pub, &len))
		return 0;
	if (p256_point(pub, len, key->pub) < 0)
		return 0;
	key->has_pub = true;
	return 1;
}

static const OSSL_PARAM *
km_import_types(int selection)
{
	return (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) ? km_public_types : NULL;
}

static int
km_export(void *keydata, int selection, OSSL_CALLBACK *param_cb, void *cbarg)
{
	struct ksprov_key *key = keydata;
	OSSL_PARAM params[3], *p = params;

	/*
	 * The private part stays in the keystore. Refusing it also makes OpenSSL sign with our
	 * signature rather than with a copy of the key in the default provider.
	 */
	if (!key || (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY))
		return 0;
	if (selection & OSSL_KEYMGMT_SELECT_ALL_PARAMETERS)
		*p++ = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME,
		                                        (char *)"prime256v1", 0);
	if (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) {
		if (!key->has_pub)
			return 0;
		*p++ = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, key->pub,
		                                         sizeof(key->pub));
	}
	*p = OSSL_PARAM_construct_end();
	return param_cb(params, cbarg);
}

static const OSSL_PARAM *
km_export_types(int selection)
{
	if (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY)
		return NULL;
	return km_public_types;
}

static int
set_utf8(OSSL_PARAM params[], const char *name, const char *value)
{
	OSSL_PARAM *p = OSSL_PARAM_locate(params, name);

	return !p || OSSL_PARAM_set_utf8_string(p, value);
}

static int
set_int(OSSL_PARAM params[], const char *name, int value)
{
	OSSL_PARAM *p = OSSL_PARAM_locate(params, name);

	return !p || OSSL_PARAM_set_int(p, value);
}

static int
km_get_params(void *keydata, OSSL_PARAM params[])
{
	struct ksprov_key *key = keydata;
	OSSL_PARAM *p;

	/* P-256 gives 128-bit security (NIST SP 800-57 part 1, table 2). */
	if (!set_int(params, OSSL_PKEY_PARAM_BITS, 256) ||
	    !set_int(params, OSSL_PKEY_PARAM_SECURITY_BITS, 128) ||
	    !set_int(params, OSSL_PKEY_PARAM_MAX_SIZE, SIG_MAX) ||
	    !set_utf8(params, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1") ||
	    !set_utf8(params, OSSL_PKEY_PARAM_EC_ENCODING, OSSL_PKEY_EC_ENCODING_GROUP) ||
	    /* TLS 1.2 checks the format against the peer's ec_point_formats (RFC 8422). */
	    !set_utf8(params, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
	              OSSL_PKEY_EC_POINT_CONVERSION_FORMAT_UNCOMPRESSED) ||
	    !set_utf8(params, OSSL_PKEY_PARAM_DEFAULT_DIGEST, "SHA256"))
		return 0;
	if (!key->has_pub)
		return 1;
	p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY);
	if (p && !OSSL_PARAM_set_octet_string(p, key->pub, sizeof(key->pub)))
		return 0;
	p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_PUB_KEY);
	if (p && !OSSL_PARAM_set_octet_string(p, key->pub, sizeof(key->pub)))
		return 0;
	return 1;
}

static const OSSL_PARAM *
km_gettable_params(void *provctx)
{
	static const OSSL_PARAM gettable[] = {
	        OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
	        OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
	        OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
	        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
	        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
	        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
	        OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
	        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
	        OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
	        OSSL_PARAM_END,
	};

	(void)provctx;
	return gettable;
}

static const char *
km_query_operation_name(int operation_id)
{
	/*
	 * A name only this provider offers: under "ECDSA", OpenSSL would first fetch the
	 * default provider's ECDSA and try to export the key to it on every signature setup.
	 */
	return operation_id == OSSL_OP_SIGNATURE ? SIG_ALG_NAME : NULL;
}

/* Signature: hashes with the default provider's digests, signs through ops->sign. */

static void *
sig_newctx(void *provctx, const char *propq)
{
	struct ksprov_sig *ctx = xcalloc(1, sizeof(*ctx));

	(void)propq;
	ctx->pc = provctx;
	return ctx;
}

static void
sig_freectx(void *vctx)
{
	struct ksprov_sig *ctx = vctx;

	if (!ctx)
		return;
	EVP_MD_CTX_free(ctx->mdctx);
	EVP_MD_free(ctx->md);
	free(ctx);
}

static void *
sig_dupctx(void *vctx)
{
	struct ksprov_sig *src = vctx, *dst = xcalloc(1, sizeof(*dst));

	*dst = *src;
	dst->md = NULL;
	dst->mdctx = NULL;
	if (src->md) {
		if (!EVP_MD_up_ref(src->md))
			goto fail;
		dst->md = src->md;
	}
	if (src->mdctx) {
		dst->mdctx = EVP_MD_CTX_new();
		if (!dst->mdctx || !EVP_MD_CTX_copy_ex(dst->mdctx, src->mdctx))
			goto fail;
	}
	return dst;
fail:
	sig_freectx(dst);
	return NULL;
}

static int
sig_set_md(struct ksprov_sig *ctx, const char *name)
{
	EVP_MD *md;

	/* This provider offers no digests, so the fetch finds the default provider's. */
	md = EVP_MD_fetch(NULL, name, NULL);
	if (!md) {
		log_openssl("unknown digest");
		return -ENOENT;
	}
	for (size_t i = 0; i < sizeof(sig_digests) / sizeof(sig_digests[0]); i++) {
		if (EVP_MD_is_a(md, sig_digests[i].md)) {
			EVP_MD_free(ctx->md);
			ctx->md = md;
			ctx->digest = i;
			return 0;
		}
	}
	/*
	 * Not logged: TLS asks about every digest of its signature algorithm list
	 * (EVP_PKEY_digestsign_supports_digest) and a "no" just steers it to SHA-256.
	 */
	EVP_MD_free(md);
	return -EOPNOTSUPP;
}

static int
sig_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
	struct ksprov_sig *ctx = vctx;
	const OSSL_PARAM *p;
	const char *name;

	p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_DIGEST);
	if (!p)
		return 1;
	if (ctx->streaming || !OSSL_PARAM_get_utf8_string_ptr(p, &name))
		return 0;
	return sig_set_md(ctx, name) == 0;
}

static const OSSL_PARAM *
sig_settable_ctx_params(void *vctx, void *provctx)
{
	static const OSSL_PARAM settable[] = {
	        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
	        OSSL_PARAM_END,
	};

	(void)vctx;
	(void)provctx;
	return settable;
}

static int
sig_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
	struct ksprov_sig *ctx = vctx;
	OSSL_PARAM *p;

	if (!ctx->md)
		return 1;
	/* X509_sign_ctx() and X509_REQ_sign_ctx() take the signatureAlgorithm from here. */
	p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_ALGORITHM_ID);
	if (p && !OSSL_PARAM_set_octet_string(p, sig_digests[ctx->digest].aid,
	                                      sizeof(sig_digests[ctx->digest].aid)))
		return 0;
	p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_DIGEST);
	if (p && !OSSL_PARAM_set_utf8_string(p, EVP_MD_get0_name(ctx->md)))
		return 0;
	return 1;
}

static const OSSL_PARAM *
sig_gettable_ctx_params(void *vctx, void *provctx)
{
	static const OSSL_PARAM gettable[] = {
	        OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, NULL, 0),
	        OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
	        OSSL_PARAM_END,
	};

	(void)vctx;
	(void)provctx;
	return gettable;
}

static int
sig_sign_init(void *vctx, void *provkey, const OSSL_PARAM params[])
{
	struct ksprov_sig *ctx = vctx;

	if (provkey)
		ctx->key = provkey;
	if (!ctx->key || !ctx->key->handle) {
		/* A public key imported from elsewhere; there is nothing to sign with. */
		log_warnx("gwkeystore: signing needs a keystore key, this is a public key only");
		return 0;
	}
	ctx->streaming = false;
	return sig_set_ctx_params(ctx, params);
}

/*
 * A wait context's cleanup, called only when OpenSSL frees the context with our fd still in
 * it: the connection of a job paused on a signature was freed, and the job never resumes.
 * The fd was set under the ops table as its key; the handle goes back to the keystore, which
 * frees it (and closes the fd) once its worker is done with it. Nothing else to do here.
 */
static void
wait_cleanup(ASYNC_WAIT_CTX *wctx, const void *key, OSSL_ASYNC_FD fd, void *op)
{
	const struct ksprov_ops *ops = key;

	(void)wctx;
	(void)fd;
	ops->sign_abandon(op);
}

/* Blocks this thread until fd is readable: for a job that cannot pause. */
static void
wait_readable(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};

	while (poll(&p, 1, -1) < 0 && errno == EINTR)
		;
}

/*
 * Inside an OpenSSL async job: queues the signature, hands its fd to the job's wait context
 * and pauses until the keystore is done, so that the loop runs other connections meanwhile.
 * This runs on the job's 32 KiB stack: small frames, no TPM call.
 */
static int
sign_in_job(const struct ksprov_ops *ops, void *arg, void *key, ASYNC_JOB *job,
            const uint8_t *digest, size_t dlen, uint8_t *sig, size_t *siglen)
{
	ASYNC_WAIT_CTX *wctx = ASYNC_get_wait_ctx(job);
	size_t added, deleted;
	uint64_t count;
	void *op;
	int fd;

	op = ops->sign_start(arg, key, digest, dlen, &fd);
	if (!op)
		return -EIO;
	if (!wctx || !ASYNC_WAIT_CTX_set_wait_fd(wctx, ops, fd, op, wait_cleanup)) {
		/* Nothing to hand the caller to wait on: wait here, as outside a job. */
		while (!ops->sign_done(op))
			wait_readable(fd);
		return ops->sign_finish(op, sig, siglen);
	}
	/*
	 * At least one pause, done or not: every signature in a job then shows the caller
	 * SSL_ERROR_WANT_ASYNC and an fd (already readable if the signer was that quick), so the
	 * loop's path is one and the same for soft keys (~0.1 ms) and TPM keys (17 to 70 ms).
	 */
	for (;;) {
		ASYNC_pause_job();
		if (ops->sign_done(op))
			break;
		/*
		 * Resumed before the fd fired (pause again), or never paused: ASYNC_pause_job()
		 * returns at once inside ASYNC_block_pause(). A real pause resets the wait
		 * context's count of added fds, which ours made at least 1 (crypto/async/async.c,
		 * OpenSSL 3.0): still counted, the job did not pause and must wait here.
		 */
		if (ASYNC_WAIT_CTX_get_changed_fds(wctx, NULL, &added, NULL, &deleted) && added > 0)
			wait_readable(fd);
	}
	/* The worker writes the fd after it sets done: it may be readable yet, or not. */
	while (read(fd, &count, sizeof(count)) < 0 && errno == EINTR)
		;
	ASYNC_WAIT_CTX_clear_fd(wctx, ops);
	return ops->sign_finish(op, sig, siglen);
}

static int
sig_do_sign(struct ksprov_sig *ctx, const uint8_t *digest, size_t dlen, unsigned char *sig,
            size_t *siglen, size_t sigsize)
{
	const struct ksprov_ops *ops = ctx->pc->ops;
	ASYNC_JOB *job = ops->sign_start ? ASYNC_get_current_job() : NULL;
	uint8_t buf[SIG_MAX];
	size_t len = sizeof(buf);
	int r;

	if (job)
		r = sign_in_job(ops, ctx->pc->arg, ctx->key->handle, job, digest, dlen, buf, &len);
	else
		r = ops->sign(ctx->pc->arg, ctx->key->handle, digest, dlen, buf, &len);
	if (r < 0) {
		log_warnx("gwkeystore: the keystore failed to sign: %s", strerror(-r));
		return 0;
	}
	if (len == 0 || len > sizeof(buf) || len > sigsize) {
		log_warnx("gwkeystore: signature of %zu bytes does not fit (room for %zu)", len,
		          sigsize < sizeof(buf) ? sigsize : sizeof(buf));
		return 0;
	}
	memcpy(sig, buf, len);
	*siglen = len;
	return 1;
}

/* EVP_PKEY_sign(): tbs is already a digest. */
static int
sig_sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize, const unsigned char *tbs,
         size_t tbslen)
{
	struct ksprov_sig *ctx = vctx;

	if (!sig) {
		*siglen = SIG_MAX;
		return 1;
	}
	if (tbslen == 0 || tbslen > EVP_MAX_MD_SIZE ||
	    (ctx->md && tbslen != (size_t)EVP_MD_get_size(ctx->md))) {
		log_warnx("gwkeystore: cannot sign a digest of %zu bytes", tbslen);
		return 0;
	}
	return sig_do_sign(ctx, tbs, tbslen, sig, siglen, sigsize);
}

static int
sig_digest_sign_init(void *vctx, const char *mdname, void *provkey, const OSSL_PARAM params[])
{
	struct ksprov_sig *ctx = vctx;

	if (!sig_sign_init(ctx, provkey, params))
		return 0;
	if (mdname && sig_set_md(ctx, mdname) < 0)
		return 0;
	if (!ctx->md && sig_set_md(ctx, "SHA256") < 0)
		return 0;
	if (!ctx->mdctx)
		ctx->mdctx = EVP_MD_CTX_new();
	if (!ctx->mdctx || !EVP_DigestInit_ex(ctx->mdctx, ctx->md, NULL)) {
		log_openssl("cannot start the digest");
		return 0;
	}
	ctx->streaming = true;
	return 1;
}

static int
sig_digest_sign_update(void *vctx, const unsigned char *data, size_t datalen)
{
	struct ksprov_sig *ctx = vctx;

	return ctx->streaming && EVP_DigestUpdate(ctx->mdctx, data, datalen);
}

static int
sig_digest_sign_final(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize)
{
	struct ksprov_sig *ctx = vctx;
	uint8_t digest[EVP_MAX_MD_SIZE];
	unsigned int dlen;

	if (!sig) {
		*siglen = SIG_MAX;
		return 1;
	}
	if (!ctx->streaming || !EVP_DigestFinal_ex(ctx->mdctx, digest, &dlen))
		return 0;
	ctx->streaming = false;
	return sig_do_sign(ctx, digest, dlen, sig, siglen, sigsize);
}

/* One-shot EVP_DigestSign(): what TLS uses for CertificateVerify. */
static int
sig_digest_sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize,
                const unsigned char *tbs, size_t tbslen)
{
	struct ksprov_sig *ctx = vctx;
	uint8_t digest[EVP_MAX_MD_SIZE];
	unsigned int dlen;

	if (!sig) {
		*siglen = SIG_MAX;
		return 1;
	}
	if (!ctx->streaming || !EVP_Digest(tbs, tbslen, digest, &dlen, ctx->md, NULL))
		return 0;
	return sig_do_sign(ctx, digest, dlen, sig, siglen, sigsize);
}

/* Dispatch tables. */

typedef void (*fn)(void);

static const OSSL_DISPATCH pem_decoder_fns[] = {
        {OSSL_FUNC_DECODER_NEWCTX, (fn)dec_newctx},
        {OSSL_FUNC_DECODER_FREECTX, (fn)dec_freectx},
        {OSSL_FUNC_DECODER_DECODE, (fn)pem_decode},
        {0, NULL},
};

static const OSSL_DISPATCH key_decoder_fns[] = {
        {OSSL_FUNC_DECODER_NEWCTX, (fn)dec_newctx},
        {OSSL_FUNC_DECODER_FREECTX, (fn)dec_freectx},
        {OSSL_FUNC_DECODER_DOES_SELECTION, (fn)key_does_selection},
        {OSSL_FUNC_DECODER_DECODE, (fn)key_decode},
        {0, NULL},
};

/*
 * Stage 1 is named "DER" (its output type) so that OpenSSL chains it in front of every
 * decoder taking DER; stage 2 is named "EC" so that it counts as a decoder for EC keys.
 */
static const OSSL_ALGORITHM decoders[] = {
        {"DER", "provider=" KSPROV_NAME ",input=pem", pem_decoder_fns, NULL},
        {"EC", "provider=" KSPROV_NAME ",input=der,structure=" STRUCTURE_NAME, key_decoder_fns,
         NULL},
        {NULL, NULL, NULL, NULL},
};

static const OSSL_DISPATCH keymgmt_fns[] = {
        {OSSL_FUNC_KEYMGMT_NEW, (fn)km_new},
        {OSSL_FUNC_KEYMGMT_FREE, (fn)km_free},
        {OSSL_FUNC_KEYMGMT_LOAD, (fn)km_load},
        {OSSL_FUNC_KEYMGMT_HAS, (fn)km_has},
        {OSSL_FUNC_KEYMGMT_MATCH, (fn)km_match},
        {OSSL_FUNC_KEYMGMT_IMPORT, (fn)km_import},
        {OSSL_FUNC_KEYMGMT_IMPORT_TYPES, (fn)km_import_types},
        {OSSL_FUNC_KEYMGMT_EXPORT, (fn)km_export},
        {OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (fn)km_export_types},
        {OSSL_FUNC_KEYMGMT_GET_PARAMS, (fn)km_get_params},
        {OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (fn)km_gettable_params},
        {OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (fn)km_query_operation_name},
        {0, NULL},
};

static const OSSL_ALGORITHM keymgmts[] = {
        {"EC:id-ecPublicKey:1.2.840.10045.2.1", "provider=" KSPROV_NAME, keymgmt_fns, NULL},
        {NULL, NULL, NULL, NULL},
};

static const OSSL_DISPATCH signature_fns[] = {
        {OSSL_FUNC_SIGNATURE_NEWCTX, (fn)sig_newctx},
        {OSSL_FUNC_SIGNATURE_FREECTX, (fn)sig_freectx},
        {OSSL_FUNC_SIGNATURE_DUPCTX, (fn)sig_dupctx},
        {OSSL_FUNC_SIGNATURE_SIGN_INIT, (fn)sig_sign_init},
        {OSSL_FUNC_SIGNATURE_SIGN, (fn)sig_sign},
        {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, (fn)sig_digest_sign_init},
        {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, (fn)sig_digest_sign_update},
        {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, (fn)sig_digest_sign_final},
        {OSSL_FUNC_SIGNATURE_DIGEST_SIGN, (fn)sig_digest_sign},
        {OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, (fn)sig_get_ctx_params},
        {OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, (fn)sig_gettable_ctx_params},
        {OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, (fn)sig_set_ctx_params},
        {OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, (fn)sig_settable_ctx_params},
        {0, NULL},
};

static const OSSL_ALGORITHM signatures[] = {
        {SIG_ALG_NAME, "provider=" KSPROV_NAME, signature_fns, NULL},
        {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM *
prov_query(void *provctx, int operation_id, int *no_cache)
{
	(void)provctx;
	*no_cache = 0;
	switch (operation_id) {
	case OSSL_OP_DECODER:
		return decoders;
	case OSSL_OP_KEYMGMT:
		return keymgmts;
	case OSSL_OP_SIGNATURE:
		return signatures;
	}
	return NULL;
}

static void
prov_teardown(void *provctx)
{
	struct ksprov_ctx *pc = provctx;

	OSSL_LIB_CTX_free(pc->libctx);
	free(pc);
}

static const OSSL_DISPATCH prov_fns[] = {
        {OSSL_FUNC_PROVIDER_TEARDOWN, (fn)prov_teardown},
        {OSSL_FUNC_PROVIDER_QUERY_OPERATION, (fn)prov_query},
        {0, NULL},
};

static int
prov_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in, const OSSL_DISPATCH **out,
          void **provctx)
{
	struct ksprov_ctx *pc = xcalloc(1, sizeof(*pc));

	pc->libctx = OSSL_LIB_CTX_new_from_dispatch(handle, in);
	if (!pc->libctx) {
		free(pc);
		return 0;
	}
	*provctx = pc;
	*out = prov_fns;
	return 1;
}

int
ksprov_init(const struct ksprov_ops *ops, void *arg)
{
	struct ksprov_ctx *pc;

	if (!ops || !ops->labels || !ops->load || !ops->free || !ops->sign)
		return -EINVAL;
	if ((ops->sign_start || ops->sign_done || ops->sign_finish || ops->sign_abandon) &&
	    !(ops->sign_start && ops->sign_done && ops->sign_finish && ops->sign_abandon))
		return -EINVAL;
	if (prov_ks)
		return -EALREADY;
	/* OpenSSL 3.0 appends to its list on every call, without looking for duplicates. */
	if (!registered) {
		if (!OSSL_PROVIDER_add_builtin(NULL, KSPROV_NAME, prov_init)) {
			/* OpenSSL's list of built-in providers could not grow. */
			log_openssl("cannot register the provider");
			return -ENOMEM;
		}
		registered = true;
	}
	/*
	 * "default" first: a provider loaded earlier wins generic fetches, and with ours first
	 * server-certificate verification broke and P-256 vanished from key exchange.
	 */
	if (!prov_default)
		prov_default = OSSL_PROVIDER_load(NULL, "default");
	if (!prov_default) {
		log_openssl("cannot load OpenSSL's default provider");
		return -ENOENT;
	}
	prov_ks = OSSL_PROVIDER_load(NULL, KSPROV_NAME);
	if (!prov_ks) {
		log_openssl("cannot load the provider");
		ksprov_finish();
		return -ENOENT;
	}
	/*
	 * OpenSSL 3.0's method cache matches a lookup for "any provider" against an entry that a
	 * provider-specific fetch left (crypto/property/property.c, query_cmp ignores a NULL
	 * provider). Once our decoder fetched our "EC" keymgmt, a plain "EC" fetch
	 * (EVP_PKEY_Q_keygen, a TLS 1.2 ECDHE key, a P-256 key share) got ours, which cannot
	 * generate keys: measured with 3.0.22. Loading a provider empties that cache, so fill it
	 * again now with the default provider's EC: lookups walk the cache's bucket in insertion
	 * order and find it before any entry of ours.
	 */
	EVP_KEYMGMT *ec = EVP_KEYMGMT_fetch(NULL, "EC", NULL);

	if (!ec || strcmp(OSSL_PROVIDER_get0_name(EVP_KEYMGMT_get0_provider(ec)), "default") != 0)
		log_warnx("OpenSSL serves plain \"EC\" requests from %s, not the default provider: "
		          "EC key generation may fail",
		          ec ? OSSL_PROVIDER_get0_name(EVP_KEYMGMT_get0_provider(ec)) : "nowhere");
	EVP_KEYMGMT_free(ec);

	/*
	 * Set here, not in prov_init(): OpenSSL may keep the provider initialised across
	 * ksprov_finish() and reuse it on the next load without calling prov_init() again.
	 */
	pc = OSSL_PROVIDER_get0_provider_ctx(prov_ks);
	pc->ops = ops;
	pc->arg = arg;
	return 0;
}

void
ksprov_finish(void)
{
	/*
	 * "default" stays: once a provider was loaded explicitly, OpenSSL no longer loads the
	 * default one by itself, so unloading it would break every later use of OpenSSL in the
	 * process (a unit test's next keystore, gwctl's output, the upstream TLS context's
	 * teardown).
	 */
	if (prov_ks)
		OSSL_PROVIDER_unload(prov_ks);
	prov_ks = NULL;
}
