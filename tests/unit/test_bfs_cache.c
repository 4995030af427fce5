/* The extent cache: fills, reads, the size limit, scan resistance. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "test_tmpdir.h"

#include "bfs_cache.h"

#define BS 4096u

static char *tmpdir(TALLOC_CTX *t)
{
	char *d = test_tmpdir(t, "bfs-cache-test");

	assert_non_null(d);
	return d;
}

static void block_bytes(uint8_t *b, uint64_t blk, unsigned obj)
{
	size_t i;

	for (i = 0; i < BS; i++) {
		b[i] = (uint8_t)(blk * 31 + obj * 7 + i);
	}
}

static void test_fill_then_read(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;
	struct bfs_cache_id a, b;
	uint8_t data[BS], out[BS];
	uint32_t got = 0;
	uint64_t used, blocks;

	(void)state;
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	bfs_cache_make_id("bkt", "k", "etag1", BS, &a);
	bfs_cache_make_id("bkt", "k", "etag2", BS, &b);
	assert_memory_not_equal(a.b, b.b, 16);

	assert_int_equal(bfs_cache_read(c, &a, 3, 0, BS, out, &got), ENOENT);
	block_bytes(data, 3, 1);
	assert_int_equal(bfs_cache_fill(c, &a, 3, data, BS), 0);
	assert_int_equal(bfs_cache_read(c, &a, 3, 100, 200, out, &got), 0);
	assert_int_equal(got, 200);
	assert_memory_equal(out, data + 100, 200);
	/* Another version of the object is another identity. */
	assert_int_equal(bfs_cache_read(c, &b, 3, 0, BS, out, &got), ENOENT);
	/* A short last block. */
	assert_int_equal(bfs_cache_fill(c, &a, 4, data, 10), 0);
	assert_int_equal(bfs_cache_read(c, &a, 4, 5, 100, out, &got), 0);
	assert_int_equal(got, 5);
	assert_int_equal(bfs_cache_usage(c, &used, &blocks), 0);
	assert_int_equal(used, BS + 10);
	assert_int_equal(blocks, 2);

	/* Persistent: a new open (a restarted smbd) still has it. */
	TALLOC_FREE(c);
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	assert_int_equal(bfs_cache_read(c, &a, 3, 0, BS, out, &got), 0);
	assert_memory_equal(out, data, BS);
	talloc_free(t);
}

/* The limit holds, and a scan does not flush blocks read twice. */
static void test_limit_and_scan_resistance(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	struct bfs_cache *c = NULL;
	struct bfs_cache_id hot, scan;
	uint8_t data[BS], out[BS];
	uint32_t got;
	uint64_t used, blocks, i;

	(void)state;
	/* Room for 16 blocks. */
	assert_int_equal(bfs_cache_open(t, tmpdir(t), 16 * BS, BS, &c, &why), 0);
	bfs_cache_make_id("bkt", "hot", "e", BS, &hot);
	bfs_cache_make_id("bkt", "scan", "e", BS, &scan);
	for (i = 0; i < 4; i++) {
		block_bytes(data, i, 1);
		assert_int_equal(bfs_cache_fill(c, &hot, i, data, BS), 0);
		/* Read twice: promoted to the protected segment. */
		assert_int_equal(bfs_cache_read(c, &hot, i, 0, BS, out, &got), 0);
	}
	assert_int_equal(bfs_cache_flush(c), 0);
	/* One pass over 100 blocks: six times the cache. */
	for (i = 0; i < 100; i++) {
		block_bytes(data, i, 2);
		assert_int_equal(bfs_cache_fill(c, &scan, i, data, BS), 0);
		assert_int_equal(bfs_cache_usage(c, &used, &blocks), 0);
		assert_true(used <= 16 * BS);
	}
	for (i = 0; i < 4; i++) {
		assert_int_equal(bfs_cache_read(c, &hot, i, 0, BS, out, &got), 0);
		block_bytes(data, i, 1);
		assert_memory_equal(out, data, BS);
	}
	/* The scan's early blocks are gone, its last ones are there. */
	assert_int_equal(bfs_cache_read(c, &scan, 0, 0, BS, out, &got), ENOENT);
	assert_int_equal(bfs_cache_read(c, &scan, 99, 0, BS, out, &got), 0);
	block_bytes(data, 99, 2);
	assert_memory_equal(out, data, BS);
	assert_true(bfs_cache_counters(c)->evictions >= 88);
	talloc_free(t);
}

static void test_block_larger_than_cache_is_refused(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	struct bfs_cache *c = NULL;
	struct bfs_cache_id id;
	uint8_t data[BS] = {0};

	(void)state;
	assert_int_equal(bfs_cache_open(t, tmpdir(t), BS / 2, BS, &c, &why), 0);
	bfs_cache_make_id("bkt", "k", "e", BS, &id);
	assert_int_equal(bfs_cache_fill(c, &id, 0, data, BS), ENOSPC);
	assert_int_equal(bfs_cache_open(t, tmpdir(t), BS, 1000, &c, &why), EINVAL);
	talloc_free(t);
}

static void test_check_against_the_index(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;
	struct bfs_cache_ref ref;
	struct bfs_cache_id old;
	struct bfs_cache_fsck r;
	uint8_t data[3 * BS], out[BS];
	uint32_t got;
	uint64_t used, blocks;

	(void)state;
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	bfs_cache_make_id("bkt", "k", "etag2", BS, &ref.id);
	bfs_cache_make_id("bkt", "k", "etag1", BS, &old);
	memset(data, 7, sizeof(data));
	assert_int_equal(bfs_cache_fill(c, &ref.id, 0, data, sizeof(data)), 0);
	assert_int_equal(bfs_cache_fill(c, &old, 0, data, 2 * BS), 0);
	/* The index names etag2 only, and says it is shorter than cached. */
	ref.size = 2 * BS + 100;
	assert_int_equal(bfs_cache_check(c, false, &ref, 1, &r), 0);
	assert_int_equal(r.blocks, 5);
	assert_int_equal(r.unindexed_versions, 1);
	assert_int_equal(r.unindexed_blocks, 2);
	assert_int_equal(r.beyond_size, 1);
	assert_int_equal(r.orphan_files, 0);
	assert_int_equal(bfs_cache_check(c, true, &ref, 1, &r), 0);
	assert_int_equal(r.unindexed_blocks + r.beyond_size, 3);
	assert_int_equal(bfs_cache_check(c, true, &ref, 1, &r), 0);
	assert_int_equal(r.unindexed_versions + r.beyond_size + r.bad_blocks +
			 r.orphan_files + r.lru_missing + r.lru_orphans, 0);
	assert_int_equal(bfs_cache_usage(c, &used, &blocks), 0);
	assert_int_equal(blocks, 2);
	assert_int_equal(used, 2 * BS);
	assert_int_equal(bfs_cache_read(c, &ref.id, 1, 0, BS, out, &got), 0);
	assert_int_equal(bfs_cache_read(c, &ref.id, 2, 0, BS, out, &got),
			 ENOENT);
	assert_int_equal(bfs_cache_read(c, &old, 0, 0, BS, out, &got), ENOENT);
	/* Without refs nothing is held against the index. */
	assert_int_equal(bfs_cache_fill(c, &old, 0, data, BS), 0);
	assert_int_equal(bfs_cache_check(c, true, NULL, 0, &r), 0);
	assert_int_equal(r.unindexed_blocks + r.bad_blocks, 0);
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fill_then_read),
		cmocka_unit_test(test_limit_and_scan_resistance),
		cmocka_unit_test(test_block_larger_than_cache_is_refused),
		cmocka_unit_test(test_check_against_the_index),
	};
	return cmocka_run_group_tests_name("bfs_cache", tests, NULL, NULL);
}
