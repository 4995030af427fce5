/*
 * loader: small files read over one SMB connection the way a PyTorch
 * DataLoader with W workers reads them through the Linux kernel client:
 * W samples in flight, each an open, the reads of the whole file and a
 * close, the next sample starting as soon as one ends.
 *
 *   loader smb://HOST[:PORT]/SHARE[/DIR] W N [PREFIX | @NAMES]
 *
 * The samples are DIR/PREFIX00000 to DIR/PREFIX<N-1> (five digits, as
 * s3tool putmany names objects; PREFIX is "f" unless given and may name
 * folders, "small/f"), or the first N names in the file NAMES, one a
 * line, relative to DIR.  Prints one line:
 *
 *   files=F bytes=B seconds=S files_per_s=X p50_ms=Y p99_ms=Z errors=E
 *
 * files and bytes count the samples read whole; seconds run from the first
 * open sent to the last answer; a sample's latency from its open sent to
 * its close answered (the first sample is opened once before, untimed, to
 * connect).  A failed sample is named on stderr (the first ten) and
 * counted, and any makes the exit status 1; so do the samples not tried
 * once the connection is lost.  Credentials from SMB_USER / SMB_PASS.
 *
 * libsmbclient has no asynchronous calls, so, as tests/integration/
 * smbrenopen.c does, the tool takes the connection libsmbclient made and
 * drives Samba's libsmb (liblibsmb-samba4, which libsmbclient is built on)
 * with tevent_req chains.  A connection reads its socket with the event
 * context of its first outstanding request, so every request here uses
 * the one context of the process.  SMB2 or later only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libsmbclient.h>
#include <talloc.h>
#include <tevent.h>

/* NTSTATUS is a 32-bit code in production builds of Samba. */
typedef uint32_t NTSTATUS;
#define NT_STATUS_END_OF_FILE 0xC0000011u
#define NT_STATUS_NO_MEMORY 0xC0000017u
#define NT_STATUS_IO_TIMEOUT 0xC00000B5u

struct cli_state;
struct smbXcli_conn;

/*
 * The first fields of struct _SMBCFILE (source3/include/libsmb_internal.h)
 * and of struct cli_state (source3/include/client.h) of the installed
 * Samba (4.17), up to the connection; main() checks the connection found
 * against the URL's host.
 */
struct smbcfile_head {
	int cli_fd;
	struct cli_state *targetcli;
};

struct cli_state_head {
	void *prev, *next;
	int rap_error;
	NTSTATUS raw_status;
	bool map_dos_errors;
	char *server_type, *server_os, *server_domain, *share, *dev;
	int timeout, initialised, win95;
	uint32_t server_posix_capabilities, requested_posix_capabilities;
	bool backup_intent;
	void *pipe_list;
	bool use_oplocks;
	struct smbXcli_conn *conn;
};

/* libcli/smb/smb2_create_blob.h: cli_ntcreate_recv() copies it whole. */
struct smb_create_returns {
	uint8_t oplock_level;
	uint32_t create_action;
	uint64_t creation_time, last_access_time, last_write_time, change_time;
	uint64_t allocation_size, end_of_file;
	uint32_t file_attributes;
};

/* From source3/libsmb/proto.h and libcli/smb/smbXcli_base.h (4.17). */
struct tevent_req *cli_ntcreate_send(
	TALLOC_CTX *mem_ctx, struct tevent_context *ev, struct cli_state *cli,
	const char *fname, uint32_t create_flags, uint32_t desired_access,
	uint32_t file_attributes, uint32_t share_access,
	uint32_t create_disposition, uint32_t create_options,
	uint32_t impersonation_level, uint8_t security_flags);
NTSTATUS cli_ntcreate_recv(struct tevent_req *req, uint16_t *pfnum,
			   struct smb_create_returns *cr);
struct tevent_req *cli_read_send(TALLOC_CTX *mem_ctx,
				 struct tevent_context *ev,
				 struct cli_state *cli, uint16_t fnum,
				 char *buf, off_t offset, size_t size);
NTSTATUS cli_read_recv(struct tevent_req *req, size_t *received);
struct tevent_req *cli_close_send(TALLOC_CTX *mem_ctx,
				  struct tevent_context *ev,
				  struct cli_state *cli, uint16_t fnum);
NTSTATUS cli_close_recv(struct tevent_req *req);
int smbXcli_conn_protocol(struct smbXcli_conn *conn);
bool smbXcli_conn_is_connected(struct smbXcli_conn *conn);
const char *smbXcli_conn_remote_name(struct smbXcli_conn *conn);
uint32_t smb2cli_conn_max_read_size(struct smbXcli_conn *conn);
void smb2cli_conn_set_max_credits(struct smbXcli_conn *conn,
				  uint16_t max_credits);
uint16_t smb2cli_conn_get_cur_credits(struct smbXcli_conn *conn);
const char *nt_errstr(NTSTATUS status); /* libsamba-errors */

#define PROTOCOL_SMB2_02 6
/* A read-only open as the kernel client sends it. */
#define GENERIC_READ 0x80000000u
#define FILE_SHARE_ALL 0x7u
#define FILE_OPEN 1u
#define FILE_NON_DIRECTORY_FILE 0x40u
#define SMB2_IMPERSONATION_IMPERSONATION 2u
#define MAX_CREDITS 8192 /* smbd's default "smb2 max credits" */
#define ERRORS_SHOWN 10

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- one sample: open, read to the end, close ------------------------- */

struct sample_state {
	struct tevent_context *ev;
	struct cli_state *cli;
	const char *path;
	uint32_t max_read;
	uint16_t fnum;
	uint8_t *buf;
	uint64_t size, done, start_ns;
	const char *step;   /* what was under way, for the message */
	NTSTATUS status;    /* a read's failure, kept while the close runs */
};

static void sample_opened(struct tevent_req *subreq);
static void sample_read(struct tevent_req *req);
static void sample_read_done(struct tevent_req *subreq);
static void sample_close(struct tevent_req *req);
static void sample_closed(struct tevent_req *subreq);

static struct tevent_req *sample_send(TALLOC_CTX *mem_ctx,
				      struct tevent_context *ev,
				      struct cli_state *cli,
				      struct smbXcli_conn *conn,
				      const char *path)
{
	struct tevent_req *req, *subreq;
	struct sample_state *state;

	req = tevent_req_create(mem_ctx, &state, struct sample_state);
	if (req == NULL) {
		return NULL;
	}
	*state = (struct sample_state){
		.ev = ev, .cli = cli, .path = path, .step = "open",
		.max_read = smb2cli_conn_max_read_size(conn),
		.start_ns = now_ns(),
	};
	subreq = cli_ntcreate_send(state, ev, cli, path, 0, GENERIC_READ, 0,
				   FILE_SHARE_ALL, FILE_OPEN,
				   FILE_NON_DIRECTORY_FILE,
				   SMB2_IMPERSONATION_IMPERSONATION, 0);
	if (tevent_req_nomem(subreq, req)) {
		return tevent_req_post(req, ev);
	}
	tevent_req_set_callback(subreq, sample_opened, req);
	return req;
}

static void sample_opened(struct tevent_req *subreq)
{
	struct tevent_req *req =
		tevent_req_callback_data(subreq, struct tevent_req);
	struct sample_state *state =
		tevent_req_data(req, struct sample_state);
	struct smb_create_returns cr = {0};
	NTSTATUS status;

	status = cli_ntcreate_recv(subreq, &state->fnum, &cr);
	TALLOC_FREE(subreq);
	if (tevent_req_error(req, status)) {
		return;
	}
	/* The size the open reported is what the kernel client reads. */
	state->size = cr.end_of_file;
	state->buf = talloc_array(state, uint8_t, state->size);
	if (tevent_req_nomem(state->buf, req)) {
		return;
	}
	state->step = "read";
	sample_read(req);
}

/*
 * One read out at a time, of at most the negotiated maximum:
 * cli_read_send() shortens it further to the credits there are.
 */
static void sample_read(struct tevent_req *req)
{
	struct sample_state *state =
		tevent_req_data(req, struct sample_state);
	struct tevent_req *subreq;
	uint64_t n = state->size - state->done;

	if (n == 0) {
		sample_close(req);
		return;
	}
	subreq = cli_read_send(state, state->ev, state->cli, state->fnum,
			       (char *)state->buf + state->done,
			       (off_t)state->done,
			       n < state->max_read ? n : state->max_read);
	if (tevent_req_nomem(subreq, req)) {
		return;
	}
	tevent_req_set_callback(subreq, sample_read_done, req);
}

static void sample_read_done(struct tevent_req *subreq)
{
	struct tevent_req *req =
		tevent_req_callback_data(subreq, struct tevent_req);
	struct sample_state *state =
		tevent_req_data(req, struct sample_state);
	size_t got = 0;

	state->status = cli_read_recv(subreq, &got);
	TALLOC_FREE(subreq);
	if (state->status == 0 && got == 0) {
		state->step = "read (the file ended before the size its "
			      "open reported)";
		state->status = NT_STATUS_END_OF_FILE;
	}
	if (state->status != 0) {
		/* Closed all the same, or smbd keeps the handle. */
		sample_close(req);
		return;
	}
	state->done += got;
	sample_read(req);
}

static void sample_close(struct tevent_req *req)
{
	struct sample_state *state =
		tevent_req_data(req, struct sample_state);
	struct tevent_req *subreq;

	subreq = cli_close_send(state, state->ev, state->cli, state->fnum);
	if (tevent_req_nomem(subreq, req)) {
		return;
	}
	tevent_req_set_callback(subreq, sample_closed, req);
}

static void sample_closed(struct tevent_req *subreq)
{
	struct tevent_req *req =
		tevent_req_callback_data(subreq, struct tevent_req);
	struct sample_state *state =
		tevent_req_data(req, struct sample_state);
	NTSTATUS status;

	status = cli_close_recv(subreq);
	TALLOC_FREE(subreq);
	if (tevent_req_error(req, state->status)) {
		return;   /* the read's failure is the one to report */
	}
	state->step = "close";
	if (tevent_req_error(req, status)) {
		return;
	}
	tevent_req_done(req);
}

/* On failure, *what names the sample and the step that failed. */
static NTSTATUS sample_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
			    uint64_t *nbytes, uint64_t *latency_ns,
			    char **what)
{
	struct sample_state *state =
		tevent_req_data(req, struct sample_state);
	enum tevent_req_state rs;
	uint64_t err;

	*latency_ns = now_ns() - state->start_ns;
	if (tevent_req_is_error(req, &rs, &err)) {
		*what = talloc_asprintf(mem_ctx, "%s: %s", state->path,
					state->step);
		if (rs == TEVENT_REQ_USER_ERROR) {
			return (NTSTATUS)err;
		}
		return rs == TEVENT_REQ_TIMED_OUT ? NT_STATUS_IO_TIMEOUT
						  : NT_STATUS_NO_MEMORY;
	}
	*nbytes = state->size;
	return 0;
}

/* ---- the run: W samples in flight ------------------------------------- */

struct run {
	char **paths;   /* relative to the share, with '\' */
	int n, next, inflight, finished, files, failed;
	uint64_t bytes, *latency_ns;
};

static void sample_finished(struct tevent_req *req)
{
	struct run *run = tevent_req_callback_data(req, struct run);
	uint64_t nbytes = 0, ns;
	char *what = NULL;
	NTSTATUS status;

	status = sample_recv(req, run, &nbytes, &ns, &what);
	TALLOC_FREE(req);
	run->inflight--;
	run->finished++;
	if (status != 0) {
		if (run->failed++ < ERRORS_SHOWN) {
			fprintf(stderr, "loader: %s: %s\n",
				what != NULL ? what : "?", nt_errstr(status));
		}
		TALLOC_FREE(what);
		return;
	}
	run->latency_ns[run->files++] = ns;
	run->bytes += nbytes;
}

/* smb://HOST[:PORT]/SHARE[/DIR]: HOST, the URL of SHARE, DIR or "". */
static bool parse_url(TALLOC_CTX *mem_ctx, const char *url, char **host,
		      char **share_url, char **dir)
{
	const char *h = url + 6, *share = strchr(h, '/'), *d;
	size_t len;

	if (strncmp(url, "smb://", 6) != 0 || share == NULL || share == h ||
	    share[1] == '\0' || share[1] == '/') {
		return false;
	}
	d = share + 1 + strcspn(share + 1, "/");
	*host = talloc_strndup(mem_ctx, h, strcspn(h, ":/"));
	*share_url = talloc_strndup(mem_ctx, url, (size_t)(d - url));
	*dir = talloc_strdup(mem_ctx, d + strspn(d, "/"));
	if (*host == NULL || *share_url == NULL || *dir == NULL) {
		return false;
	}
	for (len = strlen(*dir); len > 0 && (*dir)[len - 1] == '/'; len--) {
		(*dir)[len - 1] = '\0';
	}
	return true;
}

/* The next line that is not empty, without its end. */
static bool next_line(FILE *in, char **line, size_t *cap)
{
	while (getline(line, cap, in) > 0) {
		(*line)[strcspn(*line, "\r\n")] = '\0';
		if ((*line)[0] != '\0') {
			return true;
		}
	}
	return false;
}

/*
 * The samples' paths in the share, with '/': DIR/PREFIX00000.., or DIR/
 * and the first N lines of the file NAMES.  NULL after a message.
 */
static char **sample_paths(TALLOC_CTX *mem_ctx, const char *dir, int n,
			   const char *names)
{
	char **paths = talloc_zero_array(mem_ctx, char *, n);
	const char *sep = dir[0] != '\0' ? "/" : "";
	char *line = NULL;
	size_t cap = 0;
	FILE *in = NULL;
	int i;

	if (names[0] == '@' && (in = fopen(names + 1, "r")) == NULL) {
		fprintf(stderr, "loader: %s: %s\n", names + 1,
			strerror(errno));
		return NULL;
	}
	for (i = 0; paths != NULL && i < n; i++) {
		if (in == NULL) {
			paths[i] = talloc_asprintf(paths, "%s%s%s%05d", dir,
						   sep, names, i);
		} else if (next_line(in, &line, &cap)) {
			paths[i] = talloc_asprintf(paths, "%s%s%s", dir, sep,
						   line);
		} else {
			fprintf(stderr, "loader: %s: fewer than %d names\n",
				names + 1, n);
			TALLOC_FREE(paths);
			break;
		}
		if (paths[i] == NULL) {
			fprintf(stderr, "loader: out of memory\n");
			TALLOC_FREE(paths);
		}
	}
	free(line);
	if (in != NULL) {
		fclose(in);
	}
	return paths;
}

static void auth(const char *srv, const char *shr, char *wg, int wglen,
		 char *un, int unlen, char *pw, int pwlen)
{
	(void)srv, (void)shr, (void)wg, (void)wglen;
	snprintf(un, (size_t)unlen, "%s", getenv("SMB_USER") ?: "guest");
	snprintf(pw, (size_t)pwlen, "%s", getenv("SMB_PASS") ?: "");
}

/*
 * libsmbclient connects and authenticates; its open (and close, no read)
 * of the first sample is how to reach the connection.
 */
static struct cli_state *connect_share(SMBCCTX **pctx, const char *url,
				       const char *host)
{
	SMBCCTX *ctx = smbc_new_context();
	struct cli_state *cli;
	const char *remote;
	SMBCFILE *f;

	if (ctx == NULL) {
		perror("loader: smbc_new_context");
		return NULL;
	}
	*pctx = ctx;
	smbc_setFunctionAuthData(ctx, auth);
	/* A sample slower than this fails, with NT_STATUS_IO_TIMEOUT. */
	smbc_setTimeout(ctx, 60000);
	if (smbc_init_context(ctx) == NULL) {
		perror("loader: smbc_init_context");
		return NULL;
	}
	f = smbc_getFunctionOpen(ctx)(ctx, url, O_RDONLY, 0);
	if (f == NULL) {
		fprintf(stderr, "loader: open %s: %s\n", url, strerror(errno));
		return NULL;
	}
	cli = ((struct smbcfile_head *)f)->targetcli;
	smbc_getFunctionClose(ctx)(ctx, f);
	remote = smbXcli_conn_remote_name(((struct cli_state_head *)cli)->conn);
	if (remote == NULL || strcasecmp(remote, host) != 0) {
		fprintf(stderr, "loader: libsmbclient's connection is not "
				"laid out as in Samba 4.17\n");
		return NULL;
	}
	return cli;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	TALLOC_CTX *mem = talloc_new(NULL);
	struct run *run = talloc_zero(mem, struct run);
	struct tevent_context *ev = tevent_context_init(mem);
	struct smbXcli_conn *conn;
	struct tevent_req *req;
	struct cli_state *cli;
	char *host, *share_url, *dir, *url, *c;
	SMBCCTX *ctx = NULL;
	uint64_t t0, ns, p50 = 0, p99 = 0;
	int w, i, errors;

	if (run == NULL || ev == NULL) {
		fprintf(stderr, "loader: out of memory\n");
		return 1;
	}
	if (argc < 4 || argc > 5 || (w = atoi(argv[2])) < 1 ||
	    (run->n = atoi(argv[3])) < 1 ||
	    !parse_url(mem, argv[1], &host, &share_url, &dir)) {
		fprintf(stderr, "usage: loader smb://HOST[:PORT]/SHARE[/DIR] "
				"W N [PREFIX | @NAMES]\n");
		return 2;
	}
	run->paths = sample_paths(run, dir, run->n, argc == 5 ? argv[4] : "f");
	run->latency_ns = talloc_array(run, uint64_t, run->n);
	if (run->paths == NULL || run->latency_ns == NULL ||
	    (url = talloc_asprintf(mem, "%s/%s", share_url,
				   run->paths[0])) == NULL ||
	    (cli = connect_share(&ctx, url, host)) == NULL) {
		return 1;
	}
	conn = ((struct cli_state_head *)cli)->conn;
	if (smbXcli_conn_protocol(conn) < PROTOCOL_SMB2_02) {
		fprintf(stderr, "loader: the server speaks SMB1 only\n");
		return 1;
	}
	for (i = 0; i < run->n; i++) {
		for (c = run->paths[i]; *c != '\0'; c++) {
			*c = *c == '/' ? '\\' : *c;
		}
	}
	/*
	 * libsmb asks for credits up to 31 (a Windows client's first ask),
	 * and a request sent with no credit left fails (INTERNAL_ERROR)
	 * rather than waits.  With the ceiling at smbd's maximum, smbd
	 * grants what W samples need, as the kernel client gets them, and a
	 * sample starts only with a credit free.  Then none runs short: a
	 * sample has one request out at a time, and each answer gives back
	 * at least what its request was charged.
	 */
	smb2cli_conn_set_max_credits(conn, MAX_CREDITS);

	t0 = now_ns();
	while (run->finished < run->n) {
		bool up = smbXcli_conn_is_connected(conn);

		if (!up && run->inflight == 0) {
			fprintf(stderr, "loader: connection lost, %d samples "
					"not tried\n", run->n - run->next);
			break;
		}
		while (up && run->inflight < w && run->next < run->n &&
		       smb2cli_conn_get_cur_credits(conn) > 0) {
			req = sample_send(run, ev, cli, conn,
					  run->paths[run->next++]);
			if (req == NULL) {
				fprintf(stderr, "loader: out of memory\n");
				return 1;
			}
			tevent_req_set_callback(req, sample_finished, run);
			run->inflight++;
		}
		if (run->inflight == 0) {
			fprintf(stderr, "loader: no SMB2 credits\n");
			return 1;
		}
		if (tevent_loop_once(ev) != 0) {
			perror("loader: tevent_loop_once");
			return 1;
		}
	}
	ns = now_ns() - t0;

	qsort(run->latency_ns, (size_t)run->files, sizeof(uint64_t), cmp_u64);
	if (run->files > 0) {
		/* Nearest rank, as bench/compare.py takes them. */
		p50 = run->latency_ns[run->files / 2];
		p99 = run->latency_ns[(int64_t)run->files * 99 / 100];
	}
	if (run->failed > ERRORS_SHOWN) {
		fprintf(stderr, "loader: %d more failed samples not shown\n",
			run->failed - ERRORS_SHOWN);
	}
	/* The samples never tried, after a lost connection, failed too. */
	errors = run->n - run->files;
	printf("files=%d bytes=%" PRIu64 " seconds=%.6f files_per_s=%.1f "
	       "p50_ms=%.3f p99_ms=%.3f errors=%d\n",
	       run->files, run->bytes, ns / 1e9, run->files / (ns / 1e9),
	       p50 / 1e6, p99 / 1e6, errors);
	smbc_free_context(ctx, 1);
	talloc_free(mem);
	return errors > 0 ? 1 : 0;
}
