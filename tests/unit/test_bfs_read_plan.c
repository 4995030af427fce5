/*
 * lib/bfs_read_plan: how a read gets its bytes (the cache, the engine, a
 * claim, this process) and what is read ahead, on a share of test_share.h
 * with a cache and, for the engine's part, its stand-in.  Nothing here
 * fetches: the plans are looked at, not carried out.
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
#include <unistd.h>
#include <cmocka.h>

#include "test_share.h"

#include "bfs_cache.h"
#include "bfs_file.h"
#include "bfs_read_plan.h"

#define MiB (1ULL << 20)

/* An object in the root, opened for reading (test_share.h). */
static struct bfs_fh *opened(struct bfs_conn *bc, const char *name,
			     uint64_t size)
{
	struct bfs_fh *fh = test_share_opened(bc, name, size);

	assert_non_null(fh);
	return fh;
}

static void cached(struct bfs_conn *bc, struct bfs_fh *fh, uint64_t blk)
{
	static uint8_t block[MiB];

	assert_int_equal(bfs_cache_fill(bc->cache, &fh->obj.id, blk, block,
					MiB), 0);
}

static void test_a_read_is_planned_from_the_cache_the_engine_or_here(
	void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = test_share_new(t);
	struct bfs_read_plan p;
	struct bfs_reader *reader;
	struct bfs_fh *ten, *two, *big;
	pid_t engine;

	(void)state;
	assert_non_null(bc);
	engine = test_share_reading(bc, 64ULL << 20);
	assert_true(engine > 0);
	reader = bfs_conn_async_reader(bc, bc->engine_ev);
	assert_non_null(reader);
	assert_int_equal(bc->readahead, 64); /* the default */
	ten = opened(bc, "ten.bin", 10 * MiB);

	/* Not the engine's loop: fetched here, read ahead from the start. */
	bfs_read_plan(bc, ten, reader, false, 0, MiB, &p);
	assert_int_equal(p.way, BFS_READ_HERE);
	assert_int_equal(p.fallback, BFS_READ_HERE);
	assert_false(p.engine);
	assert_int_equal(p.ahead, 1);
	assert_int_equal(p.ahead_n, 9); /* to the end, under 64 blocks */
	assert_int_equal(ten->next_off, MiB);
	/* A jump is no sequential read: nothing ahead. */
	bfs_read_plan(bc, ten, reader, false, 5 * MiB, 4096, &p);
	assert_int_equal(p.way, BFS_READ_HERE);
	assert_int_equal(p.ahead_n, 0);
	/* On disk: copied; what follows it is still read ahead. */
	cached(bc, ten, 5);
	bfs_read_plan(bc, ten, reader, false, 5 * MiB + 4096, 4096, &p);
	assert_int_equal(p.way, BFS_READ_CACHED);
	assert_int_equal(p.fallback, BFS_READ_HERE);
	assert_int_equal(p.ahead, 6);
	assert_int_equal(p.ahead_n, 4);
	/* The window's far end on disk: nothing asked ahead. */
	cached(bc, ten, 9);
	bfs_read_plan(bc, ten, reader, false, 5 * MiB + 8192, 4096, &p);
	assert_int_equal(p.way, BFS_READ_CACHED);
	assert_int_equal(p.ahead_n, 0);

	/* On the engine's loop: a miss is the engine's, readahead too. */
	two = opened(bc, "two.bin", 2 * MiB);
	bfs_read_plan(bc, two, reader, true, 0, 4096, &p);
	assert_int_equal(p.way, BFS_READ_ENGINE);
	assert_true(p.engine);
	assert_int_equal(p.ahead, 1);
	assert_int_equal(p.ahead_n, 1);
	assert_int_equal(two->lend_until, 2);
	/*
	 * On disk: copied.  (The stand-in offers no arena, so the engine
	 * lends nothing and lend_until does not hold the copy back; the
	 * lending path is test_engine.py's
	 * test_a_cold_sequential_read_is_copied_from_the_engines_memory_byte_exact.)
	 */
	cached(bc, two, 0);
	assert_false(bfs_engine_lends(bc->engine));
	bfs_read_plan(bc, two, reader, true, 4096, 4096, &p);
	assert_int_equal(p.way, BFS_READ_CACHED);
	assert_int_equal(p.fallback, BFS_READ_ENGINE);
	assert_true(p.engine);

	/* A large object's first miss asks for a claim. */
	big = opened(bc, "big.bin", 96 * MiB);
	bfs_read_plan(bc, big, reader, true, 0, MiB, &p);
	assert_int_equal(p.way, BFS_READ_CLAIM);
	assert_true(p.engine);
	assert_int_equal(p.ahead_n, 64);
	/* Planning fetched nothing. */
	assert_int_equal(test_share_s3_requests(bc), 0);
	test_engine_stop(bc, engine);
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(
			test_a_read_is_planned_from_the_cache_the_engine_or_here),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
