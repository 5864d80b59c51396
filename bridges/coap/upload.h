/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_UPLOAD_H
#define GW_UPLOAD_H

/*
 * An RFC 7959 Block1 upload being put together from its blocks: pure (no I/O, no libcoap), so
 * that its rules are tested and fuzzed on their own. coapbr keeps one per sensor session.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct upload;

/* Section 2.2: NUM is at most 20 bits (a three-byte option value). */
#define UPLOAD_NUM_MAX 0xFFFFFu

/* One Block1 block as it arrived, decoded from the request by the caller. */
struct upload_block {
	uint32_t num;      /* NUM: the block's number */
	unsigned szx;      /* SZX: block size 2^(SZX+4); 7 is reserved */
	bool more;         /* M: more blocks follow */
	uint16_t mid;      /* the request's message ID */
	const void *owner; /* whose upload it is (coapbr: the route's resource) */
	bool has_size1;
	uint64_t size1; /* the Size1 option: the whole message's size, as the sender says */
	const uint8_t *data;
	size_t len;
};

enum upload_result {
	UPLOAD_MORE,       /* taken: answer 2.31 Continue */
	UPLOAD_WHOLE,      /* taken, and the message is whole: upload_data() */
	UPLOAD_BAD,        /* 4.00: a block of the wrong size, or SZX 7; the upload is dropped */
	UPLOAD_INCOMPLETE, /* 4.08: out of sequence (RFC 7959 section 2.9.2) */
	UPLOAD_TOO_LARGE,  /* 4.13: more than max bytes; the upload is dropped */
};

/*
 * Takes block b into *up (NULL: none going on; block 0 starts one, replacing any other), for
 * a message of at most max bytes. RFC 7959 section 2.3: every block but the last carries
 * exactly its block size, the last at most that; a block sent again (the same as the last
 * one taken) is taken once, and its bytes are not written again.
 */
enum upload_result upload_take(struct upload **up, size_t max, const struct upload_block *b);

/* The message put together, after UPLOAD_WHOLE. */
const uint8_t *upload_data(const struct upload *up, size_t *len);

void upload_free(struct upload *up);

#endif
