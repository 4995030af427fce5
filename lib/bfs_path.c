/*
 * A share's paths and the S3 keys they name (see bfs_path.h).
 */
#include "bfs_path.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "bfs_log.h"
#include "bfs_name.h"
#include "s3_dirlist.h"

/* Normalise an absolute path: no "", "." or ".." components. */
char *bfs_path_normalise(TALLOC_CTX *mem_ctx, const char *abs)
{
	char *copy = talloc_strdup(mem_ctx, abs);
	char *out = talloc_array(mem_ctx, char, strlen(abs) + 2);
	char *tok, *save = NULL;
	size_t len = 0;

	if (copy == NULL || out == NULL) {
		talloc_free(copy);
		talloc_free(out);
		return NULL;
	}
	out[0] = '\0';
	for (tok = strtok_r(copy, "/", &save); tok != NULL;
	     tok = strtok_r(NULL, "/", &save)) {
		if (strcmp(tok, ".") == 0) {
			continue;
		}
		if (strcmp(tok, "..") == 0) {
			char *slash = strrchr(out, '/');
			len = slash != NULL ? (size_t)(slash - out) : 0;
			out[len] = '\0';
			continue;
		}
		out[len++] = '/';
		memcpy(out + len, tok, strlen(tok) + 1);
		len += strlen(tok);
	}
	if (len == 0) {
		out[0] = '/';
		out[1] = '\0';
	}
	talloc_free(copy);
	return out;
}

/* Share-relative path ("" = root) of an absolute one, or NULL if outside. */
const char *bfs_path_rel_of_abs(const char *connectpath, const char *abs)
{
	size_t l = strlen(connectpath);

	if (strcmp(connectpath, "/") == 0) {
		return abs + 1;
	}
	if (strncmp(abs, connectpath, l) != 0) {
		return NULL;
	}
	if (abs[l] == '\0') {
		return abs + l;
	}
	return abs[l] == '/' ? abs + l + 1 : NULL;
}

char *bfs_path_share_prefix(TALLOC_CTX *mem_ctx, const char *prefix)
{
	bool slash;

	while (prefix[0] == '/') {
		prefix++;
	}
	slash = prefix[0] != '\0' && prefix[strlen(prefix) - 1] != '/';
	return talloc_asprintf(mem_ctx, "%s%s", prefix, slash ? "/" : "");
}

/*
 * The share-relative path of name, relative to dir (or the cwd).  The
 * share root is the top: ".." there stays there, as at a chroot's root.
 * An absolute path outside the share is EACCES.
 */
int bfs_path_resolve(TALLOC_CTX *mem_ctx, const char *service,
		     const char *connectpath, const char *cwd,
		     const char *prefix, const char *dir, const char *name,
		     char **rel)
{
	TALLOC_CTX *frame = talloc_new(mem_ctx);
	const char *abs = NULL, *start, *norm;
	char *joined;
	int ret;

	*rel = NULL;
	if (frame == NULL) {
		return ENOMEM;
	}
	if (name[0] == '/') {
		abs = name;
	} else if (dir != NULL && dir[0] == '/') {
		abs = talloc_asprintf(frame, "%s/%s", dir, name);
		if (abs == NULL) {
			talloc_free(frame);
			return ENOMEM;
		}
	}
	if (abs != NULL) {
		/* Absolute: must lie inside the share as written. */
		norm = bfs_path_normalise(frame, abs);
		if (norm == NULL) {
			talloc_free(frame);
			return ENOMEM;
		}
		start = bfs_path_rel_of_abs(connectpath, norm);
		if (start == NULL) {
			bfs_log(BFS_LOG_NOTICE, "bucketfs: %s is outside share "
				"%s", abs, connectpath);
			talloc_free(frame);
			return EACCES;
		}
		joined = talloc_asprintf(frame, "/%s", start);
	} else {
		const char *cwd_rel = bfs_path_rel_of_abs(connectpath, cwd);

		joined = talloc_asprintf(frame, "/%s/%s/%s",
					 cwd_rel ? cwd_rel : "",
					 dir != NULL ? dir : "", name);
	}
	/* Normalised under a virtual "/": ".." stops at the share root. */
	norm = joined ? bfs_path_normalise(frame, joined) : NULL;
	if (norm == NULL) {
		talloc_free(frame);
		return ENOMEM;
	}
	/*
	 * Names smbd hands us carry SMB's refused characters mapped.  Only
	 * now, after "..", are they decoded: a name that is not what the
	 * mapping makes of a key (one that decodes to ".." or to a name
	 * smbd's veto checks never saw) is refused here.
	 */
	*rel = bfs_path_to_s3(mem_ctx, norm + 1);
	ret = *rel != NULL ? 0 : errno;
	/* "<folder>\0<name>" must fit an index key: else refused up front. */
	if (ret == 0 && strlen(prefix) + strlen(*rel) + 1 > S3_DIR_KEY_MAX) {
		TALLOC_FREE(*rel);
		bfs_log(BFS_LOG_NOTICE, "bucketfs: share %s: refused a path of "
			"%zu bytes: longer than the index holds (%d with the "
			"share's prefix)", service, strlen(norm + 1),
			S3_DIR_KEY_MAX);
		talloc_free(frame);
		return ENAMETOOLONG;
	}
	if (ret != 0 && ret != ENOMEM) {
		char *shown = bfs_name_printable(frame, norm + 1);

		bfs_log(BFS_LOG_NOTICE, "bucketfs: share %s: refused the name "
			"%s: %s", service, shown ? shown : "?",
			ret == ENAMETOOLONG ? "a component is too long" :
			"it is not the SMB form of any S3 key");
	}
	talloc_free(frame);
	return ret;
}

/* The absolute SMB path of share-relative key path rel (for smbd). */
char *bfs_path_abs_of_rel(TALLOC_CTX *mem_ctx, const char *connectpath,
			  const char *rel)
{
	char *smb, *abs;

	if (rel[0] == '\0') {
		abs = talloc_strdup(mem_ctx, connectpath);
		if (abs == NULL) {
			errno = ENOMEM;
		}
		return abs;
	}
	smb = bfs_path_to_smb(mem_ctx, rel);
	if (smb == NULL) {
		return NULL;
	}
	abs = talloc_asprintf(mem_ctx, "%s%s%s", connectpath,
			      strcmp(connectpath, "/") ? "/" : "", smb);
	talloc_free(smb);
	if (abs == NULL) {
		errno = ENOMEM;
	}
	return abs;
}

char *bfs_path_key(TALLOC_CTX *mem_ctx, const char *prefix, const char *rel)
{
	return talloc_asprintf(mem_ctx, "%s%s", prefix, rel);
}

/* Key prefix listing the directory rel. */
char *bfs_path_dir_prefix(TALLOC_CTX *mem_ctx, const char *prefix,
			  const char *rel)
{
	return talloc_asprintf(mem_ctx, "%s%s%s", prefix, rel,
			       rel[0] != '\0' ? "/" : "");
}

void bfs_path_split(TALLOC_CTX *mem_ctx, const char *rel, char **parent,
		    const char **base)
{
	const char *slash = strrchr(rel, '/');

	if (slash == NULL) {
		*parent = talloc_strdup(mem_ctx, "");
		*base = rel;
	} else {
		*parent = talloc_strndup(mem_ctx, rel, (size_t)(slash - rel));
		*base = slash + 1;
	}
}
