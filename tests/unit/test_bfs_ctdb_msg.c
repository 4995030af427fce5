/*
 * bfs_ctdb_msg: the CTDB_REQ_MESSAGE frame, byte for byte, and its trip
 * through a unix socket standing where ctdbd's is.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>
#include <talloc.h>

#include "bfs_ctdb_msg.h"
#include "test_tmpdir.h"

static uint32_t u32_at(const uint8_t *p, size_t off)
{
	uint32_t v;

	memcpy(&v, p + off, sizeof(v));
	return v;
}

/* As ctdb/protocol frames it: header, srvid, data length, data. */
static void test_the_frame_is_ctdb_protocol_1s(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const uint8_t data[5] = "hello";
	size_t len = 0;
	uint8_t *p = bfs_ctdb_message_packet(t, BFS_CTDB_ALL_NODES,
					     BFS_CTDB_SRVID, data, 5, &len);
	uint64_t srvid;

	(void)state;
	assert_non_null(p);
	assert_int_equal(len, 32 + 8 + 4 + 5);
	assert_int_equal(u32_at(p, 0), len);		/* length */
	assert_memory_equal(p + 4, "BDTC", 4);		/* 0x43544442, LE */
	assert_int_equal(u32_at(p, 8), 1);		/* CTDB_PROTOCOL */
	assert_int_equal(u32_at(p, 16), 5);		/* CTDB_REQ_MESSAGE */
	assert_int_equal(u32_at(p, 20), 0xF0000004U);	/* connected nodes */
	memcpy(&srvid, p + 32, 8);
	assert_true(srvid == 0xBF5C000000000001ULL);
	assert_int_equal(u32_at(p, 40), 5);
	assert_memory_equal(p + 44, "hello", 5);
	talloc_free(t);
}

/* A change message written to a listener at the socket's path arrives
 * whole; with nobody there, the error says so. */
static void test_a_message_reaches_the_socket_and_a_missing_one_is_an_error(
	void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	char *dir = test_tmpdir(t, "bfs-ctdb-msg");
	char *path = talloc_asprintf(t, "%s/ctdbd.socket", dir);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t mlen = 0, want = 0;
	uint8_t *msg = bfs_change_msg(t, BFS_CTDB_NODE_UNKNOWN, "bkt",
				      "ds/shard-1.tar", &mlen);
	uint8_t *frame = bfs_ctdb_message_packet(t, BFS_CTDB_ALL_NODES,
						 BFS_CTDB_SRVID, msg, mlen,
						 &want);
	uint8_t got[512];
	size_t n = 0;
	ssize_t r;
	int lfd, cfd;
	const char *bucket, *key;
	uint32_t origin = 0;

	(void)state;
	assert_int_equal(bfs_ctdb_send_message(path, BFS_CTDB_ALL_NODES,
					       BFS_CTDB_SRVID, msg, mlen, 1000),
			 ENOENT);
	lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_true(lfd >= 0);
	strcpy(sa.sun_path, path);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(lfd, 1), 0);
	assert_int_equal(bfs_ctdb_send_message(path, BFS_CTDB_ALL_NODES,
					       BFS_CTDB_SRVID, msg, mlen, 1000),
			 0);
	cfd = accept(lfd, NULL, NULL);
	assert_true(cfd >= 0);
	while ((r = read(cfd, got + n, sizeof(got) - n)) > 0) {
		n += (size_t)r;
	}
	assert_int_equal(n, want);
	assert_memory_equal(got, frame, want);
	assert_int_equal(bfs_change_msg_parse(got + 44, n - 44, &origin,
					      &bucket, &key), 0);
	assert_int_equal(origin, BFS_CTDB_NODE_UNKNOWN);
	assert_string_equal(key, "ds/shard-1.tar");
	close(cfd);
	close(lfd);
	unlink(path);
	talloc_free(t);
}

/* The change message of a cluster's nodes: what goes in comes out, and
 * anything else is refused. */
static void test_change_messages_round_trip_and_refuse_the_rest(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *bucket, *key;
	uint32_t origin = 0;
	size_t len = 0;
	uint8_t *msg = bfs_change_msg(t, 2, "bkt", "a/b c.bin", &len);

	(void)state;
	assert_non_null(msg);
	assert_int_equal(bfs_change_msg_parse(msg, len, &origin, &bucket, &key),
			 0);
	assert_int_equal(origin, 2);
	assert_string_equal(bucket, "bkt");
	assert_string_equal(key, "a/b c.bin");
	/* Cut short, a byte more, another magic, no bucket. */
	assert_int_equal(bfs_change_msg_parse(msg, len - 1, &origin, &bucket,
					      &key), EINVAL);
	msg = talloc_realloc(t, msg, uint8_t, len + 1);
	msg[len] = 'x';
	assert_int_equal(bfs_change_msg_parse(msg, len + 1, &origin, &bucket,
					      &key), EINVAL);
	msg[0] = 'B';
	assert_int_equal(bfs_change_msg_parse(msg, len, &origin, &bucket, &key),
			 EINVAL);
	msg = bfs_change_msg(t, 1, "", "k", &len);
	assert_int_equal(bfs_change_msg_parse(msg, len, &origin, &bucket, &key),
			 EINVAL);
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_the_frame_is_ctdb_protocol_1s),
		cmocka_unit_test(test_change_messages_round_trip_and_refuse_the_rest),
		cmocka_unit_test(test_a_message_reaches_the_socket_and_a_missing_one_is_an_error),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
