/* SPDX-License-Identifier: Apache-2.0 */
#include "tpmq.h"
#include "log.h"
#include "xalloc.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* Weight of a new sample in the moving averages: 1/8, as TCP's smoothed RTT (RFC 6298). */
#define EWMA_SHIFT 3

enum req_state { REQ_QUEUED, REQ_RUNNING, REQ_DONE };

struct tpmq_req {
	struct tpmq *q; /* only while not done: tpmq_free() completes every request */
	struct tpmq_req *prev, *next;
	enum tpmq_prio prio;
	tpmq_run_fn run;
	void *data;
	tpmq_destroy_fn destroy;
	/* Asynchronous: the caller's and the queue's (then the worker's). */
	atomic_int refs;
	enum req_state state; /* under q->lock */
	atomic_bool done;     /* set under q->lock, with result, before the eventfd fires */
	int result;
	int efd;              /* asynchronous: the eventfd; synchronous: -1 */
	pthread_cond_t *cond; /* synchronous: the waiting caller's */
};

struct tpmq_list {
	struct tpmq_req *head, *tail;
};

struct tpmq {
	pthread_mutex_t lock;
	pthread_cond_t work; /* the worker waits for requests */
	pthread_cond_t idle; /* tpmq_free() waits for synchronous callers to leave */
	struct tpmq_list queue[TPMQ_PRIOS];
	bool stopping;
	unsigned callers; /* synchronous callers inside tpmq_call() */
	pthread_t thread;

	/* Statistics: written by the worker (queued also under lock), read by anyone. */
	atomic_uint queued[TPMQ_PRIOS];
	atomic_uint_fast64_t completed[TPMQ_PRIOS];
	atomic_uint_fast64_t ewma_ns[TPMQ_PRIOS];
	atomic_uint_fast64_t dropped;
	/*
	 * busy_ns and running_since change together; a sequence counter (odd while they change)
	 * lets readers take a consistent pair without a lock, so that busy_ns read while a
	 * request runs is neither counted twice nor lost at its end.
	 */
	atomic_uint seq;
	atomic_uint_fast64_t busy_ns;
	atomic_uint_fast64_t running_since; /* 0: idle */
};

static uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- the queue, under q->lock ---- */

static void
enqueue(struct tpmq *q, struct tpmq_req *req)
{
	struct tpmq_list *l = &q->queue[req->prio];

	req->state = REQ_QUEUED;
	req->next = NULL;
	req->prev = l->tail;
	if (l->tail)
		l->tail->next = req;
	else
		l->head = req;
	l->tail = req;
	atomic_fetch_add_explicit(&q->queued[req->prio], 1, memory_order_relaxed);
	pthread_cond_signal(&q->work);
}

static void
unlink_req(struct tpmq *q, struct tpmq_req *req)
{
	struct tpmq_list *l = &q->queue[req->prio];

	if (req->prev)
		req->prev->next = req->next;
	else
		l->head = req->next;
	if (req->next)
		req->next->prev = req->prev;
	else
		l->tail = req->prev;
	req->prev = req->next = NULL;
	atomic_fetch_sub_explicit(&q->queued[req->prio], 1, memory_order_relaxed);
}

static struct tpmq_req *
dequeue(struct tpmq *q)
{
	for (int p = 0; p < TPMQ_PRIOS; p++) {
		struct tpmq_req *req = q->queue[p].head;

		if (req) {
			unlink_req(q, req);
			return req;
		}
	}
	return NULL;
}

/* ---- completion ---- */

static void
req_unref(struct tpmq_req *req)
{
	if (atomic_fetch_sub_explicit(&req->refs, 1, memory_order_acq_rel) != 1)
		return;
	/* Nobody writes it any more: the worker held a reference while it could. */
	if (req->efd >= 0)
		close(req->efd);
	if (req->destroy)
		req->destroy(req->data);
	free(req);
}

/*
 * Under q->lock: the request is done with result r. A synchronous caller is woken (and owns
 * req from then on); an asynchronous request is returned for signal_async() after the unlock.
 */
static struct tpmq_req *
finish_locked(struct tpmq_req *req, int r)
{
	req->state = REQ_DONE;
	req->result = r;
	atomic_store_explicit(&req->done, true, memory_order_release);
	if (req->cond) {
		pthread_cond_signal(req->cond);
		return NULL;
	}
	return req;
}

/* Fires the eventfd and drops the reference the queue or the worker held. */
static void
signal_async(struct tpmq_req *req)
{
	const uint64_t one = 1;

	if (!req)
		return;
	/* Cannot block or overflow: the counter goes from 0 to at most a few. */
	while (write(req->efd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
	req_unref(req);
}

/* ---- the worker ---- */

static void
busy_begin(struct tpmq *q, uint64_t t)
{
	unsigned s = atomic_load_explicit(&q->seq, memory_order_relaxed);

	atomic_store_explicit(&q->seq, s + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	atomic_store_explicit(&q->running_since, t, memory_order_relaxed);
	atomic_store_explicit(&q->seq, s + 2, memory_order_release);
}

static void
busy_end(struct tpmq *q, enum tpmq_prio prio, uint64_t took)
{
	unsigned s = atomic_load_explicit(&q->seq, memory_order_relaxed);
	uint64_t busy = atomic_load_explicit(&q->busy_ns, memory_order_relaxed);
	uint64_t avg = atomic_load_explicit(&q->ewma_ns[prio], memory_order_relaxed);

	/* The first sample is the average; then avg += (took - avg) / 8, in signed steps. */
	if (avg == 0)
		avg = took;
	else
		avg = (uint64_t)((int64_t)avg + ((int64_t)took - (int64_t)avg) / (1 << EWMA_SHIFT));
	/* Before running goes false, so that a reader who sees the worker idle sees these. */
	atomic_store_explicit(&q->ewma_ns[prio], avg ? avg : 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&q->completed[prio], 1, memory_order_relaxed);

	atomic_store_explicit(&q->seq, s + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	atomic_store_explicit(&q->busy_ns, busy + took, memory_order_relaxed);
	atomic_store_explicit(&q->running_since, 0, memory_order_relaxed);
	atomic_store_explicit(&q->seq, s + 2, memory_order_release);
}

static void *
worker(void *arg)
{
	struct tpmq *q = arg;
	struct tpmq_req *req = NULL, *async;
	uint64_t t0;
	int r;

	pthread_mutex_lock(&q->lock);
	for (;;) {
		while (!q->stopping && !(req = dequeue(q)))
			pthread_cond_wait(&q->work, &q->lock);
		if (q->stopping)
			break;
		req->state = REQ_RUNNING;
		pthread_mutex_unlock(&q->lock);

		t0 = now_ns();
		busy_begin(q, t0 ? t0 : 1);
		/* Also when released meanwhile: the TPM command may be under way already. */
		r = req->run(req->data);
		busy_end(q, req->prio, now_ns() - t0);

		pthread_mutex_lock(&q->lock);
		async = finish_locked(req, r);
		pthread_mutex_unlock(&q->lock);
		signal_async(async);
		pthread_mutex_lock(&q->lock);
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

int
tpmq_new(struct tpmq **out)
{
	struct tpmq *q = xcalloc(1, sizeof(*q));
	sigset_t all, old;
	int r;

	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->work, NULL);
	pthread_cond_init(&q->idle, NULL);
	/*
	 * Signals are the event loop's (signalfd): the worker must never be the thread the
	 * kernel picks to deliver one, whatever the creating thread had blocked.
	 */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(&q->thread, NULL, worker, q);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r != 0) {
		errno = r;
		log_warn("tpmq: cannot start the TPM worker thread");
		pthread_cond_destroy(&q->idle);
		pthread_cond_destroy(&q->work);
		pthread_mutex_destroy(&q->lock);
		free(q);
		return -r;
	}
	pthread_setname_np(q->thread, "gw-tpm");
	*out = q;
	return 0;
}

void
tpmq_free(struct tpmq *q)
{
	struct tpmq_req *req, *cancelled = NULL;

	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->stopping = true;
	while ((req = dequeue(q))) {
		atomic_fetch_add_explicit(&q->dropped, 1, memory_order_relaxed);
		req = finish_locked(req, -ECANCELED);
		/* Chained through next (free again once dequeued) to be signalled unlocked. */
		if (req) {
			req->next = cancelled;
			cancelled = req;
		}
	}
	pthread_cond_signal(&q->work);
	/* Woken callers must be out of their wait on q->lock before it goes. */
	while (q->callers > 0)
		pthread_cond_wait(&q->idle, &q->lock);
	pthread_mutex_unlock(&q->lock);
	while ((req = cancelled)) {
		cancelled = req->next;
		signal_async(req);
	}
	pthread_join(q->thread, NULL);
	pthread_cond_destroy(&q->idle);
	pthread_cond_destroy(&q->work);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

int
tpmq_call(struct tpmq *q, enum tpmq_prio prio, tpmq_run_fn run, void *data)
{
	pthread_cond_t cond;
	struct tpmq_req req = {.q = q, .prio = prio, .run = run, .data = data, .efd = -1};
	int r;

	if (pthread_equal(pthread_self(), q->thread))
		return run(data);
	pthread_cond_init(&cond, NULL);
	req.cond = &cond;
	pthread_mutex_lock(&q->lock);
	if (q->stopping) {
		pthread_mutex_unlock(&q->lock);
		pthread_cond_destroy(&cond);
		return -ECANCELED;
	}
	q->callers++;
	enqueue(q, &req);
	while (req.state != REQ_DONE)
		pthread_cond_wait(&cond, &q->lock);
	r = req.result;
	if (--q->callers == 0 && q->stopping)
		pthread_cond_signal(&q->idle);
	pthread_mutex_unlock(&q->lock);
	pthread_cond_destroy(&cond);
	return r;
}

int
tpmq_submit(struct tpmq *q, enum tpmq_prio prio, tpmq_run_fn run, void *data,
            tpmq_destroy_fn destroy, struct tpmq_req **out)
{
	struct tpmq_req *req;
	int efd, r;

	*out = NULL;
	efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (efd < 0) {
		r = -errno;
		log_warn("tpmq: cannot make an eventfd for a TPM request");
		return r;
	}
	req = xcalloc(1, sizeof(*req));
	*req = (struct tpmq_req){
	        .q = q, .prio = prio, .run = run, .data = data, .destroy = destroy, .efd = efd};
	atomic_init(&req->refs, 2);
	atomic_init(&req->done, false);
	pthread_mutex_lock(&q->lock);
	if (q->stopping) {
		pthread_mutex_unlock(&q->lock);
		close(efd);
		free(req);
		return -ECANCELED;
	}
	enqueue(q, req);
	pthread_mutex_unlock(&q->lock);
	*out = req;
	return 0;
}

int
tpmq_req_fd(const struct tpmq_req *req)
{
	return req->efd;
}

bool
tpmq_req_done(const struct tpmq_req *req)
{
	return atomic_load_explicit(&req->done, memory_order_acquire);
}

int
tpmq_req_result(const struct tpmq_req *req)
{
	return tpmq_req_done(req) ? req->result : -EINPROGRESS;
}

void *
tpmq_req_data(const struct tpmq_req *req)
{
	return req->data;
}

void
tpmq_req_release(struct tpmq_req *req)
{
	struct tpmq_req *cancelled = NULL;
	struct tpmq *q;

	if (!req)
		return;
	/* Done: the queue is out of the picture (and q may be gone). */
	if (!tpmq_req_done(req)) {
		q = req->q;
		pthread_mutex_lock(&q->lock);
		if (req->state == REQ_QUEUED) {
			unlink_req(q, req);
			atomic_fetch_add_explicit(&q->dropped, 1, memory_order_relaxed);
			cancelled = finish_locked(req, -ECANCELED);
		}
		pthread_mutex_unlock(&q->lock);
		/* The queue's reference; a running request keeps the worker's. */
		signal_async(cancelled);
	}
	req_unref(req);
}

void
tpmq_get_stats(const struct tpmq *q, struct tpmq_stats *out)
{
	uint64_t busy, since;
	unsigned s1, s2;

	memset(out, 0, sizeof(*out));
	do {
		s1 = atomic_load_explicit(&q->seq, memory_order_acquire);
		busy = atomic_load_explicit(&q->busy_ns, memory_order_relaxed);
		since = atomic_load_explicit(&q->running_since, memory_order_relaxed);
		atomic_thread_fence(memory_order_acquire);
		s2 = atomic_load_explicit(&q->seq, memory_order_relaxed);
	} while ((s1 & 1) || s1 != s2);
	if (since) {
		uint64_t now = now_ns();

		busy += now > since ? now - since : 0;
	}
	out->running = since != 0;
	out->busy_ns = busy;
	for (int p = 0; p < TPMQ_PRIOS; p++) {
		out->queued[p] = atomic_load_explicit(&q->queued[p], memory_order_relaxed);
		out->completed[p] = atomic_load_explicit(&q->completed[p], memory_order_relaxed);
		out->ewma_ns[p] = atomic_load_explicit(&q->ewma_ns[p], memory_order_relaxed);
	}
	out->dropped = atomic_load_explicit(&q->dropped, memory_order_relaxed);
}
