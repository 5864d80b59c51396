/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_DAEMON_H
#define GW_DAEMON_H

#include "admin.h"

#include <stdbool.h>
#include <stdio.h>
#include <time.h>

/*
 * gatewayd's parts, as gatewayd.c puts them together. Shared with the parts of the daemon
 * that look across all of them: reload.c (SIGHUP, gwctl reload) and report.c (gwctl status,
 * metrics).
 */
struct daemon {
	struct gw_loop *loop;
	struct gwconf *conf;
	time_t conf_loaded; /* when conf was read: at start or by the last good reload */
	time_t started;
	bool verbose; /* -v: debug whatever the config's log_level */
	struct keystore *ks;
	struct mqttbr *mqtt;
	struct spool *spool;
	struct cmdq *commands; /* NULL without a downlink group */
	struct router *router;
	struct coapbr *coap;
	struct control *control;
	struct enrol *enrol;            /* NULL without an EST server */
	struct sessions *sessions;      /* devices' sessions follow the keystore */
	struct metrics_server *metrics; /* NULL without a metrics group */
	struct admin_hooks hooks;
	struct gw_notify_watchdog *watchdog; /* NULL unless the unit sets WatchdogSec= */
	struct reloading *reloading;         /* a reload in progress (reload.c), or NULL */
	bool stopping;
	/* The TPM worker's busy time, sampled every TPM_SAMPLE_MS for status: its busy fraction. */
	struct gw_timer *tpm_sampler;
	uint64_t tpm_busy_ns, tpm_busy_permille;
};

#define TPM_SAMPLE_MS 5000

/*
 * Re-reads the config file, off the loop, and returns ADMIN_PENDING (or 1 with the reason on
 * err). Then, on the loop: on any error the running config stays and every reason goes to the
 * log; otherwise the difference is applied (see reload.c) and summed up in the log. done (if
 * not NULL: gwctl) hears the same, as a gwctl verb's late answer. Asked again while one is in
 * progress, the file is read again after it.
 */
int daemon_reload(struct daemon *d, admin_done_fn done, void *ctx, FILE *err);
/* At stop: waits for a reload in progress and tells its gwctl clients nothing was applied. */
void daemon_reload_finish(struct daemon *d);

/* report.c: the admin hooks behind gwctl status, metrics and device list/show. */
void daemon_status(FILE *out, void *data);
void daemon_metrics(FILE *out, void *data);
void daemon_activity(const char *id, struct admin_activity *a, void *data);
/* The whole exposition, for the HTTP endpoint and daemon_metrics(). */
struct metrics_writer;
void daemon_collect(struct metrics_writer *w, void *data);
/*
 * (Re)starts the HTTP endpoint as the config says (none without a metrics group); on failure
 * there is none, and the reason is logged.
 */
int daemon_metrics_start(struct daemon *d);

#endif
