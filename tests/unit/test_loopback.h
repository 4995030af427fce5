/*
 * Shared by the tests that need S3 or a metadata service away
 * (test_bfs_creds, test_bfs_share): an endpoint on a loopback port
 * nothing listens on.  Include after cmocka.h.
 */
#ifndef BUCKETFS_TEST_LOOPBACK_H
#define BUCKETFS_TEST_LOOPBACK_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <talloc.h>

/* A loopback port nothing listens on: a connection is refused at once. */
static char *closed_endpoint(TALLOC_CTX *t)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	close(fd);
	return talloc_asprintf(t, "http://127.0.0.1:%u", ntohs(a.sin_port));
}

#endif
