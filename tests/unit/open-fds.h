/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_TEST_OPEN_FDS_H
#define GW_TEST_OPEN_FDS_H

/* For the unit tests that check what a module keeps open (include after cmocka.h). */

#include <dirent.h>

/* Descriptors the process has open now, not counting the one this count reads through. */
static inline int
open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;

	assert_non_null(d);
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	return n - 1;
}

#endif
