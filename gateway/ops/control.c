/* SPDX-License-Identifier: Apache-2.0 */
#include "control.h"
#include "admin.h"
#include "log.h"
#include "loop.h"
#include "xalloc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAGIC       "GWCTL1"
#define MAGIC_LEN   6
#define MAX_CLIENTS 8
#define MAX_ARGS    64
/*
 * A client that has not sent its whole request by then is dropped; and when every slot is
 * taken, the one idle longest makes room for a new one, so that clients that connect and send
 * nothing never lock gwctl out (gwctl sends its request at once).
 */
#define CLIENT_TIMEOUT_MS 5000
/* The loop blocks at most this long on a client that does not read its answer. */
#define SEND_TIMEOUT_MS 1000

struct client {
	struct control *ctl;
	int fd; /* -1 once gwctl went away while its answer was pending */
	uint8_t *buf;
	size_t len, cap;
	struct gw_timer *timer;
	/* The answer being written: at once, or later for a pending verb. */
	FILE *fo, *fe;
	char *out, *err;
	size_t out_len, err_len;
	bool pending;
	uint64_t accepted_ms;
};

struct control {
	struct gw_loop *loop;
	struct keystore *ks;
	const struct admin_hooks *hooks;
	char *path;
	int fd;
	struct client *clients[MAX_CLIENTS];
};

/* ---- framing ---- */

struct reader {
	const uint8_t *p;
	size_t left;
};

static bool
get_u32(struct reader *r, uint32_t *v)
{
	uint32_t be;

	if (r->left < 4)
		return false;
	memcpy(&be, r->p, 4);
	*v = ntohl(be);
	r->p += 4;
	r->left -= 4;
	return true;
}

static bool
get_bytes(struct reader *r, const uint8_t **p, uint32_t *len)
{
	if (!get_u32(r, len) || r->left < *len)
		return false;
	*p = r->p;
	r->p += *len;
	r->left -= *len;
	return true;
}

static void
put_u32(FILE *f, uint32_t v)
{
	uint32_t be = htonl(v);

	fwrite(&be, 4, 1, f);
}

static void
put_bytes(FILE *f, const void *p, size_t len)
{
	put_u32(f, (uint32_t)len);
	if (len)
		fwrite(p, 1, len, f);
}

static int
write_all(int fd, const uint8_t *p, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0) {
			struct pollfd pfd = {.fd = fd, .events = POLLOUT};

			if (errno == EINTR)
				continue;
			if (errno != EAGAIN || poll(&pfd, 1, SEND_TIMEOUT_MS) <= 0)
				return -EIO;
			continue;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* ---- the daemon's side ---- */

static void
client_free(struct client *c)
{
	struct control *ctl = c->ctl;

	for (size_t i = 0; i < MAX_CLIENTS; i++) {
		if (ctl->clients[i] == c)
			ctl->clients[i] = NULL;
	}
	if (c->fd >= 0) {
		gw_loop_del_fd(ctl->loop, c->fd);
		close(c->fd);
	}
	if (c->fo)
		fclose(c->fo);
	if (c->fe)
		fclose(c->fe);
	/* The answer may carry a PSK (device add). */
	if (c->out)
		explicit_bzero(c->out, c->out_len);
	free(c->out);
	free(c->err);
	gw_timer_free(c->timer);
	if (c->buf)
		explicit_bzero(c->buf, c->cap);
	free(c->buf);
	free(c);
}

_Static_assert(MAX_ARGS == CONTROL_MAX_ARGS, "control.h promises MAX_ARGS words");

int
control_parse_request(const uint8_t *buf, size_t buflen, struct admin_request *req, char **argv)
{
	struct reader r;
	uint32_t argc, len;
	const uint8_t *p;

	if (buflen < MAGIC_LEN)
		return 0;
	if (memcmp(buf, MAGIC, MAGIC_LEN) != 0)
		return -EBADMSG;
	r = (struct reader){buf + MAGIC_LEN, buflen - MAGIC_LEN};
	if (!get_u32(&r, &argc))
		return 0;
	if (argc == 0 || argc > MAX_ARGS)
		return -EBADMSG;
	for (uint32_t i = 0; i < argc; i++) {
		if (!get_bytes(&r, &p, &len))
			return 0;
		if (memchr(p, '\0', len))
			return -EBADMSG;
	}
	if (!get_bytes(&r, &p, &len))
		return 0;
	if (r.left != 0)
		return -EBADMSG;
	*req = (struct admin_request){
	        .argc = (int)argc,
	        .argv = argv,
	        .input = len ? (const char *)p : NULL,
	        .input_len = len,
	};
	r = (struct reader){buf + MAGIC_LEN + 4, buflen - MAGIC_LEN - 4};
	for (uint32_t i = 0; i < argc; i++) {
		get_bytes(&r, &p, &len);
		argv[i] = xstrndup((const char *)p, len);
	}
	return 1;
}

/* The request a client sent so far: see control_parse_request(). */
static int
parse_request(const struct client *c, struct admin_request *req, char **argv)
{
	return control_parse_request(c->buf, c->len, req, argv);
}

/* Sends what the verb wrote, with its status. */
static void
reply(struct client *c, int status)
{
	char *resp = NULL;
	size_t resplen = 0;
	FILE *fr;

	fclose(c->fo);
	fclose(c->fe);
	c->fo = c->fe = NULL;
	fr = c->fd >= 0 ? open_memstream(&resp, &resplen) : NULL;
	if (fr) {
		put_u32(fr, (uint32_t)status);
		put_bytes(fr, c->out, c->out_len);
		put_bytes(fr, c->err, c->err_len);
		if (fclose(fr) == 0 && write_all(c->fd, (uint8_t *)resp, resplen) < 0)
			log_warnx("control: gwctl did not read its answer");
	}
	if (resp)
		explicit_bzero(resp, resplen);
	free(resp);
}

static void
late_answer(void *ctx, int status, const char *message)
{
	struct client *c = ctx;

	fprintf(status == 0 ? c->fo : c->fe, "%s\n", message);
	reply(c, status);
	client_free(c);
}

/* Runs the request; false while its answer is pending (the client must stay). */
static bool
answer(struct client *c, const struct admin_request *req)
{
	struct admin_request r = *req;
	int status;

	c->fo = open_memstream(&c->out, &c->out_len);
	c->fe = open_memstream(&c->err, &c->err_len);
	/* libc's streams: they fail for want of memory only; the client goes unanswered. */
	if (!c->fo || !c->fe)
		return true;
	log_info("control: gwctl %s%s%s", req->argv[0], req->argc > 1 ? " " : "",
	         req->argc > 1 ? req->argv[1] : "");
	r.done = late_answer;
	r.done_ctx = c;
	status = admin_run(c->ctl->ks, &r, c->fo, c->fe, c->ctl->hooks);
	if (status == ADMIN_PENDING) {
		/* The verb bounds its own wait (est.timeout); gwctl waits as long. */
		c->pending = true;
		gw_timer_disarm(c->timer);
		return false;
	}
	reply(c, status);
	return true;
}

static void
client_readable(int fd, uint32_t events, void *data)
{
	struct client *c = data;
	char *argv[MAX_ARGS] = {NULL};
	struct admin_request req;
	bool done = true, eof = false;
	int r;

	if (c->pending) {
		char scratch[256];
		ssize_t n = read(fd, scratch, sizeof(scratch));

		/*
		 * A client that shut down only its sending side waits for its answer: nothing
		 * more to read (epoll still reports a hang-up with no events asked for).
		 */
		if (n == 0 && !(events & EPOLLHUP)) {
			gw_loop_mod_fd(c->ctl->loop, fd, 0);
			return;
		}
		/*
		 * gwctl gave up: the answer, when it comes, goes nowhere, and the slot is free for
		 * other clients (enrol_free() answers before control_free() runs).
		 */
		if (n <= 0 && !(n < 0 && errno == EAGAIN)) {
			gw_loop_del_fd(c->ctl->loop, fd);
			close(fd);
			c->fd = -1;
			for (size_t i = 0; i < MAX_CLIENTS; i++) {
				if (c->ctl->clients[i] == c)
					c->ctl->clients[i] = NULL;
			}
		}
		return;
	}
	for (;;) {
		ssize_t n;

		if (c->len == c->cap) {
			size_t cap = c->cap ? c->cap * 2 : 4096;

			if (cap > CONTROL_MAX_REQUEST + 4096) {
				log_warnx("control: request larger than %d bytes refused",
				          CONTROL_MAX_REQUEST);
				client_free(c);
				return;
			}
			c->buf = xreallocarray(c->buf, cap, sizeof(*c->buf));
			c->cap = cap;
		}
		n = read(fd, c->buf + c->len, c->cap - c->len);
		if (n < 0 && errno == EAGAIN)
			break;
		if (n < 0) {
			client_free(c);
			return;
		}
		if (n == 0) {
			/* The end of the request (shutdown of its sending side) or of the client.
			 */
			eof = true;
			break;
		}
		c->len += (size_t)n;
	}
	r = parse_request(c, &req, argv);
	if (r == 0 && eof) {
		if (c->len > 0)
			log_warnx("control: client closed before its request was complete");
		client_free(c);
		return;
	}
	if (r == 0)
		return;
	/* Nothing more to read: a half-closed client would make the fd readable for ever. */
	if (eof)
		gw_loop_mod_fd(c->ctl->loop, fd, 0);
	if (r < 0)
		log_warnx("control: malformed request refused");
	else
		done = answer(c, &req);
	for (size_t i = 0; i < MAX_ARGS; i++)
		free(argv[i]);
	if (done)
		client_free(c);
}

static void
client_timed_out(struct gw_timer *t, void *data)
{
	(void)t;
	log_warnx("control: client sent no complete request within %d ms", CLIENT_TIMEOUT_MS);
	client_free(data);
}

/* The slot of the client that has waited longest without a whole request, or MAX_CLIENTS. */
static size_t
idlest(const struct control *ctl)
{
	size_t best = MAX_CLIENTS;

	for (size_t i = 0; i < MAX_CLIENTS; i++) {
		const struct client *c = ctl->clients[i];

		if (c && !c->pending &&
		    (best == MAX_CLIENTS || c->accepted_ms < ctl->clients[best]->accepted_ms))
			best = i;
	}
	return best;
}

static void
accept_client(int fd, uint32_t events, void *data)
{
	struct control *ctl = data;
	struct ucred cred = {.uid = (uid_t)-1};
	socklen_t len = sizeof(cred);
	struct client *c;
	size_t slot;
	int cfd;

	(void)events;
	cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (cfd < 0)
		return;
	/* The socket's mode already keeps others out; this holds if someone loosens it. */
	if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
	    (cred.uid != 0 && cred.uid != geteuid())) {
		log_warnx("control: refused a client with uid %d", (int)cred.uid);
		close(cfd);
		return;
	}
	for (slot = 0; slot < MAX_CLIENTS && ctl->clients[slot]; slot++)
		;
	if (slot == MAX_CLIENTS && (slot = idlest(ctl)) < MAX_CLIENTS) {
		log_warnx("control: %d clients at once: dropped one that sent no request for "
		          "%llu ms",
		          MAX_CLIENTS,
		          (unsigned long long)(gw_now_ms() - ctl->clients[slot]->accepted_ms));
		client_free(ctl->clients[slot]);
	}
	if (slot == MAX_CLIENTS) {
		log_warnx("control: too many clients at once, all waiting for their answers");
		close(cfd);
		return;
	}
	c = xcalloc(1, sizeof(*c));
	c->ctl = ctl;
	c->fd = cfd;
	c->accepted_ms = gw_now_ms();
	c->timer = gw_timer_new(ctl->loop, client_timed_out, c);
	if (gw_loop_add_fd(ctl->loop, cfd, EPOLLIN, client_readable, c) < 0) {
		gw_timer_free(c->timer);
		close(cfd);
		free(c);
		return;
	}
	ctl->clients[slot] = c;
	gw_timer_arm(c->timer, CLIENT_TIMEOUT_MS);
}

static int
unix_address(const char *path, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;
	strcpy(sa->sun_path, path);
	return 0;
}

int
control_new(struct control **out, struct gw_loop *loop, const char *path, struct keystore *ks,
            const struct admin_hooks *hooks)
{
	struct control *ctl = xcalloc(1, sizeof(*ctl));
	struct sockaddr_un sa;
	struct stat st;
	int r;

	*ctl = (struct control){.loop = loop, .ks = ks, .hooks = hooks, .fd = -1};
	ctl->path = xstrdup(path);
	if (unix_address(path, &sa) < 0) {
		r = -EINVAL;
		goto fail;
	}
	/* A socket left by a daemon that died; anything else at that path is not ours to remove. */
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(path);
	ctl->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (ctl->fd < 0 || bind(ctl->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    chmod(path, 0660) < 0 || listen(ctl->fd, 16) < 0) {
		r = -errno;
		log_warn("control: cannot listen on %s", path);
		goto fail;
	}
	r = gw_loop_add_fd(loop, ctl->fd, EPOLLIN, accept_client, ctl);
	if (r < 0)
		goto fail;
	*out = ctl;
	return 0;
fail:
	control_free(ctl);
	return r;
}

void
control_free(struct control *ctl)
{
	if (!ctl)
		return;
	for (size_t i = 0; i < MAX_CLIENTS; i++) {
		if (ctl->clients[i])
			client_free(ctl->clients[i]);
	}
	if (ctl->fd >= 0) {
		gw_loop_del_fd(ctl->loop, ctl->fd);
		close(ctl->fd);
		unlink(ctl->path);
	}
	free(ctl->path);
	free(ctl);
}

/* ---- gwctl's side ---- */

static int
read_all(int fd, uint8_t **buf, size_t *len)
{
	size_t cap = 4096;
	uint8_t *b = xmalloc(cap);

	*len = 0;
	for (;;) {
		ssize_t n;

		if (*len == cap)
			b = xreallocarray(b, cap *= 2, sizeof(*b));
		n = read(fd, b + *len, cap - *len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			free(b);
			return -errno;
		}
		if (n == 0)
			break;
		*len += (size_t)n;
	}
	*buf = b;
	return 0;
}

static char *
dup_bytes(const uint8_t *p, size_t len)
{
	char *s = xmalloc(len + 1);

	memcpy(s, p, len);
	s[len] = '\0';
	return s;
}

int
control_call(const char *path, int argc, char **argv, const char *input, size_t input_len,
             int *status, char **out, size_t *out_len, char **err, size_t *err_len)
{
	struct sockaddr_un sa;
	char *req = NULL;
	size_t reqlen = 0, resplen = 0;
	uint8_t *resp = NULL;
	const uint8_t *p;
	struct reader rd;
	uint32_t st, len;
	FILE *f;
	int fd, r;

	if (unix_address(path, &sa) < 0)
		return -ENAMETOOLONG;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	/* libc's stream, failing (here and at fclose()) for want of memory only. */
	f = open_memstream(&req, &reqlen);
	if (!f) {
		close(fd);
		return -ENOMEM;
	}
	fwrite(MAGIC, 1, MAGIC_LEN, f);
	put_u32(f, (uint32_t)argc);
	for (int i = 0; i < argc; i++)
		put_bytes(f, argv[i], strlen(argv[i]));
	put_bytes(f, input, input ? input_len : 0);
	if (fclose(f) != 0) {
		close(fd);
		free(req);
		return -ENOMEM;
	}
	r = write_all(fd, (uint8_t *)req, reqlen);
	free(req);
	if (r == 0)
		r = read_all(fd, &resp, &resplen);
	close(fd);
	if (r < 0)
		return r;
	rd = (struct reader){resp, resplen};
	r = -EBADMSG;
	if (get_u32(&rd, &st) && get_bytes(&rd, &p, &len)) {
		const uint8_t *o = p;
		uint32_t olen = len;

		if (get_bytes(&rd, &p, &len)) {
			*out = dup_bytes(o, olen);
			*out_len = olen;
			*err = dup_bytes(p, len);
			*err_len = len;
			*status = (int)st;
			r = 0;
		}
	}
	if (resp)
		explicit_bzero(resp, resplen);
	free(resp);
	return r;
}
