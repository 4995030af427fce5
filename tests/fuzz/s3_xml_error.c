/*
 * libFuzzer target: the S3 error-document parser and the small-result
 * parser that shares its code (lib/s3_xml.c: Error, InitiateMultipartUpload,
 * CompleteMultipartUpload, CopyObject results, which may carry an Error).
 *
 * As for listings: the same answer fed whole or one byte at a time, and
 * accepted fields within the parser's text limit.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <talloc.h>

#include "fuzz.h"
#include "s3_xml.h"

#define MAX_TEXT 4096

static bool same_str(const char *a, const char *b)
{
	return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static void check_error(const struct s3_error_doc *e)
{
	FUZZ_CHECK(e->code == NULL || strlen(e->code) <= MAX_TEXT);
	FUZZ_CHECK(e->message == NULL || strlen(e->message) <= MAX_TEXT);
	FUZZ_CHECK(e->request_id == NULL || strlen(e->request_id) <= MAX_TEXT);
}

static void same_error(const struct s3_error_doc *a,
		       const struct s3_error_doc *b)
{
	FUZZ_CHECK(same_str(a->code, b->code));
	FUZZ_CHECK(same_str(a->message, b->message));
	FUZZ_CHECK(same_str(a->request_id, b->request_id));
}

/* Feed in pieces of at most step bytes, as a network could cut them. */
static struct s3_xml_parser *parse(TALLOC_CTX *t, enum s3_xml_kind kind,
				   const uint8_t *data, size_t size,
				   size_t step, int *rc)
{
	struct s3_xml_parser *p = s3_xml_parser_new(t, kind);
	size_t off;

	FUZZ_CHECK(p != NULL);
	*rc = 0;
	for (off = 0; off < size && *rc == 0; off += step) {
		size_t n = size - off < step ? size - off : step;
		*rc = s3_xml_parser_feed(p, data + off, n, false);
	}
	if (*rc == 0) {
		*rc = s3_xml_parser_feed(p, NULL, 0, true);
	}
	FUZZ_CHECK(s3_xml_parser_error(p) != NULL);
	return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	TALLOC_CTX *t;
	struct s3_error_doc *whole = NULL;
	struct s3_xml_parser *p, *q;
	int rc, rc_whole, rc_res;

	t = talloc_new(NULL);
	FUZZ_CHECK(t != NULL);

	rc_whole = s3_xml_parse_error(t, data, size, &whole);
	p = parse(t, S3_XML_ERROR, data, size, 1, &rc);
	FUZZ_CHECK(rc == rc_whole);
	if (rc_whole == 0) {
		check_error(whole);
		same_error(whole, s3_xml_error(p));
	}

	/* The same bytes as a result document: whole, then bytewise. */
	q = parse(t, S3_XML_RESULT, data, size, size + 1, &rc_res);
	p = parse(t, S3_XML_RESULT, data, size, 1, &rc);
	FUZZ_CHECK(rc == rc_res);
	if (rc_res == 0) {
		const struct s3_result_doc *a = s3_xml_result(q);
		const struct s3_result_doc *b = s3_xml_result(p);
		check_error(&a->error);
		same_error(&a->error, &b->error);
		FUZZ_CHECK(a->is_error == b->is_error);
		FUZZ_CHECK(same_str(a->upload_id, b->upload_id));
		FUZZ_CHECK(same_str(a->etag, b->etag));
		FUZZ_CHECK(a->upload_id == NULL ||
			   strlen(a->upload_id) <= MAX_TEXT);
		FUZZ_CHECK(a->etag == NULL || strlen(a->etag) <= MAX_TEXT);
		/* A document that is an Error cannot be a good result. */
		FUZZ_CHECK(!a->is_error || rc_whole == 0);
	}
	talloc_free(t);
	return 0;
}
