/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_ENROL_H
#define GW_ENROL_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Certificates for devices from the EST server (config group est), on the loop:
 *   - a device without a certificate is enrolled with its key (est.auto_enroll, or gwctl device
 *     enroll);
 *   - a certificate is renewed at est.renew_at of its lifetime, less a random part of
 *     est.renew_jitter so that a fleet enrolled at once does not renew at once: with a new key,
 *     whose certificate goes on trial upstream: its first connect decides, accepted it is
 *     committed, failed (refused, or the broker unreachable) the old pair serves again while
 *     it is valid, and the failure is reported;
 *   - failures are retried with a backoff from est.retry_min to est.retry_max.
 * Every outcome is kept per device, in words, for gwctl device show and list.
 */

struct enrol;
struct gw_loop;
struct keystore;

/*
 * A device's certificate or key changed. restart: its upstream session must start again with
 * keystore_tls_files(); otherwise only the file names moved (a renewal committed) and the
 * session stays up.
 */
typedef void (*enrol_tls_fn)(const char *id, bool restart, void *data);
/* The outcome of enrol_now(): status 0 or 1, and what to tell the operator. */
typedef void (*enrol_done_fn)(void *ctx, int status, const char *message);

/* The EST client's settings: the config's est group (options_enrol()); strings are copied. */
struct enrol_options {
	const char *url;     /* https://host[:port]/.well-known/est[/label] */
	const char *ca_file; /* CA(s) the EST server's certificate must chain to */
	int timeout;         /* seconds for one request */
	bool auto_enroll;    /* enrol devices added without a certificate */
	double renew_at;     /* fraction of a certificate's lifetime when it is renewed */
	double renew_jitter; /* renewals spread over this fraction before renew_at */
	int retry_min;       /* seconds before a failed enrolment is tried again */
	int retry_max;       /* the backoff's ceiling */
};

/* tls_fn may be NULL (gwctl without the daemon: there are no sessions). */
int enrol_new(struct enrol **out, struct gw_loop *loop, const struct enrol_options *opt,
              struct keystore *ks, enrol_tls_fn tls_fn, void *data);
/*
 * A reload: the caller checked that url and ca_file are those enrol_new() was given (a change
 * of them needs a restart); the schedule's figures apply from their next use.
 */
void enrol_reconfigure(struct enrol *e, const struct enrol_options *opt);
/* Stops everything; enrol_now() callers still waiting hear that the daemon is stopping. */
void enrol_free(struct enrol *e);

/* A device was added, removed, suspended, resumed or given a certificate: plans it again. */
void enrol_device_changed(struct enrol *e, const char *id);
/* The device's upstream session was accepted by the broker, or refused (reason). */
void enrol_upstream(struct enrol *e, const char *id, bool accepted, const char *reason);
/*
 * Enrols (no certificate yet) or renews the device now; with an attempt of its own already
 * under way (a retry, a renewal), that attempt's outcome is the answer. 0: done(ctx, ...)
 * follows once, from the loop, never from within this call; otherwise -errno and why
 * (why_len bytes) says what stands in the way (-EBUSY: another caller waits already).
 */
int enrol_now(struct enrol *e, const char *id, enrol_done_fn done, void *ctx, char *why,
              size_t why_len);
/* The device's enrolment in words (the last outcome, or what is under way); NULL: nothing. */
const char *enrol_status(const struct enrol *e, const char *id);

#endif
