/*
 * The volume a share shows its clients (see bfs_volume.h).
 */
#include "bfs_volume.h"

#include "bfs_engine.h"
#include "bfs_share.h"
#include "bfs_writeback.h"

/*
 * The staging folder's file system and what the writeback limit leaves
 * (lib/bfs_writeback does the sums); the limit only counts while an
 * engine holds the uploads.  With nothing measurable, say so with a
 * zero-sized volume rather than invent one.
 */
void bfs_volume_space(struct bfs_conn *bc, uint64_t *total,
		      uint64_t *avail)
{
	uint64_t limit = bc->close_local && bc->engine != NULL ?
				 bc->writeback_limit : 0;
	int ret;

	bfs_follow_config(bc);
	ret = bfs_wb_space(bc->wb, bc->engine ? bfs_engine_pid(bc->engine) : 0,
			   limit, total, avail);
	if (ret != 0) {
		*total = *avail = 0;
	}
}
