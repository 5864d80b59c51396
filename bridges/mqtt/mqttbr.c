/* SPDX-License-Identifier: Apache-2.0 */
#include "mqttbr.h"
#include "conf.h"
#include "log.h"
#include "loop.h"

#include <MQTTAsync.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* How long a clean shutdown waits for the brokers' DISCONNECT handshakes. */
#define STOP_GRACE_MS 3000
/* Paho events handled per wakeup, so that a flood of them cannot starve the loop. */
#define EVENTS_PER_WAKEUP 1024

enum dev_state {
	DEV_CONNECTING,
	DEV_UP,
	DEV_WAITING,
	DEV_STOPPING, /* mqttbr_stop(): DISCONNECT sent */
	DEV_STOPPED,
	DEV_REMOVING, /* mqttbr_remove_device(): DISCONNECT sent, then freed */
};

struct publish {
	struct mqttbr_device *dev;
	/* NULL once the outcome was reported (timeout, session lost): paho may still answer. */
	mqttbr_publish_fn fn;
	void *data;
	struct gw_timer *timer;
	struct publish *prev, *next;
};

struct mqttbr_device {
	struct mqttbr *br;
	char *id;
	char *cert_file;
	char *key_file;
	char *status_topic; /* presence: retained online/offline, NULL for none */
	/* The broker's Maximum Packet Size from its CONNACK (MQTT 5 3.2.2.3.6), 0: none given. */
	unsigned max_packet;
	char *command_filter; /* subscribed at each connect, NULL for none */
	char *client_id;      /* the MQTT client id (upstream.client_id expanded) */
	/* What its client was created for: a reload may change the bridge's before it goes. */
	int mqtt_version;
	char *username; /* NULL: none sent */
	MQTTAsync client;
	enum dev_state state;
	unsigned failures; /* consecutive failed connects, for the backoff */
	/* The broker refused this device's identity: retried on the slow schedule. */
	bool rejected;
	char reason[256]; /* why the last connect failed or the session was lost */
	struct gw_timer *retry;
	/* The certificate's notAfter, read at each connect; the session ends then. */
	time_t not_after;
	struct gw_timer *expiry;
	/* Publishes paho still holds a pointer to, oldest first. */
	struct publish *pending;
	/* hostname_mismatches and alerts_read when this connect started: see on_trace(). */
	unsigned mismatches_before;
	unsigned alerts_before;
	/* OpenSSL's reasons for the last failed handshake; written on paho's thread. */
	pthread_mutex_t tls_lock;
	char tls_error[512];
};

enum ev_type {
	EV_CONNECTED,
	EV_CONNECT_FAILED,
	EV_CONN_LOST,
	EV_PUB_DONE,
	EV_DISCONNECTED,
	EV_SUBSCRIBED,
	EV_MESSAGE,
};

/* A message from the broker, copied off paho's thread. */
struct inbound {
	char *topic;
	char *content_type;
	uint8_t *payload;
	size_t len;
	int qos;
};

/* What a paho thread hands to the loop. */
struct event {
	enum ev_type type;
	struct mqttbr_device *dev;
	struct publish *pub;
	int code;   /* paho's MQTTASYNC_* code */
	int reason; /* MQTT 5 reason code */
	char *msg;
	struct inbound *in; /* EV_MESSAGE */
	struct event *next;
};

struct mqttbr {
	struct gw_loop *loop;
	struct {
		char *broker;
		char *host;
		char *ca_file;
		int keepalive;
		int connect_timeout;
		int publish_timeout;
		int reconnect_min;
		int reconnect_max;
		int rejected_retry;
		int mqtt_version; /* GWCONF_MQTT_5 or GWCONF_MQTT_311 */
		/* ALPN protocols in wire format (RFC 7301 section 3.1), NUL-terminated: paho
		 * 1.3.12 copies them with strdup. NULL: none offered. */
		unsigned char *alpn;
		unsigned alpn_len;
	} cfg;
	struct mqttbr_device **devices;
	size_t ndevices;
	size_t connecting; /* devices with a connect in flight */
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
	struct mqttbr_device **removing;
	size_t nremoving;

	int wakefd;
	pthread_mutex_t lock;
	struct event *head, **tail;

	struct {
		mqttbr_stopped_fn fn;
		void *data;
		size_t remaining;
		struct gw_timer *timer;
	} stop;
};

/*
 * paho checks the broker's host name after the handshake and tells the application only
 * "TCP/TLS connect failure"; the reason appears solely in its protocol-level trace, which is
 * process-wide. So count those lines here and enable that trace level only while a connect is
 * in flight (it would otherwise format a line for every packet).
 */
static atomic_uint hostname_mismatches;

/*
 * With TLS 1.3 a broker refuses a client certificate after the client's side of the handshake
 * is done: the alert (certificate revoked, expired, ...) arrives with the first read, and paho
 * again reports only "TCP/TLS connect failure". The alert, too, appears only in the trace, and
 * without the connection it belongs to: a failing connect takes the latest alert read since it
 * started. Devices refused at the same moment for different reasons may swap reasons; all of
 * them are still known to be refused.
 */
static pthread_mutex_t alert_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned alerts_read;
static char last_alert[96];

/* ---- paho's threads: copy what is needed, queue it, wake the loop ---- */

static void
on_trace(enum MQTTASYNC_TRACE_LEVELS level, char *message)
{
	const char *alert = strstr(message, "SSL alert read:fatal:");

	if (strstr(message, "X509_check_host for hostname")) {
		atomic_fetch_add(&hostname_mismatches, 1);
	} else if (alert) {
		pthread_mutex_lock(&alert_lock);
		snprintf(last_alert, sizeof(last_alert), "%s",
		         alert + strlen("SSL alert read:fatal:"));
		alerts_read++;
		pthread_mutex_unlock(&alert_lock);
	} else if (level >= MQTTASYNC_TRACE_ERROR)
		log_debug("paho: %s", message);
}

static void
inbound_free(struct inbound *in)
{
	if (!in)
		return;
	free(in->topic);
	free(in->content_type);
	free(in->payload);
	free(in);
}

static void
event_free(struct event *ev)
{
	free(ev->msg);
	inbound_free(ev->in);
	free(ev);
}

static void
post_event(struct mqttbr *br, struct event *ev)
{
	uint64_t one = 1;
	bool was_empty;

	pthread_mutex_lock(&br->lock);
	was_empty = !br->head;
	*br->tail = ev;
	br->tail = &ev->next;
	pthread_mutex_unlock(&br->lock);
	/*
	 * One wakeup per batch: drain_events() empties the list before it returns (or wakes
	 * itself again), so a list that was not empty has its wakeup coming already.
	 */
	if (was_empty && write(br->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("mqtt: eventfd write");
}

static void
post(struct mqttbr *br, enum ev_type type, struct mqttbr_device *dev, struct publish *pub, int code,
     int reason, const char *msg)
{
	struct event *ev = calloc(1, sizeof(*ev));

	if (!ev) {
		/* Nowhere to report it from paho's thread; the publish timeout still fires. */
		return;
	}
	*ev = (struct event){.type = type, .dev = dev, .pub = pub, .code = code, .reason = reason};
	if (msg)
		ev->msg = strdup(msg);
	post_event(br, ev);
}

static void
on_connected(void *ctx, MQTTAsync_successData5 *resp)
{
	struct mqttbr_device *dev = ctx;
	int max = resp ? MQTTProperties_getNumericValue(&resp->properties,
	                                                MQTTPROPERTY_CODE_MAXIMUM_PACKET_SIZE)
	               : 0;

	/* The reason field carries the broker's Maximum Packet Size (paho: < 0 when absent). */
	post(dev->br, EV_CONNECTED, dev, NULL, 0, max > 0 ? max : 0, NULL);
}

static void
on_connect_failed(void *ctx, MQTTAsync_failureData5 *resp)
{
	struct mqttbr_device *dev = ctx;

	post(dev->br, EV_CONNECT_FAILED, dev, NULL, resp ? resp->code : MQTTASYNC_FAILURE,
	     resp ? resp->reasonCode : 0, resp ? resp->message : NULL);
}

/*
 * MQTT 3.1.1 sessions: paho wants the callbacks without properties. Its connect failure
 * carries the CONNACK return code (MQTT 3.1.1 section 3.2.2.3) as the code: given as the MQTT 5
 * reason it became, so that both versions are judged alike (a refused identity is retried on
 * the slow schedule).
 */
static void
on_connected311(void *ctx, MQTTAsync_successData *resp)
{
	struct mqttbr_device *dev = ctx;

	(void)resp;
	/* No Maximum Packet Size in 3.1.1: 0, none known. */
	post(dev->br, EV_CONNECTED, dev, NULL, 0, 0, NULL);
}

static void
on_connect_failed311(void *ctx, MQTTAsync_failureData *resp)
{
	static const int reasons[] = {
	        [1] = MQTTREASONCODE_UNSUPPORTED_PROTOCOL_VERSION,
	        [2] = MQTTREASONCODE_CLIENT_IDENTIFIER_NOT_VALID,
	        [3] = MQTTREASONCODE_SERVER_UNAVAILABLE,
	        [4] = MQTTREASONCODE_BAD_USER_NAME_OR_PASSWORD,
	        [5] = MQTTREASONCODE_NOT_AUTHORIZED,
	};
	struct mqttbr_device *dev = ctx;
	int code = resp ? resp->code : MQTTASYNC_FAILURE;
	int reason = code >= 1 && code <= 5 ? reasons[code] : 0;

	post(dev->br, EV_CONNECT_FAILED, dev, NULL, reason ? MQTTASYNC_FAILURE : code, reason,
	     resp ? resp->message : NULL);
}

static void
on_connection_lost(void *ctx, char *cause)
{
	struct mqttbr_device *dev = ctx;

	post(dev->br, EV_CONN_LOST, dev, NULL, 0, 0, cause);
	free(cause);
}

/*
 * A command from the cloud, on paho's thread: copied for the loop. Returning 1 tells paho it
 * was taken; at QoS 1 the PUBACK then goes out, so the command is the gateway's to deliver
 * (into its bounded, expiring per-device queue).
 */
static int
on_message(void *ctx, char *topic, int topic_len, MQTTAsync_message *msg)
{
	struct mqttbr_device *dev = ctx;
	struct event *ev = calloc(1, sizeof(*ev));
	struct inbound *in = calloc(1, sizeof(*in));
	MQTTProperty *ct =
	        MQTTProperties_getProperty(&msg->properties, MQTTPROPERTY_CODE_CONTENT_TYPE);
	size_t tlen = topic_len > 0 ? (size_t)topic_len : strlen(topic);

	if (!ev || !in)
		goto drop;
	in->topic = strndup(topic, tlen);
	in->len = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
	in->payload = malloc(in->len ? in->len : 1);
	in->qos = msg->qos;
	if (ct)
		in->content_type = strndup(ct->value.data.data, (size_t)ct->value.data.len);
	if (!in->topic || !in->payload || (ct && !in->content_type))
		goto drop;
	memcpy(in->payload, msg->payload, in->len);
	ev->type = EV_MESSAGE;
	ev->dev = dev;
	ev->in = in;
	post_event(dev->br, ev);
	MQTTAsync_freeMessage(&msg);
	MQTTAsync_free(topic);
	return 1;
drop:
	/* Out of memory: 0 asks paho to hand it over again later. */
	inbound_free(in);
	free(ev);
	return 0;
}

static void
on_subscribed(void *ctx, MQTTAsync_successData5 *resp)
{
	struct mqttbr_device *dev = ctx;

	/* MQTT 5 section 3.9.3: a SUBACK reason code of 0x80 or more is a refusal. */
	post(dev->br, EV_SUBSCRIBED, dev, NULL, MQTTASYNC_SUCCESS, resp ? resp->reasonCode : 0,
	     NULL);
}

static void
on_subscribe_failed(void *ctx, MQTTAsync_failureData5 *resp)
{
	struct mqttbr_device *dev = ctx;

	post(dev->br, EV_SUBSCRIBED, dev, NULL, resp ? resp->code : MQTTASYNC_FAILURE,
	     resp ? resp->reasonCode : 0, resp ? resp->message : NULL);
}

/* MQTT 3.1.1: a SUBACK return code 0x80 is a failure (section 3.9.3), which paho reports
 * through onFailure; given as the MQTT 5 reason "unspecified error" for report_subscribe(). */
static void
on_subscribed311(void *ctx, MQTTAsync_successData *resp)
{
	struct mqttbr_device *dev = ctx;
	int granted = resp ? resp->alt.qos : 0;

	post(dev->br, EV_SUBSCRIBED, dev, NULL, MQTTASYNC_SUCCESS,
	     granted >= 0x80 ? MQTTREASONCODE_UNSPECIFIED_ERROR : 0, NULL);
}

static void
on_subscribe_failed311(void *ctx, MQTTAsync_failureData *resp)
{
	struct mqttbr_device *dev = ctx;

	post(dev->br, EV_SUBSCRIBED, dev, NULL, resp && resp->code ? resp->code : MQTTASYNC_FAILURE,
	     MQTTREASONCODE_UNSPECIFIED_ERROR, resp ? resp->message : NULL);
}

/* MQTT 3.1.1 has no refusing PUBACK: a publish fails only with its session. */
static void
on_published311(void *ctx, MQTTAsync_successData *resp)
{
	struct publish *pub = ctx;

	(void)resp;
	post(pub->dev->br, EV_PUB_DONE, pub->dev, pub, 0, 0, NULL);
}

static void
on_publish_failed311(void *ctx, MQTTAsync_failureData *resp)
{
	struct publish *pub = ctx;

	post(pub->dev->br, EV_PUB_DONE, pub->dev, pub,
	     resp && resp->code ? resp->code : MQTTASYNC_FAILURE, 0, resp ? resp->message : NULL);
}

static void
on_published(void *ctx, MQTTAsync_successData5 *resp)
{
	struct publish *pub = ctx;

	(void)resp;
	post(pub->dev->br, EV_PUB_DONE, pub->dev, pub, 0, 0, NULL);
}

static void
on_publish_failed(void *ctx, MQTTAsync_failureData5 *resp)
{
	struct publish *pub = ctx;
	/* A refusing PUBACK comes with code 0 and the reason code; a lost session with -11. */
	int code = resp && resp->code ? resp->code : MQTTASYNC_FAILURE;

	post(pub->dev->br, EV_PUB_DONE, pub->dev, pub, code, resp ? resp->reasonCode : 0,
	     resp ? resp->message : NULL);
}

static void
on_disconnected(void *ctx, MQTTAsync_successData5 *resp)
{
	struct mqttbr_device *dev = ctx;

	(void)resp;
	post(dev->br, EV_DISCONNECTED, dev, NULL, 0, 0, NULL);
}

static void
on_disconnect_failed(void *ctx, MQTTAsync_failureData5 *resp)
{
	struct mqttbr_device *dev = ctx;

	(void)resp;
	post(dev->br, EV_DISCONNECTED, dev, NULL, 0, 0, NULL);
}

/* OpenSSL's error queue, one line per call (ERR_print_errors_cb), during a failed handshake. */
static int
on_tls_error(const char *str, size_t len, void *ctx)
{
	struct mqttbr_device *dev = ctx;
	size_t used;

	while (len > 0 && (str[len - 1] == '\n' || str[len - 1] == '\0'))
		len--;
	pthread_mutex_lock(&dev->tls_lock);
	used = strlen(dev->tls_error);
	if (used + len + 3 < sizeof(dev->tls_error)) {
		if (used > 0) {
			memcpy(dev->tls_error + used, "; ", 2);
			used += 2;
		}
		memcpy(dev->tls_error + used, str, len);
		dev->tls_error[used + len] = '\0';
	}
	pthread_mutex_unlock(&dev->tls_lock);
	return 1;
}

/* ---- the loop's thread ---- */

static void connect_device(struct mqttbr_device *dev);

static void removing_done(struct mqttbr_device *dev);

static void client_destroy(struct mqttbr_device *dev);
static int client_create(struct mqttbr_device *dev);
static void schedule_retry(struct mqttbr_device *dev);

static void
retry_fired(struct gw_timer *t, void *data)
{
	struct mqttbr_device *dev = data;

	(void)t;
	/* While removing, the retry timer bounds the wait for the DISCONNECT. */
	if (dev->state == DEV_REMOVING) {
		removing_done(dev);
		return;
	}
	/*
	 * paho 1.3.12 copies the ALPN list at every MQTTAsync_connect and frees only the last copy,
	 * when the client is destroyed (MQTTAsync.c, MQTTProtocolClient.c): a fresh client for
	 * each try keeps a long outage from leaking one copy per try.
	 */
	if (dev->br->cfg.alpn) {
		client_destroy(dev);
		if (client_create(dev) < 0) {
			schedule_retry(dev);
			return;
		}
	}
	connect_device(dev);
}

static uint32_t
random_u32(void)
{
	uint32_t v;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != sizeof(v))
		v = (uint32_t)random();
	return v;
}

/*
 * Exponential backoff from reconnect_min to reconnect_max, with the wait drawn from its upper
 * half so that devices which dropped together (a broker restart) do not return together.
 */
static void
schedule_retry(struct mqttbr_device *dev)
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
	dev->state = DEV_WAITING;
	gw_timer_arm(dev->retry, ms);
}

static const char *
paho_code_str(int code)
{
	switch (code) {
	case MQTTASYNC_FAILURE:
		return "connection failed";
	case MQTTASYNC_BAD_PROTOCOL:
		return "broker refused MQTT 5";
	case MQTTASYNC_SSL_NOT_SUPPORTED:
		return "TLS not supported";
	case MQTTASYNC_DISCONNECTED:
		return "disconnected";
	default:
		return MQTTAsync_strerror(code);
	}
}

/*
 * The broker's refusals of the device itself, as OpenSSL words the alert it received (RFC 8446
 * section 6.2) or as the CONNACK's reason code (MQTT 5.0 section 3.2.2.2). Anything else (the
 * broker away, our own checks of the broker) is retried on the normal backoff.
 */
static const char *const refusing_alerts[] = {
        "certificate revoked", "certificate expired", "bad certificate",      "certificate unknown",
        "unknown ca",          "access denied",       "certificate required",
};

static bool
refused_identity(const char *tls, int reason)
{
	for (size_t i = 0; i < sizeof(refusing_alerts) / sizeof(refusing_alerts[0]); i++) {
		if (strcasestr(tls, refusing_alerts[i]))
			return true;
	}
	return reason == MQTTREASONCODE_NOT_AUTHORIZED ||
	       reason == MQTTREASONCODE_BAD_USER_NAME_OR_PASSWORD ||
	       reason == MQTTREASONCODE_BANNED ||
	       reason == MQTTREASONCODE_BAD_AUTHENTICATION_METHOD ||
	       reason == MQTTREASONCODE_CLIENT_IDENTIFIER_NOT_VALID;
}

/* The connect that just failed, in words: logged, kept as the device's reason, classified. */
static void
report_connect_failure(struct mqttbr_device *dev, const struct event *ev)
{
	struct mqttbr *br = dev->br;
	char tls[sizeof(dev->tls_error)];
	bool was_rejected = dev->rejected;

	pthread_mutex_lock(&dev->tls_lock);
	memcpy(tls, dev->tls_error, sizeof(tls));
	dev->tls_error[0] = '\0';
	pthread_mutex_unlock(&dev->tls_lock);
	pthread_mutex_lock(&alert_lock);
	if (!tls[0] && alerts_read != dev->alerts_before)
		snprintf(tls, sizeof(tls), "TLS alert from the broker: %s", last_alert);
	pthread_mutex_unlock(&alert_lock);

	dev->rejected = refused_identity(tls, ev->reason);
	enum mqttbr_failure kind = MQTTBR_FAIL_NETWORK;

	if (!tls[0] && atomic_load(&hostname_mismatches) != dev->mismatches_before) {
		kind = MQTTBR_FAIL_BROKER_NAME;
		snprintf(dev->reason, sizeof(dev->reason),
		         "refusing broker %s: its certificate is not issued for the host name "
		         "\"%s\" (check upstream.broker, or the broker's certificate "
		         "subjectAltName)",
		         br->cfg.broker, br->cfg.host);
	} else if (strstr(tls, "certificate verify failed")) {
		kind = MQTTBR_FAIL_BROKER_UNTRUSTED;
		snprintf(dev->reason, sizeof(dev->reason),
		         "refusing broker %s: its certificate does not verify against %s (another "
		         "CA, expired, or not yet valid): %s",
		         br->cfg.broker, br->cfg.ca_file, tls);
	} else if (dev->rejected && tls[0]) {
		kind = MQTTBR_FAIL_DEVICE_REFUSED;
		snprintf(dev->reason, sizeof(dev->reason),
		         "broker %s refused the device's certificate: %s", br->cfg.broker, tls);
	} else if (tls[0]) {
		kind = MQTTBR_FAIL_TLS;
		snprintf(dev->reason, sizeof(dev->reason), "upstream %s: TLS handshake failed: %s",
		         br->cfg.broker, tls);
	} else if (ev->reason >= MQTTREASONCODE_UNSPECIFIED_ERROR) {
		kind = dev->rejected ? MQTTBR_FAIL_DEVICE_REFUSED : MQTTBR_FAIL_CONNACK;
		snprintf(dev->reason, sizeof(dev->reason), "broker %s refused the connection: %s",
		         br->cfg.broker, MQTTReasonCode_toString((enum MQTTReasonCodes)ev->reason));
	} else {
		snprintf(dev->reason, sizeof(dev->reason), "cannot connect upstream to %s: %s%s%s",
		         br->cfg.broker, paho_code_str(ev->code), ev->msg ? ": " : "",
		         ev->msg ? ev->msg : "");
	}
	br->st.failures[kind]++;
	if (dev->rejected && !was_rejected)
		log_warnx("%s: rejected upstream: %s; next try in %d s", dev->id, dev->reason,
		          br->cfg.rejected_retry);
	else if (!dev->rejected)
		log_warnx("%s: %s", dev->id, dev->reason);
}

static void publish_report(struct publish *pub, int status);

/* The notAfter of the first certificate in a PEM file, 0 if unreadable (TLS then says why). */
static time_t
cert_not_after(const char *file)
{
	FILE *f = fopen(file, "r");
	X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
	struct tm tm;
	time_t t = 0;

	if (x && ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1)
		t = timegm(&tm);
	/* An unreadable file leaves errors behind; the next TLS report must not show them. */
	ERR_clear_error();
	X509_free(x);
	if (f)
		fclose(f);
	return t;
}

/*
 * An expired certificate is never presented: the device waits on the slow schedule for a new
 * one (a renewal, or gwctl device import-cert), which the next try reads.
 */
static bool
refuse_expired(struct mqttbr_device *dev)
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
	schedule_retry(dev);
	return true;
}

static void
expiry_fired(struct gw_timer *t, void *data)
{
	struct mqttbr_device *dev = data;
	MQTTAsync_disconnectOptions opts = MQTTAsync_disconnectOptions_initializer5;

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
	for (struct publish *pub = dev->pending; pub; pub = pub->next)
		publish_report(pub, -ENOTCONN);
	opts.onSuccess5 = on_disconnected;
	opts.onFailure5 = on_disconnect_failed;
	opts.context = dev;
	MQTTAsync_disconnect(dev->client, &opts);
	refuse_expired(dev);
}

static void
connecting_changed(struct mqttbr *br, int delta)
{
	br->connecting += (size_t)delta;
	MQTTAsync_setTraceLevel(br->connecting ? MQTTASYNC_TRACE_PROTOCOL : MQTTASYNC_TRACE_ERROR);
}

static void
connect_device(struct mqttbr_device *dev)
{
	struct mqttbr *br = dev->br;
	MQTTAsync_connectOptions opts = MQTTAsync_connectOptions_initializer5;
	MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
	MQTTAsync_willOptions will = MQTTAsync_willOptions_initializer;
	int rc;

	dev->not_after = cert_not_after(dev->cert_file);
	if (refuse_expired(dev))
		return;
	ssl.trustStore = br->cfg.ca_file;
	ssl.keyStore = dev->cert_file;
	ssl.privateKey = dev->key_file;
	/* Both checks on, always: the chain against ca_file and the host name (DESIGN.md 3). */
	ssl.enableServerCertAuth = 1;
	ssl.verify = 1;
	/* Only the configured CA: the system bundle would trust any public CA and costs memory. */
	ssl.disableDefaultTrustStore = 1;
	ssl.ssl_error_cb = on_tls_error;
	ssl.ssl_error_context = dev;
	/* paho keeps a copy until the client is destroyed: see retry_fired(). */
	if (br->cfg.alpn) {
		ssl.protos = br->cfg.alpn;
		ssl.protos_len = br->cfg.alpn_len;
	}

	opts.keepAliveInterval = br->cfg.keepalive;
	opts.connectTimeout = br->cfg.connect_timeout;
	/* The identity is the certificate's; a user name only where the broker wants one. */
	opts.username = dev->username;
	if (dev->mqtt_version == GWCONF_MQTT_5) {
		opts.cleanstart = 1;
		opts.onSuccess5 = on_connected;
		opts.onFailure5 = on_connect_failed;
	} else {
		/* paho refuses 3.1.1 with cleanstart or the MQTT 5 callbacks set. */
		opts.MQTTVersion = MQTTVERSION_3_1_1;
		opts.cleanstart = 0;
		opts.cleansession = 1;
		opts.onSuccess = on_connected311;
		opts.onFailure = on_connect_failed311;
	}
	if (dev->status_topic) {
		/* The broker says "offline" for us when the session dies without a DISCONNECT. */
		will.topicName = dev->status_topic;
		will.message = br->presence.offline;
		will.retained = 1;
		will.qos = br->presence.qos;
		opts.will = &will;
	}
	opts.ssl = &ssl;
	opts.context = dev;
	/* paho's own reconnect would bypass our backoff and, later, the TPM's rate limit. */
	opts.automaticReconnect = 0;

	dev->state = DEV_CONNECTING;
	dev->mismatches_before = atomic_load(&hostname_mismatches);
	pthread_mutex_lock(&alert_lock);
	dev->alerts_before = alerts_read;
	pthread_mutex_unlock(&alert_lock);
	connecting_changed(br, +1);
	br->st.connects++;
	rc = MQTTAsync_connect(dev->client, &opts);
	if (rc != MQTTASYNC_SUCCESS) {
		connecting_changed(br, -1);
		br->st.failures[MQTTBR_FAIL_NETWORK]++;
		log_warnx("%s: cannot start upstream connect to %s: %s", dev->id, br->cfg.broker,
		          paho_code_str(rc));
		schedule_retry(dev);
	}
}

static void
publish_free(struct publish *pub)
{
	struct mqttbr_device *dev = pub->dev;

	if (pub->prev)
		pub->prev->next = pub->next;
	else
		dev->pending = pub->next;
	if (pub->next)
		pub->next->prev = pub->prev;
	gw_timer_free(pub->timer);
	free(pub);
}

static void
publish_report(struct publish *pub, int status)
{
	mqttbr_publish_fn fn = pub->fn;

	if (!fn)
		return;
	pub->fn = NULL;
	gw_timer_disarm(pub->timer);
	fn(pub->dev, status, pub->data);
}

static int
publish_status(const struct event *ev)
{
	if (ev->code == MQTTASYNC_SUCCESS)
		return 0;
	switch (ev->reason) {
	case MQTTREASONCODE_NOT_AUTHORIZED:
	case MQTTREASONCODE_TOPIC_NAME_INVALID:
		return -EACCES;
	case MQTTREASONCODE_QUOTA_EXCEEDED:
	case MQTTREASONCODE_SERVER_BUSY:
		return -EAGAIN;
	default:
		break;
	}
	if (ev->reason >= MQTTREASONCODE_UNSPECIFIED_ERROR)
		return -EPROTO;
	return -ENOTCONN;
}

static void
stop_one_done(struct mqttbr *br)
{
	if (br->stop.remaining == 0 || --br->stop.remaining > 0)
		return;
	gw_timer_disarm(br->stop.timer);
	if (br->stop.fn)
		br->stop.fn(br->stop.data);
}

static void
report_subscribe(struct mqttbr_device *dev, const struct event *ev)
{
	if (ev->code == MQTTASYNC_SUCCESS && ev->reason < MQTTREASONCODE_UNSPECIFIED_ERROR) {
		log_debug("%s: subscribed to %s", dev->id, dev->command_filter);
		return;
	}
	log_warnx("%s: the broker refused the subscription to %s: %s; no commands will reach "
	          "this device (check the broker's ACL for it)",
	          dev->id, dev->command_filter,
	          ev->reason ? MQTTReasonCode_toString((enum MQTTReasonCodes)ev->reason)
	                     : paho_code_str(ev->code));
}

/* A new session: say so, and ask for the device's commands (cleanstart: none are kept). */
static void
session_started(struct mqttbr_device *dev)
{
	struct mqttbr *br = dev->br;

	if (dev->status_topic) {
		struct mqttbr_message m = {
		        .topic = dev->status_topic,
		        .payload = br->presence.online,
		        .len = strlen(br->presence.online),
		        .qos = br->presence.qos,
		        .retain = true,
		};

		if (mqttbr_publish(dev, &m, NULL, NULL) < 0)
			log_warnx("%s: cannot publish its online status", dev->id);
	}
	if (dev->command_filter) {
		MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
		int rc;

		if (dev->mqtt_version == GWCONF_MQTT_5) {
			ro.onSuccess5 = on_subscribed;
			ro.onFailure5 = on_subscribe_failed;
		} else {
			ro.onSuccess = on_subscribed311;
			ro.onFailure = on_subscribe_failed311;
		}
		ro.context = dev;
		rc = MQTTAsync_subscribe(dev->client, dev->command_filter, br->command_qos, &ro);
		if (rc != MQTTASYNC_SUCCESS)
			log_warnx("%s: cannot subscribe to %s: %s", dev->id, dev->command_filter,
			          paho_code_str(rc));
	}
}

static void
handle_event(struct mqttbr *br, struct event *ev)
{
	struct mqttbr_device *dev = ev->dev;

	switch (ev->type) {
	case EV_CONNECTED:
		if (dev->state != DEV_CONNECTING)
			break;
		connecting_changed(br, -1);
		dev->state = DEV_UP;
		dev->failures = 0;
		dev->max_packet = (unsigned)ev->reason;
		if (dev->rejected)
			log_info("%s: accepted upstream again", dev->id);
		dev->rejected = false;
		dev->reason[0] = '\0';
		br->st.connected++;
		log_info("%s: upstream connected to %s", dev->id, br->cfg.broker);
		session_started(dev);
		if (dev->not_after) {
			time_t now = time(NULL);

			gw_timer_arm(dev->expiry, dev->not_after > now
			                                  ? (uint64_t)(dev->not_after - now) * 1000
			                                  : 0);
		}
		/* Last: the observer may remove the device. */
		if (br->judged)
			br->judged(dev->id, true, NULL, br->judged_data);
		break;
	case EV_CONNECT_FAILED:
		if (dev->state != DEV_CONNECTING)
			break;
		connecting_changed(br, -1);
		report_connect_failure(dev, ev);
		schedule_retry(dev);
		/* Last: the observer may remove the device. */
		if (br->judged)
			br->judged(dev->id, false, dev->reason, br->judged_data);
		break;
	case EV_CONN_LOST:
		if (dev->state != DEV_UP)
			break;
		br->st.lost++;
		snprintf(dev->reason, sizeof(dev->reason), "upstream connection to %s lost%s%s",
		         br->cfg.broker, ev->msg ? ": " : "", ev->msg ? ev->msg : "");
		log_warnx("%s: %s", dev->id, dev->reason);
		/* The sensors hear at once; a late PUBACK is still awaited, just not reported. */
		for (struct publish *pub = dev->pending; pub; pub = pub->next)
			publish_report(pub, -ENOTCONN);
		schedule_retry(dev);
		break;
	case EV_PUB_DONE: {
		int status = publish_status(ev);

		if (status < 0 && status != -ENOTCONN)
			log_warnx("%s: broker refused a publish: %s", dev->id,
			          ev->reason ? MQTTReasonCode_toString(
			                               (enum MQTTReasonCodes)ev->reason)
			                     : paho_code_str(ev->code));
		publish_report(ev->pub, status);
		publish_free(ev->pub);
		break;
	}
	case EV_SUBSCRIBED:
		if (dev->state == DEV_UP)
			report_subscribe(dev, ev);
		break;
	case EV_MESSAGE: {
		struct mqttbr_message m = {
		        .topic = ev->in->topic,
		        .payload = ev->in->payload,
		        .len = ev->in->len,
		        .qos = ev->in->qos,
		        .content_type = ev->in->content_type,
		};

		/*
		 * Not for a device being removed or stopped: its queues are gone. (paho has
		 * acknowledged it already, so any other state still takes it.)
		 */
		if (br->message && dev->state != DEV_REMOVING && dev->state != DEV_STOPPING &&
		    dev->state != DEV_STOPPED)
			br->message(dev->id, &m, br->message_data);
		break;
	}
	case EV_DISCONNECTED:
		if (dev->state == DEV_REMOVING) {
			removing_done(dev);
			break;
		}
		if (dev->state == DEV_STOPPING) {
			dev->state = DEV_STOPPED;
			stop_one_done(br);
		}
		break;
	}
}

static void
drain_events(int fd, uint32_t events, void *data)
{
	struct mqttbr *br = data;
	uint64_t n, one = 1;

	(void)events;
	if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		log_warn("mqtt: eventfd read");
	/*
	 * One at a time off the shared list: handling an event may remove a device
	 * (device_destroy() then drops its queued events), so none may be held aside.
	 */
	for (unsigned i = 0; i < EVENTS_PER_WAKEUP; i++) {
		struct event *ev;

		pthread_mutex_lock(&br->lock);
		ev = br->head;
		if (ev) {
			br->head = ev->next;
			if (!br->head)
				br->tail = &br->head;
		}
		pthread_mutex_unlock(&br->lock);
		if (!ev)
			return;
		handle_event(br, ev);
		event_free(ev);
	}
	/* More are waiting: come back after the loop's other work. */
	if (write(br->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("mqtt: eventfd write");
}

static void
publish_timed_out(struct gw_timer *t, void *data)
{
	struct publish *pub = data;

	(void)t;
	log_warnx("%s: no acknowledgement from the broker within %d s", pub->dev->id,
	          pub->dev->br->cfg.publish_timeout);
	publish_report(pub, -ETIMEDOUT);
}

int
mqttbr_publish(struct mqttbr_device *dev, const struct mqttbr_message *m, mqttbr_publish_fn fn,
               void *data)
{
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	MQTTAsync_message msg = MQTTAsync_message_initializer;
	struct publish *pub;
	int rc;

	if (dev->state != DEV_UP)
		return -ENOTCONN;
	/*
	 * paho 1.3.12 does not check the broker's limit, and the broker ends the session on a
	 * larger packet: say so here instead. A PUBLISH is its fixed header (5 at most), topic (2 +
	 * length), packet id (2), properties (4 for their length; a content type is 3 + length)
	 * and payload.
	 */
	if (m->len > INT32_MAX ||
	    (dev->max_packet &&
	     5 + 2 + strlen(m->topic) + 2 + 4 +
	                     (m->content_type ? 3 + strlen(m->content_type) : 0) + m->len >
	             dev->max_packet))
		return -EMSGSIZE;
	pub = calloc(1, sizeof(*pub));
	if (!pub)
		return -ENOMEM;
	*pub = (struct publish){.dev = dev, .fn = fn, .data = data};
	pub->timer = gw_timer_new(dev->br->loop, publish_timed_out, pub);
	if (!pub->timer) {
		free(pub);
		return -ENOMEM;
	}
	if (dev->mqtt_version == GWCONF_MQTT_5) {
		ro.onSuccess5 = on_published;
		ro.onFailure5 = on_publish_failed;
	} else {
		ro.onSuccess = on_published311;
		ro.onFailure = on_publish_failed311;
	}
	ro.context = pub;
	msg.payload = (void *)m->payload;
	msg.payloadlen = (int)m->len;
	msg.qos = m->qos;
	msg.retained = m->retain;
	/*
	 * MQTT 3.1.1 has no properties: the config allows no content type then, but a message
	 * spooled under MQTT 5 before a change of mqtt_version may still carry one. It goes
	 * without.
	 */
	if (m->content_type && dev->mqtt_version == GWCONF_MQTT_5) {
		MQTTProperty ct = {.identifier = MQTTPROPERTY_CODE_CONTENT_TYPE};

		ct.value.data.data = (char *)m->content_type;
		ct.value.data.len = (int)strlen(m->content_type);
		/* paho copies the properties into its own message. */
		if (MQTTProperties_add(&msg.properties, &ct) != 0) {
			gw_timer_free(pub->timer);
			free(pub);
			return -ENOMEM;
		}
	}
	rc = MQTTAsync_sendMessage(dev->client, m->topic, &msg, &ro);
	MQTTProperties_free(&msg.properties);
	if (rc != MQTTASYNC_SUCCESS) {
		gw_timer_free(pub->timer);
		free(pub);
		log_warnx("%s: cannot publish to %s: %s", dev->id, m->topic, paho_code_str(rc));
		return rc == MQTTASYNC_DISCONNECTED ? -ENOTCONN : -EIO;
	}
	/* Linked after the send: its callback is queued for this thread, so cannot overtake. */
	pub->next = dev->pending;
	if (dev->pending)
		dev->pending->prev = pub;
	dev->pending = pub;
	gw_timer_arm(pub->timer, (uint64_t)dev->br->cfg.publish_timeout * 1000);
	return 0;
}

enum mqttbr_status
mqttbr_status(struct mqttbr *br, const char *id, const char **reason)
{
	struct mqttbr_device *dev = mqttbr_find(br, id);

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
		return MQTTBR_CONNECTING;
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
	};

	return names[st];
}

bool
mqttbr_device_up(const struct mqttbr_device *dev)
{
	return dev->state == DEV_UP;
}

unsigned
mqttbr_device_retry_after(const struct mqttbr_device *dev)
{
	int64_t ms;

	switch (dev->state) {
	case DEV_UP:
		return 0;
	case DEV_CONNECTING:
		return (unsigned)dev->br->cfg.connect_timeout;
	case DEV_WAITING:
		ms = gw_timer_remaining(dev->retry);
		return ms <= 0 ? 1 : (unsigned)((ms + 999) / 1000);
	default:
		return 60;
	}
}

static void
device_free_strings(struct mqttbr_device *dev)
{
	free(dev->id);
	free(dev->cert_file);
	free(dev->key_file);
	free(dev->status_topic);
	free(dev->command_filter);
	free(dev->client_id);
	free(dev->username);
}

static char *
strdup_or_null(const char *s, bool *failed)
{
	char *d = s ? strdup(s) : NULL;

	if (s && !d)
		*failed = true;
	return d;
}

int
mqttbr_add_device(struct mqttbr *br, const char *id, const struct mqttbr_session *session,
                  struct mqttbr_device **out)
{
	bool failed = false;
	struct mqttbr_device *dev, **devices;

	if (mqttbr_find(br, id))
		return -EEXIST;
	devices = reallocarray(br->devices, br->ndevices + 1, sizeof(*devices));
	if (!devices)
		return -ENOMEM;
	br->devices = devices;
	dev = calloc(1, sizeof(*dev));
	if (!dev)
		return -ENOMEM;
	dev->br = br;
	pthread_mutex_init(&dev->tls_lock, NULL);
	dev->id = strdup(id);
	dev->cert_file = strdup(session->cert_file);
	dev->key_file = strdup(session->key_file);
	dev->status_topic = strdup_or_null(session->status_topic, &failed);
	dev->command_filter = strdup_or_null(session->command_filter, &failed);
	dev->client_id = strdup(session->client_id ? session->client_id : id);
	dev->username = strdup_or_null(session->username, &failed);
	dev->retry = gw_timer_new(br->loop, retry_fired, dev);
	dev->expiry = gw_timer_new(br->loop, expiry_fired, dev);
	if (!dev->id || !dev->cert_file || !dev->key_file || !dev->client_id || !dev->retry ||
	    !dev->expiry || failed)
		goto nomem;
	dev->mqtt_version = br->cfg.mqtt_version;
	if (client_create(dev) < 0)
		goto fail;
	/* Sorted by id: mqttbr_find() runs for every uplink message. */
	size_t at = br->ndevices;

	while (at > 0 && strcmp(br->devices[at - 1]->id, id) > 0)
		at--;
	memmove(&br->devices[at + 1], &br->devices[at], (br->ndevices - at) * sizeof(*devices));
	br->devices[at] = dev;
	br->ndevices++;
	connect_device(dev);
	if (out)
		*out = dev;
	return 0;
nomem:
	log_warnx("%s: out of memory", id);
fail:
	if (dev->client)
		MQTTAsync_destroy(&dev->client);
	gw_timer_free(dev->retry);
	gw_timer_free(dev->expiry);
	device_free_strings(dev);
	pthread_mutex_destroy(&dev->tls_lock);
	free(dev);
	return -ENOMEM;
}

/*
 * Destroys the client (after which paho calls none of our callbacks for it), drops the events
 * already queued for it, and frees the device.
 */
static void
device_destroy(struct mqttbr_device *dev)
{
	client_destroy(dev);
	gw_timer_free(dev->retry);
	gw_timer_free(dev->expiry);
	pthread_mutex_destroy(&dev->tls_lock);
	device_free_strings(dev);
	free(dev);
}

/*
 * Destroys dev's paho client (after which paho calls none of our callbacks for it), drops the
 * events already queued from it, and frees its publishes (reported already, or never to be).
 */
static void
client_destroy(struct mqttbr_device *dev)
{
	struct mqttbr *br = dev->br;

	if (!dev->client)
		return;
	MQTTAsync_destroy(&dev->client);
	pthread_mutex_lock(&br->lock);
	for (struct event **p = &br->head; *p;) {
		struct event *ev = *p;

		if (ev->dev != dev) {
			p = &ev->next;
			continue;
		}
		*p = ev->next;
		event_free(ev);
	}
	br->tail = &br->head;
	while (*br->tail)
		br->tail = &(*br->tail)->next;
	pthread_mutex_unlock(&br->lock);
	while (dev->pending)
		publish_free(dev->pending);
}

/* A paho client for dev, with the bridge's broker and dev's version: 0 or -ENOMEM (logged). */
static int
client_create(struct mqttbr_device *dev)
{
	struct mqttbr *br = dev->br;
	MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
	MQTTAsync_createOptions co311 = MQTTAsync_createOptions_initializer;
	int rc;

	/*
	 * No paho persistence: its file store never fsyncs (DESIGN.md 3), and a CON is answered
	 * only after the PUBACK, so the sensor still holds anything not yet acknowledged.
	 */
	co.sendWhileDisconnected = 0;
	co311.sendWhileDisconnected = 0;
	co311.MQTTVersion = MQTTVERSION_3_1_1;
	rc = MQTTAsync_createWithOptions(&dev->client, br->cfg.broker, dev->client_id,
	                                 MQTTCLIENT_PERSISTENCE_NONE, NULL,
	                                 dev->mqtt_version == GWCONF_MQTT_5 ? &co : &co311);
	if (rc != MQTTASYNC_SUCCESS) {
		log_warnx("%s: cannot create MQTT client for %s: %s", dev->id, br->cfg.broker,
		          paho_code_str(rc));
		dev->client = NULL;
		return -ENOMEM;
	}
	rc = MQTTAsync_setCallbacks(dev->client, dev, on_connection_lost, on_message, NULL);
	if (rc != MQTTASYNC_SUCCESS) {
		log_warnx("%s: cannot set MQTT callbacks: %s", dev->id, paho_code_str(rc));
		MQTTAsync_destroy(&dev->client);
		return -ENOMEM;
	}
	return 0;
}

static void
removing_done(struct mqttbr_device *dev)
{
	struct mqttbr *br = dev->br;

	for (size_t i = 0; i < br->nremoving; i++) {
		if (br->removing[i] == dev) {
			br->removing[i] = br->removing[--br->nremoving];
			break;
		}
	}
	device_destroy(dev);
}

static int
cmp_id_device(const void *key, const void *elem)
{
	return strcmp(key, (*(struct mqttbr_device *const *)elem)->id);
}

struct mqttbr_device *
mqttbr_find(struct mqttbr *br, const char *id)
{
	struct mqttbr_device **dev;

	if (br->ndevices == 0)
		return NULL;
	dev = bsearch(id, br->devices, br->ndevices, sizeof(*br->devices), cmp_id_device);
	return dev ? *dev : NULL;
}

int
mqttbr_set_tls_files(struct mqttbr *br, const char *id, const char *cert_file, const char *key_file)
{
	struct mqttbr_device *dev = mqttbr_find(br, id);
	char *cert, *key;

	if (!dev)
		return -ENOENT;
	cert = strdup(cert_file);
	key = strdup(key_file);
	if (!cert || !key) {
		free(cert);
		free(key);
		return -ENOMEM;
	}
	free(dev->cert_file);
	free(dev->key_file);
	dev->cert_file = cert;
	dev->key_file = key;
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
	for (size_t i = 0; i < br->ndevices; i++)
		st->up += br->devices[i]->state == DEV_UP;
}

static bool
same_string(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

bool
mqttbr_session_same(struct mqttbr *br, const char *id, const struct mqttbr_session *session)
{
	const struct mqttbr_device *dev = mqttbr_find(br, id);

	return dev && same_string(dev->cert_file, session->cert_file) &&
	       same_string(dev->key_file, session->key_file) &&
	       same_string(dev->status_topic, session->status_topic) &&
	       same_string(dev->command_filter, session->command_filter) &&
	       same_string(dev->client_id, session->client_id ? session->client_id : id) &&
	       same_string(dev->username, session->username);
}

static int alpn_wire(char *const *protos, size_t n, unsigned char **out, unsigned *len);

/* What a session is made with at its connect: a change means a new session for every device. */
static bool
connection_same(const struct mqttbr *br, const struct gwconf *conf)
{
	const char *online = conf->presence.online ? conf->presence.online : "online";
	const char *offline = conf->presence.offline ? conf->presence.offline : "offline";

	int version =
	        conf->upstream.mqtt_version == GWCONF_MQTT_311 ? GWCONF_MQTT_311 : GWCONF_MQTT_5;
	unsigned char *alpn;
	unsigned alpn_len;
	bool same_alpn;

	if (alpn_wire(conf->upstream.alpn, conf->upstream.nalpn, &alpn, &alpn_len) < 0)
		return false; /* out of memory: start afresh, which reports it */
	same_alpn = alpn_len == br->cfg.alpn_len &&
	            (alpn_len == 0 || memcmp(alpn, br->cfg.alpn, alpn_len) == 0);
	free(alpn);
	return same_alpn && version == br->cfg.mqtt_version &&
	       same_string(br->cfg.broker, conf->upstream.broker) &&
	       same_string(br->cfg.host, conf->upstream.broker_host) &&
	       same_string(br->cfg.ca_file, conf->upstream.ca_file) &&
	       br->cfg.keepalive == conf->upstream.keepalive &&
	       br->cfg.connect_timeout == conf->upstream.connect_timeout &&
	       same_string(br->presence.online, online) &&
	       same_string(br->presence.offline, offline) &&
	       br->presence.qos == conf->presence.qos && br->command_qos == conf->downlink.qos;
}

int
mqttbr_reconfigure(struct mqttbr *br, const struct gwconf *conf, bool *restart_all)
{
	/* Read at each use, by the loop's thread only: they apply from the next one on. */
	br->cfg.publish_timeout = conf->upstream.publish_timeout;
	br->cfg.reconnect_min = conf->upstream.reconnect_min;
	br->cfg.reconnect_max = conf->upstream.reconnect_max;
	br->cfg.rejected_retry = conf->upstream.rejected_retry;
	*restart_all = !connection_same(br, conf);
	if (!*restart_all)
		return 0;

	char *broker = strdup(conf->upstream.broker), *host = strdup(conf->upstream.broker_host),
	     *ca_file = strdup(conf->upstream.ca_file),
	     *online = strdup(conf->presence.online ? conf->presence.online : "online"),
	     *offline = strdup(conf->presence.offline ? conf->presence.offline : "offline");
	unsigned char *alpn = NULL;
	unsigned alpn_len = 0;

	if (!broker || !host || !ca_file || !online || !offline ||
	    alpn_wire(conf->upstream.alpn, conf->upstream.nalpn, &alpn, &alpn_len) < 0) {
		free(broker);
		free(host);
		free(ca_file);
		free(online);
		free(offline);
		return -ENOMEM;
	}
	/* paho copied what the running clients were created and connected with. */
	free(br->cfg.broker);
	free(br->cfg.host);
	free(br->cfg.ca_file);
	free(br->presence.online);
	free(br->presence.offline);
	br->cfg.broker = broker;
	br->cfg.host = host;
	br->cfg.ca_file = ca_file;
	br->presence.online = online;
	br->presence.offline = offline;
	br->cfg.keepalive = conf->upstream.keepalive;
	br->cfg.connect_timeout = conf->upstream.connect_timeout;
	br->presence.qos = conf->presence.qos;
	br->command_qos = conf->downlink.qos;
	free(br->cfg.alpn);
	br->cfg.alpn = alpn;
	br->cfg.alpn_len = alpn_len;
	br->cfg.mqtt_version =
	        conf->upstream.mqtt_version == GWCONF_MQTT_311 ? GWCONF_MQTT_311 : GWCONF_MQTT_5;
	return 0;
}

void
mqttbr_on_judged(struct mqttbr *br, mqttbr_judged_fn fn, void *data)
{
	br->judged = fn;
	br->judged_data = data;
}

/*
 * A clean DISCONNECT discards the will (MQTT 5 section 3.14.4); reason code 0x04 asks the
 * broker to publish it, so the retained status reads "offline" after a stop or a removal too.
 * MQTT 3.1.1 has no reason codes (section 3.14): the status is published before the
 * DISCONNECT instead, which paho sends after it (and waits for its PUBACK within the
 * disconnect's timeout).
 */
static void
set_offline(const struct mqttbr_device *dev, MQTTAsync_disconnectOptions *opts)
{
	MQTTAsync_message msg = MQTTAsync_message_initializer;

	if (!dev->status_topic)
		return;
	if (dev->mqtt_version == GWCONF_MQTT_5) {
		opts->reasonCode = MQTTREASONCODE_DISCONNECT_WITH_WILL_MESSAGE;
		return;
	}
	msg.payload = dev->br->presence.offline;
	msg.payloadlen = (int)strlen(dev->br->presence.offline);
	msg.qos = dev->br->presence.qos;
	msg.retained = 1;
	if (MQTTAsync_sendMessage(dev->client, dev->status_topic, &msg, NULL) != MQTTASYNC_SUCCESS)
		log_warnx("%s: cannot publish its offline status", dev->id);
}

void
mqttbr_on_message(struct mqttbr *br, mqttbr_message_fn fn, void *data)
{
	br->message = fn;
	br->message_data = data;
}

void
mqttbr_remove_device(struct mqttbr *br, const char *id)
{
	MQTTAsync_disconnectOptions opts = MQTTAsync_disconnectOptions_initializer5;
	struct mqttbr_device *dev = mqttbr_find(br, id), **removing;
	size_t i;

	if (!dev)
		return;
	for (i = 0; br->devices[i] != dev; i++)
		;
	memmove(&br->devices[i], &br->devices[i + 1], (br->ndevices - i - 1) * sizeof(dev));
	br->ndevices--;
	gw_timer_disarm(dev->retry);
	for (struct publish *pub = dev->pending; pub; pub = pub->next)
		publish_report(pub, -ENOTCONN);
	if (dev->state == DEV_CONNECTING)
		connecting_changed(br, -1);
	removing = reallocarray(br->removing, br->nremoving + 1, sizeof(*removing));
	if (removing)
		br->removing = removing;
	if (dev->state != DEV_UP || !removing) {
		device_destroy(dev);
		return;
	}
	opts.onSuccess5 = on_disconnected;
	opts.onFailure5 = on_disconnect_failed;
	opts.context = dev;
	opts.timeout = STOP_GRACE_MS / 2;
	set_offline(dev, &opts);
	if (MQTTAsync_disconnect(dev->client, &opts) != MQTTASYNC_SUCCESS) {
		device_destroy(dev);
		return;
	}
	dev->state = DEV_REMOVING;
	br->removing[br->nremoving++] = dev;
	gw_timer_arm(dev->retry, STOP_GRACE_MS);
	log_info("%s: upstream session closed", id);
}

static void
stop_timed_out(struct gw_timer *t, void *data)
{
	struct mqttbr *br = data;

	(void)t;
	log_warnx("mqtt: %zu sessions did not disconnect within %d ms", br->stop.remaining,
	          STOP_GRACE_MS);
	br->stop.remaining = 1;
	stop_one_done(br);
}

void
mqttbr_stop(struct mqttbr *br, mqttbr_stopped_fn fn, void *data)
{
	br->stop.fn = fn;
	br->stop.data = data;
	br->stop.remaining = 1; /* held until every disconnect is issued */
	for (size_t i = 0; i < br->ndevices; i++) {
		struct mqttbr_device *dev = br->devices[i];
		MQTTAsync_disconnectOptions opts = MQTTAsync_disconnectOptions_initializer5;
		bool connected = dev->state == DEV_UP || dev->state == DEV_CONNECTING;

		gw_timer_disarm(dev->retry);
		for (struct publish *pub = dev->pending; pub; pub = pub->next)
			publish_report(pub, -ENOTCONN);
		if (dev->state == DEV_CONNECTING)
			connecting_changed(br, -1);
		dev->state = DEV_STOPPED;
		if (!connected)
			continue;
		opts.onSuccess5 = on_disconnected;
		opts.onFailure5 = on_disconnect_failed;
		opts.context = dev;
		opts.timeout = STOP_GRACE_MS / 2;
		set_offline(dev, &opts);
		if (MQTTAsync_disconnect(dev->client, &opts) == MQTTASYNC_SUCCESS) {
			dev->state = DEV_STOPPING;
			br->stop.remaining++;
		}
	}
	gw_timer_arm(br->stop.timer, STOP_GRACE_MS);
	stop_one_done(br);
}

/*
 * The ALPN list in TLS wire format: each protocol after its length byte (RFC 7301 section
 * 3.1), plus a NUL that paho's strdup of it needs (the config allows 1 to 255 bytes, so no
 * length byte is 0). 0 with *out NULL for an empty list.
 */
static int
alpn_wire(char *const *protos, size_t n, unsigned char **out, unsigned *len)
{
	size_t total = 0;
	unsigned char *w;

	*out = NULL;
	*len = 0;
	for (size_t i = 0; i < n; i++)
		total += 1 + strlen(protos[i]);
	if (total == 0)
		return 0;
	w = malloc(total + 1);
	if (!w)
		return -ENOMEM;
	*out = w;
	*len = (unsigned)total;
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(protos[i]);

		*w++ = (unsigned char)l;
		memcpy(w, protos[i], l);
		w += l;
	}
	*w = '\0';
	return 0;
}

int
mqttbr_new(struct mqttbr **out, struct gw_loop *loop, const struct gwconf *conf)
{
	struct mqttbr *br = calloc(1, sizeof(*br));
	int r;

	if (!br)
		return -ENOMEM;
	br->loop = loop;
	br->wakefd = -1;
	pthread_mutex_init(&br->lock, NULL);
	br->tail = &br->head;
	br->cfg.broker = strdup(conf->upstream.broker);
	br->cfg.host = strdup(conf->upstream.broker_host);
	br->cfg.ca_file = strdup(conf->upstream.ca_file);
	br->cfg.keepalive = conf->upstream.keepalive;
	br->cfg.connect_timeout = conf->upstream.connect_timeout;
	br->cfg.publish_timeout = conf->upstream.publish_timeout;
	br->cfg.reconnect_min = conf->upstream.reconnect_min;
	br->cfg.reconnect_max = conf->upstream.reconnect_max;
	br->cfg.rejected_retry = conf->upstream.rejected_retry;
	/* MQTT 5 unless 3.1.1 is asked for (a config built by hand has 0 there). */
	br->cfg.mqtt_version =
	        conf->upstream.mqtt_version == GWCONF_MQTT_311 ? GWCONF_MQTT_311 : GWCONF_MQTT_5;
	r = alpn_wire(conf->upstream.alpn, conf->upstream.nalpn, &br->cfg.alpn, &br->cfg.alpn_len);
	if (r < 0)
		goto fail;
	br->presence.online = strdup(conf->presence.online ? conf->presence.online : "online");
	br->presence.offline = strdup(conf->presence.offline ? conf->presence.offline : "offline");
	br->presence.qos = conf->presence.qos;
	br->command_qos = conf->downlink.qos;
	br->stop.timer = gw_timer_new(loop, stop_timed_out, br);
	if (!br->cfg.broker || !br->cfg.host || !br->cfg.ca_file || !br->stop.timer ||
	    !br->presence.online || !br->presence.offline) {
		r = -ENOMEM;
		goto fail;
	}
	br->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (br->wakefd < 0) {
		r = -errno;
		goto fail;
	}
	r = gw_loop_add_fd(loop, br->wakefd, EPOLLIN, drain_events, br);
	if (r < 0)
		goto fail;
	MQTTAsync_setTraceCallback(on_trace);
	MQTTAsync_setTraceLevel(MQTTASYNC_TRACE_ERROR);
	*out = br;
	return 0;
fail:
	mqttbr_free(br);
	return r;
}

void
mqttbr_free(struct mqttbr *br)
{
	if (!br)
		return;
	for (size_t i = 0; i < br->ndevices; i++)
		device_destroy(br->devices[i]);
	for (size_t i = 0; i < br->nremoving; i++)
		device_destroy(br->removing[i]);
	free(br->devices);
	free(br->removing);
	if (br->wakefd >= 0) {
		gw_loop_del_fd(br->loop, br->wakefd);
		close(br->wakefd);
	}
	gw_timer_free(br->stop.timer);
	free(br->cfg.broker);
	free(br->cfg.host);
	free(br->cfg.ca_file);
	free(br->cfg.alpn);
	free(br->presence.online);
	free(br->presence.offline);
	pthread_mutex_destroy(&br->lock);
	free(br);
}
