/*
 * A multipart upload fed while its staging file is still being written.
 *
 * A checkpoint is written front to back and then closed; uploading it
 * only at the close makes the writer wait for the whole upload after the
 * whole write.  A stream sends each part as soon as the writer has
 * written all of its bytes (from offset 0 without a gap), on an event
 * context that runs while the writer works (smbd's own), so that the
 * close sends only the rest.
 *
 * A stream never completes its upload: bfs_stream_stop() hands its parts
 * to the close's bfs_upload_send() (struct bfs_upload_resume), which
 * sends the parts still missing and completes it, or aborts it.  Bytes
 * written again after their part was sent make the part missing again;
 * so does a truncate below its end.
 */
#ifndef BUCKETFS_BFS_STREAM_H
#define BUCKETFS_BFS_STREAM_H

#include "bfs_upload.h"

/*
 * Parts in flight, shared by the streams of one connection: each holds a
 * part-sized buffer, and a client writing a hundred files at once must
 * not make smbd hold a hundred of them.
 */
struct bfs_stream_budget {
	unsigned free;
};

struct bfs_stream_params {
	uint64_t part_size;	/* as the close's upload will cut them */
	struct bfs_stream_budget *budget; /* outlives every stream using it */
	/*
	 * Told the upload id once the upload exists: journal it, so that a
	 * crash before the close leaves no orphaned parts behind.
	 */
	void (*started)(void *private_data, const char *key,
			const char *upload_id);
	void *private_data;
};

struct bfs_stream;

/* Stream key's upload from fd (which must stay open until the stop). */
struct bfs_stream *bfs_stream_new(TALLOC_CTX *mem_ctx,
				  struct tevent_context *ev,
				  struct s3_client *s3, const char *key,
				  int fd, const struct bfs_stream_params *p);

/* Bytes [off, off + len) of the file were written. */
void bfs_stream_wrote(struct bfs_stream *st, uint64_t off, uint64_t len);

/* The file was cut (or grown) to size bytes. */
void bfs_stream_truncated(struct bfs_stream *st, uint64_t size);

/*
 * Stop sending: parts in flight are cancelled (the close sends them
 * again).  *r gets the upload and the parts S3 has, on mem_ctx; returns
 * ENOENT if no upload exists (it never started, or creating it failed).
 * An upload whose creation is still in flight at the stop is lost to us:
 * S3's lifecycle rule for incomplete uploads removes it.
 */
int bfs_stream_stop(struct bfs_stream *st, TALLOC_CTX *mem_ctx,
		    struct bfs_upload_resume *r);

/* The key the upload goes to. */
const char *bfs_stream_key(const struct bfs_stream *st);

/* Parts S3 has from this stream, and parts sent (retries included). */
void bfs_stream_counts(const struct bfs_stream *st, unsigned *done,
		       unsigned *sent);

#endif
