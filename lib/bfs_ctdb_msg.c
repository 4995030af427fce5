/*
 * One CTDB_REQ_MESSAGE to ctdbd's unix socket (see bfs_ctdb_msg.h).
 *
 * The frame (ctdb/protocol, CTDB_PROTOCOL 1, host byte order, the same
 * machine): eight uint32 (length of the whole packet, magic "CTDB",
 * version 1, generation, operation 5 = REQ_MESSAGE, destination node,
 * source node, request id), then the uint64 srvid, the uint32 length of
 * the data and the data.  ctdbd fills in the source node of a client's
 * message and forwards it to the destination's registered listeners.
 */
#include "bfs_ctdb_msg.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "bfs_log.h"

#define BFS_CTDB_MAGIC 0x43544442U
#define BFS_CTDB_PROTOCOL 1U
#define BFS_CTDB_REQ_MESSAGE 5U
#define BFS_CTDB_HEADER 32U	/* eight uint32 */
#define BFS_CTDB_MSG_HEAD (BFS_CTDB_HEADER + 8U + 4U)

#define BFS_CHANGE_MAGIC "bucketfs-change 1"

uint8_t *bfs_change_msg(TALLOC_CTX *mem_ctx, uint32_t origin,
			const char *bucket, const char *key, size_t *len)
{
	size_t m = sizeof(BFS_CHANGE_MAGIC), b = strlen(bucket) + 1;
	size_t k = strlen(key) + 1;
	uint8_t *msg = talloc_size(mem_ctx, m + 4 + b + k);

	if (msg != NULL) {
		memcpy(msg, BFS_CHANGE_MAGIC, m);
		memcpy(msg + m, &origin, 4);
		memcpy(msg + m + 4, bucket, b);
		memcpy(msg + m + 4 + b, key, k);
		*len = m + 4 + b + k;
	}
	return msg;
}

int bfs_change_msg_parse(const uint8_t *msg, size_t len, uint32_t *origin,
			 const char **bucket, const char **key)
{
	size_t m = sizeof(BFS_CHANGE_MAGIC) + 4;
	const uint8_t *b, *end;

	/* The magic, the origin, then two NUL-terminated strings, the
	 * message's last byte the second one's NUL. */
	if (len < m + 2 ||
	    memcmp(msg, BFS_CHANGE_MAGIC, sizeof(BFS_CHANGE_MAGIC)) != 0 ||
	    msg[len - 1] != '\0') {
		return EINVAL;
	}
	b = msg + m;
	end = memchr(b, '\0', len - m);
	if (end == NULL || end == b || end + 1 >= msg + len ||
	    memchr(end + 1, '\0', (size_t)(msg + len - end - 1)) !=
		    msg + len - 1) {
		return EINVAL;
	}
	memcpy(origin, msg + sizeof(BFS_CHANGE_MAGIC), 4);
	*bucket = (const char *)b;
	*key = (const char *)end + 1;
	return 0;
}

uint8_t *bfs_ctdb_message_packet(TALLOC_CTX *mem_ctx, uint32_t destnode,
				 uint64_t srvid, const uint8_t *data,
				 size_t len, size_t *packet_len)
{
	const uint32_t head[8] = {
		(uint32_t)(BFS_CTDB_MSG_HEAD + len), BFS_CTDB_MAGIC,
		BFS_CTDB_PROTOCOL, 1 /* generation, as smbd sends */,
		BFS_CTDB_REQ_MESSAGE, destnode, 0 /* ctdbd's to fill */, 0,
	};
	uint32_t dlen = (uint32_t)len;
	uint8_t *p;

	if (len > UINT32_MAX - BFS_CTDB_MSG_HEAD) {
		return NULL;
	}
	p = talloc_size(mem_ctx, BFS_CTDB_MSG_HEAD + len);
	if (p == NULL) {
		return NULL;
	}
	memcpy(p, head, sizeof(head));
	memcpy(p + BFS_CTDB_HEADER, &srvid, sizeof(srvid));
	memcpy(p + BFS_CTDB_HEADER + 8, &dlen, sizeof(dlen));
	if (len > 0) {
		memcpy(p + BFS_CTDB_MSG_HEAD, data, len);
	}
	*packet_len = BFS_CTDB_MSG_HEAD + len;
	return p;
}

static int bfs_ctdb_write_all(int fd, const uint8_t *p, size_t n,
			      int timeout_ms)
{
	while (n > 0) {
		struct pollfd pfd = {.fd = fd, .events = POLLOUT};
		ssize_t w;
		int r = poll(&pfd, 1, timeout_ms);

		if (r == 0) {
			return ETIMEDOUT;
		}
		if (r < 0) {
			if (errno == EINTR) {
				continue;
			}
			return errno;
		}
		w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				continue;
			}
			return errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int bfs_ctdb_send_message(const char *socket_path, uint32_t destnode,
			  uint64_t srvid, const uint8_t *data, size_t len,
			  int timeout_ms)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	TALLOC_CTX *tmp;
	uint8_t *pkt;
	size_t plen = 0;
	int fd, ret;

	if (strlen(socket_path) >= sizeof(sa.sun_path)) {
		bfs_log(BFS_LOG_ERR, "bucketfs: ctdbd socket path too long: %s",
			socket_path);
		return ENAMETOOLONG;
	}
	memcpy(sa.sun_path, socket_path, strlen(socket_path) + 1);
	tmp = talloc_new(NULL);
	pkt = tmp != NULL ? bfs_ctdb_message_packet(tmp, destnode, srvid, data,
						    len, &plen) : NULL;
	if (pkt == NULL) {
		talloc_free(tmp);
		return ENOMEM;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		ret = errno;
	} else if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		ret = errno;
	} else {
		ret = bfs_ctdb_write_all(fd, pkt, plen, timeout_ms);
	}
	if (ret != 0) {
		bfs_log(BFS_LOG_WARNING, "bucketfs: cannot send ctdbd at %s a "
			"message: %s", socket_path, strerror(ret));
	}
	if (fd != -1) {
		close(fd);
	}
	talloc_free(tmp);
	return ret;
}
