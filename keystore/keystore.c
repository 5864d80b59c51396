/* SPDX-License-Identifier: Apache-2.0 */
#include "keystore.h"
#include "conf.h"
#include "log.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PSK_IDENTITY_MAX 128

/* dir/name into buf; -ENAMETOOLONG rather than a silently shortened path. */
static int
path_join(char *buf, size_t len, const char *dir, const char *name)
{
	int n = snprintf(buf, len, "%s/%s", dir, name);

	if (n < 0 || (size_t)n >= len) {
		log_warnx("keystore: path %s/%s is too long", dir, name);
		return -ENAMETOOLONG;
	}
	return 0;
}

struct ks_device {
	char *id;
	char *psk_identity;
	uint8_t psk[KEYSTORE_PSK_MAX];
	size_t psk_len;
	char *cert_file;
	char *key_file;
};

struct keystore {
	char *dir;
	struct ks_device *devices;
	size_t ndevices;
};

/* A directory holding secrets: ours, and closed to group and others. */
static int
check_private_dir(const char *path)
{
	struct stat st;

	if (lstat(path, &st) < 0) {
		int r = -errno;

		log_warn("keystore: %s", path);
		return r;
	}
	if (!S_ISDIR(st.st_mode)) {
		log_warnx("keystore: %s is not a directory", path);
		return -ENOTDIR;
	}
	if (st.st_uid != geteuid() || (st.st_mode & 077)) {
		log_warnx(
		        "keystore: %s has mode %04o and owner uid %u; it holds secrets and must be "
		        "mode 0700 owned by uid %u (chmod 700 %s)",
		        path, st.st_mode & 07777, st.st_uid, geteuid(), path);
		return -EPERM;
	}
	return 0;
}

/*
 * Opens a file for reading. secret: it must be ours and closed to group and others. The checks
 * run on the open file, so nothing can swap it between the check and the read.
 * Returns an fd, or -ENOENT (not logged) if it does not exist, or another -errno (logged).
 */
static int
open_checked(const char *path, bool secret)
{
	struct stat st;
	int fd;

	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		int r = -errno;

		if (r != -ENOENT)
			log_warn("keystore: %s", path);
		return r;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		log_warnx("keystore: %s is not a regular file", path);
		close(fd);
		return -EINVAL;
	}
	if (secret && (st.st_uid != geteuid() || (st.st_mode & 077))) {
		log_warnx("keystore: %s has mode %04o and owner uid %u; it holds a secret and must "
		          "be "
		          "mode 0600 owned by uid %u (chmod 600 %s)",
		          path, st.st_mode & 07777, st.st_uid, geteuid(), path);
		close(fd);
		return -EPERM;
	}
	return fd;
}

/* Reads a small file into buf as a NUL-terminated, whitespace-trimmed string. */
static int
read_small_file(const char *path, bool secret, char *buf, size_t buflen)
{
	ssize_t n;
	int fd, r = 0;

	fd = open_checked(path, secret);
	if (fd < 0)
		return fd;
	n = read(fd, buf, buflen - 1);
	if (n < 0) {
		r = -errno;
		log_warn("keystore: read %s", path);
		goto out;
	}
	if ((size_t)n == buflen - 1) {
		log_warnx("keystore: %s is larger than %zu bytes", path, buflen - 2);
		r = -EFBIG;
		goto out;
	}
	while (n > 0 && isspace((unsigned char)buf[n - 1]))
		n--;
	buf[n] = '\0';
out:
	close(fd);
	return r;
}

static int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)tolower((unsigned char)c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static int
load_psk(struct ks_device *d, const char *devdir)
{
	char path[4096], buf[2 * KEYSTORE_PSK_MAX + 8];
	size_t len;
	int r;

	r = path_join(path, sizeof(path), devdir, "psk.key");
	if (r < 0)
		return r;
	r = read_small_file(path, true, buf, sizeof(buf));
	if (r == -ENOENT)
		log_warnx("keystore: device %s has no PSK (%s missing)", d->id, path);
	if (r < 0)
		goto out;
	len = strlen(buf);
	/* 16 bytes: RFC 7925 section 4.2 asks for PSKs of at least 128 bits. */
	if (len % 2 || len < 32 || len > 2 * KEYSTORE_PSK_MAX) {
		log_warnx("keystore: %s must hold the PSK as 32 to %d hex digits", path,
		          2 * KEYSTORE_PSK_MAX);
		r = -EINVAL;
		goto out;
	}
	for (size_t i = 0; i < len; i += 2) {
		int hi = hex_value(buf[i]), lo = hex_value(buf[i + 1]);

		if (hi < 0 || lo < 0) {
			log_warnx("keystore: %s must hold the PSK as hex digits only", path);
			r = -EINVAL;
			goto out;
		}
		d->psk[i / 2] = (uint8_t)(hi << 4 | lo);
	}
	d->psk_len = len / 2;

	r = path_join(path, sizeof(path), devdir, "psk.identity");
	if (r < 0)
		goto out;
	r = read_small_file(path, false, buf, PSK_IDENTITY_MAX + 2);
	if (r == -ENOENT) {
		d->psk_identity = strdup(d->id);
		r = d->psk_identity ? 0 : -ENOMEM;
	} else if (r == 0) {
		if (buf[0] == '\0') {
			log_warnx("keystore: %s is empty", path);
			r = -EINVAL;
		} else if (!(d->psk_identity = strdup(buf))) {
			r = -ENOMEM;
		}
	}
out:
	explicit_bzero(buf, sizeof(buf));
	return r;
}

static int
load_device(struct ks_device *d, const char *ksdir, const char *id)
{
	char devdir[4096];
	int r;

	d->id = strdup(id);
	if (!d->id)
		return -ENOMEM;
	r = path_join(devdir, sizeof(devdir), ksdir, id);
	if (r < 0)
		return r;
	r = check_private_dir(devdir);
	if (r < 0)
		return r;
	r = load_psk(d, devdir);
	if (r < 0)
		return r;
	if (asprintf(&d->cert_file, "%s/cert.pem", devdir) < 0 ||
	    asprintf(&d->key_file, "%s/key.pem", devdir) < 0)
		return -ENOMEM;
	if (access(d->cert_file, R_OK) < 0) {
		r = -errno;
		log_warn("keystore: device %s: certificate %s", id, d->cert_file);
		return r;
	}
	/* Only the secrecy check here; the TLS library parses the key when it connects. */
	r = open_checked(d->key_file, true);
	if (r == -ENOENT)
		log_warnx("keystore: device %s has no private key (%s missing)", id, d->key_file);
	if (r < 0)
		return r;
	close(r);
	return 0;
}

static void
device_finish(struct ks_device *d)
{
	explicit_bzero(d->psk, sizeof(d->psk));
	free(d->id);
	free(d->psk_identity);
	free(d->cert_file);
	free(d->key_file);
}

static int
cmp_device(const void *a, const void *b)
{
	return strcmp(((const struct ks_device *)a)->id, ((const struct ks_device *)b)->id);
}

int
keystore_open(struct keystore **out, const char *state_dir, const char *backend)
{
	struct keystore *ks;
	struct dirent *de;
	DIR *dir = NULL;
	int r;

	if (strcmp(backend, "soft") != 0) {
		log_warnx("keystore: unknown backend \"%s\"", backend);
		return -EINVAL;
	}
	ks = calloc(1, sizeof(*ks));
	if (!ks)
		return -ENOMEM;
	if (asprintf(&ks->dir, "%s/keystore", state_dir) < 0) {
		ks->dir = NULL;
		r = -ENOMEM;
		goto fail;
	}
	/* A fresh install has no store yet: make it, closed to everyone else. */
	if (mkdir(ks->dir, 0700) < 0 && errno != EEXIST) {
		r = -errno;
		log_warn("keystore: cannot create %s", ks->dir);
		goto fail;
	}
	r = check_private_dir(ks->dir);
	if (r < 0)
		goto fail;
	dir = opendir(ks->dir);
	if (!dir) {
		r = -errno;
		log_warn("keystore: %s", ks->dir);
		goto fail;
	}
	while ((de = readdir(dir))) {
		struct ks_device *devices;

		if (de->d_name[0] == '.')
			continue;
		if (!gwconf_valid_id(de->d_name)) {
			log_warnx(
			        "keystore: ignoring %s/%s: not a valid device id (1 to 64 letters, "
			        "digits, '.', '_' or '-')",
			        ks->dir, de->d_name);
			continue;
		}
		devices = reallocarray(ks->devices, ks->ndevices + 1, sizeof(*devices));
		if (!devices) {
			r = -ENOMEM;
			goto fail;
		}
		ks->devices = devices;
		memset(&ks->devices[ks->ndevices], 0, sizeof(ks->devices[0]));
		ks->ndevices++;
		r = load_device(&ks->devices[ks->ndevices - 1], ks->dir, de->d_name);
		if (r < 0)
			goto fail;
	}
	if (ks->ndevices > 0)
		qsort(ks->devices, ks->ndevices, sizeof(*ks->devices), cmp_device);
	for (size_t i = 0; i < ks->ndevices; i++) {
		for (size_t j = 0; j < i; j++) {
			if (strcmp(ks->devices[i].psk_identity, ks->devices[j].psk_identity) == 0) {
				log_warnx("keystore: devices %s and %s share the PSK identity "
				          "\"%s\"; "
				          "each sensor needs its own",
				          ks->devices[j].id, ks->devices[i].id,
				          ks->devices[i].psk_identity);
				r = -EEXIST;
				goto fail;
			}
		}
	}
	closedir(dir);
	*out = ks;
	return 0;
fail:
	if (dir)
		closedir(dir);
	keystore_free(ks);
	return r;
}

void
keystore_free(struct keystore *ks)
{
	if (!ks)
		return;
	for (size_t i = 0; i < ks->ndevices; i++)
		device_finish(&ks->devices[i]);
	free(ks->devices);
	free(ks->dir);
	free(ks);
}

size_t
keystore_count(const struct keystore *ks)
{
	return ks->ndevices;
}

const char *
keystore_device_id(const struct keystore *ks, size_t i)
{
	return i < ks->ndevices ? ks->devices[i].id : NULL;
}

static const struct ks_device *
find_device(const struct keystore *ks, const char *id)
{
	struct ks_device key = {.id = (char *)id};

	if (ks->ndevices == 0)
		return NULL;
	return bsearch(&key, ks->devices, ks->ndevices, sizeof(*ks->devices), cmp_device);
}

int
keystore_psk_lookup(const struct keystore *ks, const uint8_t *identity, size_t idlen,
                    const char **device_id, uint8_t *key, size_t *keylen)
{
	/* Linear: called once per DTLS handshake, and a gateway holds a few thousand at most. */
	for (size_t i = 0; i < ks->ndevices; i++) {
		const struct ks_device *d = &ks->devices[i];

		if (strlen(d->psk_identity) != idlen || memcmp(d->psk_identity, identity, idlen))
			continue;
		memcpy(key, d->psk, d->psk_len);
		*keylen = d->psk_len;
		*device_id = d->id;
		return 0;
	}
	return -ENOENT;
}

int
keystore_tls_files(const struct keystore *ks, const char *device_id, const char **cert_file,
                   const char **key_file)
{
	const struct ks_device *d = find_device(ks, device_id);

	if (!d)
		return -ENOENT;
	*cert_file = d->cert_file;
	*key_file = d->key_file;
	return 0;
}
