/*
 * smbflush: write a file over SMB, send an SMB2 FLUSH, and hold the file
 * open until told to close, so a test can look at S3 between the flush and
 * the close.
 *
 *   smbflush URL FILE     create/truncate URL, write FILE's bytes, flush,
 *                         print "flushed", wait for a line on stdin, close
 *
 * libsmbclient has no flush call, so this takes the connection and file
 * number of the open file from libsmbclient's file handle and calls
 * Samba's cli_flush() (exported by the installed liblibsmb-samba4, the
 * library libsmbclient itself uses).  The two fields read are the first of
 * struct _SMBCFILE in source3/include/libsmb_internal.h of the installed
 * Samba (4.17), whose headers the build prepares.  cli_flush() speaks
 * SMB1 only (4.17), so the tool negotiates NT1 and the test server allows
 * it; smbd turns SMB1 and SMB2 flushes alike into SMB_VFS_FSYNC_SEND, the
 * module's flush.
 * Credentials from SMB_USER / SMB_PASS.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libsmbclient.h>

struct smbcfile_head {
	int cli_fd;
	void *targetcli;
};

/* NTSTATUS is a 32-bit code in production builds of Samba. */
uint32_t cli_flush(void *mem_ctx, void *cli, uint16_t fnum);

static void auth(const char *srv, const char *shr, char *wg, int wglen,
		 char *un, int unlen, char *pw, int pwlen)
{
	(void)srv, (void)shr, (void)wg, (void)wglen;
	snprintf(un, (size_t)unlen, "%s", getenv("SMB_USER") ?: "guest");
	snprintf(pw, (size_t)pwlen, "%s", getenv("SMB_PASS") ?: "");
}

int main(int argc, char **argv)
{
	SMBCCTX *ctx;
	SMBCFILE *f;
	struct smbcfile_head *h;
	char buf[65536], line[16];
	uint32_t status;
	ssize_t n;
	int in;

	if (argc != 3) {
		fprintf(stderr, "usage: smbflush URL FILE\n");
		return 2;
	}
	ctx = smbc_new_context();
	smbc_setFunctionAuthData(ctx, auth);
	smbc_setOptionProtocols(ctx, "NT1", "NT1");
	if (ctx == NULL || smbc_init_context(ctx) == NULL) {
		perror("smbc_init_context");
		return 1;
	}
	f = smbc_getFunctionOpen(ctx)(ctx, argv[1], O_RDWR | O_CREAT | O_TRUNC,
				     0644);
	in = open(argv[2], O_RDONLY);
	if (f == NULL || in < 0) {
		fprintf(stderr, "open: %s\n", strerror(errno));
		return 1;
	}
	while ((n = read(in, buf, sizeof(buf))) > 0) {
		if (smbc_getFunctionWrite(ctx)(ctx, f, buf, (size_t)n) != n) {
			fprintf(stderr, "write: %s\n", strerror(errno));
			return 1;
		}
	}
	close(in);
	h = (struct smbcfile_head *)f;
	status = cli_flush(NULL, h->targetcli, (uint16_t)h->cli_fd);
	if (status != 0) {
		fprintf(stderr, "flush: NT status 0x%08x\n", status);
		return 1;
	}
	printf("flushed\n");
	fflush(stdout);
	if (fgets(line, sizeof(line), stdin) == NULL) {
		/* the test went away: close all the same */
	}
	if (smbc_getFunctionClose(ctx)(ctx, f) != 0) {
		fprintf(stderr, "close: %s\n", strerror(errno));
		return 1;
	}
	smbc_free_context(ctx, 1);
	return 0;
}
