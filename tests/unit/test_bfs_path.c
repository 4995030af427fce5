/* A share's paths and keys: normalisation, refusals, the name mapping. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "bfs_log.h"
#include "bfs_path.h"
#include "s3_dirlist.h"

#define SHARE "/srv/share"

/* The last line lib logged, to check refusals word for word. */
static char last_line[1024];

static void keep_line(int level, const char *line)
{
	(void)level;
	snprintf(last_line, sizeof(last_line), "%s", line);
}

static void test_normalise(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	static const char *const cases[][2] = {
		{"/", "/"},
		{"//", "/"},
		{"/.", "/"},
		{"/..", "/"},
		{"/../..", "/"},
		{"/a", "/a"},
		{"/a/", "/a"},
		{"//a//b//", "/a/b"},
		{"/a/./b/.", "/a/b"},
		{"/a/../b", "/b"},
		{"/a/b/../../..", "/"},
		{"/a/b/../../../c", "/c"},
		{"/a/..b/.c/...", "/a/..b/.c/..."},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_string_equal(bfs_path_normalise(t, cases[i][0]),
				    cases[i][1]);
	}
	talloc_free(t);
}

static void test_rel_of_abs(void **state)
{
	(void)state;
	assert_string_equal(bfs_path_rel_of_abs(SHARE, SHARE), "");
	assert_string_equal(bfs_path_rel_of_abs(SHARE, SHARE "/a/b"), "a/b");
	/* A name that only starts like the share is not in it. */
	assert_null(bfs_path_rel_of_abs(SHARE, SHARE "x"));
	assert_null(bfs_path_rel_of_abs(SHARE, SHARE "x/a"));
	assert_null(bfs_path_rel_of_abs(SHARE, "/srv"));
	assert_null(bfs_path_rel_of_abs(SHARE, "/etc/passwd"));
	/* A share of "/" holds every path. */
	assert_string_equal(bfs_path_rel_of_abs("/", "/"), "");
	assert_string_equal(bfs_path_rel_of_abs("/", "/etc/passwd"),
			    "etc/passwd");
}

static void test_share_prefix(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);

	(void)state;
	assert_string_equal(bfs_path_share_prefix(t, ""), "");
	assert_string_equal(bfs_path_share_prefix(t, "/"), "");
	assert_string_equal(bfs_path_share_prefix(t, "///"), "");
	assert_string_equal(bfs_path_share_prefix(t, "data"), "data/");
	assert_string_equal(bfs_path_share_prefix(t, "data/"), "data/");
	assert_string_equal(bfs_path_share_prefix(t, "/data"), "data/");
	assert_string_equal(bfs_path_share_prefix(t, "//a/b"), "a/b/");
	/* Only leading slashes go: a key prefix is S3's, taken as written. */
	assert_string_equal(bfs_path_share_prefix(t, "a//"), "a//");
	talloc_free(t);
}

static void test_keys(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);

	(void)state;
	assert_string_equal(bfs_path_key(t, "", "a/b"), "a/b");
	assert_string_equal(bfs_path_key(t, "p/", "a/b"), "p/a/b");
	assert_string_equal(bfs_path_key(t, "p/", ""), "p/");
	/* The root lists the prefix itself; a folder lists "folder/". */
	assert_string_equal(bfs_path_dir_prefix(t, "", ""), "");
	assert_string_equal(bfs_path_dir_prefix(t, "p/", ""), "p/");
	assert_string_equal(bfs_path_dir_prefix(t, "", "a"), "a/");
	assert_string_equal(bfs_path_dir_prefix(t, "p/", "a/b"), "p/a/b/");
	talloc_free(t);
}

static void test_split(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *base = NULL;
	char *parent = NULL;

	(void)state;
	bfs_path_split(t, "a", &parent, &base);
	assert_string_equal(parent, "");
	assert_string_equal(base, "a");
	bfs_path_split(t, "a/b/c", &parent, &base);
	assert_string_equal(parent, "a/b");
	assert_string_equal(base, "c");
	bfs_path_split(t, "", &parent, &base);
	assert_string_equal(parent, "");
	assert_string_equal(base, "");
	talloc_free(t);
}

/* rel of name in the share SHARE (prefix "p/") with cwd and dir. */
static int resolve(TALLOC_CTX *t, const char *cwd, const char *dir,
		   const char *name, char **rel)
{
	last_line[0] = '\0';
	return bfs_path_resolve(t, "s", SHARE, cwd, "p/", dir, name, rel);
}

static void test_resolve_relative(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	char *rel = NULL;

	(void)state;
	assert_int_equal(resolve(t, SHARE, NULL, "a/b", &rel), 0);
	assert_string_equal(rel, "a/b");
	assert_int_equal(resolve(t, SHARE, NULL, ".", &rel), 0);
	assert_string_equal(rel, "");
	assert_int_equal(resolve(t, SHARE, NULL, "./a//b/./", &rel), 0);
	assert_string_equal(rel, "a/b");
	assert_int_equal(resolve(t, SHARE, NULL, "a/../b", &rel), 0);
	assert_string_equal(rel, "b");
	/* ".." at the share root stays there, as at a chroot's root. */
	assert_int_equal(resolve(t, SHARE, NULL, "..", &rel), 0);
	assert_string_equal(rel, "");
	assert_int_equal(resolve(t, SHARE, NULL, "../../etc/passwd", &rel),
			 0);
	assert_string_equal(rel, "etc/passwd");
	/* From a working folder below the root, and from an open folder. */
	assert_int_equal(resolve(t, SHARE "/sub", NULL, "x", &rel), 0);
	assert_string_equal(rel, "sub/x");
	assert_int_equal(resolve(t, SHARE "/sub", NULL, "../x", &rel), 0);
	assert_string_equal(rel, "x");
	assert_int_equal(resolve(t, SHARE "/sub", NULL, "../../../x", &rel),
			 0);
	assert_string_equal(rel, "x");
	assert_int_equal(resolve(t, SHARE, "d", "f", &rel), 0);
	assert_string_equal(rel, "d/f");
	assert_int_equal(resolve(t, SHARE "/sub", "d", "../f", &rel), 0);
	assert_string_equal(rel, "sub/f");
	assert_string_equal(last_line, "");
	talloc_free(t);
}

static void test_resolve_absolute(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	char *rel = NULL;

	(void)state;
	assert_int_equal(resolve(t, SHARE, NULL, SHARE, &rel), 0);
	assert_string_equal(rel, "");
	assert_int_equal(resolve(t, SHARE, NULL, SHARE "/a/b", &rel), 0);
	assert_string_equal(rel, "a/b");
	assert_int_equal(resolve(t, SHARE "/sub", NULL, SHARE "//a/./b/",
				 &rel), 0);
	assert_string_equal(rel, "a/b");
	/* Normalised first: a detour out and back in is inside. */
	assert_int_equal(resolve(t, SHARE, NULL, SHARE "/../share/a", &rel),
			 0);
	assert_string_equal(rel, "a");
	/* An absolute open folder: the name is below it. */
	assert_int_equal(resolve(t, SHARE, SHARE "/d", "f", &rel), 0);
	assert_string_equal(rel, "d/f");
	assert_string_equal(last_line, "");

	/* Outside the share: refused, with a line naming both. */
	rel = (char *)"untouched";
	assert_int_equal(resolve(t, SHARE, NULL, "/etc/passwd", &rel),
			 EACCES);
	assert_null(rel);
	assert_string_equal(last_line, "bucketfs: /etc/passwd is outside "
			    "share " SHARE);
	assert_int_equal(resolve(t, SHARE, NULL, SHARE "x/a", &rel), EACCES);
	assert_int_equal(resolve(t, SHARE, NULL, SHARE "/../other", &rel),
			 EACCES);
	assert_string_equal(last_line, "bucketfs: " SHARE "/../other is "
			    "outside share " SHARE);
	assert_int_equal(resolve(t, SHARE, SHARE, "../x", &rel), EACCES);
	assert_int_equal(resolve(t, SHARE, "/etc", "passwd", &rel), EACCES);
	/* A share of "/" has nothing outside. */
	assert_int_equal(bfs_path_resolve(t, "s", "/", "/", "", NULL,
					  "/etc/../etc/passwd", &rel), 0);
	assert_string_equal(rel, "etc/passwd");
	talloc_free(t);
}

/* Names smbd hands over carry SMB's refused characters mapped (SFM). */
static void test_resolve_mapping(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	char *rel = NULL, *abs;

	(void)state;
	/* "a:b" and a final dot, as a Windows client sees them. */
	assert_int_equal(resolve(t, SHARE, NULL, "d/a\xef\x80\xa2" "b",
				 &rel), 0);
	assert_string_equal(rel, "d/a:b");
	assert_int_equal(resolve(t, SHARE, NULL, "x\xef\x80\xa9", &rel), 0);
	assert_string_equal(rel, "x.");

	/* "\uF029\uF029" decodes to ".." only after ".." was resolved. */
	assert_int_equal(resolve(t, SHARE, NULL, "d/\xef\x80\xa9\xef\x80\xa9",
				 &rel), EINVAL);
	assert_null(rel);
	assert_string_equal(last_line, "bucketfs: share s: refused the name "
			    "d/\xef\x80\xa9\xef\x80\xa9: it is not the SMB "
			    "form of any S3 key");
	/* A mapped dot before the end would slip "a.exe" past smbd. */
	assert_int_equal(resolve(t, SHARE, NULL, "a\xef\x80\xa9" "exe",
				 &rel), EINVAL);
	/* Not UTF-8: no key has that name; shown escaped. */
	assert_int_equal(resolve(t, SHARE, NULL, "bad\xff", &rel), EINVAL);
	assert_string_equal(last_line, "bucketfs: share s: refused the name "
			    "bad\\xff: it is not the SMB form of any S3 key");

	/* The round trip: key -> absolute SMB path -> the same key. */
	abs = bfs_path_abs_of_rel(t, SHARE, "d/a:b/x.");
	assert_non_null(abs);
	assert_string_equal(abs, SHARE "/d/a\xef\x80\xa2" "b/x\xef\x80\xa9");
	assert_int_equal(resolve(t, SHARE, NULL, abs, &rel), 0);
	assert_string_equal(rel, "d/a:b/x.");
	assert_string_equal(bfs_path_abs_of_rel(t, SHARE, ""), SHARE);
	assert_string_equal(bfs_path_abs_of_rel(t, "/", ""), "/");
	assert_string_equal(bfs_path_abs_of_rel(t, "/", "a/b"), "/a/b");
	/* Keys no name carries have no SMB path. */
	errno = 0;
	assert_null(bfs_path_abs_of_rel(t, SHARE, "a/"));
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_null(bfs_path_abs_of_rel(t, SHARE, "a/\xef\x80\xa2"));
	assert_int_equal(errno, EINVAL);
	talloc_free(t);
}

static void test_resolve_too_long(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	char name[600], *rel = NULL;
	size_t fit;

	(void)state;
	/* One component over 255 bytes is no name. */
	memset(name, 'n', 256);
	name[256] = '\0';
	assert_int_equal(resolve(t, SHARE, NULL, name, &rel), ENAMETOOLONG);
	assert_true(strstr(last_line, ": a component is too long") != NULL);

	/* prefix + path + 1 must fit an index key (with "p/": 2 bytes). */
	fit = S3_DIR_KEY_MAX - 2 - 1;
	memset(name, 'a', fit);
	for (size_t i = 200; i < fit; i += 200) {
		name[i] = '/';
	}
	name[fit] = '\0';
	assert_int_equal(resolve(t, SHARE, NULL, name, &rel), 0);
	assert_int_equal(strlen(rel), fit);
	name[fit] = 'a';
	name[fit + 1] = '\0';
	assert_int_equal(resolve(t, SHARE, NULL, name, &rel), ENAMETOOLONG);
	assert_null(rel);
	assert_string_equal(last_line, "bucketfs: share s: refused a path of "
			    "509 bytes: longer than the index holds (511 "
			    "with the share's prefix)");
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_normalise),
		cmocka_unit_test(test_rel_of_abs),
		cmocka_unit_test(test_share_prefix),
		cmocka_unit_test(test_keys),
		cmocka_unit_test(test_split),
		cmocka_unit_test(test_resolve_relative),
		cmocka_unit_test(test_resolve_absolute),
		cmocka_unit_test(test_resolve_mapping),
		cmocka_unit_test(test_resolve_too_long),
	};

	bfs_log_set(keep_line);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
