/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_ADMIN_H
#define GW_ADMIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

/*
 * The gwctl verbs, run against an open keystore. gwctl runs them itself when gatewayd is not
 * running; gatewayd runs them for gwctl's requests on its control socket, then applies what
 * changed to its sessions. Either way the same code, the same checks, the same words.
 */

struct keystore;

/* admin_run()'s status for a verb that answers later, through the request's done. */
#define ADMIN_PENDING (-1)

/* The late answer of a verb: status 0 (message is the output) or 1 (message is the error). */
typedef void (*admin_done_fn)(void *ctx, int status, const char *message);

struct admin_request {
	int argc;
	char **argv;       /* the command words, e.g. {"device", "add", "dev-a"} */
	const char *input; /* a file gwctl read for the verb (import-cert), or NULL */
	size_t input_len;
	/* For verbs that wait on the network (device enroll): how to answer later. */
	admin_done_fn done;
	void *done_ctx;
};

enum admin_change { ADMIN_CHANGE_NONE, ADMIN_CHANGE_STATE, ADMIN_CHANGE_CERT, ADMIN_CHANGE_PSK };

/* A device as the running daemon sees it (device list and show). */
struct admin_activity {
	unsigned dtls_sessions; /* its sensor's, now */
	time_t last_seen;       /* its sensor's last request, 0: not since the start */
	uint64_t up_messages;   /* from its sensor, accepted */
	uint64_t up_bytes;
	uint64_t down_messages; /* commands for its sensor, queued */
	uint64_t spooled;       /* messages waiting in its spool ... */
	uint64_t spooled_bytes; /* ... and their bytes */
	uint64_t spool_held;    /* of those, held: the broker refuses the device */
	size_t commands;        /* commands waiting for its sensor */
};

/* What the running daemon adds to the verbs; gwctl on its own passes NULL. */
struct admin_hooks {
	/*
	 * Called after a verb changed a device: its state or attributes (added, removed,
	 * suspended, ...; the daemon brings its sessions in line), or its certificate (the
	 * upstream session must start again with the new one).
	 */
	void (*changed)(const char *device_id, enum admin_change what, void *data);
	/* The device's upstream session in a word, and why the last attempt failed (or NULL). */
	const char *(*upstream)(const char *device_id, const char **reason, void *data);
	/* The device's certificate enrolment in words, or NULL. */
	const char *(*enrolment)(const char *device_id, void *data);
	/*
	 * Enrols or renews the device's certificate now: 0 and done(ctx, ...) later, or -errno
	 * with the reason written to err.
	 */
	int (*enroll)(const char *device_id, admin_done_fn done, void *ctx, FILE *err, void *data);
	/* What the device did since gatewayd started, and what waits for it. */
	void (*activity)(const char *device_id, struct admin_activity *a, void *data);
	/*
	 * gwctl reload: re-reads the config and applies it; ADMIN_PENDING and done(ctx, ...)
	 * later, or 1 with the reason written to err.
	 */
	int (*reload)(admin_done_fn done, void *ctx, FILE *err, void *data);
	/*
	 * gwctl device drop-spool: drops the messages in the device's spool (count, bytes) or
	 * -errno (-EBUSY: its upstream session is up and delivering them). gwctl without the
	 * daemon opens the spool itself.
	 */
	int (*drop_spool)(const char *device_id, uint64_t *count, uint64_t *bytes, void *data);
	/* gwctl status: the gateway at a glance. */
	void (*status)(FILE *out, void *data);
	/* gwctl metrics: the counters, in the Prometheus text format. */
	void (*metrics)(FILE *out, void *data);
	/* The CN of the gateway's own certificate request. */
	const char *gateway_id;
	void *data;
};

/*
 * Runs one command. What the user asked for goes to out, errors to err. Returns the exit
 * status: 0 done, 1 refused or failed, 2 not a valid command (usage on err); or ADMIN_PENDING,
 * and req->done follows once.
 */
int admin_run(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
              const struct admin_hooks *hooks);

/*
 * The device a command reads and writes alone (its id), or NULL when it needs the whole store:
 * gwctl then opens the store with that device only (keystore_config.only).
 */
const char *admin_one_device(int argc, char **argv);

/* The command summary gwctl prints for -h. */
void admin_usage(FILE *f);

#endif
