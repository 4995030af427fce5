/*
 * The writeback journal in LMDB: one database "jrn", object key -> record.
 */
#include "bfs_journal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "bfs_lmdb.h"
#include "bfs_log.h"

#define BFS_JOURNAL_MAP_SIZE (256ULL << 20)
/*
 * 2 added src_etag and flags, 3 the start time of the owning process;
 * versions 1 and 2 still decode.  Flag INDEX_GONE (a delete handed to
 * the engine) came later in version 3: a version without it reads such
 * a record as unreadable (skipped, as after a downgrade).
 */
#define BFS_JREC_VERSION 3
#define BFS_JREC_OPEN 0x01
#define BFS_JREC_STARTED 0x02
#define BFS_JREC_INDEX_GONE 0x04

struct bfs_journal {
	MDB_env *env;
	MDB_dbi db;
};

/*
 * Packed header; staging, src, upload id and (version 2) src's ETag
 * follow, in that order.  Version 1 ends at mtime.
 */
struct bfs_jrec_hdr {
	uint8_t version;
	uint8_t op;
	uint16_t staging_len;
	uint16_t src_len;
	uint16_t upload_id_len;
	int32_t pid;
	int32_t last_error;
	uint64_t size;
	int64_t mtime;
	uint16_t src_etag_len;
	uint8_t flags;
	uint64_t pid_start;
} __attribute__((packed));

#define BFS_JREC_V1_HDR offsetof(struct bfs_jrec_hdr, src_etag_len)
#define BFS_JREC_V2_HDR offsetof(struct bfs_jrec_hdr, pid_start)

static int bfs_journal_destructor(struct bfs_journal *j)
{
	bfs_lmdb_close(j->env);
	return 0;
}

int bfs_journal_open(TALLOC_CTX *mem_ctx, const char *dir,
		     struct bfs_journal **out, const char **why)
{
	struct bfs_journal *j = talloc_zero(mem_ctx, struct bfs_journal);
	MDB_txn *txn = NULL;
	int rc;

	if (j == NULL) {
		return ENOMEM;
	}
	rc = bfs_lmdb_open(dir, BFS_JOURNAL_MAP_SIZE, 2, &j->env, why);
	if (rc == EIO) {
		/* Never rebuilt: it may hold changes not yet in S3. */
		*why = "the journal is damaged and may hold changes not yet in "
		       "S3; move CACHE_DIR/journal aside (keep it) to start "
		       "without them";
	}
	if (rc != 0) {
		talloc_free(j);
		return rc;
	}
	talloc_set_destructor(j, bfs_journal_destructor);
	rc = mdb_txn_begin(j->env, NULL, 0, &txn);
	if (rc == 0) {
		rc = mdb_dbi_open(txn, "jrn", MDB_CREATE, &j->db);
		if (rc == 0) {
			rc = mdb_txn_commit(txn);
		} else {
			mdb_txn_abort(txn);
		}
	}
	if (rc != 0) {
		*why = bfs_lmdb_errno(rc) == EIO ?
			"the journal is damaged and may hold changes not yet "
			"in S3; move CACHE_DIR/journal aside (keep it) to "
			"start without them" : mdb_strerror(rc);
		talloc_free(j);
		return bfs_lmdb_errno(rc);
	}
	*out = j;
	return 0;
}

/* ---- records ---------------------------------------------------------------- */

static size_t bfs_slen(const char *s)
{
	return s != NULL ? strlen(s) : 0;
}

int bfs_jrec_encode(TALLOC_CTX *mem_ctx, const struct bfs_jrec *r, void **buf,
		    size_t *len)
{
	size_t sl = bfs_slen(r->staging), cl = bfs_slen(r->src),
	       ul = bfs_slen(r->upload_id), el = bfs_slen(r->src_etag);
	struct bfs_jrec_hdr h = {
		.version = BFS_JREC_VERSION,
		.op = (uint8_t)r->op,
		.staging_len = (uint16_t)sl,
		.src_len = (uint16_t)cl,
		.upload_id_len = (uint16_t)ul,
		.pid = (int32_t)r->pid,
		.last_error = r->last_error,
		.size = r->size,
		.mtime = r->mtime,
		.src_etag_len = (uint16_t)el,
		.flags = (r->open ? BFS_JREC_OPEN : 0) |
			 (r->started ? BFS_JREC_STARTED : 0) |
			 (r->index_gone ? BFS_JREC_INDEX_GONE : 0),
		/* Whose pid it is: a process started later is another. */
		.pid_start = r->pid_start != 0 ? r->pid_start :
						 bfs_proc_start(r->pid),
	};
	uint8_t *p;

	if (sl > UINT16_MAX || cl > UINT16_MAX || ul > UINT16_MAX ||
	    el > UINT16_MAX) {
		return ENAMETOOLONG;
	}
	p = talloc_size(mem_ctx, sizeof(h) + sl + cl + ul + el);
	if (p == NULL) {
		return ENOMEM;
	}
	memcpy(p, &h, sizeof(h));
	memcpy(p + sizeof(h), r->staging ? r->staging : "", sl);
	memcpy(p + sizeof(h) + sl, r->src ? r->src : "", cl);
	memcpy(p + sizeof(h) + sl + cl, r->upload_id ? r->upload_id : "", ul);
	memcpy(p + sizeof(h) + sl + cl + ul, r->src_etag ? r->src_etag : "",
	       el);
	*buf = p;
	*len = sizeof(h) + sl + cl + ul + el;
	return 0;
}

static char *bfs_jstr(TALLOC_CTX *mem_ctx, const uint8_t *p, size_t len,
		      bool *oom)
{
	char *s;

	if (len == 0) {
		return NULL;
	}
	s = talloc_strndup(mem_ctx, (const char *)p, len);
	if (s == NULL || strlen(s) != len) {
		*oom = true; /* or an embedded NUL: refused all the same */
	}
	return s;
}

/* Decodes everything but r->key. */
int bfs_jrec_decode(TALLOC_CTX *mem_ctx, const void *buf, size_t len,
		    struct bfs_jrec *r)
{
	const uint8_t *p = buf;
	struct bfs_jrec_hdr h;
	bool bad = false;

	size_t hl;

	memset(&h, 0, sizeof(h));
	if (len < 1) {
		return EBADMSG;
	}
	hl = p[0] == 1 ? BFS_JREC_V1_HDR : p[0] == 2 ? BFS_JREC_V2_HDR :
							 sizeof(h);
	if (len < hl) {
		return EBADMSG;
	}
	memcpy(&h, buf, hl);
	if ((h.version < 1 || h.version > BFS_JREC_VERSION) ||
	    h.op < BFS_J_PUT || h.op > BFS_J_ABORT ||
	    (h.flags & ~(BFS_JREC_OPEN | BFS_JREC_STARTED |
		      BFS_JREC_INDEX_GONE)) != 0 ||
	    len != hl + h.staging_len + h.src_len + h.upload_id_len +
			   h.src_etag_len) {
		return EBADMSG;
	}
	r->op = (enum bfs_jop)h.op;
	r->pid = (pid_t)h.pid;
	r->pid_start = h.pid_start;
	r->last_error = h.last_error;
	r->size = h.size;
	r->mtime = (time_t)h.mtime;
	r->open = (h.flags & BFS_JREC_OPEN) != 0;
	r->started = (h.flags & BFS_JREC_STARTED) != 0;
	r->index_gone = (h.flags & BFS_JREC_INDEX_GONE) != 0;
	p += hl;
	r->staging = bfs_jstr(mem_ctx, p, h.staging_len, &bad);
	p += h.staging_len;
	r->src = bfs_jstr(mem_ctx, p, h.src_len, &bad);
	p += h.src_len;
	r->upload_id = bfs_jstr(mem_ctx, p, h.upload_id_len, &bad);
	p += h.upload_id_len;
	r->src_etag = bfs_jstr(mem_ctx, p, h.src_etag_len, &bad);
	if (bad) {
		return EBADMSG;
	}
	/* A staging name is a plain file name: never a path out of the folder. */
	if (r->staging != NULL &&
	    (strchr(r->staging, '/') != NULL || r->staging[0] == '.')) {
		return EBADMSG;
	}
	if ((r->op == BFS_J_PUT && r->staging == NULL) ||
	    (r->op != BFS_J_PUT && r->op != BFS_J_ABORT &&
	     r->staging != NULL) ||
	    ((r->op == BFS_J_COPY || r->op == BFS_J_ABORT) && r->src == NULL) ||
	    (r->op == BFS_J_ABORT && r->upload_id == NULL) ||
	    (r->src_etag != NULL &&
	     (r->src == NULL || r->op == BFS_J_ABORT)) ||
	    ((r->open || r->started) && r->op != BFS_J_PUT) ||
	    (r->index_gone && r->op != BFS_J_DELETE &&
	     r->op != BFS_J_COPY)) {
		return EBADMSG;
	}
	return 0;
}

/* ---- operations -------------------------------------------------------------- */

static int bfs_journal_commit(struct bfs_journal *j, MDB_txn *txn, int rc)
{
	if (rc != 0 && rc != MDB_NOTFOUND) {
		mdb_txn_abort(txn);
		return bfs_lmdb_errno(rc);
	}
	rc = mdb_txn_commit(txn);
	if (rc == 0) {
		/* A promise to a client: on disk before we say it is kept. */
		rc = mdb_env_sync(j->env, 1);
	}
	return bfs_lmdb_errno(rc);
}

int bfs_journal_put(struct bfs_journal *j, const struct bfs_jrec *r)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	MDB_val k = {strlen(r->key), r->key}, v;
	MDB_txn *txn;
	void *buf;
	size_t len;
	int rc;

	if (k.mv_size == 0 || k.mv_size > 511) {
		talloc_free(tmp);
		return k.mv_size == 0 ? EINVAL : ENAMETOOLONG;
	}
	rc = bfs_jrec_encode(tmp, r, &buf, &len);
	if (rc != 0) {
		talloc_free(tmp);
		return rc;
	}
	v.mv_size = len;
	v.mv_data = buf;
	rc = mdb_txn_begin(j->env, NULL, 0, &txn);
	if (rc != 0) {
		talloc_free(tmp);
		return bfs_lmdb_errno(rc);
	}
	rc = bfs_journal_commit(j, txn, mdb_put(txn, j->db, &k, &v, 0));
	talloc_free(tmp);
	return rc;
}

int bfs_journal_get(struct bfs_journal *j, TALLOC_CTX *mem_ctx,
		    const char *key, struct bfs_jrec *r)
{
	MDB_val k = {strlen(key), (void *)key}, v;
	MDB_txn *txn;
	int rc;

	if (k.mv_size == 0 || k.mv_size > 511) {
		return ENOENT;
	}
	rc = mdb_txn_begin(j->env, NULL, MDB_RDONLY, &txn);
	if (rc != 0) {
		return bfs_lmdb_errno(rc);
	}
	rc = mdb_get(txn, j->db, &k, &v);
	if (rc == 0) {
		rc = bfs_jrec_decode(mem_ctx, v.mv_data, v.mv_size, r);
		if (rc == 0) {
			r->key = talloc_strdup(mem_ctx, key);
			rc = r->key != NULL ? 0 : ENOMEM;
		}
	}
	mdb_txn_abort(txn);
	return bfs_lmdb_errno(rc);
}

int bfs_journal_done(struct bfs_journal *j, const char *key, pid_t pid)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	MDB_val k = {strlen(key), (void *)key}, v;
	struct bfs_jrec r;
	MDB_txn *txn;
	int rc;

	rc = mdb_txn_begin(j->env, NULL, 0, &txn);
	if (rc != 0) {
		talloc_free(tmp);
		return bfs_lmdb_errno(rc);
	}
	rc = mdb_get(txn, j->db, &k, &v);
	if (rc == 0) {
		/* Someone else's newer record for the key stays. */
		if (bfs_jrec_decode(tmp, v.mv_data, v.mv_size, &r) != 0 ||
		    r.pid == pid) {
			rc = mdb_del(txn, j->db, &k, NULL);
		}
	}
	talloc_free(tmp);
	return bfs_journal_commit(j, txn, rc);
}

/* key's record in txn, decoded into *r (a child of mem_ctx): 0 or an MDB code. */
static int bfs_journal_txn_get(MDB_txn *txn, MDB_dbi db, TALLOC_CTX *mem_ctx,
			       const char *key, struct bfs_jrec *r)
{
	MDB_val k = {strlen(key), (void *)key}, v;
	int rc = mdb_get(txn, db, &k, &v);

	if (rc == 0 && bfs_jrec_decode(mem_ctx, v.mv_data, v.mv_size, r) != 0) {
		rc = MDB_NOTFOUND; /* unreadable: as good as absent */
	}
	if (rc == 0) {
		r->key = talloc_strdup(mem_ctx, key);
		rc = r->key != NULL ? 0 : ENOMEM;
	}
	return rc;
}

static int bfs_journal_txn_put(MDB_txn *txn, MDB_dbi db,
			       const struct bfs_jrec *r)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	MDB_val k = {strlen(r->key), r->key}, v;
	void *buf;
	int rc;

	if (tmp == NULL) {
		return ENOMEM;
	}
	rc = bfs_jrec_encode(tmp, r, &buf, &v.mv_size);
	if (rc == 0) {
		v.mv_data = buf;
		rc = mdb_put(txn, db, &k, &v, 0);
	}
	talloc_free(tmp);
	return rc;
}

struct bfs_journal_txn {
	struct bfs_journal *j;
	MDB_txn *txn;
};

int bfs_journal_txn_read(struct bfs_journal_txn *t, TALLOC_CTX *mem_ctx,
			 const char *key, struct bfs_jrec *r)
{
	int rc = bfs_journal_txn_get(t->txn, t->j->db, mem_ctx, key, r);

	return rc == MDB_NOTFOUND ? ENOENT : bfs_lmdb_errno(rc);
}

int bfs_journal_txn_write(struct bfs_journal_txn *t, const struct bfs_jrec *r)
{
	size_t len = strlen(r->key);

	if (len == 0 || len > 511) {
		return len == 0 ? EINVAL : ENAMETOOLONG;
	}
	return bfs_lmdb_errno(bfs_journal_txn_put(t->txn, t->j->db, r));
}

int bfs_journal_txn_remove(struct bfs_journal_txn *t, const char *key)
{
	MDB_val k = {strlen(key), (void *)key};
	int rc = mdb_del(t->txn, t->j->db, &k, NULL);

	return rc == MDB_NOTFOUND ? 0 : bfs_lmdb_errno(rc);
}

int bfs_journal_atomically(struct bfs_journal *j,
			   int (*fn)(struct bfs_journal_txn *t, void *priv),
			   void *priv)
{
	struct bfs_journal_txn t = {.j = j};
	int rc = mdb_txn_begin(j->env, NULL, 0, &t.txn);

	if (rc != 0) {
		return bfs_lmdb_errno(rc);
	}
	rc = fn(&t, priv);
	if (rc != 0) {
		mdb_txn_abort(t.txn);
		return rc;
	}
	return bfs_journal_commit(j, t.txn, 0);
}

/*
 * Whether cur is the change want names: its op in want's pid, and for an
 * upload want's staging file (one process may journal several uploads of
 * a key, one after the other).
 */
static bool bfs_jrec_is(const struct bfs_jrec *cur, const struct bfs_jrec *want)
{
	if (cur->op != want->op || cur->pid != want->pid) {
		return false;
	}
	return want->op != BFS_J_PUT ||
	       (want->staging != NULL && cur->staging != NULL &&
		strcmp(cur->staging, want->staging) == 0);
}

int bfs_journal_swap(struct bfs_journal *j, TALLOC_CTX *mem_ctx,
		     const struct bfs_jrec *r, struct bfs_jrec *old)
{
	MDB_txn *txn;
	int rc;

	if (strlen(r->key) == 0 || strlen(r->key) > 511) {
		return strlen(r->key) == 0 ? EINVAL : ENAMETOOLONG;
	}
	rc = mdb_txn_begin(j->env, NULL, 0, &txn);
	if (rc != 0) {
		return bfs_lmdb_errno(rc);
	}
	*old = (struct bfs_jrec){0};
	rc = bfs_journal_txn_get(txn, j->db, mem_ctx, r->key, old);
	if (rc == MDB_NOTFOUND) {
		*old = (struct bfs_jrec){0};
		rc = 0;
	}
	if (rc == 0) {
		rc = bfs_journal_txn_put(txn, j->db, r);
	}
	return bfs_journal_commit(j, txn, rc);
}

/* Replace (r) or remove (NULL) key's record while it is still want. */
static int bfs_journal_change_if(struct bfs_journal *j, const char *key,
				 const struct bfs_jrec *want,
				 const struct bfs_jrec *r)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	MDB_val k = {strlen(key), (void *)key};
	struct bfs_jrec cur;
	MDB_txn *txn;
	int rc;

	if (tmp == NULL) {
		return ENOMEM;
	}
	rc = mdb_txn_begin(j->env, NULL, 0, &txn);
	if (rc != 0) {
		talloc_free(tmp);
		return bfs_lmdb_errno(rc);
	}
	rc = bfs_journal_txn_get(txn, j->db, tmp, key, &cur);
	if (rc == MDB_NOTFOUND || (rc == 0 && !bfs_jrec_is(&cur, want))) {
		mdb_txn_abort(txn);
		talloc_free(tmp);
		return ESTALE; /* replaced or finished by someone else */
	}
	if (rc == 0) {
		rc = r != NULL ? bfs_journal_txn_put(txn, j->db, r) :
				 mdb_del(txn, j->db, &k, NULL);
	}
	talloc_free(tmp);
	return bfs_journal_commit(j, txn, rc);
}

int bfs_journal_update(struct bfs_journal *j, const char *key, pid_t pid,
		       const char *staging, const struct bfs_jrec *r)
{
	const struct bfs_jrec want = {
		.op = BFS_J_PUT, .pid = pid, .staging = (char *)staging,
	};

	return bfs_journal_change_if(j, key, &want, r);
}

int bfs_journal_done_op(struct bfs_journal *j, const char *key, pid_t pid,
			enum bfs_jop op)
{
	const struct bfs_jrec want = {.op = op, .pid = pid};

	return bfs_journal_change_if(j, key, &want, NULL);
}

int bfs_journal_update_op(struct bfs_journal *j, const char *key, pid_t pid,
			  enum bfs_jop op, const struct bfs_jrec *r)
{
	const struct bfs_jrec want = {.op = op, .pid = pid};

	return bfs_journal_change_if(j, key, &want, r);
}

bool bfs_journal_has_op_under(struct bfs_journal *j, const char *prefix,
			      enum bfs_jop op, const char *except)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	size_t pl = strlen(prefix);
	MDB_val k = {pl, (void *)prefix}, v;
	MDB_cursor *cur = NULL;
	MDB_txn *txn = NULL;
	bool found = false;
	int rc;

	if (tmp == NULL) {
		return false;
	}
	rc = mdb_txn_begin(j->env, NULL, MDB_RDONLY, &txn);
	if (rc == 0) {
		rc = mdb_cursor_open(txn, j->db, &cur);
	}
	if (rc == 0) {
		rc = pl > 0 ? mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE) :
			      mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	}
	while (rc == 0 && !found && k.mv_size >= pl &&
	       memcmp(k.mv_data, prefix, pl) == 0) {
		struct bfs_jrec r;

		if (bfs_jrec_decode(tmp, v.mv_data, v.mv_size, &r) == 0 &&
		    r.op == op &&
		    (except == NULL || strlen(except) != k.mv_size ||
		     memcmp(k.mv_data, except, k.mv_size) != 0)) {
			found = true;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (cur != NULL) {
		mdb_cursor_close(cur);
	}
	if (txn != NULL) {
		mdb_txn_abort(txn);
	}
	talloc_free(tmp);
	return found;
}

int bfs_journal_retarget(struct bfs_journal *j, TALLOC_CTX *mem_ctx,
			 const char *src, pid_t pid, const char *staging,
			 const struct bfs_jrec *r, struct bfs_jrec *old)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	MDB_val k = {strlen(src), (void *)src};
	const struct bfs_jrec want = {
		.op = BFS_J_PUT, .pid = pid, .staging = (char *)staging,
	};
	struct bfs_jrec cur;
	MDB_txn *txn;
	int rc;

	if (tmp == NULL) {
		return ENOMEM;
	}
	if (strlen(r->key) == 0 || strlen(r->key) > 511) {
		talloc_free(tmp);
		return strlen(r->key) == 0 ? EINVAL : ENAMETOOLONG;
	}
	rc = mdb_txn_begin(j->env, NULL, 0, &txn);
	if (rc != 0) {
		talloc_free(tmp);
		return bfs_lmdb_errno(rc);
	}
	rc = bfs_journal_txn_get(txn, j->db, tmp, src, &cur);
	if (rc == MDB_NOTFOUND ||
	    (rc == 0 && (!bfs_jrec_is(&cur, &want) ||
			 (cur.started && strcmp(r->staging, staging) == 0)))) {
		mdb_txn_abort(txn);
		talloc_free(tmp);
		return ESTALE; /* its upload began, or it changed: not ours */
	}
	if (rc == 0) {
		rc = mdb_del(txn, j->db, &k, NULL);
	}
	*old = (struct bfs_jrec){0};
	if (rc == 0) {
		rc = bfs_journal_txn_get(txn, j->db, mem_ctx, r->key, old);
		if (rc == MDB_NOTFOUND) {
			*old = (struct bfs_jrec){0};
			rc = 0;
		}
	}
	if (rc == 0) {
		rc = bfs_journal_txn_put(txn, j->db, r);
	}
	talloc_free(tmp);
	return bfs_journal_commit(j, txn, rc);
}

bool bfs_journal_pid_alive(pid_t pid)
{
	return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

/*
 * A start stamp is this boot's tag in its top 24 bits and the process's
 * start in clock ticks since boot below (40 bits: 348 years at 100 Hz).
 * Neither moves when the wall clock is set.  Stamps of version 3 records
 * were the wall-clock time of the start, btime from /proc/stat plus the
 * ticks since boot, and btime follows every step of the clock: after one
 * (a VM's time sync, NTP's first step) processes started since computed
 * another stamp for a live engine, took its records over as a dead
 * process's and dropped staging files it still uploaded from.  Those
 * stamps are below 2^40 and tell only the pid.
 */
#define BFS_START_TICK_BITS 40
#define BFS_START_TICK_MASK ((1ULL << BFS_START_TICK_BITS) - 1)

static pthread_once_t bfs_boot_once = PTHREAD_ONCE_INIT;
static uint64_t bfs_boot_tag;

/* This boot's tag: a hash of the kernel's random boot_id, never 0. */
static void bfs_boot_tag_read(void)
{
	uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
	char buf[64];
	ssize_t n = -1, i;
	int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);

	if (fd != -1) {
		n = read(fd, buf, sizeof(buf));
		close(fd);
	}
	if (n <= 0) {
		/* No /proc: a stamp then only tells starts of this boot. */
		bfs_log(BFS_LOG_WARNING, "bucketfs: cannot read the kernel's "
			"boot id: journal records name their owners by pid and "
			"start time since boot only");
		n = 0;
	}
	for (i = 0; i < n; i++) {
		h = (h ^ (uint8_t)buf[i]) * 0x100000001b3ULL;
	}
	bfs_boot_tag = h >> BFS_START_TICK_BITS;
	if (bfs_boot_tag == 0) {
		bfs_boot_tag = 1;
	}
}

uint64_t bfs_proc_start(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long ticks;
	ssize_t n;
	int fd, field;

	if (pid <= 0 || pthread_once(&bfs_boot_once, bfs_boot_tag_read) != 0) {
		return 0;
	}
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd == -1) {
		return 0;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0) {
		return 0;
	}
	buf[n] = '\0';
	/* After the command name (which may hold spaces and ')'): field 3. */
	p = strrchr(buf, ')');
	for (field = 2; p != NULL && field < 22; field++) {
		p = strchr(p + 1, ' ');
	}
	if (p == NULL || sscanf(p + 1, "%llu", &ticks) != 1) {
		return 0;
	}
	return (bfs_boot_tag << BFS_START_TICK_BITS) |
	       ((uint64_t)ticks & BFS_START_TICK_MASK);
}

bool bfs_jrec_owner_alive(const struct bfs_jrec *r)
{
	uint64_t now;

	if (!bfs_journal_pid_alive(r->pid)) {
		return false;
	}
	if ((r->pid_start >> BFS_START_TICK_BITS) == 0) {
		/* Version 2, or a wall-clock stamp: the pid is all we know. */
		return true;
	}
	now = bfs_proc_start(r->pid);
	/* Unreadable (another pid namespace): trust the pid. */
	return now == 0 || now == r->pid_start;
}

static int bfs_jrec_order(const void *a, const void *b)
{
	static const int rank[] = {
		[BFS_J_COPY] = 0, [BFS_J_PUT] = 1, [BFS_J_DELETE] = 2,
		[BFS_J_ABORT] = 3,
	};
	const struct bfs_jrec *x = a, *y = b;

	return rank[x->op] - rank[y->op];
}

/* Walk the journal; with claim_pid, take over the orphans only. */
static bool bfs_key_in(const char *key, const char *prefix)
{
	return key != NULL && key[0] != '\0' &&
	       strncmp(key, prefix, strlen(prefix)) == 0;
}

const char *bfs_jrec_foreign(const struct bfs_jrec *r, const char *prefix)
{
	if (r->op == BFS_J_ABORT) {
		/* Keyed by its upload id: the object is its src. */
		return bfs_key_in(r->src, prefix) ? NULL :
			"the object of its upload is outside the share's prefix";
	}
	if (!bfs_key_in(r->key, prefix)) {
		return "its key is outside the share's prefix";
	}
	switch (r->op) {
	case BFS_J_PUT:
		if (r->staging == NULL || r->staging[0] == '\0' ||
		    strchr(r->staging, '/') != NULL ||
		    strcmp(r->staging, ".") == 0 ||
		    strcmp(r->staging, "..") == 0) {
			return "its staging file is not a name in the staging "
			       "folder";
		}
		break;
	case BFS_J_COPY:
		if (!bfs_key_in(r->src, prefix)) {
			return "its source is outside the share's prefix";
		}
		return NULL;
	default:
		break;
	}
	if (r->src != NULL && !bfs_key_in(r->src, prefix)) {
		return "the key it deletes is outside the share's prefix";
	}
	return NULL;
}

static int bfs_journal_walk(struct bfs_journal *j, TALLOC_CTX *mem_ctx,
			    pid_t claim_pid, const char *prefix,
			    struct bfs_jrec **recs, size_t *n,
			    size_t *unreadable)
{
	TALLOC_CTX *tmp = talloc_new(NULL);
	struct bfs_jrec *out = talloc_array(mem_ctx, struct bfs_jrec, 0);
	MDB_cursor *cur = NULL;
	MDB_txn *txn = NULL;
	MDB_val k, v;
	size_t got = 0;
	int rc;

	if (out == NULL || tmp == NULL) {
		talloc_free(tmp);
		talloc_free(out);
		return ENOMEM;
	}
	rc = mdb_txn_begin(j->env, NULL, claim_pid > 0 ? 0 : MDB_RDONLY, &txn);
	if (rc == 0) {
		rc = mdb_cursor_open(txn, j->db, &cur);
	}
	if (rc == 0) {
		rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	}
	while (rc == 0) {
		struct bfs_jrec r = {0};

		if (bfs_jrec_decode(out, v.mv_data, v.mv_size, &r) != 0) {
			/* Unreadable: nothing can be done with it. */
			if (unreadable != NULL) {
				(*unreadable)++;
			}
			rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
			continue;
		}
		if (claim_pid > 0) {
			void *buf;
			size_t len;

			const char *why;

			if (bfs_jrec_owner_alive(&r)) {
				rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
				continue;
			}
			r.key = talloc_strndup(tmp, k.mv_data, k.mv_size);
			why = r.key != NULL ? bfs_jrec_foreign(&r, prefix) :
					      NULL;
			if (why != NULL) {
				/* Left as it is, for the share it belongs to. */
				bfs_log(BFS_LOG_WARNING, "bucketfs: journal "
					"record for '%s' not run here: %s",
					r.op == BFS_J_ABORT ? r.src : r.key,
					why);
				rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
				continue;
			}
			r.pid = claim_pid;
			r.pid_start = 0; /* the claimer's, at encoding */
			r.key = NULL;
			rc = bfs_jrec_encode(tmp, &r, &buf, &len);
			if (rc == 0) {
				MDB_val nv = {len, buf};
				rc = mdb_cursor_put(cur, &k, &nv, MDB_CURRENT);
			}
			if (rc != 0) {
				break;
			}
		}
		r.key = talloc_strndup(out, k.mv_data, k.mv_size);
		out = talloc_realloc(mem_ctx, out, struct bfs_jrec, got + 1);
		if (r.key == NULL || out == NULL) {
			rc = ENOMEM;
			break;
		}
		out[got++] = r;
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (cur != NULL) {
		mdb_cursor_close(cur);
	}
	if (txn != NULL && claim_pid > 0) {
		rc = bfs_journal_commit(j, txn, rc);
	} else if (txn != NULL) {
		mdb_txn_abort(txn);
		rc = bfs_lmdb_errno(rc == MDB_NOTFOUND ? 0 : rc);
	} else {
		rc = bfs_lmdb_errno(rc);
	}
	talloc_free(tmp);
	if (rc != 0) {
		talloc_free(out);
		return rc;
	}
	qsort(out, got, sizeof(*out), bfs_jrec_order);
	*recs = out;
	*n = got;
	return 0;
}

int bfs_journal_claim_orphans(struct bfs_journal *j, TALLOC_CTX *mem_ctx,
			      pid_t pid, const char *prefix,
			      struct bfs_jrec **recs, size_t *n)
{
	return bfs_journal_walk(j, mem_ctx, pid, prefix, recs, n, NULL);
}

int bfs_journal_list(struct bfs_journal *j, TALLOC_CTX *mem_ctx,
		     struct bfs_jrec **recs, size_t *n, size_t *unreadable)
{
	if (unreadable != NULL) {
		*unreadable = 0;
	}
	return bfs_journal_walk(j, mem_ctx, 0, "", recs, n, unreadable);
}
