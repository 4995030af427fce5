/*
 * libFuzzer target: the ListObjectsV2 parser (lib/s3_xml.c), on bodies as
 * a broken or hostile server could send them.
 *
 * The network decides where a body is cut, so the parser must answer the
 * same fed whole and fed one byte at a time (every cut at once).  A
 * listing it accepts must be one the directory code can trust: counts
 * that match the arrays, every key and prefix present, text within the
 * parser's limit, a continuation token whenever it says "truncated".
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <talloc.h>

#include "fuzz.h"
#include "s3_xml.h"

/* s3_xml.c's S3_XML_MAX_TEXT: longer leaf text is refused. */
#define MAX_TEXT 4096

static void check_listing(const struct s3_listing *l, const uint8_t *data,
			  size_t size)
{
	size_t i, tags = 0;

	for (i = 0; i < size; i++) {
		tags += data[i] == '<';
	}
	/* An object needs <Contents> and <Key>, a prefix its <Prefix>. */
	FUZZ_CHECK(2 * l->n_objects + l->n_prefixes <= tags);
	FUZZ_CHECK((l->n_objects == 0) ||
		   talloc_array_length(l->objects) >= l->n_objects);
	FUZZ_CHECK((l->n_prefixes == 0) ||
		   talloc_array_length(l->prefixes) >= l->n_prefixes);
	for (i = 0; i < l->n_objects; i++) {
		const struct s3_object_entry *o = &l->objects[i];
		FUZZ_CHECK(o->key != NULL && strlen(o->key) <= MAX_TEXT);
		FUZZ_CHECK(o->etag == NULL || strlen(o->etag) <= MAX_TEXT);
	}
	for (i = 0; i < l->n_prefixes; i++) {
		FUZZ_CHECK(l->prefixes[i] != NULL &&
			   strlen(l->prefixes[i]) <= MAX_TEXT);
	}
	FUZZ_CHECK(!l->truncated || l->next_token != NULL);
}

static bool same_str(const char *a, const char *b)
{
	return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static void check_same(const struct s3_listing *a, const struct s3_listing *b)
{
	size_t i;

	FUZZ_CHECK(a->n_objects == b->n_objects);
	FUZZ_CHECK(a->n_prefixes == b->n_prefixes);
	FUZZ_CHECK(a->truncated == b->truncated);
	FUZZ_CHECK(same_str(a->next_token, b->next_token));
	for (i = 0; i < a->n_objects; i++) {
		FUZZ_CHECK(same_str(a->objects[i].key, b->objects[i].key));
		FUZZ_CHECK(same_str(a->objects[i].etag, b->objects[i].etag));
		FUZZ_CHECK(a->objects[i].size == b->objects[i].size);
		FUZZ_CHECK(a->objects[i].mtime == b->objects[i].mtime);
	}
	for (i = 0; i < a->n_prefixes; i++) {
		FUZZ_CHECK(same_str(a->prefixes[i], b->prefixes[i]));
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	TALLOC_CTX *t;
	struct s3_listing *whole = NULL;
	struct s3_xml_parser *p;
	size_t i;
	int rc_whole, rc_split = 0;

	t = talloc_new(NULL);
	FUZZ_CHECK(t != NULL);
	rc_whole = s3_xml_parse_listing(t, data, size, &whole);

	p = s3_xml_parser_new(t, S3_XML_LISTING);
	FUZZ_CHECK(p != NULL);
	for (i = 0; i < size && rc_split == 0; i++) {
		rc_split = s3_xml_parser_feed(p, data + i, 1, false);
	}
	if (rc_split == 0) {
		rc_split = s3_xml_parser_feed(p, NULL, 0, true);
	}
	FUZZ_CHECK(rc_split == rc_whole);
	FUZZ_CHECK(s3_xml_parser_error(p) != NULL);
	if (rc_whole == 0) {
		check_listing(whole, data, size);
		check_same(whole, s3_xml_listing(p));
	}
	talloc_free(t);
	return 0;
}
