/* SPDX-License-Identifier: Apache-2.0 */
#include "spool.h"
#include "atomicfile.h"
#include "device.h"
#include "log.h"
#include "xalloc.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

/*
 * A segment is a sequence of records, format version 1, integers little-endian:
 *
 *    0  4  magic AB 47 53 52
 *    4  1  version (1)
 *    5  1  qos
 *    6  2  topic length (1..SPOOL_TOPIC_MAX, without its NUL)
 *    8  2  content type length (0..SPOOL_CTYPE_MAX, without its NUL)
 *   10  2  zero
 *   12  4  payload length (0..SPOOL_PAYLOAD_MAX)
 *   16  8  seq (from 1)
 *   24  8  stored_at (signed unix seconds)
 *   32  4  CRC-32C of bytes 0..31
 *   36  4  CRC-32C of bytes 0..35 and the body
 *   40     body: topic, NUL, content type, NUL, payload
 *
 * The header has a CRC of its own so that a damaged length is never believed: recovery
 * checks a candidate header in 32 bytes before reading as far as its lengths claim. The NULs
 * are stored so that a record is read into one buffer whose strings can be handed out as they
 * are. CRC-32C (Castagnoli, as in iSCSI and ext4's metadata) rather than zlib's CRC-32: it
 * keeps a higher Hamming distance over longer data (Koopman, "32-Bit Cyclic Redundancy Codes
 * for Internet Applications", DSN 2002).
 */
#define REC_HDR     40
#define REC_VERSION 1
static const uint8_t rec_magic[4] = {0xab, 'G', 'S', 'R'};

/*
 * The acked file. Version 1: magic AB 47 53 41, version u32 1, acked u64, next seq u64, CRC-32C
 * of 0..23 (28 bytes), replaced by rename at every checkpoint. Version 2: two slots of 32
 * bytes, each magic, version u32 2, acked u64, next seq u64, generation u32, CRC-32C of 0..27;
 * the valid slot of the higher generation counts. A checkpoint writes the other slot in place
 * (generation + 1): no file is created or renamed, which with 1,000 devices was the largest
 * part of a checkpoint (ext4 makes an inode for each new name), and a write torn by a crash
 * leaves the slot before it to count. Version 1 files are read, and replaced by a version 2
 * file (by rename) at their first checkpoint.
 */
#define ACK_FILE   "acked"
#define ACK_TMP    ".acked.tmp" /* atomic_stage()'s name for it */
#define ACK_LEN    28
#define ACK_SLOT   32
#define ACK_V2_LEN (2 * ACK_SLOT)
static const uint8_t ack_magic[4] = {0xab, 'G', 'S', 'A'};

/*
 * Seqs run from 1 to SEQ_END - 1. SEQ_END is never a seq, a segment's name or an acknowledged
 * position: one found on disk is damage, or a file renamed by hand. Taken as real, it wrapped
 * the next seq around to below the records still stored, and records appended then were lost
 * at the next start. spool_append() refuses to reach it (after 2^64 - 2 appends).
 */
#define SEQ_END UINT64_MAX

#define SEG_SUFFIX   ".seg"
#define SEG_NAME_LEN 20 /* 16 hex digits and ".seg" */
#define LOCK_FILE    ".lock"

/*
 * Segment files are kept open between calls, up to lim.open_files. Dirty ones stay open until
 * spool_sync() (an fsync through another descriptor might not report a writeback error that
 * happened before it was opened); clean ones are closed when there are more than that.
 */
/* Segments are read in pieces of this size, so that one unreadable sector costs only these. */
#define READ_CHUNK 65536
/* New damage found while reading makes the segment be scanned again; a disk that keeps
 * changing its answers is given up on after this many scans in one call. */
#define RESCAN_MAX 8
/* seg_next(): the segment was scanned again; the caller starts over. */
#define RESCANNED 1

struct hole {
	uint64_t off, len;
	uint64_t records; /* records lost in it as far as their headers tell, at least 1 */
};

struct seg {
	uint64_t name;     /* seq of its first record when it was created; orders the segments */
	uint64_t last_seq; /* of its last good record; 0 when it has none */
	uint64_t size;     /* bytes that count; appends go here */
	uint64_t nrec;     /* good records */
	/* The first live record: its offset (size when none is live), how many good records
	 * precede it, its stored_at. */
	uint64_t head_off, head_idx;
	int64_t head_at;
	struct hole *holes; /* damaged ranges, in order; reads skip them */
	size_t nholes;
	uint64_t hole_bytes, hole_records;
	int fd;
	bool dirty;  /* written since the last spool_sync() */
	bool sealed; /* takes no more appends: full, or a write or an fsync failed */
};

/* A device's spool, on its dev->spool. */
struct device_spool {
	struct device *dev; /* whose it is: the slot is cleared before the device goes */
	/* dev->id; at spool_open() also the name of a folder whose device is no longer there,
	 * loaded only to count what is deleted with it (dev NULL then). */
	const char *id;
	int dirfd;
	struct seg *segs; /* in seq order */
	size_t nsegs, cap;
	uint64_t next_seq;
	uint64_t acked;       /* every seq up to this one is delivered or dropped */
	uint64_t acked_saved; /* what the acked file says */
	bool dir_dirty;       /* files created or removed since the folder's last fsync */
	bool full_logged;
	bool touched;            /* on the spool's touched list */
	bool ack_inplace;        /* its acked file has two slots: written in place */
	uint32_t ack_gen;        /* the generation of its acked file's slot that counts */
	uint64_t records, bytes; /* live */
	/* Where the record after the last one spool_read() returned starts: segment (0: none),
	 * offset, good records before it in the segment, seq of the record returned. */
	uint64_t cur_name, cur_off, cur_idx, cur_after;
};

struct spool {
	char *dir;
	int dirfd, lockfd;
	struct spool_limits lim;
	struct device_registry *devices; /* whose devices it holds data of */
	/*
	 * Every device_spool, for what goes over them all: the group commit, the bound on open
	 * files, the oldest record, the list of devices. A device's own is found through
	 * dev->spool, never searched for: in no order but spool_open()'s (by id) and then that
	 * of first appends.
	 */
	struct device_spool **devs;
	size_t ndevs, cap;
	/*
	 * The devices with something for the next sync (a segment or folder written, a position
	 * to save): a sync walks these, not every device, so that its cost follows the devices
	 * that sent since the last one, not the fleet (issue 15).
	 */
	struct device_spool **touched;
	size_t ntouched, touched_cap;
	bool dir_dirty;
	bool full_logged;
	unsigned nopen;
	struct spool_stats st;
	int64_t (*now)(void);
	uint8_t *wbuf; /* the record being appended */
	size_t wcap;
	/*
	 * A sync of appends failed since spool_sync_appends() last said so: it says so next, as
	 * the failed records' sensors may be waiting on that call (a checkpoint can run first).
	 */
	int append_err;
	/* syncfs(2) reports writeback errors only since Linux 5.8: before, an fsync per file. */
	bool use_syncfs;
};

/* A record header as read. */
struct rhdr {
	uint8_t raw[REC_HDR];
	uint8_t qos;
	uint16_t tlen, clen;
	uint32_t plen;
	uint64_t seq;
	int64_t at;
	uint32_t crc;
	uint64_t total;
};

struct live {
	uint64_t records, bytes;
};

/* ---- encoding ---- */

static uint32_t crc_table[256];

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

/* CRC-32C of data continuing crc (0 to start). */
static uint32_t
crc32c(uint32_t crc, const void *data, size_t len)
{
	const uint8_t *p = data;

	crc = ~crc;
	while (len--)
		crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

static void
put16(uint8_t *b, uint16_t v)
{
	b[0] = (uint8_t)v;
	b[1] = (uint8_t)(v >> 8);
}

static void
put32(uint8_t *b, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		b[i] = (uint8_t)(v >> (8 * i));
}

static void
put64(uint8_t *b, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t
get16(const uint8_t *b)
{
	return (uint16_t)(b[0] | b[1] << 8);
}

static uint32_t
get32(const uint8_t *b)
{
	return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint64_t
get64(const uint8_t *b)
{
	return (uint64_t)get32(b) | (uint64_t)get32(b + 4) << 32;
}

/* Checks the 40 bytes at b as a header: magic, version, header CRC, sane fields. */
static bool
hdr_decode(const uint8_t *b, struct rhdr *h)
{
	if (memcmp(b, rec_magic, sizeof(rec_magic)) || b[4] != REC_VERSION)
		return false;
	if (get32(b + 32) != crc32c(0, b, 32))
		return false;
	h->qos = b[5];
	h->tlen = get16(b + 6);
	h->clen = get16(b + 8);
	h->plen = get32(b + 12);
	h->seq = get64(b + 16);
	h->at = (int64_t)get64(b + 24);
	h->crc = get32(b + 36);
	if (h->qos > 1 || h->tlen == 0 || h->clen > SPOOL_CTYPE_MAX || get16(b + 10) != 0 ||
	    h->plen > SPOOL_PAYLOAD_MAX || h->seq == 0 || h->seq == SEQ_END)
		return false;
	h->total = REC_HDR + (uint64_t)h->tlen + 1 + h->clen + 1 + h->plen;
	memcpy(h->raw, b, REC_HDR);
	return true;
}

/* Checks a decoded header's body: the record CRC and the NULs after the strings. */
static bool
body_ok(const struct rhdr *h, const uint8_t *body)
{
	size_t blen = h->total - REC_HDR;

	if (crc32c(crc32c(0, h->raw, 36), body, blen) != h->crc)
		return false;
	return body[h->tlen] == 0 && body[h->tlen + 1 + h->clen] == 0 &&
	       !memchr(body, 0, h->tlen) && !memchr(body + h->tlen + 1, 0, h->clen);
}

static void
seg_name(char *buf, uint64_t name)
{
	snprintf(buf, SEG_NAME_LEN + 1, "%016" PRIx64 SEG_SUFFIX, name);
}

static bool
seg_parse_name(const char *s, uint64_t *name)
{
	uint64_t v = 0;

	if (strlen(s) != SEG_NAME_LEN || strcmp(s + 16, SEG_SUFFIX))
		return false;
	for (int i = 0; i < 16; i++) {
		int c = s[i];

		if (c >= '0' && c <= '9')
			v = v << 4 | (uint64_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v = v << 4 | (uint64_t)(c - 'a' + 10);
		else
			return false;
	}
	*name = v;
	return v != 0 && v != SEQ_END;
}

static int64_t
clock_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec;
}

/* ---- bookkeeping ---- */

static uint64_t
holes_before(const struct seg *s, uint64_t x)
{
	uint64_t n = 0;

	for (size_t i = 0; i < s->nholes && s->holes[i].off < x; i++) {
		const struct hole *h = &s->holes[i];

		n += h->off + h->len <= x ? h->len : x - h->off;
	}
	return n;
}

/* Live records and bytes of s: the good ones from its head on. */
static struct live
seg_live(const struct seg *s)
{
	return (struct live){
	        .records = s->nrec - s->head_idx,
	        .bytes = (s->size - s->hole_bytes) - (s->head_off - holes_before(s, s->head_off)),
	};
}

/* Carries the change of s's live records and bytes since before to its device and the spool. */
static void
account(struct spool *sp, struct device_spool *d, const struct seg *s, struct live before)
{
	struct live now = seg_live(s);

	/* Unsigned wrap-around makes a decrease come out right. */
	d->records += now.records - before.records;
	d->bytes += now.bytes - before.bytes;
	sp->st.records += now.records - before.records;
	sp->st.bytes += now.bytes - before.bytes;
}

static uint64_t
skip_holes(const struct seg *s, uint64_t off)
{
	for (size_t i = 0; i < s->nholes; i++) {
		if (off >= s->holes[i].off && off < s->holes[i].off + s->holes[i].len)
			off = s->holes[i].off + s->holes[i].len;
	}
	return off;
}

static void
seg_close(struct spool *sp, struct seg *s)
{
	if (s->fd >= 0) {
		close(s->fd);
		s->fd = -1;
		sp->nopen--;
	}
}

static void
close_clean(struct spool *sp)
{
	for (size_t i = 0; i < sp->ndevs; i++) {
		for (size_t j = 0; j < sp->devs[i]->nsegs; j++) {
			if (!sp->devs[i]->segs[j].dirty)
				seg_close(sp, &sp->devs[i]->segs[j]);
		}
	}
}

static int
seg_fd(struct spool *sp, struct device_spool *d, struct seg *s)
{
	char name[SEG_NAME_LEN + 1];
	int r;

	if (s->fd >= 0)
		return s->fd;
	if (sp->nopen >= sp->lim.open_files)
		close_clean(sp);
	seg_name(name, s->name);
	s->fd = openat(d->dirfd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	if (s->fd < 0) {
		r = -errno;
		log_warn("spool: %s/%s/%s", sp->dir, d->id, name);
		return r;
	}
	sp->nopen++;
	return s->fd;
}

static void touch(struct spool *sp, struct device_spool *d);

/* Removes segment si from d's index, and its file if delete_file. */
static void
seg_remove(struct spool *sp, struct device_spool *d, size_t si, bool delete_file)
{
	struct seg *s = &d->segs[si];
	char name[SEG_NAME_LEN + 1];

	seg_name(name, s->name);
	seg_close(sp, s);
	if (delete_file) {
		if (unlinkat(d->dirfd, name, 0) < 0 && errno != ENOENT)
			log_warn("spool: remove %s/%s/%s", sp->dir, d->id, name);
		d->dir_dirty = true;
		touch(sp, d);
	}
	if (d->cur_name == s->name)
		d->cur_name = 0;
	free(s->holes);
	memmove(s, s + 1, (d->nsegs - si - 1) * sizeof(*s));
	d->nsegs--;
}

/*
 * Makes room for one more element in *arr, n used of *cap (each size bytes): the capacity
 * doubles, starting at first.
 */
static void
room_for_one(void **arr, size_t n, size_t *cap, size_t first, size_t size)
{
	size_t grown = *cap ? 2 * *cap : first;

	if (n < *cap)
		return;
	*arr = xreallocarray(*arr, grown, size);
	*cap = grown;
}

/* d has something for the next sync: it goes on the touched list, once. */
static void
touch(struct spool *sp, struct device_spool *d)
{
	if (d->touched)
		return;
	room_for_one((void **)&sp->touched, sp->ntouched, &sp->touched_cap, 8,
	             sizeof(*sp->touched));
	sp->touched[sp->ntouched++] = d;
	d->touched = true;
}

static bool deletable(const struct spool *sp, const struct device_spool *d, size_t si);

/* A sync would write or delete something of d. */
static bool
needs_sync(const struct spool *sp, const struct device_spool *d)
{
	if (d->dir_dirty || d->acked != d->acked_saved)
		return true;
	for (size_t si = 0; si < d->nsegs; si++) {
		if (d->segs[si].dirty || deletable(sp, d, si))
			return true;
	}
	return false;
}

/* After a sync: what it left clean goes off the touched list; with gone, d whatever it is. */
static void
untouch(struct spool *sp, const struct device_spool *gone)
{
	size_t kept = 0;

	for (size_t i = 0; i < sp->ntouched; i++) {
		struct device_spool *d = sp->touched[i];

		if (gone ? d != gone : needs_sync(sp, d))
			sp->touched[kept++] = d;
		else
			d->touched = false;
	}
	sp->ntouched = kept;
}

static struct seg *
seg_add(struct device_spool *d, uint64_t name)
{
	struct seg *s;

	room_for_one((void **)&d->segs, d->nsegs, &d->cap, 4, sizeof(*d->segs));
	s = &d->segs[d->nsegs++];
	*s = (struct seg){.name = name, .fd = -1};
	return s;
}

/* The highest seq before segment si. */
static uint64_t
prev_seq(const struct device_spool *d, size_t si)
{
	while (si-- > 0) {
		if (d->segs[si].nrec)
			return d->segs[si].last_seq;
	}
	return 0;
}

/* ---- scanning: recovery of damaged segments ---- */

struct scan {
	uint64_t prev_seq, acked, want; /* in */
	uint64_t nrec, last_seq;
	bool head_found;
	uint64_t head_off, head_idx;
	int64_t head_at;
	uint64_t want_at; /* the first good record at or after want */
	struct hole *holes;
	size_t nholes, cap;
	uint64_t hole_bytes, hole_records;
};

/* Whether a whole good record, following seq last, starts at off. */
static bool
rec_at(const uint8_t *b, size_t len, size_t off, uint64_t last, struct rhdr *h)
{
	if (len - off < REC_HDR || !hdr_decode(b + off, h))
		return false;
	if (h->total > len - off || h->seq <= last)
		return false;
	return body_ok(h, b + off + REC_HDR);
}

/*
 * off starts damage: returns where the next good record starts (len if none), and in *seen
 * how many headers that check out lie in between, i.e. how many records were lost.
 */
static size_t
resync(const uint8_t *b, size_t len, size_t off, uint64_t last, uint64_t *seen)
{
	struct rhdr h, next;

	*seen = 0;
	if (len - off >= REC_HDR && hdr_decode(b + off, &h)) {
		/* The body is damaged but the length is covered by the header's CRC: try where it
		 * says the next record starts before searching byte by byte, so that a payload
		 * that looks like a record is not taken for one. */
		*seen = 1;
		if (h.total < len - off && rec_at(b, len, off + h.total, last, &next))
			return off + h.total;
	}
	for (size_t q = off + 1; q + REC_HDR <= len; q++) {
		const uint8_t *m = memmem(b + q, len - q, rec_magic, sizeof(rec_magic));

		if (!m)
			break;
		q = (size_t)(m - b);
		if (len - q < REC_HDR || !hdr_decode(b + q, &h))
			continue;
		if (h.total <= len - q && h.seq > last && body_ok(&h, b + q + REC_HDR))
			return q;
		(*seen)++;
	}
	return len;
}

static void
scan_buf(const uint8_t *b, size_t len, struct scan *sc)
{
	uint64_t last = sc->prev_seq;
	size_t off = 0;
	struct rhdr h;

	sc->want_at = len;
	while (off < len) {
		uint64_t seen;
		size_t next;

		if (rec_at(b, len, off, last, &h)) {
			if (!sc->head_found && h.seq > sc->acked) {
				sc->head_found = true;
				sc->head_off = off;
				sc->head_idx = sc->nrec;
				sc->head_at = h.at;
			}
			if (sc->want_at == len && off >= sc->want)
				sc->want_at = off;
			sc->nrec++;
			last = h.seq;
			off += h.total;
			continue;
		}
		next = resync(b, len, off, last, &seen);
		room_for_one((void **)&sc->holes, sc->nholes, &sc->cap, 2, sizeof(*sc->holes));
		sc->holes[sc->nholes++] = (struct hole){
		        .off = off,
		        .len = next - off,
		        .records = seen ? seen : 1,
		};
		sc->hole_bytes += next - off;
		sc->hole_records += seen ? seen : 1;
		off = next;
	}
	sc->last_seq = sc->nrec ? last : 0;
}

/*
 * Reads len bytes of fd into a new buffer. Pieces that cannot be read (EIO on a failing SD
 * card) are left as zeros, which the scan then counts as damage: the rest stays usable.
 * -EFBIG if the file is too large to be held in memory: len is its size on disk, which a
 * damaged file system or a stray file can make anything, so this is not xmalloc()'s case
 * (the daemon would abort at every start); the segment is skipped instead.
 */
static int
read_all(int fd, uint64_t len, const char *what, uint8_t **out)
{
	uint8_t *b = len < SIZE_MAX ? malloc(len ? len : 1) : NULL;
	bool warned = false;

	if (!b)
		return -EFBIG;
	for (uint64_t off = 0; off < len;) {
		size_t n = len - off < READ_CHUNK ? (size_t)(len - off) : READ_CHUNK;
		ssize_t got = pread(fd, b + off, n, (off_t)off);

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			if (!warned && got < 0)
				log_warn("spool: read %s at byte %" PRIu64, what, off);
			warned = true;
			memset(b + off, 0, n);
			got = (ssize_t)n;
		}
		off += (uint64_t)got;
	}
	*out = b;
	return 0;
}

/*
 * Reads segment si whole and checks every record: its good records, holes and head are
 * replaced by what the file holds now; damage not seen before is counted and logged.
 * cut_tail (spool_open(), newest segment): damage running to the end is cut off, so that
 * appends follow good data. *want_at: the first good record at or after want.
 */
static int
seg_check(struct spool *sp, struct device_spool *d, size_t si, bool cut_tail, uint64_t want,
          uint64_t *want_at)
{
	struct seg *s = &d->segs[si];
	struct scan sc = {.prev_seq = prev_seq(d, si), .acked = d->acked, .want = want};
	char name[SEG_NAME_LEN + 1], what[PATH_MAX];
	uint64_t first_off = 0, new_bytes, new_records;
	struct live before = seg_live(s);
	bool cut = false;
	uint8_t *b;
	int fd, r;

	seg_name(name, s->name);
	snprintf(what, sizeof(what), "%s/%s/%s", sp->dir, d->id, name);
	fd = seg_fd(sp, d, s);
	if (fd < 0)
		return fd;
	r = read_all(fd, s->size, what, &b);
	if (r < 0)
		return r;
	scan_buf(b, s->size, &sc);
	free(b);
	if (sc.nholes)
		first_off = sc.holes[0].off;
	new_bytes = sc.hole_bytes - s->hole_bytes;
	new_records = sc.hole_records > s->hole_records ? sc.hole_records - s->hole_records : 0;
	if (cut_tail && sc.nholes &&
	    sc.holes[sc.nholes - 1].off + sc.holes[sc.nholes - 1].len == s->size) {
		struct hole *t = &sc.holes[sc.nholes - 1];

		if (ftruncate(fd, (off_t)t->off) == 0) {
			s->size = t->off;
			sc.hole_bytes -= t->len;
			sc.hole_records -= t->records;
			sc.nholes--;
			s->dirty = true;
			touch(sp, d);
			cut = true;
		} else {
			log_warn("spool: cut off the damaged tail of %s", what);
		}
	}
	/*
	 * Appends follow good data only. After damage that stays (a tail that could not be cut
	 * off, a hole in the middle), a damaged header's length may claim bytes past the end;
	 * a record appended there would, once more follows it, lie inside that claim, and
	 * resync() jumps over the claim when a good record starts where it ends: the record
	 * read before would be lost at the next scan. The next append starts a new segment.
	 */
	if (sc.nholes)
		s->sealed = true;
	free(s->holes);
	s->holes = sc.holes;
	s->nholes = sc.nholes;
	s->hole_bytes = sc.hole_bytes;
	s->hole_records = sc.hole_records;
	s->nrec = sc.nrec;
	s->last_seq = sc.last_seq;
	if (sc.head_found) {
		s->head_off = sc.head_off;
		s->head_idx = sc.head_idx;
		s->head_at = sc.head_at;
	} else {
		s->head_off = s->size;
		s->head_idx = s->nrec;
	}
	account(sp, d, s, before);
	d->cur_name = 0;
	*want_at = sc.want_at < s->size ? sc.want_at : s->size;
	if (new_bytes) {
		sp->st.corrupt_bytes += new_bytes;
		sp->st.corrupt_records += new_records;
		log_warnx("spool: device %s: segment %s: %" PRIu64
		          " bytes damaged, the first at byte %" PRIu64
		          " (%zu region(s), about %" PRIu64 " record(s) lost)%s",
		          d->id, name, new_bytes, first_off, sc.nholes + cut, new_records,
		          cut ? "; the torn tail was cut off" : "");
	}
	return 0;
}

/* ---- navigation ---- */

/*
 * The good record of segment si at *off or after it (off is a record boundary or in a known
 * hole): moves *off to it and decodes its header into h. -ENOENT past the last one. Damage
 * not known yet makes the segment be scanned again (counted, logged) and RESCANNED be
 * returned: the segment's head and counts may have changed, the caller starts over.
 */
static int
seg_next(struct spool *sp, struct device_spool *d, size_t si, uint64_t *off, struct rhdr *h)
{
	struct seg *s = &d->segs[si];
	uint8_t b[REC_HDR];
	ssize_t n;
	int fd, r;

	*off = skip_holes(s, *off);
	if (*off >= s->size)
		return -ENOENT;
	fd = seg_fd(sp, d, s);
	if (fd < 0)
		return fd;
	n = pread(fd, b, REC_HDR, (off_t)*off);
	if (n < 0 && errno != EIO) {
		r = -errno;
		log_warn("spool: device %s: read", d->id);
		return r;
	}
	if (n == REC_HDR && hdr_decode(b, h) && h->total <= s->size - *off)
		return 0;
	r = seg_check(sp, d, si, false, *off, off);
	return r < 0 ? r : RESCANNED;
}

/* Reads the body of the record h at off into a new buffer, NUL-terminated. */
static int
read_body(struct spool *sp, struct device_spool *d, size_t si, uint64_t *off, const struct rhdr *h,
          uint8_t **out)
{
	size_t blen = h->total - REC_HDR;
	uint8_t *b = xmalloc(blen + 1);
	ssize_t n;
	int fd, r;

	fd = seg_fd(sp, d, &d->segs[si]);
	if (fd < 0) {
		free(b);
		return fd;
	}
	n = pread(fd, b, blen, (off_t)(*off + REC_HDR));
	if (n == (ssize_t)blen && body_ok(h, b)) {
		b[blen] = 0;
		*out = b;
		return 0;
	}
	free(b);
	if (n < 0 && errno != EIO) {
		r = -errno;
		log_warn("spool: device %s: read", d->id);
		return r;
	}
	r = seg_check(sp, d, si, false, *off, off);
	return r < 0 ? r : RESCANNED;
}

/*
 * Makes every record of d up to seq no longer live (delivered or dropped); adds how many
 * live records that took to *count. Segments emptied so are deleted by spool_sync().
 */
static int
advance(struct spool *sp, struct device_spool *d, uint64_t seq, uint64_t *count)
{
	int rescans = 0;

	if (seq >= d->next_seq)
		seq = d->next_seq - 1;
	/* Its position moves: the next checkpoint saves it (even if a read below fails). */
	if (seq > d->acked)
		touch(sp, d);
again:
	for (size_t si = 0; si < d->nsegs && seq > d->acked; si++) {
		struct seg *s = &d->segs[si];
		struct live before = seg_live(s);
		uint64_t off, idx;
		struct rhdr h;

		if (s->head_idx == s->nrec)
			continue;
		if (s->last_seq <= seq) {
			*count += s->nrec - s->head_idx;
			s->head_off = s->size;
			s->head_idx = s->nrec;
			account(sp, d, s, before);
			d->acked = s->last_seq;
			continue;
		}
		off = s->head_off;
		idx = s->head_idx;
		/* Acknowledging what was just read: no need to walk from the head. */
		if (d->cur_name == s->name && d->cur_after <= seq && d->cur_off > off) {
			off = d->cur_off;
			idx = d->cur_idx;
		}
		for (;;) {
			int r = seg_next(sp, d, si, &off, &h);

			if (r == RESCANNED) {
				if (++rescans > RESCAN_MAX)
					return -EIO;
				goto again;
			}
			if (r < 0)
				return r == -ENOENT ? -EIO : r;
			if (h.seq > seq)
				break;
			off += h.total;
			idx++;
		}
		*count += idx - s->head_idx;
		s->head_off = off;
		s->head_idx = idx;
		s->head_at = h.at;
		account(sp, d, s, before);
		break;
	}
	if (seq > d->acked)
		d->acked = seq;
	return 0;
}

/* Drops d's oldest live record. */
static int
drop_head(struct spool *sp, struct device_spool *d, uint64_t *count)
{
	for (int rescans = 0; rescans <= RESCAN_MAX; rescans++) {
		for (size_t si = 0; si < d->nsegs; si++) {
			struct seg *s = &d->segs[si];
			uint64_t off = s->head_off;
			struct rhdr h;
			int r;

			if (s->head_idx == s->nrec)
				continue;
			r = seg_next(sp, d, si, &off, &h);
			if (r == RESCANNED)
				break;
			if (r < 0)
				return r == -ENOENT ? -EIO : r;
			return advance(sp, d, h.seq, count);
		}
		if (!d->records)
			return -ENOENT;
	}
	return -EIO;
}

/* ---- devices ---- */

static void
dev_free(struct spool *sp, struct device_spool *d)
{
	if (!d)
		return;
	if (d->touched)
		untouch(sp, d);
	if (d->dev)
		d->dev->spool = NULL;
	for (size_t i = 0; i < d->nsegs; i++) {
		seg_close(sp, &d->segs[i]);
		free(d->segs[i].holes);
	}
	free(d->segs);
	if (d->dirfd >= 0)
		close(d->dirfd);
	free(d);
}

/* Hangs d on dev and lists it. */
static void
dev_attach(struct spool *sp, struct device_spool *d, struct device *dev)
{
	/* One spool per registry: a second one's state would be lost here. */
	assert(!dev->spool);
	d->dev = dev;
	d->id = dev->id;
	dev->spool = d;
	room_for_one((void **)&sp->devs, sp->ndevs, &sp->cap, 8, sizeof(*sp->devs));
	sp->devs[sp->ndevs++] = d;
}

/*
 * Takes d off its device and out of the list, its records out of the totals, and frees it.
 * The list is walked for it: a removal is rare, and the order of the rest stays.
 */
static void
dev_drop(struct spool *sp, struct device_spool *d)
{
	size_t i = 0;

	while (sp->devs[i] != d)
		i++;
	memmove(&sp->devs[i], &sp->devs[i + 1], (sp->ndevs - i - 1) * sizeof(*sp->devs));
	sp->ndevs--;
	sp->st.records -= d->records;
	sp->st.bytes -= d->bytes;
	dev_free(sp, d);
}

static void
load_acked(struct spool *sp, struct device_spool *d, uint64_t *next)
{
	uint8_t b[ACK_V2_LEN + 1];
	const uint8_t *use = NULL;
	ssize_t n;
	int fd;

	fd = openat(d->dirfd, ACK_FILE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		if (errno != ENOENT)
			log_warn("spool: %s/%s/" ACK_FILE, sp->dir, d->id);
		return;
	}
	n = read(fd, b, sizeof(b));
	close(fd);
	if (n == ACK_LEN && memcmp(b, ack_magic, sizeof(ack_magic)) == 0 && get32(b + 4) == 1 &&
	    get32(b + 24) == crc32c(0, b, 24)) {
		use = b;
	} else if (n == ACK_V2_LEN) {
		for (int i = 0; i < 2; i++) {
			const uint8_t *slot = b + i * ACK_SLOT;

			if (memcmp(slot, ack_magic, sizeof(ack_magic)) || get32(slot + 4) != 2 ||
			    get32(slot + 28) != crc32c(0, slot, 28))
				continue;
			if (!use || get32(slot + 24) > get32(use + 24))
				use = slot;
		}
	}
	if (!use || get64(use + 8) == SEQ_END) {
		log_warnx("spool: %s/%s/" ACK_FILE " is damaged: the device's records still on "
		          "disk will be sent again, delivered or not",
		          sp->dir, d->id);
		return;
	}
	d->ack_inplace = get32(use + 4) == 2;
	d->ack_gen = d->ack_inplace ? get32(use + 24) : 0;
	d->acked = d->acked_saved = get64(use + 8);
	*next = get64(use + 16);
}

/* The folder's path, for messages. */
static void
dev_path(const struct spool *sp, const struct device_spool *d, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s", sp->dir, d->id);
}

/* One slot of a version 2 acked file: d's position now, as generation gen. */
static void
ack_slot(const struct device_spool *d, uint32_t gen, uint8_t b[ACK_SLOT])
{
	memcpy(b, ack_magic, sizeof(ack_magic));
	put32(b + 4, 2);
	put64(b + 8, d->acked);
	put64(b + 16, d->next_seq);
	put32(b + 24, gen);
	put32(b + 28, crc32c(0, b, 28));
}

/*
 * Writes d's position: into the older slot of its acked file, in place (returns 0), or, with
 * no version 2 file yet, a new file aside for ack_install() (returns 1). fsync'd if sync, else
 * by the caller's syncfs; ack_done() or ack_install() once that succeeded.
 */
static int
ack_write(struct spool *sp, struct device_spool *d, bool sync)
{
	char path[PATH_MAX];
	uint8_t b[ACK_V2_LEN];
	uint32_t gen = d->ack_gen + 1;
	int fd, r = 0;

	dev_path(sp, d, path, sizeof(path));
	if (!d->ack_inplace) {
		/* Both slots whole: the next write in place goes to the one of generation gen - 1.
		 */
		ack_slot(d, gen, b + (gen % 2) * ACK_SLOT);
		ack_slot(d, gen - 1, b + ((gen - 1) % 2) * ACK_SLOT);
		r = atomic_stage(d->dirfd, path, ACK_FILE, b, sizeof(b), 0600, sync);
		return r < 0 ? r : 1;
	}
	ack_slot(d, gen, b);
	fd = openat(d->dirfd, ACK_FILE, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT) {
		/* Removed by hand: written whole again, aside, as a first one is. */
		d->ack_inplace = false;
		return ack_write(sp, d, sync);
	}
	if (fd < 0 || pwrite(fd, b, ACK_SLOT, (off_t)(gen % 2) * ACK_SLOT) != ACK_SLOT ||
	    (sync && fsync(fd) < 0)) {
		r = errno ? -errno : -EIO;
		log_warn("spool: %s/" ACK_FILE, path);
	}
	if (fd >= 0)
		close(fd);
	return r;
}

/*
 * The position ack_write() wrote in place is on disk. (Until then a failed write is tried
 * again in the same slot: the other one holds the position that counts.)
 */
static void
ack_done(struct device_spool *d)
{
	d->ack_gen++;
	d->acked_saved = d->acked;
}

/* Puts the position written aside, durable by now, in place; the folder is then to be synced. */
static int
ack_install(struct spool *sp, struct device_spool *d)
{
	char path[PATH_MAX];
	int r;

	dev_path(sp, d, path, sizeof(path));
	r = atomic_install(d->dirfd, path, ACK_FILE);
	if (r < 0)
		return r;
	ack_done(d);
	d->ack_inplace = true;
	d->dir_dirty = true;
	return 0;
}

static int
save_acked(struct spool *sp, struct device_spool *d)
{
	int r = ack_write(sp, d, true);

	if (r == 0)
		ack_done(d);
	return r == 1 ? ack_install(sp, d) : r;
}

static int
seg_order(const void *a, const void *b)
{
	uint64_t x = ((const struct seg *)a)->name, y = ((const struct seg *)b)->name;

	return x < y ? -1 : x > y;
}

/*
 * Loads device id's folder: its acked file and every segment, checked. -errno if the folder
 * cannot be read. *out keeps id (it is not copied) and is on no device and in no list yet.
 */
static int
dev_load(struct spool *sp, const char *id, struct device_spool **out)
{
	struct device_spool *d = xcalloc(1, sizeof(*d));
	uint64_t next = 0;
	bool synced = false;
	struct dirent *de;
	DIR *dir;
	int fd, r = 0;

	d->id = id;
	d->dirfd = openat(sp->dirfd, id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (d->dirfd < 0) {
		r = -errno;
		log_warn("spool: %s/%s: skipped", sp->dir, id);
		goto fail;
	}
	load_acked(sp, d, &next);
	fd = dup(d->dirfd);
	dir = fd >= 0 ? fdopendir(fd) : NULL;
	if (!dir) {
		r = -errno;
		log_warn("spool: %s/%s: skipped", sp->dir, id);
		if (fd >= 0)
			close(fd);
		goto fail;
	}
	while ((de = readdir(dir))) {
		uint64_t name;

		if (strcmp(de->d_name, ACK_TMP) == 0) {
			/* A crash during save_acked(): the acked file is the old one, whole. */
			atomic_discard(d->dirfd, ACK_FILE);
			continue;
		}
		if (!seg_parse_name(de->d_name, &name))
			continue;
		seg_add(d, name);
		if (name >= next)
			next = name + 1;
	}
	closedir(dir);
	if (d->nsegs > 1)
		qsort(d->segs, d->nsegs, sizeof(*d->segs), seg_order);
	for (size_t si = 0; si < d->nsegs; si++) {
		struct seg *s = &d->segs[si];
		uint64_t unused;
		struct stat st;

		fd = seg_fd(sp, d, s);
		if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
			/* Left on disk as it is, out of the index. */
			if (fd >= 0)
				log_warnx("spool: %s/%s: segment %016" PRIx64 SEG_SUFFIX
				          " is not a regular file; skipped",
				          sp->dir, id, s->name);
			seg_remove(sp, d, si--, false);
			continue;
		}
		s->size = s->head_off = (uint64_t)st.st_size;
		/* Only the newest takes appends; if it goes, the next append starts a new one. */
		s->sealed = si != d->nsegs - 1;
		r = seg_check(sp, d, si, si == d->nsegs - 1, 0, &unused);
		if (r < 0) {
			/* E.g. too large to read (-EFBIG): the rest of the device still starts. */
			errno = -r;
			log_warn("spool: %s/%s: segment %016" PRIx64 SEG_SUFFIX " skipped", sp->dir,
			         id, s->name);
			seg_remove(sp, d, si--, false);
			r = 0;
			continue;
		}
		if (s->nrec && s->last_seq >= next)
			next = s->last_seq + 1;
		if (!s->dirty)
			seg_close(sp, s);
	}
	/* Wholly delivered, or nothing good left in it. The acked file that says so is made
	 * durable first (it may be from before a restart without a sync), so that deleting
	 * cannot make a seq be used twice. */
	for (size_t si = 0; si < d->nsegs; si++) {
		if (d->segs[si].head_idx != d->segs[si].nrec)
			continue;
		if (!synced && fsync(d->dirfd) < 0) {
			log_warn("spool: fsync %s/%s", sp->dir, id);
			break;
		}
		synced = true;
		seg_remove(sp, d, si--, true);
	}
	d->next_seq = next > d->acked + 1 ? next : d->acked + 1;
	*out = d;
	return 0;
fail:
	sp->st.records -= d->records;
	sp->st.bytes -= d->bytes;
	dev_free(sp, d);
	return r;
}

/* The device's folder, made if missing (an existing one, e.g. unreadable at open, is loaded). */
static int
dev_create(struct spool *sp, struct device *dev, struct device_spool **out)
{
	struct device_spool *d;
	int r;

	if (mkdirat(sp->dirfd, dev->id, 0700) == 0) {
		sp->dir_dirty = true;
	} else if (errno != EEXIST) {
		r = -errno;
		log_warn("spool: create %s/%s", sp->dir, dev->id);
		return r;
	}
	r = dev_load(sp, dev->id, &d);
	if (r < 0)
		return r;
	dev_attach(sp, d, dev);
	*out = d;
	return 0;
}

/*
 * Deletes device id's folder and everything in it. -ENOENT if there is none, unless had: its
 * state was loaded, so the folder was there and going is what was wanted of it.
 */
static int
forget_dir(struct spool *sp, const char *id, bool had)
{
	struct dirent *de;
	DIR *dir;
	int fd, r = 0;

	fd = openat(sp->dirfd, id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT && had ? 0 : -errno;
	dir = fdopendir(fd);
	if (!dir) {
		r = -errno;
		close(fd);
		return r;
	}
	/* The folder holds only files the spool made: no subfolders. */
	while ((de = readdir(dir))) {
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") &&
		    unlinkat(fd, de->d_name, 0) < 0 && r == 0) {
			r = -errno;
			log_warn("spool: remove %s/%s/%s", sp->dir, id, de->d_name);
		}
	}
	closedir(dir);
	if (unlinkat(sp->dirfd, id, AT_REMOVEDIR) < 0 && r == 0) {
		r = -errno;
		log_warn("spool: remove %s/%s", sp->dir, id);
	}
	if (fsync(sp->dirfd) < 0 && r == 0) {
		r = -errno;
		log_warn("spool: fsync %s", sp->dir);
	}
	return r;
}

/*
 * The folder of a device the registry does not have (removed while gatewayd was down): loaded
 * only to say how much goes with it, then deleted.
 */
static void
drop_orphan(struct spool *sp, const char *id)
{
	struct device_spool *d;
	uint64_t records;

	if (dev_load(sp, id, &d) < 0)
		return;
	records = d->records;
	sp->st.records -= d->records;
	sp->st.bytes -= d->bytes;
	dev_free(sp, d);
	if (records)
		log_warnx("%s: %llu spooled messages of a device that was removed: deleted", id,
		          (unsigned long long)records);
	forget_dir(sp, id, true);
}

/* The registry's removal watcher: a removed device's records and folder go at once. */
static void
device_removed(struct device *dev, void *data)
{
	spool_forget(data, dev);
}

static int
name_order(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* syncfs(2) returns writeback errors only since Linux 5.8 (errseq on the super block). */
static bool
syncfs_reports_errors(void)
{
	struct utsname u;
	int major = 0, minor = 0;

	if (uname(&u) < 0 || sscanf(u.release, "%d.%d", &major, &minor) != 2)
		return false;
	return major > 5 || (major == 5 && minor >= 8);
}

/* ---- the API ---- */

static void
take_limits(struct spool *sp, const struct spool_limits *lim)
{
	sp->lim = *lim;
	if (!sp->lim.device_bytes)
		sp->lim.device_bytes = UINT64_MAX;
	if (!sp->lim.total_bytes)
		sp->lim.total_bytes = UINT64_MAX;
	if (!sp->lim.segment_bytes)
		sp->lim.segment_bytes = SPOOL_SEGMENT_DEFAULT;
	if (!sp->lim.open_files)
		sp->lim.open_files = SPOOL_OPEN_DEFAULT;
}

void
spool_set_limits(struct spool *sp, const struct spool_limits *lim)
{
	take_limits(sp, lim);
}

int
spool_open(struct spool **out, const char *dir, const struct spool_limits *lim,
           struct device_registry *devices)
{
	struct spool *sp = xcalloc(1, sizeof(*sp));
	char **names = NULL;
	size_t nnames = 0, cap = 0;
	struct dirent *de;
	bool made = false;
	struct stat st;
	DIR *dh = NULL;
	int fd, r;

	crc_init();
	sp->dirfd = sp->lockfd = -1;
	take_limits(sp, lim);
	sp->now = clock_now;
	sp->use_syncfs = syncfs_reports_errors();
	sp->dir = xstrdup(dir);
	sp->devices = devices;
	if (mkdir(dir, 0700) == 0) {
		made = true;
	} else if (errno != EEXIST) {
		r = -errno;
		log_warn("spool: create %s", dir);
		goto fail;
	}
	sp->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sp->dirfd < 0 || fstat(sp->dirfd, &st) < 0) {
		r = -errno;
		log_warn("spool: %s", dir);
		goto fail;
	}
	if (made) {
		/* The new folder's own entry must survive a power loss too. */
		char *copy = xstrdup(dir);
		int pfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);

		if (pfd < 0 || fsync(pfd) < 0) {
			r = -errno;
			log_warn("spool: fsync the folder holding %s", dir);
		} else {
			r = 0;
		}
		if (pfd >= 0)
			close(pfd);
		free(copy);
		if (r < 0)
			goto fail;
	}
	if (st.st_mode & 077)
		log_warnx("spool: %s has mode %04o; it holds devices' uplink data and should be "
		          "closed to group and others (chmod 700 %s)",
		          dir, st.st_mode & 07777, dir);
	sp->lockfd = openat(sp->dirfd, LOCK_FILE, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (sp->lockfd < 0) {
		r = -errno;
		log_warn("spool: %s/" LOCK_FILE, dir);
		goto fail;
	}
	if (flock(sp->lockfd, LOCK_EX | LOCK_NB) < 0) {
		r = errno == EWOULDBLOCK ? -EBUSY : -errno;
		log_warnx("spool: %s is in use by another process (it holds %s/" LOCK_FILE ")", dir,
		          dir);
		goto fail;
	}
	fd = dup(sp->dirfd);
	dh = fd >= 0 ? fdopendir(fd) : NULL;
	if (!dh) {
		r = -errno;
		log_warn("spool: %s", dir);
		if (fd >= 0)
			close(fd);
		goto fail;
	}
	for (;;) {
		errno = 0;
		de = readdir(dh);
		if (!de) {
			r = -errno;
			if (r < 0)
				log_warn("spool: read %s", dir);
			break;
		}
		if (de->d_name[0] == '.')
			continue;
		if (de->d_type != DT_DIR && de->d_type != DT_UNKNOWN)
			continue;
		if (!device_id_valid(de->d_name)) {
			log_warnx("spool: %s/%s: not a device id; ignored", dir, de->d_name);
			continue;
		}
		room_for_one((void **)&names, nnames, &cap, 16, sizeof(*names));
		names[nnames++] = xstrdup(de->d_name);
	}
	closedir(dh);
	if (r < 0)
		goto fail;
	/* In id order, so that what is logged about them and spool_devices() come in it too.
	 * Not with none: qsort's base must not be NULL. */
	if (nnames > 1)
		qsort(names, nnames, sizeof(*names), name_order);
	for (size_t i = 0; i < nnames; i++) {
		struct device *dev = device_find(devices, names[i]);
		struct device_spool *d;

		if (!dev) {
			drop_orphan(sp, names[i]);
			continue;
		}
		if (dev_load(sp, dev->id, &d) != 0)
			continue;
		dev_attach(sp, d, dev);
		/* What an earlier run left to sync or delete: the first sync does it. */
		if (needs_sync(sp, d))
			touch(sp, d);
	}
	device_registry_on_remove(devices, device_removed, sp);
	if (sp->st.records)
		log_info("spool: %s: %" PRIu64 " records (%" PRIu64 " bytes) waiting", dir,
		         sp->st.records, sp->st.bytes);
	for (size_t i = 0; i < nnames; i++)
		free(names[i]);
	free(names);
	*out = sp;
	return 0;
fail:
	for (size_t i = 0; i < nnames; i++)
		free(names[i]);
	free(names);
	spool_free(sp);
	return r;
}

void
spool_free(struct spool *sp)
{
	if (!sp)
		return;
	/* Not there if spool_open() failed: then this does nothing. */
	device_registry_off_remove(sp->devices, device_removed, sp);
	for (size_t i = 0; i < sp->ndevs; i++)
		dev_free(sp, sp->devs[i]);
	free(sp->devs);
	free(sp->touched);
	if (sp->lockfd >= 0)
		close(sp->lockfd);
	if (sp->dirfd >= 0)
		close(sp->dirfd);
	free(sp->wbuf);
	free(sp->dir);
	free(sp);
}

void
spool_set_clock(struct spool *sp, int64_t (*now)(void))
{
	sp->now = now ? now : clock_now;
}

/* The device holding the oldest live record of all (by stored_at). */
static struct device_spool *
oldest_dev(const struct spool *sp)
{
	struct device_spool *best = NULL;
	int64_t best_at = 0;

	for (size_t i = 0; i < sp->ndevs; i++) {
		struct device_spool *d = sp->devs[i];

		for (size_t si = 0; si < d->nsegs; si++) {
			const struct seg *s = &d->segs[si];

			if (s->head_idx == s->nrec)
				continue;
			if (!best || s->head_at < best_at) {
				best = d;
				best_at = s->head_at;
			}
			break;
		}
	}
	return best;
}

/* Makes room for total more bytes of d's device (d: NULL if it has no folder yet). */
static int
make_room(struct spool *sp, struct device_spool *d, uint64_t total)
{
	/* total is within both limits (spool_append() checked), so these cannot wrap. */
	uint64_t dev_max = sp->lim.device_bytes - total, all_max = sp->lim.total_bytes - total;
	bool over_dev = d && d->bytes > dev_max, over_all = sp->st.bytes > all_max;
	int r;

	if (!over_dev && d)
		d->full_logged = false;
	if (!over_all)
		sp->full_logged = false;
	if (!over_dev && !over_all)
		return 0;
	if (over_dev && !d->full_logged)
		log_warnx("spool: device %s: over its %" PRIu64 " bytes; %s", d->id,
		          sp->lim.device_bytes,
		          sp->lim.full == SPOOL_REFUSE ? "refusing its messages until it drains"
		                                       : "dropping its oldest messages");
	if (over_all && !sp->full_logged)
		log_warnx("spool: over %" PRIu64 " bytes in all; %s", sp->lim.total_bytes,
		          sp->lim.full == SPOOL_REFUSE
		                  ? "refusing messages until it drains"
		                  : "dropping the oldest messages of the device with the oldest");
	if (over_dev)
		d->full_logged = true;
	if (over_all)
		sp->full_logged = true;
	if (sp->lim.full == SPOOL_REFUSE) {
		sp->st.refused++;
		return -ENOSPC;
	}
	while (d && d->bytes > dev_max) {
		r = drop_head(sp, d, &sp->st.dropped_full);
		if (r < 0)
			return r;
	}
	while (sp->st.bytes > all_max) {
		struct device_spool *o = oldest_dev(sp);

		if (!o)
			break;
		r = drop_head(sp, o, &sp->st.dropped_full);
		if (r < 0)
			return r;
	}
	return 0;
}

/* The segment that takes d's next append: the last one, or a new one if that is full. */
static int
tail_seg(struct spool *sp, struct device_spool *d, struct seg **out)
{
	char name[SEG_NAME_LEN + 1];
	struct seg *s = d->nsegs ? &d->segs[d->nsegs - 1] : NULL;
	int fd, r;

	if (s && !s->sealed && s->size < sp->lim.segment_bytes) {
		*out = s;
		return 0;
	}
	if (s)
		s->sealed = true;
	if (sp->nopen >= sp->lim.open_files)
		close_clean(sp);
	seg_name(name, d->next_seq);
	fd = openat(d->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = -errno;
		log_warn("spool: create %s/%s/%s", sp->dir, d->id, name);
		return r;
	}
	s = seg_add(d, d->next_seq);
	s->fd = fd;
	sp->nopen++;
	d->dir_dirty = true;
	touch(sp, d);
	*out = s;
	return 0;
}

static int
write_at(int fd, const uint8_t *b, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, b, len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		b += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/* Only a damaged segment name or acked file can bring a device here (see SEQ_END). */
static int
seq_used_up(struct spool *sp, struct device_spool *d)
{
	log_warnx("spool: device %s: no seq is left after %" PRIu64
	          " (a damaged segment name or acked file in %s/%s?); its messages are refused "
	          "until that folder is moved away",
	          d->id, SEQ_END - 1, sp->dir, d->id);
	return -EOVERFLOW;
}

int
spool_append(struct spool *sp, struct device *dev, struct spool_record *rec)
{
	const char *ctype = rec->content_type ? rec->content_type : "";
	size_t tlen, clen, total;
	struct live before;
	struct device_spool *d;
	struct seg *s = NULL;
	uint8_t *b;
	int r;

	if (!rec->topic || rec->qos > 1 || (rec->len && !rec->payload))
		return -EINVAL;
	tlen = strlen(rec->topic);
	clen = strlen(ctype);
	if (tlen == 0)
		return -EINVAL;
	if (tlen > SPOOL_TOPIC_MAX || clen > SPOOL_CTYPE_MAX || rec->len > SPOOL_PAYLOAD_MAX)
		return -EMSGSIZE;
	total = REC_HDR + tlen + 1 + clen + 1 + rec->len;
	if (total > sp->lim.device_bytes || total > sp->lim.total_bytes)
		return -EMSGSIZE;
	/* Its slot would be set again after its watcher cleared it, and never cleared. */
	if (dev->state == DEVICE_GONE)
		return -ENODEV;
	d = dev->spool;
	if (d && d->next_seq == SEQ_END)
		return seq_used_up(sp, d);
	r = make_room(sp, d, total);
	if (r < 0)
		return r;
	if (!d) {
		r = dev_create(sp, dev, &d);
		if (r < 0)
			return r;
		if (d->next_seq == SEQ_END)
			return seq_used_up(sp, d);
	}
	if (total > sp->wcap) {
		sp->wbuf = xreallocarray(sp->wbuf, total, 1);
		sp->wcap = total;
	}
	b = sp->wbuf;
	rec->seq = d->next_seq;
	rec->stored_at = sp->now();
	memcpy(b, rec_magic, sizeof(rec_magic));
	b[4] = REC_VERSION;
	b[5] = rec->qos;
	put16(b + 6, (uint16_t)tlen);
	put16(b + 8, (uint16_t)clen);
	put16(b + 10, 0);
	put32(b + 12, (uint32_t)rec->len);
	put64(b + 16, rec->seq);
	put64(b + 24, (uint64_t)rec->stored_at);
	put32(b + 32, crc32c(0, b, 32));
	memcpy(b + REC_HDR, rec->topic, tlen + 1);
	memcpy(b + REC_HDR + tlen + 1, ctype, clen + 1);
	if (rec->len)
		memcpy(b + REC_HDR + tlen + 1 + clen + 1, rec->payload, rec->len);
	put32(b + 36, crc32c(crc32c(0, b, 36), b + REC_HDR, total - REC_HDR));

	r = tail_seg(sp, d, &s);
	if (r < 0)
		return r;
	r = seg_fd(sp, d, s);
	if (r >= 0)
		r = write_at(r, b, total, s->size);
	if (r < 0) {
		errno = -r;
		log_warn("spool: device %s: write", dev->id);
		/* Leave no partial record behind, or else write no more to this file. */
		if (s->fd >= 0 && ftruncate(s->fd, (off_t)s->size) < 0) {
			s->sealed = true;
			if (!s->nrec)
				seg_remove(sp, d, d->nsegs - 1, true);
		}
		return r;
	}
	before = seg_live(s);
	s->size += total;
	s->nrec++;
	s->last_seq = rec->seq;
	if (s->head_idx == s->nrec - 1)
		s->head_at = rec->stored_at;
	s->dirty = true;
	touch(sp, d);
	account(sp, d, s, before);
	d->next_seq++;
	return 0;
}

/* A segment spool_sync() may delete: nothing live, and nothing of it the acked file on disk
 * does not cover. The last one stays while it takes appends. */
static bool
deletable(const struct spool *sp, const struct device_spool *d, size_t si)
{
	const struct seg *s = &d->segs[si];

	if (s->head_idx != s->nrec || (s->nrec && s->last_seq > d->acked_saved))
		return false;
	return si + 1 < d->nsegs || s->sealed || s->size >= sp->lim.segment_bytes;
}

/* checkpoint: also persist the acknowledged position and delete delivered segments. */
static int
dev_sync(struct spool *sp, struct device_spool *d, bool checkpoint)
{
	bool removed = false;
	bool durable;
	int err = 0;

	for (size_t si = 0; si < d->nsegs; si++) {
		struct seg *s = &d->segs[si];

		if (!s->dirty)
			continue;
		if (s->fd >= 0 && fsync(s->fd) < 0) {
			/* After a failed fsync the kernel may have dropped the pages: what was
			 * written since the last sync is not known to be on disk, and a retry would
			 * not say so. Report it once (the batch is not acknowledged) and start a
			 * new file. */
			err = err ? err : -errno;
			sp->append_err = sp->append_err ? sp->append_err : -errno;
			log_warn("spool: device %s: fsync segment %016" PRIx64 SEG_SUFFIX, d->id,
			         s->name);
			s->sealed = true;
		}
		s->dirty = false;
	}
	if (!checkpoint) {
		/* A new segment's name must be on disk before its records count as durable. */
		if (d->dir_dirty && fsync(d->dirfd) < 0) {
			err = err ? err : -errno;
			log_warn("spool: fsync %s/%s", sp->dir, d->id);
		} else {
			d->dir_dirty = false;
		}
		return err;
	}
	if (d->acked != d->acked_saved) {
		int r = save_acked(sp, d);

		err = err ? err : r;
	}
	if (d->dir_dirty) {
		if (fsync(d->dirfd) < 0) {
			err = err ? err : -errno;
			log_warn("spool: fsync %s/%s", sp->dir, d->id);
		} else {
			d->dir_dirty = false;
		}
	}
	durable = !d->dir_dirty;
	/* Only once the acked file that covers them is on disk. */
	for (size_t si = 0; durable && si < d->nsegs; si++) {
		if (deletable(sp, d, si)) {
			seg_remove(sp, d, si--, true);
			removed = true;
		}
	}
	if (removed) {
		if (fsync(d->dirfd) < 0) {
			err = err ? err : -errno;
			log_warn("spool: fsync %s/%s", sp->dir, d->id);
		} else {
			d->dir_dirty = false;
		}
	}
	return err;
}

/*
 * Past this many files to make durable, one syncfs(2) instead of an fsync each: measured on
 * the development machine's ext4, a batch of 50 devices' appends took 8.1 ms with an fsync per
 * file and 0.85 ms with one syncfs. syncfs also writes back other dirty files of the same file
 * system, which costs more where something else writes a lot there: hence only past a few.
 */
#define SYNCFS_FILES 4

static size_t
dirty_files(const struct spool *sp)
{
	size_t n = sp->dir_dirty;

	for (size_t i = 0; i < sp->ntouched; i++) {
		const struct device_spool *d = sp->touched[i];

		n += d->dir_dirty;
		for (size_t si = 0; si < d->nsegs; si++)
			n += d->segs[si].dirty;
	}
	return n;
}

/* After a syncfs: clean, or (failed) as dev_sync leaves a segment whose fsync failed. */
static void
synced_all(struct spool *sp, bool failed)
{
	if (failed && dirty_files(sp) > 0 && !sp->append_err)
		sp->append_err = -EIO;
	for (size_t i = 0; i < sp->ntouched; i++) {
		struct device_spool *d = sp->touched[i];

		for (size_t si = 0; si < d->nsegs; si++) {
			if (d->segs[si].dirty && failed)
				d->segs[si].sealed = true;
			d->segs[si].dirty = false;
		}
		if (!failed)
			d->dir_dirty = false;
	}
	if (!failed)
		sp->dir_dirty = false;
}

static size_t
acks_to_save(const struct spool *sp)
{
	size_t n = 0;

	for (size_t i = 0; i < sp->ntouched; i++)
		n += sp->touched[i]->acked != sp->touched[i]->acked_saved;
	return n;
}

static int
syncfs_all(struct spool *sp)
{
	if (syncfs(sp->dirfd) == 0)
		return 0;
	log_warn("spool: syncfs %s", sp->dir);
	return -errno;
}

/*
 * dev_sync(checkpoint) for many devices at once, in the same order, with a syncfs per step
 * instead of three fsyncs per device (which stalled the loop for tens of ms with 50 devices):
 * the appends and the new positions (in place; aside, for a file of version 1 or none yet),
 * then those aside put in place, then the delivered segments deleted.
 */
static int
checkpoint_all(struct spool *sp)
{
	/* Per touched device: 0 no position written, 1 in place, 2 aside (a new file). */
	uint8_t *pending = xcalloc(sp->ntouched ? sp->ntouched : 1, sizeof(*pending));
	bool removed = false, installed = false;
	int err = 0, r;

	for (size_t i = 0; i < sp->ntouched; i++) {
		struct device_spool *d = sp->touched[i];

		if (d->acked != d->acked_saved) {
			r = ack_write(sp, d, false);
			pending[i] = r < 0 ? 0 : (uint8_t)(r + 1);
			if (r < 0 && !err)
				err = r;
		}
	}
	/* The appends and the new positions. */
	r = syncfs_all(sp);
	synced_all(sp, r < 0);
	if (r < 0) {
		for (size_t i = 0; i < sp->ntouched; i++) {
			if (pending[i] == 2)
				atomic_discard(sp->touched[i]->dirfd, ACK_FILE);
		}
		free(pending);
		return r;
	}
	/* Those written aside, put in place (a version 1 file's first checkpoint, or none yet). */
	for (size_t i = 0; i < sp->ntouched; i++) {
		if (pending[i] == 1) {
			ack_done(sp->touched[i]);
		} else if (pending[i] == 2) {
			installed = true;
			if ((r = ack_install(sp, sp->touched[i])) < 0 && !err)
				err = r;
		}
	}
	free(pending);
	if (installed && (r = syncfs_all(sp)) < 0)
		return r;
	for (size_t i = 0; i < sp->ntouched; i++) {
		struct device_spool *d = sp->touched[i];

		d->dir_dirty = false;
		for (size_t si = 0; si < d->nsegs; si++) {
			if (deletable(sp, d, si)) {
				seg_remove(sp, d, si--, true);
				removed = true;
			}
		}
	}
	sp->dir_dirty = false;
	if (removed) {
		if ((r = syncfs_all(sp)) < 0)
			return r;
		for (size_t i = 0; i < sp->ntouched; i++)
			sp->touched[i]->dir_dirty = false;
	}
	/* A position that could not be written is written at the next checkpoint. */
	return err;
}

static int
sync_devices(struct spool *sp, bool checkpoint)
{
	int err = 0;

	if (!checkpoint && sp->use_syncfs && dirty_files(sp) >= SYNCFS_FILES) {
		if (syncfs(sp->dirfd) < 0) {
			err = -errno;
			log_warn("spool: syncfs %s", sp->dir);
		}
		synced_all(sp, err < 0);
		return err;
	}
	if (checkpoint && sp->use_syncfs && dirty_files(sp) + acks_to_save(sp) >= SYNCFS_FILES)
		return checkpoint_all(sp);

	for (size_t i = 0; i < sp->ntouched; i++) {
		int r = dev_sync(sp, sp->touched[i], checkpoint);

		err = err ? err : r;
	}
	if (sp->dir_dirty) {
		if (fsync(sp->dirfd) < 0) {
			err = err ? err : -errno;
			log_warn("spool: fsync %s", sp->dir);
		} else {
			sp->dir_dirty = false;
		}
	}
	return err;
}

/* Syncs the touched devices; those it left with nothing to sync go off the list. */
static int
sync_all(struct spool *sp, bool checkpoint)
{
	int r = sync_devices(sp, checkpoint);

	untouch(sp, NULL);
	return r;
}

int
spool_sync(struct spool *sp)
{
	return sync_all(sp, true);
}

int
spool_sync_appends(struct spool *sp)
{
	int r = sync_all(sp, false);

	if (r == 0)
		r = sp->append_err;
	sp->append_err = 0;
	return r;
}

bool
spool_needs_sync(const struct spool *sp)
{
	if (sp->dir_dirty)
		return true;
	for (size_t i = 0; i < sp->ntouched; i++) {
		if (needs_sync(sp, sp->touched[i]))
			return true;
	}
	return false;
}

static void
set_cursor(struct device_spool *d, const struct seg *s, uint64_t off, uint64_t idx, uint64_t after)
{
	d->cur_name = s->name;
	d->cur_off = off;
	d->cur_idx = idx;
	d->cur_after = after;
}

int
spool_read(struct spool *sp, struct device *dev, uint64_t from_seq, struct spool_record *rec,
           void **buf)
{
	uint64_t dropped = 0, start;
	int rescans = 0, r;
	struct device_spool *d = dev->spool;

	if (!d)
		return -ENOENT;
again:
	start = from_seq > d->acked ? from_seq : d->acked + 1;
	for (size_t si = 0; si < d->nsegs; si++) {
		struct seg *s = &d->segs[si];
		uint64_t off = s->head_off, idx = s->head_idx;

		if (s->head_idx == s->nrec || s->last_seq < start)
			continue;
		/* Reading on from the last record returned: start where it ended. */
		if (d->cur_name == s->name && d->cur_after < start && d->cur_off > off) {
			off = d->cur_off;
			idx = d->cur_idx;
		}
		for (;;) {
			struct rhdr h;
			uint8_t *body = NULL;

			r = seg_next(sp, d, si, &off, &h);
			if (r == -ENOENT)
				break;
			if (r == RESCANNED && ++rescans <= RESCAN_MAX)
				goto again;
			if (r != 0)
				goto out;
			if (h.seq < start) {
				off += h.total;
				idx++;
				continue;
			}
			if (sp->lim.max_age && h.at < sp->now() - (int64_t)sp->lim.max_age) {
				/* Records are in the order they were stored: the ones before are
				 * older still. The cursor saves advance() a walk from the head. */
				set_cursor(d, s, off + h.total, idx + 1, h.seq);
				r = advance(sp, d, h.seq, &dropped);
				if (r < 0)
					goto out;
				goto again;
			}
			r = read_body(sp, d, si, &off, &h, &body);
			if (r == RESCANNED && ++rescans <= RESCAN_MAX)
				goto again;
			if (r != 0)
				goto out;
			set_cursor(d, s, off + h.total, idx + 1, h.seq);
			rec->seq = h.seq;
			rec->stored_at = h.at;
			rec->qos = h.qos;
			rec->topic = (const char *)body;
			rec->content_type = (const char *)body + h.tlen + 1;
			rec->payload = body + h.tlen + 1 + h.clen + 1;
			rec->len = h.plen;
			*buf = body;
			goto out;
		}
	}
	r = -ENOENT;
out:
	if (r == RESCANNED)
		r = -EIO;
	if (dropped) {
		sp->st.dropped_age += dropped;
		log_info("spool: device %s: dropped %" PRIu64 " message(s) older than %u s", d->id,
		         dropped, sp->lim.max_age);
	}
	return r;
}

int
spool_ack(struct spool *sp, struct device *dev, uint64_t seq)
{
	struct device_spool *d = dev->spool;
	uint64_t n = 0;

	if (!d)
		return -ENOENT;
	return advance(sp, d, seq, &n);
}

int
spool_drop(struct spool *sp, struct device *dev, uint64_t *count)
{
	struct device_spool *d = dev->spool;
	int r;

	*count = 0;
	if (!d || d->next_seq <= 1)
		return 0;
	r = advance(sp, d, d->next_seq - 1, count);
	sp->st.dropped_operator += *count;
	return r;
}

uint64_t
spool_depth(const struct spool *sp, const struct device *dev, uint64_t *bytes)
{
	const struct device_spool *d = dev->spool;

	(void)sp;
	if (bytes)
		*bytes = d ? d->bytes : 0;
	return d ? d->records : 0;
}

void
spool_stats(const struct spool *sp, struct spool_stats *st)
{
	*st = sp->st;
}

size_t
spool_devices(const struct spool *sp,
              void (*fn)(const struct device *dev, uint64_t records, void *data), void *data)
{
	size_t n = 0;

	for (size_t i = 0; i < sp->ndevs; i++) {
		if (!sp->devs[i]->records)
			continue;
		if (fn)
			fn(sp->devs[i]->dev, sp->devs[i]->records, data);
		n++;
	}
	return n;
}

int
spool_forget(struct spool *sp, struct device *dev)
{
	struct device_spool *d = dev->spool;

	if (d)
		dev_drop(sp, d);
	return forget_dir(sp, dev->id, d != NULL);
}
