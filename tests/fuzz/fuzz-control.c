/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness for the control socket's request reader (control_parse_request() in
 * gateway/ops/control.c): the input is what a client sent the daemon. Any local user the socket's
 * mode lets in can send anything, and the daemon (root) reads it as it arrives. Checked, as
 * control.h promises: a request it takes is framed exactly as control.h says (encoding its
 * words and input again gives the same bytes), its input points into the bytes read, its words
 * are whole C strings; a request's prefixes need more bytes, and garbage stays garbage however
 * many bytes follow. The input also serves as words and a file for a request built the way
 * gwctl frames one, which must read back the same. Any broken promise aborts.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "control.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define check(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* control.h's framing: "GWCTL1", then 32-bit big-endian counts and lengths. */
#define MAGIC     "GWCTL1"
#define MAGIC_LEN 6

struct frame {
	uint8_t *buf;
	size_t len, cap;
};

static void
put(struct frame *f, const void *p, size_t n)
{
	if (f->len + n > f->cap) {
		f->cap = (f->len + n) * 2;
		f->buf = realloc(f->buf, f->cap);
		check(f->buf);
	}
	if (n)
		memcpy(f->buf + f->len, p, n);
	f->len += n;
}

static void
put_u32(struct frame *f, uint32_t v)
{
	uint32_t be = htonl(v);

	put(f, &be, 4);
}

static void
put_bytes(struct frame *f, const void *p, size_t n)
{
	put_u32(f, (uint32_t)n);
	put(f, p, n);
}

static void
free_words(char **argv)
{
	for (size_t i = 0; i < CONTROL_MAX_ARGS; i++) {
		free(argv[i]);
		argv[i] = NULL;
	}
}

/*
 * Parses buf[0..len) from a copy of exactly len bytes (so that ASan sees a read past it) and
 * checks what a request taken must be. Returns the answer.
 */
static int
parse(const uint8_t *data, size_t len)
{
	uint8_t *buf = malloc(len ? len : 1);
	char *argv[CONTROL_MAX_ARGS] = {NULL};
	struct admin_request req;
	struct frame f = {0};
	int r;

	check(buf);
	if (len)
		memcpy(buf, data, len);
	memset(&req, 0xA5, sizeof(req));
	r = control_parse_request(buf, len, &req, argv);
	check(r == 1 || r == 0 || r == -EBADMSG);
	if (r != 1) {
		free_words(argv);
		free(buf);
		return r;
	}
	check(req.argc >= 1 && req.argc <= CONTROL_MAX_ARGS && req.argv == argv);
	for (int i = 0; i < CONTROL_MAX_ARGS; i++)
		check((i < req.argc) == (argv[i] != NULL));
	check((req.input == NULL) == (req.input_len == 0));
	if (req.input)
		check((const uint8_t *)req.input >= buf && req.input_len <= len &&
		      (size_t)((const uint8_t *)req.input - buf) <= len - req.input_len);
	/* The same request, framed again from what was read, is the same bytes. */
	put(&f, MAGIC, MAGIC_LEN);
	put_u32(&f, (uint32_t)req.argc);
	for (int i = 0; i < req.argc; i++)
		put_bytes(&f, argv[i], strlen(argv[i]));
	put_bytes(&f, req.input, req.input_len);
	check(f.len == len && memcmp(f.buf, buf, len) == 0);
	free(f.buf);
	free_words(argv);
	free(buf);
	return 1;
}

/*
 * The answers for the input's prefixes, shortest first: "more bytes" until the request is
 * whole (1, for that length only) or turns out to be garbage; after either, garbage only.
 */
static void
check_prefixes(const uint8_t *data, size_t size, int whole)
{
	/* Every length up to 256 bytes, then 256 lengths spread over the rest. */
	size_t step = size <= 256 ? 1 : size / 256;
	int last = 0;

	for (size_t n = 0; n < size; n += step) {
		int r = parse(data, n);

		check(last == 0 || r == -EBADMSG);
		last = r;
	}
	check(last == 0 || whole == -EBADMSG);
}

/*
 * A request built as gwctl frames one, from the input: its first byte gives the number of
 * words, the words are the NUL-separated pieces that follow (missing ones empty), and the rest
 * is the file. It must read back as built; one byte less needs more, one byte more is garbage.
 */
static void
round_trip(const uint8_t *data, size_t size)
{
	char *argv[CONTROL_MAX_ARGS] = {NULL};
	const uint8_t *words[CONTROL_MAX_ARGS], *input;
	size_t lens[CONTROL_MAX_ARGS], at = 1, input_len;
	struct admin_request req;
	struct frame f = {0};
	int argc;

	if (size == 0)
		return;
	argc = 1 + data[0] % CONTROL_MAX_ARGS;
	for (int i = 0; i < argc; i++) {
		const uint8_t *nul = at < size ? memchr(data + at, '\0', size - at) : NULL;

		words[i] = data + (at < size ? at : size);
		lens[i] = at < size ? (nul ? (size_t)(nul - (data + at)) : size - at) : 0;
		at += lens[i] + 1;
	}
	input = at < size ? data + at : NULL;
	input_len = at < size ? size - at : 0;

	put(&f, MAGIC, MAGIC_LEN);
	put_u32(&f, (uint32_t)argc);
	for (int i = 0; i < argc; i++)
		put_bytes(&f, words[i], lens[i]);
	put_bytes(&f, input, input_len);

	check(control_parse_request(f.buf, f.len, &req, argv) == 1);
	check(req.argc == argc);
	for (int i = 0; i < argc; i++)
		check(strlen(argv[i]) == lens[i] && memcmp(argv[i], words[i], lens[i]) == 0);
	check(req.input_len == input_len);
	check(!input_len || memcmp(req.input, input, input_len) == 0);
	free_words(argv);

	check(parse(f.buf, f.len) == 1);
	check(parse(f.buf, f.len - 1) == 0);
	put(&f, "", 1);
	check(parse(f.buf, f.len) == -EBADMSG);
	free(f.buf);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int whole = parse(data, size);

	check_prefixes(data, size, whole);
	round_trip(data, size);
	return 0;
}
