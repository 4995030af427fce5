/*
 * Shared counters of a cache folder (see bfs_stats.h): one LMDB record,
 * an array of uint64 totals.
 */
#include "bfs_stats.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bfs_lmdb.h"

#define BFS_STATS_MAP_SIZE (1ULL << 20)

struct bfs_stats {
	MDB_env *env;
	MDB_dbi db;
};

static int bfs_stats_destructor(struct bfs_stats *st)
{
	bfs_lmdb_close(st->env);
	return 0;
}

int bfs_stats_open(TALLOC_CTX *mem_ctx, const char *dir,
		   struct bfs_stats **out, const char **why)
{
	struct bfs_stats *st = talloc_zero(mem_ctx, struct bfs_stats);
	MDB_txn *txn;
	int rc;

	if (st == NULL) {
		return ENOMEM;
	}
	rc = bfs_lmdb_open(dir, BFS_STATS_MAP_SIZE, 1, &st->env, why);
	if (rc != 0) {
		talloc_free(st);
		return rc;
	}
	talloc_set_destructor(st, bfs_stats_destructor);
	rc = mdb_txn_begin(st->env, NULL, 0, &txn);
	if (rc == 0) {
		rc = mdb_dbi_open(txn, "totals", MDB_CREATE, &st->db);
		rc = rc == 0 ? mdb_txn_commit(txn) : (mdb_txn_abort(txn), rc);
	}
	if (rc != 0) {
		*why = mdb_strerror(rc);
		talloc_free(st);
		return bfs_lmdb_errno(rc);
	}
	*out = st;
	return 0;
}

/* Totals of an older build may be shorter: missing counters are 0. */
static void bfs_stats_get(MDB_txn *txn, MDB_dbi db, struct bfs_stats_vec *t)
{
	MDB_val k = {6, (void *)"totals"}, v;

	memset(t, 0, sizeof(*t));
	if (mdb_get(txn, db, &k, &v) == 0) {
		memcpy(t, v.mv_data, v.mv_size < sizeof(*t) ? v.mv_size :
							      sizeof(*t));
	}
}

int bfs_stats_add(struct bfs_stats *st, const struct bfs_stats_vec *delta)
{
	struct bfs_stats_vec t;
	MDB_val k = {6, (void *)"totals"}, v = {sizeof(t), &t};
	MDB_txn *txn;
	int rc, i;

	rc = mdb_txn_begin(st->env, NULL, 0, &txn);
	if (rc != 0) {
		return bfs_lmdb_errno(rc);
	}
	bfs_stats_get(txn, st->db, &t);
	for (i = 0; i < BFS_ST_N; i++) {
		t.v[i] += delta->v[i];
	}
	rc = mdb_put(txn, st->db, &k, &v, 0);
	rc = rc == 0 ? mdb_txn_commit(txn) : (mdb_txn_abort(txn), rc);
	return bfs_lmdb_errno(rc);
}

void bfs_stats_count_client(struct bfs_stats_vec *v, const struct s3_client *c)
{
	const struct s3_client_counters *n;
	int i;

	if (c == NULL) {
		return;
	}
	n = s3_client_counters(c);
	v->v[BFS_ST_S3_REQUESTS] += n->requests;
	v->v[BFS_ST_S3_RETRIES] += n->retries;
	v->v[BFS_ST_S3_FAILURES] += n->failures;
	v->v[BFS_ST_S3_BYTES_IN] += n->bytes_in;
	v->v[BFS_ST_S3_BYTES_OUT] += n->bytes_out;
	v->v[BFS_ST_S3_LATENCY_US] += n->latency_us;
	for (i = 0; i <= S3_LATENCY_N; i++) {
		v->v[BFS_ST_S3_LATENCY + i] += n->latency[i];
	}
}

void bfs_stats_count_reader(struct bfs_stats_vec *v, const struct bfs_reader *r)
{
	const struct bfs_reader_counters *n;

	if (r == NULL) {
		return;
	}
	n = bfs_reader_counters(r);
	v->v[BFS_ST_BLOCKS_CACHED] += n->cache_hits;
	v->v[BFS_ST_BLOCKS_FETCHED] += n->block_fetches;
	v->v[BFS_ST_BYTES_FETCHED] += n->fetched_bytes;
}

void bfs_stats_count_cache(struct bfs_stats_vec *v, struct bfs_cache *c)
{
	const struct bfs_cache_counters *cc;

	if (c == NULL) {
		return;
	}
	cc = bfs_cache_counters(c);
	v->v[BFS_ST_EVICTIONS] += cc->evictions;
	v->v[BFS_ST_FILL_ERRORS] += cc->fill_errors;
}

int bfs_stats_add_since(struct bfs_stats *st, struct bfs_stats_vec *flushed,
			const struct bfs_stats_vec *cur)
{
	struct bfs_stats_vec delta;
	bool any = false;
	int i, ret;

	for (i = 0; i < BFS_ST_N; i++) {
		delta.v[i] = cur->v[i] - flushed->v[i];
		any = any || delta.v[i] != 0;
	}
	if (!any) {
		return 0;
	}
	ret = bfs_stats_add(st, &delta);
	if (ret == 0) {
		*flushed = *cur;
	}
	return ret;
}

int bfs_stats_read(struct bfs_stats *st, struct bfs_stats_vec *totals)
{
	MDB_txn *txn;
	int rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, &txn);

	if (rc != 0) {
		return bfs_lmdb_errno(rc);
	}
	bfs_stats_get(txn, st->db, totals);
	mdb_txn_abort(txn);
	return 0;
}

int bfs_stats_write_prometheus(const struct bfs_stats_vec *t,
			       const char *cache_dir, uint64_t cache_used,
			       uint64_t cache_limit, uint64_t pending,
			       const char *path)
{
	static const uint64_t bounds[S3_LATENCY_N] = S3_LATENCY_BUCKETS_MS;
	static const struct {
		enum bfs_stat i;
		const char *name, *help;
	} counters[] = {
		{BFS_ST_S3_REQUESTS, "bucketfs_s3_requests_total",
		 "HTTP requests sent to S3, retries included"},
		{BFS_ST_S3_RETRIES, "bucketfs_s3_retries_total",
		 "S3 requests repeated after a transient failure"},
		{BFS_ST_S3_FAILURES, "bucketfs_s3_failures_total",
		 "S3 requests that ended in an error"},
		{BFS_ST_S3_BYTES_IN, "bucketfs_s3_received_bytes_total",
		 "bytes received from S3"},
		{BFS_ST_S3_BYTES_OUT, "bucketfs_s3_sent_bytes_total",
		 "request bodies sent to S3"},
		{BFS_ST_BLOCKS_CACHED, "bucketfs_cache_hit_blocks_total",
		 "blocks read from the cache"},
		{BFS_ST_BLOCKS_FETCHED, "bucketfs_cache_miss_fetches_total",
		 "range GETs for blocks the cache did not have"},
		{BFS_ST_BYTES_FETCHED, "bucketfs_cache_miss_bytes_total",
		 "bytes fetched for blocks the cache did not have"},
		{BFS_ST_EVICTIONS, "bucketfs_cache_evictions_total",
		 "blocks evicted to hold the cache size"},
		{BFS_ST_FILL_ERRORS, "bucketfs_cache_fill_errors_total",
		 "blocks that could not be cached (disk full, I/O error)"},
	};
	char *tmp = talloc_asprintf(NULL, "%s.%d.tmp", path, (int)getpid());
	uint64_t cum = 0;
	FILE *f;
	size_t i;
	int fd, ret = 0;

	if (tmp == NULL) {
		return ENOMEM;
	}
	/*
	 * Written as root, in a folder others may write to: never through a
	 * link someone planted at the name, and readable by all but ours
	 * to write whatever the umask (smbd runs with umask 0).  A file
	 * already there is a dead process's of our pid: replace it.
	 */
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		  0644);
	if (fd == -1 && errno == EEXIST && unlink(tmp) == 0) {
		fd = open(tmp,
			  O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
			  0644);
	}
	if (fd != -1 && fchmod(fd, 0644) != 0) {
		ret = errno;
		close(fd);
		unlink(tmp);
		talloc_free(tmp);
		return ret;
	}
	f = fd != -1 ? fdopen(fd, "w") : NULL;
	if (f == NULL) {
		ret = errno;
		if (fd != -1) {
			close(fd);
			unlink(tmp);
		}
		talloc_free(tmp);
		return ret;
	}
	for (i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
		fprintf(f, "# HELP %s %s\n# TYPE %s counter\n"
			   "%s{cache_dir=\"%s\"} %llu\n",
			counters[i].name, counters[i].help, counters[i].name,
			counters[i].name, cache_dir,
			(unsigned long long)t->v[counters[i].i]);
	}
	fprintf(f, "# HELP bucketfs_s3_request_duration_seconds time of one "
		   "HTTP exchange with S3\n"
		   "# TYPE bucketfs_s3_request_duration_seconds histogram\n");
	for (i = 0; i <= S3_LATENCY_N; i++) {
		cum += t->v[BFS_ST_S3_LATENCY + i];
		if (i < S3_LATENCY_N) {
			fprintf(f, "bucketfs_s3_request_duration_seconds_bucket"
				   "{cache_dir=\"%s\",le=\"%g\"} %llu\n",
				cache_dir, (double)bounds[i] / 1000.0,
				(unsigned long long)cum);
		} else {
			fprintf(f, "bucketfs_s3_request_duration_seconds_bucket"
				   "{cache_dir=\"%s\",le=\"+Inf\"} %llu\n",
				cache_dir, (unsigned long long)cum);
		}
	}
	fprintf(f, "bucketfs_s3_request_duration_seconds_sum{cache_dir=\"%s\"} "
		   "%.6f\n"
		   "bucketfs_s3_request_duration_seconds_count{cache_dir=\"%s\"} "
		   "%llu\n", cache_dir,
		(double)t->v[BFS_ST_S3_LATENCY_US] / 1e6, cache_dir,
		(unsigned long long)cum);
	fprintf(f, "# HELP bucketfs_cache_used_bytes object bytes in the cache\n"
		   "# TYPE bucketfs_cache_used_bytes gauge\n"
		   "bucketfs_cache_used_bytes{cache_dir=\"%s\"} %llu\n"
		   "# HELP bucketfs_cache_limit_bytes bucketfs:cache size\n"
		   "# TYPE bucketfs_cache_limit_bytes gauge\n"
		   "bucketfs_cache_limit_bytes{cache_dir=\"%s\"} %llu\n"
		   "# HELP bucketfs_pending_changes uploads, renames and "
		   "deletes not yet durable in S3\n"
		   "# TYPE bucketfs_pending_changes gauge\n"
		   "bucketfs_pending_changes{cache_dir=\"%s\"} %llu\n",
		cache_dir, (unsigned long long)cache_used, cache_dir,
		(unsigned long long)cache_limit, cache_dir,
		(unsigned long long)pending);
	if (ferror(f)) {
		ret = EIO;
	}
	if (fclose(f) != 0 && ret == 0) {
		ret = errno;
	}
	if (ret == 0 && rename(tmp, path) != 0) {
		ret = errno;
	}
	if (ret != 0) {
		unlink(tmp);
	}
	talloc_free(tmp);
	return ret;
}
