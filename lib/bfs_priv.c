/*
 * The server's own rights for work in the cache folder (see bfs_priv.h).
 */
#include "bfs_priv.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>

static void (*bfs_priv_enter_fn)(void);
static void (*bfs_priv_leave_fn)(void);
static pthread_t bfs_priv_thread;
static __thread unsigned bfs_priv_nesting;

void bfs_priv_set(void (*enter)(void), void (*leave)(void))
{
	bfs_priv_enter_fn = enter;
	bfs_priv_leave_fn = leave;
	bfs_priv_thread = pthread_self();
}

static bool bfs_priv_here(void)
{
	return bfs_priv_enter_fn != NULL &&
	       pthread_equal(pthread_self(), bfs_priv_thread);
}

/* Both keep errno: what the call between them left is the caller's. */
void bfs_priv_enter(void)
{
	int err = errno;

	bfs_priv_nesting++;
	if (bfs_priv_here()) {
		bfs_priv_enter_fn();
	}
	errno = err;
}

void bfs_priv_leave(void)
{
	int err = errno;

	bfs_priv_nesting--;
	if (bfs_priv_here()) {
		bfs_priv_leave_fn();
	}
	errno = err;
}

unsigned bfs_priv_depth(void)
{
	return bfs_priv_nesting;
}
