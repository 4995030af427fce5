/*
 * The instance role's credentials, handed from bucketfsd to the smbd
 * processes of its cache folder through a file in that folder.
 *
 * Credentials from the instance metadata service (IMDS) expire.  The
 * engine refreshes them before they do and saves them here; an smbd
 * process whose copy nears its end takes them from this file (a local
 * read) instead of asking IMDS itself, which would hold its event loop,
 * and with it every request of its client, for up to the service's
 * timeout.  So the folder asks IMDS once per refresh, not once per
 * process.  The file is root's, mode 0600, inside the root-only cache
 * folder; it names the metadata endpoint the credentials came from, and
 * a reader takes them only for the same endpoint.
 */
#ifndef BUCKETFS_BFS_ROLE_CREDS_H
#define BUCKETFS_BFS_ROLE_CREDS_H

#include <stddef.h>
#include <time.h>

#include <talloc.h>

#include "s3_sigv4.h"

/* The file's name in the cache folder. */
#define BFS_ROLE_CREDS_FILE "role-credentials"

/*
 * The file's text for credentials c from endpoint, valid until expire;
 * NULL on no memory or a value a line cannot hold (empty, or with a
 * character outside printable ASCII).
 */
char *bfs_role_creds_format(TALLOC_CTX *mem_ctx, const char *endpoint,
			    const struct s3_credentials *c, time_t expire);

/*
 * Parse text[0..len) as bfs_role_creds_format writes it.  0 with
 * *endpoint, *c (strings talloc children of mem_ctx) and *expire; EINVAL
 * if it is anything else.
 */
int bfs_role_creds_parse(TALLOC_CTX *mem_ctx, const char *text, size_t len,
			 char **endpoint, struct s3_credentials *c,
			 time_t *expire)
	__attribute__((warn_unused_result));

/*
 * Save them in dir's file, replacing it whole (a reader sees the old
 * file or the new one, never a mix).  0 or an errno.
 */
int bfs_role_creds_save(const char *dir, const char *endpoint,
			const struct s3_credentials *c, time_t expire)
	__attribute__((warn_unused_result));

/*
 * The credentials dir's file holds for endpoint.  0; ENOENT if there is
 * none; EPERM if the file is not a regular file of root's (or ours) that
 * only its owner may read; ESRCH if it is for another endpoint; EINVAL
 * if malformed; or another errno.
 */
int bfs_role_creds_load(TALLOC_CTX *mem_ctx, const char *dir,
			const char *endpoint, struct s3_credentials *c,
			time_t *expire)
	__attribute__((warn_unused_result));

#endif
