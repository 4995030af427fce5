/*
 * S3's additional checksums (see s3_checksum.h).
 */
#include "s3_checksum.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>

#include <isa-l/crc.h>
#include <openssl/evp.h>
#include <zlib.h>

static const struct {
	enum s3_cksum algo;
	const char *header;
} s3_cksums[] = {
	{S3_CKSUM_CRC32, "x-amz-checksum-crc32"},
	{S3_CKSUM_CRC32C, "x-amz-checksum-crc32c"},
	{S3_CKSUM_CRC64NVME, "x-amz-checksum-crc64nvme"},
	{S3_CKSUM_SHA1, "x-amz-checksum-sha1"},
	{S3_CKSUM_SHA256, "x-amz-checksum-sha256"},
};

enum s3_cksum s3_cksum_of_header(const char *name, size_t len)
{
	size_t i;

	for (i = 0; i < sizeof(s3_cksums) / sizeof(s3_cksums[0]); i++) {
		if (strlen(s3_cksums[i].header) == len &&
		    strncasecmp(s3_cksums[i].header, name, len) == 0) {
			return s3_cksums[i].algo;
		}
	}
	return S3_CKSUM_NONE;
}

const char *s3_cksum_header(enum s3_cksum a)
{
	size_t i;

	for (i = 0; i < sizeof(s3_cksums) / sizeof(s3_cksums[0]); i++) {
		if (s3_cksums[i].algo == a) {
			return s3_cksums[i].header;
		}
	}
	return NULL;
}

uint32_t s3_crc32c(uint32_t crc, const void *data, size_t len)
{
	const unsigned char *p = data;
	/* ISA-L works on the register before the final inversion. */
	uint32_t reg = ~crc;

	while (len > 0) {
		/* Its length is an int. */
		int n = len > (1u << 30) ? 1 << 30 : (int)len;

		reg = crc32_iscsi((unsigned char *)p, n, reg);
		p += n;
		len -= (size_t)n;
	}
	return ~reg;
}

/*
 * CRC-64/NVME: polynomial 0xAD93D23594C93659, reflected, initial value
 * and final XOR all ones (check value of "123456789": 0xAE8B14860A799888).
 * Slicing by eight: eight tables of 256 entries, built once.
 */
#define CRC64NVME_POLY_REFL 0x9A6C9329AC4BC9B5ULL

static uint64_t crc64nvme_table[8][256];
static pthread_once_t crc64nvme_once = PTHREAD_ONCE_INIT;

static void crc64nvme_init(void)
{
	unsigned i, k, t;

	for (i = 0; i < 256; i++) {
		uint64_t c = i;

		for (k = 0; k < 8; k++) {
			c = (c & 1) ? (c >> 1) ^ CRC64NVME_POLY_REFL : c >> 1;
		}
		crc64nvme_table[0][i] = c;
	}
	for (i = 0; i < 256; i++) {
		for (t = 1; t < 8; t++) {
			uint64_t c = crc64nvme_table[t - 1][i];

			crc64nvme_table[t][i] =
				(c >> 8) ^ crc64nvme_table[0][c & 0xff];
		}
	}
}

uint64_t s3_crc64nvme(uint64_t crc, const void *data, size_t len)
{
	const unsigned char *p = data;
	uint64_t c = ~crc;

	pthread_once(&crc64nvme_once, crc64nvme_init);
	while (len >= 8) {
		uint64_t w;

		memcpy(&w, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
		w = __builtin_bswap64(w);
#endif
		c ^= w;
		c = crc64nvme_table[7][c & 0xff] ^
		    crc64nvme_table[6][(c >> 8) & 0xff] ^
		    crc64nvme_table[5][(c >> 16) & 0xff] ^
		    crc64nvme_table[4][(c >> 24) & 0xff] ^
		    crc64nvme_table[3][(c >> 32) & 0xff] ^
		    crc64nvme_table[2][(c >> 40) & 0xff] ^
		    crc64nvme_table[1][(c >> 48) & 0xff] ^
		    crc64nvme_table[0][c >> 56];
		p += 8;
		len -= 8;
	}
	while (len-- > 0) {
		c = (c >> 8) ^ crc64nvme_table[0][(c ^ *p++) & 0xff];
	}
	return ~c;
}

int s3_cksum_b64(enum s3_cksum a, const void *data, size_t len,
		 char out[S3_CKSUM_B64_MAX])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0, i;

	switch (a) {
	case S3_CKSUM_CRC32: {
		uLong c = crc32(0L, Z_NULL, 0);
		const Bytef *p = data;
		size_t left = len;

		while (left > 0) {
			uInt k = left > (1u << 30) ? 1u << 30 : (uInt)left;

			c = crc32(c, p, k);
			p += k;
			left -= k;
		}
		for (i = 0; i < 4; i++) {
			md[i] = (unsigned char)(c >> (24 - 8 * i));
		}
		n = 4;
		break;
	}
	case S3_CKSUM_CRC32C: {
		uint32_t c = s3_crc32c(0, data, len);

		for (i = 0; i < 4; i++) {
			md[i] = (unsigned char)(c >> (24 - 8 * i));
		}
		n = 4;
		break;
	}
	case S3_CKSUM_CRC64NVME: {
		uint64_t c = s3_crc64nvme(0, data, len);

		for (i = 0; i < 8; i++) {
			md[i] = (unsigned char)(c >> (56 - 8 * i));
		}
		n = 8;
		break;
	}
	case S3_CKSUM_SHA1:
	case S3_CKSUM_SHA256:
		if (EVP_Digest(data, len, md, &n,
			       a == S3_CKSUM_SHA1 ? EVP_sha1() : EVP_sha256(),
			       NULL) != 1) {
			return ENOMEM;
		}
		break;
	default:
		return EINVAL;
	}
	EVP_EncodeBlock((unsigned char *)out, md, (int)n);
	return 0;
}

bool s3_cksum_matches(enum s3_cksum a, const char *value, const void *data,
		      size_t len)
{
	char want[S3_CKSUM_B64_MAX];

	return value != NULL && s3_cksum_b64(a, data, len, want) == 0 &&
	       strcmp(want, value) == 0;
}
