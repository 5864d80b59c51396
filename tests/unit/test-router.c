/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The router between fakes of both bridges: a fake upstream (upstream.h) that records each
 * publish and lets the test decide its outcome and the device's state, and a fake sensor side
 * (sensor.h) that records each answer. The spool, the loop and the config are the real ones.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmdq.h"
#include "conf.h"
#include "device.h"
#include "log.h"
#include "loop.h"
#include "router.h"
#include "spool.h"

#define DEV     "dev-1"
#define MAXPUBS 256

/* ---- the fake sensor side ---- */

struct sensor_request {
	int id;
	bool answered;
	enum sensor_status status;
	unsigned arg;
};

static void
fake_complete(struct sensor_request *req, enum sensor_status status, unsigned arg)
{
	assert_false(req->answered); /* exactly once */
	req->answered = true;
	req->status = status;
	req->arg = arg;
}

static int commands_ready;

static void
fake_commands_ready(void *side, struct device *dev)
{
	(void)side;
	assert_string_equal(dev->id, DEV);
	commands_ready++;
}

static const struct sensor_side_ops fake_side = {
        .complete = fake_complete,
        .commands_ready = fake_commands_ready,
};

/* ---- the fake upstream ---- */

struct pub {
	char topic[128];
	char payload[64];
	int qos;
	upstream_done_fn done;
	void *data;
	bool finished;
};

struct fake_up {
	struct device *dev; /* DEV: its upstream field is the session's state */
	unsigned retry_after;
	int wanted;
	int refuse_next; /* publish returns this once (-EMSGSIZE, -ENOTCONN) */
	struct pub pubs[MAXPUBS];
	size_t npubs;
};

static int
fake_publish(void *up, struct device *dev, const struct upstream_msg *m, upstream_done_fn done,
             void *data)
{
	struct fake_up *f = up;
	struct pub *p;
	int r;

	assert_ptr_equal(dev, f->dev);
	if (f->refuse_next) {
		r = f->refuse_next;
		f->refuse_next = 0;
		return r;
	}
	if (dev->upstream != DEVICE_UPSTREAM_UP)
		return -ENOTCONN;
	assert_true(f->npubs < MAXPUBS);
	p = &f->pubs[f->npubs++];
	*p = (struct pub){.qos = m->qos, .done = done, .data = data};
	snprintf(p->topic, sizeof(p->topic), "%s", m->topic);
	snprintf(p->payload, sizeof(p->payload), "%.*s", (int)m->len, (const char *)m->payload);
	return 0;
}

static unsigned
fake_retry_after(void *up, struct device *dev)
{
	(void)dev;
	return ((struct fake_up *)up)->retry_after;
}

static void
fake_wanted(void *up, struct device *dev)
{
	(void)dev;
	((struct fake_up *)up)->wanted++;
}

static const struct upstream_ops fake_up_ops = {
        .publish = fake_publish,
        .retry_after = fake_retry_after,
        .wanted = fake_wanted,
};

/* The broker answers publish i. */
static void
finish(struct fake_up *f, size_t i, int status)
{
	assert_true(i < f->npubs);
	assert_false(f->pubs[i].finished);
	f->pubs[i].finished = true;
	f->pubs[i].done(status, f->pubs[i].data);
}

/* ---- the fixture ---- */

struct fixture {
	char tmp[64];
	struct gw_loop *loop;
	struct gwconf *conf;
	struct spool *spool;
	struct cmdq *commands;
	struct device_registry *devices;
	struct device *dev; /* DEV, in devices */
	struct router *rt;
	struct fake_up up;
};

static const char *
fake_attr(const struct device *dev, const char *key, void *data)
{
	(void)dev;
	(void)data;
	return strcmp(key, "site") == 0 ? "north" : NULL;
}

/* The session's state, as the cloud side keeps it: the router hears of it (UP: it drains). */
static void
set_up(struct fixture *f, enum device_upstream st)
{
	device_set_upstream(f->dev, st);
}

/* The config: one route, and the spool acknowledging as ack says. */
static struct gwconf *
load_conf(struct fixture *f, const char *ack)
{
	char path[128];
	struct gwconf_errors errs;
	struct gwconf *conf;
	FILE *out;

	snprintf(path, sizeof(path), "%s/gateway.conf", f->tmp);
	out = fopen(path, "w");
	assert_non_null(out);
	fprintf(out,
	        "gateway = { id = \"gw-01\"; };\n"
	        "upstream = { broker = \"mqtts://broker.test\"; ca_file = \"/dev/null\"; "
	        "};\n"
	        "routes = ( { resource = \"temp\"; topic = \"d/${device}/${attr.site}/${path}\"; "
	        "} );\n"
	        "spool = { ack = \"%s\"; };\n",
	        ack);
	fclose(out);
	assert_int_equal(gwconf_load(path, &conf, &errs), 0);
	gwconf_errors_finish(&errs);
	return conf;
}

static int
setup_with(void **state, const char *ack, uint64_t device_bytes)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct spool_limits lim = {.device_bytes = device_bytes};
	char dir[96];

	if (!f)
		return -1;
	snprintf(f->tmp, sizeof(f->tmp), "/tmp/test-router.XXXXXX");
	if (!mkdtemp(f->tmp))
		return -1;
	snprintf(dir, sizeof(dir), "%s/spool", f->tmp);
	f->conf = load_conf(f, ack);
	f->devices = device_registry_new();
	if (device_add(f->devices, DEV, &f->dev) < 0)
		return -1;
	if (gw_loop_new(&f->loop) < 0 || spool_open(&f->spool, dir, &lim, f->devices) < 0)
		return -1;
	f->up = (struct fake_up){.retry_after = 7};
	f->commands = cmdq_new(16, 3600);
	f->up.dev = f->dev;
	device_set_upstream(f->dev, DEVICE_UPSTREAM_UP);
	f->rt = router_new(&(struct router_options){
	        .loop = f->loop,
	        .conf = f->conf,
	        .spool = f->spool,
	        .devices = f->devices,
	        .commands = f->commands,
	        .up_ops = &fake_up_ops,
	        .up = &f->up,
	        .attr = fake_attr,
	        .data = f,
	});
	router_set_sensor_side(f->rt, &fake_side, NULL);
	*state = f;
	return 0;
}

static int
setup(void **state)
{
	return setup_with(state, "durable", 0);
}

static int
setup_upstream(void **state)
{
	return setup_with(state, "upstream", 0);
}

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	/* The session ends, as a real one does at stop: what is in flight hears -ENOTCONN. */
	set_up(f, DEVICE_UPSTREAM_NONE);
	for (size_t i = 0; i < f->up.npubs; i++) {
		if (!f->up.pubs[i].finished)
			finish(&f->up, i, -ENOTCONN);
	}
	router_free(f->rt);
	spool_free(f->spool);
	device_registry_free(f->devices);
	cmdq_free(f->commands);
	gw_loop_free(f->loop);
	gwconf_free(f->conf);
	nftw(f->tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

/* A reading from the sensor; con: confirmable. */
static void
post(struct fixture *f, struct sensor_request *req, const char *payload, bool con)
{
	const struct sensor_uplink up = {
	        .dev = f->dev,
	        .route = &f->conf->routes[0],
	        .payload = (const uint8_t *)payload,
	        .len = strlen(payload),
	        .confirmable = con,
	        .content_format = -1,
	};

	router_sensor_ops.uplink(req, &up, f->rt);
}

/* Turns the loop until nothing is due now (the batch's sync runs then). */
static void
turn(struct fixture *f)
{
	while (gw_loop_dispatch(f->loop, 0) > 0)
		;
}

static void
expect_published(struct fixture *f, size_t i, const char *payload)
{
	assert_true(i < f->up.npubs);
	assert_string_equal(f->up.pubs[i].payload, payload);
	assert_string_equal(f->up.pubs[i].topic, "d/dev-1/north/temp");
}

/* ---- cases ---- */

static void
a_batch_is_answered_after_one_sync(void **state)
{
	struct fixture *f = *state;
	struct sensor_request req[5] = {0};
	char p[8];

	for (int i = 0; i < 5; i++) {
		snprintf(p, sizeof(p), "r%d", i);
		post(f, &req[i], p, true);
		/* Not durable yet: no answer before the loop turns. */
		assert_false(req[i].answered);
	}
	turn(f);
	for (int i = 0; i < 5; i++) {
		assert_true(req[i].answered);
		assert_int_equal(req[i].status, SENSOR_CHANGED);
	}
	/* In order, each published once, with its topic from the template and the attribute. */
	assert_int_equal(f->up.npubs, 5);
	for (int i = 0; i < 5; i++) {
		snprintf(p, sizeof(p), "r%d", i);
		expect_published(f, (size_t)i, p);
	}
}

static void
the_window_holds_sixteen(void **state)
{
	struct fixture *f = *state;
	struct sensor_request req[20] = {0};
	char p[8];

	for (int i = 0; i < 20; i++) {
		snprintf(p, sizeof(p), "r%d", i);
		post(f, &req[i], p, true);
	}
	turn(f);
	assert_int_equal(f->up.npubs, 16);
	/* The front acknowledged: one more goes, and only one. */
	finish(&f->up, 0, 0);
	assert_int_equal(f->up.npubs, 17);
	expect_published(f, 16, "r16");
	/* Out of order: the window moves only from its front. */
	finish(&f->up, 2, 0);
	assert_int_equal(f->up.npubs, 17);
	finish(&f->up, 1, 0);
	assert_int_equal(f->up.npubs, 19);
	expect_published(f, 18, "r18");
	assert_int_equal(spool_depth(f->spool, f->dev, NULL), 17);
}

static void
a_failure_rewinds_to_the_first_not_acknowledged(void **state)
{
	struct fixture *f = *state;
	struct sensor_request req[5] = {0};
	char p[8];

	for (int i = 0; i < 5; i++) {
		snprintf(p, sizeof(p), "r%d", i);
		post(f, &req[i], p, true);
	}
	turn(f);
	assert_int_equal(f->up.npubs, 5);
	finish(&f->up, 0, 0);
	/* The session drops under r1..r4. */
	set_up(f, DEVICE_UPSTREAM_WAITING);
	finish(&f->up, 1, -ENOTCONN);
	finish(&f->up, 3, -ENOTCONN);
	finish(&f->up, 4, -ENOTCONN);
	assert_int_equal(f->up.npubs, 5);
	assert_int_equal(spool_depth(f->spool, f->dev, NULL), 4);
	/* Back: everything from r1 goes again, in order (r2 twice: at least once). */
	set_up(f, DEVICE_UPSTREAM_UP);
	assert_int_equal(f->up.npubs, 9);
	expect_published(f, 5, "r1");
	expect_published(f, 6, "r2");
	expect_published(f, 7, "r3");
	expect_published(f, 8, "r4");
	/*
	 * r2's PUBACK from the old session comes late: it is stale, and must not count for the
	 * r2 now in flight, which may still fail.
	 */
	finish(&f->up, 2, 0);
	finish(&f->up, 5, 0);
	assert_int_equal(spool_depth(f->spool, f->dev, NULL), 3);
	finish(&f->up, 6, 0);
	assert_int_equal(spool_depth(f->spool, f->dev, NULL), 2);
}

static void
refused_by_the_broker_are_dropped_in_turn(void **state)
{
	struct fixture *f = *state;
	struct sensor_request req[4] = {0};

	post(f, &req[0], "r0", true);
	post(f, &req[1], "r1", true);
	post(f, &req[2], "r2", true);
	turn(f);
	assert_int_equal(f->up.npubs, 3);
	/* Not authorised: sent again it would be refused again; it goes, in its turn. */
	finish(&f->up, 1, -EACCES);
	assert_int_equal(spool_depth(f->spool, f->dev, NULL), 3);
	finish(&f->up, 0, 0);
	assert_int_equal(spool_depth(f->spool, f->dev, NULL), 1);
	finish(&f->up, 2, 0);
	assert_int_equal(spool_depth(f->spool, f->dev, NULL), 0);
	/* Larger than the broker takes: dropped at once, and what follows goes on. */
	f->up.refuse_next = -EMSGSIZE;
	post(f, &req[3], "big", true);
	turn(f);
	assert_true(req[3].answered);
	assert_int_equal(req[3].status, SENSOR_CHANGED);
	assert_int_equal(spool_depth(f->spool, f->dev, NULL), 0);
	assert_int_equal(f->up.npubs, 3);
}

static void
a_device_without_a_session_is_told_to_wait(void **state)
{
	struct fixture *f = *state;
	struct sensor_request req[4] = {0};

	/* Refused by the broker: 5.03 with its Max-Age, nothing spooled for an operator to wait on.
	 */
	set_up(f, DEVICE_UPSTREAM_REFUSED);
	post(f, &req[0], "r0", true);
	assert_true(req[0].answered);
	assert_int_equal(req[0].status, SENSOR_UNAVAILABLE);
	assert_int_equal(req[0].arg, 7);
	/* No session at all. */
	set_up(f, DEVICE_UPSTREAM_NONE);
	post(f, &req[1], "r1", true);
	assert_int_equal(req[1].status, SENSOR_UNAVAILABLE);
	/*
	 * Connecting after a refusal, or with an expired certificate: REFUSED still (the cloud
	 * side keeps it until a connect is accepted), the same.
	 */
	set_up(f, DEVICE_UPSTREAM_REFUSED);
	post(f, &req[2], "r2", true);
	assert_int_equal(req[2].status, SENSOR_UNAVAILABLE);
	assert_int_equal(spool_depth(f->spool, f->dev, NULL), 0);
	/* Only waiting for the network: the spool bridges it, and the connect is hurried. */
	set_up(f, DEVICE_UPSTREAM_WAITING);
	post(f, &req[3], "r3", true);
	turn(f);
	assert_int_equal(req[3].status, SENSOR_CHANGED);
	assert_int_equal(spool_depth(f->spool, f->dev, NULL), 1);
	assert_true(f->up.wanted > 0);
	assert_int_equal(f->up.npubs, 0);
	set_up(f, DEVICE_UPSTREAM_UP);
	assert_int_equal(f->up.npubs, 1);
	expect_published(f, 0, "r3");
}

static void
a_refused_device_waits_until_accepted(void **state)
{
	struct fixture *f = *state;
	struct sensor_request req[2] = {0};

	/* Refused (the session may be trying a new certificate meanwhile): nothing spooled. */
	set_up(f, DEVICE_UPSTREAM_REFUSED);
	post(f, &req[0], "r0", true);
	assert_int_equal(req[0].status, SENSOR_UNAVAILABLE);
	assert_int_equal(spool_depth(f->spool, f->dev, NULL), 0);
	/* Accepted: the spool takes readings again. */
	set_up(f, DEVICE_UPSTREAM_UP);
	post(f, &req[1], "r1", true);
	turn(f);
	assert_int_equal(req[1].status, SENSOR_CHANGED);
}

static void
a_non_is_answered_at_once(void **state)
{
	struct fixture *f = *state;
	struct sensor_request req = {0};

	post(f, &req, "n0", false);
	assert_true(req.answered);
	assert_int_equal(req.status, SENSOR_CHANGED);
	assert_int_equal(f->up.npubs, 1);
}

static void
a_full_spool_refuses(void **state)
{
	struct fixture *f = *state;
	struct sensor_request req[64] = {0};
	size_t i;

	set_up(f, DEVICE_UPSTREAM_WAITING);
	for (i = 0; i < 64; i++) {
		post(f, &req[i], "0123456789", true);
		if (req[i].answered)
			break;
	}
	assert_true(i < 64);
	assert_int_equal(req[i].status, SENSOR_UNAVAILABLE);
	assert_int_equal(req[i].arg, 60);
	turn(f);
	for (size_t k = 0; k < i; k++)
		assert_int_equal(req[k].status, SENSOR_CHANGED);
}

static int
setup_small(void **state)
{
	/* Room for a few records only. */
	return setup_with(state, "durable", 400);
}

static void
ack_upstream_answers_with_the_puback(void **state)
{
	struct fixture *f = *state;
	struct sensor_request req[4] = {0};

	post(f, &req[0], "u0", true);
	assert_false(req[0].answered);
	assert_int_equal(f->up.npubs, 1);
	finish(&f->up, 0, 0);
	assert_int_equal(req[0].status, SENSOR_CHANGED);
	/* Never a false success: a drop or a timeout is 5.03, the sensor keeps it. */
	post(f, &req[1], "u1", true);
	finish(&f->up, 1, -ETIMEDOUT);
	assert_int_equal(req[1].status, SENSOR_UNAVAILABLE);
	assert_int_equal(req[1].arg, 7);
	post(f, &req[2], "u2", true);
	finish(&f->up, 2, -EACCES);
	assert_int_equal(req[2].status, SENSOR_FORBIDDEN);
	/* Down: 5.03 at once, and the connect is hurried. */
	set_up(f, DEVICE_UPSTREAM_WAITING);
	post(f, &req[3], "u3", true);
	assert_int_equal(req[3].status, SENSOR_UNAVAILABLE);
	assert_true(f->up.wanted > 0);
	assert_int_equal(spool_depth(f->spool, f->dev, NULL), 0);
}

static void
commands_are_announced_to_the_sensor_side(void **state)
{
	struct fixture *f = *state;
	const struct upstream_msg m = {.topic = "d/dev-1/cmd", .payload = "on", .len = 2};

	commands_ready = 0;
	router_downlink(f->dev, &m, f->rt);
	assert_int_equal(commands_ready, 1);
	assert_int_equal(router_sensor_ops.commands_waiting(f->dev, f->rt), 1);
}

/*
 * The device is removed with a publish in flight and a command queued: its flow, spool and
 * commands go at once; the late PUBACK finds nothing to acknowledge, and a device added again
 * under the same id starts afresh.
 */
static void
a_removed_device_takes_its_flow_with_it(void **state)
{
	struct fixture *f = *state;
	const struct upstream_msg m = {.topic = "d/dev-1/cmd", .payload = "on", .len = 2};
	struct sensor_request req[2] = {0};
	struct device *held;

	post(f, &req[0], "r0", true);
	turn(f);
	assert_int_equal(req[0].status, SENSOR_CHANGED);
	assert_int_equal(f->up.npubs, 1);
	router_downlink(f->dev, &m, f->rt);
	assert_non_null(f->dev->flow);

	held = device_ref(f->dev);
	device_remove(f->devices, f->dev);
	assert_null(held->flow);
	assert_null(held->spool);
	assert_int_equal(spool_depth(f->spool, held, NULL), 0);
	finish(&f->up, 0, 0);
	turn(f);
	device_unref(held);

	assert_int_equal(device_add(f->devices, DEV, &f->dev), 0);
	f->up.dev = f->dev;
	set_up(f, DEVICE_UPSTREAM_UP);
	assert_int_equal(router_sensor_ops.commands_waiting(f->dev, f->rt), 0);
	post(f, &req[1], "r1", true);
	turn(f);
	assert_int_equal(req[1].status, SENSOR_CHANGED);
	assert_int_equal(f->up.npubs, 2);
	assert_string_equal(f->up.pubs[1].payload, "r1");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(a_batch_is_answered_after_one_sync, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(a_removed_device_takes_its_flow_with_it, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(the_window_holds_sixteen, setup, teardown),
	        cmocka_unit_test_setup_teardown(a_failure_rewinds_to_the_first_not_acknowledged,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(refused_by_the_broker_are_dropped_in_turn, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(a_device_without_a_session_is_told_to_wait, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(a_refused_device_waits_until_accepted, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(a_non_is_answered_at_once, setup, teardown),
	        cmocka_unit_test_setup_teardown(a_full_spool_refuses, setup_small, teardown),
	        cmocka_unit_test_setup_teardown(ack_upstream_answers_with_the_puback,
	                                        setup_upstream, teardown),
	        cmocka_unit_test_setup_teardown(commands_are_announced_to_the_sensor_side, setup,
	                                        teardown),
	};

	log_init("test-router", true, LOG_LEVEL_ERR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
