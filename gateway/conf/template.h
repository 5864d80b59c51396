/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_TEMPLATE_H
#define GW_TEMPLATE_H

#include <stddef.h>
#include <sys/types.h>

/*
 * MQTT topic templates: literal text with ${device}, ${path}, ${gateway} and ${attr.NAME}
 * (the device's attribute NAME, see `gwctl device set`) placeholders. Checked once when the
 * config is loaded, expanded for every message.
 */

enum tmpl_var { TMPL_DEVICE, TMPL_PATH, TMPL_GATEWAY, TMPL_NVARS };

/* Looks up a device attribute for ${attr.NAME}; name is not NUL-terminated. NULL: unset. */
typedef const char *(*tmpl_attr_fn)(const char *name, size_t len, void *data);

struct tmpl_vars {
	const char *value[TMPL_NVARS];
	tmpl_attr_fn attr; /* NULL: every attribute expands to "" */
	void *attr_data;
};

/* 0 if tmpl is a valid publish-topic template, else -EINVAL and a reason in err. */
int tmpl_check(const char *tmpl, char *err, size_t errlen);
/* The same for a subscription's topic filter: '+' and '#' allowed as whole levels. */
int tmpl_check_filter(const char *tmpl, char *err, size_t errlen);

/*
 * Writes the expanded, NUL-terminated topic to out. Returns its length, -ENOBUFS if out is
 * too small, or -EINVAL if a value would change the topic's structure (a wildcard; for an
 * attribute also a '/', which would add a level) or start it with '$' (a broker's own topics,
 * MQTT 3.1.1 section 4.7.2), or -ENOENT for an attribute that is unset.
 */
ssize_t tmpl_expand(const char *tmpl, const struct tmpl_vars *vars, char *out, size_t outlen);

#endif
