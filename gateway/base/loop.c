/* SPDX-License-Identifier: Apache-2.0 */
#include "loop.h"
#include "log.h"
#include "xalloc.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIGNALS 8

struct watch {
	int fd;
	gw_loop_fd_fn fn;
	void *data;
	struct watch *next, *prev;
};

struct gw_timer {
	struct gw_loop *loop;
	gw_timer_fn fn;
	void *data;
	uint64_t due;
	size_t slot; /* index in the heap, or SIZE_MAX when disarmed */
};

struct gw_deferred {
	struct gw_loop *loop;
	gw_deferred_fn fn;
	void *data;
	/* In the loop's pending ring, or the ring of a pass under way, while queued; else itself.
	 */
	struct gw_deferred *next, *prev;
};

struct gw_loop {
	int epfd;
	int timerfd;
	int sigfd;
	sigset_t sigmask;
	struct {
		int signo;
		gw_signal_fn fn;
		void *data;
	} signals[MAX_SIGNALS];
	size_t nsignals;
	struct watch *watches;
	/*
	 * The watch of each fd by its number: every upstream session is a socket of the loop, so
	 * changing or removing one must not walk thousands of others.
	 */
	struct watch **byfd;
	size_t nbyfd;
	/* Watches removed while a batch of events is dispatched; freed after the batch. */
	struct watch *graveyard;
	/* Min-heap on due time: one timerfd serves every timer, whatever the fleet size. */
	struct gw_timer **heap;
	size_t nheap, heap_cap;
	/* Deferred calls queued for the next pass (a ring; this is its head). */
	struct gw_deferred pending;
	bool quit;
	int status;
};

uint64_t
gw_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int
epoll_watch(struct gw_loop *loop, int fd, uint32_t events, struct watch *w)
{
	struct epoll_event ev = {.events = events, .data.ptr = w};

	if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	return 0;
}

static struct watch *
watch_of(const struct gw_loop *loop, int fd)
{
	return fd >= 0 && (size_t)fd < loop->nbyfd ? loop->byfd[fd] : NULL;
}

static void
watch_unlink(struct gw_loop *loop, struct watch *w)
{
	if (w->prev)
		w->prev->next = w->next;
	else
		loop->watches = w->next;
	if (w->next)
		w->next->prev = w->prev;
	loop->byfd[w->fd] = NULL;
	w->fn = NULL;
	w->prev = NULL;
	w->next = loop->graveyard;
	loop->graveyard = w;
}

int
gw_loop_add_fd(struct gw_loop *loop, int fd, uint32_t events, gw_loop_fd_fn fn, void *data)
{
	struct watch *w, *stale;
	int r;

	if (fd < 0)
		return -EBADF;
	if ((size_t)fd >= loop->nbyfd) {
		size_t n = loop->nbyfd ? loop->nbyfd : 64;
		struct watch **byfd;

		while (n <= (size_t)fd)
			n *= 2;
		byfd = xreallocarray(loop->byfd, n, sizeof(*byfd));
		memset(byfd + loop->nbyfd, 0, (n - loop->nbyfd) * sizeof(*byfd));
		loop->byfd = byfd;
		loop->nbyfd = n;
	}
	/*
	 * A watch left on a number whose fd was closed without gw_loop_del_fd() (epoll forgot
	 * it with the close): the new fd of that number replaces it.
	 */
	stale = loop->byfd[fd];
	if (stale) {
		epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL);
		watch_unlink(loop, stale);
	}
	w = xcalloc(1, sizeof(*w));
	*w = (struct watch){.fd = fd, .fn = fn, .data = data, .next = loop->watches};
	r = epoll_watch(loop, fd, events, w);
	if (r < 0) {
		free(w);
		return r;
	}
	if (loop->watches)
		loop->watches->prev = w;
	loop->watches = w;
	loop->byfd[fd] = w;
	return 0;
}

int
gw_loop_mod_fd(struct gw_loop *loop, int fd, uint32_t events)
{
	struct watch *w = watch_of(loop, fd);
	struct epoll_event ev = {.events = events, .data.ptr = w};

	if (!w)
		return -ENOENT;
	return epoll_ctl(loop->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
}

int
gw_loop_del_fd(struct gw_loop *loop, int fd)
{
	struct watch *w = watch_of(loop, fd);

	if (!w)
		return -ENOENT;
	/* Fails harmlessly for an fd already closed: epoll dropped it then. */
	epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL);
	watch_unlink(loop, w);
	return 0;
}

static void
graveyard_empty(struct gw_loop *loop)
{
	while (loop->graveyard) {
		struct watch *w = loop->graveyard;

		loop->graveyard = w->next;
		free(w);
	}
}

static void
timerfd_program(struct gw_loop *loop)
{
	struct itimerspec its = {0};

	if (loop->nheap > 0) {
		uint64_t due = loop->heap[0]->due;

		/* An all-zero it_value would disarm the timerfd: 1 ns means "now". */
		its.it_value.tv_sec = (time_t)(due / 1000);
		its.it_value.tv_nsec = (long)(due % 1000) * 1000000;
		if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
			its.it_value.tv_nsec = 1;
	}
	if (timerfd_settime(loop->timerfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
		log_warn("timerfd_settime");
}

static void
heap_swap(struct gw_timer **heap, size_t a, size_t b)
{
	struct gw_timer *t = heap[a];

	heap[a] = heap[b];
	heap[b] = t;
	heap[a]->slot = a;
	heap[b]->slot = b;
}

static void
heap_up(struct gw_loop *loop, size_t i)
{
	while (i > 0) {
		size_t parent = (i - 1) / 2;

		if (loop->heap[parent]->due <= loop->heap[i]->due)
			break;
		heap_swap(loop->heap, i, parent);
		i = parent;
	}
}

static void
heap_down(struct gw_loop *loop, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, min = i;

		if (l < loop->nheap && loop->heap[l]->due < loop->heap[min]->due)
			min = l;
		if (r < loop->nheap && loop->heap[r]->due < loop->heap[min]->due)
			min = r;
		if (min == i)
			return;
		heap_swap(loop->heap, i, min);
		i = min;
	}
}

static void
heap_remove(struct gw_loop *loop, struct gw_timer *t)
{
	size_t i = t->slot;

	loop->nheap--;
	if (i != loop->nheap) {
		loop->heap[i] = loop->heap[loop->nheap];
		loop->heap[i]->slot = i;
		heap_up(loop, i);
		heap_down(loop, loop->heap[i]->slot);
	}
	t->slot = SIZE_MAX;
}

/* Out of whichever ring holds it; a no-op when it is in none. */
static void
deferred_unlink(struct gw_deferred *d)
{
	d->prev->next = d->next;
	d->next->prev = d->prev;
	d->next = d->prev = d;
}

struct gw_timer *
gw_timer_new(struct gw_loop *loop, gw_timer_fn fn, void *data)
{
	struct gw_timer *t = xcalloc(1, sizeof(*t));

	*t = (struct gw_timer){.loop = loop, .fn = fn, .data = data, .slot = SIZE_MAX};
	return t;
}

void
gw_timer_disarm(struct gw_timer *timer)
{
	if (!timer || timer->slot == SIZE_MAX)
		return;
	bool was_first = timer->slot == 0;

	heap_remove(timer->loop, timer);
	if (was_first)
		timerfd_program(timer->loop);
}

void
gw_timer_free(struct gw_timer *timer)
{
	gw_timer_disarm(timer);
	free(timer);
}

void
gw_timer_arm(struct gw_timer *timer, uint64_t ms)
{
	struct gw_loop *loop = timer->loop;

	gw_timer_disarm(timer);
	if (loop->nheap == loop->heap_cap) {
		size_t cap = loop->heap_cap ? loop->heap_cap * 2 : 64;

		loop->heap = xreallocarray(loop->heap, cap, sizeof(*loop->heap));
		loop->heap_cap = cap;
	}
	timer->due = gw_now_ms() + ms;
	timer->slot = loop->nheap;
	loop->heap[loop->nheap++] = timer;
	heap_up(loop, timer->slot);
	if (timer->slot == 0)
		timerfd_program(loop);
}

int64_t
gw_timer_remaining(const struct gw_timer *timer)
{
	uint64_t now = gw_now_ms();

	if (timer->slot == SIZE_MAX)
		return -1;
	return timer->due > now ? (int64_t)(timer->due - now) : 0;
}

static void
timers_expire(int fd, uint32_t events, void *data)
{
	struct gw_loop *loop = data;
	uint64_t ticks, now = gw_now_ms();

	(void)events;
	if (read(fd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
		log_warn("timerfd read");
	/* A callback may re-arm its own timer or others; pop one at a time. */
	while (loop->nheap > 0 && loop->heap[0]->due <= now) {
		struct gw_timer *t = loop->heap[0];

		heap_remove(loop, t);
		t->fn(t, t->data);
	}
	timerfd_program(loop);
}

static void
signals_dispatch(int fd, uint32_t events, void *data)
{
	struct gw_loop *loop = data;
	struct signalfd_siginfo si;

	(void)events;
	while (read(fd, &si, sizeof(si)) == sizeof(si)) {
		for (size_t i = 0; i < loop->nsignals; i++) {
			if (loop->signals[i].signo == (int)si.ssi_signo)
				loop->signals[i].fn((int)si.ssi_signo, loop->signals[i].data);
		}
	}
}

int
gw_loop_add_signal(struct gw_loop *loop, int signo, gw_signal_fn fn, void *data)
{
	if (loop->nsignals == MAX_SIGNALS)
		return -ENOSPC;
	sigaddset(&loop->sigmask, signo);
	if (pthread_sigmask(SIG_BLOCK, &loop->sigmask, NULL) != 0)
		return -EINVAL;
	if (signalfd(loop->sigfd, &loop->sigmask, SFD_NONBLOCK | SFD_CLOEXEC) < 0)
		return -errno;
	loop->signals[loop->nsignals].signo = signo;
	loop->signals[loop->nsignals].fn = fn;
	loop->signals[loop->nsignals].data = data;
	loop->nsignals++;
	return 0;
}

int
gw_loop_new(struct gw_loop **out)
{
	struct gw_loop *loop = xcalloc(1, sizeof(*loop));
	int r;

	loop->timerfd = loop->sigfd = -1;
	loop->pending.next = loop->pending.prev = &loop->pending;
	sigemptyset(&loop->sigmask);
	loop->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (loop->epfd < 0)
		goto fail_errno;
	loop->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (loop->timerfd < 0)
		goto fail_errno;
	loop->sigfd = signalfd(-1, &loop->sigmask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (loop->sigfd < 0)
		goto fail_errno;
	r = gw_loop_add_fd(loop, loop->timerfd, EPOLLIN, timers_expire, loop);
	if (r == 0)
		r = gw_loop_add_fd(loop, loop->sigfd, EPOLLIN, signals_dispatch, loop);
	if (r < 0)
		goto fail;
	*out = loop;
	return 0;

fail_errno:
	r = -errno;
fail:
	gw_loop_free(loop);
	return r;
}

void
gw_loop_free(struct gw_loop *loop)
{
	if (!loop)
		return;
	while (loop->watches)
		gw_loop_del_fd(loop, loop->watches->fd);
	graveyard_empty(loop);
	free(loop->byfd);
	for (size_t i = 0; i < loop->nheap; i++)
		loop->heap[i]->slot = SIZE_MAX;
	free(loop->heap);
	while (loop->pending.next != &loop->pending)
		deferred_unlink(loop->pending.next);
	if (loop->sigfd >= 0)
		close(loop->sigfd);
	if (loop->timerfd >= 0)
		close(loop->timerfd);
	if (loop->epfd >= 0)
		close(loop->epfd);
	free(loop);
}

void
gw_loop_quit(struct gw_loop *loop, int status)
{
	loop->quit = true;
	loop->status = status;
}

struct gw_deferred *
gw_deferred_new(struct gw_loop *loop, gw_deferred_fn fn, void *data)
{
	struct gw_deferred *d = xcalloc(1, sizeof(*d));

	*d = (struct gw_deferred){.loop = loop, .fn = fn, .data = data};
	d->next = d->prev = d;
	return d;
}

void
gw_deferred_queue(struct gw_deferred *d)
{
	struct gw_deferred *ring = &d->loop->pending;

	if (d->next != d)
		return;
	d->prev = ring->prev;
	d->next = ring;
	ring->prev->next = d;
	ring->prev = d;
}

void
gw_deferred_free(struct gw_deferred *d)
{
	if (!d)
		return;
	deferred_unlink(d);
	free(d);
}

/*
 * Makes the calls queued before this pass; returns whether more were queued meanwhile. The pass
 * takes the pending ring under its own head, so that a call that queues itself again waits for
 * the next pass, and one freed by an earlier call of the pass leaves that ring.
 */
static bool
deferred_run(struct gw_loop *loop)
{
	struct gw_deferred ring, *run = &ring;

	if (loop->pending.next == &loop->pending)
		return false;
	run->next = loop->pending.next;
	run->prev = loop->pending.prev;
	run->next->prev = run->prev->next = run;
	loop->pending.next = loop->pending.prev = &loop->pending;
	while (run->next != run && !loop->quit) {
		struct gw_deferred *d = run->next;

		deferred_unlink(d);
		d->fn(d->data);
	}
	/* Not made before a quit: back to pending, for a loop that is run again. */
	while (run->next != run) {
		struct gw_deferred *d = run->next;

		deferred_unlink(d);
		gw_deferred_queue(d);
	}
	return loop->pending.next != &loop->pending;
}

int
gw_loop_dispatch(struct gw_loop *loop, int timeout_ms)
{
	struct epoll_event evs[64];
	int n;

	if (deferred_run(loop))
		timeout_ms = 0;
	if (loop->quit)
		return 0;
	n = epoll_wait(loop->epfd, evs, 64, timeout_ms);

	if (n < 0) {
		if (errno == EINTR)
			return 0;
		log_warn("epoll_wait");
		return -errno;
	}
	for (int i = 0; i < n && !loop->quit; i++) {
		struct watch *w = evs[i].data.ptr;

		if (w->fn)
			w->fn(w->fd, evs[i].events, w->data);
	}
	graveyard_empty(loop);
	return n;
}

int
gw_loop_run(struct gw_loop *loop)
{
	loop->quit = false;
	while (!loop->quit) {
		int r = gw_loop_dispatch(loop, -1);

		if (r < 0)
			return r;
	}
	return loop->status;
}
