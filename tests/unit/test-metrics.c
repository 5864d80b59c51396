/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "metrics.h"

/* ---- the text format ---- */

static struct metrics_writer *
writer(void)
{
	return metrics_writer_new();
}

static void
assert_output(struct metrics_writer *w, const char *expected)
{
	size_t len;
	const char *data = metrics_writer_data(w, &len);

	assert_int_equal(metrics_writer_error(w), 0);
	assert_string_equal(data, expected);
	assert_int_equal(len, strlen(expected));
}

static void
help_and_type_once_per_family(void **state)
{
	struct metrics_writer *w = writer();

	(void)state;
	for (int i = 0; i < 2; i++) {
		/* A caller looping over devices may start the same family each time. */
		metrics_family(w, "gw_messages_total", METRICS_COUNTER,
		               "Messages relayed,\nby direction \\ \"kind\".");
		metrics_counter(w, METRICS_LABELS({"direction", i ? "down" : "up"}),
		                i ? 0 : UINT64_MAX);
	}
	metrics_family(w, "gw_spool_depth", METRICS_GAUGE, NULL);
	metrics_gauge(w, NULL, 3);
	metrics_family(w, "gw_values", METRICS_GAUGE, "Doubles.");
	metrics_gauge(w, METRICS_LABELS({"v", "a"}), 0.1);
	metrics_gauge(w, METRICS_LABELS({"v", "b"}), 1.0 / 3);
	metrics_gauge(w, METRICS_LABELS({"v", "c"}), 1e-7);
	metrics_gauge(w, METRICS_LABELS({"v", "d"}), 1e21);
	metrics_gauge(w, METRICS_LABELS({"v", "e"}), INFINITY);
	metrics_gauge(w, METRICS_LABELS({"v", "f"}), -INFINITY);
	metrics_gauge(w, METRICS_LABELS({"v", "g"}), NAN);
	metrics_gauge(w, METRICS_LABELS({"v", "h"}, {"w", "x"}), -2.5);
	assert_output(w,
	              "# HELP gw_messages_total Messages relayed,\\nby direction \\\\ \"kind\".\n"
	              "# TYPE gw_messages_total counter\n"
	              "gw_messages_total{direction=\"up\"} 18446744073709551615\n"
	              "gw_messages_total{direction=\"down\"} 0\n"
	              "# TYPE gw_spool_depth gauge\n"
	              "gw_spool_depth 3\n"
	              "# HELP gw_values Doubles.\n"
	              "# TYPE gw_values gauge\n"
	              "gw_values{v=\"a\"} 0.1\n"
	              "gw_values{v=\"b\"} 0.33333333333333331\n"
	              "gw_values{v=\"c\"} 1e-07\n"
	              "gw_values{v=\"d\"} 1e+21\n"
	              "gw_values{v=\"e\"} +Inf\n"
	              "gw_values{v=\"f\"} -Inf\n"
	              "gw_values{v=\"g\"} NaN\n"
	              "gw_values{v=\"h\",w=\"x\"} -2.5\n");
	metrics_writer_free(w);
}

static void
label_values_are_escaped(void **state)
{
	struct metrics_writer *w = writer();

	(void)state;
	metrics_family(w, "gw_cert_expiry_seconds", METRICS_GAUGE, "Expiry.");
	metrics_gauge(w, METRICS_LABELS({"device", "a\\b\"c\nd"}), 1);
	/* Valid UTF-8 stays; an invalid byte, an overlong form and a surrogate become U+FFFD. */
	metrics_gauge(w, METRICS_LABELS({"device", "caf\xc3\xa9-\xff-\xc0\xaf-\xed\xa0\x80"}), 2);
	metrics_gauge(w, METRICS_LABELS({"device", ""}, {"empty", NULL}), 3);
	assert_output(w, "# HELP gw_cert_expiry_seconds Expiry.\n"
	                 "# TYPE gw_cert_expiry_seconds gauge\n"
	                 "gw_cert_expiry_seconds{device=\"a\\\\b\\\"c\\nd\"} 1\n"
	                 "gw_cert_expiry_seconds{device=\"caf\xc3\xa9-\xef\xbf\xbd-"
	                 "\xef\xbf\xbd\xef\xbf\xbd-\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"} 2\n"
	                 "gw_cert_expiry_seconds{device=\"\",empty=\"\"} 3\n");
	metrics_writer_free(w);
}

/* Each misuse fails the writer with -EINVAL, and nothing is written after it. */
static void
misuse_fails_the_writer(void **state)
{
	struct histogram h = {0};
	struct metrics_writer *w;
	size_t len_before, len;

	(void)state;
	for (int i = 0; i < 11; i++) {
		w = writer();
		metrics_family(w, "gw_ok", METRICS_GAUGE, "Fine.");
		metrics_gauge(w, NULL, 1);
		metrics_writer_data(w, &len_before);
		switch (i) {
		case 0: /* a counter's name ends in _total */
			metrics_family(w, "gw_messages", METRICS_COUNTER, NULL);
			break;
		case 1: /* a family's samples must be together */
			metrics_family(w, "gw_other", METRICS_GAUGE, NULL);
			metrics_family(w, "gw_ok", METRICS_GAUGE, NULL);
			break;
		case 2:
			metrics_family(w, "9lives", METRICS_GAUGE, NULL);
			break;
		case 3:
			metrics_gauge(w, METRICS_LABELS({"bad-name", "x"}), 1);
			break;
		case 4:
			metrics_gauge(w, METRICS_LABELS({"__reserved", "x"}), 1);
			break;
		case 5:
			metrics_gauge(w, METRICS_LABELS({"a", "x"}, {"a", "y"}), 1);
			break;
		case 6:
			metrics_sample(w, "_sum", NULL, 1);
			break;
		case 7:
			metrics_family(w, "gw_lat_seconds", METRICS_HISTOGRAM, NULL);
			metrics_histogram_write(w, METRICS_LABELS({"le", "1"}), &h);
			break;
		case 8:
			metrics_family(w, "gw_n_total", METRICS_COUNTER, NULL);
			metrics_sample(w, NULL, NULL, -1);
			break;
		case 9:
			metrics_histogram_write(w, NULL, &h); /* on a gauge family */
			break;
		case 10:
			metrics_family(w, "gw_ok", METRICS_COUNTER, NULL);
			break;
		}
		assert_int_equal(metrics_writer_error(w), -EINVAL);
		metrics_family(w, "gw_later", METRICS_GAUGE, NULL);
		metrics_gauge(w, NULL, 2);
		metrics_writer_data(w, &len);
		assert_null(strstr(metrics_writer_data(w, NULL), "gw_later"));
		assert_true(len >= len_before);
		metrics_writer_free(w);
	}
	/* A sample before any family. */
	w = writer();
	metrics_gauge(w, NULL, 1);
	assert_int_equal(metrics_writer_error(w), -EINVAL);
	metrics_writer_free(w);
	metrics_writer_free(NULL);
}

static void
histogram_buckets_are_cumulative(void **state)
{
	struct histogram h = {0}, empty = {0};
	struct metrics_writer *w = writer();

	(void)state;
	histogram_observe(&h, 0.0001);
	histogram_observe(&h, 0.0005); /* on a bound: le is "less or equal" */
	histogram_observe(&h, -1);     /* counts as 0 */
	histogram_observe(&h, 0.003);
	histogram_observe(&h, 0.02);
	histogram_observe(&h, 3.0);
	histogram_observe(&h, NAN); /* ignored */
	metrics_family(w, "gw_tpm_seconds", METRICS_HISTOGRAM, "TPM operation latency.");
	metrics_histogram_write(w, METRICS_LABELS({"op", "sign"}), &h);
	metrics_histogram_write(w, METRICS_LABELS({"op", "load"}), &empty);
	assert_output(w, "# HELP gw_tpm_seconds TPM operation latency.\n"
	                 "# TYPE gw_tpm_seconds histogram\n"
	                 "gw_tpm_seconds_bucket{op=\"sign\",le=\"0.0005\"} 3\n"
	                 "gw_tpm_seconds_bucket{op=\"sign\",le=\"0.001\"} 3\n"
	                 "gw_tpm_seconds_bucket{op=\"sign\",le=\"0.0025\"} 3\n"
	                 "gw_tpm_seconds_bucket{op=\"sign\",le=\"0.005\"} 4\n"
	                 "gw_tpm_seconds_bucket{op=\"sign\",le=\"0.01\"} 4\n"
	                 "gw_tpm_seconds_bucket{op=\"sign\",le=\"0.025\"} 5\n"
	                 "gw_tpm_seconds_bucket{op=\"sign\",le=\"0.05\"} 5\n"
	                 "gw_tpm_seconds_bucket{op=\"sign\",le=\"0.1\"} 5\n"
	                 "gw_tpm_seconds_bucket{op=\"sign\",le=\"0.25\"} 5\n"
	                 "gw_tpm_seconds_bucket{op=\"sign\",le=\"0.5\"} 5\n"
	                 "gw_tpm_seconds_bucket{op=\"sign\",le=\"1\"} 5\n"
	                 "gw_tpm_seconds_bucket{op=\"sign\",le=\"2.5\"} 5\n"
	                 "gw_tpm_seconds_bucket{op=\"sign\",le=\"+Inf\"} 6\n"
	                 "gw_tpm_seconds_sum{op=\"sign\"} 3.0236\n"
	                 "gw_tpm_seconds_count{op=\"sign\"} 6\n"
	                 "gw_tpm_seconds_bucket{op=\"load\",le=\"0.0005\"} 0\n"
	                 "gw_tpm_seconds_bucket{op=\"load\",le=\"0.001\"} 0\n"
	                 "gw_tpm_seconds_bucket{op=\"load\",le=\"0.0025\"} 0\n"
	                 "gw_tpm_seconds_bucket{op=\"load\",le=\"0.005\"} 0\n"
	                 "gw_tpm_seconds_bucket{op=\"load\",le=\"0.01\"} 0\n"
	                 "gw_tpm_seconds_bucket{op=\"load\",le=\"0.025\"} 0\n"
	                 "gw_tpm_seconds_bucket{op=\"load\",le=\"0.05\"} 0\n"
	                 "gw_tpm_seconds_bucket{op=\"load\",le=\"0.1\"} 0\n"
	                 "gw_tpm_seconds_bucket{op=\"load\",le=\"0.25\"} 0\n"
	                 "gw_tpm_seconds_bucket{op=\"load\",le=\"0.5\"} 0\n"
	                 "gw_tpm_seconds_bucket{op=\"load\",le=\"1\"} 0\n"
	                 "gw_tpm_seconds_bucket{op=\"load\",le=\"2.5\"} 0\n"
	                 "gw_tpm_seconds_bucket{op=\"load\",le=\"+Inf\"} 0\n"
	                 "gw_tpm_seconds_sum{op=\"load\"} 0\n"
	                 "gw_tpm_seconds_count{op=\"load\"} 0\n");
	metrics_writer_free(w);
}

#define OBSERVATIONS 200000

static atomic_int observers_done;

/* Both threads hit the same two buckets in the same order, so that their updates collide. */
static void *
observe_many(void *arg)
{
	struct histogram *h = arg;

	for (int i = 0; i < OBSERVATIONS; i++)
		histogram_observe(h, i % 2 ? 0.1 : 0.001);
	atomic_fetch_add(&observers_done, 1);
	return NULL;
}

static uint64_t
value_after(const char *text, const char *series)
{
	const char *p = strstr(text, series);

	assert_non_null(p);
	return strtoull(p + strlen(series), NULL, 10);
}

/* Two threads observe while the main thread writes out, as the TPM worker and the loop do. */
static void
concurrent_observations_all_count(void **state)
{
	static struct histogram h;
	pthread_t th[2];
	struct metrics_writer *w;
	const char *text;
	int writes = 0;

	(void)state;
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&th[i], NULL, observe_many, &h), 0);
	/* Every write-out, even mid-way, has _count equal to the +Inf bucket. */
	for (bool last = false; !last; writes++) {
		uint64_t inf, count;

		last = atomic_load(&observers_done) == 2;
		w = writer();
		metrics_family(w, "gw_x_seconds", METRICS_HISTOGRAM, NULL);
		metrics_histogram_write(w, NULL, &h);
		text = metrics_writer_data(w, NULL);
		inf = value_after(text, "gw_x_seconds_bucket{le=\"+Inf\"} ");
		count = value_after(text, "gw_x_seconds_count ");
		metrics_writer_free(w);
		assert_int_equal(inf, count);
	}
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	assert_true(writes >= 1);
	w = writer();
	metrics_family(w, "gw_x_seconds", METRICS_HISTOGRAM, NULL);
	metrics_histogram_write(w, NULL, &h);
	text = metrics_writer_data(w, NULL);
	assert_int_equal(value_after(text, "gw_x_seconds_bucket{le=\"0.001\"} "), OBSERVATIONS);
	assert_int_equal(value_after(text, "gw_x_seconds_bucket{le=\"0.05\"} "), OBSERVATIONS);
	assert_int_equal(value_after(text, "gw_x_seconds_bucket{le=\"0.1\"} "), 2 * OBSERVATIONS);
	/* 200000 x 1 ms + 200000 x 100 ms, exactly: the sum is kept in integer nanoseconds. */
	assert_non_null(strstr(text, "gw_x_seconds_sum 20200\n"));
	assert_int_equal(value_after(text, "gw_x_seconds_count "), 2 * OBSERVATIONS);
	metrics_writer_free(w);
}

/* ---- the HTTP endpoint ---- */

#define CLIENT_RCVTIMEO_S 10
#define SAFETY_MS         15000

struct fixture {
	struct gw_loop *loop;
	struct metrics_server *srv;
	int done[2]; /* clients write a byte here when finished */
	int ndone, want;
	struct gw_timer *safety;
	int collects;
	int samples; /* how many samples collect() writes */
	bool misuse;
};

static void
collect(struct metrics_writer *w, void *data)
{
	struct fixture *fx = data;

	fx->collects++;
	if (fx->misuse) {
		metrics_family(w, "gw_wrong", METRICS_COUNTER, NULL);
		return;
	}
	metrics_family(w, "gw_messages_total", METRICS_COUNTER, "Messages relayed.");
	metrics_counter(w, METRICS_LABELS({"direction", "up"}), 42);
	metrics_family(w, "gw_device_value", METRICS_GAUGE, "Per device.");
	for (int i = 0; i < fx->samples; i++) {
		char dev[32];

		snprintf(dev, sizeof(dev), "sensor-%06d", i);
		metrics_gauge(w, METRICS_LABELS({"device", dev}), i);
	}
}

static const char expected_body[] = "# HELP gw_messages_total Messages relayed.\n"
                                    "# TYPE gw_messages_total counter\n"
                                    "gw_messages_total{direction=\"up\"} 42\n"
                                    "# HELP gw_device_value Per device.\n"
                                    "# TYPE gw_device_value gauge\n";

static void
client_done(int fd, uint32_t events, void *data)
{
	struct fixture *fx = data;
	char b;

	(void)events;
	while (read(fd, &b, 1) == 1) {
		if (++fx->ndone == fx->want)
			gw_loop_quit(fx->loop, 0);
	}
}

static void
safety_expired(struct gw_timer *t, void *data)
{
	struct fixture *fx = data;

	(void)t;
	gw_loop_quit(fx->loop, -ETIMEDOUT);
}

static int
start_server(struct fixture *fx, const struct metrics_server_options *opt)
{
	return metrics_server_new(&fx->srv, fx->loop, opt, collect, fx);
}

static int
setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	struct metrics_server_options opt = {.address = "127.0.0.1"};

	assert_non_null(fx);
	assert_int_equal(gw_loop_new(&fx->loop), 0);
	assert_int_equal(pipe2(fx->done, O_NONBLOCK | O_CLOEXEC), 0);
	assert_int_equal(gw_loop_add_fd(fx->loop, fx->done[0], EPOLLIN, client_done, fx), 0);
	fx->safety = gw_timer_new(fx->loop, safety_expired, fx);
	assert_non_null(fx->safety);
	assert_int_equal(start_server(fx, &opt), 0);
	*state = fx;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *fx = *state;

	metrics_server_free(fx->srv);
	gw_timer_free(fx->safety);
	gw_loop_del_fd(fx->loop, fx->done[0]);
	close(fx->done[0]);
	close(fx->done[1]);
	gw_loop_free(fx->loop);
	free(fx);
	return 0;
}

/* A client on its own thread with blocking I/O; it reports in the struct, never asserts. */
struct client {
	int fd;
	int done_fd;
	const char *request; /* NULL: sends nothing */
	size_t request_len;
	bool split;            /* sends the request in two parts, 50 ms apart */
	unsigned int delay_ms; /* before reading */
	int rcvbuf;            /* SO_RCVBUF if not 0 */
	int close_when;        /* >= 0: closes without reading once this fd is readable */
	char *resp;
	size_t resp_len;
	bool eof;  /* the server closed the connection cleanly */
	int error; /* errno of a failed read or write */
	pthread_t th;
};

static void
sleep_ms(unsigned int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};

	nanosleep(&ts, NULL);
}

static bool
send_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return false;
		p += n;
		len -= (size_t)n;
	}
	return true;
}

static void *
client_run(void *arg)
{
	struct client *c = arg;
	size_t cap = 0;

	if (c->request) {
		size_t first = c->split ? c->request_len / 2 : c->request_len;

		if (!send_all(c->fd, c->request, first)) {
			c->error = errno;
			goto out;
		}
		if (c->split) {
			sleep_ms(50);
			if (!send_all(c->fd, c->request + first, c->request_len - first)) {
				c->error = errno;
				goto out;
			}
		}
	}
	if (c->close_when >= 0) {
		struct pollfd pfd = {.fd = c->close_when, .events = POLLIN};

		poll(&pfd, 1, CLIENT_RCVTIMEO_S * 1000);
		goto out;
	}
	sleep_ms(c->delay_ms);
	for (;;) {
		ssize_t n;

		if (c->resp_len + 4096 > cap) {
			char *r = realloc(c->resp, cap = cap ? cap * 2 : 65536);

			if (!r) {
				c->error = ENOMEM;
				goto out;
			}
			c->resp = r;
		}
		n = read(c->fd, c->resp + c->resp_len, cap - c->resp_len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			c->error = errno; /* EAGAIN: SO_RCVTIMEO expired */
			break;
		}
		if (n == 0) {
			c->eof = true;
			break;
		}
		c->resp_len += (size_t)n;
	}
	if (c->resp)
		c->resp[c->resp_len] = '\0';
out:
	close(c->fd);
	if (write(c->done_fd, "x", 1) != 1)
		abort();
	return NULL;
}

/* Connects from the test's thread, so that connection order is the order of calls. */
static void
client_start(struct fixture *fx, struct client *c, const char *request)
{
	struct sockaddr_in sin = {.sin_family = AF_INET,
	                          .sin_port = htons(metrics_server_port(fx->srv))};
	struct timeval tv = {.tv_sec = CLIENT_RCVTIMEO_S};

	c->done_fd = fx->done[1];
	if (c->close_when == 0)
		c->close_when = -1;
	c->request = request;
	if (request && !c->request_len)
		c->request_len = strlen(request);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(c->fd >= 0);
	assert_int_equal(setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
	assert_int_equal(setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)), 0);
	if (c->rcvbuf)
		assert_int_equal(
		        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &c->rcvbuf, sizeof(c->rcvbuf)), 0);
	assert_int_equal(connect(c->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(pthread_create(&c->th, NULL, client_run, c), 0);
	fx->want++;
}

/* Runs the loop until every client started has finished. */
static void
run_clients(struct fixture *fx)
{
	gw_timer_arm(fx->safety, SAFETY_MS);
	assert_int_equal(gw_loop_run(fx->loop), 0);
	gw_timer_disarm(fx->safety);
}

static void
client_finish(struct client *c)
{
	pthread_join(c->th, NULL);
	free(c->resp);
	c->resp = NULL;
}

/* One request, one response: the client's view. */
static struct client *
exchange(struct fixture *fx, const char *request)
{
	struct client *c = calloc(1, sizeof(*c));

	assert_non_null(c);
	client_start(fx, c, request);
	run_clients(fx);
	pthread_join(c->th, NULL);
	assert_int_equal(c->error, 0);
	/* The answer was not cut by a reset, and the server closed the connection. */
	assert_true(c->eof);
	return c;
}

static void
client_free(struct client *c)
{
	free(c->resp);
	free(c);
}

static int
status_of(const struct client *c)
{
	assert_non_null(c->resp);
	assert_true(strncmp(c->resp, "HTTP/1.1 ", 9) == 0);
	return atoi(c->resp + 9);
}

/* The value of a header, up to its CR; the buffer is static. */
static const char *
header(const struct client *c, const char *name)
{
	static char value[256];
	const char *end = strstr(c->resp, "\r\n\r\n");
	size_t n = strlen(name);

	assert_non_null(end);
	for (const char *p = strstr(c->resp, "\r\n"); p && p < end; p = strstr(p + 2, "\r\n")) {
		if (strncasecmp(p + 2, name, n) == 0 && p[2 + n] == ':') {
			const char *v = p + 2 + n + 1, *e;

			while (*v == ' ')
				v++;
			e = strstr(v, "\r\n");
			snprintf(value, sizeof(value), "%.*s", (int)(e - v), v);
			return value;
		}
	}
	return NULL;
}

static const char *
body_of(const struct client *c)
{
	const char *end = strstr(c->resp, "\r\n\r\n");

	assert_non_null(end);
	return end + 4;
}

static void
assert_body_length_matches(const struct client *c)
{
	const char *cl = header(c, "Content-Length");

	assert_non_null(cl);
	assert_int_equal(strtoull(cl, NULL, 10), c->resp_len - (size_t)(body_of(c) - c->resp));
}

static void
get_metrics_answers_200_with_the_exposition(void **state)
{
	struct fixture *fx = *state;
	struct client *c;

	c = exchange(fx, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n");
	assert_int_equal(status_of(c), 200);
	assert_string_equal(header(c, "Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
	assert_string_equal(header(c, "Connection"), "close");
	assert_string_equal(body_of(c), expected_body);
	assert_body_length_matches(c);
	assert_int_equal(fx->collects, 1);
	client_free(c);

	/* HTTP/1.0, a query string, bare LF line ends, the absolute form. */
	c = exchange(fx, "GET /metrics?x=1 HTTP/1.0\n\n");
	assert_int_equal(status_of(c), 200);
	assert_string_equal(body_of(c), expected_body);
	client_free(c);
	c = exchange(fx, "GET http://127.0.0.1:9100/metrics HTTP/1.1\r\nHost: x\r\n\r\n");
	assert_int_equal(status_of(c), 200);
	assert_string_equal(body_of(c), expected_body);
	client_free(c);
}

static void
head_answers_the_headers_only(void **state)
{
	struct fixture *fx = *state;
	struct client *c;

	c = exchange(fx, "HEAD /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
	assert_int_equal(status_of(c), 200);
	assert_string_equal(header(c, "Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
	/* The length a GET would have. */
	assert_int_equal(strtoull(header(c, "Content-Length"), NULL, 10), strlen(expected_body));
	assert_string_equal(body_of(c), "");
	client_free(c);
}

static void
paths_and_methods(void **state)
{
	struct fixture *fx = *state;
	struct client *c;

	c = exchange(fx, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
	assert_int_equal(status_of(c), 200);
	assert_non_null(strstr(body_of(c), "/metrics"));
	assert_body_length_matches(c);
	client_free(c);

	c = exchange(fx, "GET /metricsx HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
	assert_int_equal(status_of(c), 404);
	assert_body_length_matches(c);
	client_free(c);

	c = exchange(fx, "POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
	assert_int_equal(status_of(c), 405);
	assert_string_equal(header(c, "Allow"), "GET, HEAD");
	assert_body_length_matches(c);
	client_free(c);

	c = exchange(fx, "GET /metrics\r\n\r\n");
	assert_int_equal(status_of(c), 400);
	client_free(c);
	c = exchange(fx, "G(T /metrics HTTP/1.1\r\n\r\n");
	assert_int_equal(status_of(c), 400);
	client_free(c);
	c = exchange(fx, "GET /metrics HTTP/2.0\r\n\r\n");
	assert_int_equal(status_of(c), 505);
	client_free(c);
	/* Only collect() for /metrics: none of these ran it. */
	assert_int_equal(fx->collects, 0);
}

static void
oversized_requests_are_refused(void **state)
{
	struct fixture *fx = *state;
	char *req = malloc(3 * METRICS_HTTP_MAX_REQUEST);
	struct client *c;

	assert_non_null(req);
	/* Headers beyond the bound: 431, and the answer arrives although the rest is unread. */
	strcpy(req, "GET /metrics HTTP/1.1\r\nX-Filler: ");
	memset(req + strlen(req), 'a', 2 * METRICS_HTTP_MAX_REQUEST);
	strcpy(req + strlen("GET /metrics HTTP/1.1\r\nX-Filler: ") + 2 * METRICS_HTTP_MAX_REQUEST,
	       "\r\n\r\n");
	c = exchange(fx, req);
	assert_int_equal(status_of(c), 431);
	client_free(c);
	/* A request line beyond the bound: 414. */
	strcpy(req, "GET /");
	memset(req + 5, 'a', 2 * METRICS_HTTP_MAX_REQUEST);
	strcpy(req + 5 + 2 * METRICS_HTTP_MAX_REQUEST, " HTTP/1.1\r\n\r\n");
	c = exchange(fx, req);
	assert_int_equal(status_of(c), 414);
	client_free(c);
	assert_int_equal(fx->collects, 0);
	free(req);
}

static void
a_silent_client_is_closed_after_the_timeout(void **state)
{
	struct fixture *fx = *state;
	struct metrics_server_options opt = {.address = "127.0.0.1", .timeout_ms = 200};
	struct client *c;

	metrics_server_free(fx->srv);
	assert_int_equal(start_server(fx, &opt), 0);
	c = exchange(fx, NULL);
	assert_int_equal(c->resp_len, 0);
	client_free(c);
	/* Half a request and then silence: the same. */
	c = exchange(fx, "GET /metrics HTTP/1.1\r\nHost: 1");
	assert_int_equal(c->resp_len, 0);
	client_free(c);
	assert_int_equal(fx->collects, 0);
}

static void
a_request_in_pieces_is_reassembled(void **state)
{
	struct fixture *fx = *state;
	struct client c = {.split = true};

	client_start(fx, &c, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
	run_clients(fx);
	pthread_join(c.th, NULL);
	assert_true(c.eof);
	assert_int_equal(status_of(&c), 200);
	assert_string_equal(body_of(&c), expected_body);
	free(c.resp);
}

/*
 * A body larger than the socket takes at once, to a client slow to read it with a small
 * receive buffer: the server must wait for the socket to drain, more than once.
 */
static void
a_large_body_is_written_as_the_socket_allows(void **state)
{
	struct fixture *fx = *state;
	struct client c = {.delay_ms = 200, .rcvbuf = 4096};
	const char *body;
	char last[64];

	fx->samples = 200000; /* ~9 MB: more than loopback TCP buffers up to 4 MiB take */
	client_start(fx, &c, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
	run_clients(fx);
	pthread_join(c.th, NULL);
	assert_int_equal(c.error, 0);
	assert_true(c.eof);
	assert_int_equal(status_of(&c), 200);
	assert_body_length_matches(&c);
	body = body_of(&c);
	assert_true(strlen(body) > 8000000);
	assert_true(strncmp(body, expected_body, strlen(expected_body)) == 0);
	snprintf(last, sizeof(last), "gw_device_value{device=\"sensor-%06d\"} %d\n", 199999,
	         199999);
	assert_string_equal(body + strlen(body) - strlen(last), last);
	free(c.resp);
}

static void
a_failed_collection_answers_500(void **state)
{
	struct fixture *fx = *state;
	struct client *c;

	fx->misuse = true;
	c = exchange(fx, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
	assert_int_equal(status_of(c), 500);
	assert_null(strstr(body_of(c), "gw_wrong"));
	client_free(c);
}

/*
 * With one slot, a second client waits in the backlog while the first holds the slot, and is
 * served once it leaves: refused by no one, served one at a time.
 */
static void
clients_beyond_the_cap_wait_their_turn(void **state)
{
	struct fixture *fx = *state;
	struct metrics_server_options opt = {
	        .address = "127.0.0.1", .max_clients = 1, .timeout_ms = 10000};
	int go[2];
	struct client a = {0}, b = {0};

	metrics_server_free(fx->srv);
	assert_int_equal(start_server(fx, &opt), 0);
	assert_int_equal(pipe2(go, O_CLOEXEC), 0);
	a.close_when = go[0];
	client_start(fx, &a, NULL);
	client_start(fx, &b, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
	/* 300 ms of loop: b is not served while a holds the one slot. */
	fx->want = 100;
	gw_timer_arm(fx->safety, 300);
	assert_int_equal(gw_loop_run(fx->loop), -ETIMEDOUT);
	assert_int_equal(fx->ndone, 0);
	assert_int_equal(fx->collects, 0);
	/* a leaves; b is served. */
	fx->want = 2;
	assert_int_equal(write(go[1], "x", 1), 1);
	run_clients(fx);
	pthread_join(a.th, NULL);
	pthread_join(b.th, NULL);
	assert_true(b.eof);
	assert_int_equal(status_of(&b), 200);
	assert_int_equal(fx->collects, 1);
	client_finish(&a);
	client_finish(&b);
	close(go[0]);
	close(go[1]);
}

static void
only_loopback_addresses_are_served(void **state)
{
	struct fixture *fx = *state;
	const char *refused[] = {"192.0.2.1", "0.0.0.0", "::", "2001:db8::1", "::ffff:192.0.2.1"};
	const char *accepted[] = {"127.0.0.2", "localhost"};
	struct metrics_server *srv;

	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		struct metrics_server_options opt = {.address = refused[i]};

		srv = NULL;
		assert_int_equal(metrics_server_new(&srv, fx->loop, &opt, collect, fx),
		                 -EADDRNOTAVAIL);
		assert_null(srv);
	}
	{
		struct metrics_server_options opt = {.address = "gateway.example"};

		assert_int_equal(metrics_server_new(&srv, fx->loop, &opt, collect, fx), -EINVAL);
	}
	for (size_t i = 0; i < sizeof(accepted) / sizeof(accepted[0]); i++) {
		struct metrics_server_options opt = {.address = accepted[i]};

		assert_int_equal(metrics_server_new(&srv, fx->loop, &opt, collect, fx), 0);
		assert_true(metrics_server_port(srv) != 0);
		metrics_server_free(srv);
	}
	/* IPv6 loopback, where the kernel has it. */
	{
		struct metrics_server_options opt = {.address = "[::1]"};
		int probe = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6,
		                            .sin6_addr = IN6ADDR_LOOPBACK_INIT};

		assert_true(probe >= 0);
		if (bind(probe, (struct sockaddr *)&sin6, sizeof(sin6)) == 0) {
			assert_int_equal(metrics_server_new(&srv, fx->loop, &opt, collect, fx), 0);
			assert_true(metrics_server_port(srv) != 0);
			metrics_server_free(srv);
		} else {
			print_message("no IPv6 loopback here: [::1] not tried\n");
		}
		close(probe);
	}
	/* The fixture's port is taken: a second server on it fails, and says so. */
	{
		struct metrics_server_options opt = {.address = "127.0.0.1",
		                                     .port = metrics_server_port(fx->srv)};

		assert_int_equal(metrics_server_new(&srv, fx->loop, &opt, collect, fx),
		                 -EADDRINUSE);
	}
	metrics_server_free(NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(help_and_type_once_per_family),
	        cmocka_unit_test(label_values_are_escaped),
	        cmocka_unit_test(misuse_fails_the_writer),
	        cmocka_unit_test(histogram_buckets_are_cumulative),
	        cmocka_unit_test(concurrent_observations_all_count),
	        cmocka_unit_test_setup_teardown(get_metrics_answers_200_with_the_exposition, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(head_answers_the_headers_only, setup, teardown),
	        cmocka_unit_test_setup_teardown(paths_and_methods, setup, teardown),
	        cmocka_unit_test_setup_teardown(oversized_requests_are_refused, setup, teardown),
	        cmocka_unit_test_setup_teardown(a_silent_client_is_closed_after_the_timeout, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(a_request_in_pieces_is_reassembled, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(a_large_body_is_written_as_the_socket_allows, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(a_failed_collection_answers_500, setup, teardown),
	        cmocka_unit_test_setup_teardown(clients_beyond_the_cap_wait_their_turn, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(only_loopback_addresses_are_served, setup,
	                                        teardown),
	};

	log_init("test-metrics", true, LOG_LEVEL_WARN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
