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
#include "options.h"
#include "router.h"
#include "sessions.h"
#include "spool.h"
#include "xalloc.h"
#include "admin.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

/*
 * A reload in progress. The file is parsed on a thread of its own, so that no config, however
 * large or broken, holds the loop: libconfig's own check for a key defined twice in a group
 * is quadratic (50,000 keys in one group: 17 s), and the sensors must go on being answered.
 * What it made is applied on the loop. gwctl clients asking meanwhile get the next one.
 */
struct waiter {
	admin_done_fn done;
	void *ctx;
};

struct reloading {
	struct daemon *d;
	pthread_t thread;
	int efd; /* the thread's "done", watched by the loop */
	char *path;
	uint64_t t0;
	/* The thread's result, read after it is joined. */
	struct gwconf *next;
	struct gwconf_errors errs;
	int r;
	/* Who hears this one's outcome, and who asked after it began (the next one). */
	struct waiter *waiters, *later;
	size_t nwaiters, nlater;
	bool running; /* the thread: joined when it has said it is done */
	bool again;   /* asked for again while parsing (SIGHUP or gwctl): parse once more */
};

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
static void
apply(struct daemon *d, struct gwconf *next, bool *restart_all)
{
	struct coapbr_options co;
	struct enrol_options eo;
	struct keystore_config kc;
	struct mqttbr_options mo;
	struct spool_limits lim;

	/* First: what follows logs, and libcoap takes its level from ours. */
	if (!d->verbose)
		log_set_level(next->log_level);
	options_mqttbr(&mo, next);
	mqttbr_reconfigure(d->mqtt, &mo, restart_all);
	sessions_set_on_demand(d->sessions, next->upstream.on_demand);
	if (d->coap) {
		options_coapbr(&co, next);
		coapbr_reconfigure(d->coap, &co);
	}
	options_keystore(&kc, next);
	keystore_reconfigure(d->ks, &kc);
	router_set_conf(d->router, next);
	options_enrol(&eo, next);
	enrol_reconfigure(d->enrol, &eo);
	options_spool(&lim, next);
	spool_set_limits(d->spool, &lim);
	if (d->commands)
		cmdq_set_limits(d->commands, (size_t)next->downlink.queue,
		                (unsigned)next->downlink.expiry);
	d->hooks.gateway_id = next->gateway_id;
}

/* Applies what the parser made of the file (on the loop). Returns 0 or 1, like a gwctl verb. */
static int
apply_parsed(struct daemon *d, struct reloading *job, FILE *out, FILE *err)
{
	uint64_t t1 = gw_now_ms(); /* on the loop from here */
	struct gwconf *next = job->next, *old = d->conf;
	struct gwconf_errors errs = job->errs;
	char restart[512];
	bool all = false;
	size_t started = 0, devices = 0;
	int r = job->r;

	job->next = NULL;
	job->errs = (struct gwconf_errors){0};
	if (r < 0) {
		for (size_t i = 0; i < errs.count; i++)
			tell(err, true, "%s", errs.lines[i]);
		if (gwconf_errors_more(&errs))
			tell(err, true, "%s", gwconf_errors_more(&errs));
		tell(err, true,
		     "reload: %zu error%s in %s: the running configuration stays (fix them, check "
		     "with gatewayd -n, reload again)",
		     errs.total, errs.total == 1 ? "" : "s", old->file);
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
	apply(d, next, &all);
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
		if (sessions_start(d->sessions, id, all ? SESSIONS_ALWAYS : SESSIONS_IF_CHANGED))
			started++;
	}
	tell(out, false,
	     "reloaded %s: %zu of %zu upstream sessions started again%s; sensor sessions kept "
	     "(read in %llu ms off the loop, applied in %llu ms on it)",
	     next->file, started, devices, all ? " (what every session connects with changed)" : "",
	     (unsigned long long)(t1 - job->t0), (unsigned long long)(gw_now_ms() - t1));
	gw_notify_sendf("READY=1\nSTATUS=ready: configuration reloaded, %zu sessions started again",
	                started);
	return 0;
}

static void *
parse_thread(void *arg)
{
	struct reloading *job = arg;
	uint64_t one = 1;

	job->r = gwconf_load(job->path, &job->next, &job->errs);
	if (write(job->efd, &one, sizeof(one)) < 0)
		abort(); /* an eventfd write fails only if it would overflow a 64-bit counter */
	return NULL;
}

static int start_parse(struct daemon *d);

/* Tells each waiter the outcome: what went to out and err, as one message. */
static void
answer_waiters(struct waiter *w, size_t n, int status, const char *out, const char *err)
{
	char *msg = xasprintf("%s%s", out ? out : "", err ? err : "");

	/* late_answer() adds the newline. */
	if (*msg && msg[strlen(msg) - 1] == '\n')
		msg[strlen(msg) - 1] = '\0';
	for (size_t i = 0; i < n; i++)
		w[i].done(w[i].ctx, status, msg);
	free(msg);
}

static void
parsed(int fd, uint32_t events, void *data)
{
	struct reloading *job = data;
	struct daemon *d = job->d;
	char *out = NULL, *err = NULL;
	size_t out_len = 0, err_len = 0;
	FILE *fo = open_memstream(&out, &out_len), *fe = open_memstream(&err, &err_len);
	uint64_t n;
	int status;

	(void)events;
	if (read(fd, &n, sizeof(n)) < 0 && errno == EAGAIN)
		return;
	pthread_join(job->thread, NULL);
	job->running = false;
	gw_loop_del_fd(d->loop, job->efd);
	status = apply_parsed(d, job, fo, fe);
	if (fo)
		fclose(fo);
	if (fe)
		fclose(fe);
	answer_waiters(job->waiters, job->nwaiters, status, out, err);
	free(out);
	free(err);
	free(job->waiters);
	job->nwaiters = 0;
	job->waiters = job->later;
	job->nwaiters = job->nlater;
	job->later = NULL;
	job->nlater = 0;
	if (job->again && !d->stopping) {
		job->again = false;
		if (start_parse(d) == 0)
			return;
		answer_waiters(job->waiters, job->nwaiters, 1, NULL,
		               "reload: cannot start a thread to read the config; try again\n");
		free(job->waiters);
		job->waiters = NULL;
		job->nwaiters = 0;
	}
	daemon_reload_finish(d);
}

/* Starts parsing d's config file on its own thread. */
static int
start_parse(struct daemon *d)
{
	struct reloading *job = d->reloading;
	int r;

	gw_notify_send("RELOADING=1\nSTATUS=reloading the configuration");
	log_info("reloading %s", d->conf->file);
	job->t0 = gw_now_ms();
	r = gw_loop_add_fd(d->loop, job->efd, EPOLLIN, parsed, job);
	if (r < 0)
		return r;
	r = -pthread_create(&job->thread, NULL, parse_thread, job);
	job->running = r == 0;
	if (r < 0) {
		gw_loop_del_fd(d->loop, job->efd);
		gw_notify_send("READY=1\nSTATUS=ready; the last reload failed: see the log");
		log_warnx("reload: cannot start a thread to read the config: %s", strerror(-r));
	}
	return r;
}

static void
add_waiter(struct waiter **w, size_t *n, admin_done_fn done, void *ctx)
{
	if (!done)
		return; /* SIGHUP: nobody to answer */
	*w = xreallocarray(*w, *n + 1, sizeof(**w));
	(*w)[(*n)++] = (struct waiter){done, ctx};
}

int
daemon_reload(struct daemon *d, admin_done_fn done, void *ctx, FILE *err)
{
	struct reloading *job = d->reloading;

	if (d->stopping) {
		if (err)
			fprintf(err, "reload: gatewayd is stopping\n");
		return 1;
	}
	if (job) {
		/* The file may have changed since that one began: read it again after it. */
		add_waiter(&job->later, &job->nlater, done, ctx);
		job->again = true;
		return ADMIN_PENDING;
	}
	job = xcalloc(1, sizeof(*job));
	job->d = d;
	job->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (job->efd < 0) {
		tell(err, true, "reload: cannot create an eventfd: %s; try again", strerror(errno));
		free(job);
		return 1;
	}
	job->path = xstrdup(d->conf->file);
	add_waiter(&job->waiters, &job->nwaiters, done, ctx);
	d->reloading = job;
	if (start_parse(d) < 0) {
		if (err)
			fprintf(err,
			        "reload: cannot start a thread to read the config; try again\n");
		free(job->waiters);
		job->waiters = NULL;
		job->nwaiters = 0;
		daemon_reload_finish(d);
		return 1;
	}
	return ADMIN_PENDING;
}

void
daemon_reload_finish(struct daemon *d)
{
	struct reloading *job = d->reloading;

	if (!job)
		return;
	if (job->running) {
		/* Stopping mid-parse: the thread cannot be stopped, only waited for; its result
		 * is dropped. */
		pthread_join(job->thread, NULL);
		gw_loop_del_fd(d->loop, job->efd);
	}
	answer_waiters(job->waiters, job->nwaiters, 1, NULL,
	               "reload: gatewayd is stopping; nothing was applied\n");
	answer_waiters(job->later, job->nlater, 1, NULL,
	               "reload: gatewayd is stopping; nothing was applied\n");
	gwconf_free(job->next);
	gwconf_errors_finish(&job->errs);
	close(job->efd);
	free(job->path);
	free(job->waiters);
	free(job->later);
	free(job);
	d->reloading = NULL;
}
