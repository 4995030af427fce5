/*
 * SigV4 against the examples published in AWS's S3 API reference
 * ("Signature Calculations for the Authorization Header: Transferring Payload
 * in a Single Chunk"): access key AKIAIOSFODNN7EXAMPLE, bucket examplebucket,
 * 2013-05-24T00:00:00Z, us-east-1.  The expected signatures are AWS's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "s3_sigv4.h"

static const struct s3_credentials aws_example = {
	.access_key = "AKIAIOSFODNN7EXAMPLE",
	.secret_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
};

#define HOST "examplebucket.s3.amazonaws.com"
#define DATE "20130524T000000Z"

static void check(const struct s3_sigv4_input *in, const char *signed_headers,
		  const char *signature)
{
	TALLOC_CTX *t = talloc_new(NULL);
	char *auth = s3_sigv4_authorization(t, in, &aws_example);
	char *want = talloc_asprintf(
		t,
		"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/"
		"us-east-1/s3/aws4_request,SignedHeaders=%s,Signature=%s",
		signed_headers, signature);

	assert_non_null(auth);
	assert_string_equal(auth, want);
	talloc_free(t);
}

/* "Example: GET Object": a Range header, empty payload. */
static void test_get_object(void **state)
{
	const struct s3_kv h[] = {
		{"Host", HOST},
		{"Range", "bytes=0-9"},
		{"x-amz-content-sha256", S3_EMPTY_SHA256},
		{"x-amz-date", DATE},
	};
	const struct s3_sigv4_input in = {
		.method = "GET", .canonical_uri = "/test.txt",
		.headers = h, .n_headers = 4,
		.payload_sha256 = S3_EMPTY_SHA256,
		.region = "us-east-1", .amz_date = DATE,
	};
	(void)state;
	check(&in, "host;range;x-amz-content-sha256;x-amz-date",
	      "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
}

/* "Example: PUT Object": '$' in the key, a signed payload, extra headers. */
static void test_put_object(void **state)
{
	const char *body = "Welcome to Amazon S3.";
	char hash[65];
	TALLOC_CTX *t = talloc_new(NULL);
	char *uri;

	(void)state;
	s3_sha256_hex(body, strlen(body), hash);
	assert_string_equal(hash, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b"
				  "4b4e99e42034a8b803f8b072");
	uri = talloc_asprintf(t, "/%s", s3_uri_encode(t, "test$file.text", true));
	assert_string_equal(uri, "/test%24file.text");
	{
		const struct s3_kv h[] = {
			{"Date", "Fri, 24 May 2013 00:00:00 GMT"},
			{"Host", HOST},
			{"x-amz-date", DATE},
			{"x-amz-storage-class", "REDUCED_REDUNDANCY"},
			{"x-amz-content-sha256", hash},
		};
		const struct s3_sigv4_input in = {
			.method = "PUT", .canonical_uri = uri,
			.headers = h, .n_headers = 5, .payload_sha256 = hash,
			.region = "us-east-1", .amz_date = DATE,
		};
		check(&in,
		      "date;host;x-amz-content-sha256;x-amz-date;"
		      "x-amz-storage-class",
		      "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
	}
	talloc_free(t);
}

static const struct s3_kv bucket_headers[] = {
	{"Host", HOST},
	{"x-amz-content-sha256", S3_EMPTY_SHA256},
	{"x-amz-date", DATE},
};

/* "Example: GET Bucket Lifecycle": a query parameter without a value. */
static void test_get_lifecycle(void **state)
{
	const struct s3_kv q[] = {{"lifecycle", ""}};
	const struct s3_sigv4_input in = {
		.method = "GET", .canonical_uri = "/",
		.query = q, .n_query = 1,
		.headers = bucket_headers, .n_headers = 3,
		.payload_sha256 = S3_EMPTY_SHA256,
		.region = "us-east-1", .amz_date = DATE,
	};
	(void)state;
	check(&in, "host;x-amz-content-sha256;x-amz-date",
	      "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
}

/* "Example: Get Bucket (List Objects)": parameters given out of order. */
static void test_list_objects(void **state)
{
	const struct s3_kv q[] = {{"prefix", "J"}, {"max-keys", "2"}};
	const struct s3_sigv4_input in = {
		.method = "GET", .canonical_uri = "/",
		.query = q, .n_query = 2,
		.headers = bucket_headers, .n_headers = 3,
		.payload_sha256 = S3_EMPTY_SHA256,
		.region = "us-east-1", .amz_date = DATE,
	};
	TALLOC_CTX *t = talloc_new(NULL);
	char *creq = s3_sigv4_canonical_request(t, &in, NULL);

	(void)state;
	assert_non_null(strstr(creq, "\nmax-keys=2&prefix=J\n"));
	check(&in, "host;x-amz-content-sha256;x-amz-date",
	      "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
	talloc_free(t);
}

/* S3's encoding rules for keys and query values. */
static void test_uri_encode(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);

	(void)state;
	assert_string_equal(s3_uri_encode(t, "a b+c~d", true), "a%20b%2Bc~d");
	assert_string_equal(s3_uri_encode(t, "dir/sub/f.txt", true),
			    "dir/sub/f.txt");
	assert_string_equal(s3_uri_encode(t, "dir/sub", false), "dir%2Fsub");
	/* UTF-8 bytes, each encoded once, upper-case hex. */
	assert_string_equal(s3_uri_encode(t, "caf\xc3\xa9", true), "caf%C3%A9");
	assert_string_equal(s3_uri_encode(t, "a=b&c*", false), "a%3Db%26c%2A");
	talloc_free(t);
}

/* Header values are trimmed and inner blanks squeezed before signing. */
static void test_header_canonicalisation(void **state)
{
	const struct s3_kv h[] = {
		{"X-Amz-Meta-Note", "  two   words  "},
		{"HOST", HOST},
	};
	const struct s3_sigv4_input in = {
		.method = "HEAD", .canonical_uri = "/k",
		.headers = h, .n_headers = 2,
		.payload_sha256 = S3_EMPTY_SHA256,
		.region = "us-east-1", .amz_date = DATE,
	};
	TALLOC_CTX *t = talloc_new(NULL);
	char *names = NULL;
	char *creq = s3_sigv4_canonical_request(t, &in, &names);

	(void)state;
	assert_string_equal(creq, "HEAD\n/k\n\nhost:" HOST "\n"
				  "x-amz-meta-note:two words\n\n"
				  "host;x-amz-meta-note\n" S3_EMPTY_SHA256);
	assert_string_equal(names, "host;x-amz-meta-note");
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_get_object),
		cmocka_unit_test(test_put_object),
		cmocka_unit_test(test_get_lifecycle),
		cmocka_unit_test(test_list_objects),
		cmocka_unit_test(test_uri_encode),
		cmocka_unit_test(test_header_canonicalisation),
	};
	return cmocka_run_group_tests_name("s3_sigv4", tests, NULL, NULL);
}
