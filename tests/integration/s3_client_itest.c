/*
 * The S3 client against a real S3 server (s3rver on loopback), started by
 * tests/run.sh.  Environment:
 *   S3_ENDPOINT, S3_BUCKET    the server and a bucket that exists
 *   S3_DEAD_ENDPOINT          an address where nothing listens
 *   S3_FAULT_503, S3_FAULT_TRUNC, S3_FAULT_RESET
 *                             fault proxies (tests/integration/fault_proxy.py)
 *                             failing their first 2 requests each way
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bfs_arena.h"
#include "bfs_reader.h"
#include "s3_dirlist.h"
#include "s3_ops.h"

struct fixture {
	TALLOC_CTX *t;
	struct tevent_context *ev;
	struct s3_client *c;
};

static struct s3_client *client_tls(struct fixture *f, const char *endpoint,
				    const char *bucket, const char *secret,
				    unsigned max_requests, bool path_style,
				    bool verify_tls)
{
	struct s3_client_config cfg = {
		.endpoint = endpoint,
		.bucket = bucket,
		.region = "us-east-1",
		.path_style = path_style,
		.verify_tls = verify_tls,
		.max_requests = max_requests,
		.max_retries = 3,
		.retry_base_ms = 20,
		.creds = {.access_key = "S3RVER", .secret_key = secret},
	};
	struct s3_client *c = s3_client_new(f->t, f->ev, &cfg);

	assert_non_null(c);
	return c;
}

static struct s3_client *client_style(struct fixture *f, const char *endpoint,
				      const char *bucket, const char *secret,
				      unsigned max_requests, bool path_style)
{
	return client_tls(f, endpoint, bucket, secret, max_requests,
			  path_style, true);
}

static struct s3_client *client_for(struct fixture *f, const char *endpoint,
				    const char *bucket, const char *secret,
				    unsigned max_requests)
{
	return client_style(f, endpoint, bucket, secret, max_requests, true);
}

static int setup(void **state)
{
	struct fixture *f = talloc_zero(NULL, struct fixture);

	f->t = f;
	f->ev = tevent_context_init(f);
	f->c = client_for(f, getenv("S3_ENDPOINT"), getenv("S3_BUCKET"),
			  "S3RVER", 4);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	talloc_free(*state);
	return 0;
}

static void put(struct fixture *f, const char *key, const void *data,
		size_t len)
{
	struct s3_status st = {0};
	struct tevent_req *req = s3_put_object_send(f->t, f->ev, f->c, key,
						    data, len, NULL, 0);
	char *etag = NULL;

	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(s3_put_object_recv(req, f->t, &etag, &st), 0);
	assert_non_null(etag);
}

static int get(struct fixture *f, struct s3_client *c, const char *key,
	       uint64_t off, size_t len, void *buf, const char *etag,
	       size_t *got, struct s3_status *st)
{
	struct tevent_req *req = s3_get_range_send(f->t, f->ev, c, key, off, len,
						   buf, etag);

	int ret;

	assert_int_equal(s3_wait_for(req, f->ev), 0);
	ret = s3_get_range_recv(req, got, st);
	if (ret != 0) {
		print_message("GET %s: %s (HTTP %ld, %s: %s)\n", key,
			      strerror(ret), st->http_status, st->code,
			      st->message);
	}
	return ret;
}

static uint8_t *pattern(TALLOC_CTX *t, size_t len, unsigned seed)
{
	uint8_t *p = talloc_size(t, len);
	size_t i;

	for (i = 0; i < len; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = (uint8_t)(seed >> 16);
	}
	return p;
}

/* Keys that exercise S3's URI encoding, read back byte for byte. */
static void test_odd_keys_roundtrip(void **state)
{
	struct fixture *f = *state;
	const char *keys[] = {
		"plain.txt", "with space.bin", "plus+sign~tilde.bin",
		"caf\xc3\xa9/na\xc3\xafve \xe2\x82\xac.txt", "deep/a/b/c/d.bin",
		"sym!$&'()*,;=@.bin", "percent%20literal.bin",
	};
	size_t i;

	for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		size_t len = 1000 + i * 777, got = 0;
		uint8_t *data = pattern(f->t, len, (unsigned)i);
		uint8_t *buf = talloc_size(f->t, len);
		struct s3_object_info info = {0};
		struct s3_status st = {0};
		struct tevent_req *req;

		put(f, keys[i], data, len);
		req = s3_head_object_send(f->t, f->ev, f->c, keys[i]);
		assert_int_equal(s3_wait_for(req, f->ev), 0);
		assert_int_equal(s3_head_object_recv(req, f->t, &info, &st), 0);
		assert_int_equal(info.size, len);
		assert_int_equal(get(f, f->c, keys[i], 0, len, buf, info.etag,
				     &got, &st), 0);
		assert_int_equal(got, len);
		assert_memory_equal(buf, data, len);
		/* A range in the middle. */
		assert_int_equal(get(f, f->c, keys[i], 333, 100, buf, NULL, &got,
				     &st), 0);
		assert_int_equal(got, 100);
		assert_memory_equal(buf, data + 333, 100);
	}
}

static void test_empty_and_missing(void **state)
{
	struct fixture *f = *state;
	struct s3_object_info info = {0};
	struct s3_status st = {0};
	struct tevent_req *req;
	uint8_t buf[4];
	size_t got = 99;

	put(f, "empty", "", 0);
	req = s3_head_object_send(f->t, f->ev, f->c, "empty");
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(s3_head_object_recv(req, f->t, &info, &st), 0);
	assert_int_equal(info.size, 0);

	assert_int_equal(get(f, f->c, "no/such/key", 0, 4, buf, NULL, &got,
			     &st), ENOENT);
	assert_string_equal(st.code, "NoSuchKey");
	assert_int_equal(st.http_status, 404);
}

/* ListObjectsV2: delimiter, common prefixes, continuation tokens. */
static void test_listing_pages(void **state)
{
	struct fixture *f = *state;
	struct s3_status st = {0};
	struct s3_listing *l = NULL;
	struct tevent_req *req;
	const char *token = NULL;
	size_t seen = 0, pages = 0, i;
	char key[64];
	struct s3_dir *d = NULL;

	for (i = 0; i < 7; i++) {
		snprintf(key, sizeof(key), "list/f%02zu", i);
		put(f, key, key, strlen(key));
	}
	put(f, "list/sub/x", "x", 1);
	put(f, "list/implicit/deeper/y", "y", 1);

	do {
		req = s3_list_send(f->t, f->ev, f->c, "list/", "/", token, 3);
		assert_int_equal(s3_wait_for(req, f->ev), 0);
		assert_int_equal(s3_list_recv(req, f->t, &l, &st), 0);
		seen += l->n_objects;
		pages++;
		token = l->truncated ? l->next_token : NULL;
	} while (token != NULL);
	assert_int_equal(seen, 7);
	assert_true(pages >= 3);

	req = s3_dirlist_send(f->t, f->ev, f->c, "list/");
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(s3_dirlist_recv(req, f->t, &d, &st), 0);
	assert_int_equal(d->n, 9);
	assert_non_null(s3_dir_find(d, "f06"));
	assert_true(s3_dir_find(d, "sub")->is_dir);
	assert_true(s3_dir_find(d, "implicit")->is_dir);
	assert_int_equal(s3_dir_find(d, "f03")->size, 8);
	assert_null(s3_dir_find(d, "sub/x"));
}

static void test_copy_delete(void **state)
{
	struct fixture *f = *state;
	struct s3_status st = {0};
	struct tevent_req *req;
	char *etag = NULL;
	uint8_t buf[16];
	size_t got = 0;

	put(f, "copy/src name", "copy me please!", 15);
	req = s3_copy_object_send(f->t, f->ev, f->c, "copy/src name",
				  "copy/dst\xc3\xa9", NULL);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(s3_copy_object_recv(req, f->t, &etag, &st), 0);
	assert_int_equal(get(f, f->c, "copy/dst\xc3\xa9", 0, 15, buf, NULL, &got,
			     &st), 0);
	assert_memory_equal(buf, "copy me please!", 15);

	req = s3_delete_object_send(f->t, f->ev, f->c, "copy/src name");
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(s3_delete_object_recv(req, &st), 0);
	assert_int_equal(get(f, f->c, "copy/src name", 0, 15, buf, NULL, &got,
			     &st), ENOENT);
}

static void test_multipart(void **state)
{
	struct fixture *f = *state;
	const size_t part = 5u << 20, len = 2 * part + 12345;
	uint8_t *data = pattern(f->t, len, 42), *buf = talloc_size(f->t, len);
	struct s3_part parts[3];
	struct s3_status st = {0};
	struct tevent_req *req, *preq[3];
	char *id = NULL, *etag = NULL;
	size_t i, got = 0;
	int ret;

	bool cksum;

	req = s3_mpu_create_send(f->t, f->ev, f->c, "mpu/big object", true, NULL, 0);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	/* Created with CRC32C: each part carries its own. */
	cksum = s3_mpu_create_cksum(req);
	assert_true(cksum);
	assert_int_equal(s3_mpu_create_recv(req, f->t, &id, &st), 0);
	/* All parts in flight together. */
	for (i = 0; i < 3; i++) {
		size_t off = i * part, n = i < 2 ? part : len - 2 * part;
		preq[i] = s3_mpu_part_send(f->t, f->ev, f->c, "mpu/big object",
					   id, (unsigned)i + 1, data + off, n,
					   cksum);
	}
	for (i = 0; i < 3; i++) {
		assert_int_equal(s3_wait_for(preq[i], f->ev), 0);
		parts[i] = (struct s3_part){.part_no = (unsigned)i + 1};
		assert_int_equal(s3_mpu_part_recv(preq[i], f->t, &parts[i],
						  &st), 0);
		assert_non_null(parts[i].cksum);
	}
	req = s3_mpu_complete_send(f->t, f->ev, f->c, "mpu/big object", id,
				   parts, 3);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(s3_mpu_complete_recv(req, f->t, &etag, &st), 0);
	assert_int_equal(get(f, f->c, "mpu/big object", 0, len, buf, NULL, &got,
			     &st), 0);
	assert_int_equal(got, len);
	assert_memory_equal(buf, data, len);

	/*
	 * Abort: s3rver 3.7.1 has no AbortMultipartUpload and answers 405
	 * MethodNotAllowed, which must come back as EOPNOTSUPP with S3's
	 * code; a server that has it must forget the upload.
	 */
	req = s3_mpu_create_send(f->t, f->ev, f->c, "mpu/aborted", false, NULL, 0);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(s3_mpu_create_recv(req, f->t, &id, &st), 0);
	req = s3_mpu_abort_send(f->t, f->ev, f->c, "mpu/aborted", id);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	ret = s3_mpu_abort_recv(req, &st);
	if (ret == EOPNOTSUPP) {
		assert_string_equal(st.code, "MethodNotAllowed");
		assert_int_equal(st.http_status, 405);
	} else {
		assert_int_equal(ret, 0);
		struct s3_part p = {.part_no = 1};

		req = s3_mpu_part_send(f->t, f->ev, f->c, "mpu/aborted", id, 1,
				       "x", 1, false);
		assert_int_equal(s3_wait_for(req, f->ev), 0);
		assert_int_equal(s3_mpu_part_recv(req, f->t, &p, &st), ENOENT);
		assert_string_equal(st.code, "NoSuchUpload");
	}
}

/* If-Match pins a version: a replaced object is refused, never mixed. */
static void test_if_match_detects_replacement(void **state)
{
	struct fixture *f = *state;
	struct s3_object_info info = {0};
	struct s3_status st = {0};
	struct tevent_req *req;
	uint8_t buf[8];
	size_t got;

	put(f, "versioned", "version1", 8);
	req = s3_head_object_send(f->t, f->ev, f->c, "versioned");
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(s3_head_object_recv(req, f->t, &info, &st), 0);
	put(f, "versioned", "version2", 8);
	assert_int_equal(get(f, f->c, "versioned", 0, 8, buf, info.etag, &got,
			     &st), ESTALE);
	assert_int_equal(st.http_status, 412);
}

static void test_wrong_secret(void **state)
{
	struct fixture *f = *state;
	struct s3_client *bad = client_for(f, getenv("S3_ENDPOINT"),
					   getenv("S3_BUCKET"), "WRONG", 4);
	struct s3_status st = {0};
	uint8_t buf[4];
	size_t got;

	assert_int_equal(get(f, bad, "plain.txt", 0, 4, buf, NULL, &got, &st),
			 EACCES);
	assert_string_equal(st.code, "SignatureDoesNotMatch");
	assert_int_equal(st.http_status, 403);
	assert_int_equal(st.attempts, 1); /* not retried */
}

static void test_missing_bucket(void **state)
{
	struct fixture *f = *state;
	struct s3_client *c = client_for(f, getenv("S3_ENDPOINT"),
					 "no-such-bucket", "S3RVER", 4);
	struct s3_listing *l = NULL;
	struct s3_status st = {0};
	struct tevent_req *req = s3_list_send(f->t, f->ev, c, "", "/", NULL, 1);

	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(s3_list_recv(req, f->t, &l, &st), ENOENT);
	assert_string_equal(st.code, "NoSuchBucket");
}

static void test_unreachable(void **state)
{
	struct fixture *f = *state;
	struct s3_client *c = client_for(f, getenv("S3_DEAD_ENDPOINT"),
					 getenv("S3_BUCKET"), "S3RVER", 4);
	struct s3_status st = {0};
	uint8_t buf[4];
	size_t got;

	assert_int_equal(get(f, c, "plain.txt", 0, 4, buf, NULL, &got, &st),
			 ECONNREFUSED);
	assert_int_equal(st.attempts, 4); /* 1 + max_retries */
	assert_int_equal(s3_client_counters(c)->retries, 3);
}

/* Faults injected by a proxy: each heals after two failures. */
static void check_recovers(struct fixture *f, const char *env)
{
	struct s3_client *c = client_for(f, getenv(env), getenv("S3_BUCKET"),
					 "S3RVER", 4);
	uint8_t buf[1000];
	struct s3_status st = {0};
	size_t got = 0;
	uint8_t *want = pattern(f->t, 1000, 0);

	assert_int_equal(get(f, c, "plain.txt", 0, 1000, buf, NULL, &got, &st),
			 0);
	assert_int_equal(got, 1000);
	assert_memory_equal(buf, want, 1000);
	assert_int_equal(st.attempts, 3);
	assert_int_equal(s3_client_counters(c)->retries, 2);
}

static void test_retry_slowdown(void **state)
{
	check_recovers(*state, "S3_FAULT_503");
}

static void test_retry_truncated_body(void **state)
{
	check_recovers(*state, "S3_FAULT_TRUNC");
}

static void test_retry_connection_reset(void **state)
{
	check_recovers(*state, "S3_FAULT_RESET");
}

/* Many requests at once through a bounded engine, all byte-exact. */
static void test_parallel_bounded(void **state)
{
	struct fixture *f = *state;
	const size_t len = 1u << 20, n = 32;
	uint8_t *data = pattern(f->t, len, 7);
	struct tevent_req *reqs[32];
	uint8_t *bufs[32];
	uint64_t before;
	size_t i;

	put(f, "parallel", data, len);
	before = s3_client_counters(f->c)->requests;
	for (i = 0; i < n; i++) {
		bufs[i] = talloc_size(f->t, 32768);
		reqs[i] = s3_get_range_send(f->t, f->ev, f->c, "parallel",
					    i * 32768, 32768, bufs[i], NULL);
	}
	for (i = 0; i < n; i++) {
		struct s3_status st = {0};
		size_t got = 0;
		assert_int_equal(s3_wait_for(reqs[i], f->ev), 0);
		assert_int_equal(s3_get_range_recv(reqs[i], &got, &st), 0);
		assert_int_equal(got, 32768);
		assert_memory_equal(bufs[i], data + i * 32768, 32768);
	}
	assert_int_equal(s3_client_counters(f->c)->requests - before, n);
}

/*
 * Virtual-hosted addressing: the bucket in the host name
 * (BUCKET.s3.localhost, which curl resolves to loopback), signed as such.
 */
static void test_virtual_host_style(void **state)
{
	struct fixture *f = *state;
	struct s3_client *c = client_style(f, getenv("S3_VHOST_ENDPOINT"),
					   getenv("S3_BUCKET"), "S3RVER", 4,
					   false);
	struct s3_status st = {0};
	struct s3_listing *l = NULL;
	struct tevent_req *req;
	uint8_t buf[32];
	size_t got = 0;
	char *etag = NULL;

	req = s3_put_object_send(f->t, f->ev, c, "vhost/a b.txt", "virtual host", 12, NULL, 0);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(s3_put_object_recv(req, f->t, &etag, &st), 0);
	assert_int_equal(get(f, f->c, "vhost/a b.txt", 0, 12, buf, NULL, &got,
			     &st), 0);
	assert_memory_equal(buf, "virtual host", 12);
	req = s3_list_send(f->t, f->ev, c, "vhost/", "/", NULL, 0);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(s3_list_recv(req, f->t, &l, &st), 0);
	assert_int_equal(l->n_objects, 1);
	assert_string_equal(l->objects[0].key, "vhost/a b.txt");
}

/*
 * TLS: a self-signed certificate is refused by default (and not retried);
 * with verification switched off the same server is served.
 */
static void test_tls_verification(void **state)
{
	struct fixture *f = *state;
	const char *ep = getenv("S3_TLS_ENDPOINT");
	struct s3_client *strict = client_tls(f, ep, getenv("S3_BUCKET"),
					      "S3RVER", 4, true, true);
	struct s3_client *lax = client_tls(f, ep, getenv("S3_BUCKET"),
					   "S3RVER", 4, true, false);
	struct s3_status st = {0};
	struct s3_listing *l = NULL;
	struct tevent_req *req;

	req = s3_list_send(f->t, f->ev, strict, "", "/", NULL, 1);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(s3_list_recv(req, f->t, &l, &st), EPROTO);
	assert_int_equal(st.attempts, 1);
	req = s3_list_send(f->t, f->ev, lax, "", "/", NULL, 1);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(s3_list_recv(req, f->t, &l, &st), 0);
}

/* ---- the block reader: cache, coalescing, readahead ---- */

#define RBS 65536u

static struct bfs_reader *reader_with_cache(struct fixture *f,
					    struct bfs_cache **pc)
{
	const char *why = NULL;
	const char *base = getenv("TMPDIR");
	char *dir = talloc_asprintf(f->t, "%s/reader.XXXXXX", base ? base : "/tmp");

	assert_non_null(mkdtemp(dir));
	assert_int_equal(bfs_cache_open(f->t, dir, 64 * RBS, RBS, pc, &why), 0);
	/* The fill thread, as smbd's event loop uses it. */
	return bfs_reader_new(f->t, f->ev, f->c, *pc, RBS, true);
}

static struct bfs_object object_of(struct fixture *f, const char *key)
{
	struct s3_object_info info = {0};
	struct s3_status st = {0};
	struct tevent_req *req = s3_head_object_send(f->t, f->ev, f->c, key);
	struct bfs_object o = {.key = key};

	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(s3_head_object_recv(req, f->t, &info, &st), 0);
	o.etag = info.etag;
	o.size = info.size;
	bfs_cache_make_id("b", key, info.etag, RBS, &o.id);
	return o;
}

static void test_reader_caches_and_coalesces(void **state)
{
	struct fixture *f = *state;
	const size_t len = 10 * RBS + 123;
	uint8_t *data = pattern(f->t, len, 99);
	uint8_t *a = talloc_size(f->t, len), *b = talloc_size(f->t, len);
	struct bfs_cache *cache = NULL;
	struct bfs_reader *r = reader_with_cache(f, &cache);
	struct bfs_object o;
	struct tevent_req *ra, *rb;
	size_t got = 0;
	uint64_t before;

	put(f, "reader/obj", data, len);
	o = object_of(f, "reader/obj");
	before = s3_client_counters(f->c)->requests;
	/* Two reads of overlapping ranges at once: one fetch per block. */
	ra = bfs_read_send(f->t, f->ev, r, &o, 100, 3 * RBS, a);
	rb = bfs_read_send(f->t, f->ev, r, &o, RBS + 5, 2 * RBS, b);
	assert_int_equal(s3_wait_for(ra, f->ev), 0);
	assert_int_equal(bfs_read_recv(ra, &got, NULL), 0);
	assert_int_equal(got, 3 * RBS);
	assert_memory_equal(a, data + 100, 3 * RBS);
	assert_int_equal(s3_wait_for(rb, f->ev), 0);
	assert_int_equal(bfs_read_recv(rb, &got, NULL), 0);
	assert_memory_equal(b, data + RBS + 5, 2 * RBS);
	/* Blocks 0-3 missing together: one GET for the four. */
	assert_int_equal(bfs_reader_counters(r)->block_fetches, 1);
	assert_true(bfs_reader_counters(r)->coalesced >= 2);
	assert_int_equal(s3_client_counters(f->c)->requests - before, 1);

	/* The same range again: all from the cache, no request. */
	before = s3_client_counters(f->c)->requests;
	ra = bfs_read_send(f->t, f->ev, r, &o, 100, 3 * RBS, a);
	assert_int_equal(s3_wait_for(ra, f->ev), 0);
	assert_int_equal(bfs_read_recv(ra, &got, NULL), 0);
	assert_memory_equal(a, data + 100, 3 * RBS);
	assert_int_equal(s3_client_counters(f->c)->requests, before);

	/* Readahead fills the rest; the whole object then reads from disk. */
	bfs_reader_prefetch(r, &o, 4, 16);
	/* Blocks 4-10 in one GET (8 at most per GET). */
	while (s3_client_counters(f->c)->requests < before + 1 ||
	       !bfs_cache_present(cache, &o.id, 10)) {
		if (bfs_reader_counters(r)->fetched_bytes < len) {
			tevent_loop_once(f->ev);
		} else {
			bfs_cache_fill_drain(cache); /* the fill thread's part */
		}
	}
	before = s3_client_counters(f->c)->requests;
	ra = bfs_read_send(f->t, f->ev, r, &o, 0, len + 1000, a);
	assert_int_equal(s3_wait_for(ra, f->ev), 0);
	assert_int_equal(bfs_read_recv(ra, &got, NULL), 0);
	assert_int_equal(got, len);
	assert_memory_equal(a, data, len);
	assert_int_equal(s3_client_counters(f->c)->requests, before);
}

/* An object replaced in S3 is never mixed with the version opened. */
static void test_reader_refuses_replaced_object(void **state)
{
	struct fixture *f = *state;
	uint8_t *v1 = pattern(f->t, 2 * RBS, 1), *v2 = pattern(f->t, 2 * RBS, 2);
	uint8_t *buf = talloc_size(f->t, 2 * RBS);
	struct bfs_cache *cache = NULL;
	struct bfs_reader *r = reader_with_cache(f, &cache);
	struct bfs_object o;
	struct tevent_req *req;
	struct s3_status st = {0};
	size_t got = 0;

	put(f, "reader/replaced", v1, 2 * RBS);
	o = object_of(f, "reader/replaced");
	req = bfs_read_send(f->t, f->ev, r, &o, 0, RBS, buf);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(bfs_read_recv(req, &got, NULL), 0);
	put(f, "reader/replaced", v2, 2 * RBS);
	/* Block 0 is cached (old version, consistent); block 1 is not. */
	req = bfs_read_send(f->t, f->ev, r, &o, 0, 2 * RBS, buf);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(bfs_read_recv(req, &got, &st), ESTALE);
	/* Reopened with the new ETag: the new bytes, all of them. */
	o = object_of(f, "reader/replaced");
	req = bfs_read_send(f->t, f->ev, r, &o, 0, 2 * RBS, buf);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(bfs_read_recv(req, &got, &st), 0);
	assert_memory_equal(buf, v2, 2 * RBS);
}

/*
 * An object without an ETag (a file the index has as pending, say) has no
 * version to name: each read takes what S3 has now, and nothing of it is
 * cached, where a later read would take it for whatever S3 has then.
 */
static void test_reader_never_caches_an_object_without_etag(void **state)
{
	struct fixture *f = *state;
	uint8_t *v1 = pattern(f->t, 2 * RBS, 3), *v2 = pattern(f->t, 2 * RBS, 4);
	uint8_t *buf = talloc_size(f->t, 2 * RBS);
	struct bfs_cache *cache = NULL;
	struct bfs_reader *r = reader_with_cache(f, &cache);
	struct bfs_object o = {.key = "reader/unversioned", .size = 2 * RBS};
	struct tevent_req *req;
	size_t got = 0;
	uint64_t before;

	bfs_cache_make_id("b", o.key, "", RBS, &o.id);
	put(f, o.key, v1, 2 * RBS);
	req = bfs_read_send(f->t, f->ev, r, &o, 0, 2 * RBS, buf);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(bfs_read_recv(req, &got, NULL), 0);
	assert_int_equal(got, 2 * RBS);
	assert_memory_equal(buf, v1, 2 * RBS);
	bfs_cache_fill_drain(cache);
	assert_false(bfs_cache_present(cache, &o.id, 0));
	assert_false(bfs_reader_all_cached(r, &o, 0, 2 * RBS));
	/* Readahead, or a read that only fills the cache, would only cache
	 * it: nothing is asked for. */
	before = s3_client_counters(f->c)->requests;
	bfs_reader_prefetch(r, &o, 0, 2);
	req = bfs_read_send(f->t, f->ev, r, &o, 0, 2 * RBS, NULL);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(bfs_read_recv(req, &got, NULL), 0);
	assert_int_equal(s3_client_counters(f->c)->requests, before);

	/* S3 has another version of the same size: the read gets it. */
	put(f, o.key, v2, 2 * RBS);
	before = s3_client_counters(f->c)->requests;
	req = bfs_read_send(f->t, f->ev, r, &o, 0, 2 * RBS, buf);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(bfs_read_recv(req, &got, NULL), 0);
	assert_memory_equal(buf, v2, 2 * RBS);
	assert_int_equal(s3_client_counters(f->c)->requests, before + 1);
	bfs_cache_fill_drain(cache);
	assert_false(bfs_cache_present(cache, &o.id, 1));
}

/* Lend [off, off+len): wait, and check the arena holds those bytes. */
static struct bfs_pin *lend(struct fixture *f, struct bfs_reader *r,
			    struct bfs_arena_view *v, struct bfs_object *o,
			    const uint8_t *data, uint64_t off, size_t len,
			    int want)
{
	struct tevent_req *req = bfs_read_lend_send(f->t, f->ev, r, o, off,
						    len);
	struct bfs_pin *pin = NULL;
	struct s3_status st = {0};
	uint64_t at = 0;

	assert_non_null(req);
	assert_int_equal(s3_wait_for(req, f->ev), 0);
	assert_int_equal(bfs_read_lend_recv(req, f->t, &at, &pin, &st), want);
	if (pin != NULL) {
		const uint8_t *p = bfs_arena_view_at(v, at, len);

		assert_non_null(p);
		assert_memory_equal(p, data + off, len);
	}
	return pin;
}

/*
 * The engine's reader lends fetched bytes from its arena, where another
 * process reads them: a pinned slot is not reused, a released one is;
 * readahead's blocks are lent from memory; what is not in one fetch is
 * answered from the cache; a replaced object is refused as by a read.
 */
static void test_reader_lends_fetched_blocks_from_its_arena(void **state)
{
	struct fixture *f = *state;
	const size_t len = 20 * RBS + 7;
	uint8_t *data = pattern(f->t, len, 41);
	struct bfs_cache *cache = NULL;
	struct bfs_reader *r = reader_with_cache(f, &cache);
	struct bfs_arena *a;
	struct bfs_arena_view *v;
	struct bfs_object o;
	struct bfs_pin *p1, *p2, *p3;
	uint64_t fetches;

	a = bfs_arena_new(f->t, bfs_reader_buf_size(r), 3);
	assert_non_null(a);
	assert_int_equal(bfs_reader_use_arena(r, a), 0);
	bfs_reader_answer_after_fill(r, false);
	v = bfs_arena_view_new(f->t, bfs_arena_fd(a), bfs_arena_size(a));
	assert_non_null(v);
	put(f, "reader/lent", data, len);
	o = object_of(f, "reader/lent");

	/* A miss: fetched into a slot, lent as soon as the GET is done. */
	p1 = lend(f, r, v, &o, data, 100, RBS, 0);
	assert_non_null(p1);
	assert_int_equal(bfs_arena_free_slots(a), 2);
	/* Asked again while lent: the same fetch, no second GET. */
	fetches = bfs_reader_counters(r)->block_fetches;
	p2 = lend(f, r, v, &o, data, 200, 1000, 0);
	assert_non_null(p2);
	assert_int_equal(bfs_reader_counters(r)->block_fetches, fetches);

	/* Readahead of blocks 4-11 lands in a slot; lent from memory. */
	bfs_reader_prefetch(r, &o, 4, 8);
	p3 = lend(f, r, v, &o, data, 5 * RBS + 3, 2 * RBS, 0);
	assert_non_null(p3);
	assert_int_equal(bfs_reader_counters(r)->block_fetches, fetches + 1);
	assert_int_equal(bfs_arena_free_slots(a), 1);

	/* Released, and once the fills are done, the slots are free again. */
	talloc_free(p1);
	talloc_free(p2);
	talloc_free(p3);
	bfs_cache_fill_drain(cache);
	bfs_reader_set_memory(r, bfs_arena_size(a)); /* sweeps */
	tevent_loop_once(f->ev);
	assert_true(bfs_cache_present(cache, &o.id, 0));

	/* Cached and no longer in memory: no pin, the cache has it. */
	bfs_reader_set_memory(r, 1); /* keeps nothing */
	bfs_reader_set_memory(r, bfs_arena_size(a));
	assert_int_equal(bfs_arena_free_slots(a), 3);
	assert_null(lend(f, r, v, &o, data, 0, RBS, 0));
	/* Partly cached (block 11 is, 12 is not): through the cache too. */
	assert_null(lend(f, r, v, &o, data, 11 * RBS + 10, RBS, 0));
	assert_true(bfs_cache_present(cache, &o.id, 12));

	/* Replaced in S3: refused, nothing pinned. */
	put(f, "reader/lent", pattern(f->t, len, 42), len);
	assert_null(lend(f, r, v, &o, data, 15 * RBS, RBS, ESTALE));
	bfs_cache_fill_drain(cache);
	tevent_loop_once(f->ev);
	assert_int_equal(bfs_arena_free_slots(a), 3);
}

/* Freeing a request in flight must cancel it cleanly. */
static void test_cancel_in_flight(void **state)
{
	struct fixture *f = *state;
	uint8_t *buf = talloc_size(f->t, 1u << 20);
	struct tevent_req *req = s3_get_range_send(f->t, f->ev, f->c, "parallel",
						   0, 1u << 20, buf, NULL);
	struct s3_status st = {0};
	size_t got;

	tevent_loop_once(f->ev);
	TALLOC_FREE(req);
	/* The engine still works afterwards. */
	assert_int_equal(get(f, f->c, "parallel", 0, 10, buf, NULL, &got, &st),
			 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_odd_keys_roundtrip),
		cmocka_unit_test(test_empty_and_missing),
		cmocka_unit_test(test_listing_pages),
		cmocka_unit_test(test_copy_delete),
		cmocka_unit_test(test_multipart),
		cmocka_unit_test(test_if_match_detects_replacement),
		cmocka_unit_test(test_wrong_secret),
		cmocka_unit_test(test_missing_bucket),
		cmocka_unit_test(test_unreachable),
		cmocka_unit_test(test_retry_slowdown),
		cmocka_unit_test(test_retry_truncated_body),
		cmocka_unit_test(test_retry_connection_reset),
		cmocka_unit_test(test_parallel_bounded),
		cmocka_unit_test(test_cancel_in_flight),
		cmocka_unit_test(test_virtual_host_style),
		cmocka_unit_test(test_tls_verification),
		cmocka_unit_test(test_reader_caches_and_coalesces),
		cmocka_unit_test(test_reader_refuses_replaced_object),
		cmocka_unit_test(test_reader_never_caches_an_object_without_etag),
		cmocka_unit_test(test_reader_lends_fetched_blocks_from_its_arena),
	};
	/*
	 * Against another server (S3_BACKEND=rgw: Ceph's RADOS Gateway), the
	 * checks of S3's own behaviour; the fault, TLS and virtual-host ones
	 * need run.py's fronts before s3rver.
	 */
	const struct CMUnitTest backend_tests[] = {
		cmocka_unit_test(test_odd_keys_roundtrip),
		cmocka_unit_test(test_empty_and_missing),
		cmocka_unit_test(test_listing_pages),
		cmocka_unit_test(test_copy_delete),
		cmocka_unit_test(test_multipart),
		cmocka_unit_test(test_if_match_detects_replacement),
		cmocka_unit_test(test_wrong_secret),
		cmocka_unit_test(test_parallel_bounded),
		cmocka_unit_test(test_cancel_in_flight),
		cmocka_unit_test(test_reader_caches_and_coalesces),
		cmocka_unit_test(test_reader_refuses_replaced_object),
		cmocka_unit_test(test_reader_never_caches_an_object_without_etag),
		cmocka_unit_test(test_reader_lends_fetched_blocks_from_its_arena),
	};
	const char *backend = getenv("S3_BACKEND");

	if (getenv("S3_ENDPOINT") == NULL) {
		fprintf(stderr, "s3_client_itest: run me from tests/run.sh\n");
		return 1;
	}
	if (backend != NULL) {
		char name[64];

		snprintf(name, sizeof(name), "s3_client (against %s)", backend);
		return cmocka_run_group_tests_name(name, backend_tests, setup,
						   teardown);
	}
	return cmocka_run_group_tests_name("s3_client (against s3rver)", tests,
					   setup, teardown);
}
