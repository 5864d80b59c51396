/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_POLICY_H
#define GW_POLICY_H

/*
 * Access policies, in the spirit of AWS IoT policies: which device may do what to which CoAP
 * resource or MQTT topic. The rules are the config's "policies" list (struct gwconf_policy);
 * this module evaluates them, once per message, without allocating.
 */

#include <stdbool.h>
#include <stddef.h>

struct gwconf;

enum policy_action {
	POLICY_COAP_POST,      /* a sensor POSTs to a resource */
	POLICY_COAP_PUT,       /* a sensor PUTs to a resource */
	POLICY_COAP_GET,       /* a sensor reads or observes its command resource */
	POLICY_MQTT_PUBLISH,   /* the device's session publishes to a topic (uplink) */
	POLICY_MQTT_SUBSCRIBE, /* the device's session subscribes to a topic filter */
	POLICY_MQTT_RECEIVE,   /* a message arrives on a topic for the device (downlink) */
	POLICY_NACTIONS
};

/* How the evaluator reads a device's attributes (the daemon passes the keystore's lookup). */
typedef const char *(*policy_attr_fn)(const char *device, const char *key, void *data);

/* Who acts. attr may be NULL: the device then has no attributes. */
struct policy_subject {
	const char *device;
	const char *gateway;
	policy_attr_fn attr;
	void *attr_data;
};

/*
 * Whether who may do act to resource (a CoAP Uri-Path such as "env/temp", or an MQTT topic,
 * for POLICY_MQTT_SUBSCRIBE a topic filter). A matching deny wins over any allow; with no
 * matching allow the answer is no; a config without a "policies" list allows everything.
 * why (may be NULL) gets the reason, such as "denied by policy 'x' (FILE:LINE)".
 */
bool policy_allows(const struct gwconf *conf, const struct policy_subject *who,
                   enum policy_action act, const char *resource, char *why, size_t whylen);

/* The action as a policy names it, "coap:post"; "unknown" if act is not an action. */
const char *policy_action_name(enum policy_action act);

/*
 * The actions a policy's action name stands for, as a mask of 1u << enum policy_action:
 * "coap:post" one bit, "coap:*" and "mqtt:*" those of a kind, "*" all. 0 if unknown.
 */
unsigned policy_action_mask(const char *name);

#endif
