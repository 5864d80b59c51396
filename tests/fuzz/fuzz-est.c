/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness for what an EST server sends (gateway/lifecycle/est.c through est.h,
 * base64 through gateway/base/enc.h): the input is at once a Retry-After value (up to its
 * first NUL), a base64 body and, encoded as the test EST server does (base64, a line break
 * every 76 characters), the DER of a PKCS#7.
 * Checked, as est.h promises: Retry-After gives its delay-seconds up to a day and 0 for
 * anything else; base64 decodes to exactly the bytes it encodes, and is refused otherwise;
 * a certs-only body gives exactly the certificates of its PKCS#7 (as OpenSSL reads the same
 * DER), and est_chain() builds from them a chain that starts at their end-entity certificate
 * and goes up by issuer. Any broken promise aborts.
 */
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "enc.h"
#include "est.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define check(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* est.c's bound on a chain's issuers, past the end-entity certificate. */
#define MAX_CHAIN 8

/* ---- Retry-After ---- */

/* RFC 9110 section 10.2.3: delay-seconds = 1*DIGIT; more than a day is not taken. */
static unsigned
model_retry_after(const char *v)
{
	unsigned long long n = 0;

	if (!*v)
		return 0;
	for (const char *c = v; *c; c++) {
		if (*c < '0' || *c > '9')
			return 0;
		if (n <= 86400)
			n = n * 10 + (unsigned)(*c - '0');
	}
	return n <= 86400 ? (unsigned)n : 0;
}

static void
retry_after(const uint8_t *data, size_t size)
{
	char *v = malloc(size + 1), date[64];
	struct tm tm;
	time_t t = 0;

	check(v);
	memcpy(v, data, size);
	v[size] = '\0';
	check(est_retry_after(v) == model_retry_after(v));
	free(v);
	/* The other form, an IMF-fixdate (RFC 9110 section 5.6.7): the caller decides. */
	memcpy(&t, data, size < sizeof(uint32_t) ? size : sizeof(uint32_t));
	check(gmtime_r(&t, &tm));
	check(strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm) > 0);
	check(est_retry_after(date) == 0);
}

/* ---- base64 ---- */

static bool
b64_symbol(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '+' || c == '/';
}

/*
 * in as text: it decodes if, white space left out, it is base64 with its padding (RFC 4648
 * section 4), to as many bytes as it encodes, and those bytes encode to it again (but for the
 * bits of its last symbol that no byte holds, RFC 4648 section 3.5).
 */
static void
base64_text(const uint8_t *data, size_t size)
{
	char *compact = malloc(size + 1), *again;
	size_t n = 0, pad = 0, outlen = 0;
	unsigned char *out;
	bool valid;

	check(compact);
	for (size_t i = 0; i < size; i++) {
		if (!isspace(data[i]))
			compact[n++] = (char)data[i];
	}
	while (pad < n && pad < 3 && compact[n - 1 - pad] == '=')
		pad++;
	valid = n > 0 && n % 4 == 0 && pad <= 2;
	for (size_t i = 0; valid && i < n - pad; i++)
		valid = b64_symbol(compact[i]);

	out = enc_unbase64((const char *)data, size, &outlen);
	check(!out == !valid);
	if (out) {
		check(outlen == n / 4 * 3 - pad);
		again = malloc(n + 1);
		check(again);
		check(EVP_EncodeBlock((unsigned char *)again, out, (int)outlen) == (int)n);
		for (size_t i = 0; i < n; i++)
			check(again[i] == compact[i] || (pad && i == n - pad - 1));
		free(again);
	}
	free(out);
	free(compact);
}

/* data as base64 with a line break every 76 characters, as the test EST server sends it. */
static char *
base64_lines(const uint8_t *data, size_t size)
{
	size_t n = (size + 2) / 3 * 4;
	char *flat = malloc(n + 1), *text = malloc(n + n / 76 + 2), *p = text;

	check(flat && text);
	check(EVP_EncodeBlock((unsigned char *)flat, data, (int)size) == (int)n);
	for (size_t i = 0; i < n; i += 76) {
		size_t k = n - i < 76 ? n - i : 76;

		memcpy(p, flat + i, k);
		p += k;
		*p++ = '\n';
	}
	*p = '\0';
	free(flat);
	return text;
}

/* ---- certificates ---- */

static STACK_OF(X509) * pem_certs(const char *pem)
{
	STACK_OF(X509) *sk = sk_X509_new_null();
	BIO *b = BIO_new_mem_buf(pem, -1);
	X509 *x;

	check(sk && b);
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)))
		check(sk_X509_push(sk, x));
	BIO_free(b);
	ERR_clear_error();
	return sk;
}

static bool
same_cert(X509 *a, X509 *b)
{
	unsigned char *da = NULL, *db = NULL;
	int la = i2d_X509(a, &da), lb = i2d_X509(b, &db);
	bool same = la > 0 && la == lb && memcmp(da, db, (size_t)la) == 0;

	OPENSSL_free(da);
	OPENSSL_free(db);
	return same;
}

static bool
holds(STACK_OF(X509) * sk, X509 *x)
{
	for (int i = 0; i < sk_X509_num(sk); i++) {
		if (same_cert(sk_X509_value(sk, i), x))
			return true;
	}
	return false;
}

/*
 * est_chain() over the certificates of an answer: their end-entity certificate (the first),
 * then each certificate's issuer among them, never a self-signed one.
 */
static void
chain_of(const char *pem, STACK_OF(X509) * certs)
{
	STACK_OF(X509) * got;
	X509 *leaf = NULL;
	char *chain = NULL;
	int r = est_chain(pem, NULL, &chain);

	for (int i = 0; i < sk_X509_num(certs) && !leaf; i++) {
		if (X509_check_ca(sk_X509_value(certs, i)) == 0)
			leaf = sk_X509_value(certs, i);
	}
	check(r == (leaf ? 0 : -EINVAL));
	if (r < 0)
		return;
	got = pem_certs(chain);
	check(sk_X509_num(got) >= 1 && sk_X509_num(got) <= 1 + MAX_CHAIN);
	check(same_cert(sk_X509_value(got, 0), leaf));
	for (int i = 1; i < sk_X509_num(got); i++) {
		X509 *c = sk_X509_value(got, i);

		check(holds(certs, c));
		check(X509_check_issued(c, sk_X509_value(got, i - 1)) == X509_V_OK);
		check(X509_self_signed(c, 0) != 1);
	}
	ERR_clear_error();
	sk_X509_pop_free(got, X509_free);
	free(chain);
}

/* The PEM of a body that was taken: certificates, each a whole one, and their chain. */
static STACK_OF(X509) * answer_certs(const char *pem)
{
	STACK_OF(X509) *sk = pem_certs(pem);

	check(sk_X509_num(sk) >= 1);
	chain_of(pem, sk);
	return sk;
}

/* data as the body of an answer: taken only if it is base64. */
static void
body_text(const uint8_t *data, size_t size)
{
	char *pem = est_certs_only((const char *)data, size);
	size_t n;
	unsigned char *der;

	if (!pem)
		return;
	der = enc_unbase64((const char *)data, size, &n);
	check(der);
	free(der);
	sk_X509_pop_free(answer_certs(pem), X509_free);
	free(pem);
}

/*
 * data as the DER of a PKCS#7, sent base64: decoded back exactly, and taken if, and with the
 * certificates that, OpenSSL reads in the same DER.
 */
static void
body_der(const uint8_t *data, size_t size)
{
	char *text = base64_lines(data, size), *pem;
	const unsigned char *p = data;
	PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)size);
	STACK_OF(X509) *want = NULL, *got;
	unsigned char *der;
	size_t n = 0;

	ERR_clear_error();
	der = enc_unbase64(text, strlen(text), &n);
	check(!der == (size == 0));
	check(n == size && (size == 0 || memcmp(der, data, size) == 0));
	free(der);

	if (p7 && PKCS7_type_is_signed(p7) && p7->d.sign && p7->d.sign->cert &&
	    sk_X509_num(p7->d.sign->cert) > 0)
		want = p7->d.sign->cert;
	pem = est_certs_only(text, strlen(text));
	check(!pem == !want);
	if (pem) {
		got = answer_certs(pem);
		check(sk_X509_num(got) == sk_X509_num(want));
		for (int i = 0; i < sk_X509_num(got); i++)
			check(same_cert(sk_X509_value(got, i), sk_X509_value(want, i)));
		sk_X509_pop_free(got, X509_free);
	}
	free(pem);
	PKCS7_free(p7);
	free(text);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	retry_after(data, size);
	base64_text(data, size);
	body_text(data, size);
	body_der(data, size);
	ERR_clear_error();
	return 0;
}
