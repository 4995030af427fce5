/*
 * A share's policy in one smbd, on struct bfs_conn (lib/bfs_share.h):
 * its parameters and their reload, instance-role credential refresh, the
 * metrics flush, how fresh a folder's listing must be (and what is served
 * while S3 is away), and the open state of a looked-up name.  The module
 * calls these from its VFS slots; nothing here knows Samba.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>
#include <talloc.h>
#include <tevent.h>

#include "bfs_cache.h"
#include "bfs_engine.h"
#include "bfs_index.h"
#include "bfs_journal.h"
#include "bfs_log.h"
#include "bfs_params.h"
#include "bfs_path.h"
#include "bfs_priv.h"
#include "bfs_role_creds.h"
#include "bfs_share.h"
#include "s3_dirlist.h"
#include "s3_imds.h"
#include "s3_ops.h"

/* Refetch expiring instance-role credentials, 5 minutes ahead. */
#define BFS_CREDS_MARGIN 300
/*
 * Inside the margin, while the folder's engine is there to refresh them,
 * this process waits for the engine's copy; only this close to the end
 * does it ask the metadata service itself.
 */
#define BFS_CREDS_LAST_MARGIN 60

void bfs_log_s3(struct bfs_conn *bc, const char *what, const char *key,
		       const struct s3_status *st)
{
	bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: %s s3://%s/%s failed: %s "
		    "(HTTP %ld, %s%s%s, request id %s, %u attempt%s)",
		    bc->service, what, bc->cfg.bucket, key, strerror(st->err),
		    st->http_status, st->code[0] ? st->code : "no S3 code",
		    st->message[0] ? ": " : "", st->message,
		    st->request_id[0] ? st->request_id : "none", st->attempts,
		    st->attempts == 1 ? "" : "s");
}

/*
 * Numbers and sizes from smb.conf, checked: a typo is a clear line and a
 * refused tree connect, never a zero or a wrapped-around unsigned that
 * Samba's lenient parsers would hand on.  The same bad value is told once
 * per connection (reloadable ones are read again every second).
 */

static void bfs_parm_bad(struct bfs_conn *bc, const char *name,
			 const char *value, const char *want)
{
	char *told = talloc_asprintf(bc, "%s=%s", name, value);

	if (told != NULL && bc->last_bad_parm != NULL &&
	    strcmp(told, bc->last_bad_parm) == 0) {
		talloc_free(told);
		return;
	}
	bfs_log(BFS_LOG_ERR, "bucketfs: share %s: 'bucketfs:%s' must be %s, not '%s'",
		bc->service, name, want, value);
	talloc_free(bc->last_bad_parm);
	bc->last_bad_parm = told;
}


/*
 * Parameter name as the one table in lib/bfs_params says (its type,
 * default and bounds): true, or false with one log line naming what the
 * value must be.
 */
bool bfs_parm_int(struct bfs_conn *bc, const char *name,
			 int64_t *out)
{
		struct bfs_pbad bad;

	if (bfs_pget_int(&bc->params, name, out, &bad) != 0) {
		bfs_parm_bad(bc, name, bad.value, bad.want);
		return false;
	}
	return true;
}

bool bfs_parm_size(struct bfs_conn *bc, const char *name,
			  uint64_t *out)
{
		struct bfs_pbad bad;

	if (bfs_pget_size(&bc->params, name, out, &bad) != 0) {
		bfs_parm_bad(bc, name, bad.value, bad.want);
		return false;
	}
	return true;
}

bool bfs_parm_bool(struct bfs_conn *bc, const char *name,
			  bool *out)
{
		struct bfs_pbad bad;

	if (bfs_pget_bool(&bc->params, name, out, &bad) != 0) {
		bfs_parm_bad(bc, name, bad.value, bad.want);
		return false;
	}
	return true;
}

/* A string parameter, or its default from the table (NULL: unset). */
const char *bfs_parm_string(struct bfs_conn *bc,
				   const char *name)
{
		struct bfs_pbad bad;
	const char *v = NULL;

	if (bfs_pget_string(&bc->params, name, &v, &bad) != 0) {
		bfs_parm_bad(bc, name, bad.value, bad.want);
	}
	return v;
}

/* A value a reload changed, logged once this process follows it. */
static void bfs_note_change(struct bfs_conn *bc, bool first,
			    const char *param, int64_t was, int64_t now)
{
	if (!first && was != now) {
		bfs_log(BFS_LOG_NOTICE, "bucketfs: share %s: '%s' is now %" PRId64
			   " (was %" PRId64 ")", bc->service, param, now,
			   was);
	}
}

/*
 * The reloadable values, at connect (first) and at most once a second
 * after.  false if one is bad: at connect that refuses the tree connect,
 * later the running value stays.
 */
bool bfs_follow_config(struct bfs_conn *bc)
{
	time_t now = time(NULL);
	bool first = bc->config_read == 0, ok = true;
	int64_t ttl, readahead, max, interval;
	uint64_t cache_size, upload_memory;

	if (now == bc->config_read) {
		return true;
	}
	bc->config_read = now;
	bfs_refresh_credentials(bc, now);
	if (bfs_parm_int(bc, "metrics interval", &interval)) {
		bc->metrics_interval = (int)interval;
	} else {
		ok = false;
	}
	if (bc->stats != NULL &&
	    now - bc->stats_flushed >= bc->metrics_interval) {
		bfs_stats_flush(bc, now);
	}
	if (bfs_parm_int(bc, "metadata ttl", &ttl)) {
		bfs_note_change(bc, first, "metadata ttl", bc->ttl, ttl);
		bc->ttl = (int)ttl;
	} else {
		ok = false;
	}
	/*
	 * 64 blocks: the reader's 8 read-ahead GETs of up to 8 blocks all in
	 * flight.  With 32 only 4 were, and the S3 server, which serves each
	 * stream on its own, was left part idle (cold reads about 7% slower
	 * in interleaved runs; bench/results/read.md).
	 */
	if (bfs_parm_int(bc, "readahead", &readahead)) {
		bfs_note_change(bc, first, "readahead", bc->readahead,
				readahead);
		bc->readahead = (unsigned)readahead;
	} else {
		ok = false;
	}
	if (bfs_parm_int(bc, "max requests", &max)) {
		bfs_note_change(bc, first, "max requests",
				bc->cfg.max_requests, max);
		bc->cfg.max_requests = (unsigned)max;
	} else {
		ok = false;
	}
	if (bc->s3 != NULL) {
		s3_client_set_max_requests(bc->s3, bc->cfg.max_requests);
	}
	if (bc->s3_async != NULL) {
		s3_client_set_max_requests(bc->s3_async,
					   bc->cfg.max_requests);
	}
	if (!bfs_parm_size(bc, "writeback limit", &bc->writeback_limit)) {
		ok = false;
	}
	if (!bfs_parm_size(bc, "fetch memory", &bc->fetch_memory)) {
		ok = false;
	}
	if (!bfs_parm_size(bc, "max file size", &bc->max_file_size)) {
		ok = false;
	}
	if (!bfs_parm_size(bc, "upload memory", &upload_memory)) {
		ok = false;
	} else {
		bfs_upload_set_memory(upload_memory); /* this process's */
	}
	if (bc->reader != NULL) {
		bfs_reader_set_memory(bc->reader, bc->fetch_memory);
	}
	if (bc->reader_async != NULL && bc->claim == NULL) {
		/* (A claim's reader keeps what the engine granted it.) */
		bfs_reader_set_memory(bc->reader_async, bc->fetch_memory);
	}
	if (bfs_parm_size(bc, "cache size", &cache_size)) {
		bfs_note_change(bc, first, "cache size",
				(int64_t)bc->cache_limit, (int64_t)cache_size);
		bc->cache_limit = cache_size;
		if (bc->cache != NULL) {
			bfs_cache_set_limit(bc->cache, cache_size);
		}
	} else {
		ok = false;
	}
	return ok;
}

/*
 * Add what this connection counted since the last flush to the folder's
 * totals, and rewrite the metrics file from them.
 */
void bfs_stats_flush(struct bfs_conn *bc, time_t now)
{
	struct bfs_stats_vec cur = {{0}}, totals;
	struct bfs_jrec *recs = NULL;
	uint64_t used = 0, blocks = 0;
	size_t n = 0;
	int ret;

	if (bc->stats == NULL) {
		return;
	}
	bc->stats_flushed = now;
	bfs_stats_count_client(&cur, bc->s3);
	bfs_stats_count_client(&cur, bc->s3_async);
	bfs_stats_count_reader(&cur, bc->reader);
	bfs_stats_count_reader(&cur, bc->reader_async);
	bfs_stats_count_cache(&cur, bc->cache);
	bfs_priv_enter();
	ret = bfs_stats_add_since(bc->stats, &bc->flushed, &cur);
	if (ret == 0 && bc->metrics_file != NULL &&
	    bfs_stats_read(bc->stats, &totals) == 0) {
		TALLOC_CTX *tmp = talloc_new(bc);
		bfs_cache_usage(bc->cache, &used, &blocks);
		bfs_journal_list(bc->journal, tmp, &recs, &n, NULL);
		ret = bfs_stats_write_prometheus(&totals, bc->cache_dir, used,
						 bc->cache_limit, n,
						 bc->metrics_file);
		talloc_free(tmp);
		if (ret != 0) {
			bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: cannot write the "
				    "metrics file %s: %s", bc->service,
				    bc->metrics_file, strerror(ret));
		}
	}
	bfs_priv_leave();
}

void bfs_refresh_credentials(struct bfs_conn *bc, time_t now)
{
	struct s3_credentials creds = {0};
	TALLOC_CTX *tmp;
	const char *why = NULL;
	time_t expire = 0;
	int ret;

	if (bc->imds == NULL || now < bc->creds_expire - BFS_CREDS_MARGIN ||
	    now < bc->creds_retry) {
		return;
	}
	tmp = talloc_new(bc);
	if (tmp != NULL && bc->engine != NULL && bfs_engine_pid(bc->engine) != 0) {
		/*
		 * The engine refreshes them for the whole folder: its copy is
		 * a local read, where asking the metadata service would hold
		 * this process's loop for up to its timeout.
		 */
		bfs_priv_enter();
		ret = bfs_role_creds_load(tmp, bc->cache_dir, bc->imds, &creds,
					  &expire);
		bfs_priv_leave();
		if (ret == 0 && expire > bc->creds_expire) {
			ret = s3_client_set_credentials(bc->s3, &creds);
			if (ret == 0 && bc->s3_async != NULL) {
				ret = s3_client_set_credentials(bc->s3_async,
								&creds);
			}
			if (ret == 0) {
				bc->creds_expire = expire;
				bfs_log(BFS_LOG_INFO, "bucketfs: share %s: "
					"refreshed the instance role's "
					"credentials from the engine's copy, "
					"valid for %lld s", bc->service,
					(long long)(expire - now));
				talloc_free(tmp);
				return;
			}
		}
		if (now < bc->creds_expire - BFS_CREDS_LAST_MARGIN) {
			talloc_free(tmp); /* the engine's refresh is due */
			return;
		}
		bfs_log(BFS_LOG_NOTICE, "bucketfs: share %s: the engine has not "
			"refreshed the instance role's credentials (%s); "
			"asking the metadata service", bc->service,
			ret == 0 ? "its copy is no newer" : strerror(ret));
	}
	ret = tmp ? s3_imds_fetch(tmp, bc->imds, 2000, &creds, &expire, &why) :
		    ENOMEM;
	if (ret == 0) {
		ret = s3_client_set_credentials(bc->s3, &creds);
	}
	if (ret == 0 && bc->s3_async != NULL) {
		ret = s3_client_set_credentials(bc->s3_async, &creds);
	}
	talloc_free(tmp);
	if (ret != 0) {
		bc->creds_retry = now + 10;
		bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: cannot refresh the instance "
			    "role's credentials (they expire in %lld s): %s",
			    bc->service, (long long)(bc->creds_expire - now),
			    why ? why : strerror(ret));
		return;
	}
	bc->creds_expire = expire;
	bfs_log(BFS_LOG_INFO, "bucketfs: share %s: refreshed the instance role's "
		 "credentials, valid for %lld s", bc->service,
		 (long long)(expire - now));
}

/*
 * What the index holds of folder prefix is known to be out of date: have
 * its next access list it from S3.  Should the index refuse even that,
 * it shows the folder as it has it until the listing's TTL runs out;
 * the log says so.
 */
void bfs_forget_listing(struct bfs_conn *bc, const char *prefix)
{
	int ret = prefix != NULL ? bfs_index_invalidate_dir(bc->index, prefix) :
				   ENOMEM;

	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot mark %s for listing again "
			"in the index: %s; it may show stale entries until its "
			"listing expires", bc->service,
			prefix != NULL ? prefix : "a folder", strerror(ret));
	}
}

void bfs_changed(struct bfs_conn *bc, const char *key)
{
	if (bc->on_change != NULL && key != NULL) {
		bc->on_change(bc->on_change_priv, key);
	}
}

/* The lock is held as long as the file stays open. */
static int bfs_listen_fd_close(int *fd)
{
	close(*fd);
	return 0;
}

int bfs_cluster_listen(struct bfs_conn *bc)
{
	char *path = talloc_asprintf(bc, "%s/cluster-listeners.lock",
				     bc->cache_dir);
	int *fd = talloc(bc, int);
	uint64_t n = 0;
	int ret = 0;

	if (path == NULL || fd == NULL) {
		talloc_free(path);
		talloc_free(fd);
		return ENOMEM;
	}
	bfs_priv_enter();
	*fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	bfs_priv_leave();
	if (*fd == -1) {
		ret = errno;
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot open %s: %s; "
			"other nodes' changes show after the listing TTL",
			bc->service, path, strerror(ret));
		talloc_free(path);
		talloc_free(fd);
		return ret;
	}
	talloc_set_destructor(fd, bfs_listen_fd_close);
	if (flock(*fd, LOCK_EX | LOCK_NB) == 0) {
		/* Nobody of this node was hearing: what did we miss? */
		int err = bfs_index_invalidate_all_dirs(bc->index, &n);

		if (err != 0) {
			/* Logged; hearing from now on is still worth it. */
			bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot mark "
				"the index's listings for listing again: %s; "
				"changes other nodes made meanwhile show after "
				"the listing TTL", bc->service, strerror(err));
		} else if (n > 0) {
			bfs_log(BFS_LOG_NOTICE, "bucketfs: share %s: the first "
				"on this node to hear other nodes' changes: the "
				"%" PRIu64 " folder listings kept from before are "
				"listed again at their next access",
				bc->service, n);
		}
	}
	/* Shared from now on (converting, or waiting for the first). */
	if (flock(*fd, LOCK_SH) != 0) {
		ret = errno;
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot lock %s: %s",
			bc->service, path, strerror(ret));
		talloc_free(fd);
	}
	talloc_free(path);
	return ret;
}

void bfs_changed_elsewhere(struct bfs_conn *bc, const char *bucket,
			   const char *key)
{
	size_t pl = strlen(bc->prefix), kl = strlen(key);
	char *dir;

	if (strcmp(bucket, bc->cfg.bucket) != 0 || kl <= pl ||
	    strncmp(key, bc->prefix, pl) != 0) {
		return;
	}
	/* The folder holding it: up to the last '/' before its end. */
	while (kl > pl && key[kl - 1] == '/') {
		kl--;
	}
	while (kl > pl && key[kl - 1] != '/') {
		kl--;
	}
	dir = talloc_strndup(NULL, key, kl);
	bfs_log(BFS_LOG_INFO, "bucketfs: share %s: %s changed on another node: "
		"%s is listed again", bc->service, key,
		dir != NULL && dir[0] != '\0' ? dir : "the root");
	bfs_forget_listing(bc, dir);
	talloc_free(dir);
}

/*
 * Another process (another client's smbd) is listing prefix from S3: wait
 * for its result instead of asking S3 for the same pages.  true: a listing
 * stored meanwhile serves; false: list it here (*claimed: the claim is
 * ours to release).  A lister that fails or dies releases the claim (or
 * it goes stale), and a waiter takes over.
 */
static bool bfs_dir_wait_for_lister(struct bfs_conn *bc, const char *prefix,
				    bool had, time_t listed_before,
				    bool *claimed)
{
	/* Longer than a listing of many slow pages; then it is ours. */
	unsigned max_age = bc->cfg.request_timeout_ms / 1000 * 4 + 10;
	const struct timespec nap = {0, 20 * 1000 * 1000};
	int ret;

	for (;;) {
		time_t listed;

		ret = bfs_index_listing_claim(bc->index, prefix, max_age);
		/* Stored meanwhile (also just before the lister let go)? */
		if (bfs_index_dir_listed(bc->index, prefix, &listed) == 0 &&
		    (!had || listed != listed_before)) {
			if (ret == 0) {
				bfs_index_listing_release(bc->index, prefix);
			}
			return true;
		}
		if (ret != EBUSY) {
			break;
		}
		nanosleep(&nap, NULL);
	}
	/* Any other error: list without a claim, as before claims. */
	*claimed = ret == 0;
	return false;
}

/*
 * Have the engine relist prefix, past its TTL: a stat of each of its
 * files, and of each folder on the way to them, asks once a second, not
 * once each.  The oldest remembered ask makes room for a new one.
 */
static void bfs_ask_relisting(struct bfs_conn *bc, const char *prefix,
			      time_t now)
{
	const size_t n = sizeof(bc->list_asked) / sizeof(bc->list_asked[0]);
	struct bfs_list_asked *slot = &bc->list_asked[0];
	size_t i;

	for (i = 0; i < n; i++) {
		struct bfs_list_asked *a = &bc->list_asked[i];

		if (a->prefix != NULL && strcmp(a->prefix, prefix) == 0) {
			if (a->at == now) {
				return;
			}
			slot = a;
			break;
		}
		if (a->prefix == NULL || a->at < slot->at) {
			slot = a;
		}
	}
	(void)bfs_engine_list(bc->engine, prefix);
	if (slot->prefix == NULL || strcmp(slot->prefix, prefix) != 0) {
		TALLOC_FREE(slot->prefix);
		slot->prefix = talloc_strdup(bc, prefix);
	}
	slot->at = now;
}

/*
 * May a listing made at `listed` be served as it is (within the TTL, or
 * S3 away for now)?
 */
static bool bfs_listing_fresh(const struct bfs_conn *bc, time_t listed,
			      time_t now)
{
	return bc->ttl < 0 || now - listed < bc->ttl ||
	       now < bc->s3_down_until;
}

/*
 * Make sure the index has a listing of directory rel younger than the TTL:
 * list it from S3 (every page) and store it, if not.
 */
int bfs_dir_fresh(struct bfs_conn *bc, const char *rel)
{
	TALLOC_CTX *frame = talloc_new(bc);
	char *prefix = frame ? bfs_path_dir_prefix(frame, bc->prefix, rel) :
			       NULL;
	struct s3_status st = {0};
	struct s3_dir *dir = NULL;
	struct tevent_req *req;
	time_t listed, now = time(NULL);
	uint64_t since = 0;
	bool had_listing, known, claimed = false;
	int ret;

	if (prefix == NULL) {
		TALLOC_FREE(frame);
		return ENOMEM;
	}
	bfs_follow_config(bc);
	ret = bfs_index_dir_listed(bc->index, prefix, &listed);
	known = ret == 0;
	if (known && bfs_listing_fresh(bc, listed, now)) {
		TALLOC_FREE(frame);
		return 0;
	}
	/*
	 * Past its TTL (stale-while-revalidate): served as the index has it
	 * at once, relisted by the engine meanwhile, once for every smbd.
	 * A folder never listed, and ttl 0, still wait for S3.
	 */
	if (known && bc->ttl > 0 && bc->engine != NULL &&
	    bfs_engine_pid(bc->engine) != 0) {
		bfs_ask_relisting(bc, prefix, now);
		TALLOC_FREE(frame);
		return 0;
	}
	/* ttl 0 asks for a listing that starts after this request. */
	if (bc->ttl != 0 &&
	    bfs_dir_wait_for_lister(bc, prefix, ret == 0, listed, &claimed)) {
		TALLOC_FREE(frame);
		return 0;
	}
	/* Changes made here from now on may be newer than S3's answer. */
	ret = bfs_index_change_seq(bc->index, &since);
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot read the "
			"index before listing %s: %s", bc->service, prefix,
			strerror(ret));
		goto out;
	}
	req = s3_dirlist_send(frame, bc->sync_ev, bc->s3, prefix);
	ret = s3_wait_for(req, bc->sync_ev);
	if (ret != 0) {
		goto out;
	}
	ret = s3_dirlist_recv(req, frame, &dir, &st);
	if (ret != 0 && known && s3_unreachable(ret, &st)) {
		/* S3 is away: what the index knows beats an error. */
		if (now >= bc->s3_down_until) {
			bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: S3 is unreachable "
				    "(%s); serving the listing of %s the "
				    "index has", bc->service,
				    st.code[0] ? st.code : strerror(ret),
				    prefix);
		}
		bc->s3_down_until = now + BFS_OUTAGE_RETRY;
		ret = 0;
		goto out;
	}
	if (ret != 0) {
		bfs_log_s3(bc, "listing", prefix, &st);
		goto out;
	}
	bc->s3_down_until = 0;
	if (dir->n_hidden_sample > 0) {
		size_t i;

		bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: %zu key(s) under s3://%s/%s "
			    "cannot be SMB names and are hidden, e.g. '%s' (%s)",
			    bc->service, dir->n_hidden, bc->cfg.bucket,
			    prefix, dir->hidden[0].key, dir->hidden[0].why);
		for (i = 0; i < dir->n_hidden_sample; i++) {
			bfs_log(BFS_LOG_NOTICE, "bucketfs: hidden key '%s': %s",
				   dir->hidden[i].key, dir->hidden[i].why);
		}
	}
	had_listing = bfs_index_dir_listed(bc->index, prefix, &listed) == 0;
	ret = bfs_index_store_dir(bc->index, dir, now, since);
	if (ret == 0 && time(NULL) > now + 1) {
		/* A slow listing (many pages) is as fresh as its last page. */
		int dret = bfs_index_dir_set_listed(bc->index, prefix,
						    time(NULL));
		if (dret != 0) {
			/* Dated at its start, it is listed again sooner. */
			bfs_log(BFS_LOG_NOTICE, "bucketfs: share %s: cannot date the "
				   "listing of %s: %s", bc->service, prefix,
				   strerror(dret));
		}
	}
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot store the listing of %s in "
			"the index: %s%s", bc->service, prefix, strerror(ret),
			had_listing ? "; serving the one it has" : "");
		/* A full disk must not take away what is already known. */
		if (had_listing) {
			ret = 0;
		}
	}
out:
	if (claimed) {
		bfs_index_listing_release(bc->index, prefix);
	}
	TALLOC_FREE(frame);
	return ret;
}

/* An open's state for rel, as the index entry e describes it. */
struct bfs_fh *bfs_fh_new(TALLOC_CTX *mem_ctx, struct bfs_conn *bc,
				 const char *rel, const struct bfs_entry *e)
{
	struct bfs_fh *fh = talloc_zero(mem_ctx, struct bfs_fh);

	if (fh == NULL) {
		return NULL;
	}
	fh->stage_fd = -1;
	fh->bc = bc;
	fh->rel = talloc_strdup(fh, rel);
	fh->key = bfs_path_key(fh, bc->prefix, rel);
	fh->is_dir = e->is_dir;
	fh->pending = (e->flags & BFS_ENT_PENDING) != 0;
	fh->size = e->size;
	fh->etag = e->etag ? talloc_strdup(fh, e->etag) : NULL;
	fh->mtime = e->mtime;
	fh->meta = e->meta;
	fh->meta_gen = bc->meta_gen;
	fh->ino = e->ino;
	fh->obj = (struct bfs_object){
		.key = fh->key, .etag = fh->etag, .size = fh->size,
	};
	if (fh->etag != NULL) {
		bfs_cache_make_id(bc->cfg.bucket, fh->key, fh->etag,
				  bc->block_size, &fh->obj.id);
	} else {
		/*
		 * No ETag to ask S3 for (a file still pending here, or one a
		 * server listed without): its reads are this open's alone,
		 * never bytes an earlier open took of another version.
		 */
		bfs_cache_make_private_id(&fh->obj.id);
	}
	if (fh->rel == NULL || fh->key == NULL) {
		TALLOC_FREE(fh);
	}
	return fh;
}

int bfs_lookup_entry(TALLOC_CTX *mem_ctx, struct bfs_conn *bc,
		     const char *rel, struct bfs_entry *e)
{
	TALLOC_CTX *frame;
	const char *base;
	char *parent, *prefix;
	time_t listed_at = 0;
	bool listed = false;
	int ret;

	*e = (struct bfs_entry){
		.is_dir = true, .mtime = -1, .ino = BFS_ROOT_INO,
	};
	if (rel[0] == '\0') {
		return 0;
	}
	frame = talloc_new(mem_ctx);
	if (frame == NULL) {
		return ENOMEM;
	}
	bfs_path_split(frame, rel, &parent, &base);
	prefix = parent ? bfs_path_dir_prefix(frame, bc->prefix, parent) : NULL;
	if (prefix == NULL) {
		talloc_free(frame);
		return ENOMEM;
	}
	/*
	 * The usual case, a folder listed within its TTL: the listing's
	 * time and the name in one read (bfs_dir_fresh's first test).
	 */
	bfs_follow_config(bc);
	ret = bfs_index_lookup_listed(bc->index, mem_ctx, prefix, base,
				      &listed, &listed_at, e);
	if ((ret == 0 || ret == ENOENT) && listed &&
	    bfs_listing_fresh(bc, listed_at, time(NULL))) {
		talloc_free(frame);
		return ret;
	}
	ret = bfs_dir_fresh(bc, parent);
	if (ret == 0) {
		ret = bfs_index_lookup(bc->index, mem_ctx, prefix, base, e);
	}
	talloc_free(frame);
	return ret;
}
