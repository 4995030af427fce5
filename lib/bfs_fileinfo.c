/*
 * The times and DOS attributes a client sets and sees (bfs_fileinfo.h).
 */
#include <errno.h>
#include <string.h>

#include "bfs_fileinfo.h"
#include "bfs_index.h"
#include "bfs_log.h"
#include "bfs_path.h"
#include "bfs_share.h"

int bfs_fileinfo_get(struct bfs_conn *bc, const char *rel,
		     struct bfs_meta *m)
{
	TALLOC_CTX *frame = talloc_new(NULL);
	struct bfs_entry e;
	int ret;

	m->have = 0;
	if (frame == NULL) {
		return ENOMEM;
	}
	ret = bfs_lookup_entry(frame, bc, rel, &e);
	if (ret == 0) {
		*m = e.meta;
	}
	talloc_free(frame);
	return ret;
}

int bfs_fileinfo_set(struct bfs_conn *bc, const char *rel,
		     const struct bfs_meta *m, uint32_t which)
{
	TALLOC_CTX *frame;
	const char *base;
	char *parent, *prefix;
	int ret;

	if (rel[0] == '\0' || (which & m->have) == 0) {
		return 0; /* the root is no object: nothing to keep */
	}
	frame = talloc_new(NULL);
	if (frame == NULL) {
		return ENOMEM;
	}
	bfs_path_split(frame, rel, &parent, &base);
	prefix = parent ? bfs_path_dir_prefix(frame, bc->prefix, parent) : NULL;
	ret = prefix != NULL ?
		bfs_index_set_meta(bc->index, prefix, base, m, which) : ENOMEM;
	if (ret == 0) {
		bc->meta_gen++; /* open handles read theirs again */
	}
	if (ret != 0 && ret != ENOENT) {
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot keep the times or "
			"attributes of %s: %s", rel, strerror(ret));
	}
	talloc_free(frame);
	return ret;
}

const struct bfs_meta *bfs_fh_meta(struct bfs_fh *fh)
{
	if (fh->meta_gen != fh->bc->meta_gen) {
		struct bfs_meta m;

		if (bfs_fileinfo_get(fh->bc, fh->rel, &m) == 0) {
			fh->meta = m;
		}
		fh->meta_gen = fh->bc->meta_gen;
	}
	return &fh->meta;
}

void bfs_fileinfo_times(const struct bfs_meta *m, time_t mtime,
			time_t fallback, struct timespec *shown_mtime,
			struct timespec *shown_btime)
{
	struct timespec t = {.tv_sec = mtime >= 0 ? mtime : fallback};

	*shown_mtime = (m->have & BFS_META_MTIME) ? m->mtime : t;
	*shown_btime = (m->have & BFS_META_BTIME) ? m->btime : *shown_mtime;
}

uint32_t bfs_fileinfo_attrs(const struct bfs_meta *m, bool is_dir,
			    bool mode_writable)
{
	uint32_t a;

	if (m->have & BFS_META_ATTRS) {
		return m->attrs & BFS_ATTR_KEPT;
	}
	a = is_dir ? 0 : BFS_ATTR_ARCHIVE;
	if (!mode_writable) {
		a |= BFS_ATTR_READONLY;
	}
	return a;
}
