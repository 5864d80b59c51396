/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_SPOOL_H
#define GW_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Durable per-device store-and-forward spool for uplink messages. The contract: a sensor's
 * confirmable message is acknowledged only after spool_sync() has returned 0 for the batch
 * holding its record, and nothing so acknowledged is lost by a crash or a power loss (a
 * delivered record may come back once after a crash: duplicates upstream, never loss).
 *
 * It holds the data of the devices of one registry (device.h): a device's part hangs on
 * dev->spool, found there rather than by id, and goes, folder and all, when the registry
 * removes the device.
 *
 * Layout under DIR (0700):
 *   .lock                       held (flock) by the process that has the spool open
 *   DEVICE/ (0700)              one folder per device id
 *     <16 hex digits>.seg       records in seq order; the name is the seq of its first record
 *     acked                     the acknowledged position and the next seq (written by rename)
 * Records carry a checksum; spool_open() keeps every good record around damaged bytes, counts
 * and logs what was lost, and never fails because of a damaged file.
 *
 * Single-threaded: call it from the event loop only. Memory per device is a small index of its
 * segments; no record is kept in memory.
 */

#define SPOOL_TOPIC_MAX   65535     /* bytes, without the NUL */
#define SPOOL_CTYPE_MAX   255       /* bytes, without the NUL */
#define SPOOL_PAYLOAD_MAX (1 << 20) /* bytes */
/* segment_bytes when spool_limits gives 0. */
#define SPOOL_SEGMENT_DEFAULT (1 << 20)

struct device;
struct device_registry;
struct spool;

enum spool_full {
	SPOOL_REFUSE,      /* spool_append() fails with -ENOSPC */
	SPOOL_DROP_OLDEST, /* spool_append() drops the oldest records to make room */
};

/* Bytes are a record's size on disk (its header, topic, content type and payload). */
struct spool_limits {
	uint64_t device_bytes; /* live bytes per device; 0: no limit */
	uint64_t total_bytes;  /* live bytes over all devices; 0: no limit */
	unsigned max_age;      /* seconds a record may wait before it is dropped; 0: no limit */
	enum spool_full full;  /* what spool_append() does when a bound would be passed */
	size_t segment_bytes;  /* a segment past this size is closed; 0: SPOOL_SEGMENT_DEFAULT */
	/*
	 * Segment files kept open between calls; past it the clean ones are closed (0:
	 * SPOOL_OPEN_DEFAULT). Size it above the devices that send at once: a device whose
	 * segment was closed opens it again at its next reading.
	 */
	size_t open_files;
};
#define SPOOL_OPEN_DEFAULT 32

struct spool_record {
	uint64_t seq;             /* set by spool_append(): per device, strictly increasing */
	int64_t stored_at;        /* set by spool_append(): unix seconds of the append */
	uint8_t qos;              /* 0 or 1 */
	const char *topic;        /* NUL-terminated, not empty */
	const char *content_type; /* NUL-terminated; "" or NULL for none */
	const uint8_t *payload;
	size_t len;
};

/* records and bytes are live now; the others count since spool_open(). */
struct spool_stats {
	uint64_t records, bytes;
	uint64_t dropped_full;     /* records dropped to make room (SPOOL_DROP_OLDEST) */
	uint64_t dropped_age;      /* records dropped because they were older than max_age */
	uint64_t refused;          /* appends refused with -ENOSPC */
	uint64_t dropped_operator; /* records an operator dropped (spool_drop()) */
	uint64_t corrupt_records; /* records lost to damaged files (an estimate: at least 1 a place)
	                           */
	uint64_t corrupt_bytes;   /* bytes of damaged files skipped or cut off */
};

/*
 * Opens the spool in dir, creating it (0700) if missing, and recovers the segments of every
 * device of devices that has a folder there. The folder of a device devices does not have
 * (removed while gatewayd was down) is deleted, with a warning if it held messages. From then
 * on a device removed from devices has its records and folder deleted at once. Fails only if
 * dir itself cannot be made, opened or locked (-EBUSY: another process has it open); damaged
 * files are logged, counted and worked around. One spool per registry.
 */
int spool_open(struct spool **out, const char *dir, const struct spool_limits *lim,
               struct device_registry *devices);

/*
 * Closes the files and lets go of the devices (their slots cleared); does not sync. Before the
 * registry is freed. Accepts NULL.
 */
void spool_free(struct spool *sp);
/*
 * A reload: new bounds for what comes next. What is stored already is not trimmed to them;
 * new segments are cut at the new size.
 */
void spool_set_limits(struct spool *sp, const struct spool_limits *lim);

/*
 * Writes rec for dev, a device of the spool's registry, and sets rec->seq and rec->stored_at.
 * The record is written but not durable until spool_sync(). -ENODEV if dev was removed
 * (GONE); -EMSGSIZE if
 * it could never fit (larger than a bound or SPOOL_*_MAX); -ENOSPC when a bound would be
 * passed and lim.full is SPOOL_REFUSE (nothing is dropped then); -EOVERFLOW when the device's
 * seqs are used up (only a damaged segment name or acked file does that). With
 * SPOOL_DROP_OLDEST the device's oldest records make room when it is over device_bytes, and
 * the records of whichever device has the oldest one when the spool is over total_bytes.
 */
int spool_append(struct spool *sp, struct device *dev, struct spool_record *rec);

/*
 * Makes everything durable: fsyncs the segments written since the last sync, writes the
 * acknowledged positions, fsyncs the folders where files were created or removed, then deletes
 * the segments wholly delivered. 0, or the first -errno: then the appends since the last
 * successful sync must not be acknowledged to sensors (they may retransmit: a duplicate, not a
 * loss); a segment whose fsync failed takes no more appends.
 */
int spool_sync(struct spool *sp);

/*
 * Only what a sensor's acknowledgement waits for: fsyncs the segments written since the last
 * sync, and the folders of new ones. Acknowledged positions and deletions wait for the next
 * spool_sync() (a second's worth of deliveries may then come back after a crash: duplicates),
 * which keeps two fsyncs per device off every batch. Errors as spool_sync().
 */
int spool_sync_appends(struct spool *sp);

/* Whether appends, acknowledgements or deletions wait for spool_sync(). */
bool spool_needs_sync(const struct spool *sp);

/*
 * The first live record of dev (not acknowledged, not dropped) with seq >= from_seq. rec's
 * strings and payload point into *buf, which the caller frees (the payload is followed by a
 * NUL too). -ENOENT if there is none (or dev has nothing in the spool). Reading on from the seq
 * last returned plus one continues where the last read stopped. A record older than max_age
 * is dropped here with every live record before it (counted in dropped_age), not returned.
 */
int spool_read(struct spool *sp, struct device *dev, uint64_t from_seq, struct spool_record *rec,
               void **buf);

/*
 * Everything of dev up to and including seq is delivered and no longer live (-ENOENT if dev has
 * nothing in the spool). The position is persisted, and wholly delivered segments deleted, by
 * the next spool_sync(); after a crash before it those records come back once.
 */
int spool_ack(struct spool *sp, struct device *dev, uint64_t seq);

/*
 * Drops every live record of dev, as an operator asked (counted in dropped_operator), and says
 * how many in *count; 0 with none. Persisted, and the segments deleted, by the next
 * spool_sync(); its next append follows in sequence.
 */
int spool_drop(struct spool *sp, struct device *dev, uint64_t *count);

/* Live records of dev, and their bytes if bytes is not NULL; 0 if it has nothing spooled. */
uint64_t spool_depth(const struct spool *sp, const struct device *dev, uint64_t *bytes);

void spool_stats(const struct spool *sp, struct spool_stats *st);

/*
 * Calls fn for every device with live records (in id order for those found at spool_open(),
 * then in the order of their first appends); returns how many there are.
 */
size_t spool_devices(const struct spool *sp,
                     void (*fn)(const struct device *dev, uint64_t records, void *data),
                     void *data);

/*
 * Deletes dev's records, its folder and everything in it (-ENOENT if it had none); its next
 * append starts afresh. The spool does so itself when the registry removes a device.
 */
int spool_forget(struct spool *sp, struct device *dev);

/*
 * Test hook: the clock giving stored_at and judging max_age (unix seconds); NULL restores
 * CLOCK_REALTIME.
 */
void spool_set_clock(struct spool *sp, int64_t (*now)(void));

#endif
