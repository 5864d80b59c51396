/* SPDX-License-Identifier: Apache-2.0 */
#include "atomicfile.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "log.h"

static int
tmp_name(char *buf, size_t len, const char *name)
{
	return snprintf(buf, len, ".%s.tmp", name) < (int)len ? 0 : -ENAMETOOLONG;
}

void
atomic_discard(int dirfd, const char *name)
{
	char tmp[NAME_MAX + 1];

	if (tmp_name(tmp, sizeof(tmp), name) == 0)
		unlinkat(dirfd, tmp, 0);
}

int
atomic_stage(int dirfd, const char *dir, const char *name, const void *data, size_t len,
             mode_t mode, bool sync)
{
	const uint8_t *p = data;
	char tmp[NAME_MAX + 1];
	int fd, r;

	r = tmp_name(tmp, sizeof(tmp), name);
	if (r < 0) {
		log_warnx("write %s/%s: the name is too long", dir, name);
		return r;
	}
	/* O_EXCL after an unlink: the file is ours, with our mode, not one planted there. */
	unlinkat(dirfd, tmp, 0);
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
	if (fd < 0) {
		r = -errno;
		log_warn("create %s/%s", dir, tmp);
		return r;
	}
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			break;
		}
		p += n;
		len -= (size_t)n;
	}
	if (r == 0 && sync && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r < 0) {
		errno = -r;
		log_warn("write %s/%s", dir, tmp);
		unlinkat(dirfd, tmp, 0);
	}
	return r;
}

int
atomic_install(int dirfd, const char *dir, const char *name)
{
	char tmp[NAME_MAX + 1];
	int r;

	r = tmp_name(tmp, sizeof(tmp), name);
	if (r < 0)
		return r;
	if (renameat(dirfd, tmp, dirfd, name) < 0) {
		r = -errno;
		log_warn("write %s/%s", dir, name);
		unlinkat(dirfd, tmp, 0);
	}
	return r;
}

int
atomic_write(int dirfd, const char *dir, const char *name, const void *data, size_t len,
             mode_t mode)
{
	int r = atomic_stage(dirfd, dir, name, data, len, mode, true);

	if (r == 0)
		r = atomic_install(dirfd, dir, name);
	if (r == 0 && fsync(dirfd) < 0) {
		r = -errno;
		log_warn("fsync %s", dir);
	}
	return r;
}
