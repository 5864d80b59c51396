/* SPDX-License-Identifier: Apache-2.0 */
/*
 * coapraw: sends crafted CoAP requests over one DTLS-PSK session, the way a broken or hostile
 * sensor would, and prints the answer to each, one line per request:
 *   <code>     e.g. "2.31", "4.00"; "rst" for a Reset; "none" when nothing came in time
 * libcoap's own block handling is off, so every option goes out as written.
 *   coapraw -a ADDR -p PORT -u IDENTITY -k KEY [-r RESOURCE] [-t SECONDS] REQUEST...
 * REQUEST is one of
 *   post:LEN[:CHAR]                     a POST carrying LEN bytes of CHAR (default 'x')
 *   block:NUM:M:SZX:LEN[:CHAR]          the same with a Block1 option NUM/M/SZX
 *   twice:LEN[:CHAR]                    a POST as post: sent twice back to back, the same CON
 *                                       with the same message ID, as by a sensor whose first
 *                                       copy seemed lost (RFC 7252 section 4.2); put it last,
 *                                       since the copy's own retransmissions may follow
 * A request in one datagram larger than the session's usual MTU is sent as one datagram too
 * (the MTU is raised), so that the server sees what a sensor could send.
 * Exit status: 0 when every request was sent (whatever the answers), 2 usage, 4 no session.
 * Bounded: each request waits at most -t seconds (default 5) for its answer.
 */
#include <coap3/coap.h>
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static struct {
	char answer[16]; /* empty: none yet */
	bool closed;
	uint8_t token[8];
	size_t token_len;
} st;

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static coap_response_t
on_response(coap_session_t *s, const coap_pdu_t *sent, const coap_pdu_t *rcvd, const coap_mid_t mid)
{
	coap_bin_const_t tok = coap_pdu_get_token(rcvd);

	(void)s;
	(void)sent;
	(void)mid;
	if (coap_pdu_get_type(rcvd) == COAP_MESSAGE_RST) {
		snprintf(st.answer, sizeof(st.answer), "rst");
		return COAP_RESPONSE_OK;
	}
	if (tok.length != st.token_len || memcmp(tok.s, st.token, tok.length) != 0)
		return COAP_RESPONSE_OK;
	snprintf(st.answer, sizeof(st.answer), "%d.%02d",
	         COAP_RESPONSE_CLASS(coap_pdu_get_code(rcvd)), coap_pdu_get_code(rcvd) & 0x1f);
	return COAP_RESPONSE_OK;
}

/* libcoap reports a Reset to a CON as a NACK. */
static void
on_nack(coap_session_t *s, const coap_pdu_t *sent, const coap_nack_reason_t reason,
        const coap_mid_t mid)
{
	(void)s;
	(void)sent;
	(void)mid;
	if (reason == COAP_NACK_RST)
		snprintf(st.answer, sizeof(st.answer), "rst");
	else
		st.closed = true;
}

static int
on_event(coap_session_t *s, const coap_event_t event)
{
	(void)s;
	if (event == COAP_EVENT_DTLS_CLOSED || event == COAP_EVENT_DTLS_ERROR ||
	    event == COAP_EVENT_SESSION_FAILED)
		st.closed = true;
	return 0;
}

static void
usage(void)
{
	fprintf(stderr, "usage: coapraw -a ADDR -p PORT -u IDENTITY -k KEY [-r RESOURCE] "
	                "[-t SECONDS] post:LEN[:CHAR] | block:NUM:M:SZX:LEN[:CHAR] | "
	                "twice:LEN[:CHAR]...\n");
	exit(2);
}

/*
 * Builds the request a REQUEST argument describes; NULL if it is not one. *twice: it is to be
 * sent twice.
 */
static coap_pdu_t *
build(coap_session_t *session, const char *resource, const char *arg, bool *twice)
{
	unsigned long num = 0, m = 0, szx = 0, len = 0;
	char fill = 'x', c = 0;
	bool block;
	coap_pdu_t *pdu;
	uint8_t *payload, opt[4];

	*twice = false;
	if (sscanf(arg, "post:%lu:%c", &len, &c) >= 1)
		block = false;
	else if (sscanf(arg, "twice:%lu:%c", &len, &c) >= 1)
		block = false, *twice = true;
	else if (sscanf(arg, "block:%lu:%lu:%lu:%lu:%c", &num, &m, &szx, &len, &c) >= 4)
		block = true;
	else
		return NULL;
	if (c)
		fill = c;
	if (len > 65000 || num > 0xFFFFF || m > 1 || szx > 7)
		return NULL;
	pdu = coap_pdu_init(COAP_MESSAGE_CON, COAP_REQUEST_CODE_POST, coap_new_message_id(session),
	                    len + 256);
	coap_session_new_token(session, &st.token_len, st.token);
	coap_add_token(pdu, st.token_len, st.token);
	coap_add_option(pdu, COAP_OPTION_URI_PATH, strlen(resource), (const uint8_t *)resource);
	if (block)
		coap_add_option(pdu, COAP_OPTION_BLOCK1,
		                coap_encode_var_safe(opt, sizeof(opt), num << 4 | m << 3 | szx),
		                opt);
	payload = malloc(len ? len : 1);
	memset(payload, fill, len);
	coap_add_data(pdu, len, payload);
	free(payload);
	if (len + 256 > coap_session_max_pdu_size(session))
		coap_session_set_mtu(session, (unsigned)len + 256);
	return pdu;
}

int
main(int argc, char *argv[])
{
	const char *addr = NULL, *identity = NULL, *key = NULL, *resource = "temp";
	long port = 0, limit = 5;
	coap_dtls_cpsk_t cpsk = {.version = COAP_DTLS_CPSK_SETUP_VERSION};
	coap_address_t dst;
	coap_context_t *ctx;
	coap_session_t *session;
	int ch;

	while ((ch = getopt(argc, argv, "a:p:u:k:r:t:")) != -1) {
		switch (ch) {
		case 'a':
			addr = optarg;
			break;
		case 'p':
			port = atol(optarg);
			break;
		case 'u':
			identity = optarg;
			break;
		case 'k':
			key = optarg;
			break;
		case 'r':
			resource = optarg;
			break;
		case 't':
			limit = atol(optarg);
			break;
		default:
			usage();
		}
	}
	if (!addr || !identity || !key || port <= 0 || port > 65535 || limit < 1 || optind >= argc)
		usage();
	coap_startup();
	coap_set_log_level(LOG_EMERG);
	coap_dtls_set_log_level(LOG_EMERG);
	coap_address_init(&dst);
	dst.addr.sin.sin_family = AF_INET;
	dst.addr.sin.sin_port = htons((uint16_t)port);
	dst.size = sizeof(dst.addr.sin);
	if (inet_pton(AF_INET, addr, &dst.addr.sin.sin_addr) != 1)
		usage();
	ctx = coap_new_context(NULL);
	/* No block mode: Block1 options go out as the arguments say. */
	coap_context_set_block_mode(ctx, 0);
	coap_register_response_handler(ctx, on_response);
	coap_register_nack_handler(ctx, on_nack);
	coap_register_event_handler(ctx, on_event);
	cpsk.psk_info.identity.s = (const uint8_t *)identity;
	cpsk.psk_info.identity.length = strlen(identity);
	cpsk.psk_info.key.s = (const uint8_t *)key;
	cpsk.psk_info.key.length = strlen(key);
	session = coap_new_client_session_psk2(ctx, NULL, &dst, COAP_PROTO_DTLS, &cpsk);
	if (!session) {
		fprintf(stderr, "coapraw: cannot create a DTLS session\n");
		return 4;
	}
	for (int i = optind; i < argc; i++) {
		bool twice;
		coap_pdu_t *pdu = build(session, resource, argv[i], &twice), *copy = NULL;
		uint64_t deadline = now_ms() + (uint64_t)limit * 1000;

		if (!pdu) {
			fprintf(stderr, "coapraw: '%s' is not a request\n", argv[i]);
			usage();
		}
		st.answer[0] = '\0';
		if (twice) {
			/* libcoap refuses a second PDU with one message ID in its handshake queue.
			 */
			while (coap_session_get_state(session) != COAP_SESSION_STATE_ESTABLISHED &&
			       !st.closed && now_ms() < deadline)
				coap_io_process(ctx, 50);
			/* NSTART 1 would hold the copy back until the first is answered. */
			coap_session_set_nstart(session, 2);
			copy = coap_pdu_duplicate(pdu, session, st.token_len, st.token, NULL);
			if (copy) {
				/* coap_pdu_duplicate() copies the options, not the payload. */
				const uint8_t *data;
				size_t len;

				coap_pdu_set_mid(copy, coap_pdu_get_mid(pdu));
				if (coap_get_data(pdu, &len, &data))
					coap_add_data(copy, len, data);
			}
		}
		if (coap_send(session, pdu) == COAP_INVALID_MID ||
		    (twice && (!copy || coap_send(session, copy) == COAP_INVALID_MID))) {
			fprintf(stderr, "coapraw: libcoap would not send '%s'\n", argv[i]);
			return 4;
		}
		while (!st.answer[0] && !st.closed && now_ms() < deadline)
			coap_io_process(ctx, 50);
		printf("%s\n", st.closed ? "closed" : st.answer[0] ? st.answer : "none");
		fflush(stdout);
		if (st.closed)
			break;
	}
	coap_session_release(session);
	coap_free_context(ctx);
	coap_cleanup();
	return 0;
}
