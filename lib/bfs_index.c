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
 *   listers "/<dir prefix>"       -> process listing it from S3 right now
 *                                    (struct bfs_lister_rec)
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

#define BFS_INDEX_MAP_SIZE (4ULL << 30) /* sparse; grows on demand */
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

static int bfs_index_open_once(TALLOC_CTX *mem_ctx, const char *dir,
			       const char *served, struct bfs_index **out,
			       const char **why)
{
	struct bfs_index *idx = talloc_zero(mem_ctx, struct bfs_index);
	MDB_txn *txn = NULL;
	MDB_val k = {6, (void *)"bucket"}, v;
	int rc;

	if (idx == NULL) {
		return ENOMEM;
	}
	rc = bfs_lmdb_open(dir, BFS_INDEX_MAP_SIZE, 6, &idx->env, why);
	if (rc != 0) {
		talloc_free(idx);
		return rc;
	}
	talloc_set_destructor(idx, bfs_index_destructor);
	rc = mdb_txn_begin(idx->env, NULL, 0, &txn);
	if (rc == 0) {
		rc = mdb_dbi_open(txn, "ent", MDB_CREATE, &idx->ent);
	}
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
		rc = mdb_get(txn, idx->meta, &k, &v);
		if (rc == MDB_NOTFOUND ||
		    (rc == 0 && bfs_index_old_identity(v, served))) {
			/* New, or written before the endpoint was part of it. */
			v.mv_size = strlen(served);
			v.mv_data = (void *)served;
			rc = mdb_put(txn, idx->meta, &k, &v, 0);
		} else if (rc == 0 && (v.mv_size != strlen(served) ||
				       memcmp(v.mv_data, served, v.mv_size) != 0)) {
			*why = talloc_asprintf(mem_ctx, "the cache folder holds "
					       "the index of another bucket or "
					       "endpoint (%.*s, not %s); give "
					       "this share its own 'bucketfs:"
					       "cache dir'", (int)v.mv_size,
					       (const char *)v.mv_data, served);
			if (*why == NULL) {
				*why = "the cache folder holds the index of "
				       "another bucket or endpoint";
			}
			mdb_txn_abort(txn);
			talloc_free(idx);
			return EEXIST;
		}
	}
	if (rc == 0) {
		rc = mdb_txn_commit(txn);
	} else if (txn != NULL) {
		mdb_txn_abort(txn);
	}
	if (rc != 0) {
		*why = mdb_strerror(rc);
		talloc_free(idx);
		return bfs_lmdb_errno(rc);
	}
	*out = idx;
	return 0;
}

/*
 * The index is a cache of S3's listings: a damaged one (a power loss with
 * MDB_NOSYNC, a garbled or truncated file) is set aside and rebuilt empty,
 * with a log line, instead of failing every connect.
 */
int bfs_index_open(TALLOC_CTX *mem_ctx, const char *dir, const char *served,
		   struct bfs_index **out, const char **why)
{
	int rc = bfs_index_open_once(mem_ctx, dir, served, out, why);

	if (rc == EIO && bfs_lmdb_set_aside(dir) == 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: the index in %s was damaged "
			"(%s): set aside as data.mdb.damaged-*, started anew; "
			"folders are listed from S3 again", dir,
			*why ? *why : "unreadable");
		rc = bfs_index_open_once(mem_ctx, dir, served, out, why);
	}
	return rc;
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

int bfs_index_dir_listed(struct bfs_index *idx, const char *dir,
			 time_t *listed_at)
{
	MDB_txn *txn;
	char buf[1100];
	MDB_val k = {(size_t)snprintf(buf, sizeof(buf), "/%s", dir), buf}, v;
	int64_t t;
	int rc;

	if (k.mv_size >= sizeof(buf)) {
		return ENAMETOOLONG;
	}
	rc = mdb_txn_begin(idx->env, NULL, MDB_RDONLY, &txn);
	if (rc != 0) {
		return bfs_lmdb_errno(rc);
	}
	rc = mdb_get(txn, idx->dirs, &k, &v);
	if (rc == 0 && v.mv_size == sizeof(t)) {
		memcpy(&t, v.mv_data, sizeof(t));
		*listed_at = (time_t)t;
	} else if (rc == 0) {
		rc = MDB_NOTFOUND;
	}
	mdb_txn_abort(txn);
	return bfs_lmdb_errno(rc);
}

int bfs_index_invalidate_dir(struct bfs_index *idx, const char *dir)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	MDB_val k = bfs_dirs_key(tmp, dir);
	MDB_txn *txn;
	int rc;

	rc = k.mv_data ? mdb_txn_begin(idx->env, NULL, 0, &txn) : ENOMEM;
	if (rc == 0) {
		rc = mdb_del(txn, idx->dirs, &k, NULL);
		if (rc == 0 || rc == MDB_NOTFOUND) {
			rc = mdb_txn_commit(txn);
		} else {
			mdb_txn_abort(txn);
		}
	}
	talloc_free(tmp);
	return bfs_lmdb_errno(rc);
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
				mdb_del(txn, idx->inos, &ik, NULL);
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
	TALLOC_CTX *tmp = talloc_new(NULL);
	MDB_txn *txn;
	MDB_val k = bfs_dirs_key(tmp, d->prefix), v;
	int64_t t = now;
	size_t i;
	int rc;

	rc = mdb_txn_begin(idx->env, NULL, 0, &txn);
	if (rc != 0) {
		talloc_free(tmp);
		return bfs_lmdb_errno(rc);
	}
	for (i = 0; rc == 0 && i < d->n; i++) {
		rc = bfs_index_store_one(idx, txn, tmp, d->prefix, &d->ents[i],
					 now);
	}
	if (rc == 0) {
		rc = bfs_index_drop_gone(idx, txn, tmp, d, now);
	}
	if (rc == 0) {
		rc = bfs_index_retire_changes(idx, txn, tmp, d->prefix, now);
	}
	if (rc == 0) {
		v.mv_size = sizeof(t);
		v.mv_data = &t;
		rc = mdb_put(txn, idx->dirs, &k, &v, 0);
	}
	if (rc == 0) {
		rc = mdb_txn_commit(txn);
	} else {
		mdb_txn_abort(txn);
	}
	talloc_free(tmp);
	return bfs_lmdb_errno(rc);
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
	rc = mdb_txn_begin(idx->env, NULL, MDB_RDONLY, &txn);
	if (rc == 0) {
		rc = mdb_get(txn, idx->ent, &k, &v);
		if (rc == 0) {
			rc = bfs_index_decode(mem_ctx, v.mv_data, v.mv_size, e);
			if (rc == 0) {
				e->name = talloc_strdup(mem_ctx, name);
				rc = e->name != NULL ? 0 : ENOMEM;
			}
		}
		mdb_txn_abort(txn);
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
	rc = mdb_txn_begin(idx->env, NULL, MDB_RDONLY, &txn);
	if (rc == 0) {
		rc = mdb_cursor_open(txn, idx->ent, &cur);
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
		mdb_txn_abort(txn);
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
		mdb_del(txn, idx->inos, &ik, NULL);
	}
	return mdb_del(txn, idx->ent, &k, NULL);
}

/* A write transaction and a scratch context, ended by bfs_index_finish. */
static int bfs_index_begin(struct bfs_index *idx, MDB_txn **txn,
			   TALLOC_CTX **tmp)
{
	int rc;

	*tmp = talloc_new(NULL);
	if (*tmp == NULL) {
		return ENOMEM;
	}
	rc = mdb_txn_begin(idx->env, NULL, 0, txn);
	if (rc != 0) {
		TALLOC_FREE(*tmp);
	}
	return bfs_lmdb_errno(rc);
}

static int bfs_index_finish(MDB_txn *txn, TALLOC_CTX *tmp, int rc)
{
	if (rc == 0) {
		rc = mdb_txn_commit(txn);
	} else {
		mdb_txn_abort(txn);
	}
	talloc_free(tmp);
	return bfs_lmdb_errno(rc);
}

int bfs_index_dir_set_listed(struct bfs_index *idx, const char *dir,
			     time_t listed_at)
{
	TALLOC_CTX *tmp;
	MDB_txn *txn;
	MDB_val k, v;
	int64_t t = listed_at;
	int rc;

	rc = bfs_index_begin(idx, &txn, &tmp);
	if (rc != 0) {
		return rc;
	}
	k = bfs_dirs_key(tmp, dir);
	/* Only a listing still there: an invalidate meanwhile wins. */
	rc = k.mv_data != NULL ? mdb_get(txn, idx->dirs, &k, &v) : ENOMEM;
	if (rc == 0) {
		v.mv_size = sizeof(t);
		v.mv_data = &t;
		rc = mdb_put(txn, idx->dirs, &k, &v, 0);
	}
	return bfs_index_finish(txn, tmp, rc == MDB_NOTFOUND ? 0 : rc);
}

int bfs_index_listing_claim(struct bfs_index *idx, const char *dir,
			    unsigned max_age)
{
	struct bfs_lister_rec r;
	TALLOC_CTX *tmp;
	MDB_txn *txn;
	MDB_val k, v;
	int64_t now = (int64_t)time(NULL);
	int rc;

	rc = bfs_index_begin(idx, &txn, &tmp);
	if (rc != 0) {
		return rc;
	}
	k = bfs_dirs_key(tmp, dir);
	rc = k.mv_data != NULL ? mdb_get(txn, idx->listers, &k, &v) : ENOMEM;
	if (rc == 0 && v.mv_size == sizeof(r)) {
		memcpy(&r, v.mv_data, sizeof(r));
		/* A claim of a process that died, or is stuck, is void. */
		if (r.pid != (int64_t)getpid() && r.pid > 0 &&
		    now - r.started < (int64_t)max_age && now >= r.started &&
		    !(kill((pid_t)r.pid, 0) == -1 && errno == ESRCH)) {
			return bfs_index_finish(txn, tmp, EBUSY);
		}
	}
	if (rc == 0 || rc == MDB_NOTFOUND) {
		r = (struct bfs_lister_rec){(int64_t)getpid(), now};
		v.mv_size = sizeof(r);
		v.mv_data = &r;
		rc = mdb_put(txn, idx->listers, &k, &v, 0);
	}
	return bfs_index_finish(txn, tmp, rc);
}

void bfs_index_listing_release(struct bfs_index *idx, const char *dir)
{
	struct bfs_lister_rec r;
	TALLOC_CTX *tmp;
	MDB_txn *txn;
	MDB_val k, v;
	int rc;

	if (bfs_index_begin(idx, &txn, &tmp) != 0) {
		return; /* waiters take it over once they see it is stale */
	}
	k = bfs_dirs_key(tmp, dir);
	rc = k.mv_data != NULL ? mdb_get(txn, idx->listers, &k, &v) : ENOMEM;
	if (rc == 0 && v.mv_size == sizeof(r)) {
		memcpy(&r, v.mv_data, sizeof(r));
		rc = r.pid == (int64_t)getpid() ?
			     mdb_del(txn, idx->listers, &k, NULL) :
			     MDB_NOTFOUND;
	}
	(void)bfs_index_finish(txn, tmp, rc);
}

int bfs_index_put(struct bfs_index *idx, const char *dir, struct bfs_entry *e)
{
	TALLOC_CTX *tmp;
	MDB_txn *txn;
	int rc;

	rc = bfs_index_begin(idx, &txn, &tmp);
	if (rc != 0) {
		return rc;
	}
	rc = bfs_index_put_txn(idx, txn, tmp, dir, e);
	if (rc == 0) {
		rc = bfs_index_note_change(idx, txn,
					   bfs_ent_key(tmp, dir, e->name));
	}
	return bfs_index_finish(txn, tmp, rc);
}

int bfs_index_learn(struct bfs_index *idx, const char *const *keys,
		    const struct bfs_entry *ents, size_t n)
{
	TALLOC_CTX *tmp;
	MDB_txn *txn;
	size_t i;
	int rc;

	rc = bfs_index_begin(idx, &txn, &tmp);
	if (rc != 0) {
		return rc;
	}
	for (i = 0; rc == 0 && i < n; i++) {
		struct bfs_entry e = ents[i], old;
		char *dir;
		MDB_val k, v;

		rc = bfs_key_split(tmp, keys[i], &dir, &e.name);
		if (rc != 0) {
			break;
		}
		e.ino = 0;
		e.flags = 0;
		k = bfs_ent_key(tmp, dir, e.name);
		if (k.mv_data == NULL) {
			rc = ENOMEM;
			break;
		}
		if (mdb_get(txn, idx->ent, &k, &v) == 0 &&
		    bfs_index_decode(tmp, v.mv_data, v.mv_size, &old) == 0 &&
		    (old.flags & BFS_ENT_PENDING)) {
			continue; /* written through the share: ours wins */
		}
		rc = bfs_index_put_txn(idx, txn, tmp, dir, &e);
	}
	return bfs_index_finish(txn, tmp, rc);
}

int bfs_index_remove(struct bfs_index *idx, const char *dir, const char *name)
{
	TALLOC_CTX *tmp;
	struct bfs_entry old;
	MDB_txn *txn;
	int rc;

	rc = bfs_index_begin(idx, &txn, &tmp);
	if (rc != 0) {
		return rc;
	}
	rc = bfs_index_remove_txn(idx, txn, tmp, dir, name, &old, true);
	rc = rc == MDB_NOTFOUND ? 0 : rc;
	if (rc == 0) {
		rc = bfs_index_note_change(idx, txn,
					   bfs_ent_key(tmp, dir, name));
	}
	return bfs_index_finish(txn, tmp, rc);
}

int bfs_index_rename(struct bfs_index *idx, const char *sdir,
		     const char *sname, const char *ddir, const char *dname)
{
	TALLOC_CTX *tmp;
	struct bfs_entry e = {0}, gone;
	MDB_val ik, iv;
	char *full;
	MDB_txn *txn;
	int rc;

	rc = bfs_index_begin(idx, &txn, &tmp);
	if (rc != 0) {
		return rc;
	}
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
	return bfs_index_finish(txn, tmp, rc == MDB_NOTFOUND ? ENOENT : rc);
}

/* ---- administration ------------------------------------------------------------ */

int bfs_index_count(struct bfs_index *idx, uint64_t *entries, uint64_t *dirs)
{
	MDB_txn *txn;
	MDB_stat st;
	int rc = mdb_txn_begin(idx->env, NULL, MDB_RDONLY, &txn);

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
	mdb_txn_abort(txn);
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
				mdb_del(txn, idx->inos, &ik, NULL);
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

int bfs_index_invalidate_tree(struct bfs_index *idx, const char *prefix,
			      uint64_t *n, bfs_index_each_fn each, void *priv)
{
	TALLOC_CTX *tmp;
	MDB_txn *txn;
	char *dk;
	int rc;

	*n = 0;
	rc = bfs_index_begin(idx, &txn, &tmp);
	if (rc != 0) {
		return rc;
	}
	dk = talloc_asprintf(tmp, "/%s", prefix);
	if (dk == NULL) {
		return bfs_index_finish(txn, tmp, ENOMEM);
	}
	rc = bfs_index_drop_range(idx, txn, idx->dirs, dk, strlen(dk), false,
				  n, NULL, NULL);
	if (rc == 0) {
		rc = bfs_index_drop_range(idx, txn, idx->ent, prefix,
					  strlen(prefix), true, n, each, priv);
	}
	if (rc == 0) {
		/* Forgotten too: the next listing is the whole truth. */
		uint64_t changes = 0;
		rc = bfs_index_drop_range(idx, txn, idx->changed, prefix,
					  strlen(prefix), false, &changes,
					  NULL, NULL);
	}
	return bfs_index_finish(txn, tmp, rc);
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
			mdb_del(txn, idx->dirs, &dk, NULL);
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

int bfs_index_check(struct bfs_index *idx, bool repair,
		    void (*each)(void *priv, const char *key,
				 const struct bfs_entry *e),
		    void *priv, struct bfs_index_fsck *r)
{
	TALLOC_CTX *tmp;
	MDB_txn *txn;
	MDB_cursor *cur = NULL;
	MDB_val k, v;
	uint64_t *inos = NULL;
	size_t n = 0;
	int rc;

	memset(r, 0, sizeof(*r));
	rc = bfs_index_begin(idx, &txn, &tmp);
	if (rc != 0) {
		return rc;
	}
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
	if (rc == 0 && !repair) {
		mdb_txn_abort(txn);
		talloc_free(tmp);
		return 0;
	}
	return bfs_index_finish(txn, tmp, rc);
}
