/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gwfleet: many test sensors in one process, for tests/bench/fleet.sh. One DTLS-PSK session per
 * "IDENTITY KEY" line of the key file (-K, not group or world readable; no key is printed), all
 * started at once; each POSTs numbered readings ("<identity> <seq>") as confirmable requests,
 * one outstanding, the next as soon as the last is answered 2.04, as gwsensor does; on 5.03
 * the same reading again after Max-Age (at most 2 s). A sensor stops at COUNT readings (-n),
 * at another answer (4.xx, 5.00), or when its session fails. One process rather than one per
 * sensor: starting 1,000 gwsensor processes takes longer than the run it is to measure. The
 * sensors are spread over libcoap contexts of GROUP sessions each: libcoap keeps one list of
 * the CONs awaiting an ACK per context and walks it to insert and to remove one, and walks
 * every session of a context per batch of events, so that 1,000 sessions in one context made
 * this tool, not the server, the bound.
 * Prints, when all are done or after -t seconds (default 60):
 *   gwfleet: <words>
 *   result SENSORS CONNECTED ACKED OTHERS FAILED ALL_UP_S DONE_S RATE P50_MS P99_MS
 * ALL_UP_S: seconds from the start until every sensor had its first reading answered (-1 if
 * some never did); DONE_S: until the last sensor stopped; RATE: readings answered 2.04 per
 * second from ALL_UP_S to the end (so a rate run leaves the handshakes out); P50/P99: from a
 * reading's send to its 2.04, over all of them.
 * With -T each payload also carries the time its reading was first sent, in epoch ms
 * ("<identity> <seq> <epoch-ms>", the same for a resend), as gwsensor -T does, so that a
 * subscriber (tests/tools/mqttstamp) can time its delivery.
 *   gwfleet -a ADDR -p PORT -K KEYFILE [-r RESOURCE] [-n COUNT] [-t SECONDS] [-T]
 */
#include <coap3/coap.h>
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct sensor {
	char identity[128];
	char key[128];
	coap_session_t *session;
	long seq;               /* the reading outstanding (or next) */
	uint64_t sent_us;       /* its first send */
	uint64_t sent_epoch_ms; /* the same, on the wall clock, for -T */
	uint64_t resend_at_us;
	uint8_t token[8];
	size_t token_len;
	bool up;   /* its first reading was answered */
	bool done; /* stopped: COUNT reached, refused, or failed */
};

/* Sessions per libcoap context. */
#define GROUP 16

static struct sensor *sensors;
static size_t nsensors, ndone, nup, acked, others, failed;
static long count = 100000000;
static bool stamp; /* -T */
static const char *resource = "temp";
static uint64_t start_us, all_up_us;
static size_t acked_when_all_up;
/* Sensors whose next reading is due, sent after the batch of events that answered the last. */
static size_t *due, ndue;
/* Send-to-2.04 times in microseconds, of every reading answered. */
static uint32_t *lat;
static size_t nlat, lat_cap;

static uint64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void
finish(struct sensor *s, bool ok)
{
	if (s->done)
		return;
	s->done = true;
	ndone++;
	if (!ok)
		failed++;
}

static void
send_reading(struct sensor *s)
{
	coap_pdu_t *pdu = coap_new_pdu(COAP_MESSAGE_CON, COAP_REQUEST_CODE_POST, s->session);
	char payload[160];

	if (!pdu) {
		finish(s, false);
		return;
	}
	coap_session_new_token(s->session, &s->token_len, s->token);
	coap_add_token(pdu, s->token_len, s->token);
	coap_add_option(pdu, COAP_OPTION_URI_PATH, strlen(resource), (const uint8_t *)resource);
	if (s->resend_at_us == 0) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		s->sent_epoch_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
		s->sent_us = now_us();
	}
	s->resend_at_us = 0;
	if (stamp)
		snprintf(payload, sizeof(payload), "%s %ld %llu", s->identity, s->seq,
		         (unsigned long long)s->sent_epoch_ms);
	else
		snprintf(payload, sizeof(payload), "%s %ld", s->identity, s->seq);
	coap_add_data(pdu, strlen(payload), (const uint8_t *)payload);
	if (coap_send(s->session, pdu) == COAP_INVALID_MID)
		finish(s, false);
}

static coap_response_t
on_response(coap_session_t *session, const coap_pdu_t *sent, const coap_pdu_t *rcvd,
            const coap_mid_t mid)
{
	struct sensor *s = coap_session_get_app_data(session);
	coap_bin_const_t tok = coap_pdu_get_token(rcvd);
	coap_pdu_code_t code = coap_pdu_get_code(rcvd);
	coap_opt_iterator_t it;
	coap_opt_t *opt;

	(void)sent;
	(void)mid;
	if (!s || s->done || tok.length != s->token_len || memcmp(tok.s, s->token, tok.length))
		return COAP_RESPONSE_OK;
	if (code == COAP_RESPONSE_CODE_CHANGED) {
		uint64_t t = now_us();

		if (!s->up) {
			s->up = true;
			if (++nup == nsensors) {
				all_up_us = t;
				acked_when_all_up = acked;
			}
		}
		acked++;
		if (nlat == lat_cap) {
			lat_cap = lat_cap ? 2 * lat_cap : 65536;
			lat = realloc(lat, lat_cap * sizeof(*lat));
			if (!lat)
				abort();
		}
		lat[nlat++] = (uint32_t)(t - s->sent_us);
		s->seq++;
		s->token_len = 0; /* a late copy of this answer is not the next one's */
		if (s->seq > count)
			finish(s, true);
		else
			due[ndue++] = (size_t)(s - sensors);
	} else if (code == COAP_RESPONSE_CODE(503)) {
		unsigned age = 1;

		if ((opt = coap_check_option(rcvd, COAP_OPTION_MAXAGE, &it)))
			age = coap_decode_var_bytes(coap_opt_value(opt), coap_opt_length(opt));
		s->resend_at_us = now_us() + (uint64_t)(age > 2 ? 2 : age) * 1000000;
		s->token_len = 0;
	} else {
		others++;
		finish(s, false);
	}
	return COAP_RESPONSE_OK;
}

static void
on_nack(coap_session_t *session, const coap_pdu_t *sent, const coap_nack_reason_t reason,
        const coap_mid_t mid)
{
	struct sensor *s = coap_session_get_app_data(session);

	(void)sent;
	(void)reason;
	(void)mid;
	if (s)
		finish(s, false);
}

static int
on_event(coap_session_t *session, const coap_event_t event)
{
	struct sensor *s = coap_session_get_app_data(session);

	if (s && (event == COAP_EVENT_DTLS_CLOSED || event == COAP_EVENT_DTLS_ERROR ||
	          event == COAP_EVENT_SESSION_FAILED))
		finish(s, false);
	return 0;
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static int
load_keys(const char *file)
{
	struct stat st;
	char line[300];
	FILE *f = fopen(file, "r");

	if (!f || fstat(fileno(f), &st) < 0) {
		perror(file);
		return -1;
	}
	if (st.st_mode & 077) {
		fprintf(stderr, "gwfleet: %s is readable by others: chmod 600 it\n", file);
		fclose(f);
		return -1;
	}
	while (fgets(line, sizeof(line), f)) {
		struct sensor *s;

		sensors = realloc(sensors, (nsensors + 1) * sizeof(*sensors));
		if (!sensors)
			abort();
		s = &sensors[nsensors];
		memset(s, 0, sizeof(*s));
		if (sscanf(line, "%127s %127s", s->identity, s->key) != 2) {
			fprintf(stderr, "gwfleet: %s:%zu: want IDENTITY KEY\n", file, nsensors + 1);
			fclose(f);
			return -1;
		}
		nsensors++;
	}
	explicit_bzero(line, sizeof(line));
	fclose(f);
	return nsensors > 0 ? 0 : -1;
}

static void
usage(void)
{
	fprintf(stderr, "usage: gwfleet -a ADDR -p PORT -K KEYFILE [-r RESOURCE] [-n COUNT] "
	                "[-t SECONDS] [-T]\n");
	exit(2);
}

int
main(int argc, char *argv[])
{
	const char *addr = NULL, *keys = NULL;
	long port = 0, limit = 60;
	coap_address_t dst;
	coap_context_t **ctxs;
	size_t ngroups;
	uint64_t deadline, end_us, last_scan = 0;
	int ch, epfd;

	while ((ch = getopt(argc, argv, "a:p:K:r:n:t:T")) != -1) {
		switch (ch) {
		case 'a':
			addr = optarg;
			break;
		case 'p':
			port = atol(optarg);
			break;
		case 'K':
			keys = optarg;
			break;
		case 'r':
			resource = optarg;
			break;
		case 'n':
			count = atol(optarg);
			break;
		case 't':
			limit = atol(optarg);
			break;
		case 'T':
			stamp = true;
			break;
		default:
			usage();
		}
	}
	if (!addr || !keys || port <= 0 || port > 65535 || count < 1 || limit < 1)
		usage();
	if (load_keys(keys) < 0)
		return 2;
	due = calloc(nsensors, sizeof(*due));
	if (!due)
		abort();
	coap_startup();
	coap_set_log_level(LOG_EMERG);
	coap_dtls_set_log_level(LOG_EMERG);
	coap_address_init(&dst);
	dst.addr.sin.sin_family = AF_INET;
	dst.addr.sin.sin_port = htons((uint16_t)port);
	dst.size = sizeof(dst.addr.sin);
	if (inet_pton(AF_INET, addr, &dst.addr.sin.sin_addr) != 1)
		usage();
	ngroups = (nsensors + GROUP - 1) / GROUP;
	ctxs = calloc(ngroups, sizeof(*ctxs));
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (!ctxs || epfd < 0)
		abort();
	for (size_t g = 0; g < ngroups; g++) {
		struct epoll_event e = {.events = EPOLLIN, .data.u64 = g};
		int fd;

		ctxs[g] = coap_new_context(NULL);
		fd = ctxs[g] ? coap_context_get_coap_fd(ctxs[g]) : -1;
		if (fd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e) < 0) {
			fprintf(stderr, "gwfleet: libcoap without epoll support\n");
			return 2;
		}
		coap_context_set_block_mode(ctxs[g], COAP_BLOCK_USE_LIBCOAP);
		coap_register_response_handler(ctxs[g], on_response);
		coap_register_nack_handler(ctxs[g], on_nack);
		coap_register_event_handler(ctxs[g], on_event);
	}
	start_us = now_us();
	for (size_t i = 0; i < nsensors; i++) {
		struct sensor *s = &sensors[i];
		coap_dtls_cpsk_t cpsk = {.version = COAP_DTLS_CPSK_SETUP_VERSION};

		cpsk.psk_info.identity.s = (const uint8_t *)s->identity;
		cpsk.psk_info.identity.length = strlen(s->identity);
		cpsk.psk_info.key.s = (const uint8_t *)s->key;
		cpsk.psk_info.key.length = strlen(s->key);
		s->seq = 1;
		s->session = coap_new_client_session_psk2(ctxs[i / GROUP], NULL, &dst,
		                                          COAP_PROTO_DTLS, &cpsk);
		if (!s->session) {
			finish(s, false);
			continue;
		}
		coap_session_set_app_data(s->session, s);
		/* Queued until the handshake is done, then sent. */
		send_reading(s);
	}
	deadline = start_us + (uint64_t)limit * 1000000;
	while (ndone < nsensors && now_us() < deadline) {
		struct epoll_event ready[64];
		int n = epoll_wait(epfd, ready, 64, 20);
		uint64_t t;

		/* Each context: what is ready on it, one walk of its sessions per batch. */
		for (int i = 0; i < n; i++) {
			coap_context_t *ctx = ctxs[ready[i].data.u64];
			struct epoll_event ev[GROUP + 4];
			int m = epoll_wait(coap_context_get_coap_fd(ctx), ev, GROUP + 4, 0);

			if (m > 0)
				coap_io_do_epoll(ctx, ev, (size_t)m);
		}
		while (ndue > 0)
			send_reading(&sensors[due[--ndue]]);
		/* After a 5.03, at its Max-Age: looked for at most every 50 ms. */
		t = now_us();
		if (t - last_scan >= 50000) {
			last_scan = t;
			for (size_t i = 0; i < nsensors; i++) {
				struct sensor *s = &sensors[i];

				if (!s->done && s->resend_at_us && s->resend_at_us <= t)
					send_reading(s);
			}
		}
	}
	end_us = now_us();
	qsort(lat, nlat, sizeof(*lat), cmp_u32);
	{
		double all_up = all_up_us ? (double)(all_up_us - start_us) / 1e6 : -1;
		double done = (double)(end_us - start_us) / 1e6;
		double window = all_up_us ? (double)(end_us - all_up_us) / 1e6 : 0;
		size_t in_window = acked - acked_when_all_up;

		printf("gwfleet: %zu sensors, %zu up, %zu readings answered 2.04, %zu other "
		       "answers, "
		       "%zu failed, all up after %.2f s, done after %.2f s\n",
		       nsensors, nup, acked, others, failed, all_up, done);
		printf("result %zu %zu %zu %zu %zu %.3f %.3f %.0f %.1f %.1f\n", nsensors, nup,
		       acked, others, failed, all_up, done,
		       window > 0 ? (double)in_window / window : 0,
		       nlat ? lat[nlat / 2] / 1000.0 : 0, nlat ? lat[nlat * 99 / 100] / 1000.0 : 0);
	}
	for (size_t i = 0; i < nsensors; i++)
		if (sensors[i].session)
			coap_session_release(sensors[i].session);
	for (size_t g = 0; g < ngroups; g++)
		coap_free_context(ctxs[g]);
	free(ctxs);
	close(epfd);
	coap_cleanup();
	explicit_bzero(sensors, nsensors * sizeof(*sensors));
	free(sensors);
	free(lat);
	free(due);
	return 0;
}
