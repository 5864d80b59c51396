/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_CONTROL_H
#define GW_CONTROL_H

#include <stddef.h>
#include <stdint.h>

/*
 * The control socket: gwctl sends one request per connection, gatewayd runs it with
 * admin_run() on its loop and answers. A request is the command's words and the content of
 * the file the verb needs; the answer is the exit status and what to print.
 *
 * Framing, all integers 32-bit big-endian: "GWCTL1", argc, then per word its length and
 * bytes, then the input's length and bytes. Answer: status, out length, out, err length, err.
 * Only root and the daemon's own user may connect (SO_PEERCRED).
 */

struct gw_loop;
struct keystore;
struct control;

#define CONTROL_MAX_REQUEST (1 << 20)

struct admin_hooks;

/* Listens on path (replacing a stale socket), mode 0660. hooks must outlive the control. */
int control_new(struct control **out, struct gw_loop *loop, const char *path, struct keystore *ks,
                const struct admin_hooks *hooks);
/* Stops listening and removes the socket file. Accepts NULL. */
void control_free(struct control *ctl);

struct admin_request;

/* The most words a request may have. */
#define CONTROL_MAX_ARGS 64

/*
 * The daemon's reader of a request: buf holds the first buflen bytes a client sent. Returns 1
 * when they are one whole, valid request: req then has its words, copied into argv (room for
 * CONTROL_MAX_ARGS, NULL on entry; the caller frees each, whatever the answer), and its input,
 * which points into buf. 0 when more bytes are needed; -EBADMSG for garbage, which no more
 * bytes can mend. No I/O, no state.
 */
int control_parse_request(const uint8_t *buf, size_t buflen, struct admin_request *req,
                          char **argv);

/* gwctl's side. Returns -ECONNREFUSED or -ENOENT when no daemon listens at path. */
int control_call(const char *path, int argc, char **argv, const char *input, size_t input_len,
                 int *status, char **out, size_t *out_len, char **err, size_t *err_len);

#endif
