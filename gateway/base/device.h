/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_DEVICE_H
#define GW_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

/*
 * The devices the gateway serves: one refcounted object per device, found by id once (when a
 * sensor's DTLS session names it, when a gwctl verb does) and then carried: by the sensor's
 * session, by the request waiting for its answer, by the publish waiting for its PUBACK. Each
 * module hangs its own state for the device on it, in its own slot, so that no module keeps a
 * map of its own keyed by the id.
 *
 * Loop thread only (DESIGN.md 5): the count is not atomic. The TPM worker never sees a device.
 */

/*
 * Device and gateway ids become MQTT client ids, topic levels and folder names: 1 to
 * DEVICE_ID_MAX letters, digits, '.', '_' or '-', starting with a letter or digit. Names that
 * sit beside them (policy and attribute names, groups) follow the same rule.
 */
#define DEVICE_ID_MAX 64

bool device_id_valid(const char *id);

enum device_state {
	DEVICE_ACTIVE,
	DEVICE_SUSPENDED, /* by the operator: the sensor is refused, the session closed */
	DEVICE_REVOKED,   /* for good: only removal follows */
	DEVICE_GONE,      /* removed: what still holds it lets go */
};

/* May its data go upstream: the one answer, kept by bridges/mqtt. */
enum device_upstream {
	DEVICE_UPSTREAM_NONE, /* no session: no usable certificate, or the device is not usable */
	DEVICE_UPSTREAM_WAITING, /* connecting, or waiting to: the spool takes its data */
	DEVICE_UPSTREAM_UP,      /* connected */
	DEVICE_UPSTREAM_REFUSED, /* the broker refused its identity, or its certificate expired:
	                            nothing is taken (5.03) until an operator or a renewal acts */
};

struct device_registry;
/* The modules' own state for a device; each module defines its own. */
struct device_ks;
struct device_spool;
struct device_flow;
struct device_mqtt;
struct device_enrol;

struct device {
	char id[DEVICE_ID_MAX + 1];    /* valid by device_id_valid(); never changes */
	enum device_state state;       /* kept by the keystore */
	bool enabled;                  /* the attribute "enabled" is not "false"; the keystore's */
	enum device_upstream upstream; /* set through device_set_upstream() only */
	/* Sensor sessions observing its commands (bridges/coap's): an on-demand session stays up.
	 */
	unsigned observers;
	/* Each slot belongs to one module, which sets it and clears it before the last unref. */
	struct device_ks *ks;       /* keystore/ */
	struct device_spool *spool; /* gateway/data/spool.c */
	struct device_flow *flow;   /* gateway/data/router.c (and its command queue) */
	struct device_mqtt *mqtt;   /* bridges/mqtt */
	struct device_enrol *enrol; /* gateway/lifecycle/enrol.c */
	/* Private to device.c. */
	unsigned refs;
	struct device_registry *reg; /* NULL once removed */
};

struct device_registry *device_registry_new(void);
/* Frees the registry and lets go of its references; accepts NULL. */
void device_registry_free(struct device_registry *reg);
/*
 * A new device, ACTIVE and enabled, upstream NONE, held by the registry until removed; *out
 * borrows it. -EINVAL if id is not valid, -EEXIST if a device has it.
 */
int device_add(struct device_registry *reg, const char *id, struct device **out);
/* The device with id, borrowed (take a reference to keep it past this call), or NULL. */
struct device *device_find(const struct device_registry *reg, const char *id);
/*
 * Takes dev out of the registry: its state becomes GONE, its id free for a new device at
 * once, and the registry's reference is dropped. Whoever still holds it reads only id and
 * state, and lets go.
 */
void device_remove(struct device_registry *reg, struct device *dev);
/*
 * Watchers of removals, called in the order they were set, with the device GONE and out of
 * the registry: each clears its module's slot and lets go of what it hangs there. A module
 * freed before the registry takes its watcher back.
 */
void device_registry_on_remove(struct device_registry *reg,
                               void (*fn)(struct device *dev, void *data), void *data);
void device_registry_off_remove(struct device_registry *reg,
                                void (*fn)(struct device *dev, void *data), void *data);
struct device *device_ref(struct device *dev);
/* Drops a reference; the last one frees it (every slot must be clear by then). NULL is fine. */
void device_unref(struct device *dev);
/* The devices in id order: device_at(reg, 0 .. device_count(reg) - 1), borrowed. */
size_t device_count(const struct device_registry *reg);
struct device *device_at(const struct device_registry *reg, size_t i);
/* ACTIVE and enabled: its sensor may talk, its data may flow. */
bool device_usable(const struct device *dev);
/*
 * Sets dev's upstream state; when it changes, the registry's watcher (one) hears of it with
 * what it was. bridges/mqtt alone calls it.
 */
void device_set_upstream(struct device *dev, enum device_upstream st);
void device_registry_on_upstream(struct device_registry *reg,
                                 void (*fn)(struct device *dev, enum device_upstream was,
                                            void *data),
                                 void *data);

#endif
