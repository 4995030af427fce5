/*
 * The extent cache.
 *
 * LMDB databases (environment "<dir>/map"):
 *   blocks  id(16) blk(8, big-endian)            -> struct bfs_block_rec
 *   lru     seg(1) tick(8, BE) id(16) blk(8, BE) -> empty
 *   meta    "used" "prot" "tick" "gen"           -> uint64
 *
 * Files: "<dir>/blocks/<2 hex>/<32 hex>", sparse, block n at n*block_size.
 *
 * Who may change a cache file: only whoever holds the fill lock
 * ("<dir>/fill.lock", flock, released by the kernel if the process dies;
 * the fill thread has its own open of it, so it excludes this process's
 * main thread too).
 * A fill makes its room first (evicts), writes its bytes, then commits the
 * record; an eviction commits the removal, then punches the hole.  A crash
 * between the steps leaves bytes without a record (space, not corruption;
 * a file no record names goes at the next opener's check).
 */
#include "bfs_cache.h"

#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <lmdb.h>
#include <openssl/evp.h>

#include "bfs_lmdb.h"
#include "bfs_priv.h"
#include "bfs_log.h"

#define BFS_CACHE_MAP_SIZE (8ULL << 30)
#define BFS_TOUCH_MAX 256
#define BFS_FD_SLOTS 32
/* Bytes waiting for the fill thread; past this, fills are dropped. */
#define BFS_FILL_QUEUE_MAX (32ULL << 20)
/*
 * Fills shorter than this go through the page cache even where the fill
 * thread writes around it.  A short fill is a small object, or a large
 * one's tail: the files of a small-file dataset, read again each epoch.
 * Written around the page cache, each read of the next epoch was a disk
 * read: 10,000 files of 100 KiB, W=32, the hot pass right after the cold
 * one ran at 0.66x plain Samba, and at 1.01x once small fills went through
 * the page cache (DEVELOPERS.md).  The copy costs little at these sizes.
 */
#define BFS_FILL_DIRECT_MIN (1024 * 1024)

/* The fill thread's bounce buffer (bfs_cache_fill_bounce): a huge page. */
#define BFS_BOUNCE (2u << 20)

enum { SEG_PROBATION = 0, SEG_PROTECTED = 1 };

/* The stored layout: changing it orphans every cache on disk. */
_Static_assert(sizeof(struct bfs_block_rec) == 24, "block record layout");

struct bfs_block_key {
	uint8_t id[16];
	uint8_t blk[8];
};

struct bfs_lru_key {
	uint8_t seg;
	uint8_t tick[8];
	struct bfs_block_key bk;
} __attribute__((packed));

struct bfs_fd_slot {
	struct bfs_cache_id id;
	int fd;
	uint64_t used;
	/*
	 * Lent to worker threads (bfs_cache_lend_fd): not closed or reused
	 * until all are back.  A lent descriptor of a removed file is only
	 * unnamed (id zeroed) and closed by the last return.
	 */
	unsigned lent;
};

/* Blocks handed to the fill thread (plain malloc: crosses threads). */
struct bfs_fill_job {
	struct bfs_fill_job *next;
	struct bfs_cache_id id;
	uint64_t first;
	const uint8_t *data;
	uint64_t len;
	int done; /* atomic: set by the fill thread */
};

struct bfs_cache {
	MDB_env *env;
	MDB_dbi blocks, lru, meta;
	MDB_txn *rtxn; /* reused read transaction (reset/renew) */
	char *dir;
	pid_t pid;	/* the opener: its "pid." entry in meta */
	bool recovered; /* open found a dead opener and checked the cache */
	/* Fills are read at once by other processes: no O_DIRECT. */
	bool fill_cached;
	struct bfs_cache_fsck recovery;
	int lock_fd;
	uint64_t limit;
	uint32_t block_size;

	struct bfs_block_key touched[BFS_TOUCH_MAX];
	unsigned n_touched;
	time_t last_flush;

	struct bfs_fd_slot fds[BFS_FD_SLOTS];
	uint64_t fd_clock;

	struct bfs_cache_counters counters;

	/* The fill thread, started by the first queued fill. */
	pthread_mutex_t mu;
	pthread_cond_t cv;	/* work queued, or stop */
	pthread_cond_t idle_cv; /* queue drained */
	pthread_t thread;
	bool thread_running;
	bool stop;
	bool busy;
	struct bfs_fill_job *queue_head, *queue_tail;
	uint64_t queued_bytes;
	uint64_t queue_max;	/* queued_bytes at most (BFS_FILL_QUEUE_MAX) */
	/*
	 * Fills come from shared memory in 4 KiB pages: the fill thread
	 * copies each into bounce (its own, in huge pages) before writing it
	 * around the page cache (bfs_cache_fill_bounce).
	 */
	bool fill_bounce;
	uint8_t *bounce;	/* the fill thread's alone */
	void *bounce_map;	/* 2 * BFS_BOUNCE: bounce is aligned within */
	int thread_lock_fd;
};

#define COUNT(c, field) __atomic_add_fetch(&(c)->counters.field, 1, __ATOMIC_RELAXED)

static void put_be64(uint8_t *p, uint64_t v)
{
	int i;

	for (i = 7; i >= 0; i--) {
		p[i] = (uint8_t)v;
		v >>= 8;
	}
}

static void bfs_block_key(struct bfs_block_key *k, const struct bfs_cache_id *id,
			  uint64_t blk)
{
	memcpy(k->id, id->b, sizeof(k->id));
	put_be64(k->blk, blk);
}

static uint64_t get_be64(const uint8_t *p)
{
	uint64_t v = 0;
	int i;

	for (i = 0; i < 8; i++) {
		v = (v << 8) | p[i];
	}
	return v;
}

/* ---- files ---------------------------------------------------------------- */

/*
 * "<dir>/blocks/<2 hex>[/<32 hex>]" into buf.  No talloc: the fill thread
 * calls this, and smbd's talloc hierarchy is not to be touched from it.
 */
static bool bfs_cache_path(char *buf, size_t size, const struct bfs_cache *c,
			   const uint8_t id[16], bool dir_only)
{
	static const char hex[] = "0123456789abcdef";
	char name[33];
	int i, n;

	for (i = 0; i < 16; i++) {
		name[2 * i] = hex[id[i] >> 4];
		name[2 * i + 1] = hex[id[i] & 15];
	}
	name[32] = '\0';
	if (dir_only) {
		n = snprintf(buf, size, "%s/blocks/%.2s", c->dir, name);
	} else {
		n = snprintf(buf, size, "%s/blocks/%.2s/%s", c->dir, name, name);
	}
	return n > 0 && (size_t)n < size;
}

static int bfs_cache_open_fd(struct bfs_cache *c, const uint8_t id[16],
			     bool create, bool shared);

/* An fd on the object's cache file, from a small per-process table. */
/*
 * The open descriptor of id's cache file, or -1; *free_slot (optional):
 * where to keep one opened now (the slot of a removed file, or the least
 * recently used).
 */
static int bfs_cache_fd_lookup(struct bfs_cache *c, const uint8_t id[16],
			       struct bfs_fd_slot **free_slot)
{
	struct bfs_fd_slot *slot = &c->fds[0];
	int i;

	for (i = 0; i < BFS_FD_SLOTS; i++) {
		if (c->fds[i].fd >= 0 && memcmp(c->fds[i].id.b, id, 16) == 0) {
			struct stat st;

			/*
			 * A file removed under us (bucketfs-ctl fsck, an
			 * admin) must not be written or read through an old
			 * descriptor while others use a new file of that name.
			 */
			if (fstat(c->fds[i].fd, &st) == 0 && st.st_nlink == 0) {
				if (c->fds[i].lent > 0) {
					memset(c->fds[i].id.b, 0, 16);
					continue;
				}
				close(c->fds[i].fd);
				c->fds[i].fd = -1;
				slot = &c->fds[i];
				break;
			}
			c->fds[i].used = ++c->fd_clock;
			return c->fds[i].fd;
		}
		if (c->fds[i].lent == 0 &&
		    (slot->lent > 0 || c->fds[i].used < slot->used)) {
			slot = &c->fds[i];
		}
	}
	if (free_slot != NULL) {
		/* bfs_cache_lend_fd keeps half the slots unlent: one is free. */
		*free_slot = slot;
	}
	return -1;
}

static int bfs_cache_fd(struct bfs_cache *c, const uint8_t id[16], bool create)
{
	struct bfs_fd_slot *slot = NULL;
	int fd = bfs_cache_fd_lookup(c, id, &slot);

	if (fd >= 0) {
		return fd;
	}
	fd = bfs_cache_open_fd(c, id, create, false);
	if (fd < 0) {
		return -1;
	}
	if (slot->fd >= 0) {
		close(slot->fd);
	}
	memcpy(slot->id.b, id, 16);
	slot->fd = fd;
	slot->used = ++c->fd_clock;
	return fd;
}

/* ---- open ------------------------------------------------------------------ */

static void bfs_cache_stop_thread(struct bfs_cache *c);

static void bfs_cache_unregister(struct bfs_cache *c);
static uint64_t meta_get(struct bfs_cache *c, MDB_txn *txn, const char *name);
static int meta_put(struct bfs_cache *c, MDB_txn *txn, const char *name,
		    uint64_t x);

static int bfs_cache_destructor(struct bfs_cache *c)
{
	int i;

	bfs_cache_stop_thread(c);
	bfs_cache_flush(c);
	bfs_cache_unregister(c);
	if (c->rtxn != NULL) {
		mdb_txn_abort(c->rtxn);
	}
	for (i = 0; i < BFS_FD_SLOTS; i++) {
		if (c->fds[i].fd >= 0) {
			close(c->fds[i].fd);
		}
	}
	if (c->lock_fd >= 0) {
		close(c->lock_fd);
	}
	if (c->thread_lock_fd >= 0) {
		close(c->thread_lock_fd);
	}
	if (c->bounce_map != NULL) {
		munmap(c->bounce_map, 2 * BFS_BOUNCE);
	}
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
	pthread_cond_destroy(&c->idle_cv);
	bfs_lmdb_close(c->env);
	return 0;
}

void bfs_cache_set_limit(struct bfs_cache *c, uint64_t limit)
{
	c->limit = limit;
}

/* ---- who has the cache open ------------------------------------------------------------ */

/*
 * Every process with the cache open has a "pid.N" entry in meta while it
 * does.  An entry whose process is gone means it died with the cache open,
 * perhaps between creating a cache file and committing its first records:
 * the new opener then checks the cache (as fsck does, under the fill
 * lock), so nothing a kill -9 left half-done outlives the restart.  Best
 * effort: a full disk that cannot take the entry only loses the check.
 */
static void bfs_pid_key(char *buf, size_t size, pid_t pid)
{
	snprintf(buf, size, "pid.%ld", (long)pid);
}

static int bfs_cache_register(struct bfs_cache *c, bool *crashed)
{
	MDB_txn *txn = NULL;
	MDB_cursor *cur = NULL;
	MDB_val k = {4, (void *)"pid."}, v;
	char key[32];
	uint64_t now = (uint64_t)time(NULL);
	int rc;

	*crashed = false;
	c->pid = getpid();
	rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc == 0) {
		rc = mdb_cursor_open(txn, c->meta, &cur);
	}
	if (rc == 0) {
		rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	}
	while (rc == 0 && k.mv_size > 4 && k.mv_size < sizeof(key) &&
	       memcmp(k.mv_data, "pid.", 4) == 0) {
		long pid;

		memcpy(key, k.mv_data, k.mv_size);
		key[k.mv_size] = '\0';
		pid = strtol(key + 4, NULL, 10);
		if (pid > 0 && kill((pid_t)pid, 0) == -1 && errno == ESRCH) {
			*crashed = true;
			rc = mdb_cursor_del(cur, 0);
			if (rc == 0) {
				rc = mdb_cursor_get(cur, &k, &v,
						    MDB_GET_CURRENT);
			}
			continue;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (cur != NULL) {
		mdb_cursor_close(cur);
	}
	if (rc == 0 || rc == MDB_NOTFOUND) {
		bfs_pid_key(key, sizeof(key), c->pid);
		k.mv_size = strlen(key);
		k.mv_data = key;
		v.mv_size = sizeof(now);
		v.mv_data = &now;
		rc = mdb_put(txn, c->meta, &k, &v, 0);
	}
	if (rc == 0) {
		rc = mdb_txn_commit(txn);
	} else if (txn != NULL) {
		mdb_txn_abort(txn);
	}
	return bfs_lmdb_errno(rc);
}

static void bfs_cache_unregister(struct bfs_cache *c)
{
	MDB_txn *txn = NULL;
	char key[32];
	MDB_val k;

	/* A forked child's copy is not the opener. */
	if (c->pid == 0 || c->pid != getpid() || c->env == NULL ||
	    mdb_txn_begin(c->env, NULL, 0, &txn) != 0) {
		return;
	}
	bfs_pid_key(key, sizeof(key), c->pid);
	k.mv_size = strlen(key);
	k.mv_data = key;
	if (mdb_del(txn, c->meta, &k, NULL) == 0) {
		mdb_txn_commit(txn);
	} else {
		mdb_txn_abort(txn);
	}
}

static int bfs_cache_open_once(TALLOC_CTX *mem_ctx, const char *dir,
			       uint64_t limit, uint32_t block_size,
			       struct bfs_cache **out, const char **why)
{
	struct bfs_cache *c = talloc_zero(mem_ctx, struct bfs_cache);
	char *map, *lock;
	MDB_txn *txn = NULL;
	bool crashed = false;
	uint64_t stored_bs;
	int rc, i;

	if (c == NULL) {
		return ENOMEM;
	}
	if (block_size < 4096 || (block_size & (block_size - 1)) != 0) {
		*why = "the block size must be a power of two, at least 4096";
		talloc_free(c);
		return EINVAL;
	}
	c->dir = talloc_strdup(c, dir);
	c->limit = limit;
	c->block_size = block_size;
	c->lock_fd = -1;
	c->thread_lock_fd = -1;
	c->queue_max = BFS_FILL_QUEUE_MAX;
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	pthread_cond_init(&c->idle_cv, NULL);
	for (i = 0; i < BFS_FD_SLOTS; i++) {
		c->fds[i].fd = -1;
	}
	map = talloc_asprintf(c, "%s/map", dir);
	lock = talloc_asprintf(c, "%s/fill.lock", dir);
	if (c->dir == NULL || map == NULL || lock == NULL) {
		talloc_free(c);
		return ENOMEM;
	}
	rc = bfs_lmdb_open(map, BFS_CACHE_MAP_SIZE, 4, &c->env, why);
	if (rc != 0) {
		talloc_free(c);
		return rc;
	}
	talloc_set_destructor(c, bfs_cache_destructor);
	/* Two opens: flock excludes open files, and the fill thread's must
	 * exclude this thread's as well as other processes'. */
	c->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	c->thread_lock_fd = open(lock, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (c->lock_fd < 0 || c->thread_lock_fd < 0) {
		rc = errno;
		*why = "cannot create the fill lock";
		talloc_free(c);
		return rc;
	}
	rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc == 0) {
		rc = mdb_dbi_open(txn, "blocks", MDB_CREATE, &c->blocks);
	}
	if (rc == 0) {
		rc = mdb_dbi_open(txn, "lru", MDB_CREATE, &c->lru);
	}
	if (rc == 0) {
		rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &c->meta);
	}
	/*
	 * One block size per cache folder: eviction finds a victim's bytes
	 * at block number x block size, so blocks of another size would
	 * have the wrong bytes punched out.
	 */
	stored_bs = rc == 0 ? meta_get(c, txn, "block size") : 0;
	if (rc == 0 && stored_bs == 0) {
		rc = meta_put(c, txn, "block size", block_size);
	} else if (rc == 0 && stored_bs != block_size) {
		mdb_txn_abort(txn);
		*why = talloc_asprintf(mem_ctx, "the cache folder holds blocks "
				       "of %" PRIu64 " bytes, not %u: give "
				       "this block size a folder of its own",
				       stored_bs, block_size);
		talloc_free(c);
		return EINVAL;
	}
	if (rc == 0) {
		rc = mdb_txn_commit(txn);
	} else if (txn != NULL) {
		mdb_txn_abort(txn);
	}
	if (rc != 0) {
		*why = mdb_strerror(rc);
		talloc_free(c);
		return bfs_lmdb_errno(rc);
	}
	c->last_flush = time(NULL);
	if (bfs_cache_register(c, &crashed) == 0 && crashed &&
	    bfs_cache_check(c, true, NULL, 0, &c->recovery) == 0) {
		c->recovered = true;
	}
	*out = c;
	return 0;
}

/*
 * A damaged block map (a power loss with MDB_NOSYNC, a garbled or
 * truncated file) is set aside and the cache starts empty, with a log
 * line: its block files, which no record names now, are removed by the
 * check a crash gets too.  Blocks are fetched again; nothing is lost.
 */
int bfs_cache_open(TALLOC_CTX *mem_ctx, const char *dir, uint64_t limit,
		   uint32_t block_size, struct bfs_cache **out,
		   const char **why)
{
	char *map = talloc_asprintf(NULL, "%s/map", dir);
	int rc = bfs_cache_open_once(mem_ctx, dir, limit, block_size, out,
				     why);

	if (rc == EIO && map != NULL && bfs_lmdb_set_aside(map) == 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: the cache map in %s was damaged "
			"(%s): set aside as data.mdb.damaged-*, the cache "
			"starts empty", map, *why ? *why : "unreadable");
		rc = bfs_cache_open_once(mem_ctx, dir, limit, block_size, out,
					 why);
		if (rc == 0 &&
		    bfs_cache_check(*out, true, NULL, 0, &(*out)->recovery) == 0) {
			(*out)->recovered = true;
		}
	}
	talloc_free(map);
	return rc;
}

const struct bfs_cache_fsck *bfs_cache_recovery(const struct bfs_cache *c)
{
	return c->recovered ? &c->recovery : NULL;
}

uint32_t bfs_cache_block_size(const struct bfs_cache *c)
{
	return c->block_size;
}

const struct bfs_cache_counters *bfs_cache_counters(const struct bfs_cache *c)
{
	return &c->counters;
}

/*
 * SHA-256, looked up in OpenSSL's providers once per process: EVP_sha256()
 * is looked up again at each digest (OpenSSL 3's implicit fetch), which
 * made an id cost 1.1 us instead of 0.33, three times per hot small file
 * (each of smbd's opens of the name makes one).  Kept for the process.
 */
static EVP_MD *bfs_sha256_md;
static pthread_once_t bfs_sha256_once = PTHREAD_ONCE_INIT;

static void bfs_sha256_fetch(void)
{
	bfs_sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

/*
 * An id of its own: all ones but for a process-wide counter, the pid and
 * the time, which no digest gives in practice and no other call gives.
 */
static void bfs_cache_unique_md(unsigned char md[32])
{
	static uint32_t unique;
	uint32_t n = __atomic_add_fetch(&unique, 1, __ATOMIC_RELAXED);
	uint32_t pid = (uint32_t)getpid(), now = (uint32_t)time(NULL);

	memset(md, 0xff, 32);
	memcpy(md + 4, &n, sizeof(n));
	memcpy(md + 8, &pid, sizeof(pid));
	memcpy(md + 12, &now, sizeof(now));
}

void bfs_cache_make_id(const char *bucket, const char *key, const char *etag,
		       uint32_t block_size, struct bfs_cache_id *id)
{
	unsigned char md[32];
	char bs[16];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok;

	pthread_once(&bfs_sha256_once, bfs_sha256_fetch);
	snprintf(bs, sizeof(bs), "%u", block_size);
	/* NUL-separated: no two different tuples hash the same input. */
	ok = ctx != NULL &&
	     EVP_DigestInit_ex(ctx, bfs_sha256_md != NULL ? bfs_sha256_md :
						       EVP_sha256(),
			       NULL) == 1 &&
	     EVP_DigestUpdate(ctx, bucket, strlen(bucket) + 1) == 1 &&
	     EVP_DigestUpdate(ctx, key, strlen(key) + 1) == 1 &&
	     EVP_DigestUpdate(ctx, etag ? etag : "",
			      strlen(etag ? etag : "") + 1) == 1 &&
	     EVP_DigestUpdate(ctx, bs, strlen(bs)) == 1 &&
	     EVP_DigestFinal_ex(ctx, md, NULL) == 1;
	EVP_MD_CTX_free(ctx);
	if (!ok) {
		/*
		 * Without memory for a digest: an id of its own, which names
		 * no cached bytes (a miss, fetched again), never another
		 * object's.
		 */
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot hash the cache id of %s",
			key);
		bfs_cache_unique_md(md);
	}
	memcpy(id->b, md, sizeof(id->b));
}

void bfs_cache_make_private_id(struct bfs_cache_id *id)
{
	unsigned char md[32];

	bfs_cache_unique_md(md);
	memcpy(id->b, md, sizeof(id->b));
}

/* ---- reads -------------------------------------------------------------------- */

static MDB_txn *bfs_cache_rtxn(struct bfs_cache *c)
{
	if (c->rtxn == NULL) {
		if (mdb_txn_begin(c->env, NULL, MDB_RDONLY, &c->rtxn) != 0) {
			c->rtxn = NULL;
		}
	} else if (mdb_txn_renew(c->rtxn) != 0) {
		mdb_txn_abort(c->rtxn);
		c->rtxn = NULL;
	}
	return c->rtxn;
}

int bfs_cache_block_decode(const void *buf, size_t len,
			   struct bfs_block_rec *rec)
{
	if (len != sizeof(*rec)) {
		return EBADMSG;
	}
	memcpy(rec, buf, sizeof(*rec));
	/* Every writer starts from a zeroed record and a block is never
	 * empty nor larger than the largest block size bfs_cache_open takes. */
	if (rec->seg > SEG_PROTECTED || rec->len == 0 ||
	    rec->len > (1U << 31) || rec->pad[0] != 0 || rec->pad[1] != 0 ||
	    rec->pad[2] != 0) {
		return EBADMSG;
	}
	return 0;
}

/*
 * The block's record, in a short read transaction: the reused one of the
 * owning thread, or (mt) one of the calling thread's own.
 */
static bool bfs_cache_get(struct bfs_cache *c, const struct bfs_block_key *bk,
			  struct bfs_block_rec *rec, bool mt)
{
	MDB_val k = {sizeof(*bk), (void *)bk}, v;
	MDB_txn *txn = NULL;
	bool found = false;

	if (mt ? mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn) != 0 :
		 (txn = bfs_cache_rtxn(c)) == NULL) {
		return false;
	}
	/* The key names this cache's block size (bfs_cache_make_id): a
	 * longer record would have a read take the next block's bytes. */
	if (mdb_get(txn, c->blocks, &k, &v) == 0 &&
	    bfs_cache_block_decode(v.mv_data, v.mv_size, rec) == 0 &&
	    rec->len <= c->block_size) {
		found = true;
	}
	if (mt) {
		mdb_txn_abort(txn);
	} else {
		mdb_txn_reset(txn);
	}
	return found;
}

bool bfs_cache_present(struct bfs_cache *c, const struct bfs_cache_id *id,
		       uint64_t blk)
{
	struct bfs_block_key bk;
	struct bfs_block_rec rec;

	bfs_block_key(&bk, id, blk);
	return bfs_cache_get(c, &bk, &rec, false);
}

static void bfs_cache_touch(struct bfs_cache *c, const struct bfs_block_key *bk)
{
	if (c->n_touched < BFS_TOUCH_MAX) {
		c->touched[c->n_touched++] = *bk;
	}
	if (c->n_touched == BFS_TOUCH_MAX || time(NULL) != c->last_flush) {
		bfs_cache_flush(c);
	}
}

/*
 * Copy from a present block, checking that the same fill is still there
 * after the copy.  mt: any thread (own transactions and file handle).
 */
/* Does fd's file still have a name (not unlinked)? */
static bool bfs_fd_named(int fd)
{
	struct stat st;

	return fstat(fd, &st) == 0 && st.st_nlink > 0;
}

static int bfs_cache_copy(struct bfs_cache *c, const struct bfs_cache_id *id,
			  uint64_t blk, uint32_t off, uint32_t n, void *buf,
			  uint32_t *got, bool mt, int mt_fd)
{
	struct bfs_block_key bk;
	struct bfs_block_rec before, after;
	ssize_t r;
	int fd;

	bfs_block_key(&bk, id, blk);
	if (!bfs_cache_get(c, &bk, &before, mt)) {
		COUNT(c, misses);
		return ENOENT;
	}
	if (off >= before.len) {
		*got = 0;
		return 0;
	}
	if (n > before.len - off) {
		n = before.len - off;
	}
	fd = mt ? mt_fd : bfs_cache_fd(c, id->b, false);
	if (fd < 0) {
		COUNT(c, misses);
		return ENOENT;
	}
	r = pread(fd, buf, n, (off_t)(blk * c->block_size + off));
	/*
	 * Same fill still present after the copy: the bytes were intact,
	 * if fd is the file that fill wrote.  A descriptor lent earlier
	 * (mt) may be of a file since unlinked, its last block evicted,
	 * and the block filled again into a new file of that name: the
	 * record is then a fill this copy never saw the bytes of.  Fills
	 * and unlinks hold the cache's flock, and a new file's fill commits
	 * only after the old file lost its name, so a file still named once
	 * the record was read is the one it speaks of.
	 */
	if (r != (ssize_t)n || !bfs_cache_get(c, &bk, &after, mt) ||
	    after.gen != before.gen || (mt && !bfs_fd_named(fd))) {
		COUNT(c, raced);
		return ENOENT;
	}
	COUNT(c, hits);
	*got = n;
	return 0;
}

int bfs_cache_read(struct bfs_cache *c, const struct bfs_cache_id *id,
		   uint64_t blk, uint32_t off, uint32_t n, void *buf,
		   uint32_t *got)
{
	int ret = bfs_cache_copy(c, id, blk, off, n, buf, got, false, -1);

	if (ret == 0) {
		bfs_cache_note_read(c, id, blk);
	}
	return ret;
}

int bfs_cache_read_mt(struct bfs_cache *c, int fd,
		      const struct bfs_cache_id *id, uint64_t blk, uint32_t off,
		      uint32_t n, void *buf, uint32_t *got)
{
	return bfs_cache_copy(c, id, blk, off, n, buf, got, true, fd);
}

static struct bfs_fd_slot *bfs_cache_fd_slot(struct bfs_cache *c, int fd)
{
	int i;

	for (i = 0; i < BFS_FD_SLOTS; i++) {
		if (c->fds[i].fd == fd) {
			return &c->fds[i];
		}
	}
	return NULL;
}

int bfs_cache_lend_fd(struct bfs_cache *c, const struct bfs_cache_id *id,
		      bool open)
{
	struct bfs_fd_slot *slot;
	unsigned i, n_lent = 0;
	int fd;

	for (i = 0; i < BFS_FD_SLOTS; i++) {
		n_lent += c->fds[i].lent > 0;
	}
	fd = open ? bfs_cache_fd(c, id->b, false)
		  : bfs_cache_fd_lookup(c, id->b, NULL);
	if (fd < 0 || (slot = bfs_cache_fd_slot(c, fd)) == NULL) {
		return -1;
	}
	/* Half the table stays free to open other files in. */
	if (slot->lent == 0 && n_lent >= BFS_FD_SLOTS / 2) {
		return -1;
	}
	slot->lent++;
	return fd;
}

void bfs_cache_return_fd(struct bfs_cache *c, int fd)
{
	struct bfs_fd_slot *slot = bfs_cache_fd_slot(c, fd);
	static const uint8_t unnamed[16];

	if (slot == NULL || slot->lent == 0) {
		return;
	}
	if (--slot->lent == 0 && memcmp(slot->id.b, unnamed, 16) == 0) {
		close(slot->fd);
		slot->fd = -1;
		slot->used = 0;
	}
}

/*
 * May a read of bk leave its block where it is in the eviction order?  A
 * protected block may while the cache is less than half full: nothing is
 * evicted before it is full, and once it is past half every read moves
 * its block again, so a block read often is near the young end by the
 * time one goes.  Moving it cost a write transaction per 256 reads (and
 * one a second), which hot small files paid on every read.  A block in
 * probation is always moved: its second read promotes it.
 */
static bool bfs_cache_read_keeps_place(struct bfs_cache *c,
				       const struct bfs_block_key *bk)
{
	MDB_txn *txn = bfs_cache_rtxn(c);
	MDB_val k = {sizeof(*bk), (void *)bk}, v;
	struct bfs_block_rec rec;
	bool keep = false;

	if (txn == NULL) {
		return false;
	}
	if (mdb_get(txn, c->blocks, &k, &v) == 0 &&
	    bfs_cache_block_decode(v.mv_data, v.mv_size, &rec) == 0 &&
	    rec.seg == SEG_PROTECTED) {
		keep = meta_get(c, txn, "used") < c->limit / 2;
	}
	mdb_txn_reset(txn);
	return keep;
}

void bfs_cache_note_read(struct bfs_cache *c, const struct bfs_cache_id *id,
			 uint64_t blk)
{
	struct bfs_block_key bk;

	bfs_block_key(&bk, id, blk);
	if (!bfs_cache_read_keeps_place(c, &bk)) {
		bfs_cache_touch(c, &bk);
	}
}

/* ---- meta counters ----------------------------------------------------------------- */

static uint64_t meta_get(struct bfs_cache *c, MDB_txn *txn, const char *name)
{
	MDB_val k = {strlen(name), (void *)name}, v;
	uint64_t x = 0;

	if (mdb_get(txn, c->meta, &k, &v) == 0 && v.mv_size == sizeof(x)) {
		memcpy(&x, v.mv_data, sizeof(x));
	}
	return x;
}

static int meta_put(struct bfs_cache *c, MDB_txn *txn, const char *name,
		    uint64_t x)
{
	MDB_val k = {strlen(name), (void *)name}, v = {sizeof(x), &x};

	return mdb_put(txn, c->meta, &k, &v, 0);
}

static void bfs_lru_key(struct bfs_lru_key *lk, uint8_t seg, uint64_t tick,
			const struct bfs_block_key *bk)
{
	lk->seg = seg;
	put_be64(lk->tick, tick);
	lk->bk = *bk;
}

/* ---- eviction ------------------------------------------------------------------------- */

struct bfs_victim {
	struct bfs_block_key bk;
	uint32_t len;
	bool last; /* no block of its version is left: its file goes */
};

/* Whether any block record of version id is left (true when unsure). */
static bool bfs_cache_has_blocks(struct bfs_cache *c, MDB_txn *txn,
				 const uint8_t id[16])
{
	struct bfs_block_key start;
	MDB_val k = {sizeof(start), &start}, v;
	MDB_cursor *cur;
	bool any;
	int rc;

	memcpy(start.id, id, sizeof(start.id));
	put_be64(start.blk, 0);
	if (mdb_cursor_open(txn, c->blocks, &cur) != 0) {
		return true;
	}
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	any = rc == 0 ? k.mv_size == sizeof(start) &&
				memcmp(k.mv_data, id, sizeof(start.id)) == 0 :
			rc != MDB_NOTFOUND;
	mdb_cursor_close(cur);
	return any;
}

/* Oldest block of seg, or MDB_NOTFOUND. */
static int bfs_lru_oldest(struct bfs_cache *c, MDB_txn *txn, uint8_t seg,
			  struct bfs_lru_key *out)
{
	struct bfs_lru_key start = {.seg = seg};
	MDB_val k = {sizeof(start), &start}, v;
	MDB_cursor *cur;
	int rc;

	rc = mdb_cursor_open(txn, c->lru, &cur);
	if (rc != 0) {
		return rc;
	}
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	if (rc == 0 && (k.mv_size != sizeof(*out) ||
			((uint8_t *)k.mv_data)[0] != seg)) {
		rc = MDB_NOTFOUND;
	}
	if (rc == 0) {
		memcpy(out, k.mv_data, sizeof(*out));
	}
	mdb_cursor_close(cur);
	return rc;
}

/* Remove one block's record and LRU entry; returns its record. */
static int bfs_cache_drop(struct bfs_cache *c, MDB_txn *txn,
			  const struct bfs_lru_key *lk, uint32_t *len)
{
	MDB_val k = {sizeof(lk->bk), (void *)&lk->bk}, v;
	MDB_val lkv = {sizeof(*lk), (void *)lk};
	struct bfs_block_rec rec;
	int rc;

	rc = mdb_del(txn, c->lru, &lkv, NULL);
	if (rc != 0) {
		return rc;
	}
	rc = mdb_get(txn, c->blocks, &k, &v);
	if (rc != 0) {
		return rc;
	}
	if (bfs_cache_block_decode(v.mv_data, v.mv_size, &rec) != 0) {
		return MDB_CORRUPTED;
	}
	*len = rec.len;
	return mdb_del(txn, c->blocks, &k, NULL);
}

/*
 * Make room for need bytes: victims from probation first, then protected.
 * Returns the victims (to punch after commit) in *victims.
 */
static int bfs_cache_make_room(struct bfs_cache *c, MDB_txn *txn,
			       uint64_t need, uint64_t limit,
			       struct bfs_victim **victims, size_t *n_victims)
{
	uint64_t used = meta_get(c, txn, "used");
	uint64_t prot = meta_get(c, txn, "prot");
	int rc = 0;

	while (used + need > limit) {
		struct bfs_lru_key lk;
		struct bfs_victim *nv;
		uint32_t len = 0;

		rc = bfs_lru_oldest(c, txn, SEG_PROBATION, &lk);
		if (rc == MDB_NOTFOUND) {
			rc = bfs_lru_oldest(c, txn, SEG_PROTECTED, &lk);
		}
		if (rc != 0) {
			break;
		}
		rc = bfs_cache_drop(c, txn, &lk, &len);
		if (rc != 0) {
			break;
		}
		used -= used >= len ? len : used;
		if (lk.seg == SEG_PROTECTED) {
			prot -= prot >= len ? len : prot;
		}
		nv = realloc(*victims, (*n_victims + 1) * sizeof(*nv));
		if (nv == NULL) {
			rc = ENOMEM;
			break;
		}
		*victims = nv;
		nv[(*n_victims)++] = (struct bfs_victim){lk.bk, len, false};
		COUNT(c, evictions);
	}
	if (rc == 0 || rc == MDB_NOTFOUND) {
		rc = meta_put(c, txn, "used", used);
	}
	if (rc == 0) {
		rc = meta_put(c, txn, "prot", prot);
	}
	return rc;
}

/* An fd on an object's file: from the table (main thread), or a fresh
 * one the caller closes (fill thread: the table is not thread-safe). */
static int bfs_cache_open_fd(struct bfs_cache *c, const uint8_t id[16],
			     bool create, bool shared)
{
	char path[PATH_MAX], dir[PATH_MAX];
	int fd;

	if (shared) {
		return bfs_cache_fd(c, id, create);
	}
	if (!bfs_cache_path(path, sizeof(path), c, id, false)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	/* No link is followed: the folder is root's (bfs_dir_trusted). */
	bfs_priv_enter();
	fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW |
			(create ? O_CREAT : 0), 0600);
	if (fd < 0 && create && errno == ENOENT &&
	    bfs_cache_path(dir, sizeof(dir), c, id, true) &&
	    bfs_mkdirs(dir) == 0) {
		fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_CREAT,
			  0600);
	}
	bfs_priv_leave();
	return fd;
}

/* Drop bk from the victims (it is present again). */
static void bfs_victims_forget(struct bfs_victim *v, size_t *n,
			       const struct bfs_block_key *bk)
{
	size_t i;

	for (i = 0; i < *n;) {
		if (memcmp(&v[i].bk, bk, sizeof(*bk)) == 0) {
			v[i] = v[--(*n)];
		} else {
			i++;
		}
	}
}

static void bfs_cache_punch(struct bfs_cache *c, const struct bfs_victim *v,
			    size_t n, bool shared)
{
	size_t i;

	for (i = 0; i < n; i++) {
		int fd;

		/* Punched even when the file goes too: another process may
		 * hold it open, and unlinking alone frees nothing then. */
		fd = bfs_cache_open_fd(c, v[i].bk.id, false, shared);
		if (fd >= 0) {
			fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				  (off_t)(get_be64(v[i].bk.blk) * c->block_size),
				  v[i].len);
			if (!shared) {
				close(fd);
			}
		}
		if (v[i].last) {
			/* An empty file per version ever cached would pile up;
			 * the fd table reopens what it finds unlinked. */
			char path[PATH_MAX];
			if (bfs_cache_path(path, sizeof(path), c, v[i].bk.id,
					   false)) {
				bfs_priv_enter();
				unlink(path);
				bfs_priv_leave();
			}
		}
	}
}

/* ---- fills -------------------------------------------------------------------------------- */

/*
 * The fill thread's bounce buffer: BFS_BOUNCE bytes on a huge page
 * boundary, advised to use huge pages, mapped at its first use; NULL if
 * it cannot be had (then the fill is written from where it is).
 */
static uint8_t *bfs_cache_bounce(struct bfs_cache *c)
{
	void *m;

	if (c->bounce != NULL) {
		return c->bounce;
	}
	m = mmap(NULL, 2 * BFS_BOUNCE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		return NULL;
	}
	c->bounce_map = m;
	c->bounce = (uint8_t *)(((uintptr_t)m + BFS_BOUNCE - 1) &
				~(uintptr_t)(BFS_BOUNCE - 1));
	(void)madvise(c->bounce, BFS_BOUNCE, MADV_HUGEPAGE); /* advice only */
	return c->bounce;
}

/*
 * Write len bytes of a fill at off.  The fill thread writes around the page
 * cache (O_DIRECT) when it can: copying a new block into the page cache
 * costs more CPU than fetching it did, and the block is not read at once
 * (readers of just-fetched bytes copy them from memory).  Direct writes need
 * 4 KiB alignment: the caller's buffer is aligned and readable up to the
 * next 4 KiB boundary (see bfs_cache_fill_queue).  Filesystems without
 * O_DIRECT (tmpfs) get a plain write.  0, or an errno.
 */
static int bfs_cache_write(struct bfs_cache *c, int fd,
			   const struct bfs_cache_id *id, const uint8_t *data,
			   uint64_t len, off_t off, bool shared)
{
	char path[PATH_MAX];
	uint64_t padded = (len + 4095) & ~(uint64_t)4095;
	ssize_t w;
	int dfd;

	dfd = -1;
	if (!shared && !c->fill_cached && len >= BFS_FILL_DIRECT_MIN &&
	    ((uintptr_t)data & 4095) == 0 && (off & 4095) == 0 &&
	    bfs_cache_path(path, sizeof(path), c, id->b, false)) {
		bfs_priv_enter();
		dfd = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC | O_NOFOLLOW);
		bfs_priv_leave();
	}
	if (dfd >= 0 && c->fill_bounce) {
		/*
		 * Written straight from 4 KiB pages of shared memory, an
		 * 8 MiB O_DIRECT write cost ~5 ms of CPU here; copied to huge
		 * pages first, 1.4 ms with the copy (DEVELOPERS.md).  In
		 * pieces of one huge page: the copy's memory stays small.
		 */
		uint8_t *b = bfs_cache_bounce(c);
		uint64_t done = 0;

		while (b != NULL && done < padded) {
			size_t n = padded - done < BFS_BOUNCE ?
				   (size_t)(padded - done) : BFS_BOUNCE;

			memcpy(b, data + done, n);
			w = pwrite(dfd, b, n, off + (off_t)done);
			if (w != (ssize_t)n) {
				break;
			}
			done += n;
		}
		if (b != NULL && done == padded) {
			close(dfd);
			return 0;
		}
		/* Not bounced, or a piece failed: the whole fill as usual. */
	}
	if (dfd >= 0) {
		w = pwrite(dfd, data, padded, off);
		close(dfd);
		if (w == (ssize_t)padded) {
			return 0;
		}
	}
	w = pwrite(fd, data, len, off);
	if (w == (ssize_t)len) {
		return 0;
	}
	if (w == -1) {
		return errno;
	}
	/*
	 * A short write sets no errno (the one left may be anyone's): the
	 * disk filled up past the reserve (bfs_cache_keep_disk_reserve)
	 * under us.  No log line: this runs on the fill thread too, and
	 * smbd's DEBUG is not thread-safe; fill_errors counts it.
	 */
	return ENOSPC;
}

/*
 * End an eviction's transaction txn (rc: how it went): note which victims
 * were their version's last block, commit, then punch their bytes, after
 * the commit.  Frees victims.  An LMDB code.
 */
static int bfs_cache_evict_end(struct bfs_cache *c, MDB_txn *txn, int rc,
			       struct bfs_victim *victims, size_t n_victims,
			       bool shared)
{
	size_t i;

	for (i = 0; rc == 0 && i < n_victims; i++) {
		victims[i].last = !bfs_cache_has_blocks(c, txn,
							victims[i].bk.id);
	}
	if (rc == 0) {
		rc = mdb_txn_commit(txn);
	} else {
		mdb_txn_abort(txn);
	}
	if (rc == 0) {
		bfs_cache_punch(c, victims, n_victims, shared);
	}
	free(victims);
	return rc;
}

/*
 * The cache shares its disk with the index, the journal and staged writes,
 * which must never find it full: a fill leaves a reserve free (a twentieth
 * of the disk, at least four blocks, at most 1 GiB), evicting ahead of the
 * configured limit when the disk is the tighter bound.  Called with the
 * fill lock held.  ENOSPC when even an empty cache would not leave the
 * reserve: the read is then served without caching.
 */
static int bfs_cache_keep_disk_reserve(struct bfs_cache *c, uint64_t len,
				       bool shared)
{
	struct statvfs sv;
	struct bfs_victim *victims = NULL;
	size_t n_victims = 0;
	uint64_t avail, total, reserve, deficit, used;
	MDB_txn *txn = NULL;
	int rc;

	bfs_priv_enter();
	rc = statvfs(c->dir, &sv);
	bfs_priv_leave();
	if (rc != 0) {
		return 0; /* no worse than not knowing */
	}
	avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	total = (uint64_t)sv.f_blocks * sv.f_frsize;
	reserve = total / 20;
	if (reserve < 4 * (uint64_t)c->block_size) {
		reserve = 4 * (uint64_t)c->block_size;
	}
	if (reserve > (1ull << 30)) {
		reserve = 1ull << 30;
	}
	if (avail >= len + reserve) {
		return 0;
	}
	deficit = len + reserve - avail;
	rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc != 0) {
		return bfs_lmdb_errno(rc);
	}
	used = meta_get(c, txn, "used");
	if (used < deficit) {
		mdb_txn_abort(txn);
		COUNT(c, fill_errors);
		return ENOSPC;
	}
	rc = bfs_cache_make_room(c, txn, 0, used - deficit, &victims,
				 &n_victims);
	return bfs_lmdb_errno(bfs_cache_evict_end(c, txn, rc, victims,
						  n_victims, shared));
}

/* Whether block blk of the fill of id at first.. lies in it. */
static bool bfs_fill_has(const struct bfs_cache_id *id, uint64_t first,
			 uint64_t n_blocks, const struct bfs_block_key *bk)
{
	uint64_t blk = get_be64(bk->blk);

	return memcmp(bk->id, id->b, sizeof(bk->id)) == 0 && blk >= first &&
	       blk - first < n_blocks;
}

/*
 * Room for a fill of blocks first.. (len bytes), made before its bytes are
 * written: the victims' removal committed, then their bytes punched.
 * Written first and evicted after, the cache held a whole fill over its
 * limit on disk while it was written: 16 MiB in the folder of an 8 MiB
 * cache while the fill thread wrote an 8-block fetch
 * (test_a_dataset_three_times_the_cache_stays_within_it_and_reads_right).
 * Blocks of the fill already present (another process filled them) need
 * no room, unless they are evicted here, then they do.  Called with the
 * fill lock held: nobody else adds to the cache until the fill commits.
 */
static int bfs_cache_room_for_fill(struct bfs_cache *c,
				   const struct bfs_cache_id *id,
				   uint64_t first, uint64_t len, bool shared)
{
	uint64_t n_blocks = (len + c->block_size - 1) / c->block_size;
	struct bfs_victim *victims = NULL;
	size_t n_victims = 0, seen = 0;
	uint64_t need = 0, off;
	MDB_txn *txn = NULL;
	int rc;

	rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc != 0) {
		return rc;
	}
	for (off = 0; rc == 0 && off < len; off += c->block_size) {
		struct bfs_block_key bk;
		MDB_val k = {sizeof(bk), &bk}, v;

		bfs_block_key(&bk, id, first + off / c->block_size);
		rc = mdb_get(txn, c->blocks, &k, &v);
		if (rc == MDB_NOTFOUND) {
			need += len - off < c->block_size ? len - off :
							    c->block_size;
			rc = 0;
		}
	}
	if (rc == 0 && meta_get(c, txn, "used") + need <= c->limit) {
		mdb_txn_abort(txn); /* room enough: nothing to change */
		return 0;
	}
	while (rc == 0) {
		uint64_t more = 0;

		rc = bfs_cache_make_room(c, txn, need, c->limit, &victims,
					 &n_victims);
		for (; rc == 0 && seen < n_victims; seen++) {
			if (bfs_fill_has(id, first, n_blocks,
					 &victims[seen].bk)) {
				more += victims[seen].len;
			}
		}
		if (more == 0) {
			break;
		}
		need += more; /* evicted, so absent: room for it too */
	}
	return bfs_cache_evict_end(c, txn, rc, victims, n_victims, shared);
}

/*
 * After a fill's write failed (a full disk, say): punch what it wrote where
 * no record is, so a failed fill leaves no bytes that nothing accounts for.
 * Blocks with a record keep theirs: another process filled them with the
 * same bytes.  Called with the fill lock held.
 */
static void bfs_cache_unwrite(struct bfs_cache *c, int fd,
			      const struct bfs_cache_id *id, uint64_t first,
			      uint64_t len)
{
	MDB_txn *txn = NULL;
	uint64_t off;

	if (fd < 0 || mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn) != 0) {
		return;
	}
	for (off = 0; off < len; off += c->block_size) {
		struct bfs_block_key bk;
		MDB_val k = {sizeof(bk), &bk}, v;

		bfs_block_key(&bk, id, first + off / c->block_size);
		if (mdb_get(txn, c->blocks, &k, &v) == MDB_NOTFOUND) {
			fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				  (off_t)((first * c->block_size) + off),
				  c->block_size);
		}
	}
	mdb_txn_abort(txn);
}

/*
 * Store blocks first.. covering len bytes of data (all full blocks but the
 * last).  Holds lock_fd's flock while changing files; one transaction for
 * all blocks.  shared: may use the fd table (main thread only).
 */
static int bfs_cache_fill_blocks(struct bfs_cache *c, int lock_fd,
				 const struct bfs_cache_id *id, uint64_t first,
				 const uint8_t *data, uint64_t len, bool shared)
{
	struct bfs_victim *victims = NULL;
	size_t n_victims = 0;
	MDB_txn *txn = NULL;
	uint64_t tick, gen, used, off;
	size_t i;
	int rc, fd;

	if (len == 0) {
		return EINVAL;
	}
	if (len > c->limit) {
		COUNT(c, fill_errors);
		return ENOSPC;
	}
	if (flock(lock_fd, LOCK_EX) != 0) {
		return errno;
	}
	fd = -1;
	rc = bfs_cache_keep_disk_reserve(c, len, shared);
	if (rc == 0) {
		rc = bfs_cache_room_for_fill(c, id, first, len, shared);
	}
	if (rc != 0) {
		goto out;
	}
	/* Opened after the room is made: that may unlink this very file. */
	fd = bfs_cache_open_fd(c, id->b, true, shared);
	rc = fd < 0 ? EIO :
		      bfs_cache_write(c, fd, id, data, len,
				      (off_t)(first * c->block_size), shared);
	if (rc != 0) {
		bfs_cache_unwrite(c, fd, id, first, len);
		goto out;
	}
	rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc != 0) {
		goto out;
	}
	tick = meta_get(c, txn, "tick") + 1;
	gen = meta_get(c, txn, "gen");
	for (off = 0; rc == 0 && off < len; off += c->block_size) {
		uint32_t blen = (uint32_t)(len - off < c->block_size ?
					   len - off : c->block_size);
		struct bfs_block_key bk;
		struct bfs_block_rec rec = {0};
		struct bfs_lru_key lk;
		MDB_val k = {sizeof(bk), &bk}, v, lkv = {sizeof(lk), &lk};
		MDB_val empty = {0, NULL};

		bfs_block_key(&bk, id, first + off / c->block_size);
		rc = mdb_get(txn, c->blocks, &k, &v);
		if (rc == 0) {
			continue; /* another process filled it: same bytes */
		}
		if (rc != MDB_NOTFOUND) {
			break;
		}
		/* Made before the write (bfs_cache_room_for_fill): a guard. */
		rc = bfs_cache_make_room(c, txn, blen, c->limit, &victims,
					 &n_victims);
		if (rc != 0) {
			break;
		}
		rec.gen = ++gen;
		rec.tick = tick;
		rec.len = blen;
		rec.seg = SEG_PROBATION;
		v.mv_size = sizeof(rec);
		v.mv_data = &rec;
		rc = mdb_put(txn, c->blocks, &k, &v, 0);
		if (rc == 0) {
			/*
			 * Evicted by this very fill to make room for an
			 * earlier block of it, and filled again now: its bytes
			 * are the ones just written, and punching them after
			 * the commit would leave a present block a hole.
			 */
			bfs_victims_forget(victims, &n_victims, &bk);
			bfs_lru_key(&lk, SEG_PROBATION, tick, &bk);
			rc = mdb_put(txn, c->lru, &lkv, &empty, 0);
		}
		if (rc == 0) {
			used = meta_get(c, txn, "used") + blen;
			rc = meta_put(c, txn, "used", used);
		}
		if (rc == 0) {
			COUNT(c, fills);
		}
	}
	if (rc == 0) {
		rc = meta_put(c, txn, "tick", tick);
	}
	if (rc == 0) {
		rc = meta_put(c, txn, "gen", gen);
	}
	for (i = 0; rc == 0 && i < n_victims; i++) {
		victims[i].last = !bfs_cache_has_blocks(c, txn, victims[i].bk.id);
	}
	if (rc == 0) {
		rc = mdb_txn_commit(txn);
		txn = NULL;
	}
	if (rc == 0) {
		/* Removals are committed: now their bytes may go. */
		bfs_cache_punch(c, victims, n_victims, shared);
	}
out:
	if (txn != NULL) {
		mdb_txn_abort(txn);
	}
	if (fd >= 0 && !shared) {
		close(fd);
	}
	flock(lock_fd, LOCK_UN);
	free(victims);
	if (rc != 0) {
		COUNT(c, fill_errors);
	}
	return bfs_lmdb_errno(rc);
}

int bfs_cache_fill(struct bfs_cache *c, const struct bfs_cache_id *id,
		   uint64_t blk, const void *data, uint64_t len)
{
	return bfs_cache_fill_blocks(c, c->lock_fd, id, blk, data, len, true);
}

/* ---- the fill thread ------------------------------------------------------------------------- */

static void *bfs_cache_fill_thread(void *arg)
{
	struct bfs_cache *c = arg;
	struct bfs_fill_job *j;

	/*
	 * A server (smbd) switches the effective ids of its threads to the
	 * connected user's; this thread was started under one of them.  The
	 * cache belongs to the server: take back its ids, for this thread
	 * only (the raw system calls, not glibc's process-wide wrappers).
	 */
	{
		uid_t ru, eu, su;

		/* smbd keeps root as the saved id: allowed to go back. */
		if (getresuid(&ru, &eu, &su) == 0 && su == 0 && eu != 0) {
			syscall(SYS_setresgid, 0, 0, -1);
			syscall(SYS_setresuid, 0, 0, -1);
		}
	}

	pthread_mutex_lock(&c->mu);
	for (;;) {
		while (c->queue_head == NULL && !c->stop) {
			c->busy = false;
			pthread_cond_broadcast(&c->idle_cv);
			pthread_cond_wait(&c->cv, &c->mu);
		}
		if (c->queue_head == NULL) {
			break; /* stopping, and nothing left */
		}
		j = c->queue_head;
		c->queue_head = j->next;
		if (c->queue_head == NULL) {
			c->queue_tail = NULL;
		}
		c->busy = true;
		pthread_mutex_unlock(&c->mu);

		(void)bfs_cache_fill_blocks(c, c->thread_lock_fd, &j->id,
					    j->first, j->data, j->len, false);

		pthread_mutex_lock(&c->mu);
		c->queued_bytes -= j->len;
		__atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
	}
	c->busy = false;
	pthread_cond_broadcast(&c->idle_cv);
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

static void bfs_cache_stop_thread(struct bfs_cache *c)
{
	if (!c->thread_running) {
		return;
	}
	pthread_mutex_lock(&c->mu);
	c->stop = true;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	pthread_join(c->thread, NULL);
	c->thread_running = false;
}

struct bfs_fill_job *bfs_cache_fill_queue(struct bfs_cache *c,
					  const struct bfs_cache_id *id,
					  uint64_t first, const void *data,
					  uint64_t len)
{
	struct bfs_fill_job *j;

	if (!c->thread_running) {
		int ret;

		/* Started with the server's rights: it opens cache files. */
		bfs_priv_enter();
		ret = pthread_create(&c->thread, NULL, bfs_cache_fill_thread, c);
		bfs_priv_leave();
		if (ret != 0) {
			return NULL;
		}
		c->thread_running = true;
	}
	j = calloc(1, sizeof(*j));
	if (j == NULL) {
		return NULL;
	}
	j->id = *id;
	j->first = first;
	j->data = data;
	j->len = len;
	pthread_mutex_lock(&c->mu);
	if (c->queued_bytes + len > c->queue_max) {
		/* The disk is behind: this one is not cached. */
		pthread_mutex_unlock(&c->mu);
		free(j);
		COUNT(c, fill_errors);
		return NULL;
	}
	c->queued_bytes += len;
	if (c->queue_tail != NULL) {
		c->queue_tail->next = j;
	} else {
		c->queue_head = j;
	}
	c->queue_tail = j;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	return j;
}

bool bfs_cache_fill_done(const struct bfs_fill_job *j)
{
	return __atomic_load_n(&j->done, __ATOMIC_ACQUIRE) != 0;
}

void bfs_cache_fill_release(struct bfs_fill_job *j)
{
	free(j);
}

void bfs_cache_fill_drain(struct bfs_cache *c)
{
	if (!c->thread_running) {
		return;
	}
	pthread_mutex_lock(&c->mu);
	while (c->queue_head != NULL || c->busy) {
		pthread_cond_wait(&c->idle_cv, &c->mu);
	}
	pthread_mutex_unlock(&c->mu);
}

/* ---- LRU upkeep ------------------------------------------------------------------------------ */

/* Keep the protected segment within 3/4 of the cache. */
static int bfs_cache_demote(struct bfs_cache *c, MDB_txn *txn, uint64_t *prot)
{
	int rc = 0;

	while (*prot > c->limit / 4 * 3) {
		struct bfs_lru_key lk;
		MDB_val lkv = {sizeof(lk), &lk}, empty = {0, NULL}, k, v;
		struct bfs_block_rec rec;

		rc = bfs_lru_oldest(c, txn, SEG_PROTECTED, &lk);
		if (rc != 0) {
			break;
		}
		k.mv_size = sizeof(lk.bk);
		k.mv_data = &lk.bk;
		rc = mdb_get(txn, c->blocks, &k, &v);
		if (rc != 0 ||
		    bfs_cache_block_decode(v.mv_data, v.mv_size, &rec) != 0) {
			break;
		}
		rc = mdb_del(txn, c->lru, &lkv, NULL);
		if (rc != 0) {
			break;
		}
		rec.seg = SEG_PROBATION;
		v.mv_data = &rec;
		rc = mdb_put(txn, c->blocks, &k, &v, 0);
		lk.seg = SEG_PROBATION;
		if (rc == 0) {
			rc = mdb_put(txn, c->lru, &lkv, &empty, 0);
		}
		if (rc != 0) {
			break;
		}
		*prot -= *prot >= rec.len ? rec.len : *prot;
	}
	return rc == MDB_NOTFOUND ? 0 : rc;
}

int bfs_cache_flush(struct bfs_cache *c)
{
	MDB_txn *txn;
	uint64_t tick, prot;
	unsigned i;
	int rc;

	c->last_flush = time(NULL);
	if (c->n_touched == 0) {
		return 0;
	}
	rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc != 0) {
		c->n_touched = 0;
		return bfs_lmdb_errno(rc);
	}
	tick = meta_get(c, txn, "tick") + 1;
	prot = meta_get(c, txn, "prot");
	for (i = 0; rc == 0 && i < c->n_touched; i++) {
		MDB_val k = {sizeof(c->touched[i]), &c->touched[i]}, v;
		MDB_val empty = {0, NULL};
		struct bfs_block_rec rec;
		struct bfs_lru_key old, new;
		MDB_val okv = {sizeof(old), &old}, nkv = {sizeof(new), &new};

		if (mdb_get(txn, c->blocks, &k, &v) != 0 ||
		    bfs_cache_block_decode(v.mv_data, v.mv_size, &rec) != 0) {
			continue; /* evicted since (or for fsck to drop) */
		}
		bfs_lru_key(&old, rec.seg, rec.tick, &c->touched[i]);
		rc = mdb_del(txn, c->lru, &okv, NULL);
		if (rc == MDB_NOTFOUND) {
			rc = 0;
		}
		/* Read again: promoted out of probation. */
		if (rec.seg == SEG_PROBATION) {
			rec.seg = SEG_PROTECTED;
			prot += rec.len;
		}
		rec.tick = tick;
		bfs_lru_key(&new, rec.seg, tick, &c->touched[i]);
		v.mv_data = &rec;
		if (rc == 0) {
			rc = mdb_put(txn, c->blocks, &k, &v, 0);
		}
		if (rc == 0) {
			rc = mdb_put(txn, c->lru, &nkv, &empty, 0);
		}
	}
	c->n_touched = 0;
	if (rc == 0) {
		rc = bfs_cache_demote(c, txn, &prot);
	}
	if (rc == 0) {
		rc = meta_put(c, txn, "prot", prot);
	}
	if (rc == 0) {
		rc = meta_put(c, txn, "tick", tick);
	}
	if (rc == 0) {
		rc = mdb_txn_commit(txn);
	} else {
		mdb_txn_abort(txn);
	}
	return bfs_lmdb_errno(rc);
}

int bfs_cache_usage(struct bfs_cache *c, uint64_t *used, uint64_t *blocks)
{
	MDB_txn *txn = bfs_cache_rtxn(c);
	MDB_stat st;

	if (txn == NULL) {
		return EIO;
	}
	*used = meta_get(c, txn, "used");
	*blocks = mdb_stat(txn, c->blocks, &st) == 0 ? st.ms_entries : 0;
	mdb_txn_reset(txn);
	return 0;
}

/* ---- fsck ------------------------------------------------------------------------------ */

static int bfs_id_cmp(const void *a, const void *b)
{
	return memcmp(a, b, 16);
}

/* Cache files without a record: space only; removed when repairing. */
static void bfs_cache_check_files(struct bfs_cache *c, const uint8_t *ids,
				  size_t n_ids, bool repair,
				  struct bfs_cache_fsck *r)
{
	char path[PATH_MAX];
	DIR *top, *sub;
	struct dirent *d, *e;

	snprintf(path, sizeof(path), "%s/blocks", c->dir);
	top = opendir(path);
	if (top == NULL) {
		return;
	}
	while ((d = readdir(top)) != NULL) {
		if (d->d_name[0] == '.') {
			continue;
		}
		snprintf(path, sizeof(path), "%s/blocks/%s", c->dir, d->d_name);
		sub = opendir(path);
		if (sub == NULL) {
			continue;
		}
		while ((e = readdir(sub)) != NULL) {
			uint8_t id[16];
			int i;
			bool ok = strlen(e->d_name) == 32;

			if (e->d_name[0] == '.') {
				continue;
			}
			for (i = 0; ok && i < 16; i++) {
				unsigned x;
				ok = sscanf(e->d_name + 2 * i, "%2x", &x) == 1;
				id[i] = (uint8_t)x;
			}
			/* No records: ids is NULL, which bsearch may not get. */
			if (ok && n_ids > 0 &&
			    bsearch(id, ids, n_ids, 16, bfs_id_cmp) != NULL) {
				continue;
			}
			r->orphan_files++;
			if (repair) {
				unlinkat(dirfd(sub), e->d_name, 0);
			}
		}
		closedir(sub);
	}
	closedir(top);
}

struct bfs_lru_sweep {
	struct bfs_cache *c;
	MDB_txn *txn;
};

/* An eviction entry is right if its block record has its place. */
static int bfs_lru_entry_ok(void *priv, const MDB_val *k, const MDB_val *v)
{
	const struct bfs_lru_sweep *sw = priv;
	struct bfs_lru_key lk;
	struct bfs_block_rec rec;
	MDB_val bkv, rv;

	(void)v;
	if (k->mv_size != sizeof(lk)) {
		return 0;
	}
	memcpy(&lk, k->mv_data, sizeof(lk));
	bkv.mv_size = sizeof(lk.bk);
	bkv.mv_data = &lk.bk;
	if (mdb_get(sw->txn, sw->c->blocks, &bkv, &rv) != 0 ||
	    bfs_cache_block_decode(rv.mv_data, rv.mv_size, &rec) != 0) {
		return 0;
	}
	return rec.seg == lk.seg && rec.tick == get_be64(lk.tick);
}

static int bfs_ref_cmp(const void *a, const void *b)
{
	return memcmp(((const struct bfs_cache_ref *)a)->id.b,
		      ((const struct bfs_cache_ref *)b)->id.b, 16);
}

int bfs_cache_check(struct bfs_cache *c, bool repair,
		    const struct bfs_cache_ref *refs_in, size_t n_refs,
		    struct bfs_cache_fsck *r)
{
	MDB_txn *txn = NULL;
	MDB_cursor *cur = NULL;
	MDB_val k, v, empty = {0, NULL};
	uint8_t *ids = NULL, last_id[16];
	size_t n_ids = 0;
	uint64_t used = 0, prot = 0, file_size = 0;
	bool have_last = false, file_ok = false;
	struct bfs_cache_ref *refs = NULL;
	const struct bfs_cache_ref *ref = NULL;
	int rc;

	memset(r, 0, sizeof(*r));
	if (refs_in != NULL) {
		/* One spare element: never a zero-sized chunk, never a read
		 * past the caller's array. */
		refs = talloc_array(c, struct bfs_cache_ref, n_refs + 1);
		if (refs == NULL) {
			return ENOMEM;
		}
		if (n_refs > 0) {
			memcpy(refs, refs_in, n_refs * sizeof(*refs));
		}
		qsort(refs, n_refs, sizeof(*refs), bfs_ref_cmp);
	}
	bfs_cache_flush(c);
	if (flock(c->lock_fd, LOCK_EX) != 0) {
		return errno;
	}
	rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc == 0) {
		rc = mdb_cursor_open(txn, c->blocks, &cur);
	}
	if (rc == 0) {
		rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	}
	/* Every block record: its bytes in the file, its eviction entry. */
	while (rc == 0) {
		struct bfs_block_key bk;
		struct bfs_block_rec rec;
		struct bfs_lru_key lk;
		MDB_val lkv = {sizeof(lk), &lk}, tmp;
		uint64_t blk, end;
		bool drop;

		if (k.mv_size != sizeof(bk) ||
		    bfs_cache_block_decode(v.mv_data, v.mv_size, &rec) != 0) {
			r->bad_blocks++;
			rc = repair ? mdb_cursor_del(cur, 0) : 0;
			rc = rc == 0 ? mdb_cursor_get(cur, &k, &v,
						      repair ? MDB_GET_CURRENT :
							       MDB_NEXT) : rc;
			continue;
		}
		memcpy(&bk, k.mv_data, sizeof(bk));
		r->blocks++;
		if (!have_last || memcmp(last_id, bk.id, 16) != 0) {
			char path[PATH_MAX];
			struct stat st;
			struct bfs_cache_ref key;

			memcpy(last_id, bk.id, 16);
			have_last = true;
			file_ok = bfs_cache_path(path, sizeof(path), c, bk.id,
						 false) &&
				  stat(path, &st) == 0;
			file_size = file_ok ? (uint64_t)st.st_size : 0;
			memcpy(key.id.b, bk.id, 16);
			ref = refs != NULL ? bsearch(&key, refs, n_refs,
						     sizeof(*refs),
						     bfs_ref_cmp) : NULL;
			if (refs != NULL && ref == NULL) {
				r->unindexed_versions++;
			}
			/* An unindexed version's file goes with its records. */
			if (!(repair && refs != NULL && ref == NULL)) {
				ids = talloc_realloc(c, ids, uint8_t,
						     (n_ids + 1) * 16);
				if (ids == NULL) {
					rc = ENOMEM;
					break;
				}
				memcpy(ids + 16 * n_ids++, bk.id, 16);
			}
		}
		blk = get_be64(bk.blk);
		bfs_lru_key(&lk, rec.seg, rec.tick, &bk);
		end = blk * c->block_size + rec.len;
		drop = true;
		if (refs != NULL && ref == NULL) {
			r->unindexed_blocks++;
		} else if (ref != NULL && end > ref->size) {
			r->beyond_size++;
		} else if (!file_ok || end > file_size) {
			r->bad_blocks++;
		} else {
			drop = false;
		}
		if (drop && repair) {
			mdb_del(txn, c->lru, &lkv, NULL);
			rc = bfs_lmdb_del_next(cur, &k, &v);
			continue;
		}
		if (!drop) {
			used += rec.len;
			prot += rec.seg == SEG_PROTECTED ? rec.len : 0;
			if (mdb_get(txn, c->lru, &lkv, &tmp) == MDB_NOTFOUND) {
				r->lru_missing++;
				if (repair) {
					rc = mdb_put(txn, c->lru, &lkv, &empty, 0);
				}
			}
		}
		if (rc == 0) {
			rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
		}
	}
	if (cur != NULL) {
		mdb_cursor_close(cur);
		cur = NULL;
	}
	rc = bfs_lmdb_walk_end(rc);
	/* Every eviction entry: a record with the same place in the order. */
	if (rc == 0) {
		struct bfs_lru_sweep sw = {c, txn};

		rc = bfs_lmdb_sweep(txn, c->lru, repair, bfs_lru_entry_ok, &sw,
				    &r->lru_orphans);
	}
	r->used_before = txn != NULL ? meta_get(c, txn, "used") : 0;
	r->used_after = used;
	if (rc == 0 && repair) {
		rc = meta_put(c, txn, "used", used);
		if (rc == 0) {
			rc = meta_put(c, txn, "prot", prot);
		}
	}
	if (txn != NULL) {
		if (rc == 0 && repair) {
			rc = mdb_txn_commit(txn);
		} else {
			mdb_txn_abort(txn);
		}
	}
	if (rc == 0) {
		if (n_ids > 1) { /* an empty cache has ids NULL: not for qsort */
			qsort(ids, n_ids, 16, bfs_id_cmp);
		}
		bfs_cache_check_files(c, ids, n_ids, repair, r);
	}
	flock(c->lock_fd, LOCK_UN);
	talloc_free(ids);
	talloc_free(refs);
	return bfs_lmdb_errno(rc);
}

/* ---- forgetting objects ------------------------------------------------------------------ */

int bfs_cache_forget(struct bfs_cache *c, const struct bfs_cache_id *ids,
		     size_t n, uint64_t *dropped)
{
	MDB_txn *txn = NULL;
	uint64_t used, prot;
	size_t i;
	int rc;

	*dropped = 0;
	if (n == 0) {
		return 0;
	}
	bfs_cache_flush(c);
	if (flock(c->lock_fd, LOCK_EX) != 0) {
		return errno;
	}
	rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	used = rc == 0 ? meta_get(c, txn, "used") : 0;
	prot = rc == 0 ? meta_get(c, txn, "prot") : 0;
	for (i = 0; rc == 0 && i < n; i++) {
		struct bfs_block_key start;
		MDB_val k = {sizeof(start), &start}, v;
		MDB_cursor *cur;

		bfs_block_key(&start, &ids[i], 0);
		rc = mdb_cursor_open(txn, c->blocks, &cur);
		if (rc != 0) {
			break;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
		while (rc == 0 && k.mv_size == sizeof(start) &&
		       memcmp(k.mv_data, ids[i].b, 16) == 0) {
			struct bfs_block_rec rec;
			struct bfs_lru_key lk;
			MDB_val lkv = {sizeof(lk), &lk};

			if (bfs_cache_block_decode(v.mv_data, v.mv_size,
						   &rec) == 0) {
				bfs_lru_key(&lk, rec.seg, rec.tick, k.mv_data);
				mdb_del(txn, c->lru, &lkv, NULL);
				used -= used >= rec.len ? rec.len : used;
				if (rec.seg == SEG_PROTECTED) {
					prot -= prot >= rec.len ? rec.len : prot;
				}
			}
			rc = mdb_cursor_del(cur, 0);
			if (rc == 0) {
				(*dropped)++;
				rc = mdb_cursor_get(cur, &k, &v, MDB_GET_CURRENT);
			}
		}
		mdb_cursor_close(cur);
		if (rc == MDB_NOTFOUND || rc == EINVAL) {
			rc = 0;
		}
	}
	if (rc == 0) {
		rc = meta_put(c, txn, "used", used);
	}
	if (rc == 0) {
		rc = meta_put(c, txn, "prot", prot);
	}
	if (txn != NULL) {
		rc = rc == 0 ? mdb_txn_commit(txn) : (mdb_txn_abort(txn), rc);
	}
	/* Records first, files after: a reader never finds a record without
	 * its bytes. */
	for (i = 0; rc == 0 && i < n; i++) {
		char path[PATH_MAX];
		if (bfs_cache_path(path, sizeof(path), c, ids[i].b, false)) {
			bfs_priv_enter();
			unlink(path);
			bfs_priv_leave();
		}
	}
	flock(c->lock_fd, LOCK_UN);
	return bfs_lmdb_errno(rc);
}

void bfs_cache_fill_through_page_cache(struct bfs_cache *c)
{
	c->fill_cached = true;
}

void bfs_cache_fill_bounce(struct bfs_cache *c)
{
	pthread_mutex_lock(&c->mu);
	c->fill_bounce = true;
	pthread_mutex_unlock(&c->mu);
}

void bfs_cache_fill_queue_max(struct bfs_cache *c, uint64_t bytes)
{
	pthread_mutex_lock(&c->mu);
	c->queue_max = bytes > BFS_FILL_QUEUE_MAX ? bytes : BFS_FILL_QUEUE_MAX;
	pthread_mutex_unlock(&c->mu);
}
