/*
 * lib/bfs_claim: the smbd's side of claims, against an engine stand-in
 * (test_share.h) that grants each CLAIM and asks for it back at once.
 * No S3: nothing here fetches.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "test_share.h"

#include "bfs_cache.h"
#include "bfs_claim.h"
#include "bfs_file.h"

struct claim_seen {
	struct bfs_conn *bc;
	struct bfs_fh *fh;
	int answer;
	bool here, ahead;
	bool unclaimed;
};

static void on_changed(void *priv, const char *key)
{
	struct claim_seen *s = priv;

	if (strcmp(key, "unclaimed:big.bin") == 0) {
		s->unclaimed = true;
	}
}

/* Run as the grant arrives, before the REVOKE behind it is read. */
static void answered(struct tevent_req *req)
{
	struct claim_seen *s = tevent_req_callback_data_void(req);

	s->answer = bfs_claim_recv(req);
	s->here = bfs_claim_reads_here(s->bc, s->fh, &s->ahead);
	talloc_free(req);
}

/* An object in the root, opened for reading (test_share.h). */
static struct bfs_fh *opened(struct bfs_conn *bc, const char *name,
			     uint64_t size)
{
	struct bfs_fh *fh = test_share_opened(bc, name, size);

	assert_non_null(fh);
	return fh;
}

/*
 * A large object's first miss asks; granted, its reads are this
 * process's, with readahead.  Asked back, and with nothing of ours in
 * flight, it is given back at once (UNCLAIM) and not asked for again.
 */
static void test_a_claim_is_granted_then_given_back_when_asked(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = test_share_new(t);
	struct claim_seen seen = {.answer = -1};
	struct bfs_fh *big, *small, *other;
	struct tevent_req *req;
	bool ahead = true;
	pid_t engine;
	int i;

	(void)state;
	assert_non_null(bc);
	engine = test_share_reading(bc, 64ULL << 20);
	assert_true(engine > 0);
	bfs_engine_on_revoke(bc->engine, bfs_claim_revoked, bc);
	bfs_engine_on_changed(bc->engine, on_changed, &seen);
	assert_int_equal(bfs_engine_claim_bytes(bc->engine), 64ULL << 20);

	big = opened(bc, "big.bin", 96ULL << 20);
	small = opened(bc, "small.bin", 1 << 20);
	other = opened(bc, "other.bin", 80ULL << 20);
	assert_true(bfs_claim_worth_asking(bc, big));
	assert_false(bfs_claim_worth_asking(bc, small)); /* the engine's */

	seen.bc = bc;
	seen.fh = big;
	req = bfs_claim_send(t, bc->engine_ev, bc, big);
	assert_non_null(req);
	tevent_req_set_callback(req, answered, &seen);
	/* Another read of it asks too; of another object, not meanwhile. */
	assert_true(bfs_claim_worth_asking(bc, big));
	assert_false(bfs_claim_worth_asking(bc, other));
	for (i = 0; i < 500 && !seen.unclaimed; i++) {
		tevent_loop_once(bc->engine_ev);
	}
	assert_int_equal(seen.answer, 0);
	assert_true(seen.here);
	assert_true(seen.ahead);
	assert_true(seen.unclaimed);
	assert_null(bc->claim);
	assert_false(bfs_claim_reads_here(bc, big, &ahead));
	/* Answered once: its reads go to the engine from now on. */
	assert_false(bfs_claim_worth_asking(bc, big));
	assert_true(bfs_claim_worth_asking(bc, other));
	assert_int_equal(test_share_s3_requests(bc), 0);
	test_engine_stop(bc, engine);
	talloc_free(t);
}

/* An engine that takes no claims (WELCOME without one): never asked. */
static void test_an_engine_without_claims_is_never_asked(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct bfs_conn *bc = test_share_new(t);
	pid_t engine;

	(void)state;
	assert_non_null(bc);
	engine = test_engine_start(bc);
	assert_true(engine > 0);
	assert_non_null(bfs_conn_async_reader(bc, bc->engine_ev));
	assert_int_equal(bfs_engine_claim_bytes(bc->engine), 0);
	assert_false(bfs_claim_worth_asking(bc, opened(bc, "big.bin",
							96ULL << 20)));
	test_engine_stop(bc, engine);
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_a_claim_is_granted_then_given_back_when_asked),
		cmocka_unit_test(test_an_engine_without_claims_is_never_asked),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
