/* SPDX-License-Identifier: Apache-2.0 */
#include "mqttbr.h"
#include "device.h"
#include "keystore.h"
#include "log.h"
#include "loop.h"
#include "mqttcodec.h"
#include "mqttconn.h"
#include "resolve.h"
#include "xalloc.h"

#include <errno.h>
#include <malloc.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* How long a clean shutdown waits for the brokers' DISCONNECT handshakes. */
#define STOP_GRACE_MS 3000
/*
 * What the gateway accepts from the broker in one packet (commands to sensors), announced in
 * CONNECT (MQTT 5.0 section 3.1.2.11.4); a larger packet ends the session rather than the
 * gateway's memory.
 */
#define MAX_PACKET_IN (1024 * 1024)
/* Handshakes in flight at most, whatever the pace allows (sockets, memory). */
#define MAX_CONNECTING 64
/*
 * Resumptions in flight at most: they need no signature while the broker honours its tickets,
 * but after a broker restart each turns into a full handshake, and a burst of them would pile
 * up at the TPM ahead of the devices with data.
 */
#define MAX_RESUMING 8
/* Signatures waiting or running at once: one signing, one ready to go (DESIGN.md 4). */
#define MAX_SIGNING 2
/* Look the broker's name up again after a failed connect, at most this often. */
#define RESOLVE_AGAIN_MS 30000

enum dev_state {
	DEV_QUEUED, /* due to connect, waiting for its turn (the TPM's pace) */
	DEV_CONNECTING,
	DEV_UP,
	DEV_WAITING,  /* the backoff after a failure or a loss */
	DEV_STOPPING, /* mqttbr_stop(): DISCONNECT sent */
	DEV_STOPPED,
	DEV_REMOVING, /* mqttbr_remove_device(): DISCONNECT sent, then freed */
	DEV_IDLE,     /* on demand, with nothing to do: no connection until it is wanted */
	DEV_PARKING,  /* on demand, idle: DISCONNECT sent, then DEV_IDLE (or again if wanted) */
};

/* Where a connect is in its handshake, for the pace of admissions. */
enum phase { PH_NONE, PH_PRESIGN, PH_SIGNING };

enum queue { Q_RESUME, Q_URGENT, Q_NORMAL, NQUEUES };

struct publish {
	struct device_mqtt *dev;
	/* NULL once the outcome was reported (a timeout): the PUBACK may still come. */
	upstream_done_fn fn;
	void *data;
	struct gw_timer *timer;
	uint16_t packet_id; /* QoS 1; 0 for QoS 0 */
	bool sent;          /* QoS 1: on the wire, counted against Receive Maximum */
	uint8_t *pkt;       /* the encoded PUBLISH until it is sent */
	size_t len;
	struct publish *prev, *next;
};

/* The bridge's state for a device: its slot on struct device (device.h). */
struct device_mqtt {
	struct mqttbr *br;
	struct device *entry; /* its registry entry (a reference); NULL once it let go */
	char *id;
	char *cert_file;
	char *key_file;
	char *status_topic;   /* presence: retained online/offline, NULL for none */
	char *command_filter; /* subscribed at each connect, NULL for none */
	char *client_id;      /* the MQTT client id (upstream.client_id expanded) */
	char *username;       /* NULL: none sent */
	/* What its session is made with: a reload may change the bridge's before it goes. */
	int version; /* MQTTCODEC_V5 or MQTTCODEC_V311 */
	enum dev_state state;
	struct mqttconn *conn;
	enum phase phase;
	bool resuming; /* the connect in flight offered a TLS session */
	uint64_t admitted_ms, signing_ms;
	/* Readings or a sensor wait for this device: its connect goes first. */
	bool wanted;
	/* Connected only while wanted (mqttbr_session.on_demand); idle: when it last did work. */
	bool on_demand;
	uint64_t active_ms;
	struct gw_timer *idle; /* on demand only */
	enum queue queue;      /* while DEV_QUEUED */
	struct device_mqtt *qprev, *qnext;
	unsigned failures; /* consecutive failed connects, for the backoff */
	/* The broker refused this device's identity: retried on the slow schedule. */
	bool rejected;
	/*
	 * Refused until a connect is accepted, though tried at the normal pace: the session it
	 * replaces was refused (a renewal's trial must not make the spool take what waits for an
	 * operator), or its certificate had expired when the session was made.
	 */
	bool held;
	char reason[400]; /* why the last connect failed or the session was lost */
	struct gw_timer *retry;
	/* The certificate's notAfter, read at each connect; the session ends then. */
	time_t not_after;
	struct gw_timer *expiry;
	/* The broker's limits from its CONNACK (MQTT 5.0 3.2.2.3.3, 3.2.2.3.6): 0 none. */
	unsigned max_packet;
	unsigned receive_max;
	unsigned inflight; /* QoS 1 publishes sent and not acknowledged */
	uint16_t next_id;
	uint16_t sub_id;                  /* the SUBSCRIBE waiting for its SUBACK, 0 none */
	struct publish *pubs, *pubs_tail; /* oldest first */
	/*
	 * The latest resumable TLS session, memory only (DESIGN.md 3): a bearer credential for
	 * its lifetime, so dropped with the device, its certificate and at every reconfigure.
	 */
	SSL_SESSION *session;
	time_t session_until;
	uint64_t session_got_ms;            /* when it came, on the loop's clock */
	uint64_t lost_ms;                   /* when its last session ended */
	const SSL_SESSION *session_offered; /* to the handshake in flight (compared, not used) */
};

struct mqttbr {
	struct gw_loop *loop;
	const struct keystore *ks;
	struct {
		char *broker;
		char *host;
		uint16_t port;
		char *ca_file;
		int keepalive;
		int connect_timeout;
		int publish_timeout;
		int reconnect_min;
		int reconnect_max;
		int rejected_retry;
		int idle_timeout;        /* seconds, on-demand sessions */
		unsigned session_expiry; /* seconds, on-demand sessions (MQTT 5) */
		int version;             /* MQTTCODEC_V5 or MQTTCODEC_V311: upstream.mqtt_version */
		unsigned session_lifetime; /* seconds a TLS session may be resumed, 0: never */
		/* ALPN protocols in wire format (RFC 7301 section 3.1). NULL: none offered. */
		unsigned char *alpn;
		unsigned alpn_len;
	} cfg;
	SSL_CTX *ctx;
	struct device_registry *devices; /* the store's: each session hangs on its device */
	/* Admission: the devices due to connect, and the pace of the handshakes in flight. */
	struct {
		struct device_mqtt *head, *tail;
	} queues[NQUEUES];
	size_t queued;
	size_t connecting;              /* DEV_CONNECTING devices */
	size_t presign;                 /* ... before their signature */
	size_t signing;                 /* ... waiting for it */
	size_t resuming;                /* ... offering a TLS session */
	uint64_t net_ms_x8, sign_ms_x8; /* moving averages, times 8 */
	/* The broker's addresses, looked up off the loop. */
	struct resolve *resolving;
	struct gw_timer *resolve_timer;
	struct gw_timer *trim_timer; /* see give_back() */
	uint64_t resolved_ms;
	uint64_t stale_logged_ms; /* sessions_stale()'s last log line */
	struct resolve_result addrs;
	size_t addr_next;

	mqttbr_judged_fn judged;
	void *judged_data;
	mqttbr_message_fn message;
	void *message_data;
	struct {
		char *online;
		char *offline;
		int qos;
	} presence;
	int command_qos;
	struct mqttbr_stats st;
	/* Removed devices waiting for their DISCONNECT to go out before they are freed. */
	struct device_mqtt **removing;
	size_t nremoving;
	struct {
		mqttbr_stopped_fn fn;
		void *data;
		size_t remaining;
		struct gw_timer *timer;
		bool stopping;
	} stop;
};

static void pump(struct mqttbr *br);
static void device_removed(struct device *entry, void *data);
static void schedule_retry(struct device_mqtt *dev);
static void device_destroy(struct device_mqtt *dev);
static void session_over(struct device_mqtt *dev);

/* xstrdup() for the optional strings: NULL stays NULL. */
static char *
xstrdup_or_null(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

/* The session of the registry's i-th device, or NULL. */
static struct device_mqtt *
session_at(const struct mqttbr *br, size_t i)
{
	return device_at(br->devices, i)->mqtt;
}

/*
 * What the registry says of the device's upstream (device.h), after a change here: the one
 * answer the router and the reports read.
 */
static void
tell_upstream(struct device_mqtt *dev)
{
	enum device_upstream st = DEVICE_UPSTREAM_WAITING;

	if (!dev->entry)
		return;
	switch (dev->state) {
	case DEV_UP:
		st = DEVICE_UPSTREAM_UP;
		break;
	case DEV_REMOVING:
	case DEV_STOPPING:
	case DEV_STOPPED:
		/* No session; a refusal stands until a connect is accepted. */
		st = dev->entry->upstream == DEVICE_UPSTREAM_REFUSED ? DEVICE_UPSTREAM_REFUSED
		                                                     : DEVICE_UPSTREAM_NONE;
		break;
	default:
		if (dev->rejected || dev->held)
			st = DEVICE_UPSTREAM_REFUSED;
		break;
	}
	device_set_upstream(dev->entry, st);
}

static uint32_t
random_u32(void)
{
	uint32_t v;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != sizeof(v))
		v = (uint32_t)random();
	return v;
}

static const char *
reason_words(int reason, char *buf, size_t len)
{
	return mqttcodec_reason_name(reason, buf, len);
}

/* ---- admission: devices connect at the pace the TPM signs ---- */

static void
queue_remove(struct device_mqtt *dev)
{
	struct mqttbr *br = dev->br;

	if (dev->state != DEV_QUEUED)
		return;
	if (dev->qprev)
		dev->qprev->qnext = dev->qnext;
	else
		br->queues[dev->queue].head = dev->qnext;
	if (dev->qnext)
		dev->qnext->qprev = dev->qprev;
	else
		br->queues[dev->queue].tail = dev->qprev;
	dev->qprev = dev->qnext = NULL;
	br->queued--;
}

static void
queue_append(struct device_mqtt *dev, enum queue q)
{
	struct mqttbr *br = dev->br;

	dev->queue = q;
	dev->qnext = NULL;
	dev->qprev = br->queues[q].tail;
	if (dev->qprev)
		dev->qprev->qnext = dev;
	else
		br->queues[q].head = dev;
	br->queues[q].tail = dev;
	br->queued++;
}

static void
queue_prepend(struct device_mqtt *dev, enum queue q)
{
	struct mqttbr *br = dev->br;

	dev->queue = q;
	dev->qprev = NULL;
	dev->qnext = br->queues[q].head;
	if (dev->qnext)
		dev->qnext->qprev = dev;
	else
		br->queues[q].tail = dev;
	br->queues[q].head = dev;
	br->queued++;
}

static bool
session_usable(struct device_mqtt *dev)
{
	if (!dev->session)
		return false;
	if (time(NULL) < dev->session_until && SSL_SESSION_is_resumable(dev->session))
		return true;
	SSL_SESSION_free(dev->session);
	dev->session = NULL;
	return false;
}

static void
drop_session(struct device_mqtt *dev)
{
	SSL_SESSION_free(dev->session);
	dev->session = NULL;
}

/*
 * Due to connect: a device with a session to resume needs no signature and goes in its own
 * line; one with readings or a sensor waiting goes before the others.
 */
static void
enqueue(struct device_mqtt *dev)
{
	queue_remove(dev);
	dev->state = DEV_QUEUED;
	queue_append(dev, session_usable(dev) ? Q_RESUME : dev->wanted ? Q_URGENT : Q_NORMAL);
	pump(dev->br);
}

/* A sensor observes the device's commands: its session stays up while it does. */
static bool
observed(const struct device_mqtt *dev)
{
	return dev->entry && dev->entry->observers > 0;
}

/*
 * A connection's TLS state and buffers take tens of KiB, freed when an on-demand session goes
 * idle; glibc keeps freed memory in the middle of its heap for the process, so after a wave of
 * devices went idle the gateway kept the wave's peak. Given back to the system a second after
 * sessions parked (at most once a second; malloc_trim walks the free lists, well under a
 * millisecond at this size).
 */
#define TRIM_DELAY_MS 1000

static void
trim_fired(struct gw_timer *t, void *data)
{
	(void)t;
	(void)data;
	malloc_trim(0);
}

static void
give_back(struct mqttbr *br)
{
	if (gw_timer_remaining(br->trim_timer) < 0)
		gw_timer_arm(br->trim_timer, TRIM_DELAY_MS);
}

/* An on-demand session that is up counts its quiet time from now. */
static void
watch_idle(struct device_mqtt *dev)
{
	dev->active_ms = gw_now_ms();
	gw_timer_arm(dev->idle, (uint64_t)dev->br->cfg.idle_timeout * 1000);
}

/* No connection, none wanted: the device connects when mqttbr_wanted() is called. */
static void
park(struct device_mqtt *dev)
{
	queue_remove(dev);
	gw_timer_disarm(dev->retry);
	dev->state = DEV_IDLE;
	tell_upstream(dev);
}

/*
 * Full handshakes admitted before their signature: enough to keep the TPM busy while each
 * crosses the network to its signature (time to the signature over the signature's time),
 * and no more, so that none waits out its connect timeout in the TPM's queue. Both times are
 * measured as handshakes go.
 */
static uint64_t
sign_pace_x8(const struct mqttbr *br)
{
	struct keystore_stats ks;

	/* The worker's own figure, queueing excluded, where there is one. */
	if (br->ks) {
		keystore_get_stats(br->ks, &ks);
		if (ks.handshake_sign_ns)
			return ks.handshake_sign_ns * 8 / 1000000
			               ? ks.handshake_sign_ns * 8 / 1000000
			               : 1;
	}
	return br->sign_ms_x8;
}

static size_t
presign_window(const struct mqttbr *br)
{
	uint64_t sign = sign_pace_x8(br) ? sign_pace_x8(br) : 1;
	size_t w = 1 + (size_t)((br->net_ms_x8 + sign - 1) / sign);

	return w > 16 ? 16 : w;
}

static void connect_device(struct device_mqtt *dev);

static void
pump(struct mqttbr *br)
{
	if (br->stop.stopping || br->addrs.naddrs == 0)
		return;
	while (br->connecting < MAX_CONNECTING && br->resuming < MAX_RESUMING &&
	       br->queues[Q_RESUME].head) {
		struct device_mqtt *dev = br->queues[Q_RESUME].head;

		queue_remove(dev);
		connect_device(dev);
	}
	while (br->connecting < MAX_CONNECTING && br->signing < MAX_SIGNING &&
	       br->presign < presign_window(br)) {
		struct device_mqtt *dev = br->queues[Q_URGENT].head;

		if (!dev)
			dev = br->queues[Q_NORMAL].head;
		if (!dev)
			break;
		queue_remove(dev);
		connect_device(dev);
	}
}

/* A moving average (1/8 weight to the new sample), times 8. */
static void
average(uint64_t *avg_x8, uint64_t sample)
{
	*avg_x8 = *avg_x8 ? *avg_x8 - *avg_x8 / 8 + sample : sample * 8;
}

static void
phase_leave(struct device_mqtt *dev)
{
	struct mqttbr *br = dev->br;

	if (dev->phase == PH_PRESIGN)
		br->presign--;
	else if (dev->phase == PH_SIGNING)
		br->signing--;
	dev->phase = PH_NONE;
	if (dev->resuming)
		br->resuming--;
	dev->resuming = false;
}

/* ---- one connect ---- */

/* The certificate chain in a PEM file: the device's own first. */
static X509 *
load_chain(const char *file, STACK_OF(X509) * *chain)
{
	BIO *b = BIO_new_file(file, "r");
	X509 *cert = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL, *x;

	*chain = NULL;
	while (cert && (x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
		if (!*chain)
			*chain = sk_X509_new_null();
		if (!*chain || !sk_X509_push(*chain, x))
			xalloc_failed("sk_X509_push");
	}
	ERR_clear_error(); /* the end of the file reads as an error */
	BIO_free(b);
	return cert;
}

static EVP_PKEY *
load_key(const char *file)
{
	BIO *b = BIO_new_file(file, "r");
	/* A keystore key reference: the provider decodes it, no private part is read. */
	EVP_PKEY *key = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;

	BIO_free(b);
	return key;
}

static time_t
not_after_of(const X509 *cert)
{
	struct tm tm;

	if (cert && ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) == 1)
		return timegm(&tm);
	return 0;
}

/*
 * An expired certificate is never presented: the device waits on the slow schedule for a new
 * one (a renewal, or gwctl device import-cert), which the next try reads.
 */
static bool
refuse_expired(struct device_mqtt *dev)
{
	char when[64];

	if (dev->not_after == 0 || time(NULL) < dev->not_after)
		return false;
	format_utc(dev->not_after, when, sizeof(when));
	snprintf(dev->reason, sizeof(dev->reason),
	         "its certificate expired on %s: not used (gwctl device enroll %s, or "
	         "import-cert)",
	         when, dev->id);
	if (!dev->rejected)
		log_warnx("%s: %s", dev->id, dev->reason);
	dev->rejected = true;
	drop_session(dev);
	schedule_retry(dev);
	tell_upstream(dev);
	return true;
}

static const struct mqttconn_ops conn_ops;

/* The CONNECT of dev's session; *len its length. malloc'd. */
static uint8_t *
build_connect(struct device_mqtt *dev, size_t *len)
{
	struct mqttbr *br = dev->br;
	struct mqttcodec_connect c = {
	        .version = dev->version,
	        .client_id = dev->client_id,
	        /*
	         * No session state kept at the broker: the spool replays what was not acked. An
	         * on-demand device's is kept, for the commands sent while it is away; what it
	         * publishes is still the spool's to resend (a session is only left idle with
	         * nothing in flight, so nothing of ours waits in it).
	         */
	        .clean_start = !dev->on_demand,
	        .session_expiry = dev->on_demand ? br->cfg.session_expiry : 0,
	        .keepalive = (uint16_t)br->cfg.keepalive,
	        .username = dev->username,
	        .maximum_packet = MAX_PACKET_IN,
	};
	uint8_t *buf = NULL;
	int n;

	if (dev->status_topic) {
		/* The broker says "offline" for us when the session dies without a DISCONNECT. */
		c.will_topic = dev->status_topic;
		c.will_payload = br->presence.offline;
		c.will_len = strlen(br->presence.offline);
		c.will_qos = br->presence.qos;
		c.will_retain = true;
	}
	n = mqttcodec_connect(NULL, 0, &c);
	if (n <= 0)
		return NULL;
	buf = xmalloc((size_t)n);
	mqttcodec_connect(buf, (size_t)n, &c);
	*len = (size_t)n;
	return buf;
}

static void connect_failed_now(struct device_mqtt *dev, enum mqttbr_failure kind, const char *fmt,
                               ...) __attribute__((format(printf, 3, 4)));

/* A connect that could not even start: reported like a failed one. */
static void
connect_failed_now(struct device_mqtt *dev, enum mqttbr_failure kind, const char *fmt, ...)
{
	struct mqttbr *br = dev->br;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(dev->reason, sizeof(dev->reason), fmt, ap);
	va_end(ap);
	br->st.failures[kind]++;
	log_warnx("%s: %s", dev->id, dev->reason);
	schedule_retry(dev);
	if (br->judged)
		br->judged(dev->id, false, dev->reason, br->judged_data);
}

static void
connect_device(struct device_mqtt *dev)
{
	struct mqttbr *br = dev->br;
	STACK_OF(X509) *chain = NULL;
	X509 *cert = load_chain(dev->cert_file, &chain);
	EVP_PKEY *key = cert ? load_key(dev->key_file) : NULL;
	struct mqttconn_end why;
	size_t connect_len = 0, ai = br->addr_next % br->addrs.naddrs;
	uint8_t *connect;
	int r;

	br->st.connects++;
	if (!br->ctx) {
		X509_free(cert);
		sk_X509_pop_free(chain, X509_free);
		EVP_PKEY_free(key);
		connect_failed_now(dev, MQTTBR_FAIL_TLS,
		                   "upstream.ca_file %s holds no certificate to check the broker "
		                   "with (fix it, then gwctl reload)",
		                   br->cfg.ca_file);
		return;
	}
	dev->not_after = not_after_of(cert);
	if (!cert || !key) {
		ERR_clear_error();
		X509_free(cert);
		sk_X509_pop_free(chain, X509_free);
		connect_failed_now(dev, MQTTBR_FAIL_TLS, "cannot read its %s %s",
		                   cert ? "key" : "certificate",
		                   cert ? dev->key_file : dev->cert_file);
		return;
	}
	if (refuse_expired(dev)) {
		X509_free(cert);
		EVP_PKEY_free(key);
		sk_X509_pop_free(chain, X509_free);
		return;
	}
	connect = build_connect(dev, &connect_len);
	struct mqttconn_params p = {
	        .ctx = br->ctx,
	        .addr = (const struct sockaddr *)&br->addrs.addrs[ai],
	        .addrlen = br->addrs.lens[ai],
	        .host = br->cfg.host,
	        .cert = cert,
	        .chain = chain,
	        .key = key,
	        .session = session_usable(dev) ? dev->session : NULL,
	        .connect = connect,
	        .connect_len = connect_len,
	        .version = dev->version,
	        .keepalive = (uint16_t)br->cfg.keepalive,
	        .max_packet = MAX_PACKET_IN,
	        .timeout_ms = (unsigned)br->cfg.connect_timeout * 1000,
	};

	r = connect ? mqttconn_open(&dev->conn, br->loop, &p, &conn_ops, dev, &why) : -EINVAL;
	/* The connection holds its own references. */
	X509_free(cert);
	EVP_PKEY_free(key);
	sk_X509_pop_free(chain, X509_free);
	free(connect);
	/* Kept until a handshake used it: a connect that fails before TLS has not. */
	dev->session_offered = p.session;
	if (r < 0) {
		dev->conn = NULL;
		connect_failed_now(dev, MQTTBR_FAIL_NETWORK, "cannot connect upstream to %s: %s",
		                   br->cfg.broker, connect ? why.text : "cannot build its CONNECT");
		return;
	}
	dev->state = DEV_CONNECTING;
	dev->phase = PH_PRESIGN;
	dev->admitted_ms = gw_now_ms();
	br->connecting++;
	br->presign++;
	dev->resuming = p.session != NULL;
	br->resuming += dev->resuming;
}

/* ---- publishes ---- */

static void
publish_unlink(struct publish *pub)
{
	struct device_mqtt *dev = pub->dev;

	if (pub->prev)
		pub->prev->next = pub->next;
	else
		dev->pubs = pub->next;
	if (pub->next)
		pub->next->prev = pub->prev;
	else
		dev->pubs_tail = pub->prev;
	if (pub->sent && pub->packet_id)
		dev->inflight--;
	gw_timer_free(pub->timer);
	free(pub->pkt);
	free(pub);
}

static void
publish_report(struct publish *pub, int status)
{
	upstream_done_fn fn = pub->fn;

	if (!fn)
		return;
	pub->fn = NULL;
	gw_timer_disarm(pub->timer);
	fn(status, pub->data);
}

/*
 * The session is over: every publish still waiting hears -ENOTCONN (the spool or the sensor
 * keeps the message; nothing is resent on the next session, which starts clean).
 */
static void
publishes_fail(struct device_mqtt *dev)
{
	struct publish *list = dev->pubs;

	/* Detached first: a callback that publishes again finds the device down. */
	dev->pubs = dev->pubs_tail = NULL;
	dev->inflight = 0;
	while (list) {
		struct publish *pub = list;
		upstream_done_fn fn = pub->fn;
		void *data = pub->data;

		list = pub->next;
		gw_timer_free(pub->timer);
		free(pub->pkt);
		free(pub);
		if (fn)
			fn(-ENOTCONN, data);
	}
}

/* Sends what waits, in order, as far as the broker's Receive Maximum allows. */
static void
send_ready(struct device_mqtt *dev)
{
	for (struct publish *pub = dev->pubs; pub; pub = pub->next) {
		if (pub->sent)
			continue;
		/* MQTT 5.0 section 4.9: no more QoS 1 in flight than the broker receives. */
		if (pub->packet_id && dev->receive_max && dev->inflight >= dev->receive_max)
			return;
		if (mqttconn_send(dev->conn, pub->pkt, pub->len) < 0)
			return;
		free(pub->pkt);
		pub->pkt = NULL;
		pub->sent = true;
		if (pub->packet_id)
			dev->inflight++;
		else
			gw_timer_arm(pub->timer,
			             0); /* QoS 0: done once written, told from the loop */
	}
}

static void
publish_timer(struct gw_timer *t, void *data)
{
	struct publish *pub = data;

	(void)t;
	if (pub->packet_id == 0) {
		publish_report(pub, 0);
		publish_unlink(pub);
		return;
	}
	log_warnx("%s: no acknowledgement from the broker within %d s", pub->dev->id,
	          pub->dev->br->cfg.publish_timeout);
	publish_report(pub, -ETIMEDOUT);
}

static bool
id_in_use(const struct device_mqtt *dev, uint16_t id)
{
	if (id == dev->sub_id)
		return true;
	for (const struct publish *pub = dev->pubs; pub; pub = pub->next) {
		if (pub->packet_id == id)
			return true;
	}
	return false;
}

static uint16_t
new_packet_id(struct device_mqtt *dev)
{
	do {
		dev->next_id++;
	} while (dev->next_id == 0 || id_in_use(dev, dev->next_id));
	return dev->next_id;
}

static struct mqttcodec_publish
publish_of(const struct device_mqtt *dev, const struct upstream_msg *m)
{
	bool v5 = dev->version == MQTTCODEC_V5;

	return (struct mqttcodec_publish){
	        .version = dev->version,
	        .topic = m->topic,
	        .payload = m->payload,
	        .len = m->len,
	        .qos = m->qos,
	        .retain = m->retain,
	        /*
	         * MQTT 3.1.1 has no properties: the config allows no content type then, but a
	         * message spooled under MQTT 5 before a change of mqtt_version may still carry
	         * one. It goes without.
	         */
	        .content_type = v5 ? m->content_type : NULL,
	};
}

/*
 * Publishes on dev's session. Returns 0 and later calls fn (if not NULL) exactly once, or
 * returns -errno and never calls fn: -ENOTCONN when the session is down, -EMSGSIZE when the
 * message is larger than the broker's Maximum Packet Size (from its CONNACK).
 */
static int
publish(struct device_mqtt *dev, const struct upstream_msg *m, upstream_done_fn fn, void *data)
{
	struct mqttcodec_publish p = publish_of(dev, m);
	struct publish *pub;
	size_t size;

	if (dev->state != DEV_UP)
		return -ENOTCONN;
	dev->active_ms = gw_now_ms();
	if (m->qos == 1)
		p.packet_id = new_packet_id(dev);
	size = mqttcodec_publish_size(&p);
	/* The broker ends the session on a larger packet (MQTT 5.0 3.2.2.3.6): say so here. */
	if (size == 0 || (dev->max_packet && size > dev->max_packet))
		return -EMSGSIZE;
	pub = xcalloc(1, sizeof(*pub));
	*pub = (struct publish){
	        .dev = dev, .fn = fn, .data = data, .packet_id = p.packet_id, .len = size};
	pub->timer = gw_timer_new(dev->br->loop, publish_timer, pub);
	pub->pkt = xmalloc(size);
	if (mqttcodec_publish(pub->pkt, size, &p) != (int)size) {
		gw_timer_free(pub->timer);
		free(pub->pkt);
		free(pub);
		return -EINVAL;
	}
	pub->prev = dev->pubs_tail;
	if (dev->pubs_tail)
		dev->pubs_tail->next = pub;
	else
		dev->pubs = pub;
	dev->pubs_tail = pub;
	if (pub->packet_id)
		gw_timer_arm(pub->timer, (uint64_t)dev->br->cfg.publish_timeout * 1000);
	send_ready(dev);
	return 0;
}

static int
publish_status(int reason)
{
	switch (reason) {
	case MQTTCODEC_RC_NOT_AUTHORIZED:
	case MQTTCODEC_RC_TOPIC_NAME_INVALID:
		return -EACCES;
	case MQTTCODEC_RC_QUOTA_EXCEEDED:
	case MQTTCODEC_RC_SERVER_BUSY:
		return -EAGAIN;
	default:
		/* Below 0x80 is success, 0x10 "no matching subscribers" included (3.4.2.1). */
		return reason >= MQTTCODEC_RC_UNSPECIFIED ? -EPROTO : 0;
	}
}

static void
on_puback(struct device_mqtt *dev, const struct mqttcodec_packet *p)
{
	struct publish *pub;
	char words[40];

	for (pub = dev->pubs; pub; pub = pub->next) {
		if (pub->sent && pub->packet_id == p->packet_id)
			break;
	}
	if (!pub) {
		log_debug("%s: PUBACK for packet %u, which is not in flight", dev->id,
		          p->packet_id);
		return;
	}
	int status = publish_status(p->reason);
	upstream_done_fn fn = pub->fn;
	void *data = pub->data;

	if (status < 0)
		log_warnx("%s: broker refused a publish: %s", dev->id,
		          reason_words(p->reason, words, sizeof(words)));
	publish_unlink(pub);
	send_ready(dev);
	/* Last: the observer may remove the device. */
	if (fn)
		fn(status, data);
}

/* ---- the session's events ---- */

static void
send_packet(struct device_mqtt *dev, const uint8_t *buf, int len)
{
	if (len > 0 && dev->conn)
		mqttconn_send(dev->conn, buf, (size_t)len);
}

/* A new session: say so, and ask for the device's commands (clean start: none are kept). */
static void
session_started(struct device_mqtt *dev)
{
	struct mqttbr *br = dev->br;
	int version = dev->version;

	if (dev->status_topic) {
		struct upstream_msg m = {
		        .topic = dev->status_topic,
		        .payload = br->presence.online,
		        .len = strlen(br->presence.online),
		        .qos = br->presence.qos,
		        .retain = true,
		};

		if (publish(dev, &m, NULL, NULL) < 0)
			log_warnx("%s: cannot publish its online status", dev->id);
	}
	if (dev->command_filter) {
		size_t n = strlen(dev->command_filter) + 16;
		uint8_t *buf = xmalloc(n);
		int len;

		dev->sub_id = 0;
		dev->sub_id = new_packet_id(dev);
		len = mqttcodec_subscribe(buf, n, version, dev->sub_id, dev->command_filter,
		                          br->command_qos);
		if (len <= 0 || (size_t)len > n)
			log_warnx("%s: cannot subscribe to %s: the filter cannot be encoded",
			          dev->id, dev->command_filter);
		else
			send_packet(dev, buf, len);
		free(buf);
	}
}

static void
on_up(void *data, const struct mqttcodec_packet *p)
{
	struct device_mqtt *dev = data;
	struct mqttbr *br = dev->br;

	br->connecting--;
	phase_leave(dev);
	dev->state = DEV_UP;
	dev->failures = 0;
	dev->max_packet = p->props.maximum_packet;
	dev->receive_max = p->props.has_receive_maximum ? p->props.receive_maximum : 0;
	dev->inflight = 0;
	dev->wanted = false;
	if (dev->rejected)
		log_info("%s: accepted upstream again", dev->id);
	dev->rejected = false;
	dev->held = false;
	dev->reason[0] = '\0';
	br->st.connected++;
	log_info("%s: upstream connected to %s%s", dev->id, br->cfg.broker,
	         mqttconn_resumed(dev->conn) ? " (TLS session resumed)" : "");
	session_started(dev);
	if (dev->on_demand)
		watch_idle(dev);
	if (dev->not_after) {
		time_t now = time(NULL);

		gw_timer_arm(dev->expiry,
		             dev->not_after > now ? (uint64_t)(dev->not_after - now) * 1000 : 0);
	}
	pump(br);
	/* The router's spool drains from here. */
	tell_upstream(dev);
	/* Last: the observer may remove the device. */
	if (br->judged)
		br->judged(dev->id, true, NULL, br->judged_data);
}

static void
on_suback(struct device_mqtt *dev, const struct mqttcodec_packet *p)
{
	char words[40];
	int rc;

	if (p->packet_id != dev->sub_id)
		return;
	dev->sub_id = 0;
	/* MQTT 5.0 3.9.3, 3.1.1 3.9.3: a code of 0x80 or more refuses the filter. */
	rc = p->suback.len > 0 ? p->suback.data[0] : MQTTCODEC_RC_UNSPECIFIED;
	if (rc < MQTTCODEC_RC_UNSPECIFIED) {
		log_debug("%s: subscribed to %s", dev->id, dev->command_filter);
		return;
	}
	log_warnx("%s: the broker refused the subscription to %s: %s; no commands will reach "
	          "this device (check the broker's ACL for it)",
	          dev->id, dev->command_filter, reason_words(rc, words, sizeof(words)));
}

/*
 * A command from the cloud. At QoS 1 the PUBACK goes once the observer took it: the command is
 * then the gateway's to deliver (into its bounded, expiring per-device queue).
 */
static void
on_inbound(struct device_mqtt *dev, const struct mqttcodec_packet *p)
{
	struct mqttbr *br = dev->br;
	char *topic = xmalloc(p->topic.len + 1), *ctype = NULL;
	int version = dev->version;
	uint16_t id = p->packet_id;
	int qos = p->qos;

	dev->active_ms = gw_now_ms();

	memcpy(topic, p->topic.data, p->topic.len);
	topic[p->topic.len] = '\0';
	if (p->props.content_type.data) {
		ctype = xmalloc(p->props.content_type.len + 1);
		memcpy(ctype, p->props.content_type.data, p->props.content_type.len);
		ctype[p->props.content_type.len] = '\0';
	}
	struct upstream_msg m = {
	        .topic = topic,
	        .payload = p->payload.data,
	        .len = p->payload.len,
	        .qos = qos,
	        .content_type = ctype,
	};

	if (qos == 1) {
		uint8_t ack[8];

		send_packet(dev, ack, mqttcodec_puback(ack, sizeof(ack), version, id, 0));
	}
	/* Last: the observer may remove the device. */
	if (br->message && dev->entry)
		br->message(dev->entry, &m, br->message_data);
	free(topic);
	free(ctype);
}

static void
on_packet(void *data, const struct mqttcodec_packet *p)
{
	struct device_mqtt *dev = data;

	switch (p->type) {
	case MQTTCODEC_PUBACK:
		on_puback(dev, p);
		break;
	case MQTTCODEC_SUBACK:
		on_suback(dev, p);
		break;
	case MQTTCODEC_PUBLISH:
		if (dev->state == DEV_UP)
			on_inbound(dev, p);
		break;
	default:
		/* PINGRESP; QoS 2 flows and AUTH never start: the gateway asks for neither. */
		break;
	}
}

static bool
on_session(void *data, SSL_SESSION *sess)
{
	struct device_mqtt *dev = data;
	struct mqttbr *br = dev->br;
	unsigned long hint = SSL_SESSION_get_ticket_lifetime_hint(sess);
	unsigned life = br->cfg.session_lifetime;
	SSL_SESSION *copy;

	if (life == 0 || !SSL_SESSION_is_resumable(sess))
		return false;
	/*
	 * A copy: OpenSSL marks the connection's own session not resumable when the connection
	 * ends without a close_notify (ssl_clear_bad_session), which is how a network cut ends it,
	 * and a resumption is worth most then.
	 */
	copy = SSL_SESSION_dup(sess);
	if (!copy)
		xalloc_failed("SSL_SESSION_dup");
	/* At most the broker's lifetime hint (RFC 8446 4.6.1) and the configured cap. */
	if (hint && hint < life)
		life = (unsigned)hint;
	SSL_SESSION_free(dev->session);
	dev->session = copy;
	dev->session_until = time(NULL) + life;
	dev->session_got_ms = gw_now_ms();
	return false;
}

/*
 * Drops every session that came before before_ms, and moves the devices that queued to resume
 * one into the lines that wait for the TPM.
 */
static void
sessions_stale(struct mqttbr *br, uint64_t before_ms)
{
	size_t dropped = 0;

	for (size_t i = 0; i < device_count(br->devices); i++) {
		struct device_mqtt *dev = session_at(br, i);

		if (!dev || !dev->session || dev->session == dev->session_offered ||
		    dev->session_got_ms >= before_ms)
			continue;
		drop_session(dev);
		dropped++;
		if (dev->state == DEV_QUEUED && dev->queue == Q_RESUME) {
			queue_remove(dev);
			queue_append(dev, dev->wanted ? Q_URGENT : Q_NORMAL);
		}
	}
	/*
	 * Said once a second at most, dropped or not: devices that offered their sessions at the
	 * same time each find theirs refused, and none is left for the first to drop.
	 */
	if (dropped || gw_now_ms() - br->stale_logged_ms >= 1000) {
		br->stale_logged_ms = gw_now_ms();
		log_info("upstream: the broker resumes no earlier TLS session (restarted?): %zu "
		         "more dropped, full handshakes for them",
		         dropped);
	}
}

static void
on_tls_step(void *data, bool signing)
{
	struct device_mqtt *dev = data;
	struct mqttbr *br = dev->br;
	uint64_t now = gw_now_ms();

	if (signing) {
		/* The time to reach the signature, for the pace (presign_window()). */
		average(&br->net_ms_x8, now - dev->admitted_ms);
		phase_leave(dev);
		dev->phase = PH_SIGNING;
		dev->signing_ms = now;
		br->signing++;
		return;
	}
	/* The handshake is over. Alone in the TPM's queue, its wait was the signature's time. */
	if (dev->phase == PH_SIGNING && br->signing == 1)
		average(&br->sign_ms_x8, now - dev->signing_ms ? now - dev->signing_ms : 1);
	if (mqttconn_resumed(dev->conn))
		br->st.resumed++;
	else
		br->st.full++;
	/*
	 * The broker did not resume: it lost its ticket keys (a restart, about when this device's
	 * last session ended), so no session that came before then is worth offering either.
	 */
	if (dev->session_offered && dev->session == dev->session_offered &&
	    !mqttconn_resumed(dev->conn))
		sessions_stale(br, dev->lost_ms > dev->session_got_ms ? dev->lost_ms : now);
	/*
	 * A TLS 1.3 ticket serves once (RFC 8446 C.4), and one the broker did not take is stale:
	 * the session offered goes unless the handshake brought a fresh one meanwhile.
	 */
	if (dev->session && dev->session == dev->session_offered)
		drop_session(dev);
	dev->session_offered = NULL;
	phase_leave(dev);
	pump(br);
}

/*
 * The broker's refusals of the device itself: a TLS alert about its certificate, or a CONNACK
 * reason code (MQTT 5.0 section 3.2.2.2). Anything else (the broker away, our own checks of the
 * broker) is retried on the normal backoff.
 */
static bool
refused_identity(const struct mqttconn_end *why)
{
	if (why->kind == MQTTCONN_DEVICE_REFUSED)
		return true;
	if (why->kind != MQTTCONN_CONNACK)
		return false;
	switch (why->reason) {
	case MQTTCODEC_RC_NOT_AUTHORIZED:
	case MQTTCODEC_RC_BAD_USER_OR_PASSWORD:
	case MQTTCODEC_RC_BANNED:
	case MQTTCODEC_RC_BAD_AUTH_METHOD:
	case MQTTCODEC_RC_CLIENT_ID_NOT_VALID:
		return true;
	default:
		return false;
	}
}

/* The connect that just failed, in words: logged, kept as the device's reason, classified. */
static void
report_connect_failure(struct device_mqtt *dev, const struct mqttconn_end *why)
{
	struct mqttbr *br = dev->br;
	bool was_rejected = dev->rejected;
	enum mqttbr_failure kind = MQTTBR_FAIL_NETWORK;

	dev->rejected = refused_identity(why);
	switch (why->kind) {
	case MQTTCONN_BROKER_NAME:
		kind = MQTTBR_FAIL_BROKER_NAME;
		snprintf(dev->reason, sizeof(dev->reason),
		         "refusing broker %s: its certificate is not issued for the host name "
		         "\"%s\" (check upstream.broker, or the broker's certificate "
		         "subjectAltName)",
		         br->cfg.broker, br->cfg.host);
		break;
	case MQTTCONN_BROKER_UNTRUSTED:
		kind = MQTTBR_FAIL_BROKER_UNTRUSTED;
		snprintf(dev->reason, sizeof(dev->reason),
		         "refusing broker %s: its certificate does not verify against %s: %s",
		         br->cfg.broker, br->cfg.ca_file, why->text);
		break;
	case MQTTCONN_DEVICE_REFUSED:
		kind = MQTTBR_FAIL_DEVICE_REFUSED;
		snprintf(dev->reason, sizeof(dev->reason),
		         "broker %s refused the device's certificate: %s", br->cfg.broker,
		         why->text);
		break;
	case MQTTCONN_TLS:
		kind = MQTTBR_FAIL_TLS;
		snprintf(dev->reason, sizeof(dev->reason), "upstream %s: TLS handshake failed: %s",
		         br->cfg.broker, why->text);
		break;
	case MQTTCONN_CONNACK:
		kind = dev->rejected ? MQTTBR_FAIL_DEVICE_REFUSED : MQTTBR_FAIL_CONNACK;
		snprintf(dev->reason, sizeof(dev->reason), "broker %s: %s", br->cfg.broker,
		         why->text);
		break;
	default:
		snprintf(dev->reason, sizeof(dev->reason), "cannot connect upstream to %s: %s",
		         br->cfg.broker, why->text);
		break;
	}
	br->st.failures[kind]++;
	if (dev->rejected && !was_rejected)
		log_warnx("%s: rejected upstream: %s; next try in %d s", dev->id, dev->reason,
		          br->cfg.rejected_retry);
	else if (!dev->rejected)
		log_warnx("%s: %s", dev->id, dev->reason);
}

static void resolve_broker(struct mqttbr *br);

static void
on_ended(void *data, const struct mqttconn_end *why)
{
	struct device_mqtt *dev = data;
	struct mqttbr *br = dev->br;

	dev->conn = NULL;
	switch (dev->state) {
	case DEV_CONNECTING:
		br->connecting--;
		phase_leave(dev);
		report_connect_failure(dev, why);
		/* A refused identity or a changed certificate: no resuming its old session. */
		if (dev->rejected)
			drop_session(dev);
		if (why->kind == MQTTCONN_NETWORK) {
			br->addr_next++;
			if (gw_now_ms() - br->resolved_ms > RESOLVE_AGAIN_MS)
				resolve_broker(br);
		}
		schedule_retry(dev);
		pump(br);
		/* Last: the observer may remove the device. */
		if (br->judged)
			br->judged(dev->id, false, dev->reason, br->judged_data);
		return;
	case DEV_UP:
		br->st.lost++;
		dev->lost_ms = gw_now_ms();
		snprintf(dev->reason, sizeof(dev->reason), "upstream connection to %s lost: %s",
		         br->cfg.broker, why->text);
		log_warnx("%s: %s", dev->id, dev->reason);
		session_over(dev);
		schedule_retry(dev);
		/* Last: the sensors' requests hear at once. */
		publishes_fail(dev);
		return;
	case DEV_REMOVING:
		device_destroy(dev);
		return;
	case DEV_PARKING:
		/* Wanted again while its DISCONNECT went out: a new session at once. */
		if (dev->wanted)
			enqueue(dev);
		else
			park(dev);
		give_back(br);
		return;
	case DEV_STOPPING:
		dev->state = DEV_STOPPED;
		session_over(dev);
		if (br->stop.remaining > 0 && --br->stop.remaining == 0) {
			gw_timer_disarm(br->stop.timer);
			if (br->stop.fn)
				br->stop.fn(br->stop.data);
		}
		return;
	default:
		return;
	}
}

static const struct mqttconn_ops conn_ops = {
        .up = on_up,
        .packet = on_packet,
        .ended = on_ended,
        .session = on_session,
        .tls_step = on_tls_step,
};

/* What ends with a session: its expiry timer and its SUBSCRIBE in flight. */
static void
session_over(struct device_mqtt *dev)
{
	gw_timer_disarm(dev->expiry);
	gw_timer_disarm(dev->idle);
	dev->sub_id = 0;
	dev->max_packet = 0;
	dev->receive_max = 0;
}

/* ---- backoff and expiry ---- */

static void
retry_fired(struct gw_timer *t, void *data)
{
	struct device_mqtt *dev = data;

	(void)t;
	/* While removing, the retry timer bounds the wait for the DISCONNECT. */
	if (dev->state == DEV_REMOVING) {
		device_destroy(dev);
		return;
	}
	if (dev->state != DEV_WAITING)
		return;
	/*
	 * After a failure or a loss, an on-demand device connects again only if something waits
	 * for it; a refused one keeps asking on the slow schedule, to learn of a new certificate.
	 */
	if (dev->on_demand && !dev->wanted && !dev->rejected && !dev->held && !observed(dev))
		park(dev);
	else
		enqueue(dev);
}

/*
 * Exponential backoff from reconnect_min to reconnect_max, with the wait drawn from its upper
 * half so that devices which dropped together (a broker restart) do not return together.
 */
static void
schedule_retry(struct device_mqtt *dev)
{
	struct mqttbr *br = dev->br;
	uint64_t ms = (uint64_t)br->cfg.reconnect_min * 1000;

	for (unsigned i = 0; i < dev->failures && ms < (uint64_t)br->cfg.reconnect_max * 1000; i++)
		ms *= 2;
	if (ms > (uint64_t)br->cfg.reconnect_max * 1000)
		ms = (uint64_t)br->cfg.reconnect_max * 1000;
	/* A refused identity will not be accepted on the next try: ask again only now and then. */
	if (dev->rejected)
		ms = (uint64_t)br->cfg.rejected_retry * 1000;
	ms = ms / 2 + random_u32() % (ms / 2 + 1);
	dev->failures++;
	queue_remove(dev);
	dev->state = DEV_WAITING;
	gw_timer_arm(dev->retry, ms);
	tell_upstream(dev);
}

/* ---- on-demand sessions ---- */

static void say_goodbye(struct device_mqtt *dev);

/*
 * An on-demand session with nothing in flight (publishes, its SUBSCRIBE), no observer and no
 * work for idle_timeout seconds ends with a DISCONNECT. The broker keeps the MQTT session
 * (session_expiry), and the TLS session kept for resumption makes the next connect cheap.
 */
static void
idle_fired(struct gw_timer *t, void *data)
{
	struct device_mqtt *dev = data;
	uint64_t limit = (uint64_t)dev->br->cfg.idle_timeout * 1000,
	         quiet = gw_now_ms() - dev->active_ms;

	if (dev->state != DEV_UP || !dev->on_demand)
		return;
	if (dev->pubs || dev->sub_id || observed(dev) || quiet < limit) {
		gw_timer_arm(t, quiet < limit ? limit - quiet : limit);
		return;
	}
	log_info("%s: upstream idle for %d s: disconnecting until it is wanted (on demand)",
	         dev->id, dev->br->cfg.idle_timeout);
	dev->br->st.idled++;
	session_over(dev);
	dev->state = DEV_PARKING;
	/* From now the spool takes its data, and asks for a connect (mqttbr_wanted()). */
	tell_upstream(dev);
	say_goodbye(dev);
}

/*
 * A clean DISCONNECT discards the will (MQTT 5 section 3.14.4); reason code 0x04 asks the
 * broker to publish it, so the retained status reads "offline" after a stop or a removal too.
 * MQTT 3.1.1 has no reason codes (section 3.14): the status is published before the
 * DISCONNECT instead.
 */
static void
say_goodbye(struct device_mqtt *dev)
{
	struct mqttbr *br = dev->br;
	bool v5 = dev->version == MQTTCODEC_V5;
	uint8_t pkt[8];

	if (dev->status_topic && !v5) {
		struct upstream_msg m = {
		        .topic = dev->status_topic,
		        .payload = br->presence.offline,
		        .len = strlen(br->presence.offline),
		        .qos = br->presence.qos,
		        .retain = true,
		};
		/* Its PUBACK is not waited for: the DISCONNECT follows on the same connection. */
		struct mqttcodec_publish p = publish_of(dev, &m);
		size_t size;
		uint8_t *buf;

		if (p.qos == 1)
			p.packet_id = new_packet_id(dev);
		size = mqttcodec_publish_size(&p);
		buf = size ? xmalloc(size) : NULL;
		if (buf && mqttcodec_publish(buf, size, &p) == (int)size)
			send_packet(dev, buf, (int)size);
		else
			log_warnx("%s: cannot publish its offline status", dev->id);
		free(buf);
	}
	send_packet(dev, pkt,
	            mqttcodec_disconnect(pkt, sizeof(pkt), dev->version,
	                                 v5 && dev->status_topic ? MQTTCODEC_RC_DISCONNECT_WITH_WILL
	                                                         : 0));
	mqttconn_close(dev->conn, STOP_GRACE_MS / 2);
}

static void
expiry_fired(struct gw_timer *t, void *data)
{
	struct device_mqtt *dev = data;

	/* A connect in flight is judged when it completes. */
	if (dev->state != DEV_UP)
		return;
	/*
	 * Armed in whole seconds, it may fire within the last one: wait for the expiry itself,
	 * so that the device is refused (rejected) from the moment its session ends.
	 */
	if (time(NULL) < dev->not_after) {
		gw_timer_arm(t, 1000);
		return;
	}
	/* Its connection goes on alone, closing; the device waits for a new certificate. */
	struct mqttconn *conn = dev->conn;

	dev->conn = NULL;
	session_over(dev);
	mqttconn_free(conn);
	refuse_expired(dev);
	publishes_fail(dev);
}

/* ---- the broker's addresses ---- */

static void
resolved(const struct resolve_result *r, void *data)
{
	struct mqttbr *br = data;

	br->resolving = NULL;
	br->resolved_ms = gw_now_ms();
	if (r->error || r->naddrs == 0) {
		log_warnx("upstream: cannot look up %s: %s; trying again in %d s", br->cfg.host,
		          r->error_text ? r->error_text : "no address", br->cfg.reconnect_min);
		gw_timer_arm(br->resolve_timer, (uint64_t)br->cfg.reconnect_min * 1000);
		return;
	}
	br->addrs = *r;
	br->addr_next = 0;
	pump(br);
}

static void
resolve_broker(struct mqttbr *br)
{
	int r;

	if (br->resolving)
		return;
	r = resolve_start(&br->resolving, br->loop, br->cfg.host, br->cfg.port, resolved, br);
	if (r < 0) {
		br->resolving = NULL;
		log_warnx("upstream: cannot look up %s: %s", br->cfg.host, strerror(-r));
		gw_timer_arm(br->resolve_timer, (uint64_t)br->cfg.reconnect_min * 1000);
	}
}

static void
resolve_fired(struct gw_timer *t, void *data)
{
	(void)t;
	resolve_broker(data);
}

/* ---- what others ask ---- */

enum mqttbr_status
mqttbr_status(struct mqttbr *br, const char *id, const char **reason)
{
	struct device_mqtt *dev = mqttbr_find(br, id);

	*reason = NULL;
	if (!dev)
		return MQTTBR_NONE;
	if (dev->reason[0])
		*reason = dev->reason;
	if (dev->rejected)
		return MQTTBR_REJECTED;
	switch (dev->state) {
	case DEV_UP:
		return MQTTBR_CONNECTED;
	case DEV_CONNECTING:
	case DEV_QUEUED:
		return MQTTBR_CONNECTING;
	case DEV_IDLE:
	case DEV_PARKING:
		return MQTTBR_IDLE;
	default:
		return MQTTBR_RETRYING;
	}
}

const char *
mqttbr_status_name(enum mqttbr_status st)
{
	static const char *const names[] = {
	        [MQTTBR_NONE] = "none",
	        [MQTTBR_CONNECTING] = "connecting",
	        [MQTTBR_CONNECTED] = "connected",
	        [MQTTBR_RETRYING] = "retrying",
	        [MQTTBR_REJECTED] = "rejected-upstream",
	        [MQTTBR_IDLE] = "idle",
	};

	return names[st];
}

static unsigned
retry_after(const struct device_mqtt *dev)
{
	int64_t ms;

	switch (dev->state) {
	case DEV_UP:
		return 0;
	case DEV_QUEUED:
	case DEV_CONNECTING:
	case DEV_IDLE:
	case DEV_PARKING:
		/* Its turn comes at the TPM's pace, in order: ask again soon. */
		return 1;
	case DEV_WAITING:
		ms = gw_timer_remaining(dev->retry);
		return ms <= 0 ? 1 : (unsigned)((ms + 999) / 1000);
	default:
		return 60;
	}
}

void
mqttbr_wanted(struct device_mqtt *dev)
{
	/* Asked for: an on-demand session that is up stays up a while longer. */
	dev->active_ms = gw_now_ms();
	if (dev->wanted || dev->state == DEV_UP)
		return;
	dev->wanted = true;
	if (dev->state == DEV_IDLE) {
		enqueue(dev);
		return;
	}
	if (dev->state != DEV_QUEUED)
		return;
	if (dev->queue == Q_NORMAL) {
		queue_remove(dev);
		queue_append(dev, Q_URGENT);
	} else if (dev->queue == Q_RESUME) {
		queue_remove(dev);
		queue_prepend(dev, Q_RESUME);
	}
}

struct device_mqtt *
mqttbr_find(struct mqttbr *br, const char *id)
{
	struct device *entry = device_find(br->devices, id);

	return entry ? entry->mqtt : NULL;
}

/* ---- the router's side (upstream.h) ---- */

static int
up_publish(void *up, struct device *entry, const struct upstream_msg *m, upstream_done_fn done,
           void *data)
{
	(void)up;
	return entry->mqtt ? publish(entry->mqtt, m, done, data) : -ENOTCONN;
}

static unsigned
up_retry_after(void *up, struct device *entry)
{
	(void)up;
	/* No session: a minute, for an operator to pair or enrol it. */
	return entry->mqtt ? retry_after(entry->mqtt) : 60;
}

static void
up_wanted(void *up, struct device *entry)
{
	(void)up;
	if (entry->mqtt)
		mqttbr_wanted(entry->mqtt);
}

const struct upstream_ops mqttbr_upstream_ops = {
        .publish = up_publish,
        .retry_after = up_retry_after,
        .wanted = up_wanted,
};

int
mqttbr_add_device(struct mqttbr *br, const char *id, const struct mqttbr_session *session,
                  struct device_mqtt **out)
{
	struct device *entry = device_find(br->devices, id);
	struct device_mqtt *dev;

	if (!entry)
		return -ENOENT;
	if (entry->mqtt)
		return -EEXIST;
	dev = xcalloc(1, sizeof(*dev));
	dev->br = br;
	dev->entry = device_ref(entry);
	entry->mqtt = dev;
	dev->held = entry->upstream == DEVICE_UPSTREAM_REFUSED ||
	            (session->not_after && session->not_after <= time(NULL));
	dev->id = xstrdup(id);
	dev->cert_file = xstrdup_or_null(session->cert_file);
	dev->key_file = xstrdup_or_null(session->key_file);
	dev->status_topic = xstrdup_or_null(session->status_topic);
	dev->command_filter = xstrdup_or_null(session->command_filter);
	dev->client_id = xstrdup(session->client_id ? session->client_id : id);
	dev->username = xstrdup_or_null(session->username);
	dev->retry = gw_timer_new(br->loop, retry_fired, dev);
	dev->expiry = gw_timer_new(br->loop, expiry_fired, dev);
	dev->version = br->cfg.version;
	dev->on_demand = session->on_demand;
	if (dev->on_demand)
		dev->idle = gw_timer_new(br->loop, idle_fired, dev);
	dev->state = DEV_WAITING;
	tell_upstream(dev);
	if (out)
		*out = dev;
	/* A held device asks the broker now: its refusal may be over. */
	if (dev->on_demand && !dev->held)
		park(dev);
	else
		enqueue(dev);
	return 0;
}

/* The device lets go of its session: what the registry says of it stands (a refusal). */
static void
detach(struct device_mqtt *dev)
{
	struct device *entry = dev->entry;

	if (!entry)
		return;
	if (entry->upstream != DEVICE_UPSTREAM_REFUSED)
		device_set_upstream(entry, DEVICE_UPSTREAM_NONE);
	entry->mqtt = NULL;
	dev->entry = NULL;
	device_unref(entry);
}

/* Frees dev and what hangs on it; its publishes are reported already or never will be. */
static void
device_destroy(struct device_mqtt *dev)
{
	struct mqttbr *br = dev->br;

	for (size_t i = 0; i < br->nremoving; i++) {
		if (br->removing[i] == dev) {
			br->removing[i] = br->removing[--br->nremoving];
			break;
		}
	}
	detach(dev);
	queue_remove(dev);
	mqttconn_free(dev->conn);
	while (dev->pubs) {
		dev->pubs->fn = NULL;
		publish_unlink(dev->pubs);
	}
	gw_timer_free(dev->retry);
	gw_timer_free(dev->expiry);
	gw_timer_free(dev->idle);
	drop_session(dev);
	free(dev->id);
	free(dev->cert_file);
	free(dev->key_file);
	free(dev->status_topic);
	free(dev->command_filter);
	free(dev->client_id);
	free(dev->username);
	free(dev);
}

/* Ends dev's session (its DISCONNECT still goes out) and lets go of its device. */
static void
remove_session(struct device_mqtt *dev)
{
	struct mqttbr *br = dev->br;

	detach(dev);
	gw_timer_disarm(dev->retry);
	if (dev->state == DEV_CONNECTING) {
		br->connecting--;
		phase_leave(dev);
	}
	/* Its sensors' requests hear at once; nothing of it is resumed later (DESIGN.md 3). */
	drop_session(dev);
	publishes_fail(dev);
	/* An idle on-demand session's DISCONNECT is on its way already. */
	bool parking = dev->state == DEV_PARKING;

	if ((dev->state != DEV_UP && !parking) || !dev->conn) {
		device_destroy(dev);
		pump(br);
		return;
	}
	br->removing = xreallocarray(br->removing, br->nremoving + 1, sizeof(*br->removing));
	br->removing[br->nremoving++] = dev;
	dev->state = DEV_REMOVING;
	if (!parking)
		say_goodbye(dev);
	gw_timer_arm(dev->retry, STOP_GRACE_MS);
	log_info("%s: upstream session closed", dev->id);
}

void
mqttbr_remove_device(struct mqttbr *br, const char *id)
{
	struct device_mqtt *dev = mqttbr_find(br, id);

	if (dev)
		remove_session(dev);
}

/* The registry's removal watcher: a removed device's session ends with it. */
static void
device_removed(struct device *entry, void *data)
{
	(void)data;
	if (entry->mqtt)
		remove_session(entry->mqtt);
}

int
mqttbr_set_tls_files(struct mqttbr *br, const char *id, const char *cert_file, const char *key_file)
{
	struct device_mqtt *dev = mqttbr_find(br, id);

	if (!dev)
		return -ENOENT;
	free(dev->cert_file);
	free(dev->key_file);
	dev->cert_file = xstrdup_or_null(cert_file);
	dev->key_file = xstrdup_or_null(key_file);
	/* Another certificate, or the same renamed: the next connect shows it in full. */
	drop_session(dev);
	return 0;
}

const char *
mqttbr_failure_name(enum mqttbr_failure kind)
{
	static const char *const names[MQTTBR_FAILS] = {
	        [MQTTBR_FAIL_NETWORK] = "network",
	        [MQTTBR_FAIL_BROKER_NAME] = "broker_name",
	        [MQTTBR_FAIL_BROKER_UNTRUSTED] = "broker_untrusted",
	        [MQTTBR_FAIL_DEVICE_REFUSED] = "device_refused",
	        [MQTTBR_FAIL_TLS] = "tls",
	        [MQTTBR_FAIL_CONNACK] = "connack",
	};

	return names[kind];
}

void
mqttbr_get_stats(const struct mqttbr *br, struct mqttbr_stats *st)
{
	*st = br->st;
	st->up = 0;
	for (size_t i = 0; i < device_count(br->devices); i++) {
		const struct device_mqtt *dev = session_at(br, i);

		st->up += dev && dev->state == DEV_UP;
	}
	st->queued = br->queued;
	st->connecting = br->connecting;
	st->sign_ms = sign_pace_x8(br) / 8;
}

static bool
same_string(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

bool
mqttbr_session_same(struct mqttbr *br, const char *id, const struct mqttbr_session *session)
{
	const struct device_mqtt *dev = mqttbr_find(br, id);

	return dev && same_string(dev->cert_file, session->cert_file) &&
	       same_string(dev->key_file, session->key_file) &&
	       same_string(dev->status_topic, session->status_topic) &&
	       same_string(dev->command_filter, session->command_filter) &&
	       same_string(dev->client_id, session->client_id ? session->client_id : id) &&
	       same_string(dev->username, session->username);
}

void
mqttbr_set_on_demand(struct mqttbr *br, const char *id, bool on_demand)
{
	struct device_mqtt *dev = mqttbr_find(br, id);

	if (!dev || dev->on_demand == on_demand)
		return;
	dev->on_demand = on_demand;
	if (on_demand) {
		if (!dev->idle)
			dev->idle = gw_timer_new(br->loop, idle_fired, dev);
		if (dev->state == DEV_UP)
			watch_idle(dev);
		return;
	}
	gw_timer_disarm(dev->idle);
	/* Always: connected from now on (after its DISCONNECT, for one that is parking). */
	dev->wanted = dev->wanted || dev->state == DEV_PARKING;
	if (dev->state == DEV_IDLE)
		enqueue(dev);
}

/*
 * The ALPN list in TLS wire format: each protocol after its length byte (RFC 7301 section
 * 3.1); the config allows 1 to 255 bytes each. NULL for an empty list.
 */
static unsigned char *
alpn_wire(const char *const *protos, size_t n, unsigned *len)
{
	size_t total = 0;
	unsigned char *w, *out;

	*len = 0;
	for (size_t i = 0; i < n; i++)
		total += 1 + strlen(protos[i]);
	if (total == 0)
		return NULL;
	out = w = xmalloc(total);
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(protos[i]);

		*w++ = (unsigned char)l;
		memcpy(w, protos[i], l);
		w += l;
	}
	*len = (unsigned)total;
	return out;
}

static int
version_of(const struct mqttbr_options *opt)
{
	return opt->mqtt311 ? MQTTCODEC_V311 : MQTTCODEC_V5;
}

/* What a session is made with at its connect: a change means a new session for every device. */
static bool
connection_same(const struct mqttbr *br, const struct mqttbr_options *opt)
{
	unsigned alpn_len;
	unsigned char *alpn = alpn_wire(opt->alpn, opt->nalpn, &alpn_len);
	bool same_alpn = alpn_len == br->cfg.alpn_len &&
	                 (alpn_len == 0 || memcmp(alpn, br->cfg.alpn, alpn_len) == 0);

	free(alpn);
	return same_alpn && version_of(opt) == br->cfg.version &&
	       same_string(br->cfg.broker, opt->broker) && same_string(br->cfg.host, opt->host) &&
	       br->cfg.port == opt->port && same_string(br->cfg.ca_file, opt->ca_file) &&
	       br->cfg.keepalive == opt->keepalive &&
	       br->cfg.connect_timeout == opt->connect_timeout &&
	       same_string(br->presence.online, opt->online) &&
	       same_string(br->presence.offline, opt->offline) &&
	       br->presence.qos == opt->presence_qos && br->command_qos == opt->command_qos;
}

/* Takes opt's settings; a new TLS context when what it is made of changed. */
static void
configure(struct mqttbr *br, const struct mqttbr_options *opt, bool all)
{
	br->cfg.publish_timeout = opt->publish_timeout;
	br->cfg.reconnect_min = opt->reconnect_min;
	br->cfg.reconnect_max = opt->reconnect_max;
	br->cfg.rejected_retry = opt->rejected_retry;
	br->cfg.session_lifetime = opt->session_lifetime;
	br->cfg.idle_timeout = opt->idle_timeout;
	br->cfg.session_expiry = opt->session_expiry;
	if (!all)
		return;

	unsigned alpn_len;
	unsigned char *alpn = alpn_wire(opt->alpn, opt->nalpn, &alpn_len);
	SSL_CTX *ctx = NULL;
	bool new_broker;

	/* Unusable (logged): every connect then fails, saying why, until a reload mends it. */
	if (mqttconn_ctx_new(&ctx, opt->ca_file, alpn, alpn_len) < 0)
		ctx = NULL;
	/* Sessions up keep the context they were made with (each SSL holds a reference). */
	SSL_CTX_free(br->ctx);
	br->ctx = ctx;
	free(br->cfg.alpn);
	br->cfg.alpn = alpn;
	br->cfg.alpn_len = alpn_len;
	new_broker = !same_string(br->cfg.host, opt->host) || br->cfg.port != opt->port;
	free(br->cfg.broker);
	free(br->cfg.host);
	free(br->cfg.ca_file);
	free(br->presence.online);
	free(br->presence.offline);
	br->cfg.broker = xstrdup_or_null(opt->broker);
	br->cfg.host = xstrdup_or_null(opt->host);
	br->cfg.port = opt->port;
	br->cfg.ca_file = xstrdup_or_null(opt->ca_file);
	br->presence.online = xstrdup_or_null(opt->online);
	br->presence.offline = xstrdup_or_null(opt->offline);
	br->cfg.keepalive = opt->keepalive;
	br->cfg.connect_timeout = opt->connect_timeout;
	br->presence.qos = opt->presence_qos;
	br->command_qos = opt->command_qos;
	br->cfg.version = version_of(opt);
	/* Sessions of another broker or CA are worth nothing there, and trusted too much. */
	for (size_t i = 0; i < device_count(br->devices); i++) {
		if (session_at(br, i))
			drop_session(session_at(br, i));
	}
	if (new_broker) {
		resolve_cancel(br->resolving);
		br->resolving = NULL;
		br->addrs.naddrs = 0;
		resolve_broker(br);
	}
}

void
mqttbr_reconfigure(struct mqttbr *br, const struct mqttbr_options *opt, bool *restart_all)
{
	*restart_all = !connection_same(br, opt);
	configure(br, opt, *restart_all);
}

void
mqttbr_on_judged(struct mqttbr *br, mqttbr_judged_fn fn, void *data)
{
	br->judged = fn;
	br->judged_data = data;
}

void
mqttbr_on_message(struct mqttbr *br, mqttbr_message_fn fn, void *data)
{
	br->message = fn;
	br->message_data = data;
}

static void
stop_timed_out(struct gw_timer *t, void *data)
{
	struct mqttbr *br = data;

	(void)t;
	log_warnx("mqtt: %zu sessions did not disconnect within %d ms", br->stop.remaining,
	          STOP_GRACE_MS);
	br->stop.remaining = 0;
	if (br->stop.fn)
		br->stop.fn(br->stop.data);
}

void
mqttbr_stop(struct mqttbr *br, mqttbr_stopped_fn fn, void *data)
{
	br->stop.fn = fn;
	br->stop.data = data;
	br->stop.stopping = true;
	br->stop.remaining = 1; /* held until every disconnect is issued */
	log_info("upstream: %llu full TLS handshakes, %llu resumed",
	         (unsigned long long)br->st.full, (unsigned long long)br->st.resumed);
	for (size_t i = 0; i < device_count(br->devices); i++) {
		struct device_mqtt *dev = session_at(br, i);

		if (!dev)
			continue;
		gw_timer_disarm(dev->retry);
		gw_timer_disarm(dev->expiry);
		queue_remove(dev);
		if (dev->state == DEV_CONNECTING) {
			br->connecting--;
			phase_leave(dev);
			mqttconn_free(dev->conn);
			dev->conn = NULL;
		}
		if (dev->state != DEV_UP) {
			dev->state = DEV_STOPPED;
			tell_upstream(dev);
			publishes_fail(dev);
			continue;
		}
		dev->state = DEV_STOPPING;
		tell_upstream(dev);
		br->stop.remaining++;
		publishes_fail(dev);
		say_goodbye(dev);
	}
	gw_timer_arm(br->stop.timer, STOP_GRACE_MS);
	if (--br->stop.remaining == 0) {
		gw_timer_disarm(br->stop.timer);
		if (fn)
			fn(data);
	}
}

struct mqttbr *
mqttbr_new(struct gw_loop *loop, const struct mqttbr_options *opt, const struct keystore *ks)
{
	struct mqttbr *br = xcalloc(1, sizeof(*br));

	br->loop = loop;
	br->ks = ks;
	br->devices = keystore_devices(ks);
	device_registry_on_remove(br->devices, device_removed, br);
	br->stop.timer = gw_timer_new(loop, stop_timed_out, br);
	br->resolve_timer = gw_timer_new(loop, resolve_fired, br);
	br->trim_timer = gw_timer_new(loop, trim_fired, br);
	configure(br, opt, true);
	return br;
}

void
mqttbr_free(struct mqttbr *br)
{
	if (!br)
		return;
	device_registry_off_remove(br->devices, device_removed, br);
	for (size_t i = 0; i < device_count(br->devices); i++) {
		if (session_at(br, i))
			device_destroy(session_at(br, i));
	}
	while (br->nremoving > 0)
		device_destroy(br->removing[0]);
	/* Handshakes paused on a signature finish before their memory goes (DESIGN.md 3). */
	mqttconn_reap(STOP_GRACE_MS);
	free(br->removing);
	resolve_cancel(br->resolving);
	gw_timer_free(br->stop.timer);
	gw_timer_free(br->resolve_timer);
	gw_timer_free(br->trim_timer);
	SSL_CTX_free(br->ctx);
	free(br->cfg.broker);
	free(br->cfg.host);
	free(br->cfg.ca_file);
	free(br->cfg.alpn);
	free(br->presence.online);
	free(br->presence.offline);
	free(br);
}
