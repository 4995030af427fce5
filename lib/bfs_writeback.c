/*
 * Writeback of changes made through the share (see bfs_writeback.h).
 */
#include "bfs_writeback.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/param.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "bfs_lmdb.h"
#include "bfs_log.h"
#include "bfs_priv.h"

/* CopyObject's limit; above it S3 wants UploadPartCopy. */
#define BFS_COPY_MAX (5ULL << 30)
#define BFS_FILL_CHUNK (8u << 20)

struct bfs_wb {
	struct tevent_context *ev;
	struct s3_client *s3;
	struct bfs_index *idx;
	struct bfs_journal *j;
	char *staging_dir;
	struct bfs_upload_params params;
	unsigned seq;
};

int bfs_wb_new(TALLOC_CTX *mem_ctx, struct tevent_context *ev,
	       struct s3_client *s3, struct bfs_index *idx,
	       struct bfs_journal *j, const char *staging_dir,
	       const struct bfs_upload_params *params, struct bfs_wb **out)
{
	struct bfs_wb *wb = talloc_zero(mem_ctx, struct bfs_wb);
	int ret;

	if (wb == NULL) {
		return ENOMEM;
	}
	*wb = (struct bfs_wb){
		.ev = ev, .s3 = s3, .idx = idx, .j = j,
		.params = *params,
	};
	if (wb->params.copy_threshold == 0 ||
	    wb->params.copy_threshold > BFS_COPY_MAX) {
		wb->params.copy_threshold = BFS_COPY_MAX;
	}
	wb->staging_dir = talloc_strdup(wb, staging_dir);
	if (wb->staging_dir == NULL) {
		talloc_free(wb);
		return ENOMEM;
	}
	bfs_priv_enter();
	ret = bfs_mkdirs(staging_dir);
	bfs_priv_leave();
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot create the staging "
			"folder %s: %s", staging_dir, strerror(ret));
		talloc_free(wb);
		return ret;
	}
	*out = wb;
	return 0;
}

/* ---- staging files ------------------------------------------------------------ */

static char *bfs_stage_path(TALLOC_CTX *mem_ctx, struct bfs_wb *wb,
			    const char *name)
{
	return talloc_asprintf(mem_ctx, "%s/%s", wb->staging_dir, name);
}

int bfs_wb_stage_new(struct bfs_wb *wb, TALLOC_CTX *mem_ctx, int *fd,
		     char **name)
{
	struct timespec ts;
	char *n, *path;

	clock_gettime(CLOCK_REALTIME, &ts);
	n = talloc_asprintf(mem_ctx, "w-%d-%lld-%ld-%u", (int)getpid(),
			    (long long)ts.tv_sec, ts.tv_nsec, wb->seq++);
	path = n != NULL ? bfs_stage_path(n, wb, n) : NULL;
	if (path == NULL) {
		talloc_free(n);
		return ENOMEM;
	}
	bfs_priv_enter();
	*fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	bfs_priv_leave();
	if (*fd == -1) {
		int ret = errno;
		talloc_free(n);
		return ret;
	}
	talloc_free(path);
	*name = n;
	return 0;
}

/* A second name of staging file name (a hard link): 0 with *out. */
static int bfs_wb_stage_link(struct bfs_wb *wb, TALLOC_CTX *mem_ctx,
			     const char *name, char **out)
{
	struct timespec ts;
	char *n, *from, *to;
	int ret = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	n = talloc_asprintf(mem_ctx, "l-%d-%lld-%ld-%u", (int)getpid(),
			    (long long)ts.tv_sec, ts.tv_nsec, wb->seq++);
	from = n != NULL ? bfs_stage_path(n, wb, name) : NULL;
	to = from != NULL ? bfs_stage_path(n, wb, n) : NULL;
	if (to == NULL) {
		talloc_free(n);
		return ENOMEM;
	}
	bfs_priv_enter();
	ret = link(from, to) != 0 ? errno : 0;
	bfs_priv_leave();
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot link staging file %s "
			"for a rename: %s", from, strerror(ret));
		talloc_free(n);
		return ret;
	}
	talloc_free(from);
	talloc_free(to);
	*out = n;
	return 0;
}

void bfs_wb_stage_drop(struct bfs_wb *wb, const char *name)
{
	char *path = bfs_stage_path(NULL, wb, name);

	if (path != NULL) {
		bfs_priv_enter();
		unlink(path);
		bfs_priv_leave();
	}
	talloc_free(path);
}

/*
 * Write len bytes of key's staging file fd at off: 0, or an errno with a
 * log line.  A short write sets no errno; to a regular file it means the
 * file system filled up before all of it fit.
 */
static int bfs_wb_stage_write(int fd, const void *buf, size_t len,
			      uint64_t off, const char *key)
{
	ssize_t n = pwrite(fd, buf, len, (off_t)off);
	int ret;

	if (n == (ssize_t)len) {
		return 0;
	}
	if (n == -1) {
		ret = errno;
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot write the staging file "
			"of %s: %s", key, strerror(ret));
		return ret;
	}
	bfs_log(BFS_LOG_ERR, "bucketfs: the staging file of %s took %zd of "
		"%zu bytes at %llu: the staging folder's disk is full", key,
		n, len, (unsigned long long)off);
	return ENOSPC;
}

/*
 * The object's bytes into a staging file, BFS_FILL_CHUNK at a time
 * through the reader (its cache, else range GETs on ev).  Each chunk is
 * written on the loop: a local write of a few MiB, against the S3 round
 * trip the loop no longer waits for.
 */
struct bfs_wb_fill_state {
	struct tevent_context *ev;
	struct bfs_reader *r;
	struct bfs_object obj;	/* key and etag on the state */
	int fd;
	void *buf;
	uint64_t off;
	size_t len;		/* of the chunk being read */
	struct s3_status st;
};

static void bfs_wb_fill_next(struct tevent_req *req);
static void bfs_wb_fill_read(struct tevent_req *subreq);

struct tevent_req *bfs_wb_stage_fill_send(TALLOC_CTX *mem_ctx,
					  struct tevent_context *ev,
					  struct bfs_reader *r,
					  const struct bfs_object *obj, int fd)
{
	struct tevent_req *req;
	struct bfs_wb_fill_state *s;

	req = tevent_req_create(mem_ctx, &s, struct bfs_wb_fill_state);
	if (req == NULL) {
		return NULL;
	}
	s->ev = ev;
	s->r = r;
	s->obj = *obj;
	s->obj.key = talloc_strdup(s, obj->key);
	s->obj.etag = obj->etag != NULL ? talloc_strdup(s, obj->etag) : NULL;
	s->fd = fd;
	s->buf = talloc_size(s, BFS_FILL_CHUNK);
	if (s->obj.key == NULL || (obj->etag != NULL && s->obj.etag == NULL) ||
	    s->buf == NULL) {
		tevent_req_oom(req);
		return tevent_req_post(req, ev);
	}
	bfs_wb_fill_next(req);
	if (!tevent_req_is_in_progress(req)) {
		return tevent_req_post(req, ev);
	}
	return req;
}

static void bfs_wb_fill_next(struct tevent_req *req)
{
	struct bfs_wb_fill_state *s = tevent_req_data(req,
						      struct bfs_wb_fill_state);
	struct tevent_req *subreq;

	if (s->off >= s->obj.size) {
		tevent_req_done(req);
		return;
	}
	s->len = s->obj.size - s->off < BFS_FILL_CHUNK ?
			 (size_t)(s->obj.size - s->off) : BFS_FILL_CHUNK;
	subreq = bfs_read_send(s, s->ev, s->r, &s->obj, s->off, s->len,
			       s->buf);
	if (tevent_req_nomem(subreq, req)) {
		return;
	}
	tevent_req_set_callback(subreq, bfs_wb_fill_read, req);
}

static void bfs_wb_fill_read(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_wb_fill_state *s = tevent_req_data(req,
						      struct bfs_wb_fill_state);
	size_t got = 0;
	int ret = bfs_read_recv(subreq, &got, &s->st);

	TALLOC_FREE(subreq);
	if (ret == 0 && got != s->len) {
		ret = EIO; /* shorter than indexed: changed under us */
	}
	if (ret == 0) {
		ret = bfs_wb_stage_write(s->fd, s->buf, s->len, s->off,
					 s->obj.key);
	}
	if (tevent_req_error(req, ret)) {
		return;
	}
	s->off += s->len;
	bfs_wb_fill_next(req);
}

int bfs_wb_stage_fill_recv(struct tevent_req *req, struct s3_status *st)
{
	struct bfs_wb_fill_state *s = tevent_req_data(req,
						      struct bfs_wb_fill_state);
	int ret = s3_req_errno(req);

	if (ret != 0) {
		if (st != NULL) {
			*st = s->st;
		}
	}
	tevent_req_received(req);
	return ret;
}

int bfs_wb_stage_fill(struct bfs_wb *wb, struct bfs_reader *r,
		      const struct bfs_object *obj, int fd,
		      struct s3_status *st)
{
	struct tevent_req *req = bfs_wb_stage_fill_send(NULL, wb->ev, r, obj,
							 fd);
	int ret = s3_wait_for(req, wb->ev);

	if (ret == 0) {
		ret = bfs_wb_stage_fill_recv(req, st);
	}
	talloc_free(req);
	return ret;
}

/* The first len bytes of file from into file to, in the kernel. */
static int bfs_copy_bytes(int from, int to, uint64_t len)
{
	uint64_t off = 0;

	while (off < len) {
		loff_t in = (loff_t)off, out = (loff_t)off;
		ssize_t n = copy_file_range(from, &in, to, &out,
					    (size_t)MIN(len - off, 1u << 30), 0);

		if (n <= 0) {
			return n == 0 ? EIO : errno;
		}
		off += (uint64_t)n;
	}
	return 0;
}

int bfs_wb_stage_copy(struct bfs_wb *wb, TALLOC_CTX *mem_ctx, int from,
		      uint64_t len, char **name, int *fd_out)
{
	int fd = -1;
	int ret = bfs_wb_stage_new(wb, mem_ctx, &fd, name);

	if (ret == 0) {
		ret = bfs_copy_bytes(from, fd, len);
	}
	if (ret == 0 && fd_out != NULL) {
		*fd_out = fd;
		return 0;
	}
	if (fd != -1) {
		close(fd);
	}
	if (ret != 0 && fd != -1) {
		bfs_wb_stage_drop(wb, *name);
	}
	return ret;
}

int bfs_wb_stage_from_journal(struct bfs_wb *wb, const char *key, int fd,
			      uint64_t *size)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec rec;
	uint64_t len = 0;
	struct stat sb;
	char *path;
	int src = -1, ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	ret = bfs_journal_get(wb->j, tmp, key, &rec);
	if (ret == 0 && rec.op != BFS_J_PUT) {
		ret = ENOENT;
	}
	path = ret == 0 ? bfs_stage_path(tmp, wb, rec.staging) : NULL;
	if (ret == 0 && path == NULL) {
		ret = ENOMEM;
	}
	if (ret == 0) {
		bfs_priv_enter();
		src = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		bfs_priv_leave();
		ret = src == -1 || fstat(src, &sb) != 0 ? errno : 0;
	}
	if (ret == 0) {
		len = rec.open ? (uint64_t)sb.st_size : rec.size;
		if ((uint64_t)sb.st_size < len) {
			ret = EIO; /* it lost bytes: recovery keeps it too */
		}
	}
	if (ret == 0) {
		ret = bfs_copy_bytes(src, fd, len);
	}
	if (src != -1) {
		close(src);
	}
	if (ret == 0) {
		*size = len;
	} else if (ret != ENOENT) {
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot stage %s from its journalled "
			"upload: %s", key, strerror(ret));
	}
	talloc_free(tmp);
	return ret;
}

/* ---- uploads --------------------------------------------------------------------- */

/* Whether rec, a PUT record, is ours to replace: its process is us or gone. */
static bool bfs_wb_put_is_ours(const struct bfs_jrec *rec)
{
	return rec->pid == getpid() || rec->last_error != 0 ||
	       !bfs_jrec_owner_alive(rec);
}


struct bfs_wb_started {
	struct bfs_wb *wb;
	struct bfs_jrec *rec;
};

/*
 * Journal the multipart upload id, so a crash leaves no orphaned parts.
 * Should that fail, a recovery uploads again all the same; the parts
 * are left for the bucket's lifecycle rule, and the log says so.
 */
static void bfs_wb_upload_started(void *private_data, const char *upload_id)
{
	struct bfs_wb_started *s = private_data;
	int ret;

	s->rec->upload_id = (char *)upload_id;
	ret = bfs_journal_update(s->wb->j, s->rec->key, s->rec->pid,
				 s->rec->staging, s->rec);
	s->rec->upload_id = NULL;
	if (ret == ESTALE) {
		return; /* a newer close of the key replaced us: its record */
	}
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot journal multipart upload %s "
			"of %s: %s (a crash now would leave its parts)",
			upload_id, s->rec->key, strerror(ret));
	}
}

/*
 * Set key's index entry: uploaded (etag) or pending (etag NULL).  A
 * folder's marker ("a/b/", an mkdir handed to the engine) sets the
 * folder's entry in its parent.  *ino (if not NULL): the entry's inode
 * number.
 */
static int bfs_wb_index_file_ino(struct bfs_wb *wb, const char *key,
				 uint64_t size, time_t mtime,
				 const char *etag, uint64_t *ino)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_entry e = {0};
	char *dir, *name;
	int ret = bfs_key_entry(tmp, key, &dir, &name, &e.is_dir);

	if (ret == 0) {
		e.name = name;
		e.size = e.is_dir ? 0 : size;
		e.mtime = mtime;
		e.etag = e.is_dir ? NULL : (char *)etag;
		e.flags = etag == NULL ? BFS_ENT_PENDING : 0;
		ret = bfs_index_put(wb->idx, dir, &e);
	}
	if (ret == 0 && ino != NULL) {
		*ino = e.ino;
	}
	talloc_free(tmp);
	return ret;
}

static int bfs_wb_index_file(struct bfs_wb *wb, const char *key, uint64_t size,
			     time_t mtime, const char *etag)
{
	return bfs_wb_index_file_ino(wb, key, size, mtime, etag, NULL);
}

/*
 * Forget when dir was listed: its next access lists it from S3, which
 * then says what the index could not be told.  Should even that fail,
 * the index shows dir as it has it until the listing's TTL runs out.
 */
static void bfs_wb_forget_dir(struct bfs_wb *wb, const char *dir)
{
	int ret = bfs_index_invalidate_dir(wb->idx, dir);

	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot mark folder '%s' for "
			"listing again in the index: %s; it may show stale "
			"entries until its listing expires", dir,
			strerror(ret));
	}
}

static void bfs_wb_forget_parent(struct bfs_wb *wb, const char *key);

/*
 * Drop what the index says of key's directory (a marker's: its parent's):
 * the next access lists it.
 */
static void bfs_wb_index_forget(struct bfs_wb *wb, const char *key)
{
	bfs_wb_forget_parent(wb, key);
}

/*
 * Our upload of key went back out of S3 (the key was renamed or deleted
 * away while it ran) after our index update had shown it: take that entry
 * out again, if it is still ours (version tag).  Forgetting the folder's
 * listing is not enough: the index notes our update as a change made
 * here, which the next listing leaves alone, so the name stayed (an empty
 * ghost of a file renamed while its first, empty close was uploading).
 */
static void bfs_wb_index_drop(struct bfs_wb *wb, const char *key,
			      const char *tag)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_entry e;
	char *dir, *name;
	bool marker;

	if (tmp == NULL || bfs_key_entry(tmp, key, &dir, &name, &marker) != 0) {
		talloc_free(tmp);
		return;
	}
	/* A folder's entry has no ETag: the one its marker's upload set. */
	if (bfs_index_lookup(wb->idx, tmp, dir, name, &e) == 0 &&
	    !(e.flags & BFS_ENT_PENDING) &&
	    (marker ? e.is_dir : (e.etag != NULL && tag != NULL &&
				  strcmp(e.etag, tag) == 0)) &&
	    bfs_index_remove(wb->idx, dir, name) != 0) {
		bfs_wb_forget_dir(wb, dir); /* the next listing says */
	}
	talloc_free(tmp);
}

static int bfs_wb_delete_key(struct bfs_wb *wb, const char *key,
			     struct s3_status *st);

/*
 * Whether S3's object (a HEAD's answer) was made before when (this host's
 * clock, decimal seconds: BFS_SRC_BEFORE).  The clocks are not compared,
 * only durations: the object's age by S3's clock (its Date less its
 * Last-Modified) against the time since the rename by ours, with two
 * seconds for their one-second resolution.  Without both headers: no.
 */
static bool bfs_wb_made_before(const struct s3_object_info *info,
			       const char *when)
{
	char *end = NULL;
	long long at = strtoll(when, &end, 10);
	time_t now = time(NULL);

	if (end == when || *end != '\0' || info->mtime <= 0 ||
	    info->server_now <= 0 || info->server_now < info->mtime ||
	    (long long)now < at) {
		/* Also a clock stepped back since: no age to go by. */
		return false;
	}
	return (long long)(info->server_now - info->mtime) >=
	       (long long)now - at + 2;
}

/*
 * Delete key, the name a file had before it was renamed while open, now
 * that the file is safe elsewhere: only while S3 still holds version etag
 * of it (NULL: any; BFS_SRC_NONE: none, nothing to do; BFS_SRC_BEFORE:
 * one made before the rename), and nobody
 * journals a change of key.  Another client
 * may have made a new file of that name meanwhile (logrotate's next log);
 * that one stays.  A failure leaves the old object behind, with a log
 * line: nothing is lost, a stale copy stays.
 */
static void bfs_wb_delete_old_name(struct bfs_wb *wb, const char *key,
				   const char *etag)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct s3_object_info info = {0};
	struct s3_status st = {0};
	struct tevent_req *req;
	struct bfs_jrec other;
	int ret;

	if (tmp == NULL || (etag != NULL && strcmp(etag, BFS_SRC_NONE) == 0)) {
		/* S3 had nothing there: any object now is another file. */
		talloc_free(tmp);
		return;
	}
	if (bfs_journal_get(wb->j, tmp, key, &other) == 0) {
		talloc_free(tmp);
		return; /* a new change of key is on its way */
	}
	req = s3_head_object_send(tmp, wb->ev, wb->s3, key);
	ret = s3_wait_for(req, wb->ev);
	if (ret == 0) {
		ret = s3_head_object_recv(req, tmp, &info, &st);
	}
	if (ret == 0 && etag != NULL && etag[0] == BFS_SRC_BEFORE) {
		if (!bfs_wb_made_before(&info, etag + 1)) {
			bfs_log(BFS_LOG_NOTICE, "bucketfs: the old name %s of a "
				"renamed file holds an object that may be newer "
				"than the rename: it stays in S3", key);
			talloc_free(tmp);
			return;
		}
	} else if (ret == 0 && etag != NULL &&
	    (info.etag == NULL || strcmp(info.etag, etag) != 0)) {
		talloc_free(tmp);
		return; /* another version: someone else's file now */
	}
	if (ret == 0) {
		ret = bfs_wb_delete_key(wb, key, &st);
	}
	if (ret != 0 && ret != ENOENT) {
		bfs_log(BFS_LOG_ERR, "bucketfs: the old name %s of a renamed file "
			"could not be deleted (%s, HTTP %ld); it stays in S3",
			key, strerror(ret), st.http_status);
	}
	talloc_free(tmp);
}

/*
 * Whether old, a PUT record another one replaced, waited for an engine
 * without having started: nobody will upload it, and its staging file
 * (whose bytes the replacing open copied) is left to whoever replaced it.
 */
static bool bfs_wb_put_queued(const struct bfs_jrec *old)
{
	return !old->started && !old->open;
}

/*
 * An upload finished after its key was deleted or renamed away (by a
 * client, while the engine uploaded): take the object back out, if S3
 * still holds the version we made.
 */
static void bfs_wb_undo_upload(struct bfs_wb *wb, const char *key,
			       const char *etag)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct s3_object_info info = {0};
	struct s3_status st = {0};
	struct tevent_req *req;
	int ret;

	if (tmp == NULL || etag == NULL) {
		talloc_free(tmp);
		return;
	}
	req = s3_head_object_send(tmp, wb->ev, wb->s3, key);
	ret = s3_wait_for(req, wb->ev);
	if (ret == 0) {
		ret = s3_head_object_recv(req, tmp, &info, &st);
	}
	if (ret == 0 && info.etag != NULL && strcmp(info.etag, etag) == 0) {
		ret = bfs_wb_delete_key(wb, key, &st);
		if (ret != 0 && ret != ENOENT) {
			bfs_log(BFS_LOG_ERR, "bucketfs: %s was deleted while "
				"its upload ran, and the uploaded object could "
				"not be removed (%s)", key, strerror(ret));
		}
	}
	talloc_free(tmp);
}

/*
 * An upload of key (ETag tag) whose record went meanwhile: if no newer
 * upload of key is journalled, the key was deleted or renamed away, and
 * what we made is taken back out.  true if so.
 */
static bool bfs_wb_undo_if_gone(struct bfs_wb *wb, const char *key,
				const char *tag)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec cur;
	bool gone = tmp != NULL &&
		    (bfs_journal_get(wb->j, tmp, key, &cur) != 0 ||
		     cur.op != BFS_J_PUT);

	talloc_free(tmp);
	if (gone) {
		bfs_wb_undo_upload(wb, key, tag);
	}
	return gone;
}

/*
 * A newer close (or a rename over key: write tmp, rename over final) took
 * key between our check that the record was ours and our index update,
 * which then covered its pending entry with our older version: readers
 * would see the old bytes until the newer upload ends (the 16-client soak
 * caught a 1-byte checkpoint read back as its 7 MiB predecessor).  Put
 * the newer record's pending entry back.
 */
static void bfs_wb_index_newer(struct bfs_wb *wb, const char *key)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec cur;

	if (tmp != NULL && bfs_journal_get(wb->j, tmp, key, &cur) == 0 &&
	    cur.op == BFS_J_PUT &&
	    bfs_wb_index_file(wb, key, cur.size, cur.mtime, NULL) != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot show the newer version "
			"of %s in the index: readers see the older one until "
			"its upload ends", key);
	}
	talloc_free(tmp);
}

/* Whether rec is still key's record (no newer close replaced it). */
static bool bfs_wb_still_ours(struct bfs_wb *wb, const struct bfs_jrec *rec)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec cur;
	bool ours = tmp != NULL &&
		    bfs_journal_get(wb->j, tmp, rec->key, &cur) == 0 &&
		    cur.op == BFS_J_PUT && cur.pid == rec->pid &&
		    strcmp(cur.staging, rec->staging) == 0;

	talloc_free(tmp);
	return ours;
}

/*
 * The user metadata an upload of key carries (bfs_meta.h): the times and
 * attributes the index has for it, and mtime (unless -1) where no client
 * set one, so other S3 tools see the file's time and not the upload's.
 * Without memory the object goes up without them (the index keeps them).
 */
static size_t bfs_wb_meta_headers(struct bfs_wb *wb, TALLOC_CTX *mem_ctx,
				  const char *key, time_t mtime,
				  struct s3_kv *kv)
{
	struct bfs_entry e = {0};
	char *dir, *name;
	size_t n = 0;

	if (bfs_key_split(mem_ctx, key, &dir, &name) != 0 ||
	    bfs_index_lookup(wb->idx, mem_ctx, dir, name, &e) != 0) {
		e.meta.have = 0;
	}
	if (!(e.meta.have & BFS_META_MTIME) && mtime != -1) {
		e.meta.mtime = (struct timespec){.tv_sec = mtime};
		e.meta.have |= BFS_META_MTIME;
	}
	if (bfs_meta_to_headers(mem_ctx, &e.meta, kv, &n) != 0) {
		return 0;
	}
	return n;
}

/*
 * While the engine uploads a closed file, a client may rename it (write
 * tmp, rename over final, with the rename coming after the upload began:
 * a slow client, or a checkpoint renamed a second after its close) or
 * close a newer version of it.  The rest of those bytes would go up under
 * a name that no longer holds them, and the file's new record would wait
 * behind them for nothing.  So the record is looked at every quarter
 * second and a multipart upload is stopped (bfs_upload_cancel) once it is
 * not ours any more; the new record uploads from its own link to the
 * staging file (bfs_wb_retarget).
 */
#define BFS_WB_WATCH_USEC 250000

struct bfs_wb_watch {
	struct bfs_wb *wb;
	const struct bfs_jrec *rec;
	struct tevent_req *upload;
	bool stopped;		/* the upload was cancelled */
};

static void bfs_wb_watch_arm(struct bfs_wb_watch *w);

static void bfs_wb_watch_tick(struct tevent_context *ev,
			      struct tevent_timer *te, struct timeval now,
			      void *private_data)
{
	struct bfs_wb_watch *w = private_data;

	(void)ev, (void)te, (void)now;
	if (bfs_wb_still_ours(w->wb, w->rec)) {
		bfs_wb_watch_arm(w);
		return;
	}
	/* Too late to stop (a PutObject, a completion): it runs out. */
	w->stopped = bfs_upload_cancel(w->upload);
}

static void bfs_wb_watch_arm(struct bfs_wb_watch *w)
{
	/* Without memory the upload runs out unwatched, as it would. */
	(void)tevent_add_timer(w->wb->ev, w,
			       tevent_timeval_current_ofs(0, BFS_WB_WATCH_USEC),
			       bfs_wb_watch_tick, w);
}

/*
 * Start the upload of a journalled record's staging file (fd) on ev
 * through s3; bfs_wb_upload_end finishes it.  started lives as long as
 * the upload (it hears the multipart upload's id).
 */
static struct tevent_req *bfs_wb_upload_begin(struct bfs_wb *wb,
					      struct tevent_context *ev,
					      struct s3_client *s3,
					      struct bfs_jrec *rec, int fd,
					      const struct bfs_upload_resume *resume,
					      struct bfs_wb_started *started,
					      TALLOC_CTX *mem_ctx)
{
	struct bfs_upload_params p = wb->params;
	struct s3_kv meta[BFS_META_HEADERS_MAX];

	*started = (struct bfs_wb_started){.wb = wb, .rec = rec};
	p.started = bfs_wb_upload_started;
	p.private_data = started;
	p.resume = resume;
	p.meta = meta; /* copied by bfs_upload_send */
	p.n_meta = bfs_wb_meta_headers(wb, mem_ctx, rec->key, rec->mtime, meta);
	return bfs_upload_send(mem_ctx, ev, s3, rec->key, fd, rec->size, &p);
}

static int bfs_wb_upload_end(struct bfs_wb *wb, struct bfs_jrec *rec,
			     struct tevent_req *req, bool drop_stage,
			     bool stopped, TALLOC_CTX *mem_ctx, char **etag,
			     struct s3_status *st);

/* Run an upload of a journalled record to the end. */
static int bfs_wb_run_upload(struct bfs_wb *wb, struct bfs_jrec *rec, int fd,
			     bool drop_stage,
			     const struct bfs_upload_resume *resume,
			     TALLOC_CTX *mem_ctx, char **etag,
			     struct s3_status *st)
{
	struct bfs_wb_started started;
	struct bfs_wb_watch *watch = NULL;
	struct tevent_req *req;
	bool stopped;
	int ret;

	req = bfs_wb_upload_begin(wb, wb->ev, wb->s3, rec, fd, resume,
				  &started, mem_ctx);
	if (req != NULL && drop_stage) {
		/* The engine's uploads of closed files (see bfs_wb_watch). */
		watch = talloc_zero(mem_ctx, struct bfs_wb_watch);
		if (watch != NULL) {
			*watch = (struct bfs_wb_watch){
				.wb = wb, .rec = rec, .upload = req,
			};
			bfs_wb_watch_arm(watch);
		}
	}
	ret = s3_wait_for(req, wb->ev);
	stopped = watch != NULL && watch->stopped;
	TALLOC_FREE(watch); /* and its timer */
	if (ret != 0) {
		/* Not finished: the record stays as it was, to be retried. */
		talloc_free(req);
		return ret;
	}
	return bfs_wb_upload_end(wb, rec, req, drop_stage, stopped, mem_ctx,
				 etag, st);
}

static void bfs_wb_index_as_journalled(struct bfs_wb *wb, const char *key);

/*
 * Our record of key is out of the journal, and the index may show key
 * pending without an ETag all the same: a retarget's rename in the index
 * (tmp's pending entry moved over final) that came after we set final's
 * ETag and before we took the record out.  Its own look
 * (bfs_wb_unpend_if_done) still saw our record, so nothing would end that
 * entry: opens read S3 unversioned.  An entry of our upload's size and
 * time that a rename moved over ours (another inode number than left_ino,
 * the one we settled) is our version: it gets our ETag.  Ours made
 * pending again in place is a newer close's (same size, same second), and
 * stays so.  A close of key journalled meanwhile gets its pending entry
 * back.  Only a retargeted upload (src): no other change of the index
 * moves an entry over one the engine set.
 */
static void bfs_wb_settle_again(struct bfs_wb *wb, const struct bfs_jrec *rec,
				const char *tag, uint64_t left_ino)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	char *dir, *name;
	bool marker;
	int ret;

	if (tmp == NULL || tag == NULL || rec->src == NULL ||
	    bfs_key_entry(tmp, rec->key, &dir, &name, &marker) != 0 ||
	    marker) {
		talloc_free(tmp);
		return;
	}
	ret = bfs_index_settle_unnamed(wb->idx, dir, name, rec->size,
				       rec->mtime, left_ino, tag);
	if (ret == 0) {
		bfs_log(BFS_LOG_NOTICE, "bucketfs: %s was renamed in the index "
			"as its upload ended: its ETag is set again", rec->key);
		bfs_wb_index_as_journalled(wb, rec->key);
	} else if (ret != ESTALE && ret != ENOENT) {
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot check the index entry "
			"of %s after its upload: %s", rec->key, strerror(ret));
	}
	talloc_free(tmp);
}

/*
 * The end of an upload req (done) of rec: the index gets its ETag and the
 * journal loses the record, or keeps it with the error.  Frees req.
 */
static int bfs_wb_upload_end(struct bfs_wb *wb, struct bfs_jrec *rec,
			     struct tevent_req *req, bool drop_stage,
			     bool stopped, TALLOC_CTX *mem_ctx, char **etag,
			     struct s3_status *st)
{
	char *tag = NULL;
	uint64_t left_ino = 0; /* the inode number of the entry we settle */
	int ret;

	ret = bfs_upload_recv(req, mem_ctx, &tag, st);
	talloc_free(req);
	if (ret == ECANCELED && stopped) {
		/* S3 made no object of it; the newer record goes up. */
		bfs_log(BFS_LOG_INFO, "bucketfs: the upload of %s stopped: the "
			"file was renamed or replaced while it ran", rec->key);
		bfs_wb_stage_drop(wb, rec->staging);
		return 0;
	}
	if (ret != 0) {
		int jret;

		rec->last_error = ret;
		jret = bfs_journal_update(wb->j, rec->key, rec->pid,
					  rec->staging, rec);
		if (jret != 0 && jret != ESTALE) {
			/* The record from before the upload stays: retried. */
			bfs_log(BFS_LOG_ERR, "bucketfs: cannot note the failed "
				"upload of %s in the journal", rec->key);
		}
		return ret;
	}
	if (!bfs_wb_still_ours(wb, rec)) {
		/*
		 * A newer close of the key replaced our record while we
		 * uploaded: its bytes win, its entry stays pending, and its
		 * own upload follows.  Ours is in S3 for nothing.  If the
		 * key was deleted or renamed away instead, ours must go.
		 */
		(void)bfs_wb_undo_if_gone(wb, rec->key, tag);
		if (drop_stage) {
			bfs_wb_stage_drop(wb, rec->staging);
		}
		if (etag != NULL) {
			*etag = tag;
		}
		return 0;
	}
	if (bfs_wb_index_file_ino(wb, rec->key, rec->size, rec->mtime, tag,
				  &left_ino) != 0) {
		/* S3 has it; the next listing shows it right. */
		bfs_wb_index_forget(wb, rec->key);
	}
	/* The file is safe under its new name: its old one may go now. */
	if (rec->src != NULL) {
		bfs_wb_delete_old_name(wb, rec->src, rec->src_etag);
	}
	ret = bfs_journal_update(wb->j, rec->key, rec->pid, rec->staging, NULL);
	if (ret == 0 && left_ino != 0) {
		bfs_wb_settle_again(wb, rec, tag, left_ino);
	}
	if (ret == ESTALE) {
		/*
		 * Replaced just now by a newer close (its record stays), or
		 * renamed or deleted away since the check above: then ours
		 * goes from S3 and from the index, as there.
		 */
		if (bfs_wb_undo_if_gone(wb, rec->key, tag)) {
			bfs_wb_index_drop(wb, rec->key, tag);
		} else {
			bfs_wb_index_newer(wb, rec->key);
		}
		ret = 0;
	}
	if (ret != 0) {
		/*
		 * Uploaded, but the record stays: a recovery would upload
		 * again from a staging file the caller may drop.  Say so and
		 * keep the staging file; the bytes in S3 are right.
		 */
		bfs_log(BFS_LOG_ERR, "bucketfs: %s is uploaded but its journal "
			"record could not be removed: %s", rec->key,
			strerror(ret));
		drop_stage = false;
	}
	if (drop_stage) {
		bfs_wb_stage_drop(wb, rec->staging);
	}
	if (etag != NULL) {
		*etag = tag;
	}
	return 0;
}

/* Abort a multipart upload; false if S3 could not be asked. */
static bool bfs_wb_abort_mpu(struct bfs_wb *wb, const char *key,
			     const char *upload_id)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct tevent_req *req = s3_mpu_abort_send(tmp, wb->ev, wb->s3, key,
						   upload_id);
	struct s3_status st = {0};
	bool asked = false;

	if (s3_wait_for(req, wb->ev) == 0) {
		s3_mpu_abort_recv(req, &st);
		/* Any answer will do: an upload S3 does not know is gone. */
		asked = st.http_status != 0;
	}
	talloc_free(tmp);
	return asked;
}

static void bfs_wb_stream_forget(struct bfs_wb *wb, const char *upload_id,
				 bool gone);

/*
 * Journal rec, a PUT of rec->key from its staging file, in place of any
 * earlier record of the key (a failed close, a rename while open, a close
 * whose upload waits in the engine), and show the new size in the index.
 * The old name an earlier record still has to delete carries over (into
 * mem_ctx).  Its staging file, whose bytes the open copied, goes once ours
 * is journalled, unless its upload is running: then its uploader drops it.
 */
static int bfs_wb_after_delete(struct bfs_wb *wb, const char *key);

static int bfs_wb_journal_upload(struct bfs_wb *wb, TALLOC_CTX *mem_ctx,
				 struct bfs_jrec *rec)
{
	struct bfs_jrec old;
	int ret;

	if (bfs_journal_get(wb->j, mem_ctx, rec->key, &old) == 0 &&
	    old.op == BFS_J_PUT && old.src != NULL &&
	    strcmp(old.src, rec->key) != 0) {
		rec->src = old.src;
		rec->src_etag = old.src_etag;
	}
	/*
	 * Readers see the new size before S3 has the bytes.  The entry goes
	 * pending before the record is there: an engine may take the record
	 * and finish its upload at once, and its entry (with the ETag) must
	 * be the last word, not ours (a pending entry with no record behind
	 * it would stay pending: relistings keep those).
	 */
	if (bfs_wb_index_file(wb, rec->key, rec->size, rec->mtime, NULL) != 0) {
		bfs_wb_index_forget(wb, rec->key);
	}
	ret = bfs_journal_swap(wb->j, mem_ctx, rec, &old);
	if (ret != 0) {
		/* Not journalled: the next listing says what S3 has. */
		bfs_wb_index_forget(wb, rec->key);
		return ret;
	}
	if (old.key != NULL && old.op == BFS_J_PUT &&
	    strcmp(old.staging, rec->staging) != 0 &&
	    (bfs_wb_put_is_ours(&old) || bfs_wb_put_queued(&old))) {
		bfs_wb_stage_drop(wb, old.staging);
	}
	return 0;
}

int bfs_wb_upload(struct bfs_wb *wb, const char *key, const char *name,
		  int fd, uint64_t size, time_t mtime,
		  const struct bfs_upload_resume *resume, TALLOC_CTX *mem_ctx,
		  char **etag, struct s3_status *st)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec rec = {
		.key = (char *)key, .op = BFS_J_PUT, .pid = getpid(),
		.size = size, .mtime = mtime, .staging = (char *)name,
		.started = true, /* by us, now: not for a rename to retarget */
	};
	int ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	if (resume != NULL &&
	    !bfs_upload_resumable(size, &wb->params, resume)) {
		/* Cut differently now (or small): its parts are no use. */
		bfs_wb_stream_abort(wb, key, resume->upload_id);
		resume = NULL;
	}
	/* A crash from here on aborts the streamed parts, then uploads. */
	rec.upload_id = resume != NULL ? (char *)resume->upload_id : NULL;
	ret = bfs_wb_after_delete(wb, key);
	if (ret == 0) {
		ret = bfs_wb_journal_upload(wb, tmp, &rec);
	}
	rec.upload_id = NULL;
	if (ret != 0) {
		talloc_free(tmp);
		return ret;
	}
	if (resume != NULL) {
		bfs_wb_stream_forget(wb, resume->upload_id, true);
	}
	ret = bfs_wb_run_upload(wb, &rec, fd, false, resume, mem_ctx, etag,
				st);
	if (ret != 0 && resume != NULL) {
		/* The streamed upload failed (and was aborted): start over. */
		rec.last_error = 0;
		ret = bfs_wb_run_upload(wb, &rec, fd, false, NULL, mem_ctx,
					etag, st);
	}
	talloc_free(tmp);
	return ret;
}

/* ---- an upload on the caller's loop --------------------------------------- */

struct bfs_wb_upload_state {
	struct bfs_wb *wb;
	struct bfs_jrec rec;	/* strings on the state */
	struct bfs_wb_started started;
	char *etag;
	struct s3_status st;
};

static void bfs_wb_upload_sent(struct tevent_req *subreq);

struct tevent_req *bfs_wb_upload_send(TALLOC_CTX *mem_ctx,
				      struct tevent_context *ev,
				      struct s3_client *s3, struct bfs_wb *wb,
				      const char *key, const char *name, int fd,
				      uint64_t size, time_t mtime)
{
	struct tevent_req *req, *subreq;
	struct bfs_wb_upload_state *s;
	int ret;

	req = tevent_req_create(mem_ctx, &s, struct bfs_wb_upload_state);
	if (req == NULL) {
		return NULL;
	}
	s->wb = wb;
	s->rec = (struct bfs_jrec){
		.key = talloc_strdup(s, key), .op = BFS_J_PUT,
		.pid = getpid(), .size = size, .mtime = mtime,
		.staging = talloc_strdup(s, name),
		.started = true, /* by us, now: not for a rename to retarget */
	};
	if (tevent_req_nomem(s->rec.key, req) ||
	    tevent_req_nomem(s->rec.staging, req)) {
		return tevent_req_post(req, ev);
	}
	/* Journalled before S3 is asked: a crash from here on is recovered. */
	ret = bfs_wb_after_delete(wb, key);
	if (ret == 0) {
		ret = bfs_wb_journal_upload(wb, s, &s->rec);
	}
	if (ret != 0) {
		tevent_req_error(req, ret);
		return tevent_req_post(req, ev);
	}
	subreq = bfs_wb_upload_begin(wb, ev, s3, &s->rec, fd, NULL,
				     &s->started, s);
	if (tevent_req_nomem(subreq, req)) {
		return tevent_req_post(req, ev);
	}
	tevent_req_set_callback(subreq, bfs_wb_upload_sent, req);
	return req;
}

static void bfs_wb_upload_sent(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_wb_upload_state *s = tevent_req_data(
		req, struct bfs_wb_upload_state);
	int ret = bfs_wb_upload_end(s->wb, &s->rec, subreq, true, false, s,
				    &s->etag, &s->st);

	if (ret != 0) {
		s->st.err = ret;
		tevent_req_error(req, ret);
		return;
	}
	tevent_req_done(req);
}

int bfs_wb_upload_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		       char **etag, struct s3_status *st)
{
	struct bfs_wb_upload_state *s = tevent_req_data(
		req, struct bfs_wb_upload_state);
	int ret = s3_req_errno(req);

	if (ret != 0) {
		if (st != NULL) {
			*st = s->st;
			st->err = ret;
		}
		tevent_req_received(req);
		return ret;
	}
	if (etag != NULL) {
		*etag = talloc_steal(mem_ctx, s->etag);
	}
	tevent_req_received(req);
	return 0;
}

int bfs_wb_hand_over(struct bfs_wb *wb, const char *key, const char *name,
		     uint64_t size, time_t mtime, pid_t engine)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec rec = {
		.key = (char *)key, .op = BFS_J_PUT, .pid = engine,
		.size = size, .mtime = mtime, .staging = (char *)name,
	};
	char *path = tmp != NULL ? bfs_stage_path(tmp, wb, name) : NULL;
	int ret;

	/* The staging file's time says when it was closed (bfs_wb_put_young). */
	if (path != NULL) {
		bfs_priv_enter();
		(void)utimensat(AT_FDCWD, path, NULL, 0);
		bfs_priv_leave();
	}
	ret = tmp != NULL ? bfs_wb_journal_upload(wb, tmp, &rec) : ENOMEM;
	talloc_free(tmp);
	return ret;
}

bool bfs_wb_put_young(struct bfs_wb *wb, const struct bfs_jrec *r,
		      unsigned ms)
{
	char *path;
	struct stat st;
	struct timespec now;
	int64_t age_ms;
	bool young = false;

	if (r->op != BFS_J_PUT || r->staging == NULL || ms == 0) {
		return false;
	}
	if (r->src != NULL) {
		/* A rename retargeted it: the one the delay was for. */
		return false;
	}
	path = bfs_stage_path(NULL, wb, r->staging);
	bfs_priv_enter();
	if (path != NULL && stat(path, &st) != 0) {
		TALLOC_FREE(path);
	}
	bfs_priv_leave();
	if (path != NULL &&
	    clock_gettime(CLOCK_REALTIME, &now) == 0) {
		age_ms = (int64_t)(now.tv_sec - st.st_mtim.tv_sec) * 1000 +
			 (now.tv_nsec - st.st_mtim.tv_nsec) / 1000000;
		young = age_ms >= 0 && age_ms < (int64_t)ms;
	}
	talloc_free(path);
	return young;
}

int bfs_wb_pending_bytes(struct bfs_wb *wb, pid_t owner, uint64_t *bytes)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec *recs = NULL;
	size_t n = 0, i;
	int ret = tmp != NULL ? bfs_journal_list(wb->j, tmp, &recs, &n, NULL) : ENOMEM;

	*bytes = 0;
	for (i = 0; ret == 0 && i < n; i++) {
		if (recs[i].op == BFS_J_PUT && recs[i].pid == owner) {
			*bytes += recs[i].size;
		}
	}
	talloc_free(tmp);
	return ret;
}

int bfs_wb_space(struct bfs_wb *wb, pid_t owner, uint64_t limit,
		 uint64_t *total, uint64_t *avail)
{
	struct statvfs sv;
	uint64_t pending = 0;
	int ret;

	bfs_priv_enter();
	ret = statvfs(wb->staging_dir, &sv) != 0 ? errno : 0;
	bfs_priv_leave();
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: statvfs %s: %s",
			wb->staging_dir, strerror(ret));
		return ret;
	}
	*total = (uint64_t)sv.f_blocks * sv.f_frsize;
	*avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	if (limit > 0) {
		ret = bfs_wb_pending_bytes(wb, owner, &pending);
		if (ret != 0) {
			return ret;
		}
		if (*avail > (pending < limit ? limit - pending : 0)) {
			*avail = pending < limit ? limit - pending : 0;
		}
	}
	if (*total < *avail) {
		*total = *avail;
	}
	return 0;
}

/*
 * key's index entry shows a pending upload while the journal has no
 * record of key: the upload ended between a retarget's journal change and
 * its rename in the index.  The engine took the record at once (a renamed
 * close is not held back), uploaded it and set its ETag, and the rename
 * then put the pending entry over that ETag, with nothing behind it.
 * Relistings keep pending entries, so it stayed; opens found neither a
 * staging file nor an ETag, read S3 unversioned and cached those bytes
 * under the ETag-less name, where a later version of the same size was
 * served from (the 16-client soak read a 1-byte checkpoint back with an
 * older version's byte).  The entry goes, and the folder's next listing
 * says what S3 has.  Should a close of key have journalled meanwhile, its
 * pending entry is put back.
 */
static void bfs_wb_unpend_if_done(struct bfs_wb *wb, const char *key)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec cur;
	struct bfs_entry e;
	char *dir, *name;
	bool marker;

	if (tmp == NULL || bfs_journal_get(wb->j, tmp, key, &cur) != ENOENT ||
	    bfs_key_entry(tmp, key, &dir, &name, &marker) != 0 || marker ||
	    bfs_index_lookup(wb->idx, tmp, dir, name, &e) != 0 ||
	    !(e.flags & BFS_ENT_PENDING) || e.etag != NULL) {
		talloc_free(tmp);
		return;
	}
	bfs_log(BFS_LOG_NOTICE, "bucketfs: %s was uploaded while its rename "
		"was noted: the index lists its folder again", key);
	if (bfs_index_remove(wb->idx, dir, name) != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot drop the index entry of "
			"%s, uploaded while its rename was noted: it shows as "
			"pending", key);
	}
	bfs_wb_forget_dir(wb, dir);
	bfs_wb_index_as_journalled(wb, key);
	talloc_free(tmp);
}

int bfs_wb_retarget(struct bfs_wb *wb, const char *src, const char *dst,
		    pid_t engine)
{
	return bfs_wb_retarget_from(wb, src, dst, engine, NULL);
}

int bfs_wb_retarget_from(struct bfs_wb *wb, const char *src, const char *dst,
			 pid_t engine, const char *src_etag)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec cur, old, rec;
	char *sdir, *sname, *ddir, *dname;
	bool marker;
	int ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	ret = bfs_journal_get(wb->j, tmp, src, &cur);
	if (ret == 0 && (cur.op != BFS_J_PUT || cur.pid != engine ||
			 cur.open || cur.last_error != 0 ||
			 (!cur.started && cur.upload_id != NULL) ||
			 (cur.src != NULL && strcmp(cur.src, dst) != 0))) {
		ret = ESTALE;
	}
	/* A folder's marker (an mkdir the engine has yet to put): the
	 * folder's entry moves. */
	if (ret == 0) {
		ret = bfs_key_entry(tmp, src, &sdir, &sname, &marker);
	}
	if (ret == 0) {
		ret = bfs_key_entry(tmp, dst, &ddir, &dname, &marker);
	}
	if (ret != 0) {
		talloc_free(tmp);
		return ret == ENOENT ? ESTALE : ret;
	}
	/*
	 * The upload goes to dst instead; src, which S3 may hold from
	 * before, is deleted once dst is up (unless a new file of that name
	 * is journalled by then).
	 */
	rec = cur;
	rec.key = (char *)dst;
	rec.src = (char *)src;
	rec.src_etag = src_etag != NULL ? (char *)src_etag :
		talloc_asprintf(tmp, "%c%lld", BFS_SRC_BEFORE,
				(long long)time(NULL));
	if (rec.src_etag == NULL) {
		talloc_free(tmp);
		return ENOMEM;
	}
	if (cur.started) {
		/*
		 * Its upload to src runs (the engine took it before the
		 * rename came): that one ends as one whose key went away
		 * (bfs_wb_undo_upload), and dst's upload reads a second
		 * name of the bytes, so that neither drops the other's.
		 */
		ret = bfs_wb_stage_link(wb, tmp, cur.staging, &rec.staging);
		if (ret != 0) {
			talloc_free(tmp);
			return ret;
		}
		rec.started = false;
		rec.upload_id = NULL;
	}
	ret = bfs_journal_retarget(wb->j, tmp, src, engine, cur.staging, &rec,
				   &old);
	if (ret != 0) {
		if (rec.staging != cur.staging) {
			bfs_wb_stage_drop(wb, rec.staging);
		}
		talloc_free(tmp);
		return ret;
	}
	if (old.key != NULL && old.op == BFS_J_PUT &&
	    strcmp(old.staging, cur.staging) != 0 &&
	    (bfs_wb_put_is_ours(&old) || bfs_wb_put_queued(&old))) {
		bfs_wb_stage_drop(wb, old.staging);
	}
	ret = bfs_index_rename(wb->idx, sdir, sname, ddir, dname);
	if (ret != 0) {
		/* The journal is right; the next listing fixes the index. */
		bfs_wb_forget_dir(wb, sdir);
		bfs_wb_forget_dir(wb, ddir);
	} else {
		bfs_wb_unpend_if_done(wb, dst);
	}
	talloc_free(tmp);
	return 0;
}

void bfs_wb_stream_started(struct bfs_wb *wb, const char *key,
			   const char *staging, const char *upload_id)
{
	char *jkey = talloc_asprintf(NULL, BFS_JKEY_ABORT "%s", upload_id);
	struct bfs_jrec rec = {
		.key = jkey, .op = BFS_J_ABORT, .pid = getpid(),
		.src = (char *)key, .staging = (char *)staging,
		.upload_id = (char *)upload_id,
	};

	if (jkey == NULL || bfs_journal_put(wb->j, &rec) != 0) {
		/* Then a crash leaves its parts to the bucket's lifecycle. */
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot journal streamed upload %s "
			"of %s", upload_id, key);
	}
	talloc_free(jkey);
}

/*
 * A stream's upload is taken over (by a PUT record) or aborted: drop its
 * ABORT record.  If it could not be aborted, a recovery aborts it later,
 * but must leave the staging file alone: the file lives on (renamed, or
 * shared with another open, or uploaded by the close).
 */
static void bfs_wb_stream_forget(struct bfs_wb *wb, const char *upload_id,
				 bool gone)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	char *jkey = talloc_asprintf(tmp, BFS_JKEY_ABORT "%s", upload_id);
	struct bfs_jrec old;

	int ret = 0;

	if (jkey != NULL && bfs_journal_get(wb->j, tmp, jkey, &old) == 0) {
		if (gone) {
			ret = bfs_journal_done(wb->j, jkey, getpid());
		} else {
			old.key = jkey;
			old.staging = NULL;
			ret = bfs_journal_put(wb->j, &old);
		}
	}
	if (ret != 0) {
		/* A recovery aborts it again: harmless, S3 forgets it. */
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot update the journal record "
			"of streamed upload %s: %s", upload_id,
			strerror(ret));
	}
	talloc_free(tmp);
}

void bfs_wb_stream_abort(struct bfs_wb *wb, const char *key,
			 const char *upload_id)
{
	bfs_wb_stream_forget(wb, upload_id,
			     bfs_wb_abort_mpu(wb, key, upload_id));
}

int bfs_wb_wait_upload(struct bfs_wb *wb, const char *key,
		       unsigned timeout_ms)
{
	const unsigned step_ms = 20;
	unsigned waited = 0;
	bool seen = false;

	for (;;) {
		TALLOC_CTX *tmp = talloc_new(NULL);
		struct bfs_jrec rec;
		int ret = bfs_journal_get(wb->j, tmp, key, &rec);
		bool running = ret == 0 && rec.pid != getpid() &&
			       bfs_jrec_owner_alive(&rec);
		bool failed = ret == 0 && rec.last_error != 0;

		talloc_free(tmp);
		if (ret == ENOENT) {
			return seen ? 0 : ENOENT;
		}
		if (ret != 0) {
			return ret;
		}
		/*
		 * A failed upload keeps its record until a recovery: waiting
		 * would not help.  Neither would waiting for our own process.
		 */
		if (!running || failed) {
			return EIO;
		}
		seen = true;
		if (waited >= timeout_ms) {
			return EBUSY;
		}
		/*
		 * The uploader is another process: the journal is the only
		 * thing we share with it, so poll it (cheap: one LMDB read).
		 */
		usleep(step_ms * 1000);
		waited += step_ms;
	}
}

/* ---- simple requests ------------------------------------------------------------- */

static int bfs_wb_delete_key(struct bfs_wb *wb, const char *key,
			     struct s3_status *st)
{
	struct tevent_req *req = s3_delete_object_send(NULL, wb->ev, wb->s3,
						       key);
	int ret;

	ret = s3_wait_for(req, wb->ev);
	if (ret != 0) {
		talloc_free(req);
		return ret;
	}
	ret = s3_delete_object_recv(req, st);
	talloc_free(req);
	return ret == ENOENT ? 0 : ret;
}

/*
 * Server-side copy: CopyObject (which copies the user metadata), or a
 * multipart copy for big objects, which takes it from the index: the
 * renamed entry's, at dst by now.
 */
static int bfs_wb_copy_key(struct bfs_wb *wb, const char *src, const char *dst,
			   uint64_t size, const char *if_match,
			   TALLOC_CTX *mem_ctx, char **etag,
			   struct s3_status *st)
{
	bool multipart = size > wb->params.copy_threshold;
	struct bfs_upload_params p = wb->params;
	struct s3_kv meta[BFS_META_HEADERS_MAX];
	struct tevent_req *req;
	TALLOC_CTX *tmp = talloc_new(NULL);
	int ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	if (multipart) {
		p.meta = meta;
		p.n_meta = bfs_wb_meta_headers(wb, tmp, dst, -1, meta);
		p.copy_if_match = if_match;
	}
	req = multipart ? bfs_copy_send(tmp, wb->ev, wb->s3, src, dst, size, &p) :
			  s3_copy_object_send(tmp, wb->ev, wb->s3, src, dst,
					      if_match);

	ret = s3_wait_for(req, wb->ev);
	if (ret != 0) {
		talloc_free(tmp);
		return ret;
	}
	ret = multipart ? bfs_upload_recv(req, mem_ctx, etag, st) :
			  s3_copy_object_recv(req, mem_ctx, etag, st);
	talloc_free(tmp);
	return ret;
}

/* Whether a copy in the journal (a rename's) reads key. */
static bool bfs_wb_copy_reads(struct bfs_wb *wb, const char *key)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec *recs = NULL;
	size_t n = 0, i;
	bool reads = false;

	if (tmp == NULL || bfs_journal_list(wb->j, tmp, &recs, &n, NULL) != 0) {
		talloc_free(tmp);
		return true; /* unknown: as if it did */
	}
	for (i = 0; i < n && !reads; i++) {
		reads = recs[i].op == BFS_J_COPY && strcmp(recs[i].src, key) == 0;
	}
	talloc_free(tmp);
	return reads;
}

/*
 * Before this process writes key in S3 itself: a delete of key the engine
 * has yet to do must not land after our write.  While another live
 * process runs one (its record, no error noted), wait: a poll of the
 * journal, as bfs_wb_wait_upload, at most BFS_WB_DELETE_WAIT_MS, then
 * EBUSY.  One that is not running (failed and waiting for its retry, or
 * its owner dead, or ours) is dropped: the write replaces it, and a retry
 * would delete what we write.
 */
#define BFS_WB_DELETE_WAIT_MS 30000

static int bfs_wb_after_delete(struct bfs_wb *wb, const char *key)
{
	unsigned waited = 0;

	for (;;) {
		TALLOC_CTX *tmp = talloc_new(NULL);
		struct bfs_jrec rec;
		bool running;
		int ret;

		if (tmp == NULL) {
			return ENOMEM;
		}
		if (bfs_journal_get(wb->j, tmp, key, &rec) != 0 ||
		    rec.op != BFS_J_DELETE) {
			talloc_free(tmp);
			return 0;
		}
		running = rec.pid != getpid() && rec.last_error == 0 &&
			  bfs_jrec_owner_alive(&rec);
		talloc_free(tmp);
		if (!running && bfs_wb_copy_reads(wb, key)) {
			/*
			 * The old name of a rename whose copy is not done: its
			 * delete waits for the copy, and so must our write
			 * (the copy would take our bytes).
			 */
			running = true;
		}
		if (!running) {
			ret = bfs_journal_done_op(wb->j, key, rec.pid,
						  BFS_J_DELETE);
			return ret == ESTALE ? 0 : ret; /* ESTALE: gone */
		}
		if (waited >= BFS_WB_DELETE_WAIT_MS) {
			bfs_log(BFS_LOG_WARNING, "bucketfs: %s: its delete has "
				"not reached S3 after %u s: not written over it "
				"now", key, BFS_WB_DELETE_WAIT_MS / 1000);
			return EBUSY;
		}
		usleep(20 * 1000);
		waited += 20;
	}
}

int bfs_wb_put_empty(struct bfs_wb *wb, const char *key, struct s3_status *st)
{
	struct tevent_req *req;
	int ret = bfs_wb_after_delete(wb, key);

	if (ret != 0) {
		return ret;
	}
	req = s3_put_object_send(NULL, wb->ev, wb->s3, key, "", 0, NULL, 0);
	ret = s3_wait_for(req, wb->ev);
	if (ret != 0) {
		talloc_free(req);
		return ret;
	}
	ret = s3_put_object_recv(req, NULL, NULL, st);
	talloc_free(req);
	return ret;
}

/*
 * Forget key's index entry (a marker "a/b/" is the entry "b" in "a/"),
 * once S3 no longer has it.  Should the index refuse, its folder is
 * listed again at the next access, which drops the entry.
 */
/*
 * fn (bfs_index_remove, _remove_pending, _clear_pending) on key's entry:
 * a file's, or for "dir/" the folder's in its parent.  A failure is
 * logged (what it was for) and the folder is listed again.
 */
static void bfs_wb_index_key(struct bfs_wb *wb, const char *key,
			     int (*fn)(struct bfs_index *, const char *,
				       const char *),
			     const char *what)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	char *dir, *name, *d2 = NULL, *n2;
	int ret = 0;

	if (tmp == NULL || bfs_key_split(tmp, key, &dir, &name) != 0) {
		talloc_free(tmp);
		return;
	}
	if (name[0] != '\0') {
		ret = fn(wb->idx, dir, name);
	} else if (dir[0] != '\0') {
		dir[strlen(dir) - 1] = '\0';
		if (bfs_key_split(tmp, dir, &d2, &n2) == 0) {
			ret = fn(wb->idx, d2, n2);
		}
	}
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot %s %s in the index: %s",
			what, key, strerror(ret));
		bfs_wb_forget_dir(wb, d2 != NULL ? d2 : dir);
	}
	talloc_free(tmp);
}

/* List key's folder again at its next access (key "dir/": the parent's). */
static void bfs_wb_forget_parent(struct bfs_wb *wb, const char *key)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	char *p = tmp != NULL ? talloc_strdup(tmp, key) : NULL;
	char *slash;
	size_t len;

	if (p != NULL) {
		len = strlen(p);
		if (len > 0 && p[len - 1] == '/') {
			p[len - 1] = '\0';
		}
		slash = strrchr(p, '/');
		if (slash != NULL) {
			slash[1] = '\0';
		} else {
			p[0] = '\0';
		}
		bfs_wb_forget_dir(wb, p);
	}
	talloc_free(tmp);
}

static void bfs_wb_index_remove_key(struct bfs_wb *wb, const char *key)
{
	bfs_wb_index_key(wb, key, bfs_index_remove, "remove the deleted");
}

/*
 * A delete handed to the engine is done in S3 (or given up): clear the
 * delete-pending marks it leaves behind.  Its own, unless it is a
 * folder's marker object with deletes under it still journalled (rmdir
 * after rm -r: S3 lists the folder while it holds any of them); then the
 * folders above it whose last journalled delete this was (an rmdir's
 * whose marker went first).  Called once key's record is gone.
 */
static void bfs_wb_clear_marks(struct bfs_wb *wb, const char *key)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	char *p, *slash;
	size_t len;

	p = tmp != NULL ? talloc_strdup(tmp, key) : NULL;
	if (p == NULL) {
		talloc_free(tmp);
		return;
	}
	len = strlen(p);
	if (len == 0 || p[len - 1] != '/' ||
	    !bfs_journal_has_op_under(wb->j, p, BFS_J_DELETE, NULL)) {
		bfs_wb_index_key(wb, p, bfs_index_clear_pending,
				 "clear the delete mark of");
	}
	for (;;) {
		len = strlen(p);
		if (len > 0 && p[len - 1] == '/') {
			p[len - 1] = '\0';
		}
		slash = strrchr(p, '/');
		if (slash == NULL) {
			break;
		}
		slash[1] = '\0'; /* the parent folder, "a/b/" */
		if (bfs_journal_has_op_under(wb->j, p, BFS_J_DELETE, NULL)) {
			break;
		}
		bfs_wb_index_key(wb, p, bfs_index_clear_pending,
				 "clear the delete mark of");
	}
	talloc_free(tmp);
}

/* Whether the journal still holds rec, a delete, as its key's change. */
static bool bfs_wb_delete_still_ours(struct bfs_wb *wb,
				     const struct bfs_jrec *rec)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec cur;
	bool ours = tmp != NULL &&
		    bfs_journal_get(wb->j, tmp, rec->key, &cur) == 0 &&
		    cur.op == BFS_J_DELETE && cur.pid == rec->pid;

	talloc_free(tmp);
	return ours;
}

/*
 * A delete that failed: noted in its record (bfs_wb_after_delete and
 * bucketfs-ctl see it).  One S3 refuses for good (AccessDenied: a
 * policy, an object lock) that was handed over is given up: the client
 * was told it was done, so the name comes back with a log line, as the
 * object is still there, instead of staying hidden while the engine
 * tries for ever.
 */
static void bfs_wb_delete_failed(struct bfs_wb *wb, const struct bfs_jrec *rec,
				 const struct s3_status *st, int err)
{
	struct bfs_jrec r = *rec;
	int jret;

	if (rec->index_gone && strcmp(st->code, "AccessDenied") == 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: S3 refuses to delete %s "
			"(AccessDenied): the delete is given up and the file "
			"shows again", rec->key);
		jret = bfs_journal_done_op(wb->j, rec->key, rec->pid,
					   BFS_J_DELETE);
		bfs_wb_index_key(wb, rec->key, bfs_index_clear_pending,
				 "clear the delete mark of");
		bfs_wb_clear_marks(wb, rec->key);
		bfs_wb_forget_parent(wb, rec->key);
	} else {
		r.last_error = err;
		jret = bfs_journal_update_op(wb->j, rec->key, rec->pid,
					     BFS_J_DELETE, &r);
	}
	if (jret != 0 && jret != ESTALE) {
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot note the failed delete "
			"of %s in the journal: %s", rec->key, strerror(jret));
	}
}

/*
 * A folder's marker renamed with its folder (bfs_wb_marker_hand_over) by
 * an smbd that died between its journal step and its index step: the
 * folder's entry is still there under the old name, not pending and not
 * marked, and no listing would take it away while S3 still implies the
 * folder (its files' deletes wait for their copies).  Before its marker's
 * handed-over delete runs, the entry goes as that delete's own would
 * have: under a mark, until the deletes under it are done too
 * (bfs_wb_clear_marks), as bfs_wb_handed_index makes a copy's step 2.
 */
static void bfs_wb_marker_left(struct bfs_wb *wb, const struct bfs_jrec *rec)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_entry e;
	char *dir, *name;
	bool marker;

	if (tmp != NULL &&
	    bfs_key_entry(tmp, rec->key, &dir, &name, &marker) == 0 &&
	    marker && bfs_index_lookup(wb->idx, tmp, dir, name, &e) == 0 &&
	    e.is_dir && !(e.flags & BFS_ENT_PENDING) &&
	    bfs_wb_delete_still_ours(wb, rec)) {
		bfs_log(BFS_LOG_INFO, "bucketfs: the folder %s, renamed by a "
			"process that died before it showed it, goes from the "
			"index", rec->key);
		if (bfs_index_remove_pending(wb->idx, dir, name) != 0) {
			bfs_wb_forget_dir(wb, dir);
		}
	}
	talloc_free(tmp);
}

/*
 * A rename handed over again before its copy (a -> b, then b -> c), cut
 * by a crash after its journal step: b's delete has run, but b's pending
 * entry, which the index step would have moved to c, is still there (c is
 * copied from a, whose entry went with the first rename, so recovery
 * cannot move it; c shows from its folder's relisting once copied).  A
 * pending entry with an ETag and no record behind it is kept by every
 * listing and readable by no one: it is settled, only while it is that
 * entry, and its folder listed again, which drops it.  (Declared in the
 * header for its unit test.)
 */
bool bfs_wb_settle_cut_rename(struct bfs_wb *wb, const char *key)
{
	bool settled = false;
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec cur;
	struct bfs_entry e;
	char *dir, *name;

	if (tmp == NULL || bfs_journal_get(wb->j, tmp, key, &cur) != ENOENT ||
	    bfs_key_split(tmp, key, &dir, &name) != 0 || name[0] == '\0' ||
	    bfs_index_lookup(wb->idx, tmp, dir, name, &e) != 0 ||
	    !(e.flags & BFS_ENT_PENDING) || e.is_dir || e.etag == NULL) {
		talloc_free(tmp);
		return false;
	}
	if (bfs_index_settle(wb->idx, dir, name, e.etag, e.etag) == 0) {
		if (bfs_journal_get(wb->j, tmp, key, &cur) != ENOENT) {
			/* A rename onto it came between our two looks. */
			bfs_wb_index_as_journalled(wb, key);
			talloc_free(tmp);
			return false;
		}
		bfs_log(BFS_LOG_INFO, "bucketfs: %s, the middle name of a rename "
			"cut by a crash, goes from the index", key);
		bfs_wb_forget_dir(wb, dir);
		settled = true;
	}
	talloc_free(tmp);
	return settled;
}

/* Run a journalled delete to the end (a client's, or a recovery's). */
static int bfs_wb_run_delete(struct bfs_wb *wb, const struct bfs_jrec *rec,
			     struct s3_status *st)
{
	int ret;

	if (rec->index_gone) {
		bfs_wb_marker_left(wb, rec);
	}
	ret = bfs_wb_delete_key(wb, rec->key, st);

	if (ret != 0) {
		bfs_wb_delete_failed(wb, rec, st, ret);
		return ret;
	}
	if (rec->src != NULL) {
		bfs_wb_delete_old_name(wb, rec->src, rec->src_etag);
	}
	if (!bfs_wb_delete_still_ours(wb, rec)) {
		/*
		 * A close of the key since (rm x; write x): its entry is the
		 * index's and its record the journal's, even when it is in
		 * our pid's name (the engine runs a dead smbd's delete and is
		 * handed the close).  When the engine runs this delete, that
		 * upload follows it: the engine holds the key until we return.
		 */
		bfs_log(BFS_LOG_INFO, "bucketfs: %s was written again while its "
			"delete ran; the new file stays", rec->key);
		return 0;
	}
	if (!rec->index_gone) {
		bfs_wb_index_remove_key(wb, rec->key);
	}
	ret = bfs_journal_done_op(wb->j, rec->key, rec->pid, BFS_J_DELETE);
	if (ret != 0 && ret != ESTALE) {
		/* Done in S3; a recovery deletes it again, harmlessly. */
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot drop the journal record of "
			"the delete of %s: %s", rec->key, strerror(ret));
	} else if (rec->index_gone) {
		/*
		 * Out of the index since the hand-over; what is there now
		 * (a file made since) is newer: only the marks go.  After
		 * the record: of two deletes in one folder ending at once,
		 * the later sees the other's record gone.  (A crash in
		 * between leaves a mark: bfs_wb_sweep_marks.)
		 */
		bfs_wb_clear_marks(wb, rec->key);
		(void)bfs_wb_settle_cut_rename(wb, rec->key);
	}
	return 0;
}

/*
 * Journal rec, a DELETE, in place of key's record.  *old: the record it
 * replaced (key NULL if none); *queued: that was a close waiting in the
 * engine, which will not upload now.
 */
static int bfs_wb_delete_journal(struct bfs_wb *wb, TALLOC_CTX *tmp,
				 struct bfs_jrec *rec, bool *had_old,
				 struct bfs_jrec *old, struct bfs_jrec *replaced,
				 bool *queued)
{
	int ret;

	/*
	 * A file renamed while open, then deleted: the old name it came
	 * from goes too (or it would be back at the next listing).  Its
	 * staging file is the open's to drop.
	 */
	*had_old = bfs_journal_get(wb->j, tmp, rec->key, old) == 0 &&
		   old->op == BFS_J_PUT &&
		   (old->pid == getpid() || !bfs_jrec_owner_alive(old));
	if (*had_old && old->src != NULL) {
		rec->src = old->src;
		rec->src_etag = old->src_etag;
	}
	ret = bfs_journal_swap(wb->j, tmp, rec, replaced);
	if (ret != 0) {
		return ret;
	}
	*queued = replaced->key != NULL && replaced->op == BFS_J_PUT &&
		  replaced->pid != getpid() && bfs_wb_put_queued(replaced);
	return 0;
}

int bfs_wb_delete_hand_over(struct bfs_wb *wb, const char *key,
			    pid_t engine)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec rec = {
		.key = (char *)key, .op = BFS_J_DELETE, .pid = engine,
		.index_gone = true,
	};
	struct bfs_jrec old, replaced;
	bool had_old, queued;
	int ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	/*
	 * Gone from here first, with a mark no listing passes: the engine
	 * (its poll needs no notice) may be done before we are, and clears
	 * the mark then; set after, the mark would stay.
	 */
	bfs_wb_index_key(wb, key, bfs_index_remove_pending, "remove");
	ret = bfs_wb_delete_journal(wb, tmp, &rec, &had_old, &old, &replaced,
				    &queued);
	if (ret != 0) {
		/* Nothing to delete after all: the next listing shows it. */
		bfs_wb_index_key(wb, key, bfs_index_clear_pending,
				 "clear the delete mark of");
		bfs_wb_forget_parent(wb, key);
	} else if (queued) {
		bfs_wb_stage_drop(wb, replaced.staging);
	}
	talloc_free(tmp);
	return ret;
}

unsigned bfs_wb_sweep_marks(struct bfs_wb *wb, time_t before)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	char **keys = NULL;
	size_t n = 0, i;
	unsigned cleared = 0;

	if (tmp == NULL ||
	    bfs_index_delete_marks(wb->idx, tmp, before, &keys, &n) != 0) {
		talloc_free(tmp);
		return 0;
	}
	for (i = 0; i < n; i++) {
		char *under = talloc_asprintf(tmp, "%s/", keys[i]);

		if (under == NULL || bfs_wb_delete_pending(wb, keys[i]) ||
		    bfs_journal_has_op_under(wb->j, under, BFS_J_DELETE,
					     NULL)) {
			continue; /* still to do */
		}
		bfs_log(BFS_LOG_WARNING, "bucketfs: %s was kept out of "
			"listings for a delete no longer journalled: it shows "
			"as S3 has it again", keys[i]);
		bfs_wb_index_key(wb, keys[i], bfs_index_clear_pending,
				 "clear the delete mark of");
		bfs_wb_forget_parent(wb, keys[i]);
		cleared++;
	}
	talloc_free(tmp);
	return cleared;
}

bool bfs_wb_delete_pending(struct bfs_wb *wb, const char *key)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec rec;
	bool pending = tmp != NULL &&
		       bfs_journal_get(wb->j, tmp, key, &rec) == 0 &&
		       rec.op == BFS_J_DELETE;

	talloc_free(tmp);
	return pending;
}

int bfs_wb_delete(struct bfs_wb *wb, const char *key, struct s3_status *st)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec rec = {
		.key = (char *)key, .op = BFS_J_DELETE, .pid = getpid(),
	};
	struct bfs_jrec old, replaced;
	bool had_old, queued;
	int ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	ret = bfs_wb_delete_journal(wb, tmp, &rec, &had_old, &old, &replaced,
				    &queued);
	if (ret != 0) {
		talloc_free(tmp);
		return ret;
	}
	ret = bfs_wb_run_delete(wb, &rec, st);
	if (ret == 0 && queued) {
		bfs_wb_stage_drop(wb, replaced.staging);
	}
	if (ret != 0) {
		/* Nothing changed in S3: the journal says what it said. */
		int jret = had_old ? bfs_journal_put(wb->j, &old) :
			   queued ? bfs_journal_put(wb->j, &replaced) :
				    bfs_journal_done(wb->j, key, rec.pid);
		if (jret != 0) {
			bfs_log(BFS_LOG_ERR, "bucketfs: cannot restore the journal "
				"after the failed delete of %s: %s", key,
				strerror(jret));
		}
	}
	talloc_free(tmp);
	return ret;
}

/* The directories and names of a rename's two keys (on mem_ctx). */
static int bfs_wb_split_pair(TALLOC_CTX *mem_ctx, const char *src,
			     const char *dst, char **sdir, char **sname,
			     char **ddir, char **dname)
{
	int ret = bfs_key_split(mem_ctx, src, sdir, sname);

	return ret != 0 ? ret : bfs_key_split(mem_ctx, dst, ddir, dname);
}

int bfs_wb_rename_open(struct bfs_wb *wb, const char *src, const char *dst,
		       const char *staging, uint64_t size, time_t mtime,
		       const char *src_etag)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec rec = {
		.key = (char *)dst, .op = BFS_J_PUT, .pid = getpid(),
		.size = size, .mtime = mtime, .staging = (char *)staging,
		.open = true,
	};
	struct bfs_jrec old, old_dst;
	bool had_old, had_dst, copy_dropped = false;
	char *sdir, *sname, *ddir, *dname;
	int ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	ret = bfs_wb_split_pair(tmp, src, dst, &sdir, &sname, &ddir, &dname);
	if (ret != 0) {
		talloc_free(tmp);
		return ret;
	}
	had_old = bfs_journal_get(wb->j, tmp, src, &old) == 0;
	if (had_old && old.op == BFS_J_COPY && old.index_gone) {
		/*
		 * src is the new name of a rename the engine has yet to copy
		 * (our bytes came from its source): that copy would bring
		 * src back.  Its source's delete waits for it no more.
		 */
		struct bfs_jrec del = {
			.key = (char *)src, .op = BFS_J_DELETE, .pid = old.pid,
			.index_gone = true,
		};

		ret = bfs_journal_update_op(wb->j, src, old.pid, BFS_J_COPY,
					    &del);
		if (ret != 0 && ret != ESTALE) {
			talloc_free(tmp);
			return ret;
		}
		copy_dropped = ret == 0;
	}
	had_old = had_old && old.op == BFS_J_PUT && bfs_wb_put_is_ours(&old);
	had_dst = bfs_journal_get(wb->j, tmp, dst, &old_dst) == 0;
	/*
	 * The object to delete once dst is up: the one the file was before
	 * (carried over when src got its name from an earlier rename while
	 * open), unless it is dst itself, which the upload replaces.
	 */
	if (had_old && old.src != NULL) {
		rec.src = old.src;
		rec.src_etag = old.src_etag;
	} else if (src_etag != NULL) {
		rec.src = (char *)src;
		rec.src_etag = (char *)src_etag;
	}
	if (rec.src != NULL && strcmp(rec.src, dst) == 0) {
		rec.src = NULL;
		rec.src_etag = NULL;
	}
	ret = bfs_journal_put(wb->j, &rec);
	if (ret != 0) {
		talloc_free(tmp);
		return ret;
	}
	ret = bfs_index_rename(wb->idx, sdir, sname, ddir, dname);
	if (ret != 0) {
		/* Not renamed: the journal says what it said before. */
		int jret = had_dst ? bfs_journal_put(wb->j, &old_dst) :
				     bfs_journal_done(wb->j, dst, rec.pid);
		if (jret != 0) {
			bfs_log(BFS_LOG_ERR, "bucketfs: cannot restore the journal "
				"after the failed rename of %s: %s", src,
				strerror(jret));
		}
		talloc_free(tmp);
		return ret;
	}
	if (copy_dropped &&
	    bfs_index_remove_pending(wb->idx, sdir, sname) != 0) {
		/* A copy the engine made already would show meanwhile. */
		bfs_wb_forget_dir(wb, sdir);
	}
	/* A record dst had (a failed close of the file renamed over). */
	if (had_dst && old_dst.op == BFS_J_PUT && bfs_wb_put_is_ours(&old_dst) &&
	    strcmp(old_dst.staging, staging) != 0) {
		bfs_wb_stage_drop(wb, old_dst.staging);
	}
	if (had_old) {
		/* Its bytes are in our staging file: the record moved to dst. */
		if (strcmp(old.staging, staging) != 0) {
			bfs_wb_stage_drop(wb, old.staging);
		}
		if (bfs_journal_done(wb->j, src, old.pid) != 0) {
			/* A recovery would upload src's old bytes to src. */
			bfs_log(BFS_LOG_ERR, "bucketfs: cannot drop the journal "
				"record of %s after renaming it", src);
		}
	}
	talloc_free(tmp);
	return 0;
}

/*
 * Whether key's record is what the caller saw (op, pid, staging file):
 * what a journal swap replaced, checked against the look before it.
 */
static bool bfs_jrec_same(const struct bfs_jrec *a, const struct bfs_jrec *b)
{
	if (a->key == NULL || b->key == NULL) {
		return a->key == NULL && b->key == NULL;
	}
	return a->op == b->op && a->pid == b->pid &&
	       strcmp(a->staging ? a->staging : "",
		      b->staging ? b->staging : "") == 0 &&
	       strcmp(a->src ? a->src : "", b->src ? b->src : "") == 0 &&
	       strcmp(a->src_etag ? a->src_etag : "",
		      b->src_etag ? b->src_etag : "") == 0;
}

/* A rename's copy, journalled (bfs_wb_journal_copy), and what it replaced. */
struct bfs_wb_copying {
	const struct bfs_jrec *rec;
	TALLOC_CTX *mem;
	struct bfs_jrec replaced; /* key NULL: none */
	/*
	 * A second name, ours, of the staging file of an upload the copy
	 * replaced before it began: no record names the file while the copy
	 * runs, and a connect would sweep it as its dead writer's.
	 */
	char *kept;
};

/*
 * Journal a rename's copy (rec) in the same transaction as a look at
 * what its destination has: never over an upload of it that another live
 * process runs (the engine's, of an earlier close).  S3 keeps whichever
 * of the two lands last, and that upload, finding its record gone at its
 * end, takes its object back out (bfs_wb_undo_if_gone): the copy landed
 * first, the upload after, and S3 was left with no file at all (the
 * 16-client soak lost an acknowledged checkpoint so).  EINPROGRESS then,
 * for the caller to wait for it.  An upload not started is replaced: its
 * uploader finds the record changed and leaves it.  What was replaced is
 * kept in c->replaced: should the copy fail, it is put back.
 */
static int bfs_wb_journal_copy(struct bfs_journal_txn *t, void *priv)
{
	struct bfs_wb_copying *c = priv;
	const struct bfs_jrec *rec = c->rec;
	struct bfs_jrec cur;
	int ret;

	c->replaced = (struct bfs_jrec){0};
	ret = bfs_journal_txn_read(t, c->mem, rec->key, &cur);
	if (ret == 0 && cur.op == BFS_J_PUT && cur.started &&
	    cur.pid != rec->pid && cur.last_error == 0 &&
	    bfs_jrec_owner_alive(&cur)) {
		ret = EINPROGRESS;
	} else if (ret == 0 || ret == ENOENT) {
		c->replaced = ret == 0 ? cur : (struct bfs_jrec){0};
		ret = bfs_journal_txn_write(t, rec);
	}
	return ret;
}

/*
 * The copy failed: S3 is as it was, and so is the journal, in one
 * transaction, while the record is still our copy's: an upload it
 * replaced that had not begun comes back (an earlier rename's or close's
 * of the destination: acknowledged bytes whose only record it was), under
 * the second name of its staging file we keep (c->kept).  Anything else
 * it replaced is not put back: another process's copy or delete ends
 * without its record as it would have after ours.
 */
static int bfs_wb_uncopy_txn(struct bfs_journal_txn *t, void *priv)
{
	struct bfs_wb_copying *c = priv;
	struct bfs_jrec cur, back = c->replaced;
	int ret = bfs_journal_txn_read(t, c->mem, c->rec->key, &cur);

	if (ret == ENOENT || (ret == 0 && !bfs_jrec_same(&cur, c->rec))) {
		ret = ESTALE; /* changed since: that change stands */
	}
	if (ret == 0 && c->replaced.key != NULL &&
	    c->replaced.op == BFS_J_PUT && c->replaced.staging != NULL &&
	    bfs_wb_put_queued(&c->replaced)) {
		back.staging = c->kept != NULL ? c->kept : c->replaced.staging;
		ret = bfs_journal_txn_write(t, &back);
	} else if (ret == 0) {
		ret = bfs_journal_txn_remove(t, c->rec->key);
	}
	return ret;
}

int bfs_wb_rename(struct bfs_wb *wb, const char *src, const char *dst,
		  uint64_t size, struct s3_status *st)
{
	struct bfs_jrec rec = {
		.key = (char *)dst, .op = BFS_J_COPY, .pid = getpid(),
		.src = (char *)src, .size = size,
	};
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_wb_copying c = {.rec = &rec, .mem = tmp};
	char *sdir, *sname, *ddir, *dname;
	int ret, jret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	ret = bfs_wb_after_delete(wb, dst);
	if (ret == 0) {
		ret = bfs_journal_atomically(wb->j, bfs_wb_journal_copy, &c);
	}
	if (ret != 0) {
		talloc_free(tmp);
		return ret;
	}
	if (c.replaced.key != NULL && c.replaced.op == BFS_J_PUT &&
	    c.replaced.staging != NULL && bfs_wb_put_queued(&c.replaced) &&
	    bfs_wb_stage_link(wb, tmp, c.replaced.staging, &c.kept) != 0) {
		c.kept = NULL; /* logged; then a failed copy cannot undo */
	}
	ret = bfs_wb_copy_key(wb, src, dst, size, NULL, NULL, NULL, st);
	if (ret != 0) {
		/* Nothing changed; should the record stay, a recovery
		 * copies what the client asked for. */
		jret = bfs_journal_atomically(wb->j, bfs_wb_uncopy_txn, &c);
		if (jret != 0 && jret != ESTALE) {
			bfs_log(BFS_LOG_ERR, "bucketfs: cannot take the failed "
				"copy to %s out of the journal: %s", dst,
				strerror(jret));
		}
		if (c.kept != NULL && jret == 0) {
			/* Its record names our second name now. */
			bfs_wb_stage_drop(wb, c.replaced.staging);
		} else if (c.kept != NULL) {
			bfs_wb_stage_drop(wb, c.kept);
		}
		talloc_free(tmp);
		return ret;
	}
	/* The copy is dst now: a queued upload it replaced has no use. */
	if (c.kept != NULL) {
		bfs_wb_stage_drop(wb, c.replaced.staging);
		bfs_wb_stage_drop(wb, c.kept);
	}
	if (bfs_wb_split_pair(tmp, src, dst, &sdir, &sname, &ddir,
			      &dname) == 0) {
		ret = bfs_index_rename(wb->idx, sdir, sname, ddir, dname);
		/* ENOENT: not indexed, the next listing shows it. */
		if (ret != 0 && ret != ENOENT) {
			/* S3 has the copy: both folders are listed again. */
			bfs_log(BFS_LOG_ERR, "bucketfs: cannot move %s to %s "
				"in the index: %s", src, dst, strerror(ret));
			bfs_wb_forget_dir(wb, sdir);
			bfs_wb_forget_dir(wb, ddir);
		}
	}
	talloc_free(tmp);
	/*
	 * The copy is done and the index shows the new name: from here the
	 * journal finishes the rename even if we die before the delete.
	 */
	ret = bfs_wb_delete_key(wb, src, st);
	if (ret == 0 && bfs_journal_done(wb->j, dst, rec.pid) != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot drop the journal record of "
			"the rename to %s; a recovery copies it again", dst);
	}
	return ret;
}

/*
 * Whether a rename onto key may replace its record r (key NULL: none) in
 * the engine's name: a change the engine has yet to finish and that the
 * copy makes moot (a close's upload, a delete, another rename's copy).
 * Not a file still written, nor a change that takes another name along
 * (src): the sync rename waits for those.
 */
static bool bfs_wb_copy_may_replace(const struct bfs_jrec *r, pid_t engine)
{
	if (r->key == NULL) {
		return true;
	}
	if (r->pid != engine || r->op == BFS_J_ABORT) {
		return false;
	}
	switch (r->op) {
	case BFS_J_PUT:
		return !r->open && r->src == NULL;
	case BFS_J_DELETE:
		return r->src == NULL;
	case BFS_J_COPY:
		return r->index_gone;
	default:
		return false;
	}
}

/* What bfs_wb_rename_hand_over decides in one journal transaction. */
struct bfs_wb_handing {
	TALLOC_CTX *mem;
	pid_t engine;
	const char *src, *src_etag, *dst;
	bool marker;		/* folder markers: copy is a PUT of an empty file */
	struct bfs_jrec copy, del;
	struct bfs_jrec replaced;	/* dst's record before (key NULL: none) */
	struct bfs_jrec src_was;	/* src's record before (key NULL: none) */
	bool undo_failed;	/* step 1 stays, for recovery to finish */
	const char *sdir, *sname, *ddir, *dname;	/* the index entries */
	bool refused;		/* step 1 found a change it cannot take */
	int ret;		/* 0: the engine's; else why not */
};

static int bfs_wb_handing_decide(struct bfs_journal_txn *t, void *priv)
{
	struct bfs_wb_handing *h = priv;
	struct bfs_jrec srec, orig;
	int ret;

	h->copy.src = h->marker ? NULL : (char *)h->src;
	h->src_was = (struct bfs_jrec){0};
	ret = bfs_journal_txn_read(t, h->mem, h->src, &srec);
	if (ret == 0 && h->marker) {
		return ESTALE; /* a marker's change on its way: renamed in S3 */
	}
	if (ret == 0) {
		h->src_was = srec;
		/*
		 * src is itself a rename not yet copied (a -> b, then b -> c):
		 * c is copied from a, b's copy is dropped by b's delete, and
		 * a's delete waits for c's copy.  Only while a's record is
		 * that delete: a name a copy goes to is never another copy's
		 * source, or two copies could wait for each other.  Any other
		 * change of src: the rename waits for S3 instead.
		 */
		if (srec.op != BFS_J_COPY || !srec.index_gone ||
		    srec.pid != h->engine || srec.src_etag == NULL ||
		    strcmp(srec.src_etag, h->src_etag) != 0) {
			return ESTALE;
		}
		ret = bfs_journal_txn_read(t, h->mem, srec.src, &orig);
		if (ret != 0 || orig.op != BFS_J_DELETE || !orig.index_gone ||
		    orig.pid != h->engine || orig.src != NULL) {
			return ret == 0 || ret == ENOENT ? ESTALE : ret;
		}
		h->copy.src = srec.src;
	} else if (ret != ENOENT) {
		return ret;
	}
	if (h->copy.src != NULL && strcmp(h->copy.src, h->dst) == 0) {
		return ESTALE; /* a -> b, then b -> a before the copy */
	}
	ret = bfs_journal_txn_read(t, h->mem, h->dst, &h->replaced);
	if (ret == ENOENT) {
		h->replaced = (struct bfs_jrec){0};
	} else if (ret != 0) {
		return ret;
	}
	if (!bfs_wb_copy_may_replace(&h->replaced, h->engine)) {
		return ESTALE;
	}
	/* The copy, then src's delete (which the engine holds back while
	 * it sees the copy): both, or neither. */
	ret = bfs_journal_txn_write(t, &h->copy);
	if (ret == 0) {
		ret = bfs_journal_txn_write(t, &h->del);
	}
	return ret;
}

/*
 * key's record back to was (key NULL: none), if it is still mine, the
 * record the hand-over wrote.
 */
static int bfs_wb_handing_restore(struct bfs_journal_txn *t, TALLOC_CTX *mem,
				  const char *key, const struct bfs_jrec *mine,
				  const struct bfs_jrec *was)
{
	struct bfs_jrec cur;
	int ret = bfs_journal_txn_read(t, mem, key, &cur);

	if (ret != 0 || !bfs_jrec_same(&cur, mine)) {
		return ret == ENOENT ? 0 : ret; /* changed since: theirs */
	}
	return was->key != NULL ? bfs_journal_txn_write(t, was) :
				  bfs_journal_txn_remove(t, key);
}

/*
 * The index could not be told: the journal as it was before.  (An upload
 * of dst the engine had begun and ended meanwhile took its object back
 * out on seeing the copy in its place, bfs_wb_undo_if_gone; its record,
 * put back here, then fails for want of its staging file, shown as a
 * failed upload.  Step 2 fails rarely: its source was looked up before
 * step 1, and only another smbd's change of it in between, or an index
 * error, fails it.)
 */
static int bfs_wb_handing_undo(struct bfs_journal_txn *t, void *priv)
{
	struct bfs_wb_handing *h = priv;
	int ret = bfs_wb_handing_restore(t, h->mem, h->dst, &h->copy,
					 &h->replaced);

	if (ret == 0) {
		ret = bfs_wb_handing_restore(t, h->mem, h->src, &h->del,
					     &h->src_was);
	}
	return ret;
}

/* key's record, if it is still mine, in the engine's name. */
static int bfs_wb_handing_pass(struct bfs_journal_txn *t, TALLOC_CTX *mem,
			       const char *key, const struct bfs_jrec *mine,
			       pid_t engine)
{
	struct bfs_jrec cur;
	int ret = bfs_journal_txn_read(t, mem, key, &cur);

	if (ret != 0 || !bfs_jrec_same(&cur, mine)) {
		return ret == ENOENT ? 0 : ret; /* changed since: theirs */
	}
	cur.pid = engine;
	cur.pid_start = 0; /* the engine's, at encoding */
	return bfs_journal_txn_write(t, &cur);
}

/* The index shows the rename: the engine's to do now. */
static int bfs_wb_handing_give(struct bfs_journal_txn *t, void *priv)
{
	struct bfs_wb_handing *h = priv;
	int ret = bfs_wb_handing_pass(t, h->mem, h->dst, &h->copy, h->engine);

	if (ret == 0) {
		ret = bfs_wb_handing_pass(t, h->mem, h->src, &h->del,
					  h->engine);
	}
	return ret;
}

static int bfs_wb_test_handing_stop;

void bfs_wb_test_stop_hand_over(int after_step)
{
	bfs_wb_test_handing_stop = after_step;
}

/* Hand-overs made together: each step one journal transaction for all. */
struct bfs_wb_handing_batch {
	struct bfs_wb_handing **h;
	size_t n;
};

/* Step 1 of every hand-over still on: one refused leaves the others. */
static int bfs_wb_handing_decide_all(struct bfs_journal_txn *t, void *priv)
{
	struct bfs_wb_handing_batch *b = priv;
	size_t i;

	for (i = 0; i < b->n; i++) {
		struct bfs_wb_handing *h = b->h[i];
		int ret;

		if (h->ret != 0) {
			continue;
		}
		/* A refusal writes nothing (bfs_wb_handing_decide). */
		ret = bfs_wb_handing_decide(t, h);
		h->refused = ret == ESTALE;
		if (ret != 0 && ret != ESTALE) {
			return ret;
		}
	}
	return 0;
}

static int bfs_wb_handing_give_all(struct bfs_journal_txn *t, void *priv)
{
	struct bfs_wb_handing_batch *b = priv;
	size_t i;

	for (i = 0; i < b->n; i++) {
		int ret = b->h[i]->ret != 0 ? 0 :
			  bfs_wb_handing_give(t, b->h[i]);

		if (ret != 0) {
			return ret;
		}
	}
	return 0;
}

/*
 * The three steps of hand-overs (each h filled in, its entries' folders
 * and names given, h->ret 0), in the order given: each h->ret 0 once the
 * engine has it, else nothing of it stays but what a failed undo leaves
 * to recovery (logged).  Steps 1 and 3 are one synced journal transaction
 * for all of them: a folder's thousand objects, one by one, took 1.6 s
 * of smbd's loop here.
 */
static void bfs_wb_hand_over_batch(struct bfs_wb *wb,
				   struct bfs_wb_handing **hs, size_t n)
{
	struct bfs_wb_handing_batch b = {.h = hs, .n = n};
	size_t i, live = 0;
	int ret;

	for (i = 0; i < n; i++) {
		struct bfs_wb_handing *h = hs[i];
		struct bfs_entry e;

		if (h->ret != 0) {
			continue;
		}
		/* What step 2 moves must be there: its failure takes step 1
		 * back, which a change step 1 replaced may not survive. */
		ret = bfs_index_lookup(wb->idx, h->mem, h->sdir, h->sname, &e);
		if (ret != 0) {
			h->ret = ret == ENOENT ? ESTALE : ret;
			continue;
		}
		live++;
	}
	if (live == 0) {
		return;
	}
	/*
	 * Three steps, each one crash-safe.  The journal first, in this
	 * process's name, which the engine leaves alone while we live:
	 * should smbd die before the last step, the records are a dead
	 * process's, which recovery (the engine's, or the next connect's)
	 * finishes, the copy then the delete, and the index follows them
	 * (bfs_wb_run_handed_copy).  The index first would leave, after
	 * such a death, a pending entry with no record behind it, which
	 * every listing keeps and no read can fetch.
	 */
	ret = bfs_journal_atomically(wb->j, bfs_wb_handing_decide_all, &b);
	for (i = 0; i < n; i++) {
		if (hs[i]->ret == 0 && (ret != 0 || hs[i]->refused)) {
			hs[i]->ret = ret != 0 ? ret : ESTALE;
		}
	}
	if (ret != 0 || bfs_wb_test_handing_stop == 1) {
		return;
	}
	/* Then the index: each new name at once, pending, src marked gone. */
	for (i = 0; i < n; i++) {
		struct bfs_wb_handing *h = hs[i];
		int undo;

		if (h->ret != 0) {
			continue;
		}
		ret = bfs_wb_test_handing_stop == -1 ? EIO :
		      bfs_index_rename_pending(wb->idx, h->sdir, h->sname,
					       h->ddir, h->dname);
		if (ret == 0) {
			continue;
		}
		undo = bfs_journal_atomically(wb->j, bfs_wb_handing_undo, h);
		if (undo != 0) {
			bfs_log(BFS_LOG_ERR, "bucketfs: cannot take the "
				"rename of %s to %s back from the journal: %s; "
				"it is made in S3 once this process ends",
				h->src, h->dst, strerror(undo));
			h->undo_failed = true;
		}
		bfs_wb_forget_dir(wb, h->sdir);
		bfs_wb_forget_dir(wb, h->ddir);
		/* Not ESTALE after a failed undo: renamed here too, it would
		 * be twice. */
		h->ret = h->undo_failed ? EIO : ret == ENOENT ? ESTALE : ret;
	}
	if (bfs_wb_test_handing_stop == 2) {
		return;
	}
	/* Last, the engine's to do: it acts on the journal alone. */
	ret = bfs_journal_atomically(wb->j, bfs_wb_handing_give_all, &b);
	if (ret != 0) {
		/* Shown and journalled: made once this process ends. */
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot hand the rename of %s "
			"to %s%s to the engine: %s; it is made in S3 once this "
			"process ends", hs[0]->src, hs[0]->dst,
			n > 1 ? " and others" : "", strerror(ret));
	}
	for (i = 0; i < n; i++) {
		struct bfs_wb_handing *h = hs[i];

		if (h->ret == 0 && h->replaced.key != NULL &&
		    h->replaced.op == BFS_J_PUT &&
		    bfs_wb_put_queued(&h->replaced)) {
			/* A close of dst the engine had not begun: nobody
			 * uploads it. */
			bfs_wb_stage_drop(wb, h->replaced.staging);
		}
	}
}

/* One hand-over (h made by bfs_wb_handing_*): 0, or why not. */
static int bfs_wb_hand_over_one(struct bfs_wb *wb, struct bfs_wb_handing *h)
{
	h->ret = 0;
	bfs_wb_hand_over_batch(wb, &h, 1);
	return h->ret;
}

/* h, on mem, for a rename of file src (at src_etag) to dst. */
static int bfs_wb_handing_file(struct bfs_wb_handing *h, TALLOC_CTX *mem,
			       pid_t engine, const char *src,
			       const char *src_etag, const char *dst,
			       uint64_t size, time_t mtime)
{
	char *sdir, *sname, *ddir, *dname;
	int ret;

	*h = (struct bfs_wb_handing){
		.mem = mem, .engine = engine, .src = src,
		.src_etag = src_etag, .dst = dst,
		.copy = {
			.key = (char *)dst, .op = BFS_J_COPY, .pid = getpid(),
			.src_etag = (char *)src_etag, .size = size,
			.mtime = mtime, .index_gone = true,
		},
		.del = {
			.key = (char *)src, .op = BFS_J_DELETE, .pid = getpid(),
			.index_gone = true,
		},
	};
	ret = bfs_wb_split_pair(mem, src, dst, &sdir, &sname, &ddir, &dname);
	if (ret == 0) {
		h->sdir = sdir;
		h->sname = sname;
		h->ddir = ddir;
		h->dname = dname;
	}
	return ret;
}

/*
 * h, on mem, for a folder's marker src renamed to dst: its new marker's
 * empty staging file made (drop it if the hand-over fails).
 */
static int bfs_wb_handing_marker(struct bfs_wb *wb, struct bfs_wb_handing *h,
				 TALLOC_CTX *mem, pid_t engine,
				 const char *src, const char *dst)
{
	char *sdir, *sname, *ddir, *dname, *path;
	bool is_dir;
	int fd = -1, ret;

	*h = (struct bfs_wb_handing){
		.mem = mem, .engine = engine, .src = src, .dst = dst,
		.marker = true,
		.copy = {
			.key = (char *)dst, .op = BFS_J_PUT, .pid = getpid(),
			.mtime = time(NULL),
		},
		.del = {
			.key = (char *)src, .op = BFS_J_DELETE, .pid = getpid(),
			.index_gone = true,
		},
	};
	ret = bfs_key_entry(mem, src, &sdir, &sname, &is_dir);
	if (ret == 0 && is_dir) {
		ret = bfs_key_entry(mem, dst, &ddir, &dname, &is_dir);
	}
	if (ret == 0 && !is_dir) {
		ret = EINVAL;
	}
	if (ret == 0) {
		/* The new marker: an empty staging file, put as mkdir's is. */
		ret = bfs_wb_stage_new(wb, mem, &fd, &h->copy.staging);
	}
	if (ret != 0) {
		return ret;
	}
	close(fd);
	path = bfs_stage_path(mem, wb, h->copy.staging);
	if (path != NULL) {
		/* Its time says when it was closed (bfs_wb_put_young). */
		bfs_priv_enter();
		(void)utimensat(AT_FDCWD, path, NULL, 0);
		bfs_priv_leave();
	}
	h->sdir = sdir;
	h->sname = sname;
	h->ddir = ddir;
	h->dname = dname;
	return 0;
}

int bfs_wb_rename_hand_over(struct bfs_wb *wb, TALLOC_CTX *mem_ctx,
			    const char *src, const char *src_etag,
			    const char *dst, uint64_t size, time_t mtime,
			    pid_t engine, char **from)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_wb_handing h;
	int ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	ret = bfs_wb_handing_file(&h, tmp, engine, src, src_etag, dst, size,
				  mtime);
	if (ret == 0) {
		ret = bfs_wb_hand_over_one(wb, &h);
	}
	if (ret == 0 && from != NULL) {
		*from = talloc_strdup(mem_ctx, h.copy.src);
	}
	talloc_free(tmp);
	return ret;
}

int bfs_wb_marker_hand_over(struct bfs_wb *wb, const char *src,
			    const char *dst, pid_t engine)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_wb_handing h;
	int ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	ret = bfs_wb_handing_marker(wb, &h, tmp, engine, src, dst);
	if (ret != 0) {
		talloc_free(tmp);
		return ret;
	}
	ret = bfs_wb_hand_over_one(wb, &h);
	if (ret != 0 && !h.undo_failed) {
		bfs_wb_stage_drop(wb, h.copy.staging);
	}
	talloc_free(tmp);
	return ret;
}

void bfs_wb_hand_over_many(struct bfs_wb *wb, struct bfs_wb_move *moves,
			   size_t n, pid_t engine)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_wb_handing *hs = NULL, **hp = NULL;
	size_t i;

	if (tmp != NULL) {
		hs = talloc_zero_array(tmp, struct bfs_wb_handing, n);
		hp = talloc_array(tmp, struct bfs_wb_handing *, n);
	}
	if (hs == NULL || hp == NULL) {
		for (i = 0; i < n; i++) {
			moves[i].ret = ENOMEM;
		}
		talloc_free(tmp);
		return;
	}
	for (i = 0; i < n; i++) {
		struct bfs_wb_move *m = &moves[i];
		size_t len = strlen(m->src);
		int ret = len > 0 && m->src[len - 1] == '/' ?
			bfs_wb_handing_marker(wb, &hs[i], tmp, engine,
					      m->src, m->dst) :
			bfs_wb_handing_file(&hs[i], tmp, engine, m->src,
					    m->src_etag, m->dst, m->size,
					    m->mtime);

		hs[i].ret = ret;
		hp[i] = &hs[i];
	}
	bfs_wb_hand_over_batch(wb, hp, n);
	for (i = 0; i < n; i++) {
		moves[i].ret = hs[i].ret;
		if (hs[i].marker && hs[i].ret != 0 && !hs[i].undo_failed &&
		    hs[i].copy.staging != NULL) {
			bfs_wb_stage_drop(wb, hs[i].copy.staging);
		}
	}
	talloc_free(tmp);
}

/*
 * Set key's index entry as its journal record has it now: a newer change
 * overtook ours between our check and our index update (see
 * bfs_wb_index_newer).
 */
static void bfs_wb_index_as_journalled(struct bfs_wb *wb, const char *key)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec cur;
	char *dir, *name;
	struct bfs_entry e;

	if (tmp == NULL || bfs_journal_get(wb->j, tmp, key, &cur) != 0) {
		talloc_free(tmp);
		return;
	}
	if (cur.op == BFS_J_PUT) {
		bfs_wb_index_newer(wb, key);
	} else if (cur.op == BFS_J_DELETE && cur.index_gone) {
		bfs_wb_index_key(wb, key, bfs_index_remove_pending, "remove");
	} else if (cur.op == BFS_J_COPY && cur.index_gone &&
		   bfs_key_split(tmp, key, &dir, &name) == 0 &&
		   bfs_index_lookup(wb->idx, tmp, dir, name, &e) == 0) {
		e.etag = cur.src_etag;
		e.size = cur.size;
		e.flags |= BFS_ENT_PENDING;
		if (bfs_index_put(wb->idx, dir, &e) != 0) {
			bfs_wb_forget_dir(wb, dir);
		}
	}
	talloc_free(tmp);
}

/* Remove rec, a copy, only while it is key's record, exactly. */
static int bfs_wb_copy_drop_txn(struct bfs_journal_txn *t, void *priv)
{
	const struct bfs_jrec *rec = priv;
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec cur;
	int ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	ret = bfs_journal_txn_read(t, tmp, rec->key, &cur);
	if (ret == 0 && !bfs_jrec_same(&cur, rec)) {
		ret = ESTALE;
	}
	if (ret == 0) {
		ret = bfs_journal_txn_remove(t, rec->key);
	}
	talloc_free(tmp);
	return ret == ENOENT ? ESTALE : ret;
}

/*
 * 0 once rec is gone from the journal; ESTALE if another change of its
 * key replaced it (by op and pid alone, a rename onto the name made
 * since, another copy in the engine's name, was dropped with it, and the
 * renamed file's bytes with its source's delete).
 */
static int bfs_wb_copy_done(struct bfs_wb *wb, const struct bfs_jrec *rec)
{
	return bfs_journal_atomically(wb->j, bfs_wb_copy_drop_txn,
				      (void *)rec);
}

/* Whether rec, a copy, is still key's record. */
static bool bfs_wb_copy_still_ours(struct bfs_wb *wb,
				   const struct bfs_jrec *rec)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec cur;
	bool ours = tmp != NULL &&
		    bfs_journal_get(wb->j, tmp, rec->key, &cur) == 0 &&
		    bfs_jrec_same(&cur, rec);

	talloc_free(tmp);
	return ours;
}

/*
 * A rename's copy that cannot be made (why, for the log): S3 refuses it
 * for good (AccessDenied: a policy, a KMS key the engine may not use), or
 * no longer has the version renamed (replaced or removed by another
 * client of the bucket).  Given up, as a refused delete is, instead of
 * tried for ever with the file hidden under its old name: the client was
 * told it was renamed; the file goes back to its old name, which shows
 * what S3 has there, with a log line, and the old name's delete is
 * dropped (it would delete the other client's file).
 */
static void bfs_wb_copy_given_up(struct bfs_wb *wb, TALLOC_CTX *tmp,
				 const struct bfs_jrec *r, const char *why)
{
	struct bfs_entry e;
	struct bfs_jrec del;
	char *sdir, *sname, *ddir, *dname;

	bool back = bfs_journal_get(wb->j, tmp, r->src, &del) == 0 &&
		    del.op == BFS_J_DELETE && del.index_gone &&
		    del.src == NULL;

	if (!back) {
		/* A new file of the old name since: it stays; the renamed
		 * one has no name S3 lets us give it. */
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot copy %s to %s (%s) "
			"and %s was written again since: the rename is given "
			"up", r->src, r->key, why, r->src);
		if (bfs_wb_split_pair(tmp, r->src, r->key, &sdir, &sname,
				      &ddir, &dname) == 0 &&
		    bfs_index_lookup(wb->idx, tmp, ddir, dname, &e) == 0 &&
		    (e.flags & BFS_ENT_PENDING) && e.etag != NULL &&
		    strcmp(e.etag, r->src_etag) == 0) {
			bfs_wb_index_remove_key(wb, r->key);
		}
		if (bfs_wb_copy_done(wb, r) != 0) {
			bfs_log(BFS_LOG_ERR, "bucketfs: cannot drop the "
				"refused copy to %s from the journal", r->key);
		}
		return;
	}
	bfs_log(BFS_LOG_ERR, "bucketfs: cannot copy %s to %s (%s): the "
		"rename is given up and the file shows under its old name "
		"again", r->src, r->key, why);
	if (bfs_journal_done_op(wb->j, r->src, del.pid, BFS_J_DELETE) != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot drop the delete of %s "
			"from the journal", r->src);
	}
	if (bfs_wb_split_pair(tmp, r->src, r->key, &sdir, &sname, &ddir,
			      &dname) != 0) {
		return;
	}
	if (bfs_index_lookup(wb->idx, tmp, ddir, dname, &e) == 0 &&
	    (e.flags & BFS_ENT_PENDING) && e.etag != NULL &&
	    strcmp(e.etag, r->src_etag) == 0 &&
	    bfs_index_rename(wb->idx, ddir, dname, sdir, sname) == 0 &&
	    bfs_index_lookup(wb->idx, tmp, sdir, sname, &e) == 0) {
		e.flags &= ~BFS_ENT_PENDING;
		if (bfs_index_put(wb->idx, sdir, &e) != 0) {
			bfs_wb_forget_dir(wb, sdir);
		}
	} else {
		bfs_wb_forget_dir(wb, ddir);
	}
	bfs_wb_index_key(wb, r->src, bfs_index_clear_pending,
			 "clear the delete mark of");
	bfs_wb_forget_dir(wb, sdir);
	if (bfs_wb_copy_done(wb, r) != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot drop the refused copy "
			"to %s from the journal", r->key);
	}
}

/*
 * The index step of a hand-over whose smbd died after journalling it
 * (bfs_wb_rename_hand_over's step 2), made now: src's entry, the version
 * renamed and still src's in the index, under its delete record, moves to
 * r->key, pending.  Any other state: the hand-over's own, or a change
 * since, which shows already.
 */
static void bfs_wb_handed_index(struct bfs_wb *wb, TALLOC_CTX *tmp,
				const struct bfs_jrec *r)
{
	char *sdir, *sname, *ddir, *dname;
	struct bfs_entry e;
	struct bfs_jrec del;

	if (bfs_wb_split_pair(tmp, r->src, r->key, &sdir, &sname, &ddir,
			      &dname) != 0) {
		return;
	}
	if (bfs_index_lookup(wb->idx, tmp, ddir, dname, &e) == 0 &&
	    (e.flags & BFS_ENT_PENDING) && e.etag != NULL &&
	    strcmp(e.etag, r->src_etag) == 0) {
		return; /* moved by the hand-over */
	}
	if (bfs_journal_get(wb->j, tmp, r->src, &del) != 0 ||
	    del.op != BFS_J_DELETE || !del.index_gone || del.src != NULL ||
	    bfs_index_lookup(wb->idx, tmp, sdir, sname, &e) != 0 ||
	    (e.flags & BFS_ENT_PENDING) || e.etag == NULL ||
	    strcmp(e.etag, r->src_etag) != 0) {
		return;
	}
	if (bfs_index_rename_pending(wb->idx, sdir, sname, ddir, dname) != 0) {
		bfs_wb_forget_dir(wb, sdir);
		bfs_wb_forget_dir(wb, ddir);
		return;
	}
	bfs_log(BFS_LOG_INFO, "bucketfs: the rename of %s to %s, journalled by "
		"a process that died before it showed it, shows now", r->src,
		r->key);
}

/*
 * A rename handed to the engine (bfs_wb_rename_hand_over): copy src to
 * key, then settle key's entry with the copy's ETag.  src's delete is a
 * record of its own, which waits for this one.
 */
static int bfs_wb_run_handed_copy(struct bfs_wb *wb, struct bfs_jrec *r,
				  struct s3_status *st)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	char *etag = NULL, *dir, *name;
	int ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	bfs_wb_handed_index(wb, tmp, r);
	ret = bfs_wb_copy_key(wb, r->src, r->key, r->size, r->src_etag, tmp,
			      &etag, st);
	if ((ret == ENOENT || ret == ESTALE ||
	     (ret != 0 && strcmp(st->code, "AccessDenied") == 0)) &&
	    bfs_wb_copy_still_ours(wb, r)) {
		/*
		 * Not ours to have deleted or changed: its delete, and our
		 * own writes of that name, wait for us; another client of
		 * the bucket did (another version is not the file the client
		 * renamed).  Or refused for good.
		 */
		bfs_wb_copy_given_up(wb, tmp, r,
				     ret == ENOENT ? "S3 no longer has it" :
				     ret == ESTALE ? "replaced in S3 by another "
						     "client" :
						     "S3 refuses: AccessDenied");
		talloc_free(tmp);
		return 0;
	}
	if (ret != 0) {
		talloc_free(tmp);
		return ret;
	}
	if (!bfs_wb_copy_still_ours(wb, r)) {
		/*
		 * The new name changed meanwhile (written, deleted, renamed
		 * over or away): that change follows ours in S3, and the
		 * index shows it already.
		 */
		talloc_free(tmp);
		return 0;
	}
	/*
	 * Only the entry the hand-over made: a change of the name since
	 * (whose record replaced ours after the look above) has its own,
	 * which an unconditional update covered until the repair below
	 * (the soak read a renamed-over checkpoint at the copy's size).
	 */
	ret = bfs_key_split(tmp, r->key, &dir, &name);
	if (ret == 0) {
		/* No ETag in the answer: no longer pending all the same (a
		 * pending entry is kept by every listing), and listed anew. */
		ret = bfs_index_settle(wb->idx, dir, name, r->src_etag,
				       etag != NULL ? etag : r->src_etag);
		if (ret == 0 && etag == NULL) {
			bfs_wb_forget_parent(wb, r->key);
		}
	}
	if (ret != 0 && ret != ESTALE && ret != ENOENT) {
		/* S3 has it: the next listing shows it. */
		bfs_log(BFS_LOG_ERR, "bucketfs: cannot show the renamed %s in "
			"the index: %s", r->key, strerror(ret));
		bfs_wb_forget_parent(wb, r->key);
	} else if (ret != 0) {
		/*
		 * Not the entry the hand-over makes: a change since (which
		 * a listing keeps, pending), or a hand-over whose smbd died
		 * before it told the index (it shows what was there before).
		 * The next listing shows what S3 has now.
		 */
		bfs_wb_forget_parent(wb, r->key);
	}
	ret = bfs_wb_copy_done(wb, r);
	if (ret == ESTALE) {
		bfs_wb_index_as_journalled(wb, r->key);
		ret = 0;
	}
	talloc_free(tmp);
	return ret;
}

/* Whether key is under prefix (a folder's "a/b/"). */
static bool bfs_key_under(const char *key, const char *prefix)
{
	return key != NULL && strncmp(key, prefix, strlen(prefix)) == 0;
}

static int bfs_wb_keys_add(TALLOC_CTX *mem_ctx, char ***keys, size_t *n,
			   const char *key)
{
	char **k = talloc_realloc(mem_ctx, *keys, char *, *n + 1);

	if (k == NULL) {
		return ENOMEM;
	}
	*keys = k;
	k[*n] = talloc_strdup(k, key);
	if (k[*n] == NULL) {
		return ENOMEM;
	}
	(*n)++;
	return 0;
}

static int bfs_wb_key_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int bfs_wb_dir_changes(struct bfs_wb *wb, TALLOC_CTX *mem_ctx,
		       const char *prefix, pid_t engine,
		       struct bfs_wb_dir_changes *c)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec *recs = NULL;
	size_t nrec = 0, i;
	int ret;

	*c = (struct bfs_wb_dir_changes){0};
	if (tmp == NULL) {
		return ENOMEM;
	}
	ret = bfs_journal_list(wb->j, tmp, &recs, &nrec, NULL);
	for (i = 0; ret == 0 && i < nrec; i++) {
		const struct bfs_jrec *r = &recs[i];
		bool in = r->op != BFS_J_ABORT && bfs_key_under(r->key, prefix);

		if ((r->op == BFS_J_PUT && in && r->open) ||
		    (r->op == BFS_J_ABORT && bfs_key_under(r->src, prefix))) {
			/* Still being written (a streamed one: its parts). */
			c->busy = talloc_strdup(mem_ctx, r->op == BFS_J_PUT ?
							 r->key : r->src);
			ret = c->busy != NULL ? EBUSY : ENOMEM;
			break;
		}
		if (r->op == BFS_J_PUT && in && r->pid == engine &&
		    engine != 0 && r->last_error == 0 && r->src == NULL &&
		    (r->started || r->upload_id == NULL)) {
			ret = bfs_wb_keys_add(mem_ctx, &c->move, &c->n_move,
					      r->key);
		} else if ((r->op == BFS_J_PUT || r->op == BFS_J_COPY) && in) {
			ret = bfs_wb_keys_add(mem_ctx, &c->wait, &c->n_wait,
					      r->key);
		}
		/* Its old name goes once the change is done: not copied. */
		if (ret == 0 && r->op != BFS_J_ABORT &&
		    bfs_key_under(r->src, prefix)) {
			ret = bfs_wb_keys_add(mem_ctx, &c->skip, &c->n_skip,
					      r->src);
		}
	}
	talloc_free(tmp);
	if (ret == 0 && c->n_skip > 0) {
		qsort(c->skip, c->n_skip, sizeof(c->skip[0]), bfs_wb_key_cmp);
	}
	return ret;
}

int bfs_wb_list_all(struct bfs_wb *wb, TALLOC_CTX *mem_ctx,
		    const char *prefix, size_t max, char ***keys,
		    uint64_t **sizes, char ***etags, time_t **mtimes,
		    size_t *n, struct s3_status *st)
{
	char **out = talloc_array(mem_ctx, char *, 0);
	uint64_t *sz = talloc_array(mem_ctx, uint64_t, 0);
	char **tags = talloc_array(out, char *, 0);
	time_t *times = talloc_array(out, time_t, 0);
	char *token = NULL;
	size_t got = 0, i;
	int ret = 0;

	if (out == NULL || sz == NULL || tags == NULL || times == NULL) {
		talloc_free(out);
		talloc_free(sz);
		return ENOMEM;
	}
	do {
		struct s3_listing *l = NULL;
		struct tevent_req *req = s3_list_send(out, wb->ev, wb->s3,
						      prefix, NULL, token,
						      1000);

		ret = s3_wait_for(req, wb->ev);
		if (ret != 0) {
			break; /* req goes with out */
		}
		ret = s3_list_recv(req, out, &l, st);
		talloc_free(req);
		if (ret != 0) {
			break;
		}
		for (i = 0; i < l->n_objects && got <= max; i++) {
			out = talloc_realloc(mem_ctx, out, char *, got + 1);
			sz = talloc_realloc(mem_ctx, sz, uint64_t, got + 1);
			tags = out != NULL ? talloc_realloc(out, tags, char *,
							    got + 1) : NULL;
			times = out != NULL ? talloc_realloc(out, times, time_t,
							     got + 1) : NULL;
			if (out == NULL || sz == NULL || tags == NULL ||
			    times == NULL) {
				talloc_free(out);
				talloc_free(sz);
				return ENOMEM;
			}
			sz[got] = l->objects[i].size;
			times[got] = l->objects[i].mtime;
			tags[got] = talloc_steal(tags, l->objects[i].etag);
			out[got++] = talloc_steal(out, l->objects[i].key);
		}
		token = l->truncated ? l->next_token : NULL;
	} while (token != NULL && got <= max);
	if (ret != 0) {
		talloc_free(out);
		talloc_free(sz);
		return ret;
	}
	*keys = out;
	if (sizes != NULL) {
		*sizes = sz;
	} else {
		talloc_free(sz);
	}
	if (etags != NULL) {
		*etags = tags; /* a child of *keys */
	}
	if (mtimes != NULL) {
		*mtimes = times; /* a child of *keys */
	}
	*n = got;
	return 0;
}

/* ---- recovery ------------------------------------------------------------------------ */

/*
 * r may be an element of an array (bfs_journal_claim_orphans'), never a
 * talloc parent: what is made here hangs off a context of its own.
 */
static int bfs_wb_recover_put(struct bfs_wb *wb, struct bfs_jrec *r,
			      struct s3_status *st)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	char *path = tmp != NULL ? bfs_stage_path(tmp, wb, r->staging) : NULL;
	struct stat sb;
	int fd = -1, ret = 0;

	if (path == NULL) {
		talloc_free(tmp);
		return ENOMEM;
	}
	if (r->upload_id != NULL) {
		/* The dead process's parts: abort, then upload afresh. */
		struct tevent_req *req = s3_mpu_abort_send(tmp, wb->ev, wb->s3,
							   r->key,
							   r->upload_id);
		if (s3_wait_for(req, wb->ev) == 0) {
			s3_mpu_abort_recv(req, NULL);
		}
		talloc_free(req);
		r->upload_id = NULL;
	}
	/* Started: a rename may no longer retarget it (bfs_wb_retarget). */
	if (!r->started) {
		r->started = true;
		ret = bfs_journal_update(wb->j, r->key, r->pid, r->staging, r);
		if (ret == ESTALE) {
			ret = 0; /* replaced meanwhile: the newer one is due */
			goto out;
		}
		if (ret != 0) {
			goto out;
		}
	}
	bfs_priv_enter();
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	bfs_priv_leave();
	if (fd == -1 || fstat(fd, &sb) != 0) {
		ret = errno;
		goto out;
	}
	if (r->open) {
		/* Journalled while still written (a rename): all of it. */
		r->size = (uint64_t)sb.st_size;
		r->open = false;
	} else if ((uint64_t)sb.st_size < r->size) {
		ret = EIO; /* the staging file lost bytes: keep it for a human */
		goto out;
	}
	ret = bfs_wb_run_upload(wb, r, fd, true, NULL, tmp, NULL, st);
out:
	if (fd != -1) {
		close(fd);
	}
	talloc_free(tmp);
	return ret;
}

static int bfs_wb_run_handed_copy(struct bfs_wb *wb, struct bfs_jrec *r,
				  struct s3_status *st);

static int bfs_wb_recover_copy(struct bfs_wb *wb, struct bfs_jrec *r,
			       struct s3_status *st)
{
	int ret;

	if (r->index_gone) {
		return bfs_wb_run_handed_copy(wb, r, st);
	}
	ret = bfs_wb_copy_key(wb, r->src, r->key, r->size, NULL, NULL, NULL,
			      st);

	if (ret == ENOENT) {
		/* Source gone: the copy was done and the delete too. */
		ret = 0;
	} else if (ret == 0) {
		ret = bfs_wb_delete_key(wb, r->src, st);
	}
	if (ret == 0) {
		TALLOC_CTX *tmp = talloc_new(NULL);
		char *d1, *n1, *d2, *n2;
		if (bfs_key_split(tmp, r->src, &d1, &n1) == 0 &&
		    bfs_key_split(tmp, r->key, &d2, &n2) == 0) {
			/* Let the next access list both from S3. */
			bfs_wb_forget_dir(wb, d1);
			bfs_wb_forget_dir(wb, d2);
		}
		talloc_free(tmp);
		/*
		 * Only the copy: a close of the new name since (in the
		 * engine's name too, when it runs a dead smbd's rename) is
		 * the journal's now, and goes up after us.
		 */
		ret = bfs_journal_done_op(wb->j, r->key, r->pid, BFS_J_COPY);
		ret = ret == ESTALE ? 0 : ret;
	}
	return ret;
}

int bfs_wb_finish(struct bfs_wb *wb, struct bfs_jrec *r, struct s3_status *st)
{
	int ret;

	switch (r->op) {
	case BFS_J_PUT:
		return bfs_wb_recover_put(wb, r, st);
	case BFS_J_COPY:
		return bfs_wb_recover_copy(wb, r, st);
	case BFS_J_ABORT:
		/* Never closed: nothing was promised, drop it all. */
		if (!bfs_wb_abort_mpu(wb, r->src, r->upload_id)) {
			return EIO;
		}
		if (r->staging != NULL) {
			bfs_wb_stage_drop(wb, r->staging);
		}
		ret = bfs_journal_done(wb->j, r->key, r->pid);
		return ret;
	default:
		return bfs_wb_run_delete(wb, r, st);
	}
}

/* The pid in a staging file's name ("w-PID-..." or "l-PID-..."), or 0. */
static pid_t bfs_stage_creator(const char *name)
{
	char *end;
	long pid;

	if ((name[0] != 'w' && name[0] != 'l') || name[1] != '-') {
		return 0;
	}
	pid = strtol(name + 2, &end, 10);
	if (*end != '-' || pid <= 0 || pid > INT32_MAX) {
		return 0;
	}
	return (pid_t)pid;
}

static bool bfs_stage_named(const struct bfs_jrec *recs, size_t n,
			    const char *name)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (recs[i].staging != NULL &&
		    strcmp(recs[i].staging, name) == 0) {
			return true;
		}
	}
	return false;
}

unsigned bfs_wb_sweep_staging(struct bfs_wb *wb)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec *recs = NULL;
	char **dead = NULL;
	size_t n_dead = 0, n = 0, unreadable = 0, i;
	unsigned gone = 0;
	struct dirent *de;
	DIR *d;

	if (tmp == NULL) {
		return 0;
	}
	bfs_priv_enter();
	d = opendir(wb->staging_dir);
	bfs_priv_leave();
	if (d == NULL) {
		talloc_free(tmp);
		return 0;
	}
	/* The folder first, the journal after: what it names then stays. */
	while ((de = readdir(d)) != NULL) {
		pid_t pid = bfs_stage_creator(de->d_name);
		char **more;

		if (pid == 0 || bfs_journal_pid_alive(pid)) {
			continue;
		}
		more = talloc_realloc(tmp, dead, char *, n_dead + 1);
		if (more == NULL) {
			break;
		}
		dead = more;
		dead[n_dead] = talloc_strdup(dead, de->d_name);
		if (dead[n_dead] != NULL) {
			n_dead++;
		}
	}
	closedir(d);
	if (n_dead == 0 ||
	    bfs_journal_list(wb->j, tmp, &recs, &n, &unreadable) != 0) {
		talloc_free(tmp);
		return 0;
	}
	if (unreadable > 0) {
		/* A record it cannot read may name any of them: keep all. */
		bfs_log(BFS_LOG_WARNING, "bucketfs: the journal has %zu "
			"record(s) this version cannot read: staging files of "
			"dead processes are kept", unreadable);
		talloc_free(tmp);
		return 0;
	}
	for (i = 0; i < n_dead; i++) {
		if (!bfs_stage_named(recs, n, dead[i])) {
			bfs_wb_stage_drop(wb, dead[i]);
			gone++;
		}
	}
	if (gone > 0) {
		bfs_log(BFS_LOG_NOTICE, "bucketfs: removed %u staging file(s) "
			"of processes that died with them unjournalled (files "
			"open for writing, never closed or flushed)", gone);
	}
	talloc_free(tmp);
	return gone;
}

static int bfs_wb_str_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int bfs_wb_copy_sources(TALLOC_CTX *mem_ctx, const struct bfs_jrec *recs,
			size_t n, const bool *skip,
			struct bfs_wb_copy_srcs *out)
{
	size_t i;

	*out = (struct bfs_wb_copy_srcs){0};
	for (i = 0; i < n; i++) {
		if (recs[i].op == BFS_J_COPY && (skip == NULL || !skip[i])) {
			out->n++;
		}
	}
	if (out->n == 0) {
		return 0;
	}
	out->keys = talloc_array(mem_ctx, const char *, out->n);
	if (out->keys == NULL) {
		out->n = 0;
		return ENOMEM;
	}
	out->n = 0;
	for (i = 0; i < n; i++) {
		if (recs[i].op == BFS_J_COPY && (skip == NULL || !skip[i])) {
			out->keys[out->n++] = recs[i].src;
		}
	}
	qsort(out->keys, out->n, sizeof(out->keys[0]), bfs_wb_str_cmp);
	return 0;
}

static bool bfs_wb_is_copy_source(const struct bfs_wb_copy_srcs *s,
				  const char *key)
{
	return key != NULL && s->n > 0 &&
	       bsearch(&key, s->keys, s->n, sizeof(s->keys[0]),
		       bfs_wb_str_cmp) != NULL;
}

bool bfs_wb_waits_for_copy(const struct bfs_wb_copy_srcs *s,
			   const struct bfs_jrec *r)
{
	if (r->op == BFS_J_ABORT) {
		return false; /* parts of an upload never closed */
	}
	return bfs_wb_is_copy_source(s, r->key) ||
	       (r->op != BFS_J_COPY && bfs_wb_is_copy_source(s, r->src));
}

int bfs_wb_recover(struct bfs_wb *wb, const char *prefix, unsigned *done,
		   unsigned *failed,
		   void (*log)(void *priv, const struct bfs_jrec *r,
			       const struct s3_status *st),
		   void *priv)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec *recs = NULL;
	size_t n = 0, i;
	int ret;

	bool *over = NULL, *gone = NULL, progress = true;

	*done = *failed = 0;
	ret = bfs_journal_claim_orphans(wb->j, tmp, getpid(), prefix, &recs,
					&n);
	if (ret == 0 && n > 0) {
		over = talloc_zero_array(tmp, bool, n);
		gone = talloc_zero_array(tmp, bool, n);
		ret = over != NULL && gone != NULL ? 0 : ENOMEM;
	}
	/*
	 * In rounds, in the engine's order: a rename's copy before its
	 * source's delete or a new file of that name.  What waits for a copy
	 * that failed stays for the next recovery (gone: done, not a source
	 * to wait for any more).
	 */
	while (ret == 0 && progress) {
		struct bfs_wb_copy_srcs srcs;

		progress = false;
		ret = bfs_wb_copy_sources(tmp, recs, n, gone, &srcs);
		for (i = 0; ret == 0 && i < n; i++) {
			struct s3_status st = {0};
			int r;

			if (over[i] || bfs_wb_waits_for_copy(&srcs, &recs[i])) {
				continue;
			}
			over[i] = true;
			r = bfs_wb_finish(wb, &recs[i], &st);
			if (r == 0) {
				gone[i] = true;
				(*done)++;
				progress = true;
				continue;
			}
			if (recs[i].op != BFS_J_COPY) {
				gone[i] = true;
			}
			st.err = r;
			(*failed)++;
			if (log != NULL) {
				log(priv, &recs[i], &st);
			}
		}
		talloc_free(srcs.keys);
	}
	talloc_free(tmp);
	if (ret == 0) {
		(void)bfs_wb_sweep_staging(wb);
	}
	return ret;
}
