/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gwctl: the gateway's admin tool. Asks the running gatewayd over its control socket; when
 * gatewayd is not running, opens the keystore itself, under its lock.
 */
#include "admin.h"
#include "conf.h"
#include "control.h"
#include "device.h"
#include "enrol.h"
#include "keystore.h"
#include "log.h"
#include "loop.h"
#include "options.h"
#include "qr.h"
#include "spool.h"
#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define INPUT_MAX (CONTROL_MAX_REQUEST / 2)

/* One request's answer. */
struct answer {
	int status;
	char *out, *err;
	size_t out_len, err_len;
};

/* Where requests go: the daemon's socket, or, once it proved absent, the store itself. */
struct client {
	const struct gwconf *conf;
	const char *sock;
	struct keystore *ks;
	/* Without the daemon, device enroll runs here, on a loop of gwctl's own. */
	struct gw_loop *loop;
	struct enrol *enrol;
	struct answer *late; /* where the pending verb's answer goes */
};

static void __attribute__((noreturn)) usage(void)
{
	admin_usage(stderr);
	fprintf(stderr, "  -c config   default " GWCONF_DEFAULT_FILE "\n"
	                "  -s socket   the daemon's control socket (default: from the config)\n"
	                "  -o file     write the output (a CSR, pairing results as CSV) to file\n"
	                "  -q          draw pairing QR codes even when stdout is not a terminal\n");
	exit(2);
}

static void
answer_finish(struct answer *a)
{
	/* Answers to pair and add carry PSKs. */
	if (a->out)
		explicit_bzero(a->out, a->out_len);
	free(a->out);
	free(a->err);
	*a = (struct answer){0};
}

/* only: the one device the command needs, or NULL for every device. */
static int
open_store(struct client *c, const char *only)
{
	struct keystore_config kc;
	int r;

	options_keystore(&kc, c->conf);
	kc.only = only;
	r = keystore_open(&c->ks, &kc);
	if (r == -EBUSY)
		fprintf(stderr, "gwctl: gatewayd holds the keystore but does not answer on %s\n",
		        c->sock);
	else if (r < 0)
		fprintf(stderr, "gwctl: cannot open the keystore in %s: %s\n", c->conf->state_dir,
		        strerror(-r));
	return r;
}

static void
late_answer(void *ctx, int status, const char *message)
{
	struct client *c = ctx;
	struct answer *a = c->late;

	a->status = status;
	if (status == 0) {
		a->out = xasprintf("%s\n", message);
		a->out_len = strlen(a->out);
	} else {
		a->err = xasprintf("%s\n", message);
		a->err_len = strlen(a->err);
	}
	gw_loop_quit(c->loop, 0);
}

static int
enroll_here(const char *id, admin_done_fn done, void *ctx, FILE *err, void *data)
{
	struct client *c = data;
	struct enrol_options eo;
	char why[600];
	int r;

	if (!c->conf->est.url) {
		fprintf(err, "no EST server is configured (add the group est to %s)\n",
		        c->conf->file);
		return -ENOTSUP;
	}
	options_enrol(&eo, c->conf);
	/* No sessions to switch: a renewed certificate waits on trial for gatewayd's start. */
	if (!c->enrol && ((r = gw_loop_new(&c->loop)) < 0 ||
	                  (r = enrol_new(&c->enrol, c->loop, &eo, c->ks, NULL, NULL)) < 0)) {
		fprintf(err, "cannot start the EST client: %s\n", strerror(-r));
		return r;
	}
	r = enrol_now(c->enrol, id, done, ctx, why, sizeof(why));
	if (r < 0)
		fprintf(err, "%s\n", why);
	return r;
}

/* Without the daemon: the spool opened here, under its lock, as gatewayd opens it. */
static int
drop_spool_here(const char *id, uint64_t *count, uint64_t *bytes, void *data)
{
	struct client *c = data;
	struct device *dev = device_find(keystore_devices(c->ks), id);
	struct spool_limits lim;
	struct spool *sp;
	char *dir;
	int r;

	*count = *bytes = 0;
	if (!dev)
		return -ENOENT;
	options_spool(&lim, c->conf);
	dir = xasprintf("%s/spool", c->conf->state_dir);
	r = spool_open(&sp, dir, &lim, keystore_devices(c->ks));
	free(dir);
	if (r < 0)
		return r;
	spool_depth(sp, dev, bytes);
	r = spool_drop(sp, dev, count);
	if (r == 0)
		r = spool_sync(sp);
	spool_free(sp);
	return r;
}

/* Runs one command, through the daemon if one listens, else on the store under its lock. */
static int
client_call(struct client *c, int argc, char **argv, const char *input, size_t input_len,
            struct answer *a)
{
	struct admin_request req = {.argc = argc,
	                            .argv = argv,
	                            .input = input,
	                            .input_len = input_len,
	                            .done = late_answer,
	                            .done_ctx = c};
	const struct admin_hooks hooks = {.enroll = enroll_here,
	                                  .drop_spool = drop_spool_here,
	                                  .gateway_id = c->conf->gateway_id,
	                                  .data = c};
	FILE *fo, *fe;
	int r;

	*a = (struct answer){0};
	if (!c->ks) {
		r = control_call(c->sock, argc, argv, input, input_len, &a->status, &a->out,
		                 &a->out_len, &a->err, &a->err_len);
		if (r == 0)
			return 0;
		if (r != -ENOENT && r != -ECONNREFUSED) {
			fprintf(stderr, "gwctl: no answer from gatewayd on %s: %s\n", c->sock,
			        strerror(-r));
			return r;
		}
		r = open_store(c, admin_one_device(argc, argv));
		if (r < 0)
			return r;
	}
	fo = open_memstream(&a->out, &a->out_len);
	fe = open_memstream(&a->err, &a->err_len);
	/* libc's streams: they fail for want of memory only. */
	if (!fo || !fe) {
		if (fo)
			fclose(fo);
		if (fe)
			fclose(fe);
		answer_finish(a);
		return -ENOMEM;
	}
	a->status = admin_run(c->ks, &req, fo, fe, &hooks);
	fclose(fo);
	fclose(fe);
	if (a->status == ADMIN_PENDING) {
		/* The memstreams wrote nothing; late_answer() builds the answer, from the loop. */
		answer_finish(a);
		c->late = a;
		gw_loop_run(c->loop);
		c->late = NULL;
	}
	return 0;
}

static int
read_input(const char *path, char **buf, size_t *len)
{
	int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
	size_t n = 0;
	int err = 0;
	char *b;

	if (fd < 0)
		return -errno;
	b = xmalloc(INPUT_MAX + 1);
	for (;;) {
		ssize_t got = read(fd, b + n, INPUT_MAX + 1 - n);

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			err = -errno;
			break;
		}
		if (got == 0)
			break;
		n += (size_t)got;
		if (n > INPUT_MAX) {
			err = -EFBIG;
			break;
		}
	}
	if (fd != STDIN_FILENO)
		close(fd);
	if (err) {
		free(b);
		return err;
	}
	b[n] = '\0';
	*buf = b;
	*len = n;
	return 0;
}

/* Output that may hold secrets (pairing results) goes to a file only its owner can read. */
static FILE *
open_output(const char *path)
{
	int fd;

	if (!path)
		return stdout;
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || fchmod(fd, 0600) < 0) {
		fprintf(stderr, "gwctl: %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	return fdopen(fd, "w");
}

static int
close_output(FILE *f, const char *path)
{
	if ((path ? fclose(f) : fflush(f)) != 0) {
		fprintf(stderr, "gwctl: %s: %s\n", path ? path : "stdout", strerror(errno));
		return 1;
	}
	return 0;
}

/* The value of a "name: value" line in a verb's output, malloc'd, or NULL. */
static char *
field(const char *text, const char *name)
{
	size_t n = strlen(name);

	for (const char *line = text; line && *line;
	     line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
		if (strncmp(line, name, n) == 0 && line[n] == ':' && line[n + 1] == ' ')
			return xstrndup(line + n + 2, strcspn(line + n + 2, "\n"));
	}
	return NULL;
}

/*
 * After "device pair": the QR code a sensor's flashing tool scans, holding the identity and the
 * key in hex ("gatewayd-psk:v1;id=...;key=...").
 */
static void
print_pairing_qr(const char *out)
{
	char *identity = field(out, "psk-identity"), *hex = field(out, "psk-key-hex"), *text;

	if (identity && hex) {
		text = xasprintf("gatewayd-psk:v1;id=%s;key=%s", identity, hex);
		qr_print(stdout, text);
		explicit_bzero(text, strlen(text));
		free(text);
	}
	if (hex)
		explicit_bzero(hex, strlen(hex));
	free(identity);
	free(hex);
}

static void
progress(size_t done, size_t total)
{
	char bar[41];
	size_t fill = total ? done * 40 / total : 40;

	memset(bar, '#', fill);
	memset(bar + fill, '-', 40 - fill);
	bar[40] = '\0';
	fprintf(stderr, "\r[%s] %zu/%zu", bar, done, total);
	if (done == total)
		fputc('\n', stderr);
	fflush(stderr);
}

/*
 * gwctl device pair --from FILE.csv: one device per line, "id" or "id,psk-key-hex" (a header
 * line "id..." and # comments are skipped). Writes "id,psk_identity,psk_key_hex" per device to
 * the output, which should be -o FILE: it holds every key.
 */
static int
pair_bulk(struct client *c, const char *csv, const char *outfile)
{
	char *text, *save = NULL, **lines = NULL;
	size_t len, nlines = 0, failed = 0;
	bool tty = isatty(STDERR_FILENO);
	FILE *out;
	int r;

	r = read_input(csv, &text, &len);
	if (r < 0) {
		fprintf(stderr, "gwctl: %s: %s\n", csv, strerror(-r));
		return 1;
	}
	for (char *line = strtok_r(text, "\r\n", &save); line;
	     line = strtok_r(NULL, "\r\n", &save)) {
		if (!*line || *line == '#' ||
		    (nlines == 0 && strncmp(line, "id", 2) == 0 &&
		     (line[2] == '\0' || line[2] == ',')))
			continue;
		lines = xreallocarray(lines, nlines + 1, sizeof(*lines));
		lines[nlines++] = line;
	}
	out = open_output(outfile);
	if (!out) {
		free(lines);
		free(text);
		return 1;
	}
	fprintf(out, "id,psk_identity,psk_key_hex\n");
	for (size_t i = 0; i < nlines; i++) {
		char *id = lines[i], *key = strchr(id, ','), *argv[5] = {"device", "pair", id};
		struct answer a;
		int argc = 3;

		if (key) {
			*key++ = '\0';
			argv[argc++] = "--psk-key";
			argv[argc++] = key;
		}
		if (client_call(c, argc, argv, NULL, 0, &a) < 0 || a.status != 0) {
			if (a.err_len)
				fprintf(stderr, "%s%s: %.*s", tty ? "\n" : "", id, (int)a.err_len,
				        a.err);
			else
				fprintf(stderr, "%s%s: failed\n", tty ? "\n" : "", id);
			failed++;
		} else {
			char *identity = field(a.out, "psk-identity"),
			     *hex = field(a.out, "psk-key-hex");

			fprintf(out, "%s,%s,%s\n", id, identity ? identity : "", hex ? hex : "");
			if (hex)
				explicit_bzero(hex, strlen(hex));
			free(identity);
			free(hex);
		}
		answer_finish(&a);
		if (tty)
			progress(i + 1, nlines);
	}
	r = close_output(out, outfile);
	fprintf(stderr, "%zu paired, %zu failed\n", nlines - failed, failed);
	explicit_bzero(text, len);
	free(text);
	free(lines);
	return failed || r ? 1 : 0;
}

/* status, reload, metrics: answered by the running daemon only. */
static bool
daemon_only(int nwords, char **words)
{
	return nwords == 1 && (strcmp(words[0], "status") == 0 || strcmp(words[0], "reload") == 0 ||
	                       strcmp(words[0], "metrics") == 0);
}

int
main(int argc, char *argv[])
{
	const char *file = GWCONF_DEFAULT_FILE, *outfile = NULL;
	struct client c = {0};
	struct gwconf_errors errs;
	struct gwconf *conf;
	struct answer a = {0};
	char *input = NULL, **words;
	size_t input_len = 0;
	bool force_qr = false;
	int ch, r, status, nwords;

	/* "+": stop at the first command word, whose own options admin_run parses. */
	while ((ch = getopt(argc, argv, "+c:s:o:qh")) != -1) {
		switch (ch) {
		case 'c':
			file = optarg;
			break;
		case 's':
			c.sock = optarg;
			break;
		case 'o':
			outfile = optarg;
			break;
		case 'q':
			force_qr = true;
			break;
		default:
			usage();
		}
	}
	if (optind >= argc)
		usage();
	nwords = argc - optind;
	words = argv + optind;
	log_init("gwctl", true, LOG_LEVEL_WARN);

	if (gwconf_load(file, &conf, &errs) < 0) {
		gwconf_errors_print(&errs, stderr);
		gwconf_errors_finish(&errs);
		if (!daemon_only(nwords, words))
			return 1;
		/* The running daemon has a good one: reload reports these errors too. */
		c.sock = c.sock ? c.sock : GWCONF_DEFAULT_SOCKET;
		fprintf(stderr, "gwctl: asking the running gatewayd at %s all the same\n", c.sock);
		if (control_call(c.sock, nwords, words, NULL, 0, &a.status, &a.out, &a.out_len,
		                 &a.err, &a.err_len) < 0) {
			fprintf(stderr,
			        "gwctl: gatewayd does not answer on %s (-s names its socket)\n",
			        c.sock);
			return 1;
		}
		fwrite(a.err, 1, a.err_len, stderr);
		fwrite(a.out, 1, a.out_len, stdout);
		status = a.status;
		answer_finish(&a);
		return status;
	}
	c.conf = conf;
	if (!c.sock)
		c.sock = conf->control_socket;

	if (nwords == 4 && strcmp(words[0], "device") == 0 && strcmp(words[1], "pair") == 0 &&
	    strcmp(words[2], "--from") == 0) {
		status = pair_bulk(&c, words[3], outfile);
		goto out;
	}
	/* import-cert's file is read here: the daemon may not see the operator's files. */
	if (nwords >= 3 && strcmp(words[1], "import-cert") == 0 &&
	    ((nwords == 4 && strcmp(words[0], "device") == 0) ||
	     (nwords == 3 && strcmp(words[0], "gateway") == 0))) {
		const char *path = words[nwords - 1];

		r = read_input(path, &input, &input_len);
		if (r < 0) {
			fprintf(stderr, "gwctl: %s: %s\n", path, strerror(-r));
			status = 1;
			goto out;
		}
	}
	if (client_call(&c, nwords, words, input, input_len, &a) < 0) {
		status = 1;
		goto out;
	}
	status = a.status;
	fwrite(a.err, 1, a.err_len, stderr);
	if (status == 0) {
		FILE *f = open_output(outfile);

		if (!f) {
			status = 1;
		} else {
			fwrite(a.out, 1, a.out_len, f);
			status = close_output(f, outfile);
		}
		if (status == 0 && nwords >= 2 && strcmp(words[1], "pair") == 0 &&
		    (force_qr || isatty(STDOUT_FILENO)))
			print_pairing_qr(a.out);
	} else {
		fwrite(a.out, 1, a.out_len, stdout);
	}
out:
	answer_finish(&a);
	free(input);
	enrol_free(c.enrol);
	gw_loop_free(c.loop);
	keystore_free(c.ks);
	gwconf_free(conf);
	return status;
}
