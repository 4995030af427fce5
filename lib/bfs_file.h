/*
 * The bytes of files open through a share: the staging table of one
 * connection (struct bfs_conn's open_files), writes into staging files,
 * and what a close or a flush does with them.
 *
 * A file opened for writing gets a staging file in the cache folder
 * (lib/bfs_writeback.h), shared by every open of the same key in this
 * connection, so that each sees the others' writes.  A close either
 * hands the staging file to the engine (`bucketfs:close = local`,
 * journalled in the engine's name) or uploads it itself; a file being
 * written may stream its parts meanwhile (lib/bfs_stream.h).  A read-only
 * open of a file that another process is uploading reads its staging
 * file: read-your-writes across smbds.
 *
 * The module turns Samba's arguments into these calls (the fsp's
 * struct bfs_fh, the open flags, smbd's event loop) and their errno into
 * the VFS's answer.  Nothing here knows Samba.
 */
#ifndef BUCKETFS_BFS_FILE_H
#define BUCKETFS_BFS_FILE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <talloc.h>
#include <tevent.h>

#include "bfs_share.h"

struct s3_status;

/*
 * rel looked up (its folder listed first if stale): 0 with *out, an open
 * state on mem_ctx; ENOENT if there is no such name.
 */
int bfs_fh_lookup(TALLOC_CTX *mem_ctx, struct bfs_conn *bc, const char *rel,
		  struct bfs_fh **out)
	__attribute__((warn_unused_result));

/*
 * Open rel with open(2)'s flags (O_ACCMODE, O_CREAT, O_EXCL, O_TRUNC,
 * O_DIRECTORY): 0 with *out, bc's child, which the caller frees at the
 * close (after bfs_fh_close).  A created file is in the index at once,
 * pending; a writer is tracked in bc's staging table; a truncating or
 * creating one is staged now.  pathref: an open only to name the file
 * (smbd's listings), which reads nothing.  An errno otherwise: ENOENT,
 * EEXIST, EISDIR, ENOTDIR, or the index's or staging's.
 */
int bfs_fh_open(struct bfs_conn *bc, const char *rel, int flags,
		bool pathref, struct bfs_fh **out)
	__attribute__((warn_unused_result));

/*
 * The close of fh: a writer's staged bytes are handed to the engine or
 * uploaded now.  0 once they are safe; else the upload's errno, and the
 * journal keeps the record and the staging file for the next recovery.
 */
int bfs_fh_close(struct bfs_conn *bc, struct bfs_fh *fh)
	__attribute__((warn_unused_result));

/* Bytes of an open file: the staging file's if staged. */
uint64_t bfs_fh_size(const struct bfs_fh *fh);

/* Another open of key in this connection whose bytes are staged. */
struct bfs_fh *bfs_staged_twin(struct bfs_conn *bc, const char *key,
			       const struct bfs_fh *self);

/*
 * Give fh a staging file: the one another open of the same key in this
 * connection already has, else a new one, filled with the object's bytes
 * if keep (read-modify-write of an existing object).
 */
int bfs_fh_stage(struct bfs_conn *bc, struct bfs_fh *fh, bool keep)
	__attribute__((warn_unused_result));

/*
 * bfs_fh_stage(bc, fh, true) for a write on ev (smbd's loop), which goes
 * on meanwhile: the object's old bytes are fetched by requests on ev
 * (bfs_conn_async_reader), not waited for.  Stagings of one connection
 * run one at a time.  Errors as bfs_fh_stage's.
 */
struct tevent_req *bfs_fh_stage_send(TALLOC_CTX *mem_ctx,
				     struct tevent_context *ev,
				     struct bfs_conn *bc, struct bfs_fh *fh);
int bfs_fh_stage_recv(struct tevent_req *req)
	__attribute__((warn_unused_result));

/* Stop fh's stream and abort its upload (the file goes elsewhere). */
void bfs_fh_stream_drop(struct bfs_conn *bc, struct bfs_fh *fh);

/*
 * Upload fh's staged bytes here (close and flush wait for this): 0 once
 * S3 has them; on failure they stay in the journal and staging file.
 */
int bfs_fh_writeback(struct bfs_conn *bc, struct bfs_fh *fh)
	__attribute__((warn_unused_result));

/*
 * Writes through an open fh (NULL, a folder, or not open for writing:
 * EBADF, EISDIR, EBADF).  Each stages fh first.  A file may not grow past
 * 'bucketfs:max file size': ENOSPC, which Samba tells the client as a
 * full disk.
 *
 * bfs_fh_write: n bytes at offset (EINVAL if negative), *done written;
 * the first write of a new file may start streaming its parts on ev
 * (smbd's loop).  bfs_fh_truncate: cut or grow to size.
 * bfs_fh_allocate: grow to offset + len if smaller.
 */
int bfs_fh_write(struct bfs_conn *bc, struct bfs_fh *fh, const void *data,
		 size_t n, off_t offset, struct tevent_context *ev,
		 size_t *done)
	__attribute__((warn_unused_result));

/*
 * The same write in two halves, for a caller that copies the bytes in
 * another thread (smbd's worker threads, as vfs_default writes a local
 * file), so its loop goes on receiving meanwhile.  bfs_fh_write_begin
 * checks and stages as bfs_fh_write does and gives *fd, a descriptor of
 * the staging file that the caller writes n bytes at offset to and then
 * closes; EAGAIN when fh streams its parts (they must see the writes in
 * order: use bfs_fh_write).  bfs_fh_write_end, back on the loop, records
 * what the copy did: written bytes, or -1 and err; it returns err (and
 * logs a full cache folder) or 0.
 */
int bfs_fh_write_begin(struct bfs_conn *bc, struct bfs_fh *fh, size_t n,
		       off_t offset, int *fd)
	__attribute__((warn_unused_result));
int bfs_fh_write_end(struct bfs_conn *bc, struct bfs_fh *fh, off_t offset,
		     ssize_t written, int err)
	__attribute__((warn_unused_result));
int bfs_fh_truncate(struct bfs_conn *bc, struct bfs_fh *fh, uint64_t size)
	__attribute__((warn_unused_result));
int bfs_fh_allocate(struct bfs_conn *bc, struct bfs_fh *fh, uint64_t offset,
		    uint64_t len)
	__attribute__((warn_unused_result));

/*
 * An SMB flush of fh through the engine: a snapshot of its staging file
 * (*snapshot, on mem_ctx: the client may go on writing meanwhile) is
 * journalled in the engine's name, and the caller waits for the engine's
 * upload of it.  Where no engine takes it, fh is uploaded here instead:
 * *here is true and the result is that upload's.
 */
int bfs_fh_flush_hand_over(struct bfs_conn *bc, struct bfs_fh *fh,
			   TALLOC_CTX *mem_ctx, char **snapshot, bool *here)
	__attribute__((warn_unused_result));

/*
 * The engine's answer to a flush (ret: its errno, etag: the ETag S3 gave,
 * stolen onto fh) of the snapshot taken when fh had had wgen changes:
 * fh is clean if nothing was written since.  Returns the flush's errno.
 */
int bfs_fh_flushed(struct bfs_conn *bc, struct bfs_fh *fh, int ret,
		   uint64_t wgen, const char *snapshot, char *etag);

/*
 * The number of the last change any open sharing fh's staging file made
 * (changes are numbered in this process, always upwards): a flush's
 * snapshot is the file as it is if this has not changed since.
 */
uint64_t bfs_fh_write_gen(struct bfs_conn *bc, const struct bfs_fh *fh);

/*
 * An SMB flush of fh without the engine: done once S3 has fh's bytes as
 * they are now.  On smbd's loop (ev) a snapshot of the staging file goes
 * up on that loop, the client's other requests answered meanwhile; on
 * another loop (an SMB1 flush's), and for a file whose parts stream,
 * bfs_fh_writeback runs before this returns.
 */
struct tevent_req *bfs_fh_flush_send(TALLOC_CTX *mem_ctx,
				     struct tevent_context *ev,
				     struct bfs_conn *bc, struct bfs_fh *fh);
int bfs_fh_flush_recv(struct tevent_req *req)
	__attribute__((warn_unused_result));

/*
 * A failed read of fh (the reader's ret and S3's status st): logged, and
 * the errno for the client.  A version replaced in S3 since the open is
 * EIO, never a mix of both versions; its folder is listed again.
 */
int bfs_read_errno(struct bfs_conn *bc, const struct bfs_fh *fh,
		   const struct s3_status *st, int ret);

/*
 * Whether fh read a renamed file from its old name (its rename's copy was
 * not done at the open) and the copy is done now: then fh reads the new
 * name's object from here on, and a read that failed (the old name
 * deleted after the copy) is worth one more try.
 */
bool bfs_fh_copy_ended(struct bfs_conn *bc, struct bfs_fh *fh);

/*
 * The connection's reader on smbd's loop ev (made at its first use), for
 * asynchronous reads; streamed parts use its S3 client.  NULL on another
 * loop (an SMB1 call's private one).
 */
struct bfs_reader *bfs_conn_async_reader(struct bfs_conn *bc,
					 struct tevent_context *ev);

#endif
