/*
 * bfs_lease: when a lease object has run out, by the server's clock.
 * Taking, renewing and giving back against an S3 server are tested in
 * tests/test_cluster.py (the front's conditional writes) and
 * tests/test_rgw.py (Ceph RGW's own).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "bfs_lease.h"

static void test_a_lease_runs_out_after_its_seconds_by_the_servers_clock(void **state)
{
	(void)state;
	/* Written at 1000 for 10 s: Last-Modified's rounding gives it one
	 * second more. */
	assert_false(bfs_lease_expired(1000, 1000, "10"));
	assert_false(bfs_lease_expired(1000, 1011, "10"));
	assert_true(bfs_lease_expired(1000, 1012, "10"));
	/* A server clock behind the write (another server answering): not
	 * run out. */
	assert_false(bfs_lease_expired(1000, 990, "10"));
	/* No clock from the server: wait, never guess. */
	assert_false(bfs_lease_expired(-1, 5000, "10"));
	assert_false(bfs_lease_expired(1000, -1, "10"));
}

static void test_a_lease_given_back_or_not_ours_may_be_taken_at_once(void **state)
{
	(void)state;
	assert_true(bfs_lease_expired(1000, 1000, "0"));	/* given back */
	assert_true(bfs_lease_expired(1000, 1000, NULL));	/* no metadata */
	assert_true(bfs_lease_expired(1000, 1000, ""));
	assert_true(bfs_lease_expired(1000, 1000, "ten"));
	assert_true(bfs_lease_expired(1000, 1000, "10s"));
	assert_true(bfs_lease_expired(1000, 1000, "-5"));
	assert_true(bfs_lease_expired(1000, 1000, "99999999999999999999"));
	assert_true(bfs_lease_expired(1000, 1000, "86401"));	/* over a day */
	assert_false(bfs_lease_expired(1000, 1000, "86400"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_a_lease_runs_out_after_its_seconds_by_the_servers_clock),
		cmocka_unit_test(test_a_lease_given_back_or_not_ours_may_be_taken_at_once),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
