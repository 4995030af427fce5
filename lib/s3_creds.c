/*
 * AWS shared credentials file: "[profile]" sections of "key = value" lines,
 * '#' or ';' comments.  Only the keys we use are read.
 */
#include "s3_creds.h"

#include <ctype.h>
#include <errno.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s)) {
		s++;
	}
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1])) {
		*--e = '\0';
	}
	return s;
}

int s3_creds_from_file(TALLOC_CTX *mem_ctx, const char *path,
		       const char *profile, struct s3_credentials *out,
		       const char **why)
{
	FILE *f = fopen(path, "r");
	char line[4096];
	bool in_profile = false, seen_profile = false;
	int ret;

	*out = (struct s3_credentials){0};
	if (f == NULL) {
		ret = errno;
		*why = talloc_asprintf(mem_ctx, "cannot open credentials file %s: %s",
				       path, strerror(ret));
		return ret;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		char *l = trim(line), *eq, *k, *v;

		if (*l == '\0' || *l == '#' || *l == ';') {
			continue;
		}
		if (*l == '[') {
			char *end = strchr(l, ']');
			if (end == NULL) {
				continue;
			}
			*end = '\0';
			l = trim(l + 1);
			/* ~/.aws/config spells it "profile NAME". */
			if (strncmp(l, "profile ", 8) == 0) {
				l = trim(l + 8);
			}
			in_profile = strcmp(l, profile) == 0;
			seen_profile |= in_profile;
			continue;
		}
		if (!in_profile || (eq = strchr(l, '=')) == NULL) {
			continue;
		}
		*eq = '\0';
		k = trim(l);
		v = trim(eq + 1);
		if (strcmp(k, "aws_access_key_id") == 0) {
			out->access_key = talloc_strdup(mem_ctx, v);
		} else if (strcmp(k, "aws_secret_access_key") == 0) {
			out->secret_key = talloc_strdup(mem_ctx, v);
		} else if (strcmp(k, "aws_session_token") == 0) {
			out->session_token = talloc_strdup(mem_ctx, v);
		}
	}
	fclose(f);
	if (!seen_profile) {
		*why = talloc_asprintf(mem_ctx,
				       "profile [%s] not found in credentials file %s",
				       profile, path);
		return ESRCH;
	}
	if (out->access_key == NULL || out->secret_key == NULL) {
		*why = talloc_asprintf(mem_ctx,
				       "profile [%s] in %s lacks aws_access_key_id "
				       "or aws_secret_access_key",
				       profile, path);
		return EINVAL;
	}
	*why = NULL;
	return 0;
}

int s3_creds_from_env(TALLOC_CTX *mem_ctx, struct s3_credentials *out)
{
	const char *a = getenv("AWS_ACCESS_KEY_ID");
	const char *s = getenv("AWS_SECRET_ACCESS_KEY");
	const char *t = getenv("AWS_SESSION_TOKEN");

	*out = (struct s3_credentials){0};
	if (a == NULL || *a == '\0' || s == NULL || *s == '\0') {
		return ENOENT;
	}
	out->access_key = talloc_strdup(mem_ctx, a);
	out->secret_key = talloc_strdup(mem_ctx, s);
	if (t != NULL && *t != '\0') {
		out->session_token = talloc_strdup(mem_ctx, t);
	}
	return out->access_key && out->secret_key ? 0 : ENOMEM;
}

int s3_creds_resolve(TALLOC_CTX *mem_ctx, const char *file,
		     const char *profile, const char *home_dir,
		     struct s3_credentials *out, const char **source,
		     const char **why)
{
	const char *env_file = getenv("AWS_SHARED_CREDENTIALS_FILE");
	char *home_file;
	int ret;

	if (profile == NULL || profile[0] == '\0') {
		profile = getenv("AWS_PROFILE");
	}
	if (profile == NULL || profile[0] == '\0') {
		profile = "default";
	}
	if (file != NULL && file[0] != '\0') {
		*source = file;
		return s3_creds_from_file(mem_ctx, file, profile, out, why);
	}
	if (s3_creds_from_env(mem_ctx, out) == 0) {
		*source = "the environment (AWS_ACCESS_KEY_ID)";
		return 0;
	}
	if (env_file != NULL && env_file[0] != '\0') {
		*source = talloc_strdup(mem_ctx, env_file);
		return s3_creds_from_file(mem_ctx, env_file, profile, out, why);
	}
	if (home_dir != NULL) {
		home_file = talloc_asprintf(mem_ctx, "%s/.aws/credentials",
					    home_dir);
		if (home_file == NULL) {
			return ENOMEM;
		}
		ret = s3_creds_from_file(mem_ctx, home_file, profile, out, why);
		if (ret != ENOENT) {
			*source = home_file;
			return ret;
		}
		talloc_free(home_file);
	}
	*why = "no credentials: none in the share's 'bucketfs:credentials "
	       "file', AWS_ACCESS_KEY_ID, AWS_SHARED_CREDENTIALS_FILE or "
	       "~/.aws/credentials";
	return ENOENT;
}

bool s3_creds_file_is_exposed(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && (st.st_mode & 077) != 0;
}
