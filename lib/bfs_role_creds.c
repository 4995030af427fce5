/*
 * The instance role's credentials, handed from bucketfsd to smbd through
 * a file in the cache folder (see bfs_role_creds.h).
 *
 * The text, one value per line, in this order:
 *
 *   bucketfs role credentials 1
 *   endpoint URL
 *   expire SECONDS-SINCE-EPOCH
 *   access_key KEY
 *   secret_key SECRET
 *   session_token TOKEN        (only for temporary credentials)
 *
 * Values are printable ASCII without spaces, as IMDS hands them out.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bfs_role_creds.h"

#define BFS_ROLE_CREDS_MAGIC "bucketfs role credentials 1"
/* Far more than a session token of STS's (about 1 KiB) needs. */
#define BFS_ROLE_CREDS_MAX (16 * 1024)

static bool bfs_rc_value_ok(const char *v)
{
	if (v == NULL || *v == '\0') {
		return false;
	}
	for (; *v != '\0'; v++) {
		if (*v < 0x21 || *v > 0x7e) {
			return false;
		}
	}
	return true;
}

char *bfs_role_creds_format(TALLOC_CTX *mem_ctx, const char *endpoint,
			    const struct s3_credentials *c, time_t expire)
{
	char *text;

	if (!bfs_rc_value_ok(endpoint) || !bfs_rc_value_ok(c->access_key) ||
	    !bfs_rc_value_ok(c->secret_key) ||
	    (c->session_token != NULL && !bfs_rc_value_ok(c->session_token)) ||
	    expire < 0) {
		return NULL;
	}
	text = talloc_asprintf(mem_ctx, BFS_ROLE_CREDS_MAGIC "\nendpoint %s\n"
			       "expire %" PRId64 "\naccess_key %s\n"
			       "secret_key %s\n", endpoint, (int64_t)expire,
			       c->access_key, c->secret_key);
	if (text != NULL && c->session_token != NULL) {
		text = talloc_asprintf_append(text, "session_token %s\n",
					      c->session_token);
	}
	return text;
}

/*
 * The next line of text[*pos..len) if it is "NAME VALUE\n" with a valid
 * value: a copy of the value, and *pos past the line.  NULL otherwise
 * (*pos unchanged).
 */
static char *bfs_rc_line(TALLOC_CTX *mem_ctx, const char *text, size_t len,
			 size_t *pos, const char *name)
{
	size_t n = strlen(name), start = *pos, end;
	char *v;

	if (len - start < n + 1 || memcmp(text + start, name, n) != 0 ||
	    text[start + n] != ' ') {
		return NULL;
	}
	start += n + 1;
	for (end = start; end < len && text[end] != '\n'; end++) {
	}
	if (end == len) {
		return NULL; /* every line ends with a newline */
	}
	v = talloc_strndup(mem_ctx, text + start, end - start);
	if (v == NULL || strlen(v) != end - start || !bfs_rc_value_ok(v)) {
		talloc_free(v);
		return NULL;
	}
	*pos = end + 1;
	return v;
}

int bfs_role_creds_parse(TALLOC_CTX *mem_ctx, const char *text, size_t len,
			 char **endpoint, struct s3_credentials *c,
			 time_t *expire)
{
	TALLOC_CTX *tmp = talloc_new(mem_ctx);
	size_t magic = strlen(BFS_ROLE_CREDS_MAGIC), pos;
	char *ep, *exp, *ak, *sk, *tok = NULL, *end = NULL;
	long long secs;

	if (tmp == NULL) {
		return ENOMEM;
	}
	if (len < magic + 1 || memcmp(text, BFS_ROLE_CREDS_MAGIC, magic) != 0 ||
	    text[magic] != '\n') {
		talloc_free(tmp);
		return EINVAL;
	}
	pos = magic + 1;
	ep = bfs_rc_line(tmp, text, len, &pos, "endpoint");
	exp = ep ? bfs_rc_line(tmp, text, len, &pos, "expire") : NULL;
	ak = exp ? bfs_rc_line(tmp, text, len, &pos, "access_key") : NULL;
	sk = ak ? bfs_rc_line(tmp, text, len, &pos, "secret_key") : NULL;
	if (sk != NULL && pos < len) {
		tok = bfs_rc_line(tmp, text, len, &pos, "session_token");
	}
	if (sk == NULL || pos != len || exp[0] == '-' || exp[0] == '+') {
		talloc_free(tmp);
		return EINVAL;
	}
	errno = 0;
	secs = strtoll(exp, &end, 10);
	if (errno != 0 || end == exp || *end != '\0' ||
	    (exp[0] == '0' && exp[1] != '\0')) {
		talloc_free(tmp);
		return EINVAL;
	}
	*endpoint = talloc_steal(mem_ctx, ep);
	c->access_key = talloc_steal(mem_ctx, ak);
	c->secret_key = talloc_steal(mem_ctx, sk);
	c->session_token = tok != NULL ? talloc_steal(mem_ctx, tok) : NULL;
	*expire = (time_t)secs;
	talloc_free(tmp);
	return 0;
}

int bfs_role_creds_save(const char *dir, const char *endpoint,
			const struct s3_credentials *c, time_t expire)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	char *text = tmp ? bfs_role_creds_format(tmp, endpoint, c, expire) :
			   NULL;
	char *path = tmp ? talloc_asprintf(tmp, "%s/" BFS_ROLE_CREDS_FILE,
					   dir) : NULL;
	char *part = path ? talloc_asprintf(tmp, "%s.%d", path,
					    (int)getpid()) : NULL;
	size_t len, done = 0;
	int fd, ret = 0;

	if (part == NULL || text == NULL) {
		talloc_free(tmp);
		return tmp == NULL || path == NULL || part == NULL ? ENOMEM :
								     EINVAL;
	}
	len = strlen(text);
	(void)unlink(part); /* a dead engine's of the same pid */
	fd = open(part, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		  0600);
	if (fd < 0) {
		ret = errno;
		talloc_free(tmp);
		return ret;
	}
	while (ret == 0 && done < len) {
		ssize_t w = write(fd, text + done, len - done);

		if (w > 0) {
			done += (size_t)w;
		} else if (w < 0 && errno != EINTR) {
			ret = errno;
		} else if (w == 0) {
			ret = EIO;
		}
	}
	if (close(fd) != 0 && ret == 0) {
		ret = errno;
	}
	if (ret == 0 && rename(part, path) != 0) {
		ret = errno;
	}
	if (ret != 0) {
		(void)unlink(part);
	}
	talloc_free(tmp);
	return ret;
}

int bfs_role_creds_load(TALLOC_CTX *mem_ctx, const char *dir,
			const char *endpoint, struct s3_credentials *c,
			time_t *expire)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	char *path = tmp ? talloc_asprintf(tmp, "%s/" BFS_ROLE_CREDS_FILE,
					   dir) : NULL;
	char *buf = tmp ? talloc_size(tmp, BFS_ROLE_CREDS_MAX) : NULL;
	char *from = NULL;
	struct s3_credentials got = {0};
	time_t until = 0;
	struct stat st;
	size_t len = 0;
	int fd, ret = 0;

	if (path == NULL || buf == NULL) {
		talloc_free(tmp);
		return ENOMEM;
	}
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		ret = errno;
		talloc_free(tmp);
		return ret == ELOOP ? EPERM : ret;
	}
	/* Secrets: only from a file nobody but root (or we) could write. */
	if (fstat(fd, &st) != 0) {
		ret = errno;
	} else if (!S_ISREG(st.st_mode) ||
		   (st.st_uid != 0 && st.st_uid != geteuid()) ||
		   (st.st_mode & 077) != 0) {
		ret = EPERM;
	}
	while (ret == 0) {
		ssize_t r = read(fd, buf + len, BFS_ROLE_CREDS_MAX - len);

		if (r > 0) {
			len += (size_t)r;
			if (len == BFS_ROLE_CREDS_MAX) {
				ret = EINVAL; /* larger than any it writes */
			}
		} else if (r == 0) {
			break;
		} else if (errno != EINTR) {
			ret = errno;
		}
	}
	close(fd);
	if (ret == 0) {
		ret = bfs_role_creds_parse(tmp, buf, len, &from, &got, &until);
	}
	if (ret == 0 && strcmp(from, endpoint) != 0) {
		ret = ESRCH;
	}
	if (ret == 0) {
		c->access_key = talloc_steal(mem_ctx, (char *)got.access_key);
		c->secret_key = talloc_steal(mem_ctx, (char *)got.secret_key);
		c->session_token = got.session_token == NULL ? NULL :
			talloc_steal(mem_ctx, (char *)got.session_token);
		*expire = until;
	}
	talloc_free(tmp);
	return ret;
}
