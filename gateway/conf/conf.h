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
#define GWCONF_DEFAULT_FILE   GW_SYSCONFDIR "/gateway/gateway.conf"
#define GWCONF_DEFAULT_SOCKET "/run/gateway/control.sock"

/* What becomes of a message's CoAP Content-Format upstream. */
enum gwconf_ctype {
	GWCONF_CTYPE_PROPERTY, /* the MQTT 5 content-type property */
	GWCONF_CTYPE_SUFFIX,   /* a last topic level, e.g. ".../json", for MQTT 3.1.1 readers */
	GWCONF_CTYPE_DROP,
	GWCONF_CTYPE_BAG, /* $.ct in an Azure IoT Hub topic's property bag (profile azure) */
};

/* The kind of broker upstream (upstream.profile, see profile.h). */
enum gwconf_profile {
	GWCONF_PROFILE_GENERIC,
	GWCONF_PROFILE_AWS,
	GWCONF_PROFILE_AZURE,
};

/* upstream.mqtt_version, as the protocol level in CONNECT (MQTT 5.0 section 3.1.2.2). */
#define GWCONF_MQTT_311 4
#define GWCONF_MQTT_5   5

struct gwconf_route {
	char *resource; /* CoAP Uri-Path served, "a/b" */
	char *topic;    /* template, see gateway/conf/template.h */
	int qos_con;    /* QoS of what arrives in a confirmable request */
	int qos_non;    /* ... and in a non-confirmable one */
	enum gwconf_ctype content_type;
};

/*
 * Access policies, the "policies" list (see configs/gateway.conf): parsed by conf-policy.c,
 * evaluated for every message by policy.c.
 */
struct gwconf_condition {
	char *attribute; /* the device attribute it reads */
	char **equals;   /* holds if the value is one of these (a missing attribute fails) */
	size_t nequals;
	char **not_equals; /* holds if the value is none of these (a missing attribute passes) */
	size_t nnot_equals;
	char **like; /* holds if the value matches one of these globs, fnmatch(3); missing fails */
	size_t nlike;
};

struct gwconf_statement {
	bool deny;        /* effect = "deny" */
	unsigned actions; /* mask of 1u << enum policy_action (policy.h) */
	char **resources; /* as written: "coap:PATH", "mqtt:TOPIC" or "*" */
	size_t nresources;
	struct gwconf_condition *conditions; /* all must hold */
	size_t nconditions;
	char *file; /* where the statement is written, to explain a decision as FILE:LINE */
	int line;
};

struct gwconf_policy {
	char *name;
	int line;
	char **devices; /* ids of the devices it applies to, "*" for every device ... */
	size_t ndevices;
	char **groups; /* ... and devices whose attribute group names one of these */
	size_t ngroups;
	struct gwconf_statement *statements;
	size_t nstatements;
};

enum gwconf_fsync {
	GWCONF_FSYNC_BATCH,    /* after each batch of appends, before their sensors hear 2.04 */
	GWCONF_FSYNC_INTERVAL, /* every spool.fsync_interval ms */
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
		int max_payload;    /* bytes of one message, reassembled from Block1 if need be */
		int piggyback_wait; /* ms a CON's ACK waits to carry its answer; 0: never */
	} sensors;

	struct {
		char *broker;      /* ssl://host:port, as logs and status show it */
		char *broker_host; /* the name the broker's certificate must carry */
		uint16_t broker_port;
		char *ca_file;
		int keepalive;
		int connect_timeout;
		int publish_timeout;
		int reconnect_min;
		int reconnect_max;
		int rejected_retry;       /* seconds between tries of a device the broker refused */
		int tls_session_lifetime; /* seconds a TLS session may be resumed; 0: never */
		/* Sessions on demand (upstream.sessions), unless a device's attribute says. */
		bool on_demand;
		int idle_timeout;   /* seconds an on-demand session stays up with nothing to do */
		int session_expiry; /* seconds the broker keeps an on-demand session (MQTT 5) */
		enum gwconf_profile profile;
		char *client_id; /* template, see gateway/conf/template.h */
		char *username;  /* template; NULL: no user name is sent */
		char **alpn;     /* ALPN protocols offered, in order */
		size_t nalpn;
		int mqtt_version; /* GWCONF_MQTT_5 or GWCONF_MQTT_311 */
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

	/* Without a "policies" list (have_policies false) every device may do everything. */
	struct gwconf_policy *policies;
	size_t npolicies;
	bool have_policies;

	/* Commands from the cloud to sensors; topic is NULL when the group is absent. */
	struct {
		char *topic;    /* filter template each device's session subscribes to */
		char *resource; /* CoAP resource the sensors observe or poll */
		int queue;      /* commands held per device */
		int expiry;     /* seconds a command waits for its sensor */
		int qos;        /* of the subscription */
	} downlink;

	/* Online/offline status per device; topic is NULL when the group is absent. */
	struct {
		char *topic; /* publish template, retained */
		char *online;
		char *offline; /* also the last will */
		int qos;
	} presence;

	/* The Prometheus endpoint over HTTP; listen is NULL when the group is absent. */
	struct {
		char *listen; /* a loopback address */
		uint16_t port;
	} metrics;

	/* Store-and-forward of uplink messages (always on), in STATE_DIR/spool. */
	struct {
		bool ack_durable; /* 2.04 once fsync'd in the spool; false: once PUBACKed */
		enum gwconf_fsync fsync;
		int fsync_interval; /* ms, for GWCONF_FSYNC_INTERVAL */
		long long device_bytes;
		long long total_bytes;
		int max_age;      /* seconds; 0: no limit */
		bool drop_oldest; /* when full; false: refuse new messages (5.03) */
		int segment_bytes;
	} spool;
};

/*
 * Errors as "FILE:LINE: message", in file order: the first GWCONF_ERRORS_KEPT of them, so that
 * a broken file of any size costs bounded memory, log and gwctl output; total counts them all.
 */
#define GWCONF_ERRORS_KEPT 100
/* The largest config file read, in bytes: past any real one, and parsed in 0.2 s. */
#define GWCONF_MAX_SIZE (4 << 20)
struct gwconf_errors {
	char **lines;
	size_t count; /* kept in lines */
	size_t total; /* found */
};

/*
 * Parses and validates path. On success returns 0 and a new config in *out. Otherwise returns
 * -EINVAL (or -errno if the file cannot be read) with every problem found listed in errs.
 */
int gwconf_load(const char *path, struct gwconf **out, struct gwconf_errors *errs);
void gwconf_free(struct gwconf *conf);
void gwconf_errors_finish(struct gwconf_errors *errs);
/* One error per line, then how many more there were if not all were kept. */
void gwconf_errors_print(const struct gwconf_errors *errs, FILE *f);
/* "... and N more errors, not shown: ...", or NULL if all were kept; valid until the next call. */
const char *gwconf_errors_more(const struct gwconf_errors *errs);

/* The route serving a CoAP Uri-Path, or NULL. */
const struct gwconf_route *gwconf_route_find(const struct gwconf *conf, const char *resource);

#endif
