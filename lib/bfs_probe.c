/*
 * The tree connect's look at a share's bucket, and why it cannot be
 * served (see bfs_probe.h).
 */
#include "bfs_probe.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <time.h>
#include <openssl/evp.h>
#include <talloc.h>
#include <tevent.h>

#include "bfs_index.h"
#include "bfs_log.h"
#include "bfs_share.h"
#include "s3_client.h"
#include "s3_ops.h"

const char *bfs_probe_cause(int err)
{
	switch (err) {
	case EACCES:
		return "the S3 server refused the credentials";
	case ENOENT:
		return "the bucket does not exist";
	case ECONNREFUSED:
	case EHOSTUNREACH:
	case ETIMEDOUT:
	case ECONNRESET:
		return "the S3 endpoint is unreachable";
	case EPROTO:
		return "TLS with the S3 endpoint failed";
	case ENXIO:
		return "the bucket is in another region or needs another "
		       "endpoint";
	default:
		return "the S3 server answered with an error";
	}
}

/*
 * One cheap request that proves endpoint, bucket and credentials, paid by
 * every tree connect: HeadBucket, which costs the same on every server
 * (a one-key listing costs some S3-compatible servers a scan of the
 * bucket).  HEAD answers carry no error document, so a failure is asked
 * again as a listing, whose answer says why; a server without HeadBucket
 * is served if the listing works.  A share of a prefix lists at once:
 * credentials limited to a prefix may list it but not head the bucket.
 */
/*
 * A probe holds the client's whole connection (the tree connect is
 * synchronous in smbd): a server that takes the connection and never
 * answers must not hold it for the share's 'request timeout' times its
 * 'retries' + 1, twice over (the HEAD, then the listing asked after it:
 * 5 minutes at the defaults; Windows drops a connection whose request
 * waits about a minute).  Each look is given BFS_PROBE_TIMEOUT_MS and
 * BFS_PROBE_RETRIES at most (two 503s then an answer still prove the
 * bucket), and no HTTP answer at all is not asked again as a listing.  A
 * one-key listing that takes a server longer than that counts as the
 * server being away, as a HEAD would.
 */
#define BFS_PROBE_TIMEOUT_MS 8000
#define BFS_PROBE_RETRIES 2

/* One look at the bucket (the tree connect's probe): 0, or an errno. */
static int bfs_probe_once(struct bfs_conn *bc, struct s3_status *st)
{
	TALLOC_CTX *frame = talloc_new(bc);	/* the requests and answers */
	struct s3_object_info info = {0};
	struct s3_listing *l = NULL;
	struct tevent_req *req;
	int ret;

	if (frame == NULL) {
		return ENOMEM;
	}
	if (bc->prefix[0] == '\0') {
		req = s3_head_object_send(frame, bc->sync_ev, bc->s3, NULL);
		ret = s3_wait_for(req, bc->sync_ev);
		if (ret != 0) {
			TALLOC_FREE(frame);
			return ret;
		}
		ret = s3_head_object_recv(req, frame, &info, st);
		if (ret == 0 || st->http_status == 0) {
			/* Proved, or no answer that a listing would explain. */
			TALLOC_FREE(frame);
			return ret;
		}
	}
	/* A HEAD has no error document: a listing says why. */
	req = s3_list_send(frame, bc->sync_ev, bc->s3, bc->prefix, "/", NULL,
			   1);
	ret = s3_wait_for(req, bc->sync_ev);
	if (ret != 0) {
		TALLOC_FREE(frame);
		return ret;
	}
	*st = (struct s3_status){0};
	ret = s3_list_recv(req, frame, &l, st);
	TALLOC_FREE(frame);
	return ret;
}

/* bfs_probe_once under the probe's limits, bc->s3's own put back after. */
static int bfs_probe_looks(struct bfs_conn *bc, struct s3_status *st)
{
	unsigned timeout = bc->cfg.request_timeout_ms;
	int ret;

	s3_client_set_limits(bc->s3,
			     timeout != 0 && timeout < BFS_PROBE_TIMEOUT_MS ?
				     timeout : BFS_PROBE_TIMEOUT_MS,
			     bc->cfg.max_retries < BFS_PROBE_RETRIES ?
				     bc->cfg.max_retries : BFS_PROBE_RETRIES);
	ret = bfs_probe_once(bc, st);
	s3_client_set_limits(bc->s3, timeout, bc->cfg.max_retries);
	return ret;
}

/*
 * The bucket is in region `region`, which the server named: sign for it
 * (and, on AWS's own endpoint, talk to that region's), as the AWS tools
 * do.  Not when smb.conf names a region: that is the admin's word.  The
 * region, endpoint and client belong to bc, as those they replace.
 */
static bool bfs_follow_region(struct bfs_conn *bc, bool endpoint_derived,
			      const char *region)
{
	char *r = talloc_strdup(bc, region);

	if (r == NULL || !s3_region_to_follow(bc->cfg.region, region)) {
		talloc_free(r);
		return false;
	}
	bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: bucket '%s' is in "
		"region %s, not %s: using %s (set 'bucketfs:region = %s' to "
		"skip this look-up)", bc->service, bc->cfg.bucket, region,
		bc->cfg.region, region, region);
	bc->cfg.region = r;
	if (endpoint_derived) {
		bc->cfg.endpoint = talloc_asprintf(
			bc, "https://s3.%s.amazonaws.com", region);
	}
	TALLOC_FREE(bc->s3);
	bc->s3 = bc->cfg.endpoint != NULL ?
			 s3_client_new(bc, bc->sync_ev, &bc->cfg) :
			 NULL;
	return bc->s3 != NULL;
}

/* One field of a tag: its length first, so no two lists of fields meet. */
static bool bfs_tag_field(EVP_MD_CTX *ctx, const char *field)
{
	uint64_t len = field != NULL ? strlen(field) + 1 : 0;

	return EVP_DigestUpdate(ctx, &len, sizeof(len)) == 1 &&
	       (len == 0 || EVP_DigestUpdate(ctx, field, len) == 1);
}

int bfs_probe_tag(const struct bfs_conn *bc, uint8_t tag[32])
{
	const struct s3_client_config *c = &bc->cfg;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	char flags[5] = {
		c->path_style ? 'p' : '-', c->verify_tls ? 't' : '-',
		c->anonymous ? 'a' : '-', c->requester_pays ? 'r' : '-', '\0',
	};
	unsigned int len = 0;
	bool ok;

	/* Digested, never stored: the secret cannot be read back from it. */
	ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
	     bfs_tag_field(ctx, "bucketfs probe 1") &&
	     bfs_tag_field(ctx, c->endpoint) && bfs_tag_field(ctx, c->region) &&
	     bfs_tag_field(ctx, c->bucket) && bfs_tag_field(ctx, bc->prefix) &&
	     bfs_tag_field(ctx, flags) && bfs_tag_field(ctx, c->ca_file) &&
	     bfs_tag_field(ctx, c->creds.access_key) &&
	     bfs_tag_field(ctx, c->creds.secret_key) &&
	     bfs_tag_field(ctx, c->creds.session_token) &&
	     EVP_DigestFinal_ex(ctx, tag, &len) == 1 && len == 32;
	EVP_MD_CTX_free(ctx);
	return ok ? 0 : ENOMEM;
}

/*
 * Seconds a proof is trusted: the share's TTL, at most
 * BFS_PROBE_TRUST_MAX; 0 (a TTL of 0, which trusts no listing either)
 * trusts none.
 */
static int64_t bfs_probe_trust(const struct bfs_conn *bc)
{
	return bc->ttl < 0 || bc->ttl > BFS_PROBE_TRUST_MAX ?
		       BFS_PROBE_TRUST_MAX : bc->ttl;
}

/*
 * Did a probe with what bc has now succeed within the trust?  A clock
 * that went back: no proof from the future.
 */
static bool bfs_probe_proven(struct bfs_conn *bc, const uint8_t tag[32])
{
	int64_t trust = bfs_probe_trust(bc);
	int64_t at = 0, now = (int64_t)time(NULL);

	if (bfs_index_proof_get(bc->index, tag, &at) != 0 || at > now ||
	    now - at >= trust) {
		return false;
	}
	bfs_log(BFS_LOG_INFO, "bucketfs: share %s: bucket '%s' answered a "
		"probe with these settings %" PRId64 " s ago: not asked again",
		bc->service, bc->cfg.bucket, now - at);
	return true;
}

/* Remember that the probe succeeded (a failure to costs the next a look). */
static void bfs_probe_note(struct bfs_conn *bc, const uint8_t tag[32])
{
	int ret = bfs_index_proof_put(bc->index, tag, (int64_t)time(NULL));

	if (ret != 0) {
		bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: cannot note the "
			"bucket's answer in the index: %s (the next connect "
			"asks S3 again)", bc->service, strerror(ret));
	}
}

int bfs_probe_bucket(struct bfs_conn *bc, bool region_set,
		     bool endpoint_derived)
{
	struct s3_status st = {0};
	uint8_t tag[32];
	/* A TTL of 0 trusts no proof: none is read or written. */
	bool tagged = bc->index != NULL && bfs_probe_trust(bc) > 0 &&
		      bfs_probe_tag(bc, tag) == 0;
	time_t listed;
	int ret;

	if (tagged && bfs_probe_proven(bc, tag)) {
		return 0;
	}
	ret = bfs_probe_looks(bc, &st);
	if (ret == 0 && tagged) {
		/*
		 * Only a look that needed no other region: one that did
		 * would be trusted without the region it found.
		 */
		bfs_probe_note(bc, tag);
	}
	if (ret != 0 && !region_set &&
	    bfs_follow_region(bc, endpoint_derived, st.region)) {
		st = (struct s3_status){0};
		ret = bfs_probe_looks(bc, &st);
	}
	if (ret == 0) {
		return 0;
	}
	/*
	 * S3 away (not a refusal) and this cache folder has served the
	 * share before: a box that reconnects during an outage reads what
	 * is cached; misses fail until S3 is back, then work again.
	 */
	if (s3_unreachable(ret, &st) &&
	    bfs_index_dir_listed(bc->index, bc->prefix, &listed) == 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: S3 at %s is "
			"unreachable (%s; HTTP %ld): serving what the cache "
			"holds until it is back", bc->service,
			bc->cfg.endpoint, st.code[0] ? st.code : strerror(ret),
			st.http_status);
		bc->s3_down_until = time(NULL) + BFS_OUTAGE_RETRY;
		return 0;
	}
	bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot serve bucket '%s' at "
		"%s: %s (%s; HTTP %ld%s%s%s%s)",
		bc->service, bc->cfg.bucket, bc->cfg.endpoint,
		bfs_probe_cause(ret),
		st.code[0] ? st.code : strerror(ret), st.http_status,
		st.message[0] ? "; " : "", st.message,
		st.region[0] ? "; the bucket is in region " : "", st.region);
	return ret;
}
