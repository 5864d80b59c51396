/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "loop.h"
#include "notify.h"
#include "open-fds.h"

/* The service manager's end: a datagram socket bound where $NOTIFY_SOCKET will point. */
struct manager {
	int fd;
	char dir[64];
	char env[128]; /* the $NOTIFY_SOCKET value */
};

static void
manager_bind_path(struct manager *m)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};

	snprintf(m->dir, sizeof(m->dir), "/tmp/gw-notify-XXXXXX");
	assert_non_null(mkdtemp(m->dir));
	snprintf(m->env, sizeof(m->env), "%s/notify", m->dir);
	assert_true(strlen(m->env) < sizeof(sun.sun_path));
	memcpy(sun.sun_path, m->env, strlen(m->env) + 1);
	m->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(m->fd >= 0);
	assert_int_equal(bind(m->fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	assert_int_equal(setenv("NOTIFY_SOCKET", m->env, 1), 0);
}

static void
manager_bind_abstract(struct manager *m)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	int n;

	m->dir[0] = '\0';
	n = snprintf(m->env, sizeof(m->env), "@gw-test-notify/%ld/%d", (long)getpid(), rand());
	/* Abstract: a leading NUL, then exactly the name's bytes (no NUL counted). */
	memcpy(sun.sun_path + 1, m->env + 1, (size_t)n - 1);
	m->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(m->fd >= 0);
	assert_int_equal(bind(m->fd, (struct sockaddr *)&sun,
	                      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n)),
	                 0);
	assert_int_equal(setenv("NOTIFY_SOCKET", m->env, 1), 0);
}

static void
manager_close(struct manager *m)
{
	char path[128];

	close(m->fd);
	if (m->dir[0]) {
		snprintf(path, sizeof(path), "%s/notify", m->dir);
		unlink(path);
		rmdir(m->dir);
	}
	unsetenv("NOTIFY_SOCKET");
}

/* The next datagram, NUL-terminated; asserts one is there. */
static void
expect_datagram(struct manager *m, const char *want)
{
	char buf[512];
	ssize_t n = recv(m->fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);

	assert_true(n >= 0);
	buf[n] = '\0';
	assert_string_equal(buf, want);
	assert_int_equal((size_t)n, strlen(want));
}

static void
expect_nothing(struct manager *m)
{
	char buf[64];

	assert_int_equal(recv(m->fd, buf, sizeof(buf), MSG_DONTWAIT), -1);
	assert_int_equal(errno, EAGAIN);
}

static void
sends_to_a_path_socket(void **state)
{
	struct manager m;

	(void)state;
	manager_bind_path(&m);
	assert_int_equal(gw_notify_send("READY=1\nSTATUS=ready: 3 devices"), 0);
	expect_datagram(&m, "READY=1\nSTATUS=ready: 3 devices");
	assert_int_equal(
	        gw_notify_sendf("STATUS=ready: %d devices, upstream %s", 2, "mqtts://broker:8883"),
	        0);
	expect_datagram(&m, "STATUS=ready: 2 devices, upstream mqtts://broker:8883");
	assert_int_equal(gw_notify_send("STOPPING=1"), 0);
	expect_datagram(&m, "STOPPING=1");
	expect_nothing(&m);
	manager_close(&m);
}

static void
sends_to_an_abstract_socket(void **state)
{
	struct manager m;

	(void)state;
	manager_bind_abstract(&m);
	assert_int_equal(gw_notify_send("READY=1"), 0);
	expect_datagram(&m, "READY=1");
	assert_int_equal(gw_notify_send("WATCHDOG=1"), 0);
	expect_datagram(&m, "WATCHDOG=1");
	expect_nothing(&m);
	manager_close(&m);
}

static void
does_nothing_without_notify_socket(void **state)
{
	struct manager m;
	int fds;

	(void)state;
	manager_bind_path(&m);
	unsetenv("NOTIFY_SOCKET");
	fds = open_fds();
	assert_int_equal(gw_notify_send("READY=1"), 0);
	assert_int_equal(gw_notify_sendf("STATUS=%s", "x"), 0);
	/* Not even a socket was made. */
	assert_int_equal(open_fds(), fds);
	expect_nothing(&m);
	manager_close(&m);
}

static void
refuses_addresses_it_cannot_use(void **state)
{
	char longname[200];

	(void)state;
	setenv("NOTIFY_SOCKET", "relative/notify", 1);
	assert_int_equal(gw_notify_send("READY=1"), -EAFNOSUPPORT);
	memset(longname, 'a', sizeof(longname) - 1);
	longname[0] = '/';
	longname[sizeof(longname) - 1] = '\0';
	setenv("NOTIFY_SOCKET", longname, 1);
	assert_int_equal(gw_notify_send("READY=1"), -ENAMETOOLONG);
	/* Nobody listening: the caller hears it (and logs it), nothing blocks. */
	setenv("NOTIFY_SOCKET", "/nonexistent/gw-notify", 1);
	assert_int_equal(gw_notify_send("READY=1"), -ENOENT);
	unsetenv("NOTIFY_SOCKET");
}

static void
watchdog_environment(void **state)
{
	uint64_t usec = 42;

	(void)state;
	/* No watchdog asked. */
	assert_int_equal(gw_notify_watchdog_parse(NULL, NULL, 100, &usec), 0);
	assert_int_equal(usec, 0);
	assert_int_equal(gw_notify_watchdog_parse(NULL, "100", 100, &usec), 0);
	assert_int_equal(usec, 0);
	/* WatchdogSec=30s, for us (with or without $WATCHDOG_PID). */
	assert_int_equal(gw_notify_watchdog_parse("30000000", NULL, 100, &usec), 0);
	assert_int_equal(usec, 30000000);
	assert_int_equal(gw_notify_watchdog_parse("30000000", "100", 100, &usec), 0);
	assert_int_equal(usec, 30000000);
	/* For another process: not ours to ping. */
	assert_int_equal(gw_notify_watchdog_parse("30000000", "99", 100, &usec), 0);
	assert_int_equal(usec, 0);
	/* Malformed. */
	const char *bad[] = {"", "0", "-1", " 5", "5s", "30000000x", "99999999999999999999999"};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(gw_notify_watchdog_parse(bad[i], NULL, 100, &usec), -EINVAL);
		assert_int_equal(usec, 0);
	}
	assert_int_equal(gw_notify_watchdog_parse("30000000", "x", 100, &usec), -EINVAL);
	assert_int_equal(gw_notify_watchdog_parse("30000000", "0", 100, &usec), -EINVAL);
}

static void
watchdog_pings_at_half_the_timeout(void **state)
{
	(void)state;
	assert_int_equal(gw_notify_watchdog_interval_ms(30000000), 15000);
	assert_int_equal(gw_notify_watchdog_interval_ms(3000000), 1500);
	assert_int_equal(gw_notify_watchdog_interval_ms(1001), 1);
	/* Never a zero-period timer, however short the timeout. */
	assert_int_equal(gw_notify_watchdog_interval_ms(1), 1);
}

/* The manager's side on the loop: counts pings until it has seen enough. */
struct run {
	struct gw_loop *loop;
	uint64_t at[3];
	int pings;
};

static void
ping_arrived(int fd, uint32_t events, void *data)
{
	struct run *run = data;
	char buf[64];
	ssize_t n;

	(void)events;
	while ((n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT)) >= 0) {
		buf[n] = '\0';
		assert_string_equal(buf, "WATCHDOG=1");
		run->at[run->pings++] = gw_now_ms();
		if (run->pings == 3) {
			gw_loop_quit(run->loop, 0);
			return;
		}
	}
}

static void
too_late(struct gw_timer *t, void *data)
{
	struct run *run = data;

	(void)t;
	gw_loop_quit(run->loop, -ETIMEDOUT);
}

static void
watchdog_pings_from_the_loop(void **state)
{
	struct gw_notify_watchdog *wd;
	struct manager m;
	struct run run = {0};
	struct gw_timer *deadline;
	char pid[32];

	(void)state;
	manager_bind_path(&m);
	assert_int_equal(gw_loop_new(&run.loop), 0);

	/* Not asked: no watchdog. */
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	assert_int_equal(gw_notify_watchdog_new(&wd, run.loop), 0);
	assert_null(wd);
	/* Asked of another process. */
	setenv("WATCHDOG_USEC", "40000", 1);
	setenv("WATCHDOG_PID", "1", 1);
	assert_int_equal(gw_notify_watchdog_new(&wd, run.loop), 0);
	assert_null(wd);
	setenv("WATCHDOG_USEC", "garbage", 1);
	assert_int_equal(gw_notify_watchdog_new(&wd, run.loop), -EINVAL);
	assert_null(wd);

	/* WatchdogSec=40ms, for us: a ping every 20 ms while the loop runs. */
	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	setenv("WATCHDOG_USEC", "40000", 1);
	setenv("WATCHDOG_PID", pid, 1);
	assert_int_equal(gw_notify_watchdog_new(&wd, run.loop), 0);
	assert_non_null(wd);
	assert_int_equal(gw_notify_watchdog_period_ms(wd), 20);
	/* Nothing before the loop turns. */
	expect_nothing(&m);
	assert_int_equal(gw_loop_add_fd(run.loop, m.fd, EPOLLIN, ping_arrived, &run), 0);
	deadline = gw_timer_new(run.loop, too_late, &run);
	assert_non_null(deadline);
	gw_timer_arm(deadline, 5000);
	assert_int_equal(gw_loop_run(run.loop), 0);
	assert_int_equal(run.pings, 3);
	/* At the period, not faster (ms clock: allow its rounding). */
	assert_true(run.at[1] - run.at[0] >= 19);
	assert_true(run.at[2] - run.at[1] >= 19);

	/* A loop that does not turn (wedged) sends nothing, however long it stalls. */
	usleep(60 * 1000);
	expect_nothing(&m);

	gw_notify_watchdog_free(wd);
	gw_notify_watchdog_free(NULL);
	gw_timer_free(deadline);
	gw_loop_del_fd(run.loop, m.fd);
	gw_loop_free(run.loop);
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	manager_close(&m);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(sends_to_a_path_socket),
	        cmocka_unit_test(sends_to_an_abstract_socket),
	        cmocka_unit_test(does_nothing_without_notify_socket),
	        cmocka_unit_test(refuses_addresses_it_cannot_use),
	        cmocka_unit_test(watchdog_environment),
	        cmocka_unit_test(watchdog_pings_at_half_the_timeout),
	        cmocka_unit_test(watchdog_pings_from_the_loop),
	};

	srand((unsigned)getpid());
	return cmocka_run_group_tests(tests, NULL, NULL);
}
