/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness for bridges/coap/upload (RFC 7959 Block1 assembly): the input is a run of
 * blocks as a sensor could send them, each 7 header bytes then its payload:
 *   NUM (3 bytes, 20 bits used) | flags: SZX (3 bits) M (1) owner (1) Size1 (1) | MID (1) |
 *   length / 4 (1 byte) | length % 4 (3 bits, up to 7: 1024-byte blocks are reachable) and
 *   Size1 / 256 (5 bits).
 * Each result is checked against the rules of section 2.3 (the size of every block but the
 * last, SZX 7, the limit), and every message put together against a model: the payloads of the
 * blocks taken, in order, each once.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upload.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define check(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#define MAX 4096 /* sensors.max_payload here */

static const int owners[2];

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct upload *up = NULL;
	static uint8_t model[MAX];
	size_t model_len = 0, last_offset = 0, last_len = 0;
	bool going = false;         /* the model has an upload going on ... */
	const void *m_owner = NULL; /* ... for this owner, started by block 0 with this MID */
	uint16_t m_mid = 0;

	while (size >= 7) {
		struct upload_block b = {
		        .num = ((uint32_t)data[0] << 16 | (uint32_t)data[1] << 8 | data[2]) &
		               0xFFFFF,
		        .szx = data[3] & 7,
		        .more = data[3] & 8,
		        .owner = &owners[(data[3] >> 4) & 1],
		        .has_size1 = data[3] & 32,
		        .mid = data[4],
		        .len = (size_t)data[5] * 4 + (data[6] & 7),
		};
		size_t bsize = (size_t)1 << ((b.szx & 7) + 4), offset = (size_t)b.num * bsize;
		enum upload_result r;

		b.size1 = b.has_size1 ? (uint64_t)(data[6] >> 3) * 256 : 0;
		data += 7;
		size -= 7;
		if (b.len > size)
			b.len = size;
		b.data = data;
		data += b.len;
		size -= b.len;

		r = upload_take(&up, MAX, &b);
		if (b.szx == 7 || b.len > bsize || (b.more && b.len != bsize)) {
			check(r == UPLOAD_BAD);
			check(!up);
			going = false;
			continue;
		}
		check(r != UPLOAD_BAD);
		if (offset + b.len > MAX || (b.has_size1 && b.size1 > MAX)) {
			check(r == UPLOAD_TOO_LARGE);
			check(!up);
			going = false;
			continue;
		}
		check(r != UPLOAD_TOO_LARGE);
		/* Block 0 starts an upload, unless it is the same block 0 again (its MID). */
		if (b.num == 0 && !(going && b.owner == m_owner && b.mid == m_mid)) {
			going = true;
			m_owner = b.owner;
			m_mid = b.mid;
			model_len = last_offset = last_len = 0;
		}
		if (!going || b.owner != m_owner) {
			check(r == UPLOAD_INCOMPLETE); /* nothing to join */
			continue;
		}
		if (b.more && offset == last_offset && b.len == last_len &&
		    model_len == offset + b.len) {
			check(r == UPLOAD_MORE); /* the last block again: taken once */
			continue;
		}
		if (offset != model_len) {
			check(r == UPLOAD_INCOMPLETE); /* a gap, or a block before the last */
			continue;
		}
		memcpy(model + offset, b.data, b.len);
		model_len = offset + b.len;
		last_offset = offset;
		last_len = b.len;
		check(r == (b.more ? UPLOAD_MORE : UPLOAD_WHOLE));
		if (r == UPLOAD_WHOLE) {
			size_t len;
			const uint8_t *msg = upload_data(up, &len);

			check(len == model_len && len <= MAX);
			check(memcmp(msg, model, len) == 0);
			/* coapbr hands the message on and lets the upload go. */
			upload_free(up);
			up = NULL;
			going = false;
			model_len = 0;
		}
	}
	upload_free(up);
	return 0;
}
