/* SPDX-License-Identifier: Apache-2.0 */
/*
 * netcut: a TCP relay a benchmark can cut. Listens on 127.0.0.1:PORT and relays each
 * connection to 127.0.0.1:UPSTREAM, byte for byte, both ways (half-closes passed on).
 * SIGUSR1 cuts the network: every relayed connection is reset on both sides and new ones
 * are refused (the listening socket is closed) for -s seconds (default 5); then it listens
 * and relays again. The server behind it stays up meanwhile. An upstream that refuses a
 * connection gets the client reset too.
 * Event lines on stdout, each starting with the time in epoch ms:
 *   <ms> netcut: listening on 127.0.0.1:PORT, relaying to 127.0.0.1:UPSTREAM
 *   <ms> netcut: cut: N connections reset, new ones refused for S s
 *   <ms> netcut: relaying again
 *   <ms> netcut: N relayed in all, M open, C cuts          (SIGUSR2, and at exit)
 * One thread, one epoll loop; signals through a signalfd. Bounded: exits after -t seconds
 * (default 3600), when its parent exits, on SIGTERM or SIGINT; status 1 if it cannot listen,
 * 2 usage.
 *   netcut -l PORT -u UPSTREAM [-s SECONDS] [-t SECONDS]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE (16 * 1024)

struct conn;

/* One side of a relayed connection: what epoll hands back. */
struct end {
	int fd;
	struct conn *conn;
	bool eof;   /* read its end of stream */
	bool shut;  /* its write side was shut down, after the other side's end */
	size_t len; /* bytes read from it, waiting to be written to the other side */
	uint8_t *buf;
	struct end *peer;
};

struct conn {
	struct end client, server;
	bool connecting;
	bool dead;
	struct conn *prev, *next;
};

static int ep, listen_fd = -1;
static uint16_t port, upstream;
static struct conn *conns, *graveyard;
static unsigned long long relayed, open_now, cuts;
/* epoll tags for the non-connection fds */
static int tag_listen, tag_signal, tag_timer, tag_life;

static unsigned long long
epoch_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000;
}

static void
event(const char *fmt, ...)
{
	va_list ap;

	printf("%llu netcut: ", epoch_ms());
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static void
fatal(const char *what)
{
	fprintf(stderr, "netcut: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int
open_listener(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &tag_listen};

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 1024) < 0 ||
	    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* Closes with a reset (SO_LINGER 0): a cut, not a goodbye. */
static void
reset_close(int fd)
{
	struct linger l = {.l_onoff = 1, .l_linger = 0};

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	close(fd);
}

/*
 * Closes both sides, at once; the memory waits for the end of the epoll batch, which may
 * still name this connection (graveyard_free()).
 */
static void
conn_close(struct conn *c, bool reset)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (reset) {
		reset_close(c->client.fd);
		reset_close(c->server.fd);
	} else {
		close(c->client.fd);
		close(c->server.fd);
	}
	c->dead = true;
	c->prev = NULL;
	c->next = graveyard;
	graveyard = c;
	open_now--;
}

static void
graveyard_free(void)
{
	while (graveyard) {
		struct conn *c = graveyard;

		graveyard = c->next;
		free(c->client.buf);
		free(c->server.buf);
		free(c);
	}
}

/* What each fd waits for, from the state of both directions. */
static void
conn_arm(struct conn *c)
{
	struct end *e[2] = {&c->client, &c->server};

	for (int i = 0; i < 2; i++) {
		struct epoll_event ev = {.data.ptr = e[i]};

		if (e[i] == &c->server && c->connecting) {
			ev.events = EPOLLOUT;
		} else {
			if (!e[i]->eof && e[i]->len < BUF_SIZE)
				ev.events |= EPOLLIN;
			if (e[i]->peer->len > 0)
				ev.events |= EPOLLOUT;
		}
		epoll_ctl(ep, EPOLL_CTL_MOD, e[i]->fd, &ev);
	}
}

/* Moves what it can between the two sides: 1 to go on, 0 when both ended, -1 on an error. */
static int
conn_pump(struct conn *c)
{
	struct end *e[2] = {&c->client, &c->server};

	for (int i = 0; i < 2; i++) {
		struct end *src = e[i], *dst = src->peer;

		/* While the server side connects, the client's bytes wait in its buffer. */
		if (!src->eof && src->len < BUF_SIZE) {
			ssize_t n = read(src->fd, src->buf + src->len, BUF_SIZE - src->len);

			if (n > 0)
				src->len += (size_t)n;
			else if (n == 0)
				src->eof = true;
			else if (errno != EAGAIN && errno != EINTR)
				return -1;
		}
		if (src->len > 0 && !(dst == &c->server && c->connecting)) {
			ssize_t n = send(dst->fd, src->buf, src->len, MSG_NOSIGNAL);

			if (n > 0) {
				memmove(src->buf, src->buf + n, src->len - (size_t)n);
				src->len -= (size_t)n;
			} else if (n < 0 && errno != EAGAIN && errno != EINTR) {
				return -1;
			}
		}
		if (src->eof && src->len == 0 && !dst->shut &&
		    !(dst == &c->server && c->connecting)) {
			shutdown(dst->fd, SHUT_WR);
			dst->shut = true;
		}
	}
	return !(c->client.eof && c->server.eof && c->client.len == 0 && c->server.len == 0);
}

static void
conn_new(int cfd)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(upstream)};
	struct conn *c = calloc(1, sizeof(*c));
	struct epoll_event ev = {0};
	int one = 1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (!c)
		abort();
	c->client.fd = cfd;
	c->server.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	c->client.buf = malloc(BUF_SIZE);
	c->server.buf = malloc(BUF_SIZE);
	if (c->server.fd < 0 || !c->client.buf || !c->server.buf)
		abort();
	c->client.conn = c->server.conn = c;
	c->client.peer = &c->server;
	c->server.peer = &c->client;
	setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(c->server.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->next = conns;
	if (conns)
		conns->prev = c;
	conns = c;
	open_now++;
	relayed++;
	if (connect(c->server.fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		if (errno != EINPROGRESS) {
			conn_close(c, true);
			return;
		}
		c->connecting = true;
	}
	ev.data.ptr = &c->client;
	epoll_ctl(ep, EPOLL_CTL_ADD, c->client.fd, &ev);
	ev.data.ptr = &c->server;
	epoll_ctl(ep, EPOLL_CTL_ADD, c->server.fd, &ev);
	conn_arm(c);
}

static void
on_conn_event(struct end *e)
{
	struct conn *c = e->conn;

	if (c->dead)
		return;
	if (e == &c->server && c->connecting) {
		int err = 0;
		socklen_t len = sizeof(err);

		getsockopt(e->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err != 0) {
			/* The server is away (restarting): the client sees a reset. */
			conn_close(c, true);
			return;
		}
		c->connecting = false;
	}
	switch (conn_pump(c)) {
	case 1:
		conn_arm(c);
		break;
	case 0:
		conn_close(c, false);
		break;
	default:
		/* A reset on one side is passed on as a reset. */
		conn_close(c, true);
	}
}

static void
cut(int timer_fd, unsigned secs)
{
	struct itimerspec its = {.it_value.tv_sec = secs};
	unsigned long long n = 0;

	while (conns) {
		conn_close(conns, true);
		n++;
	}
	if (listen_fd >= 0) {
		close(listen_fd);
		listen_fd = -1;
	}
	cuts++;
	timerfd_settime(timer_fd, 0, &its, NULL);
	event("cut: %llu connections reset, new ones refused for %u s", n, secs);
}

static void
usage(void)
{
	fprintf(stderr, "usage: netcut -l PORT -u UPSTREAM_PORT [-s CUT_SECONDS] [-t SECONDS]\n");
	exit(2);
}

int
main(int argc, char *argv[])
{
	long lport = 0, uport = 0, cut_s = 5, lifetime = 3600;
	pid_t parent = getppid();
	struct epoll_event ev;
	struct itimerspec life = {0};
	sigset_t sigs;
	int ch, sfd, tfd, lfd;
	bool running = true;

	while ((ch = getopt(argc, argv, "l:u:s:t:")) != -1) {
		switch (ch) {
		case 'l':
			lport = atol(optarg);
			break;
		case 'u':
			uport = atol(optarg);
			break;
		case 's':
			cut_s = atol(optarg);
			break;
		case 't':
			lifetime = atol(optarg);
			break;
		default:
			usage();
		}
	}
	if (lport < 1 || lport > 65535 || uport < 1 || uport > 65535 || cut_s < 1 || cut_s > 3600 ||
	    lifetime < 1)
		usage();
	port = (uint16_t)lport;
	upstream = (uint16_t)uport;

	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGUSR1);
	sigaddset(&sigs, SIGUSR2);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		return 0;

	ep = epoll_create1(EPOLL_CLOEXEC);
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
	tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	lfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	if (ep < 0 || sfd < 0 || tfd < 0 || lfd < 0)
		fatal("setting up");
	ev = (struct epoll_event){.events = EPOLLIN, .data.ptr = &tag_signal};
	epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
	ev = (struct epoll_event){.events = EPOLLIN, .data.ptr = &tag_timer};
	epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
	ev = (struct epoll_event){.events = EPOLLIN, .data.ptr = &tag_life};
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
	life.it_value.tv_sec = lifetime;
	timerfd_settime(lfd, 0, &life, NULL);
	life = (struct itimerspec){.it_value.tv_sec = 1, .it_interval.tv_sec = 1};

	listen_fd = open_listener();
	if (listen_fd < 0) {
		char what[64];

		snprintf(what, sizeof(what), "cannot listen on 127.0.0.1:%u", port);
		fatal(what);
	}
	event("listening on 127.0.0.1:%u, relaying to 127.0.0.1:%u", port, upstream);

	while (running) {
		struct epoll_event evs[64];
		/* A second's timeout: the parent is checked at least that often. */
		int n = epoll_wait(ep, evs, 64, 1000);

		if (n < 0 && errno != EINTR)
			fatal("epoll_wait");
		if (getppid() != parent)
			break;
		for (int i = 0; i < n && running; i++) {
			void *p = evs[i].data.ptr;

			if (p == &tag_listen) {
				int cfd;

				while (listen_fd >= 0 &&
				       (cfd = accept4(listen_fd, NULL, NULL,
				                      SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0)
					conn_new(cfd);
			} else if (p == &tag_signal) {
				struct signalfd_siginfo si;

				if (read(sfd, &si, sizeof(si)) != sizeof(si))
					continue;
				if (si.ssi_signo == SIGUSR1)
					cut(tfd, (unsigned)cut_s);
				else if (si.ssi_signo == SIGUSR2)
					event("%llu relayed in all, %llu open, %llu cuts", relayed,
					      open_now, cuts);
				else
					running = false;
			} else if (p == &tag_timer) {
				uint64_t x;

				if (read(tfd, &x, sizeof(x)) < 0)
					continue;
				/* The port is ours: it was bound until the cut. Retry a moment. */
				for (int k = 0; k < 50 && (listen_fd = open_listener()) < 0; k++)
					usleep(100000);
				if (listen_fd < 0)
					fatal("cannot listen again");
				event("relaying again");
			} else if (p == &tag_life) {
				event("%ld s are up: exiting", lifetime);
				running = false;
			} else {
				on_conn_event(p);
			}
		}
		graveyard_free();
	}
	event("%llu relayed in all, %llu open, %llu cuts", relayed, open_now, cuts);
	return 0;
}
