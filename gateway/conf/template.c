/* SPDX-License-Identifier: Apache-2.0 */
#include "template.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* MQTT 3.1.1 section 4.7.3: topic names are at most 65535 bytes of UTF-8. */
#define TOPIC_MAX 65535

static const char *const var_names[TMPL_NVARS] = {
        [TMPL_DEVICE] = "device",
        [TMPL_PATH] = "path",
        [TMPL_GATEWAY] = "gateway",
};

/* ${attr.NAME}: parse_var's value for it; the name follows the prefix. */
#define TMPL_ATTR   TMPL_NVARS
#define ATTR_PREFIX "attr."

/* Attribute names as the keystore allows them (keystore_check_attr): no '}' to confuse us. */
static bool
valid_attr_name(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (!isalnum((unsigned char)s[i]) && !strchr("._-", s[i]))
			return false;
	}
	return true;
}

/*
 * Parses "${name}" at s; returns the variable (TMPL_ATTR for an attribute) and sets *len to
 * the placeholder's length. -ENOENT: no placeholder at s; -EINVAL: unterminated; -EBADMSG:
 * unknown name.
 */
static int
parse_var(const char *s, size_t *len)
{
	const char *end;
	size_t plen = strlen(ATTR_PREFIX);

	if (s[0] != '$' || s[1] != '{')
		return -ENOENT;
	end = strchr(s + 2, '}');
	if (!end)
		return -EINVAL;
	if (strncmp(s + 2, ATTR_PREFIX, plen) == 0) {
		*len = (size_t)(end - s) + 1;
		return valid_attr_name(s + 2 + plen, (size_t)(end - (s + 2 + plen))) ? TMPL_ATTR
		                                                                     : -EBADMSG;
	}
	for (int v = 0; v < TMPL_NVARS; v++) {
		size_t n = strlen(var_names[v]);

		if ((size_t)(end - (s + 2)) == n && strncmp(s + 2, var_names[v], n) == 0) {
			*len = (size_t)(end - s) + 1;
			return v;
		}
	}
	*len = (size_t)(end - s) + 1;
	return -EBADMSG;
}

/* A filter's wildcards must fill a whole level; '#' only the last (MQTT 5 section 4.7.1). */
static bool
wildcard_ok(const char *tmpl, const char *s)
{
	bool level_start = s == tmpl || s[-1] == '/';

	if (*s == '+')
		return level_start && (s[1] == '\0' || s[1] == '/');
	return level_start && s[1] == '\0';
}

static int
check(const char *tmpl, bool filter, char *err, size_t errlen)
{
	if (tmpl[0] == '\0') {
		snprintf(err, errlen, "topic template is empty");
		return -EINVAL;
	}
	/* MQTT 3.1.1 section 4.7.2: topics starting with '$' are the broker's own. */
	if (tmpl[0] == '$' && tmpl[1] != '{') {
		snprintf(err, errlen,
		         "topic template must not start with '$' (reserved by brokers)");
		return -EINVAL;
	}
	if (strlen(tmpl) > TOPIC_MAX) {
		snprintf(err, errlen, "topic template is longer than %d bytes", TOPIC_MAX);
		return -EINVAL;
	}
	for (const char *s = tmpl; *s;) {
		size_t len = 0;
		int v = parse_var(s, &len);

		if (v == -EINVAL) {
			snprintf(err, errlen, "unterminated '${' in topic template \"%s\"", tmpl);
			return -EINVAL;
		}
		if (v == -EBADMSG) {
			snprintf(err, errlen,
			         "unknown variable '%.*s' in topic template (known: ${device}, "
			         "${path}, ${gateway}, ${attr.NAME})",
			         (int)len, s);
			return -EINVAL;
		}
		if (v >= 0) {
			s += len;
			continue;
		}
		if ((*s == '+' || *s == '#') && !filter) {
			snprintf(
			        err, errlen,
			        "topic template \"%s\" contains the wildcard '%c', which a publish "
			        "topic must not",
			        tmpl, *s);
			return -EINVAL;
		}
		if ((*s == '+' || *s == '#') && !wildcard_ok(tmpl, s)) {
			snprintf(err, errlen, "topic filter \"%s\": '%c' must be a whole level%s",
			         tmpl, *s, *s == '#' ? ", and the last" : "");
			return -EINVAL;
		}
		s++;
	}
	return 0;
}

int
tmpl_check(const char *tmpl, char *err, size_t errlen)
{
	return check(tmpl, false, err, errlen);
}

int
tmpl_check_filter(const char *tmpl, char *err, size_t errlen)
{
	return check(tmpl, true, err, errlen);
}

ssize_t
tmpl_expand(const char *tmpl, const struct tmpl_vars *vars, char *out, size_t outlen)
{
	size_t n = 0;

	for (const char *s = tmpl; *s;) {
		size_t len = 0, vlen;
		int v = parse_var(s, &len);
		const char *val;

		if (v == -EINVAL || v == -EBADMSG)
			return -EINVAL;
		if (v < 0) {
			if (n + 1 >= outlen)
				return -ENOBUFS;
			out[n++] = *s++;
			continue;
		}
		if (v == TMPL_ATTR) {
			size_t plen = strlen(ATTR_PREFIX);

			val = vars->attr ? vars->attr(s + 2 + plen, len - 3 - plen, vars->attr_data)
			                 : NULL;
			if (!val)
				return -ENOENT;
			/* An attribute fills exactly one level: a '/' would add levels. */
			if (strchr(val, '/'))
				return -EINVAL;
		} else {
			val = vars->value[v] ? vars->value[v] : "";
		}
		/* A value must fill in a level, never add wildcards that widen the topic. */
		if (strpbrk(val, "+#"))
			return -EINVAL;
		vlen = strlen(val);
		if (n + vlen >= outlen)
			return -ENOBUFS;
		memcpy(out + n, val, vlen);
		n += vlen;
		s += len;
	}
	if (n >= outlen)
		return -ENOBUFS;
	/* tmpl_check() keeps a literal '$' from the start; a value must not put one there. */
	if (n > 0 && out[0] == '$')
		return -EINVAL;
	out[n] = '\0';
	return (ssize_t)n;
}
