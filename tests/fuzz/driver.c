/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Runs a libFuzzer harness without libFuzzer: every file named, and every file in every
 * directory named, goes through LLVMFuzzerTestOneInput once. So the unit suite replays each
 * harness's corpus (seeds and the crashes kept as regressions) with whatever compiler and
 * sanitizers the build uses. A harness reports a failure by aborting.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int
run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;
	long len;

	if (!f || fseek(f, 0, SEEK_END) < 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) < 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		if (f)
			fclose(f);
		return -1;
	}
	/* Exactly the file's size, as libFuzzer does, so that ASan sees a read past it. */
	buf = malloc(len ? (size_t)len : 1);
	if (!buf)
		abort();
	if (fread(buf, 1, (size_t)len, f) != (size_t)len) {
		fprintf(stderr, "%s: short read\n", path);
		fclose(f);
		free(buf);
		return -1;
	}
	fclose(f);
	LLVMFuzzerTestOneInput(buf, (size_t)len);
	free(buf);
	return 0;
}

int
main(int argc, char **argv)
{
	int runs = 0, failed = 0;

	for (int i = 1; i < argc; i++) {
		struct stat st;
		DIR *d;
		struct dirent *e;

		if (stat(argv[i], &st) < 0) {
			fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
			return 1;
		}
		if (!S_ISDIR(st.st_mode)) {
			failed += run_file(argv[i]) < 0;
			runs++;
			continue;
		}
		d = opendir(argv[i]);
		if (!d) {
			fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
			return 1;
		}
		while ((e = readdir(d))) {
			char path[4096];

			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", argv[i], e->d_name);
			failed += run_file(path) < 0;
			runs++;
		}
		closedir(d);
	}
	printf("%d inputs run\n", runs);
	/* A run over no input proves nothing: a wrong path must fail, not pass. */
	return runs == 0 || failed ? 1 : 0;
}
