/*
 * Streaming S3 XML parsing with libexpat.
 *
 * S3 documents are shallow and regular, so the parser keeps the element
 * path as a small stack of names and collects character data only for the
 * leaves it wants.  Element names are matched without namespace.
 */
#include "s3_xml.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <expat.h>

/* Deeper than any S3 response; deeper input is refused, not parsed. */
#define S3_XML_MAX_DEPTH 8
/* Longest leaf text kept: keys are <= 1024 bytes, tokens similar. */
#define S3_XML_MAX_TEXT 4096

struct s3_xml_parser {
	XML_Parser xp;
	enum s3_xml_kind kind;
	TALLOC_CTX *owner;

	const char *stack[S3_XML_MAX_DEPTH];
	unsigned depth;

	char text[S3_XML_MAX_TEXT + 1];
	size_t text_len;
	bool collecting;

	/* Entry being assembled inside <Contents>. */
	struct s3_object_entry cur;

	struct s3_listing *listing;
	struct s3_error_doc *error;
	struct s3_result_doc *result;

	const char *failure; /* first reason the input was refused */
};

static const char *local_name(const char *name)
{
	const char *c = strrchr(name, ':');

	return c != NULL ? c + 1 : name;
}

static void s3_xml_fail(struct s3_xml_parser *p, const char *why)
{
	if (p->failure == NULL) {
		p->failure = why;
	}
	XML_StopParser(p->xp, XML_FALSE);
}

static bool parent_is(struct s3_xml_parser *p, const char *name)
{
	return p->depth >= 2 && strcmp(p->stack[p->depth - 2], name) == 0;
}

/* Names we keep on the stack must outlive the callback: intern them. */
static const char *intern(const char *n)
{
	static const char *const known[] = {
		"ListBucketResult", "Contents", "CommonPrefixes", "Key",
		"Size", "ETag", "LastModified", "Prefix", "IsTruncated",
		"NextContinuationToken", "Error", "Code", "Message",
		"RequestId", "InitiateMultipartUploadResult", "UploadId",
		"CompleteMultipartUploadResult", "CopyObjectResult",
		"CopyPartResult", "EncodingType", "Region",
	};
	size_t i;

	for (i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		if (strcmp(n, known[i]) == 0) {
			return known[i];
		}
	}
	return "";
}

static bool wants_text(struct s3_xml_parser *p, const char *n)
{
	switch (p->kind) {
	case S3_XML_LISTING:
		if (p->depth == 2) {
			return strcmp(n, "IsTruncated") == 0 ||
			       strcmp(n, "NextContinuationToken") == 0 ||
			       strcmp(n, "EncodingType") == 0;
		}
		if (parent_is(p, "Contents")) {
			return strcmp(n, "Key") == 0 || strcmp(n, "Size") == 0 ||
			       strcmp(n, "ETag") == 0 ||
			       strcmp(n, "LastModified") == 0;
		}
		return parent_is(p, "CommonPrefixes") &&
		       strcmp(n, "Prefix") == 0;
	case S3_XML_ERROR:
	case S3_XML_RESULT:
		return p->depth == 2;
	}
	return false;
}

static void XMLCALL on_start(void *ud, const char *name, const char **attrs)
{
	struct s3_xml_parser *p = ud;
	const char *n = intern(local_name(name));

	(void)attrs;
	if (p->depth >= S3_XML_MAX_DEPTH) {
		s3_xml_fail(p, "XML nested too deeply");
		return;
	}
	p->stack[p->depth++] = n;

	if (p->depth == 1) {
		bool ok = false;
		switch (p->kind) {
		case S3_XML_LISTING:
			ok = strcmp(n, "ListBucketResult") == 0;
			break;
		case S3_XML_ERROR:
			ok = strcmp(n, "Error") == 0;
			break;
		case S3_XML_RESULT:
			ok = *n != '\0';
			p->result->is_error = strcmp(n, "Error") == 0;
			break;
		}
		if (!ok) {
			s3_xml_fail(p, "unexpected XML document element");
		}
		return;
	}
	if (p->kind == S3_XML_LISTING && p->depth == 2 &&
	    strcmp(n, "Contents") == 0) {
		memset(&p->cur, 0, sizeof(p->cur));
		p->cur.mtime = -1;
	}
	p->collecting = wants_text(p, n);
	p->text_len = 0;
}

static void XMLCALL on_text(void *ud, const char *s, int len)
{
	struct s3_xml_parser *p = ud;

	if (!p->collecting) {
		return;
	}
	if (p->text_len + (size_t)len > S3_XML_MAX_TEXT) {
		s3_xml_fail(p, "XML text element too long");
		return;
	}
	memcpy(p->text + p->text_len, s, (size_t)len);
	p->text_len += (size_t)len;
}

static char *strip_quotes(TALLOC_CTX *ctx, const char *s)
{
	size_t l = strlen(s);

	if (l >= 2 && s[0] == '"' && s[l - 1] == '"') {
		return talloc_strndup(ctx, s + 1, l - 2);
	}
	/* Some servers send the entity-decoded quotes as &quot;, handled by
	 * expat; others send none at all. */
	return talloc_strdup(ctx, s);
}

static bool parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (*s < '0' || *s > '9') {
		return false;
	}
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0') {
		return false;
	}
	*out = v;
	return true;
}

#define ARRAY_PUSH(ctx, arr, n, val)                                          \
	do {                                                                  \
		__typeof__(arr) _a = talloc_realloc(ctx, arr, __typeof__(*arr), \
						    (n) + 1);                 \
		if (_a == NULL) {                                             \
			s3_xml_fail(p, "out of memory");                      \
			break;                                                \
		}                                                             \
		(arr) = _a;                                                   \
		(arr)[(n)++] = (val);                                         \
	} while (0)

static void listing_leaf(struct s3_xml_parser *p, const char *n,
			 const char *t)
{
	struct s3_listing *l = p->listing;

	if (p->depth == 2) {
		if (strcmp(n, "IsTruncated") == 0) {
			l->truncated = strcmp(t, "true") == 0;
		} else if (strcmp(n, "NextContinuationToken") == 0) {
			talloc_free(l->next_token);
			l->next_token = talloc_strdup(l, t);
		} else if (strcmp(n, "EncodingType") == 0) {
			l->url_encoded = strcmp(t, "url") == 0;
		}
		return;
	}
	if (parent_is(p, "Contents")) {
		if (strcmp(n, "Key") == 0) {
			talloc_free(p->cur.key);
			p->cur.key = talloc_strdup(l, t);
		} else if (strcmp(n, "Size") == 0) {
			if (!parse_u64(t, &p->cur.size)) {
				s3_xml_fail(p, "bad <Size> in listing");
			}
		} else if (strcmp(n, "ETag") == 0) {
			talloc_free(p->cur.etag);
			p->cur.etag = strip_quotes(l, t);
		} else if (strcmp(n, "LastModified") == 0) {
			p->cur.mtime = s3_parse_iso8601(t);
		}
		return;
	}
	if (parent_is(p, "CommonPrefixes")) {
		char *s = talloc_strdup(l, t);
		ARRAY_PUSH(l, l->prefixes, l->n_prefixes, s);
	}
}

static void error_leaf(struct s3_error_doc *e, TALLOC_CTX *ctx, const char *n,
		       const char *t)
{
	if (strcmp(n, "Code") == 0) {
		e->code = talloc_strdup(ctx, t);
	} else if (strcmp(n, "Message") == 0) {
		e->message = talloc_strdup(ctx, t);
	} else if (strcmp(n, "RequestId") == 0) {
		e->request_id = talloc_strdup(ctx, t);
	} else if (strcmp(n, "Region") == 0) {
		e->region = talloc_strdup(ctx, t);
	}
}

static void XMLCALL on_end(void *ud, const char *name)
{
	struct s3_xml_parser *p = ud;
	const char *n = p->depth > 0 ? p->stack[p->depth - 1] : "";

	(void)name;
	if (p->collecting) {
		p->text[p->text_len] = '\0';
		switch (p->kind) {
		case S3_XML_LISTING:
			listing_leaf(p, n, p->text);
			break;
		case S3_XML_ERROR:
			error_leaf(p->error, p->error, n, p->text);
			break;
		case S3_XML_RESULT:
			if (strcmp(n, "UploadId") == 0) {
				p->result->upload_id =
					talloc_strdup(p->result, p->text);
			} else if (strcmp(n, "ETag") == 0) {
				p->result->etag = strip_quotes(p->result,
							       p->text);
			}
			error_leaf(&p->result->error, p->result, n, p->text);
			break;
		}
		p->collecting = false;
	}

	if (p->kind == S3_XML_LISTING && p->depth == 2 &&
	    strcmp(n, "Contents") == 0) {
		struct s3_listing *l = p->listing;
		if (p->cur.key == NULL) {
			s3_xml_fail(p, "<Contents> without <Key>");
		} else {
			ARRAY_PUSH(l, l->objects, l->n_objects, p->cur);
			memset(&p->cur, 0, sizeof(p->cur));
		}
	}
	if (p->depth > 0) {
		p->depth--;
	}
}

/* Any DOCTYPE could declare entities; S3 never sends one. */
static void XMLCALL on_doctype(void *ud, const char *name, const char *sysid,
			       const char *pubid, int has_internal_subset)
{
	(void)name;
	(void)sysid;
	(void)pubid;
	(void)has_internal_subset;
	s3_xml_fail(ud, "XML with a DOCTYPE refused");
}

static void XMLCALL on_entity_decl(void *ud, const XML_Char *name, int pe,
				   const XML_Char *value, int value_len,
				   const XML_Char *base, const XML_Char *sysid,
				   const XML_Char *pubid,
				   const XML_Char *notation)
{
	(void)name, (void)pe, (void)value, (void)value_len, (void)base;
	(void)sysid, (void)pubid, (void)notation;
	s3_xml_fail(ud, "XML entity declaration refused");
}

static int s3_xml_parser_destructor(struct s3_xml_parser *p)
{
	XML_ParserFree(p->xp);
	return 0;
}

struct s3_xml_parser *s3_xml_parser_new(TALLOC_CTX *mem_ctx,
					enum s3_xml_kind kind)
{
	struct s3_xml_parser *p = talloc_zero(mem_ctx, struct s3_xml_parser);

	if (p == NULL) {
		return NULL;
	}
	p->kind = kind;
	p->owner = mem_ctx;
	switch (kind) {
	case S3_XML_LISTING:
		p->listing = talloc_zero(mem_ctx, struct s3_listing);
		break;
	case S3_XML_ERROR:
		p->error = talloc_zero(mem_ctx, struct s3_error_doc);
		break;
	case S3_XML_RESULT:
		p->result = talloc_zero(mem_ctx, struct s3_result_doc);
		break;
	}
	p->xp = XML_ParserCreate("UTF-8");
	if (p->xp == NULL || (p->listing == NULL && p->error == NULL &&
			      p->result == NULL)) {
		if (p->xp != NULL) {
			XML_ParserFree(p->xp);
		}
		talloc_free(p->listing);
		talloc_free(p->error);
		talloc_free(p->result);
		talloc_free(p);
		return NULL;
	}
	talloc_set_destructor(p, s3_xml_parser_destructor);
	XML_SetUserData(p->xp, p);
	XML_SetElementHandler(p->xp, on_start, on_end);
	XML_SetCharacterDataHandler(p->xp, on_text);
	XML_SetStartDoctypeDeclHandler(p->xp, on_doctype);
	XML_SetEntityDeclHandler(p->xp, on_entity_decl);
	return p;
}

int s3_xml_parser_feed(struct s3_xml_parser *p, const void *data, size_t len,
		       bool final)
{
	enum XML_Status st;

	if (p->failure != NULL) {
		return EBADMSG;
	}
	if (len > INT32_MAX) {
		s3_xml_fail(p, "XML chunk too large");
		return EBADMSG;
	}
	st = XML_Parse(p->xp, data, (int)len, final ? XML_TRUE : XML_FALSE);
	if (p->failure != NULL) {
		return EBADMSG;
	}
	if (st != XML_STATUS_OK) {
		p->failure = XML_ErrorString(XML_GetErrorCode(p->xp));
		return EBADMSG;
	}
	if (final && p->kind == S3_XML_LISTING && p->listing->truncated &&
	    p->listing->next_token == NULL) {
		p->failure = "truncated listing without a continuation token";
		return EBADMSG;
	}
	return 0;
}

const char *s3_xml_parser_error(const struct s3_xml_parser *p)
{
	return p->failure != NULL ? p->failure : "no error";
}

struct s3_listing *s3_xml_listing(struct s3_xml_parser *p)
{
	return p->listing;
}

struct s3_error_doc *s3_xml_error(struct s3_xml_parser *p)
{
	return p->error;
}

struct s3_result_doc *s3_xml_result(struct s3_xml_parser *p)
{
	return p->result;
}

/* Parse a whole buffer; the result is stolen onto mem_ctx. */
static int s3_xml_parse_all(TALLOC_CTX *mem_ctx, enum s3_xml_kind kind,
			    const void *data, size_t len, void **out)
{
	TALLOC_CTX *tmp = talloc_new(mem_ctx);
	struct s3_xml_parser *p = s3_xml_parser_new(tmp, kind);
	int ret;

	if (p == NULL) {
		talloc_free(tmp);
		return ENOMEM;
	}
	ret = s3_xml_parser_feed(p, data, len, true);
	if (ret == 0) {
		*out = talloc_steal(mem_ctx, kind == S3_XML_LISTING ?
						     (void *)p->listing :
						     (void *)p->error);
	}
	talloc_free(tmp);
	return ret;
}

int s3_xml_parse_listing(TALLOC_CTX *mem_ctx, const void *data, size_t len,
			 struct s3_listing **out)
{
	int ret = s3_xml_parse_all(mem_ctx, S3_XML_LISTING, data, len,
				   (void **)out);

	if (ret == 0 && (ret = s3_listing_url_decode(*out)) != 0) {
		TALLOC_FREE(*out);
	}
	return ret;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9') {
		return c - '0';
	}
	c = (char)(c | 0x20);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* In place: it only shrinks.  '+' is a space, as S3 encodes. */
static int url_decode(char *s)
{
	char *o = s;

	for (; *s != '\0'; s++) {
		if (*s == '+') {
			*o++ = ' ';
		} else if (*s == '%') {
			int hi = hexval(s[1]), lo = hi < 0 ? -1 : hexval(s[2]);
			if (lo < 0 || (hi == 0 && lo == 0)) {
				return EBADMSG;
			}
			*o++ = (char)(hi * 16 + lo);
			s += 2;
		} else {
			*o++ = *s;
		}
	}
	*o = '\0';
	return 0;
}

int s3_listing_url_decode(struct s3_listing *l)
{
	size_t i;
	int ret = 0;

	if (!l->url_encoded) {
		return 0;
	}
	for (i = 0; ret == 0 && i < l->n_objects; i++) {
		ret = url_decode(l->objects[i].key);
	}
	for (i = 0; ret == 0 && i < l->n_prefixes; i++) {
		ret = url_decode(l->prefixes[i]);
	}
	l->url_encoded = false;
	return ret;
}

int s3_xml_parse_error(TALLOC_CTX *mem_ctx, const void *data, size_t len,
		       struct s3_error_doc **out)
{
	return s3_xml_parse_all(mem_ctx, S3_XML_ERROR, data, len, (void **)out);
}

time_t s3_parse_iso8601(const char *s)
{
	struct tm tm = {0};
	int n = 0;

	if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon,
		   &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6) {
		return -1;
	}
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	return timegm(&tm);
}
