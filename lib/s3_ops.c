/*
 * Typed S3 operations.  Each builds an s3_request, lets the engine send,
 * sign and retry it, and interprets the answer.
 */
#include "s3_ops.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/md5.h>

#include "bfs_log.h"

/* ---- shared plumbing ---------------------------------------------------- */

/* The common state of an operation: one engine request, its answer. */
struct s3_op_state {
	struct s3_response *resp;
	struct s3_status st;
};

static void s3_op_done(struct tevent_req *subreq);

static struct tevent_req *s3_op_send(TALLOC_CTX *mem_ctx,
				     struct tevent_context *ev,
				     struct s3_client *c,
				     const struct s3_request *r, size_t state_size,
				     const char *type, void *pstate)
{
	struct tevent_req *req, *subreq;

	req = _tevent_req_create(mem_ctx, pstate, state_size, type, __location__);
	if (req == NULL) {
		return NULL;
	}
	subreq = s3_request_send(*(void **)pstate, ev, c, r);
	if (tevent_req_nomem(subreq, req)) {
		return tevent_req_post(req, ev);
	}
	tevent_req_set_callback(subreq, s3_op_done, req);
	return req;
}

static void s3_op_done(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	/* Every op state starts with struct s3_op_state. */
	struct s3_op_state *s = _tevent_req_data(req);
	int ret = s3_request_recv(subreq, s, &s->resp, &s->st);

	TALLOC_FREE(subreq);
	if (tevent_req_error(req, ret)) {
		return;
	}
	tevent_req_done(req);
}

static int s3_op_recv(struct tevent_req *req, struct s3_status *st)
{
	struct s3_op_state *s = _tevent_req_data(req);
	enum tevent_req_state state;
	uint64_t err = 0;

	if (st != NULL) {
		*st = s->st;
	}
	if (tevent_req_is_error(req, &state, &err)) {
		if (st != NULL) {
			if (state == TEVENT_REQ_NO_MEMORY) {
				err = ENOMEM;
			}
			st->err = (int)err;
		}
		return err != 0 ? (int)err : EIO;
	}
	return 0;
}

int s3_wait_for(struct tevent_req *req, struct tevent_context *ev)
{
	int ret;

	if (req == NULL) {
		return ENOMEM; /* what a _send failing says */
	}
	errno = 0;
	if (tevent_req_poll(req, ev)) {
		return 0;
	}
	/*
	 * Not the request's failure (its _recv says those) but the loop's:
	 * epoll failed, or the loop was entered from inside itself.  The
	 * request is still in progress and waiting again would not help.
	 * Callers pass the errno on as they would an S3 error's: the log
	 * line saying what it was is born here.
	 */
	ret = errno != 0 ? errno : EIO;
	bfs_log(BFS_LOG_ERR, "bucketfs: the event loop failed while waiting "
		"for an S3 request: %s", strerror(ret));
	return ret;
}

/* ---- HeadObject ----------------------------------------------------------- */

struct s3_head_state {
	struct s3_op_state op;
};

struct tevent_req *s3_head_object_send(TALLOC_CTX *mem_ctx,
				       struct tevent_context *ev,
				       struct s3_client *c, const char *key)
{
	struct s3_head_state *s;
	const struct s3_request r = {
		.method = "HEAD", .key = key, .idempotent = true,
	};

	return s3_op_send(mem_ctx, ev, c, &r, sizeof(*s), "struct s3_head_state", &s);
}

int s3_head_object_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
			struct s3_object_info *info, struct s3_status *st)
{
	struct s3_head_state *s = tevent_req_data(req, struct s3_head_state);
	int ret = s3_op_recv(req, st);

	if (ret == 0) {
		info->size = s->op.resp->content_length;
		info->etag = talloc_steal(mem_ctx, s->op.resp->etag);
		info->mtime = s->op.resp->last_modified;
		info->server_now = s->op.resp->date;
		info->meta = talloc_steal(mem_ctx, s->op.resp->meta);
		info->n_meta = s->op.resp->n_meta;
	}
	tevent_req_received(req);
	return ret;
}

/* ---- GetObject (range) ---------------------------------------------------- */

struct s3_get_state {
	struct s3_op_state op;
	struct s3_body_sink sink;
	uint8_t *buf;
	uint64_t offset;
	size_t len;
	size_t got;
	struct s3_kv *meta;	/* the object's user metadata */
	size_t n_meta;
	const char *if_match;	/* the ETag asked for (unquoted), or NULL */
};

static int s3_get_begin(void *priv)
{
	struct s3_get_state *s = priv;

	s->got = 0;
	return 0;
}

static int s3_get_write(void *priv, const void *data, size_t len)
{
	struct s3_get_state *s = priv;

	if (len > s->len - s->got) {
		/* More than we asked for: a server ignoring Range. */
		return EPROTO;
	}
	memcpy(s->buf + s->got, data, len);
	s->got += len;
	return 0;
}

bool s3_md5_from_hex(const char *etag, unsigned char md[16])
{
	unsigned i;

	for (i = 0; etag != NULL && i < 32; i++) {
		if (!isxdigit((unsigned char)etag[i])) {
			return false;
		}
	}
	if (etag == NULL || etag[32] != '\0') {
		return false;
	}
	for (i = 0; i < 16; i++) {
		unsigned v = 0;

		sscanf(etag + 2 * i, "%2x", &v);
		md[i] = (unsigned char)v;
	}
	return true;
}

void s3_md5_to_hex(const unsigned char md[16], char hex[33])
{
	unsigned i;

	for (i = 0; i < 16; i++) {
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	}
}

/* Are data's bytes the ones whose MD5 is want? */
static bool s3_md5_matches(const uint8_t *data, size_t len,
			   const unsigned char want[16])
{
	unsigned char md[MD5_DIGEST_LENGTH];

	EVP_Digest(data, len, md, NULL, EVP_md5(), NULL);
	return memcmp(md, want, sizeof(md)) == 0;
}

/*
 * Whether an answer's ETag (its quotes gone) names the version asked for:
 * a proxy may weaken it (W/"..."), which says nothing of the bytes.
 */
static bool s3_etag_same(const char *got, const char *want)
{
	size_t n;

	if (strncmp(got, "W/", 2) == 0) {
		got += 2;
	}
	n = strlen(got);
	if (n >= 2 && got[0] == '"' && got[n - 1] == '"') {
		return n - 2 == strlen(want) && strncmp(got + 1, want, n - 2) == 0;
	}
	return strcmp(got, want) == 0;
}

/*
 * Is the body the range we asked for?  Servers and proxies that cut a body
 * short while saying so consistently in Content-Length, or answer another
 * range, pass curl's checks; Content-Range tells.  Where the body is the
 * whole object, its checksum must hold: range GETs carry none, whole
 * objects do.
 */
static int s3_get_end(void *priv, const struct s3_body_info *info)
{
	struct s3_get_state *s = priv;
	unsigned char md[16];
	bool whole;

	TALLOC_FREE(s->meta);
	s->n_meta = 0;
	/*
	 * If-Match is the server's to check, but not every server does
	 * (s3rver ignores it), and a proxy in front of one may check it apart
	 * from the GET it forwards: an answer whose ETag is not the one asked
	 * for is another version's bytes (and metadata), never to be mixed
	 * with ours.
	 */
	if (s->if_match != NULL && info->etag != NULL &&
	    !s3_etag_same(info->etag, s->if_match)) {
		return ESTALE;
	}
	if (info->n_meta > 0) {
		s->meta = talloc_array(s, struct s3_kv, info->n_meta);
		for (size_t i = 0; s->meta != NULL && i < info->n_meta; i++) {
			s->meta[i].name = talloc_strdup(s->meta, info->meta[i].name);
			s->meta[i].value = talloc_strdup(s->meta, info->meta[i].value);
			if (s->meta[i].name == NULL || s->meta[i].value == NULL) {
				break; /* dropped, as a malformed one would be */
			}
			s->n_meta = i + 1;
		}
	}
	if (info->http_status == 206) {
		if (!info->has_range || info->range_first != s->offset ||
		    info->range_last - info->range_first + 1 != s->got ||
		    (info->range_last != s->offset + s->len - 1 &&
		     info->range_last != info->range_total - 1)) {
			return EPROTO;
		}
		whole = info->range_first == 0 &&
			info->range_last == info->range_total - 1;
	} else {
		/* 200: the whole object (s3_get_write refused any more). */
		whole = true;
	}
	if (!whole) {
		return 0;
	}
	/*
	 * S3's own checksum of the object where it sent one (checksum mode);
	 * else the ETag, where it is the MD5 of the bytes: not for SSE-KMS
	 * or SSE-C (an opaque ETag), nor a multipart one ("...-N", not hex).
	 */
	if (info->cksum != S3_CKSUM_NONE && !info->cksum_composite) {
		return s3_cksum_matches(info->cksum, info->cksum_value, s->buf,
					s->got) ? 0 : EBADMSG;
	}
	if (!info->etag_not_md5 && s3_md5_from_hex(info->etag, md) &&
	    !s3_md5_matches(s->buf, s->got, md)) {
		return EBADMSG;
	}
	return 0;
}

struct tevent_req *s3_get_range_send(TALLOC_CTX *mem_ctx,
				     struct tevent_context *ev,
				     struct s3_client *c, const char *key,
				     uint64_t offset, size_t len, void *buf,
				     const char *if_match)
{
	struct tevent_req *req, *subreq;
	struct s3_get_state *s;
	struct s3_kv h[3];
	size_t nh = 0;
	char range[64], *quoted = NULL;

	req = tevent_req_create(mem_ctx, &s, struct s3_get_state);
	if (req == NULL) {
		return NULL;
	}
	s->buf = buf;
	s->offset = offset;
	s->len = len;
	s->sink = (struct s3_body_sink){s3_get_begin, s3_get_write, s,
					s3_get_end};
	if (len == 0) {
		tevent_req_done(req);
		return tevent_req_post(req, ev);
	}
	snprintf(range, sizeof(range), "bytes=%" PRIu64 "-%" PRIu64, offset,
		 offset + len - 1);
	h[nh++] = (struct s3_kv){"Range", range};
	if (offset == 0) {
		/* The range may be the whole object: ask for its checksum. */
		h[nh++] = (struct s3_kv){"x-amz-checksum-mode", "ENABLED"};
	}
	if (if_match != NULL) {
		quoted = talloc_asprintf(s, "\"%s\"", if_match);
		if (tevent_req_nomem(quoted, req)) {
			return tevent_req_post(req, ev);
		}
		h[nh++] = (struct s3_kv){"If-Match", quoted};
		s->if_match = talloc_strdup(s, if_match);
		if (tevent_req_nomem(s->if_match, req)) {
			return tevent_req_post(req, ev);
		}
	}
	{
		const struct s3_request r = {
			.method = "GET", .key = key, .headers = h,
			.n_headers = nh, .idempotent = true, .sink = &s->sink,
		};
		subreq = s3_request_send(s, ev, c, &r);
	}
	if (tevent_req_nomem(subreq, req)) {
		return tevent_req_post(req, ev);
	}
	tevent_req_set_callback(subreq, s3_op_done, req);
	return req;
}

size_t s3_get_range_meta(struct tevent_req *req, const struct s3_kv **meta)
{
	struct s3_get_state *s = tevent_req_data(req, struct s3_get_state);

	*meta = s->meta;
	return s->n_meta;
}

int s3_get_range_recv(struct tevent_req *req, size_t *nread,
		      struct s3_status *st)
{
	struct s3_get_state *s = tevent_req_data(req, struct s3_get_state);
	int ret = s3_op_recv(req, st);

	if (ret == 0 && s->op.resp != NULL && s->op.resp->http_status == 200 &&
	    s->got > 0) {
		/*
		 * 200 instead of 206: the server sent the whole object.  Fine
		 * if that is exactly what we asked for (offset 0), else wrong.
		 */
		if (s->op.resp->has_content_length &&
		    s->op.resp->content_length > s->len) {
			ret = EPROTO;
		}
	}
	if (ret == 0) {
		*nread = s->got;
	}
	tevent_req_received(req);
	return ret;
}

/* ---- ListObjectsV2 -------------------------------------------------------- */

struct s3_list_state {
	struct s3_op_state op;
	struct s3_body_sink sink;
	struct s3_xml_parser *parser;
	int parse_err;
};

static int s3_list_begin(void *priv)
{
	struct s3_list_state *s = priv;

	TALLOC_FREE(s->parser);
	s->parser = s3_xml_parser_new(s, S3_XML_LISTING);
	return s->parser != NULL ? 0 : ENOMEM;
}

static int s3_list_write(void *priv, const void *data, size_t len)
{
	struct s3_list_state *s = priv;

	return s3_xml_parser_feed(s->parser, data, len, false);
}

/*
 * The whole body is in: the document must be complete.  One cut short
 * with a Content-Length that says so is a broken answer, asked again.
 */
static int s3_list_end(void *priv, const struct s3_body_info *info)
{
	struct s3_list_state *s = priv;

	(void)info;
	s->parse_err = s3_xml_parser_feed(s->parser, "", 0, true);
	return s->parse_err != 0 ? EBADMSG : 0;
}

struct tevent_req *s3_list_send(TALLOC_CTX *mem_ctx, struct tevent_context *ev,
				struct s3_client *c, const char *prefix,
				const char *delimiter, const char *token,
				unsigned max_keys)
{
	struct tevent_req *req, *subreq;
	struct s3_list_state *s;
	struct s3_kv q[6];
	size_t nq = 0;
	char mk[16];

	req = tevent_req_create(mem_ctx, &s, struct s3_list_state);
	if (req == NULL) {
		return NULL;
	}
	s->sink = (struct s3_body_sink){s3_list_begin, s3_list_write, s,
					s3_list_end};
	/* XML 1.0 cannot hold every byte a key may: ask for them encoded. */
	q[nq++] = (struct s3_kv){"encoding-type", "url"};
	q[nq++] = (struct s3_kv){"list-type", "2"};
	q[nq++] = (struct s3_kv){"prefix", prefix ? prefix : ""};
	if (delimiter != NULL) {
		q[nq++] = (struct s3_kv){"delimiter", delimiter};
	}
	if (token != NULL) {
		q[nq++] = (struct s3_kv){"continuation-token", token};
	}
	if (max_keys != 0) {
		snprintf(mk, sizeof(mk), "%u", max_keys);
		q[nq++] = (struct s3_kv){"max-keys", mk};
	}
	{
		const struct s3_request r = {
			.method = "GET", .query = q, .n_query = nq,
			.idempotent = true, .sink = &s->sink,
		};
		subreq = s3_request_send(s, ev, c, &r);
	}
	if (tevent_req_nomem(subreq, req)) {
		return tevent_req_post(req, ev);
	}
	tevent_req_set_callback(subreq, s3_op_done, req);
	return req;
}

int s3_list_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		 struct s3_listing **listing, struct s3_status *st)
{
	struct s3_list_state *s = tevent_req_data(req, struct s3_list_state);
	int ret = s3_op_recv(req, st);

	if (ret == EBADMSG && st != NULL && s->parser != NULL) {
		s3_status_set(st, "MalformedListing",
			      s3_xml_parser_error(s->parser), NULL);
	}
	if (ret == 0) {
		*listing = talloc_steal(mem_ctx, s3_xml_listing(s->parser));
		ret = s3_listing_url_decode(*listing);
		if (ret != 0) {
			TALLOC_FREE(*listing);
			if (st != NULL) {
				st->err = ret;
				s3_status_set(st, "MalformedListing",
					      "bad escape in a url-encoded key",
					      NULL);
			}
		}
	}
	tevent_req_received(req);
	return ret;
}

/* ---- PutObject ------------------------------------------------------------ */

struct s3_etag_state {
	struct s3_op_state op;
	char cksum[S3_CKSUM_B64_MAX];	/* a part's CRC32C, or "" */
};

static void s3_content_md5(const void *data, size_t len, char out[32])
{
	unsigned char md[MD5_DIGEST_LENGTH];

	/* MD5 is what S3's Content-MD5 integrity check takes. */
	EVP_Digest(data, len, md, NULL, EVP_md5(), NULL);
	EVP_EncodeBlock((unsigned char *)out, md, sizeof(md));
}

/*
 * A request that carries S3's additional checksum (ck_name: ck_value)
 * while the client sends them; a server that refuses the header gets the
 * same request again without it, and none from then on.
 */
struct s3_ck_state {
	struct s3_op_state op;	/* first: s3_op_recv reads it */
	struct tevent_context *ev;
	struct s3_client *c;
	struct s3_request r;
	struct s3_kv h[2 + S3_META_MAX];
	size_t n_plain;		/* headers but the checksum one */
	bool with_ck;
};

static void s3_ck_done(struct tevent_req *subreq);

static bool s3_ck_start(struct tevent_req *req)
{
	struct s3_ck_state *s = tevent_req_data(req, struct s3_ck_state);
	struct tevent_req *subreq;

	s->r.headers = s->h;
	s->r.n_headers = s->n_plain + (s->with_ck ? 1 : 0);
	subreq = s3_request_send(s, s->ev, s->c, &s->r);
	if (tevent_req_nomem(subreq, req)) {
		return false;
	}
	tevent_req_set_callback(subreq, s3_ck_done, req);
	return true;
}

static void s3_ck_done(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct s3_ck_state *s = tevent_req_data(req, struct s3_ck_state);
	int ret = s3_request_recv(subreq, s, &s->op.resp, &s->op.st);

	TALLOC_FREE(subreq);
	if (ret != 0 && s->with_ck && s3_cksum_refused(&s->op.st)) {
		s3_client_upload_cksum_off(s->c, &s->op.st);
		s->with_ck = false;
		s3_ck_start(req);
		return;
	}
	if (tevent_req_error(req, ret)) {
		return;
	}
	tevent_req_done(req);
}

/*
 * r with headers h[0..n) (at most 1 + S3_META_MAX), and the checksum header ck (its
 * value copied) while the client sends checksums.
 */
static struct tevent_req *s3_ck_send(TALLOC_CTX *mem_ctx,
				     struct tevent_context *ev,
				     struct s3_client *c,
				     const struct s3_request *r,
				     const struct s3_kv *h, size_t n,
				     const struct s3_kv *ck)
{
	struct tevent_req *req;
	struct s3_ck_state *s;
	size_t i;

	req = tevent_req_create(mem_ctx, &s, struct s3_ck_state);
	if (req == NULL) {
		return NULL;
	}
	s->ev = ev;
	s->c = c;
	s->r = *r;
	/* s3_request_send copies what it sends; a resend needs them too. */
	s->r.key = talloc_strdup(s, r->key);
	for (i = 0; i < n && i < sizeof(s->h) / sizeof(s->h[0]) - 1; i++) {
		s->h[i].name = talloc_strdup(s, h[i].name);
		s->h[i].value = talloc_strdup(s, h[i].value);
	}
	s->n_plain = i;
	s->with_ck = ck != NULL && s3_client_upload_cksum(c);
	if (s->with_ck) {
		s->h[i].name = talloc_strdup(s, ck->name);
		s->h[i].value = talloc_strdup(s, ck->value);
	}
	if (r->query != NULL) {
		struct s3_kv *q = talloc_array(s, struct s3_kv, r->n_query);

		if (tevent_req_nomem(q, req)) {
			return tevent_req_post(req, ev);
		}
		for (i = 0; i < r->n_query; i++) {
			q[i].name = talloc_strdup(q, r->query[i].name);
			q[i].value = talloc_strdup(q, r->query[i].value);
		}
		s->r.query = q;
	}
	if (!s3_ck_start(req)) {
		return tevent_req_post(req, ev);
	}
	return req;
}

struct tevent_req *s3_put_object_send(TALLOC_CTX *mem_ctx,
				      struct tevent_context *ev,
				      struct s3_client *c, const char *key,
				      const void *data, size_t len,
				      const struct s3_kv *meta, size_t n_meta)
{
	char md5[32], crc[S3_CKSUM_B64_MAX];
	struct s3_kv h[1 + S3_META_MAX] = {{"Content-MD5", md5}};
	const struct s3_kv ck = {"x-amz-checksum-crc32c", crc};
	const struct s3_request r = {
		.method = "PUT", .key = key,
		.body = data ? data : "", .body_len = len, .idempotent = true,
	};
	size_t i;

	for (i = 0; i < n_meta && i < S3_META_MAX; i++) {
		h[1 + i] = meta[i];
	}
	s3_content_md5(data ? data : "", len, md5);
	/* Stored with the object: a later GET with checksum mode checks it. */
	s3_cksum_b64(S3_CKSUM_CRC32C, data ? data : "", len, crc);
	return s3_ck_send(mem_ctx, ev, c, &r, h, 1 + i, &ck);
}

struct tevent_req *s3_put_object_if_send(TALLOC_CTX *mem_ctx,
					 struct tevent_context *ev,
					 struct s3_client *c, const char *key,
					 const void *data, size_t len,
					 const struct s3_kv *meta, size_t n_meta,
					 const char *if_match,
					 bool if_none_match)
{
	char md5[32];
	struct s3_kv h[2 + S3_META_MAX] = {{"Content-MD5", md5}};
	const struct s3_request r = {
		.method = "PUT", .key = key,
		.body = data ? data : "", .body_len = len, .idempotent = false,
	};
	size_t nh = 1, i;

	if (if_match != NULL) {
		h[nh++] = (struct s3_kv){"If-Match", if_match};
	} else if (if_none_match) {
		h[nh++] = (struct s3_kv){"If-None-Match", "*"};
	}
	for (i = 0; i < n_meta && nh < 1 + S3_META_MAX; i++) {
		h[nh++] = meta[i];
	}
	s3_content_md5(data ? data : "", len, md5);
	return s3_ck_send(mem_ctx, ev, c, &r, h, nh, NULL);
}

static int s3_etag_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
			char **etag, struct s3_status *st)
{
	struct s3_op_state *s = _tevent_req_data(req);
	int ret = s3_op_recv(req, st);

	if (ret == 0 && etag != NULL) {
		*etag = talloc_steal(mem_ctx, s->resp->etag);
	}
	tevent_req_received(req);
	return ret;
}

int s3_put_object_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		       char **etag, struct s3_status *st)
{
	return s3_etag_recv(req, mem_ctx, etag, st);
}

/* ---- DeleteObject --------------------------------------------------------- */

struct tevent_req *s3_delete_object_send(TALLOC_CTX *mem_ctx,
					 struct tevent_context *ev,
					 struct s3_client *c, const char *key)
{
	struct s3_op_state *s;
	const struct s3_request r = {
		.method = "DELETE", .key = key, .idempotent = true,
	};

	return s3_op_send(mem_ctx, ev, c, &r, sizeof(*s), "struct s3_op_state", &s);
}

int s3_delete_object_recv(struct tevent_req *req, struct s3_status *st)
{
	int ret = s3_op_recv(req, st);

	tevent_req_received(req);
	return ret;
}

/* ---- results carried in a 200 body (copy, complete) ----------------------- */

/*
 * CopyObject and CompleteMultipartUpload can answer 200 and still fail:
 * the body is then an <Error>.  Parse it and turn it into an errno.
 */
static int s3_result_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
			  char **etag, char **upload_id, struct s3_status *st)
{
	struct s3_op_state *s = _tevent_req_data(req);
	struct s3_xml_parser *p;
	struct s3_result_doc *doc;
	int ret = s3_op_recv(req, st);

	if (ret != 0) {
		goto out;
	}
	p = s3_xml_parser_new(s, S3_XML_RESULT);
	if (p == NULL) {
		ret = ENOMEM;
		goto out;
	}
	ret = s3_xml_parser_feed(p, s->resp->body, s->resp->body_len, true);
	if (ret != 0) {
		if (st != NULL) {
			st->err = ret;
			s3_status_set(st, "MalformedResult",
				      s3_xml_parser_error(p), NULL);
		}
		goto out;
	}
	doc = s3_xml_result(p);
	if (doc->is_error) {
		ret = s3_errno_from_code(doc->error.code, 500);
		if (st != NULL) {
			st->err = ret;
			s3_status_set(st, doc->error.code, doc->error.message,
				      doc->error.request_id);
		}
		goto out;
	}
	if (etag != NULL) {
		*etag = talloc_steal(mem_ctx, doc->etag);
	}
	if (upload_id != NULL) {
		*upload_id = talloc_steal(mem_ctx, doc->upload_id);
		if (*upload_id == NULL) {
			ret = EPROTO;
		}
	}
out:
	tevent_req_received(req);
	return ret;
}

/* ---- CopyObject ------------------------------------------------------------ */

struct tevent_req *s3_copy_object_send(TALLOC_CTX *mem_ctx,
				       struct tevent_context *ev,
				       struct s3_client *c, const char *src_key,
				       const char *dst_key,
				       const char *if_match)
{
	struct s3_op_state *s;
	TALLOC_CTX *tmp = talloc_new(mem_ctx);
	char *src = talloc_asprintf(tmp, "/%s/%s", s3_client_bucket(c),
				    s3_uri_encode(tmp, src_key, true));
	struct tevent_req *req;

	if (src == NULL) {
		talloc_free(tmp);
		return NULL;
	}
	{
		const struct s3_kv h[] = {
			{"x-amz-copy-source", src},
			{"x-amz-copy-source-if-match", if_match},
		};
		const struct s3_request r = {
			.method = "PUT", .key = dst_key, .headers = h,
			.n_headers = if_match != NULL ? 2 : 1,
			.idempotent = true,
		};
		req = s3_op_send(mem_ctx, ev, c, &r, sizeof(*s), "struct s3_op_state",
				 &s);
	}
	talloc_free(tmp);
	return req;
}

int s3_copy_object_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
			char **etag, struct s3_status *st)
{
	return s3_result_recv(req, mem_ctx, etag, NULL, st);
}

/* ---- multipart -------------------------------------------------------------- */

struct tevent_req *s3_mpu_create_send(TALLOC_CTX *mem_ctx,
				      struct tevent_context *ev,
				      struct s3_client *c, const char *key,
				      bool cksum, const struct s3_kv *meta,
				      size_t n_meta)
{
	const struct s3_kv q[] = {{"uploads", ""}};
	const struct s3_kv ck = {"x-amz-checksum-algorithm", "CRC32C"};
	/* Not idempotent: a lost answer would leave an orphan upload. */
	const struct s3_request r = {
		.method = "POST", .key = key, .query = q, .n_query = 1,
	};

	return s3_ck_send(mem_ctx, ev, c, &r, meta,
			  n_meta < S3_META_MAX ? n_meta : S3_META_MAX,
			  cksum ? &ck : NULL);
}

bool s3_mpu_create_cksum(struct tevent_req *req)
{
	struct s3_ck_state *s = tevent_req_data(req, struct s3_ck_state);

	return s->with_ck;
}

int s3_mpu_create_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		       char **upload_id, struct s3_status *st)
{
	return s3_result_recv(req, mem_ctx, NULL, upload_id, st);
}

struct tevent_req *s3_mpu_part_send(TALLOC_CTX *mem_ctx,
				    struct tevent_context *ev,
				    struct s3_client *c, const char *key,
				    const char *upload_id, unsigned part_no,
				    const void *data, size_t len, bool cksum)
{
	struct s3_etag_state *s;
	struct tevent_req *req;
	char num[16], md5[32], crc[S3_CKSUM_B64_MAX] = "";
	const struct s3_kv q[] = {{"partNumber", num}, {"uploadId", upload_id}};
	const struct s3_kv h[] = {{"Content-MD5", md5},
				  {"x-amz-checksum-crc32c", crc}};
	const struct s3_request r = {
		.method = "PUT", .key = key, .query = q, .n_query = 2,
		.headers = h, .n_headers = cksum ? 2 : 1,
		.body = data ? data : "", .body_len = len, .idempotent = true,
	};

	snprintf(num, sizeof(num), "%u", part_no);
	s3_content_md5(data ? data : "", len, md5);
	if (cksum) {
		/* The upload was created with CRC32C: every part says its own. */
		s3_cksum_b64(S3_CKSUM_CRC32C, data ? data : "", len, crc);
	}
	req = s3_op_send(mem_ctx, ev, c, &r, sizeof(*s), "struct s3_etag_state",
			 &s);
	if (req != NULL) {
		memcpy(s->cksum, crc, sizeof(crc));
	}
	return req;
}

int s3_mpu_part_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		     struct s3_part *part, struct s3_status *st)
{
	struct s3_etag_state *s = tevent_req_data(req, struct s3_etag_state);
	char *cksum = s->cksum[0] ? talloc_strdup(mem_ctx, s->cksum) : NULL;
	int ret = s3_etag_recv(req, mem_ctx, (char **)&part->etag, st);

	part->cksum = ret == 0 ? cksum : NULL;
	if (ret != 0) {
		talloc_free(cksum);
	}
	return ret;
}

struct tevent_req *s3_mpu_part_copy_send(TALLOC_CTX *mem_ctx,
					 struct tevent_context *ev,
					 struct s3_client *c, const char *key,
					 const char *upload_id,
					 unsigned part_no, const char *src_key,
					 uint64_t offset, uint64_t len,
					 const char *if_match)
{
	struct s3_op_state *s;
	TALLOC_CTX *tmp = talloc_new(mem_ctx);
	char *src = talloc_asprintf(tmp, "/%s/%s", s3_client_bucket(c),
				    s3_uri_encode(tmp, src_key, true));
	char *range = talloc_asprintf(tmp, "bytes=%" PRIu64 "-%" PRIu64,
				      offset, offset + len - 1);
	char num[16];
	struct tevent_req *req;

	if (src == NULL || range == NULL || len == 0) {
		talloc_free(tmp);
		return NULL;
	}
	snprintf(num, sizeof(num), "%u", part_no);
	{
		const struct s3_kv q[] = {{"partNumber", num},
					  {"uploadId", upload_id}};
		const struct s3_kv h[] = {
			{"x-amz-copy-source", src},
			{"x-amz-copy-source-range", range},
			{"x-amz-copy-source-if-match", if_match},
		};
		const struct s3_request r = {
			.method = "PUT", .key = key, .query = q, .n_query = 2,
			.headers = h, .n_headers = if_match != NULL ? 3 : 2,
			.idempotent = true,
		};
		req = s3_op_send(mem_ctx, ev, c, &r, sizeof(*s),
				 "struct s3_op_state", &s);
	}
	talloc_free(tmp);
	return req;
}

int s3_mpu_part_copy_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
			  char **etag, struct s3_status *st)
{
	return s3_result_recv(req, mem_ctx, etag, NULL, st);
}

struct s3_complete_state {
	struct s3_op_state op;
	char *body;
};

struct tevent_req *s3_mpu_complete_send(TALLOC_CTX *mem_ctx,
					struct tevent_context *ev,
					struct s3_client *c, const char *key,
					const char *upload_id,
					const struct s3_part *parts,
					size_t n_parts)
{
	struct tevent_req *req, *subreq;
	struct s3_complete_state *s;
	const struct s3_kv q[] = {{"uploadId", upload_id}};
	size_t i;

	req = tevent_req_create(mem_ctx, &s, struct s3_complete_state);
	if (req == NULL) {
		return NULL;
	}
	s->body = talloc_strdup(s, "<CompleteMultipartUpload>");
	for (i = 0; i < n_parts && s->body != NULL; i++) {
		/* ETags are hex in quotes: nothing to escape. */
		s->body = talloc_asprintf_append_buffer(
			s->body,
			"<Part><PartNumber>%u</PartNumber>"
			"<ETag>\"%s\"</ETag>%s%s%s</Part>",
			parts[i].part_no, parts[i].etag,
			parts[i].cksum ? "<ChecksumCRC32C>" : "",
			parts[i].cksum ? parts[i].cksum : "",
			parts[i].cksum ? "</ChecksumCRC32C>" : "");
	}
	if (s->body != NULL) {
		s->body = talloc_strdup_append_buffer(
			s->body, "</CompleteMultipartUpload>");
	}
	if (tevent_req_nomem(s->body, req)) {
		return tevent_req_post(req, ev);
	}
	{
		/* Completing twice is harmless (NoSuchUpload the second
		 * time is checked by the caller against the object). */
		const struct s3_request r = {
			.method = "POST", .key = key, .query = q, .n_query = 1,
			.body = s->body, .body_len = strlen(s->body),
			.idempotent = true,
		};
		subreq = s3_request_send(s, ev, c, &r);
	}
	if (tevent_req_nomem(subreq, req)) {
		return tevent_req_post(req, ev);
	}
	tevent_req_set_callback(subreq, s3_op_done, req);
	return req;
}

int s3_mpu_complete_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
			 char **etag, struct s3_status *st)
{
	return s3_result_recv(req, mem_ctx, etag, NULL, st);
}

struct tevent_req *s3_mpu_abort_send(TALLOC_CTX *mem_ctx,
				     struct tevent_context *ev,
				     struct s3_client *c, const char *key,
				     const char *upload_id)
{
	struct s3_op_state *s;
	const struct s3_kv q[] = {{"uploadId", upload_id}};
	const struct s3_request r = {
		.method = "DELETE", .key = key, .query = q, .n_query = 1,
		.idempotent = true,
	};

	return s3_op_send(mem_ctx, ev, c, &r, sizeof(*s), "struct s3_op_state", &s);
}

int s3_mpu_abort_recv(struct tevent_req *req, struct s3_status *st)
{
	int ret = s3_op_recv(req, st);

	tevent_req_received(req);
	return ret;
}
