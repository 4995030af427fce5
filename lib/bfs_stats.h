/*
 * Counters of a cache folder, summed over every smbd process that uses it
 * and its engine, in LMDB: each process (each engine thread) adds what it
 * counted since its last flush, so the totals survive the process and
 * bucketfs-ctl and the metrics file see one set of numbers.  Also the Prometheus text rendering of them.
 */
#ifndef BUCKETFS_BFS_STATS_H
#define BUCKETFS_BFS_STATS_H

#include <stdint.h>
#include <talloc.h>

#include "bfs_cache.h"
#include "bfs_reader.h"
#include "s3_client.h"

enum bfs_stat {
	BFS_ST_S3_REQUESTS,
	BFS_ST_S3_RETRIES,
	BFS_ST_S3_FAILURES,
	BFS_ST_S3_BYTES_IN,
	BFS_ST_S3_BYTES_OUT,
	BFS_ST_S3_LATENCY_US,
	BFS_ST_S3_LATENCY,	/* S3_LATENCY_N + 1 histogram slots */
	BFS_ST_BLOCKS_CACHED = BFS_ST_S3_LATENCY + S3_LATENCY_N + 1,
	BFS_ST_BLOCKS_FETCHED,
	BFS_ST_BYTES_FETCHED,
	BFS_ST_EVICTIONS,
	BFS_ST_FILL_ERRORS,
	BFS_ST_N
};

struct bfs_stats_vec {
	uint64_t v[BFS_ST_N];
};

struct bfs_stats;

int bfs_stats_open(TALLOC_CTX *mem_ctx, const char *dir,
		   struct bfs_stats **out, const char **why);
/* Add delta to the totals, in one transaction. */
int bfs_stats_add(struct bfs_stats *st, const struct bfs_stats_vec *delta);
int bfs_stats_read(struct bfs_stats *st, struct bfs_stats_vec *totals);

/*
 * What one process counted so far, summed into *v: an S3 client's
 * requests, bytes and latencies, a reader's blocks, a cache's evictions
 * and fill errors (each may be NULL).  The module counts each smbd's, the
 * engine its fetches' and its uploads'.
 */
void bfs_stats_count_client(struct bfs_stats_vec *v, const struct s3_client *c);
void bfs_stats_count_reader(struct bfs_stats_vec *v, const struct bfs_reader *r);
void bfs_stats_count_cache(struct bfs_stats_vec *v, struct bfs_cache *c);

/*
 * Add to the totals what cur counts beyond *flushed (what this counter
 * set added before), and remember cur in *flushed once that is stored.
 */
int bfs_stats_add_since(struct bfs_stats *st, struct bfs_stats_vec *flushed,
			const struct bfs_stats_vec *cur);

/*
 * Write totals (and the cache's use) as a Prometheus text file at path,
 * atomically (a temporary file renamed over it).
 */
int bfs_stats_write_prometheus(const struct bfs_stats_vec *t,
			       const char *cache_dir, uint64_t cache_used,
			       uint64_t cache_limit, uint64_t pending,
			       const char *path);

#endif
