/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_SESSIONS_H
#define GW_SESSIONS_H

#include <stdbool.h>

/*
 * A device's sessions follow the keystore: its upstream session is started, kept, replaced or
 * ended, and its sensor cut off, as the device is added, changed, suspended or removed (by a
 * gwctl verb, by enrolment, by a reload). The composition root tells it what changed.
 */

struct coapbr;
struct enrol;
struct keystore;
struct mqttbr;
struct router;
struct sessions;
struct spool;

struct sessions_options {
	struct keystore *ks;
	struct mqttbr *mqtt;
	struct router *router;
	struct spool *spool;
	struct enrol *enrol; /* NULL without an EST server, or until sessions_set_enrol() */
	struct coapbr *coap; /* NULL until the sensor side runs: sessions_set_coap() */
	/* upstream.sessions is "on-demand": for devices whose attribute sessions does not say. */
	bool on_demand;
};

struct sessions *sessions_new(const struct sessions_options *opt);
/* Accepts NULL. */
void sessions_free(struct sessions *s);
void sessions_set_coap(struct sessions *s, struct coapbr *coap);
/* The EST client, made after the sessions (it tells them of new certificates). */
void sessions_set_enrol(struct sessions *s, struct enrol *enrol);
/* A reload's upstream.sessions: sessions made from now on (sessions_start()) follow it. */
void sessions_set_on_demand(struct sessions *s, bool on_demand);

enum sessions_change {
	SESSIONS_CHANGE_STATE, /* added, removed, suspended, resumed, attributes */
	SESSIONS_CHANGE_CERT,  /* a new key or certificate: a fresh session */
	SESSIONS_CHANGE_PSK,   /* a new PSK: sensor sessions on an identity no longer valid go */
};

/*
 * The device changed: its sessions, then its enrolment, follow. id may be the keystore's own
 * string, which removing the device retires: it is copied first.
 */
void sessions_device_changed(struct sessions *s, const char *id, enum sessions_change what);

/* What becomes of a device's upstream session that runs already. */
enum sessions_how {
	SESSIONS_KEEP,       /* it stays */
	SESSIONS_IF_CHANGED, /* replaced if the config now makes it differently */
	SESSIONS_ALWAYS,     /* replaced: what every session connects with changed */
};

/*
 * Starts the device's upstream session as the current config and keystore make it (a usable
 * device with a certificate). Returns whether a session was started.
 */
bool sessions_start(struct sessions *s, const char *id, enum sessions_how how);

/* enrol's tls_changed_fn: enrolment changed a device's key or certificate. data: sessions. */
void sessions_tls_changed(const char *id, bool restart, void *data);
/* mqttbr_judged_fn: a connect was judged; the router, then enrolment, hear of it. */
void sessions_judged(const char *id, bool accepted, const char *reason, void *data);

#endif
