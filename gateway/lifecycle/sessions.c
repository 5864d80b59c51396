/* SPDX-License-Identifier: Apache-2.0 */
#include "sessions.h"
#include "coapbr.h"
#include "device.h"
#include "enrol.h"
#include "keystore.h"
#include "log.h"
#include "mqttbr.h"
#include "router.h"
#include "spool.h"
#include "xalloc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct sessions {
	struct sessions_options o;
};

struct sessions *
sessions_new(const struct sessions_options *opt)
{
	struct sessions *s = xcalloc(1, sizeof(*s));

	s->o = *opt;
	return s;
}

void
sessions_free(struct sessions *s)
{
	free(s);
}

void
sessions_set_coap(struct sessions *s, struct coapbr *coap)
{
	s->o.coap = coap;
}

void
sessions_set_enrol(struct sessions *s, struct enrol *enrol)
{
	s->o.enrol = enrol;
}

void
sessions_set_on_demand(struct sessions *s, bool on_demand)
{
	s->o.on_demand = on_demand;
}

/* The device's attribute sessions ("always" or "on-demand", checked when set), else the config's.
 */
static bool
on_demand(const struct sessions *s, const struct device *dev)
{
	const char *v = keystore_attr(dev, "sessions");

	return v && *v ? strcmp(v, "on-demand") == 0 : s->o.on_demand;
}

bool
sessions_start(struct sessions *s, const char *id, enum sessions_how how)
{
	struct device *dev = device_find(keystore_devices(s->o.ks), id);
	const char *cert, *key;
	int r;

	if (!dev)
		return false;
	if (keystore_tls_files(s->o.ks, id, &cert, &key) == -ENOKEY) {
		if (!mqttbr_find(s->o.mqtt, id))
			log_info("%s: no certificate yet: no upstream session until %s", id,
			         s->o.enrol ? "it is enrolled" : "gwctl device import-cert");
		return false;
	}
	struct router_session topics;

	router_session_topics(s->o.router, dev, &topics);
	struct keystore_info info;
	struct mqttbr_session session = {
	        .cert_file = cert,
	        .key_file = key,
	        .status_topic = topics.has_status ? topics.status_topic : NULL,
	        .command_filter = topics.has_commands ? topics.command_filter : NULL,
	        .on_demand = on_demand(s, dev),
	};
	/* The client id and user name upstream.profile and the config make for it. */
	r = topics.ids_error;
	if (r < 0) {
		log_warnx("%s: no upstream session: cannot build its MQTT client id or user name "
		          "from upstream.client_id/username: %s",
		          id,
		          r == -ENOENT    ? "an attribute they name is not set (gwctl device set)"
		          : r == -ENOBUFS ? "too long"
		                          : "a value is empty or holds '/', '+' or '#'");
		/* A reload made it impossible: the session it had goes too. */
		if (how != SESSIONS_KEEP)
			mqttbr_remove_device(s->o.mqtt, id);
		return false;
	}
	/* The current certificate's end (not one on trial's): past it, refused until renewed. */
	if (keystore_device_info(s->o.ks, id, &info) == 0 && info.has_cert)
		session.not_after = info.not_after;
	session.client_id = topics.ids.client_id;
	session.username = topics.ids.has_username ? topics.ids.username : NULL;

	if (mqttbr_find(s->o.mqtt, id)) {
		mqttbr_set_on_demand(s->o.mqtt, id, session.on_demand);
		if (how == SESSIONS_KEEP ||
		    (how == SESSIONS_IF_CHANGED && mqttbr_session_same(s->o.mqtt, id, &session)))
			return false;
		mqttbr_remove_device(s->o.mqtt, id);
	}
	struct device_mqtt *mdev;

	r = mqttbr_add_device(s->o.mqtt, id, &session, &mdev);
	if (r < 0) {
		log_warnx("%s: cannot start its upstream session: %s", id, strerror(-r));
		return false;
	}
	/* Readings spooled before a restart: its connect goes before those of idle devices. */
	if (spool_depth(s->o.spool, dev, NULL) > 0)
		mqttbr_wanted(mdev);
	return true;
}

/*
 * Brings a device's sessions in line with the keystore: none for a device that is gone, not
 * usable or without a certificate; the one it has otherwise, or a fresh one when its
 * certificate changed or it has none yet. Sessions of devices that did not change stay up.
 */
static void
sync_sessions(struct sessions *s, const char *id, enum sessions_change what)
{
	if (!keystore_device_usable(s->o.ks, id)) {
		/* Suspended, revoked, disabled or removed: its sensor is cut off at once too. */
		mqttbr_remove_device(s->o.mqtt, id);
		if (s->o.coap)
			coapbr_drop_device(s->o.coap, id, false);
		/* A removed device's spool and commands went with it (the router's watcher). */
		return;
	}
	/* A new PSK: sessions on an identity that is no longer valid (no grace) go now. */
	if (what == SESSIONS_CHANGE_PSK) {
		if (s->o.coap)
			coapbr_drop_device(s->o.coap, id, true);
		return;
	}
	if (what == SESSIONS_CHANGE_CERT)
		mqttbr_remove_device(s->o.mqtt, id);
	/*
	 * A new certificate is tried at once, on demand too: a renewal on trial waits for the
	 * broker's verdict, and the operator who imported one wants to hear it.
	 */
	if (sessions_start(s, id, SESSIONS_KEEP) && what == SESSIONS_CHANGE_CERT)
		mqttbr_wanted(mqttbr_find(s->o.mqtt, id));
}

void
sessions_device_changed(struct sessions *s, const char *id, enum sessions_change what)
{
	char *copy = xstrdup(id);

	sync_sessions(s, copy, what);
	enrol_device_changed(s->o.enrol, copy);
	free(copy);
}

void
sessions_tls_changed(const char *id, bool restart, void *data)
{
	struct sessions *s = data;
	const char *cert, *key;

	if (restart)
		sync_sessions(s, id, SESSIONS_CHANGE_CERT);
	else if (keystore_tls_files(s->o.ks, id, &cert, &key) == 0)
		mqttbr_set_tls_files(s->o.mqtt, id, cert, key);
}

void
sessions_judged(const char *id, bool accepted, const char *reason, void *data)
{
	struct sessions *s = data;

	/* The router heard already, from the device's upstream state (device.h). */
	enrol_upstream(s->o.enrol, id, accepted, reason);
}
