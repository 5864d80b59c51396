/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_TEST_CONF_FIXTURE_H
#define GW_TEST_CONF_FIXTURE_H

/*
 * Config fixtures for the unit tests (include after cmocka.h): tests/data/conf, found through
 * $GW_TEST_DATA, which meson sets.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Every error of a bad fixture, in order, exactly as in its .err file (FILE = the path). */
static inline void
check_bad(const char *name)
{
	char *path = fixture(name), *errpath, line[1024];
	struct gwconf_errors errs;
	struct gwconf *conf;
	size_t n = 0;
	FILE *f;

	assert_true(asprintf(&errpath, "%.*s.err", (int)(strlen(path) - 5), path) > 0);
	assert_int_equal(gwconf_load(path, &conf, &errs), -EINVAL);
	assert_null(conf);
	f = fopen(errpath, "r");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f)) {
		char want[2048];

		line[strcspn(line, "\n")] = '\0';
		assert_true(strncmp(line, "FILE", 4) == 0);
		snprintf(want, sizeof(want), "%s%s", path, line + 4);
		if (n >= errs.count)
			fail_msg("%s: missing error: %s", name, want);
		if (strcmp(errs.lines[n], want) != 0)
			fail_msg("%s: error %zu\n got: %s\nwant: %s", name, n + 1, errs.lines[n],
			         want);
		n++;
	}
	if (n != errs.count)
		fail_msg("%s: unexpected extra error: %s", name, errs.lines[n]);
	fclose(f);
	gwconf_errors_finish(&errs);
	free(errpath);
	free(path);
}

#endif
