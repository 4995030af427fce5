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
	/* Shared by transactions, exclusive for a remap (bfs_lmdb_grow). */
	pthread_rwlock_t remap;
	size_t map_max;
	/* A remap failed: LMDB has no map left to work on. */
	bool broken;
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

int bfs_lmdb_open(const char *dir, size_t map_size, unsigned max_dbs,
		  MDB_env **penv, const char **why)
{
	return bfs_lmdb_open_growing(dir, map_size, map_size, max_dbs, penv,
				     why);
}

/*
 * Remap env at size (0: the size last committed by any process), with
 * the remap lock held exclusively.  A failed remap leaves LMDB without a
 * map: the environment is marked broken, so nothing touches it again.
 */
static int bfs_lmdb_remap(struct bfs_lmdb_open_env *o, size_t size)
{
	int rc = mdb_env_set_mapsize(o->env, size);

	if (rc != 0) {
		o->broken = true;
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot map %s/data.mdb at "
			"%zu MiB: %s; its users fail until they restart",
			o->dir, size >> 20, mdb_strerror(rc));
	}
	return rc;
}

int bfs_lmdb_open_growing(const char *dir, size_t map_size, size_t map_max,
			  unsigned max_dbs, MDB_env **penv, const char **why)
{
	struct bfs_lmdb_open_env *o;
	MDB_env *env = NULL;
	struct stat st;
	int rc, dead = 0;

	rc = bfs_mkdirs(dir);
	if (rc != 0) {
		*why = "cannot create the folder";
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
	if (pthread_rwlock_init(&o->remap, NULL) != 0) {
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
		pthread_rwlock_destroy(&o->remap);
		free(o);
		return EIO;
	}
	if (rc == 0 && map_max > map_size) {
		/*
		 * Start from the size another process grew the map to (it
		 * committed it in the meta page), not from ours again: our
		 * first transactions would only run into its end.
		 */
		MDB_envinfo info;

		rc = mdb_env_set_mapsize(env, 0);
		if (rc == 0 && mdb_env_info(env, &info) == 0 &&
		    info.me_mapsize < map_size) {
			rc = mdb_env_set_mapsize(env, map_size);
		}
	}
	if (rc != 0) {
		*why = mdb_strerror(rc);
		if (env != NULL) {
			mdb_env_close(env);
		}
		pthread_rwlock_destroy(&o->remap);
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
	o->map_max = map_max > map_size ? map_max : map_size;
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
				pthread_rwlock_destroy(&o->remap);
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

int bfs_lmdb_txn_begin(MDB_env *env, unsigned flags, MDB_txn **txn)
{
	struct bfs_lmdb_open_env *o = mdb_env_get_userctx(env);
	int rc, tries;

	if (o == NULL) {
		return mdb_txn_begin(env, NULL, flags, txn);
	}
	for (tries = 0;; tries++) {
		pthread_rwlock_rdlock(&o->remap);
		if (o->broken) {
			pthread_rwlock_unlock(&o->remap);
			return EIO;
		}
		rc = mdb_txn_begin(env, NULL, flags, txn);
		if (rc == 0) {
			return 0; /* the lock is the transaction's now */
		}
		pthread_rwlock_unlock(&o->remap);
		if (rc != MDB_MAP_RESIZED || tries == 3) {
			return rc;
		}
		/* Another process grew the map and used the room: adopt it. */
		pthread_rwlock_wrlock(&o->remap);
		rc = bfs_lmdb_remap(o, 0);
		pthread_rwlock_unlock(&o->remap);
		if (rc != 0) {
			return rc;
		}
	}
}

int bfs_lmdb_txn_commit(MDB_txn *txn)
{
	struct bfs_lmdb_open_env *o = mdb_env_get_userctx(mdb_txn_env(txn));
	int rc = mdb_txn_commit(txn);

	if (o != NULL) {
		pthread_rwlock_unlock(&o->remap);
	}
	return rc;
}

void bfs_lmdb_txn_abort(MDB_txn *txn)
{
	struct bfs_lmdb_open_env *o = mdb_env_get_userctx(mdb_txn_env(txn));

	mdb_txn_abort(txn);
	if (o != NULL) {
		pthread_rwlock_unlock(&o->remap);
	}
}

size_t bfs_lmdb_map_size(MDB_env *env)
{
	MDB_envinfo info;

	return mdb_env_info(env, &info) == 0 ? info.me_mapsize : 0;
}

int bfs_lmdb_grow(MDB_env *env, size_t seen, size_t *now)
{
	struct bfs_lmdb_open_env *o = mdb_env_get_userctx(env);
	size_t cur, adopted, want;
	int rc, dead = 0;

	if (o == NULL) {
		return ENOSPC;
	}
	/* Readers of dead processes pin old pages that could be reused. */
	mdb_reader_check(env, &dead);
	pthread_rwlock_wrlock(&o->remap);
	if (o->broken) {
		pthread_rwlock_unlock(&o->remap);
		return EIO;
	}
	cur = bfs_lmdb_map_size(env);
	*now = cur;
	if (cur > seen) {
		pthread_rwlock_unlock(&o->remap);
		return 0; /* another thread grew it meanwhile */
	}
	/* What other processes committed (never below the pages in use). */
	rc = bfs_lmdb_remap(o, 0);
	adopted = bfs_lmdb_map_size(env);
	if (rc == 0 && adopted > cur) {
		*now = adopted;
		pthread_rwlock_unlock(&o->remap);
		return 0;
	}
	want = cur >= o->map_max / 2 ? o->map_max : cur * 2;
	if (rc == 0 && want <= cur) {
		/* At the ceiling; do not keep a smaller map than we had. */
		if (adopted < cur) {
			rc = bfs_lmdb_remap(o, cur);
		}
		pthread_rwlock_unlock(&o->remap);
		return rc == 0 ? ENOSPC : EIO;
	}
	if (rc == 0) {
		rc = bfs_lmdb_remap(o, want);
	}
	*now = bfs_lmdb_map_size(env);
	pthread_rwlock_unlock(&o->remap);
	return rc == 0 ? 0 : EIO;
}
