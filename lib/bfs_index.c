/*
 * The metadata index in LMDB.
 *
 * Databases:
 *   ent   "<dir prefix>\0<name>"  -> entry record (see bfs_index_encode)
 *   dirs  "/<dir prefix>"         -> int64 time the listing was stored
 *                                    (LMDB keys cannot be empty: the root
 *                                    directory's prefix is "")
 *   inos  uint64 inode (native)   -> full key of the entry that owns it
 *   meta  "bucket"                -> the bucket this index describes
 *         "lru"                   -> present once listings have stamps
 *   listers "/<dir prefix>"       -> process listing it from S3 right now
 *                                    (struct bfs_lister_rec)
 *   used  "/<dir prefix>"         -> int64 ns the directory was last used
 *   lru   int64 ns (dups sorted)  -> "/<dir prefix>": the same, in the
 *                                    order eviction takes them
 *
 * A directory has a stamp in used and lru while it has a listing or
 * children put or learnt; eviction (bfs_index_evict) drops its listing,
 * its non-pending children and the stamp.  "changed" records stay: they
 * are what keeps a listing started before a change from undoing it.
 */
#include "bfs_index.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bfs_lmdb.h"
#include "bfs_log.h"

#define BFS_INDEX_MAP_SIZE (4ULL << 30)	/* the map at open: address space */
#define BFS_INDEX_MAP_MAX (64ULL << 30)	/* sparse too: data.mdb holds the
					 * pages in use, not the map */
#define BFS_INDEX_BUDGET (4ULL << 30)	/* the fixed map it had before */
#define BFS_INDEX_USE_EVERY 60
/*
 * Records one eviction transaction deletes: inode map deletions touch
 * pages all over that tree, and a transaction's dirty pages are bounded
 * (and held in memory); other writers wait meanwhile.  At the map's
 * ceiling the first transaction deletes a few only, since its copies of
 * the pages it changes must fit in what is left; each commit frees pages
 * for the next.
 */
#define BFS_INDEX_EVICT_BATCH 10000
#define BFS_INDEX_EVICT_FIRST 16
/* Evictions at the ceiling for one operation, each a quarter of what is
 * in use: an operation too large for the whole map must not empty it. */
#define BFS_INDEX_CEILING_EVICTIONS 2
/* Write attempts of one operation: the map doubles from 1 MiB to 64 GiB
 * in 16. */
#define BFS_INDEX_TRIES 40
/* bfs_index_end: the map was full and there is room now: run it again. */
#define BFS_INDEX_AGAIN (-1)
#define BFS_ENT_VERSION 1

struct bfs_index {
	MDB_env *env;
	MDB_dbi ent, dirs, inos, meta;
	/*
	 * "changed": entry key -> time (int64) this host last changed that
	 * name in S3 (put, remove, rename).  A listing that started before
	 * then may predate the change: it neither drops nor brings back what
	 * the change made.  Listings that start later retire the record.
	 */
	MDB_dbi changed;
	MDB_dbi listers;
	MDB_dbi used, lru;
	char *dir;		/* for log lines */
	size_t budget;		/* live bytes above which listings go */
	int64_t use_every_ns;
	uint64_t evicted;
	time_t over_logged;	/* last "over budget, all in use" line */
};

struct bfs_lister_rec {
	int64_t pid;
	int64_t started;
};

/* Packed record, little-endian on the hosts we build for. */
struct bfs_ent_rec {
	uint8_t version;
	uint8_t is_dir;
	uint16_t etag_len;
	uint32_t flags;
	uint64_t size;
	int64_t mtime;
	uint64_t ino;
} __attribute__((packed));

static int bfs_index_destructor(struct bfs_index *idx)
{
	bfs_lmdb_close(idx->env);
	return 0;
}

/* Last-used stamps: the wall clock in ns, shared by processes and kept
 * across restarts, fine enough that uses within a second keep their
 * order. */
static int64_t bfs_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- write transactions -------------------------------------------------- */

/*
 * One write transaction of the index.  Its body runs between
 * bfs_index_begin and bfs_index_end in a loop: when LMDB finds the map
 * full, the transaction is aborted, the map grows (or, at its ceiling,
 * listings are evicted) and the body runs again from the start, so a body
 * sets its outputs afresh each time:
 *
 *	do {
 *		rc = bfs_index_begin(&w);
 *		if (rc != 0)
 *			break;
 *		rc = ...body on w.txn, w.tmp...;
 *		rc = bfs_index_end(&w, rc);
 *	} while (rc == BFS_INDEX_AGAIN);
 */
struct bfs_wtxn {
	struct bfs_index *idx;
	MDB_txn *txn;
	TALLOC_CTX *tmp;	/* freed with the transaction */
	size_t map;		/* the map's size when txn began */
	const char *dir;	/* the directory it is for: not evicted for it */
	bool adds;		/* may take the index over its budget */
	bool evicting;		/* is an eviction: evicts nothing itself */
	bool over;		/* took the index over its budget */
	unsigned ceiling_evictions;
	unsigned tries;
};

/* A size for a log line. */
struct bfs_size_str {
	char s[32];
};

static struct bfs_size_str bfs_size_str(size_t n)
{
	struct bfs_size_str r;

	if (n >= 1ULL << 30) {
		snprintf(r.s, sizeof(r.s), "%.1f GiB", (double)n / (1ULL << 30));
	} else if (n >= 1 << 20) {
		snprintf(r.s, sizeof(r.s), "%.1f MiB", (double)n / (1 << 20));
	} else {
		snprintf(r.s, sizeof(r.s), "%zu KiB", n >> 10);
	}
	return r;
}

static bool bfs_index_evict(struct bfs_index *idx, const char *except,
			    size_t target, bool any_age);

/* Bytes of the pages the index's tables use (not free pages). */
static int bfs_index_live(struct bfs_index *idx, MDB_txn *txn, size_t *bytes)
{
	const MDB_dbi dbs[] = {
		idx->ent, idx->dirs, idx->inos, idx->meta, idx->changed,
		idx->listers, idx->used, idx->lru,
	};
	MDB_stat st = {0};
	size_t i, pages = 0;
	int rc;

	for (i = 0; i < sizeof(dbs) / sizeof(dbs[0]); i++) {
		rc = mdb_stat(txn, dbs[i], &st);
		if (rc != 0) {
			return rc;
		}
		pages += st.ms_branch_pages + st.ms_leaf_pages +
			 st.ms_overflow_pages;
	}
	*bytes = pages * st.ms_psize;
	return 0;
}

static int bfs_index_live_now(struct bfs_index *idx, size_t *bytes)
{
	MDB_txn *txn;
	int rc = bfs_lmdb_txn_begin(idx->env, MDB_RDONLY, &txn);

	if (rc == 0) {
		rc = bfs_index_live(idx, txn, bytes);
		bfs_lmdb_txn_abort(txn);
	}
	return rc;
}

static int bfs_index_begin(struct bfs_wtxn *w)
{
	int rc;

	w->tmp = talloc_new(NULL);
	if (w->tmp == NULL) {
		return ENOMEM;
	}
	rc = bfs_lmdb_txn_begin(w->idx->env, 0, &w->txn);
	if (rc != 0) {
		TALLOC_FREE(w->tmp);
		return bfs_lmdb_errno(rc);
	}
	/* Stable while the transaction holds the remap lock. */
	w->map = bfs_lmdb_map_size(w->idx->env);
	return 0;
}

/*
 * The map was full: grow it, or at its ceiling evict listings (once per
 * operation).  true: run the transaction again.
 */
static bool bfs_index_make_room(struct bfs_wtxn *w)
{
	struct bfs_index *idx = w->idx;
	size_t now = 0, live = 0;
	int rc;

	if (++w->tries > BFS_INDEX_TRIES) {
		bfs_log(BFS_LOG_ERR, "bucketfs: the index in %s is still full "
			"after %u tries at a map of %s", idx->dir,
			BFS_INDEX_TRIES, bfs_size_str(w->map).s);
		return false;
	}
	rc = bfs_lmdb_grow(idx->env, w->map, &now);
	if (rc == 0) {
		if (now > w->map) {
			bfs_log(BFS_LOG_NOTICE, "bucketfs: the index in %s "
				"was full: its map is %s now (was %s)",
				idx->dir, bfs_size_str(now).s,
				bfs_size_str(w->map).s);
		}
		return true;
	}
	if (rc != ENOSPC || w->evicting) {
		/* A remap failure is logged where it happened; an
		 * eviction's by bfs_index_evict. */
		return false;
	}
	/*
	 * At the ceiling (pages readers still see, or one very large
	 * transaction): drop a quarter of what is in use and try again.
	 */
	if (w->ceiling_evictions < BFS_INDEX_CEILING_EVICTIONS &&
	    bfs_index_live_now(idx, &live) == 0) {
		w->ceiling_evictions++;
		if (bfs_index_evict(idx, w->dir, live / 4 * 3, true)) {
			return true;
		}
	}
	bfs_log(BFS_LOG_ERR, "bucketfs: the index in %s is full at its "
		"ceiling of %s and no more could be evicted", idx->dir,
		bfs_size_str(w->map).s);
	return false;
}

/*
 * Commit (rc 0) or abort the transaction.  BFS_INDEX_AGAIN when the map
 * was full and has room now; else 0 or an errno value.  A commit that
 * took the index over its budget evicts listings after it.
 */
static int bfs_index_end(struct bfs_wtxn *w, int rc)
{
	size_t live = 0;

	if (rc == 0 && w->adds) {
		rc = bfs_index_live(w->idx, w->txn, &live);
		w->over = rc == 0 && live > w->idx->budget;
	}
	if (rc == 0) {
		rc = bfs_lmdb_txn_commit(w->txn);
	} else {
		bfs_lmdb_txn_abort(w->txn);
	}
	w->txn = NULL;
	TALLOC_FREE(w->tmp);
	if (rc == MDB_MAP_FULL && bfs_index_make_room(w)) {
		return BFS_INDEX_AGAIN;
	}
	if (rc == 0 && w->over && !w->evicting) {
		/* Down to 7/8 of it: eviction comes in batches, not at
		 * every store. */
		bfs_index_evict(w->idx, w->dir, w->idx->budget / 8 * 7, false);
	}
	return bfs_lmdb_errno(rc);
}

/* ---- opening ---------------------------------------------------------------- */

/*
 * Indexes made before eviction have listings without a stamp, which
 * eviction would never find: each gets its listing time as its stamp.
 */
static int bfs_index_stamp_old_listings(struct bfs_index *idx, MDB_txn *txn)
{
	MDB_val mk = {3, (void *)"lru"}, k, v, lk;
	MDB_cursor *cur;
	int64_t t;
	int rc = mdb_get(txn, idx->meta, &mk, &v);

	if (rc != MDB_NOTFOUND) {
		return rc;
	}
	rc = mdb_cursor_open(txn, idx->dirs, &cur);
	if (rc != 0) {
		return rc;
	}
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		MDB_val uv;

		if (v.mv_size != sizeof(t) ||
		    mdb_get(txn, idx->used, &k, &uv) == 0) {
			continue;
		}
		memcpy(&t, v.mv_data, sizeof(t));
		t = t > 0 && t < INT64_MAX / 1000000000 ? t * 1000000000 : 0;
		uv.mv_size = sizeof(t);
		uv.mv_data = &t;
		lk = uv;
		rc = mdb_put(txn, idx->used, &k, &uv, 0);
		if (rc == 0) {
			rc = mdb_put(txn, idx->lru, &lk, &k, 0);
		}
		if (rc != 0) {
			break;
		}
	}
	mdb_cursor_close(cur);
	rc = bfs_lmdb_walk_end(rc);
	if (rc == 0) {
		v.mv_size = 1;
		v.mv_data = (void *)"1";
		rc = mdb_put(txn, idx->meta, &mk, &v, 0);
	}
	return rc;
}

static int bfs_index_open_dbs(struct bfs_index *idx, MDB_txn *txn,
			      const char *bucket, const char **why)
{
	MDB_val k = {6, (void *)"bucket"}, v;
	int rc;

	rc = mdb_dbi_open(txn, "ent", MDB_CREATE, &idx->ent);
	if (rc == 0) {
		rc = mdb_dbi_open(txn, "dirs", MDB_CREATE, &idx->dirs);
	}
	if (rc == 0) {
		rc = mdb_dbi_open(txn, "inos", MDB_CREATE | MDB_INTEGERKEY,
				  &idx->inos);
	}
	if (rc == 0) {
		rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &idx->meta);
	}
	if (rc == 0) {
		rc = mdb_dbi_open(txn, "changed", MDB_CREATE, &idx->changed);
	}
	if (rc == 0) {
		rc = mdb_dbi_open(txn, "listers", MDB_CREATE, &idx->listers);
	}
	if (rc == 0) {
		rc = mdb_dbi_open(txn, "used", MDB_CREATE, &idx->used);
	}
	if (rc == 0) {
		rc = mdb_dbi_open(txn, "lru", MDB_CREATE | MDB_DUPSORT |
				  MDB_INTEGERKEY, &idx->lru);
	}
	if (rc == 0) {
		rc = mdb_get(txn, idx->meta, &k, &v);
		if (rc == MDB_NOTFOUND) {
			v.mv_size = strlen(bucket);
			v.mv_data = (void *)bucket;
			rc = mdb_put(txn, idx->meta, &k, &v, 0);
		} else if (rc == 0 && (v.mv_size != strlen(bucket) ||
				       memcmp(v.mv_data, bucket, v.mv_size) != 0)) {
			*why = "the cache folder holds the index of another "
			       "bucket";
			return EEXIST;
		}
	}
	if (rc == 0) {
		rc = bfs_index_stamp_old_listings(idx, txn);
	}
	if (rc != 0) {
		*why = mdb_strerror(rc);
	}
	return rc;
}

void bfs_index_opts_default(struct bfs_index_opts *o)
{
	*o = (struct bfs_index_opts){
		.map_size = BFS_INDEX_MAP_SIZE,
		.map_max = BFS_INDEX_MAP_MAX,
		.budget = BFS_INDEX_BUDGET,
		.use_every = BFS_INDEX_USE_EVERY,
	};
}

static int bfs_index_open_once(TALLOC_CTX *mem_ctx, const char *dir,
			       const char *bucket,
			       const struct bfs_index_opts *o,
			       struct bfs_index **out, const char **why)
{
	struct bfs_index *idx = talloc_zero(mem_ctx, struct bfs_index);
	struct bfs_wtxn w = {.idx = idx, .evicting = true};
	size_t map_max = o->map_max > o->map_size ? o->map_max : o->map_size;
	int rc;

	if (idx == NULL || (idx->dir = talloc_strdup(idx, dir)) == NULL) {
		talloc_free(idx);
		*why = "out of memory";
		return ENOMEM;
	}
	idx->budget = o->budget < map_max / 2 ? o->budget : map_max / 2;
	idx->use_every_ns = (int64_t)o->use_every * 1000000000;
	rc = bfs_lmdb_open_growing(dir, o->map_size, map_max, 8, &idx->env,
				   why);
	if (rc != 0) {
		talloc_free(idx);
		return rc;
	}
	talloc_set_destructor(idx, bfs_index_destructor);
	*why = NULL;
	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		rc = bfs_index_open_dbs(idx, w.txn, bucket, why);
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	if (rc != 0) {
		if (*why == NULL) {
			*why = strerror(rc);
		}
		talloc_free(idx);
		return rc;
	}
	*why = NULL; /* not the words of an attempt that found the map full */
	*out = idx;
	return 0;
}

/*
 * The index is a cache of S3's listings: a damaged one (a power loss with
 * MDB_NOSYNC, a garbled or truncated file) is set aside and rebuilt empty,
 * with a log line, instead of failing every connect.
 */
int bfs_index_open_opts(TALLOC_CTX *mem_ctx, const char *dir,
			const char *bucket, const struct bfs_index_opts *o,
			struct bfs_index **out, const char **why)
{
	struct bfs_index_opts def;
	int rc;

	if (o == NULL) {
		bfs_index_opts_default(&def);
		o = &def;
	}
	rc = bfs_index_open_once(mem_ctx, dir, bucket, o, out, why);
	if (rc == EIO && bfs_lmdb_set_aside(dir) == 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: the index in %s was damaged "
			"(%s): set aside as data.mdb.damaged-*, started anew; "
			"folders are listed from S3 again", dir,
			*why ? *why : "unreadable");
		rc = bfs_index_open_once(mem_ctx, dir, bucket, o, out, why);
	}
	return rc;
}

int bfs_index_open(TALLOC_CTX *mem_ctx, const char *dir, const char *bucket,
		   struct bfs_index **out, const char **why)
{
	return bfs_index_open_opts(mem_ctx, dir, bucket, NULL, out, why);
}

int bfs_index_space(struct bfs_index *idx, struct bfs_index_space *s)
{
	memset(s, 0, sizeof(*s));
	s->map = bfs_lmdb_map_size(idx->env);
	s->budget = idx->budget;
	s->evicted = idx->evicted;
	return bfs_lmdb_errno(bfs_index_live_now(idx, &s->live));
}

/* ---- records ------------------------------------------------------------ */

int bfs_index_encode(TALLOC_CTX *mem_ctx, const struct bfs_entry *e,
		     void **buf, size_t *len)
{
	size_t elen = e->etag != NULL ? strlen(e->etag) : 0;
	struct bfs_ent_rec r = {
		.version = BFS_ENT_VERSION,
		.is_dir = e->is_dir ? 1 : 0,
		.etag_len = (uint16_t)elen,
		.size = e->size,
		.mtime = e->mtime,
		.ino = e->ino,
		.flags = e->flags,
	};
	uint8_t *p;

	if (elen > UINT16_MAX) {
		return EINVAL;
	}
	p = talloc_size(mem_ctx, sizeof(r) + elen);
	if (p == NULL) {
		return ENOMEM;
	}
	memcpy(p, &r, sizeof(r));
	if (elen > 0) {
		memcpy(p + sizeof(r), e->etag, elen);
	}
	*buf = p;
	*len = sizeof(r) + elen;
	return 0;
}

/* Decodes the attributes; e->name is left alone. */
int bfs_index_decode(TALLOC_CTX *mem_ctx, const void *buf, size_t len,
		     struct bfs_entry *e)
{
	struct bfs_ent_rec r;

	if (len < sizeof(r)) {
		return EBADMSG;
	}
	memcpy(&r, buf, sizeof(r));
	/* A NUL inside the ETag would decode to a shorter ETag than stored
	 * (and the cache identity derived from it): not a record we wrote. */
	if (r.version != BFS_ENT_VERSION || r.is_dir > 1 ||
	    len != sizeof(r) + r.etag_len ||
	    memchr((const char *)buf + sizeof(r), '\0', r.etag_len) != NULL) {
		return EBADMSG;
	}
	e->is_dir = r.is_dir != 0;
	e->size = r.size;
	e->mtime = (time_t)r.mtime;
	e->ino = r.ino;
	e->flags = r.flags;
	e->etag = NULL;
	if (r.etag_len > 0) {
		e->etag = talloc_strndup(mem_ctx, (const char *)buf + sizeof(r),
					 r.etag_len);
		if (e->etag == NULL) {
			return ENOMEM;
		}
	}
	return 0;
}

static MDB_val bfs_ent_key(TALLOC_CTX *mem_ctx, const char *dir,
			   const char *name)
{
	size_t dl = strlen(dir), nl = strlen(name);
	char *k = talloc_size(mem_ctx, dl + 1 + nl);
	MDB_val v = {0, NULL};

	if (k != NULL) {
		memcpy(k, dir, dl);
		k[dl] = '\0';
		memcpy(k + dl + 1, name, nl);
		v.mv_size = dl + 1 + nl;
		v.mv_data = k;
	}
	return v;
}

uint64_t bfs_index_ino_hint(const char *full_key)
{
	/* FNV-1a 64, folded away from 0..BFS_ROOT_INO and negative off_t. */
	uint64_t h = 0xcbf29ce484222325ULL;
	const unsigned char *p;

	for (p = (const unsigned char *)full_key; *p != '\0'; p++) {
		h = (h ^ *p) * 0x100000001b3ULL;
	}
	h &= 0x7fffffffffffffffULL;
	return h <= BFS_ROOT_INO ? h + BFS_ROOT_INO + 1 : h;
}

/* A free inode for full_key: its hint, or the next one not owned by
 * another key.  Records the ownership. */
static int bfs_index_alloc_ino(struct bfs_index *idx, MDB_txn *txn,
			       const char *full_key, uint64_t *ino)
{
	uint64_t i = bfs_index_ino_hint(full_key);
	size_t kl = strlen(full_key);
	MDB_val k, v;
	int rc;

	for (;;) {
		k.mv_size = sizeof(i);
		k.mv_data = &i;
		rc = mdb_get(txn, idx->inos, &k, &v);
		if (rc == MDB_NOTFOUND) {
			break;
		}
		if (rc != 0) {
			return rc;
		}
		if (v.mv_size == kl && memcmp(v.mv_data, full_key, kl) == 0) {
			*ino = i;
			return 0;
		}
		i = i >= 0x7fffffffffffffffULL ? BFS_ROOT_INO + 1 : i + 1;
	}
	v.mv_size = kl;
	v.mv_data = (void *)full_key;
	rc = mdb_put(txn, idx->inos, &k, &v, 0);
	if (rc == 0) {
		*ino = i;
	}
	return rc;
}

/* ---- directories ------------------------------------------------------------ */

static MDB_val bfs_dirs_key(TALLOC_CTX *mem_ctx, const char *dir)
{
	char *k = talloc_asprintf(mem_ctx, "/%s", dir);
	MDB_val v = {k != NULL ? strlen(k) : 0, k};

	return v;
}

/*
 * Note that dir was used at now (ns): its stamp in used, its place in lru.
 * Unless always, a stamp younger than use_every stays as it is.
 */
static int bfs_index_touch_txn(struct bfs_index *idx, MDB_txn *txn,
			       TALLOC_CTX *tmp, const char *dir, int64_t now,
			       bool always)
{
	MDB_val k = bfs_dirs_key(tmp, dir), v, lk;
	int64_t old;
	int rc;

	if (k.mv_data == NULL) {
		return ENOMEM;
	}
	if (k.mv_size > (size_t)mdb_env_get_maxkeysize(idx->env)) {
		return 0; /* too long to be listed or to have children */
	}
	rc = mdb_get(txn, idx->used, &k, &v);
	if (rc == 0 && v.mv_size == sizeof(old)) {
		memcpy(&old, v.mv_data, sizeof(old));
		if (!always && now >= old && now - old < idx->use_every_ns) {
			return 0;
		}
		lk.mv_size = sizeof(old);
		lk.mv_data = &old;
		rc = mdb_del(txn, idx->lru, &lk, &k);
	}
	if (rc != 0 && rc != MDB_NOTFOUND) {
		return rc;
	}
	v.mv_size = sizeof(now);
	v.mv_data = &now;
	rc = mdb_put(txn, idx->used, &k, &v, 0);
	if (rc == 0) {
		lk.mv_size = sizeof(now);
		lk.mv_data = &now;
		rc = mdb_put(txn, idx->lru, &lk, &k, 0);
	}
	return rc;
}

/* A read's note of a use: its own (short) write transaction. */
static void bfs_index_touch(struct bfs_index *idx, const char *dir)
{
	struct bfs_wtxn w = {.idx = idx};
	int rc;

	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		rc = bfs_index_touch_txn(idx, w.txn, w.tmp, dir, bfs_now_ns(),
					 false);
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	if (rc != 0) {
		/* It only makes the listing look older to eviction. */
		bfs_log(BFS_LOG_WARNING, "bucketfs: cannot note the use of "
			"folder '%s' in the index in %s: %s", dir, idx->dir,
			strerror(rc));
	}
}

/*
 * Every lookup and listing of the share asks this first, so it is where
 * a directory's use is noted: the stamp is read in the same read
 * transaction, and only a stamp older than use_every takes a write
 * transaction to renew (at most one a minute per directory, for all the
 * processes together), instead of one per stat.
 */
int bfs_index_dir_listed(struct bfs_index *idx, const char *dir,
			 time_t *listed_at)
{
	MDB_txn *txn;
	char buf[1100];
	MDB_val k = {(size_t)snprintf(buf, sizeof(buf), "/%s", dir), buf}, v;
	int64_t t, used, now = bfs_now_ns();
	bool stale = false;
	int rc;

	if (k.mv_size >= sizeof(buf)) {
		return ENAMETOOLONG;
	}
	rc = bfs_lmdb_txn_begin(idx->env, MDB_RDONLY, &txn);
	if (rc != 0) {
		return bfs_lmdb_errno(rc);
	}
	rc = mdb_get(txn, idx->dirs, &k, &v);
	if (rc == 0 && v.mv_size == sizeof(t)) {
		memcpy(&t, v.mv_data, sizeof(t));
		*listed_at = (time_t)t;
		stale = true;
		if (mdb_get(txn, idx->used, &k, &v) == 0 &&
		    v.mv_size == sizeof(used)) {
			memcpy(&used, v.mv_data, sizeof(used));
			stale = now < used || now - used >= idx->use_every_ns;
		}
	} else if (rc == 0) {
		rc = MDB_NOTFOUND;
	}
	bfs_lmdb_txn_abort(txn);
	if (stale) {
		bfs_index_touch(idx, dir);
	}
	return bfs_lmdb_errno(rc);
}

int bfs_index_invalidate_dir(struct bfs_index *idx, const char *dir)
{
	struct bfs_wtxn w = {.idx = idx};
	MDB_val k;
	int rc;

	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		k = bfs_dirs_key(w.tmp, dir);
		rc = k.mv_data ? mdb_del(w.txn, idx->dirs, &k, NULL) : ENOMEM;
		rc = bfs_index_end(&w, rc == MDB_NOTFOUND ? 0 : rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

static int bfs_index_put_txn(struct bfs_index *idx, MDB_txn *txn,
			     TALLOC_CTX *tmp, const char *dir,
			     struct bfs_entry *e);

/* Note a change this host made to entry key k (see struct bfs_index). */
static int bfs_index_note_change(struct bfs_index *idx, MDB_txn *txn,
				 MDB_val k)
{
	int64_t t = time(NULL);
	MDB_val v = {sizeof(t), &t};

	return k.mv_data != NULL ? mdb_put(txn, idx->changed, &k, &v, 0) :
				   ENOMEM;
}

/*
 * Did this host change entry key k since a listing that started at
 * listed?  Seconds are coarse: the same second counts as after.
 */
static bool bfs_index_changed_since(struct bfs_index *idx, MDB_txn *txn,
				    MDB_val k, time_t listed)
{
	MDB_val v;
	int64_t t;

	if (mdb_get(txn, idx->changed, &k, &v) != 0 ||
	    v.mv_size != sizeof(t)) {
		return false;
	}
	memcpy(&t, v.mv_data, sizeof(t));
	return t >= (int64_t)listed - 1;
}

/* A listing of d that started at listed saw every change older than that. */
static int bfs_index_retire_changes(struct bfs_index *idx, MDB_txn *txn,
				    TALLOC_CTX *tmp, const char *dir,
				    time_t listed)
{
	size_t dl = strlen(dir);
	MDB_val k = bfs_ent_key(tmp, dir, ""), v;
	MDB_cursor *cur;
	int64_t t;
	int rc;

	if (k.mv_data == NULL) {
		return ENOMEM;
	}
	rc = mdb_cursor_open(txn, idx->changed, &cur);
	if (rc != 0) {
		return rc;
	}
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	while (rc == 0 && k.mv_size > dl && memcmp(k.mv_data, dir, dl) == 0 &&
	       ((const char *)k.mv_data)[dl] == '\0') {
		if (v.mv_size == sizeof(t)) {
			memcpy(&t, v.mv_data, sizeof(t));
		}
		if (v.mv_size != sizeof(t) || t < (int64_t)listed - 1) {
			rc = bfs_lmdb_del_next(cur, &k, &v);
			continue;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	return bfs_lmdb_walk_end(rc);
}

static int bfs_index_store_one(struct bfs_index *idx, MDB_txn *txn,
			       TALLOC_CTX *tmp, const char *dir,
			       const struct s3_dirent *de, time_t listed)
{
	struct bfs_entry e = {
		.name = de->name,
		.is_dir = de->is_dir,
		.size = de->is_dir ? 0 : de->size,
		.mtime = de->mtime,
		.etag = de->is_dir ? NULL : de->etag,
	};
	MDB_val k = bfs_ent_key(tmp, dir, de->name), v;
	int rc;

	if (k.mv_data == NULL) {
		return ENOMEM;
	}
	if (bfs_index_changed_since(idx, txn, k, listed)) {
		return 0; /* changed here meanwhile: the listing may be older */
	}
	rc = mdb_get(txn, idx->ent, &k, &v);
	if (rc == 0) {
		struct bfs_entry old;
		if (bfs_index_decode(tmp, v.mv_data, v.mv_size, &old) == 0) {
			if (old.flags & BFS_ENT_PENDING) {
				return 0; /* ours is newer than S3's */
			}
			e.ino = old.ino;
		}
	} else if (rc != MDB_NOTFOUND) {
		return rc;
	}
	return bfs_index_put_txn(idx, txn, tmp, dir, &e);
}

/* Drop children of dir that the new listing no longer has. */
static int bfs_index_drop_gone(struct bfs_index *idx, MDB_txn *txn,
			       TALLOC_CTX *tmp, const struct s3_dir *d,
			       time_t listed)
{
	size_t dl = strlen(d->prefix);
	MDB_val k = bfs_ent_key(tmp, d->prefix, ""), v;
	MDB_cursor *cur;
	int rc;

	rc = mdb_cursor_open(txn, idx->ent, &cur);
	if (rc != 0) {
		return rc;
	}
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	while (rc == 0) {
		const char *kd = k.mv_data;
		char *name;
		struct bfs_entry old;

		if (k.mv_size <= dl || memcmp(kd, d->prefix, dl) != 0 ||
		    kd[dl] != '\0') {
			break; /* past this directory's range */
		}
		name = talloc_strndup(tmp, kd + dl + 1, k.mv_size - dl - 1);
		if (name == NULL) {
			rc = ENOMEM;
			break;
		}
		if (s3_dir_find(d, name) == NULL) {
			if ((bfs_index_decode(tmp, v.mv_data, v.mv_size, &old) == 0 &&
			     (old.flags & BFS_ENT_PENDING)) ||
			    bfs_index_changed_since(idx, txn, k, listed)) {
				/* Not uploaded yet, or made after the listing
				 * started: S3's answer cannot know it. */
				rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
				continue;
			}
			if (bfs_index_decode(tmp, v.mv_data, v.mv_size, &old) == 0) {
				MDB_val ik = {sizeof(old.ino), &old.ino};
				rc = mdb_del(txn, idx->inos, &ik, NULL);
				if (rc != 0 && rc != MDB_NOTFOUND) {
					break; /* e.g. the map is full */
				}
			}
			/* The cursor moves on to the next item (or the end:
			 * EINVAL once the table is empty). */
			rc = bfs_lmdb_del_next(cur, &k, &v);
			continue;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	return bfs_lmdb_walk_end(rc);
}

int bfs_index_store_dir(struct bfs_index *idx, const struct s3_dir *d,
			time_t now)
{
	struct bfs_wtxn w = {.idx = idx, .dir = d->prefix, .adds = true};
	MDB_val k, v;
	int64_t t = now;
	size_t i;
	int rc;

	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		k = bfs_dirs_key(w.tmp, d->prefix);
		rc = k.mv_data != NULL ? 0 : ENOMEM;
		for (i = 0; rc == 0 && i < d->n; i++) {
			rc = bfs_index_store_one(idx, w.txn, w.tmp, d->prefix,
						 &d->ents[i], now);
		}
		if (rc == 0) {
			rc = bfs_index_drop_gone(idx, w.txn, w.tmp, d, now);
		}
		if (rc == 0) {
			rc = bfs_index_retire_changes(idx, w.txn, w.tmp,
						      d->prefix, now);
		}
		if (rc == 0) {
			v.mv_size = sizeof(t);
			v.mv_data = &t;
			rc = mdb_put(w.txn, idx->dirs, &k, &v, 0);
		}
		if (rc == 0) {
			rc = bfs_index_touch_txn(idx, w.txn, w.tmp, d->prefix,
						 bfs_now_ns(), true);
		}
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

/* ---- lookups ------------------------------------------------------------------ */

int bfs_index_lookup(struct bfs_index *idx, TALLOC_CTX *mem_ctx,
		     const char *dir, const char *name, struct bfs_entry *e)
{
	TALLOC_CTX *tmp = talloc_new(mem_ctx);
	MDB_val k = bfs_ent_key(tmp, dir, name), v;
	MDB_txn *txn;
	int rc;

	if (k.mv_data == NULL) {
		talloc_free(tmp);
		return ENOMEM;
	}
	rc = bfs_lmdb_txn_begin(idx->env, MDB_RDONLY, &txn);
	if (rc == 0) {
		rc = mdb_get(txn, idx->ent, &k, &v);
		if (rc == 0) {
			rc = bfs_index_decode(mem_ctx, v.mv_data, v.mv_size, e);
			if (rc == 0) {
				e->name = talloc_strdup(mem_ctx, name);
				rc = e->name != NULL ? 0 : ENOMEM;
			}
		}
		bfs_lmdb_txn_abort(txn);
	}
	talloc_free(tmp);
	return bfs_lmdb_errno(rc);
}

int bfs_index_children(struct bfs_index *idx, TALLOC_CTX *mem_ctx,
		       const char *dir, const char *after, size_t max,
		       struct bfs_entry **ents, size_t *n)
{
	TALLOC_CTX *tmp = talloc_new(mem_ctx);
	size_t dl = strlen(dir), got = 0;
	MDB_val k = bfs_ent_key(tmp, dir, after ? after : ""), v;
	struct bfs_entry *out = talloc_array(mem_ctx, struct bfs_entry, max);
	MDB_cursor *cur = NULL;
	MDB_txn *txn = NULL;
	int rc;

	if (k.mv_data == NULL || out == NULL) {
		talloc_free(tmp);
		talloc_free(out);
		return ENOMEM;
	}
	rc = bfs_lmdb_txn_begin(idx->env, MDB_RDONLY, &txn);
	if (rc == 0) {
		rc = mdb_cursor_open(txn, idx->ent, &cur);
	} else {
		txn = NULL;
	}
	if (rc == 0) {
		rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	}
	/* SET_RANGE lands on `after` itself when it still exists: skip it. */
	if (rc == 0 && after != NULL && k.mv_size == dl + 1 + strlen(after) &&
	    memcmp((char *)k.mv_data + dl + 1, after, strlen(after)) == 0) {
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	while (rc == 0 && got < max) {
		const char *kd = k.mv_data;
		if (k.mv_size <= dl || memcmp(kd, dir, dl) != 0 || kd[dl] != '\0') {
			break;
		}
		rc = bfs_index_decode(out, v.mv_data, v.mv_size, &out[got]);
		if (rc != 0) {
			break;
		}
		out[got].name = talloc_strndup(out, kd + dl + 1,
					       k.mv_size - dl - 1);
		if (out[got].name == NULL) {
			rc = ENOMEM;
			break;
		}
		got++;
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (cur != NULL) {
		mdb_cursor_close(cur);
	}
	if (txn != NULL) {
		bfs_lmdb_txn_abort(txn);
	}
	talloc_free(tmp);
	if (rc != 0 && rc != MDB_NOTFOUND) {
		talloc_free(out);
		return bfs_lmdb_errno(rc);
	}
	*ents = out;
	*n = got;
	return 0;
}

/* ---- changes made through the share ------------------------------------------ */

int bfs_key_split(TALLOC_CTX *mem_ctx, const char *key, char **dir,
		  char **name)
{
	const char *slash = strrchr(key, '/');
	size_t dl = slash != NULL ? (size_t)(slash - key) + 1 : 0;

	*dir = talloc_strndup(mem_ctx, key, dl);
	*name = talloc_strdup(mem_ctx, key + dl);
	return *dir != NULL && *name != NULL ? 0 : ENOMEM;
}

static char *bfs_full_key(TALLOC_CTX *mem_ctx, const char *dir,
			  const char *name, bool is_dir)
{
	return talloc_asprintf(mem_ctx, "%s%s%s", dir, name, is_dir ? "/" : "");
}

/* Put e under dir/name in txn, with ino (0: keep the name's or allocate). */
static int bfs_index_put_txn(struct bfs_index *idx, MDB_txn *txn,
			     TALLOC_CTX *tmp, const char *dir,
			     struct bfs_entry *e)
{
	MDB_val k = bfs_ent_key(tmp, dir, e->name), v;
	void *buf;
	size_t len;
	int rc;

	if (k.mv_data == NULL) {
		return ENOMEM;
	}
	if (e->ino == 0) {
		rc = mdb_get(txn, idx->ent, &k, &v);
		if (rc == 0) {
			struct bfs_entry old;
			if (bfs_index_decode(tmp, v.mv_data, v.mv_size,
					     &old) == 0) {
				e->ino = old.ino;
			}
		} else if (rc != MDB_NOTFOUND) {
			return rc;
		}
	}
	if (e->ino == 0) {
		char *full = bfs_full_key(tmp, dir, e->name, e->is_dir);
		if (full == NULL) {
			return ENOMEM;
		}
		rc = bfs_index_alloc_ino(idx, txn, full, &e->ino);
		if (rc != 0) {
			return rc;
		}
	}
	rc = bfs_index_encode(tmp, e, &buf, &len);
	if (rc != 0) {
		return rc;
	}
	v.mv_size = len;
	v.mv_data = buf;
	return mdb_put(txn, idx->ent, &k, &v, 0);
}

/* Remove dir/name in txn; its record (if any) goes to *old. */
static int bfs_index_remove_txn(struct bfs_index *idx, MDB_txn *txn,
				TALLOC_CTX *tmp, const char *dir,
				const char *name, struct bfs_entry *old,
				bool release_ino)
{
	MDB_val k = bfs_ent_key(tmp, dir, name), v;
	int rc;

	if (k.mv_data == NULL) {
		return ENOMEM;
	}
	rc = mdb_get(txn, idx->ent, &k, &v);
	if (rc != 0) {
		return rc;
	}
	rc = bfs_index_decode(tmp, v.mv_data, v.mv_size, old);
	if (rc == 0 && release_ino) {
		MDB_val ik = {sizeof(old->ino), &old->ino};
		rc = mdb_del(txn, idx->inos, &ik, NULL);
		if (rc != 0 && rc != MDB_NOTFOUND) {
			return rc;
		}
	}
	return mdb_del(txn, idx->ent, &k, NULL);
}

int bfs_index_dir_set_listed(struct bfs_index *idx, const char *dir,
			     time_t listed_at)
{
	struct bfs_wtxn w = {.idx = idx};
	MDB_val k, v;
	int64_t t = listed_at;
	int rc;

	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		k = bfs_dirs_key(w.tmp, dir);
		/* Only a listing still there: an invalidate meanwhile wins. */
		rc = k.mv_data != NULL ? mdb_get(w.txn, idx->dirs, &k, &v) :
					 ENOMEM;
		if (rc == 0) {
			v.mv_size = sizeof(t);
			v.mv_data = &t;
			rc = mdb_put(w.txn, idx->dirs, &k, &v, 0);
		}
		rc = bfs_index_end(&w, rc == MDB_NOTFOUND ? 0 : rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

int bfs_index_listing_claim(struct bfs_index *idx, const char *dir,
			    unsigned max_age)
{
	struct bfs_wtxn w = {.idx = idx};
	struct bfs_lister_rec r;
	MDB_val k, v;
	int64_t now = (int64_t)time(NULL);
	int rc;

	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		k = bfs_dirs_key(w.tmp, dir);
		rc = k.mv_data != NULL ? mdb_get(w.txn, idx->listers, &k, &v) :
					 ENOMEM;
		if (rc == 0 && v.mv_size == sizeof(r)) {
			memcpy(&r, v.mv_data, sizeof(r));
			/* A claim of a process that died, or is stuck, is
			 * void. */
			if (r.pid != (int64_t)getpid() && r.pid > 0 &&
			    now - r.started < (int64_t)max_age &&
			    now >= r.started &&
			    !(kill((pid_t)r.pid, 0) == -1 && errno == ESRCH)) {
				rc = EBUSY;
			}
		}
		if (rc == 0 || rc == MDB_NOTFOUND) {
			r = (struct bfs_lister_rec){(int64_t)getpid(), now};
			v.mv_size = sizeof(r);
			v.mv_data = &r;
			rc = mdb_put(w.txn, idx->listers, &k, &v, 0);
		}
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

void bfs_index_listing_release(struct bfs_index *idx, const char *dir)
{
	struct bfs_wtxn w = {.idx = idx};
	struct bfs_lister_rec r;
	MDB_val k, v;
	int rc;

	do {
		/* If it fails, waiters take over once the claim is stale. */
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		k = bfs_dirs_key(w.tmp, dir);
		rc = k.mv_data != NULL ? mdb_get(w.txn, idx->listers, &k, &v) :
					 ENOMEM;
		if (rc == 0 && v.mv_size == sizeof(r)) {
			memcpy(&r, v.mv_data, sizeof(r));
			rc = r.pid == (int64_t)getpid() ?
				     mdb_del(w.txn, idx->listers, &k, NULL) :
				     MDB_NOTFOUND;
		}
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
}

int bfs_index_put(struct bfs_index *idx, const char *dir, struct bfs_entry *e)
{
	struct bfs_wtxn w = {.idx = idx, .dir = dir, .adds = true};
	uint64_t ino = e->ino;
	int rc;

	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		e->ino = ino; /* not one given by an aborted attempt */
		rc = bfs_index_put_txn(idx, w.txn, w.tmp, dir, e);
		if (rc == 0) {
			rc = bfs_index_note_change(idx, w.txn,
						   bfs_ent_key(w.tmp, dir,
							       e->name));
		}
		if (rc == 0) {
			rc = bfs_index_touch_txn(idx, w.txn, w.tmp, dir,
						 bfs_now_ns(), false);
		}
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

int bfs_index_learn(struct bfs_index *idx, const char *const *keys,
		    const struct bfs_entry *ents, size_t n)
{
	struct bfs_wtxn w = {.idx = idx, .adds = true};
	int64_t now = bfs_now_ns();
	size_t i;
	int rc;

	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		for (i = 0; rc == 0 && i < n; i++) {
			struct bfs_entry e = ents[i], old;
			char *dir;
			MDB_val k, v;

			rc = bfs_key_split(w.tmp, keys[i], &dir, &e.name);
			if (rc != 0) {
				break;
			}
			e.ino = 0;
			e.flags = 0;
			k = bfs_ent_key(w.tmp, dir, e.name);
			if (k.mv_data == NULL) {
				rc = ENOMEM;
				break;
			}
			if (mdb_get(w.txn, idx->ent, &k, &v) == 0 &&
			    bfs_index_decode(w.tmp, v.mv_data, v.mv_size,
					     &old) == 0 &&
			    (old.flags & BFS_ENT_PENDING)) {
				continue; /* written through the share: ours
					   * wins */
			}
			rc = bfs_index_put_txn(idx, w.txn, w.tmp, dir, &e);
			if (rc == 0) {
				/* Its children must be evictable too. */
				rc = bfs_index_touch_txn(idx, w.txn, w.tmp, dir,
							 now, false);
			}
		}
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

int bfs_index_remove(struct bfs_index *idx, const char *dir, const char *name)
{
	struct bfs_wtxn w = {.idx = idx};
	struct bfs_entry old;
	int rc;

	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		rc = bfs_index_remove_txn(idx, w.txn, w.tmp, dir, name, &old,
					  true);
		rc = rc == MDB_NOTFOUND ? 0 : rc;
		if (rc == 0) {
			rc = bfs_index_note_change(idx, w.txn,
						   bfs_ent_key(w.tmp, dir,
							       name));
		}
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

/* The body of bfs_index_rename. */
static int bfs_index_rename_txn(struct bfs_index *idx, MDB_txn *txn,
				TALLOC_CTX *tmp, const char *sdir,
				const char *sname, const char *ddir,
				const char *dname)
{
	struct bfs_entry e = {0}, gone;
	MDB_val ik, iv;
	char *full = NULL;
	int rc;

	rc = bfs_index_remove_txn(idx, txn, tmp, sdir, sname, &e, false);
	if (rc == 0) {
		rc = bfs_index_remove_txn(idx, txn, tmp, ddir, dname, &gone,
					  true);
		rc = rc == MDB_NOTFOUND ? 0 : rc;
	}
	if (rc == 0) {
		/* The inode follows the entry: its owner is the new key. */
		full = bfs_full_key(tmp, ddir, dname, e.is_dir);
		rc = full != NULL ? 0 : ENOMEM;
	}
	if (rc == 0) {
		ik.mv_size = sizeof(e.ino);
		ik.mv_data = &e.ino;
		iv.mv_size = strlen(full);
		iv.mv_data = full;
		rc = mdb_put(txn, idx->inos, &ik, &iv, 0);
	}
	if (rc == 0) {
		e.name = talloc_strdup(tmp, dname);
		rc = e.name != NULL ?
			bfs_index_put_txn(idx, txn, tmp, ddir, &e) : ENOMEM;
	}
	if (rc == 0) {
		rc = bfs_index_note_change(idx, txn,
					   bfs_ent_key(tmp, sdir, sname));
	}
	if (rc == 0) {
		rc = bfs_index_note_change(idx, txn,
					   bfs_ent_key(tmp, ddir, dname));
	}
	if (rc == 0) {
		rc = bfs_index_touch_txn(idx, txn, tmp, ddir, bfs_now_ns(),
					 false);
	}
	return rc == MDB_NOTFOUND ? ENOENT : rc;
}

int bfs_index_rename(struct bfs_index *idx, const char *sdir,
		     const char *sname, const char *ddir, const char *dname)
{
	struct bfs_wtxn w = {.idx = idx, .dir = ddir};
	int rc;

	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		rc = bfs_index_rename_txn(idx, w.txn, w.tmp, sdir, sname, ddir,
					  dname);
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

/* ---- administration ------------------------------------------------------------ */

int bfs_index_count(struct bfs_index *idx, uint64_t *entries, uint64_t *dirs)
{
	MDB_txn *txn;
	MDB_stat st;
	int rc = bfs_lmdb_txn_begin(idx->env, MDB_RDONLY, &txn);

	if (rc != 0) {
		return bfs_lmdb_errno(rc);
	}
	rc = mdb_stat(txn, idx->ent, &st);
	if (rc == 0) {
		*entries = st.ms_entries;
		rc = mdb_stat(txn, idx->dirs, &st);
	}
	if (rc == 0) {
		*dirs = st.ms_entries;
	}
	bfs_lmdb_txn_abort(txn);
	return bfs_lmdb_errno(rc);
}

typedef void (*bfs_index_each_fn)(void *priv, const char *key,
				  const struct bfs_entry *e);

/* "<dir>\0<name>" -> "<dir><name>" (and "/" for a directory), or NULL. */
static char *bfs_ent_full_key(TALLOC_CTX *mem_ctx, const MDB_val *k,
			      bool is_dir)
{
	const char *kd = k->mv_data;
	size_t dl = strnlen(kd, k->mv_size);

	if (dl == k->mv_size) {
		return NULL; /* not an entry key */
	}
	return talloc_asprintf(mem_ctx, "%.*s%.*s%s", (int)dl, kd,
			       (int)(k->mv_size - dl - 1), kd + dl + 1,
			       is_dir ? "/" : "");
}

/* Delete the records of db whose key starts with start (len bytes). */
static int bfs_index_drop_range(struct bfs_index *idx, MDB_txn *txn,
				MDB_dbi db, const char *start, size_t len,
				bool keep_pending, uint64_t *n,
				bfs_index_each_fn each, void *priv)
{
	MDB_val k = {len, (void *)start}, v;
	MDB_cursor *cur;
	int rc = mdb_cursor_open(txn, db, &cur);

	if (rc != 0) {
		return rc;
	}
	rc = len > 0 ? mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE) :
		       mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	while (rc == 0 && k.mv_size >= len &&
	       memcmp(k.mv_data, start, len) == 0) {
		struct bfs_entry e;

		if (keep_pending &&
		    bfs_index_decode(NULL, v.mv_data, v.mv_size, &e) == 0) {
			talloc_free(e.etag);
			if (e.flags & BFS_ENT_PENDING) {
				rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
				continue;
			}
			if (db == idx->ent) {
				MDB_val ik = {sizeof(e.ino), &e.ino};
				rc = mdb_del(txn, idx->inos, &ik, NULL);
				if (rc != 0 && rc != MDB_NOTFOUND) {
					break;
				}
			}
			if (db == idx->ent && each != NULL && !e.is_dir) {
				char *key = bfs_ent_full_key(NULL, &k, false);
				if (key != NULL) {
					bfs_index_decode(key, v.mv_data,
							 v.mv_size, &e);
					each(priv, key, &e);
				}
				talloc_free(key);
			}
		}
		rc = bfs_lmdb_del_next(cur, &k, &v);
		(*n)++;
	}
	mdb_cursor_close(cur);
	return bfs_lmdb_walk_end(rc);
}

/* Drop the last-used stamps (used and lru) of the directories whose
 * used key starts with start (len bytes). */
static int bfs_index_drop_stamps(struct bfs_index *idx, MDB_txn *txn,
				 TALLOC_CTX *tmp, const char *start, size_t len)
{
	MDB_val k = {len, (void *)start}, v;
	MDB_cursor *cur;
	int rc = mdb_cursor_open(txn, idx->used, &cur);

	if (rc != 0) {
		return rc;
	}
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	while (rc == 0 && k.mv_size >= len &&
	       memcmp(k.mv_data, start, len) == 0) {
		if (v.mv_size == sizeof(int64_t)) {
			/* Copies: the pages under k and v may move. */
			MDB_val lk = {sizeof(int64_t),
				      talloc_memdup(tmp, v.mv_data,
						    sizeof(int64_t))};
			MDB_val d = {k.mv_size,
				     talloc_memdup(tmp, k.mv_data, k.mv_size)};

			if (lk.mv_data == NULL || d.mv_data == NULL) {
				rc = ENOMEM;
				break;
			}
			rc = mdb_del(txn, idx->lru, &lk, &d);
			if (rc != 0 && rc != MDB_NOTFOUND) {
				break;
			}
		}
		rc = bfs_lmdb_del_next(cur, &k, &v);
	}
	mdb_cursor_close(cur);
	return bfs_lmdb_walk_end(rc);
}

/*
 * each() runs inside the write transaction; should the map be full, the
 * transaction runs again and each() sees those entries again.
 */
int bfs_index_invalidate_tree(struct bfs_index *idx, const char *prefix,
			      uint64_t *n, bfs_index_each_fn each, void *priv)
{
	struct bfs_wtxn w = {.idx = idx};
	char *dk;
	int rc;

	do {
		*n = 0;
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		dk = talloc_asprintf(w.tmp, "/%s", prefix);
		rc = dk != NULL ? 0 : ENOMEM;
		if (rc == 0) {
			rc = bfs_index_drop_range(idx, w.txn, idx->dirs, dk,
						  strlen(dk), false, n, NULL,
						  NULL);
		}
		if (rc == 0) {
			rc = bfs_index_drop_range(idx, w.txn, idx->ent, prefix,
						  strlen(prefix), true, n, each,
						  priv);
		}
		if (rc == 0) {
			/* Forgotten too: the next listing is the whole
			 * truth. */
			uint64_t changes = 0;
			rc = bfs_index_drop_range(idx, w.txn, idx->changed,
						  prefix, strlen(prefix), false,
						  &changes, NULL, NULL);
		}
		if (rc == 0) {
			/* Nothing left to evict there: the next listing
			 * stamps them anew. */
			rc = bfs_index_drop_stamps(idx, w.txn, w.tmp, dk,
						   strlen(dk));
		}
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

/* ---- eviction ---------------------------------------------------------------- */

/*
 * Give back the inode of entry key k if the inode map says it is k's
 * (a number some other key holds is not this entry's to release).
 */
static int bfs_index_release_ino(struct bfs_index *idx, MDB_txn *txn,
				 TALLOC_CTX *tmp, const MDB_val *k,
				 const struct bfs_entry *e)
{
	char *full = bfs_ent_full_key(tmp, k, e->is_dir);
	MDB_val ik = {sizeof(e->ino), (void *)&e->ino}, iv;
	int rc;

	if (full == NULL) {
		return 0;
	}
	rc = mdb_get(txn, idx->inos, &ik, &iv);
	if (rc == 0 && iv.mv_size == strlen(full) &&
	    memcmp(iv.mv_data, full, iv.mv_size) == 0) {
		rc = mdb_del(txn, idx->inos, &ik, NULL);
	}
	talloc_free(full);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

/*
 * Evict one directory (its used key uk, "/<dir prefix>", stamped stamp):
 * its listing first, so the next access lists it from S3 again, then up
 * to max of its children, never a pending one.  *done once none but
 * pending ones are left: its stamp goes too.  A directory larger than
 * max goes over several transactions, without a listing meanwhile.
 */
static int bfs_index_evict_dir(struct bfs_index *idx, MDB_txn *txn,
			       TALLOC_CTX *tmp, const MDB_val *uk,
			       int64_t stamp, uint64_t max, uint64_t *ents,
			       bool *done)
{
	const char *dir = (const char *)uk->mv_data + 1;
	size_t dl = uk->mv_size - 1;
	MDB_val k = *uk, v, lk = {sizeof(stamp), &stamp};
	MDB_cursor *cur;
	uint64_t n = 0;
	int rc;

	*done = false;
	rc = mdb_del(txn, idx->dirs, &k, NULL);
	if (rc != 0 && rc != MDB_NOTFOUND) {
		return rc;
	}
	k.mv_data = talloc_size(tmp, dl + 1);
	if (k.mv_data == NULL) {
		return ENOMEM;
	}
	memcpy(k.mv_data, dir, dl);
	((char *)k.mv_data)[dl] = '\0';
	k.mv_size = dl + 1;
	rc = mdb_cursor_open(txn, idx->ent, &cur);
	if (rc != 0) {
		return rc;
	}
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	while (rc == 0) {
		const char *kd = k.mv_data;
		struct bfs_entry e;
		bool decoded;

		if (k.mv_size <= dl || memcmp(kd, dir, dl) != 0 ||
		    kd[dl] != '\0') {
			break; /* past this directory's range */
		}
		decoded = bfs_index_decode(NULL, v.mv_data, v.mv_size,
					   &e) == 0;
		if (decoded) {
			talloc_free(e.etag);
		}
		if (decoded && (e.flags & BFS_ENT_PENDING)) {
			/* Bytes not in S3 yet: a listing cannot bring
			 * them back. */
			rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
			continue;
		}
		if (n == max) {
			mdb_cursor_close(cur);
			return 0; /* the next transaction goes on */
		}
		if (decoded) {
			rc = bfs_index_release_ino(idx, txn, tmp, &k, &e);
			if (rc != 0) {
				break;
			}
		}
		rc = bfs_lmdb_del_next(cur, &k, &v);
		n++;
		(*ents)++;
	}
	mdb_cursor_close(cur);
	rc = bfs_lmdb_walk_end(rc);
	if (rc == 0) {
		rc = mdb_del(txn, idx->used, (MDB_val *)uk, NULL);
		rc = rc == MDB_NOTFOUND ? 0 : rc;
	}
	if (rc == 0) {
		rc = mdb_del(txn, idx->lru, &lk, (MDB_val *)uk);
		rc = rc == MDB_NOTFOUND ? 0 : rc;
	}
	*done = rc == 0;
	return rc;
}

/* uk ("/<dir prefix>") is the used key of dir. */
static bool bfs_index_is_dir(const MDB_val *uk, const char *dir)
{
	size_t dl = dir != NULL ? strlen(dir) : 0;

	return dir != NULL && uk->mv_size == dl + 1 &&
	       ((const char *)uk->mv_data)[0] == '/' &&
	       memcmp((const char *)uk->mv_data + 1, dir, dl) == 0;
}

/*
 * One transaction of an eviction: the least recently used directories
 * (but except, and none used since cutoff) until the pages in use are at
 * most target, or batch records went (*more: go on in another
 * transaction).
 */
static int bfs_index_evict_txn(struct bfs_index *idx, MDB_txn *txn,
			       TALLOC_CTX *tmp, const char *except,
			       size_t target, int64_t cutoff, uint64_t batch,
			       uint64_t *dirs, uint64_t *ents, bool *more)
{
	MDB_cursor *cur;
	MDB_val k, v, uk;
	size_t live;
	int64_t stamp = 0;
	bool done;
	int rc;

	*more = false;
	for (;;) {
		rc = bfs_index_live(idx, txn, &live);
		if (rc != 0 || live <= target) {
			return rc;
		}
		if (*ents >= batch) {
			*more = true;
			return 0;
		}
		rc = mdb_cursor_open(txn, idx->lru, &cur);
		if (rc != 0) {
			return rc;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
		if (rc == 0 && bfs_index_is_dir(&v, except)) {
			rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
		}
		if (rc == 0 && (k.mv_size != sizeof(stamp) || v.mv_size < 1)) {
			rc = MDB_CORRUPTED;
		}
		if (rc == 0) {
			memcpy(&stamp, k.mv_data, sizeof(stamp));
			uk.mv_size = v.mv_size;
			uk.mv_data = talloc_memdup(tmp, v.mv_data, v.mv_size);
			rc = uk.mv_data != NULL ? 0 : ENOMEM;
		}
		mdb_cursor_close(cur);
		if (rc == MDB_NOTFOUND) {
			return 0; /* nothing left to evict */
		}
		if (rc != 0) {
			return rc;
		}
		if (stamp >= cutoff) {
			return 0; /* the rest are in use */
		}
		rc = bfs_index_evict_dir(idx, txn, tmp, &uk, stamp,
					 batch - *ents, ents, &done);
		if (rc != 0) {
			return rc;
		}
		*dirs += done ? 1 : 0;
	}
}

/*
 * Evict the least recently used listings until the pages in use are at
 * most target bytes: never except (the directory the operation that
 * asked is for), and unless any_age (the map is full at its ceiling) none
 * used in the last 2 * use_every seconds, whose stamps may be that old
 * while they are in use (a lookup right after its listing was stored
 * must find it).  The listings evicted are counted and logged.  true if
 * anything went.
 */
static bool bfs_index_evict(struct bfs_index *idx, const char *except,
			    size_t target, bool any_age)
{
	int64_t cutoff = any_age ? INT64_MAX :
				   bfs_now_ns() - 2 * idx->use_every_ns;
	uint64_t dirs = 0, ents = 0;
	uint64_t batch = any_age ? BFS_INDEX_EVICT_FIRST : BFS_INDEX_EVICT_BATCH;
	bool more = true;
	int rc = 0;

	while (more) {
		struct bfs_wtxn w = {.idx = idx, .dir = except,
				     .evicting = true};
		uint64_t d, e;

		do {
			d = e = 0;
			rc = bfs_index_begin(&w);
			if (rc != 0) {
				break;
			}
			rc = bfs_index_evict_txn(idx, w.txn, w.tmp, except,
						 target, cutoff, batch, &d, &e,
						 &more);
			rc = bfs_index_end(&w, rc);
		} while (rc == BFS_INDEX_AGAIN);
		if (rc == ENOSPC && batch > 1) {
			/* Its copies of pages did not fit: fewer at once. */
			batch /= 2;
			more = true;
			continue;
		}
		if (rc != 0) {
			break;
		}
		dirs += d;
		ents += e;
		if (batch < BFS_INDEX_EVICT_BATCH) {
			batch *= 2;
		}
	}
	if (rc != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot evict listings from the "
			"index in %s: %s", idx->dir, strerror(rc));
	}
	if (ents > 0 || dirs > 0) {
		idx->evicted += dirs;
		bfs_log(BFS_LOG_NOTICE, "bucketfs: evicted the %llu folder "
			"listing(s) used least recently (%llu entries) from "
			"the index in %s, to keep it under %s%s; they are "
			"listed from S3 again when used",
			(unsigned long long)dirs, (unsigned long long)ents,
			idx->dir, bfs_size_str(target).s,
			any_age ? " (its map is full at its ceiling)" : "");
	} else if (!any_age && rc == 0 &&
		   time(NULL) - idx->over_logged >= 600) {
		idx->over_logged = time(NULL);
		bfs_log(BFS_LOG_WARNING, "bucketfs: the index in %s is over "
			"its budget of %s, but no listing in it is unused for "
			"%lld seconds: it grows on", idx->dir,
			bfs_size_str(idx->budget).s,
			(long long)(2 * idx->use_every_ns / 1000000000));
	}
	return dirs + ents > 0;
}

/* ---- consistency check ------------------------------------------------------ */

static int bfs_u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

struct bfs_owned {
	const uint64_t *inos; /* sorted */
	size_t n;
};

static int bfs_ino_owned(void *priv, const MDB_val *k, const MDB_val *v)
{
	const struct bfs_owned *o = priv;
	uint64_t ino;

	(void)v;
	if (k->mv_size != sizeof(ino)) {
		return 0;
	}
	memcpy(&ino, k->mv_data, sizeof(ino));
	/* No entries: inos is NULL, which bsearch may not get. */
	return o->n > 0 &&
	       bsearch(&ino, o->inos, o->n, sizeof(ino), bfs_u64_cmp) != NULL;
}

/*
 * One entry record: it decodes and its inode is its own in the map.
 * *ino gets the inode it ends up with.
 */
static int bfs_index_check_entry(struct bfs_index *idx, MDB_txn *txn,
				 MDB_cursor *cur, TALLOC_CTX *tmp,
				 const MDB_val *k, const MDB_val *v,
				 bool repair, struct bfs_index_fsck *r,
				 struct bfs_entry *e, char **full,
				 uint64_t *ino)
{
	MDB_val ik = {sizeof(e->ino), &e->ino}, iv, fv;
	int rc;

	*full = NULL;
	if (bfs_index_decode(tmp, v->mv_data, v->mv_size, e) != 0 ||
	    (*full = bfs_ent_full_key(tmp, k, e->is_dir)) == NULL) {
		/* Its directory is listed again at the next access. */
		char *dir = talloc_strndup(tmp, k->mv_data,
					   strnlen(k->mv_data, k->mv_size));
		MDB_val dk = bfs_dirs_key(tmp, dir != NULL ? dir : "");

		r->bad_entries++;
		if (repair && dk.mv_data != NULL) {
			rc = mdb_del(txn, idx->dirs, &dk, NULL);
			if (rc != 0 && rc != MDB_NOTFOUND) {
				return rc;
			}
		}
		return repair ? mdb_cursor_del(cur, 0) : 0;
	}
	r->entries++;
	fv.mv_size = strlen(*full);
	fv.mv_data = *full;
	rc = mdb_get(txn, idx->inos, &ik, &iv);
	if (rc == MDB_NOTFOUND) {
		r->ino_missing++;
		rc = repair ? mdb_put(txn, idx->inos, &ik, &fv, 0) : 0;
	} else if (rc == 0 && (iv.mv_size != fv.mv_size ||
			       memcmp(iv.mv_data, *full, fv.mv_size) != 0)) {
		/* Another key owns this number: this entry gets a new one. */
		r->ino_shared++;
		if (repair) {
			void *buf;
			size_t len;

			rc = bfs_index_alloc_ino(idx, txn, *full, &e->ino);
			if (rc == 0) {
				rc = bfs_index_encode(tmp, e, &buf, &len);
			}
			if (rc == 0) {
				MDB_val nv = {len, buf};
				rc = mdb_cursor_put(cur, (MDB_val *)k, &nv,
						    MDB_CURRENT);
			}
		}
	}
	*ino = e->ino;
	return rc;
}

/* The body of bfs_index_check. */
static int bfs_index_check_txn(struct bfs_index *idx, MDB_txn *txn,
			       TALLOC_CTX *tmp, bool repair,
			       bfs_index_each_fn each, void *priv,
			       struct bfs_index_fsck *r)
{
	MDB_cursor *cur = NULL;
	MDB_val k, v;
	uint64_t *inos = NULL;
	size_t n = 0;
	int rc;

	memset(r, 0, sizeof(*r));
	rc = mdb_cursor_open(txn, idx->ent, &cur);
	if (rc == 0) {
		rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	}
	/* Every entry: decodes, owns its inode. */
	while (rc == 0) {
		TALLOC_CTX *one = talloc_new(tmp);
		struct bfs_entry e;
		char *full;
		uint64_t ino = 0;
		bool dropped;

		if (one == NULL) {
			rc = ENOMEM;
			break;
		}
		rc = bfs_index_check_entry(idx, txn, cur, one, &k, &v, repair,
					   r, &e, &full, &ino);
		dropped = full == NULL && repair;
		if (rc == 0 && full != NULL) {
			inos = talloc_realloc(tmp, inos, uint64_t, n + 1);
			if (inos == NULL) {
				rc = ENOMEM;
			} else {
				inos[n++] = ino;
			}
			if (rc == 0 && each != NULL && !e.is_dir) {
				each(priv, full, &e);
			}
		}
		talloc_free(one);
		if (rc == 0) {
			rc = mdb_cursor_get(cur, &k, &v,
					    dropped ? MDB_GET_CURRENT : MDB_NEXT);
		}
	}
	if (cur != NULL) {
		mdb_cursor_close(cur);
	}
	rc = bfs_lmdb_walk_end(rc);
	/* Every inode in the map: owned by an entry. */
	if (rc == 0) {
		struct bfs_owned owned = {inos, n};

		if (n > 1) { /* no entries: inos is NULL, not for qsort */
			qsort(inos, n, sizeof(*inos), bfs_u64_cmp);
		}
		rc = bfs_lmdb_sweep(txn, idx->inos, repair, bfs_ino_owned,
				    &owned, &r->ino_orphans);
	}
	return rc;
}

/*
 * Without repair nothing is changed, and the commit writes nothing.  As
 * in invalidate_tree, each() may see entries again should the map be full.
 */
int bfs_index_check(struct bfs_index *idx, bool repair,
		    void (*each)(void *priv, const char *key,
				 const struct bfs_entry *e),
		    void *priv, struct bfs_index_fsck *r)
{
	struct bfs_wtxn w = {.idx = idx};
	int rc;

	memset(r, 0, sizeof(*r));
	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		rc = bfs_index_check_txn(idx, w.txn, w.tmp, repair, each, priv,
					 r);
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}
