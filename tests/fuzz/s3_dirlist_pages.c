/*
 * libFuzzer target: the page loop of a folder's listing (lib/s3_dirlist.c),
 * on page sequences as a hostile endpoint could send them: the same
 * continuation token again, new ones forever, pages of any size.
 *
 * The input is a run of listing documents separated by "\n--\n", each
 * parsed as S3's body would be and added to the folder as the listing
 * does.  With small caps (4 pages, 64 entries) the loop must stop: never
 * past the caps, never on a truncated page without a new token, and
 * every stop says why.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <talloc.h>

#include "fuzz.h"
#include "s3_dirlist.h"
#include "s3_xml.h"

static const char SEP[] = "\n--\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct s3_dirlist_caps caps = {.max_pages = 4, .max_entries = 64};
	TALLOC_CTX *t = talloc_new(NULL);
	struct s3_dir *dir;
	const uint8_t *p = data, *end = data + size;
	char *token = NULL;
	unsigned pages = 0;

	FUZZ_CHECK(t != NULL);
	dir = s3_dir_new(t, "");
	FUZZ_CHECK(dir != NULL);
	while (p < end) {
		const uint8_t *cut = memmem(p, (size_t)(end - p), SEP,
					    sizeof(SEP) - 1);
		size_t len = cut != NULL ? (size_t)(cut - p) : (size_t)(end - p);
		struct s3_listing *page = NULL;
		struct s3_status st = {0};
		size_t entries;
		int rc;

		if (s3_xml_parse_listing(t, p, len, &page) != 0) {
			break; /* a body the parser refuses ends the listing */
		}
		pages++;
		if (s3_dir_add_page(dir, page) != 0) {
			break;
		}
		entries = dir->n + dir->n_hidden;
		rc = s3_dirlist_check_page(page, pages, entries, token, &caps,
					   &st);
		if (rc == EPROTO) {
			FUZZ_CHECK(page->truncated);
			FUZZ_CHECK(strcmp(st.code, "MalformedListing") == 0);
			FUZZ_CHECK(page->next_token == NULL ||
				   page->next_token[0] == '\0' ||
				   (token != NULL &&
				    strcmp(token, page->next_token) == 0));
			break;
		}
		if (rc == EFBIG) {
			FUZZ_CHECK(page->truncated);
			FUZZ_CHECK(strcmp(st.code, "ListingTooLong") == 0);
			FUZZ_CHECK(pages >= caps.max_pages ||
				   entries >= caps.max_entries);
			break;
		}
		FUZZ_CHECK(rc == 0);
		if (!page->truncated) {
			break; /* whole */
		}
		/* Going on: within the caps, with a token not seen last. */
		FUZZ_CHECK(pages < caps.max_pages);
		FUZZ_CHECK(entries < caps.max_entries);
		FUZZ_CHECK(page->next_token != NULL &&
			   page->next_token[0] != '\0');
		FUZZ_CHECK(token == NULL || strcmp(token, page->next_token) != 0);
		token = talloc_strdup(t, page->next_token);
		FUZZ_CHECK(token != NULL);
		if (cut == NULL) {
			break;
		}
		p = cut + sizeof(SEP) - 1;
	}
	FUZZ_CHECK(pages <= caps.max_pages);
	talloc_free(t);
	return 0;
}
