/*
 * Reads of object bytes through the extent cache.
 *
 * A read is split into blocks.  Cached blocks are copied from disk at once;
 * each missing block becomes one S3 range GET (If-Match on the ETag the
 * object was opened with), shared by every read in this process that wants
 * the same block while it is in flight, then written to the cache.  A
 * prefetch starts such fetches for blocks nobody waits for yet (readahead).
 *
 * One reader belongs to one tevent context and S3 client.  Without a cache
 * (NULL) reads go to S3 block by block all the same.
 */
#ifndef BUCKETFS_BFS_READER_H
#define BUCKETFS_BFS_READER_H

#include "bfs_cache.h"
#include "s3_ops.h"

struct bfs_object {
	const char *key;
	const char *etag;
	uint64_t size;
	struct bfs_cache_id id;
};

struct bfs_reader_counters {
	uint64_t block_fetches;	  /* S3 GETs started */
	uint64_t fetched_bytes;
	uint64_t coalesced;	  /* block waits served by a fetch in flight */
	uint64_t prefetches;	  /* fetches started by readahead */
	uint64_t cache_hits;	  /* blocks copied from the cache */
	uint64_t mapped_bytes;	  /* fetch buffers mapped now */
	uint64_t mapped_peak;	  /* and at most, since the start */
	uint64_t mem_waits;	  /* fetches that waited for a buffer */
	uint64_t lent_bytes;	  /* lent from the arena (bfs_read_lend_send) */
};

struct bfs_reader;

/*
 * fill_thread: write fetched blocks to the cache from the cache's fill
 * thread (for a reader on a busy event loop), or at once (a private loop
 * that only runs while a read waits).
 */
struct bfs_reader *bfs_reader_new(TALLOC_CTX *mem_ctx,
				  struct tevent_context *ev,
				  struct s3_client *s3, struct bfs_cache *cache,
				  uint32_t block_size, bool fill_thread);

/*
 * Read [off, off+len) of obj into buf (clamped to obj->size).  buf must
 * stay valid until the request completes or is freed.  ESTALE: the object
 * changed in S3 since obj->etag was indexed.  buf NULL: only bring the
 * blocks into the cache (the engine, for readers in other processes);
 * with a reader that fills the cache at once, they are there when the
 * request completes.
 */
struct tevent_req *bfs_read_send(TALLOC_CTX *mem_ctx, struct tevent_context *ev,
				 struct bfs_reader *r,
				 const struct bfs_object *obj, uint64_t off,
				 size_t len, void *buf);
int bfs_read_recv(struct tevent_req *req, size_t *nread, struct s3_status *st);

/*
 * At most bytes of fetch buffers (in flight, kept, spare; 0: no limit,
 * the default): a read's fetch beyond it waits for a buffer to be
 * freed, readahead beyond it is not started.  Passed by one buffer only
 * when no GET is in flight.
 */
void bfs_reader_set_memory(struct bfs_reader *r, uint64_t bytes);

/* Start fetching blocks [first, first+n) that are neither cached nor in
 * flight.  Their bytes only go to the cache.  No-op without a cache. */
void bfs_reader_prefetch(struct bfs_reader *r, const struct bfs_object *obj,
			 uint64_t first, unsigned n);

/*
 * For the engine's claims (bfs_proto.h CLAIM): has_object, whether r holds
 * a fetch of object id (in flight, or kept in memory); let_go, fetch no
 * more of id ahead of reads (its readahead window is dropped), and say
 * whether fetches of id are still in flight or being written to the cache
 * (ask again later: the loop has no callback for it).
 */
bool bfs_reader_has_object(const struct bfs_reader *r,
			   const struct bfs_cache_id *id);
bool bfs_reader_let_go(struct bfs_reader *r, const struct bfs_cache_id *id);
/* Whether every block of [off, off+len) of obj is in a fetch of r (in
 * flight or kept) or in the cache: a read of it starts no GET. */
bool bfs_reader_holds(struct bfs_reader *r, const struct bfs_object *obj,
		      uint64_t off, size_t len);

/*
 * Served from disk alone: a caller with worker threads (smbd's pool) can
 * copy cached bytes off its event loop.  bfs_reader_all_cached() says if
 * every block of [off, off+len) is in the cache now; bfs_copy_cached() is
 * the thread-safe copy from fd (bfs_cache_lend_fd()): 0, or ENOENT if a
 * block went meanwhile: then read normally; bfs_reader_cached_done()
 * records it, on the reader's thread.
 */
bool bfs_reader_all_cached(struct bfs_reader *r, const struct bfs_object *obj,
			   uint64_t off, size_t len);
int bfs_copy_cached(struct bfs_cache *c, int fd, const struct bfs_cache_id *id,
		    uint32_t block_size, uint64_t off, size_t len, void *buf);
void bfs_reader_cached_done(struct bfs_reader *r, const struct bfs_object *obj,
			    uint64_t off, size_t len);
struct bfs_cache *bfs_reader_cache(const struct bfs_reader *r);
uint32_t bfs_reader_block_size(const struct bfs_reader *r);

const struct bfs_reader_counters *bfs_reader_counters(const struct bfs_reader *r);

/*
 * Tell fn the user metadata (x-amz-meta-*) an object's first block came
 * with, once per fetch of that block, with the key and the ETag it was
 * fetched at: how the engine learns times other S3 tools stored, which
 * listings do not carry.
 */
typedef void (*bfs_reader_meta_fn)(void *priv, const char *key,
				   const char *etag, const struct s3_kv *meta,
				   size_t n);
void bfs_reader_on_meta(struct bfs_reader *r, bfs_reader_meta_fn fn,
			void *priv);

/*
 * Fill the cache from the cache's fill thread and answer a read that only
 * wants blocks cached (buf NULL) once they are on disk: the engine's,
 * whose loop would otherwise copy every fetched byte into the cache
 * itself between network reads.  through_page_cache: fill with buffered
 * writes, for readers that will read the blocks back at once; else with
 * O_DIRECT (readers are lent the bytes instead, bfs_read_lend_send).
 */
void bfs_reader_answer_after_fill(struct bfs_reader *r,
				  bool through_page_cache);

/*
 * Take fetch buffers from arena a (bfs_arena.h), whose slots must be
 * bfs_reader_buf_size() bytes, so that their bytes can be lent to other
 * processes.  Before any read.  0, EINVAL, ENOMEM.  a must outlive r.
 */
struct bfs_arena;
int bfs_reader_use_arena(struct bfs_reader *r, struct bfs_arena *a);
size_t bfs_reader_buf_size(const struct bfs_reader *r);

/*
 * Like bfs_read_send with buf NULL, but where one fetch in the arena holds
 * all of [off, off+len), answered as soon as its GET is done (or at once
 * if it was done), not after the fill: recv gives the bytes' offset in
 * the arena and a pin (a talloc child of mem_ctx) that keeps them there
 * until it is freed.  Otherwise (no arena, the blocks cached already or
 * in two fetches, the fetch's buffer not the arena's) *pin is NULL and
 * the blocks are in the cache, as after bfs_read_send.  Errors as
 * bfs_read_recv's.
 */
struct bfs_pin;
struct tevent_req *bfs_read_lend_send(TALLOC_CTX *mem_ctx,
				      struct tevent_context *ev,
				      struct bfs_reader *r,
				      const struct bfs_object *obj,
				      uint64_t off, size_t len);
int bfs_read_lend_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		       uint64_t *arena_off, struct bfs_pin **pin,
		       struct s3_status *st);

#endif
