/*
 * Block reads, coalesced fetches, readahead.
 *
 * Ownership: a fetch belongs to the reader (it finishes filling the cache
 * even if every read waiting for it went away); a waiter belongs to its read
 * request and unhooks itself from the fetch when freed.
 */
#include "bfs_reader.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "bfs_arena.h"
#include "bfs_list.h"

/*
 * Readahead may not hold more than this many fetches (of up to
 * BFS_FETCH_MAX_BLOCKS blocks) in memory at once, per reader.
 */
#define BFS_MAX_PREFETCHES 8
/*
 * Consecutive missing blocks are fetched together, up to this many per GET:
 * fewer, larger requests cost the S3 server (and us) less per byte.
 */
#define BFS_FETCH_MAX_BLOCKS 8
/*
 * Fetched bytes kept in memory after they are in the cache, until read:
 * a sequential reader then copies them from memory, not from the disk
 * (the cache writes around the page cache).
 */
#define BFS_KEEP_BYTES (64ULL << 20)
/*
 * Fetch buffers are reused: a fresh multi-megabyte allocation is fresh
 * pages, and faulting and zeroing them cost as much CPU as the copy.
 */
#define BFS_SPARE_BUFFERS 4
/*
 * Fetch buffers of at least this size are mapped on its alignment and
 * asked for transparent huge pages: an 8 MiB buffer is then 4 page faults,
 * not 2,048 (on a VM a fault costs several microseconds), and the copies
 * into and out of it miss the TLB less.
 */
#define BFS_HUGE_PAGE (2UL << 20)

struct bfs_fetch;

/*
 * A mapping of its own, or a slot of the reader's arena (page-aligned
 * either way, so O_DIRECT can write from it).
 */
struct bfs_buf {
	struct bfs_reader *r; /* whose fetch memory it counts in */
	uint8_t *data;
	size_t len;
	bool in_arena;
	uint64_t arena_off;
};

/* Bytes of a fetch lent to another process: the fetch stays meanwhile. */
struct bfs_pin {
	struct bfs_pin *prev, *next;
	struct bfs_fetch *f; /* NULL once the fetch went (the reader did) */
};

struct bfs_waiter {
	struct bfs_waiter *prev, *next;
	struct bfs_fetch *f;
	struct tevent_req *req; /* the read this part belongs to */
	uint64_t off;		/* within the fetch's data */
	uint32_t n;
	uint8_t *dst;
	bool on_fill;		/* in f->fill_waiters, not f->waiters */
	bool lend;		/* wants the bytes lent (bfs_read_lend_send) */
};

/* One GET: blocks [first, first + nblk) of one object version. */
struct bfs_fetch {
	struct bfs_fetch *prev, *next;
	struct bfs_reader *r;
	struct bfs_cache_id id;
	uint64_t first;
	unsigned nblk;
	uint8_t *data;		/* buf's bytes */
	struct bfs_buf *buf;	/* a full-size buffer (see bfs_buf_get) */
	uint64_t len;
	bool prefetch;
	/*
	 * Of an object without an ETag: its bytes are the reads' waiting for
	 * them and go nowhere else (bfs_reader_cache_for).
	 */
	bool uncached;
	/*
	 * Waiting for fetch memory (bfs_reader_set_memory): its GET starts
	 * once a buffer is free; key and etag are copies (owned here).
	 */
	bool queued;
	char *key, *etag;
	bool answered; /* its GET is over: no request writes into buf */
	struct bfs_waiter *waiters;
	/*
	 * Arrived, and being written to the cache by the fill thread: reads
	 * of these blocks copy from data meanwhile.
	 */
	bool complete;
	struct bfs_fill_job *job;
	uint64_t consumed; /* bytes of data copied to reads */
	/* Reads that only want the blocks cached (dst NULL), answered once
	 * the fill thread wrote them (bfs_reader_answer_after_fill). */
	struct bfs_waiter *fill_waiters;
	struct bfs_pin *pins;	/* lent: not freed, its slot not reused */
};

struct bfs_reader {
	struct tevent_context *ev;
	struct s3_client *s3;
	struct bfs_cache *cache;
	uint32_t block_size;
	struct bfs_fetch *fetches;
	unsigned n_prefetches;
	bool fill_thread; /* write the cache from the fill thread */
	uint64_t kept_bytes; /* data of complete fetches */
	uint64_t mem_limit;  /* fetch buffers, bytes; 0: no limit */
	bool dying;	     /* being freed: start nothing */
	struct bfs_buf *spare[BFS_SPARE_BUFFERS];
	unsigned n_spare;
	/*
	 * The last readahead window asked for: blocks [first, first + n) of
	 * obj (key and etag copied, owned here).  A prefetch that completes
	 * refills it, so the S3 server is not left idle while the reader
	 * waits for an older fetch.
	 */
	struct bfs_object window_obj;
	char *window_key, *window_etag;
	uint64_t window_first;
	unsigned window_n;
	struct bfs_reader_counters counters;
	bfs_reader_meta_fn on_meta;	/* told an object's user metadata */
	void *on_meta_priv;
	bool answer_after_fill;	/* see bfs_reader_answer_after_fill */
	struct tevent_timer *fill_poll;
	struct bfs_arena *arena; /* fetch buffers others see; NULL: none */
	struct tevent_immediate *sweep_im; /* a sweep after pins went */
	bool sweep_due;
};

struct bfs_read_state {
	unsigned pending; /* blocks still to arrive */
	size_t nread;
	struct s3_status st;
	/* bfs_read_lend_send: the bytes' place in the arena, and the pin
	 * that keeps them there (NULL: they are in the cache instead). */
	uint64_t lend_off;
	struct bfs_pin *pin;
};

static int bfs_reader_destructor(struct bfs_reader *r)
{
	r->dying = true;
	/* The fill thread may still read fetched bytes: let it finish. */
	if (r->cache != NULL) {
		bfs_cache_fill_drain(r->cache);
	}
	return 0;
}

struct bfs_reader *bfs_reader_new(TALLOC_CTX *mem_ctx,
				  struct tevent_context *ev,
				  struct s3_client *s3, struct bfs_cache *cache,
				  uint32_t block_size, bool fill_thread)
{
	struct bfs_reader *r = talloc_zero(mem_ctx, struct bfs_reader);

	if (r == NULL) {
		return NULL;
	}
	r->ev = ev;
	r->s3 = s3;
	r->cache = cache;
	r->block_size = block_size;
	r->fill_thread = fill_thread;
	talloc_set_destructor(r, bfs_reader_destructor);
	return r;
}

/* Complete, its bytes in the cache and lent to nobody: it may go. */
static bool bfs_fetch_disposable(const struct bfs_fetch *f)
{
	return f->complete && f->pins == NULL &&
	       (f->job == NULL || bfs_cache_fill_done(f->job));
}

static void bfs_reader_run_queue(struct bfs_reader *r);

/*
 * Free complete fetches whose bytes are in the cache and were all read,
 * then, while over the memory budget, the newest others (the list has the
 * newest at its head): a sequential reader reads the oldest next, so those
 * stay in memory and the ones furthest ahead are read from the cache.
 */
static void bfs_reader_sweep(struct bfs_reader *r)
{
	struct bfs_fetch *f, *next;
	uint64_t keep = BFS_KEEP_BYTES;
	bool queued = false;

	for (f = r->fetches; f != NULL; f = next) {
		next = f->next;
		queued |= f->queued;
		if (bfs_fetch_disposable(f) && f->consumed >= f->len) {
			talloc_free(f);
		}
	}
	/* Under a memory limit, kept bytes get half of it, and none while
	 * fetches wait for a buffer: the cache has those bytes. */
	if (r->mem_limit != 0 && (keep > r->mem_limit / 2 ||
				  r->arena != NULL)) {
		/* With an arena, kept bytes are what other processes copy
		 * from instead of the cache file: keep up to half of it. */
		keep = r->mem_limit / 2;
	}
	if (queued) {
		keep = 0;
	}
	for (f = r->fetches; f != NULL && r->kept_bytes > keep; f = next) {
		next = f->next;
		if (bfs_fetch_disposable(f)) {
			talloc_free(f);
		}
	}
	if (queued && !r->dying) {
		/* Buffers went: fetches waiting for one may start. */
		bfs_reader_run_queue(r);
	}
}

void bfs_reader_set_memory(struct bfs_reader *r, uint64_t bytes)
{
	r->mem_limit = bytes;
	bfs_reader_sweep(r);
}

const struct bfs_reader_counters *bfs_reader_counters(const struct bfs_reader *r)
{
	return &r->counters;
}

/* ---- fetches ----------------------------------------------------------- */

/*
 * Room for BFS_FETCH_MAX_BLOCKS blocks.  The cache pads a partial last
 * block to 4 KiB when it writes with O_DIRECT; blocks are multiples of
 * 4 KiB, so that padding is inside the room of a whole block.
 */
static size_t bfs_buf_size(const struct bfs_reader *r)
{
	size_t n = (size_t)r->block_size * BFS_FETCH_MAX_BLOCKS;

	if (n >= BFS_HUGE_PAGE) {
		return (n + BFS_HUGE_PAGE - 1) & ~(BFS_HUGE_PAGE - 1);
	}
	return (n + 4095) & ~(size_t)4095;
}

static int bfs_buf_destructor(struct bfs_buf *b)
{
	if (b->in_arena) {
		bfs_arena_give(b->r->arena, b->arena_off);
	} else {
		munmap(b->data, b->len);
	}
	b->r->counters.mapped_bytes -= b->len;
	return 0;
}

/* Account for b, mapped or taken from the arena. */
static struct bfs_buf *bfs_buf_count(struct bfs_reader *r, struct bfs_buf *b)
{
	r->counters.mapped_bytes += b->len;
	if (r->counters.mapped_bytes > r->counters.mapped_peak) {
		r->counters.mapped_peak = r->counters.mapped_bytes;
	}
	talloc_set_destructor(b, bfs_buf_destructor);
	return b;
}

/*
 * Map len bytes; a length in huge pages is mapped on a huge page boundary
 * (a larger mapping, trimmed) and advised to use them.
 */
static struct bfs_buf *bfs_buf_new(struct bfs_reader *r, TALLOC_CTX *owner,
				   size_t len)
{
	struct bfs_buf *b = talloc_zero(owner, struct bfs_buf);
	size_t align = len % BFS_HUGE_PAGE == 0 ? BFS_HUGE_PAGE : 0;
	uint8_t *p, *start;

	if (b == NULL) {
		return NULL;
	}
	b->r = r;
	b->len = len;
	if (r->arena != NULL && len == bfs_arena_slot_size(r->arena)) {
		b->data = bfs_arena_take(r->arena, &b->arena_off);
		if (b->data != NULL) {
			b->in_arena = true;
			return bfs_buf_count(r, b);
		}
		/* All lent or kept: a mapping of its own, not lent. */
	}
	p = mmap(NULL, len + align, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		talloc_free(b);
		return NULL;
	}
	start = p;
	if (align != 0) {
		start = (uint8_t *)(((uintptr_t)p + align - 1) & ~(align - 1));
		if (start > p) {
			munmap(p, (size_t)(start - p));
		}
		if (start + len < p + len + align) {
			munmap(start + len, (size_t)(p + len + align -
						     (start + len)));
		}
		/* Only advice: without huge pages it works all the same. */
		(void)madvise(start, len, MADV_HUGEPAGE);
	}
	b->data = start;
	return bfs_buf_count(r, b);
}

static struct bfs_buf *bfs_buf_get(struct bfs_reader *r, TALLOC_CTX *owner)
{
	/* A free slot of the arena first: only its bytes can be lent. */
	if (r->n_spare > 0 &&
	    (r->arena == NULL || bfs_arena_free_slots(r->arena) == 0)) {
		return talloc_steal(owner, r->spare[--r->n_spare]);
	}
	return bfs_buf_new(r, owner, bfs_buf_size(r));
}

/*
 * Keep buf as a spare: false if there are enough (it goes with its fetch),
 * or if the reader has an arena, whose free slots are the spares (one
 * mapped beside it goes, so that the memory is the arena's again).
 */
static bool bfs_buf_put(struct bfs_reader *r, struct bfs_buf *buf)
{
	if (r->arena == NULL && r->n_spare < BFS_SPARE_BUFFERS) {
		r->spare[r->n_spare++] = talloc_steal(r, buf);
		return true;
	}
	return false;
}

static void bfs_fetch_done(struct tevent_req *subreq);
static void bfs_wait_for_fill(struct bfs_reader *r, struct bfs_fetch *f,
			      struct bfs_waiter *w);
static void bfs_reader_run_queue(struct bfs_reader *r);
static void bfs_read_part_done(struct tevent_req *req, int err,
			       const struct s3_status *st);

static int bfs_fetch_destructor(struct bfs_fetch *f)
{
	struct bfs_waiter *w;
	struct bfs_pin *p;

	/* Only as the reader goes: pinned fetches are not disposable. */
	while ((p = f->pins) != NULL) {
		BFS_LIST_REMOVE(f->pins, p);
		p->f = NULL;
	}

	BFS_LIST_REMOVE(f->r->fetches, f);
	if (f->prefetch && !f->complete) {
		f->r->n_prefetches--;
	}
	if (f->complete) {
		f->r->kept_bytes -= f->len;
	}
	if (f->job != NULL) {
		/* Only after the thread is done with our bytes. */
		if (!bfs_cache_fill_done(f->job)) {
			bfs_cache_fill_drain(f->r->cache);
		}
		bfs_cache_fill_release(f->job);
	}
	if (f->buf != NULL && f->waiters == NULL &&
	    !bfs_buf_put(f->r, f->buf) && f->answered) {
		/* No GET writes into it any more: unmapped now, so that the
		 * queue below sees the memory free. */
		TALLOC_FREE(f->buf);
	}
	/* Reads still waiting (the reader is going away) fail. */
	while ((w = f->waiters) != NULL) {
		BFS_LIST_REMOVE(f->waiters, w);
		w->f = NULL;
		tevent_req_error(w->req, ECANCELED);
	}
	/* Their blocks are on disk once the fill is (drained above). */
	while ((w = f->fill_waiters) != NULL) {
		BFS_LIST_REMOVE(f->fill_waiters, w);
		w->f = NULL;
		bfs_read_part_done(w->req, 0, &(struct s3_status){0});
	}
	return 0;
}

static struct bfs_fetch *bfs_fetch_find(struct bfs_reader *r,
					const struct bfs_cache_id *id,
					uint64_t blk)
{
	struct bfs_fetch *f;

	for (f = r->fetches; f != NULL; f = f->next) {
		if (blk >= f->first && blk < f->first + f->nblk &&
		    memcmp(f->id.b, id->b, sizeof(id->b)) == 0) {
			return f;
		}
	}
	return NULL;
}

/*
 * The cache for obj's blocks: none for an object without an ETag.  Its
 * version has no name, so bytes cached of it would be served as whatever
 * S3 has later (a checkpoint read back as the version before it).
 */
static struct bfs_cache *bfs_reader_cache_for(const struct bfs_reader *r,
					      const struct bfs_object *obj)
{
	return obj->etag != NULL ? r->cache : NULL;
}

/* Should block blk be fetched: inside the object, not cached, not coming? */
static bool bfs_block_wanted(struct bfs_reader *r, const struct bfs_object *obj,
			     uint64_t blk)
{
	return blk * r->block_size < obj->size &&
	       bfs_fetch_find(r, &obj->id, blk) == NULL &&
	       (bfs_reader_cache_for(r, obj) == NULL ||
		!bfs_cache_present(r->cache, &obj->id, blk));
}

/* How many blocks from first (wanted itself) to fetch together, <= max. */
static unsigned bfs_run_length(struct bfs_reader *r,
			       const struct bfs_object *obj, uint64_t first,
			       unsigned max)
{
	unsigned n = 1;

	while (n < max && n < BFS_FETCH_MAX_BLOCKS &&
	       bfs_block_wanted(r, obj, first + n)) {
		n++;
	}
	return n;
}

/*
 * May one more fetch buffer be taken?  A spare one always; a new one
 * within the limit, or when no GET is in flight and no fetch is lent
 * (else nothing would ever free one: the bound is then passed by one
 * buffer).  A lent fetch frees memory soon: its borrower gives it back,
 * and that sweep starts the fetches waiting for memory.
 */
static bool bfs_mem_room(struct bfs_reader *r)
{
	const struct bfs_fetch *f;

	if (r->mem_limit == 0 || r->n_spare > 0 ||
	    r->counters.mapped_bytes + bfs_buf_size(r) <= r->mem_limit) {
		return true;
	}
	for (f = r->fetches; f != NULL; f = f->next) {
		if ((!f->complete && !f->queued) || f->pins != NULL) {
			return false;
		}
	}
	return true;
}

/* Send f's GET into its buffer: false (nothing sent) on no memory. */
static bool bfs_fetch_send(struct bfs_fetch *f, const char *key,
			   const char *etag)
{
	struct bfs_reader *r = f->r;
	struct tevent_req *subreq;

	f->buf = bfs_buf_get(r, f);
	if (f->buf == NULL) {
		return false;
	}
	f->data = f->buf->data;
	if (f->first == 0 && r->on_meta != NULL && f->key == NULL) {
		/* Kept to say whose metadata the answer carries. */
		f->key = talloc_strdup(f, key);
		f->etag = etag != NULL ? talloc_strdup(f, etag) : NULL;
		if (f->key == NULL || (etag != NULL && f->etag == NULL)) {
			TALLOC_FREE(f->key);
		}
	}
	subreq = s3_get_range_send(f, r->ev, r->s3, key,
				   f->first * r->block_size, (size_t)f->len,
				   f->data, etag);
	if (subreq == NULL) {
		return false;
	}
	tevent_req_set_callback(subreq, bfs_fetch_done, f);
	return true;
}

/*
 * Start queued fetches, oldest first (the list has the newest at its
 * head), while buffers may be taken.  Sweeping first frees kept bytes.
 */
static void bfs_reader_run_queue(struct bfs_reader *r)
{
	struct bfs_fetch *f, *oldest = NULL;

	for (;;) {
		for (f = r->fetches; f != NULL; f = f->next) {
			if (f->queued) {
				oldest = f;
			}
		}
		if (oldest == NULL || !bfs_mem_room(r)) {
			return;
		}
		oldest->queued = false;
		if (!bfs_fetch_send(oldest, oldest->key, oldest->etag)) {
			struct bfs_waiter *w;
			struct s3_status st = {.err = ENOMEM};

			while ((w = oldest->waiters) != NULL) {
				BFS_LIST_REMOVE(oldest->waiters, w);
				w->f = NULL;
				bfs_read_part_done(w->req, ENOMEM, &st);
			}
			talloc_free(oldest);
		}
		oldest = NULL;
	}
}

static struct bfs_fetch *bfs_fetch_start(struct bfs_reader *r,
					 const struct bfs_object *obj,
					 uint64_t first, unsigned nblk,
					 bool prefetch)
{
	uint64_t start = first * r->block_size;
	uint64_t end = start + (uint64_t)nblk * r->block_size;
	struct bfs_fetch *f;

	if (end > obj->size) {
		end = obj->size;
	}
	f = talloc_zero(r, struct bfs_fetch);
	if (f == NULL) {
		return NULL;
	}
	f->r = r;
	f->id = obj->id;
	f->first = first;
	f->nblk = nblk;
	f->len = end - start;
	f->prefetch = prefetch;
	f->uncached = bfs_reader_cache_for(r, obj) == NULL;
	if (!bfs_mem_room(r)) {
		if (prefetch) {
			/* Readahead waits for room: the next read asks again. */
			talloc_free(f);
			return NULL;
		}
		/* A read's own blocks wait for a buffer another one frees. */
		f->key = talloc_strdup(f, obj->key);
		f->etag = obj->etag != NULL ? talloc_strdup(f, obj->etag)
					    : NULL;
		if (f->key == NULL || (obj->etag != NULL && f->etag == NULL)) {
			talloc_free(f);
			return NULL;
		}
		f->queued = true;
		r->counters.mem_waits++;
	} else if (!bfs_fetch_send(f, obj->key, obj->etag)) {
		/* Page-aligned buffers: the cache may write with O_DIRECT. */
		talloc_free(f);
		return NULL;
	}
	BFS_LIST_ADD(r->fetches, f);
	talloc_set_destructor(f, bfs_fetch_destructor);
	if (prefetch) {
		r->n_prefetches++;
		r->counters.prefetches++;
	}
	r->counters.block_fetches++;
	return f;
}

static void bfs_read_part_done(struct tevent_req *req, int err,
			       const struct s3_status *st);
static void bfs_reader_fill_window(struct bfs_reader *r);

/* ---- lending ------------------------------------------------------------- */

static void bfs_reader_sweep_now(struct tevent_context *ev,
				 struct tevent_immediate *im,
				 void *private_data)
{
	struct bfs_reader *r = private_data;

	(void)ev;
	(void)im;
	r->sweep_due = false;
	bfs_reader_sweep(r);
}

/*
 * A pin goes with its lend's answer (the borrower is done, or went away).
 * Its fetch may go now, and a fetch queued for memory may start: a sweep,
 * from the loop, since a pin is also freed inside other talloc frees.
 */
static int bfs_pin_destructor(struct bfs_pin *p)
{
	struct bfs_reader *r;

	if (p->f == NULL) {
		return 0;
	}
	r = p->f->r;
	BFS_LIST_REMOVE(p->f->pins, p);
	p->f = NULL;
	if (!r->dying && !r->sweep_due && r->sweep_im != NULL) {
		r->sweep_due = true;
		tevent_schedule_immediate(r->sweep_im, r->ev,
					  bfs_reader_sweep_now, r);
	}
	return 0;
}

/*
 * Lend n bytes at off of complete fetch f to s's read: its place in the
 * arena and a pin (s's child) that keeps them there.  false: f's buffer is
 * not the arena's, or no memory.
 */
static bool bfs_lend(struct bfs_fetch *f, struct bfs_read_state *s,
		     uint64_t off, uint32_t n)
{
	struct bfs_pin *p;

	if (f->buf == NULL || !f->buf->in_arena || off + n > f->len) {
		return false;
	}
	p = talloc_zero(s, struct bfs_pin);
	if (p == NULL) {
		return false;
	}
	p->f = f;
	BFS_LIST_ADD(f->pins, p);
	talloc_set_destructor(p, bfs_pin_destructor);
	s->lend_off = f->buf->arena_off + off;
	s->pin = p;
	f->r->counters.lent_bytes += n;
	return true;
}

static void bfs_fetch_done(struct tevent_req *subreq)
{
	struct bfs_fetch *f = tevent_req_callback_data(subreq, struct bfs_fetch);
	struct bfs_reader *r = f->r;
	struct s3_status st = {0};
	struct bfs_waiter *w;
	bool refill = false;
	size_t got = 0;
	int ret;

	if (f->first == 0 && r->on_meta != NULL && f->key != NULL &&
	    f->etag != NULL) {
		const struct s3_kv *meta;
		size_t n = s3_get_range_meta(subreq, &meta);

		if (n > 0 && !tevent_req_is_in_progress(subreq)) {
			r->on_meta(r->on_meta_priv, f->key, f->etag, meta, n);
		}
	}
	ret = s3_get_range_recv(subreq, &got, &st);
	TALLOC_FREE(subreq);
	f->answered = true;
	if (ret == 0 && got != f->len) {
		/* The object is shorter than indexed: it changed. */
		ret = ESTALE;
		s3_status_set(&st, "ShortObject", "object shorter than indexed",
			      NULL);
	}
	if (ret == 0) {
		r->counters.fetched_bytes += got;
	}
	st.err = ret;
	/* Readers first: the cache can wait, they should not. */
	struct bfs_waiter *to_fill = NULL;
	while ((w = f->waiters) != NULL) {
		BFS_LIST_REMOVE(f->waiters, w);
		w->f = NULL;
		if (ret == 0 && w->dst != NULL) {
			memcpy(w->dst, f->data + w->off, w->n);
		}
		if (ret == 0) {
			f->consumed += w->n;
		}
		if (ret == 0 && w->lend && !f->uncached &&
		    bfs_lend(f, tevent_req_data(w->req, struct bfs_read_state),
			     w->off, w->n)) {
			bfs_read_part_done(w->req, 0, &st);
			continue;
		}
		if (ret == 0 && w->dst == NULL && r->answer_after_fill &&
		    !f->uncached) {
			BFS_LIST_ADD(to_fill, w); /* answered after the fill */
			continue;
		}
		bfs_read_part_done(w->req, ret, &st);
	}
	if (ret != 0 || f->uncached) {
		talloc_free(f);
		bfs_reader_run_queue(r);
		return;
	}
	if (f->prefetch) {
		r->n_prefetches--;
		refill = true;
	}
	f->complete = true;
	r->kept_bytes += f->len;
	/*
	 * A read's own fetch is read (it fetched nothing more than that read
	 * wants); a prefetch is once its waiters and later reads took it all.
	 */
	if (!f->prefetch) {
		f->consumed = f->len;
	}
	if (r->fill_thread) {
		/* NULL: the disk is behind; then these blocks stay uncached. */
		f->job = bfs_cache_fill_queue(r->cache, &f->id, f->first,
					      f->data, f->len);
		if (f->job == NULL && r->answer_after_fill) {
			/* Reads that want them cached (now or when they ask
			 * later) find them on disk: write them now. */
			(void)bfs_cache_fill(r->cache, &f->id, f->first,
					     f->data, f->len);
		}
		while ((w = to_fill) != NULL) {
			BFS_LIST_REMOVE(to_fill, w);
			if (f->job != NULL) {
				bfs_wait_for_fill(r, f, w);
			} else {
				bfs_read_part_done(w->req, 0, &st);
			}
		}
	} else {
		/* A full disk only costs the caching, not the read. */
		(void)bfs_cache_fill(r->cache, &f->id, f->first, f->data,
				     f->len);
	}
	bfs_reader_sweep(r); /* may free f; starts queued fetches */
	bfs_reader_run_queue(r);
	if (refill) {
		bfs_reader_fill_window(r);
	}
}

/* ---- reads --------------------------------------------------------------- */

static int bfs_waiter_destructor(struct bfs_waiter *w)
{
	if (w->f != NULL && w->on_fill) {
		BFS_LIST_REMOVE(w->f->fill_waiters, w);
	} else if (w->f != NULL) {
		BFS_LIST_REMOVE(w->f->waiters, w);
	}
	return 0;
}

/*
 * Answer the reads waiting for fills that are done.  The fill thread has
 * no way into the event loop, so the loop looks every millisecond while
 * any wait (what that adds to a FETCH is small beside the GET before it).
 */
static void bfs_reader_fill_poll(struct tevent_context *ev,
				 struct tevent_timer *te, struct timeval now,
				 void *private_data)
{
	struct bfs_reader *r = private_data;
	struct bfs_fetch *f;
	struct bfs_waiter *w;
	bool waiting = false;

	(void)ev;
	(void)te;
	(void)now;
	r->fill_poll = NULL;
	for (f = r->fetches; f != NULL; f = f->next) {
		if (f->fill_waiters == NULL) {
			continue;
		}
		if (f->job != NULL && !bfs_cache_fill_done(f->job)) {
			waiting = true;
			continue;
		}
		while ((w = f->fill_waiters) != NULL) {
			BFS_LIST_REMOVE(f->fill_waiters, w);
			w->f = NULL;
			bfs_read_part_done(w->req, 0, &(struct s3_status){0});
		}
	}
	if (waiting) {
		r->fill_poll = tevent_add_timer(r->ev, r,
						tevent_timeval_current_ofs(0, 1000),
						bfs_reader_fill_poll, r);
	}
}

/* w waits for f's fill (f complete, its job queued). */
static void bfs_wait_for_fill(struct bfs_reader *r, struct bfs_fetch *f,
			      struct bfs_waiter *w)
{
	w->f = f;
	w->on_fill = true;
	BFS_LIST_ADD(f->fill_waiters, w);
	if (r->fill_poll == NULL) {
		r->fill_poll = tevent_add_timer(r->ev, r,
						tevent_timeval_current_ofs(0, 1000),
						bfs_reader_fill_poll, r);
	}
}

static void bfs_read_part_done(struct tevent_req *req, int err,
			       const struct s3_status *st)
{
	struct bfs_read_state *s = tevent_req_data(req, struct bfs_read_state);

	if (!tevent_req_is_in_progress(req)) {
		return;
	}
	if (err != 0) {
		s->st = *st;
		tevent_req_error(req, err);
		return;
	}
	if (--s->pending == 0) {
		tevent_req_done(req);
	}
}

/* A read's request, its length clamped to the object (*len): NULL, ENOMEM. */
static struct tevent_req *bfs_read_create(TALLOC_CTX *mem_ctx,
					  struct tevent_context *ev,
					  struct bfs_reader *r,
					  const struct bfs_object *obj,
					  uint64_t off, size_t *len,
					  struct bfs_read_state **sp)
{
	struct tevent_req *req;
	struct bfs_read_state *s;

	req = tevent_req_create(mem_ctx, &s, struct bfs_read_state);
	if (req == NULL) {
		return NULL;
	}
	bfs_reader_sweep(r);
	/* Completion comes from fetch callbacks: run the caller later. */
	tevent_req_defer_callback(req, ev);
	if (ev != r->ev) {
		tevent_req_error(req, EINVAL);
	}
	if (off >= obj->size) {
		*len = 0;
	} else if (*len > obj->size - off) {
		*len = (size_t)(obj->size - off);
	}
	s->nread = *len;
	*sp = s;
	return req;
}

/* Serve or wait for every block of [off, off+len): bfs_read_send's work. */
static void bfs_read_start(struct tevent_req *req, struct bfs_read_state *s,
			   struct bfs_reader *r, const struct bfs_object *obj,
			   uint64_t off, size_t len, uint8_t *dst)
{
	uint64_t pos, end = off + len;

	if (dst == NULL && bfs_reader_cache_for(r, obj) == NULL) {
		/* Only wanted in the cache, which never holds it: no GET. */
		tevent_req_done(req);
		return;
	}
	for (pos = off; pos < end;) {
		uint64_t blk = pos / r->block_size;
		uint32_t boff = (uint32_t)(pos % r->block_size);
		uint32_t n = r->block_size - boff;
		struct bfs_waiter *w;
		struct bfs_fetch *f;
		uint32_t got = 0;

		if (n > end - pos) {
			n = (uint32_t)(end - pos);
		}
		/*
		 * Fetched and kept in memory: copy from there, before the
		 * cache, whose file the fill wrote around the page cache.
		 */
		f = bfs_fetch_find(r, &obj->id, blk);
		if (f != NULL && f->complete && dst == NULL &&
		    r->answer_after_fill && f->job != NULL &&
		    !bfs_cache_fill_done(f->job)) {
			/* In memory, not on disk yet: wait for the fill. */
			w = talloc_zero(s, struct bfs_waiter);
			if (w == NULL) {
				tevent_req_oom(req);
				return;
			}
			w->req = req;
			w->n = n;
			talloc_set_destructor(w, bfs_waiter_destructor);
			bfs_wait_for_fill(r, f, w);
			f->consumed += n;
			s->pending++;
			pos += n;
			continue;
		}
		if (f != NULL && f->complete) {
			if (dst != NULL) {
				memcpy(dst + (pos - off),
				       f->data + (blk - f->first) * r->block_size +
					       boff, n);
			}
			f->consumed += n;
			r->counters.cache_hits++;
			pos += n;
			continue;
		}
		if (f == NULL && bfs_reader_cache_for(r, obj) != NULL &&
		    dst == NULL && bfs_cache_present(r->cache, &obj->id, blk)) {
			pos += n; /* only wanted in the cache: it is */
			continue;
		}
		if (f == NULL && bfs_reader_cache_for(r, obj) != NULL &&
		    dst != NULL && bfs_cache_read(r->cache, &obj->id, blk, boff, n,
				   dst + (pos - off), &got) == 0 &&
		    got == n) {
			r->counters.cache_hits++;
			pos += n;
			continue;
		}
		if (f != NULL) {
			r->counters.coalesced++;
		} else {
			/* This read's own missing blocks, in one GET. */
			uint64_t last = (end - 1) / r->block_size;
			f = bfs_fetch_start(
				r, obj, blk,
				bfs_run_length(r, obj, blk,
					       (unsigned)(last - blk + 1)),
				false);
		}
		w = f != NULL ? talloc_zero(s, struct bfs_waiter) : NULL;
		if (w == NULL) {
			tevent_req_oom(req);
			return;
		}
		w->f = f;
		w->req = req;
		w->off = (blk - f->first) * r->block_size + boff;
		w->n = n;
		w->dst = dst != NULL ? dst + (pos - off) : NULL;
		BFS_LIST_ADD(f->waiters, w);
		talloc_set_destructor(w, bfs_waiter_destructor);
		s->pending++;
		pos += n;
	}
	if (s->pending == 0) {
		tevent_req_done(req);
	}
}

struct tevent_req *bfs_read_send(TALLOC_CTX *mem_ctx, struct tevent_context *ev,
				 struct bfs_reader *r,
				 const struct bfs_object *obj, uint64_t off,
				 size_t len, void *buf)
{
	struct bfs_read_state *s;
	struct tevent_req *req = bfs_read_create(mem_ctx, ev, r, obj, off,
						 &len, &s);

	if (req == NULL) {
		return NULL;
	}
	if (tevent_req_is_in_progress(req)) {
		bfs_read_start(req, s, r, obj, off, len, buf);
	}
	if (!tevent_req_is_in_progress(req)) {
		return tevent_req_post(req, ev);
	}
	return req;
}

/*
 * Lend [off, off+len) if one fetch holds (or will hold) all of it in an
 * arena slot: answered lent now, or a waiter that is lent once the GET is
 * done.  false: not that way (the caller waits for the cache instead).
 */
static bool bfs_read_lend_start(struct tevent_req *req,
				struct bfs_read_state *s, struct bfs_reader *r,
				const struct bfs_object *obj, uint64_t off,
				size_t len)
{
	uint64_t blk = off / r->block_size;
	uint64_t last = (off + len - 1) / r->block_size;
	struct bfs_fetch *f = bfs_fetch_find(r, &obj->id, blk);
	struct bfs_waiter *w;
	uint64_t foff;

	if (f == NULL) {
		if (!bfs_block_wanted(r, obj, blk)) {
			return false; /* cached */
		}
		f = bfs_fetch_start(r, obj, blk,
				    bfs_run_length(r, obj, blk,
						   (unsigned)(last - blk + 1)),
				    false);
		if (f == NULL) {
			return false;
		}
	} else {
		r->counters.coalesced++;
	}
	if (last >= f->first + f->nblk) {
		return false; /* spans two fetches: through the cache */
	}
	foff = (blk - f->first) * r->block_size + off % r->block_size;
	if (f->complete) {
		if (!bfs_lend(f, s, foff, (uint32_t)len)) {
			return false;
		}
		f->consumed += len;
		r->counters.cache_hits++;
		tevent_req_done(req);
		return true;
	}
	w = talloc_zero(s, struct bfs_waiter);
	if (w == NULL) {
		return false;
	}
	w->f = f;
	w->req = req;
	w->off = foff;
	w->n = (uint32_t)len;
	w->lend = true;
	BFS_LIST_ADD(f->waiters, w);
	talloc_set_destructor(w, bfs_waiter_destructor);
	s->pending = 1;
	return true;
}

struct tevent_req *bfs_read_lend_send(TALLOC_CTX *mem_ctx,
				      struct tevent_context *ev,
				      struct bfs_reader *r,
				      const struct bfs_object *obj,
				      uint64_t off, size_t len)
{
	struct bfs_read_state *s;
	struct tevent_req *req = bfs_read_create(mem_ctx, ev, r, obj, off,
						 &len, &s);

	if (req == NULL) {
		return NULL;
	}
	if (tevent_req_is_in_progress(req) &&
	    (r->arena == NULL || bfs_reader_cache_for(r, obj) == NULL ||
	     len == 0 ||
	     len > UINT32_MAX || !bfs_read_lend_start(req, s, r, obj, off, len))) {
		bfs_read_start(req, s, r, obj, off, len, NULL);
	}
	if (!tevent_req_is_in_progress(req)) {
		return tevent_req_post(req, ev);
	}
	return req;
}

int bfs_read_lend_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		       uint64_t *arena_off, struct bfs_pin **pin,
		       struct s3_status *st)
{
	struct bfs_read_state *s = tevent_req_data(req, struct bfs_read_state);
	struct bfs_pin *p = s->pin;
	size_t nread;
	int ret;

	*pin = NULL;
	*arena_off = s->lend_off;
	if (p != NULL) {
		talloc_steal(mem_ctx, p);
	}
	ret = bfs_read_recv(req, &nread, st);
	if (ret == 0) {
		*pin = p;
	} else {
		talloc_free(p);
	}
	return ret;
}

int bfs_read_recv(struct tevent_req *req, size_t *nread, struct s3_status *st)
{
	struct bfs_read_state *s = tevent_req_data(req, struct bfs_read_state);
	int ret = s3_req_errno(req);

	if (ret == 0) {
		*nread = s->nread;
	}
	if (st != NULL) {
		*st = s->st;
		st->err = ret;
	}
	tevent_req_received(req);
	return ret;
}

/* Start fetches for what the window lacks, up to BFS_MAX_PREFETCHES. */
static void bfs_reader_fill_window(struct bfs_reader *r)
{
	const struct bfs_object *obj = &r->window_obj;
	uint64_t first = r->window_first, blk;
	unsigned n = r->window_n;

	if (obj->key == NULL) {
		return;
	}
	for (blk = first; blk < first + n;) {
		unsigned run;

		if (blk * r->block_size >= obj->size ||
		    r->n_prefetches >= BFS_MAX_PREFETCHES) {
			return;
		}
		if (!bfs_block_wanted(r, obj, blk)) {
			blk++;
			continue;
		}
		run = bfs_run_length(r, obj, blk, (unsigned)(first + n - blk));
		if (bfs_fetch_start(r, obj, blk, run, true) == NULL) {
			return;
		}
		blk += run;
	}
}

void bfs_reader_prefetch(struct bfs_reader *r, const struct bfs_object *obj,
			 uint64_t first, unsigned n)
{
	struct bfs_object *w = &r->window_obj;

	if (bfs_reader_cache_for(r, obj) == NULL) {
		return; /* its bytes would go nowhere */
	}
	bfs_reader_sweep(r);
	if (w->key == NULL || memcmp(w->id.b, obj->id.b, sizeof(w->id.b)) != 0) {
		char *key = talloc_strdup(r, obj->key);
		char *etag = obj->etag != NULL ? talloc_strdup(r, obj->etag)
					       : NULL;

		if (key == NULL || (obj->etag != NULL && etag == NULL)) {
			talloc_free(key);
			talloc_free(etag);
			return;
		}
		talloc_free(r->window_key);
		talloc_free(r->window_etag);
		r->window_key = key;
		r->window_etag = etag;
		*w = *obj;
		w->key = key;
		w->etag = etag;
	}
	w->size = obj->size;
	r->window_first = first;
	r->window_n = n;
	bfs_reader_fill_window(r);
}

bool bfs_reader_has_object(const struct bfs_reader *r,
			   const struct bfs_cache_id *id)
{
	const struct bfs_fetch *f;

	for (f = r->fetches; f != NULL; f = f->next) {
		if (memcmp(f->id.b, id->b, sizeof(id->b)) == 0) {
			return true;
		}
	}
	return false;
}

bool bfs_reader_holds(struct bfs_reader *r, const struct bfs_object *obj,
		      uint64_t off, size_t len)
{
	uint64_t blk, last;

	if (len == 0 || off >= obj->size) {
		return true;
	}
	last = ((off + len < obj->size ? off + len : obj->size) - 1) /
	       r->block_size;
	for (blk = off / r->block_size; blk <= last; blk++) {
		if (bfs_fetch_find(r, &obj->id, blk) == NULL &&
		    (bfs_reader_cache_for(r, obj) == NULL ||
		     !bfs_cache_present(r->cache, &obj->id, blk))) {
			return false;
		}
	}
	return true;
}

bool bfs_reader_let_go(struct bfs_reader *r, const struct bfs_cache_id *id)
{
	const struct bfs_fetch *f;

	if (r->window_obj.key != NULL &&
	    memcmp(r->window_obj.id.b, id->b, sizeof(id->b)) == 0) {
		r->window_n = 0; /* no prefetch that completes refills it */
	}
	for (f = r->fetches; f != NULL; f = f->next) {
		if (memcmp(f->id.b, id->b, sizeof(id->b)) == 0 &&
		    (!f->complete ||
		     (f->job != NULL && !bfs_cache_fill_done(f->job)))) {
			return true;
		}
	}
	return false;
}

/* ---- cached reads for worker threads ------------------------------------ */

bool bfs_reader_all_cached(struct bfs_reader *r, const struct bfs_object *obj,
			   uint64_t off, size_t len)
{
	uint64_t blk;

	if (bfs_reader_cache_for(r, obj) == NULL || len == 0 ||
	    off + len > obj->size) {
		return false;
	}
	for (blk = off / r->block_size; blk <= (off + len - 1) / r->block_size;
	     blk++) {
		/* Bytes still in memory are cheaper to copy from there. */
		if (bfs_fetch_find(r, &obj->id, blk) != NULL ||
		    !bfs_cache_present(r->cache, &obj->id, blk)) {
			return false;
		}
	}
	return true;
}

int bfs_copy_cached(struct bfs_cache *c, int fd, const struct bfs_cache_id *id,
		    uint32_t block_size, uint64_t off, size_t len, void *buf)
{
	uint8_t *dst = buf;
	uint64_t pos, end = off + len;

	for (pos = off; pos < end;) {
		uint64_t blk = pos / block_size;
		uint32_t boff = (uint32_t)(pos % block_size);
		uint32_t n = block_size - boff, got = 0;
		int ret;

		if (n > end - pos) {
			n = (uint32_t)(end - pos);
		}
		ret = bfs_cache_read_mt(c, fd, id, blk, boff, n,
					dst + (pos - off), &got);
		if (ret != 0 || got != n) {
			return ENOENT;
		}
		pos += n;
	}
	return 0;
}

void bfs_reader_cached_done(struct bfs_reader *r, const struct bfs_object *obj,
			    uint64_t off, size_t len)
{
	uint64_t blk;

	for (blk = off / r->block_size; len > 0 &&
	     blk <= (off + len - 1) / r->block_size; blk++) {
		bfs_cache_note_read(r->cache, &obj->id, blk);
		r->counters.cache_hits++;
	}
}

struct bfs_cache *bfs_reader_cache(const struct bfs_reader *r)
{
	return r->cache;
}

uint32_t bfs_reader_block_size(const struct bfs_reader *r)
{
	return r->block_size;
}

void bfs_reader_on_meta(struct bfs_reader *r, bfs_reader_meta_fn fn,
			void *priv)
{
	r->on_meta = fn;
	r->on_meta_priv = priv;
}

void bfs_reader_answer_after_fill(struct bfs_reader *r,
				  bool through_page_cache)
{
	r->fill_thread = true;
	r->answer_after_fill = true;
	if (r->cache != NULL && through_page_cache) {
		bfs_cache_fill_through_page_cache(r->cache);
	}
}

int bfs_reader_use_arena(struct bfs_reader *r, struct bfs_arena *a)
{
	if (r->fetches != NULL || r->n_spare > 0 ||
	    bfs_arena_slot_size(a) != bfs_buf_size(r)) {
		return EINVAL;
	}
	r->sweep_im = tevent_create_immediate(r);
	if (r->sweep_im == NULL) {
		return ENOMEM;
	}
	r->arena = a;
	return 0;
}

size_t bfs_reader_buf_size(const struct bfs_reader *r)
{
	return bfs_buf_size(r);
}
