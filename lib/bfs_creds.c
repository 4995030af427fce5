/*
 * A share's credential chain (see bfs_creds.h).
 */
#include "bfs_creds.h"

#include <errno.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>

#include "bfs_log.h"
#include "s3_creds.h"
#include "s3_imds.h"

/*
 * A tree connect waits for the metadata service: a host that is not an
 * EC2 instance must fail fast.
 */
#define BFS_CREDS_IMDS_TIMEOUT_MS 1000

const char *bfs_creds_home(uid_t uid)
{
	const char *home = getenv("HOME");
	struct passwd *pw;

	if (home != NULL) {
		return home;
	}
	pw = getpwuid(uid);
	return pw != NULL ? pw->pw_dir : NULL;
}

/*
 * smb.conf is readable by every local user and copied into bug reports:
 * a secret written there is refused, not used.
 */
static int bfs_creds_refuse_inline_secrets(TALLOC_CTX *mem_ctx,
					   const struct bfs_psrc *conf,
					   const char **why)
{
	static const char *const names[] = {
		"secret access key", "secret key", "secret",
		"aws_secret_access_key", "session token", "aws_session_token",
	};
	size_t i;

	for (i = 0; conf != NULL && i < sizeof(names) / sizeof(names[0]);
	     i++) {
		const char *v = conf->get(conf->priv, names[i]);

		if (v != NULL && v[0] != '\0') {
			*why = talloc_asprintf(
				mem_ctx, "'bucketfs:%s' puts a secret in "
				"smb.conf, which every local user can read: "
				"refused; put the keys in a credentials file "
				"(mode 0600) named by 'bucketfs:credentials "
				"file'", names[i]);
			if (*why == NULL) {
				*why = "a secret in smb.conf: refused";
			}
			return EPERM;
		}
	}
	return 0;
}

int bfs_creds_get(TALLOC_CTX *mem_ctx, const struct bfs_creds_params *p,
		  struct bfs_creds *out, const char **why)
{
	const char *source = NULL;
	int ret;

	*out = (struct bfs_creds){.source = NULL};
	*why = NULL;
	if (p->anonymous) {
		/* A public dataset: unsigned requests, no credentials. */
		return 0;
	}
	ret = bfs_creds_refuse_inline_secrets(mem_ctx, p->conf, why);
	if (ret != 0) {
		return ret;
	}
	ret = s3_creds_resolve(mem_ctx, p->file, p->profile, p->home,
			       &out->keys, &source, why);
	if (ret == ENOENT && (p->file == NULL || p->file[0] == '\0') &&
	    p->imds) {
		/* Last in the chain: an EC2 instance's role. */
		const char *imds_why = NULL;

		ret = s3_imds_fetch(mem_ctx, p->imds_endpoint,
				    BFS_CREDS_IMDS_TIMEOUT_MS, &out->keys,
				    &out->expire, &imds_why);
		if (ret != 0) {
			*why = talloc_asprintf(mem_ctx, "no credentials in the "
					       "share's file, the environment "
					       "or ~/.aws/credentials, and "
					       "none from %s: %s",
					       p->imds_endpoint,
					       imds_why ? imds_why :
							  strerror(ret));
			if (*why == NULL) {
				*why = strerror(ret);
			}
			out->expire = 0;
			return ret;
		}
		out->imds = talloc_strdup(mem_ctx, p->imds_endpoint);
		if (out->imds == NULL) {
			*why = strerror(ENOMEM);
			return ENOMEM;
		}
		source = "the instance metadata service (IMDSv2)";
	}
	if (ret != 0) {
		if (*why == NULL) {
			*why = strerror(ret);
		}
		return ret;
	}
	if (source[0] == '/' && s3_creds_file_is_exposed(source)) {
		bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: credentials file "
			"%s can be read by other users: chmod 600 it",
			p->service, source);
	}
	out->source = source;
	*why = NULL;
	return 0;
}
