/*
 * randread: a DataLoader-like reader over SMB (libsmbclient): reads of SIZE
 * bytes at random 4 KiB-aligned offsets of one file for SECONDS, and writes
 * each read's latency (microseconds, one per line) to OUT.
 *
 *   randread URL SIZE SECONDS SEED OUT
 *
 * Prints "OPS BYTES ELAPSED_S".  Each process is one SMB client with its
 * own connection (so one smbd process), as each DataLoader worker would
 * be.  Credentials from SMB_USER / SMB_PASS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <libsmbclient.h>

static void auth(const char *srv, const char *shr, char *wg, int wglen,
		 char *un, int unlen, char *pw, int pwlen)
{
	(void)srv, (void)shr, (void)wg, (void)wglen;
	snprintf(un, (size_t)unlen, "%s", getenv("SMB_USER") ?: "guest");
	snprintf(pw, (size_t)pwlen, "%s", getenv("SMB_PASS") ?: "");
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	SMBCCTX *ctx;
	SMBCFILE *f;
	struct stat sb;
	size_t size, cap = 1 << 16, n = 0, i;
	double secs, start, end, t0;
	uint64_t slots, bytes = 0;
	uint32_t *lat;
	char *buf;
	FILE *out;

	if (argc != 6) {
		fprintf(stderr, "usage: randread URL SIZE SECONDS SEED OUT\n");
		return 2;
	}
	size = (size_t)strtoull(argv[2], NULL, 0);
	secs = atof(argv[3]);
	srandom((unsigned)atoi(argv[4]));
	buf = malloc(size);
	lat = malloc(cap * sizeof(*lat));
	ctx = smbc_new_context();
	if (buf == NULL || lat == NULL || ctx == NULL) {
		perror("randread");
		return 1;
	}
	smbc_setFunctionAuthData(ctx, auth);
	if (smbc_init_context(ctx) == NULL) {
		perror("smbc_init_context");
		return 1;
	}
	f = smbc_getFunctionOpen(ctx)(ctx, argv[1], O_RDONLY, 0);
	if (f == NULL || smbc_getFunctionFstat(ctx)(ctx, f, &sb) != 0 ||
	    (uint64_t)sb.st_size < size) {
		fprintf(stderr, "%s: %s\n", argv[1],
			f == NULL ? strerror(errno) : "too small");
		return 1;
	}
	slots = ((uint64_t)sb.st_size - size) / 4096 + 1;
	start = now_s();
	end = start + secs;
	while ((t0 = now_s()) < end) {
		uint64_t off = ((uint64_t)random() << 31 | (uint64_t)random()) %
			       slots * 4096;
		size_t got = 0;

		if (smbc_getFunctionLseek(ctx)(ctx, f, (off_t)off, SEEK_SET) < 0) {
			perror("lseek");
			return 1;
		}
		while (got < size) {
			ssize_t r = smbc_getFunctionRead(ctx)(ctx, f, buf + got,
							     size - got);
			if (r <= 0) {
				fprintf(stderr, "read at %llu: %s\n",
					(unsigned long long)off,
					r == 0 ? "end of file" : strerror(errno));
				return 1;
			}
			got += (size_t)r;
		}
		if (n == cap) {
			cap *= 2;
			lat = realloc(lat, cap * sizeof(*lat));
			if (lat == NULL) {
				perror("realloc");
				return 1;
			}
		}
		lat[n++] = (uint32_t)((now_s() - t0) * 1e6);
		bytes += size;
	}
	secs = now_s() - start;
	out = fopen(argv[5], "w");
	if (out == NULL) {
		perror(argv[5]);
		return 1;
	}
	for (i = 0; i < n; i++) {
		fprintf(out, "%u\n", lat[i]);
	}
	fclose(out);
	printf("%zu %llu %.3f\n", n, (unsigned long long)bytes, secs);
	smbc_getFunctionClose(ctx)(ctx, f);
	smbc_free_context(ctx, 1);
	return 0;
}
