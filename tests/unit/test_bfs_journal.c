/* The writeback journal, and the index changes writes make. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>

#include "test_tmpdir.h"

#include "bfs_index.h"
#include "bfs_journal.h"
#include "bfs_writeback.h"

static const char *journal_dir; /* the last one open_journal made */

static struct bfs_journal *open_journal(TALLOC_CTX *t)
{
	char *d = test_tmpdir(t, "bfs-journal-test");

	journal_dir = d;
	struct bfs_journal *j = NULL;
	const char *why = NULL;

	assert_non_null(d);
	assert_int_equal(bfs_journal_open(t, d, &j, &why), 0);
	return j;
}

/* A pid that is certainly dead: a child we reaped. */
static pid_t dead_pid(void)
{
	pid_t pid = fork();

	if (pid == 0) {
		_exit(0);
	}
	assert_true(pid > 0);
	waitpid(pid, NULL, 0);
	return pid;
}

static void test_put_get_done(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_journal *j = open_journal(t);
	struct bfs_jrec r = {
		.key = "run1/ckpt.pt", .op = BFS_J_PUT, .pid = getpid(),
		.size = 12345, .mtime = 1700000000, .staging = "w-1-2-3-0",
	}, got;

	assert_int_equal(bfs_journal_put(j, &r), 0);
	assert_int_equal(bfs_journal_get(j, t, "run1/ckpt.pt", &got), 0);
	assert_int_equal(got.op, BFS_J_PUT);
	assert_int_equal(got.size, 12345);
	assert_string_equal(got.staging, "w-1-2-3-0");
	assert_null(got.upload_id);
	/* Another process's newer record for the key is not ours to drop. */
	r.pid = getpid() + 1;
	assert_int_equal(bfs_journal_put(j, &r), 0);
	assert_int_equal(bfs_journal_done(j, "run1/ckpt.pt", getpid()), 0);
	assert_int_equal(bfs_journal_get(j, t, "run1/ckpt.pt", &got), 0);
	assert_int_equal(bfs_journal_done(j, "run1/ckpt.pt", r.pid), 0);
	assert_int_equal(bfs_journal_get(j, t, "run1/ckpt.pt", &got), ENOENT);
	talloc_free(t);
}

/*
 * The engine runs a delete of a key (a dead smbd's, taken over) and is
 * handed a close of the same key meanwhile, in its own pid's name: the
 * delete's end drops only the delete, never the newer upload.
 */
static void test_a_delete_done_leaves_a_newer_upload_of_the_same_pid(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_journal *j = open_journal(t);
	struct bfs_jrec del = {
		.key = "run1/rot.pt", .op = BFS_J_DELETE, .pid = getpid(),
	}, put = {
		.key = "run1/rot.pt", .op = BFS_J_PUT, .pid = getpid(),
		.size = 3, .mtime = 1700000000, .staging = "l-1-2-3-0",
	}, got;

	assert_int_equal(bfs_journal_put(j, &del), 0);
	assert_int_equal(bfs_journal_put(j, &put), 0);
	assert_int_equal(bfs_journal_done_op(j, del.key, getpid(), BFS_J_DELETE),
			 ESTALE);
	assert_int_equal(bfs_journal_get(j, t, del.key, &got), 0);
	assert_int_equal(got.op, BFS_J_PUT);
	assert_string_equal(got.staging, "l-1-2-3-0");
	/* Another pid's delete is not ours either; our own goes. */
	del.pid = getpid() + 1;
	assert_int_equal(bfs_journal_put(j, &del), 0);
	assert_int_equal(bfs_journal_done_op(j, del.key, getpid(), BFS_J_DELETE),
			 ESTALE);
	assert_int_equal(bfs_journal_done_op(j, del.key, del.pid, BFS_J_DELETE),
			 0);
	assert_int_equal(bfs_journal_get(j, t, del.key, &got), ENOENT);
	assert_int_equal(bfs_journal_done_op(j, del.key, del.pid, BFS_J_DELETE),
			 ESTALE);
	talloc_free(t);
}

/*
 * A delete handed to the engine (index_gone) keeps its flag; the engine
 * asks whether deletes remain under a folder (rmdir after rm -r) and
 * notes a failure in the record.
 */
static void test_handed_over_deletes_and_deletes_under_a_folder(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_journal *j = open_journal(t);
	struct bfs_jrec d = {
		.key = "p/d/x.bin", .op = BFS_J_DELETE, .pid = getpid(),
		.index_gone = true,
	}, m = {
		.key = "p/d/", .op = BFS_J_DELETE, .pid = getpid(),
		.index_gone = true,
	}, u = {
		.key = "p/e/y.bin", .op = BFS_J_PUT, .pid = getpid(),
		.size = 1, .staging = "w-1-2-3-1",
	}, bad = {
		.key = "q/z", .op = BFS_J_PUT, .pid = getpid(), .size = 1,
		.staging = "w-1-2-3-2", .index_gone = true,
	}, got;

	assert_int_equal(bfs_journal_put(j, &d), 0);
	assert_int_equal(bfs_journal_put(j, &m), 0);
	assert_int_equal(bfs_journal_put(j, &u), 0);
	/* The flag is a delete's: an upload carrying it reads as damaged. */
	assert_int_equal(bfs_journal_put(j, &bad), 0);
	assert_int_equal(bfs_journal_get(j, t, "q/z", &got), EBADMSG);
	assert_int_equal(bfs_journal_get(j, t, "p/d/x.bin", &got), 0);
	assert_true(got.index_gone);
	assert_true(bfs_journal_has_op_under(j, "p/d/", BFS_J_DELETE, NULL));
	assert_true(bfs_journal_has_op_under(j, "p/d/", BFS_J_DELETE,
					     "p/d/"));
	assert_false(bfs_journal_has_op_under(j, "p/e/", BFS_J_DELETE, NULL));
	assert_true(bfs_journal_has_op_under(j, "p/e/", BFS_J_PUT, NULL));
	assert_false(bfs_journal_has_op_under(j, "p/d/x", BFS_J_DELETE,
					      "p/d/x.bin"));
	/* A failure noted only in the delete it is about. */
	got.last_error = EIO;
	assert_int_equal(bfs_journal_update_op(j, "p/d/x.bin", getpid(),
					       BFS_J_DELETE, &got), 0);
	assert_int_equal(bfs_journal_update_op(j, "p/e/y.bin", getpid(),
					       BFS_J_DELETE, &got), ESTALE);
	assert_int_equal(bfs_journal_get(j, t, "p/d/x.bin", &got), 0);
	assert_int_equal(got.last_error, EIO);
	assert_int_equal(bfs_journal_done_op(j, "p/d/x.bin", getpid(),
					     BFS_J_DELETE), 0);
	assert_true(bfs_journal_has_op_under(j, "p/d/", BFS_J_DELETE, NULL));
	assert_false(bfs_journal_has_op_under(j, "p/d/", BFS_J_DELETE,
					      "p/d/"));
	/* A rename handed over: a copy of one version, the flag kept. */
	{
		struct bfs_jrec c = {
			.key = "p/e/new.bin", .op = BFS_J_COPY,
			.pid = getpid(), .src = "p/e/old.bin",
			.src_etag = "\"v1\"", .size = 3, .mtime = 4,
			.index_gone = true,
		};

		assert_int_equal(bfs_journal_put(j, &c), 0);
		assert_int_equal(bfs_journal_get(j, t, c.key, &got), 0);
		assert_int_equal(got.op, BFS_J_COPY);
		assert_true(got.index_gone);
		assert_string_equal(got.src, "p/e/old.bin");
		assert_string_equal(got.src_etag, "\"v1\"");
		assert_int_equal(got.mtime, 4);
		assert_int_equal(bfs_journal_done(j, c.key, c.pid), 0);
	}
	talloc_free(t);
}

static void test_orphans_are_claimed_once_in_order(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_journal *j = open_journal(t);
	pid_t dead = dead_pid();
	struct bfs_jrec recs[] = {
		{.key = "a", .op = BFS_J_DELETE, .pid = dead},
		{.key = "b", .op = BFS_J_PUT, .pid = dead, .staging = "s1",
		 .upload_id = "upload-1"},
		{.key = "c", .op = BFS_J_COPY, .pid = dead, .src = "old-c"},
		{.key = "d", .op = BFS_J_PUT, .pid = getpid(), .staging = "s2"},
	}, *out = NULL;
	size_t n = 0, i;

	for (i = 0; i < 4; i++) {
		assert_int_equal(bfs_journal_put(j, &recs[i]), 0);
	}
	assert_int_equal(bfs_journal_claim_orphans(j, t, getpid(), "", &out, &n),
			 0);
	assert_int_equal(n, 3); /* "d" belongs to a live process */
	assert_string_equal(out[0].key, "c"); /* copies first */
	assert_string_equal(out[0].src, "old-c");
	assert_string_equal(out[1].key, "b");
	assert_string_equal(out[1].upload_id, "upload-1");
	assert_string_equal(out[2].key, "a");
	for (i = 0; i < n; i++) {
		assert_int_equal(out[i].pid, getpid());
	}
	/* Now a live process's: nobody claims them again. */
	assert_int_equal(bfs_journal_claim_orphans(j, t, getpid(), "", &out, &n),
			 0);
	assert_int_equal(n, 0);
	talloc_free(t);
}

/*
 * A share takes over only its own records, and none that would upload a
 * file outside the staging folder: those stay, for the share they belong
 * to or for the admin (issue 19 point 6).
 */
static void test_foreign_records_are_not_claimed(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_journal *j = open_journal(t);
	pid_t dead = dead_pid();
	struct bfs_jrec recs[] = {
		{.key = "mine/a", .op = BFS_J_PUT, .pid = dead, .staging = "s1"},
		{.key = "other/b", .op = BFS_J_PUT, .pid = dead, .staging = "s2"},
		{.key = "mine/c", .op = BFS_J_PUT, .pid = dead,
		 .staging = "../../etc/shadow"},
		{.key = "mine/d", .op = BFS_J_PUT, .pid = dead, .staging = ".."},
		{.key = "mine/e", .op = BFS_J_COPY, .pid = dead, .src = "other/e"},
		{.key = "mine/f", .op = BFS_J_DELETE, .pid = dead,
		 .src = "other/f"},
		{.key = "mine/g", .op = BFS_J_COPY, .pid = dead, .src = "mine/h"},
		{.key = BFS_JKEY_ABORT "u1", .op = BFS_J_ABORT, .pid = dead,
		 .src = "mine/i", .upload_id = "u1"},
		{.key = BFS_JKEY_ABORT "u2", .op = BFS_J_ABORT, .pid = dead,
		 .src = "other/j", .upload_id = "u2"},
	}, *out = NULL;
	size_t n = 0, i;

	for (i = 0; i < sizeof(recs) / sizeof(recs[0]); i++) {
		assert_int_equal(bfs_journal_put(j, &recs[i]), 0);
	}
	assert_non_null(bfs_jrec_foreign(&recs[1], "mine/"));
	assert_non_null(bfs_jrec_foreign(&recs[2], ""));
	assert_null(bfs_jrec_foreign(&recs[1], ""));
	assert_int_equal(bfs_journal_claim_orphans(j, t, getpid(), "mine/",
						   &out, &n), 0);
	assert_int_equal(n, 3);
	assert_string_equal(out[0].key, "mine/g"); /* copies first */
	assert_string_equal(out[1].key, "mine/a");
	assert_string_equal(out[2].src, "mine/i"); /* an abort: by its object */
	/* The whole folder's claimer (the engine) takes the other share's. */
	assert_int_equal(bfs_journal_claim_orphans(j, t, getpid(), "", &out,
						   &n), 0);
	assert_int_equal(n, 4);
	for (i = 0; i < n; i++) {
		assert_true(strcmp(out[i].key, "other/b") == 0 ||
			    strcmp(out[i].key, "mine/e") == 0 ||
			    strcmp(out[i].key, "mine/f") == 0 ||
			    strcmp(out[i].key, BFS_JKEY_ABORT "u2") == 0);
	}
	talloc_free(t);
}

static void test_pid_alive(void **state)
{
	pid_t child = fork();

	(void)state;
	assert_true(child >= 0);
	if (child == 0) {
		_exit(0);
	}
	assert_int_equal(waitpid(child, NULL, 0), child);
	assert_true(bfs_journal_pid_alive(getpid()));
	assert_true(bfs_journal_pid_alive(1)); /* init: alive, maybe EPERM */
	assert_false(bfs_journal_pid_alive(child));
	assert_false(bfs_journal_pid_alive(0));
}

static pid_t finisher_pid;

/* The other process's upload ends: its journal record goes. */
static void *finish_upload(void *arg)
{
	usleep(200 * 1000);
	if (bfs_journal_done(arg, "k", finisher_pid) != 0) {
		abort(); /* the waiter would time out: say so at once */
	}
	return NULL;
}

/* A rename waits for another process's upload of its source. */
static void test_wait_for_another_upload(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_journal *j = open_journal(t);
	struct bfs_upload_params params = {.part_size = 5 << 20, .parallel = 1};
	struct bfs_wb *wb = NULL;
	struct bfs_jrec r = {.key = "k", .op = BFS_J_PUT, .staging = "s"};
	pthread_t finisher;
	pid_t uploader;
	int fds[2];

	(void)state;
	assert_int_equal(bfs_wb_new(t, NULL, NULL, NULL, j,
				    talloc_asprintf(t, "%s.staging",
						    test_tmpdir(t, "wb")),
				    &params, &wb), 0);
	assert_non_null(wb);
	assert_int_equal(bfs_wb_wait_upload(wb, "k", 100), ENOENT);
	/* A live uploader that does not finish: EBUSY after the timeout. */
	assert_int_equal(pipe(fds), 0);
	uploader = fork();
	if (uploader == 0) {
		char c;
		close(fds[1]);
		(void)read(fds[0], &c, 1); /* until the test closes the pipe */
		_exit(0);
	}
	close(fds[0]);
	r.pid = uploader;
	assert_int_equal(bfs_journal_put(j, &r), 0);
	assert_int_equal(bfs_wb_wait_upload(wb, "k", 100), EBUSY);
	/* It finishes (the record goes) while we wait: 0. */
	finisher_pid = uploader;
	assert_int_equal(pthread_create(&finisher, NULL, finish_upload, j), 0);
	assert_int_equal(bfs_wb_wait_upload(wb, "k", 5000), 0);
	pthread_join(finisher, NULL);
	/* A failed upload stays in the journal: no use waiting. */
	r.last_error = EACCES;
	assert_int_equal(bfs_journal_put(j, &r), 0);
	assert_int_equal(bfs_wb_wait_upload(wb, "k", 5000), EIO);
	/* So is one whose process died. */
	r.last_error = 0;
	r.pid = dead_pid();
	assert_int_equal(bfs_journal_put(j, &r), 0);
	assert_int_equal(bfs_wb_wait_upload(wb, "k", 5000), EIO);
	close(fds[1]);
	waitpid(uploader, NULL, 0);
	talloc_free(t);
}

/*
 * A file renamed while open: the upload to its new name carries the old
 * name to delete after, the version of it that may go, and that the
 * staging file is still written.
 */
static void test_rename_while_open_record_round_trips(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_journal *j = open_journal(t);
	struct bfs_jrec r = {
		.key = "logs/app.log.1", .op = BFS_J_PUT, .pid = getpid(),
		.size = 77, .staging = "w-9", .src = "logs/app.log",
		.src_etag = "\"0123abcd\"", .open = true,
	}, got;
	void *enc;
	size_t len;

	assert_int_equal(bfs_journal_put(j, &r), 0);
	assert_int_equal(bfs_journal_get(j, t, r.key, &got), 0);
	assert_int_equal(got.op, BFS_J_PUT);
	assert_string_equal(got.src, "logs/app.log");
	assert_string_equal(got.src_etag, "\"0123abcd\"");
	assert_true(got.open);
	assert_int_equal(got.size, 77);
	/* Deleted while open: the DELETE takes the old name along. */
	r.op = BFS_J_DELETE;
	r.staging = NULL;
	r.open = false;
	assert_int_equal(bfs_jrec_encode(t, &r, &enc, &len), 0);
	assert_int_equal(bfs_jrec_decode(t, enc, len, &got), 0);
	assert_string_equal(got.src, "logs/app.log");
	assert_false(got.open);
	/* Only an upload is "open"; an ETag needs its key. */
	r.open = true;
	assert_int_equal(bfs_jrec_encode(t, &r, &enc, &len), 0);
	assert_int_equal(bfs_jrec_decode(t, enc, len, &got), EBADMSG);
	r.open = false;
	r.src = NULL;
	assert_int_equal(bfs_jrec_encode(t, &r, &enc, &len), 0);
	assert_int_equal(bfs_jrec_decode(t, enc, len, &got), EBADMSG);
	talloc_free(t);
}

/* Records written before version 2 (no old-name ETag, no flags) still read. */
static void test_version_1_records_decode(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	/* version, op, staging_len, src_len, upload_id_len, pid,
	   last_error, size, mtime; then "w-1" */
	uint8_t v1[1 + 1 + 2 + 2 + 2 + 4 + 4 + 8 + 8 + 3] = {
		1, BFS_J_PUT, 3, 0, 0, 0, 0, 0, 7, 0, 0, 0, 5, 0, 0, 0,
		42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	};
	struct bfs_jrec got;

	memcpy(v1 + sizeof(v1) - 3, "w-1", 3);
	assert_int_equal(bfs_jrec_decode(t, v1, sizeof(v1), &got), 0);
	assert_int_equal(got.op, BFS_J_PUT);
	assert_int_equal(got.pid, 7);
	assert_int_equal(got.last_error, 5);
	assert_int_equal(got.size, 42);
	assert_string_equal(got.staging, "w-1");
	assert_null(got.src_etag);
	assert_false(got.open);
	assert_int_equal(bfs_jrec_decode(t, v1, sizeof(v1) - 1, &got),
			 EBADMSG);
	talloc_free(t);
}

static void test_record_decoding_refuses_garbage(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_jrec r = {
		.key = "k", .op = BFS_J_PUT, .pid = 1, .staging = "w-1",
	}, got;
	uint8_t *buf;
	void *enc;
	size_t len, cut;

	assert_int_equal(bfs_jrec_encode(t, &r, &enc, &len), 0);
	buf = enc;
	for (cut = 0; cut < len; cut++) {
		assert_int_equal(bfs_jrec_decode(t, buf, cut, &got), EBADMSG);
	}
	/* A staging name that would leave the staging folder. */
	r.staging = "../../etc/passwd";
	assert_int_equal(bfs_jrec_encode(t, &r, &enc, &len), 0);
	assert_int_equal(bfs_jrec_decode(t, enc, len, &got), EBADMSG);
	/* A PUT without a staging file. */
	r.staging = NULL;
	assert_int_equal(bfs_jrec_encode(t, &r, &enc, &len), 0);
	assert_int_equal(bfs_jrec_decode(t, enc, len, &got), EBADMSG);
	/* An ABORT names its upload (and may name its staging file). */
	r.op = BFS_J_ABORT;
	assert_int_equal(bfs_jrec_encode(t, &r, &enc, &len), 0);
	assert_int_equal(bfs_jrec_decode(t, enc, len, &got), EBADMSG);
	r.upload_id = "u-1";
	r.staging = "w-2";
	assert_int_equal(bfs_jrec_encode(t, &r, &enc, &len), 0);
	assert_int_equal(bfs_jrec_decode(t, enc, len, &got), EBADMSG);
	r.src = "dir/obj";
	assert_int_equal(bfs_jrec_encode(t, &r, &enc, &len), 0);
	assert_int_equal(bfs_jrec_decode(t, enc, len, &got), 0);
	assert_int_equal(got.op, BFS_J_ABORT);
	assert_string_equal(got.upload_id, "u-1");
	assert_string_equal(got.staging, "w-2");
	assert_string_equal(got.src, "dir/obj");
	r.src = NULL;
	/* A DELETE names no staging file. */
	r.op = BFS_J_DELETE;
	r.upload_id = NULL;
	assert_int_equal(bfs_jrec_encode(t, &r, &enc, &len), 0);
	assert_int_equal(bfs_jrec_decode(t, enc, len, &got), EBADMSG);
	talloc_free(t);
}

static void test_index_put_rename_remove(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	char *d = test_tmpdir(t, "bfs-index-writes");
	struct bfs_index *idx = NULL;
	struct bfs_entry e = {.name = "ckpt.tmp", .size = 7,
			      .flags = BFS_ENT_PENDING}, got;
	struct s3_dir *empty;
	const char *why = NULL;
	uint64_t ino, since;

	assert_int_equal(bfs_index_open(t, d, "bucket", &idx, &why), 0);
	assert_int_equal(bfs_index_put(idx, "run/", &e), 0);
	ino = e.ino;
	assert_true(ino > BFS_ROOT_INO);
	/* A relisting from S3 that does not know the file keeps it. */
	empty = s3_dir_new(t, "run/");
	s3_dir_finish(empty);
	assert_int_equal(bfs_index_change_seq(idx, &since), 0);
	assert_int_equal(bfs_index_store_dir(idx, empty, 1, since), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "run/", "ckpt.tmp", &got), 0);
	/* Rename over an existing name: one entry, the inode follows. */
	e = (struct bfs_entry){.name = "ckpt.pt", .size = 1};
	assert_int_equal(bfs_index_put(idx, "run/", &e), 0);
	assert_int_equal(bfs_index_rename(idx, "run/", "ckpt.tmp", "run/",
					  "ckpt.pt"), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "run/", "ckpt.tmp", &got),
			 ENOENT);
	assert_int_equal(bfs_index_lookup(idx, t, "run/", "ckpt.pt", &got), 0);
	assert_int_equal(got.ino, ino);
	assert_int_equal(got.size, 7);
	assert_int_equal(bfs_index_rename(idx, "run/", "gone", "run/", "x"),
			 ENOENT);
	assert_int_equal(bfs_index_remove(idx, "run/", "ckpt.pt"), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "run/", "ckpt.pt", &got),
			 ENOENT);
	talloc_free(t);
}

/*
 * The engine's records: a swap says what it replaced, an update or a
 * removal happens only while the record is still the caller's upload,
 * and a rename moves an upload only before it started.
 */
static void test_swap_update_retarget(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_journal *j = open_journal(t);
	pid_t engine = getpid() + 1;
	struct bfs_jrec a = {
		.key = "run/ckpt.tmp", .op = BFS_J_PUT, .pid = engine,
		.size = 10, .staging = "s-a",
	}, b = a, old, got, moved;

	assert_int_equal(bfs_journal_swap(j, t, &a, &old), 0);
	assert_null(old.key);
	b.staging = "s-b";
	assert_int_equal(bfs_journal_swap(j, t, &b, &old), 0);
	assert_string_equal(old.key, "run/ckpt.tmp");
	assert_string_equal(old.staging, "s-a");
	assert_false(old.started);
	/* a's uploader finishing or failing leaves b's record alone. */
	a.last_error = EIO;
	assert_int_equal(bfs_journal_update(j, a.key, engine, "s-a", &a), ESTALE);
	assert_int_equal(bfs_journal_update(j, a.key, engine, "s-a", NULL), ESTALE);
	assert_int_equal(bfs_journal_update(j, b.key, engine + 1, "s-b", NULL),
			 ESTALE);
	assert_int_equal(bfs_journal_get(j, t, b.key, &got), 0);
	assert_string_equal(got.staging, "s-b");
	assert_int_equal(got.last_error, 0);
	/* Not started: a rename moves it, and says what the target had. */
	moved = b;
	moved.key = "run/ckpt.pt";
	moved.src = "run/ckpt.tmp";
	assert_int_equal(bfs_journal_retarget(j, t, b.key, engine, "s-b",
					      &moved, &old), 0);
	assert_null(old.key);
	assert_int_equal(bfs_journal_get(j, t, "run/ckpt.tmp", &got), ENOENT);
	assert_int_equal(bfs_journal_get(j, t, "run/ckpt.pt", &got), 0);
	assert_string_equal(got.src, "run/ckpt.tmp");
	/* Started: no retarget that shares its staging file; the flag
	 * round-trips. */
	moved.started = true;
	assert_int_equal(bfs_journal_update(j, moved.key, engine, "s-b", &moved),
			 0);
	assert_int_equal(bfs_journal_get(j, t, "run/ckpt.pt", &got), 0);
	assert_true(got.started);
	b.key = "run/other";
	assert_int_equal(bfs_journal_retarget(j, t, "run/ckpt.pt", engine,
					      "s-b", &b, &old), ESTALE);
	assert_int_equal(bfs_journal_get(j, t, "run/ckpt.pt", &got), 0);
	/* With a staging file of its own (a second name), it moves; the
	 * running upload's update then finds nothing of its own. */
	b.staging = "s-b2";
	assert_int_equal(bfs_journal_retarget(j, t, "run/ckpt.pt", engine,
					      "s-b", &b, &old), 0);
	assert_int_equal(bfs_journal_get(j, t, "run/ckpt.pt", &got), ENOENT);
	assert_int_equal(bfs_journal_update(j, "run/ckpt.pt", engine, "s-b",
					    NULL), ESTALE);
	assert_int_equal(bfs_journal_get(j, t, "run/other", &got), 0);
	assert_string_equal(got.staging, "s-b2");
	assert_false(got.started);
	/* Its uploader is done: gone. */
	assert_int_equal(bfs_journal_update(j, "run/other", engine, "s-b2",
					    NULL), 0);
	assert_int_equal(bfs_journal_get(j, t, "run/other", &got), ENOENT);
	talloc_free(t);
}

/* Writeback over journal j and a new index, staging files in *staging. */
static struct bfs_wb *open_wb(TALLOC_CTX *t, struct bfs_journal *j,
			      const char *name, struct bfs_index **idx,
			      char **staging)
{
	char *d = test_tmpdir(t, name);
	struct bfs_upload_params params = {.part_size = 5 << 20, .parallel = 1};
	const char *why = NULL;
	struct bfs_wb *wb = NULL;

	*staging = talloc_asprintf(t, "%s.staging", d);
	assert_int_equal(bfs_index_open(t, d, "bucket", idx, &why), 0);
	assert_int_equal(bfs_wb_new(t, NULL, NULL, *idx, j, *staging, &params,
				    &wb), 0);
	assert_non_null(wb);
	return wb;
}

/*
 * A folder rename finds, before anything moves, what the journal says of
 * the files under it: the engine's waiting uploads to retarget, others'
 * to wait for, old names a change elsewhere deletes (not to copy), and a
 * file still being written (refused).
 */
static void test_what_a_folder_rename_must_do_about_the_journal(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_journal *j = open_journal(t);
	struct bfs_index *idx = NULL;
	char *staging;
	struct bfs_wb *wb = open_wb(t, j, "bfs-dirchanges", &idx, &staging);
	struct bfs_wb_dir_changes c;
	pid_t engine = getpid() + 1;
	struct bfs_jrec r = {.op = BFS_J_PUT, .pid = engine, .size = 1,
			     .staging = "s1"};
	char *n1;
	int fd;

	assert_int_equal(bfs_wb_stage_new(wb, t, &fd, &n1), 0);
	close(fd);
	assert_int_equal(bfs_wb_hand_over(wb, "d/a", n1, 1, 1, engine), 0);
	r.key = "d/sub/b";		/* another process's upload */
	r.pid = getpid();
	assert_int_equal(bfs_journal_put(j, &r), 0);
	r.key = "elsewhere/c";		/* renamed out of d/, pending */
	r.pid = engine;
	r.src = "d/c";
	assert_int_equal(bfs_journal_put(j, &r), 0);
	r.key = "dx/e";			/* not under d/ */
	r.src = NULL;
	assert_int_equal(bfs_journal_put(j, &r), 0);
	assert_int_equal(bfs_wb_dir_changes(wb, t, "d/", engine, &c), 0);
	assert_int_equal(c.n_move, 1);
	assert_string_equal(c.move[0], "d/a");
	assert_int_equal(c.n_wait, 1);
	assert_string_equal(c.wait[0], "d/sub/b");
	assert_int_equal(c.n_skip, 1);
	assert_string_equal(c.skip[0], "d/c");
	/* Without an engine nothing is retargeted: all waited for. */
	assert_int_equal(bfs_wb_dir_changes(wb, t, "d/", 0, &c), 0);
	assert_int_equal(c.n_move, 0);
	assert_int_equal(c.n_wait, 2);
	/* A file under d/ streamed by another process refuses the rename. */
	r = (struct bfs_jrec){.key = BFS_JKEY_ABORT "u1", .op = BFS_J_ABORT,
			      .pid = getpid(), .src = "d/sub/big",
			      .upload_id = "u1", .staging = "s2"};
	assert_int_equal(bfs_journal_put(j, &r), 0);
	assert_int_equal(bfs_wb_dir_changes(wb, t, "d/", engine, &c), EBUSY);
	assert_string_equal(c.busy, "d/sub/big");
	assert_int_equal(bfs_journal_done(j, r.key, getpid()), 0);
	/* So does one still open for writing there. */
	r = (struct bfs_jrec){.key = "d/open", .op = BFS_J_PUT,
			      .pid = getpid(), .staging = "s3", .open = true};
	assert_int_equal(bfs_journal_put(j, &r), 0);
	assert_int_equal(bfs_wb_dir_changes(wb, t, "d/", engine, &c), EBUSY);
	assert_string_equal(c.busy, "d/open");
	talloc_free(t);
}

/*
 * A close handed to the engine: journalled in its name, pending in the
 * index; a later close replaces it and drops the first staging file; a
 * rename before the upload starts moves record and entry.
 */
static void test_hand_over_and_retarget(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_journal *j = open_journal(t);
	struct bfs_index *idx = NULL;
	char *staging;
	struct bfs_wb *wb = open_wb(t, j, "bfs-handover", &idx, &staging);
	struct bfs_entry e;
	struct bfs_jrec got;
	pid_t engine = getpid() + 1;
	char *n1, *n2, *path;
	int fd;

	assert_int_equal(bfs_wb_stage_new(wb, t, &fd, &n1), 0);
	close(fd);
	assert_int_equal(bfs_wb_stage_new(wb, t, &fd, &n2), 0);
	close(fd);
	assert_int_equal(bfs_wb_hand_over(wb, "run/ckpt.tmp", n1, 3, 1, engine),
			 0);
	assert_int_equal(bfs_journal_get(j, t, "run/ckpt.tmp", &got), 0);
	assert_int_equal(got.pid, engine);
	assert_false(got.started);
	assert_int_equal(bfs_index_lookup(idx, t, "run/", "ckpt.tmp", &e), 0);
	assert_true(e.flags & BFS_ENT_PENDING);
	assert_int_equal(e.size, 3);
	/* A second close before the upload began: the first file goes. */
	assert_int_equal(bfs_wb_hand_over(wb, "run/ckpt.tmp", n2, 5, 2, engine),
			 0);
	path = talloc_asprintf(t, "%s/%s", staging, n1);
	assert_int_equal(access(path, F_OK), -1);
	path = talloc_asprintf(t, "%s/%s", staging, n2);
	assert_int_equal(access(path, F_OK), 0);
	/* Someone else's upload is not retargeted. */
	assert_int_equal(bfs_wb_retarget(wb, "run/ckpt.tmp", "run/ckpt.pt",
					 engine + 1), ESTALE);
	assert_int_equal(bfs_wb_retarget(wb, "run/ckpt.tmp", "run/ckpt.pt",
					 engine), 0);
	assert_int_equal(bfs_journal_get(j, t, "run/ckpt.pt", &got), 0);
	assert_string_equal(got.staging, n2);
	assert_string_equal(got.src, "run/ckpt.tmp");
	assert_int_equal(bfs_index_lookup(idx, t, "run/", "ckpt.tmp", &e),
			 ENOENT);
	assert_int_equal(bfs_index_lookup(idx, t, "run/", "ckpt.pt", &e), 0);
	assert_int_equal(e.size, 5);
	assert_int_equal(bfs_wb_retarget(wb, "run/nothing", "run/x", engine),
			 ESTALE);
	/*
	 * Its upload began (the engine took it): a rename still moves it,
	 * to a second name of the staging file, the running upload keeping
	 * its own; the rename waits for nothing.
	 */
	assert_int_equal(bfs_wb_stage_new(wb, t, &fd, &n1), 0);
	close(fd);
	assert_int_equal(bfs_wb_hand_over(wb, "run/b.tmp", n1, 7, 3, engine),
			 0);
	assert_int_equal(bfs_journal_get(j, t, "run/b.tmp", &got), 0);
	got.started = true;
	assert_int_equal(bfs_journal_update(j, "run/b.tmp", engine, n1, &got),
			 0);
	assert_int_equal(bfs_wb_retarget(wb, "run/b.tmp", "run/b", engine), 0);
	assert_int_equal(bfs_journal_get(j, t, "run/b.tmp", &got), ENOENT);
	assert_int_equal(bfs_journal_get(j, t, "run/b", &got), 0);
	assert_false(got.started);
	assert_string_not_equal(got.staging, n1);
	assert_string_equal(got.src, "run/b.tmp");
	path = talloc_asprintf(t, "%s/%s", staging, n1);
	{
		struct stat a, b;

		assert_int_equal(stat(path, &a), 0);
		assert_int_equal(stat(talloc_asprintf(t, "%s/%s", staging,
						      got.staging), &b), 0);
		assert_true(a.st_ino == b.st_ino && a.st_nlink == 2);
	}
	assert_int_equal(bfs_index_lookup(idx, t, "run/", "b", &e), 0);
	assert_int_equal(e.size, 7);
	talloc_free(t);
}

/* Make staging file name (empty) in folder dir. */
static void touch_in(TALLOC_CTX *t, const char *dir, const char *name)
{
	int fd = open(talloc_asprintf(t, "%s/%s", dir, name),
		      O_RDWR | O_CREAT | O_EXCL, 0600);

	assert_true(fd >= 0);
	close(fd);
}

static bool exists_in(TALLOC_CTX *t, const char *dir, const char *name)
{
	return access(talloc_asprintf(t, "%s/%s", dir, name), F_OK) == 0;
}

/*
 * A killed smbd leaves the staging files of files it held open for
 * writing: the next recovery removes those no record names, and nothing
 * of a live process or journalled.
 */
static void test_the_staging_files_of_dead_processes_are_swept(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_journal *j = open_journal(t);
	struct bfs_index *idx = NULL;
	char *staging;
	struct bfs_wb *wb = open_wb(t, j, "bfs-sweep", &idx, &staging);
	pid_t gone = dead_pid();
	char *lost = talloc_asprintf(t, "w-%d-1-2-0", (int)gone);
	char *link = talloc_asprintf(t, "l-%d-1-2-1", (int)gone);
	char *kept = talloc_asprintf(t, "w-%d-1-2-2", (int)gone);
	char *mine = NULL;
	int fd;

	touch_in(t, staging, lost);
	touch_in(t, staging, link);
	touch_in(t, staging, kept);
	touch_in(t, staging, "not-a-staging-name");
	assert_int_equal(bfs_wb_stage_new(wb, t, &fd, &mine), 0);
	close(fd);
	/* The dead process's upload, journalled: its file is the record's. */
	assert_int_equal(bfs_wb_hand_over(wb, "run/k", kept, 0, 1, gone), 0);
	assert_int_equal(bfs_wb_sweep_staging(wb), 2);
	assert_false(exists_in(t, staging, lost));
	assert_false(exists_in(t, staging, link));
	assert_true(exists_in(t, staging, kept));
	assert_true(exists_in(t, staging, mine));
	assert_true(exists_in(t, staging, "not-a-staging-name"));
	assert_int_equal(bfs_wb_sweep_staging(wb), 0);

	/*
	 * A record this version cannot read (a newer version's, kept after
	 * a downgrade) may name any file: then nothing is swept.  Written by
	 * a child, since one process must not open an LMDB file twice.
	 */
	touch_in(t, staging, lost);
	pid_t child = fork();
	if (child == 0) {
		MDB_env *env;
		MDB_txn *txn;
		MDB_dbi dbi;
		MDB_val k = {5, "run/g"}, v = {2, "xx"};

		if (mdb_env_create(&env) != 0 || mdb_env_set_maxdbs(env, 2) != 0 ||
		    mdb_env_open(env, journal_dir, 0, 0600) != 0 ||
		    mdb_txn_begin(env, NULL, 0, &txn) != 0 ||
		    mdb_dbi_open(txn, "jrn", 0, &dbi) != 0 ||
		    mdb_put(txn, dbi, &k, &v, 0) != 0 || mdb_txn_commit(txn) != 0) {
			_exit(1);
		}
		mdb_env_close(env);
		_exit(0);
	}
	{
		int st = 0;

		assert_int_equal(waitpid(child, &st, 0), child);
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	assert_int_equal(bfs_wb_sweep_staging(wb), 0);
	assert_true(exists_in(t, staging, lost));
	talloc_free(t);
}

/*
 * A record names its owner by pid and start time: a live process that
 * got the pid of a dead owner (after a reboot, on a busy host) does not
 * keep its records from being finished.
 */
static void test_a_reused_pid_is_not_the_owner(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_journal *j = open_journal(t);
	struct bfs_jrec mine = {
		.key = "mine", .op = BFS_J_PUT, .pid = getpid(),
		.staging = "s1",
	}, reused = {
		.key = "reused", .op = BFS_J_PUT, .pid = getpid(),
		.staging = "s2", /* someone before us, this boot */
		.pid_start = bfs_proc_start(getpid()) - 1,
	}, before_boot = {
		.key = "before-boot", .op = BFS_J_PUT, .pid = getpid(),
		.staging = "s3", /* our very start, but in another boot */
		.pid_start = bfs_proc_start(getpid()) ^ (1ULL << 63),
	}, legacy = {
		.key = "legacy", .op = BFS_J_PUT, .pid = getpid(),
		.staging = "s4", /* a wall-clock stamp: the pid tells */
		.pid_start = 179635339012345ULL % (1ULL << 40),
	}, got, *out = NULL;
	size_t n = 0;

	assert_int_equal(bfs_proc_start(dead_pid()), 0);
	assert_int_equal(bfs_journal_put(j, &mine), 0);
	assert_int_equal(bfs_journal_put(j, &reused), 0);
	assert_int_equal(bfs_journal_put(j, &before_boot), 0);
	assert_int_equal(bfs_journal_put(j, &legacy), 0);
	assert_int_equal(bfs_journal_get(j, t, "before-boot", &got), 0);
	assert_false(bfs_jrec_owner_alive(&got));
	assert_int_equal(bfs_journal_done(j, "before-boot", getpid()), 0);
	assert_int_equal(bfs_journal_get(j, t, "legacy", &got), 0);
	assert_true(bfs_jrec_owner_alive(&got));
	assert_int_equal(bfs_journal_get(j, t, "mine", &got), 0);
	assert_int_equal(got.pid_start, bfs_proc_start(getpid()));
	assert_true(bfs_jrec_owner_alive(&got));
	assert_int_equal(bfs_journal_get(j, t, "reused", &got), 0);
	assert_false(bfs_jrec_owner_alive(&got));
	assert_int_equal(bfs_journal_claim_orphans(j, t, getpid(), "", &out, &n),
			 0);
	assert_int_equal(n, 1);
	assert_string_equal(out[0].key, "reused");
	/* Claimed: ours now, with our start time. */
	assert_int_equal(bfs_journal_get(j, t, "reused", &got), 0);
	assert_true(bfs_jrec_owner_alive(&got));
	talloc_free(t);
}

/*
 * No setting of the wall clock changes a live owner's stamp.  Stamps
 * were wall-clock times (btime + ticks since boot); after a time sync
 * stepped the clock, processes started since saw a live engine as dead,
 * took its records over and dropped staging files it was uploading: the
 * 16-client soak in CI lost acknowledged checkpoints that way.  Here the
 * clock steps 2 s forward (root only) and a process started after the
 * step (this binary again, --stamp-of) stamps us as we stamped ourselves.
 */
static const char *self_exe;	/* this test binary, from argv[0] */

static void test_a_clock_step_does_not_make_a_live_owner_dead(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_journal *j = open_journal(t);
	struct bfs_jrec mine = {
		.key = "mine", .op = BFS_J_PUT, .pid = getpid(),
		.staging = "s1",
	}, got;
	struct timespec now;
	char cmd[PATH_MAX + 64], out[64] = "";
	FILE *p;
	int stepped;

	assert_int_equal(bfs_journal_put(j, &mine), 0);
	assert_int_equal(bfs_journal_get(j, t, "mine", &got), 0);
	if (geteuid() != 0) {
		talloc_free(t);
		skip();
	}
	assert_int_equal(clock_gettime(CLOCK_REALTIME, &now), 0);
	now.tv_sec += 2;
	stepped = clock_settime(CLOCK_REALTIME, &now);
	if (stepped == 0) {
		/* argv[0], not /proc/self/exe: that is valgrind's under it. */
		snprintf(cmd, sizeof(cmd), "'%s' --stamp-of %d", self_exe,
			 (int)getpid());
		p = popen(cmd, "r");
		if (p != NULL) {
			if (fgets(out, sizeof(out), p) == NULL) {
				out[0] = '\0';
			}
			pclose(p);
		}
		clock_gettime(CLOCK_REALTIME, &now);
		now.tv_sec -= 2;
		assert_int_equal(clock_settime(CLOCK_REALTIME, &now), 0);
	}
	if (stepped != 0) {
		talloc_free(t); /* a container without CAP_SYS_TIME */
		skip();
	}
	assert_int_equal(strtoull(out, NULL, 10), got.pid_start);
	assert_true(bfs_jrec_owner_alive(&got));
	talloc_free(t);
}

/* A damaged journal is never rebuilt: it may hold promises.  Said so. */
static void test_a_damaged_journal_is_refused_with_a_clear_reason(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	char *d = test_tmpdir(t, "bfs-journal-damaged");
	struct bfs_journal *j = NULL;
	struct bfs_jrec r = {
		.key = "k", .op = BFS_J_PUT, .pid = getpid(), .staging = "s",
	};
	const char *why = NULL;
	char junk[8192];
	int fd;

	assert_int_equal(bfs_journal_open(t, d, &j, &why), 0);
	assert_int_equal(bfs_journal_put(j, &r), 0);
	TALLOC_FREE(j);
	fd = open(talloc_asprintf(t, "%s/data.mdb", d), O_RDWR);
	assert_true(fd >= 0);
	memset(junk, 0x5a, sizeof(junk));
	assert_int_equal(pwrite(fd, junk, sizeof(junk), 0), (ssize_t)sizeof(junk));
	close(fd);
	assert_int_equal(bfs_journal_open(t, d, &j, &why), EIO);
	assert_non_null(strstr(why, "may hold changes not yet in S3"));
	talloc_free(t);
}

/*
 * A staging folder that cannot be made says why (here: a file where its
 * parent folder should be), not "out of memory" (issue 19 point 14).
 */
static void test_a_staging_folder_error_is_reported(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_journal *j = open_journal(t);
	struct bfs_upload_params params = {.part_size = 5 << 20, .parallel = 1};
	char *file = talloc_asprintf(t, "%s/file", test_tmpdir(t, "wb-err"));
	struct bfs_wb *wb = NULL;
	int fd;

	(void)state;
	fd = open(file, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(bfs_wb_new(t, NULL, NULL, NULL, j,
				    talloc_asprintf(t, "%s/staging", file),
				    &params, &wb), ENOTDIR);
	assert_null(wb);
	talloc_free(t);
}

int main(int argc, char **argv)
{
	static char exe[PATH_MAX];

	self_exe = realpath(argv[0], exe) != NULL ? exe : argv[0];
	if (argc == 3 && strcmp(argv[1], "--stamp-of") == 0) {
		/* For the clock-step test: a process started after the step. */
		printf("%llu\n", (unsigned long long)bfs_proc_start(atoi(argv[2])));
		return 0;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_put_get_done),
		cmocka_unit_test(test_a_delete_done_leaves_a_newer_upload_of_the_same_pid),
		cmocka_unit_test(test_handed_over_deletes_and_deletes_under_a_folder),
		cmocka_unit_test(test_orphans_are_claimed_once_in_order),
		cmocka_unit_test(test_foreign_records_are_not_claimed),
		cmocka_unit_test(test_pid_alive),
		cmocka_unit_test(test_wait_for_another_upload),
		cmocka_unit_test(test_rename_while_open_record_round_trips),
		cmocka_unit_test(test_version_1_records_decode),
		cmocka_unit_test(test_record_decoding_refuses_garbage),
		cmocka_unit_test(test_index_put_rename_remove),
		cmocka_unit_test(test_swap_update_retarget),
		cmocka_unit_test(test_hand_over_and_retarget),
		cmocka_unit_test(test_the_staging_files_of_dead_processes_are_swept),
		cmocka_unit_test(test_a_reused_pid_is_not_the_owner),
		cmocka_unit_test(test_a_clock_step_does_not_make_a_live_owner_dead),
		cmocka_unit_test(test_a_damaged_journal_is_refused_with_a_clear_reason),
		cmocka_unit_test(test_a_staging_folder_error_is_reported),
		cmocka_unit_test(test_what_a_folder_rename_must_do_about_the_journal),
	};
	return cmocka_run_group_tests_name("bfs_journal", tests, NULL, NULL);
}
