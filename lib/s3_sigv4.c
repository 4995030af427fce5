/*
 * AWS Signature Version 4, as S3 wants it.
 *
 * The canonical request is built exactly as the S3 documentation describes
 * ("Signature Calculations for the Authorization Header"): S3 does not
 * normalise the path, and encodes each key byte once.
 */
#include "s3_sigv4.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

static bool s3_unreserved(unsigned char c)
{
	return isascii(c) && (isalnum(c) || c == '-' || c == '_' || c == '.' ||
			      c == '~');
}

char *s3_uri_encode(TALLOC_CTX *mem_ctx, const char *s, bool keep_slash)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t len = strlen(s);
	char *out = talloc_array(mem_ctx, char, len * 3 + 1);
	char *p = out;

	if (out == NULL) {
		return NULL;
	}
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;
		if (s3_unreserved(c) || (keep_slash && c == '/')) {
			*p++ = (char)c;
		} else {
			*p++ = '%';
			*p++ = hex[c >> 4];
			*p++ = hex[c & 15];
		}
	}
	*p = '\0';
	return out;
}

static void s3_hex(const unsigned char *in, size_t len, char *out)
{
	static const char hex[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < len; i++) {
		out[2 * i] = hex[in[i] >> 4];
		out[2 * i + 1] = hex[in[i] & 15];
	}
	out[2 * len] = '\0';
}

void s3_sha256_hex(const void *data, size_t len, char out[65])
{
	unsigned char md[SHA256_DIGEST_LENGTH];

	SHA256(data, len, md);
	s3_hex(md, sizeof(md), out);
}

static void s3_hmac(const void *key, size_t key_len, const char *msg,
		    unsigned char out[32])
{
	unsigned int out_len = 32;

	HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)msg,
	     strlen(msg), out, &out_len);
}

void s3_amz_date(time_t t, char out[17])
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

struct s3_enc_kv {
	char *name;
	char *value;
};

static int s3_enc_kv_cmp(const void *a, const void *b)
{
	const struct s3_enc_kv *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	return c != 0 ? c : strcmp(x->value, y->value);
}

/* Lower-case the name; trim the value and squeeze inner runs of blanks. */
static struct s3_enc_kv s3_canonical_header(TALLOC_CTX *mem_ctx,
					    const struct s3_kv *h)
{
	struct s3_enc_kv kv;
	const char *v = h->value;
	char *p;
	size_t i;

	kv.name = talloc_strdup(mem_ctx, h->name);
	for (i = 0; kv.name != NULL && kv.name[i] != '\0'; i++) {
		kv.name[i] = (char)tolower((unsigned char)kv.name[i]);
	}
	kv.value = talloc_array(mem_ctx, char, strlen(v) + 1);
	if (kv.value == NULL) {
		return kv;
	}
	p = kv.value;
	while (*v == ' ' || *v == '\t') {
		v++;
	}
	while (*v != '\0') {
		if (*v == ' ' || *v == '\t') {
			while (*v == ' ' || *v == '\t') {
				v++;
			}
			if (*v != '\0') {
				*p++ = ' ';
			}
			continue;
		}
		*p++ = *v++;
	}
	*p = '\0';
	return kv;
}

char *s3_canonical_query(TALLOC_CTX *mem_ctx, const struct s3_kv *query,
			 size_t n_query)
{
	TALLOC_CTX *tmp = talloc_new(mem_ctx);
	struct s3_enc_kv *q = talloc_array(tmp, struct s3_enc_kv, n_query + 1);
	char *out = talloc_strdup(tmp, "");
	size_t i;

	if (q == NULL || out == NULL) {
		goto fail;
	}
	for (i = 0; i < n_query; i++) {
		q[i].name = s3_uri_encode(tmp, query[i].name, false);
		q[i].value = s3_uri_encode(
			tmp, query[i].value ? query[i].value : "", false);
		if (q[i].name == NULL || q[i].value == NULL) {
			goto fail;
		}
	}
	qsort(q, n_query, sizeof(*q), s3_enc_kv_cmp);
	for (i = 0; i < n_query; i++) {
		out = talloc_asprintf_append_buffer(out, "%s%s=%s",
						    i ? "&" : "", q[i].name,
						    q[i].value);
		if (out == NULL) {
			goto fail;
		}
	}
	out = talloc_steal(mem_ctx, out);
	talloc_free(tmp);
	return out;
fail:
	talloc_free(tmp);
	return NULL;
}

char *s3_sigv4_canonical_request(TALLOC_CTX *mem_ctx,
				 const struct s3_sigv4_input *in,
				 char **signed_headers)
{
	TALLOC_CTX *tmp = talloc_new(mem_ctx);
	struct s3_enc_kv *h;
	char *query;
	char *headers = talloc_strdup(tmp, "");
	char *names = talloc_strdup(tmp, "");
	char *req = NULL;
	size_t i;

	query = s3_canonical_query(tmp, in->query, in->n_query);
	h = talloc_array(tmp, struct s3_enc_kv, in->n_headers + 1);
	if (h == NULL || query == NULL || headers == NULL || names == NULL) {
		goto out;
	}

	for (i = 0; i < in->n_headers; i++) {
		h[i] = s3_canonical_header(tmp, &in->headers[i]);
		if (h[i].name == NULL || h[i].value == NULL) {
			goto out;
		}
	}
	qsort(h, in->n_headers, sizeof(*h), s3_enc_kv_cmp);
	for (i = 0; i < in->n_headers; i++) {
		headers = talloc_asprintf_append_buffer(headers, "%s:%s\n",
							h[i].name, h[i].value);
		names = talloc_asprintf_append_buffer(names, "%s%s",
						      i ? ";" : "", h[i].name);
		if (headers == NULL || names == NULL) {
			goto out;
		}
	}

	req = talloc_asprintf(mem_ctx, "%s\n%s\n%s\n%s\n%s\n%s", in->method,
			      in->canonical_uri, query, headers, names,
			      in->payload_sha256);
	if (req != NULL && signed_headers != NULL) {
		*signed_headers = talloc_steal(mem_ctx, names);
	}
out:
	talloc_free(tmp);
	return req;
}

char *s3_sigv4_authorization(TALLOC_CTX *mem_ctx,
			     const struct s3_sigv4_input *in,
			     const struct s3_credentials *creds)
{
	TALLOC_CTX *tmp = talloc_new(mem_ctx);
	char *names = NULL, *creq, *scope, *sts, *secret = NULL, *auth = NULL;
	char creq_hash[65], sig_hex[65], day[9];
	unsigned char k[32];

	if (tmp == NULL || strlen(in->amz_date) != 16) {
		goto out;
	}
	memcpy(day, in->amz_date, 8);
	day[8] = '\0';

	creq = s3_sigv4_canonical_request(tmp, in, &names);
	if (creq == NULL) {
		goto out;
	}
	s3_sha256_hex(creq, strlen(creq), creq_hash);
	scope = talloc_asprintf(tmp, "%s/%s/s3/aws4_request", day, in->region);
	sts = talloc_asprintf(tmp, "AWS4-HMAC-SHA256\n%s\n%s\n%s",
			      in->amz_date, scope, creq_hash);
	secret = talloc_asprintf(tmp, "AWS4%s", creds->secret_key);
	if (scope == NULL || sts == NULL || secret == NULL) {
		goto out;
	}

	/* Signing key: HMAC chain over date, region, service, terminator. */
	s3_hmac(secret, strlen(secret), day, k);
	s3_hmac(k, 32, in->region, k);
	s3_hmac(k, 32, "s3", k);
	s3_hmac(k, 32, "aws4_request", k);
	s3_hmac(k, 32, sts, k);
	s3_hex(k, 32, sig_hex);

	auth = talloc_asprintf(mem_ctx,
			       "AWS4-HMAC-SHA256 Credential=%s/%s,"
			       "SignedHeaders=%s,Signature=%s",
			       creds->access_key, scope, names, sig_hex);
out:
	/* The derived key is as secret as the secret itself. */
	OPENSSL_cleanse(k, sizeof(k));
	if (secret != NULL) {
		OPENSSL_cleanse(secret, strlen(secret));
	}
	talloc_free(tmp);
	return auth;
}
