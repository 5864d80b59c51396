/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf-fixture.h"
#include "conf.h"
#include "policy.h"

/* Device attributes, as `gwctl device set ID KEY=VALUE` would have stored them. */
static const struct {
	const char *device, *key, *value;
} attrs[] = {
        {"dev-1", "site", "field"},
        {"dev-1", "group", "greenhouse"},
        {"dev-2", "site", "lab"},
        {"dev-2", "group", "barn, orchard"},
        {"dev-4", "group", "barn"},
        /* Attribute values may hold what ids cannot: they must not widen a pattern. */
        {"dev-5", "site", "a/b"},
        {"dev-6", "site", "+"},
        {"dev-7", "group", "greenhouses"},
        {"dev-8", "group", "x,greenhouse"},
};

static const char *
lookup(const char *device, const char *key, void *data)
{
	(void)data;
	for (size_t i = 0; i < sizeof(attrs) / sizeof(attrs[0]); i++) {
		if (strcmp(attrs[i].device, device) == 0 && strcmp(attrs[i].key, key) == 0)
			return attrs[i].value;
	}
	return NULL;
}

enum which { POLICIES, EVERYONE, NONE };

static const char *const files[] = {
        [POLICIES] = "good-policy.conf",
        [EVERYONE] = "good-policy-all.conf",
        [NONE] = "good-minimal.conf",
};

static const struct {
	enum which conf;
	const char *device;
	enum policy_action act;
	const char *resource;
	bool allowed;
	const char *why; /* the start of the reason, if checked */
} cases[] = {
        /* CoAP paths: literal, '+' one level, '#' the rest (and the level above it). */
        {POLICIES, "dev-1", POLICY_COAP_POST, "temp", true, "allowed by policy 'sensors'"},
        {POLICIES, "dev-1", POLICY_COAP_PUT, "temp", true, NULL},
        {POLICIES, "dev-1", POLICY_COAP_GET, "temp", false, "no policy allows it"},
        {POLICIES, "dev-1", POLICY_COAP_GET, "cmd", true, NULL},
        {POLICIES, "dev-1", POLICY_COAP_POST, "tem", false, NULL},
        {POLICIES, "dev-1", POLICY_COAP_POST, "temp/x", false, NULL},
        {POLICIES, "dev-1", POLICY_COAP_POST, "env/temp", true, NULL},
        {POLICIES, "dev-1", POLICY_COAP_POST, "env", false, NULL},
        {POLICIES, "dev-1", POLICY_COAP_POST, "env/a/b", false, NULL},
        {POLICIES, "dev-1", POLICY_COAP_POST, "logs/a/b/c", true, NULL},
        {POLICIES, "dev-1", POLICY_COAP_POST, "logs", true, NULL},
        {POLICIES, "dev-1", POLICY_COAP_POST, "logsx/a", false, NULL},
        /* A coap: resource is no MQTT topic. */
        {POLICIES, "dev-1", POLICY_MQTT_PUBLISH, "temp", false, "no policy allows it"},
        /* ${device}, '#', and a deny over an allow in the same policy. */
        {POLICIES, "dev-1", POLICY_MQTT_PUBLISH, "devices/dev-1/telemetry/temp", true, NULL},
        {POLICIES, "dev-1", POLICY_MQTT_PUBLISH, "devices/dev-1/telemetry/a/b", true, NULL},
        {POLICIES, "dev-1", POLICY_MQTT_PUBLISH, "devices/dev-1/telemetry/debug", false,
         "denied by policy 'sensors'"},
        {POLICIES, "dev-1", POLICY_MQTT_PUBLISH, "devices/dev-2/telemetry/x", false, NULL},
        {POLICIES, "dev-2", POLICY_MQTT_PUBLISH, "devices/dev-2/telemetry/x", true, NULL},
        /* A deny in one policy over an allow in another. */
        {POLICIES, "dev-2", POLICY_COAP_POST, "env/temp", false, "denied by policy 'lab'"},
        {POLICIES, "dev-2", POLICY_COAP_POST, "temp", true, NULL},
        /* A filter is allowed only if the pattern covers every topic it does. */
        {POLICIES, "dev-1", POLICY_MQTT_SUBSCRIBE, "devices/dev-1/commands/+", true, NULL},
        {POLICIES, "dev-1", POLICY_MQTT_SUBSCRIBE, "devices/dev-1/commands/#", false, NULL},
        {POLICIES, "dev-1", POLICY_MQTT_SUBSCRIBE, "devices/+/commands/+", false, NULL},
        {POLICIES, "dev-1", POLICY_MQTT_SUBSCRIBE, "#", false, NULL},
        {POLICIES, "dev-1", POLICY_MQTT_RECEIVE, "devices/dev-1/commands/reboot", true, NULL},
        {POLICIES, "dev-1", POLICY_MQTT_RECEIVE, "devices/dev-2/commands/reboot", false, NULL},
        {POLICIES, "dev-1", POLICY_MQTT_PUBLISH, "other/topic", false, "no policy allows it"},
        /* Policies exist, none is attached: everything is denied. */
        {POLICIES, "dev-4", POLICY_COAP_POST, "temp", false, "no policy applies to device 'dev-4'"},
        {POLICIES, "dev-9", POLICY_MQTT_PUBLISH, "devices/dev-9/telemetry/x", false,
         "no policy applies to device 'dev-9'"},
        /* ${attr.NAME}; a missing attribute matches nothing. */
        {POLICIES, "dev-1", POLICY_MQTT_PUBLISH, "sites/field/status", true, NULL},
        {POLICIES, "dev-1", POLICY_MQTT_PUBLISH, "sites/lab/status", false, NULL},
        {POLICIES, "dev-3", POLICY_MQTT_PUBLISH, "sites//status", false, NULL},
        {POLICIES, "dev-3", POLICY_MQTT_PUBLISH, "sites/status", false, NULL},
        /* A value with '/' or '+' is not spliced into the pattern. */
        {POLICIES, "dev-5", POLICY_MQTT_PUBLISH, "sites/a/b/status", false, NULL},
        {POLICIES, "dev-6", POLICY_MQTT_PUBLISH, "sites/x/status", false, NULL},
        {POLICIES, "dev-6", POLICY_MQTT_PUBLISH, "sites/+/status", false, NULL},
        /* equals: any of the values; a missing attribute fails it, so the deny is skipped. */
        {POLICIES, "dev-2", POLICY_MQTT_PUBLISH, "alerts/fire", false, "denied by policy 'sites'"},
        {POLICIES, "dev-1", POLICY_MQTT_PUBLISH, "alerts/fire", true, NULL},
        {POLICIES, "dev-3", POLICY_MQTT_PUBLISH, "alerts/fire", true, NULL},
        /* not_equals: a missing attribute passes it. */
        {POLICIES, "dev-1", POLICY_MQTT_PUBLISH, "public/x", true, NULL},
        {POLICIES, "dev-2", POLICY_MQTT_PUBLISH, "public/x", false, NULL},
        {POLICIES, "dev-3", POLICY_MQTT_PUBLISH, "public/x", true, NULL},
        /* like: a glob; a missing attribute fails it. */
        {POLICIES, "dev-1", POLICY_MQTT_PUBLISH, "like/x", true, NULL},
        {POLICIES, "dev-2", POLICY_MQTT_PUBLISH, "like/x", false, NULL},
        {POLICIES, "dev-3", POLICY_MQTT_PUBLISH, "like/x", false, NULL},
        /* Attached by the attribute group, one name or a comma list; ${gateway}. */
        {POLICIES, "dev-1", POLICY_MQTT_PUBLISH, "farm/gw-1/dev-1", true,
         "allowed by policy 'farm'"},
        {POLICIES, "dev-1", POLICY_MQTT_PUBLISH, "farm/gw-1/dev-2", false, NULL},
        {POLICIES, "dev-1", POLICY_MQTT_PUBLISH, "farm/gw-2/dev-1", false, NULL},
        {POLICIES, "dev-2", POLICY_MQTT_PUBLISH, "farm/gw-1/dev-2", true, NULL},
        {POLICIES, "dev-8", POLICY_MQTT_SUBSCRIBE, "farm/gw-1/dev-8", true, NULL},
        {POLICIES, "dev-7", POLICY_MQTT_PUBLISH, "farm/gw-1/dev-7", false,
         "no policy applies to device 'dev-7'"},
        /* devices = ("*"), actions and resources "*". */
        {EVERYONE, "dev-1", POLICY_COAP_POST, "any/path/at/all", true,
         "allowed by policy 'everyone'"},
        {EVERYONE, "zz", POLICY_MQTT_SUBSCRIBE, "#", true, NULL},
        {EVERYONE, "dev-1", POLICY_MQTT_PUBLISH, "admin/x", false, "denied by policy 'everyone'"},
        /* No "policies" list: everything is allowed, as before policies existed. */
        {NONE, "dev-1", POLICY_MQTT_PUBLISH, "admin/x", true, "no policies are configured"},
        {NONE, "dev-4", POLICY_COAP_GET, "cmd", true, NULL},
};

static void
every_case_is_decided_as_documented(void **state)
{
	struct gwconf *confs[3];
	int failed = 0;

	(void)state;
	for (size_t i = 0; i < 3; i++)
		confs[i] = load_ok(files[i]);
	assert_false(confs[NONE]->have_policies);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct gwconf *c = confs[cases[i].conf];
		struct policy_subject who = {
		        .device = cases[i].device, .gateway = c->gateway_id, .attr = lookup};
		char why[256];
		bool got =
		        policy_allows(c, &who, cases[i].act, cases[i].resource, why, sizeof(why));

		if (got != cases[i].allowed ||
		    (cases[i].why && strncmp(why, cases[i].why, strlen(cases[i].why)) != 0)) {
			print_error("%s: %s %s \"%s\": got %s (%s), want %s (%s)\n",
			            files[cases[i].conf], cases[i].device,
			            policy_action_name(cases[i].act), cases[i].resource,
			            got ? "allowed" : "denied", why,
			            cases[i].allowed ? "allowed" : "denied",
			            cases[i].why ? cases[i].why : "any reason");
			failed++;
		}
	}
	for (size_t i = 0; i < 3; i++)
		gwconf_free(confs[i]);
	assert_int_equal(failed, 0);
}

/* The reason names the statement's file and line, for the operator to find it. */
static void
a_decision_names_its_statement(void **state)
{
	struct gwconf *c = load_ok("good-policy.conf");
	struct policy_subject who = {.device = "dev-2", .gateway = "gw-1", .attr = lookup};
	char why[512], *want, *path = fixture("good-policy.conf");

	(void)state;
	assert_false(policy_allows(c, &who, POLICY_COAP_PUT, "env/temp", why, sizeof(why)));
	assert_true(asprintf(&want, "denied by policy 'lab' (%s:25)", path) > 0);
	assert_string_equal(why, want);
	free(want);
	assert_true(policy_allows(c, &who, POLICY_COAP_PUT, "temp", why, sizeof(why)));
	assert_true(asprintf(&want, "allowed by policy 'sensors' (%s:10)", path) > 0);
	assert_string_equal(why, want);
	free(want);
	/* why is optional, and a short one is cut, not overrun. */
	assert_true(policy_allows(c, &who, POLICY_COAP_PUT, "temp", NULL, 0));
	why[5] = 'x';
	assert_true(policy_allows(c, &who, POLICY_COAP_PUT, "temp", why, 5));
	assert_string_equal(why, "allo");
	assert_int_equal(why[5], 'x');
	free(path);
	gwconf_free(c);
}

/* Without an attribute lookup a device simply has no attributes. */
static void
no_attribute_lookup_means_no_attributes(void **state)
{
	struct gwconf *c = load_ok("good-policy.conf");
	struct policy_subject who = {.device = "dev-1", .gateway = "gw-1"};

	(void)state;
	assert_true(
	        policy_allows(c, &who, POLICY_MQTT_PUBLISH, "devices/dev-1/telemetry/t", NULL, 0));
	assert_false(policy_allows(c, &who, POLICY_MQTT_PUBLISH, "sites/field/status", NULL, 0));
	assert_true(policy_allows(c, &who, POLICY_MQTT_PUBLISH, "public/x", NULL, 0));
	who.device = "dev-8"; /* attached only by its group */
	assert_false(policy_allows(c, &who, POLICY_MQTT_PUBLISH, "farm/gw-1/dev-8", NULL, 0));
	gwconf_free(c);
}

/* The one error a config whose last line is policies_line gets. */
static void
check_policies_error(const char *policies_line, const char *want)
{
	char path[] = "/tmp/test-policy-XXXXXX", *ca = fixture("ca.pem");
	struct gwconf_errors errs;
	struct gwconf *conf;
	int fd = mkstemp(path);
	FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;

	assert_non_null(f);
	fprintf(f,
	        "gateway = { id = \"gw-1\"; };\n"
	        "upstream = { broker = \"mqtts://broker.test\"; ca_file = \"%s\"; };\n"
	        "routes = ( { resource = \"temp\"; topic = \"devices/${device}/temp\"; } );\n"
	        "%s\n",
	        ca, policies_line);
	fclose(f);
	assert_int_equal(gwconf_load(path, &conf, &errs), -EINVAL);
	assert_int_equal(errs.count, 1);
	assert_true(strncmp(errs.lines[0], path, strlen(path)) == 0);
	assert_string_equal(errs.lines[0] + strlen(path), want);
	gwconf_errors_finish(&errs);
	unlink(path);
	free(ca);
}

/* An empty list would deny everything, unlike no list: a mistake more likely than a wish. */
static void
policies_must_be_a_list_of_something(void **state)
{
	(void)state;
	check_policies_error("policies = ();",
	                     ":4: 'policies' is empty: every device would be denied everything "
	                     "(without the list, everything is allowed)");
	check_policies_error("policies = { name = \"x\"; };",
	                     ":4: 'policies' must be a list: policies = ( { name = ...; devices = "
	                     "...; statements = ...; } );");
}

static void
actions_have_names(void **state)
{
	(void)state;
	assert_string_equal(policy_action_name(POLICY_COAP_POST), "coap:post");
	assert_string_equal(policy_action_name(POLICY_MQTT_RECEIVE), "mqtt:receive");
	assert_string_equal(policy_action_name(POLICY_NACTIONS), "unknown");
	for (unsigned i = 0; i < POLICY_NACTIONS; i++) {
		assert_int_equal(policy_action_mask(policy_action_name(i)), 1u << i);
		assert_true(policy_action_mask("*") & (1u << i));
	}
	assert_int_equal(policy_action_mask("coap:*") & policy_action_mask("mqtt:*"), 0);
	assert_int_equal(policy_action_mask("coap:*") | policy_action_mask("mqtt:*"),
	                 policy_action_mask("*"));
	assert_int_equal(policy_action_mask("coap:delete"), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(every_case_is_decided_as_documented),
	        cmocka_unit_test(a_decision_names_its_statement),
	        cmocka_unit_test(no_attribute_lookup_means_no_attributes),
	        cmocka_unit_test(policies_must_be_a_list_of_something),
	        cmocka_unit_test(actions_have_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
