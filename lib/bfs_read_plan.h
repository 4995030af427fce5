/*
 * How a read of an open file gets its bytes, decided before any is
 * fetched; the module's pread_send carries the plan out on smbd's loop
 * (the copy in one of smbd's worker threads, the asks as tevent requests).
 *
 * A range all on disk is copied from the cache (unless the engine may
 * still be lending the blocks it fetched for this reader from memory).
 * Else, with an engine serving this loop, the engine fetches it once for
 * every smbd, but a large object's first miss asks for a claim first
 * (bfs_claim.h), and a claimed object's reads are fetched here.  Without
 * an engine this process fetches for itself.  A reader that reads on from
 * where it stopped gets up to 'bucketfs:readahead' blocks fetched ahead,
 * by whoever fetches its misses.
 */
#ifndef BUCKETFS_BFS_READ_PLAN_H
#define BUCKETFS_BFS_READ_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bfs_conn;
struct bfs_fh;
struct bfs_reader;

enum bfs_read_way {
	BFS_READ_CACHED,	/* all on disk: copy it */
	BFS_READ_CLAIM,		/* ask the engine for a claim of the object */
	BFS_READ_ENGINE,	/* the engine fetches it */
	BFS_READ_HERE,		/* this process's reader fetches it */
};

struct bfs_read_plan {
	enum bfs_read_way way;
	/* Where a CACHED copy that cannot start goes instead (never CACHED). */
	enum bfs_read_way fallback;
	/* The engine serves this read's misses and its readahead. */
	bool engine;
	/* Blocks to fetch ahead: ahead_n of them from block `ahead`. */
	uint64_t ahead, ahead_n;
};

/*
 * Plan a read of n bytes at off of fh through reader (this loop's);
 * engine_loop: the read runs on the loop the share's engine connection
 * lives on.  Notes the read in fh (where a sequential reader goes on
 * from, how far the engine may lend).
 */
void bfs_read_plan(struct bfs_conn *bc, struct bfs_fh *fh,
		   struct bfs_reader *reader, bool engine_loop, uint64_t off,
		   size_t n, struct bfs_read_plan *p);

/*
 * Start the plan's readahead once its read is under way (CACHED or HERE;
 * an engine or claim read carries its own).
 */
void bfs_read_plan_ahead(struct bfs_conn *bc, struct bfs_fh *fh,
			 struct bfs_reader *reader,
			 const struct bfs_read_plan *p);

#endif
