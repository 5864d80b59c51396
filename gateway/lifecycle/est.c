/* SPDX-License-Identifier: Apache-2.0 */
#include "est.h"
#include "enc.h"
#include "log.h"
#include "loop.h"
#include "xalloc.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

/* An EST answer is a few certificates; anything much larger is not one. */
#define MAX_ANSWER (256 * 1024)
/* A chain deeper than this is a loop or a mistake. */
#define MAX_CHAIN 8

struct est {
	struct gw_loop *loop;
	CURLM *multi;
	struct gw_timer *timer;
	char *url;
	char *ca_file;
	long timeout_ms;
	struct est_request *requests;
};

struct est_request {
	struct est *est;
	struct est_request *next;
	CURL *easy;
	struct curl_slist *headers;
	char *body;
	char *answer;
	size_t len;
	est_done_fn fn;
	void *data;
	char what[32]; /* "simpleenroll", for the messages */
	char errbuf[CURL_ERROR_SIZE];
	char why[64]; /* our own reason to abort, which curl's words would hide */
};

/* A PEM request as base64 DER, the body RFC 7030 section 4.2.1 asks for; malloc'd. */
static char *
csr_body(const char *csr_pem)
{
	BIO *b = BIO_new_mem_buf(csr_pem, -1);
	X509_REQ *req = b ? PEM_read_bio_X509_REQ(b, NULL, NULL, NULL) : NULL;
	unsigned char *der = NULL;
	char *out = NULL;
	int len = req ? i2d_X509_REQ(req, &der) : -1;

	if (len > 0)
		out = enc_base64(der, (size_t)len);
	OPENSSL_free(der);
	X509_REQ_free(req);
	BIO_free(b);
	ERR_clear_error();
	return out;
}

static char *
pem_of_certs(const STACK_OF(X509) * certs)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *data, *out = NULL;
	long len;

	if (!b)
		return NULL;
	for (int i = 0; i < sk_X509_num(certs); i++)
		PEM_write_bio_X509(b, sk_X509_value(certs, i));
	len = BIO_get_mem_data(b, &data);
	if (len > 0)
		out = xstrndup(data, (size_t)len);
	BIO_free(b);
	return out;
}

char *
est_certs_only(const char *body, size_t len)
{
	size_t derlen;
	unsigned char *der = enc_unbase64(body, len, &derlen);
	const unsigned char *p = der;
	PKCS7 *p7 = der ? d2i_PKCS7(NULL, &p, (long)derlen) : NULL;
	char *pem = NULL;

	if (p7 && PKCS7_type_is_signed(p7) && p7->d.sign && p7->d.sign->cert &&
	    sk_X509_num(p7->d.sign->cert) > 0)
		pem = pem_of_certs(p7->d.sign->cert);
	PKCS7_free(p7);
	free(der);
	ERR_clear_error();
	return pem;
}

static STACK_OF(X509) * read_certs(const char *pem, STACK_OF(X509) * into)
{
	BIO *b = pem ? BIO_new_mem_buf(pem, -1) : NULL;
	X509 *x;

	while (b && (x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
		if (!sk_X509_push(into, x))
			X509_free(x);
	}
	ERR_clear_error();
	BIO_free(b);
	return into;
}

int
est_chain(const char *certs, const char *pool, char **chain)
{
	STACK_OF(X509) *all = sk_X509_new_null(), *out = sk_X509_new_null();
	X509 *cur = NULL;
	int n, r = -EINVAL;

	/* NULL: OpenSSL's own allocation failed. */
	if (!all || !out) {
		r = -ENOMEM;
		goto done;
	}
	read_certs(certs, all);
	n = sk_X509_num(all);
	read_certs(pool, all);
	for (int i = 0; i < n && !cur; i++) {
		if (X509_check_ca(sk_X509_value(all, i)) == 0)
			cur = sk_X509_value(all, i);
	}
	if (!cur)
		goto done;
	sk_X509_push(out, cur);
	/* The broker holds the root; it needs the intermediates between it and the leaf. */
	for (int depth = 0; depth < MAX_CHAIN; depth++) {
		X509 *issuer = NULL;

		for (int i = 0; i < sk_X509_num(all) && !issuer; i++) {
			X509 *c = sk_X509_value(all, i);

			if (c != cur && X509_check_issued(c, cur) == X509_V_OK)
				issuer = c;
		}
		if (!issuer || X509_self_signed(issuer, 0) == 1)
			break;
		sk_X509_push(out, issuer);
		cur = issuer;
	}
	*chain = pem_of_certs(out);
	/* NULL: OpenSSL could not make its memory BIO, or write into it. */
	r = *chain ? 0 : -ENOMEM;
done:
	ERR_clear_error();
	sk_X509_free(out);
	sk_X509_pop_free(all, X509_free);
	return r;
}

/* ---- libcurl on the loop ---- */

static void
request_free(struct est_request *req)
{
	struct est *est = req->est;

	for (struct est_request **p = &est->requests; *p; p = &(*p)->next) {
		if (*p == req) {
			*p = req->next;
			break;
		}
	}
	curl_multi_remove_handle(est->multi, req->easy);
	curl_easy_cleanup(req->easy);
	curl_slist_free_all(req->headers);
	free(req->body);
	free(req->answer);
	free(req);
}

/* The first line of a text answer, printable and short: it goes into logs and gwctl. */
static void
answer_text(const struct est_request *req, char *out, size_t outlen)
{
	size_t n = 0;

	for (size_t i = 0; i < req->len && n + 1 < outlen && n < 200; i++) {
		char c = req->answer[i];

		if (c == '\r' || c == '\n') {
			if (n > 0)
				break;
			continue;
		}
		out[n++] = isprint((unsigned char)c) ? c : '?';
	}
	out[n] = '\0';
}

unsigned
est_retry_after(const char *value)
{
	char *end;
	unsigned long v;

	/*
	 * delay-seconds is 1*DIGIT. strtoul() also takes a sign, and would read "+60" as 60 and
	 * "-18446744073709551615" (minus ULONG_MAX) as 1.
	 */
	if (!isdigit((unsigned char)value[0]))
		return 0;
	v = strtoul(value, &end, 10);
	/* An HTTP-date instead of seconds: the caller's own schedule decides. */
	return *end == '\0' && v <= 86400 ? (unsigned)v : 0;
}

static unsigned
retry_after(CURL *easy)
{
	struct curl_header *h;

	/* libcurl strips the value's leading and trailing white space. */
	if (curl_easy_header(easy, "Retry-After", 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
		return 0;
	return est_retry_after(h->value);
}

/* Turns a finished transfer into a result. */
static void
judge(struct est_request *req, CURLcode code, struct est_result *res)
{
	const struct est *est = req->est;
	char text[256];
	char *type = NULL;

	curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &res->http);
	if (code != CURLE_OK) {
		res->status = code == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -EIO;
		snprintf(res->error, sizeof(res->error), "EST server %s: %s: %s", est->url,
		         req->why[0] ? req->why : curl_easy_strerror(code),
		         req->errbuf[0] ? req->errbuf : "no details");
		return;
	}
	answer_text(req, text, sizeof(text));
	curl_easy_getinfo(req->easy, CURLINFO_CONTENT_TYPE, &type);
	switch (res->http) {
	case 200:
		if (!type || strncasecmp(type, "application/pkcs7-mime", 22) != 0 ||
		    !(res->pem = est_certs_only(req->answer, req->len))) {
			res->status = -EBADMSG;
			snprintf(res->error, sizeof(res->error),
			         "EST server %s: the %s answer is not a base64 certs-only PKCS#7 "
			         "(Content-Type %s)",
			         est->url, req->what, type ? type : "none");
			return;
		}
		res->status = 0;
		return;
	case 202:
		res->status = -EAGAIN;
		res->retry_after = retry_after(req->easy);
		snprintf(res->error, sizeof(res->error),
		         "EST server %s: %s accepted, certificate not issued yet%s%s", est->url,
		         req->what, text[0] ? ": " : "", text);
		return;
	case 401:
	case 403:
		res->status = -EACCES;
		snprintf(res->error, sizeof(res->error), "EST server %s refused %s (HTTP %ld)%s%s",
		         est->url, req->what, res->http, text[0] ? ": " : "", text);
		return;
	default:
		res->status = -EPROTO;
		snprintf(res->error, sizeof(res->error),
		         "EST server %s: %s failed with HTTP %ld%s%s", est->url, req->what,
		         res->http, text[0] ? ": " : "", text);
	}
}

static void
collect_done(struct est *est)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(est->multi, &left))) {
		struct est_request *req = NULL;
		struct est_result res = {0};

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&req);
		judge(req, msg->data.result, &res);
		/* Freed first: the callback may start the next request. */
		est_done_fn fn = req->fn;
		void *data = req->data;

		request_free(req);
		fn(&res, data);
		free(res.pem);
	}
}

static void
socket_ready(int fd, uint32_t events, void *data)
{
	struct est *est = data;
	int flags = 0, running;

	if (events & EPOLLIN)
		flags |= CURL_CSELECT_IN;
	if (events & EPOLLOUT)
		flags |= CURL_CSELECT_OUT;
	if (events & (EPOLLERR | EPOLLHUP))
		flags |= CURL_CSELECT_ERR;
	curl_multi_socket_action(est->multi, fd, flags, &running);
	collect_done(est);
}

static int
on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct est *est = userp;
	uint32_t events = 0;

	(void)easy;
	if (what == CURL_POLL_REMOVE) {
		gw_loop_del_fd(est->loop, fd);
		curl_multi_assign(est->multi, fd, NULL);
		return 0;
	}
	if (what & CURL_POLL_IN)
		events |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		events |= EPOLLOUT;
	if (socketp)
		return gw_loop_mod_fd(est->loop, fd, events) < 0 ? -1 : 0;
	if (gw_loop_add_fd(est->loop, fd, events, socket_ready, est) < 0)
		return -1;
	/* Any non-NULL pointer: it marks the socket as watched. */
	curl_multi_assign(est->multi, fd, est);
	return 0;
}

static void
timer_fired(struct gw_timer *t, void *data)
{
	struct est *est = data;
	int running;

	(void)t;
	curl_multi_socket_action(est->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	collect_done(est);
}

static int
on_timer(CURLM *multi, long timeout_ms, void *userp)
{
	struct est *est = userp;

	(void)multi;
	if (timeout_ms < 0)
		gw_timer_disarm(est->timer);
	else
		gw_timer_arm(est->timer, (uint64_t)timeout_ms);
	return 0;
}

static size_t
on_data(char *p, size_t size, size_t n, void *data)
{
	struct est_request *req = data;

	n *= size;
	if (req->len + n > MAX_ANSWER) {
		snprintf(req->why, sizeof(req->why), "answer larger than %d bytes", MAX_ANSWER);
		return 0;
	}
	req->answer = xreallocarray(req->answer, req->len + n + 1, 1);
	memcpy(req->answer + req->len, p, n);
	req->len += n;
	req->answer[req->len] = '\0';
	return n;
}

static struct est_request *
start(struct est *est, const char *what, char *body, const char *cert_file, const char *key_file,
      est_done_fn fn, void *data)
{
	struct est_request *req = xcalloc(1, sizeof(*req));
	char url[1024];
	CURL *e;

	if (!(req->easy = e = curl_easy_init())) {
		free(req);
		free(body);
		return NULL;
	}
	*req = (struct est_request){.est = est, .easy = e, .body = body, .fn = fn, .data = data};
	snprintf(req->what, sizeof(req->what), "%s", what);
	snprintf(url, sizeof(url), "%s/%s", est->url, what);
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, req);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, est->timeout_ms);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, req->errbuf);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, req);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "gatewayd");
	/* The server: only the configured CA, and the URL's host name, over TLS 1.2 or later. */
	curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	curl_easy_setopt(e, CURLOPT_CAINFO, est->ca_file);
	curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
	/* Us: the gateway's certificate; its key file is read through the keystore's provider. */
	curl_easy_setopt(e, CURLOPT_SSLCERT, cert_file);
	curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
	curl_easy_setopt(e, CURLOPT_SSLKEY, key_file);
	curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
	if (body) {
		/* RFC 8951 section 3.2: the body is base64; the header is for older servers. */
		req->headers = curl_slist_append(NULL, "Content-Type: application/pkcs10");
		req->headers = curl_slist_append(req->headers, "Content-Transfer-Encoding: base64");
		/* No "Expect: 100-continue" round trip for a body of a few hundred bytes. */
		req->headers = curl_slist_append(req->headers, "Expect:");
		curl_easy_setopt(e, CURLOPT_HTTPHEADER, req->headers);
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
	}
	if ((body && !req->headers) || curl_multi_add_handle(est->multi, e) != CURLM_OK) {
		log_warnx("EST: cannot start %s", what);
		curl_easy_cleanup(e);
		curl_slist_free_all(req->headers);
		free(body);
		free(req);
		return NULL;
	}
	req->next = est->requests;
	est->requests = req;
	return req;
}

struct est_request *
est_cacerts(struct est *est, const char *cert_file, const char *key_file, est_done_fn fn,
            void *data)
{
	return start(est, "cacerts", NULL, cert_file, key_file, fn, data);
}

struct est_request *
est_enroll(struct est *est, bool renew, const char *csr_pem, const char *cert_file,
           const char *key_file, est_done_fn fn, void *data)
{
	char *body = csr_body(csr_pem);

	if (!body) {
		log_warnx("EST: the certificate request is not a PEM PKCS#10 request");
		return NULL;
	}
	return start(est, renew ? "simplereenroll" : "simpleenroll", body, cert_file, key_file, fn,
	             data);
}

void
est_cancel(struct est_request *req)
{
	if (req)
		request_free(req);
}

int
est_new(struct est **out, struct gw_loop *loop, const char *url, const char *ca_file, int timeout)
{
	struct est *est;
	size_t n;

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return -EIO;
	est = xcalloc(1, sizeof(*est));
	est->loop = loop;
	est->timeout_ms = (long)timeout * 1000;
	est->url = xstrdup(url);
	est->ca_file = xstrdup(ca_file);
	est->timer = gw_timer_new(loop, timer_fired, est);
	/* libcurl's allocation: NULL is its out of memory. */
	est->multi = curl_multi_init();
	if (!est->multi) {
		est_free(est);
		return -ENOMEM;
	}
	/* "https://host/.well-known/est/" and "…/est" name the same place. */
	n = strlen(est->url);
	while (n > 0 && est->url[n - 1] == '/')
		est->url[--n] = '\0';
	curl_multi_setopt(est->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
	curl_multi_setopt(est->multi, CURLMOPT_SOCKETDATA, est);
	curl_multi_setopt(est->multi, CURLMOPT_TIMERFUNCTION, on_timer);
	curl_multi_setopt(est->multi, CURLMOPT_TIMERDATA, est);
	*out = est;
	return 0;
}

void
est_free(struct est *est)
{
	if (!est)
		return;
	while (est->requests)
		request_free(est->requests);
	if (est->multi)
		curl_multi_cleanup(est->multi);
	gw_timer_free(est->timer);
	free(est->url);
	free(est->ca_file);
	free(est);
	curl_global_cleanup();
}
