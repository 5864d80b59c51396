/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Cloud profiles: what each one makes of a config (client id, user name, ALPN, MQTT version,
 * topics), what a device's session gets, and the errors a profile's rules give.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf-fixture.h"
#include "conf.h"
#include "profile.h"
#include "template.h"

/* Device attributes for ${attr.NAME}: "name=value" strings, NULL-terminated. */
static const char *
attrs(const char *name, size_t len, void *data)
{
	for (const char *const *a = data; *a; a++) {
		if (strncmp(*a, name, len) == 0 && (*a)[len] == '=')
			return *a + len + 1;
	}
	return NULL;
}

/* A template as the router expands it for device dev-a and resource path. */
static void
assert_expands(const struct gwconf *c, const char *tmpl, const char *path, const char *want)
{
	struct tmpl_vars vars = {
	        .value = {[TMPL_DEVICE] = "dev-a",
	                  [TMPL_PATH] = path,
	                  [TMPL_GATEWAY] = c->gateway_id},
	};
	char out[512];

	assert_true(tmpl_expand(tmpl, &vars, out, sizeof(out)) >= 0);
	assert_string_equal(out, want);
}

static void
generic_is_mqtt5_with_the_device_id_and_no_user_name(void **state)
{
	struct gwconf *c = load_ok("good-minimal.conf");
	struct profile_session s;
	struct profile_defaults def;

	(void)state;
	assert_int_equal(c->upstream.profile, GWCONF_PROFILE_GENERIC);
	assert_string_equal(c->upstream.client_id, "${device}");
	assert_null(c->upstream.username);
	assert_int_equal(c->upstream.nalpn, 0);
	assert_int_equal(c->upstream.mqtt_version, GWCONF_MQTT_5);
	assert_int_equal(c->routes[0].content_type, GWCONF_CTYPE_PROPERTY);
	assert_int_equal(profile_session(c, "dev-a", NULL, NULL, &s), 0);
	assert_string_equal(s.client_id, "dev-a");
	assert_false(s.has_username);
	assert_int_equal(s.mqtt_version, GWCONF_MQTT_5);
	assert_int_equal(s.nalpn, 0);
	/* Generic has no topics of its own: routes and the downlink name theirs. */
	profile_defaults(GWCONF_PROFILE_GENERIC, "broker.example.com", 443, &def);
	assert_null(def.uplink_topic);
	assert_null(def.command_filter);
	assert_null(def.alpn);
	assert_string_equal(def.username, "");
	assert_true(def.retain);
	gwconf_free(c);
}

static void
aws_on_443_offers_alpn_and_puts_topics_under_the_thing(void **state)
{
	struct gwconf *c = load_ok("good-profile-aws.conf");
	struct profile_session s;

	(void)state;
	assert_int_equal(c->upstream.profile, GWCONF_PROFILE_AWS);
	assert_int_equal(c->upstream.broker_port, 443);
	assert_int_equal(c->upstream.nalpn, 1);
	assert_string_equal(c->upstream.alpn[0], "x-amzn-mqtt-ca");
	assert_int_equal(c->upstream.mqtt_version, GWCONF_MQTT_5);
	assert_null(c->upstream.username);
	/* A route without a topic gets the profile's; one with a topic keeps it. */
	assert_string_equal(c->routes[0].topic, "dt/${gateway}/${device}/${path}");
	assert_expands(c, c->routes[0].topic, "env/temp", "dt/gw-01/dev-a/env/temp");
	assert_string_equal(c->routes[1].topic, "sensors/${device}/${path}");
	assert_int_equal(c->routes[0].content_type, GWCONF_CTYPE_PROPERTY);
	assert_string_equal(c->downlink.topic, "cmd/${gateway}/${device}/#");
	assert_expands(c, c->downlink.topic, "", "cmd/gw-01/dev-a/#");
	/* AWS keeps retained messages: presence is allowed. */
	assert_string_equal(c->presence.topic, "dt/${gateway}/${device}/status");
	/* The client id is the thing name, the device id. */
	assert_int_equal(profile_session(c, "dev-a", NULL, NULL, &s), 0);
	assert_string_equal(s.client_id, "dev-a");
	assert_false(s.has_username);
	assert_int_equal(s.nalpn, 1);
	assert_string_equal(s.alpn[0], "x-amzn-mqtt-ca");
	gwconf_free(c);
}

static void
aws_alpn_only_on_443(void **state)
{
	struct profile_defaults def;

	(void)state;
	profile_defaults(GWCONF_PROFILE_AWS, "x.amazonaws.com", 8883, &def);
	assert_null(def.alpn);
	profile_defaults(GWCONF_PROFILE_AWS, "x.amazonaws.com", 443, &def);
	assert_non_null(def.alpn);
	assert_string_equal(def.alpn, "x-amzn-mqtt-ca");
	assert_int_equal(def.mqtt_version, GWCONF_MQTT_5);
	assert_string_equal(def.client_id, "${device}");
	assert_string_equal(def.username, "");
	assert_string_equal(def.uplink_topic, "dt/${gateway}/${device}/${path}");
	assert_string_equal(def.command_filter, "cmd/${gateway}/${device}/#");
	assert_true(def.retain);
}

static void
explicit_keys_win_over_the_profile(void **state)
{
	struct gwconf *c = load_ok("good-profile-aws-own.conf");
	const char *const with_owner[] = {"owner=acme", NULL};
	const char *const without[] = {"site=lab", NULL};
	const char *const with_slash[] = {"owner=a/b", NULL};
	struct profile_session s;

	(void)state;
	assert_int_equal(c->upstream.profile, GWCONF_PROFILE_AWS);
	assert_string_equal(c->upstream.client_id, "${gateway}-${device}");
	assert_string_equal(c->upstream.username, "${attr.owner}");
	/* On 8883 too, in the order written. */
	assert_int_equal(c->upstream.nalpn, 2);
	assert_string_equal(c->upstream.alpn[0], "mqtt");
	assert_string_equal(c->upstream.alpn[1], "x-amzn-mqtt-ca");
	assert_int_equal(c->upstream.mqtt_version, GWCONF_MQTT_311);
	/* 3.1.1: a suffix as written; "drop" where nothing is written. */
	assert_int_equal(c->routes[0].content_type, GWCONF_CTYPE_SUFFIX);
	assert_int_equal(c->routes[1].content_type, GWCONF_CTYPE_DROP);
	assert_string_equal(c->routes[1].topic, "dt/${gateway}/${device}/${path}");
	assert_string_equal(c->downlink.topic, "things/${device}/cmd");

	assert_int_equal(profile_session(c, "dev-a", attrs, (void *)with_owner, &s), 0);
	assert_string_equal(s.client_id, "gw-01-dev-a");
	assert_true(s.has_username);
	assert_string_equal(s.username, "acme");
	assert_int_equal(s.mqtt_version, GWCONF_MQTT_311);
	/* A device without the attribute gets no session rather than an empty user name. */
	assert_int_equal(profile_session(c, "dev-a", attrs, (void *)without, &s), -ENOENT);
	assert_int_equal(profile_session(c, "dev-a", attrs, (void *)with_slash, &s), -EINVAL);
	gwconf_free(c);
}

static void
an_empty_alpn_list_wins_over_the_aws_default(void **state)
{
	struct gwconf *c = load_ok("good-profile-aws-443-noalpn.conf");

	(void)state;
	assert_int_equal(c->upstream.broker_port, 443);
	assert_int_equal(c->upstream.nalpn, 0);
	assert_int_equal(c->upstream.mqtt_version, GWCONF_MQTT_5);
	gwconf_free(c);
}

static void
azure_is_mqtt311_with_hub_user_names_and_event_topics(void **state)
{
	struct gwconf *c = load_ok("good-profile-azure.conf");
	struct profile_session s;
	struct profile_defaults def;

	(void)state;
	assert_int_equal(c->upstream.profile, GWCONF_PROFILE_AZURE);
	assert_int_equal(c->upstream.mqtt_version, GWCONF_MQTT_311);
	assert_int_equal(c->upstream.nalpn, 0);
	assert_string_equal(c->upstream.client_id, "${device}");
	assert_string_equal(c->upstream.username,
	                    "myhub.azure-devices.net/${device}/?api-version=2021-04-12");
	/* The resource as a property in the bag, its '/' percent-encoded. */
	assert_string_equal(c->routes[0].topic,
	                    "devices/${device}/messages/events/path=env%2Ftemp");
	assert_expands(c, c->routes[0].topic, "env/temp",
	               "devices/dev-a/messages/events/path=env%2Ftemp");
	/* "property" (the default) is $.ct in the bag, even over 3.1.1. */
	assert_int_equal(c->routes[0].content_type, GWCONF_CTYPE_BAG);
	assert_string_equal(c->routes[1].topic, "devices/${device}/messages/events/kind=alarm");
	assert_int_equal(c->routes[1].content_type, GWCONF_CTYPE_DROP);
	assert_string_equal(c->downlink.topic, "devices/${device}/messages/devicebound/#");
	assert_int_equal(c->downlink.queue, 2);
	assert_null(c->presence.topic);

	assert_int_equal(profile_session(c, "dev-a", NULL, NULL, &s), 0);
	assert_string_equal(s.client_id, "dev-a");
	assert_true(s.has_username);
	assert_string_equal(s.username, "myhub.azure-devices.net/dev-a/?api-version=2021-04-12");
	assert_int_equal(s.mqtt_version, GWCONF_MQTT_311);

	profile_defaults(GWCONF_PROFILE_AZURE, "other.azure-devices.net", 8883, &def);
	assert_string_equal(def.username,
	                    "other.azure-devices.net/${device}/?api-version=2021-04-12");
	assert_string_equal(def.uplink_topic, "devices/${device}/messages/events/");
	assert_string_equal(def.command_filter, "devices/${device}/messages/devicebound/#");
	assert_null(def.alpn);
	assert_false(def.retain);
	gwconf_free(c);
}

static void
azure_topics_follow_the_client_id(void **state)
{
	struct gwconf *c = load_ok("good-profile-azure-own.conf");
	const char *const a[] = {"hub_id=Hub-Dev.7", NULL};
	struct profile_session s;

	(void)state;
	assert_string_equal(c->routes[0].topic, "devices/${attr.hub_id}/messages/events/path=temp");
	assert_string_equal(c->downlink.topic, "devices/${attr.hub_id}/messages/devicebound/#");
	assert_int_equal(profile_session(c, "dev-a", attrs, (void *)a, &s), 0);
	assert_string_equal(s.client_id, "Hub-Dev.7");
	assert_string_equal(s.username,
	                    "myhub.azure-devices.net/Hub-Dev.7/?api-version=2018-06-30");
	gwconf_free(c);
}

static void
property_bag_values_are_percent_encoded(void **state)
{
	char t[72] = "devices/d/messages/events/";

	(void)state;
	assert_int_equal(profile_bag_append(t, sizeof(t), "$.ct", "application/senml+json"), 0);
	assert_string_equal(t, "devices/d/messages/events/$.ct=application%2Fsenml%2Bjson");
	assert_int_equal(profile_bag_append(t, sizeof(t), "$.ce", "utf-8"), 0);
	assert_string_equal(t,
	                    "devices/d/messages/events/$.ct=application%2Fsenml%2Bjson&$.ce=utf-8");
	/* No room: an error, and the topic as it was. */
	assert_int_equal(profile_bag_append(t, sizeof(t), "k", "v"), -ENOBUFS);
	assert_string_equal(t,
	                    "devices/d/messages/events/$.ct=application%2Fsenml%2Bjson&$.ce=utf-8");

	char u[80] = "devices/d/messages/events/a=b";

	assert_int_equal(profile_bag_append(u, sizeof(u), "$.ct", "text/plain;charset=utf-8"), 0);
	assert_string_equal(u, "devices/d/messages/events/a=b&$.ct=text%2Fplain%3Bcharset%3Dutf-8");
}

static void
names_are_exact(void **state)
{
	enum gwconf_profile p = GWCONF_PROFILE_GENERIC;

	(void)state;
	assert_int_equal(profile_lookup("azure", &p), 0);
	assert_int_equal(p, GWCONF_PROFILE_AZURE);
	assert_string_equal(profile_name(p), "azure");
	assert_int_equal(profile_lookup("aws", &p), 0);
	assert_int_equal(p, GWCONF_PROFILE_AWS);
	assert_int_equal(profile_lookup("AWS", &p), -ENOENT);
	assert_int_equal(profile_lookup("", &p), -ENOENT);
}

/* Route outside the events topic, suffix, another device's topic, downlink, presence. */
static void
azure_rules_are_reported(void **state)
{
	(void)state;
	check_bad("bad-profile-azure.conf");
}

/* More than 7 '/' in a topic or filter, counting ${path} and a suffix level. */
static void
aws_topic_depth_is_reported(void **state)
{
	(void)state;
	check_bad("bad-profile-aws.conf");
}

/* "property" under 3.1.1; an unknown profile with a did-you-mean; alpn not a list. */
static void
property_under_mqtt311_is_reported(void **state)
{
	(void)state;
	check_bad("bad-profile-v311.conf");
}

/* Unknown profile, shared client id, ${path} in a user name, bad ALPN, bad version. */
static void
bad_profile_values_are_reported(void **state)
{
	(void)state;
	check_bad("bad-profile-values.conf");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(generic_is_mqtt5_with_the_device_id_and_no_user_name),
	        cmocka_unit_test(aws_on_443_offers_alpn_and_puts_topics_under_the_thing),
	        cmocka_unit_test(aws_alpn_only_on_443),
	        cmocka_unit_test(explicit_keys_win_over_the_profile),
	        cmocka_unit_test(an_empty_alpn_list_wins_over_the_aws_default),
	        cmocka_unit_test(azure_is_mqtt311_with_hub_user_names_and_event_topics),
	        cmocka_unit_test(azure_topics_follow_the_client_id),
	        cmocka_unit_test(property_bag_values_are_percent_encoded),
	        cmocka_unit_test(names_are_exact),
	        cmocka_unit_test(azure_rules_are_reported),
	        cmocka_unit_test(aws_topic_depth_is_reported),
	        cmocka_unit_test(property_under_mqtt311_is_reported),
	        cmocka_unit_test(bad_profile_values_are_reported),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
