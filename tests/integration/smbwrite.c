/*
 * smbwrite: the writes smbclient has no command for, with libsmbclient.
 *
 *   smbwrite URL write OFFSET FILE   write FILE's bytes at OFFSET
 *   smbwrite URL append FILE         write FILE's bytes at the end
 *   smbwrite URL truncate SIZE       set the size
 *   smbwrite URL create FILE [OFFSET FILE2]
 *                                    create or truncate the file, write
 *                                    FILE from 0, then (after
 *                                    SMBWRITE_PAUSE seconds) FILE2 at OFFSET,
 *                                    then cut it to SMBWRITE_CUT bytes if set
 *
 * The file must exist but for create.  Credentials from SMB_USER / SMB_PASS.  With
 * SMBWRITE_HOLD=N the file stays open N seconds after the write.  Exits 1
 * with the error on stderr, including an error from close (where the
 * upload happens).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libsmbclient.h>

static void auth(const char *srv, const char *shr, char *wg, int wglen,
		 char *un, int unlen, char *pw, int pwlen)
{
	(void)srv, (void)shr, (void)wg, (void)wglen;
	snprintf(un, (size_t)unlen, "%s", getenv("SMB_USER") ?: "guest");
	snprintf(pw, (size_t)pwlen, "%s", getenv("SMB_PASS") ?: "");
}

static int write_file(int fd, off_t off, const char *path)
{
	char buf[65536];
	int in = open(path, O_RDONLY);
	ssize_t n;

	if (in < 0 || smbc_lseek(fd, off, SEEK_SET) < 0) {
		return -1;
	}
	while ((n = read(in, buf, sizeof(buf))) > 0) {
		if (smbc_write(fd, buf, (size_t)n) != n) {
			close(in);
			return -1;
		}
	}
	close(in);
	return n < 0 ? -1 : 0;
}

int main(int argc, char **argv)
{
	int fd, ret = -1;

	if (argc < 4) {
		fprintf(stderr, "usage: smbwrite URL write OFFSET FILE | "
				"append FILE | truncate SIZE | "
				"create FILE [OFFSET FILE2]\n");
		return 2;
	}
	if (smbc_init(auth, 0) != 0) {
		perror("smbc_init");
		return 1;
	}
	fd = smbc_open(argv[1], strcmp(argv[2], "create") == 0 ?
				O_RDWR | O_CREAT | O_TRUNC : O_RDWR, 0644);
	if (fd < 0) {
		fprintf(stderr, "open %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	if (strcmp(argv[2], "write") == 0 && argc == 5) {
		ret = write_file(fd, (off_t)strtoll(argv[3], NULL, 10), argv[4]);
	} else if (strcmp(argv[2], "append") == 0) {
		off_t end = smbc_lseek(fd, 0, SEEK_END);
		ret = end < 0 ? -1 : write_file(fd, end, argv[3]);
	} else if (strcmp(argv[2], "create") == 0 &&
		   (argc == 4 || argc == 6)) {
		ret = write_file(fd, 0, argv[3]);
		if (ret == 0 && argc == 6) {
			if (getenv("SMBWRITE_PAUSE") != NULL) {
				sleep((unsigned)atoi(getenv("SMBWRITE_PAUSE")));
			}
			ret = write_file(fd, (off_t)strtoll(argv[4], NULL, 10),
					 argv[5]);
		}
		if (ret == 0 && getenv("SMBWRITE_CUT") != NULL) {
			ret = smbc_ftruncate(fd, (off_t)strtoll(
					getenv("SMBWRITE_CUT"), NULL, 10));
		}
	} else if (strcmp(argv[2], "truncate") == 0) {
		ret = smbc_ftruncate(fd, (off_t)strtoll(argv[3], NULL, 10));
	} else {
		fprintf(stderr, "smbwrite: unknown operation %s\n", argv[2]);
		return 2;
	}
	if (ret != 0) {
		fprintf(stderr, "%s: %s\n", argv[2], strerror(errno));
		smbc_close(fd);
		return 1;
	}
	if (getenv("SMBWRITE_HOLD") != NULL) {
		sleep((unsigned)atoi(getenv("SMBWRITE_HOLD")));
	}
	if (smbc_close(fd) != 0) {
		fprintf(stderr, "close: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}
