/*
 * The volume a share shows its clients (disk free, statvfs): the room
 * they may write, from the staging folder's file system and what the
 * engine's writeback limit leaves.
 */
#ifndef BUCKETFS_BFS_VOLUME_H
#define BUCKETFS_BFS_VOLUME_H

#include <stdint.h>

struct bfs_conn;

/*
 * Bytes in all (*total) and free to write (*avail); both 0 when nothing
 * can be measured.  Follows a reload of the writeback limit first.
 */
void bfs_volume_space(struct bfs_conn *bc, uint64_t *total,
		      uint64_t *avail);

#endif
