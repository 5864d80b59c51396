/* SPDX-License-Identifier: Apache-2.0 */
/* gateway/base's small helpers: xalloc, enc (hex and base64), atomicfile. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "atomicfile.h"
#include "enc.h"
#include "log.h"
#include "xalloc.h"

/*
 * Under AddressSanitizer a request it cannot serve is a report and an abort of its own, not a
 * NULL: this lets the test see what xalloc does with the NULL.
 */
const char *__asan_default_options(void);
const char *
__asan_default_options(void)
{
	return "allocator_may_return_null=1";
}

/* Runs fn in a child with stderr in a pipe: its wait status, and what it wrote in out. */
static int
in_child(void (*fn)(void), char *out, size_t outlen)
{
	int pipefd[2], status;
	size_t got = 0;
	ssize_t n;
	pid_t pid;

	assert_int_equal(pipe(pipefd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(pipefd[1], STDERR_FILENO);
		close(pipefd[0]);
		log_init("test-base", true, LOG_LEVEL_INFO);
		fn();
		_exit(0);
	}
	close(pipefd[1]);
	while (got + 1 < outlen && (n = read(pipefd[0], out + got, outlen - 1 - got)) > 0)
		got += (size_t)n;
	out[got] = '\0';
	close(pipefd[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return status;
}

static void
allocate_too_much(void)
{
	/* Half the address space: no malloc serves it, and no overflow check refuses it first. */
	volatile size_t size = SIZE_MAX / 2;

	free(xmalloc(size));
}

static void
multiply_too_much(void)
{
	free(xreallocarray(NULL, SIZE_MAX / 2, 4));
}

static void
out_of_memory_aborts_with_a_message(void **state)
{
	char out[512];
	int status;

	(void)state;
	status = in_child(allocate_too_much, out, sizeof(out));
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGABRT);
	assert_non_null(strstr(out, "out of memory: 1 x 9223372036854775807 bytes; aborting"));

	/* An overflowing count is refused as what it is: more than there is. */
	status = in_child(multiply_too_much, out, sizeof(out));
	assert_true(WIFSIGNALED(status));
	assert_non_null(strstr(out, "out of memory: 9223372036854775807 x 4 bytes"));
}

static void
allocations_that_fit_succeed(void **state)
{
	char *s = xstrdup("dev-1"), *t = xstrndup("dev-1/extra", 5), *u = xasprintf("%s-%d", s, 2);
	uint32_t *z = xcalloc(4, sizeof(*z));

	(void)state;
	assert_string_equal(s, "dev-1");
	assert_string_equal(t, "dev-1");
	assert_string_equal(u, "dev-1-2");
	for (int i = 0; i < 4; i++)
		assert_int_equal(z[i], 0);
	z = xreallocarray(z, 8, sizeof(*z));
	z[7] = 7;
	/* Zero-sized requests give a pointer that free() takes, never NULL. */
	free(xmalloc(0));
	free(xcalloc(0, 0));
	free(z);
	free(u);
	free(t);
	free(s);
}

static void
hex_round_trips_and_refuses_what_is_not(void **state)
{
	const uint8_t key[] = {0x00, 0x01, 0xab, 0xcd, 0xef, 0xff};
	char hex[2 * sizeof(key) + 1];
	uint8_t back[8];

	(void)state;
	enc_hex(hex, key, sizeof(key));
	assert_string_equal(hex, "0001abcdefff");
	assert_int_equal(enc_unhex(hex, strlen(hex), back, sizeof(back)), sizeof(key));
	assert_memory_equal(back, key, sizeof(key));
	/* Either case in; only the given length is read. */
	assert_int_equal(enc_unhex("ABcd99", 4, back, sizeof(back)), 2);
	assert_int_equal(back[0], 0xab);
	assert_int_equal(back[1], 0xcd);
	assert_int_equal(enc_unhex("", 0, back, sizeof(back)), 0);

	assert_int_equal(enc_unhex("abc", 3, back, sizeof(back)), -EINVAL);
	assert_int_equal(enc_unhex("ab:cd", 5, back, sizeof(back)), -EINVAL);
	assert_int_equal(enc_unhex("ab:c", 4, back, sizeof(back)), -EINVAL);
	assert_int_equal(enc_unhex(" abc", 4, back, sizeof(back)), -EINVAL);
	assert_int_equal(enc_unhex("0x12", 4, back, sizeof(back)), -EINVAL);
	assert_int_equal(enc_unhex("gg", 2, back, sizeof(back)), -EINVAL);
	/* One byte more than fits. */
	assert_int_equal(enc_unhex("000102030405060708", 18, back, sizeof(back)), -EINVAL);
}

static void
base64_round_trips_and_refuses_what_is_not(void **state)
{
	static const struct {
		const char *text, *b64;
	} rfc4648[] = {
	        /* RFC 4648 section 10. */
	        {"", ""},
	        {"f", "Zg=="},
	        {"fo", "Zm8="},
	        {"foo", "Zm9v"},
	        {"foob", "Zm9vYg=="},
	        {"fooba", "Zm9vYmE="},
	        {"foobar", "Zm9vYmFy"},
	};
	static const char *const bad[] = {
	        "", "Zg", "Zg=", "Z===", "====", "AB=D", "Zm9v-", "Zm9v!", "Zm=v", "Zm9vY===",
	};
	size_t len;
	uint8_t *out;
	char *b64;

	(void)state;
	for (size_t i = 0; i < sizeof(rfc4648) / sizeof(rfc4648[0]); i++) {
		b64 = enc_base64(rfc4648[i].text, strlen(rfc4648[i].text));
		assert_string_equal(b64, rfc4648[i].b64);
		free(b64);
		if (!*rfc4648[i].b64)
			continue;
		out = enc_unbase64(rfc4648[i].b64, strlen(rfc4648[i].b64), &len);
		assert_non_null(out);
		assert_int_equal(len, strlen(rfc4648[i].text));
		assert_memory_equal(out, rfc4648[i].text, len);
		free(out);
	}
	/* Line breaks and spaces anywhere (RFC 8951 section 3.2). */
	out = enc_unbase64(" Zm9v\r\nYmFy\n", 12, &len);
	assert_non_null(out);
	assert_int_equal(len, 6);
	assert_memory_equal(out, "foobar", 6);
	free(out);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_null(enc_unbase64(bad[i], strlen(bad[i]), &len));
}

/* ---- atomicfile ---- */

struct folder {
	char path[64];
	int fd;
};

static int
folder_setup(void **state)
{
	struct folder *f = calloc(1, sizeof(*f));

	if (!f)
		return -1;
	snprintf(f->path, sizeof(f->path), "/tmp/test-base.XXXXXX");
	if (!mkdtemp(f->path))
		return -1;
	f->fd = open(f->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	*state = f;
	return f->fd < 0 ? -1 : 0;
}

static int
folder_teardown(void **state)
{
	struct folder *f = *state;
	const char *names[] = {"state", ".state.tmp", "other"};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		unlinkat(f->fd, names[i], 0);
	close(f->fd);
	rmdir(f->path);
	free(f);
	return 0;
}

/* The file's content as a string (up to 63 bytes), "" when missing; its mode in *mode. */
static const char *
content(struct folder *f, const char *name, mode_t *mode)
{
	static char buf[64];
	struct stat st;
	ssize_t n;
	int fd;

	buf[0] = '\0';
	fd = openat(f->fd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return buf;
	n = read(fd, buf, sizeof(buf) - 1);
	assert_true(n >= 0);
	buf[n] = '\0';
	if (mode) {
		assert_int_equal(fstat(fd, &st), 0);
		*mode = st.st_mode & 07777;
	}
	close(fd);
	return buf;
}

static bool
exists(struct folder *f, const char *name)
{
	return faccessat(f->fd, name, F_OK, 0) == 0;
}

static void
atomic_write_replaces_whole(void **state)
{
	struct folder *f = *state;
	mode_t mode = 0;

	umask(022);
	assert_int_equal(atomic_write(f->fd, f->path, "state", "one", 3, 0600), 0);
	assert_string_equal(content(f, "state", &mode), "one");
	assert_int_equal(mode, 0600);
	assert_int_equal(atomic_write(f->fd, f->path, "state", "two, longer", 11, 0644), 0);
	assert_string_equal(content(f, "state", &mode), "two, longer");
	assert_int_equal(mode, 0644);
	assert_false(exists(f, ".state.tmp"));
}

static void
a_staged_file_replaces_nothing_until_installed(void **state)
{
	struct folder *f = *state;

	assert_int_equal(atomic_write(f->fd, f->path, "state", "old", 3, 0600), 0);
	assert_int_equal(atomic_stage(f->fd, f->path, "state", "new", 3, 0600, false), 0);
	/* A crash now leaves the old content, and the temporary file for the start to remove. */
	assert_string_equal(content(f, "state", NULL), "old");
	assert_string_equal(content(f, ".state.tmp", NULL), "new");
	assert_int_equal(atomic_install(f->fd, f->path, "state"), 0);
	assert_string_equal(content(f, "state", NULL), "new");
	assert_false(exists(f, ".state.tmp"));

	assert_int_equal(atomic_stage(f->fd, f->path, "state", "newer", 5, 0600, true), 0);
	atomic_discard(f->fd, "state");
	assert_false(exists(f, ".state.tmp"));
	assert_string_equal(content(f, "state", NULL), "new");
}

static void
a_planted_temporary_file_is_not_written_through(void **state)
{
	struct folder *f = *state;
	mode_t mode = 0;

	/* Someone left a link where the temporary file goes: it is replaced, not followed. */
	assert_int_equal(symlinkat("other", f->fd, ".state.tmp"), 0);
	assert_int_equal(atomic_write(f->fd, f->path, "state", "mine", 4, 0600), 0);
	assert_false(exists(f, "other"));
	assert_string_equal(content(f, "state", &mode), "mine");
	assert_int_equal(mode, 0600);
}

static void
failures_are_errno_and_leave_nothing(void **state)
{
	struct folder *f = *state;
	char name[NAME_MAX + 1];

	/* The temporary name would be longer than a name can be. */
	memset(name, 'n', NAME_MAX - 2);
	name[NAME_MAX - 2] = '\0';
	assert_int_equal(atomic_write(f->fd, f->path, name, "x", 1, 0600), -ENAMETOOLONG);
	/* Installing what was never staged. */
	assert_int_equal(atomic_install(f->fd, f->path, "state"), -ENOENT);
	assert_false(exists(f, "state"));
	/* A folder it cannot write to (root is not held back by modes: a closed fd then). */
	assert_int_equal(atomic_write(-1, "nowhere", "state", "x", 1, 0600), -EBADF);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(out_of_memory_aborts_with_a_message),
	        cmocka_unit_test(allocations_that_fit_succeed),
	        cmocka_unit_test(hex_round_trips_and_refuses_what_is_not),
	        cmocka_unit_test(base64_round_trips_and_refuses_what_is_not),
	        cmocka_unit_test_setup_teardown(atomic_write_replaces_whole, folder_setup,
	                                        folder_teardown),
	        cmocka_unit_test_setup_teardown(a_staged_file_replaces_nothing_until_installed,
	                                        folder_setup, folder_teardown),
	        cmocka_unit_test_setup_teardown(a_planted_temporary_file_is_not_written_through,
	                                        folder_setup, folder_teardown),
	        cmocka_unit_test_setup_teardown(failures_are_errno_and_leave_nothing, folder_setup,
	                                        folder_teardown),
	};

	log_init("test-base", true, LOG_LEVEL_ERR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
