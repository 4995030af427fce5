/*
 * The one table of bucketfs's smb.conf parameters (see bfs_params.h).
 */
#include "bfs_params.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "s3_imds.h"

#define K 1024LL
#define M (K * K)
#define G (M * K)

/* In the man page's order; bounds are what S3 and the code can take. */
const struct bfs_pdef bfs_pdefs[] = {
	{"bucket", BFS_PT_STRING, NULL, 0, 0, false, false},
	{"prefix", BFS_PT_STRING, "", 0, 0, false, false},
	{"endpoint", BFS_PT_STRING, NULL, 0, 0, false, false},
	{"region", BFS_PT_STRING, "us-east-1", 0, 0, false, false},
	{"path style", BFS_PT_BOOL, "no", 0, 0, false, false},
	{"anonymous", BFS_PT_BOOL, "no", 0, 0, false, false},
	{"requester pays", BFS_PT_BOOL, "no", 0, 0, false, false},
	{"verify tls", BFS_PT_BOOL, "yes", 0, 0, false, false},
	{"ca file", BFS_PT_STRING, NULL, 0, 0, false, false},
	{"credentials file", BFS_PT_STRING, NULL, 0, 0, false, false},
	{"profile", BFS_PT_STRING, NULL, 0, 0, false, false},
	{"imds", BFS_PT_BOOL, "yes", 0, 0, false, false},
	{"imds endpoint", BFS_PT_STRING, S3_IMDS_ENDPOINT, 0, 0, false, false},
	{"request timeout", BFS_PT_INT, "30", 1, 86400, false, false},
	{"retries", BFS_PT_INT, "4", 0, 20, false, false},
	{"max requests", BFS_PT_INT, "16", 1, 1024, false, true},
	{"cache dir", BFS_PT_STRING, NULL, 0, 0, false, false},
	{"cache size", BFS_PT_SIZE, "16G", M, BFS_SIZE_UNBOUNDED, false, true},
	{"block size", BFS_PT_SIZE, "1M", 4 * K, 64 * M, true, false},
	{"readahead", BFS_PT_INT, "64", 0, 4096, false, true},
	/*
	 * 60 s, as Mountpoint for Amazon S3 with a local cache: each
	 * revalidation relists the whole folder (a LIST request per 1,000
	 * entries), which a 10 s default asked for six times as often.
	 */
	{"metadata ttl", BFS_PT_INT, "60", -1, INT32_MAX, false, true},
	{"file mode", BFS_PT_INT, "0644", 0, 07777, false, false},
	{"dir mode", BFS_PT_INT, "0755", 0, 07777, false, false},
	{"reuse read buffers", BFS_PT_BOOL, "yes", 0, 0, false, false},
	{"multipart threshold", BFS_PT_SIZE, "16M", 5 * M, 5 * G, false, false},
	{"part size", BFS_PT_SIZE, "16M", 5 * M, 255 * M, false, false},
	{"multipart copy threshold", BFS_PT_SIZE, "5G", 5 * M, 5 * G, false,
	 false},
	{"upload parallel", BFS_PT_INT, "8", 1, 64, false, false},
	{"upload files", BFS_PT_INT, "4", 1, 64, false, false},
	{"upload memory", BFS_PT_SIZE, "256M", 0, BFS_SIZE_UNBOUNDED, false,
	 true},
	{"max file size", BFS_PT_SIZE, "5T", 1, 5 * G * K, false, true},
	{"stream parts", BFS_PT_BOOL, "no", 0, 0, false, false},
	{"stream parallel", BFS_PT_INT, "2", 1, 64, false, false},
	{"close", BFS_PT_STRING, "local", 0, 0, false, false},
	{"upload delay", BFS_PT_INT, "500", 0, 60000, false, false},
	{"upload retry", BFS_PT_INT, "30", 1, 3600, false, false},
	{"writeback limit", BFS_PT_SIZE, "16G", 0, BFS_SIZE_UNBOUNDED, false,
	 true},
	{"fetch memory", BFS_PT_SIZE, "256M", 0, BFS_SIZE_UNBOUNDED, false,
	 true},
	{"engine", BFS_PT_STRING, BFS_SBINDIR "/bucketfsd", 0, 0, false,
	 false},
	{"dir rename max", BFS_PT_INT, "1000", 0, 10000000, false, false},
	{"metrics file", BFS_PT_STRING, NULL, 0, 0, false, false},
	{"metrics interval", BFS_PT_INT, "15", 1, 86400, false, true},
	{NULL, BFS_PT_STRING, NULL, 0, 0, false, false},
};

const struct bfs_pdef *bfs_pdef_find(const char *name)
{
	const struct bfs_pdef *d;

	for (d = bfs_pdefs; d->name != NULL; d++) {
		if (strcmp(d->name, name) == 0) {
			return d;
		}
	}
	return NULL;
}

bool bfs_parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = {"yes", "true", "on", "1"};
	static const char *const no[] = {"no", "false", "off", "0"};
	size_t i;

	for (i = 0; i < 4; i++) {
		if (strcasecmp(s, yes[i]) == 0 || strcasecmp(s, no[i]) == 0) {
			*out = strcasecmp(s, yes[i]) == 0;
			return true;
		}
	}
	return false;
}

bool bfs_parse_int(const char *s, int64_t *out)
{
	char *end = NULL;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 0);
	while (end != NULL && isspace((unsigned char)*end)) {
		end++;
	}
	if (errno != 0 || end == s || *end != '\0') {
		return false;
	}
	*out = v;
	return true;
}

bool bfs_parse_size(const char *s, uint64_t *out)
{
	static const char units[] = "KMGTP";
	const char *u;
	char *end = NULL;
	unsigned long long v;
	unsigned shift = 0;

	if (!isdigit((unsigned char)s[0])) {
		return false; /* no sign, no space, no empty */
	}
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0) {
		return false;
	}
	if (*end != '\0') {
		u = strchr(units, toupper((unsigned char)*end));
		if (u == NULL || end[1] != '\0') {
			return false;
		}
		shift = 10 * (unsigned)(u - units + 1);
	}
	if (shift > 0 && v > (UINT64_MAX >> shift)) {
		return false;
	}
	*out = (uint64_t)v << shift;
	return true;
}

/* The raw value of d (the source's, else the default; NULL: unset). */
static const char *bfs_praw(const struct bfs_psrc *src,
			    const struct bfs_pdef *d)
{
	const char *v = src->get(src->priv, d->name);

	return v != NULL && v[0] != '\0' ? v : d->def;
}

static const struct bfs_pdef *bfs_pdef_typed(const char *name,
					     enum bfs_ptype type,
					     struct bfs_pbad *bad)
{
	const struct bfs_pdef *d = bfs_pdef_find(name);

	if (d == NULL || d->type != type) {
		bad->value = name;
		snprintf(bad->want, sizeof(bad->want),
			 "a parameter bucketfs knows (a bug: '%s')", name);
		return NULL;
	}
	return d;
}

int bfs_pget_string(const struct bfs_psrc *src, const char *name,
		    const char **out, struct bfs_pbad *bad)
{
	const struct bfs_pdef *d = bfs_pdef_typed(name, BFS_PT_STRING, bad);

	if (d == NULL) {
		return EINVAL;
	}
	*out = bfs_praw(src, d);
	return 0;
}

int bfs_pget_bool(const struct bfs_psrc *src, const char *name, bool *out,
		  struct bfs_pbad *bad)
{
	const struct bfs_pdef *d = bfs_pdef_typed(name, BFS_PT_BOOL, bad);
	const char *v = d != NULL ? bfs_praw(src, d) : NULL;

	if (d == NULL) {
		return EINVAL;
	}
	if (!bfs_parse_bool(v, out)) {
		bad->value = v;
		snprintf(bad->want, sizeof(bad->want), "yes or no");
		return EINVAL;
	}
	return 0;
}

int bfs_pget_int(const struct bfs_psrc *src, const char *name, int64_t *out,
		 struct bfs_pbad *bad)
{
	const struct bfs_pdef *d = bfs_pdef_typed(name, BFS_PT_INT, bad);
	const char *v = d != NULL ? bfs_praw(src, d) : NULL;
	int64_t n;

	if (d == NULL) {
		return EINVAL;
	}
	if (!bfs_parse_int(v, &n) || n < d->min || n > d->max) {
		bad->value = v;
		snprintf(bad->want, sizeof(bad->want),
			 "a whole number from %" PRId64 " to %" PRId64, d->min,
			 d->max);
		return EINVAL;
	}
	*out = n;
	return 0;
}

int bfs_pget_size(const struct bfs_psrc *src, const char *name,
		  uint64_t *out, struct bfs_pbad *bad)
{
	const struct bfs_pdef *d = bfs_pdef_typed(name, BFS_PT_SIZE, bad);
	const char *v = d != NULL ? bfs_praw(src, d) : NULL;
	uint64_t n = 0;

	if (d == NULL) {
		return EINVAL;
	}
	if (!bfs_parse_size(v, &n) || n < (uint64_t)d->min ||
	    n > (uint64_t)d->max) {
		bad->value = v;
		if (d->max == BFS_SIZE_UNBOUNDED) {
			snprintf(bad->want, sizeof(bad->want),
				 "a size of at least %" PRId64 "K, written "
				 "like 64M or 16G", d->min >> 10);
		} else {
			snprintf(bad->want, sizeof(bad->want),
				 "a size from %" PRId64 "K to %" PRId64 "M, "
				 "written like 64M or 16G", d->min >> 10,
				 d->max >> 20);
		}
		return EINVAL;
	}
	if (d->pow2 && (n & (n - 1)) != 0) {
		bad->value = v;
		snprintf(bad->want, sizeof(bad->want),
			 "a power of two (4K, 64K, 1M...)");
		return EINVAL;
	}
	*out = n;
	return 0;
}
