/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libcoap 4.3.1 reads one datagram per epoll event it is handed, and after each batch of
 * events walks every session for its timeouts (coap_io_do_epoll() ends in
 * coap_io_prepare_epoll()). Handed one event per datagram, as coap_io_process() is, a gateway
 * with 1,000 sensor sessions walked all of them twice for every reading. So each round hands
 * it the socket's event several times over: once in the first round (the usual wakeup holds
 * one datagram), then twice as many as in the round before while datagrams are still waiting,
 * up to COAPIO_READS_PER_WAKEUP reads in all: one walk per round, at most 7 per wakeup. A
 * round that asks for more than waited costs one failed recvmsg() for each read too many, in
 * the last round only (Linux tells whether a UDP socket has a datagram waiting, not how many).
 */
#include "coapio.h"

#include <stddef.h>
#include <sys/epoll.h>

/* What libcoap's epoll set holds for a server: its listening sockets and its timer. */
#define LIBCOAP_EVENTS 4

static bool reading_ahead;

bool
coapio_reading_ahead(void)
{
	return reading_ahead;
}

void
coapio_drain(coap_context_t *ctx)
{
	struct epoll_event ready[LIBCOAP_EVENTS], batch[COAPIO_READS_PER_WAKEUP + LIBCOAP_EVENTS];
	int fd = coap_context_get_coap_fd(ctx);
	unsigned want = 1, asked = 0;

	while (asked < COAPIO_READS_PER_WAKEUP) {
		int n = epoll_wait(fd, ready, LIBCOAP_EVENTS, 0);
		size_t nb = 0;

		if (n <= 0)
			return;
		if (want > COAPIO_READS_PER_WAKEUP - asked)
			want = COAPIO_READS_PER_WAKEUP - asked;
		for (int i = 0; i < n; i++) {
			/* Its timer (no socket: NULL) is read once; a socket's readiness, want
			 * times. */
			unsigned copies =
			        ready[i].data.ptr && (ready[i].events & EPOLLIN) ? want : 1;

			for (unsigned c = 0; c < copies && nb < sizeof(batch) / sizeof(*batch); c++)
				batch[nb++] = ready[i];
		}
		reading_ahead = want > 1;
		coap_io_do_epoll(ctx, batch, nb);
		reading_ahead = false;
		asked += want;
		want *= 2;
	}
}
