/*
 * Credentials for S3 in the AWS conventions: the shared credentials file
 * (~/.aws/credentials format: INI sections per profile) and the process
 * environment.
 */
#ifndef BUCKETFS_S3_CREDS_H
#define BUCKETFS_S3_CREDS_H

#include <talloc.h>

#include "s3_sigv4.h"

/*
 * Read profile from an AWS shared credentials file.  Returns 0, ENOENT (no
 * such file), ESRCH (no such profile), EINVAL (profile lacks a key pair),
 * or another errno; *why says which in words fit for a log line.
 * Strings are allocated on mem_ctx.
 */
int s3_creds_from_file(TALLOC_CTX *mem_ctx, const char *path,
		       const char *profile, struct s3_credentials *out,
		       const char **why);

/* AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; ENOENT if unset. */
int s3_creds_from_env(TALLOC_CTX *mem_ctx, struct s3_credentials *out);

#endif
