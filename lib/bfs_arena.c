/*
 * Fetch buffers shared between bucketfsd and smbds (see bfs_arena.h).
 */
#include "bfs_arena.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bfs_log.h"

struct bfs_arena {
	int fd;
	uint8_t *base;
	size_t slot_size;
	unsigned nslots;
	unsigned *free;	 /* slot numbers, a stack: the last given on top */
	unsigned nfree;
};

/*
 * Ask for transparent huge pages on a mapping of the arena.  Every fetched
 * byte is written into it and copied out of it again, and with 4 KiB pages
 * both copies miss the TLB (and a page touched the first time faults) 512
 * times as often.  Shared memory gets huge pages only where the host allows
 * it (/sys/kernel/mm/transparent_hugepage/shmem_enabled = advise; Debian's
 * default is never): cold reads through the engine were ~10 % faster with
 * it (DEVELOPERS.md).  Advice only: refused, it works all the same.
 */
static void bfs_arena_advise_huge(void *p, size_t size)
{
	(void)madvise(p, size, MADV_HUGEPAGE);
}

bool bfs_arena_huge_pages_allowed(void)
{
	char line[256];
	const char *at;
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled",
			"r");
	bool ok;

	if (f == NULL) {
		return false;
	}
	ok = fgets(line, sizeof(line), f) != NULL;
	fclose(f);
	at = ok ? strchr(line, '[') : NULL;
	return at != NULL && strncmp(at, "[never]", 7) != 0 &&
	       strncmp(at, "[deny]", 6) != 0;
}

struct bfs_arena_view {
	const uint8_t *base;
	size_t size;
};

static int bfs_arena_destructor(struct bfs_arena *a)
{
	if (a->base != NULL) {
		munmap(a->base, a->slot_size * a->nslots);
	}
	if (a->fd != -1) {
		close(a->fd);
	}
	return 0;
}

struct bfs_arena *bfs_arena_new(TALLOC_CTX *mem_ctx, size_t slot_size,
				unsigned nslots)
{
	struct bfs_arena *a;
	size_t size = slot_size * nslots;
	void *p;
	unsigned i;

	if (slot_size == 0 || slot_size % 4096 != 0 || nslots == 0 ||
	    size / nslots != slot_size) {
		errno = EINVAL;
		return NULL;
	}
	a = talloc_zero(mem_ctx, struct bfs_arena);
	if (a == NULL) {
		errno = ENOMEM;
		return NULL;
	}
	a->fd = -1;
	talloc_set_destructor(a, bfs_arena_destructor);
	a->slot_size = slot_size;
	a->nslots = nslots;
	a->free = talloc_array(a, unsigned, nslots);
	if (a->free == NULL) {
		talloc_free(a);
		errno = ENOMEM;
		return NULL;
	}
	/* Close-on-exec: an event script or helper the engine runs has no
	 * business with other people's file bytes. */
	a->fd = memfd_create("bucketfs-fetch", MFD_CLOEXEC);
	if (a->fd == -1 || ftruncate(a->fd, (off_t)size) != 0) {
		int err = errno;

		bfs_log(BFS_LOG_ERR, "bucketfs: cannot make the fetch arena "
			"(%zu bytes): %s", size, strerror(err));
		talloc_free(a);
		errno = err;
		return NULL;
	}
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, a->fd, 0);
	if (p == MAP_FAILED) {
		int err = errno;

		bfs_log(BFS_LOG_ERR, "bucketfs: cannot map the fetch arena "
			"(%zu bytes): %s", size, strerror(err));
		talloc_free(a);
		errno = err;
		return NULL;
	}
	a->base = p;
	bfs_arena_advise_huge(p, size);
	/* Slot 0 on top: taken first. */
	for (i = 0; i < nslots; i++) {
		a->free[i] = nslots - 1 - i;
	}
	a->nfree = nslots;
	return a;
}

int bfs_arena_fd(const struct bfs_arena *a)
{
	return a->fd;
}

size_t bfs_arena_size(const struct bfs_arena *a)
{
	return a->slot_size * a->nslots;
}

size_t bfs_arena_slot_size(const struct bfs_arena *a)
{
	return a->slot_size;
}

unsigned bfs_arena_free_slots(const struct bfs_arena *a)
{
	return a->nfree;
}

uint8_t *bfs_arena_take(struct bfs_arena *a, uint64_t *off)
{
	unsigned slot;

	if (a->nfree == 0) {
		return NULL;
	}
	slot = a->free[--a->nfree];
	*off = (uint64_t)slot * a->slot_size;
	return a->base + *off;
}

void bfs_arena_give(struct bfs_arena *a, uint64_t off)
{
	unsigned slot = (unsigned)(off / a->slot_size);

	/* A slot given twice, or not ours, would be lent to two fetches. */
	if (off % a->slot_size != 0 || slot >= a->nslots ||
	    a->nfree >= a->nslots) {
		bfs_log(BFS_LOG_ERR, "bucketfs: fetch arena: slot at %llu "
			"given back wrongly: kept out of use",
			(unsigned long long)off);
		return;
	}
	a->free[a->nfree++] = slot;
}

/* ---- another process's view ---------------------------------------------- */

static int bfs_arena_view_destructor(struct bfs_arena_view *v)
{
	munmap((void *)v->base, v->size);
	return 0;
}

struct bfs_arena_view *bfs_arena_view_new(TALLOC_CTX *mem_ctx, int fd,
					  size_t size)
{
	struct bfs_arena_view *v;
	struct stat st;
	void *p;

	/* A mapping past the file's end would be SIGBUS at the first copy. */
	if (fd < 0 || size == 0 || fstat(fd, &st) != 0 ||
	    (uint64_t)st.st_size < size) {
		bfs_log(BFS_LOG_WARNING, "bucketfs: the engine's fetch arena "
			"is not the %zu bytes it said: not used", size);
		errno = EINVAL;
		return NULL;
	}
	v = talloc_zero(mem_ctx, struct bfs_arena_view);
	if (v == NULL) {
		errno = ENOMEM;
		return NULL;
	}
	p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		int err = errno;

		bfs_log(BFS_LOG_WARNING, "bucketfs: cannot map the engine's "
			"fetch arena (%zu bytes): %s; reads of its blocks go "
			"through the cache file", size, strerror(err));
		talloc_free(v);
		errno = err;
		return NULL;
	}
	v->base = p;
	bfs_arena_advise_huge(p, size);
	v->size = size;
	talloc_set_destructor(v, bfs_arena_view_destructor);
	return v;
}

const uint8_t *bfs_arena_view_at(const struct bfs_arena_view *v, uint64_t off,
				 uint64_t len)
{
	if (off > v->size || len > v->size - off) {
		return NULL;
	}
	return v->base + off;
}
