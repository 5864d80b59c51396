/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_CONF_PARSE_H
#define GW_CONF_PARSE_H

/*
 * Internal to the config parser, shared by its files (conf.c, conf-policy.c; the readers in
 * conf-parse.c): the readers
 * that turn libconfig settings into values and report every problem as "FILE:LINE: message".
 * Not for the rest of the daemon, which sees only the validated struct gwconf.
 */

#include <libconfig.h>
#include <stdbool.h>
#include <stddef.h>

struct gwconf;
struct gwconf_errors;

/* What one load is working on: the file, the result so far, the errors so far. */
struct parse {
	const char *path;
	struct gwconf *conf;
	struct gwconf_errors *errs;
};

/*
 * Names defined so far (routes' resources, policies' names), to report a name defined again
 * once, against its first definition, in constant time: a check against every earlier entry
 * took 2.4 s for 1,000 duplicate routes (499,500 reports) and 38 s for 4,000.
 */
struct conf_names {
	size_t cap; /* a power of two, at least twice the entries */
	const char **name;
	int *line;
};

/* Room for n names. */
void conf_names_init(struct conf_names *names, size_t n);
/* The line where name was first defined, or 0 after recording it as defined at line. */
int conf_names_add(struct conf_names *names, const char *name, int line);
void conf_names_finish(struct conf_names *names);

/* Levenshtein distance, ignoring case, for "did you mean" on misspelt names (short ones). */
size_t conf_edit_distance(const char *a, const char *b);
/* Adds "FILE:LINE: message" for where (NULL: the file without a line). */
void __attribute__((format(printf, 3, 4)))
conf_report(struct parse *p, const config_setting_t *where, const char *fmt, ...);
/* As conf_report(), at a line of a file before libconfig has read it. */
void __attribute__((format(printf, 4, 5)))
conf_report_at(struct parse *p, const char *file, int lineno, const char *fmt, ...);
/* Reports every member of group whose name is not in known (NULL-terminated), with a
 * did-you-mean for near misses. where names the group in the message. */
void conf_check_keys(struct parse *p, const config_setting_t *group, const char *where,
                     const char *const *known);
const config_setting_t *conf_group(struct parse *p, const config_setting_t *root, const char *name,
                                   bool required);
/* group.key as a new string; missing: a copy of def, or reported as required if def is NULL.
 * gname names the group in messages. */
char *conf_string(struct parse *p, const config_setting_t *group, const char *gname,
                  const char *key, const char *def);
/* As conf_string, with a relative file name taken from the config file's folder. */
char *conf_path(struct parse *p, const config_setting_t *group, const char *gname, const char *key,
                const char *def);
int conf_int(struct parse *p, const config_setting_t *group, const char *gname, const char *key,
             long long def, long long min, long long max);
bool conf_bool(struct parse *p, const config_setting_t *group, const char *gname, const char *key,
               bool def);
double conf_fraction(struct parse *p, const config_setting_t *group, const char *gname,
                     const char *key, double def, double min, double max);

/* conf-policy.c: the optional top-level list "policies" into conf->policies. */
void conf_parse_policies(struct parse *p, const config_setting_t *root);
/* Frees what conf_parse_policies put in c (for gwconf_free). */
void conf_free_policies(struct gwconf *c);

#endif
