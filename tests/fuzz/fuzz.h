/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_FUZZ_H
#define GW_FUZZ_H

/*
 * What the harnesses of parsers that read files share: a check that aborts (the fuzzer reports
 * it like a crash, driver.c fails the unit test), a private temp folder, and a quiet log.
 * Static inline, so that a harness stays one file plus this header (tests/fuzz/meson.build).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define check(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/*
 * Errors only: every damaged input makes the code under test warn, millions of times a run.
 * FUZZ_LOG=warning (or info, debug) shows them, to see what an input does.
 */
static inline void
fuzz_quiet_log(const char *ident)
{
	enum log_level level = LOG_LEVEL_ERR;
	const char *want = getenv("FUZZ_LOG");

	if (want && log_level_parse(want, &level) < 0)
		level = LOG_LEVEL_DEBUG;
	log_init(ident, true, level);
}

static inline int
fuzz_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	/* Depth 0 is the folder itself, which stays. */
	if (ftw->level > 0 && remove(path) < 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		abort();
	}
	return 0;
}

/* Removes everything in dir, keeping dir. */
static inline void
fuzz_empty(const char *dir)
{
	check(nftw(dir, fuzz_rm_entry, 16, FTW_DEPTH | FTW_PHYS) == 0);
}

static char fuzz_tmp[PATH_MAX];

static inline void
fuzz_tmp_remove(void)
{
	fuzz_empty(fuzz_tmp);
	rmdir(fuzz_tmp);
}

/*
 * The process's private folder (0700), made at the first call and removed at exit. In
 * /dev/shm when there is one: the code under test fsyncs and syncfs(2)s, which cost nothing on
 * tmpfs and there touch no other file system (a syncfs on the disk would write back everyone's
 * files, many times a second); else in TMPDIR or /tmp.
 */
static inline const char *
fuzz_tmpdir(const char *name)
{
	const char *base = getenv("TMPDIR");
	struct stat st;

	if (fuzz_tmp[0])
		return fuzz_tmp;
	if (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0)
		base = "/dev/shm";
	else if (!base || !*base)
		base = "/tmp";
	snprintf(fuzz_tmp, sizeof(fuzz_tmp), "%s/fuzz-%s.XXXXXX", base, name);
	check(mkdtemp(fuzz_tmp));
	atexit(fuzz_tmp_remove);
	return fuzz_tmp;
}

/* Writes a whole file, replacing it. */
static inline void
fuzz_write(const char *path, const void *data, size_t len, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode);

	check(fd >= 0);
	check(fchmod(fd, mode) == 0);
	check(len == 0 || write(fd, data, len) == (ssize_t)len);
	check(close(fd) == 0);
}

#endif
