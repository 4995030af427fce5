/*
 * The tree connect's look at a share's bucket, and why it cannot be
 * served.  A tree connect looks at the bucket once (HeadBucket, else a
 * one-key listing), following the bucket's region when smb.conf names
 * none; when that fails, and S3 is not merely away from a cache that has
 * served the share before, the connect is refused with one log line
 * naming the cause.  The integration tests (tests/run.py and the others)
 * and users' log searches read these sentences: they change only with
 * those.
 */
#ifndef BUCKETFS_BFS_PROBE_H
#define BUCKETFS_BFS_PROBE_H

#include <stdbool.h>

struct bfs_conn;

/*
 * The cause of a failed probe, from its errno (s3_errno_from_code and
 * the client's transport errors made it from the S3 status): a sentence
 * without a final stop, static.
 */
const char *bfs_probe_cause(int err);

/*
 * Look at bc's bucket through bc->s3 (on bc->sync_ev), as the tree
 * connect does.  region_set: smb.conf names the region, which is then
 * kept; else a region the server names is followed (bc->cfg.region, and
 * bc->cfg.endpoint when endpoint_derived, i.e. smb.conf names none), and
 * bc->s3 made anew for it.  0: the bucket serves, or S3 is unreachable
 * and the index has the share's root listed (bc->s3_down_until set: the
 * cache serves until S3 is back).  Else the errno, logged with its cause
 * (bfs_probe_cause).
 */
int bfs_probe_bucket(struct bfs_conn *bc, bool region_set,
		     bool endpoint_derived)
	__attribute__((warn_unused_result));

#endif
