/* The module <-> bucketfsd frames: their layout, round trips, refusals. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "bfs_proto.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const enum bfs_proto_type all_types[] = {
	BFS_PM_HELLO, BFS_PM_WELCOME, BFS_PM_UPLOAD, BFS_PM_WAIT,
	BFS_PM_DONE,  BFS_PM_STATUS,  BFS_PM_STATE, BFS_PM_FETCH,
	BFS_PM_PREFETCH, BFS_PM_LIST, BFS_PM_CHANGED, BFS_PM_RELEASE,
	BFS_PM_CLAIM, BFS_PM_UNCLAIM, BFS_PM_REVOKE,
};

/* A message with every field set, each to a value of its own. */
static struct bfs_proto_msg full_msg(enum bfs_proto_type type, uint32_t id)
{
	struct bfs_proto_msg m = {
		.version = 77, /* ignored: ours is sent */
		.type = type,
		.id = id,
		.share = "share",
		.cache_dir = "/var/cache/bucketfs/share",
		.key = "dir/sub/file.txt",
		.staging = "staging/000000000000002a",
		.etag = "\"9b2cf535f27731c974343645a3985328\"",
		.pid = 4242,
		.err = 5,
		.pending = 0x0102030405060708ULL,
		.uploaded = UINT64_MAX,
		.failed = 3,
		.bytes = 1ULL << 40,
		.size = 1ULL << 33,
		.offset = 7 << 20,
		.length = 65536,
		.ahead = 8,
		.ahead_n = 64,
		.fetches = 99,
		.fetched = 99ULL << 20,
		.arena = 256ULL << 20,
		.lend = 1,
		.slot = 24ULL << 20,
		.pin = 0xfedcba9876543210ULL,
		.lent = 77ULL << 20,
		.claim = 64ULL << 20,
	};
	return m;
}

/* Which fields the header says each type carries. */
struct carried {
	bool share, cache_dir, key, staging, etag;
	bool pid, err, pending, uploaded, failed, bytes;
	bool size, offset, length, ahead, ahead_n, fetches, fetched;
	bool arena, lend, slot, pin, lent, claim;
};

static struct carried carried_by(enum bfs_proto_type t)
{
	struct carried c = {0};

	switch (t) {
	case BFS_PM_HELLO:
		c.share = c.cache_dir = true;
		break;
	case BFS_PM_WELCOME:
		c.pid = c.arena = c.claim = true;
		break;
	case BFS_PM_CLAIM:
		c.size = true;
		/* fall through */
	case BFS_PM_UNCLAIM:
	case BFS_PM_REVOKE:
		c.key = c.etag = true;
		break;
	case BFS_PM_UPLOAD:
	case BFS_PM_LIST:
	case BFS_PM_CHANGED:
		c.key = true;
		break;
	case BFS_PM_WAIT:
		c.key = c.staging = true;
		break;
	case BFS_PM_DONE:
		c.err = c.etag = c.slot = c.pin = true;
		break;
	case BFS_PM_RELEASE:
		c.pin = true;
		break;
	case BFS_PM_STATUS:
		break;
	case BFS_PM_STATE:
		c.pid = c.pending = c.uploaded = c.failed = c.bytes = true;
		c.fetches = c.fetched = c.lent = true;
		break;
	case BFS_PM_FETCH:
		c.offset = c.length = c.lend = true;
		/* fall through */
	case BFS_PM_PREFETCH:
		c.key = c.etag = c.size = c.ahead = c.ahead_n = true;
		break;
	}
	return c;
}

static void assert_str_field(bool carried, const char *sent, const char *got)
{
	if (carried) {
		assert_non_null(got);
		assert_string_equal(got, sent);
	} else {
		assert_null(got);
	}
}

static void assert_int_field(bool carried, uint64_t sent, uint64_t got)
{
	assert_true(got == (carried ? sent : 0));
}

/* Hand-made frames, for what the encoder never writes. */
struct frame {
	uint8_t b[512];
	size_t n;
};

static void fr_u16(struct frame *f, uint16_t v)
{
	f->b[f->n++] = (uint8_t)v;
	f->b[f->n++] = (uint8_t)(v >> 8);
}

static void fr_u32(struct frame *f, uint32_t v)
{
	fr_u16(f, (uint16_t)v);
	fr_u16(f, (uint16_t)(v >> 16));
}

static void fr_bytes(struct frame *f, const void *p, size_t n)
{
	memcpy(f->b + f->n, p, n);
	f->n += n;
}

/* Length (filled in by fr_end), version, type, id. */
static void fr_start(struct frame *f, uint16_t version, uint16_t type)
{
	f->n = 0;
	fr_u32(f, 0);
	fr_u16(f, version);
	fr_u16(f, type);
	fr_u32(f, 7);
}

static void fr_field(struct frame *f, uint16_t tag, const void *p, size_t n)
{
	fr_u16(f, tag);
	fr_u32(f, (uint32_t)n);
	fr_bytes(f, p, n);
}

static void fr_end(struct frame *f)
{
	size_t n = f->n;

	f->n = 0;
	fr_u32(f, (uint32_t)(n - 4));
	f->n = n;
}

/* Decode must refuse with rc, and leave nothing allocated behind. */
static void assert_refused(const uint8_t *buf, size_t len, int rc)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_proto_msg *m = NULL;
	size_t used = 0;

	assert_non_null(t);
	assert_int_equal(bfs_proto_decode(t, buf, len, &m, &used), rc);
	assert_int_equal(talloc_total_blocks(t), 1);
	talloc_free(t);
}

static void test_every_type_round_trips(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < ARRAY_LEN(all_types); i++) {
		TALLOC_CTX *t = talloc_new(NULL);
		struct bfs_proto_msg in = full_msg(all_types[i], 0xdeadbeef - i);
		struct bfs_proto_msg *out = NULL;
		struct carried c = carried_by(all_types[i]);
		uint8_t *buf = NULL;
		size_t len = 0, used = 0;

		assert_non_null(t);
		assert_int_equal(bfs_proto_encode(t, &in, &buf, &len), 0);
		assert_true(talloc_parent(buf) == t);
		assert_int_equal(bfs_proto_decode(t, buf, len, &out, &used), 0);
		assert_true(talloc_parent(out) == t);
		assert_int_equal(used, len);
		assert_int_equal(out->version, BFS_PROTO_VERSION);
		assert_int_equal(out->type, in.type);
		assert_int_equal(out->id, in.id);
		/* What the type carries comes back; nothing else was sent. */
		assert_str_field(c.share, in.share, out->share);
		assert_str_field(c.cache_dir, in.cache_dir, out->cache_dir);
		assert_str_field(c.key, in.key, out->key);
		assert_str_field(c.staging, in.staging, out->staging);
		assert_str_field(c.etag, in.etag, out->etag);
		assert_int_field(c.pid, in.pid, out->pid);
		assert_int_field(c.err, in.err, out->err);
		assert_int_field(c.pending, in.pending, out->pending);
		assert_int_field(c.uploaded, in.uploaded, out->uploaded);
		assert_int_field(c.failed, in.failed, out->failed);
		assert_int_field(c.bytes, in.bytes, out->bytes);
		assert_int_field(c.size, in.size, out->size);
		assert_int_field(c.offset, in.offset, out->offset);
		assert_int_field(c.length, in.length, out->length);
		assert_int_field(c.ahead, in.ahead, out->ahead);
		assert_int_field(c.ahead_n, in.ahead_n, out->ahead_n);
		assert_int_field(c.fetches, in.fetches, out->fetches);
		assert_int_field(c.fetched, in.fetched, out->fetched);
		assert_int_field(c.arena, in.arena, out->arena);
		assert_int_field(c.lend, in.lend, out->lend);
		assert_int_field(c.slot, in.slot, out->slot);
		assert_int_field(c.pin, in.pin, out->pin);
		assert_int_field(c.lent, in.lent, out->lent);
		assert_int_field(c.claim, in.claim, out->claim);
		/* Strings belong to the message: one free takes them all. */
		if (out->share != NULL) {
			assert_true(talloc_parent(out->share) == out);
		}
		talloc_free(out);
		assert_int_equal(talloc_total_blocks(t), 2); /* t and buf */
		talloc_free(t);
	}
}

/* The exact bytes: a round trip alone would not see a byte-order slip. */
static void test_wire_layout(void **state)
{
	struct bfs_proto_msg m = {.type = BFS_PM_UPLOAD, .id = 0x01020304,
				  .key = "ab"};
	struct bfs_proto_msg w = {.type = BFS_PM_WELCOME, .id = 1,
				  .pid = 0x1122334455667788ULL};
	static const uint8_t want_upload[] = {
		0x10, 0x00, 0x00, 0x00,		/* length: 8 + 6 + 2 */
		0x01, 0x00,			/* version */
		0x03, 0x00,			/* UPLOAD */
		0x04, 0x03, 0x02, 0x01,		/* id */
		0x03, 0x00, 0x02, 0x00, 0x00, 0x00, 'a', 'b', /* key */
	};
	static const uint8_t want_welcome[] = {
		0x32, 0x00, 0x00, 0x00,		/* length: 8 + 3 * 14 */
		0x01, 0x00,
		0x02, 0x00,
		0x01, 0x00, 0x00, 0x00,
		0x06, 0x00, 0x08, 0x00, 0x00, 0x00, /* pid */
		0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
		0x13, 0x00, 0x08, 0x00, 0x00, 0x00, /* arena: none */
		0, 0, 0, 0, 0, 0, 0, 0,
		0x18, 0x00, 0x08, 0x00, 0x00, 0x00, /* claim: none */
		0, 0, 0, 0, 0, 0, 0, 0,
	};
	TALLOC_CTX *t = talloc_new(NULL);
	uint8_t *buf = NULL;
	size_t len = 0;

	(void)state;
	assert_int_equal(bfs_proto_encode(t, &m, &buf, &len), 0);
	assert_int_equal(len, sizeof(want_upload));
	assert_memory_equal(buf, want_upload, len);
	assert_int_equal(bfs_proto_encode(t, &w, &buf, &len), 0);
	assert_int_equal(len, sizeof(want_welcome));
	assert_memory_equal(buf, want_welcome, len);
	talloc_free(t);
}

static void test_other_types_fields_are_not_written(void **state)
{
	struct bfs_proto_msg in = {.type = BFS_PM_HELLO, .id = 9,
				   .share = "s", .cache_dir = "/c",
				   .key = "not a HELLO field", .pid = 12};
	struct bfs_proto_msg *out = NULL;
	TALLOC_CTX *t = talloc_new(NULL);
	uint8_t *buf = NULL;
	size_t len = 0, used = 0;

	(void)state;
	assert_int_equal(bfs_proto_encode(t, &in, &buf, &len), 0);
	assert_int_equal(len, BFS_PROTO_HDR + 6 + 1 + 6 + 2);
	assert_int_equal(bfs_proto_decode(t, buf, len, &out, &used), 0);
	assert_string_equal(out->share, "s");
	assert_string_equal(out->cache_dir, "/c");
	assert_null(out->key);
	assert_int_equal(out->pid, 0);
	talloc_free(t);
}

static void test_null_strings_are_left_out(void **state)
{
	struct bfs_proto_msg in = {.type = BFS_PM_HELLO, .id = 1,
				   .share = NULL, .cache_dir = ""};
	struct bfs_proto_msg st = {.type = BFS_PM_STATUS, .id = 2};
	struct bfs_proto_msg *out = NULL;
	TALLOC_CTX *t = talloc_new(NULL);
	uint8_t *buf = NULL;
	size_t len = 0, used = 0;

	(void)state;
	/* NULL: no field at all; "": a field of length 0, read back as "". */
	assert_int_equal(bfs_proto_encode(t, &in, &buf, &len), 0);
	assert_int_equal(len, BFS_PROTO_HDR + 6);
	assert_int_equal(bfs_proto_decode(t, buf, len, &out, &used), 0);
	assert_null(out->share);
	assert_non_null(out->cache_dir);
	assert_string_equal(out->cache_dir, "");
	/* A type without fields is the header alone. */
	assert_int_equal(bfs_proto_encode(t, &st, &buf, &len), 0);
	assert_int_equal(len, BFS_PROTO_HDR);
	assert_int_equal(bfs_proto_decode(t, buf, len, &out, &used), 0);
	assert_int_equal(out->type, BFS_PM_STATUS);
	assert_int_equal(out->id, 2);
	assert_int_equal(used, BFS_PROTO_HDR);
	talloc_free(t);
}

static void test_partial_frames_ask_for_more(void **state)
{
	struct bfs_proto_msg in = full_msg(BFS_PM_STATE, 5);
	struct bfs_proto_msg w = full_msg(BFS_PM_WAIT, 6);
	TALLOC_CTX *t = talloc_new(NULL);
	uint8_t *buf = NULL;
	size_t len = 0, cut;

	(void)state;
	assert_int_equal(bfs_proto_encode(t, &in, &buf, &len), 0);
	for (cut = 0; cut < len; cut++) {
		assert_refused(buf, cut, EAGAIN);
	}
	assert_int_equal(bfs_proto_encode(t, &w, &buf, &len), 0);
	for (cut = 0; cut < len; cut++) {
		assert_refused(buf, cut, EAGAIN);
	}
	talloc_free(t);
}

static void test_frames_back_to_back(void **state)
{
	struct bfs_proto_msg a = full_msg(BFS_PM_WAIT, 100);
	struct bfs_proto_msg b = full_msg(BFS_PM_DONE, 101);
	struct bfs_proto_msg *m = NULL;
	TALLOC_CTX *t = talloc_new(NULL);
	uint8_t *ba = NULL, *bb = NULL, *both;
	size_t la = 0, lb = 0, used = 0;

	(void)state;
	assert_int_equal(bfs_proto_encode(t, &a, &ba, &la), 0);
	assert_int_equal(bfs_proto_encode(t, &b, &bb, &lb), 0);
	both = talloc_array(t, uint8_t, la + lb);
	assert_non_null(both);
	memcpy(both, ba, la);
	memcpy(both + la, bb, lb);

	assert_int_equal(bfs_proto_decode(t, both, la + lb, &m, &used), 0);
	assert_int_equal(used, la);
	assert_int_equal(m->type, BFS_PM_WAIT);
	assert_int_equal(m->id, 100);
	assert_string_equal(m->key, a.key);
	assert_string_equal(m->staging, a.staging);

	assert_int_equal(bfs_proto_decode(t, both + used, la + lb - used, &m,
					  &used), 0);
	assert_int_equal(used, lb);
	assert_int_equal(m->type, BFS_PM_DONE);
	assert_int_equal(m->id, 101);
	assert_int_equal(m->err, b.err);
	assert_string_equal(m->etag, b.etag);
	talloc_free(t);
}

static void test_malformed_frames_are_refused(void **state)
{
	static const uint8_t zero8[8] = {0};
	struct frame f;
	size_t n;

	(void)state;

	/* A length over the maximum: refused from its 4 bytes alone. */
	f.n = 0;
	fr_u32(&f, BFS_PROTO_MAX_FRAME + 1);
	assert_refused(f.b, 4, EPROTO);
	f.n = 0;
	fr_u32(&f, UINT32_MAX);
	assert_refused(f.b, 4, EPROTO);
	/* The maximum itself is only a frame not all here yet. */
	f.n = 0;
	fr_u32(&f, BFS_PROTO_MAX_FRAME);
	assert_refused(f.b, 4, EAGAIN);

	/* Too short to hold version, type and id. */
	for (n = 0; n < 8; n++) {
		fr_start(&f, BFS_PROTO_VERSION, BFS_PM_STATUS);
		f.n = 0;
		fr_u32(&f, (uint32_t)n);
		assert_refused(f.b, BFS_PROTO_HDR, EPROTO);
	}

	/* A field running past the frame (more bytes follow in buf). */
	fr_start(&f, BFS_PROTO_VERSION, BFS_PM_UPLOAD);
	fr_u16(&f, BFS_PF_KEY);
	fr_u32(&f, 10);
	fr_bytes(&f, "abc", 3);
	fr_end(&f);
	fr_bytes(&f, "defghijklm", 10);
	assert_refused(f.b, f.n, EPROTO);
	/* A field's own header cut by the end of the frame. */
	fr_start(&f, BFS_PROTO_VERSION, BFS_PM_UPLOAD);
	fr_u16(&f, BFS_PF_KEY);
	fr_u16(&f, 0);
	fr_end(&f);
	fr_u16(&f, 0);
	assert_refused(f.b, f.n, EPROTO);
	/* Past the frame by a length that would wrap a 32-bit sum. */
	fr_start(&f, BFS_PROTO_VERSION, BFS_PM_UPLOAD);
	fr_u16(&f, 99);
	fr_u32(&f, UINT32_MAX);
	fr_end(&f);
	assert_refused(f.b, f.n, EPROTO);

	/* Integers are 8 bytes, no fewer, no more. */
	fr_start(&f, BFS_PROTO_VERSION, BFS_PM_WELCOME);
	fr_field(&f, BFS_PF_PID, zero8, 4);
	fr_end(&f);
	assert_refused(f.b, f.n, EPROTO);
	fr_start(&f, BFS_PROTO_VERSION, BFS_PM_WELCOME);
	fr_field(&f, BFS_PF_PID, "123456789", 9);
	fr_end(&f);
	assert_refused(f.b, f.n, EPROTO);
	fr_start(&f, BFS_PROTO_VERSION, BFS_PM_STATE);
	fr_field(&f, BFS_PF_BYTES, zero8, 0);
	fr_end(&f);
	assert_refused(f.b, f.n, EPROTO);

	/* A NUL would cut the key short of the one sent. */
	fr_start(&f, BFS_PROTO_VERSION, BFS_PM_UPLOAD);
	fr_field(&f, BFS_PF_KEY, "a\0b", 3);
	fr_end(&f);
	assert_refused(f.b, f.n, EPROTO);
	fr_start(&f, BFS_PROTO_VERSION, BFS_PM_DONE);
	fr_field(&f, BFS_PF_ETAG, "etag\0", 5);
	fr_end(&f);
	assert_refused(f.b, f.n, EPROTO);

	/* Types this version does not know. */
	fr_start(&f, BFS_PROTO_VERSION, 0);
	fr_end(&f);
	assert_refused(f.b, f.n, EPROTO);
	fr_start(&f, BFS_PROTO_VERSION, BFS_PM_REVOKE + 1);
	fr_end(&f);
	assert_refused(f.b, f.n, EPROTO);
	fr_start(&f, BFS_PROTO_VERSION, 0xffff);
	fr_end(&f);
	assert_refused(f.b, f.n, EPROTO);
}

static void test_other_versions_are_not_supported(void **state)
{
	struct frame f;

	(void)state;
	fr_start(&f, 2, BFS_PM_HELLO);
	fr_field(&f, BFS_PF_SHARE, "s", 1);
	fr_end(&f);
	assert_refused(f.b, f.n, EPROTONOSUPPORT);
	/* Whatever else such a frame holds is not ours to judge. */
	fr_start(&f, 2, 0xffff);
	fr_field(&f, BFS_PF_PID, "x", 1);
	fr_end(&f);
	assert_refused(f.b, f.n, EPROTONOSUPPORT);
	fr_start(&f, 0, BFS_PM_HELLO);
	fr_end(&f);
	assert_refused(f.b, f.n, EPROTONOSUPPORT);
	/* But it is still read whole first: part of one is just part. */
	assert_refused(f.b, f.n - 1, EAGAIN);
}

static void test_unknown_tags_skipped_last_field_wins(void **state)
{
	static const uint8_t junk[] = {0, 1, 2, 0, 0xff};
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_proto_msg *m = NULL;
	struct frame f;
	size_t used = 0;

	(void)state;
	fr_start(&f, BFS_PROTO_VERSION, BFS_PM_WAIT);
	fr_field(&f, 99, junk, sizeof(junk));	/* a newer sender's field */
	fr_field(&f, 0, junk, 3);		/* 0 is no tag either */
	fr_field(&f, BFS_PF_KEY, "first", 5);
	fr_field(&f, 0xffff, junk, 0);
	fr_field(&f, BFS_PF_STAGING, "stg", 3);
	fr_field(&f, BFS_PF_KEY, "second", 6);	/* the last one wins */
	/* A known field the type does not carry is kept all the same. */
	fr_field(&f, BFS_PF_ETAG, "e", 1);
	fr_end(&f);
	assert_int_equal(bfs_proto_decode(t, f.b, f.n, &m, &used), 0);
	assert_int_equal(used, f.n);
	assert_int_equal(m->type, BFS_PM_WAIT);
	assert_int_equal(m->id, 7);
	assert_string_equal(m->key, "second");
	assert_string_equal(m->staging, "stg");
	assert_string_equal(m->etag, "e");
	/* The first key was freed, not left on the message. */
	assert_int_equal(talloc_total_blocks(m), 4);
	talloc_free(t);
}

static void test_encode_refusals(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_proto_msg m = {.type = BFS_PM_UPLOAD, .id = 1};
	struct bfs_proto_msg *out = NULL;
	/* All the frame can hold: the length field counts 8 + 6 + key. */
	size_t fits = BFS_PROTO_MAX_FRAME - 8 - 6;
	char *key = talloc_array(t, char, 70001);
	uint8_t *buf = NULL;
	size_t len = 0, used = 0;

	(void)state;
	assert_non_null(key);
	memset(key, 'k', 70000);
	key[70000] = '\0';
	m.key = key;
	assert_int_equal(bfs_proto_encode(t, &m, &buf, &len), EMSGSIZE);

	/* The largest key that fits, and one byte more. */
	key[fits] = '\0';
	assert_int_equal(bfs_proto_encode(t, &m, &buf, &len), 0);
	assert_int_equal(len, 4 + BFS_PROTO_MAX_FRAME);
	assert_int_equal(bfs_proto_decode(t, buf, len, &out, &used), 0);
	assert_int_equal(used, len);
	assert_int_equal(strlen(out->key), fits);
	key[fits] = 'k';
	key[fits + 1] = '\0';
	assert_int_equal(bfs_proto_encode(t, &m, &buf, &len), EMSGSIZE);

	/* A type the protocol lacks is a bug of the caller's. */
	m.type = 0;
	assert_int_equal(bfs_proto_encode(t, &m, &buf, &len), EINVAL);
	m.type = BFS_PM_REVOKE + 1;
	assert_int_equal(bfs_proto_encode(t, &m, &buf, &len), EINVAL);
	talloc_free(t);
}

static void test_type_names(void **state)
{
	(void)state;
	assert_string_equal(bfs_proto_type_name(BFS_PM_HELLO), "HELLO");
	assert_string_equal(bfs_proto_type_name(BFS_PM_WELCOME), "WELCOME");
	assert_string_equal(bfs_proto_type_name(BFS_PM_UPLOAD), "UPLOAD");
	assert_string_equal(bfs_proto_type_name(BFS_PM_WAIT), "WAIT");
	assert_string_equal(bfs_proto_type_name(BFS_PM_DONE), "DONE");
	assert_string_equal(bfs_proto_type_name(BFS_PM_STATUS), "STATUS");
	assert_string_equal(bfs_proto_type_name(BFS_PM_STATE), "STATE");
	assert_string_equal(bfs_proto_type_name(BFS_PM_FETCH), "FETCH");
	assert_string_equal(bfs_proto_type_name(BFS_PM_PREFETCH), "PREFETCH");
	assert_string_equal(bfs_proto_type_name(BFS_PM_RELEASE), "RELEASE");
	assert_string_equal(bfs_proto_type_name(BFS_PM_LIST), "LIST");
	assert_string_equal(bfs_proto_type_name(BFS_PM_CLAIM), "CLAIM");
	assert_string_equal(bfs_proto_type_name(BFS_PM_UNCLAIM), "UNCLAIM");
	assert_string_equal(bfs_proto_type_name(BFS_PM_REVOKE), "REVOKE");
	/* Log lines print whatever a peer sent: never NULL. */
	assert_string_equal(bfs_proto_type_name(0), "?");
	assert_string_equal(bfs_proto_type_name(BFS_PM_REVOKE + 1), "?");
	assert_string_equal(bfs_proto_type_name((enum bfs_proto_type)-1), "?");
	assert_string_equal(bfs_proto_type_name((enum bfs_proto_type)0xffff),
			    "?");
}

/* The socket buffer both ends keep: frames arrive a byte at a time. */
static void test_buffer_takes_frames_as_they_complete(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_proto_msg a = full_msg(BFS_PM_WAIT, 1);
	struct bfs_proto_msg b = full_msg(BFS_PM_DONE, 2);
	struct bfs_proto_buf in = {0};
	struct bfs_proto_msg *m = NULL;
	uint8_t *ea, *eb, *all;
	size_t la, lb, i, got = 0;

	(void)state;
	assert_int_equal(bfs_proto_encode(t, &a, &ea, &la), 0);
	assert_int_equal(bfs_proto_encode(t, &b, &eb, &lb), 0);
	all = talloc_array(t, uint8_t, la + lb);
	memcpy(all, ea, la);
	memcpy(all + la, eb, lb);
	for (i = 0; i < la + lb; i++) {
		assert_int_equal(bfs_proto_buf_append(t, &in, all + i, 1), 0);
		while (bfs_proto_buf_take(t, &in, &m) == 0) {
			assert_int_equal(m->id, ++got);
			assert_int_equal(i + 1, got == 1 ? la : la + lb);
		}
	}
	assert_int_equal(got, 2);
	assert_int_equal(in.len, 0);
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_buffer_takes_frames_as_they_complete),
		cmocka_unit_test(test_every_type_round_trips),
		cmocka_unit_test(test_wire_layout),
		cmocka_unit_test(test_other_types_fields_are_not_written),
		cmocka_unit_test(test_null_strings_are_left_out),
		cmocka_unit_test(test_partial_frames_ask_for_more),
		cmocka_unit_test(test_frames_back_to_back),
		cmocka_unit_test(test_malformed_frames_are_refused),
		cmocka_unit_test(test_other_versions_are_not_supported),
		cmocka_unit_test(test_unknown_tags_skipped_last_field_wins),
		cmocka_unit_test(test_encode_refusals),
		cmocka_unit_test(test_type_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
