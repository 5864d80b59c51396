/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "cmdq.h"

static time_t fake_now = 1000;

static time_t
clock_fake(void)
{
	return fake_now;
}

/* A cmdq with the fake clock, and the queues of dev-1, dev-2 and dev-3 on it. */
static struct cmdq *
new_queue(size_t limit, unsigned expiry, struct cmdq_queue dev[3])
{
	static const char *const names[3] = {"dev-1", "dev-2", "dev-3"};
	struct cmdq *q = cmdq_new(limit, expiry);

	assert_non_null(q);
	fake_now = 1000;
	cmdq_set_clock(q, clock_fake);
	for (int i = 0; i < 3; i++)
		cmdq_queue_init(&dev[i], q, names[i]);
	return q;
}

/* Pops one command of a device and checks its payload; NULL want: none is waiting. */
static void
expect_pop(struct cmdq_queue *dq, const char *want)
{
	struct sensor_command *cmd = cmdq_pop(dq);

	if (!want) {
		assert_null(cmd);
		return;
	}
	assert_non_null(cmd);
	assert_int_equal(cmd->len, strlen(want));
	assert_memory_equal(cmd->payload, want, cmd->len);
	free(cmd);
}

static void
delivers_in_order_per_device(void **state)
{
	struct cmdq_queue dev[3];
	struct cmdq *q = new_queue(4, 60, dev);

	(void)state;
	assert_int_equal(cmdq_push(&dev[0], "a", 1, 0), 0);
	assert_int_equal(cmdq_push(&dev[1], "x", 1, -1), 0);
	assert_int_equal(cmdq_push(&dev[0], "b", 1, 50), 0);
	assert_int_equal(cmdq_depth(&dev[0]), 2);
	expect_pop(&dev[0], "a");
	expect_pop(&dev[1], "x");
	expect_pop(&dev[0], "b");
	expect_pop(&dev[0], NULL);
	expect_pop(&dev[2], NULL);
	cmdq_free(q);
}

static void
drops_the_oldest_when_full(void **state)
{
	struct cmdq_queue dev[3];
	struct cmdq *q = new_queue(2, 60, dev);
	struct cmdq_stats st;

	(void)state;
	assert_int_equal(cmdq_push(&dev[0], "a", 1, 0), 0);
	assert_int_equal(cmdq_push(&dev[0], "b", 1, 0), 0);
	assert_int_equal(cmdq_push(&dev[0], "c", 1, 0), 1);
	expect_pop(&dev[0], "b");
	expect_pop(&dev[0], "c");
	cmdq_stats(q, &st);
	assert_int_equal(st.overflowed, 1);
	assert_int_equal(st.delivered, 2);
	cmdq_free(q);
}

static void
expires_commands(void **state)
{
	struct cmdq_queue dev[3];
	struct cmdq *q = new_queue(4, 60, dev);
	struct cmdq_stats st;

	(void)state;
	assert_int_equal(cmdq_push(&dev[0], "old", 3, 0), 0);
	fake_now += 30;
	assert_int_equal(cmdq_push(&dev[0], "new", 3, 0), 0);
	fake_now += 31;
	expect_pop(&dev[0], "new");
	fake_now += 60;
	assert_int_equal(cmdq_push(&dev[0], "z", 1, 0), 0);
	fake_now += 60;
	expect_pop(&dev[0], NULL);
	cmdq_stats(q, &st);
	assert_int_equal(st.expired, 2);
	cmdq_free(q);
}

static void
requeues_in_order(void **state)
{
	struct cmdq_queue dev[3];
	struct cmdq *q = new_queue(3, 60, dev);
	struct sensor_command *a, *b;

	(void)state;
	cmdq_push(&dev[0], "a", 1, 0);
	cmdq_push(&dev[0], "b", 1, 0);
	cmdq_push(&dev[0], "c", 1, 0);
	a = cmdq_pop(&dev[0]);
	b = cmdq_pop(&dev[0]);
	/* Failures may come back in any order: the queue keeps the original order. */
	cmdq_requeue(&dev[0], b);
	cmdq_requeue(&dev[0], a);
	expect_pop(&dev[0], "a");
	expect_pop(&dev[0], "b");
	expect_pop(&dev[0], "c");
	/* An expired command is not given back. */
	cmdq_push(&dev[0], "d", 1, 0);
	a = cmdq_pop(&dev[0]);
	fake_now += 61;
	cmdq_requeue(&dev[0], a);
	expect_pop(&dev[0], NULL);
	cmdq_free(q);
}

static void
requeue_into_a_full_queue_drops_the_oldest(void **state)
{
	struct cmdq_queue dev[3];
	struct cmdq *q = new_queue(2, 60, dev);
	struct sensor_command *a;

	(void)state;
	cmdq_push(&dev[0], "a", 1, 0);
	a = cmdq_pop(&dev[0]);
	cmdq_push(&dev[0], "b", 1, 0);
	cmdq_push(&dev[0], "c", 1, 0);
	cmdq_requeue(&dev[0], a);
	expect_pop(&dev[0], "b");
	expect_pop(&dev[0], "c");
	expect_pop(&dev[0], NULL);
	cmdq_free(q);
}

static void
forgets_a_device(void **state)
{
	struct cmdq_queue dev[3];
	struct cmdq *q = new_queue(2, 60, dev);

	(void)state;
	cmdq_push(&dev[0], "a", 1, 0);
	cmdq_queue_clear(&dev[0]);
	assert_int_equal(cmdq_depth(&dev[0]), 0);
	expect_pop(&dev[0], NULL);
	cmdq_free(q);
	cmdq_free(NULL);
}

/* A reload's lower limit reaches every queue at once; a cleared one is out of the way. */
static void
a_lower_limit_trims_every_queue(void **state)
{
	struct cmdq_queue dev[3];
	struct cmdq *q = new_queue(4, 60, dev);
	struct cmdq_stats st;

	(void)state;
	for (const char *c = "abcd"; *c; c++) {
		cmdq_push(&dev[0], c, 1, 0);
		cmdq_push(&dev[1], c, 1, 0);
		cmdq_push(&dev[2], c, 1, 0);
	}
	cmdq_queue_clear(&dev[1]);
	cmdq_set_limits(q, 2, 60);
	assert_int_equal(cmdq_depth(&dev[0]), 2);
	assert_int_equal(cmdq_depth(&dev[1]), 0);
	assert_int_equal(cmdq_depth(&dev[2]), 2);
	expect_pop(&dev[2], "c");
	expect_pop(&dev[0], "c");
	cmdq_stats(q, &st);
	assert_int_equal(st.overflowed, 4);
	/* And grows again: the queues take four once more. */
	cmdq_set_limits(q, 4, 60);
	for (const char *c = "wxyz"; *c; c++)
		assert_int_equal(cmdq_push(&dev[1], c, 1, 0), 0);
	assert_int_equal(cmdq_depth(&dev[1]), 4);
	cmdq_free(q);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(delivers_in_order_per_device),
	        cmocka_unit_test(drops_the_oldest_when_full),
	        cmocka_unit_test(expires_commands),
	        cmocka_unit_test(requeues_in_order),
	        cmocka_unit_test(requeue_into_a_full_queue_drops_the_oldest),
	        cmocka_unit_test(forgets_a_device),
	        cmocka_unit_test(a_lower_limit_trims_every_queue),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
