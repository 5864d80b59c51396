/* SPDX-License-Identifier: Apache-2.0 */
#include "enrol.h"
#include "device.h"
#include "est.h"
#include "keystore.h"
#include "log.h"
#include "loop.h"
#include "xalloc.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/*
 * Requests in flight at once: each costs the TPM a key and two signatures (the request, the
 * TLS handshake), and a gateway renewing its fleet must keep the sessions' handshakes going.
 */
#define MAX_IN_FLIGHT 4

enum phase {
	IDLE,      /* waiting for the renewal date, a retry, or nothing */
	QUEUED,    /* due, waiting for a slot or for the CA certificates */
	ENROLLING, /* a request in flight */
	PENDING,   /* the server answered 202: the same request goes again later */
	TRIAL,     /* a renewed certificate is being tried upstream */
};

/*
 * A device's enrolment, in its enrol slot (device.h), from the first time it is planned until
 * it is removed or enrol_free(). The slot holds a reference: a removal leaves the device GONE
 * with its slot set, not freed, until enrol lets go (job_drop()), and the requests and timers
 * that point at the job never see a device freed under them.
 */
struct device_enrol {
	struct enrol *e;
	struct device *dev; /* a reference, dropped with the slot */
	/* e->jobs: every job, removed devices' too, which the registry no longer lists. */
	struct device_enrol *prev, *next;
	enum phase phase;
	bool renew;  /* the attempt under way makes a new key (the device has a certificate) */
	char *csr;   /* the request under way, sent again after a 202 */
	double skew; /* 0 to 1: this device's share of est.renew_jitter */
	unsigned failures;
	uint64_t retry_at; /* gw_now_ms() before which no new attempt starts */
	struct est_request *req;
	struct gw_timer *timer;
	enrol_done_fn done; /* gwctl device enroll waiting for the outcome */
	void *ctx;
	struct device_enrol *queued_next;
	char status[640];
};

struct enrol {
	struct gw_loop *loop;
	struct enrol_options opt; /* its url and ca_file are these, the enrol's own: */
	char *url, *ca_file;
	struct keystore *ks;
	enrol_tls_fn tls_fn;
	void *data;
	struct est *est;
	char *cacerts; /* the /cacerts answer: the intermediates devices present */
	struct est_request *cacerts_req;
	/* Every job, newest first: for enrol_free(). */
	struct device_enrol *jobs;
	struct device_enrol *queue, **queue_tail;
	size_t in_flight;
	/* Runs pump() from the loop: enrol_now()'s caller hears the outcome only later. */
	struct gw_timer *pump_timer;
};

static void plan(struct device_enrol *job);
static void pump(struct enrol *e);

static double
random_unit(void)
{
	uint32_t v = 0;

	if (getrandom(&v, sizeof(v), 0) != sizeof(v))
		v = (uint32_t)rand();
	return (double)v / 4294967296.0;
}

/* Keeps the device's status in words and logs it when it changes. */
static void __attribute__((format(printf, 3, 4)))
set_status(struct device_enrol *job, bool problem, const char *fmt, ...)
{
	char text[sizeof(job->status)];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (strcmp(text, job->status) == 0)
		return;
	memcpy(job->status, text, sizeof(text));
	if (problem)
		log_warnx("%s: %s", job->dev->id, text);
	else
		log_info("%s: %s", job->dev->id, text);
}

static void
tell(struct device_enrol *job, int status, const char *message)
{
	enrol_done_fn done = job->done;

	job->done = NULL;
	if (done)
		done(job->ctx, status, message);
}

static void
tls_changed(struct device_enrol *job, bool restart)
{
	if (job->e->tls_fn)
		job->e->tls_fn(job->dev->id, restart, job->e->data);
}

/* ---- the jobs, in their devices' slots ---- */

/*
 * The keystore's record of the job's device. -ENOENT once the device is gone: its id may
 * already name a new device, which is not this job's.
 */
static int
job_info(const struct device_enrol *job, struct keystore_info *info)
{
	if (job->dev->state == DEVICE_GONE)
		return -ENOENT;
	return keystore_device_info(job->e->ks, job->dev->id, info);
}

static void timer_fired(struct gw_timer *t, void *data);

static struct device_enrol *
get_job(struct enrol *e, struct device *dev)
{
	struct device_enrol *job = dev->enrol;

	if (job)
		return job;
	job = xcalloc(1, sizeof(*job));
	job->e = e;
	job->dev = device_ref(dev);
	job->timer = gw_timer_new(e->loop, timer_fired, job);
	job->skew = random_unit();
	job->next = e->jobs;
	if (e->jobs)
		e->jobs->prev = job;
	e->jobs = job;
	dev->enrol = job;
	return job;
}

static void
unqueue(struct device_enrol *job)
{
	struct enrol *e = job->e;

	for (struct device_enrol **p = &e->queue; *p; p = &(*p)->queued_next) {
		if (*p == job) {
			*p = job->queued_next;
			if (!*p)
				e->queue_tail = p;
			break;
		}
	}
	job->queued_next = NULL;
}

/* Stops what the job has under way; the device keeps what it has. */
static void
job_stop(struct device_enrol *job, const char *why)
{
	if (job->req) {
		est_cancel(job->req);
		job->req = NULL;
		job->e->in_flight--;
		/* A slot is free: the next in the queue goes, from the loop. */
		gw_timer_arm(job->e->pump_timer, 0);
	}
	if (job->phase == QUEUED)
		unqueue(job);
	/* A gone device's id may already name a new device, whose keys are not this job's. */
	if (job->renew && job->csr && job->phase != TRIAL && job->dev->state != DEVICE_GONE)
		keystore_device_discard(job->e->ks, job->dev->id);
	free(job->csr);
	job->csr = NULL;
	gw_timer_disarm(job->timer);
	job->phase = IDLE;
	tell(job, 1, why);
}

/* Ends the job and empties the device's slot, then lets go of the device. */
static void
job_free(struct device_enrol *job, const char *why)
{
	struct enrol *e = job->e;

	job_stop(job, why);
	if (job->prev)
		job->prev->next = job->next;
	else
		e->jobs = job->next;
	if (job->next)
		job->next->prev = job->prev;
	job->dev->enrol = NULL;
	device_unref(job->dev);
	gw_timer_free(job->timer);
	free(job);
}

static void
job_drop(struct device_enrol *job)
{
	job_free(job, "the device was removed meanwhile");
}

/* The registry's removal watcher: the device's job, if it has one, ends with it. */
static void
device_removed(struct device *dev, void *data)
{
	(void)data;
	if (dev->enrol)
		job_drop(dev->enrol);
}

/* ---- one attempt ---- */

static unsigned
backoff_s(const struct device_enrol *job)
{
	const struct enrol_options *o = &job->e->opt;
	unsigned s = (unsigned)o->retry_min;

	for (unsigned i = 1; i < job->failures && s < (unsigned)o->retry_max; i++)
		s *= 2;
	return s < (unsigned)o->retry_max ? s : (unsigned)o->retry_max;
}

/* The attempt failed: the device keeps what it had, and tries again after the backoff. */
static void
fail(struct device_enrol *job, const char *why)
{
	struct keystore_info info = {0};
	char until[64], msg[sizeof(job->status)];
	unsigned wait;

	/* As in job_stop(): not by the id of a device that is gone. */
	if (job->renew && job->csr && job->dev->state != DEVICE_GONE)
		keystore_device_discard(job->e->ks, job->dev->id);
	free(job->csr);
	job->csr = NULL;
	job->phase = IDLE;
	job->failures++;
	wait = backoff_s(job);
	job->retry_at = gw_now_ms() + (uint64_t)wait * 1000;
	job_info(job, &info);
	if (info.has_cert) {
		format_utc(info.not_after, until, sizeof(until));
		snprintf(msg, sizeof(msg),
		         "renewal failed: %s; keeps its certificate (valid until %s); next try in "
		         "%u s",
		         why, until, wait);
	} else {
		snprintf(msg, sizeof(msg), "enrolment failed: %s; next try in %u s", why, wait);
	}
	set_status(job, true, "%s", msg);
	tell(job, 1, msg);
	plan(job);
}

static void on_answer(const struct est_result *res, void *data);

static void
send_request(struct device_enrol *job)
{
	struct enrol *e = job->e;
	struct keystore_info info;
	const char *cert, *key;
	int r;

	if (job_info(job, &info) < 0) {
		job_drop(job);
		return;
	}
	if (info.state != KEYSTORE_ACTIVE || !info.enabled) {
		job_stop(job, "the device was suspended or revoked meanwhile");
		return;
	}
	if (keystore_gateway_tls_files(e->ks, &cert, &key) < 0) {
		fail(job, "the gateway has no certificate of its own for the EST server (gwctl "
		          "gateway csr, have it signed, then gwctl gateway import-cert)");
		return;
	}
	if (!job->csr) {
		/* A renewal always gets a new key: the old one stays until the new one works. */
		job->renew = info.has_cert;
		r = job->renew ? keystore_device_rekey(e->ks, job->dev->id, &job->csr)
		               : keystore_device_csr(e->ks, job->dev->id, &job->csr);
		if (r < 0) {
			job->csr = NULL;
			fail(job, "cannot make a certificate request (see the keystore's message)");
			return;
		}
	}
	job->req = est_enroll(e->est, job->renew, job->csr, cert, key, on_answer, job);
	if (!job->req) {
		fail(job, "cannot start the request");
		return;
	}
	e->in_flight++;
	job->phase = ENROLLING;
	set_status(job, false, "%s at %s", job->renew ? "renewing" : "enrolling", e->opt.url);
}

/* A certificate came: the first is installed, a renewal's goes on trial upstream. */
static void
accept_certificate(struct device_enrol *job, const char *certs)
{
	struct enrol *e = job->e;
	struct keystore_info info;
	char *chain = NULL, why[512], until[64], msg[sizeof(job->status)];
	int r;

	if (est_chain(certs, e->cacerts, &chain) < 0) {
		fail(job, "the EST answer holds no end-entity certificate");
		return;
	}
	r = job->renew ? keystore_device_stage_cert(e->ks, job->dev->id, chain, strlen(chain), why,
	                                            sizeof(why))
	               : keystore_device_import_cert(e->ks, job->dev->id, chain, strlen(chain), why,
	                                             sizeof(why));
	free(chain);
	if (r < 0) {
		snprintf(msg, sizeof(msg), "the certificate from the EST server was refused: %s",
		         why[0] ? why : strerror(-r));
		fail(job, msg);
		return;
	}
	free(job->csr);
	job->csr = NULL;
	job_info(job, &info);
	if (job->renew) {
		format_utc(info.next_not_after, until, sizeof(until));
		job->phase = TRIAL;
		snprintf(msg, sizeof(msg),
		         "renewed: new certificate valid until %s, on trial upstream", until);
	} else {
		format_utc(info.not_after, until, sizeof(until));
		job->phase = IDLE;
		job->failures = 0;
		snprintf(msg, sizeof(msg), "enrolled: %s, valid until %s", info.subject, until);
	}
	set_status(job, false, "%s", msg);
	tls_changed(job, true);
	tell(job, 0, msg);
	plan(job);
}

static void
on_answer(const struct est_result *res, void *data)
{
	struct device_enrol *job = data;
	struct enrol *e = job->e;
	unsigned wait;

	job->req = NULL;
	e->in_flight--;
	/*
	 * Removed while the request was out (a removal that enrol_device_changed() has not
	 * reported yet): what came is for no one.
	 */
	if (job->dev->state == DEVICE_GONE) {
		job_drop(job);
	} else if (res->status == 0) {
		accept_certificate(job, res->pem);
	} else if (res->status == -EAGAIN) {
		/* RFC 7030 section 4.2.3: the same request again, after Retry-After. */
		wait = res->retry_after ? res->retry_after : (unsigned)e->opt.retry_min;
		job->phase = PENDING;
		set_status(job, false, "%s; asking again in %u s", res->error, wait);
		gw_timer_arm(job->timer, (uint64_t)wait * 1000);
		/* gwctl does not wait on the server's schedule: the status tells the rest. */
		tell(job, 1, job->status);
	} else {
		fail(job, res->error);
	}
	pump(e);
}

/* ---- the queue, behind the CA certificates ---- */

static void
on_cacerts(const struct est_result *res, void *data)
{
	struct enrol *e = data;

	e->cacerts_req = NULL;
	if (res->status == 0) {
		e->cacerts = xstrdup(res->pem);
		log_info("EST: CA certificates received from %s", e->opt.url);
		pump(e);
		return;
	}
	/* Everyone waiting fails alike, and retries on their own backoff. */
	while (e->queue) {
		struct device_enrol *job = e->queue;
		char msg[600];

		unqueue(job);
		snprintf(msg, sizeof(msg), "cannot get the CA certificates: %s", res->error);
		fail(job, msg);
	}
}

static void
pump(struct enrol *e)
{
	const char *cert, *key;

	if (!e->queue || e->cacerts_req)
		return;
	/* Without the gateway's certificate, send_request() says why, per device. */
	if (!e->cacerts && keystore_gateway_tls_files(e->ks, &cert, &key) == 0) {
		e->cacerts_req = est_cacerts(e->est, cert, key, on_cacerts, e);
		if (e->cacerts_req)
			return;
	}
	while (e->queue && e->in_flight < MAX_IN_FLIGHT) {
		struct device_enrol *job = e->queue;

		unqueue(job);
		send_request(job);
	}
}

static void
enqueue(struct device_enrol *job)
{
	struct enrol *e = job->e;

	job->phase = QUEUED;
	job->queued_next = NULL;
	*e->queue_tail = job;
	e->queue_tail = &job->queued_next;
}

static void
begin(struct device_enrol *job)
{
	enqueue(job);
	pump(job->e);
}

static void
pump_fired(struct gw_timer *t, void *data)
{
	(void)t;
	pump(data);
}

/* ---- the trial of a renewed certificate ---- */

static void
commit(struct device_enrol *job)
{
	struct keystore_info info;
	char until[64];

	job->phase = IDLE;
	job->failures = 0;
	if (keystore_device_commit(job->e->ks, job->dev->id) < 0) {
		set_status(job, true,
		           "cannot switch to the renewed certificate (see the "
		           "keystore's message)");
		tls_changed(job, true);
		plan(job);
		return;
	}
	/* The same key and certificate under their usual names: the session stays up. */
	tls_changed(job, false);
	job_info(job, &info);
	format_utc(info.not_after, until, sizeof(until));
	set_status(job, false,
	           "renewed (the broker accepted the new certificate): %s, valid until %s",
	           info.subject, until);
	plan(job);
}

/*
 * The first connect with the new certificate decides: accepted, it is committed; otherwise,
 * whatever the cause (refused, or the broker unreachable), the device goes back to its old
 * certificate while that is valid, and the renewal is tried again after the backoff.
 */
void
enrol_upstream(struct enrol *e, const char *id, bool accepted, const char *reason)
{
	struct device *dev = e ? device_find(keystore_devices(e->ks), id) : NULL;
	struct device_enrol *job = dev ? dev->enrol : NULL;
	char msg[sizeof(job->status)];

	if (!job || job->phase != TRIAL)
		return;
	if (accepted) {
		commit(job);
		return;
	}
	/* reason belongs to the session, which switching back ends. */
	snprintf(msg, sizeof(msg), "the new certificate could not connect: %s",
	         reason ? reason : "no reason given");
	keystore_device_discard(e->ks, id);
	tls_changed(job, true);
	job->renew = false;
	fail(job, msg);
}

/* ---- planning ---- */

static void
timer_fired(struct gw_timer *t, void *data)
{
	struct device_enrol *job = data;

	(void)t;
	switch (job->phase) {
	case PENDING:
	case IDLE:
		/* PENDING keeps its request (job->csr): the same one goes again. */
		begin(job);
		break;
	default:
		break;
	}
}

static void
arm_at(struct device_enrol *job, time_t when)
{
	time_t now = time(NULL);
	uint64_t ms = when > now ? (uint64_t)(when - now) * 1000 : 0, until_retry = 0;

	if (job->retry_at > gw_now_ms())
		until_retry = job->retry_at - gw_now_ms();
	gw_timer_arm(job->timer, ms > until_retry ? ms : until_retry);
}

/* Arms the job's timer for what the device needs next. */
static void
plan(struct device_enrol *job)
{
	struct enrol *e = job->e;
	struct keystore_info info;
	double life;
	time_t due;

	if (job_info(job, &info) < 0) {
		job_drop(job);
		return;
	}
	if ((info.state != KEYSTORE_ACTIVE || !info.enabled) && job->phase != TRIAL) {
		if (job->phase != IDLE)
			set_status(job, false, "stopped: the device is %s",
			           info.state == KEYSTORE_ACTIVE ? "disabled"
			                                         : keystore_state_name(info.state));
		job_stop(job, "the device was suspended or revoked meanwhile");
		return;
	}
	/* An attempt under way finishes first; it plans again when it ends. */
	if (job->phase == QUEUED || job->phase == ENROLLING || job->phase == PENDING)
		return;
	gw_timer_disarm(job->timer);
	/* Judged by its first connect: enrol_upstream(). */
	if (info.on_trial) {
		job->phase = TRIAL;
		return;
	}
	job->phase = IDLE;
	if (!info.has_cert) {
		if (e->opt.auto_enroll)
			arm_at(job, 0);
		return;
	}
	life = difftime(info.not_after, info.not_before);
	due = info.not_before +
	      (time_t)(life * (e->opt.renew_at - e->opt.renew_jitter * job->skew));
	arm_at(job, due);
}

void
enrol_device_changed(struct enrol *e, const char *id)
{
	struct device *dev;

	if (!e)
		return;
	dev = device_find(keystore_devices(e->ks), id);
	if (!dev)
		return; /* removed: its job went with it (device_removed) */
	plan(get_job(e, dev));
}

int
enrol_now(struct enrol *e, const char *id, enrol_done_fn done, void *ctx, char *why, size_t why_len)
{
	struct device *dev = device_find(keystore_devices(e->ks), id);
	struct keystore_info info;
	struct device_enrol *job;

	if (!dev || keystore_device_info(e->ks, id, &info) < 0) {
		snprintf(why, why_len, "no device %s", id);
		return -ENOENT;
	}
	if (info.state != KEYSTORE_ACTIVE || !info.enabled) {
		snprintf(why, why_len, "device %s is %s: resume it first", id,
		         info.state == KEYSTORE_ACTIVE ? "disabled"
		                                       : keystore_state_name(info.state));
		return -EPERM;
	}
	if (info.on_trial) {
		snprintf(why, why_len,
		         "%s: a renewed certificate is on trial; its first connect decides", id);
		return -EBUSY;
	}
	job = get_job(e, dev);
	if (job->phase != IDLE && job->done) {
		snprintf(why, why_len, "%s: already under way for another gwctl: %s", id,
		         job->status);
		return -EBUSY;
	}
	if (job->phase != IDLE) {
		/*
		 * An attempt of its own (a retry, a renewal) is under way: the operator hears its
		 * outcome rather than a refusal that would race with the retry schedule.
		 */
		job->done = done;
		job->ctx = ctx;
		return 0;
	}
	gw_timer_disarm(job->timer);
	job->retry_at = 0;
	job->done = done;
	job->ctx = ctx;
	enqueue(job);
	gw_timer_arm(e->pump_timer, 0);
	return 0;
}

const char *
enrol_status(const struct enrol *e, const char *id)
{
	const struct device *dev = e ? device_find(keystore_devices(e->ks), id) : NULL;
	const struct device_enrol *job = dev ? dev->enrol : NULL;

	return job && job->status[0] ? job->status : NULL;
}

void
enrol_reconfigure(struct enrol *e, const struct enrol_options *opt)
{
	if (!e)
		return;
	e->opt.timeout = opt->timeout;
	e->opt.auto_enroll = opt->auto_enroll;
	e->opt.renew_at = opt->renew_at;
	e->opt.renew_jitter = opt->renew_jitter;
	e->opt.retry_min = opt->retry_min;
	e->opt.retry_max = opt->retry_max;
}

int
enrol_new(struct enrol **out, struct gw_loop *loop, const struct enrol_options *opt,
          struct keystore *ks, enrol_tls_fn tls_fn, void *data)
{
	struct enrol *e = xcalloc(1, sizeof(*e));
	int r;

	*e = (struct enrol){.loop = loop, .opt = *opt, .ks = ks, .tls_fn = tls_fn, .data = data};
	e->opt.url = e->url = xstrdup(opt->url);
	e->opt.ca_file = e->ca_file = opt->ca_file ? xstrdup(opt->ca_file) : NULL;
	e->queue_tail = &e->queue;
	e->pump_timer = gw_timer_new(loop, pump_fired, e);
	r = est_new(&e->est, loop, opt->url, opt->ca_file, opt->timeout);
	if (r < 0) {
		gw_timer_free(e->pump_timer);
		free(e->url);
		free(e->ca_file);
		free(e);
		return r;
	}
	device_registry_on_remove(keystore_devices(ks), device_removed, e);
	*out = e;
	return 0;
}

void
enrol_free(struct enrol *e)
{
	if (!e)
		return;
	device_registry_off_remove(keystore_devices(e->ks), device_removed, e);
	while (e->jobs)
		job_free(e->jobs, "gatewayd is stopping");
	gw_timer_free(e->pump_timer);
	est_free(e->est);
	free(e->url);
	free(e->ca_file);
	free(e->cacerts);
	free(e);
}
