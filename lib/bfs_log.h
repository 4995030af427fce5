/*
 * Log lines of lib/, which knows nothing of Samba: where a failure is born
 * it says so here, and the module sends the line to smbd's log (DEBUG, at
 * our debug class); tools and tests get them on stderr.
 */
#ifndef BUCKETFS_BFS_LOG_H
#define BUCKETFS_BFS_LOG_H

/* Samba's levels: 0 error, 1 warning, 3 notice, 5 info, 10 debug. */
enum bfs_log_level {
	BFS_LOG_ERR = 0,
	BFS_LOG_WARNING = 1,
	BFS_LOG_NOTICE = 3,
	BFS_LOG_INFO = 5,
};

typedef void (*bfs_log_fn)(int level, const char *line);

/* Where lines go from now on (NULL: stderr).  One per process. */
void bfs_log_set(bfs_log_fn fn);

void bfs_log(int level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif
