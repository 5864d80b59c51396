/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_UPSTREAM_H
#define GW_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>

/*
 * The cloud side as the router sees it, and nothing more: a device's session publishes, and
 * says how long until it may be up; whether it is up is the device's upstream field
 * (device.h), which the implementation keeps. bridges/mqtt implements it
 * (mqttbr_upstream_ops); tests/unit/test-router.c fakes it.
 */

struct device;

struct upstream_msg {
	const char *topic;
	const void *payload;
	size_t len;
	int qos;
	bool retain;
	const char *content_type; /* the MQTT 5 property; NULL: none */
};

/*
 * A publish's outcome: 0 once the broker acknowledged it (QoS 1 PUBACK, or on the socket for
 * QoS 0); -ENOTCONN if the session dropped first; -EACCES if the broker refused it (not
 * authorised, an invalid topic); -EMSGSIZE if it is larger than the broker takes; -ETIMEDOUT
 * if no acknowledgement came in time; -EAGAIN if the broker is busy; other -errno.
 */
typedef void (*upstream_done_fn)(int status, void *data);

struct upstream_ops {
	/*
	 * Publishes on the device's session: 0, and done is called exactly once later (from the
	 * loop, never from inside this call); or -errno now, and done is never called:
	 * -ENOTCONN when the session is not up, -EMSGSIZE when the message is larger than the
	 * broker's Maximum Packet Size.
	 */
	int (*publish)(void *up, struct device *dev, const struct upstream_msg *m,
	               upstream_done_fn done, void *data);
	/* Seconds until the device's session may be up again: CoAP's Max-Age on a 5.03. */
	unsigned (*retry_after)(void *up, struct device *dev);
	/* Data waits for the device: its connect goes before those of devices with none. */
	void (*wanted)(void *up, struct device *dev);
};

#endif
