/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_TEST_CONF_FIXTURE_H
#define GW_TEST_CONF_FIXTURE_H

/*
 * Config fixtures for the unit tests (include after cmocka.h): tests/data/conf, found through
 * $GW_TEST_DATA, which meson sets.
 */

#include <stdio.h>
#include <stdlib.h>

#include "conf.h"

/* The fixture's path; the caller frees it. */
static inline char *
fixture(const char *name)
{
	const char *dir = getenv("GW_TEST_DATA");
	char *path;

	assert_non_null(dir);
	assert_true(asprintf(&path, "%s/conf/%s", dir, name) > 0);
	return path;
}

/* Loads a fixture that must be valid: every error it has is printed and fails the test. */
static inline struct gwconf *
load_ok(const char *name)
{
	char *path = fixture(name);
	struct gwconf_errors errs;
	struct gwconf *conf;
	int r = gwconf_load(path, &conf, &errs);

	for (size_t i = 0; i < errs.count; i++)
		print_error("unexpected: %s\n", errs.lines[i]);
	assert_int_equal(r, 0);
	assert_int_equal(errs.count, 0);
	gwconf_errors_finish(&errs);
	free(path);
	return conf;
}

#endif
