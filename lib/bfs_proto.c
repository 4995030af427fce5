/*
 * The module <-> bucketfsd protocol: frames as lib/bfs_proto.h lays them
 * out.  Integers are read and written a byte at a time, so neither the
 * host's byte order nor the alignment of a field inside a frame matters.
 */
#include "bfs_proto.h"

#include <errno.h>
#include <string.h>

/* A field's own header: u16 tag, u32 length. */
#define BFS_PROTO_FHDR 6
/* What the length field counts at the least: version, type, id. */
#define BFS_PROTO_MIN_FRAME (BFS_PROTO_HDR - 4)
/*
 * Most fields one type carries (FETCH's 8), plus the 0 that ends the list;
 * the loops over a list stop at the bound too, should a 10th be added.
 */
#define BFS_PROTO_TYPE_FIELDS 10

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

enum bfs_pf_kind {
	BFS_PK_UNKNOWN = 0, /* a hole in the table: a tag we skip */
	BFS_PK_STRING,
	BFS_PK_INT,
};

/* Each known tag: what it holds and where struct bfs_proto_msg keeps it. */
static const struct bfs_pf_def {
	enum bfs_pf_kind kind;
	size_t off;
} bfs_pf_defs[] = {
	[BFS_PF_SHARE] = {BFS_PK_STRING, offsetof(struct bfs_proto_msg, share)},
	[BFS_PF_CACHE_DIR] = {BFS_PK_STRING,
			      offsetof(struct bfs_proto_msg, cache_dir)},
	[BFS_PF_KEY] = {BFS_PK_STRING, offsetof(struct bfs_proto_msg, key)},
	[BFS_PF_STAGING] = {BFS_PK_STRING,
			    offsetof(struct bfs_proto_msg, staging)},
	[BFS_PF_ETAG] = {BFS_PK_STRING, offsetof(struct bfs_proto_msg, etag)},
	[BFS_PF_PID] = {BFS_PK_INT, offsetof(struct bfs_proto_msg, pid)},
	[BFS_PF_ERR] = {BFS_PK_INT, offsetof(struct bfs_proto_msg, err)},
	[BFS_PF_PENDING] = {BFS_PK_INT,
			    offsetof(struct bfs_proto_msg, pending)},
	[BFS_PF_UPLOADED] = {BFS_PK_INT,
			     offsetof(struct bfs_proto_msg, uploaded)},
	[BFS_PF_FAILED] = {BFS_PK_INT, offsetof(struct bfs_proto_msg, failed)},
	[BFS_PF_BYTES] = {BFS_PK_INT, offsetof(struct bfs_proto_msg, bytes)},
	[BFS_PF_SIZE] = {BFS_PK_INT, offsetof(struct bfs_proto_msg, size)},
	[BFS_PF_OFFSET] = {BFS_PK_INT, offsetof(struct bfs_proto_msg, offset)},
	[BFS_PF_LENGTH] = {BFS_PK_INT, offsetof(struct bfs_proto_msg, length)},
	[BFS_PF_AHEAD] = {BFS_PK_INT, offsetof(struct bfs_proto_msg, ahead)},
	[BFS_PF_AHEAD_N] = {BFS_PK_INT,
			    offsetof(struct bfs_proto_msg, ahead_n)},
	[BFS_PF_FETCHES] = {BFS_PK_INT,
			    offsetof(struct bfs_proto_msg, fetches)},
	[BFS_PF_FETCHED] = {BFS_PK_INT,
			    offsetof(struct bfs_proto_msg, fetched)},
	[BFS_PF_ARENA] = {BFS_PK_INT, offsetof(struct bfs_proto_msg, arena)},
	[BFS_PF_LEND] = {BFS_PK_INT, offsetof(struct bfs_proto_msg, lend)},
	[BFS_PF_SLOT] = {BFS_PK_INT, offsetof(struct bfs_proto_msg, slot)},
	[BFS_PF_PIN] = {BFS_PK_INT, offsetof(struct bfs_proto_msg, pin)},
	[BFS_PF_LENT] = {BFS_PK_INT, offsetof(struct bfs_proto_msg, lent)},
	[BFS_PF_CLAIM] = {BFS_PK_INT, offsetof(struct bfs_proto_msg, claim)},
};

/*
 * Each type: its name, and the fields it carries in the order they are
 * sent (ended by 0, which is no tag).  The one place the header's list of
 * messages lives in code: the encoder writes these fields and no others;
 * the decoder uses the table only to tell a known type from an unknown
 * one, since it keeps every known field it is sent.
 */
static const struct bfs_pm_def {
	const char *name;
	uint16_t fields[BFS_PROTO_TYPE_FIELDS];
} bfs_pm_defs[] = {
	[BFS_PM_HELLO] = {"HELLO", {BFS_PF_SHARE, BFS_PF_CACHE_DIR}},
	[BFS_PM_WELCOME] = {"WELCOME", {BFS_PF_PID, BFS_PF_ARENA,
					BFS_PF_CLAIM}},
	[BFS_PM_UPLOAD] = {"UPLOAD", {BFS_PF_KEY}},
	[BFS_PM_WAIT] = {"WAIT", {BFS_PF_KEY, BFS_PF_STAGING}},
	[BFS_PM_DONE] = {"DONE", {BFS_PF_ERR, BFS_PF_ETAG, BFS_PF_SLOT,
				  BFS_PF_PIN}},
	[BFS_PM_STATUS] = {"STATUS", {0}},
	[BFS_PM_STATE] = {"STATE", {BFS_PF_PID, BFS_PF_PENDING,
				    BFS_PF_UPLOADED, BFS_PF_FAILED,
				    BFS_PF_BYTES, BFS_PF_FETCHES,
				    BFS_PF_FETCHED, BFS_PF_LENT}},
	[BFS_PM_FETCH] = {"FETCH", {BFS_PF_KEY, BFS_PF_ETAG, BFS_PF_SIZE,
				    BFS_PF_OFFSET, BFS_PF_LENGTH,
				    BFS_PF_AHEAD, BFS_PF_AHEAD_N,
				    BFS_PF_LEND}},
	[BFS_PM_PREFETCH] = {"PREFETCH", {BFS_PF_KEY, BFS_PF_ETAG, BFS_PF_SIZE,
					  BFS_PF_AHEAD, BFS_PF_AHEAD_N}},
	[BFS_PM_LIST] = {"LIST", {BFS_PF_KEY}},
	[BFS_PM_CHANGED] = {"CHANGED", {BFS_PF_KEY}},
	[BFS_PM_RELEASE] = {"RELEASE", {BFS_PF_PIN}},
	[BFS_PM_CLAIM] = {"CLAIM", {BFS_PF_KEY, BFS_PF_ETAG, BFS_PF_SIZE}},
	[BFS_PM_UNCLAIM] = {"UNCLAIM", {BFS_PF_KEY, BFS_PF_ETAG}},
	[BFS_PM_REVOKE] = {"REVOKE", {BFS_PF_KEY, BFS_PF_ETAG}},
};

/* ---- little-endian integers, a byte at a time --------------------------- */

static void bfs_put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void bfs_put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static void bfs_put_u64(uint8_t *p, uint64_t v)
{
	bfs_put_u32(p, (uint32_t)v);
	bfs_put_u32(p + 4, (uint32_t)(v >> 32));
}

static uint16_t bfs_get_u16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t bfs_get_u32(const uint8_t *p)
{
	/* Widened before shifting: p[3] << 24 in int would overflow. */
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) |
	       ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t bfs_get_u64(const uint8_t *p)
{
	return (uint64_t)bfs_get_u32(p) | ((uint64_t)bfs_get_u32(p + 4) << 32);
}

/* ---- the tables --------------------------------------------------------- */

/* The type's entry, or NULL for a number that names no type. */
static const struct bfs_pm_def *bfs_pm_lookup(unsigned int type)
{
	if (type >= ARRAY_LEN(bfs_pm_defs) || bfs_pm_defs[type].name == NULL) {
		return NULL;
	}
	return &bfs_pm_defs[type];
}

/* The tag's entry, or NULL for a tag this version does not know. */
static const struct bfs_pf_def *bfs_pf_lookup(unsigned int tag)
{
	if (tag >= ARRAY_LEN(bfs_pf_defs) ||
	    bfs_pf_defs[tag].kind == BFS_PK_UNKNOWN) {
		return NULL;
	}
	return &bfs_pf_defs[tag];
}

const char *bfs_proto_type_name(enum bfs_proto_type t)
{
	/* Through unsigned: a negative value is as unknown as a large one. */
	const struct bfs_pm_def *pd = bfs_pm_lookup((unsigned int)t);

	return pd != NULL ? pd->name : "?";
}

/* ---- encoding ----------------------------------------------------------- */

int bfs_proto_encode(TALLOC_CTX *mem_ctx, const struct bfs_proto_msg *m,
		     uint8_t **buf, size_t *len)
{
	const struct bfs_pm_def *pd = bfs_pm_lookup((unsigned int)m->type);
	const char *str[BFS_PROTO_TYPE_FIELDS];
	size_t vlen[BFS_PROTO_TYPE_FIELDS];
	size_t body = BFS_PROTO_MIN_FRAME, i;
	uint8_t *b, *p;

	if (pd == NULL) {
		return EINVAL;
	}

	/* Measure first, so the frame is one allocation of its final size. */
	for (i = 0; i < BFS_PROTO_TYPE_FIELDS && pd->fields[i] != 0; i++) {
		const struct bfs_pf_def *fd = bfs_pf_lookup(pd->fields[i]);

		str[i] = NULL;
		if (fd->kind == BFS_PK_INT) {
			vlen[i] = 8;
		} else {
			str[i] = *(const char *const *)((const char *)m +
							fd->off);
			if (str[i] == NULL) {
				continue; /* left out: reads back as NULL */
			}
			/*
			 * Bounded: a string longer than a frame is refused
			 * without reading all of it, and no sum below can
			 * wrap.
			 */
			vlen[i] = strnlen(str[i], BFS_PROTO_MAX_FRAME + 1);
		}
		/* body never exceeds the maximum: the right side is >= 0. */
		if (BFS_PROTO_FHDR + vlen[i] > BFS_PROTO_MAX_FRAME - body) {
			return EMSGSIZE;
		}
		body += BFS_PROTO_FHDR + vlen[i];
	}

	b = talloc_array(mem_ctx, uint8_t, 4 + body);
	if (b == NULL) {
		return ENOMEM;
	}
	bfs_put_u32(b, (uint32_t)body);
	bfs_put_u16(b + 4, BFS_PROTO_VERSION);
	bfs_put_u16(b + 6, (uint16_t)m->type);
	bfs_put_u32(b + 8, m->id);
	p = b + BFS_PROTO_HDR;
	for (i = 0; i < BFS_PROTO_TYPE_FIELDS && pd->fields[i] != 0; i++) {
		const struct bfs_pf_def *fd = bfs_pf_lookup(pd->fields[i]);

		if (fd->kind == BFS_PK_STRING && str[i] == NULL) {
			continue;
		}
		bfs_put_u16(p, pd->fields[i]);
		bfs_put_u32(p + 2, (uint32_t)vlen[i]);
		p += BFS_PROTO_FHDR;
		if (fd->kind == BFS_PK_INT) {
			bfs_put_u64(p, *(const uint64_t *)((const char *)m +
							   fd->off));
		} else {
			memcpy(p, str[i], vlen[i]);
		}
		p += vlen[i];
	}

	*buf = b;
	*len = 4 + body;
	return 0;
}

/* ---- decoding ----------------------------------------------------------- */

/* Keep one field's value in m: 0, EPROTO, or ENOMEM. */
static int bfs_pf_store(struct bfs_proto_msg *m, uint16_t tag,
			const uint8_t *v, size_t vlen)
{
	const struct bfs_pf_def *fd = bfs_pf_lookup(tag);
	char **sp, *s;

	if (fd == NULL) {
		return 0; /* a newer sender's field: skipped */
	}
	if (fd->kind == BFS_PK_INT) {
		if (vlen != 8) {
			return EPROTO;
		}
		*(uint64_t *)((char *)m + fd->off) = bfs_get_u64(v);
		return 0;
	}

	/*
	 * A NUL would cut the string short of what was sent: the receiver
	 * would act on another key than the sender meant.
	 */
	if (vlen > 0 && memchr(v, '\0', vlen) != NULL) {
		return EPROTO;
	}
	s = talloc_strndup(m, (const char *)v, vlen);
	if (s == NULL) {
		return ENOMEM;
	}
	/* Sent twice: the last one wins, the earlier copy goes now. */
	sp = (char **)((char *)m + fd->off);
	talloc_free(*sp);
	*sp = s;
	return 0;
}

int bfs_proto_decode(TALLOC_CTX *mem_ctx, const uint8_t *buf, size_t len,
		     struct bfs_proto_msg **out, size_t *used)
{
	struct bfs_proto_msg *m;
	const uint8_t *p, *end;
	uint32_t flen;
	uint16_t version, type;
	int rc;

	/*
	 * The length is judged as soon as its 4 bytes are here: waiting for
	 * the 4 GiB a broken peer announced would only buffer them.  All else
	 * is judged once the whole frame is, so that the answer for a frame
	 * never depends on how its bytes were cut, EAGAIN apart.
	 */
	if (len < 4) {
		return EAGAIN;
	}
	flen = bfs_get_u32(buf);
	if (flen > BFS_PROTO_MAX_FRAME || flen < BFS_PROTO_MIN_FRAME) {
		return EPROTO;
	}
	if (len - 4 < flen) {
		return EAGAIN;
	}
	version = bfs_get_u16(buf + 4);
	if (version != BFS_PROTO_VERSION) {
		return EPROTONOSUPPORT;
	}
	type = bfs_get_u16(buf + 6);
	if (bfs_pm_lookup(type) == NULL) {
		return EPROTO;
	}

	m = talloc_zero(mem_ctx, struct bfs_proto_msg);
	if (m == NULL) {
		return ENOMEM;
	}
	m->version = version;
	m->type = (enum bfs_proto_type)type;
	m->id = bfs_get_u32(buf + 8);

	p = buf + BFS_PROTO_HDR;
	end = buf + 4 + flen;
	while (p < end) {
		uint16_t tag;
		uint32_t vlen;

		/* Compared as lengths, never as pointers past the end. */
		if ((size_t)(end - p) < BFS_PROTO_FHDR) {
			talloc_free(m);
			return EPROTO;
		}
		tag = bfs_get_u16(p);
		vlen = bfs_get_u32(p + 2);
		p += BFS_PROTO_FHDR;
		if (vlen > (size_t)(end - p)) {
			talloc_free(m);
			return EPROTO;
		}
		rc = bfs_pf_store(m, tag, p, vlen);
		if (rc != 0) {
			talloc_free(m);
			return rc;
		}
		p += vlen;
	}

	*out = m;
	*used = 4 + (size_t)flen;
	return 0;
}

int bfs_proto_buf_append(TALLOC_CTX *mem_ctx, struct bfs_proto_buf *b,
			 const void *data, size_t n)
{
	uint8_t *more = talloc_realloc(mem_ctx, b->data, uint8_t, b->len + n);

	if (more == NULL) {
		return ENOMEM;
	}
	memcpy(more + b->len, data, n);
	b->data = more;
	b->len += n;
	return 0;
}

int bfs_proto_buf_take(TALLOC_CTX *mem_ctx, struct bfs_proto_buf *b,
		       struct bfs_proto_msg **m)
{
	size_t used = 0;
	int ret = bfs_proto_decode(mem_ctx, b->data, b->len, m, &used);

	if (ret == 0) {
		memmove(b->data, b->data + used, b->len - used);
		b->len -= used;
	}
	return ret;
}
