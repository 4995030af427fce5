/*
 * Namespace changes through a share: mkdir, rename and delete, with the
 * rules that keep files open for writing (the staging table,
 * lib/bfs_file.h) and uploads still journalled right.
 *
 * S3 has no folders and no rename: a folder is a marker object "dir/",
 * a rename is CopyObject and DeleteObject of every object under it
 * (bounded by 'bucketfs:dir rename max').  A file renamed while open and
 * written, or closed and still waiting in the engine, is not copied: its
 * journalled upload goes to the new name instead.
 *
 * Paths are share-relative (lib/bfs_path.h); the module resolves smbd's
 * names and turns the errno into the VFS's answer.  Nothing here knows
 * Samba.
 */
#ifndef BUCKETFS_BFS_NAMESPACE_H
#define BUCKETFS_BFS_NAMESPACE_H

#include <stdbool.h>

#include "bfs_share.h"

/*
 * A folder rel: its marker object in S3, then its entry in the parent's
 * listing, known to be empty.  EEXIST if rel is there; ENOENT, ENOTDIR
 * for its parent; S3's or the index's errno.
 */
int bfs_mkdir(struct bfs_conn *bc, const char *rel)
	__attribute__((warn_unused_result));

/*
 * Rename src (bfs_fh_lookup's) to dst_rel, over a file there.  The share
 * root is EBUSY; a folder over a folder EEXIST, a file over one EISDIR;
 * ENOENT, ENOTDIR for dst's parent.  A folder of more than 'bucketfs:dir
 * rename max' objects is ENOTSUP.  A file being written or uploaded by
 * another smbd is EBUSY.  A failed change is never ENOENT (the name was
 * there): EIO instead.
 */
int bfs_rename(struct bfs_conn *bc, struct bfs_fh *src, const char *dst_rel)
	__attribute__((warn_unused_result));

/*
 * Delete rel: a file (dir false; a folder is EISDIR), whose open writers
 * here then upload nothing, or an empty folder (dir true; a file is
 * ENOTDIR, a folder with names ENOTEMPTY).  The share root is EBUSY.
 */
int bfs_unlink(struct bfs_conn *bc, const char *rel, bool dir)
	__attribute__((warn_unused_result));

#endif
