/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A device's record (state, backend, attributes), its PSK file, the queries on both, state
 * changes and attributes, and PSK rotation (pairing).
 */
#include "backend.h"
#include "ks-internal.h"
#include "atomicfile.h"
#include "device.h"
#include "enc.h"
#include "log.h"
#include "xalloc.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const state_names[] = {
        [KEYSTORE_ACTIVE] = "active",
        [KEYSTORE_SUSPENDED] = "suspended",
        [KEYSTORE_REVOKED] = "revoked",
};

const char *
keystore_state_name(enum keystore_state state)
{
	return state_names[state];
}

/* ---- encodings ---- */

/* A key line's hex (whitespace around it ignored) into out: its length, or -EINVAL. */
static ssize_t
unhex_trimmed(const char *s, uint8_t *out, size_t max)
{
	size_t len;

	while (isspace((unsigned char)*s))
		s++;
	len = strlen(s);
	while (len && isspace((unsigned char)s[len - 1]))
		len--;
	return enc_unhex(s, len, out, max);
}

/* len random letters and digits, by rejection sampling so each is equally likely. */
int
ks_random_alnum(uint8_t *out, size_t len)
{
	static const char alphabet[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
	size_t n = 0;

	while (n < len) {
		uint8_t b[32];

		if (RAND_bytes(b, sizeof(b)) != 1)
			return -EIO;
		for (size_t i = 0; i < sizeof(b) && n < len; i++) {
			if (b[i] < 248) /* 248 = 4 * 62: keeps the draw uniform */
				out[n++] = (uint8_t)alphabet[b[i] % 62];
		}
		explicit_bzero(b, sizeof(b));
	}
	return 0;
}

/* ---- the device record ---- */

/* Field by field: GCC 12 with -fsanitize takes explicit_bzero(&psk) for an overflow of its
 * first member. */
void
ks_psk_clear(struct psk *p)
{
	explicit_bzero(p->identity, sizeof(p->identity));
	explicit_bzero(p->key, sizeof(p->key));
	p->len = 0;
}

void
ks_tls_finish(struct ks_tls *t)
{
	free(t->cert_file);
	free(t->key_file);
	memset(t, 0, sizeof(*t));
}

void
ks_device_finish(struct device_ks *d)
{
	ks_psk_clear(&d->psk);
	ks_psk_clear(&d->prev);
	for (size_t i = 0; i < d->nattrs; i++) {
		free(d->attrs[i].key);
		free(d->attrs[i].value);
	}
	free(d->attrs);
	free(d->id);
	ks_tls_finish(&d->cur);
	ks_tls_finish(&d->next);
	memset(d, 0, sizeof(*d));
}

static int
record_set(struct device_ks *d, const char *key, const char *value)
{
	if (strcmp(key, "state") == 0) {
		for (size_t i = 0; i < sizeof(state_names) / sizeof(state_names[0]); i++) {
			if (strcmp(value, state_names[i]) == 0) {
				d->state = (enum keystore_state)i;
				return 0;
			}
		}
		return -EINVAL;
	}
	if (strcmp(key, "backend") == 0) {
		const struct ks_backend_ops *ops = ks_backend_find(value);

		if (!ops)
			return -EINVAL;
		d->backend = ops;
		return 0;
	}
	if (strncmp(key, "attr.", 5) == 0 && key[5]) {
		struct attr *a = xreallocarray(d->attrs, d->nattrs + 1, sizeof(*a));

		d->attrs = a;
		a[d->nattrs].key = xstrdup(key + 5);
		a[d->nattrs].value = xstrdup(value);
		d->nattrs++;
		return 0;
	}
	/* Unknown keys come from a newer gatewayd: keep going rather than lose the device. */
	return 0;
}

int
ks_record_parse(struct device_ks *d, const char *dir, char *text)
{
	unsigned lineno = 0;

	/*
	 * A record without a backend line is the soft backend's: the backend was once an enum
	 * whose zero was soft, and such a record has always read that way.
	 */
	d->backend = &ks_soft_ops;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		char *eq = strchr(line, '=');

		lineno++;
		if (line[0] == '#' || line[0] == '\0')
			continue;
		if (!eq || record_set(d, (*eq = '\0', line), eq + 1) < 0) {
			log_warnx("keystore: %s/device:%u: cannot read \"%s\"", dir, lineno, line);
			return -EINVAL;
		}
	}
	return 0;
}

char *
ks_record_format(const struct device_ks *d)
{
	char *text = xasprintf("# gatewayd device record; change it with gwctl\n"
	                       "state=%s\nbackend=%s\n",
	                       state_names[d->state], d->backend->name);
	size_t len = strlen(text);

	for (size_t i = 0; i < d->nattrs; i++) {
		size_t n = strlen("attr.=\n") + strlen(d->attrs[i].key) + strlen(d->attrs[i].value);

		text = xreallocarray(text, len + n + 1, 1);
		len += (size_t)snprintf(text + len, n + 1, "attr.%s=%s\n", d->attrs[i].key,
		                        d->attrs[i].value);
	}
	return text;
}

/* ---- the PSK file ---- */

/*
 * The PSK file, one atomic unit so that a rotation cannot be half done: the sensor's identity
 * and key, and while a rotation's grace period lasts the previous ones, as text
 * ("identity=", "key=" in hex, "prev_identity=", "prev_key=", "prev_until=" in epoch seconds).
 * It is psk.key (mode 0600) for the soft backend, psk.enc (AES-256-GCM) for the tpm backend.
 */
static int
psk_parse(struct device_ks *d, char *text, const char *dir)
{
	unsigned lineno = 0;

	for (char *save, *line = strtok_r(text, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char *eq = strchr(line, '=');
		struct psk *p = strncmp(line, "prev_", 5) == 0 ? &d->prev : &d->psk;
		const char *name = p == &d->prev ? line + 5 : line;
		ssize_t n;

		lineno++;
		if (!eq)
			goto bad;
		*eq++ = '\0';
		if (strcmp(name, "identity") == 0) {
			if (!*eq || strlen(eq) > PSK_IDENTITY_MAX)
				goto bad;
			strcpy(p->identity, eq);
		} else if (strcmp(name, "key") == 0) {
			n = unhex_trimmed(eq, p->key, sizeof(p->key));
			/* RFC 7925 section 4.2 asks for PSKs of at least 128 bits. */
			if (n < KEYSTORE_PSK_MIN)
				goto bad;
			p->len = (size_t)n;
		} else if (strcmp(line, "prev_until") == 0) {
			d->prev_until = (time_t)strtoll(eq, NULL, 10);
		}
		continue;
	bad:
		log_warnx("keystore: %s: PSK line %u (%s) is not valid: want identity= and key= "
		          "(%d to %d bytes in hex)",
		          dir, lineno, line, KEYSTORE_PSK_MIN, KEYSTORE_PSK_MAX);
		return -EINVAL;
	}
	if (!d->psk.identity[0] || !d->psk.len || (d->prev.identity[0] && !d->prev.len)) {
		log_warnx("keystore: %s: the PSK file lacks an identity or a key", dir);
		return -EINVAL;
	}
	/* A grace period that is over: the old key is gone for good at the next write. */
	if (d->prev.identity[0] && d->prev_until <= time(NULL)) {
		ks_psk_clear(&d->prev);
		d->prev_until = 0;
	}
	return 0;
}

static size_t
psk_format(const struct device_ks *d, char *buf, size_t len)
{
	char hex[2 * KEYSTORE_PSK_MAX + 1];
	int n;

	enc_hex(hex, d->psk.key, d->psk.len);
	n = snprintf(buf, len, "identity=%s\nkey=%s\n", d->psk.identity, hex);
	if (d->prev.identity[0]) {
		enc_hex(hex, d->prev.key, d->prev.len);
		n += snprintf(buf + n, len - (size_t)n,
		              "prev_identity=%s\nprev_key=%s\nprev_until=%lld\n", d->prev.identity,
		              hex, (long long)d->prev_until);
	}
	explicit_bzero(hex, sizeof(hex));
	return (size_t)n;
}

int
ks_load_psk(struct keystore *ks, struct device_ks *d, int fd, const char *dir)
{
	char text[PSK_TEXT_MAX + 1];
	uint8_t *buf;
	size_t len, tlen = 0;
	int r;

	r = ks_read_file(fd, dir, d->backend->psk_file, d->backend->psk_file_secret,
	                 d->backend->psk_file_max, &buf, &len);
	if (r < 0)
		return r;
	r = d->backend->psk_open(ks->be, dir, d->id, buf, len, text, &tlen);
	explicit_bzero(buf, len);
	free(buf);
	if (r < 0)
		return r;
	text[tlen] = '\0';
	r = psk_parse(d, text, dir);
	explicit_bzero(text, sizeof(text));
	return r;
}

/* ---- queries ---- */

/* The attribute enabled=false acts as a suspension that policies and operators can set. */
bool
ks_enabled(const struct device_ks *d)
{
	for (size_t i = 0; i < d->nattrs; i++) {
		if (strcmp(d->attrs[i].key, "enabled") == 0)
			return strcmp(d->attrs[i].value, "false") != 0;
	}
	return true;
}

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

int
ks_write_psk(struct keystore *ks, int fd, const char *dir, const struct device_ks *d)
{
	uint8_t enc[KSPSK_OVERHEAD + PSK_TEXT_MAX];
	char text[PSK_TEXT_MAX];
	size_t len = psk_format(d, text, sizeof(text)), enclen;
	int r;

	r = ks->be->ops->psk_seal(ks->be, d->id, text, len, enc, &enclen);
	if (r == 0)
		r = atomic_write(fd, dir, ks->be->ops->psk_file, enc, enclen, 0600);
	explicit_bzero(text, sizeof(text));
	explicit_bzero(enc, sizeof(enc));
	return r;
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
	log_info("%s: device %s", id, state_names[state]);
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
		(void)record_set(d, name, value); /* an attr.* key is never refused */
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
