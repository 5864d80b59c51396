/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness for gateway/data/spool.c's recovery: the segment scanner and the record reader
 * on what a power loss, a failing SD card or a careless hand left in a spool folder. The input
 * becomes the files of up to two devices in a private spool folder; the spool is opened as
 * gatewayd opens it at start (both devices in its registry, every segment scanned, damage
 * counted, a torn tail cut off) and everything it offers is read back. Any broken promise of
 * spool.h aborts:
 *   - spool_open() succeeds whatever the files hold;
 *   - every record read is one written whole in one of the device's segments (re-encoded, it
 *     is found there byte for byte), with seqs strictly increasing and above the position a
 *     good acked file holds; depths, byte counts and statistics agree with what was read;
 *   - a second open finds the same records (recovery is done once), and no new damage;
 *   - acknowledging up to the middle record leaves exactly the later ones; an append takes a
 *     seq above every one seen and reads back as given; after spool_sync() and a reopen the
 *     records are the later ones and the appended one; acknowledging all leaves none, after
 *     a sync and a reopen too.
 *
 * The input: parts separated by "\n--\n" (at most PARTS_MAX). A part's first byte says what
 * the rest of it is, by its bits:
 *   0x01  the device: sensor-1 (clear) or sensor-2 (set);
 *   0x02  the device's acked file (set), or one of its segments (clear), named after the seq
 *         in the header it starts with (bytes 16..23; the spool names a segment after its
 *         first record) or, when that is 0 or cut short, after the part's number;
 *   0x04  the checksums are made right first (each record header found, and its body if its
 *         lengths fit; the acked file's), as a buggy writer or a hand would leave them: the
 *         fuzzer then gets past the CRCs to seqs out of order, bad lengths, missing NULs.
 * A later part with the same file name replaces an earlier one. The seeds ('0' a segment, '2'
 * an acked file, '1' a segment of sensor-2) are files spool.c itself wrote in the cases of
 * tests/unit/test-spool.c (five records m1..m5 of devices/x/up, application/json), intact and
 * damaged as those tests damage them.
 *
 * The spool has no switch to skip fsync: the harness works in /dev/shm (fuzz.h), where fsync
 * and syncfs cost nothing.
 */
#include <dirent.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>

#include "device.h"
#include "fuzz.h"
#include "spool.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The record and acked-file formats, as spool.c defines them (format version 1). */
#define REC_HDR   40
#define ACK_LEN   28
#define PART_SEP  "\n--\n"
#define PARTS_MAX 16
#define NDEV      2
#define NOW       1700000000

static const char *const devs[NDEV] = {"sensor-1", "sensor-2"};
static const uint8_t rec_magic[4] = {0xab, 'G', 'S', 'R'};
static const uint8_t ack_magic[4] = {0xab, 'G', 'S', 'A'};

struct seg_file {
	int dev;
	uint64_t name;
	const uint8_t *data;
	size_t len;
};

/* One input's files, as written. */
struct layout {
	struct seg_file segs[PARTS_MAX];
	size_t nsegs;
	size_t seg_bytes;
	bool has_dev[NDEV];
	/* From a good acked file: records up to acked are delivered, seqs go on from next. */
	bool ack_ok[NDEV];
	uint64_t acked[NDEV], next[NDEV];
};

/* A device's records as read, each encoded as it is on disk. */
struct list {
	uint8_t **recs;
	size_t *lens;
	uint64_t *seqs;
	size_t n, cap;
};

static uint32_t crc_table[256];
static char spool_dir[PATH_MAX + 16];
/* The spool's devices, both registered for each input: its folders are theirs. */
static struct device_registry *registry;
static struct device *device[NDEV];

static void
crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
		crc_table[i] = c;
	}
}

/* CRC-32C, as spool.c's. */
static uint32_t
crc32c(uint32_t crc, const uint8_t *p, size_t len)
{
	crc = ~crc;
	while (len--)
		crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

static uint64_t
get_le(const uint8_t *b, int n)
{
	uint64_t v = 0;

	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | b[i];
	return v;
}

static void
put_le(uint8_t *b, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		b[i] = (uint8_t)(v >> (8 * i));
}

/* Makes the CRCs of every header found in a segment, and of its body where it fits, right. */
static void
fix_segment(uint8_t *b, size_t len)
{
	size_t off = 0;

	while (off + REC_HDR <= len) {
		const uint8_t *m = memmem(b + off, len - off, rec_magic, sizeof(rec_magic));
		uint64_t total;

		if (!m || (size_t)(m - b) + REC_HDR > len)
			return;
		off = (size_t)(m - b);
		put_le(b + off + 32, crc32c(0, b + off, 32), 4);
		total = REC_HDR + get_le(b + off + 6, 2) + 1 + get_le(b + off + 8, 2) + 1 +
		        get_le(b + off + 12, 4);
		if (total > len - off) {
			off++;
			continue;
		}
		put_le(b + off + 36,
		       crc32c(crc32c(0, b + off, 36), b + off + REC_HDR, (size_t)total - REC_HDR),
		       4);
		off += (size_t)total;
	}
}

static void
path_of(char *buf, size_t len, int dev, const char *file)
{
	snprintf(buf, len, "%s/%s%s%s", spool_dir, devs[dev], file ? "/" : "", file ? file : "");
}

/* Writes one part as a file; b is the harness's own copy of it, which fixing may change. */
static void
write_part(struct layout *l, uint8_t *b, size_t len, size_t index)
{
	int kind = len ? b[0] : 0, dev = kind & 0x01;
	char path[PATH_MAX + 64], name[32];
	uint64_t seg;

	b++;
	len -= len > 0;
	if (!l->has_dev[dev]) {
		path_of(path, sizeof(path), dev, NULL);
		check(mkdir(path, 0700) == 0);
		l->has_dev[dev] = true;
	}
	if (kind & 0x02) {
		if ((kind & 0x04) && len >= ACK_LEN)
			put_le(b + 24, crc32c(0, b, 24), 4);
		/* An acknowledged position at the top of the seq space is damage (SEQ_END). */
		l->ack_ok[dev] = len == ACK_LEN && memcmp(b, ack_magic, sizeof(ack_magic)) == 0 &&
		                 get_le(b + 4, 4) == 1 && get_le(b + 24, 4) == crc32c(0, b, 24) &&
		                 get_le(b + 8, 8) != UINT64_MAX;
		l->acked[dev] = l->ack_ok[dev] ? get_le(b + 8, 8) : 0;
		l->next[dev] = l->ack_ok[dev] ? get_le(b + 16, 8) : 0;
		path_of(path, sizeof(path), dev, "acked");
		fuzz_write(path, b, len, 0600);
		return;
	}
	if (kind & 0x04)
		fix_segment(b, len);
	seg = len >= 24 ? get_le(b + 16, 8) : 0;
	if (seg == 0)
		seg = index + 1;
	snprintf(name, sizeof(name), "%016" PRIx64 ".seg", seg);
	path_of(path, sizeof(path), dev, name);
	fuzz_write(path, b, len, 0600);
	for (size_t i = 0; i < l->nsegs; i++) {
		if (l->segs[i].dev == dev && l->segs[i].name == seg) {
			l->seg_bytes -= l->segs[i].len;
			l->segs[i] = l->segs[--l->nsegs];
			break;
		}
	}
	l->segs[l->nsegs++] = (struct seg_file){.dev = dev, .name = seg, .data = b, .len = len};
	l->seg_bytes += len;
}

/* The record as spool.c writes it: header, topic, NUL, content type, NUL, payload. */
static uint8_t *
encode(const struct spool_record *r, size_t *outlen)
{
	size_t tlen = strlen(r->topic), clen = strlen(r->content_type);
	size_t total = REC_HDR + tlen + 1 + clen + 1 + r->len;
	uint8_t *b = malloc(total);

	check(b);
	memcpy(b, rec_magic, sizeof(rec_magic));
	b[4] = 1;
	b[5] = r->qos;
	put_le(b + 6, tlen, 2);
	put_le(b + 8, clen, 2);
	put_le(b + 10, 0, 2);
	put_le(b + 12, r->len, 4);
	put_le(b + 16, r->seq, 8);
	put_le(b + 24, (uint64_t)r->stored_at, 8);
	put_le(b + 32, crc32c(0, b, 32), 4);
	memcpy(b + REC_HDR, r->topic, tlen + 1);
	memcpy(b + REC_HDR + tlen + 1, r->content_type, clen + 1);
	if (r->len)
		memcpy(b + REC_HDR + tlen + 1 + clen + 1, r->payload, r->len);
	put_le(b + 36, crc32c(crc32c(0, b, 36), b + REC_HDR, total - REC_HDR), 4);
	*outlen = total;
	return b;
}

static void
list_add(struct list *li, uint8_t *rec, size_t len, uint64_t seq)
{
	if (li->n == li->cap) {
		li->cap = li->cap ? 2 * li->cap : 8;
		li->recs = reallocarray(li->recs, li->cap, sizeof(*li->recs));
		li->lens = reallocarray(li->lens, li->cap, sizeof(*li->lens));
		li->seqs = reallocarray(li->seqs, li->cap, sizeof(*li->seqs));
		check(li->recs && li->lens && li->seqs);
	}
	li->recs[li->n] = rec;
	li->lens[li->n] = len;
	li->seqs[li->n] = seq;
	li->n++;
}

static void
list_free(struct list *li)
{
	for (size_t i = 0; i < li->n; i++)
		free(li->recs[i]);
	free(li->recs);
	free(li->lens);
	free(li->seqs);
	*li = (struct list){0};
}

/* Whether the lists hold the same records: a's from the index skip on, all of b's. */
static bool
list_tail_equal(const struct list *a, size_t skip, const struct list *b)
{
	if (a->n - skip != b->n)
		return false;
	for (size_t i = 0; i < b->n; i++) {
		if (a->lens[skip + i] != b->lens[i] ||
		    memcmp(a->recs[skip + i], b->recs[i], b->lens[i]) != 0)
			return false;
	}
	return true;
}

/* What spool.h promises of one record read. */
static void
check_record(const struct spool_record *r, const void *buf)
{
	size_t tlen, clen;

	check(r->qos <= 1);
	check(r->topic == buf);
	tlen = strlen(r->topic);
	check(tlen > 0 && tlen <= SPOOL_TOPIC_MAX);
	check(r->content_type);
	clen = strlen(r->content_type);
	check(clen <= SPOOL_CTYPE_MAX);
	check(r->len <= SPOOL_PAYLOAD_MAX);
	check(r->len == 0 || r->payload);
	/* "the payload is followed by a NUL too" (and ASan sees a read past the buffer). */
	check(r->payload[r->len] == '\0');
}

/* A good record read from dev must be in one of its segments, byte for byte. */
static bool
in_segments(const struct layout *l, int dev, const uint8_t *rec, size_t len)
{
	for (size_t i = 0; i < l->nsegs; i++) {
		if (l->segs[i].dev == dev && memmem(l->segs[i].data, l->segs[i].len, rec, len))
			return true;
	}
	return false;
}

/*
 * Reads every live record of dev, in order, checking each; returns them encoded. verbatim:
 * each must be in the segments as the input wrote them (nothing appended since).
 */
static void
read_all(struct spool *sp, const struct layout *l, int dev, bool verbatim, struct list *out)
{
	uint64_t from = 0, bytes = 0, depth_bytes;
	struct spool_record r;
	void *buf;
	int rc;

	while ((rc = spool_read(sp, device[dev], from, &r, &buf)) == 0) {
		uint8_t *enc;
		size_t len;

		check_record(&r, buf);
		check(r.seq >= from);
		check(out->n == 0 || r.seq > out->seqs[out->n - 1]);
		check(!l->ack_ok[dev] || r.seq > l->acked[dev]);
		enc = encode(&r, &len);
		check(!verbatim || in_segments(l, dev, enc, len));
		bytes += len;
		list_add(out, enc, len, r.seq);
		free(buf);
		check(r.seq < UINT64_MAX);
		from = r.seq + 1;
	}
	check(rc == -ENOENT);
	check(spool_depth(sp, device[dev], &depth_bytes) == out->n);
	check(depth_bytes == bytes);
}

/* Each record again, by its seq, and by the seq just before it when that is no record's. */
static void
read_each(struct spool *sp, int dev, const struct list *li)
{
	for (size_t i = 0; i < li->n; i++) {
		uint64_t from[2] = {li->seqs[i], li->seqs[i] - 1};

		for (int k = 0; k < 2; k++) {
			struct spool_record r;
			uint8_t *enc;
			size_t len;
			void *buf;

			if (k == 1 && (from[1] == 0 || (i > 0 && li->seqs[i - 1] == from[1])))
				continue;
			check(spool_read(sp, device[dev], from[k], &r, &buf) == 0);
			check(r.seq == li->seqs[i]);
			enc = encode(&r, &len);
			check(len == li->lens[i] && memcmp(enc, li->recs[i], len) == 0);
			free(enc);
			free(buf);
		}
	}
}

static void
count_device(const struct device *dev, uint64_t records, void *data)
{
	(void)dev;
	check(records > 0);
	++*(size_t *)data;
}

/* The statistics and per-device figures agree. */
static void
check_totals(struct spool *sp)
{
	uint64_t records = 0, bytes = 0;
	struct spool_stats st;
	size_t live = 0, seen = 0;

	for (int d = 0; d < NDEV; d++) {
		uint64_t b, n = spool_depth(sp, device[d], &b);

		records += n;
		bytes += b;
		live += n > 0;
	}
	spool_stats(sp, &st);
	check(st.records == records && st.bytes == bytes);
	check(spool_devices(sp, count_device, &seen) == live && seen == live);
	check((st.corrupt_bytes == 0) == (st.corrupt_records == 0));
}

static int64_t
fuzz_clock(void)
{
	return NOW;
}

static struct spool *
open_spool(void)
{
	const struct spool_limits lim = {0};
	struct spool *sp = NULL;

	check(spool_open(&sp, spool_dir, &lim, registry) == 0);
	spool_set_clock(sp, fuzz_clock);
	check_totals(sp);
	return sp;
}

static uint64_t
corrupt_bytes(struct spool *sp)
{
	struct spool_stats st;

	spool_stats(sp, &st);
	return st.corrupt_bytes;
}

/*
 * Whether dev's next seq is past the last one there is: the name of a segment on disk now (the
 * first open deleted those with nothing live), a good acked file's position or a record's seq
 * is the last, or the acked file's next seq is beyond it. UINT64_MAX is no segment's name
 * (spool.c leaves such a file alone).
 */
static bool
used_up(const struct layout *l, int dev, const struct list *li)
{
	uint64_t top = l->ack_ok[dev] ? l->acked[dev] : 0;
	char path[PATH_MAX + 64];
	struct dirent *de;
	DIR *dir;

	path_of(path, sizeof(path), dev, NULL);
	dir = opendir(path);
	check(dir);
	while ((de = readdir(dir))) {
		char *end;
		uint64_t name;

		if (strlen(de->d_name) != 20 || strcmp(de->d_name + 16, ".seg") != 0)
			continue;
		errno = 0;
		name = strtoull(de->d_name, &end, 16);
		if (errno == 0 && end == de->d_name + 16 && name != UINT64_MAX && name > top)
			top = name;
	}
	closedir(dir);
	if (li->n && li->seqs[li->n - 1] > top)
		top = li->seqs[li->n - 1];
	return top == UINT64_MAX - 1 || (l->ack_ok[dev] && l->next[dev] == UINT64_MAX);
}

static void
run(struct layout *l, const uint8_t *data, size_t size)
{
	struct list first[NDEV] = {0}, again = {0};
	size_t keep[NDEV] = {0};
	uint64_t damage;
	struct spool *sp;

	/* Recovery, and what it offers. */
	sp = open_spool();
	damage = corrupt_bytes(sp);
	check(damage <= l->seg_bytes);
	for (int d = 0; d < NDEV; d++) {
		read_all(sp, l, d, true, &first[d]);
		read_each(sp, d, &first[d]);
	}
	spool_free(sp);

	/* Recovery is done once: the same records, no more damage than before. */
	sp = open_spool();
	check(corrupt_bytes(sp) <= damage);
	for (int d = 0; d < NDEV; d++) {
		read_all(sp, l, d, true, &again);
		check(list_tail_equal(&first[d], 0, &again));
		list_free(&again);
	}

	/* Delivered up to the middle; one more appended. */
	for (int d = 0; d < NDEV; d++) {
		struct list *li = &first[d];
		struct spool_record r = {
		        .qos = 1,
		        .topic = "fuzz/up",
		        .content_type = "",
		        .payload = data,
		        .len = size < 16 ? size : 16,
		};
		struct spool_record back;
		uint8_t *enc;
		size_t len;
		void *buf;

		if (!l->has_dev[d])
			continue;
		if (li->n) {
			keep[d] = li->n / 2 + 1;
			check(spool_ack(sp, device[d], li->seqs[keep[d] - 1]) == 0);
			check(spool_depth(sp, device[d], NULL) == li->n - keep[d]);
		}
		/* No seq is left after UINT64_MAX - 1 (a segment's name, an acked file). */
		if (used_up(l, d, li)) {
			check(spool_append(sp, device[d], &r) == -EOVERFLOW);
			continue;
		}
		check(spool_append(sp, device[d], &r) == 0);
		check(li->n == 0 || r.seq > li->seqs[li->n - 1]);
		check(!l->ack_ok[d] || (r.seq > l->acked[d] && r.seq >= l->next[d]));
		check(r.stored_at == NOW);
		check(spool_read(sp, device[d], r.seq, &back, &buf) == 0);
		check_record(&back, buf);
		check(back.seq == r.seq && back.len == r.len);
		check(r.len == 0 || memcmp(back.payload, r.payload, r.len) == 0);
		free(buf);
		enc = encode(&r, &len);
		list_add(li, enc, len, r.seq);
	}
	check_totals(sp);
	check(spool_sync(sp) == 0);
	spool_free(sp);

	/* After a restart: the later records and the appended one; then all delivered. */
	sp = open_spool();
	for (int d = 0; d < NDEV; d++) {
		if (!l->has_dev[d])
			continue;
		read_all(sp, l, d, false, &again);
		check(list_tail_equal(&first[d], keep[d], &again));
		list_free(&again);
		if (first[d].n)
			check(spool_ack(sp, device[d], first[d].seqs[first[d].n - 1]) == 0);
		check(spool_depth(sp, device[d], NULL) == 0);
	}
	check_totals(sp);
	check(spool_sync(sp) == 0);
	spool_free(sp);

	sp = open_spool();
	for (int d = 0; d < NDEV; d++) {
		check(spool_depth(sp, device[d], NULL) == 0);
		list_free(&first[d]);
	}
	spool_free(sp);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct layout l = {0};
	uint8_t *copy;
	size_t at = 0, index = 0;

	if (!spool_dir[0]) {
		fuzz_quiet_log("fuzz-spool");
		crc_init();
		snprintf(spool_dir, sizeof(spool_dir), "%s/spool", fuzz_tmpdir("spool"));
		check(mkdir(spool_dir, 0700) == 0);
	}
	fuzz_empty(spool_dir);
	registry = device_registry_new();
	for (int d = 0; d < NDEV; d++)
		check(device_add(registry, devs[d], &device[d]) == 0);

	/* The parts are changed in place (checksums made right), so in a copy. */
	copy = malloc(size ? size : 1);
	check(copy);
	if (size)
		memcpy(copy, data, size);
	while (at < size && index < PARTS_MAX) {
		uint8_t *sep = memmem(copy + at, size - at, PART_SEP, strlen(PART_SEP));
		size_t end = sep ? (size_t)(sep - copy) : size;

		if (end > at)
			write_part(&l, copy + at, end - at, index++);
		at = end + strlen(PART_SEP);
	}
	run(&l, data, size);
	device_registry_free(registry);
	free(copy);
	return 0;
}
