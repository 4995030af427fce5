/* A file's times and DOS attributes as S3 user metadata (lib/bfs_meta.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "bfs_fileinfo.h"
#include "bfs_meta.h"

static void time_round_trip(time_t sec, long nsec, const char *want)
{
	struct timespec t = {.tv_sec = sec, .tv_nsec = nsec}, back;
	char buf[32];

	bfs_meta_format_time(&t, buf, sizeof(buf));
	assert_string_equal(buf, want);
	assert_true(bfs_meta_parse_time(buf, &back));
	assert_int_equal(back.tv_sec, sec);
	assert_int_equal(back.tv_nsec, nsec);
}

static void test_times_are_written_as_rclone_writes_them(void **state)
{
	(void)state;
	time_round_trip(1700000000, 123456789, "1700000000.123456789");
	time_round_trip(0, 0, "0.000000000");
	time_round_trip(1, 1, "1.000000001");
	/* Before 1970 (smbtorture sets 1968 and -1): the same decimal. */
	time_round_trip(-1, 0, "-1.000000000");
	time_round_trip(-2, 500000000, "-1.500000000");
	time_round_trip(-1, 500000000, "-0.500000000");
	time_round_trip(-11644473600LL, 0, "-11644473600.000000000");
}

static void test_times_other_tools_write_are_read(void **state)
{
	struct timespec t;

	(void)state;
	/* s3fs: whole seconds. */
	assert_true(bfs_meta_parse_time("1629385022", &t));
	assert_int_equal(t.tv_sec, 1629385022);
	assert_int_equal(t.tv_nsec, 0);
	/* Fewer fraction digits, and more than nine (dropped). */
	assert_true(bfs_meta_parse_time("5.5", &t));
	assert_int_equal(t.tv_nsec, 500000000);
	assert_true(bfs_meta_parse_time("5.1234567891234", &t));
	assert_int_equal(t.tv_nsec, 123456789);
	/* Not times: refused, so the object shows its LastModified. */
	assert_false(bfs_meta_parse_time("", &t));
	assert_false(bfs_meta_parse_time("-", &t));
	assert_false(bfs_meta_parse_time("1.", &t));
	assert_false(bfs_meta_parse_time(".5", &t));
	assert_false(bfs_meta_parse_time("1e9", &t));
	assert_false(bfs_meta_parse_time(" 1", &t));
	assert_false(bfs_meta_parse_time("1 ", &t));
	assert_false(bfs_meta_parse_time("2021-08-19T15:37:02Z", &t));
	assert_false(bfs_meta_parse_time("99999999999999999999", &t));
	assert_false(bfs_meta_parse_time("1000000000001", &t));
}

static void test_headers_round_trip_and_strangers_are_ignored(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_meta m = {
		.have = BFS_META_MTIME | BFS_META_BTIME | BFS_META_ATTRS,
		.mtime = {.tv_sec = 1700000000, .tv_nsec = 42},
		.btime = {.tv_sec = -5, .tv_nsec = 0},
		.attrs = BFS_ATTR_HIDDEN | BFS_ATTR_ARCHIVE,
	}, back = {0};
	struct s3_kv kv[BFS_META_HEADERS_MAX];
	size_t n, i;

	(void)state;
	assert_int_equal(bfs_meta_to_headers(t, &m, kv, &n), 0);
	assert_int_equal(n, 3);
	assert_string_equal(kv[0].name, "x-amz-meta-mtime");
	assert_string_equal(kv[0].value, "1700000000.000000042");
	assert_string_equal(kv[2].name, "x-amz-meta-dosattrib");
	assert_string_equal(kv[2].value, "0x22");
	for (i = 0; i < n; i++) {
		assert_true(bfs_meta_parse_header(&back, kv[i].name, kv[i].value));
	}
	assert_true(bfs_meta_equal(&back, &m));

	/* Names in any case (S3 lowercases them); unknown bits dropped. */
	back = (struct bfs_meta){0};
	assert_true(bfs_meta_parse_header(&back, "X-Amz-Meta-DosAttrib", "0x8021"));
	assert_int_equal(back.attrs, BFS_ATTR_READONLY | BFS_ATTR_ARCHIVE);
	assert_false(bfs_meta_parse_header(&back, "x-amz-meta-dosattrib", "33"));
	assert_false(bfs_meta_parse_header(&back, "x-amz-meta-dosattrib", "0x"));
	assert_false(bfs_meta_parse_header(&back, "x-amz-meta-dosattrib", "0x-1"));
	assert_false(bfs_meta_parse_header(&back, "x-amz-meta-dosattrib", "0x1zz"));
	assert_false(bfs_meta_parse_header(&back, "x-amz-meta-mtime", "yesterday"));
	assert_false(bfs_meta_parse_header(&back, "x-amz-meta-owner", "root"));
	assert_int_equal(back.have, BFS_META_ATTRS);

	/* Nothing kept: nothing sent. */
	back = (struct bfs_meta){0};
	assert_int_equal(bfs_meta_to_headers(t, &back, kv, &n), 0);
	assert_int_equal(n, 0);
	talloc_free(t);
}

static void test_what_a_client_sees_without_and_with_kept_values(void **state)
{
	struct bfs_meta none = {0};
	struct bfs_meta kept = {.have = BFS_META_MTIME | BFS_META_ATTRS,
				.mtime = {.tv_sec = 7, .tv_nsec = 8},
				.attrs = BFS_ATTR_SYSTEM};
	struct timespec mt, bt;

	(void)state;
	/* An object nobody set anything on: LastModified, ARCHIVE. */
	bfs_fileinfo_times(&none, 100, 55, &mt, &bt);
	assert_int_equal(mt.tv_sec, 100);
	assert_int_equal(bt.tv_sec, 100);
	bfs_fileinfo_times(&none, -1, 55, &mt, &bt); /* a common prefix */
	assert_int_equal(mt.tv_sec, 55);
	assert_int_equal(bfs_fileinfo_attrs(&none, false, true), BFS_ATTR_ARCHIVE);
	assert_int_equal(bfs_fileinfo_attrs(&none, true, true), 0);
	assert_int_equal(bfs_fileinfo_attrs(&none, false, false),
			 BFS_ATTR_ARCHIVE | BFS_ATTR_READONLY);
	/* Kept: shown as kept, the create time follows the write time. */
	bfs_fileinfo_times(&kept, 100, 55, &mt, &bt);
	assert_int_equal(mt.tv_sec, 7);
	assert_int_equal(mt.tv_nsec, 8);
	assert_int_equal(bt.tv_sec, 7);
	assert_int_equal(bfs_fileinfo_attrs(&kept, false, true), BFS_ATTR_SYSTEM);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_times_are_written_as_rclone_writes_them),
		cmocka_unit_test(test_times_other_tools_write_are_read),
		cmocka_unit_test(test_headers_round_trip_and_strangers_are_ignored),
		cmocka_unit_test(test_what_a_client_sees_without_and_with_kept_values),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
