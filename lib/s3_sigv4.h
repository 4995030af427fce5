/*
 * AWS Signature Version 4 for S3 requests (header-based authentication).
 *
 * Pure functions: no I/O, no clock.  The caller supplies the timestamp so the
 * signer can be checked against AWS's published examples.
 */
#ifndef BUCKETFS_S3_SIGV4_H
#define BUCKETFS_S3_SIGV4_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>
#include <talloc.h>

/* SHA-256 of the empty string: the payload hash of bodiless requests. */
#define S3_EMPTY_SHA256 \
	"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

struct s3_kv {
	const char *name;
	const char *value;
};

struct s3_credentials {
	const char *access_key;
	const char *secret_key;
	const char *session_token; /* NULL unless temporary credentials */
};

struct s3_sigv4_input {
	const char *method;
	/* The request path exactly as sent: already S3-URI-encoded. */
	const char *canonical_uri;
	/* Query parameters, not encoded; order does not matter. */
	const struct s3_kv *query;
	size_t n_query;
	/* Every header to sign, Host and x-amz-* included; any order/case. */
	const struct s3_kv *headers;
	size_t n_headers;
	const char *payload_sha256; /* lower-case hex */
	const char *region;
	const char *amz_date; /* YYYYMMDDTHHMMSSZ */
};

/*
 * S3's URI encoding: every byte but A-Z a-z 0-9 - _ . ~ becomes %XX
 * (upper-case hex); '/' is kept when keep_slash (object key in a path).
 */
char *s3_uri_encode(TALLOC_CTX *mem_ctx, const char *s, bool keep_slash);

/* Query string as S3 signs it (and as we send it): encoded, sorted. */
char *s3_canonical_query(TALLOC_CTX *mem_ctx, const struct s3_kv *query,
			 size_t n_query);

void s3_sha256_hex(const void *data, size_t len, char out[65]);

/* Exposed for tests and debugging (log level 10). */
char *s3_sigv4_canonical_request(TALLOC_CTX *mem_ctx,
				 const struct s3_sigv4_input *in,
				 char **signed_headers);

/*
 * The value of the Authorization header, or NULL on allocation failure.
 */
char *s3_sigv4_authorization(TALLOC_CTX *mem_ctx,
			     const struct s3_sigv4_input *in,
			     const struct s3_credentials *creds);

/* Format t as an x-amz-date (YYYYMMDDTHHMMSSZ, UTC). */
void s3_amz_date(time_t t, char out[17]);

#endif
