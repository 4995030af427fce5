/*
 * A lease held in an S3 object through conditional writes: CTDB's cluster
 * (recovery) lock with nothing but the bucket (issue 22 point 5;
 * tools/bucketfs-lease is the helper ctdbd runs).
 *
 * The lease object's key holds who has it (x-amz-meta-bfs-holder) and for
 * how long (x-amz-meta-bfs-seconds).  Taking it is a PutObject with
 * If-None-Match: *; one that is there but was last written more than its
 * seconds ago, by the server's own clock (Date - Last-Modified, so no
 * node's clock matters), is taken over with If-Match on its ETag.  The
 * holder renews it every seconds/3 with If-Match on the ETag it wrote
 * last: a refusal means another node took it.  It gives up by itself
 * once seconds - BFS_LEASE_MARGIN have passed since its last renewal was
 * sent without an answer, before anyone else may take it over.
 *
 * Calls block on their own event context: the helper is a process of its
 * own, not smbd.
 */
#ifndef BUCKETFS_LEASE_H
#define BUCKETFS_LEASE_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <talloc.h>
#include <tevent.h>

#include "s3_client.h"

/* Seconds before its end at which a holder that cannot renew gives up. */
#define BFS_LEASE_MARGIN 2

enum bfs_lease_result {
	BFS_LEASE_TAKEN,	/* ours now */
	BFS_LEASE_HELD,		/* another holder's, and alive */
	BFS_LEASE_ERROR,	/* S3 could not tell (see the log) */
};

struct bfs_lease;

/*
 * A lease on key (in c's bucket) for holder (any text that names this
 * process uniquely, e.g. host:pid:random), seconds long (>= 3 *
 * BFS_LEASE_MARGIN).  Nothing is sent yet.
 */
struct bfs_lease *bfs_lease_new(TALLOC_CTX *mem_ctx, struct tevent_context *ev,
				struct s3_client *c, const char *key,
				const char *holder, unsigned seconds);

/* Try once to take it. */
enum bfs_lease_result bfs_lease_take(struct bfs_lease *l)
	__attribute__((warn_unused_result));

/*
 * Renew a lease taken: 0; ESTALE when another holder has it now (lost);
 * ETIMEDOUT when it could not be renewed for seconds - BFS_LEASE_MARGIN
 * (given up: others may take it soon); another errno for one failed try
 * that leaves time to try again.
 */
int bfs_lease_renew(struct bfs_lease *l) __attribute__((warn_unused_result));

/* Seconds between renewals. */
unsigned bfs_lease_renew_every(const struct bfs_lease *l);

/*
 * Give it back: written as expired (If-Match, so a lease already lost is
 * left alone), for the next taker at once.  0 or an errno.
 */
int bfs_lease_release(struct bfs_lease *l);

/*
 * Whether a lease object written at last_modified with seconds of life
 * (its metadata's text) has expired by the server's clock now: also one
 * given back (0) or not written by us (no number).  Exposed for tests.
 */
bool bfs_lease_expired(time_t last_modified, time_t now, const char *seconds);

#endif
