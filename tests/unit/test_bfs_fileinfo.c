/*
 * lib/bfs_fileinfo: times and attributes a client sets through the share.
 * No S3 server: the share's endpoint refuses connections, so each test
 * also shows that setting times or attributes asks nothing of S3.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <string.h>
#include <cmocka.h>

#include "test_share.h"

#include "bfs_file.h"
#include "bfs_fileinfo.h"

/*
 * A file made through the share has equal create and write times, to the
 * nanosecond; a client's SETINFO of both is kept, seen by an open handle
 * of the same connection at once and by a new lookup (another process
 * reads the same index), and changes nothing else.
 */
static void test_set_times_are_seen_by_open_handles_and_new_lookups(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = test_share_new(t);
	struct bfs_fh *fh = NULL, *reader = NULL;
	struct bfs_meta m, set = {
		.have = BFS_META_MTIME | BFS_META_BTIME,
		.mtime = {.tv_sec = 1015218367, .tv_nsec = 765432100},
		.btime = {.tv_sec = -1, .tv_nsec = 0},
	};

	(void)state;
	assert_non_null(bc);
	assert_int_equal(bfs_fh_open(bc, "new.txt", O_WRONLY | O_CREAT, false, &fh), 0);
	assert_int_equal(bfs_fileinfo_get(bc, "new.txt", &m), 0);
	assert_int_equal(m.have, BFS_META_MTIME | BFS_META_BTIME);
	assert_int_equal(m.mtime.tv_sec, m.btime.tv_sec);
	assert_int_equal(m.mtime.tv_nsec, m.btime.tv_nsec);
	assert_int_equal(bfs_fh_lookup(t, bc, "new.txt", &reader), 0);

	assert_int_equal(bfs_fileinfo_set(bc, "new.txt", &set, set.have), 0);
	assert_true(bfs_meta_equal(bfs_fh_meta(reader), &set));
	assert_true(bfs_meta_equal(bfs_fh_meta(fh), &set));
	assert_int_equal(bfs_fileinfo_get(bc, "new.txt", &m), 0);
	assert_true(bfs_meta_equal(&m, &set));

	/* Attributes alone: the times stay. */
	set = (struct bfs_meta){.have = BFS_META_ATTRS, .attrs = BFS_ATTR_HIDDEN};
	assert_int_equal(bfs_fileinfo_set(bc, "new.txt", &set, set.have), 0);
	assert_int_equal(bfs_fileinfo_get(bc, "new.txt", &m), 0);
	assert_int_equal(m.have, BFS_META_MTIME | BFS_META_BTIME | BFS_META_ATTRS);
	assert_int_equal(m.mtime.tv_sec, 1015218367);
	assert_int_equal(bfs_fileinfo_attrs(&m, false, true), BFS_ATTR_HIDDEN);

	/* A folder's (attrib +h on a directory). */
	assert_int_equal(test_share_mkdir(bc, "", "d"), 0);
	assert_int_equal(bfs_fileinfo_set(bc, "d", &set, set.have), 0);
	assert_int_equal(bfs_fileinfo_get(bc, "d", &m), 0);
	assert_int_equal(bfs_fileinfo_attrs(&m, true, true), BFS_ATTR_HIDDEN);

	/* Nothing named, the root, a name that is not there. */
	assert_int_equal(bfs_fileinfo_set(bc, "new.txt", &set, BFS_META_MTIME), 0);
	assert_int_equal(bfs_fileinfo_set(bc, "", &set, set.have), 0);
	assert_int_equal(bfs_fileinfo_set(bc, "nothere", &set, set.have), ENOENT);
	assert_int_equal(bfs_fileinfo_get(bc, "nothere", &m), ENOENT);
	assert_int_equal(m.have, 0);
	assert_int_equal(test_share_s3_requests(bc), 0);
	talloc_free(t);
}

int main(void)
{
	(void)test_engine_start; /* test_share.h's, for other tests */
	(void)test_engine_stop;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_set_times_are_seen_by_open_handles_and_new_lookups),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
