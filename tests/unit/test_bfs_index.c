/* The LMDB metadata index: listings in, lookups and ordered pages out. */
#include <errno.h>
#include <limits.h>
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
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <stdbool.h>
#include <cmocka.h>
#include <lmdb.h>

#include "test_tmpdir.h"

#include "bfs_index.h"
#include "bfs_lmdb.h"
#include "bfs_log.h"

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

/* Store d as a listing asked for now: no change here since it started. */
static int store_dir_now(struct bfs_index *idx, const struct s3_dir *d,
			 time_t now)
{
	uint64_t since;
	int rc = bfs_index_change_seq(idx, &since);

	return rc != 0 ? rc : bfs_index_store_dir(idx, d, now, since);
}

/*
 * Two processes creating the same 200 names at once (two smbds, two
 * clients making one folder or file): each name is made by exactly one,
 * the other told EEXIST (smbd's OBJECT_NAME_COLLISION).
 */
static void test_a_new_name_is_made_by_one_of_two_processes(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *dir = tmpdir(t), *why = NULL;
	struct bfs_index *idx = NULL;
	pid_t kids[2];
	int wins = 0, i, k;

	(void)state;
	assert_int_equal(bfs_index_open(t, dir, "bkt", &idx, &why), 0);
	assert_int_equal(store_dir_now(idx, listing(t, "d/", NULL, 0,
							  NULL, 0), time(NULL)), 0);
	for (k = 0; k < 2; k++) {
		kids[k] = fork();
		assert_true(kids[k] >= 0);
		if (kids[k] == 0) {
			struct bfs_index *mine = NULL;
			int won = 0;

			if (bfs_index_open(NULL, dir, "bkt", &mine, &why) != 0) {
				_exit(255);
			}
			for (i = 0; i < 200; i++) {
				char name[16];
				struct bfs_entry e = {.name = name, .mtime = 1,
						      .flags = BFS_ENT_PENDING};
				int rc;

				snprintf(name, sizeof(name), "n%03d", i);
				rc = bfs_index_put_new(mine, "d/", &e);
				if (rc == 0) {
					won++;
				} else if (rc != EEXIST) {
					_exit(255);
				}
			}
			_exit(won);
		}
	}
	for (k = 0; k < 2; k++) {
		int status;

		assert_int_equal(waitpid(kids[k], &status, 0), kids[k]);
		assert_true(WIFEXITED(status));
		assert_int_not_equal(WEXITSTATUS(status), 255);
		wins += WEXITSTATUS(status);
	}
	assert_int_equal(wins, 200);
	for (i = 0; i < 200; i++) {
		char name[16];
		struct bfs_entry e;

		snprintf(name, sizeof(name), "n%03d", i);
		assert_int_equal(bfs_index_lookup(idx, t, "d/", name, &e), 0);
	}
	/* And a plain put still replaces, as closes and relistings need. */
	{
		struct bfs_entry e = {.name = "n000", .size = 7, .mtime = 2};

		assert_int_equal(bfs_index_put_new(idx, "d/", &e), EEXIST);
		assert_int_equal(bfs_index_put(idx, "d/", &e), 0);
	}
	talloc_free(t);
}

/* The entry a key stands for: a file's, or a marker's folder in its parent. */
static void test_the_entry_of_a_key(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	char *dir, *name;
	bool is_dir;

	(void)state;
	assert_int_equal(bfs_key_entry(t, "a/b/f", &dir, &name, &is_dir), 0);
	assert_string_equal(dir, "a/b/");
	assert_string_equal(name, "f");
	assert_false(is_dir);
	assert_int_equal(bfs_key_entry(t, "a/b/", &dir, &name, &is_dir), 0);
	assert_string_equal(dir, "a/");
	assert_string_equal(name, "b");
	assert_true(is_dir);
	assert_int_equal(bfs_key_entry(t, "top/", &dir, &name, &is_dir), 0);
	assert_string_equal(dir, "");
	assert_string_equal(name, "top");
	assert_true(is_dir);
	assert_int_equal(bfs_key_entry(t, "f", &dir, &name, &is_dir), 0);
	assert_string_equal(dir, "");
	assert_string_equal(name, "f");
	assert_false(is_dir);
	talloc_free(t);
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
	assert_int_equal(store_dir_now(idx, listing(t, "x/", files, 3,
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
	assert_int_equal(store_dir_now(idx, listing(t, "", v1, 2, NULL, 0), 1), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "", "keep", &e), 0);
	keep_ino = e.ino;
	assert_int_equal(store_dir_now(idx, listing(t, "", v2, 2, NULL, 0), 2), 0);
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
	assert_int_equal(store_dir_now(idx, listing(t, "d/", names, 5000,
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
	assert_int_equal(store_dir_now(idx, listing(t, "", files, 3,
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

/*
 * Two nodes of a cluster (two indexes) that learn 10,000 names in
 * different ways and orders (a listing; creates in reverse order) give
 * each name the same inode, its key's (bfs_index_ino_hint): Samba keys
 * share modes and locks on it, cluster-wide.  The one exception: a name
 * renamed through a node keeps its inode there, as a POSIX rename does
 * (open handles keep their file ID, and a new file under the old name
 * must not take it); the other node, which learns the new name from a
 * listing, gives it the new key's.
 */
static void test_two_nodes_agree_on_the_inodes_of_ten_thousand_names(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	const size_t N = 10000;
	const char **names = talloc_array(t, const char *, N);
	struct bfs_index *a = NULL, *b = NULL;
	struct bfs_entry eb, *ents = NULL;
	const char *after = NULL;
	size_t i, n = 0, total = 0, renamed = 0;

	(void)state;
	for (i = 0; i < N; i++) {
		names[i] = talloc_asprintf(t, "shard-%05zu.tar", i);
	}
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bkt", &a, &why), 0);
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bkt", &b, &why), 0);
	assert_int_equal(store_dir_now(a, listing(t, "ds/", names, N,
							NULL, 0), 1), 0);
	for (i = N; i-- > 0;) {
		struct bfs_entry e = {.name = (char *)names[i], .size = 1,
				      .mtime = 1, .etag = (char *)"e"};
		const char *tmpname = talloc_asprintf(t, "%s.tmp", names[i]);

		if (i % 100 == 0) { /* written as tmp, renamed over */
			e.name = (char *)tmpname;
			assert_int_equal(bfs_index_put(b, "ds/", &e), 0);
			assert_int_equal(bfs_index_rename(b, "ds/", tmpname,
							  "ds/", names[i]), 0);
		} else {
			assert_int_equal(bfs_index_put(b, "ds/", &e), 0);
		}
	}
	do {
		assert_int_equal(bfs_index_children(a, t, "ds/", after, 999,
						    &ents, &n), 0);
		for (i = 0; i < n; i++, total++) {
			char *key = talloc_asprintf(t, "ds/%s", ents[i].name);
			char *tmpkey = talloc_asprintf(t, "%s.tmp", key);

			assert_int_equal(bfs_index_lookup(b, t, "ds/",
							  ents[i].name, &eb), 0);
			assert_int_equal(ents[i].ino, bfs_index_ino_hint(key));
			if (eb.ino == bfs_index_ino_hint(tmpkey)) {
				renamed++; /* the exception */
			} else {
				assert_int_equal(ents[i].ino, eb.ino);
			}
		}
		after = n ? ents[n - 1].name : NULL;
	} while (n == 999);
	assert_int_equal(total, N);
	assert_int_equal(renamed, N / 100);
	talloc_free(t);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The inodes of names[0..n) under ds/ in idx, in names' order. */
static uint64_t *inodes_of(TALLOC_CTX *t, struct bfs_index *idx,
			   const char **names, size_t n)
{
	uint64_t *inos = talloc_array(t, uint64_t, n);
	size_t i;

	for (i = 0; i < n; i++) {
		struct bfs_entry e;

		assert_int_equal(bfs_index_lookup(idx, t, "ds/", names[i], &e), 0);
		inos[i] = e.ino;
	}
	return inos;
}

/*
 * The same with hints of 16 bits: ten thousand names collide hundreds of
 * times.  Node A learns them from listings, one of which also held names
 * that are gone from the next; node B from creates in reverse order mixed
 * with creates of other names it deletes again; node C from one listing
 * of them alone.  The numbers depend only on the names a node knows: the
 * three agree on every one, and each index's check finds its map and
 * entries consistent.
 */
static void test_two_nodes_agree_on_the_inodes_of_colliding_names(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	const size_t N = 10000, G = 1000;
	const char **names = talloc_array(t, const char *, N + G);
	struct bfs_index *a = NULL, *b = NULL, *c = NULL;
	struct bfs_index_fsck ra = {0}, rb = {0};
	uint64_t *ia, *ib, *ic, *sorted;
	size_t i, collided = 0;

	(void)state;
	bfs_index_test_ino_bits(16);
	for (i = 0; i < N; i++) {
		names[i] = talloc_asprintf(t, "shard-%05zu.tar", i);
	}
	for (i = 0; i < G; i++) {
		names[N + i] = talloc_asprintf(t, "gone-%04zu.tmp", i);
	}
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bkt", &a, &why), 0);
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bkt", &b, &why), 0);
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bkt", &c, &why), 0);
	assert_int_equal(store_dir_now(c, listing(t, "ds/", names, N,
							NULL, 0), 1), 0);
	/* A: a listing with the gone names, then one without them. */
	assert_int_equal(store_dir_now(a, listing(t, "ds/", names, N + G,
							NULL, 0), 1), 0);
	assert_int_equal(store_dir_now(a, listing(t, "ds/", names, N,
							NULL, 0), 2), 0);
	/* B: reverse order, a gone name created after every tenth. */
	for (i = N; i-- > 0;) {
		struct bfs_entry e = {.name = (char *)names[i], .size = 1,
				      .mtime = 1, .etag = (char *)"e"};

		assert_int_equal(bfs_index_put(b, "ds/", &e), 0);
		if (i % 10 == 0) {
			struct bfs_entry g = {.name = (char *)names[N + i / 10],
					      .size = 1, .mtime = 1,
					      .etag = (char *)"e"};
			assert_int_equal(bfs_index_put(b, "ds/", &g), 0);
		}
	}
	for (i = 0; i < G; i++) {
		assert_int_equal(bfs_index_remove(b, "ds/", names[N + i]), 0);
	}

	ia = inodes_of(t, a, names, N);
	ib = inodes_of(t, b, names, N);
	ic = inodes_of(t, c, names, N);
	for (i = 0; i < N; i++) {
		char *key = talloc_asprintf(t, "ds/%s", names[i]);

		assert_int_equal(ia[i], ic[i]);
		assert_int_equal(ib[i], ic[i]);
		collided += ia[i] != bfs_index_ino_hint(key);
	}
	assert_true(collided > 300); /* the point: many collisions */
	sorted = talloc_memdup(t, ia, N * sizeof(*ia));
	qsort(sorted, N, sizeof(*sorted), cmp_u64);
	for (i = 1; i < N; i++) {
		assert_true(sorted[i - 1] != sorted[i]); /* no inode twice */
	}
	assert_int_equal(bfs_index_check(a, false, NULL, NULL, &ra), 0);
	assert_int_equal(bfs_index_check(b, false, NULL, NULL, &rb), 0);
	assert_int_equal(ra.ino_missing + ra.ino_shared + ra.ino_orphans, 0);
	assert_int_equal(rb.ino_missing + rb.ino_shared + rb.ino_orphans, 0);
	bfs_index_test_ino_bits(63);
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
 * Times and attributes a client set stay with the object while S3 keeps
 * it: through a relisting of the same version, a rewrite through the
 * share, a rename and another process; a version replaced in S3 by
 * someone else drops them.  An index written before they existed (record
 * version 1) still reads.
 */
static void test_set_times_and_attributes_last_as_long_as_the_object(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir;
	const char *files[] = {"a", "b"};
	struct bfs_index *idx = NULL, *again = NULL;
	struct bfs_meta m = {
		.have = BFS_META_MTIME | BFS_META_BTIME | BFS_META_ATTRS,
		.mtime = {.tv_sec = -2, .tv_nsec = 5},
		.btime = {.tv_sec = 86400, .tv_nsec = 999999999},
		.attrs = BFS_ATTR_HIDDEN | BFS_ATTR_READONLY,
	};
	struct bfs_entry e, v1 = {.size = 1, .mtime = 2, .ino = 3, .etag = "x"};
	struct s3_dir *d;
	uint8_t rec[1 + 1 + 2 + 4 + 8 + 8 + 8 + 1];
	void *buf;
	size_t len;

	(void)state;
	dir = tmpdir(t);
	assert_int_equal(bfs_index_open(t, dir, "bkt", &idx, &why), 0);
	assert_int_equal(store_dir_now(idx, listing(t, "", files, 2, NULL, 0), 1), 0);
	assert_int_equal(bfs_index_set_meta(idx, "", "nothere", &m, m.have), ENOENT);
	assert_int_equal(bfs_index_set_meta(idx, "", "a", &m, m.have), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "", "a", &e), 0);
	assert_true(bfs_meta_equal(&e.meta, &m));

	/* The same version listed again: kept. */
	assert_int_equal(store_dir_now(idx, listing(t, "", files, 2, NULL, 0), 5), 0);
	assert_int_equal(bfs_index_open(t, dir, "bkt", &again, &why), 0);
	assert_int_equal(bfs_index_lookup(again, t, "", "a", &e), 0);
	assert_true(bfs_meta_equal(&e.meta, &m));

	/* Written again through the share (a put naming only a new mtime):
	 * the create time and attributes stay. */
	e = (struct bfs_entry){.name = "a", .size = 9, .mtime = 10, .etag = "new",
			       .meta = {.have = BFS_META_MTIME, .mtime = {.tv_sec = 77}}};
	assert_int_equal(bfs_index_put(idx, "", &e), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "", "a", &e), 0);
	assert_int_equal(e.meta.have, m.have);
	assert_int_equal(e.meta.mtime.tv_sec, 77);
	assert_int_equal(e.meta.btime.tv_sec, 86400);
	assert_int_equal(e.meta.attrs, m.attrs);

	/* Renamed: they follow the name. */
	assert_int_equal(bfs_index_rename(idx, "", "a", "", "c"), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "", "c", &e), 0);
	assert_int_equal(e.meta.btime.tv_sec, 86400);

	/* Replaced in S3 by another writer (another ETag): dropped. */
	assert_int_equal(bfs_index_set_meta(idx, "", "b", &m, m.have), 0);
	d = listing(t, "", files, 2, NULL, 0);
	d->ents[1].etag = talloc_strdup(t, "etag-b-other");
	assert_int_equal(store_dir_now(idx, d, 9), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "", "b", &e), 0);
	assert_int_equal(e.meta.have, 0);

	/* An entry without them is written as before (version 1, as an
	 * index from before this holds): no times, the rest as stored. */
	assert_int_equal(bfs_index_encode(t, &v1, &buf, &len), 0);
	assert_int_equal(len, sizeof(rec));
	memcpy(rec, buf, len);
	assert_int_equal(rec[0], 1);
	assert_int_equal(bfs_index_decode(t, rec, sizeof(rec), &e), 0);
	assert_int_equal(e.meta.have, 0);
	assert_int_equal(e.ino, 3);
	assert_string_equal(e.etag, "x");
	talloc_free(t);
}

/*
 * What an object's own metadata says (a GET's x-amz-meta-*) fills what
 * the index lacks for that version only, and never overrides what a
 * client of this gateway set.
 */
static void test_an_objects_metadata_fills_only_what_is_missing(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	const char *files[] = {"f"};
	struct bfs_index *idx = NULL;
	struct bfs_meta set = {.have = BFS_META_ATTRS, .attrs = BFS_ATTR_SYSTEM};
	struct bfs_meta s3 = {.have = BFS_META_MTIME | BFS_META_ATTRS,
			      .mtime = {.tv_sec = 1629385022, .tv_nsec = 123},
			      .attrs = BFS_ATTR_HIDDEN};
	struct bfs_entry e;

	(void)state;
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bkt", &idx, &why), 0);
	assert_int_equal(store_dir_now(idx, listing(t, "d/", files, 1, NULL, 0), 1), 0);
	assert_int_equal(bfs_index_object_meta(idx, "d/f", "etag-other", &s3), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "f", &e), 0);
	assert_int_equal(e.meta.have, 0); /* another version's */
	assert_int_equal(bfs_index_set_meta(idx, "d/", "f", &set, set.have), 0);
	assert_int_equal(bfs_index_object_meta(idx, "d/f", "etag-f", &s3), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "f", &e), 0);
	assert_int_equal(e.meta.have, BFS_META_MTIME | BFS_META_ATTRS);
	assert_int_equal(e.meta.mtime.tv_sec, 1629385022);
	assert_int_equal(e.meta.mtime.tv_nsec, 123);
	assert_int_equal(e.meta.attrs, BFS_ATTR_SYSTEM); /* the client's */
	assert_int_equal(bfs_index_object_meta(idx, "d/none", "etag-f", &s3), ENOENT);
	talloc_free(t);
}

/*
 * Which came first is the index's count, not the wall clock: a listing
 * sent before an upload ended, with the clock stepped back 2 s in
 * between (a VM's time sync; the soak does it), looked 2 s younger than
 * the upload's end, and its older ETag replaced the new version's: one
 * soak read a checkpoint back with the previous version's bytes.
 */
static void test_a_listing_sent_before_a_change_keeps_it_whatever_the_clock(
	void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	const char *files[] = {"ckpt0"};
	struct bfs_index *idx = NULL;
	struct bfs_entry e = {.name = "ckpt0", .size = 100, .mtime = 1,
			      .etag = "etag-v2"};
	struct s3_dir *d;
	time_t now = time(NULL);
	uint64_t sent;

	(void)state;
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bkt", &idx, &why), 0);
	assert_int_equal(store_dir_now(idx, listing(t, "w/", files, 1, NULL, 0),
				       now - 100), 0);
	/* The listing goes out; S3 still has the first version. */
	assert_int_equal(bfs_index_change_seq(idx, &sent), 0);
	d = listing(t, "w/", files, 1, NULL, 0);
	/* The second version's upload ends: the index has its ETag. */
	assert_int_equal(bfs_index_put(idx, "w/", &e), 0);
	/* The listing's answer, dated as if it started seconds after. */
	assert_int_equal(bfs_index_store_dir(idx, d, now + 2, sent), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "w/", "ckpt0", &e), 0);
	assert_string_equal(e.etag, "etag-v2");
	talloc_free(t);
}

/*
 * A rename handed to the engine: the new name shows at once, pending with
 * the old version's ETag, and the old name is hidden; listings sent before
 * the engine copied and deleted (S3 has the old name only) change neither.
 */
static void test_a_rename_pending_in_s3_shows_the_new_name(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	const char *files[] = {"old.bin"};
	struct bfs_entry e;
	struct bfs_index *idx = NULL;
	time_t now = time(NULL);
	uint64_t ino;

	(void)state;
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bkt", &idx, &why), 0);
	assert_int_equal(store_dir_now(idx, listing(t, "p/", files, 1, NULL, 0),
				       now - 100), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "p/", "old.bin", &e), 0);
	ino = e.ino;
	assert_int_equal(bfs_index_rename_pending(idx, "p/", "old.bin", "q/",
						  "new.bin"), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "p/", "old.bin", &e),
			 ENOENT);
	assert_int_equal(bfs_index_lookup(idx, t, "q/", "new.bin", &e), 0);
	assert_true(e.flags & BFS_ENT_PENDING);
	assert_string_equal(e.etag, "etag-old.bin"); /* the listing's */
	assert_int_equal(e.ino, ino);
	/* S3 lists the old name, not the new one, until the engine is done. */
	assert_int_equal(store_dir_now(idx, listing(t, "p/", files, 1, NULL, 0),
				       now + 1), 0);
	assert_int_equal(store_dir_now(idx, listing(t, "q/", NULL, 0, NULL, 0),
				       now + 1), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "p/", "old.bin", &e),
			 ENOENT);
	assert_int_equal(bfs_index_lookup(idx, t, "q/", "new.bin", &e), 0);
	assert_true(e.flags & BFS_ENT_PENDING);
	/* The copy done: settled only while it is the entry the rename
	 * made (a close or another rename over it since keeps its own). */
	assert_int_equal(bfs_index_settle(idx, "q/", "new.bin", "etag-other",
					  "etag-copy"), ESTALE);
	assert_int_equal(bfs_index_settle(idx, "q/", "gone.bin",
					  "etag-old.bin", "etag-copy"), ENOENT);
	assert_int_equal(bfs_index_settle(idx, "q/", "new.bin", "etag-old.bin",
					  "etag-copy"), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "q/", "new.bin", &e), 0);
	assert_false(e.flags & BFS_ENT_PENDING);
	assert_string_equal(e.etag, "etag-copy");
	assert_int_equal(e.ino, ino);
	assert_int_equal(bfs_index_settle(idx, "q/", "new.bin", "etag-copy",
					  "etag-again"), ESTALE);
	/* The delete done: listings are the truth again. */
	assert_int_equal(bfs_index_clear_pending(idx, "p/", "old.bin"), 0);
	assert_int_equal(store_dir_now(idx, listing(t, "p/", NULL, 0, NULL, 0),
				       now + 2), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "p/", "old.bin", &e),
			 ENOENT);
	talloc_free(t);
}

/*
 * An upload ended, and a rename in the index covered its ETag with the
 * pending entry of the same version (tmp's, moved over final): the
 * uploader sets its ETag again, on that entry only: not on one of another
 * size or time, nor on its own entry made pending again in place (a newer
 * close's, in the same second), nor on one settled or a folder.
 */
static void test_an_uploads_etag_goes_on_its_own_version_pending_again(
	void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	struct bfs_index *idx = NULL;
	struct bfs_entry e = {.name = "ckpt", .size = 1, .mtime = 1000,
			      .flags = BFS_ENT_PENDING};
	struct bfs_entry d = {.name = "sub", .is_dir = true, .mtime = 1000,
			      .flags = BFS_ENT_PENDING};
	uint64_t settled_ino;

	(void)state;
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bkt", &idx, &why), 0);
	/* final as the upload left it (its inode number), then tmp's entry
	 * renamed over it: pending, no ETag, another inode number. */
	e.etag = "\"e1\"";
	e.flags = 0;
	assert_int_equal(bfs_index_put(idx, "run/", &e), 0);
	settled_ino = e.ino;
	e = (struct bfs_entry){.name = "ckpt.tmp", .size = 1, .mtime = 1000,
			       .flags = BFS_ENT_PENDING};
	assert_int_equal(bfs_index_put(idx, "run/", &e), 0);
	assert_int_equal(bfs_index_rename(idx, "run/", "ckpt.tmp", "run/",
					  "ckpt"), 0);
	assert_int_equal(bfs_index_put(idx, "run/", &d), 0);
	assert_int_equal(bfs_index_settle_unnamed(idx, "run/", "ckpt", 2, 1000,
						  settled_ino, "\"e1\""),
			 ESTALE);
	assert_int_equal(bfs_index_settle_unnamed(idx, "run/", "ckpt", 1, 1001,
						  settled_ino, "\"e1\""),
			 ESTALE);
	assert_int_equal(bfs_index_settle_unnamed(idx, "run/", "sub", 0, 1000,
						  settled_ino, "\"e1\""),
			 ESTALE);
	assert_int_equal(bfs_index_settle_unnamed(idx, "run/", "none", 1, 1000,
						  settled_ino, "\"e1\""),
			 ENOENT);
	assert_int_equal(bfs_index_lookup(idx, t, "run/", "ckpt", &e), 0);
	assert_true(e.flags & BFS_ENT_PENDING);
	assert_null(e.etag);
	/* The upload's own entry made pending again in place (its inode
	 * number): a newer close's of the same size and second, kept. */
	assert_int_equal(bfs_index_settle_unnamed(idx, "run/", "ckpt", 1, 1000,
						  e.ino, "\"e1\""), ESTALE);
	assert_int_equal(bfs_index_settle_unnamed(idx, "run/", "ckpt", 1, 1000,
						  settled_ino, "\"e1\""), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "run/", "ckpt", &e), 0);
	assert_false(e.flags & BFS_ENT_PENDING);
	assert_string_equal(e.etag, "\"e1\"");
	/* Settled: a second word changes nothing. */
	assert_int_equal(bfs_index_settle_unnamed(idx, "run/", "ckpt", 1, 1000,
						  settled_ino, "\"e2\""),
			 ESTALE);
	assert_int_equal(bfs_index_lookup(idx, t, "run/", "ckpt", &e), 0);
	assert_string_equal(e.etag, "\"e1\"");
	talloc_free(t);
}

/*
 * A delete handed to the engine: S3 lists the object until the engine
 * has deleted it.  No listing brings it back meanwhile, however late it
 * was sent, nor an invalidation, nor bfs_index_learn; the delete done
 * (bfs_index_remove) or a new file of the name ends that.
 */
static void test_a_delete_pending_in_s3_stays_deleted_until_done(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	const char *files[] = {"gone.bin", "kept.bin"};
	const char *key = "p/gone.bin";
	struct bfs_entry learnt = {.size = 100, .mtime = 1, .etag = "etag-1"};
	struct bfs_entry e = {.name = "gone.bin", .size = 5, .mtime = 2,
			      .etag = "etag-new"};
	struct bfs_index *idx = NULL;
	time_t now = time(NULL);
	uint64_t n = 0;

	(void)state;
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bkt", &idx, &why), 0);
	assert_int_equal(store_dir_now(idx, listing(t, "p/", files, 2, NULL, 0),
				       now - 100), 0);
	assert_int_equal(bfs_index_remove_pending(idx, "p/", "gone.bin"), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "p/", "gone.bin", &e),
			 ENOENT);
	/* Listings sent after the delete: S3 still has it. */
	assert_int_equal(store_dir_now(idx, listing(t, "p/", files, 2, NULL, 0),
				       now), 0);
	assert_int_equal(store_dir_now(idx, listing(t, "p/", files, 2, NULL, 0),
				       now + 1), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "p/", "gone.bin", &e),
			 ENOENT);
	assert_int_equal(bfs_index_lookup(idx, t, "p/", "kept.bin", &e), 0);
	assert_int_equal(bfs_index_learn(idx, &key, &learnt, 1), 0);
	assert_int_equal(bfs_index_invalidate_tree(idx, "p/", &n, NULL, NULL),
			 0);
	assert_int_equal(store_dir_now(idx, listing(t, "p/", files, 2, NULL, 0),
				       now + 2), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "p/", "gone.bin", &e),
			 ENOENT);

	/* Written again here: the new file is the index's. */
	e = (struct bfs_entry){.name = "gone.bin", .size = 5, .mtime = 2,
			       .etag = "etag-new"};
	assert_int_equal(bfs_index_put(idx, "p/", &e), 0);
	assert_int_equal(store_dir_now(idx, listing(t, "p/", files, 2, NULL, 0),
				       now + 3), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "p/", "gone.bin", &e), 0);

	/* Deleted again, and this time done in S3: a later listing that
	 * has the name (another client put it back) shows it. */
	assert_int_equal(bfs_index_remove_pending(idx, "p/", "gone.bin"), 0);
	assert_int_equal(bfs_index_remove(idx, "p/", "gone.bin"), 0);
	assert_int_equal(store_dir_now(idx, listing(t, "p/", files, 2, NULL, 0),
				       now + 4), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "p/", "gone.bin", &e), 0);

	/* The engine's end of a handed-over delete clears only the mark:
	 * a file made there since stays. */
	{
		char **marks = NULL;
		size_t nm = 0;

		assert_int_equal(bfs_index_remove_pending(idx, "p/",
							  "kept.bin"), 0);
		assert_int_equal(bfs_index_delete_marks(idx, t, now + 3600,
							&marks, &nm), 0);
		assert_int_equal(nm, 1);
		assert_string_equal(marks[0], "p/kept.bin");
		assert_int_equal(bfs_index_delete_marks(idx, t, now - 3600,
							&marks, &nm), 0);
		assert_int_equal(nm, 0); /* none that old */
		e = (struct bfs_entry){.name = "kept.bin", .size = 9,
				       .mtime = 3, .etag = "etag-made"};
		assert_int_equal(bfs_index_put(idx, "p/", &e), 0);
		assert_int_equal(bfs_index_clear_pending(idx, "p/", "kept.bin"),
				 0);
		assert_int_equal(bfs_index_lookup(idx, t, "p/", "kept.bin", &e),
				 0);
		assert_string_equal(e.etag, "etag-made");
		assert_int_equal(bfs_index_remove_pending(idx, "p/",
							  "kept.bin"), 0);
		assert_int_equal(bfs_index_clear_pending(idx, "p/", "kept.bin"),
				 0);
		assert_int_equal(bfs_index_delete_marks(idx, t, now + 3600,
							&marks, &nm), 0);
		assert_int_equal(nm, 0);
		/* Cleared: the next listing says what S3 has. */
		assert_int_equal(store_dir_now(idx, listing(t, "p/", files, 2,
							    NULL, 0), now + 5),
				 0);
		assert_int_equal(bfs_index_lookup(idx, t, "p/", "kept.bin", &e),
				 0);
	}
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
	uint64_t n = 0, sent, later;

	(void)state;
	assert_int_equal(bfs_index_open(t, tmpdir(t), "bkt", &idx, &why), 0);
	assert_int_equal(store_dir_now(idx, listing(t, "d/", before, 1,
						    NULL, 0), now - 100), 0);
	assert_int_equal(bfs_index_change_seq(idx, &sent), 0);
	/* Made and removed here, now. */
	assert_int_equal(bfs_index_put(idx, "d/", &e), 0);
	assert_int_equal(bfs_index_remove(idx, "d/", "old.bin"), 0);
	assert_int_equal(bfs_index_change_seq(idx, &later), 0);
	assert_true(later > sent);

	/* Sent before: it knows old.bin and not new.bin. */
	assert_int_equal(bfs_index_store_dir(idx, listing(t, "d/", before, 1,
							  NULL, 0), now, sent),
			 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "new.bin", &e), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "old.bin", &e), ENOENT);

	/* Sent after: S3's answer is the truth again. */
	assert_int_equal(bfs_index_store_dir(idx, listing(t, "d/", before, 1,
							  NULL, 0), now, later),
			 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "new.bin", &e), ENOENT);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "old.bin", &e), 0);
	/* And the change records are gone with it. */
	assert_int_equal(bfs_index_store_dir(idx, listing(t, "d/", after, 1,
							  NULL, 0), now, sent),
			 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "new.bin", &e), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d/", "old.bin", &e), ENOENT);

	/* invalidate forgets the changes too: the next listing is truth. */
	assert_int_equal(bfs_index_change_seq(idx, &sent), 0);
	assert_int_equal(bfs_index_remove(idx, "d/", "new.bin"), 0);
	assert_int_equal(bfs_index_invalidate_tree(idx, "d/", &n, NULL, NULL),
			 0);
	assert_int_equal(bfs_index_store_dir(idx, listing(t, "d/", after, 1,
							  NULL, 0), now, sent),
			 0);
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
	assert_int_equal(store_dir_now(idx, d, 1), 0);
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
			assert_int_equal(store_dir_now(
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


/* ---- issue 19 point 8: a map that grows, listings evicted ---------------- */

/* Sizes for a test: a map of map bytes growing to max, and a budget. */
static struct bfs_index_opts sized(size_t map, size_t max, size_t budget)
{
	struct bfs_index_opts o;

	bfs_index_opts_default(&o);
	o.map_size = map;
	o.map_max = max;
	o.budget = budget;
	return o;
}

static char *folder_name(TALLOC_CTX *t, int i)
{
	return talloc_asprintf(t, "d%03d/", i);
}

/* Folder i: n files whose names are long enough to fill pages quickly. */
static struct s3_dir *folder(TALLOC_CTX *t, int i, size_t n)
{
	const char **names = talloc_array(t, const char *, n);
	size_t j;

	for (j = 0; j < n; j++) {
		names[j] = talloc_asprintf(
			t, "a-name-long-enough-to-fill-pages-soon-%04zu.dat", j);
	}
	return listing(t, folder_name(t, i), names, n, NULL, 0);
}

#define FILE0 "a-name-long-enough-to-fill-pages-soon-0000.dat"

static off_t data_size(const char *dir)
{
	char *p = talloc_asprintf(NULL, "%s/data.mdb", dir);
	struct stat sb;

	assert_int_equal(stat(p, &sb), 0);
	talloc_free(p);
	return sb.st_size;
}

/* Log lines, counted by what they say (and not shown). */
static int lines_grown, lines_evicted, lines_ceiling, lines_full,
	   lines_other;

static void count_lines(int level, const char *line)
{
	(void)level;
	if (strstr(line, "was full:") != NULL) {
		lines_grown++;
	} else if (strstr(line, "least recently evicted") != NULL) {
		lines_evicted++;
	} else if (strstr(line, "full at its ceiling") != NULL &&
		   strstr(line, ": evicting the listings") != NULL) {
		lines_ceiling++;
	} else if (strstr(line, "full at its ceiling") != NULL) {
		lines_full++;
	} else {
		lines_other++;
	}
}

static void count_lines_from_now(void)
{
	lines_grown = lines_evicted = lines_ceiling = lines_full = 0;
	lines_other = 0;
	bfs_log_set(count_lines);
}

/*
 * The index used to have a fixed 4 GiB map: a walk of a large bucket
 * filled it and every new folder failed from then on.  A full map grows,
 * and nothing is lost on the way.
 */
static void test_a_full_map_grows_instead_of_failing(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_index_opts o = sized(1 << 20, 64ULL << 30, 4ULL << 30);
	struct bfs_index *idx = NULL;
	struct bfs_index_space sp;
	struct bfs_entry e;
	time_t at;
	int i;

	(void)state;
	assert_int_equal(bfs_index_open_opts(t, dir, "bkt", &o, &idx, &why), 0);
	assert_int_equal(bfs_index_space(idx, &sp), 0);
	assert_int_equal(sp.map, 1 << 20);
	count_lines_from_now();
	for (i = 0; i < 80; i++) {
		assert_int_equal(store_dir_now(idx, folder(t, i, 100),
						     1000 + i), 0);
	}
	bfs_log_set(NULL);
	assert_true(lines_grown >= 1);
	assert_int_equal(lines_evicted + lines_ceiling + lines_full +
			 lines_other, 0);
	assert_int_equal(bfs_index_space(idx, &sp), 0);
	assert_true(sp.live > 1 << 20);
	assert_true(sp.map >= 2 << 20);
	assert_true(data_size(dir) > 1 << 20);
	assert_int_equal(sp.evicted, 0);
	for (i = 0; i < 80; i++) {
		assert_int_equal(bfs_index_dir_listed(idx, folder_name(t, i),
						      &at), 0);
		assert_int_equal(at, 1000 + i);
		assert_int_equal(bfs_index_lookup(idx, t, folder_name(t, i),
						  FILE0, &e), 0);
	}
	/* Opened again, it starts at the size it grew to. */
	TALLOC_FREE(idx);
	assert_int_equal(bfs_index_open_opts(t, dir, "bkt", &o, &idx, &why), 0);
	assert_int_equal(bfs_index_space(idx, &sp), 0);
	assert_true(sp.map >= 2 << 20);
	talloc_free(t);
}

/*
 * Over its budget the index evicts the folders used least recently: one
 * used all along stays, one listed a moment ago stays, a pending entry
 * (bytes not in S3 yet) stays, and a folder listed again gets its inode
 * numbers back.
 */
static void test_over_its_budget_the_least_recently_used_listings_go(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_index_opts o = sized(1 << 20, 64ULL << 30, 512 << 10);
	struct bfs_entry mine = {
		.name = (char *)"mine.bin", .size = 77, .mtime = 1,
		.flags = BFS_ENT_PENDING,
	}, e;
	struct bfs_index *idx = NULL;
	struct bfs_index_space sp;
	uint64_t d2_ino, mine_ino, entries, dirs;
	time_t at, old = time(NULL) - 3600;
	int i;

	(void)state;
	assert_int_equal(bfs_index_open_opts(t, dir, "bkt", &o, &idx, &why), 0);
	/* Listed an hour ago, all but d003, listed just now. */
	for (i = 0; i < 4; i++) {
		assert_int_equal(store_dir_now(idx, folder(t, i, 100),
						     i == 3 ? time(NULL) : old),
				 0);
	}
	assert_int_equal(bfs_index_put(idx, "d001/", &mine), 0);
	mine_ino = mine.ino;
	assert_int_equal(bfs_index_lookup(idx, t, "d002/", FILE0, &e), 0);
	d2_ino = e.ino;
	count_lines_from_now();
	for (i = 4; i < 100; i++) {
		assert_int_equal(store_dir_now(idx, folder(t, i, 100),
						     old), 0);
		/* d000 is in use all along (a lookup each time). */
		assert_int_equal(bfs_index_dir_listed(idx, "d000/", &at), 0);
		assert_int_equal(at, old);
	}
	bfs_log_set(NULL);
	assert_true(lines_evicted > 0);
	assert_int_equal(lines_ceiling + lines_full + lines_other, 0);
	assert_int_equal(bfs_index_space(idx, &sp), 0);
	assert_true(sp.evicted > 0);
	assert_true(sp.live <= sp.budget);
	assert_int_equal(sp.budget, 512 << 10);
	assert_true(sp.file < 2 << 20); /* pages freed are used again */
	assert_int_equal(bfs_index_count(idx, &entries, &dirs), 0);
	assert_true(dirs < 100);

	/* Used, listed a moment ago, just stored: still there. */
	assert_int_equal(bfs_index_lookup(idx, t, "d000/", FILE0, &e), 0);
	assert_int_equal(bfs_index_dir_listed(idx, "d003/", &at), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d003/", FILE0, &e), 0);
	assert_int_equal(bfs_index_dir_listed(idx, "d099/", &at), 0);
	/* The least recently used: gone, to be listed again... */
	assert_int_equal(bfs_index_dir_listed(idx, "d001/", &at), ENOENT);
	assert_int_equal(bfs_index_lookup(idx, t, "d001/", FILE0, &e), ENOENT);
	assert_int_equal(bfs_index_dir_listed(idx, "d002/", &at), ENOENT);
	assert_int_equal(bfs_index_lookup(idx, t, "d002/", FILE0, &e), ENOENT);
	/* ...but not what is ours and not in S3 yet. */
	assert_int_equal(bfs_index_lookup(idx, t, "d001/", "mine.bin", &e), 0);
	assert_true(e.flags & BFS_ENT_PENDING);
	assert_int_equal(e.size, 77);
	assert_int_equal(e.ino, mine_ino);
	/* Listed again, a name has the number it had. */
	assert_int_equal(store_dir_now(idx, folder(t, 2, 100),
					     time(NULL)), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d002/", FILE0, &e), 0);
	assert_int_equal(e.ino, d2_ino);
	/* And the pending entry survives its folder's next listing. */
	assert_int_equal(store_dir_now(idx, folder(t, 1, 100),
					     time(NULL)), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d001/", "mine.bin", &e), 0);
	assert_int_equal(e.ino, mine_ino);
	talloc_free(t);
}

/*
 * A listing too large for what is left of a map at its ceiling: the map
 * cannot grow, so listings used least recently make room for it.  One too
 * large for the whole map fails (ENOSPC, as a full map did before) after
 * two such evictions, not after emptying the index, and the index goes
 * on working.
 */
static void test_at_its_ceiling_a_large_listing_makes_room(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_index_opts o = sized(1 << 20, 2 << 20, 1ULL << 40);
	struct bfs_index *idx = NULL;
	struct bfs_index_space sp;
	struct bfs_entry e;
	uint64_t entries, dirs;
	time_t at, old = time(NULL) - 3600;
	int i;

	(void)state;
	assert_int_equal(bfs_index_open_opts(t, dir, "bkt", &o, &idx, &why), 0);
	for (i = 0; i < 30; i++) {
		assert_int_equal(store_dir_now(idx, folder(t, i, 100),
						     old), 0);
	}
	assert_int_equal(bfs_index_space(idx, &sp), 0);
	assert_int_equal(sp.budget, 1 << 20); /* half the ceiling */
	assert_int_equal(sp.evicted, 0);
	count_lines_from_now();
	assert_int_equal(store_dir_now(idx, folder(t, 900, 4000), old),
			 0);
	bfs_log_set(NULL);
	assert_true(lines_ceiling >= 1);
	assert_int_equal(lines_full, 0);
	assert_int_equal(bfs_index_dir_listed(idx, "d900/", &at), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d900/", FILE0, &e), 0);
	assert_int_equal(bfs_index_space(idx, &sp), 0);
	assert_true(sp.evicted > 0);
	assert_true(sp.map <= 2 << 20);
	assert_true(data_size(dir) <= 2 << 20);
	assert_int_equal(bfs_index_dir_listed(idx, "d000/", &at), ENOENT);

	/* Larger than the map: refused, not everything evicted for it. */
	count_lines_from_now();
	assert_int_equal(store_dir_now(idx, folder(t, 901, 8000), old),
			 ENOSPC);
	bfs_log_set(NULL);
	assert_int_equal(lines_ceiling, 2);
	assert_int_equal(lines_full, 1);
	assert_int_equal(bfs_index_count(idx, &entries, &dirs), 0);
	assert_true(entries > 0);
	assert_int_equal(bfs_index_dir_listed(idx, "d900/", &at), 0);
	assert_int_equal(store_dir_now(idx, folder(t, 902, 10), old), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d902/", FILE0, &e), 0);
	assert_true(data_size(dir) <= 2 << 20);
	talloc_free(t);
}


/*
 * The dirs record of folder prefix as stored: its size and its stamps;
 * with set, first write {*listed, *used} into it.
 */
static size_t dirs_record(const char *dir, const char *prefix, bool set,
			  int64_t *listed, int64_t *used)
{
	char key[64];
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dirs;
	MDB_val k = {(size_t)snprintf(key, sizeof(key), "/%s", prefix), key}, v;
	int64_t rec[2] = {*listed, *used};
	size_t size;

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_set_mapsize(env, 64 << 20), 0);
	assert_int_equal(mdb_env_open(env, dir, MDB_NOTLS, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "dirs", 0, &dirs), 0);
	if (set) {
		v.mv_size = sizeof(rec);
		v.mv_data = rec;
		assert_int_equal(mdb_put(txn, dirs, &k, &v, 0), 0);
	}
	assert_int_equal(mdb_get(txn, dirs, &k, &v), 0);
	size = v.mv_size;
	memcpy(listed, v.mv_data, sizeof(*listed));
	*used = *listed;
	if (size == 2 * sizeof(*used)) {
		memcpy(used, (char *)v.mv_data + sizeof(*listed),
		       sizeof(*used));
	}
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
	return size;
}

/*
 * A lookup's usual case in one read: the folder's listing time and the
 * child, or which of them is missing.
 */
static void test_a_lookup_tells_the_listing_and_the_child_at_once(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_index *idx = NULL;
	struct bfs_entry e;
	time_t at = 0, listed = time(NULL) - 5;
	bool known = true;

	(void)state;
	assert_int_equal(bfs_index_open(t, dir, "bkt", &idx, &why), 0);
	assert_int_equal(store_dir_now(idx, folder(t, 0, 3), listed), 0);
	assert_int_equal(bfs_index_lookup_listed(idx, t, "d000/", FILE0, &known,
						 &at, &e), 0);
	assert_true(known);
	assert_int_equal(at, listed);
	assert_string_equal(e.name, FILE0);
	assert_int_equal(e.size, 100);
	assert_int_equal(bfs_index_lookup_listed(idx, t, "d000/", "missing",
						 &known, &at, &e), ENOENT);
	assert_true(known);
	assert_int_equal(bfs_index_lookup_listed(idx, t, "d001/", FILE0, &known,
						 &at, &e), ENOENT);
	assert_false(known);
	talloc_free(t);
}

/* Where this process maps dir's data file (LMDB does not say). */
static void *map_of(const char *dir)
{
	char line[PATH_MAX + 128], want[PATH_MAX + 16], real[PATH_MAX];
	FILE *f = fopen("/proc/self/maps", "r");
	void *at = NULL;

	assert_non_null(f);
	assert_non_null(realpath(dir, real)); /* as the maps name it */
	snprintf(want, sizeof(want), " %s/data.mdb\n", real);
	while (at == NULL && fgets(line, sizeof(line), f) != NULL) {
		size_t ll = strlen(line), wl = strlen(want);
		if (ll > wl && strcmp(line + ll - wl, want) == 0) {
			at = (void *)(uintptr_t)strtoull(line, NULL, 16);
		}
	}
	fclose(f);
	assert_non_null(at);
	return at;
}

/*
 * Where entry name of folder prefix lies in the data file: a record
 * rewritten by a transaction moves to another page (LMDB copies a page
 * on write and frees the old one only after the commit).
 */
static size_t entry_offset(const char *dir, const char *prefix,
			   const char *name)
{
	char key[256];
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi ent;
	int kl = snprintf(key, sizeof(key), "%s%c%s", prefix, '\0', name);
	MDB_val k = {(size_t)kl, key}, v;
	size_t off;

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_set_mapsize(env, 64 << 20), 0);
	assert_int_equal(mdb_env_open(env, dir, MDB_NOTLS | MDB_RDONLY, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "ent", 0, &ent), 0);
	assert_int_equal(mdb_get(txn, ent, &k, &v), 0);
	off = (size_t)((char *)v.mv_data - (char *)map_of(dir));
	mdb_txn_abort(txn);
	mdb_env_close(env);
	return off;
}

/*
 * A relisting that finds a folder as the index has it writes none of its
 * entries (a large folder relisted every TTL rewrote every page of it);
 * an entry that changed in S3 is written.
 */
static void test_an_unchanged_relisting_rewrites_no_entry(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_index_opts big = sized(1 << 20, 64 << 20, 1 << 30);
	struct bfs_index *idx = NULL;
	struct s3_dir *d = folder(t, 0, 200);
	struct bfs_entry e;
	time_t now = time(NULL);
	size_t before, last;

	(void)state;
	assert_int_equal(bfs_index_open_opts(t, dir, "bkt", &big, &idx, &why),
			 0);
	assert_int_equal(store_dir_now(idx, d, now - 20), 0);
	TALLOC_FREE(idx);
	before = entry_offset(dir, "d000/", FILE0);
	last = entry_offset(dir, "d000/", d->ents[d->n - 1].name);

	assert_int_equal(bfs_index_open_opts(t, dir, "bkt", &big, &idx, &why),
			 0);
	assert_int_equal(store_dir_now(idx, folder(t, 0, 200), now - 10), 0);
	TALLOC_FREE(idx);
	assert_int_equal(entry_offset(dir, "d000/", FILE0), before);
	assert_int_equal(entry_offset(dir, "d000/", d->ents[d->n - 1].name),
			 last);

	/* The first object changed in S3: its record is written again. */
	d = folder(t, 0, 200);
	d->ents[0].size += 1;
	d->ents[0].etag = talloc_strdup(d, "etag-changed");
	assert_int_equal(bfs_index_open_opts(t, dir, "bkt", &big, &idx, &why),
			 0);
	assert_int_equal(store_dir_now(idx, d, now), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d000/", FILE0, &e), 0);
	assert_int_equal(e.size, d->ents[0].size);
	assert_string_equal(e.etag, "etag-changed");
	TALLOC_FREE(idx);
	assert_int_not_equal(entry_offset(dir, "d000/", FILE0), before);
	talloc_free(t);
}

/*
 * A listing's transaction writes what it wrote before stamps existed:
 * the folder's record stays the 8 bytes of its listing time (the listing
 * is its use).  A later use writes a second stamp, in a transaction of
 * its own, at most once a minute, and only once the index is past half
 * its budget (before, reads write nothing).
 */
static void test_a_listing_writes_no_stamp_and_a_use_one_a_minute(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_index_opts big = sized(1 << 20, 64 << 20, 1 << 30);
	struct bfs_index_opts small = sized(1 << 20, 64 << 20, 64 << 10);
	struct bfs_index *idx = NULL;
	time_t at, old = time(NULL) - 3600, before;
	int64_t listed, used;

	(void)state;
	assert_int_equal(bfs_index_open_opts(t, dir, "bkt", &big, &idx, &why),
			 0);
	assert_int_equal(store_dir_now(idx, folder(t, 0, 100), old), 0);
	assert_int_equal(bfs_index_dir_listed(idx, "d000/", &at), 0);
	TALLOC_FREE(idx);
	/* Far below the budget: the read wrote nothing. */
	assert_int_equal(dirs_record(dir, "d000/", false, &listed, &used), 8);
	assert_int_equal(listed, old);

	/* Past half of a small one: the read notes the use. */
	assert_int_equal(bfs_index_open_opts(t, dir, "bkt", &small, &idx,
					     &why), 0);
	before = time(NULL);
	assert_int_equal(bfs_index_dir_listed(idx, "d000/", &at), 0);
	assert_int_equal(at, old); /* the listing's time, not the use's */
	TALLOC_FREE(idx);
	assert_int_equal(dirs_record(dir, "d000/", false, &listed, &used), 16);
	assert_int_equal(listed, old);
	assert_true(used >= before && used <= time(NULL));

	/* Noted 30 s ago: a use now writes nothing; 90 s ago: it does. */
	used = time(NULL) - 30;
	dirs_record(dir, "d000/", true, &listed, &used);
	assert_int_equal(bfs_index_open_opts(t, dir, "bkt", &small, &idx,
					     &why), 0);
	assert_int_equal(bfs_index_dir_listed(idx, "d000/", &at), 0);
	TALLOC_FREE(idx);
	before = used;
	assert_int_equal(dirs_record(dir, "d000/", false, &listed, &used), 16);
	assert_int_equal(used, before);
	used = time(NULL) - 90;
	dirs_record(dir, "d000/", true, &listed, &used);
	assert_int_equal(bfs_index_open_opts(t, dir, "bkt", &small, &idx,
					     &why), 0);
	before = time(NULL);
	assert_int_equal(bfs_index_dir_listed(idx, "d000/", &at), 0);
	TALLOC_FREE(idx);
	assert_int_equal(dirs_record(dir, "d000/", false, &listed, &used), 16);
	assert_true(used >= before);

	/* Listed again: 8 bytes, as before. */
	assert_int_equal(bfs_index_open_opts(t, dir, "bkt", &small, &idx,
					     &why), 0);
	assert_int_equal(store_dir_now(idx, folder(t, 0, 100), old), 0);
	TALLOC_FREE(idx);
	assert_int_equal(dirs_record(dir, "d000/", false, &listed, &used), 8);
	assert_int_equal(listed, old);
	talloc_free(t);
}

/* Wait for one byte from fd; false at EOF. */
static bool wait_byte(int fd)
{
	char c;

	return read(fd, &c, 1) == 1;
}

/*
 * Every smbd and bucketfsd has its own map of the index.  One that grows
 * it must not leave the others behind: their reads then find pages past
 * the end of their map (LMDB's MDB_MAP_RESIZED) and their writes a map
 * full sooner.
 */
static void test_another_process_follows_a_grown_map(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_index_opts o = sized(1 << 20, 64ULL << 30, 4ULL << 30);
	struct bfs_index *idx = NULL;
	struct bfs_index_space sp;
	struct bfs_entry e;
	int to_child[2], to_parent[2], status = 0, i;
	pid_t child;

	(void)state;
	assert_int_equal(bfs_index_open_opts(t, dir, "bkt", &o, &idx, &why), 0);
	assert_int_equal(store_dir_now(idx, folder(t, 0, 10), 1), 0);
	assert_int_equal(pipe(to_child), 0);
	assert_int_equal(pipe(to_parent), 0);
	child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		/* Another smbd: its own environment, its own 1 MiB map. */
		TALLOC_CTX *c = talloc_new(NULL);
		struct bfs_index *other = NULL;
		struct bfs_index_space csp = {0};
		int fails = 0;

		/* Only the parent writes to_child: EOF if it fails first. */
		close(to_child[1]);
		close(to_parent[0]);
		fails += bfs_index_open_opts(c, dir, "bkt", &o, &other,
					     &why) != 0;
		fails += bfs_index_space(other, &csp) != 0;
		fails += csp.map != 1 << 20;
		fails += bfs_index_lookup(other, c, "d000/", FILE0, &e) != 0;
		fails += write(to_parent[1], "r", 1) != 1;
		if (!wait_byte(to_child[0])) {
			_exit(100);
		}
		/* The parent has grown the map past ours and used it. */
		fails += bfs_index_lookup(other, c, "d059/", FILE0, &e) != 0;
		fails += bfs_index_space(other, &csp) != 0;
		fails += csp.map <= 1 << 20;
		/* And writes go on in the larger map, growing it further. */
		for (i = 100; i < 160; i++) {
			fails += store_dir_now(other, folder(c, i, 100),
						     1) != 0;
		}
		fails += bfs_index_lookup(other, c, "d001/", FILE0, &e) != 0;
		talloc_free(c);
		_exit(fails);
	}
	close(to_child[0]);
	close(to_parent[1]);
	assert_true(wait_byte(to_parent[0]));
	for (i = 1; i < 60; i++) {
		assert_int_equal(store_dir_now(idx, folder(t, i, 100), 1),
				 0);
	}
	assert_true(data_size(dir) > 1 << 20);
	assert_int_equal(write(to_child[1], "g", 1), 1);
	close(to_child[1]);
	assert_int_equal(waitpid(child, &status, 0), child);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	/* What the child wrote past our map is ours to read. */
	assert_int_equal(bfs_index_lookup(idx, t, "d159/", FILE0, &e), 0);
	assert_int_equal(store_dir_now(idx, folder(t, 160, 10), 1), 0);
	assert_int_equal(bfs_index_space(idx, &sp), 0);
	assert_true(sp.map >= (size_t)data_size(dir));
	close(to_parent[0]);
	talloc_free(t);
}

struct reader_arg {
	struct bfs_index *idx;
	volatile bool stop;
	unsigned reads, fails;
};

static void *reader_main(void *p)
{
	struct reader_arg *a = p;

	/* Never a pause between two reads: a remap must still get in. */
	while (!a->stop) {
		TALLOC_CTX *t = talloc_new(NULL);
		struct bfs_entry e;
		struct bfs_entry *ents = NULL;
		size_t n = 0;

		a->fails += bfs_index_lookup(a->idx, t, "d000/", FILE0, &e) != 0;
		a->fails += bfs_index_children(a->idx, t, "d000/", NULL, 20,
					       &ents, &n) != 0 || n != 20;
		a->reads++;
		talloc_free(t);
	}
	return NULL;
}

/*
 * bucketfsd reads the index in one thread while another writes: a remap
 * (the map growing) must neither pull the pages from under a reader nor
 * wait for a reader that never pauses (the lock prefers the remap).
 */
static void test_readers_in_other_threads_survive_the_map_growing(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	struct bfs_index_opts o = sized(1 << 20, 64ULL << 30, 4ULL << 30);
	struct reader_arg a = {0};
	struct bfs_index_space sp;
	pthread_t th;
	int i;

	(void)state;
	assert_int_equal(bfs_index_open_opts(t, tmpdir(t), "bkt", &o, &a.idx,
					     &why), 0);
	assert_int_equal(store_dir_now(a.idx, folder(t, 0, 20), 1), 0);
	assert_int_equal(pthread_create(&th, NULL, reader_main, &a), 0);
	for (i = 1; i < 60; i++) {
		assert_int_equal(store_dir_now(a.idx, folder(t, i, 100),
						     1), 0);
	}
	a.stop = true;
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(bfs_index_space(a.idx, &sp), 0);
	assert_true(sp.map >= 2 << 20); /* it remapped */
	assert_true(a.reads > 0);
	assert_int_equal(a.fails, 0);
	talloc_free(t);
}


/* ---- the remap lock ---------------------------------------------------------- */

struct remap_arg {
	MDB_env *env;
	int cmd[2], done[2];	/* pipes: main -> holder, holder -> main */
	size_t seen;
	int grow_rc, holder_fails;
	bool grown, began;
	size_t began_map;
};

/* Holds a read transaction until told; begins a second one meanwhile. */
static void *holder_main(void *p)
{
	struct remap_arg *a = p;
	MDB_txn *t1, *t2;

	a->holder_fails += bfs_lmdb_txn_begin(a->env, MDB_RDONLY, &t1) != 0;
	a->holder_fails += write(a->done[1], "1", 1) != 1;
	a->holder_fails += !wait_byte(a->cmd[0]);
	/* A remap waits for t1: a transaction of the same thread must not
	 * queue behind it (that would wait for ever). */
	if (bfs_lmdb_txn_begin(a->env, MDB_RDONLY, &t2) == 0) {
		bfs_lmdb_txn_abort(t2);
	} else {
		a->holder_fails++;
	}
	a->holder_fails += write(a->done[1], "2", 1) != 1;
	a->holder_fails += !wait_byte(a->cmd[0]);
	bfs_lmdb_txn_abort(t1);
	return NULL;
}

static void *grower_main(void *p)
{
	struct remap_arg *a = p;

	a->grow_rc = bfs_lmdb_grow(a->env, a->seen);
	__atomic_store_n(&a->grown, true, __ATOMIC_SEQ_CST);
	return NULL;
}

static void *late_reader_main(void *p)
{
	struct remap_arg *a = p;
	size_t file;
	MDB_txn *t;

	if (bfs_lmdb_txn_begin(a->env, MDB_RDONLY, &t) == 0) {
		bfs_lmdb_sizes(a->env, &a->began_map, &file);
		__atomic_store_n(&a->began, true, __ATOMIC_SEQ_CST);
		bfs_lmdb_txn_abort(t);
	}
	return NULL;
}

/* Whether fd has a byte within ms (not read). */
static bool byte_within(int fd, int ms)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};

	return poll(&pfd, 1, ms) == 1;
}

/*
 * The remap lock of a growing map prefers the remap: a transaction begun
 * while a remap waits waits behind it, so readers that never pause cannot
 * starve it (the reverted version's thread test ran 9 minutes under
 * valgrind).  A thread that already holds a transaction is not made to
 * wait behind the remap that waits for it.
 */
static void test_a_waiting_remap_goes_before_new_transactions(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	struct remap_arg a = {0};
	pthread_t holder, grower, late;
	size_t file;
	const struct timespec nap = {0, 500 * 1000 * 1000};

	(void)state;
	assert_int_equal(bfs_lmdb_open_growing(tmpdir(t), 1 << 20, 64 << 20, 2,
					       &a.env, &why), 0);
	bfs_lmdb_sizes(a.env, &a.seen, &file);
	assert_int_equal(a.seen, 1 << 20);
	assert_int_equal(pipe(a.cmd), 0);
	assert_int_equal(pipe(a.done), 0);
	assert_int_equal(pthread_create(&holder, NULL, holder_main, &a), 0);
	assert_true(wait_byte(a.done[0]));
	assert_int_equal(pthread_create(&grower, NULL, grower_main, &a), 0);
	nanosleep(&nap, NULL);
	assert_false(__atomic_load_n(&a.grown, __ATOMIC_SEQ_CST));
	assert_int_equal(pthread_create(&late, NULL, late_reader_main, &a), 0);
	nanosleep(&nap, NULL);
	/* Waits behind the remap, which waits for the holder. */
	assert_false(__atomic_load_n(&a.began, __ATOMIC_SEQ_CST));
	assert_false(__atomic_load_n(&a.grown, __ATOMIC_SEQ_CST));
	/* The holder's second transaction does not wait. */
	assert_int_equal(write(a.cmd[1], "n", 1), 1);
	assert_true(byte_within(a.done[0], 30000));
	assert_true(wait_byte(a.done[0]));
	assert_int_equal(write(a.cmd[1], "e", 1), 1);
	assert_int_equal(pthread_join(holder, NULL), 0);
	assert_int_equal(pthread_join(grower, NULL), 0);
	assert_int_equal(pthread_join(late, NULL), 0);
	assert_int_equal(a.holder_fails, 0);
	assert_int_equal(a.grow_rc, 0);
	assert_true(a.began);
	assert_int_equal(a.began_map, 2 << 20); /* it began after the remap */
	close(a.cmd[0]);
	close(a.cmd[1]);
	close(a.done[0]);
	close(a.done[1]);
	bfs_lmdb_close(a.env);
	talloc_free(t);
}

/* Listed folders of idx among d000..d(n-1). */
static unsigned listed_folders(struct bfs_index *idx, TALLOC_CTX *t, int n,
			       bool *listed)
{
	unsigned count = 0;
	time_t at;
	int i;

	for (i = 0; i < n; i++) {
		listed[i] = bfs_index_dir_listed(idx, folder_name(t, i),
						 &at) == 0;
		count += listed[i];
	}
	return count;
}

/*
 * Issue 19 point 8's revert: on a full cache disk, a listing's commit
 * grew (stamps, tables) and failed where it had fitted into free pages,
 * and the read with it.  A file that may not grow past its size (as a
 * full disk; RLIMIT_FSIZE, SIGXFSZ ignored, answers EFBIG) with the
 * eviction and stamps at work (over half a small budget): what was
 * readable stays readable, a listing that needs new pages fails with the
 * commit's error as it did before (never a failed read), and once there
 * is room again it is stored.
 */
static void test_a_full_disk_keeps_what_was_readable(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_index_opts o = sized(8 << 20, 64 << 20, 256 << 10);
	struct bfs_index *idx = NULL;
	struct bfs_index_space sp;
	struct rlimit was, full;
	struct bfs_entry e, *ents;
	bool listed[20], evicted_by_failure = true;
	unsigned n_listed;
	size_t n;
	time_t at, when[20], old = time(NULL) - 3600;
	int i, pass, store_rc = 0, reads_failed = 0, reads = 0;
	int relists_failed = 0;
	uint64_t evicted;
	void (*was_xfsz)(int);

	(void)state;
	assert_int_equal(bfs_index_open_opts(t, dir, "bkt", &o, &idx, &why), 0);
	for (i = 0; i < 20; i++) {
		when[i] = old + i;
		assert_int_equal(store_dir_now(idx, folder(t, i, 50),
						     when[i]), 0);
	}
	assert_int_equal(bfs_index_space(idx, &sp), 0);
	assert_true(sp.file > sp.budget / 2); /* stamps are written */
	assert_true(sp.evicted > 0);	      /* and listings evicted */
	evicted = sp.evicted;
	n_listed = listed_folders(idx, t, 20, listed);
	assert_true(n_listed > 0);

	count_lines_from_now(); /* nothing on stderr meanwhile */
	was_xfsz = signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &was), 0);
	full = was;
	full.rlim_cur = (rlim_t)data_size(dir);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &full), 0);
	for (pass = 0; pass < 2; pass++) {
		/* Stamps an hour old: each first read notes a use. */
		for (i = 0; i < 20; i++) {
			TALLOC_CTX *r = talloc_new(t);

			if (!listed[i]) {
				continue;
			}
			reads++;
			reads_failed +=
				bfs_index_dir_listed(idx, folder_name(r, i),
						     &at) != 0 ||
				at != when[i];
			reads_failed += bfs_index_lookup(idx, r,
							 folder_name(r, i),
							 FILE0, &e) != 0;
			reads_failed += bfs_index_children(idx, r,
							   folder_name(r, i),
							   NULL, 100, &ents,
							   &n) != 0 ||
					n != 50;
			talloc_free(r);
		}
		if (pass > 0) {
			break;
		}
		/* A new listing needs pages the file cannot get... */
		store_rc = store_dir_now(idx, folder(t, 900, 2000),
					       time(NULL));
		evicted_by_failure = bfs_index_space(idx, &sp) != 0 ||
				     sp.evicted != evicted;
		/*
		 * ...while one that changed nothing fits into the pages
		 * freed by the commits before it, as it did before stamps
		 * and eviction existed (the reverted version wrote stamps
		 * into two more tables in the same transaction).
		 */
		for (i = 0; i < 20; i++) {
			if (listed[i]) {
				when[i] = time(NULL);
				relists_failed += store_dir_now(
					idx, folder(t, i, 50), when[i]) != 0;
			}
		}
	}
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &was), 0);
	signal(SIGXFSZ, was_xfsz);
	bfs_log_set(NULL);

	assert_true(reads > 0);
	assert_int_equal(reads_failed, 0);
	/* The commit's own error, as before: not a full map, not a read. */
	assert_true(store_rc == EFBIG || store_rc == EIO);
	assert_false(evicted_by_failure);
	assert_int_equal(relists_failed, 0);
	/* Used a moment ago, all of them: none was evicted meanwhile. */
	assert_int_equal(listed_folders(idx, t, 20, listed), n_listed);
	assert_int_equal(bfs_index_dir_listed(idx, "d900/", &at), ENOENT);
	/* Room again: stored. */
	assert_int_equal(store_dir_now(idx, folder(t, 900, 2000),
					     time(NULL)), 0);
	assert_int_equal(bfs_index_lookup(idx, t, "d900/", FILE0, &e), 0);
	talloc_free(t);
}

/*
 * A probe's proof is read back as stored; storing one drops those past
 * BFS_INDEX_PROOF_KEEP (two in a row among them: a cursor that skipped
 * the one after each delete would leave the second).
 */
static void test_proofs_are_kept_a_day(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *dir = tmpdir(t), *why = NULL;
	struct bfs_index *idx = NULL;
	uint8_t tag[4][BFS_INDEX_PROOF_TAG];
	int64_t now = (int64_t)time(NULL), at = 0;
	int i;

	(void)state;
	assert_int_equal(bfs_index_open(t, dir, "bkt", &idx, &why), 0);
	for (i = 0; i < 4; i++) {
		memset(tag[i], 0xa0 + i, sizeof(tag[i])); /* in key order */
	}
	assert_int_equal(bfs_index_proof_get(idx, tag[0], &at), ENOENT);
	assert_int_equal(bfs_index_proof_put(idx, tag[0],
					     now - 2 * BFS_INDEX_PROOF_KEEP), 0);
	assert_int_equal(bfs_index_proof_get(idx, tag[0], &at), 0);
	assert_int_equal(at, now - 2 * BFS_INDEX_PROOF_KEEP);
	assert_int_equal(bfs_index_proof_put(idx, tag[1],
					     now - BFS_INDEX_PROOF_KEEP - 1), 0);
	assert_int_equal(bfs_index_proof_put(idx, tag[2], now - 10), 0);
	/* The one put before tag[1] went then. */
	assert_int_equal(bfs_index_proof_get(idx, tag[0], &at), ENOENT);
	assert_int_equal(bfs_index_proof_put(idx, tag[0],
					     now - 2 * BFS_INDEX_PROOF_KEEP), 0);
	assert_int_equal(bfs_index_proof_put(idx, tag[3], now), 0);
	assert_int_equal(bfs_index_proof_get(idx, tag[0], &at), ENOENT);
	assert_int_equal(bfs_index_proof_get(idx, tag[1], &at), ENOENT);
	assert_int_equal(bfs_index_proof_get(idx, tag[2], &at), 0);
	assert_int_equal(at, now - 10);
	assert_int_equal(bfs_index_proof_get(idx, tag[3], &at), 0);
	assert_int_equal(at, now);
	/* The identity record beside them is untouched: it opens again. */
	TALLOC_FREE(idx);
	assert_int_equal(bfs_index_open(t, dir, "bkt", &idx, &why), 0);
	assert_int_equal(bfs_index_proof_get(idx, tag[3], &at), 0);
	TALLOC_FREE(idx);
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_one_lister_per_directory),
		cmocka_unit_test(test_store_lookup_children),
		cmocka_unit_test(test_the_entry_of_a_key),
		cmocka_unit_test(test_a_new_name_is_made_by_one_of_two_processes),
		cmocka_unit_test(test_relist_keeps_inodes),
		cmocka_unit_test(test_many_unique_inodes),
		cmocka_unit_test(test_other_bucket_refused),
		cmocka_unit_test(test_same_bucket_on_another_endpoint_refused),
		cmocka_unit_test(test_a_cache_folder_others_may_change_is_refused),
		cmocka_unit_test(test_bucket_only_identity_is_upgraded),
		cmocka_unit_test(test_check_finds_and_repairs_damage),
		cmocka_unit_test(test_two_nodes_agree_on_the_inodes_of_ten_thousand_names),
		cmocka_unit_test(test_two_nodes_agree_on_the_inodes_of_colliding_names),
		cmocka_unit_test(test_learn_keeps_pending_entries),
		cmocka_unit_test(test_check_of_an_empty_index),
		cmocka_unit_test(test_record_decoding_refuses_garbage),
		cmocka_unit_test(test_set_times_and_attributes_last_as_long_as_the_object),
		cmocka_unit_test(test_an_objects_metadata_fills_only_what_is_missing),
		cmocka_unit_test(test_a_listing_sent_before_a_change_keeps_it_whatever_the_clock),
		cmocka_unit_test(test_an_older_listing_does_not_undo_a_change),
		cmocka_unit_test(test_a_delete_pending_in_s3_stays_deleted_until_done),
		cmocka_unit_test(test_an_over_long_key_is_hidden_and_its_folder_stored),
		cmocka_unit_test(test_a_damaged_index_is_set_aside_and_rebuilt),
		cmocka_unit_test(test_a_full_map_grows_instead_of_failing),
		cmocka_unit_test(test_over_its_budget_the_least_recently_used_listings_go),
		cmocka_unit_test(test_at_its_ceiling_a_large_listing_makes_room),
		cmocka_unit_test(test_a_listing_writes_no_stamp_and_a_use_one_a_minute),
		cmocka_unit_test(test_an_unchanged_relisting_rewrites_no_entry),
		cmocka_unit_test(test_a_lookup_tells_the_listing_and_the_child_at_once),
		cmocka_unit_test(test_another_process_follows_a_grown_map),
		cmocka_unit_test(test_readers_in_other_threads_survive_the_map_growing),
		cmocka_unit_test(test_a_waiting_remap_goes_before_new_transactions),
		cmocka_unit_test(test_a_full_disk_keeps_what_was_readable),
		cmocka_unit_test(test_a_rename_pending_in_s3_shows_the_new_name),
		cmocka_unit_test(test_an_uploads_etag_goes_on_its_own_version_pending_again),
		cmocka_unit_test(test_proofs_are_kept_a_day),
	};
	return cmocka_run_group_tests_name("bfs_index", tests, NULL, NULL);
}
