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

#include <talloc.h>

#include "bfs_probe.h"
#include "bfs_share.h"
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

/*
 * A proof's tag changes with each thing the probe proved, credentials
 * included, and with nothing else; fields do not run into each other.
 */
static void test_a_tag_changes_with_what_the_probe_proves(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = talloc_zero(t, struct bfs_conn);
	struct s3_client_config *c = &bc->cfg;
	uint8_t base[32], again[32], tag[32];
	const char **fields[] = {
		&c->endpoint, &c->region, &c->bucket, &c->ca_file,
		&c->creds.access_key, &c->creds.secret_key,
		&c->creds.session_token,
	};
	bool *flags[] = {
		&c->path_style, &c->verify_tls, &c->anonymous,
		&c->requester_pays,
	};
	size_t i;

	(void)state;
	c->endpoint = "http://127.0.0.1:9000";
	c->region = "us-east-1";
	c->bucket = "bkt";
	c->verify_tls = true;
	c->creds.access_key = "AKID";
	c->creds.secret_key = "secret";
	bc->prefix = talloc_strdup(bc, "");
	assert_int_equal(bfs_probe_tag(bc, base), 0);
	assert_int_equal(bfs_probe_tag(bc, again), 0);
	assert_memory_equal(base, again, sizeof(base));
	for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
		const char *was = *fields[i];

		*fields[i] = was != NULL ? "other" : "";
		assert_int_equal(bfs_probe_tag(bc, tag), 0);
		assert_memory_not_equal(base, tag, sizeof(base));
		*fields[i] = was;
	}
	for (i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
		*flags[i] = !*flags[i];
		assert_int_equal(bfs_probe_tag(bc, tag), 0);
		assert_memory_not_equal(base, tag, sizeof(base));
		*flags[i] = !*flags[i];
	}
	bc->prefix = talloc_strdup(bc, "sub/");
	assert_int_equal(bfs_probe_tag(bc, tag), 0);
	assert_memory_not_equal(base, tag, sizeof(base));
	/* "bkt" + "sub/" is not "bktsub/" + "". */
	c->bucket = "bktsub/";
	bc->prefix = talloc_strdup(bc, "");
	assert_int_equal(bfs_probe_tag(bc, again), 0);
	assert_memory_not_equal(tag, again, sizeof(tag));
	c->bucket = "bkt";
	/* Other parts of the connection are not what a probe proves. */
	bc->ttl = 99;
	bc->service = "elsewhere";
	assert_int_equal(bfs_probe_tag(bc, tag), 0);
	assert_memory_equal(base, tag, sizeof(base));
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_each_cause),
		cmocka_unit_test(test_s3_answers),
		cmocka_unit_test(test_a_tag_changes_with_what_the_probe_proves),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
