/*
 * The extent cache: object bytes on local disk, in blocks.
 *
 * One sparse file per object version (bucket, key, ETag, block size: the
 * cache identity), and in LMDB one record per present block.  A block's
 * record is committed only after its bytes are written, and removed before
 * its bytes are punched out, so a block the index calls present is on disk.
 * Every fill gets a new generation number; a reader checks the generation
 * before and after copying the bytes, so a block evicted (or refilled) while
 * it was being read is never served: the read falls back to S3 instead.
 *
 * Size is held by eviction in the same transaction that adds a block.
 * Eviction is segmented LRU: a new block enters on probation, a block read
 * again is promoted to the protected segment (at most 3/4 of the cache);
 * victims come from probation first, so one pass over a dataset larger than
 * the cache does not flush the blocks that are used again and again.
 */
#ifndef BUCKETFS_BFS_CACHE_H
#define BUCKETFS_BFS_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <talloc.h>

struct bfs_cache_id {
	uint8_t b[16];
};

struct bfs_cache_counters {
	uint64_t hits;	     /* blocks served from disk */
	uint64_t misses;     /* blocks asked for and not present */
	uint64_t raced;	     /* reads dropped: evicted while reading */
	uint64_t fills;	     /* blocks written by this process */
	uint64_t evictions;  /* blocks evicted by this process */
	uint64_t fill_errors; /* fills refused (disk full, I/O error) */
};

struct bfs_cache;

/*
 * A block's record in LMDB, in native byte order (a cache belongs to one
 * host).  Exposed with its decoder for tests and fuzzing: every record
 * read from the database goes through bfs_cache_block_decode, so one that
 * a crash, a bad disk or a foreign program left malformed is refused
 * (as if the block were absent, and dropped by fsck), never believed.
 */
struct bfs_block_rec {
	uint64_t gen;	/* the fill that wrote the bytes; readers compare it */
	uint64_t tick;	/* last use: the place in the eviction order */
	uint32_t len;	/* bytes present: the block size, less at the end */
	uint8_t seg;	/* eviction segment: 0 probation, 1 protected */
	uint8_t pad[3]; /* zero */
};

/* 0 with *rec, or EBADMSG (wrong size, unknown segment, bad length). */
int bfs_cache_block_decode(const void *buf, size_t len,
			   struct bfs_block_rec *rec);

/*
 * Open the cache in dir (created 0700).  limit: bytes of block data to
 * keep; block_size: bytes per block.
 */
int bfs_cache_open(TALLOC_CTX *mem_ctx, const char *dir, uint64_t limit,
		   uint32_t block_size, struct bfs_cache **out,
		   const char **why);

uint32_t bfs_cache_block_size(const struct bfs_cache *c);

/* Change the limit (a reloaded smb.conf); eviction follows at the next fill. */
void bfs_cache_set_limit(struct bfs_cache *c, uint64_t limit);

/* The identity of one object version's bytes. */
void bfs_cache_make_id(const char *bucket, const char *key, const char *etag,
		       uint32_t block_size, struct bfs_cache_id *id);

/*
 * An id no other call gives (nor bfs_cache_make_id): for an object read
 * without an ETag, whose version nobody can name.  Under the id of its
 * name with an empty ETag, every such open found the bytes the first one
 * cached, whichever version S3 had since.
 */
void bfs_cache_make_private_id(struct bfs_cache_id *id);

/*
 * Copy n bytes at off within block blk into buf if the block is present:
 * 0 with *got (short at the end of the block), ENOENT if not present or
 * evicted meanwhile, or another errno.
 */
int bfs_cache_read(struct bfs_cache *c, const struct bfs_cache_id *id,
		   uint64_t blk, uint32_t off, uint32_t n, void *buf,
		   uint32_t *got);

/*
 * bfs_cache_read for any thread: its own transactions, and fd, the object's
 * cache file, lent by bfs_cache_lend_fd() on the owning thread (which may
 * have the rights to open it that a worker thread lacks); it does not
 * record the read for eviction: the owning thread calls
 * bfs_cache_note_read() after.
 */
int bfs_cache_read_mt(struct bfs_cache *c, int fd,
		      const struct bfs_cache_id *id, uint64_t blk, uint32_t off,
		      uint32_t n, void *buf, uint32_t *got);
/*
 * Lend this process's descriptor of the object's cache file to another
 * thread, for bfs_cache_read_mt, until bfs_cache_return_fd(); or -1.
 * open: open the file if it is not open (that needs the rights to it);
 * else only a descriptor held open already, so a caller that must change
 * user to open a cache file can skip that on the hot path.  No system call
 * beyond the check that the file still has a name: the descriptor stays
 * open, and its slot unused, while lent.  -1 also when half the table is
 * lent (the caller then reads on its own thread).
 */
int bfs_cache_lend_fd(struct bfs_cache *c, const struct bfs_cache_id *id,
		      bool open);
void bfs_cache_return_fd(struct bfs_cache *c, int fd);
void bfs_cache_note_read(struct bfs_cache *c, const struct bfs_cache_id *id,
			 uint64_t blk);

/* Is blk present now?  (A hint: it may be gone a moment later.) */
bool bfs_cache_present(struct bfs_cache *c, const struct bfs_cache_id *id,
		       uint64_t blk);

/*
 * Store len bytes as blocks blk, blk+1, ... (all full but the last, which
 * may be an object's short tail).  0, or ENOSPC (disk full, or larger than
 * the cache), or another errno; the caller serves its bytes from memory
 * either way.
 */
int bfs_cache_fill(struct bfs_cache *c, const struct bfs_cache_id *id,
		   uint64_t blk, const void *data, uint64_t len);

/*
 * The same, done by the cache's fill thread so the caller's event loop does
 * not wait for the disk.  data must stay valid and unchanged until
 * bfs_cache_fill_done(job); then bfs_cache_fill_release(job).  If data is
 * 4 KiB-aligned and readable up to the next 4 KiB boundary past len, and
 * len is 1 MiB or more, the thread writes it around the page cache; shorter
 * fills (small objects, read again next epoch) go through it.  NULL when
 * the queue is full (the disk is behind): then nothing is cached.
 */
struct bfs_fill_job;
struct bfs_fill_job *bfs_cache_fill_queue(struct bfs_cache *c,
					  const struct bfs_cache_id *id,
					  uint64_t blk, const void *data,
					  uint64_t len);
bool bfs_cache_fill_done(const struct bfs_fill_job *job);
/*
 * The fill thread writes through the page cache, not around it: for the
 * engine, whose fills the smbd that asked reads at once.
 */
void bfs_cache_fill_through_page_cache(struct bfs_cache *c);
/*
 * Queue up to bytes of fills (never fewer than the default, 32 MiB).  For
 * the engine, whose queued fills are its fetch arena's slots: memory the
 * arena bounds already.  With the default, a burst of fetches faster than
 * one thread writes them overflowed the queue, and the engine wrote the
 * rest on its loop, answering nobody meanwhile (DEVELOPERS.md).
 */
void bfs_cache_fill_queue_max(struct bfs_cache *c, uint64_t bytes);
/*
 * The fill thread copies each fill into a buffer of its own, one huge
 * page at a time, before it writes it around the page cache: for fills from shared
 * memory in 4 KiB pages (the engine's arena, where the host gives shared
 * memory no huge pages), whose O_DIRECT writes cost ~4 times the CPU of
 * the copy and a write from huge pages together (DEVELOPERS.md).  Set
 * before the first fill.
 */
void bfs_cache_fill_bounce(struct bfs_cache *c);
void bfs_cache_fill_release(struct bfs_fill_job *job);
/* Wait until every queued fill is done. */
void bfs_cache_fill_drain(struct bfs_cache *c);

/* Write pending LRU updates (done by itself every second / 256 reads). */
int bfs_cache_flush(struct bfs_cache *c);

/* Bytes held and blocks present, as recorded in the index. */
int bfs_cache_usage(struct bfs_cache *c, uint64_t *used, uint64_t *blocks);

const struct bfs_cache_counters *bfs_cache_counters(const struct bfs_cache *c);

/*
 * Drop every cached block of the given object versions (records, eviction
 * entries, files): what bucketfs-ctl invalidate does.  *dropped counts
 * the blocks.
 */
int bfs_cache_forget(struct bfs_cache *c, const struct bfs_cache_id *ids,
		     size_t n, uint64_t *dropped);

struct bfs_cache_fsck {
	uint64_t blocks;	/* block records looked at */
	uint64_t unindexed_versions; /* object versions the index does not
				      * name (replaced or deleted objects) */
	uint64_t unindexed_blocks; /* their block records */
	uint64_t beyond_size;	/* records past their object's size */
	uint64_t bad_blocks;	/* records whose bytes are not in their file */
	uint64_t lru_missing;	/* records the eviction order had lost */
	uint64_t lru_orphans;	/* eviction entries without a record */
	uint64_t used_before, used_after; /* the byte count kept for the limit */
	uint64_t orphan_files;	/* cache files without any record */
};

/* An object version the index names (see bfs_cache_make_id), its size. */
struct bfs_cache_ref {
	struct bfs_cache_id id;
	uint64_t size;
};

/*
 * Check the block records against the cache files and the eviction order,
 * under the fill lock (fills and evictions of every process wait), and
 * with repair fix what is wrong: a record whose bytes are missing is
 * dropped (the block is fetched again when read), lost eviction entries
 * are restored, orphan entries and files removed, the byte count redone.
 * With refs (the versions the metadata index names; NULL: no such check),
 * blocks of other versions and blocks past a version's size are dropped
 * too.
 */
int bfs_cache_check(struct bfs_cache *c, bool repair,
		    const struct bfs_cache_ref *refs, size_t n_refs,
		    struct bfs_cache_fsck *r);

/*
 * What bfs_cache_open repaired because a process had died with the cache
 * open (see bfs_cache_register in the .c), or NULL if it found none.
 */
const struct bfs_cache_fsck *bfs_cache_recovery(const struct bfs_cache *c);

#endif
