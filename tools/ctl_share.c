/*
 * A bucketfs share as the tools see it (see ctl_share.h).
 */
#include "ctl_share.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "smbconf.h"
#include "smbconf_txt.h"

#include "bfs_creds.h"
#include "bfs_lmdb.h"
#include "bfs_log.h"
#include "bfs_params.h"
#include "bfs_path.h"
#include "s3_ops.h"

TALLOC_CTX *ctl_mem;

void ctl_close_all(void)
{
	TALLOC_FREE(ctl_mem);
}

/* One clear line and a non-zero exit: what every error of this tool is. */
void ctl_die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", program_invocation_short_name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* ---- smb.conf ------------------------------------------------------------------ */

const char *ctl_param(struct ctl *c, const char *name, const char *def)
{
	char *key = talloc_asprintf(c->mem, "bucketfs:%s", name), *v = NULL;

	if (SBC_ERROR_IS_OK(smbconf_get_parameter(c->conf, c->mem, c->share,
						  key, &v)) ||
	    SBC_ERROR_IS_OK(smbconf_get_parameter(c->conf, c->mem, "global",
						  key, &v))) {
		return v;
	}
	return def;
}

const char *ctl_global(struct ctl *c, const char *name)
{
	char *v = NULL;

	if (SBC_ERROR_IS_OK(smbconf_get_parameter(c->conf, c->mem, "global",
						  name, &v))) {
		return v;
	}
	return NULL;
}

/* The share's value, else [global]'s, else NULL: for lib/bfs_params. */
static const char *ctl_get(void *priv, const char *name)
{
	return ctl_param(priv, name, NULL);
}

/*
 * Parameters as the module reads them (lib/bfs_params: one table of
 * types, defaults and bounds); a bad value ends the tool with the line
 * the module would log.
 */
static void ctl_bad(struct ctl *c, const char *name,
		    const struct bfs_pbad *bad)
{
	ctl_die("share [%s]: 'bucketfs:%s' must be %s, not '%s'", c->share,
		name, bad->want, bad->value ? bad->value : "");
}

bool ctl_bool(struct ctl *c, const char *name)
{
	const struct bfs_psrc src = {ctl_get, c};
	struct bfs_pbad bad;
	bool v = false;

	if (bfs_pget_bool(&src, name, &v, &bad) != 0) {
		ctl_bad(c, name, &bad);
	}
	return v;
}

int64_t ctl_int(struct ctl *c, const char *name)
{
	const struct bfs_psrc src = {ctl_get, c};
	struct bfs_pbad bad;
	int64_t v = 0;

	if (bfs_pget_int(&src, name, &v, &bad) != 0) {
		ctl_bad(c, name, &bad);
	}
	return v;
}

uint64_t ctl_size(struct ctl *c, const char *name)
{
	const struct bfs_psrc src = {ctl_get, c};
	struct bfs_pbad bad;
	uint64_t v = 0;

	if (bfs_pget_size(&src, name, &v, &bad) != 0) {
		ctl_bad(c, name, &bad);
	}
	return v;
}

const char *ctl_string(struct ctl *c, const char *name)
{
	const struct bfs_psrc src = {ctl_get, c};
	struct bfs_pbad bad;
	const char *v = NULL;

	if (bfs_pget_string(&src, name, &v, &bad) != 0) {
		ctl_bad(c, name, &bad);
	}
	return v;
}

void ctl_load(struct ctl *c, const char *conf_path)
{
	bool exists = false;

	if (!SBC_ERROR_IS_OK(smbconf_init_txt(c->mem, &c->conf, conf_path))) {
		ctl_die("cannot read %s", conf_path);
	}
	exists = smbconf_share_exists(c->conf, c->share);
	if (!exists) {
		ctl_die("%s has no share [%s]", conf_path, c->share);
	}
	c->bucket = ctl_param(c, "bucket", NULL);
	if (c->bucket == NULL || c->bucket[0] == '\0') {
		ctl_die("share [%s] in %s has no 'bucketfs:bucket': not a "
			"bucketfs share?", c->share, conf_path);
	}
	/* The module's key prefix, spelled as the module spells it. */
	c->prefix = bfs_path_share_prefix(c->mem, ctl_string(c, "prefix"));
	if (c->prefix == NULL) {
		ctl_die("out of memory");
	}
	c->cache_dir = ctl_param(c, "cache dir", NULL);
	if (c->cache_dir == NULL || c->cache_dir[0] == '\0') {
		c->cache_dir = talloc_asprintf(c->mem, "/var/cache/bucketfs/%s",
					       c->share);
	}
	c->cache_size = ctl_size(c, "cache size");
	c->block_size = (uint32_t)ctl_size(c, "block size");
	if (c->cache_size == 0 || c->block_size == 0) {
		ctl_die("share [%s]: bad 'bucketfs:cache size' or 'block size'",
			c->share);
	}
}

char *ctl_sub(struct ctl *c, const char *what)
{
	return talloc_asprintf(c->mem, "%s/%s", c->cache_dir, what);
}

struct bfs_index *ctl_index(struct ctl *c)
{
	struct bfs_index *idx = NULL;
	const char *why = NULL;
	char unsafe[4352];
	const char *served = bfs_index_identity(c->mem,
						ctl_param(c, "endpoint", NULL),
						c->bucket);
	int ret = bfs_mkdirs(c->cache_dir);

	/* As the module: root trusts no folder others may change. */
	if (ret == 0) {
		ret = bfs_dir_trusted(c->cache_dir, unsafe, sizeof(unsafe));
	}
	if (ret != 0) {
		ctl_die("cache folder %s: %s", c->cache_dir,
			ret == EPERM ? unsafe : strerror(ret));
	}
	ret = bfs_index_open(c->mem, ctl_sub(c, "index"), served, &idx, &why);
	if (ret != 0) {
		ctl_die("index in %s: %s", c->cache_dir, why ? why : strerror(ret));
	}
	return idx;
}

struct bfs_cache *ctl_cache(struct ctl *c)
{
	struct bfs_cache *cache = NULL;
	const char *why = NULL;
	int ret = bfs_cache_open(c->mem, ctl_sub(c, "cache"), c->cache_size,
				 c->block_size, &cache, &why);

	if (ret != 0) {
		ctl_die("cache in %s: %s", c->cache_dir, why ? why : strerror(ret));
	}
	return cache;
}

struct bfs_stats *ctl_stats_db(struct ctl *c)
{
	struct bfs_stats *st = NULL;
	const char *why = NULL;
	int ret = bfs_stats_open(c->mem, ctl_sub(c, "stats"), &st, &why);

	if (ret != 0) {
		ctl_die("statistics in %s: %s", c->cache_dir,
			why ? why : strerror(ret));
	}
	return st;
}

struct bfs_journal *ctl_journal(struct ctl *c)
{
	struct bfs_journal *j = NULL;
	const char *why = NULL;
	int ret = bfs_journal_open(c->mem, ctl_sub(c, "journal"), &j, &why);

	if (ret != 0) {
		ctl_die("journal in %s: %s", c->cache_dir, why ? why : strerror(ret));
	}
	return j;
}

/*
 * Why a look at the bucket failed, with the region S3 named if it did: a
 * HEAD of the bucket (a 301 says x-amz-bucket-region), else a listing of
 * the prefix (credentials limited to a prefix may list it only).
 */
static int ctl_probe(struct ctl *c, struct tevent_context *ev,
		     struct s3_client *s3, struct s3_status *st)
{
	TALLOC_CTX *tmp = talloc_new(c->mem);
	struct s3_object_info info = {0};
	struct s3_listing *l = NULL;
	struct tevent_req *req;
	int ret;

	req = tmp ? s3_head_object_send(tmp, ev, s3, NULL) : NULL;
	ret = s3_wait_for(req, ev);
	if (ret == 0) {
		ret = s3_head_object_recv(req, tmp, &info, st);
	}
	if (ret != 0 && st->region[0] == '\0') {
		*st = (struct s3_status){0};
		req = tmp ? s3_list_send(tmp, ev, s3, c->prefix, "/", NULL, 1) :
			    NULL;
		ret = s3_wait_for(req, ev);
		if (ret == 0) {
			ret = s3_list_recv(req, tmp, &l, st);
		}
	}
	talloc_free(tmp);
	return ret;
}

/* An S3 client with the share's endpoint and the credential chain. */
struct s3_client *ctl_s3(struct ctl *c, struct tevent_context *ev,
			 time_t *creds_expire)
{
	struct s3_client_config cfg = {0};
	const struct bfs_psrc src = {ctl_get, c};
	struct bfs_creds_params p = {.conf = &src, .imds = true};
	struct bfs_creds creds;
	const char *why = NULL;
	struct s3_client *s3;
	int ret;

	cfg.bucket = c->bucket;
	cfg.region = ctl_string(c, "region");
	cfg.endpoint = ctl_param(c, "endpoint", NULL);
	cfg.path_style = ctl_bool(c, "path style");
	cfg.verify_tls = ctl_bool(c, "verify tls");
	cfg.ca_file = ctl_param(c, "ca file", NULL);
	cfg.max_requests = (unsigned)ctl_int(c, "max requests");
	cfg.max_retries = (unsigned)ctl_int(c, "retries");
	cfg.request_timeout_ms =
		1000 * (unsigned)ctl_int(c, "request timeout");
	cfg.anonymous = ctl_bool(c, "anonymous");
	cfg.requester_pays = ctl_bool(c, "requester pays");
	/* The module's chain (lib/bfs_creds), read as the module reads it. */
	p.service = c->share;
	p.anonymous = cfg.anonymous;
	p.file = ctl_string(c, "credentials file");
	p.profile = ctl_string(c, "profile");
	p.imds_endpoint = ctl_string(c, "imds endpoint");
	if (!p.anonymous) {
		p.imds = ctl_bool(c, "imds");
		p.home = bfs_creds_home(getuid());
	}
	ret = bfs_creds_get(c->mem, &p, &creds, &why);
	if (ret != 0) {
		ctl_die("share [%s]: %s", c->share, why ? why : strerror(ret));
	}
	cfg.creds = creds.keys;
	s3 = s3_client_new(c->mem, ev, &cfg);
	if (s3 == NULL) {
		ctl_die("share [%s]: bad endpoint '%s'", c->share,
			cfg.endpoint ? cfg.endpoint : "(default)");
	}
	/*
	 * As the module at its tree connect: without 'bucketfs:region' the
	 * bucket's region is the one S3 names, so the engine signs for (and
	 * on AWS talks to) the region the smbds do.  A failure for any other
	 * reason is the first request's to report.
	 */
	if (ctl_param(c, "region", NULL) == NULL) {
		struct s3_status st = {0};

		if (ctl_probe(c, ev, s3, &st) != 0 &&
		    s3_region_to_follow(cfg.region, st.region)) {
			bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: bucket "
				"'%s' is in region %s, not %s: using %s",
				c->share, c->bucket, st.region, cfg.region,
				st.region);
			cfg.region = talloc_strdup(c->mem, st.region);
			talloc_free(s3);
			s3 = cfg.region ? s3_client_new(c->mem, ev, &cfg) :
					  NULL;
			if (s3 == NULL) {
				ctl_die("out of memory");
			}
		}
	}
	if (creds_expire != NULL) {
		*creds_expire = creds.expire;
	}
	return s3;
}
