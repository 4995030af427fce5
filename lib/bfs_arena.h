/*
 * Fetch buffers that several processes see: a memfd cut into equal slots.
 *
 * bucketfsd fetches every smbd's read misses.  Its fetch buffers live in
 * an arena, whose descriptor it passes to each smbd (SCM_RIGHTS, with
 * WELCOME); an smbd maps it read-only once and copies a block it was lent
 * straight from there into its SMB buffer, instead of waiting for the
 * block to be written to the cache file and reading it back.  One copy of
 * every byte fewer, and no read waits for the cache's fill.
 *
 * The owner (bfs_arena_new) takes and gives slots, last given first taken,
 * so that the pages reused are the ones touched last: a page the kernel
 * hands out fresh costs a fault on this VM and zeroing everywhere.  A view
 * (bfs_arena_view_new) is another process's read-only mapping.
 *
 * Not thread-safe: one loop (the engine's main thread) takes and gives.
 */
#ifndef BUCKETFS_BFS_ARENA_H
#define BUCKETFS_BFS_ARENA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <talloc.h>

struct bfs_arena;

/*
 * nslots slots of slot_size bytes (a multiple of 4096: the cache writes
 * from them with O_DIRECT).  NULL with errno: EINVAL, ENOMEM, or what
 * memfd_create, ftruncate or mmap said (logged).
 */
struct bfs_arena *bfs_arena_new(TALLOC_CTX *mem_ctx, size_t slot_size,
				unsigned nslots);

/*
 * Does the host give the arena huge pages (shmem_enabled advise, always,
 * within_size or force)?  If not, writing its bytes with O_DIRECT is
 * cheaper from a copy in huge pages (bfs_cache_fill_bounce).
 */
bool bfs_arena_huge_pages_allowed(void);

/* The memfd, to pass to another process; the arena keeps it open. */
int bfs_arena_fd(const struct bfs_arena *a);
size_t bfs_arena_size(const struct bfs_arena *a);
size_t bfs_arena_slot_size(const struct bfs_arena *a);

/* A free slot (its bytes, and *off: its offset in the arena), or NULL. */
uint8_t *bfs_arena_take(struct bfs_arena *a, uint64_t *off);
/* Give back the slot at off (from bfs_arena_take). */
void bfs_arena_give(struct bfs_arena *a, uint64_t off);
unsigned bfs_arena_free_slots(const struct bfs_arena *a);

/*
 * Another process's view: fd mapped read-only, size bytes (from WELCOME).
 * fd stays the caller's.  NULL with errno on failure (logged).
 */
struct bfs_arena_view;
struct bfs_arena_view *bfs_arena_view_new(TALLOC_CTX *mem_ctx, int fd,
					  size_t size);
/* The bytes [off, off+len) of the view, or NULL if they are not inside it. */
const uint8_t *bfs_arena_view_at(const struct bfs_arena_view *v, uint64_t off,
				 uint64_t len);

#endif
