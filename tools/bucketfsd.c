/*
 * bucketfsd: the S3 engine of one bucketfs cache folder.
 *
 *   bucketfsd [-s SMB_CONF] [-F] SHARE
 *
 * smbd processes of a share with `bucketfs:close = local` hand each
 * closed file to this process: the module journals the upload in the
 * engine's name (bfs_wb_hand_over) and says so over the unix socket in
 * the cache folder; the engine uploads it in the background, and answers
 * a flush (SMB2 FLUSH, fsync) once S3 has the object.  Exactly one engine
 * runs per cache folder: an flock on <cache dir>/engine.lock.  The first
 * tree connect that needs one starts it (bfs_engine.h), and the next one
 * after it died; records of a dead engine are claimed by the next one, as
 * smbd's own recovery does for a dead smbd.
 *
 * Read misses of every smbd come here too (FETCH): the main thread's
 * reader fetches each block once, however many smbds ask for it meanwhile,
 * into the cache they all read, with readahead for sequential readers and
 * the reader's one memory bound for the host.
 *
 * Threads.  The main thread runs a tevent loop with the socket and never
 * waits on S3: it answers HELLO and STATUS at once, parks WAITs, and runs
 * fetches as asynchronous S3 requests on its own loop.  `bucketfs:upload
 * files` upload threads run the journal's records with lib/bfs_writeback,
 * each on an event context, S3 client and writeback of its own (each
 * upload is itself parallel: several parts in flight); a thread claims a
 * record's key under the engine's lock before it runs it, so a record
 * runs once, and hands each result to the main thread through a pipe.
 *
 * A change of smb.conf ends the engine once its current uploads are done;
 * the next request starts it again with the new parameters (so a reload
 * is followed as a restart, with nothing lost: its records are claimed).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <sys/param.h>
#include <unistd.h>

#include <talloc.h>
#include <tevent.h>

#include "ctl_share.h"
#include "bfs_arena.h"
#include "bfs_ctdb_msg.h"
#include "bfs_engine.h"
#include "bfs_lmdb.h"
#include "bfs_log.h"
#include "bfs_params.h"
#include "bfs_proto.h"
#include "bfs_reader.h"
#include "bfs_writeback.h"
#include "bfs_list.h"
#include "s3_dirlist.h"
#include "bfs_role_creds.h"
#include "s3_imds.h"

/* How often each upload thread looks at the journal unasked. */
#define ENG_POLL_SECONDS 2
/* Instance-role credentials are refreshed this long before they expire. */
#define ENG_CREDS_MARGIN 300

/* A result of an upload thread, for the main thread. */
struct eng_result {
	struct eng_result *next;
	char *key, *staging, *etag;
	int err;
	uint64_t size;
	bool deleted;	/* a DELETE done: the key is gone from S3 */
};

struct eng;

/* A connected smbd (or bucketfs-ctl). */
struct eng_client {
	struct eng_client *prev, *next;
	struct eng *e;
	int fd;
	struct tevent_fd *fde;
	struct bfs_proto_buf in;	/* bytes read, not yet a whole frame */
	uint8_t *out;		/* bytes to send */
	size_t out_len;
	int pass_fd;		/* sent with out's first byte (WELCOME) */
	struct eng_pin *pins;	/* fetched bytes lent to it */
	uint64_t next_pin;
};

/* Bytes of the fetch arena a client copies from, until it says RELEASE. */
struct eng_pin {
	struct eng_pin *prev, *next;
	struct eng_client *c;
	uint64_t id;
	struct bfs_pin *pin;	/* the reader's, a child */
};

/*
 * A client's claim: it fetches the object's misses itself (CLAIM), until
 * it says UNCLAIM or goes.  Others' FETCHes and PREFETCHes of the object
 * are parked meanwhile, and the claimer is told to give it back (REVOKE):
 * once its fetches are in the cache, the parked ones find them there.
 */
struct eng_read_claim {
	struct eng_read_claim *prev, *next;
	struct eng_client *c;		/* the claimer (our talloc parent) */
	struct bfs_cache_id id;
	char *key, *etag;
	bool revoked;
	struct tevent_timer *deadline;	/* revoked and not given back */
	struct eng_parked *parked;
};

/* A FETCH or PREFETCH waiting for a claim to end (a child of its client). */
struct eng_parked {
	struct eng_parked *prev, *next;
	struct eng_read_claim *cl;		/* NULL once the claim ended */
	struct eng_client *c;
	struct bfs_proto_msg *m;	/* a copy, a child */
};

/* A WAIT: answered once key's upload (staging, or a later one) is done. */
struct eng_waiter {
	struct eng_waiter *prev, *next;
	struct eng_client *c;
	uint32_t id;
	char *key, *staging;
};

struct eng {
	struct ctl c;
	const char *conf_path;
	struct timespec conf_mtime;
	struct tevent_context *ev;
	struct bfs_journal *j;
	struct bfs_index *idx;
	struct bfs_upload_params upload;
	unsigned delay_ms;
	/* A failed change is tried again this long after, unless a flush
	 * asks ('bucketfs:upload retry'). */
	unsigned retry_s;
	struct eng_client *clients;
	/* Fetches for read misses, on the main thread's loop. */
	struct s3_client *s3;
	struct bfs_cache *cache;
	struct bfs_reader *reader;
	/* The reader's fetch buffers, mapped by each smbd (NULL: none). */
	struct bfs_arena *arena;
	/*
	 * Claims (CLAIM): objects one smbd fetches itself.  fetch_memory:
	 * the host's budget ('fetch memory', 0: none); claim_bytes: what
	 * one claim may use of it (0: no claims), taken from the reader's.
	 */
	struct eng_read_claim *claims;
	unsigned n_claims;
	uint64_t fetch_memory, claim_bytes;
	struct eng_listing *listings;	/* relistings in flight */
	unsigned list_claim_age;	/* seconds: a lister is dead past it */
	struct eng_waiter *waiters;
	int done_pipe[2];
	int listen_fd;
	/*
	 * The folder's counters (bucketfs-ctl stats, the metrics file) count
	 * the engine's S3 work too: each thread adds its own client's (and
	 * the main thread its reader's and cache's) every metrics interval.
	 */
	struct bfs_stats *stats;
	struct bfs_stats_vec flushed;	/* main thread's, as last added */
	unsigned stats_interval;	/* seconds */

	/* Shared with the upload threads, under mu. */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool quit;
	/*
	 * Generations the upload threads compare with what each has seen:
	 * a kick (a close handed over, a flush, a young record aged), a
	 * flush's kick, a rename that ends the upload delay, credentials
	 * refreshed for the upload clients.
	 */
	uint64_t kick_gen, urgent_gen, ripe_gen, creds_gen;
	time_t marks_swept_at;	/* eng_sweep_marks, under mu */
	struct eng_worker **workers;
	unsigned n_workers, n_busy;
	/* Keys an upload thread runs now (malloc'd): one thread a key. */
	char **claimed;
	size_t n_claimed;
	/* Keys that failed and when to try them again. */
	struct eng_retry *retry;
	struct eng_result *results;
	uint64_t uploaded, failed, bytes, pending;
	/*
	 * Instance-role credentials: when they expire (0: not from IMDS),
	 * when a failed refresh may be tried again, and the refreshed ones
	 * for the upload clients (worker_creds) and for the main thread's
	 * fetch client (fresh_creds), each a talloc tree of its own.
	 */
	const char *imds;	/* read before the threads start */
	time_t creds_expire, creds_retry;
	bool creds_refreshing;
	struct s3_credentials *worker_creds, *fresh_creds;
	/* Keys a flush waits for (malloc'd): uploaded before the others. */
	char **urgent_keys;
	size_t n_urgent;
	/* clustering = yes: ctdbd's socket, to tell the other nodes of an
	 * upload when no smbd of this node is connected to tell them. */
	const char *ctdb_socket;
};

static struct eng *eng_global; /* for the log function */

static void eng_log(int level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void eng_log(int level, const char *fmt, ...)
{
	char when[32];
	time_t now = time(NULL);
	struct tm tm;
	va_list ap;

	localtime_r(&now, &tm);
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
	fprintf(stderr, "%s bucketfsd[%d] %s: ", when, (int)getpid(),
		level <= BFS_LOG_ERR ? "error" :
		level <= BFS_LOG_WARNING ? "warning" : "info");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(stderr);
}

/* lib/ reports through bfs_log: into our log. */
static void eng_lib_log(int level, const char *line)
{
	eng_log(level, "%s", line);
}

/* ---- the upload threads ----------------------------------------------------- */

/* A key that failed, and when it may be tried again (under e->mu). */
struct eng_retry {
	struct eng_retry *next;
	char *key;		/* malloc'd: any upload thread frees it */
	time_t at;		/* eng_mono() seconds */
};

/*
 * Seconds for the upload threads' schedule (retries, polls), from a clock
 * no setting of the wall clock moves: stepped back an hour by a time
 * sync, a wall-clock schedule would hold failed uploads an hour longer.
 */
static time_t eng_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

/* A condition variable whose timed waits run on CLOCK_MONOTONIC. */
static void eng_cond_init(pthread_cond_t *cv)
{
	pthread_condattr_t a;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(cv, &a);
	pthread_condattr_destroy(&a);
}

/*
 * One upload thread: its own event context, S3 client and writeback (the
 * writeback library waits on its loop), so that several journal records
 * go up at once, as several smbd processes' uploads did before the engine.
 */
struct eng_worker {
	struct eng *e;
	unsigned n;		/* 0 .. e->n_workers - 1 */
	pthread_t thread;
	TALLOC_CTX *mem;
	struct tevent_context *ev;
	struct s3_client *s3;
	struct bfs_wb *wb;
	/* What this thread has seen of e's generations (under e->mu). */
	uint64_t seen_kick, seen_urgent, seen_ripe, seen_creds;
	struct bfs_stats_vec flushed;	/* the upload client's, as added */
	time_t stats_added;		/* eng_mono() seconds */
};

/* An upload thread's S3 counters into the folder's totals. */
static void eng_worker_count(struct eng_worker *w, bool now)
{
	struct bfs_stats_vec cur = {{0}};
	time_t t = eng_mono();
	int ret;

	if (!now && t - w->stats_added < (time_t)w->e->stats_interval) {
		return;
	}
	w->stats_added = t;
	bfs_stats_count_client(&cur, w->s3);
	ret = bfs_stats_add_since(w->e->stats, &w->flushed, &cur);
	if (ret != 0) {
		eng_log(BFS_LOG_WARNING, "cannot add the uploads' counters to "
			"the folder's: %s", strerror(ret));
	}
}

static void eng_wake_main(struct eng *e, char b)
{
	if (write(e->done_pipe[1], &b, 1) != 1) {
		/* Full pipe: the main thread is already woken. */
	}
}

static void eng_post(struct eng *e, const struct bfs_jrec *r, int err,
		     const char *etag)
{
	struct eng_result *res = talloc_zero(NULL, struct eng_result);

	if (res == NULL) {
		return; /* the waiter finds out at the next result or poll */
	}
	res->key = talloc_strdup(res, r->key);
	res->staging = talloc_strdup(res, r->staging ? r->staging : "");
	res->etag = etag ? talloc_strdup(res, etag) : NULL;
	res->err = err;
	res->size = r->size;
	res->deleted = err == 0 && r->op == BFS_J_DELETE;
	pthread_mutex_lock(&e->mu);
	res->next = e->results;
	e->results = res;
	if (err == 0) {
		e->uploaded++;
		if (r->op == BFS_J_PUT) {
			e->bytes += r->size;
		}
	} else {
		e->failed++;
	}
	pthread_mutex_unlock(&e->mu);
	eng_wake_main(e, 1);
}

/* Under e->mu. */
static bool eng_retry_due(struct eng *e, const char *key, time_t now,
			  bool urgent)
{
	struct eng_retry *t;

	for (t = e->retry; t != NULL; t = t->next) {
		if (strcmp(t->key, key) == 0) {
			return urgent || now >= t->at;
		}
	}
	return true;
}

/* Under e->mu. */
static void eng_retry_set(struct eng *e, const char *key, int err,
			  time_t now)
{
	struct eng_retry **pt, *t;

	for (pt = &e->retry; *pt != NULL; pt = &(*pt)->next) {
		if (strcmp((*pt)->key, key) == 0) {
			break;
		}
	}
	if (err == 0) {
		if (*pt != NULL) {
			t = *pt;
			*pt = t->next;
			free(t->key);
			free(t);
		}
		return;
	}
	if (*pt == NULL) {
		t = calloc(1, sizeof(*t));
		if (t == NULL || (t->key = strdup(key)) == NULL) {
			free(t);
			return; /* then it is tried at the next pass */
		}
		*pt = t;
	}
	(*pt)->at = now + e->retry_s;
}

/*
 * Under e->mu: take key for this thread, false if another one runs it.
 * A journal key is one record, so a key held is a record held.
 */
static bool eng_claim(struct eng *e, const char *key)
{
	char *k, **more;
	size_t i;

	for (i = 0; i < e->n_claimed; i++) {
		if (strcmp(e->claimed[i], key) == 0) {
			return false;
		}
	}
	k = strdup(key);
	more = k == NULL ? NULL :
		realloc(e->claimed, (e->n_claimed + 1) * sizeof(char *));
	if (more == NULL) {
		free(k);
		return false; /* out of memory: the next pass tries again */
	}
	e->claimed = more;
	e->claimed[e->n_claimed++] = k;
	return true;
}

/* Under e->mu. */
static void eng_unclaim(struct eng *e, const char *key)
{
	size_t i;

	for (i = 0; i < e->n_claimed; i++) {
		if (strcmp(e->claimed[i], key) == 0) {
			free(e->claimed[i]);
			e->claimed[i] = e->claimed[--e->n_claimed];
			return;
		}
	}
}

/* A copy of creds in a talloc tree of its own, for another thread. */
static struct s3_credentials *eng_creds_copy(const struct s3_credentials *creds)
{
	struct s3_credentials *c = talloc_zero(NULL, struct s3_credentials);

	if (c == NULL ||
	    (c->access_key = talloc_strdup(c, creds->access_key)) == NULL ||
	    (c->secret_key = talloc_strdup(c, creds->secret_key)) == NULL ||
	    (creds->session_token != NULL &&
	     (c->session_token = talloc_strdup(c, creds->session_token)) ==
		     NULL)) {
		talloc_free(c);
		return NULL;
	}
	return c;
}

/*
 * Instance-role credentials, refreshed by whichever upload thread comes
 * first once they are due (one at a time), for every thread: the upload
 * threads take them at their next record, the main thread's fetch client
 * through the result pipe, the share's smbds from the cache folder.
 */
static void eng_refresh_credentials(struct eng_worker *w, time_t now)
{
	struct eng *e = w->e;
	struct s3_credentials creds = {0}, *mine, *theirs;
	const char *why = NULL;
	time_t expire = 0, was;
	TALLOC_CTX *tmp;
	int ret, sret;

	pthread_mutex_lock(&e->mu);
	was = e->creds_expire;
	if (was == 0 || now < was - ENG_CREDS_MARGIN ||
	    now < e->creds_retry || e->creds_refreshing) {
		pthread_mutex_unlock(&e->mu);
		return;
	}
	e->creds_refreshing = true;
	pthread_mutex_unlock(&e->mu);

	tmp = talloc_new(w->mem);
	ret = tmp ? s3_imds_fetch(tmp, e->imds, 2000, &creds, &expire, &why) :
		    ENOMEM;
	mine = ret == 0 ? eng_creds_copy(&creds) : NULL;
	theirs = ret == 0 ? eng_creds_copy(&creds) : NULL;
	if (ret == 0 && (mine == NULL || theirs == NULL)) {
		ret = ENOMEM;
	}
	if (ret == 0) {
		/* The folder's smbds take them from here (bfs_role_creds.h). */
		sret = bfs_role_creds_save(e->c.cache_dir, e->imds, &creds,
					   expire);
		if (sret != 0) {
			eng_log(BFS_LOG_WARNING, "cannot save the refreshed "
				"credentials for the share's smbd processes "
				"(they ask the metadata service themselves): "
				"%s", strerror(sret));
		}
	}
	talloc_free(tmp);
	pthread_mutex_lock(&e->mu);
	e->creds_refreshing = false;
	if (ret == 0) {
		talloc_free(e->worker_creds);
		e->worker_creds = mine;
		e->creds_gen++;
		talloc_free(e->fresh_creds);
		e->fresh_creds = theirs;
		e->creds_expire = expire;
	} else {
		/*
		 * As the module does: a metadata service that is away is
		 * asked again in 10 s, not on every pass (2 s, each one
		 * waiting up to 2 s for it and logging a line).
		 */
		e->creds_retry = now + 10;
	}
	pthread_mutex_unlock(&e->mu);
	if (ret == 0) {
		eng_wake_main(e, 1);
		return;
	}
	talloc_free(mine);
	talloc_free(theirs);
	eng_log(BFS_LOG_WARNING, "cannot refresh the instance role's "
		"credentials (they expire in %lld s): %s",
		(long long)(was - now), why ? why : strerror(ret));
}

/* Credentials another thread refreshed, into this thread's client. */
static void eng_take_credentials(struct eng_worker *w)
{
	struct eng *e = w->e;

	pthread_mutex_lock(&e->mu);
	if (w->seen_creds != e->creds_gen && e->worker_creds != NULL) {
		if (s3_client_set_credentials(w->s3, e->worker_creds) == 0) {
			w->seen_creds = e->creds_gen;
		}
	}
	pthread_mutex_unlock(&e->mu);
}

/*
 * Claim r's key and read its record again: another thread may have run
 * it since our listing, or a close replaced it.  true with *cur, the
 * record as it is now, ours to run; the caller unclaims it.
 */
static bool eng_take_record(struct eng_worker *w, TALLOC_CTX *mem_ctx,
			    const struct bfs_jrec *r, time_t now, bool urgent,
			    struct bfs_jrec *cur)
{
	struct eng *e = w->e;
	bool mine;

	pthread_mutex_lock(&e->mu);
	mine = eng_retry_due(e, r->key, now, urgent) && eng_claim(e, r->key);
	pthread_mutex_unlock(&e->mu);
	if (!mine) {
		return false;
	}
	if (bfs_journal_get(e->j, mem_ctx, r->key, cur) == 0 &&
	    cur->pid == r->pid && cur->op == r->op) {
		return true;
	}
	pthread_mutex_lock(&e->mu);
	eng_unclaim(e, r->key);
	pthread_mutex_unlock(&e->mu);
	return false;
}

/*
 * Once a minute: delete-pending marks whose delete is no longer in the
 * journal (a process died between the two) stop hiding their names.
 */
#define ENG_MARK_SWEEP_SECONDS 60

static void eng_sweep_marks(struct eng_worker *w, time_t now)
{
	struct eng *e = w->e;
	unsigned n;
	bool due;

	pthread_mutex_lock(&e->mu);
	due = now >= e->marks_swept_at + ENG_MARK_SWEEP_SECONDS ||
	      now < e->marks_swept_at; /* the clock stepped back */
	if (due) {
		e->marks_swept_at = now;
	}
	pthread_mutex_unlock(&e->mu);
	n = due ? bfs_wb_sweep_marks(w->wb, now - ENG_MARK_SWEEP_SECONDS) : 0;
	if (n > 0) {
		eng_log(BFS_LOG_WARNING, "%u name(s) hidden for a delete no "
			"longer journalled show again", n);
	}
}

/* Run one record this thread holds; the result goes to the main thread. */
static void eng_run(struct eng_worker *w, struct bfs_jrec *r)
{
	struct eng *e = w->e;
	TALLOC_CTX *one = talloc_new(w->mem);
	struct s3_status st = {0};
	struct bfs_entry ent = {0};
	const char *etag = NULL;
	char *dir, *name;
	bool marker;
	int ret;

	ret = bfs_wb_finish(w->wb, r, &st);
	if (ret != 0) {
		eng_log(BFS_LOG_ERR, "%s of s3://%s/%s failed: %s (HTTP %ld); "
			"it stays in the journal and is tried again in %d s",
			r->op == BFS_J_PUT ? "upload" :
			r->op == BFS_J_COPY ? "rename" :
			r->op == BFS_J_ABORT ? "abort" : "delete",
			e->c.bucket, r->key, strerror(ret), st.http_status,
			e->retry_s);
	}
	pthread_mutex_lock(&e->mu);
	eng_retry_set(e, r->key, ret, eng_mono());
	eng_unclaim(e, r->key);
	pthread_mutex_unlock(&e->mu);
	/* The ETag the upload left in the index; none when it was stopped,
	 * its file renamed (and bfs_wb_finish said so). */
	if (one != NULL && ret == 0 &&
	    (r->op == BFS_J_PUT || r->op == BFS_J_COPY) &&
	    bfs_key_entry(one, r->key, &dir, &name, &marker) == 0 &&
	    bfs_index_lookup(e->idx, one, dir, name, &ent) == 0) {
		/*
		 * A folder's marker (an mkdir): its entry has no ETag, and
		 * is no longer pending once the marker is in S3.  "" says
		 * done all the same, for the cluster's change notice.
		 */
		etag = !marker ? (r->op == BFS_J_COPY &&
				  (ent.flags & BFS_ENT_PENDING) ? NULL :
				  ent.etag) :
		       ent.is_dir && !(ent.flags & BFS_ENT_PENDING) ? "" : NULL;
	}
	if (etag != NULL && r->op == BFS_J_COPY) {
		eng_log(BFS_LOG_INFO, "renamed s3://%s/%s to %s (%" PRIu64
			" bytes copied in S3)", e->c.bucket, r->src, r->key,
			r->size);
	} else if (etag != NULL) {
		eng_log(BFS_LOG_INFO, "uploaded s3://%s/%s (%" PRIu64
			" bytes)", e->c.bucket, r->key, r->size);
	}
	eng_post(e, r, ret, etag);
	talloc_free(one);
}

/*
 * One pass: take over the records of dead processes, then carry out every
 * record in our name that is due and that no other upload thread holds.
 * true if it ran any, or stopped for a flush that came meanwhile: then
 * the caller passes again at once.
 */
static void eng_kick(struct eng *e, bool urgent);

static bool eng_pass(struct eng_worker *w, bool urgent)
{
	struct eng *e = w->e;
	TALLOC_CTX *tmp = talloc_new(w->mem);
	struct bfs_jrec *recs = NULL, *orphans = NULL;
	struct bfs_wb_copy_srcs copy_srcs;
	size_t n = 0, no = 0, i, front, n_urgent;
	char **urgent_keys;
	pid_t me = getpid();
	time_t now = time(NULL), mono = eng_mono();
	uint64_t pending = 0, urgent_gen;
	unsigned ran = 0, young = 0;
	bool again = false;
	int ret;

	ret = bfs_journal_claim_orphans(e->j, tmp, me, "", &orphans, &no);
	if (ret != 0) {
		/* They stay the dead process's: the next pass tries again. */
		eng_log(BFS_LOG_ERR, "cannot take over what dead processes "
			"left in the journal: %s", strerror(ret));
	} else if (no > 0) {
		eng_log(BFS_LOG_WARNING, "took over %zu change(s) a dead "
			"process left in the journal", no);
	}
	if (bfs_journal_list(e->j, tmp, &recs, &n, NULL) != 0) {
		eng_log(BFS_LOG_ERR, "cannot read the journal");
		talloc_free(tmp);
		return false;
	}
	for (i = 0; i < n; i++) {
		pending += recs[i].pid == me;
	}
	if (bfs_wb_copy_sources(tmp, recs, n, NULL, &copy_srcs) != 0) {
		talloc_free(tmp);
		return false; /* out of memory: the next pass */
	}
	pthread_mutex_lock(&e->mu);
	e->pending = pending;
	urgent_keys = e->urgent_keys;
	n_urgent = e->n_urgent;
	e->urgent_keys = NULL;
	e->n_urgent = 0;
	urgent_gen = e->urgent_gen;
	pthread_mutex_unlock(&e->mu);
	/*
	 * What a flush waits for goes first: a client's FlushFileBuffers
	 * should not wait behind closes nobody waits for.  The thread that
	 * starts a pass first after the flush takes its keys.
	 */
	for (i = 0, front = 0; i < n; i++) {
		size_t k;

		for (k = 0; k < n_urgent; k++) {
			if (strcmp(urgent_keys[k], recs[i].key) == 0) {
				struct bfs_jrec t = recs[i];

				memmove(&recs[front + 1], &recs[front],
					(i - front) * sizeof(*recs));
				recs[front++] = t;
				break;
			}
		}
	}
	for (i = 0; i < n_urgent; i++) {
		free(urgent_keys[i]);
	}
	free(urgent_keys);
	eng_refresh_credentials(w, now);
	eng_take_credentials(w);
	eng_sweep_marks(w, now);
	for (i = 0; i < n; i++) {
		struct bfs_jrec *r = &recs[i], cur;
		bool quit;

		if (r->pid != me) {
			continue;
		}
		if (i >= front && bfs_wb_put_young(w->wb, r, e->delay_ms)) {
			/* Closed just now: a rename may still move it. */
			young++;
			continue;
		}
		if (bfs_wb_waits_for_copy(&copy_srcs, r)) {
			/* The pass after the copy's takes it. */
			continue;
		}
		if (!eng_take_record(w, tmp, r, mono, urgent, &cur)) {
			continue;
		}
		eng_run(w, &cur);
		ran++;
		pthread_mutex_lock(&e->mu);
		quit = e->quit;
		/* A flush came while we ran: its key before the rest. */
		again = e->urgent_gen != urgent_gen;
		pthread_mutex_unlock(&e->mu);
		if (quit || again) {
			break;
		}
		eng_take_credentials(w);
	}
	talloc_free(tmp);
	if (young > 0) {
		eng_kick(e, false); /* back once they are old enough */
	}
	return ran > 0 || again;
}

static void *eng_worker_main(void *arg)
{
	struct eng_worker *w = arg;
	struct eng *e = w->e;

	for (;;) {
		struct timespec until;
		bool urgent;

		pthread_mutex_lock(&e->mu);
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += ENG_POLL_SECONDS;
		while (w->seen_kick == e->kick_gen && !e->quit &&
		       pthread_cond_timedwait(&e->cv, &e->mu, &until) == 0) {
		}
		urgent = w->seen_urgent != e->urgent_gen;
		if (w->seen_kick != e->kick_gen && !urgent &&
		    e->delay_ms > 0 && !e->quit) {
			/*
			 * A close just handed us its file: give a rename that
			 * follows (write tmp, rename over final) the moment
			 * to retarget the upload before it starts.
			 */
			clock_gettime(CLOCK_MONOTONIC, &until);
			until.tv_nsec += (long)(e->delay_ms % 1000) * 1000000;
			until.tv_sec += e->delay_ms / 1000 +
					until.tv_nsec / 1000000000;
			until.tv_nsec %= 1000000000;
			while (w->seen_urgent == e->urgent_gen &&
			       w->seen_ripe == e->ripe_gen && !e->quit &&
			       pthread_cond_timedwait(&e->cv, &e->mu,
						      &until) == 0) {
			}
			urgent = w->seen_urgent != e->urgent_gen;
		}
		if (e->quit) {
			pthread_mutex_unlock(&e->mu);
			eng_worker_count(w, true);
			break;
		}
		w->seen_kick = e->kick_gen;
		w->seen_urgent = e->urgent_gen;
		w->seen_ripe = e->ripe_gen;
		e->n_busy++;
		pthread_mutex_unlock(&e->mu);

		while (eng_pass(w, urgent)) {
			pthread_mutex_lock(&e->mu);
			urgent = w->seen_urgent != e->urgent_gen;
			w->seen_urgent = e->urgent_gen;
			pthread_mutex_unlock(&e->mu);
		}

		eng_worker_count(w, false);
		pthread_mutex_lock(&e->mu);
		e->n_busy--;
		pthread_mutex_unlock(&e->mu);
		eng_wake_main(e, 0); /* idle: the main thread may reload */
	}
	return NULL;
}

/*
 * Whether key's journal record is an upload a rename retargeted (write
 * tmp, rename over final): the rename the upload delay holds it for has
 * come, so it need not wait out the delay (bfs_wb_put_young).
 */
static bool eng_renamed_put(struct eng *e, const char *key)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec r = {0};
	bool renamed;

	renamed = tmp != NULL && bfs_journal_get(e->j, tmp, key, &r) == 0 &&
		  r.op == BFS_J_PUT && r.src != NULL && !r.started;
	talloc_free(tmp);
	return renamed;
}

/* Wake every upload thread: each looks at the journal (once its delay,
 * unless urgent, has passed). */
static void eng_kick(struct eng *e, bool urgent)
{
	pthread_mutex_lock(&e->mu);
	e->kick_gen++;
	if (urgent) {
		e->urgent_gen++;
	}
	pthread_cond_broadcast(&e->cv);
	pthread_mutex_unlock(&e->mu);
}

/* Under e->mu: no upload thread runs a record or has a kick to look at. */
static bool eng_idle(struct eng *e)
{
	unsigned i;

	if (e->n_busy > 0) {
		return false;
	}
	for (i = 0; i < e->n_workers; i++) {
		if (e->workers[i]->seen_kick != e->kick_gen) {
			return false;
		}
	}
	return true;
}

/* Under e->mu: end every thread once its current record is done. */
static void eng_quit(struct eng *e)
{
	e->quit = true;
	pthread_cond_broadcast(&e->cv);
}

/* ---- the main thread: clients -------------------------------------------------- */

static void eng_claim_end(struct eng_read_claim *cl);

static void eng_client_free(struct eng_client *c)
{
	struct eng_waiter *wt, *next;
	struct eng_read_claim *cl, *cnext;

	/* Its claims end: what others parked behind them goes on. */
	for (cl = c->e->claims; cl != NULL; cl = cnext) {
		cnext = cl->next;
		if (cl->c == c) {
			eng_claim_end(cl);
		}
	}

	for (wt = c->e->waiters; wt != NULL; wt = next) {
		next = wt->next;
		if (wt->c == c) {
			BFS_LIST_REMOVE(c->e->waiters, wt);
			talloc_free(wt);
		}
	}
	BFS_LIST_REMOVE(c->e->clients, c);
	talloc_free(c); /* the fde, then the fd (destructor) */
}

static int eng_client_destructor(struct eng_client *c)
{
	TALLOC_FREE(c->fde);
	if (c->fd != -1) {
		close(c->fd);
	}
	return 0;
}

static void eng_client_io(struct tevent_context *ev, struct tevent_fd *fde,
			  uint16_t flags, void *private_data);

static void eng_send(struct eng_client *c, const struct bfs_proto_msg *m)
{
	uint8_t *buf;
	size_t len;

	if (bfs_proto_encode(c, m, &buf, &len) != 0) {
		eng_log(BFS_LOG_ERR, "cannot encode a %s answer",
			bfs_proto_type_name(m->type));
		return;
	}
	c->out = talloc_realloc(c, c->out, uint8_t, c->out_len + len);
	if (c->out == NULL) {
		c->out_len = 0;
		talloc_free(buf);
		return;
	}
	memcpy(c->out + c->out_len, buf, len);
	c->out_len += len;
	talloc_free(buf);
	TEVENT_FD_WRITEABLE(c->fde);
}

/*
 * An upload is in S3 and no smbd of this node is connected to tell the
 * other nodes (its client left right after the close): tell ctdbd
 * ourselves.  We do not know our node's number, so this node's smbds
 * take it as another node's too and list the folder once more.
 */
static void eng_tell_nodes(struct eng *e, const char *key)
{
	size_t len = 0;
	uint8_t *msg = bfs_change_msg(NULL, BFS_CTDB_NODE_UNKNOWN, e->c.bucket,
				      key, &len);

	if (msg == NULL) {
		return;
	}
	if (bfs_ctdb_send_message(e->ctdb_socket, BFS_CTDB_ALL_NODES,
				  BFS_CTDB_SRVID, msg, len, 2000) == 0) {
		eng_log(BFS_LOG_INFO, "told the other nodes that %s is in S3 "
			"(no smbd of this node connected to tell them)", key);
	}
	talloc_free(msg);
}

static void eng_answer(struct eng_waiter *wt, int err, const char *etag)
{
	struct bfs_proto_msg m = {
		.type = BFS_PM_DONE, .id = wt->id, .err = (uint64_t)err,
		.etag = (char *)etag,
	};

	eng_send(wt->c, &m);
	BFS_LIST_REMOVE(wt->c->e->waiters, wt);
	talloc_free(wt);
}

/*
 * Whether a WAIT for key is answered now: 1 done (*err set), 0 still to
 * wait.  Done when key has no record (its upload, or a later one, is
 * in S3), failed when its record carries an error that result reported.
 */
static int eng_wait_state(struct eng *e, const char *key,
			  const struct eng_result *res, int *err)
{
	TALLOC_CTX *tmp = talloc_new(e);
	struct bfs_jrec r;
	int ret;

	ret = tmp ? bfs_journal_get(e->j, tmp, key, &r) : ENOMEM;
	if (ret == ENOENT) {
		*err = 0;
		ret = 1;
	} else if (ret == 0 && r.op != BFS_J_PUT &&
		   !(r.op == BFS_J_COPY && r.index_gone)) {
		*err = 0; /* a delete of the name now: not ours */
		ret = 1;
	} else if (ret == 0 && res != NULL && res->err != 0 &&
		   r.last_error != 0 &&
		   strcmp(r.staging ? r.staging : "", res->staging) == 0) {
		*err = res->err;
		ret = 1;
	} else if (ret == 0 && r.last_error != 0 &&
		   !bfs_jrec_owner_alive(&r)) {
		ret = 0; /* claimed at the next pass */
	} else if (ret != 0) {
		*err = ret;
		ret = 1;
	}
	talloc_free(tmp);
	return ret;
}

/*
 * A FETCH in progress: answered DONE once its blocks are in the cache, or,
 * for a client that maps the arena, once they are fetched, lent.
 */
struct eng_fetch {
	struct eng_client *c;
	uint32_t id;
};

static int eng_pin_destructor(struct eng_pin *p)
{
	BFS_LIST_REMOVE(p->c->pins, p);
	return 0;
}

static void eng_fetch_lent(struct tevent_req *req)
{
	struct eng_fetch *f = tevent_req_callback_data(req, struct eng_fetch);
	struct eng_client *c = f->c;
	struct bfs_proto_msg a = {.type = BFS_PM_DONE, .id = f->id};
	struct eng_pin *p = talloc_zero(c, struct eng_pin);
	struct bfs_pin *pin = NULL;
	uint64_t off = 0;
	int ret = bfs_read_lend_recv(req, p != NULL ? (TALLOC_CTX *)p : c,
				     &off, &pin, NULL);

	talloc_free(req);
	if (ret == 0 && pin != NULL && p != NULL) {
		p->c = c;
		p->id = ++c->next_pin;
		p->pin = pin;
		BFS_LIST_ADD(c->pins, p);
		talloc_set_destructor(p, eng_pin_destructor);
		a.slot = off;
		a.pin = p->id;
	} else {
		talloc_free(pin); /* (no memory for p: read the cache) */
		talloc_free(p);
	}
	a.err = (uint64_t)ret;
	eng_send(c, &a);
	talloc_free(f);
}

static void eng_release(struct eng_client *c, uint64_t id)
{
	struct eng_pin *p;

	for (p = c->pins; p != NULL; p = p->next) {
		if (p->id == id) {
			talloc_free(p);
			return;
		}
	}
}

static void eng_fetch_done(struct tevent_req *req)
{
	struct eng_fetch *f = tevent_req_callback_data(req, struct eng_fetch);
	struct bfs_proto_msg a = {.type = BFS_PM_DONE, .id = f->id};
	struct s3_status st = {0};
	size_t got = 0;
	int ret = bfs_read_recv(req, &got, &st);

	talloc_free(req);
	a.err = (uint64_t)ret;
	eng_send(f->c, &a);
	talloc_free(f);
}

/*
 * The fetch buffers in an arena each smbd maps (bfs_arena.h), as large as
 * `bucketfs:fetch memory` (1 GiB of address space when that is 0, "no
 * limit": only the slots used are ever touched).  An smbd then copies a
 * fetched block from there, and the cache is filled around the page cache
 * (O_DIRECT) meanwhile, since no reader waits to read it back.  Without
 * the arena, a FETCH is answered once its blocks are in the cache, filled
 * through the page cache, where the smbd that asked reads them.
 */
static void eng_arena_setup(struct eng *e, uint64_t fetch_memory)
{
	size_t slot = bfs_reader_buf_size(e->reader);
	uint64_t want = fetch_memory != 0 ? fetch_memory : 1ULL << 30;
	uint64_t n = want / slot;

	n = n < 1 ? 1 : n > 4096 ? 4096 : n;
	/* The reader's child: its fetches give their slots back as it goes. */
	e->arena = bfs_arena_new(e->reader, slot, (unsigned)n);
	if (e->arena != NULL && bfs_reader_use_arena(e->reader, e->arena) != 0) {
		TALLOC_FREE(e->arena);
	}
	if (e->arena == NULL) {
		eng_log(BFS_LOG_WARNING, "no fetch arena: smbds read fetched "
			"blocks from the cache file");
	}
	bfs_reader_answer_after_fill(e->reader, e->arena == NULL);
	if (e->arena != NULL) {
		/* Queued fills are arena slots: let the whole arena wait. */
		bfs_cache_fill_queue_max(e->cache, bfs_arena_size(e->arena));
		if (!bfs_arena_huge_pages_allowed()) {
			bfs_cache_fill_bounce(e->cache);
		}
	}
}

/* ---- claims --------------------------------------------------------------- */

static void eng_fetch(struct eng_client *c, const struct bfs_proto_msg *m);

/* The reader's budget: the host's, less what the claims hold. */
static void eng_claims_memory(struct eng *e)
{
	if (e->fetch_memory != 0 && e->reader != NULL) {
		bfs_reader_set_memory(e->reader, e->fetch_memory -
					      e->n_claims * e->claim_bytes);
	}
}

static int eng_parked_destructor(struct eng_parked *p)
{
	if (p->cl != NULL) {
		BFS_LIST_REMOVE(p->cl->parked, p);
	}
	return 0;
}

/* The claim ends (UNCLAIM, its client gone, or not given back in time):
 * the FETCHes parked behind it run now, and find its blocks cached. */
static void eng_claim_end(struct eng_read_claim *cl)
{
	struct eng *e = cl->c->e;
	struct eng_parked *p;

	BFS_LIST_REMOVE(e->claims, cl);
	e->n_claims--;
	eng_claims_memory(e);
	eng_log(BFS_LOG_INFO, "claim of %s ended%s", cl->key,
		cl->parked != NULL ? ": its other readers' fetches go on" : "");
	while ((p = cl->parked) != NULL) {
		BFS_LIST_REMOVE(cl->parked, p);
		p->cl = NULL;
		eng_fetch(p->c, p->m);
		talloc_free(p);
	}
	talloc_free(cl);
}

static struct eng_read_claim *eng_claim_of(struct eng *e,
				      const struct bfs_cache_id *id)
{
	struct eng_read_claim *cl;

	for (cl = e->claims; cl != NULL; cl = cl->next) {
		if (memcmp(cl->id.b, id->b, sizeof(id->b)) == 0) {
			return cl;
		}
	}
	return NULL;
}

/* Revoked long ago and not given back: the claimer is stuck or buggy;
 * the others should not wait for it any longer. */
static void eng_claim_overdue(struct tevent_context *ev,
			      struct tevent_timer *te, struct timeval now,
			      void *private_data)
{
	struct eng_read_claim *cl = private_data;

	(void)ev, (void)te, (void)now;
	cl->deadline = NULL;
	eng_log(BFS_LOG_WARNING, "the claim of %s was not given back in "
		"time: its readers' fetches go on without it", cl->key);
	eng_claim_end(cl);
}

/* CLAIM: granted (DONE, err 0) or not (EBUSY): see bfs_proto.h. */
static void eng_read_claim(struct eng_client *c, const struct bfs_proto_msg *m)
{
	struct eng *e = c->e;
	struct bfs_proto_msg a = {.type = BFS_PM_DONE, .id = m->id};
	struct bfs_cache_id id;
	struct eng_read_claim *cl;

	if (m->key == NULL || m->etag == NULL || e->reader == NULL) {
		a.err = EINVAL;
		eng_send(c, &a);
		return;
	}
	bfs_cache_make_id(e->c.bucket, m->key, m->etag, e->c.block_size, &id);
	a.err = EBUSY;
	for (cl = e->claims; cl != NULL && cl->c != c; cl = cl->next) {
	}
	if (cl != NULL && !cl->revoked &&
	    memcmp(cl->id.b, id.b, sizeof(id.b)) == 0) {
		a.err = 0; /* yours already: asked by two reads at once */
		eng_send(c, &a);
		return;
	}
	if (e->claim_bytes == 0 || cl != NULL || eng_claim_of(e, &id) ||
	    bfs_reader_has_object(e->reader, &id) ||
	    (e->fetch_memory != 0 &&
	     (e->n_claims + 1) * e->claim_bytes > e->fetch_memory / 2)) {
		/* Theirs, another reader's here, or the memory's taken. */
		eng_send(c, &a);
		return;
	}
	cl = talloc_zero(c, struct eng_read_claim);
	if (cl == NULL || (cl->key = talloc_strdup(cl, m->key)) == NULL ||
	    (cl->etag = talloc_strdup(cl, m->etag)) == NULL) {
		talloc_free(cl);
		eng_send(c, &a);
		return;
	}
	cl->c = c;
	cl->id = id;
	BFS_LIST_ADD(e->claims, cl);
	e->n_claims++;
	eng_claims_memory(e);
	eng_log(BFS_LOG_INFO, "%s is claimed: one smbd fetches it itself",
		cl->key);
	a.err = 0;
	eng_send(c, &a);
}

static void eng_read_unclaim(struct eng_client *c,
			     const struct bfs_proto_msg *m)
{
	struct eng_read_claim *cl;

	for (cl = c->e->claims; cl != NULL; cl = cl->next) {
		if (cl->c == c && m->key != NULL && m->etag != NULL &&
		    strcmp(cl->key, m->key) == 0 &&
		    strcmp(cl->etag, m->etag) == 0) {
			eng_claim_end(cl);
			return;
		}
	}
}

/*
 * A FETCH or PREFETCH of an object another client claimed: parked until
 * the claim ends, which the claimer is asked for.  false if not claimed
 * (or by c itself, or parking failed): fetch it now.
 */
static bool eng_park(struct eng_client *c, const struct bfs_proto_msg *m,
		     const struct bfs_cache_id *id)
{
	struct eng_read_claim *cl = eng_claim_of(c->e, id);
	struct eng_parked *p;

	if (cl == NULL || cl->c == c) {
		return false;
	}
	p = talloc_zero(c, struct eng_parked);
	if (p == NULL || (p->m = talloc_memdup(p, m, sizeof(*m))) == NULL) {
		talloc_free(p);
		return false;
	}
	p->m->share = p->m->cache_dir = p->m->staging = NULL;
	p->m->key = talloc_strdup(p->m, m->key);
	p->m->etag = talloc_strdup(p->m, m->etag);
	if (p->m->key == NULL || p->m->etag == NULL) {
		talloc_free(p);
		return false;
	}
	p->c = c;
	p->cl = cl;
	BFS_LIST_ADD(cl->parked, p);
	talloc_set_destructor(p, eng_parked_destructor);
	if (!cl->revoked) {
		struct bfs_proto_msg r = {
			.type = BFS_PM_REVOKE, .key = cl->key, .etag = cl->etag,
		};

		cl->revoked = true;
		eng_log(BFS_LOG_INFO, "another reader wants %s: its claim is "
			"asked back", cl->key);
		eng_send(cl->c, &r);
		cl->deadline = tevent_add_timer(c->e->ev, cl,
						tevent_timeval_current_ofs(30, 0),
						eng_claim_overdue, cl);
	}
	return true;
}

/* FETCH and PREFETCH: read misses of smbds, fetched once for all. */
static void eng_fetch(struct eng_client *c, const struct bfs_proto_msg *m)
{
	struct eng *e = c->e;
	struct bfs_object obj = {
		.key = m->key, .etag = m->etag, .size = m->size,
	};
	struct bfs_proto_msg a = {.type = BFS_PM_DONE, .id = m->id};
	struct tevent_req *req;
	struct eng_fetch *f;

	if (m->key == NULL || m->etag == NULL || e->reader == NULL) {
		if (m->type == BFS_PM_FETCH) {
			a.err = EINVAL;
			eng_send(c, &a);
		}
		return;
	}
	bfs_cache_make_id(e->c.bucket, m->key, m->etag, e->c.block_size,
			  &obj.id);
	if (eng_park(c, m, &obj.id)) {
		return;
	}
	if (m->type == BFS_PM_FETCH) {
		size_t len = (size_t)MIN(m->length, 64u << 20);
		bool lend = m->lend != 0 && e->arena != NULL;

		f = talloc_zero(c, struct eng_fetch);
		req = f == NULL ? NULL :
		      lend ? bfs_read_lend_send(f, e->ev, e->reader, &obj,
						m->offset, len) :
			     bfs_read_send(f, e->ev, e->reader, &obj,
					   m->offset, len, NULL);
		if (req == NULL) {
			talloc_free(f);
			a.err = ENOMEM;
			eng_send(c, &a);
		} else {
			f->c = c;
			f->id = m->id;
			tevent_req_set_callback(req, lend ? eng_fetch_lent :
							    eng_fetch_done, f);
		}
	}
	if (m->ahead_n > 0) {
		bfs_reader_prefetch(e->reader, &obj, m->ahead,
				    (unsigned)MIN(m->ahead_n, 4096));
	}
}

/*
 * LIST: a directory some smbd served past its TTL, relisted here from S3
 * into the index, once for every smbd that asks meanwhile (and not at all
 * while another process lists it: the index's listing claim).
 */
struct eng_listing {
	struct eng_listing *prev, *next;
	struct eng *e;
	char *prefix;
	time_t started;
	uint64_t since;	/* the index's count of changes when it started */
};

static int eng_listing_destructor(struct eng_listing *l)
{
	BFS_LIST_REMOVE(l->e->listings, l);
	bfs_index_listing_release(l->e->idx, l->prefix);
	return 0;
}

static void eng_list_done(struct tevent_req *req)
{
	struct eng_listing *l = tevent_req_callback_data(req,
							 struct eng_listing);
	struct s3_status st = {0};
	struct s3_dir *dir = NULL;
	int ret = s3_dirlist_recv(req, l, &dir, &st);

	talloc_free(req);
	if (ret == 0) {
		if (dir->n_hidden_sample > 0) {
			eng_log(BFS_LOG_WARNING, "%zu key(s) under s3://%s/%s "
				"cannot be SMB names and are hidden, e.g. "
				"'%s' (%s)", dir->n_hidden, l->e->c.bucket,
				l->prefix, dir->hidden[0].key,
				dir->hidden[0].why);
		}
		ret = bfs_index_store_dir(l->e->idx, dir, l->started,
					  l->since);
		if (ret == 0 && time(NULL) > l->started + 1) {
			/* A slow listing is as fresh as its last page. */
			int dret = bfs_index_dir_set_listed(l->e->idx,
							    l->prefix,
							    time(NULL));
			if (dret != 0) {
				/* Dated at its start: listed again sooner. */
				eng_log(BFS_LOG_NOTICE, "cannot date the "
					"listing of %s: %s", l->prefix,
					strerror(dret));
			}
		}
		if (ret != 0) {
			eng_log(BFS_LOG_ERR, "cannot store the listing of %s "
				"in the index: %s", l->prefix, strerror(ret));
		}
	} else {
		eng_log(BFS_LOG_WARNING, "relisting s3://%s/%s failed: %s "
			"(HTTP %ld); the index keeps what it had",
			l->e->c.bucket, l->prefix,
			st.code[0] ? st.code : strerror(ret), st.http_status);
	}
	talloc_free(l);
}

static void eng_list(struct eng *e, const char *prefix)
{
	struct eng_listing *l;
	struct tevent_req *req;
	int ret;

	for (l = e->listings; l != NULL; l = l->next) {
		if (strcmp(l->prefix, prefix) == 0) {
			return; /* on its way */
		}
	}
	ret = bfs_index_listing_claim(e->idx, prefix, e->list_claim_age);
	if (ret == EBUSY) {
		return; /* another process lists it now */
	}
	if (ret != 0) {
		/* Unclaimed, the index keeps what it had: served, stale. */
		eng_log(BFS_LOG_ERR, "cannot claim the listing of %s in the "
			"index: %s", prefix, strerror(ret));
		return;
	}
	l = talloc_zero(e, struct eng_listing);
	if (l == NULL || (l->prefix = talloc_strdup(l, prefix)) == NULL) {
		talloc_free(l);
		bfs_index_listing_release(e->idx, prefix);
		return;
	}
	l->e = e;
	l->started = time(NULL);
	BFS_LIST_ADD(e->listings, l);
	talloc_set_destructor(l, eng_listing_destructor);
	ret = bfs_index_change_seq(e->idx, &l->since);
	if (ret != 0) {
		eng_log(BFS_LOG_ERR, "cannot read the index before listing "
			"%s: %s", prefix, strerror(ret));
		talloc_free(l);
		return;
	}
	req = s3_dirlist_send(l, e->ev, e->s3, prefix);
	if (req == NULL) {
		talloc_free(l);
		return;
	}
	tevent_req_set_callback(req, eng_list_done, l);
}

/* false if c was closed (and freed) */
static bool eng_on_message(struct eng_client *c, struct bfs_proto_msg *m)
{
	struct eng *e = c->e;
	struct bfs_proto_msg a = {.id = m->id};
	struct eng_waiter *wt;
	int err;

	switch (m->type) {
	case BFS_PM_HELLO:
		if (m->cache_dir == NULL ||
		    strcmp(m->cache_dir, e->c.cache_dir) != 0) {
			eng_log(BFS_LOG_ERR, "a client for cache folder %s "
				"reached the engine of %s: closing it",
				m->cache_dir ? m->cache_dir : "(none)",
				e->c.cache_dir);
			eng_client_free(c);
			return false;
		}
		a.type = BFS_PM_WELCOME;
		a.pid = (uint64_t)getpid();
		a.claim = e->claim_bytes;
		if (e->arena != NULL && c->out_len == 0) {
			/* Its first byte carries the arena's descriptor. */
			a.arena = bfs_arena_size(e->arena);
			c->pass_fd = bfs_arena_fd(e->arena);
		}
		eng_send(c, &a);
		break;
	case BFS_PM_RELEASE:
		eng_release(c, m->pin);
		break;
	case BFS_PM_CLAIM:
		eng_read_claim(c, m);
		break;
	case BFS_PM_UNCLAIM:
		eng_read_unclaim(c, m);
		break;
	case BFS_PM_UPLOAD:
		if (m->key != NULL && eng_renamed_put(e, m->key)) {
			/* Its rename came: what the upload delay waits for. */
			pthread_mutex_lock(&e->mu);
			e->ripe_gen++;
			pthread_mutex_unlock(&e->mu);
		}
		eng_kick(e, false);
		break;
	case BFS_PM_WAIT:
		if (m->key == NULL) {
			break;
		}
		if (eng_wait_state(e, m->key, NULL, &err) == 1) {
			a.type = BFS_PM_DONE;
			a.err = (uint64_t)err;
			eng_send(c, &a);
			break;
		}
		wt = talloc_zero(c, struct eng_waiter);
		if (wt == NULL) {
			break;
		}
		{
			char *k = strdup(m->key), **more;

			pthread_mutex_lock(&e->mu);
			more = k == NULL ? NULL :
				realloc(e->urgent_keys,
					(e->n_urgent + 1) * sizeof(char *));
			if (more != NULL) {
				e->urgent_keys = more;
				e->urgent_keys[e->n_urgent++] = k;
			} else {
				free(k); /* then it goes in its turn */
			}
			pthread_mutex_unlock(&e->mu);
		}
		wt->c = c;
		wt->id = m->id;
		wt->key = talloc_steal(wt, m->key);
		wt->staging = talloc_steal(wt, m->staging);
		BFS_LIST_ADD(e->waiters, wt);
		eng_kick(e, true);
		break;
	case BFS_PM_FETCH:
	case BFS_PM_PREFETCH:
		eng_fetch(c, m);
		break;
	case BFS_PM_LIST:
		if (m->key != NULL) {
			eng_list(e, m->key);
		}
		break;
	case BFS_PM_STATUS:
		a.type = BFS_PM_STATE;
		if (e->reader != NULL) {
			const struct bfs_reader_counters *rc =
				bfs_reader_counters(e->reader);
			a.fetches = rc->block_fetches;
			a.fetched = rc->fetched_bytes;
			a.lent = rc->lent_bytes;
		}
		a.pid = (uint64_t)getpid();
		pthread_mutex_lock(&e->mu);
		a.pending = e->pending;
		a.uploaded = e->uploaded;
		a.failed = e->failed;
		a.bytes = e->bytes;
		pthread_mutex_unlock(&e->mu);
		eng_send(c, &a);
		break;
	default:
		eng_log(BFS_LOG_WARNING, "unexpected %s from a client",
			bfs_proto_type_name(m->type));
		break;
	}
	return true;
}

static void eng_client_io(struct tevent_context *ev, struct tevent_fd *fde,
			  uint16_t flags, void *private_data)
{
	struct eng_client *c = private_data;

	if (flags & TEVENT_FD_WRITE) {
		ssize_t n;

		if (c->pass_fd != -1) {
			union {
				struct cmsghdr h;
				char b[CMSG_SPACE(sizeof(int))];
			} ctl;
			struct iovec iov = {.iov_base = c->out,
					    .iov_len = c->out_len};
			struct msghdr mh = {
				.msg_iov = &iov, .msg_iovlen = 1,
				.msg_control = ctl.b,
				.msg_controllen = sizeof(ctl.b),
			};
			struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);

			memset(ctl.b, 0, sizeof(ctl.b));
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(cm), &c->pass_fd, sizeof(int));
			n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
			if (n > 0) {
				c->pass_fd = -1;
			}
		} else {
			n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
		}

		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			eng_client_free(c);
			return;
		}
		if (n > 0) {
			memmove(c->out, c->out + n, c->out_len - (size_t)n);
			c->out_len -= (size_t)n;
		}
		if (c->out_len == 0) {
			TEVENT_FD_NOT_WRITEABLE(c->fde);
		}
	}
	if (flags & TEVENT_FD_READ) {
		uint8_t buf[16384];
		ssize_t n = recv(c->fd, buf, sizeof(buf), 0);

		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
			eng_client_free(c);
			return;
		}
		if (n < 0) {
			return;
		}
		if (bfs_proto_buf_append(c, &c->in, buf, (size_t)n) != 0) {
			eng_client_free(c);
			return;
		}
		for (;;) {
			struct bfs_proto_msg *m = NULL;
			int ret = bfs_proto_buf_take(c, &c->in, &m);

			if (ret == EAGAIN) {
				break;
			}
			if (ret != 0) {
				eng_log(BFS_LOG_ERR, "a client sent a bad "
					"message (%s): closing it",
					strerror(ret));
				eng_client_free(c);
				return;
			}
			if (!eng_on_message(c, m)) {
				return; /* closed it (a HELLO for another folder) */
			}
			talloc_free(m);
		}
	}
}

static void eng_accept(struct tevent_context *ev, struct tevent_fd *fde,
		       uint16_t flags, void *private_data)
{
	struct eng *e = private_data;
	int fd = accept4(e->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	struct eng_client *c;

	if (fd == -1) {
		return;
	}
	c = talloc_zero(e, struct eng_client);
	if (c == NULL) {
		close(fd);
		return;
	}
	c->e = e;
	c->fd = fd;
	c->pass_fd = -1;
	talloc_set_destructor(c, eng_client_destructor);
	c->fde = tevent_add_fd(ev, c, fd, TEVENT_FD_READ, eng_client_io, c);
	if (c->fde == NULL) {
		talloc_free(c);
		return;
	}
	BFS_LIST_ADD(e->clients, c);
}

/* smb.conf changed: end (once idle) so that the next start reads it. */
static bool eng_conf_changed(struct eng *e)
{
	struct stat sb;

	if (stat(e->conf_path, &sb) != 0) {
		return false;
	}
	return sb.st_mtim.tv_sec != e->conf_mtime.tv_sec ||
	       sb.st_mtim.tv_nsec != e->conf_mtime.tv_nsec;
}

static void eng_results(struct tevent_context *ev, struct tevent_fd *fde,
			uint16_t flags, void *private_data)
{
	struct eng *e = private_data;
	struct eng_result *res, *next;
	struct eng_waiter *wt, *wnext;
	struct s3_credentials *creds;
	char drain[256];
	bool idle;

	if (read(e->done_pipe[0], drain, sizeof(drain)) <= 0) {
		return;
	}
	pthread_mutex_lock(&e->mu);
	res = e->results;
	e->results = NULL;
	idle = eng_idle(e);
	creds = e->fresh_creds;
	e->fresh_creds = NULL;
	pthread_mutex_unlock(&e->mu);
	if (creds != NULL) {
		if (s3_client_set_credentials(e->s3, creds) != 0) {
			eng_log(BFS_LOG_ERR, "cannot use the refreshed "
				"credentials for fetches");
		}
		talloc_free(creds);
	}
	for (; res != NULL; res = next) {
		bool changed = res->err == 0 &&
			       (res->etag != NULL || res->deleted);

		next = res->next;
		if (changed && e->clients != NULL) {
			/*
			 * In S3 now (or gone from it): one smbd tells a
			 * cluster's other nodes through Samba's CTDB
			 * connection, with its node's number (its own node's
			 * smbds then leave it be).
			 */
			struct bfs_proto_msg m = {
				.type = BFS_PM_CHANGED, .key = res->key,
			};
			eng_send(e->clients, &m);
		} else if (changed && e->ctdb_socket != NULL) {
			eng_tell_nodes(e, res->key);
		}
		for (wt = e->waiters; wt != NULL; wt = wnext) {
			int err = 0;

			wnext = wt->next;
			if (strcmp(wt->key, res->key) == 0 &&
			    eng_wait_state(e, wt->key, res, &err) == 1) {
				eng_answer(wt, err, err == 0 ? res->etag : NULL);
			}
		}
		talloc_free(res);
	}
	/* Waits whose record went without a result of ours (a retarget). */
	for (wt = e->waiters; wt != NULL; wt = wnext) {
		int err = 0;

		wnext = wt->next;
		if (eng_wait_state(e, wt->key, NULL, &err) == 1) {
			eng_answer(wt, err, NULL);
		}
	}
	if (idle && e->waiters == NULL && eng_conf_changed(e)) {
		eng_log(BFS_LOG_INFO, "%s changed: ending, the next request "
			"starts the engine with the new parameters",
			e->conf_path);
		pthread_mutex_lock(&e->mu);
		eng_quit(e);
		pthread_mutex_unlock(&e->mu);
	}
}

static void eng_signal(struct tevent_context *ev, struct tevent_signal *se,
		       int signum, int count, void *siginfo,
		       void *private_data)
{
	struct eng *e = private_data;

	eng_log(BFS_LOG_INFO, "signal %d: ending once the current upload is "
		"done", signum);
	pthread_mutex_lock(&e->mu);
	eng_quit(e);
	pthread_mutex_unlock(&e->mu);
}

/* ---- start ---------------------------------------------------------------------- */

/*
 * The lock that makes this the one engine of the cache folder, with our
 * pid in it for the module and bucketfs-ctl.  -1 if another one holds it.
 */
static int eng_lock(struct eng *e)
{
	char *path = ctl_sub(&e->c, BFS_ENGINE_LOCK);
	char pid[32];
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	ssize_t w;
	int len;

	if (fd == -1) {
		ctl_die("cannot open %s: %s", path, strerror(errno));
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		close(fd);
		return -1;
	}
	len = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
	if (ftruncate(fd, 0) != 0 ||
	    (w = pwrite(fd, pid, (size_t)len, 0)) == -1) {
		ctl_die("cannot write %s: %s", path, strerror(errno));
	}
	if (w != len) {
		/* A short write sets no errno: the disk is full. */
		ctl_die("cannot write %s: %s", path, strerror(ENOSPC));
	}
	return fd;
}

static int eng_listen(struct eng *e)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char *path = ctl_sub(&e->c, BFS_ENGINE_SOCKET);
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		ctl_die("socket path %s is too long for a unix socket", path);
	}
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		ctl_die("socket: %s", strerror(errno));
	}
	/* We hold the lock: a socket file left there is a dead engine's. */
	unlink(path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    chmod(path, 0600) != 0 || listen(fd, 128) != 0) {
		ctl_die("cannot listen on %s: %s", path, strerror(errno));
	}
	return fd;
}

/* Into the background; the parent exits once ready_fd says so. */
static int eng_daemonize(const char *log_path)
{
	int ready[2], fd;
	pid_t pid;
	char ok = 0;

	if (pipe2(ready, O_CLOEXEC) != 0) {
		ctl_die("pipe: %s", strerror(errno));
	}
	pid = fork();
	if (pid == -1) {
		ctl_die("fork: %s", strerror(errno));
	}
	if (pid > 0) {
		/* Exit status for the starter: 0 ready (or another runs). */
		close(ready[1]);
		if (read(ready[0], &ok, 1) != 1) {
			_exit(1); /* it died: its log says why */
		}
		_exit(0);
	}
	close(ready[0]);
	setsid();
	if (fork() > 0) {
		_exit(0); /* the grandchild holds ready[1] */
	}
	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd != -1) {
		dup2(fd, STDIN_FILENO);
		dup2(fd, STDOUT_FILENO);
		close(fd);
	}
	fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC |
				    O_NOFOLLOW, 0600);
	if (fd != -1) {
		dup2(fd, STDERR_FILENO);
		close(fd);
	}
	if (chdir("/") != 0) {
	}
	umask(077);
	return ready[1];
}

/* The fetches' counters (client, reader, cache) into the folder's totals. */
static void eng_count(struct eng *e)
{
	struct bfs_stats_vec cur = {{0}};
	int ret;

	bfs_stats_count_client(&cur, e->s3);
	bfs_stats_count_reader(&cur, e->reader);
	bfs_stats_count_cache(&cur, e->cache);
	ret = bfs_stats_add_since(e->stats, &e->flushed, &cur);
	if (ret != 0) {
		eng_log(BFS_LOG_WARNING, "cannot add the fetches' counters to "
			"the folder's: %s", strerror(ret));
	}
}

static void eng_count_timer(struct tevent_context *ev,
			    struct tevent_timer *te, struct timeval now,
			    void *private_data)
{
	struct eng *e = private_data;

	eng_count(e);
	if (tevent_add_timer(ev, e, tevent_timeval_current_ofs(
					    e->stats_interval, 0),
			     eng_count_timer, e) == NULL) {
		eng_log(BFS_LOG_ERR, "cannot schedule the counters: they are "
			"added when the engine ends");
	}
}

/*
 * A fetched object's user metadata (bfs_meta.h): the times and attributes
 * another S3 tool (or another gateway) stored with it, which listings do
 * not carry.  Kept in the index for the version fetched, where a client
 * of this gateway set none.
 */
static void eng_object_meta(void *priv, const char *key, const char *etag,
			    const struct s3_kv *kv, size_t n)
{
	struct eng *e = priv;
	struct bfs_meta m = {0};
	int ret;

	for (size_t i = 0; i < n; i++) {
		(void)bfs_meta_parse_header(&m, kv[i].name, kv[i].value);
	}
	if (m.have == 0) {
		return;
	}
	ret = bfs_index_object_meta(e->idx, key, etag, &m);
	if (ret != 0 && ret != ENOENT) {
		eng_log(BFS_LOG_WARNING, "cannot keep the times of %s from its "
			"metadata: %s", key, strerror(ret));
	}
}

static void eng_usage(FILE *f)
{
	fprintf(f, "usage: bucketfsd [-s SMB_CONF] [-F] SHARE\n"
		   "  the S3 engine of SHARE's cache folder (started by smbd "
		   "when needed)\n"
		   "  -F  stay in the foreground, log to stderr (systemd)\n"
		   "SMB_CONF defaults to " CTL_DEFAULT_CONF ".\n");
}

int main(int argc, char **argv)
{
	struct eng *e;
	struct eng_worker *w;
	const char *why = NULL;
	bool foreground = false;
	unsigned u;
	struct stat sb;
	int i, lock_fd, listen_fd, ready_fd = -1, ret;
	const char *clustering;
	bool clustered = false;

	ctl_mem = talloc_new(NULL);
	atexit(ctl_close_all);
	e = talloc_zero(ctl_mem, struct eng);
	e->c.mem = e;
	e->conf_path = CTL_DEFAULT_CONF;
	for (i = 1; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "-s") == 0 && i + 1 < argc) {
			e->conf_path = argv[++i];
		} else if (strcmp(argv[i], "-F") == 0) {
			foreground = true;
		} else if (strcmp(argv[i], "--help") == 0 ||
			   strcmp(argv[i], "-h") == 0) {
			eng_usage(stdout);
			return 0;
		} else {
			eng_usage(stderr);
			return 2;
		}
	}
	if (i + 1 != argc) {
		eng_usage(stderr);
		return 2;
	}
	e->c.share = argv[i];
	if (geteuid() == 0 && (setresgid(0, 0, 0) != 0 ||
			       setresuid(0, 0, 0) != 0)) {
		ctl_die("cannot become root: %s", strerror(errno));
	}
	if (stat(e->conf_path, &sb) == 0) {
		e->conf_mtime = sb.st_mtim;
	}
	ctl_load(&e->c, e->conf_path);
	if (bfs_mkdirs(e->c.cache_dir) != 0) {
		ctl_die("cannot create the cache folder %s: %s",
			e->c.cache_dir, strerror(errno));
	}
	if (!foreground) {
		ready_fd = eng_daemonize(ctl_sub(&e->c, BFS_ENGINE_LOG));
	}
	lock_fd = eng_lock(e);
	if (lock_fd == -1) {
		/* Another engine serves the folder: what the starter wanted. */
		if (ready_fd != -1 && write(ready_fd, "", 1) != 1) {
		}
		return 0;
	}
	eng_global = e;
	bfs_log_set(eng_lib_log);
	clustering = ctl_global(&e->c, "clustering");
	if (clustering != NULL && bfs_parse_bool(clustering, &clustered) &&
	    clustered) {
		const char *sock = ctl_global(&e->c, "ctdbd socket");

		e->ctdb_socket = sock != NULL && sock[0] != '\0' ?
			sock : BFS_CTDB_SOCKET_DEFAULT;
	}
	e->upload.multipart_threshold = ctl_size(&e->c, "multipart threshold");
	e->upload.part_size = ctl_size(&e->c, "part size");
	e->upload.copy_threshold = ctl_size(&e->c, "multipart copy threshold");
	e->upload.parallel = (unsigned)ctl_int(&e->c, "upload parallel");
	/* Uploads run on the upload threads alone: their bound is the host's. */
	bfs_upload_set_memory(ctl_size(&e->c, "upload memory"));
	e->delay_ms = (unsigned)ctl_int(&e->c, "upload delay");
	e->retry_s = (unsigned)ctl_int(&e->c, "upload retry");
	/* As smbd's: longer than a listing of many slow pages. */
	e->list_claim_age = (unsigned)ctl_int(&e->c, "request timeout") * 4 + 10;
	e->idx = ctl_index(&e->c);
	e->j = ctl_journal(&e->c);
	e->ev = tevent_context_init(e);
	if (e->ev == NULL || pipe2(e->done_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
		ctl_die("out of memory");
	}
	/*
	 * A FETCH is answered when its blocks are lent from the arena or on
	 * disk (eng_arena_setup); the cache's fill thread writes them, so
	 * this loop goes on reading the network meanwhile.
	 */
	e->cache = ctl_cache(&e->c);
	e->stats = ctl_stats_db(&e->c);
	e->stats_interval = (unsigned)ctl_int(&e->c, "metrics interval");
	/*
	 * The one client made as the module makes its own (credentials,
	 * the bucket's region looked up once); the upload threads' are its
	 * copies.
	 */
	e->s3 = ctl_s3(&e->c, e->ev, &e->creds_expire);
	e->reader = bfs_reader_new(e, e->ev, e->s3, e->cache, e->c.block_size,
				   false);
	if (e->reader == NULL) {
		ctl_die("out of memory");
	}
	/* One budget for the host's fetches: every smbd's misses are ours. */
	e->fetch_memory = ctl_size(&e->c, "fetch memory");
	bfs_reader_set_memory(e->reader, e->fetch_memory);
	/*
	 * A claim (an smbd's own fetches for one sequential reader) takes
	 * half of the budget, up to 256 MiB (its readahead and the fetched
	 * bytes it keeps for the reader: 64 MiB in a claim slowed cold reads
	 * by reading back from disk what was dropped); claims hold at most
	 * half of the budget.  Below 64 MiB a claim could not keep S3 busy:
	 * none.
	 */
	e->claim_bytes = e->fetch_memory == 0 ? 256ULL << 20 :
			 MIN(e->fetch_memory / 2, 256ULL << 20);
	if (e->claim_bytes < (64ULL << 20)) {
		e->claim_bytes = 0;
	}
	bfs_reader_on_meta(e->reader, eng_object_meta, e);
	eng_arena_setup(e, ctl_size(&e->c, "fetch memory"));
	pthread_mutex_init(&e->mu, NULL);
	eng_cond_init(&e->cv);

	/* The upload threads, each with its own loop, S3 client and writeback. */
	e->n_workers = (unsigned)ctl_int(&e->c, "upload files");
	e->imds = ctl_string(&e->c, "imds endpoint");
	e->workers = talloc_zero_array(e, struct eng_worker *, e->n_workers);
	if (e->workers == NULL) {
		ctl_die("out of memory");
	}
	for (u = 0; u < e->n_workers; u++) {
		w = talloc_zero(e, struct eng_worker);
		if (w == NULL || (w->mem = talloc_new(w)) == NULL ||
		    (w->ev = tevent_context_init(w)) == NULL) {
			ctl_die("out of memory");
		}
		w->e = e;
		w->n = u;
		w->s3 = s3_client_new_like(w, w->ev, e->s3);
		if (w->s3 == NULL) {
			ctl_die("out of memory");
		}
		ret = bfs_wb_new(w, w->ev, w->s3, e->idx, e->j,
				 ctl_sub(&e->c, "staging"), &e->upload,
				 &w->wb);
		if (ret != 0) {
			ctl_die("cannot create the staging folder in %s: %s",
				e->c.cache_dir, strerror(ret));
		}
		e->workers[u] = w;
	}

	listen_fd = e->listen_fd = eng_listen(e);
	if (tevent_add_fd(e->ev, e, listen_fd, TEVENT_FD_READ, eng_accept,
			  e) == NULL ||
	    tevent_add_fd(e->ev, e, e->done_pipe[0], TEVENT_FD_READ,
			  eng_results, e) == NULL ||
	    tevent_add_signal(e->ev, e, SIGTERM, 0, eng_signal, e) == NULL ||
	    tevent_add_signal(e->ev, e, SIGINT, 0, eng_signal, e) == NULL ||
	    tevent_add_timer(e->ev, e,
			     tevent_timeval_current_ofs(e->stats_interval, 0),
			     eng_count_timer, e) == NULL) {
		ctl_die("out of memory");
	}
	signal(SIGPIPE, SIG_IGN);
	for (u = 0; u < e->n_workers; u++) {
		ret = pthread_create(&e->workers[u]->thread, NULL,
				     eng_worker_main, e->workers[u]);
		if (ret != 0) {
			ctl_die("cannot start an upload thread: %s",
				strerror(ret));
		}
	}
	eng_log(BFS_LOG_INFO, "engine of share [%s], cache folder %s, bucket "
		"%s: ready", e->c.share, e->c.cache_dir, e->c.bucket);
	if (ready_fd != -1) {
		if (write(ready_fd, "", 1) != 1) {
		}
		close(ready_fd);
	}
	eng_kick(e, false); /* what a dead engine left */

	for (;;) {
		bool quit;

		pthread_mutex_lock(&e->mu);
		quit = e->quit;
		pthread_mutex_unlock(&e->mu);
		if (quit) {
			break;
		}
		if (tevent_loop_once(e->ev) != 0) {
			break;
		}
	}
	for (u = 0; u < e->n_workers; u++) {
		pthread_join(e->workers[u]->thread, NULL);
	}
	eng_count(e);
	/* New clients find no socket and start the next engine. */
	unlink(ctl_sub(&e->c, BFS_ENGINE_SOCKET));
	close(lock_fd);
	eng_log(BFS_LOG_INFO, "ended");
	(void)why;
	return 0;
}
