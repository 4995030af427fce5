/*
 * Log lines of lib/ (see bfs_log.h).
 */
#include "bfs_log.h"

#include <stdarg.h>
#include <stdio.h>

static bfs_log_fn bfs_log_to;

void bfs_log_set(bfs_log_fn fn)
{
	bfs_log_to = fn;
}

void bfs_log(int level, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (bfs_log_to != NULL) {
		bfs_log_to(level, line);
	} else {
		fprintf(stderr, "%s\n", line);
	}
}
