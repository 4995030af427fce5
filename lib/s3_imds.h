/*
 * Credentials from the EC2 instance metadata service, IMDSv2: a session
 * token (PUT /latest/api/token), the instance role's name, then the role's
 * temporary credentials, which expire and must be fetched again before
 * they do.
 *
 * Synchronous and short: the service is link-local, and a host that is not
 * an EC2 instance must fail fast (timeout_ms bounds every step).
 */
#ifndef BUCKETFS_S3_IMDS_H
#define BUCKETFS_S3_IMDS_H

#include <time.h>
#include <talloc.h>

#include "s3_sigv4.h"

#define S3_IMDS_ENDPOINT "http://169.254.169.254"

/*
 * Fetch the role credentials from endpoint (S3_IMDS_ENDPOINT, or a
 * stand-in).  0 with *out (strings on mem_ctx) and *expiration, or an
 * errno value with *why for the log line.
 */
int s3_imds_fetch(TALLOC_CTX *mem_ctx, const char *endpoint,
		  unsigned timeout_ms, struct s3_credentials *out,
		  time_t *expiration, const char **why);

/*
 * The string value of "key" in a flat JSON object (what the metadata
 * service answers), unescaped; NULL if absent or malformed.  Exposed for
 * tests.
 */
char *s3_imds_json_string(TALLOC_CTX *mem_ctx, const char *json,
			  const char *key);

#endif
