/*
 * Claims, the smbd's side (the engine's: tools/bucketfsd.c; the protocol:
 * bfs_proto.h CLAIM).  A cold sequential reader of a large object fetches
 * its misses in its own smbd, as without an engine: through the engine
 * each byte costs one more process's copies, and on a small host that
 * halves a cold read.  The engine still sees to it that each block comes
 * from S3 once: it grants one object to one process, parks every other
 * process's fetches of it, and asks for it back (REVOKE); the claimer
 * then fetches no more of it, and gives it back once what it fetched is
 * in the cache, where the parked fetches find it.
 */
#ifndef BUCKETFS_BFS_CLAIM_H
#define BUCKETFS_BFS_CLAIM_H

#include <stdbool.h>
#include <stdint.h>
#include <talloc.h>
#include <tevent.h>

struct bfs_conn;
struct bfs_fh;

/* Objects smaller than this are read through the engine: a claim's round
 * trip and its readahead ramp-up cost more than they save. */
#define BFS_CLAIM_MIN_SIZE (64ULL << 20)

/*
 * Whether fh's object is this process's.  *ahead: whether its misses are
 * fetched here with readahead.  Once the engine asked for the object back
 * (*ahead false), only reads the fetches begun here hold stay here
 * (bfs_reader_holds); the others go to the engine, without readahead (it
 * would fetch what ours are bringing).
 */
bool bfs_claim_reads_here(struct bfs_conn *bc, const struct bfs_fh *fh,
			  bool *ahead);

/* Whether to ask for fh's object before its first miss goes to the engine:
 * large, never asked for through fh, no claim of ours held or asked. */
bool bfs_claim_worth_asking(const struct bfs_conn *bc, const struct bfs_fh *fh);

/*
 * Ask the engine for fh's object.  recv: 0 if granted (bc->claim, and the
 * connection's reader limited to the memory the engine grants), else an
 * errno (EBUSY: read through the engine).  Freed before the answer, a
 * grant that comes later is given back when the engine asks for it.
 */
struct tevent_req *bfs_claim_send(TALLOC_CTX *mem_ctx,
				  struct tevent_context *ev,
				  struct bfs_conn *bc, struct bfs_fh *fh);
int bfs_claim_recv(struct tevent_req *req);

/* fh closes: if it read the claimed object, the claim is given back. */
void bfs_claim_fh_closed(struct bfs_conn *bc, const struct bfs_fh *fh);

/* The engine's REVOKE (bfs_engine_on_revoke's cb, priv a bfs_conn). */
void bfs_claim_revoked(void *priv, const char *key, const char *etag);

#endif
