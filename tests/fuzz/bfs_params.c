/*
 * smb.conf values through the one parameter table (lib/bfs_params): any
 * bytes as the value of every parameter either parse to a value within
 * that parameter's bounds (a power of two where it must be), or are
 * refused with what they must be; nothing else.
 */
#include <stdint.h>
#include <string.h>

#include <talloc.h>

#include "bfs_params.h"
#include "fuzz.h"

static const char *the_value(void *priv, const char *name)
{
	(void)name;
	return priv;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *v = talloc_strndup(NULL, (const char *)data, size);
	const struct bfs_psrc src = {the_value, v};
	const struct bfs_pdef *d;
	struct bfs_pbad bad;
	const char *s;
	uint64_t u;
	int64_t i;
	bool b;

	FUZZ_CHECK(v != NULL);
	for (d = bfs_pdefs; d->name != NULL; d++) {
		memset(&bad, 0, sizeof(bad));
		switch (d->type) {
		case BFS_PT_BOOL:
			if (bfs_pget_bool(&src, d->name, &b, &bad) != 0) {
				FUZZ_CHECK(strcmp(bad.want, "yes or no") == 0);
			}
			break;
		case BFS_PT_INT:
			if (bfs_pget_int(&src, d->name, &i, &bad) == 0) {
				FUZZ_CHECK(i >= d->min && i <= d->max);
			} else {
				FUZZ_CHECK(bad.want[0] != '\0');
			}
			break;
		case BFS_PT_SIZE:
			if (bfs_pget_size(&src, d->name, &u, &bad) == 0) {
				FUZZ_CHECK(u >= (uint64_t)d->min &&
					   u <= (uint64_t)d->max);
				FUZZ_CHECK(!d->pow2 || (u & (u - 1)) == 0);
			} else {
				FUZZ_CHECK(bad.want[0] != '\0');
			}
			break;
		default:
			FUZZ_CHECK(bfs_pget_string(&src, d->name, &s, &bad) == 0);
			FUZZ_CHECK(s == d->def || strcmp(s, v) == 0);
			break;
		}
	}
	talloc_free(v);
	return 0;
}
