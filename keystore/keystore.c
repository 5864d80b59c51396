/* SPDX-License-Identifier: Apache-2.0 */
#include "keystore.h"
#include "atomicfile.h"
#include "device.h"
#include "enc.h"
#include "kspsk.h"
#include "kstpm.h"
#include "log.h"
#include "provider.h"
#include "tpmq.h"
#include "xalloc.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define PSK_IDENTITY_MAX KEYSTORE_IDENTITY_MAX
#define MASTER_KEY_LEN   KSPSK_KEY_LEN
#define REF_LABEL        "GATEWAYD KEY REFERENCE"
#define TSS2_LABEL       KSTPM_PEM_LABEL
/* Bytes of a device record file, read back whole at every start. */
#define RECORD_MAX 65536

enum backend { BACKEND_SOFT, BACKEND_TPM };

struct psk {
	char identity[PSK_IDENTITY_MAX + 1]; /* "" when there is none */
	uint8_t key[KEYSTORE_PSK_MAX];
	size_t len;
};

/* The PSK file's plaintext, identities and keys in hex, is at most this long. */
#define PSK_TEXT_MAX KSPSK_TEXT_MAX

struct attr {
	char *key;
	char *value;
};

/* A key and the certificate issued for it. */
struct ks_tls {
	char *cert_file; /* NULL until a certificate is imported */
	char *key_file;  /* what the TLS library is given; NULL: no key */
	uint8_t pub[KSPROV_P256_POINT_LEN];
	char subject[256];
	time_t not_before, not_after;
};

struct ks_device {
	char *id;
	enum backend backend;
	enum keystore_state state;
	/* The gateway's own identity (GATEWAY_DIR): no PSK, no sensor. */
	bool self;
	/* The sensor's PSK, and during a rotation's grace period the one it replaced. */
	struct psk psk;
	struct psk prev;
	time_t prev_until;
	struct ks_tls cur;
	/* A renewal under way: its new key, then the certificate on trial (the "next." files). */
	struct ks_tls next;
	struct attr *attrs;
	size_t nattrs;
};

/* The gateway's own key and certificate live beside the devices, under a name no id can take. */
#define GATEWAY_DIR "@gateway"
/* A soft key reference names ID (key.pem) or ID NEXT_REF (next.key.pem). */
#define NEXT_REF ":next"

struct keystore {
	char *dir;
	int dirfd;
	int lockfd;
	enum backend backend;
	char *device_ca_file;
	unsigned psk_grace;
	/*
	 * The worker that runs every TPM command and every signature (tpmq.h): once the store is
	 * open no other thread calls kstpm_*() with a TPM command in it.
	 */
	struct tpmq *tpmq;
	struct kstpm *tpm;
	uint8_t master[MASTER_KEY_LEN];
	struct ks_device *devices;
	size_t ndevices;
	/* The gateway's own identity, for EST; id NULL until it has a key. */
	struct ks_device gateway;
	/*
	 * Ids of removed devices: keystore_psk_lookup() hands out id pointers that sessions keep,
	 * so they live until keystore_free(). One small string per removal.
	 */
	char **removed_ids;
	size_t nremoved;
};

static const char *const backend_names[] = {[BACKEND_SOFT] = "soft", [BACKEND_TPM] = "tpm"};
static const char *const state_names[] = {
        [KEYSTORE_ACTIVE] = "active",
        [KEYSTORE_SUSPENDED] = "suspended",
        [KEYSTORE_REVOKED] = "revoked",
};

/* The provider is process-wide, and so is the store it signs through. */
static struct keystore *provider_store;

const char *
keystore_state_name(enum keystore_state state)
{
	return state_names[state];
}

static void
log_openssl(const char *what)
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
static int
read_file(int dirfd, const char *dir, const char *name, bool secret, size_t max, uint8_t **out,
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

static int
fsync_dir(int dirfd, const char *dir)
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

static int
open_dir(int at, const char *name, const char *path)
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

/* Removes a device folder's files and the folder itself (no subfolders are ever made). */
static int
remove_tree(int at, const char *name)
{
	int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct dirent *de;
	DIR *d;

	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			unlinkat(fd, de->d_name, 0);
	}
	closedir(d);
	return unlinkat(at, name, AT_REMOVEDIR) < 0 ? -errno : 0;
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
static int
random_alnum(uint8_t *out, size_t len)
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

/* ---- the worker's jobs: everything that talks to the TPM or signs runs on it ---- */

_Static_assert((int)KEYSTORE_PRIO_ADMIN == (int)TPMQ_ADMIN &&
                       (int)KEYSTORE_PRIO_HANDSHAKE == (int)TPMQ_HANDSHAKE &&
                       (int)KEYSTORE_PRIO_BACKGROUND == (int)TPMQ_BACKGROUND &&
                       (int)KEYSTORE_PRIOS == (int)TPMQ_PRIOS,
               "keystore_prio mirrors tpmq_prio");

struct open_job {
	struct kstpm **tpm;
	const struct keystore_config *cfg;
};

static int
run_open(void *data)
{
	struct open_job *j = data;

	return kstpm_open(j->tpm, j->cfg->tcti, j->cfg->parent, j->cfg->create_parent);
}

struct seal_job {
	struct kstpm *tpm;
	const uint8_t *in;
	size_t inlen;
	uint8_t *out; /* unseal: KSTPM_SEAL_MAX bytes */
	uint8_t **blob;
	size_t *outlen;
};

static int
run_seal(void *data)
{
	struct seal_job *j = data;

	return kstpm_seal(j->tpm, j->in, j->inlen, j->blob, j->outlen);
}

static int
run_unseal(void *data)
{
	struct seal_job *j = data;

	return kstpm_unseal(j->tpm, j->in, j->inlen, j->out, j->outlen);
}

struct create_job {
	struct kstpm *tpm;
	char **pem;
	uint8_t *pub;
};

static int
run_create(void *data)
{
	struct create_job *j = data;

	return kstpm_create_key(j->tpm, j->pem, j->pub);
}

static int
run_ping(void *data)
{
	return kstpm_ping(data);
}

/* The master key: unsealed from master.sealed, or made and sealed on first use. */
static int
load_master(struct keystore *ks)
{
	uint8_t *blob = NULL;
	size_t bloblen, len;
	int r;

	r = read_file(ks->dirfd, ks->dir, "master.sealed", false, 4096, &blob, &bloblen);
	if (r == 0) {
		uint8_t secret[KSTPM_SEAL_MAX];

		/* kstpm_unseal() may write KSTPM_SEAL_MAX bytes, more than the key's 32. */
		struct seal_job j = {.tpm = ks->tpm,
		                     .in = blob,
		                     .inlen = bloblen,
		                     .out = secret,
		                     .outlen = &len};

		r = tpmq_call(ks->tpmq, TPMQ_ADMIN, run_unseal, &j);
		free(blob);
		if (r == 0 && len != MASTER_KEY_LEN)
			r = -EBADMSG;
		if (r == 0)
			memcpy(ks->master, secret, MASTER_KEY_LEN);
		explicit_bzero(secret, sizeof(secret));
		if (r < 0)
			log_warnx("keystore: cannot unseal %s/master.sealed with this TPM and "
			          "storage "
			          "key; the PSKs of the tpm backend cannot be read",
			          ks->dir);
		return r;
	}
	if (r != -ENOENT)
		return r;
	if (RAND_bytes(ks->master, MASTER_KEY_LEN) != 1)
		return -EIO;
	struct seal_job j = {.tpm = ks->tpm,
	                     .in = ks->master,
	                     .inlen = MASTER_KEY_LEN,
	                     .blob = &blob,
	                     .outlen = &bloblen};

	r = tpmq_call(ks->tpmq, TPMQ_ADMIN, run_seal, &j);
	if (r < 0)
		return r;
	r = atomic_write(ks->dirfd, ks->dir, "master.sealed", blob, bloblen, 0600);
	free(blob);
	if (r == 0)
		log_info("keystore: new master key sealed to the TPM");
	return r;
}

/* ---- the device record ---- */

/* Field by field: GCC 12 with -fsanitize takes explicit_bzero(&psk) for an overflow of its
 * first member. */
static void
psk_clear(struct psk *p)
{
	explicit_bzero(p->identity, sizeof(p->identity));
	explicit_bzero(p->key, sizeof(p->key));
	p->len = 0;
}

static void
tls_finish(struct ks_tls *t)
{
	free(t->cert_file);
	free(t->key_file);
	memset(t, 0, sizeof(*t));
}

static void
device_finish(struct ks_device *d)
{
	psk_clear(&d->psk);
	psk_clear(&d->prev);
	for (size_t i = 0; i < d->nattrs; i++) {
		free(d->attrs[i].key);
		free(d->attrs[i].value);
	}
	free(d->attrs);
	free(d->id);
	tls_finish(&d->cur);
	tls_finish(&d->next);
	memset(d, 0, sizeof(*d));
}

static int
record_set(struct ks_device *d, const char *key, const char *value)
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
		if (strcmp(value, "soft") == 0)
			d->backend = BACKEND_SOFT;
		else if (strcmp(value, "tpm") == 0)
			d->backend = BACKEND_TPM;
		else
			return -EINVAL;
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

static int
record_parse(struct ks_device *d, const char *dir, char *text)
{
	unsigned lineno = 0;

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

static char *
record_format(const struct ks_device *d)
{
	char *text = xasprintf("# gatewayd device record; change it with gwctl\n"
	                       "state=%s\nbackend=%s\n",
	                       state_names[d->state], backend_names[d->backend]);
	size_t len = strlen(text);

	for (size_t i = 0; i < d->nattrs; i++) {
		size_t n = strlen("attr.=\n") + strlen(d->attrs[i].key) + strlen(d->attrs[i].value);

		text = xreallocarray(text, len + n + 1, 1);
		len += (size_t)snprintf(text + len, n + 1, "attr.%s=%s\n", d->attrs[i].key,
		                        d->attrs[i].value);
	}
	return text;
}

/* ---- certificates ---- */

/* Every PEM certificate in a file (NULL file: in pem/len), in order. */
static STACK_OF(X509) * read_chain(const char *file, const char *pem, size_t len)
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

static void
cert_summary(struct ks_tls *t)
{
	STACK_OF(X509) *chain = t->cert_file ? read_chain(t->cert_file, NULL, 0) : NULL;
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

/* An EVP_PKEY (default provider) holding only the device's public key. */
static EVP_PKEY *
public_key(const uint8_t pub[KSPROV_P256_POINT_LEN])
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

static int
point_of(EVP_PKEY *pkey, uint8_t pub[KSPROV_P256_POINT_LEN])
{
	size_t len = 0;

	if (EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, pub,
	                                    KSPROV_P256_POINT_LEN, &len) != 1 ||
	    len != KSPROV_P256_POINT_LEN)
		return -EINVAL;
	return 0;
}

static const char *const secret_files[] = {"key.tss2.pem",      "key.pem",      "keyref.pem",
                                           "psk.enc",           "psk.key",      "next.cert.pem",
                                           "next.key.tss2.pem", "next.key.pem", "next.keyref.pem"};

/* A key's file: the current key, or the renewal's new one. */
static const char *
key_name(enum backend b, bool next)
{
	if (b == BACKEND_TPM)
		return next ? "next.key.tss2.pem" : "key.tss2.pem";
	return next ? "next.key.pem" : "key.pem";
}

/* What the TLS library is given: the TSS2 file itself, or a reference to the soft key. */
static const char *
key_ref_name(enum backend b, bool next)
{
	if (b == BACKEND_TPM)
		return key_name(b, next);
	return next ? "next.keyref.pem" : "keyref.pem";
}

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
		r = fsync_dir(fd, dir);
	return r;
}

/* The key and PSK files, a renewal's included. */
static int
unlink_secrets(int fd, const char *dir)
{
	return unlink_files(fd, dir, secret_files, sizeof(secret_files) / sizeof(secret_files[0]));
}

/*
 * A renewal's new key and certificate: the last four of secret_files, the certificate first
 * and on its own, because a certificate left without its new key reads as a switch half done
 * (load_next()).
 */
static int
unlink_next(int fd, const char *dir)
{
	size_t n = sizeof(secret_files) / sizeof(secret_files[0]);
	int r = unlink_files(fd, dir, secret_files + n - 4, 1);

	return r < 0 ? r : unlink_files(fd, dir, secret_files + n - 3, 3);
}

/* ---- loading a device ---- */

static int
load_key_soft(struct ks_tls *t, int fd, const char *dir, const char *name)
{
	uint8_t *pem;
	size_t len;
	EVP_PKEY *pkey;
	BIO *b;
	int r;

	r = read_file(fd, dir, name, true, 16384, &pem, &len);
	if (r < 0)
		return r;
	b = BIO_new_mem_buf(pem, (int)len);
	pkey = b ? PEM_read_bio_PrivateKey_ex(b, NULL, NULL, NULL, NULL, "provider=default") : NULL;
	BIO_free(b);
	explicit_bzero(pem, len);
	free(pem);
	if (!pkey || !EVP_PKEY_is_a(pkey, "EC") || point_of(pkey, t->pub) < 0) {
		log_openssl("keystore: a key file is not a P-256 EC private key");
		EVP_PKEY_free(pkey);
		return -EINVAL;
	}
	EVP_PKEY_free(pkey);
	return 0;
}

static int
load_key_tpm(struct ks_tls *t, int fd, const char *dir, const char *name)
{
	struct kstpm_key *key;
	uint8_t *pem;
	size_t len;
	int r;

	r = read_file(fd, dir, name, false, 16384, &pem, &len);
	if (r < 0)
		return r;
	r = kstpm_key_from_pem((const char *)pem, len, &key, t->pub);
	if (r == -EINVAL)
		log_warnx("keystore: %s/%s is not a \"" TSS2_LABEL "\" PEM", dir, name);
	kstpm_key_free(key);
	free(pem);
	return r;
}

/* A soft key's reference: it names the device; only this process's provider can follow it. */
static int
write_key_ref(int fd, const char *dir, const char *id, bool next)
{
	BIO *b = BIO_new(BIO_s_mem());
	char ref[96], *data;
	long len;
	int r = -EIO;

	snprintf(ref, sizeof(ref), "%s%s", id, next ? NEXT_REF : "");
	if (b &&
	    PEM_write_bio(b, REF_LABEL, "", (const unsigned char *)ref, (long)strlen(ref)) > 0) {
		len = BIO_get_mem_data(b, &data);
		r = atomic_write(fd, dir, key_ref_name(BACKEND_SOFT, next), data, (size_t)len,
		                 0600);
	}
	BIO_free(b);
	return r;
}

/*
 * Loads a device's current key (next false) or its renewal's new one into d->cur or d->next:
 * the public key, and the file the TLS library is given. -ENOENT (not logged) if there is none.
 */
static int
load_key(struct keystore *ks, struct ks_device *d, int fd, const char *dir, bool next)
{
	struct ks_tls *t = next ? &d->next : &d->cur;
	const char *name = key_name(d->backend, next);
	int r = d->backend == BACKEND_TPM ? load_key_tpm(t, fd, dir, name)
	                                  : load_key_soft(t, fd, dir, name);

	if (r < 0)
		return r;
	/*
	 * A soft key's reference holds no secret, only the device's id: one lost by hand or by
	 * damage (or by a crash between a renewal's two files) is written again, rather than
	 * handed to the TLS library missing.
	 */
	if (d->backend == BACKEND_SOFT &&
	    faccessat(fd, key_ref_name(d->backend, next), F_OK, AT_SYMLINK_NOFOLLOW) < 0 &&
	    errno == ENOENT) {
		log_warnx("keystore: %s/%s was missing; written again", dir,
		          key_ref_name(d->backend, next));
		r = write_key_ref(fd, dir, d->id, next);
		if (r < 0)
			return r;
	}
	t->key_file = xasprintf("%s/%s/%s", ks->dir, d->id, key_ref_name(d->backend, next));
	return 0;
}

/* The certificate file beside a loaded key, if there is one. */
static void
load_cert(struct keystore *ks, struct ks_device *d, int fd, bool next)
{
	struct ks_tls *t = next ? &d->next : &d->cur;
	const char *name = next ? "next.cert.pem" : "cert.pem";

	if (faccessat(fd, name, R_OK, 0) < 0)
		return;
	t->cert_file = xasprintf("%s/%s/%s", ks->dir, d->id, name);
	cert_summary(t);
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

	if (read_file(fd, dir, "next.cert.pem", false, 65536, &pem, &len) < 0)
		return false;
	chain = read_chain(NULL, (const char *)pem, len);
	key = public_key(pub);
	yes = chain && key && EVP_PKEY_eq(X509_get0_pubkey(sk_X509_value(chain, 0)), key) == 1;
	ERR_clear_error();
	EVP_PKEY_free(key);
	sk_X509_pop_free(chain, X509_free);
	free(pem);
	return yes;
}

static int
load_next(struct keystore *ks, struct ks_device *d, int fd, const char *dir)
{
	int r = load_key(ks, d, fd, dir, true);

	if (r == 0) {
		load_cert(ks, d, fd, true);
		if (!d->next.cert_file) {
			tls_finish(&d->next);
			r = unlink_next(fd, dir);
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
		return unlink_next(fd, dir);
	}
	log_info("keystore: %s: finishing the switch to its new certificate", d->id);
	if (renameat(fd, "next.cert.pem", fd, "cert.pem") < 0) {
		log_warn("keystore: rename %s/next.cert.pem", dir);
		return -errno;
	}
	return fsync_dir(fd, dir);
}

/*
 * The PSK file, one atomic unit so that a rotation cannot be half done: the sensor's identity
 * and key, and while a rotation's grace period lasts the previous ones, as text
 * ("identity=", "key=" in hex, "prev_identity=", "prev_key=", "prev_until=" in epoch seconds).
 * It is psk.key (mode 0600) for the soft backend, psk.enc (AES-256-GCM) for the tpm backend.
 */
static int
psk_parse(struct ks_device *d, char *text, const char *dir)
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
		psk_clear(&d->prev);
		d->prev_until = 0;
	}
	return 0;
}

static size_t
psk_format(const struct ks_device *d, char *buf, size_t len)
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

static int
load_psk(struct keystore *ks, struct ks_device *d, int fd, const char *dir)
{
	char text[PSK_TEXT_MAX + 1];
	uint8_t *buf;
	size_t len, tlen = 0;
	int r;

	if (d->backend == BACKEND_TPM) {
		r = read_file(fd, dir, "psk.enc", false, 2 * PSK_TEXT_MAX, &buf, &len);
		if (r < 0)
			return r;
		r = kspsk_open(ks->master, d->id, buf, len, (uint8_t *)text, &tlen);
		free(buf);
		if (r < 0) {
			log_warnx(
			        "keystore: %s/psk.enc does not open with this gateway's master key "
			        "(corrupted, or from another gateway)",
			        dir);
			return r;
		}
	} else {
		r = read_file(fd, dir, "psk.key", true, PSK_TEXT_MAX, &buf, &len);
		if (r < 0)
			return r;
		memcpy(text, buf, len);
		tlen = len;
		explicit_bzero(buf, len);
		free(buf);
	}
	text[tlen] = '\0';
	r = psk_parse(d, text, dir);
	explicit_bzero(text, sizeof(text));
	return r;
}

static int
load_device(struct keystore *ks, struct ks_device *d, const char *id, bool self)
{
	char dir[4096];
	uint8_t *text;
	size_t len;
	int fd, r;

	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, id);
	d->id = xstrdup(id);
	d->self = self;
	fd = open_dir(ks->dirfd, id, dir);
	if (fd < 0)
		return fd;
	r = read_file(fd, dir, "device", false, RECORD_MAX, &text, &len);
	if (r == -ENOENT)
		log_warnx("keystore: %s has no device record; remove the folder or add the device "
		          "again with gwctl",
		          dir);
	if (r < 0)
		goto out;
	r = record_parse(d, dir, (char *)text);
	free(text);
	if (r < 0)
		goto out;
	if (d->backend != ks->backend) {
		log_warnx("keystore: device %s uses the %s backend but the keystore is configured "
		          "for %s (keystore.backend)",
		          id, backend_names[d->backend], backend_names[ks->backend]);
		r = -EINVAL;
		goto out;
	}
	/*
	 * A revoked device keeps its record and certificate, for the operator; nothing else. Its
	 * secrets are deleted after its record says revoked: a crash in between is mended here.
	 */
	if (d->state == KEYSTORE_REVOKED) {
		r = unlink_secrets(fd, dir);
		if (r < 0)
			goto out;
	} else {
		r = load_key(ks, d, fd, dir, false);
		if (r == -ENOENT)
			log_warnx("keystore: %s has no key (%s/%s missing)", id, dir,
			          key_name(d->backend, false));
		/* Before the certificate: a switch to a renewed one may be half done. */
		if (r == 0)
			r = load_next(ks, d, fd, dir);
		if (r == 0 && !d->self)
			r = load_psk(ks, d, fd, dir);
		if (r < 0)
			goto out;
	}
	load_cert(ks, d, fd, false);
out:
	close(fd);
	return r;
}

/*
 * Keeps a device's id string alive past the device: keystore_psk_lookup() hands it out and
 * sensor sessions hold it. One small string per removal or reload, freed with the keystore.
 */
static void
retire_id(struct keystore *ks, struct ks_device *d)
{
	char **ids = xreallocarray(ks->removed_ids, ks->nremoved + 1, sizeof(*ids));

	ks->removed_ids = ids;
	ids[ks->nremoved++] = d->id;
	d->id = NULL;
}

static int
cmp_device(const void *a, const void *b)
{
	return strcmp(((const struct ks_device *)a)->id, ((const struct ks_device *)b)->id);
}

static struct ks_device *
find_device(const struct keystore *ks, const char *id)
{
	struct ks_device key = {.id = (char *)id};

	if (ks->ndevices == 0)
		return NULL;
	return bsearch(&key, ks->devices, ks->ndevices, sizeof(*ks->devices), cmp_device);
}

/* The device whose current or (still valid) previous PSK identity this is, or NULL. */
static const struct ks_device *
identity_owner(const struct keystore *ks, const char *identity, size_t len, bool *prev)
{
	time_t now = time(NULL);

	/* Linear: once per DTLS handshake, and a gateway holds a few thousand devices at most. */
	for (size_t i = 0; i < ks->ndevices; i++) {
		const struct ks_device *d = &ks->devices[i];

		if (strlen(d->psk.identity) == len && memcmp(d->psk.identity, identity, len) == 0) {
			*prev = false;
			return d;
		}
		if (d->prev.identity[0] && d->prev_until > now && strlen(d->prev.identity) == len &&
		    memcmp(d->prev.identity, identity, len) == 0) {
			*prev = true;
			return d;
		}
	}
	return NULL;
}

struct ident_ref {
	const char *identity;
	const char *device;
};

static int
cmp_ident(const void *a, const void *b)
{
	return strcmp(((const struct ident_ref *)a)->identity,
	              ((const struct ident_ref *)b)->identity);
}

/* Each identity names one sensor: sorted, a duplicate is a neighbour. */
static int
check_identities(const struct keystore *ks)
{
	struct ident_ref *refs = xcalloc(2 * ks->ndevices + 1, sizeof(*refs));
	size_t n = 0;
	int r = 0;

	for (size_t i = 0; i < ks->ndevices; i++) {
		const struct ks_device *d = &ks->devices[i];

		if (d->psk.identity[0])
			refs[n++] = (struct ident_ref){d->psk.identity, d->id};
		if (d->prev.identity[0])
			refs[n++] = (struct ident_ref){d->prev.identity, d->id};
	}
	qsort(refs, n, sizeof(*refs), cmp_ident);
	for (size_t i = 1; i < n && r == 0; i++) {
		if (strcmp(refs[i].identity, refs[i - 1].identity) == 0) {
			log_warnx("keystore: devices %s and %s share the PSK identity \"%s\"; each "
			          "sensor needs its own",
			          refs[i - 1].device, refs[i].device, refs[i].identity);
			r = -EEXIST;
		}
	}
	free(refs);
	return r;
}

static int
load_devices(struct keystore *ks)
{
	int fd = dup(ks->dirfd);
	struct dirent *de;
	DIR *dir;
	int r = 0;

	if (fd < 0 || !(dir = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return -errno;
	}
	rewinddir(dir);
	while ((de = readdir(dir))) {
		struct ks_device *devices;

		if (de->d_name[0] == '.') {
			/* A device half added or half removed when the process died. */
			size_t n = strlen(de->d_name);

			if (n > 4 && (strcmp(de->d_name + n - 4, ".new") == 0 ||
			              strcmp(de->d_name + n - 4, ".del") == 0)) {
				log_warnx("keystore: removing %s/%s, left by an interrupted change",
				          ks->dir, de->d_name);
				remove_tree(ks->dirfd, de->d_name);
			}
			continue;
		}
		if (de->d_type != DT_DIR && de->d_type != DT_UNKNOWN)
			continue;
		if (strcmp(de->d_name, GATEWAY_DIR) == 0) {
			r = load_device(ks, &ks->gateway, GATEWAY_DIR, true);
			if (r < 0)
				break;
			continue;
		}
		if (!device_id_valid(de->d_name)) {
			log_warnx(
			        "keystore: ignoring %s/%s: not a valid device id (1 to 64 letters, "
			        "digits, '.', '_' or '-', starting with a letter or digit)",
			        ks->dir, de->d_name);
			continue;
		}
		devices = xreallocarray(ks->devices, ks->ndevices + 1, sizeof(*devices));
		ks->devices = devices;
		memset(&ks->devices[ks->ndevices], 0, sizeof(*devices));
		ks->ndevices++;
		r = load_device(ks, &ks->devices[ks->ndevices - 1], de->d_name, false);
		if (r < 0)
			break;
	}
	closedir(dir);
	if (r < 0)
		return r;
	if (ks->ndevices > 0)
		qsort(ks->devices, ks->ndevices, sizeof(*ks->devices), cmp_device);
	return check_identities(ks);
}

/* ---- the provider's view of the store ---- */

/*
 * A key the provider decoded. Counted: OpenSSL holds one reference (until prov_free), and so
 * does each signature queued on the worker, which may outlive the TLS connection that asked.
 */
struct prov_key {
	atomic_int refs;
	enum backend backend;
	struct kstpm_key *tpm;
	EVP_PKEY *soft;
};

static void
prov_key_unref(struct prov_key *k)
{
	if (!k || atomic_fetch_sub_explicit(&k->refs, 1, memory_order_acq_rel) != 1)
		return;
	kstpm_key_free(k->tpm);
	EVP_PKEY_free(k->soft);
	free(k);
}

static void *
prov_load(void *arg, const char *label, const uint8_t *der, size_t len,
          uint8_t pub[KSPROV_P256_POINT_LEN])
{
	struct keystore *ks = arg;
	struct prov_key *k = xcalloc(1, sizeof(*k));

	atomic_init(&k->refs, 1);
	if (strcmp(label, TSS2_LABEL) == 0) {
		if (!ks->tpm) {
			log_warnx("keystore: a TSS2 key was given but the keystore has no TPM "
			          "(keystore.backend is \"soft\")");
			goto fail;
		}
		k->backend = BACKEND_TPM;
		if (kstpm_key_from_der(der, len, &k->tpm, pub) < 0)
			goto fail;
		return k;
	}
	if (strcmp(label, REF_LABEL) == 0) {
		/*
		 * The body is the device id, with NEXT_REF for a renewal's key: the soft key stays
		 * in its 0600 file until now.
		 */
		char id[96], *suffix;
		uint8_t *pem;
		size_t pemlen;
		bool next;
		int fd;
		BIO *b;

		if (len == 0 || len >= sizeof(id))
			goto fail;
		memcpy(id, der, len);
		id[len] = '\0';
		suffix = strchr(id, ':');
		next = suffix && strcmp(suffix, NEXT_REF) == 0;
		if (suffix && !next)
			goto fail;
		if (suffix)
			*suffix = '\0';
		if (!device_id_valid(id) && strcmp(id, GATEWAY_DIR) != 0)
			goto fail;
		/* A valid id has no '/' or "..": it names a folder of the store, nothing else. */
		fd = openat(ks->dirfd, id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0) {
			log_warnx("keystore: key reference to unknown device %s", id);
			goto fail;
		}
		if (read_file(fd, ks->dir, key_name(BACKEND_SOFT, next), true, 16384, &pem,
		              &pemlen) < 0) {
			close(fd);
			goto fail;
		}
		close(fd);
		b = BIO_new_mem_buf(pem, (int)pemlen);
		k->soft = b ? PEM_read_bio_PrivateKey_ex(b, NULL, NULL, NULL, NULL,
		                                         "provider=default")
		            : NULL;
		BIO_free(b);
		explicit_bzero(pem, pemlen);
		free(pem);
		k->backend = BACKEND_SOFT;
		if (!k->soft || point_of(k->soft, pub) < 0)
			goto fail;
		return k;
	}
fail:
	ERR_clear_error();
	prov_key_unref(k);
	return NULL;
}

static void
prov_free(void *arg, void *key)
{
	(void)arg;
	prov_key_unref(key);
}

/*
 * The priority of provider signatures made on this thread: a CSR's is its caller's (the
 * provider sits between), anything else is a TLS handshake's.
 */
static __thread int csr_prio = -1;

static enum tpmq_prio
sign_prio(void)
{
	return csr_prio >= 0 ? (enum tpmq_prio)csr_prio : TPMQ_HANDSHAKE;
}

/* One signature, as the worker runs it: everything it needs, owned by the job. */
struct sign_job {
	struct kstpm *tpm;
	struct prov_key *key;
	uint8_t digest[EVP_MAX_MD_SIZE];
	size_t dlen;
	uint8_t sig[KSPROV_SIG_MAX];
	size_t siglen;
};

static int
soft_sign(EVP_PKEY *pkey, const uint8_t *digest, size_t dlen, uint8_t *sig, size_t *siglen)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, "provider=default");
	int r = -EIO;

	if (ctx && EVP_PKEY_sign_init(ctx) == 1 &&
	    EVP_PKEY_sign(ctx, sig, siglen, digest, dlen) == 1)
		r = 0;
	else
		log_openssl("keystore: soft signature failed");
	EVP_PKEY_CTX_free(ctx);
	return r;
}

static int
run_sign(void *data)
{
	struct sign_job *j = data;

	j->siglen = sizeof(j->sig);
	if (j->key->backend == BACKEND_TPM)
		return kstpm_sign(j->tpm, j->key->tpm, j->digest, j->dlen, j->sig, &j->siglen);
	return soft_sign(j->key->soft, j->digest, j->dlen, j->sig, &j->siglen);
}

static int
sign_job_init(struct sign_job *j, struct keystore *ks, struct prov_key *k, const uint8_t *digest,
              size_t dlen)
{
	if (dlen == 0 || dlen > sizeof(j->digest)) {
		log_warnx("keystore: cannot sign a %zu-byte digest", dlen);
		return -EINVAL;
	}
	*j = (struct sign_job){.tpm = ks->tpm, .key = k, .dlen = dlen};
	memcpy(j->digest, digest, dlen);
	return 0;
}

static int
sign_job_result(const struct sign_job *j, int r, uint8_t *sig, size_t *siglen)
{
	if (r == 0 && j->siglen > *siglen)
		r = -ENOSPC;
	if (r == 0) {
		memcpy(sig, j->sig, j->siglen);
		*siglen = j->siglen;
	}
	return r;
}

/* Off a TLS job (CSRs, libcurl, gwctl): waits for the worker on this thread. */
static int
prov_sign(void *arg, void *key, const uint8_t *digest, size_t dlen, uint8_t *sig, size_t *siglen)
{
	struct keystore *ks = arg;
	struct sign_job j;
	int r = sign_job_init(&j, ks, key, digest, dlen);

	if (r == 0)
		r = tpmq_call(ks->tpmq, sign_prio(), run_sign, &j);
	return sign_job_result(&j, r, sig, siglen);
}

static void
sign_job_free(void *data)
{
	struct sign_job *j = data;

	prov_key_unref(j->key);
	free(j);
}

/*
 * Inside a TLS job (SSL_MODE_ASYNC): the job and its key reference belong to the request, so
 * that the connection may go while the worker signs. The handle is the request.
 */
static void *
prov_sign_start(void *arg, void *key, const uint8_t *digest, size_t dlen, int *fd)
{
	struct keystore *ks = arg;
	struct prov_key *k = key;
	struct sign_job *j = xcalloc(1, sizeof(*j));
	struct tpmq_req *req;

	if (sign_job_init(j, ks, k, digest, dlen) < 0) {
		free(j);
		return NULL;
	}
	atomic_fetch_add_explicit(&k->refs, 1, memory_order_relaxed);
	if (tpmq_submit(ks->tpmq, sign_prio(), run_sign, j, sign_job_free, &req) < 0) {
		sign_job_free(j);
		return NULL;
	}
	*fd = tpmq_req_fd(req);
	return req;
}

static bool
prov_sign_done(void *op)
{
	return tpmq_req_done(op);
}

static int
prov_sign_finish(void *op, uint8_t *sig, size_t *siglen)
{
	int r = sign_job_result(tpmq_req_data(op), tpmq_req_result(op), sig, siglen);

	tpmq_req_release(op);
	return r;
}

static void
prov_sign_abandon(void *op)
{
	tpmq_req_release(op);
}

static const char *const prov_labels[] = {TSS2_LABEL, REF_LABEL, NULL};

static const struct ksprov_ops prov_ops = {
        .labels = prov_labels,
        .load = prov_load,
        .free = prov_free,
        .sign = prov_sign,
        .sign_start = prov_sign_start,
        .sign_done = prov_sign_done,
        .sign_finish = prov_sign_finish,
        .sign_abandon = prov_sign_abandon,
};

/* ---- open / free ---- */

void
keystore_reconfigure(struct keystore *ks, const struct keystore_config *cfg)
{
	char *ca = cfg->device_ca_file ? xstrdup(cfg->device_ca_file) : NULL;

	free(ks->device_ca_file);
	ks->device_ca_file = ca;
	/* Grace already granted keeps its end: it was stored with the rotation. */
	ks->psk_grace = cfg->psk_grace;
}

int
keystore_open(struct keystore **out, const struct keystore_config *cfg)
{
	struct keystore *ks;
	int r;

	if (provider_store) {
		log_warnx("keystore: already open in this process");
		return -EBUSY;
	}
	ks = xcalloc(1, sizeof(*ks));
	ks->dirfd = ks->lockfd = -1;
	if (strcmp(cfg->backend, "soft") == 0) {
		ks->backend = BACKEND_SOFT;
	} else if (strcmp(cfg->backend, "tpm") == 0) {
		ks->backend = BACKEND_TPM;
	} else {
		log_warnx("keystore: unknown backend \"%s\"", cfg->backend);
		r = -EINVAL;
		goto fail;
	}
	ks->dir = xasprintf("%s/keystore", cfg->state_dir);
	ks->psk_grace = cfg->psk_grace;
	if (cfg->device_ca_file)
		ks->device_ca_file = xstrdup(cfg->device_ca_file);
	/* A fresh install has no store yet: make it, closed to everyone else. */
	if (mkdir(ks->dir, 0700) < 0 && errno != EEXIST) {
		r = -errno;
		log_warn("keystore: cannot create %s", ks->dir);
		goto fail;
	}
	ks->dirfd = open_dir(AT_FDCWD, ks->dir, ks->dir);
	if (ks->dirfd < 0) {
		r = ks->dirfd;
		goto fail;
	}
	ks->lockfd = openat(ks->dirfd, ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (ks->lockfd < 0) {
		r = -errno;
		log_warn("keystore: %s/.lock", ks->dir);
		goto fail;
	}
	if (flock(ks->lockfd, LOCK_EX | LOCK_NB) < 0) {
		r = errno == EWOULDBLOCK ? -EBUSY : -errno;
		log_warnx("keystore: %s is in use by another process (gatewayd, or another gwctl)",
		          ks->dir);
		goto fail;
	}
	r = tpmq_new(&ks->tpmq);
	if (r < 0)
		goto fail;
	if (ks->backend == BACKEND_TPM) {
		struct open_job j = {.tpm = &ks->tpm, .cfg = cfg};

		r = tpmq_call(ks->tpmq, TPMQ_ADMIN, run_open, &j);
		if (r < 0)
			goto fail;
		r = load_master(ks);
		if (r < 0)
			goto fail;
	}
	r = load_devices(ks);
	if (r < 0)
		goto fail;
	r = ksprov_init(&prov_ops, ks);
	if (r < 0)
		goto fail;
	provider_store = ks;
	*out = ks;
	return 0;
fail:
	keystore_free(ks);
	return r;
}

void
keystore_free(struct keystore *ks)
{
	if (!ks)
		return;
	if (provider_store == ks) {
		ksprov_finish();
		provider_store = NULL;
	}
	for (size_t i = 0; i < ks->ndevices; i++)
		device_finish(&ks->devices[i]);
	free(ks->devices);
	device_finish(&ks->gateway);
	for (size_t i = 0; i < ks->nremoved; i++)
		free(ks->removed_ids[i]);
	free(ks->removed_ids);
	/*
	 * Queued requests complete with -ECANCELED, the one running finishes: then nothing uses
	 * the TPM. A TLS job still holding a signature keeps only its own key reference.
	 */
	tpmq_free(ks->tpmq);
	kstpm_free(ks->tpm);
	explicit_bzero(ks->master, sizeof(ks->master));
	if (ks->lockfd >= 0)
		close(ks->lockfd);
	if (ks->dirfd >= 0)
		close(ks->dirfd);
	free(ks->device_ca_file);
	free(ks->dir);
	free(ks);
}

/* ---- queries ---- */

/* The attribute enabled=false acts as a suspension that policies and operators can set. */
static bool
device_enabled(const struct ks_device *d)
{
	for (size_t i = 0; i < d->nattrs; i++) {
		if (strcmp(d->attrs[i].key, "enabled") == 0)
			return strcmp(d->attrs[i].value, "false") != 0;
	}
	return true;
}

static bool
ks_usable(const struct ks_device *d)
{
	return d->state == KEYSTORE_ACTIVE && device_enabled(d);
}

bool
keystore_device_usable(const struct keystore *ks, const char *id)
{
	const struct ks_device *d = find_device(ks, id);

	return d && ks_usable(d);
}

const char *
keystore_device_attr(const struct keystore *ks, const char *id, const char *key)
{
	const struct ks_device *d = find_device(ks, id);

	for (size_t i = 0; d && i < d->nattrs; i++) {
		if (strcmp(d->attrs[i].key, key) == 0)
			return d->attrs[i].value;
	}
	return NULL;
}

size_t
keystore_device_attr_count(const struct keystore *ks, const char *id)
{
	const struct ks_device *d = find_device(ks, id);

	return d ? d->nattrs : 0;
}

int
keystore_device_attr_at(const struct keystore *ks, const char *id, size_t i, const char **key,
                        const char **value)
{
	const struct ks_device *d = find_device(ks, id);

	if (!d || i >= d->nattrs)
		return -ENOENT;
	*key = d->attrs[i].key;
	*value = d->attrs[i].value;
	return 0;
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

static void
tls_info(const struct ks_device *d, struct keystore_info *out)
{
	out->has_cert = d->cur.cert_file != NULL;
	out->not_before = d->cur.not_before;
	out->not_after = d->cur.not_after;
	snprintf(out->subject, sizeof(out->subject), "%s", d->cur.subject);
	out->renewing = d->next.key_file != NULL;
	out->on_trial = d->next.cert_file != NULL;
	out->next_not_after = d->next.not_after;
}

int
keystore_device_info(const struct keystore *ks, const char *id, struct keystore_info *out)
{
	const struct ks_device *d = find_device(ks, id);

	if (!d)
		return -ENOENT;
	*out = (struct keystore_info){
	        .id = d->id,
	        .backend = backend_names[d->backend],
	        .psk_identity = d->psk.identity[0] ? d->psk.identity : "-",
	        .prev_psk_identity =
	                d->prev.identity[0] && d->prev_until > time(NULL) ? d->prev.identity : NULL,
	        .prev_psk_until = d->prev_until,
	        .state = d->state,
	        .enabled = device_enabled(d),
	};
	tls_info(d, out);
	return 0;
}

static bool
psk_names(const struct psk *p, const uint8_t *identity, size_t len)
{
	return p->identity[0] && strlen(p->identity) == len &&
	       memcmp(p->identity, identity, len) == 0;
}

bool
keystore_identity_valid(const struct keystore *ks, const char *device, const uint8_t *identity,
                        size_t len)
{
	/* By device, not by scanning every identity: this runs for every uplink message. */
	const struct ks_device *d = find_device(ks, device);

	return d && (psk_names(&d->psk, identity, len) ||
	             (d->prev_until > time(NULL) && psk_names(&d->prev, identity, len)));
}

int
keystore_psk_lookup(const struct keystore *ks, const uint8_t *identity, size_t idlen,
                    const char **device_id, uint8_t *key, size_t *keylen)
{
	bool prev;
	const struct ks_device *d = identity_owner(ks, (const char *)identity, idlen, &prev);
	const struct psk *p;

	if (!d)
		return -ENOENT;
	*device_id = d->id;
	if (!ks_usable(d))
		return -EPERM;
	p = prev ? &d->prev : &d->psk;
	memcpy(key, p->key, p->len);
	*keylen = p->len;
	return 0;
}

/* The certificate on trial while there is one (see keystore_device_stage_cert()). */
static int
tls_files(const struct ks_device *d, const char **cert_file, const char **key_file)
{
	const struct ks_tls *t = d->next.cert_file ? &d->next : &d->cur;

	if (!t->cert_file || !t->key_file)
		return -ENOKEY;
	*cert_file = t->cert_file;
	*key_file = t->key_file;
	return 0;
}

int
keystore_tls_files(const struct keystore *ks, const char *device_id, const char **cert_file,
                   const char **key_file)
{
	const struct ks_device *d = find_device(ks, device_id);

	return d ? tls_files(d, cert_file, key_file) : -ENOENT;
}

int
keystore_gateway_tls_files(const struct keystore *ks, const char **cert_file, const char **key_file)
{
	return ks->gateway.id ? tls_files(&ks->gateway, cert_file, key_file) : -ENOKEY;
}

int
keystore_gateway_info(const struct keystore *ks, struct keystore_info *out)
{
	if (!ks->gateway.id)
		return -ENOENT;
	*out = (struct keystore_info){
	        .id = ks->gateway.id,
	        .backend = backend_names[ks->gateway.backend],
	        .psk_identity = "-",
	        .state = KEYSTORE_ACTIVE,
	        .enabled = true,
	};
	tls_info(&ks->gateway, out);
	return 0;
}

const char *
keystore_tpm_op_name(enum keystore_tpm_op op)
{
	static const char *const names[KEYSTORE_TPM_OPS] = {
	        [KEYSTORE_TPM_SIGN] = "sign",
	        [KEYSTORE_TPM_CREATE] = "create_key",
	        [KEYSTORE_TPM_SEAL] = "seal",
	        [KEYSTORE_TPM_UNSEAL] = "unseal",
	};

	return names[op];
}

const struct histogram *
keystore_tpm_latency(const struct keystore *ks, enum keystore_tpm_op op)
{
	static const enum kstpm_op ops[KEYSTORE_TPM_OPS] = {
	        [KEYSTORE_TPM_SIGN] = KSTPM_OP_SIGN,
	        [KEYSTORE_TPM_CREATE] = KSTPM_OP_CREATE,
	        [KEYSTORE_TPM_SEAL] = KSTPM_OP_SEAL,
	        [KEYSTORE_TPM_UNSEAL] = KSTPM_OP_UNSEAL,
	};

	return ks->tpm ? kstpm_latency(ks->tpm, ops[op]) : NULL;
}

int
keystore_tpm_ping(struct keystore *ks)
{
	struct tpmq_stats st;

	if (!ks->tpm)
		return -ENODEV;
	/* Never behind a signing storm: a busy worker means a TPM that answers. */
	tpmq_get_stats(ks->tpmq, &st);
	if (st.running || st.queued[TPMQ_ADMIN] || st.queued[TPMQ_HANDSHAKE] ||
	    st.queued[TPMQ_BACKGROUND])
		return -EBUSY;
	return tpmq_call(ks->tpmq, TPMQ_ADMIN, run_ping, ks->tpm);
}

void
keystore_get_stats(const struct keystore *ks, struct keystore_stats *out)
{
	struct kstpm_stats t = {0};
	struct tpmq_stats q;

	if (ks->tpm)
		kstpm_get_stats(ks->tpm, &t);
	tpmq_get_stats(ks->tpmq, &q);
	*out = (struct keystore_stats){
	        .tpm_commands = t.commands,
	        .signs = t.signs,
	        .sign_ns = t.sign_ns,
	        .busy = q.running,
	        .busy_ns = q.busy_ns,
	        .handshake_signs = q.completed[TPMQ_HANDSHAKE],
	        .handshake_sign_ns = q.ewma_ns[TPMQ_HANDSHAKE],
	        .cancelled = q.dropped,
	};
	for (int p = 0; p < KEYSTORE_PRIOS; p++)
		out->queued[p] = q.queued[p];
}

/* ---- changes ---- */

static int
write_key_soft(int fd, const char *dir, const char *id, bool next)
{
	EVP_PKEY *pkey = EVP_PKEY_Q_keygen(NULL, "provider=default", "EC", "P-256");
	BIO *b = BIO_new(BIO_s_mem());
	char *data;
	long len;
	int r = -EIO;

	if (!pkey || !b || PEM_write_bio_PKCS8PrivateKey(b, pkey, NULL, NULL, 0, NULL, NULL) != 1) {
		log_openssl("keystore: cannot create a P-256 key");
		goto out;
	}
	len = BIO_get_mem_data(b, &data);
	r = atomic_write(fd, dir, key_name(BACKEND_SOFT, next), data, (size_t)len, 0600);
	if (r < 0)
		goto out;
	r = write_key_ref(fd, dir, id, next);
out:
	/* The mem BIO held the private key's PEM: clear it before it is freed. */
	if (b && (len = BIO_get_mem_data(b, &data)) > 0)
		OPENSSL_cleanse(data, (size_t)len);
	BIO_free(b);
	EVP_PKEY_free(pkey);
	return r;
}

static int
write_key_tpm(struct keystore *ks, int fd, const char *dir, bool next, enum tpmq_prio prio)
{
	uint8_t pub[KSTPM_P256_POINT_LEN];
	char *pem;
	struct create_job j = {.tpm = ks->tpm, .pem = &pem, .pub = pub};
	int r = tpmq_call(ks->tpmq, prio, run_create, &j);

	if (r < 0)
		return r;
	r = atomic_write(fd, dir, key_name(BACKEND_TPM, next), pem, strlen(pem), 0600);
	free(pem);
	return r;
}

/*
 * A new key in the folder: the device's first (next false) or a renewal's. prio: an
 * operator's (ADMIN) or a renewal's (BACKGROUND) place in the TPM's queue.
 */
static int
write_key(struct keystore *ks, int fd, const char *dir, const char *id, bool next,
          enum tpmq_prio prio)
{
	return ks->backend == BACKEND_TPM ? write_key_tpm(ks, fd, dir, next, prio)
	                                  : write_key_soft(fd, dir, id, next);
}

static int
write_psk(struct keystore *ks, int fd, const char *dir, const struct ks_device *d)
{
	uint8_t enc[KSPSK_OVERHEAD + PSK_TEXT_MAX];
	char text[PSK_TEXT_MAX];
	size_t len = psk_format(d, text, sizeof(text)), enclen;
	int r;

	if (ks->backend == BACKEND_TPM) {
		r = kspsk_seal(ks->master, d->id, (const uint8_t *)text, len, enc, &enclen);
		if (r < 0)
			log_openssl("keystore: cannot encrypt a PSK");
		if (r == 0)
			r = atomic_write(fd, dir, "psk.enc", enc, enclen, 0600);
	} else {
		r = atomic_write(fd, dir, "psk.key", text, len, 0600);
	}
	explicit_bzero(text, sizeof(text));
	explicit_bzero(enc, sizeof(enc));
	return r;
}

/* Puts a device loaded from disk into the sorted table. */
static int
insert_device(struct keystore *ks, const char *id)
{
	struct ks_device d = {0}, *devices;
	size_t at;
	int r = load_device(ks, &d, id, false);

	if (r < 0) {
		device_finish(&d);
		return r;
	}
	devices = xreallocarray(ks->devices, ks->ndevices + 1, sizeof(*devices));
	ks->devices = devices;
	for (at = ks->ndevices; at > 0 && strcmp(devices[at - 1].id, id) > 0; at--)
		;
	memmove(&devices[at + 1], &devices[at], (ks->ndevices - at) * sizeof(*devices));
	devices[at] = d;
	ks->ndevices++;
	return 0;
}

/*
 * Makes rec's folder: its key, its PSK (a device's), its record. Assembled beside the store
 * and renamed in: a crash leaves no half device.
 */
static int
create_entry(struct keystore *ks, const struct ks_device *rec)
{
	char tmp[80], dir[4096], *text = NULL;
	int fd = -1, r;

	snprintf(tmp, sizeof(tmp), ".%s.new", rec->id);
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, tmp);
	remove_tree(ks->dirfd, tmp);
	if (mkdirat(ks->dirfd, tmp, 0700) < 0) {
		r = -errno;
		log_warn("keystore: mkdir %s", dir);
		goto out;
	}
	fd = open_dir(ks->dirfd, tmp, dir);
	if (fd < 0) {
		r = fd;
		goto out;
	}
	r = write_key(ks, fd, dir, rec->id, false, TPMQ_ADMIN);
	if (r == 0 && !rec->self)
		r = write_psk(ks, fd, dir, rec);
	if (r < 0)
		goto out;
	text = record_format(rec);
	r = atomic_write(fd, dir, "device", text, strlen(text), 0600);
	if (r < 0)
		goto out;
	if (renameat(ks->dirfd, tmp, ks->dirfd, rec->id) < 0) {
		r = -errno;
		log_warn("keystore: rename %s", dir);
		goto out;
	}
	r = fsync_dir(ks->dirfd, ks->dir);
out:
	free(text);
	if (fd >= 0)
		close(fd);
	if (r < 0)
		remove_tree(ks->dirfd, tmp);
	return r;
}

int
keystore_device_add(struct keystore *ks, const char *id, const char *psk_identity,
                    const uint8_t *psk, size_t psk_len, uint8_t *psk_out, size_t *psk_out_len)
{
	struct ks_device rec = {.id = (char *)id, .backend = ks->backend, .state = KEYSTORE_ACTIVE};
	const struct ks_device *owner;
	uint8_t key[KEYSTORE_PSK_MAX];
	bool prev;
	const char *ident = psk_identity ? psk_identity : id;
	int r;

	if (!device_id_valid(id)) {
		log_warnx("device id \"%s\" must be 1 to 64 letters, digits, '.', '_' or '-', "
		          "starting with a letter or digit",
		          id);
		return -EINVAL;
	}
	if (find_device(ks, id)) {
		log_warnx("device %s already exists", id);
		return -EEXIST;
	}
	if (ident[0] == '\0' || strlen(ident) > PSK_IDENTITY_MAX || strchr(ident, '\n')) {
		log_warnx("PSK identity must be 1 to %d characters on one line", PSK_IDENTITY_MAX);
		return -EINVAL;
	}
	if ((owner = identity_owner(ks, ident, strlen(ident), &prev))) {
		log_warnx("PSK identity \"%s\" is already device %s's", ident, owner->id);
		return -EEXIST;
	}
	if (psk) {
		if (psk_len < KEYSTORE_PSK_MIN || psk_len > KEYSTORE_PSK_MAX) {
			log_warnx("a PSK must be %d to %d bytes (RFC 7925: at least 128 bits)",
			          KEYSTORE_PSK_MIN, KEYSTORE_PSK_MAX);
			return -EINVAL;
		}
		memcpy(key, psk, psk_len);
	} else {
		psk_len = 32;
		if (random_alnum(key, psk_len) < 0)
			return -EIO;
	}

	strcpy(rec.psk.identity, ident);
	memcpy(rec.psk.key, key, psk_len);
	rec.psk.len = psk_len;
	r = create_entry(ks, &rec);
	psk_clear(&rec.psk);
	if (r == 0)
		r = insert_device(ks, id);
	if (r == 0) {
		memcpy(psk_out, key, psk_len);
		*psk_out_len = psk_len;
		log_info("%s: device added (%s backend, PSK identity \"%s\")", id,
		         backend_names[ks->backend], ident);
	}
	explicit_bzero(key, sizeof(key));
	return r;
}

int
keystore_device_remove(struct keystore *ks, const char *id)
{
	struct ks_device *d = find_device(ks, id);
	char del[80];
	size_t i;
	int r;

	if (!d)
		return -ENOENT;
	/* Out of the store's namespace first, atomically; then the files. */
	snprintf(del, sizeof(del), ".%s.del", id);
	remove_tree(ks->dirfd, del);
	if (renameat(ks->dirfd, id, ks->dirfd, del) < 0) {
		r = -errno;
		log_warn("keystore: remove %s/%s", ks->dir, id);
		return r;
	}
	r = fsync_dir(ks->dirfd, ks->dir);
	if (r < 0)
		return r;
	remove_tree(ks->dirfd, del);
	fsync_dir(ks->dirfd, ks->dir);
	log_info("%s: device removed, its key destroyed", id);
	i = (size_t)(d - ks->devices);
	retire_id(ks, d);
	device_finish(d);
	memmove(d, d + 1, (ks->ndevices - i - 1) * sizeof(*d));
	ks->ndevices--;
	return 0;
}

static void reload_device(struct keystore *ks, struct ks_device *d);

/* A key as an EVP_PKEY whose signatures go through the provider. */
static EVP_PKEY *
signing_key(const char *key_file)
{
	BIO *b = BIO_new_file(key_file, "r");
	EVP_PKEY *pkey = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;

	if (!pkey)
		log_openssl("keystore: cannot load a key through the provider");
	BIO_free(b);
	return pkey;
}

/* X509_REQ_sign() with the provider's signature queued at prio (csr_prio). */
static bool
sign_req(X509_REQ *req, EVP_PKEY *key, enum tpmq_prio prio)
{
	int ok;

	csr_prio = (int)prio;
	ok = X509_REQ_sign(req, key, EVP_sha256()) > 0;
	csr_prio = -1;
	return ok;
}

/*
 * A PKCS#10 request for t's key, subject CN=cn, signed by that key at prio in the TPM's queue;
 * *pem is malloc'd.
 */
static int
make_csr(const struct ks_tls *t, const char *cn, char **pem, enum tpmq_prio prio)
{
	EVP_PKEY *priv = signing_key(t->key_file), *pub = public_key(t->pub);
	X509_REQ *req = X509_REQ_new();
	BIO *b = BIO_new(BIO_s_mem());
	X509_NAME *name;
	char *data;
	long len;
	int r = -EIO;

	if (!priv || !pub || !req || !b)
		goto out;
	name = X509_REQ_get_subject_name(req);
	if (X509_REQ_set_version(req, 0) != 1 ||
	    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
	                               0) != 1 ||
	    X509_REQ_set_pubkey(req, pub) != 1 || !sign_req(req, priv, prio) ||
	    PEM_write_bio_X509_REQ(b, req) != 1) {
		log_openssl("keystore: cannot make a certificate request");
		goto out;
	}
	len = BIO_get_mem_data(b, &data);
	*pem = xstrndup(data, (size_t)len);
	r = 0;
out:
	BIO_free(b);
	X509_REQ_free(req);
	EVP_PKEY_free(pub);
	EVP_PKEY_free(priv);
	return r;
}

int
keystore_device_csr(struct keystore *ks, const char *id, char **pem)
{
	const struct ks_device *d = find_device(ks, id);

	if (!d)
		return -ENOENT;
	if (d->state == KEYSTORE_REVOKED)
		return -EKEYREVOKED;
	return make_csr(&d->cur, id, pem, TPMQ_ADMIN);
}

static void
format_time(const ASN1_TIME *t, char *buf, size_t len)
{
	struct tm tm;

	if (ASN1_TIME_to_tm(t, &tm) != 1 || strftime(buf, len, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
		snprintf(buf, len, "(unreadable time)");
}

/*
 * The reasons a certificate cannot be for the key pub of d, one at a time, in words. A
 * device's must chain to the device CA; the gateway's own is checked by the EST server.
 */
static int
check_cert(const struct keystore *ks, const struct ks_device *d,
           const uint8_t pub_point[KSPROV_P256_POINT_LEN], STACK_OF(X509) * chain, char *why,
           size_t whylen)
{
	X509 *leaf = sk_X509_value(chain, 0);
	EVP_PKEY *pub = public_key(pub_point);
	X509_STORE *store = NULL;
	X509_STORE_CTX *ctx = NULL;
	STACK_OF(X509) *untrusted = NULL;
	char when[64];
	int r = -EINVAL;

	if (!pub || EVP_PKEY_eq(X509_get0_pubkey(leaf), pub) != 1) {
		if (d->self)
			snprintf(why, whylen,
			         "its public key is not the gateway's key (make the request with "
			         "gwctl gateway csr)");
		else
			snprintf(why, whylen,
			         "its public key is not device %s's key (was the request made by "
			         "another device, or before the device was added again?)",
			         d->id);
		r = -EKEYREJECTED;
		goto out;
	}
	if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
		format_time(X509_get0_notAfter(leaf), when, sizeof(when));
		snprintf(why, whylen, "it expired on %s", when);
		r = -EKEYEXPIRED;
		goto out;
	}
	if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
		format_time(X509_get0_notBefore(leaf), when, sizeof(when));
		snprintf(why, whylen, "it is not valid before %s (is the gateway's clock right?)",
		         when);
		r = -EKEYEXPIRED;
		goto out;
	}
	if (d->self) {
		r = 0;
		goto out;
	}
	if (!ks->device_ca_file) {
		snprintf(why, whylen, "no device CA is configured (keystore.device_ca_file)");
		goto out;
	}
	store = X509_STORE_new();
	ctx = X509_STORE_CTX_new();
	untrusted = sk_X509_dup(chain);
	/* These fail only when OpenSSL's own allocations do; so does the init below. */
	if (!store || !ctx || !untrusted) {
		r = -ENOMEM;
		goto out;
	}
	(void)sk_X509_shift(untrusted);
	if (X509_STORE_load_file(store, ks->device_ca_file) != 1) {
		snprintf(why, whylen, "the device CA file %s cannot be read", ks->device_ca_file);
		goto out;
	}
	if (X509_STORE_CTX_init(ctx, store, leaf, untrusted) != 1 ||
	    X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT) != 1) {
		r = -ENOMEM;
		goto out;
	}
	if (X509_verify_cert(ctx) != 1) {
		snprintf(why, whylen, "it does not chain to the device CA in %s: %s",
		         ks->device_ca_file,
		         X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
		goto out;
	}
	r = 0;
out:
	ERR_clear_error();
	sk_X509_free(untrusted);
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	EVP_PKEY_free(pub);
	return r;
}

/*
 * Checks a certificate chain against d's current key (next false) or its renewal's new key,
 * and writes it as cert.pem or next.cert.pem. On refusal, the reason is in why.
 */
static int
install_cert(struct keystore *ks, struct ks_device *d, bool next, const char *pem, size_t pemlen,
             char *why, size_t whylen)
{
	struct ks_tls *t = next ? &d->next : &d->cur;
	const char *name = next ? "next.cert.pem" : "cert.pem";
	STACK_OF(X509) * chain;
	char dir[4096], *data;
	BIO *b = NULL;
	long len;
	int fd = -1, r;

	snprintf(why, whylen, "%s", "");
	if (d->state == KEYSTORE_REVOKED) {
		snprintf(why, whylen, "the device is revoked: its key no longer exists");
		return -EKEYREVOKED;
	}
	if (!t->key_file) {
		snprintf(why, whylen, "no renewal is under way: there is no new key to certify");
		return -ENOKEY;
	}
	if (pemlen > INT32_MAX || !(chain = read_chain(NULL, pem, pemlen))) {
		snprintf(why, whylen, "no PEM certificate in it");
		return -EINVAL;
	}
	r = check_cert(ks, d, t->pub, chain, why, whylen);
	if (r < 0)
		goto out;
	b = BIO_new(BIO_s_mem());
	if (!b) {
		r = -ENOMEM; /* OpenSSL's allocation */
		goto out;
	}
	for (int i = 0; i < sk_X509_num(chain); i++)
		PEM_write_bio_X509(b, sk_X509_value(chain, i));
	len = BIO_get_mem_data(b, &data);
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, d->id);
	fd = open_dir(ks->dirfd, d->id, dir);
	if (fd < 0) {
		r = fd;
		goto out;
	}
	r = atomic_write(fd, dir, name, data, (size_t)len, 0644);
	if (r < 0)
		goto out;
	if (!t->cert_file)
		t->cert_file = xasprintf("%s/%s", dir, name);
	cert_summary(t);
out:
	if (fd >= 0)
		close(fd);
	BIO_free(b);
	sk_X509_pop_free(chain, X509_free);
	return r;
}

/* Drops d's renewal: its new key (the only copy) and the certificate on trial. */
static int
discard_next(struct keystore *ks, struct ks_device *d)
{
	char dir[4096];
	int fd, r;

	tls_finish(&d->next);
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, d->id);
	fd = open_dir(ks->dirfd, d->id, dir);
	if (fd < 0)
		return fd;
	r = unlink_next(fd, dir);
	close(fd);
	return r;
}

int
keystore_device_import_cert(struct keystore *ks, const char *id, const char *pem, size_t pemlen,
                            char *why, size_t whylen)
{
	struct ks_device *d = find_device(ks, id);
	int r;

	if (!d)
		return -ENOENT;
	r = install_cert(ks, d, false, pem, pemlen, why, whylen);
	if (r < 0)
		return r;
	log_info("%s: certificate installed: %s", id, d->cur.subject);
	/* The operator's certificate wins over a renewal that was under way. */
	if (d->next.key_file)
		r = discard_next(ks, d);
	return r;
}

/* A new key beside d's current one, and a request for it (CN=cn). */
static int
rekey(struct keystore *ks, struct ks_device *d, const char *cn, char **csr)
{
	char dir[4096];
	int fd, r;

	r = discard_next(ks, d);
	if (r < 0)
		return r;
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, d->id);
	fd = open_dir(ks->dirfd, d->id, dir);
	if (fd < 0)
		return fd;
	r = write_key(ks, fd, dir, d->id, true, TPMQ_BACKGROUND);
	if (r == 0)
		r = load_key(ks, d, fd, dir, true);
	if (r == 0)
		r = make_csr(&d->next, cn, csr, TPMQ_BACKGROUND);
	close(fd);
	if (r < 0)
		discard_next(ks, d);
	return r;
}

int
keystore_device_rekey(struct keystore *ks, const char *id, char **csr)
{
	struct ks_device *d = find_device(ks, id);

	if (!d)
		return -ENOENT;
	if (d->state == KEYSTORE_REVOKED)
		return -EKEYREVOKED;
	return rekey(ks, d, d->id, csr);
}

int
keystore_device_stage_cert(struct keystore *ks, const char *id, const char *pem, size_t pemlen,
                           char *why, size_t whylen)
{
	struct ks_device *d = find_device(ks, id);
	int r;

	if (!d)
		return -ENOENT;
	r = install_cert(ks, d, true, pem, pemlen, why, whylen);
	if (r == 0)
		log_info("%s: new certificate on trial: %s", id, d->next.subject);
	return r;
}

int
keystore_device_commit(struct keystore *ks, const char *id)
{
	struct ks_device *d = find_device(ks, id);
	char dir[4096];
	int fd, r;

	if (!d)
		return -ENOENT;
	if (!d->next.cert_file)
		return -ENOKEY;
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, d->id);
	fd = open_dir(ks->dirfd, d->id, dir);
	if (fd < 0)
		return fd;
	/* The key's rename is the commit; load_next() finishes the rest after a crash. */
	if (renameat(fd, key_name(d->backend, true), fd, key_name(d->backend, false)) < 0 ||
	    fsync(fd) < 0 || renameat(fd, "next.cert.pem", fd, "cert.pem") < 0) {
		r = -errno;
		log_warn("keystore: %s: cannot switch to the new key and certificate", dir);
		close(fd);
		/* What the disk now holds is what the next start will find: follow it. */
		reload_device(ks, d);
		return r;
	}
	r = unlink_next(fd, dir);
	close(fd);
	reload_device(ks, d);
	log_info("%s: switched to its new certificate: %s", id, d->cur.subject);
	return r;
}

int
keystore_device_discard(struct keystore *ks, const char *id)
{
	struct ks_device *d = find_device(ks, id);

	if (!d)
		return -ENOENT;
	return d->next.key_file ? discard_next(ks, d) : 0;
}

/*
 * Rewrites a device's record file from its in-memory state. A record that would be larger
 * than the store reads back is refused, not written: the device would be lost at the next
 * start.
 */
static int
save_record(struct keystore *ks, const struct ks_device *d)
{
	char dir[4096], *text = record_format(d);
	int fd, r;

	if (strlen(text) > RECORD_MAX) {
		log_warnx("%s: its record would be %zu bytes, more than the %d a device may have: "
		          "not changed (remove attributes with gwctl device set %s NAME=)",
		          d->id, strlen(text), RECORD_MAX, d->id);
		free(text);
		return -EFBIG;
	}
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, d->id);
	fd = open_dir(ks->dirfd, d->id, dir);
	if (fd < 0) {
		free(text);
		return fd;
	}
	r = atomic_write(fd, dir, "device", text, strlen(text), 0600);
	close(fd);
	free(text);
	return r;
}

/* Destroys what made the device able to talk: its key (the only copy) and its PSK. */
static int
destroy_secrets(struct keystore *ks, struct ks_device *d)
{
	char dir[4096];
	int fd, r;

	psk_clear(&d->psk);
	psk_clear(&d->prev);
	/* The keys are gone: so is a renewal's certificate on trial. */
	tls_finish(&d->next);
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, d->id);
	fd = open_dir(ks->dirfd, d->id, dir);
	if (fd < 0)
		return fd;
	r = unlink_secrets(fd, dir);
	close(fd);
	return r;
}

int
keystore_device_set_state(struct keystore *ks, const char *id, enum keystore_state state)
{
	struct ks_device *d = find_device(ks, id);
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
	r = save_record(ks, d);
	if (r < 0) {
		d->state = old;
		return r;
	}
	/* Should this fail, the next start finishes the job (load_device). */
	if (state == KEYSTORE_REVOKED && (r = destroy_secrets(ks, d)) < 0)
		return r;
	log_info("%s: device %s", id, state_names[state]);
	return 0;
}

/* After a failed write: the device as the disk has it, so memory never runs ahead of it. */
static void
reload_device(struct keystore *ks, struct ks_device *d)
{
	struct ks_device fresh = {0};

	if (load_device(ks, &fresh, d->id, d->self) < 0) {
		/* Memory keeps what it had; the disk may differ until the next successful write. */
		log_warnx("keystore: %s could not be read back; restart gatewayd", d->id);
		device_finish(&fresh);
		return;
	}
	retire_id(ks, d);
	device_finish(d);
	*d = fresh;
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
	/* It suspends the device (device_enabled()): a typo must not pass for "enabled". */
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
	struct ks_device *d = find_device(ks, id);
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
	r = save_record(ks, d);
	if (r < 0)
		reload_device(ks, d);
	return r;
}

int
keystore_device_pair(struct keystore *ks, const char *id, unsigned grace, const uint8_t *psk,
                     size_t psk_len, char *identity_out, uint8_t *psk_out, size_t *psk_out_len)
{
	struct ks_device *d = find_device(ks, id), next;
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
		if (random_alnum((uint8_t *)suffix, 6) < 0)
			return -EIO;
		snprintf(next.psk.identity, sizeof(next.psk.identity), "%s-%s", id, suffix);
	} while (identity_owner(ks, next.psk.identity, strlen(next.psk.identity), &prev));
	if (psk) {
		memcpy(next.psk.key, psk, psk_len);
		next.psk.len = psk_len;
	} else {
		next.psk.len = 32;
		if (random_alnum(next.psk.key, next.psk.len) < 0)
			return -EIO;
	}
	if (grace > 0) {
		next.prev = d->psk;
		next.prev_until = time(NULL) + (time_t)grace;
	}
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, id);
	fd = open_dir(ks->dirfd, id, dir);
	if (fd < 0) {
		explicit_bzero(&next, sizeof(next));
		return fd;
	}
	/* One file holds both keys: the rotation is all done or not at all. */
	r = write_psk(ks, fd, dir, &next);
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

int
keystore_gateway_csr(struct keystore *ks, const char *cn, char **pem)
{
	struct ks_device rec = {.id = (char *)GATEWAY_DIR, .backend = ks->backend, .self = true};
	int r;

	if (!ks->gateway.id) {
		r = create_entry(ks, &rec);
		if (r == 0)
			r = load_device(ks, &ks->gateway, GATEWAY_DIR, true);
		if (r < 0) {
			device_finish(&ks->gateway);
			return r;
		}
		log_info("keystore: the gateway's own key created (%s backend)",
		         backend_names[ks->backend]);
	}
	return make_csr(&ks->gateway.cur, cn, pem, TPMQ_ADMIN);
}

int
keystore_gateway_import_cert(struct keystore *ks, const char *pem, size_t pemlen, char *why,
                             size_t whylen)
{
	int r;

	if (!ks->gateway.id) {
		snprintf(why, whylen,
		         "the gateway has no key yet (make one with gwctl gateway csr)");
		return -ENOKEY;
	}
	r = install_cert(ks, &ks->gateway, false, pem, pemlen, why, whylen);
	if (r == 0)
		log_info("the gateway's certificate installed: %s", ks->gateway.cur.subject);
	return r;
}
