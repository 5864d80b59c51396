/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness for what keystore/ (entry.c, store.c, record.c, cert.c) reads from disk: the
 * store's folders, each device's record (device), PSK file (psk.key), key (key.pem, PKCS#8),
 * key reference, and certificates (cert.pem and its cached summary cert.pem.sum, a renewal's
 * next.* files), the gateway's own folder, and the tpm backend's encrypted PSK file (psk.enc,
 * through kspsk.h: its master key needs a TPM). The input becomes a store of the soft backend in a
 * private folder, which is opened through keystore.h as gatewayd opens it. Any broken promise
 * aborts:
 *   - keystore_open() succeeds, or refuses with one of the errors damage causes (-EINVAL,
 *     -ENOENT, -EEXIST, -EFBIG); LeakSanitizer sees that a refusal frees everything;
 *   - opened: the devices are the folders named by valid ids, in order; each one's PSK identity
 *     (and a rotation's previous one) finds it, and only it, with a 16 to 64-byte key, or
 *     -EPERM when it is suspended, revoked or disabled; an identity no device can have finds
 *     none; a revoked device's secrets are gone from disk; the TLS files handed out exist and
 *     the key is a reference (private key bytes are never handed out); attributes read back;
 *   - an attribute set through the API is written, and the store opens again with everything
 *     the same and that attribute added (the record's format reads back what it writes);
 *   - psk.enc opens only with the key and device it was sealed for (the harness's fixed key),
 *     and any PSK file's text sealed for a device opens again as the same text, and not for
 *     another device.
 *
 * The input: files, each introduced by a line "=== PATH" (at the start, or after a newline);
 * the file is everything up to the next such line (its newline included) or the end. PATH is
 * NAME (in the store's folder) or NAME/NAME (in a folder there, made 0700); a NAME is 1 to 64
 * of letters, digits and "@._:-", not "." or "..". Files are written 0600, as the keystore writes
 * them. Other lines before the first header, and files that cannot be made (a name used as
 * both file and folder), are skipped. The seeds are stores that the keystore itself wrote in the
 * cases of tests/unit/test-keystore.c, and their damaged files from refuses_a_damaged_store.
 */
#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>

#include "conf.h"
#include "device.h"
#include "fuzz.h"
#include "keystore.h"
#include "kspsk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HEADER        "=== "
#define FILES_MAX     32
#define PART_NAME_MAX 64

/* psk.enc's master key in the seeds (tests/fuzz/corpus/keystore):
 * "fuzz-keystore-master-key-0123456". */
static const uint8_t master[KSPSK_KEY_LEN] = {
        0x66, 0x75, 0x7a, 0x7a, 0x2d, 0x6b, 0x65, 0x79, 0x73, 0x74, 0x6f,
        0x72, 0x65, 0x2d, 0x6d, 0x61, 0x73, 0x74, 0x65, 0x72, 0x2d, 0x6b,
        0x65, 0x79, 0x2d, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36,
};

static char state_dir[PATH_MAX], store[PATH_MAX + 16];

/* The folders made for an input: what keystore_count() must then say. */
struct layout {
	char dirs[FILES_MAX][PART_NAME_MAX + 1];
	size_t ndirs;
};

static bool
valid_name(const char *s, size_t n)
{
	if (n == 0 || n > PART_NAME_MAX || (n == 1 && s[0] == '.') ||
	    (n == 2 && !memcmp(s, "..", 2)))
		return false;
	for (size_t i = 0; i < n; i++) {
		if (!isalnum((unsigned char)s[i]) && (!s[i] || !strchr("@._:-", s[i])))
			return false;
	}
	return true;
}

/* Writes one file of the input; a path that cannot be made is skipped. */
static void
write_file(struct layout *l, const char *path, size_t plen, const uint8_t *data, size_t len)
{
	const char *slash = memchr(path, '/', plen);
	char full[PATH_MAX + 160];
	int fd;

	if (slash && !valid_name(path, (size_t)(slash - path)))
		return;
	if (!valid_name(slash ? slash + 1 : path, slash ? plen - (size_t)(slash - path) - 1 : plen))
		return;
	if (slash) {
		int n = (int)(slash - path);

		snprintf(full, sizeof(full), "%s/%.*s", store, n, path);
		if (mkdir(full, 0700) == 0) {
			check(l->ndirs < FILES_MAX);
			snprintf(l->dirs[l->ndirs++], PART_NAME_MAX + 1, "%.*s", n, path);
		} else if (errno != EEXIST) {
			return;
		}
	}
	snprintf(full, sizeof(full), "%s/%.*s", store, (int)plen, path);
	fd = open(full, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	check(len == 0 || write(fd, data, len) == (ssize_t)len);
	check(close(fd) == 0);
}

/* psk.enc: opens with the seeds' key for its own device only; what opens is within bounds. */
static void
check_psk_enc(const char *id, const uint8_t *data, size_t len)
{
	uint8_t *text = malloc(KSPSK_TEXT_MAX);
	size_t tlen = 0;
	int r;

	check(text);
	r = kspsk_open(master, id, data, len, text, &tlen);
	check(r == 0 || r == -EBADMSG);
	if (r == 0) {
		check(tlen > 0 && tlen <= KSPSK_TEXT_MAX && len == KSPSK_OVERHEAD + tlen);
		check(kspsk_open(master, "another-device", data, len, text, &tlen) == -EBADMSG);
	}
	free(text);
}

/* Any PSK file's text, sealed for a device: the same text back, for that device only. */
static void
check_psk_seal(const char *id, const uint8_t *data, size_t len)
{
	uint8_t *sealed, *text;
	size_t slen, tlen;

	if (len == 0 || len > KSPSK_TEXT_MAX)
		return;
	sealed = malloc(KSPSK_OVERHEAD + len);
	text = malloc(KSPSK_TEXT_MAX);
	check(sealed && text);
	check(kspsk_seal(master, id, data, len, sealed, &slen) == 0);
	check(slen == KSPSK_OVERHEAD + len);
	check(kspsk_open(master, id, sealed, slen, text, &tlen) == 0);
	check(tlen == len && memcmp(text, data, len) == 0);
	check(kspsk_open(master, "another-device", sealed, slen, text, &tlen) == -EBADMSG);
	sealed[slen - 1] ^= 0x01;
	check(kspsk_open(master, id, sealed, slen, text, &tlen) == -EBADMSG);
	free(sealed);
	free(text);
}

/* What one device shows, to compare two opens of the store (copied: the store is freed). */
struct shown {
	struct keystore_info info; /* its strings are the store's */
	char identity[KEYSTORE_IDENTITY_MAX + 1];
	char prev[KEYSTORE_IDENTITY_MAX + 1]; /* "" for none */
	bool usable;
	uint8_t key[KEYSTORE_PSK_MAX];
	size_t keylen;
	int lookup;
	size_t nattrs;
	char *attrs; /* "key=value\n"..., malloc'd */
	int tls;
};

static bool
exists(const char *path)
{
	return access(path, F_OK) == 0;
}

static bool
ends_with(const char *s, const char *tail)
{
	size_t n = strlen(s), t = strlen(tail);

	return n >= t && strcmp(s + n - t, tail) == 0;
}

static void
show_device(const struct keystore *ks, const char *id, struct shown *out)
{
	static const char *const secrets[] = {"key.pem", "keyref.pem",   "psk.key",
	                                      "psk.enc", "next.key.pem", "next.keyref.pem"};
	struct keystore_info *in = &out->info;
	const char *cert, *keyf;
	struct device *dev = NULL;
	char *text = NULL;
	size_t tlen = 0;
	FILE *f;

	*out = (struct shown){0};
	check(keystore_device_info(ks, id, in) == 0);
	check(strcmp(in->id, id) == 0 && strcmp(in->backend, "soft") == 0);
	check(in->state == KEYSTORE_ACTIVE || in->state == KEYSTORE_SUSPENDED ||
	      in->state == KEYSTORE_REVOKED);
	snprintf(out->identity, sizeof(out->identity), "%s", in->psk_identity);
	snprintf(out->prev, sizeof(out->prev), "%s",
	         in->prev_psk_identity ? in->prev_psk_identity : "");
	out->usable = keystore_device_usable(ks, id);
	check(out->usable == (in->state == KEYSTORE_ACTIVE && in->enabled));

	/* Its sensor's identity finds it, and only it. */
	if (in->state == KEYSTORE_REVOKED) {
		char path[PATH_MAX + 200];

		/* Revoking destroys the key and the PSK (keystore.h). */
		for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
			snprintf(path, sizeof(path), "%s/%s/%s", store, id, secrets[i]);
			check(!exists(path));
		}
		check(strcmp(in->psk_identity, "-") == 0);
	} else {
		size_t n = strlen(in->psk_identity);

		check(n > 0 && n <= KEYSTORE_IDENTITY_MAX);
		out->lookup = keystore_psk_lookup(ks, (const uint8_t *)in->psk_identity, n, &dev,
		                                  out->key, &out->keylen);
		check(dev && strcmp(dev->id, id) == 0);
		check(out->lookup == (out->usable ? 0 : -EPERM));
		if (out->lookup == 0)
			check(out->keylen >= KEYSTORE_PSK_MIN && out->keylen <= KEYSTORE_PSK_MAX);
		check(keystore_identity_valid(device_find(keystore_devices(ks), id),
		                              (const uint8_t *)in->psk_identity, n));
		if (in->prev_psk_identity) {
			uint8_t key[KEYSTORE_PSK_MAX];
			size_t keylen;

			n = strlen(in->prev_psk_identity);
			dev = NULL;
			check(keystore_psk_lookup(ks, (const uint8_t *)in->prev_psk_identity, n,
			                          &dev, key, &keylen) == out->lookup);
			check(dev && strcmp(dev->id, id) == 0);
			check(keystore_identity_valid(device_find(keystore_devices(ks), id),
			                              (const uint8_t *)in->prev_psk_identity, n));
		}
	}

	/* Attributes read back in order; a name finds its first value. */
	out->nattrs = keystore_device_attr_count(ks, id);
	f = open_memstream(&text, &tlen);
	check(f);
	for (size_t i = 0; i < out->nattrs; i++) {
		const char *k, *v;

		check(keystore_device_attr_at(ks, id, i, &k, &v) == 0);
		check(keystore_device_attr(ks, id, k) != NULL);
		fprintf(f, "%s=%s\n", k, v);
	}
	check(keystore_device_attr_at(ks, id, out->nattrs, &(const char *){0},
	                              &(const char *){0}) == -ENOENT);
	check(fclose(f) == 0);
	out->attrs = text;

	/* The TLS files: there, and the key only a reference to it. */
	out->tls = keystore_tls_files(ks, id, &cert, &keyf);
	check(out->tls == 0 || out->tls == -ENOKEY);
	if (in->state == KEYSTORE_REVOKED)
		check(out->tls == -ENOKEY);
	else
		check((out->tls == 0) == (in->has_cert || in->on_trial));
	if (out->tls == 0) {
		check(exists(cert) && exists(keyf));
		check(ends_with(keyf, "/keyref.pem") || ends_with(keyf, "/next.keyref.pem"));
	}
}

static bool
same_device(const struct shown *a, const struct shown *b)
{
	const struct keystore_info *x = &a->info, *y = &b->info;

	return strcmp(a->identity, b->identity) == 0 && strcmp(a->prev, b->prev) == 0 &&
	       x->prev_psk_until == y->prev_psk_until && x->state == y->state &&
	       x->enabled == y->enabled && x->has_cert == y->has_cert &&
	       strcmp(x->subject, y->subject) == 0 && x->not_before == y->not_before &&
	       x->not_after == y->not_after && x->renewing == y->renewing &&
	       x->on_trial == y->on_trial && x->next_not_after == y->next_not_after &&
	       a->usable == b->usable && a->lookup == b->lookup && a->keylen == b->keylen &&
	       memcmp(a->key, b->key, a->keylen) == 0 && a->tls == b->tls;
}

/*
 * attrs ("name=value" lines) after keystore_device_set_attr(name, value): the first line of
 * that name takes the value, or one is added. A name holds no '=' or newline, a value no
 * newline (one line each in the record).
 */
static char *
with_attr(const char *attrs, const char *name, const char *value)
{
	size_t nlen = strlen(name), len = 0;
	bool done = false;
	char *out = NULL;
	FILE *f = open_memstream(&out, &len);

	check(f);
	for (const char *line = attrs; *line;) {
		const char *eol = strchr(line, '\n');

		check(eol);
		if (!done && !strncmp(line, name, nlen) && line[nlen] == '=') {
			fprintf(f, "%s=%s\n", name, value);
			done = true;
		} else {
			fprintf(f, "%.*s\n", (int)(eol - line), line);
		}
		line = eol + 1;
	}
	if (!done)
		fprintf(f, "%s=%s\n", name, value);
	check(fclose(f) == 0);
	return out;
}

static int
open_store(struct keystore **ks)
{
	const struct keystore_config cfg = {.state_dir = state_dir, .backend = "soft"};

	*ks = NULL;
	return keystore_open(ks, &cfg);
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(a, b);
}

static void
run(struct layout *l)
{
	struct shown *first, again;
	struct keystore *ks;
	size_t n, expect = 0;
	char ids[FILES_MAX][PART_NAME_MAX + 1];
	int r;

	r = open_store(&ks);
	check(r == 0 || r == -EINVAL || r == -ENOENT || r == -EEXIST || r == -EFBIG);
	check((r == 0) == (ks != NULL));
	if (r < 0)
		return;

	/* The devices: every folder named by a valid id, in order. */
	for (size_t i = 0; i < l->ndirs; i++) {
		if (device_id_valid(l->dirs[i]))
			snprintf(ids[expect++], sizeof(ids[0]), "%s", l->dirs[i]);
	}
	qsort(ids, expect, sizeof(ids[0]), cmp_str);
	n = keystore_count(ks);
	check(n == expect);
	check(keystore_device_id(ks, n) == NULL);
	first = calloc(n ? n : 1, sizeof(*first));
	check(first);
	for (size_t i = 0; i < n; i++) {
		check(strcmp(keystore_device_id(ks, i), ids[i]) == 0);
		show_device(ks, ids[i], &first[i]);
	}

	/* An identity longer than any device may have finds none. */
	{
		char nobody[KEYSTORE_IDENTITY_MAX + 2];
		struct device *dev = NULL;
		uint8_t key[KEYSTORE_PSK_MAX];
		size_t keylen;

		memset(nobody, 'x', sizeof(nobody) - 1);
		nobody[sizeof(nobody) - 1] = '\0';
		check(keystore_psk_lookup(ks, (const uint8_t *)nobody, strlen(nobody), &dev, key,
		                          &keylen) == -ENOENT);
	}
	{
		struct keystore_info gw;

		r = keystore_gateway_info(ks, &gw);
		check(r == 0 || r == -ENOENT);
		check(r < 0 || strcmp(gw.id, "@gateway") == 0);
	}

	/* An attribute written through the API; then the store as a restart finds it. */
	for (size_t i = 0; i < n; i++)
		check(keystore_device_set_attr(ks, ids[i], "fuzz-set", "1") == 0);
	keystore_free(ks);
	check(open_store(&ks) == 0);
	check(keystore_count(ks) == n);
	for (size_t i = 0; i < n; i++) {
		char *want;

		check(strcmp(keystore_device_id(ks, i), ids[i]) == 0);
		show_device(ks, ids[i], &again);
		check(same_device(&first[i], &again));
		want = with_attr(first[i].attrs, "fuzz-set", "1");
		check(strcmp(again.attrs, want) == 0);
		free(want);
		free(again.attrs);
		free(first[i].attrs);
	}
	free(first);
	keystore_free(ks);
}

/* The input's files: "=== PATH\n" then the content, up to the next header line. */
static void
write_files(struct layout *l, const uint8_t *data, size_t size)
{
	size_t at = 0, nfiles = 0;

	while (at < size && nfiles < FILES_MAX) {
		const uint8_t *path, *eol, *next = NULL, *body;
		size_t plen, blen;

		if (size - at < strlen(HEADER) || memcmp(data + at, HEADER, strlen(HEADER)) != 0) {
			const uint8_t *nl = memchr(data + at, '\n', size - at);

			if (!nl)
				return;
			at = (size_t)(nl - data) + 1;
			continue;
		}
		path = data + at + strlen(HEADER);
		eol = memchr(path, '\n', size - (size_t)(path - data));
		if (!eol)
			return;
		plen = (size_t)(eol - path);
		body = eol + 1;
		/* From the header's own newline: a header right after it ends an empty file. */
		next = memmem(eol, size - (size_t)(eol - data), "\n" HEADER, strlen("\n" HEADER));
		if (next)
			next++;
		blen = next ? (size_t)(next - body) : size - (size_t)(body - data);
		{
			char p[2 * PART_NAME_MAX + 2];

			if (plen < sizeof(p) && !memchr(path, '\0', plen)) {
				memcpy(p, path, plen);
				p[plen] = '\0';
				write_file(l, p, plen, body, blen);
				nfiles++;
				if (ends_with(p, "/psk.enc")) {
					*strchr(p, '/') = '\0';
					check_psk_enc(p, body, blen);
				} else if (ends_with(p, "/psk.key")) {
					*strchr(p, '/') = '\0';
					check_psk_seal(p, body, blen);
				}
			}
		}
		at = next ? (size_t)(next - data) : size;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct layout l = {0};

	if (!state_dir[0]) {
		fuzz_quiet_log("fuzz-keystore");
		snprintf(state_dir, sizeof(state_dir), "%s", fuzz_tmpdir("keystore"));
		snprintf(store, sizeof(store), "%s/keystore", state_dir);
		check(mkdir(store, 0700) == 0);
	}
	fuzz_empty(store);
	write_files(&l, data, size);
	run(&l);
	return 0;
}
