/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gwsensor: a test sensor. Keeps one DTLS-PSK session to the gateway and POSTs numbered
 * readings ("<identity> <seq>") as confirmable requests, one after another, the way a real
 * sensor must: a reading is done only when answered 2.04; on 5.03 the same reading is sent
 * again after Max-Age (at most 2 s here). Prints one line per answer:
 *   <epoch-ms> <seq> <code>        e.g. "1795310000123 17 2.04"
 * "<epoch-ms> <seq> closed" if the gateway closes the session or stops answering, and
 * "<epoch-ms> <seq> stopped" when the time limit ends the run with that reading unanswered.
 * With -T the payload also carries the time the reading was first sent, in epoch ms ("<identity>
 * <seq> <epoch-ms>"; the same for every resend of that reading), so that a subscriber can time
 * its delivery end to end.
 * With -R each reading acknowledged is sent once more, the same CON with the same message ID,
 * as by a sensor whose ACK was lost (RFC 7252 section 4.2); its answer is printed as
 *   <epoch-ms> <seq> again <code>
 * Before the copy goes, a GET of the resource (answered 4.05) takes the place of the last ACK
 * seen: libcoap drops an ACK with the message ID of the ACK it saw last as a duplicate, so a
 * copy sent right after its answer came would go unanswered here, whatever the gateway did.
 * Exit status: 0 all sent, 3 refused (4.xx), 4 session closed or unanswered, 2 usage.
 * Bounded: COUNT readings, and at most -t seconds in all.
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
	int code; /* last response class*100+detail, 0 none yet */
	unsigned max_age;
	bool closed;
	coap_bin_const_t token;
	uint8_t token_buf[8];
} st;

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static coap_response_t
on_response(coap_session_t *s, const coap_pdu_t *sent, const coap_pdu_t *rcvd, const coap_mid_t mid)
{
	coap_bin_const_t tok = coap_pdu_get_token(rcvd);
	coap_opt_iterator_t it;
	coap_opt_t *opt;

	(void)s;
	(void)sent;
	(void)mid;
	if (tok.length != st.token.length || memcmp(tok.s, st.token.s, tok.length) != 0)
		return COAP_RESPONSE_OK;
	st.code = COAP_RESPONSE_CLASS(coap_pdu_get_code(rcvd)) * 100 +
	          (coap_pdu_get_code(rcvd) & 0x1f);
	st.max_age = 1;
	opt = coap_check_option(rcvd, COAP_OPTION_MAXAGE, &it);
	if (opt)
		st.max_age = coap_decode_var_bytes(coap_opt_value(opt), coap_opt_length(opt));
	return COAP_RESPONSE_OK;
}

static void
on_nack(coap_session_t *s, const coap_pdu_t *sent, const coap_nack_reason_t reason,
        const coap_mid_t mid)
{
	(void)s;
	(void)sent;
	(void)reason;
	(void)mid;
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
	fprintf(stderr,
	        "usage: gwsensor -a ADDR -p PORT -u IDENTITY -k KEY [-r RESOURCE] [-n COUNT] "
	        "[-i INTERVAL_MS] [-s FIRST_SEQ] [-t SECONDS] [-R] [-T]\n");
	exit(2);
}

int
main(int argc, char *argv[])
{
	const char *addr = NULL, *identity = NULL, *key = NULL, *resource = "temp";
	long count = 10, interval = 0, seq = 1, port = 0, limit = 60;
	coap_dtls_cpsk_t cpsk = {.version = COAP_DTLS_CPSK_SETUP_VERSION};
	coap_address_t dst;
	coap_context_t *ctx;
	coap_session_t *session;
	uint64_t deadline, first_sent = 0;
	long first_sent_seq = 0;
	int ch, status = 0;
	bool again = false, stamp = false;

	while ((ch = getopt(argc, argv, "a:p:u:k:r:n:i:s:t:RT")) != -1) {
		switch (ch) {
		case 'R':
			again = true;
			break;
		case 'T':
			stamp = true;
			break;
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
		case 'n':
			count = atol(optarg);
			break;
		case 'i':
			interval = atol(optarg);
			break;
		case 's':
			seq = atol(optarg);
			break;
		case 't':
			limit = atol(optarg);
			break;
		default:
			usage();
		}
	}
	if (!addr || !identity || !key || port <= 0 || port > 65535 || count < 1 || limit < 1)
		usage();
	first_sent_seq = seq - 1;
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
	coap_context_set_block_mode(ctx, COAP_BLOCK_USE_LIBCOAP);
	coap_register_response_handler(ctx, on_response);
	coap_register_nack_handler(ctx, on_nack);
	coap_register_event_handler(ctx, on_event);
	cpsk.psk_info.identity.s = (const uint8_t *)identity;
	cpsk.psk_info.identity.length = strlen(identity);
	cpsk.psk_info.key.s = (const uint8_t *)key;
	cpsk.psk_info.key.length = strlen(key);
	session = coap_new_client_session_psk2(ctx, NULL, &dst, COAP_PROTO_DTLS, &cpsk);
	if (!session) {
		fprintf(stderr, "gwsensor: cannot create a DTLS session\n");
		return 4;
	}
	deadline = now_ms() + (uint64_t)limit * 1000;
	for (long sent = 0; sent < count && status == 0;) {
		char payload[160];
		coap_pdu_t *pdu = coap_new_pdu(COAP_MESSAGE_CON, COAP_REQUEST_CODE_POST, session);
		coap_mid_t mid;
		size_t toklen;

		coap_session_new_token(session, &toklen, st.token_buf);
		st.token.s = st.token_buf;
		st.token.length = toklen;
		st.code = 0;
		coap_add_token(pdu, toklen, st.token_buf);
		coap_add_option(pdu, COAP_OPTION_URI_PATH, strlen(resource),
		                (const uint8_t *)resource);
		if (first_sent_seq != seq) {
			first_sent_seq = seq;
			first_sent = now_ms();
		}
		if (stamp)
			snprintf(payload, sizeof(payload), "%s %ld %llu", identity, seq,
			         (unsigned long long)first_sent);
		else
			snprintf(payload, sizeof(payload), "%s %ld", identity, seq);
		coap_add_data(pdu, strlen(payload), (const uint8_t *)payload);
		mid = coap_pdu_get_mid(pdu);
		coap_send(session, pdu);
		while (st.code == 0 && !st.closed && now_ms() < deadline)
			coap_io_process(ctx, 50);
		if (st.code == 0 && !st.closed) {
			/* Out of time, the reading still unanswered: it stays the sensor's. */
			printf("%llu %ld stopped\n", (unsigned long long)now_ms(), seq);
			break;
		}
		if (st.code == 0) {
			printf("%llu %ld closed\n", (unsigned long long)now_ms(), seq);
			status = 4;
			break;
		}
		printf("%llu %ld %d.%02d\n", (unsigned long long)now_ms(), seq, st.code / 100,
		       st.code % 100);
		fflush(stdout);
		if (again && st.code == 204) {
			coap_pdu_t *get =
			        coap_new_pdu(COAP_MESSAGE_CON, COAP_REQUEST_CODE_GET, session);
			coap_pdu_t *dup;
			uint8_t get_token[8];
			size_t get_toklen;

			coap_session_new_token(session, &get_toklen, get_token);
			coap_add_token(get, get_toklen, get_token);
			coap_add_option(get, COAP_OPTION_URI_PATH, strlen(resource),
			                (const uint8_t *)resource);
			st.token.s = get_token;
			st.token.length = get_toklen;
			st.code = 0;
			coap_send(session, get);
			while (st.code == 0 && !st.closed && now_ms() < deadline)
				coap_io_process(ctx, 50);
			st.token.s = st.token_buf;
			st.token.length = toklen;
			dup = coap_pdu_init(COAP_MESSAGE_CON, COAP_REQUEST_CODE_POST, mid,
			                    coap_session_max_pdu_size(session));
			coap_add_token(dup, toklen, st.token_buf);
			coap_add_option(dup, COAP_OPTION_URI_PATH, strlen(resource),
			                (const uint8_t *)resource);
			coap_add_data(dup, strlen(payload), (const uint8_t *)payload);
			st.code = 0;
			coap_send(session, dup);
			while (st.code == 0 && !st.closed && now_ms() < deadline)
				coap_io_process(ctx, 50);
			printf("%llu %ld again %d.%02d\n", (unsigned long long)now_ms(), seq,
			       st.code / 100, st.code % 100);
			fflush(stdout);
			st.code = 204;
		}
		if (st.code == 204) {
			seq++;
			sent++;
			if (interval > 0)
				usleep((useconds_t)interval * 1000);
		} else if (st.code == 503) {
			usleep((st.max_age > 2 ? 2 : st.max_age) * 1000000u);
		} else {
			status = 3;
		}
		if (now_ms() >= deadline)
			break;
	}
	fflush(stdout);
	coap_session_release(session);
	coap_free_context(ctx);
	coap_cleanup();
	return status;
}
