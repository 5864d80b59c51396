/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The config's "policies" list (policy.c evaluates it). Everything that could never match, or
 * could match more than it says, is an error here rather than a silent deny at run time.
 */
#include "conf.h"
#include "conf-parse.h"
#include "device.h"
#include "policy.h"
#include "xalloc.h"

#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Names a statement's actions may use, for "did you mean". */
static const char *const action_words[] = {"coap:post",
                                           "coap:put",
                                           "coap:get",
                                           "mqtt:publish",
                                           "mqtt:subscribe",
                                           "mqtt:receive",
                                           "coap:*",
                                           "mqtt:*",
                                           "*",
                                           NULL};

/*
 * Reads group.key, a list of strings, into *out: one entry per element, NULL for an element
 * that is not a string (reported). Returns the setting, or NULL if it is missing (reported if
 * required) or not a list (reported).
 */
static const config_setting_t *
get_strings(struct parse *p, const config_setting_t *g, const char *gname, const char *key,
            bool required, char ***out, size_t *n)
{
	const config_setting_t *s = config_setting_get_member(g, key);
	int len;

	*out = NULL;
	*n = 0;
	if (!s) {
		if (required)
			conf_report(p, g, "missing required key '%s.%s'", gname, key);
		return NULL;
	}
	if (!config_setting_is_list(s) && !config_setting_is_array(s)) {
		conf_report(p, s, "'%s.%s' must be a list of strings: %s = (\"...\", \"...\");",
		            gname, key, key);
		return NULL;
	}
	len = config_setting_length(s);
	if (len == 0)
		return s;
	*out = xcalloc((size_t)len, sizeof(**out));
	*n = (size_t)len;
	for (int i = 0; i < len; i++) {
		const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
		const char *v = config_setting_get_string(e);

		if (!v)
			conf_report(p, e, "'%s.%s' must hold strings in double quotes", gname, key);
		else
			(*out)[i] = xstrdup(v);
	}
	return s;
}

/* The element i of list s, for the line of a message about it. */
static const config_setting_t *
elem(const config_setting_t *s, size_t i)
{
	return config_setting_get_elem(s, (unsigned)i);
}

/* Checks the ${...} at v (just past "${") in resource r; returns where the level goes on. */
static const char *
check_var(struct parse *p, const config_setting_t *where, const char *r, const char *v, bool *bad)
{
	const char *end = v + strcspn(v, "}/");
	size_t len = (size_t)(end - v);
	char name[72];

	if (*end != '}') {
		conf_report(p, where, "resource \"%s\": '${' without its '}'", r);
		*bad = true;
		return end;
	}
	if ((len == 6 && memcmp(v, "device", 6) == 0) || (len == 7 && memcmp(v, "gateway", 7) == 0))
		return end + 1;
	if (len > 5 && len - 5 < sizeof(name) && memcmp(v, "attr.", 5) == 0) {
		memcpy(name, v + 5, len - 5);
		name[len - 5] = '\0';
		if (device_id_valid(name))
			return end + 1;
	}
	conf_report(p, where,
	            "resource \"%s\": unknown variable ${%.*s} (expected ${device}, ${gateway} or "
	            "${attr.NAME})",
	            r, (int)len, v);
	*bad = true;
	return end + 1;
}

/*
 * Checks resource r of a statement whose actions are the mask actions: its kind, and its
 * pattern's wildcards and variables. One problem is reported per resource.
 */
static void
check_resource(struct parse *p, const config_setting_t *where, const char *r, unsigned actions)
{
	const char *pat, *l;
	unsigned kind;
	bool bad = false;

	if (strcmp(r, "*") == 0)
		return;
	if (strncmp(r, "coap:", 5) == 0) {
		kind = policy_action_mask("coap:*");
	} else if (strncmp(r, "mqtt:", 5) == 0) {
		kind = policy_action_mask("mqtt:*");
	} else {
		conf_report(
		        p, where,
		        "resource \"%s\" must start with coap: or mqtt: (or be \"*\", anything)",
		        r);
		return;
	}
	/* With no known action (already reported) every resource would look wrong. */
	if (actions && !(actions & kind)) {
		conf_report(p, where,
		            "resource \"%s\" can never match: the statement has no %.4s action", r,
		            r);
		return;
	}
	pat = r + 5;
	if (*pat == '\0') {
		conf_report(p, where, "resource \"%s\" is empty: write \"%s*\" for anything", r, r);
		return;
	}
	if (strcmp(pat, "*") == 0)
		return;
	for (l = pat; !bad;) {
		size_t len = strcspn(l, "/");
		const char *end = l + len;

		if ((memchr(l, '+', len) || memchr(l, '#', len)) && len != 1) {
			conf_report(p, where,
			            "resource \"%s\": '+' and '#' must be a whole level, as in "
			            "\"a/+/b\"",
			            r);
			return;
		}
		if (l[0] == '#' && *end) {
			conf_report(p, where,
			            "resource \"%s\": '#' must be the last level, as in \"a/#\"",
			            r);
			return;
		}
		if (memchr(l, '*', len)) {
			conf_report(
			        p, where,
			        "resource \"%s\": '*' means anything only alone, as in \"%.5s*\"; "
			        "use '+' for one level and '#' for the rest",
			        r, r);
			return;
		}
		for (const char *c = l; c < end && !bad;) {
			if (c[0] == '$' && c[1] == '{')
				c = check_var(p, where, r, c + 2, &bad);
			else
				c++;
		}
		if (!*end)
			break;
		l = end + 1;
	}
}

/* The actions of a statement as a mask; unknown names are reported. */
static unsigned
parse_actions(struct parse *p, const config_setting_t *s, char **names, size_t n)
{
	unsigned mask = 0;

	for (size_t i = 0; i < n; i++) {
		const char *best = NULL;
		size_t best_d = 3; /* suggest only near misses */
		unsigned m;

		if (!names[i])
			continue;
		m = policy_action_mask(names[i]);
		if (m) {
			mask |= m;
			continue;
		}
		for (const char *const *w = action_words; *w; w++) {
			size_t d = conf_edit_distance(names[i], *w);

			if (d < best_d) {
				best_d = d;
				best = *w;
			}
		}
		if (best)
			conf_report(p, elem(s, i), "unknown action \"%s\" (did you mean \"%s\"?)",
			            names[i], best);
		else
			conf_report(
			        p, elem(s, i),
			        "unknown action \"%s\": expected coap:post, coap:put, coap:get, "
			        "mqtt:publish, mqtt:subscribe, mqtt:receive, coap:*, mqtt:* or *",
			        names[i]);
	}
	return mask;
}

static void
parse_condition(struct parse *p, const config_setting_t *g, struct gwconf_condition *c)
{
	static const char *const known[] = {"attribute", "equals", "not_equals", "like", NULL};
	static const char *const lists[] = {"equals", "not_equals", "like"};
	char ***vals[] = {&c->equals, &c->not_equals, &c->like};
	size_t *nvals[] = {&c->nequals, &c->nnot_equals, &c->nlike};
	bool any = false;

	if (!config_setting_is_group(g)) {
		conf_report(p, g,
		            "each entry of 'conditions' must be a group: { attribute = \"NAME\"; "
		            "equals = (\"...\"); }");
		return;
	}
	conf_check_keys(p, g, "a condition", known);
	c->attribute = conf_string(p, g, "condition", "attribute", NULL);
	if (c->attribute && !device_id_valid(c->attribute))
		conf_report(p, config_setting_get_member(g, "attribute"),
		            "'condition.attribute' \"%s\" is not an attribute name (1 to 64 "
		            "letters, digits, '.', '_' or '-', starting with a letter or digit)",
		            c->attribute);
	for (size_t i = 0; i < 3; i++) {
		const config_setting_t *s =
		        get_strings(p, g, "condition", lists[i], false, vals[i], nvals[i]);

		if (s && *nvals[i] == 0)
			conf_report(p, s, "'condition.%s' is empty: list one value or more",
			            lists[i]);
		any = any || config_setting_get_member(g, lists[i]);
	}
	if (!any)
		conf_report(p, g,
		            "a condition needs equals, not_equals or like: { attribute = \"site\"; "
		            "equals = (\"lab\"); }");
}

static void
parse_conditions(struct parse *p, const config_setting_t *g, struct gwconf_statement *st)
{
	const config_setting_t *cs = config_setting_get_member(g, "conditions");
	int n;

	if (!cs)
		return;
	if (!config_setting_is_list(cs)) {
		conf_report(p, cs,
		            "'statement.conditions' must be a list: conditions = ( { attribute = "
		            "\"NAME\"; equals = (\"...\"); } );");
		return;
	}
	n = config_setting_length(cs);
	if (n == 0)
		return;
	st->conditions = xcalloc((size_t)n, sizeof(*st->conditions));
	st->nconditions = (size_t)n;
	for (int i = 0; i < n; i++)
		parse_condition(p, config_setting_get_elem(cs, (unsigned)i), &st->conditions[i]);
}

static void
parse_statement(struct parse *p, const config_setting_t *g, struct gwconf_statement *st)
{
	static const char *const known[] = {"effect", "actions", "resources", "conditions", NULL};
	const config_setting_t *s;
	const char *file;
	char **actions, *effect;
	size_t nactions;

	if (!config_setting_is_group(g)) {
		conf_report(p, g,
		            "each entry of 'statements' must be a group: { effect = ...; actions = "
		            "...; resources = ...; }");
		return;
	}
	conf_check_keys(p, g, "a policy statement", known);
	file = config_setting_source_file(g);
	st->file = xstrdup(file ? file : p->path);
	st->line = config_setting_source_line(g);
	effect = conf_string(p, g, "statement", "effect", NULL);
	if (effect && strcmp(effect, "deny") == 0)
		st->deny = true;
	else if (effect && strcmp(effect, "allow") != 0)
		conf_report(p, config_setting_get_member(g, "effect"),
		            "'statement.effect' is \"%s\", expected \"allow\" or \"deny\"", effect);
	free(effect);

	s = get_strings(p, g, "statement", "actions", true, &actions, &nactions);
	if (s && nactions == 0)
		conf_report(p, s,
		            "'statement.actions' is empty: the statement would match nothing");
	st->actions = parse_actions(p, s, actions, nactions);
	for (size_t i = 0; i < nactions; i++)
		free(actions[i]);
	free(actions);

	s = get_strings(p, g, "statement", "resources", true, &st->resources, &st->nresources);
	if (s && st->nresources == 0)
		conf_report(p, s,
		            "'statement.resources' is empty: the statement would match nothing");
	for (size_t i = 0; i < st->nresources; i++) {
		if (st->resources[i])
			check_resource(p, elem(s, i), st->resources[i], st->actions);
	}
	parse_conditions(p, g, st);
}

/* Reads policy idx of c->policies; names: the names of those read before. */
static void
parse_policy(struct parse *p, const config_setting_t *g, struct gwconf *c, size_t idx,
             struct conf_names *names)
{
	static const char *const known[] = {"name", "devices", "groups", "statements", NULL};
	struct gwconf_policy *pol = &c->policies[idx];
	const config_setting_t *devs, *groups, *sts;
	bool attach_ok = true;
	int n, first;

	if (!config_setting_is_group(g)) {
		conf_report(
		        p, g,
		        "each entry of 'policies' must be a group: { name = ...; devices = ...; "
		        "statements = ...; }");
		return;
	}
	conf_check_keys(p, g, "a policy", known);
	pol->line = config_setting_source_line(g);
	pol->name = conf_string(p, g, "policy", "name", NULL);
	if (pol->name && !*pol->name)
		conf_report(p, config_setting_get_member(g, "name"),
		            "'policy.name' must not be empty");
	if (pol->name && (first = conf_names_add(names, pol->name, pol->line)))
		conf_report(p, config_setting_get_member(g, "name"),
		            "policy \"%s\" is defined twice (first at line %d)", pol->name, first);

	devs = get_strings(p, g, "policy", "devices", false, &pol->devices, &pol->ndevices);
	attach_ok = devs || !config_setting_get_member(g, "devices");
	for (size_t i = 0; i < pol->ndevices; i++) {
		const char *d = pol->devices[i];

		if (d && strcmp(d, "*") != 0 && !device_id_valid(d))
			conf_report(
			        p, elem(devs, i),
			        "'policy.devices' \"%s\" is neither \"*\" nor a device id (1 to 64 "
			        "letters, digits, '.', '_' or '-', starting with a letter or "
			        "digit)",
			        d);
	}
	groups = get_strings(p, g, "policy", "groups", false, &pol->groups, &pol->ngroups);
	attach_ok = attach_ok && (groups || !config_setting_get_member(g, "groups"));
	for (size_t i = 0; i < pol->ngroups; i++) {
		/* A device lists its groups in one attribute, "a, b": no ',' in a name. */
		if (pol->groups[i] && !device_id_valid(pol->groups[i]))
			conf_report(p, elem(groups, i),
			            "'policy.groups' \"%s\" is not a group name (1 to 64 letters, "
			            "digits, '.', '_' or '-', starting with a letter or digit)",
			            pol->groups[i]);
	}
	/* Only when both are well-formed: a malformed one is reported already. */
	if (attach_ok && pol->ndevices == 0 && pol->ngroups == 0)
		conf_report(
		        p, g,
		        "%s%s%s applies to no device: give it devices = (\"ID\", ...) or groups = "
		        "(\"NAME\", ...)",
		        pol->name ? "policy \"" : "the policy", pol->name ? pol->name : "",
		        pol->name ? "\"" : "");

	sts = config_setting_get_member(g, "statements");
	if (!sts) {
		conf_report(p, g, "missing required key 'policy.statements'");
		return;
	}
	if (!config_setting_is_list(sts)) {
		conf_report(p, sts,
		            "'policy.statements' must be a list: statements = ( { effect = ...; "
		            "actions = ...; resources = ...; } );");
		return;
	}
	n = config_setting_length(sts);
	if (n == 0) {
		conf_report(p, sts, "'policy.statements' is empty: the policy would allow nothing");
		return;
	}
	pol->statements = xcalloc((size_t)n, sizeof(*pol->statements));
	pol->nstatements = (size_t)n;
	for (int i = 0; i < n; i++)
		parse_statement(p, config_setting_get_elem(sts, (unsigned)i), &pol->statements[i]);
}

void
conf_parse_policies(struct parse *p, const config_setting_t *root)
{
	const config_setting_t *ps = config_setting_get_member(root, "policies");
	struct gwconf *c = p->conf;
	struct conf_names names;
	int n;

	/* No list at all: everything is allowed, as before policies existed. */
	if (!ps)
		return;
	c->have_policies = true;
	if (!config_setting_is_list(ps)) {
		conf_report(p, ps,
		            "'policies' must be a list: policies = ( { name = ...; devices = ...; "
		            "statements = ...; } );");
		return;
	}
	n = config_setting_length(ps);
	if (n == 0) {
		conf_report(p, ps,
		            "'policies' is empty: every device would be denied everything (without "
		            "the list, everything is allowed)");
		return;
	}
	c->policies = xcalloc((size_t)n, sizeof(*c->policies));
	c->npolicies = (size_t)n;
	conf_names_init(&names, (size_t)n);
	for (int i = 0; i < n; i++)
		parse_policy(p, config_setting_get_elem(ps, (unsigned)i), c, (size_t)i, &names);
	conf_names_finish(&names);
}

static void
free_strings(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

void
conf_free_policies(struct gwconf *c)
{
	for (size_t i = 0; i < c->npolicies; i++) {
		struct gwconf_policy *pol = &c->policies[i];

		for (size_t j = 0; j < pol->nstatements; j++) {
			struct gwconf_statement *st = &pol->statements[j];

			for (size_t k = 0; k < st->nconditions; k++) {
				struct gwconf_condition *cond = &st->conditions[k];

				free(cond->attribute);
				free_strings(cond->equals, cond->nequals);
				free_strings(cond->not_equals, cond->nnot_equals);
				free_strings(cond->like, cond->nlike);
			}
			free(st->conditions);
			free_strings(st->resources, st->nresources);
			free(st->file);
		}
		free(pol->statements);
		free_strings(pol->devices, pol->ndevices);
		free_strings(pol->groups, pol->ngroups);
		free(pol->name);
	}
	free(c->policies);
	c->policies = NULL;
	c->npolicies = 0;
}
