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

/* limit: commands held per device; expiry: seconds each may wait. */
struct cmdq *cmdq_new(size_t limit, unsigned expiry);
/* Accepts NULL. */
void cmdq_free(struct cmdq *q);
/* A reload: queued commands past the new limit are dropped (oldest first) at the next push. */
void cmdq_set_limits(struct cmdq *q, size_t limit, unsigned expiry);

/*
 * Queues a command for device. When the device's queue is full its oldest command is dropped
 * to make room (the newest instruction wins), and 1 is returned; otherwise 0.
 */
int cmdq_push(struct cmdq *q, const char *device, const void *payload, size_t len,
              int content_format);

/*
 * Takes the device's oldest command that has not expired (expired ones are dropped and
 * counted). NULL if none. The caller frees it with free().
 */
struct sensor_command *cmdq_pop(struct cmdq *q, const char *device);

/*
 * Gives back a command that did not reach its sensor (taken by cmdq_pop, or rebuilt from what
 * was sent), in its place by seq. Takes ownership. Dropped if it has expired meanwhile.
 */
void cmdq_requeue(struct cmdq *q, const char *device, struct sensor_command *cmd);

/* Commands waiting for device (expired ones included until they are next looked at). */
size_t cmdq_depth(const struct cmdq *q, const char *device);

/* Forgets a removed device's commands. */
void cmdq_forget(struct cmdq *q, const char *device);

struct cmdq_stats {
	uint64_t queued, delivered, expired, overflowed;
};
void cmdq_stats(const struct cmdq *q, struct cmdq_stats *st);

/* For tests: the clock in CLOCK_MONOTONIC seconds; NULL restores the real one. */
void cmdq_set_clock(struct cmdq *q, time_t (*now)(void));

#endif
