/*
 * Where a share's S3 credentials come from: the one chain the module (at
 * a tree connect), bucketfs-ctl and bucketfsd follow, so that the engine
 * and the tool sign with the keys smbd signs with, or fail where it
 * fails.  The links (lib/s3_creds, lib/s3_imds) are the AWS tools'; what
 * is ours is the order, the refusals and the warnings:
 *
 *   anonymous      no credentials at all (unsigned requests);
 *   a secret written into smb.conf itself is refused;
 *   1-4.           s3_creds_resolve: the share's credentials file, else
 *                  AWS_ACCESS_KEY_ID..., AWS_SHARED_CREDENTIALS_FILE,
 *                  HOME/.aws/credentials;
 *   5.             the EC2 instance role (IMDSv2), only if nothing else
 *                  has keys, no credentials file is named and
 *                  'bucketfs:imds' is yes;
 *   a credentials file other users can read works, with a warning.
 */
#ifndef BUCKETFS_BFS_CREDS_H
#define BUCKETFS_BFS_CREDS_H

#include <stdbool.h>
#include <sys/types.h>
#include <time.h>

#include <talloc.h>

#include "bfs_params.h"
#include "s3_sigv4.h"

/* The share's parameter values the chain follows. */
struct bfs_creds_params {
	const char *service;	/* the share's name, for log lines */
	/*
	 * smb.conf as lib/bfs_params reads it: only to refuse secrets
	 * written there (their names are not parameters).
	 */
	const struct bfs_psrc *conf;
	bool anonymous;		/* 'bucketfs:anonymous' */
	const char *file;	/* 'bucketfs:credentials file'; NULL, "" */
	const char *profile;	/* 'bucketfs:profile'; NULL, "": default */
	bool imds;		/* 'bucketfs:imds' */
	const char *imds_endpoint;	/* 'bucketfs:imds endpoint' */
	const char *home;	/* "~" (bfs_creds_home), NULL: none */
};

/* What the chain found. */
struct bfs_creds {
	struct s3_credentials keys;	/* all NULL when anonymous */
	/*
	 * Where they came from, for the log (never the keys): a file's
	 * path, the environment, the instance metadata service; NULL for
	 * anonymous requests.
	 */
	const char *source;
	/* The metadata service they came from, to refresh them; or NULL. */
	const char *imds;
	time_t expire;		/* 0: credentials that do not expire */
};

/*
 * "~" as the AWS tools read it: $HOME, else the home of user uid in the
 * password database, else NULL.  (Static storage: use it at once.)
 */
const char *bfs_creds_home(uid_t uid);

/*
 * Follow the chain for p.  0 with *out (strings on mem_ctx), or an errno
 * with *why, a sentence for "share NAME: <why>" (on mem_ctx or static):
 * EPERM a secret in smb.conf, ENOENT nothing anywhere, and the errors of
 * s3_creds_resolve and s3_imds_fetch.  Warns (bfs_log) of a credentials
 * file other users can read.
 */
int bfs_creds_get(TALLOC_CTX *mem_ctx, const struct bfs_creds_params *p,
		  struct bfs_creds *out, const char **why);

#endif
