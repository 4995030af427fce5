/*
 * One directory of the bucket: every object and common prefix directly
 * under a key prefix, fetched with ListObjectsV2 (delimiter "/", all pages)
 * and kept sorted by name for lookups.
 */
#ifndef BUCKETFS_S3_DIRLIST_H
#define BUCKETFS_S3_DIRLIST_H

#include "s3_ops.h"

/*
 * The longest "<folder prefix>\0<name>" the index can hold (LMDB's key
 * limit): a longer entry is hidden from listings, and a name that would
 * make one is refused before S3 is changed.
 */
#define S3_DIR_KEY_MAX 511

struct s3_dirent {
	char *name; /* one path component: no '/' */
	bool is_dir;
	uint64_t size;
	char *etag;
	time_t mtime;
};

struct s3_dir {
	char *prefix; /* "" for the bucket root, else ends in '/' */
	struct s3_dirent *ents;
	size_t n;
	size_t n_hidden; /* keys that cannot be a name here (see .c) */
	/* The first few of them worth telling an admin. */
	struct s3_hidden {
		char *key;
		const char *why; /* static text */
	} hidden[8];
	size_t n_hidden_sample;
};

/* Fetch every page.  prefix: "" or ending in '/'. */
struct tevent_req *s3_dirlist_send(TALLOC_CTX *mem_ctx,
				   struct tevent_context *ev,
				   struct s3_client *c, const char *prefix);
int s3_dirlist_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		    struct s3_dir **dir, struct s3_status *st);

/*
 * Where a listing stops: a hostile or broken endpoint could send pages
 * without end (the same continuation token again, or new ones forever) or
 * a folder of any size.  The listing uses 100,000 pages and 10 million
 * entries (S3 sends 1,000 a page), far past any folder a share serves.
 */
struct s3_dirlist_caps {
	unsigned max_pages;
	size_t max_entries;
};

/*
 * After page, the pages-th of a listing whose folder holds entries so far
 * and whose previous page's continuation token was last_token (NULL after
 * the first): 0 (the listing goes on if page->truncated, else it is
 * whole), EPROTO (MalformedListing: truncated without a new token) or
 * EFBIG (ListingTooLong: truncated past caps), *st saying so.
 */
int s3_dirlist_check_page(const struct s3_listing *page, unsigned pages,
			  size_t entries, const char *last_token,
			  const struct s3_dirlist_caps *caps,
			  struct s3_status *st);

/* Building blocks, exposed for tests. */
struct s3_dir *s3_dir_new(TALLOC_CTX *mem_ctx, const char *prefix);
int s3_dir_add_page(struct s3_dir *d, const struct s3_listing *page);
void s3_dir_finish(struct s3_dir *d);

/* Exact lookup (binary search); NULL if absent. */
const struct s3_dirent *s3_dir_find(const struct s3_dir *d, const char *name);

#endif
