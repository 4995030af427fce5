/* What the upload engine computes without a server: multipart ETags. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "bfs_upload.h"

/* Parts "a" and "b": their MD5s, and S3's ETag of the object made of them. */
static void test_multipart_etag(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const struct s3_part parts[] = {
		{1, "0cc175b9c0f1b6a831c399e269772661", NULL},
		{2, "92EB5FFEE6AE2FEC3AD71C777531578F", NULL},
	};
	char *etag;

	(void)state;
	etag = bfs_multipart_etag(t, parts, 2);
	assert_non_null(etag);
	assert_string_equal(etag, "96e024ba2074fe77e8e965ba43a704be-2");
	etag = bfs_multipart_etag(t, parts, 1);
	assert_non_null(etag);
	/* One part: the MD5 of that MD5, not the part's own. */
	assert_string_equal(etag, "b6ff9a06b7e20bcb2858c5b8ff744aea-1");
	talloc_free(t);
}

static void test_multipart_etag_refuses_what_is_not_md5(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const struct s3_part kms[] = {{1, "not-an-md5", NULL}};
	const struct s3_part short_hex[] = {{1, "0cc175b9c0f1b6a831c399e26977266", NULL}};
	const struct s3_part missing[] = {{1, NULL, NULL}};

	(void)state;
	assert_null(bfs_multipart_etag(t, kms, 1));
	assert_null(bfs_multipart_etag(t, short_hex, 1));
	assert_null(bfs_multipart_etag(t, missing, 1));
	assert_null(bfs_multipart_etag(t, kms, 0));
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_multipart_etag),
		cmocka_unit_test(test_multipart_etag_refuses_what_is_not_md5),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
