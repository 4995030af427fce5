/* The fetch arena: slots taken and given, and another process's view. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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

#define SHMEM_THP "/sys/kernel/mm/transparent_hugepage/shmem_enabled"

/* The host's setting, the word in brackets ("never", "advise", ...). */
static int shmem_thp_get(char *out, size_t n)
{
	char line[256], *open_, *close_;
	FILE *f = fopen(SHMEM_THP, "r");

	if (f == NULL) {
		return -1;
	}
	if (fgets(line, sizeof(line), f) == NULL) {
		fclose(f);
		return -1;
	}
	fclose(f);
	open_ = strchr(line, '[');
	close_ = open_ != NULL ? strchr(open_, ']') : NULL;
	if (close_ == NULL || (size_t)(close_ - open_) >= n) {
		return -1;
	}
	memcpy(out, open_ + 1, (size_t)(close_ - open_ - 1));
	out[close_ - open_ - 1] = '\0';
	return 0;
}

static int shmem_thp_set(const char *v)
{
	FILE *f = fopen(SHMEM_THP, "w");
	int ok;

	if (f == NULL) {
		return -1;
	}
	ok = fputs(v, f) >= 0;
	return fclose(f) == 0 && ok ? 0 : -1;
}

/* Bytes of this process's mappings that huge pages of files back. */
static uint64_t file_huge_mapped(void)
{
	char line[256];
	unsigned long long kb;
	uint64_t total = 0;
	FILE *f = fopen("/proc/self/smaps_rollup", "r");

	assert_non_null(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		if (sscanf(line, "FilePmdMapped: %llu kB", &kb) == 1 ||
		    sscanf(line, "ShmemPmdMapped: %llu kB", &kb) == 1) {
			total += (uint64_t)kb << 10;
		}
	}
	fclose(f);
	return total;
}

/*
 * Where the host lets madvise'd shared memory have huge pages (advise),
 * the arena and a view of it get them: each fetched byte is copied into
 * and out of it, and with 4 KiB pages those copies cost ~10 % of a cold
 * read through the engine (DEVELOPERS.md).  As root the test sets advise
 * for its run (and puts the host's setting back); otherwise it needs the
 * host to allow it already.
 */
/* The host's setting as found, to put back whatever the test's outcome. */
static char thp_was[32];
static bool thp_changed;

static int thp_restore(void **state)
{
	(void)state;
	if (thp_changed && shmem_thp_set(thp_was) != 0) {
		fprintf(stderr, "could not put %s back to %s\n", SHMEM_THP,
			thp_was);
		return -1;
	}
	thp_changed = false;
	return 0;
}

static void test_the_arena_asks_for_huge_pages(void **state)
{
	const size_t slot = 4u << 20;
	char *was = thp_was;
	struct bfs_arena *a;
	struct bfs_arena_view *v;
	uint64_t off = 0, before;
	uint8_t *p;
	volatile uint8_t sum = 0;
	size_t i;

	(void)state;
	if (shmem_thp_get(was, sizeof(thp_was)) != 0) {
		skip(); /* no THP in this kernel */
	}
	if (strcmp(was, "advise") != 0 && strcmp(was, "always") != 0 &&
	    strcmp(was, "force") != 0) {
		if (shmem_thp_set("advise") != 0) {
			skip(); /* not root, and the host says never */
		}
		thp_changed = true;
	}
	before = file_huge_mapped();
	a = bfs_arena_new(NULL, slot, 2);
	assert_non_null(a);
	p = bfs_arena_take(a, &off);
	assert_non_null(p);
	memset(p, 0x5a, slot);
	v = bfs_arena_view_new(a, bfs_arena_fd(a), bfs_arena_size(a));
	assert_non_null(v);
	if ((((uintptr_t)(p - off)) & ((2u << 20) - 1)) != 0 ||
	    (((uintptr_t)bfs_arena_view_at(v, 0, 1)) & ((2u << 20) - 1)) != 0) {
		/* Placed off a huge page boundary (valgrind places mappings
		 * itself): no huge page can map it, nothing to check. */
		talloc_free(a);
		skip();
	}
	for (i = 0; i < slot; i += 4096) {
		sum += bfs_arena_view_at(v, off, slot)[i];
	}
	assert_int_equal(sum, (uint8_t)(0x5a * (slot / 4096)));
	/* Both mappings of the slot: at least one huge page each. */
	assert_true(file_huge_mapped() >= before + (4u << 20));
	talloc_free(a);
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
		cmocka_unit_test_teardown(test_the_arena_asks_for_huge_pages,
					  thp_restore),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
