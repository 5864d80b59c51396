/* SPDX-License-Identifier: Apache-2.0 */
#include "admin.h"
#include "enc.h"
#include "keystore.h"
#include "log.h"
#include "xalloc.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct verb {
	const char *name;
	const char *args;
	int (*run)(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
	           const struct admin_hooks *hooks);
	enum admin_change changes; /* told to hooks->changed for argv[2] on success */
	/*
	 * Reads and writes argv[2]'s folder alone. Not add and pair, which need every PSK
	 * identity (a new one must be unique), nor list; nor drop-spool, whose spool_open()
	 * would take every device missing from the store as removed and delete its spool.
	 */
	bool one_device;
};

static void
format_expiry(time_t t, char *buf, size_t len)
{
	struct tm tm;

	if (t == 0 || !gmtime_r(&t, &tm) || strftime(buf, len, "%Y-%m-%d", &tm) == 0)
		snprintf(buf, len, "-");
}

/* --psk-key HEX: the key a sensor already has, for add and pair. */
static ssize_t
parse_psk_option(const char *hex, uint8_t *key, FILE *err)
{
	ssize_t n = enc_unhex(hex, strlen(hex), key, KEYSTORE_PSK_MAX);

	if (n < KEYSTORE_PSK_MIN) {
		fprintf(err, "--psk-key must be %d to %d bytes as hex digits\n", KEYSTORE_PSK_MIN,
		        KEYSTORE_PSK_MAX);
		return -1;
	}
	return n;
}

/*
 * What the technician flashes into the sensor, printed once: the key as text when it is
 * printable (sensor tools often take it so), always in hex and base64. gwctl draws the QR code
 * from these lines.
 */
static void
print_psk(FILE *out, const char *identity, const uint8_t *psk, size_t len)
{
	char hex[2 * KEYSTORE_PSK_MAX + 1], *b64;
	bool printable = true;

	fprintf(out, "psk-identity: %s\n", identity);
	for (size_t i = 0; i < len; i++)
		printable = printable && isgraph(psk[i]);
	if (printable)
		fprintf(out, "psk-key: %.*s\n", (int)len, psk);
	enc_hex(hex, psk, len);
	b64 = enc_base64(psk, len);
	fprintf(out, "psk-key-hex: %s\npsk-key-base64: %s\n", hex, b64);
	explicit_bzero(hex, sizeof(hex));
	explicit_bzero(b64, strlen(b64));
	free(b64);
}

static int
device_add(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
           const struct admin_hooks *hooks)
{
	static const struct option opts[] = {
	        {"psk-identity", required_argument, NULL, 'i'},
	        {"psk-key", required_argument, NULL, 'k'},
	        {NULL, 0, NULL, 0},
	};
	const char *identity = NULL, *id = req->argv[2];
	uint8_t given[KEYSTORE_PSK_MAX], psk[KEYSTORE_PSK_MAX];
	size_t psk_len = 0;
	ssize_t given_len = -1;
	int ch, r;
	(void)hooks;

	/* 0, not 1: glibc then also resets its internal state from the last call. */
	optind = 0;
	while ((ch = getopt_long(req->argc - 2, req->argv + 2, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'i':
			identity = optarg;
			break;
		case 'k':
			given_len = parse_psk_option(optarg, given, err);
			if (given_len < 0)
				return 1;
			break;
		default:
			return 2;
		}
	}
	if (optind != req->argc - 2)
		return 2;
	r = keystore_device_add(ks, id, identity, given_len > 0 ? given : NULL,
	                        given_len > 0 ? (size_t)given_len : 0, psk, &psk_len);
	explicit_bzero(given, sizeof(given));
	if (r < 0) {
		fprintf(err, "cannot add device %s: %s (see the log for the reason)\n", id,
		        strerror(-r));
		return 1;
	}
	fprintf(out, "device %s added\n", id);
	print_psk(out, identity ? identity : id, psk, psk_len);
	fprintf(out,
	        "next: gwctl device csr %s, have it signed, gwctl device import-cert %s FILE\n", id,
	        id);
	explicit_bzero(psk, sizeof(psk));
	return 0;
}

/*
 * When a sensor was last heard from, in UTC: "never" since the daemon's start. In a table
 * (compact) as one word, 2026-11-22T06:20:00Z.
 */
static void
format_seen(time_t t, bool compact, char *buf, size_t len)
{
	struct tm tm;

	if (t == 0)
		snprintf(buf, len, "never");
	else if (!compact)
		format_utc(t, buf, len);
	else if (!gmtime_r(&t, &tm) || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, len, "-");
}

/* The upstream session in a word; "-" where no daemon runs to ask. */
static const char *
upstream_word(const struct admin_hooks *hooks, const char *id, const char **reason)
{
	const char *dummy;

	if (!reason)
		reason = &dummy;
	*reason = NULL;
	if (!hooks || !hooks->upstream)
		return "-";
	return hooks->upstream(id, reason, hooks->data);
}

/* What list and show call the state: "disabled" is an active device with enabled=false. */
static const char *
state_word(const struct keystore_info *info)
{
	if (info->state == KEYSTORE_ACTIVE && !info->enabled)
		return "disabled";
	return keystore_state_name(info->state);
}

/*
 * Pages: --after ID starts past that id (in the list's order, which is the ids' byte order),
 * --limit N stops after N devices and says on err how to ask for the next page, so that a
 * script can walk 10,000 devices a page at a time.
 */
static int
device_list(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
            const struct admin_hooks *hooks)
{
	static const struct option opts[] = {
	        {"after", required_argument, NULL, 'a'},
	        {"limit", required_argument, NULL, 'l'},
	        {NULL, 0, NULL, 0},
	};
	const char *after = NULL, *last = NULL;
	unsigned long limit = 0, shown = 0;
	size_t i = 0;
	char *end;
	int ch;

	optind = 0;
	while ((ch = getopt_long(req->argc - 1, req->argv + 1, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'a':
			after = optarg;
			break;
		case 'l':
			errno = 0;
			limit = strtoul(optarg, &end, 10);
			if (errno || *end || limit < 1 || limit > 1000000) {
				fprintf(err, "--limit is a number of devices, 1 to 1000000\n");
				return 1;
			}
			break;
		default:
			return 2;
		}
	}
	if (optind != req->argc - 1)
		return 2;
	if (after) {
		while (i < keystore_count(ks) && strcmp(keystore_device_id(ks, i), after) <= 0)
			i++;
	}
	fprintf(out, "%-24s %-10s %-7s %-6s %-17s %-20s %-9s %-11s %s\n", "ID", "STATE", "BACKEND",
	        "SENSOR", "UPSTREAM", "LAST-SEEN", "UP", "CERT-EXPIRY", "CERT-SUBJECT");
	for (; i < keystore_count(ks); i++) {
		struct keystore_info info;
		struct admin_activity a = {0};
		char expiry[32], seen[64], sensor[16] = "-", up[24] = "-";

		if (limit && shown == limit) {
			fprintf(err, "more after %s: gwctl device list --after %s --limit %lu\n",
			        last, last, limit);
			break;
		}
		if (keystore_device_info(ks, keystore_device_id(ks, i), &info) < 0)
			continue;
		format_expiry(info.not_after, expiry, sizeof(expiry));
		strcpy(seen, "-");
		if (hooks && hooks->activity) {
			hooks->activity(info.id, &a, hooks->data);
			/* DTLS sessions held: a sensor normally keeps one. */
			snprintf(sensor, sizeof(sensor), "%s", a.dtls_sessions ? "dtls" : "none");
			format_seen(a.last_seen, true, seen, sizeof(seen));
			snprintf(up, sizeof(up), "%llu", (unsigned long long)a.up_messages);
		}
		fprintf(out, "%-24s %-10s %-7s %-6s %-17s %-20s %-9s %-11s %s\n", info.id,
		        state_word(&info), info.backend, sensor,
		        upstream_word(hooks, info.id, NULL), seen, up, info.has_cert ? expiry : "-",
		        info.has_cert ? info.subject : "(no certificate)");
		last = info.id;
		shown++;
	}
	return 0;
}

/* The certificate lines of show, for a device or the gateway. */
static void
print_cert(FILE *out, const struct keystore_info *info)
{
	char when[64];

	if (!info->has_cert) {
		fprintf(out, "certificate: none\n");
		return;
	}
	format_utc(info->not_after, when, sizeof(when));
	fprintf(out, "certificate-subject: %s\ncertificate-expiry: %s\n", info->subject, when);
	if (info->on_trial) {
		format_utc(info->next_not_after, when, sizeof(when));
		fprintf(out, "certificate-renewed: on trial upstream, valid until %s\n", when);
	}
}

static int
device_show(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
            const struct admin_hooks *hooks)
{
	struct keystore_info info;
	const char *reason, *enrolment;

	if (req->argc != 3)
		return 2;
	if (keystore_device_info(ks, req->argv[2], &info) < 0) {
		fprintf(err, "no device %s\n", req->argv[2]);
		return 1;
	}
	fprintf(out, "id: %s\nstate: %s\nbackend: %s\npsk-identity: %s\n", info.id,
	        state_word(&info), info.backend, info.psk_identity);
	if (info.prev_psk_identity) {
		char when[64];

		format_utc(info.prev_psk_until, when, sizeof(when));
		fprintf(out, "psk-previous-identity: %s (accepted until %s)\n",
		        info.prev_psk_identity, when);
	}
	for (size_t i = 0; i < keystore_device_attr_count(ks, info.id); i++) {
		const char *k, *v;

		if (keystore_device_attr_at(ks, info.id, i, &k, &v) == 0)
			fprintf(out, "attr.%s: %s\n", k, v);
	}
	fprintf(out, "upstream: %s\n", upstream_word(hooks, info.id, &reason));
	if (reason)
		fprintf(out, "upstream-last-error: %s\n", reason);
	if (hooks && hooks->enrolment && (enrolment = hooks->enrolment(info.id, hooks->data)))
		fprintf(out, "enrolment: %s\n", enrolment);
	if (hooks && hooks->activity) {
		struct admin_activity a = {0};
		char seen[64];

		hooks->activity(info.id, &a, hooks->data);
		format_seen(a.last_seen, false, seen, sizeof(seen));
		fprintf(out,
		        "sensor: %u DTLS session%s\nlast-seen: %s\n"
		        "messages-up: %llu (%llu bytes)\nmessages-down: %llu\n"
		        "spooled: %llu messages (%llu bytes)\ncommands-queued: %zu\n",
		        a.dtls_sessions, a.dtls_sessions == 1 ? "" : "s", seen,
		        (unsigned long long)a.up_messages, (unsigned long long)a.up_bytes,
		        (unsigned long long)a.down_messages, (unsigned long long)a.spooled,
		        (unsigned long long)a.spooled_bytes, a.commands);
		/* Answered 2.04 before the broker refused the device: kept, not lost. */
		if (a.spool_held > 0)
			fprintf(out,
			        "spool-held: the broker refuses this device: its %llu spooled "
			        "messages wait for a certificate it accepts, and then go under it "
			        "(gwctl device drop-spool %s drops them)\n",
			        (unsigned long long)a.spool_held, info.id);
	}
	print_cert(out, &info);
	if (!info.has_cert)
		fprintf(out,
		        "  (gwctl device enroll %s, or gwctl device csr %s and then "
		        "import-cert)\n",
		        info.id, info.id);
	return 0;
}

static int
device_csr(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
           const struct admin_hooks *hooks)
{
	char *pem;
	int r;
	(void)hooks;

	if (req->argc != 3)
		return 2;
	r = keystore_device_csr(ks, req->argv[2], &pem);
	if (r < 0) {
		fprintf(err, "cannot make a request for %s: %s\n", req->argv[2],
		        r == -ENOENT ? "no such device" : strerror(-r));
		return 1;
	}
	fputs(pem, out);
	free(pem);
	return 0;
}

static int
device_import_cert(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
                   const struct admin_hooks *hooks)
{
	struct keystore_info info;
	char why[512], expiry[32];
	int r;
	(void)hooks;

	if (req->argc != 4)
		return 2;
	if (!req->input) {
		fprintf(err, "no certificate was read from %s\n", req->argv[3]);
		return 1;
	}
	r = keystore_device_import_cert(ks, req->argv[2], req->input, req->input_len, why,
	                                sizeof(why));
	if (r == -ENOENT) {
		fprintf(err, "no device %s\n", req->argv[2]);
		return 1;
	}
	if (r < 0) {
		fprintf(err, "certificate %s refused for %s: %s\n", req->argv[3], req->argv[2],
		        why[0] ? why : strerror(-r));
		return 1;
	}
	keystore_device_info(ks, req->argv[2], &info);
	format_expiry(info.not_after, expiry, sizeof(expiry));
	fprintf(out, "certificate for %s installed: %s, expires %s\n", info.id, info.subject,
	        expiry);
	return 0;
}

static int
device_remove(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
              const struct admin_hooks *hooks)
{
	int r;
	(void)hooks;

	if (req->argc != 3)
		return 2;
	r = keystore_device_remove(ks, req->argv[2]);
	if (r < 0) {
		fprintf(err, "cannot remove %s: %s\n", req->argv[2],
		        r == -ENOENT ? "no such device" : strerror(-r));
		return 1;
	}
	fprintf(out, "device %s removed; its key is destroyed\n", req->argv[2]);
	return 0;
}

static int
device_drop_spool(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
                  const struct admin_hooks *hooks)
{
	struct keystore_info info;
	uint64_t count, bytes;
	int r;

	if (req->argc != 3)
		return 2;
	if (keystore_device_info(ks, req->argv[2], &info) < 0) {
		fprintf(err, "cannot drop the spool of %s: no such device\n", req->argv[2]);
		return 1;
	}
	r = hooks && hooks->drop_spool
	            ? hooks->drop_spool(req->argv[2], &count, &bytes, hooks->data)
	            : -ENOTSUP;
	if (r == -EBUSY) {
		fprintf(err,
		        "cannot drop the spool of %s: its upstream session is up and delivering it "
		        "(gwctl device suspend %s first, if it must go)\n",
		        req->argv[2], req->argv[2]);
		return 1;
	}
	if (r < 0) {
		fprintf(err, "cannot drop the spool of %s: %s\n", req->argv[2], strerror(-r));
		return 1;
	}
	fprintf(out, "%s: %llu spooled messages (%llu bytes) dropped\n", req->argv[2],
	        (unsigned long long)count, (unsigned long long)bytes);
	return 0;
}

static int
device_pair(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
            const struct admin_hooks *hooks)
{
	static const struct option opts[] = {
	        {"grace", required_argument, NULL, 'g'},
	        {"psk-key", required_argument, NULL, 'k'},
	        {NULL, 0, NULL, 0},
	};
	const char *id = req->argv[2];
	char identity[KEYSTORE_IDENTITY_MAX + 1];
	uint8_t given[KEYSTORE_PSK_MAX], psk[KEYSTORE_PSK_MAX];
	unsigned grace = KEYSTORE_GRACE_DEFAULT;
	ssize_t given_len = -1;
	struct keystore_info info;
	size_t psk_len = 0;
	char *end;
	int ch, r;

	(void)hooks;
	optind = 0;
	while ((ch = getopt_long(req->argc - 2, req->argv + 2, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'g':
			errno = 0;
			grace = (unsigned)strtoul(optarg, &end, 10);
			if (errno || *end || grace > 365u * 86400) {
				fprintf(err, "--grace is seconds, 0 to %u\n", 365u * 86400);
				return 1;
			}
			break;
		case 'k':
			given_len = parse_psk_option(optarg, given, err);
			if (given_len < 0)
				return 1;
			break;
		default:
			return 2;
		}
	}
	if (optind != req->argc - 2)
		return 2;
	if (keystore_device_info(ks, id, &info) == -ENOENT) {
		/* A device seen for the first time: pairing it creates it, key and all. */
		r = keystore_device_add(ks, id, NULL, given_len > 0 ? given : NULL,
		                        given_len > 0 ? (size_t)given_len : 0, psk, &psk_len);
		snprintf(identity, sizeof(identity), "%s", id);
	} else {
		r = keystore_device_pair(ks, id, grace, given_len > 0 ? given : NULL,
		                         given_len > 0 ? (size_t)given_len : 0, identity, psk,
		                         &psk_len);
	}
	explicit_bzero(given, sizeof(given));
	if (r < 0) {
		fprintf(err, "cannot pair %s: %s\n", id,
		        r == -EKEYREVOKED ? "it is revoked" : strerror(-r));
		return 1;
	}
	fprintf(out, "device %s paired\n", id);
	print_psk(out, identity, psk, psk_len);
	explicit_bzero(psk, sizeof(psk));
	if (keystore_device_info(ks, id, &info) == 0 && info.prev_psk_identity) {
		char when[64];

		format_utc(info.prev_psk_until, when, sizeof(when));
		fprintf(out, "previous-identity: %s (accepted until %s)\n", info.prev_psk_identity,
		        when);
	}
	return 0;
}

static int
set_state(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
          enum keystore_state state)
{
	int r;

	if (req->argc != 3)
		return 2;
	r = keystore_device_set_state(ks, req->argv[2], state);
	if (r < 0) {
		fprintf(err, "cannot make %s %s: %s\n", req->argv[2], keystore_state_name(state),
		        r == -ENOENT  ? "no such device"
		        : r == -EPERM ? "it is revoked, which is final"
		                      : strerror(-r));
		return 1;
	}
	fprintf(out, "device %s %s\n", req->argv[2], keystore_state_name(state));
	return 0;
}

static int
device_suspend(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
               const struct admin_hooks *hooks)
{
	(void)hooks;
	return set_state(ks, req, out, err, KEYSTORE_SUSPENDED);
}

static int
device_resume(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
              const struct admin_hooks *hooks)
{
	(void)hooks;
	return set_state(ks, req, out, err, KEYSTORE_ACTIVE);
}

static int
device_revoke(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
              const struct admin_hooks *hooks)
{
	int status = set_state(ks, req, out, err, KEYSTORE_REVOKED);

	(void)hooks;

	if (status == 0)
		fprintf(out, "its key and PSK are destroyed; this cannot be undone\n");
	return status;
}

static int
device_set(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
           const struct admin_hooks *hooks)
{
	char why[400];

	if (req->argc < 4)
		return 2;
	/* Check every pair before changing any, so a typo changes nothing. */
	for (int i = 3; i < req->argc; i++) {
		char *pair = xstrdup(req->argv[i]), *eq = strchr(pair, '=');
		int r;

		if (!eq) {
			fprintf(err, "\"%s\" is not key=value\n", req->argv[i]);
			free(pair);
			return 2;
		}
		*eq = '\0';
		r = keystore_check_attr(pair, eq + 1, why, sizeof(why));
		free(pair);
		if (r < 0) {
			fprintf(err, "\"%s\": %s; nothing changed\n", req->argv[i], why);
			return 1;
		}
	}
	for (int i = 3; i < req->argc; i++) {
		char *pair = xstrdup(req->argv[i]), *eq;
		int r;
		(void)hooks;

		eq = strchr(pair, '=');
		*eq = '\0';
		r = keystore_device_set_attr(ks, req->argv[2], pair, eq + 1);
		if (r < 0) {
			fprintf(err, "cannot set %s on %s: %s\n", pair, req->argv[2],
			        r == -ENOENT  ? "no such device"
			        : r == -EFBIG ? "its attributes would pass the 64 KiB a device "
			                        "record may hold (remove some: NAME=)"
			                      : strerror(-r));
			free(pair);
			return 1;
		}
		if (eq[1])
			fprintf(out, "%s: %s=%s\n", req->argv[2], pair, eq + 1);
		else
			fprintf(out, "%s: %s removed\n", req->argv[2], pair);
		free(pair);
	}
	return 0;
}

static int
device_enroll(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
              const struct admin_hooks *hooks)
{
	(void)ks;
	(void)out;
	if (req->argc != 3)
		return 2;
	if (!hooks || !hooks->enroll || !req->done) {
		fprintf(err, "enrolment over EST is not available here\n");
		return 1;
	}
	return hooks->enroll(req->argv[2], req->done, req->done_ctx, err, hooks->data) < 0
	               ? 1
	               : ADMIN_PENDING;
}

/* ---- the gateway's own identity ---- */

static int
gateway_csr(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
            const struct admin_hooks *hooks)
{
	char *pem;
	int r;

	if (req->argc != 2)
		return 2;
	if (!hooks || !hooks->gateway_id) {
		fprintf(err, "the gateway's id is not known here\n");
		return 1;
	}
	r = keystore_gateway_csr(ks, hooks->gateway_id, &pem);
	if (r < 0) {
		fprintf(err, "cannot make the gateway's request: %s\n", strerror(-r));
		return 1;
	}
	fputs(pem, out);
	free(pem);
	return 0;
}

static int
gateway_import_cert(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
                    const struct admin_hooks *hooks)
{
	struct keystore_info info;
	char why[512], expiry[32];
	int r;
	(void)hooks;

	if (req->argc != 3)
		return 2;
	if (!req->input) {
		fprintf(err, "no certificate was read from %s\n", req->argv[2]);
		return 1;
	}
	r = keystore_gateway_import_cert(ks, req->input, req->input_len, why, sizeof(why));
	if (r < 0) {
		fprintf(err, "certificate %s refused for the gateway: %s\n", req->argv[2],
		        why[0] ? why : strerror(-r));
		return 1;
	}
	keystore_gateway_info(ks, &info);
	format_expiry(info.not_after, expiry, sizeof(expiry));
	fprintf(out, "the gateway's certificate installed: %s, expires %s\n", info.subject, expiry);
	return 0;
}

static int
gateway_show(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
             const struct admin_hooks *hooks)
{
	struct keystore_info info;

	(void)err;
	if (req->argc != 2)
		return 2;
	fprintf(out, "id: %s\n", hooks && hooks->gateway_id ? hooks->gateway_id : "-");
	if (keystore_gateway_info(ks, &info) < 0) {
		fprintf(out, "key: none (gwctl gateway csr makes it)\ncertificate: none\n");
		return 0;
	}
	fprintf(out, "key: %s backend\n", info.backend);
	print_cert(out, &info);
	return 0;
}

static const struct verb gateway_verbs[] = {
        {"csr", "[-o FILE]", gateway_csr, ADMIN_CHANGE_NONE, false},
        {"import-cert", "FILE", gateway_import_cert, ADMIN_CHANGE_NONE, false},
        {"show", "", gateway_show, ADMIN_CHANGE_NONE, false},
};

static const struct verb verbs[] = {
        {"add", "ID [--psk-identity NAME] [--psk-key HEX]", device_add, ADMIN_CHANGE_STATE, false},
        {"pair", "ID [--grace SECONDS] [--psk-key HEX] | --from FILE.csv", device_pair,
         ADMIN_CHANGE_NONE, false},
        {"list", "[--after ID] [--limit N]", device_list, ADMIN_CHANGE_NONE, false},
        {"show", "ID", device_show, ADMIN_CHANGE_NONE, true},
        {"csr", "ID [-o FILE]", device_csr, ADMIN_CHANGE_NONE, true},
        {"import-cert", "ID FILE", device_import_cert, ADMIN_CHANGE_CERT, true},
        {"enroll", "ID (over EST: a first certificate, or a renewal with a new key)", device_enroll,
         ADMIN_CHANGE_NONE, true},
        {"remove", "ID", device_remove, ADMIN_CHANGE_STATE, true},
        {"drop-spool", "ID (its spooled messages, undelivered: for a device the broker refuses)",
         device_drop_spool, ADMIN_CHANGE_NONE, false},
        {"suspend", "ID", device_suspend, ADMIN_CHANGE_STATE, true},
        {"resume", "ID", device_resume, ADMIN_CHANGE_STATE, true},
        {"revoke", "ID", device_revoke, ADMIN_CHANGE_STATE, true},
        {"set", "ID KEY=VALUE... (KEY= removes it; enabled=false suspends)", device_set,
         ADMIN_CHANGE_STATE, true},
};

#define NVERBS(table) (sizeof(table) / sizeof((table)[0]))

/* The verb of table (n of them) named name, or NULL. */
static const struct verb *
find_verb(const struct verb *table, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(name, table[i].name) == 0)
			return &table[i];
	}
	return NULL;
}

const char *
admin_one_device(int argc, char **argv)
{
	const struct verb *v;

	if (argc < 3 || strcmp(argv[0], "device") != 0)
		return NULL;
	v = find_verb(verbs, NVERBS(verbs), argv[1]);
	return v && v->one_device ? argv[2] : NULL;
}

void
admin_usage(FILE *f)
{
	fprintf(f, "usage: gwctl [-c config] [-s socket] command\ncommands:\n");
	for (size_t i = 0; i < NVERBS(verbs); i++)
		fprintf(f, "  device %s %s\n", verbs[i].name, verbs[i].args);
	for (size_t i = 0; i < NVERBS(gateway_verbs); i++)
		fprintf(f, "  gateway %s %s\n", gateway_verbs[i].name, gateway_verbs[i].args);
	fprintf(f, "  status   (identity, uptime, config, TPM, devices by state, spool, broker)\n"
	           "  reload   (re-read the config file and apply what changed)\n"
	           "  metrics  (the counters, in the Prometheus text format)\n");
}

/*
 * The verbs only a running gatewayd can answer: false if argv names none of them, else true
 * with the verb's status (0, 1 or ADMIN_PENDING) in *status.
 */
static bool
daemon_verb(const struct admin_request *req, FILE *out, FILE *err, const struct admin_hooks *hooks,
            int *status)
{
	const char *verb = req->argv[0];
	bool known = strcmp(verb, "status") == 0 || strcmp(verb, "reload") == 0 ||
	             strcmp(verb, "metrics") == 0;

	if (!known || req->argc != 1)
		return false;
	*status = 0;
	if (!hooks || !hooks->status) {
		fprintf(err,
		        "gwctl %s: gatewayd is not running (or not listening on its control "
		        "socket, gateway.control_socket)\n",
		        verb);
		*status = 1;
		return true;
	}
	if (strcmp(verb, "reload") == 0) {
		*status = hooks->reload(req->done, req->done_ctx, err, hooks->data);
		return true;
	}
	if (strcmp(verb, "status") == 0)
		hooks->status(out, hooks->data);
	else
		hooks->metrics(out, hooks->data);
	return true;
}

int
admin_run(struct keystore *ks, const struct admin_request *req, FILE *out, FILE *err,
          const struct admin_hooks *hooks)
{
	const struct verb *v = NULL;
	int status;

	if (req->argc >= 1 && daemon_verb(req, out, err, hooks, &status))
		return status;
	if (req->argc >= 2 && strcmp(req->argv[0], "device") == 0) {
		v = find_verb(verbs, NVERBS(verbs), req->argv[1]);
		/* Every device verb but list names a device as its third word. */
		if (v && v->run != device_list && req->argc < 3)
			v = NULL;
	} else if (req->argc >= 2 && strcmp(req->argv[0], "gateway") == 0) {
		v = find_verb(gateway_verbs, NVERBS(gateway_verbs), req->argv[1]);
	}
	if (!v) {
		admin_usage(err);
		return 2;
	}
	status = v->run(ks, req, out, err, hooks);
	if (status == 2) {
		fprintf(err, "usage: gwctl %s %s %s\n", req->argv[0], v->name, v->args);
		return 2;
	}
	/*
	 * A state verb that failed halfway (set: an I/O error on the third pair) may still have
	 * changed something; the daemon's resync is harmless when nothing did.
	 */
	if (hooks && hooks->changed &&
	    (v->changes == ADMIN_CHANGE_STATE || (status == 0 && v->changes != ADMIN_CHANGE_NONE)))
		hooks->changed(req->argv[2], v->changes, hooks->data);
	return status;
}
