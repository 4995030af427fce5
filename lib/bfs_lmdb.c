#include "bfs_lmdb.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bfs_log.h"

/* Environments open in this process, by folder. */
struct bfs_lmdb_open_env {
	struct bfs_lmdb_open_env *next;
	dev_t dev;
	ino_t ino;
	pid_t pid; /* a forked child must not use its parent's handle */
	unsigned refs;
	MDB_env *env;
	/*
	 * Environments that grow: shared by each transaction, exclusive
	 * for a remap (mdb_env_set_mapsize), writer-preferring.
	 */
	bool grows;
	pthread_rwlock_t remap;
	size_t map_max;
	bool broken; /* a remap failed: LMDB has no map left */
	char dir[PATH_MAX];
};

static struct bfs_lmdb_open_env *bfs_open_envs;

int bfs_mkdirs(const char *path)
{
	char buf[PATH_MAX];
	size_t i, len = strlen(path);

	if (len == 0 || len >= sizeof(buf)) {
		return ENAMETOOLONG;
	}
	memcpy(buf, path, len + 1);
	for (i = 1; i <= len; i++) {
		if (buf[i] != '/' && buf[i] != '\0') {
			continue;
		}
		buf[i] = '\0';
		if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
			return errno;
		}
		buf[i] = i < len ? '/' : '\0';
	}
	return 0;
}

/* Why part (a component of a cache folder's path, as is) is not safe. */
static const char *bfs_part_unsafe(const char *part, const struct stat *st,
				   bool last, bool resolved)
{
	if (st->st_uid != 0 && st->st_uid != geteuid()) {
		return "is not owned by root";
	}
	if (!resolved) {
		return NULL; /* a link's own mode means nothing */
	}
	if (!S_ISDIR(st->st_mode)) {
		return "is not a folder";
	}
	/*
	 * Writable by others lets them swap what follows.  A sticky folder
	 * of root's (/tmp) lets nobody move root's entries, so it may lie on
	 * the way, but is no cache folder.
	 */
	if ((st->st_mode & (S_IWGRP | S_IWOTH)) != 0 &&
	    (last || (st->st_mode & S_ISVTX) == 0 || st->st_uid != 0)) {
		return "is writable by group or others";
	}
	(void)part;
	return NULL;
}

/* Check each component of path (absolute) with lstat or stat. */
static int bfs_path_check(const char *path, bool resolved, char *why,
			  size_t why_len)
{
	char part[PATH_MAX];
	size_t i, len = strlen(path);
	struct stat st;

	if (len == 0 || len >= sizeof(part) || path[0] != '/') {
		snprintf(why, why_len, "%s is not an absolute path", path);
		return EINVAL;
	}
	for (i = 1; i <= len; i++) {
		const char *bad;

		if (path[i] != '/' && path[i] != '\0') {
			continue;
		}
		memcpy(part, path, i);
		part[i] = '\0';
		if ((resolved ? stat(part, &st) : lstat(part, &st)) != 0) {
			int ret = errno;

			snprintf(why, why_len, "%s: %s", part, strerror(ret));
			return ret;
		}
		bad = bfs_part_unsafe(part, &st, i == len, resolved);
		if (bad != NULL) {
			snprintf(why, why_len, "%s %s (uid %u, mode %04o): "
				 "every folder up to the cache folder must be "
				 "root's and writable by root alone", part,
				 bad, (unsigned)st.st_uid,
				 (unsigned)(st.st_mode & 07777));
			return EPERM;
		}
	}
	if (stat("/", &st) != 0 || bfs_part_unsafe("/", &st, len == 1,
						    true) != NULL) {
		snprintf(why, why_len, "/ is not root's or writable by others");
		return EPERM;
	}
	return 0;
}

int bfs_dir_trusted(const char *path, char *why, size_t why_len)
{
	char real[PATH_MAX];
	int ret = bfs_path_check(path, false, why, why_len);

	if (ret != 0) {
		return ret;
	}
	if (realpath(path, real) == NULL) {
		ret = errno;
		snprintf(why, why_len, "%s: %s", path, strerror(ret));
		return ret;
	}
	return bfs_path_check(real, true, why, why_len);
}

int bfs_lmdb_errno(int rc)
{
	switch (rc) {
	case 0:
		return 0;
	case MDB_NOTFOUND:
		return ENOENT;
	case MDB_MAP_FULL:
	case MDB_TXN_FULL:
		return ENOSPC;
	case MDB_READERS_FULL:
		return EAGAIN;
	case MDB_CORRUPTED:
	case MDB_PAGE_NOTFOUND:
	case MDB_INVALID:
	case MDB_VERSION_MISMATCH:
		return EIO;
	default:
		return rc > 0 ? rc : EIO;
	}
}

/* Whether dir/data.mdb ends before the last page its meta page names. */
static bool bfs_lmdb_truncated(MDB_env *env, const char *dir)
{
	MDB_envinfo info;
	MDB_stat ms;
	struct stat ds;
	char path[PATH_MAX];

	if (mdb_env_info(env, &info) != 0 || mdb_env_stat(env, &ms) != 0 ||
	    snprintf(path, sizeof(path), "%s/data.mdb", dir) >=
		    (int)sizeof(path) ||
	    stat(path, &ds) != 0) {
		return false;
	}
	return (uint64_t)ds.st_size <
	       ((uint64_t)info.me_last_pgno + 1) * (uint64_t)ms.ms_psize;
}

int bfs_lmdb_set_aside(const char *dir)
{
	char from[PATH_MAX], to[PATH_MAX + 64];

	if (snprintf(from, sizeof(from), "%s/data.mdb", dir) >=
	    (int)sizeof(from)) {
		return ENAMETOOLONG;
	}
	snprintf(to, sizeof(to), "%s.damaged-%lld", from, (long long)time(NULL));
	if (rename(from, to) != 0) {
		return errno;
	}
	snprintf(from, sizeof(from), "%s/lock.mdb", dir);
	unlink(from);
	return 0;
}

/*
 * The remap lock prefers a waiting writer (a remap): with glibc's default
 * a reader thread that begins its next transaction before the last one
 * ends keeps the lock shared for ever, and a remap waits for ever (9
 * minutes under valgrind, which runs one thread at a time).  With writer
 * preference a thread may not take it shared twice while a remap waits:
 * bfs_lmdb_hold counts a thread's holds instead.
 */
static int bfs_lmdb_lock_init(pthread_rwlock_t *l)
{
	pthread_rwlockattr_t a;
	int ret = pthread_rwlockattr_init(&a);

	if (ret != 0) {
		return ret;
	}
#ifdef __GLIBC__
	/* An enum, not a macro.  Elsewhere the platform's default, which
	 * POSIX leaves open (readers of a POSIX rwlock may starve a remap). */
	ret = pthread_rwlockattr_setkind_np(
		&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
	if (ret == 0) {
		ret = pthread_rwlock_init(l, &a);
	}
	pthread_rwlockattr_destroy(&a);
	return ret;
}

/*
 * This thread's shared holds of remap locks: a transaction begun while
 * the thread has another open on the same environment counts, instead of
 * queueing behind a waiting remap that waits for it.  A thread holds
 * transactions of few environments at once; past BFS_LMDB_HOLDS it takes
 * the lock without counting (no nesting on those).
 */
#define BFS_LMDB_HOLDS 4
static __thread struct {
	const struct bfs_lmdb_open_env *o;
	unsigned depth;
} bfs_lmdb_holds[BFS_LMDB_HOLDS];

static unsigned *bfs_lmdb_hold_depth(const struct bfs_lmdb_open_env *o)
{
	unsigned i;

	for (i = 0; i < BFS_LMDB_HOLDS; i++) {
		if (bfs_lmdb_holds[i].o == o && bfs_lmdb_holds[i].depth > 0) {
			return &bfs_lmdb_holds[i].depth;
		}
	}
	return NULL;
}

static void bfs_lmdb_hold(struct bfs_lmdb_open_env *o)
{
	unsigned *depth = bfs_lmdb_hold_depth(o), i;

	if (depth != NULL) {
		(*depth)++;
		return;
	}
	pthread_rwlock_rdlock(&o->remap);
	for (i = 0; i < BFS_LMDB_HOLDS; i++) {
		if (bfs_lmdb_holds[i].depth == 0) {
			bfs_lmdb_holds[i].o = o;
			bfs_lmdb_holds[i].depth = 1;
			return;
		}
	}
}

static void bfs_lmdb_release(struct bfs_lmdb_open_env *o)
{
	unsigned *depth = bfs_lmdb_hold_depth(o);

	if (depth != NULL && --(*depth) > 0) {
		return;
	}
	pthread_rwlock_unlock(&o->remap);
}

int bfs_lmdb_open(const char *dir, size_t map_size, unsigned max_dbs,
		  MDB_env **penv, const char **why)
{
	return bfs_lmdb_open_growing(dir, map_size, 0, max_dbs, penv, why);
}

/*
 * Remap o's environment at size (0: the size recorded in the file, at
 * least its pages in use), the remap lock held exclusively.  A failed
 * remap leaves LMDB without a map: the environment is marked broken.
 */
static int bfs_lmdb_remap(struct bfs_lmdb_open_env *o, size_t size)
{
	int rc = mdb_env_set_mapsize(o->env, size);

	if (rc != 0) {
		o->broken = true;
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot map %s/data.mdb at %zu "
			"MiB: %s; it fails until this process restarts",
			o->dir, size >> 20, mdb_strerror(rc));
	}
	return rc;
}

static size_t bfs_lmdb_map_now(MDB_env *env)
{
	MDB_envinfo info;

	return mdb_env_info(env, &info) == 0 ? info.me_mapsize : 0;
}

int bfs_lmdb_open_growing(const char *dir, size_t map_size, size_t map_max,
			  unsigned max_dbs, MDB_env **penv, const char **why)
{
	struct bfs_lmdb_open_env *o;
	MDB_env *env = NULL;
	struct stat st;
	int rc, dead = 0;

	static __thread char unsafe[PATH_MAX + 160];

	rc = bfs_mkdirs(dir);
	if (rc != 0) {
		*why = "cannot create the folder";
		return rc;
	}
	rc = bfs_dir_trusted(dir, unsafe, sizeof(unsafe));
	if (rc != 0) {
		*why = unsafe; /* read at once, by this thread */
		return rc;
	}
	if (stat(dir, &st) != 0) {
		*why = "cannot stat the folder";
		return errno;
	}
	for (o = bfs_open_envs; o != NULL; o = o->next) {
		if (o->dev == st.st_dev && o->ino == st.st_ino &&
		    o->pid == getpid()) {
			o->refs++;
			*penv = o->env;
			*why = NULL;
			return 0;
		}
	}
	o = calloc(1, sizeof(*o));
	if (o == NULL) {
		*why = "out of memory";
		return ENOMEM;
	}
	o->grows = map_max > map_size;
	if (o->grows && bfs_lmdb_lock_init(&o->remap) != 0) {
		free(o);
		*why = "cannot make a lock";
		return ENOMEM;
	}
	rc = mdb_env_create(&env);
	if (rc == 0) {
		rc = mdb_env_set_maxdbs(env, max_dbs);
	}
	if (rc == 0) {
		rc = mdb_env_set_mapsize(env, map_size);
	}
	if (rc == 0) {
		/* One reader slot per smbd child and thread that reads. */
		rc = mdb_env_set_maxreaders(env, 1024);
	}
	if (rc == 0) {
		/* NOTLS: read transactions are not tied to a thread. */
		rc = mdb_env_open(env, dir, MDB_NOTLS | MDB_NOSYNC, 0600);
	}
	if (rc == 0 && bfs_lmdb_truncated(env, dir)) {
		/*
		 * Its pages would be mapped past the end of the file: the
		 * first read of one would be a SIGBUS, not an error.
		 */
		*why = "data.mdb is shorter than the pages it names (truncated)";
		mdb_env_close(env);
		if (o->grows) {
			pthread_rwlock_destroy(&o->remap);
		}
		free(o);
		return EIO;
	}
	if (rc == 0 && o->grows) {
		/*
		 * Start from the size another process grew the map to (the
		 * file records it), not from ours again: our first
		 * transactions would only run into its end.
		 */
		rc = mdb_env_set_mapsize(env, 0);
		if (rc == 0 && bfs_lmdb_map_now(env) < map_size) {
			rc = mdb_env_set_mapsize(env, map_size);
		}
	}
	if (rc != 0) {
		*why = mdb_strerror(rc);
		if (env != NULL) {
			mdb_env_close(env);
		}
		if (o->grows) {
			pthread_rwlock_destroy(&o->remap);
		}
		free(o);
		return bfs_lmdb_errno(rc);
	}
	/* Free the reader slots of processes that died holding one. */
	mdb_reader_check(env, &dead);
	o->next = bfs_open_envs;
	o->dev = st.st_dev;
	o->ino = st.st_ino;
	o->pid = getpid();
	o->refs = 1;
	o->env = env;
	o->map_max = map_max;
	snprintf(o->dir, sizeof(o->dir), "%s", dir);
	mdb_env_set_userctx(env, o);
	bfs_open_envs = o;
	*penv = env;
	*why = NULL;
	return 0;
}

void bfs_lmdb_close(MDB_env *env)
{
	struct bfs_lmdb_open_env **pp, *o;

	for (pp = &bfs_open_envs; (o = *pp) != NULL; pp = &o->next) {
		if (o->env != env) {
			continue;
		}
		if (--o->refs == 0) {
			*pp = o->next;
			if (o->pid == getpid()) {
				mdb_env_close(env);
				if (o->grows) {
					pthread_rwlock_destroy(&o->remap);
				}
			}
			free(o);
		}
		return;
	}
}

int bfs_lmdb_del_next(MDB_cursor *cur, MDB_val *k, MDB_val *v)
{
	int rc = mdb_cursor_del(cur, 0);

	return rc == 0 ? mdb_cursor_get(cur, k, v, MDB_GET_CURRENT) : rc;
}

int bfs_lmdb_walk_end(int rc)
{
	return rc == MDB_NOTFOUND || rc == EINVAL ? 0 : rc;
}

int bfs_lmdb_sweep(MDB_txn *txn, MDB_dbi dbi, int repair,
		   int (*keep)(void *priv, const MDB_val *k, const MDB_val *v),
		   void *priv, uint64_t *dropped)
{
	MDB_cursor *cur;
	MDB_val k, v;
	int rc = mdb_cursor_open(txn, dbi, &cur);

	if (rc != 0) {
		return rc;
	}
	rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	while (rc == 0) {
		if (keep(priv, &k, &v)) {
			rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
			continue;
		}
		(*dropped)++;
		rc = repair ? bfs_lmdb_del_next(cur, &k, &v) :
			      mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	return bfs_lmdb_walk_end(rc);
}

/* The growing environment env belongs to, or NULL. */
static struct bfs_lmdb_open_env *bfs_lmdb_growing(MDB_env *env)
{
	struct bfs_lmdb_open_env *o = mdb_env_get_userctx(env);

	return o != NULL && o->grows ? o : NULL;
}

int bfs_lmdb_txn_begin(MDB_env *env, unsigned flags, MDB_txn **txn)
{
	struct bfs_lmdb_open_env *o = bfs_lmdb_growing(env);
	int rc, tries;

	if (o == NULL) {
		return mdb_txn_begin(env, NULL, flags, txn);
	}
	for (tries = 0;; tries++) {
		bfs_lmdb_hold(o);
		if (o->broken) {
			bfs_lmdb_release(o);
			return EIO;
		}
		rc = mdb_txn_begin(env, NULL, flags, txn);
		if (rc == 0) {
			return 0; /* the hold is the transaction's now */
		}
		bfs_lmdb_release(o);
		if (rc != MDB_MAP_RESIZED || tries == 3 ||
		    bfs_lmdb_hold_depth(o) != NULL) {
			return rc;
		}
		/*
		 * Another process grew the map and used it: take its size
		 * (never less than ours, which another thread may have grown
		 * for a write not committed yet).
		 */
		pthread_rwlock_wrlock(&o->remap);
		if (o->broken) {
			rc = EIO;
		} else {
			size_t ours = bfs_lmdb_map_now(env);

			rc = bfs_lmdb_remap(o, 0);
			if (rc == 0 && bfs_lmdb_map_now(env) < ours) {
				rc = bfs_lmdb_remap(o, ours);
			}
		}
		pthread_rwlock_unlock(&o->remap);
		if (rc != 0) {
			return rc;
		}
	}
}

int bfs_lmdb_txn_commit(MDB_txn *txn)
{
	struct bfs_lmdb_open_env *o = bfs_lmdb_growing(mdb_txn_env(txn));
	int rc = mdb_txn_commit(txn);

	if (o != NULL) {
		bfs_lmdb_release(o);
	}
	return rc;
}

void bfs_lmdb_txn_abort(MDB_txn *txn)
{
	struct bfs_lmdb_open_env *o = bfs_lmdb_growing(mdb_txn_env(txn));

	mdb_txn_abort(txn);
	if (o != NULL) {
		bfs_lmdb_release(o);
	}
}

void bfs_lmdb_sizes(MDB_env *env, size_t *map, size_t *file)
{
	struct bfs_lmdb_open_env *o = bfs_lmdb_growing(env);
	MDB_envinfo info = {0};
	MDB_stat ms = {0};

	/* mdb_env_info reads the meta pages, inside the map. */
	if (o != NULL) {
		bfs_lmdb_hold(o);
	}
	if (o == NULL || !o->broken) {
		mdb_env_info(env, &info);
		mdb_env_stat(env, &ms);
	}
	if (o != NULL) {
		bfs_lmdb_release(o);
	}
	*map = info.me_mapsize;
	*file = ((size_t)info.me_last_pgno + 1) * ms.ms_psize;
}

int bfs_lmdb_grow(MDB_env *env, size_t seen)
{
	struct bfs_lmdb_open_env *o = bfs_lmdb_growing(env);
	size_t cur, adopted, want;
	int rc = 0, dead = 0;

	if (o == NULL) {
		return ENOSPC;
	}
	if (bfs_lmdb_hold_depth(o) != NULL) {
		/* It would wait for this thread's own transaction. */
		bfs_log(BFS_LOG_ERR, "bucketfs: %s/data.mdb: the map cannot "
			"grow under an open transaction of the same thread",
			o->dir);
		return EDEADLK;
	}
	/* Readers of dead processes pin pages that could be reused. */
	mdb_reader_check(env, &dead);
	pthread_rwlock_wrlock(&o->remap);
	if (o->broken) {
		pthread_rwlock_unlock(&o->remap);
		return EIO;
	}
	cur = bfs_lmdb_map_now(env);
	if (cur > seen) {
		pthread_rwlock_unlock(&o->remap);
		return 0; /* another thread grew it meanwhile */
	}
	/* A size another process recorded (never below the pages in use). */
	rc = bfs_lmdb_remap(o, 0);
	adopted = rc == 0 ? bfs_lmdb_map_now(env) : 0;
	want = cur >= o->map_max / 2 ? o->map_max : cur * 2;
	if (rc == 0 && adopted > cur) {
		want = adopted;
	} else if (rc == 0 && want > cur) {
		rc = bfs_lmdb_remap(o, want);
	} else if (rc == 0) {
		/* At the ceiling: keep the map we had, report it full. */
		if (adopted != cur) {
			rc = bfs_lmdb_remap(o, cur);
		}
		pthread_rwlock_unlock(&o->remap);
		return rc == 0 ? ENOSPC : EIO;
	}
	pthread_rwlock_unlock(&o->remap);
	if (rc != 0) {
		return EIO;
	}
	bfs_log(BFS_LOG_NOTICE, "bucketfs: the map of %s/data.mdb was full: "
		"%.1f MiB now (was %.1f, at most %.1f)", o->dir,
		(double)want / (1 << 20), (double)cur / (1 << 20),
		(double)o->map_max / (1 << 20));
	return 0;
}
