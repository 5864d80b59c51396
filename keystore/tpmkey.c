/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TPMKey DER through OpenSSL's ASN.1 templates. The log lines keep the "kstpm:" of the code
 * this replaced: to an operator the key file is kstpm's, and log searches keep matching.
 */
#include "tpmkey.h"
#include "log.h"
#include "xalloc.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1t.h>
#include <openssl/err.h>
#include <openssl/objects.h>

/*
 * The type OIDs (3.1.1 "type"): id-tpmkey is 2.23.133.10.1, DER contents 67 81 05 0a 01, and
 * its arcs 3 id-loadablekey, 4 id-importablekey, 5 id-sealedkey.
 */
#define OID_LOADABLE_TEXT "2.23.133.10.1.3"
static const uint8_t oid_tpmkey_prefix[] = {0x67, 0x81, 0x05, 0x0a, 0x01};
#define OID_LOADABLE   0x03
#define OID_IMPORTABLE 0x04
#define OID_SEALED     0x05

/*
 * draft-bottomley-tpm2-keys' ASN.1, field for field and named as there: TPMPolicy (4.1),
 * TPMAuthPolicy (5.1), TPMKey (3.1). So a TPMKey from any tool is read whole before it is
 * judged. The template takes the optional [0]-[5] in that order only and knows no other tag: a
 * field out of order, twice, or unknown does not decode. Not ASN1_SEQUENCE_enc, which would
 * write back the input's own encoding and so defeat the DER check below. clang-format cannot lay
 * out the template macros, which end statements it does not see: hence off, and the one ';'
 * that shows it where they end.
 */
/* clang-format off */
typedef struct {
	ASN1_INTEGER *code;
	ASN1_OCTET_STRING *policy;
} TPMPolicy;

ASN1_SEQUENCE(TPMPolicy) = {
	ASN1_EXP(TPMPolicy, code, ASN1_INTEGER, 0),
	ASN1_EXP(TPMPolicy, policy, ASN1_OCTET_STRING, 1),
} static_ASN1_SEQUENCE_END(TPMPolicy)

typedef struct {
	ASN1_UTF8STRING *name;
	STACK_OF(TPMPolicy) *policy;
} TPMAuthPolicy;

ASN1_SEQUENCE(TPMAuthPolicy) = {
	ASN1_EXP_OPT(TPMAuthPolicy, name, ASN1_UTF8STRING, 0),
	ASN1_EXP_SEQUENCE_OF(TPMAuthPolicy, policy, TPMPolicy, 1),
} static_ASN1_SEQUENCE_END(TPMAuthPolicy)

typedef struct {
	ASN1_OBJECT *type;
	ASN1_BOOLEAN empty_auth; /* -1 when absent, else the content byte as read */
	STACK_OF(TPMPolicy) *policy;
	ASN1_OCTET_STRING *secret;
	STACK_OF(TPMAuthPolicy) *auth_policy;
	ASN1_UTF8STRING *description;
	ASN1_BOOLEAN rsa_parent;
	ASN1_INTEGER *parent;
	ASN1_OCTET_STRING *pubkey;
	ASN1_OCTET_STRING *privkey;
} TPMKey;

ASN1_SEQUENCE(TPMKey) = {
	ASN1_SIMPLE(TPMKey, type, ASN1_OBJECT),
	ASN1_EXP_OPT(TPMKey, empty_auth, ASN1_BOOLEAN, 0),
	ASN1_EXP_SEQUENCE_OF_OPT(TPMKey, policy, TPMPolicy, 1),
	ASN1_EXP_OPT(TPMKey, secret, ASN1_OCTET_STRING, 2),
	ASN1_EXP_SEQUENCE_OF_OPT(TPMKey, auth_policy, TPMAuthPolicy, 3),
	ASN1_EXP_OPT(TPMKey, description, ASN1_UTF8STRING, 4),
	ASN1_EXP_OPT(TPMKey, rsa_parent, ASN1_BOOLEAN, 5),
	ASN1_SIMPLE(TPMKey, parent, ASN1_INTEGER),
	ASN1_SIMPLE(TPMKey, pubkey, ASN1_OCTET_STRING),
	ASN1_SIMPLE(TPMKey, privkey, ASN1_OCTET_STRING),
} static_ASN1_SEQUENCE_END(TPMKey)

IMPLEMENT_STATIC_ASN1_ALLOC_FUNCTIONS(TPMKey)
IMPLEMENT_STATIC_ASN1_ENCODE_FUNCTIONS(TPMKey);
/* clang-format on */

/*
 * DER writes BOOLEAN TRUE as 0xff and FALSE as 0x00 (X.690 11.1). OpenSSL's decoder keeps any
 * content byte and its encoder writes that byte back, so the DER check does not see a BER TRUE.
 */
#define DER_TRUE 0xff

static bool
der_boolean(ASN1_BOOLEAN b)
{
	return b == -1 || b == 0 || b == DER_TRUE;
}

int
tpmkey_encode(const struct tpmkey *key, uint8_t **der, size_t *len)
{
	TPMKey *k;
	uint8_t *p;
	int n;

	*der = NULL;
	*len = 0;
	if (key->publen > TPMKEY_PART_MAX || key->privlen > TPMKEY_PART_MAX) {
		log_warnx("kstpm: cannot write a TSS2 key: its TPM structures are %zu and %zu "
		          "bytes, at most %d each",
		          key->publen, key->privlen, TPMKEY_PART_MAX);
		return -EINVAL;
	}
	/*
	 * OpenSSL's allocations, the only way these fail. TPMKey_new() made the mandatory fields
	 * (type as the empty OID); the optional ones are absent.
	 */
	k = TPMKey_new();
	if (!k)
		xalloc_failed("TPMKey_new");
	ASN1_OBJECT_free(k->type);
	k->type = OBJ_txt2obj(OID_LOADABLE_TEXT, 1);
	k->empty_auth = DER_TRUE;
	if (!k->type || !ASN1_INTEGER_set_uint64(k->parent, key->parent) ||
	    !ASN1_OCTET_STRING_set(k->pubkey, key->pub, (int)key->publen) ||
	    !ASN1_OCTET_STRING_set(k->privkey, key->priv, (int)key->privlen))
		xalloc_failed("building a TPMKey");
	/* With every field set, only an allocation inside OpenSSL can fail. */
	n = i2d_TPMKey(k, NULL);
	if (n <= 0)
		xalloc_failed("i2d_TPMKey");
	*der = p = xmalloc((size_t)n);
	if (i2d_TPMKey(k, &p) != n)
		xalloc_failed("i2d_TPMKey");
	*len = (size_t)n;
	TPMKey_free(k);
	return 0;
}

/*
 * In DER (X.690 10) and filling der exactly: d2i also takes BER (long or indefinite lengths,
 * constructed strings, non-minimal tags) and stops where its SEQUENCE ends. DER is the only
 * encoding of a value, so the input is DER when it is what the value decoded encodes to.
 */
static bool
is_der(const TPMKey *k, const uint8_t *der, size_t len, const uint8_t *end)
{
	uint8_t *again, *p;
	bool same;
	int n;

	if (end != der + len || !der_boolean(k->empty_auth) || !der_boolean(k->rsa_parent))
		return false;
	n = i2d_TPMKey(k, NULL);
	if (n <= 0 || (size_t)n != len)
		return false;
	p = again = xmalloc(len);
	same = i2d_TPMKey(k, &p) == n && memcmp(again, der, len) == 0;
	free(again);
	return same;
}

/* The refusals of a well-formed TPMKey that is not a key the keystore can load. */
static int
tpmkey_usable(const TPMKey *k)
{
	const uint8_t *oid = OBJ_get0_data(k->type);

	if ((size_t)OBJ_length(k->type) != sizeof(oid_tpmkey_prefix) + 1 ||
	    memcmp(oid, oid_tpmkey_prefix, sizeof(oid_tpmkey_prefix)) != 0) {
		log_warnx("kstpm: not a TSS2 key (unknown type OID)");
		return -ENOTSUP;
	}
	switch (oid[sizeof(oid_tpmkey_prefix)]) {
	case OID_LOADABLE:
		break;
	case OID_IMPORTABLE:
		log_warnx("kstpm: TSS2 key is importable, not loadable; import it into this TPM "
		          "first");
		return -ENOTSUP;
	case OID_SEALED:
		log_warnx("kstpm: TSS2 file holds sealed data, not a key");
		return -ENOTSUP;
	default:
		log_warnx("kstpm: not a TSS2 loadable key (unknown type OID)");
		return -ENOTSUP;
	}
	/*
	 * In the draft's order, as the code this replaced met them. emptyAuth absent is
	 * accepted: the draft makes it mean FALSE (3.1.2), but some tools leave it out of a key
	 * without a password. description and rsaParent (a label, and a flag that matters only
	 * for a parent made on the fly) are not looked at.
	 */
	if (k->empty_auth == 0) {
		log_warnx("kstpm: TSS2 key has a password (emptyAuth FALSE); the keystore supports "
		          "only password-less keys");
		return -ENOTSUP;
	}
	if (k->policy) {
		log_warnx("kstpm: TSS2 key needs an authorization policy; the keystore supports "
		          "only password-less keys without policies");
		return -ENOTSUP;
	}
	if (k->secret) {
		log_warnx("kstpm: TSS2 key carries an import secret; import it first");
		return -ENOTSUP;
	}
	if (k->auth_policy) {
		log_warnx("kstpm: TSS2 key needs an authorization policy; the keystore supports "
		          "only password-less keys without policies");
		return -ENOTSUP;
	}
	return 0;
}

int
tpmkey_decode(const uint8_t *der, size_t len, struct tpmkey *key)
{
	const uint8_t *p = der;
	TPMKey *k = NULL;
	uint64_t parent;
	int r = -EBADMSG;

	*key = (struct tpmkey){0};
	/* What d2i and the INTEGER's reading queue on failure is ours to drop, not the caller's. */
	ERR_set_mark();
	if (len > 0 && len <= INT_MAX)
		k = d2i_TPMKey(NULL, &p, (long)len);
	if (!k || !is_der(k, der, len, p))
		goto out;
	r = tpmkey_usable(k);
	if (r < 0)
		goto out;
	r = -EBADMSG;
	/* A TPM handle: a non-negative INTEGER of 32 bits at most. */
	if (!ASN1_INTEGER_get_uint64(&parent, k->parent) || parent > UINT32_MAX)
		goto out;
	/*
	 * der is the encoding of k byte for byte, and pubkey and privkey are its last two
	 * fields: their contents end it, each after its OCTET STRING header.
	 */
	key->parent = (uint32_t)parent;
	key->privlen = (size_t)ASN1_STRING_length(k->privkey);
	key->priv = der + len - key->privlen;
	key->publen = (size_t)ASN1_STRING_length(k->pubkey);
	key->pub = der + len - (size_t)ASN1_object_size(0, (int)key->privlen, V_ASN1_OCTET_STRING) -
	           key->publen;
	r = 0;
out:
	ERR_pop_to_mark();
	if (r == -EBADMSG)
		log_warnx("kstpm: malformed TSS2 key (not a DER TPMKey structure)");
	TPMKey_free(k);
	return r;
}
