/* S3 key components as SMB names (the SFM private-use mapping) and back. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "bfs_name.h"

static void round_trip(const char *s3, const char *want_smb)
{
	TALLOC_CTX *t = talloc_new(NULL);
	char *smb = bfs_path_to_smb(t, s3), *back;

	assert_non_null(smb);
	assert_string_equal(smb, want_smb);
	back = bfs_path_to_s3(t, smb);
	assert_non_null(back);
	assert_string_equal(back, s3);
	talloc_free(t);
}

static void test_plain_names_are_unchanged(void **state)
{
	(void)state;
	round_trip("train-0001.tar", "train-0001.tar");
	round_trip("résumé ünïcode 日本", "résumé ünïcode 日本");
	round_trip("a.b c", "a.b c");
	round_trip("...x", "...x");
}

static void test_characters_smb_refuses_are_carried(void **state)
{
	(void)state;
	round_trip("a:b", "a\xef\x80\xa2"
			  "b");
	round_trip("\"*:<>?\\|",
		   "\xef\x80\xa0\xef\x80\xa1\xef\x80\xa2\xef\x80\xa3"
		   "\xef\x80\xa4\xef\x80\xa5\xef\x80\xa6\xef\x80\xa7");
	round_trip("tab\there", "tab\xef\x80\x89here");
	round_trip("\x01\x1f", "\xef\x80\x81\xef\x80\x9f");
	/* Only a final dot or space; inner ones are fine in SMB. */
	round_trip("end.", "end\xef\x80\xa9");
	round_trip("end ", "end\xef\x80\xa8");
	round_trip("a. b", "a. b");
	round_trip("...", "..\xef\x80\xa9");
	round_trip(" ", "\xef\x80\xa8");
}

static void test_names_that_cannot_be_carried_are_refused(void **state)
{
	(void)state;
	char buf[BFS_NAME_MAX + 1], long_name[300];

	assert_non_null(bfs_name_problem(""));
	assert_non_null(bfs_name_problem("."));
	assert_non_null(bfs_name_problem(".."));
	assert_non_null(bfs_name_problem("bad\xff"));
	assert_non_null(bfs_name_problem("\xc0\xaf"));		/* overlong "/" */
	assert_non_null(bfs_name_problem("\xed\xa0\x80"));	/* a surrogate */
	assert_non_null(bfs_name_problem("cut\xe6\x97"));	/* truncated */
	/* It would come back as "a:b", another key. */
	assert_non_null(bfs_name_problem("a\xef\x80\xa2"
					 "b"));
	assert_int_equal(bfs_name_to_smb_buf("bad\xff", buf, sizeof(buf)),
			 EINVAL);

	memset(long_name, 'x', 255);
	long_name[255] = '\0';
	assert_null(bfs_name_problem(long_name));
	/* 254 bytes and a final dot: 257 bytes as a name. */
	long_name[254] = '.';
	assert_non_null(bfs_name_problem(long_name));
	memset(long_name, 'x', 256);
	long_name[256] = '\0';
	assert_non_null(bfs_name_problem(long_name));
	assert_int_equal(bfs_name_to_smb_buf("abc", buf, 3), ENAMETOOLONG);
}

static void test_paths_map_per_component(void **state)
{
	(void)state;
	TALLOC_CTX *t = talloc_new(NULL);
	char *smb = bfs_path_to_smb(t, "dir./a:b/c ");

	assert_non_null(smb);
	assert_string_equal(smb, "dir\xef\x80\xa9/a\xef\x80\xa2"
				 "b/c\xef\x80\xa8");
	assert_string_equal(bfs_path_to_s3(t, smb), "dir./a:b/c ");
	assert_string_equal(bfs_path_to_smb(t, ""), "");
	errno = 0;
	assert_null(bfs_path_to_smb(t, "ok/../x"));
	assert_int_equal(errno, EINVAL);
	talloc_free(t);
}

/* What a client sends that is no key's SMB form is refused, not guessed. */
static void refused(const char *smb, int want)
{
	TALLOC_CTX *t = talloc_new(NULL);

	errno = 0;
	assert_null(bfs_path_to_s3(t, smb));
	assert_int_equal(errno, want);
	talloc_free(t);
}

static void test_names_decode_only_where_the_mapping_puts_them(void **state)
{
	(void)state;
	/* "\uF029\uF029/x" once decoded anywhere was the key "../x". */
	refused("\xef\x80\xa9\xef\x80\xa9/x", EINVAL);
	refused("a/\xef\x80\xa9\xef\x80\xa9", EINVAL);
	refused("\xef\x80\xa9", EINVAL);		/* "." */
	refused("\xef\x80\xa9/x", EINVAL);
	/* "a\uF029exe" was "a.exe", past smbd's veto files. */
	refused("a\xef\x80\xa9" "exe", EINVAL);
	refused("a\xef\x80\xa8" "b", EINVAL);	/* an inner U+F028 */
	/* Raw characters the mapping would have carried. */
	refused("end.", EINVAL);
	refused("dir./x", EINVAL);
	refused("a\x01", EINVAL);
	refused("bad\xff", EINVAL);
	/* An empty component. */
	refused("a//b", EINVAL);
	refused("a/", EINVAL);
	{
		char long_name[300];

		memset(long_name, 'x', 256);
		long_name[256] = '\0';
		refused(long_name, ENAMETOOLONG);
	}
	/* A final mapped dot or space still decodes; the root is "". */
	{
		TALLOC_CTX *t = talloc_new(NULL);

		assert_string_equal(bfs_path_to_s3(t, ""), "");
		assert_string_equal(bfs_path_to_s3(t, "d\xef\x80\xa9/e"), "d./e");
		talloc_free(t);
	}
}

static void test_log_form_escapes_what_a_terminal_would_eat(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	char long_name[400];

	(void)state;
	assert_string_equal(bfs_name_printable(t, "a\x01\xff\\b é"),
			    "a\\x01\\xff\\x5cb é");
	memset(long_name, 'y', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	assert_int_equal(strlen(bfs_name_printable(t, long_name)), 203);
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain_names_are_unchanged),
		cmocka_unit_test(test_characters_smb_refuses_are_carried),
		cmocka_unit_test(test_names_that_cannot_be_carried_are_refused),
		cmocka_unit_test(test_paths_map_per_component),
		cmocka_unit_test(test_names_decode_only_where_the_mapping_puts_them),
		cmocka_unit_test(test_log_form_escapes_what_a_terminal_would_eat),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
