/* SPDX-License-Identifier: Apache-2.0 */
#include "mqttcodec.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/*
 * Section numbers are MQTT 5.0's (OASIS Standard, 7 March 2019) unless "3.1.1" says they are
 * MQTT 3.1.1's (OASIS Standard, 29 October 2014).
 */

/* 1.5.4: a UTF-8 Encoded String's length is a Two Byte Integer. */
#define STR_MAX 65535u

/* ---- reason codes ---- */

/* 2.4 Table 2-6, the spec's names. */
static const char *const reason_names[256] = {
        [0x00] = "Success",
        [0x01] = "Granted QoS 1",
        [0x02] = "Granted QoS 2",
        [0x04] = "Disconnect with Will Message",
        [0x10] = "No matching subscribers",
        [0x11] = "No subscription existed",
        [0x18] = "Continue authentication",
        [0x19] = "Re-authenticate",
        [0x80] = "Unspecified error",
        [0x81] = "Malformed Packet",
        [0x82] = "Protocol Error",
        [0x83] = "Implementation specific error",
        [0x84] = "Unsupported Protocol Version",
        [0x85] = "Client Identifier not valid",
        [0x86] = "Bad User Name or Password",
        [0x87] = "Not authorized",
        [0x88] = "Server unavailable",
        [0x89] = "Server busy",
        [0x8A] = "Banned",
        [0x8B] = "Server shutting down",
        [0x8C] = "Bad authentication method",
        [0x8D] = "Keep Alive timeout",
        [0x8E] = "Session taken over",
        [0x8F] = "Topic Filter invalid",
        [0x90] = "Topic Name invalid",
        [0x91] = "Packet Identifier in use",
        [0x92] = "Packet Identifier not found",
        [0x93] = "Receive Maximum exceeded",
        [0x94] = "Topic Alias invalid",
        [0x95] = "Packet too large",
        [0x96] = "Message rate too high",
        [0x97] = "Quota exceeded",
        [0x98] = "Administrative action",
        [0x99] = "Payload format invalid",
        [0x9A] = "Retain not supported",
        [0x9B] = "QoS not supported",
        [0x9C] = "Use another server",
        [0x9D] = "Server moved",
        [0x9E] = "Shared Subscriptions not supported",
        [0x9F] = "Connection rate exceeded",
        [0xA0] = "Maximum connect time",
        [0xA1] = "Subscription Identifiers not supported",
        [0xA2] = "Wildcard Subscriptions not supported",
};

const char *
mqttcodec_reason_name(int reason, char *buf, size_t len)
{
	if (reason >= 0 && reason < 256 && reason_names[reason])
		return reason_names[reason];
	if (!buf || len == 0)
		return "unknown reason";
	snprintf(buf, len, "reason 0x%02X", (unsigned)reason);
	return buf;
}

int
mqttcodec_reason_from_311(int return_code)
{
	/* 3.1.1 section 3.2.2.3 Table 3.1, and the MQTT 5 codes that took their place (3.2.2.2). */
	static const int map[] = {
	        MQTTCODEC_RC_SUCCESS,
	        MQTTCODEC_RC_UNSUPPORTED_VERSION,
	        MQTTCODEC_RC_CLIENT_ID_NOT_VALID,
	        MQTTCODEC_RC_SERVER_UNAVAILABLE,
	        MQTTCODEC_RC_BAD_USER_OR_PASSWORD,
	        MQTTCODEC_RC_NOT_AUTHORIZED,
	};

	if (return_code >= 0 && return_code < (int)(sizeof(map) / sizeof(map[0])))
		return map[return_code];
	return MQTTCODEC_RC_UNSPECIFIED;
}

/*
 * The reason codes each packet may carry (3.2.2.2, 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1, 3.9.3,
 * 3.11.3, 3.14.2.1, 3.15.2.1): "The Client or Server sending the ... packet MUST use one of"
 * them, so any other value is a Protocol Error (4.13) when received and -EINVAL when asked for.
 */
static const uint8_t rc_connack[] = {0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86,
                                     0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
                                     0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F};
static const uint8_t rc_puback[] = {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99};
static const uint8_t rc_pubrel[] = {0x00, 0x92};
static const uint8_t rc_suback[] = {0x00, 0x01, 0x02, 0x80, 0x83, 0x87,
                                    0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2};
static const uint8_t rc_unsuback[] = {0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91};
/* 3.14.2.1: those "Sent by" the Server, and those the Client may send. */
static const uint8_t rc_disconnect_server[] = {
        0x00, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94,
        0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2};
static const uint8_t rc_disconnect_client[] = {0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x90,
                                               0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99};
static const uint8_t rc_auth[] = {0x00, 0x18, 0x19};
/* 3.1.1 section 3.9.3: "SUBACK return codes other than 0x00, 0x01, 0x02 and 0x80 are reserved
 * and MUST NOT be used." */
static const uint8_t rc_suback_311[] = {0x00, 0x01, 0x02, 0x80};

#define RC_SET(a) a, sizeof(a)

static bool
rc_in(int rc, const uint8_t *set, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (set[i] == rc)
			return true;
	}
	return false;
}

/* ---- what both directions share ---- */

/*
 * Well-formed UTF-8 as 1.5.4 demands: no overlong forms, no UTF-16 surrogates (U+D800 to
 * U+DFFF), nothing above U+10FFFF [MQTT-1.5.4-1], and no U+0000 [MQTT-1.5.4-2]. The byte
 * ranges are Unicode's Table 3-7 (RFC 3629 section 4). Control characters and noncharacters
 * are only "SHOULD NOT" (1.5.4), so they pass.
 */
static bool
utf8_valid(const uint8_t *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint8_t c = s[i];
		size_t more;
		uint8_t lo = 0x80, hi = 0xBF; /* the range of the byte after the lead */

		if (c == 0x00)
			return false;
		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xC2 && c <= 0xDF) {
			more = 1;
		} else if (c >= 0xE0 && c <= 0xEF) {
			more = 2;
			if (c == 0xE0)
				lo = 0xA0; /* overlong below U+0800 */
			else if (c == 0xED)
				hi = 0x9F; /* surrogates */
		} else if (c >= 0xF0 && c <= 0xF4) {
			more = 3;
			if (c == 0xF0)
				lo = 0x90; /* overlong below U+10000 */
			else if (c == 0xF4)
				hi = 0x8F; /* above U+10FFFF */
		} else {
			return false; /* a continuation byte, C0/C1 (overlong) or F5 and up */
		}
		if (n - i - 1 < more)
			return false;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (size_t k = 2; k <= more; k++) {
			if (s[i + k] < 0x80 || s[i + k] > 0xBF)
				return false;
		}
		i += 1 + more;
	}
	return true;
}

/* 4.7.1: '+' and '#' are wildcards; a Topic Name must not hold either [MQTT-3.3.2-2]. */
static bool
has_wildcard(const uint8_t *s, size_t n)
{
	return memchr(s, '+', n) || memchr(s, '#', n);
}

/* A Topic Name as 4.7.3 and 3.3.2.1 want it: at least one character, UTF-8, no wildcards. */
static bool
topic_name_ok(const uint8_t *s, size_t n)
{
	return n > 0 && n <= STR_MAX && utf8_valid(s, n) && !has_wildcard(s, n);
}

/* ---- encoding ---- */

/*
 * Every encoder runs its body twice through the same code: once counting (out NULL), once
 * writing. So the Remaining Length it announces, mqttcodec_publish_size() and the bytes it
 * writes cannot disagree.
 */
struct wr {
	uint8_t *out;
	size_t n;
};

static void
put_u8(struct wr *w, uint8_t b)
{
	if (w->out)
		w->out[w->n] = b;
	w->n++;
}

static void
put_u16(struct wr *w, uint16_t v)
{
	put_u8(w, (uint8_t)(v >> 8)); /* 1.5.2: big-endian */
	put_u8(w, (uint8_t)v);
}

static void
put_u32(struct wr *w, uint32_t v)
{
	put_u16(w, (uint16_t)(v >> 16)); /* 1.5.3 */
	put_u16(w, (uint16_t)v);
}

/* 1.5.5: seven bits a byte, least significant first, the top bit saying more follow. */
static void
put_vbi(struct wr *w, uint32_t v)
{
	do {
		uint8_t b = v & 0x7F;

		v >>= 7;
		put_u8(w, v ? b | 0x80 : b);
	} while (v);
}

static size_t
vbi_size(size_t v)
{
	return v < 128 ? 1 : v < 16384 ? 2 : v < 2097152 ? 3 : 4;
}

static void
put_bytes(struct wr *w, const void *p, size_t n)
{
	if (w->out && n)
		memcpy(w->out + w->n, p, n);
	w->n += n;
}

/* 1.5.4 UTF-8 Encoded String and 1.5.6 Binary Data: a Two Byte length, then the bytes. */
static void
put_str(struct wr *w, const void *p, size_t n)
{
	put_u16(w, (uint16_t)n);
	put_bytes(w, p, n);
}

/* A UTF-8 string the encoders can send: NULL-free, at most 65,535 bytes, well-formed. */
static bool
str_ok(const char *s)
{
	size_t n;

	if (!s)
		return false;
	n = strlen(s);
	return n <= STR_MAX && utf8_valid((const uint8_t *)s, n);
}

static bool
version_ok(int version)
{
	return version == MQTTCODEC_V311 || version == MQTTCODEC_V5;
}

/*
 * The packet's full length for a body of body_len bytes after the fixed header (2.1.1), or
 * -EINVAL past the largest Remaining Length. If it fits in cap, writes the fixed header into
 * w, which then points at out.
 */
static int
begin(struct wr *w, uint8_t *out, size_t cap, uint8_t first, size_t body_len)
{
	size_t total;

	if (body_len > MQTTCODEC_MAX_REMAINING)
		return -EINVAL;
	total = 1 + vbi_size(body_len) + body_len;
	if (total > cap)
		return (int)total;
	*w = (struct wr){.out = out};
	put_u8(w, first);
	put_vbi(w, (uint32_t)body_len);
	return (int)total;
}

static bool
out_ok(const uint8_t *out, size_t cap)
{
	return out || cap == 0;
}

/* Property identifiers the client sends (2.2.2.2). */
enum {
	PROP_PAYLOAD_FORMAT = 0x01,
	PROP_MESSAGE_EXPIRY = 0x02,
	PROP_CONTENT_TYPE = 0x03,
	PROP_RESPONSE_TOPIC = 0x08,
	PROP_CORRELATION_DATA = 0x09,
	PROP_SUBSCRIPTION_ID = 0x0B,
	PROP_SESSION_EXPIRY = 0x11,
	PROP_ASSIGNED_CLIENT_ID = 0x12,
	PROP_SERVER_KEEPALIVE = 0x13,
	PROP_AUTH_METHOD = 0x15,
	PROP_AUTH_DATA = 0x16,
	PROP_REQUEST_PROBLEM_INFO = 0x17,
	PROP_WILL_DELAY = 0x18,
	PROP_REQUEST_RESPONSE_INFO = 0x19,
	PROP_RESPONSE_INFO = 0x1A,
	PROP_SERVER_REFERENCE = 0x1C,
	PROP_REASON_STRING = 0x1F,
	PROP_RECEIVE_MAXIMUM = 0x21,
	PROP_TOPIC_ALIAS_MAXIMUM = 0x22,
	PROP_TOPIC_ALIAS = 0x23,
	PROP_MAXIMUM_QOS = 0x24,
	PROP_RETAIN_AVAILABLE = 0x25,
	PROP_USER_PROPERTY = 0x26,
	PROP_MAXIMUM_PACKET = 0x27,
	PROP_WILDCARD_SUB_AVAILABLE = 0x28,
	PROP_SUB_ID_AVAILABLE = 0x29,
	PROP_SHARED_SUB_AVAILABLE = 0x2A,
};

static void
connect_body(struct wr *w, const struct mqttcodec_connect *c)
{
	uint8_t flags = 0;

	/* 3.1.2.1 Protocol Name, 3.1.2.2 Protocol Version (3.1.1: Protocol Level). */
	put_str(w, "MQTT", 4);
	put_u8(w, (uint8_t)c->version);
	/* 3.1.2.3: bit 7 User Name, 6 Password (never: the identity is the TLS certificate's),
	 * 5 Will Retain, 4-3 Will QoS, 2 Will Flag, 1 Clean Start, 0 reserved. */
	if (c->username)
		flags |= 0x80;
	if (c->will_topic) {
		flags |= 0x04 | (uint8_t)(c->will_qos << 3);
		if (c->will_retain)
			flags |= 0x20;
	}
	if (c->clean_start)
		flags |= 0x02;
	put_u8(w, flags);
	put_u16(w, c->keepalive); /* 3.1.2.10 */
	if (c->version == MQTTCODEC_V5) {
		/* 3.1.2.11; Topic Alias Maximum is absent, so 0: the broker may use no alias
		 * (3.1.2.11.5), which is why the decoder refuses one. */
		size_t plen = (c->session_expiry ? 5u : 0u) + (c->receive_maximum ? 3u : 0u) +
		              (c->maximum_packet ? 5u : 0u);

		put_vbi(w, (uint32_t)plen);
		if (c->session_expiry) {
			put_u8(w, PROP_SESSION_EXPIRY);
			put_u32(w, c->session_expiry);
		}
		if (c->receive_maximum) {
			put_u8(w, PROP_RECEIVE_MAXIMUM);
			put_u16(w, c->receive_maximum);
		}
		if (c->maximum_packet) {
			put_u8(w, PROP_MAXIMUM_PACKET);
			put_u32(w, c->maximum_packet);
		}
	}
	/* 3.1.3: Client Identifier, Will Properties, Will Topic, Will Payload, User Name. */
	put_str(w, c->client_id, strlen(c->client_id));
	if (c->will_topic) {
		if (c->version == MQTTCODEC_V5)
			put_vbi(w, 0); /* 3.1.3.2: no Will Properties */
		put_str(w, c->will_topic, strlen(c->will_topic));
		put_str(w, c->will_payload, c->will_len); /* 3.1.3.4: Binary Data */
	}
	if (c->username)
		put_str(w, c->username, strlen(c->username));
}

int
mqttcodec_connect(uint8_t *out, size_t cap, const struct mqttcodec_connect *c)
{
	struct wr w = {0};
	int total;

	if (!c || !out_ok(out, cap) || !version_ok(c->version) || !str_ok(c->client_id))
		return -EINVAL;
	/* 3.1.1 section 3.1.3.1: "If the Client supplies a zero-byte ClientId, the Client MUST
	 * also set CleanSession to 1" [MQTT-3.1.3-7]. */
	if (c->version == MQTTCODEC_V311 && !c->client_id[0] && !c->clean_start)
		return -EINVAL;
	if (c->username && !str_ok(c->username))
		return -EINVAL;
	if (c->will_topic) {
		/* The will is published to this topic: a Topic Name (3.1.3.3). */
		if (!str_ok(c->will_topic) ||
		    !topic_name_ok((const uint8_t *)c->will_topic, strlen(c->will_topic)))
			return -EINVAL;
		if (c->will_len > STR_MAX || (c->will_len && !c->will_payload))
			return -EINVAL;
		if (c->will_qos < 0 || c->will_qos > 2) /* 3.1.2.6 [MQTT-3.1.2-12] */
			return -EINVAL;
	}
	connect_body(&w, c);
	total = begin(&w, out, cap, MQTTCODEC_CONNECT << 4, w.n);
	if (total < 0 || (size_t)total > cap)
		return total;
	connect_body(&w, c);
	return total;
}

/* Whether p can be sent at all; the content type counts for MQTT 5 only. */
static bool
publish_ok(const struct mqttcodec_publish *p)
{
	if (!p || !version_ok(p->version) || !p->topic)
		return false;
	if (!topic_name_ok((const uint8_t *)p->topic, strlen(p->topic)))
		return false;
	/* 3.3.1.2: the client speaks QoS 0 and 1; 3.3.1.1: DUP is 0 for QoS 0 [MQTT-3.3.1-2]. */
	if (p->qos < 0 || p->qos > 1 || (p->qos == 0 && p->dup))
		return false;
	if (p->qos > 0 && p->packet_id == 0) /* 2.2.1 [MQTT-2.2.1-3] */
		return false;
	if (p->len > MQTTCODEC_MAX_REMAINING || (p->len && !p->payload))
		return false;
	if (p->version == MQTTCODEC_V5 && p->content_type && !str_ok(p->content_type))
		return false;
	return true;
}

static uint8_t
publish_first(const struct mqttcodec_publish *p)
{
	/* 3.3.1: DUP bit 3, QoS bits 2-1, RETAIN bit 0. */
	return (uint8_t)(MQTTCODEC_PUBLISH << 4 | (p->dup ? 0x08 : 0) | p->qos << 1 |
	                 (p->retain ? 0x01 : 0));
}

static void
publish_body(struct wr *w, const struct mqttcodec_publish *p)
{
	put_str(w, p->topic, strlen(p->topic)); /* 3.3.2.1 */
	if (p->qos > 0)
		put_u16(w, p->packet_id); /* 3.3.2.2 */
	if (p->version == MQTTCODEC_V5) {
		size_t ct = p->content_type ? strlen(p->content_type) : 0;

		/* 3.3.2.3: Content Type (3.3.2.3.9) is the only property the client sends. */
		if (p->content_type) {
			put_vbi(w, (uint32_t)(1 + 2 + ct));
			put_u8(w, PROP_CONTENT_TYPE);
			put_str(w, p->content_type, ct);
		} else {
			put_vbi(w, 0);
		}
	}
	put_bytes(w, p->payload, p->len); /* 3.3.3 */
}

size_t
mqttcodec_publish_size(const struct mqttcodec_publish *p)
{
	struct wr w = {0};

	if (!publish_ok(p))
		return 0;
	publish_body(&w, p);
	if (w.n > MQTTCODEC_MAX_REMAINING)
		return 0;
	return 1 + vbi_size(w.n) + w.n;
}

int
mqttcodec_publish(uint8_t *out, size_t cap, const struct mqttcodec_publish *p)
{
	struct wr w = {0};
	int total;

	if (!out_ok(out, cap) || !publish_ok(p))
		return -EINVAL;
	publish_body(&w, p);
	total = begin(&w, out, cap, publish_first(p), w.n);
	if (total < 0 || (size_t)total > cap)
		return total;
	publish_body(&w, p);
	return total;
}

int
mqttcodec_puback(uint8_t *out, size_t cap, int version, uint16_t packet_id, int reason)
{
	struct wr w = {0};
	/* 3.4.2.1: with reason 0 and no properties the Reason Code is left out (Remaining
	 * Length 2); 3.4.2.2.1: below 4, no Property Length. 3.1.1 section 3.4 has no reason. */
	bool with_reason = version == MQTTCODEC_V5 && reason != MQTTCODEC_RC_SUCCESS;
	int total;

	if (!out_ok(out, cap) || !version_ok(version) || packet_id == 0 ||
	    !rc_in(reason, RC_SET(rc_puback)))
		return -EINVAL;
	total = begin(&w, out, cap, MQTTCODEC_PUBACK << 4, with_reason ? 3 : 2);
	if ((size_t)total > cap)
		return total;
	put_u16(&w, packet_id);
	if (with_reason)
		put_u8(&w, (uint8_t)reason);
	return total;
}

/*
 * A Topic Filter (4.7): UTF-8, at least one character [MQTT-4.7.3-1], '+' alone in its level
 * [MQTT-4.7.1-2], '#' alone in the last level [MQTT-4.7.1-1]. With MQTT 5, "$share/" starts a
 * Shared Subscription (4.8.2): a ShareName of one character or more without wildcards, then a
 * filter [MQTT-4.8.2-1, MQTT-4.8.2-2].
 */
static bool
filter_ok(const char *f, int version)
{
	size_t n;

	if (!str_ok(f) || !*f)
		return false;
	n = strlen(f);
	for (size_t i = 0; i < n; i++) {
		bool alone = (i == 0 || f[i - 1] == '/') && (i + 1 == n || f[i + 1] == '/');

		if (f[i] == '+' && !alone)
			return false;
		if (f[i] == '#' && (!alone || i + 1 != n))
			return false;
	}
	if (version == MQTTCODEC_V5 && strncmp(f, "$share/", 7) == 0) {
		const char *name = f + 7, *slash = strchr(name, '/');

		if (!slash || slash == name || !slash[1])
			return false;
		if (memchr(name, '+', (size_t)(slash - name)) ||
		    memchr(name, '#', (size_t)(slash - name)))
			return false;
	}
	return true;
}

static void
subscribe_body(struct wr *w, int version, uint16_t packet_id, const char *filter, int qos)
{
	put_u16(w, packet_id); /* 3.8.2 */
	if (version == MQTTCODEC_V5)
		put_vbi(w, 0); /* 3.8.2.1: no properties */
	put_str(w, filter, strlen(filter));
	/* 3.8.3.1: QoS in bits 1-0; No Local, Retain As Published, Retain Handling all 0.
	 * 3.1.1 section 3.8.3: the Requested QoS byte, the same bits. */
	put_u8(w, (uint8_t)qos);
}

int
mqttcodec_subscribe(uint8_t *out, size_t cap, int version, uint16_t packet_id, const char *filter,
                    int qos)
{
	struct wr w = {0};
	int total;

	if (!out_ok(out, cap) || !version_ok(version) || packet_id == 0 ||
	    !filter_ok(filter, version) || qos < 0 || qos > 2)
		return -EINVAL;
	subscribe_body(&w, version, packet_id, filter, qos);
	/* 3.8.1: SUBSCRIBE's reserved flags are 0010 [MQTT-3.8.1-1]. */
	total = begin(&w, out, cap, MQTTCODEC_SUBSCRIBE << 4 | 0x02, w.n);
	if (total < 0 || (size_t)total > cap)
		return total;
	subscribe_body(&w, version, packet_id, filter, qos);
	return total;
}

int
mqttcodec_pingreq(uint8_t *out, size_t cap)
{
	struct wr w = {0};
	int total;

	if (!out_ok(out, cap))
		return -EINVAL;
	total = begin(&w, out, cap, MQTTCODEC_PINGREQ << 4, 0); /* 3.12 */
	return total;
}

int
mqttcodec_disconnect(uint8_t *out, size_t cap, int version, int reason)
{
	struct wr w = {0};
	/* 3.14.2.1: reason 0 with no properties is Remaining Length 0; 3.14.2.2.1: below 2, no
	 * Property Length. 3.1.1 section 3.14 has no variable header at all. */
	bool with_reason = version == MQTTCODEC_V5 && reason != MQTTCODEC_RC_SUCCESS;
	int total;

	if (!out_ok(out, cap) || !version_ok(version) ||
	    !rc_in(reason, RC_SET(rc_disconnect_client)))
		return -EINVAL;
	total = begin(&w, out, cap, MQTTCODEC_DISCONNECT << 4, with_reason ? 1 : 0);
	if ((size_t)total > cap)
		return total;
	if (with_reason)
		put_u8(&w, (uint8_t)reason);
	return total;
}

/* ---- decoding ---- */

/* A cursor over bytes already known to be in the buffer. */
struct rd {
	const uint8_t *p;
	size_t left;
};

static int
get_u8(struct rd *r, uint8_t *v)
{
	if (r->left < 1)
		return -EPROTO;
	*v = r->p[0];
	r->p++;
	r->left--;
	return 0;
}

static int
get_u16(struct rd *r, uint16_t *v)
{
	if (r->left < 2)
		return -EPROTO;
	*v = (uint16_t)(r->p[0] << 8 | r->p[1]);
	r->p += 2;
	r->left -= 2;
	return 0;
}

static int
get_u32(struct rd *r, uint32_t *v)
{
	if (r->left < 4)
		return -EPROTO;
	*v = (uint32_t)r->p[0] << 24 | (uint32_t)r->p[1] << 16 | (uint32_t)r->p[2] << 8 | r->p[3];
	r->p += 4;
	r->left -= 4;
	return 0;
}

/*
 * 1.5.5: at most four bytes, and "MUST use the minimum number of bytes necessary"
 * [MQTT-1.5.5-1]: a last byte of 0 after a continuation could have been left out. 3.1.1
 * (2.2.3) says no such MUST but defines the same encoding, and a broker that pads its
 * lengths is broken, so both versions refuse it. Returns 0, -EAGAIN if the bytes end inside
 * it, -EPROTO.
 */
static int
get_vbi(struct rd *r, uint32_t *v)
{
	uint32_t value = 0;

	for (size_t i = 0; i < 4; i++) {
		uint8_t b;

		if (i >= r->left)
			return -EAGAIN;
		b = r->p[i];
		value |= (uint32_t)(b & 0x7F) << (7 * i);
		if (!(b & 0x80)) {
			if (i > 0 && b == 0)
				return -EPROTO;
			*v = value;
			r->p += i + 1;
			r->left -= i + 1;
			return 0;
		}
	}
	return -EPROTO;
}

/* A vbi inside a packet already read whole: running out is malformed too. */
static int
get_vbi_in(struct rd *r, uint32_t *v)
{
	int err = get_vbi(r, v);

	return err == -EAGAIN ? -EPROTO : err;
}

/* 1.5.6 Binary Data: a Two Byte length and that many bytes. */
static int
get_bin(struct rd *r, struct mqttcodec_str *s)
{
	uint16_t n;

	if (get_u16(r, &n) < 0 || r->left < n)
		return -EPROTO;
	s->data = r->p;
	s->len = n;
	r->p += n;
	r->left -= n;
	return 0;
}

/* 1.5.4 UTF-8 Encoded String: Binary Data's shape, and ill-formed UTF-8 is malformed
 * [MQTT-1.5.4-1]. */
static int
get_str(struct rd *r, struct mqttcodec_str *s)
{
	if (get_bin(r, s) < 0 || !utf8_valid(s->data, s->len))
		return -EPROTO;
	return 0;
}

/* A Byte property that may only be 0 or 1 (3.2.2.3.5, 3.2.2.3.11 to 13, 3.3.2.3.2). */
static int
get_bool(struct rd *r, uint8_t *v)
{
	if (get_u8(r, v) < 0 || *v > 1)
		return -EPROTO;
	return 0;
}

#define BIT(id) ((uint64_t)1 << (id))

/*
 * 2.2.2.2: the properties each packet a server sends may hold; any other "is a Malformed
 * Packet". Topic Alias is in PUBLISH's list, but refused when read: see parse_props().
 */
static const uint64_t props_connack =
        BIT(PROP_SESSION_EXPIRY) | BIT(PROP_ASSIGNED_CLIENT_ID) | BIT(PROP_SERVER_KEEPALIVE) |
        BIT(PROP_AUTH_METHOD) | BIT(PROP_AUTH_DATA) | BIT(PROP_RESPONSE_INFO) |
        BIT(PROP_SERVER_REFERENCE) | BIT(PROP_REASON_STRING) | BIT(PROP_RECEIVE_MAXIMUM) |
        BIT(PROP_TOPIC_ALIAS_MAXIMUM) | BIT(PROP_MAXIMUM_QOS) | BIT(PROP_RETAIN_AVAILABLE) |
        BIT(PROP_USER_PROPERTY) | BIT(PROP_MAXIMUM_PACKET) | BIT(PROP_WILDCARD_SUB_AVAILABLE) |
        BIT(PROP_SUB_ID_AVAILABLE) | BIT(PROP_SHARED_SUB_AVAILABLE);
static const uint64_t props_publish = BIT(PROP_PAYLOAD_FORMAT) | BIT(PROP_MESSAGE_EXPIRY) |
                                      BIT(PROP_CONTENT_TYPE) | BIT(PROP_RESPONSE_TOPIC) |
                                      BIT(PROP_CORRELATION_DATA) | BIT(PROP_SUBSCRIPTION_ID) |
                                      BIT(PROP_TOPIC_ALIAS) | BIT(PROP_USER_PROPERTY);
/* PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK. */
static const uint64_t props_ack = BIT(PROP_REASON_STRING) | BIT(PROP_USER_PROPERTY);
/* 3.14.2.2.2: "The Session Expiry Interval MUST NOT be sent on a DISCONNECT by the Server"
 * [MQTT-3.14.2-2], so it is left out of what a server's DISCONNECT may hold. */
static const uint64_t props_disconnect =
        BIT(PROP_REASON_STRING) | BIT(PROP_USER_PROPERTY) | BIT(PROP_SERVER_REFERENCE);
static const uint64_t props_auth = BIT(PROP_AUTH_METHOD) | BIT(PROP_AUTH_DATA) |
                                   BIT(PROP_REASON_STRING) | BIT(PROP_USER_PROPERTY);

/*
 * 2.2.2: a Property Length (a vbi), then that many bytes of properties, each an identifier
 * and a value of the identifier's type. The identifier is a vbi too, but every one defined
 * is below 0x80 (2.2.2.2), so a byte with the top bit set is an unknown identifier either
 * way. "It is a Protocol Error to include" any property "more than once" except User
 * Property (3.2.2.3.10 and the like) and a PUBLISH's Subscription Identifiers (3.3.2.3.8),
 * which are checked and skipped.
 */
static int
parse_props(struct rd *r, uint64_t allowed, struct mqttcodec_props *pr)
{
	struct rd p;
	uint32_t len;
	uint64_t seen = 0;

	if (get_vbi_in(r, &len) < 0 || len > r->left)
		return -EPROTO;
	p = (struct rd){.p = r->p, .left = len};
	r->p += len;
	r->left -= len;

	while (p.left) {
		struct mqttcodec_str s, s2;
		uint32_t u32;
		uint16_t u16;
		uint8_t id, u8;

		if (get_u8(&p, &id) < 0 || id >= 64 || !(allowed & BIT(id)))
			return -EPROTO;
		if (id != PROP_USER_PROPERTY && id != PROP_SUBSCRIPTION_ID) {
			if (seen & BIT(id))
				return -EPROTO;
			seen |= BIT(id);
		}
		switch (id) {
		case PROP_PAYLOAD_FORMAT: /* 3.3.2.3.2 */
			if (get_bool(&p, &u8) < 0)
				return -EPROTO;
			pr->has_payload_format = true;
			pr->payload_format = u8;
			break;
		case PROP_MESSAGE_EXPIRY: /* 3.3.2.3.3 */
			if (get_u32(&p, &pr->message_expiry) < 0)
				return -EPROTO;
			pr->has_message_expiry = true;
			break;
		case PROP_CONTENT_TYPE: /* 3.3.2.3.9 */
			if (get_str(&p, &pr->content_type) < 0)
				return -EPROTO;
			break;
		case PROP_RESPONSE_TOPIC:
			/* 3.3.2.3.5: a Topic Name, so no wildcards [MQTT-3.3.2-14]. */
			if (get_str(&p, &s) < 0 || !topic_name_ok(s.data, s.len))
				return -EPROTO;
			break;
		case PROP_CORRELATION_DATA: /* 3.3.2.3.6 */
		case PROP_AUTH_DATA:        /* 3.2.2.3.18, 3.15.2.2.4 */
			if (get_bin(&p, &s) < 0)
				return -EPROTO;
			break;
		case PROP_SUBSCRIPTION_ID:
			/* 3.3.2.3.8: 1 to 268,435,455; "a Protocol Error if ... 0". */
			if (get_vbi_in(&p, &u32) < 0 || u32 == 0)
				return -EPROTO;
			break;
		case PROP_SESSION_EXPIRY: /* 3.2.2.3.2 */
			if (get_u32(&p, &pr->session_expiry) < 0)
				return -EPROTO;
			pr->has_session_expiry = true;
			break;
		case PROP_ASSIGNED_CLIENT_ID: /* 3.2.2.3.7 */
			if (get_str(&p, &pr->assigned_client_id) < 0)
				return -EPROTO;
			break;
		case PROP_SERVER_KEEPALIVE: /* 3.2.2.3.14 */
			if (get_u16(&p, &pr->server_keepalive) < 0)
				return -EPROTO;
			pr->has_server_keepalive = true;
			break;
		case PROP_AUTH_METHOD:   /* 3.2.2.3.17, 3.15.2.2.2 */
		case PROP_RESPONSE_INFO: /* 3.2.2.3.15 */
			if (get_str(&p, &s) < 0)
				return -EPROTO;
			break;
		case PROP_SERVER_REFERENCE: /* 3.2.2.3.16, 3.14.2.2.5 */
			if (get_str(&p, &pr->server_reference) < 0)
				return -EPROTO;
			break;
		case PROP_REASON_STRING: /* 3.2.2.3.9 and every acknowledgement's */
			if (get_str(&p, &pr->reason_string) < 0)
				return -EPROTO;
			break;
		case PROP_RECEIVE_MAXIMUM:
			/* 3.2.2.3.3: "a Protocol Error to include ... a value of 0". */
			if (get_u16(&p, &u16) < 0 || u16 == 0)
				return -EPROTO;
			pr->has_receive_maximum = true;
			pr->receive_maximum = u16;
			break;
		case PROP_TOPIC_ALIAS_MAXIMUM:
			/* 3.2.2.3.8: the server's limit for the client's aliases, which the
			 * client does not use. */
			if (get_u16(&p, &u16) < 0)
				return -EPROTO;
			break;
		case PROP_TOPIC_ALIAS:
			/* 3.3.2.3.4: the client's CONNECT leaves Topic Alias Maximum at 0, so
			 * any alias breaks [MQTT-3.3.2-10]. */
			return -EPROTO;
		case PROP_MAXIMUM_QOS: /* 3.2.2.3.4: 0 or 1 */
			if (get_bool(&p, &u8) < 0)
				return -EPROTO;
			pr->has_maximum_qos = true;
			pr->maximum_qos = u8;
			break;
		case PROP_RETAIN_AVAILABLE: /* 3.2.2.3.5: 0 or 1 */
			if (get_bool(&p, &u8) < 0)
				return -EPROTO;
			pr->has_retain_available = true;
			pr->retain_available = u8;
			break;
		case PROP_USER_PROPERTY: /* 1.5.7 UTF-8 String Pair */
			if (get_str(&p, &s) < 0 || get_str(&p, &s2) < 0)
				return -EPROTO;
			break;
		case PROP_MAXIMUM_PACKET:
			/* 3.2.2.3.6: "a Protocol Error to include ... the value 0". */
			if (get_u32(&p, &u32) < 0 || u32 == 0)
				return -EPROTO;
			pr->maximum_packet = u32;
			break;
		case PROP_WILDCARD_SUB_AVAILABLE: /* 3.2.2.3.11 to 13: 0 or 1 */
		case PROP_SUB_ID_AVAILABLE:
		case PROP_SHARED_SUB_AVAILABLE:
			if (get_bool(&p, &u8) < 0)
				return -EPROTO;
			break;
		default:
			/* Not reached: allowed holds only the identifiers above. */
			return -EPROTO;
		}
	}
	return 0;
}

/*
 * The first byte (2.1.2, 2.1.3): a type a server may send in this version, with its flags.
 * Every flag is reserved and fixed except PUBLISH's (3.3.1); "If invalid flags are received it
 * is a Malformed Packet" (2.1.3; 3.1.1 section 2.2.2 [MQTT-2.2.2-2]).
 */
static int
check_first(uint8_t type, uint8_t flags, int version)
{
	switch (type) {
	case MQTTCODEC_PUBLISH:
		/* 3.3.1.2: QoS 3 "is a Malformed Packet" [MQTT-3.3.1-4]; 3.3.1.1: DUP with QoS 0
		 * [MQTT-3.3.1-2]. */
		if ((flags & 0x06) == 0x06 || ((flags & 0x06) == 0 && (flags & 0x08)))
			return -EPROTO;
		return 0;
	case MQTTCODEC_PUBREL:
		return flags == 0x02 ? 0 : -EPROTO; /* 3.6.1 [MQTT-3.6.1-1] */
	case MQTTCODEC_CONNACK:
	case MQTTCODEC_PUBACK:
	case MQTTCODEC_PUBREC:
	case MQTTCODEC_PUBCOMP:
	case MQTTCODEC_SUBACK:
	case MQTTCODEC_UNSUBACK:
	case MQTTCODEC_PINGRESP:
		return flags == 0 ? 0 : -EPROTO;
	case MQTTCODEC_DISCONNECT:
	case MQTTCODEC_AUTH:
		/* MQTT 5 only: 3.1.1 has no server DISCONNECT, and 15 is reserved (3.1.1
		 * section 2.2.1). */
		return version == MQTTCODEC_V5 && flags == 0 ? 0 : -EPROTO;
	default:
		/* 0 (reserved) and what only a client sends: CONNECT, SUBSCRIBE, UNSUBSCRIBE,
		 * PINGREQ. */
		return -EPROTO;
	}
}

/*
 * The Remaining Lengths a packet cannot have whatever its bytes, refused before waiting for
 * them. The exact sizes: 3.1.1 sections 3.2 (CONNACK 2), 3.4 to 3.7 and 3.11 (2), 3.13 (0).
 */
static int
check_length(uint8_t type, int version, uint32_t rl)
{
	bool v5 = version == MQTTCODEC_V5;

	switch (type) {
	case MQTTCODEC_CONNACK:
		return (v5 ? rl >= 2 : rl == 2) ? 0 : -EPROTO;
	case MQTTCODEC_PUBLISH:
		return rl >= 2 ? 0 : -EPROTO; /* a topic's length at least */
	case MQTTCODEC_PUBACK:
	case MQTTCODEC_PUBREC:
	case MQTTCODEC_PUBREL:
	case MQTTCODEC_PUBCOMP:
		return (v5 ? rl >= 2 : rl == 2) ? 0 : -EPROTO;
	case MQTTCODEC_SUBACK:
		/* A packet id, MQTT 5's Property Length, one reason code at least. */
		return rl >= (v5 ? 4u : 3u) ? 0 : -EPROTO;
	case MQTTCODEC_UNSUBACK:
		return (v5 ? rl >= 4 : rl == 2) ? 0 : -EPROTO;
	case MQTTCODEC_PINGRESP:
		return rl == 0 ? 0 : -EPROTO;
	default:
		return 0;
	}
}

static int
decode_connack(struct rd *r, int version, struct mqttcodec_packet *out)
{
	uint8_t ack, rc;

	if (get_u8(r, &ack) < 0 || get_u8(r, &rc) < 0)
		return -EPROTO;
	/* 3.2.2.1: bits 7-1 reserved, 0 [MQTT-3.2.2-1] (3.1.1 section 3.2.2.1 likewise). */
	if (ack & 0xFE)
		return -EPROTO;
	out->session_present = ack & 0x01;
	if (version == MQTTCODEC_V311) {
		out->reason = mqttcodec_reason_from_311(rc);
	} else if (r->left == 0) {
		/*
		 * No Property Length, which MQTT 5 always has (3.2.2.3.1): a 3.1.1 broker's
		 * answer to a protocol level it does not know is 0x01 "unacceptable protocol
		 * level" in a 3.1.1 CONNACK (3.1.1 section 3.1.2.2 [MQTT-3.1.2-2]). Reported as
		 * the MQTT 5 reason for it so that the caller can fall back to 3.1.1.
		 */
		if (rc != 0x01)
			return -EPROTO;
		out->reason = MQTTCODEC_RC_UNSUPPORTED_VERSION;
	} else {
		if (!rc_in(rc, RC_SET(rc_connack)))
			return -EPROTO;
		out->reason = rc;
		if (parse_props(r, props_connack, &out->props) < 0)
			return -EPROTO;
	}
	/* 3.2.2.1.1: a refusal has Session Present 0 [MQTT-3.2.2-6] (3.1.1: [MQTT-3.2.2-4]). */
	if (out->reason != MQTTCODEC_RC_SUCCESS && out->session_present)
		return -EPROTO;
	return 0;
}

static int
decode_publish(struct rd *r, int version, uint8_t flags, struct mqttcodec_packet *out)
{
	out->dup = flags & 0x08;
	out->qos = (flags >> 1) & 0x03;
	out->retain = flags & 0x01;
	/*
	 * 3.3.2.1: a Topic Name, with no wildcards [MQTT-3.3.2-2]. It may be empty in MQTT 5
	 * only together with a Topic Alias (3.3.2.3.4), which the client never allows, and never
	 * in 3.1.1 (section 4.7.3 [MQTT-4.7.3-1]).
	 */
	if (get_str(r, &out->topic) < 0 || !topic_name_ok(out->topic.data, out->topic.len))
		return -EPROTO;
	if (out->qos > 0 && (get_u16(r, &out->packet_id) < 0 || out->packet_id == 0))
		return -EPROTO; /* 3.3.2.2, 2.2.1 [MQTT-2.2.1-3] */
	if (version == MQTTCODEC_V5 && parse_props(r, props_publish, &out->props) < 0)
		return -EPROTO;
	/* 3.3.3: the rest is the payload, possibly empty. Payload Format Indicator 1 asks for
	 * UTF-8, but a receiver only "MAY" check it and answers with PUBACK 0x99, not a
	 * disconnect (3.3.2.3.2): the caller's call. */
	out->payload.data = r->p;
	out->payload.len = r->left;
	r->p += r->left;
	r->left = 0;
	return 0;
}

/*
 * PUBACK, PUBREC, PUBREL, PUBCOMP (3.4 to 3.7): a Packet Identifier; with MQTT 5, then a
 * Reason Code (absent: 0) and properties (absent below Remaining Length 4).
 */
static int
decode_ack(struct rd *r, int version, const uint8_t *rcs, size_t nrc, struct mqttcodec_packet *out)
{
	uint8_t rc;

	if (get_u16(r, &out->packet_id) < 0 || out->packet_id == 0)
		return -EPROTO;
	if (version == MQTTCODEC_V311 || r->left == 0)
		return 0;
	if (get_u8(r, &rc) < 0 || !rc_in(rc, rcs, nrc))
		return -EPROTO;
	out->reason = rc;
	if (r->left == 0)
		return 0;
	return parse_props(r, props_ack, &out->props);
}

/* SUBACK (3.9), UNSUBACK (3.11): a Packet Identifier, MQTT 5's properties, one reason code for
 * each filter of the request, so at least one (3.9.3, 3.11.3). */
static int
decode_suback(struct rd *r, int version, const uint8_t *rcs, size_t nrc,
              struct mqttcodec_packet *out)
{
	if (get_u16(r, &out->packet_id) < 0 || out->packet_id == 0)
		return -EPROTO;
	if (version == MQTTCODEC_V5 && parse_props(r, props_ack, &out->props) < 0)
		return -EPROTO;
	if (r->left == 0)
		return -EPROTO;
	for (size_t i = 0; i < r->left; i++) {
		if (!rc_in(r->p[i], rcs, nrc))
			return -EPROTO;
	}
	out->suback.data = r->p;
	out->suback.len = r->left;
	r->p += r->left;
	r->left = 0;
	return 0;
}

/* DISCONNECT (3.14) and AUTH (3.15), MQTT 5 only: a Reason Code and properties. */
static int
decode_reason_props(struct rd *r, uint8_t type, struct mqttcodec_packet *out)
{
	bool disconnect = type == MQTTCODEC_DISCONNECT;
	uint8_t rc;

	/* 3.14.2.1, 3.15.2.1: Remaining Length 0 is reason 0 and no properties. */
	if (r->left == 0)
		return 0;
	if (get_u8(r, &rc) < 0)
		return -EPROTO;
	if (disconnect ? !rc_in(rc, RC_SET(rc_disconnect_server)) : !rc_in(rc, RC_SET(rc_auth)))
		return -EPROTO;
	out->reason = rc;
	/*
	 * 3.14.2.2.1: "If the Remaining Length is less than 2, a value of 0 is used" for
	 * DISCONNECT's Property Length. AUTH has no such clause (3.15.2.2.1): its Reason Code
	 * and Property Length are left out together or not at all, so a lone reason is
	 * malformed.
	 */
	if (r->left == 0)
		return disconnect ? 0 : -EPROTO;
	return parse_props(r, disconnect ? props_disconnect : props_auth, &out->props);
}

static int
decode_body(struct rd *r, int version, uint8_t type, uint8_t flags, struct mqttcodec_packet *out)
{
	switch (type) {
	case MQTTCODEC_CONNACK:
		return decode_connack(r, version, out);
	case MQTTCODEC_PUBLISH:
		return decode_publish(r, version, flags, out);
	case MQTTCODEC_PUBACK:
	case MQTTCODEC_PUBREC:
		return decode_ack(r, version, RC_SET(rc_puback), out);
	case MQTTCODEC_PUBREL:
	case MQTTCODEC_PUBCOMP:
		return decode_ack(r, version, RC_SET(rc_pubrel), out);
	case MQTTCODEC_SUBACK:
		if (version == MQTTCODEC_V311)
			return decode_suback(r, version, RC_SET(rc_suback_311), out);
		return decode_suback(r, version, RC_SET(rc_suback), out);
	case MQTTCODEC_UNSUBACK:
		if (version == MQTTCODEC_V311) /* 3.1.1 section 3.11: the packet id alone */
			return get_u16(r, &out->packet_id) < 0 || out->packet_id == 0 ? -EPROTO : 0;
		return decode_suback(r, version, RC_SET(rc_unsuback), out);
	case MQTTCODEC_PINGRESP:
		return 0;
	case MQTTCODEC_DISCONNECT:
	case MQTTCODEC_AUTH:
		return decode_reason_props(r, type, out);
	default:
		return -EPROTO; /* check_first() let no other through */
	}
}

int
mqttcodec_decode(const uint8_t *buf, size_t len, int version, uint32_t max_packet,
                 struct mqttcodec_packet *out)
{
	struct rd r = {.p = buf, .left = len};
	uint8_t first, type, flags;
	uint32_t rl;
	size_t total;
	int err;

	if (!out || (!buf && len) || !version_ok(version))
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	if (len == 0)
		return 0;
	first = buf[0];
	type = first >> 4;
	flags = first & 0x0F;
	if (check_first(type, flags, version) < 0)
		return -EPROTO;
	r.p++;
	r.left--;
	err = get_vbi(&r, &rl); /* 2.1.4 */
	if (err == -EAGAIN)
		return 0;
	if (err < 0)
		return err;
	total = (size_t)(r.p - buf) + rl;
	/* 3.1.2.11.4: the Maximum Packet Size counts the whole packet, fixed header and all. */
	if (max_packet && total > max_packet)
		return -EMSGSIZE;
	if (check_length(type, version, rl) < 0)
		return -EPROTO;
	if (r.left < rl)
		return 0;
	r.left = rl; /* what follows belongs to the next packet */

	out->type = (enum mqttcodec_type)type;
	out->flags = flags;
	if (decode_body(&r, version, type, flags, out) < 0)
		return -EPROTO;
	/* Bytes left inside the Remaining Length are malformed: every field is accounted for. */
	if (r.left != 0)
		return -EPROTO;
	return (int)total;
}
