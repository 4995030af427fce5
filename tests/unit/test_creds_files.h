/*
 * Shared by the credential tests (test_s3_creds, test_bfs_creds): files
 * written as an admin would, and an environment without AWS_* variables.
 * Include after cmocka.h and talloc.h.
 */
#ifndef BUCKETFS_TEST_CREDS_FILES_H
#define BUCKETFS_TEST_CREDS_FILES_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static const char *write_file(TALLOC_CTX *t, const char *dir,
			      const char *name, const char *text, mode_t mode)
{
	char *path = talloc_asprintf(t, "%s/%s", dir, name);
	FILE *f;

	assert_non_null(path);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	assert_int_equal(chmod(path, mode), 0);
	return path;
}

static void clear_env(void)
{
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	unsetenv("AWS_SESSION_TOKEN");
	unsetenv("AWS_SHARED_CREDENTIALS_FILE");
	unsetenv("AWS_PROFILE");
}

#endif
