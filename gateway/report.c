/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What the operator sees of a running gatewayd: gwctl status, the per-device figures of
 * gwctl device list/show, and the metrics (gwctl metrics and the HTTP endpoint). Everything
 * is read from the modules' own counters on the loop's thread when asked; nothing is kept
 * here.
 */
#include "cmdq.h"
#include "coapbr.h"
#include "conf.h"
#include "daemon.h"
#include "device.h"
#include "keystore.h"
#include "log.h"
#include "metrics.h"
#include "mqttbr.h"
#include "router.h"
#include "spool.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#ifndef GW_VERSION
#define GW_VERSION "unknown"
#endif

/*
 * Of the spooled messages of device id, those held: answered 2.04, kept, and waiting for a
 * certificate the broker accepts, because it refuses the device.
 */
static uint64_t
held_messages(struct daemon *d, const char *id, uint64_t spooled)
{
	const char *reason;

	return mqttbr_status(d->mqtt, id, &reason) == MQTTBR_REJECTED ? spooled : 0;
}

void
daemon_activity(const char *id, struct admin_activity *a, void *data)
{
	struct daemon *d = data;
	struct router_device_stats rs;

	router_device_stats(d->router, id, &rs);
	a->dtls_sessions = d->coap ? coapbr_device_sessions(d->coap, id) : 0;
	a->last_seen = rs.last_seen;
	a->up_messages = rs.up_messages;
	a->up_bytes = rs.up_bytes;
	a->down_messages = rs.down_messages;
	router_device_queues(d->router, id, &a->spooled, &a->spooled_bytes, &a->commands);
	a->spool_held = held_messages(d, id, a->spooled);
}

/* "3d 04:05:06" */
static void
format_duration(time_t s, char *buf, size_t len)
{
	long long days = (long long)s / 86400;

	s %= 86400;
	if (days > 0)
		snprintf(buf, len, "%lldd %02d:%02d:%02d", days, (int)(s / 3600),
		         (int)(s / 60 % 60), (int)(s % 60));
	else
		snprintf(buf, len, "%02d:%02d:%02d", (int)(s / 3600), (int)(s / 60 % 60),
		         (int)(s % 60));
}

static double
monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Devices by what the keystore says of them and by their upstream session. */
struct census {
	size_t devices, by_state[4]; /* active, suspended, revoked, disabled */
	size_t by_upstream[MQTTBR_STATUSES];
	const char *last_reason; /* a reason the broker could not be reached, if any */
};

static void
take_census(struct daemon *d, struct census *c)
{
	*c = (struct census){0};
	for (size_t i = 0; i < keystore_count(d->ks); i++) {
		const char *id = keystore_device_id(d->ks, i), *reason;
		struct keystore_info info;
		enum mqttbr_status st;

		if (keystore_device_info(d->ks, id, &info) < 0)
			continue;
		c->devices++;
		if (info.state == KEYSTORE_ACTIVE && !info.enabled)
			c->by_state[3]++;
		else
			c->by_state[info.state]++;
		st = mqttbr_status(d->mqtt, id, &reason);
		c->by_upstream[st]++;
		if (reason && st != MQTTBR_CONNECTED && st != MQTTBR_REJECTED)
			c->last_reason = reason;
	}
}

void
daemon_status(FILE *out, void *data)
{
	struct daemon *d = data;
	char when[64], took[32];
	struct census c;
	struct coapbr_stats cs = {0};
	struct spool_stats ss;
	time_t now = time(NULL);
	double t0;
	int r;

	fprintf(out, "gateway: %s (gatewayd %s)\n", d->conf->gateway_id, GW_VERSION);
	format_utc(d->started, when, sizeof(when));
	format_duration(now - d->started, took, sizeof(took));
	fprintf(out, "uptime: %s (since %s)\n", took, when);
	format_utc(d->conf_loaded, when, sizeof(when));
	fprintf(out, "config: %s (loaded %s)\n", d->conf->file, when);

	if (strcmp(d->conf->keystore.backend, "tpm") == 0) {
		/* A real command, not a cached state: the TPM may have gone since the last one. */
		t0 = monotonic_ms();
		r = keystore_tpm_ping(d->ks);
		if (r == 0)
			fprintf(out, "tpm: reachable at %s (answered in %.1f ms)\n",
			        d->conf->keystore.tcti, monotonic_ms() - t0);
		else if (r == -EBUSY)
			fprintf(out, "tpm: busy at %s (running another command; not asked now)\n",
			        d->conf->keystore.tcti);
		else
			fprintf(out, "tpm: NOT reachable at %s: %s (the log says more)\n",
			        d->conf->keystore.tcti, strerror(-r));
	} else {
		fprintf(out, "tpm: none (keystore backend soft)\n");
	}
	struct keystore_stats ks;

	keystore_get_stats(d->ks, &ks);
	fprintf(out,
	        "tpm-worker: busy %llu%% over the last %d s; %s, %u waiting (%u operator, %u "
	        "handshake, %u background); handshake signature %.1f ms\n",
	        (unsigned long long)(d->tpm_busy_permille + 5) / 10, TPM_SAMPLE_MS / 1000,
	        ks.busy ? "running" : "idle",
	        ks.queued[KEYSTORE_PRIO_ADMIN] + ks.queued[KEYSTORE_PRIO_HANDSHAKE] +
	                ks.queued[KEYSTORE_PRIO_BACKGROUND],
	        ks.queued[KEYSTORE_PRIO_ADMIN], ks.queued[KEYSTORE_PRIO_HANDSHAKE],
	        ks.queued[KEYSTORE_PRIO_BACKGROUND], (double)ks.handshake_sign_ns / 1e6);

	take_census(d, &c);
	fprintf(out, "devices: %zu (active %zu, suspended %zu, revoked %zu, disabled %zu)\n",
	        c.devices, c.by_state[KEYSTORE_ACTIVE], c.by_state[KEYSTORE_SUSPENDED],
	        c.by_state[KEYSTORE_REVOKED], c.by_state[3]);
	fprintf(out,
	        "upstream-sessions: connected %zu, connecting %zu, retrying %zu, "
	        "rejected-upstream %zu, idle %zu, none %zu\n",
	        c.by_upstream[MQTTBR_CONNECTED], c.by_upstream[MQTTBR_CONNECTING],
	        c.by_upstream[MQTTBR_RETRYING], c.by_upstream[MQTTBR_REJECTED],
	        c.by_upstream[MQTTBR_IDLE], c.by_upstream[MQTTBR_NONE]);
	struct mqttbr_stats ms;

	mqttbr_get_stats(d->mqtt, &ms);
	fprintf(out,
	        "upstream-connects: %llu queued, %llu in flight; TLS handshakes %llu full, %llu "
	        "resumed\n",
	        (unsigned long long)ms.queued, (unsigned long long)ms.connecting,
	        (unsigned long long)ms.full, (unsigned long long)ms.resumed);
	if (d->coap)
		coapbr_get_stats(d->coap, &cs);
	fprintf(out, "sensors: %llu DTLS sessions on %s port %u\n", (unsigned long long)cs.sessions,
	        d->conf->sensors.listen, d->conf->sensors.port);

	spool_stats(d->spool, &ss);
	fprintf(out,
	        "spool: %llu messages (%llu bytes) waiting; limit %lld bytes in all, %lld per "
	        "device\n",
	        (unsigned long long)ss.records, (unsigned long long)ss.bytes,
	        d->conf->spool.total_bytes, d->conf->spool.device_bytes);

	/* The broker as the sessions see it: one session up is proof enough. */
	if (c.by_upstream[MQTTBR_CONNECTED] > 0)
		fprintf(out, "broker: %s reachable (%zu session%s up)\n", d->conf->upstream.broker,
		        c.by_upstream[MQTTBR_CONNECTED],
		        c.by_upstream[MQTTBR_CONNECTED] == 1 ? "" : "s");
	else if (c.last_reason)
		fprintf(out, "broker: %s NOT reachable: %s\n", d->conf->upstream.broker,
		        c.last_reason);
	else if (c.by_upstream[MQTTBR_REJECTED] > 0)
		fprintf(out, "broker: %s reachable, but it refuses every device's identity\n",
		        d->conf->upstream.broker);
	else if (c.by_upstream[MQTTBR_IDLE] > 0)
		fprintf(out, "broker: %s not connected now (every session is idle, on demand)\n",
		        d->conf->upstream.broker);
	else
		fprintf(out, "broker: %s not tried yet (no device has an upstream session)\n",
		        d->conf->upstream.broker);
	if (d->metrics)
		fprintf(out, "metrics: http://%s:%u/metrics\n", d->conf->metrics.listen,
		        d->conf->metrics.port);
}

/* ---- metrics ---- */

static void
counter(struct metrics_writer *w, const char *name, const char *help, uint64_t v)
{
	metrics_family(w, name, METRICS_COUNTER, help);
	metrics_counter(w, NULL, v);
}

static void
gauge(struct metrics_writer *w, const char *name, const char *help, double v)
{
	metrics_family(w, name, METRICS_GAUGE, help);
	metrics_gauge(w, NULL, v);
}

/* One counter family with a label "reason" (or another), one sample per value. */
struct reason {
	const char *value;
	uint64_t n;
};

static void
by_reason(struct metrics_writer *w, const char *name, const char *help, const char *label,
          const struct reason *reasons, size_t n)
{
	metrics_family(w, name, METRICS_COUNTER, help);
	for (size_t i = 0; i < n; i++)
		metrics_counter(w, METRICS_LABELS({label, reasons[i].value}), reasons[i].n);
}

static void
collect_devices(struct daemon *d, struct metrics_writer *w)
{
	static const struct {
		const char *name, *help;
	} fam[] = {
	        {"gatewayd_device_messages_total", "Messages relayed for a device, by direction."},
	        {"gatewayd_device_spool_messages", "Messages in a device's spool."},
	        {"gatewayd_device_spool_bytes", "Bytes of the messages in a device's spool."},
	        {"gatewayd_device_certificate_expiry_timestamp_seconds",
	         "When a device's certificate expires (Unix time); absent without one."},
	        {"gatewayd_device_upstream_connected",
	         "1 while a device's upstream session is up."},
	        {"gatewayd_device_dtls_sessions", "DTLS sessions of a device's sensor."},
	        {"gatewayd_device_spool_held_messages",
	         "Messages in the spool of a device the broker refuses: kept until it accepts a "
	         "certificate of the device (gwctl device drop-spool drops them)."},
	};
	size_t n = keystore_count(d->ks);

	/* Family by family: a family's samples must be contiguous. */
	for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
		metrics_family(w, fam[f].name, f == 0 ? METRICS_COUNTER : METRICS_GAUGE,
		               fam[f].help);
		for (size_t i = 0; i < n; i++) {
			const struct device *dev = device_at(keystore_devices(d->ks), i);
			const char *id = dev->id, *reason;
			struct router_device_stats rs;
			struct keystore_info info;
			uint64_t bytes = 0;

			switch (f) {
			case 0:
				router_device_stats(d->router, id, &rs);
				metrics_counter(w,
				                METRICS_LABELS({"device", id}, {"direction", "up"}),
				                rs.up_messages);
				metrics_counter(
				        w, METRICS_LABELS({"device", id}, {"direction", "down"}),
				        rs.down_messages);
				break;
			case 1:
				metrics_gauge(w, METRICS_LABELS({"device", id}),
				              (double)spool_depth(d->spool, dev, NULL));
				break;
			case 2:
				spool_depth(d->spool, dev, &bytes);
				metrics_gauge(w, METRICS_LABELS({"device", id}), (double)bytes);
				break;
			case 3:
				if (keystore_device_info(d->ks, id, &info) == 0 && info.has_cert)
					metrics_gauge(w, METRICS_LABELS({"device", id}),
					              (double)info.not_after);
				break;
			case 4:
				metrics_gauge(w, METRICS_LABELS({"device", id}),
				              mqttbr_status(d->mqtt, id, &reason) ==
				                      MQTTBR_CONNECTED);
				break;
			case 5:
				metrics_gauge(w, METRICS_LABELS({"device", id}),
				              d->coap ? coapbr_device_sessions(d->coap, id) : 0);
				break;
			default:
				metrics_gauge(w, METRICS_LABELS({"device", id}),
				              (double)held_messages(
				                      d, id, spool_depth(d->spool, dev, NULL)));
			}
		}
	}
}

void
daemon_collect(struct metrics_writer *w, void *data)
{
	struct daemon *d = data;
	struct router_stats rs;
	struct spool_stats ss;
	struct mqttbr_stats ms;
	struct coapbr_stats cs = {0};
	struct cmdq_stats qs = {0};
	struct census c;

	router_get_stats(d->router, &rs);
	spool_stats(d->spool, &ss);
	mqttbr_get_stats(d->mqtt, &ms);
	if (d->coap)
		coapbr_get_stats(d->coap, &cs);
	if (d->commands)
		cmdq_stats(d->commands, &qs);
	take_census(d, &c);

	metrics_family(w, "gatewayd_info", METRICS_GAUGE, "The gateway's identity and version.");
	metrics_gauge(w, METRICS_LABELS({"gateway", d->conf->gateway_id}, {"version", GW_VERSION}),
	              1);
	gauge(w, "gatewayd_start_time_seconds", "When gatewayd started (Unix time).",
	      (double)d->started);
	gauge(w, "gatewayd_config_load_time_seconds",
	      "When the running configuration was loaded (Unix time).", (double)d->conf_loaded);

	metrics_family(w, "gatewayd_messages_total", METRICS_COUNTER,
	               "Messages accepted from sensors (up) and commands queued for them (down).");
	metrics_counter(w, METRICS_LABELS({"direction", "up"}), rs.up_messages);
	metrics_counter(w, METRICS_LABELS({"direction", "down"}), rs.down_messages);
	metrics_family(w, "gatewayd_message_bytes_total", METRICS_COUNTER,
	               "Payload bytes of those messages.");
	metrics_counter(w, METRICS_LABELS({"direction", "up"}), rs.up_bytes);
	metrics_counter(w, METRICS_LABELS({"direction", "down"}), rs.down_bytes);
	counter(w, "gatewayd_published_total", "Messages published upstream.", rs.published);

	/* Sensors hear of these (4.03, 5.03); the cloud does not hear of a denied command. */
	const struct reason refused[] = {
	        {"policy", rs.denied_up + rs.denied_get},
	        {"spool_full", rs.refused_full},
	};
	by_reason(w, "gatewayd_refused_total",
	          "Sensor requests refused (the sensor was told), by reason.", "reason", refused,
	          sizeof(refused) / sizeof(refused[0]));
	const struct reason dropped[] = {
	        {"broker_refused", rs.broker_refused},    {"spool_full", ss.dropped_full},
	        {"spool_max_age", ss.dropped_age},        {"spool_damaged", ss.corrupt_records},
	        {"command_too_large", rs.down_too_large}, {"command_queue_full", qs.overflowed},
	        {"command_expired", qs.expired},          {"command_policy", rs.denied_down},
	        {"operator", ss.dropped_operator},
	};
	by_reason(w, "gatewayd_dropped_total",
	          "Messages dropped after they were accepted, by reason.", "reason", dropped,
	          sizeof(dropped) / sizeof(dropped[0]));

	counter(w, "gatewayd_dtls_handshakes_total", "DTLS sessions established with sensors.",
	        cs.handshakes);
	const struct reason handshake[] = {
	        {"unknown_identity", cs.refused_unknown},
	        {"device_inactive", cs.refused_inactive},
	        {"key_mismatch", cs.key_mismatch},
	        {"other", cs.handshake_failed},
	};
	by_reason(w, "gatewayd_dtls_handshake_failures_total",
	          "DTLS handshakes refused or failed, by reason.", "reason", handshake,
	          sizeof(handshake) / sizeof(handshake[0]));
	gauge(w, "gatewayd_dtls_sessions", "DTLS sessions with sensors now.", (double)cs.sessions);
	const struct reason answers[] = {
	        {"piggybacked", cs.answers[COAPBR_PIGGYBACKED]},
	        {"separate", cs.answers[COAPBR_SEPARATE]},
	};
	by_reason(w, "gatewayd_coap_answers_total",
	          "Answers to confirmable sensor requests that waited for the spool or the broker: "
	          "on the ACK (within sensors.piggyback_wait) or separate, after an empty ACK.",
	          "how", answers, sizeof(answers) / sizeof(answers[0]));

	counter(w, "gatewayd_upstream_connect_attempts_total", "Upstream connects tried.",
	        ms.connects);
	counter(w, "gatewayd_upstream_connects_total", "Upstream connects accepted.", ms.connected);
	struct reason failures[MQTTBR_FAILS];

	for (size_t i = 0; i < MQTTBR_FAILS; i++)
		failures[i] = (struct reason){mqttbr_failure_name(i), ms.failures[i]};
	by_reason(w, "gatewayd_upstream_connect_failures_total",
	          "Upstream connects that failed, by reason.", "reason", failures, MQTTBR_FAILS);
	counter(w, "gatewayd_upstream_sessions_lost_total",
	        "Upstream sessions that dropped after they were up.", ms.lost);
	counter(w, "gatewayd_upstream_sessions_idled_total",
	        "On-demand upstream sessions ended after upstream.idle_timeout with nothing to do.",
	        ms.idled);
	gauge(w, "gatewayd_upstream_sessions", "Upstream sessions up now.", (double)ms.up);
	metrics_family(w, "gatewayd_upstream_tls_handshakes_total", METRICS_COUNTER,
	               "Upstream TLS handshakes: full (one TPM signature) or resumed (none).");
	metrics_counter(w, METRICS_LABELS({"kind", "full"}), ms.full);
	metrics_counter(w, METRICS_LABELS({"kind", "resumed"}), ms.resumed);
	gauge(w, "gatewayd_upstream_connect_queue",
	      "Devices due to connect, waiting for their turn at the TPM's pace.",
	      (double)ms.queued);
	gauge(w, "gatewayd_upstream_connecting", "Upstream connects in flight now.",
	      (double)ms.connecting);

	metrics_family(w, "gatewayd_devices", METRICS_GAUGE, "Devices in the keystore, by state.");
	metrics_gauge(w, METRICS_LABELS({"state", "active"}), (double)c.by_state[KEYSTORE_ACTIVE]);
	metrics_gauge(w, METRICS_LABELS({"state", "suspended"}),
	              (double)c.by_state[KEYSTORE_SUSPENDED]);
	metrics_gauge(w, METRICS_LABELS({"state", "revoked"}),
	              (double)c.by_state[KEYSTORE_REVOKED]);
	metrics_gauge(w, METRICS_LABELS({"state", "disabled"}), (double)c.by_state[3]);

	gauge(w, "gatewayd_spool_messages", "Messages waiting in the spool.", (double)ss.records);
	gauge(w, "gatewayd_spool_bytes", "Bytes of the messages waiting in the spool.",
	      (double)ss.bytes);

	struct keystore_stats ks;

	keystore_get_stats(d->ks, &ks);
	counter(w, "gatewayd_tpm_commands_total", "TPM commands sent (0 with the soft backend).",
	        ks.tpm_commands);
	metrics_family(w, "gatewayd_tpm_worker_busy_seconds_total", METRICS_COUNTER,
	               "Time the TPM worker spent on requests; its rate is the TPM's busy "
	               "fraction.");
	metrics_sample(w, NULL, NULL, (double)ks.busy_ns / 1e9);
	metrics_family(w, "gatewayd_tpm_worker_queued", METRICS_GAUGE,
	               "Requests waiting for the TPM worker, by priority.");
	metrics_gauge(w, METRICS_LABELS({"priority", "operator"}),
	              (double)ks.queued[KEYSTORE_PRIO_ADMIN]);
	metrics_gauge(w, METRICS_LABELS({"priority", "handshake"}),
	              (double)ks.queued[KEYSTORE_PRIO_HANDSHAKE]);
	metrics_gauge(w, METRICS_LABELS({"priority", "background"}),
	              (double)ks.queued[KEYSTORE_PRIO_BACKGROUND]);
	metrics_family(w, "gatewayd_tpm_operation_duration_seconds", METRICS_HISTOGRAM,
	               "Time the TPM took per operation (waits for the TPM excluded).");
	for (int op = 0; op < KEYSTORE_TPM_OPS; op++) {
		const struct histogram *h = keystore_tpm_latency(d->ks, op);

		if (h)
			metrics_histogram_write(w, METRICS_LABELS({"op", keystore_tpm_op_name(op)}),
			                        h);
	}
	collect_devices(d, w);
}

void
daemon_metrics(FILE *out, void *data)
{
	struct metrics_writer *w = metrics_writer_new();
	const char *text;
	size_t len;
	int r;

	daemon_collect(w, data);
	r = metrics_writer_error(w);
	if (r < 0) {
		fprintf(out, "# gatewayd cannot write its metrics: %s\n", strerror(-r));
	} else {
		text = metrics_writer_data(w, &len);
		fwrite(text, 1, len, out);
	}
	metrics_writer_free(w);
}

int
daemon_metrics_start(struct daemon *d)
{
	struct metrics_server_options opt = {
	        .address = d->conf->metrics.listen,
	        .port = d->conf->metrics.port,
	};
	int r;

	metrics_server_free(d->metrics);
	d->metrics = NULL;
	if (!d->conf->metrics.listen)
		return 0;
	r = metrics_server_new(&d->metrics, d->loop, &opt, daemon_collect, d);
	if (r < 0) {
		log_warnx("metrics: cannot serve on %s port %u: %s", opt.address, opt.port,
		          strerror(-r));
		return r;
	}
	return 0;
}
