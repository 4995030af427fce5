/*
 * Directory listings assembled from ListObjectsV2 pages.
 *
 * S3 keys are not paths: some cannot be shown as a name in a directory.
 * Those are counted in n_hidden and left out: the marker object of the
 * directory itself ("dir/"), and names bfs_name_problem() refuses (empty
 * from "a//b", "." or "..", invalid UTF-8, too long as an SMB name...).
 * When a key "x" and a prefix "x/" both exist, the directory wins: hiding
 * the directory would hide everything under it.  All but a data-less
 * marker are kept in the sample, for a log line.
 */
#include "s3_dirlist.h"
#include "bfs_name.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct s3_dir *s3_dir_new(TALLOC_CTX *mem_ctx, const char *prefix)
{
	struct s3_dir *d = talloc_zero(mem_ctx, struct s3_dir);

	if (d == NULL) {
		return NULL;
	}
	d->prefix = talloc_strdup(d, prefix);
	if (d->prefix == NULL) {
		talloc_free(d);
		return NULL;
	}
	return d;
}

static void s3_dir_hide(struct s3_dir *d, const char *key, const char *why)
{
	struct s3_hidden *h;

	d->n_hidden++;
	if (why == NULL ||
	    d->n_hidden_sample == sizeof(d->hidden) / sizeof(d->hidden[0])) {
		return;
	}
	h = &d->hidden[d->n_hidden_sample];
	h->key = bfs_name_printable(d, key);
	h->why = why;
	if (h->key != NULL) {
		d->n_hidden_sample++;
	}
}

static int s3_dir_push(struct s3_dir *d, struct s3_dirent e)
{
	struct s3_dirent *n = talloc_realloc(d, d->ents, struct s3_dirent,
					     d->n + 1);

	if (n == NULL) {
		return ENOMEM;
	}
	d->ents = n;
	d->ents[d->n++] = e;
	return 0;
}

int s3_dir_add_page(struct s3_dir *d, const struct s3_listing *page)
{
	size_t plen = strlen(d->prefix), i;
	int ret;

	for (i = 0; i < page->n_objects; i++) {
		const struct s3_object_entry *o = &page->objects[i];
		struct s3_dirent e = {0};

		const char *why;

		if (strncmp(o->key, d->prefix, plen) != 0) {
			s3_dir_hide(d, o->key, "outside the listed prefix");
			continue;
		}
		if (o->key[plen] == '\0') {
			/* The directory's own marker: only data in it is news. */
			s3_dir_hide(d, o->key, o->size > 0 ?
				    "a key ending in '/' that holds data" : NULL);
			continue;
		}
		if (strchr(o->key + plen, '/') != NULL) {
			/* Only a server ignoring the delimiter sends this. */
			s3_dir_hide(d, o->key, "a '/' inside the name");
			continue;
		}
		if ((why = bfs_name_problem(o->key + plen)) != NULL) {
			s3_dir_hide(d, o->key, why);
			continue;
		}
		if (plen + 1 + strlen(o->key + plen) > S3_DIR_KEY_MAX) {
			s3_dir_hide(d, o->key, "too long with its folder for the "
				    "index (511 bytes)");
			continue;
		}
		e.name = talloc_strdup(d, o->key + plen);
		e.etag = o->etag ? talloc_strdup(d, o->etag) : NULL;
		e.size = o->size;
		e.mtime = o->mtime;
		if (e.name == NULL || (ret = s3_dir_push(d, e)) != 0) {
			return ENOMEM;
		}
	}
	for (i = 0; i < page->n_prefixes; i++) {
		const char *p = page->prefixes[i];
		size_t l = strlen(p);
		struct s3_dirent e = {.is_dir = true, .mtime = -1};

		const char *why;

		if (l <= plen + 1 || strncmp(p, d->prefix, plen) != 0 ||
		    p[l - 1] != '/') {
			s3_dir_hide(d, p, l == plen + 1 ?
				    "an empty path segment ('//')" :
				    "outside the listed prefix");
			continue;
		}
		e.name = talloc_strndup(d, p + plen, l - plen - 1);
		if (e.name == NULL) {
			return ENOMEM;
		}
		why = strchr(e.name, '/') ? "an empty path segment ('//')" :
					     bfs_name_problem(e.name);
		if (why == NULL && plen + 1 + strlen(e.name) > S3_DIR_KEY_MAX) {
			why = "too long with its folder for the index (511 bytes)";
		}
		if (why != NULL) {
			talloc_free(e.name);
			s3_dir_hide(d, p, why);
			continue;
		}
		if ((ret = s3_dir_push(d, e)) != 0) {
			return ret;
		}
	}
	return 0;
}

static int s3_dirent_cmp(const void *a, const void *b)
{
	const struct s3_dirent *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	/* Equal names: the directory sorts first, and wins below. */
	return c != 0 ? c : (int)y->is_dir - (int)x->is_dir;
}

void s3_dir_finish(struct s3_dir *d)
{
	size_t i, o = 0;

	/* An empty listing has ents NULL, which qsort may not get. */
	if (d->n > 1) {
		qsort(d->ents, d->n, sizeof(*d->ents), s3_dirent_cmp);
	}
	for (i = 0; i < d->n; i++) {
		if (o > 0 && strcmp(d->ents[o - 1].name, d->ents[i].name) == 0) {
			char *key = talloc_asprintf(d, "%s%s", d->prefix,
						    d->ents[i].name);
			s3_dir_hide(d, key ? key : d->ents[i].name,
				    "an object with the name of a directory");
			talloc_free(key);
			continue;
		}
		d->ents[o++] = d->ents[i];
	}
	d->n = o;
}

const struct s3_dirent *s3_dir_find(const struct s3_dir *d, const char *name)
{
	size_t lo = 0, hi = d->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, d->ents[mid].name);
		if (c == 0) {
			return &d->ents[mid];
		}
		if (c < 0) {
			hi = mid;
		} else {
			lo = mid + 1;
		}
	}
	return NULL;
}

/* ---- paging through ListObjectsV2 ----------------------------------------- */

struct s3_dirlist_state {
	struct tevent_context *ev;
	struct s3_client *c;
	struct s3_dir *dir;
	struct s3_status st;
	unsigned pages;
	char *token;	/* the last page's continuation token */
};

/*
 * A hostile or broken endpoint could send pages without end (the same
 * continuation token again, or new ones forever) or a folder of any
 * size: 100,000 pages and 10 million entries (S3 sends 1,000 a page) are
 * far past any folder a share serves, and a clear error beats memory and
 * time without bound.
 */
static const struct s3_dirlist_caps s3_dirlist_caps = {
	.max_pages = 100000, .max_entries = 10000000,
};

int s3_dirlist_check_page(const struct s3_listing *page, unsigned pages,
			  size_t entries, const char *last_token,
			  const struct s3_dirlist_caps *caps,
			  struct s3_status *st)
{
	if (!page->truncated) {
		return 0;
	}
	if (page->next_token == NULL || page->next_token[0] == '\0' ||
	    (last_token != NULL && strcmp(last_token, page->next_token) == 0)) {
		s3_status_set(st, "MalformedListing", "a truncated listing "
			      "page without a new continuation token", NULL);
		return EPROTO;
	}
	if (pages >= caps->max_pages || entries >= caps->max_entries) {
		s3_status_set(st, "ListingTooLong", "the folder has more "
			      "than 100,000 pages or 10 million entries", NULL);
		return EFBIG;
	}
	return 0;
}

static void s3_dirlist_page_done(struct tevent_req *subreq);

struct tevent_req *s3_dirlist_send(TALLOC_CTX *mem_ctx,
				   struct tevent_context *ev,
				   struct s3_client *c, const char *prefix)
{
	struct tevent_req *req, *subreq;
	struct s3_dirlist_state *s;

	req = tevent_req_create(mem_ctx, &s, struct s3_dirlist_state);
	if (req == NULL) {
		return NULL;
	}
	s->ev = ev;
	s->c = c;
	s->dir = s3_dir_new(s, prefix);
	if (tevent_req_nomem(s->dir, req)) {
		return tevent_req_post(req, ev);
	}
	subreq = s3_list_send(s, ev, c, prefix, "/", NULL, 0);
	if (tevent_req_nomem(subreq, req)) {
		return tevent_req_post(req, ev);
	}
	tevent_req_set_callback(subreq, s3_dirlist_page_done, req);
	return req;
}

static void s3_dirlist_page_done(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct s3_dirlist_state *s = tevent_req_data(req,
						     struct s3_dirlist_state);
	struct s3_listing *page = NULL;
	int ret;

	ret = s3_list_recv(subreq, s, &page, &s->st);
	TALLOC_FREE(subreq);
	if (tevent_req_error(req, ret)) {
		return;
	}
	s->pages++;
	ret = s3_dir_add_page(s->dir, page);
	if (tevent_req_error(req, ret)) {
		return;
	}
	ret = s3_dirlist_check_page(page, s->pages,
				    s->dir->n + s->dir->n_hidden, s->token,
				    &s3_dirlist_caps, &s->st);
	if (tevent_req_error(req, ret)) {
		return;
	}
	if (page->truncated) {
		talloc_free(s->token);
		s->token = talloc_strdup(s, page->next_token);
		if (tevent_req_nomem(s->token, req)) {
			return;
		}
		subreq = s3_list_send(s, s->ev, s->c, s->dir->prefix, "/",
				      page->next_token, 0);
		talloc_free(page);
		if (tevent_req_nomem(subreq, req)) {
			return;
		}
		tevent_req_set_callback(subreq, s3_dirlist_page_done, req);
		return;
	}
	talloc_free(page);
	s3_dir_finish(s->dir);
	tevent_req_done(req);
}

int s3_dirlist_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		    struct s3_dir **dir, struct s3_status *st)
{
	struct s3_dirlist_state *s = tevent_req_data(req,
						     struct s3_dirlist_state);
	int ret = s3_req_errno(req);

	if (st != NULL) {
		*st = s->st;
		st->err = ret;
	}
	if (ret == 0) {
		*dir = talloc_steal(mem_ctx, s->dir);
	}
	tevent_req_received(req);
	return ret;
}
