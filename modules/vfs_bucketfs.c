/*
 * vfs_bucketfs: serve an S3 bucket as a Samba share.
 *
 * A final (opaque) module, like vfs_ceph and vfs_glusterfs: nothing below it
 * touches the host filesystem.  Files get fake fds (bfs_fake_fd); the
 * share's "path =" only names the root of the namespace we present.
 *
 * This file is glue: it turns VFS calls into calls on lib/ (S3 client,
 * listings) and Samba types stop here.  Synchronous VFS calls run their
 * S3 requests to completion on a private tevent context; pread_send runs on
 * smbd's own event loop.
 *
 * Writes go to a staging file in the cache folder; close and flush upload
 * it (lib/bfs_writeback.h), journalled so that a killed smbd loses nothing
 * it acknowledged.  Renames are CopyObject + DeleteObject, mkdir a marker
 * object "dir/".
 */

#include "includes.h"
#include "smbd/smbd.h"
#include "system/filesys.h"
#include "lib/util/tevent_unix.h"
#include "lib/util/tevent_ntstatus.h"
#include "lib/pthreadpool/pthreadpool_tevent.h"
#include "smbd/globals.h"
#include "version.h"
#include "ctdbd_conn.h"
#include "lib/messages_ctdb.h"

#include "bfs_cache.h"
#include "bfs_claim.h"
#include "bfs_connect.h"
#include "bfs_ctdb_msg.h"
#include "bfs_engine.h"
#include "bfs_file.h"
#include "bfs_fileinfo.h"
#include "bfs_index.h"
#include "bfs_priv.h"
#include "bfs_journal.h"
#include "bfs_log.h"
#include "bfs_name.h"
#include "bfs_namespace.h"
#include "bfs_params.h"
#include "bfs_path.h"
#include "bfs_read_plan.h"
#include "bfs_reader.h"
#include "bfs_share.h"
#include "bfs_stream.h"
#include "bfs_volume.h"
#include "bfs_writeback.h"
#include "s3_client.h"
#include "s3_dirlist.h"
#include "s3_imds.h"
#include "s3_ops.h"

/* Our own debug class: "log level = 1 bucketfs:5" (vfs until registered). */
static int vfs_bucketfs_debug_level = DBGC_VFS;
#undef DBGC_CLASS
#define DBGC_CLASS vfs_bucketfs_debug_level

#define BFS_MODULE "bucketfs"
/*
 * The name "vfs objects" loads; a sanitizer build sets its own so it can
 * sit next to the real module (smb.conf parameters stay "bucketfs:").
 */
#ifndef BFS_VFS_NAME
#define BFS_VFS_NAME BFS_MODULE
#endif
/* Directory entries read from the index per refill of a DIR handle. */
#define BFS_DIR_PAGE 256

/*
 * Read by scripts/check-samba.sh before install: what we were built for.
 * The Makefile passes the Debian package version; in Samba's tree the
 * tree itself is the version.
 */
#ifndef BUCKETFS_SAMBA_PKGVER
#define BUCKETFS_SAMBA_PKGVER "in-tree-" SAMBA_VERSION_STRING
#endif
const char bucketfs_built_for[] = "bucketfs-built-for: samba="
	BUCKETFS_SAMBA_PKGVER " vfs=" __STRINGSTRING(SMB_VFS_INTERFACE_VERSION);

/*
 * What fdopendir hands smbd, cast to DIR *: a window of the directory's
 * entries, paged from the index in name order.
 */
struct bfs_dir_handle {
	struct bfs_conn *bc;
	files_struct *fsp;
	char *prefix;		/* the directory's key prefix */
	struct bfs_entry *win;	/* entries [win_start, win_start + win_n) */
	size_t win_n;
	long win_start;
	bool win_last;		/* the window reaches the end */
	long pos;		/* ordinal of the next entry */
	struct dirent de;
};

static struct bfs_reader *bfs_async_reader(struct bfs_conn *bc,
					   struct tevent_context *ev);

static struct bfs_fh *bfs_fh_of(struct vfs_handle_struct *handle,
				 const struct files_struct *fsp)
{
	struct bfs_fh **pfh = VFS_FETCH_FSP_EXTENSION(handle, fsp);

	return pfh != NULL ? *pfh : NULL;
}

/* ---- paths ---------------------------------------------------------------- */

/*
 * The folder smbd means a name to be relative to: dirfsp's path, or NULL
 * for the connection's cwd (its cwd_fsp, or a handle without a path fd).
 * Resolving it is lib/bfs_path's.
 */
static const char *bfs_dirfsp_path(const struct files_struct *dirfsp)
{
	if (dirfsp == NULL || dirfsp == dirfsp->conn->cwd_fsp ||
	    fsp_get_pathref_fd(dirfsp) == AT_FDCWD) {
		return NULL;
	}
	return dirfsp->fsp_name->base_name;
}

/*
 * The descriptor smbd keeps for a file or folder we opened: no file is
 * behind it, smbd only needs a number that is valid until our close.
 * Samba's vfs_fake_fd() makes a pipe for each (two descriptors and a
 * pipe inode, all freed again); smbd opens a name several times per
 * SMB2 CREATE (each folder of the path, the name's pathref, the open
 * itself), and those pipes were a quarter of what smbd spent beyond
 * plain Samba on small hot files (perf, bench/loader W=32).  A duplicate
 * of one /dev/null descriptor is a slot in the descriptor table; reads
 * of it see end of file and writes fail with EBADF, as with the pipe.
 */
static int bfs_fake_fd(void)
{
	static int null_fd = -1;

	if (null_fd == -1) {
		int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

		if (fd == -1) {
			DBG_ERR("bucketfs: cannot open /dev/null: %s\n",
				strerror(errno));
			return -1;
		}
		null_fd = fd;
	}
	return fcntl(null_fd, F_DUPFD_CLOEXEC, 0);
}

/* The share-relative path of name, relative to dirfsp (or the cwd). */
static int bfs_rel_path(TALLOC_CTX *mem_ctx, struct bfs_conn *bc,
			const struct files_struct *dirfsp, const char *name,
			char **rel)
{
	return bfs_path_resolve(mem_ctx, bc->service, bc->connectpath, bc->cwd,
				bc->prefix, bfs_dirfsp_path(dirfsp), name, rel);
}

/* ---- stat ------------------------------------------------------------------------ */

static void bfs_fill_stat(struct bfs_conn *bc, SMB_STRUCT_STAT *sbuf,
			  uint64_t ino, bool is_dir, uint64_t size,
			  time_t mtime, const struct bfs_meta *m)
{
	struct timespec mt, bt;

	bfs_fileinfo_times(m, mtime, bc->connected, &mt, &bt);
	memset(sbuf, 0, sizeof(*sbuf));
	sbuf->st_ex_dev = bc->dev;
	sbuf->st_ex_ino = ino;
	sbuf->st_ex_mode = is_dir ? (S_IFDIR | bc->dir_mode) :
				    (S_IFREG | bc->file_mode);
	sbuf->st_ex_nlink = is_dir ? 2 : 1;
	sbuf->st_ex_uid = bc->owner_uid;
	sbuf->st_ex_gid = bc->owner_gid;
	sbuf->st_ex_size = is_dir ? 0 : (off_t)size;
	sbuf->st_ex_atime = mt;
	sbuf->st_ex_mtime = mt;
	sbuf->st_ex_ctime = mt;
	sbuf->st_ex_btime = bt;
	sbuf->st_ex_blksize = 4096;
	sbuf->st_ex_blocks = is_dir ? 0 : (blkcnt_t)((size + 511) / 512);
}

/* Look rel up; fills fh (optional, allocated on mem_ctx) and sbuf. */
static int bfs_lookup(TALLOC_CTX *mem_ctx, struct bfs_conn *bc,
		      const char *rel, SMB_STRUCT_STAT *sbuf,
		      struct bfs_fh **pfh)
{
	TALLOC_CTX *frame = talloc_stackframe();
	struct bfs_entry e;
	int ret = bfs_lookup_entry(frame, bc, rel, &e);

	if (ret != 0) {
		TALLOC_FREE(frame);
		return ret;
	}
	bfs_fill_stat(bc, sbuf, e.ino, e.is_dir, e.size, e.mtime, &e.meta);
	if (pfh != NULL) {
		*pfh = bfs_fh_new(mem_ctx, bc, rel, &e);
		if (*pfh == NULL) {
			TALLOC_FREE(frame);
			return ENOMEM;
		}
	}
	TALLOC_FREE(frame);
	return 0;
}

static int bfs_stat_rel_name(struct vfs_handle_struct *handle,
			     const struct files_struct *dirfsp,
			     struct smb_filename *smb_fname,
			     SMB_STRUCT_STAT *sbuf)
{
	struct bfs_conn *bc;
	char *rel = NULL;
	int ret;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn, return -1);
	if (smb_fname->stream_name != NULL) {
		errno = ENOENT;
		return -1;
	}
	ret = bfs_rel_path(talloc_tos(), bc, dirfsp, smb_fname->base_name,
			   &rel);
	if (ret == EINVAL) {
		ret = ENOENT; /* no key has that name */
	}
	if (ret == 0) {
		ret = bfs_lookup(NULL, bc, rel, sbuf, NULL);
	}
	TALLOC_FREE(rel);
	if (ret != 0) {
		errno = ret;
		return -1;
	}
	return 0;
}

/* ---- connect ------------------------------------------------------------------------ */

/* Values from smb.conf (this share's, else [global]'s), for lib/bfs_params. */
static const char *bfs_lp_get(void *priv, const char *name)
{
	const struct bfs_conn *bc = priv;

	return lp_parm_const_string(bc->snum, BFS_MODULE, name, NULL);
}

/* lib/'s log lines, in smbd's log at our debug class. */
static void bfs_log_line(int level, const char *line)
{
	DEBUG(level, ("%s\n", line));
}

/* ---- cluster: changes told to the other nodes -------------------------------- */

/*
 * With `clustering = yes`, an upload, rename or delete made through this
 * node is broadcast over CTDB's messaging to every node's smbds, and their
 * shares of the same bucket list the folder again at its next access
 * rather than after their TTL (lib: bfs_changed, bfs_changed_elsewhere).
 * The message id and framing: lib/bfs_ctdb_msg.h.
 */

/* The shares of this process, for the messages of other nodes. */
struct bfs_live {
	struct bfs_live *prev, *next;
	struct bfs_conn *bc;
};
static struct bfs_live *bfs_live_conns;

static int bfs_live_destructor(struct bfs_live *l)
{
	DLIST_REMOVE(bfs_live_conns, l);
	return 0;
}

static int bfs_ctdb_changed(struct tevent_context *ev, uint32_t src_vnn,
			    uint32_t dst_vnn, uint64_t dst_srvid,
			    const uint8_t *msg, size_t msglen,
			    void *private_data)
{
	struct ctdbd_connection *conn = messaging_ctdb_connection();
	const char *bucket, *key;
	uint32_t origin;
	struct bfs_live *l;

	/*
	 * src_vnn is this node's own: ctdbd hands every message on as its.
	 * get_my_vnn() (set from ctdbd at startup), not ctdbd_vnn(): the
	 * latter exists only in Samba built with cluster support.
	 */
	if (conn == NULL ||
	    bfs_change_msg_parse(msg, msglen, &origin, &bucket, &key) != 0 ||
	    origin == get_my_vnn()) {
		return 0; /* not one of ours, or ours (the index has it) */
	}
	for (l = bfs_live_conns; l != NULL; l = l->next) {
		bfs_changed_elsewhere(l->bc, bucket, key);
	}
	return 0;
}

static void bfs_tell_nodes(void *priv, const char *key)
{
	struct bfs_conn *bc = priv;
	struct ctdbd_connection *conn = messaging_ctdb_connection();
	size_t len = 0;
	uint8_t *msg;
	struct iovec iov;
	int ret;

	if (conn == NULL) {
		return;
	}
	msg = bfs_change_msg(talloc_tos(), get_my_vnn(), bc->cfg.bucket, key,
			     &len);
	if (msg == NULL) {
		return;
	}
	DBG_INFO("bucketfs: share %s: telling the other nodes that %s "
		 "changed\n", bc->service, key);
	iov = (struct iovec){.iov_base = msg, .iov_len = len};
	ret = ctdbd_messaging_send_iov(conn, BFS_CTDB_ALL_NODES, BFS_CTDB_SRVID,
				       &iov, 1);
	if (ret != 0) {
		/* The other nodes see it after their TTL, as without CTDB. */
		DBG_WARNING("bucketfs: share %s: cannot tell the other nodes "
			    "that %s changed: %s\n", bc->service, key,
			    strerror(ret));
	}
	TALLOC_FREE(msg);
}

/* In a cluster: this share hears of other nodes' changes and tells its own. */
static void bfs_join_cluster(struct bfs_conn *bc)
{
	static bool registered;
	struct ctdbd_connection *conn;
	struct bfs_live *l;

	if (!lp_clustering()) {
		return;
	}
	conn = messaging_ctdb_connection();
	if (conn == NULL) {
		DBG_WARNING("bucketfs: share %s: no CTDB connection: other nodes "
			    "see its changes after their listing TTL\n",
			    bc->service);
		return;
	}
	if (!registered) {
		int ret = register_with_ctdbd(conn, BFS_CTDB_SRVID,
					      bfs_ctdb_changed, NULL);
		if (ret != 0) {
			DBG_WARNING("bucketfs: cannot hear other nodes' changes "
				    "over CTDB: %s; they show after the "
				    "listing TTL\n", strerror(ret));
			return;
		}
		registered = true;
		DBG_NOTICE("bucketfs: hearing other nodes' changes over CTDB "
			   "(node %u)\n", get_my_vnn());
	}
	l = talloc_zero(bc, struct bfs_live);
	if (l == NULL) {
		return;
	}
	l->bc = bc;
	DLIST_ADD(bfs_live_conns, l);
	talloc_set_destructor(l, bfs_live_destructor);
	bc->on_change = bfs_tell_nodes;
	bc->on_change_priv = bc;
	if (bfs_cluster_listen(bc) != 0) {
		return; /* logged; the TTL covers what was missed */
	}
}

static int bfs_connect(struct vfs_handle_struct *handle, const char *service,
		       const char *user)
{
	const struct bfs_share_host host = {
		/* "~" is the home of the user smbd started as (root). */
		.home_uid = sec_initial_uid(),
		.config_file = get_dyn_CONFIGFILE(),
		.ev = handle->conn->sconn->ev_ctx,
	};
	struct bfs_conn *bc;
	int ret;

	bfs_log_set(bfs_log_line);
	/*
	 * lib/ works in the cache folder (root's) with root's rights and
	 * talks to S3 with the user's: smbd's main thread lends them.
	 */
	bfs_priv_set(become_root, unbecome_root);
	bc = talloc_zero(handle->conn, struct bfs_conn);
	if (bc == NULL) {
		errno = ENOMEM;
		return -1;
	}
	bc->service = talloc_strdup(bc, service);
	bc->snum = SNUM(handle->conn);
	bc->params = (struct bfs_psrc){bfs_lp_get, bc};
	/*
	 * Files belong to the user the tree is connected as (with force
	 * user applied): that token, read without a system call per stat.
	 */
	bc->owner_uid = handle->conn->session_info->unix_token->uid;
	bc->owner_gid = handle->conn->session_info->unix_token->gid;
	bc->connectpath = bfs_path_normalise(bc, handle->conn->connectpath);
	/* Everything else is lib's: parameters, cache, S3, writeback. */
	ret = bfs_share_open(bc, &host);
	if (ret != 0) {
		goto fail;
	}
	SMB_VFS_HANDLE_SET_DATA(handle, bc, NULL, struct bfs_conn,
				goto nomem);
	DBG_NOTICE("bucketfs: share %s serves s3://%s/%s from %s for %s\n",
		   service, bc->cfg.bucket, bc->prefix, bc->cfg.endpoint, user);
	bfs_join_cluster(bc);
	return 0;

nomem:
	ret = ENOMEM;
fail:
	TALLOC_FREE(bc);
	errno = ret;
	return -1;
}

static void bfs_disconnect(struct vfs_handle_struct *handle)
{
	struct bfs_conn *bc;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn, return);
	bfs_share_close(bc);
	/* Children (clients, contexts, cache) go with it. */
	SMB_VFS_HANDLE_FREE_DATA(handle);
	TALLOC_FREE(bc);
}

/* ---- volume ------------------------------------------------------------------------- */

static uint64_t bfs_disk_free(struct vfs_handle_struct *handle,
			      const struct smb_filename *smb_fname,
			      uint64_t *bsize, uint64_t *dfree, uint64_t *dsize)
{
	struct bfs_conn *bc;
	uint64_t total, avail;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn, return -1);
	bfs_volume_space(bc, &total, &avail);
	*bsize = 4096;
	*dfree = avail / 4096;
	*dsize = total / 4096;
	return *dfree;
}

/*
 * FileFsAttributeInformation's flags (smbd copies them there).  Only a
 * share this user may not write (read only, write list) says
 * FILE_READ_ONLY_VOLUME: Windows takes the whole volume as read-only when
 * it sees the flag, and refuses to write to it.
 */
static uint32_t bfs_volume_flags(const struct connection_struct *conn)
{
	uint32_t flags = FILE_CASE_SENSITIVE_SEARCH |
			 FILE_CASE_PRESERVED_NAMES | FILE_UNICODE_ON_DISK;

	if (conn->read_only) {
		flags |= FILE_READ_ONLY_VOLUME;
	}
	return flags;
}

static int bfs_statvfs(struct vfs_handle_struct *handle,
		       const struct smb_filename *smb_fname,
		       struct vfs_statvfs_struct *st)
{
	struct bfs_conn *bc;
	uint64_t total, avail;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn, return -1);
	bfs_volume_space(bc, &total, &avail);
	memset(st, 0, sizeof(*st));
	st->OptimalTransferSize = 4 * 1024 * 1024;
	st->BlockSize = 4096;
	st->TotalBlocks = total / 4096;
	st->BlocksAvail = avail / 4096;
	st->UserBlocksAvail = avail / 4096;
	st->TotalFileNodes = UINT32_MAX;
	st->FreeFileNodes = UINT32_MAX;
	st->FsIdentifier = bc->dev;
	st->FsCapabilities = bfs_volume_flags(handle->conn);
	return 0;
}

static uint32_t bfs_fs_capabilities(struct vfs_handle_struct *handle,
				    enum timestamp_set_resolution *p_ts_res)
{
	/* Times a client sets are kept to the nanosecond (bfs_fileinfo.h). */
	*p_ts_res = TIMESTAMP_SET_NT_OR_BETTER;
	return bfs_volume_flags(handle->conn);
}

/* ---- directories --------------------------------------------------------------------- */

static DIR *bfs_fdopendir(struct vfs_handle_struct *handle, files_struct *fsp,
			  const char *mask, uint32_t attributes)
{
	struct bfs_fh *fh = bfs_fh_of(handle, fsp);
	struct bfs_dir_handle *dh;
	struct bfs_conn *bc;
	int ret;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn, return NULL);
	if (fh == NULL || !fh->is_dir) {
		errno = fh == NULL ? EBADF : ENOTDIR;
		return NULL;
	}
	ret = bfs_dir_fresh(bc, fh->rel);
	if (ret != 0) {
		errno = ret;
		return NULL;
	}
	dh = talloc_zero(bc, struct bfs_dir_handle);
	if (dh == NULL ||
	    (dh->prefix = bfs_path_dir_prefix(dh, bc->prefix, fh->rel)) ==
		    NULL) {
		TALLOC_FREE(dh);
		errno = ENOMEM;
		return NULL;
	}
	dh->bc = bc;
	dh->fsp = fsp;
	return (DIR *)dh;
}

/*
 * The entry at ordinal pos, paging the index forward (restarting from the
 * first entry for a seek backwards).  NULL at the end or on error.
 */
static const struct bfs_entry *bfs_dir_entry(struct bfs_dir_handle *dh,
					     long pos)
{
	while (pos >= dh->win_start + (long)dh->win_n || pos < dh->win_start) {
		const char *after = NULL;
		struct bfs_entry *ents = NULL;
		size_t n = 0;
		int ret;

		if (pos < dh->win_start || dh->win == NULL) {
			/* (Re)start from the first entry. */
			TALLOC_FREE(dh->win);
			dh->win_start = 0;
			dh->win_n = 0;
			dh->win_last = false;
		} else if (dh->win_last) {
			return NULL;
		} else {
			after = dh->win[dh->win_n - 1].name;
		}
		ret = bfs_index_children(dh->bc->index, dh, dh->prefix, after,
					 BFS_DIR_PAGE, &ents, &n);
		if (ret != 0) {
			DBG_WARNING("bucketfs: reading %s from the index: %s\n",
				    dh->prefix, strerror(ret));
			return NULL;
		}
		if (dh->win != NULL) {
			dh->win_start += (long)dh->win_n;
		}
		TALLOC_FREE(dh->win);
		dh->win = ents;
		dh->win_n = n;
		dh->win_last = n < BFS_DIR_PAGE;
		if (n == 0) {
			return NULL;
		}
	}
	return &dh->win[pos - dh->win_start];
}

static struct dirent *bfs_readdir(struct vfs_handle_struct *handle,
				  struct files_struct *dirfsp, DIR *dirp,
				  SMB_STRUCT_STAT *sbuf)
{
	struct bfs_dir_handle *dh = (struct bfs_dir_handle *)dirp;
	const struct bfs_entry *e;

	if (sbuf != NULL) {
		SET_STAT_INVALID(*sbuf);
	}
	/* smbd makes "." and ".." itself. */
	for (;;) {
		e = bfs_dir_entry(dh, dh->pos);
		if (e == NULL) {
			return NULL;
		}
		dh->pos++;
		/* libreplace's memset_s lives in a library smbd does not
		 * export to modules: plain libc here. */
		memset(&dh->de, 0, sizeof(dh->de));
		if (bfs_name_to_smb_buf(e->name, dh->de.d_name,
					sizeof(dh->de.d_name)) == 0) {
			break;
		}
		/* The listing hid these; an index filled otherwise may not. */
		DBG_INFO("bucketfs: a name in %s cannot be an SMB name (%s)\n",
			 dh->prefix, bfs_name_problem(e->name) ?: "too long");
	}
	dh->de.d_off = dh->pos;
	dh->de.d_reclen = sizeof(dh->de);
	dh->de.d_type = e->is_dir ? DT_DIR : DT_REG;
	dh->de.d_ino = e->ino;
	return &dh->de;
}

static void bfs_seekdir(struct vfs_handle_struct *handle, DIR *dirp,
			long offset)
{
	((struct bfs_dir_handle *)dirp)->pos = offset;
}

static long bfs_telldir(struct vfs_handle_struct *handle, DIR *dirp)
{
	return ((struct bfs_dir_handle *)dirp)->pos;
}

static void bfs_rewind_dir(struct vfs_handle_struct *handle, DIR *dirp)
{
	((struct bfs_dir_handle *)dirp)->pos = 0;
}

static int bfs_closedir(struct vfs_handle_struct *handle, DIR *dirp)
{
	struct bfs_dir_handle *dh = (struct bfs_dir_handle *)dirp;
	int fd = fsp_get_pathref_fd(dh->fsp);

	/* Like closedir(3): the directory's fd goes with the handle. */
	if (fd != -1) {
		close(fd);
	}
	talloc_free(dh);
	return 0;
}

/* Case-insensitive lookup (smbd's rules: strequal), a page at a time. */
static NTSTATUS bfs_get_real_filename_at(struct vfs_handle_struct *handle,
					 struct files_struct *dirfsp,
					 const char *name, TALLOC_CTX *mem_ctx,
					 char **found_name)
{
	TALLOC_CTX *frame = talloc_stackframe();
	struct bfs_entry *ents = NULL;
	struct bfs_conn *bc;
	const char *after = NULL;
	char *rel = NULL, *prefix;
	size_t i, n = 0;
	int ret;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn,
				return NT_STATUS_INTERNAL_ERROR);
	ret = bfs_rel_path(frame, bc, NULL, dirfsp->fsp_name->base_name, &rel);
	if (ret == 0) {
		ret = bfs_dir_fresh(bc, rel);
	}
	prefix = ret == 0 ? bfs_path_dir_prefix(frame, bc->prefix, rel) : NULL;
	if (ret == 0 && prefix == NULL) {
		ret = ENOMEM;
	}
	while (ret == 0) {
		ret = bfs_index_children(bc->index, frame, prefix, after,
					 BFS_DIR_PAGE, &ents, &n);
		for (i = 0; ret == 0 && i < n; i++) {
			char smb[BFS_NAME_MAX + 1];

			if (bfs_name_to_smb_buf(ents[i].name, smb,
						sizeof(smb)) == 0 &&
			    strequal(smb, name)) {
				*found_name = talloc_strdup(mem_ctx, smb);
				TALLOC_FREE(frame);
				return *found_name ? NT_STATUS_OK :
						     NT_STATUS_NO_MEMORY;
			}
		}
		if (ret != 0 || n < BFS_DIR_PAGE) {
			break;
		}
		after = ents[n - 1].name;
	}
	TALLOC_FREE(frame);
	return ret != 0 ? map_nt_error_from_unix(ret) :
			  NT_STATUS_OBJECT_NAME_NOT_FOUND;
}

/* ---- staging and writeback ----------------------------------------------------------- */

/*
 * The staging table, writes, and what close and flush do with them are
 * lib/bfs_file's; mkdir, rename and delete lib/bfs_namespace's.  The
 * slots below turn Samba's arguments into theirs.
 */

/* ---- open, close, stat ----------------------------------------------------------------- */

/* The fsp extension area is not a talloc chunk: it holds a pointer. */
static void bfs_fh_free(void *p)
{
	struct bfs_fh **pfh = p;

	TALLOC_FREE(*pfh);
}

static int bfs_openat(struct vfs_handle_struct *handle,
		      const struct files_struct *dirfsp,
		      const struct smb_filename *smb_fname,
		      struct files_struct *fsp, const struct vfs_open_how *how)
{
	struct bfs_fh *fh = NULL, **ext;
	struct bfs_conn *bc;
	char *rel = NULL;
	int ret, fd;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn, return -1);
	if (how->resolve != 0) {
		errno = ENOSYS;
		return -1;
	}
	if (smb_fname->stream_name != NULL) {
		errno = ENOENT;
		return -1;
	}
	ret = bfs_rel_path(talloc_tos(), bc, dirfsp, smb_fname->base_name,
			   &rel);
	if (ret == EINVAL && !(how->flags & O_CREAT)) {
		ret = ENOENT; /* no key has that name; none is made */
	}
	if (ret == 0) {
		ret = bfs_fh_open(bc, rel, how->flags,
				  fsp->fsp_flags.is_pathref, &fh);
	}
	TALLOC_FREE(rel);
	if (ret != 0) {
		errno = ret;
		return -1;
	}

	fd = bfs_fake_fd();
	if (fd == -1) {
		TALLOC_FREE(fh);
		return -1;
	}
	ext = VFS_ADD_FSP_EXTENSION(handle, fsp, struct bfs_fh *, bfs_fh_free);
	if (ext == NULL) {
		close(fd);
		TALLOC_FREE(fh);
		errno = ENOMEM;
		return -1;
	}
	*ext = fh;
	return fd;
}

static int bfs_close(struct vfs_handle_struct *handle, files_struct *fsp)
{
	struct bfs_fh *fh = bfs_fh_of(handle, fsp);
	int fd = fsp_get_pathref_fd(fsp);
	struct bfs_conn *bc;
	int ret = 0;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn, return -1);
	if (fh != NULL) {
		ret = bfs_fh_close(bc, fh);
	}
	VFS_REMOVE_FSP_EXTENSION(handle, fsp);
	if (fd != -1) {
		close(fd);
	}
	if (ret != 0) {
		errno = ret;
		return -1;
	}
	return 0;
}

static int bfs_stat(struct vfs_handle_struct *handle,
		    struct smb_filename *smb_fname)
{
	return bfs_stat_rel_name(handle, NULL, smb_fname, &smb_fname->st);
}

static int bfs_lstat(struct vfs_handle_struct *handle,
		     struct smb_filename *smb_fname)
{
	/* S3 has no symlinks: lstat is stat. */
	return bfs_stat_rel_name(handle, NULL, smb_fname, &smb_fname->st);
}

static int bfs_fstatat(struct vfs_handle_struct *handle,
		       const struct files_struct *dirfsp,
		       const struct smb_filename *smb_fname,
		       SMB_STRUCT_STAT *sbuf, int flags)
{
	struct smb_filename *copy = cp_smb_filename(talloc_tos(), smb_fname);
	int ret;

	if (copy == NULL) {
		errno = ENOMEM;
		return -1;
	}
	ret = bfs_stat_rel_name(handle, dirfsp, copy, sbuf);
	TALLOC_FREE(copy);
	return ret;
}

static int bfs_fstat(struct vfs_handle_struct *handle, files_struct *fsp,
		     SMB_STRUCT_STAT *sbuf)
{
	struct bfs_fh *fh = bfs_fh_of(handle, fsp);
	struct bfs_conn *bc;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn, return -1);
	if (fh == NULL) {
		/* A pathref without our open (the cwd): stat by name. */
		return bfs_stat_rel_name(handle, NULL, fsp->fsp_name, sbuf);
	}
	bfs_fill_stat(bc, sbuf, fh->ino, fh->is_dir, bfs_fh_size(fh),
		      fh->mtime, bfs_fh_meta(fh));
	return 0;
}

static uint64_t bfs_get_alloc_size(struct vfs_handle_struct *handle,
				   struct files_struct *fsp,
				   const SMB_STRUCT_STAT *sbuf)
{
	if (S_ISDIR(sbuf->st_ex_mode)) {
		return 0;
	}
	return ((uint64_t)sbuf->st_ex_size + 4095) & ~(uint64_t)4095;
}

/* ---- cwd and names ------------------------------------------------------------------------ */

static int bfs_chdir(struct vfs_handle_struct *handle,
		     const struct smb_filename *smb_fname)
{
	struct bfs_conn *bc;
	SMB_STRUCT_STAT sbuf;
	char *rel = NULL, *abs;
	int ret;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn, return -1);
	ret = bfs_rel_path(talloc_tos(), bc, NULL, smb_fname->base_name, &rel);
	if (ret == 0) {
		ret = bfs_lookup(NULL, bc, rel, &sbuf, NULL);
	}
	if (ret == 0 && !S_ISDIR(sbuf.st_ex_mode)) {
		ret = ENOTDIR;
	}
	if (ret != 0) {
		TALLOC_FREE(rel);
		errno = ret;
		return -1;
	}
	abs = bfs_path_abs_of_rel(bc, bc->connectpath, rel);
	TALLOC_FREE(rel);
	if (abs == NULL) {
		return -1;
	}
	TALLOC_FREE(bc->cwd);
	bc->cwd = abs;
	return 0;
}

static struct smb_filename *bfs_getwd(struct vfs_handle_struct *handle,
				      TALLOC_CTX *ctx)
{
	struct bfs_conn *bc;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn, return NULL);
	return synthetic_smb_fname(ctx, bc->cwd, NULL, NULL, 0, 0);
}

static struct smb_filename *bfs_realpath(struct vfs_handle_struct *handle,
					 TALLOC_CTX *ctx,
					 const struct smb_filename *smb_fname)
{
	struct bfs_conn *bc;
	SMB_STRUCT_STAT sbuf;
	struct smb_filename *out;
	char *rel = NULL, *abs;
	int ret;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn, return NULL);
	ret = bfs_rel_path(talloc_tos(), bc, NULL, smb_fname->base_name, &rel);
	if (ret == 0) {
		ret = bfs_lookup(NULL, bc, rel, &sbuf, NULL);
	}
	if (ret != 0) {
		TALLOC_FREE(rel);
		errno = ret;
		return NULL;
	}
	abs = bfs_path_abs_of_rel(talloc_tos(), bc->connectpath, rel);
	TALLOC_FREE(rel);
	if (abs == NULL) {
		return NULL;
	}
	out = synthetic_smb_fname(ctx, abs, NULL, NULL, 0, 0);
	TALLOC_FREE(abs);
	if (out == NULL) {
		errno = ENOMEM;
	}
	return out;
}

static const char *bfs_connectpath(struct vfs_handle_struct *handle,
				   const struct smb_filename *smb_fname)
{
	return handle->conn->connectpath;
}

static NTSTATUS bfs_parent_pathname(struct vfs_handle_struct *handle,
				    TALLOC_CTX *mem_ctx,
				    const struct smb_filename *in,
				    struct smb_filename **parent_out,
				    struct smb_filename **atname_out)
{
	const char *slash = strrchr(in->base_name, '/');
	struct smb_filename *parent, *atname;
	char *pname;

	pname = slash == NULL ? talloc_strdup(mem_ctx, ".") :
		slash == in->base_name ? talloc_strdup(mem_ctx, "/") :
		talloc_strndup(mem_ctx, in->base_name,
			       (size_t)(slash - in->base_name));
	if (pname == NULL) {
		return NT_STATUS_NO_MEMORY;
	}
	parent = synthetic_smb_fname(mem_ctx, pname, NULL, NULL, in->twrp,
				     in->flags);
	TALLOC_FREE(pname);
	if (parent == NULL) {
		return NT_STATUS_NO_MEMORY;
	}
	if (atname_out != NULL) {
		atname = synthetic_smb_fname(
			parent, slash ? slash + 1 : in->base_name,
			in->stream_name, &in->st, in->twrp, in->flags);
		if (atname == NULL) {
			TALLOC_FREE(parent);
			return NT_STATUS_NO_MEMORY;
		}
		*atname_out = atname;
	}
	*parent_out = parent;
	return NT_STATUS_OK;
}

static struct file_id bfs_file_id_create(struct vfs_handle_struct *handle,
					 const SMB_STRUCT_STAT *sbuf)
{
	struct file_id id = {
		.devid = sbuf->st_ex_dev, .inode = sbuf->st_ex_ino,
	};
	return id;
}

static uint64_t bfs_fs_file_id(struct vfs_handle_struct *handle,
			       const SMB_STRUCT_STAT *sbuf)
{
	return sbuf->st_ex_ino;
}

static NTSTATUS bfs_fstreaminfo(struct vfs_handle_struct *handle,
				struct files_struct *fsp, TALLOC_CTX *mem_ctx,
				unsigned int *num_streams,
				struct stream_struct **streams)
{
	struct stream_struct *s;
	const SMB_STRUCT_STAT *st = &fsp->fsp_name->st;

	/* Objects have exactly one stream: their data.  Directories none. */
	if (S_ISDIR(st->st_ex_mode)) {
		return NT_STATUS_OK;
	}
	s = talloc_realloc(mem_ctx, *streams, struct stream_struct,
			   *num_streams + 1);
	if (s == NULL) {
		return NT_STATUS_NO_MEMORY;
	}
	s[*num_streams].size = st->st_ex_size;
	s[*num_streams].alloc_size = (off_t)bfs_get_alloc_size(handle, fsp, st);
	s[*num_streams].name = talloc_strdup(s, "::$DATA");
	if (s[*num_streams].name == NULL) {
		return NT_STATUS_NO_MEMORY;
	}
	*streams = s;
	*num_streams += 1;
	return NT_STATUS_OK;
}

/* ---- reads ------------------------------------------------------------------------------------ */

/* Clamp [offset, offset+n) to the object; false if nothing to read. */
static bool bfs_clamp(const struct bfs_fh *fh, off_t offset, size_t *n)
{
	if (offset < 0 || (uint64_t)offset >= fh->size || *n == 0) {
		*n = 0;
		return false;
	}
	if (*n > fh->size - (uint64_t)offset) {
		*n = (size_t)(fh->size - (uint64_t)offset);
	}
	return true;
}

/* smbd falls back to this for small and compound reads. */
static ssize_t bfs_pread(struct vfs_handle_struct *handle, files_struct *fsp,
			 void *data, size_t n, off_t offset)
{
	struct bfs_fh *fh = bfs_fh_of(handle, fsp);
	struct s3_status st = {0};
	struct tevent_req *req;
	struct bfs_conn *bc;
	size_t got = 0;
	int ret;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn, return -1);
	if (fh == NULL || fh->is_dir) {
		errno = fh == NULL ? EBADF : EISDIR;
		return -1;
	}
	if (fh->stage_fd != -1) {
		return pread(fh->stage_fd, data, n, offset);
	}
	if (!bfs_clamp(fh, offset, &n)) {
		return 0;
	}
	bc->sync_reads++;
again:
	/* As the user: lib/ opens cache files with root's rights alone. */
	req = bfs_read_send(talloc_tos(), bc->sync_ev, bc->reader, &fh->obj,
			    (uint64_t)offset, n, data);
	ret = s3_wait_for(req, bc->sync_ev);
	if (ret != 0) {
		TALLOC_FREE(req);
		errno = ret;
		return -1;
	}
	ret = bfs_read_recv(req, &got, &st);
	TALLOC_FREE(req);
	if ((ret == ENOENT || ret == ESTALE) && bfs_fh_copy_ended(bc, fh)) {
		/* A renamed file's copy ended: the new object (once). */
		st = (struct s3_status){0};
		goto again;
	}
	if (ret != 0) {
		errno = bfs_read_errno(bc, fh, &st, ret);
		return -1;
	}
	fh->next_off = (uint64_t)offset + got;
	return (ssize_t)got;
}

struct bfs_pread_state {
	struct bfs_conn *bc;
	struct bfs_fh *fh;
	struct tevent_context *ev;
	struct bfs_reader *reader;
	void *data;
	size_t n;
	uint64_t off;
	size_t got;
	/* For the copy in smbd's worker thread: no pointers into fh. */
	struct bfs_cache *cache;
	struct bfs_cache_id id;
	uint32_t block_size;
	int fd;			/* the cache file, for the worker thread */
	int copy_err;
	struct pthreadpool_tevent *pool;	/* smbd's worker threads */
	struct bfs_engine_lent lent;	/* bytes the engine lent us */
	uint64_t ahead, ahead_n;	/* readahead, once a claim answered */
};

static void bfs_pread_done(struct tevent_req *subreq);
static void bfs_pread_cached_done(struct tevent_req *subreq);
static void bfs_pread_engine_done(struct tevent_req *subreq);
static bool bfs_pread_copy_start(struct tevent_req *req,
				 struct bfs_pread_state *state);
static void bfs_pread_fetch_here(struct tevent_req *req,
				 struct bfs_pread_state *state);
static void bfs_pread_lent_done(struct tevent_req *subreq);
static void bfs_pread_claim_done(struct tevent_req *subreq);
static void bfs_pread_ask_engine(struct tevent_req *req,
				 struct bfs_pread_state *state);

/* Runs in one of smbd's worker threads: no talloc, no smbd state. */
static void bfs_pread_lent_do(void *private_data)
{
	struct bfs_pread_state *state = private_data;

	memcpy(state->data, state->lent.data, state->n);
}

/* Runs in one of smbd's worker threads: no talloc, no smbd state. */
static void bfs_pread_cached_do(void *private_data)
{
	struct bfs_pread_state *state = private_data;

	state->copy_err = bfs_copy_cached(state->cache, state->fd, &state->id,
					  state->block_size, state->off,
					  state->n, state->data);
}

/* Freed while a worker copies into it would be a use after free. */
static int bfs_pread_state_destructor(struct bfs_pread_state *state)
{
	return -1;
}

/* The engine that serves async reads lives on smbd's event loop. */
static struct bfs_reader *bfs_async_reader(struct bfs_conn *bc,
					   struct tevent_context *ev)
{
	return bfs_conn_async_reader(bc, ev);
}

static struct tevent_req *bfs_pread_send(struct vfs_handle_struct *handle,
					 TALLOC_CTX *mem_ctx,
					 struct tevent_context *ev,
					 struct files_struct *fsp, void *data,
					 size_t n, off_t offset)
{
	struct bfs_fh *fh = bfs_fh_of(handle, fsp);
	struct tevent_req *req, *subreq;
	struct bfs_pread_state *state;
	struct bfs_reader *reader;
	struct bfs_conn *bc;
	struct bfs_read_plan plan;
	enum bfs_read_way way;

	req = tevent_req_create(mem_ctx, &state, struct bfs_pread_state);
	if (req == NULL) {
		return NULL;
	}
	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn,
				tevent_req_error(req, EBADF);
				return tevent_req_post(req, ev));
	state->bc = bc;
	state->fh = fh;
	if (fh == NULL || fh->is_dir) {
		tevent_req_error(req, fh == NULL ? EBADF : EISDIR);
		return tevent_req_post(req, ev);
	}
	if (fh->stage_fd != -1) {
		/* Staged bytes are a local file: read them now. */
		ssize_t got = pread(fh->stage_fd, data, n, offset);
		if (got < 0) {
			tevent_req_error(req, errno);
		} else {
			state->got = (size_t)got;
			tevent_req_done(req);
		}
		return tevent_req_post(req, ev);
	}
	if (!bfs_clamp(fh, offset, &n)) {
		tevent_req_done(req);
		return tevent_req_post(req, ev);
	}
	reader = bfs_async_reader(bc, ev);
	if (reader == NULL) {
		ssize_t r = bfs_pread(handle, fsp, data, n, offset);
		if (r < 0) {
			tevent_req_error(req, errno);
		} else {
			state->got = (size_t)r;
			tevent_req_done(req);
		}
		return tevent_req_post(req, ev);
	}
	bc->async_reads++;
	state->ev = ev;
	state->reader = reader;
	state->data = data;
	state->n = n;
	state->off = (uint64_t)offset;
	state->fd = -1;
	state->pool = handle->conn->sconn->pool;

	bfs_read_plan(bc, fh, reader, ev == bc->engine_ev, state->off, n,
		      &plan);
	state->ahead = plan.ahead;
	state->ahead_n = plan.ahead_n;
	way = plan.way;
	if (way == BFS_READ_CACHED && !bfs_pread_copy_start(req, state)) {
		way = plan.fallback;
	}
	switch (way) {
	case BFS_READ_CACHED:
		/* Copied in one of smbd's worker threads. */
		break;
	case BFS_READ_CLAIM:
		subreq = bfs_claim_send(state, ev, bc, fh);
		if (tevent_req_nomem(subreq, req)) {
			return tevent_req_post(req, ev);
		}
		tevent_req_set_callback(subreq, bfs_pread_claim_done, req);
		return req;
	case BFS_READ_ENGINE:
		/* Its readahead goes with the ask. */
		bfs_pread_ask_engine(req, state);
		if (!tevent_req_is_in_progress(req)) {
			return tevent_req_post(req, ev);
		}
		return req;
	case BFS_READ_HERE:
		bfs_pread_fetch_here(req, state);
		break;
	}
	if (!tevent_req_is_in_progress(req)) {
		return tevent_req_post(req, ev);
	}
	bfs_read_plan_ahead(bc, fh, reader, &plan);
	return req;
}

/* The engine fetches state's range (and its readahead), once for all. */
static void bfs_pread_ask_engine(struct tevent_req *req,
				 struct bfs_pread_state *state)
{
	struct bfs_fh *fh = state->fh;
	struct bfs_engine_fetch ef = {
		.key = fh->obj.key, .etag = fh->obj.etag,
		.size = fh->obj.size, .offset = state->off,
		.length = state->n, .ahead = state->ahead,
		.ahead_n = state->ahead_n, .lend = true,
	};
	struct tevent_req *subreq;

	subreq = bfs_engine_fetch_send(state, state->ev, state->bc->engine,
				       &ef);
	if (tevent_req_nomem(subreq, req)) {
		return;
	}
	tevent_req_set_callback(subreq, bfs_pread_engine_done, req);
}

/* The engine answered a claim: fetch here (granted), or ask it. */
static void bfs_pread_claim_done(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_pread_state *state = tevent_req_data(req,
							struct bfs_pread_state);
	int ret = bfs_claim_recv(subreq);
	bool ahead = false;

	TALLOC_FREE(subreq);
	/*
	 * Ours (whichever read's ask got it): as bfs_pread_send decides for
	 * a claim, given back or not.  Refused because it is being given
	 * back meanwhile counts too: the engine may not read ahead over the
	 * fetches ours are bringing.
	 */
	if (bfs_claim_reads_here(state->bc, state->fh, &ahead)) {
		if (!ahead) {
			state->ahead_n = 0;
		}
		if (ahead || bfs_reader_holds(state->reader, &state->fh->obj,
					      state->off, state->n)) {
			bfs_pread_fetch_here(req, state);
			if (tevent_req_is_in_progress(req) &&
			    state->ahead_n > 0) {
				bfs_reader_prefetch(state->reader,
						    &state->fh->obj,
						    state->ahead,
						    (unsigned)state->ahead_n);
			}
			return;
		}
	}
	if (ret == EPIPE || state->bc->engine == NULL ||
	    bfs_engine_pid(state->bc->engine) == 0) {
		bfs_pread_fetch_here(req, state); /* no engine: as without */
		return;
	}
	bfs_pread_ask_engine(req, state);
}

/*
 * Copy state's range from the cache in one of smbd's worker threads, as
 * vfs_default does for a local file, so this process's loop keeps sending
 * while the copy runs.  false if the cache file cannot be lent (then read
 * normally).
 */
static bool bfs_pread_copy_start(struct tevent_req *req,
				 struct bfs_pread_state *state)
{
	struct tevent_req *subreq;

	state->cache = bfs_reader_cache(state->reader);
	state->id = state->fh->obj.id;
	state->block_size = bfs_reader_block_size(state->reader);
	/*
	 * Opening a cache file needs root (they belong to the server: lib/
	 * takes it for the open alone, bfs_priv); one this process has open
	 * does not, and changing user costs more system calls than the
	 * copy's own.
	 */
	state->fd = bfs_cache_lend_fd(state->cache, &state->id, false);
	if (state->fd < 0) {
		state->fd = bfs_cache_lend_fd(state->cache, &state->id, true);
	}
	if (state->fd < 0) {
		return false;
	}
	subreq = pthreadpool_tevent_job_send(state, state->ev, state->pool,
					     bfs_pread_cached_do, state);
	if (subreq == NULL) {
		bfs_cache_return_fd(state->cache, state->fd);
		state->fd = -1;
		tevent_req_oom(req);
		return true;
	}
	tevent_req_set_callback(subreq, bfs_pread_cached_done, req);
	talloc_set_destructor(state, bfs_pread_state_destructor);
	return true;
}

/* Read state's range through this process's own reader (fetching). */
static void bfs_pread_fetch_here(struct tevent_req *req,
				 struct bfs_pread_state *state)
{
	struct tevent_req *subreq;

	/* As the user: lib/ opens cache files with root's rights alone. */
	subreq = bfs_read_send(state, state->ev, state->reader,
			       &state->fh->obj, state->off, state->n,
			       state->data);
	if (tevent_req_nomem(subreq, req)) {
		return;
	}
	tevent_req_set_callback(subreq, bfs_pread_done, req);
}

/*
 * The engine lent the bytes in its fetch arena (copied in one of smbd's
 * worker threads, then given back), or has them in the cache: copy them
 * from there.
 */
static void bfs_pread_engine_done(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_pread_state *state = tevent_req_data(req,
							struct bfs_pread_state);
	int ret = bfs_engine_fetch_recv(subreq, &state->lent);

	TALLOC_FREE(subreq);
	if (ret == 0 && state->lent.data != NULL) {
		subreq = pthreadpool_tevent_job_send(state, state->ev,
						     state->pool,
						     bfs_pread_lent_do, state);
		if (subreq == NULL) {
			bfs_pread_lent_do(state);
			bfs_engine_lent_done(state->bc->engine, &state->lent);
			state->got = state->n;
			tevent_req_done(req);
			return;
		}
		tevent_req_set_callback(subreq, bfs_pread_lent_done, req);
		talloc_set_destructor(state, bfs_pread_state_destructor);
		return;
	}
	if (ret == 0 &&
	    bfs_reader_all_cached(state->reader, &state->fh->obj, state->off,
				  state->n) &&
	    bfs_pread_copy_start(req, state)) {
		return;
	}
	/*
	 * Gone from the cache already, or the engine failed or went away:
	 * this process fetches, and says what S3 said, as without engine.
	 */
	bfs_pread_fetch_here(req, state);
}

static void bfs_pread_done(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_pread_state *state = tevent_req_data(req,
							struct bfs_pread_state);
	struct s3_status st = {0};
	int ret;

	ret = bfs_read_recv(subreq, &state->got, &st);
	TALLOC_FREE(subreq);
	if ((ret == ENOENT || ret == ESTALE) &&
	    bfs_fh_copy_ended(state->bc, state->fh)) {
		bfs_pread_fetch_here(req, state);
		return;
	}
	if (ret != 0) {
		tevent_req_error(req, bfs_read_errno(state->bc, state->fh, &st,
						     ret));
		return;
	}
	tevent_req_done(req);
}

static void bfs_pread_lent_done(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_pread_state *state = tevent_req_data(req,
							struct bfs_pread_state);
	int ret = pthreadpool_tevent_job_recv(subreq);

	TALLOC_FREE(subreq);
	talloc_set_destructor(state, NULL);
	if (ret == EAGAIN) {
		/* No thread could be started: copy here. */
		bfs_pread_lent_do(state);
		ret = 0;
	}
	bfs_engine_lent_done(state->bc->engine, &state->lent);
	if (ret != 0) {
		tevent_req_error(req, ret);
		return;
	}
	state->got = state->n;
	tevent_req_done(req);
}

static void bfs_pread_cached_done(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_pread_state *state = tevent_req_data(req,
							struct bfs_pread_state);
	int ret;

	ret = pthreadpool_tevent_job_recv(subreq);
	TALLOC_FREE(subreq);
	talloc_set_destructor(state, NULL);
	if (ret == EAGAIN) {
		/* No thread could be started: copy here. */
		bfs_pread_cached_do(state);
		ret = 0;
	}
	bfs_cache_return_fd(state->cache, state->fd);
	state->fd = -1;
	if (ret == 0 && state->copy_err == 0) {
		bfs_reader_cached_done(state->reader, &state->fh->obj,
				       state->off, state->n);
		state->got = state->n;
		tevent_req_done(req);
		return;
	}
	/* A block went meanwhile (or the pool failed): read it normally. */
	bfs_pread_fetch_here(req, state);
}

static ssize_t bfs_pread_recv(struct tevent_req *req,
			      struct vfs_aio_state *vfs_aio_state)
{
	struct bfs_pread_state *state = tevent_req_data(req,
							struct bfs_pread_state);

	if (tevent_req_is_unix_error(req, &vfs_aio_state->error)) {
		tevent_req_received(req);
		return -1;
	}
	vfs_aio_state->error = 0;
	tevent_req_received(req);
	return (ssize_t)state->got;
}

static off_t bfs_lseek(struct vfs_handle_struct *handle, files_struct *fsp,
		       off_t offset, int whence)
{
	struct bfs_fh *fh = bfs_fh_of(handle, fsp);

	if (fh == NULL) {
		errno = EBADF;
		return -1;
	}
	switch (whence) {
	case SEEK_SET:
		return offset;
	case SEEK_END:
		return (off_t)fh->size + offset;
	default:
		errno = EINVAL;
		return -1;
	}
}

/* ---- writes and namespace changes ------------------------------------------------------------- */

static void bfs_hold_file(struct vfs_handle_struct *handle,
			  struct files_struct *fsp, struct bfs_conn *bc);

static ssize_t bfs_pwrite(struct vfs_handle_struct *handle, files_struct *fsp,
			  const void *data, size_t n, off_t offset)
{
	struct bfs_conn *bc;
	size_t done = 0;
	int ret;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn,
				errno = EBADF; return -1);
	/* A stream of parts goes out on smbd's own loop. */
	ret = bfs_fh_write(bc, bfs_fh_of(handle, fsp), data, n, offset,
			   handle->conn->sconn->ev_ctx, &done);
	if (ret != 0) {
		errno = ret;
		return -1;
	}
	bfs_hold_file(handle, fsp, bc);
	return (ssize_t)done;
}

/* An already finished request: err 0 is success. */
struct bfs_done_state {
	ssize_t result;
};

static struct tevent_req *bfs_done_req(TALLOC_CTX *mem_ctx,
				       struct tevent_context *ev, int err)
{
	struct bfs_done_state *state;
	struct tevent_req *req = tevent_req_create(mem_ctx, &state,
						   struct bfs_done_state);

	if (req == NULL) {
		return NULL;
	}
	if (err != 0) {
		tevent_req_error(req, err);
	} else {
		tevent_req_done(req);
	}
	return tevent_req_post(req, ev);
}

static int bfs_done_recv(struct tevent_req *req,
			 struct vfs_aio_state *vfs_aio_state)
{
	int ret = 0;

	vfs_aio_state->error = 0;
	if (tevent_req_is_unix_error(req, &vfs_aio_state->error)) {
		ret = -1;
	}
	tevent_req_received(req);
	return ret;
}

/*
 * Staging files are local: written in one of smbd's worker threads, as
 * vfs_default writes a local file, so this process's loop goes on
 * receiving the client's next writes meanwhile.  A file that streams its
 * parts is written here (they must see the writes in order).
 */
struct bfs_pwrite_state {
	struct vfs_handle_struct *handle;
	struct files_struct *fsp;
	struct tevent_context *ev;
	struct bfs_conn *bc;
	struct bfs_fh *fh;
	const void *data;
	size_t n;
	off_t off;
	int fd;			/* lent by bfs_fh_write_begin, ours to close */
	ssize_t written;
	int err;
};

static void bfs_pwrite_staged(struct tevent_req *subreq);
static void bfs_pwrite_start(struct tevent_req *req);
static void bfs_pwrite_done(struct tevent_req *subreq);

/* Runs in one of smbd's worker threads: no talloc, no smbd state. */
static void bfs_pwrite_do(void *private_data)
{
	struct bfs_pwrite_state *state = private_data;

	state->written = pwrite(state->fd, state->data, state->n, state->off);
	state->err = state->written < 0 ? errno : 0;
}

/* Freed while a worker writes from it would be a use after free. */
static int bfs_pwrite_state_destructor(struct bfs_pwrite_state *state)
{
	return -1;
}

static struct tevent_req *bfs_pwrite_send(struct vfs_handle_struct *handle,
					  TALLOC_CTX *mem_ctx,
					  struct tevent_context *ev,
					  struct files_struct *fsp,
					  const void *data, size_t n,
					  off_t offset)
{
	struct bfs_fh *fh = bfs_fh_of(handle, fsp);
	struct tevent_req *req, *subreq;
	struct bfs_pwrite_state *state;
	struct bfs_conn *bc;

	req = tevent_req_create(mem_ctx, &state, struct bfs_pwrite_state);
	if (req == NULL) {
		return NULL;
	}
	*state = (struct bfs_pwrite_state){
		.handle = handle, .fsp = fsp, .ev = ev,
		.data = data, .n = n, .off = offset, .fd = -1,
	};
	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn,
				tevent_req_error(req, EBADF);
				return tevent_req_post(req, ev));
	state->bc = bc;
	state->fh = fh;
	if (fh != NULL && !fh->is_dir && fh->writable && fh->stage_fd == -1) {
		/* The first write of an existing file fetches its bytes. */
		subreq = bfs_fh_stage_send(state, ev, bc, fh);
		if (tevent_req_nomem(subreq, req)) {
			return tevent_req_post(req, ev);
		}
		tevent_req_set_callback(subreq, bfs_pwrite_staged, req);
		return req;
	}
	bfs_pwrite_start(req);
	if (!tevent_req_is_in_progress(req)) {
		return tevent_req_post(req, ev);
	}
	return req;
}

static void bfs_pwrite_staged(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	int ret = bfs_fh_stage_recv(subreq);

	TALLOC_FREE(subreq);
	if (tevent_req_error(req, ret)) {
		return;
	}
	bfs_pwrite_start(req);
}

/* The write itself, fh staged: in a worker thread, or here. */
static void bfs_pwrite_start(struct tevent_req *req)
{
	struct bfs_pwrite_state *state = tevent_req_data(req,
							 struct bfs_pwrite_state);
	struct tevent_req *subreq;
	int fd = -1, ret;

	ret = bfs_fh_write_begin(state->bc, state->fh, state->n, state->off,
				 &fd);
	if (ret == EAGAIN) {
		state->written = bfs_pwrite(state->handle, state->fsp,
					    state->data, state->n, state->off);
		if (state->written < 0) {
			tevent_req_error(req, errno);
		} else {
			tevent_req_done(req);
		}
		return;
	}
	if (tevent_req_error(req, ret)) {
		return;
	}
	state->fd = fd;
	bfs_hold_file(state->handle, state->fsp, state->bc);
	subreq = pthreadpool_tevent_job_send(state, state->ev,
					     state->handle->conn->sconn->pool,
					     bfs_pwrite_do, state);
	if (subreq == NULL) {
		close(fd);
		state->fd = -1;
		tevent_req_oom(req);
		return;
	}
	talloc_set_destructor(state, bfs_pwrite_state_destructor);
	tevent_req_set_callback(subreq, bfs_pwrite_done, req);
}

static void bfs_pwrite_done(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_pwrite_state *state = tevent_req_data(req,
							 struct bfs_pwrite_state);
	int ret = pthreadpool_tevent_job_recv(subreq);

	TALLOC_FREE(subreq);
	talloc_set_destructor(state, NULL);
	if (ret == EAGAIN) {
		/* No thread could be started: write here. */
		bfs_pwrite_do(state);
	} else if (ret != 0) {
		state->written = -1;
		state->err = ret;
	}
	close(state->fd);
	state->fd = -1;
	/* smbd closes no file with a write in flight: fh is still open. */
	ret = bfs_fh_write_end(state->bc, state->fh, state->off,
			       state->written, state->err);
	if (ret != 0) {
		tevent_req_error(req, ret);
		return;
	}
	tevent_req_done(req);
}

static ssize_t bfs_pwrite_recv(struct tevent_req *req,
			       struct vfs_aio_state *vfs_aio_state)
{
	struct bfs_pwrite_state *state = tevent_req_data(req,
						 struct bfs_pwrite_state);
	ssize_t n = state->written;

	vfs_aio_state->error = 0;
	if (tevent_req_is_unix_error(req, &vfs_aio_state->error)) {
		n = -1;
	}
	tevent_req_received(req);
	return n;
}

/*
 * SMB flush: answered once the object is durable in S3.  With an engine,
 * the flush hands it a snapshot of the staging file (the client may go
 * on writing meanwhile) and waits for it through smbd's loop; without
 * one, it uploads such a snapshot itself on smbd's loop (bfs_fh_flush).
 */
struct bfs_fsync_state {
	struct bfs_conn *bc;
	struct bfs_fh *fh;
	uint64_t wgen;		/* bfs_fh_write_gen at the snapshot */
	char *stage_name;	/* what the engine uploads */
};

static void bfs_fsync_done(struct tevent_req *subreq);

static struct tevent_req *bfs_fsync_send(struct vfs_handle_struct *handle,
					 TALLOC_CTX *mem_ctx,
					 struct tevent_context *ev,
					 struct files_struct *fsp)
{
	struct bfs_fh *fh = bfs_fh_of(handle, fsp);
	struct tevent_req *req, *subreq;
	struct bfs_fsync_state *state;
	struct bfs_conn *bc;
	int ret = 0;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn,
				return bfs_done_req(mem_ctx, ev, EBADF));
	if (fh == NULL || !fh->writable) {
		return bfs_done_req(mem_ctx, ev, 0);
	}
	/*
	 * The engine answers on smbd's loop.  An SMB1 flush waits on a loop
	 * of its own (smb_vfs_fsync_sync): it uploads itself, as a flush
	 * without an engine does.
	 */
	if (bc->engine == NULL || ev != bc->engine_ev ||
	    fh->stream != NULL || fh->deleted ||
	    (fh->dirty && fh->stage_fd == -1) ||
	    (!fh->dirty && fh->etag != NULL) || bfs_engine_now(bc) == 0) {
		return bfs_fh_flush_send(mem_ctx, ev, bc, fh);
	}
	req = tevent_req_create(mem_ctx, &state, struct bfs_fsync_state);
	if (req == NULL) {
		return NULL;
	}
	state->bc = bc;
	state->fh = fh;
	state->wgen = bfs_fh_write_gen(bc, fh);
	if (fh->dirty) {
		bool here = false;

		ret = bfs_fh_flush_hand_over(bc, fh, state, &state->stage_name,
					     &here);
		if (here && ret == 0) {
			tevent_req_done(req); /* uploaded here after all */
			return tevent_req_post(req, ev);
		}
		if (ret != 0) {
			tevent_req_error(req, ret);
			return tevent_req_post(req, ev);
		}
	}
	/* Clean but pending: an earlier close's upload, still in the engine. */
	subreq = bfs_engine_wait_send(state, ev, bc->engine, fh->key,
				      state->stage_name ? state->stage_name :
							  "");
	if (tevent_req_nomem(subreq, req)) {
		return tevent_req_post(req, ev);
	}
	tevent_req_set_callback(subreq, bfs_fsync_done, req);
	return req;
}

static void bfs_fsync_done(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_fsync_state *state = tevent_req_data(req,
							struct bfs_fsync_state);
	char *etag = NULL;
	int ret = bfs_engine_wait_recv(subreq, state, &etag);

	TALLOC_FREE(subreq);
	ret = bfs_fh_flushed(state->bc, state->fh, ret, state->wgen,
			     state->stage_name, etag);
	if (ret != 0) {
		tevent_req_error(req, ret);
		return;
	}
	tevent_req_done(req);
}

static int bfs_fsync_recv(struct tevent_req *req,
			  struct vfs_aio_state *vfs_aio_state)
{
	return bfs_done_recv(req, vfs_aio_state);
}

/* ---- close = s3: an SMB2 close that waits for S3 off smbd's loop -------- */

/*
 * SMB_VFS_CLOSE is synchronous: while it uploads, smbd answers nothing
 * else of the connection, not even an ECHO.  The one asynchronous close
 * Samba 4.17 has is for a file with aio requests registered on it
 * (smb2_close.c: it cancels each, then waits until all are freed).  So a
 * file written over SMB2 with `close = s3` carries a hold: a request of
 * ours registered with aio_add_req_to_fsp.  The CLOSE's cancel starts
 * the upload (bfs_fsync_send, as an SMB2 FLUSH would); once S3 has the
 * object the hold is freed, and smbd's close goes on and finds the file
 * clean.
 *
 * A hold must be gone whenever smbd closes the file any other way:
 * close_normal_file() panics on a file with aio requests while its client
 * is still connected.  Those ways are a tree disconnect (TDIS, or a share
 * closed by `smbcontrol smbd close-share`: conn_force_tdis) and a
 * logoff.  Each first marks
 * the tcon or the session as going (its status; a reload also marks the
 * file closing) and closes files no earlier than the next turn of smbd's
 * loop (tevent_queue_wait_send triggers from an immediate event).  After
 * every turn (tevent's AFTER_LOOP_ONCE trace point) we free the holds of
 * such files: they close as without a hold, uploading in SMB_VFS_CLOSE.  A
 * client gone has smbd free the holds itself (assert_no_pending_aio).
 * An SMB1 close waits for aio without cancelling it: no holds on SMB1.
 *
 * Left to Samba: a close-share that comes while a CLOSE waits for its
 * upload waits on the same aio requests; when the hold goes, smbd wakes
 * the close-share first (the newer waiter), which closes the file under
 * the waiting CLOSE.  Samba has that race with any aio request; the hold
 * makes its window as long as the upload.  (DEVELOPERS.md)
 */
struct bfs_hold {
	struct bfs_hold *prev, *next;
	struct tevent_req *req;
	struct vfs_handle_struct *handle;
	struct files_struct *fsp;
	struct tevent_context *ev;
	struct tevent_req *flush;	/* the close's upload, once begun */
};

/* The holds of this process, and the trace callback we chained before. */
static struct bfs_hold *bfs_holds;
static struct {
	struct tevent_context *ev;
	tevent_trace_callback_t next;
	void *next_data;
} bfs_hold_watch_state;

static int bfs_hold_destructor(struct bfs_hold *h)
{
	DLIST_REMOVE(bfs_holds, h);
	return 0;
}

/* Whether smbd may still close h's file only through an SMB2 CLOSE. */
static bool bfs_hold_may_stay(const struct bfs_hold *h)
{
	const struct files_struct *fsp = h->fsp;
	const struct connection_struct *conn = fsp->conn;
	struct smbXsrv_session *session = NULL;
	NTSTATUS status;

	if (fsp->fsp_flags.closing || conn->tcon == NULL ||
	    !NT_STATUS_IS_OK(conn->tcon->status)) {
		return false;
	}
	status = get_valid_smbXsrv_session(conn->sconn->client, fsp->vuid,
					   &session);
	return NT_STATUS_IS_OK(status) && NT_STATUS_IS_OK(session->status);
}

static void bfs_hold_trace(enum tevent_trace_point point, void *private_data)
{
	struct bfs_hold *h, *next;

	/* Before smbd's, which frees the turn's talloc_tos() frame. */
	for (h = bfs_holds;
	     point == TEVENT_TRACE_AFTER_LOOP_ONCE && h != NULL; h = next) {
		next = h->next;
		if (h->flush == NULL && !bfs_hold_may_stay(h)) {
			DBG_INFO("bucketfs: %s: tree or session going: its "
				 "close uploads without a hold\n",
				 fsp_str_dbg(h->fsp));
			talloc_free(h->req);
		}
	}
	if (bfs_hold_watch_state.next != NULL) {
		bfs_hold_watch_state.next(point,
					  bfs_hold_watch_state.next_data);
	}
}

/* Watch ev's turns (chained before whatever smbd traces), or false. */
static bool bfs_hold_watch(struct tevent_context *ev)
{
	tevent_trace_callback_t cb = NULL;
	void *data = NULL;

	if (bfs_hold_watch_state.ev != NULL && bfs_hold_watch_state.ev != ev) {
		return false; /* one loop per smbd process */
	}
	tevent_get_trace_callback(ev, &cb, &data);
	if (cb == bfs_hold_trace) {
		return true;
	}
	/* First, or someone set another callback since: chain it. */
	bfs_hold_watch_state.ev = ev;
	bfs_hold_watch_state.next = cb;
	bfs_hold_watch_state.next_data = data;
	tevent_set_trace_callback(ev, bfs_hold_trace, NULL);
	return true;
}

static void bfs_hold_flushed(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_hold *h = tevent_req_data(req, struct bfs_hold);
	struct vfs_aio_state st = {0};

	if (bfs_fsync_recv(subreq, &st) != 0) {
		/* SMB_VFS_CLOSE tries again, and says what S3 said. */
		DBG_NOTICE("bucketfs: %s: upload at close: %s\n",
			   fsp_str_dbg(h->fsp), strerror(st.error));
	}
	TALLOC_FREE(subreq);
	h->flush = NULL;
	talloc_free(req); /* smbd's close goes on */
}

/* smb2_close: start the upload; the hold goes once it is done. */
static bool bfs_hold_cancel(struct tevent_req *req)
{
	struct bfs_hold *h = tevent_req_data(req, struct bfs_hold);

	if (h->flush != NULL || !h->fsp->fsp_flags.closing) {
		return false;
	}
	/*
	 * Deleted as it closes (a temporary file), nothing goes up; or no
	 * memory for the upload.  Not freed here (smbd's cancel loop walks
	 * the array): the guard frees it after this turn, the file being
	 * closing, and the close goes on as without a hold.
	 */
	if (h->fsp->fsp_flags.delete_on_close ||
	    h->fsp->fsp_flags.initial_delete_on_close) {
		return false;
	}
	h->flush = bfs_fsync_send(h->handle, h, h->ev, h->fsp);
	if (h->flush == NULL) {
		return false;
	}
	tevent_req_set_callback(h->flush, bfs_hold_flushed, req);
	/* Not cancelled: smbd's close waits until we free it. */
	return false;
}

/* A write or truncate of fsp: hold it, for its close to wait off-loop. */
static void bfs_hold_file(struct vfs_handle_struct *handle,
			  struct files_struct *fsp, struct bfs_conn *bc)
{
	struct tevent_context *ev = handle->conn->sconn->ev_ctx;
	struct tevent_req *req;
	struct bfs_hold *h;

	if (bc->close_local || !handle->conn->sconn->using_smb2 ||
	    fsp->base_fsp != NULL || fsp->fsp_flags.closing) {
		return;
	}
	for (h = bfs_holds; h != NULL; h = h->next) {
		if (h->fsp == fsp) {
			return;
		}
	}
	req = tevent_req_create(fsp, &h, struct bfs_hold);
	if (req == NULL) {
		return; /* it closes synchronously */
	}
	*h = (struct bfs_hold){
		.req = req, .handle = handle, .fsp = fsp, .ev = ev,
	};
	if (!bfs_hold_may_stay(h) || !bfs_hold_watch(ev) ||
	    !aio_add_req_to_fsp(fsp, req)) {
		talloc_free(req);
		return;
	}
	DLIST_ADD(bfs_holds, h);
	talloc_set_destructor(h, bfs_hold_destructor);
	tevent_req_set_cancel_fn(req, bfs_hold_cancel);
}

static int bfs_ftruncate(struct vfs_handle_struct *handle, files_struct *fsp,
			 off_t offset)
{
	struct bfs_conn *bc;
	int ret;

	if (offset < 0) {
		errno = EINVAL;
		return -1;
	}
	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn,
				errno = EBADF; return -1);
	ret = bfs_fh_truncate(bc, bfs_fh_of(handle, fsp), (uint64_t)offset);
	if (ret != 0) {
		errno = ret;
		return -1;
	}
	bfs_hold_file(handle, fsp, bc);
	return 0;
}

static int bfs_fallocate(struct vfs_handle_struct *handle, files_struct *fsp,
			 uint32_t mode, off_t offset, off_t len)
{
	struct bfs_conn *bc;
	int ret;

	if (mode & VFS_FALLOCATE_FL_PUNCH_HOLE) {
		errno = ENOTSUP;
		return -1;
	}
	if (mode & VFS_FALLOCATE_FL_KEEP_SIZE) {
		return 0; /* S3 has no preallocation: nothing to reserve */
	}
	if (offset < 0 || len < 0) {
		errno = EINVAL;
		return -1;
	}
	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn,
				errno = EBADF; return -1);
	ret = bfs_fh_allocate(bc, bfs_fh_of(handle, fsp), (uint64_t)offset,
			      (uint64_t)len);
	if (ret != 0) {
		errno = ret;
		return -1;
	}
	return 0;
}

/* The share-relative path of fsp's file: our open's, or by its name. */
static int bfs_fsp_rel(TALLOC_CTX *mem_ctx, struct bfs_conn *bc,
		       const struct bfs_fh *fh, const files_struct *fsp,
		       char **rel)
{
	int ret;

	if (fh != NULL) {
		*rel = talloc_strdup(mem_ctx, fh->rel);
		return *rel != NULL ? 0 : ENOMEM;
	}
	if (fsp->fsp_name->stream_name != NULL) {
		return ENOENT;
	}
	ret = bfs_rel_path(mem_ctx, bc, NULL, fsp->fsp_name->base_name, rel);
	return ret == EINVAL ? ENOENT : ret;
}

/* A time smbd asks to set (not UTIME_OMIT or another special value). */
static bool bfs_time_given(const struct timespec *t)
{
	return !is_omit_timespec(t) && t->tv_nsec >= 0 &&
	       t->tv_nsec < 1000000000L;
}

/*
 * The write and create times a client sets (SETINFO), and the write time
 * smbd sets after writes (at close, or 2 s after the first): kept in the
 * index for every process, and with the next upload in S3
 * (bfs_fileinfo.h).  The change time is the write time, as smbd shows it;
 * access times are not kept.
 */
static int bfs_fntimes(struct vfs_handle_struct *handle, files_struct *fsp,
		       struct smb_file_time *ft)
{
	struct bfs_fh *fh = bfs_fh_of(handle, fsp);
	struct bfs_meta m = {0};
	struct bfs_conn *bc;
	char *rel = NULL;
	int ret;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn, return -1);
	if (bfs_time_given(&ft->mtime)) {
		m.mtime = ft->mtime;
		m.have |= BFS_META_MTIME;
		if (fh != NULL && fh->dirty) {
			fh->mtime = ft->mtime.tv_sec; /* the journal's */
		}
	}
	if (bfs_time_given(&ft->create_time)) {
		m.btime = ft->create_time;
		m.have |= BFS_META_BTIME;
	}
	if (m.have == 0) {
		return 0;
	}
	ret = bfs_fsp_rel(talloc_tos(), bc, fh, fsp, &rel);
	if (ret == 0) {
		ret = bfs_fileinfo_set(bc, rel, &m, m.have);
	}
	TALLOC_FREE(rel);
	/* A name gone while open (deleted, or renamed by another process)
	 * has nothing to keep: as futimens on an unlinked file, not an
	 * error (smbd would fail the close that sets the write time). */
	if (ret != 0 && ret != ENOENT) {
		errno = ret;
		return -1;
	}
	/*
	 * smbd answers queries on this handle from the stat it holds (the
	 * write time from its share mode): the create time must be there,
	 * as vfs_default puts it when it stores one.
	 */
	if (m.have & BFS_META_BTIME) {
		fsp->fsp_name->st.st_ex_btime = m.btime;
		fsp->fsp_name->st.st_ex_iflags &= ~ST_EX_IFLAG_CALCULATED_BTIME;
	}
	return 0;
}

/* Modes and owners come from smb.conf ('bucketfs:file mode'). */
static int bfs_fchmod(struct vfs_handle_struct *handle, files_struct *fsp,
		      mode_t mode)
{
	return 0;
}

static int bfs_fchown(struct vfs_handle_struct *handle, files_struct *fsp,
		      uid_t uid, gid_t gid)
{
	errno = EPERM;
	return -1;
}

static int bfs_lchown(struct vfs_handle_struct *handle,
		      const struct smb_filename *smb_fname, uid_t uid,
		      gid_t gid)
{
	errno = EPERM;
	return -1;
}

/* The share-relative path smb_fname names (a stream: ENOENT). */
static int bfs_resolve(TALLOC_CTX *mem_ctx, struct bfs_conn *bc,
		       const struct files_struct *dirfsp,
		       const struct smb_filename *smb_fname, char **rel)
{
	*rel = NULL;
	if (smb_fname->stream_name != NULL) {
		return ENOENT;
	}
	return bfs_rel_path(mem_ctx, bc, dirfsp, smb_fname->base_name, rel);
}

static int bfs_mkdirat(struct vfs_handle_struct *handle,
		       struct files_struct *dirfsp,
		       const struct smb_filename *smb_fname, mode_t mode)
{
	struct bfs_conn *bc;
	char *rel = NULL;
	int ret;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn, return -1);
	ret = bfs_resolve(talloc_tos(), bc, dirfsp, smb_fname, &rel);
	if (ret == 0) {
		ret = bfs_mkdir(bc, rel);
	}
	TALLOC_FREE(rel);
	if (ret != 0) {
		errno = ret;
		return -1;
	}
	return 0;
}

static int bfs_renameat(struct vfs_handle_struct *handle,
			files_struct *srcfsp,
			const struct smb_filename *smb_fname_src,
			files_struct *dstfsp,
			const struct smb_filename *smb_fname_dst)
{
	TALLOC_CTX *frame = talloc_stackframe();
	struct bfs_fh *src = NULL;
	char *src_rel = NULL, *dst_rel = NULL;
	struct bfs_conn *bc;
	int ret;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn,
				TALLOC_FREE(frame); return -1);
	/* The source is looked up before the destination's name is read. */
	ret = bfs_resolve(frame, bc, srcfsp, smb_fname_src, &src_rel);
	if (ret == 0) {
		ret = bfs_fh_lookup(frame, bc, src_rel, &src);
	}
	if (ret == 0) {
		ret = bfs_resolve(frame, bc, dstfsp, smb_fname_dst, &dst_rel);
	}
	if (ret == 0) {
		ret = bfs_rename(bc, src, dst_rel);
	}
	TALLOC_FREE(frame);
	if (ret != 0) {
		errno = ret;
		return -1;
	}
	return 0;
}

static int bfs_unlinkat(struct vfs_handle_struct *handle,
			struct files_struct *dirfsp,
			const struct smb_filename *smb_fname, int flags)
{
	struct bfs_conn *bc;
	char *rel = NULL;
	int ret;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn, return -1);
	ret = bfs_resolve(talloc_tos(), bc, dirfsp, smb_fname, &rel);
	if (ret == 0) {
		ret = bfs_unlink(bc, rel, (flags & AT_REMOVEDIR) != 0);
	}
	TALLOC_FREE(rel);
	if (ret != 0) {
		errno = ret;
		return -1;
	}
	return 0;
}

/* The kept attributes are SMB's own bits (bfs_meta.h). */
_Static_assert(BFS_ATTR_READONLY == FILE_ATTRIBUTE_READONLY &&
	       BFS_ATTR_HIDDEN == FILE_ATTRIBUTE_HIDDEN &&
	       BFS_ATTR_SYSTEM == FILE_ATTRIBUTE_SYSTEM &&
	       BFS_ATTR_ARCHIVE == FILE_ATTRIBUTE_ARCHIVE,
	       "bfs_meta.h's attribute bits are FILE_ATTRIBUTE_*");

/*
 * DOS attributes: the ones a client set (bfs_fileinfo_attrs), else
 * ARCHIVE for a file, as a file written or copied on Windows or through
 * plain Samba shows (the mode-based fallback, map archive on S_IXUSR,
 * showed NORMAL, 0x80, for every file); READ_ONLY when 'bucketfs:file
 * mode' gives no write bit.  smbd adds DIRECTORY, hidden dot files and
 * the rest (dos_mode_post), and refuses writes and deletes of a READ_ONLY
 * file itself.
 */
static NTSTATUS bfs_fget_dos_attributes(struct vfs_handle_struct *handle,
					struct files_struct *fsp,
					uint32_t *dosmode)
{
	const SMB_STRUCT_STAT *st = &fsp->fsp_name->st;
	struct bfs_fh *fh = bfs_fh_of(handle, fsp);
	struct bfs_meta m = {0};
	struct bfs_conn *bc;
	char *rel = NULL;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn,
				return NT_STATUS_INTERNAL_ERROR);
	if (fh != NULL) {
		m = *bfs_fh_meta(fh);
	} else if (bfs_fsp_rel(talloc_tos(), bc, fh, fsp, &rel) != 0 ||
		   bfs_fileinfo_get(bc, rel, &m) != 0) {
		m.have = 0;
	}
	TALLOC_FREE(rel);
	*dosmode = bfs_fileinfo_attrs(&m, S_ISDIR(st->st_ex_mode),
				      (st->st_ex_mode & S_IWUSR) != 0);
	return NT_STATUS_OK;
}

/*
 * Read-only, hidden, system and archive are kept (bfs_fileinfo.h); the
 * rest (temporary, offline, sparse...) describe what a disk does with the
 * file and mean nothing for an object.
 */
static NTSTATUS bfs_fset_dos_attributes(struct vfs_handle_struct *handle,
					struct files_struct *fsp,
					uint32_t dosmode)
{
	struct bfs_fh *fh = bfs_fh_of(handle, fsp);
	struct bfs_meta m = {.have = BFS_META_ATTRS,
			     .attrs = dosmode & BFS_ATTR_KEPT};
	struct bfs_conn *bc;
	char *rel = NULL;
	int ret;

	SMB_VFS_HANDLE_GET_DATA(handle, bc, struct bfs_conn,
				return NT_STATUS_INTERNAL_ERROR);
	ret = bfs_fsp_rel(talloc_tos(), bc, fh, fsp, &rel);
	if (ret == 0) {
		ret = bfs_fileinfo_set(bc, rel, &m, BFS_META_ATTRS);
	}
	TALLOC_FREE(rel);
	/* As in bfs_fntimes: a name gone meanwhile keeps nothing. */
	return ret == 0 || ret == ENOENT ? NT_STATUS_OK :
					   map_nt_error_from_unix(ret);
}

/*
 * S3 keeps no ACLs, and the volume says so (no FILE_PERSISTENT_ACLS).  A
 * security descriptor a client sets is accepted and not kept, as on a
 * volume without ACLs: Windows sets one in ordinary sequences (a copy, a
 * create with inheritance, smbtorture's delete-on-close tests) and an
 * error there fails the whole operation.  A later query shows what the
 * share's modes give (posix_fget_nt_acl of the synthesised mode); who may
 * do what is still the share's (read only, valid users, modes).
 */
static NTSTATUS bfs_fset_nt_acl(struct vfs_handle_struct *handle,
				files_struct *fsp, uint32_t security_info_sent,
				const struct security_descriptor *psd)
{
	DBG_INFO("bucketfs: %s: a security descriptor was set and is not "
		 "kept: the share's modes decide access\n", fsp_str_dbg(fsp));
	return NT_STATUS_OK;
}

/*
 * No quotas in a bucket: a query answers "none set" (all limits zero,
 * quotas off), which is what smbd tells of a file system without quotas.
 * Setting one stays unsupported.
 */
static int bfs_get_quota(struct vfs_handle_struct *handle,
			 const struct smb_filename *smb_fname,
			 enum SMB_QUOTA_TYPE qtype, unid_t id,
			 SMB_DISK_QUOTA *qt)
{
	ZERO_STRUCTP(qt);
	qt->qtype = qtype;
	qt->bsize = 1024;
	return 0;
}

static int bfs_fsetxattr(struct vfs_handle_struct *handle,
			 struct files_struct *fsp, const char *name,
			 const void *value, size_t size, int flags)
{
	errno = ENOTSUP;
	return -1;
}

static int bfs_fremovexattr(struct vfs_handle_struct *handle,
			    struct files_struct *fsp, const char *name)
{
	errno = ENOTSUP;
	return -1;
}

/* ---- locks, xattrs, ACLs: what smbd needs from a filesystem without them ----------------------- */

static bool bfs_lock(struct vfs_handle_struct *handle, files_struct *fsp,
		     int op, off_t offset, off_t count, int type)
{
	/* No POSIX locks below us: smbd's own lock database is the truth. */
	return true;
}

static bool bfs_getlock(struct vfs_handle_struct *handle, files_struct *fsp,
			off_t *poffset, off_t *pcount, int *ptype, pid_t *ppid)
{
	errno = 0;
	return false;
}

static int bfs_filesystem_sharemode(struct vfs_handle_struct *handle,
				    struct files_struct *fsp,
				    uint32_t share_mode, uint32_t access_mask)
{
	return 0;
}

static int bfs_fcntl(struct vfs_handle_struct *handle,
		     struct files_struct *fsp, int cmd, va_list cmd_arg)
{
	/* Only vfs_set_blocking() calls this, to clear O_NONBLOCK. */
	if (cmd == F_GETFL) {
		return 0;
	}
	if (cmd == F_SETFL) {
		va_list ap;
		int opt;

		va_copy(ap, cmd_arg);
		opt = va_arg(ap, int);
		va_end(ap);
		if (opt == 0) {
			return 0;
		}
	}
	errno = EINVAL;
	return -1;
}

static ssize_t bfs_fgetxattr(struct vfs_handle_struct *handle,
			     struct files_struct *fsp, const char *name,
			     void *value, size_t size)
{
	errno = ENOATTR;
	return -1;
}

static ssize_t bfs_flistxattr(struct vfs_handle_struct *handle,
			      struct files_struct *fsp, char *list,
			      size_t size)
{
	return 0;
}

static NTSTATUS bfs_fget_nt_acl(struct vfs_handle_struct *handle,
				files_struct *fsp, uint32_t security_info,
				TALLOC_CTX *mem_ctx,
				struct security_descriptor **ppdesc)
{
	/* With no POSIX ACLs below, this maps the synthesised mode. */
	return posix_fget_nt_acl(fsp, security_info, mem_ctx, ppdesc);
}

static NTSTATUS bfs_create_file(struct vfs_handle_struct *handle,
				struct smb_request *req,
				struct files_struct *dirfsp,
				struct smb_filename *smb_fname,
				uint32_t access_mask, uint32_t share_access,
				uint32_t create_disposition,
				uint32_t create_options,
				uint32_t file_attributes,
				uint32_t oplock_request,
				const struct smb2_lease *lease,
				uint64_t allocation_size,
				uint32_t private_flags,
				struct security_descriptor *sd,
				struct ea_list *ea_list, files_struct **result,
				int *pinfo,
				const struct smb2_create_blobs *in_context_blobs,
				struct smb2_create_blobs *out_context_blobs)
{
	/* smbd's generic open logic, which calls back into our openat. */
	return create_file_default(handle->conn, req, dirfsp, smb_fname,
				   access_mask, share_access,
				   create_disposition, create_options,
				   file_attributes, oplock_request, lease,
				   allocation_size, private_flags, sd, ea_list,
				   result, pinfo, in_context_blobs,
				   out_context_blobs);
}

static NTSTATUS bfs_brl_lock_windows(struct vfs_handle_struct *handle,
				     struct byte_range_lock *br_lck,
				     struct lock_struct *plock)
{
	return brl_lock_windows_default(br_lck, plock);
}

static bool bfs_brl_unlock_windows(struct vfs_handle_struct *handle,
				   struct byte_range_lock *br_lck,
				   const struct lock_struct *plock)
{
	return brl_unlock_windows_default(br_lck, plock);
}

static bool bfs_strict_lock_check(struct vfs_handle_struct *handle,
				  struct files_struct *fsp,
				  struct lock_struct *plock)
{
	return strict_lock_check_default(fsp, plock);
}

/* Names are stored as they are: "none mapped" means keep the name. */
static NTSTATUS bfs_translate_name(struct vfs_handle_struct *handle,
				   const char *mapped_name,
				   enum vfs_translate_direction direction,
				   TALLOC_CTX *mem_ctx, char **pmapped_name)
{
	return NT_STATUS_NONE_MAPPED;
}

/* smbd treats NOT_SUPPORTED (not NOT_IMPLEMENTED) as "no extra data". */
static NTSTATUS bfs_freaddir_attr(struct vfs_handle_struct *handle,
				  struct files_struct *fsp,
				  TALLOC_CTX *mem_ctx,
				  struct readdir_attr_data **pattr_data)
{
	return NT_STATUS_NOT_SUPPORTED;
}

static NTSTATUS bfs_fsctl(struct vfs_handle_struct *handle,
			  struct files_struct *fsp, TALLOC_CTX *ctx,
			  uint32_t function, uint16_t req_flags,
			  const uint8_t *in_data, uint32_t in_len,
			  uint8_t **out_data, uint32_t max_out_len,
			  uint32_t *out_len)
{
	return NT_STATUS_NOT_SUPPORTED;
}

/* No SACL auditing below us: access is decided by smbd alone. */
static NTSTATUS bfs_audit_file(struct vfs_handle_struct *handle,
			       struct smb_filename *file,
			       struct security_acl *sacl,
			       uint32_t access_requested,
			       uint32_t access_denied)
{
	return NT_STATUS_OK;
}

static bool bfs_aio_force(struct vfs_handle_struct *handle,
			  struct files_struct *fsp)
{
	return false;
}

/* ---- the table: every slot set, nothing falls through to vfs_default ------------------------- */

static struct vfs_fn_pointers bucketfs_fns = {
	/* Disk operations */
	.connect_fn = bfs_connect,
	.disconnect_fn = bfs_disconnect,
	.disk_free_fn = bfs_disk_free,
	.get_quota_fn = bfs_get_quota,
	.set_quota_fn = vfs_not_implemented_set_quota,
	.get_shadow_copy_data_fn = vfs_not_implemented_get_shadow_copy_data,
	.statvfs_fn = bfs_statvfs,
	.fs_capabilities_fn = bfs_fs_capabilities,
	.get_dfs_referrals_fn = vfs_not_implemented_get_dfs_referrals,
	.create_dfs_pathat_fn = vfs_not_implemented_create_dfs_pathat,
	.read_dfs_pathat_fn = vfs_not_implemented_read_dfs_pathat,
	.snap_check_path_fn = vfs_not_implemented_snap_check_path,
	.snap_create_fn = vfs_not_implemented_snap_create,
	.snap_delete_fn = vfs_not_implemented_snap_delete,

	/* Directory operations */
	.fdopendir_fn = bfs_fdopendir,
	.readdir_fn = bfs_readdir,
	.seekdir_fn = bfs_seekdir,
	.telldir_fn = bfs_telldir,
	.rewind_dir_fn = bfs_rewind_dir,
	.mkdirat_fn = bfs_mkdirat,
	.closedir_fn = bfs_closedir,

	/* File operations */
	.openat_fn = bfs_openat,
	.create_file_fn = bfs_create_file,
	.close_fn = bfs_close,
	.pread_fn = bfs_pread,
	.pread_send_fn = bfs_pread_send,
	.pread_recv_fn = bfs_pread_recv,
	.pwrite_fn = bfs_pwrite,
	.pwrite_send_fn = bfs_pwrite_send,
	.pwrite_recv_fn = bfs_pwrite_recv,
	.lseek_fn = bfs_lseek,
	.sendfile_fn = vfs_not_implemented_sendfile,
	.recvfile_fn = vfs_not_implemented_recvfile,
	.renameat_fn = bfs_renameat,
	.fsync_send_fn = bfs_fsync_send,
	.fsync_recv_fn = bfs_fsync_recv,
	.stat_fn = bfs_stat,
	.fstat_fn = bfs_fstat,
	.lstat_fn = bfs_lstat,
	.fstatat_fn = bfs_fstatat,
	.get_alloc_size_fn = bfs_get_alloc_size,
	.unlinkat_fn = bfs_unlinkat,
	.fchmod_fn = bfs_fchmod,
	.fchown_fn = bfs_fchown,
	.lchown_fn = bfs_lchown,
	.chdir_fn = bfs_chdir,
	.getwd_fn = bfs_getwd,
	.fntimes_fn = bfs_fntimes,
	.ftruncate_fn = bfs_ftruncate,
	.fallocate_fn = bfs_fallocate,
	.lock_fn = bfs_lock,
	.filesystem_sharemode_fn = bfs_filesystem_sharemode,
	.fcntl_fn = bfs_fcntl,
	.linux_setlease_fn = vfs_not_implemented_linux_setlease,
	.getlock_fn = bfs_getlock,
	.symlinkat_fn = vfs_not_implemented_symlinkat,
	.readlinkat_fn = vfs_not_implemented_vfs_readlinkat,
	.linkat_fn = vfs_not_implemented_linkat,
	.mknodat_fn = vfs_not_implemented_mknodat,
	.realpath_fn = bfs_realpath,
	.fchflags_fn = vfs_not_implemented_fchflags,
	.file_id_create_fn = bfs_file_id_create,
	.fs_file_id_fn = bfs_fs_file_id,
	.offload_read_send_fn = vfs_not_implemented_offload_read_send,
	.offload_read_recv_fn = vfs_not_implemented_offload_read_recv,
	.offload_write_send_fn = vfs_not_implemented_offload_write_send,
	.offload_write_recv_fn = vfs_not_implemented_offload_write_recv,
	.fget_compression_fn = vfs_not_implemented_fget_compression,
	.set_compression_fn = vfs_not_implemented_set_compression,
	.fstreaminfo_fn = bfs_fstreaminfo,
	.get_real_filename_at_fn = bfs_get_real_filename_at,
	.connectpath_fn = bfs_connectpath,
	.brl_lock_windows_fn = bfs_brl_lock_windows,
	.brl_unlock_windows_fn = bfs_brl_unlock_windows,
	.strict_lock_check_fn = bfs_strict_lock_check,
	.translate_name_fn = bfs_translate_name,
	.parent_pathname_fn = bfs_parent_pathname,
	.fsctl_fn = bfs_fsctl,
	.freaddir_attr_fn = bfs_freaddir_attr,
	.audit_file_fn = bfs_audit_file,

	/* DOS attributes: NOT_IMPLEMENTED makes smbd derive them from mode. */
	.get_dos_attributes_send_fn = vfs_not_implemented_get_dos_attributes_send,
	.get_dos_attributes_recv_fn = vfs_not_implemented_get_dos_attributes_recv,
	.fget_dos_attributes_fn = bfs_fget_dos_attributes,
	.fset_dos_attributes_fn = bfs_fset_dos_attributes,

	/* NT ACL operations */
	.fget_nt_acl_fn = bfs_fget_nt_acl,
	.fset_nt_acl_fn = bfs_fset_nt_acl,

	/* POSIX ACL operations */
	.sys_acl_get_fd_fn = vfs_not_implemented_sys_acl_get_fd,
	.sys_acl_blob_get_fd_fn = vfs_not_implemented_sys_acl_blob_get_fd,
	.sys_acl_set_fd_fn = vfs_not_implemented_sys_acl_set_fd,
	.sys_acl_delete_def_fd_fn = vfs_not_implemented_sys_acl_delete_def_fd,

	/* EA operations */
	.getxattrat_send_fn = vfs_not_implemented_getxattrat_send,
	.getxattrat_recv_fn = vfs_not_implemented_getxattrat_recv,
	.fgetxattr_fn = bfs_fgetxattr,
	.flistxattr_fn = bfs_flistxattr,
	.fremovexattr_fn = bfs_fremovexattr,
	.fsetxattr_fn = bfs_fsetxattr,

	/* aio operations */
	.aio_force_fn = bfs_aio_force,

	/* Durable handles would outlive our per-process state. */
	.durable_cookie_fn = vfs_not_implemented_durable_cookie,
	.durable_disconnect_fn = vfs_not_implemented_durable_disconnect,
	.durable_reconnect_fn = vfs_not_implemented_durable_reconnect,
};

static_decl_vfs;
/*
 * The Samba whose headers we were compiled with.  The package's test builds
 * a module that claims another one (BFS_TEST_BUILT_FOR), as a Samba upgrade
 * without a matching bucketfs would leave it.
 */
#ifdef BFS_TEST_BUILT_FOR
#define BFS_BUILT_FOR BFS_TEST_BUILT_FOR
#else
#define BFS_BUILT_FOR SAMBA_VERSION_STRING
#endif
#ifndef BFS_REBUILD_HINT
#define BFS_REBUILD_HINT "rebuild and reinstall it"
#endif

NTSTATUS vfs_bucketfs_init(TALLOC_CTX *ctx)
{
	const char *running = samba_version_string();
	size_t l = strlen(BFS_BUILT_FOR);

	/*
	 * Built against another Samba's headers, the structures we share
	 * with smbd may differ: refuse to load rather than corrupt memory.
	 * smbd then refuses the tree connect of each share that names us;
	 * its other shares go on.
	 */
	if (strncmp(running, BFS_BUILT_FOR, l) != 0 ||
	    (running[l] != '\0' && running[l] != '-')) {
		DBG_ERR("bucketfs: built for Samba %s, refusing to load into "
			"smbd %s; " BFS_REBUILD_HINT "\n",
			BFS_BUILT_FOR, running);
		return NT_STATUS_REVISION_MISMATCH;
	}
	(void)bucketfs_built_for;
	vfs_bucketfs_debug_level = debug_add_class(BFS_MODULE);
	if (vfs_bucketfs_debug_level == -1) {
		vfs_bucketfs_debug_level = DBGC_VFS;
		DBG_ERR("bucketfs: cannot add the debug class; logging as vfs\n");
	}
	return smb_register_vfs(SMB_VFS_INTERFACE_VERSION, BFS_VFS_NAME,
				&bucketfs_fns);
}

NTSTATUS samba_init_module(TALLOC_CTX *ctx)
{
	return vfs_bucketfs_init(ctx);
}
