/*
 * The module's side of bucketfsd, the S3 engine of a cache folder (see
 * tools/bucketfsd.c and bfs_proto.h): find it, start it when none runs,
 * tell it of journalled uploads, and wait for one through tevent.
 *
 * Only bfs_engine_connect blocks, bounded by its timeout: it runs in a
 * tree connect, or in a close whose engine went away, both synchronous
 * VFS calls whose answer is local (a unix socket in the cache folder).
 * Everything else is non-blocking: notices are queued on the socket,
 * and a wait is a tevent_req on the loop the connection was made on.
 */
#ifndef BUCKETFS_BFS_ENGINE_H
#define BUCKETFS_BFS_ENGINE_H

#include <stdbool.h>
#include <sys/types.h>
#include <talloc.h>
#include <tevent.h>

/* In the cache folder: one engine holds the lock; the socket; its log. */
#define BFS_ENGINE_LOCK "engine.lock"
#define BFS_ENGINE_SOCKET "engine.sock"
#define BFS_ENGINE_LOG "engine.log"

struct bfs_engine;

/*
 * Start it with argv (argv[0] a path: bucketfsd and its arguments) when
 * no engine answers.  The engine is not our child: it outlives this
 * process, and nothing here reaps it.
 */
struct bfs_engine_start {
	const char *const *argv;
	unsigned timeout_ms;	/* connect and start, in all */
};

/*
 * A connection to the engine of cache_dir, on ev, started as `start`
 * says if none runs (start NULL: only connect).  0, or an errno with a
 * log line: ENOENT (none runs and none may be started), ETIMEDOUT (it did
 * not answer in time), EPROTO (it spoke another protocol).
 */
int bfs_engine_connect(TALLOC_CTX *mem_ctx, struct tevent_context *ev,
		       const char *cache_dir, const char *share,
		       const struct bfs_engine_start *start,
		       struct bfs_engine **out);

/* The engine's process id; 0 once the connection is lost. */
pid_t bfs_engine_pid(const struct bfs_engine *e);

/* Connect again (same folder, same start) after the engine went away. */
int bfs_engine_reconnect(struct bfs_engine *e);

/*
 * cb(priv, key) for each upload the engine tells this connection of
 * (CHANGED: it tells one of its clients), e.g. to tell a cluster's other
 * nodes; NULL: none.
 */
void bfs_engine_on_changed(struct bfs_engine *e,
			   void (*cb)(void *priv, const char *key), void *priv);

/* Tell the engine an upload of key was journalled in its name. */
int bfs_engine_notify(struct bfs_engine *e, const char *key);

/*
 * Wait until the upload of key from staging file `staging` (or a later
 * upload of key) is in S3.  Should the engine go away meanwhile, the wait
 * reconnects (starting it again) and asks anew: its records are the new
 * engine's.  recv: 0 with *etag (may be NULL), the upload's errno, or
 * EPIPE if no engine could be reached again.
 */
struct tevent_req *bfs_engine_wait_send(TALLOC_CTX *mem_ctx,
					struct tevent_context *ev,
					struct bfs_engine *e, const char *key,
					const char *staging);
int bfs_engine_wait_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
			 char **etag);

/*
 * A read miss: the engine brings blocks [offset, offset+length) of the
 * object (key, etag, size bytes) into the cache folder's cache, one S3
 * GET per block for every smbd that asks meanwhile, and starts fetching
 * blocks [ahead, ahead+ahead_n) (readahead).  recv: 0 once they are in
 * the cache (the caller reads them there: should one be evicted already,
 * it fetches for itself), or an errno: EPIPE if there is no engine now.
 * A fetch is not asked again of a restarted engine.
 *
 * lend (and the engine's arena mapped: bfs_engine_lends): the engine may
 * answer as soon as it has the bytes, lending them in its fetch arena
 * instead of the cache: recv's *lent then has data (length bytes, in a
 * read-only mapping that any thread may copy from) until
 * bfs_engine_lent_done(), which must follow, on the connection's loop.
 * lent->data NULL: the blocks are in the cache, as without lend.
 */
struct bfs_engine_fetch {
	const char *key, *etag;
	uint64_t size, offset, length, ahead, ahead_n;
	bool lend;
};
struct bfs_engine_arena;
struct bfs_engine_lent {
	const uint8_t *data;
	uint64_t pin;
	struct bfs_engine_arena *arena;
};
struct tevent_req *bfs_engine_fetch_send(TALLOC_CTX *mem_ctx,
					 struct tevent_context *ev,
					 struct bfs_engine *e,
					 const struct bfs_engine_fetch *f);
int bfs_engine_fetch_recv(struct tevent_req *req,
			  struct bfs_engine_lent *lent);
bool bfs_engine_lends(const struct bfs_engine *e);
/* Done with lent bytes (e may be NULL: the connection is gone). */
void bfs_engine_lent_done(struct bfs_engine *e, struct bfs_engine_lent *lent);

/*
 * Claims (bfs_proto.h CLAIM): one sequential reader of a large object in
 * this process fetches its misses itself, as without an engine, instead
 * of through the engine's process (one more copy of each byte, and one
 * more busy process).  claim_bytes: the fetch memory a claim may use (0:
 * the engine takes none).  claim_send/recv: 0 if granted, EBUSY if not
 * (another process reads the object, or the memory is taken), EPIPE with
 * no engine.  A claim lasts until unclaim, or until the engine went
 * away.  on_revoke: cb(priv, key, etag) when another process wants the
 * object; unclaim it once this process's fetches of it are in the cache
 * (without cb, unclaimed at once).
 */
uint64_t bfs_engine_claim_bytes(const struct bfs_engine *e);
struct tevent_req *bfs_engine_claim_send(TALLOC_CTX *mem_ctx,
					 struct tevent_context *ev,
					 struct bfs_engine *e, const char *key,
					 const char *etag, uint64_t size);
int bfs_engine_claim_recv(struct tevent_req *req);
int bfs_engine_unclaim(struct bfs_engine *e, const char *key,
		       const char *etag);
void bfs_engine_on_revoke(struct bfs_engine *e,
			  void (*cb)(void *priv, const char *key,
				     const char *etag),
			  void *priv);

/*
 * Ask the engine to list directory prefix from S3 into the index (no
 * answer): a listing past its TTL is served as the index has it, and
 * revalidated meanwhile, once for every smbd that finds it stale.
 */
int bfs_engine_list(struct bfs_engine *e, const char *prefix);

/* Readahead alone, for a sequential reader the cache serves (no answer). */
int bfs_engine_prefetch(struct bfs_engine *e, const struct bfs_engine_fetch *f);

/* The engine's counters, for bucketfs-ctl (blocking, timeout_ms). */
struct bfs_engine_state {
	pid_t pid;
	uint64_t pending, uploaded, failed, bytes;
	uint64_t fetches, fetched;	/* block GETs, bytes */
	uint64_t lent;			/* bytes smbds copied from its arena */
};
int bfs_engine_status(struct bfs_engine *e, unsigned timeout_ms,
		      struct bfs_engine_state *out);

#endif
