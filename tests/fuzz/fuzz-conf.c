/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness for the config file (gateway/conf/conf.c, conf-policy.c, and the profiles and
 * topic templates it checks): the input is gateway.conf, loaded with gwconf_load() from a
 * private folder made once, which also holds the ca.pem the test fixtures name. Checked, as
 * conf.h promises: a load succeeds with a config and no errors, or fails with no config and
 * every error as "FILE:LINE: message" or "FILE: message", one per line. A config that loads is
 * then used as the daemon uses it: what the parser promises of its values is checked, its
 * topic templates are expanded for a device (as the router and profile_session() do), and its
 * policies are asked about the devices and resources it names.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "conf.h"
#include "device.h"
#include "log.h"
#include "policy.h"
#include "profile.h"
#include "template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define check(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* The private folder, and the files in it: the config, and those the fixtures name. */
static char dir[256], conf_path[300], ca_path[300], inc_path[300];

/*
 * Rewritten in place, then cut to size: truncating a file to nothing and writing it again
 * makes ext4 flush it on close (auto_da_alloc), which took most of each run's time.
 */
static void
write_file(const char *path, const void *data, size_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);

	check(fd >= 0);
	check(size == 0 || write(fd, data, size) == (ssize_t)size);
	check(ftruncate(fd, (off_t)size) == 0);
	check(close(fd) == 0);
}

static void
remove_dir(void)
{
	unlink(conf_path);
	unlink(ca_path);
	unlink(inc_path);
	rmdir(dir);
}

static void
setup(void)
{
	static const char inc[] = "routes = ( { resource = \"temp\"; "
	                          "topic = \"devices/${device}/telemetry/${path}\"; } );\n";
	const char *tmp = getenv("TMPDIR");

	/* Loading logs nothing today; should it start to, only errors get through. */
	log_init("fuzz-conf", true, LOG_LEVEL_ERR);
	snprintf(dir, sizeof(dir), "%s/fuzz-conf.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	check(mkdtemp(dir));
	snprintf(conf_path, sizeof(conf_path), "%s/gateway.conf", dir);
	snprintf(ca_path, sizeof(ca_path), "%s/ca.pem", dir);
	snprintf(inc_path, sizeof(inc_path), "%s/routes.conf", dir);
	/* Only its path matters: the loader checks that it can be read. */
	write_file(ca_path, "not a certificate\n", 18);
	write_file(inc_path, inc, sizeof(inc) - 1);
	atexit(remove_dir);
}

/*
 * libconfig's @include opens any file named. conf.c refuses folders (libconfig exit()s the
 * process on one), FIFOs and devices; names with a '/' could still reach any regular file on
 * the machine, so the fuzzer may include only names without one: files of the private folder,
 * and "." and ".." (folders, refused).
 */
static bool
includes_ok(const uint8_t *data, size_t size)
{
	static const char word[] = "@include";
	const size_t wlen = sizeof(word) - 1;

	for (size_t i = 0; i + wlen <= size; i++) {
		size_t j = i + wlen, start;

		if (strncasecmp((const char *)data + i, word, wlen) != 0)
			continue;
		while (j < size && (data[j] == ' ' || data[j] == '\t'))
			j++;
		if (j >= size || data[j] != '"')
			continue;
		start = ++j;
		while (j < size && data[j] != '"') {
			if (data[j] == '/' || data[j] == '\\' || data[j] == '\0')
				return false;
			j++;
		}
		if (j == start)
			return false;
	}
	return true;
}

/*
 * "FILE:LINE: message" or "FILE: message", on one line. FILE is the config's path, or an
 * included file's name as the @include wrote it (libconfig's, taken from the config's folder).
 */
static void
check_errors(const struct gwconf_errors *errs)
{
	size_t dlen = strlen(dir);

	for (size_t i = 0; i < errs->count; i++) {
		const char *e = errs->lines[i], *rest;

		check(e);
		rest = strstr(e, ": ");
		check(rest && rest[2] != '\0');
		if (strncmp(e, dir, dlen) == 0 && e[dlen] == '/')
			rest = e + dlen;
		else
			check(rest > e && !memchr(e, '/', (size_t)(rest - e)));
		check(strstr(rest, ": "));
		check(!strchr(e, '\n'));
	}
}

/* ---- what a loaded config promises ---- */

static bool
valid_resource(const char *s)
{
	bool seg_empty = true;

	for (; *s; s++) {
		if (*s == '/') {
			if (seg_empty)
				return false;
			seg_empty = true;
		} else if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		           (*s >= '0' && *s <= '9') || strchr("._-", *s)) {
			seg_empty = false;
		} else {
			return false;
		}
	}
	return !seg_empty;
}

static void
check_values(const struct gwconf *c)
{
	char err[512];

	check(c->file && strcmp(c->file, conf_path) == 0);
	check(c->gateway_id && device_id_valid(c->gateway_id));
	check(c->state_dir && c->state_dir[0] == '/');
	check(c->control_socket && c->control_socket[0] == '/' && strlen(c->control_socket) <= 107);
	check(c->log_level == LOG_LEVEL_ERR || c->log_level == LOG_LEVEL_WARN ||
	      c->log_level == LOG_LEVEL_INFO || c->log_level == LOG_LEVEL_DEBUG);
	check(c->sensors.listen && c->sensors.port >= 1);

	check(c->upstream.broker && strncmp(c->upstream.broker, "ssl://", 6) == 0);
	check(c->upstream.broker_host && *c->upstream.broker_host && c->upstream.broker_port >= 1);
	check(c->upstream.ca_file && c->upstream.ca_file[0] == '/');
	check(c->upstream.reconnect_min <= c->upstream.reconnect_max);
	check(c->upstream.client_id && tmpl_check(c->upstream.client_id, err, sizeof(err)) == 0);
	check(!strstr(c->upstream.client_id, "${path}"));
	check(!c->upstream.username || tmpl_check(c->upstream.username, err, sizeof(err)) == 0);
	check(c->upstream.mqtt_version == GWCONF_MQTT_5 ||
	      c->upstream.mqtt_version == GWCONF_MQTT_311);
	check(c->upstream.nalpn == 0 || c->upstream.alpn);
	for (size_t i = 0; i < c->upstream.nalpn; i++)
		check(c->upstream.alpn[i] && strlen(c->upstream.alpn[i]) >= 1 &&
		      strlen(c->upstream.alpn[i]) <= 255);

	check(c->keystore.backend && (strcmp(c->keystore.backend, "soft") == 0 ||
	                              strcmp(c->keystore.backend, "tpm") == 0));
	check(c->keystore.parent >= 0x81000000u && c->keystore.parent <= 0x81FFFFFFu);
	check(c->keystore.device_ca_file && c->keystore.device_ca_file[0] == '/');
	if (c->est.url) {
		check(strncmp(c->est.url, "https://", 8) == 0);
		check(c->est.ca_file && c->est.ca_file[0] == '/');
		check(c->est.renew_jitter < c->est.renew_at);
		check(c->est.retry_min <= c->est.retry_max);
	}

	check(c->nroutes >= 1 && c->routes);
	for (size_t i = 0; i < c->nroutes; i++) {
		const struct gwconf_route *r = &c->routes[i];

		check(r->resource && valid_resource(r->resource));
		check(r->topic && tmpl_check(r->topic, err, sizeof(err)) == 0);
		check(r->qos_con >= 0 && r->qos_con <= 1 && r->qos_non >= 0 && r->qos_non <= 1);
		/* Resources are routed once: each finds its own route. */
		check(gwconf_route_find(c, r->resource) == r);
		check(profile_check_route(c, r, err, sizeof(err)) == 0);
		if (c->upstream.profile == GWCONF_PROFILE_AZURE)
			check(r->content_type != GWCONF_CTYPE_SUFFIX);
		else if (c->upstream.mqtt_version != GWCONF_MQTT_5)
			check(r->content_type != GWCONF_CTYPE_PROPERTY);
		check(r->content_type != GWCONF_CTYPE_BAG ||
		      c->upstream.profile == GWCONF_PROFILE_AZURE);
	}
	if (c->downlink.topic) {
		check(tmpl_check_filter(c->downlink.topic, err, sizeof(err)) == 0);
		check(profile_check_filter(c, c->downlink.topic, err, sizeof(err)) == 0);
		check(c->downlink.resource && valid_resource(c->downlink.resource));
		check(!gwconf_route_find(c, c->downlink.resource));
		check(c->downlink.queue >= 1 && c->downlink.expiry >= 1);
	}
	if (c->presence.topic) {
		check(tmpl_check(c->presence.topic, err, sizeof(err)) == 0);
		check(c->presence.online && c->presence.offline);
		check(c->upstream.profile != GWCONF_PROFILE_AZURE);
	}
	check(c->spool.device_bytes >= (long long)c->sensors.max_payload + 4096);
	check(c->spool.total_bytes >= c->spool.device_bytes);
	check(!c->metrics.listen || c->metrics.port >= 1);

	check(!c->npolicies || c->have_policies);
	check(!c->have_policies || c->npolicies >= 1);
	for (size_t i = 0; i < c->npolicies; i++) {
		const struct gwconf_policy *p = &c->policies[i];

		check(p->name && *p->name && p->ndevices + p->ngroups >= 1 && p->nstatements >= 1);
		for (size_t j = 0; j < i; j++)
			check(strcmp(p->name, c->policies[j].name) != 0);
		for (size_t j = 0; j < p->ndevices; j++)
			check(p->devices[j] &&
			      (strcmp(p->devices[j], "*") == 0 || device_id_valid(p->devices[j])));
		for (size_t j = 0; j < p->ngroups; j++)
			check(p->groups[j] && device_id_valid(p->groups[j]));
		for (size_t j = 0; j < p->nstatements; j++) {
			const struct gwconf_statement *st = &p->statements[j];

			check(st->actions && !(st->actions >> POLICY_NACTIONS));
			check(st->nresources >= 1 && st->file);
			for (size_t k = 0; k < st->nresources; k++)
				check(st->resources[k]);
			for (size_t k = 0; k < st->nconditions; k++) {
				const struct gwconf_condition *cd = &st->conditions[k];

				check(cd->attribute && device_id_valid(cd->attribute));
				check(cd->nequals + cd->nnot_equals + cd->nlike >= 1);
				for (size_t m = 0; m < cd->nequals; m++)
					check(cd->equals[m]);
				for (size_t m = 0; m < cd->nnot_equals; m++)
					check(cd->not_equals[m]);
				for (size_t m = 0; m < cd->nlike; m++)
					check(cd->like[m]);
			}
		}
	}
}

/* ---- the config in use ---- */

/* Device attributes, as gwctl device set stores them: a group of the config's, and a site. */
static const char *
policy_attr(const char *device, const char *key, void *data)
{
	const struct gwconf *c = data;

	(void)device;
	if (strcmp(key, "group") == 0)
		return c->npolicies && c->policies[0].ngroups ? c->policies[0].groups[0] : NULL;
	return "lab";
}

static const char *
tmpl_attr(const char *name, size_t len, void *data)
{
	(void)name;
	(void)len;
	(void)data;
	return "lab";
}

/* A template expanded as the router does: it must fit or be too long, nothing else. */
static void
expand(const struct gwconf *c, const char *tmpl, const char *path, bool filter)
{
	struct tmpl_vars vars = {
	        .value = {[TMPL_DEVICE] = "dev-a",
	                  [TMPL_PATH] = path,
	                  [TMPL_GATEWAY] = c->gateway_id},
	        .attr = tmpl_attr,
	};
	char topic[512];
	ssize_t n = tmpl_expand(tmpl, &vars, topic, sizeof(topic));

	check(n == -ENOBUFS || (n >= 0 && (size_t)n == strlen(topic)));
	if (n >= 0 && !filter)
		check(!strpbrk(topic, "+#"));
}

/* One question to the policies, with every size of reason: the same answer, a whole reason. */
static void
ask(const struct gwconf *c, const char *device, enum policy_action act, const char *resource)
{
	struct policy_subject who = {
	        .device = device,
	        .gateway = c->gateway_id,
	        .attr = policy_attr,
	        .attr_data = (void *)c,
	};
	char why[256], tiny[1] = {'x'};
	bool yes = policy_allows(c, &who, act, resource, why, sizeof(why));

	check(strlen(why) < sizeof(why));
	check(policy_allows(c, &who, act, resource, NULL, 0) == yes);
	check(policy_allows(c, &who, act, resource, tiny, sizeof(tiny)) == yes && tiny[0] == '\0');
	check(yes == (strncmp(why, "allowed by policy '", 19) == 0 ||
	              strcmp(why, "no policies are configured") == 0));
	if (!c->have_policies)
		check(yes);
}

static void
use(const struct gwconf *c)
{
	struct profile_session s;
	const char *devices[8] = {"dev-a"};
	size_t ndevices = 1, asked = 0;
	int r;

	r = profile_session(c, "dev-a", tmpl_attr, NULL, &s);
	check(r == 0 || r == -ENOBUFS);
	if (r == 0)
		check(strlen(s.client_id) >= 1 && strlen(s.client_id) <= PROFILE_CLIENT_ID_MAX &&
		      s.has_username == (c->upstream.username != NULL));
	for (size_t i = 0; i < c->nroutes; i++)
		expand(c, c->routes[i].topic, c->routes[i].resource, false);
	if (c->downlink.topic)
		expand(c, c->downlink.topic, "", true);
	if (c->presence.topic)
		expand(c, c->presence.topic, "", false);

	/* The devices the policies name, and the resources they and the routes name. */
	for (size_t i = 0; i < c->npolicies && ndevices < 8; i++) {
		for (size_t j = 0; j < c->policies[i].ndevices && ndevices < 8; j++)
			devices[ndevices++] = c->policies[i].devices[j];
	}
	for (size_t d = 0; d < ndevices; d++) {
		for (size_t i = 0; i < c->nroutes; i++) {
			ask(c, devices[d], POLICY_COAP_POST, c->routes[i].resource);
			ask(c, devices[d], POLICY_MQTT_PUBLISH, c->routes[i].topic);
		}
		if (c->downlink.topic) {
			ask(c, devices[d], POLICY_COAP_GET, c->downlink.resource);
			ask(c, devices[d], POLICY_MQTT_SUBSCRIBE, c->downlink.topic);
		}
		for (size_t i = 0; i < c->npolicies && asked < 256; i++) {
			const struct gwconf_policy *p = &c->policies[i];

			for (size_t j = 0; j < p->nstatements && asked < 256; j++) {
				const struct gwconf_statement *st = &p->statements[j];

				for (size_t k = 0; k < st->nresources && asked < 256; k++) {
					const char *res = st->resources[k];

					res += strlen(res) > 5 ? 5 : 0;
					for (int a = 0; a < POLICY_NACTIONS; a++)
						ask(c, devices[d], (enum policy_action)a, res);
					asked++;
				}
			}
		}
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool ready;
	struct gwconf_errors errs;
	struct gwconf *conf;
	int r;

	if (!ready) {
		setup();
		ready = true;
	}
	if (!includes_ok(data, size))
		return 0;
	write_file(conf_path, data, size);
	r = gwconf_load(conf_path, &conf, &errs);
	check(r == 0 || r == -EINVAL);
	check((r == 0) == (conf != NULL));
	check((r == 0) == (errs.count == 0));
	check_errors(&errs);
	gwconf_errors_finish(&errs);
	if (conf) {
		check_values(conf);
		use(conf);
	}
	gwconf_free(conf);
	return 0;
}
