/* SPDX-License-Identifier: Apache-2.0 */
#include "profile.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

const char *const profile_names[] = {
        [GWCONF_PROFILE_GENERIC] = "generic",
        [GWCONF_PROFILE_AWS] = "aws",
        [GWCONF_PROFILE_AZURE] = "azure",
        NULL,
};

/*
 * AWS IoT Core's MQTT over port 443 is chosen by this ALPN protocol ("MQTT with X.509 client
 * certificate authentication on port 443", AWS IoT Core developer guide, "Protocols").
 */
#define AWS_ALPN "x-amzn-mqtt-ca"

/*
 * AWS IoT Core quota: a topic or topic filter has at most 7 forward slashes; the broker closes
 * the connection of a client that publishes to a longer one.
 */
#define AWS_MAX_SLASHES 7

int
profile_lookup(const char *name, enum gwconf_profile *out)
{
	for (int i = 0; profile_names[i]; i++) {
		if (strcmp(name, profile_names[i]) == 0) {
			*out = (enum gwconf_profile)i;
			return 0;
		}
	}
	return -ENOENT;
}

const char *
profile_name(enum gwconf_profile p)
{
	return profile_names[p];
}

void
profile_defaults(enum gwconf_profile p, const char *host, uint16_t port,
                 struct profile_defaults *out)
{
	*out = (struct profile_defaults){
	        .client_id = "${device}",
	        .mqtt_version = GWCONF_MQTT_5,
	        .retain = true,
	};
	switch (p) {
	case GWCONF_PROFILE_GENERIC:
		break;
	case GWCONF_PROFILE_AWS:
		/*
		 * The client id is the thing name, so that policies can use
		 * ${iot:Connection.Thing.ThingName}. Topics follow AWS's "Designing MQTT Topics
		 * for AWS IoT Core": dt/<application>/<context>/<thing>/<type> for telemetry and
		 * cmd/... for commands, with the gateway as the context and the thing in a fixed
		 * level a policy can pin to the connecting thing.
		 */
		if (port == 443)
			out->alpn = AWS_ALPN;
		out->uplink_topic = "dt/${gateway}/${device}/${path}";
		out->command_filter = "cmd/${gateway}/${device}/#";
		break;
	case GWCONF_PROFILE_AZURE:
		/*
		 * Azure IoT Hub, "Communicate with an IoT hub using the MQTT protocol": MQTT 3.1.1,
		 * client id = device id, user name {iotHub-hostname}/{device-id}/?api-version=...,
		 * X.509 authentication without a password. No retained messages.
		 */
		out->mqtt_version = GWCONF_MQTT_311;
		snprintf(out->username, sizeof(out->username),
		         "%s/${device}/?api-version=" PROFILE_AZURE_API_VERSION, host);
		out->uplink_topic = "devices/${device}/messages/events/";
		out->command_filter = "devices/${device}/messages/devicebound/#";
		out->retain = false;
		break;
	}
}

/* "devices/CLIENT_ID/messages/KIND/" for the configured client id template. */
static int
azure_prefix(const struct gwconf *conf, const char *kind, char *out, size_t len)
{
	int n;

	/* Without a valid client id (reported) there is no prefix to check against. */
	if (!conf->upstream.client_id)
		return -EINVAL;
	n = snprintf(out, len, "devices/%s/messages/%s/", conf->upstream.client_id, kind);

	return n < 0 || (size_t)n >= len ? -ENOBUFS : 0;
}

int
profile_route_topic(const struct gwconf *conf, const char *resource, char *out, size_t len)
{
	struct profile_defaults def;
	int r;

	profile_defaults(conf->upstream.profile, "", 0, &def);
	switch (conf->upstream.profile) {
	case GWCONF_PROFILE_AZURE:
		/* The resource as an application property, which IoT Hub's routing can query. */
		r = azure_prefix(conf, "events", out, len);
		return r < 0 ? r : profile_bag_append(out, len, "path", resource);
	case GWCONF_PROFILE_AWS:
		if (strlen(def.uplink_topic) >= len)
			return -ENOBUFS;
		strcpy(out, def.uplink_topic);
		return 0;
	default:
		return -ENOENT;
	}
}

int
profile_command_filter(const struct gwconf *conf, char *out, size_t len)
{
	struct profile_defaults def;
	int r;

	profile_defaults(conf->upstream.profile, "", 0, &def);
	switch (conf->upstream.profile) {
	case GWCONF_PROFILE_AZURE:
		r = azure_prefix(conf, "devicebound", out, len);
		if (r < 0 || strlen(out) + 1 >= len)
			return -ENOBUFS;
		strcat(out, "#");
		return 0;
	case GWCONF_PROFILE_AWS:
		if (strlen(def.command_filter) >= len)
			return -ENOBUFS;
		strcpy(out, def.command_filter);
		return 0;
	default:
		return -ENOENT;
	}
}

/* The '/'s of tmpl once ${path} is resource: other values never hold one. */
static int
count_slashes(const char *tmpl, const char *resource)
{
	int n = 0, per_path = 0;

	for (const char *s = resource; *s; s++)
		per_path += *s == '/';
	for (const char *s = tmpl; *s; s++) {
		if (strncmp(s, "${path}", 7) == 0) {
			n += per_path;
			s += 6;
		} else if (*s == '/') {
			n++;
		}
	}
	return n;
}

int
profile_check_route(const struct gwconf *conf, const struct gwconf_route *route, char *err,
                    size_t errlen)
{
	char prefix[PROFILE_CLIENT_ID_MAX * 2 + 64];
	int n;

	switch (conf->upstream.profile) {
	case GWCONF_PROFILE_AZURE:
		if (azure_prefix(conf, "events", prefix, sizeof(prefix)) < 0)
			return 0; /* the client id's own check speaks */
		if (strncmp(route->topic, prefix, strlen(prefix)) != 0) {
			snprintf(err, errlen,
			         "topic \"%s\" is not under \"%s\": Azure IoT Hub takes device "
			         "messages only there and disconnects a device that publishes "
			         "elsewhere (upstream.profile is \"azure\")",
			         route->topic, prefix);
			return -EINVAL;
		}
		return 0;
	case GWCONF_PROFILE_AWS:
		n = count_slashes(route->topic, route->resource) +
		    (route->content_type == GWCONF_CTYPE_SUFFIX);
		if (n > AWS_MAX_SLASHES) {
			snprintf(err, errlen,
			         "topic \"%s\" has %d '/' for resource \"%s\"%s: AWS IoT Core "
			         "allows at most %d (upstream.profile is \"aws\")",
			         route->topic, n, route->resource,
			         route->content_type == GWCONF_CTYPE_SUFFIX ? " with its suffix"
			                                                    : "",
			         AWS_MAX_SLASHES);
			return -EINVAL;
		}
		return 0;
	default:
		return 0;
	}
}

int
profile_check_filter(const struct gwconf *conf, const char *filter, char *err, size_t errlen)
{
	char prefix[PROFILE_CLIENT_ID_MAX * 2 + 64];
	int n;

	switch (conf->upstream.profile) {
	case GWCONF_PROFILE_AZURE:
		if (azure_prefix(conf, "devicebound", prefix, sizeof(prefix)) < 0)
			return 0;
		if (strncmp(filter, prefix, strlen(prefix)) != 0) {
			snprintf(err, errlen,
			         "topic filter \"%s\" is not under \"%s\": Azure IoT Hub sends a "
			         "device's messages only there (upstream.profile is \"azure\")",
			         filter, prefix);
			return -EINVAL;
		}
		return 0;
	case GWCONF_PROFILE_AWS:
		n = count_slashes(filter, "");
		if (n > AWS_MAX_SLASHES) {
			snprintf(err, errlen,
			         "topic filter \"%s\" has %d '/': AWS IoT Core allows at most %d "
			         "(upstream.profile is \"aws\")",
			         filter, n, AWS_MAX_SLASHES);
			return -EINVAL;
		}
		return 0;
	default:
		return 0;
	}
}

static ssize_t
expand(const struct gwconf *conf, const char *tmpl, const char *device, tmpl_attr_fn attr,
       void *attr_data, char *out, size_t len)
{
	struct tmpl_vars vars = {
	        .value = {[TMPL_DEVICE] = device,
	                  [TMPL_PATH] = "",
	                  [TMPL_GATEWAY] = conf->gateway_id},
	        .attr = attr,
	        .attr_data = attr_data,
	};

	return tmpl_expand(tmpl, &vars, out, len);
}

int
profile_session(const struct gwconf *conf, const char *device, tmpl_attr_fn attr, void *attr_data,
                struct profile_session *out)
{
	ssize_t n;

	*out = (struct profile_session){
	        .mqtt_version = conf->upstream.mqtt_version,
	        .alpn = conf->upstream.alpn,
	        .nalpn = conf->upstream.nalpn,
	};
	n = expand(conf, conf->upstream.client_id, device, attr, attr_data, out->client_id,
	           sizeof(out->client_id));
	if (n < 0)
		return (int)n;
	/* MQTT 3.1.1 section 3.1.3.1: a server may refuse an empty one; ours are never. */
	if (n == 0)
		return -EINVAL;
	if (!conf->upstream.username)
		return 0;
	n = expand(conf, conf->upstream.username, device, attr, attr_data, out->username,
	           sizeof(out->username));
	if (n < 0)
		return (int)n;
	out->has_username = true;
	return 0;
}

int
profile_bag_append(char *topic, size_t len, const char *key, const char *value)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = strlen(topic), start = n, klen = strlen(key);

	/* The first property follows the '/' after events; the others an '&'. */
	if (n > 0 && topic[n - 1] != '/')
		topic[n++] = '&';
	if (n + klen + 1 >= len)
		goto full;
	memcpy(topic + n, key, klen);
	n += klen;
	topic[n++] = '=';
	for (const char *s = value; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		    strchr("-._~", c)) {
			if (n + 1 >= len)
				goto full;
			topic[n++] = (char)c;
		} else {
			if (n + 3 >= len)
				goto full;
			topic[n++] = '%';
			topic[n++] = hex[c >> 4];
			topic[n++] = hex[c & 15];
		}
	}
	topic[n] = '\0';
	return 0;
full:
	topic[start] = '\0';
	return -ENOBUFS;
}
