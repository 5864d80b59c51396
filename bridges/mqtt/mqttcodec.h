/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_MQTTCODEC_H
#define GW_MQTTCODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * MQTT 5.0 and 3.1.1 packets as bytes, both ways, and nothing else: no sockets, no state, no
 * allocation. The broker is across the internet, so the decoder treats every byte as hostile:
 * it checks every length against the buffer and the spec's rules for the packets a client may
 * receive, and is small enough to fuzz through this API (tests/fuzz/fuzz-mqttcodec.c).
 *
 * Encoders write into out[0..cap) and return the packet's full length, like snprintf: a
 * result larger than cap means nothing usable was written and the caller should retry with a
 * buffer of that size. They return -EINVAL for values the spec cannot carry (a string over
 * 65,535 bytes, a packet over 268,435,455 bytes, a packet id of 0) or forbids a client to send
 * (ill-formed UTF-8, a topic name with wildcards, a reason code not in the packet's table).
 * out may be NULL when cap is 0, to learn the size.
 */

#define MQTTCODEC_V311 4 /* protocol level (MQTT 3.1.1 section 3.1.2.2) */
#define MQTTCODEC_V5   5 /* protocol level (MQTT 5.0 section 3.1.2.2) */

/* The largest Remaining Length four bytes can say (MQTT 5.0 section 1.5.5). */
#define MQTTCODEC_MAX_REMAINING 268435455u

enum mqttcodec_type {
	MQTTCODEC_CONNECT = 1,
	MQTTCODEC_CONNACK = 2,
	MQTTCODEC_PUBLISH = 3,
	MQTTCODEC_PUBACK = 4,
	MQTTCODEC_PUBREC = 5,
	MQTTCODEC_PUBREL = 6,
	MQTTCODEC_PUBCOMP = 7,
	MQTTCODEC_SUBSCRIBE = 8,
	MQTTCODEC_SUBACK = 9,
	MQTTCODEC_UNSUBSCRIBE = 10,
	MQTTCODEC_UNSUBACK = 11,
	MQTTCODEC_PINGREQ = 12,
	MQTTCODEC_PINGRESP = 13,
	MQTTCODEC_DISCONNECT = 14,
	MQTTCODEC_AUTH = 15,
};

/* Reason codes the gateway acts on (MQTT 5.0 section 2.4); the others are shown as numbers. */
enum {
	MQTTCODEC_RC_SUCCESS = 0x00,
	MQTTCODEC_RC_DISCONNECT_WITH_WILL = 0x04,
	MQTTCODEC_RC_NO_MATCHING_SUBSCRIBERS = 0x10,
	MQTTCODEC_RC_UNSPECIFIED = 0x80,
	MQTTCODEC_RC_MALFORMED = 0x81,
	MQTTCODEC_RC_PROTOCOL_ERROR = 0x82,
	MQTTCODEC_RC_IMPLEMENTATION_SPECIFIC = 0x83,
	MQTTCODEC_RC_UNSUPPORTED_VERSION = 0x84,
	MQTTCODEC_RC_CLIENT_ID_NOT_VALID = 0x85,
	MQTTCODEC_RC_BAD_USER_OR_PASSWORD = 0x86,
	MQTTCODEC_RC_NOT_AUTHORIZED = 0x87,
	MQTTCODEC_RC_SERVER_UNAVAILABLE = 0x88,
	MQTTCODEC_RC_SERVER_BUSY = 0x89,
	MQTTCODEC_RC_BANNED = 0x8A,
	MQTTCODEC_RC_SERVER_SHUTTING_DOWN = 0x8B,
	MQTTCODEC_RC_BAD_AUTH_METHOD = 0x8C,
	MQTTCODEC_RC_KEEP_ALIVE_TIMEOUT = 0x8D,
	MQTTCODEC_RC_SESSION_TAKEN_OVER = 0x8E,
	MQTTCODEC_RC_TOPIC_NAME_INVALID = 0x90,
	MQTTCODEC_RC_PACKET_TOO_LARGE = 0x95,
	MQTTCODEC_RC_QUOTA_EXCEEDED = 0x97,
	MQTTCODEC_RC_PAYLOAD_FORMAT_INVALID = 0x99,
	MQTTCODEC_RC_QOS_NOT_SUPPORTED = 0x9B,
	MQTTCODEC_RC_USE_ANOTHER_SERVER = 0x9C,
	MQTTCODEC_RC_SERVER_MOVED = 0x9D,
	MQTTCODEC_RC_CONNECTION_RATE_EXCEEDED = 0x9F,
};

/* The spec's name of a reason code ("Not authorized"), or "reason 0xNN" in buf. */
const char *mqttcodec_reason_name(int reason, char *buf, size_t len);

/*
 * A 3.1.1 CONNACK return code (MQTT 3.1.1 section 3.2.2.3, 1 to 5) as the MQTT 5 reason code
 * it became (0x84, 0x85, 0x88, 0x86, 0x87), so that callers judge both versions alike; 0 stays
 * 0 and anything else becomes 0x80.
 */
int mqttcodec_reason_from_311(int return_code);

/* A length-counted byte string that points into a caller's buffer; not NUL-terminated. */
struct mqttcodec_str {
	const uint8_t *data;
	size_t len;
};

/* ---- what the client sends ---- */

struct mqttcodec_connect {
	int version;              /* MQTTCODEC_V5 or MQTTCODEC_V311 */
	const char *client_id;    /* may be "" (MQTT 5: the broker assigns one) */
	bool clean_start;         /* 3.1.1: Clean Session */
	uint16_t keepalive;       /* seconds, 0 for none */
	const char *username;     /* NULL: none; the identity is the TLS certificate's */
	uint32_t session_expiry;  /* MQTT 5 only; 0 is not sent (the default) */
	uint16_t receive_maximum; /* MQTT 5 only; 0 is not sent (65,535 by default) */
	uint32_t maximum_packet;  /* MQTT 5 only; 0 is not sent (no limit) */
	/* The will: published by the broker when the session dies without a DISCONNECT. */
	const char *will_topic; /* NULL: no will */
	const void *will_payload;
	size_t will_len;
	int will_qos;
	bool will_retain;
};
/* 3.1.1 also refuses an empty client_id without clean_start (3.1.1 section 3.1.3.1). */
int mqttcodec_connect(uint8_t *out, size_t cap, const struct mqttcodec_connect *c);

struct mqttcodec_publish {
	int version;
	const char *topic;
	const void *payload;
	size_t len;
	int qos; /* 0 or 1 */
	bool retain;
	bool dup;                 /* a resend of a QoS 1 publish (MQTT 5.0 section 3.3.1.1) */
	uint16_t packet_id;       /* QoS 1 only; not 0 */
	const char *content_type; /* MQTT 5 only; NULL: none. Not sent with 3.1.1. */
};
int mqttcodec_publish(uint8_t *out, size_t cap, const struct mqttcodec_publish *p);
/*
 * The length of the PUBLISH p would encode to, for the check against the broker's Maximum
 * Packet Size before anything is sent; 0 if it cannot be encoded at all.
 */
size_t mqttcodec_publish_size(const struct mqttcodec_publish *p);

/*
 * PUBACK for a QoS 1 message from the broker; MQTT 5 with reason 0 is the 2-byte short form.
 * reason must be a PUBACK reason code (MQTT 5.0 section 3.4.2.1); 3.1.1 does not send it.
 */
int mqttcodec_puback(uint8_t *out, size_t cap, int version, uint16_t packet_id, int reason);

/* SUBSCRIBE to one filter at qos (MQTT 5: No Local off, Retain As Published off, retain
 * handling 0). */
int mqttcodec_subscribe(uint8_t *out, size_t cap, int version, uint16_t packet_id,
                        const char *filter, int qos);

int mqttcodec_pingreq(uint8_t *out, size_t cap);

/*
 * DISCONNECT; MQTT 5 with reason 0 is the 2-byte short form. reason must be one a client may
 * send (MQTT 5.0 section 3.14.2.1). 3.1.1 has no reason and always discards the will: to have
 * it published, close the connection without a DISCONNECT.
 */
int mqttcodec_disconnect(uint8_t *out, size_t cap, int version, int reason);

/* ---- what the client receives ---- */

/* Properties the client reads (MQTT 5.0 section 2.2.2.2); a field absent is 0/NULL/false. */
struct mqttcodec_props {
	bool has_session_expiry;
	uint32_t session_expiry;
	bool has_receive_maximum;
	uint16_t receive_maximum;
	bool has_maximum_qos;
	uint8_t maximum_qos;
	bool has_retain_available;
	bool retain_available;
	uint32_t maximum_packet; /* 0: none given */
	struct mqttcodec_str assigned_client_id;
	bool has_server_keepalive;
	uint16_t server_keepalive;
	struct mqttcodec_str reason_string;
	struct mqttcodec_str server_reference;
	struct mqttcodec_str content_type;
	bool has_payload_format;
	uint8_t payload_format;
	bool has_message_expiry;
	uint32_t message_expiry;
};

struct mqttcodec_packet {
	enum mqttcodec_type type;
	uint8_t flags; /* the low nibble of the fixed header */
	/* CONNACK */
	bool session_present;
	/* CONNACK (MQTT 5 reason, or 3.1.1 return code turned into it), PUBACK, PUBREC, PUBREL,
	 * PUBCOMP, DISCONNECT, AUTH; 0 where the packet leaves it out */
	int reason;
	/* PUBLISH (QoS 1 and 2), PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK */
	uint16_t packet_id;
	/* PUBLISH */
	int qos;
	bool retain;
	bool dup;
	struct mqttcodec_str topic;
	struct mqttcodec_str payload;
	/* SUBACK: its reason codes (3.1.1: return codes, 0x80 a failure); MQTT 5 UNSUBACK: its
	 * reason codes (3.1.1 UNSUBACK has none) */
	struct mqttcodec_str suback;
	struct mqttcodec_props props;
};

/*
 * Decodes the packet at the start of buf[0..len) for a session of the given version:
 *   > 0   the packet's whole length; *out describes it (pointing into buf);
 *   0     buf holds only the start of a packet: read more;
 *   -EMSGSIZE  its Remaining Length says it is larger than max_packet (0: no limit), which
 *              the client announced in CONNECT (MQTT 5.0 section 3.1.2.11.4);
 *   -EPROTO    malformed or not allowed for a client to receive (MQTT 5.0 section 4.13:
 *              close the connection, with DISCONNECT 0x81/0x82 for MQTT 5);
 *   -EINVAL    out NULL, buf NULL with len > 0, or a version other than the two.
 * Only packets a server sends are accepted: CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP,
 * SUBACK, UNSUBACK, PINGRESP, DISCONNECT (MQTT 5), AUTH (MQTT 5). Reserved flag bits, QoS 3, a
 * QoS 0 PUBLISH with DUP, a PUBLISH topic with wildcards or invalid UTF-8, a property twice or
 * in the wrong packet, a variable byte integer over four bytes or not minimally needed are all
 * -EPROTO. A topic alias is -EPROTO too: the client never allows one (Topic Alias Maximum 0).
 * So is a reason code outside the packet's table (MQTT 5.0 section 2.4: a sender "MUST use
 * one of" them). The decoder keeps no state: an AUTH, or a CONNACK with an Authentication
 * Method, is well-formed here but a Protocol Error for a client that sent no Authentication
 * Method, which is the caller's to judge.
 * A 3.1.1 broker answers an MQTT 5 CONNECT with a 3.1.1 CONNACK, return code 1 (3.1.1 section
 * 3.1.2.2); decoded as MQTT 5 that is a CONNACK with reason 0x84 (Unsupported Protocol
 * Version), so that the caller can retry with 3.1.1.
 */
int mqttcodec_decode(const uint8_t *buf, size_t len, int version, uint32_t max_packet,
                     struct mqttcodec_packet *out);

#endif
