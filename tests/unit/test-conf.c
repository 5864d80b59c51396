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

#include "conf-fixture.h"
#include "conf.h"

static void
minimal_config_gets_defaults(void **state)
{
	struct gwconf *c = load_ok("good-minimal.conf");

	(void)state;
	assert_string_equal(c->gateway_id, "gw-01");
	assert_string_equal(c->state_dir, "/var/lib/gateway");
	assert_int_equal(c->log_level, LOG_LEVEL_INFO);
	assert_string_equal(c->sensors.listen, "0.0.0.0");
	assert_int_equal(c->sensors.port, 5684);
	assert_int_equal(c->sensors.receive_buffer, 4 << 20);
	assert_string_equal(c->upstream.broker, "ssl://broker.test:8883");
	assert_string_equal(c->upstream.broker_host, "broker.test");
	assert_int_equal(c->upstream.keepalive, 60);
	assert_int_equal(c->upstream.publish_timeout, 10);
	assert_int_equal(c->upstream.rejected_retry, 600);
	assert_string_equal(c->keystore.backend, "soft");
	assert_string_equal(c->keystore.tcti, "device:/dev/tpmrm0");
	assert_int_equal(c->keystore.parent, 0x81000001u);
	assert_true(c->keystore.create_parent);
	assert_int_equal(c->keystore.psk_grace, 86400);
	assert_string_equal(c->keystore.device_ca_file, "/dev/null");
	assert_string_equal(c->control_socket, "/run/gateway/control.sock");
	assert_int_equal(c->nroutes, 1);
	assert_string_equal(c->routes[0].resource, "temp");
	assert_int_equal(c->routes[0].qos_con, 1);
	assert_int_equal(c->routes[0].qos_non, 0);
	assert_int_equal(c->routes[0].content_type, GWCONF_CTYPE_PROPERTY);
	assert_int_equal(c->sensors.max_payload, 16384);
	assert_int_equal(c->sensors.piggyback_wait, 1000);
	assert_null(c->downlink.topic);
	assert_null(c->presence.topic);
	assert_true(c->spool.ack_durable);
	assert_int_equal(c->spool.fsync, GWCONF_FSYNC_BATCH);
	assert_int_equal(c->spool.device_bytes, 16 << 20);
	assert_int_equal(c->spool.total_bytes, 1LL << 30);
	assert_int_equal(c->spool.max_age, 7 * 86400);
	assert_false(c->spool.drop_oldest);
	assert_ptr_equal(gwconf_route_find(c, "temp"), &c->routes[0]);
	assert_null(gwconf_route_find(c, "tem"));
	gwconf_free(c);
}

static void
full_config_is_read_as_written(void **state)
{
	struct gwconf *c = load_ok("good-full.conf");
	char *ca;

	(void)state;
	assert_string_equal(c->state_dir, "/srv/gateway");
	assert_int_equal(c->log_level, LOG_LEVEL_DEBUG);
	assert_string_equal(c->sensors.listen, "::1");
	assert_int_equal(c->sensors.port, 15684);
	assert_int_equal(c->sensors.receive_buffer, 8 << 20);
	assert_int_equal(c->sensors.max_sessions, 5000);
	assert_string_equal(c->upstream.broker, "ssl://[2001:db8::1]:18883");
	assert_string_equal(c->upstream.broker_host, "2001:db8::1");
	assert_int_equal(c->upstream.broker_port, 18883);
	assert_int_equal(c->upstream.keepalive, 30);
	assert_int_equal(c->upstream.connect_timeout, 5);
	assert_int_equal(c->upstream.publish_timeout, 7);
	assert_int_equal(c->upstream.reconnect_min, 2);
	assert_int_equal(c->upstream.reconnect_max, 120);
	assert_int_equal(c->upstream.rejected_retry, 30);
	assert_int_equal(c->nroutes, 2);
	assert_string_equal(c->routes[0].resource, "env/temp");
	assert_string_equal(c->routes[0].topic, "${gateway}/devices/${device}/${path}");
	assert_int_equal(c->routes[0].qos_con, 0);
	assert_int_equal(c->routes[0].qos_non, 0);
	assert_int_equal(c->routes[1].qos_con, 1);
	assert_int_equal(c->routes[1].qos_non, 1);
	assert_int_equal(c->routes[1].content_type, GWCONF_CTYPE_SUFFIX);
	assert_int_equal(c->sensors.max_payload, 4096);
	assert_int_equal(c->sensors.piggyback_wait, 250);
	assert_string_equal(c->downlink.topic, "devices/${device}/commands/#");
	assert_string_equal(c->downlink.resource, "commands");
	assert_int_equal(c->downlink.queue, 4);
	assert_int_equal(c->downlink.expiry, 120);
	assert_int_equal(c->downlink.qos, 0);
	assert_string_equal(c->presence.topic, "devices/${device}/status");
	assert_string_equal(c->presence.online, "up");
	assert_string_equal(c->presence.offline, "down");
	assert_false(c->spool.ack_durable);
	assert_int_equal(c->spool.fsync, GWCONF_FSYNC_INTERVAL);
	assert_int_equal(c->spool.fsync_interval, 250);
	assert_int_equal(c->spool.device_bytes, 1 << 20);
	assert_int_equal(c->spool.total_bytes, 8LL << 30);
	assert_int_equal(c->spool.max_age, 3600);
	assert_true(c->spool.drop_oldest);
	assert_int_equal(c->spool.segment_bytes, 65536);
	assert_string_equal(c->control_socket, "/tmp/gw.sock");
	assert_string_equal(c->keystore.backend, "tpm");
	assert_string_equal(c->keystore.tcti, "swtpm:host=127.0.0.1,port=2321");
	assert_int_equal(c->keystore.parent, 0x81000002u);
	assert_false(c->keystore.create_parent);
	assert_int_equal(c->keystore.psk_grace, 600);
	ca = fixture("ca.pem");
	assert_string_equal(c->keystore.device_ca_file, ca);
	assert_string_equal(c->est.url, "https://est.test:8443/.well-known/est/gateways");
	assert_string_equal(c->est.ca_file, ca);
	assert_int_equal(c->est.timeout, 20);
	assert_false(c->est.auto_enroll);
	assert_true(c->est.renew_at == 0.5);
	assert_true(c->est.renew_jitter == 0.1);
	assert_int_equal(c->est.retry_min, 30);
	assert_int_equal(c->est.retry_max, 600);
	free(ca);
	gwconf_free(c);
}

static void
relative_paths_are_taken_from_the_config_folder(void **state)
{
	struct gwconf *c = load_ok("good-relative.conf");
	char *want = fixture("ca.pem");

	(void)state;
	assert_string_equal(c->upstream.ca_file, want);
	free(want);
	gwconf_free(c);
}

static void
syntax_error_names_the_line(void **state)
{
	(void)state;
	check_bad("bad-syntax.conf");
}

static void
every_bad_value_is_reported(void **state)
{
	(void)state;
	check_bad("bad-values.conf");
}

static void
every_bad_est_value_is_reported(void **state)
{
	(void)state;
	check_bad("bad-est.conf");
}

static void
every_bad_bridge_value_is_reported(void **state)
{
	(void)state;
	check_bad("bad-bridge.conf");
}

static void
every_bad_policy_is_reported(void **state)
{
	(void)state;
	check_bad("bad-policy.conf");
}

static void
every_missing_part_is_reported(void **state)
{
	(void)state;
	check_bad("bad-missing.conf");
}

/*
 * The example's broker and EST server left as they are (any case, a trailing dot) are
 * refused; a name that only ends like one (notexample.com, myexample.org) is not.
 */
static void
example_placeholders_are_reported(void **state)
{
	(void)state;
	check_bad("bad-placeholder.conf");
}

static void
names_ending_like_the_placeholders_are_accepted(void **state)
{
	struct gwconf *c = load_ok("good-lookalike.conf");

	(void)state;
	assert_string_equal(c->upstream.broker_host, "notexample.com");
	assert_string_equal(c->est.url, "https://myexample.org/.well-known/est");
	gwconf_free(c);
}

/* A route without a resource, and a downlink whose resource is compared with the routes'. */
static void
route_without_resource_is_reported(void **state)
{
	(void)state;
	check_bad("bad-route-resource.conf");
}

/* A value's line break or escape sequence must not break an error's line (conf.h). */
static void
control_bytes_stay_out_of_errors(void **state)
{
	(void)state;
	check_bad("bad-control-chars.conf");
}

/* An @include of a folder (libconfig exits the process) and \x00 in a string: refused first. */
static void
include_of_a_folder_and_nul_escape_are_reported(void **state)
{
	(void)state;
	check_bad("bad-include.conf");
}

static void
unreadable_file_is_reported(void **state)
{
	struct gwconf_errors errs;
	struct gwconf *conf;

	(void)state;
	assert_int_equal(gwconf_load("/nonexistent/gateway.conf", &conf, &errs), -ENOENT);
	assert_int_equal(errs.count, 1);
	assert_string_equal(errs.lines[0],
	                    "/nonexistent/gateway.conf: cannot open: No such file or directory");
	gwconf_errors_finish(&errs);
}

/*
 * The shipped example must stay in step with the parser: no unknown or invalid key in it, only
 * the two values a technician must fill in (the broker and its CA file).
 */
static void
example_config_is_valid(void **state)
{
	const char *root = getenv("GW_SOURCE_ROOT");
	struct gwconf_errors errs;
	struct gwconf *conf;
	char *path;

	(void)state;
	assert_non_null(root);
	assert_true(asprintf(&path, "%s/configs/gateway.conf", root) > 0);
	gwconf_load(path, &conf, &errs);
	/* Its CA file is the installed gateway's, which a build machine need not have. */
	for (size_t i = 0; i < errs.count; i++) {
		if (!strstr(errs.lines[i],
		            "'upstream.ca_file' \"/etc/gateway/broker-ca.pem\" cannot be read") &&
		    !strstr(errs.lines[i], "broker.example.com is the example's placeholder"))
			fail_msg("example config: %s", errs.lines[i]);
	}
	assert_true(errs.count <= 2);
	gwconf_errors_finish(&errs);
	gwconf_free(conf);
	free(path);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(minimal_config_gets_defaults),
	        cmocka_unit_test(full_config_is_read_as_written),
	        cmocka_unit_test(relative_paths_are_taken_from_the_config_folder),
	        cmocka_unit_test(syntax_error_names_the_line),
	        cmocka_unit_test(every_bad_value_is_reported),
	        cmocka_unit_test(every_bad_est_value_is_reported),
	        cmocka_unit_test(every_bad_bridge_value_is_reported),
	        cmocka_unit_test(every_bad_policy_is_reported),
	        cmocka_unit_test(every_missing_part_is_reported),
	        cmocka_unit_test(route_without_resource_is_reported),
	        cmocka_unit_test(control_bytes_stay_out_of_errors),
	        cmocka_unit_test(include_of_a_folder_and_nul_escape_are_reported),
	        cmocka_unit_test(unreadable_file_is_reported),
	        cmocka_unit_test(example_placeholders_are_reported),
	        cmocka_unit_test(names_ending_like_the_placeholders_are_accepted),
	        cmocka_unit_test(example_config_is_valid),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
