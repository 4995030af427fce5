/*
 * A share's paths and the S3 keys they name.
 *
 * smbd hands the module absolute paths under the share's "path =" (its
 * connect path), paths relative to the connection's working folder, or
 * names relative to an open folder.  Each becomes a share-relative path
 * in S3's spelling ("" is the share root, components joined by '/'), and
 * that path becomes a key under the share's key prefix.  The share root
 * is the top: ".." there stays there, as at a chroot's root; an absolute
 * path outside the share is refused.
 *
 * Names are mapped between SMB and S3 by lib/bfs_name; a name that is
 * not what the mapping makes of a key is refused here, after "..", so no
 * name decodes to a component smbd's checks (veto files among them)
 * never saw.  Those checks stay smbd's.
 *
 * Nothing here touches the host's file system: these are strings.
 */
#ifndef BUCKETFS_BFS_PATH_H
#define BUCKETFS_BFS_PATH_H

#include <talloc.h>

/*
 * Normalise an absolute path: no "", "." or ".." components.  ".." at
 * "/" stays at "/".  NULL if out of memory.
 */
char *bfs_path_normalise(TALLOC_CTX *mem_ctx, const char *abs);

/*
 * Share-relative path ("" = root) of a normalised absolute one, pointing
 * into abs, or NULL if it lies outside connectpath (normalised too).
 */
const char *bfs_path_rel_of_abs(const char *connectpath, const char *abs);

/*
 * The key prefix of a share from its 'bucketfs:prefix': no leading '/',
 * and a trailing '/' unless it is "" (the whole bucket).  NULL if out of
 * memory.
 */
char *bfs_path_share_prefix(TALLOC_CTX *mem_ctx, const char *prefix);

/*
 * The share-relative S3 path (*rel, on mem_ctx) of name as smbd hands it
 * over:
 *
 *   name     absolute, or relative to dir;
 *   dir      the open folder name is relative to (absolute, or relative
 *            to cwd), or NULL for cwd itself;
 *   cwd      the connection's working folder, absolute and normalised;
 *   connectpath, prefix  the share's (see bfs_path_share_prefix);
 *   service  the share's name, for log lines.
 *
 * 0, or EACCES (an absolute path outside the share), EINVAL (a name that
 * is not the SMB form of any key), ENAMETOOLONG (a component too long
 * for a name, or a path the index cannot hold with the prefix), ENOMEM.
 * Refusals other than ENOMEM are logged (bfs_log, notice level).
 */
int bfs_path_resolve(TALLOC_CTX *mem_ctx, const char *service,
		     const char *connectpath, const char *cwd,
		     const char *prefix, const char *dir, const char *name,
		     char **rel);

/*
 * The absolute SMB path of share-relative key path rel (for smbd).  NULL
 * with errno set (EINVAL, ENAMETOOLONG: a key no name carries; ENOMEM).
 */
char *bfs_path_abs_of_rel(TALLOC_CTX *mem_ctx, const char *connectpath,
			  const char *rel);

/* The key of share-relative path rel. */
char *bfs_path_key(TALLOC_CTX *mem_ctx, const char *prefix, const char *rel);

/* Key prefix listing the directory rel ("" lists the share root). */
char *bfs_path_dir_prefix(TALLOC_CTX *mem_ctx, const char *prefix,
			  const char *rel);

/*
 * rel as its parent folder (*parent on mem_ctx, "" for the root; NULL if
 * out of memory) and its last component (*base, pointing into rel).
 */
void bfs_path_split(TALLOC_CTX *mem_ctx, const char *rel, char **parent,
		    const char **base);

#endif
