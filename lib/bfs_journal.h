/*
 * The writeback journal: bucket changes that were promised to a client but
 * may not have reached S3 yet, in LMDB, shared by every smbd process of a
 * cache folder.
 *
 * One record per object key (the key the change is about):
 *   PUT     upload the staging file to key (a close or flush in progress,
 *           or one that failed and keeps its data; or a file renamed
 *           while open and written: then src is the object it was before
 *           the rename, deleted only once key is in S3, and open says the
 *           staging file is still being written);
 *   COPY    copy src to key, then delete src (a rename); handed to the
 *           engine (index_gone), only the copy, of version src_etag:
 *           src's delete is a DELETE record of its own, which waits for
 *           the copy (a rename answered before S3 has the new name);
 *   DELETE  delete key (and src, if set: the old name of a file renamed
 *           while open, then deleted);
 *   ABORT   abort multipart upload upload_id of object src: a file still
 *           being written streams its parts before its close
 *           (bfs_stream.h), and if its process dies first, nothing was
 *           promised.  Its key is BFS_JKEY_ABORT and the upload id, never
 *           an object key (S3 keys are UTF-8), so it sits beside the
 *           other changes to src.
 * A record names the process working on it.  Whoever opens the journal
 * later finds records of dead processes and finishes them (claiming them
 * first, so that two processes never both do), which is how an smbd killed
 * at any moment loses no acknowledged write.  Commits are synced to disk.
 */
#ifndef BUCKETFS_BFS_JOURNAL_H
#define BUCKETFS_BFS_JOURNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>
#include <talloc.h>

#define BFS_JKEY_ABORT "\xff" "abort "

enum bfs_jop {
	BFS_J_PUT = 1,
	BFS_J_COPY = 2,
	BFS_J_DELETE = 3,
	BFS_J_ABORT = 4,
};

struct bfs_jrec {
	char *key;		/* full object key */
	enum bfs_jop op;
	pid_t pid;		/* the process working on it */
	uint64_t pid_start;	/* when it started (bfs_proc_start); 0 at
				   encoding: looked up then */
	uint64_t size;		/* PUT: bytes in the staging file */
	time_t mtime;		/* PUT: the client's modification time */
	int last_error;		/* errno of the last failed attempt, or 0 */
	char *staging;		/* PUT: file name in the staging folder */
	char *src;		/* COPY: source key; ABORT: the object;
				   PUT, DELETE: a key to delete after, or NULL */
	char *src_etag;		/* PUT, DELETE: src is deleted only while S3
				   holds this version of it (another client
				   may have made a new one meanwhile);
				   COPY: the version renamed, which the new
				   name's index entry shows until the copy
				   ends (readers read it from src) */
	char *upload_id;	/* PUT: multipart upload in progress, or NULL;
				   ABORT: the upload */
	bool open;		/* PUT: journalled while the file was open:
				   the staging file is the file, whatever its
				   length (size is what it had then) */
	bool started;		/* PUT: its upload has begun (the engine
				   marks this; a rename may retarget a PUT
				   only before) */
	bool index_gone;	/* DELETE: handed to the engine with the
				   name already out of the index under a
				   delete-pending mark; its end clears the
				   mark and leaves the entry alone.  COPY:
				   handed to the engine with the index
				   moved already (bfs_wb_rename_hand_over);
				   its end settles the new name's entry */
};

struct bfs_journal;

int bfs_journal_open(TALLOC_CTX *mem_ctx, const char *dir,
		     struct bfs_journal **out, const char **why);

/* Insert or replace the record for r->key. */
int bfs_journal_put(struct bfs_journal *j, const struct bfs_jrec *r)
	__attribute__((warn_unused_result));
/* 0, or ENOENT. */
int bfs_journal_get(struct bfs_journal *j, TALLOC_CTX *mem_ctx,
		    const char *key, struct bfs_jrec *r);
/* Remove key's record if it still belongs to pid (0 even if absent). */
int bfs_journal_done(struct bfs_journal *j, const char *key, pid_t pid)
	__attribute__((warn_unused_result));
/*
 * Remove key's record only while it is still an op record of pid: one
 * process (the engine) may hold a newer record of the key by then, a
 * close's upload after the delete it runs.  0, or ESTALE when the record
 * is another (or gone): the caller's change was overtaken.
 */
int bfs_journal_done_op(struct bfs_journal *j, const char *key, pid_t pid,
			enum bfs_jop op)
	__attribute__((warn_unused_result));

/*
 * Records whose process is gone, taken over by pid in one transaction:
 * the caller now finishes them.  Sorted: copies first, then uploads, then
 * deletes, so a rename's source is copied before anything deletes it.
 * Only records of keys under prefix ("" for a whole cache folder's) whose
 * staging file is a plain name are taken; others stay, with a log line
 * (bfs_jrec_foreign).
 */
int bfs_journal_claim_orphans(struct bfs_journal *j, TALLOC_CTX *mem_ctx,
			      pid_t pid, const char *prefix,
			      struct bfs_jrec **recs, size_t *n)
	__attribute__((warn_unused_result));

/*
 * Why r may not be run for a share of prefix (its keys outside it, its
 * staging file not a name in the staging folder), or NULL if it may.  A
 * journal is root's in a folder only root may write: this keeps a record
 * from elsewhere (a copied folder, a hand edit) from uploading a file
 * outside the staging folder or changing keys of another share.
 */
const char *bfs_jrec_foreign(const struct bfs_jrec *r, const char *prefix);

/*
 * Insert or replace the record for r->key, as bfs_journal_put, and return
 * in *old (a child of mem_ctx) the record it replaced: old->key is NULL
 * if there was none.  One transaction: whoever reads old can tell whether
 * its upload had started before it was replaced.
 */
int bfs_journal_swap(struct bfs_journal *j, TALLOC_CTX *mem_ctx,
		     const struct bfs_jrec *r, struct bfs_jrec *old)
	__attribute__((warn_unused_result));

/*
 * Replace key's record with r (NULL: remove it) only while it is still
 * the upload (pid, staging) the caller works on; ESTALE if it was
 * replaced (a newer close of key) or is gone.  A finished or failed
 * upload never overwrites the record of a newer one this way.
 */
int bfs_journal_update(struct bfs_journal *j, const char *key, pid_t pid,
		       const char *staging, const struct bfs_jrec *r)
	__attribute__((warn_unused_result));

/*
 * A rename of src, whose upload is (pid, staging): in one transaction
 * remove src's record and put r (the same upload, to r->key), returning
 * in *old the record r replaced (old->key NULL: none).  An upload that
 * began may be retargeted only with a staging file of its own
 * (r->staging, a second name of the same bytes): the running one goes on
 * reading its own.  ESTALE if src's record is another, or its upload
 * began and r shares its staging file: the caller renames as for any
 * object.
 */
int bfs_journal_retarget(struct bfs_journal *j, TALLOC_CTX *mem_ctx,
			 const char *src, pid_t pid, const char *staging,
			 const struct bfs_jrec *r, struct bfs_jrec *old)
	__attribute__((warn_unused_result));

/*
 * Several records changed in one transaction, decided on what the others
 * hold at that moment (a rename handed to the engine: a copy to one name
 * and a delete of another, only while neither's record changed since,
 * with what a third name holds).  fn reads, writes and removes through t;
 * its 0 commits (synced to disk), any other value is returned with
 * nothing changed.  Reads: 0, ENOENT (none or unreadable), or an errno.
 */
struct bfs_journal_txn;
int bfs_journal_atomically(struct bfs_journal *j,
			   int (*fn)(struct bfs_journal_txn *t, void *priv),
			   void *priv)
	__attribute__((warn_unused_result));
int bfs_journal_txn_read(struct bfs_journal_txn *t, TALLOC_CTX *mem_ctx,
			 const char *key, struct bfs_jrec *r);
int bfs_journal_txn_write(struct bfs_journal_txn *t, const struct bfs_jrec *r)
	__attribute__((warn_unused_result));
int bfs_journal_txn_remove(struct bfs_journal_txn *t, const char *key)
	__attribute__((warn_unused_result));

/*
 * Replace key's record with r (NULL: remove it) only while it is still an
 * op record of pid's; ESTALE otherwise.  (bfs_journal_update for records
 * other than uploads: e.g. a failed DELETE's last_error.)
 */
int bfs_journal_update_op(struct bfs_journal *j, const char *key, pid_t pid,
			  enum bfs_jop op, const struct bfs_jrec *r)
	__attribute__((warn_unused_result));

/*
 * Whether a record of op is journalled for a key under prefix (keys that
 * start with it), other than except (NULL: none).  false if the journal
 * cannot be read.
 */
bool bfs_journal_has_op_under(struct bfs_journal *j, const char *prefix,
			      enum bfs_jop op, const char *except);

/* Whether process pid exists (any process of that number). */
bool bfs_journal_pid_alive(pid_t pid);

/*
 * A stamp of when process pid started (this boot's tag and the clock
 * ticks since boot, from /proc), 0 if unknown.  A record keeps its
 * owner's: should the owner die and its number be given to another
 * process (a reboot, a busy host), that one started later, and the
 * record is an orphan all the same.  No setting of the wall clock
 * changes it: every process computes the same stamp for a live owner.
 */
uint64_t bfs_proc_start(pid_t pid);

/* Whether the process a record names still runs: its pid, same start. */
bool bfs_jrec_owner_alive(const struct bfs_jrec *r);

/*
 * Every record (for bucketfs-ctl, the staging sweep and tests), read in
 * one transaction; *unreadable (optional) counts those it skipped, which
 * this version cannot decode (a newer one's, after a downgrade).
 */
int bfs_journal_list(struct bfs_journal *j, TALLOC_CTX *mem_ctx,
		     struct bfs_jrec **recs, size_t *n, size_t *unreadable);

/* Record encoding, exposed for tests. */
int bfs_jrec_encode(TALLOC_CTX *mem_ctx, const struct bfs_jrec *r, void **buf,
		    size_t *len);
int bfs_jrec_decode(TALLOC_CTX *mem_ctx, const void *buf, size_t len,
		    struct bfs_jrec *r);

#endif
