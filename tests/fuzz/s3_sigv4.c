/*
 * libFuzzer target: SigV4 canonicalisation (lib/s3_sigv4.c).
 *
 * The input is a request in lines, so seeds stay readable:
 *
 *     METHOD
 *     object key (raw, encoded here as a path)
 *     ?name=value         a query parameter ("?name": no value)
 *     Name: value         a header
 *
 * What S3 recomputes must not depend on anything but the request: the
 * order of parameters and headers is irrelevant, the encoding is
 * reversible and uses only S3's unreserved set, the signed-header list is
 * exactly the lower-cased names in order, and the canonical request has
 * one line per part and per header.
 */
#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <talloc.h>

#include "fuzz.h"
#include "s3_sigv4.h"

#define MAX_PARTS 64

static bool unreserved(unsigned char c)
{
	return isascii(c) && (isalnum(c) || strchr("-_.~", c) != NULL);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9') {
		return c - '0';
	}
	if (c >= 'A' && c <= 'F') {
		return c - 'A' + 10;
	}
	return -1; /* lower case is not S3's encoding */
}

/* s3_uri_encode's output: only the allowed bytes, and it decodes back. */
static void check_encoding(TALLOC_CTX *t, const char *raw, bool keep_slash)
{
	char *enc = s3_uri_encode(t, raw, keep_slash);
	char *dec;
	size_t i, o = 0;

	FUZZ_CHECK(enc != NULL);
	dec = talloc_array(t, char, strlen(enc) + 1);
	FUZZ_CHECK(dec != NULL);
	for (i = 0; enc[i] != '\0'; i++) {
		unsigned char c = (unsigned char)enc[i];
		if (c == '%') {
			int hi = hexval(enc[i + 1]);
			int lo = hi < 0 ? -1 : hexval(enc[i + 2]);
			FUZZ_CHECK(hi >= 0 && lo >= 0);
			c = (unsigned char)(hi << 4 | lo);
			/* Only what must be encoded is. */
			FUZZ_CHECK(!unreserved(c) && !(keep_slash && c == '/'));
			i += 2;
		} else {
			FUZZ_CHECK(unreserved(c) || (keep_slash && c == '/'));
		}
		dec[o++] = (char)c;
	}
	dec[o] = '\0';
	FUZZ_CHECK(strcmp(dec, raw) == 0);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The canonical query: "n=v" pairs joined by '&', sorted by (n, v). */
static void check_query(TALLOC_CTX *t, const char *q, size_t n_query)
{
	char *s = talloc_strdup(t, q), *save = NULL, *pair;
	char *prev_n = NULL, *prev_v = NULL;
	size_t n = 0;

	FUZZ_CHECK(s != NULL);
	for (pair = strtok_r(s, "&", &save); pair != NULL;
	     pair = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(pair, '=');
		FUZZ_CHECK(eq != NULL && strchr(eq + 1, '=') == NULL);
		*eq = '\0';
		if (prev_n != NULL) {
			int c = strcmp(prev_n, pair);
			FUZZ_CHECK(c < 0 || (c == 0 && strcmp(prev_v, eq + 1) <= 0));
		}
		prev_n = pair;
		prev_v = eq + 1;
		n++;
	}
	/* Every parameter is a pair, even with an empty name and value. */
	FUZZ_CHECK(n == n_query);
	if (n_query > 0) {
		size_t amps = 0;
		const char *p;
		for (p = q; *p != '\0'; p++) {
			amps += *p == '&';
		}
		FUZZ_CHECK(amps == n_query - 1);
	} else {
		FUZZ_CHECK(*q == '\0');
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct s3_kv query[MAX_PARTS], headers[MAX_PARTS];
	struct s3_kv rquery[MAX_PARTS], rheaders[MAX_PARTS];
	const struct s3_credentials creds = {"AKIDEXAMPLE", "secret", NULL};
	struct s3_sigv4_input in = {
		.payload_sha256 = S3_EMPTY_SHA256,
		.region = "us-east-1",
		.amz_date = "20130524T000000Z",
	};
	char *lines[2 + 2 * MAX_PARTS], *text, *save = NULL, *l;
	char *uri, *creq, *creq2, *signed_hdrs = NULL, *q, *auth, *names, *want;
	size_t n_lines = 0, nq = 0, nh = 0, i, newlines = 0;

	FUZZ_CHECK(t != NULL);
	/* Lines are C strings: a NUL ends the input, as it would a header. */
	text = talloc_strndup(t, (const char *)data, size);
	FUZZ_CHECK(text != NULL);
	for (l = strtok_r(text, "\n", &save);
	     l != NULL && n_lines < sizeof(lines) / sizeof(lines[0]);
	     l = strtok_r(NULL, "\n", &save)) {
		lines[n_lines++] = l;
	}
	if (n_lines < 2) {
		talloc_free(t);
		return 0;
	}
	in.method = lines[0];
	check_encoding(t, lines[1], true);
	check_encoding(t, lines[1], false);
	uri = talloc_asprintf(t, "/bucket/%s", s3_uri_encode(t, lines[1], true));
	FUZZ_CHECK(uri != NULL);
	in.canonical_uri = uri;

	for (i = 2; i < n_lines; i++) {
		char *sep;
		if (lines[i][0] == '?' && nq < MAX_PARTS) {
			sep = strchr(lines[i] + 1, '=');
			if (sep != NULL) {
				*sep = '\0';
			}
			query[nq].name = lines[i] + 1;
			query[nq].value = sep != NULL ? sep + 1 : NULL;
			nq++;
		} else if ((sep = strchr(lines[i], ':')) != NULL &&
			   sep != lines[i] && nh < MAX_PARTS) {
			*sep = '\0';
			headers[nh].name = lines[i];
			headers[nh].value = sep + 1;
			nh++;
		}
	}
	for (i = 0; i < nq; i++) {
		rquery[i] = query[nq - 1 - i];
	}
	for (i = 0; i < nh; i++) {
		rheaders[i] = headers[nh - 1 - i];
	}

	q = s3_canonical_query(t, query, nq);
	FUZZ_CHECK(q != NULL);
	check_query(t, q, nq);

	in.query = query;
	in.n_query = nq;
	in.headers = headers;
	in.n_headers = nh;
	creq = s3_sigv4_canonical_request(t, &in, &signed_hdrs);
	FUZZ_CHECK(creq != NULL && signed_hdrs != NULL);

	/* Order does not matter. */
	in.query = rquery;
	in.headers = rheaders;
	creq2 = s3_sigv4_canonical_request(t, &in, NULL);
	FUZZ_CHECK(creq2 != NULL && strcmp(creq, creq2) == 0);

	/* The signed headers: lower-cased names, sorted, ';'-joined. */
	{
		char *lc[MAX_PARTS];
		for (i = 0; i < nh; i++) {
			size_t j;
			lc[i] = talloc_strdup(t, headers[i].name);
			FUZZ_CHECK(lc[i] != NULL);
			for (j = 0; lc[i][j] != '\0'; j++) {
				lc[i][j] = (char)tolower((unsigned char)lc[i][j]);
			}
		}
		qsort(lc, nh, sizeof(lc[0]), cmp_str);
		names = talloc_strdup(t, "");
		for (i = 0; i < nh; i++) {
			names = talloc_asprintf_append(names, "%s%s",
						       i ? ";" : "", lc[i]);
			FUZZ_CHECK(names != NULL);
		}
		FUZZ_CHECK(strcmp(names, signed_hdrs) == 0);
	}

	/* Method, URI, query, one line per header, the empty line after
	 * them, signed headers, payload hash. */
	want = talloc_asprintf(t, "%s\n%s\n%s\n", in.method, uri, q);
	FUZZ_CHECK(want != NULL && strncmp(creq, want, strlen(want)) == 0);
	for (l = creq; *l != '\0'; l++) {
		newlines += *l == '\n';
	}
	FUZZ_CHECK(newlines == 5 + nh);
	want = talloc_asprintf(t, "\n%s\n%s", signed_hdrs, S3_EMPTY_SHA256);
	FUZZ_CHECK(want != NULL && strlen(creq) >= strlen(want) &&
		   strcmp(creq + strlen(creq) - strlen(want), want) == 0);
	/* Header values: trimmed, inner blanks squeezed to one space. */
	{
		char *h = creq + strlen(in.method) + strlen(uri) + strlen(q) + 3;
		for (i = 0; i < nh; i++) {
			char *eol = strchr(h, '\n'), *colon = strchr(h, ':');
			FUZZ_CHECK(eol != NULL && colon != NULL && colon < eol);
			FUZZ_CHECK(colon + 1 == eol ||
				   (colon[1] != ' ' && eol[-1] != ' '));
			FUZZ_CHECK(memchr(colon, '\t', (size_t)(eol - colon)) ==
				   NULL);
			FUZZ_CHECK(memmem(colon, (size_t)(eol - colon), "  ",
					  2) == NULL);
			h = eol + 1;
		}
		FUZZ_CHECK(*h == '\n');
	}

	auth = s3_sigv4_authorization(t, &in, &creds);
	FUZZ_CHECK(auth != NULL);
	want = talloc_asprintf(t,
			       "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"
			       "20130524/us-east-1/s3/aws4_request,"
			       "SignedHeaders=%s,Signature=",
			       signed_hdrs);
	FUZZ_CHECK(want != NULL && strncmp(auth, want, strlen(want)) == 0);
	FUZZ_CHECK(strlen(auth) == strlen(want) + 64 &&
		   strspn(auth + strlen(want), "0123456789abcdef") == 64);

	talloc_free(t);
	return 0;
}
