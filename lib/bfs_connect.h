/*
 * A share's setup at a tree connect and its end at the disconnect, on
 * struct bfs_conn (lib/bfs_share.h): every bucketfs: parameter read and
 * checked into bc, the cache folder (index, extent cache, journal,
 * totals), credentials, the S3 client and the bucket's probe, the
 * reader, writeback with what the journal says an earlier process left
 * undone, and the engine for `bucketfs:close = local`.  The module fills
 * in what only Samba knows (bc's Samba-derived fields, struct
 * bfs_share_host), hangs bc on its handle, and turns the errno into the
 * VFS's answer.
 */
#ifndef BUCKETFS_BFS_CONNECT_H
#define BUCKETFS_BFS_CONNECT_H

#include <sys/types.h>
#include <tevent.h>

struct bfs_conn;

/* What the server (smbd) knows of itself that a share's setup needs. */
struct bfs_share_host {
	/* "~" for the credential chain: the user the server started as. */
	uid_t home_uid;
	/* The server's configuration file, for the engine's command line. */
	const char *config_file;
	/* The server's event loop, where the engine answers. */
	struct tevent_context *ev;
};

/*
 * Set up the share bc describes.  bc comes zeroed (talloc_zero) with
 * service, snum, params, owner_uid, owner_gid and connectpath (normalised,
 * bfs_path_normalise; NULL stands for no memory) set; everything made
 * here is bc's child.  0: the share serves.  Else an errno, logged where
 * it was born unless ENOMEM: EINVAL for a parameter that is bad, missing
 * (bucket) or of the wrong form (cache dir and metrics file absolute,
 * close local or s3), the cache folder's errors, the credential chain's
 * (bfs_creds_get), an endpoint s3_client_new refuses, the probe's
 * (bfs_probe_bucket), writeback's and the journal's.  bc is then half
 * built: the caller frees it.
 */
int bfs_share_open(struct bfs_conn *bc, const struct bfs_share_host *host)
	__attribute__((warn_unused_result));

/*
 * The disconnect: add the counts to the folder's totals, log what the
 * connection read.  The caller frees bc afterwards (its clients, index,
 * cache and journal go with it).
 */
void bfs_share_close(struct bfs_conn *bc);

/*
 * The engine's pid for a hand-over, reaching it again if it went away;
 * 0 without one (closes then upload themselves).
 */
pid_t bfs_engine_now(struct bfs_conn *bc);

#endif
