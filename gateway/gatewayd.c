/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gatewayd: bridges CoAP over DTLS-PSK from sensors to one mutual-TLS MQTT session per device.
 */
#include "admin.h"
#include "cmdq.h"
#include "coapbr.h"
#include "conf.h"
#include "control.h"
#include "daemon.h"
#include "device.h"
#include "enrol.h"
#include "keystore.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "mqttbr.h"
#include "notify.h"
#include "options.h"
#include "router.h"
#include "sessions.h"
#include "spool.h"
#include "xalloc.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static void __attribute__((noreturn)) usage(void)
{
	fprintf(stderr, "usage: gatewayd [-dnv] [-c file]\n"
	                "  -c file  configuration file (default " GWCONF_DEFAULT_FILE ")\n"
	                "  -d       stay in the foreground and log to stderr\n"
	                "  -n       check the configuration, print \"configuration OK\" or every "
	                "error, and exit\n"
	                "  -v       log debug messages\n");
	exit(1);
}

static void
mqtt_stopped(void *data)
{
	struct daemon *d = data;

	gw_loop_quit(d->loop, 0);
}

static void
on_terminate(int signo, void *data)
{
	struct daemon *d = data;

	if (d->stopping) {
		log_info("%s again: stopping now", strsignal(signo));
		gw_loop_quit(d->loop, 0);
		return;
	}
	d->stopping = true;
	log_info("%s: disconnecting upstream sessions and stopping", strsignal(signo));
	gw_notify_send("STOPPING=1\nSTATUS=stopping: disconnecting upstream sessions");
	mqttbr_stop(d->mqtt, mqtt_stopped, d);
}

/* The TPM worker's busy fraction over the last TPM_SAMPLE_MS, for gwctl status. */
static void
tpm_sample(struct gw_timer *t, void *data)
{
	struct daemon *d = data;
	struct keystore_stats ks;

	keystore_get_stats(d->ks, &ks);
	d->tpm_busy_permille = (ks.busy_ns - d->tpm_busy_ns) / (TPM_SAMPLE_MS * 1000ull);
	if (d->tpm_busy_permille > 1000)
		d->tpm_busy_permille = 1000;
	d->tpm_busy_ns = ks.busy_ns;
	gw_timer_arm(t, TPM_SAMPLE_MS);
}

static void
on_hangup(int signo, void *data)
{
	struct daemon *d = data;

	(void)signo;
	daemon_reload(d, NULL, NULL, NULL);
}

/* A gwctl verb changed the device: its sessions, then its enrolment, follow. */
static void
device_changed(const char *id, enum admin_change what, void *data)
{
	struct daemon *d = data;

	if (what == ADMIN_CHANGE_STATE)
		coapbr_fleet_changed(d->coap);
	sessions_device_changed(d->sessions, id,
	                        what == ADMIN_CHANGE_CERT  ? SESSIONS_CHANGE_CERT
	                        : what == ADMIN_CHANGE_PSK ? SESSIONS_CHANGE_PSK
	                                                   : SESSIONS_CHANGE_STATE);
}

/* At start: every device of the keystore. */
static void
sync_all(struct daemon *d)
{
	for (size_t i = 0; i < keystore_count(d->ks); i++)
		sessions_device_changed(d->sessions, keystore_device_id(d->ks, i),
		                        SESSIONS_CHANGE_STATE);
}

static int
drop_spool(const char *id, uint64_t *count, uint64_t *bytes, void *data)
{
	struct daemon *d = data;

	return router_drop_spool(d->router, id, count, bytes);
}

static const char *
enrolment_words(const char *id, void *data)
{
	struct daemon *d = data;

	return enrol_status(d->enrol, id);
}

static int
reload_verb(admin_done_fn done, void *ctx, FILE *err, void *data)
{
	return daemon_reload(data, done, ctx, err);
}

static int
enroll_now(const char *id, admin_done_fn done, void *ctx, FILE *err, void *data)
{
	struct daemon *d = data;
	char why[600];
	int r;

	if (!d->enrol) {
		fprintf(err, "no EST server is configured (add the group est to %s)\n",
		        d->conf->file);
		return -ENOTSUP;
	}
	r = enrol_now(d->enrol, id, done, ctx, why, sizeof(why));
	if (r < 0)
		fprintf(err, "%s\n", why);
	return r;
}

static const char *
upstream_word(const char *id, const char **reason, void *data)
{
	struct daemon *d = data;

	return mqttbr_status_name(mqttbr_status(d->mqtt, id, reason));
}

/* What each device has waiting from before the restart (the spool dropped the removed ones'). */
static void
spooled_waiting(const struct device *dev, uint64_t records, void *data)
{
	(void)data;
	log_info("%s: %llu messages in the spool, sent once its session is up", dev->id,
	         (unsigned long long)records);
}

/* The router's view of the keystore: attributes for policies and templates. */
static const char *
device_attr(const struct device *dev, const char *key, void *data)
{
	(void)data;
	return keystore_attr(dev, key);
}

/*
 * STATE_DIR/spool, recovered: what was acknowledged before a crash goes out first. The keystore
 * is open: the spool deletes the folders of devices it no longer has (removed while gatewayd
 * was down) and says so.
 */
static int
open_spool(struct daemon *d)
{
	struct spool_limits lim;
	struct spool_stats st;
	char *dir;
	int r;

	options_spool(&lim, d->conf);
	dir = xasprintf("%s/spool", d->conf->state_dir);
	r = spool_open(&d->spool, dir, &lim, keystore_devices(d->ks));
	if (r < 0) {
		log_warnx("cannot open the spool in %s: %s", dir,
		          r == -EBUSY ? "another gatewayd has it open" : strerror(-r));
		free(dir);
		return r;
	}
	free(dir);
	spool_stats(d->spool, &st);
	if (st.corrupt_records > 0)
		log_warnx("spool: %llu damaged records (%llu bytes) could not be recovered",
		          (unsigned long long)st.corrupt_records,
		          (unsigned long long)st.corrupt_bytes);
	spool_devices(d->spool, spooled_waiting, NULL);
	return 0;
}

/*
 * The soft open-file limit up to the hard one: systemd leaves the soft at 1024 for select()'s
 * sake (gatewayd uses epoll), and each device may hold three files open: its spool folder, a
 * spool segment and its upstream connection. Says so when even the hard limit is short for the
 * devices in the keystore.
 */
static void
raise_file_limit(size_t devices)
{
	struct rlimit rl;
	rlim_t want = 3 * (rlim_t)devices + 256;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
			log_warn("cannot raise the open-file limit to %llu",
			         (unsigned long long)rl.rlim_max);
			getrlimit(RLIMIT_NOFILE, &rl);
		}
	}
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
		log_warnx("the open-file limit is %llu, and %zu devices may need %llu: raise it "
		          "(LimitNOFILE= in the service, or ulimit -n)",
		          (unsigned long long)rl.rlim_cur, devices, (unsigned long long)want);
}

static int
start(struct daemon *d)
{
	struct coapbr_options co;
	struct mqttbr_options mo;
	struct keystore_config kc;
	struct keystore_stats st;
	size_t n;
	int r;

	r = gw_loop_new(&d->loop);
	if (r < 0) {
		log_warnx("cannot create the event loop: %s", strerror(-r));
		return r;
	}
	/* Before the TPM worker starts, so that it inherits the blocked mask. */
	if ((r = gw_loop_add_signal(d->loop, SIGTERM, on_terminate, d)) < 0 ||
	    (r = gw_loop_add_signal(d->loop, SIGINT, on_terminate, d)) < 0 ||
	    (r = gw_loop_add_signal(d->loop, SIGHUP, on_hangup, d)) < 0) {
		log_warnx("cannot set up signal handling: %s", strerror(-r));
		return r;
	}
	/* A broker that drops us mid-write must not kill the daemon. */
	signal(SIGPIPE, SIG_IGN);

	options_keystore(&kc, d->conf);
	r = keystore_open(&d->ks, &kc);
	if (r < 0) {
		log_warnx("cannot open the keystore in %s: %s", d->conf->state_dir, strerror(-r));
		return r;
	}
	/* Before the spool sizes what it keeps open from it. */
	raise_file_limit(keystore_count(d->ks));
	/* Before any session starts signing: the baseline for the per-handshake count. */
	keystore_get_stats(d->ks, &st);
	if (st.tpm_commands > 0)
		log_info("keystore: %llu TPM commands at start",
		         (unsigned long long)st.tpm_commands);
	r = open_spool(d);
	if (r < 0)
		return r;
	if (d->conf->downlink.topic) {
		d->commands = cmdq_new((size_t)d->conf->downlink.queue,
		                       (unsigned)d->conf->downlink.expiry);
	}
	d->tpm_sampler = gw_timer_new(d->loop, tpm_sample, d);
	gw_timer_arm(d->tpm_sampler, TPM_SAMPLE_MS);
	options_mqttbr(&mo, d->conf);
	d->mqtt = mqttbr_new(d->loop, &mo, d->ks);
	d->router = router_new(&(struct router_options){
	        .loop = d->loop,
	        .conf = d->conf,
	        .spool = d->spool,
	        .devices = keystore_devices(d->ks),
	        .commands = d->commands,
	        .up_ops = &mqttbr_upstream_ops,
	        .up = d->mqtt,
	        .attr = device_attr,
	        .data = d,
	});
	d->sessions = sessions_new(&(struct sessions_options){
	        .ks = d->ks,
	        .mqtt = d->mqtt,
	        .router = d->router,
	        .spool = d->spool,
	        .on_demand = d->conf->upstream.on_demand,
	});
	mqttbr_on_judged(d->mqtt, sessions_judged, d->sessions);
	mqttbr_on_message(d->mqtt, router_downlink, d->router);
	if (d->conf->est.url) {
		struct enrol_options eo;
		const char *cert, *key;

		options_enrol(&eo, d->conf);
		r = enrol_new(&d->enrol, d->loop, &eo, d->ks, sessions_tls_changed, d->sessions);
		if (r < 0) {
			log_warnx("cannot start the EST client: %s", strerror(-r));
			return r;
		}
		sessions_set_enrol(d->sessions, d->enrol);
		if (keystore_gateway_tls_files(d->ks, &cert, &key) < 0)
			log_warnx(
			        "EST: the gateway has no certificate of its own to authenticate to "
			        "%s: gwctl gateway csr, have it signed, gwctl gateway import-cert",
			        d->conf->est.url);
	}
	n = keystore_count(d->ks);
	sync_all(d);
	options_coapbr(&co, d->conf);
	r = coapbr_new(&d->coap, d->loop, &co, d->ks, &router_sensor_ops, d->router);
	if (r < 0) {
		log_warnx("cannot start the sensor side: %s", strerror(-r));
		return r;
	}
	router_set_sensor_side(d->router, &coapbr_sensor_side_ops, d->coap);
	sessions_set_coap(d->sessions, d->coap);
	d->hooks = (struct admin_hooks){
	        .changed = device_changed,
	        .upstream = upstream_word,
	        .enrolment = enrolment_words,
	        .enroll = enroll_now,
	        .drop_spool = drop_spool,
	        .activity = daemon_activity,
	        .reload = reload_verb,
	        .status = daemon_status,
	        .metrics = daemon_metrics,
	        .gateway_id = d->conf->gateway_id,
	        .data = d,
	};
	r = control_new(&d->control, d->loop, d->conf->control_socket, d->ks, &d->hooks);
	if (r < 0) {
		log_warnx("cannot open the control socket %s: %s (create its folder, or set "
		          "gateway.control_socket)",
		          d->conf->control_socket, strerror(-r));
		return r;
	}
	/* Off by default; asked for but not possible (port taken): say so, and do not start. */
	r = daemon_metrics_start(d);
	if (r < 0)
		return r;
	if (n == 0)
		log_warnx("no devices in the keystore under %s: add them with gwctl device add",
		          d->conf->state_dir);
	log_info("ready: gateway %s, %zu devices, upstream %s", d->conf->gateway_id, n,
	         d->conf->upstream.broker);
	/*
	 * Sockets open, keystore up: systemd (Type=notify) may start what comes after us. A
	 * first ping with it, should the manager count the watchdog from our exec, not from here.
	 */
	r = gw_notify_sendf("READY=1\nWATCHDOG=1\nSTATUS=ready: %zu devices, upstream %s", n,
	                    d->conf->upstream.broker);
	if (r < 0)
		log_warnx("cannot tell the service manager at %s that gatewayd is ready: %s",
		          getenv("NOTIFY_SOCKET"), strerror(-r));
	/* systemd's watchdog starts counting at READY=1 (systemd.service(5), WatchdogSec=). */
	r = gw_notify_watchdog_new(&d->watchdog, d->loop);
	if (r < 0)
		log_warnx("watchdog: cannot use WATCHDOG_USEC=%s: %s; no pings sent",
		          getenv("WATCHDOG_USEC"), strerror(-r));
	else if (d->watchdog)
		log_info("watchdog: pinging the service manager every %llu ms",
		         (unsigned long long)gw_notify_watchdog_period_ms(d->watchdog));
	return 0;
}

/* This run's counters, for the operator (and the tests) until metrics show them. */
static void
log_counters(const struct daemon *d)
{
	struct router_stats rs;
	struct spool_stats ss;

	if (!d->router)
		return;
	router_get_stats(d->router, &rs);
	spool_stats(d->spool, &ss);
	log_info("router: %llu messages up (%llu bytes), %llu published, %llu denied by policy, "
	         "%llu refused with the spool full, %llu dropped as the broker refused them; "
	         "%llu commands down, %llu denied by policy, %llu too large",
	         (unsigned long long)rs.up_messages, (unsigned long long)rs.up_bytes,
	         (unsigned long long)rs.published, (unsigned long long)rs.denied_up,
	         (unsigned long long)rs.refused_full, (unsigned long long)rs.broker_refused,
	         (unsigned long long)rs.down_messages, (unsigned long long)rs.denied_down,
	         (unsigned long long)rs.down_too_large);
	log_info("spool: %llu messages (%llu bytes) waiting; %llu dropped when full, %llu too "
	         "old, %llu lost to damage",
	         (unsigned long long)ss.records, (unsigned long long)ss.bytes,
	         (unsigned long long)ss.dropped_full, (unsigned long long)ss.dropped_age,
	         (unsigned long long)ss.corrupt_records);
}

static void
finish(struct daemon *d)
{
	/* First: gwctl clients waiting on an enrolment or a reload hear the daemon is stopping. */
	enrol_free(d->enrol);
	sessions_free(d->sessions);
	daemon_reload_finish(d);
	control_free(d->control);
	metrics_server_free(d->metrics);
	coapbr_free(d->coap);
	log_counters(d);
	router_free(d->router);
	mqttbr_free(d->mqtt);
	cmdq_free(d->commands);
	spool_free(d->spool);
	if (d->ks) {
		struct keystore_stats st;

		/* The TPM's share of this run, for operators and for tests/bench. */
		keystore_get_stats(d->ks, &st);
		if (st.signs > 0)
			log_info("keystore: %llu TPM commands, %llu signatures, %.2f ms per "
			         "signature "
			         "(load, sign, flush)",
			         (unsigned long long)st.tpm_commands, (unsigned long long)st.signs,
			         (double)st.sign_ns / (double)st.signs / 1e6);
	}
	keystore_free(d->ks);
	gw_notify_watchdog_free(d->watchdog);
	gw_timer_free(d->tpm_sampler);
	gw_loop_free(d->loop);
	gwconf_free(d->conf);
}

int
main(int argc, char *argv[])
{
	const char *file = GWCONF_DEFAULT_FILE;
	bool check_only = false, foreground = false, verbose = false;
	struct gwconf_errors errs;
	struct daemon d = {0};
	int ch, r;

	while ((ch = getopt(argc, argv, "c:dnvh")) != -1) {
		switch (ch) {
		case 'c':
			file = optarg;
			break;
		case 'd':
			foreground = true;
			break;
		case 'n':
			check_only = true;
			break;
		case 'v':
			verbose = true;
			break;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();

	log_init("gatewayd", true, LOG_LEVEL_INFO);
	r = gwconf_load(file, &d.conf, &errs);
	if (r < 0) {
		gwconf_errors_print(&errs, stderr);
		fprintf(stderr, "%s: %zu error%s; gatewayd not started\n", file, errs.total,
		        errs.total == 1 ? "" : "s");
		gwconf_errors_finish(&errs);
		return 1;
	}
	if (check_only) {
		fprintf(stderr, "configuration OK\n");
		gwconf_free(d.conf);
		return 0;
	}
	/* Reloads read the file again, after daemon() has made / the working folder. */
	char *abs = realpath(d.conf->file, NULL);

	if (abs) {
		free(d.conf->file);
		d.conf->file = abs;
	}
	log_init("gatewayd", foreground, verbose ? LOG_LEVEL_DEBUG : d.conf->log_level);
	d.verbose = verbose;
	d.started = d.conf_loaded = time(NULL);
	/* Detach before any thread exists (the keystore starts the TPM worker). */
	if (!foreground && daemon(0, 0) < 0)
		fatal("daemon");

	r = start(&d);
	if (r == 0)
		r = gw_loop_run(d.loop);
	finish(&d);
	log_info("stopped");
	return r < 0 ? 1 : 0;
}
