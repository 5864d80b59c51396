/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_ROUTER_H
#define GW_ROUTER_H

#include "coapbr.h"

/*
 * Joins the two bridges: an uplink from a sensor becomes a publish on its own device's
 * upstream session, and the publish's outcome becomes the sensor's CoAP answer.
 */

struct gwconf;
struct mqttbr;
struct router;

int router_new(struct router **out, const struct gwconf *conf, struct mqttbr *mqtt);
void router_free(struct router *rt);

/* A coapbr_uplink_fn; data is the router. */
void router_uplink(struct coapbr_request *req, const struct coapbr_uplink *up, void *data);

#endif
