/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_HISTOGRAM_H
#define GW_HISTOGRAM_H

#include <stdint.h>

/*
 * A latency histogram with fixed buckets suited to TPM operations: swtpm signs in ~1 ms, real
 * chips in 17 to 70 ms, and a reconnect storm queues signatures behind one another for
 * seconds (DESIGN.md 4). Upper bounds, in seconds: histogram_bounds, then +Inf. The keystore
 * records into it; gateway/ops/metrics.c writes it out (metrics_histogram_write()).
 *
 * The members are public only so that a histogram can be a static or embedded object with no
 * setup: a zeroed struct is an empty histogram. Touch them only through the functions below.
 * observe() is lock-free (C11 atomics) and may be called from any thread, e.g. the TPM worker's
 * while it signs through the keystore, concurrently with a read on the loop thread.
 */
#define HISTOGRAM_NBOUNDS 12
extern const double histogram_bounds[HISTOGRAM_NBOUNDS];

struct histogram {
	/* Per bucket, not cumulative; the last one is (2.5 s, +Inf). */
	_Atomic uint64_t counts[HISTOGRAM_NBOUNDS + 1];
	/* The sum in nanoseconds: an integer add cannot lose an update, a double CAS loop could. */
	_Atomic uint64_t sum_ns;
};

/* Records one duration in seconds; NaN is ignored, negative counts as 0. Any thread. */
void histogram_observe(struct histogram *h, double seconds);
/* The counts per bucket (not cumulative) and the sum in nanoseconds, as they are now. */
void histogram_read(const struct histogram *h, uint64_t counts[HISTOGRAM_NBOUNDS + 1],
                    uint64_t *sum_ns);

#endif
