/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_COAPIO_H
#define GW_COAPIO_H

#include <coap3/coap.h>
#include <stdbool.h>

/*
 * libcoap driven from an epoll loop that is not its own, at a cost per datagram that does not
 * grow with the number of sessions (issue 15).
 */

/* What one coapio_drain() reads at most, so that the caller's other events get their turn. */
#define COAPIO_READS_PER_WAKEUP 64

/*
 * Handles what is ready on ctx's epoll fd (coap_context_get_coap_fd()): datagrams, up to
 * COAPIO_READS_PER_WAKEUP, and libcoap's timer. Returns at once if nothing is.
 */
void coapio_drain(coap_context_t *ctx);

/*
 * True inside coapio_drain() while it asks libcoap for more reads than datagrams are known to
 * wait: libcoap's warnings about a read that found nothing are expected then, not news.
 */
bool coapio_reading_ahead(void);

#endif
