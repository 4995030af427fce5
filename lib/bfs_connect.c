/*
 * A share's setup at a tree connect and its end at the disconnect (see
 * bfs_connect.h).  The order is the tree connect's: parameters first (a
 * typo refuses the connect before anything is opened), then the cache
 * folder, credentials, the probe, and only then writeback, whose journal
 * recovery talks to S3.
 */
#include "bfs_connect.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <talloc.h>
#include <tevent.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "bfs_cache.h"
#include "bfs_claim.h"
#include "bfs_creds.h"
#include "bfs_engine.h"
#include "bfs_index.h"
#include "bfs_journal.h"
#include "bfs_lmdb.h"
#include "bfs_log.h"
#include "bfs_params.h"
#include "bfs_path.h"
#include "bfs_priv.h"
#include "bfs_probe.h"
#include "bfs_reader.h"
#include "bfs_share.h"
#include "bfs_stats.h"
#include "bfs_writeback.h"
#include "s3_client.h"

/*
 * Every bucketfs: parameter a connection fixes at connect, into bc (the
 * reloadable ones through bfs_follow_config); *reuse_buffers, 'reuse
 * read buffers'.  Strings are copied onto bc: a getter's values may be
 * freed by the next reload of smb.conf (Samba's are), and these live as
 * long as the connection.  0, EINVAL (logged), or ENOMEM.
 */
static int bfs_share_read_params(struct bfs_conn *bc, bool *reuse_buffers)
{
	const char *bucket, *prefix, *endpoint, *cache_dir, *ca_file, *mode;
	char *full_root;
	uint64_t size;
	int64_t v;

	if (!bfs_follow_config(bc)) {
		return EINVAL;
	}
	bc->cwd = talloc_strdup(bc, bc->connectpath);
	bc->connected = time(NULL);
	/* Modes are octal in smb.conf, as everywhere in Samba: 0644. */
	if (!bfs_parm_int(bc, "file mode", &v)) {
		return EINVAL;
	}
	bc->file_mode = (mode_t)v;
	if (!bfs_parm_int(bc, "dir mode", &v)) {
		return EINVAL;
	}
	bc->dir_mode = (mode_t)v;

	bucket = bfs_parm_string(bc, "bucket");
	if (bucket == NULL || bucket[0] == '\0') {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: 'bucketfs:bucket' "
			"is not set", bc->service);
		return EINVAL;
	}
	prefix = bfs_parm_string(bc, "prefix");
	bc->prefix = bfs_path_share_prefix(bc, prefix);
	endpoint = bfs_parm_string(bc, "endpoint");
	bc->cfg.bucket = talloc_strdup(bc, bucket);
	bc->cfg.region = talloc_strdup(bc, bfs_parm_string(bc, "region"));
	bc->cfg.endpoint = endpoint != NULL ? talloc_strdup(bc, endpoint) :
					      NULL;
	if (!bfs_parm_bool(bc, "path style", &bc->cfg.path_style) ||
	    !bfs_parm_bool(bc, "verify tls", &bc->cfg.verify_tls) ||
	    !bfs_parm_bool(bc, "anonymous", &bc->cfg.anonymous) ||
	    !bfs_parm_bool(bc, "requester pays", &bc->cfg.requester_pays) ||
	    !bfs_parm_bool(bc, "stream parts", &bc->stream_parts) ||
	    !bfs_parm_bool(bc, "reuse read buffers", reuse_buffers)) {
		return EINVAL;
	}
	ca_file = bfs_parm_string(bc, "ca file");
	if (ca_file != NULL && ca_file[0] != '\0') {
		bc->cfg.ca_file = talloc_strdup(bc, ca_file);
		if (bc->cfg.ca_file == NULL) {
			return ENOMEM;
		}
	}
	if (!bfs_parm_int(bc, "request timeout", &v)) {
		return EINVAL;
	}
	bc->cfg.request_timeout_ms = 1000 * (unsigned)v;
	bc->cfg.connect_timeout_ms = 5000;
	if (!bfs_parm_int(bc, "retries", &v)) {
		return EINVAL;
	}
	bc->cfg.max_retries = (unsigned)v;
	if (bc->prefix == NULL || bc->connectpath == NULL || bc->cwd == NULL ||
	    bc->cfg.bucket == NULL || bc->cfg.region == NULL ||
	    (endpoint != NULL && bc->cfg.endpoint == NULL)) {
		return ENOMEM;
	}
	/* The volume's id: the bucket and prefix served, the same anywhere. */
	full_root = talloc_asprintf(bc, "%s/%s", bucket, bc->prefix);
	if (full_root == NULL) {
		return ENOMEM;
	}
	bc->dev = bfs_index_ino_hint(full_root);
	TALLOC_FREE(full_root);

	cache_dir = bfs_parm_string(bc, "cache dir");
	if (cache_dir == NULL || cache_dir[0] == '\0') {
		cache_dir = talloc_asprintf(bc, "/var/cache/bucketfs/%s",
					    bc->service);
		if (cache_dir == NULL) {
			return ENOMEM;
		}
	}
	if (cache_dir[0] != '/') {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: 'bucketfs:cache dir' "
			"must be an absolute path, not '%s'", bc->service,
			cache_dir);
		return EINVAL;
	}
	if (!bfs_parm_size(bc, "block size", &size)) {
		return EINVAL; /* a power of two, says the table */
	}
	bc->block_size = (uint32_t)size;
	bc->cache_dir = talloc_strdup(bc, cache_dir);
	bc->metrics_file = talloc_strdup(bc, bfs_parm_string(bc,
							     "metrics file"));
	if (bc->cache_dir == NULL) {
		return ENOMEM;
	}
	if (bc->metrics_file != NULL && bc->metrics_file[0] != '/') {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: 'bucketfs:metrics "
			"file' must be an absolute path, not '%s'",
			bc->service, bc->metrics_file);
		return EINVAL;
	}
	/* S3's own bounds: parts of 5 MiB to 5 GiB, objects to 5 TiB. */
	if (!bfs_parm_size(bc, "multipart threshold",
			   &bc->upload.multipart_threshold) ||
	    !bfs_parm_size(bc, "part size", &bc->upload.part_size) ||
	    !bfs_parm_size(bc, "multipart copy threshold",
			   &bc->upload.copy_threshold)) {
		return EINVAL;
	}
	if (!bfs_parm_int(bc, "upload parallel", &v)) {
		return EINVAL;
	}
	bc->upload.parallel = (unsigned)v;
	if (!bfs_parm_int(bc, "stream parallel", &v)) {
		return EINVAL;
	}
	bc->stream_budget.free = (unsigned)v;
	if (!bfs_parm_int(bc, "dir rename max", &v)) {
		return EINVAL;
	}
	bc->dir_rename_max = (unsigned)v;
	mode = bfs_parm_string(bc, "close");
	if (mode == NULL || (strcmp(mode, "local") != 0 &&
			     strcmp(mode, "s3") != 0)) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: 'bucketfs:close' "
			"must be local or s3, not '%s'", bc->service,
			mode ? mode : "");
		return EINVAL;
	}
	bc->close_local = strcmp(mode, "local") == 0;
	bc->engine_path = talloc_strdup(bc, bfs_parm_string(bc, "engine"));
	return 0;
}

/*
 * The index and the extent cache, the journal and the totals, all in
 * the share's cache folder, opened as root (bfs_priv): the folder is the
 * server's, root's and 0700, whoever connects.
 */
static int bfs_open_cache_dir(struct bfs_conn *bc)
{
	const char *dir = bc->cache_dir;
	char *idx_dir = talloc_asprintf(bc, "%s/index", dir);
	char *blk_dir = talloc_asprintf(bc, "%s/cache", dir);
	char *jrn_dir = talloc_asprintf(bc, "%s/journal", dir);
	char *served = bfs_index_identity(bc, bc->cfg.endpoint, bc->cfg.bucket);
	char unsafe[PATH_MAX + 160];
	const char *why = NULL;
	int ret;

	if (idx_dir == NULL || blk_dir == NULL || jrn_dir == NULL ||
	    served == NULL) {
		return ENOMEM;
	}
	/* Root works in it: nobody else may change what is there. */
	ret = bfs_mkdirs(dir);
	if (ret == 0) {
		ret = bfs_dir_trusted(dir, unsafe, sizeof(unsafe));
		why = unsafe;
	}
	if (ret == 0) {
		ret = bfs_index_open(bc, idx_dir, served, &bc->index, &why);
	}
	if (ret == 0) {
		ret = bfs_cache_open(bc, blk_dir, bc->cache_limit,
				     bc->block_size, &bc->cache, &why);
	}
	if (ret == 0 && bfs_cache_recovery(bc->cache) != NULL) {
		const struct bfs_cache_fsck *r = bfs_cache_recovery(bc->cache);

		bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: a process died "
			"with the cache in %s open; checked it: %" PRIu64
			" block records, %" PRIu64 " without their bytes and %"
			PRIu64 " cache files without records removed",
			bc->service, dir, r->blocks, r->bad_blocks,
			r->orphan_files);
	}
	if (ret == 0) {
		ret = bfs_journal_open(bc, jrn_dir, &bc->journal, &why);
	}
	if (ret == 0) {
		char *st_dir = talloc_asprintf(bc, "%s/stats", dir);
		ret = st_dir ? bfs_stats_open(bc, st_dir, &bc->stats, &why) :
			       ENOMEM;
	}
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cache dir %s: %s (%s)",
			bc->service, dir, why ? why : "cannot open",
			strerror(ret));
	}
	return ret;
}

/* The chain of lib/bfs_creds, with this share's smb.conf values. */
static int bfs_load_credentials(struct bfs_conn *bc, uid_t home_uid)
{
	struct bfs_creds_params p = {
		.service = bc->service,
		.conf = &bc->params,
		.anonymous = bc->cfg.anonymous,
		.file = bfs_parm_string(bc, "credentials file"),
		.profile = bfs_parm_string(bc, "profile"),
		.imds = true,
		.imds_endpoint = bfs_parm_string(bc, "imds endpoint"),
	};
	struct bfs_creds creds;
	const char *why = NULL;
	int ret;

	if (!p.anonymous) {
		if (!bfs_parm_bool(bc, "imds", &p.imds)) {
			return EINVAL;
		}
		p.home = bfs_creds_home(home_uid);
	}
	/* The keys are bc's: the clients sign with them all along. */
	ret = bfs_creds_get(bc, &p, &creds, &why);
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: %s", bc->service,
			why);
		return ret;
	}
	bc->cfg.creds = creds.keys;
	bc->creds_expire = creds.expire;
	bc->imds = creds.imds;
	if (creds.source == NULL) {
		bfs_log(BFS_LOG_INFO, "bucketfs: share %s: anonymous "
			"(unsigned) requests", bc->service);
		return 0;
	}
	bfs_log(BFS_LOG_INFO, "bucketfs: share %s: S3 credentials from %s",
		bc->service, creds.source);
	return 0;
}

static void bfs_log_recovery(void *priv, const struct bfs_jrec *r,
			     const struct s3_status *st)
{
	struct bfs_conn *bc = priv;

	bfs_log_s3(bc, r->op == BFS_J_PUT ? "journalled upload to" :
		       r->op == BFS_J_COPY ? "journalled rename to" :
					     "journalled delete of",
		   r->key, st);
}

/* Writeback: staging files, uploads, the journal. */
static int bfs_start_writeback(struct bfs_conn *bc)
{
	char *dir = talloc_asprintf(bc, "%s/staging", bc->cache_dir);
	int ret;

	ret = dir == NULL ? ENOMEM :
		bfs_wb_new(bc, bc->sync_ev, bc->s3, bc->index, bc->journal,
			   dir, &bc->upload, &bc->wb);
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot set up "
			"writeback in the staging folder %s: %s", bc->service,
			dir != NULL ? dir : "(no memory)", strerror(ret));
	}
	return ret;
}

/*
 * What a killed process left in the journal, finished here, on this tree
 * connect.  Recovery's S3 work runs with the caller's rights; its files as
 * root (bfs_priv).  Not with an engine: it takes such records over itself
 * within seconds (bucketfsd's ENG_POLL_SECONDS), and running them here
 * would hold this connection's requests behind S3.
 */
static int bfs_recover_journal(struct bfs_conn *bc)
{
	unsigned done = 0, failed = 0;
	int ret;

	ret = bfs_wb_recover(bc->wb, bc->prefix, &done, &failed,
			     bfs_log_recovery, bc);
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot read the "
			"journal: %s", bc->service, strerror(ret));
		return ret;
	}
	if (done + failed > 0) {
		bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: finished %u "
			"change(s) an earlier smbd left in the journal, %u "
			"failed and stay there", bc->service, done, failed);
	}
	return 0;
}

/* An upload of the engine's: told as one made here (bfs_changed). */
static void bfs_engine_uploaded(void *priv, const char *key)
{
	bfs_changed(priv, key);
}

/*
 * `bucketfs:close = local`: reach the cache folder's engine, starting it
 * if none runs (smbd starts samba-dcerpcd the same way).  Without one,
 * closes upload as with `close = s3`: slower, never less safe.
 */
static void bfs_connect_engine(struct bfs_conn *bc,
			       const struct bfs_share_host *host)
{
	const char *argv[] = {
		bc->engine_path, "-s", host->config_file, bc->service, NULL,
	};
	/* bfs_engine_connect copies argv: reconnects start it the same. */
	struct bfs_engine_start start = {.argv = argv, .timeout_ms = 5000};
	int ret;

	bfs_priv_enter();
	ret = bfs_engine_connect(bc, host->ev, bc->cache_dir, bc->service,
				 &start, &bc->engine);
	bfs_priv_leave();
	bc->engine_ev = host->ev;
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: 'bucketfs:close = "
			"local', but the engine %s could not be started or "
			"reached (%s): closes on this connection wait for S3",
			bc->service, bc->engine_path, strerror(ret));
		bc->engine = NULL;
		return;
	}
	bfs_engine_on_changed(bc->engine, bfs_engine_uploaded, bc);
	bfs_engine_on_revoke(bc->engine, bfs_claim_revoked, bc);
}

pid_t bfs_engine_now(struct bfs_conn *bc)
{
	if (bc->engine == NULL) {
		return 0;
	}
	if (bfs_engine_pid(bc->engine) == 0) {
		bfs_priv_enter();
		(void)bfs_engine_reconnect(bc->engine); /* logs its failure */
		bfs_priv_leave();
	}
	return bfs_engine_pid(bc->engine);
}

/*
 * smbd gives every SMB read a fresh buffer of up to 8 MiB (and our fetches
 * are as large).  glibc maps a buffer that large with mmap and unmaps it on
 * free, so each read faults in and zeroes 2,048 pages: on a cold
 * sequential read that was a fifth of this process's CPU.  Heap buffers
 * are reused instead.  Once per process, unless the admin set glibc's own
 * tunables.
 */
#define BFS_MMAP_THRESHOLD (32 << 20)
#define BFS_TRIM_THRESHOLD (64 << 20)

static void bfs_reuse_read_buffers(const char *service)
{
#ifdef __GLIBC__
	static bool done;
	const char *tunables = getenv("GLIBC_TUNABLES");

	if (done) {
		return;
	}
	done = true;
	if (tunables != NULL && strstr(tunables, "glibc.malloc.") != NULL) {
		bfs_log(BFS_LOG_NOTICE, "bucketfs: share %s: GLIBC_TUNABLES "
			"sets malloc tunables; leaving them as they are",
			service);
		return;
	}
	if (mallopt(M_MMAP_THRESHOLD, BFS_MMAP_THRESHOLD) != 1 ||
	    mallopt(M_TRIM_THRESHOLD, BFS_TRIM_THRESHOLD) != 1) {
		bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: mallopt refused "
			"the buffer thresholds; reads still work, with more "
			"page faults", service);
		return;
	}
	bfs_log(BFS_LOG_INFO, "bucketfs: share %s: read buffers up to %d MiB "
		"come from the heap (up to %d MiB of freed heap kept)",
		service, BFS_MMAP_THRESHOLD >> 20, BFS_TRIM_THRESHOLD >> 20);
#else
	(void)service;
#endif
}

/*
 * Everything the share talks to, in the tree connect's order: cache
 * folder, credentials, the client and the probe (which may replace it),
 * the reader, writeback, the engine, and without one the journal's
 * recovery.
 */
static int bfs_share_build(struct bfs_conn *bc,
			   const struct bfs_share_host *host)
{
	/* No endpoint in smb.conf: AWS's, of the region (found, maybe). */
	bool endpoint_derived = bc->cfg.endpoint == NULL;
	bool region_set;
	int ret;

	bfs_priv_enter();
	ret = bfs_open_cache_dir(bc);
	bfs_priv_leave();
	if (ret != 0) {
		return ret;
	}
	ret = bfs_load_credentials(bc, host->home_uid);
	if (ret != 0) {
		return ret;
	}
	bc->sync_ev = tevent_context_init(bc);
	if (bc->sync_ev == NULL) {
		return ENOMEM;
	}
	bc->s3 = s3_client_new(bc, bc->sync_ev, &bc->cfg);
	if (bc->s3 == NULL) {
		/* It sets errno; 0 here would be taken for success. */
		ret = errno != 0 ? errno : EINVAL;
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: bad S3 endpoint '%s' "
			"(want http://host[:port] or https://host[:port])",
			bc->service, endpoint_derived ? "(default)" :
							bc->cfg.endpoint);
		return ret;
	}
	if (endpoint_derived) {
		bc->cfg.endpoint = talloc_asprintf(
			bc, "https://s3.%s.amazonaws.com", bc->cfg.region);
	}
	/*
	 * The probe may find the bucket's region and make bc->s3 anew.  An
	 * admin's "bucketfs:region" is kept; without one it is found.
	 */
	region_set = bc->params.get(bc->params.priv, "region") != NULL;
	ret = bfs_probe_bucket(bc, region_set, endpoint_derived);
	if (ret != 0) {
		return ret;
	}
	bc->reader = bfs_reader_new(bc, bc->sync_ev, bc->s3, bc->cache,
				    bc->block_size, false);
	if (bc->reader == NULL) {
		return ENOMEM;
	}
	bfs_reader_set_memory(bc->reader, bc->fetch_memory);
	ret = bfs_start_writeback(bc);
	if (ret != 0) {
		return ret;
	}
	if (bc->close_local) {
		bfs_connect_engine(bc, host);
	}
	if (bc->engine != NULL) {
		/*
		 * Dead processes' staging files no record names: a local
		 * sweep, as recovery ends with (the engine has none).
		 */
		(void)bfs_wb_sweep_staging(bc->wb);
		return 0;
	}
	return bfs_recover_journal(bc);
}

int bfs_share_open(struct bfs_conn *bc, const struct bfs_share_host *host)
{
	bool reuse_buffers = true;
	int ret;

	bc->loop_ev = host->ev;
	ret = bfs_share_read_params(bc, &reuse_buffers);
	if (ret == 0) {
		ret = bfs_share_build(bc, host);
	}
	if (ret == 0 && reuse_buffers) {
		bfs_reuse_read_buffers(bc->service);
	}
	return ret;
}

static void bfs_log_reader(struct bfs_conn *bc, const char *which,
			   const struct bfs_reader *r)
{
	const struct bfs_reader_counters *n;

	if (r == NULL) {
		return;
	}
	n = bfs_reader_counters(r);
	bfs_log(BFS_LOG_NOTICE, "bucketfs: share %s: %s reads: %" PRIu64
		" blocks from cache, %" PRIu64 " fetched (%" PRIu64 " bytes, %"
		PRIu64 " read ahead), %" PRIu64 " waits shared a fetch",
		bc->service, which, n->cache_hits, n->block_fetches,
		n->fetched_bytes, n->prefetches, n->coalesced);
}

void bfs_share_close(struct bfs_conn *bc)
{
	bfs_stats_flush(bc, time(NULL));
	bfs_log(BFS_LOG_NOTICE, "bucketfs: share %s: %" PRIu64 " synchronous "
		"and %" PRIu64 " asynchronous preads", bc->service,
		bc->sync_reads, bc->async_reads);
	bfs_log_reader(bc, "synchronous", bc->reader);
	bfs_log_reader(bc, "asynchronous", bc->reader_async);
}
