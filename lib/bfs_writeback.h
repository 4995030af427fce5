/*
 * Writeback: making changes made through the share durable in S3, each
 * one journalled first (bfs_journal.h) and reflected in the index.
 *
 * Written bytes live in a staging file in the cache folder until a close
 * or flush uploads them.  Every call here but bfs_wb_upload_send is
 * synchronous: it runs its S3 requests on the private event context given
 * at creation, and returns once S3 has answered (an SMB close is
 * acknowledged only then).
 *
 * Index layout as in bfs_index.h: a key "a/b/c" is child "c" of the
 * directory prefix "a/b/".
 */
#ifndef BUCKETFS_BFS_WRITEBACK_H
#define BUCKETFS_BFS_WRITEBACK_H

#include "bfs_index.h"
#include "bfs_journal.h"
#include "bfs_reader.h"
#include "bfs_upload.h"

struct bfs_wb;

/*
 * Writeback through s3 on ev, into index idx and journal j, its staging
 * files in staging_dir (made if missing).  0 with *out (on mem_ctx), or
 * an errno: ENOMEM, or why the staging folder could not be made (EACCES,
 * ENOSPC, ...), with a log line naming it.
 */
int bfs_wb_new(TALLOC_CTX *mem_ctx, struct tevent_context *ev,
	       struct s3_client *s3, struct bfs_index *idx,
	       struct bfs_journal *j, const char *staging_dir,
	       const struct bfs_upload_params *params, struct bfs_wb **out)
	__attribute__((warn_unused_result));

/* A new empty staging file (0600): fd and its name in the folder. */
int bfs_wb_stage_new(struct bfs_wb *wb, TALLOC_CTX *mem_ctx, int *fd,
		     char **name);
/* Forget a staging file. */
void bfs_wb_stage_drop(struct bfs_wb *wb, const char *name);

/*
 * A new staging file holding the first len bytes of file from (a flush's
 * snapshot of a file still written): 0 with *name on mem_ctx, and with
 * *fd_out open on it if fd_out is not NULL (the caller's to close).  On
 * failure nothing is left in the staging folder.
 */
int bfs_wb_stage_copy(struct bfs_wb *wb, TALLOC_CTX *mem_ctx, int from,
		      uint64_t len, char **name, int *fd_out)
	__attribute__((warn_unused_result));

/*
 * Copy the whole object obj into the staging file fd (read-modify-write):
 * on wb's own loop (waits), or as a request on ev through r, a reader on
 * ev, so that the caller's loop goes on meanwhile.  0, or the read's or
 * the write's errno (ENOSPC for a full staging disk), with S3's answer in
 * *st.
 */
int bfs_wb_stage_fill(struct bfs_wb *wb, struct bfs_reader *r,
		      const struct bfs_object *obj, int fd,
		      struct s3_status *st)
	__attribute__((warn_unused_result));
struct tevent_req *bfs_wb_stage_fill_send(TALLOC_CTX *mem_ctx,
					  struct tevent_context *ev,
					  struct bfs_reader *r,
					  const struct bfs_object *obj, int fd);
int bfs_wb_stage_fill_recv(struct tevent_req *req, struct s3_status *st)
	__attribute__((warn_unused_result));

/*
 * Fill staging file fd with the bytes of key's journalled upload (a close
 * that failed, or one another process is running): the newest bytes of
 * key, which S3 may not have.  0 with *size set; ENOENT if no upload of
 * key is journalled; another errno if its staging file cannot be read.
 */
int bfs_wb_stage_from_journal(struct bfs_wb *wb, const char *key, int fd,
			      uint64_t *size)
	__attribute__((warn_unused_result));

/*
 * Upload staging file `name` (fd, size bytes) as key: journal it, upload,
 * then record the new ETag in the index.  On failure the journal keeps
 * the record (with the error) and the staging file stays: nothing is lost,
 * the next recovery tries again.  *etag (optional) gets the new ETag.
 * resume (optional): parts a stream already sent (see below).
 * The staging file is the caller's to drop (it may still be open).
 */
int bfs_wb_upload(struct bfs_wb *wb, const char *key, const char *name,
		  int fd, uint64_t size, time_t mtime,
		  const struct bfs_upload_resume *resume, TALLOC_CTX *mem_ctx,
		  char **etag, struct s3_status *st)
	__attribute__((warn_unused_result));

/*
 * bfs_wb_upload on ev through s3 (the caller's loop and its S3 client,
 * not the writeback's own): journal, then answer once S3 has the object
 * and the index its ETag.  The staging file `name` is the upload's: it
 * goes once S3 has it.  fd stays open, the caller's, until the end.  On
 * failure the record and the staging file stay, as bfs_wb_upload's.
 */
struct tevent_req *bfs_wb_upload_send(TALLOC_CTX *mem_ctx,
				      struct tevent_context *ev,
				      struct s3_client *s3, struct bfs_wb *wb,
				      const char *key, const char *name, int fd,
				      uint64_t size, time_t mtime);
int bfs_wb_upload_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		       char **etag, struct s3_status *st)
	__attribute__((warn_unused_result));

/*
 * A close with `bucketfs:close = local`: journal that staging file `name`
 * (size bytes, no longer written) is to be uploaded as key by the engine,
 * process `engine`, and show the new size in the index.  Returns once the
 * record is on disk; S3 is not asked.  The staging file is the engine's
 * now: it drops it after the upload.  Should the engine die, whoever
 * opens the journal next (the restarted engine, or an smbd) finishes it.
 */
int bfs_wb_hand_over(struct bfs_wb *wb, const char *key, const char *name,
		     uint64_t size, time_t mtime, pid_t engine)
	__attribute__((warn_unused_result));

/*
 * Bytes of the uploads journalled in the name of process owner (the
 * engine) and not yet in S3: what `bucketfs:writeback limit` bounds.
 */
int bfs_wb_pending_bytes(struct bfs_wb *wb, pid_t owner, uint64_t *bytes);

/*
 * What a client is told of the volume: every written byte is staged here
 * before S3 has it, so the room is the staging folder's file system's,
 * and with a writeback limit (limit > 0) no more than what the limit
 * leaves beside the bytes owner's uploads hold.  *total is the file
 * system's size (at least *avail).
 */
int bfs_wb_space(struct bfs_wb *wb, pid_t owner, uint64_t limit,
		 uint64_t *total, uint64_t *avail);

/*
 * Was r's file handed over less than ms ago (its staging file's time,
 * set by bfs_wb_hand_over)?  The engine lets such uploads wait, so that
 * a rename right after the close moves the upload before it starts.
 */
bool bfs_wb_put_young(struct bfs_wb *wb, const struct bfs_jrec *r,
		      unsigned ms);

/*
 * A rename src -> dst of a closed file whose upload is the engine's
 * (`engine`): the upload goes to dst instead, and src (which S3 may hold
 * from before) is deleted after it, so no server-side copy of the bytes
 * is made and the rename waits for nothing.  If the upload to src is
 * running already, it goes on and is taken back out when it ends; dst
 * gets an upload of its own, from a second name (a hard link) of the
 * staging file.  ESTALE if src has no such upload (it failed, or is
 * someone else's): rename as any object.
 */
int bfs_wb_retarget(struct bfs_wb *wb, const char *src, const char *dst,
		    pid_t engine)
	__attribute__((warn_unused_result));

/*
 * A record's src_etag when S3 held no object under src: there is nothing
 * of ours to delete there (not an ETag S3 gives: those are hex digits,
 * with "-N" for multipart ones).
 */
#define BFS_SRC_NONE "-"

/*
 * A record's src_etag when the version S3 holds under src was not known
 * (a rename of a file whose new bytes wait for upload: the index keeps
 * no ETag of the old ones): "@" and this host's clock at the rename, in
 * seconds.  src is deleted only if S3's object there is clearly older
 * than the rename, by S3's own clock: not a file made under the name
 * since, which a plain delete would lose.
 */
#define BFS_SRC_BEFORE '@'

/*
 * The same, where the caller knows what S3 holds under src: src_etag, or
 * BFS_SRC_NONE.  src is then deleted after the upload only while S3
 * still holds that version: not a file written under the name since.
 */
int bfs_wb_retarget_from(struct bfs_wb *wb, const char *src, const char *dst,
			 pid_t engine, const char *src_etag)
	__attribute__((warn_unused_result));

/*
 * Streaming (bfs_stream.h).  stream_started journals key's upload as
 * one to abort, with its staging file to drop, should this process die
 * before the close (an ABORT record, beside any other record of key).  A close hands the
 * stream's parts to bfs_wb_upload as resume, which completes the upload,
 * or aborts it and uploads anew.  stream_abort drops a stream's upload
 * (the open file was renamed, deleted or opened again).
 */
void bfs_wb_stream_started(struct bfs_wb *wb, const char *key,
			   const char *staging, const char *upload_id);
void bfs_wb_stream_abort(struct bfs_wb *wb, const char *key,
			 const char *upload_id);

/*
 * A file open for writing, its bytes in staging file `staging` (size so
 * far, still growing), is renamed from src to dst.  Journal first that
 * dst is to be uploaded from the staging file, and that src (the object
 * the file was, if src_etag: the version in S3 it started from) is to be
 * deleted only once dst is in S3; then move the index entry.  A crash
 * before the close leaves the recovery to do both.  S3 is not asked.
 */
int bfs_wb_rename_open(struct bfs_wb *wb, const char *src, const char *dst,
		       const char *staging, uint64_t size, time_t mtime,
		       const char *src_etag)
	__attribute__((warn_unused_result));

/*
 * Rename the object src (size bytes) to dst: journal, CopyObject (a
 * multipart copy above the copy threshold), switch the index entry in one
 * transaction, DeleteObject src.  EINPROGRESS, with nothing done, while
 * another process uploads dst (bfs_wb_wait_upload, then again).
 */
int bfs_wb_rename(struct bfs_wb *wb, const char *src, const char *dst,
		  uint64_t size, struct s3_status *st)
	__attribute__((warn_unused_result));

/*
 * A rename of src, an object S3 has at version src_etag, to dst, handed
 * to the engine (pid engine) as bfs_wb_delete_hand_over does a delete:
 * journalled and shown in the index at once (dst pending with src's
 * ETag, src under a delete-pending mark), copied and deleted in S3 by the
 * engine: a COPY record of dst (copy only; readers of dst read src
 * meanwhile) and a DELETE record of src, which waits for the copy.
 * ESTALE if the journal holds a change of src or dst this cannot take
 * over (a file still written, a rename back): then rename with
 * bfs_wb_rename.  *from (on mem_ctx; NULL: not wanted): the key the
 * engine copies from, where dst's readers read until the copy is done
 * (src, or the first name of a file renamed twice before its copy).
 */
int bfs_wb_rename_hand_over(struct bfs_wb *wb, TALLOC_CTX *mem_ctx,
			    const char *src, const char *src_etag,
			    const char *dst, uint64_t size, time_t mtime,
			    pid_t engine, char **from)
	__attribute__((warn_unused_result));
/*
 * bfs_wb_rename_hand_over for a folder's marker object src ("a/b/", in
 * S3) renamed with its folder to dst ("c/d/"): the engine puts dst as a
 * new, empty marker (a PUT record of an empty staging file, as mkdir's)
 * and deletes src; the folder's entry moves in the index at once, pending
 * until dst is up.  ESTALE if the journal holds a change of src, or one
 * of dst this cannot take over: then rename the marker in S3 at once.
 */
int bfs_wb_marker_hand_over(struct bfs_wb *wb, const char *src,
			    const char *dst, pid_t engine)
	__attribute__((warn_unused_result));
/* One object of a folder renamed whole (bfs_wb_hand_over_many). */
struct bfs_wb_move {
	const char *src, *src_etag, *dst; /* keys; a marker's end in '/' */
	uint64_t size;
	time_t mtime;
	int ret;	/* out: 0 handed; ESTALE: rename it in S3; or an error */
};
/*
 * The hand-overs of moves[0..n): files as bfs_wb_rename_hand_over,
 * markers (src ending in '/') as bfs_wb_marker_hand_over, their index
 * entries moved in the order given.  Each journal step is one synced
 * transaction for all (one by one, a folder's thousand objects took 1.6 s
 * of smbd's loop).  Each move's ret says how it went.
 */
void bfs_wb_hand_over_many(struct bfs_wb *wb, struct bfs_wb_move *moves,
			   size_t n, pid_t engine);
/*
 * Run at the end of a handed-over delete of key: a pending entry with an
 * ETag and no journal record behind it (the middle name of a rename
 * a -> b, b -> c cut by a crash after its journal step) is settled and
 * its folder listed again, which drops it.  True if it was.
 */
bool bfs_wb_settle_cut_rename(struct bfs_wb *wb, const char *key);
/* Tests: the hand-over stops after its step 1 (journal) or 2 (index), as
 * if smbd died there; -1: its step 2 fails (EIO); 0: all of it. */
void bfs_wb_test_stop_hand_over(int after_step);

/*
 * The order of journalled changes: a rename's copy (a COPY record) reads
 * its source, so the source's delete, a new file of that name, or an
 * upload that deletes that name after it (src) waits until the copy is
 * done.  bfs_wb_copy_sources: the sources of recs' copies (but those
 * whose skip[i] is set; skip NULL: all), sorted, on mem_ctx;
 * bfs_wb_waits_for_copy: whether r must wait for one of them.
 */
struct bfs_wb_copy_srcs {
	const char **keys;
	size_t n;
};
int bfs_wb_copy_sources(TALLOC_CTX *mem_ctx, const struct bfs_jrec *recs,
			size_t n, const bool *skip,
			struct bfs_wb_copy_srcs *out);
bool bfs_wb_waits_for_copy(const struct bfs_wb_copy_srcs *s,
			   const struct bfs_jrec *r);

/*
 * Wait while another live process works on key (uploads it in a close or
 * flush, or renames onto it): 0 once that is finished, ENOENT if nobody is uploading key, EIO if
 * it failed (its data waits in the journal for recovery), EBUSY
 * if it still runs after timeout_ms.
 */
int bfs_wb_wait_upload(struct bfs_wb *wb, const char *key,
		       unsigned timeout_ms);

/* Delete key (a file, or "dir/" for a directory marker) and its entry. */
int bfs_wb_delete(struct bfs_wb *wb, const char *key, struct s3_status *st)
	__attribute__((warn_unused_result));

/*
 * The same, with the S3 DELETE left to the engine (pid engine; notify it):
 * journalled in its name, and key's entry gone from the index now, kept
 * out of listings until the engine has deleted it (or key is written
 * again).  Errors are the journal's: nothing changed then.
 */
int bfs_wb_delete_hand_over(struct bfs_wb *wb, const char *key,
			    pid_t engine)
	__attribute__((warn_unused_result));

/* Whether key's delete is journalled and not yet done (in S3). */
bool bfs_wb_delete_pending(struct bfs_wb *wb, const char *key);

/*
 * Clear the delete-pending marks (bfs_index_remove_pending) made before
 * `before` whose delete is no longer journalled, under or at the name: a
 * process died between the record's end and the mark's.  Returns how many.
 */
unsigned bfs_wb_sweep_marks(struct bfs_wb *wb, time_t before);

/* An empty object (a directory marker "dir/"). */
int bfs_wb_put_empty(struct bfs_wb *wb, const char *key,
		     struct s3_status *st);

/*
 * What a rename of the folder prefix must do about the journal's changes
 * under it, found before anything moves:
 *   move  keys under prefix whose upload waits in the engine (pid engine):
 *         retarget them (bfs_wb_retarget_from), S3 may not have them yet;
 *   wait  keys under prefix another process uploads or copies onto now
 *         (a close = s3 close, a flush, a rename): wait, then copy them;
 *   skip  old names under prefix that a change elsewhere deletes once done
 *         (a file renamed out of the folder): S3 may still list them, and
 *         they must not be copied (sorted, for bsearch with strcmp).
 * EBUSY, with the key in busy, if a file under prefix is still being
 * written in another process (open, or streaming its parts).
 */
struct bfs_wb_dir_changes {
	char **move, **wait, **skip;
	size_t n_move, n_wait, n_skip;
	const char *busy;
};

int bfs_wb_dir_changes(struct bfs_wb *wb, TALLOC_CTX *mem_ctx,
		       const char *prefix, pid_t engine,
		       struct bfs_wb_dir_changes *c);

/*
 * Keys under prefix (all depths), up to max+1, in S3's order, and their
 * sizes, ETags and times (each optional; the ETags and times children of
 * *keys).
 */
int bfs_wb_list_all(struct bfs_wb *wb, TALLOC_CTX *mem_ctx,
		    const char *prefix, size_t max, char ***keys,
		    uint64_t **sizes, char ***etags, time_t **mtimes,
		    size_t *n, struct s3_status *st);

/*
 * Carry out one journalled change to the end, as its owner (r->pid):
 * upload, copy and delete, or abort.  0 also when the record turns out to
 * be replaced by a newer one meanwhile.  On failure the record stays,
 * with its error.
 */
int bfs_wb_finish(struct bfs_wb *wb, struct bfs_jrec *r, struct s3_status *st)
	__attribute__((warn_unused_result));

/*
 * Remove the staging files no one will use: made by a process that is
 * gone (the pid in the file's name) and named by no journal record, such
 * as the files of writes a killed smbd held open, never closed nor
 * flushed (nothing acknowledged them as durable).  A live process's file
 * stays, even one whose pid was reused.  Returns how many went; run by
 * bfs_wb_recover.
 */
unsigned bfs_wb_sweep_staging(struct bfs_wb *wb);

/*
 * Finish what dead processes left in the journal for keys under prefix
 * (the share's; other shares' records stay for them).  *done and *failed
 * count records; each failure is reported through log (optional).
 */
int bfs_wb_recover(struct bfs_wb *wb, const char *prefix, unsigned *done,
		   unsigned *failed,
		   void (*log)(void *priv, const struct bfs_jrec *r,
			       const struct s3_status *st),
		   void *priv)
	__attribute__((warn_unused_result));

#endif
