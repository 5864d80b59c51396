/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_ROUTER_H
#define GW_ROUTER_H

#include "profile.h"
#include "sensor.h"
#include "upstream.h"

#include <stdbool.h>

#include <stdint.h>
#include <time.h>

/*
 * Joins the two bridges. Uplink: a sensor's message is checked against the policies, its topic
 * built from the route's template, and it goes through the device's spool to the device's own
 * upstream session, in order; the sensor's answer follows the config's `spool.ack` (the
 * reliability contract, DESIGN.md 6). Downlink: a command arriving on a device's session is
 * checked and queued for its sensor. The router also names each session's presence topic and
 * command subscription.
 */

struct cmdq;
struct device;
struct device_registry;
struct gw_loop;
struct gwconf;
struct router;
struct spool;

/* What the router is made of; router_new() copies it. */
struct router_options {
	struct gw_loop *loop;
	const struct gwconf *conf; /* routes, policies, templates, the spool's ack and fsync */
	struct spool *spool;
	/* The store's devices: the router hangs its state for each on it, and lets go at removal.
	 */
	struct device_registry *devices;
	struct cmdq *commands; /* NULL without a downlink group */
	/* The cloud side (upstream.h). */
	const struct upstream_ops *up_ops;
	void *up;
	/* A device's attribute, for policies and templates; NULL when it has none. */
	const char *(*attr)(const struct device *dev, const char *key, void *data);
	void *data; /* of attr */
};

struct router *router_new(const struct router_options *opt);
/* Accepts NULL. Sensors still waiting for an answer get none (they retransmit). */
void router_free(struct router *rt);

/*
 * A reload: routes, policies, templates and the spool's ack mode come from conf from now on
 * (the caller frees the old one afterwards; nothing of it is kept).
 */
void router_set_conf(struct router *rt, const struct gwconf *conf);

/* The sensor side (sensor.h): answers requests, told when a device's commands arrive. */
void router_set_sensor_side(struct router *rt, const struct sensor_side_ops *ops, void *side);

/* The sensor_ops to serve sensors with; their data is the router. */
extern const struct sensor_ops router_sensor_ops;

/*
 * A device's presence topic and command filter, expanded. has_* is false where the config
 * has none, where a template cannot be expanded for this device, or where a policy denies the
 * subscription (both logged): the session then goes without that part.
 */
struct router_session {
	char status_topic[512];
	char command_filter[512];
	bool has_status;
	bool has_commands;
	/* Its client id and user name (upstream.profile); ids_error < 0: none can be made. */
	struct profile_session ids;
	int ids_error;
};
void router_session_topics(struct router *rt, const struct device *dev, struct router_session *out);

/* A message on a device's command subscription (mqttbr_message_fn); data is the router. */
void router_downlink(struct device *dev, const struct upstream_msg *m, void *data);

/* What waits for the device: messages in its spool (and their bytes), commands queued. */
void router_device_queues(const struct router *rt, const char *device, uint64_t *spooled,
                          uint64_t *bytes, size_t *commands);

/*
 * gwctl device drop-spool: drops the messages in device's spool, *count of them (*bytes); for
 * a device whose messages cannot be delivered (the broker refuses it) and that the operator
 * gives up on. -EBUSY while its upstream session is up (they are being delivered), -ENOENT if
 * there is no such device.
 */
int router_drop_spool(struct router *rt, const char *device, uint64_t *count, uint64_t *bytes);

struct router_stats {
	uint64_t up_messages, up_bytes;     /* accepted from sensors */
	uint64_t published;                 /* acknowledged upstream (QoS 1) or sent (QoS 0) */
	uint64_t denied_up;                 /* sensor messages refused by a policy (4.03) */
	uint64_t denied_get;                /* sensor GETs of commands refused by a policy */
	uint64_t denied_down;               /* commands dropped by a policy */
	uint64_t refused_full;              /* 5.03: the spool was full */
	uint64_t broker_refused;            /* dropped: the broker refused the publish */
	uint64_t down_messages, down_bytes; /* commands queued for sensors */
	uint64_t down_too_large;            /* commands dropped: larger than one CoAP message */
};
void router_get_stats(const struct router *rt, struct router_stats *st);

/* One device's share since start; all 0 for a device not heard from. */
struct router_device_stats {
	uint64_t up_messages, up_bytes;     /* accepted from its sensor */
	uint64_t down_messages, down_bytes; /* commands queued for its sensor */
	time_t last_seen;                   /* its sensor's last request (wall clock), or 0 */
};
void router_device_stats(const struct router *rt, const char *device,
                         struct router_device_stats *st);

#endif
