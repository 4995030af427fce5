/*
 * libFuzzer target: the change messages nodes of a cluster send each
 * other over CTDB (lib/bfs_share.c), as any process that can talk to
 * ctdbd could send them.
 *
 * A message the parser accepts must be exactly what the encoder writes
 * for what it parsed: anything else means two byte strings read as the
 * same change.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <talloc.h>

#include "bfs_ctdb_msg.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *bucket, *key;
	uint32_t origin;
	uint8_t *again;
	size_t len = 0;

	FUZZ_CHECK(t != NULL);
	if (bfs_change_msg_parse(data, size, &origin, &bucket, &key) == 0) {
		FUZZ_CHECK(bucket[0] != '\0');
		again = bfs_change_msg(t, origin, bucket, key, &len);
		FUZZ_CHECK(again != NULL);
		FUZZ_CHECK(len == size && memcmp(again, data, size) == 0);
	}
	talloc_free(t);
	return 0;
}
