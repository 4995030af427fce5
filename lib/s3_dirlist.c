/*
 * Directory listings assembled from ListObjectsV2 pages.
 *
 * S3 keys are not paths: some cannot be shown as a name in a directory.
 * Those are counted in n_hidden and left out: the marker object of the
 * directory itself ("dir/"), and names that are empty (from "a//b"), "." or
 * "..".  When a key "x" and a prefix "x/" both exist, the directory wins:
 * hiding the directory would hide everything under it.
 */
#include "s3_dirlist.h"

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

static bool s3_name_ok(const char *name)
{
	return name[0] != '\0' && strcmp(name, ".") != 0 &&
	       strcmp(name, "..") != 0;
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

		if (strncmp(o->key, d->prefix, plen) != 0 ||
		    !s3_name_ok(o->key + plen) || strchr(o->key + plen, '/')) {
			d->n_hidden++;
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

		if (l <= plen + 1 || strncmp(p, d->prefix, plen) != 0 ||
		    p[l - 1] != '/') {
			d->n_hidden++;
			continue;
		}
		e.name = talloc_strndup(d, p + plen, l - plen - 1);
		if (e.name == NULL) {
			return ENOMEM;
		}
		if (!s3_name_ok(e.name) || strchr(e.name, '/')) {
			talloc_free(e.name);
			d->n_hidden++;
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

	qsort(d->ents, d->n, sizeof(*d->ents), s3_dirent_cmp);
	for (i = 0; i < d->n; i++) {
		if (o > 0 && strcmp(d->ents[o - 1].name, d->ents[i].name) == 0) {
			d->n_hidden++;
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
};

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
	if (page->truncated) {
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
	enum tevent_req_state state;
	uint64_t err = 0;
	int ret = 0;

	if (tevent_req_is_error(req, &state, &err)) {
		ret = err != 0 ? (int)err : ENOMEM;
	}
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
