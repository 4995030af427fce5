/*
 * A file's own times and DOS attributes: what a client set through the
 * share (SETINFO of the create or write time, of the attributes), or what
 * the object's user metadata says.  The index keeps them with the entry
 * (bfs_index.h); S3 keeps them as user metadata sent with each upload, in
 * the headers other S3 tools read:
 *
 *   x-amz-meta-mtime     the modification time, seconds since 1970 as a
 *                        decimal with up to nine fraction digits
 *                        ("1700000000.123456789"): what rclone writes and
 *                        reads, and what s3fs reads (it writes whole
 *                        seconds, read the same way);
 *   x-amz-meta-btime     the creation (birth) time, in the same form: no
 *                        other tool keeps one, so ours follows mtime's;
 *   x-amz-meta-dosattrib the kept DOS attributes in hex ("0x21"), named
 *                        after Samba's user.DOSATTRIB extended attribute.
 *
 * An object without them shows its LastModified and derived attributes.
 */
#ifndef BUCKETFS_BFS_META_H
#define BUCKETFS_BFS_META_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <talloc.h>

#include "s3_sigv4.h"

/* Which fields of struct bfs_meta hold a value. */
#define BFS_META_MTIME 0x1
#define BFS_META_BTIME 0x2
#define BFS_META_ATTRS 0x4

/* The DOS attributes kept: the values of SMB's FILE_ATTRIBUTE_*. */
#define BFS_ATTR_READONLY 0x01
#define BFS_ATTR_HIDDEN 0x02
#define BFS_ATTR_SYSTEM 0x04
#define BFS_ATTR_ARCHIVE 0x20
#define BFS_ATTR_KEPT (BFS_ATTR_READONLY | BFS_ATTR_HIDDEN | \
		       BFS_ATTR_SYSTEM | BFS_ATTR_ARCHIVE)

struct bfs_meta {
	uint32_t have;		/* BFS_META_* */
	struct timespec mtime;	/* tv_nsec in [0, 1e9) */
	struct timespec btime;
	uint32_t attrs;		/* BFS_ATTR_* bits */
};

#define BFS_META_HEADERS_MAX 3

/*
 * m as the user-metadata headers of an upload: up to
 * BFS_META_HEADERS_MAX into kv (values on mem_ctx), their count in *n.
 * 0, or ENOMEM.
 */
int bfs_meta_to_headers(TALLOC_CTX *mem_ctx, const struct bfs_meta *m,
			struct s3_kv *kv, size_t *n);

/*
 * One response header (name in any case, value as sent).  True if it was
 * one of ours and well-formed: its field is set in m.  A malformed value
 * is ignored (the object then shows what S3 says of it).
 */
bool bfs_meta_parse_header(struct bfs_meta *m, const char *name,
			   const char *value);

/* A time as x-amz-meta-mtime writes it, into buf (at least 32 bytes). */
void bfs_meta_format_time(const struct timespec *t, char *buf, size_t len);

/* And back: false for anything but [-]digits[.digits] within range. */
bool bfs_meta_parse_time(const char *s, struct timespec *t);

/*
 * A name made now: its create and modification times are this moment, to
 * the nanosecond, as a disk gives them (and equal, as smbtorture checks).
 */
void bfs_meta_now(struct bfs_meta *m);

/* The same fields set, to the same values (what is not set is ignored). */
bool bfs_meta_equal(const struct bfs_meta *a, const struct bfs_meta *b);

/* Set the fields of src named in which (BFS_META_*) into dst. */
void bfs_meta_merge(struct bfs_meta *dst, const struct bfs_meta *src,
		    uint32_t which);

#endif
