/*
 * S3 key components as SMB names, and back (the mapping is in the header).
 */
#include "bfs_name.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define SFM_BASE 0xF000u
#define SFM_SPACE 0xF028u	/* a final space */
#define SFM_DOT 0xF029u		/* a final dot */

/* The printable characters SMB refuses, in SFM order from U+F020. */
static const char sfm_specials[] = "\"*:<>?\\|";

/*
 * Decode one UTF-8 character at s: its length, with *cp set, or 0 when
 * the bytes are not UTF-8 (overlong forms and surrogates included).
 */
static size_t utf8_next(const unsigned char *s, uint32_t *cp)
{
	uint32_t c = s[0], min;
	size_t n, i;

	if (c < 0x80) {
		*cp = c;
		return 1;
	} else if ((c & 0xe0) == 0xc0) {
		n = 2, c &= 0x1f, min = 0x80;
	} else if ((c & 0xf0) == 0xe0) {
		n = 3, c &= 0x0f, min = 0x800;
	} else if ((c & 0xf8) == 0xf0) {
		n = 4, c &= 0x07, min = 0x10000;
	} else {
		return 0;
	}
	for (i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80) {
			return 0;
		}
		c = (c << 6) | (s[i] & 0x3f);
	}
	if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) {
		return 0;
	}
	*cp = c;
	return n;
}

static size_t utf8_put(uint32_t cp, char *out)
{
	/* Only U+F0xx is ever written here: three bytes. */
	out[0] = (char)(0xe0 | (cp >> 12));
	out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
	out[2] = (char)(0x80 | (cp & 0x3f));
	return 3;
}

/* The private-use character that carries byte c, or 0 if c is fine. */
static uint32_t sfm_of(unsigned char c, bool last)
{
	const char *p;

	if (c >= 0x01 && c <= 0x1f) {
		return SFM_BASE + c;
	}
	if (c != '\0' && (p = strchr(sfm_specials, c)) != NULL) {
		return 0xF020u + (uint32_t)(p - sfm_specials);
	}
	if (last && c == ' ') {
		return SFM_SPACE;
	}
	if (last && c == '.') {
		return SFM_DOT;
	}
	return 0;
}

const char *bfs_name_problem(const char *s3)
{
	const unsigned char *p = (const unsigned char *)s3;
	size_t out = 0, n;
	uint32_t cp;

	if (s3[0] == '\0') {
		return "empty name";
	}
	if (strcmp(s3, ".") == 0 || strcmp(s3, "..") == 0) {
		return "a '.' or '..' path segment";
	}
	while (*p != '\0') {
		if ((n = utf8_next(p, &cp)) == 0) {
			return "not valid UTF-8";
		}
		if (cp >= SFM_BASE + 1 && cp <= SFM_DOT) {
			return "holds a character of the SMB name mapping";
		}
		out += sfm_of(*p, p[n] == '\0') != 0 ? 3 : n;
		p += n;
	}
	if (out > BFS_NAME_MAX) {
		return "longer than 255 bytes as a name";
	}
	return NULL;
}

int bfs_name_to_smb_buf(const char *s3, char *buf, size_t size)
{
	const unsigned char *p = (const unsigned char *)s3;
	size_t o = 0, n;
	uint32_t cp, m;

	if (bfs_name_problem(s3) != NULL) {
		return EINVAL;
	}
	while (*p != '\0') {
		n = utf8_next(p, &cp);
		m = sfm_of(*p, p[n] == '\0');
		if (o + (m ? 3 : n) + 1 > size) {
			return ENAMETOOLONG;
		}
		if (m != 0) {
			o += utf8_put(m, buf + o);
		} else {
			memcpy(buf + o, p, n);
			o += n;
		}
		p += n;
	}
	buf[o] = '\0';
	return 0;
}

/*
 * Append the key form of SMB name smb[0..len) to out at *o.  The mapping
 * puts U+F028 and U+F029 only at the end of a name (a final space or
 * dot), so only there are they decoded; elsewhere they stay as they are
 * and the round trip in bfs_path_to_s3 refuses the name.
 */
static void name_to_s3(const char *smb, size_t len, char *out, size_t *o)
{
	const unsigned char *p = (const unsigned char *)smb;
	const unsigned char *end = p + len;
	size_t n;
	uint32_t cp;

	while (p < end) {
		n = utf8_next(p, &cp);
		if (n == 0 || p + n > end) {
			/* Not UTF-8: copied, and refused by the round trip. */
			out[(*o)++] = (char)*p++;
			continue;
		}
		if (cp > SFM_BASE && cp < 0xF020u) {
			out[(*o)++] = (char)(cp - SFM_BASE);
		} else if (cp >= 0xF020u && cp < SFM_SPACE) {
			out[(*o)++] = sfm_specials[cp - 0xF020u];
		} else if (cp == SFM_SPACE && p + n == end) {
			out[(*o)++] = ' ';
		} else if (cp == SFM_DOT && p + n == end) {
			out[(*o)++] = '.';
		} else {
			memcpy(out + *o, p, n);
			*o += n;
		}
		p += n;
	}
}

/*
 * Whether key component s3 is the name smb[0..len) stands for: it can be
 * a name (not ".", "..", empty, nor holding U+F001..U+F029), and maps back
 * to exactly those bytes.  Anything else would reach a key the client did
 * not name ("\uF029\uF029" is "..") or slip past smbd's checks on the
 * name it saw ("a\uF029exe" would be "a.exe").
 */
static bool name_round_trips(const char *s3, const char *smb, size_t len)
{
	char back[BFS_NAME_MAX + 1];

	return bfs_name_to_smb_buf(s3, back, sizeof(back)) == 0 &&
	       strlen(back) == len && memcmp(back, smb, len) == 0;
}

char *bfs_path_to_s3(TALLOC_CTX *mem_ctx, const char *smb_rel)
{
	size_t len = strlen(smb_rel), o = 0, start;
	/* Mapped characters shrink from three bytes to one: never longer. */
	char *out = talloc_array(mem_ctx, char, len + 1);
	const char *p = smb_rel, *slash;

	if (out == NULL) {
		errno = ENOMEM;
		return NULL;
	}
	/* Every component, the one after a final '/' too: "" is the root. */
	while (smb_rel[0] != '\0') {
		slash = strchr(p, '/');
		len = slash != NULL ? (size_t)(slash - p) : strlen(p);
		start = o;
		name_to_s3(p, len, out, &o);
		out[o] = '\0';
		if (!name_round_trips(out + start, p, len)) {
			talloc_free(out);
			errno = len > BFS_NAME_MAX ? ENAMETOOLONG : EINVAL;
			return NULL;
		}
		if (slash == NULL) {
			break;
		}
		out[o++] = '/';
		p = slash + 1;
	}
	out[o] = '\0';
	return out;
}

char *bfs_path_to_smb(TALLOC_CTX *mem_ctx, const char *s3_rel)
{
	char *out = talloc_strdup(mem_ctx, ""), *comp;
	const char *p = s3_rel, *slash;
	char buf[BFS_NAME_MAX + 1];
	int ret;

	/* "a/" has an empty last component: no name, like "a//b". */
	if (*p != '\0' && p[strlen(p) - 1] == '/') {
		talloc_free(out);
		errno = EINVAL;
		return NULL;
	}
	while (out != NULL && *p != '\0') {
		slash = strchr(p, '/');
		comp = talloc_strndup(out, p, slash ? (size_t)(slash - p) :
						      strlen(p));
		if (comp == NULL) {
			break;
		}
		ret = bfs_name_to_smb_buf(comp, buf, sizeof(buf));
		talloc_free(comp);
		if (ret != 0) {
			talloc_free(out);
			errno = ret;
			return NULL;
		}
		out = talloc_asprintf_append_buffer(out, "%s%s",
						    out[0] ? "/" : "", buf);
		p = slash ? slash + 1 : p + strlen(p);
	}
	if (out == NULL) {
		errno = ENOMEM;
	}
	return out;
}

char *bfs_name_printable(TALLOC_CTX *mem_ctx, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t len = strnlen(s, 200), i = 0, o = 0, n;
	/* Worst case every byte becomes four, plus "..." and the NUL. */
	char *out = talloc_array(mem_ctx, char, len * 4 + 4);
	uint32_t cp;

	if (out == NULL) {
		return NULL;
	}
	while (i < len) {
		n = utf8_next(p + i, &cp);
		if (n == 0 || i + n > len || cp < 0x20 || cp == 0x7f ||
		    cp == '\\') {
			snprintf(out + o, 5, "\\x%02x", p[i]);
			o += 4;
			i++;
			continue;
		}
		memcpy(out + o, p + i, n);
		o += n;
		i += n;
	}
	if (s[len] != '\0') {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
	return out;
}
