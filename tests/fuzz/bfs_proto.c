/*
 * libFuzzer target: the frames between the module and bucketfsd
 * (lib/bfs_proto.c), as a broken or hostile peer on the socket could send
 * them, several to a read.
 *
 * Frames are decoded one after the other, as a reader would.  A decoded
 * message written back must decode to the same message (type, id, every
 * field its type carries), and that second frame must encode to itself:
 * otherwise two ends would read one message two ways.  A refusal is one
 * of the three the header names, leaves nothing allocated, and does not
 * depend on how much of the frame had arrived, EAGAIN apart.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <talloc.h>

#include "bfs_proto.h"
#include "fuzz.h"

/*
 * What integer fields missing from a frame add when it is written back:
 * at most 8 (STATE's), each a 6-byte header and 8 bytes.
 */
#define INT_FIELDS_MAX (8 * (6 + 8))

static bool same_str(const char *a, const char *b)
{
	return (a == NULL && b == NULL) ||
	       (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/*
 * The fields each type carries, as the header lists them, written out
 * again here rather than taken from lib/bfs_proto.c's table: a slip in
 * that table should show as a difference, not be shared.
 */
static void check_same(const struct bfs_proto_msg *a,
		       const struct bfs_proto_msg *b)
{
	FUZZ_CHECK(a->version == BFS_PROTO_VERSION &&
		   b->version == BFS_PROTO_VERSION);
	FUZZ_CHECK(a->type == b->type);
	FUZZ_CHECK(a->id == b->id);
	switch (a->type) {
	case BFS_PM_HELLO:
		FUZZ_CHECK(same_str(a->share, b->share));
		FUZZ_CHECK(same_str(a->cache_dir, b->cache_dir));
		break;
	case BFS_PM_WELCOME:
		FUZZ_CHECK(a->pid == b->pid);
		FUZZ_CHECK(a->arena == b->arena);
		FUZZ_CHECK(a->claim == b->claim);
		break;
	case BFS_PM_CLAIM:
		FUZZ_CHECK(a->size == b->size);
		/* fall through: the rest as UNCLAIM */
	case BFS_PM_UNCLAIM:
	case BFS_PM_REVOKE:
		FUZZ_CHECK(same_str(a->key, b->key));
		FUZZ_CHECK(same_str(a->etag, b->etag));
		break;
	case BFS_PM_RELEASE:
		FUZZ_CHECK(a->pin == b->pin);
		break;
	case BFS_PM_UPLOAD:
	case BFS_PM_LIST:
	case BFS_PM_CHANGED:
		FUZZ_CHECK(same_str(a->key, b->key));
		break;
	case BFS_PM_WAIT:
		FUZZ_CHECK(same_str(a->key, b->key));
		FUZZ_CHECK(same_str(a->staging, b->staging));
		break;
	case BFS_PM_DONE:
		FUZZ_CHECK(a->err == b->err);
		FUZZ_CHECK(same_str(a->etag, b->etag));
		FUZZ_CHECK(a->slot == b->slot);
		FUZZ_CHECK(a->pin == b->pin);
		break;
	case BFS_PM_STATUS:
		break;
	case BFS_PM_STATE:
		FUZZ_CHECK(a->pid == b->pid);
		FUZZ_CHECK(a->pending == b->pending);
		FUZZ_CHECK(a->uploaded == b->uploaded);
		FUZZ_CHECK(a->failed == b->failed);
		FUZZ_CHECK(a->bytes == b->bytes);
		FUZZ_CHECK(a->fetches == b->fetches);
		FUZZ_CHECK(a->fetched == b->fetched);
		FUZZ_CHECK(a->lent == b->lent);
		break;
	case BFS_PM_FETCH:
		FUZZ_CHECK(a->offset == b->offset);
		FUZZ_CHECK(a->length == b->length);
		FUZZ_CHECK(a->lend == b->lend);
		/* fall through: the rest as PREFETCH */
	case BFS_PM_PREFETCH:
		FUZZ_CHECK(same_str(a->key, b->key));
		FUZZ_CHECK(same_str(a->etag, b->etag));
		FUZZ_CHECK(a->size == b->size);
		FUZZ_CHECK(a->ahead == b->ahead);
		FUZZ_CHECK(a->ahead_n == b->ahead_n);
		break;
	default:
		FUZZ_CHECK(!"decoded a type the header does not list");
	}
}

/* The answer for the first cut bytes of a frame: EAGAIN, or final's. */
static void check_cut(TALLOC_CTX *t, const uint8_t *buf, size_t cut,
		      int final)
{
	struct bfs_proto_msg *m = NULL;
	size_t blocks = talloc_total_blocks(t), used = 0;
	int rc = bfs_proto_decode(t, buf, cut, &m, &used);

	FUZZ_CHECK(rc == EAGAIN || (rc == final && rc != 0));
	FUZZ_CHECK(talloc_total_blocks(t) == blocks);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	TALLOC_CTX *t = talloc_new(NULL);
	size_t off = 0;

	FUZZ_CHECK(t != NULL);
	while (off < size) {
		struct bfs_proto_msg *m = NULL, *m2 = NULL, *m3 = NULL;
		uint8_t *buf = NULL, *buf2 = NULL;
		size_t len = 0, len2 = 0, used = 0, used2 = 0;
		size_t blocks = talloc_total_blocks(t);
		int rc = bfs_proto_decode(t, data + off, size - off, &m, &used);

		if (rc != 0) {
			FUZZ_CHECK(rc == EAGAIN || rc == EPROTO ||
				   rc == EPROTONOSUPPORT);
			FUZZ_CHECK(talloc_total_blocks(t) == blocks);
			if (rc != EAGAIN) {
				check_cut(t, data + off, 4, rc);
				check_cut(t, data + off, size - off - 1, rc);
			}
			break; /* a reader closes, or waits for more */
		}
		FUZZ_CHECK(used >= BFS_PROTO_HDR && used <= size - off);
		FUZZ_CHECK(used <= 4 + BFS_PROTO_MAX_FRAME);
		FUZZ_CHECK(strcmp(bfs_proto_type_name(m->type), "?") != 0);
		check_cut(t, data + off, used - 1, 0);
		check_cut(t, data + off, used / 2, 0);

		/*
		 * Writing back keeps at most one copy of each field read, but
		 * an integer is always written, read or not (0): at most the
		 * 7 of STATE more.  Only then may the frame not fit.
		 */
		rc = bfs_proto_encode(t, m, &buf, &len);
		if (rc == EMSGSIZE) {
			FUZZ_CHECK(used > 4 + BFS_PROTO_MAX_FRAME -
					      INT_FIELDS_MAX);
			talloc_free(m);
			off += used;
			continue;
		}
		FUZZ_CHECK(rc == 0);
		FUZZ_CHECK(len <= used + INT_FIELDS_MAX);
		FUZZ_CHECK(bfs_proto_decode(t, buf, len, &m2, &used2) == 0);
		FUZZ_CHECK(used2 == len);
		check_same(m, m2);

		/* The second frame is canonical: it encodes to itself. */
		FUZZ_CHECK(bfs_proto_encode(t, m2, &buf2, &len2) == 0);
		FUZZ_CHECK(len2 == len && memcmp(buf2, buf, len) == 0);
		FUZZ_CHECK(bfs_proto_decode(t, buf2, len2, &m3, &used2) == 0);
		check_same(m2, m3);

		talloc_free(m);
		talloc_free(m2);
		talloc_free(m3);
		talloc_free(buf);
		talloc_free(buf2);
		off += used;
	}
	talloc_free(t);
	return 0;
}
