/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_TEMPLATE_H
#define GW_TEMPLATE_H

#include <stddef.h>
#include <sys/types.h>

/*
 * MQTT topic templates: literal text with ${device}, ${path} and ${gateway} placeholders.
 * Checked once when the config is loaded, expanded for every uplink message.
 */

enum tmpl_var { TMPL_DEVICE, TMPL_PATH, TMPL_GATEWAY, TMPL_NVARS };

struct tmpl_vars {
	const char *value[TMPL_NVARS];
};

/* 0 if tmpl is a valid publish-topic template, else -EINVAL and a reason in err. */
int tmpl_check(const char *tmpl, char *err, size_t errlen);

/*
 * Writes the expanded, NUL-terminated topic to out. Returns its length, -ENOBUFS if out is
 * too small, or -EINVAL if a value would change the topic's structure (a wildcard, NUL).
 */
ssize_t tmpl_expand(const char *tmpl, const struct tmpl_vars *vars, char *out, size_t outlen);

#endif
