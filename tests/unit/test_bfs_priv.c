/*
 * The server's rights for cache-folder calls (lib/bfs_priv): lent on the
 * thread that set the hooks, nested, errno kept; nothing elsewhere.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "bfs_priv.h"

static int entered, left;

static void enter(void)
{
	entered++;
	errno = EPERM; /* a careless hook: the caller's errno must survive */
}

static void leave(void)
{
	left++;
	errno = EPERM;
}

static void *other_thread(void *arg)
{
	(void)arg;
	bfs_priv_enter();
	bfs_priv_leave();
	return NULL;
}

static void test_hooks_nest_keep_errno_and_stay_on_their_thread(void **state)
{
	pthread_t t;

	(void)state;
	bfs_priv_enter(); /* no hooks yet: nothing happens */
	bfs_priv_leave();
	assert_int_equal(entered + left, 0);

	bfs_priv_set(enter, leave);
	errno = ENOENT;
	bfs_priv_enter();
	assert_int_equal(errno, ENOENT);
	bfs_priv_enter();
	assert_int_equal(bfs_priv_depth(), 2);
	errno = EEXIST; /* what the call between them left */
	bfs_priv_leave();
	assert_int_equal(errno, EEXIST);
	bfs_priv_leave();
	assert_int_equal(bfs_priv_depth(), 0);
	assert_int_equal(entered, 2);
	assert_int_equal(left, 2);

	/* Another thread (a fill thread) never runs the hooks. */
	assert_int_equal(pthread_create(&t, NULL, other_thread, NULL), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(entered, 2);
	assert_int_equal(left, 2);
	bfs_priv_set(NULL, NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hooks_nest_keep_errno_and_stay_on_their_thread),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
