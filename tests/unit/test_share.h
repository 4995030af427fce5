/*
 * A share (struct bfs_conn) on a fresh cache folder, as the module's
 * connect sets one up, for the tests of lib/bfs_file and
 * lib/bfs_namespace: index, journal and writeback in a root-owned 0700
 * folder, listings served from the index as they are ('metadata ttl =
 * -1'), and an S3 client whose endpoint refuses connections, so that a
 * call that would reach S3 fails at once and is counted
 * (test_share_s3_requests).
 *
 * test_engine_start runs a stand-in for bucketfsd on the folder's socket:
 * it answers HELLO with its pid, as the engine does, and reads whatever
 * it is told afterwards.  A close or rename handed to it is journalled in
 * its name; it uploads nothing.
 */
#ifndef BUCKETFS_TEST_SHARE_H
#define BUCKETFS_TEST_SHARE_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <talloc.h>
#include <tevent.h>

#include "test_tmpdir.h"

#include "bfs_cache.h"
#include "bfs_engine.h"
#include "bfs_file.h"
#include "bfs_index.h"
#include "bfs_journal.h"
#include "bfs_proto.h"
#include "bfs_share.h"
#include "bfs_writeback.h"
#include "s3_client.h"
#include "s3_dirlist.h"

/* smb.conf of the test share: what is not here takes its default. */
static const char *test_share_parm(void *priv, const char *name)
{
	static const char *const conf[][2] = {
		{"metadata ttl", "-1"},
		{"max file size", "1M"},
		{"writeback limit", "0"},
	};
	size_t i;

	(void)priv;
	for (i = 0; i < sizeof(conf) / sizeof(conf[0]); i++) {
		if (strcmp(conf[i][0], name) == 0) {
			return conf[i][1];
		}
	}
	return NULL;
}

/* http://127.0.0.1:PORT where nothing listens (the port was just free). */
static char *test_refusing_endpoint(TALLOC_CTX *t)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t len = sizeof(sa);
	int s = socket(AF_INET, SOCK_STREAM, 0);

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (s == -1 || bind(s, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    getsockname(s, (struct sockaddr *)&sa, &len) != 0) {
		abort();
	}
	close(s);
	return talloc_asprintf(t, "http://127.0.0.1:%u", ntohs(sa.sin_port));
}

/*
 * An empty listing of prefix in the index, as S3 gives for a folder with
 * nothing in it or for a name under which there is nothing.
 */
static int test_share_listed(struct bfs_conn *bc, const char *prefix)
{
	struct s3_dir *d = s3_dir_new(NULL, prefix);
	uint64_t since;
	int ret = ENOMEM;

	if (d != NULL) {
		s3_dir_finish(d);
		ret = bfs_index_change_seq(bc->index, &since);
	}
	if (ret == 0) {
		ret = bfs_index_store_dir(bc->index, d, time(NULL), since);
	}
	talloc_free(d);
	return ret;
}

/* Folder name in folder parent_prefix ("" or ends in '/'): listed, empty. */
__attribute__((unused))
static int test_share_mkdir(struct bfs_conn *bc, const char *parent_prefix,
			    const char *name)
{
	struct bfs_entry e = {.name = (char *)name, .is_dir = true,
			      .mtime = time(NULL)};
	char *prefix = talloc_asprintf(NULL, "%s%s/", parent_prefix, name);
	int ret = prefix != NULL ? bfs_index_put(bc->index, parent_prefix, &e) :
				   ENOMEM;

	if (ret == 0) {
		ret = test_share_listed(bc, prefix);
	}
	talloc_free(prefix);
	return ret;
}

/* A share of bucket "bkt" on a new cache folder; NULL on failure. */
static struct bfs_conn *test_share_new(TALLOC_CTX *t)
{
	struct bfs_conn *bc = talloc_zero(t, struct bfs_conn);
	const char *why = NULL;

	if (bc == NULL) {
		return NULL;
	}
	bc->service = "test";
	bc->prefix = "";
	bc->params = (struct bfs_psrc){.get = test_share_parm};
	bc->cfg = (struct s3_client_config){
		.endpoint = test_refusing_endpoint(bc), .region = "us-east-1",
		.bucket = "bkt", .path_style = true, .anonymous = true,
		.connect_timeout_ms = 1000, .request_timeout_ms = 2000,
	};
	bc->block_size = 1 << 20;
	bc->dir_rename_max = 3;
	bc->upload = (struct bfs_upload_params){.part_size = 5 << 20,
						.parallel = 1};
	bc->cache_dir = test_tmpdir(bc, "bfs-share-test");
	bc->sync_ev = tevent_context_init(bc);
	if (bc->cache_dir == NULL || bc->sync_ev == NULL ||
	    !bfs_follow_config(bc)) {
		return NULL;
	}
	bc->s3 = s3_client_new(bc, bc->sync_ev, &bc->cfg);
	if (bc->s3 == NULL ||
	    bfs_index_open(bc, talloc_asprintf(bc, "%s/index", bc->cache_dir),
			   "bkt", &bc->index, &why) != 0 ||
	    bfs_journal_open(bc, talloc_asprintf(bc, "%s/journal",
						 bc->cache_dir),
			     &bc->journal, &why) != 0 ||
	    bfs_wb_new(bc, bc->sync_ev, bc->s3, bc->index, bc->journal,
		       talloc_asprintf(bc, "%s/staging", bc->cache_dir),
		       &bc->upload, &bc->wb) != 0) {
		return NULL;
	}
	/* The root, listed and empty. */
	return test_share_listed(bc, "") == 0 ? bc : NULL;
}

/*
 * An object of `size` bytes named `name` in the share's root (in the
 * index, as a listing would have it), opened for reading; NULL if either
 * fails.
 */
__attribute__((unused))
static struct bfs_fh *test_share_opened(struct bfs_conn *bc, const char *name,
					uint64_t size)
{
	struct bfs_entry e = {.name = (char *)name, .size = size, .mtime = 5,
			      .etag = "\"E\""};
	struct bfs_fh *fh = NULL;

	if (bfs_index_put(bc->index, "", &e) != 0 ||
	    bfs_fh_open(bc, name, O_RDONLY, false, &fh) != 0) {
		return NULL;
	}
	return fh;
}

/* HTTP requests the share's S3 client sent (each one refused). */
static uint64_t test_share_s3_requests(const struct bfs_conn *bc)
{
	return s3_client_counters(bc->s3)->requests;
}

/*
 * What the stand-in grants a CLAIM (0: it takes none, as WELCOME says).
 * With claims it grants each CLAIM, asks for it back at once (REVOKE, as
 * if another reader came), and tells an UNCLAIM back as CHANGED of
 * "unclaimed:KEY", for the test to see on its connection.
 */
static uint64_t test_engine_claim_bytes;

static void test_engine_send(TALLOC_CTX *t, int c, const struct bfs_proto_msg *m)
{
	uint8_t *out;
	size_t len;

	if (bfs_proto_encode(t, m, &out, &len) != 0 ||
	    write(c, out, len) != (ssize_t)len) {
		_exit(1);
	}
}

/* The engine stand-in's side of one connection: WELCOME to a HELLO. */
static void test_engine_serve(int c)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_proto_buf in = {0};
	struct bfs_proto_msg *m;
	uint8_t buf[4096];
	ssize_t n;

	while ((n = read(c, buf, sizeof(buf))) > 0) {
		if (bfs_proto_buf_append(t, &in, buf, (size_t)n) != 0) {
			break;
		}
		while (bfs_proto_buf_take(t, &in, &m) == 0) {
			struct bfs_proto_msg w = {
				.type = BFS_PM_WELCOME, .id = m->id,
				.pid = (uint64_t)getpid(),
				.claim = test_engine_claim_bytes,
			};
			struct bfs_proto_msg d = {
				.type = BFS_PM_DONE, .id = m->id,
			};
			struct bfs_proto_msg r = {
				.type = BFS_PM_REVOKE, .key = m->key,
				.etag = m->etag,
			};
			struct bfs_proto_msg u = {
				.type = BFS_PM_CHANGED,
				.key = talloc_asprintf(t, "unclaimed:%s",
						       m->key ? m->key : ""),
			};

			if (m->type == BFS_PM_HELLO) {
				test_engine_send(t, c, &w);
			} else if (m->type == BFS_PM_CLAIM) {
				test_engine_send(t, c, &d);
				test_engine_send(t, c, &r);
			} else if (m->type == BFS_PM_UNCLAIM) {
				test_engine_send(t, c, &u);
			}
		}
	}
	talloc_free(t);
}

/*
 * Serve the cache folder's engine socket from a child until it is
 * killed (test_engine_stop); connect bc to it.  Its pid, or -1.
 */
static pid_t test_engine_start(struct bfs_conn *bc)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	pid_t pid;
	int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/" BFS_ENGINE_SOCKET,
		 bc->cache_dir);
	if (ls == -1 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    listen(ls, 4) != 0) {
		return -1;
	}
	pid = fork();
	if (pid == 0) {
		int c;

		/* A failed assertion skips test_engine_stop: die with us. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		while ((c = accept(ls, NULL, NULL)) != -1) {
			test_engine_serve(c);
			close(c);
		}
		_exit(0);
	}
	close(ls);
	bc->engine_ev = bc->sync_ev;
	if (pid == -1 || bfs_engine_connect(bc, bc->engine_ev, bc->cache_dir,
					    bc->service, NULL,
					    &bc->engine) != 0) {
		return -1;
	}
	return pid;
}

static void test_engine_stop(struct bfs_conn *bc, pid_t pid)
{
	TALLOC_FREE(bc->engine);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

/*
 * A share set up for reads as with an engine: the stand-in started
 * (granting claims of claim_bytes, 0 for none), the folder's cache opened
 * (claims fill it, for the engine to find) and the async reader made on
 * the engine's loop.  The stand-in's pid, or -1.
 */
__attribute__((unused))
static pid_t test_share_reading(struct bfs_conn *bc, uint64_t claim_bytes)
{
	const char *why = NULL;
	pid_t engine;

	test_engine_claim_bytes = claim_bytes;
	engine = test_engine_start(bc);
	test_engine_claim_bytes = 0;
	if (engine <= 0 ||
	    bfs_cache_open(bc, talloc_asprintf(bc, "%s/cache", bc->cache_dir),
			   1ULL << 30, bc->block_size, &bc->cache, &why) != 0 ||
	    bfs_conn_async_reader(bc, bc->engine_ev) == NULL) {
		return -1;
	}
	return engine;
}

#endif
