/* SPDX-License-Identifier: Apache-2.0 */
#include "cmdq.h"
#include "log.h"
#include "xalloc.h"

#include <stdlib.h>
#include <string.h>

struct cmdq {
	size_t limit;
	unsigned expiry;
	/* One sequence for all devices: Observe values then only ever grow (RFC 7641 3.4). */
	uint32_t seq;
	struct cmdq_queue *queues; /* those with an array */
	struct cmdq_stats st;
	time_t (*now)(void);
};

static time_t
monotonic_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

struct cmdq *
cmdq_new(size_t limit, unsigned expiry)
{
	struct cmdq *q = xcalloc(1, sizeof(*q));

	q->limit = limit ? limit : 1;
	q->expiry = expiry;
	q->now = monotonic_now;
	return q;
}

void
cmdq_queue_init(struct cmdq_queue *dq, struct cmdq *q, const char *device)
{
	*dq = (struct cmdq_queue){.q = q, .device = device};
}

void
cmdq_queue_clear(struct cmdq_queue *dq)
{
	for (size_t i = 0; i < dq->n; i++)
		free(dq->cmds[i]);
	free(dq->cmds);
	if (dq->cmds) {
		if (dq->prev)
			dq->prev->next = dq->next;
		else
			dq->q->queues = dq->next;
		if (dq->next)
			dq->next->prev = dq->prev;
	}
	dq->cmds = NULL;
	dq->n = 0;
	dq->cap = 0;
	dq->prev = dq->next = NULL;
}

void
cmdq_free(struct cmdq *q)
{
	if (!q)
		return;
	while (q->queues)
		cmdq_queue_clear(q->queues);
	free(q);
}

void
cmdq_set_clock(struct cmdq *q, time_t (*now)(void))
{
	q->now = now ? now : monotonic_now;
}

static void
drop_first(struct cmdq_queue *d)
{
	free(d->cmds[0]);
	memmove(&d->cmds[0], &d->cmds[1], (d->n - 1) * sizeof(*d->cmds));
	d->n--;
}

void
cmdq_set_limits(struct cmdq *q, size_t limit, unsigned expiry)
{
	limit = limit ? limit : 1;
	/* Commands already queued keep the expiry they were given. */
	q->expiry = expiry;
	for (struct cmdq_queue *d = q->queues; d; d = d->next) {
		while (d->n > limit) {
			log_warnx("%s: command queue now holds %zu: the oldest command is dropped",
			          d->device, limit);
			drop_first(d);
			q->st.overflowed++;
		}
	}
	/* Arrays grow to a larger limit at their next push (make_room). */
	q->limit = limit;
}

/* Inserts cmd by seq; the queue has room. */
static void
insert(struct cmdq_queue *d, struct sensor_command *cmd)
{
	size_t at = d->n;

	while (at > 0 && d->cmds[at - 1]->seq > cmd->seq)
		at--;
	memmove(&d->cmds[at + 1], &d->cmds[at], (d->n - at) * sizeof(*d->cmds));
	d->cmds[at] = cmd;
	d->n++;
}

/* Makes room for one more; returns whether the oldest was dropped to do so. */
static int
make_room(struct cmdq_queue *d)
{
	struct cmdq *q = d->q;

	if (d->cap < q->limit && d->n >= d->cap) {
		/* First command, or the limit grew on a reload. */
		if (!d->cmds) {
			d->next = q->queues;
			if (q->queues)
				q->queues->prev = d;
			q->queues = d;
		}
		d->cmds = xreallocarray(d->cmds, q->limit, sizeof(*d->cmds));
		d->cap = q->limit;
	}
	if (d->n < q->limit)
		return 0;
	log_warnx("%s: command queue full (%zu): the oldest command is dropped", d->device,
	          q->limit);
	drop_first(d);
	q->st.overflowed++;
	return 1;
}

int
cmdq_push(struct cmdq_queue *d, const void *payload, size_t len, int content_format)
{
	struct cmdq *q = d->q;
	struct sensor_command *cmd = xmalloc(sizeof(*cmd) + len);
	int dropped = make_room(d);

	cmd->seq = ++q->seq;
	cmd->expires = q->now() + (time_t)q->expiry;
	cmd->content_format = content_format;
	cmd->len = len;
	if (len) /* an empty payload may come as NULL */
		memcpy(cmd->payload, payload, len);
	insert(d, cmd);
	q->st.queued++;
	return dropped;
}

struct sensor_command *
cmdq_pop(struct cmdq_queue *d)
{
	struct cmdq *q = d->q;
	time_t now = q->now();

	while (d->n > 0) {
		struct sensor_command *cmd = d->cmds[0];

		if (cmd->expires > now) {
			memmove(&d->cmds[0], &d->cmds[1], (d->n - 1) * sizeof(*d->cmds));
			d->n--;
			q->st.delivered++;
			return cmd;
		}
		log_info("%s: a command expired before its sensor asked for it", d->device);
		drop_first(d);
		q->st.expired++;
	}
	return NULL;
}

void
cmdq_requeue(struct cmdq_queue *d, struct sensor_command *cmd)
{
	struct cmdq *q = d->q;

	q->st.delivered--;
	if (cmd->expires <= q->now()) {
		q->st.expired++;
		free(cmd);
		return;
	}
	/* Full of newer ones: this is the oldest, so it is the one to drop. */
	if (d->n >= q->limit && d->cmds[0]->seq > cmd->seq) {
		q->st.overflowed++;
		free(cmd);
		return;
	}
	make_room(d);
	insert(d, cmd);
}

struct sensor_command *
sensor_command_new(uint32_t seq, time_t expires, int content_format, const void *payload,
                   size_t len)
{
	struct sensor_command *cmd = xmalloc(sizeof(*cmd) + len);

	cmd->seq = seq;
	cmd->expires = expires;
	cmd->content_format = content_format;
	cmd->len = len;
	if (len) /* an empty payload may come as NULL */
		memcpy(cmd->payload, payload, len);
	return cmd;
}

size_t
cmdq_depth(const struct cmdq_queue *d)
{
	return d->n;
}

void
cmdq_stats(const struct cmdq *q, struct cmdq_stats *st)
{
	*st = q->st;
}
