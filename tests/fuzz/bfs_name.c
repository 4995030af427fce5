/*
 * Key <-> SMB name mapping (lib/bfs_name): whatever bytes a bucket holds,
 * a name handed to smbd carries none of the characters SMB refuses, no
 * '/', stays within BFS_NAME_MAX, and maps back to exactly the key it came
 * from; a path maps component by component and never gains a dot segment.
 * What a client sends maps to a key only if that key's SMB form is exactly
 * what was sent (so no "..", "." or vetoed name hides in mapped characters).
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <talloc.h>

#include "bfs_name.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	TALLOC_CTX *t = talloc_new(NULL);
	char *key = talloc_strndup(t, (const char *)data, size);
	char buf[BFS_NAME_MAX + 1];
	char *back, *path, *log;
	size_t i;

	FUZZ_CHECK(key != NULL);
	if (bfs_name_problem(key) == NULL && strchr(key, '/') == NULL) {
		FUZZ_CHECK(bfs_name_to_smb_buf(key, buf, sizeof(buf)) == 0);
		FUZZ_CHECK(strlen(buf) <= BFS_NAME_MAX);
		for (i = 0; buf[i] != '\0'; i++) {
			FUZZ_CHECK((unsigned char)buf[i] >= 0x20);
			FUZZ_CHECK(strchr("\\/:*?\"<>|", buf[i]) == NULL);
		}
		FUZZ_CHECK(buf[i - 1] != '.' && buf[i - 1] != ' ');
		back = bfs_path_to_s3(t, buf);
		FUZZ_CHECK(back != NULL && strcmp(back, key) == 0);
	} else if (strchr(key, '/') == NULL) {
		FUZZ_CHECK(bfs_name_to_smb_buf(key, buf, sizeof(buf)) != 0);
	}
	/* As a relative path: each component either maps or the whole fails. */
	path = bfs_path_to_smb(t, key);
	if (path != NULL) {
		FUZZ_CHECK(strcmp(bfs_path_to_s3(t, path), key) == 0);
		FUZZ_CHECK(strcmp(path, "..") != 0 && strncmp(path, "../", 3) != 0);
		FUZZ_CHECK(strstr(path, "/../") == NULL);
	}
	/*
	 * Whatever SMB sends maps to a key whose SMB form is exactly what was
	 * sent, component by component, with no dot segment; or is refused.
	 */
	back = bfs_path_to_s3(t, key);
	if (back != NULL) {
		path = bfs_path_to_smb(t, back);
		FUZZ_CHECK(path != NULL && strcmp(path, key) == 0);
		FUZZ_CHECK(strcmp(back, ".") != 0 && strcmp(back, "..") != 0);
		FUZZ_CHECK(strncmp(back, "../", 3) != 0 &&
			   strncmp(back, "./", 2) != 0);
		FUZZ_CHECK(strstr(back, "/../") == NULL &&
			   strstr(back, "/./") == NULL);
		FUZZ_CHECK(strstr(back, "//") == NULL);
	} else {
		FUZZ_CHECK(errno == EINVAL || errno == ENAMETOOLONG);
	}
	log = bfs_name_printable(t, key);
	for (i = 0; log != NULL && log[i] != '\0'; i++) {
		FUZZ_CHECK((unsigned char)log[i] >= 0x20 && log[i] != 0x7f);
	}
	talloc_free(t);
	return 0;
}
