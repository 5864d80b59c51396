/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "device.h"
#include "open-fds.h"
#include "spool.h"

#define DEV "sensor-1"

/*
 * The on-disk record offsets the damage tests aim at (spool.c, format version 1): the
 * header's topic length and payload length fields.
 */
#define REC_TOPIC_LEN_OFF   6
#define REC_PAYLOAD_LEN_OFF 12

struct fixture {
	char tmp[PATH_MAX];
	char dir[PATH_MAX + 8]; /* the spool: tmp/spool, made by spool_open() */
	struct spool_limits lim;
	struct device_registry *reg; /* the spool's devices: dev_of() adds them as named */
	struct spool *sp;
};

static int64_t test_now = 1700000000;

static int64_t
fake_clock(void)
{
	return test_now;
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	const char *base = getenv("TMPDIR");

	if (!f)
		return -1;
	snprintf(f->tmp, sizeof(f->tmp), "%s/test-spool.XXXXXX", base && *base ? base : "/tmp");
	if (!mkdtemp(f->tmp))
		return -1;
	snprintf(f->dir, sizeof(f->dir), "%s/spool", f->tmp);
	test_now = 1700000000;
	f->reg = device_registry_new();
	*state = f;
	return 0;
}

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	spool_free(f->sp);
	device_registry_free(f->reg);
	nftw(f->tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

/* The device id of the fixture's registry, added if it has none. */
static struct device *
dev_of(struct fixture *f, const char *id)
{
	struct device *dev = device_find(f->reg, id);

	if (!dev)
		assert_int_equal(device_add(f->reg, id, &dev), 0);
	return dev;
}

/* (Re)opens the fixture's spool with f->lim, on the test clock. */
static void
reopen(struct fixture *f)
{
	spool_free(f->sp);
	f->sp = NULL;
	assert_int_equal(spool_open(&f->sp, f->dir, &f->lim, f->reg), 0);
	spool_set_clock(f->sp, fake_clock);
}

static uint64_t
put(struct fixture *f, const char *dev, const char *payload)
{
	struct spool_record r = {
	        .qos = 1,
	        .topic = "devices/x/up",
	        .content_type = "application/json",
	        .payload = (const uint8_t *)payload,
	        .len = strlen(payload),
	};

	assert_int_equal(spool_append(f->sp, dev_of(f, dev), &r), 0);
	assert_int_equal(r.stored_at, test_now);
	return r.seq;
}

static int
try_put(struct fixture *f, const char *dev, const char *payload)
{
	struct spool_record r = {
	        .qos = 0,
	        .topic = "devices/x/up",
	        .content_type = "application/json",
	        .payload = (const uint8_t *)payload,
	        .len = strlen(payload),
	};

	return spool_append(f->sp, dev_of(f, dev), &r);
}

/* Reads every live record of dev in order: payloads joined by ',' into out, seqs into seqs. */
static size_t
read_all(struct fixture *f, const char *dev, char *out, size_t outlen, uint64_t *seqs)
{
	struct spool_record rec;
	uint64_t from = 0;
	size_t n = 0;
	void *buf;

	out[0] = '\0';
	while (spool_read(f->sp, dev_of(f, dev), from, &rec, &buf) == 0) {
		char p[64];

		assert_true(rec.len < sizeof(p));
		memcpy(p, rec.payload, rec.len);
		p[rec.len] = '\0';
		if (n)
			strncat(out, ",", outlen - strlen(out) - 1);
		strncat(out, p, outlen - strlen(out) - 1);
		assert_true(from <= rec.seq);
		if (seqs)
			seqs[n] = rec.seq;
		n++;
		from = rec.seq + 1;
		free(buf);
	}
	return n;
}

/* The bytes one record of put(f, DEV, payload) counts for, measured in a scratch spool. */
static uint64_t
record_bytes(struct fixture *f, const char *payload)
{
	struct device_registry *save_reg = f->reg;
	struct spool_limits lim = {0};
	struct spool *save = f->sp;
	char dir[PATH_MAX + 8];
	uint64_t bytes;

	/* A registry of its own: one spool per registry, and f->sp may be open. */
	f->reg = device_registry_new();
	snprintf(dir, sizeof(dir), "%s/probe", f->tmp);
	assert_int_equal(spool_open(&f->sp, dir, &lim, f->reg), 0);
	spool_set_clock(f->sp, fake_clock);
	put(f, DEV, payload);
	assert_int_equal(spool_depth(f->sp, dev_of(f, DEV), &bytes), 1);
	assert_int_equal(spool_forget(f->sp, dev_of(f, DEV)), 0);
	spool_free(f->sp);
	device_registry_free(f->reg);
	f->sp = save;
	f->reg = save_reg;
	return bytes;
}

/* The device's segment files in spool dir, sorted into names (up to max); returns how many. */
static size_t
segments_in(const char *dir, const char *dev, char names[][32], size_t max)
{
	char path[PATH_MAX + 80];
	struct dirent *de;
	size_t n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "%s/%s", dir, dev);
	d = opendir(path);
	if (!d)
		return 0;
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name);

		if (len > 4 && strcmp(de->d_name + len - 4, ".seg") == 0) {
			if (n < max)
				snprintf(names[n], 32, "%s", de->d_name);
			n++;
		}
	}
	closedir(d);
	qsort(names, n < max ? n : max, 32, (int (*)(const void *, const void *))strcmp);
	return n;
}

static size_t
segments(struct fixture *f, const char *dev, char names[][32], size_t max)
{
	return segments_in(f->dir, dev, names, max);
}

static void
seg_path(struct fixture *f, const char *dev, const char *name, char *out, size_t len)
{
	snprintf(out, len, "%s/%s/%s", f->dir, dev, name);
}

static off_t
file_size(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return st.st_size;
}

static void
flip(const char *path, off_t off, uint8_t mask)
{
	int fd = open(path, O_RDWR);
	uint8_t b;

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, off), 1);
	b ^= mask;
	assert_int_equal(pwrite(fd, &b, 1, off), 1);
	close(fd);
}

/* Five records m1..m5 of equal size for DEV, synced, the spool closed; returns their size. */
static uint64_t
five_closed(struct fixture *f, char *seg, size_t seglen)
{
	char names[4][32];
	uint64_t rs = record_bytes(f, "m1");

	reopen(f);
	for (int i = 1; i <= 5; i++) {
		char p[8];

		snprintf(p, sizeof(p), "m%d", i);
		put(f, DEV, p);
	}
	assert_int_equal(spool_sync(f->sp), 0);
	spool_free(f->sp);
	f->sp = NULL;
	assert_int_equal(segments(f, DEV, names, 4), 1);
	seg_path(f, DEV, names[0], seg, seglen);
	assert_int_equal(file_size(seg), 5 * rs);
	return rs;
}

static void
append_read_ack_in_order(void **state)
{
	struct fixture *f = *state;
	struct spool_record rec, r = {.topic = "a/b", .payload = (const uint8_t *)"x", .len = 1};
	uint64_t seq[5], bytes, got[8];
	char all[256];
	void *buf;

	reopen(f);
	assert_false(spool_needs_sync(f->sp));
	for (int i = 0; i < 5; i++) {
		char p[8];

		snprintf(p, sizeof(p), "m%d", i + 1);
		seq[i] = put(f, DEV, p);
		if (i)
			assert_true(seq[i] > seq[i - 1]);
	}
	assert_true(spool_needs_sync(f->sp));
	assert_int_equal(spool_sync(f->sp), 0);
	assert_false(spool_needs_sync(f->sp));

	/* Everything a record carries comes back. */
	assert_int_equal(spool_read(f->sp, dev_of(f, DEV), 0, &rec, &buf), 0);
	assert_int_equal(rec.seq, seq[0]);
	assert_int_equal(rec.qos, 1);
	assert_int_equal(rec.stored_at, test_now);
	assert_string_equal(rec.topic, "devices/x/up");
	assert_string_equal(rec.content_type, "application/json");
	assert_int_equal(rec.len, 2);
	assert_memory_equal(rec.payload, "m1", 2);
	free(buf);

	assert_int_equal(read_all(f, DEV, all, sizeof(all), got), 5);
	assert_string_equal(all, "m1,m2,m3,m4,m5");
	assert_memory_equal(got, seq, sizeof(seq));
	assert_int_equal(spool_read(f->sp, dev_of(f, DEV), seq[4] + 1, &rec, &buf), -ENOENT);
	/* from_seq between records: the next one. */
	assert_int_equal(spool_read(f->sp, dev_of(f, DEV), seq[2], &rec, &buf), 0);
	assert_int_equal(rec.seq, seq[2]);
	free(buf);

	assert_int_equal(spool_depth(f->sp, dev_of(f, DEV), &bytes), 5);
	assert_true(bytes > 5 * 2);
	assert_int_equal(spool_devices(f->sp, NULL, NULL), 1);

	assert_int_equal(spool_ack(f->sp, dev_of(f, DEV), seq[2]), 0);
	assert_true(spool_needs_sync(f->sp));
	assert_int_equal(spool_depth(f->sp, dev_of(f, DEV), NULL), 2);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 2);
	assert_string_equal(all, "m4,m5");
	assert_int_equal(spool_sync(f->sp), 0);
	assert_false(spool_needs_sync(f->sp));

	/* No content type reads back as "", and an empty payload as empty. */
	r.len = 0;
	assert_int_equal(spool_append(f->sp, dev_of(f, "other"), &r), 0);
	assert_int_equal(spool_read(f->sp, dev_of(f, "other"), 0, &rec, &buf), 0);
	assert_string_equal(rec.topic, "a/b");
	assert_string_equal(rec.content_type, "");
	assert_int_equal(rec.len, 0);
	free(buf);
	assert_int_equal(spool_devices(f->sp, NULL, NULL), 2);

	assert_int_equal(spool_read(f->sp, dev_of(f, "nobody"), 0, &rec, &buf), -ENOENT);
	assert_int_equal(spool_ack(f->sp, dev_of(f, "nobody"), 1), -ENOENT);
	r.topic = "";
	assert_int_equal(spool_append(f->sp, dev_of(f, DEV), &r), -EINVAL);
	r.topic = "a";
	r.qos = 2;
	assert_int_equal(spool_append(f->sp, dev_of(f, DEV), &r), -EINVAL);
}

static void
reopen_keeps_order_and_acks(void **state)
{
	struct fixture *f = *state;
	struct spool *second;
	uint64_t a, b, c, d, e;
	char all[256];

	reopen(f);
	/* One process at a time. */
	assert_int_equal(spool_open(&second, f->dir, &f->lim, f->reg), -EBUSY);

	a = put(f, DEV, "a");
	b = put(f, DEV, "b");
	c = put(f, DEV, "c");
	assert_true(a < b && b < c);
	assert_int_equal(spool_sync(f->sp), 0);
	assert_int_equal(spool_ack(f->sp, dev_of(f, DEV), b), 0);
	assert_int_equal(spool_sync(f->sp), 0);

	reopen(f);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 1);
	assert_string_equal(all, "c");
	d = put(f, DEV, "d");
	assert_true(d > c);
	assert_int_equal(spool_sync(f->sp), 0);

	/* A crash after an acknowledgement that no sync persisted: the record comes back. */
	assert_int_equal(spool_ack(f->sp, dev_of(f, DEV), c), 0);
	reopen(f);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 2);
	assert_string_equal(all, "c,d");

	/* Appends of many devices at once are made durable together (one syncfs). */
	for (int i = 0; i < 6; i++) {
		char dev[16];

		snprintf(dev, sizeof(dev), "many-%d", i);
		put(f, dev, "m");
	}
	assert_int_equal(spool_sync_appends(f->sp), 0);
	assert_int_equal(spool_sync(f->sp), 0);
	assert_false(spool_needs_sync(f->sp));
	reopen(f);
	assert_int_equal(read_all(f, "many-5", all, sizeof(all), NULL), 1);
	/* ... and so are their acknowledgements: the first of two each is gone after a reopen. */
	for (int i = 0; i < 6; i++) {
		char dev[16];
		uint64_t seqs[2];

		snprintf(dev, sizeof(dev), "many-%d", i);
		put(f, dev, "n");
		assert_int_equal(read_all(f, dev, all, sizeof(all), seqs), 2);
		assert_int_equal(spool_ack(f->sp, dev_of(f, dev), seqs[0]), 0);
	}
	assert_int_equal(spool_sync(f->sp), 0);
	assert_false(spool_needs_sync(f->sp));
	reopen(f);
	for (int i = 0; i < 6; i++) {
		char dev[16];

		snprintf(dev, sizeof(dev), "many-%d", i);
		assert_int_equal(read_all(f, dev, all, sizeof(all), NULL), 1);
		assert_string_equal(all, "n");
	}

	/* A sync of the appends alone leaves acknowledgements for the next full sync. */
	assert_int_equal(spool_ack(f->sp, dev_of(f, DEV), d), 0);
	assert_int_equal(spool_sync_appends(f->sp), 0);
	assert_true(spool_needs_sync(f->sp));
	reopen(f);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 2);
	assert_string_equal(all, "c,d");

	/* Everything acknowledged and persisted: nothing comes back, seqs go on. */
	assert_int_equal(spool_ack(f->sp, dev_of(f, DEV), d), 0);
	assert_int_equal(spool_sync(f->sp), 0);
	reopen(f);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 0);
	assert_int_equal(spool_depth(f->sp, dev_of(f, DEV), NULL), 0);
	e = put(f, DEV, "e");
	assert_true(e > d);
}

static void
segments_roll_over_and_delivered_ones_go(void **state)
{
	struct fixture *f = *state;
	uint64_t rs = record_bytes(f, "p00"), seq[16], k;
	char names[16][32], want[32], all[256];
	size_t n;

	f->lim.segment_bytes = 200;
	/* A segment takes appends while it is under segment_bytes. */
	k = (f->lim.segment_bytes + rs - 1) / rs;
	assert_true(k >= 2 && k < 5);
	reopen(f);
	for (int i = 0; i < 10; i++) {
		char p[8];

		snprintf(p, sizeof(p), "p%02d", i);
		seq[i] = put(f, DEV, p);
	}
	assert_int_equal(spool_sync(f->sp), 0);
	n = segments(f, DEV, names, 16);
	assert_int_equal(n, (10 + k - 1) / k);
	/* Each is named after the seq of its first record. */
	for (size_t i = 0; i < n; i++) {
		snprintf(want, sizeof(want), "%016llx.seg", (unsigned long long)seq[i * k]);
		assert_string_equal(names[i], want);
	}
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 10);
	assert_string_equal(all, "p00,p01,p02,p03,p04,p05,p06,p07,p08,p09");

	/* Acknowledge into the middle of the second segment: only the first goes. */
	assert_int_equal(spool_ack(f->sp, dev_of(f, DEV), seq[k + 1]), 0);
	assert_int_equal(segments(f, DEV, names, 16), n); /* not before the sync */
	assert_int_equal(spool_sync(f->sp), 0);
	assert_int_equal(segments(f, DEV, names, 16), n - 1);
	snprintf(want, sizeof(want), "%016llx.seg", (unsigned long long)seq[k]);
	assert_string_equal(names[0], want);
	assert_int_equal(spool_depth(f->sp, dev_of(f, DEV), NULL), 10 - (k + 2));

	/* All delivered: only the newest segment stays, for appends (10 % k != 0: not full). */
	assert_int_equal(10 % k != 0, 1);
	assert_int_equal(spool_ack(f->sp, dev_of(f, DEV), seq[9]), 0);
	assert_int_equal(spool_sync(f->sp), 0);
	assert_int_equal(segments(f, DEV, names, 16), 1);
	snprintf(want, sizeof(want), "%016llx.seg", (unsigned long long)seq[(n - 1) * k]);
	assert_string_equal(names[0], want);

	/* Fill it, deliver everything: no segment left; after a restart seqs still go on. */
	for (uint64_t i = 10 - (n - 1) * k; i < k; i++)
		seq[10] = put(f, DEV, "p10");
	assert_int_equal(segments(f, DEV, names, 16), 1);
	assert_int_equal(spool_ack(f->sp, dev_of(f, DEV), seq[10]), 0);
	assert_int_equal(spool_sync(f->sp), 0);
	assert_int_equal(segments(f, DEV, names, 16), 0);
	reopen(f);
	assert_int_equal(spool_depth(f->sp, dev_of(f, DEV), NULL), 0);
	seq[11] = put(f, DEV, "p11");
	assert_true(seq[11] > seq[10]);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 1);
	assert_string_equal(all, "p11");
}

static void
truncated_tail_is_cut_and_appends_follow(void **state)
{
	struct fixture *f = *state;
	struct spool_stats st;
	uint64_t rs, seqs[8], s6;
	char seg[PATH_MAX + 80], all[256];

	rs = five_closed(f, seg, sizeof(seg));
	/* Power loss in the middle of writing m5. */
	assert_int_equal(truncate(seg, (off_t)(5 * rs - 10)), 0);

	reopen(f);
	spool_stats(f->sp, &st);
	assert_int_equal(st.corrupt_records, 1);
	assert_int_equal(st.corrupt_bytes, rs - 10);
	assert_int_equal(st.records, 4);
	assert_int_equal(file_size(seg), 4 * rs);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), seqs), 4);
	assert_string_equal(all, "m1,m2,m3,m4");
	s6 = put(f, DEV, "m6");
	assert_true(s6 > seqs[3]);
	assert_int_equal(spool_sync(f->sp), 0);

	/* The new record follows good data: the next start finds no damage. */
	reopen(f);
	spool_stats(f->sp, &st);
	assert_int_equal(st.corrupt_records, 0);
	assert_int_equal(st.corrupt_bytes, 0);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 5);
	assert_string_equal(all, "m1,m2,m3,m4,m6");
}

static void
flipped_payload_bit_loses_one_record(void **state)
{
	struct fixture *f = *state;
	struct spool_stats st;
	char seg[PATH_MAX + 80], all[256];
	uint64_t rs;

	rs = five_closed(f, seg, sizeof(seg));
	/* The last byte of m3 is its payload's. */
	flip(seg, (off_t)(3 * rs - 1), 0x01);

	reopen(f);
	spool_stats(f->sp, &st);
	assert_int_equal(st.corrupt_records, 1);
	assert_int_equal(st.corrupt_bytes, rs);
	assert_int_equal(spool_depth(f->sp, dev_of(f, DEV), NULL), 4);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 4);
	assert_string_equal(all, "m1,m2,m4,m5");
	/* The damage stays where it was: appends and a restart do not disturb the rest. */
	put(f, DEV, "m6");
	assert_int_equal(spool_sync(f->sp), 0);
	reopen(f);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 5);
	assert_string_equal(all, "m1,m2,m4,m5,m6");
}

static void
flipped_length_bits_resync_to_later_records(void **state)
{
	struct fixture *f = *state;
	struct spool_stats st;
	char seg[PATH_MAX + 80], all[256];
	uint64_t rs;

	rs = five_closed(f, seg, sizeof(seg));
	/* m2's topic length and m4's payload length now claim far more than they hold. */
	flip(seg, (off_t)(1 * rs + REC_TOPIC_LEN_OFF + 1), 0x10);
	flip(seg, (off_t)(3 * rs + REC_PAYLOAD_LEN_OFF + 1), 0x04);

	reopen(f);
	spool_stats(f->sp, &st);
	assert_int_equal(st.corrupt_records, 2);
	assert_int_equal(st.corrupt_bytes, 2 * rs);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 3);
	assert_string_equal(all, "m1,m3,m5");
}

static void
payload_that_looks_like_a_record_is_not_one(void **state)
{
	struct fixture *f = *state;
	char probe[PATH_MAX + 8], names[4][32], seg[PATH_MAX + 80], all[256];
	struct spool_limits lim = {0};
	uint8_t payload[512];
	struct spool_record r = {.topic = "t", .payload = payload};
	struct spool_stats st;
	off_t inner_size, end;
	int fd;

	/* A good record with a high seq, as another spool wrote it. */
	snprintf(probe, sizeof(probe), "%s/probe2", f->tmp);
	assert_int_equal(spool_open(&f->sp, probe, &lim, f->reg), 0);
	spool_set_clock(f->sp, fake_clock);
	for (int i = 0; i < 100; i++)
		put(f, "x", "zz");
	assert_int_equal(spool_sync(f->sp), 0);
	assert_int_equal(segments_in(probe, "x", names, 4), 1);
	snprintf(seg, sizeof(seg), "%s/x/%s", probe, names[0]);
	inner_size = file_size(seg) / 100;
	assert_true(inner_size + 4 <= (off_t)sizeof(payload));
	fd = open(seg, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, payload + 2, (size_t)inner_size, 99 * inner_size), inner_size);
	close(fd);
	memcpy(payload, "AA", 2);
	memcpy(payload + 2 + inner_size, "AA", 2);
	r.len = (size_t)inner_size + 4;

	/* It travels as the payload of m3, whose last byte then flips. */
	reopen(f);
	put(f, DEV, "m1");
	put(f, DEV, "m2");
	assert_int_equal(spool_append(f->sp, dev_of(f, DEV), &r), 0);
	put(f, DEV, "m4");
	put(f, DEV, "m5");
	assert_int_equal(spool_sync(f->sp), 0);
	assert_int_equal(segments(f, DEV, names, 4), 1);
	seg_path(f, DEV, names[0], seg, sizeof(seg));
	end = file_size(seg) - 2 * (off_t)record_bytes(f, "m4");
	flip(seg, end - 1, 0x01);

	reopen(f);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 4);
	assert_string_equal(all, "m1,m2,m4,m5");
	spool_stats(f->sp, &st);
	assert_int_equal(st.corrupt_records, 1);
}

/*
 * A write torn by a power loss whose tail the next start could not cut off (ftruncate
 * failed): the torn record's header, good, claims more bytes than the file then held, and
 * appends went on after it. What was appended inside that claim must outlive later appends.
 */
static void
record_inside_a_torn_ones_length_survives_appends(void **state)
{
	struct fixture *f = *state;
	char probe[PATH_MAX + 8], names[4][32], seg[PATH_MAX + 80], big_seg[PATH_MAX + 80];
	char all[256], big[200];
	struct spool_limits lim = {0};
	uint8_t file[1024];
	struct spool_stats st;
	uint64_t rs;
	off_t torn;
	int fd;

	rs = five_closed(f, seg, sizeof(seg));

	/* m4 as a larger record with the same seq, written by another spool. */
	snprintf(probe, sizeof(probe), "%s/probe3", f->tmp);
	assert_int_equal(spool_open(&f->sp, probe, &lim, f->reg), 0);
	spool_set_clock(f->sp, fake_clock);
	for (int i = 1; i <= 3; i++)
		put(f, DEV, "m0");
	memset(big, 'b', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(put(f, DEV, big), 4);
	assert_int_equal(spool_sync(f->sp), 0);
	spool_free(f->sp);
	f->sp = NULL;
	assert_int_equal(segments_in(probe, DEV, names, 4), 1);
	snprintf(big_seg, sizeof(big_seg), "%s/%s/%s", probe, DEV, names[0]);
	torn = file_size(big_seg) - 4 * (off_t)rs;
	assert_true(torn >= 40 && (size_t)(5 * rs + torn) <= sizeof(file));

	/* m1 m2 m3, the large m4 cut short, m5: the large m4 claims up to the end of m5. */
	fd = open(seg, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, file, 3 * rs, 0), (ssize_t)(3 * rs));
	assert_int_equal(pread(fd, file + 3 * rs + torn, rs, 4 * (off_t)rs), (ssize_t)rs);
	close(fd);
	fd = open(big_seg, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, file + 3 * rs, (size_t)torn, 3 * (off_t)rs), torn);
	close(fd);
	fd = open(seg, O_WRONLY | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, file, 4 * rs + torn), (ssize_t)(4 * rs + torn));
	close(fd);

	reopen(f);
	spool_stats(f->sp, &st);
	assert_int_equal(st.corrupt_records, 1);
	assert_int_equal(st.corrupt_bytes, torn);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 4);
	assert_string_equal(all, "m1,m2,m3,m5");
	put(f, DEV, "m6");
	assert_int_equal(spool_sync(f->sp), 0);
	reopen(f);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 5);
	assert_string_equal(all, "m1,m2,m3,m5,m6");
}

static void
damage_found_while_running_is_skipped(void **state)
{
	struct fixture *f = *state;
	char seg[PATH_MAX + 80], all[256];
	struct spool_stats st;
	uint64_t rs, seqs[8];

	rs = five_closed(f, seg, sizeof(seg));
	reopen(f);
	/* Behind the open spool's back: m3's payload and m5's payload length. */
	flip(seg, (off_t)(3 * rs - 1), 0x01);
	flip(seg, (off_t)(4 * rs + REC_PAYLOAD_LEN_OFF + 1), 0x04);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), seqs), 3);
	assert_string_equal(all, "m1,m2,m4");
	spool_stats(f->sp, &st);
	assert_int_equal(st.corrupt_records, 2);
	assert_int_equal(st.corrupt_bytes, 2 * rs);
	assert_int_equal(st.records, 3);
	/* Appends go on after the damage, and everything good survives a restart. */
	put(f, DEV, "m6");
	assert_int_equal(spool_ack(f->sp, dev_of(f, DEV), seqs[0]), 0);
	assert_int_equal(spool_sync(f->sp), 0);
	reopen(f);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 3);
	assert_string_equal(all, "m2,m4,m6");
}

static void
full_device_refuses(void **state)
{
	struct fixture *f = *state;
	uint64_t rs = record_bytes(f, "r1"), s1;
	struct spool_stats st;
	char all[256];
	char big[64];

	f->lim.device_bytes = 3 * rs;
	f->lim.full = SPOOL_REFUSE;
	reopen(f);
	s1 = put(f, DEV, "r1");
	put(f, DEV, "r2");
	put(f, DEV, "r3");
	assert_int_equal(try_put(f, DEV, "r4"), -ENOSPC);
	spool_stats(f->sp, &st);
	assert_int_equal(st.refused, 1);
	assert_int_equal(st.dropped_full, 0);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 3);
	assert_string_equal(all, "r1,r2,r3");
	/* Other devices have their own bound. */
	assert_int_equal(try_put(f, "other", "o1"), 0);
	/* Room again once something is delivered. */
	assert_int_equal(spool_ack(f->sp, dev_of(f, DEV), s1), 0);
	assert_int_equal(try_put(f, DEV, "r4"), 0);
	/* Never fits. */
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	f->lim.device_bytes = rs + 10;
	reopen(f);
	assert_int_equal(try_put(f, "third", big), -EMSGSIZE);
}

static void
full_spool_refuses(void **state)
{
	struct fixture *f = *state;
	uint64_t rs = record_bytes(f, "r1");
	struct spool_stats st;

	f->lim.total_bytes = 4 * rs;
	f->lim.full = SPOOL_REFUSE;
	reopen(f);
	put(f, "a", "r1");
	put(f, "a", "r2");
	put(f, "a", "r3");
	put(f, "b", "r1");
	assert_int_equal(try_put(f, "b", "r2"), -ENOSPC);
	assert_int_equal(try_put(f, "c", "r1"), -ENOSPC);
	spool_stats(f->sp, &st);
	assert_int_equal(st.refused, 2);
	assert_int_equal(st.records, 4);
	assert_int_equal(st.bytes, 4 * rs);
	assert_int_equal(spool_depth(f->sp, dev_of(f, "a"), NULL), 3);
	assert_int_equal(spool_depth(f->sp, dev_of(f, "b"), NULL), 1);
}

static void
full_device_drops_its_oldest(void **state)
{
	struct fixture *f = *state;
	uint64_t rs = record_bytes(f, "d1");
	struct spool_stats st;
	char all[256];

	f->lim.device_bytes = 3 * rs;
	f->lim.full = SPOOL_DROP_OLDEST;
	reopen(f);
	put(f, "other", "o1");
	put(f, DEV, "d1");
	put(f, DEV, "d2");
	put(f, DEV, "d3");
	put(f, DEV, "d4");
	put(f, DEV, "d5");
	spool_stats(f->sp, &st);
	assert_int_equal(st.dropped_full, 2);
	assert_int_equal(st.refused, 0);
	assert_int_equal(spool_depth(f->sp, dev_of(f, DEV), NULL), 3);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 3);
	assert_string_equal(all, "d3,d4,d5");
	assert_int_equal(read_all(f, "other", all, sizeof(all), NULL), 1);
	/* Dropped stays dropped. */
	assert_int_equal(spool_sync(f->sp), 0);
	reopen(f);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 3);
	assert_string_equal(all, "d3,d4,d5");
}

static void
full_spool_drops_the_oldest_records(void **state)
{
	struct fixture *f = *state;
	uint64_t rs = record_bytes(f, "a1");
	struct spool_stats st;
	char all[256];

	f->lim.total_bytes = 4 * rs;
	f->lim.full = SPOOL_DROP_OLDEST;
	reopen(f);
	test_now = 1000;
	put(f, "b", "b1");
	test_now = 900; /* a's records are older, though appended later */
	put(f, "a", "a1");
	put(f, "a", "a2");
	test_now = 1100;
	put(f, "b", "b2");
	test_now = 1200;
	put(f, "b", "b3");
	spool_stats(f->sp, &st);
	assert_int_equal(st.dropped_full, 1);
	assert_int_equal(read_all(f, "a", all, sizeof(all), NULL), 1);
	assert_string_equal(all, "a2");
	put(f, "b", "b4");
	put(f, "b", "b5");
	assert_int_equal(read_all(f, "a", all, sizeof(all), NULL), 0);
	assert_int_equal(read_all(f, "b", all, sizeof(all), NULL), 4);
	assert_string_equal(all, "b2,b3,b4,b5");
	spool_stats(f->sp, &st);
	assert_int_equal(st.dropped_full, 3);
	assert_int_equal(st.bytes, 4 * rs);
}

static void
old_records_are_dropped_on_read(void **state)
{
	struct fixture *f = *state;
	struct spool_stats st;
	char all[256];

	f->lim.max_age = 60;
	reopen(f);
	put(f, DEV, "old1");
	put(f, DEV, "old2");
	test_now += 50;
	put(f, DEV, "new1");
	test_now += 50;
	assert_int_equal(spool_depth(f->sp, dev_of(f, DEV), NULL), 3);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 1);
	assert_string_equal(all, "new1");
	spool_stats(f->sp, &st);
	assert_int_equal(st.dropped_age, 2);
	assert_int_equal(st.records, 1);
	test_now += 11;
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 0);
	spool_stats(f->sp, &st);
	assert_int_equal(st.dropped_age, 3);
	assert_int_equal(spool_depth(f->sp, dev_of(f, DEV), NULL), 0);
}

static void
invalid_device_ids_never_reach_the_spool(void **state)
{
	static const char *const bad[] = {
	        "",
	        ".hidden",
	        "..",
	        ".",
	        "a/b",
	        "../x",
	        "-lead",
	        "sp ace",
	        "tab\t",
	        "\xc3\xbc",
	        "0123456789012345678901234567890123456789012345678901234567890123x",
	};
	/* Folder names a hand or another program may leave; never a device's. */
	static const char *const stray[] = {"-lead", "sp ace", "tab\t", "\xc3\xbc"};
	struct fixture *f = *state;
	char names[4][32], path[PATH_MAX + 80];
	struct dirent *de;
	DIR *d;

	reopen(f);
	/* The registry refuses them: no device the spool is given has one. */
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(device_add(f->reg, bad[i], NULL), -EINVAL);
	/* Nothing was made for them. */
	d = opendir(f->dir);
	assert_non_null(d);
	while ((de = readdir(d)))
		assert_true(de->d_name[0] == '.');
	closedir(d);
	/* Folders so named are not the spool's: at open they are neither loaded nor deleted. */
	spool_free(f->sp);
	f->sp = NULL;
	for (size_t i = 0; i < sizeof(stray) / sizeof(stray[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", f->dir, stray[i]);
		assert_int_equal(mkdir(path, 0700), 0);
	}
	reopen(f);
	assert_int_equal(spool_devices(f->sp, NULL, NULL), 0);
	for (size_t i = 0; i < sizeof(stray) / sizeof(stray[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", f->dir, stray[i]);
		assert_int_equal(access(path, F_OK), 0);
	}
	/* The longest valid id works. */
	assert_int_equal(
	        try_put(f, "0123456789012345678901234567890123456789012345678901234567890123", "x"),
	        0);
	assert_int_equal(
	        segments(f, "0123456789012345678901234567890123456789012345678901234567890123",
	                 names, 4),
	        1);
}

static void
files_are_private(void **state)
{
	struct fixture *f = *state;
	char names[4][32], path[PATH_MAX + 80];
	mode_t old = umask(0);
	struct stat st;
	uint64_t s;

	reopen(f);
	s = put(f, DEV, "secret");
	assert_int_equal(spool_ack(f->sp, dev_of(f, DEV), s), 0);
	put(f, DEV, "secret2");
	assert_int_equal(spool_sync(f->sp), 0);
	umask(old);

	assert_int_equal(stat(f->dir, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0700);
	snprintf(path, sizeof(path), "%s/%s", f->dir, DEV);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0700);
	assert_int_equal(segments(f, DEV, names, 4), 1);
	seg_path(f, DEV, names[0], path, sizeof(path));
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	seg_path(f, DEV, "acked", path, sizeof(path));
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	snprintf(path, sizeof(path), "%s/.lock", f->dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
}

static void
collect(const struct device *dev, uint64_t records, void *data)
{
	char *out = data;

	snprintf(out + strlen(out), 80, "%s:%llu ", dev->id, (unsigned long long)records);
}

static void
forget_removes_a_device(void **state)
{
	struct fixture *f = *state;
	char path[PATH_MAX + 80], all[256];
	struct spool_stats st;
	uint64_t bytes;

	reopen(f);
	put(f, "a", "a1");
	put(f, "a", "a2");
	put(f, "b", "b1");
	assert_int_equal(spool_sync(f->sp), 0);
	reopen(f);
	all[0] = '\0';
	assert_int_equal(spool_devices(f->sp, collect, all), 2);
	assert_string_equal(all, "a:2 b:1 ");
	assert_int_equal(spool_forget(f->sp, dev_of(f, "a")), 0);
	snprintf(path, sizeof(path), "%s/a", f->dir);
	assert_int_equal(access(path, F_OK), -1);
	assert_int_equal(spool_depth(f->sp, dev_of(f, "a"), NULL), 0);
	assert_int_equal(spool_depth(f->sp, dev_of(f, "b"), &bytes), 1);
	spool_stats(f->sp, &st);
	assert_int_equal(st.records, 1);
	assert_int_equal(st.bytes, bytes);
	assert_int_equal(spool_forget(f->sp, dev_of(f, "a")), -ENOENT);
	reopen(f);
	assert_int_equal(read_all(f, "a", all, sizeof(all), NULL), 0);
	assert_int_equal(read_all(f, "b", all, sizeof(all), NULL), 1);
	assert_string_equal(all, "b1");
}

/* The registry removes a device: its records and folder go at once, not at the next start. */
static void
a_removed_device_goes_at_once(void **state)
{
	struct fixture *f = *state;
	struct spool_record r = {.topic = "t", .payload = (const uint8_t *)"x", .len = 1};
	char path[PATH_MAX + 80], all[256];
	struct spool_stats st;
	struct device *held;
	uint64_t bytes;

	reopen(f);
	put(f, "a", "a1");
	put(f, "a", "a2");
	put(f, "b", "b1");
	assert_int_equal(spool_sync(f->sp), 0);
	held = device_ref(dev_of(f, "a"));
	device_remove(f->reg, held);
	assert_null(held->spool);
	snprintf(path, sizeof(path), "%s/a", f->dir);
	assert_int_equal(access(path, F_OK), -1);
	assert_int_equal(spool_depth(f->sp, held, NULL), 0);
	assert_int_equal(spool_depth(f->sp, dev_of(f, "b"), &bytes), 1);
	spool_stats(f->sp, &st);
	assert_int_equal(st.records, 1);
	assert_int_equal(st.bytes, bytes);
	assert_int_equal(spool_devices(f->sp, NULL, NULL), 1);
	/* What still holds it cannot bring it back. */
	assert_int_equal(spool_append(f->sp, held, &r), -ENODEV);
	assert_int_equal(access(path, F_OK), -1);
	device_unref(held);

	/* A device added again under the id starts afresh, and a restart finds only its own. */
	put(f, "a", "a3");
	assert_int_equal(spool_sync(f->sp), 0);
	reopen(f);
	assert_int_equal(read_all(f, "a", all, sizeof(all), NULL), 1);
	assert_string_equal(all, "a3");
	assert_int_equal(read_all(f, "b", all, sizeof(all), NULL), 1);
	assert_string_equal(all, "b1");
}

/*
 * A device removed while the spool was closed (gatewayd down): at the next open its folder is
 * deleted, empty or not, and the others are kept.
 */
static void
open_deletes_the_folders_of_devices_gone(void **state)
{
	struct fixture *f = *state;
	char path[PATH_MAX + 80], all[256];
	struct spool_stats st;

	reopen(f);
	put(f, "kept", "k1");
	put(f, "gone", "g1");
	put(f, "gone", "g2");
	assert_int_equal(spool_sync(f->sp), 0);
	spool_free(f->sp);
	f->sp = NULL;
	device_remove(f->reg, dev_of(f, "gone"));
	snprintf(path, sizeof(path), "%s/gone", f->dir);
	assert_int_equal(access(path, F_OK), 0);
	snprintf(path, sizeof(path), "%s/empty", f->dir);
	assert_int_equal(mkdir(path, 0700), 0);

	reopen(f);
	assert_int_equal(access(path, F_OK), -1);
	snprintf(path, sizeof(path), "%s/gone", f->dir);
	assert_int_equal(access(path, F_OK), -1);
	spool_stats(f->sp, &st);
	assert_int_equal(st.records, 1);
	all[0] = '\0';
	assert_int_equal(spool_devices(f->sp, collect, all), 1);
	assert_string_equal(all, "kept:1 ");
	assert_int_equal(read_all(f, "kept", all, sizeof(all), NULL), 1);
	assert_string_equal(all, "k1");
	/* An id the registry gets again later starts afresh. */
	assert_int_equal(read_all(f, "gone", all, sizeof(all), NULL), 0);
}

/*
 * A segment named at the top of the seq space, by damage or by hand: taken for the newest, its
 * name wrapped the next seq around to below the records stored, and an append then reused a
 * seq and was lost at the next start (found by tests/fuzz/fuzz-spool.c).
 */
static void
names_at_the_top_never_wrap_seqs(void **state)
{
	struct fixture *f = *state;
	char seg[PATH_MAX + 80], top[PATH_MAX + 80], all[256];

	five_closed(f, seg, sizeof(seg));
	/* The last name there can be: its records are read, and no seq is left for appends. */
	seg_path(f, DEV, "fffffffffffffffe.seg", top, sizeof(top));
	assert_int_equal(rename(seg, top), 0);
	reopen(f);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 5);
	assert_int_equal(try_put(f, DEV, "m6"), -EOVERFLOW);
	assert_int_equal(spool_sync(f->sp), 0);
	reopen(f);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 5);
	assert_string_equal(all, "m1,m2,m3,m4,m5");

	/* One past it is no name: the file is left alone, and appends go on from 1. */
	spool_free(f->sp);
	f->sp = NULL;
	strcpy(seg, top);
	seg_path(f, DEV, "ffffffffffffffff.seg", top, sizeof(top));
	assert_int_equal(rename(seg, top), 0);
	reopen(f);
	assert_int_equal(spool_depth(f->sp, dev_of(f, DEV), NULL), 0);
	put(f, DEV, "m6");
	assert_int_equal(spool_sync(f->sp), 0);
	reopen(f);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 1);
	assert_string_equal(all, "m6");
	assert_int_equal(access(top, F_OK), 0);
}

/* An operator's drop: every live record goes, counted; the next append follows in sequence. */
static void
drop_takes_every_live_record(void **state)
{
	struct fixture *f = *state;
	struct spool_stats st;
	char all[256];
	uint64_t a, c, n;

	reopen(f);
	assert_int_equal(spool_drop(f->sp, dev_of(f, DEV), &n), 0);
	assert_int_equal(n, 0);
	a = put(f, DEV, "a");
	put(f, DEV, "b");
	put(f, DEV, "c");
	assert_int_equal(spool_ack(f->sp, dev_of(f, DEV), a), 0);
	assert_int_equal(spool_drop(f->sp, dev_of(f, DEV), &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(spool_depth(f->sp, dev_of(f, DEV), NULL), 0);
	spool_stats(f->sp, &st);
	assert_int_equal(st.dropped_operator, 2);
	assert_int_equal(spool_sync(f->sp), 0);
	reopen(f);
	assert_int_equal(spool_depth(f->sp, dev_of(f, DEV), NULL), 0);
	c = put(f, DEV, "d");
	assert_true(c > a + 2);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 1);
	assert_string_equal(all, "d");
}

/* CRC-32C (Castagnoli), bit by bit: an oracle of its own for the acked file's checksum. */
static uint32_t
crc32c_ref(const uint8_t *p, size_t len)
{
	uint32_t crc = ~0u;

	while (len--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1)));
	}
	return ~crc;
}

static void
le(uint8_t *b, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		b[i] = (uint8_t)(v >> (8 * i));
}

/*
 * Four devices: a checkpoint of four positions takes the batched (syncfs) path. The acked
 * file is made once (two slots), then written in place; a torn write of the newer slot leaves
 * the one before it to count.
 */
static void
acked_positions_are_written_in_place(void **state)
{
	struct fixture *f = *state;
	static const char *const devs[] = {"p0", "p1", "p2", "p3"};
	static const char *const msgs[] = {"m0", "m1", "m2", "m3"};
	char path[PATH_MAX + 80], all[256];
	struct stat made, later;
	uint64_t seq[4][4];

	reopen(f);
	for (int k = 0; k < 4; k++) {
		for (int i = 0; i < 4; i++)
			seq[i][k] = put(f, devs[i], msgs[k]);
	}
	assert_int_equal(spool_sync(f->sp), 0);
	seg_path(f, "p0", "acked", path, sizeof(path));
	for (int k = 0; k < 3; k++) {
		for (int i = 0; i < 4; i++)
			assert_int_equal(spool_ack(f->sp, dev_of(f, devs[i]), seq[i][k]), 0);
		assert_int_equal(spool_sync(f->sp), 0);
		assert_int_equal(stat(path, k == 0 ? &made : &later), 0);
	}
	assert_int_equal(made.st_size, 64);
	assert_int_equal(later.st_size, 64);
	assert_int_equal(later.st_ino, made.st_ino);

	reopen(f);
	assert_int_equal(read_all(f, "p0", all, sizeof(all), NULL), 1);
	assert_string_equal(all, "m3");
	/* Made with generations 1 (bytes 32..63) and 0, then 2 (0..31), 3 (32..63): the newer
	 * slot torn, the position of generation 2 counts. */
	flip(path, 40, 0x01);
	reopen(f);
	assert_int_equal(read_all(f, "p0", all, sizeof(all), NULL), 2);
	assert_string_equal(all, "m2,m3");
	assert_int_equal(read_all(f, "p1", all, sizeof(all), NULL), 1);
}

/* An acked file removed while the spool runs is written whole again, not failed for ever. */
static void
a_removed_acked_file_is_written_again(void **state)
{
	struct fixture *f = *state;
	char path[PATH_MAX + 80], all[256];
	uint64_t a, b;

	reopen(f);
	a = put(f, DEV, "a");
	b = put(f, DEV, "b");
	put(f, DEV, "c");
	assert_int_equal(spool_ack(f->sp, dev_of(f, DEV), a), 0);
	assert_int_equal(spool_sync(f->sp), 0);
	seg_path(f, DEV, "acked", path, sizeof(path));
	assert_int_equal(unlink(path), 0);
	assert_int_equal(spool_ack(f->sp, dev_of(f, DEV), b), 0);
	assert_int_equal(spool_sync(f->sp), 0);
	assert_int_equal(file_size(path), 64);
	reopen(f);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 1);
	assert_string_equal(all, "c");
}

/* A version 1 acked file (one record, replaced by rename) is read, and replaced by version 2. */
static void
version_1_acked_file_is_read(void **state)
{
	struct fixture *f = *state;
	char path[PATH_MAX + 80], all[256];
	uint8_t b[28] = {0xab, 'G', 'S', 'A'};
	uint64_t s1, s2, s3;
	int fd;

	reopen(f);
	s1 = put(f, DEV, "v1");
	s2 = put(f, DEV, "v2");
	s3 = put(f, DEV, "v3");
	assert_int_equal(spool_sync(f->sp), 0);
	spool_free(f->sp);
	f->sp = NULL;
	le(b + 4, 1, 4);
	le(b + 8, s1, 8);
	le(b + 16, s3 + 1, 8);
	le(b + 24, crc32c_ref(b, 24), 4);
	seg_path(f, DEV, "acked", path, sizeof(path));
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, b, sizeof(b)), (ssize_t)sizeof(b));
	close(fd);

	reopen(f);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 2);
	assert_string_equal(all, "v2,v3");
	assert_int_equal(spool_ack(f->sp, dev_of(f, DEV), s2), 0);
	assert_int_equal(spool_sync(f->sp), 0);
	assert_int_equal(file_size(path), 64);
	reopen(f);
	assert_int_equal(read_all(f, DEV, all, sizeof(all), NULL), 1);
	assert_string_equal(all, "v3");
}

/*
 * 5 devices' segments read one after another: with open_files 2 no more than 2 stay open, and
 * with 64 all 5 do (a fleet's devices sending in turn keep theirs, issue 15).
 */
static void
open_segments_are_bounded_by_open_files(void **state)
{
	struct fixture *f = *state;
	char all[64], dev[16];
	int before;

	f->lim.open_files = 2;
	reopen(f);
	for (int i = 0; i < 5; i++) {
		snprintf(dev, sizeof(dev), "dev-%d", i);
		put(f, dev, "x");
	}
	assert_int_equal(spool_sync(f->sp), 0);
	for (size_t want = 2; want <= 5; want += 3) {
		f->lim.open_files = want;
		reopen(f);
		before = open_fds();
		for (int i = 0; i < 5; i++) {
			snprintf(dev, sizeof(dev), "dev-%d", i);
			assert_int_equal(read_all(f, dev, all, sizeof(all), NULL), 1);
			assert_string_equal(all, "x");
		}
		/* Past the bound the clean ones are all closed, so fewer may stay. */
		if (want == 2)
			assert_in_range(open_fds() - before, 1, 2);
		else
			assert_int_equal(open_fds() - before, 5);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(append_read_ack_in_order, setup, teardown),
	        cmocka_unit_test_setup_teardown(reopen_keeps_order_and_acks, setup, teardown),
	        cmocka_unit_test_setup_teardown(segments_roll_over_and_delivered_ones_go, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(truncated_tail_is_cut_and_appends_follow, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(flipped_payload_bit_loses_one_record, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(flipped_length_bits_resync_to_later_records, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(payload_that_looks_like_a_record_is_not_one, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(record_inside_a_torn_ones_length_survives_appends,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(damage_found_while_running_is_skipped, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(full_device_refuses, setup, teardown),
	        cmocka_unit_test_setup_teardown(full_spool_refuses, setup, teardown),
	        cmocka_unit_test_setup_teardown(full_device_drops_its_oldest, setup, teardown),
	        cmocka_unit_test_setup_teardown(full_spool_drops_the_oldest_records, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(old_records_are_dropped_on_read, setup, teardown),
	        cmocka_unit_test_setup_teardown(invalid_device_ids_never_reach_the_spool, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(files_are_private, setup, teardown),
	        cmocka_unit_test_setup_teardown(open_segments_are_bounded_by_open_files, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(forget_removes_a_device, setup, teardown),
	        cmocka_unit_test_setup_teardown(a_removed_device_goes_at_once, setup, teardown),
	        cmocka_unit_test_setup_teardown(open_deletes_the_folders_of_devices_gone, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(names_at_the_top_never_wrap_seqs, setup, teardown),
	        cmocka_unit_test_setup_teardown(acked_positions_are_written_in_place, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(version_1_acked_file_is_read, setup, teardown),
	        cmocka_unit_test_setup_teardown(drop_takes_every_live_record, setup, teardown),
	        cmocka_unit_test_setup_teardown(a_removed_acked_file_is_written_again, setup,
	                                        teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
