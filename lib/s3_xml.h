/*
 * Streaming parsers (libexpat) for the XML bodies S3 sends back:
 * ListObjectsV2 results, error documents, and the small multipart and copy
 * results.  Bodies are fed in pieces as they arrive from the network.
 *
 * Hostile input is refused, not followed: a DOCTYPE (entity declarations),
 * nesting deeper than any S3 document, or oversized text are parse errors.
 */
#ifndef BUCKETFS_S3_XML_H
#define BUCKETFS_S3_XML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <talloc.h>

struct s3_object_entry {
	char *key;
	uint64_t size;
	char *etag; /* without the surrounding quotes */
	time_t mtime;
};

struct s3_listing {
	struct s3_object_entry *objects; /* talloc array */
	size_t n_objects;
	char **prefixes; /* CommonPrefixes, talloc array of strings */
	size_t n_prefixes;
	bool truncated;
	char *next_token; /* NextContinuationToken or NULL */
	/* <EncodingType>url</EncodingType>: keys and prefixes still
	 * percent-encoded (s3_listing_url_decode undoes it). */
	bool url_encoded;
};

/* An S3 error document: <Error><Code/><Message/><RequestId/></Error>. */
struct s3_error_doc {
	char *code;
	char *message;
	char *request_id;
	char *region;	/* the bucket's, in AuthorizationHeaderMalformed */
};

/*
 * Small results: UploadId of CreateMultipartUpload, ETag of
 * CompleteMultipartUpload / CopyObject / UploadPartCopy.  A 200 answer to a
 * copy or complete can still carry an <Error> (S3 reports late failures that
 * way), so the error fields are filled too.
 */
struct s3_result_doc {
	char *upload_id;
	char *etag;
	struct s3_error_doc error;
	bool is_error;
};

enum s3_xml_kind {
	S3_XML_LISTING,
	S3_XML_ERROR,
	S3_XML_RESULT,
};

struct s3_xml_parser;

/* The result structures are allocated on the parser's talloc parent. */
struct s3_xml_parser *s3_xml_parser_new(TALLOC_CTX *mem_ctx,
					enum s3_xml_kind kind);

/* Returns 0, or EBADMSG for malformed or refused input (see *_error). */
int s3_xml_parser_feed(struct s3_xml_parser *p, const void *data, size_t len,
		       bool final);

const char *s3_xml_parser_error(const struct s3_xml_parser *p);

/* Valid after a successful final feed; owned by the parser's parent. */
struct s3_listing *s3_xml_listing(struct s3_xml_parser *p);
struct s3_error_doc *s3_xml_error(struct s3_xml_parser *p);
struct s3_result_doc *s3_xml_result(struct s3_xml_parser *p);

/* Whole-buffer conveniences over the above. */
int s3_xml_parse_listing(TALLOC_CTX *mem_ctx, const void *data, size_t len,
			 struct s3_listing **out);
int s3_xml_parse_error(TALLOC_CTX *mem_ctx, const void *data, size_t len,
		       struct s3_error_doc **out);

/*
 * Keys and prefixes of a listing asked for with encoding-type=url (XML 1.0
 * cannot carry every character a key may hold) back to their bytes; a no-op
 * if the server did not encode.  EBADMSG for a bad escape or a NUL.
 */
int s3_listing_url_decode(struct s3_listing *l);

/* ISO 8601 as S3 writes it (2009-10-12T17:50:30.000Z) to time_t, or -1. */
time_t s3_parse_iso8601(const char *s);

#endif
