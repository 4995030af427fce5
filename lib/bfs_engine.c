/*
 * The module's side of bucketfsd (see bfs_engine.h).
 */
#include "bfs_engine.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bfs_arena.h"
#include "bfs_log.h"
#include "bfs_proto.h"

/* How often a wait whose engine went away tries to reach a new one. */
#define BFS_ENGINE_WAIT_TRIES 5
#define BFS_ENGINE_RETRY_MS 200

struct bfs_engine_wait_state;

/*
 * The engine's fetch arena as this process maps it.  Not a child of the
 * connection: a worker thread may still copy lent bytes from it after the
 * engine went away; it is unmapped once retired (a new connection has its
 * own) and nothing lent from it is left.
 */
struct bfs_engine_arena {
	struct bfs_arena_view *v;
	unsigned lent;
	bool retired;
};

struct bfs_engine {
	struct tevent_context *ev;
	char *cache_dir, *share, *sock_path;
	char **argv;		/* NULL: never start one */
	unsigned timeout_ms;
	int fd;
	struct tevent_fd *fde;
	pid_t pid;
	struct bfs_proto_buf in;	/* read, not yet a whole frame */
	uint8_t *out;
	size_t out_len;
	uint32_t next_id;
	struct bfs_engine_wait_state *waits;
	struct tevent_timer *retry_te;
	unsigned retries;
	void (*on_changed)(void *priv, const char *key);	/* CHANGED */
	void *on_changed_priv;
	int passed_fd;			/* came with a frame: the arena's */
	struct bfs_engine_arena *arena;	/* this connection's; NULL: none */
	uint64_t claim_bytes;		/* WELCOME's claim; 0: no claims */
	void (*on_revoke)(void *priv, const char *key, const char *etag);
	void *on_revoke_priv;
};

struct bfs_engine_wait_state {
	struct bfs_engine_wait_state *prev, *next;
	struct tevent_req *req;
	struct bfs_engine *e;
	char *key, *staging, *etag;
	uint32_t id;		/* 0: not asked on the current connection */
	/* A FETCH (not retried: the caller fetches itself instead). */
	bool is_fetch;
	struct bfs_proto_msg fetch;
	/* What its DONE lent, until recv hands it over (or we release it). */
	struct bfs_engine_lent lent;
};

static int64_t bfs_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void bfs_engine_lost(struct bfs_engine *e);
static void bfs_engine_schedule_retry(struct bfs_engine *e);
static void bfs_engine_io(struct tevent_context *ev, struct tevent_fd *fde,
			  uint16_t flags, void *private_data);

static void bfs_engine_arena_put(struct bfs_engine_arena *a)
{
	if (a != NULL && a->retired && a->lent == 0) {
		talloc_free(a);
	}
}

static void bfs_engine_close(struct bfs_engine *e)
{
	TALLOC_FREE(e->fde);
	if (e->fd != -1) {
		close(e->fd);
		e->fd = -1;
	}
	if (e->passed_fd != -1) {
		close(e->passed_fd);
		e->passed_fd = -1;
	}
	if (e->arena != NULL) {
		e->arena->retired = true;
		bfs_engine_arena_put(e->arena);
		e->arena = NULL;
	}
	e->pid = 0;
	e->claim_bytes = 0;
	e->in.len = e->out_len = 0;
}

/*
 * recv, keeping a descriptor that came with the bytes (SCM_RIGHTS: the
 * arena, with WELCOME) in e->passed_fd.  Others are closed.
 */
static ssize_t bfs_engine_recv(struct bfs_engine *e, uint8_t *buf, size_t len)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int) * 4)];
	} ctl;
	struct iovec iov = {.iov_base = buf, .iov_len = len};
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl.b, .msg_controllen = sizeof(ctl.b),
	};
	struct cmsghdr *c;
	ssize_t n = recvmsg(e->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

	if (n <= 0) {
		return n;
	}
	for (c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
		size_t i, nfd;
		int fd;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
			continue;
		}
		nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (i = 0; i < nfd; i++) {
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (e->passed_fd == -1) {
				e->passed_fd = fd;
			} else {
				close(fd);
			}
		}
	}
	return n;
}

static int bfs_engine_destructor(struct bfs_engine *e)
{
	bfs_engine_close(e);
	return 0;
}

/* Blocking send of a whole buffer, until deadline (ms, monotonic). */
static int bfs_engine_send_all(int fd, const uint8_t *p, size_t len,
			       int64_t deadline)
{
	while (len > 0) {
		struct pollfd pfd = {.fd = fd, .events = POLLOUT};
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		int64_t left;

		if (n > 0) {
			p += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			return errno;
		}
		left = deadline - bfs_now_ms();
		if (left <= 0) {
			return ETIMEDOUT;
		}
		poll(&pfd, 1, (int)left);
	}
	return 0;
}

/* Blocking read of one message, until deadline. */
static int bfs_engine_recv_one(struct bfs_engine *e, TALLOC_CTX *mem_ctx,
			       int64_t deadline, struct bfs_proto_msg **m)
{
	for (;;) {
		struct pollfd pfd = {.fd = e->fd, .events = POLLIN};
		uint8_t buf[4096];
		int64_t left;
		ssize_t n;
		int ret = bfs_proto_buf_take(mem_ctx, &e->in, m);

		if (ret == 0) {
			return 0;
		}
		if (ret != EAGAIN) {
			return ret;
		}
		left = deadline - bfs_now_ms();
		if (left <= 0) {
			return ETIMEDOUT;
		}
		if (poll(&pfd, 1, (int)left) <= 0) {
			continue;
		}
		n = bfs_engine_recv(e, buf, sizeof(buf));
		if (n == 0) {
			return EPIPE;
		}
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR) {
				continue;
			}
			return errno;
		}
		ret = bfs_proto_buf_append(e, &e->in, buf, (size_t)n);
		if (ret != 0) {
			return ret;
		}
	}
}

/* One try: connect to the socket and say HELLO.  ENOENT: nobody there. */
static int bfs_engine_try(struct bfs_engine *e, int64_t deadline)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct bfs_proto_msg hello = {
		.type = BFS_PM_HELLO, .id = ++e->next_id, .share = e->share,
		.cache_dir = e->cache_dir,
	}, *welcome = NULL;
	TALLOC_CTX *tmp;
	uint8_t *buf;
	size_t len;
	int ret;

	bfs_engine_close(e);
	if (strlen(e->sock_path) >= sizeof(sa.sun_path)) {
		return ENAMETOOLONG;
	}
	strcpy(sa.sun_path, e->sock_path);
	e->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (e->fd == -1) {
		return errno;
	}
	if (connect(e->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		ret = errno;
		bfs_engine_close(e);
		/* No socket, or a dead engine's: start one. */
		return ret == ECONNREFUSED || ret == ENOENT ? ENOENT : ret;
	}
	tmp = talloc_new(NULL);
	ret = tmp ? bfs_proto_encode(tmp, &hello, &buf, &len) : ENOMEM;
	if (ret == 0) {
		ret = bfs_engine_send_all(e->fd, buf, len, deadline);
	}
	while (ret == 0) {
		ret = bfs_engine_recv_one(e, tmp, deadline, &welcome);
		if (ret == 0 && welcome->type == BFS_PM_WELCOME &&
		    welcome->id == hello.id) {
			break;
		}
	}
	if (ret == 0 && welcome->pid == 0) {
		ret = EPROTO;
	}
	if (ret == 0) {
		e->pid = (pid_t)welcome->pid;
		e->claim_bytes = welcome->claim;
		e->fde = tevent_add_fd(e->ev, e, e->fd, TEVENT_FD_READ,
				       bfs_engine_io, e);
		ret = e->fde != NULL ? 0 : ENOMEM;
	}
	if (ret == 0 && welcome->arena != 0 && e->passed_fd != -1 &&
	    welcome->arena <= SIZE_MAX) {
		/* Without it reads go through the cache file, as before. */
		e->arena = talloc_zero(NULL, struct bfs_engine_arena);
		if (e->arena != NULL) {
			e->arena->v = bfs_arena_view_new(e->arena, e->passed_fd,
							 (size_t)welcome->arena);
		}
		if (e->arena != NULL && e->arena->v == NULL) {
			TALLOC_FREE(e->arena);
		}
	}
	if (e->passed_fd != -1) {
		close(e->passed_fd); /* mapped, or not wanted */
		e->passed_fd = -1;
	}
	talloc_free(tmp);
	if (ret != 0) {
		/* An engine that ended as we came: as if none ran. */
		bfs_engine_close(e);
		return ret == EPIPE || ret == ECONNRESET ? ENOENT : ret;
	}
	return 0;
}

/*
 * Start bucketfsd detached from us: a child that forks it and exits at
 * once (reaped here), so that the engine is never this process's child.
 */
static int bfs_engine_spawn(struct bfs_engine *e)
{
	pid_t pid, got;
	int status = 0;

	/* Not installed: say so now, not after the connect timeout. */
	if (access(e->argv[0], X_OK) != 0) {
		return errno;
	}
	pid = fork();
	if (pid == -1) {
		return errno;
	}
	if (pid == 0) {
		sigset_t none;

		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (fork() != 0) {
			_exit(0);
		}
		setsid();
		closefrom(3);
		execv(e->argv[0], e->argv);
		_exit(127);
	}
	do {
		got = waitpid(pid, &status, 0);
	} while (got == -1 && errno == EINTR);
	return 0;
}

int bfs_engine_reconnect(struct bfs_engine *e)
{
	int64_t deadline = bfs_now_ms() + e->timeout_ms;
	bool started = false;
	int ret;

	for (;;) {
		ret = bfs_engine_try(e, deadline);
		if (ret != ENOENT || e->argv == NULL) {
			break;
		}
		if (!started) {
			ret = bfs_engine_spawn(e);
			if (ret != 0) {
				bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot "
					"start the engine %s: %s (see "
					"'bucketfs:engine')", e->share,
					e->argv[0], strerror(ret));
				return ret;
			}
			started = true;
		}
		if (bfs_now_ms() >= deadline) {
			ret = ETIMEDOUT;
			break;
		}
		poll(NULL, 0, 20); /* it is starting: its socket comes soon */
	}
	if (ret != 0) {
		bfs_log(BFS_LOG_ERR, "bucketfs: share %s: cannot reach the "
			"engine of %s%s: %s (its log: %s/" BFS_ENGINE_LOG ")",
			e->share, e->cache_dir,
			started ? ", started just now" : "", strerror(ret),
			e->cache_dir);
	}
	return ret;
}

int bfs_engine_connect(TALLOC_CTX *mem_ctx, struct tevent_context *ev,
		       const char *cache_dir, const char *share,
		       const struct bfs_engine_start *start,
		       struct bfs_engine **out)
{
	struct bfs_engine *e = talloc_zero(mem_ctx, struct bfs_engine);
	int ret;

	if (e == NULL) {
		return ENOMEM;
	}
	e->fd = -1;
	e->passed_fd = -1;
	talloc_set_destructor(e, bfs_engine_destructor);
	e->ev = ev;
	e->cache_dir = talloc_strdup(e, cache_dir);
	e->share = talloc_strdup(e, share);
	e->sock_path = talloc_asprintf(e, "%s/" BFS_ENGINE_SOCKET, cache_dir);
	e->timeout_ms = start != NULL ? start->timeout_ms : 2000;
	if (start != NULL && start->argv != NULL) {
		size_t n = 0, i;

		while (start->argv[n] != NULL) {
			n++;
		}
		e->argv = talloc_zero_array(e, char *, n + 1);
		for (i = 0; e->argv != NULL && i < n; i++) {
			e->argv[i] = talloc_strdup(e->argv, start->argv[i]);
			if (e->argv[i] == NULL) {
				TALLOC_FREE(e->argv);
			}
		}
		if (e->argv == NULL) {
			talloc_free(e);
			return ENOMEM;
		}
	}
	if (e->cache_dir == NULL || e->share == NULL || e->sock_path == NULL) {
		talloc_free(e);
		return ENOMEM;
	}
	ret = bfs_engine_reconnect(e);
	if (ret != 0) {
		talloc_free(e);
		return ret;
	}
	*out = e;
	return 0;
}

pid_t bfs_engine_pid(const struct bfs_engine *e)
{
	return e->pid;
}

/* Queue a message; the socket takes it now or when writable. */
static int bfs_engine_queue(struct bfs_engine *e, const struct bfs_proto_msg *m)
{
	uint8_t *buf;
	size_t len;
	ssize_t n;
	int ret;

	if (e->fd == -1) {
		return EPIPE;
	}
	ret = bfs_proto_encode(e, m, &buf, &len);
	if (ret != 0) {
		return ret;
	}
	if (e->out_len == 0) {
		n = send(e->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n == (ssize_t)len) {
			talloc_free(buf);
			return 0;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			ret = errno;
			talloc_free(buf);
			return ret;
		}
		if (n < 0) {
			n = 0;
		}
	} else {
		n = 0;
	}
	e->out = talloc_realloc(e, e->out, uint8_t,
				e->out_len + len - (size_t)n);
	if (e->out == NULL) {
		e->out_len = 0;
		talloc_free(buf);
		return ENOMEM;
	}
	memcpy(e->out + e->out_len, buf + n, len - (size_t)n);
	e->out_len += len - (size_t)n;
	talloc_free(buf);
	TEVENT_FD_WRITEABLE(e->fde);
	return 0;
}

int bfs_engine_notify(struct bfs_engine *e, const char *key)
{
	struct bfs_proto_msg m = {
		.type = BFS_PM_UPLOAD, .id = ++e->next_id, .key = (char *)key,
	};

	return bfs_engine_queue(e, &m);
}

/* ---- waits -------------------------------------------------------------------------- */

static int bfs_engine_wait_destructor(struct bfs_engine_wait_state *s)
{
	if (s->lent.data != NULL) {
		/* Lent and never taken (the read went away): give back. */
		bfs_engine_lent_done(s->e, &s->lent);
	}
	if (s->e != NULL) {
		if (s->prev != NULL) {
			s->prev->next = s->next;
		} else {
			s->e->waits = s->next;
		}
		if (s->next != NULL) {
			s->next->prev = s->prev;
		}
		s->e = NULL;
	}
	return 0;
}

/* A wait or fetch is answered by id: on e's list until freed. */
static void bfs_engine_call_link(struct bfs_engine *e,
				 struct bfs_engine_wait_state *s)
{
	s->e = e;
	s->next = e->waits;
	if (e->waits != NULL) {
		e->waits->prev = s;
	}
	e->waits = s;
	talloc_set_destructor(s, bfs_engine_wait_destructor);
}

static int bfs_engine_wait_ask(struct bfs_engine_wait_state *s)
{
	struct bfs_proto_msg m = {
		.type = BFS_PM_WAIT, .key = s->key, .staging = s->staging,
	};

	if (s->is_fetch) {
		m = s->fetch;
	}
	s->id = m.id = ++s->e->next_id;
	return bfs_engine_queue(s->e, &m);
}

/*
 * The engine went away while waits were asked: reach the next one
 * (starting it), and ask them again there.  Given up after a few tries:
 * the waits fail with EPIPE, their uploads stay journalled.
 */
static void bfs_engine_retry(struct tevent_context *ev,
			     struct tevent_timer *te, struct timeval now,
			     void *private_data)
{
	struct bfs_engine *e = private_data;
	struct bfs_engine_wait_state *w, *next;

	(void)ev, (void)te, (void)now;
	e->retry_te = NULL;
	if (e->fd == -1 && bfs_engine_reconnect(e) != 0) {
		if (++e->retries < BFS_ENGINE_WAIT_TRIES) {
			bfs_engine_schedule_retry(e);
			return;
		}
		e->retries = 0;
		for (w = e->waits; w != NULL; w = next) {
			next = w->next;
			tevent_req_error(w->req, EPIPE);
		}
		return;
	}
	e->retries = 0;
	for (w = e->waits; w != NULL; w = next) {
		next = w->next;
		if (w->id == 0 && bfs_engine_wait_ask(w) != 0) {
			tevent_req_error(w->req, EPIPE);
		}
	}
}

static void bfs_engine_schedule_retry(struct bfs_engine *e)
{
	if (e->retry_te == NULL) {
		e->retry_te = tevent_add_timer(
			e->ev, e,
			tevent_timeval_current_ofs(0, BFS_ENGINE_RETRY_MS * 1000),
			bfs_engine_retry, e);
	}
}

/*
 * The engine went away: every wait asks the next one; fetches fail at
 * once (EPIPE), their readers fetch for themselves.
 */
static void bfs_engine_lost(struct bfs_engine *e)
{
	struct bfs_engine_wait_state *w, *next;

	bfs_engine_close(e);
	for (w = e->waits; w != NULL; w = next) {
		next = w->next;
		w->id = 0;
		if (w->is_fetch) {
			tevent_req_error(w->req, EPIPE);
		}
	}
	if (e->waits != NULL) {
		bfs_engine_schedule_retry(e);
	}
}

void bfs_engine_on_changed(struct bfs_engine *e,
			   void (*cb)(void *priv, const char *key), void *priv)
{
	e->on_changed = cb;
	e->on_changed_priv = priv;
}

static void bfs_engine_on_message(struct bfs_engine *e,
				  struct bfs_proto_msg *m)
{
	struct bfs_engine_wait_state *w;

	if (m->type == BFS_PM_CHANGED && m->key != NULL) {
		if (e->on_changed != NULL) {
			e->on_changed(e->on_changed_priv, m->key);
		}
		return;
	}
	if (m->type == BFS_PM_REVOKE && m->key != NULL && m->etag != NULL) {
		if (e->on_revoke != NULL) {
			e->on_revoke(e->on_revoke_priv, m->key, m->etag);
		} else {
			/* Nobody here holds it: let the engine go on. */
			(void)bfs_engine_unclaim(e, m->key, m->etag);
		}
		return;
	}
	if (m->type != BFS_PM_DONE) {
		return;
	}
	for (w = e->waits; w != NULL; w = w->next) {
		if (w->id == m->id) {
			break;
		}
	}
	if (w == NULL) {
		/* A wait given up meanwhile; what it was lent goes back at
		 * once, or the engine would keep those bytes pinned. */
		if (m->pin != 0) {
			struct bfs_engine_lent l = {.pin = m->pin,
						    .arena = e->arena};

			bfs_engine_lent_done(e, &l);
		}
		return;
	}
	if (m->err != 0) {
		tevent_req_error(w->req, m->err > 4095 ? EIO : (int)m->err);
		return;
	}
	w->etag = m->etag ? talloc_steal(w, m->etag) : NULL;
	if (w->is_fetch && m->pin != 0) {
		const uint8_t *p = e->arena == NULL ? NULL :
			bfs_arena_view_at(e->arena->v, m->slot,
					  w->fetch.length);

		w->lent = (struct bfs_engine_lent){
			.data = p, .pin = m->pin, .arena = e->arena,
		};
		if (p != NULL) {
			e->arena->lent++;
		} else {
			/* Outside what we mapped: not taken, given back. */
			bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: the "
				"engine lent bytes outside its arena (at "
				"%llu): read through the cache instead",
				e->share, (unsigned long long)m->slot);
			bfs_engine_lent_done(e, &w->lent);
		}
	}
	tevent_req_done(w->req);
}

static void bfs_engine_io(struct tevent_context *ev, struct tevent_fd *fde,
			  uint16_t flags, void *private_data)
{
	struct bfs_engine *e = private_data;

	(void)ev, (void)fde;
	if (flags & TEVENT_FD_WRITE) {
		ssize_t n = send(e->fd, e->out, e->out_len,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			bfs_engine_lost(e);
			return;
		}
		if (n > 0) {
			memmove(e->out, e->out + n, e->out_len - (size_t)n);
			e->out_len -= (size_t)n;
		}
		if (e->out_len == 0) {
			TEVENT_FD_NOT_WRITEABLE(e->fde);
		}
	}
	if (flags & TEVENT_FD_READ) {
		uint8_t buf[4096];
		ssize_t n = bfs_engine_recv(e, buf, sizeof(buf));

		if (n > 0 && e->passed_fd != -1) {
			close(e->passed_fd); /* only WELCOME brings one */
			e->passed_fd = -1;
		}
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
			bfs_log(BFS_LOG_WARNING, "bucketfs: share %s: the "
				"engine (pid %d) went away", e->share,
				(int)e->pid);
			bfs_engine_lost(e);
			return;
		}
		if (n < 0) {
			return;
		}
		if (bfs_proto_buf_append(e, &e->in, buf, (size_t)n) != 0) {
			bfs_engine_lost(e);
			return;
		}
		for (;;) {
			struct bfs_proto_msg *m = NULL;
			int ret = bfs_proto_buf_take(e, &e->in, &m);

			if (ret == EAGAIN) {
				break;
			}
			if (ret != 0) {
				bfs_log(BFS_LOG_ERR, "bucketfs: share %s: bad "
					"message from the engine: %s",
					e->share, strerror(ret));
				bfs_engine_lost(e);
				return;
			}
			bfs_engine_on_message(e, m);
			talloc_free(m);
		}
	}
}

struct tevent_req *bfs_engine_wait_send(TALLOC_CTX *mem_ctx,
					struct tevent_context *ev,
					struct bfs_engine *e, const char *key,
					const char *staging)
{
	struct bfs_engine_wait_state *s;
	struct tevent_req *req = tevent_req_create(mem_ctx, &s,
						   struct bfs_engine_wait_state);

	if (req == NULL) {
		return NULL;
	}
	s->req = req;
	s->key = talloc_strdup(s, key);
	s->staging = talloc_strdup(s, staging);
	if (s->key == NULL || s->staging == NULL) {
		tevent_req_error(req, ENOMEM);
		return tevent_req_post(req, ev);
	}
	bfs_engine_call_link(e, s);
	if (e->fd == -1 || bfs_engine_wait_ask(s) != 0) {
		s->id = 0;
		bfs_engine_schedule_retry(e);
	}
	return req;
}

/*
 * Ask m (a FETCH or a CLAIM: key and etag copied) and wait for its DONE,
 * on this connection only: if the engine goes, the request fails (EPIPE)
 * and the caller does without, rather than ask a restarted engine.
 */
static struct tevent_req *bfs_engine_ask_once_send(TALLOC_CTX *mem_ctx,
						   struct tevent_context *ev,
						   struct bfs_engine *e,
						   const struct bfs_proto_msg *m)
{
	struct bfs_engine_wait_state *s;
	struct tevent_req *req = tevent_req_create(mem_ctx, &s,
						   struct bfs_engine_wait_state);

	if (req == NULL) {
		return NULL;
	}
	s->req = req;
	s->is_fetch = true;
	s->fetch = *m;
	s->fetch.key = talloc_strdup(s, m->key);
	s->fetch.etag = talloc_strdup(s, m->etag);
	if (s->fetch.key == NULL || s->fetch.etag == NULL) {
		tevent_req_error(req, ENOMEM);
		return tevent_req_post(req, ev);
	}
	if (e->fd == -1) {
		tevent_req_error(req, EPIPE);
		return tevent_req_post(req, ev);
	}
	bfs_engine_call_link(e, s);
	if (bfs_engine_wait_ask(s) != 0) {
		tevent_req_error(req, EPIPE);
		return tevent_req_post(req, ev);
	}
	return req;
}

struct tevent_req *bfs_engine_fetch_send(TALLOC_CTX *mem_ctx,
					 struct tevent_context *ev,
					 struct bfs_engine *e,
					 const struct bfs_engine_fetch *f)
{
	struct bfs_proto_msg m = {
		.type = BFS_PM_FETCH,
		.key = (char *)f->key, .etag = (char *)f->etag,
		.size = f->size, .offset = f->offset, .length = f->length,
		.ahead = f->ahead, .ahead_n = f->ahead_n,
		.lend = e->arena != NULL && f->lend,
	};

	return bfs_engine_ask_once_send(mem_ctx, ev, e, &m);
}

int bfs_engine_fetch_recv(struct tevent_req *req,
			  struct bfs_engine_lent *lent)
{
	struct bfs_engine_wait_state *s = tevent_req_data(
		req, struct bfs_engine_wait_state);

	*lent = (struct bfs_engine_lent){0};
	if (!tevent_req_is_in_progress(req) && s->lent.data != NULL &&
	    !tevent_req_is_error(req, &(enum tevent_req_state){0},
				 &(uint64_t){0})) {
		*lent = s->lent;
		s->lent = (struct bfs_engine_lent){0};
	}
	return bfs_engine_wait_recv(req, NULL, NULL);
}

bool bfs_engine_lends(const struct bfs_engine *e)
{
	return e->arena != NULL;
}

void bfs_engine_lent_done(struct bfs_engine *e, struct bfs_engine_lent *l)
{
	struct bfs_engine_arena *a = l->arena;

	if (e != NULL && a != NULL && a == e->arena && e->fd != -1) {
		/* To the engine that lent it; a closed connection released
		 * every pin of its own. */
		struct bfs_proto_msg m = {
			.type = BFS_PM_RELEASE, .id = ++e->next_id,
			.pin = l->pin,
		};

		(void)bfs_engine_queue(e, &m);
	}
	if (a != NULL && l->data != NULL) {
		a->lent--;
		bfs_engine_arena_put(a);
	}
	*l = (struct bfs_engine_lent){0};
}

uint64_t bfs_engine_claim_bytes(const struct bfs_engine *e)
{
	return e->fd != -1 ? e->claim_bytes : 0;
}

struct tevent_req *bfs_engine_claim_send(TALLOC_CTX *mem_ctx,
					 struct tevent_context *ev,
					 struct bfs_engine *e, const char *key,
					 const char *etag, uint64_t size)
{
	struct bfs_proto_msg m = {
		.type = BFS_PM_CLAIM,
		.key = (char *)key, .etag = (char *)etag, .size = size,
	};
	struct bfs_engine_wait_state *none;
	struct tevent_req *req;

	if (e->fd != -1 && e->claim_bytes == 0) {
		/* An engine that takes no claims (WELCOME said none). */
		req = tevent_req_create(mem_ctx, &none,
					struct bfs_engine_wait_state);
		if (req != NULL) {
			tevent_req_error(req, EBUSY);
			req = tevent_req_post(req, ev);
		}
		return req;
	}
	return bfs_engine_ask_once_send(mem_ctx, ev, e, &m);
}

int bfs_engine_claim_recv(struct tevent_req *req)
{
	return bfs_engine_wait_recv(req, NULL, NULL);
}

int bfs_engine_unclaim(struct bfs_engine *e, const char *key,
		       const char *etag)
{
	struct bfs_proto_msg m = {
		.type = BFS_PM_UNCLAIM, .id = ++e->next_id,
		.key = (char *)key, .etag = (char *)etag,
	};

	return bfs_engine_queue(e, &m);
}

void bfs_engine_on_revoke(struct bfs_engine *e,
			  void (*cb)(void *priv, const char *key,
				     const char *etag),
			  void *priv)
{
	e->on_revoke = cb;
	e->on_revoke_priv = priv;
}

int bfs_engine_list(struct bfs_engine *e, const char *prefix)
{
	struct bfs_proto_msg m = {
		.type = BFS_PM_LIST, .id = ++e->next_id, .key = (char *)prefix,
	};

	return bfs_engine_queue(e, &m);
}

int bfs_engine_prefetch(struct bfs_engine *e, const struct bfs_engine_fetch *f)
{
	struct bfs_proto_msg m = {
		.type = BFS_PM_PREFETCH, .id = ++e->next_id,
		.key = (char *)f->key, .etag = (char *)f->etag,
		.size = f->size, .ahead = f->ahead, .ahead_n = f->ahead_n,
	};

	return bfs_engine_queue(e, &m);
}

int bfs_engine_wait_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
			 char **etag)
{
	struct bfs_engine_wait_state *s = tevent_req_data(
		req, struct bfs_engine_wait_state);
	enum tevent_req_state state;
	uint64_t err;

	if (tevent_req_is_error(req, &state, &err)) {
		tevent_req_received(req);
		return state == TEVENT_REQ_USER_ERROR ? (int)err : ENOMEM;
	}
	if (etag != NULL) {
		*etag = s->etag ? talloc_steal(mem_ctx, s->etag) : NULL;
	}
	tevent_req_received(req);
	return 0;
}

int bfs_engine_status(struct bfs_engine *e, unsigned timeout_ms,
		      struct bfs_engine_state *out)
{
	int64_t deadline = bfs_now_ms() + timeout_ms;
	struct bfs_proto_msg q = {.type = BFS_PM_STATUS, .id = ++e->next_id};
	struct bfs_proto_msg *a = NULL;
	TALLOC_CTX *tmp = talloc_new(NULL);
	uint8_t *buf;
	size_t len;
	int ret = tmp ? bfs_proto_encode(tmp, &q, &buf, &len) : ENOMEM;

	if (ret == 0) {
		ret = bfs_engine_send_all(e->fd, buf, len, deadline);
	}
	while (ret == 0) {
		ret = bfs_engine_recv_one(e, tmp, deadline, &a);
		if (ret == 0 && a->type == BFS_PM_STATE && a->id == q.id) {
			break;
		}
	}
	if (ret == 0) {
		*out = (struct bfs_engine_state){
			.pid = (pid_t)a->pid, .pending = a->pending,
			.uploaded = a->uploaded, .failed = a->failed,
			.bytes = a->bytes, .fetches = a->fetches,
			.fetched = a->fetched, .lent = a->lent,
		};
	}
	talloc_free(tmp);
	return ret;
}
