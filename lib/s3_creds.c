/*
 * AWS shared credentials file: "[profile]" sections of "key = value" lines,
 * '#' or ';' comments.  Only the keys we use are read.
 */
#include "s3_creds.h"

#include <ctype.h>
#include <errno.h>
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
