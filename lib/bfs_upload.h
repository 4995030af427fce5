/*
 * Uploading a local file as one S3 object: PutObject below the multipart
 * threshold, else a multipart upload with several parts in flight.  Every
 * request carries Content-MD5, so a body corrupted on the way is refused
 * by the server (and retried by the engine).  A failed multipart upload is
 * aborted.
 */
#ifndef BUCKETFS_BFS_UPLOAD_H
#define BUCKETFS_BFS_UPLOAD_H

#include "s3_ops.h"

struct bfs_upload_params {
	uint64_t multipart_threshold;	/* bytes; at or above: multipart */
	uint64_t part_size;		/* 5 MiB .. 5 GiB */
	unsigned parallel;		/* parts in flight */
	uint64_t copy_threshold;	/* above: copies are multipart copies */
	/* Told the upload id once a multipart upload exists (journal it). */
	void (*started)(void *private_data, const char *upload_id);
	void *private_data;
};

/* Upload bytes [0, size) of fd to key.  fd must stay open until done. */
struct tevent_req *bfs_upload_send(TALLOC_CTX *mem_ctx,
				   struct tevent_context *ev,
				   struct s3_client *s3, const char *key,
				   int fd, uint64_t size,
				   const struct bfs_upload_params *p);
int bfs_upload_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx, char **etag,
		    struct s3_status *st);

/*
 * A server-side multipart copy of src_key (size bytes) to dst_key, in
 * parts of p->part_size (UploadPartCopy): how objects above CopyObject's
 * 5 GiB limit are copied.  Finish with bfs_upload_recv().
 */
struct tevent_req *bfs_copy_send(TALLOC_CTX *mem_ctx,
				 struct tevent_context *ev,
				 struct s3_client *s3, const char *src_key,
				 const char *dst_key, uint64_t size,
				 const struct bfs_upload_params *p);

/*
 * The ETag S3 gives an object completed from these parts (the MD5 of the
 * parts' MD5s, "-" and their count), on mem_ctx; NULL if a part's ETag is
 * not an MD5 (or no memory).
 */
char *bfs_multipart_etag(TALLOC_CTX *mem_ctx, const struct s3_part *parts,
			 size_t n);

#endif
