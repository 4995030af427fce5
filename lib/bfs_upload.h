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

/*
 * A multipart upload begun before the close (bfs_stream.h) whose parts
 * are reused: parts[i].etag is part i + 1's ETag, or NULL if that part
 * was never sent (or its bytes changed after).
 */
struct bfs_upload_resume {
	const char *upload_id;
	uint64_t part_size;
	const struct s3_part *parts;
	unsigned n_parts;
	bool cksum;	/* created with CRC32C: parts carry theirs */
};

struct bfs_upload_params {
	uint64_t multipart_threshold;	/* bytes; at or above: multipart */
	uint64_t part_size;		/* 5 MiB .. 5 GiB */
	unsigned parallel;		/* parts in flight */
	uint64_t copy_threshold;	/* above: copies are multipart copies */
	/* Told the upload id once a multipart upload exists (journal it). */
	void (*started)(void *private_data, const char *upload_id);
	void *private_data;
	/* Optional: continue this upload (see bfs_upload_resumable). */
	const struct bfs_upload_resume *resume;
	/* x-amz-meta-* headers stored with the object (copied at send). */
	const struct s3_kv *meta;
	size_t n_meta;
	/* A multipart copy: only of this version of the source (or NULL;
	 * copied at send). */
	const char *copy_if_match;
};

/*
 * Whether an upload of size bytes with p can continue r: a multipart
 * upload cut into the same parts.  If not, r's upload is the caller's to
 * abort.
 */
bool bfs_upload_resumable(uint64_t size, const struct bfs_upload_params *p,
			  const struct bfs_upload_resume *r);

/* Upload bytes [0, size) of fd to key.  fd must stay open until done. */
struct tevent_req *bfs_upload_send(TALLOC_CTX *mem_ctx,
				   struct tevent_context *ev,
				   struct s3_client *s3, const char *key,
				   int fd, uint64_t size,
				   const struct bfs_upload_params *p);
int bfs_upload_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx, char **etag,
		    struct s3_status *st);

/*
 * Stop an upload whose bytes nobody wants any more (its file was renamed
 * or replaced while it ran): a multipart upload not yet asked to complete
 * stops its parts, is aborted in S3 and ends with ECANCELED.  false if it
 * is too late for that (a PutObject or a completion is in flight, or it
 * has ended): then it runs to its end as if not asked.
 */
bool bfs_upload_cancel(struct tevent_req *req);

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

/*
 * Bound the part buffers this process's uploads hold at once (bytes;
 * 'bucketfs:upload memory').  Each upload keeps at least one part in
 * flight, so a part above the bound is sent alone.
 */
void bfs_upload_set_memory(uint64_t bytes);

/* The most part-buffer bytes this process has held at once. */
uint64_t bfs_upload_memory_peak(void);

/* Read exactly len bytes of fd at off: 0, an errno, or EIO if short. */
int bfs_read_full(int fd, void *buf, size_t len, uint64_t off);

#endif
