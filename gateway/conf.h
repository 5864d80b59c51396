/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_CONF_H
#define GW_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "log.h"

/*
 * The validated configuration. Unlike the modules' own state this struct is plain data:
 * every part of the daemon reads it, and a reload builds a fresh one to compare and swap.
 */

#ifndef GW_SYSCONFDIR
#define GW_SYSCONFDIR "/etc"
#endif
#define GWCONF_DEFAULT_FILE GW_SYSCONFDIR "/gateway/gateway.conf"

struct gwconf_route {
	char *resource; /* CoAP Uri-Path served, "a/b" */
	char *topic;    /* template, see bridges/template.h */
	int qos;
};

struct gwconf {
	char *file;
	char *gateway_id;
	char *state_dir;
	char *control_socket;
	enum log_level log_level;

	struct {
		char *listen;
		uint16_t port;
		int receive_buffer;
		int max_sessions;
	} sensors;

	struct {
		char *broker;      /* as paho wants it: ssl://host:port */
		char *broker_host; /* the name the broker's certificate must carry */
		uint16_t broker_port;
		char *ca_file;
		int keepalive;
		int connect_timeout;
		int publish_timeout;
		int reconnect_min;
		int reconnect_max;
		int rejected_retry; /* seconds between tries of a device the broker refused */
	} upstream;

	struct {
		char *backend;        /* "soft" or "tpm" */
		char *tcti;           /* tpm: TCTI configuration string */
		uint32_t parent;      /* tpm: persistent handle of the storage key */
		bool create_parent;   /* tpm: create the storage key if missing */
		char *device_ca_file; /* CA(s) device certificates must chain to */
		int psk_grace;        /* seconds a rotated-out PSK stays valid */
	} keystore;

	/* Certificate enrolment over EST (RFC 7030); url is NULL when the group is absent. */
	struct {
		char *url;           /* https://host[:port]/.well-known/est[/label] */
		char *ca_file;       /* CA(s) the EST server's certificate must chain to */
		int timeout;         /* seconds for one request */
		bool auto_enroll;    /* enrol devices added without a certificate */
		double renew_at;     /* fraction of a certificate's lifetime when it is renewed */
		double renew_jitter; /* renewals spread over this fraction before renew_at */
		int retry_min;       /* seconds before a failed enrolment is tried again */
		int retry_max;       /* the backoff's ceiling */
	} est;

	struct gwconf_route *routes;
	size_t nroutes;
};

/* Errors as "FILE:LINE: message", in file order. */
struct gwconf_errors {
	char **lines;
	size_t count;
};

/*
 * Parses and validates path. On success returns 0 and a new config in *out. Otherwise returns
 * -EINVAL (or -errno if the file cannot be read) with every problem found listed in errs.
 */
int gwconf_load(const char *path, struct gwconf **out, struct gwconf_errors *errs);
void gwconf_free(struct gwconf *conf);
void gwconf_errors_finish(struct gwconf_errors *errs);
/* One error per line. */
void gwconf_errors_print(const struct gwconf_errors *errs, FILE *f);

/* The route serving a CoAP Uri-Path, or NULL. */
const struct gwconf_route *gwconf_route_find(const struct gwconf *conf, const char *resource);

/*
 * Device and gateway ids become MQTT client ids, topic levels and folder names: 1 to 64
 * letters, digits, '.', '_' or '-', starting with a letter or digit.
 */
bool gwconf_valid_id(const char *id);

#endif
