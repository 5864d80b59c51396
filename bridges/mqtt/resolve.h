/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_RESOLVE_H
#define GW_RESOLVE_H

#include <stdint.h>
#include <sys/socket.h>

/*
 * The broker's addresses, looked up off the loop: getaddrinfo() may wait seconds for a DNS
 * server, and the loop serves every sensor meanwhile. A numeric host is answered at once.
 * One short-lived thread per lookup (at start, at a reload, after connects fail); the answer
 * comes back through an eventfd, on the loop.
 */

struct gw_loop;
struct resolve;

#define RESOLVE_MAX_ADDRS 8

struct resolve_result {
	int error; /* 0, or a getaddrinfo EAI_* code */
	const char *error_text;
	size_t naddrs;
	struct sockaddr_storage addrs[RESOLVE_MAX_ADDRS];
	socklen_t lens[RESOLVE_MAX_ADDRS];
};

typedef void (*resolve_fn)(const struct resolve_result *r, void *data);

/*
 * Looks host:port up and calls fn once, on the loop (never from within this call). Returns 0
 * or -errno.
 */
int resolve_start(struct resolve **out, struct gw_loop *loop, const char *host, uint16_t port,
                  resolve_fn fn, void *data);
/* Cancels before fn ran: fn is not called (after fn, r is gone: do not cancel it). The
 * thread, if any, finishes on its own. Accepts NULL. */
void resolve_cancel(struct resolve *r);

#endif
