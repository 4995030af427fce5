/* The one parameter table: its parsing, defaults and refusals. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "bfs_params.h"

/* A share's smb.conf lines: "name=value" pairs, NULL-terminated. */
static const char *conf_get(void *priv, const char *name)
{
	const char *const *kv = priv;
	size_t n = strlen(name);

	for (; *kv != NULL; kv++) {
		if (strncmp(*kv, name, n) == 0 && (*kv)[n] == '=') {
			return *kv + n + 1;
		}
	}
	return NULL;
}

static void test_parsers(void **state)
{
	bool b;
	int64_t i;
	uint64_t u;

	(void)state;
	/* Samba's spellings, any case: "on" is yes (bucketfs-ctl once said no). */
	assert_true(bfs_parse_bool("on", &b) && b);
	assert_true(bfs_parse_bool("YES", &b) && b);
	assert_true(bfs_parse_bool("1", &b) && b);
	assert_true(bfs_parse_bool("Off", &b) && !b);
	assert_true(bfs_parse_bool("false", &b) && !b);
	assert_false(bfs_parse_bool("maybe", &b));
	assert_false(bfs_parse_bool("", &b));
	/* Modes are octal, as everywhere in smb.conf. */
	assert_true(bfs_parse_int("0644", &i) && i == 0644);
	assert_true(bfs_parse_int("-1", &i) && i == -1);
	assert_true(bfs_parse_int("30 ", &i) && i == 30);
	assert_false(bfs_parse_int("10s", &i));
	assert_false(bfs_parse_int("", &i));
	assert_true(bfs_parse_size("512", &u) && u == 512);
	assert_true(bfs_parse_size("64k", &u) && u == 64 << 10);
	assert_true(bfs_parse_size("16G", &u) && u == 16ULL << 30);
	assert_true(bfs_parse_size("2T", &u) && u == 2ULL << 40);
	assert_false(bfs_parse_size("12Q", &u));
	assert_false(bfs_parse_size("1MB", &u));
	assert_false(bfs_parse_size("-5", &u));
	assert_false(bfs_parse_size("99999999P", &u)); /* overflows */
}

static void test_defaults_and_values(void **state)
{
	const char *none[] = {NULL};
	const char *set[] = {"path style=on", "retries=7", "cache size=2G",
			     "region=eu-west-1", NULL};
	struct bfs_psrc empty = {conf_get, none}, share = {conf_get, set};
	struct bfs_pbad bad;
	const char *s;
	bool b;
	int64_t i;
	uint64_t u;

	(void)state;
	assert_int_equal(bfs_pget_bool(&empty, "path style", &b, &bad), 0);
	assert_false(b);
	assert_int_equal(bfs_pget_bool(&share, "path style", &b, &bad), 0);
	assert_true(b);
	assert_int_equal(bfs_pget_int(&empty, "retries", &i, &bad), 0);
	assert_int_equal(i, 4);
	assert_int_equal(bfs_pget_int(&share, "retries", &i, &bad), 0);
	assert_int_equal(i, 7);
	assert_int_equal(bfs_pget_size(&share, "cache size", &u, &bad), 0);
	assert_true(u == 2ULL << 30);
	assert_int_equal(bfs_pget_string(&empty, "region", &s, &bad), 0);
	assert_string_equal(s, "us-east-1");
	assert_int_equal(bfs_pget_string(&share, "region", &s, &bad), 0);
	assert_string_equal(s, "eu-west-1");
	assert_int_equal(bfs_pget_string(&empty, "bucket", &s, &bad), 0);
	assert_null(s);
	/* A name the table lacks, or read as the wrong type, is a bug. */
	assert_int_equal(bfs_pget_int(&empty, "no such thing", &i, &bad),
			 EINVAL);
	assert_int_equal(bfs_pget_int(&empty, "region", &i, &bad), EINVAL);
}

/* What an admin is told, word for word as the log line carries it. */
static void test_refusals_say_what_is_wanted(void **state)
{
	const char *set[] = {"retries=lots", "cache size=12Q", "block size=5000",
			     "part size=1M", "verify tls=maybe",
			     "metadata ttl=10s", NULL};
	struct bfs_psrc share = {conf_get, set};
	struct bfs_pbad bad;
	bool b;
	int64_t i;
	uint64_t u;

	(void)state;
	assert_int_equal(bfs_pget_int(&share, "retries", &i, &bad), EINVAL);
	assert_string_equal(bad.value, "lots");
	assert_string_equal(bad.want, "a whole number from 0 to 20");
	assert_int_equal(bfs_pget_size(&share, "cache size", &u, &bad), EINVAL);
	assert_string_equal(bad.want,
			    "a size of at least 1024K, written like 64M or 16G");
	assert_int_equal(bfs_pget_size(&share, "block size", &u, &bad), EINVAL);
	assert_string_equal(bad.want, "a power of two (4K, 64K, 1M...)");
	assert_int_equal(bfs_pget_size(&share, "part size", &u, &bad), EINVAL);
	assert_string_equal(bad.want,
			    "a size from 5120K to 255M, written like 64M or 16G");
	assert_int_equal(bfs_pget_bool(&share, "verify tls", &b, &bad), EINVAL);
	assert_string_equal(bad.want, "yes or no");
	assert_int_equal(bfs_pget_int(&share, "metadata ttl", &i, &bad),
			 EINVAL);
	assert_string_equal(bad.want, "a whole number from -1 to 2147483647");
}

/* Every default is a value its own entry takes; every name is once. */
static void test_the_table_keeps_its_own_rules(void **state)
{
	const char *none[] = {NULL};
	struct bfs_psrc empty = {conf_get, none};
	const struct bfs_pdef *d, *e;
	struct bfs_pbad bad;
	const char *s;
	bool b;
	int64_t i;
	uint64_t u;

	(void)state;
	for (d = bfs_pdefs; d->name != NULL; d++) {
		for (e = d + 1; e->name != NULL; e++) {
			assert_string_not_equal(d->name, e->name);
		}
		switch (d->type) {
		case BFS_PT_BOOL:
			assert_int_equal(bfs_pget_bool(&empty, d->name, &b,
						       &bad), 0);
			break;
		case BFS_PT_INT:
			assert_int_equal(bfs_pget_int(&empty, d->name, &i,
						      &bad), 0);
			break;
		case BFS_PT_SIZE:
			assert_int_equal(bfs_pget_size(&empty, d->name, &u,
						       &bad), 0);
			break;
		default:
			assert_int_equal(bfs_pget_string(&empty, d->name, &s,
							 &bad), 0);
			break;
		}
	}
	assert_true(d - bfs_pdefs > 30);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parsers),
		cmocka_unit_test(test_defaults_and_values),
		cmocka_unit_test(test_refusals_say_what_is_wanted),
		cmocka_unit_test(test_the_table_keeps_its_own_rules),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
