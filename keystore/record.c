/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A device's record and PSK through the API: the queries on both, state changes and
 * attributes, and PSK rotation (pairing). The files themselves are entry.c's, the table
 * store.c's; this file calls down into both and never into cert.c, its sibling (issue 14).
 */
#include "backend.h"
#include "ks-internal.h"
#include "device.h"
#include "log.h"
#include "xalloc.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- queries ---- */

static bool
ks_usable(const struct device_ks *d)
{
	return d->state == KEYSTORE_ACTIVE && ks_enabled(d);
}

bool
keystore_device_usable(const struct keystore *ks, const char *id)
{
	const struct device_ks *d = ks_find_device(ks, id);

	return d && ks_usable(d);
}

const char *
keystore_attr(const struct device *dev, const char *key)
{
	const struct device_ks *d = dev->ks;

	for (size_t i = 0; d && i < d->nattrs; i++) {
		if (strcmp(d->attrs[i].key, key) == 0)
			return d->attrs[i].value;
	}
	return NULL;
}

const char *
keystore_device_attr(const struct keystore *ks, const char *id, const char *key)
{
	const struct device *dev = device_find(ks->reg, id);

	return dev ? keystore_attr(dev, key) : NULL;
}

size_t
keystore_device_attr_count(const struct keystore *ks, const char *id)
{
	const struct device_ks *d = ks_find_device(ks, id);

	return d ? d->nattrs : 0;
}

int
keystore_device_attr_at(const struct keystore *ks, const char *id, size_t i, const char **key,
                        const char **value)
{
	const struct device_ks *d = ks_find_device(ks, id);

	if (!d || i >= d->nattrs)
		return -ENOENT;
	*key = d->attrs[i].key;
	*value = d->attrs[i].value;
	return 0;
}

int
keystore_device_info(const struct keystore *ks, const char *id, struct keystore_info *out)
{
	const struct device_ks *d = ks_find_device(ks, id);

	if (!d)
		return -ENOENT;
	*out = (struct keystore_info){
	        .id = d->id,
	        .backend = d->backend->name,
	        .psk_identity = d->psk.identity[0] ? d->psk.identity : "-",
	        .prev_psk_identity =
	                d->prev.identity[0] && d->prev_until > time(NULL) ? d->prev.identity : NULL,
	        .prev_psk_until = d->prev_until,
	        .state = d->state,
	        .enabled = ks_enabled(d),
	};
	ks_tls_info(d, out);
	return 0;
}

static bool
psk_names(const struct psk *p, const uint8_t *identity, size_t len)
{
	return p->identity[0] && strlen(p->identity) == len &&
	       memcmp(p->identity, identity, len) == 0;
}

bool
keystore_identity_valid(const struct device *dev, const uint8_t *identity, size_t len)
{
	/* The device's own record, not a scan of every identity: this runs for every message. */
	const struct device_ks *d = dev->ks;

	return d && (psk_names(&d->psk, identity, len) ||
	             (d->prev_until > time(NULL) && psk_names(&d->prev, identity, len)));
}

int
keystore_psk_lookup(const struct keystore *ks, const uint8_t *identity, size_t idlen,
                    struct device **dev, uint8_t *key, size_t *keylen)
{
	bool prev;
	const struct device_ks *d = ks_identity_owner(ks, (const char *)identity, idlen, &prev);
	const struct psk *p;

	if (!d)
		return -ENOENT;
	*dev = d->dev;
	if (!ks_usable(d))
		return -EPERM;
	p = prev ? &d->prev : &d->psk;
	memcpy(key, p->key, p->len);
	*keylen = p->len;
	return 0;
}

/* ---- changes ---- */

/* Destroys what made the device able to talk: its key (the only copy) and its PSK. */
static int
destroy_secrets(struct keystore *ks, struct device_ks *d)
{
	char dir[4096];
	int fd, r;

	ks_psk_clear(&d->psk);
	ks_psk_clear(&d->prev);
	/* The keys are gone: so is a renewal's certificate on trial. */
	ks_tls_finish(&d->next);
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, d->id);
	fd = ks_open_dir(ks->dirfd, d->id, dir);
	if (fd < 0)
		return fd;
	r = ks_unlink_secrets(fd, dir);
	close(fd);
	return r;
}

int
keystore_device_set_state(struct keystore *ks, const char *id, enum keystore_state state)
{
	struct device_ks *d = ks_find_device(ks, id);
	enum keystore_state old;
	int r;

	if (!d)
		return -ENOENT;
	if (d->state == KEYSTORE_REVOKED && state != KEYSTORE_REVOKED) {
		log_warnx("%s: revoked devices stay revoked (remove it and add it again)", id);
		return -EPERM;
	}
	if (d->state == state)
		return 0;
	old = d->state;
	d->state = state;
	/* The record first: once it says revoked, a crash cannot bring the key back to use. */
	r = ks_save_record(ks, d);
	if (r < 0) {
		d->state = old;
		return r;
	}
	ks_sync_device(d);
	/* Should this fail, the next start finishes the job (ks_load_device). */
	if (state == KEYSTORE_REVOKED && (r = destroy_secrets(ks, d)) < 0)
		return r;
	log_info("%s: device %s", id, keystore_state_name(state));
	return 0;
}

int
keystore_check_attr(const char *key, const char *value, char *why, size_t len)
{
	/* Attribute names follow the rule of ids: plain, and safe in templates and files. */
	if (!device_id_valid(key)) {
		snprintf(why, len,
		         "attribute name \"%.64s\" must be 1 to 64 letters, digits, '.', '_' or "
		         "'-', "
		         "starting with a letter or digit",
		         key);
		return -EINVAL;
	}
	for (const char *c = value ? value : ""; *c; c++) {
		if (!isprint((unsigned char)*c) || strlen(value) > 256) {
			snprintf(why, len,
			         "attribute %s: the value must be at most 256 printable characters",
			         key);
			return -EINVAL;
		}
	}
	/* It suspends the device (ks_enabled()): a typo must not pass for "enabled". */
	if (strcmp(key, "enabled") == 0 && value && *value && strcmp(value, "true") != 0 &&
	    strcmp(value, "false") != 0) {
		snprintf(why, len,
		         "attribute enabled is \"%.64s\": it must be true or false (false suspends "
		         "the device), or empty to remove it",
		         value);
		return -EINVAL;
	}
	/* Read by the sessions (gateway/lifecycle): a typo must not pass for a choice. */
	if (strcmp(key, "sessions") == 0 && value && *value && strcmp(value, "always") != 0 &&
	    strcmp(value, "on-demand") != 0) {
		snprintf(
		        why, len,
		        "attribute sessions is \"%.64s\": it must be always or on-demand (when the "
		        "device holds its upstream session), or empty to follow upstream.sessions",
		        value);
		return -EINVAL;
	}
	return 0;
}

int
keystore_device_set_attr(struct keystore *ks, const char *id, const char *key, const char *value)
{
	struct device_ks *d = ks_find_device(ks, id);
	char name[80], why[400];
	size_t i;
	int r;

	if (!d)
		return -ENOENT;
	r = keystore_check_attr(key, value, why, sizeof(why));
	if (r < 0) {
		log_warnx("%s: %s", id, why);
		return r;
	}
	for (i = 0; i < d->nattrs && strcmp(d->attrs[i].key, key) != 0; i++)
		;
	if (!value || !*value) {
		if (i == d->nattrs)
			return 0;
		free(d->attrs[i].key);
		free(d->attrs[i].value);
		memmove(&d->attrs[i], &d->attrs[i + 1], (d->nattrs - i - 1) * sizeof(*d->attrs));
		d->nattrs--;
	} else if (i < d->nattrs) {
		free(d->attrs[i].value);
		d->attrs[i].value = xstrdup(value);
	} else {
		snprintf(name, sizeof(name), "attr.%s", key);
		(void)ks_record_set(d, name, value); /* an attr.* key is never refused */
	}
	r = ks_save_record(ks, d);
	if (r < 0)
		ks_reload_device(ks, d);
	ks_sync_device(d);
	return r;
}

/* ---- pairing: a PSK rotation ---- */

int
keystore_device_pair(struct keystore *ks, const char *id, unsigned grace, const uint8_t *psk,
                     size_t psk_len, char *identity_out, uint8_t *psk_out, size_t *psk_out_len)
{
	struct device_ks *d = ks_find_device(ks, id), next;
	char dir[4096], suffix[7] = {0};
	bool prev;
	int fd, r;

	if (!d)
		return -ENOENT;
	if (d->state == KEYSTORE_REVOKED)
		return -EKEYREVOKED;
	if (psk && (psk_len < KEYSTORE_PSK_MIN || psk_len > KEYSTORE_PSK_MAX))
		return -EINVAL;
	if (grace == KEYSTORE_GRACE_DEFAULT)
		grace = ks->psk_grace;
	memset(&next, 0, sizeof(next));
	next.id = d->id;
	/*
	 * A new identity as well as a new key: DTLS picks the key by the identity the sensor
	 * sends, so during the grace period the old and the new must differ to both work.
	 */
	do {
		if (ks_random_alnum((uint8_t *)suffix, 6) < 0)
			return -EIO;
		snprintf(next.psk.identity, sizeof(next.psk.identity), "%s-%s", id, suffix);
	} while (ks_identity_owner(ks, next.psk.identity, strlen(next.psk.identity), &prev));
	if (psk) {
		memcpy(next.psk.key, psk, psk_len);
		next.psk.len = psk_len;
	} else {
		next.psk.len = 32;
		if (ks_random_alnum(next.psk.key, next.psk.len) < 0)
			return -EIO;
	}
	if (grace > 0) {
		next.prev = d->psk;
		next.prev_until = time(NULL) + (time_t)grace;
	}
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, id);
	fd = ks_open_dir(ks->dirfd, id, dir);
	if (fd < 0) {
		explicit_bzero(&next, sizeof(next));
		return fd;
	}
	/* One file holds both keys: the rotation is all done or not at all. */
	r = ks_write_psk(ks, fd, dir, &next);
	close(fd);
	if (r == 0) {
		d->prev = next.prev;
		d->prev_until = next.prev_until;
		d->psk = next.psk;
		strcpy(identity_out, d->psk.identity);
		memcpy(psk_out, d->psk.key, d->psk.len);
		*psk_out_len = d->psk.len;
		log_info("%s: new PSK identity \"%s\"; the previous one is accepted for %u s more",
		         id, d->psk.identity, grace);
	}
	explicit_bzero(&next, sizeof(next));
	return r;
}
