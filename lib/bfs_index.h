/*
 * The metadata index: what S3 listings said, in LMDB, shared by every smbd
 * process of a cache folder.
 *
 * A directory is named by its key prefix ("" for the bucket root, else
 * ending in '/').  Its children are stored under "<prefix>\0<name>", so the
 * direct children of one directory are one sorted cursor range and never
 * need a scan of anything else.  Each directory also has a record saying
 * when it was last listed, which is what revalidation looks at.
 *
 * Inode numbers are derived from the full key (so they are the same in
 * every process and across restarts), kept in the record once given, and
 * made unique through a reverse map: a collision takes the next free number.
 *
 * The index is a cache of S3 and is kept to a size: its LMDB map grows
 * when a write finds it full (doubling, up to a ceiling; other processes
 * follow), and once the pages in use pass a budget the folders used least
 * recently are evicted after the write that passed it: their listing (the
 * "listed at" record) and their children, never a pending one
 * (BFS_ENT_PENDING: bytes not yet in S3), never a folder used or listed in
 * the last two minutes.  The next access lists them from S3 again.  A
 * folder's use is its listing, and each bfs_index_dir_listed (every lookup
 * and listing of the share starts there), noted at most once a minute and
 * only once data.mdb is past half the budget.  At the ceiling, a write
 * that finds the map full evicts too, then fails with ENOSPC.
 *
 * Inodes and eviction: a name keeps its number while its entry is in the
 * index.  An evicted entry gives its number back; listed again, the name
 * gets the number derived from its key, the one it had unless two keys'
 * hashes collided and they come back in the other order.  Pending
 * entries, which open files use, are never evicted.
 */
#ifndef BUCKETFS_BFS_INDEX_H
#define BUCKETFS_BFS_INDEX_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <talloc.h>

#include "bfs_meta.h"
#include "s3_dirlist.h"

/*
 * The entry that stands for key in the index: a file's (bfs_key_split),
 * or for a folder's marker object ("a/b/") the folder's in its parent
 * ("a/", "b"), *is_dir then true.  Both strings on mem_ctx.
 */
int bfs_key_entry(TALLOC_CTX *mem_ctx, const char *key, char **dir,
		  char **name, bool *is_dir);

/* Split a full key into its directory prefix and name (both on mem_ctx). */
int bfs_key_split(TALLOC_CTX *mem_ctx, const char *key, char **dir,
		  char **name);

/* The root directory's inode; derived inodes never take it. */
#define BFS_ROOT_INO 2

struct bfs_entry {
	char *name;
	bool is_dir;
	uint64_t size;
	time_t mtime; /* -1 if S3 gave none (common prefixes) */
	uint64_t ino;
	char *etag; /* NULL for directories */
	uint32_t flags;
	/*
	 * The file's own times and attributes (a client's SETINFO, or the
	 * object's user metadata): kept while the object keeps its ETag.
	 */
	struct bfs_meta meta;
};

/*
 * The entry's bytes or name are ours and not yet in S3 (a file being
 * written, or an upload in progress): a relisting from S3 keeps it.
 */
#define BFS_ENT_PENDING 0x1

struct bfs_index;

/*
 * What a cache folder serves, "endpoint/bucket" ("aws/bucket" for AWS's
 * own endpoints): cached bytes, listings and journalled uploads belong to
 * one bucket of one S3 service, and a same-named bucket elsewhere is
 * another bucket.
 */
char *bfs_index_identity(TALLOC_CTX *mem_ctx, const char *endpoint,
			 const char *bucket);

/*
 * Open (creating) the index in dir.  served (bfs_index_identity) is
 * recorded on first use: a folder holding another bucket's or another
 * endpoint's index is refused (EEXIST, *why says which and what to do).
 */
int bfs_index_open(TALLOC_CTX *mem_ctx, const char *dir, const char *served,
		   struct bfs_index **out, const char **why);

/* How large the index may get (bfs_index_opts_default has the defaults). */
struct bfs_index_opts {
	size_t map_size;	/* the LMDB map at open (address space) */
	size_t map_max;		/* it grows up to this */
	/*
	 * Bytes of pages in use above which listings are evicted (down to
	 * 7/8 of it); at most half of map_max: LMDB reuses a freed page only
	 * once no reader can see it, and a transaction copies the pages it
	 * changes, so the map holds the pages in use and recent copies.
	 */
	size_t budget;
};

/* map 4 GiB at open, growing up to 64 GiB; budget 4 GiB. */
void bfs_index_opts_default(struct bfs_index_opts *o);

/* bfs_index_open with sizes of its own (o NULL: the defaults). */
int bfs_index_open_opts(TALLOC_CTX *mem_ctx, const char *dir,
			const char *served, const struct bfs_index_opts *o,
			struct bfs_index **out, const char **why)
	__attribute__((warn_unused_result));

struct bfs_index_space {
	size_t live;		/* bytes of the pages in use */
	size_t map;		/* this process's map of the file */
	size_t file;		/* data.mdb up to its last page in use */
	size_t budget;		/* live above this evicts listings */
	uint64_t evicted;	/* listings evicted through this handle */
};
int bfs_index_space(struct bfs_index *idx, struct bfs_index_space *s)
	__attribute__((warn_unused_result));

/*
 * When was dir last listed?  0 with *listed_at, or ENOENT if never (or
 * invalidated).
 */
int bfs_index_dir_listed(struct bfs_index *idx, const char *dir,
			 time_t *listed_at);

/*
 * Proofs that the bucket answered: when a tree connect's probe made with
 * the settings and credentials whose digest is tag (bfs_probe_tag) last
 * succeeded, so that later connects may trust it for a while instead of
 * asking S3 again (bfs_probe_bucket).  Kept in the index's meta table;
 * storing one drops those older than BFS_INDEX_PROOF_KEEP seconds
 * (credentials that rotate leave one each).
 */
#define BFS_INDEX_PROOF_TAG 32
#define BFS_INDEX_PROOF_KEEP 86400
/* 0 with *at, or ENOENT if tag has none. */
int bfs_index_proof_get(struct bfs_index *idx,
			const uint8_t tag[BFS_INDEX_PROOF_TAG], int64_t *at);
int bfs_index_proof_put(struct bfs_index *idx,
			const uint8_t tag[BFS_INDEX_PROOF_TAG], int64_t at)
	__attribute__((warn_unused_result));

/*
 * The count of changes this host has made to the index's names: read it
 * before asking S3 for a listing, and give it to bfs_index_store_dir.
 */
int bfs_index_change_seq(struct bfs_index *idx, uint64_t *seq)
	__attribute__((warn_unused_result));

/*
 * Replace the children of d->prefix with d's entries (keeping the inode
 * numbers of names that stay) and mark the directory listed at now.
 * since is bfs_index_change_seq from before the listing was asked for:
 * names changed after it keep what the index says (S3's answer may
 * predate the change).
 * Its transaction writes only that: a full disk fails it as before
 * (ENOSPC, EIO, EFBIG from the commit), and the eviction the index's
 * budget may ask for after it runs in transactions of its own, whose
 * failure is logged and not returned.
 */
int bfs_index_store_dir(struct bfs_index *idx, const struct s3_dir *d,
			time_t now, uint64_t since)
	__attribute__((warn_unused_result));

/* Forget when dir was listed, so the next access lists it again. */
int bfs_index_invalidate_dir(struct bfs_index *idx, const char *dir)
	__attribute__((warn_unused_result));

/*
 * Forget when every directory was listed: each is listed again at its next
 * access (its entries stay until then).  *n: how many listings that was.
 */
int bfs_index_invalidate_all_dirs(struct bfs_index *idx, uint64_t *n)
	__attribute__((warn_unused_result));

/*
 * Date dir's stored listing listed_at (when its last page came) for the
 * TTL: bfs_index_store_dir was given when the listing started, but a
 * listing slower than the TTL must not be stale as soon as it is stored.
 */
int bfs_index_dir_set_listed(struct bfs_index *idx, const char *dir,
			     time_t listed_at)
	__attribute__((warn_unused_result));

/*
 * Listings in progress, across the processes sharing the index: one lists
 * a directory from S3 while the others that want it wait for its result,
 * instead of asking S3 for the same pages at once (many clients starting
 * together after the TTL ran out).  Claim: 0 when this process is to list
 * dir now; EBUSY while another live process does, for at most max_age
 * seconds from its claim.  Release after storing the listing (or failing).
 */
int bfs_index_listing_claim(struct bfs_index *idx, const char *dir,
			    unsigned max_age)
	__attribute__((warn_unused_result));
void bfs_index_listing_release(struct bfs_index *idx, const char *dir);

/*
 * Whether and when dir was listed (*listed, *listed_at) and its child
 * name, in one read transaction: a lookup's usual case, which smbd makes
 * several times per open.  0 with *e; ENOENT (no such child, or no
 * listing: then *listed is false); or an errno.
 */
int bfs_index_lookup_listed(struct bfs_index *idx, TALLOC_CTX *mem_ctx,
			    const char *dir, const char *name, bool *listed,
			    time_t *listed_at, struct bfs_entry *e);

/* One child of dir.  0, or ENOENT. */
int bfs_index_lookup(struct bfs_index *idx, TALLOC_CTX *mem_ctx,
		     const char *dir, const char *name, struct bfs_entry *e);

/*
 * Up to max children of dir in name order, starting after the name
 * `after` (NULL: from the first).  *n < max means the end was reached.
 */
int bfs_index_children(struct bfs_index *idx, TALLOC_CTX *mem_ctx,
		       const char *dir, const char *after, size_t max,
		       struct bfs_entry **ents, size_t *n);

/*
 * Set one child of dir (a file written or a directory made through the
 * share).  Keeps the inode number the name had, else allocates one; the
 * number is returned in e->ino.  The fields of e->meta it does not set
 * keep the values the entry had.
 */
int bfs_index_put(struct bfs_index *idx, const char *dir,
		  struct bfs_entry *e)
	__attribute__((warn_unused_result));

/*
 * What the object key said of itself at version etag (its user metadata,
 * from a GET): the fields of m its entry does not have yet are set, if
 * the entry is still that version.  ENOENT if there is no entry.
 */
int bfs_index_object_meta(struct bfs_index *idx, const char *key,
			  const char *etag, const struct bfs_meta *m)
	__attribute__((warn_unused_result));

/*
 * Set the fields of m that which names (BFS_META_*) on dir/name's entry: a
 * client's SETINFO of times or attributes.  ENOENT if there is none.
 */
int bfs_index_set_meta(struct bfs_index *idx, const char *dir,
		       const char *name, const struct bfs_meta *m,
		       uint32_t which)
	__attribute__((warn_unused_result));

/*
 * bfs_index_put for a name that must not exist yet: EEXIST if dir has a
 * child of that name, decided in the transaction that adds it, so that
 * of two processes making the same name at once exactly one wins.
 */
int bfs_index_put_new(struct bfs_index *idx, const char *dir,
		      struct bfs_entry *e)
	__attribute__((warn_unused_result));

/*
 * What S3 said of n objects (full keys; e.g. bucketfs-ctl warm's listing),
 * outside a directory listing: each becomes its directory's child, keeping
 * its inode number, unless the name holds a pending entry (ours until
 * uploaded).  Their directories do not count as listed.  Names in ents
 * are ignored.
 */
int bfs_index_learn(struct bfs_index *idx, const char *const *keys,
		    const struct bfs_entry *ents, size_t n)
	__attribute__((warn_unused_result));
/* Remove one child of dir.  0 even if it was not there. */
int bfs_index_remove(struct bfs_index *idx, const char *dir,
		     const char *name)
	__attribute__((warn_unused_result));

/*
 * Remove one child of dir whose object S3 still has: its delete is handed
 * to the engine.  Until the next change of the name here (the delete done:
 * bfs_index_remove; or a new file put there) no listing nor
 * bfs_index_learn brings it back, whenever S3 answered.
 */
int bfs_index_remove_pending(struct bfs_index *idx, const char *dir,
			     const char *name)
	__attribute__((warn_unused_result));

/*
 * The delete of a child of dir is done in S3 (or given up): if the name
 * still carries its delete-pending mark, make it an ordinary change (the
 * next listing sent after it is the truth).  The entry, if any, stays.
 */
int bfs_index_clear_pending(struct bfs_index *idx, const char *dir,
			    const char *name)
	__attribute__((warn_unused_result));

/*
 * The full keys (dir and name, no trailing "/") of the names that carry a
 * delete-pending mark made before `before`, on mem_ctx: for a sweep of
 * marks whose delete is no longer journalled (a crash between the two).
 */
int bfs_index_delete_marks(struct bfs_index *idx, TALLOC_CTX *mem_ctx,
			   time_t before, char ***keys, size_t *n)
	__attribute__((warn_unused_result));

/*
 * Move a child to another name in one transaction (replacing what the
 * destination held): no reader ever sees both names or neither.  The
 * entry keeps its inode number and flags.
 */
int bfs_index_rename(struct bfs_index *idx, const char *sdir,
		     const char *sname, const char *ddir, const char *dname)
	__attribute__((warn_unused_result));

/*
 * bfs_index_rename for a rename handed to the engine, S3 still holding the
 * object under the old name only: the new name's entry is pending (no
 * listing takes it away) and keeps the old one's ETag, and the old name
 * carries a delete-pending mark (no listing brings it back) until the
 * engine's delete of it clears the mark.
 */
int bfs_index_rename_pending(struct bfs_index *idx, const char *sdir,
			     const char *sname, const char *ddir,
			     const char *dname)
	__attribute__((warn_unused_result));

/*
 * A rename's copy is done (bfs_index_rename_pending): dir/name gets the
 * copy's etag and is no longer pending, only while it is still the
 * pending entry with the renamed version's ETag was, in one transaction
 * (a newer change of the name, a close or another rename over it, keeps
 * its entry).  0, ESTALE (changed since), ENOENT (gone), or an errno.
 */
int bfs_index_settle(struct bfs_index *idx, const char *dir,
		     const char *name, const char *was, const char *etag)
	__attribute__((warn_unused_result));

/*
 * An upload of size bytes dated mtime ended with etag, and dir/name shows
 * a pending entry without an ETag of that size and time, moved there by a
 * rename (an inode number other than not_ino, the entry's the upload
 * settled): the upload's version, whose ETag the rename covered.  It gets
 * etag and is no longer pending, in one transaction.  0, ESTALE (another
 * entry: not_ino's made pending again by a newer close, settled, a
 * folder, another size or time), ENOENT, or an errno.
 */
int bfs_index_settle_unnamed(struct bfs_index *idx, const char *dir,
			     const char *name, uint64_t size, time_t mtime,
			     uint64_t not_ino, const char *etag)
	__attribute__((warn_unused_result));

/* Entries held and directories with a listing (for bucketfs-ctl). */
int bfs_index_count(struct bfs_index *idx, uint64_t *entries, uint64_t *dirs);

/*
 * Forget everything known under key prefix `prefix` ("" = all): listings
 * and entries (except pending ones), so the next access asks S3 again.
 * *n counts the records dropped; each dropped file entry is also passed
 * to each() (optional) with its full key, e.g. to drop its cached blocks.
 * A write that found the map full runs again once it grew: each() may
 * then see an entry twice.
 */
int bfs_index_invalidate_tree(struct bfs_index *idx, const char *prefix,
			      uint64_t *n,
			      void (*each)(void *priv, const char *key,
					   const struct bfs_entry *e),
			      void *priv)
	__attribute__((warn_unused_result));

struct bfs_index_fsck {
	uint64_t entries;	/* entry records that decode */
	uint64_t bad_entries;	/* records that do not: dropped, their
				 * directory listed again at next access */
	uint64_t ino_missing;	/* entries the inode map had lost */
	uint64_t ino_shared;	/* entries whose inode another key owns:
				 * given a new one */
	uint64_t ino_orphans;	/* inode map entries owned by no entry */
};

/*
 * Check every entry record and the inode map against each other, in one
 * write transaction (other writers wait; readers do not), and with repair
 * fix what is wrong.  each() (optional) gets every file entry with its
 * full key, e.g. to check the cache against the index (twice, if a repair
 * found the map full and ran again).
 */
int bfs_index_check(struct bfs_index *idx, bool repair,
		    void (*each)(void *priv, const char *key,
				 const struct bfs_entry *e),
		    void *priv, struct bfs_index_fsck *r)
	__attribute__((warn_unused_result));

/* Record encoding, exposed for tests (and fuzzing later). */
int bfs_index_encode(TALLOC_CTX *mem_ctx, const struct bfs_entry *e,
		     void **buf, size_t *len);
int bfs_index_decode(TALLOC_CTX *mem_ctx, const void *buf, size_t len,
		     struct bfs_entry *e);

/* The inode number a key would get if nothing collided. */
uint64_t bfs_index_ino_hint(const char *full_key);

/*
 * Tests only: hints of this many bits (1..63; 63 is the default), so that
 * ten thousand names collide hundreds of times.
 */
void bfs_index_test_ino_bits(unsigned bits);

#endif
