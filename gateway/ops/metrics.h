/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "histogram.h"

/*
 * Metrics in the Prometheus text exposition format, version 0.0.4
 * (https://prometheus.io/docs/instrumenting/exposition_formats/), and the loopback HTTP
 * endpoint that serves them.
 *
 * Writing, on the loop thread:
 *
 *	metrics_family(w, "gateway_messages_total", METRICS_COUNTER, "Messages relayed.");
 *	metrics_counter(w, METRICS_LABELS({"direction", "up"}), up);
 *	metrics_counter(w, METRICS_LABELS({"direction", "down"}), down);
 *	metrics_family(w, "gateway_spool_depth", METRICS_GAUGE, "Messages in the spool.");
 *	metrics_gauge(w, NULL, depth);
 *
 * Misuse (an invalid name, a counter family without "_total", a sample of the wrong type, a
 * family written twice) makes the writer fail as a whole: the calls after it do nothing,
 * metrics_writer_error() says why, and the HTTP endpoint answers 500 rather than serve a
 * partial or invalid exposition.
 */

struct gw_loop;
struct metrics_writer;
struct metrics_server;

enum metrics_type { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM };

struct metrics_label {
	const char *name;  /* [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__" */
	const char *value; /* any string; escaped, and invalid UTF-8 replaced by U+FFFD */
};

/* A label list terminated by a NULL name, for the calls below: METRICS_LABELS({"k", "v"}). */
#define METRICS_LABELS(...) ((const struct metrics_label[]){__VA_ARGS__, {NULL, NULL}})

/* A writer for one exposition; the loop thread's alone. */
struct metrics_writer *metrics_writer_new(void);
/* Accepts NULL. */
void metrics_writer_free(struct metrics_writer *w);
/* 0, or -EINVAL if a misuse (logged) made the writer fail. */
int metrics_writer_error(const struct metrics_writer *w);
/* The text written so far, NUL-terminated; valid until the next call on w. */
const char *metrics_writer_data(const struct metrics_writer *w, size_t *len);

/*
 * Starts a family: "# HELP" and "# TYPE" lines. Calling it again with the name of the current
 * family does nothing, so a loop over devices may call it each time; a name written before
 * another family is misuse (a family's samples must be contiguous). Counter names end in
 * "_total". help may be NULL.
 */
void metrics_family(struct metrics_writer *w, const char *name, enum metrics_type type,
                    const char *help);
/*
 * One sample of the current family, named after it plus suffix (NULL for none). labels is NULL
 * or ends with a NULL name. Integers are printed exactly; doubles as Prometheus parses them,
 * including "+Inf", "-Inf" and "NaN".
 */
void metrics_sample(struct metrics_writer *w, const char *suffix,
                    const struct metrics_label *labels, double value);
void metrics_sample_u64(struct metrics_writer *w, const char *suffix,
                        const struct metrics_label *labels, uint64_t value);
/* The usual cases: a counter's or a gauge's sample under the family's own name. */
void metrics_counter(struct metrics_writer *w, const struct metrics_label *labels, uint64_t value);
void metrics_gauge(struct metrics_writer *w, const struct metrics_label *labels, double value);

/*
 * Writes h as the current family's samples (the family must be METRICS_HISTOGRAM):
 * cumulative "_bucket" lines with an "le" label, up to le="+Inf", then "_sum" (seconds) and
 * "_count". labels must not contain "le".
 */
void metrics_histogram_write(struct metrics_writer *w, const struct metrics_label *labels,
                             const struct histogram *h);

/* ---- The HTTP endpoint ---- */

/* Writes the whole exposition; called on the loop thread once per GET or HEAD /metrics. */
typedef void (*metrics_collect_fn)(struct metrics_writer *w, void *data);

struct metrics_server_options {
	/* A numeric loopback address (127.0.0.0/8, ::1) or "localhost"; others are refused. */
	const char *address;
	/* 0 binds an ephemeral port: see metrics_server_port(). */
	uint16_t port;
	/* A client has this long to send its request, and again to take the response. 0: 5 s. */
	unsigned int timeout_ms;
	/* Connections served at once; more wait in the listen backlog. 0: 8. */
	unsigned int max_clients;
};

/*
 * Serves GET and HEAD /metrics (the collect() output, or 500 if the writer failed), / (a
 * pointer to /metrics), 404 for other paths, 405 for other methods, on loop; one request per
 * connection (Connection: close). A request is bounded to METRICS_HTTP_MAX_REQUEST bytes
 * (414 or 431 beyond); the answer is written as the socket takes it, never blocking the loop.
 * collect() must not block either. Returns 0, -EADDRNOTAVAIL for an address that is not
 * loopback, -EINVAL for one that does not parse, or the -errno of bind/listen (e.g.
 * -EADDRINUSE); each logged.
 */
#define METRICS_HTTP_MAX_REQUEST 4096

int metrics_server_new(struct metrics_server **out, struct gw_loop *loop,
                       const struct metrics_server_options *opt, metrics_collect_fn collect,
                       void *data);
/* Closes the listening socket and every connection. Accepts NULL. */
void metrics_server_free(struct metrics_server *srv);
/* The port bound, in host order. */
uint16_t metrics_server_port(const struct metrics_server *srv);

#endif
