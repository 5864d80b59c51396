/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "loop.h"

struct order {
	struct gw_loop *loop;
	int fired[8];
	int n;
	int stop_after;
};

struct tagged {
	struct order *o;
	int tag;
	struct gw_timer *timer;
};

static void
record_tag(struct gw_timer *t, void *data)
{
	struct tagged *tg = data;

	(void)t;
	tg->o->fired[tg->o->n++] = tg->tag;
	if (tg->o->n == tg->o->stop_after)
		gw_loop_quit(tg->o->loop, 42);
}

static void
timers_fire_in_due_order(void **state)
{
	struct order o = {.stop_after = 3};
	struct tagged tg[4];
	const uint64_t due[4] = {30, 10, 20, 15};

	(void)state;
	assert_int_equal(gw_loop_new(&o.loop), 0);
	for (int i = 0; i < 4; i++) {
		tg[i] = (struct tagged){.o = &o, .tag = (int)due[i]};
		tg[i].timer = gw_timer_new(o.loop, record_tag, &tg[i]);
		assert_non_null(tg[i].timer);
		gw_timer_arm(tg[i].timer, due[i]);
	}
	/* Disarmed timers never fire; re-arming moves a timer. */
	gw_timer_disarm(tg[3].timer);
	assert_int_equal(gw_timer_remaining(tg[3].timer), -1);
	gw_timer_arm(tg[0].timer, 5);
	assert_int_equal(gw_loop_run(o.loop), 42);
	assert_int_equal(o.n, 3);
	assert_int_equal(o.fired[0], 30); /* re-armed to 5 ms */
	assert_int_equal(o.fired[1], 10);
	assert_int_equal(o.fired[2], 20);
	for (int i = 0; i < 4; i++)
		gw_timer_free(tg[i].timer);
	gw_loop_free(o.loop);
}

struct pipe_state {
	struct gw_loop *loop;
	int fds[2];
	int reads;
};

static void
pipe_readable(int fd, uint32_t events, void *data)
{
	struct pipe_state *ps = data;
	char c;

	assert_true(events & EPOLLIN);
	assert_int_equal(read(fd, &c, 1), 1);
	ps->reads++;
	/* Removing the watch from inside its own callback must be safe. */
	assert_int_equal(gw_loop_del_fd(ps->loop, fd), 0);
	gw_loop_quit(ps->loop, 0);
}

static void
fd_watch_calls_back_and_can_remove_itself(void **state)
{
	struct pipe_state ps = {0};

	(void)state;
	assert_int_equal(gw_loop_new(&ps.loop), 0);
	assert_int_equal(pipe(ps.fds), 0);
	assert_int_equal(gw_loop_add_fd(ps.loop, ps.fds[0], EPOLLIN, pipe_readable, &ps), 0);
	assert_int_equal(write(ps.fds[1], "x", 1), 1);
	assert_int_equal(gw_loop_run(ps.loop), 0);
	assert_int_equal(ps.reads, 1);
	assert_int_equal(gw_loop_del_fd(ps.loop, ps.fds[0]), -ENOENT);
	close(ps.fds[0]);
	close(ps.fds[1]);
	gw_loop_free(ps.loop);
}

static void
on_usr1(int signo, void *data)
{
	struct gw_loop *loop = data;

	assert_int_equal(signo, SIGUSR1);
	gw_loop_quit(loop, 7);
}

static void
signals_arrive_as_loop_events(void **state)
{
	struct gw_loop *loop;

	(void)state;
	assert_int_equal(gw_loop_new(&loop), 0);
	assert_int_equal(gw_loop_add_signal(loop, SIGUSR1, on_usr1, loop), 0);
	/* Blocked by gw_loop_add_signal: queued until the loop reads its signalfd. */
	assert_int_equal(raise(SIGUSR1), 0);
	assert_int_equal(gw_loop_run(loop), 7);
	gw_loop_free(loop);
}

struct later {
	struct gw_loop *loop;
	struct gw_deferred *self, *victim; /* victim: freed by this call */
	int runs, again;                   /* again: queue itself again this many times */
};

static void
later_run(void *data)
{
	struct later *l = data;

	l->runs++;
	if (l->victim) {
		gw_deferred_free(l->victim);
		l->victim = NULL;
	}
	if (l->again > 0) {
		l->again--;
		gw_deferred_queue(l->self);
	}
}

/* Queued twice in a turn: made once, before the loop waits, and not again after. */
static void
deferred_call_runs_once_per_queueing(void **state)
{
	struct later l = {0};

	(void)state;
	assert_int_equal(gw_loop_new(&l.loop), 0);
	l.self = gw_deferred_new(l.loop, later_run, &l);
	gw_deferred_queue(l.self);
	gw_deferred_queue(l.self);
	assert_int_equal(l.runs, 0);
	assert_int_equal(gw_loop_dispatch(l.loop, 0), 0);
	assert_int_equal(l.runs, 1);
	assert_int_equal(gw_loop_dispatch(l.loop, 0), 0);
	assert_int_equal(l.runs, 1);
	gw_deferred_free(l.self);
	gw_loop_free(l.loop);
}

/*
 * One that queues itself again runs on the next turn, and that turn does not wait: with
 * timeout -1 and nothing else to wake it, a wait would never return (meson's timeout).
 */
static void
deferred_call_queued_again_runs_next_turn_without_waiting(void **state)
{
	struct later l = {.again = 1};

	(void)state;
	assert_int_equal(gw_loop_new(&l.loop), 0);
	l.self = gw_deferred_new(l.loop, later_run, &l);
	gw_deferred_queue(l.self);
	assert_int_equal(gw_loop_dispatch(l.loop, -1), 0);
	assert_int_equal(l.runs, 1);
	assert_int_equal(gw_loop_dispatch(l.loop, 0), 0);
	assert_int_equal(l.runs, 2);
	gw_deferred_free(l.self);
	gw_loop_free(l.loop);
}

/* Freed by an earlier call of the same pass, or queued when the loop goes: never made. */
static void
deferred_call_freed_while_queued_is_not_made(void **state)
{
	struct later first = {0}, second = {0}, left = {0};

	(void)state;
	assert_int_equal(gw_loop_new(&first.loop), 0);
	first.self = gw_deferred_new(first.loop, later_run, &first);
	second.self = gw_deferred_new(first.loop, later_run, &second);
	left.self = gw_deferred_new(first.loop, later_run, &left);
	first.victim = second.self;
	gw_deferred_queue(first.self);
	gw_deferred_queue(second.self);
	assert_int_equal(gw_loop_dispatch(first.loop, 0), 0);
	assert_int_equal(first.runs, 1);
	assert_int_equal(second.runs, 0);
	gw_deferred_queue(left.self);
	gw_loop_free(first.loop);
	assert_int_equal(left.runs, 0);
	gw_deferred_free(left.self); /* after its loop: must not touch the loop's freed rings */
	gw_deferred_free(first.self);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(timers_fire_in_due_order),
	        cmocka_unit_test(fd_watch_calls_back_and_can_remove_itself),
	        cmocka_unit_test(signals_arrive_as_loop_events),
	        cmocka_unit_test(deferred_call_runs_once_per_queueing),
	        cmocka_unit_test(deferred_call_queued_again_runs_next_turn_without_waiting),
	        cmocka_unit_test(deferred_call_freed_while_queued_is_not_made),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
