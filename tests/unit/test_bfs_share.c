/*
 * A share in one smbd, without Samba and without an S3 server: its
 * parameters (a bad value refused and told once, a reload followed at
 * most once a second), the tree connect's refusals (lib/bfs_connect),
 * and what a connection serves while S3 is away (an endpoint on a
 * loopback port nothing listens on): the index it has, but no folder it
 * never listed.  The cache folder is a fresh one under $TMPDIR, which
 * the tests, run as root, may trust.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_loopback.h"
#include "test_tmpdir.h"

#include "bfs_connect.h"
#include "bfs_index.h"
#include "bfs_log.h"
#include "bfs_probe.h"
#include "bfs_share.h"
#include "bfs_volume.h"
#include "s3_dirlist.h"

/* What lib logged: how many lines, and the last ones. */
static unsigned n_lines;
static char lines[8][1024];

static void keep_line(int level, const char *line)
{
	(void)level;
	snprintf(lines[n_lines % 8], sizeof(lines[0]), "%s", line);
	n_lines++;
}

/* Whether one of the last 8 lines holds text. */
static bool logged(const char *text)
{
	unsigned i;

	for (i = 0; i < 8 && i < n_lines; i++) {
		if (strstr(lines[i], text) != NULL) {
			return true;
		}
	}
	return false;
}

static void forget_lines(void)
{
	n_lines = 0;
	memset(lines, 0, sizeof(lines));
}

/* smb.conf of one share: up to 32 "name", "value" pairs. */
struct conf {
	const char *kv[65];
};

static const char *conf_get(void *priv, const char *name)
{
	const struct conf *c = priv;
	size_t i;

	for (i = 0; c->kv[i] != NULL; i += 2) {
		if (strcmp(c->kv[i], name) == 0) {
			return c->kv[i + 1];
		}
	}
	return NULL;
}

static void conf_set(struct conf *c, const char *name, const char *value)
{
	size_t i;

	for (i = 0; c->kv[i] != NULL; i += 2) {
		if (strcmp(c->kv[i], name) == 0) {
			c->kv[i + 1] = value;
			return;
		}
	}
	assert_true(i + 2 < sizeof(c->kv) / sizeof(c->kv[0]));
	c->kv[i] = name;
	c->kv[i + 1] = value;
	c->kv[i + 2] = NULL;
}

/* A connection as the module makes one before bfs_share_open. */
static struct bfs_conn *share(TALLOC_CTX *t, struct conf *c)
{
	struct bfs_conn *bc = talloc_zero(t, struct bfs_conn);

	assert_non_null(bc);
	bc->service = "s";
	bc->snum = 1;
	bc->params = (struct bfs_psrc){conf_get, c};
	bc->owner_uid = getuid();
	bc->owner_gid = getgid();
	bc->connectpath = talloc_strdup(bc, "/srv/s");
	return bc;
}

static void test_bad_value_told_once(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct conf c = {{NULL}};
	struct bfs_conn *bc = share(t, &c);
	int64_t v = 0;
	uint64_t size = 0;
	bool b = false;

	(void)state;
	forget_lines();
	conf_set(&c, "readahead", "lots");
	assert_false(bfs_parm_int(bc, "readahead", &v));
	assert_int_equal(n_lines, 1);
	assert_true(logged("bucketfs: share s: 'bucketfs:readahead' must be "));
	assert_true(logged(", not 'lots'"));
	/* Read again every second: the same value is not told again. */
	assert_false(bfs_parm_int(bc, "readahead", &v));
	assert_int_equal(n_lines, 1);
	/* Another bad value is news. */
	conf_set(&c, "readahead", "5000");
	assert_false(bfs_parm_int(bc, "readahead", &v));
	assert_int_equal(n_lines, 2);
	assert_true(logged("not '5000'"));
	conf_set(&c, "readahead", "12");
	assert_true(bfs_parm_int(bc, "readahead", &v));
	assert_int_equal(v, 12);
	assert_int_equal(n_lines, 2);

	conf_set(&c, "block size", "3K");	/* not a power of two */
	assert_false(bfs_parm_size(bc, "block size", &size));
	assert_int_equal(n_lines, 3);
	assert_true(logged("'bucketfs:block size' must be "));
	conf_set(&c, "stream parts", "maybe");
	assert_false(bfs_parm_bool(bc, "stream parts", &b));
	assert_int_equal(n_lines, 4);
	conf_set(&c, "stream parts", "on");
	assert_true(bfs_parm_bool(bc, "stream parts", &b));
	assert_true(b);
	/* Unset: the table's default. */
	assert_true(bfs_parm_size(bc, "cache size", &size));
	assert_int_equal(size, 16ULL << 30);
	assert_string_equal(bfs_parm_string(bc, "close"), "local");
	assert_null(bfs_parm_string(bc, "bucket"));
	talloc_free(t);
}

/* bfs_follow_config, certain to run within the second it was last read. */
static bool follow_same_second(struct bfs_conn *bc)
{
	time_t now;
	bool ok;

	do {
		now = time(NULL);
		bc->config_read = now;
		ok = bfs_follow_config(bc);
	} while (time(NULL) != now);
	return ok;
}

static void test_reload_once_a_second(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct conf c = {{NULL}};
	struct bfs_conn *bc = share(t, &c);

	(void)state;
	forget_lines();
	conf_set(&c, "metadata ttl", "7");
	conf_set(&c, "cache size", "1G");
	assert_true(bfs_follow_config(bc));
	assert_int_equal(bc->ttl, 7);
	assert_int_equal(bc->cache_limit, 1ULL << 30);
	assert_int_equal(bc->readahead, 64);	/* the default */
	assert_int_equal(n_lines, 0);		/* the first read is silent */

	/* smb.conf changed: not looked at again within the second. */
	conf_set(&c, "metadata ttl", "9");
	assert_true(follow_same_second(bc));
	assert_int_equal(bc->ttl, 7);
	assert_int_equal(n_lines, 0);

	/* A second later it is, and the log says so. */
	bc->config_read = time(NULL) - 1;
	assert_true(bfs_follow_config(bc));
	assert_int_equal(bc->ttl, 9);
	assert_int_equal(n_lines, 1);
	assert_true(logged("bucketfs: share s: 'metadata ttl' is now 9 "
			   "(was 7)"));

	/* A bad value on reload: refused, the running value stays. */
	conf_set(&c, "metadata ttl", "soon");
	bc->config_read = time(NULL) - 1;
	assert_false(bfs_follow_config(bc));
	assert_int_equal(bc->ttl, 9);
	assert_true(logged("'bucketfs:metadata ttl' must be "));
	talloc_free(t);
}

/* A share on a closed port, with a cache folder of its own. */
static struct conf offline_conf(TALLOC_CTX *t, char **cache_dir)
{
	struct conf c = {{NULL}};

	*cache_dir = test_tmpdir(t, "bfs-share-test");
	assert_non_null(*cache_dir);
	conf_set(&c, "bucket", "bkt");
	conf_set(&c, "endpoint", closed_endpoint(t));
	conf_set(&c, "path style", "yes");
	conf_set(&c, "anonymous", "yes");
	conf_set(&c, "retries", "0");
	conf_set(&c, "close", "s3");
	conf_set(&c, "cache dir", *cache_dir);
	conf_set(&c, "cache size", "1G");
	conf_set(&c, "reuse read buffers", "no");	/* the test's malloc */
	return c;
}

/* bfs_share_open of a share with smb.conf c: EINVAL, and text logged. */
static void refused(TALLOC_CTX *t, struct conf *c, const char *text)
{
	const struct bfs_share_host host = {.home_uid = 0};
	struct bfs_conn *bc = share(t, c);

	forget_lines();
	assert_int_equal(bfs_share_open(bc, &host), EINVAL);
	assert_true(logged(text));
	assert_null(bc->index);	/* refused before the cache was opened */
	talloc_free(bc);
}

/* Refusals before anything is opened: EINVAL, with the reason logged. */
static void test_open_refuses(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	char *dir;
	struct conf c = offline_conf(t, &dir);

	(void)state;
	conf_set(&c, "bucket", "");
	refused(t, &c, "bucketfs: share s: 'bucketfs:bucket' is not set");
	conf_set(&c, "bucket", "bkt");
	conf_set(&c, "close", "later");
	refused(t, &c, "bucketfs: share s: 'bucketfs:close' must be local or "
		"s3, not 'later'");
	conf_set(&c, "close", "s3");
	conf_set(&c, "cache dir", "var/cache");
	refused(t, &c, "bucketfs: share s: 'bucketfs:cache dir' must be an "
		"absolute path, not 'var/cache'");
	conf_set(&c, "cache dir", dir);
	conf_set(&c, "part size", "1M");	/* S3's parts are 5 MiB up */
	refused(t, &c, "bucketfs: share s: 'bucketfs:part size' must be ");
	talloc_free(t);
}

/* A listing of folder prefix holding files, stored as listed at `at`. */
static void store_listing(TALLOC_CTX *t, struct bfs_index *idx,
			  const char *prefix, const char **files, size_t n,
			  time_t at)
{
	struct s3_listing page = {0};
	struct s3_dir *d = s3_dir_new(t, prefix);
	uint64_t since;
	size_t i;

	assert_non_null(d);
	page.objects = talloc_zero_array(t, struct s3_object_entry, n + 1);
	for (i = 0; i < n; i++) {
		page.objects[i].key = talloc_asprintf(t, "%s%s", prefix,
						      files[i]);
		page.objects[i].size = 100 + i;
		page.objects[i].etag = talloc_asprintf(t, "etag-%s", files[i]);
		page.objects[i].mtime = 1700000000;
	}
	page.n_objects = n;
	assert_int_equal(s3_dir_add_page(d, &page), 0);
	s3_dir_finish(d);
	assert_int_equal(bfs_index_change_seq(idx, &since), 0);
	assert_int_equal(bfs_index_store_dir(idx, d, at, since), 0);
}

/*
 * S3 away at the tree connect: refused with the cause while the cache
 * folder has never served the share; served from the index once it has.
 * Then the outage rule of listings: a folder the index has is served
 * (and S3 left alone for a while), one it never listed is an error.
 */
static void test_outage(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const struct bfs_share_host host = {.home_uid = 0};
	const char *root_files[] = {"a.txt", "b.bin"};
	const char *fresh_files[] = {"c.txt"};
	char *dir;
	struct conf c = offline_conf(t, &dir);
	const char *endpoint = conf_get(&c, "endpoint");
	struct bfs_conn *bc = share(t, &c);
	struct bfs_index *idx = NULL;
	struct bfs_entry e;
	const char *why = NULL;
	uint64_t total = 0, avail = 0;
	time_t before;

	(void)state;
	forget_lines();
	assert_int_equal(bfs_share_open(bc, &host), ECONNREFUSED);
	assert_true(logged("bucketfs: share s: cannot serve bucket 'bkt' at "));
	assert_true(logged(": the S3 endpoint is unreachable ("));
	talloc_free(bc);

	/* An earlier connection listed the root and the folder "fresh". */
	assert_int_equal(bfs_index_open(t, talloc_asprintf(t, "%s/index", dir),
					bfs_index_identity(t, endpoint, "bkt"),
					&idx, &why), 0);
	store_listing(t, idx, "", root_files, 2, 1000);	/* long stale */
	store_listing(t, idx, "fresh/", fresh_files, 1, time(NULL));
	TALLOC_FREE(idx);	/* one environment per process: close it */

	forget_lines();
	bc = share(t, &c);
	before = time(NULL);
	assert_int_equal(bfs_share_open(bc, &host), 0);
	assert_true(logged("is unreachable (") &&
		    logged("): serving what the cache holds until it is back"));
	assert_true(bc->s3_down_until >= before + BFS_OUTAGE_RETRY);
	assert_int_equal(bc->ttl, 60); /* the default */
	assert_non_null(bc->wb);
	assert_null(bc->engine);
	assert_int_equal(bfs_engine_now(bc), 0);

	/* Within the outage the index answers, stale or not. */
	assert_int_equal(bfs_lookup_entry(t, bc, "a.txt", &e), 0);
	assert_false(e.is_dir);
	assert_int_equal(e.size, 100);
	assert_string_equal(e.etag, "etag-a.txt");
	assert_int_equal(bfs_lookup_entry(t, bc, "nothing", &e), ENOENT);
	assert_int_equal(bfs_lookup_entry(t, bc, "", &e), 0);
	assert_true(e.is_dir);
	assert_int_equal(e.ino, BFS_ROOT_INO);

	/* A listing within its TTL does not ask S3 (nothing notices). */
	bc->s3_down_until = 0;
	assert_int_equal(bfs_dir_fresh(bc, "fresh"), 0);
	assert_int_equal(bc->s3_down_until, 0);

	/* Past it S3 is asked, is away, and the index's listing serves. */
	forget_lines();
	before = time(NULL);
	assert_int_equal(bfs_dir_fresh(bc, ""), 0);
	assert_true(bc->s3_down_until >= before + BFS_OUTAGE_RETRY);
	assert_true(logged("bucketfs: share s: S3 is unreachable ("));
	assert_true(logged("serving the listing of  the index has"));
	assert_int_equal(bfs_lookup_entry(t, bc, "b.bin", &e), 0);
	assert_int_equal(e.size, 101);

	/* A folder never listed has nothing to serve: the error. */
	assert_int_equal(bfs_dir_fresh(bc, "sub"), ECONNREFUSED);
	assert_int_equal(bfs_lookup_entry(t, bc, "sub/x", &e), ECONNREFUSED);

	/* The volume is the staging folder's file system. */
	bfs_volume_space(bc, &total, &avail);
	assert_true(total > 0);
	assert_true(avail <= total);

	forget_lines();
	bfs_share_close(bc);
	assert_true(logged("bucketfs: share s: 0 synchronous and 0 "
			   "asynchronous preads"));
	talloc_free(t);
}

/*
 * In a cluster the first connection of a node to hear other nodes' changes
 * marks the listings kept from before for listing again (nobody heard what
 * changed meanwhile); a second one while the first still hears does not;
 * once every hearing connection has ended, the next is first again.
 */
static void test_the_first_to_hear_other_nodes_relists_what_it_kept(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const struct bfs_share_host host = {.home_uid = 0};
	const char *files[] = {"a.txt"};
	char *dir;
	struct conf c = offline_conf(t, &dir);
	const char *endpoint = conf_get(&c, "endpoint");
	struct bfs_conn *bc1, *bc2, *bc3;
	struct bfs_index *idx = NULL;
	const char *why = NULL;
	time_t at;

	(void)state;
	assert_int_equal(bfs_index_open(t, talloc_asprintf(t, "%s/index", dir),
					bfs_index_identity(t, endpoint, "bkt"),
					&idx, &why), 0);
	store_listing(t, idx, "", files, 1, time(NULL));
	store_listing(t, idx, "sub/", files, 1, time(NULL));
	TALLOC_FREE(idx);

	bc1 = share(t, &c);
	assert_int_equal(bfs_share_open(bc1, &host), 0);
	assert_int_equal(bfs_index_dir_listed(bc1->index, "sub/", &at), 0);
	forget_lines();
	assert_int_equal(bfs_cluster_listen(bc1), 0);
	assert_true(logged("bucketfs: share s: the first on this node to hear "
			   "other nodes' changes: the 2 folder listings kept "
			   "from before are listed again at their next access"));
	assert_int_equal(bfs_index_dir_listed(bc1->index, "sub/", &at), ENOENT);
	assert_int_equal(bfs_index_dir_listed(bc1->index, "", &at), ENOENT);

	/* While bc1 hears, a second connection has missed nothing.  (The
	 * root listed again: offline, a share opens only from a listed root.) */
	store_listing(t, bc1->index, "", files, 1, time(NULL));
	store_listing(t, bc1->index, "sub/", files, 1, time(NULL));
	bc2 = share(t, &c);
	assert_int_equal(bfs_share_open(bc2, &host), 0);
	forget_lines();
	assert_int_equal(bfs_cluster_listen(bc2), 0);
	assert_false(logged("the first on this node"));
	assert_int_equal(bfs_index_dir_listed(bc2->index, "sub/", &at), 0);

	/* Both gone: the next one is first again. */
	bfs_share_close(bc1);
	talloc_free(bc1);
	bfs_share_close(bc2);
	talloc_free(bc2);
	bc3 = share(t, &c);
	assert_int_equal(bfs_share_open(bc3, &host), 0);
	forget_lines();
	assert_int_equal(bfs_cluster_listen(bc3), 0);
	assert_true(logged("the 2 folder listings kept from before"));
	assert_int_equal(bfs_index_dir_listed(bc3->index, "sub/", &at), ENOENT);
	bfs_share_close(bc3);
	talloc_free(t);
}

/*
 * A bucket that answered a probe is not asked again by the connects that
 * follow within the TTL: the endpoint here refuses every connection, so a
 * connect that asks S3 fails.  A TTL of 0, an older proof, or a setting
 * the proof was not made with ask again.
 */
static void test_a_proven_bucket_is_not_asked_again(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const struct bfs_share_host host = {.home_uid = 0};
	char *dir;
	struct conf c = offline_conf(t, &dir);
	struct bfs_conn *bc = share(t, &c);
	uint8_t tag[32], other[32];
	int64_t at = 0;

	(void)state;
	/* Never proven: asked, and S3 is not there. */
	assert_int_equal(bfs_share_open(bc, &host), ECONNREFUSED);
	assert_non_null(bc->index);
	assert_int_equal(bfs_probe_tag(bc, tag), 0);
	assert_int_equal(bfs_index_proof_get(bc->index, tag, &at), ENOENT);
	/* As a connect whose probe succeeded 5 s ago leaves it. */
	assert_int_equal(bfs_index_proof_put(bc->index, tag,
					     (int64_t)time(NULL) - 5), 0);
	talloc_free(bc);

	forget_lines();
	bc = share(t, &c);
	assert_int_equal(bfs_share_open(bc, &host), 0);
	assert_true(logged("bucketfs: share s: bucket 'bkt' answered a probe "
			   "with these settings "));
	assert_true(logged(" s ago: not asked again"));
	bfs_share_close(bc);
	talloc_free(bc);

	/* TTL 0 trusts no answer of S3's, this one neither. */
	conf_set(&c, "metadata ttl", "0");
	bc = share(t, &c);
	assert_int_equal(bfs_share_open(bc, &host), ECONNREFUSED);
	talloc_free(bc);

	/* A TTL of 3 s: the proof is 5 s old (at least). */
	conf_set(&c, "metadata ttl", "3");
	bc = share(t, &c);
	assert_int_equal(bfs_share_open(bc, &host), ECONNREFUSED);
	talloc_free(bc);

	/* -1 trusts it, for an hour at most. */
	conf_set(&c, "metadata ttl", "-1");
	bc = share(t, &c);
	assert_int_equal(bfs_share_open(bc, &host), 0);
	bfs_share_close(bc);
	assert_int_equal(bfs_index_proof_put(bc->index, tag,
					     (int64_t)time(NULL) -
						     BFS_PROBE_TRUST_MAX), 0);
	talloc_free(bc);
	bc = share(t, &c);
	assert_int_equal(bfs_share_open(bc, &host), ECONNREFUSED);
	/* A proof from the future (the clock went back) is none. */
	assert_int_equal(bfs_index_proof_put(bc->index, tag,
					     (int64_t)time(NULL) + 600), 0);
	talloc_free(bc);
	bc = share(t, &c);
	assert_int_equal(bfs_share_open(bc, &host), ECONNREFUSED);
	assert_int_equal(bfs_index_proof_put(bc->index, tag,
					     (int64_t)time(NULL)), 0);
	talloc_free(bc);

	/* Another prefix was never proven: asked. */
	conf_set(&c, "prefix", "sub");
	bc = share(t, &c);
	assert_int_equal(bfs_share_open(bc, &host), ECONNREFUSED);
	assert_int_equal(bfs_probe_tag(bc, other), 0);
	assert_memory_not_equal(tag, other, sizeof(tag));
	talloc_free(bc);
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bad_value_told_once),
		cmocka_unit_test(test_reload_once_a_second),
		cmocka_unit_test(test_open_refuses),
		cmocka_unit_test(test_outage),
		cmocka_unit_test(test_the_first_to_hear_other_nodes_relists_what_it_kept),
		cmocka_unit_test(test_a_proven_bucket_is_not_asked_again),
	};

	bfs_log_set(keep_line);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
