/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_COAPBR_H
#define GW_COAPBR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sensor.h"

/*
 * The sensor side: a CoAP server over DTLS with per-sensor pre-shared keys, driven from the
 * daemon's loop. Each POST or PUT on a routed resource becomes an uplink request that the
 * router answers once its outcome is known; until then a CON gets libcoap's empty ACK and the
 * real answer follows as a separate response (RFC 7252 section 5.2.2).
 */

struct gw_loop;
struct gwconf_route;
struct keystore;
struct coapbr;
struct device;

/*
 * The sensor side's settings, built by the composition root from the config's sensors, routes
 * and downlink groups (options_coapbr()). Strings are copied; routes must outlive the bridge
 * or the next coapbr_reconfigure().
 */
struct coapbr_options {
	const char *listen; /* a numeric IPv4 or IPv6 address */
	uint16_t port;
	int receive_buffer;  /* bytes asked of the kernel for the socket */
	size_t max_sessions; /* DTLS sessions held at once */
	size_t max_payload;  /* bytes of one message, reassembled from Block1 if need be */
	/*
	 * Milliseconds a confirmable uplink's ACK is held back to carry its answer (RFC 7252
	 * section 5.2.1); an answer later than that comes as a separate response. 0: always
	 * separate (an empty ACK at once).
	 */
	unsigned piggyback_wait;
	/* The resources served; each uplink hands its route to the router. */
	const struct gwconf_route *routes;
	size_t nroutes;
	const char *commands_resource; /* NULL: no command resource (no downlink subscription) */
};

/*
 * Serves opt's routes and its command resource: a sensor takes its device's commands (from
 * ops) by GET, or has them pushed by observing it (RFC 7641). ops and data are kept.
 */
int coapbr_new(struct coapbr **out, struct gw_loop *loop, const struct coapbr_options *opt,
               const struct keystore *ks, const struct sensor_ops *ops, void *data);

/* New commands for device are queued: pushes them to its sensor if that one observes. */
void coapbr_commands_ready(struct coapbr *br, struct device *dev);
/* Accepts NULL. Requests not yet completed are dropped without an answer. */
void coapbr_free(struct coapbr *br);

/*
 * A reload: opt's routes, max_payload, max_sessions, piggyback_wait and command resource (which
 * does not come or go: only its path changes) from now on. DTLS sessions stay; Block1 uploads under
 * way start again if max_payload changed.
 */
void coapbr_reconfigure(struct coapbr *br, const struct coapbr_options *opt);

/*
 * Devices were added or removed: the number of DTLS handshakes libcoap takes at once follows
 * the paired fleet (at least libcoap's 100, at most sensors.max_sessions).
 */
void coapbr_fleet_changed(struct coapbr *br);

/*
 * Closes the DTLS sessions of a device (NULL: of every device) with close_notify: all of them,
 * or with stale_only those whose PSK identity is no longer valid (rotated out by pairing, grace
 * over; a sweep does that every 30 s by itself). Their pending answers are
 * dropped. Call from the loop, never from inside a request handler. New handshakes are
 * refused by the keystore's PSK lookup, not here.
 */
void coapbr_drop_device(struct coapbr *br, const char *device, bool stale_only);

/* The sensor side's counters since start, and its DTLS sessions now. */
enum { COAPBR_PIGGYBACKED, COAPBR_SEPARATE };
struct coapbr_stats {
	uint64_t handshakes;       /* DTLS sessions established */
	uint64_t refused_unknown;  /* handshakes refused: PSK identity unknown (or retired) */
	uint64_t refused_inactive; /* ... the device is suspended, revoked or disabled */
	uint64_t key_mismatch;     /* ... a known identity never completed it: a wrong key */
	uint64_t handshake_failed; /* ... failed otherwise (a broken or abandoned handshake) */
	uint64_t sessions;         /* established DTLS sessions held now */
	/*
	 * Answers to CONs that waited for the router: on the ACK (within piggyback_wait), or
	 * separate (after an empty ACK).
	 */
	uint64_t answers[2];
};
void coapbr_get_stats(const struct coapbr *br, struct coapbr_stats *st);
/* Established DTLS sessions of the device's sensor now. */
unsigned coapbr_device_sessions(const struct coapbr *br, const char *device);

/* Answers an uplink request. max_age: seconds, used with SENSOR_UNAVAILABLE. */
void coapbr_complete(struct sensor_request *req, enum sensor_status status, unsigned max_age);

/* The two above for the router (sensor.h), with the struct coapbr as side. */
extern const struct sensor_side_ops coapbr_sensor_side_ops;

#endif
