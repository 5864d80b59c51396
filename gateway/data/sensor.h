/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_SENSOR_H
#define GW_SENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/*
 * The contract between a sensor bridge (bridges/coap) and the data path (the router), both
 * ways, so that neither includes the other's header: the bridge hands the router each uplink
 * through struct sensor_ops and asks it whether a sensor may read its commands; the router
 * answers each request and announces commands through struct sensor_side_ops.
 */

struct device;
struct gwconf_route;
/* One request waiting for its answer; the sensor bridge defines it. */
struct sensor_request;

enum sensor_status {
	SENSOR_CHANGED,     /* 2.04: the message is safe upstream */
	SENSOR_FORBIDDEN,   /* 4.03: the broker or a policy refused it */
	SENSOR_TOO_LARGE,   /* 4.13 with Size1: more than sensors.max_payload */
	SENSOR_UNAVAILABLE, /* 5.03 with Max-Age: upstream down, try again later */
	SENSOR_ERROR,       /* 5.00 */
};

struct sensor_uplink {
	struct device *dev; /* the sensor's, found once, when its DTLS session named it */
	const struct gwconf_route *route;
	bool put; /* PUT, else POST */
	const uint8_t *payload;
	size_t len; /* the whole message, reassembled from its Block1 blocks */
	bool confirmable;
	int content_format; /* CoAP Content-Format, -1 when absent */
};

/* A command from the cloud for a device's sensor; the holder frees it with free(). */
struct sensor_command {
	uint32_t seq;       /* increasing: the order commands came in */
	time_t expires;     /* CLOCK_MONOTONIC seconds */
	int content_format; /* CoAP Content-Format, -1 for none */
	size_t len;
	uint8_t payload[]; /* len bytes */
};

/* A command as it was sent, with the seq and expiry it had: to give it back. */
struct sensor_command *sensor_command_new(uint32_t seq, time_t expires, int content_format,
                                          const void *payload, size_t len);

/* What the sensor bridge calls: the router's (router_sensor_ops), or a test's. */
struct sensor_ops {
	/* Must lead to exactly one sensor_side_ops.complete(req, ...), now or later. */
	void (*uplink)(struct sensor_request *req, const struct sensor_uplink *up, void *data);
	/* Whether the device's sensor may read (GET, observe) the command resource. */
	bool (*may_read)(struct device *dev, const char *resource, void *data);
	/* The device's oldest command that has not expired, taken; NULL if none. */
	struct sensor_command *(*command_take)(struct device *dev, void *data);
	/*
	 * A command taken (or rebuilt with sensor_command_new()) that did not reach its sensor:
	 * back in its place by seq, unless it expired meanwhile. Takes ownership.
	 */
	void (*command_return)(struct device *dev, struct sensor_command *cmd, void *data);
	/* Commands waiting for the device (expired ones included until they are next looked at). */
	size_t (*commands_waiting)(struct device *dev, void *data);
};

/* What the router calls: the sensor bridge's (coapbr_sensor_side_ops), or a test's. */
struct sensor_side_ops {
	/* Answers an uplink request. arg: Max-Age for UNAVAILABLE, Size1 for TOO_LARGE (s, bytes).
	 */
	void (*complete)(struct sensor_request *req, enum sensor_status status, unsigned arg);
	/* New commands for the device are queued: its sensor gets them if it observes. */
	void (*commands_ready)(void *side, struct device *dev);
};

#endif
