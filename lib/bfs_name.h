/*
 * S3 key components as SMB names, and back.
 *
 * An S3 key may hold any UTF-8; an SMB name may not hold \ : * ? " < > |,
 * control characters, or end in a dot or a space.  Those characters are
 * carried as the private-use characters of the Services for Macintosh
 * mapping (the one macOS, Samba's vfs_fruit and vfs_catia use), so a
 * Windows client sees a name it can open, and a name it creates comes back
 * as the key it meant:
 *
 *   0x01..0x1f -> U+F001..U+F01F     "  -> U+F020    *  -> U+F021
 *   :  -> U+F022    <  -> U+F023     >  -> U+F024    ?  -> U+F025
 *   \  -> U+F026    |  -> U+F027
 *   a final space -> U+F028          a final dot -> U+F029
 *
 * A component that cannot be carried is hidden (see bfs_name_problem):
 * invalid UTF-8, one that already holds U+F001..U+F029 (it would come back
 * as another key), longer than BFS_NAME_MAX bytes as a name, empty, "."
 * or "..".
 */
#ifndef BFS_NAME_H
#define BFS_NAME_H

#include <stddef.h>
#include <talloc.h>

/* Longest name handed to smbd, in bytes (a dirent's d_name, NAME_MAX). */
#define BFS_NAME_MAX 255

/* Why key component s3 cannot be a name (a short phrase), or NULL. */
const char *bfs_name_problem(const char *s3);

/*
 * Key component s3 as an SMB name in buf (size bytes).  0, or EINVAL
 * (bfs_name_problem says why) or ENAMETOOLONG.
 */
int bfs_name_to_smb_buf(const char *s3, char *buf, size_t size);

/*
 * A "/"-separated relative path, component by component (a single name
 * is a path of one; "" is the root).  NULL with errno set: to SMB,
 * EINVAL or ENAMETOOLONG for a key no name carries; to S3, EINVAL for a
 * name that is not what the mapping makes of any key (empty, "." or ".."
 * once decoded, U+F028/U+F029 other than at its end, bytes that are not
 * UTF-8), ENAMETOOLONG for one over BFS_NAME_MAX bytes, or ENOMEM.
 */
char *bfs_path_to_smb(TALLOC_CTX *mem_ctx, const char *s3_rel);
char *bfs_path_to_s3(TALLOC_CTX *mem_ctx, const char *smb_rel);

/*
 * s for a log line: control bytes, backslashes and bytes that are not
 * UTF-8 as \xNN, cut after 200 bytes of input.
 */
char *bfs_name_printable(TALLOC_CTX *mem_ctx, const char *s);

#endif
