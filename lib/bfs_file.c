/*
 * The bytes of files open through a share (lib/bfs_file.h): the staging
 * table of one connection, writes, and the close and flush that make
 * them durable, by the engine (`bucketfs:close = local`) or here.
 *
 * Ownership: an open (struct bfs_fh) is its connection's child; what
 * hangs off it (staging name, ETags, a stream) is the open's.  Every
 * temporary is on a context of its own, freed before return.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <talloc.h>
#include <tevent.h>

#include "bfs_cache.h"
#include "bfs_claim.h"
#include "bfs_engine.h"
#include "bfs_connect.h"
#include "bfs_file.h"
#include "bfs_index.h"
#include "bfs_journal.h"
#include "bfs_list.h"
#include "bfs_log.h"
#include "bfs_path.h"
#include "bfs_priv.h"
#include "bfs_writeback.h"
#include "s3_ops.h"

/* ---- the staging table: bc->open_files, newest first --------------------- */

static int bfs_fh_destructor(struct bfs_fh *fh)
{
	if (fh->bc != NULL && fh->writable) {
		BFS_LIST_REMOVE(fh->bc->open_files, fh);
	}
	if (fh->stage_fd != -1) {
		close(fh->stage_fd);
		fh->stage_fd = -1;
	}
	return 0;
}

/* Track a file open for writing (renames and unlinks look for it). */
static void bfs_fh_track(struct bfs_conn *bc, struct bfs_fh *fh)
{
	fh->writable = true;
	BFS_LIST_ADD(bc->open_files, fh);
	talloc_set_destructor(fh, bfs_fh_destructor);
}

/* Whether o and fh write the same staging file. */
static bool bfs_fh_same_stage(const struct bfs_fh *o, const struct bfs_fh *fh)
{
	return o->stage_name != NULL && fh->stage_name != NULL &&
	       strcmp(o->stage_name, fh->stage_name) == 0;
}

/*
 * Each change of an open takes the next number of this process (smbd's
 * loop: one thread), so the newest change to a staging file is the
 * greatest number among its opens, and no later change can bring that
 * number back, whoever closes meanwhile.
 */
static uint64_t bfs_change_seq;

uint64_t bfs_fh_write_gen(struct bfs_conn *bc, const struct bfs_fh *fh)
{
	const struct bfs_fh *o;
	uint64_t gen = fh->wgen;

	for (o = bc->open_files; o != NULL; o = o->next) {
		if (o != fh && bfs_fh_same_stage(o, fh) && o->wgen > gen) {
			gen = o->wgen;
		}
	}
	return gen;
}

/* Whether fh's staging file is its own: a stream sees only its writes. */
static bool bfs_fh_stream_alone(struct bfs_conn *bc, struct bfs_fh *fh)
{
	struct bfs_fh *o;

	for (o = bc->open_files; o != NULL; o = o->next) {
		if (o != fh && bfs_fh_same_stage(o, fh)) {
			return false;
		}
	}
	return true;
}

/* fh's bytes are what S3 has: so are those of every open sharing them. */
static void bfs_fh_clean(struct bfs_conn *bc, struct bfs_fh *fh)
{
	struct bfs_fh *o;

	for (o = bc->open_files; o != NULL; o = o->next) {
		if (bfs_fh_same_stage(o, fh)) {
			o->dirty = false;
		}
	}
	fh->dirty = false;
}

struct bfs_fh *bfs_staged_twin(struct bfs_conn *bc, const char *key,
			       const struct bfs_fh *self)
{
	struct bfs_fh *o;

	for (o = bc->open_files; o != NULL; o = o->next) {
		if (o != self && o->stage_fd != -1 && !o->deleted &&
		    strcmp(o->key, key) == 0) {
			return o;
		}
	}
	return NULL;
}

uint64_t bfs_fh_size(const struct bfs_fh *fh)
{
	struct stat sb;

	if (fh->stage_fd != -1 && fstat(fh->stage_fd, &sb) == 0) {
		return (uint64_t)sb.st_size;
	}
	return fh->size;
}

/* ---- the connection's loop and engine ------------------------------------ */

struct bfs_reader *bfs_conn_async_reader(struct bfs_conn *bc,
					 struct tevent_context *ev)
{
	/* A loop that is not smbd's (an SMB1 flush's) goes away after. */
	if (bc->loop_ev != NULL && ev != bc->loop_ev) {
		return NULL;
	}
	if (bc->s3_async == NULL) {
		bc->s3_async = s3_client_new(bc, ev, &bc->cfg);
		bc->reader_async = bc->s3_async == NULL ? NULL :
			bfs_reader_new(bc, ev, bc->s3_async, bc->cache,
				       bc->block_size, true);
		if (bc->reader_async != NULL) {
			bfs_reader_set_memory(bc->reader_async,
					      bc->fetch_memory);
		}
		bc->async_ev = ev;
	}
	return bc->async_ev == ev ? bc->reader_async : NULL;
}

/* ---- streams: parts sent while a new file is written --------------------- */

/* The upload id of a stream: journalled until the close takes it over. */
static void bfs_stream_started(void *private_data, const char *key,
			       const char *upload_id)
{
	struct bfs_fh *fh = private_data;

	bfs_wb_stream_started(fh->bc->wb, key, fh->stage_name, upload_id);
}

/* Start streaming fh's parts on ev (smbd's loop) if fh may. */
static void bfs_fh_stream_start(struct bfs_conn *bc, struct bfs_fh *fh,
				struct tevent_context *ev)
{
	struct bfs_stream_params p = {
		.part_size = bc->upload.part_size,
		.budget = &bc->stream_budget,
		.started = bfs_stream_started,
		.private_data = fh,
	};

	if (!fh->may_stream || fh->stream != NULL || fh->stage_fd == -1) {
		return;
	}
	fh->may_stream = false; /* one try per open */
	if (bfs_conn_async_reader(bc, ev) == NULL) {
		return; /* not smbd's loop: the close uploads it all */
	}
	fh->stream = bfs_stream_new(fh, ev, bc->s3_async, fh->key,
				    fh->stage_fd, &p);
}

void bfs_fh_stream_drop(struct bfs_conn *bc, struct bfs_fh *fh)
{
	TALLOC_CTX *tmp;
	struct bfs_upload_resume r;

	fh->may_stream = false;
	if (fh->stream == NULL) {
		return;
	}
	tmp = talloc_new(fh);
	if (tmp != NULL && bfs_stream_stop(fh->stream, tmp, &r) == 0) {
		bfs_wb_stream_abort(bc->wb, bfs_stream_key(fh->stream),
				    r.upload_id);
	}
	talloc_free(tmp);
	TALLOC_FREE(fh->stream);
}

/* ---- staging ------------------------------------------------------------- */

/*
 * Staging fh, first half: the staging file of a twin (fh is staged then,
 * *fd stays -1), else a new one in *fd and *name, holding the newer bytes
 * of a journalled upload of the key if keep.  *fill: it must still get
 * the object's bytes from S3 (read-modify-write).
 */
static int bfs_fh_stage_begin(struct bfs_conn *bc, struct bfs_fh *fh,
			      bool keep, int *fd, char **name, bool *fill)
{
	struct bfs_fh *twin = bfs_staged_twin(bc, fh->key, fh);
	int ret;

	*fill = false;
	if (twin != NULL) {
		int dfd = dup(twin->stage_fd);

		if (dfd == -1) {
			return errno;
		}
		/* Two writers: the stream would miss this one's writes. */
		bfs_fh_stream_drop(bc, twin);
		fh->stage_fd = dfd;
		fh->stage_name = talloc_strdup(fh, twin->stage_name);
		return 0;
	}
	ret = bfs_wb_stage_new(bc->wb, fh, fd, name);
	if (ret == 0 && keep) {
		/*
		 * A journalled upload of the key (a failed close, one still
		 * running) has newer bytes than S3: start from those.
		 */
		uint64_t size;

		ret = bfs_wb_stage_from_journal(bc->wb, fh->key, *fd, &size);
		if (ret == 0) {
			fh->size = size;
		} else if (ret == ENOENT) {
			*fill = fh->size > 0;
			ret = 0;
		}
	}
	return ret;
}

/*
 * Staging fh, second half: fd and name (from bfs_fh_stage_begin, filled
 * or not) become fh's, or go if ret says the staging failed.
 */
static int bfs_fh_stage_end(struct bfs_conn *bc, struct bfs_fh *fh,
			    bool keep, int fd, char *name, int ret)
{
	if (ret == 0 && fd == -1) {
		return 0; /* a twin's */
	}
	if (ret != 0) {
		if (fd != -1) {
			close(fd);
			bfs_wb_stage_drop(bc->wb, name);
		}
		TALLOC_FREE(name);
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot stage writes "
			"to %s: %s", bc->service, fh->key, strerror(ret));
		return ret == ESTALE ? EIO : ret;
	}
	fh->stage_fd = fd;
	fh->stage_name = name;
	bc->stage_gen++;
	/* New bytes from zero (smbd may create with one open and write
	 * through another): they may go up while written. */
	fh->may_stream = bc->stream_parts && bc->engine == NULL &&
			 (!keep || fh->size == 0) &&
			 bfs_fh_stream_alone(bc, fh);
	return 0;
}

int bfs_fh_stage(struct bfs_conn *bc, struct bfs_fh *fh, bool keep)
{
	struct s3_status st = {0};
	char *name = NULL;
	int fd = -1, ret;
	bool fill;

	if (fh->stage_fd != -1) {
		return 0;
	}
	ret = bfs_fh_stage_begin(bc, fh, keep, &fd, &name, &fill);
	if (ret == 0 && fill) {
		ret = bfs_wb_stage_fill(bc->wb, bc->reader, &fh->obj, fd, &st);
		if ((ret == ENOENT || ret == ESTALE) &&
		    bfs_fh_copy_ended(bc, fh)) {
			/* The engine's copy ended, its source gone with it:
			 * the same bytes, from the new object. */
			st = (struct s3_status){0};
			ret = bfs_wb_stage_fill(bc->wb, bc->reader, &fh->obj,
						fd, &st);
		}
		if (ret != 0) {
			bfs_log_s3(bc, "read-modify-write of", fh->key, &st);
		}
	}
	return bfs_fh_stage_end(bc, fh, keep, fd, name, ret);
}

/*
 * bfs_fh_stage_send: the same on the caller's loop.  One staging at a
 * time per connection (bc->stage_q): two opens of one key must end with
 * one staging file, and the second takes the first's once it is filled.
 * The loop runs other requests during the fill, and some stage at once,
 * outside the queue (an open that truncates, a truncate): a fill that
 * ends after any staging of this connection, after a close journalled
 * newer bytes of the key, or after a rename, is dropped and done again.
 */
#define BFS_STAGE_TRIES 3

struct bfs_fh_stage_state {
	struct tevent_context *ev;
	struct bfs_conn *bc;
	struct bfs_fh *fh;
	struct bfs_reader *r;
	struct tevent_req *turn;	/* our place at the queue's head */
	int fd;
	char *name;		/* on fh, as bfs_wb_stage_new gives it */
	uint64_t gen;		/* bc->stage_gen when the fill began */
	char *key, *etag;	/* fh's object then */
	unsigned tries;
	struct s3_status st;
};

static void bfs_fh_stage_turn(struct tevent_req *subreq);
static void bfs_fh_stage_go(struct tevent_req *req);
static void bfs_fh_stage_filled(struct tevent_req *subreq);

/* Our staging file, filled or half-filled, goes. */
static void bfs_fh_stage_drop_ours(struct bfs_fh_stage_state *s)
{
	if (s->fd != -1) {
		close(s->fd);
		bfs_wb_stage_drop(s->bc->wb, s->name);
		s->fd = -1;
		TALLOC_FREE(s->name);
	}
}

/* Freed half-way (the client went): no half-filled file is left. */
static int bfs_fh_stage_state_destructor(struct bfs_fh_stage_state *s)
{
	bfs_fh_stage_drop_ours(s);
	return 0;
}

/* Done: the next staging of the connection may go. */
static void bfs_fh_stage_finish(struct tevent_req *req, int ret)
{
	struct bfs_fh_stage_state *s = tevent_req_data(req,
					struct bfs_fh_stage_state);

	TALLOC_FREE(s->turn);
	if (!tevent_req_error(req, ret)) {
		tevent_req_done(req);
	}
}

struct tevent_req *bfs_fh_stage_send(TALLOC_CTX *mem_ctx,
				     struct tevent_context *ev,
				     struct bfs_conn *bc, struct bfs_fh *fh)
{
	struct tevent_req *req;
	struct bfs_fh_stage_state *s;

	req = tevent_req_create(mem_ctx, &s, struct bfs_fh_stage_state);
	if (req == NULL) {
		return NULL;
	}
	*s = (struct bfs_fh_stage_state){
		.ev = ev, .bc = bc, .fh = fh, .fd = -1,
		.r = bfs_conn_async_reader(bc, ev),
	};
	if (fh->stage_fd != -1 || s->r == NULL) {
		/* Staged, or not smbd's loop: as bfs_fh_stage does. */
		int ret = bfs_fh_stage(bc, fh, true);

		if (!tevent_req_error(req, ret)) {
			tevent_req_done(req);
		}
		return tevent_req_post(req, ev);
	}
	if (bc->stage_q == NULL) {
		bc->stage_q = tevent_queue_create(bc, "bucketfs staging");
		if (tevent_req_nomem(bc->stage_q, req)) {
			return tevent_req_post(req, ev);
		}
	}
	s->turn = tevent_queue_wait_send(s, ev, bc->stage_q);
	if (tevent_req_nomem(s->turn, req)) {
		return tevent_req_post(req, ev);
	}
	tevent_req_set_callback(s->turn, bfs_fh_stage_turn, req);
	talloc_set_destructor(s, bfs_fh_stage_state_destructor);
	return req;
}

static void bfs_fh_stage_turn(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);

	/* The entry stays at the head (s->turn) until we finish. */
	if (!tevent_queue_wait_recv(subreq)) {
		bfs_fh_stage_finish(req, ENOMEM);
		return;
	}
	bfs_fh_stage_go(req);
}

static void bfs_fh_stage_go(struct tevent_req *req)
{
	struct bfs_fh_stage_state *s = tevent_req_data(req,
					struct bfs_fh_stage_state);
	struct tevent_req *subreq;
	bool fill = false;
	int ret;

	if (s->fh->stage_fd != -1) {
		bfs_fh_stage_finish(req, 0); /* staged by the one before us */
		return;
	}
	ret = bfs_fh_stage_begin(s->bc, s->fh, true, &s->fd, &s->name,
				 &fill);
	if (ret != 0 || !fill) {
		ret = bfs_fh_stage_end(s->bc, s->fh, true, s->fd, s->name,
				       ret);
		s->fd = -1;
		s->name = NULL;
		bfs_fh_stage_finish(req, ret);
		return;
	}
	s->gen = s->bc->stage_gen;
	TALLOC_FREE(s->key);
	TALLOC_FREE(s->etag);
	s->key = talloc_strdup(s, s->fh->obj.key);
	s->etag = s->fh->obj.etag != NULL ?
			  talloc_strdup(s, s->fh->obj.etag) : NULL;
	if (s->key == NULL || (s->fh->obj.etag != NULL && s->etag == NULL)) {
		bfs_fh_stage_finish(req, ENOMEM); /* the destructor drops it */
		return;
	}
	subreq = bfs_wb_stage_fill_send(s, s->ev, s->r, &s->fh->obj, s->fd);
	if (subreq == NULL) {
		bfs_fh_stage_finish(req, ENOMEM);
		return;
	}
	tevent_req_set_callback(subreq, bfs_fh_stage_filled, req);
}

/* Whether what the fill began from changed while it ran. */
static bool bfs_fh_stage_stale(struct bfs_fh_stage_state *s)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec rec;
	bool stale;

	stale = s->bc->stage_gen != s->gen ||
		strcmp(s->fh->obj.key, s->key) != 0 ||
		(s->fh->obj.etag == NULL) != (s->etag == NULL) ||
		(s->etag != NULL && strcmp(s->fh->obj.etag, s->etag) != 0) ||
		tmp == NULL ||
		(bfs_journal_get(s->bc->journal, tmp, s->fh->key, &rec) == 0 &&
		 rec.op == BFS_J_PUT);
	talloc_free(tmp);
	return stale;
}

static void bfs_fh_stage_filled(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_fh_stage_state *s = tevent_req_data(req,
					struct bfs_fh_stage_state);
	int ret = bfs_wb_stage_fill_recv(subreq, &s->st);

	TALLOC_FREE(subreq);
	if ((ret == ENOENT || ret == ESTALE) && s->fh->stage_fd == -1) {
		/*
		 * Filled from a renamed file's old name while the engine
		 * copied it: once the copy ended and the old name went, the
		 * handle moves to the new object, and the check below begins
		 * again from there.
		 */
		(void)bfs_fh_copy_ended(s->bc, s->fh);
	}
	if (s->fh->stage_fd != -1 ||
	    bfs_staged_twin(s->bc, s->fh->key, s->fh) != NULL) {
		/*
		 * A truncate or allocation (staged on the spot, they are
		 * synchronous) got there first: its file is the one.
		 */
		bfs_fh_stage_drop_ours(s);
		bfs_fh_stage_finish(req, bfs_fh_stage(s->bc, s->fh, true));
		return;
	}
	if (bfs_fh_stage_stale(s)) {
		/*
		 * Newer bytes of the key were journalled (a close in this
		 * connection, or another's), or it was renamed: begin again
		 * from what is there now.  Only a few times; then on the spot.
		 */
		bfs_fh_stage_drop_ours(s);
		if (++s->tries < BFS_STAGE_TRIES) {
			bfs_fh_stage_go(req);
			return;
		}
		bfs_fh_stage_finish(req, bfs_fh_stage(s->bc, s->fh, true));
		return;
	}
	if (ret != 0) {
		bfs_log_s3(s->bc, "read-modify-write of", s->fh->key, &s->st);
	}
	ret = bfs_fh_stage_end(s->bc, s->fh, true, s->fd, s->name, ret);
	s->fd = -1;
	s->name = NULL;
	bfs_fh_stage_finish(req, ret);
}

int bfs_fh_stage_recv(struct tevent_req *req)
{
	int ret = s3_req_errno(req);

	tevent_req_received(req);
	return ret;
}

/* Drop fh's staging file unless another open still uses it. */
static void bfs_fh_unstage(struct bfs_conn *bc, struct bfs_fh *fh)
{
	struct bfs_fh *o;

	if (fh->stage_fd == -1) {
		return;
	}
	close(fh->stage_fd);
	fh->stage_fd = -1;
	for (o = bc->open_files; o != NULL; o = o->next) {
		if (o != fh && bfs_fh_same_stage(o, fh)) {
			return;
		}
	}
	if (fh->stage_name != NULL) {
		bfs_wb_stage_drop(bc->wb, fh->stage_name);
	}
}

/* ---- writeback: uploads here, or the engine's ---------------------------- */

/* Last writer wins: say so when S3 changed under a writer. */
/*
 * What a HEAD of key (ret, info) says of an upload about to replace the
 * version opened (open_etag): a warning if S3 has another one or none.
 * Only a warning is at stake; an error other than ENOENT says nothing.
 */
static void bfs_conflict_say(struct bfs_conn *bc, const char *key,
			     const char *open_etag, int ret,
			     const struct s3_object_info *info)
{
	if ((ret != 0 && ret != ENOENT) ||
	    (ret == 0 && info->etag != NULL &&
	     strcmp(info->etag, open_etag) == 0)) {
		return;
	}
	bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: s3://%s/%s changed in "
		"S3 since it was opened for writing (%s); overwriting it: "
		"last writer wins", bc->service, bc->cfg.bucket, key,
		ret == 0 ? "new ETag" : "gone");
}

static void bfs_check_conflict(struct bfs_conn *bc, struct bfs_fh *fh)
{
	struct s3_object_info info = {0};
	struct tevent_req *req;
	TALLOC_CTX *tmp;

	if (fh->open_etag == NULL) {
		return;
	}
	tmp = talloc_new(NULL);
	req = tmp != NULL ? s3_head_object_send(tmp, bc->sync_ev, bc->s3,
						 fh->key) : NULL;
	if (s3_wait_for(req, bc->sync_ev) == 0) {
		bfs_conflict_say(bc, fh->key, fh->open_etag,
				 s3_head_object_recv(req, tmp, &info, NULL),
				 &info);
	}
	talloc_free(tmp);
}

struct bfs_fh_flush_state;
static void bfs_fh_flushes_supersede(struct bfs_conn *bc, const char *key,
				     struct bfs_fh_flush_state *by);
static void bfs_fh_flushes_end(struct bfs_conn *bc, const char *key,
			       const struct bfs_fh_flush_state *by, int ret);
static bool bfs_fh_flush_uploading(struct bfs_conn *bc, const char *key);

int bfs_fh_writeback(struct bfs_conn *bc, struct bfs_fh *fh)
{
	struct s3_status st = {0};
	struct bfs_upload_resume resume, *rp = NULL;
	unsigned streamed = 0, sent = 0;
	char *etag = NULL;
	uint64_t size;
	int ret;

	if (!fh->dirty || fh->deleted || fh->stage_fd == -1) {
		return 0;
	}
	size = bfs_fh_size(fh);
	/* Flushes of the file still uploading here: this upload is newer. */
	bfs_fh_flushes_supersede(bc, fh->key, NULL);
	if (fh->stream != NULL) {
		bfs_stream_counts(fh->stream, &streamed, &sent);
		if (bfs_stream_stop(fh->stream, fh, &resume) == 0) {
			rp = &resume;
		}
		TALLOC_FREE(fh->stream);
	}
	bfs_check_conflict(bc, fh);
	ret = bfs_wb_upload(bc->wb, fh->key, fh->stage_name, fh->stage_fd,
			    size, fh->mtime, rp, fh, &etag, &st);
	if (rp != NULL) {
		bfs_log(BFS_LOG_INFO, "bucketfs: share %s: %s: %u parts of "
			"%" PRIu64 " bytes were sent while it was written (%u "
			"sends)", bc->service, fh->key, streamed,
			resume.part_size, sent);
		/* bfs_stream_stop put them on fh, for us to free. */
		talloc_free((struct s3_part *)resume.parts);
	}
	if (ret != 0) {
		bfs_log_s3(bc, "upload to", fh->key, &st);
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: %s stays in the "
			"journal and in staging file %s; it is retried by the "
			"next smbd that opens the share", bc->service, fh->key,
			fh->stage_name);
		ret = ret == ENOENT ? EIO : ret;
		bfs_fh_flushes_end(bc, fh->key, NULL, ret);
		return ret;
	}
	bfs_log(BFS_LOG_INFO, "bucketfs: share %s: uploaded %s (%" PRIu64
		" bytes)", bc->service, fh->key, size);
	bfs_changed(bc, fh->key);
	bfs_fh_clean(bc, fh);
	fh->size = size;
	fh->etag = etag;
	fh->open_etag = talloc_strdup(fh, etag);
	fh->obj = (struct bfs_object){
		.key = fh->key, .etag = fh->etag, .size = size,
	};
	bfs_cache_make_id(bc->cfg.bucket, fh->key, etag, bc->block_size,
			  &fh->obj.id);
	bfs_fh_flushes_end(bc, fh->key, NULL, 0);
	return 0;
}

/*
 * `close = local`: journal fh's staged bytes (staging file `name`, size
 * bytes) in the engine's name and tell it; the engine uploads them.
 * ENOTSUP where the caller must upload itself (no engine reachable).
 */
static int bfs_hand_over(struct bfs_conn *bc, struct bfs_fh *fh,
			 const char *name, uint64_t size)
{
	pid_t engine;
	int ret;

	/*
	 * A flush of it still uploading here (made while no engine could be
	 * reached) must not end after the engine's newer upload: the caller
	 * uploads itself, which stops that flush first.
	 */
	if (bfs_fh_flush_uploading(bc, fh->key)) {
		bfs_log(BFS_LOG_NOTICE, "bucketfs: share %s: a flush of %s "
			"made while no engine could be reached is still "
			"uploading: this newer upload runs here too and stops "
			"it", bc->service, fh->key);
		return ENOTSUP;
	}
	engine = bfs_engine_now(bc);
	if (engine == 0) {
		return ENOTSUP;
	}
	ret = bfs_wb_hand_over(bc->wb, fh->key, name, size, fh->mtime, engine);
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot journal %s "
			"for the engine: %s; uploading it now", bc->service,
			fh->key, strerror(ret));
		return ENOTSUP;
	}
	if (bfs_engine_notify(bc->engine, fh->key) != 0) {
		/* It died just now: the next one takes the record over. */
		(void)bfs_engine_now(bc);
	}
	bfs_log(BFS_LOG_INFO, "bucketfs: share %s: %s (%" PRIu64 " bytes) "
		"handed to the engine (pid %d)", bc->service, fh->key, size,
		(int)engine);
	return 0;
}

/*
 * A close with `close = local`: the staging file becomes the engine's.
 * ENOTSUP where the close uploads as with `close = s3`: nothing to
 * upload, a stream of parts, another open here still writing the same
 * staging file, or no engine.
 */
static int bfs_fh_close_local(struct bfs_conn *bc, struct bfs_fh *fh)
{
	uint64_t size;
	int ret;

	if (bc->engine == NULL || !fh->dirty || fh->deleted ||
	    fh->stage_fd == -1 || fh->stage_name == NULL ||
	    fh->stream != NULL || bfs_staged_twin(bc, fh->key, fh) != NULL) {
		return ENOTSUP;
	}
	size = bfs_fh_size(fh);
	bfs_follow_config(bc);
	if (bc->writeback_limit > 0) {
		uint64_t pending = 0;

		ret = bfs_wb_pending_bytes(bc->wb, bfs_engine_pid(bc->engine),
					   &pending);
		if (ret == 0 && pending + size > bc->writeback_limit) {
			/* Held back: this close waits for S3 instead. */
			bfs_log(BFS_LOG_NOTICE, "bucketfs: share %s: %" PRIu64
				" bytes wait for upload, over 'bucketfs:"
				"writeback limit': the close of %s uploads it "
				"now", bc->service, pending, fh->key);
			return ENOTSUP;
		}
	}
	ret = bfs_hand_over(bc, fh, fh->stage_name, size);
	if (ret != 0) {
		return ret;
	}
	close(fh->stage_fd);
	fh->stage_fd = -1;
	fh->dirty = false;
	return 0;
}

int bfs_fh_close(struct bfs_conn *bc, struct bfs_fh *fh)
{
	int ret = 0;

	bfs_claim_fh_closed(bc, fh);

	if (fh->writable && bfs_fh_close_local(bc, fh) == ENOTSUP) {
		ret = bfs_fh_writeback(bc, fh);
		bfs_fh_stream_drop(bc, fh);
		if (ret == 0 || fh->deleted) {
			bfs_fh_unstage(bc, fh);
		}
		/* On failure the staging file stays: the journal names it. */
	}
	return ret;
}

/* ---- open ---------------------------------------------------------------- */

int bfs_fh_lookup(TALLOC_CTX *mem_ctx, struct bfs_conn *bc, const char *rel,
		  struct bfs_fh **out)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_entry e;
	int ret;

	*out = NULL;
	if (tmp == NULL) {
		return ENOMEM;
	}
	ret = bfs_lookup_entry(tmp, bc, rel, &e);
	if (ret == 0) {
		*out = bfs_fh_new(mem_ctx, bc, rel, &e);
		ret = *out != NULL ? 0 : ENOMEM;
	}
	talloc_free(tmp);
	return ret;
}

/* A file created through the share: in the index at once, pending. */
static int bfs_create(struct bfs_conn *bc, const char *rel,
		      struct bfs_fh **out)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_entry e = {0};
	struct bfs_fh *fh = NULL;
	const char *base = NULL;
	char *parent = NULL, *prefix;
	int ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	bfs_path_split(tmp, rel, &parent, &base);
	ret = parent != NULL ? bfs_fh_lookup(tmp, bc, parent, &fh) : ENOMEM;
	if (ret == 0 && !fh->is_dir) {
		ret = ENOTDIR;
	}
	if (ret == 0 && (base[0] == '\0' || strlen(base) > 255)) {
		ret = base[0] == '\0' ? EINVAL : ENAMETOOLONG;
	}
	prefix = ret == 0 ? bfs_path_dir_prefix(tmp, bc->prefix, parent) :
			    NULL;
	if (ret == 0 && prefix == NULL) {
		ret = ENOMEM;
	}
	if (ret != 0) {
		talloc_free(tmp);
		return ret;
	}
	e.name = (char *)base;
	bfs_meta_now(&e.meta);
	e.mtime = e.meta.mtime.tv_sec;
	e.flags = BFS_ENT_PENDING;
	/*
	 * Only if the name is still free, decided in one index transaction:
	 * of several clients creating one name at once (smbds of this
	 * gateway), one creates it and the others find it (EEXIST), as on
	 * a disk.  Checking with the lookup above alone let each create it.
	 */
	ret = bfs_index_put_new(bc->index, prefix, &e);
	if (ret == EEXIST) {
		talloc_free(tmp);
		return ret;
	}
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot record the "
			"new file %s%s in the index: %s%s", bc->service, prefix,
			base, strerror(ret), ret == ENOSPC ?
			" (the cache folder is full)" : "");
		talloc_free(tmp);
		return ret;
	}
	fh = bfs_fh_new(bc, bc, rel, &e);
	talloc_free(tmp);
	if (fh == NULL) {
		return ENOMEM;
	}
	*out = fh;
	return 0;
}

/* Tries of bfs_open_pending at the staging file before it gives up. */
#define BFS_OPEN_PENDING_TRIES 5

/* fh's ETag (and size) the index has now: its upload ended since. */
static void bfs_fh_settle(struct bfs_conn *bc, struct bfs_fh *fh,
			  const struct bfs_entry *e)
{
	fh->etag = talloc_strdup(fh, e->etag);
	fh->size = e->size;
	fh->mtime = e->mtime;
	fh->obj.key = fh->key;
	fh->obj.etag = fh->etag;
	fh->obj.size = fh->size;
	bfs_cache_make_id(bc->cfg.bucket, fh->key, fh->etag, bc->block_size,
			  &fh->obj.id);
	fh->pending = false;
}

/*
 * A file renamed while S3 had it, the rename handed to the engine and its
 * copy not yet done: its bytes are read from the old name, at the version
 * renamed (the same cache blocks).  The copy's ETag is another: once it
 * is done, bfs_fh_copy_ended moves the reader over.
 */
static int bfs_fh_follow_copy(struct bfs_conn *bc, struct bfs_fh *fh)
{
	TALLOC_CTX *tmp;
	struct bfs_jrec rec;
	char *src;

	if (!fh->pending || fh->etag == NULL || fh->is_dir) {
		return 0;
	}
	tmp = talloc_new(NULL);
	if (tmp == NULL) {
		return ENOMEM;
	}
	if (bfs_journal_get(bc->journal, tmp, fh->key, &rec) == 0 &&
	    rec.op == BFS_J_COPY && rec.index_gone && rec.src_etag != NULL &&
	    strcmp(rec.src_etag, fh->etag) == 0) {
		src = talloc_strdup(fh, rec.src);
		if (src == NULL) {
			talloc_free(tmp);
			return ENOMEM;
		}
		fh->obj.key = src;
		bfs_cache_make_id(bc->cfg.bucket, src, fh->etag,
				  bc->block_size, &fh->obj.id);
	}
	talloc_free(tmp);
	return 0;
}

bool bfs_fh_copy_ended(struct bfs_conn *bc, struct bfs_fh *fh)
{
	TALLOC_CTX *tmp;
	struct bfs_entry e;
	char *dir, *name;
	bool ended = false;

	if (fh->obj.key == fh->key || fh->stage_fd != -1) {
		return false; /* not reading another name's object */
	}
	tmp = talloc_new(NULL);
	if (tmp != NULL && bfs_key_split(tmp, fh->key, &dir, &name) == 0 &&
	    bfs_index_lookup(bc->index, tmp, dir, name, &e) == 0 &&
	    !(e.flags & BFS_ENT_PENDING) && e.etag != NULL &&
	    e.size == fh->size && e.mtime == fh->mtime) {
		/* (Size and time: the copy's, not a new file's of the name.) */
		bfs_fh_settle(bc, fh, &e);
		ended = true;
	}
	talloc_free(tmp);
	return ended;
}

/*
 * A file whose upload has not ended (its entry has no ETag yet): read its
 * staging file meanwhile.  Never from S3: S3 has the version before it,
 * and without an ETag to ask for, a read there served those bytes (and
 * cached them where the next version without an ETag found them: the soak
 * read a checkpoint back with another's bytes).  The upload may end while
 * we look (the engine drops the record, then the file): the index then has
 * the ETag, which is the version to read.  0, or ESTALE if its close is
 * journalled but neither the staging file nor an ETag could be had.
 */
static int bfs_open_pending(struct bfs_conn *bc, struct bfs_fh *fh)
{
	struct bfs_fh *twin = bfs_staged_twin(bc, fh->key, fh);
	TALLOC_CTX *tmp;
	struct bfs_jrec rec;
	struct bfs_entry e;
	char *path, *dir, *name;
	int tries, ret = ESTALE;
	bool recorded = false;

	if (twin != NULL) {
		fh->stage_fd = dup(twin->stage_fd);
		return fh->stage_fd != -1 ? 0 : errno;
	}
	if (fh->etag != NULL) {
		return 0; /* settled in S3: another process stages nothing */
	}
	tmp = talloc_new(NULL);
	if (tmp == NULL || bfs_key_split(tmp, fh->key, &dir, &name) != 0) {
		talloc_free(tmp);
		return ENOMEM;
	}
	for (tries = 0; tries < BFS_OPEN_PENDING_TRIES; tries++) {
		if (tries > 0) {
			usleep(1000 * tries); /* a rename's two steps, say */
		}
		recorded = bfs_journal_get(bc->journal, tmp, fh->key,
					   &rec) == 0 && rec.op == BFS_J_PUT;
		if (recorded) {
			path = talloc_asprintf(tmp, "%s/staging/%s",
					       bc->cache_dir, rec.staging);
			bfs_priv_enter(); /* staging files are the server's */
			fh->stage_fd = path ? open(path, O_RDONLY | O_CLOEXEC |
						    O_NOFOLLOW) : -1;
			bfs_priv_leave();
			if (fh->stage_fd != -1) {
				ret = 0;
				break;
			}
		}
		ret = bfs_index_lookup(bc->index, tmp, dir, name, &e);
		if (ret == 0 && !(e.flags & BFS_ENT_PENDING)) {
			/* Uploaded; or an object S3 listed without an
			 * ETag, read as S3 has it, as before. */
			if (e.etag != NULL) {
				bfs_fh_settle(bc, fh, &e);
			}
			break;
		}
		ret = ret == 0 ? ESTALE : ret;
		if (ret == ENOENT) {
			break; /* deleted meanwhile */
		}
	}
	talloc_free(tmp);
	if (ret == ESTALE && !recorded) {
		/*
		 * No close of it yet: a file another client is writing (made
		 * by an O_CREAT open).  Its entry's size is what there is to
		 * read, as before: nothing was promised.
		 */
		return 0;
	}
	if (ret == ESTALE) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: %s is being uploaded "
			"but neither its staging file nor its ETag could be "
			"found: not read from S3, which has an older version",
			bc->service, fh->key);
	}
	return ret;
}

int bfs_fh_open(struct bfs_conn *bc, const char *rel, int flags,
		bool pathref, struct bfs_fh **out)
{
	struct bfs_fh *fh = NULL;
	bool created = false;
	int ret, acc = flags & O_ACCMODE;

	ret = bfs_fh_lookup(bc, bc, rel, &fh);
	if (ret == ENOENT && (flags & O_CREAT)) {
		ret = bfs_create(bc, rel, &fh);
		created = ret == 0;
		if (ret == EEXIST && !(flags & O_EXCL)) {
			/* Made by another client meanwhile: open theirs. */
			ret = bfs_fh_lookup(bc, bc, rel, &fh);
		}
	} else if (ret == 0 && (flags & O_CREAT) && (flags & O_EXCL)) {
		ret = EEXIST;
	}
	if (ret == 0 && fh->is_dir && acc != O_RDONLY) {
		ret = EISDIR;
	}
	if (ret == 0 && (flags & O_DIRECTORY) && !fh->is_dir) {
		ret = ENOTDIR;
	}
	if (ret != 0) {
		TALLOC_FREE(fh);
		return ret;
	}
	talloc_set_destructor(fh, bfs_fh_destructor);
	if (!created && !(flags & O_TRUNC) && !pathref) {
		ret = bfs_fh_follow_copy(bc, fh);
	}
	if (ret != 0) {
		/* as below */
	} else if (!fh->is_dir && (acc != O_RDONLY || created)) {
		bfs_fh_track(bc, fh);
		if (!created) {
			fh->open_etag = talloc_strdup(fh, fh->etag);
		}
		if (created || (flags & O_TRUNC)) {
			/* New bytes from zero: nothing to fetch first. */
			fh->size = 0;
			ret = bfs_fh_stage(bc, fh, false);
			if (ret == 0 && (flags & O_TRUNC) &&
			    ftruncate(fh->stage_fd, 0) != 0) {
				ret = errno;
			}
			fh->dirty = true;
		}
	} else if (!fh->is_dir && !pathref) {
		/*
		 * Read-your-writes: staged bytes win over S3's.  Only an open
		 * that reads needs them; a listing opens every entry as a
		 * path reference and must not pay for this.
		 */
		ret = bfs_open_pending(bc, fh);
	}
	if (ret != 0) {
		TALLOC_FREE(fh);
		return ret;
	}
	*out = fh;
	return 0;
}

/* ---- writes -------------------------------------------------------------- */

/* The writable open fh, staged (fetching the old bytes if keep). */
static int bfs_fh_for_write(struct bfs_conn *bc, struct bfs_fh *fh, bool keep)
{
	if (fh == NULL || fh->is_dir || !fh->writable) {
		return fh == NULL ? EBADF : fh->is_dir ? EISDIR : EBADF;
	}
	return bfs_fh_stage(bc, fh, keep);
}

/*
 * A file may not grow past 'bucketfs:max file size' (S3's 5 TiB at
 * most): a client setting its end to 2 TiB would otherwise have 2 TiB of
 * zeros uploaded.
 */
static bool bfs_fh_may_grow_to(struct bfs_conn *bc, const struct bfs_fh *fh,
			       uint64_t end)
{
	if (end <= bc->max_file_size) {
		return true;
	}
	bfs_log(BFS_LOG_ERR, "bucketfs: share %s: %s would be %" PRIu64
		" bytes, over 'bucketfs:max file size' (%" PRIu64 "): "
		"refused as disk full", bc->service, fh->key, end,
		bc->max_file_size);
	return false;
}

/* fh changed now (a write, a truncate): a flush's snapshot is older. */
static void bfs_fh_changed(struct bfs_fh *fh, bool mtime)
{
	fh->dirty = true;
	fh->wgen = ++bfs_change_seq;
	if (mtime) {
		fh->mtime = time(NULL);
	}
}

/* What a write must pass before its bytes go to the staging file. */
static int bfs_fh_write_check(struct bfs_conn *bc, struct bfs_fh *fh,
			      size_t n, off_t offset)
{
	int ret = bfs_fh_for_write(bc, fh, true);

	if (ret != 0) {
		return ret;
	}
	if (offset < 0) {
		return EINVAL;
	}
	if (!bfs_fh_may_grow_to(bc, fh, (uint64_t)offset + n)) {
		return ENOSPC;
	}
	return 0;
}

/* What a write of the staging file did (w bytes, or err). */
static int bfs_fh_write_result(struct bfs_conn *bc, struct bfs_fh *fh,
			       off_t offset, ssize_t w, int err)
{
	if (w < 0) {
		if (err == ENOSPC || err == EDQUOT) {
			bfs_log(BFS_LOG_ERR, "bucketfs: share %s: the cache "
				"folder is full: cannot stage a write to %s",
				bc->service, fh->key);
		}
		return err != 0 ? err : EIO;
	}
	bfs_fh_changed(fh, true);
	if (fh->stream != NULL) {
		bfs_stream_wrote(fh->stream, (uint64_t)offset, (uint64_t)w);
	}
	return 0;
}

int bfs_fh_write(struct bfs_conn *bc, struct bfs_fh *fh, const void *data,
		 size_t n, off_t offset, struct tevent_context *ev,
		 size_t *done)
{
	ssize_t w;
	int ret = bfs_fh_write_check(bc, fh, n, offset);

	if (ret != 0) {
		return ret;
	}
	if (fh->may_stream) {
		/* Parts go out on smbd's own loop, between SMB requests. */
		bfs_fh_stream_start(bc, fh, ev);
	}
	w = pwrite(fh->stage_fd, data, n, offset);
	ret = bfs_fh_write_result(bc, fh, offset, w, errno);
	if (ret == 0) {
		*done = (size_t)w;
	}
	return ret;
}

int bfs_fh_write_begin(struct bfs_conn *bc, struct bfs_fh *fh, size_t n,
		       off_t offset, int *fd)
{
	int ret = bfs_fh_write_check(bc, fh, n, offset);

	if (ret != 0) {
		return ret;
	}
	if (fh->may_stream || fh->stream != NULL) {
		/* Its parts must see the writes in order: bfs_fh_write. */
		return EAGAIN;
	}
	/* The caller's own: fh's may be closed or replaced meanwhile. */
	*fd = fcntl(fh->stage_fd, F_DUPFD_CLOEXEC, 0);
	return *fd == -1 ? errno : 0;
}

int bfs_fh_write_end(struct bfs_conn *bc, struct bfs_fh *fh, off_t offset,
		     ssize_t written, int err)
{
	return bfs_fh_write_result(bc, fh, offset, written, err);
}

int bfs_fh_truncate(struct bfs_conn *bc, struct bfs_fh *fh, uint64_t size)
{
	/* Cutting to zero needs none of the old bytes. */
	int ret = bfs_fh_for_write(bc, fh, size > 0);

	if (ret != 0) {
		return ret;
	}
	if (!bfs_fh_may_grow_to(bc, fh, size)) {
		return ENOSPC;
	}
	if (ftruncate(fh->stage_fd, (off_t)size) != 0) {
		return errno;
	}
	if (fh->stream != NULL) {
		bfs_stream_truncated(fh->stream, size);
	}
	bfs_fh_changed(fh, true);
	return 0;
}

int bfs_fh_allocate(struct bfs_conn *bc, struct bfs_fh *fh, uint64_t offset,
		    uint64_t len)
{
	int ret = bfs_fh_for_write(bc, fh, true);

	if (ret != 0) {
		return ret;
	}
	if (!bfs_fh_may_grow_to(bc, fh, offset + len)) {
		return ENOSPC;
	}
	if (offset + len > bfs_fh_size(fh)) {
		if (ftruncate(fh->stage_fd, (off_t)(offset + len)) != 0) {
			return errno;
		}
		if (fh->stream != NULL) {
			bfs_stream_truncated(fh->stream, offset + len);
		}
		bfs_fh_changed(fh, false); /* no bytes written: mtime stays */
	}
	return 0;
}

/* ---- flush --------------------------------------------------------------- */

int bfs_fh_flush_hand_over(struct bfs_conn *bc, struct bfs_fh *fh,
			   TALLOC_CTX *mem_ctx, char **snapshot, bool *here)
{
	uint64_t size = bfs_fh_size(fh);
	int ret;

	*here = false;
	ret = bfs_wb_stage_copy(bc->wb, mem_ctx, fh->stage_fd, size, snapshot,
				NULL);
	if (ret == 0) {
		ret = bfs_hand_over(bc, fh, *snapshot, size);
	}
	if (ret == ENOTSUP) {
		*here = true;
		return bfs_fh_writeback(bc, fh);
	}
	return ret;
}

int bfs_fh_flushed(struct bfs_conn *bc, struct bfs_fh *fh, int ret,
		   uint64_t wgen, const char *snapshot, char *etag)
{
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: flush of %s: the "
			"engine's upload failed: %s (it stays journalled and "
			"is retried)", bc->service, fh->key, strerror(ret));
		return ret == EPIPE ? EIO : ret;
	}
	/* Nothing written since the snapshot: the file is what S3 has. */
	if (snapshot != NULL && bfs_fh_write_gen(bc, fh) == wgen) {
		bfs_fh_clean(bc, fh);
		if (etag != NULL) {
			fh->etag = talloc_steal(fh, etag);
			fh->open_etag = talloc_strdup(fh, etag);
		}
	}
	return 0;
}

/*
 * An SMB flush without an engine (`close = s3`).  On smbd's loop the
 * upload runs there, through the connection's S3 client on that loop:
 * the client's other requests (reads, an ECHO) are answered while S3
 * takes the bytes.  It uploads a snapshot of the staging file, as a flush
 * through the engine does, since the client may go on writing meanwhile.
 * The close waits for it (smbd holds a close back while the file has a
 * flush outstanding), and finds the file clean if nothing came since.
 */
struct bfs_fh_flush_state {
	struct bfs_fh_flush_state *prev, *next;	/* in bfs_flushes */
	struct tevent_req *req;
	struct tevent_context *ev;
	struct bfs_conn *bc;
	struct bfs_fh *fh;
	uint64_t wgen;		/* writes to the staging file at the snapshot */
	char *key;		/* fh's name then: a rename may follow */
	char *snapshot;
	char *open_etag;	/* the file's ETag when opened, or NULL */
	int fd;
	uint64_t size;
	time_t mtime;
	struct tevent_req *head;	/* the conflict check, before upload */
	struct tevent_req *upload;	/* NULL once superseded */
	/*
	 * Superseded: a newer upload of key (by; NULL for one that ran
	 * before it returned) holds its bytes; this flush ends with it.
	 */
	bool superseded;
	struct bfs_fh_flush_state *by;
};

/*
 * The flushes of this process still uploading, or waiting for the upload
 * that took over from theirs: all connections', since a client may open
 * one share twice and write one file through both.
 */
static struct bfs_fh_flush_state *bfs_flushes;

/* Whether s uploads key of bc's bucket, through the same cache folder. */
static bool bfs_flush_of(const struct bfs_fh_flush_state *s,
			 const struct bfs_conn *bc, const char *key)
{
	return strcmp(s->key, key) == 0 &&
	       strcmp(s->bc->cfg.bucket, bc->cfg.bucket) == 0 &&
	       strcmp(s->bc->cache_dir, bc->cache_dir) == 0;
}

/* Whether a flush of key is uploading here (not taken over). */
static bool bfs_fh_flush_uploading(struct bfs_conn *bc, const char *key)
{
	const struct bfs_fh_flush_state *s;

	for (s = bfs_flushes; s != NULL; s = s->next) {
		if (!s->superseded && bfs_flush_of(s, bc, key)) {
			return true;
		}
	}
	return false;
}

static void bfs_fh_flush_end(struct bfs_fh_flush_state *s, int ret)
{
	BFS_LIST_REMOVE(bfs_flushes, s);
	s->superseded = false;
	/* Ended from inside another request's call: run smbd's part later. */
	tevent_req_defer_callback(s->req, s->ev);
	if (ret != 0) {
		tevent_req_error(s->req, ret);
	} else {
		tevent_req_done(s->req);
	}
}

/* The flushes waiting for by's upload of key (see above) end with ret. */
static void bfs_fh_flushes_end(struct bfs_conn *bc, const char *key,
			       const struct bfs_fh_flush_state *by, int ret)
{
	struct bfs_fh_flush_state *s, *next;

	for (s = bfs_flushes; s != NULL; s = next) {
		next = s->next;
		if (s->superseded && s->by == by && bfs_flush_of(s, bc, key)) {
			bfs_fh_flush_end(s, ret);
		}
	}
}

/*
 * A newer upload of key starts (by's, or one that runs before it returns
 * if by is NULL): the flushes of key still uploading here stop, so that
 * an older upload never lands in S3 after a newer one, and end with the
 * newer one's result (its bytes are theirs and newer).  Their multipart
 * uploads are aborted (a DELETE that waits, rare: two uploads of one
 * file at once in one connection).
 */
static void bfs_fh_flushes_supersede(struct bfs_conn *bc, const char *key,
				     struct bfs_fh_flush_state *by)
{
	struct bfs_fh_flush_state *s, *w;

	for (s = bfs_flushes; s != NULL; s = s->next) {
		TALLOC_CTX *tmp;
		struct bfs_jrec rec;

		if (s == by || s->superseded || !bfs_flush_of(s, bc, key)) {
			continue;
		}
		tmp = talloc_new(NULL);
		TALLOC_FREE(s->upload); /* its transfers stop here */
		if (tmp != NULL &&
		    bfs_journal_get(bc->journal, tmp, key, &rec) == 0 &&
		    rec.pid == getpid() && rec.upload_id != NULL &&
		    strcmp(rec.staging, s->snapshot) == 0) {
			bfs_wb_stream_abort(bc->wb, key, rec.upload_id);
		}
		talloc_free(tmp);
		bfs_log(BFS_LOG_INFO, "bucketfs: share %s: a newer upload of "
			"%s takes over a flush's", bc->service, key);
		s->superseded = true;
		s->by = by;
		/* Those that waited for s wait for by now. */
		for (w = bfs_flushes; w != NULL; w = w->next) {
			if (w->superseded && w->by == s) {
				w->by = by;
			}
		}
	}
}

static int bfs_fh_flush_state_destructor(struct bfs_fh_flush_state *s)
{
	struct bfs_fh_flush_state *w, *next;

	if (s->req != NULL) {
		BFS_LIST_REMOVE(bfs_flushes, s);
		/* Gone unanswered (the connection went): so do its waiters. */
		for (w = bfs_flushes; w != NULL; w = next) {
			next = w->next;
			if (w->superseded && w->by == s) {
				bfs_fh_flush_end(w, EIO);
			}
		}
	}
	if (s->head != NULL && s->snapshot != NULL) {
		/* Gone before its upload was journalled: nobody names it. */
		bfs_wb_stage_drop(s->bc->wb, s->snapshot);
	}
	if (s->fd != -1) {
		close(s->fd);
	}
	return 0;
}

static void bfs_fh_flush_uploaded(struct tevent_req *subreq);
static void bfs_fh_flush_upload(struct tevent_req *req);
static void bfs_fh_flush_checked(struct tevent_req *subreq);

/* req's flush uploads fh itself, before it returns (the loop waits). */
static struct tevent_req *bfs_fh_flush_here(struct tevent_req *req,
					    struct tevent_context *ev,
					    struct bfs_conn *bc,
					    struct bfs_fh *fh)
{
	int ret = bfs_fh_writeback(bc, fh);

	if (ret != 0) {
		tevent_req_error(req, ret);
	} else {
		tevent_req_done(req);
	}
	return tevent_req_post(req, ev);
}

struct tevent_req *bfs_fh_flush_send(TALLOC_CTX *mem_ctx,
				     struct tevent_context *ev,
				     struct bfs_conn *bc, struct bfs_fh *fh)
{
	struct tevent_req *req;
	struct bfs_fh_flush_state *s;
	uint64_t size;
	int ret;

	req = tevent_req_create(mem_ctx, &s, struct bfs_fh_flush_state);
	if (req == NULL) {
		return NULL;
	}
	*s = (struct bfs_fh_flush_state){
		.req = req, .ev = ev, .bc = bc, .fh = fh, .fd = -1,
	};
	talloc_set_destructor(s, bfs_fh_flush_state_destructor);
	if (!fh->dirty || fh->deleted || fh->stage_fd == -1) {
		tevent_req_done(req);
		return tevent_req_post(req, ev);
	}
	/*
	 * A stream of parts is finished by the upload that stops it; an
	 * SMB1 flush waits on a loop of its own: those upload here, now.
	 */
	if (fh->stream != NULL || bfs_conn_async_reader(bc, ev) == NULL) {
		return bfs_fh_flush_here(req, ev, bc, fh);
	}
	size = bfs_fh_size(fh);
	s->wgen = bfs_fh_write_gen(bc, fh);
	s->key = talloc_strdup(s, fh->key);
	if (tevent_req_nomem(s->key, req)) {
		return tevent_req_post(req, ev);
	}
	ret = bfs_wb_stage_copy(bc->wb, s, fh->stage_fd, size, &s->snapshot,
				&s->fd);
	if (ret != 0) {
		/* A disk too full for a copy: the file itself goes up, now. */
		bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: flush of %s: "
			"cannot copy its staging file (%s): uploading it while "
			"the connection waits", bc->service, fh->key,
			strerror(ret));
		return bfs_fh_flush_here(req, ev, bc, fh);
	}
	/* Ours is the newest upload of the key here now. */
	bfs_fh_flushes_supersede(bc, s->key, s);
	s->size = size;
	s->mtime = fh->mtime;
	BFS_LIST_ADD(bfs_flushes, s);
	if (fh->open_etag != NULL) {
		/*
		 * Changed in S3 since it was opened?  Asked before the upload,
		 * whose own ETag it would see after; only a warning is at
		 * stake (bfs_check_conflict, without the wait).
		 */
		s->open_etag = talloc_strdup(s, fh->open_etag);
		s->head = s->open_etag == NULL ? NULL :
			  s3_head_object_send(s, ev, bc->s3_async, s->key);
		if (s->head != NULL) {
			tevent_req_set_callback(s->head, bfs_fh_flush_checked,
						req);
			return req;
		}
	}
	bfs_fh_flush_upload(req);
	if (!tevent_req_is_in_progress(req)) {
		return tevent_req_post(req, ev);
	}
	return req;
}

static void bfs_fh_flush_upload(struct tevent_req *req)
{
	struct bfs_fh_flush_state *s = tevent_req_data(
		req, struct bfs_fh_flush_state);
	struct bfs_conn *bc = s->bc;

	s->upload = bfs_wb_upload_send(s, s->ev, bc->s3_async, bc->wb, s->key,
				       s->snapshot, s->fd, s->size, s->mtime);
	if (s->upload == NULL) {
		BFS_LIST_REMOVE(bfs_flushes, s);
		bfs_wb_stage_drop(bc->wb, s->snapshot);
		bfs_fh_flushes_end(bc, s->key, s, ENOMEM);
		tevent_req_oom(req);
		return;
	}
	tevent_req_set_callback(s->upload, bfs_fh_flush_uploaded, req);
}

static void bfs_fh_flush_checked(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_fh_flush_state *s = tevent_req_data(
		req, struct bfs_fh_flush_state);
	struct s3_object_info info = {0};
	int ret = s3_head_object_recv(subreq, s, &info, NULL);

	bfs_conflict_say(s->bc, s->key, s->open_etag, ret, &info);
	s->head = NULL;
	TALLOC_FREE(subreq);
	if (!tevent_req_is_in_progress(req) || s->superseded) {
		/* A newer upload took over (and may have ended) meanwhile:
		 * its result is ours. */
		bfs_wb_stage_drop(s->bc->wb, s->snapshot);
		return;
	}
	bfs_fh_flush_upload(req);
}

static void bfs_fh_flush_uploaded(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_fh_flush_state *s = tevent_req_data(
		req, struct bfs_fh_flush_state);
	struct bfs_conn *bc = s->bc;
	struct bfs_fh *fh = s->fh;
	struct s3_status st = {0};
	struct bfs_jrec rec;
	char *etag = NULL;
	int ret = bfs_wb_upload_recv(subreq, s, &etag, &st);

	TALLOC_FREE(subreq);
	s->upload = NULL;
	BFS_LIST_REMOVE(bfs_flushes, s);
	if (ret != 0) {
		bfs_log_s3(bc, "upload to", s->key, &st);
		int jret = bfs_journal_get(bc->journal, s, s->key, &rec);

		if (jret != ENOENT &&
		    (jret != 0 || strcmp(rec.staging, s->snapshot) == 0)) {
			bfs_log(BFS_LOG_ERR, "bucketfs: share %s: flush of %s "
				"failed; the flushed bytes stay in the journal "
				"and in staging file %s", bc->service, s->key,
				s->snapshot);
		} else {
			/* Not journalled: nobody would upload the copy. */
			bfs_log(BFS_LOG_ERR, "bucketfs: share %s: flush of %s "
				"failed", bc->service, s->key);
			bfs_wb_stage_drop(bc->wb, s->snapshot);
		}
		ret = ret == ENOENT ? EIO : ret;
		bfs_fh_flushes_end(bc, s->key, s, ret);
		tevent_req_error(req, ret);
		return;
	}
	bfs_log(BFS_LOG_INFO, "bucketfs: share %s: flushed %s to S3",
		bc->service, s->key);
	bfs_changed(bc, s->key);
	/*
	 * Nothing written since the snapshot, and the same name: the file
	 * is what S3 has.  Renamed meanwhile, it stays dirty: its close
	 * uploads it under the new name.
	 */
	if (bfs_fh_write_gen(bc, fh) == s->wgen &&
	    strcmp(fh->key, s->key) == 0) {
		bfs_fh_clean(bc, fh);
		fh->etag = talloc_steal(fh, etag);
		fh->open_etag = talloc_strdup(fh, etag);
	}
	bfs_fh_flushes_end(bc, s->key, s, 0);
	tevent_req_done(req);
}

int bfs_fh_flush_recv(struct tevent_req *req)
{
	int ret = s3_req_errno(req);

	tevent_req_received(req);
	return ret;
}

/* ---- reads --------------------------------------------------------------- */

int bfs_read_errno(struct bfs_conn *bc, const struct bfs_fh *fh,
		   const struct s3_status *st, int ret)
{
	bfs_log_s3(bc, "read of", fh->key, st);
	if (ret == ESTALE) {
		/*
		 * Replaced in S3 since it was opened: never mix versions.
		 * Forget the listing so the next open sees the new object.
		 */
		TALLOC_CTX *tmp = talloc_new(NULL);
		char *parent = NULL;
		const char *base;

		if (tmp != NULL) {
			bfs_path_split(tmp, fh->rel, &parent, &base);
		}
		if (parent != NULL) {
			bfs_forget_listing(bc, bfs_path_dir_prefix(
						       tmp, bc->prefix,
						       parent));
		}
		talloc_free(tmp);
		bfs_log(BFS_LOG_WARNING, "bucketfs: s3://%s/%s changed since "
			"it was opened; reopen to read the new version",
			bc->cfg.bucket, fh->key);
		return EIO;
	}
	return ret;
}
