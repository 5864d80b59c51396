/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The readers the config parser's files share (conf-parse.h): libconfig settings to values,
 * every problem reported as "FILE:LINE: message" and parsing going on, so that one run shows
 * all of them.
 */
#include "conf-parse.h"
#include "conf.h"
#include "xalloc.h"

#include <ctype.h>
#include <libconfig.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Adds "FILE:LINE: message" (lineno 0: "FILE: message"), if fewer than the kept are there. */
static void
add_error(struct parse *p, const char *file, int lineno, const char *fmt, va_list ap)
{
	char msg[512], *line;

	p->errs->total++;
	if (p->errs->count >= GWCONF_ERRORS_KEPT)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (lineno > 0)
		line = xasprintf("%s:%d: %s", file, lineno, msg);
	else
		line = xasprintf("%s: %s", file, msg);
	/* One error per line (conf.h): any control byte in a value, a line break too, is '?'. */
	for (char *s = line; *s; s++) {
		if (iscntrl((unsigned char)*s))
			*s = '?';
	}
	if (!p->errs->lines)
		p->errs->lines = xcalloc(GWCONF_ERRORS_KEPT, sizeof(*p->errs->lines));
	p->errs->lines[p->errs->count++] = line;
}

void __attribute__((format(printf, 3, 4)))
conf_report(struct parse *p, const config_setting_t *where, const char *fmt, ...)
{
	const char *file = p->path;
	int lineno = 0;
	va_list ap;

	if (where) {
		lineno = config_setting_source_line(where);
		if (config_setting_source_file(where))
			file = config_setting_source_file(where);
	}
	va_start(ap, fmt);
	add_error(p, file, lineno, fmt, ap);
	va_end(ap);
}

void __attribute__((format(printf, 4, 5)))
conf_report_at(struct parse *p, const char *file, int lineno, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	add_error(p, file, lineno, fmt, ap);
	va_end(ap);
}

void
conf_names_init(struct conf_names *names, size_t n)
{
	size_t cap = 16;

	while (cap < 2 * n)
		cap *= 2;
	*names = (struct conf_names){.cap = cap,
	                             .name = xcalloc(cap, sizeof(*names->name)),
	                             .line = xcalloc(cap, sizeof(*names->line))};
}

int
conf_names_add(struct conf_names *names, const char *name, int line)
{
	size_t h = 14695981039346656037u; /* FNV-1a */

	for (const char *c = name; *c; c++)
		h = (h ^ (unsigned char)*c) * 1099511628211u;
	/* Linear probing; never full (init sized it to twice the entries). */
	for (size_t i = h & (names->cap - 1);; i = (i + 1) & (names->cap - 1)) {
		if (!names->name[i]) {
			names->name[i] = name;
			names->line[i] = line > 0 ? line : 1;
			return 0;
		}
		if (strcmp(names->name[i], name) == 0)
			return names->line[i];
	}
}

void
conf_names_finish(struct conf_names *names)
{
	free(names->name);
	free(names->line);
	*names = (struct conf_names){0};
}

size_t
conf_edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), row[64];

	if (lb >= sizeof(row) / sizeof(row[0]))
		return SIZE_MAX;
	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t diag = row[0];

		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t up = row[j];
			size_t best = diag + (tolower((unsigned char)a[i - 1]) !=
			                      tolower((unsigned char)b[j - 1]));

			if (up + 1 < best)
				best = up + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			diag = up;
		}
	}
	return row[lb];
}

/* Reports every member of group whose name is not in known (a NULL-terminated list). */
void
conf_check_keys(struct parse *p, const config_setting_t *group, const char *where,
                const char *const *known)
{
	int n = config_setting_length(group);

	for (int i = 0; i < n; i++) {
		const config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
		const char *name = config_setting_name(s), *best = NULL;
		size_t best_d = 3; /* suggest only near misses */
		bool found = false;

		for (const char *const *k = known; *k; k++) {
			size_t d = conf_edit_distance(name, *k);

			if (d == 0) {
				found = true;
				break;
			}
			if (d < best_d) {
				best_d = d;
				best = *k;
			}
		}
		if (found)
			continue;
		if (best)
			conf_report(p, s, "unknown key '%s' in %s (did you mean '%s'?)", name,
			            where, best);
		else
			conf_report(p, s, "unknown key '%s' in %s", name, where);
	}
}

const config_setting_t *
conf_group(struct parse *p, const config_setting_t *root, const char *name, bool required)
{
	const config_setting_t *g = config_setting_get_member(root, name);

	if (!g) {
		if (required)
			conf_report(p, NULL, "missing required group '%s'", name);
		return NULL;
	}
	if (!config_setting_is_group(g)) {
		conf_report(p, g, "'%s' must be a group: %s = { ... };", name, name);
		return NULL;
	}
	return g;
}

/* Reads group.key as a string. Missing: def (NULL def means required). */
char *
conf_string(struct parse *p, const config_setting_t *group, const char *gname, const char *key,
            const char *def)
{
	const config_setting_t *s = group ? config_setting_get_member(group, key) : NULL;
	const char *v;

	if (!s) {
		if (!def) {
			conf_report(p, group, "missing required key '%s.%s'", gname, key);
			return NULL;
		}
		return xstrdup(def);
	}
	v = config_setting_get_string(s);
	if (!v) {
		conf_report(p, s, "'%s.%s' must be a string in double quotes", gname, key);
		return NULL;
	}
	return xstrdup(v);
}

/*
 * Reads a required file name. A relative one is taken from the config file's folder, not from
 * the daemon's working directory (which is / once it detaches).
 */
char *
conf_path(struct parse *p, const config_setting_t *group, const char *gname, const char *key,
          const char *def)
{
	char *v = conf_string(p, group, gname, key, def), *dir, *abs;

	if (!v || v[0] == '/')
		return v;
	dir = xstrdup(p->path);
	abs = xasprintf("%s/%s", dirname(dir), v);
	free(dir);
	free(v);
	return abs;
}

int
conf_int(struct parse *p, const config_setting_t *group, const char *gname, const char *key,
         long long def, long long min, long long max)
{
	const config_setting_t *s = group ? config_setting_get_member(group, key) : NULL;
	long long v;

	if (!s)
		return (int)def;
	if (config_setting_type(s) != CONFIG_TYPE_INT &&
	    config_setting_type(s) != CONFIG_TYPE_INT64) {
		conf_report(p, s, "'%s.%s' must be an integer", gname, key);
		return (int)def;
	}
	v = config_setting_get_int64(s);
	if (v < min || v > max) {
		conf_report(p, s, "'%s.%s' is %lld, expected %lld to %lld", gname, key, v, min,
		            max);
		return (int)def;
	}
	return (int)v;
}

bool
conf_bool(struct parse *p, const config_setting_t *group, const char *gname, const char *key,
          bool def)
{
	const config_setting_t *s = group ? config_setting_get_member(group, key) : NULL;

	if (!s)
		return def;
	if (config_setting_type(s) != CONFIG_TYPE_BOOL) {
		conf_report(p, s, "'%s.%s' must be true or false", gname, key);
		return def;
	}
	return config_setting_get_bool(s);
}

double
conf_fraction(struct parse *p, const config_setting_t *group, const char *gname, const char *key,
              double def, double min, double max)
{
	const config_setting_t *s = group ? config_setting_get_member(group, key) : NULL;
	double v;

	if (!s)
		return def;
	if (config_setting_type(s) == CONFIG_TYPE_INT ||
	    config_setting_type(s) == CONFIG_TYPE_INT64) {
		v = (double)config_setting_get_int64(s);
	} else if (config_setting_type(s) == CONFIG_TYPE_FLOAT) {
		v = config_setting_get_float(s);
	} else {
		conf_report(p, s, "'%s.%s' must be a number such as %.2f", gname, key, def);
		return def;
	}
	if (!(v >= min && v <= max)) {
		conf_report(p, s, "'%s.%s' is %g, expected %g to %g", gname, key, v, min, max);
		return def;
	}
	return v;
}
