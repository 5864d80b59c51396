/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "tpmq.h"

/*
 * Requests that record the order they ran in and can be held on a gate the test opens, so
 * that the worker is provably busy while the test queues, cancels or shuts down.
 */
struct rig {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool gate_open;
	int entered;   /* run() calls begun */
	int destroyed; /* destroy() calls */
	char order[64];
	size_t n;
	struct tpmq *q;
};

struct job {
	struct rig *rig;
	char name;
	bool gated;
	int result;
	long sleep_us;
	struct tpmq_req *req;
};

static int
job_run(void *data)
{
	struct job *j = data;
	struct rig *r = j->rig;

	pthread_mutex_lock(&r->lock);
	r->entered++;
	pthread_cond_broadcast(&r->cond);
	while (j->gated && !r->gate_open)
		pthread_cond_wait(&r->cond, &r->lock);
	r->order[r->n++] = j->name;
	pthread_mutex_unlock(&r->lock);
	if (j->sleep_us) {
		struct timespec ts = {.tv_sec = j->sleep_us / 1000000,
		                      .tv_nsec = (j->sleep_us % 1000000) * 1000};

		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
	return j->result;
}

static void
job_destroy(void *data)
{
	struct job *j = data;
	struct rig *r = j->rig;

	pthread_mutex_lock(&r->lock);
	r->destroyed++;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	free(j);
}

static struct job *
job_new(struct rig *r, char name, bool gated, int result)
{
	struct job *j = calloc(1, sizeof(*j));

	assert_non_null(j);
	*j = (struct job){.rig = r, .name = name, .gated = gated, .result = result};
	return j;
}

/* Queues a job that sleeps us microseconds; j->req holds the test's reference. */
static struct job *
submit_sleeping(struct rig *r, enum tpmq_prio prio, char name, bool gated, int result, long us)
{
	struct job *j = job_new(r, name, gated, result);

	j->sleep_us = us;
	assert_int_equal(tpmq_submit(r->q, prio, job_run, j, job_destroy, &j->req), 0);
	assert_non_null(j->req);
	assert_ptr_equal(tpmq_req_data(j->req), j);
	return j;
}

static struct job *
submit(struct rig *r, enum tpmq_prio prio, char name, bool gated, int result)
{
	return submit_sleeping(r, prio, name, gated, result, 0);
}

static void
open_gate(struct rig *r)
{
	pthread_mutex_lock(&r->lock);
	r->gate_open = true;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

/* Waits (at most 10 s) until pred holds under the rig's lock. */
#define WAIT_FOR(r, pred)                                                                          \
	do {                                                                                       \
		struct timespec dl_;                                                               \
		clock_gettime(CLOCK_REALTIME, &dl_);                                               \
		dl_.tv_sec += 10;                                                                  \
		pthread_mutex_lock(&(r)->lock);                                                    \
		while (!(pred)) {                                                                  \
			if (pthread_cond_timedwait(&(r)->cond, &(r)->lock, &dl_) == ETIMEDOUT) {   \
				pthread_mutex_unlock(&(r)->lock);                                  \
				fail_msg("timed out waiting for %s", #pred);                       \
			}                                                                          \
		}                                                                                  \
		pthread_mutex_unlock(&(r)->lock);                                                  \
	} while (0)

/* Polls the worker's statistics (at most 10 s) until cond holds for st. */
#define STATS_UNTIL(q, st, cond)                                                                   \
	do {                                                                                       \
		int i_;                                                                            \
		for (i_ = 0; i_ < 10000; i_++) {                                                   \
			tpmq_get_stats((q), &(st));                                                \
			if (cond)                                                                  \
				break;                                                             \
			usleep(1000);                                                              \
		}                                                                                  \
		if (i_ == 10000)                                                                   \
			fail_msg("timed out waiting for %s", #cond);                               \
	} while (0)

/* The request's eventfd becomes readable (within 10 s) and the request is done. */
static void
wait_done(struct job *j)
{
	struct pollfd p = {.fd = tpmq_req_fd(j->req), .events = POLLIN};

	assert_int_equal(poll(&p, 1, 10000), 1);
	assert_true(tpmq_req_done(j->req));
}

static bool
fd_readable(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};

	return poll(&p, 1, 0) == 1;
}

static bool
fd_closed(int fd)
{
	return fcntl(fd, F_GETFD) < 0 && errno == EBADF;
}

static int
setup(void **state)
{
	struct rig *r = calloc(1, sizeof(*r));

	assert_non_null(r);
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
	assert_int_equal(tpmq_new(&r->q), 0);
	*state = r;
	return 0;
}

static int
teardown(void **state)
{
	struct rig *r = *state;

	open_gate(r);
	tpmq_free(r->q);
	pthread_cond_destroy(&r->cond);
	pthread_mutex_destroy(&r->lock);
	free(r);
	return 0;
}

/* A request the gate holds on the worker, so that everything after it queues. */
static struct job *
occupy(struct rig *r, char name)
{
	struct job *g = submit(r, TPMQ_ADMIN, name, true, 0);

	WAIT_FOR(r, r->entered == 1);
	return g;
}

static void
runs_by_priority_then_in_order(void **state)
{
	struct rig *r = *state;
	static const struct {
		enum tpmq_prio prio;
		char name;
	} order[] = {
	        {TPMQ_BACKGROUND, 'x'}, {TPMQ_HANDSHAKE, 'h'}, {TPMQ_ADMIN, 'a'},
	        {TPMQ_BACKGROUND, 'y'}, {TPMQ_HANDSHAKE, 'i'}, {TPMQ_ADMIN, 'b'},
	};
	struct job *g = occupy(r, 'g'), *j[6];
	struct tpmq_stats st;

	for (size_t i = 0; i < 6; i++)
		j[i] = submit(r, order[i].prio, order[i].name, false, 0);
	tpmq_get_stats(r->q, &st);
	assert_true(st.running);
	assert_int_equal(st.queued[TPMQ_ADMIN], 2);
	assert_int_equal(st.queued[TPMQ_HANDSHAKE], 2);
	assert_int_equal(st.queued[TPMQ_BACKGROUND], 2);
	for (size_t i = 0; i < 6; i++)
		assert_false(tpmq_req_done(j[i]->req));

	open_gate(r);
	for (size_t i = 0; i < 6; i++) {
		wait_done(j[i]);
		assert_int_equal(tpmq_req_result(j[i]->req), 0);
	}
	/* ADMIN before HANDSHAKE before BACKGROUND; first come first served within each. */
	assert_string_equal(r->order, "gabhixy");
	STATS_UNTIL(r->q, st, !st.running);
	assert_int_equal(
	        st.queued[TPMQ_ADMIN] + st.queued[TPMQ_HANDSHAKE] + st.queued[TPMQ_BACKGROUND], 0);
	assert_int_equal(st.completed[TPMQ_ADMIN], 3);
	assert_int_equal(st.completed[TPMQ_HANDSHAKE], 2);
	assert_int_equal(st.completed[TPMQ_BACKGROUND], 2);
	assert_int_equal(st.dropped, 0);

	tpmq_req_release(g->req);
	for (size_t i = 0; i < 6; i++)
		tpmq_req_release(j[i]->req);
	/* The worker may still hold the last one for a moment after its eventfd fired. */
	WAIT_FOR(r, r->destroyed == 7);
}

struct caller {
	struct rig *rig;
	struct job job;
	int result;
	bool returned;
};

static void *
call_thread(void *arg)
{
	struct caller *c = arg;
	int r = tpmq_call(c->rig->q, TPMQ_HANDSHAKE, job_run, &c->job);

	pthread_mutex_lock(&c->rig->lock);
	c->result = r;
	c->returned = true;
	pthread_cond_broadcast(&c->rig->cond);
	pthread_mutex_unlock(&c->rig->lock);
	return NULL;
}

/* A request that itself needs the worker: runs inline rather than deadlocking. */
static int
nested_run(void *data)
{
	struct job *j = data;

	return tpmq_call(j->rig->q, TPMQ_BACKGROUND, job_run, j) + 1;
}

static void
sync_call_waits_for_its_turn(void **state)
{
	struct rig *r = *state;
	struct job *g = occupy(r, 'g');
	struct caller c = {.rig = r, .job = {.rig = r, .name = 's', .result = 42}};
	struct job direct = {.rig = r, .name = 'd', .result = -EIO};
	struct tpmq_stats st;
	pthread_t t;

	assert_int_equal(pthread_create(&t, NULL, call_thread, &c), 0);
	STATS_UNTIL(r->q, st, st.queued[TPMQ_HANDSHAKE] == 1);
	/* Queued behind the held request: the caller is still waiting. */
	pthread_mutex_lock(&r->lock);
	assert_false(c.returned);
	pthread_mutex_unlock(&r->lock);
	open_gate(r);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_true(c.returned);
	assert_int_equal(c.result, 42);

	/* From this thread: the run's own result, whatever it is. */
	assert_int_equal(tpmq_call(r->q, TPMQ_ADMIN, job_run, &direct), -EIO);
	direct.name = 'n';
	direct.result = 6;
	assert_int_equal(tpmq_call(r->q, TPMQ_ADMIN, nested_run, &direct), 7);
	assert_string_equal(r->order, "gsdn");
	tpmq_req_release(g->req);
	assert_int_equal(r->destroyed, 1);
}

static void
async_completion_fires_the_eventfd(void **state)
{
	struct rig *r = *state;
	struct job *j = submit(r, TPMQ_HANDSHAKE, 'j', true, -EBADMSG);
	uint64_t v = 0;

	WAIT_FOR(r, r->entered == 1);
	/* Running, not done: nothing to see on the fd. */
	assert_false(tpmq_req_done(j->req));
	assert_false(fd_readable(tpmq_req_fd(j->req)));
	open_gate(r);
	wait_done(j);
	assert_int_equal(tpmq_req_result(j->req), -EBADMSG);
	assert_int_equal(read(tpmq_req_fd(j->req), &v, sizeof(v)), (ssize_t)sizeof(v));
	assert_int_equal(v, 1);
	assert_false(fd_readable(tpmq_req_fd(j->req)));
	assert_int_equal(r->destroyed, 0);
	tpmq_req_release(j->req);
	WAIT_FOR(r, r->destroyed == 1);
}

static void
cancel_while_queued_never_runs(void **state)
{
	struct rig *r = *state;
	struct job *g = occupy(r, 'g'), *x = submit(r, TPMQ_HANDSHAKE, 'x', false, 0), *s;
	int fd = tpmq_req_fd(x->req);
	struct tpmq_stats st;

	tpmq_get_stats(r->q, &st);
	assert_int_equal(st.queued[TPMQ_HANDSHAKE], 1);
	/* Nobody else holds it: its data goes at once, and its fd with it. */
	tpmq_req_release(x->req);
	assert_int_equal(r->destroyed, 1);
	assert_true(fd_closed(fd));
	tpmq_get_stats(r->q, &st);
	assert_int_equal(st.queued[TPMQ_HANDSHAKE], 0);
	assert_int_equal(st.dropped, 1);

	/* A later request of the same priority runs; the cancelled one never did. */
	s = submit(r, TPMQ_HANDSHAKE, 's', false, 0);
	open_gate(r);
	wait_done(s);
	assert_string_equal(r->order, "gs");
	tpmq_req_release(s->req);
	tpmq_req_release(g->req);
	WAIT_FOR(r, r->destroyed == 3);
}

static void
cancel_while_running_frees_after_the_run(void **state)
{
	struct rig *r = *state;
	struct job *j = submit(r, TPMQ_HANDSHAKE, 'r', true, 0);
	int fd = tpmq_req_fd(j->req);
	struct tpmq_stats st;

	WAIT_FOR(r, r->entered == 1);
	tpmq_req_release(j->req);
	/* The worker is inside run(): its data and fd must outlive the caller's interest. */
	assert_int_equal(r->destroyed, 0);
	assert_false(fd_closed(fd));
	open_gate(r);
	WAIT_FOR(r, r->destroyed == 1);
	assert_string_equal(r->order, "r");
	assert_true(fd_closed(fd));
	STATS_UNTIL(r->q, st, !st.running);
	assert_int_equal(st.completed[TPMQ_HANDSHAKE], 1);
	assert_int_equal(st.dropped, 0);
}

static void *
free_thread(void *arg)
{
	tpmq_free(arg);
	return NULL;
}

static void
shutdown_cancels_what_is_queued(void **state)
{
	struct rig *r = *state;
	struct job *g = occupy(r, 'g');
	struct job *q1 = submit(r, TPMQ_BACKGROUND, '1', false, 0);
	struct job *q2 = submit(r, TPMQ_HANDSHAKE, '2', false, 0);
	struct caller c = {.rig = r, .job = {.rig = r, .name = 's'}};
	struct tpmq_stats st;
	pthread_t t, f;

	assert_int_equal(pthread_create(&t, NULL, call_thread, &c), 0);
	STATS_UNTIL(r->q, st, st.queued[TPMQ_HANDSHAKE] == 2);
	assert_int_equal(pthread_create(&f, NULL, free_thread, r->q), 0);

	/* With the running request still held, everything queued completes, cancelled. */
	wait_done(q1);
	wait_done(q2);
	assert_int_equal(tpmq_req_result(q1->req), -ECANCELED);
	assert_int_equal(tpmq_req_result(q2->req), -ECANCELED);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(c.result, -ECANCELED);
	assert_false(tpmq_req_done(g->req));

	/* The running one finishes before the worker stops. */
	open_gate(r);
	assert_int_equal(pthread_join(f, NULL), 0);
	r->q = NULL;
	assert_true(tpmq_req_done(g->req));
	assert_int_equal(tpmq_req_result(g->req), 0);
	assert_string_equal(r->order, "g");

	/* The caller's references outlive the queue. */
	assert_int_equal(r->destroyed, 0);
	tpmq_req_release(q1->req);
	tpmq_req_release(q2->req);
	tpmq_req_release(g->req);
	assert_int_equal(r->destroyed, 3);
}

static void
stats_measure_busy_time_and_pace(void **state)
{
	struct rig *r = *state;
	struct job *j[5], *g, *slow;
	struct tpmq_stats st, st2;
	uint64_t before;

	tpmq_get_stats(r->q, &st);
	assert_false(st.running);
	assert_int_equal(st.busy_ns, 0);
	assert_int_equal(st.ewma_ns[TPMQ_HANDSHAKE], 0);

	/* Five signatures of 2 ms each. */
	for (int i = 0; i < 5; i++)
		j[i] = submit_sleeping(r, TPMQ_HANDSHAKE, (char)('0' + i), false, 0, 2000);
	for (int i = 0; i < 5; i++)
		wait_done(j[i]);
	STATS_UNTIL(r->q, st, !st.running);
	assert_int_equal(st.completed[TPMQ_HANDSHAKE], 5);
	assert_true(st.busy_ns >= 10000000);
	assert_true(st.ewma_ns[TPMQ_HANDSHAKE] >= 2000000);
	assert_true(st.ewma_ns[TPMQ_HANDSHAKE] < 1000000000);
	assert_int_equal(st.ewma_ns[TPMQ_ADMIN], 0);

	/* One slower signature moves the average an eighth of the way towards it. */
	before = st.ewma_ns[TPMQ_HANDSHAKE];
	slow = submit_sleeping(r, TPMQ_HANDSHAKE, 's', false, 0, 20000);
	wait_done(slow);
	STATS_UNTIL(r->q, st, !st.running);
	assert_true(st.ewma_ns[TPMQ_HANDSHAKE] > before);
	assert_true(st.ewma_ns[TPMQ_HANDSHAKE] < 20000000);

	/* busy_ns grows while a request runs, not only when it ends. */
	g = submit(r, TPMQ_ADMIN, 'g', true, 0);
	WAIT_FOR(r, r->entered == 7);
	tpmq_get_stats(r->q, &st);
	assert_true(st.running);
	usleep(2000);
	tpmq_get_stats(r->q, &st2);
	assert_true(st2.busy_ns >= st.busy_ns + 2000000);
	open_gate(r);
	wait_done(g);
	STATS_UNTIL(r->q, st, !st.running);
	assert_true(st.busy_ns >= st2.busy_ns);
	assert_int_equal(st.completed[TPMQ_ADMIN], 1);

	for (int i = 0; i < 5; i++)
		tpmq_req_release(j[i]->req);
	tpmq_req_release(slow->req);
	tpmq_req_release(g->req);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(runs_by_priority_then_in_order, setup, teardown),
	        cmocka_unit_test_setup_teardown(sync_call_waits_for_its_turn, setup, teardown),
	        cmocka_unit_test_setup_teardown(async_completion_fires_the_eventfd, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(cancel_while_queued_never_runs, setup, teardown),
	        cmocka_unit_test_setup_teardown(cancel_while_running_frees_after_the_run, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(shutdown_cancels_what_is_queued, setup, teardown),
	        cmocka_unit_test_setup_teardown(stats_measure_busy_time_and_pace, setup, teardown),
	};

	log_init("test-tpmq", true, LOG_LEVEL_INFO);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
