/* The extent cache: fills, reads, the size limit, scan resistance. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>
#include <openssl/evp.h>

#include "test_tmpdir.h"

#include "bfs_cache.h"
#include "bfs_lmdb.h"

#define BS 4096u

static char *tmpdir(TALLOC_CTX *t)
{
	char *d = test_tmpdir(t, "bfs-cache-test");

	assert_non_null(d);
	return d;
}

static void block_bytes(uint8_t *b, uint64_t blk, unsigned obj)
{
	size_t i;

	for (i = 0; i < BS; i++) {
		b[i] = (uint8_t)(blk * 31 + obj * 7 + i);
	}
}

/*
 * The fill queue takes what bfs_cache_fill_queue_max allows: the engine
 * lets its whole fetch arena wait for the fill thread, rather than write
 * a burst's overflow on its loop.  The test holds the cache's lock so the
 * fill thread cannot take a job meanwhile.
 */
static void test_the_fill_queue_takes_what_its_maximum_allows(void **state)
{
	const uint32_t bs = 1u << 20;
	const uint64_t len = 8ull << 20; /* one fetch */
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	char *lock = talloc_asprintf(t, "%s/fill.lock", dir);
	struct bfs_cache *c = NULL;
	struct bfs_fill_job *jobs[7] = {NULL};
	struct bfs_cache_id id;
	uint8_t *data = NULL, out[64];
	uint32_t got = 0;
	unsigned i, queued = 0;
	int lfd;

	(void)state;
	assert_int_equal(bfs_cache_open(t, dir, 256ull << 20, bs, &c, &why), 0);
	assert_int_equal(posix_memalign((void **)&data, 4096, 7 * len), 0);
	for (i = 0; i < 7; i++) {
		memset(data + i * len, 'a' + (int)i, len);
	}
	bfs_cache_make_id("bkt", "burst", "etag", bs, &id);
	lfd = open(lock, O_RDWR | O_CLOEXEC);
	assert_true(lfd >= 0);
	assert_int_equal(flock(lfd, LOCK_EX), 0);

	/* The default (32 MiB): four fetches wait, the fifth is refused. */
	for (i = 0; i < 5; i++) {
		jobs[i] = bfs_cache_fill_queue(c, &id, i * 8, data + i * len,
					       len);
		queued += jobs[i] != NULL;
	}
	assert_int_equal(queued, 4);
	assert_null(jobs[4]);
	/* Room for seven: the refused one and two more wait as well. */
	bfs_cache_fill_queue_max(c, 7 * len);
	for (i = 4; i < 7; i++) {
		jobs[i] = bfs_cache_fill_queue(c, &id, i * 8, data + i * len,
					       len);
		assert_non_null(jobs[i]);
	}
	/* Never below the default: a smaller maximum is the default. */
	bfs_cache_fill_queue_max(c, 1);
	assert_null(bfs_cache_fill_queue(c, &id, 56, data, len));

	assert_int_equal(flock(lfd, LOCK_UN), 0);
	close(lfd);
	bfs_cache_fill_drain(c);
	for (i = 0; i < 7; i++) {
		assert_true(bfs_cache_fill_done(jobs[i]));
		bfs_cache_fill_release(jobs[i]);
		assert_int_equal(bfs_cache_read(c, &id, i * 8 + 7, 5,
						sizeof(out), out, &got), 0);
		assert_int_equal(got, sizeof(out));
		assert_int_equal(out[0], 'a' + (int)i);
	}
	free(data);
	talloc_free(t);
}

/*
 * Fills the fill thread copies to its bounce buffer first (the engine's,
 * from its shared arena) land as they are: a fill of one buffer and a
 * short last block (padded to 4 KiB for O_DIRECT), then a full fetch of
 * four buffers' worth, written piece by piece.
 */
static void test_bounced_fills_land_intact(void **state)
{
	const uint32_t bs = 1u << 20;
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;
	struct bfs_fill_job *j;
	struct bfs_cache_id id;
	const size_t map = 12u << 20;
	uint8_t *src, out[256];
	uint32_t got = 0;
	int mfd;
	size_t i;

	(void)state;
	assert_int_equal(bfs_cache_open(t, dir, 64ull << 20, bs, &c, &why), 0);
	bfs_cache_fill_bounce(c);
	/* Shared memory in 4 KiB pages, as the arena is by default. */
	mfd = memfd_create("bounce-test", MFD_CLOEXEC);
	assert_true(mfd >= 0);
	assert_int_equal(ftruncate(mfd, (off_t)map), 0);
	src = mmap(NULL, map, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	assert_true(src != MAP_FAILED);
	for (i = 0; i < map; i++) {
		src[i] = (uint8_t)(i * 7 + i / 4096);
	}
	bfs_cache_make_id("bkt", "bounced", "etag", bs, &id);
	/* Two blocks and 1000 bytes (a short last block), then eight. */
	j = bfs_cache_fill_queue(c, &id, 0, src, 2 * bs + 1000);
	assert_non_null(j);
	bfs_cache_fill_drain(c);
	assert_true(bfs_cache_fill_done(j));
	bfs_cache_fill_release(j);
	j = bfs_cache_fill_queue(c, &id, 8, src + (1u << 20), 8 * bs);
	assert_non_null(j);
	bfs_cache_fill_drain(c);
	bfs_cache_fill_release(j);

	assert_int_equal(bfs_cache_read(c, &id, 1, bs - 100, sizeof(out), out,
					&got), 0);
	assert_int_equal(got, 100);
	assert_memory_equal(out, src + 2 * bs - 100, 100);
	assert_int_equal(bfs_cache_read(c, &id, 2, 900, sizeof(out), out,
					&got), 0);
	assert_int_equal(got, 100); /* the short block ends at 1000 */
	assert_memory_equal(out, src + 2 * bs + 900, 100);
	for (i = 8; i < 16; i++) {
		assert_int_equal(bfs_cache_read(c, &id, i, 4000, sizeof(out),
						out, &got), 0);
		assert_int_equal(got, sizeof(out));
		assert_memory_equal(out, src + (1u << 20) + (i - 8) * bs + 4000,
				    sizeof(out));
	}
	munmap(src, map);
	close(mfd);
	talloc_free(t);
}

/*
 * Whether len bytes of fd at off are in the page cache: a read that may
 * not wait for the disk (RWF_NOWAIT) gets them all.  Not mincore on a
 * map: valgrind reads the start of every file mapped (for debug info),
 * which puts those pages in.
 */
static bool in_page_cache(int fd, off_t off, size_t len)
{
	char buf[4096];
	struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf)};
	size_t done = 0;

	while (done < len) {
		ssize_t n;

		iov.iov_len = len - done < sizeof(buf) ? len - done : sizeof(buf);
		n = preadv2(fd, &iov, 1, off + (off_t)done, RWF_NOWAIT);
		if (n <= 0) {
			return false;
		}
		done += (size_t)n;
	}
	return true;
}

/*
 * A small object's fill lands in the page cache, so the next epoch's read
 * of it is not a disk read; a large fill is written around it (O_DIRECT),
 * where the filesystem allows that.
 */
static void test_a_small_fill_stays_in_the_page_cache_a_large_one_does_not(
	void **state)
{
	const uint32_t bs = 1u << 20;
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;
	struct bfs_fill_job *j;
	struct bfs_cache_id small, large;
	char probe[PATH_MAX];
	uint8_t *src = NULL;
	bool direct;
	int fd;

	(void)state;
	/* Can this filesystem write around the page cache at all? */
	snprintf(probe, sizeof(probe), "%s/probe", dir);
	fd = open(probe, O_CREAT | O_WRONLY | O_DIRECT, 0600);
	direct = fd >= 0;
	if (fd >= 0) {
		close(fd);
	}
	unlink(probe);

	assert_int_equal(bfs_cache_open(t, dir, 64ull << 20, bs, &c, &why), 0);
	assert_int_equal(posix_memalign((void **)&src, 4096, 2 * bs), 0);
	memset(src, 'q', 2 * bs);
	bfs_cache_make_id("bkt", "small", "etag", bs, &small);
	bfs_cache_make_id("bkt", "large", "etag", bs, &large);

	j = bfs_cache_fill_queue(c, &small, 0, src, 100 * 1000);
	assert_non_null(j);
	bfs_cache_fill_drain(c);
	bfs_cache_fill_release(j);
	j = bfs_cache_fill_queue(c, &large, 0, src, 2 * bs);
	assert_non_null(j);
	bfs_cache_fill_drain(c);
	bfs_cache_fill_release(j);

	fd = bfs_cache_lend_fd(c, &small, true);
	assert_true(fd >= 0);
	assert_true(in_page_cache(fd, 0, 100 * 1000));
	bfs_cache_return_fd(c, fd);
	fd = bfs_cache_lend_fd(c, &large, true);
	assert_true(fd >= 0);
	if (direct) {
		assert_false(in_page_cache(fd, bs, 4096));
	}
	bfs_cache_return_fd(c, fd);
	free(src);
	talloc_free(t);
}

/*
 * An object's cache id is the start of the SHA-256 of bucket, key, ETag
 * and block size, NUL-separated: the same from every process and every
 * release (a cache folder outlives upgrades), another for another ETag or
 * block size.
 */
static void test_a_cache_id_is_the_digest_of_its_object(void **state)
{
	static const char input[] = "bkt\0dir/obj\0\"etag-1\"\0" "1048576";
	unsigned char want[32];
	unsigned int n = 0;
	struct bfs_cache_id id, again, other_etag, other_size;

	(void)state;
	assert_int_equal(EVP_Digest(input, sizeof(input) - 1, want, &n,
				    EVP_sha256(), NULL), 1);
	bfs_cache_make_id("bkt", "dir/obj", "\"etag-1\"", 1 << 20, &id);
	assert_memory_equal(id.b, want, sizeof(id.b));
	bfs_cache_make_id("bkt", "dir/obj", "\"etag-1\"", 1 << 20, &again);
	assert_memory_equal(id.b, again.b, sizeof(id.b));
	bfs_cache_make_id("bkt", "dir/obj", "\"etag-2\"", 1 << 20, &other_etag);
	assert_memory_not_equal(id.b, other_etag.b, sizeof(id.b));
	bfs_cache_make_id("bkt", "dir/obj", "\"etag-1\"", 1 << 22, &other_size);
	assert_memory_not_equal(id.b, other_size.b, sizeof(id.b));
}

static void test_fill_then_read(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;
	struct bfs_cache_id a, b;
	uint8_t data[BS], out[BS];
	uint32_t got = 0;
	uint64_t used, blocks;

	(void)state;
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	bfs_cache_make_id("bkt", "k", "etag1", BS, &a);
	bfs_cache_make_id("bkt", "k", "etag2", BS, &b);
	assert_memory_not_equal(a.b, b.b, 16);

	assert_int_equal(bfs_cache_read(c, &a, 3, 0, BS, out, &got), ENOENT);
	block_bytes(data, 3, 1);
	assert_int_equal(bfs_cache_fill(c, &a, 3, data, BS), 0);
	assert_int_equal(bfs_cache_read(c, &a, 3, 100, 200, out, &got), 0);
	assert_int_equal(got, 200);
	assert_memory_equal(out, data + 100, 200);
	/* Another version of the object is another identity. */
	assert_int_equal(bfs_cache_read(c, &b, 3, 0, BS, out, &got), ENOENT);
	/* A short last block. */
	assert_int_equal(bfs_cache_fill(c, &a, 4, data, 10), 0);
	assert_int_equal(bfs_cache_read(c, &a, 4, 5, 100, out, &got), 0);
	assert_int_equal(got, 5);
	assert_int_equal(bfs_cache_usage(c, &used, &blocks), 0);
	assert_int_equal(used, BS + 10);
	assert_int_equal(blocks, 2);

	/* Persistent: a new open (a restarted smbd) still has it. */
	TALLOC_FREE(c);
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	assert_int_equal(bfs_cache_read(c, &a, 3, 0, BS, out, &got), 0);
	assert_memory_equal(out, data, BS);
	talloc_free(t);
}

/* Descriptors for worker threads: an open one is lent without opening. */

/* Remove an object's cache file, as bucketfs-ctl fsck or an admin may. */
static int unlink_cache_file(const char *dir, const struct bfs_cache_id *id)
{
	char name[33], path[4096];
	int i;

	for (i = 0; i < 16; i++) {
		snprintf(name + 2 * i, 3, "%02x", id->b[i]);
	}
	snprintf(path, sizeof(path), "%s/blocks/%.2s/%s", dir, name, name);
	return unlink(path);
}

static void test_descriptors_for_other_threads(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;
	struct bfs_cache_id a;
	uint8_t data[BS], out[BS];
	uint32_t got = 0;
	int fd;

	(void)state;
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	bfs_cache_make_id("bkt", "k", "etag1", BS, &a);
	block_bytes(data, 2, 1);
	assert_int_equal(bfs_cache_fill(c, &a, 2, data, BS), 0);
	TALLOC_FREE(c);

	/* A new process has nothing open: only the opening call lends one. */
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	assert_int_equal(bfs_cache_lend_fd(c, &a, false), -1);
	fd = bfs_cache_lend_fd(c, &a, true);
	assert_true(fd >= 0);
	bfs_cache_return_fd(c, fd);
	fd = bfs_cache_lend_fd(c, &a, false);
	assert_true(fd >= 0);
	assert_int_equal(bfs_cache_read_mt(c, fd, &a, 2, 0, BS, out, &got), 0);
	assert_int_equal(got, BS);
	assert_memory_equal(out, data, BS);

	/* Removed while lent: still readable by its borrower, not named. */
	assert_int_equal(unlink_cache_file(dir, &a), 0);
	assert_int_equal(bfs_cache_lend_fd(c, &a, false), -1);
	assert_true(fcntl(fd, F_GETFD) >= 0);
	assert_int_equal(pread(fd, out, BS, 2 * BS), BS);
	assert_memory_equal(out, data, BS);
	/* The last return closes it. */
	bfs_cache_return_fd(c, fd);
	assert_int_equal(fcntl(fd, F_GETFD), -1);
	talloc_free(t);
}

/*
 * A descriptor lent before the file's last block was evicted (the file
 * unlinked) and the block filled again, by another process, into a new
 * file of that name: the copy through the old one is refused, not served
 * from the old file's hole.  (Seen with the engine filling while smbd's
 * worker threads copied, on an 8 MiB cache.)
 */
static void test_a_lent_descriptor_of_a_replaced_file_is_refused(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;
	struct bfs_cache_id a;
	uint8_t data[BS], out[BS];
	uint32_t got = 0;
	pid_t pid;
	int fd, status;

	(void)state;
	assert_int_equal(bfs_cache_open(t, dir, 2 * BS, BS, &c, &why), 0);
	bfs_cache_make_id("bkt", "a", "etag1", BS, &a);
	block_bytes(data, 0, 1);
	assert_int_equal(bfs_cache_fill(c, &a, 0, data, BS), 0);
	fd = bfs_cache_lend_fd(c, &a, false);
	assert_true(fd >= 0);

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct bfs_cache *cc = NULL;
		struct bfs_cache_id b, d;
		uint8_t other[BS];

		if (bfs_cache_open(NULL, dir, 2 * BS, BS, &cc, &why) != 0) {
			_exit(1);
		}
		bfs_cache_make_id("bkt", "b", "etag1", BS, &b);
		bfs_cache_make_id("bkt", "d", "etag1", BS, &d);
		block_bytes(other, 0, 2);
		/* Two other blocks evict a's only one: its file goes. */
		if (bfs_cache_fill(cc, &b, 0, other, BS) != 0 ||
		    bfs_cache_fill(cc, &d, 0, other, BS) != 0 ||
		    bfs_cache_present(cc, &a, 0) ||
		    bfs_cache_fill(cc, &a, 0, data, BS) != 0) {
			_exit(2);
		}
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	assert_int_equal(bfs_cache_read_mt(c, fd, &a, 0, 0, BS, out, &got),
			 ENOENT);
	bfs_cache_return_fd(c, fd);
	/* Through the new file, the block reads right. */
	assert_int_equal(bfs_cache_read(c, &a, 0, 0, BS, out, &got), 0);
	assert_int_equal(got, BS);
	assert_memory_equal(out, data, BS);
	talloc_free(t);
}

/*
 * A fill of several blocks that evicts one of its own blocks' earlier
 * copy (to make room for the block before it) and then fills it again:
 * the block is present and reads right, not a punched hole.  (Seen as a
 * range of zeros through the engine, whose fetches fill 4 blocks at once
 * in an 8-block cache.)
 */
static void test_a_block_evicted_and_filled_again_by_one_fill_is_intact(
	void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;
	struct bfs_cache_id a, b;
	uint8_t data[2 * BS], other[BS], out[BS];
	uint32_t got = 0;

	(void)state;
	assert_int_equal(bfs_cache_open(t, dir, 3 * BS, BS, &c, &why), 0);
	bfs_cache_make_id("bkt", "a", "etag1", BS, &a);
	bfs_cache_make_id("bkt", "b", "etag1", BS, &b);
	block_bytes(data, 0, 1);
	block_bytes(data + BS, 1, 1);
	block_bytes(other, 0, 2);
	/* a's block 1 first: the oldest; then b's two fill the cache. */
	assert_int_equal(bfs_cache_fill(c, &a, 1, data + BS, BS), 0);
	assert_int_equal(bfs_cache_fill(c, &b, 0, other, BS), 0);
	assert_int_equal(bfs_cache_fill(c, &b, 1, other, BS), 0);
	/* Blocks 0 and 1 of a at once: room for 0 evicts the old 1, room
	 * for the new 1 evicts b's 0. */
	assert_int_equal(bfs_cache_fill(c, &a, 0, data, 2 * BS), 0);
	assert_true(bfs_cache_present(c, &a, 1));
	assert_int_equal(bfs_cache_read(c, &a, 1, 0, BS, out, &got), 0);
	assert_int_equal(got, BS);
	assert_memory_equal(out, data + BS, BS);
	assert_int_equal(bfs_cache_read(c, &a, 0, 0, BS, out, &got), 0);
	assert_memory_equal(out, data, BS);
	talloc_free(t);
}

/* Bytes the cache's block files take on disk. */
static uint64_t disk_total;

static int add_file_blocks(const char *path, const struct stat *st, int type,
			   struct FTW *ftw)
{
	(void)path;
	(void)ftw;
	if (type == FTW_F) {
		disk_total += (uint64_t)st->st_blocks * 512;
	}
	return 0;
}

static uint64_t disk_bytes(const char *dir)
{
	char blocks[PATH_MAX];

	snprintf(blocks, sizeof(blocks), "%s/blocks", dir);
	disk_total = 0;
	assert_int_equal(nftw(blocks, add_file_blocks, 8, FTW_PHYS), 0);
	return disk_total;
}

/*
 * The cache stays within its limit on disk while a fill is written, not
 * only once it is committed: room is made first.  An 8 MiB cache's folder
 * held 16 MiB while the fill thread wrote an 8-block fetch (CI).  The fill
 * thread's write is stopped at its last page (userfaultfd: the fill's
 * buffer has that page missing), the folder measured, then let go on.
 */
static void test_a_fill_makes_its_room_before_it_writes(void **state)
{
	const uint64_t limit = 16 * BS;
	TALLOC_CTX *t = NULL;
	const char *why = NULL, *dir = NULL;
	struct uffdio_api api = {.api = UFFD_API};
	struct uffdio_register reg = {0};
	struct uffdio_copy copy = {0};
	struct uffd_msg msg;
	struct pollfd pfd;
	struct bfs_cache *c = NULL;
	struct bfs_cache_id old, new;
	struct bfs_fill_job *j;
	uint8_t *buf, *last, data[16 * BS], out[BS];
	uint32_t got = 0;
	uint64_t during, i;
	int uffd;

	(void)state;
	uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) != 0) {
		/* valgrind knows no userfaultfd; the plain run checks. */
		print_message("no userfaultfd here (%s): not checked\n",
			      strerror(errno));
		if (uffd >= 0) {
			close(uffd);
		}
		skip();
	}
	t = talloc_new(NULL);
	dir = tmpdir(t);
	assert_int_equal(bfs_cache_open(t, dir, limit, BS, &c, &why), 0);
	bfs_cache_make_id("bkt", "old", "e", 16 * BS, &old);
	bfs_cache_make_id("bkt", "new", "e", 16 * BS, &new);
	for (i = 0; i < 16; i++) {
		block_bytes(data + i * BS, i, 1);
	}
	assert_int_equal(bfs_cache_fill(c, &old, 0, data, 16 * BS), 0);
	assert_true(disk_bytes(dir) >= limit);

	/* The new fill's buffer: every page there but the last. */
	buf = mmap(NULL, 16 * BS, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(buf != MAP_FAILED);
	last = buf + 15 * BS;
	for (i = 0; i < 16; i++) {
		block_bytes(data + i * BS, i, 2);
	}
	memcpy(buf, data, 15 * BS);
	reg.range.start = (uintptr_t)last;
	reg.range.len = BS;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	assert_int_equal(ioctl(uffd, UFFDIO_REGISTER, &reg), 0);

	j = bfs_cache_fill_queue(c, &new, 0, buf, 16 * BS);
	assert_non_null(j);
	pfd = (struct pollfd){.fd = uffd, .events = POLLIN};
	assert_int_equal(poll(&pfd, 1, 30 * 1000), 1); /* not stuck */
	assert_int_equal(read(uffd, &msg, sizeof(msg)), sizeof(msg));
	assert_int_equal(msg.event, UFFD_EVENT_PAGEFAULT);
	assert_true(msg.arg.pagefault.address == (uintptr_t)last);

	/* Fifteen new blocks written, the sixteenth on its way.  ext4 may
	 * count one block of its own more than the bytes in a file. */
	during = disk_bytes(dir);
	print_message("cache folder during the fill: %" PRIu64
		      " KiB, limit %" PRIu64 " KiB\n", during >> 10, limit >> 10);
	assert_true(during <= limit + BS);

	copy.dst = (uintptr_t)last;
	copy.src = (uintptr_t)(data + 15 * BS);
	copy.len = BS;
	assert_int_equal(ioctl(uffd, UFFDIO_COPY, &copy), 0);
	bfs_cache_fill_drain(c);
	bfs_cache_fill_release(j);
	assert_true(disk_bytes(dir) <= limit + BS);
	for (i = 0; i < 16; i++) {
		assert_int_equal(bfs_cache_read(c, &new, i, 0, BS, out, &got),
				 0);
		assert_int_equal(got, BS);
		assert_memory_equal(out, data + i * BS, BS);
	}
	close(uffd);
	munmap(buf, 16 * BS);
	talloc_free(t);
}

/*
 * A fill whose write fails (a full disk) leaves none of its bytes behind:
 * nothing would account for them.  The write is made to fail part way by
 * a buffer whose last page cannot be read.
 */
static void test_a_failed_fill_leaves_no_bytes_behind(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;
	struct bfs_cache_id a, b;
	uint8_t *buf, data[BS], out[BS];
	uint32_t got = 0;
	uint64_t before, after, i;

	(void)state;
	assert_int_equal(bfs_cache_open(t, dir, 16 * BS, BS, &c, &why), 0);
	bfs_cache_make_id("bkt", "a", "e", BS, &a);
	bfs_cache_make_id("bkt", "b", "e", 8 * BS, &b);
	block_bytes(data, 0, 1);
	assert_int_equal(bfs_cache_fill(c, &a, 0, data, BS), 0);
	/* b's block 1 is present already: it keeps its bytes. */
	block_bytes(data, 1, 2);
	assert_int_equal(bfs_cache_fill(c, &b, 1, data, BS), 0);
	before = disk_bytes(dir);

	buf = mmap(NULL, 8 * BS, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(buf != MAP_FAILED);
	for (i = 0; i < 7; i++) {
		block_bytes(buf + i * BS, i, 2);
	}
	assert_int_equal(mprotect(buf + 7 * BS, BS, PROT_NONE), 0);
	assert_int_not_equal(bfs_cache_fill(c, &b, 0, buf, 8 * BS), 0);

	/* Six blocks written and not kept.  ext4 may count one block of
	 * its own more than the bytes in a file. */
	after = disk_bytes(dir);
	print_message("cache files before the failed fill: %" PRIu64
		      " KiB, after: %" PRIu64 " KiB\n", before >> 10,
		      after >> 10);
	assert_true(after <= before + BS);
	assert_false(bfs_cache_present(c, &b, 0));
	assert_false(bfs_cache_present(c, &b, 6));
	assert_int_equal(bfs_cache_read(c, &b, 1, 0, BS, out, &got), 0);
	assert_memory_equal(out, data, BS);
	block_bytes(data, 0, 1);
	assert_int_equal(bfs_cache_read(c, &a, 0, 0, BS, out, &got), 0);
	assert_memory_equal(out, data, BS);
	munmap(buf, 8 * BS);
	talloc_free(t);
}

/* The limit holds, and a scan does not flush blocks read twice. */
static void test_limit_and_scan_resistance(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	struct bfs_cache *c = NULL;
	struct bfs_cache_id hot, scan;
	uint8_t data[BS], out[BS];
	uint32_t got;
	uint64_t used, blocks, i;

	(void)state;
	/* Room for 16 blocks. */
	assert_int_equal(bfs_cache_open(t, tmpdir(t), 16 * BS, BS, &c, &why), 0);
	bfs_cache_make_id("bkt", "hot", "e", BS, &hot);
	bfs_cache_make_id("bkt", "scan", "e", BS, &scan);
	for (i = 0; i < 4; i++) {
		block_bytes(data, i, 1);
		assert_int_equal(bfs_cache_fill(c, &hot, i, data, BS), 0);
		/* Read twice: promoted to the protected segment. */
		assert_int_equal(bfs_cache_read(c, &hot, i, 0, BS, out, &got), 0);
	}
	assert_int_equal(bfs_cache_flush(c), 0);
	/* One pass over 100 blocks: six times the cache. */
	for (i = 0; i < 100; i++) {
		block_bytes(data, i, 2);
		assert_int_equal(bfs_cache_fill(c, &scan, i, data, BS), 0);
		assert_int_equal(bfs_cache_usage(c, &used, &blocks), 0);
		assert_true(used <= 16 * BS);
	}
	for (i = 0; i < 4; i++) {
		assert_int_equal(bfs_cache_read(c, &hot, i, 0, BS, out, &got), 0);
		block_bytes(data, i, 1);
		assert_memory_equal(out, data, BS);
	}
	/* The scan's early blocks are gone, its last ones are there. */
	assert_int_equal(bfs_cache_read(c, &scan, 0, 0, BS, out, &got), ENOENT);
	assert_int_equal(bfs_cache_read(c, &scan, 99, 0, BS, out, &got), 0);
	block_bytes(data, 99, 2);
	assert_memory_equal(out, data, BS);
	assert_true(bfs_cache_counters(c)->evictions >= 88);
	talloc_free(t);
}

static void test_block_larger_than_cache_is_refused(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL;
	struct bfs_cache *c = NULL;
	struct bfs_cache_id id;
	uint8_t data[BS] = {0};

	(void)state;
	assert_int_equal(bfs_cache_open(t, tmpdir(t), BS / 2, BS, &c, &why), 0);
	bfs_cache_make_id("bkt", "k", "e", BS, &id);
	assert_int_equal(bfs_cache_fill(c, &id, 0, data, BS), ENOSPC);
	assert_int_equal(bfs_cache_open(t, tmpdir(t), BS, 1000, &c, &why), EINVAL);
	talloc_free(t);
}

static void test_check_against_the_index(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;
	struct bfs_cache_ref ref;
	struct bfs_cache_id old;
	struct bfs_cache_fsck r;
	uint8_t data[3 * BS], out[BS];
	uint32_t got;
	uint64_t used, blocks;

	(void)state;
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	bfs_cache_make_id("bkt", "k", "etag2", BS, &ref.id);
	bfs_cache_make_id("bkt", "k", "etag1", BS, &old);
	memset(data, 7, sizeof(data));
	assert_int_equal(bfs_cache_fill(c, &ref.id, 0, data, sizeof(data)), 0);
	assert_int_equal(bfs_cache_fill(c, &old, 0, data, 2 * BS), 0);
	/* The index names etag2 only, and says it is shorter than cached. */
	ref.size = 2 * BS + 100;
	assert_int_equal(bfs_cache_check(c, false, &ref, 1, &r), 0);
	assert_int_equal(r.blocks, 5);
	assert_int_equal(r.unindexed_versions, 1);
	assert_int_equal(r.unindexed_blocks, 2);
	assert_int_equal(r.beyond_size, 1);
	assert_int_equal(r.orphan_files, 0);
	assert_int_equal(bfs_cache_check(c, true, &ref, 1, &r), 0);
	assert_int_equal(r.unindexed_blocks + r.beyond_size, 3);
	assert_int_equal(bfs_cache_check(c, true, &ref, 1, &r), 0);
	assert_int_equal(r.unindexed_versions + r.beyond_size + r.bad_blocks +
			 r.orphan_files + r.lru_missing + r.lru_orphans, 0);
	assert_int_equal(bfs_cache_usage(c, &used, &blocks), 0);
	assert_int_equal(blocks, 2);
	assert_int_equal(used, 2 * BS);
	assert_int_equal(bfs_cache_read(c, &ref.id, 1, 0, BS, out, &got), 0);
	assert_int_equal(bfs_cache_read(c, &ref.id, 2, 0, BS, out, &got),
			 ENOENT);
	assert_int_equal(bfs_cache_read(c, &old, 0, 0, BS, out, &got), ENOENT);
	/* Without refs nothing is held against the index. */
	assert_int_equal(bfs_cache_fill(c, &old, 0, data, BS), 0);
	assert_int_equal(bfs_cache_check(c, true, NULL, 0, &r), 0);
	assert_int_equal(r.unindexed_blocks + r.bad_blocks, 0);
	talloc_free(t);
}

/*
 * fsck of a cache without block records: nothing to sort or search
 * (asan-unit's UBSan caught both getting a NULL array), and a file
 * without any record is still found and removed.
 */
static void test_check_of_a_cache_without_records(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;
	struct bfs_cache_fsck r;
	char *sub, *file;
	FILE *f;

	(void)state;
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	assert_int_equal(bfs_cache_check(c, true, NULL, 0, &r), 0);
	assert_int_equal(r.blocks, 0);
	assert_int_equal(r.orphan_files, 0);

	sub = talloc_asprintf(t, "%s/blocks/ab", dir);
	file = talloc_asprintf(t, "%s/ab0123456789abcdef0123456789abcd", sub);
	assert_int_equal(bfs_mkdirs(sub), 0);
	assert_non_null(f = fopen(file, "w"));
	fclose(f);
	assert_int_equal(bfs_cache_check(c, false, NULL, 0, &r), 0);
	assert_int_equal(r.orphan_files, 1);
	assert_int_equal(access(file, F_OK), 0);
	assert_int_equal(bfs_cache_check(c, true, NULL, 0, &r), 0);
	assert_int_equal(r.orphan_files, 1);
	assert_int_equal(access(file, F_OK), -1);
	talloc_free(t);
}

/* Overwrite the first block record of the closed cache at dir. */
static void set_first_record(const char *dir, const struct bfs_block_rec *rec)
{
	char map[4096];
	const char *why = NULL;
	MDB_env *env = NULL;
	MDB_txn *txn = NULL;
	MDB_dbi dbi;
	MDB_cursor *cur = NULL;
	MDB_val k, v = {sizeof(*rec), (void *)rec};

	snprintf(map, sizeof(map), "%s/map", dir);
	assert_int_equal(bfs_lmdb_open(map, 8ULL << 30, 4, &env, &why), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "blocks", 0, &dbi), 0);
	assert_int_equal(mdb_cursor_open(txn, dbi, &cur), 0);
	assert_int_equal(mdb_cursor_get(cur, &k, &(MDB_val){0}, MDB_FIRST), 0);
	assert_int_equal(mdb_cursor_put(cur, &k, &v, MDB_CURRENT), 0);
	mdb_cursor_close(cur);
	assert_int_equal(mdb_txn_commit(txn), 0);
	bfs_lmdb_close(env);
}

/* The record of block blk of object id, read from the cache's map. */
static struct bfs_block_rec block_record(const char *dir,
					 const struct bfs_cache_id *id,
					 uint64_t blk)
{
	char map[4096];
	const char *why = NULL;
	MDB_env *env = NULL;
	MDB_txn *txn = NULL;
	MDB_dbi dbi;
	uint8_t bk[24]; /* the map's key: the id, the block big-endian */
	struct bfs_block_rec rec;
	MDB_val k = {sizeof(bk), bk}, v;
	int i;

	memcpy(bk, id->b, 16);
	for (i = 0; i < 8; i++) {
		bk[16 + i] = (uint8_t)(blk >> (56 - 8 * i));
	}
	snprintf(map, sizeof(map), "%s/map", dir);
	assert_int_equal(bfs_lmdb_open(map, 8ULL << 30, 4, &env, &why), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "blocks", 0, &dbi), 0);
	assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
	assert_int_equal(bfs_cache_block_decode(v.mv_data, v.mv_size, &rec), 0);
	mdb_txn_abort(txn);
	bfs_lmdb_close(env);
	return rec;
}

/*
 * While the cache is under half full, reading a protected block again
 * leaves its place in the eviction order (no write per read of hot data);
 * past half, a read moves it to the young end again.  A block's second
 * read still promotes it.
 */
static void test_a_hot_read_moves_its_block_only_past_half_full(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;
	struct bfs_cache_id hot, other;
	struct bfs_block_rec rec;
	uint8_t data[BS], out[BS];
	uint32_t got;
	uint64_t tick, i;

	(void)state;
	bfs_cache_make_id("bkt", "hot", "e", BS, &hot);
	bfs_cache_make_id("bkt", "other", "e", BS, &other);
	assert_int_equal(bfs_cache_open(t, dir, 16 * BS, BS, &c, &why), 0);
	block_bytes(data, 0, 1);
	assert_int_equal(bfs_cache_fill(c, &hot, 0, data, BS), 0);
	assert_int_equal(bfs_cache_read(c, &hot, 0, 0, BS, out, &got), 0);
	assert_int_equal(bfs_cache_flush(c), 0);
	TALLOC_FREE(c);
	rec = block_record(dir, &hot, 0);
	assert_int_equal(rec.seg, 1); /* promoted */
	tick = rec.tick;

	/* One block of 16: read again, it stays where it was. */
	assert_int_equal(bfs_cache_open(t, dir, 16 * BS, BS, &c, &why), 0);
	for (i = 0; i < 3; i++) {
		assert_int_equal(bfs_cache_read(c, &hot, 0, 0, BS, out, &got),
				 0);
		assert_memory_equal(out, data, BS);
	}
	assert_int_equal(bfs_cache_flush(c), 0);
	TALLOC_FREE(c);
	assert_int_equal(block_record(dir, &hot, 0).tick, tick);

	/* Nine of 16: a read moves it. */
	assert_int_equal(bfs_cache_open(t, dir, 16 * BS, BS, &c, &why), 0);
	for (i = 0; i < 8; i++) {
		block_bytes(data, i, 2);
		assert_int_equal(bfs_cache_fill(c, &other, i, data, BS), 0);
	}
	assert_int_equal(bfs_cache_read(c, &hot, 0, 0, BS, out, &got), 0);
	assert_int_equal(bfs_cache_flush(c), 0);
	TALLOC_FREE(c);
	rec = block_record(dir, &hot, 0);
	assert_int_equal(rec.seg, 1);
	assert_true(rec.tick > tick);
	talloc_free(t);
}

/*
 * A block record is believed only if the cache could have written it: a
 * record claiming more bytes than a block holds would have a read copy
 * the next block's bytes, one with an unknown segment is not ours.
 */
static void test_damaged_block_records_are_not_believed(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;
	struct bfs_cache_id a;
	struct bfs_block_rec rec = {.gen = 1, .tick = 1, .len = BS}, got_rec;
	uint8_t data[2 * BS], out[2 * BS];
	uint32_t got = 0;

	(void)state;
	assert_int_equal(bfs_cache_block_decode(&rec, sizeof(rec), &got_rec), 0);
	assert_memory_equal(&rec, &got_rec, sizeof(rec));
	assert_int_equal(bfs_cache_block_decode(&rec, sizeof(rec) - 1, &got_rec),
			 EBADMSG);
	rec.seg = 2;
	assert_int_equal(bfs_cache_block_decode(&rec, sizeof(rec), &got_rec),
			 EBADMSG);
	rec.seg = 0;
	rec.len = 0;
	assert_int_equal(bfs_cache_block_decode(&rec, sizeof(rec), &got_rec),
			 EBADMSG);
	rec.len = BS;
	rec.pad[1] = 1;
	assert_int_equal(bfs_cache_block_decode(&rec, sizeof(rec), &got_rec),
			 EBADMSG);
	rec.pad[1] = 0;

	/* Blocks 3 and 4, the first record is block 3's. */
	bfs_cache_make_id("bkt", "k", "etag", BS, &a);
	block_bytes(data, 3, 1);
	block_bytes(data + BS, 4, 1);
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	assert_int_equal(bfs_cache_fill(c, &a, 3, data, 2 * BS), 0);
	TALLOC_FREE(c);
	rec.len = 2 * BS;
	set_first_record(dir, &rec);
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	assert_int_equal(bfs_cache_read(c, &a, 3, 0, 2 * BS, out, &got), ENOENT);
	assert_false(bfs_cache_present(c, &a, 3));
	TALLOC_FREE(c);

	rec.len = BS;
	rec.seg = 9;
	set_first_record(dir, &rec);
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	assert_int_equal(bfs_cache_read(c, &a, 3, 0, BS, out, &got), ENOENT);
	TALLOC_FREE(c);

	/* The record as the cache writes it is read again. */
	rec.seg = 0;
	set_first_record(dir, &rec);
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	assert_int_equal(bfs_cache_read(c, &a, 3, 0, BS, out, &got), 0);
	assert_int_equal(got, BS);
	assert_memory_equal(out, data, BS);
	talloc_free(t);
}

static void test_one_block_size_per_folder(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;

	(void)state;
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	talloc_free(c);
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, 2 * BS, &c, &why),
			 EINVAL);
	assert_non_null(strstr(why, "folder of its own"));
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	talloc_free(t);
}

/* A process killed with the cache open: the next opener cleans up. */
static void test_the_next_opener_checks_after_a_crash(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;
	char *orphan;
	pid_t pid;
	int status;

	(void)state;
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	assert_null(bfs_cache_recovery(c));
	talloc_free(c);

	/* A file a fill created but never recorded, as a kill -9 leaves. */
	orphan = talloc_asprintf(t, "%s/blocks", dir);
	mkdir(orphan, 0700);
	orphan = talloc_asprintf(t, "%s/ab", orphan);
	assert_int_equal(mkdir(orphan, 0700), 0);
	orphan = talloc_asprintf(t, "%s/abababababababababababababababab",
				 orphan);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct bfs_cache *cc = NULL;
		int fd;

		if (bfs_cache_open(NULL, dir, 1 << 20, BS, &cc, &why) != 0) {
			_exit(1);
		}
		fd = open(orphan, O_CREAT | O_WRONLY, 0600);
		_exit(fd >= 0 && write(fd, "x", 1) == 1 ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	assert_non_null(bfs_cache_recovery(c));
	assert_int_equal(bfs_cache_recovery(c)->orphan_files, 1);
	assert_int_equal(access(orphan, F_OK), -1);
	talloc_free(c);
	/* A clean close leaves nothing to recover. */
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	assert_null(bfs_cache_recovery(c));
	talloc_free(t);
}

/*
 * Issue 19 point 12: a block map damaged by a power loss is set aside;
 * the cache starts empty and the block files nothing names go.
 */
static void test_a_damaged_map_starts_the_cache_empty(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *why = NULL, *dir = tmpdir(t);
	struct bfs_cache *c = NULL;
	struct bfs_cache_id a;
	uint8_t data[BS], out[BS];
	char junk[8192];
	uint32_t got = 0;
	uint64_t used, blocks;
	int fd;

	(void)state;
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	bfs_cache_make_id("bkt", "k", "etag1", BS, &a);
	block_bytes(data, 3, 1);
	assert_int_equal(bfs_cache_fill(c, &a, 3, data, BS), 0);
	TALLOC_FREE(c);
	fd = open(talloc_asprintf(t, "%s/map/data.mdb", dir), O_RDWR);
	assert_true(fd >= 0);
	memset(junk, 0x5a, sizeof(junk));
	assert_int_equal(pwrite(fd, junk, sizeof(junk), 0), (ssize_t)sizeof(junk));
	close(fd);
	assert_int_equal(bfs_cache_open(t, dir, 1 << 20, BS, &c, &why), 0);
	assert_int_equal(bfs_cache_read(c, &a, 3, 0, BS, out, &got), ENOENT);
	assert_int_equal(bfs_cache_usage(c, &used, &blocks), 0);
	assert_int_equal(blocks, 0);
	assert_non_null(bfs_cache_recovery(c));
	assert_true(bfs_cache_recovery(c)->orphan_files >= 1);
	/* And it works: a fill and a read. */
	assert_int_equal(bfs_cache_fill(c, &a, 3, data, BS), 0);
	assert_int_equal(bfs_cache_read(c, &a, 3, 0, BS, out, &got), 0);
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_a_damaged_map_starts_the_cache_empty),
		cmocka_unit_test(test_a_cache_id_is_the_digest_of_its_object),
		cmocka_unit_test(test_fill_then_read),
		cmocka_unit_test(test_a_hot_read_moves_its_block_only_past_half_full),
		cmocka_unit_test(test_descriptors_for_other_threads),
		cmocka_unit_test(test_a_lent_descriptor_of_a_replaced_file_is_refused),
		cmocka_unit_test(test_a_block_evicted_and_filled_again_by_one_fill_is_intact),
		cmocka_unit_test(test_a_fill_makes_its_room_before_it_writes),
		cmocka_unit_test(test_a_failed_fill_leaves_no_bytes_behind),
		cmocka_unit_test(test_limit_and_scan_resistance),
		cmocka_unit_test(test_block_larger_than_cache_is_refused),
		cmocka_unit_test(test_check_against_the_index),
		cmocka_unit_test(test_check_of_a_cache_without_records),
		cmocka_unit_test(test_damaged_block_records_are_not_believed),
		cmocka_unit_test(test_one_block_size_per_folder),
		cmocka_unit_test(test_the_next_opener_checks_after_a_crash),
		cmocka_unit_test(
			test_the_fill_queue_takes_what_its_maximum_allows),
		cmocka_unit_test(test_bounced_fills_land_intact),
		cmocka_unit_test(
			test_a_small_fill_stays_in_the_page_cache_a_large_one_does_not),
	};
	return cmocka_run_group_tests_name("bfs_cache", tests, NULL, NULL);
}
