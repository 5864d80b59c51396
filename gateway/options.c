/* SPDX-License-Identifier: Apache-2.0 */
#include "options.h"
#include "coapbr.h"
#include "conf.h"
#include "enrol.h"
#include "keystore.h"
#include "mqttbr.h"
#include "spool.h"

#include <sys/resource.h>

void
options_keystore(struct keystore_config *out, const struct gwconf *conf)
{
	*out = (struct keystore_config){
	        .state_dir = conf->state_dir,
	        .backend = conf->keystore.backend,
	        .tcti = conf->keystore.tcti,
	        .parent = conf->keystore.parent,
	        .create_parent = conf->keystore.create_parent,
	        .device_ca_file = conf->keystore.device_ca_file,
	        .psk_grace = (unsigned)conf->keystore.psk_grace,
	};
}

void
options_mqttbr(struct mqttbr_options *out, const struct gwconf *conf)
{
	*out = (struct mqttbr_options){
	        .broker = conf->upstream.broker,
	        .host = conf->upstream.broker_host,
	        .port = conf->upstream.broker_port,
	        .ca_file = conf->upstream.ca_file,
	        .alpn = (const char *const *)conf->upstream.alpn,
	        .nalpn = conf->upstream.nalpn,
	        /* MQTT 5 unless 3.1.1 is asked for (a config built by hand has 0 there). */
	        .mqtt311 = conf->upstream.mqtt_version == GWCONF_MQTT_311,
	        .keepalive = conf->upstream.keepalive,
	        .connect_timeout = conf->upstream.connect_timeout,
	        .publish_timeout = conf->upstream.publish_timeout,
	        .reconnect_min = conf->upstream.reconnect_min,
	        .reconnect_max = conf->upstream.reconnect_max,
	        .rejected_retry = conf->upstream.rejected_retry,
	        .session_lifetime = (unsigned)conf->upstream.tls_session_lifetime,
	        .online = conf->presence.online ? conf->presence.online : "online",
	        .offline = conf->presence.offline ? conf->presence.offline : "offline",
	        .presence_qos = conf->presence.qos,
	        .command_qos = conf->downlink.qos,
	        .idle_timeout = conf->upstream.idle_timeout,
	        .session_expiry = (unsigned)conf->upstream.session_expiry,
	};
}

void
options_coapbr(struct coapbr_options *out, const struct gwconf *conf)
{
	*out = (struct coapbr_options){
	        .listen = conf->sensors.listen,
	        .port = conf->sensors.port,
	        .receive_buffer = conf->sensors.receive_buffer,
	        .max_sessions = (size_t)conf->sensors.max_sessions,
	        .max_payload = (size_t)conf->sensors.max_payload,
	        .piggyback_wait = (unsigned)conf->sensors.piggyback_wait,
	        .routes = conf->routes,
	        .nroutes = conf->nroutes,
	        /* Commands come down only on a subscription: with downlink.topic (a restart's key).
	         */
	        .commands_resource = conf->downlink.topic ? conf->downlink.resource : NULL,
	};
}

void
options_enrol(struct enrol_options *out, const struct gwconf *conf)
{
	*out = (struct enrol_options){
	        .url = conf->est.url,
	        .ca_file = conf->est.ca_file,
	        .timeout = conf->est.timeout,
	        .auto_enroll = conf->est.auto_enroll,
	        .renew_at = conf->est.renew_at,
	        .renew_jitter = conf->est.renew_jitter,
	        .retry_min = conf->est.retry_min,
	        .retry_max = conf->est.retry_max,
	};
}

/*
 * A quarter of the open-file limit for the spool's segments, the rest for the spool's folders,
 * the upstream sockets and everything else: the devices that send at once then keep theirs
 * open, where the old fixed 32 had every reading of a fleet of 1,000 open and close its
 * segment (and walk every device to close 32 at a time).
 */
static size_t
spool_open_files(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		return 65536;
	if (rl.rlim_cur / 4 < SPOOL_OPEN_DEFAULT)
		return SPOOL_OPEN_DEFAULT;
	return rl.rlim_cur / 4 > 65536 ? 65536 : (size_t)(rl.rlim_cur / 4);
}

void
options_spool(struct spool_limits *out, const struct gwconf *conf)
{
	*out = (struct spool_limits){
	        .device_bytes = (uint64_t)conf->spool.device_bytes,
	        .total_bytes = (uint64_t)conf->spool.total_bytes,
	        .max_age = (unsigned)conf->spool.max_age,
	        .full = conf->spool.drop_oldest ? SPOOL_DROP_OLDEST : SPOOL_REFUSE,
	        .segment_bytes = (size_t)conf->spool.segment_bytes,
	        .open_files = spool_open_files(),
	};
}
