/*
 * A file's own times and DOS attributes as S3 user metadata (bfs_meta.h).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bfs_meta.h"

#define NSEC_PER_SEC 1000000000L
/* Beyond what an NT time can hold (years 1601 to 30828) either way. */
#define BFS_META_SEC_MAX 1000000000000LL

void bfs_meta_format_time(const struct timespec *t, char *buf, size_t len)
{
	long long sec = (long long)t->tv_sec;
	long nsec = t->tv_nsec;

	if (sec >= 0) {
		snprintf(buf, len, "%lld.%09ld", sec, nsec);
	} else if (nsec == 0) {
		snprintf(buf, len, "-%lld.000000000", -sec);
	} else {
		/* -2 s + 0.5 s is -1.5: "-1.500000000" */
		snprintf(buf, len, "-%lld.%09ld", -(sec + 1), NSEC_PER_SEC - nsec);
	}
}

bool bfs_meta_parse_time(const char *s, struct timespec *t)
{
	bool neg = false;
	long long whole = 0;
	long frac = 0;
	int digits = 0, fdigits = 0;

	if (*s == '-') {
		neg = true;
		s++;
	}
	for (; *s >= '0' && *s <= '9'; s++) {
		if (++digits > 13) {
			return false;
		}
		whole = whole * 10 + (*s - '0');
	}
	if (digits == 0 || whole > BFS_META_SEC_MAX) {
		return false;
	}
	if (*s == '.') {
		s++;
		for (; *s >= '0' && *s <= '9'; s++) {
			/* Finer than a nanosecond is dropped, not refused. */
			if (fdigits++ < 9) {
				frac = frac * 10 + (*s - '0');
			}
		}
		if (fdigits == 0) {
			return false;
		}
		for (int i = fdigits; i < 9; i++) {
			frac *= 10;
		}
	}
	if (*s != '\0') {
		return false;
	}
	if (!neg) {
		t->tv_sec = (time_t)whole;
		t->tv_nsec = frac;
	} else if (frac == 0) {
		t->tv_sec = (time_t)-whole;
		t->tv_nsec = 0;
	} else {
		t->tv_sec = (time_t)(-whole - 1);
		t->tv_nsec = NSEC_PER_SEC - frac;
	}
	return true;
}

/* One header, its value formatted on mem_ctx. */
static int bfs_meta_kv(TALLOC_CTX *mem_ctx, struct s3_kv *kv, size_t *n,
		       const char *name, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static int bfs_meta_kv(TALLOC_CTX *mem_ctx, struct s3_kv *kv, size_t *n,
		       const char *name, const char *fmt, ...)
{
	va_list ap;
	char *value;

	va_start(ap, fmt);
	value = talloc_vasprintf(mem_ctx, fmt, ap);
	va_end(ap);
	if (value == NULL) {
		return ENOMEM;
	}
	kv[(*n)++] = (struct s3_kv){name, value};
	return 0;
}

int bfs_meta_to_headers(TALLOC_CTX *mem_ctx, const struct bfs_meta *m,
			struct s3_kv *kv, size_t *n)
{
	char mtime[32], btime[32];
	int ret = 0;

	*n = 0;
	if (m->have & BFS_META_MTIME) {
		bfs_meta_format_time(&m->mtime, mtime, sizeof(mtime));
		ret = bfs_meta_kv(mem_ctx, kv, n, "x-amz-meta-mtime", "%s", mtime);
	}
	if (ret == 0 && (m->have & BFS_META_BTIME)) {
		bfs_meta_format_time(&m->btime, btime, sizeof(btime));
		ret = bfs_meta_kv(mem_ctx, kv, n, "x-amz-meta-btime", "%s", btime);
	}
	if (ret == 0 && (m->have & BFS_META_ATTRS)) {
		ret = bfs_meta_kv(mem_ctx, kv, n, "x-amz-meta-dosattrib", "0x%x",
				  m->attrs & BFS_ATTR_KEPT);
	}
	return ret;
}

static bool bfs_meta_parse_attrs(const char *s, uint32_t *attrs)
{
	char *end;
	unsigned long v;

	if (strncasecmp(s, "0x", 2) != 0 || s[2] == '\0') {
		return false;
	}
	errno = 0;
	v = strtoul(s + 2, &end, 16);
	if (errno != 0 || *end != '\0' || v > UINT32_MAX ||
	    s[2] == '-' || s[2] == '+' || s[2] == ' ') {
		return false;
	}
	/* Bits we do not keep (DIRECTORY, NORMAL, ...) are smbd's to add. */
	*attrs = (uint32_t)v & BFS_ATTR_KEPT;
	return true;
}

bool bfs_meta_parse_header(struct bfs_meta *m, const char *name,
			   const char *value)
{
	struct timespec t;

	if (strcasecmp(name, "x-amz-meta-mtime") == 0) {
		if (!bfs_meta_parse_time(value, &t)) {
			return false;
		}
		m->mtime = t;
		m->have |= BFS_META_MTIME;
		return true;
	}
	if (strcasecmp(name, "x-amz-meta-btime") == 0) {
		if (!bfs_meta_parse_time(value, &t)) {
			return false;
		}
		m->btime = t;
		m->have |= BFS_META_BTIME;
		return true;
	}
	if (strcasecmp(name, "x-amz-meta-dosattrib") == 0) {
		if (!bfs_meta_parse_attrs(value, &m->attrs)) {
			return false;
		}
		m->have |= BFS_META_ATTRS;
		return true;
	}
	return false;
}

void bfs_meta_merge(struct bfs_meta *dst, const struct bfs_meta *src,
		    uint32_t which)
{
	which &= src->have;
	if (which & BFS_META_MTIME) {
		dst->mtime = src->mtime;
	}
	if (which & BFS_META_BTIME) {
		dst->btime = src->btime;
	}
	if (which & BFS_META_ATTRS) {
		dst->attrs = src->attrs;
	}
	dst->have |= which;
}

void bfs_meta_now(struct bfs_meta *m)
{
	clock_gettime(CLOCK_REALTIME, &m->mtime);
	m->btime = m->mtime;
	m->have |= BFS_META_MTIME | BFS_META_BTIME;
}

bool bfs_meta_equal(const struct bfs_meta *a, const struct bfs_meta *b)
{
	if (a->have != b->have) {
		return false;
	}
	if ((a->have & BFS_META_MTIME) &&
	    (a->mtime.tv_sec != b->mtime.tv_sec ||
	     a->mtime.tv_nsec != b->mtime.tv_nsec)) {
		return false;
	}
	if ((a->have & BFS_META_BTIME) &&
	    (a->btime.tv_sec != b->btime.tv_sec ||
	     a->btime.tv_nsec != b->btime.tv_nsec)) {
		return false;
	}
	return !(a->have & BFS_META_ATTRS) || a->attrs == b->attrs;
}
