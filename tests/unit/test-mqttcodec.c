/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "mqttcodec.h"

/*
 * Every byte vector here was written by hand from the specifications: MQTT Version 5.0 (OASIS
 * Standard, 7 March 2019) and MQTT Version 3.1.1 (OASIS Standard, 29 October 2014). Each
 * cites the sections it follows; "5.0" and "3.1.1" say which document.
 */

#define V5  MQTTCODEC_V5
#define V4  MQTTCODEC_V311
#define LEN (sizeof(out))

/* Encodes with fn's result r, then compares out[0..r) with want. */
#define assert_encoded(r, want)                                                                    \
	do {                                                                                       \
		assert_int_equal((r), sizeof(want));                                               \
		assert_memory_equal(out, (want), sizeof(want));                                    \
	} while (0)

/* ---- encoders ---- */

static void
connect_v5_minimal(void **state)
{
	/* 5.0 3.1: fixed header 0x10 (3.1.1); Protocol Name "MQTT" (3.1.2.1), Version 5
	 * (3.1.2.2), Connect Flags with Clean Start only (3.1.2.3, 3.1.2.4), Keep Alive 60
	 * (3.1.2.10), Property Length 0 (3.1.2.11.1), Client Identifier "gw-01" (3.1.3.1).
	 * Remaining Length 6 + 1 + 1 + 2 + 1 + 7 = 18. */
	static const uint8_t want[] = {0x10, 0x12, 0x00, 0x04, 'M',  'Q', 'T', 'T', 0x05, 0x02,
	                               0x00, 0x3C, 0x00, 0x00, 0x05, 'g', 'w', '-', '0',  '1'};
	struct mqttcodec_connect c = {
	        .version = V5, .client_id = "gw-01", .clean_start = true, .keepalive = 60};
	uint8_t out[64];

	(void)state;
	assert_encoded(mqttcodec_connect(out, LEN, &c), want);
}

/* A session with every field the client sends: a will, a user name, three properties. */
static const struct mqttcodec_connect full_connect = {
        .client_id = "dev",
        .clean_start = false,
        .keepalive = 30,
        .username = "u",
        .session_expiry = 3600,
        .receive_maximum = 16,
        .maximum_packet = 4096,
        .will_topic = "s/dev",
        .will_payload = "off",
        .will_len = 3,
        .will_qos = 1,
        .will_retain = true,
};

static void
connect_v5_full(void **state)
{
	/*
	 * 5.0 3.1.2.3 Connect Flags: User Name 0x80, Will Retain 0x20, Will QoS 1 << 3 = 0x08,
	 * Will Flag 0x04, Clean Start 0, Password 0: 0xAC. Properties (3.1.2.11), 13 bytes:
	 * Session Expiry Interval 0x11 = 3600 (3.1.2.11.2), Receive Maximum 0x21 = 16
	 * (3.1.2.11.3), Maximum Packet Size 0x27 = 4096 (3.1.2.11.4). Payload (3.1.3): Client
	 * Identifier "dev", Will Properties Length 0 (3.1.3.2), Will Topic "s/dev" (3.1.3.3),
	 * Will Payload "off" as Binary Data (3.1.3.4), User Name "u" (3.1.3.5).
	 * Remaining Length 6 + 1 + 1 + 2 + 1 + 13 + 5 + 1 + 7 + 5 + 3 = 45.
	 */
	static const uint8_t want[] = {0x10, 0x2D, 0x00, 0x04, 'M',  'Q',  'T',  'T',  0x05, 0xAC,
	                               0x00, 0x1E, 0x0D, 0x11, 0x00, 0x00, 0x0E, 0x10, 0x21, 0x00,
	                               0x10, 0x27, 0x00, 0x00, 0x10, 0x00, 0x00, 0x03, 'd',  'e',
	                               'v',  0x00, 0x00, 0x05, 's',  '/',  'd',  'e',  'v',  0x00,
	                               0x03, 'o',  'f',  'f',  0x00, 0x01, 'u'};
	struct mqttcodec_connect c = full_connect;
	uint8_t out[64];

	(void)state;
	c.version = V5;
	assert_encoded(mqttcodec_connect(out, LEN, &c), want);
}

static void
connect_v311(void **state)
{
	/*
	 * 3.1.1 3.1: Protocol Level 4 (3.1.2.2), flags 0xAC as for 5.0 (3.1.2.3: User Name,
	 * Will Retain, Will QoS 1, Will Flag; Clean Session 0, Password 0), Keep Alive 30, no
	 * properties; payload (3.1.3) Client Identifier, Will Topic, Will Message (2-byte
	 * length), User Name. Remaining Length 6 + 1 + 1 + 2 + 5 + 7 + 5 + 3 = 30. The 5.0
	 * properties are not sent.
	 */
	static const uint8_t want[] = {0x10, 0x1E, 0x00, 0x04, 'M',  'Q',  'T',  'T',
	                               0x04, 0xAC, 0x00, 0x1E, 0x00, 0x03, 'd',  'e',
	                               'v',  0x00, 0x05, 's',  '/',  'd',  'e',  'v',
	                               0x00, 0x03, 'o',  'f',  'f',  0x00, 0x01, 'u'};
	/* 3.1.1 3.1: Clean Session 0x02, Keep Alive 60, Client Identifier "dev": 15. */
	static const uint8_t clean[] = {0x10, 0x0F, 0x00, 0x04, 'M',  'Q', 'T', 'T', 0x04,
	                                0x02, 0x00, 0x3C, 0x00, 0x03, 'd', 'e', 'v'};
	struct mqttcodec_connect c = full_connect;
	uint8_t out[64];

	(void)state;
	c.version = V4;
	assert_encoded(mqttcodec_connect(out, LEN, &c), want);
	c = (struct mqttcodec_connect){
	        .version = V4, .client_id = "dev", .clean_start = true, .keepalive = 60};
	assert_encoded(mqttcodec_connect(out, LEN, &c), clean);
}

static void
connect_refuses_what_cannot_be_sent(void **state)
{
	struct mqttcodec_connect c = full_connect;
	uint8_t out[128];

	(void)state;
	c.version = 3;
	assert_int_equal(mqttcodec_connect(out, LEN, &c), -EINVAL);
	c.version = V5;
	c.will_qos = 3; /* 5.0 3.1.2.6 [MQTT-3.1.2-12] */
	assert_int_equal(mqttcodec_connect(out, LEN, &c), -EINVAL);
	c.will_qos = 1;
	c.will_topic = "s/+"; /* a will topic is a Topic Name: 5.0 3.1.3.3, 4.7.1 */
	assert_int_equal(mqttcodec_connect(out, LEN, &c), -EINVAL);
	c.will_topic = "s/dev";
	c.client_id = "\xC0\xAF"; /* overlong '/': 5.0 1.5.4 [MQTT-1.5.4-1] */
	assert_int_equal(mqttcodec_connect(out, LEN, &c), -EINVAL);
	c.client_id = NULL;
	assert_int_equal(mqttcodec_connect(out, LEN, &c), -EINVAL);
	/* 3.1.1 3.1.3.1 [MQTT-3.1.3-7]: an empty ClientId needs CleanSession 1; 5.0 lets the
	 * server assign one (5.0 3.1.3.1). */
	c.client_id = "";
	c.version = V4;
	assert_int_equal(mqttcodec_connect(out, LEN, &c), -EINVAL);
	c.clean_start = true;
	assert_true(mqttcodec_connect(out, LEN, &c) > 0);
	c.clean_start = false;
	c.version = V5;
	assert_true(mqttcodec_connect(out, LEN, &c) > 0);
}

static void
connect_reports_its_size_first(void **state)
{
	struct mqttcodec_connect c = full_connect;
	uint8_t out[47];

	(void)state;
	c.version = V5;
	/* Like snprintf: the size, and nothing written while it does not fit. */
	assert_int_equal(mqttcodec_connect(NULL, 0, &c), 47);
	memset(out, 0xEE, sizeof(out));
	assert_int_equal(mqttcodec_connect(out, 46, &c), 47);
	for (size_t i = 0; i < sizeof(out); i++)
		assert_int_equal(out[i], 0xEE);
	assert_int_equal(mqttcodec_connect(out, 47, &c), 47);
	assert_int_equal(mqttcodec_connect(NULL, 47, &c), -EINVAL);
}

/* 5.0 3.3: topic "t/1", QoS 0, Content Type "text/plain", payload "21.5". */
static const uint8_t publish_v5_qos0[] = {
        /* 3.3.1: 0x30, QoS 0, no DUP or RETAIN; Remaining Length 5 + 1 + 13 + 4 = 23 */
        0x30, 0x17,
        /* 3.3.2.1 Topic Name */
        0x00, 0x03, 't', '/', '1',
        /* 3.3.2.3.1 Property Length 13; 3.3.2.3.9 Content Type 0x03 */
        0x0D, 0x03, 0x00, 0x0A, 't', 'e', 'x', 't', '/', 'p', 'l', 'a', 'i', 'n',
        /* 3.3.3 Payload */
        '2', '1', '.', '5'};

static void
publish_v5(void **state)
{
	/* 5.0 3.3.1: DUP 0x08, QoS 1 0x02, RETAIN 0x01; 3.3.2.2 Packet Identifier 0x1234;
	 * Property Length 0. Remaining Length 5 + 2 + 1 + 2 = 10. */
	static const uint8_t qos1[] = {0x3B, 0x0A, 0x00, 0x03, 't', '/',
	                               '1',  0x12, 0x34, 0x00, 'h', 'i'};
	struct mqttcodec_publish p = {.version = V5,
	                              .topic = "t/1",
	                              .payload = "21.5",
	                              .len = 4,
	                              .content_type = "text/plain"};
	uint8_t out[64];

	(void)state;
	assert_int_equal(mqttcodec_publish_size(&p), sizeof(publish_v5_qos0));
	assert_encoded(mqttcodec_publish(out, LEN, &p), publish_v5_qos0);
	p = (struct mqttcodec_publish){.version = V5,
	                               .topic = "t/1",
	                               .payload = "hi",
	                               .len = 2,
	                               .qos = 1,
	                               .retain = true,
	                               .dup = true,
	                               .packet_id = 0x1234};
	assert_int_equal(mqttcodec_publish_size(&p), sizeof(qos1));
	assert_encoded(mqttcodec_publish(out, LEN, &p), qos1);
}

static void
publish_v311(void **state)
{
	/* 3.1.1 3.3: 0x32 (QoS 1), Topic Name, Packet Identifier 7, payload; no properties, so
	 * no content type. Remaining Length 5 + 2 + 2 = 9. */
	static const uint8_t want[] = {0x32, 0x09, 0x00, 0x03, 't', '/', '1', 0x00, 0x07, 'h', 'i'};
	/* 3.1.1 3.3: QoS 0, RETAIN, empty payload: Remaining Length 5. */
	static const uint8_t empty[] = {0x31, 0x05, 0x00, 0x03, 't', '/', '1'};
	struct mqttcodec_publish p = {.version = V4,
	                              .topic = "t/1",
	                              .payload = "hi",
	                              .len = 2,
	                              .qos = 1,
	                              .packet_id = 7,
	                              .content_type = "text/plain"};
	uint8_t out[64];

	(void)state;
	assert_int_equal(mqttcodec_publish_size(&p), sizeof(want));
	assert_encoded(mqttcodec_publish(out, LEN, &p), want);
	p = (struct mqttcodec_publish){.version = V4, .topic = "t/1", .retain = true};
	assert_int_equal(mqttcodec_publish_size(&p), sizeof(empty));
	assert_encoded(mqttcodec_publish(out, LEN, &p), empty);
}

static void
publish_size_follows_the_remaining_length(void **state)
{
	/* 5.0 1.5.5: a Remaining Length of 127 takes one byte, 128 two, 16,383 two, 16,384
	 * three. Topic "t" (3 bytes) and Property Length (1) leave the payload the rest. */
	static const struct {
		size_t payload;
		size_t total;
	} cases[] = {
	        {123, 1 + 1 + 127},
	        {124, 1 + 2 + 128},
	        {16379, 1 + 2 + 16383},
	        {16380, 1 + 3 + 16384},
	};
	static uint8_t payload[16384], out[16400];
	struct mqttcodec_publish p = {.version = V5, .topic = "t", .payload = payload};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct mqttcodec_packet pk;

		p.len = cases[i].payload;
		assert_int_equal(mqttcodec_publish_size(&p), cases[i].total);
		assert_int_equal(mqttcodec_publish(out, sizeof(out), &p), cases[i].total);
		assert_int_equal(mqttcodec_decode(out, cases[i].total, V5, 0, &pk), cases[i].total);
		assert_int_equal(pk.payload.len, cases[i].payload);
	}
	/* Over 268,435,455 bytes cannot be said (5.0 1.5.5). */
	p.len = MQTTCODEC_MAX_REMAINING;
	assert_int_equal(mqttcodec_publish_size(&p), 0);
	assert_int_equal(mqttcodec_publish(NULL, 0, &p), -EINVAL);
}

static void
publish_refuses_what_cannot_be_sent(void **state)
{
	static const struct mqttcodec_publish ok = {
	        .version = V5, .topic = "t/1", .payload = "x", .len = 1, .qos = 1, .packet_id = 1};
	struct mqttcodec_publish p;
	uint8_t out[64];

#define REFUSED(field, value)                                                                      \
	do {                                                                                       \
		p = ok;                                                                            \
		p.field = value;                                                                   \
		assert_int_equal(mqttcodec_publish(out, LEN, &p), -EINVAL);                        \
		assert_int_equal(mqttcodec_publish_size(&p), 0);                                   \
	} while (0)

	(void)state;
	assert_true(mqttcodec_publish(out, LEN, &ok) > 0);
	REFUSED(version, 6);
	REFUSED(qos, 2); /* the client does QoS 0 and 1 */
	REFUSED(qos, -1);
	REFUSED(packet_id, 0); /* 5.0 2.2.1 [MQTT-2.2.1-3] */
	REFUSED(topic, NULL);
	REFUSED(topic, "");    /* 5.0 4.7.3 [MQTT-4.7.3-1] */
	REFUSED(topic, "t/+"); /* 5.0 3.3.2.1 [MQTT-3.3.2-2] */
	REFUSED(topic, "t/#");
	REFUSED(topic, "t/\xED\xA0\x80"); /* a surrogate: 5.0 1.5.4 [MQTT-1.5.4-1] */
	REFUSED(content_type, "\xF5\x80\x80\x80");
	REFUSED(payload, NULL);
	p = ok;
	p.qos = 0;
	p.dup = true; /* 5.0 3.3.1.1 [MQTT-3.3.1-2] */
	assert_int_equal(mqttcodec_publish(out, LEN, &p), -EINVAL);
	/* Not sent with 3.1.1, so not judged either. */
	p = ok;
	p.version = V4;
	p.content_type = "\xF5";
	assert_int_equal(mqttcodec_publish(out, LEN, &p), 10);
#undef REFUSED
}

static void
puback(void **state)
{
	/* 5.0 3.4.2.1: reason 0, no properties: Remaining Length 2. */
	static const uint8_t v5_short[] = {0x40, 0x02, 0x00, 0x07};
	/* 5.0 3.4.2.1 Reason Code 0x10 (No matching subscribers); 3.4.2.2.1: "If the Remaining
	 * Length is less than 4 there is no Property Length". */
	static const uint8_t v5_reason[] = {0x40, 0x03, 0x00, 0x07, 0x10};
	/* 3.1.1 3.4: the Packet Identifier alone. */
	static const uint8_t v311[] = {0x40, 0x02, 0x00, 0x07};
	uint8_t out[8];

	(void)state;
	assert_encoded(mqttcodec_puback(out, LEN, V5, 7, 0), v5_short);
	assert_encoded(mqttcodec_puback(out, LEN, V5, 7, 0x10), v5_reason);
	assert_encoded(mqttcodec_puback(out, LEN, V4, 7, 0x10), v311);
	assert_encoded(mqttcodec_puback(out, LEN, V4, 7, 0), v311);
	assert_int_equal(mqttcodec_puback(out, LEN, V5, 0, 0), -EINVAL);
	/* 5.0 3.4.2.1 [MQTT-3.4.2-1]: a PUBACK Reason Code, not 0x04 or 0x92. */
	assert_int_equal(mqttcodec_puback(out, LEN, V5, 7, 0x04), -EINVAL);
	assert_int_equal(mqttcodec_puback(out, LEN, V5, 7, 0x92), -EINVAL);
	assert_int_equal(mqttcodec_puback(out, LEN, V5, 7, 0x199), -EINVAL);
	assert_int_equal(mqttcodec_puback(out, 4, V5, 7, 0x10), 5);
}

static void
subscribe(void **state)
{
	/* 5.0 3.8: flags 0010 (3.8.1), Packet Identifier 10 (3.8.2), Property Length 0
	 * (3.8.2.1), Topic Filter "cmd/dev/#" and Subscription Options QoS 1 (3.8.3.1).
	 * Remaining Length 2 + 1 + 11 + 1 = 15. */
	static const uint8_t v5[] = {0x82, 0x0F, 0x00, 0x0A, 0x00, 0x00, 0x09, 'c', 'm',
	                             'd',  '/',  'd',  'e',  'v',  '/',  '#',  0x01};
	/* 3.1.1 3.8: the same without the Property Length: 14. */
	static const uint8_t v311[] = {0x82, 0x0E, 0x00, 0x0A, 0x00, 0x09, 'c', 'm',
	                               'd',  '/',  'd',  'e',  'v',  '/',  '#', 0x01};
	uint8_t out[32];

	(void)state;
	assert_encoded(mqttcodec_subscribe(out, LEN, V5, 10, "cmd/dev/#", 1), v5);
	assert_encoded(mqttcodec_subscribe(out, LEN, V4, 10, "cmd/dev/#", 1), v311);
	assert_int_equal(mqttcodec_subscribe(out, LEN, V5, 0, "a", 0), -EINVAL);
	assert_int_equal(mqttcodec_subscribe(out, LEN, V5, 1, "a", 3), -EINVAL);
	/* 5.0 4.7.1: wildcards fill a whole level, '#' only the last. */
	assert_true(mqttcodec_subscribe(out, LEN, V5, 1, "+/a/+/#", 0) > 0);
	assert_true(mqttcodec_subscribe(out, LEN, V5, 1, "#", 0) > 0);
	assert_int_equal(mqttcodec_subscribe(out, LEN, V5, 1, "a#", 0), -EINVAL);
	assert_int_equal(mqttcodec_subscribe(out, LEN, V5, 1, "#/a", 0), -EINVAL);
	assert_int_equal(mqttcodec_subscribe(out, LEN, V5, 1, "a/+b", 0), -EINVAL);
	assert_int_equal(mqttcodec_subscribe(out, LEN, V5, 1, "", 0), -EINVAL);
	/* 5.0 4.8.2: $share/ShareName/filter, the ShareName without wildcards. */
	assert_true(mqttcodec_subscribe(out, LEN, V5, 1, "$share/g/cmd/#", 0) > 0);
	assert_int_equal(mqttcodec_subscribe(out, LEN, V5, 1, "$share/+/cmd", 0), -EINVAL);
	assert_int_equal(mqttcodec_subscribe(out, LEN, V5, 1, "$share/g", 0), -EINVAL);
	assert_int_equal(mqttcodec_subscribe(out, LEN, V5, 1, "$share//a", 0), -EINVAL);
	/* In 3.1.1 "$share" is an ordinary first level. */
	assert_true(mqttcodec_subscribe(out, LEN, V4, 1, "$share/g", 0) > 0);
}

static void
pingreq_and_disconnect(void **state)
{
	/* 5.0 3.12 (3.1.1 3.12): 0xC0, Remaining Length 0. */
	static const uint8_t ping[] = {0xC0, 0x00};
	/* 5.0 3.14.2.1: reason 0 and no properties: Remaining Length 0 (3.1.1 3.14 always). */
	static const uint8_t disc[] = {0xE0, 0x00};
	/* 5.0 3.14.2.1 Reason Code 0x04 (Disconnect with Will Message); 3.14.2.2.1: below
	 * Remaining Length 2 there is no Property Length. */
	static const uint8_t disc_will[] = {0xE0, 0x01, 0x04};
	uint8_t out[8];

	(void)state;
	assert_encoded(mqttcodec_pingreq(out, LEN), ping);
	assert_int_equal(mqttcodec_pingreq(out, 1), 2);
	assert_encoded(mqttcodec_disconnect(out, LEN, V5, 0), disc);
	assert_encoded(mqttcodec_disconnect(out, LEN, V5, 0x04), disc_will);
	assert_encoded(mqttcodec_disconnect(out, LEN, V4, 0x04), disc);
	assert_encoded(mqttcodec_disconnect(out, LEN, V4, 0), disc);
	/* 5.0 3.14.2.1: 0x8B (Server shutting down) is the server's to send. */
	assert_int_equal(mqttcodec_disconnect(out, LEN, V5, 0x8B), -EINVAL);
	assert_int_equal(mqttcodec_disconnect(out, LEN, 0, 0), -EINVAL);
}

static void
reason_names(void **state)
{
	char buf[16];

	(void)state;
	/* 5.0 2.4 Table 2-6 */
	assert_string_equal(mqttcodec_reason_name(0x87, buf, sizeof(buf)), "Not authorized");
	assert_string_equal(mqttcodec_reason_name(0x9F, buf, sizeof(buf)),
	                    "Connection rate exceeded");
	assert_string_equal(mqttcodec_reason_name(0x07, buf, sizeof(buf)), "reason 0x07");
	assert_string_equal(mqttcodec_reason_name(0xFF, buf, sizeof(buf)), "reason 0xFF");
	/* 3.1.1 3.2.2.3 Table 3.1 against 5.0 3.2.2.2. */
	assert_int_equal(mqttcodec_reason_from_311(0), 0x00);
	assert_int_equal(mqttcodec_reason_from_311(1), 0x84);
	assert_int_equal(mqttcodec_reason_from_311(2), 0x85);
	assert_int_equal(mqttcodec_reason_from_311(3), 0x88);
	assert_int_equal(mqttcodec_reason_from_311(4), 0x86);
	assert_int_equal(mqttcodec_reason_from_311(5), 0x87);
	assert_int_equal(mqttcodec_reason_from_311(6), 0x80);
	assert_int_equal(mqttcodec_reason_from_311(-1), 0x80);
}

/* ---- decoder: well-formed packets ---- */

/* Decodes v whole and checks that every shorter prefix asks for more. */
static int
decode_all(const uint8_t *v, size_t n, int version, struct mqttcodec_packet *pk)
{
	for (size_t k = 0; k < n; k++) {
		struct mqttcodec_packet part;

		if (mqttcodec_decode(v, k, version, 0, &part) != 0)
			fail_msg("prefix of %zu of %zu bytes did not return 0", k, n);
	}
	return mqttcodec_decode(v, n, version, 0, pk);
}

static bool
str_is(struct mqttcodec_str s, const char *want)
{
	return s.len == strlen(want) && memcmp(s.data, want, s.len) == 0;
}

/* 5.0 3.2: a CONNACK with the properties the client reads. */
static const uint8_t connack_v5[] = {
        /* 3.2.1; Remaining Length 2 + 1 + 23 = 26 */
        0x20, 0x1A,
        /* 3.2.2.1 Acknowledge Flags 0, 3.2.2.2 Reason Code 0, 3.2.2.3.1 Property Length 23 */
        0x00, 0x00, 0x17,
        /* 3.2.2.3.6 Maximum Packet Size 1024 */
        0x27, 0x00, 0x00, 0x04, 0x00,
        /* 3.2.2.3.3 Receive Maximum 10 */
        0x21, 0x00, 0x0A,
        /* 3.2.2.3.7 Assigned Client Identifier "auto" */
        0x12, 0x00, 0x04, 'a', 'u', 't', 'o',
        /* 3.2.2.3.14 Server Keep Alive 120 */
        0x13, 0x00, 0x78,
        /* 3.2.2.3.9 Reason String "ok" */
        0x1F, 0x00, 0x02, 'o', 'k'};

static void
decodes_connack_v5(void **state)
{
	/* 5.0 3.2: Session Present (3.2.2.1.1), and the other CONNACK properties: Session
	 * Expiry Interval 60 (3.2.2.3.2), Maximum QoS 0 (3.2.2.3.4), Retain Available 0
	 * (3.2.2.3.5), two User Properties (3.2.2.3.10, which may repeat), Topic Alias Maximum
	 * 5 (3.2.2.3.8), Wildcard Subscription Available 1 (3.2.2.3.11), Server Reference "b"
	 * (3.2.2.3.16). Properties 5 + 2 + 2 + 7 + 7 + 3 + 2 + 4 = 32. */
	static const uint8_t more[] = {0x20, 0x23, 0x01, 0x00, 0x20, 0x11, 0x00, 0x00, 0x00, 0x3C,
	                               0x24, 0x00, 0x25, 0x00, 0x26, 0x00, 0x01, 'k',  0x00, 0x01,
	                               'v',  0x26, 0x00, 0x01, 'k',  0x00, 0x01, 'w',  0x22, 0x00,
	                               0x05, 0x28, 0x01, 0x1C, 0x00, 0x01, 'b'};
	struct mqttcodec_packet pk;

	(void)state;
	assert_int_equal(decode_all(connack_v5, sizeof(connack_v5), V5, &pk), sizeof(connack_v5));
	assert_int_equal(pk.type, MQTTCODEC_CONNACK);
	assert_false(pk.session_present);
	assert_int_equal(pk.reason, 0);
	assert_int_equal(pk.props.maximum_packet, 1024);
	assert_true(pk.props.has_receive_maximum);
	assert_int_equal(pk.props.receive_maximum, 10);
	assert_true(str_is(pk.props.assigned_client_id, "auto"));
	assert_true(pk.props.has_server_keepalive);
	assert_int_equal(pk.props.server_keepalive, 120);
	assert_true(str_is(pk.props.reason_string, "ok"));
	assert_false(pk.props.has_session_expiry);
	assert_false(pk.props.has_maximum_qos);

	assert_int_equal(decode_all(more, sizeof(more), V5, &pk), sizeof(more));
	assert_true(pk.session_present);
	assert_true(pk.props.has_session_expiry);
	assert_int_equal(pk.props.session_expiry, 60);
	assert_true(pk.props.has_maximum_qos);
	assert_int_equal(pk.props.maximum_qos, 0);
	assert_true(pk.props.has_retain_available);
	assert_false(pk.props.retain_available);
	assert_true(str_is(pk.props.server_reference, "b"));
	assert_int_equal(pk.props.maximum_packet, 0);
	assert_false(pk.props.has_receive_maximum);
}

static void
decodes_connack_refusals(void **state)
{
	/* 5.0 3.2.2.2: 0x87 Not authorized, Property Length 0. */
	static const uint8_t refused[] = {0x20, 0x03, 0x00, 0x87, 0x00};
	/* 3.1.1 3.2.2.2 Session Present 1, 3.2.2.3 return code 0 (accepted). */
	static const uint8_t v311_ok[] = {0x20, 0x02, 0x01, 0x00};
	/* 3.1.1 3.2.2.3: 5, not authorized; 6 is reserved. */
	static const uint8_t v311_5[] = {0x20, 0x02, 0x00, 0x05};
	static const uint8_t v311_6[] = {0x20, 0x02, 0x00, 0x06};
	/* A 3.1.1 broker's answer to an MQTT 5 CONNECT: 3.1.1 3.1.2.2 [MQTT-3.1.2-2]. */
	static const uint8_t v311_level[] = {0x20, 0x02, 0x00, 0x01};
	struct mqttcodec_packet pk;

	(void)state;
	assert_int_equal(decode_all(refused, sizeof(refused), V5, &pk), 5);
	assert_int_equal(pk.reason, MQTTCODEC_RC_NOT_AUTHORIZED);
	assert_int_equal(decode_all(v311_ok, sizeof(v311_ok), V4, &pk), 4);
	assert_true(pk.session_present);
	assert_int_equal(pk.reason, 0);
	assert_int_equal(decode_all(v311_5, sizeof(v311_5), V4, &pk), 4);
	assert_int_equal(pk.reason, MQTTCODEC_RC_NOT_AUTHORIZED);
	assert_int_equal(decode_all(v311_6, sizeof(v311_6), V4, &pk), 4);
	assert_int_equal(pk.reason, MQTTCODEC_RC_UNSPECIFIED);
	assert_int_equal(decode_all(v311_level, sizeof(v311_level), V5, &pk), 4);
	assert_int_equal(pk.type, MQTTCODEC_CONNACK);
	assert_int_equal(pk.reason, MQTTCODEC_RC_UNSUPPORTED_VERSION);
	/* Under 3.1.1 the same bytes say the same: 1 is 0x84. */
	assert_int_equal(decode_all(v311_level, sizeof(v311_level), V4, &pk), 4);
	assert_int_equal(pk.reason, MQTTCODEC_RC_UNSUPPORTED_VERSION);
}

static void
decodes_publish_v5(void **state)
{
	/* 5.0 3.3, QoS 1: Topic Name "c/x", Packet Identifier 42, then properties (3.3.2.3):
	 * Content Type "application/json" (3.3.2.3.9), Payload Format Indicator 1 (3.3.2.3.2),
	 * Message Expiry Interval 60 (3.3.2.3.3), Subscription Identifiers 5 and 7 (3.3.2.3.8:
	 * one for each matching subscription), two User Properties (3.3.2.3.7). Properties
	 * 19 + 2 + 5 + 4 + 14 = 44; Remaining Length 5 + 2 + 1 + 44 + 2 = 54. */
	static const uint8_t qos1[] = {
	        0x32, 0x36, 0x00, 0x03, 'c',  '/',  'x',  0x00, 0x2A, 0x2C, 0x03, 0x00, 0x10, 'a',
	        'p',  'p',  'l',  'i',  'c',  'a',  't',  'i',  'o',  'n',  '/',  'j',  's',  'o',
	        'n',  0x01, 0x01, 0x02, 0x00, 0x00, 0x00, 0x3C, 0x0B, 0x05, 0x0B, 0x07, 0x26, 0x00,
	        0x01, 'a',  0x00, 0x01, 'b',  0x26, 0x00, 0x01, 'a',  0x00, 0x01, 'c',  '{',  '}'};
	struct mqttcodec_packet pk;

	(void)state;
	assert_int_equal(decode_all(publish_v5_qos0, sizeof(publish_v5_qos0), V5, &pk),
	                 sizeof(publish_v5_qos0));
	assert_int_equal(pk.type, MQTTCODEC_PUBLISH);
	assert_int_equal(pk.qos, 0);
	assert_int_equal(pk.packet_id, 0);
	assert_false(pk.dup);
	assert_false(pk.retain);
	assert_true(str_is(pk.topic, "t/1"));
	assert_true(str_is(pk.props.content_type, "text/plain"));
	assert_true(str_is(pk.payload, "21.5"));

	assert_int_equal(decode_all(qos1, sizeof(qos1), V5, &pk), sizeof(qos1));
	assert_int_equal(pk.qos, 1);
	assert_int_equal(pk.flags, 0x02);
	assert_int_equal(pk.packet_id, 42);
	assert_true(str_is(pk.topic, "c/x"));
	assert_true(str_is(pk.props.content_type, "application/json"));
	assert_true(pk.props.has_payload_format);
	assert_int_equal(pk.props.payload_format, 1);
	assert_true(pk.props.has_message_expiry);
	assert_int_equal(pk.props.message_expiry, 60);
	assert_true(str_is(pk.payload, "{}"));
}

static void
decodes_publish_v311(void **state)
{
	/* 3.1.1 3.3: DUP, QoS 1 and RETAIN (0x3B), Topic Name "t/1", Packet Identifier 7,
	 * payload "hi"; no properties. */
	static const uint8_t qos1[] = {0x3B, 0x09, 0x00, 0x03, 't', '/', '1', 0x00, 0x07, 'h', 'i'};
	/* 3.1.1 3.3: QoS 0, empty payload. */
	static const uint8_t qos0[] = {0x30, 0x05, 0x00, 0x03, 't', '/', '1'};
	struct mqttcodec_packet pk;

	(void)state;
	assert_int_equal(decode_all(qos1, sizeof(qos1), V4, &pk), sizeof(qos1));
	assert_int_equal(pk.qos, 1);
	assert_true(pk.dup);
	assert_true(pk.retain);
	assert_int_equal(pk.packet_id, 7);
	assert_true(str_is(pk.topic, "t/1"));
	assert_true(str_is(pk.payload, "hi"));
	assert_int_equal(decode_all(qos0, sizeof(qos0), V4, &pk), sizeof(qos0));
	assert_int_equal(pk.payload.len, 0);
	/* 5.0 would read the payload's 'h' as a Property Length of 104, past the end. */
	assert_int_equal(decode_all(qos1, sizeof(qos1), V5, &pk), -EPROTO);
}

static void
decodes_acks(void **state)
{
	/* 5.0 3.4.2.1: Remaining Length 2, reason 0. */
	static const uint8_t short_form[] = {0x40, 0x02, 0x00, 0x07};
	/* 5.0 3.4.2.1 Reason Code 0x10; 3.4.2.2.1: no Property Length below 4. */
	static const uint8_t with_reason[] = {0x40, 0x03, 0x00, 0x07, 0x10};
	/* 5.0 3.4.2.2: 0x97 Quota exceeded, Property Length 8: Reason String "quota". */
	static const uint8_t with_props[] = {0x40, 0x0C, 0x00, 0x07, 0x97, 0x08, 0x1F,
	                                     0x00, 0x05, 'q',  'u',  'o',  't',  'a'};
	/* 5.0 3.4.2.2.1: an empty Property Length is allowed too. */
	static const uint8_t empty_props[] = {0x40, 0x04, 0x00, 0x07, 0x10, 0x00};
	/* 5.0 3.5 PUBREC, 3.6 PUBREL (flags 0010), 3.7 PUBCOMP 0x92 Packet Identifier not
	 * found. */
	static const uint8_t pubrec[] = {0x50, 0x02, 0x00, 0x01};
	static const uint8_t pubrel[] = {0x62, 0x02, 0x00, 0x01};
	static const uint8_t pubcomp[] = {0x70, 0x03, 0x00, 0x01, 0x92};
	struct mqttcodec_packet pk;

	(void)state;
	assert_int_equal(decode_all(short_form, sizeof(short_form), V5, &pk), 4);
	assert_int_equal(pk.type, MQTTCODEC_PUBACK);
	assert_int_equal(pk.packet_id, 7);
	assert_int_equal(pk.reason, 0);
	assert_int_equal(decode_all(with_reason, sizeof(with_reason), V5, &pk), 5);
	assert_int_equal(pk.reason, MQTTCODEC_RC_NO_MATCHING_SUBSCRIBERS);
	assert_int_equal(decode_all(with_props, sizeof(with_props), V5, &pk), 14);
	assert_int_equal(pk.reason, MQTTCODEC_RC_QUOTA_EXCEEDED);
	assert_true(str_is(pk.props.reason_string, "quota"));
	assert_int_equal(decode_all(empty_props, sizeof(empty_props), V5, &pk), 6);
	assert_int_equal(pk.reason, 0x10);
	/* 3.1.1 3.4: Remaining Length exactly 2. */
	assert_int_equal(decode_all(short_form, sizeof(short_form), V4, &pk), 4);
	assert_int_equal(pk.packet_id, 7);
	assert_int_equal(mqttcodec_decode(with_reason, sizeof(with_reason), V4, 0, &pk), -EPROTO);

	assert_int_equal(decode_all(pubrec, sizeof(pubrec), V5, &pk), 4);
	assert_int_equal(pk.type, MQTTCODEC_PUBREC);
	assert_int_equal(decode_all(pubrel, sizeof(pubrel), V4, &pk), 4);
	assert_int_equal(pk.type, MQTTCODEC_PUBREL);
	assert_int_equal(pk.flags, 0x02);
	assert_int_equal(decode_all(pubcomp, sizeof(pubcomp), V5, &pk), 5);
	assert_int_equal(pk.type, MQTTCODEC_PUBCOMP);
	assert_int_equal(pk.reason, 0x92);
}

static void
decodes_suback_and_unsuback(void **state)
{
	/* 5.0 3.9: Packet Identifier 10, Property Length 0, Reason Code 0x01 (Granted QoS 1). */
	static const uint8_t v5[] = {0x90, 0x04, 0x00, 0x0A, 0x00, 0x01};
	/* 5.0 3.9.2.1.2 Reason String "no", then 0x87 (Not authorized). */
	static const uint8_t v5_refused[] = {0x90, 0x09, 0x00, 0x0A, 0x05, 0x1F,
	                                     0x00, 0x02, 'n',  'o',  0x87};
	/* 3.1.1 3.9.3: return code 0x80 (Failure). */
	static const uint8_t v311[] = {0x90, 0x03, 0x00, 0x0A, 0x80};
	/* 5.0 3.11: Packet Identifier 11, Property Length 0, 0x11 (No subscription existed). */
	static const uint8_t unsuback_v5[] = {0xB0, 0x04, 0x00, 0x0B, 0x00, 0x11};
	/* 3.1.1 3.11: the Packet Identifier alone. */
	static const uint8_t unsuback_v311[] = {0xB0, 0x02, 0x00, 0x0B};
	struct mqttcodec_packet pk;

	(void)state;
	assert_int_equal(decode_all(v5, sizeof(v5), V5, &pk), 6);
	assert_int_equal(pk.type, MQTTCODEC_SUBACK);
	assert_int_equal(pk.packet_id, 10);
	assert_int_equal(pk.suback.len, 1);
	assert_int_equal(pk.suback.data[0], 0x01);
	assert_int_equal(decode_all(v5_refused, sizeof(v5_refused), V5, &pk), 11);
	assert_true(str_is(pk.props.reason_string, "no"));
	assert_int_equal(pk.suback.len, 1);
	assert_int_equal(pk.suback.data[0], 0x87);
	assert_int_equal(decode_all(v311, sizeof(v311), V4, &pk), 5);
	assert_int_equal(pk.suback.len, 1);
	assert_int_equal(pk.suback.data[0], 0x80);
	assert_int_equal(decode_all(unsuback_v5, sizeof(unsuback_v5), V5, &pk), 6);
	assert_int_equal(pk.type, MQTTCODEC_UNSUBACK);
	assert_int_equal(pk.packet_id, 11);
	assert_int_equal(pk.suback.data[0], 0x11);
	assert_int_equal(decode_all(unsuback_v311, sizeof(unsuback_v311), V4, &pk), 4);
	assert_int_equal(pk.packet_id, 11);
	assert_int_equal(pk.suback.len, 0);
}

static void
decodes_pingresp_disconnect_auth(void **state)
{
	/* 5.0 3.13 (3.1.1 3.13): 0xD0, Remaining Length 0. */
	static const uint8_t pingresp[] = {0xD0, 0x00};
	/* 5.0 3.14: 0x8B Server shutting down, Property Length 11: Reason String "shutdown"
	 * (3.14.2.2.3). Remaining Length 1 + 1 + 11 = 13. */
	static const uint8_t disc[] = {0xE0, 0x0D, 0x8B, 0x0B, 0x1F, 0x00, 0x08, 's',
	                               'h',  'u',  't',  'd',  'o',  'w',  'n'};
	/* 5.0 3.14.2.1: a lone Reason Code, 0x8E Session taken over (3.14.2.2.1: below 2 the
	 * Property Length is 0); and Remaining Length 0, Normal disconnection. */
	static const uint8_t disc_reason[] = {0xE0, 0x01, 0x8E};
	static const uint8_t disc_normal[] = {0xE0, 0x00};
	/* 5.0 3.14.2.2.5: 0x9C Use another server, Server Reference "b2:8883". */
	static const uint8_t disc_moved[] = {0xE0, 0x0C, 0x9C, 0x0A, 0x1C, 0x00, 0x07,
	                                     'b',  '2',  ':',  '8',  '8',  '8',  '3'};
	/* 5.0 3.15.2.1: AUTH with Remaining Length 0 is Success. */
	static const uint8_t auth[] = {0xF0, 0x00};
	struct mqttcodec_packet pk;

	(void)state;
	assert_int_equal(decode_all(pingresp, sizeof(pingresp), V5, &pk), 2);
	assert_int_equal(pk.type, MQTTCODEC_PINGRESP);
	assert_int_equal(decode_all(pingresp, sizeof(pingresp), V4, &pk), 2);
	assert_int_equal(pk.type, MQTTCODEC_PINGRESP);
	assert_int_equal(decode_all(disc, sizeof(disc), V5, &pk), sizeof(disc));
	assert_int_equal(pk.type, MQTTCODEC_DISCONNECT);
	assert_int_equal(pk.reason, MQTTCODEC_RC_SERVER_SHUTTING_DOWN);
	assert_true(str_is(pk.props.reason_string, "shutdown"));
	assert_int_equal(decode_all(disc_reason, sizeof(disc_reason), V5, &pk), 3);
	assert_int_equal(pk.reason, MQTTCODEC_RC_SESSION_TAKEN_OVER);
	assert_int_equal(decode_all(disc_normal, sizeof(disc_normal), V5, &pk), 2);
	assert_int_equal(pk.type, MQTTCODEC_DISCONNECT);
	assert_int_equal(pk.reason, 0);
	assert_int_equal(decode_all(disc_moved, sizeof(disc_moved), V5, &pk), sizeof(disc_moved));
	assert_int_equal(pk.reason, MQTTCODEC_RC_USE_ANOTHER_SERVER);
	assert_true(str_is(pk.props.server_reference, "b2:8883"));
	assert_int_equal(decode_all(auth, sizeof(auth), V5, &pk), 2);
	assert_int_equal(pk.type, MQTTCODEC_AUTH);
	/* 3.1.1 has neither a server DISCONNECT (3.14) nor AUTH (type 15 reserved, 2.2.1). */
	assert_int_equal(mqttcodec_decode(disc_normal, 2, V4, 0, &pk), -EPROTO);
	assert_int_equal(mqttcodec_decode(auth, 2, V4, 0, &pk), -EPROTO);
}

static void
decodes_the_other_properties(void **state)
{
	/*
	 * 5.0 3.3, QoS 0: Topic Name "t/\u00E9\u20AC\U0001F600" (1.5.4: UTF-8 of two, three
	 * and four bytes), Response Topic "r/1" (3.3.2.3.5), Correlation Data DE AD
	 * (3.3.2.3.6). Properties 6 + 5 = 11; Remaining Length 13 + 1 + 11 = 25.
	 */
	static const uint8_t publish[] = {0x30, 0x19, 0x00, 0x0B, 't',  '/',  0xC3, 0xA9, 0xE2,
	                                  0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80, 0x0B, 0x08, 0x00,
	                                  0x03, 'r',  '/',  '1',  0x09, 0x00, 0x02, 0xDE, 0xAD};
	/* 5.0 3.2.2.3: Response Information "ri" (3.2.2.3.15), Authentication Method "m"
	 * (3.2.2.3.17), Authentication Data 01 02 (3.2.2.3.18), Subscription Identifiers
	 * Available 0 (3.2.2.3.12), Shared Subscription Available 1 (3.2.2.3.13): 18. */
	static const uint8_t connack[] = {0x20, 0x15, 0x00, 0x00, 0x12, 0x1A, 0x00, 0x02,
	                                  'r',  'i',  0x15, 0x00, 0x01, 'm',  0x16, 0x00,
	                                  0x02, 0x01, 0x02, 0x29, 0x00, 0x2A, 0x01};
	/* 5.0 3.15: 0x18 Continue authentication, Authentication Method "m" (3.15.2.2.2),
	 * Authentication Data "x" (3.15.2.2.3), Reason String "r" (3.15.2.2.4): 12. */
	static const uint8_t auth[] = {0xF0, 0x0E, 0x18, 0x0C, 0x15, 0x00, 0x01, 'm',
	                               0x16, 0x00, 0x01, 'x',  0x1F, 0x00, 0x01, 'r'};
	struct mqttcodec_packet pk;

	(void)state;
	assert_int_equal(decode_all(publish, sizeof(publish), V5, &pk), sizeof(publish));
	assert_true(str_is(pk.topic, "t/\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"));
	assert_int_equal(pk.payload.len, 0);
	assert_null(pk.props.content_type.data);
	assert_int_equal(decode_all(connack, sizeof(connack), V5, &pk), sizeof(connack));
	assert_int_equal(pk.reason, 0);
	assert_int_equal(decode_all(auth, sizeof(auth), V5, &pk), sizeof(auth));
	assert_int_equal(pk.type, MQTTCODEC_AUTH);
	assert_int_equal(pk.reason, 0x18);
	assert_true(str_is(pk.props.reason_string, "r"));
}

static void
encodes_utf8_topics(void **state)
{
	/* 3.1.1 3.3 (1.5.3): the topic of decodes_the_other_properties, QoS 0, no payload. */
	static const uint8_t want[] = {0x30, 0x0D, 0x00, 0x0B, 't',  '/',  0xC3, 0xA9,
	                               0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80};
	struct mqttcodec_publish p = {.version = V4,
	                              .topic = "t/\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"};
	uint8_t out[32];
	char buf[32];

	(void)state;
	assert_encoded(mqttcodec_publish(out, LEN, &p), want);
	/* U+FFFF and U+10FFFF are noncharacters, which 1.5.4 only says SHOULD NOT be sent. */
	p.topic = "\xEF\xBF\xBF\xF4\x8F\xBF\xBF";
	assert_int_equal(mqttcodec_publish(out, LEN, &p), 11);
	assert_string_equal(mqttcodec_reason_name(0x07, NULL, 0), "unknown reason");
	assert_string_equal(mqttcodec_reason_name(-1, buf, sizeof(buf)), "reason 0xFFFFFFFF");
}

static void
decodes_one_packet_of_a_stream(void **state)
{
	uint8_t stream[sizeof(connack_v5) + sizeof(publish_v5_qos0) + 2];
	struct mqttcodec_packet pk;
	size_t at = 0;
	int n;

	(void)state;
	memcpy(stream, connack_v5, sizeof(connack_v5));
	memcpy(stream + sizeof(connack_v5), publish_v5_qos0, sizeof(publish_v5_qos0));
	stream[sizeof(stream) - 2] = 0xD0; /* PINGRESP, 5.0 3.13 */
	stream[sizeof(stream) - 1] = 0x00;
	n = mqttcodec_decode(stream, sizeof(stream), V5, 0, &pk);
	assert_int_equal(n, sizeof(connack_v5));
	assert_int_equal(pk.type, MQTTCODEC_CONNACK);
	at += (size_t)n;
	n = mqttcodec_decode(stream + at, sizeof(stream) - at, V5, 0, &pk);
	assert_int_equal(n, sizeof(publish_v5_qos0));
	assert_int_equal(pk.type, MQTTCODEC_PUBLISH);
	assert_true(str_is(pk.payload, "21.5")); /* not the PINGRESP after it */
	at += (size_t)n;
	n = mqttcodec_decode(stream + at, sizeof(stream) - at, V5, 0, &pk);
	assert_int_equal(n, 2);
	assert_int_equal(pk.type, MQTTCODEC_PINGRESP);
}

static void
refuses_packets_over_max_packet(void **state)
{
	/* 5.0 3.1.2.11.4: the Maximum Packet Size counts the whole packet; publish_v5_qos0 is
	 * 25 bytes. */
	static const uint8_t huge[] = {0x30, 0xFF, 0xFF, 0xFF, 0x7F};
	struct mqttcodec_packet pk;

	(void)state;
	assert_int_equal(mqttcodec_decode(publish_v5_qos0, 25, V5, 25, &pk), 25);
	assert_int_equal(mqttcodec_decode(publish_v5_qos0, 25, V5, 24, &pk), -EMSGSIZE);
	/* As soon as the Remaining Length is known, before the rest arrives. */
	assert_int_equal(mqttcodec_decode(publish_v5_qos0, 1, V5, 24, &pk), 0);
	assert_int_equal(mqttcodec_decode(publish_v5_qos0, 2, V5, 24, &pk), -EMSGSIZE);
	assert_int_equal(mqttcodec_decode(publish_v5_qos0, 2, V4, 24, &pk), -EMSGSIZE);
	/* 5.0 1.5.5: 268,435,455, the largest Remaining Length. */
	assert_int_equal(mqttcodec_decode(huge, sizeof(huge), V5, 1 << 20, &pk), -EMSGSIZE);
	assert_int_equal(mqttcodec_decode(huge, sizeof(huge), V5, 0, &pk), 0);
	assert_int_equal(mqttcodec_decode(huge, 4, V5, 0, &pk), 0);
}

static void
refuses_bad_arguments(void **state)
{
	struct mqttcodec_packet pk;

	(void)state;
	assert_int_equal(mqttcodec_decode(connack_v5, sizeof(connack_v5), 3, 0, &pk), -EINVAL);
	assert_int_equal(mqttcodec_decode(NULL, 1, V5, 0, &pk), -EINVAL);
	assert_int_equal(mqttcodec_decode(connack_v5, sizeof(connack_v5), V5, 0, NULL), -EINVAL);
	assert_int_equal(mqttcodec_decode(NULL, 0, V5, 0, &pk), 0);
}

/* ---- decoder: malformed packets ---- */

struct bad {
	const char *what;
	int version; /* 0: both */
	uint8_t bytes[40];
	size_t len;
};

#define BAD(what, version, ...)                                                                    \
	{                                                                                          \
		what, version, {__VA_ARGS__}, sizeof((uint8_t[]){__VA_ARGS__})                     \
	}

static const struct bad bad[] = {
        /* 5.0 2.1.3 Table 2-2 (3.1.1 2.2.2 Table 2.2): reserved flags [MQTT-2.1.3-1]. */
        BAD("CONNACK flags 0001", 0, 0x21, 0x02, 0x00, 0x00),
        BAD("PUBACK flags 1000", 0, 0x48, 0x02, 0x00, 0x01),
        BAD("PUBREL flags 0000", 0, 0x60, 0x02, 0x00, 0x01),
        BAD("SUBACK flags 0010", 0, 0x92, 0x03, 0x00, 0x01, 0x00),
        BAD("PINGRESP flags 0001", 0, 0xD1, 0x00),
        BAD("DISCONNECT flags 0010", V5, 0xE2, 0x00),
        /* 5.0 2.1.2: what only a client sends, and the reserved type 0. */
        BAD("type 0", 0, 0x00, 0x00),
        BAD("CONNECT", 0, 0x10, 0x00),
        BAD("SUBSCRIBE", 0, 0x82, 0x00),
        BAD("UNSUBSCRIBE", 0, 0xA2, 0x00),
        BAD("PINGREQ", 0, 0xC0, 0x00),
        /* 3.1.1 2.2.1: 14 is client to server only, 15 reserved. */
        BAD("3.1.1 DISCONNECT", V4, 0xE0, 0x00),
        BAD("3.1.1 AUTH", V4, 0xF0, 0x00),
        /* 5.0 1.5.5: four bytes at most, and the fewest [MQTT-1.5.5-1]; refused in 3.1.1 too. */
        BAD("5-byte VBI", 0, 0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F),
        BAD("5-byte VBI, cut", 0, 0x30, 0x80, 0x80, 0x80, 0x80),
        BAD("VBI 0 in 2 bytes", 0, 0xD0, 0x80, 0x00),
        BAD("VBI 5 in 2 bytes", 0, 0x30, 0x85, 0x00, 0x00, 0x01, 't', 0x00, 0x00),
        BAD("Property Length 0 in 2 bytes", V5, 0x40, 0x05, 0x00, 0x07, 0x10, 0x80, 0x00),
        BAD("Subscription Identifier 1 in 2 bytes", V5, 0x30, 0x07, 0x00, 0x01, 't', 0x03, 0x0B,
            0x81, 0x00),
        /* Lengths past what holds them. */
        BAD("topic past the end", 0, 0x30, 0x04, 0x00, 0x05, 't', '/'),
        BAD("packet id past the end", 0, 0x32, 0x04, 0x00, 0x01, 't', 0x00),
        BAD("Property Length past the end", V5, 0x40, 0x05, 0x00, 0x07, 0x10, 0x05, 0x1F),
        BAD("string past its Property Length", V5, 0x20, 0x08, 0x00, 0x00, 0x03, 0x12, 0x00, 0x05,
            'a', 'b'),
        BAD("integer past its Property Length", V5, 0x20, 0x07, 0x00, 0x00, 0x02, 0x27, 0x00, 0x00,
            0x01),
        BAD("user property value missing", V5, 0x40, 0x09, 0x00, 0x07, 0x00, 0x05, 0x26, 0x00, 0x01,
            'k', 0x00),
        /* Remaining Length longer than what the packet holds. */
        BAD("3.1.1 CONNACK of 3", V4, 0x20, 0x03, 0x00, 0x00, 0x00),
        BAD("3.1.1 PUBACK of 3", V4, 0x40, 0x03, 0x00, 0x01, 0x00),
        BAD("3.1.1 UNSUBACK of 3", V4, 0xB0, 0x03, 0x00, 0x01, 0x00),
        BAD("PINGRESP of 1", 0, 0xD0, 0x01, 0x00),
        BAD("bytes after DISCONNECT properties", V5, 0xE0, 0x03, 0x00, 0x00, 0x00),
        BAD("bytes after CONNACK properties", V5, 0x20, 0x04, 0x00, 0x00, 0x00, 0x00),
        /* Too short for what the packet must hold. */
        BAD("PUBACK of 1", 0, 0x40, 0x01, 0x00),
        BAD("SUBACK without codes", V4, 0x90, 0x02, 0x00, 0x01),
        BAD("SUBACK without codes", V5, 0x90, 0x03, 0x00, 0x01, 0x00),
        BAD("SUBACK with properties, without codes (3.9.3)", V5, 0x90, 0x06, 0x00, 0x01, 0x03, 0x1F,
            0x00, 0x00),
        BAD("UNSUBACK with properties, without codes (3.11.3)", V5, 0xB0, 0x06, 0x00, 0x01, 0x03,
            0x1F, 0x00, 0x00),
        BAD("CONNACK of 1", 0, 0x20, 0x01, 0x00),
        BAD("MQTT 5 CONNACK without Property Length", V5, 0x20, 0x02, 0x00, 0x00),
        BAD("AUTH reason alone (3.15.2.2.1)", V5, 0xF0, 0x01, 0x18),
        /* 5.0 2.2.2.2: "more than once" is a Protocol Error. */
        BAD("Receive Maximum twice", V5, 0x20, 0x09, 0x00, 0x00, 0x06, 0x21, 0x00, 0x0A, 0x21, 0x00,
            0x0A),
        BAD("Content Type twice", V5, 0x30, 0x0C, 0x00, 0x01, 't', 0x08, 0x03, 0x00, 0x01, 'a',
            0x03, 0x00, 0x01, 'b'),
        BAD("Reason String twice", V5, 0xE0, 0x0A, 0x80, 0x08, 0x1F, 0x00, 0x01, 'a', 0x1F, 0x00,
            0x01, 'b'),
        /* 5.0 2.2.2.2: not valid for the packet type is a Malformed Packet. */
        BAD("Content Type in CONNACK", V5, 0x20, 0x07, 0x00, 0x00, 0x04, 0x03, 0x00, 0x01, 'a'),
        BAD("Session Expiry in PUBLISH", V5, 0x30, 0x09, 0x00, 0x01, 't', 0x05, 0x11, 0x00, 0x00,
            0x00, 0x01),
        BAD("Server Reference in PUBACK", V5, 0x40, 0x08, 0x00, 0x07, 0x80, 0x04, 0x1C, 0x00, 0x01,
            'b'),
        BAD("Session Expiry in a server's DISCONNECT", V5, 0xE0, 0x07, 0x80, 0x05, 0x11, 0x00, 0x00,
            0x00, 0x3C),
        BAD("Request Problem Information in CONNACK", V5, 0x20, 0x05, 0x00, 0x00, 0x02, 0x17, 0x01),
        BAD("Will Delay Interval in PUBLISH", V5, 0x30, 0x09, 0x00, 0x01, 't', 0x05, 0x18, 0x00,
            0x00, 0x00, 0x01),
        BAD("unknown property 0x05", V5, 0x20, 0x05, 0x00, 0x00, 0x02, 0x05, 0x00),
        BAD("property id 0x80", V5, 0x20, 0x05, 0x00, 0x00, 0x02, 0x80, 0x01),
        /* 5.0 3.3.2.3.4: no Topic Alias when the client allowed none [MQTT-3.3.2-10]. */
        BAD("Topic Alias", V5, 0x30, 0x07, 0x00, 0x01, 't', 0x03, 0x23, 0x00, 0x01),
        BAD("empty topic with Topic Alias", V5, 0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01),
        /* 5.0 4.7.3 [MQTT-4.7.3-1] (3.1.1 4.7.3): at least one character. */
        BAD("empty topic", V5, 0x30, 0x03, 0x00, 0x00, 0x00),
        BAD("empty topic", V4, 0x30, 0x02, 0x00, 0x00),
        /* 5.0 1.5.4 [MQTT-1.5.4-1, -2]: ill-formed UTF-8 and U+0000. */
        BAD("U+0000 in topic", 0, 0x30, 0x05, 0x00, 0x03, 't', 0x00, '1'),
        BAD("overlong '/' in topic", 0, 0x30, 0x05, 0x00, 0x03, 't', 0xC0, 0xAF),
        BAD("overlong 3-byte in topic", 0, 0x30, 0x05, 0x00, 0x03, 0xE0, 0x80, 0xAF),
        BAD("surrogate in topic", 0, 0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80),
        BAD("above U+10FFFF in topic", 0, 0x30, 0x06, 0x00, 0x04, 0xF4, 0x90, 0x80, 0x80),
        BAD("F5 in topic", 0, 0x30, 0x03, 0x00, 0x01, 0xF5),
        BAD("lone continuation in topic", 0, 0x30, 0x03, 0x00, 0x01, 0x80),
        BAD("cut sequence in topic", 0, 0x30, 0x04, 0x00, 0x02, 0xE2, 0x82),
        BAD("bad continuation in topic", 0, 0x30, 0x05, 0x00, 0x03, 0xE2, 0x28, 0xA1),
        BAD("surrogate in Reason String", V5, 0xE0, 0x08, 0x80, 0x06, 0x1F, 0x00, 0x03, 0xED, 0xBF,
            0xBF),
        BAD("U+0000 in User Property", V5, 0x40, 0x0B, 0x00, 0x07, 0x00, 0x07, 0x26, 0x00, 0x01,
            0x00, 0x00, 0x01, 'v'),
        BAD("overlong in Assigned Client Identifier", V5, 0x20, 0x08, 0x00, 0x00, 0x05, 0x12, 0x00,
            0x02, 0xC1, 0x81),
        /* 5.0 3.3.2.1 [MQTT-3.3.2-2], 3.3.2.3.5 [MQTT-3.3.2-14]: no wildcards. */
        BAD("'+' in topic", 0, 0x30, 0x05, 0x00, 0x03, 't', '/', '+'),
        BAD("'#' in topic", 0, 0x30, 0x05, 0x00, 0x03, 't', '/', '#'),
        BAD("'#' in Response Topic", V5, 0x30, 0x08, 0x00, 0x01, 't', 0x04, 0x08, 0x00, 0x01, '#'),
        /* 5.0 3.3.1.2 [MQTT-3.3.1-4]: QoS 3; 3.3.1.1 [MQTT-3.3.1-2]: DUP with QoS 0. */
        BAD("QoS 3", 0, 0x36, 0x05, 0x00, 0x01, 't', 0x00, 0x01),
        BAD("DUP with QoS 0", 0, 0x38, 0x03, 0x00, 0x01, 't'),
        /* 5.0 2.2.1 [MQTT-2.2.1-3]: a non-zero Packet Identifier. */
        BAD("PUBLISH packet id 0", 0, 0x32, 0x06, 0x00, 0x01, 't', 0x00, 0x00, 0x00),
        BAD("PUBACK packet id 0", 0, 0x40, 0x02, 0x00, 0x00),
        BAD("PUBREL packet id 0", 0, 0x62, 0x02, 0x00, 0x00),
        BAD("SUBACK packet id 0", V4, 0x90, 0x03, 0x00, 0x00, 0x00),
        BAD("UNSUBACK packet id 0", V4, 0xB0, 0x02, 0x00, 0x00),
        /* Values a property may not take. */
        BAD("Receive Maximum 0 (3.2.2.3.3)", V5, 0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x00),
        BAD("Maximum Packet Size 0 (3.2.2.3.6)", V5, 0x20, 0x08, 0x00, 0x00, 0x05, 0x27, 0x00, 0x00,
            0x00, 0x00),
        BAD("Maximum QoS 2 (3.2.2.3.4)", V5, 0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02),
        BAD("Retain Available 2 (3.2.2.3.5)", V5, 0x20, 0x05, 0x00, 0x00, 0x02, 0x25, 0x02),
        BAD("Payload Format Indicator 2 (3.3.2.3.2)", V5, 0x30, 0x06, 0x00, 0x01, 't', 0x02, 0x01,
            0x02),
        BAD("Subscription Identifier 0 (3.3.2.3.8)", V5, 0x30, 0x06, 0x00, 0x01, 't', 0x02, 0x0B,
            0x00),
        /* 5.0 2.4: reason codes outside the packet's table. */
        BAD("CONNACK reason 0x04", V5, 0x20, 0x03, 0x00, 0x04, 0x00),
        BAD("PUBACK reason 0x04", V5, 0x40, 0x03, 0x00, 0x07, 0x04),
        BAD("PUBREL reason 0x10", V5, 0x62, 0x03, 0x00, 0x07, 0x10),
        BAD("SUBACK reason 0x03", V5, 0x90, 0x04, 0x00, 0x01, 0x00, 0x03),
        BAD("3.1.1 SUBACK 0x87 (3.9.3)", V4, 0x90, 0x03, 0x00, 0x01, 0x87),
        BAD("DISCONNECT 0x04, the client's", V5, 0xE0, 0x01, 0x04),
        BAD("AUTH reason 0x80", V5, 0xF0, 0x02, 0x80, 0x00),
        /* 5.0 3.2.2.1.1 [MQTT-3.2.2-6], 3.1.1 3.2.2.2 [MQTT-3.2.2-4]. */
        BAD("Session Present with a refusal", V5, 0x20, 0x03, 0x01, 0x80, 0x00),
        BAD("Session Present with a refusal", V4, 0x20, 0x02, 0x01, 0x05),
        /* 5.0 3.2.2.1 [MQTT-3.2.2-1]: reserved acknowledge flags. */
        BAD("CONNACK flags 0x02", V5, 0x20, 0x03, 0x02, 0x00, 0x00),
        BAD("CONNACK flags 0x02", V4, 0x20, 0x02, 0x02, 0x00),
};

static void
refuses_malformed_packets(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const struct bad *b = &bad[i];

		for (int v = V4; v <= V5; v++) {
			struct mqttcodec_packet pk;
			int r;

			if (b->version && b->version != v)
				continue;
			r = mqttcodec_decode(b->bytes, b->len, v, 0, &pk);
			if (r != -EPROTO)
				fail_msg("%s (version %d): %d, not -EPROTO", b->what, v, r);
			/* No prefix is a packet either. */
			for (size_t k = 0; k < b->len; k++) {
				r = mqttcodec_decode(b->bytes, k, v, 0, &pk);
				if (r != 0 && r != -EPROTO)
					fail_msg("%s (version %d), %zu bytes: %d", b->what, v, k,
					         r);
			}
		}
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(connect_v5_minimal),
	        cmocka_unit_test(connect_v5_full),
	        cmocka_unit_test(connect_v311),
	        cmocka_unit_test(connect_refuses_what_cannot_be_sent),
	        cmocka_unit_test(connect_reports_its_size_first),
	        cmocka_unit_test(publish_v5),
	        cmocka_unit_test(publish_v311),
	        cmocka_unit_test(publish_size_follows_the_remaining_length),
	        cmocka_unit_test(publish_refuses_what_cannot_be_sent),
	        cmocka_unit_test(puback),
	        cmocka_unit_test(subscribe),
	        cmocka_unit_test(pingreq_and_disconnect),
	        cmocka_unit_test(reason_names),
	        cmocka_unit_test(decodes_connack_v5),
	        cmocka_unit_test(decodes_connack_refusals),
	        cmocka_unit_test(decodes_publish_v5),
	        cmocka_unit_test(decodes_publish_v311),
	        cmocka_unit_test(decodes_acks),
	        cmocka_unit_test(decodes_suback_and_unsuback),
	        cmocka_unit_test(decodes_pingresp_disconnect_auth),
	        cmocka_unit_test(decodes_the_other_properties),
	        cmocka_unit_test(encodes_utf8_topics),
	        cmocka_unit_test(decodes_one_packet_of_a_stream),
	        cmocka_unit_test(refuses_packets_over_max_packet),
	        cmocka_unit_test(refuses_bad_arguments),
	        cmocka_unit_test(refuses_malformed_packets),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
