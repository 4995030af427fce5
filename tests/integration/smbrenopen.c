/*
 * smbrenopen: rename a file while this client has it open and written, on
 * the same SMB connection, as Windows' MoveFileEx (and so os.replace on a
 * mapped drive) may: the file is open with DELETE access and
 * FILE_SHARE_DELETE, so smbd lets a rename through while it is open.
 *
 *   smbrenopen SHARE_URL SRC DST FILE
 *
 * Creates SRC (or truncates it: an existing SRC keeps its object until
 * then), writes the first half of FILE, renames SRC to DST (replacing
 * DST), writes the second half through the same handle, closes, prints
 * "closed".  SMBRENOPEN_PAUSE=N waits N seconds before the rename;
 * SMBRENOPEN_HOLD=N prints "renamed" once the second half is written and
 * waits N seconds before the close (a test kills smbd meanwhile).
 *
 * libsmbclient opens files without FILE_SHARE_DELETE and has no handle
 * rename, so the tool takes the connection libsmbclient made (the first
 * fields of struct _SMBCFILE, as in smbflush.c) and calls Samba's libsmb
 * (liblibsmb-samba4, which libsmbclient is built on) directly; these
 * calls speak SMB2/3.  Credentials from SMB_USER / SMB_PASS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libsmbclient.h>

struct smbcfile_head {
	int cli_fd;
	void *targetcli;
};

/* From source3/libsmb/proto.h of the installed Samba (4.17). */
uint32_t cli_ntcreate(void *cli, const char *fname, uint32_t create_flags,
		      uint32_t access, uint32_t attributes, uint32_t share,
		      uint32_t disposition, uint32_t options,
		      uint8_t security_flags, uint16_t *fnum, void *cr);
uint32_t cli_writeall(void *cli, uint16_t fnum, uint16_t mode,
		      const uint8_t *buf, off_t offset, size_t size,
		      size_t *written);
uint32_t cli_rename(void *cli, const char *src, const char *dst,
		    bool replace);
uint32_t cli_close(void *cli, uint16_t fnum);

#define ACCESS (0x1 /* read data */ | 0x2 /* write data */ | \
		0x80 /* read attributes */ | 0x10000 /* DELETE */)
#define SHARE_ALL 0x7
#define FILE_OVERWRITE_IF 5
#define FILE_NON_DIRECTORY_FILE 0x40

static void auth(const char *srv, const char *shr, char *wg, int wglen,
		 char *un, int unlen, char *pw, int pwlen)
{
	(void)srv, (void)shr, (void)wg, (void)wglen;
	snprintf(un, (size_t)unlen, "%s", getenv("SMB_USER") ?: "guest");
	snprintf(pw, (size_t)pwlen, "%s", getenv("SMB_PASS") ?: "");
}

static int fail(const char *what, uint32_t status)
{
	fprintf(stderr, "%s: NT status 0x%08x\n", what, status);
	return 1;
}

int main(int argc, char **argv)
{
	SMBCCTX *ctx;
	SMBCFILE *f;
	void *cli;
	char *url;
	uint8_t *data;
	size_t half, done;
	struct stat sb;
	uint16_t fnum;
	uint32_t status;
	int in;

	if (argc != 5) {
		fprintf(stderr, "usage: smbrenopen SHARE_URL SRC DST FILE\n");
		return 2;
	}
	in = open(argv[4], O_RDONLY);
	if (in < 0 || fstat(in, &sb) != 0 ||
	    (data = malloc((size_t)sb.st_size + 1)) == NULL ||
	    read(in, data, (size_t)sb.st_size) != sb.st_size) {
		fprintf(stderr, "%s: %s\n", argv[4], strerror(errno));
		return 1;
	}
	close(in);
	half = (size_t)sb.st_size / 2;

	ctx = smbc_new_context();
	if (ctx == NULL) {
		perror("smbc_new_context");
		return 1;
	}
	smbc_setFunctionAuthData(ctx, auth);
	if (smbc_init_context(ctx) == NULL ||
	    asprintf(&url, "%s/%s", argv[1], argv[2]) < 0) {
		perror("smbc_init_context");
		return 1;
	}
	/*
	 * Only to get a connection: libsmbclient's own open of SRC, which
	 * leaves an existing SRC as it is (no write, so no upload).
	 */
	f = smbc_getFunctionOpen(ctx)(ctx, url, O_RDWR | O_CREAT, 0644);
	if (f == NULL) {
		fprintf(stderr, "open %s: %s\n", url, strerror(errno));
		return 1;
	}
	cli = ((struct smbcfile_head *)f)->targetcli;
	smbc_getFunctionClose(ctx)(ctx, f);

	status = cli_ntcreate(cli, argv[2], 0, ACCESS, 0x80, SHARE_ALL,
			      FILE_OVERWRITE_IF, FILE_NON_DIRECTORY_FILE, 0,
			      &fnum, NULL);
	if (status != 0) {
		return fail("create", status);
	}
	status = cli_writeall(cli, fnum, 0, data, 0, half, &done);
	if (status != 0) {
		return fail("write", status);
	}
	if (getenv("SMBRENOPEN_PAUSE") != NULL) {
		sleep((unsigned)atoi(getenv("SMBRENOPEN_PAUSE")));
	}
	status = cli_rename(cli, argv[2], argv[3], true);
	if (status != 0) {
		return fail("rename", status);
	}
	status = cli_writeall(cli, fnum, 0, data + half, (off_t)half,
			      (size_t)sb.st_size - half, &done);
	if (status != 0) {
		return fail("write after the rename", status);
	}
	if (getenv("SMBRENOPEN_HOLD") != NULL) {
		printf("renamed\n");
		fflush(stdout);
		sleep((unsigned)atoi(getenv("SMBRENOPEN_HOLD")));
	}
	status = cli_close(cli, fnum);
	if (status != 0) {
		return fail("close", status);
	}
	printf("closed\n");
	smbc_free_context(ctx, 1);
	return 0;
}
