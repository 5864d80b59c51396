/* SPDX-License-Identifier: Apache-2.0 */
#include "metrics.h"
#include "log.h"
#include "loop.h"
#include "xalloc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* ---- the text writer ---- */

struct metrics_writer {
	char *buf;
	size_t len, cap;
	int error;
	/* Families written so far; the last one is the current family. */
	char **families;
	size_t nfamilies, families_cap;
	enum metrics_type type;
};

static const char *const type_names[] = {
        [METRICS_COUNTER] = "counter",
        [METRICS_GAUGE] = "gauge",
        [METRICS_HISTOGRAM] = "histogram",
};

struct metrics_writer *
metrics_writer_new(void)
{
	struct metrics_writer *w = xcalloc(1, sizeof(*w));

	w->cap = 4096;
	w->buf = xmalloc(w->cap);
	w->buf[0] = '\0';
	return w;
}

void
metrics_writer_free(struct metrics_writer *w)
{
	if (!w)
		return;
	for (size_t i = 0; i < w->nfamilies; i++)
		free(w->families[i]);
	free(w->families);
	free(w->buf);
	free(w);
}

int
metrics_writer_error(const struct metrics_writer *w)
{
	return w->error;
}

const char *
metrics_writer_data(const struct metrics_writer *w, size_t *len)
{
	if (len)
		*len = w->len;
	return w->buf;
}

/* Makes the writer fail; a misuse is a bug in the caller, so say which. */
static void
fail(struct metrics_writer *w, int error, const char *fmt, ...)
{
	va_list ap;
	char msg[256];

	if (w->error)
		return;
	w->error = error;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_warnx("metrics: %s", msg);
}

static bool
reserve(struct metrics_writer *w, size_t more)
{
	size_t cap = w->cap;

	if (w->error)
		return false;
	if (w->len + more + 1 <= cap)
		return true;
	/* Doubling stops at SIZE_MAX, which no allocation meets: xalloc aborts then. */
	while (w->len + more + 1 > cap)
		cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
	w->buf = xreallocarray(w->buf, cap, 1);
	w->cap = cap;
	return true;
}

static void
put(struct metrics_writer *w, const char *s, size_t n)
{
	if (!reserve(w, n))
		return;
	memcpy(w->buf + w->len, s, n);
	w->len += n;
	w->buf[w->len] = '\0';
}

static void
put_str(struct metrics_writer *w, const char *s)
{
	put(w, s, strlen(s));
}

/*
 * The length of the valid UTF-8 sequence at s (RFC 3629 section 4: no overlong forms, no
 * surrogates, nothing above U+10FFFF), or 0. s is NUL-terminated, so reading on stops there.
 */
static size_t
utf8_seq_len(const unsigned char *s)
{
	unsigned char c = s[0];
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++) {
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	}
	return n;
}

/*
 * Escapes s for a label value (backslash, double quote and line feed) or for a HELP text
 * (backslash and line feed only), as the 0.0.4 format defines. A byte that is not valid UTF-8
 * becomes U+FFFD: Prometheus rejects the whole scrape for one invalid label value, and a
 * device name is whatever the config says.
 */
static void
put_escaped(struct metrics_writer *w, const char *s, bool quote)
{
	const unsigned char *p = (const unsigned char *)s;

	while (*p) {
		size_t n = utf8_seq_len(p);

		if (n == 0) {
			put(w, "\xef\xbf\xbd", 3);
			p++;
		} else if (*p == '\\') {
			put(w, "\\\\", 2);
			p++;
		} else if (*p == '\n') {
			put(w, "\\n", 2);
			p++;
		} else if (*p == '"' && quote) {
			put(w, "\\\"", 2);
			p++;
		} else {
			put(w, (const char *)p, n);
			p += n;
		}
	}
}

/*
 * A double as Go's strconv.ParseFloat (Prometheus's parser) reads it: the shortest of 15 or
 * 17 significant digits that reads back the same. printf's '.' assumes the C locale for
 * LC_NUMERIC, which the daemon never changes.
 */
static void
format_double(char *buf, size_t len, double v)
{
	if (isnan(v))
		snprintf(buf, len, "NaN");
	else if (isinf(v))
		snprintf(buf, len, v > 0 ? "+Inf" : "-Inf");
	else {
		snprintf(buf, len, "%.15g", v);
		if (strtod(buf, NULL) != v)
			snprintf(buf, len, "%.17g", v);
	}
}

static bool
valid_name(const char *s, bool colons)
{
	if (!s || !*s)
		return false;
	for (const char *p = s; *p; p++) {
		bool alpha = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
		             (colons && *p == ':');

		if (!alpha && !(p > s && *p >= '0' && *p <= '9'))
			return false;
	}
	return true;
}

static bool
ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && strcmp(s + n - m, suffix) == 0;
}

static const char *
current_family(const struct metrics_writer *w)
{
	return w->nfamilies ? w->families[w->nfamilies - 1] : NULL;
}

void
metrics_family(struct metrics_writer *w, const char *name, enum metrics_type type, const char *help)
{
	const char *cur = current_family(w);

	if (w->error)
		return;
	if (!valid_name(name, true) || (unsigned int)type > METRICS_HISTOGRAM) {
		fail(w, -EINVAL, "invalid metric family name \"%s\"", name ? name : "(null)");
		return;
	}
	if (cur && strcmp(cur, name) == 0) {
		if (type != w->type)
			fail(w, -EINVAL, "family %s continued with another type", name);
		return;
	}
	for (size_t i = 0; i < w->nfamilies; i++) {
		if (strcmp(w->families[i], name) == 0) {
			fail(w, -EINVAL, "family %s written twice: its samples must be together",
			     name);
			return;
		}
	}
	/* The convention Prometheus's own linter (promtool check metrics) enforces. */
	if (type == METRICS_COUNTER && !ends_with(name, "_total")) {
		fail(w, -EINVAL, "counter %s: a counter's name ends in _total", name);
		return;
	}
	if (w->nfamilies == w->families_cap) {
		size_t cap = w->families_cap ? w->families_cap * 2 : 32;

		w->families = xreallocarray(w->families, cap, sizeof(*w->families));
		w->families_cap = cap;
	}
	w->families[w->nfamilies++] = xstrdup(name);
	w->type = type;
	if (help) {
		put_str(w, "# HELP ");
		put_str(w, name);
		put(w, " ", 1);
		put_escaped(w, help, false);
		put(w, "\n", 1);
	}
	put_str(w, "# TYPE ");
	put_str(w, name);
	put(w, " ", 1);
	put_str(w, type_names[type]);
	put(w, "\n", 1);
}

/* Checks that a sample named family+suffix fits the current family; false if it failed w. */
static bool
sample_allowed(struct metrics_writer *w, const char *suffix)
{
	const char *fam = current_family(w);

	if (w->error)
		return false;
	if (!fam) {
		fail(w, -EINVAL, "sample written before any metrics_family()");
		return false;
	}
	if (w->type == METRICS_HISTOGRAM) {
		if (suffix && (strcmp(suffix, "_bucket") == 0 || strcmp(suffix, "_sum") == 0 ||
		               strcmp(suffix, "_count") == 0))
			return true;
		fail(w, -EINVAL, "histogram %s: a sample is _bucket, _sum or _count", fam);
		return false;
	}
	if (suffix) {
		fail(w, -EINVAL, "%s %s: no suffix on its samples", type_names[w->type], fam);
		return false;
	}
	return true;
}

/* name{labels,le="..."} and the space before the value. */
static void
put_series(struct metrics_writer *w, const char *suffix, const struct metrics_label *labels,
           const char *le)
{
	bool any = false;

	put_str(w, current_family(w));
	if (suffix)
		put_str(w, suffix);
	for (const struct metrics_label *l = labels; l && l->name; l++) {
		if (!valid_name(l->name, false) || strncmp(l->name, "__", 2) == 0) {
			fail(w, -EINVAL, "%s: invalid label name \"%s\"", current_family(w),
			     l->name);
			return;
		}
		/* "le" is the histogram's own: a caller's would make two. */
		if (w->type == METRICS_HISTOGRAM && strcmp(l->name, "le") == 0 &&
		    (!suffix || strcmp(suffix, "_bucket") != 0 || le)) {
			fail(w, -EINVAL, "%s: label \"le\" is reserved", current_family(w));
			return;
		}
		for (const struct metrics_label *k = labels; k < l; k++) {
			if (strcmp(k->name, l->name) == 0) {
				fail(w, -EINVAL, "%s: label %s given twice", current_family(w),
				     l->name);
				return;
			}
		}
		put(w, any ? "," : "{", 1);
		put_str(w, l->name);
		put(w, "=\"", 2);
		put_escaped(w, l->value ? l->value : "", true);
		put(w, "\"", 1);
		any = true;
	}
	if (le) {
		put(w, any ? "," : "{", 1);
		put_str(w, "le=\"");
		put_str(w, le);
		put(w, "\"", 1);
		any = true;
	}
	if (any)
		put(w, "}", 1);
	put(w, " ", 1);
}

void
metrics_sample(struct metrics_writer *w, const char *suffix, const struct metrics_label *labels,
               double value)
{
	char num[32];

	if (!sample_allowed(w, suffix))
		return;
	if (w->type == METRICS_COUNTER && value < 0) {
		fail(w, -EINVAL, "counter %s: negative value", current_family(w));
		return;
	}
	format_double(num, sizeof(num), value);
	put_series(w, suffix, labels, NULL);
	put_str(w, num);
	put(w, "\n", 1);
}

void
metrics_sample_u64(struct metrics_writer *w, const char *suffix, const struct metrics_label *labels,
                   uint64_t value)
{
	char num[32];

	if (!sample_allowed(w, suffix))
		return;
	snprintf(num, sizeof(num), "%" PRIu64, value);
	put_series(w, suffix, labels, NULL);
	put_str(w, num);
	put(w, "\n", 1);
}

void
metrics_counter(struct metrics_writer *w, const struct metrics_label *labels, uint64_t value)
{
	metrics_sample_u64(w, NULL, labels, value);
}

void
metrics_gauge(struct metrics_writer *w, const struct metrics_label *labels, double value)
{
	metrics_sample(w, NULL, labels, value);
}

/* ---- the latency histogram ---- */

void
metrics_histogram_write(struct metrics_writer *w, const struct metrics_label *labels,
                        const struct histogram *h)
{
	uint64_t counts[HISTOGRAM_NBOUNDS + 1], cumulative = 0, sum_ns;
	char le[32], num[32];

	if (!sample_allowed(w, "_bucket"))
		return;
	/* _count is the sum of the buckets as read: always equal to the +Inf bucket. */
	histogram_read(h, counts, &sum_ns);
	for (size_t i = 0; i <= HISTOGRAM_NBOUNDS; i++) {
		cumulative += counts[i];
		if (i < HISTOGRAM_NBOUNDS)
			format_double(le, sizeof(le), histogram_bounds[i]);
		else
			format_double(le, sizeof(le), INFINITY);
		snprintf(num, sizeof(num), "%" PRIu64, cumulative);
		put_series(w, "_bucket", labels, le);
		put_str(w, num);
		put(w, "\n", 1);
	}
	metrics_sample(w, "_sum", labels, (double)sum_ns / 1e9);
	metrics_sample_u64(w, "_count", labels, cumulative);
}

/* ---- the HTTP endpoint ---- */

#define DEFAULT_TIMEOUT_MS  5000
#define DEFAULT_MAX_CLIENTS 8
/*
 * After an answer, unread request bytes are read and dropped for at most this long, and this
 * much: closing with unread data sends a reset, which can destroy the answer in flight
 * (RFC 9112 section 9.6).
 */
#define LINGER_MS    2000
#define LINGER_BYTES (256 * 1024)
/* Bytes read per wakeup while lingering, so that a flooding client cannot hold the loop. */
#define LINGER_CHUNK (64 * 1024)
/* Out of descriptors: stop accepting for this long rather than spin on a readable socket. */
#define ACCEPT_BACKOFF_MS 1000

static const char content_type_metrics[] = "text/plain; version=0.0.4; charset=utf-8";
static const char content_type_text[] = "text/plain; charset=utf-8";
static const char index_page[] = "gatewayd metrics exporter\n"
                                 "The metrics, in the Prometheus text format, are at /metrics\n";

enum conn_state { CONN_READING, CONN_WRITING, CONN_LINGERING };

struct conn {
	struct metrics_server *srv;
	int fd;
	enum conn_state state;
	struct gw_timer *timer;
	char req[METRICS_HTTP_MAX_REQUEST];
	size_t req_len;
	/* The answer: head, then body (static text, or the writer's buffer). */
	char head[256];
	size_t head_len;
	const char *body;
	size_t body_len;
	size_t sent;
	size_t lingered;
	struct metrics_writer *w;
};

struct metrics_server {
	struct gw_loop *loop;
	int fd;
	uint16_t port;
	unsigned int timeout_ms;
	unsigned int max_clients;
	metrics_collect_fn collect;
	void *data;
	struct conn **conns;
	unsigned int nconns;
	bool accepting;
	struct gw_timer *backoff;
};

static void
set_accepting(struct metrics_server *srv, bool on)
{
	if (srv->fd < 0 || srv->accepting == on)
		return;
	if (gw_loop_mod_fd(srv->loop, srv->fd, on ? EPOLLIN : 0) == 0)
		srv->accepting = on;
}

static void
conn_free(struct conn *c)
{
	struct metrics_server *srv = c->srv;

	for (unsigned int i = 0; i < srv->nconns; i++) {
		if (srv->conns[i] == c) {
			srv->conns[i] = srv->conns[--srv->nconns];
			break;
		}
	}
	gw_loop_del_fd(srv->loop, c->fd);
	close(c->fd);
	gw_timer_free(c->timer);
	metrics_writer_free(c->w);
	free(c);
	if (gw_timer_remaining(srv->backoff) < 0)
		set_accepting(srv, true);
}

static void
conn_timed_out(struct gw_timer *t, void *data)
{
	struct conn *c = data;

	(void)t;
	if (c->state == CONN_READING)
		log_debug("metrics: client sent no complete request within %u ms; closed",
		          c->srv->timeout_ms);
	else if (c->state == CONN_WRITING)
		log_debug("metrics: client did not take its answer within %u ms; closed",
		          c->srv->timeout_ms);
	conn_free(c);
}

static void
linger(struct conn *c)
{
	char scratch[4096];
	size_t budget = LINGER_CHUNK;

	while (budget > 0) {
		ssize_t n = read(c->fd, scratch, sizeof(scratch));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			conn_free(c);
			return;
		}
		c->lingered += (size_t)n;
		if (c->lingered > LINGER_BYTES) {
			conn_free(c);
			return;
		}
		budget = (size_t)n < budget ? budget - (size_t)n : 0;
	}
}

/* Sends what the socket takes; once all is sent, half-closes and lingers. */
static void
send_some(struct conn *c)
{
	while (c->sent < c->head_len + c->body_len) {
		struct iovec iov[2];
		struct msghdr msg = {.msg_iov = iov};
		ssize_t n;

		if (c->sent < c->head_len) {
			iov[0] = (struct iovec){c->head + c->sent, c->head_len - c->sent};
			iov[1] = (struct iovec){(void *)c->body, c->body_len};
			msg.msg_iovlen = c->body_len ? 2 : 1;
		} else {
			size_t off = c->sent - c->head_len;

			iov[0] = (struct iovec){(void *)(c->body + off), c->body_len - off};
			msg.msg_iovlen = 1;
		}
		n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			if (gw_loop_mod_fd(c->srv->loop, c->fd, EPOLLOUT) < 0)
				conn_free(c);
			return;
		}
		if (n < 0) {
			log_debug("metrics: client went away during the answer: %s",
			          strerror(errno));
			conn_free(c);
			return;
		}
		c->sent += (size_t)n;
	}
	shutdown(c->fd, SHUT_WR);
	c->state = CONN_LINGERING;
	if (gw_loop_mod_fd(c->srv->loop, c->fd, EPOLLIN) < 0) {
		conn_free(c);
		return;
	}
	gw_timer_arm(c->timer, c->srv->timeout_ms < LINGER_MS ? c->srv->timeout_ms : LINGER_MS);
	linger(c);
}

static const char *
reason_phrase(int status)
{
	switch (status) {
	case 200:
		return "OK";
	case 400:
		return "Bad Request";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 414:
		return "URI Too Long";
	case 431:
		return "Request Header Fields Too Large";
	case 500:
		return "Internal Server Error";
	case 505:
		return "HTTP Version Not Supported";
	default:
		return "Error";
	}
}

/* Queues the answer and starts sending it; Connection: close, one request per connection. */
static void
respond(struct conn *c, int status, const char *type, const char *body, size_t body_len,
        bool head_only)
{
	int n;

	n = snprintf(c->head, sizeof(c->head),
	             "HTTP/1.1 %d %s\r\n"
	             "Content-Type: %s\r\n"
	             "Content-Length: %zu\r\n"
	             "%s"
	             "Connection: close\r\n"
	             "\r\n",
	             status, reason_phrase(status), type, body_len,
	             status == 405 ? "Allow: GET, HEAD\r\n" : "");
	c->head_len = n > 0 && (size_t)n < sizeof(c->head) ? (size_t)n : 0;
	c->body = body;
	c->body_len = head_only ? 0 : body_len;
	c->sent = 0;
	c->state = CONN_WRITING;
	/* The client has as long again to take the answer. */
	gw_timer_arm(c->timer, c->srv->timeout_ms);
	send_some(c);
}

static void
respond_error(struct conn *c, int status, const char *text)
{
	respond(c, status, content_type_text, text, strlen(text), false);
}

static void
respond_metrics(struct conn *c, bool head_only)
{
	struct metrics_server *srv = c->srv;
	const char *body;
	size_t len;
	int r;

	c->w = metrics_writer_new();
	srv->collect(c->w, srv->data);
	r = metrics_writer_error(c->w);
	if (r < 0) {
		log_warnx("metrics: collecting the metrics failed: %s; answered 500", strerror(-r));
		respond_error(c, 500, "collecting the metrics failed; see the gateway's log\n");
		return;
	}
	body = metrics_writer_data(c->w, &len);
	respond(c, 200, content_type_metrics, body, len, head_only);
}

static bool
is_tchar(char ch)
{
	/* RFC 9110 section 5.6.2: token characters. */
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/*
 * Where the request's header section ends (just past its empty line), or 0 if it has not
 * arrived yet. Bare LF line ends are accepted as RFC 9112 section 2.2 allows.
 */
static size_t
header_end(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (p[i] != '\n')
			continue;
		if (i + 1 < len && p[i + 1] == '\n')
			return i + 2;
		if (i + 2 < len && p[i + 1] == '\r' && p[i + 2] == '\n')
			return i + 3;
	}
	return 0;
}

/* Parses the request line in c->req and answers it. */
static void
handle_request(struct conn *c, size_t start)
{
	char *line = c->req + start, *eol, *method, *target, *version, *sp;
	bool head_only;
	size_t pathlen;

	eol = memchr(line, '\n', c->req_len - start);
	*eol = '\0';
	if (eol > line && eol[-1] == '\r')
		eol[-1] = '\0';
	method = line;
	sp = strchr(method, ' ');
	if (!sp || sp == method)
		goto bad;
	*sp = '\0';
	target = sp + 1;
	sp = strchr(target, ' ');
	if (!sp || sp == target)
		goto bad;
	*sp = '\0';
	version = sp + 1;
	for (const char *p = method; *p; p++) {
		if (!is_tchar(*p))
			goto bad;
	}
	if (strncmp(version, "HTTP/", 5) != 0 || strchr(version, ' '))
		goto bad;
	if (strcmp(version, "HTTP/1.0") != 0 && strcmp(version, "HTTP/1.1") != 0) {
		respond_error(c, 505, "HTTP/1.0 and HTTP/1.1 only\n");
		return;
	}
	log_debug("metrics: %s %s", method, target);
	if (strcmp(method, "GET") == 0)
		head_only = false;
	else if (strcmp(method, "HEAD") == 0)
		head_only = true;
	else {
		respond_error(c, 405, "only GET and HEAD are served here\n");
		return;
	}
	/* The absolute form (RFC 9112 section 3.2.2): the path after the authority. */
	if (strncasecmp(target, "http://", 7) == 0) {
		target = strchr(target + 7, '/');
		if (!target)
			target = "/";
	}
	pathlen = strcspn(target, "?#");
	if (pathlen == strlen("/metrics") && strncmp(target, "/metrics", pathlen) == 0)
		respond_metrics(c, head_only);
	else if (pathlen == 1 && target[0] == '/')
		respond(c, 200, content_type_text, index_page, strlen(index_page), head_only);
	else
		respond_error(c, 404, "not found; the metrics are at /metrics\n");
	return;
bad:
	respond_error(c, 400, "malformed request\n");
}

static void
conn_readable(struct conn *c)
{
	size_t start = 0, end;
	bool eof = false;

	while (c->req_len < sizeof(c->req)) {
		ssize_t n = read(c->fd, c->req + c->req_len, sizeof(c->req) - c->req_len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n < 0) {
			conn_free(c);
			return;
		}
		if (n == 0) {
			eof = true;
			break;
		}
		c->req_len += (size_t)n;
	}
	/* Empty lines before the request line are ignored (RFC 9112 section 2.2). */
	while (start < c->req_len && (c->req[start] == '\r' || c->req[start] == '\n'))
		start++;
	if (memchr(c->req, '\0', c->req_len)) {
		respond_error(c, 400, "malformed request\n");
		return;
	}
	end = header_end(c->req + start, c->req_len - start);
	if (end > 0) {
		handle_request(c, start);
		return;
	}
	if (c->req_len == sizeof(c->req)) {
		bool line_done = memchr(c->req + start, '\n', c->req_len - start) != NULL;

		log_debug("metrics: request larger than %d bytes refused",
		          METRICS_HTTP_MAX_REQUEST);
		if (line_done)
			respond_error(c, 431, "request header section too large\n");
		else
			respond_error(c, 414, "request line too long\n");
		return;
	}
	if (eof)
		conn_free(c);
}

static void
conn_event(int fd, uint32_t events, void *data)
{
	struct conn *c = data;

	(void)fd;
	(void)events; /* errors and hang-ups show in read() and sendmsg() */
	switch (c->state) {
	case CONN_READING:
		conn_readable(c);
		break;
	case CONN_WRITING:
		send_some(c);
		break;
	case CONN_LINGERING:
		linger(c);
		break;
	}
}

static void
backoff_over(struct gw_timer *t, void *data)
{
	struct metrics_server *srv = data;

	(void)t;
	if (srv->nconns < srv->max_clients)
		set_accepting(srv, true);
}

static void
accept_ready(int fd, uint32_t events, void *data)
{
	struct metrics_server *srv = data;

	(void)events;
	while (srv->nconns < srv->max_clients) {
		struct conn *c;
		int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (cfd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EAGAIN)
				return;
			log_warn("metrics: cannot accept a connection");
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				set_accepting(srv, false);
				gw_timer_arm(srv->backoff, ACCEPT_BACKOFF_MS);
			}
			return;
		}
		c = xcalloc(1, sizeof(*c));
		*c = (struct conn){.srv = srv, .fd = cfd, .state = CONN_READING};
		c->timer = gw_timer_new(srv->loop, conn_timed_out, c);
		gw_timer_arm(c->timer, srv->timeout_ms);
		if (gw_loop_add_fd(srv->loop, cfd, EPOLLIN, conn_event, c) < 0) {
			gw_timer_free(c->timer);
			close(cfd);
			free(c);
			return;
		}
		srv->conns[srv->nconns++] = c;
	}
	/* Full: further clients wait in the listen backlog until a slot frees. */
	set_accepting(srv, false);
}

static bool
is_loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

		return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
	}
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
		const uint8_t *a = sin6->sin6_addr.s6_addr;

		return IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr) ||
		       (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr) && a[12] == 127);
	}
	return false;
}

/* A numeric address, optionally in brackets, or "localhost"; no name lookup on the loop. */
static int
parse_address(const char *address, uint16_t port, struct sockaddr_storage *ss, socklen_t *sslen)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	char buf[INET6_ADDRSTRLEN + 2];
	size_t n = strlen(address);

	memset(ss, 0, sizeof(*ss));
	if (strcmp(address, "localhost") == 0)
		address = "127.0.0.1";
	else if (n >= 2 && n < sizeof(buf) && address[0] == '[' && address[n - 1] == ']') {
		memcpy(buf, address + 1, n - 2);
		buf[n - 2] = '\0';
		address = buf;
	}
	if (inet_pton(AF_INET, address, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		*sslen = sizeof(*sin);
		return 0;
	}
	if (inet_pton(AF_INET6, address, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		*sslen = sizeof(*sin6);
		return 0;
	}
	return -EINVAL;
}

int
metrics_server_new(struct metrics_server **out, struct gw_loop *loop,
                   const struct metrics_server_options *opt, metrics_collect_fn collect, void *data)
{
	const char *address = opt->address ? opt->address : "127.0.0.1";
	struct metrics_server *srv;
	struct sockaddr_storage ss;
	socklen_t sslen;
	int one = 1, r;

	r = parse_address(address, opt->port, &ss, &sslen);
	if (r < 0) {
		log_warnx("metrics: \"%s\" is not a numeric IPv4 or IPv6 address", address);
		return r;
	}
	if (!is_loopback(&ss)) {
		log_warnx("metrics: refusing to listen on %s: the metrics endpoint has no "
		          "authentication and is served on loopback only (127.0.0.1 or ::1)",
		          address);
		return -EADDRNOTAVAIL;
	}
	srv = xcalloc(1, sizeof(*srv));
	*srv = (struct metrics_server){
	        .loop = loop,
	        .fd = -1,
	        .timeout_ms = opt->timeout_ms ? opt->timeout_ms : DEFAULT_TIMEOUT_MS,
	        .max_clients = opt->max_clients ? opt->max_clients : DEFAULT_MAX_CLIENTS,
	        .collect = collect,
	        .data = data,
	};
	srv->conns = xcalloc(srv->max_clients, sizeof(*srv->conns));
	srv->backoff = gw_timer_new(loop, backoff_over, srv);
	srv->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	/* SO_REUSEADDR: a restarted daemon rebinds while old connections sit in TIME_WAIT. */
	if (srv->fd < 0 || setsockopt(srv->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(srv->fd, (struct sockaddr *)&ss, sslen) < 0 || listen(srv->fd, 16) < 0 ||
	    getsockname(srv->fd, (struct sockaddr *)&ss, &sslen) < 0) {
		r = -errno;
		log_warn("metrics: cannot listen on %s port %u", address, opt->port);
		goto fail;
	}
	srv->port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
	                                          : ((struct sockaddr_in6 *)&ss)->sin6_port);
	r = gw_loop_add_fd(loop, srv->fd, EPOLLIN, accept_ready, srv);
	if (r < 0)
		goto fail;
	srv->accepting = true;
	log_info("metrics: serving http://%s%s%s:%u/metrics",
	         ss.ss_family == AF_INET6 && address[0] != '[' ? "[" : "", address,
	         ss.ss_family == AF_INET6 && address[0] != '[' ? "]" : "", srv->port);
	*out = srv;
	return 0;
fail:
	if (srv->fd >= 0)
		close(srv->fd);
	srv->fd = -1;
	metrics_server_free(srv);
	return r;
}

void
metrics_server_free(struct metrics_server *srv)
{
	if (!srv)
		return;
	if (srv->fd >= 0) {
		gw_loop_del_fd(srv->loop, srv->fd);
		close(srv->fd);
		srv->fd = -1;
	}
	while (srv->nconns > 0)
		conn_free(srv->conns[0]);
	gw_timer_free(srv->backoff);
	free(srv->conns);
	free(srv);
}

uint16_t
metrics_server_port(const struct metrics_server *srv)
{
	return srv->port;
}
