/*
 * smbread: read byte ranges of a file over SMB with libsmbclient, for tests
 * that need offsets smbclient cannot give.
 *
 *   smbread URL OFFSET LENGTH > out       one range
 *   smbread URL --random N SEED SRCFILE   N random ranges compared with the
 *                                         local source; prints a summary
 *
 * Credentials from SMB_USER / SMB_PASS.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libsmbclient.h>

static void auth(const char *srv, const char *shr, char *wg, int wglen,
		 char *un, int unlen, char *pw, int pwlen)
{
	(void)srv, (void)shr, (void)wg, (void)wglen;
	snprintf(un, (size_t)unlen, "%s", getenv("SMB_USER") ?: "guest");
	snprintf(pw, (size_t)pwlen, "%s", getenv("SMB_PASS") ?: "");
}

static ssize_t read_at(int fd, char *buf, size_t len, off_t off)
{
	size_t got = 0;

	if (smbc_lseek(fd, off, SEEK_SET) < 0) {
		return -1;
	}
	while (got < len) {
		ssize_t n = smbc_read(fd, buf + got, len - got);
		if (n < 0) {
			return -1;
		}
		if (n == 0) {
			break;
		}
		got += (size_t)n;
	}
	return (ssize_t)got;
}

int main(int argc, char **argv)
{
	int fd;

	if (argc < 4) {
		fprintf(stderr, "usage: smbread URL OFFSET LENGTH | "
				"smbread URL --random N SEED SRCFILE\n");
		return 2;
	}
	if (smbc_init(auth, 0) != 0) {
		perror("smbc_init");
		return 1;
	}
	fd = smbc_open(argv[1], O_RDONLY, 0);
	if (fd < 0) {
		fprintf(stderr, "smbread: open %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	if (strcmp(argv[2], "--random") == 0 && argc == 6) {
		long n = atol(argv[3]), i, bad = 0;
		unsigned seed = (unsigned)atol(argv[4]);
		int src = open(argv[5], O_RDONLY);
		struct stat sb;
		uint64_t bytes = 0;
		char *a, *b;

		if (src < 0 || fstat(src, &sb) != 0) {
			perror(argv[5]);
			return 1;
		}
		a = malloc(4 << 20);
		b = malloc(4 << 20);
		srand(seed);
		for (i = 0; i < n; i++) {
			/* Offsets anywhere, lengths up to 4 MiB, some past EOF. */
			off_t off = sb.st_size ? (off_t)(((uint64_t)rand() << 16 ^ (uint64_t)rand()) %
						  (uint64_t)(sb.st_size + 16)) : 0;
			size_t len = (size_t)rand() % ((i % 4 == 0) ? (4 << 20) : 70000) + 1;
			ssize_t want = pread(src, b, len, off), got;
			if (want < 0) {
				want = 0;
			}
			got = read_at(fd, a, len, off);
			if (got != want || memcmp(a, b, (size_t)want) != 0) {
				/* Where the bytes part, and how far they differ:
				 * a block's worth of zeros is not a shifted copy. */
				ssize_t first = -1, last = -1, k, zeros = 0;

				for (k = 0; k < got && k < want; k++) {
					if (a[k] != b[k]) {
						first = first < 0 ? k : first;
						last = k;
						zeros += a[k] == 0;
					}
				}
				fprintf(stderr, "smbread: mismatch at %jd+%zu: got %zd want %zd; "
					"bytes %jd..%jd of the file differ (%zd of them "
					"zero)\n", (intmax_t)off, len, got, want,
					(intmax_t)(first < 0 ? -1 : off + first),
					(intmax_t)(last < 0 ? -1 : off + last), zeros);
				bad++;
			}
			bytes += (uint64_t)(want > 0 ? want : 0);
		}
		printf("%ld ranges, %" PRIu64 " bytes compared, %ld mismatches\n", n,
		       bytes, bad);
		return bad ? 1 : 0;
	}
	{
		off_t off = (off_t)atoll(argv[2]);
		size_t len = (size_t)atoll(argv[3]);
		char *buf = malloc(len + 1);
		ssize_t got = read_at(fd, buf, len, off);
		if (got < 0) {
			fprintf(stderr, "smbread: read: %s\n", strerror(errno));
			return 1;
		}
		fwrite(buf, 1, (size_t)got, stdout);
	}
	smbc_close(fd);
	return 0;
}
