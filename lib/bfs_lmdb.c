#include "bfs_lmdb.h"

#include <errno.h>
#include <stdbool.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Environments open in this process, by folder. */
struct bfs_lmdb_open_env {
	struct bfs_lmdb_open_env *next;
	dev_t dev;
	ino_t ino;
	pid_t pid; /* a forked child must not use its parent's handle */
	unsigned refs;
	MDB_env *env;
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

int bfs_lmdb_open(const char *dir, size_t map_size, unsigned max_dbs,
		  MDB_env **penv, const char **why)
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
		env = NULL;
		free(o);
		return EIO;
	}
	if (rc != 0) {
		*why = mdb_strerror(rc);
		if (env != NULL) {
			mdb_env_close(env);
		}
		free(o);
		return bfs_lmdb_errno(rc);
	}
	/* Free the reader slots of processes that died holding one. */
	mdb_reader_check(env, &dead);
	*o = (struct bfs_lmdb_open_env){
		.next = bfs_open_envs, .dev = st.st_dev, .ino = st.st_ino,
		.pid = getpid(), .refs = 1, .env = env,
	};
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
