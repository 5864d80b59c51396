/* SPDX-License-Identifier: Apache-2.0 */
#include "conf.h"
#include "conf-parse.h"
#include "device.h"
#include "profile.h"
#include "template.h"
#include "xalloc.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <libconfig.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static void
parse_gateway(struct parse *p, const config_setting_t *root)
{
	static const char *const known[] = {"id", "state_dir", "log_level", "control_socket", NULL};
	const config_setting_t *g = conf_group(p, root, "gateway", true);
	struct gwconf *c = p->conf;
	char *level;

	if (g)
		conf_check_keys(p, g, "group 'gateway'", known);
	c->gateway_id = conf_string(p, g, "gateway", "id", NULL);
	if (c->gateway_id && !device_id_valid(c->gateway_id))
		conf_report(p, config_setting_get_member(g, "id"),
		            "'gateway.id' \"%s\" must be 1 to 64 letters, digits, '.', '_' or '-', "
		            "starting with a letter or digit",
		            c->gateway_id);
	c->state_dir = conf_string(p, g, "gateway", "state_dir", "/var/lib/gateway");
	if (c->state_dir && c->state_dir[0] != '/')
		conf_report(p, config_setting_get_member(g, "state_dir"),
		            "'gateway.state_dir' must be an absolute path, not \"%s\"",
		            c->state_dir);
	c->control_socket = conf_path(p, g, "gateway", "control_socket", GWCONF_DEFAULT_SOCKET);
	/* sockaddr_un.sun_path holds 108 bytes with its NUL (unix(7)). */
	if (c->control_socket && strlen(c->control_socket) > 107)
		conf_report(p, config_setting_get_member(g, "control_socket"),
		            "'gateway.control_socket' is longer than 107 bytes: \"%s\"",
		            c->control_socket);
	level = conf_string(p, g, "gateway", "log_level", "info");
	if (level && log_level_parse(level, &c->log_level) < 0)
		conf_report(p, config_setting_get_member(g, "log_level"),
		            "'gateway.log_level' is \"%s\", expected error, warning, info or debug",
		            level);
	free(level);
}

static void
parse_sensors(struct parse *p, const config_setting_t *root)
{
	static const char *const known[] = {
	        "listen",         "port", "receive_buffer", "max_sessions", "max_payload",
	        "piggyback_wait", NULL};
	const config_setting_t *g = conf_group(p, root, "sensors", false);
	struct gwconf *c = p->conf;
	unsigned char addr[sizeof(struct in6_addr)];

	if (g)
		conf_check_keys(p, g, "group 'sensors'", known);
	c->sensors.listen = conf_string(p, g, "sensors", "listen", "0.0.0.0");
	if (c->sensors.listen && inet_pton(AF_INET, c->sensors.listen, addr) != 1 &&
	    inet_pton(AF_INET6, c->sensors.listen, addr) != 1)
		conf_report(p, config_setting_get_member(g, "listen"),
		            "'sensors.listen' \"%s\" is not an IPv4 or IPv6 address",
		            c->sensors.listen);
	/* RFC 7252 section 6.2: 5684 is the default port for coaps. */
	c->sensors.port = (uint16_t)conf_int(p, g, "sensors", "port", 5684, 1, 65535);
	/*
	 * 4 MiB: with the kernel's default 208 KiB, 1,000 sensors handshaking at once overflowed
	 * the socket and waited for DTLS's 1 s retransmit (measured, DESIGN.md decision 2).
	 */
	c->sensors.receive_buffer =
	        conf_int(p, g, "sensors", "receive_buffer", 4 << 20, 64 << 10, 256 << 20);
	c->sensors.max_sessions = conf_int(p, g, "sensors", "max_sessions", 2000, 1, 100000);
	/*
	 * 16 KiB: readings are small; larger uploads come in RFC 7959 blocks and are held in
	 * memory until complete, so this bounds what one sensor can make the gateway buffer.
	 */
	c->sensors.max_payload = conf_int(p, g, "sensors", "max_payload", 16384, 64, 1 << 20);
	/*
	 * 1 s: a sensor first retransmits a CON after 2 to 3 s (RFC 7252 section 4.8's
	 * ACK_TIMEOUT and ACK_RANDOM_FACTOR), so an answer ready within 1 s rides on the ACK and
	 * the sensor sends nothing twice. Past 2 s every default sensor would retransmit first.
	 */
	c->sensors.piggyback_wait = conf_int(p, g, "sensors", "piggyback_wait", 1000, 0, 2000);
}

/*
 * Whether host (len bytes) is a name reserved for documentation (RFC 2606): example.com,
 * .net and .org and their subdomains, and the .example and .invalid domains. Such a name in a
 * config is the shipped example's placeholder, never filled in: no broker answers there, and
 * gatewayd would only retry it for ever.
 */
static bool
example_host(const char *host, size_t len)
{
	static const char *const domains[] = {"example.com", "example.net", "example.org",
	                                      "example", "invalid"};

	while (len > 0 && host[len - 1] == '.') /* the root's dot */
		len--;
	for (size_t i = 0; i < sizeof(domains) / sizeof(domains[0]); i++) {
		size_t n = strlen(domains[i]);

		if (len < n || strncasecmp(host + len - n, domains[i], n) != 0)
			continue;
		if (len == n || host[len - n - 1] == '.')
			return true;
	}
	return false;
}

/* Accepts ssl://host:port, mqtts://host:port or [v6]:port forms; the port defaults to 8883. */
static void
parse_broker(struct parse *p, const config_setting_t *where, const char *uri)
{
	struct gwconf *c = p->conf;
	const char *rest, *colon, *host_end;
	char *host;
	long port = 8883;

	if (strncmp(uri, "ssl://", 6) == 0)
		rest = uri + 6;
	else if (strncmp(uri, "mqtts://", 8) == 0)
		rest = uri + 8;
	else {
		conf_report(
		        p, where,
		        "'upstream.broker' \"%s\" must start with mqtts:// or ssl:// (the gateway "
		        "only connects upstream over TLS)",
		        uri);
		return;
	}
	if (rest[0] == '[') {
		host_end = strchr(rest, ']');
		if (!host_end) {
			conf_report(p, where, "'upstream.broker' \"%s\": unterminated '['", uri);
			return;
		}
		host = strndup(rest + 1, (size_t)(host_end - rest - 1));
		colon = host_end[1] == ':' ? host_end + 1 : NULL;
	} else {
		colon = strchr(rest, ':');
		host = strndup(rest, colon ? (size_t)(colon - rest) : strlen(rest));
	}
	if (colon) {
		char *end;

		errno = 0;
		port = strtol(colon + 1, &end, 10);
		if (errno || *end || port < 1 || port > 65535) {
			conf_report(p, where, "'upstream.broker' \"%s\": port must be 1 to 65535",
			            uri);
			free(host);
			return;
		}
	}
	if (!host || host[0] == '\0' || strpbrk(host, "/?#@")) {
		conf_report(p, where, "'upstream.broker' \"%s\": expected mqtts://HOST:PORT", uri);
		free(host);
		return;
	}
	/*
	 * A host name (RFC 1123: letters, digits, '-', '.') or an address: the host also goes
	 * into the profiles' user name template (azure), where a '$' or '{' was a placeholder
	 * (found by fuzz-conf).
	 */
	if (strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.:") !=
	    strlen(host)) {
		conf_report(p, where,
		            "'upstream.broker' \"%s\": the host may hold only letters, digits, "
		            "'-' and '.' (or be an address)",
		            uri);
		free(host);
		return;
	}
	if (example_host(host, strlen(host)))
		conf_report(p, where,
		            "'upstream.broker' \"%s\": %s is the example's placeholder (a name "
		            "reserved for documentation), not a broker: put your broker's host "
		            "name here",
		            uri, host);
	c->upstream.broker_host = host;
	c->upstream.broker_port = (uint16_t)port;
	if (strchr(host, ':'))
		c->upstream.broker = xasprintf("ssl://[%s]:%ld", host, port);
	else
		c->upstream.broker = xasprintf("ssl://%s:%ld", host, port);
}

/*
 * upstream.client_id or .username: a template as topics have (known placeholders, no
 * wildcards), but per session, so without ${path}; def when unset.
 */
static char *
get_id_template(struct parse *p, const config_setting_t *g, const char *key, const char *def)
{
	const config_setting_t *s = g ? config_setting_get_member(g, key) : NULL;
	char *t, err[256];

	if (!s)
		return def ? xstrdup(def) : NULL;
	t = conf_string(p, g, "upstream", key, NULL);
	if (!t)
		return NULL;
	if (tmpl_check(t, err, sizeof(err)) < 0) {
		conf_report(p, s, "'upstream.%s': %s", key, err);
	} else if (strstr(t, "${path}")) {
		conf_report(p, s,
		            "'upstream.%s' \"%s\" cannot use ${path}: a session serves every "
		            "resource",
		            key, t);
	} else if (strcmp(key, "client_id") == 0 && !strstr(t, "${device}") &&
	           !strstr(t, "${attr.")) {
		/* Two sessions with one client id take it from each other, endlessly. */
		conf_report(p, s,
		            "'upstream.client_id' \"%s\" must contain ${device} (or an attribute): "
		            "every device needs its own client id",
		            t);
	} else {
		return t;
	}
	free(t);
	return NULL;
}

/* upstream.profile, with a did-you-mean for a near miss. */
static void
parse_profile(struct parse *p, const config_setting_t *g)
{
	struct gwconf *c = p->conf;
	char *v = conf_string(p, g, "upstream", "profile", "generic");
	const char *best = NULL;
	size_t best_d = 3;

	c->upstream.profile = GWCONF_PROFILE_GENERIC;
	if (!v || profile_lookup(v, &c->upstream.profile) == 0) {
		free(v);
		return;
	}
	for (const char *const *n = profile_names; *n; n++) {
		size_t d = conf_edit_distance(v, *n);

		if (d < best_d) {
			best_d = d;
			best = *n;
		}
	}
	if (best)
		conf_report(p, config_setting_get_member(g, "profile"),
		            "'upstream.profile' is \"%s\", expected \"generic\", \"aws\" or "
		            "\"azure\" (did you mean \"%s\"?)",
		            v, best);
	else
		conf_report(p, config_setting_get_member(g, "profile"),
		            "'upstream.profile' is \"%s\", expected \"generic\", \"aws\" or "
		            "\"azure\"",
		            v);
	free(v);
}

/* upstream.alpn: a list (or array) of strings, each 1 to 255 bytes (RFC 7301 section 3.1). */
static void
parse_alpn(struct parse *p, const config_setting_t *g, const char *def)
{
	const config_setting_t *s = g ? config_setting_get_member(g, "alpn") : NULL;
	struct gwconf *c = p->conf;
	int n;

	if (!s) {
		if (!def)
			return;
		c->upstream.alpn = xcalloc(1, sizeof(*c->upstream.alpn));
		c->upstream.alpn[0] = xstrdup(def);
		c->upstream.nalpn = 1;
		return;
	}
	if (!config_setting_is_list(s) && !config_setting_is_array(s)) {
		conf_report(p, s,
		            "'upstream.alpn' must be a list of strings: alpn = (\"x\", \"y\");");
		return;
	}
	n = config_setting_length(s);
	c->upstream.alpn = xcalloc((size_t)n + 1, sizeof(*c->upstream.alpn));
	for (int i = 0; i < n; i++) {
		const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
		const char *v = config_setting_get_string(e);

		if (!v || strlen(v) == 0 || strlen(v) > 255) {
			conf_report(p, e,
			            "each of 'upstream.alpn' must be a string of 1 to 255 bytes");
			continue;
		}
		c->upstream.alpn[c->upstream.nalpn++] = xstrdup(v);
	}
}

/* upstream.mqtt_version: 5, or "3.1.1" (also "5" as a string). */
static void
parse_mqtt_version(struct parse *p, const config_setting_t *g, int def)
{
	const config_setting_t *s = g ? config_setting_get_member(g, "mqtt_version") : NULL;
	struct gwconf *c = p->conf;
	const char *v;

	c->upstream.mqtt_version = def;
	if (!s)
		return;
	v = config_setting_get_string(s);
	if ((config_setting_type(s) == CONFIG_TYPE_INT && config_setting_get_int(s) == 5) ||
	    (v && (strcmp(v, "5") == 0 || strcmp(v, "5.0") == 0)))
		c->upstream.mqtt_version = GWCONF_MQTT_5;
	else if (v && strcmp(v, "3.1.1") == 0)
		c->upstream.mqtt_version = GWCONF_MQTT_311;
	else if (v)
		conf_report(p, s, "'upstream.mqtt_version' is \"%s\", expected 5 or \"3.1.1\"", v);
	else
		conf_report(p, s, "'upstream.mqtt_version' must be 5 or \"3.1.1\"");
}

/*
 * When devices hold their session: always, or on demand (issue 15: a fleet of mostly idle
 * devices need not hold a TLS connection and a broker session each).
 */
static void
parse_sessions(struct parse *p, const config_setting_t *g)
{
	struct gwconf *c = p->conf;
	char *v = conf_string(p, g, "upstream", "sessions", "always");

	c->upstream.on_demand = false;
	if (v && strcmp(v, "on-demand") == 0)
		c->upstream.on_demand = true;
	else if (v && strcmp(v, "always") != 0)
		conf_report(p, config_setting_get_member(g, "sessions"),
		            "'upstream.sessions' is \"%s\", expected \"always\" or \"on-demand\"",
		            v);
	free(v);
	/* Long enough to carry a burst of readings on one connection, short enough to free it. */
	c->upstream.idle_timeout = conf_int(p, g, "upstream", "idle_timeout", 60, 1, 86400);
	/* How long the broker keeps an on-demand device's commands while it is away: a day. */
	c->upstream.session_expiry =
	        conf_int(p, g, "upstream", "session_expiry", 86400, 60, 2592000);
}

static void
parse_upstream(struct parse *p, const config_setting_t *root)
{
	static const char *const known[] = {"broker",          "ca_file",
	                                    "keepalive",       "connect_timeout",
	                                    "publish_timeout", "reconnect_min",
	                                    "reconnect_max",   "rejected_retry",
	                                    "profile",         "client_id",
	                                    "username",        "alpn",
	                                    "mqtt_version",    "tls_session_lifetime",
	                                    "sessions",        "idle_timeout",
	                                    "session_expiry",  NULL};
	const config_setting_t *g = conf_group(p, root, "upstream", true);
	struct gwconf *c = p->conf;
	struct profile_defaults def;
	char *broker;

	if (g)
		conf_check_keys(p, g, "group 'upstream'", known);
	broker = conf_string(p, g, "upstream", "broker", NULL);
	if (broker)
		parse_broker(p, config_setting_get_member(g, "broker"), broker);
	free(broker);
	c->upstream.ca_file = conf_path(p, g, "upstream", "ca_file", NULL);
	if (c->upstream.ca_file && access(c->upstream.ca_file, R_OK) < 0)
		conf_report(p, config_setting_get_member(g, "ca_file"),
		            "'upstream.ca_file' \"%s\" cannot be read: %s", c->upstream.ca_file,
		            strerror(errno));
	c->upstream.keepalive = conf_int(p, g, "upstream", "keepalive", 60, 5, 3600);
	c->upstream.connect_timeout = conf_int(p, g, "upstream", "connect_timeout", 10, 1, 300);
	c->upstream.publish_timeout = conf_int(p, g, "upstream", "publish_timeout", 10, 1, 300);
	c->upstream.reconnect_min = conf_int(p, g, "upstream", "reconnect_min", 1, 1, 3600);
	c->upstream.reconnect_max = conf_int(p, g, "upstream", "reconnect_max", 60, 1, 86400);
	/* Slow: a revoked or unknown certificate needs an operator, not another handshake. */
	c->upstream.rejected_retry = conf_int(p, g, "upstream", "rejected_retry", 600, 10, 86400);
	/*
	 * A resumed TLS session skips the broker's revocation checks and is a bearer credential
	 * while it lives: an hour at most by default, never longer than the broker's own hint.
	 */
	c->upstream.tls_session_lifetime =
	        conf_int(p, g, "upstream", "tls_session_lifetime", 3600, 0, 86400);
	parse_sessions(p, g);
	if (c->upstream.reconnect_max < c->upstream.reconnect_min)
		conf_report(
		        p, config_setting_get_member(g, "reconnect_max"),
		        "'upstream.reconnect_max' (%d) is less than 'upstream.reconnect_min' (%d)",
		        c->upstream.reconnect_max, c->upstream.reconnect_min);
	/* The profile first: it sets the defaults of the keys after it. */
	parse_profile(p, g);
	profile_defaults(c->upstream.profile,
	                 c->upstream.broker_host ? c->upstream.broker_host : "BROKER",
	                 c->upstream.broker_port, &def);
	c->upstream.client_id = get_id_template(p, g, "client_id", def.client_id);
	c->upstream.username =
	        get_id_template(p, g, "username", def.username[0] ? def.username : NULL);
	parse_alpn(p, g, def.alpn);
	parse_mqtt_version(p, g, def.mqtt_version);
}

static void
parse_keystore(struct parse *p, const config_setting_t *root)
{
	static const char *const known[] = {
	        "backend", "tcti", "parent", "create_parent", "device_ca_file", "psk_grace", NULL};
	const config_setting_t *g = conf_group(p, root, "keystore", false);
	const config_setting_t *s = g ? config_setting_get_member(g, "parent") : NULL;
	struct gwconf *c = p->conf;

	if (g)
		conf_check_keys(p, g, "group 'keystore'", known);
	c->keystore.backend = conf_string(p, g, "keystore", "backend", "soft");
	if (c->keystore.backend && strcmp(c->keystore.backend, "soft") != 0 &&
	    strcmp(c->keystore.backend, "tpm") != 0)
		conf_report(p, config_setting_get_member(g, "backend"),
		            "'keystore.backend' is \"%s\", expected \"tpm\" or \"soft\"",
		            c->keystore.backend);
	c->keystore.tcti = conf_string(p, g, "keystore", "tcti", "device:/dev/tpmrm0");
	c->keystore.parent = 0x81000001u;
	if (s) {
		long long v = config_setting_get_int64(s);

		/* libconfig reads 0x81000001 as a negative 32-bit int: take the bits. */
		if (config_setting_type(s) == CONFIG_TYPE_INT && v < 0)
			v = (uint32_t)(int32_t)v;
		/* TPM 2.0 Part 2, 7.4: persistent objects live at 0x81000000 to 0x81FFFFFF. */
		if ((config_setting_type(s) != CONFIG_TYPE_INT &&
		     config_setting_type(s) != CONFIG_TYPE_INT64) ||
		    v < 0x81000000LL || v > 0x81FFFFFFLL)
			conf_report(
			        p, s,
			        "'keystore.parent' must be a persistent TPM handle, 0x81000000 to "
			        "0x81FFFFFF");
		else
			c->keystore.parent = (uint32_t)v;
	}
	c->keystore.create_parent = conf_bool(p, g, "keystore", "create_parent", true);
	/* A day: time to re-flash a sensor on site; up to a year for sensors visited rarely. */
	c->keystore.psk_grace = conf_int(p, g, "keystore", "psk_grace", 86400, 0, 365 * 86400);
	/* Without an upstream CA (already reported) there is nothing to default to. */
	if (!c->upstream.ca_file)
		return;
	c->keystore.device_ca_file =
	        conf_path(p, g, "keystore", "device_ca_file", c->upstream.ca_file);
	/* The default is upstream.ca_file, whose own check speaks for it. */
	if (c->keystore.device_ca_file && g && config_setting_get_member(g, "device_ca_file") &&
	    access(c->keystore.device_ca_file, R_OK) < 0)
		conf_report(p, config_setting_get_member(g, "device_ca_file"),
		            "'keystore.device_ca_file' \"%s\" cannot be read: %s",
		            c->keystore.device_ca_file, strerror(errno));
}

static void
parse_est(struct parse *p, const config_setting_t *root)
{
	static const char *const known[] = {"url",         "ca_file",   "timeout",
	                                    "auto_enroll", "renew_at",  "renew_jitter",
	                                    "retry_min",   "retry_max", NULL};
	const config_setting_t *g = conf_group(p, root, "est", false);
	struct gwconf *c = p->conf;

	if (!g)
		return;
	conf_check_keys(p, g, "group 'est'", known);
	c->est.url = conf_string(p, g, "est", "url", NULL);
	/* The gateway's certificate goes to this server, and device certificates come back. */
	if (c->est.url && strncmp(c->est.url, "https://", 8) != 0)
		conf_report(
		        p, config_setting_get_member(g, "url"),
		        "'est.url' \"%s\" must start with https:// (RFC 7030 runs over TLS only)",
		        c->est.url);
	else if (c->est.url) {
		const char *host = c->est.url + 8;
		size_t len = strcspn(host, ":/?#");

		if (example_host(host, len))
			conf_report(
			        p, config_setting_get_member(g, "url"),
			        "'est.url' \"%s\": %.*s is the example's placeholder (a name "
			        "reserved for documentation), not an EST server: put your server's "
			        "address here",
			        c->est.url, (int)len, host);
	}
	c->est.ca_file = conf_path(p, g, "est", "ca_file", NULL);
	if (c->est.ca_file && access(c->est.ca_file, R_OK) < 0)
		conf_report(p, config_setting_get_member(g, "ca_file"),
		            "'est.ca_file' \"%s\" cannot be read: %s", c->est.ca_file,
		            strerror(errno));
	c->est.timeout = conf_int(p, g, "est", "timeout", 30, 1, 600);
	c->est.auto_enroll = conf_bool(p, g, "est", "auto_enroll", true);
	/* Two thirds: a third of the lifetime is left to ride out an EST or broker outage. */
	c->est.renew_at = conf_fraction(p, g, "est", "renew_at", 0.667, 0.1, 0.95);
	c->est.renew_jitter = conf_fraction(p, g, "est", "renew_jitter", 0.05, 0.0, 0.5);
	if (c->est.renew_jitter >= c->est.renew_at)
		conf_report(p, config_setting_get_member(g, "renew_jitter"),
		            "'est.renew_jitter' (%g) must be less than 'est.renew_at' (%g)",
		            c->est.renew_jitter, c->est.renew_at);
	c->est.retry_min = conf_int(p, g, "est", "retry_min", 60, 1, 86400);
	c->est.retry_max = conf_int(p, g, "est", "retry_max", 3600, 1, 7 * 86400);
	if (c->est.retry_max < c->est.retry_min)
		conf_report(p, config_setting_get_member(g, "retry_max"),
		            "'est.retry_max' (%d) is less than 'est.retry_min' (%d)",
		            c->est.retry_max, c->est.retry_min);
}

/* A resource is one or more '/'-separated segments of letters, digits, '.', '_', '-'. */
static bool
valid_resource(const char *s)
{
	bool seg_empty = true;

	for (; *s; s++) {
		if (*s == '/') {
			if (seg_empty)
				return false;
			seg_empty = true;
		} else if (isalnum((unsigned char)*s) || strchr("._-", *s)) {
			seg_empty = false;
		} else {
			return false;
		}
	}
	return !seg_empty;
}

static void
parse_route(struct parse *p, const config_setting_t *r, struct gwconf_route *route)
{
	static const char *const known[] = {"resource", "topic",        "qos", "qos_con",
	                                    "qos_non",  "content_type", NULL};
	bool azure = p->conf->upstream.profile == GWCONF_PROFILE_AZURE;
	const config_setting_t *topic = config_setting_get_member(r, "topic");
	char *ctype;
	int qos;
	char err[512];

	if (!config_setting_is_group(r)) {
		conf_report(
		        p, r,
		        "each entry of 'routes' must be a group: { resource = ...; topic = ...; }");
		return;
	}
	conf_check_keys(p, r, "a route", known);
	route->resource = conf_string(p, r, "route", "resource", NULL);
	if (route->resource && !valid_resource(route->resource))
		conf_report(p, config_setting_get_member(r, "resource"),
		            "'route.resource' \"%s\" must be path segments like \"telemetry/temp\" "
		            "(letters, digits, '.', '_', '-')",
		            route->resource);
	/* A cloud profile has a topic for routes that give none (profile.h). */
	if (!topic && route->resource &&
	    profile_route_topic(p->conf, route->resource, err, sizeof(err)) == 0)
		route->topic = xstrdup(err);
	else
		route->topic = conf_string(p, r, "route", "topic", NULL);
	if (route->topic && tmpl_check(route->topic, err, sizeof(err)) < 0)
		conf_report(p, config_setting_get_member(r, "topic"), "%s", err);
	/*
	 * A confirmable request asks for an acknowledgement and gets one only once the message is
	 * safe, so QoS 1; a non-confirmable one is fire-and-forget, so QoS 0. `qos` sets both.
	 */
	qos = conf_int(p, r, "route", "qos", -1, 0, 1);
	route->qos_con = conf_int(p, r, "route", "qos_con", qos >= 0 ? qos : 1, 0, 1);
	route->qos_non = conf_int(p, r, "route", "qos_non", qos >= 0 ? qos : 0, 0, 1);
	/*
	 * MQTT 3.1.1 has no properties: its default is "drop". Azure IoT Hub takes the content
	 * type as $.ct in the topic's property bag, where a suffix level would not belong.
	 */
	ctype = conf_string(p, r, "route", "content_type",
	                    azure || p->conf->upstream.mqtt_version == GWCONF_MQTT_5 ? "property"
	                                                                             : "drop");
	if (ctype && strcmp(ctype, "property") == 0 && azure)
		route->content_type = GWCONF_CTYPE_BAG;
	else if (ctype && strcmp(ctype, "property") == 0 &&
	         p->conf->upstream.mqtt_version != GWCONF_MQTT_5)
		conf_report(p, config_setting_get_member(r, "content_type"),
		            "'route.content_type' \"property\" is an MQTT 5 property, and "
		            "'upstream.mqtt_version' is \"3.1.1\": use \"suffix\" (a last topic "
		            "level) or \"drop\"");
	else if (ctype && strcmp(ctype, "property") == 0)
		route->content_type = GWCONF_CTYPE_PROPERTY;
	else if (ctype && strcmp(ctype, "suffix") == 0 && azure)
		conf_report(p, config_setting_get_member(r, "content_type"),
		            "'route.content_type' \"suffix\" would end an Azure IoT Hub topic's "
		            "property bag with a level: use \"property\" (sent as $.ct in the bag) "
		            "or \"drop\" (upstream.profile is \"azure\")");
	else if (ctype && strcmp(ctype, "suffix") == 0)
		route->content_type = GWCONF_CTYPE_SUFFIX;
	else if (ctype && strcmp(ctype, "drop") == 0)
		route->content_type = GWCONF_CTYPE_DROP;
	else if (ctype)
		conf_report(p, config_setting_get_member(r, "content_type"),
		            "'route.content_type' is \"%s\", expected \"property\", \"suffix\" or "
		            "\"drop\"",
		            ctype);
	free(ctype);
	/* The profile's rules: at the topic, or at the route that took the profile's. */
	if (route->topic && route->resource &&
	    profile_check_route(p->conf, route, err, sizeof(err)) < 0)
		conf_report(p, topic ? topic : r, "%s", err);
}

static void
parse_routes(struct parse *p, const config_setting_t *root)
{
	const config_setting_t *rs = config_setting_get_member(root, "routes");
	struct gwconf *c = p->conf;
	struct conf_names seen;
	int n;

	if (!rs) {
		conf_report(p, NULL, "missing required list 'routes': nothing would be forwarded");
		return;
	}
	if (!config_setting_is_list(rs)) {
		conf_report(p, rs, "'routes' must be a list: routes = ( { ... }, { ... } );");
		return;
	}
	n = config_setting_length(rs);
	if (n == 0) {
		conf_report(p, rs, "'routes' is empty: nothing would be forwarded");
		return;
	}
	c->routes = xcalloc((size_t)n, sizeof(*c->routes));
	c->nroutes = (size_t)n;
	conf_names_init(&seen, (size_t)n);
	for (int i = 0; i < n; i++) {
		const config_setting_t *r = config_setting_get_elem(rs, (unsigned)i);
		int first;

		parse_route(p, r, &c->routes[i]);
		if (c->routes[i].resource &&
		    (first = conf_names_add(&seen, c->routes[i].resource,
		                            config_setting_source_line(r))))
			conf_report(p, r, "resource \"%s\" is routed twice (first at line %d)",
			            c->routes[i].resource, first);
	}
	conf_names_finish(&seen);
}

/* A template read from group.key and checked; filter: a subscription's topic filter. */
static char *
get_template(struct parse *p, const config_setting_t *g, const char *gname, const char *key,
             const char *def, bool filter)
{
	char *t = conf_string(p, g, gname, key, def), err[256];

	if (t && (filter ? tmpl_check_filter(t, err, sizeof(err))
	                 : tmpl_check(t, err, sizeof(err))) < 0) {
		conf_report(p, config_setting_get_member(g, key), "'%s.%s': %s", gname, key, err);
		free(t);
		return NULL;
	}
	return t;
}

static void
parse_downlink(struct parse *p, const config_setting_t *root)
{
	static const char *const known[] = {"topic", "resource", "queue", "expiry", "qos", NULL};
	const config_setting_t *g = conf_group(p, root, "downlink", false);
	struct gwconf *c = p->conf;
	const config_setting_t *topic = g ? config_setting_get_member(g, "topic") : NULL;
	char err[512];

	if (!g)
		return;
	conf_check_keys(p, g, "group 'downlink'", known);
	c->downlink.topic =
	        get_template(p, g, "downlink", "topic",
	                     profile_command_filter(c, err, sizeof(err)) == 0 ? err : NULL, true);
	if (c->downlink.topic && profile_check_filter(c, c->downlink.topic, err, sizeof(err)) < 0)
		conf_report(p, topic ? topic : g, "'downlink.topic': %s", err);
	c->downlink.resource = conf_string(p, g, "downlink", "resource", "cmd");
	if (c->downlink.resource && !valid_resource(c->downlink.resource))
		conf_report(p, config_setting_get_member(g, "resource"),
		            "'downlink.resource' \"%s\" must be path segments like \"cmd\" "
		            "(letters, digits, '.', '_', '-')",
		            c->downlink.resource);
	else if (c->downlink.resource && gwconf_route_find(c, c->downlink.resource))
		conf_report(p, config_setting_get_member(g, "resource"),
		            "'downlink.resource' \"%s\" is also a route's resource",
		            c->downlink.resource);
	/* A sensor that sleeps for hours may find several commands: enough for a few. */
	c->downlink.queue = conf_int(p, g, "downlink", "queue", 8, 1, 1024);
	c->downlink.expiry = conf_int(p, g, "downlink", "expiry", 3600, 1, 30 * 86400);
	c->downlink.qos = conf_int(p, g, "downlink", "qos", 1, 0, 1);
}

static void
parse_presence(struct parse *p, const config_setting_t *root)
{
	static const char *const known[] = {"topic", "online", "offline", "qos", NULL};
	const config_setting_t *g = conf_group(p, root, "presence", false);
	struct gwconf *c = p->conf;

	if (!g)
		return;
	conf_check_keys(p, g, "group 'presence'", known);
	if (c->upstream.profile == GWCONF_PROFILE_AZURE)
		conf_report(
		        p, g,
		        "no 'presence' under upstream.profile \"azure\": Azure IoT Hub keeps no "
		        "retained messages, and disconnects a device that publishes outside "
		        "devices/ID/messages/events/ (its connection state comes from IoT Hub's "
		        "own device lifecycle events)");
	c->presence.topic = get_template(p, g, "presence", "topic", NULL, false);
	c->presence.online = conf_string(p, g, "presence", "online", "online");
	c->presence.offline = conf_string(p, g, "presence", "offline", "offline");
	c->presence.qos = conf_int(p, g, "presence", "qos", 1, 0, 1);
}

/* A byte count: libconfig reads numbers past 2^31 only with an L suffix, so take both. */
static long long
get_bytes(struct parse *p, const config_setting_t *g, const char *gname, const char *key,
          long long def, long long min, long long max)
{
	const config_setting_t *s = g ? config_setting_get_member(g, key) : NULL;
	long long v;

	if (!s)
		return def;
	if (config_setting_type(s) != CONFIG_TYPE_INT &&
	    config_setting_type(s) != CONFIG_TYPE_INT64) {
		conf_report(p, s, "'%s.%s' must be a number of bytes", gname, key);
		return def;
	}
	v = config_setting_get_int64(s);
	if (v < min || v > max) {
		conf_report(p, s, "'%s.%s' is %lld, expected %lld to %lld bytes", gname, key, v,
		            min, max);
		return def;
	}
	return v;
}

static void
parse_spool(struct parse *p, const config_setting_t *root)
{
	static const char *const known[] = {"ack",          "fsync",         "fsync_interval",
	                                    "device_bytes", "total_bytes",   "max_age",
	                                    "when_full",    "segment_bytes", NULL};
	const config_setting_t *g = conf_group(p, root, "spool", false);
	struct gwconf *c = p->conf;
	char *v;

	if (g)
		conf_check_keys(p, g, "group 'spool'", known);
	v = conf_string(p, g, "spool", "ack", "durable");
	c->spool.ack_durable = !v || strcmp(v, "upstream") != 0;
	if (v && strcmp(v, "durable") != 0 && strcmp(v, "upstream") != 0)
		conf_report(p, config_setting_get_member(g, "ack"),
		            "'spool.ack' is \"%s\", expected \"durable\" or \"upstream\"", v);
	free(v);
	v = conf_string(p, g, "spool", "fsync", "batch");
	c->spool.fsync =
	        v && strcmp(v, "interval") == 0 ? GWCONF_FSYNC_INTERVAL : GWCONF_FSYNC_BATCH;
	if (v && strcmp(v, "batch") != 0 && strcmp(v, "interval") != 0)
		conf_report(p, config_setting_get_member(g, "fsync"),
		            "'spool.fsync' is \"%s\", expected \"batch\" or \"interval\"", v);
	free(v);
	c->spool.fsync_interval = conf_int(p, g, "spool", "fsync_interval", 100, 1, 10000);
	c->spool.device_bytes =
	        get_bytes(p, g, "spool", "device_bytes", 16LL << 20, 64LL << 10, 1LL << 40);
	c->spool.total_bytes =
	        get_bytes(p, g, "spool", "total_bytes", 1LL << 30, 64LL << 10, 1LL << 42);
	/* A record is its message plus a 40-byte header, its topic and its content type. */
	if (c->spool.device_bytes < (long long)c->sensors.max_payload + 4096)
		conf_report(p, config_setting_get_member(g, "device_bytes"),
		            "'spool.device_bytes' (%lld) cannot hold one message of "
		            "'sensors.max_payload' (%d bytes) with its topic: make it at least %d",
		            c->spool.device_bytes, c->sensors.max_payload,
		            c->sensors.max_payload + 4096);
	if (c->spool.total_bytes < c->spool.device_bytes)
		conf_report(p, config_setting_get_member(g, "total_bytes"),
		            "'spool.total_bytes' (%lld) is less than 'spool.device_bytes' (%lld)",
		            c->spool.total_bytes, c->spool.device_bytes);
	/* A week: long enough for a broker outage over a holiday, short of stale data. */
	c->spool.max_age = conf_int(p, g, "spool", "max_age", 7 * 86400, 0, 365 * 86400);
	v = conf_string(p, g, "spool", "when_full", "refuse");
	c->spool.drop_oldest = v && strcmp(v, "drop_oldest") == 0;
	if (v && strcmp(v, "refuse") != 0 && strcmp(v, "drop_oldest") != 0)
		conf_report(p, config_setting_get_member(g, "when_full"),
		            "'spool.when_full' is \"%s\", expected \"refuse\" or \"drop_oldest\"",
		            v);
	free(v);
	c->spool.segment_bytes =
	        (int)get_bytes(p, g, "spool", "segment_bytes", 1 << 20, 4096, 1 << 30);
}

/* The metrics endpoint: loopback only, it has no authentication of its own. */
static void
parse_metrics(struct parse *p, const config_setting_t *root)
{
	static const char *const known[] = {"listen", "port", NULL};
	const config_setting_t *g = conf_group(p, root, "metrics", false);
	struct gwconf *c = p->conf;
	struct in6_addr a6;
	struct in_addr a4;

	if (!g)
		return;
	conf_check_keys(p, g, "group 'metrics'", known);
	c->metrics.listen = conf_string(p, g, "metrics", "listen", "127.0.0.1");
	if (c->metrics.listen &&
	    !(inet_pton(AF_INET, c->metrics.listen, &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127) &&
	    !(inet_pton(AF_INET6, c->metrics.listen, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6)))
		conf_report(
		        p, config_setting_get_member(g, "listen"),
		        "'metrics.listen' \"%s\" must be a loopback address (127.0.0.1 or ::1): "
		        "the metrics have no authentication; a scraper elsewhere reaches them "
		        "through a proxy or an SSH tunnel",
		        c->metrics.listen);
	if (!config_setting_get_member(g, "port")) {
		conf_report(p, g,
		            "'metrics.port' is missing: the TCP port to serve metrics on "
		            "(9464 is usual), or remove the group 'metrics'");
		return;
	}
	c->metrics.port = (uint16_t)conf_int(p, g, "metrics", "port", 9464, 1, 65535);
}

static bool check_text(struct parse *p, const char *file, const char *text, size_t len,
                       const char *dir, int depth);

/* libconfig's limit on nested @include (1.5: 10); deeper ones it reports itself. */
#define INCLUDE_DEPTH 10

/*
 * An @include target, checked as the file that includes it is: libconfig 1.5 exits the
 * process ("input in flex scanner failed") when one is a folder, which a reload would do to
 * the running daemon. A file that cannot be opened is libconfig's to report.
 */
static bool
check_include(struct parse *p, const char *file, int line, const char *dir, const char *name,
              int depth)
{
	char *path = NULL, *text = NULL;
	struct stat st;
	FILE *f = NULL;
	size_t len;
	bool ok = true;

	/* libconfig takes a relative one from the top file's folder, at every depth. */
	path = name[0] == '/' ? xstrdup(name) : xasprintf("%s/%s", dir, name);
	if (stat(path, &st) < 0 || depth >= INCLUDE_DEPTH)
		goto out;
	if (!S_ISREG(st.st_mode)) {
		conf_report_at(p, file, line, "@include \"%s\": not a file (a folder?)", name);
		ok = false;
		goto out;
	}
	if (st.st_size > GWCONF_MAX_SIZE) {
		conf_report_at(p, file, line, "@include \"%s\": larger than %d MiB", name,
		               GWCONF_MAX_SIZE >> 20);
		ok = false;
		goto out;
	}
	f = fopen(path, "r");
	if (!f)
		goto out;
	text = xmalloc((size_t)st.st_size + 1);
	len = fread(text, 1, (size_t)st.st_size, f);
	ok = check_text(p, name, text, len, dir, depth + 1);
out:
	if (f)
		fclose(f);
	free(text);
	free(path);
	return ok;
}

/*
 * A config file is text of a bounded size. A NUL byte, or the escape \x00 in a string, would
 * cut a value short where libconfig hands it over (gateway.id "gw\x00x" became "gw"): both
 * are refused here, before libconfig reads the text, and so is an @include of something that
 * is not a file (check_include()). Comments are skipped. file names it in errors; dir is where
 * relative includes are found.
 */
static bool
check_text(struct parse *p, const char *file, const char *text, size_t len, const char *dir,
           int depth)
{
	const char *nul = memchr(text, '\0', len);
	int line = 1;
	bool ok = true;

	if (nul) {
		for (const char *c = text; c < nul; c++)
			line += *c == '\n';
		conf_report_at(p, file, line,
		               "a NUL byte: a config file is text (was it saved as "
		               "UTF-16, or damaged?)");
		return false;
	}
	for (size_t i = 0, bol = 0; i < len; i++) {
		char c = text[i];

		/* bol: where the line's first non-blank is, as libconfig's @include wants it. */
		if (c == '\n') {
			line++;
			bol = i + 1;
		} else if ((c == ' ' || c == '\t') && bol == i) {
			bol = i + 1;
		} else if (c == '@' && bol == i && len - i > 9 &&
		           memcmp(text + i, "@include", 8) == 0) {
			const char *q = memchr(text + i, '"', len - i), *end;
			const char *eol = memchr(text + i, '\n', len - i);
			char *name;

			if (!q || (eol && q > eol) ||
			    !(end = memchr(q + 1, '"', len - (size_t)(q + 1 - text))) ||
			    (eol && end > eol))
				continue; /* not an include libconfig takes: its syntax error */
			name = strndup(q + 1, (size_t)(end - q - 1));
			if (name && !check_include(p, file, line, dir, name, depth))
				ok = false;
			free(name);
			i = (size_t)(end - text);
		} else if (c == '#' || (c == '/' && i + 1 < len && text[i + 1] == '/')) {
			while (i + 1 < len && text[i + 1] != '\n')
				i++;
		} else if (c == '/' && i + 1 < len && text[i + 1] == '*') {
			for (i += 2; i + 1 < len && !(text[i] == '*' && text[i + 1] == '/'); i++)
				line += text[i] == '\n';
			i++;
		} else if (c == '"') {
			for (i++; i < len && text[i] != '"'; i++) {
				line += text[i] == '\n';
				if (text[i] != '\\' || i + 1 >= len)
					continue;
				if ((text[i + 1] == 'x' || text[i + 1] == 'X') && i + 3 < len &&
				    text[i + 2] == '0' && text[i + 3] == '0') {
					conf_report_at(p, file, line,
					               "the escape \\x00 in a string: a "
					               "value cannot hold a NUL byte");
					ok = false;
				}
				i++; /* the escaped character, a quote included */
			}
		}
	}
	return ok;
}

/* The whole file, checked by check_text(); NULL if it is not a config (reported). */
static char *
read_text(struct parse *p, FILE *f, const char *dir)
{
	char *text = xmalloc(GWCONF_MAX_SIZE + 1);
	size_t len;

	len = fread(text, 1, GWCONF_MAX_SIZE + 1, f);
	if (ferror(f)) {
		conf_report(p, NULL, "cannot read: %s", strerror(errno));
	} else if (len > GWCONF_MAX_SIZE) {
		conf_report(p, NULL,
		            "larger than %d MiB: not a config file (the example is 20 KiB; put "
		            "long lists in files of their own with @include)",
		            GWCONF_MAX_SIZE >> 20);
	} else if (check_text(p, p->path, text, len, dir, 0)) {
		text[len] = '\0';
		return text;
	}
	free(text);
	return NULL;
}

int
gwconf_load(const char *path, struct gwconf **out, struct gwconf_errors *errs)
{
	static const char *const known[] = {"gateway", "sensors",  "upstream", "keystore",
	                                    "est",     "routes",   "downlink", "presence",
	                                    "spool",   "policies", "metrics",  NULL};
	struct parse p = {.path = path, .errs = errs};
	config_t cfg;
	FILE *f;
	char *text = NULL, *copy;
	const char *dir;
	int r;

	*errs = (struct gwconf_errors){0};
	*out = NULL;
	/* Open it ourselves: libconfig reports an unreadable file only as "file I/O error". */
	f = fopen(path, "r");
	if (!f) {
		r = -errno;
		conf_report(&p, NULL, "cannot open: %s", strerror(errno));
		return r;
	}
	config_init(&cfg);
	/* @include "x.conf" is relative to the config file's folder, not our cwd. */
	copy = xstrdup(path);
	dir = dirname(copy);
	config_set_include_dir(&cfg, dir);
	text = read_text(&p, f, dir);
	free(copy);
	if (!text) {
		r = -EINVAL;
		goto out;
	}
	if (config_read_string(&cfg, text) != CONFIG_TRUE) {
		errs->lines = xcalloc(1, sizeof(*errs->lines));
		errs->lines[0] = xasprintf("%s:%d: %s",
		                           config_error_file(&cfg) ? config_error_file(&cfg) : path,
		                           config_error_line(&cfg), config_error_text(&cfg));
		errs->count = errs->total = 1;
		r = -EINVAL;
		goto out;
	}
	p.conf = xcalloc(1, sizeof(*p.conf));
	p.conf->file = xstrdup(path);
	conf_check_keys(&p, config_root_setting(&cfg), "the top level", known);
	parse_gateway(&p, config_root_setting(&cfg));
	parse_sensors(&p, config_root_setting(&cfg));
	parse_upstream(&p, config_root_setting(&cfg));
	parse_keystore(&p, config_root_setting(&cfg));
	parse_est(&p, config_root_setting(&cfg));
	parse_routes(&p, config_root_setting(&cfg));
	conf_parse_policies(&p, config_root_setting(&cfg));
	parse_downlink(&p, config_root_setting(&cfg));
	parse_presence(&p, config_root_setting(&cfg));
	parse_spool(&p, config_root_setting(&cfg));
	parse_metrics(&p, config_root_setting(&cfg));
	if (errs->total > 0) {
		r = -EINVAL;
		goto out;
	}
	*out = p.conf;
	p.conf = NULL;
	r = 0;
out:
	gwconf_free(p.conf);
	config_destroy(&cfg);
	free(text);
	fclose(f);
	return r;
}

void
gwconf_free(struct gwconf *c)
{
	if (!c)
		return;
	conf_free_policies(c);
	for (size_t i = 0; i < c->nroutes; i++) {
		free(c->routes[i].resource);
		free(c->routes[i].topic);
	}
	free(c->routes);
	free(c->downlink.topic);
	free(c->downlink.resource);
	free(c->presence.topic);
	free(c->presence.online);
	free(c->presence.offline);
	free(c->est.url);
	free(c->est.ca_file);
	free(c->keystore.backend);
	free(c->keystore.tcti);
	free(c->keystore.device_ca_file);
	free(c->upstream.broker);
	free(c->upstream.broker_host);
	free(c->upstream.ca_file);
	free(c->upstream.client_id);
	free(c->upstream.username);
	for (size_t i = 0; i < c->upstream.nalpn; i++)
		free(c->upstream.alpn[i]);
	free(c->upstream.alpn);
	free(c->sensors.listen);
	free(c->metrics.listen);
	free(c->state_dir);
	free(c->control_socket);
	free(c->gateway_id);
	free(c->file);
	free(c);
}

void
gwconf_errors_finish(struct gwconf_errors *errs)
{
	for (size_t i = 0; i < errs->count; i++)
		free(errs->lines[i]);
	free(errs->lines);
	*errs = (struct gwconf_errors){0};
}

void
gwconf_errors_print(const struct gwconf_errors *errs, FILE *f)
{
	for (size_t i = 0; i < errs->count; i++)
		fprintf(f, "%s\n", errs->lines[i]);
	if (errs->total > errs->count)
		fprintf(f, "%s\n", gwconf_errors_more(errs));
}

const char *
gwconf_errors_more(const struct gwconf_errors *errs)
{
	static char buf[128];

	if (errs->total <= errs->count)
		return NULL;
	snprintf(buf, sizeof(buf), "... and %zu more errors, not shown: fix the ones above first",
	         errs->total - errs->count);
	return buf;
}

const struct gwconf_route *
gwconf_route_find(const struct gwconf *conf, const char *resource)
{
	for (size_t i = 0; i < conf->nroutes; i++) {
		/* The parser asks too, while a route without a resource (reported) has none. */
		if (conf->routes[i].resource && strcmp(conf->routes[i].resource, resource) == 0)
			return &conf->routes[i];
	}
	return NULL;
}
