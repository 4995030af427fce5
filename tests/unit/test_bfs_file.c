/*
 * lib/bfs_file: opens and their staging files, writes, the size limit,
 * and what a close and a flush leave in the journal and the index.  No S3
 * server: the share's endpoint refuses connections, and the tests check
 * that what must not need S3 did not ask it.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <dirent.h>
#include <tevent.h>

#include "test_share.h"

#include "bfs_file.h"

static struct bfs_conn *share(TALLOC_CTX *t)
{
	struct bfs_conn *bc = test_share_new(t);

	assert_non_null(bc);
	return bc;
}

static char *staging_path(TALLOC_CTX *t, struct bfs_conn *bc,
			  const char *name)
{
	return talloc_asprintf(t, "%s/staging/%s", bc->cache_dir, name);
}

static void write_at(struct bfs_conn *bc, struct bfs_fh *fh, const char *s,
		     off_t off)
{
	size_t done = 0;

	assert_int_equal(bfs_fh_write(bc, fh, s, strlen(s), off, NULL, &done),
			 0);
	assert_int_equal(done, strlen(s));
}

/* What the file's descriptor reads from offset 0, as a string. */
static char *read_all(TALLOC_CTX *t, int fd)
{
	char *buf = talloc_zero_array(t, char, 64);
	ssize_t n = pread(fd, buf, 63, 0);

	assert_true(n >= 0);
	return buf;
}

/*
 * A created file is in the index at once (pending) and staged in the
 * cache folder; writes go to the staging file, and the open's size
 * follows it, through truncates and allocations.
 */
static void test_create_stages_and_writes(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	struct bfs_fh *fh = NULL;
	struct bfs_entry e;
	struct stat sb;
	size_t done = 0;

	(void)state;
	assert_int_equal(bfs_fh_open(bc, "a.txt", O_RDWR | O_CREAT, false,
				     &fh), 0);
	assert_true(fh->writable && fh->dirty);
	assert_ptr_equal(bc->open_files, fh);
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "a.txt", &e), 0);
	assert_true(e.flags & BFS_ENT_PENDING);
	assert_null(e.etag);
	assert_true(fh->stage_fd != -1);
	assert_non_null(fh->stage_name);
	assert_int_equal(stat(staging_path(t, bc, fh->stage_name), &sb), 0);
	assert_true(S_ISREG(sb.st_mode));
	assert_int_equal(bfs_fh_size(fh), 0);

	write_at(bc, fh, "hello", 0);
	assert_int_equal(bfs_fh_size(fh), 5);
	write_at(bc, fh, "x", 10);
	assert_int_equal(bfs_fh_size(fh), 11);
	assert_int_equal(stat(staging_path(t, bc, fh->stage_name), &sb), 0);
	assert_int_equal(sb.st_size, 11);
	assert_string_equal(read_all(t, fh->stage_fd), "hello");
	assert_int_equal(bfs_fh_write(bc, fh, "y", 1, -1, NULL, &done),
			 EINVAL);

	assert_int_equal(bfs_fh_truncate(bc, fh, 3), 0);
	assert_int_equal(bfs_fh_size(fh), 3);
	assert_int_equal(bfs_fh_allocate(bc, fh, 0, 8), 0);
	assert_int_equal(bfs_fh_size(fh), 8);
	assert_int_equal(bfs_fh_allocate(bc, fh, 0, 4), 0); /* never shrinks */
	assert_int_equal(bfs_fh_size(fh), 8);
	assert_int_equal(test_share_s3_requests(bc), 0);

	/* Gone from the staging table with the open. */
	talloc_free(fh);
	assert_null(bc->open_files);
	talloc_free(t);
}

/*
 * A write in two halves (smbd's worker thread copies between them): the
 * lent descriptor writes the staging file, the end marks the open
 * changed; the checks are the whole write's, and a failed copy changes
 * nothing and says why.
 */
static void test_write_in_two_halves(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	struct bfs_fh *fh = NULL, *ro = NULL;
	uint64_t wgen;
	int fd = -1;

	(void)state;
	assert_int_equal(bfs_fh_open(bc, "two.txt", O_RDWR | O_CREAT, false,
				     &fh), 0);
	wgen = fh->wgen;
	assert_int_equal(bfs_fh_write_begin(bc, fh, 5, 0, &fd), 0);
	assert_true(fd >= 0 && fd != fh->stage_fd);
	assert_int_equal(pwrite(fd, "hello", 5, 0), 5);
	assert_int_equal(close(fd), 0);
	assert_int_equal(bfs_fh_write_end(bc, fh, 0, 5, 0), 0);
	assert_true(fh->dirty && fh->wgen > wgen);
	assert_int_equal(bfs_fh_size(fh), 5);
	assert_string_equal(read_all(t, fh->stage_fd), "hello");

	/* A copy that failed: its errno, the open unchanged. */
	wgen = fh->wgen;
	assert_int_equal(bfs_fh_write_end(bc, fh, 5, -1, ENOSPC), ENOSPC);
	assert_int_equal(fh->wgen, wgen);

	/* The whole write's checks. */
	fd = -1;
	assert_int_equal(bfs_fh_write_begin(bc, fh, 1, -1, &fd), EINVAL);
	assert_int_equal(bfs_fh_write_begin(bc, fh, 1,
					    (off_t)bc->max_file_size, &fd),
			 ENOSPC);
	assert_int_equal(bfs_fh_write_begin(bc, NULL, 1, 0, &fd), EBADF);
	assert_int_equal(bfs_fh_open(bc, "two.txt", O_RDONLY, false, &ro), 0);
	assert_int_equal(bfs_fh_write_begin(bc, ro, 1, 0, &fd), EBADF);
	assert_int_equal(fd, -1);
	assert_int_equal(test_share_s3_requests(bc), 0);
	talloc_free(t);
}

/* What an open refuses: each rule's errno, and nothing left behind. */
static void test_open_rules(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	struct bfs_fh *fh = NULL, *root = NULL;
	size_t done = 0;

	(void)state;
	assert_int_equal(test_share_mkdir(bc, "", "d"), 0);
	assert_int_equal(bfs_fh_open(bc, "a", O_WRONLY | O_CREAT, false, &fh),
			 0);
	talloc_free(fh);
	assert_int_equal(bfs_fh_open(bc, "a", O_WRONLY | O_CREAT | O_EXCL,
				     false, &fh), EEXIST);
	assert_int_equal(bfs_fh_open(bc, "missing", O_RDONLY, false, &fh),
			 ENOENT);
	assert_int_equal(bfs_fh_open(bc, "d", O_WRONLY, false, &fh), EISDIR);
	assert_int_equal(bfs_fh_open(bc, "a", O_RDONLY | O_DIRECTORY, false,
				     &fh), ENOTDIR);
	/* S3 lists nothing under these (the index has its word for it). */
	assert_int_equal(test_share_listed(bc, "nodir/"), 0);
	assert_int_equal(test_share_listed(bc, "a/"), 0);
	assert_int_equal(bfs_fh_open(bc, "nodir/b", O_WRONLY | O_CREAT, false,
				     &fh), ENOENT);
	assert_int_equal(bfs_fh_open(bc, "a/b", O_WRONLY | O_CREAT, false,
				     &fh), ENOTDIR);
	assert_null(bc->open_files);

	/* Writes need an open for writing, of a file. */
	assert_int_equal(bfs_fh_open(bc, "a", O_RDONLY, false, &fh), 0);
	assert_false(fh->writable);
	assert_int_equal(bfs_fh_write(bc, fh, "x", 1, 0, NULL, &done), EBADF);
	assert_int_equal(bfs_fh_truncate(bc, fh, 0), EBADF);
	assert_int_equal(bfs_fh_open(bc, "", O_RDONLY, false, &root), 0);
	assert_true(root->is_dir);
	assert_int_equal(bfs_fh_write(bc, root, "x", 1, 0, NULL, &done),
			 EISDIR);
	assert_int_equal(bfs_fh_write(bc, NULL, "x", 1, 0, NULL, &done),
			 EBADF);
	assert_int_equal(test_share_s3_requests(bc), 0);
	talloc_free(t);
}

/*
 * Two opens of one key in a connection write one staging file: the
 * second finds the first as its twin and sees its bytes, and a read-only
 * open reads them too (read-your-writes).  A path reference reads nothing.
 */
static void test_staged_twin(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	struct bfs_fh *a = NULL, *b = NULL, *r = NULL, *ref = NULL;

	(void)state;
	assert_int_equal(bfs_fh_open(bc, "f", O_WRONLY | O_CREAT, false, &a),
			 0);
	write_at(bc, a, "from a", 0);
	assert_int_equal(bfs_fh_open(bc, "f", O_RDWR, false, &b), 0);
	assert_int_equal(b->stage_fd, -1); /* staged at its first write */
	assert_ptr_equal(bfs_staged_twin(bc, "f", b), a);
	assert_null(bfs_staged_twin(bc, "f", a));
	assert_null(bfs_staged_twin(bc, "other", NULL));

	write_at(bc, b, "FROM", 0);
	assert_string_equal(b->stage_name, a->stage_name);
	assert_string_equal(read_all(t, a->stage_fd), "FROM a");
	assert_ptr_equal(bfs_staged_twin(bc, "f", a), b);

	assert_int_equal(bfs_fh_open(bc, "f", O_RDONLY, false, &r), 0);
	assert_false(r->writable);
	assert_true(r->stage_fd != -1);
	assert_string_equal(read_all(t, r->stage_fd), "FROM a");
	assert_int_equal(bfs_fh_open(bc, "f", O_RDONLY, true, &ref), 0);
	assert_int_equal(ref->stage_fd, -1);

	/* A deleted open is nobody's twin. */
	b->deleted = true;
	assert_null(bfs_staged_twin(bc, "f", a));
	talloc_free(t);
}

/*
 * Another close of key journalled (this process's pid, as a close of
 * another open): a staging file holding "pending" and its PUT record.
 */
static void journal_a_close(TALLOC_CTX *t, struct bfs_conn *bc,
			    const char *key)
{
	struct bfs_jrec rec = {.key = (char *)key, .op = BFS_J_PUT,
			       .size = 7, .pid = getpid()};
	int fd;

	assert_int_equal(bfs_wb_stage_new(bc->wb, t, &fd, &rec.staging), 0);
	assert_int_equal(write(fd, "pending", 7), 7);
	close(fd);
	assert_int_equal(bfs_journal_put(bc->journal, &rec), 0);
}

/* Files in the staging folder. */
static unsigned staging_files(struct bfs_conn *bc)
{
	char *dir = talloc_asprintf(NULL, "%s/staging", bc->cache_dir);
	DIR *d = opendir(dir);
	struct dirent *de;
	unsigned n = 0;

	assert_non_null(d);
	while ((de = readdir(d)) != NULL) {
		n += de->d_name[0] != '.';
	}
	closedir(d);
	talloc_free(dir);
	return n;
}

/*
 * The first writes of two opens of one key, staged off the caller's loop
 * (bfs_fh_stage_send): one after the other, the second taking the first's
 * staging file, which starts from the journalled upload's bytes.  An
 * object whose bytes S3 must give (here it cannot) fails with nothing left
 * in the staging folder and the open unstaged.
 */
static void test_stagings_off_the_loop_queue_and_share_one_file(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	struct tevent_context *ev = tevent_context_init(t);
	struct bfs_entry e = {.name = "s", .mtime = 1, .size = 7,
			      .flags = BFS_ENT_PENDING};
	struct bfs_entry g = {.name = "g", .mtime = 1, .size = 5,
			      .etag = "\"e1\""};
	struct bfs_fh *a = NULL, *b = NULL, *c = NULL;
	struct tevent_req *ra, *rb, *rc;
	unsigned before;

	(void)state;
	assert_non_null(ev);
	journal_a_close(t, bc, "s");
	assert_int_equal(bfs_index_put(bc->index, "", &e), 0);
	assert_int_equal(bfs_fh_open(bc, "s", O_RDWR, false, &a), 0);
	assert_int_equal(bfs_fh_open(bc, "s", O_RDWR, false, &b), 0);
	/* Writers stage at their first write. */
	assert_int_equal(a->stage_fd, -1);
	assert_int_equal(b->stage_fd, -1);
	before = staging_files(bc);

	ra = bfs_fh_stage_send(t, ev, bc, a);
	rb = bfs_fh_stage_send(t, ev, bc, b);
	assert_non_null(ra);
	assert_non_null(rb);
	assert_true(tevent_req_is_in_progress(ra)); /* waits for the loop */
	assert_true(tevent_req_poll(rb, ev));
	assert_false(tevent_req_is_in_progress(ra));
	assert_int_equal(bfs_fh_stage_recv(ra), 0);
	assert_int_equal(bfs_fh_stage_recv(rb), 0);
	assert_true(a->stage_fd != -1 && b->stage_fd != -1);
	assert_string_equal(a->stage_name, b->stage_name);
	assert_string_equal(read_all(t, b->stage_fd), "pending");
	assert_int_equal(staging_files(bc), before + 1);
	assert_int_equal(test_share_s3_requests(bc), 0);

	/* Bytes only S3 has, which it cannot give: nothing staged. */
	assert_int_equal(bfs_index_put(bc->index, "", &g), 0);
	assert_int_equal(bfs_fh_open(bc, "g", O_RDWR, false, &c), 0);
	assert_int_equal(c->stage_fd, -1);
	rc = bfs_fh_stage_send(t, ev, bc, c);
	assert_non_null(rc);
	assert_true(tevent_req_poll(rc, ev));
	assert_int_not_equal(bfs_fh_stage_recv(rc), 0);
	assert_int_equal(c->stage_fd, -1);
	assert_int_equal(staging_files(bc), before + 1);
	talloc_free(t);
}

/*
 * Another process's close journalled key's upload: a read-only open here
 * reads its staging file until S3 has it.
 */
static void test_open_reads_a_journalled_upload(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	struct bfs_entry e = {.name = "p", .mtime = 1,
			      .flags = BFS_ENT_PENDING};
	struct bfs_fh *fh = NULL;

	(void)state;
	journal_a_close(t, bc, "p");
	assert_int_equal(bfs_index_put(bc->index, "", &e), 0);
	assert_int_equal(bfs_fh_open(bc, "p", O_RDONLY, false, &fh), 0);
	assert_true(fh->stage_fd != -1);
	assert_string_equal(read_all(t, fh->stage_fd), "pending");
	talloc_free(fh);
	/* Settled in S3 (an ETag): S3's bytes. */
	e.etag = "\"e1\"";
	e.flags = 0;
	assert_int_equal(bfs_index_put(bc->index, "", &e), 0);
	assert_int_equal(bfs_fh_open(bc, "p", O_RDONLY, false, &fh), 0);
	assert_int_equal(fh->stage_fd, -1);
	talloc_free(t);
}

/*
 * A journalled close whose staging file cannot be opened: refused, not
 * read from S3 without an ETag (S3 has the version before it).  A file
 * being written elsewhere (no close journalled yet) opens as before.
 */
static void test_open_of_a_journalled_upload_never_reads_s3_unversioned(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	struct bfs_entry e = {.name = "q", .mtime = 1, .size = 7,
			      .flags = BFS_ENT_PENDING};
	struct bfs_jrec rec = {.key = "q", .op = BFS_J_PUT, .size = 7,
			       .staging = "w-1-gone"};
	struct bfs_fh *fh = NULL;

	(void)state;
	assert_int_equal(bfs_index_put(bc->index, "", &e), 0);
	/* Being written by another client: no record, opens. */
	assert_int_equal(bfs_fh_open(bc, "q", O_RDONLY, false, &fh), 0);
	assert_int_equal(fh->stage_fd, -1);
	/*
	 * It reads what S3 has without an ETag: under an id of this open's
	 * own, so that no later open takes its bytes for what S3 has then.
	 */
	{
		struct bfs_fh *again = NULL;
		struct bfs_cache_id unnamed;

		bfs_cache_make_id(bc->cfg.bucket, fh->key, "", bc->block_size,
				  &unnamed);
		assert_int_equal(bfs_fh_open(bc, "q", O_RDONLY, false, &again),
				 0);
		assert_memory_not_equal(fh->obj.id.b, again->obj.id.b,
					sizeof(fh->obj.id.b));
		assert_memory_not_equal(fh->obj.id.b, unnamed.b,
					sizeof(unnamed.b));
		talloc_free(again);
	}
	TALLOC_FREE(fh);
	/* Closed, journalled, its staging file gone: refused. */
	rec.pid = getpid();
	assert_int_equal(bfs_journal_put(bc->journal, &rec), 0);
	assert_int_equal(bfs_fh_open(bc, "q", O_RDONLY, false, &fh), ESTALE);
	assert_null(fh);
	talloc_free(t);
}

/*
 * 'bucketfs:max file size' (1M here): no write, truncate or allocation
 * past it, each ENOSPC with the file as it was; up to it is fine.
 */
static void test_max_file_size(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	struct bfs_fh *fh = NULL;
	size_t done = 0;

	(void)state;
	assert_int_equal(bc->max_file_size, 1 << 20);
	assert_int_equal(bfs_fh_open(bc, "big", O_WRONLY | O_CREAT, false,
				     &fh), 0);
	write_at(bc, fh, "ab", 0);
	assert_int_equal(bfs_fh_write(bc, fh, "xy", 2, (1 << 20) - 1, NULL,
				      &done), ENOSPC);
	assert_int_equal(bfs_fh_truncate(bc, fh, (1 << 20) + 1), ENOSPC);
	assert_int_equal(bfs_fh_allocate(bc, fh, 1 << 20, 1), ENOSPC);
	assert_int_equal(bfs_fh_size(fh), 2);
	write_at(bc, fh, "z", (1 << 20) - 1);
	assert_int_equal(bfs_fh_size(fh), 1 << 20);
	assert_int_equal(bfs_fh_truncate(bc, fh, 1 << 20), 0);
	talloc_free(t);
}

/*
 * `close = local`: the close journals the upload in the engine's name and
 * shows the new size in the index, pending, and returns without S3; the
 * staging file is the engine's now.
 */
static void test_close_hands_over(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	pid_t engine = test_engine_start(bc);
	struct bfs_fh *fh = NULL;
	struct bfs_jrec rec;
	struct bfs_entry e;
	char *name;

	(void)state;
	assert_true(engine > 0);
	assert_int_equal(test_share_mkdir(bc, "", "run"), 0);
	assert_int_equal(bfs_fh_open(bc, "run/ckpt", O_WRONLY | O_CREAT, false,
				     &fh), 0);
	write_at(bc, fh, "abc", 0);
	name = talloc_strdup(t, fh->stage_name);
	assert_int_equal(bfs_fh_close(bc, fh), 0);
	assert_int_equal(fh->stage_fd, -1);
	assert_false(fh->dirty);

	assert_int_equal(bfs_journal_get(bc->journal, t, "run/ckpt", &rec), 0);
	assert_int_equal(rec.op, BFS_J_PUT);
	assert_int_equal(rec.pid, engine);
	assert_int_equal(rec.size, 3);
	assert_string_equal(rec.staging, name);
	assert_false(rec.started);
	assert_int_equal(access(staging_path(t, bc, name), F_OK), 0);
	assert_int_equal(bfs_index_lookup(bc->index, t, "run/", "ckpt", &e),
			 0);
	assert_true(e.flags & BFS_ENT_PENDING);
	assert_int_equal(e.size, 3);
	assert_int_equal(test_share_s3_requests(bc), 0);
	talloc_free(fh);
	test_engine_stop(bc, engine);
	talloc_free(t);
}

/*
 * No engine, and S3 away: the close fails, and what it promised is
 * journalled in this process's name with the error, its staging file
 * kept and the index entry pending, for the next recovery.
 */
static void test_failed_close_stays_journalled(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	struct bfs_fh *fh = NULL;
	struct bfs_jrec rec;
	struct bfs_entry e;
	char *name;

	(void)state;
	assert_int_equal(bfs_fh_open(bc, "f", O_WRONLY | O_CREAT, false, &fh),
			 0);
	write_at(bc, fh, "12345", 0);
	name = talloc_strdup(t, fh->stage_name);
	assert_int_not_equal(bfs_fh_close(bc, fh), 0);
	assert_true(test_share_s3_requests(bc) > 0);
	assert_true(fh->dirty);

	assert_int_equal(bfs_journal_get(bc->journal, t, "f", &rec), 0);
	assert_int_equal(rec.op, BFS_J_PUT);
	assert_int_equal(rec.pid, getpid());
	assert_int_equal(rec.size, 5);
	assert_string_equal(rec.staging, name);
	assert_int_not_equal(rec.last_error, 0);
	assert_int_equal(access(staging_path(t, bc, name), F_OK), 0);
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "f", &e), 0);
	assert_true(e.flags & BFS_ENT_PENDING);
	assert_int_equal(e.size, 5);
	talloc_free(t);
}

/*
 * A flush through the engine hands it a copy of the staging file (the
 * client writes on); its answer makes the file clean only if nothing was
 * written since the copy.
 */
static void test_flush_hands_over_a_snapshot(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	pid_t engine = test_engine_start(bc);
	struct bfs_fh *fh = NULL, *twin = NULL;
	struct bfs_jrec rec;
	char *snap = NULL, *path;
	bool here = true;
	uint64_t wgen;
	int fd;

	(void)state;
	assert_true(engine > 0);
	assert_int_equal(bfs_fh_open(bc, "f", O_WRONLY | O_CREAT, false, &fh),
			 0);
	write_at(bc, fh, "v1", 0);
	assert_int_equal(bfs_fh_open(bc, "f", O_WRONLY, false, &twin), 0);
	write_at(bc, twin, "V", 0);
	wgen = bfs_fh_write_gen(bc, fh);
	assert_int_equal(bfs_fh_flush_hand_over(bc, fh, t, &snap, &here), 0);
	assert_false(here);
	assert_string_not_equal(snap, fh->stage_name);
	assert_int_equal(bfs_journal_get(bc->journal, t, "f", &rec), 0);
	assert_int_equal(rec.pid, engine);
	assert_string_equal(rec.staging, snap);
	assert_int_equal(rec.size, 2);
	path = staging_path(t, bc, snap);
	fd = open(path, O_RDONLY);
	assert_true(fd != -1);
	assert_string_equal(read_all(t, fd), "V1");
	close(fd);

	/* Written since, through the other open: both still dirty. */
	write_at(bc, twin, "v2", 0);
	assert_int_equal(bfs_fh_flushed(bc, fh, 0, wgen, snap, NULL), 0);
	assert_true(fh->dirty);
	assert_true(twin->dirty);
	/* Written since through this one: still dirty. */
	wgen = bfs_fh_write_gen(bc, fh);
	write_at(bc, fh, "v3", 0);
	assert_int_equal(bfs_fh_flushed(bc, fh, 0, wgen, snap, NULL), 0);
	assert_true(fh->dirty);
	/* Nothing since: clean, with S3's ETag, and so is the twin. */
	assert_int_equal(bfs_fh_flushed(bc, fh, 0, bfs_fh_write_gen(bc, fh),
					snap, talloc_strdup(t, "\"e\"")), 0);
	assert_false(fh->dirty);
	assert_false(twin->dirty);
	assert_string_equal(fh->etag, "\"e\"");
	assert_ptr_equal(talloc_parent(fh->etag), fh);
	/* The engine went away: the client is told of an I/O error. */
	assert_int_equal(bfs_fh_flushed(bc, fh, EPIPE, bfs_fh_write_gen(bc, fh),
					snap, NULL), EIO);
	assert_int_equal(test_share_s3_requests(bc), 0);
	test_engine_stop(bc, engine);
	talloc_free(t);
}

/*
 * A flush's snapshot is clean only if no open sharing the staging file
 * changed it since, even where another open closed meanwhile (a count
 * of changes summed over the opens fell back to its old value then).
 */
static void test_a_change_after_another_open_closed_keeps_the_file_dirty(
	void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	struct bfs_fh *a = NULL, *b = NULL;
	uint64_t gen;

	(void)state;
	assert_int_equal(bfs_fh_open(bc, "g", O_WRONLY | O_CREAT, false, &a),
			 0);
	assert_int_equal(bfs_fh_open(bc, "g", O_WRONLY, false, &b), 0);
	write_at(bc, b, "b1", 0);
	write_at(bc, b, "b2", 0);
	write_at(bc, a, "a1", 0);
	gen = bfs_fh_write_gen(bc, a); /* a flush's snapshot */
	talloc_free(b);			/* the other open goes */
	write_at(bc, a, "a2", 0);
	write_at(bc, a, "a3", 0);
	assert_int_equal(bfs_fh_flushed(bc, a, 0, gen, "snapshot", NULL), 0);
	assert_true(a->dirty);
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_create_stages_and_writes),
		cmocka_unit_test(test_open_rules),
		cmocka_unit_test(test_write_in_two_halves),
		cmocka_unit_test(test_staged_twin),
		cmocka_unit_test(test_open_reads_a_journalled_upload),
		cmocka_unit_test(test_open_of_a_journalled_upload_never_reads_s3_unversioned),
		cmocka_unit_test(test_max_file_size),
		cmocka_unit_test(test_close_hands_over),
		cmocka_unit_test(test_failed_close_stays_journalled),
		cmocka_unit_test(test_stagings_off_the_loop_queue_and_share_one_file),
		cmocka_unit_test(test_flush_hands_over_a_snapshot),
		cmocka_unit_test(
			test_a_change_after_another_open_closed_keeps_the_file_dirty),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
