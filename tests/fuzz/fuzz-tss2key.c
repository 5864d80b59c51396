/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness for the TSS2 key file decoder of keystore/kstpm.c and tpmkey.c (OpenSSL's
 * ASN.1 templates): the TPMKey of draft-bottomley-tpm2-keys (as tpm2-openssl and
 * openssl_tpm2_engine write it), in its "TSS2 PRIVATE KEY" PEM, and the TPM2B_PUBLIC and
 * TPM2B_PRIVATE inside (tpm2-tss's unmarshalling). Such a file comes from the disk of a store
 * (key.tss2.pem), from an operator or from another tool; no TPM command is sent to decode it. The
 * input is used three ways:
 *   - as DER, through kstpm_key_from_der();
 *   - as DER wrapped in a PEM block with the label, as a key file holds it, through
 *     kstpm_key_from_pem(): the same answer and the same key; with another label, -EINVAL;
 *   - as a key file's whole text, through kstpm_key_from_pem().
 * Any broken promise of kstpm.h aborts: the answer is 0, -EINVAL (PEM only), -EBADMSG or
 * -ENOTSUP; a key is handed out exactly on 0; an accepted key is a password-less P-256 ECC
 * signing key that neither decrypts nor is restricted, with an uncompressed point; accepted
 * DER is one element filling the input exactly (a byte less or more is refused).
 *
 * Seeds: a key as kstpm_create_key() writes one (kstpm's device key template, the P-256
 * base point as its public point, opaque private bytes of a real one's size, parent
 * 0x81000001) and each refusal of test-kstpm.c's key_from_der_refuses_bad_input, as DER and
 * as PEM text; BER that OpenSSL's d2i reads (ber-*), fields out of order, unknown or of another
 * type, policies, and keys tpm2-openssl and tpm2-tools wrote (test-tpmkey.c's cases).
 */
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdbool.h>
#include <stdint.h>

#include "fuzz.h"
#include "kstpm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* TPMA_OBJECT restricted (TPM 2.0 Part 2, 8.3); kstpm.h names the other bits. */
#define ATTR_RESTRICTED 0x00010000u

struct result {
	int r;
	uint32_t attributes, parent;
	uint8_t pub[KSTPM_P256_POINT_LEN];
};

/* What kstpm.h promises of any answer, and of an accepted key. */
static void
check_key(struct result *res, int r, struct kstpm_key *key, const uint8_t *pub, bool pem)
{
	check(r == 0 || r == -EBADMSG || r == -ENOTSUP || (pem && r == -EINVAL));
	check((r == 0) == (key != NULL));
	*res = (struct result){.r = r};
	if (!key)
		return;
	res->attributes = kstpm_key_attributes(key);
	res->parent = kstpm_key_parent(key);
	memcpy(res->pub, pub, KSTPM_P256_POINT_LEN);
	check(res->attributes & KSTPM_ATTR_SIGN);
	check(res->attributes & KSTPM_ATTR_USER_WITH_AUTH);
	check(!(res->attributes & (KSTPM_ATTR_DECRYPT | ATTR_RESTRICTED)));
	check(pub[0] == 0x04);
	kstpm_key_free(key);
}

/* Where the decoder must put NULL or a key: it starts as neither. */
static char unset;

static void
from_der(const uint8_t *der, size_t len, struct result *res)
{
	uint8_t pub[KSTPM_P256_POINT_LEN] = {0};
	struct kstpm_key *key = (struct kstpm_key *)&unset;
	int r = kstpm_key_from_der(der, len, &key, pub);

	check_key(res, r, key, pub, false);
}

static void
from_pem(const char *pem, size_t len, struct result *res)
{
	uint8_t pub[KSTPM_P256_POINT_LEN] = {0};
	struct kstpm_key *key = (struct kstpm_key *)&unset;
	int r = kstpm_key_from_pem(pem, len, &key, pub);

	check_key(res, r, key, pub, true);
}

static bool
same(const struct result *a, const struct result *b)
{
	return a->r == b->r && a->attributes == b->attributes && a->parent == b->parent &&
	       memcmp(a->pub, b->pub, sizeof(a->pub)) == 0;
}

/* der as a PEM block with label, in a malloc'd buffer (not NUL-terminated: ASan sees past). */
static char *
pem_of(const char *label, const uint8_t *der, size_t len, size_t *pemlen)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *data, *pem;
	long n;

	check(b);
	check(PEM_write_bio(b, label, "", der, (long)len) > 0);
	n = BIO_get_mem_data(b, &data);
	check(n > 0);
	pem = malloc((size_t)n);
	check(pem);
	memcpy(pem, data, (size_t)n);
	*pemlen = (size_t)n;
	BIO_free(b);
	return pem;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool ready;
	struct result der, other;
	char *pem;
	size_t pemlen;

	if (!ready) {
		fuzz_quiet_log("fuzz-tss2key");
		ready = true;
	}

	from_der(data, size, &der);
	if (der.r == 0) {
		uint8_t *more = malloc(size + 1);

		/* DER: the outer SEQUENCE's length is the input's, exactly. */
		from_der(data, size - 1, &other);
		check(other.r == -EBADMSG);
		check(more);
		memcpy(more, data, size);
		more[size] = 0;
		from_der(more, size + 1, &other);
		check(other.r == -EBADMSG);
		free(more);
	}
	/* The same answer twice: nothing is kept between calls. */
	from_der(data, size, &other);
	check(same(&der, &other));

	/* In a key file: the same key (OpenSSL writes no PEM block with an empty body). */
	if (size > 0) {
		pem = pem_of(KSTPM_PEM_LABEL, data, size, &pemlen);
		from_pem(pem, pemlen, &other);
		check(same(&der, &other));
		free(pem);
		pem = pem_of("TSS2 PUBLIC KEY", data, size, &pemlen);
		from_pem(pem, pemlen, &other);
		check(other.r == -EINVAL);
		free(pem);
	}

	/* The input as a key file's text. */
	from_pem((const char *)data, size, &other);
	ERR_clear_error();
	return 0;
}
