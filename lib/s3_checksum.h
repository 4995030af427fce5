/*
 * S3's additional checksums (x-amz-checksum-*): what a GET with checksum
 * mode says of a whole object's bytes, and what an upload may send.
 *
 * The value in a header is the base64 of the big-endian digest.  CRC32C
 * comes from Intel's ISA-L (libisal, with its hardware paths), CRC32 from
 * zlib, SHA-1 and SHA-256 from OpenSSL; CRC-64/NVME, which Debian 12's
 * ISA-L (2.30) lacks, is ours.
 */
#ifndef BUCKETFS_S3_CHECKSUM_H
#define BUCKETFS_S3_CHECKSUM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum s3_cksum {
	S3_CKSUM_NONE = 0,
	S3_CKSUM_CRC32,
	S3_CKSUM_CRC32C,
	S3_CKSUM_CRC64NVME,
	S3_CKSUM_SHA1,
	S3_CKSUM_SHA256,
};

/* Base64 of the largest digest (SHA-256), with its NUL. */
#define S3_CKSUM_B64_MAX 45

/* The algorithm a header names ("x-amz-checksum-crc32c"), or NONE. */
enum s3_cksum s3_cksum_of_header(const char *name, size_t len);
/* Its header name, or NULL for NONE. */
const char *s3_cksum_header(enum s3_cksum a);

/*
 * CRCs with the usual conventions (start from 0, feed pieces in order):
 * s3_crc32c(s3_crc32c(0, a, n), b, m) is the CRC of a then b.
 */
uint32_t s3_crc32c(uint32_t crc, const void *data, size_t len);
uint64_t s3_crc64nvme(uint64_t crc, const void *data, size_t len);

/* The header value of algorithm a over data: 0, or EINVAL for NONE. */
int s3_cksum_b64(enum s3_cksum a, const void *data, size_t len,
		 char out[S3_CKSUM_B64_MAX]);

/* Whether value (a header's) is algorithm a's over data. */
bool s3_cksum_matches(enum s3_cksum a, const char *value, const void *data,
		      size_t len);

#endif
