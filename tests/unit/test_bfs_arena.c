/* The fetch arena: slots taken and given, and another process's view. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "bfs_arena.h"

#define SLOT 8192u

static void test_slots_are_taken_last_given_first(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_arena *a = bfs_arena_new(t, SLOT, 3);
	uint64_t o1 = 1, o2 = 1, o3 = 1, o4 = 1;
	uint8_t *p1, *p2, *p3;

	(void)state;
	assert_non_null(a);
	assert_int_equal(bfs_arena_size(a), 3 * SLOT);
	assert_int_equal(bfs_arena_free_slots(a), 3);
	p1 = bfs_arena_take(a, &o1);
	p2 = bfs_arena_take(a, &o2);
	p3 = bfs_arena_take(a, &o3);
	assert_non_null(p1);
	assert_non_null(p2);
	assert_non_null(p3);
	/* Three different slots, each on a slot boundary. */
	assert_true(o1 != o2 && o2 != o3 && o1 != o3);
	assert_int_equal(o1 % SLOT, 0);
	assert_int_equal(o2 % SLOT, 0);
	assert_int_equal(o3 % SLOT, 0);
	assert_true(p2 - p1 == (ptrdiff_t)(o2 - o1));
	/* All out: none to take. */
	assert_null(bfs_arena_take(a, &o4));
	assert_int_equal(bfs_arena_free_slots(a), 0);
	/* The last given is the next taken (its pages are the warm ones). */
	bfs_arena_give(a, o1);
	bfs_arena_give(a, o3);
	assert_true(bfs_arena_take(a, &o4) == p3);
	assert_int_equal(o4, o3);
	/* Given back wrongly: refused, never handed out twice. */
	bfs_arena_give(a, o1 + 1);
	bfs_arena_give(a, 99 * SLOT);
	assert_int_equal(bfs_arena_free_slots(a), 1);
	talloc_free(t);
}

static void test_bad_sizes_are_refused(void **state)
{
	(void)state;
	assert_null(bfs_arena_new(NULL, 0, 4));
	assert_null(bfs_arena_new(NULL, 1000, 4)); /* not pages: no O_DIRECT */
	assert_null(bfs_arena_new(NULL, SLOT, 0));
}

/* A child process maps the descriptor and sees what the owner wrote. */
static void test_a_view_in_another_process_sees_the_bytes(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_arena *a = bfs_arena_new(t, SLOT, 2);
	uint64_t off = 0;
	uint8_t *p;
	int status = 0;
	pid_t pid;

	(void)state;
	assert_non_null(a);
	p = bfs_arena_take(a, &off);
	assert_non_null(p);
	memset(p, 0x5a, SLOT);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct bfs_arena_view *v =
			bfs_arena_view_new(NULL, bfs_arena_fd(a), 2 * SLOT);
		const uint8_t *q = v ? bfs_arena_view_at(v, off, SLOT) : NULL;
		size_t i;

		if (q == NULL) {
			_exit(2);
		}
		for (i = 0; i < SLOT; i++) {
			if (q[i] != 0x5a) {
				_exit(3);
			}
		}
		/* Nothing outside the mapping is handed out. */
		if (bfs_arena_view_at(v, 2 * SLOT - 10, 11) != NULL ||
		    bfs_arena_view_at(v, UINT64_MAX - 5, 10) != NULL ||
		    bfs_arena_view_at(v, 2 * SLOT, 0) == NULL) {
			_exit(4);
		}
		talloc_free(v); /* valgrind checks the child's leaks too */
		talloc_free(t);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	talloc_free(t);
}

/* A view larger than the file would fault at its first copy: refused. */
static void test_a_view_larger_than_the_arena_is_refused(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_arena *a = bfs_arena_new(t, SLOT, 2);

	(void)state;
	assert_non_null(a);
	assert_null(bfs_arena_view_new(t, bfs_arena_fd(a), 3 * SLOT));
	assert_null(bfs_arena_view_new(t, -1, SLOT));
	assert_non_null(bfs_arena_view_new(t, bfs_arena_fd(a), SLOT));
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_slots_are_taken_last_given_first),
		cmocka_unit_test(test_bad_sizes_are_refused),
		cmocka_unit_test(test_a_view_in_another_process_sees_the_bytes),
		cmocka_unit_test(test_a_view_larger_than_the_arena_is_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
