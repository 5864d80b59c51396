/* SPDX-License-Identifier: Apache-2.0 */
/*
 * mqttload: N direct MQTT 5 publishers over mutual TLS in one process, the other baseline of
 * tests/bench/uplink-baselines.sh. Device i (ID = PREFIX + i, i from 1) connects with its own
 * certificate and key, DIR/FILEPREFIX + ID + ".pem"/".key", as client id ID, and publishes
 * "ID SEQ" to devices/ID/telemetry/temp, QoS 1 (or -q), with one publish outstanding: the next
 * leaves when the PUBACK of the last arrives, back to back, for -t seconds.
 * The clients are set up as bridges/mqtt/mqttbr.c sets up the gateway's (paho MQTTAsync, no
 * persistence, MQTT 5 with clean start, keepalive 60 s, the server's chain checked against
 * the CA file only and its host name verified), and share paho's threads as the gateway's do.
 * Prints, once all connected and the time is out (publishes acknowledged within it count):
 *   mqttload: N clients, A acknowledged in S s: R/s, latency p50 X ms, p99 Y ms, F failed,
 *             C s CPU
 *   result A S X Y C
 * latency being from MQTTAsync_sendMessage() to the PUBACK's callback, C the CPU time (user +
 * system) of this process during the run. Exit status: 0, 1 if a client could not connect
 * within 30 s or a publish failed, 2 usage.
 *   mqttload -H URI -C CAFILE -d DIR [-f FILEPREFIX] [-P PREFIX] -n N [-t SECONDS] [-q QOS]
 */
#include <MQTTAsync.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

struct client {
	MQTTAsync handle;
	char id[64];
	char topic[128];
	char *cert, *key;
	long seq;
	uint64_t sent_us;
	uint32_t *lat_us; /* one per publish acknowledged within the run */
	size_t nlat, caplat;
	bool outstanding;
};

static struct client *clients;
static long nclients;
static int qos = 1;
static atomic_long connected, failed_connects, failed_publishes, outstanding;
static atomic_bool running;
static uint64_t deadline_us;

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
on_published(void *ctx, MQTTAsync_successData5 *resp)
{
	struct client *c = ctx;
	uint64_t t = now_us();

	(void)resp;
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
	c->outstanding = false;
	atomic_fetch_sub(&outstanding, 1);
	/* paho allows calls from its callbacks, except MQTTAsync_destroy(). */
	if (atomic_load(&running) && t < deadline_us)
		publish_next(c);
}

static void
on_publish_failed(void *ctx, MQTTAsync_failureData5 *resp)
{
	struct client *c = ctx;

	fprintf(stderr, "mqttload: %s: publish %ld failed: %s (reason %d)\n", c->id, c->seq,
	        resp && resp->message ? resp->message : MQTTAsync_strerror(resp ? resp->code : 0),
	        resp ? (int)resp->reasonCode : 0);
	atomic_fetch_add(&failed_publishes, 1);
	c->outstanding = false;
	atomic_fetch_sub(&outstanding, 1);
}

static void
publish_next(struct client *c)
{
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	MQTTAsync_message msg = MQTTAsync_message_initializer;
	char payload[96];
	int rc;

	snprintf(payload, sizeof(payload), "%s %ld", c->id, c->seq);
	msg.payload = payload;
	msg.payloadlen = (int)strlen(payload);
	msg.qos = qos;
	ro.onSuccess5 = on_published;
	ro.onFailure5 = on_publish_failed;
	ro.context = c;
	c->outstanding = true;
	atomic_fetch_add(&outstanding, 1);
	c->sent_us = now_us();
	rc = MQTTAsync_sendMessage(c->handle, c->topic, &msg, &ro);
	if (rc != MQTTASYNC_SUCCESS) {
		fprintf(stderr, "mqttload: %s: cannot publish: %s\n", c->id,
		        MQTTAsync_strerror(rc));
		atomic_fetch_add(&failed_publishes, 1);
		c->outstanding = false;
		atomic_fetch_sub(&outstanding, 1);
	}
}

static void
on_connected(void *ctx, MQTTAsync_successData5 *resp)
{
	(void)ctx;
	(void)resp;
	atomic_fetch_add(&connected, 1);
}

static void
on_connect_failed(void *ctx, MQTTAsync_failureData5 *resp)
{
	struct client *c = ctx;

	fprintf(stderr, "mqttload: %s: connect failed: %s (reason %d)\n", c->id,
	        resp && resp->message ? resp->message : MQTTAsync_strerror(resp ? resp->code : 0),
	        resp ? (int)resp->reasonCode : 0);
	atomic_fetch_add(&failed_connects, 1);
}

static void
on_connection_lost(void *ctx, char *cause)
{
	struct client *c = ctx;

	fprintf(stderr, "mqttload: %s: connection lost: %s\n", c->id, cause ? cause : "?");
}

static int
on_message(void *ctx, char *topic, int len, MQTTAsync_message *msg)
{
	(void)ctx;
	(void)len;
	MQTTAsync_freeMessage(&msg);
	MQTTAsync_free(topic);
	return 1;
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
	    qos < 0 || qos > 2)
		usage();
	clients = calloc((size_t)nclients, sizeof(*clients));
	if (!clients)
		return 1;

	for (long i = 0; i < nclients; i++) {
		struct client *c = &clients[i];
		MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
		MQTTAsync_connectOptions opts = MQTTAsync_connectOptions_initializer5;
		MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
		int rc;

		snprintf(c->id, sizeof(c->id), "%s%ld", prefix, i + 1);
		snprintf(c->topic, sizeof(c->topic), "devices/%s/telemetry/temp", c->id);
		c->seq = 1;
		c->cert = path_of(dir, fileprefix, c->id, ".pem");
		c->key = path_of(dir, fileprefix, c->id, ".key");
		if (!c->cert || !c->key)
			return 1;
		co.sendWhileDisconnected = 0;
		rc = MQTTAsync_createWithOptions(&c->handle, uri, c->id,
		                                 MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
		if (rc != MQTTASYNC_SUCCESS) {
			fprintf(stderr, "mqttload: %s: cannot create a client: %s\n", c->id,
			        MQTTAsync_strerror(rc));
			return 1;
		}
		MQTTAsync_setCallbacks(c->handle, c, on_connection_lost, on_message, NULL);
		/* As mqttbr.c connect_device(). */
		ssl.trustStore = ca;
		ssl.keyStore = c->cert;
		ssl.privateKey = c->key;
		ssl.enableServerCertAuth = 1;
		ssl.verify = 1;
		ssl.disableDefaultTrustStore = 1;
		opts.keepAliveInterval = 60;
		opts.connectTimeout = 10;
		opts.cleanstart = 1;
		opts.onSuccess5 = on_connected;
		opts.onFailure5 = on_connect_failed;
		opts.ssl = &ssl;
		opts.context = c;
		opts.automaticReconnect = 0;
		rc = MQTTAsync_connect(c->handle, &opts);
		if (rc != MQTTASYNC_SUCCESS) {
			fprintf(stderr, "mqttload: %s: cannot start connecting: %s\n", c->id,
			        MQTTAsync_strerror(rc));
			atomic_fetch_add(&failed_connects, 1);
		}
	}
	wait_until = now_us() + 30 * 1000000ull;
	while (atomic_load(&connected) + atomic_load(&failed_connects) < nclients &&
	       now_us() < wait_until)
		usleep(10000);
	if (atomic_load(&connected) < nclients) {
		fprintf(stderr, "mqttload: only %ld of %ld clients connected\n",
		        atomic_load(&connected), nclients);
		status = 1;
		goto out;
	}

	/* Everyone connected: the run starts now, with one publish per client. */
	cpu0 = cpu_seconds();
	t0 = now_us();
	deadline_us = t0 + (uint64_t)secs * 1000000;
	atomic_store(&running, true);
	for (long i = 0; i < nclients; i++)
		publish_next(&clients[i]);
	while (now_us() < deadline_us)
		usleep(10000);
	atomic_store(&running, false);
	t_end = now_us();
	cpu = cpu_seconds() - cpu0;
	/* What is still in flight ends within publish timeouts; bounded regardless. */
	wait_until = t_end + 10 * 1000000ull;
	while (atomic_load(&outstanding) > 0 && now_us() < wait_until)
		usleep(10000);

	for (long i = 0; i < nclients; i++)
		total += clients[i].nlat;
	all = calloc(total ? total : 1, sizeof(*all));
	if (!all) {
		status = 1;
		goto out;
	}
	total = 0;
	for (long i = 0; i < nclients; i++) {
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
		       nclients, total, s, (double)total / s, p50, p99,
		       atomic_load(&failed_publishes), cpu);
		printf("result %zu %.3f %.2f %.2f %.2f\n", total, s, p50, p99, cpu);
	}
	free(all);
	if (atomic_load(&failed_publishes) > 0)
		status = 1;
out:
	for (long i = 0; i < nclients; i++) {
		struct client *c = &clients[i];
		MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer5;

		if (!c->handle)
			continue;
		d.timeout = 1000;
		if (MQTTAsync_isConnected(c->handle))
			MQTTAsync_disconnect(c->handle, &d);
	}
	/* Give the DISCONNECTs a moment to leave, so the broker does not log them as lost. */
	usleep(200000);
	for (long i = 0; i < nclients; i++) {
		struct client *c = &clients[i];

		if (c->handle)
			MQTTAsync_destroy(&c->handle);
		free(c->cert);
		free(c->key);
		free(c->lat_us);
	}
	free(clients);
	return status;
}
