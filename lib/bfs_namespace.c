/*
 * Namespace changes through a share (lib/bfs_namespace.h): mkdir,
 * rename, unlink and rmdir, and how each treats files open for writing
 * in this connection and uploads journalled by other processes.
 *
 * Order matters for crash safety: the journal says what is to happen
 * before S3 or the index change (lib/bfs_writeback.h does the writing),
 * and an open file's old name stays in S3 until its new one is up.
 * Every temporary is on a context of its own, freed before return.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <talloc.h>

#include "bfs_engine.h"
#include "bfs_file.h"
#include "bfs_index.h"
#include "bfs_log.h"
#include "bfs_name.h"
#include "bfs_connect.h"
#include "bfs_namespace.h"
#include "bfs_path.h"
#include "bfs_writeback.h"
#include "s3_dirlist.h"

/*
 * Objects an rmdir looks at in S3 to find the folder empty but for
 * deletes the engine has yet to do (a `rm -r` just before); more, and it
 * is not empty yet.
 */
#define BFS_RMDIR_SCAN 10000

/*
 * Where closes do not wait for S3 (`close = local`, an engine running),
 * neither does mkdir: its marker, an empty staging file, is journalled in
 * the engine's name as a close is, and the engine puts it.  ENOTSUP where
 * the caller puts it now.
 */
static int bfs_mkdir_hand_over(struct bfs_conn *bc, const char *marker)
{
	pid_t engine = bc->close_local ? bfs_engine_now(bc) : 0;
	char *name = NULL;
	int fd = -1, ret;

	if (engine == 0) {
		return ENOTSUP;
	}
	ret = bfs_wb_stage_new(bc->wb, bc, &fd, &name);
	if (ret == 0) {
		close(fd);
		ret = bfs_wb_hand_over(bc->wb, marker, name, 0, time(NULL),
				       engine);
		if (ret != 0) {
			bfs_wb_stage_drop(bc->wb, name);
		}
	}
	talloc_free(name);
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot journal the "
			"new directory %s for the engine: %s; putting it now",
			bc->service, marker, strerror(ret));
		return ENOTSUP;
	}
	if (bfs_engine_notify(bc->engine, marker) != 0) {
		/* It died just now: the next one takes the record over. */
		(void)bfs_engine_now(bc);
	}
	return 0;
}

int bfs_mkdir(struct bfs_conn *bc, const char *rel)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_entry e = {0};
	struct s3_status st = {0};
	struct bfs_fh *fh = NULL, *pfh = NULL;
	struct s3_dir *empty;
	char *parent = NULL, *marker, *prefix;
	const char *base = NULL;
	bool handed;
	int ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	ret = bfs_fh_lookup(tmp, bc, rel, &fh);
	if (ret == 0) {
		ret = EEXIST;
	} else if (ret == ENOENT && rel[0] != '\0') {
		bfs_path_split(tmp, rel, &parent, &base);
		ret = parent != NULL ? bfs_fh_lookup(tmp, bc, parent, &pfh) :
				       ENOMEM;
		if (ret == 0 && !pfh->is_dir) {
			ret = ENOTDIR;
		}
	}
	if (ret != 0) {
		talloc_free(tmp);
		return ret;
	}
	marker = bfs_path_dir_prefix(tmp, bc->prefix, rel);
	prefix = bfs_path_dir_prefix(tmp, bc->prefix, parent);
	if (marker == NULL || prefix == NULL) {
		talloc_free(tmp);
		return ENOMEM;
	}
	/*
	 * The name is claimed in the index before S3 is asked: of two
	 * clients making it at once (two smbds of this gateway), one gets
	 * EEXIST, which smbd answers OBJECT_NAME_COLLISION, as a disk does.
	 * A PUT of the marker would succeed for both.  Pending until the
	 * marker is in S3, so a relisting meanwhile keeps the claim.
	 */
	e.name = (char *)base;
	e.is_dir = true;
	bfs_meta_now(&e.meta);
	e.mtime = e.meta.mtime.tv_sec;
	e.flags = BFS_ENT_PENDING;
	ret = bfs_index_put_new(bc->index, prefix, &e);
	if (ret != 0) {
		if (ret != EEXIST) {
			bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot record "
				"the new directory %s in the index: %s",
				bc->service, marker, strerror(ret));
		}
		talloc_free(tmp);
		return ret;
	}
	handed = bfs_mkdir_hand_over(bc, marker) == 0;
	ret = handed ? 0 : bfs_wb_put_empty(bc->wb, marker, &st);
	if (ret != 0) {
		bfs_log_s3(bc, "mkdir (marker object)", marker, &st);
		if (bfs_index_remove(bc->index, prefix, base) != 0) {
			/* Its folder's next listing drops the claim. */
			bfs_forget_listing(bc, prefix);
		}
		talloc_free(tmp);
		return ret;
	}
	if (!handed) {
		bfs_changed(bc, marker);
		e.flags = 0;
	}
	/*
	 * In the parent's listing now (pending until the engine's put), and
	 * known to be empty.
	 */
	empty = s3_dir_new(tmp, marker);
	ret = handed ? 0 : bfs_index_put(bc->index, prefix, &e);
	if (ret == 0 && empty != NULL) {
		uint64_t since;
		int sret;

		/* Not S3's answer but what this host just made: as of now. */
		s3_dir_finish(empty);
		sret = bfs_index_change_seq(bc->index, &since);
		if (sret == 0) {
			sret = bfs_index_store_dir(bc->index, empty,
						   time(NULL), since);
		}
		if (sret != 0) {
			/* Made all the same: its first access lists it. */
			bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: cannot "
				"record the new directory %s as empty in the "
				"index: %s", bc->service, marker,
				strerror(sret));
		}
	}
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot record the "
			"new directory %s in the index: %s", bc->service,
			marker, strerror(ret));
	}
	talloc_free(tmp);
	return ret;
}

/* ---- rename -------------------------------------------------------------- */

/* Open writers of key in this connection follow a rename. */
static void bfs_rekey_open(struct bfs_conn *bc, const char *src_key,
			   const char *dst_rel)
{
	struct bfs_fh *o;

	for (o = bc->open_files; o != NULL; o = o->next) {
		if (strcmp(o->key, src_key) != 0) {
			continue;
		}
		bfs_fh_stream_drop(bc, o); /* its upload has the old name */
		o->rel = talloc_strdup(o, dst_rel);
		o->key = bfs_path_key(o, bc->prefix, dst_rel);
		o->obj.key = o->key;
		o->open_etag = NULL;
		if (o->stage_fd != -1) {
			o->dirty = true; /* the new name needs the bytes */
		}
	}
}

/*
 * Rename a file open for writing here, its bytes staged: the upload
 * follows it to the new name.  The journal says so before anything
 * moves, and the old name's object stays in S3 until the new one is up,
 * so a crash before the close loses neither (logrotate renames an open
 * log this way).
 */
static int bfs_rename_staged(struct bfs_conn *bc, struct bfs_fh *staged,
			     const char *dst_rel)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	char *src_key = talloc_strdup(tmp, staged->key);
	char *dst_key = bfs_path_key(tmp, bc->prefix, dst_rel);
	int ret;

	if (src_key == NULL || dst_key == NULL) {
		talloc_free(tmp);
		return ENOMEM;
	}
	if (staged->stage_name == NULL) {
		talloc_free(tmp);
		return EBUSY;
	}
	ret = bfs_wb_rename_open(bc->wb, src_key, dst_key, staged->stage_name,
				 bfs_fh_size(staged), staged->mtime,
				 staged->open_etag);
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot journal the "
			"rename of the open file %s: %s", bc->service, src_key,
			strerror(ret));
		talloc_free(tmp);
		return ret;
	}
	/* src_key is ours: rekeying replaces the opens' own. */
	bfs_rekey_open(bc, src_key, dst_rel);
	talloc_free(tmp);
	return 0;
}

static int bfs_retarget(struct bfs_conn *bc, const char *src_key,
			const char *dst_key, const char *src_etag);

static int bfs_key_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Whether key is in keys[0..n) (sorted by strcmp). */
static bool bfs_key_in(char **keys, size_t n, const char *key)
{
	return n > 0 && bsearch(&key, keys, n, sizeof(keys[0]),
				bfs_key_cmp) != NULL;
}

/*
 * What S3 holds under a key of a listing: its ETag, or BFS_SRC_NONE.
 * Looked up once per upload a folder rename retargets, up to 'dir rename
 * max' of them: by keys sorted here, not in the listing's order, which is
 * the server's.
 */
struct bfs_listed_key {
	const char *key, *etag;
};

struct bfs_listed {
	char **keys, **etags;
	size_t n;
	struct bfs_listed_key *sorted;	/* NULL until first asked */
};

static int bfs_listed_cmp(const void *a, const void *b)
{
	return strcmp(((const struct bfs_listed_key *)a)->key,
		      ((const struct bfs_listed_key *)b)->key);
}

static const char *bfs_listed_etag(TALLOC_CTX *mem_ctx, struct bfs_listed *l,
				   const char *key)
{
	struct bfs_listed_key want = {.key = key}, *hit;
	size_t i;

	if (l->sorted == NULL && l->n > 0) {
		l->sorted = talloc_array(mem_ctx, struct bfs_listed_key, l->n);
		if (l->sorted == NULL) {
			/* Unknown: its old name stays rather than risk another
			 * file's. */
			return BFS_SRC_NONE;
		}
		for (i = 0; i < l->n; i++) {
			l->sorted[i].key = l->keys[i];
			l->sorted[i].etag = l->etags[i];
		}
		qsort(l->sorted, l->n, sizeof(l->sorted[0]), bfs_listed_cmp);
	}
	hit = l->n > 0 ? bsearch(&want, l->sorted, l->n, sizeof(want),
				 bfs_listed_cmp) : NULL;
	return hit == NULL ? BFS_SRC_NONE : hit->etag;
}

/*
 * Wait for the changes another process makes under the folder (uploads
 * of closes that wait for S3, renames onto it) as a rename of that file
 * would: then S3 lists them.  EBUSY if one does not end in time or failed.
 */
static int bfs_rename_dir_wait(struct bfs_conn *bc, const char *sp,
			       char **keys, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		int ret = bfs_wb_wait_upload(bc->wb, keys[i],
					     2 * bc->cfg.request_timeout_ms);

		if (ret != 0 && ret != ENOENT) {
			bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: cannot "
				"rename %s: the upload of %s %s", bc->service,
				sp, keys[i], ret == EBUSY ?
				"by another client takes too long" :
				"failed (the journal retries it)");
			return EBUSY;
		}
	}
	return 0;
}

/* One object of a folder being renamed, as S3 listed it. */
struct bfs_dir_obj {
	const char *key, *etag;
	uint64_t size;
	time_t mtime;
	bool implied;	/* a folder S3 only implies: no marker to copy */
	bool handed;	/* the engine's to copy */
};

/*
 * The order a folder's objects are handed over in: its files, then its
 * folders' markers, deepest first, the folder's own last: each folder
 * shows under its new name once what it holds does.
 */
static int bfs_dir_obj_cmp(const void *a, const void *b)
{
	const char *ka = ((const struct bfs_dir_obj *)a)->key;
	const char *kb = ((const struct bfs_dir_obj *)b)->key;
	size_t la = strlen(ka), lb = strlen(kb);
	bool ma = la > 0 && ka[la - 1] == '/', mb = lb > 0 && kb[lb - 1] == '/';

	if (ma != mb) {
		return ma ? 1 : -1;
	}
	if (ma && la != lb) {
		return la > lb ? -1 : 1;
	}
	return strcmp(ka, kb);
}

/*
 * The folders under prefix sp, sp included, that have no marker object,
 * neither in S3 (listed) nor on their way (moved: an mkdir the engine has
 * yet to put): S3 only implies them, from the objects they hold (another
 * S3 client made them).  A rename handed to the engine gives each a
 * marker under its new name (bfs_rename_dir): its new name would be
 * missing from its parent's listings until its first copy ended
 * otherwise.  -1 on no memory.
 */
static ssize_t bfs_rename_dir_implied(TALLOC_CTX *tmp, const char *sp,
				      char **keys, size_t n, char **move,
				      size_t n_move, char ***implied)
{
	char **markers = talloc_array(tmp, char *, n + n_move);
	char **folders, **out;
	size_t nm = 0, nf = 0, no = 0, i, plen = strlen(sp);
	const char *p, *q;

	if (markers == NULL) {
		return -1;
	}
	/* Every folder below sp that a key names, sp's own first. */
	for (i = 0; i < n + n_move; i++) {
		const char *k = i < n ? keys[i] : move[i - n];
		size_t len = strlen(k);

		if (len > 0 && k[len - 1] == '/') {
			markers[nm++] = (char *)k;
		}
		for (p = k + plen; (q = strchr(p, '/')) != NULL && q[1] != '\0';
		     p = q + 1) {
			nf++;
		}
	}
	folders = talloc_array(tmp, char *, nf + 1);
	if (folders == NULL) {
		return -1;
	}
	nf = 0;
	folders[nf++] = (char *)sp;
	for (i = 0; i < n + n_move; i++) {
		const char *k = i < n ? keys[i] : move[i - n];

		for (p = k + plen; (q = strchr(p, '/')) != NULL && q[1] != '\0';
		     p = q + 1) {
			folders[nf] = talloc_strndup(tmp, k, q - k + 1);
			if (folders[nf++] == NULL) {
				return -1;
			}
		}
	}
	qsort(markers, nm, sizeof(markers[0]), bfs_key_cmp);
	qsort(folders, nf, sizeof(folders[0]), bfs_key_cmp);
	out = talloc_array(tmp, char *, nf);
	if (out == NULL) {
		return -1;
	}
	for (i = 0; i < nf; i++) {
		if ((i == 0 || strcmp(folders[i], folders[i - 1]) != 0) &&
		    !bfs_key_in(markers, nm, folders[i])) {
			out[no++] = folders[i];
		}
	}
	*implied = out;
	return (ssize_t)no;
}

/*
 * The index learns what the listing said of the objects under the folder
 * (a subfolder never listed has no entries yet): a hand-over moves an
 * entry.  Names the share cannot show are left out; they are renamed in
 * S3 at once.
 */
static void bfs_rename_dir_learn(struct bfs_conn *bc, TALLOC_CTX *tmp,
				 const char *sp, const struct bfs_dir_obj *o,
				 size_t n)
{
	const char **keys = talloc_array(tmp, const char *, n);
	struct bfs_entry *ents = talloc_zero_array(tmp, struct bfs_entry, n);
	size_t m = 0, i;
	int ret;

	if (keys == NULL || ents == NULL) {
		return;
	}
	for (i = 0; i < n; i++) {
		char *dir, *name;
		bool is_dir;

		if (strcmp(o[i].key, sp) == 0 ||
		    bfs_key_entry(tmp, o[i].key, &dir, &name, &is_dir) != 0 ||
		    bfs_name_problem(name) != NULL) {
			continue;
		}
		keys[m] = is_dir ? talloc_asprintf(tmp, "%s%s", dir, name) :
				   o[i].key;
		if (keys[m] == NULL) {
			return;
		}
		ents[m].is_dir = is_dir;
		ents[m].size = is_dir ? 0 : o[i].size;
		ents[m].etag = is_dir ? NULL : (char *)o[i].etag;
		ents[m].mtime = o[i].mtime;
		m++;
	}
	ret = bfs_index_learn(bc->index, keys, ents, m);
	if (ret != 0) {
		/* Those not there yet are renamed in S3 at once. */
		bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: cannot record "
			"the objects of %s in the index: %s", bc->service, sp,
			strerror(ret));
	}
}

/*
 * The objects of a folder renamed where closes do not wait for S3, from
 * prefix sp to dp, handed to the engine together (bfs_wb_hand_over_many):
 * files as a file renamed alone is (bfs_rename_in_engine), markers as a
 * new empty marker and the old one's delete.  Those handed are marked;
 * the others (refused: a change of the name on its way; a marker holding
 * data, which is a file to other S3 clients) are the caller's to rename
 * in S3 at once.  0, or the first error other than a refusal.
 */
static int bfs_rename_dir_hand_over(struct bfs_conn *bc, TALLOC_CTX *tmp,
				    const char *sp, const char *dp,
				    struct bfs_dir_obj *o, size_t n,
				    pid_t engine, size_t *n_handed)
{
	struct bfs_wb_move *mv = talloc_zero_array(tmp, struct bfs_wb_move, n);
	size_t *which = talloc_array(tmp, size_t, n);
	size_t m = 0, i;
	int first = 0;

	if (mv == NULL || which == NULL) {
		return ENOMEM;
	}
	for (i = 0; i < n; i++) {
		size_t len = strlen(o[i].key);
		char *to = talloc_asprintf(tmp, "%s%s", dp,
					   o[i].key + strlen(sp));
		struct bfs_entry e;
		char *dir, *name;

		if (to == NULL) {
			return ENOMEM;
		}
		if (o[i].key[len - 1] == '/') {
			if (o[i].size != 0) {
				continue;
			}
		} else if (bfs_key_split(tmp, o[i].key, &dir, &name) != 0 ||
			   bfs_index_lookup(bc->index, tmp, dir, name,
					    &e) != 0) {
			continue; /* not indexed: renamed in S3 at once */
		} else {
			mv[m].mtime = e.mtime;
		}
		mv[m].src = o[i].key;
		mv[m].src_etag = o[i].etag;
		mv[m].dst = to;
		mv[m].size = o[i].size;
		which[m++] = i;
	}
	bfs_wb_hand_over_many(bc->wb, mv, m, engine);
	for (i = 0; i < m; i++) {
		if (mv[i].ret == 0) {
			o[which[i]].handed = true;
			(*n_handed)++;
			if (bfs_engine_notify(bc->engine, mv[i].dst) != 0) {
				(void)bfs_engine_now(bc); /* the next finds it */
			}
		} else if (mv[i].ret != ESTALE && first == 0) {
			bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot "
				"journal the rename of %s for the engine: %s",
				bc->service, mv[i].src, strerror(mv[i].ret));
			first = mv[i].ret;
		}
	}
	return first;
}

static int bfs_copy_rename(struct bfs_conn *bc, const char *src_key,
			   const char *dst_key, uint64_t size,
			   struct s3_status *st);

/*
 * A folder: every object under it copied and deleted, one by one, then
 * its entry moved between the parents' listings.  Its files whose uploads
 * wait in the engine (closed here, not yet in S3) go along as a file
 * renamed alone does: their uploads are retargeted.  Where closes do not
 * wait for S3 (`close = local`, an engine running), the objects S3 has
 * are handed to the engine, as a file renamed alone is: the rename
 * answers once the journal and the index have them, before any copy (a
 * checkpoint folder's gigabytes).  A folder S3 only implies gets a marker
 * under its new name (bfs_rename_dir_implied).
 * Whatever can refuse the rename is found before anything moves: more
 * than 'bucketfs:dir rename max' objects (ENOTSUP), a file another
 * process still writes or an upload that does not end (EBUSY).  A failure
 * midway leaves the folder split, as S3 renames object by object; the
 * listings of both are forgotten, so clients see where each file is.
 */
static int bfs_rename_dir(struct bfs_conn *bc, const char *src_rel,
			  const char *dst_rel)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	char *sp = bfs_path_dir_prefix(tmp, bc->prefix, src_rel);
	char *dp = bfs_path_dir_prefix(tmp, bc->prefix, dst_rel);
	pid_t engine = bfs_engine_now(bc), handed_to = 0;
	struct bfs_wb_dir_changes c;
	struct bfs_listed l = {0};
	struct bfs_dir_obj *objs = NULL;
	struct s3_status st = {0};
	char **moved = NULL, **implied = NULL;
	ssize_t n_implied = 0;
	uint64_t *sizes = NULL;
	time_t *mtimes = NULL;
	size_t n = 0, n_objs = 0, n_moved = 0, n_handed = 0, i = 0;
	char *sparent = NULL, *dparent = NULL, *spp = NULL, *dpp = NULL;
	const char *sbase = NULL, *dbase = NULL;
	bool relist = false;
	int ret;

	if (sp == NULL || dp == NULL) {
		talloc_free(tmp);
		return ENOMEM;
	}
	ret = bfs_wb_dir_changes(bc->wb, tmp, sp, engine, &c);
	if (ret == EBUSY) {
		bfs_log(BFS_LOG_NOTICE, "bucketfs: share %s: cannot rename %s: "
			"another client is still writing %s", bc->service,
			src_rel, c.busy);
	} else if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot rename %s: "
			"the journal cannot be read: %s", bc->service, src_rel,
			strerror(ret));
	}
	if (ret == 0) {
		ret = bfs_rename_dir_wait(bc, sp, c.wait, c.n_wait);
	}
	if (ret == 0) {
		ret = bfs_wb_list_all(bc->wb, tmp, sp, bc->dir_rename_max,
				      &l.keys, &sizes, &l.etags, &mtimes, &l.n,
				      &st);
		if (ret != 0) {
			bfs_log_s3(bc, "listing for a rename of", sp, &st);
		}
	}
	if (ret == 0 && l.n + c.n_move > bc->dir_rename_max) {
		bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: cannot rename "
			"%s: it holds more than %u objects ('bucketfs:dir "
			"rename max'); S3 renames object by object",
			bc->service, src_rel, bc->dir_rename_max);
		ret = ENOTSUP;
	}
	if (ret != 0) {
		talloc_free(tmp);
		return ret;
	}
	if (bc->close_local && engine != 0) {
		handed_to = engine;
	}
	/* From here on, things move. */
	moved = talloc_array(tmp, char *, c.n_move + 1);
	if (moved == NULL) {
		talloc_free(tmp);
		return ENOMEM;
	}
	for (i = 0; i < c.n_move; i++) {
		const char *key = c.move[i];
		char *to = talloc_asprintf(tmp, "%s%s", dp, key + strlen(sp));

		if (to != NULL &&
		    bfs_retarget(bc, key, to, bfs_listed_etag(tmp, &l, key)) == 0) {
			moved[n_moved++] = c.move[i];
			continue;
		}
		/*
		 * Its upload ended (or failed) since we looked: S3 has it,
		 * or the journal keeps it; copied as the others once up.
		 */
		relist = true;
		ret = bfs_rename_dir_wait(bc, sp, c.move + i, 1);
		if (ret != 0) {
			break;
		}
	}
	qsort(moved, n_moved, sizeof(moved[0]), bfs_key_cmp);
	if (ret == 0 && relist) {
		l.sorted = NULL;
		ret = bfs_wb_list_all(bc->wb, tmp, sp, SIZE_MAX - 1, &l.keys,
				      &sizes, &l.etags, &mtimes, &l.n, &st);
		if (ret != 0) {
			bfs_log_s3(bc, "listing for a rename of", sp, &st);
		}
	}
	n = ret == 0 ? l.n : 0;
	if (ret == 0 && handed_to != 0) {
		n_implied = bfs_rename_dir_implied(tmp, sp, l.keys, l.n,
						   c.move, c.n_move, &implied);
		if (n_implied < 0) {
			ret = ENOMEM;
			n = 0;
			n_implied = 0;
		}
	}
	objs = talloc_array(tmp, struct bfs_dir_obj, n + n_implied + 1);
	if (objs == NULL) {
		n = 0;
		n_implied = 0;
		ret = ENOMEM;
	}
	/* What is to be copied: S3's objects, but for those below. */
	for (i = 0, n_objs = 0; i < n; i++) {
		const char *key = l.keys[i];

		if (bfs_wb_delete_pending(bc->wb, key)) {
			continue; /* deleted here; the engine has yet to */
		}
		if (bfs_key_in(moved, n_moved, key)) {
			continue; /* a newer version goes up under dp */
		}
		if (bfs_key_in(c.skip, c.n_skip, key)) {
			continue; /* renamed out of the folder: goes once up */
		}
		objs[n_objs++] = (struct bfs_dir_obj){
			.key = key, .etag = l.etags[i],
			.size = sizes[i], .mtime = mtimes[i],
		};
	}
	/*
	 * Folders S3 only implies: a marker under the new name, and a
	 * delete of the old one (of nothing: S3 answers that as done) that
	 * keeps the old folder out of the index meanwhile.
	 */
	for (i = 0; i < (size_t)n_implied; i++) {
		objs[n_objs++] = (struct bfs_dir_obj){
			.key = implied[i], .mtime = time(NULL),
			.implied = true,
		};
	}
	if (ret == 0 && handed_to != 0 && n_objs > 0) {
		qsort(objs, n_objs, sizeof(objs[0]), bfs_dir_obj_cmp);
		bfs_rename_dir_learn(bc, tmp, sp, objs, n_objs);
		ret = bfs_rename_dir_hand_over(bc, tmp, sp, dp, objs, n_objs,
					       handed_to, &n_handed);
	}
	for (i = 0; ret == 0 && i < n_objs; i++) {
		const char *key = objs[i].key;
		char *to;

		if (objs[i].handed) {
			continue;
		}
		to = talloc_asprintf(tmp, "%s%s", dp, key + strlen(sp));
		if (to == NULL) {
			ret = ENOMEM;
			break;
		}
		if (objs[i].implied) {
			/* Nothing to copy: its new name's marker, now. */
			ret = bfs_wb_put_empty(bc->wb, to, &st);
			if (ret != 0) {
				bfs_log_s3(bc, "rename (marker) of", key, &st);
			}
			continue;
		}
		ret = bfs_copy_rename(bc, key, to, objs[i].size, &st);
		if (ret != 0 && ret != EBUSY) {
			bfs_log_s3(bc, "rename (copy) of", key, &st);
		}
	}
	if (n_handed > 0) {
		bfs_log(BFS_LOG_INFO, "bucketfs: share %s: rename of %s to %s: "
			"%zu of its objects handed to the engine (pid %d)",
			bc->service, sp, dp, n_handed, (int)handed_to);
	}
	bfs_path_split(tmp, src_rel, &sparent, &sbase);
	bfs_path_split(tmp, dst_rel, &dparent, &dbase);
	if (sparent != NULL && dparent != NULL) {
		spp = bfs_path_dir_prefix(tmp, bc->prefix, sparent);
		dpp = bfs_path_dir_prefix(tmp, bc->prefix, dparent);
	}
	if (ret == 0) {
		/*
		 * The directory's own entry moves between the parents.
		 * (Handed over with its marker: moved already, ENOENT.)
		 */
		int iret = spp != NULL && dpp != NULL ?
			bfs_index_rename(bc->index, spp, sbase, dpp, dbase) :
			ENOMEM;

		if (iret != 0 && iret != ENOENT) {
			/*
			 * S3 has it under the new name: the parents' next
			 * access lists them from there.  (ENOENT: it was
			 * not indexed, there was nothing to move.)
			 */
			bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: cannot "
				"move %s to %s in the index: %s", bc->service,
				src_rel, dst_rel, strerror(iret));
			bfs_forget_listing(bc, spp);
			bfs_forget_listing(bc, dpp);
		}
	} else if (n_moved > 0 || i > 0 || n_handed > 0) {
		/*
		 * Split midway: both folders, and their parents (the new
		 * folder's entry comes with its marker, last), as S3 and the
		 * journal have them.
		 */
		if (spp != NULL && dpp != NULL) {
			bfs_forget_listing(bc, spp);
			bfs_forget_listing(bc, dpp);
		}
	}
	if (ret == 0 || n_moved > 0 || i > 0 || n_handed > 0) {
		bfs_forget_listing(bc, sp);
		bfs_forget_listing(bc, dp);
		bfs_changed(bc, sp);
		bfs_changed(bc, dp);
	}
	talloc_free(tmp);
	return ret;
}

/* How long a wait for another process's upload of size bytes may take. */
static unsigned bfs_upload_wait_ms(const struct bfs_conn *bc, uint64_t size)
{
	uint64_t parts = size / bc->upload.part_size + 1;
	uint64_t rounds = (parts + bc->upload.parallel - 1) /
			  bc->upload.parallel;
	uint64_t timeout_ms = bc->cfg.request_timeout_ms * (rounds + 1);

	return timeout_ms < UINT_MAX ? (unsigned)timeout_ms : UINT_MAX;
}

/*
 * src is pending in another smbd: a close there is uploading it (under
 * the old name), or a client there still has it open for writing.  Wait
 * for the upload, as long as one could take without failing, then look
 * src up again (now with its ETag, *src on mem_ctx).
 */
static int bfs_wait_other_upload(TALLOC_CTX *mem_ctx, struct bfs_conn *bc,
				 const char *src_rel, struct bfs_fh **src)
{
	struct bfs_fh *again = NULL;
	int ret;

	ret = bfs_wb_wait_upload(bc->wb, (*src)->key,
				 bfs_upload_wait_ms(bc, (*src)->size));
	if (ret == 0 || ret == ENOENT) {
		/*
		 * Done, or no record at all: a client still writes it
		 * elsewhere, or its upload ended between our lookup and the
		 * wait (the engine's often do).  The index says which.
		 */
		int lret = bfs_fh_lookup(mem_ctx, bc, src_rel, &again);

		if (lret != 0) {
			return lret;
		}
		*src = again;
		if (again->etag != NULL) {
			return 0;
		}
		bfs_log(BFS_LOG_NOTICE, "bucketfs: share %s: cannot rename %s: "
			"another client has it open for writing%s",
			bc->service, src_rel, ret == 0 ? " again" : "");
		return EBUSY;
	}
	bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: cannot rename %s: its "
		"upload by another client %s", bc->service, src_rel,
		ret == EBUSY ? "takes too long" :
		"failed (the journal retries it)");
	return EBUSY;
}

/* A rename of a file whose upload waits in the engine (bfs_wb_retarget). */
static int bfs_retarget(struct bfs_conn *bc, const char *src_key,
			const char *dst_key, const char *src_etag)
{
	int ret;

	if (dst_key == NULL) {
		return ENOMEM;
	}
	ret = bfs_wb_retarget_from(bc->wb, src_key, dst_key,
				   bfs_engine_pid(bc->engine), src_etag);
	if (ret == 0) {
		(void)bfs_engine_notify(bc->engine, dst_key);
		bfs_log(BFS_LOG_INFO, "bucketfs: share %s: %s renamed to %s "
			"before its upload began: it goes up under the new "
			"name", bc->service, src_key, dst_key);
	}
	return ret;
}

/*
 * A rename of a file S3 has, where closes do not wait for S3 (`close =
 * local`, an engine running): handed to the engine, which copies it in
 * S3 (a checkpoint's gigabytes: seconds to minutes) while the index
 * shows the new name at once.  ESTALE when it cannot be handed over
 * (then it is renamed here, waiting for S3).
 */
static int bfs_rename_in_engine(struct bfs_conn *bc, struct bfs_fh *src,
				const char *dst_rel)
{
	pid_t engine = bc->close_local ? bfs_engine_now(bc) : 0;
	char *dst_key, *from = NULL;
	struct bfs_fh *o;
	int ret;

	if (engine == 0 || src->etag == NULL) {
		return ESTALE;
	}
	dst_key = bfs_path_key(NULL, bc->prefix, dst_rel);
	if (dst_key == NULL) {
		return ENOMEM;
	}
	ret = bfs_wb_rename_hand_over(bc->wb, dst_key, src->key, src->etag,
				      dst_key, src->size, src->mtime, engine,
				      &from);
	if (ret == 0) {
		if (bfs_engine_notify(bc->engine, dst_key) != 0) {
			(void)bfs_engine_now(bc); /* the next one finds it */
		}
		bfs_log(BFS_LOG_INFO, "bucketfs: share %s: rename of %s to %s "
			"handed to the engine (pid %d)", bc->service, src->key,
			dst_key, (int)engine);
		bfs_changed(bc, src->key);
		bfs_changed(bc, dst_key);
		bfs_rekey_open(bc, src->key, dst_rel);
		/* Writers here with nothing staged yet read the old object
		 * (their first write's fill) until the copy is done. */
		for (o = bc->open_files; from != NULL && o != NULL;
		     o = o->next) {
			char *k;

			if (strcmp(o->key, dst_key) != 0 || o->stage_fd != -1 ||
			    o->etag == NULL || strcmp(o->etag, src->etag) != 0 ||
			    (k = talloc_strdup(o, from)) == NULL) {
				continue; /* not the renamed file, or staged */
			}
			o->obj.key = k;
			bfs_cache_make_id(bc->cfg.bucket, k, o->etag,
					  bc->block_size, &o->obj.id);
		}
	} else if (ret != ESTALE) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot journal the "
			"rename of %s for the engine: %s", bc->service,
			src->key, strerror(ret));
	}
	talloc_free(dst_key);
	return ret;
}

/*
 * A rename the engine could not be handed (a swap through a temporary
 * name, a rename back before the copy) is made here, in S3 at once: first
 * the engine's copy onto either name must be done, or S3 has not the
 * bytes to copy, or the engine's copy would land after ours.  0, or
 * EBUSY if it does not end in the time a copy of size may take.
 */
static int bfs_wait_handed_copy(struct bfs_conn *bc, const char *key,
				uint64_t size)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	uint64_t rounds = size / bc->upload.part_size / bc->upload.parallel + 2;
	uint64_t timeout_ms = bc->cfg.request_timeout_ms * rounds;
	struct bfs_jrec rec;
	bool handed = tmp != NULL &&
		      bfs_journal_get(bc->journal, tmp, key, &rec) == 0 &&
		      rec.op == BFS_J_COPY && rec.index_gone;
	int ret;

	talloc_free(tmp);
	if (!handed) {
		return 0;
	}
	ret = bfs_wb_wait_upload(bc->wb, key, timeout_ms < UINT_MAX ?
				 (unsigned)timeout_ms : UINT_MAX);
	if (ret == 0 || ret == ENOENT) {
		return 0;
	}
	bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: cannot rename: the "
		"engine's copy to %s %s", bc->service, key,
		ret == EBUSY ? "takes too long" : "failed (it is retried)");
	return EBUSY;
}

/*
 * A rename by copy (bfs_wb_rename) of src to dst_key.  While another
 * process uploads dst_key (the engine, an earlier close of it), the copy
 * waits for that upload to end: the two must not race in S3.  A few
 * rounds, in case another close of dst_key starts uploading meanwhile.
 */
static int bfs_copy_rename(struct bfs_conn *bc, const char *src_key,
			   const char *dst_key, uint64_t size,
			   struct s3_status *st)
{
	int ret = bfs_wb_rename(bc->wb, src_key, dst_key, size, st);
	unsigned round;

	for (round = 0; ret == EINPROGRESS && round < 3; round++) {
		TALLOC_CTX *tmp = talloc_new(NULL);
		struct bfs_jrec rec;
		uint64_t dst_size = 0;
		int wret;

		if (tmp != NULL &&
		    bfs_journal_get(bc->journal, tmp, dst_key, &rec) == 0) {
			dst_size = rec.size;
		}
		talloc_free(tmp);
		/* EIO: not running any more (ended, failed, or replaced). */
		wret = bfs_wb_wait_upload(bc->wb, dst_key,
					  bfs_upload_wait_ms(bc, dst_size));
		if (wret == EBUSY) {
			break;
		}
		ret = bfs_wb_rename(bc->wb, src_key, dst_key, size, st);
	}
	if (ret == EINPROGRESS) {
		bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: cannot rename "
			"%s over %s: the upload of %s by another client takes "
			"too long", bc->service, src_key, dst_key, dst_key);
		ret = EBUSY;
	}
	return ret;
}

/* Where dst_rel may go: 0, or why not (before anything changes). */
static int bfs_rename_check(TALLOC_CTX *mem_ctx, struct bfs_conn *bc,
			    const struct bfs_fh *src, const char *dst_rel)
{
	struct bfs_fh *dst = NULL, *pfh = NULL;
	char *parent = NULL;
	const char *base;
	int ret = bfs_fh_lookup(mem_ctx, bc, dst_rel, &dst);

	if (ret == ENOENT && dst_rel[0] != '\0') {
		ret = 0;
	}
	if (ret == 0 && (src->rel[0] == '\0' || dst_rel[0] == '\0')) {
		ret = EBUSY; /* the share root */
	}
	if (ret == 0 && dst != NULL && dst->is_dir) {
		ret = src->is_dir ? EEXIST : EISDIR;
	}
	if (ret == 0 && dst == NULL) {
		/* The destination's parent must be a directory. */
		bfs_path_split(mem_ctx, dst_rel, &parent, &base);
		ret = parent != NULL ?
			      bfs_fh_lookup(mem_ctx, bc, parent, &pfh) : ENOMEM;
		if (ret == 0 && !pfh->is_dir) {
			ret = ENOTDIR;
		}
	}
	return ret;
}

int bfs_rename(struct bfs_conn *bc, struct bfs_fh *src, const char *dst_rel)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	const char *src_rel = src->rel;
	struct bfs_fh *staged;
	struct s3_status st = {0};
	char *dst_key;
	int ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	ret = bfs_rename_check(tmp, bc, src, dst_rel);
	if (ret != 0 || strcmp(src_rel, dst_rel) == 0) {
		talloc_free(tmp);
		return ret;
	}
	if (src->is_dir) {
		ret = bfs_rename_dir(bc, src_rel, dst_rel);
	} else if ((staged = bfs_staged_twin(bc, src->key, NULL)) != NULL) {
		ret = bfs_rename_staged(bc, staged, dst_rel);
	} else if (src->etag == NULL && bfs_engine_now(bc) != 0 &&
		   bfs_retarget(bc, src->key,
				bfs_path_key(tmp, bc->prefix, dst_rel),
				NULL) == 0) {
		/* Its upload, not begun, goes to the new name: no copy. */
		bfs_rekey_open(bc, src->key, dst_rel);
	} else if (src->etag == NULL &&
		   (ret = bfs_wait_other_upload(tmp, bc, src_rel, &src)) != 0) {
		/* logged there */
	} else if ((ret = bfs_rename_in_engine(bc, src, dst_rel)) != ESTALE) {
		/* Handed over (the engine copies it), or failed: logged. */
	} else if ((dst_key = bfs_path_key(tmp, bc->prefix, dst_rel)) == NULL) {
		ret = ENOMEM;
	} else if ((ret = bfs_wait_handed_copy(bc, src->key, src->size)) != 0 ||
		   (ret = bfs_wait_handed_copy(bc, dst_key, src->size)) != 0) {
		/* logged there */
	} else {
		ret = bfs_copy_rename(bc, src->key, dst_key, src->size, &st);
		if (ret == EBUSY) {
			/* logged there */
		} else if (ret != 0) {
			bfs_log_s3(bc, "rename of", src->key, &st);
		} else {
			bfs_changed(bc, src->key);
			bfs_changed(bc, dst_key);
			bfs_rekey_open(bc, src->key, dst_rel);
		}
	}
	talloc_free(tmp);
	/* The name was there: a change that fails is not ENOENT. */
	return ret == ENOENT ? EIO : ret;
}

/* ---- delete -------------------------------------------------------------- */

/*
 * Delete key (what names it in log lines).  Where closes do not wait for
 * S3 (`close = local`, an engine running), neither does a delete: it is
 * journalled in the engine's name and gone from the index at once, and
 * the engine deletes it in S3.  Else it is deleted in S3 now.
 */
static int bfs_delete_key(struct bfs_conn *bc, const char *key,
			  const char *what)
{
	struct s3_status st = {0};
	pid_t engine = bc->close_local ? bfs_engine_now(bc) : 0;
	int ret;

	if (engine != 0) {
		ret = bfs_wb_delete_hand_over(bc->wb, key, engine);
		if (ret != 0) {
			bfs_log(BFS_LOG_ERR, "bucketfs: share %s: %s %s: cannot "
				"journal it for the engine: %s", bc->service,
				what, key, strerror(ret));
			return ret;
		}
		if (bfs_engine_notify(bc->engine, key) != 0) {
			/* It died just now: the next one takes the record over. */
			(void)bfs_engine_now(bc);
		}
		bfs_log(BFS_LOG_INFO, "bucketfs: share %s: %s %s handed to the "
			"engine (pid %d)", bc->service, what, key, (int)engine);
		bfs_changed(bc, key);
		return 0;
	}
	ret = bfs_wb_delete(bc->wb, key, &st);
	if (ret != 0) {
		bfs_log_s3(bc, what, key, &st);
		return ret;
	}
	bfs_changed(bc, key);
	return 0;
}

/*
 * Keys under prefix S3 lists that are not deleted here already (their
 * delete waiting in the engine), other than prefix itself: 0 if none,
 * ENOTEMPTY, or why S3 could not say.
 */
static int bfs_dir_empty_in_s3(struct bfs_conn *bc, TALLOC_CTX *tmp,
			       const char *prefix)
{
	/* Most folders tell with their first keys: one request. */
	static const size_t scans[] = {2, BFS_RMDIR_SCAN};
	struct s3_status st = {0};
	char **keys = NULL;
	size_t n = 0, i, s;
	int ret;

	for (s = 0; s < sizeof(scans) / sizeof(scans[0]); s++) {
		ret = bfs_wb_list_all(bc->wb, tmp, prefix, scans[s], &keys,
				      NULL, NULL, NULL, &n, &st);
		if (ret != 0) {
			bfs_log_s3(bc, "rmdir (listing)", prefix, &st);
			return ret;
		}
		for (i = 0; i < n && i < scans[s]; i++) {
			if (strcmp(keys[i], prefix) != 0 &&
			    !bfs_wb_delete_pending(bc->wb, keys[i])) {
				return ENOTEMPTY;
			}
		}
		if (n <= scans[s]) {
			return 0; /* all of it seen */
		}
	}
	return ENOTEMPTY; /* too many deletes pending to tell: not yet */
}

/*
 * Whether an rmdir may go by the index alone, without asking S3 for the
 * folder's first keys on smbd's loop: where closes and deletes do not
 * wait for S3 (`close = local`, an engine running) and the folder has a
 * listing (within its TTL, or being revalidated).  The index is then what
 * a listing shows the client, whose Explorer or rm -r has just emptied
 * it; an object put in S3 by another client since the listing keeps the
 * folder (its marker goes, its objects stay and list it again), as a file
 * made there after the rmdir would: nothing is lost.
 */
static bool bfs_rmdir_trusts_index(struct bfs_conn *bc, const char *prefix)
{
	time_t listed;

	return bc->close_local && bfs_engine_now(bc) != 0 &&
	       bfs_index_dir_listed(bc->index, prefix, &listed) == 0;
}

/* An empty folder: in the index (names being written count) and, unless
 * bfs_rmdir_trusts_index, in S3. */
static int bfs_rmdir(struct bfs_conn *bc, const char *rel)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	char *prefix = bfs_path_dir_prefix(tmp, bc->prefix, rel);
	struct bfs_entry *ents = NULL;
	size_t n = 0;
	int ret;

	ret = bfs_dir_fresh(bc, rel);
	if (ret == 0) {
		ret = bfs_index_children(bc->index, tmp, prefix, NULL, 1,
					 &ents, &n);
	}
	if (ret == 0 && n > 0) {
		ret = ENOTEMPTY;
	}
	if (ret == 0 && !bfs_rmdir_trusts_index(bc, prefix)) {
		ret = bfs_dir_empty_in_s3(bc, tmp, prefix);
	}
	if (ret == 0) {
		ret = bfs_delete_key(bc, prefix, "rmdir (marker object)");
		if (ret == 0) {
			bfs_forget_listing(bc, prefix);
		}
	}
	talloc_free(tmp);
	return ret;
}

int bfs_unlink(struct bfs_conn *bc, const char *rel, bool dir)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_fh *fh = NULL, *o;
	int ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	ret = bfs_fh_lookup(tmp, bc, rel, &fh);
	if (ret == 0 && rel[0] == '\0') {
		ret = EBUSY;
	}
	if (ret == 0 && dir) {
		ret = fh->is_dir ? bfs_rmdir(bc, rel) : ENOTDIR;
	} else if (ret == 0 && fh->is_dir) {
		ret = EISDIR;
	} else if (ret == 0) {
		/* Open writers here (delete on close): upload nothing. */
		for (o = bc->open_files; o != NULL; o = o->next) {
			if (strcmp(o->key, fh->key) == 0) {
				bfs_fh_stream_drop(bc, o);
				o->deleted = true;
				o->dirty = false;
			}
		}
		ret = bfs_delete_key(bc, fh->key, "delete of");
	}
	talloc_free(tmp);
	return ret;
}
