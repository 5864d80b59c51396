/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "device.h"

static void
ids_are_plain(void **state)
{
	(void)state;
	assert_true(device_id_valid("dev-a.1_x"));
	assert_true(device_id_valid(
	        "0123456789012345678901234567890123456789012345678901234567890123"));
	assert_false(device_id_valid(""));
	assert_false(device_id_valid("a/b"));
	assert_false(device_id_valid("a+"));
	assert_false(device_id_valid("dev a"));
	assert_false(device_id_valid(".."));
	assert_false(device_id_valid(".hidden"));
	assert_false(device_id_valid("-x"));
	assert_false(device_id_valid(
	        "0123456789012345678901234567890123456789012345678901234567890123x"));
}

static void
devices_are_found_by_id_and_listed_in_order(void **state)
{
	const char *ids[] = {"sensor-7", "a", "sensor-10", "Z", "sensor-1"};
	const char *sorted[] = {"Z", "a", "sensor-1", "sensor-10", "sensor-7"};
	struct device_registry *reg = device_registry_new();
	struct device *dev, *again;

	(void)state;
	for (size_t i = 0; i < 5; i++) {
		assert_int_equal(device_add(reg, ids[i], &dev), 0);
		assert_string_equal(dev->id, ids[i]);
		assert_int_equal(dev->state, DEVICE_ACTIVE);
		assert_true(dev->enabled && device_usable(dev));
		assert_int_equal(dev->upstream, DEVICE_UPSTREAM_NONE);
	}
	assert_int_equal(device_count(reg), 5);
	for (size_t i = 0; i < 5; i++)
		assert_string_equal(device_at(reg, i)->id, sorted[i]);
	assert_null(device_at(reg, 5));
	dev = device_find(reg, "sensor-10");
	assert_non_null(dev);
	assert_string_equal(dev->id, "sensor-10");
	assert_null(device_find(reg, "sensor-"));
	assert_null(device_find(reg, "sensor-100"));

	assert_int_equal(device_add(reg, "sensor-10", &again), -EEXIST);
	assert_int_equal(device_add(reg, "../x", &again), -EINVAL);
	assert_int_equal(device_count(reg), 5);

	dev->state = DEVICE_SUSPENDED;
	assert_false(device_usable(dev));
	dev->state = DEVICE_ACTIVE;
	dev->enabled = false;
	assert_false(device_usable(dev));
	device_registry_free(reg);
}

static void
a_held_device_outlives_its_removal(void **state)
{
	struct device_registry *reg = device_registry_new();
	struct device *dev, *held, *fresh;

	(void)state;
	assert_int_equal(device_add(reg, "dev-1", &dev), 0);
	/* A sensor's session holds it, say. */
	held = device_ref(dev);
	device_remove(reg, dev);
	assert_null(device_find(reg, "dev-1"));
	assert_int_equal(device_count(reg), 0);
	assert_string_equal(held->id, "dev-1");
	assert_int_equal(held->state, DEVICE_GONE);
	assert_false(device_usable(held));

	/* The id is free at once, for a new device that is not the old one. */
	assert_int_equal(device_add(reg, "dev-1", &fresh), 0);
	assert_ptr_not_equal(fresh, held);
	assert_ptr_equal(device_find(reg, "dev-1"), fresh);
	/* Removing the old one again changes nothing. */
	device_remove(reg, held);
	assert_ptr_equal(device_find(reg, "dev-1"), fresh);
	device_unref(held);
	/* The registry lets go of what it holds; what others hold stays theirs. */
	held = device_ref(fresh);
	device_registry_free(reg);
	assert_int_equal(held->state, DEVICE_GONE);
	device_unref(held);
	device_unref(NULL);
}

struct seen {
	int calls;
	const struct device *dev;
	enum device_upstream was, now;
};

static void
on_upstream(struct device *dev, enum device_upstream was, void *data)
{
	struct seen *s = data;

	s->calls++;
	s->dev = dev;
	s->was = was;
	s->now = dev->upstream;
}

static void
the_watcher_hears_each_change_of_upstream(void **state)
{
	struct device_registry *reg = device_registry_new();
	struct seen seen = {0};
	struct device *dev;

	(void)state;
	device_registry_on_upstream(reg, on_upstream, &seen);
	assert_int_equal(device_add(reg, "dev-1", &dev), 0);
	device_set_upstream(dev, DEVICE_UPSTREAM_WAITING);
	assert_int_equal(seen.calls, 1);
	assert_ptr_equal(seen.dev, dev);
	assert_int_equal(seen.was, DEVICE_UPSTREAM_NONE);
	assert_int_equal(seen.now, DEVICE_UPSTREAM_WAITING);
	device_set_upstream(dev, DEVICE_UPSTREAM_WAITING);
	assert_int_equal(seen.calls, 1);
	device_set_upstream(dev, DEVICE_UPSTREAM_REFUSED);
	assert_int_equal(seen.calls, 2);
	assert_int_equal(seen.was, DEVICE_UPSTREAM_WAITING);

	/* Once removed, nobody is told: the device is nobody's business but its holders'. */
	device_ref(dev);
	device_remove(reg, dev);
	device_set_upstream(dev, DEVICE_UPSTREAM_NONE);
	assert_int_equal(seen.calls, 2);
	device_unref(dev);
	device_registry_free(reg);
}

/* A module's removal watcher: it clears its slot, and says in which order it ran. */
struct remover {
	char name;
	char *order;
	enum device_state state; /* the device's, as the watcher saw it */
};

static void
on_remove(struct device *dev, void *data)
{
	struct remover *r = data;

	strncat(r->order, &r->name, 1);
	r->state = dev->state;
	dev->flow = NULL;
}

static void
removal_watchers_let_go_in_their_order(void **state)
{
	struct device_registry *reg = device_registry_new();
	char order[8] = "";
	struct remover a = {.name = 'a', .order = order}, b = {.name = 'b', .order = order};
	struct device *dev;

	(void)state;
	device_registry_on_remove(reg, on_remove, &a);
	device_registry_on_remove(reg, on_remove, &b);
	assert_int_equal(device_add(reg, "dev-1", &dev), 0);
	dev->flow = (struct device_flow *)dev;
	device_remove(reg, dev);
	assert_string_equal(order, "ab");
	assert_int_equal(a.state, DEVICE_GONE);
	/* Taken back, a watcher hears no more; the slot it would have cleared is clear already. */
	device_registry_off_remove(reg, on_remove, &a);
	assert_int_equal(device_add(reg, "dev-1", &dev), 0);
	device_remove(reg, dev);
	assert_string_equal(order, "abb");
	device_registry_free(reg);
}

static void
the_last_unref_with_a_slot_still_set_aborts(void **state)
{
	struct device_registry *reg = device_registry_new();
	struct device *dev;
	int status;
	pid_t pid;

	(void)state;
	assert_int_equal(device_add(reg, "dev-1", &dev), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* A module that forgot to let go. */
		dev->spool = (struct device_spool *)dev;
		close(STDERR_FILENO);
		device_remove(reg, dev);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGABRT);
	device_registry_free(reg);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(ids_are_plain),
	        cmocka_unit_test(devices_are_found_by_id_and_listed_in_order),
	        cmocka_unit_test(a_held_device_outlives_its_removal),
	        cmocka_unit_test(the_watcher_hears_each_change_of_upstream),
	        cmocka_unit_test(removal_watchers_let_go_in_their_order),
	        cmocka_unit_test(the_last_unref_with_a_slot_still_set_aborts),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
