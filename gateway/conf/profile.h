/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_PROFILE_H
#define GW_PROFILE_H

/*
 * Cloud profiles (upstream.profile): what a kind of broker needs of a device's session (client
 * id, user name, ALPN, MQTT version) and where its topics go. The config parser applies a
 * profile's defaults to what the file leaves unset and checks topics against the profile's
 * rules; the daemon asks profile_session() for each device's client id and user name. Pure
 * functions of their arguments: no I/O, no state.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "template.h"

/* AWS IoT Core and Azure IoT Hub both take client ids of up to 128 bytes. */
#define PROFILE_CLIENT_ID_MAX 128
#define PROFILE_USERNAME_MAX  512

/* Azure IoT Hub's MQTT api-version used in the default user name. */
#define PROFILE_AZURE_API_VERSION "2021-04-12"

/* The profile names, NULL-terminated, in enum gwconf_profile's order. */
extern const char *const profile_names[];

/* The profile called name (exactly, lower case): 0, or -ENOENT. */
int profile_lookup(const char *name, enum gwconf_profile *out);
const char *profile_name(enum gwconf_profile p);

/* What a profile sets where the config says nothing, for a broker at host:port. */
struct profile_defaults {
	const char *client_id; /* template */
	/* Template; "" when no user name is sent. */
	char username[PROFILE_USERNAME_MAX];
	const char *alpn; /* the one ALPN protocol offered, NULL for none */
	int mqtt_version; /* GWCONF_MQTT_5 or GWCONF_MQTT_311 */
	/* A route's topic when it gives none: a template, NULL when required (generic). Under
	 * azure it is the prefix, and profile_route_topic() adds the resource as a property. */
	const char *uplink_topic;
	const char *command_filter; /* downlink.topic when not given; NULL when required */
	bool retain;                /* the broker keeps retained messages (presence needs it) */
};
void profile_defaults(enum gwconf_profile p, const char *host, uint16_t port,
                      struct profile_defaults *out);

/*
 * The topic template for a route of resource that gives none, under conf's profile and client
 * id: 0, -ENOENT where the profile has none (generic), -ENOBUFS.
 */
int profile_route_topic(const struct gwconf *conf, const char *resource, char *out, size_t len);
/* downlink.topic when the downlink group gives none: as profile_route_topic. */
int profile_command_filter(const struct gwconf *conf, char *out, size_t len);

/*
 * The profile's rules for a route's publish topic (route->topic, resource and content_type
 * set) and for the downlink's filter: 0, or -EINVAL with the reason in err.
 */
int profile_check_route(const struct gwconf *conf, const struct gwconf_route *route, char *err,
                        size_t errlen);
int profile_check_filter(const struct gwconf *conf, const char *filter, char *err, size_t errlen);

/* One device's session, as its profile and the config make it. */
struct profile_session {
	char client_id[PROFILE_CLIENT_ID_MAX + 1];
	char username[PROFILE_USERNAME_MAX + 1];
	bool has_username;
	int mqtt_version;
	char *const *alpn; /* conf's upstream.alpn */
	size_t nalpn;
};

/*
 * Expands the client id and user name templates for device (attr answers ${attr.NAME}, may be
 * NULL). 0; -ENOENT for an attribute that is unset, -EINVAL for a value that cannot go in
 * (a '/' in an attribute, '+' or '#'), -ENOBUFS when too long.
 */
int profile_session(const struct gwconf *conf, const char *device, tmpl_attr_fn attr,
                    void *attr_data, struct profile_session *out);

/*
 * Appends key=value to an Azure IoT Hub topic's property bag (the part after
 * .../messages/events/), '&'-separated; value percent-encoded (RFC 3986 section 2.1: all but
 * unreserved characters), key as given ("$.ct" names a system property): 0, or -ENOBUFS and
 * topic unchanged.
 */
int profile_bag_append(char *topic, size_t len, const char *key, const char *value);

#endif
