/*
 * bfs_role_creds: the instance role's credentials the engine hands to
 * smbd through the cache folder: the text, the file, and the files a
 * reader must refuse.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <talloc.h>

#include "bfs_role_creds.h"
#include "test_tmpdir.h"

#define EP "http://169.254.169.254"

static void write_file(const char *path, const char *text, mode_t mode)
{
	int fd;

	(void)unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
}

static void test_credentials_round_trip_through_the_text(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct s3_credentials in = {"AKIAEXAMPLE", "se/cr+et=", "tok/en=="};
	struct s3_credentials out = {0};
	char *text, *ep = NULL;
	time_t until = 0;

	(void)state;
	text = bfs_role_creds_format(t, EP, &in, 1800000000);
	assert_non_null(text);
	assert_int_equal(bfs_role_creds_parse(t, text, strlen(text), &ep, &out,
					      &until), 0);
	assert_string_equal(ep, EP);
	assert_string_equal(out.access_key, in.access_key);
	assert_string_equal(out.secret_key, in.secret_key);
	assert_string_equal(out.session_token, in.session_token);
	assert_int_equal(until, 1800000000);

	/* Long-term keys have no token: the line is left out. */
	in.session_token = NULL;
	text = bfs_role_creds_format(t, EP, &in, 5);
	assert_non_null(text);
	assert_null(strstr(text, "session_token"));
	assert_int_equal(bfs_role_creds_parse(t, text, strlen(text), &ep, &out,
					      &until), 0);
	assert_null(out.session_token);
	assert_int_equal(until, 5);

	/* A value a line cannot hold is not written. */
	in.secret_key = "two words";
	assert_null(bfs_role_creds_format(t, EP, &in, 5));
	in.secret_key = "";
	assert_null(bfs_role_creds_format(t, EP, &in, 5));
	talloc_free(t);
}

static void test_anything_but_the_written_text_is_refused(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *bad[] = {
		"",
		"bucketfs role credentials 2\nendpoint e\nexpire 1\n"
		"access_key a\nsecret_key s\n",
		/* a line missing, or out of order */
		"bucketfs role credentials 1\nendpoint e\nexpire 1\n"
		"access_key a\n",
		"bucketfs role credentials 1\nexpire 1\nendpoint e\n"
		"access_key a\nsecret_key s\n",
		/* no newline at the end */
		"bucketfs role credentials 1\nendpoint e\nexpire 1\n"
		"access_key a\nsecret_key s",
		/* numbers: signs, leading zeros, words, too large */
		"bucketfs role credentials 1\nendpoint e\nexpire -1\n"
		"access_key a\nsecret_key s\n",
		"bucketfs role credentials 1\nendpoint e\nexpire 01\n"
		"access_key a\nsecret_key s\n",
		"bucketfs role credentials 1\nendpoint e\nexpire 1x\n"
		"access_key a\nsecret_key s\n",
		"bucketfs role credentials 1\nendpoint e\n"
		"expire 99999999999999999999\naccess_key a\nsecret_key s\n",
		/* an empty value, a control character, something after */
		"bucketfs role credentials 1\nendpoint e\nexpire 1\n"
		"access_key \nsecret_key s\n",
		"bucketfs role credentials 1\nendpoint e\nexpire 1\n"
		"access_key a\x01\nsecret_key s\n",
		"bucketfs role credentials 1\nendpoint e\nexpire 1\n"
		"access_key a\nsecret_key s\nsession_token t\nmore x\n",
	};
	struct s3_credentials out = {0};
	char *ep = NULL;
	time_t until = 0;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(bfs_role_creds_parse(t, bad[i], strlen(bad[i]),
						      &ep, &out, &until),
				 EINVAL);
	}
	/* A NUL inside a value. */
	{
		const char nul[] = "bucketfs role credentials 1\nendpoint e\n"
				   "expire 1\naccess_key a\0b\nsecret_key s\n";

		assert_int_equal(bfs_role_creds_parse(t, nul, sizeof(nul) - 1,
						      &ep, &out, &until),
				 EINVAL);
	}
	talloc_free(t);
}

static void test_the_file_is_saved_whole_and_read_for_its_endpoint(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	char *dir = test_tmpdir(t, "rolecreds");
	char *path = talloc_asprintf(t, "%s/" BFS_ROLE_CREDS_FILE, dir);
	struct s3_credentials in = {"AK1", "SK1", "TOK1"}, out = {0};
	time_t until = 0;
	struct stat st;

	(void)state;
	assert_non_null(dir);
	assert_int_equal(bfs_role_creds_load(t, dir, EP, &out, &until), ENOENT);
	assert_int_equal(bfs_role_creds_save(dir, EP, &in, 100), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(bfs_role_creds_load(t, dir, EP, &out, &until), 0);
	assert_string_equal(out.access_key, "AK1");
	assert_string_equal(out.session_token, "TOK1");
	assert_int_equal(until, 100);

	/* Replaced whole by the next refresh. */
	in.access_key = "AK2";
	in.session_token = NULL;
	assert_int_equal(bfs_role_creds_save(dir, EP, &in, 200), 0);
	assert_int_equal(bfs_role_creds_load(t, dir, EP, &out, &until), 0);
	assert_string_equal(out.access_key, "AK2");
	assert_null(out.session_token);
	assert_int_equal(until, 200);

	/* Another metadata endpoint's are not ours. */
	assert_int_equal(bfs_role_creds_load(t, dir, "http://other", &out,
					     &until), ESRCH);
	talloc_free(t);
}

static void test_a_file_others_may_read_or_write_or_a_link_is_refused(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	char *dir = test_tmpdir(t, "rolecreds");
	char *path = talloc_asprintf(t, "%s/" BFS_ROLE_CREDS_FILE, dir);
	char *real = talloc_asprintf(t, "%s/real", dir);
	struct s3_credentials in = {"AK", "SK", NULL}, out = {0};
	char *text = bfs_role_creds_format(t, EP, &in, 100);
	time_t until = 0;

	(void)state;
	assert_non_null(text);
	write_file(path, text, 0644);
	assert_int_equal(bfs_role_creds_load(t, dir, EP, &out, &until), EPERM);
	write_file(path, text, 0620);
	assert_int_equal(bfs_role_creds_load(t, dir, EP, &out, &until), EPERM);
	write_file(path, text, 0600);
	assert_int_equal(bfs_role_creds_load(t, dir, EP, &out, &until), 0);

	/* A symbolic link, even to a good file. */
	write_file(real, text, 0600);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(symlink(real, path), 0);
	assert_int_equal(bfs_role_creds_load(t, dir, EP, &out, &until), EPERM);

	/* Malformed. */
	assert_int_equal(unlink(path), 0);
	write_file(path, "bucketfs role credentials 1\n", 0600);
	assert_int_equal(bfs_role_creds_load(t, dir, EP, &out, &until), EINVAL);
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_credentials_round_trip_through_the_text),
		cmocka_unit_test(test_anything_but_the_written_text_is_refused),
		cmocka_unit_test(test_the_file_is_saved_whole_and_read_for_its_endpoint),
		cmocka_unit_test(test_a_file_others_may_read_or_write_or_a_link_is_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
