/*
 * How a read of an open file gets its bytes (see bfs_read_plan.h).
 */
#include "bfs_read_plan.h"

#include "bfs_claim.h"
#include "bfs_engine.h"
#include "bfs_file.h"
#include "bfs_reader.h"
#include "bfs_share.h"

#ifndef MIN
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#endif
#ifndef MAX
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#endif

void bfs_read_plan(struct bfs_conn *bc, struct bfs_fh *fh,
		   struct bfs_reader *reader, bool engine_loop, uint64_t off,
		   size_t n, struct bfs_read_plan *p)
{
	bool sequential, claim_ahead = false;
	uint64_t ahead = 0, ahead_n = 0;

	bfs_follow_config(bc);
	/*
	 * Sequential reading (this read starts where the last one ended, or
	 * at the start): fetch the blocks after it before they are asked for.
	 */
	sequential = off == fh->next_off;
	fh->next_off = off + n;
	if (sequential && bc->readahead > 0) {
		uint64_t blocks = (fh->obj.size + bc->block_size - 1) /
				  bc->block_size;

		ahead = (fh->next_off + bc->block_size - 1) / bc->block_size;
		ahead_n = ahead < blocks ? MIN((uint64_t)bc->readahead,
					       blocks - ahead) : 0;
		/*
		 * Nothing to ask when the window's far end is on disk: the
		 * reader fills in order, so the blocks before it are too (a
		 * gap is fetched on its read).  Hot reads of a small file
		 * asked the engine once each for blocks past its end.
		 */
		if (ahead_n > 0 &&
		    bfs_reader_all_cached(reader, &fh->obj,
					  (ahead + ahead_n - 1) *
					  (uint64_t)bc->block_size, 1)) {
			ahead_n = 0;
		}
	}
	p->engine = bc->engine != NULL && engine_loop &&
		    bfs_engine_pid(bc->engine) != 0 && fh->obj.etag != NULL;
	if (p->engine && bfs_claim_reads_here(bc, fh, &claim_ahead)) {
		if (claim_ahead || bfs_reader_holds(reader, &fh->obj, off, n)) {
			/* This process's to fetch (lib/bfs_claim.h). */
			p->engine = false;
		}
		/* Given back: what we began is ours to finish, the rest
		 * the engine's, without readahead over ours in flight. */
		ahead_n = claim_ahead ? ahead_n : 0;
	}
	if (p->engine && ahead_n > 0) {
		fh->lend_until = MAX(fh->lend_until, ahead + ahead_n);
	}
	p->ahead = ahead;
	p->ahead_n = ahead_n;

	if (p->engine && bfs_claim_worth_asking(bc, fh)) {
		/* A large object's first miss: may we fetch it ourselves? */
		p->fallback = BFS_READ_CLAIM;
	} else if (p->engine) {
		/* A miss: the engine fetches it, once for every smbd. */
		p->fallback = BFS_READ_ENGINE;
	} else {
		p->fallback = BFS_READ_HERE;
	}
	/*
	 * All on disk, and not blocks the engine may still be lending this
	 * reader from memory: copied from the cache.
	 */
	p->way = (!p->engine || !bfs_engine_lends(bc->engine) ||
		  off / bc->block_size >= fh->lend_until) &&
			 bfs_reader_all_cached(reader, &fh->obj, off, n) ?
		 BFS_READ_CACHED : p->fallback;
}

void bfs_read_plan_ahead(struct bfs_conn *bc, struct bfs_fh *fh,
			 struct bfs_reader *reader,
			 const struct bfs_read_plan *p)
{
	if (p->ahead_n == 0) {
		return;
	}
	if (p->engine) {
		struct bfs_engine_fetch ef = {
			.key = fh->obj.key, .etag = fh->obj.etag,
			.size = fh->obj.size, .ahead = p->ahead,
			.ahead_n = p->ahead_n,
		};
		(void)bfs_engine_prefetch(bc->engine, &ef);
	} else {
		bfs_reader_prefetch(reader, &fh->obj, p->ahead, p->ahead_n);
	}
}
