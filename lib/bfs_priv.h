/*
 * The server's own rights for work in the cache folder.
 *
 * The cache folder is root's, mode 0700, whoever connects (the cached
 * bytes, index and journal belong to the server).  smbd serves a tree as
 * the connected user; the module lends lib/ root's rights (Samba's
 * become_root) for exactly the calls that touch the cache folder by
 * path: opening, creating, linking and removing its files.  Everything
 * else, and S3 traffic above all, runs with the user's, so a flaw in the
 * HTTP, TLS or XML code an S3 endpoint drives is not root's.
 *
 * Elsewhere (bucketfsd, bucketfs-ctl, tests) the process has the rights
 * already and nothing is set: the calls do nothing.  The hooks run only on
 * the thread that set them (smbd's main thread: Samba's credential stack
 * is not thread-safe); a thread lib/ starts inside bfs_priv_enter keeps
 * the rights it was created with (Linux's credentials are per thread).
 */
#ifndef BUCKETFS_BFS_PRIV_H
#define BUCKETFS_BFS_PRIV_H

#include <stdbool.h>

/* How to take and give back the rights; NULL, NULL: nothing to do. */
void bfs_priv_set(void (*enter)(void), void (*leave)(void));

/* Around a call in the cache folder.  Nests; pairs must match. */
void bfs_priv_enter(void);
void bfs_priv_leave(void);

/* How deep this thread is in bfs_priv_enter (tests). */
unsigned bfs_priv_depth(void);

#endif
