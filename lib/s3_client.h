/*
 * The asynchronous S3 engine: libcurl's multi-socket API driven by a tevent
 * context.  One s3_client belongs to one tevent context; every request is a
 * tevent_req (send/recv).  Requests are signed (SigV4), bounded in number
 * (curl queues the rest), timed out, and retried with exponential backoff
 * and jitter when that is safe.
 */
#ifndef BUCKETFS_S3_CLIENT_H
#define BUCKETFS_S3_CLIENT_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <talloc.h>
#include <tevent.h>

#include "s3_checksum.h"
#include "s3_sigv4.h"

struct s3_client_config {
	/* scheme://host[:port]; NULL: https://s3.REGION.amazonaws.com */
	const char *endpoint;
	const char *region;
	const char *bucket;
	bool path_style;
	bool verify_tls;
	/* PEM file of the CAs to trust; NULL: the system's bundle */
	const char *ca_file;
	unsigned max_requests;	     /* in flight at once; 0: 16 */
	unsigned connect_timeout_ms; /* 0: 5000 */
	unsigned request_timeout_ms; /* whole request; 0: 60000 */
	unsigned max_retries;	     /* 0 means none */
	unsigned retry_base_ms;	     /* first backoff; 0: 100 */
	/* Unsigned requests (a public bucket): no credentials needed. */
	bool anonymous;
	/* x-amz-request-payer: requester (a requester-pays bucket). */
	bool requester_pays;
	struct s3_credentials creds;
};

/* Outcome of a request, for errors and log lines. */
struct s3_status {
	int err;	  /* 0 or an errno value */
	long http_status; /* 0 if no HTTP answer */
	char code[128];	  /* S3 error code, or curl's error text */
	char message[256];
	char request_id[128];
	/* The bucket's region, where the server named it (x-amz-bucket-region,
	 * or <Region> in an AuthorizationHeaderMalformed document). */
	char region[64];
	unsigned attempts;
};

/* Copy what is not NULL into st (truncating); plain value semantics. */
void s3_status_set(struct s3_status *st, const char *code,
		   const char *message, const char *request_id);

/* What a 2xx answer said about its body (for s3_body_sink.end). */
struct s3_body_info {
	long http_status;
	const char *etag; /* without quotes, or NULL */
	bool has_range;	  /* a Content-Range "bytes FIRST-LAST/TOTAL" */
	uint64_t range_first, range_last, range_total;
	/*
	 * The ETag is not the MD5 of the bytes even for a single-part object:
	 * SSE-KMS (aws:kms, aws:kms:dsse) or SSE-C encryption.
	 */
	bool etag_not_md5;
	/* An additional checksum of the whole object (x-amz-checksum-*). */
	enum s3_cksum cksum;
	const char *cksum_value;  /* base64, as sent */
	bool cksum_composite;	  /* of the parts' checksums: not the bytes' */
	/* The object's user metadata (x-amz-meta-*, names in lower case). */
	const struct s3_kv *meta;
	size_t n_meta;
};

/* The most user-metadata headers of one answer kept (the rest: dropped). */
#define S3_RESP_META_MAX 8

/* Where a successful (2xx) response body goes, piece by piece. */
struct s3_body_sink {
	/* Called before each attempt: a retry starts the body over. */
	int (*begin)(void *priv);
	/* 0, or an errno to abort the request (not retried). */
	int (*write)(void *priv, const void *data, size_t len);
	void *priv;
	/*
	 * Optional, after a 2xx answer: 0, or an errno when the body is not
	 * what was asked for (another range, short, a checksum mismatch).
	 * Such an answer is retried like a broken connection.
	 */
	int (*end)(void *priv, const struct s3_body_info *info);
};

struct s3_request {
	const char *method;
	const char *key; /* object key, not encoded; NULL for the bucket */
	const struct s3_kv *query;
	size_t n_query;
	const struct s3_kv *headers; /* extra headers; all get signed */
	size_t n_headers;
	const void *body; /* must live until the request completes */
	size_t body_len;
	/* Safe to resend after a failure whose outcome is unknown. */
	bool idempotent;
	/* NULL: a 2xx body is collected into s3_response.body. */
	const struct s3_body_sink *sink;
};

struct s3_response {
	long http_status;
	uint8_t *body; /* collected body (no sink given) */
	size_t body_len;
	char *etag; /* ETag header without quotes, or NULL */
	uint64_t content_length;
	bool has_content_length;
	time_t last_modified; /* -1 if absent */
	time_t date; /* the server's clock when it answered (Date); -1 if absent */
	char *request_id;
	struct s3_kv *meta;	/* x-amz-meta-* headers (s3_body_info) */
	size_t n_meta;
};

/* Upper bounds (milliseconds) of the request latency histogram. */
#define S3_LATENCY_BUCKETS_MS {5, 10, 25, 50, 100, 250, 500, 1000, 2500, \
			       5000, 10000, 30000}
#define S3_LATENCY_N 12

struct s3_client_counters {
	uint64_t requests; /* HTTP requests sent, retries included */
	uint64_t retries;
	uint64_t failures; /* requests that ended in an error */
	uint64_t bytes_in;
	uint64_t bytes_out;
	/* HTTP exchanges by duration: [i] took at most bucket i (the last
	 * slot: longer); latency_us is their total. */
	uint64_t latency[S3_LATENCY_N + 1];
	uint64_t latency_us;
};

struct s3_client;

/* Returns NULL and sets errno (EINVAL for a bad endpoint). */
struct s3_client *s3_client_new(TALLOC_CTX *mem_ctx, struct tevent_context *ev,
				const struct s3_client_config *cfg);

/*
 * A client for ev with model's configuration, credentials included (as
 * they are now), and counters of its own: one per thread of a process
 * whose threads share a configuration.  NULL and errno as s3_client_new.
 */
struct s3_client *s3_client_new_like(TALLOC_CTX *mem_ctx,
				     struct tevent_context *ev,
				     const struct s3_client *model);

/*
 * The errno of an option libcurl refused (a curl_easy_setopt CURLcode):
 * ENOMEM, ENOTSUP (an option this libcurl lacks), EINVAL (a value it will
 * not take) or EIO.  A request set up in part must not go out.
 */
int s3_setopt_errno(int curlcode);

/*
 * Whether found, a region a server named for the bucket (s3_status'
 * region), is one to follow instead of current: not empty, not the same,
 * and a region's name (lower-case letters, digits and '-'), never text a
 * server could steer a host name with.
 */
bool s3_region_to_follow(const char *current, const char *found);

/* Credentials for requests started from now on (refreshed ones). */
int s3_client_set_credentials(struct s3_client *c,
			      const struct s3_credentials *creds);

/* Change the limit on requests in flight (a reloaded smb.conf). */
void s3_client_set_max_requests(struct s3_client *c, unsigned max);

/*
 * How long each request sent from now on may take (0: 60 s) and how often
 * it is retried: a tree connect's probe sends its own under tighter ones,
 * then puts the client's back.
 */
void s3_client_set_limits(struct s3_client *c, unsigned request_timeout_ms,
			  unsigned max_retries);

const struct s3_client_counters *s3_client_counters(const struct s3_client *c);
const char *s3_client_bucket(const struct s3_client *c);

/*
 * Whether uploads send S3's additional checksum (CRC32C, beside
 * Content-MD5), as AWS's SDKs do: on until a server refuses one
 * (s3_cksum_refused), then off for this client, with one log line.
 */
bool s3_client_upload_cksum(const struct s3_client *c);
void s3_client_upload_cksum_off(struct s3_client *c, const struct s3_status *st);
/*
 * Whether a request that failed with err (and st) means S3 cannot be
 * reached now (no connection, a timeout, a reset, a 5xx answer), as
 * opposed to an answer that refuses (credentials, a missing bucket).
 */
bool s3_unreachable(int err, const struct s3_status *st);

/* Whether st is a server's refusal of a checksum header it does not know. */
bool s3_cksum_refused(const struct s3_status *st);

struct tevent_req *s3_request_send(TALLOC_CTX *mem_ctx,
				   struct tevent_context *ev,
				   struct s3_client *c,
				   const struct s3_request *r);
/*
 * Returns 0 or an errno value; *st (optional) says why.  Strings in *st and
 * *resp are allocated on mem_ctx.
 */
int s3_request_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		    struct s3_response **resp, struct s3_status *st);

/* errno for an S3 error code / HTTP status (code may be NULL). */
int s3_errno_from_code(const char *code, long http_status);

#endif
