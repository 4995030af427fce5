/*
 * libFuzzer target: the metadata index's entry records and key layout
 * (lib/bfs_index.c), as a damaged or foreign LMDB file could hold them.
 *
 * A record the decoder accepts must be exactly what the encoder writes
 * for the entry it decoded: anything else means two byte strings read as
 * the same entry, or an entry that changes when written back; and it
 * must decode again to the same entry, times and attributes included.  A full key
 * split into directory and name must join back to itself.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <talloc.h>

#include "bfs_index.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_entry e = {.name = "x"};
	char *key, *dir = NULL, *name = NULL;
	void *buf = NULL;
	size_t len = 0;

	FUZZ_CHECK(t != NULL);
	if (bfs_index_decode(t, data, size, &e) == 0) {
		struct bfs_entry again = {.name = "x"};

		FUZZ_CHECK(strcmp(e.name, "x") == 0); /* left alone */
		FUZZ_CHECK(bfs_index_encode(t, &e, &buf, &len) == 0);
		FUZZ_CHECK(len == size && memcmp(buf, data, size) == 0);
		FUZZ_CHECK(bfs_index_decode(t, buf, len, &again) == 0);
		FUZZ_CHECK(again.is_dir == e.is_dir && again.size == e.size &&
			   again.mtime == e.mtime && again.ino == e.ino &&
			   again.flags == e.flags &&
			   bfs_meta_equal(&again.meta, &e.meta) &&
			   (e.etag == NULL ? again.etag == NULL :
			    strcmp(e.etag, again.etag) == 0));
	}

	key = talloc_strndup(t, (const char *)data, size);
	FUZZ_CHECK(key != NULL);
	FUZZ_CHECK(bfs_key_split(t, key, &dir, &name) == 0);
	FUZZ_CHECK(strchr(name, '/') == NULL);
	FUZZ_CHECK(dir[0] == '\0' || dir[strlen(dir) - 1] == '/');
	FUZZ_CHECK(strlen(dir) + strlen(name) == strlen(key) &&
		   strncmp(key, dir, strlen(dir)) == 0 &&
		   strcmp(key + strlen(dir), name) == 0);
	FUZZ_CHECK(bfs_index_ino_hint(key) > BFS_ROOT_INO &&
		   bfs_index_ino_hint(key) <= INT64_MAX);

	talloc_free(t);
	return 0;
}
