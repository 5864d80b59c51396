/* SPDX-License-Identifier: Apache-2.0 */
#include "policy.h"
#include "conf.h"

#include <ctype.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/*
 * Runs for every message in and out, so: no allocation, no regex, one pass over the statements
 * of the policies attached to the device. Patterns are matched as written (conf-policy.c has
 * checked them), level by level, with ${...} substituted on the fly.
 */

#define ACT(a)       (1u << (a))
#define COAP_ACTIONS (ACT(POLICY_COAP_POST) | ACT(POLICY_COAP_PUT) | ACT(POLICY_COAP_GET))
#define MQTT_ACTIONS                                                                               \
	(ACT(POLICY_MQTT_PUBLISH) | ACT(POLICY_MQTT_SUBSCRIBE) | ACT(POLICY_MQTT_RECEIVE))

static const char *const action_names[POLICY_NACTIONS] = {
        [POLICY_COAP_POST] = "coap:post",
        [POLICY_COAP_PUT] = "coap:put",
        [POLICY_COAP_GET] = "coap:get",
        [POLICY_MQTT_PUBLISH] = "mqtt:publish",
        [POLICY_MQTT_SUBSCRIBE] = "mqtt:subscribe",
        [POLICY_MQTT_RECEIVE] = "mqtt:receive",
};

const char *
policy_action_name(enum policy_action act)
{
	if ((unsigned)act >= POLICY_NACTIONS)
		return "unknown";
	return action_names[act];
}

unsigned
policy_action_mask(const char *name)
{
	if (strcmp(name, "*") == 0)
		return COAP_ACTIONS | MQTT_ACTIONS;
	if (strcmp(name, "coap:*") == 0)
		return COAP_ACTIONS;
	if (strcmp(name, "mqtt:*") == 0)
		return MQTT_ACTIONS;
	for (unsigned i = 0; i < POLICY_NACTIONS; i++) {
		if (strcmp(name, action_names[i]) == 0)
			return ACT(i);
	}
	return 0;
}

static const char *
attr(const struct policy_subject *who, const char *key)
{
	return who->attr ? who->attr(who->device, key, who->attr_data) : NULL;
}

/*
 * The value of ${name} (name is len bytes, not terminated), or NULL if it has none that can
 * stand in a pattern: missing, empty, or holding '/', '+' or '#', which would add levels or
 * wildcards to the pattern and so widen what it matches.
 */
static const char *
var_value(const struct policy_subject *who, const char *name, size_t len)
{
	const char *v = NULL;

	if (len == 6 && memcmp(name, "device", 6) == 0) {
		v = who->device;
	} else if (len == 7 && memcmp(name, "gateway", 7) == 0) {
		v = who->gateway;
	} else if (len > 5 && memcmp(name, "attr.", 5) == 0) {
		char key[72]; /* attribute names are ids, at most 64 bytes */

		if (len - 5 >= sizeof(key))
			return NULL;
		memcpy(key, name + 5, len - 5);
		key[len - 5] = '\0';
		v = attr(who, key);
	}
	if (!v || !*v || strpbrk(v, "/+#"))
		return NULL;
	return v;
}

/*
 * Whether s (a path, topic or topic filter) matches pattern pat: '+' is one level, a last '#'
 * the rest. As in MQTT (3.1.1 section 4.7.1.2) "a/#" matches "a" too. A filter's own wildcards
 * are plain levels here, so a pattern covers a filter only if it covers every topic the filter
 * does: "+" covers "+" but not "#".
 */
static bool
match(const char *pat, const char *s, const struct policy_subject *who)
{
	if (strcmp(pat, "*") == 0)
		return true;
	for (;;) {
		if (pat[0] == '#' && pat[1] == '\0')
			return true;
		if (pat[0] == '+' && (pat[1] == '/' || pat[1] == '\0')) {
			size_t n = strcspn(s, "/");

			if (n == 1 && s[0] == '#')
				return false;
			s += n;
			pat++;
		} else {
			while (*pat && *pat != '/') {
				if (pat[0] == '$' && pat[1] == '{') {
					const char *name = pat + 2, *end = strchr(name, '}'), *v;
					size_t vn;

					if (!end)
						return false;
					v = var_value(who, name, (size_t)(end - name));
					if (!v)
						return false;
					vn = strlen(v);
					if (strncmp(s, v, vn) != 0)
						return false;
					s += vn;
					pat = end + 1;
				} else {
					if (*s != *pat)
						return false;
					s++;
					pat++;
				}
			}
			/* The pattern's level ended: the subject's must end here too. */
			if (*s && *s != '/')
				return false;
		}
		if (*pat == '\0')
			return *s == '\0';
		if (*s == '\0')
			return strcmp(pat, "/#") == 0;
		pat++;
		s++;
	}
}

static bool
in_list(char *const *list, size_t n, const char *v)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(list[i], v) == 0)
			return true;
	}
	return false;
}

static bool
condition_holds(const struct gwconf_condition *c, const struct policy_subject *who)
{
	const char *v = attr(who, c->attribute);
	bool like = false;

	if (c->nequals && (!v || !in_list(c->equals, c->nequals, v)))
		return false;
	if (v && in_list(c->not_equals, c->nnot_equals, v))
		return false;
	if (!c->nlike)
		return true;
	for (size_t i = 0; v && i < c->nlike && !like; i++)
		like = fnmatch(c->like[i], v, 0) == 0;
	return like;
}

static bool
statement_matches(const struct gwconf_statement *st, const struct policy_subject *who,
                  const char *prefix, const char *resource)
{
	bool any = false;

	for (size_t i = 0; i < st->nresources && !any; i++) {
		const char *r = st->resources[i];

		if (strcmp(r, "*") == 0)
			any = true;
		else if (strncmp(r, prefix, 5) == 0)
			any = match(r + 5, resource, who);
	}
	if (!any)
		return false;
	for (size_t i = 0; i < st->nconditions; i++) {
		if (!condition_holds(&st->conditions[i], who))
			return false;
	}
	return true;
}

/* Whether groups (the attribute: "a", or "a, b") names a group of pol. */
static bool
in_group(const struct gwconf_policy *pol, const char *groups)
{
	const char *g = groups;

	while (g && *g) {
		const char *end = strchrnul(g, ','), *e = end;

		while (g < e && isspace((unsigned char)*g))
			g++;
		while (e > g && isspace((unsigned char)e[-1]))
			e--;
		for (size_t i = 0; i < pol->ngroups; i++) {
			if (strlen(pol->groups[i]) == (size_t)(e - g) &&
			    memcmp(pol->groups[i], g, (size_t)(e - g)) == 0)
				return true;
		}
		g = *end ? end + 1 : end;
	}
	return false;
}

static bool
attached(const struct gwconf_policy *pol, const struct policy_subject *who, const char **groups,
         bool *groups_read)
{
	for (size_t i = 0; i < pol->ndevices; i++) {
		if (strcmp(pol->devices[i], "*") == 0 || strcmp(pol->devices[i], who->device) == 0)
			return true;
	}
	if (!pol->ngroups)
		return false;
	if (!*groups_read) {
		*groups = attr(who, "group");
		*groups_read = true;
	}
	return in_group(pol, *groups);
}

static void __attribute__((format(printf, 3, 4)))
explain(char *why, size_t whylen, const char *fmt, ...)
{
	va_list ap;

	if (!why || whylen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(why, whylen, fmt, ap);
	va_end(ap);
}

bool
policy_allows(const struct gwconf *conf, const struct policy_subject *who, enum policy_action act,
              const char *resource, char *why, size_t whylen)
{
	const struct gwconf_policy *allow_pol = NULL;
	const struct gwconf_statement *allow_st = NULL;
	const char *groups = NULL, *prefix;
	bool groups_read = false, any_attached = false;
	unsigned bit;

	if (!conf->have_policies) {
		explain(why, whylen, "no policies are configured");
		return true;
	}
	if ((unsigned)act >= POLICY_NACTIONS || !who || !who->device) {
		explain(why, whylen, "not an action of a device");
		return false;
	}
	bit = ACT(act);
	prefix = bit & COAP_ACTIONS ? "coap:" : "mqtt:";
	if (!resource)
		resource = "";
	for (size_t i = 0; i < conf->npolicies; i++) {
		const struct gwconf_policy *pol = &conf->policies[i];

		if (!attached(pol, who, &groups, &groups_read))
			continue;
		any_attached = true;
		for (size_t j = 0; j < pol->nstatements; j++) {
			const struct gwconf_statement *st = &pol->statements[j];

			if (!(st->actions & bit))
				continue;
			/* Once allowed, only a deny can change the answer. */
			if (!st->deny && allow_st)
				continue;
			if (!statement_matches(st, who, prefix, resource))
				continue;
			if (st->deny) {
				explain(why, whylen, "denied by policy '%s' (%s:%d)", pol->name,
				        st->file, st->line);
				return false;
			}
			allow_pol = pol;
			allow_st = st;
		}
	}
	if (allow_st) {
		explain(why, whylen, "allowed by policy '%s' (%s:%d)", allow_pol->name,
		        allow_st->file, allow_st->line);
		return true;
	}
	if (!any_attached)
		explain(why, whylen, "no policy applies to device '%s'", who->device);
	else
		explain(why, whylen, "no policy allows it");
	return false;
}
