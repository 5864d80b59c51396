/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The store: its folder and lock, the table of devices on the registry (loading every device
 * at open, finding one by id or PSK identity), adding and removing devices, rewriting
 * records, the queries on the whole store, and the OpenSSL provider's view of the keys. It
 * reads and writes a device's files through entry.c and never calls record.c or cert.c,
 * which sit above it (issue 14).
 */
#include "backend.h"
#include "ks-internal.h"
#include "atomicfile.h"
#include "device.h"
#include "log.h"
#include "xalloc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* The provider is process-wide, and so is the store it signs through. */
static struct keystore *provider_store;

/* ---- folders ---- */

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

/* ---- the table ---- */

struct device_ks *
ks_find_device(const struct keystore *ks, const char *id)
{
	struct device *dev = device_find(ks->reg, id);

	return dev ? dev->ks : NULL;
}

void
ks_sync_device(struct device_ks *d)
{
	static const enum device_state states[] = {
	        [KEYSTORE_ACTIVE] = DEVICE_ACTIVE,
	        [KEYSTORE_SUSPENDED] = DEVICE_SUSPENDED,
	        [KEYSTORE_REVOKED] = DEVICE_REVOKED,
	};

	if (!d->dev)
		return;
	d->dev->state = states[d->state];
	d->dev->enabled = ks_enabled(d);
}

/*
 * Puts a device read from its folder into the registry, its record in the ks slot: *rec
 * moves there.
 */
static void
register_device(struct keystore *ks, struct device_ks *rec)
{
	struct device_ks *d = xmalloc(sizeof(*d));
	struct device *dev;

	/* ks_load_device() took the id from a folder that device_id_valid() let through. */
	if (device_add(ks->reg, rec->id, &dev) < 0)
		abort();
	*d = *rec;
	d->dev = dev;
	dev->ks = d;
	ks_sync_device(d);
}

/* The slot empty and the device out of the registry; who holds it sees it GONE. */
static void
unregister_device(struct keystore *ks, struct device_ks *d)
{
	struct device *dev = d->dev;

	dev->ks = NULL;
	ks_device_finish(d);
	free(d);
	device_remove(ks->reg, dev);
}

/* The device whose current or (still valid) previous PSK identity this is, or NULL. */
const struct device_ks *
ks_identity_owner(const struct keystore *ks, const char *identity, size_t len, bool *prev)
{
	time_t now = time(NULL);

	/* Linear: once per DTLS handshake, and a gateway holds a few thousand devices at most. */
	for (size_t i = 0; i < device_count(ks->reg); i++) {
		const struct device_ks *d = device_at(ks->reg, i)->ks;

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
	struct ident_ref *refs = xcalloc(2 * device_count(ks->reg) + 1, sizeof(*refs));
	size_t n = 0;
	int r = 0;

	for (size_t i = 0; i < device_count(ks->reg); i++) {
		const struct device_ks *d = device_at(ks->reg, i)->ks;

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

/* The gateway's own folder, if it has one, and device id's, if that is one. */
static int
load_one_device(struct keystore *ks, const char *id)
{
	struct device_ks rec = {0};
	int r;

	if (faccessat(ks->dirfd, GATEWAY_DIR, F_OK, AT_SYMLINK_NOFOLLOW) == 0 &&
	    (r = ks_load_device(ks, &ks->gateway, GATEWAY_DIR, true)) < 0)
		return r;
	/* None such: the command finds no device, and says so as it would in the whole store. */
	if (!device_id_valid(id) || faccessat(ks->dirfd, id, F_OK, AT_SYMLINK_NOFOLLOW) < 0)
		return 0;
	r = ks_load_device(ks, &rec, id, false);
	if (r < 0) {
		ks_device_finish(&rec);
		return r;
	}
	register_device(ks, &rec);
	return 0;
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
		struct device_ks rec = {0};

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
			r = ks_load_device(ks, &ks->gateway, GATEWAY_DIR, true);
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
		r = ks_load_device(ks, &rec, de->d_name, false);
		if (r < 0) {
			ks_device_finish(&rec);
			break;
		}
		register_device(ks, &rec);
	}
	closedir(dir);
	if (r < 0)
		return r;
	return check_identities(ks);
}

/* ---- the provider's view of the store ---- */

_Static_assert((int)KEYSTORE_PRIO_ADMIN == (int)TPMQ_ADMIN &&
                       (int)KEYSTORE_PRIO_HANDSHAKE == (int)TPMQ_HANDSHAKE &&
                       (int)KEYSTORE_PRIO_BACKGROUND == (int)TPMQ_BACKGROUND &&
                       (int)KEYSTORE_PRIOS == (int)TPMQ_PRIOS,
               "keystore_prio mirrors tpmq_prio");

/*
 * A key the provider decoded. Counted: OpenSSL holds one reference (until prov_free), and so
 * does each signature queued on the worker, which may outlive the TLS connection that asked.
 */
struct prov_key {
	atomic_int refs;
	/* The backend that decoded it, and the state it signs with (NULL: see prov_load()). */
	const struct ks_backend_ops *ops;
	struct ks_backend *be;
	void *key;
};

static void
prov_key_unref(struct prov_key *k)
{
	if (!k || atomic_fetch_sub_explicit(&k->refs, 1, memory_order_acq_rel) != 1)
		return;
	k->ops->key_free(k->key);
	free(k);
}

static void *
prov_load(void *arg, const char *label, const uint8_t *der, size_t len,
          uint8_t pub[KSPROV_P256_POINT_LEN])
{
	struct keystore *ks = arg;

	for (size_t i = 0; i < KS_NBACKENDS; i++) {
		const struct ks_backend_ops *ops = ks_backends[i];
		struct ks_backend *be;
		struct prov_key *k;
		void *key;

		if (strcmp(label, ops->pem_label) != 0)
			continue;
		/*
		 * A label is a backend's; a key of another backend than the store's is decoded
		 * without the store's state, which a TSS2 key refuses (a soft store has no TPM)
		 * and a soft key's reference does not need.
		 */
		be = ops == ks->be->ops ? ks->be : NULL;
		key = ops->key_decode(be, ks->dirfd, ks->dir, der, len, pub);
		if (!key)
			break;
		k = xcalloc(1, sizeof(*k));
		atomic_init(&k->refs, 1);
		k->ops = ops;
		k->be = be;
		k->key = key;
		return k;
	}
	ERR_clear_error();
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
__thread int ks_csr_prio = -1;

static enum tpmq_prio
sign_prio(void)
{
	return ks_csr_prio >= 0 ? (enum tpmq_prio)ks_csr_prio : TPMQ_HANDSHAKE;
}

/* One signature, as the worker runs it: everything it needs, owned by the job. */
struct sign_job {
	struct prov_key *key;
	uint8_t digest[EVP_MAX_MD_SIZE];
	size_t dlen;
	uint8_t sig[KSPROV_SIG_MAX];
	size_t siglen;
};

static int
run_sign(void *data)
{
	struct sign_job *j = data;

	j->siglen = sizeof(j->sig);
	return j->key->ops->sign(j->key->be, j->key->key, j->digest, j->dlen, j->sig, &j->siglen);
}

static int
sign_job_init(struct sign_job *j, struct prov_key *k, const uint8_t *digest, size_t dlen)
{
	if (dlen == 0 || dlen > sizeof(j->digest)) {
		log_warnx("keystore: cannot sign a %zu-byte digest", dlen);
		return -EINVAL;
	}
	*j = (struct sign_job){.key = k, .dlen = dlen};
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
	int r = sign_job_init(&j, key, digest, dlen);

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

	if (sign_job_init(j, k, digest, dlen) < 0) {
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

/* Every backend's label, filled in by keystore_open(). */
static const char *prov_labels[KS_NBACKENDS + 1];

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
	const struct ks_backend_ops *ops = ks_backend_find(cfg->backend);
	struct keystore *ks;
	int r;

	if (provider_store) {
		log_warnx("keystore: already open in this process");
		return -EBUSY;
	}
	ks = xcalloc(1, sizeof(*ks));
	ks->dirfd = ks->lockfd = -1;
	ks->reg = device_registry_new();
	if (!ops) {
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
	ks->dirfd = ks_open_dir(AT_FDCWD, ks->dir, ks->dir);
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
	r = ops->open(&ks->be, cfg, ks->tpmq, ks->dirfd, ks->dir);
	if (r < 0)
		goto fail;
	r = cfg->only ? load_one_device(ks, cfg->only) : load_devices(ks);
	if (r < 0)
		goto fail;
	for (size_t i = 0; i < KS_NBACKENDS; i++)
		prov_labels[i] = ks_backends[i]->pem_label;
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
	while (ks->reg && device_count(ks->reg) > 0)
		unregister_device(ks, device_at(ks->reg, 0)->ks);
	device_registry_free(ks->reg);
	ks_device_finish(&ks->gateway);
	/*
	 * Queued requests complete with -ECANCELED, the one running finishes: then nothing uses
	 * the TPM. A TLS job still holding a signature keeps only its own key reference.
	 */
	tpmq_free(ks->tpmq);
	if (ks->be)
		ks->be->ops->free(ks->be);
	if (ks->lockfd >= 0)
		close(ks->lockfd);
	if (ks->dirfd >= 0)
		close(ks->dirfd);
	free(ks->device_ca_file);
	free(ks->dir);
	free(ks);
}

/* ---- queries ---- */

size_t
keystore_count(const struct keystore *ks)
{
	return device_count(ks->reg);
}

const char *
keystore_device_id(const struct keystore *ks, size_t i)
{
	return i < device_count(ks->reg) ? device_at(ks->reg, i)->id : NULL;
}

struct device_registry *
keystore_devices(const struct keystore *ks)
{
	return ks->reg;
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
	return ks->be->ops->latency(ks->be, op);
}

int
keystore_tpm_ping(struct keystore *ks)
{
	return ks->be->ops->ping(ks->be);
}

void
keystore_get_stats(const struct keystore *ks, struct keystore_stats *out)
{
	struct tpmq_stats q;

	tpmq_get_stats(ks->tpmq, &q);
	*out = (struct keystore_stats){
	        .busy = q.running,
	        .busy_ns = q.busy_ns,
	        .handshake_signs = q.completed[TPMQ_HANDSHAKE],
	        .handshake_sign_ns = q.ewma_ns[TPMQ_HANDSHAKE],
	        .cancelled = q.dropped,
	};
	for (int p = 0; p < KEYSTORE_PRIOS; p++)
		out->queued[p] = q.queued[p];
	/* The TPM's own counters (zeros without one). */
	ks->be->ops->stats(ks->be, out);
}

/* ---- changes ---- */

/* Puts a device just written to disk into the registry, as the disk has it. */
static int
insert_device(struct keystore *ks, const char *id)
{
	struct device_ks d = {0};
	int r = ks_load_device(ks, &d, id, false);

	if (r < 0) {
		ks_device_finish(&d);
		return r;
	}
	register_device(ks, &d);
	return 0;
}

/*
 * Makes rec's folder: its key, its PSK (a device's), its record. Assembled beside the store
 * and renamed in: a crash leaves no half device.
 */
int
ks_create_entry(struct keystore *ks, const struct device_ks *rec)
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
	fd = ks_open_dir(ks->dirfd, tmp, dir);
	if (fd < 0) {
		r = fd;
		goto out;
	}
	r = ks_write_key(ks, fd, dir, rec->id, false, TPMQ_ADMIN);
	if (r == 0 && !rec->self)
		r = ks_write_psk(ks, fd, dir, rec);
	if (r < 0)
		goto out;
	text = ks_record_format(rec);
	r = atomic_write(fd, dir, "device", text, strlen(text), 0600);
	if (r < 0)
		goto out;
	if (renameat(ks->dirfd, tmp, ks->dirfd, rec->id) < 0) {
		r = -errno;
		log_warn("keystore: rename %s", dir);
		goto out;
	}
	r = ks_fsync_dir(ks->dirfd, ks->dir);
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
	struct device_ks rec = {.id = (char *)id, .backend = ks->be->ops, .state = KEYSTORE_ACTIVE};
	const struct device_ks *owner;
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
	if (ks_find_device(ks, id)) {
		log_warnx("device %s already exists", id);
		return -EEXIST;
	}
	if (ident[0] == '\0' || strlen(ident) > PSK_IDENTITY_MAX || strchr(ident, '\n')) {
		log_warnx("PSK identity must be 1 to %d characters on one line", PSK_IDENTITY_MAX);
		return -EINVAL;
	}
	if ((owner = ks_identity_owner(ks, ident, strlen(ident), &prev))) {
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
		if (ks_random_alnum(key, psk_len) < 0)
			return -EIO;
	}

	strcpy(rec.psk.identity, ident);
	memcpy(rec.psk.key, key, psk_len);
	rec.psk.len = psk_len;
	r = ks_create_entry(ks, &rec);
	ks_psk_clear(&rec.psk);
	if (r == 0)
		r = insert_device(ks, id);
	if (r == 0) {
		memcpy(psk_out, key, psk_len);
		*psk_out_len = psk_len;
		log_info("%s: device added (%s backend, PSK identity \"%s\")", id,
		         ks->be->ops->name, ident);
	}
	explicit_bzero(key, sizeof(key));
	return r;
}

int
keystore_device_remove(struct keystore *ks, const char *id)
{
	struct device_ks *d = ks_find_device(ks, id);
	char del[80];
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
	r = ks_fsync_dir(ks->dirfd, ks->dir);
	if (r < 0)
		return r;
	remove_tree(ks->dirfd, del);
	ks_fsync_dir(ks->dirfd, ks->dir);
	log_info("%s: device removed, its key destroyed", id);
	unregister_device(ks, d);
	return 0;
}

/*
 * Rewrites a device's record file from its in-memory state. A record that would be larger
 * than the store reads back is refused, not written: the device would be lost at the next
 * start.
 */
int
ks_save_record(struct keystore *ks, const struct device_ks *d)
{
	char dir[4096], *text = ks_record_format(d);
	int fd, r;

	if (strlen(text) > RECORD_MAX) {
		log_warnx("%s: its record would be %zu bytes, more than the %d a device may have: "
		          "not changed (remove attributes with gwctl device set %s NAME=)",
		          d->id, strlen(text), RECORD_MAX, d->id);
		free(text);
		return -EFBIG;
	}
	snprintf(dir, sizeof(dir), "%s/%s", ks->dir, d->id);
	fd = ks_open_dir(ks->dirfd, d->id, dir);
	if (fd < 0) {
		free(text);
		return fd;
	}
	r = atomic_write(fd, dir, "device", text, strlen(text), 0600);
	close(fd);
	free(text);
	return r;
}

/* After a failed write: the device as the disk has it, so memory never runs ahead of it. */
void
ks_reload_device(struct keystore *ks, struct device_ks *d)
{
	struct device_ks fresh = {0};

	if (ks_load_device(ks, &fresh, d->id, d->self) < 0) {
		/* Memory keeps what it had; the disk may differ until the next successful write. */
		log_warnx("keystore: %s could not be read back; restart gatewayd", d->id);
		ks_device_finish(&fresh);
		return;
	}
	fresh.dev = d->dev;
	ks_device_finish(d);
	*d = fresh;
	ks_sync_device(d);
}
