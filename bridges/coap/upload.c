/* SPDX-License-Identifier: Apache-2.0 */
#include "upload.h"
#include "xalloc.h"

#include <stdlib.h>
#include <string.h>

struct upload {
	const void *owner;
	uint16_t first_mid;           /* of block 0: the same again is a resend, not a restart */
	size_t len;                   /* bytes taken, all in sequence */
	size_t last_offset, last_len; /* the last block taken, to know a resend of it */
	size_t max;
	uint8_t data[];
};

enum upload_result
upload_take(struct upload **up, size_t max, const struct upload_block *b)
{
	struct upload *u = *up;
	size_t size, offset;

	/* Section 2.2: SZX 7 is reserved, and BERT (RFC 8323) exists only over TCP. */
	if (b->szx > 6 || b->num > UPLOAD_NUM_MAX)
		goto bad;
	size = (size_t)1 << (b->szx + 4);
	/* Section 2.3: only the last block may be shorter; none may be longer. */
	if (b->len > size || (b->more && b->len != size))
		goto bad;
	/* At most 2^20 blocks of 2^10 bytes: no overflow, even in 32 bits. */
	offset = (size_t)b->num * size;
	/* Refused at the first sign: a declared Size1, or the data so far. */
	if ((b->has_size1 && b->size1 > max) || offset + b->len > max) {
		upload_free(u);
		*up = NULL;
		return UPLOAD_TOO_LARGE;
	}
	if (b->num == 0 && !(u && u->owner == b->owner && u->first_mid == b->mid)) {
		upload_free(u);
		*up = u = xmalloc(sizeof(*u) + max);
		*u = (struct upload){.owner = b->owner, .first_mid = b->mid, .max = max};
	} else if (!u || u->owner != b->owner || u->max != max) {
		/* A later block with no upload going on (or another resource's, or a limit a
		 * reload changed): section 2.9.2. */
		return UPLOAD_INCOMPLETE;
	}
	if (offset == u->last_offset && b->len == u->last_len && u->len == offset + b->len &&
	    b->more)
		return UPLOAD_MORE; /* the last block again: taken once */
	if (offset != u->len)
		return UPLOAD_INCOMPLETE; /* a gap, or a block before the last */
	if (b->len)
		memcpy(u->data + offset, b->data, b->len);
	u->len = offset + b->len;
	u->last_offset = offset;
	u->last_len = b->len;
	return b->more ? UPLOAD_MORE : UPLOAD_WHOLE;

bad:
	upload_free(u);
	*up = NULL;
	return UPLOAD_BAD;
}

const uint8_t *
upload_data(const struct upload *up, size_t *len)
{
	*len = up->len;
	return up->data;
}

void
upload_free(struct upload *up)
{
	free(up);
}
