/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Enrolment's hold on the devices it works for: a removed device's job ends, its slot is
 * cleared, and the id is free for a new device with nothing of the old one's. The loop never
 * runs, so no request goes to the (fictitious) EST server of the config fixture.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf-fixture.h"
#include "device.h"
#include "enrol.h"
#include "keystore.h"
#include "loop.h"
#include "options.h"

struct fixture {
	char state[64];
	struct gwconf *conf;
	struct gw_loop *loop;
	struct keystore *ks;
	struct enrol *enrol;
};

/* What enrol_now()'s caller heard. */
struct outcome {
	int calls;
	int status;
	char message[640];
};

static void
heard(void *ctx, int status, const char *message)
{
	struct outcome *o = ctx;

	o->calls++;
	o->status = status;
	snprintf(o->message, sizeof(o->message), "%s", message);
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct keystore_config cfg = {.backend = "soft"};
	struct enrol_options eo;

	strcpy(f->state, "/tmp/gw-enrol-XXXXXX");
	assert_non_null(mkdtemp(f->state));
	cfg.state_dir = f->state;
	f->conf = load_ok("good-full.conf");
	options_enrol(&eo, f->conf);
	/* A device without a certificate then has its enrolment scheduled at once. */
	eo.auto_enroll = true;
	assert_int_equal(gw_loop_new(&f->loop), 0);
	assert_int_equal(keystore_open(&f->ks, &cfg), 0);
	assert_int_equal(enrol_new(&f->enrol, f->loop, &eo, f->ks, NULL, NULL), 0);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[128];

	/* The daemon's order: enrolment lets go of its devices before the keystore goes. */
	enrol_free(f->enrol);
	keystore_free(f->ks);
	gw_loop_free(f->loop);
	gwconf_free(f->conf);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->state);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

static struct device *
add(struct fixture *f, const char *id)
{
	uint8_t psk[KEYSTORE_PSK_MAX];
	size_t len;

	assert_int_equal(keystore_device_add(f->ks, id, NULL, NULL, 0, psk, &len), 0);
	enrol_device_changed(f->enrol, id);
	return device_find(keystore_devices(f->ks), id);
}

/* Removed with its enrolment scheduled: the slot is empty, and the last unref frees it. */
static void
test_removal_clears_slot(void **state)
{
	struct fixture *f = *state;
	struct device *dev = device_ref(add(f, "dev-a"));

	assert_non_null(dev->enrol);
	assert_int_equal(keystore_device_remove(f->ks, "dev-a"), 0);
	enrol_device_changed(f->enrol, "dev-a");
	assert_int_equal(dev->state, DEVICE_GONE);
	assert_null(dev->enrol);
	/* device_unref() asserts every slot is clear; the sanitizer build sees no leak. */
	device_unref(dev);
}

/* gwctl device enroll, waiting, hears of the removal; the id's new device starts afresh. */
static void
test_removal_answers_waiting(void **state)
{
	struct fixture *f = *state;
	struct outcome o = {0}, o2 = {0};
	char why[600];

	add(f, "dev-a");
	assert_int_equal(enrol_now(f->enrol, "dev-a", heard, &o, why, sizeof(why)), 0);
	assert_int_equal(o.calls, 0);
	assert_int_equal(keystore_device_remove(f->ks, "dev-a"), 0);
	enrol_device_changed(f->enrol, "dev-a");
	assert_int_equal(o.calls, 1);
	assert_int_equal(o.status, 1);
	assert_string_equal(o.message, "the device was removed meanwhile");
	assert_int_equal(enrol_now(f->enrol, "dev-a", heard, &o2, why, sizeof(why)), -ENOENT);
	assert_string_equal(why, "no device dev-a");

	/* Queued again under the same id: not "already under way" with the old one's job. */
	add(f, "dev-a");
	assert_null(enrol_status(f->enrol, "dev-a"));
	assert_int_equal(enrol_now(f->enrol, "dev-a", heard, &o2, why, sizeof(why)), 0);
	assert_int_equal(o.calls, 1);
}

/*
 * The store's removal ends the device's job at once (the registry's watcher), before anyone
 * reports it: a waiting gwctl hears why, and enrol_free() finds nothing of it left.
 */
static void
test_removal_ends_the_job_at_once(void **state)
{
	struct fixture *f = *state;
	struct outcome o = {0};
	struct device *dev;
	char why[600];

	add(f, "dev-a");
	dev = device_ref(add(f, "dev-b"));
	assert_int_equal(enrol_now(f->enrol, "dev-b", heard, &o, why, sizeof(why)), 0);
	assert_int_equal(keystore_device_remove(f->ks, "dev-a"), 0);
	assert_int_equal(o.calls, 0);
	assert_int_equal(keystore_device_remove(f->ks, "dev-b"), 0);
	assert_null(dev->enrol);
	assert_int_equal(o.calls, 1);
	assert_string_equal(o.message, "the device was removed meanwhile");
	device_unref(dev);
	enrol_free(f->enrol);
	f->enrol = NULL;
	assert_int_equal(o.calls, 1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_removal_clears_slot, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_removal_answers_waiting, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_removal_ends_the_job_at_once, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
