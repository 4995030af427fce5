/*
 * A multipart upload fed while its staging file is written (see
 * bfs_stream.h).
 */
#include "bfs_stream.h"

#include <errno.h>
#include <string.h>

/* S3's limit on the parts of one upload. */
#define BFS_STREAM_MAX_PARTS 10000

struct bfs_stream_send;

struct bfs_stream_part {
	struct bfs_stream_send *send;	/* in flight, or NULL */
	char *etag;			/* S3 has it (a child of the stream) */
	char *cksum;			/* its CRC32C, if the upload has them */
};

struct bfs_stream {
	struct tevent_context *ev;
	struct s3_client *s3;
	char *key;
	int fd;
	struct bfs_stream_params p;

	struct tevent_req *create_req;
	char *upload_id;
	bool cksum;		/* created with CRC32C: parts carry theirs */
	bool stopped;		/* failed, or handed over: send nothing more */
	uint64_t written;	/* bytes [0, written) have been written */
	struct bfs_stream_part *parts;
	unsigned n_alloc;	/* entries in parts */
	unsigned next;		/* the next part to send */
	unsigned done, sent;
};

/* One UploadPart in flight; freeing it cancels the request. */
struct bfs_stream_send {
	struct bfs_stream *st;
	unsigned idx;
	void *buf;
};

static void bfs_stream_created(struct tevent_req *subreq);

/* A send ends (done or cancelled): its buffer goes back to the budget. */
static int bfs_stream_send_destructor(struct bfs_stream_send *send)
{
	send->st->p.budget->free++;
	send->st->parts[send->idx].send = NULL;
	return 0;
}

/* Freeing a stream cancels its sends: they must not touch it after. */
static int bfs_stream_destructor(struct bfs_stream *st)
{
	unsigned i;

	for (i = 0; i < st->n_alloc; i++) {
		TALLOC_FREE(st->parts[i].send);
	}
	return 0;
}
static void bfs_stream_part_done(struct tevent_req *subreq);

struct bfs_stream *bfs_stream_new(TALLOC_CTX *mem_ctx,
				  struct tevent_context *ev,
				  struct s3_client *s3, const char *key,
				  int fd, const struct bfs_stream_params *p)
{
	struct bfs_stream *st = talloc_zero(mem_ctx, struct bfs_stream);

	if (st == NULL) {
		return NULL;
	}
	st->ev = ev;
	st->s3 = s3;
	st->fd = fd;
	st->p = *p;
	talloc_set_destructor(st, bfs_stream_destructor);
	if (st->p.part_size < (5u << 20)) {
		/* S3 refuses parts below 5 MiB but the last. */
		talloc_free(st);
		errno = EINVAL;
		return NULL;
	}
	st->key = talloc_strdup(st, key);
	if (st->key == NULL) {
		talloc_free(st);
		errno = ENOMEM;
		return NULL;
	}
	return st;
}

/* Part idx is no longer in S3 as the file has it. */
static void bfs_stream_forget(struct bfs_stream *st, unsigned idx)
{
	struct bfs_stream_part *part = &st->parts[idx];

	TALLOC_FREE(part->send);
	if (part->etag != NULL) {
		TALLOC_FREE(part->etag);
		st->done--;
	}
}

static bool bfs_stream_grow(struct bfs_stream *st, unsigned idx)
{
	struct bfs_stream_part *parts;
	unsigned n = st->n_alloc == 0 ? 64 : st->n_alloc;

	if (idx < st->n_alloc) {
		return true;
	}
	while (n <= idx) {
		n *= 2;
	}
	parts = talloc_realloc(st, st->parts, struct bfs_stream_part, n);
	if (parts == NULL) {
		return false;
	}
	memset(parts + st->n_alloc, 0,
	       (n - st->n_alloc) * sizeof(struct bfs_stream_part));
	st->parts = parts;
	st->n_alloc = n;
	return true;
}

static void bfs_stream_send_part(struct bfs_stream *st, unsigned idx)
{
	uint64_t ps = st->p.part_size;
	struct bfs_stream_send *send;
	struct tevent_req *subreq;

	if (!bfs_stream_grow(st, idx)) {
		st->stopped = true;
		return;
	}
	send = talloc_zero(st, struct bfs_stream_send);
	if (send == NULL) {
		st->stopped = true;
		return;
	}
	send->st = st;
	send->idx = idx;
	send->buf = talloc_size(send, ps);
	/* A short read: the file shrank behind our back; stop streaming. */
	if (send->buf == NULL ||
	    bfs_read_full(st->fd, send->buf, ps, (uint64_t)idx * ps) != 0) {
		talloc_free(send);
		st->stopped = true;
		return;
	}
	subreq = s3_mpu_part_send(send, st->ev, st->s3, st->key,
				  st->upload_id, idx + 1, send->buf, ps,
				  st->cksum);
	if (subreq == NULL) {
		talloc_free(send);
		st->stopped = true;
		return;
	}
	tevent_req_set_callback(subreq, bfs_stream_part_done, send);
	st->parts[idx].send = send;
	st->p.budget->free--;
	talloc_set_destructor(send, bfs_stream_send_destructor);
	st->sent++;
}

/* Send the parts the writer has finished, a few at a time. */
static void bfs_stream_pump(struct bfs_stream *st)
{
	uint64_t ps = st->p.part_size;

	if (st->stopped) {
		return;
	}
	if (st->upload_id == NULL) {
		if (st->create_req == NULL && st->written >= ps) {
			st->create_req = s3_mpu_create_send(st, st->ev, st->s3,
							    st->key, true,
							    NULL, 0);
			if (st->create_req == NULL) {
				st->stopped = true;
				return;
			}
			tevent_req_set_callback(st->create_req,
						bfs_stream_created, st);
		}
		return;
	}
	while (!st->stopped && st->p.budget->free > 0 &&
	       st->next < BFS_STREAM_MAX_PARTS &&
	       (uint64_t)(st->next + 1) * ps <= st->written) {
		bfs_stream_send_part(st, st->next);
		st->next++;
	}
}

static void bfs_stream_created(struct tevent_req *subreq)
{
	struct bfs_stream *st = tevent_req_callback_data(subreq,
							 struct bfs_stream);
	char *upload_id = NULL;
	int ret;

	st->cksum = s3_mpu_create_cksum(subreq);
	ret = s3_mpu_create_recv(subreq, st, &upload_id, NULL);
	st->create_req = NULL;
	TALLOC_FREE(subreq);
	if (ret != 0 || upload_id == NULL || upload_id[0] == '\0') {
		/* The close uploads everything itself. */
		st->stopped = true;
		return;
	}
	st->upload_id = upload_id;
	if (st->p.started != NULL) {
		st->p.started(st->p.private_data, st->key, upload_id);
	}
	bfs_stream_pump(st);
}

static void bfs_stream_part_done(struct tevent_req *subreq)
{
	struct bfs_stream_send *send = tevent_req_callback_data(
		subreq, struct bfs_stream_send);
	struct bfs_stream *st = send->st;
	unsigned idx = send->idx;
	struct s3_part part = {.part_no = idx + 1};
	int ret = s3_mpu_part_recv(subreq, st, &part, NULL);

	talloc_free(send); /* the buffer and subreq with it */
	if (ret != 0 || part.etag == NULL) {
		/* Leave this part and the rest to the close. */
		talloc_free((char *)part.etag);
		st->stopped = true;
		return;
	}
	TALLOC_FREE(st->parts[idx].etag);
	TALLOC_FREE(st->parts[idx].cksum);
	st->parts[idx].etag = (char *)part.etag;
	st->parts[idx].cksum = (char *)part.cksum;
	st->done++;
	bfs_stream_pump(st);
}

void bfs_stream_wrote(struct bfs_stream *st, uint64_t off, uint64_t len)
{
	uint64_t ps = st->p.part_size;
	uint64_t i;

	if (len == 0) {
		return;
	}
	for (i = off / ps; i <= (off + len - 1) / ps && i < st->next; i++) {
		bfs_stream_forget(st, (unsigned)i);
	}
	if (off <= st->written && off + len > st->written) {
		st->written = off + len;
	}
	bfs_stream_pump(st);
}

void bfs_stream_truncated(struct bfs_stream *st, uint64_t size)
{
	uint64_t first = size / st->p.part_size; /* ends beyond size */
	unsigned i;

	for (i = (unsigned)(first < st->next ? first : st->next);
	     i < st->next; i++) {
		bfs_stream_forget(st, i);
	}
	if (st->next > first) {
		st->next = (unsigned)first;
	}
	if (st->written > size) {
		st->written = size;
	}
	bfs_stream_pump(st);
}

int bfs_stream_stop(struct bfs_stream *st, TALLOC_CTX *mem_ctx,
		    struct bfs_upload_resume *r)
{
	struct s3_part *parts;
	unsigned i;

	st->stopped = true;
	for (i = 0; i < st->next; i++) {
		TALLOC_FREE(st->parts[i].send);
	}
	TALLOC_FREE(st->create_req);
	if (st->upload_id == NULL) {
		return ENOENT;
	}
	parts = talloc_zero_array(mem_ctx, struct s3_part,
				  st->next > 0 ? st->next : 1);
	if (parts == NULL) {
		return ENOMEM;
	}
	for (i = 0; i < st->next; i++) {
		parts[i].part_no = i + 1;
		if (st->parts[i].etag != NULL) {
			parts[i].etag = talloc_strdup(parts, st->parts[i].etag);
		}
		if (st->parts[i].cksum != NULL) {
			parts[i].cksum = talloc_strdup(parts,
						       st->parts[i].cksum);
		}
	}
	*r = (struct bfs_upload_resume){
		.upload_id = talloc_strdup(parts, st->upload_id),
		.part_size = st->p.part_size,
		.parts = parts,
		.n_parts = st->next,
		.cksum = st->cksum,
	};
	return r->upload_id == NULL ? ENOMEM : 0;
}

void bfs_stream_counts(const struct bfs_stream *st, unsigned *done,
		       unsigned *sent)
{
	*done = st->done;
	*sent = st->sent;
}

const char *bfs_stream_key(const struct bfs_stream *st)
{
	return st->key;
}
