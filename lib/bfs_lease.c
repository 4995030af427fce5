/*
 * A lease in an S3 object through conditional writes (see bfs_lease.h).
 */
#include "bfs_lease.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bfs_log.h"
#include "s3_ops.h"

#define BFS_LEASE_HOLDER "x-amz-meta-bfs-holder"
#define BFS_LEASE_SECONDS "x-amz-meta-bfs-seconds"

struct bfs_lease {
	struct tevent_context *ev;
	struct s3_client *c;
	char *key;
	char *holder;
	unsigned seconds;
	char *etag;		/* of our last write while we hold it, else NULL */
	uint64_t writes;	/* writes sent, to make each one's bytes differ */
	struct timespec sent;	/* when that write was sent (monotonic) */
};

static struct timespec bfs_lease_now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t;
}

static double bfs_lease_since(struct timespec t)
{
	struct timespec n = bfs_lease_now();

	return (double)(n.tv_sec - t.tv_sec) +
	       (double)(n.tv_nsec - t.tv_nsec) / 1e9;
}

struct bfs_lease *bfs_lease_new(TALLOC_CTX *mem_ctx, struct tevent_context *ev,
				struct s3_client *c, const char *key,
				const char *holder, unsigned seconds)
{
	struct bfs_lease *l = talloc_zero(mem_ctx, struct bfs_lease);

	if (l == NULL) {
		return NULL;
	}
	l->ev = ev;
	l->c = c;
	l->key = talloc_strdup(l, key);
	l->holder = talloc_strdup(l, holder);
	l->seconds = seconds < 3 * BFS_LEASE_MARGIN ? 3 * BFS_LEASE_MARGIN :
						      seconds;
	if (l->key == NULL || l->holder == NULL) {
		TALLOC_FREE(l);
	}
	return l;
}

unsigned bfs_lease_renew_every(const struct bfs_lease *l)
{
	return l->seconds / 3;
}

bool bfs_lease_expired(time_t last_modified, time_t now, const char *seconds)
{
	char *end = NULL;
	unsigned long s;

	errno = 0;
	s = seconds != NULL ? strtoul(seconds, &end, 10) : 0;
	if (seconds == NULL || end == seconds || *end != '\0' || errno != 0 ||
	    s > 86400 || s == 0) {
		return true; /* given back (0), or not a lease we wrote */
	}
	if (last_modified == (time_t)-1 || now == (time_t)-1) {
		return false; /* the server does not say: wait */
	}
	/* Last-Modified has whole seconds: one more for its rounding. */
	return (int64_t)now - (int64_t)last_modified > (int64_t)s + 1;
}

/* One conditional write of the lease object; 0 (and l->etag) or an errno. */
static int bfs_lease_put_once(struct bfs_lease *l, const char *if_match,
			      bool if_none_match, unsigned seconds,
			      struct s3_status *st)
{
	TALLOC_CTX *tmp = talloc_new(l);
	char secs[16], *etag = NULL, *body;
	struct s3_kv meta[2] = {
		{BFS_LEASE_HOLDER, l->holder}, {BFS_LEASE_SECONDS, secs},
	};
	struct tevent_req *req;
	int ret;

	/*
	 * Every write's bytes differ, so its ETag does: with the same bytes
	 * (the same MD5), a holder's If-Match would still match after
	 * another node had taken the lease over.
	 */
	body = talloc_asprintf(tmp, "bucketfs lease (tools/bucketfs-lease)\n"
			       "holder %s\nwrite %" PRIu64 "\nseconds %u\n",
			       l->holder, ++l->writes, seconds);
	snprintf(secs, sizeof(secs), "%u", seconds);
	req = body == NULL ? NULL :
		s3_put_object_if_send(tmp, l->ev, l->c, l->key, body,
				      strlen(body), meta, 2, if_match,
				      if_none_match);
	ret = s3_wait_for(req, l->ev);
	if (ret == 0) {
		ret = s3_put_object_recv(req, l, &etag, st);
	}
	if (ret == 0) {
		talloc_free(l->etag);
		l->etag = etag;
	}
	talloc_free(tmp);
	return ret;
}

/*
 * Our lease object, conditionally (on the ETag if_match, unquoted, or on
 * there being none); 0 (and l->etag) or an errno.  S3 takes a quoted
 * If-Match; Ceph RGW 16 refuses it (it compares the ETag as stored), so a
 * refusal of the quoted form while the object still has that ETag is
 * tried again without quotes.
 */
static int bfs_lease_put(struct bfs_lease *l, const char *if_match,
			 bool if_none_match, unsigned seconds,
			 struct s3_status *st)
{
	TALLOC_CTX *tmp;
	char *quoted;
	struct tevent_req *req;
	struct s3_object_info info = {0};
	int ret;

	if (if_match == NULL) {
		return bfs_lease_put_once(l, NULL, if_none_match, seconds, st);
	}
	tmp = talloc_new(l);
	quoted = talloc_asprintf(tmp, "\"%s\"", if_match);
	if (quoted == NULL) {
		talloc_free(tmp);
		return ENOMEM;
	}
	ret = bfs_lease_put_once(l, quoted, false, seconds, st);
	if (ret == ESTALE) {
		req = s3_head_object_send(tmp, l->ev, l->c, l->key);
		if (s3_wait_for(req, l->ev) == 0 &&
		    s3_head_object_recv(req, tmp, &info, NULL) == 0 &&
		    info.etag != NULL && strcmp(info.etag, if_match) == 0) {
			ret = bfs_lease_put_once(l, if_match, false, seconds,
						 st);
		}
	}
	talloc_free(tmp);
	return ret;
}

/* The lease object as S3 has it now; 0 or an errno (ENOENT: none). */
static int bfs_lease_look(struct bfs_lease *l, TALLOC_CTX *mem_ctx,
			  struct s3_object_info *info, const char **holder,
			  const char **seconds, struct s3_status *st)
{
	struct tevent_req *req = s3_head_object_send(mem_ctx, l->ev, l->c,
						     l->key);
	int ret = s3_wait_for(req, l->ev);
	size_t i;

	if (ret == 0) {
		ret = s3_head_object_recv(req, mem_ctx, info, st);
	}
	*holder = *seconds = NULL;
	for (i = 0; ret == 0 && i < info->n_meta; i++) {
		if (strcmp(info->meta[i].name, BFS_LEASE_HOLDER) == 0) {
			*holder = info->meta[i].value;
		} else if (strcmp(info->meta[i].name, BFS_LEASE_SECONDS) == 0) {
			*seconds = info->meta[i].value;
		}
	}
	return ret;
}

static void bfs_lease_log(const struct bfs_lease *l, const char *what, int ret,
			  const struct s3_status *st)
{
	bfs_log(BFS_LOG_ERR, "bucketfs: lease s3 object %s: %s: %s%s%s",
		l->key, what, strerror(ret), st->code[0] ? " " : "", st->code);
}

enum bfs_lease_result bfs_lease_take(struct bfs_lease *l)
{
	TALLOC_CTX *tmp = talloc_new(l);
	struct timespec sent = bfs_lease_now();
	struct s3_status st = {0};
	struct s3_object_info info = {0};
	const char *holder, *seconds;
	enum bfs_lease_result r = BFS_LEASE_ERROR;
	int ret;

	ret = bfs_lease_put(l, NULL, true, l->seconds, &st);
	if (ret == 0) {
		r = BFS_LEASE_TAKEN;
		goto out;
	}
	if (ret != ESTALE) {
		bfs_lease_log(l, "cannot take it", ret, &st);
		goto out;
	}
	ret = bfs_lease_look(l, tmp, &info, &holder, &seconds, &st);
	if (ret == ENOENT) {
		r = BFS_LEASE_HELD; /* released meanwhile: the next try */
		goto out;
	}
	if (ret != 0) {
		bfs_lease_log(l, "cannot look at it", ret, &st);
		goto out;
	}
	if (holder != NULL && strcmp(holder, l->holder) == 0) {
		/* Ours: the answer to our write was lost on its way. */
		talloc_free(l->etag);
		l->etag = talloc_steal(l, info.etag);
		r = BFS_LEASE_TAKEN;
		goto out;
	}
	if (!bfs_lease_expired(info.mtime, info.server_now, seconds)) {
		r = BFS_LEASE_HELD;
		goto out;
	}
	if (seconds != NULL && strcmp(seconds, "0") == 0) {
		bfs_log(BFS_LOG_NOTICE, "bucketfs: lease s3 object %s: given "
			"back by %s: taking it", l->key,
			holder != NULL ? holder : "(nobody)");
	} else {
		bfs_log(BFS_LOG_NOTICE, "bucketfs: lease s3 object %s: %s did "
			"not renew it for %" PRId64 " s: taking it over", l->key,
			holder != NULL ? holder : "(nobody)",
			(int64_t)(info.server_now - info.mtime));
	}
	sent = bfs_lease_now();
	ret = bfs_lease_put(l, info.etag, false, l->seconds, &st);
	if (ret == 0) {
		r = BFS_LEASE_TAKEN;
	} else if (ret == ESTALE) {
		r = BFS_LEASE_HELD; /* another node was quicker */
	} else {
		bfs_lease_log(l, "cannot take it over", ret, &st);
	}
out:
	if (r == BFS_LEASE_TAKEN) {
		l->sent = sent;
	}
	talloc_free(tmp);
	return r;
}

int bfs_lease_renew(struct bfs_lease *l)
{
	TALLOC_CTX *tmp;
	struct timespec sent = bfs_lease_now();
	struct s3_status st = {0};
	struct s3_object_info info = {0};
	const char *holder, *seconds;
	int ret;

	if (l->etag == NULL) {
		return ESTALE;
	}
	if (bfs_lease_since(l->sent) > l->seconds - BFS_LEASE_MARGIN) {
		bfs_log(BFS_LOG_ERR, "bucketfs: lease s3 object %s: not renewed "
			"for %.0f s: given up", l->key,
			bfs_lease_since(l->sent));
		TALLOC_FREE(l->etag);
		return ETIMEDOUT;
	}
	ret = bfs_lease_put(l, l->etag, false, l->seconds, &st);
	if (ret == 0) {
		l->sent = sent;
		return 0;
	}
	if (ret != ESTALE) {
		bfs_lease_log(l, "cannot renew it (trying again)", ret, &st);
		return ret;
	}
	tmp = talloc_new(l);
	ret = bfs_lease_look(l, tmp, &info, &holder, &seconds, &st);
	if (ret == 0 && holder != NULL && strcmp(holder, l->holder) == 0) {
		/* Our renewal went through; its answer did not. */
		talloc_free(l->etag);
		l->etag = talloc_steal(l, info.etag);
		l->sent = sent;
		talloc_free(tmp);
		return 0;
	}
	bfs_log(BFS_LOG_ERR, "bucketfs: lease s3 object %s: lost to %s",
		l->key, ret == 0 && holder != NULL ? holder : "another writer");
	TALLOC_FREE(l->etag);
	talloc_free(tmp);
	return ESTALE;
}

int bfs_lease_release(struct bfs_lease *l)
{
	struct s3_status st = {0};
	int ret;

	if (l->etag == NULL) {
		return 0;
	}
	ret = bfs_lease_put(l, l->etag, false, 0, &st);
	if (ret != 0 && ret != ESTALE) {
		bfs_lease_log(l, "cannot give it back (it expires by itself)",
			      ret, &st);
	}
	TALLOC_FREE(l->etag);
	return ret == ESTALE ? 0 : ret;
}
