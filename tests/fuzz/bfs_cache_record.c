/*
 * libFuzzer target: the extent cache's block records (lib/bfs_cache.c),
 * as a damaged or foreign LMDB file could hold them.
 *
 * A record the decoder accepts is one the cache could have written: a
 * known eviction segment, a length a block can have, and the same bytes
 * when stored again (the record is stored as the struct itself).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bfs_cache.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bfs_block_rec rec;

	if (bfs_cache_block_decode(data, size, &rec) != 0) {
		return 0;
	}
	FUZZ_CHECK(size == sizeof(rec));
	FUZZ_CHECK(rec.seg <= 1);
	FUZZ_CHECK(rec.len > 0 && rec.len <= 1U << 31);
	FUZZ_CHECK(memcmp(&rec, data, sizeof(rec)) == 0);
	return 0;
}
