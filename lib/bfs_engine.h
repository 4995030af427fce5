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

/* The engine's counters, for bucketfs-ctl (blocking, timeout_ms). */
struct bfs_engine_state {
	pid_t pid;
	uint64_t pending, uploaded, failed, bytes;
};
int bfs_engine_status(struct bfs_engine *e, unsigned timeout_ms,
		      struct bfs_engine_state *out);

#endif
