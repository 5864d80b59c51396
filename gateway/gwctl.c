/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gwctl: the gateway's admin tool. Asks the running gatewayd over its control socket; when
 * gatewayd is not running, opens the keystore itself, under its lock.
 */
#include "admin.h"
#include "conf.h"
#include "control.h"
#include "keystore.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define INPUT_MAX (CONTROL_MAX_REQUEST / 2)

static void __attribute__((noreturn)) usage(void)
{
	admin_usage(stderr);
	fprintf(stderr, "  -c config   default " GWCONF_DEFAULT_FILE "\n"
	                "  -s socket   the daemon's control socket (default: from the config)\n"
	                "  -o file     write the output (a CSR) to file instead of stdout\n");
	exit(2);
}

static int
read_input(const char *path, char **buf, size_t *len)
{
	int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
	size_t n = 0;
	char *b;

	if (fd < 0)
		return -errno;
	b = malloc(INPUT_MAX + 1);
	if (!b)
		return -ENOMEM;
	for (;;) {
		ssize_t got = read(fd, b + n, INPUT_MAX + 1 - n);

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			free(b);
			return -errno;
		}
		if (got == 0)
			break;
		n += (size_t)got;
		if (n > INPUT_MAX) {
			free(b);
			return -EFBIG;
		}
	}
	if (fd != STDIN_FILENO)
		close(fd);
	*buf = b;
	*len = n;
	return 0;
}

static int
write_output(const char *path, const char *data, size_t len)
{
	FILE *f = path ? fopen(path, "w") : stdout;

	if (!f) {
		fprintf(stderr, "gwctl: %s: %s\n", path, strerror(errno));
		return 1;
	}
	fwrite(data, 1, len, f);
	if ((path ? fclose(f) : fflush(f)) != 0) {
		fprintf(stderr, "gwctl: %s: %s\n", path ? path : "stdout", strerror(errno));
		return 1;
	}
	return 0;
}

/* No daemon: the same verbs on the store itself, which the lock keeps to one user at a time. */
static int
run_direct(const struct gwconf *conf, const struct admin_request *req, const char *outfile)
{
	struct keystore_config kc;
	struct keystore *ks;
	char *out = NULL;
	size_t outlen = 0;
	FILE *f;
	int r, status;

	keystore_config_from(&kc, conf);
	r = keystore_open(&ks, &kc);
	if (r == -EBUSY) {
		fprintf(stderr, "gwctl: gatewayd holds the keystore but does not answer on %s\n",
		        conf->control_socket);
		return 1;
	}
	if (r < 0) {
		fprintf(stderr, "gwctl: cannot open the keystore in %s: %s\n", conf->state_dir,
		        strerror(-r));
		return 1;
	}
	f = open_memstream(&out, &outlen);
	if (!f) {
		keystore_free(ks);
		return 1;
	}
	status = admin_run(ks, req, f, stderr, NULL);
	fclose(f);
	keystore_free(ks);
	if (write_output(status == 0 ? outfile : NULL, out, outlen) != 0)
		status = 1;
	explicit_bzero(out, outlen);
	free(out);
	return status;
}

int
main(int argc, char *argv[])
{
	const char *file = GWCONF_DEFAULT_FILE, *sock = NULL, *outfile = NULL;
	struct admin_request req = {0};
	struct gwconf_errors errs;
	struct gwconf *conf;
	char *input = NULL, *out = NULL, *err = NULL;
	size_t out_len = 0, err_len = 0;
	int ch, r, status;

	/* "+": stop at the first command word, whose own options admin_run parses. */
	while ((ch = getopt(argc, argv, "+c:s:o:h")) != -1) {
		switch (ch) {
		case 'c':
			file = optarg;
			break;
		case 's':
			sock = optarg;
			break;
		case 'o':
			outfile = optarg;
			break;
		default:
			usage();
		}
	}
	if (optind >= argc)
		usage();
	req.argc = argc - optind;
	req.argv = argv + optind;
	log_init("gwctl", true, LOG_LEVEL_WARN);

	if (gwconf_load(file, &conf, &errs) < 0) {
		gwconf_errors_print(&errs, stderr);
		gwconf_errors_finish(&errs);
		return 1;
	}
	if (!sock)
		sock = conf->control_socket;
	/* import-cert's file is read here: the daemon may not see the operator's files. */
	if (req.argc == 4 && strcmp(req.argv[0], "device") == 0 &&
	    strcmp(req.argv[1], "import-cert") == 0) {
		r = read_input(req.argv[3], &input, &req.input_len);
		if (r < 0) {
			fprintf(stderr, "gwctl: %s: %s\n", req.argv[3], strerror(-r));
			gwconf_free(conf);
			return 1;
		}
		req.input = input;
	}

	r = control_call(sock, req.argc, req.argv, req.input, req.input_len, &status, &out,
	                 &out_len, &err, &err_len);
	if (r == -ENOENT || r == -ECONNREFUSED) {
		status = run_direct(conf, &req, outfile);
	} else if (r < 0) {
		fprintf(stderr, "gwctl: no answer from gatewayd on %s: %s\n", sock, strerror(-r));
		status = 1;
	} else {
		fwrite(err, 1, err_len, stderr);
		if (write_output(status == 0 ? outfile : NULL, out, out_len) != 0)
			status = 1;
		explicit_bzero(out, out_len);
	}
	free(out);
	free(err);
	free(input);
	gwconf_free(conf);
	return status;
}
