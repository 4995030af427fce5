/*
 * libFuzzer target: the role-credentials file bucketfsd writes into the
 * cache folder and smbd reads (lib/bfs_role_creds.c).
 *
 * Text the parser accepts must be exactly what the formatter writes for
 * what it parsed: anything else means two files read as the same
 * credentials, or a value the parser let through that no refresh writes.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <talloc.h>

#include "bfs_role_creds.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct s3_credentials c = {0};
	char *endpoint = NULL, *again;
	time_t expire = 0;

	FUZZ_CHECK(t != NULL);
	if (bfs_role_creds_parse(t, (const char *)data, size, &endpoint, &c,
				 &expire) == 0) {
		again = bfs_role_creds_format(t, endpoint, &c, expire);
		FUZZ_CHECK(again != NULL);
		FUZZ_CHECK(strlen(again) == size &&
			   memcmp(again, data, size) == 0);
	}
	talloc_free(t);
	return 0;
}
