/* SPDX-License-Identifier: Apache-2.0 */
/*
 * synclat: how long a small append takes to become durable on the file system of DIR, the
 * sync the spool waits for before a durable reading is answered (gateway/data/spool.c). Each round
 * appends SIZE bytes (default 100) at the end of each of F files (default 1) in DIR, as
 * spool_append() does (pwrite at the file's end, no preallocation), then makes them durable
 * by MODE, and is timed from the first write to the sync's return:
 *   fsync      one fsync(2) per file (the spool's way for a batch of fewer than 4 files, and
 *              on kernels before 5.8)
 *   fdatasync  one fdatasync(2) per file (for comparison; the spool does not use it)
 *   syncfs     one syncfs(2) of DIR's file system (the spool's way for a batch of 4 or more
 *              files, on Linux 5.8 and later)
 * COUNT rounds (default 2000), back to back, or fewer if -t seconds (default 30) run out
 * first. The files are created (and their folder fsync'd) before the first round, untimed,
 * and removed at the end. Prints:
 *   synclat: MODE, F files, SIZE-byte appends, R rounds in S s: p50 X ms, p99 Y ms, max Z ms
 *   result R X Y Z
 * Exit status: 0, 1 if a file could not be made, written or synced, 2 usage.
 *   synclat -d DIR [-m fsync|fdatasync|syncfs] [-f FILES] [-s SIZE] [-n COUNT] [-t SECONDS]
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum mode { MODE_FSYNC, MODE_FDATASYNC, MODE_SYNCFS };

static const char *const mode_names[] = {"fsync", "fdatasync", "syncfs"};

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* The value at fraction q of the sorted v, indexed as the benchmarks' latency() does. */
static double
quantile(const double *v, long n, double q)
{
	long i = (long)((double)n * q);

	return v[i < n ? i : n - 1];
}

static void
usage(void)
{
	fprintf(stderr, "usage: synclat -d DIR [-m fsync|fdatasync|syncfs] [-f FILES] [-s SIZE] "
	                "[-n COUNT] [-t SECONDS]\n");
	exit(2);
}

static long
number(const char *s, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		usage();
	return v;
}

int
main(int argc, char **argv)
{
	long nfiles = 1, size = 100, count = 2000, limit_s = 30, rounds = 0;
	enum mode mode = MODE_FSYNC;
	const char *dir = NULL;
	double *lat = NULL, t0, start;
	char *buf = NULL, path[4096];
	off_t *off = NULL;
	int *fds = NULL;
	int dirfd = -1, status = 1, opt;

	while ((opt = getopt(argc, argv, "d:m:f:s:n:t:")) != -1) {
		switch (opt) {
		case 'd':
			dir = optarg;
			break;
		case 'm':
			if (!strcmp(optarg, "fsync"))
				mode = MODE_FSYNC;
			else if (!strcmp(optarg, "fdatasync"))
				mode = MODE_FDATASYNC;
			else if (!strcmp(optarg, "syncfs"))
				mode = MODE_SYNCFS;
			else
				usage();
			break;
		case 'f':
			nfiles = number(optarg, 1, 10000);
			break;
		case 's':
			size = number(optarg, 1, 1 << 20);
			break;
		case 'n':
			count = number(optarg, 1, 10000000);
			break;
		case 't':
			limit_s = number(optarg, 1, 86400);
			break;
		default:
			usage();
		}
	}
	if (!dir || optind != argc)
		usage();

	/* Allocation failure is fatal here as in the daemon: a benchmark tool has no use for it. */
	fds = calloc((size_t)nfiles, sizeof(*fds));
	off = calloc((size_t)nfiles, sizeof(*off));
	lat = calloc((size_t)count, sizeof(*lat));
	buf = malloc((size_t)size);
	if (!fds || !off || !lat || !buf) {
		fprintf(stderr, "synclat: out of memory\n");
		abort();
	}
	memset(buf, 'r', (size_t)size);
	for (long i = 0; i < nfiles; i++)
		fds[i] = -1;

	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0) {
		fprintf(stderr, "synclat: %s: %s\n", dir, strerror(errno));
		goto out;
	}
	for (long i = 0; i < nfiles; i++) {
		snprintf(path, sizeof(path), "synclat-%ld-%ld", (long)getpid(), i);
		fds[i] = openat(dirfd, path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fds[i] < 0) {
			fprintf(stderr, "synclat: %s/%s: %s\n", dir, path, strerror(errno));
			goto out;
		}
	}
	if (fsync(dirfd) < 0) {
		fprintf(stderr, "synclat: fsync %s: %s\n", dir, strerror(errno));
		goto out;
	}

	start = now_ms();
	while (rounds < count && now_ms() - start < (double)limit_s * 1e3) {
		t0 = now_ms();
		for (long i = 0; i < nfiles; i++) {
			if (pwrite(fds[i], buf, (size_t)size, off[i]) != (ssize_t)size) {
				fprintf(stderr, "synclat: write: %s\n",
				        errno ? strerror(errno) : "short write");
				goto out;
			}
			off[i] += size;
		}
		for (long i = 0; i < (mode == MODE_SYNCFS ? 1 : nfiles); i++) {
			int r = mode == MODE_SYNCFS      ? syncfs(dirfd)
			        : mode == MODE_FDATASYNC ? fdatasync(fds[i])
			                                 : fsync(fds[i]);

			if (r < 0) {
				fprintf(stderr, "synclat: %s: %s\n", mode_names[mode],
				        strerror(errno));
				goto out;
			}
		}
		lat[rounds++] = now_ms() - t0;
	}

	qsort(lat, (size_t)rounds, sizeof(*lat), cmp_double);
	printf("synclat: %s, %ld files, %ld-byte appends, %ld rounds in %.2f s: p50 %.3f ms, "
	       "p99 %.3f ms, max %.3f ms\n",
	       mode_names[mode], nfiles, size, rounds, (now_ms() - start) / 1e3,
	       quantile(lat, rounds, 0.5), quantile(lat, rounds, 0.99), lat[rounds - 1]);
	printf("result %ld %.3f %.3f %.3f\n", rounds, quantile(lat, rounds, 0.5),
	       quantile(lat, rounds, 0.99), lat[rounds - 1]);
	status = 0;
out:
	for (long i = 0; i < nfiles; i++) {
		if (fds[i] < 0)
			continue;
		close(fds[i]);
		snprintf(path, sizeof(path), "synclat-%ld-%ld", (long)getpid(), i);
		unlinkat(dirfd, path, 0);
	}
	if (dirfd >= 0)
		close(dirfd);
	free(fds);
	free(off);
	free(lat);
	free(buf);
	return status;
}
