/* SPDX-License-Identifier: Apache-2.0 */
#include "histogram.h"

#include <math.h>
#include <stdatomic.h>
#include <stddef.h>

const double histogram_bounds[HISTOGRAM_NBOUNDS] = {
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
};

/*
 * C11 atomics rather than a mutex: an observation is two relaxed fetch-adds, so the TPM worker
 * timing a signature never waits for the loop thread's write-out, and a zeroed struct needs no
 * init or destroy. The price is that a read is not one instant: the sum may count an
 * observation landing during it that the buckets do not, or the reverse. A writer that takes
 * the count as the sum of the buckets as read keeps _count equal to the +Inf bucket, which
 * Prometheus' histogram_quantile() relies on; the sum is right again on the next read.
 */
void
histogram_observe(struct histogram *h, double seconds)
{
	size_t i = 0;
	uint64_t ns;

	if (isnan(seconds))
		return;
	if (seconds < 0)
		seconds = 0;
	while (i < HISTOGRAM_NBOUNDS && seconds > histogram_bounds[i])
		i++;
	/* Capped at ~31 years so that the conversion stays defined. */
	ns = seconds < 1e18 / 1e9 ? (uint64_t)(seconds * 1e9 + 0.5) : (uint64_t)1e18;
	atomic_fetch_add_explicit(&h->counts[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}

void
histogram_read(const struct histogram *h, uint64_t counts[HISTOGRAM_NBOUNDS + 1], uint64_t *sum_ns)
{
	for (size_t i = 0; i <= HISTOGRAM_NBOUNDS; i++)
		counts[i] = atomic_load_explicit(&h->counts[i], memory_order_relaxed);
	*sum_ns = atomic_load_explicit(&h->sum_ns, memory_order_relaxed);
}
