/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "template.h"

static const struct tmpl_vars vars = {.value = {
                                              [TMPL_DEVICE] = "dev-a",
                                              [TMPL_PATH] = "env/temp",
                                              [TMPL_GATEWAY] = "gw-01",
                                      }};

static void
expands_every_variable(void **state)
{
	char out[128];

	(void)state;
	assert_int_equal(
	        tmpl_expand("devices/${device}/telemetry/${path}", &vars, out, sizeof(out)),
	        strlen("devices/dev-a/telemetry/env/temp"));
	assert_string_equal(out, "devices/dev-a/telemetry/env/temp");
	assert_int_equal(tmpl_expand("${gateway}/${device}", &vars, out, sizeof(out)), 11);
	assert_string_equal(out, "gw-01/dev-a");
}

static void
keeps_literal_dollars_and_braces(void **state)
{
	char out[64];

	(void)state;
	assert_true(tmpl_expand("a$b/{c}/$", &vars, out, sizeof(out)) > 0);
	assert_string_equal(out, "a$b/{c}/$");
}

static void
reports_a_short_buffer(void **state)
{
	char out[14];

	(void)state;
	/* "devices/dev-a" is 13 bytes: fits with its NUL, one more does not. */
	assert_int_equal(tmpl_expand("devices/${device}", &vars, out, sizeof(out)), 13);
	assert_int_equal(tmpl_expand("devices/${device}/", &vars, out, sizeof(out)), -ENOBUFS);
	assert_int_equal(tmpl_expand("devices/dev-a/", &vars, out, sizeof(out)), -ENOBUFS);
}

static void
refuses_values_that_widen_the_topic(void **state)
{
	struct tmpl_vars bad = vars;
	char out[64];

	(void)state;
	bad.value[TMPL_DEVICE] = "+";
	assert_int_equal(tmpl_expand("devices/${device}", &bad, out, sizeof(out)), -EINVAL);
	bad.value[TMPL_DEVICE] = "a/#";
	assert_int_equal(tmpl_expand("devices/${device}", &bad, out, sizeof(out)), -EINVAL);
}

static const char *
lookup_attr(const char *name, size_t len, void *data)
{
	(void)data;
	if (len == 4 && strncmp(name, "site", len) == 0)
		return "lab-2";
	if (len == 5 && strncmp(name, "shelf", len) == 0)
		return "a/b";
	if (len == 4 && strncmp(name, "tier", len) == 0)
		return "$SYS";
	return NULL;
}

static void
expands_attributes(void **state)
{
	struct tmpl_vars with = vars;
	char out[64];

	(void)state;
	with.attr = lookup_attr;
	assert_int_equal(tmpl_expand("sites/${attr.site}/${device}", &with, out, sizeof(out)),
	                 strlen("sites/lab-2/dev-a"));
	assert_string_equal(out, "sites/lab-2/dev-a");
	/* Unset: no topic with an empty level. A '/' would add a level. */
	assert_int_equal(tmpl_expand("sites/${attr.room}", &with, out, sizeof(out)), -ENOENT);
	assert_int_equal(tmpl_expand("sites/${attr.shelf}", &with, out, sizeof(out)), -EINVAL);
	assert_int_equal(tmpl_expand("sites/${attr.site}", &vars, out, sizeof(out)), -ENOENT);
	/* A topic that a value makes start with '$' would be the broker's own (MQTT 4.7.2). */
	assert_int_equal(tmpl_expand("${attr.tier}/x", &with, out, sizeof(out)), -EINVAL);
	assert_int_equal(tmpl_expand("x/${attr.tier}", &with, out, sizeof(out)), 6);
}

static void
checks_filters(void **state)
{
	char err[256];

	(void)state;
	assert_int_equal(tmpl_check_filter("devices/${device}/commands/#", err, sizeof(err)), 0);
	assert_int_equal(tmpl_check_filter("+/${device}/+/cmd", err, sizeof(err)), 0);
	assert_int_equal(tmpl_check_filter("devices/a#", err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "'#' must be a whole level, and the last"));
	assert_int_equal(tmpl_check_filter("devices/#/x", err, sizeof(err)), -EINVAL);
	assert_int_equal(tmpl_check_filter("devices/x+/y", err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "'+' must be a whole level"));
	assert_int_equal(tmpl_check("devices/${attr.site}/x", err, sizeof(err)), 0);
	assert_int_equal(tmpl_check("devices/${attr.}/x", err, sizeof(err)), -EINVAL);
}

static void
checks_templates(void **state)
{
	static const struct {
		const char *tmpl;
		const char *error; /* NULL: valid */
	} cases[] = {
	        {"devices/${device}/telemetry/${path}", NULL},
	        {"${gateway}/x", NULL},
	        {"", "topic template is empty"},
	        {"devices/${device", "unterminated '${' in topic template"},
	        {"devices/${dev}", "unknown variable '${dev}' in topic template"},
	        {"devices/+/x", "contains the wildcard '+'"},
	        {"devices/#", "contains the wildcard '#'"},
	        {"$SYS/x", "must not start with '$'"},
	};
	char err[256];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		err[0] = '\0';
		if (!cases[i].error) {
			assert_int_equal(tmpl_check(cases[i].tmpl, err, sizeof(err)), 0);
			continue;
		}
		assert_int_equal(tmpl_check(cases[i].tmpl, err, sizeof(err)), -EINVAL);
		if (!strstr(err, cases[i].error))
			fail_msg("template \"%s\": got \"%s\", want \"%s\"", cases[i].tmpl, err,
			         cases[i].error);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(expands_every_variable),
	        cmocka_unit_test(keeps_literal_dollars_and_braces),
	        cmocka_unit_test(reports_a_short_buffer),
	        cmocka_unit_test(refuses_values_that_widen_the_topic),
	        cmocka_unit_test(checks_templates),
	        cmocka_unit_test(expands_attributes),
	        cmocka_unit_test(checks_filters),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
