/* SPDX-License-Identifier: Apache-2.0 */
#include "router.h"
#include "cmdq.h"
#include "conf.h"
#include "device.h"
#include "log.h"
#include "loop.h"
#include "policy.h"
#include "profile.h"
#include "spool.h"
#include "template.h"
#include "xalloc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/*
 * Publishes in flight per device while its spool drains. Enough to keep a broker's round trip
 * busy; below mosquitto's default of 20 unacknowledged QoS 1 messages per client, past which
 * it would queue them itself.
 */
#define WINDOW 16
/* A command goes to its sensor in one CoAP message: RFC 7252 section 4.6's 1 KiB guideline. */
#define COMMAND_MAX 1024
/* How soon acknowledged positions reach the disk when no sensor waits for a sync. */
#define LAZY_SYNC_MS 1000
/* Max-Age of a 5.03 for a full spool: room comes back only as the upstream drains it. */
#define FULL_RETRY_S 60

/*
 * The router's state for a device (its slot on struct device): its spool being drained to its
 * session, oldest first, and the commands waiting for its sensor.
 */
struct device_flow {
	struct router *rt;
	struct device *dev; /* whose slot holds the flow: it lives as long as the flow */
	uint64_t next;      /* the seq to read next */
	unsigned epoch;     /* bumped when the session fails: answers from before are stale */
	/* Publishes out, in seq order; acknowledged from the front. */
	struct {
		uint64_t seq;
		bool done;
	} out[WINDOW];
	unsigned nout;
	struct gw_timer *retry; /* after a failure on a live session */
	struct cmdq_queue commands;
	struct router_device_stats st;
};

/* What a spooled publish's answer must find again. */
struct sent {
	struct router *rt;
	struct device *dev; /* a reference: the device may be removed, and its id taken again */
	uint64_t seq;
	unsigned epoch;
};

/* A sensor waiting for its record to be fsync'd (ack = durable). */
struct waiter {
	struct sensor_request *req;
	struct waiter *next;
};

struct router {
	struct router_options opt;
	struct gw_loop *loop;
	const struct gwconf *conf;
	const struct upstream_ops *up_ops;
	void *up;
	struct spool *spool;
	struct device_registry *devices;
	struct cmdq *commands;
	const struct sensor_side_ops *side_ops;
	void *side;
	struct gw_timer *sync;       /* appends, for the sensors waiting on them */
	struct gw_timer *checkpoint; /* acknowledged positions and deletions, lazily */
	struct waiter *waiting, **waiting_tail;
	struct router_stats st;
};

/* Whether the device's session is up: the one answer, kept by the cloud side (device.h). */
static bool
is_up(const struct device *dev)
{
	return dev->upstream == DEVICE_UPSTREAM_UP;
}

static unsigned
up_retry_after(const struct router *rt, struct device *dev)
{
	return rt->up_ops->retry_after(rt->up, dev);
}

static void
answer(const struct router *rt, struct sensor_request *req, enum sensor_status status, unsigned arg)
{
	rt->side_ops->complete(req, status, arg);
}

/* CoAP Content-Formats (IANA registry, RFC 7252 section 12.3) and their media types. */
static const struct {
	int cf;
	const char *type;
	const char *suffix; /* a topic level: no '+', which MQTT reserves */
} formats[] = {
        {0, "text/plain;charset=utf-8", "text"},
        {40, "application/link-format", "link-format"},
        {41, "application/xml", "xml"},
        {42, "application/octet-stream", "octet-stream"},
        {47, "application/exi", "exi"},
        {50, "application/json", "json"},
        {51, "application/json-patch+json", "json-patch"},
        {52, "application/merge-patch+json", "merge-patch"},
        {60, "application/cbor", "cbor"},
        {61, "application/cwt", "cwt"},
        {110, "application/senml+json", "senml-json"},
        {112, "application/senml+cbor", "senml-cbor"},
        {11542, "application/vnd.oma.lwm2m+tlv", "lwm2m-tlv"},
        {11543, "application/vnd.oma.lwm2m+json", "lwm2m-json"},
};

static int
format_index(int cf)
{
	for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
		if (formats[i].cf == cf)
			return (int)i;
	}
	return -1;
}

/* The Content-Format of an MQTT 5 content-type, -1 for none or one CoAP has no number for. */
static int
format_of(const char *type)
{
	if (!type)
		return -1;
	for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
		if (strcasecmp(formats[i].type, type) == 0)
			return formats[i].cf;
	}
	/* RFC 7252 section 12.3: text/plain is registered with its charset only. */
	if (strcasecmp(type, "text/plain") == 0)
		return 0;
	return -1;
}

/* The device whose attributes policies and templates read: no lookup by its id. */
struct attr_ctx {
	const struct router *rt;
	const struct device *dev;
};

static const char *
attr_lookup(const char *device, const char *key, void *data)
{
	const struct attr_ctx *a = data;

	(void)device; /* a->dev's */
	return a->rt->opt.attr(a->dev, key, a->rt->opt.data);
}

static const char *
tmpl_attr(const char *name, size_t len, void *data)
{
	const struct attr_ctx *a = data;
	char key[128];

	if (len >= sizeof(key))
		return NULL;
	memcpy(key, name, len);
	key[len] = '\0';
	return a->rt->opt.attr(a->dev, key, a->rt->opt.data);
}

static bool
allowed(const struct router *rt, const struct device *dev, enum policy_action act, const char *what,
        char *why, size_t whylen)
{
	struct attr_ctx a = {.rt = rt, .dev = dev};
	struct policy_subject who = {
	        .device = dev->id,
	        .gateway = rt->conf->gateway_id,
	        .attr = attr_lookup,
	        .attr_data = &a,
	};

	return policy_allows(rt->conf, &who, act, what, why, whylen);
}

/* Expands tmpl for dev; logs why not. */
static int
expand(const struct router *rt, const struct device *dev, const char *path, const char *tmpl,
       char *out, size_t outlen)
{
	const char *device = dev->id;
	struct attr_ctx a = {.rt = rt, .dev = dev};
	struct tmpl_vars vars = {
	        .value = {[TMPL_DEVICE] = device,
	                  [TMPL_PATH] = path,
	                  [TMPL_GATEWAY] = rt->conf->gateway_id},
	        .attr = tmpl_attr,
	        .attr_data = &a,
	};
	ssize_t n = tmpl_expand(tmpl, &vars, out, outlen);

	if (n >= 0)
		return 0;
	log_warnx("%s: cannot build a topic from \"%s\": %s", device, tmpl,
	          n == -ENOBUFS  ? "too long"
	          : n == -ENOENT ? "an attribute it names is not set (gwctl device set)"
	                         : "a value contains '+', '#', or '/' in an attribute");
	return (int)n;
}

/* ---- flows: draining a device's spool ---- */

static void flow_retry(struct gw_timer *t, void *data);

/* The device's flow, made if need be. */
static struct device_flow *
flow_get(struct router *rt, struct device *dev)
{
	struct device_flow *f = dev->flow;

	if (f)
		return f;
	f = xcalloc(1, sizeof(*f));
	f->rt = rt;
	f->dev = dev;
	f->retry = gw_timer_new(rt->loop, flow_retry, f);
	cmdq_queue_init(&f->commands, rt->commands, dev->id);
	dev->flow = f;
	return f;
}

/* The device's sensor was heard from: its flow, made if need be. */
static struct device_flow *
seen(struct router *rt, struct device *dev)
{
	struct device_flow *f = flow_get(rt, dev);

	f->st.last_seen = time(NULL);
	return f;
}

static void
flow_free(struct device_flow *f)
{
	f->dev->flow = NULL;
	cmdq_queue_clear(&f->commands);
	gw_timer_free(f->retry);
	free(f);
}

static void
sent_free(struct sent *s)
{
	device_unref(s->dev);
	free(s);
}

static void schedule_sync(struct router *rt, bool now);
static void pump(struct router *rt, struct device_flow *f);

/* Acknowledges the delivered front of the window to the spool. */
static void
flow_advance(struct router *rt, struct device_flow *f)
{
	unsigned n = 0;

	while (n < f->nout && f->out[n].done)
		n++;
	if (n == 0)
		return;
	spool_ack(rt->spool, f->dev, f->out[n - 1].seq);
	memmove(&f->out[0], &f->out[n], (f->nout - n) * sizeof(f->out[0]));
	f->nout -= n;
	schedule_sync(rt, false);
}

/*
 * The session failed under the window: everything not yet acknowledged goes again, in order,
 * once it is back (a message the broker got but whose PUBACK was lost arrives twice: MQTT's
 * at-least-once).
 */
static void
flow_rewind(struct device_flow *f)
{
	unsigned i = 0;

	while (i < f->nout && f->out[i].done)
		i++;
	if (i < f->nout)
		f->next = f->out[i].seq;
	f->nout = 0;
	f->epoch++;
}

static void
spooled_done(int status, void *data)
{
	struct sent *s = data;
	struct router *rt = s->rt;
	struct device_flow *f = s->dev->flow;

	if (!f || s->epoch != f->epoch) {
		sent_free(s);
		return;
	}
	switch (status) {
	case 0:
		rt->st.published++;
		break;
	case -EACCES:
	case -EMSGSIZE:
		/*
		 * Refused for what it is (not authorised, topic invalid, too large): sent again it
		 * would be refused again, and hold up everything behind it. Other refusals (0x80
		 * unspecified, 0x83 implementation specific) may pass, and go again. It was
		 * acknowledged to its sensor when it reached the disk, so say so loudly: a policy
		 * (mqtt:publish) mirroring the broker's ACL refuses such messages at the edge, with
		 * 4.03, before they are acknowledged.
		 */
		log_warnx("%s: the broker refused spooled message %llu (%s): dropped", s->dev->id,
		          (unsigned long long)s->seq, strerror(-status));
		rt->st.broker_refused++;
		break;
	default:
		/* Down, or no PUBACK in time: all from the first unacknowledged goes again. */
		flow_rewind(f);
		if (status != -ENOTCONN || is_up(f->dev))
			gw_timer_arm(f->retry, 1000);
		sent_free(s);
		return;
	}
	for (unsigned i = 0; i < f->nout; i++) {
		if (f->out[i].seq == s->seq)
			f->out[i].done = true;
	}
	sent_free(s);
	flow_advance(rt, f);
	pump(rt, f);
}

/*
 * Publishes a record of the device's spool, the next in order, into the window. Returns
 * whether the next may follow now (false: the session is not there, or a retry is armed).
 */
static bool
publish_record(struct router *rt, struct device_flow *f, const struct spool_record *rec)
{
	struct sent *s = xmalloc(sizeof(*s));
	struct upstream_msg m = {
	        .topic = rec->topic,
	        .payload = rec->payload,
	        .len = rec->len,
	        .qos = rec->qos,
	        .content_type =
	                rec->content_type && rec->content_type[0] ? rec->content_type : NULL,
	};
	int r;

	*s = (struct sent){.rt = rt, .dev = device_ref(f->dev), .seq = rec->seq, .epoch = f->epoch};
	/* upstream encodes the message at once: the record's buffers can go after. */
	r = rt->up_ops->publish(rt->up, f->dev, &m, spooled_done, s);
	if (r == -EMSGSIZE) {
		/*
		 * Larger than the broker takes (its CONNACK's Maximum Packet Size): sent, it
		 * would end the session, every time, and hold up all behind it.
		 */
		log_warnx("%s: spooled message %llu is larger than the broker accepts: dropped",
		          f->dev->id, (unsigned long long)rec->seq);
		rt->st.broker_refused++;
		sent_free(s);
		/* Acknowledged in its turn, with those before it. */
		f->out[f->nout].seq = rec->seq;
		f->out[f->nout].done = true;
		f->nout++;
		f->next = rec->seq + 1;
		flow_advance(rt, f);
		return true;
	}
	if (r < 0) {
		sent_free(s);
		/* Nothing is lost: the record stays and goes out with the next pump. */
		if (r != -ENOTCONN || is_up(f->dev))
			gw_timer_arm(f->retry, 1000);
		return false;
	}
	f->out[f->nout].seq = rec->seq;
	f->out[f->nout].done = false;
	f->nout++;
	f->next = rec->seq + 1;
	return true;
}

/* Publishes from the device's spool, in order, while the window has room. */
static void
pump(struct router *rt, struct device_flow *f)
{
	enum device_upstream st = f->dev->upstream;
	uint64_t live = spool_depth(rt->spool, f->dev, NULL);

	/* Readings wait in its spool: its connect goes before those of idle devices. */
	if (st != DEVICE_UPSTREAM_NONE && st != DEVICE_UPSTREAM_UP && live > 0)
		rt->up_ops->wanted(rt->up, f->dev);
	/* Every live record is in the window already: nothing to read (and fail to find). */
	while (is_up(f->dev) && f->nout < WINDOW && live > f->nout) {
		struct spool_record rec;
		void *buf = NULL;
		bool more;
		int r = spool_read(rt->spool, f->dev, f->next, &rec, &buf);

		if (r == -ENOENT)
			return;
		if (r < 0) {
			log_warnx("%s: cannot read its spool: %s; trying again", f->dev->id,
			          strerror(-r));
			gw_timer_arm(f->retry, 1000);
			return;
		}
		more = publish_record(rt, f, &rec);
		free(buf);
		if (!more)
			return;
		live = spool_depth(rt->spool, f->dev, NULL);
	}
}

static void
flow_retry(struct gw_timer *t, void *data)
{
	struct device_flow *f = data;

	(void)t;
	pump(f->rt, f);
}

/* The registry's upstream watcher: a session that comes up drains what its spool holds. */
static void
upstream_changed(struct device *dev, enum device_upstream was, void *data)
{
	struct router *rt = data;

	(void)was;
	if (is_up(dev) && spool_depth(rt->spool, dev, NULL) > 0)
		pump(rt, flow_get(rt, dev));
}

/* ---- the spool's group commit ---- */

static void
answer_waiting(struct router *rt, enum sensor_status status, unsigned arg)
{
	struct waiter *w = rt->waiting;

	rt->waiting = NULL;
	rt->waiting_tail = &rt->waiting;
	while (w) {
		struct waiter *next = w->next;

		answer(rt, w->req, status, arg);
		free(w);
		w = next;
	}
}

static void
sync_fired(struct gw_timer *t, void *data)
{
	struct router *rt = data;
	int r;

	(void)t;
	r = spool_sync_appends(rt->spool);
	if (r < 0) {
		/* Not durable, so not acknowledged: the sensors send them again. */
		log_warnx("spool: cannot make messages durable: %s", strerror(-r));
		answer_waiting(rt, SENSOR_ERROR, 0);
		return;
	}
	answer_waiting(rt, SENSOR_CHANGED, 0);
}

static void
checkpoint_fired(struct gw_timer *t, void *data)
{
	struct router *rt = data;
	int r;

	(void)t;
	r = spool_sync(rt->spool);
	if (r < 0) {
		log_warnx("spool: cannot record what was delivered: %s; trying again",
		          strerror(-r));
		gw_timer_arm(rt->checkpoint, LAZY_SYNC_MS);
	}
}

/*
 * now: sensors wait for it (a batch's fsync, or the next interval's); else only acknowledged
 * positions and deleted segments wait, and a second is soon enough: measured, persisting them
 * with every batch cost two more fsyncs per device and most of the throughput.
 */
static void
schedule_sync(struct router *rt, bool now)
{
	int64_t left;
	uint64_t want;

	if (!now) {
		if (gw_timer_remaining(rt->checkpoint) < 0)
			gw_timer_arm(rt->checkpoint, LAZY_SYNC_MS);
		return;
	}
	left = gw_timer_remaining(rt->sync);
	want = rt->conf->spool.fsync == GWCONF_FSYNC_INTERVAL
	               ? (uint64_t)rt->conf->spool.fsync_interval
	               : 0;
	/* An interval sync stays on its beat; a batch one goes before the loop sleeps. */
	if (left >= 0 && (uint64_t)left <= want)
		return;
	gw_timer_arm(rt->sync, want);
}

/* ---- uplink ---- */

/* A publish of ack = upstream, on its way: the sensor waits for its PUBACK. */
struct direct {
	struct router *rt;
	struct sensor_request *req;
	struct device *dev; /* a reference */
};

static void
direct_done(int status, void *data)
{
	struct direct *dr = data;
	struct sensor_request *req = dr->req;
	struct router *rt = dr->rt;
	unsigned retry = status == 0 ? 0 : up_retry_after(rt, dr->dev);

	if (status == 0)
		rt->st.published++;
	device_unref(dr->dev);
	free(dr);
	switch (status) {
	case 0:
		answer(rt, req, SENSOR_CHANGED, 0);
		break;
	case -EACCES:
		answer(rt, req, SENSOR_FORBIDDEN, 0);
		break;
	case -ENOTCONN:
	case -ETIMEDOUT:
	case -EAGAIN:
		/* Never a false success: the sensor keeps the reading and retries (DESIGN.md 6). */
		answer(rt, req, SENSOR_UNAVAILABLE, retry);
		break;
	default:
		answer(rt, req, SENSOR_ERROR, 0);
		break;
	}
}

/*
 * Azure IoT Hub (profile.h): the content type as the system property $.ct in the topic's
 * property bag, and for JSON and text their encoding, UTF-8 (RFC 8259 section 8.1), as $.ce:
 * IoT Hub's routing queries a message body only when both are set.
 */
static int
uplink_bag(const struct sensor_uplink *up, char *topic, size_t len)
{
	int fi = format_index(up->content_format);
	char buf[64];
	const char *type = fi >= 0 ? formats[fi].type : buf;

	/* Not in our table: the CoAP registry's name, as uplink_content_type() gives it. */
	snprintf(buf, sizeof(buf), "application/vnd.coap.cf.%d", up->content_format);
	if (profile_bag_append(topic, len, "$.ct", type) < 0)
		return -EINVAL;
	if ((strstr(type, "json") || strncmp(type, "text/", 5) == 0) &&
	    profile_bag_append(topic, len, "$.ce", "utf-8") < 0)
		return -EINVAL;
	return 0;
}

/* The topic for up: the route's template, and the format as a last level if so configured. */
static int
uplink_topic(const struct router *rt, const struct sensor_uplink *up, char *topic, size_t len)
{
	const struct gwconf_route *route = up->route;
	int fi = format_index(up->content_format);
	size_t n;

	if (expand(rt, up->dev, route->resource, route->topic, topic, len) < 0)
		return -EINVAL;
	if (route->content_type == GWCONF_CTYPE_BAG && up->content_format >= 0)
		return uplink_bag(up, topic, len);
	if (route->content_type != GWCONF_CTYPE_SUFFIX || up->content_format < 0)
		return 0;
	n = strlen(topic);
	if (fi >= 0)
		snprintf(topic + n, len - n, "/%s", formats[fi].suffix);
	else
		snprintf(topic + n, len - n, "/cf%d", up->content_format);
	return 0;
}

static const char *
uplink_content_type(const struct sensor_uplink *up, char *buf, size_t len)
{
	int fi = format_index(up->content_format);

	if (up->route->content_type != GWCONF_CTYPE_PROPERTY || up->content_format < 0)
		return NULL;
	if (fi >= 0)
		return formats[fi].type;
	/* Not in our table: still say what it was, in the CoAP registry's terms. */
	snprintf(buf, len, "application/vnd.coap.cf.%d", up->content_format);
	return buf;
}

/* ack = upstream: straight to the session, answered by its PUBACK. */
static void
uplink_direct(struct router *rt, struct sensor_request *req, const struct sensor_uplink *up,
              const struct upstream_msg *m)
{
	enum device_upstream st = up->dev->upstream;
	struct direct *dr;
	int r;

	if (st == DEVICE_UPSTREAM_NONE) {
		/* Paired on the sensor side but with no upstream session: nothing to send it on. */
		log_warnx("%s: no upstream session for this device", up->dev->id);
		answer(rt, req, SENSOR_UNAVAILABLE, 60);
		return;
	}
	/* Down, or its spool still draining (order first): the sensor keeps it for now. */
	if (st != DEVICE_UPSTREAM_UP || spool_depth(rt->spool, up->dev, NULL) > 0) {
		/* Its sensor waits: its connect goes before those of idle devices. */
		rt->up_ops->wanted(rt->up, up->dev);
		answer(rt, req, SENSOR_UNAVAILABLE, up_retry_after(rt, up->dev));
		return;
	}
	dr = xmalloc(sizeof(*dr));
	*dr = (struct direct){.rt = rt, .req = req, .dev = device_ref(up->dev)};
	r = rt->up_ops->publish(rt->up, up->dev, m, direct_done, dr);
	if (r < 0) {
		device_unref(dr->dev);
		free(dr);
	}
	if (r == -ENOTCONN)
		answer(rt, req, SENSOR_UNAVAILABLE, up_retry_after(rt, up->dev));
	else if (r == -EMSGSIZE) /* the broker's limit, not ours: no Size1 to give */
		answer(rt, req, SENSOR_TOO_LARGE, 0);
	else if (r < 0)
		answer(rt, req, SENSOR_ERROR, 0);
}

static void
uplink(struct sensor_request *req, const struct sensor_uplink *up, void *data)
{
	struct router *rt = data;
	char topic[1024], ctbuf[48], why[256];
	struct spool_record rec;
	struct device_flow *f = seen(rt, up->dev);
	int qos = up->confirmable ? up->route->qos_con : up->route->qos_non;
	int r;

	if (!allowed(rt, up->dev, up->put ? POLICY_COAP_PUT : POLICY_COAP_POST, up->route->resource,
	             why, sizeof(why))) {
		log_warnx("%s: %s to %s refused: %s", up->dev->id, up->put ? "PUT" : "POST",
		          up->route->resource, why);
		rt->st.denied_up++;
		answer(rt, req, SENSOR_FORBIDDEN, 0);
		return;
	}
	if (uplink_topic(rt, up, topic, sizeof(topic)) < 0) {
		answer(rt, req, SENSOR_ERROR, 0);
		return;
	}
	if (!allowed(rt, up->dev, POLICY_MQTT_PUBLISH, topic, why, sizeof(why))) {
		log_warnx("%s: publish to %s refused: %s", up->dev->id, topic, why);
		rt->st.denied_up++;
		answer(rt, req, SENSOR_FORBIDDEN, 0);
		return;
	}
	rt->st.up_messages++;
	rt->st.up_bytes += up->len;
	f->st.up_messages++;
	f->st.up_bytes += up->len;
	struct upstream_msg m = {
	        .topic = topic,
	        .payload = up->payload,
	        .len = up->len,
	        .qos = qos,
	        .content_type = uplink_content_type(up, ctbuf, sizeof(ctbuf)),
	};
	if (!rt->conf->spool.ack_durable && up->confirmable) {
		uplink_direct(rt, req, up, &m);
		return;
	}
	/*
	 * The spool bridges outages. A device without a session (no certificate yet) or whose
	 * identity the broker refused (or whose certificate expired) waits for an operator, not
	 * for the network: its sensor keeps its messages rather than the spool filling with what
	 * may never be accepted.
	 */
	enum device_upstream ust = up->dev->upstream;

	if (ust == DEVICE_UPSTREAM_NONE || ust == DEVICE_UPSTREAM_REFUSED) {
		if (ust == DEVICE_UPSTREAM_NONE)
			log_warnx("%s: no upstream session for this device", up->dev->id);
		answer(rt, req, SENSOR_UNAVAILABLE, up_retry_after(rt, up->dev));
		return;
	}
	rec = (struct spool_record){
	        .qos = (uint8_t)qos,
	        .topic = topic,
	        .content_type = m.content_type,
	        .payload = up->payload,
	        .len = up->len,
	};
	r = spool_append(rt->spool, up->dev, &rec);
	if (r == -ENOSPC) {
		log_warnx("%s: spool full: message refused (5.03)", up->dev->id);
		rt->st.refused_full++;
		answer(rt, req, SENSOR_UNAVAILABLE, FULL_RETRY_S);
		return;
	}
	if (r == -EMSGSIZE) {
		answer(rt, req, SENSOR_TOO_LARGE, (unsigned)rt->conf->sensors.max_payload);
		return;
	}
	if (r < 0) {
		log_warnx("%s: cannot spool a message: %s", up->dev->id, strerror(-r));
		answer(rt, req, SENSOR_ERROR, 0);
		return;
	}
	if (up->confirmable) {
		struct waiter *w = xmalloc(sizeof(*w));

		*w = (struct waiter){.req = req};
		*rt->waiting_tail = w;
		rt->waiting_tail = &w->next;
		schedule_sync(rt, true);
	} else {
		/* Nothing to acknowledge: its answer (a NON 2.04) says only that it was taken. */
		answer(rt, req, SENSOR_CHANGED, 0);
		schedule_sync(rt, false);
	}
	/*
	 * The only record not in the window yet, and the next in order (every one before it is in
	 * flight, or there are none): it goes from memory, not read back from the spool. A sensor
	 * sends its next reading on its 2.04, often before the broker's PUBACK for the last one,
	 * so "nothing in flight" alone missed most of them. (Published before its fsync, as a
	 * read-back one would be: the 2.04 waits for the disk, the broker's copy may come first.)
	 */
	if (is_up(f->dev) && f->nout < WINDOW && (f->nout == 0 || f->next == rec.seq) &&
	    spool_depth(rt->spool, f->dev, NULL) == f->nout + 1) {
		if (!publish_record(rt, f, &rec))
			return;
	}
	pump(rt, f);
}

static bool
may_read(struct device *dev, const char *resource, void *data)
{
	struct router *rt = data;
	char why[256];

	seen(rt, dev);
	if (allowed(rt, dev, POLICY_COAP_GET, resource, why, sizeof(why)))
		return true;
	log_warnx("%s: GET %s refused: %s", dev->id, resource, why);
	rt->st.denied_get++;
	return false;
}

/* The command queue is the router's: the sensor side takes from it and gives back. */
static struct sensor_command *
command_take(struct device *dev, void *data)
{
	const struct router *rt = data;

	/*
	 * A sensor asks for its commands: those the broker keeps for a session that is down (an
	 * on-demand one, idle) come once it is up, for the next GET or as notifications.
	 */
	if (dev->upstream == DEVICE_UPSTREAM_WAITING || dev->upstream == DEVICE_UPSTREAM_UP)
		rt->up_ops->wanted(rt->up, dev);
	/* Without a downlink group the queues have no cmdq behind them. */
	return rt->commands && dev->flow ? cmdq_pop(&dev->flow->commands) : NULL;
}

static void
command_return(struct device *dev, struct sensor_command *cmd, void *data)
{
	struct router *rt = data;

	if (rt->commands && dev->state != DEVICE_GONE)
		cmdq_requeue(&flow_get(rt, dev)->commands, cmd);
	else
		free(cmd);
}

static size_t
commands_waiting(struct device *dev, void *data)
{
	(void)data;
	return dev->flow ? cmdq_depth(&dev->flow->commands) : 0;
}

const struct sensor_ops router_sensor_ops = {
        .uplink = uplink,
        .may_read = may_read,
        .command_take = command_take,
        .command_return = command_return,
        .commands_waiting = commands_waiting,
};

/* ---- downlink and sessions ---- */

void
router_downlink(struct device *dev, const struct upstream_msg *m, void *data)
{
	struct router *rt = data;
	const char *device = dev->id;
	struct device_flow *f;
	char why[256];

	if (!allowed(rt, dev, POLICY_MQTT_RECEIVE, m->topic, why, sizeof(why))) {
		log_warnx("%s: command on %s refused: %s", device, m->topic, why);
		rt->st.denied_down++;
		return;
	}
	if (m->len > COMMAND_MAX) {
		log_warnx(
		        "%s: command on %s is %zu bytes, more than the %d a CoAP message carries: "
		        "dropped",
		        device, m->topic, m->len, COMMAND_MAX);
		rt->st.down_too_large++;
		return;
	}
	f = flow_get(rt, dev);
	cmdq_push(&f->commands, m->payload, m->len, format_of(m->content_type));
	rt->st.down_messages++;
	rt->st.down_bytes += m->len;
	f->st.down_messages++;
	f->st.down_bytes += m->len;
	log_debug("%s: command of %zu bytes from %s queued", device, m->len, m->topic);
	if (rt->side_ops)
		rt->side_ops->commands_ready(rt->side, dev);
}

void
router_session_topics(struct router *rt, const struct device *dev, struct router_session *out)
{
	struct attr_ctx ctx = {.rt = rt, .dev = dev};
	char why[256];

	out->has_status = rt->conf->presence.topic &&
	                  expand(rt, dev, "", rt->conf->presence.topic, out->status_topic,
	                         sizeof(out->status_topic)) == 0;
	out->has_commands = rt->conf->downlink.topic &&
	                    expand(rt, dev, "", rt->conf->downlink.topic, out->command_filter,
	                           sizeof(out->command_filter)) == 0;
	if (out->has_commands &&
	    !allowed(rt, dev, POLICY_MQTT_SUBSCRIBE, out->command_filter, why, sizeof(why))) {
		log_warnx("%s: subscription to %s refused: %s; it gets no commands", dev->id,
		          out->command_filter, why);
		out->has_commands = false;
	}
	out->ids_error = profile_session(rt->conf, dev->id, tmpl_attr, &ctx, &out->ids);
}

/*
 * A device was removed from the store: its flow and queued commands go (its spool goes by the
 * spool's own watcher).
 */
static void
device_removed(struct device *dev, void *data)
{
	(void)data;
	if (dev->flow)
		flow_free(dev->flow);
}

void
router_device_queues(const struct router *rt, const char *device, uint64_t *spooled,
                     uint64_t *bytes, size_t *commands)
{
	const struct device *dev = device_find(rt->devices, device);

	*spooled = 0;
	if (bytes)
		*bytes = 0;
	if (dev)
		*spooled = spool_depth(rt->spool, dev, bytes);
	*commands = dev && dev->flow ? cmdq_depth(&dev->flow->commands) : 0;
}

int
router_drop_spool(struct router *rt, const char *device, uint64_t *count, uint64_t *bytes)
{
	struct device *dev = device_find(rt->devices, device);
	int r;

	*count = *bytes = 0;
	if (!dev)
		return -ENOENT;
	if (is_up(dev))
		return -EBUSY;
	spool_depth(rt->spool, dev, bytes);
	r = spool_drop(rt->spool, dev, count);
	if (*count > 0) {
		log_warnx("%s: %llu spooled messages (%llu bytes) dropped by the operator", dev->id,
		          (unsigned long long)*count, (unsigned long long)*bytes);
		schedule_sync(rt, false);
	}
	return r;
}

void
router_device_stats(const struct router *rt, const char *device, struct router_device_stats *st)
{
	const struct device *dev = device_find(rt->devices, device);

	*st = dev && dev->flow ? dev->flow->st : (struct router_device_stats){0};
}

void
router_get_stats(const struct router *rt, struct router_stats *st)
{
	*st = rt->st;
}

void
router_set_sensor_side(struct router *rt, const struct sensor_side_ops *ops, void *side)
{
	rt->side_ops = ops;
	rt->side = side;
}

void
router_set_conf(struct router *rt, const struct gwconf *conf)
{
	rt->conf = conf;
}

struct router *
router_new(const struct router_options *opt)
{
	struct router *rt = xcalloc(1, sizeof(*rt));

	rt->opt = *opt;
	rt->loop = opt->loop;
	rt->conf = opt->conf;
	rt->up_ops = opt->up_ops;
	rt->up = opt->up;
	rt->spool = opt->spool;
	rt->devices = opt->devices;
	rt->commands = opt->commands;
	rt->waiting_tail = &rt->waiting;
	rt->sync = gw_timer_new(rt->loop, sync_fired, rt);
	rt->checkpoint = gw_timer_new(rt->loop, checkpoint_fired, rt);
	device_registry_on_remove(rt->devices, device_removed, rt);
	device_registry_on_upstream(rt->devices, upstream_changed, rt);
	return rt;
}

void
router_free(struct router *rt)
{
	if (!rt)
		return;
	/* What was appended is on its way to the disk; a last sync makes it durable. */
	if (spool_needs_sync(rt->spool))
		spool_sync(rt->spool);
	while (rt->waiting) {
		struct waiter *w = rt->waiting;

		rt->waiting = w->next;
		free(w);
	}
	device_registry_off_remove(rt->devices, device_removed, rt);
	device_registry_on_upstream(rt->devices, NULL, NULL);
	for (size_t i = 0; i < device_count(rt->devices); i++) {
		struct device *dev = device_at(rt->devices, i);

		if (dev->flow)
			flow_free(dev->flow);
	}
	gw_timer_free(rt->sync);
	gw_timer_free(rt->checkpoint);
	free(rt);
}
