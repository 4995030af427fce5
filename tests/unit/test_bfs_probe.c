/*
 * Why a bucket cannot be served: each cause, word for word (the
 * integration tests grep these sentences in smbd's log), and the S3
 * answers that lead to them.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "bfs_probe.h"
#include "s3_client.h"

static void test_each_cause(void **state)
{
	(void)state;
	assert_string_equal(bfs_probe_cause(EACCES),
			    "the S3 server refused the credentials");
	assert_string_equal(bfs_probe_cause(ENOENT),
			    "the bucket does not exist");
	assert_string_equal(bfs_probe_cause(ECONNREFUSED),
			    "the S3 endpoint is unreachable");
	assert_string_equal(bfs_probe_cause(EHOSTUNREACH),
			    "the S3 endpoint is unreachable");
	assert_string_equal(bfs_probe_cause(ETIMEDOUT),
			    "the S3 endpoint is unreachable");
	assert_string_equal(bfs_probe_cause(ECONNRESET),
			    "the S3 endpoint is unreachable");
	assert_string_equal(bfs_probe_cause(EPROTO),
			    "TLS with the S3 endpoint failed");
	assert_string_equal(bfs_probe_cause(ENXIO),
			    "the bucket is in another region or needs "
			    "another endpoint");
	/* Anything else is the server's error, shown after the cause. */
	assert_string_equal(bfs_probe_cause(EIO),
			    "the S3 server answered with an error");
	assert_string_equal(bfs_probe_cause(EBUSY),
			    "the S3 server answered with an error");
	assert_string_equal(bfs_probe_cause(EINVAL),
			    "the S3 server answered with an error");
	assert_string_equal(bfs_probe_cause(0),
			    "the S3 server answered with an error");
}

/* S3's answers as the client maps them, then as the probe tells them. */
static void test_s3_answers(void **state)
{
	static const struct {
		const char *code;
		long http;
		const char *cause;
	} cases[] = {
		{"SignatureDoesNotMatch", 403, "refused the credentials"},
		{"InvalidAccessKeyId", 403, "refused the credentials"},
		{"AccessDenied", 403, "refused the credentials"},
		{"ExpiredToken", 400, "refused the credentials"},
		{NULL, 403, "refused the credentials"},	/* a HEAD: no body */
		{"NoSuchBucket", 404, "the bucket does not exist"},
		{NULL, 404, "the bucket does not exist"},
		{"PermanentRedirect", 301, "in another region"},
		{"AuthorizationHeaderMalformed", 400, "in another region"},
		{NULL, 301, "in another region"},
		{NULL, 307, "in another region"},
		{"InternalError", 500, "answered with an error"},
		{"SlowDown", 503, "answered with an error"},
		{"InvalidBucketName", 400, "answered with an error"},
		{"RequestTimeout", 400, "the S3 endpoint is unreachable"},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *cause = bfs_probe_cause(
			s3_errno_from_code(cases[i].code, cases[i].http));

		if (strstr(cause, cases[i].cause) == NULL) {
			fail_msg("%s/%ld: '%s', not '%s'",
				 cases[i].code ? cases[i].code : "-",
				 cases[i].http, cause, cases[i].cause);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_each_cause),
		cmocka_unit_test(test_s3_answers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
