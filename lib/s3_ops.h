/*
 * Typed S3 operations over the engine in s3_client.h.  Each is a tevent_req
 * send/recv pair; recv returns 0 or an errno value and fills *st (optional)
 * with the S3 code, message and request id for the log line.
 */
#ifndef BUCKETFS_S3_OPS_H
#define BUCKETFS_S3_OPS_H

#include <errno.h>
#include <stdint.h>
#include <tevent.h>

#include "s3_client.h"
#include "s3_xml.h"

struct s3_object_info {
	uint64_t size;
	char *etag;
	time_t mtime;
	time_t server_now;	/* the server's clock when it answered, or -1 */
	struct s3_kv *meta;	/* user metadata, on the recv's mem_ctx */
	size_t n_meta;
};

/*
 * A single-part object's ETag is the MD5 of its bytes: 32 hex digits as
 * the 16 bytes of md (false if etag is not one), and back (33 bytes).
 */
bool s3_md5_from_hex(const char *etag, unsigned char md[16]);
void s3_md5_to_hex(const unsigned char md[16], char hex[33]);

/* HeadObject; with key NULL, HeadBucket (no size, ETag or mtime then). */
struct tevent_req *s3_head_object_send(TALLOC_CTX *mem_ctx,
				       struct tevent_context *ev,
				       struct s3_client *c, const char *key);
int s3_head_object_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
			struct s3_object_info *info, struct s3_status *st);

/*
 * GetObject of bytes [offset, offset+len) into buf.  With if_match, an
 * object whose ETag changed fails with ESTALE instead of mixing versions.
 * A short object gives a short count; a body longer than asked is refused.
 */
struct tevent_req *s3_get_range_send(TALLOC_CTX *mem_ctx,
				     struct tevent_context *ev,
				     struct s3_client *c, const char *key,
				     uint64_t offset, size_t len, void *buf,
				     const char *if_match);
int s3_get_range_recv(struct tevent_req *req, size_t *nread,
		      struct s3_status *st);
/* Before recv: the answer's user metadata (x-amz-meta-*), owned by req. */
size_t s3_get_range_meta(struct tevent_req *req, const struct s3_kv **meta);

/* One page of ListObjectsV2.  delimiter and token may be NULL. */
struct tevent_req *s3_list_send(TALLOC_CTX *mem_ctx, struct tevent_context *ev,
				struct s3_client *c, const char *prefix,
				const char *delimiter, const char *token,
				unsigned max_keys);
int s3_list_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		 struct s3_listing **listing, struct s3_status *st);

/* User metadata headers (x-amz-meta-*) an upload may carry. */
#define S3_META_MAX 4

/*
 * PutObject with Content-MD5, so a corrupted upload is refused, and its
 * CRC32C (x-amz-checksum-crc32c) while the client sends checksums; meta:
 * up to S3_META_MAX x-amz-meta-* headers stored with the object.
 */
struct tevent_req *s3_put_object_send(TALLOC_CTX *mem_ctx,
				      struct tevent_context *ev,
				      struct s3_client *c, const char *key,
				      const void *data, size_t len,
				      const struct s3_kv *meta, size_t n_meta);
int s3_put_object_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		       char **etag, struct s3_status *st);

/*
 * A conditional PutObject (S3's conditional writes): with if_match, only
 * over the object of that ETag, sent as given (S3 and RFC 9110 quote it;
 * Ceph RGW 16 compares it as stored, unquoted); with if_none_match, only
 * if no object has the key.  Refused: ESTALE (412 PreconditionFailed, or 409
 * ConditionalRequestConflict: another conditional write raced it).  Never
 * resent on its own: an answer lost after success would come back as a
 * refusal; the caller looks (bfs_lease does).  recv: s3_put_object_recv.
 */
struct tevent_req *s3_put_object_if_send(TALLOC_CTX *mem_ctx,
					 struct tevent_context *ev,
					 struct s3_client *c, const char *key,
					 const void *data, size_t len,
					 const struct s3_kv *meta, size_t n_meta,
					 const char *if_match,
					 bool if_none_match);

struct tevent_req *s3_delete_object_send(TALLOC_CTX *mem_ctx,
					 struct tevent_context *ev,
					 struct s3_client *c, const char *key);
int s3_delete_object_recv(struct tevent_req *req, struct s3_status *st);

/*
 * CopyObject within the client's bucket; if_match (or NULL): only while
 * the source is that version (x-amz-copy-source-if-match), else ESTALE
 * (412).
 */
struct tevent_req *s3_copy_object_send(TALLOC_CTX *mem_ctx,
				       struct tevent_context *ev,
				       struct s3_client *c, const char *src_key,
				       const char *dst_key,
				       const char *if_match);
int s3_copy_object_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
			char **etag, struct s3_status *st);

/* Multipart upload. */
/* A part of a multipart upload: its ETag, and its CRC32C if it sent one. */
struct s3_part {
	unsigned part_no;
	const char *etag;
	const char *cksum;	/* base64, or NULL */
};

/*
 * CreateMultipartUpload.  With cksum (an upload of bytes, not a copy) and
 * while the client sends checksums, the upload is created with CRC32C;
 * s3_mpu_create_cksum (before recv) says whether it was, and then every
 * part must be sent with cksum and the completion lists their CRC32C.
 */
struct tevent_req *s3_mpu_create_send(TALLOC_CTX *mem_ctx,
				      struct tevent_context *ev,
				      struct s3_client *c, const char *key,
				      bool cksum, const struct s3_kv *meta,
				      size_t n_meta);
bool s3_mpu_create_cksum(struct tevent_req *req);
int s3_mpu_create_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		       char **upload_id, struct s3_status *st);

/* UploadPart with Content-MD5 and, with cksum, its CRC32C. */
struct tevent_req *s3_mpu_part_send(TALLOC_CTX *mem_ctx,
				    struct tevent_context *ev,
				    struct s3_client *c, const char *key,
				    const char *upload_id, unsigned part_no,
				    const void *data, size_t len, bool cksum);
/* part's etag and cksum (talloc'd on mem_ctx); part_no is the caller's. */
int s3_mpu_part_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		     struct s3_part *part, struct s3_status *st);

/* UploadPartCopy: bytes [offset, offset+len) of src_key as part part_no
 * (if_match as for s3_copy_object_send). */
struct tevent_req *s3_mpu_part_copy_send(TALLOC_CTX *mem_ctx,
					 struct tevent_context *ev,
					 struct s3_client *c, const char *key,
					 const char *upload_id,
					 unsigned part_no, const char *src_key,
					 uint64_t offset, uint64_t len,
					 const char *if_match);
int s3_mpu_part_copy_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
			  char **etag, struct s3_status *st);


struct tevent_req *s3_mpu_complete_send(TALLOC_CTX *mem_ctx,
					struct tevent_context *ev,
					struct s3_client *c, const char *key,
					const char *upload_id,
					const struct s3_part *parts,
					size_t n_parts);
int s3_mpu_complete_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
			 char **etag, struct s3_status *st);

struct tevent_req *s3_mpu_abort_send(TALLOC_CTX *mem_ctx,
				     struct tevent_context *ev,
				     struct s3_client *c, const char *key,
				     const char *upload_id);
int s3_mpu_abort_recv(struct tevent_req *req, struct s3_status *st);

/*
 * A finished request's errno for its _recv: 0 if it succeeded, the
 * errno it failed with, ENOMEM for a failure that gave none (out of
 * memory in tevent itself).
 */
static inline int s3_req_errno(struct tevent_req *req)
{
	enum tevent_req_state state;
	uint64_t err = 0;

	if (!tevent_req_is_error(req, &state, &err)) {
		return 0;
	}
	return err != 0 ? (int)err : ENOMEM;
}

/*
 * Run req to completion on its (private) event context: 0 once it
 * finished (how, its _recv says); ENOMEM if req is NULL (its _send
 * failed), so a _send may be passed straight in; else the errno the
 * event loop failed with (EIO if it left none), with a log line.
 */
int s3_wait_for(struct tevent_req *req, struct tevent_context *ev)
	__attribute__((warn_unused_result));

#endif
