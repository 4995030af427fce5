/*
 * The metadata index in LMDB.
 *
 * Databases:
 *   ent   "<dir prefix>\0<name>"  -> entry record (see bfs_index_encode)
 *   dirs  "/<dir prefix>"         -> int64 time the listing was stored,
 *                                    or that and an int64 time it was
 *                                    last used (struct bfs_dir_rec)
 *                                    (LMDB keys cannot be empty: the root
 *                                    directory's prefix is "")
 *   inos  uint64 inode (native)   -> full key of the entry that owns it
 *   meta  "bucket"                -> the bucket this index describes
 *   listers "/<dir prefix>"       -> process listing it from S3 right now
 *                                    (struct bfs_lister_rec)
 *
 * Size (issue 19 point 8).  The map grows when a write finds it full
 * (bfs_lmdb_grow: doubling up to a ceiling), and once the pages in use
 * pass a budget the listings used least recently are evicted after the
 * write that passed it (bfs_index_evict), in transactions of their own.
 * A listing's write is what it was before eviction existed: a stored
 * listing is its own use (its dirs record stays 8 bytes), and a later
 * use renews the record's second stamp from bfs_index_dir_listed at most
 * once a minute, only once data.mdb is past half the budget (before,
 * eviction is far off and reads write nothing).  On a full disk the
 * listing's transaction needs the pages it needed before, no more.
 */
#include "bfs_index.h"

#include <ctype.h>
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
/*
 * Version 1 records hold no bfs_meta; version 2 appends it after the
 * fixed part.  An entry without kept times or attributes (most: what a
 * listing brings) is written as version 1, 32 bytes smaller; a version 2
 * record always keeps something.
 */
#define BFS_ENT_VERSION_1 1
#define BFS_ENT_VERSION 2

/* A use renews a folder's stamp once in this many seconds at most... */
#define BFS_INDEX_USE_EVERY 60
/* ...and a folder used (or listed) this recently is never evicted. */
#define BFS_INDEX_KEEP_RECENT (2 * BFS_INDEX_USE_EVERY)
/*
 * Records one eviction transaction deletes, starting small: at the map's
 * ceiling the copies of the pages it changes must fit in what is left,
 * and each commit frees pages for the next.  Other writers wait for one.
 */
#define BFS_INDEX_EVICT_FIRST 64
#define BFS_INDEX_EVICT_BATCH 4096
/* Records one eviction deletes at most: a store that passes the budget
 * waits for it; the stores after it go on while the index is over. */
#define BFS_INDEX_EVICT_MAX 65536
/* At the ceiling, evictions of a quarter of the pages in use for one
 * write: a write larger than the whole map must not empty the index. */
#define BFS_INDEX_CEILING_EVICTIONS 2
/* Write attempts of one operation (the map doubles 16 times from 1 MiB
 * to 64 GiB). */
#define BFS_INDEX_TRIES 40
/* bfs_index_end: the map was full and has room now: run it again. */
#define BFS_INDEX_AGAIN (-1)

struct bfs_index {
	MDB_env *env;
	MDB_dbi ent, dirs, inos, meta;
	/*
	 * "changed": entry key -> the number (int64) of the change this
	 * host last made to that name (put, remove, rename) and its time
	 * (struct bfs_change_rec); "changes" in meta counts them.  A listing that started before that change
	 * (bfs_index_change_seq read lower) may predate it: it neither
	 * drops nor brings back what the change made.  Listings that start
	 * later retire the record.  A count, not the wall clock: a clock
	 * stepped back made a listing that started before an upload's end
	 * look later, and its older ETag replaced the new one's.  Records
	 * of another size (a time alone: older modules) count as none.
	 */
	MDB_dbi changed;
	MDB_dbi listers;
	char *dir;		/* for log lines */
	size_t budget;		/* bytes in use above which listings go */
	uint64_t evicted;	/* listings evicted through this handle */
	time_t touch_logged;	/* last "cannot note a use" line */
};

/* A dirs record: when listed and, once used again later, when used. */
struct bfs_dir_rec {
	int64_t listed;
	int64_t used;
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

/* What version 2 adds after the fixed part of version 1, before the ETag. */
struct bfs_ent_meta_rec {
	uint32_t have;
	uint32_t attrs;
	int64_t mtime_sec;
	uint32_t mtime_nsec;
	int64_t btime_sec;
	uint32_t btime_nsec;
} __attribute__((packed));

/* A dirs record's times; false if it is not one. */
static bool bfs_dir_rec_get(const MDB_val *v, struct bfs_dir_rec *r)
{
	if (v->mv_size == sizeof(r->listed)) {
		memcpy(&r->listed, v->mv_data, sizeof(r->listed));
		r->used = r->listed; /* a listing is a use */
		return true;
	}
	if (v->mv_size == sizeof(*r)) {
		memcpy(r, v->mv_data, sizeof(*r));
		if (r->used < r->listed) {
			r->used = r->listed;
		}
		return true;
	}
	return false;
}

static int bfs_index_destructor(struct bfs_index *idx)
{
	bfs_lmdb_close(idx->env);
	return 0;
}

/* ---- write transactions -------------------------------------------------- */

/* A size for a log line. */
static double bfs_mib(size_t bytes)
{
	return (double)bytes / (1 << 20);
}

/*
 * One write transaction of the index.  Its body runs between
 * bfs_index_begin and bfs_index_end in a loop: when LMDB finds the map
 * full the transaction is aborted, the map grows (or, at its ceiling,
 * listings are evicted) and the body runs again from the start, so a
 * body sets its outputs afresh each time:
 *
 *	do {
 *		rc = bfs_index_begin(&w);
 *		if (rc != 0)
 *			break;
 *		rc = ...body on w.txn, w.tmp...;
 *		rc = bfs_index_end(&w, rc);
 *	} while (rc == BFS_INDEX_AGAIN);
 *
 * A body returns LMDB's code as it got it (MDB_MAP_FULL above all).
 */
struct bfs_wtxn {
	struct bfs_index *idx;
	MDB_txn *txn;
	TALLOC_CTX *tmp;	/* freed with the transaction */
	size_t map;		/* the map's size when txn began */
	const char *dir;	/* the folder it writes for: kept by evictions */
	bool adds;		/* may take the index over its budget */
	bool evicting;		/* an eviction: makes no room by evicting */
	unsigned ceiling_evictions;
	unsigned tries;
};

static int bfs_index_evict(struct bfs_index *idx, size_t target,
			   const char *except, uint64_t max_records)
	__attribute__((warn_unused_result));
static int bfs_index_live(struct bfs_index *idx, MDB_txn *txn, size_t *bytes)
	__attribute__((warn_unused_result));

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
	__attribute__((warn_unused_result));
static int bfs_index_begin(struct bfs_wtxn *w)
{
	size_t file;
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
	bfs_lmdb_sizes(w->idx->env, &w->map, &file);
	return 0;
}

/*
 * The map was full: grow it, or at its ceiling evict listings (twice at
 * most for one write).  true: run the transaction again.
 */
static bool bfs_index_make_room(struct bfs_wtxn *w)
{
	struct bfs_index *idx = w->idx;
	size_t live = 0;
	int rc;

	if (++w->tries > BFS_INDEX_TRIES) {
		bfs_log(BFS_LOG_ERR, "bucketfs: the index in %s is still full "
			"after %u tries at a map of %.1f MiB", idx->dir,
			BFS_INDEX_TRIES, bfs_mib(w->map));
		return false;
	}
	rc = bfs_lmdb_grow(idx->env, w->map);
	if (rc == 0) {
		return true;
	}
	if (rc != ENOSPC || w->evicting) {
		/* A remap failure is logged where it happened; an
		 * eviction that finds no room gives up (its caller says). */
		return false;
	}
	if (w->ceiling_evictions == BFS_INDEX_CEILING_EVICTIONS) {
		bfs_log(BFS_LOG_ERR, "bucketfs: the index in %s is full at its "
			"ceiling of %.1f MiB: a write too large for it fails "
			"(ENOSPC) after %d evictions", idx->dir,
			bfs_mib(w->map), BFS_INDEX_CEILING_EVICTIONS);
		return false;
	}
	w->ceiling_evictions++;
	bfs_log(BFS_LOG_WARNING, "bucketfs: the index in %s is full at its "
		"ceiling of %.1f MiB: evicting the listings used least "
		"recently", idx->dir, bfs_mib(w->map));
	rc = bfs_index_live_now(idx, &live);
	if (rc == 0) {
		/* A quarter of what is in use. */
		rc = bfs_index_evict(idx, live / 4 * 3, w->dir,
				     BFS_INDEX_EVICT_MAX);
	}
	if (rc == 0) {
		return true;
	}
	bfs_log(BFS_LOG_ERR, "bucketfs: the index in %s is full at its "
		"ceiling of %.1f MiB and no listing could be evicted (%s; "
		"none is evicted that was used in the last %d s, nor a "
		"pending entry)", idx->dir, bfs_mib(w->map), strerror(rc),
		BFS_INDEX_KEEP_RECENT);
	return false;
}

/*
 * After a write that added to the index: over its budget, evict the
 * listings used least recently, down to 7/8 of it.  Its own transactions,
 * after the write's commit: the write needed the pages it always did, and
 * an eviction that fails (a full disk) costs it nothing.
 */
static void bfs_index_keep_budget(struct bfs_index *idx, const char *except)
{
	size_t map, file, live = 0;
	int rc;

	/* Cheap first: data.mdb is never smaller than the pages in use. */
	bfs_lmdb_sizes(idx->env, &map, &file);
	if (file <= idx->budget || bfs_index_live_now(idx, &live) != 0 ||
	    live <= idx->budget) {
		return;
	}
	rc = bfs_index_evict(idx, idx->budget / 8 * 7, except,
			     BFS_INDEX_EVICT_MAX);
	if (rc != 0 && rc != ENOSPC) {
		bfs_log(BFS_LOG_WARNING, "bucketfs: the index in %s is over "
			"its budget of %.1f MiB and evicting failed: %s",
			idx->dir, bfs_mib(idx->budget), strerror(rc));
	}
}

/*
 * Commit (rc 0) or abort the transaction.  BFS_INDEX_AGAIN when the map
 * was full and has room now; else 0 or an errno value.
 */
static int bfs_index_end(struct bfs_wtxn *w, int rc)
	__attribute__((warn_unused_result));
static int bfs_index_end(struct bfs_wtxn *w, int rc)
{
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
	if (rc == 0 && w->adds && !w->evicting) {
		bfs_index_keep_budget(w->idx, w->dir);
	}
	return bfs_lmdb_errno(rc);
}

/*
 * A folder's record from before the endpoint was recorded is the bare
 * bucket name (bucket names hold no '/'); it is taken as this share's
 * and rewritten, since nothing tells which endpoint filled it.
 */
static bool bfs_index_old_identity(MDB_val v, const char *served)
{
	const char *bucket = strrchr(served, '/');

	bucket = bucket != NULL ? bucket + 1 : served;
	return memchr(v.mv_data, '/', v.mv_size) == NULL &&
	       v.mv_size == strlen(bucket) &&
	       memcmp(v.mv_data, bucket, v.mv_size) == 0;
}

char *bfs_index_identity(TALLOC_CTX *mem_ctx, const char *endpoint,
			 const char *bucket)
{
	char *id, *p;
	size_t n;

	if (endpoint == NULL || endpoint[0] == '\0') {
		/* AWS: bucket names are unique there, whatever the region. */
		return talloc_asprintf(mem_ctx, "aws/%s", bucket);
	}
	n = strlen(endpoint);
	while (n > 0 && endpoint[n - 1] == '/') {
		n--;
	}
	id = talloc_asprintf(mem_ctx, "%.*s/%s", (int)n, endpoint, bucket);
	if (id == NULL) {
		return NULL;
	}
	/* Scheme and host are case-blind; a path on an endpoint is rare. */
	for (p = id; p < id + n; p++) {
		*p = (char)tolower((unsigned char)*p);
	}
	return id;
}

/* The tables, and the identity check, in the open's transaction. */
static int bfs_index_open_dbs(struct bfs_index *idx, MDB_txn *txn,
			      TALLOC_CTX *mem_ctx, const char *served,
			      const char **why)
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
	if (rc != 0) {
		return rc;
	}
	rc = mdb_get(txn, idx->meta, &k, &v);
	if (rc == MDB_NOTFOUND ||
	    (rc == 0 && bfs_index_old_identity(v, served))) {
		/* New, or written before the endpoint was part of it. */
		v.mv_size = strlen(served);
		v.mv_data = (void *)served;
		return mdb_put(txn, idx->meta, &k, &v, 0);
	}
	if (rc == 0 && (v.mv_size != strlen(served) ||
			memcmp(v.mv_data, served, v.mv_size) != 0)) {
		*why = talloc_asprintf(mem_ctx, "the cache folder holds the "
				       "index of another bucket or endpoint "
				       "(%.*s, not %s); give this share its "
				       "own 'bucketfs:cache dir'",
				       (int)v.mv_size, (const char *)v.mv_data,
				       served);
		if (*why == NULL) {
			*why = "the cache folder holds the index of another "
			       "bucket or endpoint";
		}
		return EEXIST;
	}
	return rc;
}

void bfs_index_opts_default(struct bfs_index_opts *o)
{
	*o = (struct bfs_index_opts){
		.map_size = BFS_INDEX_MAP_SIZE,
		.map_max = BFS_INDEX_MAP_MAX,
		.budget = BFS_INDEX_BUDGET,
	};
}

static int bfs_index_open_once(TALLOC_CTX *mem_ctx, const char *dir,
			       const char *served,
			       const struct bfs_index_opts *o,
			       struct bfs_index **out, const char **why)
{
	struct bfs_index *idx = talloc_zero(mem_ctx, struct bfs_index);
	/* Writes nothing the budget counts: no eviction from here. */
	struct bfs_wtxn w = {.idx = idx, .evicting = true};
	size_t map_max = o->map_max > o->map_size ? o->map_max : o->map_size;
	int rc;

	if (idx == NULL || (idx->dir = talloc_strdup(idx, dir)) == NULL) {
		talloc_free(idx);
		*why = "out of memory";
		return ENOMEM;
	}
	/*
	 * Half the ceiling at most: LMDB reuses a freed page only once no
	 * reader can see it, and a transaction copies every page it
	 * changes, so the map holds the pages in use and recent copies.
	 */
	idx->budget = o->budget < map_max / 2 ? o->budget : map_max / 2;
	rc = bfs_lmdb_open_growing(dir, o->map_size, map_max, 6, &idx->env,
				   why);
	if (rc != 0) {
		talloc_free(idx);
		return rc;
	}
	talloc_set_destructor(idx, bfs_index_destructor);
	do {
		*why = NULL; /* not the words of an attempt that found it full */
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		rc = bfs_index_open_dbs(idx, w.txn, mem_ctx, served, why);
		if (rc != 0 && *why == NULL) {
			*why = mdb_strerror(rc);
		}
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	if (rc != 0) {
		if (*why == NULL) {
			*why = strerror(rc);
		}
		talloc_free(idx);
		return rc;
	}
	*out = idx;
	return 0;
}

/*
 * The index is a cache of S3's listings: a damaged one (a power loss with
 * MDB_NOSYNC, a garbled or truncated file) is set aside and rebuilt empty,
 * with a log line, instead of failing every connect.
 */
int bfs_index_open_opts(TALLOC_CTX *mem_ctx, const char *dir,
			const char *served, const struct bfs_index_opts *o,
			struct bfs_index **out, const char **why)
{
	struct bfs_index_opts def;
	int rc;

	if (o == NULL) {
		bfs_index_opts_default(&def);
		o = &def;
	}
	rc = bfs_index_open_once(mem_ctx, dir, served, o, out, why);
	if (rc == EIO && bfs_lmdb_set_aside(dir) == 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: the index in %s was damaged "
			"(%s): set aside as data.mdb.damaged-*, started anew; "
			"folders are listed from S3 again", dir,
			*why ? *why : "unreadable");
		rc = bfs_index_open_once(mem_ctx, dir, served, o, out, why);
	}
	return rc;
}

int bfs_index_open(TALLOC_CTX *mem_ctx, const char *dir, const char *served,
		   struct bfs_index **out, const char **why)
{
	return bfs_index_open_opts(mem_ctx, dir, served, NULL, out, why);
}

int bfs_index_space(struct bfs_index *idx, struct bfs_index_space *s)
{
	memset(s, 0, sizeof(*s));
	bfs_lmdb_sizes(idx->env, &s->map, &s->file);
	s->budget = idx->budget;
	s->evicted = __atomic_load_n(&idx->evicted, __ATOMIC_RELAXED);
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
	struct bfs_ent_meta_rec m = {
		.have = e->meta.have,
		.attrs = e->meta.attrs,
		.mtime_sec = e->meta.mtime.tv_sec,
		.mtime_nsec = (uint32_t)e->meta.mtime.tv_nsec,
		.btime_sec = e->meta.btime.tv_sec,
		.btime_nsec = (uint32_t)e->meta.btime.tv_nsec,
	};
	size_t mlen = m.have != 0 ? sizeof(m) : 0;
	uint8_t *p;

	if (elen > UINT16_MAX) {
		return EINVAL;
	}
	if (mlen == 0) {
		r.version = BFS_ENT_VERSION_1;
	}
	p = talloc_size(mem_ctx, sizeof(r) + mlen + elen);
	if (p == NULL) {
		return ENOMEM;
	}
	memcpy(p, &r, sizeof(r));
	memcpy(p + sizeof(r), &m, mlen);
	if (elen > 0) {
		memcpy(p + sizeof(r) + mlen, e->etag, elen);
	}
	*buf = p;
	*len = sizeof(r) + mlen + elen;
	return 0;
}

/* Decodes the attributes; e->name is left alone. */
int bfs_index_decode(TALLOC_CTX *mem_ctx, const void *buf, size_t len,
		     struct bfs_entry *e)
{
	struct bfs_ent_rec r;
	struct bfs_ent_meta_rec m = {0};
	size_t head = sizeof(r);
	const char *etag;

	if (len < sizeof(r)) {
		return EBADMSG;
	}
	memcpy(&r, buf, sizeof(r));
	if (r.version == BFS_ENT_VERSION) {
		head += sizeof(m);
		if (len < head) {
			return EBADMSG;
		}
		memcpy(&m, (const char *)buf + sizeof(r), sizeof(m));
		if (m.have == 0) {
			return EBADMSG; /* written as version 1 */
		}
	} else if (r.version != BFS_ENT_VERSION_1) {
		return EBADMSG;
	}
	etag = (const char *)buf + head;
	/* A NUL inside the ETag would decode to a shorter ETag than stored
	 * (and the cache identity derived from it): not a record we wrote. */
	if (r.is_dir > 1 || len != head + r.etag_len ||
	    memchr(etag, '\0', r.etag_len) != NULL ||
	    (m.have & ~(uint32_t)(BFS_META_MTIME | BFS_META_BTIME |
				  BFS_META_ATTRS)) != 0 ||
	    (m.attrs & ~(uint32_t)BFS_ATTR_KEPT) != 0 ||
	    m.mtime_nsec >= 1000000000 || m.btime_nsec >= 1000000000) {
		return EBADMSG;
	}
	e->is_dir = r.is_dir != 0;
	e->size = r.size;
	e->mtime = (time_t)r.mtime;
	e->ino = r.ino;
	e->flags = r.flags;
	e->meta = (struct bfs_meta){
		.have = m.have,
		.attrs = m.attrs,
		.mtime = {.tv_sec = (time_t)m.mtime_sec, .tv_nsec = m.mtime_nsec},
		.btime = {.tv_sec = (time_t)m.btime_sec, .tv_nsec = m.btime_nsec},
	};
	e->etag = NULL;
	if (r.etag_len > 0) {
		e->etag = talloc_strndup(mem_ctx, etag, r.etag_len);
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

/*
 * Inode numbers (issue 22: the same file ID on every node of a cluster).
 *
 * A name's inode is its key's hash (its hint) unless another key already
 * has that number; then it is the next free number after it (linear
 * probing).  Which of two colliding keys keeps the hint must not depend on
 * which a node learnt first, or two nodes would disagree.  So the numbers
 * of a probe run are kept ordered by key (ordered hashing, Amble and Knuth
 * 1974): a key that meets a greater key on its way takes that number and
 * the greater key moves on; a released number pulls back the keys after
 * it.  The numbers then depend only on the set of keys a node knows, not
 * on the order it learnt them, and a collision moves the greater key's
 * number only when the smaller key appears or goes.  An open file keeps
 * the number it was opened with (Samba keeps its file ID), as on a rename.
 *
 * A number a rename carried to another key (the inode follows the entry,
 * as in POSIX) is not on that key's probe run; such numbers, and map
 * records whose entry is gone, are never moved.
 */

/* Probe runs longer than this are not runs: a renamed entry's number. */
#define BFS_INO_PROBE_MAX (1U << 20)
#define BFS_INO_MAX 0x7fffffffffffffffULL

static unsigned bfs_ino_bits = 63;

void bfs_index_test_ino_bits(unsigned bits)
{
	bfs_ino_bits = bits >= 1 && bits <= 63 ? bits : 63;
}

uint64_t bfs_index_ino_hint(const char *full_key)
{
	/* FNV-1a 64, folded away from 0..BFS_ROOT_INO and negative off_t. */
	uint64_t h = 0xcbf29ce484222325ULL;
	const unsigned char *p;

	for (p = (const unsigned char *)full_key; *p != '\0'; p++) {
		h = (h ^ *p) * 0x100000001b3ULL;
	}
	h &= bfs_ino_bits == 63 ? BFS_INO_MAX : (1ULL << bfs_ino_bits) - 1;
	return h <= BFS_ROOT_INO ? h + BFS_ROOT_INO + 1 : h;
}

static uint64_t bfs_ino_next(uint64_t i)
{
	return i >= BFS_INO_MAX ? BFS_ROOT_INO + 1 : i + 1;
}

/* How many steps from a key's hint to number i. */
static uint64_t bfs_ino_dist(uint64_t hint, uint64_t i)
{
	return i >= hint ? i - hint : (BFS_INO_MAX - hint) + (i - BFS_ROOT_INO);
}

/* Key order for probe runs: bytes, then length. */
static int bfs_ino_keycmp(const MDB_val *a, const MDB_val *b)
{
	size_t n = a->mv_size < b->mv_size ? a->mv_size : b->mv_size;
	int c = memcmp(a->mv_data, b->mv_data, n);

	if (c != 0) {
		return c;
	}
	return a->mv_size < b->mv_size ? -1 : a->mv_size > b->mv_size;
}

/*
 * Set the inode number of the entry whose full key is key (a directory's
 * ends in '/').  ENOENT: there is no such entry.
 */
static int bfs_ino_set_entry(struct bfs_index *idx, MDB_txn *txn,
			     TALLOC_CTX *tmp, const char *key, uint64_t ino,
			     bool only_check)
{
	size_t kl = strlen(key), nl;
	const char *slash;
	char *dir, *name;
	struct bfs_entry e;
	MDB_val k, v;
	void *buf;
	size_t len;
	int rc;

	if (kl > 0 && key[kl - 1] == '/') {
		kl--; /* a directory */
	}
	name = talloc_strndup(tmp, key, kl);
	if (name == NULL) {
		return ENOMEM;
	}
	slash = memrchr(name, '/', kl);
	nl = slash != NULL ? (size_t)(slash - name) + 1 : 0;
	dir = talloc_strndup(tmp, name, nl);
	if (dir == NULL) {
		return ENOMEM;
	}
	k = bfs_ent_key(tmp, dir, name + nl);
	if (k.mv_data == NULL) {
		return ENOMEM;
	}
	rc = mdb_get(txn, idx->ent, &k, &v);
	if (rc == MDB_NOTFOUND) {
		return ENOENT;
	}
	if (rc != 0) {
		return rc;
	}
	if (bfs_index_decode(tmp, v.mv_data, v.mv_size, &e) != 0) {
		return ENOENT; /* not ours to renumber; fsck's */
	}
	if (only_check) {
		return 0;
	}
	e.ino = ino;
	rc = bfs_index_encode(tmp, &e, &buf, &len);
	if (rc != 0) {
		return rc;
	}
	v.mv_size = len;
	v.mv_data = buf;
	return mdb_put(txn, idx->ent, &k, &v, 0);
}

/* Whether the owner of number i may move: on its probe run, an entry. */
static int bfs_ino_movable(struct bfs_index *idx, MDB_txn *txn,
			   TALLOC_CTX *tmp, const MDB_val *owner, uint64_t i,
			   bool *movable)
{
	char *key = talloc_strndup(tmp, owner->mv_data, owner->mv_size);
	int rc;

	if (key == NULL) {
		return ENOMEM;
	}
	*movable = false;
	if (bfs_ino_dist(bfs_index_ino_hint(key), i) >= BFS_INO_PROBE_MAX) {
		return 0;
	}
	rc = bfs_ino_set_entry(idx, txn, tmp, key, 0, true);
	if (rc == ENOENT) {
		return 0;
	}
	*movable = rc == 0;
	return rc;
}

/*
 * Give key a number on its probe run, in key order (see above); a greater
 * key it displaces moves on, its entry renumbered.  *ino: key's number.
 */
static int bfs_ino_insert(struct bfs_index *idx, MDB_txn *txn,
			  TALLOC_CTX *tmp, const char *key, uint64_t *ino)
{
	MDB_val cur = {strlen(key), (void *)key};
	uint64_t i = bfs_index_ino_hint(key), steps = 0;
	bool first = true;
	int rc;

	for (;; i = bfs_ino_next(i)) {
		MDB_val k = {sizeof(i), &i}, v, owner = {0, NULL};
		bool occupied, take = false;

		if (++steps > 4 * (uint64_t)BFS_INO_PROBE_MAX) {
			bfs_log(BFS_LOG_ERR, "bucketfs: the index has no free "
				"inode number near that of %s", key);
			return ENOSPC;
		}
		rc = mdb_get(txn, idx->inos, &k, &v);
		if (rc != 0 && rc != MDB_NOTFOUND) {
			return rc;
		}
		occupied = rc == 0;
		if (!occupied) {
			take = true;
		} else if (bfs_ino_keycmp(&cur, &v) == 0) {
			if (first) {
				*ino = i;
			}
			return 0; /* already its own */
		} else if (bfs_ino_keycmp(&cur, &v) < 0) {
			rc = bfs_ino_movable(idx, txn, tmp, &v, i, &take);
			if (rc != 0) {
				return rc;
			}
		}
		if (!take) {
			continue;
		}
		if (occupied) {
			/* v points into the map, which the put may move. */
			owner.mv_size = v.mv_size;
			owner.mv_data = talloc_memdup(tmp, v.mv_data, v.mv_size);
			if (owner.mv_data == NULL) {
				return ENOMEM;
			}
		}
		rc = mdb_put(txn, idx->inos, &k, &cur, 0);
		if (rc != 0) {
			return rc;
		}
		if (first) {
			*ino = i;
			first = false;
		} else {
			char *ck = talloc_strndup(tmp, cur.mv_data, cur.mv_size);

			rc = ck != NULL ? bfs_ino_set_entry(idx, txn, tmp, ck, i,
							    false) : ENOMEM;
			if (rc != 0) {
				return rc;
			}
		}
		if (!occupied) {
			return 0;
		}
		cur = owner; /* the displaced key moves on */
	}
}

/*
 * Number i is free again: the keys after it on their probe runs are put
 * back in order, as if it had never been taken.
 */
static int bfs_ino_release(struct bfs_index *idx, MDB_txn *txn,
			   TALLOC_CTX *tmp, uint64_t i)
{
	MDB_val k = {sizeof(i), &i}, v;
	char **moved = NULL;
	size_t n = 0, m;
	uint64_t j;
	int rc;

	rc = mdb_del(txn, idx->inos, &k, NULL);
	if (rc != 0) {
		return rc;
	}
	/* The rest of the run: its movable keys leave, then come back. */
	for (j = bfs_ino_next(i); n < BFS_INO_PROBE_MAX; j = bfs_ino_next(j)) {
		MDB_val jk = {sizeof(j), &j};
		bool movable;

		rc = mdb_get(txn, idx->inos, &jk, &v);
		if (rc == MDB_NOTFOUND) {
			break;
		}
		if (rc != 0) {
			return rc;
		}
		rc = bfs_ino_movable(idx, txn, tmp, &v, j, &movable);
		if (rc != 0) {
			return rc;
		}
		if (!movable) {
			continue;
		}
		moved = talloc_realloc(tmp, moved, char *, n + 1);
		if (moved == NULL) {
			return ENOMEM;
		}
		moved[n] = talloc_strndup(moved, v.mv_data, v.mv_size);
		if (moved[n] == NULL) {
			return ENOMEM;
		}
		n++;
		rc = mdb_del(txn, idx->inos, &jk, NULL);
		if (rc != 0) {
			return rc;
		}
	}
	for (m = 0; m < n; m++) {
		uint64_t ino = 0;

		rc = bfs_ino_insert(idx, txn, tmp, moved[m], &ino);
		if (rc == 0) {
			rc = bfs_ino_set_entry(idx, txn, tmp, moved[m], ino,
					       false);
		}
		if (rc != 0) {
			return rc;
		}
	}
	TALLOC_FREE(moved);
	return 0;
}

/* Release number i if it is in the map (MDB_NOTFOUND otherwise). */
static int bfs_index_release_ino(struct bfs_index *idx, MDB_txn *txn,
				 uint64_t i)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	int rc;

	if (tmp == NULL) {
		return ENOMEM;
	}
	rc = bfs_ino_release(idx, txn, tmp, i);
	talloc_free(tmp);
	return rc;
}

/* A number for full_key (see above), recorded in the map. */
static int bfs_index_alloc_ino(struct bfs_index *idx, MDB_txn *txn,
			       const char *full_key, uint64_t *ino)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	int rc;

	if (tmp == NULL) {
		return ENOMEM;
	}
	rc = bfs_ino_insert(idx, txn, tmp, full_key, ino);
	talloc_free(tmp);
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
 * Note a use of dir at now: its dirs record gets a second stamp, unless
 * one younger than BFS_INDEX_USE_EVERY is there (another process noted
 * it meanwhile) or the listing is gone.  Its own small transaction, and
 * what it cannot write (a full disk) only makes the listing look older
 * to eviction: the read goes on.
 */
static void bfs_index_touch(struct bfs_index *idx, const char *dir,
			    time_t now)
{
	struct bfs_wtxn w = {.idx = idx, .evicting = true};
	struct bfs_dir_rec r;
	MDB_val k, v;
	int rc;

	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		k = bfs_dirs_key(w.tmp, dir);
		rc = k.mv_data != NULL ? mdb_get(w.txn, idx->dirs, &k, &v) :
					 ENOMEM;
		if (rc == 0 && bfs_dir_rec_get(&v, &r) &&
		    !(r.used <= now && now - r.used < BFS_INDEX_USE_EVERY)) {
			r.used = now;
			v.mv_size = sizeof(r);
			v.mv_data = &r;
			rc = mdb_put(w.txn, idx->dirs, &k, &v, 0);
		}
		rc = bfs_index_end(&w, rc == MDB_NOTFOUND ? 0 : rc);
	} while (rc == BFS_INDEX_AGAIN);
	if (rc != 0 && now - idx->touch_logged >= BFS_INDEX_USE_EVERY) {
		idx->touch_logged = now;
		bfs_log(BFS_LOG_INFO, "bucketfs: cannot note the use of folder "
			"'%s' in the index in %s: %s", dir, idx->dir,
			strerror(rc));
	}
}

/*
 * Every lookup and listing of the share asks this first, so it is where
 * a folder's use is noted.  A stamp younger than BFS_INDEX_USE_EVERY (a
 * listing is one) needs no write, and an index far from its budget
 * (data.mdb under half of it) none either: then eviction is far off, and
 * a read takes no write lock (nor a page of a full disk).
 */
/* The entry under key k (child name) in txn, decoded on mem_ctx. */
static int bfs_index_get_entry(struct bfs_index *idx, MDB_txn *txn,
			       TALLOC_CTX *mem_ctx, MDB_val k,
			       const char *name, struct bfs_entry *e)
{
	MDB_val v;
	int rc = mdb_get(txn, idx->ent, &k, &v);

	if (rc == 0) {
		rc = bfs_index_decode(mem_ctx, v.mv_data, v.mv_size, e);
	}
	if (rc == 0) {
		e->name = talloc_strdup(mem_ctx, name);
		rc = e->name != NULL ? 0 : ENOMEM;
	}
	return rc;
}

/*
 * dir's listing record in txn: 0 with *listed_at, else MDB_NOTFOUND (or
 * LMDB's error); *stale when its use should be noted (bfs_index_note_use).
 */
static int bfs_index_dir_rec(struct bfs_index *idx, MDB_txn *txn,
			     const char *dir, time_t now, time_t *listed_at,
			     bool *stale)
{
	char buf[1100];
	MDB_val k = {(size_t)snprintf(buf, sizeof(buf), "/%s", dir), buf}, v;
	struct bfs_dir_rec r;
	int rc;

	*stale = false;
	if (k.mv_size >= sizeof(buf)) {
		return ENAMETOOLONG;
	}
	rc = mdb_get(txn, idx->dirs, &k, &v);
	if (rc == 0 && bfs_dir_rec_get(&v, &r)) {
		*listed_at = (time_t)r.listed;
		*stale = !(r.used <= now && now - r.used < BFS_INDEX_USE_EVERY);
	} else if (rc == 0) {
		rc = MDB_NOTFOUND;
	}
	return rc;
}

/* After the read transaction: note dir's use if the index is past half. */
static void bfs_index_note_use(struct bfs_index *idx, const char *dir,
			       time_t now)
{
	size_t map, file;

	bfs_lmdb_sizes(idx->env, &map, &file);
	if (file > idx->budget / 2) {
		bfs_index_touch(idx, dir, now);
	}
}

int bfs_index_dir_listed(struct bfs_index *idx, const char *dir,
			 time_t *listed_at)
{
	MDB_txn *txn;
	time_t now = time(NULL);
	bool stale = false;
	int rc;

	rc = bfs_lmdb_txn_begin(idx->env, MDB_RDONLY, &txn);
	if (rc != 0) {
		return bfs_lmdb_errno(rc);
	}
	rc = bfs_index_dir_rec(idx, txn, dir, now, listed_at, &stale);
	bfs_lmdb_txn_abort(txn);
	if (stale) {
		bfs_index_note_use(idx, dir, now);
	}
	return bfs_lmdb_errno(rc);
}

int bfs_index_lookup_listed(struct bfs_index *idx, TALLOC_CTX *mem_ctx,
			    const char *dir, const char *name, bool *listed,
			    time_t *listed_at, struct bfs_entry *e)
{
	TALLOC_CTX *tmp = talloc_new(mem_ctx);
	MDB_val k = bfs_ent_key(tmp, dir, name);
	MDB_txn *txn;
	time_t now = time(NULL);
	bool stale = false;
	int rc;

	*listed = false;
	if (k.mv_data == NULL) {
		talloc_free(tmp);
		return ENOMEM;
	}
	rc = bfs_lmdb_txn_begin(idx->env, MDB_RDONLY, &txn);
	if (rc != 0) {
		talloc_free(tmp);
		return bfs_lmdb_errno(rc);
	}
	rc = bfs_index_dir_rec(idx, txn, dir, now, listed_at, &stale);
	if (rc == 0) {
		*listed = true;
		rc = bfs_index_get_entry(idx, txn, mem_ctx, k, name, e);
	}
	bfs_lmdb_txn_abort(txn);
	if (stale) {
		bfs_index_note_use(idx, dir, now);
	}
	talloc_free(tmp);
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

int bfs_index_invalidate_all_dirs(struct bfs_index *idx, uint64_t *n)
{
	struct bfs_wtxn w = {.idx = idx};
	MDB_stat st;
	int rc;

	do {
		*n = 0;
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		rc = mdb_stat(w.txn, idx->dirs, &st);
		if (rc == 0) {
			*n = st.ms_entries;
			rc = mdb_drop(w.txn, idx->dirs, 0);
		}
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

static int bfs_index_put_txn(struct bfs_index *idx, MDB_txn *txn,
			     TALLOC_CTX *tmp, const char *dir,
			     struct bfs_entry *e);

/* A "changed" record (see struct bfs_index). */
struct bfs_change_rec {
	uint64_t seq;	/* the count of changes when it was made */
	int64_t at;	/* and when, for people reading the index */
};

/* The count of changes in meta (see struct bfs_index); 0 before any. */
static const MDB_val bfs_changes_key = {7, (void *)"changes"};

static int bfs_index_changes_get(struct bfs_index *idx, MDB_txn *txn,
				 uint64_t *seq)
{
	MDB_val k = bfs_changes_key, v;
	int rc = mdb_get(txn, idx->meta, &k, &v);

	*seq = 0;
	if (rc == 0 && v.mv_size == sizeof(*seq)) {
		memcpy(seq, v.mv_data, sizeof(*seq));
	}
	return rc == MDB_NOTFOUND ? 0 : rc;
}

int bfs_index_change_seq(struct bfs_index *idx, uint64_t *seq)
{
	MDB_txn *txn;
	int rc = bfs_lmdb_txn_begin(idx->env, MDB_RDONLY, &txn);

	if (rc != 0) {
		return bfs_lmdb_errno(rc);
	}
	rc = bfs_index_changes_get(idx, txn, seq);
	bfs_lmdb_txn_abort(txn);
	return bfs_lmdb_errno(rc);
}

/*
 * A "changed" record whose seq is this: a delete handed to the engine and
 * not yet done in S3.  No listing brings the name back (every listing
 * "started before" it) and none retires it; the next change of the name
 * (the delete done, or a new file written there) replaces it.
 */
#define BFS_CHANGE_DELETE_PENDING UINT64_MAX

/* Note a change this host made to entry key k (see struct bfs_index). */
static int bfs_index_note_change_as(struct bfs_index *idx, MDB_txn *txn,
				    MDB_val k, bool delete_pending)
{
	MDB_val ck = bfs_changes_key, v;
	struct bfs_change_rec r = {.at = time(NULL)};
	int rc;

	if (k.mv_data == NULL) {
		return ENOMEM;
	}
	rc = bfs_index_changes_get(idx, txn, &r.seq);
	if (rc != 0) {
		return rc;
	}
	r.seq++;
	v = (MDB_val){sizeof(r.seq), &r.seq};
	rc = mdb_put(txn, idx->meta, &ck, &v, 0);
	if (rc == 0) {
		if (delete_pending) {
			r.seq = BFS_CHANGE_DELETE_PENDING;
		}
		v = (MDB_val){sizeof(r), &r};
		rc = mdb_put(txn, idx->changed, &k, &v, 0);
	}
	return rc;
}

static int bfs_index_note_change(struct bfs_index *idx, MDB_txn *txn,
				 MDB_val k)
{
	return bfs_index_note_change_as(idx, txn, k, false);
}

/* Whether v, a "changed" record, is a delete the engine has yet to do. */
static bool bfs_change_delete_pending(const MDB_val *v)
{
	struct bfs_change_rec r;

	if (v->mv_size != sizeof(r)) {
		return false;
	}
	memcpy(&r, v->mv_data, sizeof(r));
	return r.seq == BFS_CHANGE_DELETE_PENDING;
}

/*
 * Did this host change entry key k after a listing started, when the
 * count of changes was since?
 */
static bool bfs_index_changed_since(struct bfs_index *idx, MDB_txn *txn,
				    MDB_val k, uint64_t since)
{
	MDB_val v;
	struct bfs_change_rec r;

	if (mdb_get(txn, idx->changed, &k, &v) != 0 ||
	    v.mv_size != sizeof(r)) {
		return false;
	}
	memcpy(&r, v.mv_data, sizeof(r));
	return r.seq > since;
}

/* A listing of d that started at change since saw every change to then. */
static int bfs_index_retire_changes(struct bfs_index *idx, MDB_txn *txn,
				    TALLOC_CTX *tmp, const char *dir,
				    uint64_t since)
{
	size_t dl = strlen(dir);
	MDB_val k = bfs_ent_key(tmp, dir, ""), v;
	MDB_cursor *cur;
	struct bfs_change_rec r;
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
		if (v.mv_size == sizeof(r)) {
			memcpy(&r, v.mv_data, sizeof(r));
		}
		if (v.mv_size != sizeof(r) || r.seq <= since) {
			rc = bfs_lmdb_del_next(cur, &k, &v);
			continue;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	return bfs_lmdb_walk_end(rc);
}

/*
 * What S3 says of an entry replaces what the index had, but the times and
 * attributes a client set (or the object's metadata gave) stay with the
 * object as long as it is the same object: the same ETag (a file), or
 * still a folder.
 */
static void bfs_ent_keep_meta(struct bfs_entry *e, const struct bfs_entry *old)
{
	if (e->is_dir != old->is_dir) {
		return;
	}
	if (e->is_dir || (e->etag != NULL && old->etag != NULL &&
			  strcmp(e->etag, old->etag) == 0)) {
		e->meta = old->meta;
	}
}

/*
 * Would writing e over old change the record?  A folder relisted every TTL
 * is mostly unchanged; rewriting each of its entries anyway copied every
 * page of the folder's range on each relisting (a 100,000-entry folder
 * relisted unchanged: 9.2 MB written, now none).
 */
static bool bfs_entry_same(const struct bfs_entry *e,
			   const struct bfs_entry *old)
{
	return e->is_dir == old->is_dir && e->size == old->size &&
	       e->mtime == old->mtime && e->ino == old->ino &&
	       e->flags == old->flags &&
	       (e->etag == NULL) == (old->etag == NULL) &&
	       (e->etag == NULL || strcmp(e->etag, old->etag) == 0) &&
	       bfs_meta_equal(&e->meta, &old->meta);
}

static int bfs_index_store_one(struct bfs_index *idx, MDB_txn *txn,
			       TALLOC_CTX *tmp, const char *dir,
			       const struct s3_dirent *de, uint64_t since)
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
	if (bfs_index_changed_since(idx, txn, k, since)) {
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
			bfs_ent_keep_meta(&e, &old);
			if (bfs_entry_same(&e, &old)) {
				return 0;
			}
		}
	} else if (rc != MDB_NOTFOUND) {
		return rc;
	}
	return bfs_index_put_txn(idx, txn, tmp, dir, &e);
}

/* Drop children of dir that the new listing no longer has. */
static int bfs_index_drop_gone(struct bfs_index *idx, MDB_txn *txn,
			       TALLOC_CTX *tmp, const struct s3_dir *d,
			       uint64_t since)
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
			    bfs_index_changed_since(idx, txn, k, since)) {
				/* Not uploaded yet, or made after the listing
				 * started: S3's answer cannot know it. */
				rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
				continue;
			}
			if (bfs_index_decode(tmp, v.mv_data, v.mv_size, &old) == 0) {
				rc = bfs_index_release_ino(idx, txn, old.ino);
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
			time_t now, uint64_t since)
{
	struct bfs_wtxn w = {.idx = idx, .dir = d->prefix, .adds = true};
	MDB_val k, v;
	int64_t t = now;
	size_t i;
	int rc;

	/*
	 * What it writes is what it wrote before eviction existed: the
	 * listing is its folder's use (an 8-byte dirs record, no stamp).
	 */
	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		k = bfs_dirs_key(w.tmp, d->prefix);
		rc = k.mv_data != NULL ? 0 : ENOMEM;
		for (i = 0; rc == 0 && i < d->n; i++) {
			rc = bfs_index_store_one(idx, w.txn, w.tmp, d->prefix,
						 &d->ents[i], since);
		}
		if (rc == 0) {
			rc = bfs_index_drop_gone(idx, w.txn, w.tmp, d, since);
		}
		if (rc == 0) {
			rc = bfs_index_retire_changes(idx, w.txn, w.tmp,
						      d->prefix, since);
		}
		if (rc == 0) {
			v.mv_size = sizeof(t);
			v.mv_data = &t;
			rc = mdb_put(w.txn, idx->dirs, &k, &v, 0);
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
	MDB_val k = bfs_ent_key(tmp, dir, name);
	MDB_txn *txn;
	int rc;

	if (k.mv_data == NULL) {
		talloc_free(tmp);
		return ENOMEM;
	}
	rc = bfs_lmdb_txn_begin(idx->env, MDB_RDONLY, &txn);
	if (rc == 0) {
		rc = bfs_index_get_entry(idx, txn, mem_ctx, k, name, e);
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

int bfs_key_entry(TALLOC_CTX *mem_ctx, const char *key, char **dir,
		  char **name, bool *is_dir)
{
	size_t len = strlen(key);
	char *file;
	int ret;

	*is_dir = len > 1 && key[len - 1] == '/';
	if (!*is_dir) {
		return bfs_key_split(mem_ctx, key, dir, name);
	}
	file = talloc_strndup(mem_ctx, key, len - 1);
	if (file == NULL) {
		return ENOMEM;
	}
	ret = bfs_key_split(mem_ctx, file, dir, name);
	talloc_free(file);
	return ret;
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
		rc = bfs_index_release_ino(idx, txn, old->ino);
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
			/* As fresh as its last page, and used then. */
			v.mv_size = sizeof(t);
			v.mv_data = &t;
			rc = mdb_put(w.txn, idx->dirs, &k, &v, 0);
		}
		rc = bfs_index_end(&w, rc == MDB_NOTFOUND ? 0 : rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

/* ---- proofs (bfs_index.h) ---------------------------------------------- */

/* "proof:" and the tag: a meta key no other record starts with. */
#define BFS_PROOF_PREFIX "proof:"
#define BFS_PROOF_KEY_LEN (sizeof(BFS_PROOF_PREFIX) - 1 + BFS_INDEX_PROOF_TAG)

static MDB_val bfs_proof_key(uint8_t buf[BFS_PROOF_KEY_LEN],
			     const uint8_t tag[BFS_INDEX_PROOF_TAG])
{
	memcpy(buf, BFS_PROOF_PREFIX, sizeof(BFS_PROOF_PREFIX) - 1);
	memcpy(buf + sizeof(BFS_PROOF_PREFIX) - 1, tag, BFS_INDEX_PROOF_TAG);
	return (MDB_val){BFS_PROOF_KEY_LEN, buf};
}

int bfs_index_proof_get(struct bfs_index *idx,
			const uint8_t tag[BFS_INDEX_PROOF_TAG], int64_t *at)
{
	uint8_t buf[BFS_PROOF_KEY_LEN];
	MDB_val k = bfs_proof_key(buf, tag), v;
	MDB_txn *txn;
	int rc = bfs_lmdb_txn_begin(idx->env, MDB_RDONLY, &txn);

	if (rc != 0) {
		return bfs_lmdb_errno(rc);
	}
	rc = mdb_get(txn, idx->meta, &k, &v);
	if (rc == 0 && v.mv_size == sizeof(*at)) {
		memcpy(at, v.mv_data, sizeof(*at));
	} else if (rc == 0) {
		rc = MDB_NOTFOUND; /* not ours to read: as if none */
	}
	bfs_lmdb_txn_abort(txn);
	return rc == MDB_NOTFOUND ? ENOENT : bfs_lmdb_errno(rc);
}

/* Drop the proofs older than `before` (all but a handful, at most). */
static int bfs_proof_prune(struct bfs_index *idx, MDB_txn *txn, int64_t before)
{
	MDB_cursor *cur;
	MDB_val k = {sizeof(BFS_PROOF_PREFIX) - 1, (void *)BFS_PROOF_PREFIX};
	MDB_val v;
	int rc = mdb_cursor_open(txn, idx->meta, &cur);

	if (rc != 0) {
		return rc;
	}
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	while (rc == 0 && k.mv_size == BFS_PROOF_KEY_LEN &&
	       memcmp(k.mv_data, BFS_PROOF_PREFIX,
		      sizeof(BFS_PROOF_PREFIX) - 1) == 0) {
		int64_t at;

		if (v.mv_size != sizeof(at)) {
			rc = mdb_cursor_del(cur, 0);
		} else {
			memcpy(&at, v.mv_data, sizeof(at));
			rc = at < before ? mdb_cursor_del(cur, 0) : 0;
		}
		if (rc == 0) {
			rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
		}
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

int bfs_index_proof_put(struct bfs_index *idx,
			const uint8_t tag[BFS_INDEX_PROOF_TAG], int64_t at)
{
	struct bfs_wtxn w = {.idx = idx};
	uint8_t buf[BFS_PROOF_KEY_LEN];
	MDB_val k, v;
	int rc;

	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		rc = bfs_proof_prune(idx, w.txn, at - BFS_INDEX_PROOF_KEEP);
		if (rc == 0) {
			k = bfs_proof_key(buf, tag);
			v = (MDB_val){sizeof(at), &at};
			rc = mdb_put(w.txn, idx->meta, &k, &v, 0);
		}
		rc = bfs_index_end(&w, rc);
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
		if (bfs_index_begin(&w) != 0) {
			return; /* waiters take it over once it is stale */
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

/* bfs_index_put, or with only_new bfs_index_put_new. */
/*
 * A put replaces the entry's size, ETag and time; what it leaves out of
 * its meta (a file written again keeps the create time and attributes a
 * client gave it) comes from the record it replaces.
 */
static int bfs_index_keep_meta_txn(struct bfs_index *idx, MDB_txn *txn,
				   TALLOC_CTX *tmp, const char *dir,
				   struct bfs_entry *e)
{
	MDB_val k = bfs_ent_key(tmp, dir, e->name), v;
	struct bfs_entry old;
	int rc;

	if (k.mv_data == NULL) {
		return ENOMEM;
	}
	rc = mdb_get(txn, idx->ent, &k, &v);
	if (rc == MDB_NOTFOUND) {
		return 0;
	}
	if (rc == 0 && bfs_index_decode(tmp, v.mv_data, v.mv_size, &old) == 0 &&
	    old.is_dir == e->is_dir) {
		bfs_meta_merge(&e->meta, &old.meta,
			       old.meta.have & ~e->meta.have);
	}
	return rc;
}

static int bfs_index_put_as(struct bfs_index *idx, const char *dir,
			    struct bfs_entry *e, bool only_new)
{
	struct bfs_wtxn w = {.idx = idx, .dir = dir, .adds = true};
	uint64_t ino = e->ino;
	struct bfs_meta meta = e->meta;
	int rc;

	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		e->ino = ino; /* the caller's, each attempt */
		e->meta = meta;
		if (only_new) {
			MDB_val k = bfs_ent_key(w.tmp, dir, e->name), v;

			if (k.mv_data == NULL) {
				rc = ENOMEM;
			} else if (mdb_get(w.txn, idx->ent, &k, &v) == 0) {
				rc = EEXIST;
			}
		}
		if (rc == 0 && !only_new) {
			rc = bfs_index_keep_meta_txn(idx, w.txn, w.tmp, dir, e);
		}
		if (rc == 0) {
			rc = bfs_index_put_txn(idx, w.txn, w.tmp, dir, e);
		}
		if (rc == 0) {
			rc = bfs_index_note_change(idx, w.txn,
						   bfs_ent_key(w.tmp, dir,
							       e->name));
		}
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	e->meta = meta; /* the caller's, as for ino */
	return rc;
}

int bfs_index_object_meta(struct bfs_index *idx, const char *key,
			  const char *etag, const struct bfs_meta *m)
{
	struct bfs_wtxn w = {.idx = idx};
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_entry cur;
	char *cdir, *cname;
	int rc;

	/* Most answers bring nothing new: look before a write transaction. */
	rc = tmp == NULL ? ENOMEM : bfs_key_split(tmp, key, &cdir, &cname);
	if (rc == 0) {
		rc = bfs_index_lookup(idx, tmp, cdir, cname, &cur);
	}
	if (rc == 0 && (cur.is_dir || cur.etag == NULL ||
			strcmp(cur.etag, etag) != 0 ||
			(m->have & ~cur.meta.have) == 0)) {
		talloc_free(tmp);
		return 0;
	}
	talloc_free(tmp);
	if (rc != 0) {
		return rc;
	}
	do {
		MDB_val k, v;
		struct bfs_entry e;
		char *dir, *name;
		uint32_t add;

		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		rc = bfs_key_split(w.tmp, key, &dir, &name);
		if (rc == 0) {
			k = bfs_ent_key(w.tmp, dir, name);
			rc = k.mv_data != NULL ?
				mdb_get(w.txn, idx->ent, &k, &v) : ENOMEM;
		}
		if (rc == 0) {
			rc = bfs_index_decode(w.tmp, v.mv_data, v.mv_size, &e);
		}
		if (rc == 0) {
			/* Another version's, or nothing new: nothing to do. */
			add = m->have & ~e.meta.have;
			if (e.is_dir || e.etag == NULL ||
			    strcmp(e.etag, etag) != 0 || add == 0) {
				rc = bfs_index_end(&w, 0);
				break;
			}
			e.name = name;
			bfs_meta_merge(&e.meta, m, add);
			rc = bfs_index_put_txn(idx, w.txn, w.tmp, dir, &e);
		}
		rc = bfs_index_end(&w, rc == MDB_NOTFOUND ? ENOENT : rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

/*
 * Change dir/name's entry in one transaction: fn sees it decoded and
 * changes it (0) or says why not (ENOENT if there is none); note: the
 * change is one made here (bfs_index_note_change), not metadata alone.
 */
static int bfs_index_update_entry(struct bfs_index *idx, const char *dir,
				  const char *name,
				  int (*fn)(struct bfs_entry *e, void *priv),
				  void *priv, bool note)
{
	struct bfs_wtxn w = {.idx = idx};
	int rc;

	do {
		MDB_val k, v;
		struct bfs_entry e;

		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		k = bfs_ent_key(w.tmp, dir, name);
		if (k.mv_data == NULL) {
			rc = ENOMEM;
		} else {
			rc = mdb_get(w.txn, idx->ent, &k, &v);
		}
		if (rc == 0) {
			rc = bfs_index_decode(w.tmp, v.mv_data, v.mv_size, &e);
		}
		if (rc == 0) {
			e.name = (char *)name;
			rc = fn(&e, priv);
		}
		if (rc == 0) {
			rc = bfs_index_put_txn(idx, w.txn, w.tmp, dir, &e);
		}
		if (rc == 0 && note) {
			rc = bfs_index_note_change(idx, w.txn, k);
		}
		rc = bfs_index_end(&w, rc == MDB_NOTFOUND ? ENOENT : rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

struct bfs_index_meta_change {
	const struct bfs_meta *m;
	uint32_t which;
};

static int bfs_index_merge_meta(struct bfs_entry *e, void *priv)
{
	struct bfs_index_meta_change *c = priv;

	bfs_meta_merge(&e->meta, c->m, c->which);
	return 0;
}

int bfs_index_set_meta(struct bfs_index *idx, const char *dir,
		       const char *name, const struct bfs_meta *m,
		       uint32_t which)
{
	struct bfs_index_meta_change c = {.m = m, .which = which};

	return bfs_index_update_entry(idx, dir, name, bfs_index_merge_meta,
				      &c, false);
}

struct bfs_index_settling {
	const char *was, *etag;
};

static int bfs_index_settle_entry(struct bfs_entry *e, void *priv)
{
	struct bfs_index_settling *c = priv;

	if (!(e->flags & BFS_ENT_PENDING) || e->etag == NULL ||
	    strcmp(e->etag, c->was) != 0) {
		return ESTALE; /* another change of the name since */
	}
	e->etag = (char *)c->etag;
	e->flags &= ~BFS_ENT_PENDING;
	return 0;
}

int bfs_index_settle(struct bfs_index *idx, const char *dir,
		     const char *name, const char *was, const char *etag)
{
	struct bfs_index_settling c = {.was = was, .etag = etag};

	return bfs_index_update_entry(idx, dir, name, bfs_index_settle_entry,
				      &c, true);
}

struct bfs_index_unnamed {
	uint64_t size;
	time_t mtime;
	uint64_t not_ino;
	const char *etag;
};

static int bfs_index_settle_unnamed_entry(struct bfs_entry *e, void *priv)
{
	struct bfs_index_unnamed *c = priv;

	if (e->is_dir || !(e->flags & BFS_ENT_PENDING) || e->etag != NULL ||
	    e->size != c->size || e->mtime != c->mtime ||
	    e->ino == c->not_ino) {
		return ESTALE; /* another version's entry, or settled */
	}
	e->etag = (char *)c->etag;
	e->flags &= ~BFS_ENT_PENDING;
	return 0;
}

int bfs_index_settle_unnamed(struct bfs_index *idx, const char *dir,
			     const char *name, uint64_t size, time_t mtime,
			     uint64_t not_ino, const char *etag)
{
	struct bfs_index_unnamed c = {
		.size = size, .mtime = mtime, .not_ino = not_ino, .etag = etag,
	};

	return bfs_index_update_entry(idx, dir, name,
				      bfs_index_settle_unnamed_entry, &c, true);
}

int bfs_index_put(struct bfs_index *idx, const char *dir, struct bfs_entry *e)
{
	return bfs_index_put_as(idx, dir, e, false);
}

int bfs_index_put_new(struct bfs_index *idx, const char *dir,
		      struct bfs_entry *e)
{
	return bfs_index_put_as(idx, dir, e, true);
}

int bfs_index_learn(struct bfs_index *idx, const char *const *keys,
		    const struct bfs_entry *ents, size_t n)
{
	struct bfs_wtxn w = {.idx = idx, .adds = true};
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
			if (mdb_get(w.txn, idx->changed, &k, &v) == 0 &&
			    bfs_change_delete_pending(&v)) {
				continue; /* deleted here, not yet in S3 */
			}
			if (mdb_get(w.txn, idx->ent, &k, &v) == 0 &&
			    bfs_index_decode(w.tmp, v.mv_data, v.mv_size,
					     &old) == 0) {
				if (old.flags & BFS_ENT_PENDING) {
					continue; /* written through the share */
				}
				bfs_ent_keep_meta(&e, &old);
			}
			rc = bfs_index_put_txn(idx, w.txn, w.tmp, dir, &e);
		}
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

static int bfs_index_remove_as(struct bfs_index *idx, const char *dir,
			       const char *name, bool delete_pending);

int bfs_index_remove(struct bfs_index *idx, const char *dir, const char *name)
{
	return bfs_index_remove_as(idx, dir, name, false);
}

int bfs_index_remove_pending(struct bfs_index *idx, const char *dir,
			     const char *name)
{
	return bfs_index_remove_as(idx, dir, name, true);
}

static int bfs_index_remove_as(struct bfs_index *idx, const char *dir,
			       const char *name, bool delete_pending)
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
			rc = bfs_index_note_change_as(
				idx, w.txn, bfs_ent_key(w.tmp, dir, name),
				delete_pending);
		}
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

int bfs_index_clear_pending(struct bfs_index *idx, const char *dir,
			    const char *name)
{
	struct bfs_wtxn w = {.idx = idx};
	MDB_txn *txn;
	MDB_val k, v;
	bool pending;
	int rc;

	/* Most names carry no mark: a read says so without a write. */
	k = bfs_ent_key(NULL, dir, name);
	if (k.mv_data == NULL) {
		return ENOMEM;
	}
	rc = bfs_lmdb_txn_begin(idx->env, MDB_RDONLY, &txn);
	if (rc != 0) {
		talloc_free(k.mv_data);
		return bfs_lmdb_errno(rc);
	}
	pending = mdb_get(txn, idx->changed, &k, &v) == 0 &&
		  bfs_change_delete_pending(&v);
	bfs_lmdb_txn_abort(txn);
	talloc_free(k.mv_data);
	if (!pending) {
		return 0;
	}
	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		k = bfs_ent_key(w.tmp, dir, name);
		rc = k.mv_data != NULL ? 0 : ENOMEM;
		if (rc == 0 && mdb_get(w.txn, idx->changed, &k, &v) == 0 &&
		    bfs_change_delete_pending(&v)) {
			rc = bfs_index_note_change(idx, w.txn, k);
		}
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

/* The body of bfs_index_rename and bfs_index_rename_pending (handed). */
static int bfs_index_rename_txn(struct bfs_index *idx, MDB_txn *txn,
				TALLOC_CTX *tmp, const char *sdir,
				const char *sname, const char *ddir,
				const char *dname, bool handed)
{
	struct bfs_entry e = {0}, gone;
	MDB_val ik, iv;
	char *full;
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
		if (handed) {
			e.flags |= BFS_ENT_PENDING;
		}
		rc = e.name != NULL ?
			bfs_index_put_txn(idx, txn, tmp, ddir, &e) : ENOMEM;
	}
	if (rc == 0) {
		rc = bfs_index_note_change_as(idx, txn,
					      bfs_ent_key(tmp, sdir, sname),
					      handed);
	}
	if (rc == 0) {
		rc = bfs_index_note_change(idx, txn,
					   bfs_ent_key(tmp, ddir, dname));
	}
	return rc == MDB_NOTFOUND ? ENOENT : rc;
}

static int bfs_index_rename_as(struct bfs_index *idx, const char *sdir,
			       const char *sname, const char *ddir,
			       const char *dname, bool handed)
{
	struct bfs_wtxn w = {.idx = idx};
	int rc;

	do {
		rc = bfs_index_begin(&w);
		if (rc != 0) {
			break;
		}
		rc = bfs_index_rename_txn(idx, w.txn, w.tmp, sdir, sname, ddir,
					  dname, handed);
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

int bfs_index_rename(struct bfs_index *idx, const char *sdir,
		     const char *sname, const char *ddir, const char *dname)
{
	return bfs_index_rename_as(idx, sdir, sname, ddir, dname, false);
}

int bfs_index_rename_pending(struct bfs_index *idx, const char *sdir,
			     const char *sname, const char *ddir,
			     const char *dname)
{
	return bfs_index_rename_as(idx, sdir, sname, ddir, dname, true);
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

int bfs_index_delete_marks(struct bfs_index *idx, TALLOC_CTX *mem_ctx,
			   time_t before, char ***keys, size_t *n)
{
	char **out = talloc_array(mem_ctx, char *, 0);
	MDB_cursor *cur = NULL;
	MDB_txn *txn = NULL;
	MDB_val k, v;
	size_t got = 0;
	int rc;

	*keys = NULL;
	*n = 0;
	if (out == NULL) {
		return ENOMEM;
	}
	rc = bfs_lmdb_txn_begin(idx->env, MDB_RDONLY, &txn);
	if (rc == 0) {
		rc = mdb_cursor_open(txn, idx->changed, &cur);
	}
	if (rc == 0) {
		rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	}
	while (rc == 0) {
		struct bfs_change_rec r;

		if (bfs_change_delete_pending(&v)) {
			memcpy(&r, v.mv_data, sizeof(r));
		}
		if (bfs_change_delete_pending(&v) && r.at < (int64_t)before) {
			char *key = bfs_ent_full_key(out, &k, false);
			char **more = key != NULL ?
				talloc_realloc(mem_ctx, out, char *, got + 1) :
				NULL;

			if (more == NULL) {
				rc = ENOMEM;
				break;
			}
			out = more;
			out[got++] = key;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (cur != NULL) {
		mdb_cursor_close(cur);
	}
	if (txn != NULL) {
		bfs_lmdb_txn_abort(txn);
	}
	rc = bfs_lmdb_walk_end(rc);
	if (rc != 0) {
		talloc_free(out);
		return bfs_lmdb_errno(rc);
	}
	*keys = out;
	*n = got;
	return 0;
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

		if (keep_pending && db == idx->changed) {
			/* A delete the engine has yet to do stays. */
			if (bfs_change_delete_pending(&v)) {
				rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
				continue;
			}
		} else if (keep_pending &&
			   bfs_index_decode(NULL, v.mv_data, v.mv_size, &e) == 0) {
			talloc_free(e.etag);
			if (e.flags & BFS_ENT_PENDING) {
				rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
				continue;
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
			if (db == idx->ent) {
				/* After each(): renumbering others may move
				 * the page k and v point into. */
				rc = bfs_index_release_ino(idx, txn, e.ino);
				if (rc != 0 && rc != MDB_NOTFOUND) {
					break; /* e.g. the map is full */
				}
			}
		}
		rc = bfs_lmdb_del_next(cur, &k, &v);
		(*n)++;
	}
	mdb_cursor_close(cur);
	return bfs_lmdb_walk_end(rc);
}

int bfs_index_invalidate_tree(struct bfs_index *idx, const char *prefix,
			      uint64_t *n, bfs_index_each_fn each, void *priv)
{
	struct bfs_wtxn w = {.idx = idx};
	uint64_t changes;
	char *dk;
	int rc;

	do {
		*n = 0; /* each attempt counts afresh */
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
			 * truth (but for deletes S3 has yet to see). */
			changes = 0;
			rc = bfs_index_drop_range(idx, w.txn, idx->changed,
						  prefix, strlen(prefix), true,
						  &changes, NULL, NULL);
		}
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
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

int bfs_index_check(struct bfs_index *idx, bool repair,
		    void (*each)(void *priv, const char *key,
				 const struct bfs_entry *e),
		    void *priv, struct bfs_index_fsck *r)
{
	/* A write transaction even without repair: writers wait meanwhile. */
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
		if (rc == 0 && !repair) {
			/* Nothing to write: aborted, not committed. */
			bfs_lmdb_txn_abort(w.txn);
			TALLOC_FREE(w.tmp);
			return 0;
		}
		rc = bfs_index_end(&w, rc);
	} while (rc == BFS_INDEX_AGAIN);
	return rc;
}

/* ---- size: listings evicted ------------------------------------------------- */

/* Bytes of the pages the index's tables use (not free pages). */
static int bfs_index_live(struct bfs_index *idx, MDB_txn *txn, size_t *bytes)
{
	const MDB_dbi dbs[] = {
		idx->ent, idx->dirs, idx->inos, idx->meta, idx->changed,
		idx->listers,
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

/*
 * Whether eviction may take the listing of dirs record k, r: one not
 * used since cutoff, nor in the last BFS_INDEX_KEEP_RECENT seconds (a
 * stamp in the future counts as recent), nor the folder except.
 */
static bool bfs_index_evictable(const MDB_val *k, const struct bfs_dir_rec *r,
				int64_t cutoff, time_t now, const char *except)
{
	if (r->used > cutoff || r->used > (int64_t)now - BFS_INDEX_KEEP_RECENT) {
		return false;
	}
	return except == NULL || k->mv_size != strlen(except) + 1 ||
	       memcmp((const char *)k->mv_data + 1, except, k->mv_size - 1) != 0;
}

static int bfs_i64_cmp(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * The last-use stamps of the listings eviction may take, oldest first.
 * Eight bytes a folder: with a million folders listed, 8 MB for as long
 * as an eviction runs.
 */
static int bfs_index_stamps(struct bfs_index *idx, TALLOC_CTX *mem_ctx,
			    time_t now, const char *except, int64_t **out,
			    size_t *n)
{
	int64_t *stamps = NULL;
	size_t have = 0, room = 0;
	MDB_cursor *cur = NULL;
	MDB_txn *txn;
	MDB_val k, v;
	int rc = bfs_lmdb_txn_begin(idx->env, MDB_RDONLY, &txn);

	if (rc != 0) {
		return rc;
	}
	rc = mdb_cursor_open(txn, idx->dirs, &cur);
	if (rc == 0) {
		rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	}
	while (rc == 0) {
		struct bfs_dir_rec r;

		if (bfs_dir_rec_get(&v, &r) &&
		    bfs_index_evictable(&k, &r, INT64_MAX, now, except)) {
			if (have == room) {
				room = room > 0 ? room * 2 : 1024;
				stamps = talloc_realloc(mem_ctx, stamps,
							int64_t, room);
				if (stamps == NULL) {
					rc = ENOMEM;
					break;
				}
			}
			stamps[have++] = r.used;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (cur != NULL) {
		mdb_cursor_close(cur);
	}
	bfs_lmdb_txn_abort(txn);
	rc = bfs_lmdb_walk_end(rc);
	if (rc != 0) {
		talloc_free(stamps);
		return rc;
	}
	if (have > 1) {
		qsort(stamps, have, sizeof(*stamps), bfs_i64_cmp);
	}
	*out = stamps;
	*n = have;
	return 0;
}

/* One walk of the dirs table by an eviction, in transactions of batch. */
struct bfs_evict_walk {
	size_t target;		/* bytes in use to get down to */
	const char *except;
	time_t now;
	int64_t cutoff;		/* listings used after it stay */
	uint64_t batch;		/* records one transaction deletes at most */
	char *resume;		/* the dirs key to go on from; NULL: first */
	size_t resume_len;
	/* What one transaction did, taken once it committed: */
	char *next;		/* where the next one goes on */
	size_t next_len;
	uint64_t dirs, records;
	bool done;		/* down to target */
	bool end;		/* the walk is through */
};

/*
 * One eviction transaction: from ew->resume, each evictable listing goes
 * (its dirs record, its children but pending ones, their inode numbers),
 * until the pages in use are down to the target, batch records went, or
 * the table's end.  "changed" records stay: they keep a listing that
 * started before a change from undoing it.
 */
static int bfs_index_evict_txn(struct bfs_index *idx, MDB_txn *txn,
			       TALLOC_CTX *tmp, TALLOC_CTX *mem_ctx,
			       struct bfs_evict_walk *ew)
{
	MDB_cursor *cur;
	MDB_val k, v;
	size_t live;
	int rc;

	ew->dirs = ew->records = 0;
	ew->done = ew->end = false;
	ew->next = NULL;
	rc = mdb_cursor_open(txn, idx->dirs, &cur);
	if (rc != 0) {
		return rc;
	}
	if (ew->resume != NULL) {
		k.mv_size = ew->resume_len;
		k.mv_data = ew->resume;
		rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	} else {
		rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	}
	while (rc == 0) {
		struct bfs_dir_rec r;
		MDB_val dk;
		char *start;
		uint64_t n = 0;

		if (!bfs_dir_rec_get(&v, &r) ||
		    !bfs_index_evictable(&k, &r, ew->cutoff, ew->now,
					 ew->except)) {
			rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
			continue;
		}
		if (ew->records >= ew->batch) {
			/* The next transaction goes on from here. */
			ew->next = talloc_memdup(mem_ctx, k.mv_data,
						 k.mv_size);
			ew->next_len = k.mv_size;
			rc = ew->next != NULL ? 0 : ENOMEM;
			mdb_cursor_close(cur);
			return rc;
		}
		/* "/<prefix>" -> its children's keys, "<prefix>\0..." */
		dk.mv_size = k.mv_size;
		dk.mv_data = talloc_memdup(tmp, k.mv_data, k.mv_size);
		start = talloc_size(tmp, k.mv_size);
		if (dk.mv_data == NULL || start == NULL) {
			rc = ENOMEM;
			break;
		}
		memcpy(start, (const char *)dk.mv_data + 1, dk.mv_size - 1);
		start[dk.mv_size - 1] = '\0';
		rc = bfs_index_drop_range(idx, txn, idx->ent, start, dk.mv_size,
					  true, &n, NULL, NULL);
		if (rc == 0) {
			rc = mdb_del(txn, idx->dirs, &dk, NULL);
		}
		if (rc == 0) {
			rc = bfs_index_live(idx, txn, &live);
		}
		if (rc != 0) {
			break;
		}
		ew->dirs++;
		ew->records += n + 1;
		if (live <= ew->target) {
			ew->done = true;
			break;
		}
		k = dk; /* the record after it */
		rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	}
	mdb_cursor_close(cur);
	if (rc == MDB_NOTFOUND) {
		ew->end = true;
		rc = 0;
	}
	return rc;
}

/*
 * Evict the listings used least recently until the pages in use are
 * down to target (or max_records records went): those of the oldest
 * eighth of the stamps first, then a quarter, a half, all, each walk in
 * key order (the table is not kept in stamp order: that would be another
 * write per listing).  Never a folder used in the last
 * BFS_INDEX_KEEP_RECENT seconds, never except, never a pending entry.
 * 0 if some listing went, ENOSPC if none could.
 */
static int bfs_index_evict(struct bfs_index *idx, size_t target,
			   const char *except, uint64_t max_records)
{
	TALLOC_CTX *mem = talloc_new(NULL);
	struct bfs_evict_walk ew = {
		.target = target, .except = except, .now = time(NULL),
		.batch = BFS_INDEX_EVICT_FIRST,
	};
	uint64_t dirs = 0, records = 0;
	int64_t *stamps = NULL;
	size_t n = 0, share, live = 0;
	bool done = false;
	int rc;

	if (mem == NULL) {
		return ENOMEM;
	}
	rc = bfs_index_stamps(idx, mem, ew.now, except, &stamps, &n);
	if (rc != 0 || n == 0) {
		talloc_free(mem);
		return rc != 0 ? bfs_lmdb_errno(rc) : ENOSPC;
	}
	for (share = 8; !done && records < max_records; share /= 2) {
		ew.cutoff = stamps[(n - 1) / share];
		ew.resume = NULL;
		ew.end = false;
		while (!ew.end && !done && records < max_records) {
			struct bfs_wtxn w = {.idx = idx, .evicting = true};

			do {
				rc = bfs_index_begin(&w);
				if (rc != 0) {
					break;
				}
				rc = bfs_index_evict_txn(idx, w.txn, w.tmp, mem,
							 &ew);
				rc = bfs_index_end(&w, rc);
			} while (rc == BFS_INDEX_AGAIN);
			if (rc != 0) {
				break;
			}
			dirs += ew.dirs;
			records += ew.records;
			done = ew.done;
			ew.resume = ew.next;
			ew.resume_len = ew.next_len;
			if (ew.batch < BFS_INDEX_EVICT_BATCH) {
				ew.batch *= 2;
			}
		}
		if (rc != 0 || share == 1) {
			break;
		}
	}
	/* bucketfsd writes from two threads. */
	__atomic_add_fetch(&idx->evicted, dirs, __ATOMIC_RELAXED);
	if (dirs > 0) {
		(void)bfs_index_live_now(idx, &live);
		bfs_log(BFS_LOG_NOTICE, "bucketfs: the index in %s: the "
			"listings of %llu folders used least recently evicted "
			"(%llu records); %.1f MiB in use, %.1f MiB wanted",
			idx->dir, (unsigned long long)dirs,
			(unsigned long long)records, bfs_mib(live),
			bfs_mib(target));
	}
	if (rc != 0) {
		bfs_log(BFS_LOG_WARNING, "bucketfs: evicting listings from the "
			"index in %s: %s", idx->dir, strerror(rc));
	}
	talloc_free(mem);
	return dirs > 0 ? 0 : (rc != 0 ? rc : ENOSPC);
}
