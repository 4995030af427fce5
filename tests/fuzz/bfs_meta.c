/*
 * libFuzzer target: the user metadata of an object (lib/bfs_meta.c), as
 * another S3 tool, or anyone with write access to the bucket, stored it.
 *
 * Input: a header name, a NUL, its value.  A value the parser accepts must
 * be a time or attribute set it can write back, and reading that back
 * must give the same: a file's times must not drift each time they go
 * through S3.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <talloc.h>

#include "bfs_meta.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const uint8_t *nul = memchr(data, '\0', size);
	struct bfs_meta m = {0}, back = {0};
	struct s3_kv kv[BFS_META_HEADERS_MAX];
	char *name, *value;
	size_t n = 0, i;

	FUZZ_CHECK(t != NULL);
	if (nul == NULL) {
		talloc_free(t);
		return 0;
	}
	name = talloc_strndup(t, (const char *)data, (size_t)(nul - data));
	value = talloc_strndup(t, (const char *)nul + 1,
			       size - (size_t)(nul - data) - 1);
	FUZZ_CHECK(name != NULL && value != NULL);
	if (bfs_meta_parse_header(&m, name, value)) {
		FUZZ_CHECK(m.have != 0);
		FUZZ_CHECK(m.mtime.tv_nsec >= 0 && m.mtime.tv_nsec < 1000000000L);
		FUZZ_CHECK(m.btime.tv_nsec >= 0 && m.btime.tv_nsec < 1000000000L);
		FUZZ_CHECK((m.attrs & ~(uint32_t)BFS_ATTR_KEPT) == 0);
		FUZZ_CHECK(bfs_meta_to_headers(t, &m, kv, &n) == 0 && n == 1);
		for (i = 0; i < n; i++) {
			FUZZ_CHECK(bfs_meta_parse_header(&back, kv[i].name,
							 kv[i].value));
		}
		FUZZ_CHECK(back.have == m.have);
		FUZZ_CHECK(bfs_meta_equal(&back, &m));
	} else {
		FUZZ_CHECK(m.have == 0);
	}
	talloc_free(t);
	return 0;
}
