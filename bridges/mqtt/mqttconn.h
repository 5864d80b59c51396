/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_MQTTCONN_H
#define GW_MQTTCONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

/*
 * One MQTT connection to the broker on the daemon's loop: a non-blocking TCP socket, an
 * OpenSSL SSL object, the MQTT framing and the keepalive. No threads: the socket and the
 * handshake's wait for a TPM signature (an OpenSSL async job, SSL_MODE_ASYNC, whose wait fd is
 * watched like a socket) are loop events (DESIGN.md decision 3). What the session means
 * (publishes, subscriptions, retries) is mqttbr.c's; this module moves packets.
 *
 * Also the TLS context that every connection of one upstream configuration shares: the CA
 * file is read once, not per connect.
 */

struct gw_loop;
struct mqttconn;
struct mqttcodec_packet;

/* Why a connection ended or never came up; words in mqttconn_end.text. */
enum mqttconn_fail {
	MQTTCONN_NETWORK,          /* no TCP, a timeout, the connection closed */
	MQTTCONN_BROKER_NAME,      /* the broker's certificate is not for its host name */
	MQTTCONN_BROKER_UNTRUSTED, /* ... does not verify against the CA file */
	MQTTCONN_DEVICE_REFUSED,   /* a TLS alert refusing our certificate */
	MQTTCONN_TLS,              /* another TLS failure */
	MQTTCONN_CONNACK,          /* CONNACK with a refusing reason code */
	MQTTCONN_PROTOCOL,         /* the broker broke the protocol (malformed packet, ...) */
	MQTTCONN_DISCONNECTED,     /* a DISCONNECT from the broker, or our own close */
};

struct mqttconn_end {
	enum mqttconn_fail kind;
	int reason;     /* the MQTT reason code (CONNACK, DISCONNECT), else 0 */
	char text[320]; /* what happened, for the log and gwctl, without the broker's name */
};

struct mqttconn_ops {
	/* CONNACK accepted the session; p is the CONNACK. */
	void (*up)(void *data, const struct mqttcodec_packet *p);
	/* Every packet after the CONNACK (PUBACK, PUBLISH, SUBACK, PINGRESP, ...). */
	void (*packet)(void *data, const struct mqttcodec_packet *p);
	/*
	 * The connection is over (failed before the CONNACK, lost, or closed by
	 * mqttconn_close()); the object is freed already. Not called after mqttconn_free().
	 */
	void (*ended)(void *data, const struct mqttconn_end *why);
	/*
	 * A resumable TLS session for the next connect (TLS 1.3 tickets come after the handshake,
	 * TLS 1.2 at its end). Return true to take the reference, false to have it freed.
	 */
	bool (*session)(void *data, SSL_SESSION *sess);
	/* The handshake asks for its signature now (signing), or is over (!signing). */
	void (*tls_step)(void *data, bool signing);
};

/* The TLS context of one upstream configuration; NULL alpn for none (wire format, RFC 7301). */
int mqttconn_ctx_new(SSL_CTX **out, const char *ca_file, const unsigned char *alpn,
                     unsigned alpn_len);

struct mqttconn_params {
	SSL_CTX *ctx;
	const struct sockaddr *addr;
	socklen_t addrlen;
	const char *host; /* SNI and the name the broker's certificate must carry */
	X509 *cert;
	STACK_OF(X509) * chain; /* intermediates after cert; may be NULL */
	EVP_PKEY *key;
	SSL_SESSION *session; /* to resume, or NULL; the connection takes its own reference */
	/* The whole CONNECT packet, sent once TLS is up (mqttcodec_connect()). */
	const uint8_t *connect;
	size_t connect_len;
	int version;
	uint16_t keepalive;  /* seconds; the broker's Server Keep Alive replaces it */
	uint32_t max_packet; /* what CONNECT announced: larger packets end the connection */
	unsigned timeout_ms; /* from the start until the CONNACK */
};

/*
 * Starts connecting. Returns 0 (ops then report) or -errno with nothing started (why filled).
 */
int mqttconn_open(struct mqttconn **out, struct gw_loop *loop, const struct mqttconn_params *p,
                  const struct mqttconn_ops *ops, void *data, struct mqttconn_end *why);

/* Queues bytes (whole packets) to send; -ENOTCONN once closing. */
int mqttconn_send(struct mqttconn *c, const uint8_t *buf, size_t len);
/* Bytes queued and not yet written: for the caller's own flow control. */
size_t mqttconn_queued(const struct mqttconn *c);
/* Whether the TLS handshake resumed a session (no signature was needed). */
bool mqttconn_resumed(const struct mqttconn *c);

/*
 * Sends what is queued, then TLS close_notify, and waits (at most timeout_ms) for the broker
 * to close; ops->ended then reports MQTTCONN_DISCONNECTED with text "closed".
 */
void mqttconn_close(struct mqttconn *c, unsigned timeout_ms);

/*
 * Drops the connection now; no more callbacks. A handshake paused on a TPM signature is let
 * finish in the background first (freeing a paused job leaks its stack, DESIGN.md 3).
 * Accepts NULL.
 */
void mqttconn_free(struct mqttconn *c);

/* Frees connections still waiting for a paused handshake, waiting at most timeout_ms. */
void mqttconn_reap(unsigned timeout_ms);

#endif
