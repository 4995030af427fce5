/*
 * One share's state in one smbd (struct bfs_conn) and one open file or
 * folder of it (struct bfs_fh): Samba-independent, so that the policy
 * working on them (staging, renames, reload, probe) can live in lib/ and
 * be unit-tested.  modules/vfs_bucketfs.c allocates them at connect and
 * open, hangs them on Samba's handle and fsp, and calls lib/ with them.
 */
#ifndef BUCKETFS_BFS_SHARE_H
#define BUCKETFS_BFS_SHARE_H

#include "bfs_meta.h"
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>
#include <talloc.h>
#include <tevent.h>

#include "bfs_params.h"
#include "bfs_reader.h"
#include "bfs_stats.h"
#include "bfs_stream.h"
#include "bfs_upload.h"
#include "s3_client.h"

struct bfs_index;
struct bfs_cache;
struct bfs_journal;
struct bfs_wb;
struct bfs_engine;

struct bfs_conn {
	const char *service;
	int snum;
	/* smb.conf's bucketfs: values of this share (the module's getter) */
	struct bfs_psrc params;
	/*
	 * The connected or forced user, copied: smbd replaces (and frees)
	 * conn->session_info on every change of user.
	 */
	uid_t owner_uid;
	gid_t owner_gid;
	time_t config_read;	/* when the reloadable parameters were read */
	char *last_bad_parm;	/* "name=value" of smb.conf last refused */
	const char *imds;	/* metadata service the credentials came from */
	struct bfs_stats *stats;	/* the cache folder's shared totals */
	struct bfs_stats_vec flushed;	/* our counters already added there */
	time_t stats_flushed;
	uint64_t cache_limit;
	int metrics_interval;
	const char *metrics_file;
	time_t creds_expire;	/* 0: credentials that do not expire */
	time_t creds_retry;	/* no refresh attempt before this */
	char *connectpath;
	char *cwd;	/* absolute, normalised */
	char *prefix;	/* key prefix of the share root: "" or ends in '/' */
	int ttl;	/* seconds a listing is trusted; 0 always revalidate */
	mode_t file_mode;
	mode_t dir_mode;
	uint64_t dev;
	time_t connected;
	/*
	 * S3 could not be reached (connect, timeout, 5xx): until then,
	 * listings the index has are served as they are, without asking.
	 */
	time_t s3_down_until;

	struct s3_client_config cfg;
	struct tevent_context *sync_ev;
	struct s3_client *s3;		/* on sync_ev */
	struct bfs_reader *reader;	/* on sync_ev */
	struct tevent_context *loop_ev;	/* smbd's own event loop */
	struct tevent_context *async_ev;
	struct s3_client *s3_async;	/* on smbd's event context */
	struct bfs_reader *reader_async;

	struct bfs_index *index;
	struct bfs_cache *cache;
	struct bfs_journal *journal;
	struct bfs_wb *wb;		/* on sync_ev */
	const char *cache_dir;
	struct bfs_upload_params upload;
	bool stream_parts;	/* send parts while a new file is written */
	struct bfs_stream_budget stream_budget;
	struct bfs_fh *open_files;	/* files open in this connection */
	struct tevent_queue *stage_q;	/* stagings, one at a time */
	uint64_t stage_gen;		/* staging files made so far */
	uint64_t meta_gen;		/* times or attributes set through it */
	bool close_local;	/* `bucketfs:close = local` */
	const char *engine_path;
	struct bfs_engine *engine;	/* NULL: closes upload themselves */
	struct tevent_context *engine_ev;	/* smbd's, where it answers */
	uint64_t writeback_limit;	/* bytes the engine may hold; 0 none */
	uint64_t fetch_memory;	/* fetch buffers per reader; 0 none */
	uint64_t max_file_size;	/* a write past it: disk full */
	/*
	 * The stale listings lately asked of the engine, each at most once
	 * a second: smbd resolves every folder of a path for each open, so
	 * one remembered prefix was replaced on every lookup and each sent
	 * its LIST again.
	 */
	struct bfs_list_asked {
		char *prefix;
		time_t at;
	} list_asked[8];
	unsigned dir_rename_max;	/* objects a directory rename may move */
	/*
	 * S3 was changed here (an upload, a rename, a delete): the module
	 * tells the other nodes of a cluster (bfs_changed).  NULL: nobody.
	 */
	void (*on_change)(void *priv, const char *key);
	void *on_change_priv;
	uint32_t block_size;
	unsigned readahead;		/* blocks */
	uint64_t sync_reads, async_reads;
	/* The object this process fetches itself (lib/bfs_claim.h). */
	struct bfs_read_claim *claim;
	unsigned claim_asking;		/* CLAIMs out, all of one object: */
	struct bfs_cache_id claim_asking_id;
};

/* Per open file or directory. */
struct bfs_fh {
	char *rel;
	char *key;
	bool is_dir;
	bool pending;		/* its entry was pending when looked up: an
				   upload or a rename's copy not yet done */
	uint64_t size;
	char *etag;
	time_t mtime;
	uint64_t ino;
	/* Kept times and attributes: the entry's at open, read again once a
	 * client of this connection set some (bfs_fh_meta). */
	struct bfs_meta meta;
	uint64_t meta_gen;	/* bc->meta_gen when meta was read */
	struct bfs_object obj;	/* files: what reads fetch */
	uint64_t next_off;	/* where a sequential reader reads next */
	/*
	 * Blocks before it were asked of the engine as readahead: it may
	 * still hold them in its fetch arena, to lend, though the cache has
	 * them too (bfs_pread_send asks it first).
	 */
	uint64_t lend_until;
	bool claim_asked;	/* a claim of its object was answered */

	struct bfs_conn *bc;
	struct bfs_fh *prev, *next;	/* in bc->open_files */
	bool writable;
	char *open_etag;	/* the S3 version a writer started from */
	int stage_fd;		/* -1: bytes come from the cache / S3 */
	char *stage_name;	/* NULL: a staging file of someone else's */
	bool dirty;		/* staged bytes not yet uploaded */
	bool deleted;		/* unlinked while open: upload nothing */
	bool may_stream;	/* a new staging file of this open alone */
	uint64_t wgen;		/* the process-wide number of its last
				   change (bfs_fh_write_gen) */
	struct bfs_stream *stream;	/* parts sent while writing */
};

/* Seconds a connection serves listings from the index once S3 is away. */
#define BFS_OUTAGE_RETRY 5

struct s3_status;
struct bfs_entry;

/* One log line for a failed S3 request: what, where, S3's code and id. */
void bfs_log_s3(struct bfs_conn *bc, const char *what, const char *key,
		const struct s3_status *st);

/*
 * Parameter name of bc->params as the one table in lib/bfs_params says
 * (type, default, bounds): true, or false with one log line naming what
 * the value must be (the same bad value told once per connection).
 */
bool bfs_parm_int(struct bfs_conn *bc, const char *name, int64_t *out);
bool bfs_parm_size(struct bfs_conn *bc, const char *name, uint64_t *out);
bool bfs_parm_bool(struct bfs_conn *bc, const char *name, bool *out);
/* A string parameter, or its default from the table (NULL: unset). */
const char *bfs_parm_string(struct bfs_conn *bc, const char *name);

/*
 * The reloadable values (smbd re-reads smb.conf on reload-config), read
 * at connect and at most once a second after; also refreshes instance-
 * role credentials and flushes the metrics when due.  false if one is
 * bad: at connect that refuses the tree connect, later the running value
 * stays.
 */
bool bfs_follow_config(struct bfs_conn *bc);

/* Add this connection's counts to the folder's totals; rewrite metrics. */
void bfs_stats_flush(struct bfs_conn *bc, time_t now);

/* Refetch expiring instance-role credentials, 5 minutes ahead. */
void bfs_refresh_credentials(struct bfs_conn *bc, time_t now);

/* The index's listing of folder prefix is out of date: list it again. */
void bfs_forget_listing(struct bfs_conn *bc, const char *prefix);

/* key (a folder's ends in '/') changed in S3 through this connection. */
void bfs_changed(struct bfs_conn *bc, const char *key);

/*
 * In a cluster, this connection hears other nodes' changes from now until
 * it ends (the module registered for them).  If no connection of this
 * node to the cache folder was hearing them until now, the index's
 * listings may miss changes told meanwhile: they are all listed again at
 * their next access.  A shared lock on a file in the cache folder, held by
 * every hearing connection, tells.  0, or an errno (then nothing changed).
 */
int bfs_cluster_listen(struct bfs_conn *bc)
	__attribute__((warn_unused_result));

/*
 * Another node changed key: the folder holding it is listed from S3 at
 * its next access, not after the TTL.  Keys outside the share's bucket
 * and prefix are not its business.
 */
void bfs_changed_elsewhere(struct bfs_conn *bc, const char *bucket,
			   const char *key);

/*
 * Make sure the index has a listing of folder rel younger than the TTL:
 * served at once past the TTL when the engine can relist it, else listed
 * here from S3 (or from another process's listing in flight); while S3
 * is away, the index's listing is served as it is.
 */
int bfs_dir_fresh(struct bfs_conn *bc, const char *rel)
	__attribute__((warn_unused_result));

/*
 * rel's index entry into *e (strings on mem_ctx), its folder listed first
 * if stale; the share root is a folder.  ENOENT if there is none.
 */
int bfs_lookup_entry(TALLOC_CTX *mem_ctx, struct bfs_conn *bc,
		     const char *rel, struct bfs_entry *e)
	__attribute__((warn_unused_result));

/* An open's state for rel, as the index entry e describes it. */
struct bfs_fh *bfs_fh_new(TALLOC_CTX *mem_ctx, struct bfs_conn *bc,
			  const char *rel, const struct bfs_entry *e);

#endif
