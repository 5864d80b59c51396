/* SPDX-License-Identifier: Apache-2.0 */
/*
 * mqttstamp: an MQTT subscriber that stamps each message with the time it arrived, for
 * benchmarks that measure delivery (a sensor's send time in the payload, the receipt here).
 * Connects over mutual TLS (the server's chain checked against CAFILE only, its host name
 * verified), MQTT 5, with a session that outlives the connection (clean start off, session
 * expiry 1 h), so that with a persistent broker nothing published while it reconnects is
 * lost; reconnects within 50 ms of losing the broker. Prints one line per message, retained
 * ones (old news) left out:
 *   <epoch-ms> <topic> <payload>
 * and event lines, e.g. "<epoch-ms> mqttstamp: subscribed", "<epoch-ms> mqttstamp:
 * connection lost", "<epoch-ms> mqttstamp: connected again (session kept)".
 * Bounded: exits after -T seconds (default 3600), on SIGTERM or SIGINT, and when its parent
 * exits. Exit status 0; 1 if it never connected; 2 usage.
 *   mqttstamp -h HOST -p PORT -C CAFILE -c CERT -k KEY -i CLIENT_ID -t TOPIC [-q QOS]
 *             [-T SECONDS]
 */
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static const char *topic;
static int qos = 1;
static bool subscribed, ever_connected, connected;

static unsigned long long
epoch_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000;
}

static void
on_connect(struct mosquitto *m, void *arg, int rc, int flags, const mosquitto_property *props)
{
	(void)arg;
	(void)props;
	if (rc != 0) {
		printf("%llu mqttstamp: connect refused: %s\n", epoch_ms(),
		       mosquitto_reason_string(rc));
		fflush(stdout);
		return;
	}
	connected = true;
	/* A kept session keeps its subscription, and with it what arrived meanwhile. */
	if (ever_connected && (flags & 1)) {
		printf("%llu mqttstamp: connected again (session kept)\n", epoch_ms());
		fflush(stdout);
		return;
	}
	ever_connected = true;
	mosquitto_subscribe_v5(m, NULL, topic, qos, 0, NULL);
}

static void
on_subscribe(struct mosquitto *m, void *arg, int mid, int n, const int *granted,
             const mosquitto_property *props)
{
	(void)m;
	(void)arg;
	(void)mid;
	(void)props;
	if (n < 1 || granted[0] >= 0x80) {
		printf("%llu mqttstamp: subscription to %s refused\n", epoch_ms(), topic);
	} else {
		subscribed = true;
		printf("%llu mqttstamp: subscribed\n", epoch_ms());
	}
	fflush(stdout);
}

static void
on_message(struct mosquitto *m, void *arg, const struct mosquitto_message *msg,
           const mosquitto_property *props)
{
	unsigned long long t = epoch_ms();

	(void)m;
	(void)arg;
	(void)props;
	if (msg->retain)
		return;
	printf("%llu %s %.*s\n", t, msg->topic, msg->payloadlen, (const char *)msg->payload);
	fflush(stdout);
}

static void
on_disconnect(struct mosquitto *m, void *arg, int rc, const mosquitto_property *props)
{
	(void)m;
	(void)arg;
	(void)props;
	connected = false;
	printf("%llu mqttstamp: connection lost (%s)\n", epoch_ms(), mosquitto_reason_string(rc));
	fflush(stdout);
}

static void
usage(void)
{
	fprintf(stderr, "usage: mqttstamp -h HOST -p PORT -C CAFILE -c CERT -k KEY -i CLIENT_ID "
	                "-t TOPIC [-q QOS] [-T SECONDS]\n");
	exit(2);
}

int
main(int argc, char *argv[])
{
	const char *host = NULL, *ca = NULL, *cert = NULL, *key = NULL, *id = NULL;
	long port = 0, lifetime = 3600;
	mosquitto_property *props = NULL;
	pid_t parent = getppid();
	struct timespec zero = {0};
	struct mosquitto *m;
	time_t end;
	sigset_t sigs;
	int ch, rc;

	while ((ch = getopt(argc, argv, "h:p:C:c:k:i:t:q:T:")) != -1) {
		switch (ch) {
		case 'h':
			host = optarg;
			break;
		case 'p':
			port = atol(optarg);
			break;
		case 'C':
			ca = optarg;
			break;
		case 'c':
			cert = optarg;
			break;
		case 'k':
			key = optarg;
			break;
		case 'i':
			id = optarg;
			break;
		case 't':
			topic = optarg;
			break;
		case 'q':
			qos = atoi(optarg);
			break;
		case 'T':
			lifetime = atol(optarg);
			break;
		default:
			usage();
		}
	}
	if (!host || !ca || !cert || !key || !id || !topic || port < 1 || port > 65535 || qos < 0 ||
	    qos > 2 || lifetime < 1)
		usage();

	/* Signals are polled from the loop, never taken in signal context. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		return 0;

	mosquitto_lib_init();
	m = mosquitto_new(id, false, NULL);
	if (!m) {
		fprintf(stderr, "mqttstamp: cannot create a client\n");
		return 1;
	}
	mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
	/* verify the server's chain (CAFILE only) and, by default, its host name */
	rc = mosquitto_tls_set(m, ca, NULL, cert, key, NULL);
	if (rc == MOSQ_ERR_SUCCESS)
		rc = mosquitto_tls_opts_set(m, 1, NULL, NULL);
	if (rc != MOSQ_ERR_SUCCESS) {
		fprintf(stderr, "mqttstamp: TLS set-up: %s\n", mosquitto_strerror(rc));
		return 1;
	}
	mosquitto_connect_v5_callback_set(m, on_connect);
	mosquitto_subscribe_v5_callback_set(m, on_subscribe);
	mosquitto_message_v5_callback_set(m, on_message);
	mosquitto_disconnect_v5_callback_set(m, on_disconnect);
	mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, 3600);

	end = time(NULL) + lifetime;
	rc = mosquitto_connect_bind_v5(m, host, (int)port, 60, NULL, props);
	while (time(NULL) < end && getppid() == parent && sigtimedwait(&sigs, NULL, &zero) < 0) {
		if (rc == MOSQ_ERR_SUCCESS) {
			rc = mosquitto_loop(m, 100, 1);
		} else {
			/* The broker is away (restarting): try again soon, not in a second. */
			usleep(50000);
			rc = mosquitto_reconnect(m);
		}
	}
	if (connected)
		mosquitto_disconnect_v5(m, 0, NULL);
	mosquitto_property_free_all(&props);
	mosquitto_destroy(m);
	mosquitto_lib_cleanup();
	return ever_connected ? 0 : 1;
}
