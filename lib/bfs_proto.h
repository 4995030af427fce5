/*
 * The protocol between smbd processes (the module) and bucketfsd, the
 * S3 engine of a cache folder, over the unix socket in that folder.
 *
 * A message is one frame:
 *
 *   u32 length     bytes after this field (at most BFS_PROTO_MAX_FRAME)
 *   u16 version    BFS_PROTO_VERSION
 *   u16 type       enum bfs_proto_type
 *   u32 id         the sender's request id; a reply carries it back
 *   fields         in the order the type lists below, each one
 *                  u16 tag (enum bfs_proto_field), u32 length, bytes
 *
 * All integers little-endian.  A string field holds no NUL; an integer
 * field is 8 bytes.  Unknown tags are skipped, so that a newer sender may
 * add fields; a missing field reads as NULL or 0.  A frame whose version
 * is not ours is refused with EPROTONOSUPPORT, anything malformed with
 * EPROTO: the peer then closes the connection.
 *
 * Messages (fields):
 *   HELLO    module -> engine  version, share, cache dir
 *   WELCOME  engine -> module  version, pid, arena: the size of the
 *                              engine's fetch arena (bfs_arena.h), whose
 *                              memfd comes with this frame (SCM_RIGHTS);
 *                              0 (or no descriptor): none; claim: the
 *                              fetch memory a CLAIM grants (0 or absent:
 *                              the engine takes no claims)
 *   UPLOAD   module -> engine  key: a PUT record of key was journalled in
 *                              the engine's name; no answer
 *   WAIT     module -> engine  key, staging: answer once the upload of
 *                              that staging file (or a later one of key)
 *                              is in S3, or failed
 *   DONE     engine -> module  err (an errno, 0 on success), etag; for a
 *                              FETCH that asked to be lent: slot, pin
 *   STATUS   ctl -> engine     (nothing): answered with STATE
 *   STATE    engine -> ctl     pid, pending (records it owns), uploaded,
 *                              failed, bytes (uploaded since start),
 *                              fetches, fetched (S3 GETs and their bytes),
 *                              lent (bytes smbds copied from the arena)
 *   FETCH    module -> engine  key, etag, size (of the object), offset,
 *                              length, ahead, ahead_n, lend: bring the
 *                              blocks of [offset, offset+length) into the
 *                              cache (one S3 GET per block for every
 *                              client asking), then answer DONE; and start
 *                              fetching blocks [ahead, ahead+ahead_n) for
 *                              nobody yet.  lend 1 (the module mapped the
 *                              arena): where the engine can, DONE comes as
 *                              soon as the bytes are fetched, with pin (not
 *                              0) and slot, their offset in the arena; they
 *                              stay there until the module sends RELEASE
 *   RELEASE  module -> engine  pin: done with the lent bytes; no answer
 *                              (a closed connection releases all its pins)
 *   PREFETCH module -> engine  key, etag, size, ahead, ahead_n: only the
 *                              latter (a sequential reader hitting the
 *                              cache); no answer
 *   LIST     module -> engine  key (a directory prefix, "" the root): list
 *                              it from S3 into the index, once however
 *                              many ask meanwhile; no answer (the reader
 *                              was served the listing the index had)
 *   CHANGED  engine -> module  key: the engine put it in S3 (or deleted
 *                              it there); sent to one client, unasked
 *                              (id 0), for it to tell the other nodes
 *                              of a cluster; no answer
 *   CLAIM    module -> engine  key, etag, size: may this process fetch
 *                              the object's misses itself (one sequential
 *                              reader: no second process's copy of each
 *                              byte), with the fetch memory WELCOME said?
 *                              DONE err 0 yes, EBUSY no (another client
 *                              reads it, or the memory is taken): then
 *                              FETCH as usual
 *   UNCLAIM  module -> engine  key, etag: done, or no fetch of its own is
 *                              left after a REVOKE; no answer (a closed
 *                              connection drops its claim)
 *   REVOKE   engine -> module  key, etag: another client wants the
 *                              object; fetch no more of it (FETCH it),
 *                              and UNCLAIM once the fetches begun are in
 *                              the cache; their FETCHes wait until then
 */
#ifndef BUCKETFS_BFS_PROTO_H
#define BUCKETFS_BFS_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <talloc.h>

#define BFS_PROTO_VERSION 1
#define BFS_PROTO_MAX_FRAME (64u * 1024)
#define BFS_PROTO_HDR 12 /* length, version, type, id */

enum bfs_proto_type {
	BFS_PM_HELLO = 1,
	BFS_PM_WELCOME = 2,
	BFS_PM_UPLOAD = 3,
	BFS_PM_WAIT = 4,
	BFS_PM_DONE = 5,
	BFS_PM_STATUS = 6,
	BFS_PM_STATE = 7,
	BFS_PM_FETCH = 8,
	BFS_PM_PREFETCH = 9,
	BFS_PM_LIST = 10,
	BFS_PM_CHANGED = 11,
	BFS_PM_RELEASE = 12,
	BFS_PM_CLAIM = 13,
	BFS_PM_UNCLAIM = 14,
	BFS_PM_REVOKE = 15,
};

enum bfs_proto_field {
	BFS_PF_SHARE = 1,	/* string */
	BFS_PF_CACHE_DIR = 2,	/* string */
	BFS_PF_KEY = 3,		/* string */
	BFS_PF_STAGING = 4,	/* string */
	BFS_PF_ETAG = 5,	/* string */
	BFS_PF_PID = 6,		/* integer */
	BFS_PF_ERR = 7,		/* integer */
	BFS_PF_PENDING = 8,	/* integer */
	BFS_PF_UPLOADED = 9,	/* integer */
	BFS_PF_FAILED = 10,	/* integer */
	BFS_PF_BYTES = 11,	/* integer */
	BFS_PF_SIZE = 12,	/* integer */
	BFS_PF_OFFSET = 13,	/* integer */
	BFS_PF_LENGTH = 14,	/* integer */
	BFS_PF_AHEAD = 15,	/* integer: a block number */
	BFS_PF_AHEAD_N = 16,	/* integer: blocks */
	BFS_PF_FETCHES = 17,	/* integer */
	BFS_PF_FETCHED = 18,	/* integer: bytes */
	BFS_PF_ARENA = 19,	/* integer: bytes */
	BFS_PF_LEND = 20,	/* integer: 0 or 1 */
	BFS_PF_SLOT = 21,	/* integer: an offset in the arena */
	BFS_PF_PIN = 22,	/* integer */
	BFS_PF_LENT = 23,	/* integer: bytes */
	BFS_PF_CLAIM = 24,	/* integer: bytes */
};

/* One message, decoded; strings are talloc children of the message. */
struct bfs_proto_msg {
	uint16_t version;
	enum bfs_proto_type type;
	uint32_t id;
	char *share, *cache_dir, *key, *staging, *etag;
	uint64_t pid, err, pending, uploaded, failed, bytes;
	uint64_t size, offset, length, ahead, ahead_n, fetches, fetched;
	uint64_t arena, lend, slot, pin, lent, claim;
};

/*
 * Encode m as one frame (m->version is ignored: ours is sent).  Only the
 * fields its type carries are written; a string field that is NULL is
 * left out, an integer field is always written.  0, EINVAL for an
 * unknown type, EMSGSIZE if the frame would exceed BFS_PROTO_MAX_FRAME,
 * or ENOMEM.  *buf is a talloc child of mem_ctx; on error nothing is set.
 */
int bfs_proto_encode(TALLOC_CTX *mem_ctx, const struct bfs_proto_msg *m,
		     uint8_t **buf, size_t *len)
	__attribute__((warn_unused_result));

/*
 * Decode the first frame of buf[0..len).  0 with *m (a talloc child of
 * mem_ctx) and *used (the frame's bytes); EAGAIN if buf holds only part
 * of a frame (read more); EPROTO if malformed (a length over the maximum
 * or under 8, known as soon as its 4 bytes are there; a field running
 * past the frame, an integer field not 8 bytes, a NUL in a string, an
 * unknown type); EPROTONOSUPPORT for another version; ENOMEM.  Fields may
 * come in any order; every known one is kept, whatever the type.  On
 * error nothing is set and nothing stays allocated.
 */
int bfs_proto_decode(TALLOC_CTX *mem_ctx, const uint8_t *buf, size_t len,
		     struct bfs_proto_msg **m, size_t *used)
	__attribute__((warn_unused_result));

/*
 * Bytes read from a socket and not yet a whole frame: both ends of the
 * engine's socket keep one.  append: 0 or ENOMEM (the buffer is a talloc
 * child of mem_ctx).  take: decode the first frame and drop its bytes;
 * the results of bfs_proto_decode (EAGAIN: read more).
 */
struct bfs_proto_buf {
	uint8_t *data;
	size_t len;
};
int bfs_proto_buf_append(TALLOC_CTX *mem_ctx, struct bfs_proto_buf *b,
			 const void *data, size_t n)
	__attribute__((warn_unused_result));
int bfs_proto_buf_take(TALLOC_CTX *mem_ctx, struct bfs_proto_buf *b,
		       struct bfs_proto_msg **m)
	__attribute__((warn_unused_result));

/* "HELLO", "WAIT", ...: for log lines. */
const char *bfs_proto_type_name(enum bfs_proto_type t);

#endif
