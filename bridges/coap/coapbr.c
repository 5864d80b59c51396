/* SPDX-License-Identifier: Apache-2.0 */
#include "coapbr.h"
#include "coapio.h"
#include "conf.h"
#include "device.h"
#include "keystore.h"
#include "log.h"
#include "loop.h"
#include "upload.h"
#include "xalloc.h"

#include <arpa/inet.h>
#include <coap3/coap.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum request_state {
	REQ_IN_HANDLER, /* handle_uplink() is running and answers it itself */
	REQ_HELD,       /* a CON not acknowledged yet: its answer is to ride on the ACK */
	REQ_DEFERRED,   /* acknowledged; coapbr_complete() sends the separate response */
	REQ_ORPHAN,     /* its session ended: nothing is sent, it is only freed */
};

/*
 * RFC 7252 section 4.5: a retransmitted CON must not be acted on twice. A sensor has one CON
 * outstanding at a time (NSTART 1, section 4.7), so the last few answers per session are
 * enough to repeat the right one; libcoap itself repeats only the empty ACK of an exchange
 * still pending.
 */
#define SEEN_PER_SENSOR 8

struct seen {
	coap_mid_t mid; /* COAP_INVALID_MID: unused */
	enum sensor_status status;
	unsigned arg;
};

/*
 * Notifications a sensor may have outstanding (sent, not known to have failed). libcoap
 * reports no ACK, so one older than MAX_TRANSMIT_WAIT (RFC 7252 4.8.2: 93 s) counts as
 * taken; more wait in the queue until older ones have had that time.
 */
#define SENT_PER_SENSOR   16
#define MAX_TRANSMIT_WAIT 93

/*
 * A sensor's DTLS session, from its PSK callback until libcoap frees it
 * (COAP_EVENT_SERVER_SESSION_DEL). Held as the session's app data. The session itself is found
 * again by its address when needed, so that a pointer libcoap has freed is never used.
 */
struct sensor {
	struct device *dev; /* a reference: its id stays readable after the device's removal */
	/* The PSK identity it shook hands with: a rotation may retire it while it is up. */
	uint8_t identity[KEYSTORE_IDENTITY_MAX];
	size_t identity_len;
	coap_address_t remote;
	int ifindex;
	struct seen seen[SEEN_PER_SENSOR];
	unsigned seen_next;
	struct upload *upload;
	/*
	 * Its requests waiting for the router (held or deferred): a CON seen again is looked for
	 * among the gateway's pending requests only when this session has some, so that a
	 * reading costs the same with 1,000 sensors waiting as with one.
	 */
	unsigned deferred;
	bool connected; /* the handshake completed */
	uint64_t hs_ms; /* when its handshake began, on the loop's clock */
	/*
	 * Its DTLS session ended (closed by either side, or failed) and waits for libcoap to free
	 * it. Nothing more goes to it: libcoap would take a message sent there for the start of
	 * a DTLS handshake of its own, as a client, towards the sensor's port.
	 */
	bool closed;
	bool counted; /* as a handshake that failed */
	/* Its observation of the command resource (RFC 7641): notifications carry this token. */
	bool observing;
	uint8_t obs_token[8];
	size_t obs_token_len;
	/*
	 * Notifications sent and not known to have failed, by message ID: a failed one goes back
	 * to its place in the queue (on_nack). The oldest entry is reused: libcoap gives up on a
	 * CON after about 45 s (RFC 7252's MAX_TRANSMIT_WAIT), long before 16 more are sent.
	 */
	struct {
		coap_mid_t mid;
		uint32_t seq;
		time_t expires;
		time_t at; /* CLOCK_MONOTONIC seconds it was sent */
	} sent[SENT_PER_SENSOR];
	unsigned sent_next;
	/* The command its last GET took, repeated if that CON comes again. */
	coap_mid_t last_get_mid;
	struct sensor_command *last_get;
	/*
	 * libcoap announces a session's end before it fails the notifications still queued on
	 * it; the sensor outlives it until then (see on_nack), on the graveyard list.
	 */
	bool dead;
	struct sensor *prev, *next;
};

/*
 * An uplink request waiting for the router. A held or deferred one holds a reference on its
 * session (so the pointer stays valid) and what its answer needs: on the ACK (RFC 7252 section
 * 5.2.1) or as a separate response (section 5.2.2).
 * libcoap's own async requests are not used: libcoap answers one by dispatching a copy of the
 * request again, through its Block1 handling and to whatever resource is at that path by then,
 * and so could answer it without us, leaving the request pending and its async freed.
 */
struct sensor_request {
	struct coapbr *br;
	coap_session_t *session;
	enum request_state state;
	bool done;
	enum sensor_status status;
	unsigned max_age;
	coap_mid_t mid; /* the request's, for struct seen and its retransmissions */
	bool con;
	uint8_t token[8];
	size_t token_len;
	bool has_block1; /* the last block of an upload: the answer echoes its Block1 */
	coap_block_t block1;
	uint64_t ack_due; /* REQ_HELD: when the empty ACK goes out if no answer came */
	struct sensor_request *prev, *next;
	struct sensor_request *held_prev, *held_next; /* REQ_HELD: on the held list */
};

/*
 * Handshakes of a known identity with a wrong key are logged once per identity per
 * MISMATCH_LOG_INTERVAL seconds, with how many more there were since: a sensor retrying
 * with a stale key (or someone guessing) must not flood the log, and the operator must still
 * see it. A slot per identity's hash; two identities sharing one may each log more often.
 */
#define MISMATCH_SLOTS        64
#define MISMATCH_LOG_INTERVAL 60

struct mismatch {
	const char *device; /* the keystore's string, compared by address */
	time_t logged;
	unsigned more; /* since logged, not logged */
};

struct coapbr {
	struct gw_loop *loop;
	const struct keystore *ks;
	coap_context_t *ctx;
	int fd;
	const struct sensor_ops *ops;
	void *data;
	size_t max_payload;
	bool commands; /* a command resource: downlink.topic is set */
	/* RFC 7641 section 3.4: each notification a larger Observe value than the last. */
	uint32_t observe;
	/* Pushes queued commands to observers after libcoap has sent what it is answering. */
	struct gw_timer *push;
	char *commands_path;
	coap_resource_t *commands_resource; /* the one at commands_path */
	struct sensor *graveyard;
	/* libcoap copies the key it is handed; this is where it is handed from. */
	uint8_t psk[KEYSTORE_PSK_MAX];
	coap_bin_const_t psk_bin;
	/* Uplinks awaiting their outcome, so that coapbr_free can release them. */
	struct sensor_request *requests;
	/*
	 * The REQ_HELD ones, oldest first: all wait the same piggyback_wait, so the first is due
	 * first (a reload that shortens the wait brings the older ones forward to keep it so).
	 */
	struct sensor_request *held, *held_last;
	struct gw_timer *ack_timer; /* at the first held request's ack_due */
	unsigned piggyback_wait;    /* sensors.piggyback_wait, ms */
	struct sensor *sensors;
	struct gw_timer *sweep;
	size_t max_sessions;     /* sensors.max_sessions */
	unsigned max_handshakes; /* libcoap's limit, as last set */
	/* Every resource made, for this config's paths or an earlier one's (see find_resource()).
	 */
	coap_resource_t **resources;
	size_t nresources;
	struct coapbr_stats st;
	/* The session psk_for_identity() refused last: its DTLS error is counted already. */
	const coap_session_t *refused;
	struct mismatch mismatches[MISMATCH_SLOTS];
	/*
	 * In coapbr_free(): libcoap fails the notifications still outstanding as it frees the
	 * context, and on_nack() must not queue them again for a sensor that is gone.
	 */
	bool closing;
};

static const char *
session_device(const coap_session_t *session)
{
	const struct sensor *sn = coap_session_get_app_data(session);

	return sn ? sn->dev->id : NULL;
}

static void
sensor_unlink(struct coapbr *br, struct sensor *sn)
{
	if (sn->prev)
		sn->prev->next = sn->next;
	else
		br->sensors = sn->next;
	if (sn->next)
		sn->next->prev = sn->prev;
}

/*
 * Whether sn observes its device's commands. The device counts its observers (device.h): an
 * on-demand upstream session stays up while one observes.
 */
static void
set_observing(struct sensor *sn, bool on)
{
	if (sn->observing == on)
		return;
	sn->observing = on;
	if (sn->dev)
		sn->dev->observers += on ? 1u : (unsigned)-1;
}

/*
 * A session's exchanges start afresh: message IDs, uploads and observations of an earlier
 * one mean nothing now (RFC 7252 section 9.1.1).
 */
static void
sensor_reset(struct sensor *sn)
{
	upload_free(sn->upload);
	sn->upload = NULL;
	free(sn->last_get);
	sn->last_get = NULL;
	sn->last_get_mid = COAP_INVALID_MID;
	sn->hs_ms = gw_now_ms();
	set_observing(sn, false);
	for (size_t i = 0; i < SEEN_PER_SENSOR; i++)
		sn->seen[i].mid = COAP_INVALID_MID;
	for (size_t i = 0; i < SENT_PER_SENSOR; i++)
		sn->sent[i].mid = COAP_INVALID_MID;
}

static void
sensor_free(struct sensor *sn)
{
	set_observing(sn, false);
	upload_free(sn->upload);
	free(sn->last_get);
	device_unref(sn->dev);
	free(sn);
}

static void
bury_the_dead(struct coapbr *br)
{
	while (br->graveyard) {
		struct sensor *sn = br->graveyard;

		br->graveyard = sn->next;
		sensor_free(sn);
	}
}

static void
on_coap_log(coap_log_t level, const char *message)
{
	char line[512];
	size_t n = strlen(message);

	while (n > 0 && isspace((unsigned char)message[n - 1]))
		n--;
	snprintf(line, sizeof(line), "%.*s", (int)n, message);
	/* A read ahead that found nothing: expected, not worth a warning. */
	if (coapio_reading_ahead() && level == LOG_WARNING &&
	    (strstr(line, "Resource temporarily unavailable") || strstr(line, ": read failed")))
		return;
	if (level <= LOG_WARNING)
		log_warnx("coap: %s", line);
	else
		log_debug("coap: %s", line);
}

static const char *
remote_str(const coap_session_t *session, char *buf, size_t len)
{
	if (coap_print_addr(coap_session_get_addr_remote(session), (uint8_t *)buf, len) == 0)
		snprintf(buf, len, "(unknown address)");
	return buf;
}

/* PSK identities are chosen by whoever sends the ClientHello: print them defensively. */
static const char *
identity_str(const uint8_t *id, size_t len, char *buf, size_t buflen)
{
	size_t n = 0;

	for (size_t i = 0; i < len && n + 5 < buflen; i++) {
		if (isprint(id[i]) && id[i] != '\\' && id[i] != '"')
			buf[n++] = (char)id[i];
		else
			n += (size_t)snprintf(buf + n, buflen - n, "\\x%02x", id[i]);
	}
	buf[n] = '\0';
	return buf;
}

/*
 * libcoap's per-identity PSK lookup. Returning NULL fails the handshake: no default key is
 * configured, so an unknown identity can never fall back to one (DESIGN.md 2).
 */
static const coap_bin_const_t *
psk_for_identity(coap_bin_const_t *identity, coap_session_t *session, void *arg)
{
	struct coapbr *br = arg;
	struct device *dev;
	size_t keylen;
	char addr[INET6_ADDRSTRLEN + 8], idbuf[160];
	int r;

	r = identity ? keystore_psk_lookup(br->ks, identity->s, identity->length, &dev, br->psk,
	                                   &keylen)
	             : -ENOENT;
	if (r == -EPERM) {
		br->st.refused_inactive++;
		br->refused = session;
		log_warnx("%s: sensor %s refused: the device is not active (gwctl device show %s)",
		          dev->id, remote_str(session, addr, sizeof(addr)), dev->id);
		return NULL;
	}
	if (r < 0) {
		br->st.refused_unknown++;
		br->refused = session;
		log_warnx(
		        "sensor %s: unknown PSK identity \"%s\": handshake refused",
		        remote_str(session, addr, sizeof(addr)),
		        identity ? identity_str(identity->s, identity->length, idbuf, sizeof(idbuf))
		                 : "");
		return NULL;
	}
	struct sensor *sn = coap_session_get_app_data(session);

	if (!sn) {
		sn = xcalloc(1, sizeof(*sn));
		sn->remote = *coap_session_get_addr_remote(session);
		sn->ifindex = coap_session_get_ifindex(session);
		sn->next = br->sensors;
		if (br->sensors)
			br->sensors->prev = sn;
		br->sensors = sn;
		coap_session_set_app_data(session, sn);
		/*
		 * libcoap parses a datagram into a PDU no larger than the session's MTU (1152 by
		 * default, RFC 7252 section 4.6) and answers a larger one with a Reset of message
		 * ID 0, so that a sensor never hears 4.13 for a payload past sensors.max_payload.
		 * Raised to what libcoap reads of a datagram at all (COAP_RXBUFFER_SIZE, 1472
		 * bytes: an Ethernet MTU's UDP payload); a longer datagram is cut there and fails
		 * its DTLS record check unanswered. Answers larger than 1152 bytes can go in one
		 * datagram.
		 */
		coap_session_set_mtu(session, COAP_RXBUFFER_SIZE);
		sensor_reset(sn);
	} else if (sn->closed) {
		/* A new session from the address of one that ended: libcoap reuses the object. */
		sensor_reset(sn);
		sn->connected = false;
		sn->counted = false;
		sn->closed = false;
	} else if (sn->identity_len != identity->length ||
	           memcmp(sn->identity, identity->s, identity->length) != 0) {
		/*
		 * The same session renegotiated under another identity. (Under the same one it
		 * goes on: a CON retransmitted across it is still the same exchange.)
		 */
		sensor_reset(sn);
	}
	if (sn->dev != dev) {
		set_observing(sn, false);
		device_unref(sn->dev);
		sn->dev = device_ref(dev);
	}
	sn->identity_len = identity->length;
	memcpy(sn->identity, identity->s, identity->length);
	br->psk_bin.s = br->psk;
	br->psk_bin.length = keylen;
	return &br->psk_bin;
}

/* Logs a wrong key for device (never the key), at most once per interval per identity. */
static void
log_mismatch(struct coapbr *br, const char *device, const coap_session_t *session)
{
	size_t h = 0;
	struct mismatch *m;
	char addr[INET6_ADDRSTRLEN + 8], more[64] = "";
	time_t now = time(NULL);

	for (const char *c = device; *c; c++)
		h = h * 31 + (unsigned char)*c;
	m = &br->mismatches[h % MISMATCH_SLOTS];
	if (m->device == device && now - m->logged < MISMATCH_LOG_INTERVAL) {
		m->more++;
		return;
	}
	if (m->device == device && m->more)
		snprintf(more, sizeof(more), " (and %u more times in the last %lld s)", m->more,
		         (long long)(now - m->logged));
	log_warnx("%s: DTLS handshake from %s did not finish: the sensor's PSK does not match "
	          "the keystore's (re-pair the sensor: gwctl device pair %s)%s",
	          device, remote_str(session, addr, sizeof(addr)), device, more);
	*m = (struct mismatch){.device = device, .logged = now};
}

/*
 * A known identity that never finished its handshake: a wrong key, nearly always (OpenSSL
 * drops the records it cannot decrypt, so no DTLS error is reported). Once per session: at
 * its close, or at its deletion if it was never closed.
 */
static void
count_unfinished(struct coapbr *br, const coap_session_t *session, struct sensor *sn)
{
	if (sn && !sn->connected && !sn->counted) {
		br->st.key_mismatch++;
		sn->counted = true;
		log_mismatch(br, sn->dev->id, session);
	}
}

static void orphan_requests(struct coapbr *br, const coap_session_t *session);

/*
 * The session ended: its observation with it (RFC 7641 section 3.6), its requests waiting for
 * the router get no answer, and it is not counted.
 */
static void
sensor_closed(struct coapbr *br, const coap_session_t *session, struct sensor *sn)
{
	orphan_requests(br, session);
	if (sn) {
		sn->closed = true;
		set_observing(sn, false);
	}
}

static int
on_coap_event(coap_session_t *session, const coap_event_t event)
{
	struct coapbr *br = coap_get_app_data(coap_session_get_context(session));
	const char *device = session_device(session);
	char addr[INET6_ADDRSTRLEN + 8];
	struct sensor *sn = coap_session_get_app_data(session);

	switch (event) {
	case COAP_EVENT_SERVER_SESSION_DEL:
		count_unfinished(br, session, sn);
		if (sn) {
			/* Freed after coap_io_process(): on_nack() still needs it for this session.
			 */
			sensor_unlink(br, sn);
			sn->dead = true;
			sn->prev = NULL;
			sn->next = br->graveyard;
			br->graveyard = sn;
		}
		break;
	case COAP_EVENT_DTLS_CONNECTED:
		br->st.handshakes++;
		if (sn)
			sn->connected = true;
		log_info("%s: sensor connected from %s", device ? device : "?",
		         remote_str(session, addr, sizeof(addr)));
		break;
	case COAP_EVENT_DTLS_ERROR:
		/*
		 * Counted where the session ends (key mismatch), or already as refused by
		 * psk_for_identity(); what is left failed before an identity was given.
		 */
		if (!device && session != br->refused)
			br->st.handshake_failed++;
		br->refused = NULL;
		/* With a known identity the only way to fail a handshake is a key that does not
		 * match: counted and logged once per session. */
		if (device)
			count_unfinished(br, session, sn);
		else
			log_info("sensor %s: DTLS handshake failed",
			         remote_str(session, addr, sizeof(addr)));
		sensor_closed(br, session, sn);
		break;
	case COAP_EVENT_DTLS_CLOSED:
		count_unfinished(br, session, sn);
		sensor_closed(br, session, sn);
		if (device)
			log_debug("%s: DTLS session from %s closed", device,
			          remote_str(session, addr, sizeof(addr)));
		break;
	default:
		break;
	}
	return 0;
}

static void
request_unlink(struct sensor_request *req)
{
	struct coapbr *br = req->br;

	if (req->prev)
		req->prev->next = req->next;
	else
		br->requests = req->next;
	if (req->next)
		req->next->prev = req->prev;
}

/* arg: Max-Age for SENSOR_UNAVAILABLE, Size1 for SENSOR_TOO_LARGE (0: none known). */
static void
respond(coap_pdu_t *response, enum sensor_status status, unsigned arg)
{
	static const char unavailable[] = "upstream unavailable";
	uint8_t buf[4];

	switch (status) {
	case SENSOR_CHANGED:
		coap_pdu_set_code(response, COAP_RESPONSE_CODE_CHANGED);
		break;
	case SENSOR_FORBIDDEN:
		coap_pdu_set_code(response, COAP_RESPONSE_CODE_FORBIDDEN);
		break;
	case SENSOR_TOO_LARGE:
		/* RFC 7252 section 5.9.2.9 and RFC 7959 section 4: Size1 gives the limit. */
		coap_pdu_set_code(response, COAP_RESPONSE_CODE_REQUEST_TOO_LARGE);
		if (arg)
			coap_add_option(response, COAP_OPTION_SIZE1,
			                coap_encode_var_safe(buf, sizeof(buf), arg), buf);
		break;
	case SENSOR_UNAVAILABLE:
		/* RFC 7252 section 5.9.3.4: Max-Age says when to try again. */
		coap_pdu_set_code(response, COAP_RESPONSE_CODE_SERVICE_UNAVAILABLE);
		coap_add_option(response, COAP_OPTION_MAXAGE,
		                coap_encode_var_safe(buf, sizeof(buf), arg ? arg : 1), buf);
		/* Section 5.5.2: a diagnostic payload for the technician's coap-client. */
		coap_add_data(response, sizeof(unavailable) - 1, (const uint8_t *)unavailable);
		break;
	case SENSOR_ERROR:
		coap_pdu_set_code(response, COAP_RESPONSE_CODE_INTERNAL_ERROR);
		break;
	}
}

static const struct seen *
seen_find(const struct sensor *sn, coap_mid_t mid)
{
	for (size_t i = 0; i < SEEN_PER_SENSOR; i++) {
		if (sn->seen[i].mid == mid)
			return &sn->seen[i];
	}
	return NULL;
}

/* Remembers the answer to a CON, to repeat it if the CON comes again. */
static void
seen_add(struct sensor *sn, coap_mid_t mid, enum sensor_status status, unsigned arg)
{
	sn->seen[sn->seen_next] = (struct seen){.mid = mid, .status = status, .arg = arg};
	sn->seen_next = (sn->seen_next + 1) % SEEN_PER_SENSOR;
}

/*
 * Answers a request (con: a CON) and, for a CON, remembers the answer under mid, the request's
 * message ID. block1: the request's Block1 option, or NULL.
 */
static void
answer_as(struct sensor *sn, bool con, const coap_block_t *block1, coap_mid_t mid,
          coap_pdu_t *response, enum sensor_status status, unsigned arg)
{
	uint8_t buf[4];

	/* RFC 7959 section 2.3: the answer to the last block echoes its Block1 option. */
	if (block1)
		coap_add_option(
		        response, COAP_OPTION_BLOCK1,
		        coap_encode_var_safe(buf, sizeof(buf), (block1->num << 4) | block1->szx),
		        buf);
	respond(response, status, arg);
	if (sn && con)
		seen_add(sn, mid, status, arg);
}

/* Answers request as answer_as() does. */
static void
answer(struct sensor *sn, const coap_pdu_t *request, coap_mid_t mid, coap_pdu_t *response,
       enum sensor_status status, unsigned arg)
{
	coap_block_t block;
	bool has_block1 = coap_get_block(request, COAP_OPTION_BLOCK1, &block);

	answer_as(sn, coap_pdu_get_type(request) == COAP_MESSAGE_CON, has_block1 ? &block : NULL,
	          mid, response, status, arg);
}

/*
 * Takes one Block1 block (RFC 7959 section 2.5), opt being the request's Block1 option. Returns
 * 1 when the message is whole, with *payload and *len set; 0 when the block was taken and
 * answered (2.31 Continue follows from libcoap); or -1 when the upload was refused and answered.
 * The block is decoded here, not by coap_get_block_b(), which hides a block with the reserved
 * SZX 7 from a server over UDP, so that the request looked like a whole message.
 */
static int
take_block(struct coapbr *br, struct sensor *sn, const coap_resource_t *resource,
           const struct gwconf_route *route, const coap_pdu_t *request, coap_opt_t *opt,
           coap_pdu_t *response, const uint8_t **payload, size_t *len)
{
	coap_opt_iterator_t it;
	coap_opt_t *size1 = coap_check_option(request, COAP_OPTION_SIZE1, &it);
	struct upload_block b = {
	        .mid = (uint16_t)coap_pdu_get_mid(request),
	        /* The route's resource: it outlives a reload, which replaces the route. */
	        .owner = resource,
	        .has_size1 = size1 != NULL,
	};

	/* Section 2.2: an empty value is NUM 0, M 0, SZX 0; NUM has at most 20 bits. */
	if (coap_opt_length(opt) > 3) {
		b.num = UPLOAD_NUM_MAX + 1;
	} else if (coap_opt_length(opt) > 0) {
		b.num = coap_opt_block_num(opt);
		b.szx = COAP_OPT_BLOCK_SZX(opt);
		b.more = COAP_OPT_BLOCK_MORE(opt);
	}
	if (size1)
		b.size1 = coap_decode_var_bytes8(coap_opt_value(size1), coap_opt_length(size1));
	coap_get_data(request, &b.len, &b.data);
	switch (upload_take(&sn->upload, br->max_payload, &b)) {
	case UPLOAD_MORE:
		coap_pdu_set_code(response, COAP_RESPONSE_CODE_CHANGED);
		return 0;
	case UPLOAD_WHOLE:
		*payload = upload_data(sn->upload, len);
		return 1;
	case UPLOAD_BAD:
		log_warnx("%s: an upload to %s sent block %u of size %zu with SZX %u and M %d: "
		          "not a valid RFC 7959 block (4.00)",
		          sn->dev->id, route->resource, (unsigned)b.num, b.len, b.szx, b.more);
		coap_pdu_set_code(response, COAP_RESPONSE_CODE_BAD_REQUEST);
		return -1;
	case UPLOAD_INCOMPLETE:
		/* Section 2.9.2: a block out of sequence. */
		coap_pdu_set_code(response, COAP_RESPONSE_CODE_INCOMPLETE);
		return -1;
	case UPLOAD_TOO_LARGE:
		log_warnx("%s: an upload to %s is larger than sensors.max_payload (%zu bytes): "
		          "4.13",
		          sn->dev->id, route->resource, br->max_payload);
		answer(sn, request, coap_pdu_get_mid(request), response, SENSOR_TOO_LARGE,
		       (unsigned)br->max_payload);
		return -1;
	}
	return -1;
}

/* Held or deferred: it holds its session and waits for the router's answer. */
static bool
request_waits(const struct sensor_request *req)
{
	return req->state == REQ_HELD || req->state == REQ_DEFERRED;
}

/* The waiting request of session with message ID mid, if there is one. */
static struct sensor_request *
pending_request(struct coapbr *br, const coap_session_t *session, coap_mid_t mid)
{
	const struct sensor *sn = coap_session_get_app_data(session);

	if (!sn || sn->deferred == 0)
		return NULL;
	for (struct sensor_request *req = br->requests; req; req = req->next) {
		if (req->session == session && req->mid == mid && request_waits(req))
			return req;
	}
	return NULL;
}

/* Holds back the ACK of a CON waiting for the router, for at most br->piggyback_wait ms. */
static void
hold_ack(struct coapbr *br, struct sensor_request *req)
{
	req->state = REQ_HELD;
	req->ack_due = gw_now_ms() + br->piggyback_wait;
	req->held_next = NULL;
	req->held_prev = br->held_last;
	if (br->held_last)
		br->held_last->held_next = req;
	else
		br->held = req;
	br->held_last = req;
	if (!req->held_prev)
		gw_timer_arm(br->ack_timer, br->piggyback_wait);
}

/* A held request leaves the held list (answered, acknowledged empty, or orphaned). */
static void
unhold(struct sensor_request *req)
{
	struct coapbr *br = req->br;

	if (req->held_prev)
		req->held_prev->held_next = req->held_next;
	else
		br->held = req->held_next;
	if (req->held_next)
		req->held_next->held_prev = req->held_prev;
	else
		br->held_last = req->held_prev;
	req->held_prev = req->held_next = NULL;
	/* The timer stays at the old first's time; ack_due_fired() finds the next one. */
}

/* A held request is to be acknowledged empty: its answer will be a separate response. */
static void
stop_holding(struct sensor_request *req)
{
	unhold(req);
	req->state = REQ_DEFERRED;
}

/* A waiting request is answered, or its session ended: it lets go of the session. */
static void
request_settle(struct sensor_request *req, enum request_state state)
{
	struct sensor *sn = coap_session_get_app_data(req->session);

	if (req->state == REQ_HELD)
		unhold(req);
	if (sn)
		sn->deferred--;
	coap_session_release(req->session);
	req->state = state;
}

static void
request_free(struct sensor_request *req)
{
	request_unlink(req);
	if (request_waits(req))
		request_settle(req, REQ_ORPHAN);
	free(req);
}

/*
 * The session ended (or is being freed): its deferred requests will get no answer, and let go
 * of it, so that libcoap can free it and take a new handshake from the same address. The
 * router still completes them; they are then only freed.
 */
static void
orphan_requests(struct coapbr *br, const coap_session_t *session)
{
	for (struct sensor_request *req = br->requests; req; req = req->next) {
		if (request_waits(req) && (!session || req->session == session))
			request_settle(req, REQ_ORPHAN);
	}
}

/*
 * A waiting request's answer: on the ACK of a held CON (RFC 7252 section 5.2.1), or else as a
 * separate response (section 5.2.2).
 */
static void
send_answer(struct sensor_request *req)
{
	struct sensor *sn = coap_session_get_app_data(req->session);
	bool piggyback = req->state == REQ_HELD;
	coap_pdu_t *pdu = coap_pdu_init(piggyback  ? COAP_MESSAGE_ACK
	                                : req->con ? COAP_MESSAGE_CON
	                                           : COAP_MESSAGE_NON,
	                                COAP_EMPTY_CODE,
	                                piggyback ? req->mid : coap_new_message_id(req->session),
	                                coap_session_max_pdu_size(req->session));

	if (!pdu || !coap_add_token(pdu, req->token_len, req->token)) {
		coap_delete_pdu(pdu);
		log_warnx("%s: cannot make the answer to a request (out of memory?)",
		          sn ? sn->dev->id : "?");
		return;
	}
	answer_as(sn, req->con, req->has_block1 ? &req->block1 : NULL, req->mid, pdu, req->status,
	          req->max_age);
	/* libcoap retransmits a separate CON until the sensor acknowledges it. */
	if (coap_send(req->session, pdu) == COAP_INVALID_MID)
		log_warnx("%s: cannot send the answer to a request", sn ? sn->dev->id : "?");
	if (req->con)
		req->br->st.answers[piggyback ? COAPBR_PIGGYBACKED : COAPBR_SEPARATE]++;
}

/*
 * A held CON's answer did not come in time, or the sensor sent the CON again: it is
 * acknowledged empty now, and answered separately later.
 */
static void
ack_empty(struct sensor_request *req)
{
	coap_pdu_t *pdu = coap_pdu_init(COAP_MESSAGE_ACK, COAP_EMPTY_CODE, req->mid,
	                                coap_session_max_pdu_size(req->session));
	const char *device = session_device(req->session);

	stop_holding(req);
	if (!pdu || coap_send(req->session, pdu) == COAP_INVALID_MID)
		log_warnx("%s: cannot acknowledge a request", device ? device : "?");
}

/*
 * A reload shortened piggyback_wait: no ACK held now waits longer than the new wait. The
 * held list stays in order of ack_due, which later holds (due later still) keep.
 */
static void
shorten_holds(struct coapbr *br, unsigned wait)
{
	uint64_t now = gw_now_ms();

	for (struct sensor_request *req = br->held; req; req = req->held_next) {
		if (req->ack_due > now + wait)
			req->ack_due = now + wait;
	}
	if (br->held)
		gw_timer_arm(br->ack_timer, br->held->ack_due - now);
}

static void
ack_due_fired(struct gw_timer *t, void *data)
{
	struct coapbr *br = data;
	uint64_t now = gw_now_ms();

	while (br->held && br->held->ack_due <= now)
		ack_empty(br->held);
	if (br->held)
		gw_timer_arm(t, br->held->ack_due - now);
}

static int
content_format(const coap_pdu_t *pdu)
{
	coap_opt_iterator_t it;
	coap_opt_t *opt = coap_check_option(pdu, COAP_OPTION_CONTENT_FORMAT, &it);

	return opt ? (int)coap_decode_var_bytes(coap_opt_value(opt), coap_opt_length(opt)) : -1;
}

static void
handle_uplink(coap_resource_t *resource, coap_session_t *session, const coap_pdu_t *request,
              const coap_string_t *query, coap_pdu_t *response)
{
	struct coapbr *br = coap_get_app_data(coap_session_get_context(session));
	struct sensor *sn = coap_session_get_app_data(session);
	const char *device = sn ? sn->dev->id : NULL;
	const struct gwconf_route *route = coap_resource_get_userdata(resource);
	const struct seen *seen;
	coap_bin_const_t token = coap_pdu_get_token(request);
	struct sensor_request *req;
	struct sensor_uplink up;
	coap_opt_iterator_t it;
	coap_opt_t *block1;
	size_t len = 0;
	const uint8_t *payload = NULL;
	bool whole = false; /* payload is sn->upload's, put together from blocks */

	(void)query;
	if (!device) {
		/* Not reachable over DTLS-PSK: psk_for_identity() sets it for every session. */
		coap_pdu_set_code(response, COAP_RESPONSE_CODE_UNAUTHORIZED);
		return;
	}
	if (!route) {
		/* The command resource now, or a route a reload took away (see find_resource()). */
		coap_pdu_set_code(response, resource == br->commands_resource
		                                    ? COAP_RESPONSE_CODE_NOT_ALLOWED
		                                    : COAP_RESPONSE_CODE_NOT_FOUND);
		return;
	}
	if (coap_pdu_get_type(request) == COAP_MESSAGE_CON &&
	    (seen = seen_find(sn, coap_pdu_get_mid(request)))) {
		log_debug("%s: CON 0x%04x again: answered as before, not forwarded again", device,
		          (unsigned)coap_pdu_get_mid(request));
		answer(sn, request, coap_pdu_get_mid(request), response, seen->status, seen->arg);
		return;
	}
	if (coap_pdu_get_type(request) == COAP_MESSAGE_CON &&
	    (req = pending_request(br, session, coap_pdu_get_mid(request)))) {
		/*
		 * Still with the router: acknowledged (again) with the empty ACK libcoap sends for
		 * a response left empty, and answered separately once the answer is known. A held
		 * one was held too long for this sensor.
		 */
		if (req->state == REQ_HELD)
			stop_holding(req);
		return;
	}
	/*
	 * Suspended, revoked or removed since its handshake, or its PSK rotated out (grace over):
	 * nothing more of it goes upstream.
	 */
	if (!device_usable(sn->dev) ||
	    !keystore_identity_valid(sn->dev, sn->identity, sn->identity_len)) {
		answer(sn, request, coap_pdu_get_mid(request), response, SENSOR_FORBIDDEN, 0);
		return;
	}
	if ((block1 = coap_check_option(request, COAP_OPTION_BLOCK1, &it))) {
		if (take_block(br, sn, resource, route, request, block1, response, &payload,
		               &len) <= 0)
			return;
		whole = true;
	} else {
		coap_get_data(request, &len, &payload);
		if (len > br->max_payload) {
			answer(sn, request, coap_pdu_get_mid(request), response, SENSOR_TOO_LARGE,
			       (unsigned)br->max_payload);
			return;
		}
	}
	req = xcalloc(1, sizeof(*req));
	req->br = br;
	req->session = session;
	req->mid = coap_pdu_get_mid(request);
	req->next = br->requests;
	if (br->requests)
		br->requests->prev = req;
	br->requests = req;

	up = (struct sensor_uplink){
	        .dev = sn->dev,
	        .route = route,
	        .put = coap_pdu_get_code(request) == COAP_REQUEST_CODE_PUT,
	        .payload = payload,
	        .len = len,
	        .confirmable = coap_pdu_get_type(request) == COAP_MESSAGE_CON,
	        .content_format = content_format(request),
	};
	br->ops->uplink(req, &up, br->data);
	/* The router copied what it keeps. An upload still going on is not this one's. */
	if (whole) {
		upload_free(sn->upload);
		sn->upload = NULL;
	}
	if (req->done) {
		/* Answered at once (upstream down): piggy-back it on the ACK. */
		answer(sn, request, coap_pdu_get_mid(request), response, req->status, req->max_age);
		request_unlink(req);
		free(req);
		return;
	}
	if (token.length > sizeof(req->token)) {
		/* RFC 8974's longer tokens, which libcoap 4.3.1 does not parse anyway. */
		req->state = REQ_ORPHAN;
		answer(sn, request, coap_pdu_get_mid(request), response, SENSOR_ERROR, 0);
		return;
	}
	/*
	 * Wait for coapbr_complete(). A response left without a code is sent by libcoap as an
	 * empty ACK to a CON, and as nothing to a NON (RFC 7252 section 5.2.2). A CON's ACK is
	 * held back instead, to carry the answer, while it may come before the sensor would send
	 * the CON again: four datagrams become two, and no separate CON waits in libcoap's list
	 * of them (one list for all sensors, walked at each insertion). A response made
	 * non-confirmable and left empty is not sent.
	 */
	req->state = REQ_DEFERRED;
	req->con = up.confirmable;
	req->token_len = token.length;
	memcpy(req->token, token.s, token.length);
	req->has_block1 = coap_get_block(request, COAP_OPTION_BLOCK1, &req->block1);
	coap_session_reference(session);
	sn->deferred++;
	if (req->con && br->piggyback_wait > 0) {
		coap_pdu_set_type(response, COAP_MESSAGE_NON);
		hold_ack(br, req);
	}
}

/* Seconds a command has left, for its Max-Age: the sensor may act on it until then. */
static unsigned
remaining(const struct sensor_command *cmd)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return cmd->expires > ts.tv_sec ? (unsigned)(cmd->expires - ts.tv_sec) : 0;
}

/* A command as a 2.05 Content: in a response, or in a notification. */
static void
put_command(coap_pdu_t *pdu, const struct sensor_command *cmd, bool observe, uint32_t seq)
{
	uint8_t buf[4];

	coap_pdu_set_code(pdu, COAP_RESPONSE_CODE_CONTENT);
	/* RFC 7641 section 3.4: 24 bits, and a fresher notification has the larger one. */
	if (observe)
		coap_add_option(pdu, COAP_OPTION_OBSERVE,
		                coap_encode_var_safe(buf, sizeof(buf), seq & 0xFFFFFF), buf);
	if (!cmd)
		return;
	if (cmd->content_format >= 0)
		coap_add_option(
		        pdu, COAP_OPTION_CONTENT_FORMAT,
		        coap_encode_var_safe(buf, sizeof(buf), (unsigned)cmd->content_format), buf);
	coap_add_option(pdu, COAP_OPTION_MAXAGE,
	                coap_encode_var_safe(buf, sizeof(buf), remaining(cmd)), buf);
	coap_add_data(pdu, cmd->len, cmd->payload);
}

/*
 * GET on the command resource: takes the device's oldest waiting command (an empty 2.05 when
 * none waits). With Observe 0 the sensor also registers for the ones that come later; they
 * are then pushed to it as CON notifications by coapbr_commands_ready().
 */
static void
handle_commands(coap_resource_t *resource, coap_session_t *session, const coap_pdu_t *request,
                const coap_string_t *query, coap_pdu_t *response)
{
	struct coapbr *br = coap_get_app_data(coap_session_get_context(session));
	struct sensor *sn = coap_session_get_app_data(session);
	coap_opt_iterator_t it;
	coap_opt_t *obs = coap_check_option(request, COAP_OPTION_OBSERVE, &it);
	coap_bin_const_t token = coap_pdu_get_token(request);
	struct sensor_command *cmd;
	bool con = coap_pdu_get_type(request) == COAP_MESSAGE_CON;

	(void)query;
	if (resource != br->commands_resource) {
		/* A route's path (POST and PUT only), or one a reload took away. */
		coap_pdu_set_code(response, coap_resource_get_userdata(resource)
		                                    ? COAP_RESPONSE_CODE_NOT_ALLOWED
		                                    : COAP_RESPONSE_CODE_NOT_FOUND);
		return;
	}
	if (!sn || !device_usable(sn->dev) ||
	    !keystore_identity_valid(sn->dev, sn->identity, sn->identity_len) ||
	    !br->ops->may_read(sn->dev, br->commands_path, br->data)) {
		coap_pdu_set_code(response, COAP_RESPONSE_CODE_FORBIDDEN);
		return;
	}
	if (con && sn->last_get && sn->last_get_mid == coap_pdu_get_mid(request)) {
		/* The same GET again: its answer was lost, so it gets the same command. */
		put_command(response, sn->last_get, sn->observing && obs, br->observe);
		return;
	}
	if (obs && coap_decode_var_bytes(coap_opt_value(obs), coap_opt_length(obs)) == 0 &&
	    token.length <= sizeof(sn->obs_token)) {
		set_observing(sn, true);
		sn->obs_token_len = token.length;
		if (token.length)
			memcpy(sn->obs_token, token.s, token.length);
		log_info("%s: its sensor observes /%s", sn->dev->id, br->commands_path);
	} else if (obs) {
		set_observing(sn, false);
	}
	cmd = br->ops->command_take(sn->dev, br->data);
	put_command(response, cmd, sn->observing && obs, ++br->observe);
	free(sn->last_get);
	sn->last_get = NULL;
	if (cmd && con) {
		sn->last_get = cmd;
		sn->last_get_mid = coap_pdu_get_mid(request);
	} else {
		free(cmd);
	}
	/*
	 * More may be waiting: they follow as notifications, once libcoap has sent this answer
	 * (sent from here they would overtake it).
	 */
	if (sn->observing && br->ops->commands_waiting(sn->dev, br->data) > 0)
		gw_timer_arm(br->push, 0);
}

/* sn's libcoap session, or NULL once libcoap gave its peer's address to another. */
static coap_session_t *
session_of(struct coapbr *br, const struct sensor *sn)
{
	coap_session_t *s = coap_session_get_by_peer(br->ctx, &sn->remote, sn->ifindex);

	return s && coap_session_get_app_data(s) == sn ? s : NULL;
}

/* The sensor session of device that observes the command resource, or NULL. */
static coap_session_t *
observer_of(struct coapbr *br, const struct device *dev, struct sensor **out)
{
	for (struct sensor *sn = br->sensors; sn; sn = sn->next) {
		coap_session_t *s;

		if (!sn->observing || sn->closed || sn->dev != dev)
			continue;
		s = session_of(br, sn);
		if (s) {
			*out = sn;
			return s;
		}
	}
	return NULL;
}

void
coapbr_commands_ready(struct coapbr *br, struct device *dev)
{
	struct sensor *sn;
	coap_session_t *s = br->commands ? observer_of(br, dev, &sn) : NULL;
	const char *device = dev->id;
	struct sensor_command *cmd;
	coap_mid_t mid;

	if (!s)
		return;
	/*
	 * In order, as many as may be outstanding: libcoap sends one CON at a time per session
	 * (NSTART 1) and holds the rest until the previous is acknowledged. A slot is free when
	 * its notification failed (on_nack) or had time to be acknowledged.
	 */
	while (br->ops->commands_waiting(dev, br->data) > 0) {
		struct timespec now;
		unsigned slot = sn->sent_next;

		clock_gettime(CLOCK_MONOTONIC, &now);
		if (sn->sent[slot].mid != COAP_INVALID_MID &&
		    now.tv_sec - sn->sent[slot].at < MAX_TRANSMIT_WAIT) {
			gw_timer_arm(br->push, 1000 * (uint64_t)(MAX_TRANSMIT_WAIT -
			                                         (now.tv_sec - sn->sent[slot].at)));
			return;
		}
		cmd = br->ops->command_take(dev, br->data);
		if (!cmd)
			return;
		coap_pdu_t *pdu =
		        coap_pdu_init(COAP_MESSAGE_CON, COAP_RESPONSE_CODE_CONTENT,
		                      coap_new_message_id(s), coap_session_max_pdu_size(s));

		if (!pdu || !coap_add_token(pdu, sn->obs_token_len, sn->obs_token)) {
			coap_delete_pdu(pdu);
			br->ops->command_return(dev, cmd, br->data);
			return;
		}
		put_command(pdu, cmd, true, ++br->observe);
		mid = coap_send(s, pdu);
		if (mid == COAP_INVALID_MID) {
			log_warnx("%s: cannot send a command to its sensor: kept for later",
			          device);
			br->ops->command_return(dev, cmd, br->data);
			return;
		}
		sn->sent[slot].mid = mid;
		sn->sent[slot].seq = cmd->seq;
		sn->sent[slot].expires = cmd->expires;
		sn->sent[slot].at = now.tv_sec;
		sn->sent_next = (slot + 1) % SENT_PER_SENSOR;
		log_debug("%s: command of %zu bytes sent to its sensor", device, cmd->len);
		free(cmd);
	}
}

/*
 * A CON that its sensor did not acknowledge (no ACK after the retransmissions, a reset, the
 * session gone). If it was a command, it goes back to its place in the queue, rebuilt from
 * what was sent, and is pushed again; a reset also ends the observation (RFC 7641 section 3.6).
 * libcoap may have sent the next one meanwhile: that one then arrives first.
 */
static void
on_nack(coap_session_t *session, const coap_pdu_t *sent, const coap_nack_reason_t reason,
        const coap_mid_t mid)
{
	struct coapbr *br = coap_get_app_data(coap_session_get_context(session));
	struct sensor *sn = coap_session_get_app_data(session);
	struct sensor_command *cmd = NULL;
	const uint8_t *data = NULL;
	size_t len = 0;

	if (br->closing || !sn || !br->commands || !sent ||
	    coap_pdu_get_code(sent) != COAP_RESPONSE_CODE_CONTENT)
		return;
	if (reason == COAP_NACK_RST)
		set_observing(sn, false);
	coap_get_data(sent, &len, &data);
	for (size_t i = 0; i < SENT_PER_SENSOR; i++) {
		if (sn->sent[i].mid != mid)
			continue;
		sn->sent[i].mid = COAP_INVALID_MID;
		cmd = sensor_command_new(sn->sent[i].seq, sn->sent[i].expires, content_format(sent),
		                         data, len);
		break;
	}
	if (!cmd)
		return;
	log_info("%s: its sensor did not take a command (%s): queued again", sn->dev->id,
	         reason == COAP_NACK_RST ? "reset" : "no acknowledgement");
	br->ops->command_return(sn->dev, cmd, br->data);
	if (!sn->dead)
		gw_timer_arm(br->push, 0);
}

/* After a GET or a failed notification: queued commands to every sensor that observes. */
static void
push_fired(struct gw_timer *t, void *data)
{
	struct coapbr *br = data;

	(void)t;
	for (struct sensor *sn = br->sensors; sn; sn = sn->next) {
		if (sn->observing && br->ops->commands_waiting(sn->dev, br->data) > 0)
			coapbr_commands_ready(br, sn->dev);
	}
}

void
coapbr_complete(struct sensor_request *req, enum sensor_status status, unsigned max_age)
{
	req->done = true;
	req->status = status;
	req->max_age = max_age;
	switch (req->state) {
	case REQ_IN_HANDLER:
		break;
	case REQ_HELD:
	case REQ_DEFERRED:
		send_answer(req);
		request_free(req);
		break;
	case REQ_ORPHAN:
		request_free(req);
		break;
	}
}

void
coapbr_drop_device(struct coapbr *br, const char *device, bool stale_only)
{
	char addr[INET6_ADDRSTRLEN + 8];

	for (struct sensor *sn = br->sensors; sn; sn = sn->next) {
		coap_session_t *s;

		if (sn->closed || (device && strcmp(sn->dev->id, device) != 0))
			continue;
		if (stale_only && keystore_identity_valid(sn->dev, sn->identity, sn->identity_len))
			continue;
		s = session_of(br, sn);
		if (!s)
			continue;
		log_info("%s: closing the DTLS session from %s", sn->dev->id,
		         remote_str(s, addr, sizeof(addr)));
		/* Sends close_notify and frees the TLS state; libcoap frees the session next. */
		sensor_closed(br, s, sn);
		coap_session_disconnected(s, COAP_NACK_NOT_DELIVERABLE);
	}
}

/*
 * A handshake that has not finished after this long never will: libcoap gives up on its own
 * after its 4 DTLS retransmissions (1 + 2 + 4 + 8 + 16 s = 31 s). But OpenSSL stops its
 * retransmission timer once the sensor's next flight begins to arrive, and a Finished it
 * cannot decrypt (a wrong key) is dropped without a word (RFC 6347 4.1.2.7): when the sensor
 * stops retransmitting, such a handshake had no timer left and held its slot among
 * libcoap's handshakes until the idle session timeout (300 s). Seen in test-hostile.
 */
#define HANDSHAKE_DEADLINE_MS 40000

/* Ends the handshakes older than HANDSHAKE_DEADLINE_MS, counted as failed. */
static void
end_stalled_handshakes(struct coapbr *br)
{
	uint64_t now = gw_now_ms();

	for (struct sensor *sn = br->sensors; sn; sn = sn->next) {
		coap_session_t *s;

		if (sn->closed || sn->connected || now - sn->hs_ms < HANDSHAKE_DEADLINE_MS)
			continue;
		s = session_of(br, sn);
		if (!s || coap_session_get_state(s) != COAP_SESSION_STATE_HANDSHAKE)
			continue;
		/* With a known identity, a handshake that stalls has a key that does not match. */
		count_unfinished(br, s, sn);
		sensor_closed(br, s, sn);
		coap_session_disconnected(s, COAP_NACK_TLS_FAILED);
	}
}

/*
 * A rotated-out identity whose grace period ended is refused at its next request already;
 * this closes such sessions too, so that sensors hear it and re-handshake with their new key.
 * Stalled handshakes end here too.
 */
#define SWEEP_MS 10000

static void
sweep_stale(struct gw_timer *t, void *data)
{
	struct coapbr *br = data;

	coapbr_drop_device(br, NULL, true);
	end_stalled_handshakes(br);
	gw_timer_arm(t, SWEEP_MS);
}

static void
coap_ready(int fd, uint32_t events, void *data)
{
	struct coapbr *br = data;

	(void)fd;
	(void)events;
	/*
	 * The uplinks of one wakeup share one spool sync, instead of one sync each; the
	 * sessions libcoap ended while reading are freed once it no longer needs them.
	 */
	coapio_drain(br->ctx);
	bury_the_dead(br);
}

/*
 * libcoap 4.3.1 does not expose its endpoint's socket, so find it: the UDP socket bound to our
 * port. Without a large receive buffer a burst of handshakes overflows the kernel's default
 * 208 KiB and every dropped datagram costs the sensor a 1 s DTLS retransmit (DESIGN.md 2).
 */
static void
grow_receive_buffer(uint16_t port, int bytes)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *de;
	bool found = false;

	if (!dir) {
		log_warn("coap: /proc/self/fd");
		return;
	}
	while ((de = readdir(dir))) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = atoi(de->d_name), type, got = 0;
		socklen_t tl = sizeof(type);
		uint16_t p;

		if (de->d_name[0] == '.' || fd == dirfd(dir))
			continue;
		if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_DGRAM)
			continue;
		if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
			continue;
		if (ss.ss_family == AF_INET)
			p = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		else if (ss.ss_family == AF_INET6)
			p = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
		else
			continue;
		if (p != port)
			continue;
		found = true;
		/* FORCE passes net.core.rmem_max when we may (CAP_NET_ADMIN). */
		if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) < 0)
			setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
		tl = sizeof(got);
		getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &got, &tl);
		/* The kernel reports twice what it was asked for (socket(7)). */
		if (got / 2 < bytes)
			log_warnx("coap: receive buffer is %d bytes, not the %d configured: raise "
			          "net.core.rmem_max (see systemd/gatewayd-sysctl.conf)",
			          got / 2, bytes);
		else
			log_debug("coap: receive buffer %d bytes", got / 2);
	}
	closedir(dir);
	if (!found)
		log_warnx("coap: cannot find the socket for port %u to size its receive buffer",
		          port);
}

static int
listen_address(const struct coapbr_options *opt, coap_address_t *addr)
{
	coap_address_init(addr);
	if (inet_pton(AF_INET, opt->listen, &addr->addr.sin.sin_addr) == 1) {
		addr->addr.sin.sin_family = AF_INET;
		addr->addr.sin.sin_port = htons(opt->port);
		addr->size = sizeof(addr->addr.sin);
		return 0;
	}
	if (inet_pton(AF_INET6, opt->listen, &addr->addr.sin6.sin6_addr) == 1) {
		addr->addr.sin6.sin6_family = AF_INET6;
		addr->addr.sin6.sin6_port = htons(opt->port);
		addr->size = sizeof(addr->addr.sin6);
		return 0;
	}
	return -EINVAL;
}

/*
 * The resource at path, made if there is none yet. A resource, once made, stays in the context
 * for the life of br, whatever a reload makes of its path (a route, the command resource, or
 * nothing): libcoap sends a deferred answer by dispatching its request again to the resource
 * at the request's path, so one replaced or deleted under a request waiting for the router
 * would answer it wrongly and leave it pending for ever. So every resource has every handler,
 * and each handler asks what its path is now: a route (its userdata), the command resource
 * (br->commands_resource), or neither.
 */
static coap_resource_t *
find_resource(struct coapbr *br, const char *path)
{
	coap_str_const_t uri = {.s = (const uint8_t *)path, .length = strlen(path)};
	coap_resource_t *r = coap_get_resource_from_uri_path(br->ctx, &uri), **all;
	coap_str_const_t *p;

	if (r)
		return r;
	all = xreallocarray(br->resources, br->nresources + 1, sizeof(*all));
	br->resources = all;
	/* Both fail only when libcoap's malloc does. */
	p = coap_new_str_const(uri.s, uri.length);
	if (!p)
		xalloc_failed("coap_new_str_const");
	r = coap_resource_init(p, COAP_RESOURCE_FLAGS_RELEASE_URI);
	if (!r)
		xalloc_failed("coap_resource_init");
	coap_register_request_handler(r, COAP_REQUEST_POST, handle_uplink);
	coap_register_request_handler(r, COAP_REQUEST_PUT, handle_uplink);
	/*
	 * Not observable in libcoap's sense: it would notify every observer for any one device's
	 * command. handle_commands() keeps each sensor's observation instead.
	 */
	coap_register_request_handler(r, COAP_REQUEST_GET, handle_commands);
	coap_add_resource(br->ctx, r);
	br->resources[br->nresources++] = r;
	return r;
}

/* Serves opt's routes; the resources of routes it no longer has answer 4.04. */
static void
add_routes(struct coapbr *br, const struct coapbr_options *opt)
{
	for (size_t i = 0; i < br->nresources; i++)
		coap_resource_set_userdata(br->resources[i], NULL);
	for (size_t i = 0; i < opt->nroutes; i++)
		coap_resource_set_userdata(find_resource(br, opt->routes[i].resource),
		                           (void *)&opt->routes[i]);
}

/*
 * libcoap logs several warnings for every refused handshake, which anyone can provoke;
 * gatewayd logs one line of its own for those, so keep libcoap's for debugging.
 */
static void
set_libcoap_log_level(void)
{
	coap_set_log_level(log_get_level() >= LOG_LEVEL_DEBUG ? LOG_INFO : LOG_ERR);
	coap_dtls_set_log_level(log_get_level() >= LOG_LEVEL_DEBUG ? LOG_WARNING : LOG_ERR);
}

/*
 * Sizes libcoap's limits for the fleet: every paired sensor may hold a session, and after a
 * gateway restart all of them handshake at once (libcoap's default allows 100). Kept in line
 * with the fleet as devices are added and removed (coapbr_fleet_changed()): sized at start
 * only, 1,000 sensors added to a running gateway handshook through 100 slots (issue 15).
 */
static void
set_session_limits(struct coapbr *br)
{
	size_t fleet = keystore_count(br->ks), max = br->max_sessions;
	unsigned handshakes = (unsigned)(fleet > 100 ? (fleet < max ? fleet : max) : 100);

	coap_context_set_max_idle_sessions(br->ctx, (unsigned)max);
	coap_context_set_max_handshake_sessions(br->ctx, handshakes);
	if (handshakes != br->max_handshakes)
		log_info("coap: up to %u DTLS handshakes at once (%zu devices paired, "
		         "sensors.max_sessions %zu)",
		         handshakes, fleet, max);
	br->max_handshakes = handshakes;
}

static void
add_commands(struct coapbr *br)
{
	if (br->commands)
		br->commands_resource = find_resource(br, br->commands_path);
}

void
coapbr_fleet_changed(struct coapbr *br)
{
	set_session_limits(br);
}

void
coapbr_get_stats(const struct coapbr *br, struct coapbr_stats *st)
{
	*st = br->st;
	st->sessions = 0;
	for (const struct sensor *sn = br->sensors; sn; sn = sn->next)
		st->sessions += sn->connected && !sn->closed;
}

unsigned
coapbr_device_sessions(const struct coapbr *br, const char *device)
{
	unsigned n = 0;

	for (const struct sensor *sn = br->sensors; sn; sn = sn->next)
		n += sn->connected && !sn->closed && strcmp(sn->dev->id, device) == 0;
	return n;
}

void
coapbr_reconfigure(struct coapbr *br, const struct coapbr_options *opt)
{
	if (br->commands && opt->commands_resource &&
	    strcmp(br->commands_path, opt->commands_resource) != 0) {
		free(br->commands_path);
		br->commands_path = xstrdup(opt->commands_resource);
		/* Observers of the old path: their observation ends with it (RFC 7641 3.6). */
		for (struct sensor *sn = br->sensors; sn; sn = sn->next)
			set_observing(sn, false);
		add_commands(br);
	}
	add_routes(br, opt);
	/* An upload's buffer was sized for the old limit: those going on start again. */
	if (opt->max_payload != br->max_payload) {
		for (struct sensor *sn = br->sensors; sn; sn = sn->next) {
			upload_free(sn->upload);
			sn->upload = NULL;
		}
		br->max_payload = opt->max_payload;
	}
	br->max_sessions = opt->max_sessions;
	if (opt->piggyback_wait < br->piggyback_wait)
		shorten_holds(br, opt->piggyback_wait);
	br->piggyback_wait = opt->piggyback_wait;
	set_session_limits(br);
	set_libcoap_log_level();
}

int
coapbr_new(struct coapbr **out, struct gw_loop *loop, const struct coapbr_options *opt,
           const struct keystore *ks, const struct sensor_ops *ops, void *data)
{
	coap_dtls_spsk_t spsk; /* libcoap keeps a copy */
	struct coapbr *br;
	coap_address_t addr;
	size_t fleet = keystore_count(ks);
	int r;

	br = xcalloc(1, sizeof(*br));
	br->loop = loop;
	br->ks = ks;
	br->ops = ops;
	br->data = data;
	br->max_payload = opt->max_payload;
	if (opt->commands_resource) {
		br->commands = true;
		br->commands_path = xstrdup(opt->commands_resource);
	}
	br->fd = -1;

	coap_startup();
	coap_set_log_handler(on_coap_log);
	set_libcoap_log_level();

	br->ctx = coap_new_context(NULL);
	if (!br->ctx) {
		r = -ENOMEM; /* libcoap could not allocate it, or its DTLS context */
		goto fail;
	}
	coap_set_app_data(br->ctx, br);
	spsk = (coap_dtls_spsk_t){
	        .version = COAP_DTLS_SPSK_SETUP_VERSION,
	        .validate_id_call_back = psk_for_identity,
	        .id_call_back_arg = br,
	};
	if (!coap_context_set_psk2(br->ctx, &spsk)) {
		log_warnx("coap: libcoap was built without DTLS PSK support");
		r = -ENOTSUP;
		goto fail;
	}
	/*
	 * RFC 7959 blocks: libcoap answers 2.31 Continue, handle_uplink() puts Block1 uploads
	 * together itself so that it can refuse one past sensors.max_payload at its first block
	 * (libcoap's own reassembly has no limit), and libcoap sends large answers in Block2.
	 */
	coap_context_set_block_mode(br->ctx, COAP_BLOCK_USE_LIBCOAP);
	coap_register_nack_handler(br->ctx, on_nack);
	br->max_sessions = opt->max_sessions;
	br->piggyback_wait = opt->piggyback_wait;
	set_session_limits(br);
	coap_register_event_handler(br->ctx, on_coap_event);

	if (listen_address(opt, &addr) < 0) {
		r = -EINVAL;
		goto fail;
	}
	if (!coap_new_endpoint(br->ctx, &addr, COAP_PROTO_DTLS)) {
		log_warnx("coap: cannot listen on %s port %u (in use, or not a local address?)",
		          opt->listen, opt->port);
		r = -EADDRNOTAVAIL;
		goto fail;
	}
	grow_receive_buffer(opt->port, opt->receive_buffer);
	add_routes(br, opt);
	add_commands(br);
	br->fd = coap_context_get_coap_fd(br->ctx);
	if (br->fd < 0) {
		log_warnx("coap: libcoap was built without epoll support");
		r = -ENOTSUP;
		goto fail;
	}
	r = gw_loop_add_fd(loop, br->fd, EPOLLIN, coap_ready, br);
	if (r < 0)
		goto fail;
	br->sweep = gw_timer_new(loop, sweep_stale, br);
	gw_timer_arm(br->sweep, SWEEP_MS);
	br->push = gw_timer_new(loop, push_fired, br);
	br->ack_timer = gw_timer_new(loop, ack_due_fired, br);
	log_info("coap: listening for DTLS on %s port %u, %zu sensors paired", opt->listen,
	         opt->port, fleet);
	*out = br;
	return 0;
fail:
	coapbr_free(br);
	return r;
}

void
coapbr_free(struct coapbr *br)
{
	if (!br)
		return;
	if (br->fd >= 0)
		gw_loop_del_fd(br->loop, br->fd);
	br->closing = true;
	/* Nothing is sent for requests still with the router; their sessions go. */
	orphan_requests(br, NULL);
	if (br->ctx)
		coap_free_context(br->ctx);
	gw_timer_free(br->sweep);
	gw_timer_free(br->push);
	gw_timer_free(br->ack_timer);
	while (br->requests) {
		struct sensor_request *req = br->requests;

		request_unlink(req);
		free(req);
	}
	/* coap_free_context() frees sessions without SERVER_SESSION_DEL. */
	while (br->sensors) {
		struct sensor *sn = br->sensors;

		sensor_unlink(br, sn);
		sensor_free(sn);
	}
	bury_the_dead(br);
	free(br->commands_path);
	free(br->resources);
	explicit_bzero(br->psk, sizeof(br->psk));
	coap_cleanup();
	free(br);
}

static void
side_commands_ready(void *side, struct device *dev)
{
	coapbr_commands_ready(side, dev);
}

const struct sensor_side_ops coapbr_sensor_side_ops = {
        .complete = coapbr_complete,
        .commands_ready = side_commands_ready,
};
