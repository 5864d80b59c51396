/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_MQTTBR_H
#define GW_MQTTBR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "upstream.h"

/*
 * The cloud side: one MQTT session per device (MQTT 5, or 3.1.1 by config), over mutual TLS
 * with that device's own certificate, so the broker sees every device under its own identity.
 * Our own client on the daemon's loop (DESIGN.md decision 3): non-blocking sockets, one TLS
 * context for all sessions, handshakes that wait for the TPM's signature without blocking
 * (mqttconn.h), connects admitted at the pace the TPM signs with devices that have data first,
 * and each device's TLS session resumed from memory where the broker allows.
 */

struct device;
struct device_mqtt;
struct gw_loop;
struct mqttbr;

typedef void (*mqttbr_stopped_fn)(void *data);

struct keystore;

/*
 * The cloud side's settings, built by the composition root from the config's upstream,
 * presence and downlink groups (options_mqttbr()); strings are copied.
 */
struct mqttbr_options {
	const char *broker; /* as the config writes it, for log lines */
	const char *host;
	uint16_t port;
	const char *ca_file;     /* the broker's CA: its certificate and name are verified */
	const char *const *alpn; /* ALPN protocols offered, in order */
	size_t nalpn;
	bool mqtt311;                     /* MQTT 3.1.1 instead of 5 */
	int keepalive;                    /* seconds */
	int connect_timeout;              /* seconds */
	int publish_timeout;              /* seconds for a PUBACK */
	int reconnect_min, reconnect_max; /* seconds of backoff */
	int rejected_retry;               /* seconds between tries of a refused identity */
	unsigned session_lifetime;        /* seconds a TLS session may be resumed; 0: never */
	const char *online, *offline;     /* presence payloads (the offline one is the will) */
	int presence_qos;
	int command_qos; /* of the command subscription */
	/* On-demand sessions (mqttbr_session.on_demand): */
	int idle_timeout;        /* seconds up with nothing to do before it disconnects */
	unsigned session_expiry; /* seconds the broker keeps the session (MQTT 5) */
};

/*
 * ks's devices (keystore_devices()) are those that may have a session: each session hangs on
 * its device (its mqtt slot), keeps the device's upstream state (device_set_upstream()) and
 * ends when the store removes the device. ks also tells the time a handshake's signature takes
 * on the TPM worker, the pace at which connects are admitted.
 */
struct mqttbr *mqttbr_new(struct gw_loop *loop, const struct mqttbr_options *opt,
                          const struct keystore *ks);
/* Destroys every session without waiting; pending publishes are not reported. Accepts NULL. */
void mqttbr_free(struct mqttbr *br);

/* What a device's session is made of; mqttbr_add_device copies it. */
struct mqttbr_session {
	const char *cert_file;
	const char *key_file;
	/*
	 * Presence: published retained with conf's presence.online at each connect, and with
	 * presence.offline as the last will and at a clean stop. NULL: none.
	 */
	const char *status_topic;
	/* Subscribed at each connect; what arrives goes to the mqttbr_on_message observer. */
	const char *command_filter;
	/* The MQTT client id (NULL: the device id) and user name (NULL: none), see profile.h. */
	const char *client_id;
	const char *username;
	/*
	 * When its certificate (not one on trial) expires, 0 for unknown: past it, the device is
	 * refused until a connect with another certificate is accepted.
	 */
	time_t not_after;
	/*
	 * Connected only while there is something to do: readings to deliver, a sensor asking for
	 * its commands or observing them (device.observers). It connects without a clean start,
	 * so that the broker keeps its subscription and the commands sent meanwhile (for
	 * session_expiry seconds), and disconnects after idle_timeout seconds with nothing to do.
	 */
	bool on_demand;
};

/* Adds a store's device and starts connecting it (an on-demand one: once it is wanted). -ENOENT: no
 * such device; -EEXIST. */
int mqttbr_add_device(struct mqttbr *br, const char *id, const struct mqttbr_session *session,
                      struct device_mqtt **out);
struct device_mqtt *mqttbr_find(struct mqttbr *br, const char *id);
/*
 * Closes a device's session (its DISCONNECT still goes out) and forgets the device; its
 * publishes still pending are reported -ENOTCONN. Nothing happens for an unknown id.
 */
void mqttbr_remove_device(struct mqttbr *br, const char *id);

/*
 * Switches a device's session between always and on demand (mqttbr_session.on_demand) without
 * ending it; the broker's session follows from its next connect. Nothing for an unknown id.
 */
void mqttbr_set_on_demand(struct mqttbr *br, const char *id, bool on_demand);

/* Whether id's session was made of exactly session (false for an unknown id); on_demand is
 * not compared (mqttbr_set_on_demand() changes it in place). */
bool mqttbr_session_same(struct mqttbr *br, const char *id, const struct mqttbr_session *session);

/*
 * A reload: takes opt's settings. Timeouts and backoffs apply from their next use.
 * *restart_all is set when what sessions connect with changed (broker, CA, keepalive, presence
 * payloads, QoS): sessions already up keep the old settings until the caller restarts them.
 */
void mqttbr_reconfigure(struct mqttbr *br, const struct mqttbr_options *opt, bool *restart_all);

/*
 * Points a device at other files for its next connect, without touching the session (the
 * same key and certificate, renamed). The certificate's expiry is read at each connect: an
 * expired certificate is never presented, and a session ends when its certificate expires.
 */
int mqttbr_set_tls_files(struct mqttbr *br, const char *id, const char *cert_file,
                         const char *key_file);

/*
 * Told after each connect attempt: accepted, or failed (reason in words; mqttbr_status() says
 * whether the broker refused the device's identity). Called from the loop; it may remove the
 * device, after which reason is gone.
 */
typedef void (*mqttbr_judged_fn)(const char *id, bool accepted, const char *reason, void *data);
void mqttbr_on_judged(struct mqttbr *br, mqttbr_judged_fn fn, void *data);

enum mqttbr_status {
	MQTTBR_NONE, /* no session: unknown device, or none wanted */
	MQTTBR_CONNECTING,
	MQTTBR_CONNECTED,
	MQTTBR_RETRYING, /* waiting out the backoff after a failure or a loss */
	MQTTBR_REJECTED, /* the broker refused the device's identity; retried slowly */
	MQTTBR_IDLE,     /* on demand, nothing to do: connects when wanted */
	MQTTBR_STATUSES,
};

/* A device's upstream state, and why the last attempt failed (NULL if it did not). */
enum mqttbr_status mqttbr_status(struct mqttbr *br, const char *id, const char **reason);
const char *mqttbr_status_name(enum mqttbr_status st);
/*
 * Readings or a sensor wait for the device while its session is down: its connect goes before
 * those of devices with nothing to send (the backoff still applies).
 */
void mqttbr_wanted(struct device_mqtt *dev);

/*
 * The router's side of the bridge (gateway/data/upstream.h), with the struct mqttbr as its
 * up: publishes (the outcome -EMSGSIZE comes from the broker's CONNACK Maximum Packet Size),
 * Max-Age and wanted. The device's state is its upstream field (REFUSED while the broker
 * refuses its identity, retried slowly).
 */
extern const struct upstream_ops mqttbr_upstream_ops;

/* Told of every message arriving on a device's command subscription, on the loop. */
typedef void (*mqttbr_message_fn)(struct device *dev, const struct upstream_msg *m, void *data);
void mqttbr_on_message(struct mqttbr *br, mqttbr_message_fn fn, void *data);

/* Why a connect failed, for the counters (the words are in mqttbr_status()'s reason). */
enum mqttbr_failure {
	MQTTBR_FAIL_NETWORK,          /* no TCP, a timeout, the connection closed */
	MQTTBR_FAIL_BROKER_NAME,      /* the broker's certificate is not for upstream.broker */
	MQTTBR_FAIL_BROKER_UNTRUSTED, /* ... does not verify against upstream.ca_file */
	MQTTBR_FAIL_DEVICE_REFUSED,   /* the broker refused the device's identity */
	MQTTBR_FAIL_TLS,              /* another TLS failure */
	MQTTBR_FAIL_CONNACK,          /* a CONNACK refusal other than the identity's */
	MQTTBR_FAILS
};
const char *mqttbr_failure_name(enum mqttbr_failure kind);

/* Counters since start, and the sessions up now. */
struct mqttbr_stats {
	uint64_t connects;  /* attempted */
	uint64_t connected; /* accepted */
	uint64_t failures[MQTTBR_FAILS];
	uint64_t lost;       /* sessions that dropped after they were up */
	uint64_t idled;      /* on-demand sessions ended for want of work */
	uint64_t up;         /* sessions up now */
	uint64_t full;       /* TLS handshakes with a signature */
	uint64_t resumed;    /* TLS handshakes that resumed a session: no signature */
	uint64_t queued;     /* devices due to connect, waiting for their turn */
	uint64_t connecting; /* connects in flight */
	uint64_t sign_ms;    /* a handshake's signature as measured, the pace of admissions */
};
void mqttbr_get_stats(const struct mqttbr *br, struct mqttbr_stats *st);

/* Disconnects every session cleanly, then calls fn (within a bounded time). */
void mqttbr_stop(struct mqttbr *br, mqttbr_stopped_fn fn, void *data);

#endif
