/* SPDX-License-Identifier: Apache-2.0 */
#include "mqttconn.h"
#include "log.h"
#include "loop.h"
#include "mqttcodec.h"
#include "xalloc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <openssl/async.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

/* A wait for async fds of one job: OpenSSL's own engines use one, our provider one. */
#define MAX_ASYNC_FDS 4
/* Read in steps of this much; the buffer is dropped again when it holds no partial packet. */
#define READ_STEP 4096
/* What a PINGRESP may take, after the PINGREQ, before the connection counts as dead. */
#define PING_GRACE_MIN_MS 5000

enum state {
	ST_TCP,     /* connect() in progress */
	ST_TLS,     /* handshake, possibly paused on a signature */
	ST_CONNACK, /* CONNECT sent */
	ST_UP,
	ST_CLOSING, /* close_notify sent or pending, waiting for the broker to close */
	ST_DOOMED,  /* freed by the owner, waiting for a paused job to finish */
};

struct mqttconn {
	struct gw_loop *loop;
	const struct mqttconn_ops *ops;
	void *data;
	enum state state;
	int fd;
	uint32_t watching; /* epoll events asked for on fd */
	SSL *ssl;
	int async_fds[MAX_ASYNC_FDS];
	size_t nasync;
	bool signing; /* the handshake asked for its signature */
	bool resumed;
	int version;
	uint32_t max_packet;
	unsigned keepalive_ms;
	bool ping_out;
	uint64_t last_sent, ping_sent;
	struct gw_timer *timer; /* connect deadline, keepalive, close deadline */
	/* Writes what was queued during the loop's turn, once, at its end (mqttconn_send). */
	struct gw_deferred *flush_soon;
	uint8_t *in;
	size_t inlen, incap;
	uint8_t *out;
	size_t outoff, outlen, outcap;
	/* SSL_write wanted to read first (a TLS 1.3 key update in flight). */
	bool write_wants_read;
	/* The CONNECT to send once TLS is up. */
	uint8_t *connect;
	size_t connect_len;
	/* Callbacks in progress, and whether the owner let go meanwhile (freed after them). */
	unsigned busy;
	bool freed;
	/* A write failed where the owner cannot hear of it at once: told from the timer. */
	bool failed;
	struct mqttconn_end failure;
	struct mqttconn *next_doomed;
};

/* Connections freed while a handshake job was paused: they finish, then go. */
static struct mqttconn *doomed;

static void conn_destroy(struct mqttconn *c);
static void idle_buffers(struct mqttconn *c);
static void conn_release(struct mqttconn *c);
static void tls_step(struct mqttconn *c);
static void flush(struct mqttconn *c);

/* Every entry from the loop brackets its work so that a callback may free c meanwhile. */
static void
enter(struct mqttconn *c)
{
	c->busy++;
}

static void
leave(struct mqttconn *c)
{
	if (--c->busy == 0 && c->freed)
		conn_release(c);
}

static int
watch(struct mqttconn *c, uint32_t events)
{
	if (events == c->watching)
		return 0;
	c->watching = events;
	return gw_loop_mod_fd(c->loop, c->fd, events);
}

/* OpenSSL's error queue in words, "; " between entries; emptied. */
static void
openssl_errors(char *buf, size_t len)
{
	unsigned long e;
	size_t used = strlen(buf);

	while ((e = ERR_get_error()) != 0) {
		char one[256];

		ERR_error_string_n(e, one, sizeof(one));
		if (used + strlen(one) + 3 >= len)
			continue;
		used += (size_t)snprintf(buf + used, len - used, "%s%s", used ? "; " : "", one);
	}
}

/*
 * A TLS alert the broker sent, as OpenSSL records it (SSL_R_SSLV3_ALERT_* and
 * SSL_R_TLSV1_ALERT_* are SSL_AD_REASON_OFFSET plus the alert number, RFC 8446 section 6.2):
 * the alert number, or -1. Peeked, not consumed.
 */
static int
alert_received(void)
{
	unsigned long e;
	const char *file, *func, *data;
	int line, flags, alert = -1;

	while ((e = ERR_peek_error_all(&file, &line, &func, &data, &flags)) != 0) {
		int reason = ERR_GET_REASON(e);

		if (ERR_GET_LIB(e) == ERR_LIB_SSL && reason > SSL_AD_REASON_OFFSET &&
		    reason < SSL_AD_REASON_OFFSET + 256)
			alert = reason - SSL_AD_REASON_OFFSET;
		/* Look past it: an alert is usually the last error queued. */
		ERR_get_error();
	}
	return alert;
}

/* The alerts by which a broker refuses the client's certificate (RFC 8446 section 6.2). */
static bool
refusing_alert(int alert)
{
	switch (alert) {
	case SSL3_AD_BAD_CERTIFICATE:
	case SSL3_AD_UNSUPPORTED_CERTIFICATE:
	case SSL3_AD_CERTIFICATE_REVOKED:
	case SSL3_AD_CERTIFICATE_EXPIRED:
	case SSL3_AD_CERTIFICATE_UNKNOWN:
	case TLS1_AD_UNKNOWN_CA:
	case TLS1_AD_ACCESS_DENIED:
	case TLS13_AD_CERTIFICATE_REQUIRED:
		return true;
	default:
		return false;
	}
}

/*
 * A failed TLS operation in words and kind: the broker's certificate as the verification
 * judged it (expired, wrong purpose, not a CA, ...: X509_verify_cert_error_string), an alert
 * refusing ours, or OpenSSL's error queue. Drains the queue.
 */
static void
describe_tls_failure(struct mqttconn *c, int err, struct mqttconn_end *why)
{
	long vr = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
	char errors[256] = "";
	int alert;

	why->reason = 0;
	if (vr != X509_V_OK && err == SSL_ERROR_SSL) {
		ERR_clear_error();
		why->kind = vr == X509_V_ERR_HOSTNAME_MISMATCH ? MQTTCONN_BROKER_NAME
		                                               : MQTTCONN_BROKER_UNTRUSTED;
		snprintf(why->text, sizeof(why->text), "%s (X509 error %ld)",
		         X509_verify_cert_error_string(vr), vr);
		return;
	}
	alert = alert_received();
	if (alert >= 0) {
		why->kind = refusing_alert(alert) ? MQTTCONN_DEVICE_REFUSED : MQTTCONN_TLS;
		snprintf(why->text, sizeof(why->text), "TLS alert from the broker: %s",
		         SSL_alert_desc_string_long(alert));
		return;
	}
	if (err == SSL_ERROR_SYSCALL || err == SSL_ERROR_ZERO_RETURN) {
		why->kind = MQTTCONN_NETWORK;
		snprintf(why->text, sizeof(why->text), "%s",
		         errno && err == SSL_ERROR_SYSCALL ? strerror(errno)
		                                           : "the broker closed the connection");
		ERR_clear_error();
		return;
	}
	openssl_errors(errors, sizeof(errors));
	why->kind = MQTTCONN_TLS;
	snprintf(why->text, sizeof(why->text), "TLS failed: %s", errors[0] ? errors : "unknown");
}

/* Ends the connection: the owner hears why, then the object is gone. */
static void
conn_end(struct mqttconn *c, const struct mqttconn_end *why)
{
	const struct mqttconn_ops *ops = c->ops;
	void *data = c->data;
	struct mqttconn_end copy = *why;

	mqttconn_free(c);
	ops->ended(data, &copy);
}

static void conn_fail(struct mqttconn *c, enum mqttconn_fail kind, int reason, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

static void
conn_fail(struct mqttconn *c, enum mqttconn_fail kind, int reason, const char *fmt, ...)
{
	struct mqttconn_end why = {.kind = kind, .reason = reason};
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why.text, sizeof(why.text), fmt, ap);
	va_end(ap);
	conn_end(c, &why);
}

/* Brings the loop's watches in line with the job's wait fds after each handshake step. */
static void on_async(int fd, uint32_t events, void *data);

static void
sync_async_fds(struct mqttconn *c)
{
	OSSL_ASYNC_FD fds[MAX_ASYNC_FDS];
	size_t n = 0;

	if (c->ssl && (!SSL_get_all_async_fds(c->ssl, NULL, &n) || n > MAX_ASYNC_FDS ||
	               !SSL_get_all_async_fds(c->ssl, fds, &n)))
		n = 0;
	if (!c->ssl)
		n = 0;
	for (size_t i = 0; i < c->nasync;) {
		bool keep = false;

		for (size_t j = 0; j < n; j++)
			keep |= fds[j] == c->async_fds[i];
		if (keep) {
			i++;
			continue;
		}
		gw_loop_del_fd(c->loop, c->async_fds[i]);
		c->async_fds[i] = c->async_fds[--c->nasync];
	}
	for (size_t j = 0; j < n; j++) {
		bool have = false;

		for (size_t i = 0; i < c->nasync; i++)
			have |= fds[j] == c->async_fds[i];
		if (have)
			continue;
		if (gw_loop_add_fd(c->loop, fds[j], EPOLLIN, on_async, c) == 0)
			c->async_fds[c->nasync++] = fds[j];
		else
			log_warnx("mqtt: cannot watch a TLS job's wait fd");
	}
}

static void
arm_keepalive(struct mqttconn *c)
{
	if (c->keepalive_ms)
		gw_timer_arm(c->timer, c->ping_out ? c->keepalive_ms / 2 : c->keepalive_ms);
}

static void
handshake_done(struct mqttconn *c)
{
	c->resumed = SSL_session_reused(c->ssl);
	/* Reads and writes need no job: each would cost a context switch (DESIGN.md 3). */
	SSL_clear_mode(c->ssl, SSL_MODE_ASYNC);
	sync_async_fds(c);
	if (c->ops->tls_step)
		c->ops->tls_step(c->data, false);
	c->state = ST_CONNACK;
	if (mqttconn_send(c, c->connect, c->connect_len) < 0)
		return; /* ended */
	free(c->connect);
	c->connect = NULL;
}

static void
tls_step(struct mqttconn *c)
{
	int r, err;

	ERR_clear_error();
	errno = 0;
	r = SSL_do_handshake(c->ssl);
	if (r == 1) {
		watch(c, EPOLLIN);
		handshake_done(c);
		return;
	}
	err = SSL_get_error(c->ssl, r);
	switch (err) {
	case SSL_ERROR_WANT_READ:
		sync_async_fds(c);
		watch(c, EPOLLIN);
		return;
	case SSL_ERROR_WANT_WRITE:
		sync_async_fds(c);
		watch(c, EPOLLOUT);
		return;
	case SSL_ERROR_WANT_ASYNC:
		/* The socket waits with the job: nothing to read before the signature goes. */
		watch(c, 0);
		sync_async_fds(c);
		if (!c->signing) {
			c->signing = true;
			if (c->ops->tls_step)
				c->ops->tls_step(c->data, true);
		}
		return;
	default: {
		struct mqttconn_end why = {0};

		describe_tls_failure(c, err, &why);
		conn_end(c, &why);
		return;
	}
	}
}

static void
doomed_step(struct mqttconn *c)
{
	/* Let the paused job run to its end; what it did no longer matters. */
	ERR_set_mark();
	SSL_do_handshake(c->ssl);
	ERR_pop_to_mark();
	if (SSL_waiting_for_async(c->ssl)) {
		sync_async_fds(c);
		return;
	}
	for (struct mqttconn **p = &doomed; *p; p = &(*p)->next_doomed) {
		if (*p == c) {
			*p = c->next_doomed;
			break;
		}
	}
	conn_destroy(c);
}

static void
on_async(int fd, uint32_t events, void *data)
{
	struct mqttconn *c = data;

	(void)fd;
	(void)events;
	if (c->state == ST_DOOMED) {
		doomed_step(c);
		return;
	}
	enter(c);
	if (c->state == ST_TLS)
		tls_step(c);
	leave(c);
}

static void protocol_error(struct mqttconn *c, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

/* The broker broke the protocol: DISCONNECT 0x82 (MQTT 5.0 section 4.13), then the end. */
static void
protocol_error(struct mqttconn *c, const char *fmt, ...)
{
	struct mqttconn_end why = {.kind = MQTTCONN_PROTOCOL,
	                           .reason = MQTTCODEC_RC_PROTOCOL_ERROR};
	uint8_t pkt[8];
	int len = mqttcodec_disconnect(pkt, sizeof(pkt), c->version, MQTTCODEC_RC_PROTOCOL_ERROR);
	va_list ap;

	if (c->state == ST_UP && len > 0 && (size_t)len <= sizeof(pkt))
		SSL_write(c->ssl, pkt, len);
	va_start(ap, fmt);
	vsnprintf(why.text, sizeof(why.text), fmt, ap);
	va_end(ap);
	conn_end(c, &why);
}

/* The packets of a live connection, as they arrive. */
static void
handle_packet(struct mqttconn *c, const struct mqttcodec_packet *p)
{
	char name[32];

	c->ping_out = false;
	switch (c->state) {
	case ST_CONNACK:
		if (p->type != MQTTCODEC_CONNACK) {
			protocol_error(c, "the broker sent packet type %d before its CONNACK",
			               p->type);
			return;
		}
		if (p->reason != 0) {
			conn_fail(c, MQTTCONN_CONNACK, p->reason,
			          "the broker refused the connection: %s",
			          mqttcodec_reason_name(p->reason, name, sizeof(name)));
			return;
		}
		c->state = ST_UP;
		gw_timer_disarm(c->timer);
		/* MQTT 5.0 section 3.2.2.3.14: the broker's keep alive is the one to use. */
		if (p->props.has_server_keepalive)
			c->keepalive_ms = (unsigned)p->props.server_keepalive * 1000;
		arm_keepalive(c);
		c->ops->up(c->data, p);
		return;
	case ST_UP:
		if (p->type == MQTTCODEC_CONNACK) {
			protocol_error(c, "the broker sent a second CONNACK");
			return;
		}
		/*
		 * The client asks for QoS 1 at most and never for enhanced authentication: QoS 2
		 * flows and AUTH are protocol errors here (MQTT 5.0 3.3.1.2, 4.12).
		 */
		if (p->type == MQTTCODEC_AUTH || p->type == MQTTCODEC_PUBREC ||
		    p->type == MQTTCODEC_PUBREL || p->type == MQTTCODEC_PUBCOMP ||
		    (p->type == MQTTCODEC_PUBLISH && p->qos > 1)) {
			protocol_error(c, "packet type %d, which the gateway never asked for",
			               p->type);
			return;
		}
		if (p->type == MQTTCODEC_DISCONNECT) {
			conn_fail(c, MQTTCONN_DISCONNECTED, p->reason,
			          "the broker disconnected: %s",
			          mqttcodec_reason_name(p->reason, name, sizeof(name)));
			return;
		}
		c->ops->packet(c->data, p);
		return;
	default:
		return; /* closing: what still arrives is dropped */
	}
}

/* Decodes what is buffered; false once the connection ended or its owner let go. */
static bool
decode_buffered(struct mqttconn *c)
{
	size_t off = 0;

	while (off < c->inlen && !c->freed) {
		struct mqttcodec_packet p;
		int n = mqttcodec_decode(c->in + off, c->inlen - off, c->version, c->max_packet,
		                         &p);

		if (n == 0)
			break;
		if (n < 0) {
			/* MQTT 5.0 section 4.13: a malformed packet or protocol error ends it. */
			int reason = n == -EMSGSIZE ? MQTTCODEC_RC_PACKET_TOO_LARGE
			                            : MQTTCODEC_RC_MALFORMED;
			uint8_t pkt[8];
			int len = mqttcodec_disconnect(pkt, sizeof(pkt), c->version, reason);

			if (c->state == ST_UP && len > 0 && (size_t)len <= sizeof(pkt))
				SSL_write(c->ssl, pkt, len);
			conn_fail(c, MQTTCONN_PROTOCOL, reason, "%s from the broker",
			          n == -EMSGSIZE ? "a packet larger than the gateway announced"
			                         : "a malformed packet");
			return false;
		}
		off += (size_t)n;
		handle_packet(c, &p);
	}
	if (c->freed)
		return false;
	memmove(c->in, c->in + off, c->inlen - off);
	c->inlen -= off;
	return true;
}

static void
do_read(struct mqttconn *c)
{
	for (;;) {
		int r, err;

		if (c->incap - c->inlen < READ_STEP) {
			size_t cap = c->incap ? c->incap * 2 : READ_STEP;

			while (cap - c->inlen < READ_STEP)
				cap *= 2;
			c->in = xreallocarray(c->in, cap, sizeof(*c->in));
			c->incap = cap;
		}
		ERR_clear_error();
		errno = 0;
		r = SSL_read(c->ssl, c->in + c->inlen, (int)(c->incap - c->inlen));
		if (r > 0) {
			c->inlen += (size_t)r;
			if (c->state == ST_CLOSING)
				c->inlen = 0; /* after our DISCONNECT nothing matters */
			else if (!decode_buffered(c))
				return;
			/* Nothing more held by OpenSSL: the socket's next bytes wake the loop. */
			if (!SSL_has_pending(c->ssl))
				break;
			continue;
		}
		err = SSL_get_error(c->ssl, r);
		if (err == SSL_ERROR_WANT_READ)
			break;
		if (err == SSL_ERROR_WANT_WRITE) {
			watch(c, EPOLLIN | EPOLLOUT);
			break;
		}
		if (c->state == ST_CLOSING) {
			ERR_clear_error();
			conn_fail(c, MQTTCONN_DISCONNECTED, 0, "closed");
			return;
		}
		struct mqttconn_end why = {0};

		describe_tls_failure(c, err, &why);
		if (why.kind == MQTTCONN_NETWORK && c->state == ST_UP)
			snprintf(why.text, sizeof(why.text), "the broker closed the connection");
		conn_end(c, &why);
		return;
	}
	/* Nothing partial held: give the memory back while the session is idle. */
	if (c->inlen == 0) {
		free(c->in);
		c->in = NULL;
		c->incap = 0;
	}
	idle_buffers(c);
	if (c->write_wants_read) {
		c->write_wants_read = false;
		flush(c);
	}
}

/*
 * OpenSSL's 16 KiB record buffers, freed whenever nothing is in them: a read that ends in
 * WANT_READ keeps its buffer although SSL_MODE_RELEASE_BUFFERS is set (measured: 16 of 37 KiB
 * per connected device with 1,000 idle sessions).
 */
static void
idle_buffers(struct mqttconn *c)
{
	if (c->state >= ST_CONNACK && c->state <= ST_UP && mqttconn_queued(c) == 0)
		SSL_free_buffers(c->ssl);
}

static void
shutdown_tls(struct mqttconn *c)
{
	ERR_set_mark();
	SSL_shutdown(c->ssl);
	ERR_pop_to_mark();
	/* The broker closes after DISCONNECT; reading on until then keeps our bytes from a RST. */
	watch(c, EPOLLIN);
}

static void
flush(struct mqttconn *c)
{
	while (c->outoff < c->outlen) {
		int r, err;

		ERR_clear_error();
		errno = 0;
		r = SSL_write(c->ssl, c->out + c->outoff, (int)(c->outlen - c->outoff));
		if (r > 0) {
			c->outoff += (size_t)r;
			c->last_sent = gw_now_ms();
			continue;
		}
		err = SSL_get_error(c->ssl, r);
		if (err == SSL_ERROR_WANT_WRITE) {
			watch(c, EPOLLIN | EPOLLOUT);
			return;
		}
		if (err == SSL_ERROR_WANT_READ) {
			c->write_wants_read = true;
			watch(c, EPOLLIN);
			return;
		}
		struct mqttconn_end why = {0};

		describe_tls_failure(c, err, &why);
		conn_end(c, &why);
		return;
	}
	free(c->out);
	c->out = NULL;
	c->outoff = c->outlen = c->outcap = 0;
	if (c->state == ST_CLOSING) {
		shutdown_tls(c);
	} else {
		watch(c, EPOLLIN);
		idle_buffers(c);
	}
}

static void
tcp_connected(struct mqttconn *c)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		conn_fail(c, MQTTCONN_NETWORK, 0, "cannot connect: %s", strerror(err));
		return;
	}
	c->state = ST_TLS;
	tls_step(c);
}

/*
 * While connecting, what the broker sent is acknowledged at once, not after Linux's delayed ACK
 * (up to 40 ms): a broker that leaves Nagle on (mosquitto's default, set_tcp_nodelay false)
 * holds its next small write until that ACK, which cost about 40 ms per connect (measured with
 * tests/bench/on-demand.sh: a reading from an idled-out device 54 ms, 12 ms without Nagle).
 * Setting TCP_QUICKACK sends an ACK that is pending; Linux clears the mode again by itself.
 */
static void
ack_now(const struct mqttconn *c)
{
	int one = 1;

	if (c->state == ST_TLS || c->state == ST_CONNACK)
		setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
}

static void
on_fd(int fd, uint32_t events, void *data)
{
	struct mqttconn *c = data;

	(void)fd;
	enter(c);
	switch (c->state) {
	case ST_TCP:
		tcp_connected(c);
		break;
	case ST_TLS:
		/*
		 * Waiting for the signature, the socket is not watched, but epoll reports a hang-up
		 * all the same, and would again at once: the broker gave up on the handshake.
		 */
		if (SSL_waiting_for_async(c->ssl)) {
			if (events & (EPOLLHUP | EPOLLERR))
				conn_fail(c, MQTTCONN_NETWORK, 0,
				          "the broker closed the connection during the handshake");
			break;
		}
		tls_step(c);
		break;
	case ST_CONNACK:
	case ST_UP:
	case ST_CLOSING:
		if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
			do_read(c);
		if (!c->freed && (events & EPOLLOUT))
			flush(c);
		break;
	case ST_DOOMED:
		break;
	}
	if (!c->freed)
		ack_now(c);
	leave(c);
}

static void
on_flush_soon(void *data)
{
	struct mqttconn *c = data;

	enter(c);
	/*
	 * A write already waiting for room in the socket (EPOLLOUT) or for a read (a TLS key
	 * update) goes on when epoll says that has come: trying now would only fail again.
	 */
	if (!c->freed && (c->state == ST_CONNACK || c->state == ST_UP) &&
	    !(c->watching & EPOLLOUT) && !c->write_wants_read && mqttconn_queued(c) > 0)
		flush(c);
	leave(c);
}

static void
on_timer(struct gw_timer *t, void *data)
{
	struct mqttconn *c = data;
	uint64_t now = gw_now_ms();

	(void)t;
	enter(c);
	if (c->failed) {
		conn_end(c, &c->failure);
	} else if (c->state == ST_CLOSING) {
		conn_fail(c, MQTTCONN_DISCONNECTED, 0, "closed");
	} else if (c->state != ST_UP) {
		conn_fail(c, MQTTCONN_NETWORK, 0, "%s",
		          c->state == ST_TCP   ? "TCP connect timed out"
		          : c->state == ST_TLS ? "TLS handshake timed out"
		                               : "no CONNACK in time");
	} else if (c->ping_out) {
		conn_fail(c, MQTTCONN_NETWORK, 0, "no answer to PINGREQ within %u ms",
		          (unsigned)(now - c->ping_sent));
	} else if (now - c->last_sent + 50 >= c->keepalive_ms) {
		uint8_t ping[2];

		/* MQTT 5.0 section 3.1.2.10: something must go within the keep alive. */
		mqttcodec_pingreq(ping, sizeof(ping));
		c->ping_out = true;
		c->ping_sent = now;
		mqttconn_send(c, ping, sizeof(ping));
		gw_timer_arm(c->timer, c->keepalive_ms / 2 > PING_GRACE_MIN_MS ? c->keepalive_ms / 2
		                                                               : PING_GRACE_MIN_MS);
	} else {
		gw_timer_arm(c->timer, c->keepalive_ms - (now - c->last_sent));
	}
	leave(c);
}

int
mqttconn_send(struct mqttconn *c, const uint8_t *buf, size_t len)
{
	if (c->freed || c->failed || c->state == ST_CLOSING || c->state == ST_DOOMED)
		return -ENOTCONN;
	if (c->outlen + len > c->outcap) {
		size_t cap = c->outcap ? c->outcap : 256;

		while (cap < c->outlen + len)
			cap *= 2;
		c->out = xreallocarray(c->out, cap, sizeof(*c->out));
		c->outcap = cap;
	}
	memcpy(c->out + c->outlen, buf, len);
	c->outlen += len;
	/*
	 * Written at the end of the loop's turn: the publishes of one batch go out as one TLS
	 * record, and a failure reaches the owner from the loop, not from inside its own call.
	 * Not by asking epoll for EPOLLOUT, which cost two epoll_ctl calls per publish (on, then
	 * off again) and a turn of the loop: the socket almost always has room.
	 */
	if (c->state >= ST_CONNACK)
		gw_deferred_queue(c->flush_soon);
	return 0;
}

size_t
mqttconn_queued(const struct mqttconn *c)
{
	return c->outlen - c->outoff;
}

bool
mqttconn_resumed(const struct mqttconn *c)
{
	return c->resumed;
}

void
mqttconn_close(struct mqttconn *c, unsigned timeout_ms)
{
	if (c->freed || c->state == ST_CLOSING)
		return;
	if (c->state != ST_UP && c->state != ST_CONNACK) {
		/* Nothing said yet: nothing to say goodbye to. */
		c->failed = true;
		c->failure = (struct mqttconn_end){.kind = MQTTCONN_DISCONNECTED};
		snprintf(c->failure.text, sizeof(c->failure.text), "closed");
		gw_timer_arm(c->timer, 0);
		return;
	}
	c->state = ST_CLOSING;
	gw_timer_arm(c->timer, timeout_ms);
	if (mqttconn_queued(c) == 0)
		shutdown_tls(c);
	else
		watch(c, c->watching | EPOLLOUT);
}

static void
conn_destroy(struct mqttconn *c)
{
	for (size_t i = 0; i < c->nasync; i++)
		gw_loop_del_fd(c->loop, c->async_fds[i]);
	c->nasync = 0;
	SSL_free(c->ssl);
	if (c->fd >= 0) {
		gw_loop_del_fd(c->loop, c->fd);
		close(c->fd);
	}
	gw_timer_free(c->timer);
	gw_deferred_free(c->flush_soon);
	free(c->in);
	free(c->out);
	free(c->connect);
	free(c);
}

/* The owner let go and no callback runs: free now, or once a paused job is done. */
static void
conn_release(struct mqttconn *c)
{
	if (c->ssl && SSL_waiting_for_async(c->ssl)) {
		/* Silence towards the broker; the fd stays open so the job's BIO never writes to
		 * a number reused meanwhile. */
		gw_loop_del_fd(c->loop, c->fd);
		shutdown(c->fd, SHUT_RDWR);
		gw_timer_disarm(c->timer);
		c->state = ST_DOOMED;
		c->next_doomed = doomed;
		doomed = c;
		return;
	}
	conn_destroy(c);
}

void
mqttconn_free(struct mqttconn *c)
{
	if (!c || c->freed)
		return;
	c->freed = true;
	if (c->busy == 0)
		conn_release(c);
}

void
mqttconn_reap(unsigned timeout_ms)
{
	uint64_t until = gw_now_ms() + timeout_ms;

	while (doomed && gw_now_ms() < until) {
		struct pollfd pfd[MAX_ASYNC_FDS];
		struct mqttconn *c = doomed;
		size_t n = c->nasync;

		for (size_t i = 0; i < n; i++)
			pfd[i] = (struct pollfd){.fd = c->async_fds[i], .events = POLLIN};
		if (n)
			poll(pfd, n, (int)(until - gw_now_ms()));
		doomed_step(c);
		if (doomed == c && n == 0) {
			/* No fd to wait on and still paused: nothing will wake it. */
			doomed = c->next_doomed;
			log_warnx("mqtt: a TLS handshake job did not finish; leaving it");
		}
	}
}

static bool
is_ip_literal(const char *host)
{
	struct in6_addr a;

	return inet_pton(AF_INET, host, &a) == 1 || inet_pton(AF_INET6, host, &a) == 1;
}

int
mqttconn_open(struct mqttconn **out, struct gw_loop *loop, const struct mqttconn_params *p,
              const struct mqttconn_ops *ops, void *data, struct mqttconn_end *why)
{
	struct mqttconn *c = xcalloc(1, sizeof(*c));
	int one = 1, r;

	*c = (struct mqttconn){.loop = loop,
	                       .ops = ops,
	                       .data = data,
	                       .fd = -1,
	                       .version = p->version,
	                       .max_packet = p->max_packet,
	                       .keepalive_ms = (unsigned)p->keepalive * 1000};
	*why = (struct mqttconn_end){.kind = MQTTCONN_NETWORK};
	c->timer = gw_timer_new(loop, on_timer, c);
	c->flush_soon = gw_deferred_new(loop, on_flush_soon, c);
	c->connect = xmalloc(p->connect_len);
	/* NULL from OpenSSL: its own allocation failed. */
	c->ssl = SSL_new(p->ctx);
	if (!c->ssl)
		xalloc_failed("SSL_new");
	memcpy(c->connect, p->connect, p->connect_len);
	c->connect_len = p->connect_len;

	SSL_set_app_data(c->ssl, c);
	SSL_set_mode(c->ssl, SSL_MODE_ASYNC);
	if (is_ip_literal(p->host)) {
		r = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), p->host);
	} else {
		/* RFC 6066 section 3: SNI carries names, never addresses. */
		r = SSL_set_tlsext_host_name(c->ssl, p->host) && SSL_set1_host(c->ssl, p->host);
	}
	if (r != 1 || SSL_use_certificate(c->ssl, p->cert) != 1 ||
	    SSL_use_PrivateKey(c->ssl, p->key) != 1) {
		why->kind = MQTTCONN_TLS;
		snprintf(why->text, sizeof(why->text), "cannot set up TLS: ");
		openssl_errors(why->text, sizeof(why->text));
		goto fail;
	}
	for (int i = 0; p->chain && i < sk_X509_num(p->chain); i++)
		SSL_add1_chain_cert(c->ssl, sk_X509_value(p->chain, i));
	if (p->session)
		SSL_set_session(c->ssl, p->session);

	c->fd = socket(p->addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		snprintf(why->text, sizeof(why->text), "socket: %s", strerror(errno));
		goto fail;
	}
	/* Small packets, each waited for by a sensor: no Nagle delay. */
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(c->fd, p->addr, p->addrlen) < 0 && errno != EINPROGRESS) {
		snprintf(why->text, sizeof(why->text), "cannot connect: %s", strerror(errno));
		goto fail;
	}
	if (!SSL_set_fd(c->ssl, c->fd)) {
		snprintf(why->text, sizeof(why->text), "cannot set up TLS on the socket");
		goto fail;
	}
	SSL_set_connect_state(c->ssl);
	c->watching = EPOLLOUT;
	r = gw_loop_add_fd(loop, c->fd, EPOLLOUT, on_fd, c);
	if (r < 0) {
		close(c->fd);
		c->fd = -1;
		snprintf(why->text, sizeof(why->text), "cannot watch the socket: %s", strerror(-r));
		goto fail;
	}
	gw_timer_arm(c->timer, p->timeout_ms);
	*out = c;
	return 0;
fail:
	if (c->fd >= 0) {
		close(c->fd);
		c->fd = -1;
	}
	conn_destroy(c);
	return -EIO;
}

static int
on_new_session(SSL *ssl, SSL_SESSION *sess)
{
	struct mqttconn *c = SSL_get_app_data(ssl);

	if (!c || c->freed || !c->ops->session)
		return 0;
	return c->ops->session(c->data, sess) ? 1 : 0;
}

int
mqttconn_ctx_new(SSL_CTX **out, const char *ca_file, const unsigned char *alpn, unsigned alpn_len)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	char errors[256] = "";

	if (!ctx)
		xalloc_failed("SSL_CTX_new");
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* Only the configured CA: the system bundle would trust any public CA. */
	if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
		openssl_errors(errors, sizeof(errors));
		log_warnx("upstream.ca_file %s: cannot read its certificates: %s", ca_file, errors);
		SSL_CTX_free(ctx);
		return -EINVAL;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	/*
	 * Sessions are kept per device by mqttbr, in memory only, never in OpenSSL's cache: the
	 * callback hands each to its connection's owner (DESIGN.md 3, resumption).
	 */
	SSL_CTX_set_session_cache_mode(ctx,
	                               SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(ctx, on_new_session);
	/* Release the 16 KiB record buffers of idle connections (32 KiB per device, issue 12). */
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	                              SSL_MODE_RELEASE_BUFFERS);
	/* SSL_CTX_set_alpn_protos returns 0 on success. */
	if (alpn && SSL_CTX_set_alpn_protos(ctx, alpn, alpn_len) != 0) {
		log_warnx("upstream.alpn: cannot set the protocol list");
		SSL_CTX_free(ctx);
		return -EINVAL;
	}
	*out = ctx;
	return 0;
}
