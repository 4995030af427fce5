/*
 * Claims, the smbd's side (see bfs_claim.h).
 *
 * Ownership: bc->claim is a child of bc; its poll timer a child of it.  A
 * request's state belongs to the read that asked.
 */
#include "bfs_claim.h"

#include <errno.h>
#include <string.h>

#include "bfs_cache.h"
#include "bfs_engine.h"
#include "bfs_log.h"
#include "bfs_share.h"

/* A claim given back looks this often whether its fetches are cached. */
#define BFS_CLAIM_POLL_US 2000
/*
 * And gives up waiting for them after this long (a GET stuck in S3): the
 * engine, which parks other readers meanwhile, ends the claim itself at
 * 30 s; ours must end first, or we would go on fetching for a claim the
 * engine no longer counts.
 */
#define BFS_CLAIM_LET_GO_S 20

struct bfs_read_claim {
	struct bfs_conn *bc;
	char *key, *etag;
	struct bfs_cache_id id;
	pid_t engine;			/* the engine that granted it */
	const struct bfs_fh *holder;	/* compared only: the asker */
	bool letting_go;
	struct timeval let_go_at;
	struct tevent_timer *poll;
};

/*
 * The claim ends: the connection's reader and fill queue as before.  (Not
 * a destructor: at the connection's end the reader may be freed first.)
 */
static void bfs_claim_drop(struct bfs_conn *bc)
{
	if (bc->claim == NULL) {
		return;
	}
	TALLOC_FREE(bc->claim);
	if (bc->reader_async != NULL) {
		bfs_reader_set_memory(bc->reader_async, bc->fetch_memory);
	}
	if (bc->cache != NULL) {
		bfs_cache_fill_queue_max(bc->cache, 0); /* the default */
	}
}

bool bfs_claim_reads_here(struct bfs_conn *bc, const struct bfs_fh *fh,
			  bool *ahead)
{
	struct bfs_read_claim *cl = bc->claim;

	if (cl == NULL ||
	    memcmp(cl->id.b, fh->obj.id.b, sizeof(cl->id.b)) != 0) {
		return false;
	}
	if (bc->engine == NULL || bfs_engine_pid(bc->engine) != cl->engine) {
		/* Granted by an engine that went: the new one knows nothing
		 * of it, and its own readers would fetch the same blocks. */
		bfs_claim_drop(bc);
		return false;
	}
	/*
	 * Being given back: reads still go to our own fetches (asked of the
	 * engine, the blocks they bring would be fetched twice), but nothing
	 * more is read ahead here.
	 */
	*ahead = !cl->letting_go;
	return true;
}

bool bfs_claim_worth_asking(const struct bfs_conn *bc, const struct bfs_fh *fh)
{
	/*
	 * While one read asks, the next reads of the object ask too (the
	 * client has several in flight): sent to the engine meanwhile, they
	 * would have it fetch what we are about to.
	 */
	bool asking_other = bc->claim_asking > 0 &&
			    memcmp(bc->claim_asking_id.b, fh->obj.id.b,
				   sizeof(fh->obj.id.b)) != 0;

	return bc->engine != NULL && bc->claim == NULL && !asking_other &&
	       !fh->claim_asked && fh->obj.etag != NULL &&
	       fh->obj.size >= BFS_CLAIM_MIN_SIZE &&
	       bfs_engine_claim_bytes(bc->engine) != 0 &&
	       bc->reader_async != NULL && bc->cache != NULL;
}

/* Whether this process's fetches of the claimed object are all cached:
 * then the engine gets it back. */
static void bfs_claim_poll(struct tevent_context *ev, struct tevent_timer *te,
			   struct timeval now, void *private_data)
{
	struct bfs_read_claim *cl = private_data;
	struct bfs_conn *bc = cl->bc;

	(void)te, (void)now;
	cl->poll = NULL;
	if (bc->reader_async != NULL &&
	    bfs_reader_let_go(bc->reader_async, &cl->id) &&
	    tevent_timeval_compare(&now, &cl->let_go_at) <= 0) {
		cl->poll = tevent_add_timer(ev, cl,
					    tevent_timeval_current_ofs(
						    0, BFS_CLAIM_POLL_US),
					    bfs_claim_poll, cl);
		if (cl->poll != NULL) {
			return;
		}
	}
	if (bc->engine != NULL && bfs_engine_pid(bc->engine) == cl->engine) {
		(void)bfs_engine_unclaim(bc->engine, cl->key, cl->etag);
	}
	bfs_claim_drop(bc);
}

/* Fetch no more of it; give it back once our fetches are cached. */
static void bfs_claim_let_go(struct bfs_conn *bc)
{
	struct bfs_read_claim *cl = bc->claim;

	if (cl == NULL || cl->letting_go) {
		return;
	}
	cl->letting_go = true;
	cl->let_go_at = tevent_timeval_current_ofs(BFS_CLAIM_LET_GO_S, 0);
	bfs_claim_poll(bc->engine_ev, NULL, tevent_timeval_current(), cl);
}

void bfs_claim_revoked(void *priv, const char *key, const char *etag)
{
	struct bfs_conn *bc = priv;
	struct bfs_read_claim *cl = bc->claim;

	if (cl != NULL && strcmp(cl->key, key) == 0 &&
	    strcmp(cl->etag, etag) == 0) {
		bfs_log(BFS_LOG_INFO, "bucketfs: share %s: another reader "
			"wants %s: read through the engine from now on",
			bc->service, key);
		bfs_claim_let_go(bc);
		return;
	}
	/* Not ours (a grant whose asker went before the answer). */
	(void)bfs_engine_unclaim(bc->engine, key, etag);
}

void bfs_claim_fh_closed(struct bfs_conn *bc, const struct bfs_fh *fh)
{
	if (bc->claim != NULL && bc->claim->holder == fh) {
		bfs_claim_let_go(bc);
	}
}

struct bfs_claim_state {
	struct bfs_conn *bc;
	struct bfs_fh *fh;
	char *key, *etag;
	struct bfs_cache_id id;
	pid_t engine;
	bool asking;	/* counted in bc->claim_asking */
};

static int bfs_claim_state_destructor(struct bfs_claim_state *s)
{
	if (s->asking) {
		/* Gone before the answer: a grant would be nobody's, held
		 * by the engine for this connection until it closes. */
		s->bc->claim_asking--;
		/* (Not while another read's ask of it is out: its grant,
		 * the same claim, would then be one the engine ended.) */
		if (s->bc->engine != NULL &&
		    bfs_engine_pid(s->bc->engine) == s->engine &&
		    s->bc->claim_asking == 0 &&
		    (s->bc->claim == NULL ||
		     memcmp(s->bc->claim->id.b, s->id.b, sizeof(s->id.b)) != 0)) {
			(void)bfs_engine_unclaim(s->bc->engine, s->key,
						 s->etag);
		}
	}
	return 0;
}

static void bfs_claim_answered(struct tevent_req *subreq);

struct tevent_req *bfs_claim_send(TALLOC_CTX *mem_ctx,
				  struct tevent_context *ev,
				  struct bfs_conn *bc, struct bfs_fh *fh)
{
	struct bfs_claim_state *s;
	struct tevent_req *req = tevent_req_create(mem_ctx, &s,
						   struct bfs_claim_state);
	struct tevent_req *subreq;

	if (req == NULL) {
		return NULL;
	}
	s->bc = bc;
	s->fh = fh;
	s->id = fh->obj.id;
	s->engine = bfs_engine_pid(bc->engine);
	s->key = talloc_strdup(s, fh->obj.key);
	s->etag = talloc_strdup(s, fh->obj.etag);
	if (s->key == NULL || s->etag == NULL) {
		tevent_req_error(req, ENOMEM);
		return tevent_req_post(req, ev);
	}
	subreq = bfs_engine_claim_send(s, ev, bc->engine, s->key, s->etag,
				       fh->obj.size);
	if (tevent_req_nomem(subreq, req)) {
		return tevent_req_post(req, ev);
	}
	bc->claim_asking++;
	bc->claim_asking_id = s->id;
	s->asking = true;
	talloc_set_destructor(s, bfs_claim_state_destructor);
	tevent_req_set_callback(subreq, bfs_claim_answered, req);
	return req;
}

static void bfs_claim_answered(struct tevent_req *subreq)
{
	struct tevent_req *req = tevent_req_callback_data(subreq,
							  struct tevent_req);
	struct bfs_claim_state *s = tevent_req_data(req,
						    struct bfs_claim_state);
	struct bfs_conn *bc = s->bc;
	struct bfs_read_claim *cl;
	int ret = bfs_engine_claim_recv(subreq);

	TALLOC_FREE(subreq);
	bc->claim_asking--;
	s->asking = false;
	s->fh->claim_asked = true;
	if (ret != 0) {
		tevent_req_error(req, ret);
		return;
	}
	if (bc->claim != NULL &&
	    memcmp(bc->claim->id.b, s->id.b, sizeof(s->id.b)) == 0) {
		tevent_req_done(req); /* another read's ask got it */
		return;
	}
	cl = talloc_zero(bc, struct bfs_read_claim);
	if (cl == NULL) {
		(void)bfs_engine_unclaim(bc->engine, s->key, s->etag);
		tevent_req_error(req, ENOMEM);
		return;
	}
	cl->bc = bc;
	cl->key = talloc_steal(cl, s->key);
	cl->etag = talloc_steal(cl, s->etag);
	cl->id = s->id;
	cl->engine = s->engine;
	cl->holder = s->fh;
	bc->claim = cl;
	bfs_log(BFS_LOG_INFO, "bucketfs: share %s: %s is fetched by this "
		"process (claimed from the engine)", bc->service, cl->key);
	/*
	 * The engine took this much from its budget for us.  And what we
	 * fetch must reach the cache, or the engine fetches it again for
	 * the next reader: the fill queue holds all of it (the default drops
	 * fills past 32 MiB when the disk is behind).
	 */
	bfs_reader_set_memory(bc->reader_async,
			      bfs_engine_claim_bytes(bc->engine));
	bfs_cache_fill_queue_max(bc->cache,
				 bfs_engine_claim_bytes(bc->engine));
	tevent_req_done(req);
}

int bfs_claim_recv(struct tevent_req *req)
{
	enum tevent_req_state state;
	uint64_t err;
	int ret = 0;

	if (tevent_req_is_error(req, &state, &err)) {
		ret = state == TEVENT_REQ_USER_ERROR ? (int)err : ENOMEM;
	}
	tevent_req_received(req);
	return ret;
}
