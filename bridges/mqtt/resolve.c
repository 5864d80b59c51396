/* SPDX-License-Identifier: Apache-2.0 */
#include "resolve.h"
#include "log.h"
#include "loop.h"
#include "xalloc.h"

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

/*
 * Shared by the loop and the lookup thread: whoever of the two finishes last frees it (refs
 * counts them).
 */
struct resolve {
	struct gw_loop *loop;
	resolve_fn fn;
	void *data;
	char *host;
	char port[8];
	int efd;
	atomic_int refs;
	atomic_bool cancelled;
	struct resolve_result result;
};

static void
unref(struct resolve *r)
{
	if (atomic_fetch_sub(&r->refs, 1) != 1)
		return;
	close(r->efd);
	free(r->host);
	free(r);
}

static void
lookup(struct resolve *r, int flags)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = flags}, *ai = NULL;
	int e = getaddrinfo(r->host, r->port, &hints, &ai);

	r->result.error = e;
	r->result.error_text = e ? gai_strerror(e) : NULL;
	for (struct addrinfo *a = ai; a && r->result.naddrs < RESOLVE_MAX_ADDRS; a = a->ai_next) {
		if (a->ai_addrlen > sizeof(r->result.addrs[0]))
			continue;
		memcpy(&r->result.addrs[r->result.naddrs], a->ai_addr, a->ai_addrlen);
		r->result.lens[r->result.naddrs++] = a->ai_addrlen;
	}
	if (ai)
		freeaddrinfo(ai);
}

static void *
run(void *arg)
{
	struct resolve *r = arg;
	uint64_t one = 1;

	lookup(r, AI_ADDRCONFIG);
	if (write(r->efd, &one, sizeof(one)) < 0)
		log_warn("resolve: eventfd write");
	unref(r);
	return NULL;
}

static void
done(int fd, uint32_t events, void *data)
{
	struct resolve *r = data;
	uint64_t n;

	(void)events;
	if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		return;
	gw_loop_del_fd(r->loop, fd);
	if (!atomic_load(&r->cancelled))
		r->fn(&r->result, r->data);
	unref(r);
}

int
resolve_start(struct resolve **out, struct gw_loop *loop, const char *host, uint16_t port,
              resolve_fn fn, void *data)
{
	struct resolve *r = xcalloc(1, sizeof(*r));
	uint64_t one = 1;
	pthread_attr_t attr;
	pthread_t t;
	int e;

	r->loop = loop;
	r->fn = fn;
	r->data = data;
	r->host = xstrdup(host);
	snprintf(r->port, sizeof(r->port), "%u", port);
	r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (r->efd < 0) {
		e = -errno;
		free(r->host);
		free(r);
		return e;
	}
	atomic_init(&r->refs, 1);
	e = gw_loop_add_fd(loop, r->efd, EPOLLIN, done, r);
	if (e < 0) {
		unref(r);
		return e;
	}
	*out = r;
	/* An address needs no DNS: answered on the loop's next turn, without a thread. */
	lookup(r, AI_NUMERICHOST);
	if (r->result.error != EAI_NONAME) {
		if (write(r->efd, &one, sizeof(one)) < 0)
			log_warn("resolve: eventfd write");
		return 0;
	}
	r->result = (struct resolve_result){0};
	atomic_fetch_add(&r->refs, 1);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	e = pthread_create(&t, &attr, run, r);
	pthread_attr_destroy(&attr);
	if (e) {
		/* No thread: look it up here, once; the loop waits this one time. */
		log_warnx("resolve: cannot start a lookup thread (%s): resolving %s on the loop",
		          strerror(e), host);
		atomic_fetch_sub(&r->refs, 1);
		lookup(r, AI_ADDRCONFIG);
		if (write(r->efd, &one, sizeof(one)) < 0)
			log_warn("resolve: eventfd write");
	}
	return 0;
}

void
resolve_cancel(struct resolve *r)
{
	if (!r)
		return;
	atomic_store(&r->cancelled, true);
	gw_loop_del_fd(r->loop, r->efd);
	unref(r);
}
