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

static struct cmdq *
new_queue(size_t limit, unsigned expiry)
{
	struct cmdq *q = cmdq_new(limit, expiry);

	assert_non_null(q);
	fake_now = 1000;
	cmdq_set_clock(q, clock_fake);
	return q;
}

/* Pops one command of device and checks its payload; NULL want: none is waiting. */
static void
expect_pop(struct cmdq *q, const char *device, const char *want)
{
	struct sensor_command *cmd = cmdq_pop(q, device);

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
	struct cmdq *q = new_queue(4, 60);

	(void)state;
	assert_int_equal(cmdq_push(q, "dev-1", "a", 1, 0), 0);
	assert_int_equal(cmdq_push(q, "dev-2", "x", 1, -1), 0);
	assert_int_equal(cmdq_push(q, "dev-1", "b", 1, 50), 0);
	assert_int_equal(cmdq_depth(q, "dev-1"), 2);
	expect_pop(q, "dev-1", "a");
	expect_pop(q, "dev-2", "x");
	expect_pop(q, "dev-1", "b");
	expect_pop(q, "dev-1", NULL);
	expect_pop(q, "dev-3", NULL);
	cmdq_free(q);
}

static void
drops_the_oldest_when_full(void **state)
{
	struct cmdq *q = new_queue(2, 60);
	struct cmdq_stats st;

	(void)state;
	assert_int_equal(cmdq_push(q, "dev-1", "a", 1, 0), 0);
	assert_int_equal(cmdq_push(q, "dev-1", "b", 1, 0), 0);
	assert_int_equal(cmdq_push(q, "dev-1", "c", 1, 0), 1);
	expect_pop(q, "dev-1", "b");
	expect_pop(q, "dev-1", "c");
	cmdq_stats(q, &st);
	assert_int_equal(st.overflowed, 1);
	assert_int_equal(st.delivered, 2);
	cmdq_free(q);
}

static void
expires_commands(void **state)
{
	struct cmdq *q = new_queue(4, 60);
	struct cmdq_stats st;

	(void)state;
	assert_int_equal(cmdq_push(q, "dev-1", "old", 3, 0), 0);
	fake_now += 30;
	assert_int_equal(cmdq_push(q, "dev-1", "new", 3, 0), 0);
	fake_now += 31;
	expect_pop(q, "dev-1", "new");
	fake_now += 60;
	assert_int_equal(cmdq_push(q, "dev-1", "z", 1, 0), 0);
	fake_now += 60;
	expect_pop(q, "dev-1", NULL);
	cmdq_stats(q, &st);
	assert_int_equal(st.expired, 2);
	cmdq_free(q);
}

static void
requeues_in_order(void **state)
{
	struct cmdq *q = new_queue(3, 60);
	struct sensor_command *a, *b;

	(void)state;
	cmdq_push(q, "dev-1", "a", 1, 0);
	cmdq_push(q, "dev-1", "b", 1, 0);
	cmdq_push(q, "dev-1", "c", 1, 0);
	a = cmdq_pop(q, "dev-1");
	b = cmdq_pop(q, "dev-1");
	/* Failures may come back in any order: the queue keeps the original order. */
	cmdq_requeue(q, "dev-1", b);
	cmdq_requeue(q, "dev-1", a);
	expect_pop(q, "dev-1", "a");
	expect_pop(q, "dev-1", "b");
	expect_pop(q, "dev-1", "c");
	/* An expired command is not given back. */
	cmdq_push(q, "dev-1", "d", 1, 0);
	a = cmdq_pop(q, "dev-1");
	fake_now += 61;
	cmdq_requeue(q, "dev-1", a);
	expect_pop(q, "dev-1", NULL);
	cmdq_free(q);
}

static void
requeue_into_a_full_queue_drops_the_oldest(void **state)
{
	struct cmdq *q = new_queue(2, 60);
	struct sensor_command *a;

	(void)state;
	cmdq_push(q, "dev-1", "a", 1, 0);
	a = cmdq_pop(q, "dev-1");
	cmdq_push(q, "dev-1", "b", 1, 0);
	cmdq_push(q, "dev-1", "c", 1, 0);
	cmdq_requeue(q, "dev-1", a);
	expect_pop(q, "dev-1", "b");
	expect_pop(q, "dev-1", "c");
	expect_pop(q, "dev-1", NULL);
	cmdq_free(q);
}

static void
forgets_a_device(void **state)
{
	struct cmdq *q = new_queue(2, 60);

	(void)state;
	cmdq_push(q, "dev-1", "a", 1, 0);
	cmdq_forget(q, "dev-1");
	assert_int_equal(cmdq_depth(q, "dev-1"), 0);
	expect_pop(q, "dev-1", NULL);
	cmdq_free(q);
	cmdq_free(NULL);
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
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
