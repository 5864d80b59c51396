/* SPDX-License-Identifier: Apache-2.0 */
/*
 * mqttload: N direct MQTT 5 publishers over mutual TLS in one process, the other baseline of
 * tests/bench/uplink-baselines.sh. Device i (ID = PREFIX + i, i from 1) connects with its own
 * certificate and key, DIR/FILEPREFIX + ID + ".pem"/".key", as client id ID, and publishes
 * "ID SEQ" to devices/ID/telemetry/temp, QoS 1 (or -q), with one publish outstanding: the next
 * leaves when the PUBACK of the last arrives, back to back, for -t seconds.
 * The clients are set up as the gateway's upstream sessions are (MQTT 5 with clean start, no
 * persistence, keepalive 60 s, the server's chain checked against the CA file only and its
 * host name verified), each with its own SSL_CTX, on libmosquitto, all driven by one thread
 * and one poll() loop (mosquitto_loop_read/write), as gatewayd's one event loop drives its
 * sessions.
 * Prints, once all connected and the time is out (publishes acknowledged within it count):
 *   mqttload: N clients, A acknowledged in S s: R/s, latency p50 X ms, p99 Y ms, F failed,
 *             C s CPU
 *   result A S X Y C
 * latency being from mosquitto_publish_v5() to the PUBACK's callback (QoS 0: to the publish's
 * leaving), C the CPU time (user + system) of this process during the run. Exit status: 0, 1
 * if a client could not connect within 30 s or a publish failed, 2 usage.
 * URI is mqtts://HOST:PORT (ssl:// as well; port 8883 if none).
 *   mqttload -H URI -C CAFILE -d DIR [-f FILEPREFIX] [-P PREFIX] -n N [-t SECONDS] [-q QOS]
 */
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <openssl/ssl.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

struct client {
	struct mosquitto *m;
	char id[64];
	char topic[128];
	char *cert, *key;
	long seq;
	uint64_t sent_us;
	uint32_t *lat_us; /* one per publish acknowledged within the run */
	size_t nlat, caplat;
	bool outstanding, connected, failed;
	bool due; /* its next publish, to leave from the loop */
};

static struct client *clients;
static long nclients;
static int qos = 1;
/* One thread does everything: plain counters. */
static long connected, failed_connects, failed_publishes, outstanding, due;
static bool running;
static uint64_t deadline_us;
static struct pollfd *pfds;
static struct client **pclients;

static double
cpu_seconds(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static uint64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void publish_next(struct client *c);

static void
publish_done(struct client *c, int reason)
{
	uint64_t t = now_us();

	if (!c->outstanding)
		return;
	c->outstanding = false;
	outstanding--;
	if (reason >= 0x80) {
		fprintf(stderr, "mqttload: %s: publish %ld failed: %s (reason %d)\n", c->id, c->seq,
		        mosquitto_reason_string(reason), reason);
		failed_publishes++;
		return;
	}
	if (t <= deadline_us) {
		if (c->nlat == c->caplat) {
			size_t cap = c->caplat ? 2 * c->caplat : 1024;
			uint32_t *more = reallocarray(c->lat_us, cap, sizeof(*more));

			if (more) {
				c->lat_us = more;
				c->caplat = cap;
			}
		}
		if (c->nlat < c->caplat)
			c->lat_us[c->nlat++] =
			        (uint32_t)(t - c->sent_us < UINT32_MAX ? t - c->sent_us
			                                               : UINT32_MAX);
	}
	c->seq++;
	/*
	 * Not from here: inside a callback libmosquitto only queues the packet, and its write
	 * loop, which may be what called us, would send the next one and call back again, so
	 * that with QoS 0 one client would publish alone until the end.
	 */
	if (running && t < deadline_us) {
		c->due = true;
		due++;
	}
}

static void
on_published(struct mosquitto *m, void *ctx, int mid, int reason, const mosquitto_property *p)
{
	(void)m;
	(void)mid;
	(void)p;
	publish_done(ctx, reason);
}

static void
publish_next(struct client *c)
{
	char payload[96];
	int rc;

	snprintf(payload, sizeof(payload), "%s %ld", c->id, c->seq);
	c->outstanding = true;
	outstanding++;
	c->sent_us = now_us();
	/* Outside a callback the packet leaves at once; inside one, at the next write. */
	rc = mosquitto_publish_v5(c->m, NULL, c->topic, (int)strlen(payload), payload, qos, false,
	                          NULL);
	if (rc != MOSQ_ERR_SUCCESS && c->outstanding) {
		fprintf(stderr, "mqttload: %s: cannot publish: %s\n", c->id,
		        mosquitto_strerror(rc));
		failed_publishes++;
		c->outstanding = false;
		outstanding--;
	}
}

static void
on_connected(struct mosquitto *m, void *ctx, int rc, int flags, const mosquitto_property *p)
{
	struct client *c = ctx;

	(void)m;
	(void)flags;
	(void)p;
	if (rc != 0) {
		fprintf(stderr, "mqttload: %s: connect failed: %s (reason %d)\n", c->id,
		        mosquitto_reason_string(rc), rc);
		c->failed = true;
		failed_connects++;
		return;
	}
	c->connected = true;
	connected++;
}

static void
on_disconnected(struct mosquitto *m, void *ctx, int rc, const mosquitto_property *p)
{
	struct client *c = ctx;

	(void)m;
	(void)p;
	if (rc == 0)
		return;
	fprintf(stderr, "mqttload: %s: connection lost: %s\n", c->id, mosquitto_strerror(rc));
	if (!c->connected && !c->failed) {
		c->failed = true;
		failed_connects++;
	}
	c->connected = false;
	/* An answer that cannot come any more. */
	if (c->outstanding) {
		c->outstanding = false;
		outstanding--;
		failed_publishes++;
	}
}

/*
 * One turn of the loop: poll() every client's socket for up to timeout_ms, then read and
 * write what is ready. Callbacks (CONNACK, PUBACK) run from here, in this thread.
 */
static void
pump(int timeout_ms)
{
	static uint64_t last_misc;
	nfds_t n = 0;
	uint64_t t;

	for (long i = 0; i < nclients; i++) {
		struct client *c = &clients[i];
		int fd = c->m ? mosquitto_socket(c->m) : -1;

		if (fd < 0)
			continue;
		pfds[n] = (struct pollfd){.fd = fd, .events = POLLIN};
		if (mosquitto_want_write(c->m))
			pfds[n].events |= POLLOUT;
		pclients[n++] = c;
	}
	if (n == 0) {
		usleep((useconds_t)timeout_ms * 1000);
		return;
	}
	if (poll(pfds, n, due > 0 ? 0 : timeout_ms) > 0) {
		for (nfds_t i = 0; i < n; i++) {
			struct client *c = pclients[i];
			short ev = pfds[i].revents;

			if (ev & (POLLIN | POLLERR | POLLHUP)) {
				/* and what OpenSSL already holds decrypted, which poll() cannot see
				 */
				int rounds = 0;

				while (mosquitto_loop_read(c->m, 1) == MOSQ_ERR_SUCCESS &&
				       mosquitto_ssl_get(c->m) &&
				       SSL_pending(mosquitto_ssl_get(c->m)) > 0 && ++rounds < 64)
					;
			}
			if ((ev & POLLOUT) && mosquitto_socket(c->m) >= 0)
				mosquitto_loop_write(c->m, 1);
		}
	}
	/* the publishes answered meanwhile are followed by the next, outside any callback */
	for (long i = 0; due > 0 && i < nclients; i++) {
		if (!clients[i].due)
			continue;
		clients[i].due = false;
		due--;
		if (running && now_us() < deadline_us)
			publish_next(&clients[i]);
	}
	/* keepalive pings */
	t = now_us();
	if (t - last_misc > 1000000) {
		last_misc = t;
		for (long i = 0; i < nclients; i++)
			if (clients[i].m)
				mosquitto_loop_misc(clients[i].m);
	}
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return (x > y) - (x < y);
}

static char *
path_of(const char *dir, const char *prefix, const char *id, const char *ext)
{
	char *p;

	if (asprintf(&p, "%s/%s%s%s", dir, prefix, id, ext) < 0)
		return NULL;
	return p;
}

/* mqtts://HOST:PORT (or ssl://) into host and port. */
static int
parse_uri(const char *uri, char *host, size_t len, int *port)
{
	const char *p = strstr(uri, "://"), *colon;

	p = p ? p + 3 : uri;
	colon = strrchr(p, ':');
	*port = 8883;
	if (colon) {
		*port = atoi(colon + 1);
		if (*port < 1 || *port > 65535)
			return -1;
	} else {
		colon = p + strlen(p);
	}
	if (colon == p || (size_t)(colon - p) >= len)
		return -1;
	memcpy(host, p, (size_t)(colon - p));
	host[colon - p] = '\0';
	return 0;
}

static void
usage(void)
{
	fprintf(stderr, "usage: mqttload -H URI -C CAFILE -d DIR [-f FILEPREFIX] [-P PREFIX] -n N "
	                "[-t SECONDS] [-q QOS]\n");
	exit(2);
}

int
main(int argc, char *argv[])
{
	const char *uri = NULL, *ca = NULL, *dir = NULL, *fileprefix = "", *prefix = "dev-";
	char host[256];
	int port;
	long secs = 10;
	uint64_t t0, t_end, wait_until;
	uint32_t *all;
	size_t total = 0;
	double cpu0, cpu;
	int ch, status = 0;

	while ((ch = getopt(argc, argv, "H:C:d:f:P:n:t:q:")) != -1) {
		switch (ch) {
		case 'H':
			uri = optarg;
			break;
		case 'C':
			ca = optarg;
			break;
		case 'd':
			dir = optarg;
			break;
		case 'f':
			fileprefix = optarg;
			break;
		case 'P':
			prefix = optarg;
			break;
		case 'n':
			nclients = atol(optarg);
			break;
		case 't':
			secs = atol(optarg);
			break;
		case 'q':
			qos = atoi(optarg);
			break;
		default:
			usage();
		}
	}
	if (!uri || !ca || !dir || nclients < 1 || nclients > 100000 || secs < 1 || secs > 3600 ||
	    qos < 0 || qos > 2 || parse_uri(uri, host, sizeof(host), &port) < 0)
		usage();
	clients = calloc((size_t)nclients, sizeof(*clients));
	pfds = calloc((size_t)nclients, sizeof(*pfds));
	pclients = calloc((size_t)nclients, sizeof(*pclients));
	if (!clients || !pfds || !pclients)
		return 1;
	mosquitto_lib_init();

	for (long i = 0; i < nclients; i++) {
		struct client *c = &clients[i];
		int rc;

		snprintf(c->id, sizeof(c->id), "%s%ld", prefix, i + 1);
		snprintf(c->topic, sizeof(c->topic), "devices/%s/telemetry/temp", c->id);
		c->seq = 1;
		c->cert = path_of(dir, fileprefix, c->id, ".pem");
		c->key = path_of(dir, fileprefix, c->id, ".key");
		if (!c->cert || !c->key)
			return 1;
		/* clean start, no persistence */
		c->m = mosquitto_new(c->id, true, c);
		if (!c->m) {
			fprintf(stderr, "mqttload: %s: cannot create a client\n", c->id);
			return 1;
		}
		mosquitto_int_option(c->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
		mosquitto_connect_v5_callback_set(c->m, on_connected);
		mosquitto_disconnect_v5_callback_set(c->m, on_disconnected);
		mosquitto_publish_v5_callback_set(c->m, on_published);
		/* The CA file only; the server's chain verified, and its host name (the default).
		 */
		rc = mosquitto_tls_set(c->m, ca, NULL, c->cert, c->key, NULL);
		if (rc == MOSQ_ERR_SUCCESS)
			rc = mosquitto_tls_opts_set(c->m, 1, NULL, NULL);
		if (rc != MOSQ_ERR_SUCCESS) {
			fprintf(stderr, "mqttload: %s: TLS set-up: %s\n", c->id,
			        mosquitto_strerror(rc));
			return 1;
		}
		/* TCP connects here; TLS and CONNECT go on in the loop below. */
		rc = mosquitto_connect_bind_v5(c->m, host, port, 60, NULL, NULL);
		if (rc != MOSQ_ERR_SUCCESS) {
			fprintf(stderr, "mqttload: %s: cannot start connecting: %s\n", c->id,
			        mosquitto_strerror(rc));
			c->failed = true;
			failed_connects++;
		}
	}
	wait_until = now_us() + 30 * 1000000ull;
	while (connected + failed_connects < nclients && now_us() < wait_until)
		pump(10);
	if (connected < nclients) {
		fprintf(stderr, "mqttload: only %ld of %ld clients connected\n", connected,
		        nclients);
		status = 1;
		goto out;
	}

	/* Everyone connected: the run starts now, with one publish per client. */
	cpu0 = cpu_seconds();
	t0 = now_us();
	deadline_us = t0 + (uint64_t)secs * 1000000;
	running = true;
	for (long i = 0; i < nclients; i++)
		publish_next(&clients[i]);
	while (now_us() < deadline_us)
		pump(10);
	running = false;
	t_end = now_us();
	cpu = cpu_seconds() - cpu0;
	/* What is still in flight is answered soon; bounded regardless. */
	wait_until = t_end + 10 * 1000000ull;
	while (outstanding > 0 && now_us() < wait_until)
		pump(10);

	for (long i = 0; i < nclients; i++)
		total += clients[i].nlat;
	all = calloc(total ? total : 1, sizeof(*all));
	if (!all) {
		status = 1;
		goto out;
	}
	total = 0;
	for (long i = 0; i < nclients; i++) {
		if (clients[i].nlat == 0)
			continue;
		memcpy(all + total, clients[i].lat_us, clients[i].nlat * sizeof(*all));
		total += clients[i].nlat;
	}
	qsort(all, total, sizeof(*all), cmp_u32);
	{
		double s = (double)(deadline_us - t0) / 1e6;
		double p50 = total ? all[(size_t)((double)total * 0.50)] / 1000.0 : 0;
		double p99 = total ? all[(size_t)((double)total * 0.99)] / 1000.0 : 0;

		printf("mqttload: %ld clients, %zu acknowledged in %.2f s: %.0f/s, latency p50 "
		       "%.2f ms, "
		       "p99 %.2f ms, %ld failed, %.2f s CPU\n",
		       nclients, total, s, (double)total / s, p50, p99, failed_publishes, cpu);
		printf("result %zu %.3f %.2f %.2f %.2f\n", total, s, p50, p99, cpu);
	}
	free(all);
	if (failed_publishes > 0)
		status = 1;
out:
	for (long i = 0; i < nclients; i++)
		if (clients[i].m && clients[i].connected)
			mosquitto_disconnect_v5(clients[i].m, 0, NULL);
	/* Let the DISCONNECTs leave, so the broker does not log them as lost. */
	wait_until = now_us() + 200000;
	while (now_us() < wait_until)
		pump(10);
	for (long i = 0; i < nclients; i++) {
		struct client *c = &clients[i];

		if (c->m)
			mosquitto_destroy(c->m);
		free(c->cert);
		free(c->key);
		free(c->lat_us);
	}
	free(clients);
	free(pfds);
	free(pclients);
	mosquitto_lib_cleanup();
	return status;
}
