/* The AWS credential chain: file, environment, shared file, ~/.aws. */
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

#include "s3_creds.h"

#include "test_creds_files.h"

static const char profiles[] =
	"# comment\n"
	"[default]\n"
	"aws_access_key_id = DEFAULTKEY\n"
	"aws_secret_access_key = defaultsecret\n"
	"\n"
	"[train]\n"
	"aws_access_key_id=TRAINKEY\n"
	"aws_secret_access_key=trainsecret\n"
	"aws_session_token = traintoken\n"
	"[half]\n"
	"aws_access_key_id = ONLYKEY\n";

static void test_chain_order(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *dir = test_tmpdir(t, "s3-creds-test");
	const char *file, *env_file, *source = NULL, *why = NULL;
	struct s3_credentials c;
	char *home;

	(void)state;
	clear_env();
	file = write_file(t, dir, "share-creds", profiles, 0600);
	env_file = write_file(t, dir, "env-creds",
			      "[default]\naws_access_key_id = ENVFILEKEY\n"
			      "aws_secret_access_key = envfilesecret\n", 0600);
	home = talloc_asprintf(t, "%s/home", dir);
	assert_int_equal(mkdir(home, 0700), 0);
	assert_int_equal(mkdir(talloc_asprintf(t, "%s/.aws", home), 0700), 0);
	write_file(t, home, ".aws/credentials",
		   "[default]\naws_access_key_id = HOMEKEY\n"
		   "aws_secret_access_key = homesecret\n"
		   "[train]\naws_access_key_id = HOMETRAIN\n"
		   "aws_secret_access_key = hometrainsecret\n", 0600);

	/* 4. nothing else: ~/.aws/credentials, AWS_PROFILE honoured */
	assert_int_equal(s3_creds_resolve(t, NULL, NULL, home, &c, &source,
					  &why), 0);
	assert_string_equal(c.access_key, "HOMEKEY");
	assert_non_null(strstr(source, "/home/.aws/credentials"));
	setenv("AWS_PROFILE", "train", 1);
	assert_int_equal(s3_creds_resolve(t, NULL, NULL, home, &c, &source,
					  &why), 0);
	assert_string_equal(c.access_key, "HOMETRAIN");
	unsetenv("AWS_PROFILE");
	/* 3. AWS_SHARED_CREDENTIALS_FILE comes before the home file */
	setenv("AWS_SHARED_CREDENTIALS_FILE", env_file, 1);
	assert_int_equal(s3_creds_resolve(t, NULL, NULL, home, &c, &source,
					  &why), 0);
	assert_string_equal(c.access_key, "ENVFILEKEY");
	/* 2. keys in the environment come before both */
	setenv("AWS_ACCESS_KEY_ID", "ENVKEY", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
	assert_int_equal(s3_creds_resolve(t, NULL, NULL, home, &c, &source,
					  &why), 0);
	assert_string_equal(c.access_key, "ENVKEY");
	assert_string_equal(c.secret_key, "envsecret");
	assert_null(c.session_token);
	/* 1. the share's file with its profile comes first */
	assert_int_equal(s3_creds_resolve(t, file, "train", home, &c, &source,
					  &why), 0);
	assert_string_equal(c.access_key, "TRAINKEY");
	assert_string_equal(c.secret_key, "trainsecret");
	assert_string_equal(c.session_token, "traintoken");
	assert_string_equal(source, file);
	clear_env();
	talloc_free(t);
}

static void test_errors_say_what_is_wrong(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *dir = test_tmpdir(t, "s3-creds-test");
	const char *file, *source = NULL, *why = NULL;
	struct s3_credentials c;

	(void)state;
	clear_env();
	file = write_file(t, dir, "creds", profiles, 0600);
	assert_int_equal(s3_creds_resolve(t, file, "nosuch", NULL, &c, &source,
					  &why), ESRCH);
	assert_non_null(why);
	assert_int_equal(s3_creds_resolve(t, file, "half", NULL, &c, &source,
					  &why), EINVAL);
	assert_int_equal(s3_creds_resolve(t, talloc_asprintf(t, "%s/none", dir),
					  NULL, NULL, &c, &source, &why),
			 ENOENT);
	/* Nothing anywhere: ENOENT, and the message names the chain. */
	assert_int_equal(s3_creds_resolve(t, NULL, NULL, dir, &c, &source,
					  &why), ENOENT);
	assert_non_null(strstr(why, "~/.aws/credentials"));
	/* A wrong profile in a home file is an error, not a fall-through. */
	setenv("AWS_PROFILE", "nosuch", 1);
	assert_int_equal(mkdir(talloc_asprintf(t, "%s/.aws", dir), 0700), 0);
	write_file(t, dir, ".aws/credentials", profiles, 0600);
	assert_int_equal(s3_creds_resolve(t, NULL, NULL, dir, &c, &source,
					  &why), ESRCH);
	clear_env();
	talloc_free(t);
}

static void test_exposed_file(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *dir = test_tmpdir(t, "s3-creds-test");

	(void)state;
	assert_false(s3_creds_file_is_exposed(
		write_file(t, dir, "private", profiles, 0600)));
	assert_true(s3_creds_file_is_exposed(
		write_file(t, dir, "world", profiles, 0644)));
	assert_true(s3_creds_file_is_exposed(
		write_file(t, dir, "group", profiles, 0640)));
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_chain_order),
		cmocka_unit_test(test_errors_say_what_is_wrong),
		cmocka_unit_test(test_exposed_file),
	};

	return cmocka_run_group_tests_name("s3_creds", tests, NULL, NULL);
}
