/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness for bridges/mqtt/mqttcodec: the input is what a broker sent, one or more
 * packets back to back. It is decoded as the session engine would, under both versions, with
 * and without a Maximum Packet Size, and every PUBLISH decoded is encoded again from its
 * fields and decoded once more. The same bytes also drive every encoder (encode_input). Any
 * broken promise of mqttcodec.h aborts, so the fuzzer reports it like a crash. Built by
 * tests/fuzz/run.sh (clang, libFuzzer, ASan, UBSan), and by meson with driver.c to replay
 * the corpus in the unit suite.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqttcodec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define check(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* A decoded string points into the packet it came from, or is absent (NULL, 0). */
static void
check_within(struct mqttcodec_str s, const uint8_t *pkt, size_t n)
{
	if (!s.data) {
		check(s.len == 0);
		return;
	}
	check(s.data >= pkt && s.len <= n && (size_t)(s.data - pkt) <= n - s.len);
}

/* Topic Names and Content Types are at most 65,535 bytes (MQTT 5.0 section 1.5.4), and a
 * decoded one holds no U+0000, so a NUL-terminated copy is the same string. */
static char topic_buf[65536], type_buf[65536];

static const char *
c_string(char *buf, struct mqttcodec_str s)
{
	if (!s.data)
		return NULL;
	memcpy(buf, s.data, s.len);
	buf[s.len] = '\0';
	check(strlen(buf) == s.len);
	return buf;
}

/* Encodes p, checks the size promises, decodes the result and compares it with p. */
static void
encode_decode(const struct mqttcodec_publish *p)
{
	size_t size = mqttcodec_publish_size(p);
	struct mqttcodec_packet pk;
	uint8_t *buf;
	int n;

	if (size == 0) {
		check(mqttcodec_publish(NULL, 0, p) == -EINVAL);
		return;
	}
	check(mqttcodec_publish(NULL, 0, p) == (int)size);
	/* Exactly the size asked for, so that ASan sees any write past it. */
	buf = malloc(size);
	check(buf);
	check(mqttcodec_publish(buf, size - 1, p) == (int)size);
	n = mqttcodec_publish(buf, size, p);
	check(n == (int)size);

	check(mqttcodec_decode(buf, size, p->version, 0, &pk) == n);
	check(mqttcodec_decode(buf, size, p->version, (uint32_t)size, &pk) == n);
	check(mqttcodec_decode(buf, size - 1, p->version, 0, &pk) == 0);
	check(mqttcodec_decode(buf, size, p->version, (uint32_t)size - 1, &pk) == -EMSGSIZE);
	check(mqttcodec_decode(buf, size, p->version, 0, &pk) == n);
	check(pk.type == MQTTCODEC_PUBLISH);
	check(pk.qos == p->qos && pk.retain == p->retain && pk.dup == p->dup);
	check(pk.packet_id == (p->qos ? p->packet_id : 0));
	check(pk.topic.len == strlen(p->topic) && !memcmp(pk.topic.data, p->topic, pk.topic.len));
	check(pk.payload.len == p->len &&
	      (p->len == 0 || !memcmp(pk.payload.data, p->payload, p->len)));
	if (p->version == MQTTCODEC_V5 && p->content_type) {
		check(pk.props.content_type.len == strlen(p->content_type));
		check(!memcmp(pk.props.content_type.data, p->content_type,
		              pk.props.content_type.len));
	} else {
		check(!pk.props.content_type.data);
	}
	free(buf);
}

/* A PUBLISH from the broker, built again from its fields: it must come back the same. */
static void
round_trip(const struct mqttcodec_packet *in, int version)
{
	struct mqttcodec_publish p = {
	        .version = version,
	        .payload = in->payload.data,
	        .len = in->payload.len,
	        .qos = in->qos,
	        .retain = in->retain,
	        .dup = in->dup,
	        .packet_id = in->packet_id,
	};

	/* The client sends QoS 0 and 1 only. */
	if (in->qos > 1)
		return;
	p.topic = c_string(topic_buf, in->topic);
	p.content_type = c_string(type_buf, in->props.content_type);
	/* What the decoder accepted, the encoder must accept. */
	check(mqttcodec_publish_size(&p) > 0);
	encode_decode(&p);
}

/* The same packet with a Maximum Packet Size: the limit's answer, or the same answer. */
static void
check_limit(const uint8_t *buf, size_t len, int version, int unlimited)
{
	struct mqttcodec_packet pk;
	uint32_t limit = 2 + (uint32_t)(len / 2);
	int r;

	if (unlimited > 0) {
		check(mqttcodec_decode(buf, len, version, (uint32_t)unlimited, &pk) == unlimited);
		check(mqttcodec_decode(buf, len, version, (uint32_t)unlimited - 1, &pk) ==
		      -EMSGSIZE);
		return;
	}
	r = mqttcodec_decode(buf, len, version, limit, &pk);
	check(r == unlimited || r == -EMSGSIZE);
}

static void
decode_stream(const uint8_t *data, size_t size, int version)
{
	size_t at = 0;

	while (at < size) {
		const uint8_t *pkt = data + at;
		struct mqttcodec_packet pk;
		int n = mqttcodec_decode(pkt, size - at, version, 0, &pk);

		check(n == 0 || n == -EPROTO || (n > 0 && (size_t)n <= size - at));
		check_limit(pkt, size - at, version, n);
		if (n <= 0)
			return;
		/* Any shorter prefix is a packet still arriving. */
		check(mqttcodec_decode(pkt, (size_t)n - 1, version, 0, &pk) == 0);
		check(mqttcodec_decode(pkt, 1, version, 0, &pk) == 0);
		check(mqttcodec_decode(pkt, (size_t)n, version, 0, &pk) == n);

		check(pk.type == (pkt[0] >> 4) && pk.flags == (pkt[0] & 0x0F));
		check_within(pk.topic, pkt, (size_t)n);
		check_within(pk.payload, pkt, (size_t)n);
		check_within(pk.suback, pkt, (size_t)n);
		check_within(pk.props.assigned_client_id, pkt, (size_t)n);
		check_within(pk.props.reason_string, pkt, (size_t)n);
		check_within(pk.props.server_reference, pkt, (size_t)n);
		check_within(pk.props.content_type, pkt, (size_t)n);
		check(pk.reason >= 0 && pk.reason <= 0xFF);
		if (pk.type == MQTTCODEC_PUBLISH)
			round_trip(&pk, version);
		at += (size_t)n;
	}
}

/* An encoder's packet: its fixed header's Remaining Length says its size (MQTT 5.0 2.1.4). */
static void
check_framing(const uint8_t *buf, int size, uint8_t first)
{
	uint32_t rl = 0;
	int i = 1;

	check(size >= 2 && buf[0] == first);
	do {
		check(i < size && i <= 4);
		rl |= (uint32_t)(buf[i] & 0x7F) << (7 * (i - 1));
	} while (buf[i++] & 0x80);
	check((uint32_t)(size - i) == rl);
}

/*
 * Runs an encoder in a buffer of exactly the size it asks for (and one byte short, which
 * must write nothing and give the same size), then checks the framing.
 */
#define ENCODE(first, call_out_cap)                                                                \
	do {                                                                                       \
		uint8_t *out = NULL;                                                               \
		size_t cap = 0;                                                                    \
		int want = (call_out_cap);                                                         \
		check(want == -EINVAL || want > 0);                                                \
		if (want > 0) {                                                                    \
			out = malloc((size_t)want);                                                \
			check(out);                                                                \
			cap = (size_t)want - 1;                                                    \
			check((call_out_cap) == want);                                             \
			cap = (size_t)want;                                                        \
			check((call_out_cap) == want);                                             \
			check_framing(out, want, (first));                                         \
			free(out);                                                                 \
		}                                                                                  \
	} while (0)

/*
 * The input as the encoders' arguments: its first bytes as numbers and flags, all of it as
 * the strings. Whatever an encoder accepts must be framed right, and a PUBLISH or PUBACK it
 * writes must decode to what it was given.
 */
static void
encode_input(const uint8_t *data, size_t size)
{
	uint8_t b[8] = {0};
	size_t n = size < 65536 ? size : 65535;
	int version;
	struct mqttcodec_connect c;
	struct mqttcodec_publish p;

	memcpy(b, data, size < sizeof(b) ? size : sizeof(b));
	memcpy(topic_buf, data, n);
	topic_buf[n] = '\0';
	version = b[0] & 0x01 ? MQTTCODEC_V311 : MQTTCODEC_V5;

	p = (struct mqttcodec_publish){
	        .version = version,
	        .topic = topic_buf,
	        .payload = data,
	        .len = size,
	        .qos = (b[0] >> 1) & 0x03,
	        .retain = b[0] & 0x08,
	        .dup = b[0] & 0x10,
	        .packet_id = (uint16_t)(b[1] << 8 | b[2]),
	        .content_type = b[0] & 0x20 ? topic_buf : NULL,
	};
	encode_decode(&p);

	c = (struct mqttcodec_connect){
	        .version = version,
	        .client_id = b[0] & 0x40 ? topic_buf : "gw",
	        .clean_start = b[0] & 0x80,
	        .keepalive = (uint16_t)(b[1] << 8 | b[2]),
	        .username = b[3] & 0x01 ? topic_buf : NULL,
	        .session_expiry = b[3] & 0x02 ? (uint32_t)b[4] << 24 | b[5] : 0,
	        .receive_maximum = b[3] & 0x04 ? (uint16_t)(b[5] << 8 | b[6]) : 0,
	        .maximum_packet = b[3] & 0x08 ? (uint32_t)b[6] << 16 | b[7] : 0,
	        .will_topic = b[3] & 0x10 ? topic_buf : NULL,
	        .will_payload = data,
	        .will_len = size,
	        .will_qos = (b[3] >> 5) & 0x03,
	        .will_retain = b[3] & 0x80,
	};
	ENCODE(MQTTCODEC_CONNECT << 4, mqttcodec_connect(out, cap, &c));
	ENCODE(MQTTCODEC_SUBSCRIBE << 4 | 0x02,
	       mqttcodec_subscribe(out, cap, version, p.packet_id, topic_buf, b[4] & 0x03));
	ENCODE(MQTTCODEC_DISCONNECT << 4, mqttcodec_disconnect(out, cap, version, b[5]));
	ENCODE(MQTTCODEC_PINGREQ << 4, mqttcodec_pingreq(out, cap));
	ENCODE(MQTTCODEC_PUBACK << 4, mqttcodec_puback(out, cap, version, p.packet_id, b[6]));

	/* A PUBACK is the same packet either way (MQTT 5.0 section 3.4). */
	{
		uint8_t ack[8];
		struct mqttcodec_packet pk;
		int r = mqttcodec_puback(ack, sizeof(ack), version, p.packet_id, b[6]);

		if (r > 0) {
			check(mqttcodec_decode(ack, (size_t)r, version, 0, &pk) == r);
			check(pk.type == MQTTCODEC_PUBACK && pk.packet_id == p.packet_id);
			check(pk.reason == (version == MQTTCODEC_V5 ? b[6] : 0));
		}
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	decode_stream(data, size, MQTTCODEC_V5);
	decode_stream(data, size, MQTTCODEC_V311);
	encode_input(data, size);
	return 0;
}
