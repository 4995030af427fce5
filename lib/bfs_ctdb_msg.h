/*
 * A message to ctdbd's other nodes, sent by a process without Samba's
 * CTDB connection (bucketfsd): one CTDB_REQ_MESSAGE packet written to
 * ctdbd's unix socket, as CTDB protocol 1 frames it.  smbd (the module)
 * sends and hears the same messages through Samba's own connection.
 */
#ifndef BUCKETFS_BFS_CTDB_MSG_H
#define BUCKETFS_BFS_CTDB_MSG_H

#include <stddef.h>
#include <stdint.h>
#include <talloc.h>

/* Our CTDB message id: outside the ranges of ctdb_srvids.h. */
#define BFS_CTDB_SRVID 0xBF5C000000000001ULL
/* ctdb/protocol/protocol.h's CTDB_BROADCAST_CONNECTED (not installed). */
#define BFS_CTDB_ALL_NODES 0xF0000004U
/* A change message's origin when the sender does not know its node: every
 * node, its own included, takes it as another node's. */
#define BFS_CTDB_NODE_UNKNOWN 0xFFFFFFFFU
/* ctdbd's socket unless smb.conf's `ctdbd socket` says (smbd -b). */
#define BFS_CTDB_SOCKET_DEFAULT "/run/ctdb/ctdbd.socket"

/*
 * The message telling other nodes that key of bucket changed, sent by
 * node origin: "bucketfs-change 1\0", a 4-byte origin, "<bucket>\0<key>\0",
 * on mem_ctx; and its parse (0, or EINVAL for anything else; *bucket and
 * *key point into msg).  The origin travels in the message because ctdbd
 * hands every message on as one of the receiving node.
 */
uint8_t *bfs_change_msg(TALLOC_CTX *mem_ctx, uint32_t origin,
			const char *bucket, const char *key, size_t *len);
int bfs_change_msg_parse(const uint8_t *msg, size_t len, uint32_t *origin,
			 const char **bucket, const char **key);

/* The packet: header, srvid, length, data.  NULL: out of memory. */
uint8_t *bfs_ctdb_message_packet(TALLOC_CTX *mem_ctx, uint32_t destnode,
				 uint64_t srvid, const uint8_t *data,
				 size_t len, size_t *packet_len);

/*
 * Connect to ctdbd at socket_path, write the message and close: 0 or an
 * errno.  Blocking, at most timeout_ms on a write (ctdbd reads its
 * clients at once; the bound is for a ctdbd that is stuck).
 */
int bfs_ctdb_send_message(const char *socket_path, uint32_t destnode,
			  uint64_t srvid, const uint8_t *data, size_t len,
			  int timeout_ms)
	__attribute__((warn_unused_result));

#endif
