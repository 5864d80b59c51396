/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_CMDQ_H
#define GW_CMDQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "sensor.h"

/*
 * Commands from the cloud waiting for their sensor: one bounded FIFO per device, each command
 * with an expiry. A sensor that observes or polls the command resource takes them in order.
 */

struct cmdq;

/*
 * One device's commands, kept in its owner (the router's state for the device) and zeroed
 * there before cmdq_queue_init(). No map by id: the owner found the device already.
 */
struct cmdq_queue {
	struct cmdq *q;
	const char *device;           /* for log lines: the owner keeps it alive */
	struct sensor_command **cmds; /* oldest first; allocated at the first command */
	size_t n;
	size_t cap; /* of cmds: the limit when it was allocated */
	/* In its cmdq's list while it has an array, so that a reload's lower limit reaches it. */
	struct cmdq_queue *prev, *next;
};

/* limit: commands held per device; expiry: seconds each may wait. */
struct cmdq *cmdq_new(size_t limit, unsigned expiry);
/* Accepts NULL. The queues must have been cleared (cmdq_queue_clear) before. */
void cmdq_free(struct cmdq *q);
/* A reload: queued commands past the new limit are dropped now, oldest first. */
void cmdq_set_limits(struct cmdq *q, size_t limit, unsigned expiry);
void cmdq_queue_init(struct cmdq_queue *dq, struct cmdq *q, const char *device);
/* Forgets the queue's commands (a removed device's). */
void cmdq_queue_clear(struct cmdq_queue *dq);
/*
 * Queues a command. When the queue is full its oldest command is dropped to make room (the
 * newest instruction wins), and 1 is returned; otherwise 0.
 */
int cmdq_push(struct cmdq_queue *dq, const void *payload, size_t len, int content_format);
/*
 * Takes the oldest command that has not expired (expired ones are dropped and counted). NULL
 * if none. The caller frees it with free().
 */
struct sensor_command *cmdq_pop(struct cmdq_queue *dq);
/*
 * Gives back a command that did not reach its sensor (taken by cmdq_pop, or rebuilt from what
 * was sent), in its place by seq. Takes ownership. Dropped if it has expired meanwhile.
 */
void cmdq_requeue(struct cmdq_queue *dq, struct sensor_command *cmd);
/* Commands waiting (expired ones included until they are next looked at). */
size_t cmdq_depth(const struct cmdq_queue *dq);

struct cmdq_stats {
	uint64_t queued, delivered, expired, overflowed;
};
void cmdq_stats(const struct cmdq *q, struct cmdq_stats *st);

/* For tests: the clock in CLOCK_MONOTONIC seconds; NULL restores the real one. */
void cmdq_set_clock(struct cmdq *q, time_t (*now)(void));

#endif
