/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A device's folder and its files as data, below the table of devices: checked reads and
 * private folders, unlinking secrets, the backends by name, the record (state, backend,
 * attributes), the PSK file, keys, certificates as loaded from disk, and a whole folder read
 * into a struct device_ks (ks_load_device()). Nothing here knows the registry: store.c,
 * record.c and cert.c call down into it, and it calls none of them (issue 14).
 */
#include "backend.h"
#include "ks-internal.h"
#include "atomicfile.h"
#include "enc.h"
#include "log.h"
#include "xalloc.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void
ks_log_openssl(const char *what)
{
	unsigned long e = ERR_get_error();
	char buf[256];

	if (e) {
		ERR_error_string_n(e, buf, sizeof(buf));
		log_warnx("%s: %s", what, buf);
	} else {
		log_warnx("%s", what);
	}
	ERR_clear_error();
}

/* ---- files: checked reads, atomic writes ---- */

/*
 * Opens a file in dirfd for reading. secret: it must be ours and closed to group and others;
 * the checks run on the open file, so nothing can swap it in between. Returns an fd, -ENOENT
 * (not logged) if it does not exist, or another -errno (logged).
 */
static int
open_checked(int dirfd, const char *dir, const char *name, bool secret)
{
	struct stat st;
	int fd;

	fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		int r = -errno;

		if (r != -ENOENT)
			log_warn("keystore: %s/%s", dir, name);
		return r;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		log_warnx("keystore: %s/%s is not a regular file", dir, name);
		close(fd);
		return -EINVAL;
	}
	if (secret && (st.st_uid != geteuid() || (st.st_mode & 077))) {
		log_warnx("keystore: %s/%s has mode %04o and owner uid %u; it holds a secret and "
		          "must be mode 0600 owned by uid %u (chmod 600 %s/%s)",
		          dir, name, st.st_mode & 07777, st.st_uid, geteuid(), dir, name);
		close(fd);
		return -EPERM;
	}
	return fd;
}

/* Reads a whole small file (at most max bytes) into a malloc'd, NUL-terminated buffer. */
int
ks_read_file(int dirfd, const char *dir, const char *name, bool secret, size_t max, uint8_t **out,
             size_t *len)
{
	uint8_t *buf = xmalloc(max + 1);
	size_t n = 0;
	int fd, r = 0;

	fd = open_checked(dirfd, dir, name, secret);
	if (fd < 0) {
		free(buf);
		return fd;
	}
	for (;;) {
		ssize_t got = read(fd, buf + n, max + 1 - n);

		if (got < 0) {
			r = -errno;
			log_warn("keystore: read %s/%s", dir, name);
			break;
		}
		if (got == 0)
			break;
		n += (size_t)got;
		if (n > max) {
			log_warnx("keystore: %s/%s is larger than %zu bytes", dir, name, max);
			r = -EFBIG;
			break;
		}
	}
	close(fd);
	if (r < 0) {
		explicit_bzero(buf, max + 1);
		free(buf);
		return r;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return 0;
}

bool
ks_cache_read(int fd, const char *name, void *buf, size_t len)
{
	/* One byte more than wanted, to tell a longer file from the right one in one read. */
	uint8_t b[KS_CACHE_MAX + 1];
	ssize_t n;
	int cfd;

	if (len > KS_CACHE_MAX)
		return false;
	cfd = openat(fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (cfd < 0)
		return false;
	n = read(cfd, b, len + 1);
	close(cfd);
	if (n != (ssize_t)len)
		return false;
	memcpy(buf, b, len);
	return true;
}

void
ks_cache_write(int fd, const char *dir, const char *name, const void *buf, size_t len, mode_t mode)
{
	int cfd = openat(fd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode);

	if (cfd < 0 || write(cfd, buf, len) != (ssize_t)len)
		log_debug("keystore: cannot write the cache %s/%s: %s", dir, name, strerror(errno));
	if (cfd >= 0)
		close(cfd);
}

int
ks_fsync_dir(int dirfd, const char *dir)
{
	if (fsync(dirfd) < 0) {
		log_warn("keystore: fsync %s", dir);
		return -errno;
	}
	return 0;
}

/* A folder holding secrets: ours, and closed to group and others. */
static int
check_private_dir(int fd, const char *path)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
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

int
ks_open_dir(int at, const char *name, const char *path)
{
	int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int r;

	if (fd < 0) {
		r = -errno;
		log_warn("keystore: %s", path);
		return r;
	}
	r = check_private_dir(fd, path);
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

/* ---- file names, unlinking ---- */

/*
 * Every backend's key and PSK files, whichever the store uses, and the soft backend's caches
 * of public keys (*.pub): a folder is cleaned of all of them. In the order they are unlinked;
 * a renewal's are the last five (ks_unlink_next()).
 */
static const char *const secret_files[] = {"key.tss2.pem",    "key.pem",           "key.pem.pub",
                                           "keyref.pem",      "psk.enc",           "psk.key",
                                           "next.cert.pem",   "next.key.tss2.pem", "next.key.pem",
                                           "next.keyref.pem", "next.key.pem.pub"};

/* Unlinks files of a device folder. Returns 0 once none is left. */
static int
unlink_files(int fd, const char *dir, const char *const *names, size_t n)
{
	int r = 0;

	for (size_t i = 0; i < n; i++) {
		if (unlinkat(fd, names[i], 0) < 0 && errno != ENOENT) {
			r = -errno;
			log_warn("keystore: cannot remove %s/%s", dir, names[i]);
		}
	}
	if (r == 0)
		r = ks_fsync_dir(fd, dir);
	return r;
}

/* The key and PSK files, a renewal's included. */
int
ks_unlink_secrets(int fd, const char *dir)
{
	return unlink_files(fd, dir, secret_files, sizeof(secret_files) / sizeof(secret_files[0]));
}

/*
 * A renewal's new key and certificate: the last five of secret_files, the certificate first
 * and on its own, because a certificate left without its new key reads as a switch half done
 * (ks_load_next()).
 */
int
ks_unlink_next(int fd, const char *dir)
{
	size_t n = sizeof(secret_files) / sizeof(secret_files[0]);
	int r = unlink_files(fd, dir, secret_files + n - 5, 1);

	return r < 0 ? r : unlink_files(fd, dir, secret_files + n - 4, 4);
}

/* ---- the backends ---- */

/* Every backend, found by keystore.backend's word; the provider lists their labels in order. */
const struct ks_backend_ops *const ks_backends[] = {&ks_tpm_ops, &ks_soft_ops};
_Static_assert(sizeof(ks_backends) / sizeof(ks_backends[0]) == KS_NBACKENDS,
               "KS_NBACKENDS (backend.h) counts ks_backends[]");

const struct ks_backend_ops *
ks_backend_find(const char *name)
{
	for (size_t i = 0; i < KS_NBACKENDS; i++) {
		if (strcmp(ks_backends[i]->name, name) == 0)
			return ks_backends[i];
	}
	return NULL;
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

int
ks_record_set(struct device_ks *d, const char *key, const char *value)
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
		if (!eq || ks_record_set(d, (*eq = '\0', line), eq + 1) < 0) {
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

/* ---- keys ---- */

/*
 * Loads a device's current key (next false) or its renewal's new one into d->cur or d->next:
 * the public key, and the file the TLS library is given. -ENOENT (not logged) if there is none.
 */
int
ks_load_key(struct keystore *ks, struct device_ks *d, int fd, const char *dir, bool next)
{
	struct ks_tls *t = next ? &d->next : &d->cur;
	int r = ks->be->ops->load_key(ks->be, fd, dir, d->id, next, t->pub);

	if (r < 0)
		return r;
	t->key_file = xasprintf("%s/%s/%s", ks->dir, d->id, d->backend->tls_ref[next]);
	return 0;
}

/*
 * A new key in the folder: the device's first (next false) or a renewal's. prio: an
 * operator's (ADMIN) or a renewal's (BACKGROUND) place in the TPM's queue.
 */
int
ks_write_key(struct keystore *ks, int fd, const char *dir, const char *id, bool next,
             enum tpmq_prio prio)
{
	return ks->be->ops->create_key(ks->be, fd, dir, id, next, prio);
}

/* ---- certificates ---- */

/* Every PEM certificate in a file (NULL file: in pem/len), in order. */
STACK_OF(X509) * ks_read_chain(const char *file, const char *pem, size_t len)
{
	STACK_OF(X509) *chain = sk_X509_new_null();
	BIO *b = file ? BIO_new_file(file, "r") : BIO_new_mem_buf(pem, (int)len);
	X509 *x;

	if (!chain || !b) {
		sk_X509_free(chain);
		BIO_free(b);
		return NULL;
	}
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)))
		sk_X509_push(chain, x);
	ERR_clear_error();
	BIO_free(b);
	if (sk_X509_num(chain) == 0) {
		sk_X509_free(chain);
		return NULL;
	}
	return chain;
}

static time_t
asn1_epoch(const ASN1_TIME *t)
{
	struct tm tm;

	return ASN1_TIME_to_tm(t, &tm) == 1 ? timegm(&tm) : 0;
}

/* The summary of a chain's first certificate; none (empty, 0) without a chain. */
static void
summarize(struct ks_tls *t, STACK_OF(X509) * chain)
{
	X509 *leaf;

	t->subject[0] = '\0';
	t->not_before = t->not_after = 0;
	if (!chain)
		return;
	leaf = sk_X509_value(chain, 0);
	X509_NAME_oneline(X509_get_subject_name(leaf), t->subject, sizeof(t->subject));
	t->not_before = asn1_epoch(X509_get0_notBefore(leaf));
	t->not_after = asn1_epoch(X509_get0_notAfter(leaf));
	sk_X509_pop_free(chain, X509_free);
}

void
ks_cert_summary(struct ks_tls *t)
{
	summarize(t, t->cert_file ? ks_read_chain(t->cert_file, NULL, 0) : NULL);
}

/*
 * The current certificate's summary, cached beside it (cert.pem.sum: a magic, the SHA-256 of
 * cert.pem, then the validity and subject). OpenSSL 3 decodes a certificate's public key
 * through its decoder framework: with 10,000 devices that was most of gatewayd's start (perf:
 * 45 % of it in libcrypto), and every device list. The digest ties the cache to the very
 * file, as key.pem.pub does for a soft key: a certificate put in place by a renewal or by hand
 * is parsed again and the cache written anew. Not written durably: a cache lost in a crash is
 * made again. A renewal's certificate on trial is parsed each time (it is there for minutes).
 */
#define SUM_FILE  "cert.pem.sum"
#define SUM_MAGIC "gwsum01"

struct cert_sum {
	char magic[8];
	uint8_t digest[SHA256_DIGEST_LENGTH];
	int64_t not_before, not_after;
	char subject[256];
};
_Static_assert(sizeof(struct cert_sum) == 8 + SHA256_DIGEST_LENGTH + 16 + 256,
               "cert.pem.sum is written as it is in memory: no padding");
_Static_assert(sizeof(((struct ks_tls *)0)->subject) == sizeof(((struct cert_sum *)0)->subject),
               "a cached subject fits the summary's");

static bool
cached_summary(int fd, const uint8_t digest[SHA256_DIGEST_LENGTH], struct ks_tls *t)
{
	struct cert_sum c;

	if (!ks_cache_read(fd, SUM_FILE, &c, sizeof(c)) ||
	    memcmp(c.magic, SUM_MAGIC, sizeof(c.magic)) != 0 ||
	    memcmp(c.digest, digest, sizeof(c.digest)) != 0 ||
	    !memchr(c.subject, '\0', sizeof(c.subject)))
		return false;
	memcpy(t->subject, c.subject, sizeof(t->subject));
	t->not_before = (time_t)c.not_before;
	t->not_after = (time_t)c.not_after;
	return true;
}

static void
cache_summary(int fd, const char *dir, const uint8_t digest[SHA256_DIGEST_LENGTH],
              const struct ks_tls *t)
{
	struct cert_sum c = {.magic = SUM_MAGIC,
	                     .not_before = (int64_t)t->not_before,
	                     .not_after = (int64_t)t->not_after};

	memcpy(c.digest, digest, sizeof(c.digest));
	memcpy(c.subject, t->subject, sizeof(c.subject));
	ks_cache_write(fd, dir, SUM_FILE, &c, sizeof(c), 0644);
}

/* The current certificate (cert.pem, in the folder fd) summarized into t, from the cache. */
static void
cur_cert_summary(int fd, const char *dir, struct ks_tls *t)
{
	uint8_t digest[SHA256_DIGEST_LENGTH];
	uint8_t *pem;
	size_t len;

	if (ks_read_file(fd, dir, "cert.pem", false, 65536, &pem, &len) < 0) {
		summarize(t, NULL);
		return;
	}
	if (!SHA256(pem, len, digest)) {
		summarize(t, ks_read_chain(NULL, (const char *)pem, len));
	} else if (!cached_summary(fd, digest, t)) {
		summarize(t, ks_read_chain(NULL, (const char *)pem, len));
		cache_summary(fd, dir, digest, t);
	}
	free(pem);
}

/* An EVP_PKEY (default provider) holding only the device's public key. */
EVP_PKEY *
ks_public_key(const uint8_t pub[KSPROV_P256_POINT_LEN])
{
	OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *pkey = NULL;

	if (bld &&
	    OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) &&
	    OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub,
	                                     KSPROV_P256_POINT_LEN) &&
	    (params = OSSL_PARAM_BLD_to_param(bld)) &&
	    (ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", "provider=default")) &&
	    EVP_PKEY_fromdata_init(ctx) == 1)
		EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params);
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	return pkey;
}

int
ks_point_of(EVP_PKEY *pkey, uint8_t pub[KSPROV_P256_POINT_LEN])
{
	size_t len = 0;

	if (EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, pub,
	                                    KSPROV_P256_POINT_LEN, &len) != 1 ||
	    len != KSPROV_P256_POINT_LEN)
		return -EINVAL;
	return 0;
}

/* The certificate file beside a loaded key, if there is one. */
void
ks_load_cert(struct keystore *ks, struct device_ks *d, int fd, bool next)
{
	struct ks_tls *t = next ? &d->next : &d->cur;
	const char *name = next ? "next.cert.pem" : "cert.pem";
	char dir[4096];

	if (faccessat(fd, name, R_OK, 0) < 0)
		return;
	t->cert_file = xasprintf("%s/%s/%s", ks->dir, d->id, name);
	if (next) {
		ks_cert_summary(t);
		return;
	}
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, d->id);
	cur_cert_summary(fd, dir, t);
}

/*
 * A renewal's files. The switch renames next.key* over key* first and next.cert.pem over
 * cert.pem second; the rename of the key is the commit. So: a new key is a renewal under way
 * (its certificate on trial if next.cert.pem is there too; a new key without one is dropped,
 * the next attempt makes another), and next.cert.pem alone is a switch to finish.
 */
/* Whether next.cert.pem in the folder certifies the public key pub. */
static bool
cert_is_for(const uint8_t pub[KSPROV_P256_POINT_LEN], int fd, const char *dir)
{
	uint8_t *pem;
	size_t len;
	STACK_OF(X509) *chain = NULL;
	EVP_PKEY *key = NULL;
	bool yes = false;

	if (ks_read_file(fd, dir, "next.cert.pem", false, 65536, &pem, &len) < 0)
		return false;
	chain = ks_read_chain(NULL, (const char *)pem, len);
	key = ks_public_key(pub);
	yes = chain && key && EVP_PKEY_eq(X509_get0_pubkey(sk_X509_value(chain, 0)), key) == 1;
	ERR_clear_error();
	EVP_PKEY_free(key);
	sk_X509_pop_free(chain, X509_free);
	free(pem);
	return yes;
}

int
ks_load_next(struct keystore *ks, struct device_ks *d, int fd, const char *dir)
{
	int r = ks_load_key(ks, d, fd, dir, true);

	if (r == 0) {
		ks_load_cert(ks, d, fd, true);
		if (!d->next.cert_file) {
			ks_tls_finish(&d->next);
			r = ks_unlink_next(fd, dir);
		}
		return r;
	}
	if (r != -ENOENT)
		return r;
	if (faccessat(fd, "next.cert.pem", F_OK, 0) < 0)
		return 0;
	/* Only a certificate for the key now in place is a switch to finish. */
	if (!cert_is_for(d->cur.pub, fd, dir)) {
		log_warnx(
		        "keystore: %s: dropping %s/next.cert.pem, left by a renewal that was given "
		        "up",
		        d->id, dir);
		return ks_unlink_next(fd, dir);
	}
	log_info("keystore: %s: finishing the switch to its new certificate", d->id);
	if (renameat(fd, "next.cert.pem", fd, "cert.pem") < 0) {
		log_warn("keystore: rename %s/next.cert.pem", dir);
		return -errno;
	}
	return ks_fsync_dir(fd, dir);
}

void
ks_tls_info(const struct device_ks *d, struct keystore_info *out)
{
	out->has_cert = d->cur.cert_file != NULL;
	out->not_before = d->cur.not_before;
	out->not_after = d->cur.not_after;
	snprintf(out->subject, sizeof(out->subject), "%s", d->cur.subject);
	out->renewing = d->next.key_file != NULL;
	out->on_trial = d->next.cert_file != NULL;
	out->next_not_after = d->next.not_after;
}

/* ---- loading a device ---- */

int
ks_load_device(struct keystore *ks, struct device_ks *d, const char *id, bool self)
{
	char dir[4096];
	uint8_t *text;
	size_t len;
	int fd, r;

	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, id);
	d->id = xstrdup(id);
	d->self = self;
	fd = ks_open_dir(ks->dirfd, id, dir);
	if (fd < 0)
		return fd;
	r = ks_read_file(fd, dir, "device", false, RECORD_MAX, &text, &len);
	if (r == -ENOENT)
		log_warnx("keystore: %s has no device record; remove the folder or add the device "
		          "again with gwctl",
		          dir);
	if (r < 0)
		goto out;
	r = ks_record_parse(d, dir, (char *)text);
	free(text);
	if (r < 0)
		goto out;
	if (d->backend != ks->be->ops) {
		log_warnx("keystore: device %s uses the %s backend but the keystore is configured "
		          "for %s (keystore.backend)",
		          id, d->backend->name, ks->be->ops->name);
		r = -EINVAL;
		goto out;
	}
	/*
	 * A revoked device keeps its record and certificate, for the operator; nothing else. Its
	 * secrets are deleted after its record says revoked: a crash in between is mended here.
	 */
	if (d->state == KEYSTORE_REVOKED) {
		r = ks_unlink_secrets(fd, dir);
		if (r < 0)
			goto out;
	} else {
		r = ks_load_key(ks, d, fd, dir, false);
		if (r == -ENOENT)
			log_warnx("keystore: %s has no key (%s/%s missing)", id, dir,
			          d->backend->key_file[false]);
		/* Before the certificate: a switch to a renewed one may be half done. */
		if (r == 0)
			r = ks_load_next(ks, d, fd, dir);
		if (r == 0 && !d->self)
			r = ks_load_psk(ks, d, fd, dir);
		if (r < 0)
			goto out;
	}
	ks_load_cert(ks, d, fd, false);
out:
	close(fd);
	return r;
}
