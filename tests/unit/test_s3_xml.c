/* ListObjectsV2 and error parsing, including input that must be refused. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "s3_xml.h"

static const char listing_xml[] =
	"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	"<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
	"<Name>b</Name><Prefix>photos/</Prefix><KeyCount>3</KeyCount>"
	"<MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter>"
	"<IsTruncated>true</IsTruncated>"
	"<Contents><Key>photos/a &amp; b.jpg</Key>"
	"<LastModified>2009-10-12T17:50:30.000Z</LastModified>"
	"<ETag>&quot;fba9dede5f27731c9771645a39863328&quot;</ETag>"
	"<Size>434234</Size><StorageClass>STANDARD</StorageClass></Contents>"
	"<Contents><Key>photos/caf\xc3\xa9</Key><Size>0</Size>"
	"<ETag>\"d41d8cd98f00b204e9800998ecf8427e\"</ETag></Contents>"
	"<CommonPrefixes><Prefix>photos/2006/</Prefix></CommonPrefixes>"
	"<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="
	"</NextContinuationToken></ListBucketResult>";

static void test_listing(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct s3_listing *l = NULL;

	(void)state;
	assert_int_equal(s3_xml_parse_listing(t, listing_xml,
					      strlen(listing_xml), &l), 0);
	assert_int_equal(l->n_objects, 2);
	assert_string_equal(l->objects[0].key, "photos/a & b.jpg");
	assert_int_equal(l->objects[0].size, 434234);
	assert_string_equal(l->objects[0].etag,
			    "fba9dede5f27731c9771645a39863328");
	assert_int_equal(l->objects[0].mtime, 1255369830);
	assert_string_equal(l->objects[1].key, "photos/caf\xc3\xa9");
	assert_int_equal(l->objects[1].size, 0);
	assert_int_equal(l->n_prefixes, 1);
	assert_string_equal(l->prefixes[0], "photos/2006/");
	assert_true(l->truncated);
	assert_string_equal(l->next_token,
			    "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=");
	talloc_free(t);
}

/* The network hands the body over in arbitrary pieces: one byte at a time
 * must give the same result. */
static void test_listing_bytewise(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct s3_xml_parser *p = s3_xml_parser_new(t, S3_XML_LISTING);
	size_t i, n = strlen(listing_xml);

	(void)state;
	for (i = 0; i < n; i++) {
		assert_int_equal(s3_xml_parser_feed(p, listing_xml + i, 1,
						    false), 0);
	}
	assert_int_equal(s3_xml_parser_feed(p, "", 0, true), 0);
	assert_int_equal(s3_xml_listing(p)->n_objects, 2);
	assert_string_equal(s3_xml_listing(p)->objects[1].key,
			    "photos/caf\xc3\xa9");
	talloc_free(t);
}

static void test_error(void **state)
{
	static const char x[] =
		"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>"
		"<Code>SignatureDoesNotMatch</Code><Message>The request "
		"signature we calculated does not match</Message>"
		"<RequestId>4442587FB7D0A2F9</RequestId></Error>";
	TALLOC_CTX *t = talloc_new(NULL);
	struct s3_error_doc *e = NULL;

	(void)state;
	assert_int_equal(s3_xml_parse_error(t, x, strlen(x), &e), 0);
	assert_string_equal(e->code, "SignatureDoesNotMatch");
	assert_string_equal(e->request_id, "4442587FB7D0A2F9");
	assert_non_null(strstr(e->message, "does not match"));
	talloc_free(t);
}

static void refuse(const char *x)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct s3_listing *l = NULL;

	assert_int_equal(s3_xml_parse_listing(t, x, strlen(x), &l), EBADMSG);
	talloc_free(t);
}

static void test_hostile(void **state)
{
	(void)state;
	/* Entity expansion ("billion laughs") never gets to expand. */
	refuse("<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY a \"aaaa\">"
	       "<!ENTITY b \"&a;&a;&a;&a;\">]><ListBucketResult><Contents>"
	       "<Key>&b;</Key></Contents></ListBucketResult>");
	/* External entities likewise. */
	refuse("<!DOCTYPE l [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>"
	       "<ListBucketResult><Contents><Key>&x;</Key></Contents>"
	       "</ListBucketResult>");
	/* Deep nesting. */
	refuse("<ListBucketResult><a><a><a><a><a><a><a><a><a><a></a></a></a>"
	       "</a></a></a></a></a></a></a></ListBucketResult>");
	/* Not a listing at all, truncated, malformed sizes. */
	refuse("<Error><Code>x</Code></Error>");
	refuse("<ListBucketResult><Contents><Key>a</Key>");
	refuse("<ListBucketResult><Contents><Key>a</Key><Size>-1</Size>"
	       "</Contents></ListBucketResult>");
	refuse("<ListBucketResult><Contents><Size>1</Size></Contents>"
	       "</ListBucketResult>");
	/* Truncated without a way to continue would loop or lose entries. */
	refuse("<ListBucketResult><IsTruncated>true</IsTruncated>"
	       "</ListBucketResult>");
}

static void test_result(void **state)
{
	static const char x[] =
		"<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>"
		"<UploadId>VXBsb2FkIElE</UploadId>"
		"</InitiateMultipartUploadResult>";
	static const char late_err[] =
		"<Error><Code>InternalError</Code><Message>m</Message></Error>";
	TALLOC_CTX *t = talloc_new(NULL);
	struct s3_xml_parser *p = s3_xml_parser_new(t, S3_XML_RESULT);

	(void)state;
	assert_int_equal(s3_xml_parser_feed(p, x, strlen(x), true), 0);
	assert_string_equal(s3_xml_result(p)->upload_id, "VXBsb2FkIElE");
	assert_false(s3_xml_result(p)->is_error);
	p = s3_xml_parser_new(t, S3_XML_RESULT);
	assert_int_equal(s3_xml_parser_feed(p, late_err, strlen(late_err),
					    true), 0);
	assert_true(s3_xml_result(p)->is_error);
	assert_string_equal(s3_xml_result(p)->error.code, "InternalError");
	talloc_free(t);
}

static void test_url_encoded_listing(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct s3_listing *l = NULL;
	const char *enc =
		"<ListBucketResult><EncodingType>url</EncodingType>"
		"<Contents><Key>d/a%07b</Key><Size>1</Size></Contents>"
		"<Contents><Key>d/sp+ace%2B%E6%97%A5</Key><Size>2</Size></Contents>"
		"<CommonPrefixes><Prefix>d/x%3Ay/</Prefix></CommonPrefixes>"
		"</ListBucketResult>";
	const char *plain =
		"<ListBucketResult><Contents><Key>a+b%41</Key><Size>1</Size>"
		"</Contents></ListBucketResult>";
	const char *bad[] = {
		"<ListBucketResult><EncodingType>url</EncodingType><Contents>"
		"<Key>a%G1</Key><Size>1</Size></Contents></ListBucketResult>",
		"<ListBucketResult><EncodingType>url</EncodingType><Contents>"
		"<Key>a%00b</Key><Size>1</Size></Contents></ListBucketResult>",
		"<ListBucketResult><EncodingType>url</EncodingType><Contents>"
		"<Key>a%4</Key><Size>1</Size></Contents></ListBucketResult>",
	};
	size_t i;

	(void)state;
	assert_int_equal(s3_xml_parse_listing(t, enc, strlen(enc), &l), 0);
	assert_int_equal(l->n_objects, 2);
	assert_string_equal(l->objects[0].key, "d/a\x07" "b");
	assert_string_equal(l->objects[1].key, "d/sp ace+\xe6\x97\xa5");
	assert_string_equal(l->prefixes[0], "d/x:y/");
	/* A server that ignored encoding-type=url: keys are as sent. */
	assert_int_equal(s3_xml_parse_listing(t, plain, strlen(plain), &l), 0);
	assert_string_equal(l->objects[0].key, "a+b%41");
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(s3_xml_parse_listing(t, bad[i], strlen(bad[i]),
						      &l), EBADMSG);
	}
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_listing),
		cmocka_unit_test(test_listing_bytewise),
		cmocka_unit_test(test_error),
		cmocka_unit_test(test_hostile),
		cmocka_unit_test(test_result),
		cmocka_unit_test(test_url_encoded_listing),
	};
	return cmocka_run_group_tests_name("s3_xml", tests, NULL, NULL);
}
