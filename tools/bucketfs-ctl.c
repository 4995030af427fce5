/*
 * bucketfs-ctl: operate a bucketfs share's cache while smbd runs.
 *
 *   bucketfs-ctl [-s SMB_CONF] SHARE VERB [ARGS]
 *
 * The share's bucketfs parameters are read from smb.conf with Samba's
 * libsmbconf (text backend; a parameter of the share, else of [global]),
 * and the cache folder is opened with the same lib/ code smbd uses: LMDB
 * lets this process and every smbd child work on it at once.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <talloc.h>
#include <tevent.h>

#include "ctl_share.h"
#include "bfs_cache.h"
#include "bfs_engine.h"
#include "bfs_index.h"
#include "bfs_journal.h"
#include "bfs_params.h"
#include "bfs_reader.h"
#include "bfs_stats.h"
#include "s3_creds.h"
#include "s3_imds.h"
#include "s3_ops.h"


static void ctl_size_str(uint64_t v, char out[32])
{
	static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	double d = (double)v;
	int u = 0;

	while (d >= 1024 && u < 4) {
		d /= 1024;
		u++;
	}
	snprintf(out, 32, u == 0 ? "%.0f %s" : "%.1f %s", d, unit[u]);
}

/* ---- stats ----------------------------------------------------------------------- */

static int ctl_stats(struct ctl *c, int argc, char **argv)
{
	bool json = argc > 0 && strcmp(argv[0], "--json") == 0;
	struct bfs_index *idx = ctl_index(c);
	struct bfs_cache *cache = ctl_cache(c);
	struct bfs_journal *j = ctl_journal(c);
	uint64_t entries = 0, dirs = 0, used = 0, blocks = 0;
	uint64_t puts = 0, copies = 0, deletes = 0, failed = 0;
	uint64_t hits, misses;
	struct bfs_stats_vec t;
	struct bfs_jrec *recs = NULL;
	size_t n = 0, i;
	double ratio;
	char a[32], b[32], in[32], out[32];

	if (bfs_stats_read(ctl_stats_db(c), &t) != 0 ||
	    bfs_index_count(idx, &entries, &dirs) != 0 ||
	    bfs_cache_usage(cache, &used, &blocks) != 0 ||
	    bfs_journal_list(j, c->mem, &recs, &n, NULL) != 0) {
		ctl_die("cannot read the cache folder %s", c->cache_dir);
	}
	for (i = 0; i < n; i++) {
		puts += recs[i].op == BFS_J_PUT;
		copies += recs[i].op == BFS_J_COPY;
		deletes += recs[i].op == BFS_J_DELETE;
		failed += recs[i].last_error != 0;
	}
	/* Blocks read from the cache against blocks that had to be fetched. */
	hits = t.v[BFS_ST_BLOCKS_CACHED];
	misses = (t.v[BFS_ST_BYTES_FETCHED] + c->block_size - 1) / c->block_size;
	ratio = hits + misses > 0 ? (double)hits / (double)(hits + misses) : 0;
	if (json) {
		printf("{\"share\": \"%s\", \"bucket\": \"%s\", \"prefix\": \"%s\", "
		       "\"objects_indexed\": %" PRIu64 ", "
		       "\"directories_listed\": %" PRIu64 ", "
		       "\"cache_bytes_used\": %" PRIu64 ", "
		       "\"cache_bytes_limit\": %" PRIu64 ", "
		       "\"cache_blocks\": %" PRIu64 ", "
		       "\"hit_ratio\": %.4f, "
		       "\"s3_requests\": %" PRIu64 ", "
		       "\"s3_retries\": %" PRIu64 ", "
		       "\"s3_failures\": %" PRIu64 ", "
		       "\"s3_bytes_received\": %" PRIu64 ", "
		       "\"s3_bytes_sent\": %" PRIu64 ", "
		       "\"pending_uploads\": %" PRIu64 ", "
		       "\"pending_renames\": %" PRIu64 ", "
		       "\"pending_deletes\": %" PRIu64 ", "
		       "\"failed\": %" PRIu64 "}\n",
		       c->share, c->bucket, c->prefix, entries, dirs, used,
		       c->cache_size, blocks, ratio, t.v[BFS_ST_S3_REQUESTS],
		       t.v[BFS_ST_S3_RETRIES], t.v[BFS_ST_S3_FAILURES],
		       t.v[BFS_ST_S3_BYTES_IN], t.v[BFS_ST_S3_BYTES_OUT], puts,
		       copies, deletes, failed);
		return 0;
	}
	ctl_size_str(used, a);
	ctl_size_str(c->cache_size, b);
	ctl_size_str(t.v[BFS_ST_S3_BYTES_IN], in);
	ctl_size_str(t.v[BFS_ST_S3_BYTES_OUT], out);
	printf("share              %s (s3://%s/%s)\n", c->share, c->bucket,
	       c->prefix);
	printf("cache folder       %s\n", c->cache_dir);
	printf("objects indexed    %" PRIu64 " (%" PRIu64
	       " directory listings)\n", entries, dirs);
	printf("cache              %s of %s (%.1f%%), %" PRIu64 " blocks\n", a,
	       b, c->cache_size ? 100.0 * (double)used / (double)c->cache_size : 0,
	       blocks);
	printf("hit ratio          %.1f%% of the blocks read came from the "
	       "cache\n", 100 * ratio);
	printf("S3                 %" PRIu64 " requests (%" PRIu64 " retried, %"
	       PRIu64 " failed), %s received, %s sent\n",
	       t.v[BFS_ST_S3_REQUESTS], t.v[BFS_ST_S3_RETRIES],
	       t.v[BFS_ST_S3_FAILURES], in, out);
	printf("pending            %" PRIu64 " uploads, %" PRIu64
	       " renames, %" PRIu64 " deletes (%" PRIu64 " failed)\n",
	       puts, copies, deletes, failed);
	return 0;
}

/* ---- pending ----------------------------------------------------------------------- */

static int ctl_pending(struct ctl *c, int argc, char **argv)
{
	struct bfs_journal *j = ctl_journal(c);
	struct bfs_jrec *recs = NULL;
	size_t n = 0, i;

	(void)argc, (void)argv;
	if (bfs_journal_list(j, c->mem, &recs, &n, NULL) != 0) {
		ctl_die("cannot read the journal in %s", c->cache_dir);
	}
	for (i = 0; i < n; i++) {
		const struct bfs_jrec *r = &recs[i];
		char sz[32];

		ctl_size_str(r->size, sz);
		printf("%-6s s3://%s/%s", r->op == BFS_J_PUT ? "upload" :
		       r->op == BFS_J_COPY ? "rename" :
		       r->op == BFS_J_ABORT ? "abort" : "delete", c->bucket,
		       r->op == BFS_J_ABORT ? r->src : r->key);
		if (r->op == BFS_J_PUT) {
			printf(" (%s, staging/%s)", sz, r->staging);
		} else if (r->op == BFS_J_COPY) {
			printf(" (from %s)", r->src);
		} else if (r->op == BFS_J_ABORT) {
			printf(" (parts of a file still open for writing)");
		}
		printf(" pid %d: %s%s\n", (int)r->pid,
		       r->last_error ? "failed: " : "in progress",
		       r->last_error ? strerror(r->last_error) : "");
	}
	if (n == 0 && isatty(STDOUT_FILENO)) {
		printf("nothing pending: every change is in S3\n");
	}
	return 0;
}

/* ---- engine ------------------------------------------------------------------------- */

/* The cache folder's engine (bucketfsd): whether it runs, what it did. */
static int ctl_engine(struct ctl *c, int argc, char **argv)
{
	struct tevent_context *ev = tevent_context_init(c->mem);
	struct bfs_engine_start start = {.argv = NULL, .timeout_ms = 2000};
	struct bfs_engine_state st;
	struct bfs_engine *e = NULL;
	char sz[32];
	int ret;

	(void)argc, (void)argv;
	if (ev == NULL) {
		ctl_die("out of memory");
	}
	ret = bfs_engine_connect(c->mem, ev, c->cache_dir, c->share, &start, &e);
	if (ret == ENOENT) {
		printf("no engine runs for %s (smbd starts one for a share "
		       "with 'bucketfs:close = local')\n", c->cache_dir);
		return 0;
	}
	if (ret == 0) {
		ret = bfs_engine_status(e, 2000, &st);
	}
	if (ret != 0) {
		ctl_die("the engine of %s does not answer: %s", c->cache_dir,
			strerror(ret));
	}
	ctl_size_str(st.bytes, sz);
	printf("engine pid %d: %" PRIu64 " uploads waiting, %" PRIu64
	       " done (%s), %" PRIu64 " failed since it started\n",
	       (int)st.pid, st.pending, st.uploaded, sz, st.failed);
	ctl_size_str(st.fetched, sz);
	printf("read misses: %" PRIu64 " S3 GETs, %s fetched for every smbd",
	       st.fetches, sz);
	ctl_size_str(st.lent, sz);
	printf(", %s copied by smbds from its memory\n", sz);
	return 0;
}

/* ---- invalidate ------------------------------------------------------------------ */

struct ctl_forget {
	struct ctl *c;
	struct bfs_cache_id *ids;
	size_t n;
};

/* The cache identity of each file entry the index drops. */
static void ctl_forget_entry(void *priv, const char *key,
			     const struct bfs_entry *e)
{
	struct ctl_forget *f = priv;

	f->ids = talloc_realloc(f->c->mem, f->ids, struct bfs_cache_id,
				f->n + 1);
	if (f->ids == NULL) {
		ctl_die("out of memory");
	}
	bfs_cache_make_id(f->c->bucket, key, e->etag ? e->etag : "",
			  f->c->block_size, &f->ids[f->n++]);
}

static int ctl_invalidate(struct ctl *c, int argc, char **argv)
{
	struct ctl_forget f = {.c = c};
	struct bfs_index *idx;
	struct bfs_cache *cache;
	uint64_t n = 0, blocks = 0;
	char *prefix;
	int ret;

	if (argc != 1) {
		ctl_die("invalidate takes one PREFIX (\"\" for the whole share)");
	}
	idx = ctl_index(c);
	cache = ctl_cache(c);
	prefix = talloc_asprintf(c->mem, "%s%s", c->prefix,
				 argv[0] + strspn(argv[0], "/"));
	ret = bfs_index_invalidate_tree(idx, prefix, &n, ctl_forget_entry, &f);
	if (ret == 0) {
		ret = bfs_cache_forget(cache, f.ids, f.n, &blocks);
	}
	if (ret != 0) {
		ctl_die("cannot invalidate %s: %s", prefix, strerror(ret));
	}
	printf("invalidated s3://%s/%s: %" PRIu64 " index records and %" PRIu64
	       " cached blocks of %zu objects dropped; the next access asks "
	       "S3\n", c->bucket, prefix, n, blocks, f.n);
	return 0;
}

/* ---- warm ------------------------------------------------------------------------------ */

struct ctl_obj {
	char *key;
	char *etag;
	uint64_t size;
	time_t mtime;
};

struct ctl_warm {
	struct ctl *c;
	struct tevent_context *ev;
	struct bfs_reader *reader;
	struct ctl_obj *objs;
	size_t n, next;
	uint64_t next_off, done_bytes, total_bytes;
	size_t done_objs;
	unsigned in_flight, max_in_flight;
	int err;
	bool tty;
};

#define CTL_WARM_CHUNK (8u << 20)

/* Every object under prefix, from ListObjectsV2 (all pages). */
static void ctl_list(struct ctl *c, struct tevent_context *ev,
		     struct s3_client *s3, const char *prefix,
		     struct ctl_obj **objs, size_t *n)
{
	const char *token = NULL;
	struct s3_status st = {0};
	size_t got = 0, i;

	*objs = talloc_array(c->mem, struct ctl_obj, 0);
	do {
		struct s3_listing *l = NULL;
		struct tevent_req *req = s3_list_send(c->mem, ev, s3, prefix,
						      NULL, token, 1000);
		int ret = s3_wait_for(req, ev);

		if (ret != 0) {
			ctl_die("listing s3://%s/%s failed: %s", c->bucket,
				prefix, strerror(ret));
		}
		ret = s3_list_recv(req, c->mem, &l, &st);
		if (ret != 0) {
			ctl_die("listing s3://%s/%s failed: %s (HTTP %ld, %s)",
				c->bucket, prefix, strerror(ret), st.http_status,
				st.code[0] ? st.code : "no S3 code");
		}
		for (i = 0; i < l->n_objects; i++) {
			if (l->objects[i].key[strlen(l->objects[i].key) - 1] == '/') {
				continue; /* directory markers hold no data */
			}
			*objs = talloc_realloc(c->mem, *objs, struct ctl_obj,
					       got + 1);
			(*objs)[got++] = (struct ctl_obj){
				.key = l->objects[i].key,
				.etag = l->objects[i].etag,
				.size = l->objects[i].size,
				.mtime = l->objects[i].mtime,
			};
		}
		token = l->truncated ? l->next_token : NULL;
	} while (token != NULL);
	*n = got;
}

/* The objects a manifest names (paths relative to the share root). */
static void ctl_manifest(struct ctl *c, struct tevent_context *ev,
			 struct s3_client *s3, const char *path,
			 struct ctl_obj **objs, size_t *n)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
	char line[4096];
	size_t got = 0;

	if (f == NULL) {
		ctl_die("cannot open manifest %s: %s", path, strerror(errno));
	}
	*objs = talloc_array(c->mem, struct ctl_obj, 0);
	while (fgets(line, sizeof(line), f) != NULL) {
		struct s3_object_info info = {0};
		struct s3_status st = {0};
		struct tevent_req *req;
		char *key;
		int ret;

		line[strcspn(line, "\r\n")] = '\0';
		if (line[0] == '\0' || line[0] == '#') {
			continue;
		}
		key = talloc_asprintf(c->mem, "%s%s", c->prefix,
				      line + strspn(line, "/"));
		req = s3_head_object_send(c->mem, ev, s3, key);
		ret = s3_wait_for(req, ev);
		if (ret != 0) {
			ctl_die("manifest %s: %s: %s", path, line,
				strerror(ret));
		}
		ret = s3_head_object_recv(req, c->mem, &info, &st);
		if (ret != 0) {
			ctl_die("manifest %s: %s: %s", path, line,
				ret == ENOENT ? "no such object" : strerror(ret));
		}
		*objs = talloc_realloc(c->mem, *objs, struct ctl_obj, got + 1);
		(*objs)[got++] = (struct ctl_obj){
			.key = key, .etag = info.etag, .size = info.size,
			.mtime = info.mtime,
		};
	}
	if (f != stdin) {
		fclose(f);
	}
	*n = got;
}

static void ctl_warm_progress(struct ctl_warm *w, bool last)
{
	enum { WIDTH = 30 };
	char a[32], b[32], bar[WIDTH + 1];
	unsigned pct, fill;

	if (!w->tty) {
		return;
	}
	pct = w->total_bytes > 0 ?
		(unsigned)(w->done_bytes * 100 / w->total_bytes) : 100;
	fill = pct * WIDTH / 100;
	memset(bar, '#', fill);
	memset(bar + fill, '.', WIDTH - fill);
	bar[WIDTH] = '\0';
	ctl_size_str(w->done_bytes, a);
	ctl_size_str(w->total_bytes, b);
	printf("\r[%s] %3u%%  %zu/%zu objects, %s of %s   %s", bar, pct,
	       w->done_objs, w->n, a, b, last ? "\n" : "");
	fflush(stdout);
}

/* One chunk read: owns the object description, buffer and request. */
struct ctl_chunk {
	struct ctl_warm *w;
	struct bfs_object obj;
};

static void ctl_warm_more(struct ctl_warm *w);

static void ctl_warm_done(struct tevent_req *req)
{
	struct ctl_chunk *ch = tevent_req_callback_data(req, struct ctl_chunk);
	struct ctl_warm *w = ch->w;
	struct s3_status st = {0};
	size_t got = 0;
	int ret = bfs_read_recv(req, &got, &st);

	talloc_free(ch);
	w->in_flight--;
	if (ret != 0 && w->err == 0) {
		w->err = ret;
		fprintf(stderr, "%sbucketfs-ctl: fetching failed: %s (HTTP %ld, "
			"%s)\n", w->tty ? "\n" : "", strerror(ret),
			st.http_status, st.code[0] ? st.code : "no S3 code");
	}
	w->done_bytes += got;
	ctl_warm_progress(w, false);
	ctl_warm_more(w);
}

/* Keep max_in_flight chunk reads going; each object in turn. */
static void ctl_warm_more(struct ctl_warm *w)
{
	while (w->err == 0 && w->in_flight < w->max_in_flight &&
	       w->next < w->n) {
		struct ctl_obj *o = &w->objs[w->next];
		struct ctl_chunk *ch;
		uint64_t off = w->next_off;
		size_t len = o->size - off < CTL_WARM_CHUNK ?
				     (size_t)(o->size - off) : CTL_WARM_CHUNK;
		struct tevent_req *req;
		void *buf;

		if (o->size == 0 || o->etag == NULL) {
			/* Nothing to fetch, or no version to cache it as. */
			w->next++;
			w->done_objs++;
			continue;
		}
		ch = talloc_zero(w->c->mem, struct ctl_chunk);
		if (ch == NULL) {
			ctl_die("out of memory");
		}
		ch->w = w;
		ch->obj = (struct bfs_object){
			.key = o->key, .etag = o->etag, .size = o->size,
		};
		bfs_cache_make_id(w->c->bucket, o->key, o->etag,
				  w->c->block_size, &ch->obj.id);
		buf = talloc_size(ch, len);
		req = buf ? bfs_read_send(ch, w->ev, w->reader, &ch->obj, off,
					  len, buf) : NULL;
		if (req == NULL) {
			ctl_die("out of memory");
		}
		tevent_req_set_callback(req, ctl_warm_done, ch);
		w->in_flight++;
		w->next_off += len;
		if (w->next_off >= o->size) {
			w->next++;
			w->next_off = 0;
			w->done_objs++;
		}
	}
}

/*
 * What warm fetches goes into the index too, so that its blocks are
 * versions the index names (what fsck keeps).
 */
static void ctl_warm_index(struct ctl *c, const struct ctl_obj *objs,
			   size_t n)
{
	const char **keys = talloc_array(c->mem, const char *, n + 1);
	struct bfs_entry *ents = talloc_zero_array(c->mem, struct bfs_entry,
						   n + 1);
	size_t i;
	int ret;

	if (keys == NULL || ents == NULL) {
		ctl_die("out of memory");
	}
	for (i = 0; i < n; i++) {
		keys[i] = objs[i].key;
		ents[i] = (struct bfs_entry){
			.size = objs[i].size, .mtime = objs[i].mtime,
			.etag = objs[i].etag,
		};
	}
	ret = bfs_index_learn(ctl_index(c), keys, ents, n);
	if (ret != 0) {
		ctl_die("cannot record the objects in the index in %s: %s",
			c->cache_dir, strerror(ret));
	}
}

static int ctl_warm(struct ctl *c, int argc, char **argv)
{
	struct tevent_context *ev = tevent_context_init(c->mem);
	struct s3_client *s3 = ctl_s3(c, ev, NULL);
	struct bfs_cache *cache = ctl_cache(c);
	struct ctl_warm w = {.c = c, .ev = ev, .tty = isatty(STDOUT_FILENO)};
	uint64_t budget = 0, used = 0, blocks = 0;
	struct timespec t0, t1;
	char a[32], b[32];
	double secs;
	size_t i;

	if (argc == 2 && strcmp(argv[0], "--manifest") == 0) {
		ctl_manifest(c, ev, s3, argv[1], &w.objs, &w.n);
	} else if (argc == 1 && argv[0][0] != '-') {
		ctl_list(c, ev, s3,
			 talloc_asprintf(c->mem, "%s%s", c->prefix,
					 argv[0] + strspn(argv[0], "/")),
			 &w.objs, &w.n);
	} else {
		ctl_die("warm takes PREFIX or --manifest FILE");
	}
	for (i = 0; i < w.n; i++) {
		w.total_bytes += w.objs[i].size;
	}
	/* What fits: the cache evicts beyond its limit, so warm no more. */
	for (i = 0; i < w.n && budget + w.objs[i].size <= c->cache_size; i++) {
		budget += w.objs[i].size;
	}
	if (i < w.n) {
		ctl_size_str(w.total_bytes, a);
		ctl_size_str(c->cache_size, b);
		printf("the dataset (%s in %zu objects) does not fit in the cache "
		       "(%s): warming the first %zu objects\n", a, w.n, b, i);
		w.n = i;
		w.total_bytes = budget;
	}
	ctl_warm_index(c, w.objs, w.n);
	w.reader = bfs_reader_new(c->mem, ev, s3, cache, c->block_size, false);
	w.max_in_flight = (unsigned)ctl_int(c, "max requests");
	if (w.reader == NULL || w.max_in_flight == 0) {
		ctl_die("cannot set up the reader");
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ctl_warm_more(&w);
	while (w.in_flight > 0) {
		if (tevent_loop_once(ev) != 0) {
			ctl_die("event loop failed");
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ctl_warm_progress(&w, true);
	if (w.err != 0) {
		return 1;
	}
	bfs_cache_flush(cache);
	bfs_cache_usage(cache, &used, &blocks);
	secs = (double)(t1.tv_sec - t0.tv_sec) +
	       (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	ctl_size_str(w.done_bytes, a);
	ctl_size_str(used, b);
	printf("warmed %zu objects, %s in %.1f s (%.0f MB/s); %" PRIu64
	       " blocks fetched from S3; the cache holds %s\n",
	       w.done_objs, a, secs,
	       secs > 0 ? (double)w.done_bytes / 1e6 / secs : 0,
	       bfs_reader_counters(w.reader)->block_fetches, b);
	return 0;
}

/* ---- fsck -------------------------------------------------------------------------------- */

/* The versions the index names: what the cache may hold. */
struct ctl_refs {
	struct ctl *c;
	struct bfs_cache_ref *refs;
	size_t n;
};

static void ctl_ref_entry(void *priv, const char *key,
			  const struct bfs_entry *e)
{
	struct ctl_refs *f = priv;

	if (e->etag == NULL) {
		return; /* being written: its bytes are in staging */
	}
	f->refs = talloc_realloc(f->c->mem, f->refs, struct bfs_cache_ref,
				 f->n + 1);
	if (f->refs == NULL) {
		ctl_die("out of memory");
	}
	bfs_cache_make_id(f->c->bucket, key, e->etag, f->c->block_size,
			  &f->refs[f->n].id);
	f->refs[f->n++].size = e->size;
}

static uint64_t ctl_fsck_index(struct ctl *c, bool repair,
			       struct ctl_refs *refs)
{
	const char *fix = repair ? "repaired" : "would repair";
	struct bfs_index_fsck r;
	int ret = bfs_index_check(ctl_index(c), repair, ctl_ref_entry, refs,
				  &r);

	if (ret != 0) {
		ctl_die("cannot check the index in %s: %s", c->cache_dir,
			strerror(ret));
	}
	printf("index: %" PRIu64 " entries checked\n", r.entries);
	if (r.bad_entries > 0) {
		printf("  %" PRIu64 " unreadable entries: %s (their directories "
		       "are listed again)\n", r.bad_entries,
		       repair ? "dropped" : "would drop");
	}
	if (r.ino_missing + r.ino_shared + r.ino_orphans > 0) {
		printf("  inode numbers: %" PRIu64 " missing from the map, %" PRIu64
		       " shared by two names, %" PRIu64 " owned by nothing: %s\n",
		       r.ino_missing, r.ino_shared, r.ino_orphans, fix);
	}
	return r.bad_entries + r.ino_missing + r.ino_shared + r.ino_orphans;
}

static uint64_t ctl_fsck_cache(struct ctl *c, bool repair,
			       const struct ctl_refs *refs)
{
	struct bfs_cache_fsck r;
	char a[32], b[32];
	int ret = bfs_cache_check(ctl_cache(c), repair, refs->refs, refs->n,
				  &r);

	if (ret != 0) {
		ctl_die("cannot check the cache in %s: %s", c->cache_dir,
			strerror(ret));
	}
	ctl_size_str(r.used_before, a);
	ctl_size_str(r.used_after, b);
	printf("cache: %" PRIu64 " block records checked\n", r.blocks);
	if (r.unindexed_versions > 0) {
		printf("  %" PRIu64 " object versions (%" PRIu64 " blocks) the "
		       "index does not name (replaced or deleted in S3): %s\n",
		       r.unindexed_versions, r.unindexed_blocks,
		       repair ? "dropped" : "would drop");
	}
	if (r.beyond_size > 0) {
		printf("  %" PRIu64 " blocks past the end of their object: %s\n",
		       r.beyond_size, repair ? "dropped" : "would drop");
	}
	if (r.bad_blocks > 0) {
		printf("  %" PRIu64 " records whose bytes are not in their file: "
		       "%s (fetched again when read)\n", r.bad_blocks,
		       repair ? "dropped" : "would drop");
	}
	if (r.lru_missing + r.lru_orphans > 0) {
		printf("  eviction order: %" PRIu64 " entries missing, %" PRIu64
		       " without a record: %s\n", r.lru_missing, r.lru_orphans,
		       repair ? "repaired" : "would repair");
	}
	if (r.used_before != r.used_after) {
		printf("  bytes counted for the limit: %s, actually %s: %s\n", a,
		       b, repair ? "corrected" : "would correct");
	}
	if (r.orphan_files > 0) {
		printf("  %" PRIu64 " cache files without records: %s\n",
		       r.orphan_files, repair ? "removed" : "would remove");
	}
	return r.unindexed_blocks + r.beyond_size + r.bad_blocks +
	       r.lru_missing + r.lru_orphans + r.orphan_files +
	       (r.used_before != r.used_after);
}

static uint64_t ctl_fsck_journal(struct ctl *c)
{
	struct bfs_jrec *recs = NULL;
	size_t n = 0, i, lost = 0;

	if (bfs_journal_list(ctl_journal(c), c->mem, &recs, &n, NULL) != 0) {
		ctl_die("cannot read the journal in %s", c->cache_dir);
	}
	for (i = 0; i < n; i++) {
		char *path;

		if (recs[i].op != BFS_J_PUT) {
			continue;
		}
		path = talloc_asprintf(c->mem, "%s/staging/%s", c->cache_dir,
				       recs[i].staging);
		if (access(path, R_OK) != 0) {
			lost++;
			printf("  journal: the upload of s3://%s/%s has lost its "
			       "staging file %s\n", c->bucket, recs[i].key, path);
		}
	}
	printf("journal: %zu pending record(s)%s\n", n,
	       lost ? ", some without data (above)" : "");
	return lost;
}

static int ctl_fsck(struct ctl *c, int argc, char **argv)
{
	bool repair = !(argc > 0 && strcmp(argv[0], "--dry-run") == 0);
	struct ctl_refs refs = {.c = c};
	uint64_t problems;

	/* The index first: the cache is checked against what it names. */
	problems = ctl_fsck_index(c, repair, &refs);
	problems += ctl_fsck_cache(c, repair, &refs);
	problems += ctl_fsck_journal(c);
	if (problems == 0) {
		printf("clean\n");
	}
	return 0;
}

/* ---- main ----------------------------------------------------------------------------- */

struct ctl_verb {
	const char *name;
	int (*fn)(struct ctl *c, int argc, char **argv);
	const char *usage;
	const char *help;
};

static const struct ctl_verb ctl_verbs[] = {
	{"stats", ctl_stats, "stats [--json]",
	 "objects indexed, cache bytes used and limit, hit ratio, requests "
	 "and bytes to S3, failures, pending changes (totals of every smbd "
	 "process and the engine, each adding its own every "
	 "'bucketfs:metrics interval' seconds)"},
	{"pending", ctl_pending, "pending",
	 "uploads, renames and deletes not yet durable in S3, one per line"},
	{"engine", ctl_engine, "engine",
	 "whether the cache folder's S3 engine (bucketfsd) runs, its pid, "
	 "and the uploads it holds, did and failed"},
	{"invalidate", ctl_invalidate, "invalidate PREFIX",
	 "forget the listings, index entries and cached blocks under PREFIX "
	 "(relative to the share; \"\" for all): the next access asks S3"},
	{"fsck", ctl_fsck, "fsck [--dry-run]",
	 "check the index (entries, inode numbers), the cache against the "
	 "index (versions it no longer names, blocks past an object's end) "
	 "and against its files and eviction order, and the journal against "
	 "the staging files; repair what is wrong (--dry-run: only report); "
	 "safe while smbd runs"},
	{"warm", ctl_warm, "warm PREFIX | warm --manifest FILE",
	 "fetch every object under PREFIX (or each path listed in FILE, one "
	 "per line, - for stdin) into the cache, in parallel; stops where "
	 "the cache size would be exceeded and says so"},
};

static void ctl_usage(FILE *f)
{
	size_t i;

	fprintf(f, "usage: bucketfs-ctl [-s SMB_CONF] SHARE VERB [ARGS]\n"
		   "       bucketfs-ctl VERB --help\n"
		   "       bucketfs-ctl parameters    every bucketfs: parameter, "
		   "its kind, default, and whether a reload changes it\n\nverbs:\n");
	for (i = 0; i < sizeof(ctl_verbs) / sizeof(ctl_verbs[0]); i++) {
		fprintf(f, "  %-36s %s\n", ctl_verbs[i].usage,
			ctl_verbs[i].help);
	}
	fprintf(f, "\nSMB_CONF defaults to " CTL_DEFAULT_CONF ".\n");
}

/*
 * bucketfs-ctl parameters: every 'bucketfs:' parameter of the one table
 * (lib/bfs_params.c), its kind, default, and whether a running connection
 * follows a reload, one per line and tab-separated (as testparm lists
 * Samba's own).
 */
static int ctl_parameters(void)
{
	static const char *kinds[] = {
		[BFS_PT_STRING] = "string", [BFS_PT_BOOL] = "yes/no",
		[BFS_PT_INT] = "number", [BFS_PT_SIZE] = "size",
	};
	const struct bfs_pdef *d;

	for (d = bfs_pdefs; d->name != NULL; d++) {
		printf("bucketfs:%s\t%s\t%s\t%s\n", d->name, kinds[d->type],
		       d->def != NULL ? d->def : "(unset)",
		       d->reload ? "reload" : "new connections");
	}
	return ferror(stdout) || fflush(stdout) != 0 ? 1 : 0;
}

static const struct ctl_verb *ctl_find(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(ctl_verbs) / sizeof(ctl_verbs[0]); i++) {
		if (strcmp(ctl_verbs[i].name, name) == 0) {
			return &ctl_verbs[i];
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct ctl c = {.mem = talloc_new(NULL)};

	ctl_mem = c.mem;
	atexit(ctl_close_all);
	const char *conf = CTL_DEFAULT_CONF;
	const struct ctl_verb *v;
	int i;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			v = i > 1 ? ctl_find(argv[i - 1]) : NULL;
			if (v != NULL) {
				printf("usage: bucketfs-ctl [-s SMB_CONF] SHARE %s\n"
				       "%s\n", v->usage, v->help);
			} else {
				ctl_usage(stdout);
			}
			return 0;
		}
	}
	i = 1;
	if (argc > 2 && strcmp(argv[1], "-s") == 0) {
		conf = argv[2];
		i = 3;
	}
	if (argc - i == 1 && strcmp(argv[i], "parameters") == 0) {
		return ctl_parameters();
	}
	if (argc - i < 2) {
		ctl_usage(stderr);
		return 2;
	}
	c.share = argv[i];
	v = ctl_find(argv[i + 1]);
	if (v == NULL) {
		ctl_die("unknown verb '%s' (bucketfs-ctl --help lists them)",
			argv[i + 1]);
	}
	ctl_load(&c, conf);
	return v->fn(&c, argc - i - 2, argv + i + 2);
}
