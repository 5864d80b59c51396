/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_EST_H
#define GW_EST_H

#include <stdbool.h>
#include <stddef.h>

/*
 * An EST client (RFC 7030, with the clarifications of RFC 8951): /cacerts, /simpleenroll and
 * /simplereenroll over HTTPS, with libcurl's multi interface driven by the daemon's loop, so
 * that an enrolment never blocks the sessions. The gateway authenticates with its own
 * certificate and key (TPM-backed through the keystore's provider) and enrols on behalf of its
 * devices. The server's certificate must chain to the configured CA and carry the URL's host
 * name; the system trust store is not used.
 */

struct gw_loop;
struct est;
struct est_request;

struct est_result {
	/*
	 * 0: certificates in pem. -EAGAIN: the server will answer later (retry_after);
	 * -EACCES: the server refused; -ETIMEDOUT; -EBADMSG: an answer that is not EST; other
	 * -errno. The reason is in error, in words.
	 */
	int status;
	long http;            /* the HTTP status, 0 if none came */
	unsigned retry_after; /* seconds, for -EAGAIN */
	char *pem;            /* the certificates of the answer, in its order */
	char error[512];
};

typedef void (*est_done_fn)(const struct est_result *res, void *data);

/* url: https://host[:port]/.well-known/est[/label]. timeout: seconds for one request. */
int est_new(struct est **out, struct gw_loop *loop, const char *url, const char *ca_file,
            int timeout);
/* Cancels the requests in flight (their callbacks are not called). Accepts NULL. */
void est_free(struct est *est);

/*
 * Starts a request, authenticated with cert_file and key_file. fn is called once, from the
 * loop, unless the request is cancelled; it may start other requests but not free est.
 * Returns NULL (logged) if the request cannot start.
 */
struct est_request *est_cacerts(struct est *est, const char *cert_file, const char *key_file,
                                est_done_fn fn, void *data);
/* renew: /simplereenroll, for a device that has a certificate; otherwise /simpleenroll. */
struct est_request *est_enroll(struct est *est, bool renew, const char *csr_pem,
                               const char *cert_file, const char *key_file, est_done_fn fn,
                               void *data);
void est_cancel(struct est_request *req);

/*
 * The chain a device presents: the end-entity certificate of certs, then its issuers found in
 * certs or pool (the /cacerts answer), up to and without the self-signed root. *chain is
 * malloc'd PEM. -EINVAL if certs holds no end-entity certificate.
 */
int est_chain(const char *certs, const char *pool, char **chain);

/*
 * The readers of what an EST server sends, used by the client above; pure (no I/O, no state),
 * so that tests/fuzz can reach them.
 */

/*
 * The certificates of a base64 certs-only PKCS#7 body (RFC 7030 section 4.1.3) as PEM, in its
 * order, malloc'd; NULL if the body is not one or holds no certificate.
 */
char *est_certs_only(const char *body, size_t len);
/*
 * A Retry-After header's value (RFC 9110 section 10.2.3) as seconds to wait: its delay-seconds,
 * up to a day; 0 for anything else, an HTTP-date included (the caller's own schedule decides).
 */
unsigned est_retry_after(const char *value);

#endif
