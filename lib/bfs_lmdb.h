/*
 * Opening the LMDB environments bucketfs keeps in its cache folder.
 *
 * Every smbd child opens the environment itself (after fork: LMDB handles
 * must not cross a fork).  Readers never block writers; writers serialise
 * across processes on LMDB's robust lock, so a process killed mid-write
 * leaves the last committed state.  Commits are not fsync'ed (MDB_NOSYNC):
 * what is in here is a cache of S3 and can be rebuilt; a killed process
 * loses nothing that was committed.  A power loss may lose the latest
 * commits, and LMDB documents that a system crash can then damage the
 * file: the index and the cache are then set aside and rebuilt
 * (bfs_lmdb_set_aside); the journal syncs each commit itself.
 */
#ifndef BUCKETFS_BFS_LMDB_H
#define BUCKETFS_BFS_LMDB_H

#include <stddef.h>
#include <stdint.h>
#include <lmdb.h>

/*
 * Create dir (0700) if needed and open an environment in it with
 * room for max_dbs named databases.  Returns 0 or an errno value; *why
 * gets a static description.
 *
 * LMDB forbids opening one environment twice in a process, and one smbd
 * process may connect several shares on the same cache folder: opens of the
 * same folder in one process share the handle, counted; close with
 * bfs_lmdb_close().
 */
int bfs_lmdb_open(const char *dir, size_t map_size, unsigned max_dbs,
		  MDB_env **penv, const char **why);

/*
 * The same for an environment whose map may grow from map_size up to
 * map_max (bfs_lmdb_grow).  The map is address space only: data.mdb is
 * written page by page and is as large as the pages ever used.  A larger
 * size another process grew the map to (recorded in the file) is taken
 * at once.  Opens sharing a handle share the first open's sizes.  Its
 * transactions must go through bfs_lmdb_txn_begin/_commit/_abort.
 */
int bfs_lmdb_open_growing(const char *dir, size_t map_size, size_t map_max,
			  unsigned max_dbs, MDB_env **penv, const char **why)
	__attribute__((warn_unused_result));
void bfs_lmdb_close(MDB_env *env);

/*
 * Transactions of an environment that may grow.  mdb_env_set_mapsize
 * unmaps the file, so no transaction of this process may be open on the
 * environment meanwhile (bucketfsd uses the index from two threads): a
 * transaction holds a per-environment lock shared, a remap holds it
 * exclusively.  The lock prefers a waiting remap over new transactions,
 * so readers that never pause cannot starve it; a thread's holds are
 * counted, so a thread that begins a transaction while it has one open
 * on the same environment does not wait behind the remap for itself.
 * A begin that meets MDB_MAP_RESIZED (another process grew the map and
 * wrote past the end of ours) takes the new size and begins again.
 * Every transaction begun here ends with bfs_lmdb_txn_commit or _abort,
 * in the thread that began it.  Environments opened with bfs_lmdb_open
 * take no lock.
 */
int bfs_lmdb_txn_begin(MDB_env *env, unsigned flags, MDB_txn **txn)
	__attribute__((warn_unused_result));
int bfs_lmdb_txn_commit(MDB_txn *txn) __attribute__((warn_unused_result));
void bfs_lmdb_txn_abort(MDB_txn *txn);

/*
 * This process's map of env, and the bytes of data.mdb up to the last
 * page in use (pages freed since are reused, never given back).
 */
void bfs_lmdb_sizes(MDB_env *env, size_t *map, size_t *file);

/*
 * After MDB_MAP_FULL, with the transaction ended: make room for a retry.
 * seen is the map's size the failed transaction had; if it is larger now
 * (another thread grew it), that is all.  Else a larger size another
 * process recorded is taken, or the map doubles, up to map_max.
 * 0: try again; ENOSPC: the map is at its ceiling; EDEADLK: this thread
 * still has a transaction open on env.  A failed remap leaves LMDB
 * without a map: logged, and every later transaction fails with EIO.
 */
int bfs_lmdb_grow(MDB_env *env, size_t seen)
	__attribute__((warn_unused_result));

/*
 * A damaged environment (an open answering EIO: garbled, truncated): move
 * dir/data.mdb aside as data.mdb.damaged-<time> and drop its lock file,
 * so the next open starts empty.  For what can be rebuilt (the index is
 * listed again, the cache fetched again), never the journal.
 */
int bfs_lmdb_set_aside(const char *dir);

/* mkdir -p with mode 0700 for each missing component. */
int bfs_mkdirs(const char *path);

/*
 * Whether root may trust the folder path (absolute, existing) as sshd's
 * StrictModes does: every component, as given and resolved, root's (or
 * this process's owner's), and none writable by group or others but a
 * sticky folder of root's on the way (/tmp).  0, or EPERM (or the
 * lookup's errno) with why naming the component and what to change.
 * bfs_lmdb_open checks every folder it opens, so the index, cache,
 * journal and their parents are covered for the module, the engine and
 * bucketfs-ctl alike.
 */
int bfs_dir_trusted(const char *path, char *why, size_t why_len)
	__attribute__((warn_unused_result));

/*
 * Delete the record under cur and move to the one after it, where LMDB
 * leaves the cursor; at the end MDB_NOTFOUND or EINVAL, which
 * bfs_lmdb_walk_end() takes as the walk's normal end.
 */
int bfs_lmdb_del_next(MDB_cursor *cur, MDB_val *k, MDB_val *v);
/* The result of a cursor walk: its end is success. */
int bfs_lmdb_walk_end(int rc);

/*
 * Every record of dbi for which keep() says no: counted in *dropped and,
 * with repair, deleted (an fsck's sweep for entries nothing refers to).
 */
int bfs_lmdb_sweep(MDB_txn *txn, MDB_dbi dbi, int repair,
		   int (*keep)(void *priv, const MDB_val *k, const MDB_val *v),
		   void *priv, uint64_t *dropped);

/* Errors from LMDB (MDB_* codes) as errno values for VFS callers. */
int bfs_lmdb_errno(int rc);

#endif
