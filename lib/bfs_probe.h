/*
 * The tree connect's look at a share's bucket, and why it cannot be
 * served.  A tree connect looks at the bucket once (HeadBucket, else a
 * one-key listing), following the bucket's region when smb.conf names
 * none; when that fails, and S3 is not merely away from a cache that has
 * served the share before, the connect is refused with one log line
 * naming the cause.  A look that succeeded is remembered in the cache
 * folder's index for what it proved (bfs_probe_tag): the connects that
 * follow within the share's `metadata ttl` (an hour at most) trust it
 * and do not ask S3, so a client that connects again, or mounts a second
 * share over the connection it already has, waits for no S3 round trip.  The integration tests (tests/run.py and the others)
 * and users' log searches read these sentences: they change only with
 * those.
 */
#ifndef BUCKETFS_BFS_PROBE_H
#define BUCKETFS_BFS_PROBE_H

#include <stdbool.h>
#include <stdint.h>

struct bfs_conn;

/* The longest a probe is trusted, whatever the TTL (-1 included). */
#define BFS_PROBE_TRUST_MAX 3600

/*
 * What a probe proves, as a digest (32 bytes): the endpoint, region,
 * bucket and prefix of bc, how it signs (path style, TLS check and CA,
 * anonymous, requester pays) and the credentials themselves, so that a
 * changed secret is probed again.  0, or ENOMEM.
 */
int bfs_probe_tag(const struct bfs_conn *bc, uint8_t tag[32])
	__attribute__((warn_unused_result));

/*
 * The cause of a failed probe, from its errno (s3_errno_from_code and
 * the client's transport errors made it from the S3 status): a sentence
 * without a final stop, static.
 */
const char *bfs_probe_cause(int err);

/*
 * Look at bc's bucket through bc->s3 (on bc->sync_ev), as the tree
 * connect does, unless the index holds a proof of it younger than the
 * share's TTL (then 0 at once).  region_set: smb.conf names the region, which is then
 * kept; else a region the server names is followed (bc->cfg.region, and
 * bc->cfg.endpoint when endpoint_derived, i.e. smb.conf names none), and
 * bc->s3 made anew for it.  0: the bucket serves, or S3 is unreachable
 * and the index has the share's root listed (bc->s3_down_until set: the
 * cache serves until S3 is back).  Else the errno, logged with its cause
 * (bfs_probe_cause).  A look that succeeded without following a region
 * is stored as a proof.
 */
int bfs_probe_bucket(struct bfs_conn *bc, bool region_set,
		     bool endpoint_derived)
	__attribute__((warn_unused_result));

#endif
