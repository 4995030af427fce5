/*
 * Why a share's bucket cannot be served.  A tree connect looks at the
 * bucket once (HeadBucket, else a one-key listing: the module's probe);
 * when that fails, and S3 is not merely away from a cache that has
 * served the share before, the connect is refused with one log line
 * naming the cause.  The integration tests (tests/run.py and the others) and users' log
 * searches read these sentences: they change only with those.
 */
#ifndef BUCKETFS_BFS_PROBE_H
#define BUCKETFS_BFS_PROBE_H

/*
 * The cause of a failed probe, from its errno (s3_errno_from_code and
 * the client's transport errors made it from the S3 status): a sentence
 * without a final stop, static.
 */
const char *bfs_probe_cause(int err);

#endif
