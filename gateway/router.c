/* SPDX-License-Identifier: Apache-2.0 */
#include "router.h"
#include "conf.h"
#include "log.h"
#include "mqttbr.h"
#include "template.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct router {
	const struct gwconf *conf;
	struct mqttbr *mqtt;
};

int
router_new(struct router **out, const struct gwconf *conf, struct mqttbr *mqtt)
{
	struct router *rt = calloc(1, sizeof(*rt));

	if (!rt)
		return -ENOMEM;
	rt->conf = conf;
	rt->mqtt = mqtt;
	*out = rt;
	return 0;
}

void
router_free(struct router *rt)
{
	free(rt);
}

static void
publish_done(struct mqttbr_device *dev, int status, void *data)
{
	struct coapbr_request *req = data;

	switch (status) {
	case 0:
		coapbr_complete(req, COAPBR_CHANGED, 0);
		break;
	case -EACCES:
		coapbr_complete(req, COAPBR_FORBIDDEN, 0);
		break;
	case -ENOTCONN:
	case -ETIMEDOUT:
	case -EAGAIN:
		/* Never a false success: the sensor keeps the reading and retries (DESIGN.md 6). */
		coapbr_complete(req, COAPBR_UNAVAILABLE, mqttbr_device_retry_after(dev));
		break;
	default:
		coapbr_complete(req, COAPBR_ERROR, 0);
		break;
	}
}

void
router_uplink(struct coapbr_request *req, const struct coapbr_uplink *up, void *data)
{
	struct router *rt = data;
	struct mqttbr_device *dev = mqttbr_find(rt->mqtt, up->device);
	struct tmpl_vars vars = {.value = {
	                                 [TMPL_DEVICE] = up->device,
	                                 [TMPL_PATH] = up->route->resource,
	                                 [TMPL_GATEWAY] = rt->conf->gateway_id,
	                         }};
	char topic[1024];
	ssize_t n;
	int r;

	if (!dev) {
		/* Paired on the sensor side but with no upstream session: nothing to send it on. */
		log_warnx("%s: no upstream session for this device", up->device);
		coapbr_complete(req, COAPBR_UNAVAILABLE, 60);
		return;
	}
	if (!mqttbr_device_up(dev)) {
		coapbr_complete(req, COAPBR_UNAVAILABLE, mqttbr_device_retry_after(dev));
		return;
	}
	n = tmpl_expand(up->route->topic, &vars, topic, sizeof(topic));
	if (n < 0) {
		log_warnx("%s: cannot build the topic from \"%s\": %s", up->device,
		          up->route->topic,
		          n == -ENOBUFS ? "longer than 1023 bytes" : "a value contains '+' or '#'");
		coapbr_complete(req, COAPBR_ERROR, 0);
		return;
	}
	r = mqttbr_publish(dev, topic, up->payload, up->len, up->route->qos, publish_done, req);
	if (r == -ENOTCONN)
		coapbr_complete(req, COAPBR_UNAVAILABLE, mqttbr_device_retry_after(dev));
	else if (r < 0)
		coapbr_complete(req, COAPBR_ERROR, 0);
	else
		log_debug("%s: %zu bytes to %s", up->device, up->len, topic);
}
