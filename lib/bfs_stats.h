/*
 * Counters of a cache folder, summed over every smbd process that uses it,
 * in LMDB: each process adds what it counted since its last flush, so the
 * totals survive the process and bucketfs-ctl and the metrics file see
 * one set of numbers.  Also the Prometheus text rendering of them.
 */
#ifndef BUCKETFS_BFS_STATS_H
#define BUCKETFS_BFS_STATS_H

#include <stdint.h>
#include <talloc.h>

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
 * Write totals (and the cache's use) as a Prometheus text file at path,
 * atomically (a temporary file renamed over it).
 */
int bfs_stats_write_prometheus(const struct bfs_stats_vec *t,
			       const char *cache_dir, uint64_t cache_used,
			       uint64_t cache_limit, uint64_t pending,
			       const char *path);

#endif
