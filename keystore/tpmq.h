/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_TPMQ_H
#define GW_TPMQ_H

#include <stdbool.h>
#include <stdint.h>

/*
 * The TPM as an asynchronous co-processor (DESIGN.md decisions 3 and 5): one worker thread
 * runs every request, highest priority first and first come first served within a priority.
 * A TPM signature takes 17 to 70 ms on a real chip, so whoever needs one either waits for it
 * (tpmq_call(), off the event loop) or submits it and watches the request's eventfd
 * (tpmq_submit(), the loop and OpenSSL async jobs). The worker touches only its queue, the
 * request's data, a done flag and the eventfd; it never calls back into the caller's thread.
 *
 * Priorities are strict: a request waits while any of a higher priority is queued.
 */

enum tpmq_prio {
	TPMQ_ADMIN,      /* an operator waits: key creation, CSRs, gwctl, status */
	TPMQ_HANDSHAKE,  /* a TLS handshake waits: its signature */
	TPMQ_BACKGROUND, /* nobody waits: renewals, EST */
	TPMQ_PRIOS
};

struct tpmq;
struct tpmq_req;

/* Runs on the worker; its return value (0 or -errno) is the request's result. */
typedef int (*tpmq_run_fn)(void *data);
/* Frees a request's data, once, on whichever thread drops the last reference. */
typedef void (*tpmq_destroy_fn)(void *data);

/* Starts the worker (with every signal blocked). Allocation failure is fatal. */
int tpmq_new(struct tpmq **out);
/*
 * Stops the worker: requests still queued complete at once with -ECANCELED (their eventfds
 * fire, synchronous callers return), the one running finishes, the thread is joined. Requests
 * a caller still holds stay valid until their tpmq_req_release(). Must not race with
 * tpmq_submit() or tpmq_call() of other threads. Accepts NULL.
 */
void tpmq_free(struct tpmq *q);

/*
 * Queues run(data) at prio and blocks until it ran (a condition variable, not the loop):
 * returns its result, or -ECANCELED if the queue was shut down first. Called on the worker
 * itself (a request that needs another), it runs run(data) at once.
 */
int tpmq_call(struct tpmq *q, enum tpmq_prio prio, tpmq_run_fn run, void *data);

/*
 * Queues run(data) at prio without waiting. *out holds the caller's reference; its eventfd
 * (tpmq_req_fd()) becomes readable once the request is done. destroy(data) runs when both the
 * caller (tpmq_req_release()) and the worker are finished with it. Returns 0, -ECANCELED
 * after tpmq_free() began, or -errno if no eventfd can be made (logged); on failure data
 * stays the caller's.
 */
int tpmq_submit(struct tpmq *q, enum tpmq_prio prio, tpmq_run_fn run, void *data,
                tpmq_destroy_fn destroy, struct tpmq_req **out);
/*
 * Readable (EPOLLIN) once the request is done; it may also fire late or spuriously, so
 * check tpmq_req_done(). Non-blocking; read 8 bytes to drain it. It stays open until the
 * request is freed; never close it yourself.
 */
int tpmq_req_fd(const struct tpmq_req *req);
/* Whether the request is done (any thread, lock-free); its result and data are then final. */
bool tpmq_req_done(const struct tpmq_req *req);
/* The request's result once done: run's return value, or -ECANCELED. */
int tpmq_req_result(const struct tpmq_req *req);
void *tpmq_req_data(const struct tpmq_req *req);
/*
 * Drops the caller's reference, from any thread. A request still queued is taken off the
 * queue and never runs; one running finishes, and the worker frees it afterwards: data is
 * never freed while run() may use it. Accepts NULL.
 */
void tpmq_req_release(struct tpmq_req *req);

/*
 * Counters for scheduling and status, read without locks (atomics) from any thread. A
 * caller gets the worker's busy fraction over an interval as the difference of two busy_ns
 * samples over the wall time between them.
 */
struct tpmq_stats {
	unsigned queued[TPMQ_PRIOS];    /* waiting now, per priority */
	bool running;                   /* a request is running now */
	uint64_t busy_ns;               /* time spent running requests, the current one included */
	uint64_t completed[TPMQ_PRIOS]; /* requests run, per priority */
	uint64_t ewma_ns[TPMQ_PRIOS];   /* their run time, moving average (weight 1/8); 0: none */
	uint64_t dropped;               /* requests cancelled before they ran */
};
void tpmq_get_stats(const struct tpmq *q, struct tpmq_stats *out);

#endif
