/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_LOOP_H
#define GW_LOOP_H

#include <stdint.h>

/*
 * The daemon's one event loop: epoll for file descriptors, one timerfd behind a heap of
 * timers, signalfd for signals. Everything runs on the thread that calls gw_loop_run().
 */

struct gw_loop;
struct gw_timer;
struct gw_deferred;

typedef void (*gw_loop_fd_fn)(int fd, uint32_t events, void *data);
typedef void (*gw_timer_fn)(struct gw_timer *timer, void *data);
typedef void (*gw_signal_fn)(int signo, void *data);
typedef void (*gw_deferred_fn)(void *data);

int gw_loop_new(struct gw_loop **out);
void gw_loop_free(struct gw_loop *loop);

/* Runs until gw_loop_quit(); returns the status passed to it, or -errno if epoll fails. */
int gw_loop_run(struct gw_loop *loop);
void gw_loop_quit(struct gw_loop *loop, int status);
/*
 * One round of gw_loop_run(): runs the deferred calls queued so far, then waits up to
 * timeout_ms (-1: for ever; 0 while a deferred call queued itself again) for events and runs
 * what is ready. Returns how many were ready (0: none in time, or a signal interrupted the
 * wait), or -errno. For tests that drive the loop step by step.
 */
int gw_loop_dispatch(struct gw_loop *loop, int timeout_ms);

/* Watches fd for events (EPOLLIN, EPOLLOUT); the loop does not own fd. */
int gw_loop_add_fd(struct gw_loop *loop, int fd, uint32_t events, gw_loop_fd_fn fn, void *data);
/* Changes the events watched on an fd already added. */
int gw_loop_mod_fd(struct gw_loop *loop, int fd, uint32_t events);
int gw_loop_del_fd(struct gw_loop *loop, int fd);

/* Blocks signo for the process and delivers it as a loop event. Call before starting threads. */
int gw_loop_add_signal(struct gw_loop *loop, int signo, gw_signal_fn fn, void *data);

/* Monotonic milliseconds. */
uint64_t gw_now_ms(void);

/* A disarmed timer; never NULL. */
struct gw_timer *gw_timer_new(struct gw_loop *loop, gw_timer_fn fn, void *data);
/* Frees a timer, disarming it first; accepts NULL. */
void gw_timer_free(struct gw_timer *timer);
/* (Re)arms a one-shot timer to fire after ms milliseconds. */
void gw_timer_arm(struct gw_timer *timer, uint64_t ms);
void gw_timer_disarm(struct gw_timer *timer);
/* Milliseconds until the timer fires, or -1 if it is not armed. */
int64_t gw_timer_remaining(const struct gw_timer *timer);

/*
 * A call the loop makes once, when it next turns, before it waits: work that several events of
 * one turn ask for (the bytes an upstream session queued) is done once per turn, from the loop,
 * without a system call to ask for it. Never NULL.
 */
struct gw_deferred *gw_deferred_new(struct gw_loop *loop, gw_deferred_fn fn, void *data);
/* Frees it, unqueued first; accepts NULL. */
void gw_deferred_free(struct gw_deferred *d);
/* Queues the call; a call already queued stays queued once. */
void gw_deferred_queue(struct gw_deferred *d);

#endif
