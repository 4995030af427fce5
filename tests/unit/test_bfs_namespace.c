/*
 * lib/bfs_namespace: the rules of mkdir, rename and delete, and renames
 * that move a journalled upload instead of copying in S3.  No S3 server:
 * the share's endpoint refuses connections, and the tests check that
 * what must not need S3 did not ask it.
 */
#include <dirent.h>
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
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "test_share.h"

#include "bfs_file.h"
#include "bfs_namespace.h"
#include "bfs_writeback.h"

static struct bfs_conn *share(TALLOC_CTX *t)
{
	struct bfs_conn *bc = test_share_new(t);

	assert_non_null(bc);
	return bc;
}

/* A new file rel, open for writing, with bytes s staged. */
static struct bfs_fh *written(struct bfs_conn *bc, const char *rel,
			      const char *s)
{
	struct bfs_fh *fh = NULL;
	size_t done = 0;

	assert_int_equal(bfs_fh_open(bc, rel, O_WRONLY | O_CREAT, false, &fh),
			 0);
	assert_int_equal(bfs_fh_write(bc, fh, s, strlen(s), 0, NULL, &done),
			 0);
	return fh;
}

/* A new file rel with bytes s, closed (handed to the engine): its
 * staging file's name, on t. */
static char *closed(TALLOC_CTX *t, struct bfs_conn *bc, const char *rel,
		    const char *s)
{
	struct bfs_fh *fh = written(bc, rel, s);
	char *name = talloc_strdup(t, fh->stage_name);

	assert_int_equal(bfs_fh_close(bc, fh), 0);
	talloc_free(fh);
	return name;
}

static int rename_rel(TALLOC_CTX *t, struct bfs_conn *bc, const char *src,
		      const char *dst)
{
	struct bfs_fh *fh = NULL;
	int ret = bfs_fh_lookup(t, bc, src, &fh);

	return ret != 0 ? ret : bfs_rename(bc, fh, dst);
}

/*
 * A file in S3, open for writing, its new bytes staged and not yet
 * uploaded, is renamed (logrotate): the journal says its upload goes to
 * the new name and that the version in S3 under the old one goes after;
 * the index shows the new name; every open of it here follows.  S3 is
 * not asked.
 */
static void test_rename_staged_file(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	struct bfs_entry e = {.name = "app.log", .size = 4, .mtime = 1,
			      .etag = "\"v1\""};
	struct bfs_fh *fh = NULL, *other = NULL;
	struct bfs_jrec rec;
	size_t done = 0;

	(void)state;
	assert_int_equal(test_share_mkdir(bc, "", "logs"), 0);
	assert_int_equal(bfs_index_put(bc->index, "logs/", &e), 0);
	assert_int_equal(bfs_fh_open(bc, "logs/app.log", O_WRONLY | O_TRUNC,
				     false, &fh), 0);
	assert_int_equal(bfs_fh_write(bc, fh, "line\n", 5, 0, NULL, &done), 0);
	assert_int_equal(bfs_fh_open(bc, "logs/app.log", O_WRONLY, false,
				     &other), 0);
	assert_int_equal(rename_rel(t, bc, "logs/app.log", "logs/app.log.1"),
			 0);
	assert_int_equal(test_share_s3_requests(bc), 0);

	assert_int_equal(bfs_journal_get(bc->journal, t, "logs/app.log.1",
					 &rec), 0);
	assert_int_equal(rec.op, BFS_J_PUT);
	assert_int_equal(rec.pid, getpid());
	assert_string_equal(rec.src, "logs/app.log");
	assert_string_equal(rec.src_etag, "\"v1\"");
	assert_int_equal(rec.size, 5);
	assert_string_equal(rec.staging, fh->stage_name);
	assert_true(rec.open);
	assert_int_equal(bfs_journal_get(bc->journal, t, "logs/app.log", &rec),
			 ENOENT);
	assert_int_equal(bfs_index_lookup(bc->index, t, "logs/", "app.log",
					  &e), ENOENT);
	assert_int_equal(bfs_index_lookup(bc->index, t, "logs/", "app.log.1",
					  &e), 0);

	assert_string_equal(fh->key, "logs/app.log.1");
	assert_string_equal(fh->rel, "logs/app.log.1");
	assert_string_equal(fh->obj.key, "logs/app.log.1");
	assert_true(fh->dirty);
	assert_null(fh->open_etag);
	assert_string_equal(other->key, "logs/app.log.1");
	assert_false(other->dirty); /* nothing staged: nothing to upload */
	talloc_free(t);
}

/*
 * A closed file whose upload waits in the engine is renamed: the upload
 * goes to the new name (no copy in S3), the journal and the index say so,
 * and an open of it here follows.
 */
static void test_rename_retargets_a_handed_over_upload(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	pid_t engine = test_engine_start(bc);
	struct bfs_fh *reader = NULL;
	struct bfs_jrec rec;
	struct bfs_entry e;
	char *name;

	(void)state;
	assert_true(engine > 0);
	name = closed(t, bc, "ckpt.tmp", "weights");
	assert_int_equal(bfs_fh_open(bc, "ckpt.tmp", O_WRONLY, false,
				     &reader), 0);
	assert_int_equal(rename_rel(t, bc, "ckpt.tmp", "ckpt.pt"), 0);
	assert_int_equal(test_share_s3_requests(bc), 0);

	assert_int_equal(bfs_journal_get(bc->journal, t, "ckpt.tmp", &rec),
			 ENOENT);
	assert_int_equal(bfs_journal_get(bc->journal, t, "ckpt.pt", &rec), 0);
	assert_int_equal(rec.pid, engine);
	assert_string_equal(rec.staging, name);
	assert_string_equal(rec.src, "ckpt.tmp");
	assert_int_equal(rec.size, 7);
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "ckpt.tmp", &e),
			 ENOENT);
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "ckpt.pt", &e), 0);
	assert_true(e.flags & BFS_ENT_PENDING);
	assert_int_equal(e.size, 7);
	assert_string_equal(reader->key, "ckpt.pt");
	test_engine_stop(bc, engine);
	talloc_free(t);
}

/*
 * write tmp; rename over final; again, the second tmp already in S3: that
 * rename copies in S3 over final's upload, which the engine has yet to
 * start.  The copy fails (S3 away): the client is told, and final's
 * upload, the first rename's acknowledged bytes, is journalled as before,
 * its staging file kept.  It was dropped with the copy's record.
 */
static void test_a_failed_copy_over_a_waiting_upload_puts_that_upload_back(
	void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	pid_t engine = test_engine_start(bc);
	struct bfs_entry e = {.name = "ckpt.tmp", .size = 3, .mtime = 5,
			      .etag = "\"t2\""};
	struct bfs_jrec rec;
	struct stat sb;
	char *name, *path;

	(void)state;
	assert_true(engine > 0);
	name = closed(t, bc, "ckpt.tmp", "weights");
	assert_int_equal(rename_rel(t, bc, "ckpt.tmp", "ckpt"), 0);
	assert_int_equal(bfs_journal_get(bc->journal, t, "ckpt", &rec), 0);
	assert_string_equal(rec.src, "ckpt.tmp");
	assert_false(rec.started);

	/* The next tmp, uploaded; its rename must copy in S3, which fails. */
	assert_int_equal(bfs_index_put(bc->index, "", &e), 0);
	assert_int_not_equal(rename_rel(t, bc, "ckpt.tmp", "ckpt"), 0);
	assert_true(test_share_s3_requests(bc) > 0);

	assert_int_equal(bfs_journal_get(bc->journal, t, "ckpt", &rec), 0);
	assert_int_equal(rec.op, BFS_J_PUT);
	assert_int_equal(rec.pid, engine);
	assert_false(rec.started);
	assert_string_equal(rec.src, "ckpt.tmp");
	/*
	 * Under a second name of ours, made before the copy: while it ran no
	 * record named the file, and a connect sweeps the staging files of
	 * dead writers that no record names.
	 */
	assert_string_not_equal(rec.staging, name);
	assert_true(strncmp(rec.staging, talloc_asprintf(t, "l-%d-",
							 (int)getpid()),
			    strlen(talloc_asprintf(t, "l-%d-",
						   (int)getpid()))) == 0);
	path = talloc_asprintf(t, "%s/staging/%s", bc->cache_dir, rec.staging);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_size, 7);
	path = talloc_asprintf(t, "%s/staging/%s", bc->cache_dir, name);
	assert_int_equal(stat(path, &sb), -1);
	test_engine_stop(bc, engine);
	talloc_free(t);
}

/*
 * With `close = local`, a rename of a file S3 has is handed to the engine
 * without asking S3: a copy of the version renamed and a delete of the old
 * name, journalled in the engine's name; the index shows the new name,
 * whose readers read the old one until the copy is done.  Renamed again
 * before that, the copy comes from the first name.
 */
static void test_rename_of_a_file_in_s3_is_handed_to_the_engine(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	pid_t engine = test_engine_start(bc);
	struct bfs_entry e = {.name = "w.bin", .size = 7, .mtime = 5,
			      .etag = "\"v1\""};
	struct bfs_fh *reader = NULL;
	struct bfs_jrec rec;

	(void)state;
	assert_true(engine > 0);
	bc->close_local = true;
	assert_int_equal(bfs_index_put(bc->index, "", &e), 0);
	assert_int_equal(rename_rel(t, bc, "w.bin", "w2.bin"), 0);
	assert_int_equal(test_share_s3_requests(bc), 0);

	assert_int_equal(bfs_journal_get(bc->journal, t, "w2.bin", &rec), 0);
	assert_int_equal(rec.op, BFS_J_COPY);
	assert_int_equal(rec.pid, engine);
	/* The engine's, start stamp and all: not a dead process's. */
	assert_true(bfs_jrec_owner_alive(&rec));
	assert_true(rec.index_gone);
	assert_string_equal(rec.src, "w.bin");
	assert_string_equal(rec.src_etag, "\"v1\"");
	assert_int_equal(rec.size, 7);
	assert_int_equal(bfs_journal_get(bc->journal, t, "w.bin", &rec), 0);
	assert_int_equal(rec.op, BFS_J_DELETE);
	assert_int_equal(rec.pid, engine);
	assert_true(bfs_jrec_owner_alive(&rec));
	assert_true(rec.index_gone);
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "w.bin", &e),
			 ENOENT);
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "w2.bin", &e), 0);
	assert_true(e.flags & BFS_ENT_PENDING);
	assert_string_equal(e.etag, "\"v1\"");

	/* Read from the old name, the same version (its cache blocks). */
	assert_int_equal(bfs_fh_open(bc, "w2.bin", O_RDONLY, false, &reader),
			 0);
	assert_string_equal(reader->obj.key, "w.bin");
	assert_string_equal(reader->obj.etag, "\"v1\"");
	assert_false(bfs_fh_copy_ended(bc, reader));

	/* Again before the copy: from w.bin, and w2.bin's copy is dropped. */
	assert_int_equal(rename_rel(t, bc, "w2.bin", "w3.bin"), 0);
	assert_int_equal(test_share_s3_requests(bc), 0);
	assert_int_equal(bfs_journal_get(bc->journal, t, "w3.bin", &rec), 0);
	assert_int_equal(rec.op, BFS_J_COPY);
	assert_string_equal(rec.src, "w.bin");
	assert_int_equal(bfs_journal_get(bc->journal, t, "w2.bin", &rec), 0);
	assert_int_equal(rec.op, BFS_J_DELETE);
	assert_int_equal(bfs_journal_get(bc->journal, t, "w.bin", &rec), 0);
	assert_int_equal(rec.op, BFS_J_DELETE);

	/* The engine's end of the copy: the reader moves to the new object. */
	talloc_free(reader);
	reader = NULL;
	assert_int_equal(bfs_fh_open(bc, "w3.bin", O_RDONLY, false, &reader),
			 0);
	assert_string_equal(reader->obj.key, "w.bin");
	e = (struct bfs_entry){.name = "w3.bin", .size = 7, .mtime = 5,
			       .etag = "\"v2\""};
	assert_int_equal(bfs_index_put(bc->index, "", &e), 0);
	assert_int_equal(bfs_journal_done(bc->journal, "w3.bin", engine), 0);
	assert_true(bfs_fh_copy_ended(bc, reader));
	assert_string_equal(reader->obj.key, "w3.bin");
	assert_string_equal(reader->obj.etag, "\"v2\"");
	assert_false(bfs_fh_copy_ended(bc, reader));
	test_engine_stop(bc, engine);
	talloc_free(t);
}

/*
 * Two files swapped through a temporary name before the engine copied
 * anything (a -> t, b -> a, t -> b): the third rename may not copy t from
 * a, which the second's copy overwrites (the two copies would wait for
 * each other); it is refused for the engine (the rename waits for S3).
 * The engine's order: a's copy to t first, then b's to a, then the
 * deletes of the names copied from.
 */
static void test_a_swap_through_a_temporary_name_keeps_the_copies_in_order(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	pid_t engine = test_engine_start(bc);
	struct bfs_entry a = {.name = "a", .size = 1, .mtime = 5,
			      .etag = "\"A\""},
			 b = {.name = "b", .size = 2, .mtime = 5,
			      .etag = "\"B\""};
	struct bfs_wb_copy_srcs srcs;
	struct bfs_jrec *recs = NULL;
	size_t n = 0, i;
	char *from = NULL;

	(void)state;
	assert_true(engine > 0);
	bc->close_local = true;
	assert_int_equal(bfs_index_put(bc->index, "", &a), 0);
	assert_int_equal(bfs_index_put(bc->index, "", &b), 0);
	assert_int_equal(bfs_wb_rename_hand_over(bc->wb, t, "a", "\"A\"", "t",
						 1, 5, engine, &from), 0);
	assert_string_equal(from, "a");
	assert_int_equal(bfs_wb_rename_hand_over(bc->wb, t, "b", "\"B\"", "a",
						 2, 5, engine, &from), 0);
	assert_string_equal(from, "b");
	assert_int_equal(bfs_wb_rename_hand_over(bc->wb, t, "t", "\"A\"", "b",
						 1, 5, engine, &from), ESTALE);
	/* Refused: the index is as the two renames left it. */
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "t", &a), 0);
	assert_string_equal(a.etag, "\"A\"");
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "b", &b), ENOENT);

	assert_int_equal(bfs_journal_list(bc->journal, t, &recs, &n, NULL), 0);
	assert_int_equal(n, 3); /* COPY t <- a, COPY a <- b, DELETE b */
	assert_int_equal(bfs_wb_copy_sources(t, recs, n, NULL, &srcs), 0);
	for (i = 0; i < n; i++) {
		bool waits = bfs_wb_waits_for_copy(&srcs, &recs[i]);

		if (strcmp(recs[i].key, "t") == 0) {
			assert_int_equal(recs[i].op, BFS_J_COPY);
			assert_false(waits); /* first */
		} else if (strcmp(recs[i].key, "a") == 0) {
			assert_int_equal(recs[i].op, BFS_J_COPY);
			assert_true(waits); /* overwrites t's source */
		} else {
			assert_string_equal(recs[i].key, "b");
			assert_int_equal(recs[i].op, BFS_J_DELETE);
			assert_true(waits); /* a's copy reads it */
		}
	}
	test_engine_stop(bc, engine);
	talloc_free(t);
}

/*
 * smbd dies in the middle of a hand-over.  After step 1 (the journal)
 * the records are its own, which the engine leaves alone while it lives
 * and recovery takes once it is dead; the index is as before.  Whoever
 * runs the copy then makes the index step first (here the copy itself
 * fails: no S3).  After step 2 the index shows the rename too.  An index
 * step that cannot be made takes the journal back as it was.
 */
/* Files in the share's staging folder. */
static int staging_files(TALLOC_CTX *t, struct bfs_conn *bc)
{
	struct dirent **names = NULL;
	int n = scandir(talloc_asprintf(t, "%s/staging", bc->cache_dir),
			&names, NULL, NULL);
	int i, files = 0;

	for (i = 0; i < n; i++) {
		files += names[i]->d_name[0] != '.';
		free(names[i]);
	}
	free(names);
	return files;
}

/*
 * A folder's marker renamed with its folder, for the engine: a PUT of an
 * empty marker under the new name and the old marker's delete, both the
 * engine's (alive); the folder's entry moves at once, pending until the
 * new marker is up.  A marker with a change on its way is refused, and
 * a refusal leaves no staging file behind.
 */
static void test_a_folders_marker_is_handed_to_the_engine(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	pid_t engine = test_engine_start(bc);
	struct bfs_entry d = {.name = "d", .is_dir = true, .mtime = 5}, e;
	struct s3_status st = {0};
	struct bfs_jrec rec;
	struct stat sb;
	char **marks = NULL;
	size_t n_marks = 0, i;
	char *path;
	int staged;

	(void)state;
	assert_true(engine > 0);
	assert_int_equal(bfs_index_put(bc->index, "p/", &d), 0);
	assert_int_equal(bfs_wb_marker_hand_over(bc->wb, "p/d/", "p/e/",
						 engine), 0);
	assert_int_equal(test_share_s3_requests(bc), 0);
	assert_int_equal(bfs_journal_get(bc->journal, t, "p/e/", &rec), 0);
	assert_int_equal(rec.op, BFS_J_PUT);
	assert_int_equal(rec.pid, engine);
	assert_true(bfs_jrec_owner_alive(&rec));
	assert_null(rec.src);
	assert_non_null(rec.staging);
	path = talloc_asprintf(t, "%s/staging/%s", bc->cache_dir, rec.staging);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_size, 0);
	assert_int_equal(bfs_journal_get(bc->journal, t, "p/d/", &rec), 0);
	assert_int_equal(rec.op, BFS_J_DELETE);
	assert_int_equal(rec.pid, engine);
	assert_true(bfs_jrec_owner_alive(&rec));
	assert_true(rec.index_gone);
	assert_int_equal(bfs_index_lookup(bc->index, t, "p/", "d", &e), ENOENT);
	assert_int_equal(bfs_index_lookup(bc->index, t, "p/", "e", &e), 0);
	assert_true(e.is_dir);
	assert_true(e.flags & BFS_ENT_PENDING);

	/* e's marker has its PUT on the way: refused, nothing left. */
	staged = staging_files(t, bc);
	assert_int_equal(bfs_wb_marker_hand_over(bc->wb, "p/e/", "p/f/",
						 engine), ESTALE);
	assert_int_equal(staging_files(t, bc), staged);
	assert_int_equal(bfs_journal_get(bc->journal, t, "p/f/", &rec), ENOENT);
	assert_int_equal(bfs_index_lookup(bc->index, t, "p/", "f", &e), ENOENT);
	/* Not a marker. */
	assert_int_equal(bfs_wb_marker_hand_over(bc->wb, "p/e", "p/f/",
						 engine), EINVAL);

	/*
	 * Cut after the journal step (smbd died): the old marker's delete,
	 * run by recovery, takes the folder's entry out first, under a mark,
	 * as the index step would have (S3 refuses here: the index is all).
	 */
	d.name = "g";
	assert_int_equal(bfs_index_put(bc->index, "p/", &d), 0);
	bfs_wb_test_stop_hand_over(1);
	assert_int_equal(bfs_wb_marker_hand_over(bc->wb, "p/g/", "p/h/",
						 engine), 0);
	bfs_wb_test_stop_hand_over(0);
	assert_int_equal(bfs_index_lookup(bc->index, t, "p/", "g", &e), 0);
	assert_int_equal(bfs_journal_get(bc->journal, t, "p/g/", &rec), 0);
	assert_int_equal(rec.pid, getpid());
	assert_int_not_equal(bfs_wb_finish(bc->wb, &rec, &st), 0);
	assert_int_equal(bfs_index_lookup(bc->index, t, "p/", "g", &e), ENOENT);
	/* Marked: no listing brings it back while its delete is on. */
	assert_int_equal(bfs_index_delete_marks(bc->index, t, time(NULL) + 1,
						&marks, &n_marks), 0);
	for (i = 0; i < n_marks && strcmp(marks[i], "p/g") != 0; i++) {
	}
	assert_true(i < n_marks);
	test_engine_stop(bc, engine);
	talloc_free(t);
}

/*
 * A folder's objects handed over together (bfs_wb_hand_over_many): the
 * files' copies and deletes and the markers' puts and deletes are all the
 * engine's, the index shows the new tree at once.  One refused in the
 * middle (a change of it on its way; another not in the index) is left to
 * the caller, and the others go on.
 */
static void test_a_folders_objects_are_handed_over_in_one_batch(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	pid_t engine = test_engine_start(bc);
	struct bfs_entry d = {.name = "d", .is_dir = true, .mtime = 5},
			 s = {.name = "s", .is_dir = true, .mtime = 5},
			 x = {.name = "x", .size = 1, .mtime = 7, .etag = "\"X\""},
			 y = {.name = "y", .size = 2, .mtime = 7, .etag = "\"Y\""},
			 z = {.name = "z", .size = 3, .mtime = 7, .etag = "\"Z\""},
			 e;
	struct bfs_jrec busy = {
		.key = "d/y", .op = BFS_J_PUT, .pid = getpid(),
		.staging = "not-there", .size = 9,
	}, rec;
	struct bfs_wb_move mv[] = {
		{.src = "d/x", .src_etag = "\"X\"", .dst = "f/x", .size = 1},
		{.src = "d/y", .src_etag = "\"Y\"", .dst = "f/y", .size = 2},
		{.src = "d/w", .src_etag = "\"W\"", .dst = "f/w", .size = 4},
		{.src = "d/s/z", .src_etag = "\"Z\"", .dst = "f/s/z", .size = 3},
		{.src = "d/s/", .dst = "f/s/"},
		{.src = "d/", .dst = "f/"},
	};
	size_t i;

	(void)state;
	assert_true(engine > 0);
	assert_int_equal(bfs_index_put(bc->index, "", &d), 0);
	assert_int_equal(bfs_index_put(bc->index, "d/", &s), 0);
	assert_int_equal(bfs_index_put(bc->index, "d/", &x), 0);
	assert_int_equal(bfs_index_put(bc->index, "d/", &y), 0);
	assert_int_equal(bfs_index_put(bc->index, "d/s/", &z), 0);
	assert_int_equal(bfs_journal_put(bc->journal, &busy), 0);

	bfs_wb_hand_over_many(bc->wb, mv, sizeof(mv) / sizeof(mv[0]), engine);
	assert_int_equal(test_share_s3_requests(bc), 0);
	assert_int_equal(mv[1].ret, ESTALE); /* its upload is on the way */
	assert_int_equal(mv[2].ret, ESTALE); /* not in the index */
	for (i = 0; i < sizeof(mv) / sizeof(mv[0]); i++) {
		if (i == 1 || i == 2) {
			continue;
		}
		assert_int_equal(mv[i].ret, 0);
		assert_int_equal(bfs_journal_get(bc->journal, t, mv[i].dst,
						 &rec), 0);
		assert_int_equal(rec.op, mv[i].dst[strlen(mv[i].dst) - 1] == '/' ?
				 BFS_J_PUT : BFS_J_COPY);
		assert_int_equal(rec.pid, engine);
		assert_int_equal(bfs_journal_get(bc->journal, t, mv[i].src,
						 &rec), 0);
		assert_int_equal(rec.op, BFS_J_DELETE);
		assert_int_equal(rec.pid, engine);
		assert_true(rec.index_gone);
	}
	/* The refused ones: as they were. */
	assert_int_equal(bfs_journal_get(bc->journal, t, "d/y", &rec), 0);
	assert_int_equal(rec.op, BFS_J_PUT);
	assert_int_equal(rec.pid, getpid());
	assert_int_equal(bfs_journal_get(bc->journal, t, "f/y", &rec), ENOENT);
	assert_int_equal(bfs_journal_get(bc->journal, t, "f/w", &rec), ENOENT);
	assert_int_equal(bfs_index_lookup(bc->index, t, "d/", "y", &e), 0);
	/* The new tree in the index at once, pending. */
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "f", &e), 0);
	assert_true(e.is_dir && (e.flags & BFS_ENT_PENDING));
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "d", &e), ENOENT);
	assert_int_equal(bfs_index_lookup(bc->index, t, "f/", "x", &e), 0);
	assert_int_equal(e.size, 1);
	assert_int_equal(bfs_index_lookup(bc->index, t, "f/s/", "z", &e), 0);
	assert_int_equal(e.size, 3);
	assert_int_equal(bfs_index_lookup(bc->index, t, "f/", "s", &e), 0);
	assert_true(e.is_dir);
	test_engine_stop(bc, engine);
	talloc_free(t);
}

static void test_a_hand_over_cut_by_a_crash_is_finished_by_recovery(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	pid_t engine = test_engine_start(bc);
	struct bfs_entry a = {.name = "a", .size = 3, .mtime = 5,
			      .etag = "\"A\""},
			 b = {.name = "b", .size = 4, .mtime = 5,
			      .etag = "\"B\""}, e;
	struct s3_status st = {0};
	struct bfs_jrec rec;
	char *from = NULL;

	(void)state;
	assert_true(engine > 0);
	assert_int_equal(bfs_index_put(bc->index, "", &a), 0);
	assert_int_equal(bfs_index_put(bc->index, "", &b), 0);

	/* Cut after the journal. */
	bfs_wb_test_stop_hand_over(1);
	assert_int_equal(bfs_wb_rename_hand_over(bc->wb, t, "a", "\"A\"",
						 "a2", 3, 5, engine, &from),
			 0);
	bfs_wb_test_stop_hand_over(0);
	assert_int_equal(bfs_journal_get(bc->journal, t, "a2", &rec), 0);
	assert_int_equal(rec.op, BFS_J_COPY);
	assert_int_equal(rec.pid, getpid()); /* not yet the engine's */
	assert_int_equal(bfs_journal_get(bc->journal, t, "a", &rec), 0);
	assert_int_equal(rec.op, BFS_J_DELETE);
	assert_int_equal(rec.pid, getpid());
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "a", &e), 0);
	assert_false(e.flags & BFS_ENT_PENDING);
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "a2", &e), ENOENT);
	/* Recovery runs the copy: the index step first. */
	assert_int_equal(bfs_journal_get(bc->journal, t, "a2", &rec), 0);
	assert_int_not_equal(bfs_wb_finish(bc->wb, &rec, &st), 0); /* no S3 */
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "a", &e), ENOENT);
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "a2", &e), 0);
	assert_true(e.flags & BFS_ENT_PENDING);
	assert_string_equal(e.etag, "\"A\"");
	/* Run again: the index is left as it is. */
	assert_int_not_equal(bfs_wb_finish(bc->wb, &rec, &st), 0);
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "a2", &e), 0);
	assert_true(e.flags & BFS_ENT_PENDING);

	/* Cut after the index. */
	bfs_wb_test_stop_hand_over(2);
	assert_int_equal(bfs_wb_rename_hand_over(bc->wb, t, "b", "\"B\"",
						 "b2", 4, 5, engine, &from),
			 0);
	bfs_wb_test_stop_hand_over(0);
	assert_int_equal(bfs_journal_get(bc->journal, t, "b2", &rec), 0);
	assert_int_equal(rec.pid, getpid());
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "b", &e), ENOENT);
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "b2", &e), 0);
	assert_true(e.flags & BFS_ENT_PENDING);
	assert_int_equal(bfs_journal_done(bc->journal, "b2", getpid()), 0);
	assert_int_equal(bfs_journal_done(bc->journal, "b", getpid()), 0);

	/* The index step fails: the journal as before, a2's copy back in
	 * the engine's name, no record of a3. */
	assert_int_equal(bfs_journal_update_op(bc->journal, "a2", getpid(),
					       BFS_J_COPY, &(struct bfs_jrec){
						       .key = "a2",
						       .op = BFS_J_COPY,
						       .pid = engine,
						       .src = "a",
						       .src_etag = "\"A\"",
						       .size = 3,
						       .index_gone = true}),
			 0);
	assert_int_equal(bfs_journal_update_op(bc->journal, "a", getpid(),
					       BFS_J_DELETE, &(struct bfs_jrec){
						       .key = "a",
						       .op = BFS_J_DELETE,
						       .pid = engine,
						       .index_gone = true}),
			 0);
	bfs_wb_test_stop_hand_over(-1);
	assert_int_equal(bfs_wb_rename_hand_over(bc->wb, t, "a2", "\"A\"",
						 "a3", 3, 5, engine, &from),
			 EIO);
	bfs_wb_test_stop_hand_over(0);
	assert_int_equal(bfs_journal_get(bc->journal, t, "a3", &rec), ENOENT);
	assert_int_equal(bfs_journal_get(bc->journal, t, "a2", &rec), 0);
	assert_int_equal(rec.op, BFS_J_COPY);
	assert_int_equal(rec.pid, engine);
	assert_string_equal(rec.src, "a");
	assert_int_equal(bfs_journal_get(bc->journal, t, "a", &rec), 0);
	assert_int_equal(rec.op, BFS_J_DELETE);
	assert_int_equal(rec.pid, engine);
	/* A source the index no longer has: refused before the journal. */
	assert_int_equal(bfs_index_remove(bc->index, "", "a2"), 0);
	assert_int_equal(bfs_wb_rename_hand_over(bc->wb, t, "a2", "\"A\"",
						 "a3", 3, 5, engine, &from),
			 ESTALE);
	assert_int_equal(bfs_journal_get(bc->journal, t, "a3", &rec), ENOENT);
	test_engine_stop(bc, engine);
	talloc_free(t);
}

/*
 * A rename handed over a second time before its copy (x -> y, y -> z),
 * cut after the second's journal step: z is copied from x, whose entry
 * went with the first rename, so recovery cannot show z until it is
 * copied; y's pending entry (the renamed version's ETag, no record once
 * y's delete is done) is settled and its folder listed again when that
 * delete ends, instead of being kept by every listing for ever.
 */
static void test_a_chain_rename_cut_after_its_journal_leaves_no_ghost(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	pid_t engine = test_engine_start(bc);
	struct bfs_entry x = {.name = "x", .size = 3, .mtime = 5,
			      .etag = "\"X\""}, e;
	struct bfs_jrec rec;
	time_t listed;

	(void)state;
	assert_true(engine > 0);
	assert_int_equal(test_share_listed(bc, ""), 0);
	assert_int_equal(bfs_index_put(bc->index, "", &x), 0);
	assert_int_equal(bfs_wb_rename_hand_over(bc->wb, t, "x", "\"X\"", "y",
						 3, 5, engine, NULL), 0);
	bfs_wb_test_stop_hand_over(1);
	assert_int_equal(bfs_wb_rename_hand_over(bc->wb, t, "y", "\"X\"", "z",
						 3, 5, engine, NULL), 0);
	bfs_wb_test_stop_hand_over(0);
	assert_int_equal(bfs_journal_get(bc->journal, t, "z", &rec), 0);
	assert_string_equal(rec.src, "x");
	assert_int_equal(bfs_journal_get(bc->journal, t, "y", &rec), 0);
	assert_int_equal(rec.op, BFS_J_DELETE);
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "y", &e), 0);
	assert_true(e.flags & BFS_ENT_PENDING);

	/* While y's delete is journalled, its entry is left alone. */
	assert_false(bfs_wb_settle_cut_rename(bc->wb, "y"));
	/* Its delete done: the ghost goes at the folder's next listing. */
	assert_int_equal(bfs_journal_done(bc->journal, "y", getpid()), 0);
	assert_true(bfs_wb_settle_cut_rename(bc->wb, "y"));
	assert_int_equal(bfs_index_lookup(bc->index, t, "", "y", &e), 0);
	assert_false(e.flags & BFS_ENT_PENDING);
	assert_int_not_equal(bfs_index_dir_listed(bc->index, "", &listed), 0);
	/* Not a second time, nor a file without ETag, nor a settled one. */
	assert_false(bfs_wb_settle_cut_rename(bc->wb, "y"));
	assert_false(bfs_wb_settle_cut_rename(bc->wb, "x"));
	test_engine_stop(bc, engine);
	talloc_free(t);
}

/* Where a rename may not go, refused before anything moves. */
static void test_rename_rules(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);

	(void)state;
	assert_int_equal(test_share_mkdir(bc, "", "d"), 0);
	assert_int_equal(test_share_mkdir(bc, "", "e"), 0);
	talloc_free(written(bc, "f", "x"));
	talloc_free(written(bc, "g", "y"));
	/* S3 lists nothing under these (the index has its word for it). */
	assert_int_equal(test_share_listed(bc, "nodir/"), 0);
	assert_int_equal(test_share_listed(bc, "g/"), 0);
	assert_int_equal(rename_rel(t, bc, "", "x"), EBUSY);
	assert_int_equal(rename_rel(t, bc, "f", ""), EBUSY);
	assert_int_equal(rename_rel(t, bc, "d", "e"), EEXIST);
	assert_int_equal(rename_rel(t, bc, "f", "d"), EISDIR);
	assert_int_equal(rename_rel(t, bc, "f", "nodir/f"), ENOENT);
	assert_int_equal(rename_rel(t, bc, "f", "g/f"), ENOTDIR);
	assert_int_equal(rename_rel(t, bc, "missing", "h"), ENOENT);
	assert_int_equal(rename_rel(t, bc, "f", "f"), 0);
	assert_int_equal(test_share_s3_requests(bc), 0);
	talloc_free(t);
}

/* mkdir's and delete's rules, answered from the index alone. */
static void test_mkdir_and_unlink_rules(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);

	(void)state;
	assert_int_equal(test_share_mkdir(bc, "", "d"), 0);
	talloc_free(written(bc, "d/f", "x"));
	assert_int_equal(test_share_listed(bc, "nodir/"), 0);
	assert_int_equal(test_share_listed(bc, "d/f/"), 0);
	assert_int_equal(bfs_mkdir(bc, "d"), EEXIST);
	assert_int_equal(bfs_mkdir(bc, ""), EEXIST);
	assert_int_equal(bfs_mkdir(bc, "nodir/n"), ENOENT);
	assert_int_equal(bfs_mkdir(bc, "d/f/n"), ENOTDIR);

	assert_int_equal(bfs_unlink(bc, "", false), EBUSY);
	assert_int_equal(bfs_unlink(bc, "", true), EBUSY);
	assert_int_equal(bfs_unlink(bc, "missing", false), ENOENT);
	assert_int_equal(bfs_unlink(bc, "d", false), EISDIR);
	assert_int_equal(bfs_unlink(bc, "d/f", true), ENOTDIR);
	/* A name being written counts. */
	assert_int_equal(bfs_unlink(bc, "d", true), ENOTEMPTY);
	assert_int_equal(test_share_s3_requests(bc), 0);
	talloc_free(t);
}

/*
 * A file deleted while open for writing here: its opens upload nothing
 * at their close, even when S3 refuses the delete itself.
 */
static void test_unlink_open_file(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = share(t);
	struct bfs_fh *fh = written(bc, "f", "bytes");

	(void)state;
	assert_true(fh->dirty);
	assert_int_not_equal(bfs_unlink(bc, "f", false), 0); /* S3 away */
	assert_true(fh->deleted);
	assert_false(fh->dirty);
	assert_null(bfs_staged_twin(bc, "f", NULL));
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rename_staged_file),
		cmocka_unit_test(test_rename_retargets_a_handed_over_upload),
		cmocka_unit_test(test_a_failed_copy_over_a_waiting_upload_puts_that_upload_back),
		cmocka_unit_test(test_rename_of_a_file_in_s3_is_handed_to_the_engine),
		cmocka_unit_test(test_a_swap_through_a_temporary_name_keeps_the_copies_in_order),
		cmocka_unit_test(test_a_hand_over_cut_by_a_crash_is_finished_by_recovery),
		cmocka_unit_test(test_a_folders_marker_is_handed_to_the_engine),
		cmocka_unit_test(test_a_folders_objects_are_handed_over_in_one_batch),
		cmocka_unit_test(test_a_chain_rename_cut_after_its_journal_leaves_no_ghost),
		cmocka_unit_test(test_rename_rules),
		cmocka_unit_test(test_mkdir_and_unlink_rules),
		cmocka_unit_test(test_unlink_open_file),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
