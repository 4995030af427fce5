/*
 * The times and DOS attributes a client sets on a file or folder of the
 * share and sees again: kept in the index (bfs_index_set_meta) at once,
 * so every smbd process and a restart see them, and in S3 as the object's
 * user metadata with its next upload (bfs_meta.h).  A change of times or
 * attributes alone uploads nothing: S3 cannot change an object's metadata
 * without copying the whole object, and Windows sets times on every copy.
 */
#ifndef BUCKETFS_BFS_FILEINFO_H
#define BUCKETFS_BFS_FILEINFO_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "bfs_meta.h"

struct bfs_conn;
struct bfs_entry;

/*
 * rel's kept times and attributes into *m (m->have 0: none kept).  0, or
 * the lookup's errno (ENOENT).
 */
int bfs_fileinfo_get(struct bfs_conn *bc, const char *rel,
		     struct bfs_meta *m);

/*
 * Keep the fields of m that which names (BFS_META_*) for rel.  The root
 * of the share keeps nothing (0).  0, ENOENT, or the index's errno.
 */
int bfs_fileinfo_set(struct bfs_conn *bc, const char *rel,
		     const struct bfs_meta *m, uint32_t which)
	__attribute__((warn_unused_result));

/*
 * What an open handle shows: the entry's times and attributes when it was
 * opened, read again from the index once a client of its connection set
 * any (a cheap check on every fstat: no lookup while nobody sets them).
 * A change another smbd process makes shows at the next open.
 */
struct bfs_fh;
const struct bfs_meta *bfs_fh_meta(struct bfs_fh *fh);

/*
 * The times stat shows for an entry: the kept ones, else mtime (the
 * object's LastModified, or fallback where S3 gave none) for both.
 */
void bfs_fileinfo_times(const struct bfs_meta *m, time_t mtime,
			time_t fallback, struct timespec *shown_mtime,
			struct timespec *shown_btime);

/*
 * The DOS attributes (BFS_ATTR_*) shown: the kept ones; else ARCHIVE for
 * a file, as Windows and plain Samba show a new file, and READONLY where
 * the share's file mode gives no write bit.
 */
uint32_t bfs_fileinfo_attrs(const struct bfs_meta *m, bool is_dir,
			    bool mode_writable);

#endif
