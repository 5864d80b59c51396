/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness for gateway/conf/template.c: topic templates come from the config, and the values
 * put into them from outside (device ids, CoAP Uri-Paths, attributes set with gwctl). The input
 * is NUL-separated fields: the template, then ${device}, ${path}, ${gateway} and the value
 * every ${attr.NAME} gets (a missing field: an unset value, or an unset attribute). The
 * template is checked as a publish topic and as a filter, and expanded into buffers of every
 * size that matters; the result is compared with a model of template.h's grammar, and the
 * header's promises (an error's reason, NUL termination, the length returned, a value never
 * widens the topic, a checked filter expands to a valid filter) abort when broken.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define check(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#define NFIELDS 5
#define ATTR    4

struct input {
	const char *f[NFIELDS]; /* NULL: the field is missing */
	const char *tmpl;
	size_t tmpl_len;
};

/* The attribute lookup: every name gets the same value, and must be a name from the template. */
static const char *
attr_lookup(const char *name, size_t len, void *data)
{
	const struct input *in = data;

	check(len > 0 && name >= in->tmpl && name + len <= in->tmpl + in->tmpl_len);
	for (size_t i = 0; i < len; i++)
		check(name[i] != '}' && name[i] != '\0');
	return in->f[ATTR];
}

/* Attribute names as template.h's ${attr.NAME} takes them. */
static bool
attr_name_ok(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (!(s[i] >= 'a' && s[i] <= 'z') && !(s[i] >= 'A' && s[i] <= 'Z') &&
		    !(s[i] >= '0' && s[i] <= '9') && !strchr("._-", s[i]))
			return false;
	}
	return true;
}

/*
 * The model: what tmpl_expand must give with room enough, from template.h's words. Returns
 * the length (the text in *out, malloc'd) or the error.
 */
static ssize_t
model_expand(const struct input *in, bool with_attr, char **out)
{
	static const char *const names[TMPL_NVARS] = {"device", "path", "gateway"};
	size_t cap = in->tmpl_len + 1, n = 0;
	char *buf = malloc(cap);

	check(buf);
	for (const char *s = in->tmpl; *s;) {
		const char *end, *val = NULL;
		size_t len, vlen;

		if (s[0] != '$' || s[1] != '{') {
			buf[n++] = *s++;
			continue;
		}
		end = strchr(s + 2, '}');
		if (!end)
			goto invalid;
		len = (size_t)(end - (s + 2));
		if (len >= 5 && memcmp(s + 2, "attr.", 5) == 0) {
			if (!attr_name_ok(s + 7, len - 5))
				goto invalid;
			if (!with_attr || !in->f[ATTR]) {
				free(buf);
				return -ENOENT;
			}
			val = in->f[ATTR];
			if (strchr(val, '/'))
				goto invalid;
		} else {
			for (int v = 0; v < TMPL_NVARS && !val; v++) {
				if (len == strlen(names[v]) && memcmp(s + 2, names[v], len) == 0)
					val = in->f[1 + v] ? in->f[1 + v] : "";
			}
			if (!val)
				goto invalid;
		}
		if (strpbrk(val, "+#"))
			goto invalid;
		vlen = strlen(val);
		/* What is left of the template is at least as long as its literal text. */
		cap += vlen;
		buf = realloc(buf, cap);
		check(buf);
		memcpy(buf + n, val, vlen);
		n += vlen;
		s = end + 1;
	}
	check(n < cap);
	/* A value must not make it a broker's own topic. */
	if (n > 0 && buf[0] == '$')
		goto invalid;
	buf[n] = '\0';
	*out = buf;
	return (ssize_t)n;
invalid:
	free(buf);
	return -EINVAL;
}

/* An MQTT topic filter: '+' a whole level, '#' a whole level and the last (MQTT 5.0 4.7.1). */
static bool
valid_filter(const char *t)
{
	for (const char *l = t;;) {
		size_t len = strcspn(l, "/");

		if ((memchr(l, '+', len) || memchr(l, '#', len)) && len != 1)
			return false;
		if (l[0] == '#' && l[len] != '\0')
			return false;
		if (l[len] == '\0')
			return true;
		l += len + 1;
	}
}

/* tmpl_check or tmpl_check_filter, with a reason of every length the caller may give. */
static int
checked(const char *tmpl, bool filter)
{
	static const size_t lens[] = {1, 2, 17, 256};
	int first = 0;

	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		/* Exactly the size given, so that ASan sees a write past it. */
		char *err = malloc(lens[i]);
		int r;

		check(err);
		memset(err, 'x', lens[i]);
		r = filter ? tmpl_check_filter(tmpl, err, lens[i]) : tmpl_check(tmpl, err, lens[i]);
		check(r == 0 || r == -EINVAL);
		check(i == 0 || r == first);
		first = r;
		if (r < 0) {
			check(memchr(err, '\0', lens[i]));
			check(lens[i] == 1 || err[0] != '\0');
		}
		free(err);
	}
	return first;
}

/*
 * Expands into a buffer of exactly outlen bytes (and a guard byte after it, which must stay),
 * so that ASan and the guard see any write past outlen.
 */
static ssize_t
expand_into(const struct input *in, const struct tmpl_vars *vars, size_t outlen, char **out)
{
	char *buf = malloc(outlen + 1);
	ssize_t r;

	check(buf);
	buf[outlen] = 'G';
	r = tmpl_expand(in->tmpl, vars, buf, outlen);
	check(buf[outlen] == 'G');
	check(r >= 0 || r == -ENOBUFS || r == -EINVAL || r == -ENOENT);
	if (r >= 0) {
		check((size_t)r < outlen);
		check(buf[r] == '\0' && strlen(buf) == (size_t)r);
	}
	*out = buf;
	return r;
}

/* Expands as the router does and compares with the model, at every buffer size that matters. */
static void
expand_all(const struct input *in, bool with_attr, int check_r, int filter_r)
{
	struct tmpl_vars vars = {
	        .value = {in->f[1], in->f[2], in->f[3]},
	        .attr = with_attr ? attr_lookup : NULL,
	        .attr_data = (void *)in,
	};
	char *want = NULL, *got;
	ssize_t m = model_expand(in, with_attr, &want), r;
	bool clean = true;

	/* Room enough: the model's answer exactly. */
	r = expand_into(in, &vars, m >= 0 ? (size_t)m + 1 : in->tmpl_len + 1, &got);
	if (m >= 0) {
		check(r == m && memcmp(got, want, (size_t)m + 1) == 0);
	} else {
		/* An error is found in template order, before or after the room runs out. */
		check(r == m || r == -ENOBUFS);
	}
	free(got);
	if (m >= 0) {
		/* One byte short, half, none: no room, and nothing written past what was given. */
		check(expand_into(in, &vars, (size_t)m, &got) == -ENOBUFS);
		free(got);
		check(expand_into(in, &vars, (size_t)m / 2, &got) == -ENOBUFS);
		free(got);
		check(expand_into(in, &vars, 0, &got) == -ENOBUFS);
		free(got);
	}

	/* The values the caller gives: none widens the topic, an attribute adds no level. */
	for (int i = 1; i < NFIELDS; i++)
		clean = clean && (!in->f[i] || !strpbrk(in->f[i], "+#"));
	clean = clean && (!in->f[ATTR] || !strchr(in->f[ATTR], '/'));
	/*
	 * ... and none would start the topic with '$' (the model refuses that, see above): none
	 * starts with it, and none is empty (a literal '$' after it would then lead).
	 */
	for (int i = 1; i < NFIELDS; i++)
		clean = clean && in->f[i] && in->f[i][0] && in->f[i][0] != '$';
	/* A checked template with fit values expands, unless it names an unset attribute. */
	if (check_r == 0 && clean)
		check(m >= 0 || (m == -ENOENT && (!with_attr || !in->f[ATTR])));
	if (m >= 0 && check_r == 0)
		check(!strpbrk(want, "+#"));
	if (m >= 0 && filter_r == 0)
		check(valid_filter(want));
	free(want);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *copy = malloc(size + 1);
	struct input in = {0};
	size_t at = 0;
	int check_r, filter_r;

	check(copy);
	memcpy(copy, data, size);
	copy[size] = '\0';
	for (int i = 0; i < NFIELDS && at <= size; i++) {
		in.f[i] = copy + at;
		at += strlen(copy + at) + 1;
	}
	in.tmpl = in.f[0];
	in.tmpl_len = strlen(in.tmpl);

	check_r = checked(in.tmpl, false);
	filter_r = checked(in.tmpl, true);
	/* A filter may hold what a topic may, and wildcards: the same check without them. */
	if (check_r == 0)
		check(filter_r == 0);
	if (filter_r == 0 && !strpbrk(in.tmpl, "+#"))
		check(check_r == 0);
	/* Accepted: not empty, not the broker's own, one MQTT topic's length at most. */
	if (check_r == 0)
		check(in.tmpl_len > 0 && in.tmpl_len <= 65535 &&
		      (in.tmpl[0] != '$' || in.tmpl[1] == '{'));

	expand_all(&in, true, check_r, filter_r);
	expand_all(&in, false, check_r, filter_r);
	free(copy);
	return 0;
}
