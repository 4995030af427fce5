/*
 * IMDSv2 credentials (see s3_imds.h).
 */
#include "s3_imds.h"

#include <curl/curl.h>
#include <errno.h>
#include <string.h>

#include "bfs_log.h"
#include "s3_client.h" /* s3_setopt_errno */
#include "s3_xml.h" /* s3_parse_iso8601 */

/* Role names and credential documents are small. */
#define S3_IMDS_MAX_BODY (64 * 1024)

struct s3_imds_body {
	char *data;
	size_t len;
	bool overflow;
};

static size_t s3_imds_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
	struct s3_imds_body *b = ud;
	size_t n = size * nmemb;

	if (b->len + n > S3_IMDS_MAX_BODY) {
		b->overflow = true;
		return 0;
	}
	memcpy(b->data + b->len, ptr, n);
	b->len += n;
	b->data[b->len] = '\0';
	return n;
}

/*
 * An option libcurl refused (one it lacks, a value it will not take, no
 * memory): the request must not go out set up in part (no timeout, or
 * through a proxy).  Names the option; the errno fails the request.
 */
static int s3_imds_setopt_failed(const char *opt, CURLcode rc)
{
	bfs_log(BFS_LOG_ERR, "bucketfs: libcurl refused %s for the instance "
		"metadata service: %s", opt, curl_easy_strerror(rc));
	return s3_setopt_errno(rc);
}

/* Set option opt of e unless an earlier one failed (*err: its errno). */
#define S3_IMDS_SETOPT(e, err, opt, val)				\
	do {								\
		CURLcode rc_;						\
									\
		if (*(err) != 0) {					\
			break;						\
		}							\
		rc_ = curl_easy_setopt(e, opt, val);			\
		if (rc_ != CURLE_OK) {					\
			*(err) = s3_imds_setopt_failed(#opt, rc_);	\
		}							\
	} while (0)

/* One request; 0 and the body (NUL-terminated) on mem_ctx, or an errno. */
static int s3_imds_request(TALLOC_CTX *mem_ctx, const char *url,
			   const char *method, const char *header,
			   unsigned timeout_ms, char **body, const char **why)
{
	struct s3_imds_body b = {.data = talloc_size(mem_ctx,
						     S3_IMDS_MAX_BODY + 1)};
	struct curl_slist *h = NULL;
	CURL *e = curl_easy_init();
	long status = 0;
	CURLcode rc;
	int err = 0;

	if (e == NULL || b.data == NULL) {
		curl_easy_cleanup(e);
		return ENOMEM;
	}
	b.data[0] = '\0';
	/* Without its header (the token) the request means nothing. */
	h = curl_slist_append(h, header);
	if (h == NULL) {
		curl_easy_cleanup(e);
		return ENOMEM;
	}
	S3_IMDS_SETOPT(e, &err, CURLOPT_URL, url);
	S3_IMDS_SETOPT(e, &err, CURLOPT_CUSTOMREQUEST, method);
	S3_IMDS_SETOPT(e, &err, CURLOPT_HTTPHEADER, h);
	S3_IMDS_SETOPT(e, &err, CURLOPT_WRITEFUNCTION, s3_imds_write);
	S3_IMDS_SETOPT(e, &err, CURLOPT_WRITEDATA, &b);
	S3_IMDS_SETOPT(e, &err, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
	S3_IMDS_SETOPT(e, &err, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
	S3_IMDS_SETOPT(e, &err, CURLOPT_NOSIGNAL, 1L);
	/* Never via a proxy. */
	S3_IMDS_SETOPT(e, &err, CURLOPT_NOPROXY, "*");
	S3_IMDS_SETOPT(e, &err, CURLOPT_PROTOCOLS_STR, "http");
	if (strcmp(method, "PUT") == 0) {
		S3_IMDS_SETOPT(e, &err, CURLOPT_POSTFIELDSIZE, 0L);
		S3_IMDS_SETOPT(e, &err, CURLOPT_POSTFIELDS, "");
	}
	if (err != 0) {
		curl_slist_free_all(h);
		curl_easy_cleanup(e);
		*why = "libcurl could not set up the request to the instance "
		       "metadata service";
		return err;
	}
	rc = curl_easy_perform(e);
	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
	curl_slist_free_all(h);
	curl_easy_cleanup(e);
	if (rc != CURLE_OK) {
		*why = b.overflow ? "the instance metadata service answered "
				    "too much" :
				    "the instance metadata service is "
				    "unreachable (not an EC2 instance?)";
		return b.overflow ? EMSGSIZE : EHOSTUNREACH;
	}
	if (status != 200) {
		*why = status == 401 || status == 403 ?
			"the instance metadata service refused the token" :
		       status == 404 ?
			"the instance has no IAM role" :
			"the instance metadata service answered an error";
		return status == 404 ? ENOENT : EACCES;
	}
	*body = b.data;
	return 0;
}

char *s3_imds_json_string(TALLOC_CTX *mem_ctx, const char *json,
			  const char *key)
{
	size_t kl = strlen(key);
	const char *p = json;
	char *out, *o;

	/* Find "key" followed by ':' (keys of a flat object). */
	while ((p = strchr(p, '"')) != NULL) {
		if (strncmp(p + 1, key, kl) == 0 && p[kl + 1] == '"') {
			p += kl + 2;
			p += strspn(p, " \t\r\n");
			if (*p == ':') {
				break;
			}
			continue;
		}
		p++;
	}
	if (p == NULL) {
		return NULL;
	}
	p++;
	p += strspn(p, " \t\r\n");
	if (*p != '"') {
		return NULL;
	}
	p++;
	out = o = talloc_size(mem_ctx, strlen(p) + 1);
	if (out == NULL) {
		return NULL;
	}
	for (; *p != '"'; p++) {
		if (*p == '\0' || (unsigned char)*p < 0x20) {
			talloc_free(out);
			return NULL;
		}
		if (*p == '\\') {
			p++;
			switch (*p) {
			case '"': case '\\': case '/':
				*o++ = *p;
				continue;
			default:
				/* Keys, secrets and tokens have no other escapes. */
				talloc_free(out);
				return NULL;
			}
		}
		*o++ = *p;
	}
	*o = '\0';
	return out;
}

int s3_imds_fetch(TALLOC_CTX *mem_ctx, const char *endpoint,
		  unsigned timeout_ms, struct s3_credentials *out,
		  time_t *expiration, const char **why)
{
	TALLOC_CTX *tmp = talloc_new(mem_ctx);
	char *token = NULL, *roles = NULL, *doc = NULL, *url, *hdr, *nl;
	char *ak, *sk, *st, *exp;
	int ret;

	if (tmp == NULL) {
		return ENOMEM;
	}
	url = talloc_asprintf(tmp, "%s/latest/api/token", endpoint);
	ret = url ? s3_imds_request(tmp, url, "PUT",
				    "X-aws-ec2-metadata-token-ttl-seconds: "
				    "21600", timeout_ms, &token, why) : ENOMEM;
	if (ret == 0) {
		token[strcspn(token, "\r\n")] = '\0';
		hdr = talloc_asprintf(tmp, "X-aws-ec2-metadata-token: %s",
				      token);
		url = talloc_asprintf(tmp, "%s/latest/meta-data/iam/"
				      "security-credentials/", endpoint);
		ret = hdr && url ? s3_imds_request(tmp, url, "GET", hdr,
						   timeout_ms, &roles, why) :
				   ENOMEM;
	}
	if (ret == 0) {
		/* One role per instance profile: the first line. */
		nl = roles + strcspn(roles, "\r\n");
		*nl = '\0';
		if (roles[0] == '\0' || strchr(roles, '/') != NULL) {
			*why = "the instance metadata service named no usable "
			       "role";
			ret = ENOENT;
		}
	}
	if (ret == 0) {
		url = talloc_asprintf(tmp, "%s/latest/meta-data/iam/"
				      "security-credentials/%s", endpoint, roles);
		ret = url ? s3_imds_request(tmp, url, "GET", hdr, timeout_ms,
					    &doc, why) : ENOMEM;
	}
	if (ret == 0) {
		ak = s3_imds_json_string(mem_ctx, doc, "AccessKeyId");
		sk = s3_imds_json_string(mem_ctx, doc, "SecretAccessKey");
		st = s3_imds_json_string(mem_ctx, doc, "Token");
		exp = s3_imds_json_string(tmp, doc, "Expiration");
		if (ak == NULL || sk == NULL || exp == NULL ||
		    s3_parse_iso8601(exp) == (time_t)-1) {
			*why = "the instance metadata service answered a "
			       "malformed credentials document";
			ret = EBADMSG;
		} else {
			out->access_key = ak;
			out->secret_key = sk;
			out->session_token = st;
			*expiration = s3_parse_iso8601(exp);
		}
	}
	talloc_free(tmp);
	return ret;
}
