/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "upload.h"

static const int resource_a, resource_b; /* two owners */
static uint8_t bytes[4096];

/* Block num of szx (size 2^(szx+4)) carrying len bytes from bytes[offset]. */
static struct upload_block
block(uint32_t num, unsigned szx, bool more, size_t len)
{
	size_t offset = (size_t)num << (szx + 4);

	return (struct upload_block){.num = num,
	                             .szx = szx,
	                             .more = more,
	                             .mid = (uint16_t)(100 + num),
	                             .owner = &resource_a,
	                             .data = bytes + (offset < sizeof(bytes) ? offset : 0),
	                             .len = len};
}

static enum upload_result
take(struct upload **up, size_t max, struct upload_block b)
{
	return upload_take(up, max, &b);
}

static void
assert_whole(const struct upload *up, size_t want)
{
	size_t len;
	const uint8_t *data = upload_data(up, &len);

	assert_int_equal(len, want);
	assert_memory_equal(data, bytes, want);
}

static int
setup(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(bytes); i++)
		bytes[i] = (uint8_t)(i * 7 + 3);
	return 0;
}

static void
test_in_order(void **state)
{
	struct upload *up = NULL;

	(void)state;
	assert_int_equal(take(&up, 1024, block(0, 2, true, 64)), UPLOAD_MORE);
	assert_int_equal(take(&up, 1024, block(1, 2, true, 64)), UPLOAD_MORE);
	assert_int_equal(take(&up, 1024, block(2, 2, false, 10)), UPLOAD_WHOLE);
	assert_whole(up, 138);
	upload_free(up);
}

/* The defect found from outside: block 0 of SZX 0 (16 bytes) with M carrying 200 bytes, then
 * block 1 of 16 bytes, was put together as 200 bytes with 16 of them overwritten. */
static void
test_block_longer_than_its_size(void **state)
{
	struct upload *up = NULL;

	(void)state;
	assert_int_equal(take(&up, 1024, block(0, 0, true, 200)), UPLOAD_BAD);
	assert_null(up);
	/* The next block has nothing to join. */
	assert_int_equal(take(&up, 1024, block(1, 0, false, 16)), UPLOAD_INCOMPLETE);
	assert_null(up);
	/* A last block may be shorter than its size, never longer. */
	assert_int_equal(take(&up, 1024, block(0, 0, false, 17)), UPLOAD_BAD);
	assert_int_equal(take(&up, 1024, block(0, 0, false, 16)), UPLOAD_WHOLE);
	assert_whole(up, 16);
	upload_free(up);
}

static void
test_block_shorter_with_more(void **state)
{
	struct upload *up = NULL;

	(void)state;
	assert_int_equal(take(&up, 1024, block(0, 2, true, 64)), UPLOAD_MORE);
	assert_int_equal(take(&up, 1024, block(1, 2, true, 63)), UPLOAD_BAD);
	assert_null(up); /* dropped: the sensor starts again */
}

/* SZX 7 is reserved (RFC 7959 section 2.2): 4.00, never a message put together. */
static void
test_szx_7(void **state)
{
	struct upload *up = NULL;
	struct upload_block b = block(0, 6, true, 1024);

	(void)state;
	b.szx = 7;
	assert_int_equal(upload_take(&up, 4096, &b), UPLOAD_BAD);
	b.more = false;
	assert_int_equal(upload_take(&up, 4096, &b), UPLOAD_BAD);
	assert_null(up);
	b = block(0, 0, true, 16);
	b.num = UPLOAD_NUM_MAX + 1;
	assert_int_equal(upload_take(&up, 4096, &b), UPLOAD_BAD);
}

static void
test_too_large(void **state)
{
	struct upload *up = NULL;
	struct upload_block b = block(0, 2, true, 64);

	(void)state;
	b.has_size1 = true;
	b.size1 = 129;
	assert_int_equal(upload_take(&up, 128, &b), UPLOAD_TOO_LARGE);
	b.size1 = 128;
	assert_int_equal(upload_take(&up, 128, &b), UPLOAD_MORE);
	assert_int_equal(take(&up, 128, block(1, 2, true, 64)), UPLOAD_MORE);
	assert_int_equal(take(&up, 128, block(2, 2, false, 1)), UPLOAD_TOO_LARGE);
	assert_null(up);
	/* Exactly the limit is taken. */
	assert_int_equal(take(&up, 128, block(0, 2, true, 64)), UPLOAD_MORE);
	assert_int_equal(take(&up, 128, block(1, 2, false, 64)), UPLOAD_WHOLE);
	assert_whole(up, 128);
	upload_free(up);
}

static void
test_out_of_sequence(void **state)
{
	struct upload *up = NULL;
	struct upload_block b;

	(void)state;
	assert_int_equal(take(&up, 1024, block(1, 2, true, 64)), UPLOAD_INCOMPLETE);
	assert_int_equal(take(&up, 1024, block(0, 2, true, 64)), UPLOAD_MORE);
	assert_int_equal(take(&up, 1024, block(2, 2, true, 64)), UPLOAD_INCOMPLETE); /* a gap */
	/* Another resource's block does not join this upload, which goes on. */
	b = block(1, 2, true, 64);
	b.owner = &resource_b;
	assert_int_equal(upload_take(&up, 1024, &b), UPLOAD_INCOMPLETE);
	assert_int_equal(take(&up, 1024, block(1, 2, false, 64)), UPLOAD_WHOLE);
	assert_whole(up, 128);
	upload_free(up);
}

/* The last block again (its ACK lost) is taken once; its bytes are not written again. */
static void
test_resend(void **state)
{
	struct upload *up = NULL;
	struct upload_block b;

	(void)state;
	assert_int_equal(take(&up, 1024, block(0, 2, true, 64)), UPLOAD_MORE);
	assert_int_equal(take(&up, 1024, block(0, 2, true, 64)), UPLOAD_MORE); /* same MID */
	assert_int_equal(take(&up, 1024, block(1, 2, true, 64)), UPLOAD_MORE);
	b = block(1, 2, true, 64);
	b.data = bytes + 1000; /* other bytes: must not replace those taken */
	assert_int_equal(upload_take(&up, 1024, &b), UPLOAD_MORE);
	/* An earlier block than the last is out of sequence, and changes nothing. */
	assert_int_equal(take(&up, 1024, block(0, 2, true, 64)), UPLOAD_INCOMPLETE);
	assert_int_equal(take(&up, 1024, block(2, 2, false, 5)), UPLOAD_WHOLE);
	assert_whole(up, 133);
	upload_free(up);
}

/* Block 0 with a new message ID starts the upload again. */
static void
test_restart(void **state)
{
	struct upload *up = NULL;
	struct upload_block b;

	(void)state;
	assert_int_equal(take(&up, 1024, block(0, 2, true, 64)), UPLOAD_MORE);
	assert_int_equal(take(&up, 1024, block(1, 2, true, 64)), UPLOAD_MORE);
	b = block(0, 0, false, 10);
	b.mid = 7;
	assert_int_equal(upload_take(&up, 1024, &b), UPLOAD_WHOLE);
	assert_whole(up, 10);
	upload_free(up);
}

/* RFC 7959 section 2.5: a sender may go on with a smaller block size than it started with. */
static void
test_smaller_blocks_later(void **state)
{
	struct upload *up = NULL;

	(void)state;
	assert_int_equal(take(&up, 4096, block(0, 6, true, 1024)), UPLOAD_MORE);
	assert_int_equal(take(&up, 4096, block(16, 2, true, 64)), UPLOAD_MORE);
	assert_int_equal(take(&up, 4096, block(17, 2, false, 3)), UPLOAD_WHOLE);
	assert_whole(up, 1024 + 64 + 3);
	upload_free(up);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_in_order),
	        cmocka_unit_test(test_block_longer_than_its_size),
	        cmocka_unit_test(test_block_shorter_with_more),
	        cmocka_unit_test(test_szx_7),
	        cmocka_unit_test(test_too_large),
	        cmocka_unit_test(test_out_of_sequence),
	        cmocka_unit_test(test_resend),
	        cmocka_unit_test(test_restart),
	        cmocka_unit_test(test_smaller_blocks_later),
	};

	return cmocka_run_group_tests(tests, setup, NULL);
}
