/*
 * Credentials for S3 in the AWS conventions: the shared credentials file
 * (~/.aws/credentials format: INI sections per profile) and the process
 * environment.
 */
#ifndef BUCKETFS_S3_CREDS_H
#define BUCKETFS_S3_CREDS_H

#include <stdbool.h>
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

/*
 * The credential chain, first match wins, as the AWS tools look:
 *   1. file (the share's 'credentials file'), if set;
 *   2. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN;
 *   3. the file named by AWS_SHARED_CREDENTIALS_FILE;
 *   4. HOME_DIR/.aws/credentials (the server user's), if it exists.
 * The profile is `profile` if set, else AWS_PROFILE, else "default".
 * *source names where the keys came from (static or on mem_ctx), for the
 * log; the keys themselves are never put in a message.  ENOENT when no
 * link of the chain has any; other errors (a named file or profile that
 * is missing) as s3_creds_from_file, with *why.
 */
int s3_creds_resolve(TALLOC_CTX *mem_ctx, const char *file,
		     const char *profile, const char *home_dir,
		     struct s3_credentials *out, const char **source,
		     const char **why);

/* Can users other than the owner read path?  (A warning for the log.) */
bool s3_creds_file_is_exposed(const char *path);

#endif
