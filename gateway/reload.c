/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Reload (SIGHUP, gwctl reload): the config file is parsed into a fresh config, which replaces
 * the running one only if it is valid and changes nothing that needs a restart. Then only the
 * difference is applied: routes, policies, limits and timeouts in place; a device's upstream
 * session is started again only if what it is made of changed. DTLS sessions always stay.
 */
#include "cmdq.h"
#include "coapbr.h"
#include "conf.h"
#include "daemon.h"
#include "enrol.h"
#include "keystore.h"
#include "log.h"
#include "loop.h"
#include "mqttbr.h"
#include "notify.h"
#include "router.h"
#include "spool.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>

static bool
same(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

/* Adds key to the list of changes that need a restart. */
static void
needs_restart(char *list, size_t len, const char *key)
{
	size_t used = strlen(list);

	snprintf(list + used, len - used, "%s%s", used ? ", " : "", key);
}

/*
 * What a running daemon cannot take over: the sockets it listens on, where its state lives,
 * the keystore it opened, and the parts made once at start (EST client, command queues).
 */
static void
restart_keys(const struct gwconf *a, const struct gwconf *b, char *list, size_t len)
{
	list[0] = '\0';
	if (!same(a->gateway_id, b->gateway_id))
		needs_restart(list, len, "gateway.id");
	if (!same(a->state_dir, b->state_dir))
		needs_restart(list, len, "gateway.state_dir");
	if (!same(a->control_socket, b->control_socket))
		needs_restart(list, len, "gateway.control_socket");
	if (!same(a->sensors.listen, b->sensors.listen))
		needs_restart(list, len, "sensors.listen");
	if (a->sensors.port != b->sensors.port)
		needs_restart(list, len, "sensors.port");
	if (a->sensors.receive_buffer != b->sensors.receive_buffer)
		needs_restart(list, len, "sensors.receive_buffer");
	if (!same(a->keystore.backend, b->keystore.backend))
		needs_restart(list, len, "keystore.backend");
	if (!same(a->keystore.tcti, b->keystore.tcti))
		needs_restart(list, len, "keystore.tcti");
	if (a->keystore.parent != b->keystore.parent)
		needs_restart(list, len, "keystore.parent");
	if (a->keystore.create_parent != b->keystore.create_parent)
		needs_restart(list, len, "keystore.create_parent");
	if (!same(a->est.url, b->est.url) || !same(a->est.ca_file, b->est.ca_file) ||
	    a->est.timeout != b->est.timeout || a->est.auto_enroll != b->est.auto_enroll ||
	    a->est.renew_at != b->est.renew_at || a->est.renew_jitter != b->est.renew_jitter ||
	    a->est.retry_min != b->est.retry_min || a->est.retry_max != b->est.retry_max)
		needs_restart(list, len, "the group est");
	if ((a->downlink.topic == NULL) != (b->downlink.topic == NULL))
		needs_restart(list, len,
		              b->downlink.topic ? "adding the group downlink"
		                                : "removing the group downlink");
}

/* A line for the log, and for the gwctl client if there is one. */
static void __attribute__((format(printf, 3, 4))) tell(FILE *f, bool warn, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (warn)
		log_warnx("%s", msg);
	else
		log_info("%s", msg);
	if (f)
		fprintf(f, "%s\n", msg);
}

/* Every module takes next; nothing refers to the old config after this. */
static int
apply(struct daemon *d, struct gwconf *next, bool *restart_all)
{
	struct keystore_config kc;
	struct spool_limits lim;
	int r;

	/* First: what follows logs, and libcoap takes its level from ours. */
	if (!d->verbose)
		log_set_level(next->log_level);
	r = mqttbr_reconfigure(d->mqtt, next, restart_all);
	if (r < 0)
		return r;
	if (d->coap && (r = coapbr_set_conf(d->coap, next)) < 0)
		return r;
	keystore_config_from(&kc, next);
	r = keystore_reconfigure(d->ks, &kc);
	if (r < 0)
		return r;
	router_set_conf(d->router, next);
	enrol_set_conf(d->enrol, next);
	spool_limits_from(&lim, next);
	spool_set_limits(d->spool, &lim);
	if (d->commands)
		cmdq_set_limits(d->commands, (size_t)next->downlink.queue,
		                (unsigned)next->downlink.expiry);
	d->hooks.gateway_id = next->gateway_id;
	return 0;
}

int
daemon_reload(struct daemon *d, FILE *out, FILE *err)
{
	struct gwconf *next, *old = d->conf;
	struct gwconf_errors errs;
	char restart[512];
	uint64_t t0 = gw_now_ms();
	bool all = false;
	size_t started = 0, devices = 0;
	int r;

	if (d->stopping) {
		tell(err, true, "reload: gatewayd is stopping");
		return 1;
	}
	gw_notify_send("RELOADING=1\nSTATUS=reloading the configuration");
	log_info("reloading %s", old->file);
	r = gwconf_load(old->file, &next, &errs);
	if (r < 0) {
		for (size_t i = 0; i < errs.count; i++)
			tell(err, true, "%s", errs.lines[i]);
		tell(err, true,
		     "reload: %zu error%s in %s: the running configuration stays (fix them, check "
		     "with gatewayd -n, reload again)",
		     errs.count, errs.count == 1 ? "" : "s", old->file);
		gwconf_errors_finish(&errs);
		gw_notify_send("READY=1\nSTATUS=ready; the last reload failed: see the log");
		return 1;
	}
	restart_keys(old, next, restart, sizeof(restart));
	if (restart[0]) {
		tell(err, true,
		     "reload: %s changed in %s: this needs a restart (systemctl restart gatewayd); "
		     "nothing was applied and the running configuration stays",
		     restart, old->file);
		gwconf_free(next);
		gw_notify_send(
		        "READY=1\nSTATUS=ready; the last reload needs a restart: see the log");
		return 1;
	}
	r = apply(d, next, &all);
	if (r < 0) {
		/*
		 * Out of memory halfway: some modules took next, others still read old. Both stay
		 * (old is let go of, not freed) until the restart this asks for.
		 */
		tell(err, true, "reload: cannot apply %s: %s; restart gatewayd", next->file,
		     strerror(-r));
		d->conf = next;
		gw_notify_send("READY=1\nSTATUS=ready; the last reload failed halfway: restart");
		return 1;
	}
	d->conf = next;
	d->conf_loaded = time(NULL);
	/* Moved, or asked for and not running (an earlier start or move failed). */
	if (!same(old->metrics.listen, next->metrics.listen) ||
	    old->metrics.port != next->metrics.port || (next->metrics.listen && !d->metrics)) {
		/* The endpoint moves: on failure there is none (said in the log and here). */
		if (daemon_metrics_start(d) < 0)
			tell(err, true, "reload: the metrics endpoint could not move: see the log");
	}
	gwconf_free(old);
	/* Presence topics, command filters and policies are per device: compare each one. */
	for (size_t i = 0; i < keystore_count(d->ks); i++) {
		const char *id = keystore_device_id(d->ks, i);

		if (!keystore_device_usable(d->ks, id))
			continue;
		devices++;
		if (daemon_start_session(d, id,
		                         all ? DAEMON_SESSION_ALWAYS : DAEMON_SESSION_IF_CHANGED))
			started++;
	}
	tell(out, false,
	     "reloaded %s: %zu of %zu upstream sessions started again%s; sensor sessions kept "
	     "(%llu ms)",
	     next->file, started, devices, all ? " (what every session connects with changed)" : "",
	     (unsigned long long)(gw_now_ms() - t0));
	gw_notify_sendf("READY=1\nSTATUS=ready: configuration reloaded, %zu sessions started again",
	                started);
	return 0;
}
