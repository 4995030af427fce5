/* S3's additional checksums: the published check values, and pieces. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "s3_checksum.h"

static const char check[] = "123456789";

/* The CRC catalogue's check values (reveng.sourceforge.io/crc-catalogue). */
static void test_check_values(void **state)
{
	char b64[S3_CKSUM_B64_MAX];

	(void)state;
	assert_int_equal(s3_crc32c(0, check, 9), 0xE3069283u);
	assert_true(s3_crc64nvme(0, check, 9) == 0xAE8B14860A799888ull);
	/* Big-endian bytes, base64, as S3 sends them. */
	assert_int_equal(s3_cksum_b64(S3_CKSUM_CRC32C, check, 9, b64), 0);
	assert_string_equal(b64, "4waSgw==");			/* e3 06 92 83 */
	assert_int_equal(s3_cksum_b64(S3_CKSUM_CRC32, check, 9, b64), 0);
	assert_string_equal(b64, "y/Q5Jg==");			/* cb f4 39 26 */
	assert_int_equal(s3_cksum_b64(S3_CKSUM_CRC64NVME, check, 9, b64), 0);
	assert_string_equal(b64, "rosUhgp5mIg=");
	/* The empty object, as S3 documents it. */
	assert_int_equal(s3_cksum_b64(S3_CKSUM_CRC32C, "", 0, b64), 0);
	assert_string_equal(b64, "AAAAAA==");
	assert_int_equal(s3_cksum_b64(S3_CKSUM_SHA256, "", 0, b64), 0);
	assert_string_equal(b64, "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
	assert_int_equal(s3_cksum_b64(S3_CKSUM_NONE, "", 0, b64), EINVAL);
}

/* Bit by bit, straight from the definition. */
static uint64_t crc64nvme_bitwise(const unsigned char *p, size_t len)
{
	uint64_t c = ~0ull;
	size_t i;
	int k;

	for (i = 0; i < len; i++) {
		c ^= p[i];
		for (k = 0; k < 8; k++) {
			c = (c & 1) ? (c >> 1) ^ 0x9A6C9329AC4BC9B5ull : c >> 1;
		}
	}
	return ~c;
}

static void test_pieces_and_alignment(void **state)
{
	unsigned char buf[4099];
	size_t i, cut, off;

	(void)state;
	srand(7);
	for (i = 0; i < sizeof(buf); i++) {
		buf[i] = (unsigned char)rand();
	}
	for (off = 0; off < 8; off++) {
		size_t len = sizeof(buf) - off;
		uint64_t whole = s3_crc64nvme(0, buf + off, len);
		uint32_t whole32 = s3_crc32c(0, buf + off, len);

		assert_true(whole == crc64nvme_bitwise(buf + off, len));
		for (cut = 0; cut <= len; cut += 517) {
			assert_true(s3_crc64nvme(s3_crc64nvme(0, buf + off, cut),
						 buf + off + cut,
						 len - cut) == whole);
			assert_int_equal(s3_crc32c(s3_crc32c(0, buf + off, cut),
						   buf + off + cut, len - cut),
					 whole32);
		}
	}
}

static void test_headers_and_matching(void **state)
{
	char b64[S3_CKSUM_B64_MAX];
	const char *h = "X-Amz-Checksum-CRC64NVME";

	(void)state;
	assert_int_equal(s3_cksum_of_header(h, strlen(h)), S3_CKSUM_CRC64NVME);
	assert_int_equal(s3_cksum_of_header("x-amz-checksum-crc32c", 21),
			 S3_CKSUM_CRC32C);
	assert_int_equal(s3_cksum_of_header("x-amz-checksum-crc32", 20),
			 S3_CKSUM_CRC32);
	assert_int_equal(s3_cksum_of_header("x-amz-checksum-type", 19),
			 S3_CKSUM_NONE);
	assert_string_equal(s3_cksum_header(S3_CKSUM_SHA1),
			    "x-amz-checksum-sha1");
	assert_int_equal(s3_cksum_b64(S3_CKSUM_SHA1, check, 9, b64), 0);
	assert_true(s3_cksum_matches(S3_CKSUM_SHA1, b64, check, 9));
	assert_false(s3_cksum_matches(S3_CKSUM_SHA1, b64, check, 8));
	assert_false(s3_cksum_matches(S3_CKSUM_SHA1, NULL, check, 9));
	assert_false(s3_cksum_matches(S3_CKSUM_NONE, "", check, 9));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_check_values),
		cmocka_unit_test(test_pieces_and_alignment),
		cmocka_unit_test(test_headers_and_matching),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
