/* The LMDB metadata index: listings in, lookups and ordered pages out. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <stdbool.h>
#include <cmocka.h>
#include <lmdb.h>

#include "test_tmpdir.h"

#include "bfs_index.h"
#include "bfs_lmdb.h"

static char *tmpdir(TALLOC_CTX *t)
{
	char *d = test_tmpdir(t, "bfs-index-test");

	assert_non_null(d);
	return d;
}

static struct s3_dir *listing(TALLOC_CTX *t, const char *prefix,
			      const char **files, size_t nf,
			      const char **dirs, size_t nd)
{
	struct s3_listing page = {0};
	struct s3_dir *d = s3_dir_new(t, prefix);
	size_t i;

	page.objects = talloc_zero_array(t, struct s3_object_entry, nf + 1);
	page.prefixes = talloc_zero_array(t, char *, nd + 1);
	for (i = 0; i < nf; i++) {
		page.objects[i].key = talloc_asprintf(t, "%s%s", prefix, files[i]);
		page.objects[i].size = 100 + i;
		page.objects[i].etag = talloc_asprintf(t, "etag-%s", files[i]);
		page.objects[i].mtime = 1700000000 + (time_t)i;
	}
	for (i = 0; i < nd; i++) {
		page.prefixes[i] = talloc_asprintf(t, "%s%s/", prefix, dirs[i]);
	}
	page.n_objects = nf;
	page.n_prefixes = nd;
	assert_int_equal(s3_dir_add_page(d, &page), 0);
	s3_dir_finish(d);
	return d;
}

static void test_store_lookup_children(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	struct bfs_index *idx = NULL;
	const char *files[] = {"b.txt", "a.txt", "c d.bin"};
	const char *dirs[] = {"sub", "zz"};
	struct bfs_entry e, *ents = NULL;
	time_t at = 0;
	size_t n = 0;

	(void)state;
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bkt", &idx, &why), 0);
	assert_int_equal(bfs_index_dir_listed(idx, "x/", &at), ENOENT);
	assert_int_equal(bfs_index_store_dir(idx, listing(t, "x/", files, 3,
							  dirs, 2), 1234), 0);
	assert_int_equal(bfs_index_dir_listed(idx, "x/", &at), 0);
	assert_int_equal(at, 1234);

	assert_int_equal(bfs_index_lookup(idx, t, "x/", "c d.bin", &e), 0);
	assert_false(e.is_dir);
	assert_int_equal(e.size, 102);
	assert_string_equal(e.etag, "etag-c d.bin");
	assert_true(e.ino > BFS_ROOT_INO);
	assert_int_equal(bfs_index_lookup(idx, t, "x/", "sub", &e), 0);
	assert_true(e.is_dir);
	assert_int_equal(bfs_index_lookup(idx, t, "x/", "nope", &e), ENOENT);
	/* Another directory's range is not this one's. */
	assert_int_equal(bfs_index_lookup(idx, t, "", "a.txt", &e), ENOENT);

	/* Pages of two, in name order, each exactly once. */
	assert_int_equal(bfs_index_children(idx, t, "x/", NULL, 2, &ents, &n), 0);
	assert_int_equal(n, 2);
	assert_string_equal(ents[0].name, "a.txt");
	assert_string_equal(ents[1].name, "b.txt");
	assert_int_equal(bfs_index_children(idx, t, "x/", "b.txt", 2, &ents, &n), 0);
	assert_int_equal(n, 2);
	assert_string_equal(ents[0].name, "c d.bin");
	assert_string_equal(ents[1].name, "sub");
	assert_int_equal(bfs_index_children(idx, t, "x/", "sub", 2, &ents, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(ents[0].name, "zz");
	talloc_free(t);
}

/* Relisting keeps inodes of names that stay and drops names that went. */
static void test_relist_keeps_inodes(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir;
	struct bfs_index *idx = NULL, *again = NULL;
	const char *v1[] = {"keep", "gone"}, *v2[] = {"keep", "new"};
	struct bfs_entry e;
	uint64_t keep_ino;

	(void)state;
	dir = tmpdir(t);
	assert_int_equal(bfs_index_open(t, dir, "bkt", &idx, &why), 0);
	assert_int_equal(bfs_index_store_dir(idx, listing(t, "", v1, 2, NULL, 0), 1), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "", "keep", &e), 0);
	keep_ino = e.ino;
	assert_int_equal(bfs_index_store_dir(idx, listing(t, "", v2, 2, NULL, 0), 2), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "", "gone", &e), ENOENT);
	assert_int_equal(bfs_index_lookup(idx, t, "", "new", &e), 0);
	assert_int_not_equal(e.ino, keep_ino);
	/* Another process (here: another open) sees the same inode. */
	assert_int_equal(bfs_index_open(t, dir, "bkt", &again, &why), 0);
	assert_int_equal(bfs_index_lookup(again, t, "", "keep", &e), 0);
	assert_int_equal(e.ino, keep_ino);
	/* Invalidation forgets the listing time only. */
	assert_int_equal(bfs_index_invalidate_dir(again, ""), 0);
	assert_int_equal(bfs_index_dir_listed(idx, "", &(time_t){0}), ENOENT);
	assert_int_equal(bfs_index_lookup(idx, t, "", "keep", &e), 0);
	talloc_free(t);
}

static void test_many_unique_inodes(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	struct bfs_index *idx = NULL;
	const char **names = talloc_array(t, const char *, 5000);
	struct bfs_entry *ents = NULL;
	uint64_t *seen;
	size_t i, j, n = 0, total = 0;
	const char *after = NULL;

	(void)state;
	for (i = 0; i < 5000; i++) {
		names[i] = talloc_asprintf(t, "f%05zu", i);
	}
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bkt", &idx, &why), 0);
	assert_int_equal(bfs_index_store_dir(idx, listing(t, "d/", names, 5000,
							  NULL, 0), 1), 0);
	seen = talloc_array(t, uint64_t, 5000);
	do {
		assert_int_equal(bfs_index_children(idx, t, "d/", after, 777,
						    &ents, &n), 0);
		for (i = 0; i < n; i++) {
			seen[total++] = ents[i].ino;
		}
		after = n ? ents[n - 1].name : NULL;
	} while (n == 777);
	assert_int_equal(total, 5000);
	for (i = 0; i < total; i++) {
		for (j = i + 1; j < total; j++) {
			assert_int_not_equal(seen[i], seen[j]);
		}
	}
	talloc_free(t);
}

static void test_other_bucket_refused(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_index *idx = NULL;

	(void)state;
	assert_int_equal(bfs_index_open(t, dir, "one", &idx, &why), 0);
	assert_int_equal(bfs_index_open(t, dir, "two", &idx, &why), EEXIST);
	assert_non_null(strstr(why, "another bucket"));
	talloc_free(t);
}

/*
 * Root opens the cache folder's files: a folder on the way that others
 * may write, or that is not root's, is refused naming it (issue 19
 * point 6), as sshd's StrictModes does.
 */
static void test_a_cache_folder_others_may_change_is_refused(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	char *idx_dir = talloc_asprintf(t, "%s/share/index", dir);
	char *share = talloc_asprintf(t, "%s/share", dir);
	char *link = talloc_asprintf(t, "%s/link", dir);
	struct bfs_index *idx = NULL;

	(void)state;
	if (geteuid() != 0) {
		skip(); /* chown needs root, as the server has */
	}
	assert_int_equal(bfs_index_open(t, idx_dir, "aws/b", &idx, &why), 0);
	TALLOC_FREE(idx);

	assert_int_equal(chmod(share, 0777), 0);
	assert_int_equal(bfs_index_open(t, idx_dir, "aws/b", &idx, &why),
			 EPERM);
	assert_non_null(strstr(why, share));
	assert_non_null(strstr(why, "writable by group or others"));
	/* Root's sticky folder may lie on the way (/tmp), but is no cache. */
	assert_int_equal(chmod(share, 01777), 0);
	assert_int_equal(bfs_index_open(t, idx_dir, "aws/b", &idx, &why), 0);
	TALLOC_FREE(idx);
	{
		char msg[512];

		assert_int_equal(bfs_dir_trusted(share, msg, sizeof(msg)),
				 EPERM);
		assert_non_null(strstr(msg, "writable by group or others"));
	}
	assert_int_equal(chmod(share, 0700), 0);

	assert_int_equal(chown(idx_dir, 65534, 65534), 0);
	assert_int_equal(bfs_index_open(t, idx_dir, "aws/b", &idx, &why),
			 EPERM);
	assert_non_null(strstr(why, "not owned by root"));
	assert_int_equal(chown(idx_dir, 0, 0), 0);

	/* A link someone else planted, even to a good folder. */
	assert_int_equal(symlink(share, link), 0);
	assert_int_equal(lchown(link, 65534, 65534), 0);
	assert_int_equal(bfs_index_open(t, talloc_asprintf(t, "%s/index", link),
					"aws/b", &idx, &why), EPERM);
	assert_non_null(strstr(why, link));
	assert_int_equal(lchown(link, 0, 0), 0);
	assert_int_equal(bfs_index_open(t, talloc_asprintf(t, "%s/index", link),
					"aws/b", &idx, &why), 0);
	talloc_free(t);
}

/* A same-named bucket on another S3 service is another bucket. */
static void test_same_bucket_on_another_endpoint_refused(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_index *idx = NULL;
	char *minio = bfs_index_identity(t, "http://minio:9000/", "data");

	(void)state;
	assert_string_equal(minio, "http://minio:9000/data");
	assert_string_equal(bfs_index_identity(t, "HTTP://MinIO:9000", "data"),
			    minio);
	assert_string_equal(bfs_index_identity(t, NULL, "data"), "aws/data");
	assert_string_equal(bfs_index_identity(t, "", "data"), "aws/data");
	assert_int_equal(bfs_index_open(t, dir, minio, &idx, &why), 0);
	TALLOC_FREE(idx);
	assert_int_equal(bfs_index_open(t, dir, "aws/data", &idx, &why),
			 EEXIST);
	assert_non_null(strstr(why, "http://minio:9000/data"));
	assert_non_null(strstr(why, "cache dir"));
	assert_int_equal(bfs_index_open(t, dir, bfs_index_identity(t,
					"http://minio:9000", "data"), &idx,
					&why), 0);
	talloc_free(t);
}

/*
 * A folder filled before the endpoint was recorded holds the bare bucket
 * name: it is taken over, then held to the endpoint that took it.
 */
static void test_bucket_only_identity_is_upgraded(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_index *idx = NULL;

	(void)state;
	assert_int_equal(bfs_index_open(t, dir, "data", &idx, &why), 0);
	TALLOC_FREE(idx);
	assert_int_equal(bfs_index_open(t, dir, "http://a:1/data", &idx, &why),
			 0);
	TALLOC_FREE(idx);
	assert_int_equal(bfs_index_open(t, dir, "http://b:1/data", &idx, &why),
			 EEXIST);
	assert_int_equal(bfs_index_open(t, dir, "http://a:1/other", &idx,
					&why), EEXIST);
	talloc_free(t);
}

static void count_file(void *priv, const char *key, const struct bfs_entry *e)
{
	(void)key;
	assert_false(e->is_dir);
	(*(int *)priv)++;
}

/* Damage the index behind its back, as a bug or a bad disk could. */
static void damage(const char *dir, uint64_t a_ino, uint64_t c_ino)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi ent, inos;
	MDB_val k = {3, (void *)"\0b"}, v, ik;
	struct bfs_entry e;
	uint64_t orphan = 12345;
	void *buf;
	size_t len;
	TALLOC_CTX *t = talloc_new(NULL);

	k.mv_size = 2;
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 4), 0);
	assert_int_equal(mdb_env_open(env, dir, MDB_NOTLS, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "ent", 0, &ent), 0);
	assert_int_equal(mdb_dbi_open(txn, "inos", MDB_INTEGERKEY, &inos), 0);
	/* b takes a's inode number (its own stays in the map, orphaned) */
	assert_int_equal(mdb_get(txn, ent, &k, &v), 0);
	assert_int_equal(bfs_index_decode(t, v.mv_data, v.mv_size, &e), 0);
	e.ino = a_ino;
	assert_int_equal(bfs_index_encode(t, &e, &buf, &len), 0);
	v.mv_size = len;
	v.mv_data = buf;
	assert_int_equal(mdb_put(txn, ent, &k, &v, 0), 0);
	/* c's number falls out of the map */
	ik.mv_size = sizeof(c_ino);
	ik.mv_data = &c_ino;
	assert_int_equal(mdb_del(txn, inos, &ik, NULL), 0);
	/* a number nobody owns */
	ik.mv_data = &orphan;
	v.mv_size = 7;
	v.mv_data = (void *)"nothing";
	assert_int_equal(mdb_put(txn, inos, &ik, &v, 0), 0);
	/* a record that does not decode */
	k.mv_size = 6;
	k.mv_data = (void *)"\0junk";
	v.mv_size = 3;
	v.mv_data = (void *)"bad";
	assert_int_equal(mdb_put(txn, ent, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
	talloc_free(t);
}

static void test_check_finds_and_repairs_damage(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	const char *files[] = {"a", "b", "c"}, *dirs[] = {"sub"};
	struct bfs_index *idx = NULL;
	struct bfs_index_fsck r;
	struct bfs_entry a, b, c;
	int nfiles = 0;

	(void)state;
	assert_int_equal(bfs_index_open(t, dir, "bkt", &idx, &why), 0);
	assert_int_equal(bfs_index_store_dir(idx, listing(t, "", files, 3,
							  dirs, 1), 1), 0);
	assert_int_equal(bfs_index_check(idx, true, count_file, &nfiles, &r), 0);
	assert_int_equal(nfiles, 3);
	assert_int_equal(r.entries, 4);
	assert_int_equal(r.bad_entries + r.ino_missing + r.ino_shared +
			 r.ino_orphans, 0);
	assert_int_equal(bfs_index_lookup(idx, t, "", "a", &a), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "", "c", &c), 0);
	talloc_free(idx);

	damage(dir, a.ino, c.ino);
	assert_int_equal(bfs_index_open(t, dir, "bkt", &idx, &why), 0);
	assert_int_equal(bfs_index_check(idx, false, NULL, NULL, &r), 0);
	assert_int_equal(r.bad_entries, 1);
	assert_int_equal(r.ino_missing, 1);
	assert_int_equal(r.ino_shared, 1);
	assert_int_equal(r.ino_orphans, 2);
	/* A dry run changes nothing. */
	assert_int_equal(bfs_index_check(idx, false, NULL, NULL, &r), 0);
	assert_int_equal(r.bad_entries + r.ino_shared, 2);
	/* Repaired, b takes back its own number: one orphan is left. */
	assert_int_equal(bfs_index_check(idx, true, NULL, NULL, &r), 0);
	assert_int_equal(r.ino_shared, 1);
	assert_int_equal(r.ino_orphans, 1);
	assert_int_equal(bfs_index_check(idx, true, NULL, NULL, &r), 0);
	assert_int_equal(r.bad_entries + r.ino_missing + r.ino_shared +
			 r.ino_orphans, 0);
	assert_int_equal(r.entries, 4);
	/* a kept its number, b has another; the listing is asked again. */
	assert_int_equal(bfs_index_lookup(idx, t, "", "a", &a), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "", "b", &b), 0);
	assert_int_not_equal(a.ino, b.ino);
	assert_int_equal(bfs_index_dir_listed(idx, "", &(time_t){0}), ENOENT);
	talloc_free(t);
}

static void test_learn_keeps_pending_entries(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	const char *keys[] = {"d/x", "d/y", "top"};
	struct bfs_entry ents[3] = {
		{.size = 1, .etag = (char *)"e1", .mtime = 5},
		{.size = 2, .etag = (char *)"e2", .mtime = 5},
		{.size = 3, .etag = (char *)"e3", .mtime = 5},
	};
	struct bfs_entry mine = {
		.name = (char *)"y", .size = 99, .flags = BFS_ENT_PENDING,
	}, e;
	struct bfs_index *idx = NULL;

	(void)state;
	assert_int_equal(bfs_index_open(t, dir, "bkt", &idx, &why), 0);
	assert_int_equal(bfs_index_put(idx, "d/", &mine), 0);
	assert_int_equal(bfs_index_learn(idx, keys, ents, 3), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "x", &e), 0);
	assert_int_equal(e.size, 1);
	assert_string_equal(e.etag, "e1");
	assert_int_equal(bfs_index_lookup(idx, t, "", "top", &e), 0);
	assert_int_equal(e.size, 3);
	/* The entry being written through the share stays ours. */
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "y", &e), 0);
	assert_int_equal(e.size, 99);
	assert_true(e.flags & BFS_ENT_PENDING);
	/* Learnt entries do not make their directory listed. */
	assert_int_equal(bfs_index_dir_listed(idx, "d/", &(time_t){0}), ENOENT);
	talloc_free(t);
}

/* fsck of an empty index: no entries, so no inode list to sort (asan-unit's
 * UBSan caught qsort getting a NULL array). */
static void test_check_of_an_empty_index(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	struct bfs_index *idx = NULL;
	struct bfs_index_fsck r;

	(void)state;
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bkt", &idx, &why), 0);
	assert_int_equal(bfs_index_check(idx, true, NULL, NULL, &r), 0);
	assert_int_equal(r.entries, 0);
	assert_int_equal(r.bad_entries, 0);
	assert_int_equal(r.ino_orphans, 0);
	talloc_free(t);
}

static void test_record_decoding_refuses_garbage(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_entry in = {.size = 7, .mtime = 9, .ino = 11, .etag = "abc"}, out;
	void *buf;
	size_t len;
	uint8_t *p;

	(void)state;
	assert_int_equal(bfs_index_encode(t, &in, &buf, &len), 0);
	assert_int_equal(bfs_index_decode(t, buf, len, &out), 0);
	assert_string_equal(out.etag, "abc");
	assert_int_equal(out.ino, 11);
	assert_int_equal(bfs_index_decode(t, buf, len - 1, &out), EBADMSG);
	assert_int_equal(bfs_index_decode(t, buf, 3, &out), EBADMSG);
	p = buf;
	/* A NUL in the stored ETag (found by tests/fuzz/bfs_index_record):
	 * it used to decode to the ETag "a", a record that re-encodes to
	 * other bytes than were stored. */
	p[len - 2] = '\0';
	assert_int_equal(bfs_index_decode(t, buf, len, &out), EBADMSG);
	p[len - 2] = 'b';
	assert_int_equal(bfs_index_decode(t, buf, len, &out), 0);
	p[0] = 99; /* unknown version */
	assert_int_equal(bfs_index_decode(t, buf, len, &out), EBADMSG);
	talloc_free(t);
}

/*
 * A listing sent before a change here but stored after it must not undo
 * it: neither drop a name just made nor bring back one just removed.
 */
static void test_an_older_listing_does_not_undo_a_change(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	struct bfs_index *idx = NULL;
	const char *before[] = {"old.bin"};
	const char *after[] = {"new.bin"};
	struct bfs_entry e = {.name = "new.bin", .size = 5, .mtime = 1,
			      .etag = "etag-new"};
	time_t now = time(NULL), at = 0;
	uint64_t n = 0;

	(void)state;
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bkt", &idx, &why), 0);
	assert_int_equal(bfs_index_store_dir(idx, listing(t, "d/", before, 1,
							  NULL, 0), now - 100), 0);
	/* Made and removed here, now. */
	assert_int_equal(bfs_index_put(idx, "d/", &e), 0);
	assert_int_equal(bfs_index_remove(idx, "d/", "old.bin"), 0);

	/* Started before: it knows old.bin and not new.bin. */
	assert_int_equal(bfs_index_store_dir(idx, listing(t, "d/", before, 1,
							  NULL, 0), now - 1), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "new.bin", &e), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "old.bin", &e), ENOENT);

	/* Started well after: S3's answer is the truth again. */
	assert_int_equal(bfs_index_store_dir(idx, listing(t, "d/", before, 1,
							  NULL, 0), now + 5), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "new.bin", &e), ENOENT);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "old.bin", &e), 0);
	/* And the change records are gone with it. */
	assert_int_equal(bfs_index_store_dir(idx, listing(t, "d/", after, 1,
							  NULL, 0), now - 1), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "new.bin", &e), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "old.bin", &e), ENOENT);

	/* invalidate forgets the changes too: the next listing is truth. */
	assert_int_equal(bfs_index_remove(idx, "d/", "new.bin"), 0);
	assert_int_equal(bfs_index_invalidate_tree(idx, "d/", &n, NULL, NULL),
			 0);
	assert_int_equal(bfs_index_store_dir(idx, listing(t, "d/", after, 1,
							  NULL, 0), now - 1), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "new.bin", &e), 0);

	/* A slow listing is dated by its last page; a forgotten one stays so. */
	assert_int_equal(bfs_index_dir_set_listed(idx, "d/", now + 100), 0);
	assert_int_equal(bfs_index_dir_listed(idx, "d/", &at), 0);
	assert_int_equal(at, now + 100);
	assert_int_equal(bfs_index_invalidate_dir(idx, "d/"), 0);
	assert_int_equal(bfs_index_dir_set_listed(idx, "d/", now + 200), 0);
	assert_int_equal(bfs_index_dir_listed(idx, "d/", &at), ENOENT);
	talloc_free(t);
}

/* One process lists a directory while others wait; a dead one's claim is void. */
static void test_one_lister_per_directory(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_index *idx = NULL;
	int status = 0;
	pid_t child;

	(void)state;
	assert_int_equal(bfs_index_open(t, dir, "bkt", &idx, &why), 0);
	assert_int_equal(bfs_index_listing_claim(idx, "a/", 60), 0);
	/* Our own claim is ours again (another connection of this process). */
	assert_int_equal(bfs_index_listing_claim(idx, "a/", 60), 0);

	child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		/* Another smbd: its own environment on the same files. */
		struct bfs_index *other = NULL;
		int fails = 0;

		fails += bfs_index_open(NULL, dir, "bkt", &other, &why) != 0;
		fails += bfs_index_listing_claim(other, "a/", 60) != EBUSY;
		/* A claim older than max_age is void (a stuck lister). */
		fails += bfs_index_listing_claim(other, "a/", 0) != 0;
		/* Dies holding "b/" and "a/". */
		fails += bfs_index_listing_claim(other, "b/", 60) != 0;
		_exit(fails);
	}
	assert_int_equal(waitpid(child, &status, 0), child);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_int_equal(bfs_index_listing_claim(idx, "b/", 60), 0);
	assert_int_equal(bfs_index_listing_claim(idx, "a/", 60), 0);
	bfs_index_listing_release(idx, "a/");
	bfs_index_listing_release(idx, "b/");
	talloc_free(t);
}

/*
 * Issue 19 point 4: one key too long for the index (folder + name over
 * 511 bytes) is hidden with a reason; the rest of its folder is stored.
 */
static void test_an_over_long_key_is_hidden_and_its_folder_stored(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_index *idx = NULL;
	const char *why = NULL;
	char *prefix = talloc_asprintf(t, "%s/", talloc_strndup(t,
		"deepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeep"
		"deepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeep"
		"deepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeep"
		"deepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeep"
		"deepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeepdeep", 299));
	char *longname = talloc_array(t, char, 231);
	const char *files[] = {"ok.bin", NULL};
	const char *dirs[] = {NULL};
	struct bfs_entry e;
	struct s3_dir *d;

	(void)state;
	memset(longname, 'n', 230);
	longname[230] = '\0';	/* 300 + 1 + 230 = 531 > 511 */
	files[1] = longname;
	dirs[0] = longname;
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bucket", &idx, &why), 0);
	d = listing(t, prefix, files, 2, dirs, 1);
	assert_int_equal(d->n, 1);
	assert_int_equal(d->n_hidden, 2);
	assert_non_null(strstr(d->hidden[0].why, "too long"));
	assert_int_equal(bfs_index_store_dir(idx, d, 1), 0);
	assert_int_equal(bfs_index_lookup(idx, t, prefix, "ok.bin", &e), 0);
	talloc_free(t);
}

/*
 * Issue 19 point 12: an index LMDB file damaged by a power loss (garbled,
 * truncated) is set aside and the index starts anew; it does not fail
 * the share.
 */
static void damage_file(const char *dir, bool truncate_it)
{
	char *path = talloc_asprintf(NULL, "%s/data.mdb", dir);
	struct stat sb;
	int fd = open(path, O_RDWR);

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &sb), 0);
	if (truncate_it) {
		assert_int_equal(ftruncate(fd, sb.st_size / 3), 0);
	} else {
		char junk[8192];

		memset(junk, 0x5a, sizeof(junk));
		/* Both meta pages: nothing left to open. */
		assert_int_equal(pwrite(fd, junk, sizeof(junk), 0),
				 (ssize_t)sizeof(junk));
	}
	close(fd);
	talloc_free(path);
}

static void test_a_damaged_index_is_set_aside_and_rebuilt(void **state)
{
	(void)state;
	for (int garble = 0; garble < 2; garble++) {
		TALLOC_CTX *t = talloc_new(NULL);
		char *d = tmpdir(t);
		struct bfs_index *idx = NULL;
		const char *why = NULL;
		const char *files[] = {"a.bin"};
		struct bfs_entry e;
		struct dirent *de;
		DIR *dh;
		bool aside = false;
		int i;

		assert_int_equal(bfs_index_open(t, d, "bucket", &idx, &why), 0);
		/* Enough pages that a third of the file misses some. */
		for (i = 0; i < 200; i++) {
			char *p = talloc_asprintf(t, "dir%03d/", i);
			assert_int_equal(bfs_index_store_dir(
				idx, listing(t, p, files, 1, NULL, 0), 1), 0);
		}
		TALLOC_FREE(idx);
		damage_file(d, garble == 0);
		assert_int_equal(bfs_index_open(t, d, "bucket", &idx, &why), 0);
		assert_int_equal(bfs_index_lookup(idx, t, "dir000/", "a.bin", &e),
				 ENOENT);
		dh = opendir(d);
		while ((de = readdir(dh)) != NULL) {
			aside |= strncmp(de->d_name, "data.mdb.damaged-", 17) == 0;
		}
		closedir(dh);
		assert_true(aside);
		talloc_free(t);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_one_lister_per_directory),
		cmocka_unit_test(test_store_lookup_children),
		cmocka_unit_test(test_relist_keeps_inodes),
		cmocka_unit_test(test_many_unique_inodes),
		cmocka_unit_test(test_other_bucket_refused),
		cmocka_unit_test(test_same_bucket_on_another_endpoint_refused),
		cmocka_unit_test(test_a_cache_folder_others_may_change_is_refused),
		cmocka_unit_test(test_bucket_only_identity_is_upgraded),
		cmocka_unit_test(test_check_finds_and_repairs_damage),
		cmocka_unit_test(test_learn_keeps_pending_entries),
		cmocka_unit_test(test_check_of_an_empty_index),
		cmocka_unit_test(test_record_decoding_refuses_garbage),
		cmocka_unit_test(test_an_older_listing_does_not_undo_a_change),
		cmocka_unit_test(test_an_over_long_key_is_hidden_and_its_folder_stored),
		cmocka_unit_test(test_a_damaged_index_is_set_aside_and_rebuilt),
	};
	return cmocka_run_group_tests_name("bfs_index", tests, NULL, NULL);
}
