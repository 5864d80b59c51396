/* SPDX-License-Identifier: Apache-2.0 */
/*
 * coapsink: libcoap serving a DTLS-PSK load alone, the baseline of tests/bench/uplink-baselines.sh.
 * It answers every POST or PUT, on any path, with 2.04 at once, and does nothing else. To be a
 * fair baseline, not a straw man, it sets libcoap up the way bridges/coap/coapbr.c does:
 *   - one DTLS endpoint, PSKs looked up per identity in libcoap's identity callback (unknown
 *     identities refused: no default key), block mode COAP_BLOCK_USE_LIBCOAP;
 *   - the same receive buffer on its UDP socket (4 MiB, gatewayd's sensors.receive_buffer
 *     default; DESIGN.md 2) and the same session limits (idle sessions = sensors.max_sessions,
 *     handshakes = the fleet, at least libcoap's 100);
 *   - driven by its coap fd through bridges/coap/coapio.c, as coapbr.c's coap_ready() is: up
 *     to 64 datagrams per wakeup, libcoap's sessions walked once per round of reads, not
 *     once per datagram.
 * Keys come from a file (-K), one "IDENTITY KEY" a line, which must not be group or world
 * readable; no key is ever printed.
 * With -S the 2.04 is a separate response (RFC 7252 section 5.2.2) due at once, as gatewayd
 * answers an uplink (an empty ACK, then a CON the sensor acknowledges): the same exchange
 * shape as the gateway's, twice the datagrams of a piggy-backed answer.
 * Prints "coapsink: N requests answered, S DTLS sessions" when it ends: at SIGTERM or SIGINT,
 * or after -t seconds (default 600), so that it never outlives a run.
 *   coapsink -a ADDR -p PORT -K KEYFILE [-b RCVBUF_BYTES] [-m MAX_SESSIONS] [-t SECONDS] [-S]
 */
#include "coapio.h"

#include <coap3/coap.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct psk_entry {
	char *identity;
	size_t identity_len;
	coap_bin_const_t key;
};

static struct psk_entry *psks;
static size_t npsks;
static unsigned long answered, sessions;
static volatile sig_atomic_t stop;
static bool separate;

static void
on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static int
psk_cmp(const void *a, const void *b)
{
	const struct psk_entry *x = a, *y = b;
	size_t n = x->identity_len < y->identity_len ? x->identity_len : y->identity_len;
	int c = memcmp(x->identity, y->identity, n);

	if (c)
		return c;
	return (x->identity_len > y->identity_len) - (x->identity_len < y->identity_len);
}

/* Reads KEYFILE into psks, sorted by identity: 0, or -1 (said why). */
static int
read_keys(const char *path)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	struct stat st;
	unsigned lineno = 0;

	if (!f) {
		fprintf(stderr, "coapsink: %s: %s\n", path, strerror(errno));
		return -1;
	}
	/* It holds secrets: the same rule gatewayd applies to its own files (DESIGN.md 7). */
	if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077)) {
		fprintf(stderr, "coapsink: %s: readable by group or others: chmod 600 it\n", path);
		fclose(f);
		return -1;
	}
	while ((len = getline(&line, &cap, f)) >= 0) {
		char *sp;
		struct psk_entry *more;

		lineno++;
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		if (len == 0 || line[0] == '#')
			continue;
		sp = strchr(line, ' ');
		if (!sp || sp == line || sp[1] == '\0') {
			fprintf(stderr, "coapsink: %s:%u: want \"IDENTITY KEY\"\n", path, lineno);
			goto fail;
		}
		more = reallocarray(psks, npsks + 1, sizeof(*psks));
		if (!more)
			goto fail;
		psks = more;
		psks[npsks].identity = strndup(line, (size_t)(sp - line));
		psks[npsks].identity_len = (size_t)(sp - line);
		psks[npsks].key.s = (const uint8_t *)strdup(sp + 1);
		psks[npsks].key.length = strlen(sp + 1);
		if (!psks[npsks].identity || !psks[npsks].key.s)
			goto fail;
		npsks++;
	}
	explicit_bzero(line, cap);
	free(line);
	fclose(f);
	if (npsks == 0) {
		fprintf(stderr, "coapsink: %s: no keys\n", path);
		return -1;
	}
	qsort(psks, npsks, sizeof(*psks), psk_cmp);
	return 0;
fail:
	if (line)
		explicit_bzero(line, cap);
	free(line);
	fclose(f);
	return -1;
}

static void
free_keys(void)
{
	for (size_t i = 0; i < npsks; i++) {
		free(psks[i].identity);
		explicit_bzero((void *)psks[i].key.s, psks[i].key.length);
		free((void *)psks[i].key.s);
	}
	free(psks);
}

/* The per-identity lookup; NULL (handshake refused) for an identity not in the file. */
static const coap_bin_const_t *
psk_for_identity(coap_bin_const_t *identity, coap_session_t *session, void *arg)
{
	struct psk_entry want, *e;

	(void)session;
	(void)arg;
	if (!identity)
		return NULL;
	want.identity = (char *)identity->s;
	want.identity_len = identity->length;
	e = bsearch(&want, psks, npsks, sizeof(*psks), psk_cmp);
	return e ? &e->key : NULL;
}

static void
on_request(coap_resource_t *resource, coap_session_t *session, const coap_pdu_t *request,
           const coap_string_t *query, coap_pdu_t *response)
{
	coap_async_t *async;

	(void)resource;
	(void)query;
	if (separate) {
		/*
		 * The exchange gatewayd has (coapbr.c handle_uplink()): an empty ACK now, the 2.04
		 * later as a CON of its own, which the sensor acknowledges. Here "later" is the
		 * next coap_io_process(): the answer is due at once.
		 */
		async = coap_find_async(session, coap_pdu_get_token(request));
		/* Called again once triggered: libcoap frees the async after this call. */
		if (!async) {
			async = coap_register_async(session, request, 0);
			if (async) {
				coap_async_trigger(async);
				return;
			}
		}
	}
	coap_pdu_set_code(response, COAP_RESPONSE_CODE_CHANGED);
	answered++;
}

static int
on_event(coap_session_t *session, const coap_event_t event)
{
	(void)session;
	if (event == COAP_EVENT_DTLS_CONNECTED)
		sessions++;
	return 0;
}

/* As coapbr.c's grow_receive_buffer(): libcoap 4.3.1 does not expose the endpoint's socket. */
static void
grow_receive_buffer(uint16_t port, int bytes)
{
	DIR *dir = opendir("/proc/self/fd");
	struct dirent *de;

	if (!dir)
		return;
	while ((de = readdir(dir))) {
		struct sockaddr_in sin;
		socklen_t sl = sizeof(sin), tl;
		int fd = atoi(de->d_name), type, got = 0;

		if (de->d_name[0] == '.' || fd == dirfd(dir))
			continue;
		tl = sizeof(type);
		if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_DGRAM)
			continue;
		if (getsockname(fd, (struct sockaddr *)&sin, &sl) < 0 ||
		    sin.sin_family != AF_INET || ntohs(sin.sin_port) != port)
			continue;
		if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) < 0)
			setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
		tl = sizeof(got);
		getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &got, &tl);
		/* The kernel reports twice what it was asked for (socket(7)). */
		if (got / 2 < bytes)
			fprintf(stderr, "coapsink: receive buffer is %d bytes, not %d\n", got / 2,
			        bytes);
	}
	closedir(dir);
}

static void
usage(void)
{
	fprintf(stderr, "usage: coapsink -a ADDR -p PORT -K KEYFILE [-b RCVBUF_BYTES] "
	                "[-m MAX_SESSIONS] [-t SECONDS] [-S]\n");
	exit(2);
}

int
main(int argc, char *argv[])
{
	const char *addr = NULL, *keyfile = NULL;
	long port = 0, rcvbuf = 4 << 20, max_sessions = 2000, limit = 600;
	coap_dtls_spsk_t spsk = {.version = COAP_DTLS_SPSK_SETUP_VERSION};
	coap_address_t laddr;
	coap_context_t *ctx;
	coap_resource_t *r;
	struct sigaction sa = {.sa_handler = on_signal};
	struct timespec t0, now;
	int ch, fd;

	while ((ch = getopt(argc, argv, "a:p:K:b:m:t:S")) != -1) {
		switch (ch) {
		case 'S':
			separate = true;
			break;
		case 'a':
			addr = optarg;
			break;
		case 'p':
			port = atol(optarg);
			break;
		case 'K':
			keyfile = optarg;
			break;
		case 'b':
			rcvbuf = atol(optarg);
			break;
		case 'm':
			max_sessions = atol(optarg);
			break;
		case 't':
			limit = atol(optarg);
			break;
		default:
			usage();
		}
	}
	if (!addr || !keyfile || port <= 0 || port > 65535 || rcvbuf < 65536 ||
	    rcvbuf > (256 << 20) || max_sessions < 1 || limit < 1)
		usage();
	if (read_keys(keyfile) < 0)
		return 1;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	coap_startup();
	/* gatewayd's levels below debug (coapbr.c set_libcoap_log_level()). */
	coap_set_log_level(LOG_ERR);
	coap_dtls_set_log_level(LOG_ERR);
	coap_address_init(&laddr);
	laddr.addr.sin.sin_family = AF_INET;
	laddr.addr.sin.sin_port = htons((uint16_t)port);
	laddr.size = sizeof(laddr.addr.sin);
	if (inet_pton(AF_INET, addr, &laddr.addr.sin.sin_addr) != 1)
		usage();
	ctx = coap_new_context(NULL);
	if (!ctx)
		return 1;
	spsk.validate_id_call_back = psk_for_identity;
	if (!coap_context_set_psk2(ctx, &spsk)) {
		fprintf(stderr, "coapsink: libcoap was built without DTLS PSK support\n");
		return 1;
	}
	coap_context_set_block_mode(ctx, COAP_BLOCK_USE_LIBCOAP);
	coap_context_set_max_idle_sessions(ctx, (unsigned)max_sessions);
	coap_context_set_max_handshake_sessions(
	        ctx, (unsigned)(npsks > 100 ? (npsks < (size_t)max_sessions ? npsks
	                                                                    : (size_t)max_sessions)
	                                    : 100));
	coap_register_event_handler(ctx, on_event);
	if (!coap_new_endpoint(ctx, &laddr, COAP_PROTO_DTLS)) {
		fprintf(stderr, "coapsink: cannot listen on %s port %ld\n", addr, port);
		return 1;
	}
	grow_receive_buffer((uint16_t)port, (int)rcvbuf);
	r = coap_resource_unknown_init2(on_request, 0);
	coap_register_request_handler(r, COAP_REQUEST_POST, on_request);
	coap_add_resource(ctx, r);
	fd = coap_context_get_coap_fd(ctx);
	if (fd < 0) {
		fprintf(stderr, "coapsink: libcoap was built without epoll support\n");
		return 1;
	}
	printf("coapsink: listening on %s port %ld, %zu identities\n", addr, port, npsks);
	fflush(stdout);

	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (!stop) {
		struct pollfd p = {.fd = fd, .events = POLLIN};

		/* The wait bounds the time to notice a signal or the end; no timer of ours runs. */
		/* libcoap's timer is in the set: its timeouts wake this too. */
		if (poll(&p, 1, 100) > 0)
			coapio_drain(ctx);
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - t0.tv_sec >= limit)
			break;
	}
	printf("coapsink: %lu requests answered, %lu DTLS sessions\n", answered, sessions);
	coap_free_context(ctx);
	coap_cleanup();
	free_keys();
	return 0;
}
