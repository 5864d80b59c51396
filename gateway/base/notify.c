/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sd_notify(3) without libsystemd: the protocol is one datagram of "KEY=VALUE" lines on an
 * AF_UNIX socket, and the manager learns who sent it from the kernel (SO_PASSCRED on its
 * side), so nothing more than sendto() is needed.
 */
#include "notify.h"

#include "log.h"
#include "loop.h"
#include "xalloc.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct gw_notify_watchdog {
	struct gw_timer *timer;
	uint64_t period_ms;
	bool warned; /* one warning for a manager that stopped listening, not one per ping */
};

/* $NOTIFY_SOCKET as an address: "/path" or "@abstract" (the '@' stands for the leading NUL). */
static int
notify_address(const char *name, struct sockaddr_un *sun, socklen_t *len)
{
	size_t n = strlen(name);

	*sun = (struct sockaddr_un){.sun_family = AF_UNIX};
	if (name[0] == '/') {
		if (n >= sizeof(sun->sun_path))
			return -ENAMETOOLONG;
		memcpy(sun->sun_path, name, n + 1);
		*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
		return 0;
	}
	if (name[0] == '@' && n > 1) {
		/* An abstract name is exactly its bytes: no terminating NUL in the length. */
		if (n > sizeof(sun->sun_path))
			return -ENAMETOOLONG;
		memcpy(sun->sun_path + 1, name + 1, n - 1);
		*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
		return 0;
	}
	/* Newer managers also hand out vsock: addresses; ours never runs in such a VM. */
	return -EAFNOSUPPORT;
}

int
gw_notify_send(const char *state)
{
	const char *name = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun;
	socklen_t sl;
	size_t len = strlen(state);
	ssize_t sent;
	int fd, r;

	if (!name || !*name)
		return 0;
	r = notify_address(name, &sun, &sl);
	if (r < 0)
		return r;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* A fresh socket per message, as sd_notify does: a ping every few seconds costs nothing. */
	sent = sendto(fd, state, len, MSG_NOSIGNAL, (struct sockaddr *)&sun, sl);
	r = sent < 0 ? -errno : (size_t)sent != len ? -EMSGSIZE : 0;
	close(fd);
	return r;
}

int
gw_notify_sendf(const char *fmt, ...)
{
	va_list ap;
	char *state;
	int r;

	if (!getenv("NOTIFY_SOCKET"))
		return 0;
	va_start(ap, fmt);
	state = xvasprintf(fmt, ap);
	va_end(ap);
	r = gw_notify_send(state);
	free(state);
	return r;
}

/* A positive decimal number, nothing else (strtoull would take "-1" and " 5"). */
static int
parse_positive(const char *s, unsigned long long *out)
{
	char *end;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	*out = strtoull(s, &end, 10);
	if (errno || *end || *out == 0)
		return -EINVAL;
	return 0;
}

int
gw_notify_watchdog_parse(const char *usec_env, const char *pid_env, pid_t self, uint64_t *usec)
{
	unsigned long long u, pid;

	*usec = 0;
	if (!usec_env)
		return 0;
	if (parse_positive(usec_env, &u) < 0)
		return -EINVAL;
	if (pid_env) {
		if (parse_positive(pid_env, &pid) < 0)
			return -EINVAL;
		/* The manager watches the process it started, not one forked from it. */
		if (pid != (unsigned long long)self)
			return 0;
	}
	*usec = u;
	return 0;
}

uint64_t
gw_notify_watchdog_interval_ms(uint64_t usec)
{
	uint64_t ms = usec / 2 / 1000;

	return ms > 0 ? ms : 1;
}

static void
watchdog_fired(struct gw_timer *timer, void *data)
{
	struct gw_notify_watchdog *wd = data;
	int r;

	r = gw_notify_send("WATCHDOG=1");
	if (r < 0 && !wd->warned) {
		log_warnx("watchdog: cannot ping the service manager at %s: %s; it will restart "
		          "gatewayd",
		          getenv("NOTIFY_SOCKET"), strerror(-r));
		wd->warned = true;
	}
	/* Re-armed only here, on the loop: a loop that stops turning stops the pings. */
	gw_timer_arm(timer, wd->period_ms);
}

int
gw_notify_watchdog_new(struct gw_notify_watchdog **out, struct gw_loop *loop)
{
	struct gw_notify_watchdog *wd;
	uint64_t usec;
	int r;

	*out = NULL;
	r = gw_notify_watchdog_parse(getenv("WATCHDOG_USEC"), getenv("WATCHDOG_PID"), getpid(),
	                             &usec);
	if (r < 0 || usec == 0)
		return r;
	wd = xcalloc(1, sizeof(*wd));
	wd->period_ms = gw_notify_watchdog_interval_ms(usec);
	wd->timer = gw_timer_new(loop, watchdog_fired, wd);
	gw_timer_arm(wd->timer, wd->period_ms);
	*out = wd;
	return 0;
}

void
gw_notify_watchdog_free(struct gw_notify_watchdog *wd)
{
	if (!wd)
		return;
	gw_timer_free(wd->timer);
	free(wd);
}

uint64_t
gw_notify_watchdog_period_ms(const struct gw_notify_watchdog *wd)
{
	return wd->period_ms;
}
