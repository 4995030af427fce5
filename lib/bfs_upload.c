/*
 * Uploading a local file as one S3 object (see bfs_upload.h).
 */
#include "bfs_upload.h"
#include "bfs_list.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/md5.h>

/* talloc's largest chunk is 256 MiB: bodies stay below it. */
#define BFS_UPLOAD_MAX_BUF (255ULL << 20)

/*
 * Part buffers held by this process's uploads, against its bound
 * (bfs_upload_set_memory).  One bound for the process: the engine's
 * upload threads share it, so the counters are under a lock.  An upload
 * may always have one part in flight, so a part larger than the bound
 * still goes, alone: memory stays within max(bound, one part) per
 * upload, and an upload another thread's parts keep waiting always has
 * a part of its own to bring it back (its part_done).
 */
static pthread_mutex_t bfs_upload_mem_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t bfs_upload_mem_limit = 256ULL << 20;
static uint64_t bfs_upload_mem_held, bfs_upload_mem_peak;

void bfs_upload_set_memory(uint64_t bytes)
{
	pthread_mutex_lock(&bfs_upload_mem_mu);
	bfs_upload_mem_limit = bytes;
	pthread_mutex_unlock(&bfs_upload_mem_mu);
}

uint64_t bfs_upload_memory_peak(void)
{
	uint64_t peak;

	pthread_mutex_lock(&bfs_upload_mem_mu);
	peak = bfs_upload_mem_peak;
	pthread_mutex_unlock(&bfs_upload_mem_mu);
	return peak;
}

/* Count len against the bound; always: even past it (a lone part). */
static bool bfs_upload_mem_take(uint64_t len, bool always)
{
	bool ok;

	pthread_mutex_lock(&bfs_upload_mem_mu);
	ok = always || bfs_upload_mem_held + len <= bfs_upload_mem_limit;
	if (ok) {
		bfs_upload_mem_held += len;
		if (bfs_upload_mem_held > bfs_upload_mem_peak) {
			bfs_upload_mem_peak = bfs_upload_mem_held;
		}
	}
	pthread_mutex_unlock(&bfs_upload_mem_mu);
	return ok;
}

static void bfs_upload_mem_give(uint64_t len)
{
	pthread_mutex_lock(&bfs_upload_mem_mu);
	bfs_upload_mem_held -= len;
	pthread_mutex_unlock(&bfs_upload_mem_mu);
}

struct bfs_upload_state {
	struct tevent_context *ev;
	struct s3_client *s3;
	const char *key;
	const char *copy_src;	/* UploadPartCopy from this key, not fd */
	int fd;
	uint64_t size;
	struct bfs_upload_params p;

	void *whole;		/* PutObject body */
	char *upload_id;
	struct s3_part *parts;
	unsigned n_parts, next_part, in_flight, done_parts;
	int err;		/* first failure of a multipart upload */
	struct bfs_part_ctx *flying;	/* the parts in flight */
	struct s3_status st;
	char *etag;
	bool cksum;		/* the upload was created with CRC32C */
};

struct bfs_part_ctx {
	struct bfs_part_ctx *prev, *next;	/* in the state's flying */
	struct bfs_upload_state *s;
	struct tevent_req *req;
	unsigned idx;
	void *buf;
	size_t len;		/* of buf, counted in bfs_upload_mem_held */
	bool heap;		/* buf is malloc's: over talloc's 256 MiB */
};

static int bfs_part_ctx_destructor(struct bfs_part_ctx *pc)
{
	if (pc->s != NULL) {
		BFS_LIST_REMOVE(pc->s->flying, pc);
	}
	if (pc->buf != NULL) {
		bfs_upload_mem_give(pc->len);
		if (pc->heap) {
			free(pc->buf);
		}
	}
	return 0;
}

/*
 * A part's body, counted against the process's bound: EAGAIN when it
 * would pass the bound and always is false.  Parts grow past talloc's
 * largest chunk only for objects over 255 MiB x 10,000 (S3 allows 5 TiB,
 * in parts of up to 5 GiB).
 */
static int bfs_part_buf(struct bfs_part_ctx *pc, size_t len, bool always)
{
	if (!bfs_upload_mem_take(len, always)) {
		return EAGAIN;
	}
	pc->heap = len > BFS_UPLOAD_MAX_BUF;
	pc->buf = pc->heap ? malloc(len) : talloc_size(pc, len);
	if (pc->buf == NULL) {
		bfs_upload_mem_give(len);
		return ENOMEM;
	}
	pc->len = len;
	return 0;
}

static void bfs_upload_put_done(struct tevent_req *subreq);
static struct tevent_req *bfs_upload_start_mpu(struct tevent_req *req);
static void bfs_upload_created(struct tevent_req *subreq);
static void bfs_upload_part_done(struct tevent_req *subreq);
static void bfs_upload_completed(struct tevent_req *subreq);
static void bfs_upload_checked(struct tevent_req *subreq);
static void bfs_upload_etag_fetched(struct tevent_req *subreq);
static void bfs_upload_aborted(struct tevent_req *subreq);
static bool bfs_upload_plan(uint64_t size, uint64_t *part_size,
			    unsigned *n_parts, uint64_t threshold);
static void bfs_upload_go(struct tevent_req *req);
static void bfs_upload_next(struct tevent_req *req);

int bfs_read_full(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done,
				  (off_t)(off + done));
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			return n < 0 ? errno : EIO;
		}
		done += (size_t)n;
	}
	return 0;
}

/* The params' metadata headers, as the state's own (they outlive send). */
static bool bfs_upload_keep_meta(struct bfs_upload_state *s)
{
	struct s3_kv *m;
	size_t i;

	if (s->p.n_meta == 0) {
		s->p.meta = NULL;
		return true;
	}
	m = talloc_array(s, struct s3_kv, s->p.n_meta);
	if (m == NULL) {
		return false;
	}
	for (i = 0; i < s->p.n_meta; i++) {
		m[i].name = talloc_strdup(m, s->p.meta[i].name);
		m[i].value = talloc_strdup(m, s->p.meta[i].value);
		if (m[i].name == NULL || m[i].value == NULL) {
			return false;
		}
	}
	s->p.meta = m;
	return true;
}

struct tevent_req *bfs_upload_send(TALLOC_CTX *mem_ctx,
				   struct tevent_context *ev,
				   struct s3_client *s3, const char *key,
				   int fd, uint64_t size,
				   const struct bfs_upload_params *p)
{
	struct bfs_upload_state *s;
	struct tevent_req *req, *subreq;
	int ret;

	req = tevent_req_create(mem_ctx, &s, struct bfs_upload_state);
	if (req == NULL) {
		return NULL;
	}
	*s = (struct bfs_upload_state){
		.ev = ev, .s3 = s3, .fd = fd, .size = size, .p = *p,
	};
	s->key = talloc_strdup(s, key);
	if (tevent_req_nomem(s->key, req) ||
	    (!bfs_upload_keep_meta(s) && tevent_req_nomem(NULL, req))) {
		return tevent_req_post(req, ev);
	}
	if (s->p.parallel == 0) {
		s->p.parallel = 1;
	}
	if (!bfs_upload_plan(size, &s->p.part_size, &s->n_parts,
			     s->p.multipart_threshold)) {
		s->whole = talloc_size(s, size > 0 ? size : 1);
		if (tevent_req_nomem(s->whole, req)) {
			return tevent_req_post(req, ev);
		}
		ret = bfs_read_full(fd, s->whole, size, 0);
		if (ret != 0) {
			tevent_req_error(req, ret);
			return tevent_req_post(req, ev);
		}
		subreq = s3_put_object_send(s, ev, s3, key, s->whole, size,
					    s->p.meta, s->p.n_meta);
		if (tevent_req_nomem(subreq, req)) {
			return tevent_req_post(req, ev);
		}
		tevent_req_set_callback(subreq, bfs_upload_put_done, req);
		return req;
	}
	return bfs_upload_start_mpu(req);
}

/* Parts of size bytes; *part_size grows to keep within S3's 10,000. */
static unsigned bfs_upload_cut(uint64_t size, uint64_t *part_size)
{
	unsigned n = (unsigned)((size + *part_size - 1) / *part_size);

	if (n > 10000) {
		*part_size = (size + 9999) / 10000;
		n = (unsigned)((size + *part_size - 1) / *part_size);
	}
	return n;
}

/*
 * How size bytes go up: false for one PutObject, true for a multipart
 * upload of *n_parts parts of *part_size (S3's bounds applied to it).
 */
static bool bfs_upload_plan(uint64_t size, uint64_t *part_size,
			    unsigned *n_parts, uint64_t threshold)
{
	if (*part_size < (5u << 20)) {
		*part_size = 5u << 20; /* S3's smallest part but the last */
	}
	if (*part_size > BFS_UPLOAD_MAX_BUF) {
		*part_size = BFS_UPLOAD_MAX_BUF; /* one talloc buffer each */
	}
	if ((size < threshold && size <= BFS_UPLOAD_MAX_BUF) ||
	    size <= *part_size) {
		return false;
	}
	*n_parts = bfs_upload_cut(size, part_size);
	return true;
}

bool bfs_upload_resumable(uint64_t size, const struct bfs_upload_params *p,
			  const struct bfs_upload_resume *r)
{
	uint64_t part_size = p->part_size;
	unsigned n_parts = 0;

	return r != NULL && r->upload_id != NULL &&
	       bfs_upload_plan(size, &part_size, &n_parts,
			       p->multipart_threshold) &&
	       part_size == r->part_size;
}

/* Take the parts a resumed upload has already: whole ones below size. */
static void bfs_upload_take_resume(struct bfs_upload_state *s)
{
	const struct bfs_upload_resume *r = s->p.resume;
	unsigned i;

	for (i = 0; i < r->n_parts && i < s->n_parts; i++) {
		if (r->parts[i].etag == NULL ||
		    (r->cksum && r->parts[i].cksum == NULL) ||
		    (uint64_t)(i + 1) * s->p.part_size > s->size) {
			continue;
		}
		s->parts[i] = (struct s3_part){
			.part_no = i + 1,
			.etag = talloc_strdup(s->parts, r->parts[i].etag),
			.cksum = r->cksum ?
				talloc_strdup(s->parts, r->parts[i].cksum) :
				NULL,
		};
		if (s->parts[i].etag == NULL ||
		    (r->cksum && s->parts[i].cksum == NULL)) {
			s->parts[i].etag = NULL; /* sent again */
			continue;
		}
		s->done_parts++;
	}
}

/* Create the multipart upload; parts follow in bfs_upload_created. */
static struct tevent_req *bfs_upload_start_mpu(struct tevent_req *req)
{
	struct bfs_upload_state *s = tevent_req_data(req,
						     struct bfs_upload_state);
	struct tevent_req *subreq;

	s->parts = talloc_zero_array(s, struct s3_part, s->n_parts);
	if (tevent_req_nomem(s->parts, req)) {
		return tevent_req_post(req, s->ev);
	}
	if (s->copy_src == NULL &&
	    bfs_upload_resumable(s->size, &s->p, s->p.resume)) {
		s->upload_id = talloc_strdup(s, s->p.resume->upload_id);
		if (tevent_req_nomem(s->upload_id, req)) {
			return tevent_req_post(req, s->ev);
		}
		s->cksum = s->p.resume->cksum;
		bfs_upload_take_resume(s);
		bfs_upload_go(req);
		return tevent_req_is_in_progress(req) ?
			req : tevent_req_post(req, s->ev);
	}
	/* A copy's parts are S3's own bytes: no checksum of ours to send. */
	subreq = s3_mpu_create_send(s, s->ev, s->s3, s->key,
				    s->copy_src == NULL, s->p.meta,
				    s->p.n_meta);
	if (tevent_req_nomem(subreq, req)) {
		return tevent_req_post(req, s->ev);
	}
	tevent_req_set_callback(subreq, bfs_upload_created, req);
	return req;
}

struct tevent_req *bfs_copy_send(TALLOC_CTX *mem_ctx,
				 struct tevent_context *ev,
				 struct s3_client *s3, const char *src_key,
				 const char *dst_key, uint64_t size,
				 const struct bfs_upload_params *p)
{
	struct bfs_upload_state *s;
	struct tevent_req *req;

	req = tevent_req_create(mem_ctx, &s, struct bfs_upload_state);
	if (req == NULL) {
		return NULL;
	}
	*s = (struct bfs_upload_state){
		.ev = ev, .s3 = s3, .fd = -1, .size = size, .p = *p,
	};
	s->key = talloc_strdup(s, dst_key);
	s->copy_src = talloc_strdup(s, src_key);
	if (p->copy_if_match != NULL &&
	    (s->p.copy_if_match = talloc_strdup(s, p->copy_if_match)) == NULL) {
		s->key = NULL; /* out of memory, said below */
	}
	if (tevent_req_nomem(s->key, req) || tevent_req_nomem(s->copy_src, req) ||
	    (!bfs_upload_keep_meta(s) && tevent_req_nomem(NULL, req))) {
		return tevent_req_post(req, ev);
	}
	if (size == 0) {
		tevent_req_error(req, EINVAL); /* CopyObject does those */
		return tevent_req_post(req, ev);
	}
	if (s->p.part_size < (5u << 20)) {
		s->p.part_size = 5u << 20;
	}
	if (s->p.parallel == 0) {
		s->p.parallel = 1;
	}
	s->n_parts = bfs_upload_cut(size, &s->p.part_size);
	return bfs_upload_start_mpu(req);
}

static void bfs_upload_put_done(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_upload_state *s = tevent_req_data(req,
						     struct bfs_upload_state);
	int ret = s3_put_object_recv(subreq, s, &s->etag, &s->st);

	TALLOC_FREE(subreq);
	TALLOC_FREE(s->whole);
	if (ret != 0) {
		tevent_req_error(req, ret);
		return;
	}
	tevent_req_done(req);
}

/* Start parts until `parallel` are in flight (or all are started). */
static void bfs_upload_more_parts(struct tevent_req *req)
{
	struct bfs_upload_state *s = tevent_req_data(req,
						     struct bfs_upload_state);

	for (;;) {
		uint64_t off;
		size_t len;
		struct bfs_part_ctx *pc;
		struct tevent_req *subreq;
		int ret;

		while (s->next_part < s->n_parts &&
		       s->parts[s->next_part].etag != NULL) {
			s->next_part++; /* a resumed upload has it */
		}
		if (s->err != 0 || s->in_flight >= s->p.parallel ||
		    s->next_part >= s->n_parts) {
			break;
		}
		off = (uint64_t)s->next_part * s->p.part_size;
		len = (size_t)(s->size - off < s->p.part_size ?
				       s->size - off : s->p.part_size);
		pc = talloc_zero(s, struct bfs_part_ctx);
		if (pc == NULL) {
			s->err = ENOMEM;
			break;
		}
		pc->s = s;
		BFS_LIST_ADD(s->flying, pc);
		talloc_set_destructor(pc, bfs_part_ctx_destructor);
		pc->req = req;
		pc->idx = s->next_part;
		if (s->copy_src != NULL) {
			subreq = s3_mpu_part_copy_send(pc, s->ev, s->s3, s->key,
						       s->upload_id,
						       pc->idx + 1,
						       s->copy_src, off, len,
						       s->p.copy_if_match);
			if (subreq == NULL) {
				talloc_free(pc);
				s->err = ENOMEM;
				break;
			}
			tevent_req_set_callback(subreq, bfs_upload_part_done,
						pc);
			s->next_part++;
			s->in_flight++;
			continue;
		}
		ret = bfs_part_buf(pc, len, s->in_flight == 0);
		if (ret != 0) {
			talloc_free(pc);
			if (ret != EAGAIN) {
				s->err = ret;
			}
			break; /* EAGAIN: the next part_done comes back here */
		}
		ret = bfs_read_full(s->fd, pc->buf, len, off);
		if (ret != 0) {
			talloc_free(pc);
			s->err = ret;
			break;
		}
		subreq = s3_mpu_part_send(pc, s->ev, s->s3, s->key,
					  s->upload_id, pc->idx + 1, pc->buf,
					  len, s->cksum);
		if (subreq == NULL) {
			talloc_free(pc);
			s->err = ENOMEM;
			break;
		}
		tevent_req_set_callback(subreq, bfs_upload_part_done, pc);
		s->next_part++;
		s->in_flight++;
	}
}

/* A failed multipart upload: abort it once no part is in flight. */
static void bfs_upload_fail(struct tevent_req *req)
{
	struct bfs_upload_state *s = tevent_req_data(req,
						     struct bfs_upload_state);
	struct tevent_req *subreq;

	if (s->in_flight > 0) {
		return;
	}
	subreq = s3_mpu_abort_send(s, s->ev, s->s3, s->key, s->upload_id);
	if (subreq == NULL) {
		tevent_req_error(req, s->err);
		return;
	}
	tevent_req_set_callback(subreq, bfs_upload_aborted, req);
}

bool bfs_upload_cancel(struct tevent_req *req)
{
	struct bfs_upload_state *s = tevent_req_data(req,
						     struct bfs_upload_state);

	/*
	 * A PutObject in flight may land whatever we do now, and so may a
	 * completion once asked for: those run to their end.  A multipart
	 * upload short of its completion is aborted, and S3 then makes no
	 * object of it.
	 */
	if (!tevent_req_is_in_progress(req) || s->upload_id == NULL ||
	    s->copy_src != NULL || s->err != 0 ||
	    s->done_parts == s->n_parts) {
		return false;
	}
	s->err = ECANCELED;
	while (s->flying != NULL) {
		talloc_free(s->flying); /* its request, and its buffer */
		s->in_flight--;
	}
	bfs_upload_fail(req);
	return true;
}

static void bfs_upload_created(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_upload_state *s = tevent_req_data(req,
						     struct bfs_upload_state);
	int ret;

	s->cksum = s3_mpu_create_cksum(subreq);
	ret = s3_mpu_create_recv(subreq, s, &s->upload_id, &s->st);
	TALLOC_FREE(subreq);
	if (ret == 0 && (s->upload_id == NULL || s->upload_id[0] == '\0')) {
		ret = EBADMSG;
	}
	if (ret != 0) {
		tevent_req_error(req, ret);
		return;
	}
	bfs_upload_go(req);
}

/* The upload exists: journal it and send what it lacks. */
static void bfs_upload_go(struct tevent_req *req)
{
	struct bfs_upload_state *s = tevent_req_data(req,
						     struct bfs_upload_state);

	if (s->p.started != NULL) {
		s->p.started(s->p.private_data, s->upload_id);
	}
	bfs_upload_next(req);
}

static void bfs_upload_part_done(struct tevent_req *subreq)
{
	struct bfs_part_ctx *pc = tevent_req_callback_data(subreq,
							   struct bfs_part_ctx);
	struct tevent_req *req = pc->req;
	struct bfs_upload_state *s = tevent_req_data(req,
						     struct bfs_upload_state);
	struct s3_status st = {0};
	struct s3_part part = {.part_no = pc->idx + 1};
	int ret = s->copy_src != NULL ?
		s3_mpu_part_copy_recv(subreq, s->parts, (char **)&part.etag,
				      &st) :
		s3_mpu_part_recv(subreq, s->parts, &part, &st);

	s->in_flight--;
	if (ret == 0 && part.etag == NULL) {
		ret = EBADMSG;
	}
	if (ret == 0) {
		s->parts[pc->idx] = part;
		s->done_parts++;
	} else if (s->err == 0) {
		s->err = ret;
		s->st = st;
	}
	talloc_free(pc); /* the buffer and subreq with it */
	if (s->err != 0) {
		bfs_upload_fail(req);
		return;
	}
	bfs_upload_next(req);
}

/* Start more parts, or complete the upload once every part is there. */
static void bfs_upload_next(struct tevent_req *req)
{
	struct bfs_upload_state *s = tevent_req_data(req,
						     struct bfs_upload_state);
	struct tevent_req *subreq;

	if (s->done_parts == s->n_parts) {
		subreq = s3_mpu_complete_send(s, s->ev, s->s3, s->key,
					      s->upload_id, s->parts,
					      s->n_parts);
		if (tevent_req_nomem(subreq, req)) {
			return;
		}
		tevent_req_set_callback(subreq, bfs_upload_completed, req);
		return;
	}
	bfs_upload_more_parts(req);
	if (s->err != 0) {
		bfs_upload_fail(req);
	}
}

static void bfs_upload_completed(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_upload_state *s = tevent_req_data(req,
						     struct bfs_upload_state);
	int ret = s3_mpu_complete_recv(subreq, s, &s->etag, &s->st);

	TALLOC_FREE(subreq);
	if (ret != 0 && s->copy_src == NULL &&
	    strcmp(s->st.code, "NoSuchUpload") == 0) {
		/*
		 * The engine retries a completion whose answer was lost; if
		 * the first try worked, the upload is gone because it is the
		 * object now.  Look before calling it a failure.
		 */
		s->err = ret;
		subreq = s3_head_object_send(s, s->ev, s->s3, s->key);
		if (subreq != NULL) {
			tevent_req_set_callback(subreq, bfs_upload_checked,
						req);
			return;
		}
	}
	if (ret != 0) {
		s->err = ret;
		bfs_upload_fail(req);
		return;
	}
	if (s->etag == NULL || s->etag[0] == '\0') {
		/*
		 * Ceph RGW (Pacific) completes with an empty ETag; the object
		 * has one, which reads pin with If-Match: ask for it.
		 */
		subreq = s3_head_object_send(s, s->ev, s->s3, s->key);
		if (tevent_req_nomem(subreq, req)) {
			return;
		}
		tevent_req_set_callback(subreq, bfs_upload_etag_fetched, req);
		return;
	}
	tevent_req_done(req);
}

static void bfs_upload_etag_fetched(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_upload_state *s = tevent_req_data(req,
						     struct bfs_upload_state);
	struct s3_object_info info = {0};
	int ret = s3_head_object_recv(subreq, s, &info, &s->st);

	TALLOC_FREE(subreq);
	if (ret == 0 && (info.etag == NULL || info.etag[0] == '\0' ||
			 info.size != s->size)) {
		ret = EBADMSG; /* completed, yet not what we sent */
	}
	if (tevent_req_error(req, ret)) {
		return;
	}
	s->etag = info.etag;
	tevent_req_done(req);
}

char *bfs_multipart_etag(TALLOC_CTX *mem_ctx, const struct s3_part *parts,
			 size_t n)
{
	unsigned char md[MD5_DIGEST_LENGTH];
	char hex[2 * MD5_DIGEST_LENGTH + 1];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_md5(), NULL) == 1;
	size_t i;

	for (i = 0; ok && i < n; i++) {
		ok = parts[i].etag != NULL &&
		     s3_md5_from_hex(parts[i].etag, md) &&
		     EVP_DigestUpdate(ctx, md, sizeof(md)) == 1;
	}
	ok = ok && n > 0 && EVP_DigestFinal_ex(ctx, md, NULL) == 1;
	EVP_MD_CTX_free(ctx);
	if (!ok) {
		return NULL;
	}
	s3_md5_to_hex(md, hex);
	return talloc_asprintf(mem_ctx, "%s-%zu", hex, n);
}

/*
 * Is etag what this upload's bytes make?  S3 gives a multipart object the
 * ETag bfs_multipart_etag() computes; some servers (s3rver) the MD5 of all
 * its bytes, which is read back from the staged file.
 */
static bool bfs_upload_etag_is_ours(struct bfs_upload_state *s,
				    const char *etag)
{
	char *mp = bfs_multipart_etag(s, s->parts, s->n_parts);
	unsigned char want[MD5_DIGEST_LENGTH], md[MD5_DIGEST_LENGTH];
	const size_t chunk = 1 << 20;
	EVP_MD_CTX *ctx;
	uint8_t *buf;
	uint64_t off;
	bool ok;

	if (mp != NULL && strcasecmp(mp, etag) == 0) {
		talloc_free(mp);
		return true;
	}
	talloc_free(mp);
	if (!s3_md5_from_hex(etag, want)) {
		return false;
	}
	ctx = EVP_MD_CTX_new();
	buf = talloc_size(s, chunk);
	ok = ctx != NULL && buf != NULL &&
	     EVP_DigestInit_ex(ctx, EVP_md5(), NULL) == 1;
	for (off = 0; ok && off < s->size; off += chunk) {
		size_t n = s->size - off < chunk ? (size_t)(s->size - off)
						 : chunk;

		ok = bfs_read_full(s->fd, buf, n, off) == 0 &&
		     EVP_DigestUpdate(ctx, buf, n) == 1;
	}
	ok = ok && EVP_DigestFinal_ex(ctx, md, NULL) == 1;
	EVP_MD_CTX_free(ctx);
	talloc_free(buf);
	return ok && memcmp(md, want, sizeof(md)) == 0;
}

static void bfs_upload_checked(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_upload_state *s = tevent_req_data(req,
						     struct bfs_upload_state);
	struct s3_object_info info = {0};
	struct s3_status st = {0};
	int ret = s3_head_object_recv(subreq, s, &info, &st);

	TALLOC_FREE(subreq);
	if (ret == 0 && info.size == s->size && info.etag != NULL &&
	    bfs_upload_etag_is_ours(s, info.etag)) {
		s->err = 0;
		s->etag = info.etag;
		tevent_req_done(req);
		return;
	}
	/* Not ours (or not known): the NoSuchUpload stands. */
	bfs_upload_fail(req);
}

static void bfs_upload_aborted(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_upload_state *s = tevent_req_data(req,
						     struct bfs_upload_state);

	/* Best effort: servers without abort (ENOSYS) keep the parts. */
	s3_mpu_abort_recv(subreq, NULL);
	TALLOC_FREE(subreq);
	tevent_req_error(req, s->err);
}

int bfs_upload_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx, char **etag,
		    struct s3_status *st)
{
	struct bfs_upload_state *s = tevent_req_data(req,
						     struct bfs_upload_state);
	int ret = s3_req_errno(req);

	if (ret == 0 && etag != NULL) {
		*etag = talloc_steal(mem_ctx, s->etag);
	}
	if (st != NULL) {
		*st = s->st;
		st->err = ret;
	}
	tevent_req_received(req);
	return ret;
}
