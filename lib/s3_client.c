/*
 * libcurl multi-socket on tevent.
 *
 * curl tells us which sockets to watch (socket callback) and when to wake it
 * (timer callback); those callbacks only adjust tevent_fd flags and one
 * tevent_timer.  curl itself is only entered from tevent handlers, never
 * from inside a curl callback.  Finished transfers are collected after
 * curl_multi_socket_action() returns, and tevent_req callbacks are deferred
 * to an immediate event so user code never runs under curl.
 */
#include "s3_client.h"

#include "bfs_log.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include <curl/curl.h>

#include "s3_xml.h"

/* Enough of an S3 error document; the rest is dropped. */
#define S3_MAX_ERROR_BODY (64 * 1024)
/* Collected (sink-less) bodies are S3 XML documents: bound them. */
#define S3_MAX_COLLECTED_BODY (64 * 1024 * 1024)

struct s3_req_state;

struct s3_client {
	struct tevent_context *ev;
	CURLM *multi;
	struct tevent_timer *curl_timer;
	struct s3_client_config cfg;
	char *scheme;
	char *host;	 /* host[:port] as the Host header carries it */
	char *base_path; /* endpoint path, without trailing '/' */
	struct s3_req_state *active;
	struct s3_client_counters counters;
	bool closing;
	bool no_upload_cksum;	/* the server refused x-amz-checksum-* */
};

/* One socket curl asked us to watch. */
struct s3_sock {
	struct s3_client *c;
	curl_socket_t fd;
	struct tevent_fd *fde;
};

struct s3_req_state {
	struct s3_req_state *prev, *next;
	struct tevent_context *ev;
	struct tevent_req *req;
	struct s3_client *c;
	struct s3_request r; /* strings and arrays copied onto the state */

	CURL *easy;
	bool in_multi;
	struct curl_slist *hdrs;
	char *url;
	char errbuf[CURL_ERROR_SIZE];
	struct tevent_timer *retry_timer;
	unsigned attempt;

	/* Per-attempt response. */
	long http_status;
	uint8_t *body;
	size_t body_len;
	uint8_t *errbody;
	size_t errbody_len;
	int sink_err;
	char *etag;
	char *request_id;
	char *bucket_region;
	time_t last_modified;
	time_t date; /* the server's clock (Date), -1 if absent */
	bool has_range;
	uint64_t range_first, range_last, range_total;
	bool etag_not_md5;
	enum s3_cksum cksum;
	char *cksum_value;
	bool cksum_composite;
	struct s3_kv *meta;	/* x-amz-meta-* headers, names lower case */
	size_t n_meta;

	struct s3_status st;
};

static void s3_client_check_done(struct s3_client *c);

static void s3_active_add(struct s3_client *c, struct s3_req_state *s)
{
	s->prev = NULL;
	s->next = c->active;
	if (c->active != NULL) {
		c->active->prev = s;
	}
	c->active = s;
}

static void s3_active_remove(struct s3_client *c, struct s3_req_state *s)
{
	if (s->prev != NULL) {
		s->prev->next = s->next;
	} else if (c->active == s) {
		c->active = s->next;
	}
	if (s->next != NULL) {
		s->next->prev = s->prev;
	}
	s->prev = s->next = NULL;
}

static void s3_req_start_attempt(struct s3_req_state *s);

/* ---- curl <-> tevent glue ------------------------------------------- */

static void s3_sock_handler(struct tevent_context *ev, struct tevent_fd *fde,
			    uint16_t flags, void *private_data)
{
	struct s3_sock *sock = private_data;
	struct s3_client *c = sock->c;
	int mask = 0, running = 0;

	(void)ev;
	(void)fde;
	if (flags & TEVENT_FD_READ) {
		mask |= CURL_CSELECT_IN;
	}
	if (flags & TEVENT_FD_WRITE) {
		mask |= CURL_CSELECT_OUT;
	}
	/* sock may be freed inside this call (CURL_POLL_REMOVE). */
	curl_multi_socket_action(c->multi, sock->fd, mask, &running);
	s3_client_check_done(c);
}

static int s3_sock_destructor(struct s3_sock *sock)
{
	TALLOC_FREE(sock->fde);
	return 0;
}

static int s3_curl_socket_cb(CURL *easy, curl_socket_t fd, int what,
			     void *userp, void *socketp)
{
	struct s3_client *c = userp;
	struct s3_sock *sock = socketp;
	uint16_t flags = 0;

	(void)easy;
	if (what == CURL_POLL_REMOVE) {
		/* curl forgets its assignment for fd itself. */
		TALLOC_FREE(sock);
		return 0;
	}
	if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) {
		flags |= TEVENT_FD_READ;
	}
	if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) {
		flags |= TEVENT_FD_WRITE;
	}
	if (sock == NULL) {
		if (c->closing) {
			return 0;
		}
		sock = talloc_zero(c, struct s3_sock);
		if (sock == NULL) {
			return -1;
		}
		sock->c = c;
		sock->fd = fd;
		sock->fde = tevent_add_fd(c->ev, sock, fd, flags,
					  s3_sock_handler, sock);
		if (sock->fde == NULL) {
			talloc_free(sock);
			return -1;
		}
		talloc_set_destructor(sock, s3_sock_destructor);
		curl_multi_assign(c->multi, fd, sock);
		return 0;
	}
	tevent_fd_set_flags(sock->fde, flags);
	return 0;
}

static void s3_curl_timer_handler(struct tevent_context *ev,
				  struct tevent_timer *te, struct timeval now,
				  void *private_data)
{
	struct s3_client *c = private_data;
	int running = 0;

	(void)ev;
	(void)te;
	(void)now;
	c->curl_timer = NULL; /* tevent frees a timer once it fired */
	curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	s3_client_check_done(c);
}

static int s3_curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct s3_client *c = userp;

	(void)multi;
	TALLOC_FREE(c->curl_timer);
	if (timeout_ms < 0 || c->closing) {
		return 0;
	}
	/* Even a 0 ms timeout goes through tevent: never re-enter curl. */
	c->curl_timer = tevent_add_timer(
		c->ev, c,
		tevent_timeval_current_ofs(timeout_ms / 1000,
					   (timeout_ms % 1000) * 1000),
		s3_curl_timer_handler, c);
	return c->curl_timer != NULL ? 0 : -1;
}

/* ---- client ----------------------------------------------------------- */

static void s3_free_secret(const char *p);

static int s3_client_destructor(struct s3_client *c)
{
	struct s3_req_state *s, *next;

	c->closing = true;
	TALLOC_FREE(c->curl_timer);
	for (s = c->active; s != NULL; s = next) {
		next = s->next;
		if (s->in_multi) {
			curl_multi_remove_handle(c->multi, s->easy);
			s->in_multi = false;
		}
		TALLOC_FREE(s->retry_timer);
		s->c = NULL;
		s->prev = s->next = NULL;
		s->st.err = ECANCELED;
		s3_status_set(&s->st, "client shut down", NULL, NULL);
		tevent_req_error(s->req, ECANCELED);
	}
	c->active = NULL;
	curl_multi_cleanup(c->multi);
	/* Secrets do not stay in freed memory. */
	s3_free_secret(c->cfg.creds.secret_key);
	s3_free_secret(c->cfg.creds.session_token);
	c->cfg.creds.secret_key = c->cfg.creds.session_token = NULL;
	return 0;
}

/* talloc_free takes a const-less pointer; our config strings are const. */
static void s3_free_const(const char *p)
{
	talloc_free((void *)(uintptr_t)p);
}

/* A secret key or session token: wiped, then freed. */
static void s3_free_secret(const char *p)
{
	if (p != NULL) {
		explicit_bzero((void *)(uintptr_t)p, strlen(p));
	}
	s3_free_const(p);
}

/*
 * curl_global_init once per process, never undone: it is not safe to run
 * while another thread uses curl (the engine has two clients in two
 * threads), and undoing it per client would redo it per client.
 */
static pthread_once_t s3_curl_once = PTHREAD_ONCE_INIT;
static CURLcode s3_curl_init_result;

static void s3_curl_init(void)
{
	s3_curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/*
 * An option libcurl refused: one this libcurl lacks (too old, or built
 * without it), a value it will not take, or no memory.  A client or
 * request set up only in part (no timeout, another method, no TLS
 * checks, no socket callbacks) must not be used: the caller fails with
 * the errno returned, and the log line names the option.
 */
int s3_setopt_errno(int curlcode)
{
	switch ((CURLcode)curlcode) {
	case CURLE_OUT_OF_MEMORY:
		return ENOMEM;
	case CURLE_UNKNOWN_OPTION:
	case CURLE_NOT_BUILT_IN:
		return ENOTSUP;
	case CURLE_BAD_FUNCTION_ARGUMENT:
		return EINVAL;
	default:
		return EIO;
	}
}

static int s3_easy_setopt_failed(struct s3_status *st, const char *opt,
				 CURLcode rc)
{
	bfs_log(BFS_LOG_ERR, "bucketfs: libcurl refused %s for an S3 "
		"request: %s", opt, curl_easy_strerror(rc));
	s3_status_set(st, curl_easy_strerror(rc), opt, NULL);
	return s3_setopt_errno(rc);
}

static int s3_multi_setopt_failed(const char *opt, CURLMcode rc)
{
	bfs_log(BFS_LOG_ERR, "bucketfs: libcurl refused %s for the S3 "
		"client: %s", opt, curl_multi_strerror(rc));
	switch (rc) {
	case CURLM_OUT_OF_MEMORY:
		return ENOMEM;
	case CURLM_UNKNOWN_OPTION:
		return ENOTSUP;
	default:
		return EIO;
	}
}

/*
 * Set option opt of request s's easy handle, unless an earlier one
 * failed (*err is then its errno): a run of them is checked once, and
 * the first refusal is the one reported.
 */
#define S3_EASY_SETOPT(s, err, opt, val)				\
	do {								\
		CURLcode rc_;						\
									\
		if (*(err) != 0) {					\
			break;						\
		}							\
		rc_ = curl_easy_setopt((s)->easy, opt, val);		\
		if (rc_ != CURLE_OK) {					\
			*(err) = s3_easy_setopt_failed(&(s)->st, #opt,	\
						       rc_);		\
		}							\
	} while (0)

/* The same for client c's multi handle. */
#define S3_MULTI_SETOPT(c, err, opt, val)				\
	do {								\
		CURLMcode rc_;						\
									\
		if (*(err) != 0) {					\
			break;						\
		}							\
		rc_ = curl_multi_setopt((c)->multi, opt, val);		\
		if (rc_ != CURLM_OK) {					\
			*(err) = s3_multi_setopt_failed(#opt, rc_);	\
		}							\
	} while (0)

int s3_client_set_credentials(struct s3_client *c,
			      const struct s3_credentials *creds)
{
	char *a = talloc_strdup(c, creds->access_key);
	char *s = talloc_strdup(c, creds->secret_key);
	char *t = creds->session_token ? talloc_strdup(c, creds->session_token) :
					 NULL;

	if (a == NULL || s == NULL || (creds->session_token && t == NULL)) {
		talloc_free(a);
		talloc_free(s);
		talloc_free(t);
		return ENOMEM;
	}
	s3_free_const(c->cfg.creds.access_key);
	s3_free_secret(c->cfg.creds.secret_key);
	s3_free_secret(c->cfg.creds.session_token);
	c->cfg.creds.access_key = a;
	c->cfg.creds.secret_key = s;
	c->cfg.creds.session_token = t;
	return 0;
}

void s3_client_set_limits(struct s3_client *c, unsigned request_timeout_ms,
			  unsigned max_retries)
{
	c->cfg.request_timeout_ms = request_timeout_ms != 0 ? request_timeout_ms
							    : 60000;
	c->cfg.max_retries = max_retries;
}

void s3_client_set_max_requests(struct s3_client *c, unsigned max)
{
	long m = max > 0 ? (long)max : 16;
	int err = 0;

	if ((unsigned)m == c->cfg.max_requests) {
		return;
	}
	/* Requests over the limit wait in curl's queue for a connection. */
	S3_MULTI_SETOPT(c, &err, CURLMOPT_MAX_TOTAL_CONNECTIONS, m);
	S3_MULTI_SETOPT(c, &err, CURLMOPT_MAX_HOST_CONNECTIONS, m);
	S3_MULTI_SETOPT(c, &err, CURLMOPT_MAXCONNECTS, m);
	if (err != 0) {
		/*
		 * The client goes on with what curl has (the old limit, or
		 * part of the new one); the next reload tries again.
		 */
		bfs_log(BFS_LOG_ERR, "bucketfs: 'bucketfs:max requests = %ld' "
			"is not applied: %s", m, strerror(err));
		return;
	}
	c->cfg.max_requests = (unsigned)m;
}

bool s3_region_to_follow(const char *current, const char *found)
{
	return found != NULL && found[0] != '\0' &&
	       (current == NULL || strcmp(found, current) != 0) &&
	       strspn(found, "abcdefghijklmnopqrstuvwxyz0123456789-") ==
		       strlen(found);
}

struct s3_client *s3_client_new(TALLOC_CTX *mem_ctx, struct tevent_context *ev,
				const struct s3_client_config *cfg)
{
	struct s3_client *c;
	CURLU *u = NULL;
	char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
	const char *endpoint;
	long max = cfg->max_requests ? (long)cfg->max_requests : 16;
	size_t plen;
	int err = 0;

	if (cfg->bucket == NULL || cfg->bucket[0] == '\0' ||
	    cfg->region == NULL ||
	    (!cfg->anonymous && (cfg->creds.access_key == NULL ||
				 cfg->creds.secret_key == NULL))) {
		errno = EINVAL;
		return NULL;
	}
	c = talloc_zero(mem_ctx, struct s3_client);
	if (c == NULL) {
		errno = ENOMEM;
		return NULL;
	}
	c->ev = ev;
	c->cfg = *cfg;
	c->cfg.region = talloc_strdup(c, cfg->region);
	c->cfg.bucket = talloc_strdup(c, cfg->bucket);
	c->cfg.ca_file = cfg->ca_file != NULL && cfg->ca_file[0] != '\0' ?
				 talloc_strdup(c, cfg->ca_file) :
				 NULL;
	c->cfg.creds.access_key = talloc_strdup(c, cfg->creds.access_key);
	c->cfg.creds.secret_key = talloc_strdup(c, cfg->creds.secret_key);
	c->cfg.creds.session_token =
		cfg->creds.session_token ?
			talloc_strdup(c, cfg->creds.session_token) :
			NULL;
	c->cfg.max_requests = (unsigned)max;
	if (c->cfg.connect_timeout_ms == 0) {
		c->cfg.connect_timeout_ms = 5000;
	}
	if (c->cfg.request_timeout_ms == 0) {
		c->cfg.request_timeout_ms = 60000;
	}
	if (c->cfg.retry_base_ms == 0) {
		c->cfg.retry_base_ms = 100;
	}

	endpoint = cfg->endpoint != NULL && cfg->endpoint[0] != '\0' ?
			   cfg->endpoint :
			   talloc_asprintf(c, "https://s3.%s.amazonaws.com",
					   cfg->region);
	c->cfg.endpoint = talloc_strdup(c, endpoint);

	/* Let curl's URL parser, not ours, take the endpoint apart. */
	u = curl_url();
	if (u == NULL || curl_url_set(u, CURLUPART_URL, endpoint, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK ||
	    (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)) {
		errno = EINVAL;
		goto fail;
	}
	(void)curl_url_get(u, CURLUPART_PORT, &port, 0);
	c->scheme = talloc_strdup(c, scheme);
	/* Virtual-hosted style puts the bucket in the host name. */
	c->host = talloc_asprintf(c, "%s%s%s%s%s",
				  cfg->path_style ? "" : cfg->bucket,
				  cfg->path_style ? "" : ".", host,
				  port != NULL ? ":" : "",
				  port != NULL ? port : "");
	plen = strlen(path);
	while (plen > 0 && path[plen - 1] == '/') {
		plen--;
	}
	c->base_path = talloc_strndup(c, path, plen);
	if (c->host == NULL || c->base_path == NULL || c->scheme == NULL) {
		errno = ENOMEM;
		goto fail;
	}

	if (pthread_once(&s3_curl_once, s3_curl_init) != 0 ||
	    s3_curl_init_result != CURLE_OK) {
		errno = ENOMEM;
		goto fail;
	}
	c->multi = curl_multi_init();
	if (c->multi == NULL) {
		errno = ENOMEM;
		goto fail;
	}
	talloc_set_destructor(c, s3_client_destructor);
	S3_MULTI_SETOPT(c, &err, CURLMOPT_SOCKETFUNCTION, s3_curl_socket_cb);
	S3_MULTI_SETOPT(c, &err, CURLMOPT_SOCKETDATA, c);
	S3_MULTI_SETOPT(c, &err, CURLMOPT_TIMERFUNCTION, s3_curl_timer_cb);
	S3_MULTI_SETOPT(c, &err, CURLMOPT_TIMERDATA, c);
	/* The concurrency bound: curl queues what is over it. */
	S3_MULTI_SETOPT(c, &err, CURLMOPT_MAX_TOTAL_CONNECTIONS, max);
	S3_MULTI_SETOPT(c, &err, CURLMOPT_MAX_HOST_CONNECTIONS, max);
	S3_MULTI_SETOPT(c, &err, CURLMOPT_MAXCONNECTS, max);
	if (err != 0) {
		errno = err;
		goto fail;
	}

	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_free(path);
	curl_url_cleanup(u);
	return c;
fail:
	err = errno; /* what the cleanup (curl_multi_cleanup) must not undo */
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_free(path);
	if (u != NULL) {
		curl_url_cleanup(u);
	}
	talloc_free(c);
	errno = err;
	return NULL;
}

struct s3_client *s3_client_new_like(TALLOC_CTX *mem_ctx,
				     struct tevent_context *ev,
				     const struct s3_client *model)
{
	struct s3_client *c = s3_client_new(mem_ctx, ev, &model->cfg);

	if (c != NULL) {
		/* What the model learnt of the server holds for us too. */
		c->no_upload_cksum = model->no_upload_cksum;
	}
	return c;
}

const struct s3_client_counters *s3_client_counters(const struct s3_client *c)
{
	return &c->counters;
}

const char *s3_client_bucket(const struct s3_client *c)
{
	return c->cfg.bucket;
}

bool s3_client_upload_cksum(const struct s3_client *c)
{
	return !c->no_upload_cksum;
}

void s3_client_upload_cksum_off(struct s3_client *c, const struct s3_status *st)
{
	if (!c->no_upload_cksum) {
		bfs_log(BFS_LOG_WARNING, "bucketfs: %s refuses S3's additional checksums "
			"(%s: %s); uploads carry Content-MD5 only",
			c->cfg.endpoint, st->code, st->message);
	}
	c->no_upload_cksum = true;
}

bool s3_unreachable(int err, const struct s3_status *st)
{
	if (st != NULL && st->http_status >= 500) {
		return true;
	}
	if (st != NULL && st->http_status != 0) {
		return false; /* an answer: S3 is there */
	}
	return err == ECONNREFUSED || err == EHOSTUNREACH ||
	       err == ETIMEDOUT || err == ECONNRESET || err == ENETUNREACH;
}

bool s3_cksum_refused(const struct s3_status *st)
{
	return (st->http_status == 400 || st->http_status == 501) &&
	       (strcmp(st->code, "InvalidRequest") == 0 ||
		strcmp(st->code, "InvalidArgument") == 0 ||
		strcmp(st->code, "NotImplemented") == 0) &&
	       strcasestr(st->message, "checksum") != NULL;
}

void s3_status_set(struct s3_status *st, const char *code,
		   const char *message, const char *request_id)
{
	if (code != NULL) {
		snprintf(st->code, sizeof(st->code), "%s", code);
	}
	if (message != NULL) {
		snprintf(st->message, sizeof(st->message), "%s", message);
	}
	if (request_id != NULL) {
		snprintf(st->request_id, sizeof(st->request_id), "%s",
			 request_id);
	}
}

/* ---- error mapping ------------------------------------------------------ */

int s3_errno_from_code(const char *code, long http_status)
{
	static const struct {
		const char *code;
		int err;
	} map[] = {
		{"NoSuchKey", ENOENT},
		{"NoSuchBucket", ENOENT},
		{"NoSuchUpload", ENOENT},
		{"AccessDenied", EACCES},
		{"AllAccessDisabled", EACCES},
		{"SignatureDoesNotMatch", EACCES},
		{"InvalidAccessKeyId", EACCES},
		{"InvalidToken", EACCES},
		{"ExpiredToken", EACCES},
		{"TokenRefreshRequired", EACCES},
		{"PreconditionFailed", ESTALE},
		{"ConditionalRequestConflict", ESTALE},
		{"InvalidRange", EINVAL},
		{"EntityTooLarge", EFBIG},
		{"EntityTooSmall", EINVAL},
		{"InvalidBucketName", EINVAL},
		{"KeyTooLongError", ENAMETOOLONG},
		{"PermanentRedirect", ENXIO},
		{"AuthorizationHeaderMalformed", ENXIO},
		{"SlowDown", EBUSY},
		{"ServiceUnavailable", EBUSY},
		{"RequestTimeout", ETIMEDOUT},
		{"InternalError", EIO},
		{"BadDigest", EIO},
		{"InvalidDigest", EIO},
		{"XAmzContentSHA256Mismatch", EIO},
		{"NotImplemented", ENOSYS},
		{"MethodNotAllowed", EOPNOTSUPP},
	};
	size_t i;

	for (i = 0; code != NULL && i < sizeof(map) / sizeof(map[0]); i++) {
		if (strcmp(code, map[i].code) == 0) {
			return map[i].err;
		}
	}
	switch (http_status) {
	case 301:
	case 307:
		return ENXIO; /* bucket lives in another region */
	case 400:
		return EINVAL;
	case 401:
	case 403:
		return EACCES;
	case 404:
		return ENOENT;
	case 409:
		return EBUSY;
	case 412:
		return ESTALE;
	case 416:
		return EINVAL;
	case 405:
		return EOPNOTSUPP;
	case 501:
		return ENOSYS;
	case 503:
		return EBUSY;
	default:
		return EIO;
	}
}

static int s3_errno_from_curl(CURLcode rc)
{
	switch (rc) {
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		return EHOSTUNREACH;
	case CURLE_COULDNT_CONNECT:
		return ECONNREFUSED;
	case CURLE_OPERATION_TIMEDOUT:
		return ETIMEDOUT;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CACERT_BADFILE:
		return EPROTO;
	case CURLE_OUT_OF_MEMORY:
		return ENOMEM;
	case CURLE_URL_MALFORMAT:
		return EINVAL;
	default:
		return ECONNRESET;
	}
}

static bool s3_curl_retryable(CURLcode rc, bool idempotent)
{
	switch (rc) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_COULDNT_RESOLVE_HOST:
		return true; /* nothing reached the server */
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_PARTIAL_FILE:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_BAD_CONTENT_ENCODING:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
		return idempotent;
	default:
		return false;
	}
}

static bool s3_http_retryable(long status, const char *code, bool idempotent)
{
	if (status == 503 || (code != NULL && strcmp(code, "SlowDown") == 0)) {
		return true; /* the server did not act on it */
	}
	if (!idempotent) {
		return false;
	}
	if (status == 500 || status == 502 || status == 504) {
		return true;
	}
	return code != NULL && (strcmp(code, "InternalError") == 0 ||
				strcmp(code, "RequestTimeout") == 0);
}

/* ---- one request --------------------------------------------------------- */

/*
 * Keep a user-metadata header (at most S3_RESP_META_MAX of them, each
 * short: an object may carry 2 KiB of metadata, and only a few names
 * mean anything to us).  No memory: the header is dropped, as a
 * malformed one would be.
 */
static void s3_keep_meta(struct s3_req_state *s, const char *name,
			 size_t nlen, const char *v, size_t vlen)
{
	struct s3_kv *m;
	char *n;

	if (s->n_meta >= S3_RESP_META_MAX || nlen > 128 || vlen > 256) {
		return;
	}
	if (s->meta == NULL) {
		s->meta = talloc_zero_array(s, struct s3_kv, S3_RESP_META_MAX);
		if (s->meta == NULL) {
			return;
		}
	}
	m = &s->meta[s->n_meta];
	n = talloc_strndup(s->meta, name, nlen);
	m->value = talloc_strndup(s->meta, v, vlen);
	if (n == NULL || m->value == NULL) {
		return;
	}
	for (size_t i = 0; i < nlen; i++) {
		n[i] = (char)tolower((unsigned char)n[i]);
	}
	m->name = n;
	s->n_meta++;
}

static size_t s3_on_header(char *buf, size_t size, size_t n, void *ud)
{
	struct s3_req_state *s = ud;
	size_t len = size * n;
	const char *colon = memchr(buf, ':', len);
	size_t nlen, vlen;
	const char *v;

	if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
		/* A new response (after 100-continue): forget the last. */
		TALLOC_FREE(s->etag);
		TALLOC_FREE(s->request_id);
		TALLOC_FREE(s->cksum_value);
		TALLOC_FREE(s->bucket_region);
		s->last_modified = -1;
		s->date = -1;
		s->has_range = false;
		s->etag_not_md5 = false;
		s->cksum = S3_CKSUM_NONE;
		s->cksum_composite = false;
		TALLOC_FREE(s->meta);
		s->n_meta = 0;
		return len;
	}
	if (colon == NULL) {
		return len;
	}
	nlen = (size_t)(colon - buf);
	v = colon + 1;
	while (v < buf + len && (*v == ' ' || *v == '\t')) {
		v++;
	}
	vlen = (size_t)(buf + len - v);
	while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' ||
			    v[vlen - 1] == ' ')) {
		vlen--;
	}
	if (nlen == 4 && strncasecmp(buf, "ETag", 4) == 0) {
		if (vlen >= 2 && v[0] == '"' && v[vlen - 1] == '"') {
			v++;
			vlen -= 2;
		}
		talloc_free(s->etag);
		s->etag = talloc_strndup(s, v, vlen);
	} else if (nlen == 19 &&
		   strncasecmp(buf, "x-amz-bucket-region", 19) == 0) {
		talloc_free(s->bucket_region);
		s->bucket_region = talloc_strndup(s, v, vlen);
	} else if (nlen == 16 && strncasecmp(buf, "x-amz-request-id", 16) == 0) {
		talloc_free(s->request_id);
		s->request_id = talloc_strndup(s, v, vlen);
	} else if (nlen == 13 && strncasecmp(buf, "Content-Range", 13) == 0) {
		char *r = talloc_strndup(s, v, vlen);
		unsigned long long a, b, t;
		int used = 0;

		/* Anything but the full form ("bytes 0-9/100") counts as none. */
		s->has_range = r != NULL &&
			       sscanf(r, "bytes %llu-%llu/%llu%n", &a, &b, &t,
				      &used) == 3 &&
			       (size_t)used == vlen && a <= b && b < t;
		if (s->has_range) {
			s->range_first = a;
			s->range_last = b;
			s->range_total = t;
		}
		talloc_free(r);
	} else if ((nlen == 28 &&
		    strncasecmp(buf, "x-amz-server-side-encryption", 28) == 0 &&
		    vlen >= 7 && strncasecmp(v, "aws:kms", 7) == 0) ||
		   (nlen == 47 &&
		    strncasecmp(buf, "x-amz-server-side-encryption-customer-"
				"algorithm", 47) == 0)) {
		/* SSE-KMS and SSE-C: the ETag is no digest of the bytes. */
		s->etag_not_md5 = true;
	} else if (nlen == 19 &&
		   strncasecmp(buf, "x-amz-checksum-type", 19) == 0) {
		s->cksum_composite = vlen == 9 &&
				     strncasecmp(v, "COMPOSITE", 9) == 0;
	} else if (s3_cksum_of_header(buf, nlen) != S3_CKSUM_NONE &&
		   s->cksum == S3_CKSUM_NONE) {
		s->cksum = s3_cksum_of_header(buf, nlen);
		s->cksum_value = talloc_strndup(s, v, vlen);
		/* A multipart object's composite value ends in "-PARTS". */
		if (memchr(v, '-', vlen) != NULL) {
			s->cksum_composite = true;
		}
	} else if (nlen == 13 && strncasecmp(buf, "Last-Modified", 13) == 0) {
		char *d = talloc_strndup(s, v, vlen);
		if (d != NULL) {
			s->last_modified = curl_getdate(d, NULL);
			talloc_free(d);
		}
	} else if (nlen == 4 && strncasecmp(buf, "Date", 4) == 0) {
		char *d = talloc_strndup(s, v, vlen);
		if (d != NULL) {
			s->date = curl_getdate(d, NULL);
			talloc_free(d);
		}
	} else if (nlen > 11 && strncasecmp(buf, "x-amz-meta-", 11) == 0) {
		s3_keep_meta(s, buf, nlen, v, vlen);
	}
	return len;
}

static size_t s3_on_body(char *buf, size_t size, size_t n, void *ud)
{
	struct s3_req_state *s = ud;
	size_t len = size * n;
	long status = 0;

	if (s->c != NULL) {
		s->c->counters.bytes_in += len;
	}
	curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
	if (status < 200 || status > 299) {
		size_t keep = S3_MAX_ERROR_BODY - s->errbody_len;
		if (keep > len) {
			keep = len;
		}
		if (keep > 0) {
			uint8_t *p = talloc_realloc(s, s->errbody, uint8_t,
						    s->errbody_len + keep);
			if (p == NULL) {
				return 0;
			}
			memcpy(p + s->errbody_len, buf, keep);
			s->errbody = p;
			s->errbody_len += keep;
		}
		return len;
	}
	if (s->r.sink != NULL) {
		int rc = s->r.sink->write(s->r.sink->priv, buf, len);
		if (rc != 0) {
			s->sink_err = rc;
			return 0; /* curl aborts with CURLE_WRITE_ERROR */
		}
		return len;
	}
	if (s->body_len + len > S3_MAX_COLLECTED_BODY) {
		s->sink_err = EFBIG;
		return 0;
	}
	{
		uint8_t *p = talloc_realloc(s, s->body, uint8_t,
					    s->body_len + len);
		if (p == NULL) {
			s->sink_err = ENOMEM;
			return 0;
		}
		memcpy(p + s->body_len, buf, len);
		s->body = p;
		s->body_len += len;
	}
	return len;
}

static int s3_req_state_destructor(struct s3_req_state *s)
{
	if (s->c != NULL) {
		if (s->in_multi) {
			curl_multi_remove_handle(s->c->multi, s->easy);
		}
		s3_active_remove(s->c, s);
	}
	if (s->easy != NULL) {
		curl_easy_cleanup(s->easy);
	}
	curl_slist_free_all(s->hdrs);
	return 0;
}

static struct s3_kv *s3_copy_kv(TALLOC_CTX *ctx, const struct s3_kv *kv,
				size_t n)
{
	struct s3_kv *out = talloc_array(ctx, struct s3_kv, n + 1);
	size_t i;

	if (out == NULL) {
		return NULL;
	}
	for (i = 0; i < n; i++) {
		out[i].name = talloc_strdup(out, kv[i].name);
		out[i].value = talloc_strdup(out, kv[i].value ? kv[i].value : "");
		if (out[i].name == NULL || out[i].value == NULL) {
			talloc_free(out);
			return NULL;
		}
	}
	return out;
}

struct tevent_req *s3_request_send(TALLOC_CTX *mem_ctx,
				   struct tevent_context *ev,
				   struct s3_client *c,
				   const struct s3_request *r)
{
	struct tevent_req *req;
	struct s3_req_state *s;
	char *path, *query;
	int err = 0;

	req = tevent_req_create(mem_ctx, &s, struct s3_req_state);
	if (req == NULL) {
		return NULL;
	}
	s->ev = ev;
	s->req = req;
	s->c = c;
	s->r = *r;
	s->last_modified = -1;
	s->date = -1;
	/* Callers' callbacks must not run under curl: defer them. */
	tevent_req_defer_callback(req, ev);

	if (ev != c->ev) {
		/* curl's sockets are watched on c->ev only. */
		tevent_req_error(req, EINVAL);
		return tevent_req_post(req, ev);
	}
	s->r.method = talloc_strdup(s, r->method);
	s->r.key = r->key ? talloc_strdup(s, r->key) : NULL;
	s->r.query = s3_copy_kv(s, r->query, r->n_query);
	s->r.headers = s3_copy_kv(s, r->headers, r->n_headers);
	if (s->r.method == NULL || (r->key && s->r.key == NULL) ||
	    s->r.query == NULL || s->r.headers == NULL) {
		tevent_req_oom(req);
		return tevent_req_post(req, ev);
	}

	/* The canonical URI is the path we send, byte for byte. */
	if (c->cfg.path_style) {
		path = talloc_asprintf(s, "%s/%s", c->base_path,
				       s3_uri_encode(s, c->cfg.bucket, false));
		if (r->key != NULL) {
			path = talloc_asprintf(s, "%s/%s", path,
					       s3_uri_encode(s, r->key, true));
		}
	} else {
		path = talloc_asprintf(s, "%s/%s", c->base_path,
				       r->key ? s3_uri_encode(s, r->key, true) :
						"");
	}
	query = s3_canonical_query(s, r->query, r->n_query);
	if (path == NULL || query == NULL) {
		tevent_req_oom(req);
		return tevent_req_post(req, ev);
	}
	s->url = talloc_asprintf(s, "%s://%s%s%s%s", c->scheme, c->host, path,
				 query[0] ? "?" : "", query);
	s->easy = curl_easy_init();
	if (s->url == NULL || s->easy == NULL) {
		tevent_req_oom(req);
		return tevent_req_post(req, ev);
	}
	talloc_set_destructor(s, s3_req_state_destructor);
	s3_active_add(c, s);

	S3_EASY_SETOPT(s, &err, CURLOPT_URL, s->url);
	/*
	 * A key is a name, not a path: "a/../b" is its own object.  Left to
	 * itself curl would squash the dots and fetch another key than the
	 * one signed and meant.
	 */
	S3_EASY_SETOPT(s, &err, CURLOPT_PATH_AS_IS, 1L);
	S3_EASY_SETOPT(s, &err, CURLOPT_PRIVATE, s);
	S3_EASY_SETOPT(s, &err, CURLOPT_NOSIGNAL, 1L);
	S3_EASY_SETOPT(s, &err, CURLOPT_ERRORBUFFER, s->errbuf);
	S3_EASY_SETOPT(s, &err, CURLOPT_HEADERFUNCTION, s3_on_header);
	S3_EASY_SETOPT(s, &err, CURLOPT_HEADERDATA, s);
	S3_EASY_SETOPT(s, &err, CURLOPT_WRITEFUNCTION, s3_on_body);
	S3_EASY_SETOPT(s, &err, CURLOPT_WRITEDATA, s);
	S3_EASY_SETOPT(s, &err, CURLOPT_CONNECTTIMEOUT_MS,
		       (long)c->cfg.connect_timeout_ms);
	S3_EASY_SETOPT(s, &err, CURLOPT_TIMEOUT_MS,
		       (long)c->cfg.request_timeout_ms);
	S3_EASY_SETOPT(s, &err, CURLOPT_TCP_KEEPALIVE, 1L);
	/* Fewer, larger socket reads: block-sized bodies are the norm. */
	S3_EASY_SETOPT(s, &err, CURLOPT_BUFFERSIZE, 512L * 1024);
	S3_EASY_SETOPT(s, &err, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
	S3_EASY_SETOPT(s, &err, CURLOPT_SSL_VERIFYPEER,
		       c->cfg.verify_tls ? 1L : 0L);
	S3_EASY_SETOPT(s, &err, CURLOPT_SSL_VERIFYHOST,
		       c->cfg.verify_tls ? 2L : 0L);
	if (c->cfg.ca_file != NULL) {
		S3_EASY_SETOPT(s, &err, CURLOPT_CAINFO, c->cfg.ca_file);
	}
	S3_EASY_SETOPT(s, &err, CURLOPT_PROTOCOLS_STR, "http,https");
	if (strcmp(r->method, "HEAD") == 0) {
		S3_EASY_SETOPT(s, &err, CURLOPT_NOBODY, 1L);
	} else if (strcmp(r->method, "GET") != 0) {
		S3_EASY_SETOPT(s, &err, CURLOPT_CUSTOMREQUEST, s->r.method);
	}
	if (r->body != NULL || strcmp(r->method, "PUT") == 0 ||
	    strcmp(r->method, "POST") == 0) {
		S3_EASY_SETOPT(s, &err, CURLOPT_POSTFIELDS,
			       r->body ? r->body : "");
		S3_EASY_SETOPT(s, &err, CURLOPT_POSTFIELDSIZE_LARGE,
			       (curl_off_t)r->body_len);
	}
	if (err != 0) {
		/* Not sent: nothing of it reached S3. */
		tevent_req_error(req, err);
		return tevent_req_post(req, ev);
	}

	s3_req_start_attempt(s);
	if (!tevent_req_is_in_progress(req)) {
		return tevent_req_post(req, ev);
	}
	return req;
}

static void s3_req_fail(struct s3_req_state *s, int err)
{
	if (s->c != NULL) {
		s->c->counters.failures++;
	}
	s->st.err = err;
	tevent_req_error(s->req, err);
}

/* Sign and (re)submit.  Runs from send() or a retry timer, never under curl. */
static void s3_req_start_attempt(struct s3_req_state *s)
{
	struct s3_client *c = s->c;
	TALLOC_CTX *tmp = talloc_new(s);
	struct s3_kv *h;
	size_t nh = 0, i;
	char date[17], hash[65], *auth, *canon_uri;
	const char *q;
	int err = 0;

	if (tmp == NULL) {
		s3_req_fail(s, ENOMEM);
		return;
	}
	s->attempt++;
	s->http_status = 0;
	TALLOC_FREE(s->body);
	TALLOC_FREE(s->errbody);
	s->body_len = s->errbody_len = 0;
	s->sink_err = 0;
	if (s->r.sink != NULL && s->r.sink->begin != NULL) {
		int rc = s->r.sink->begin(s->r.sink->priv);
		if (rc != 0) {
			talloc_free(tmp);
			s3_req_fail(s, rc);
			return;
		}
	}

	s3_amz_date(time(NULL), date);
	if (s->r.body != NULL) {
		s3_sha256_hex(s->r.body, s->r.body_len, hash);
	} else {
		memcpy(hash, S3_EMPTY_SHA256, sizeof(hash));
	}
	h = talloc_array(tmp, struct s3_kv, s->r.n_headers + 5);
	if (h == NULL) {
		talloc_free(tmp);
		s3_req_fail(s, ENOMEM);
		return;
	}
	h[nh++] = (struct s3_kv){"Host", c->host};
	h[nh++] = (struct s3_kv){"x-amz-date", date};
	h[nh++] = (struct s3_kv){"x-amz-content-sha256", hash};
	if (c->cfg.creds.session_token != NULL && !c->cfg.anonymous) {
		h[nh++] = (struct s3_kv){"x-amz-security-token",
					 c->cfg.creds.session_token};
	}
	if (c->cfg.requester_pays) {
		/* Without it a requester-pays bucket answers 403. */
		h[nh++] = (struct s3_kv){"x-amz-request-payer", "requester"};
	}
	for (i = 0; i < s->r.n_headers; i++) {
		h[nh++] = s->r.headers[i];
	}

	/* The path part of our URL is the canonical URI. */
	canon_uri = talloc_strdup(tmp, strstr(s->url, "://") + 3);
	canon_uri = strchr(canon_uri, '/');
	q = strchr(canon_uri, '?');
	if (q != NULL) {
		canon_uri[q - canon_uri] = '\0';
	}
	{
		const struct s3_sigv4_input in = {
			.method = s->r.method,
			.canonical_uri = canon_uri,
			.query = s->r.query,
			.n_query = s->r.n_query,
			.headers = h,
			.n_headers = nh,
			.payload_sha256 = hash,
			.region = c->cfg.region,
			.amz_date = date,
		};
		/* A public bucket takes requests without a signature. */
		auth = c->cfg.anonymous ?
			       NULL :
			       s3_sigv4_authorization(tmp, &in, &c->cfg.creds);
	}
	if (auth == NULL && !c->cfg.anonymous) {
		talloc_free(tmp);
		s3_req_fail(s, ENOMEM);
		return;
	}

	curl_slist_free_all(s->hdrs);
	s->hdrs = NULL;
	for (i = 0; i < nh; i++) {
		char *line = talloc_asprintf(tmp, "%s: %s", h[i].name,
					     h[i].value);
		struct curl_slist *l = line ? curl_slist_append(s->hdrs, line) :
					      NULL;
		if (l == NULL) {
			talloc_free(tmp);
			s3_req_fail(s, ENOMEM);
			return;
		}
		s->hdrs = l;
	}
	{
		char *line = auth != NULL ?
			talloc_asprintf(tmp, "Authorization: %s", auth) :
			talloc_strdup(tmp, "Authorization:");
		struct curl_slist *l = line ? curl_slist_append(s->hdrs, line) :
					      NULL;
		/* No 100-continue round trip; no form content type. */
		if (l != NULL) {
			s->hdrs = l;
			l = curl_slist_append(s->hdrs, "Expect:");
		}
		if (l != NULL) {
			s->hdrs = l;
			l = curl_slist_append(s->hdrs,
					      "Content-Type: application/octet-stream");
		}
		if (l == NULL) {
			talloc_free(tmp);
			s3_req_fail(s, ENOMEM);
			return;
		}
		s->hdrs = l;
	}
	talloc_free(tmp);
	S3_EASY_SETOPT(s, &err, CURLOPT_HTTPHEADER, s->hdrs);
	if (err != 0) {
		s3_req_fail(s, err);
		return;
	}

	if (curl_multi_add_handle(c->multi, s->easy) != CURLM_OK) {
		s3_req_fail(s, ENOMEM);
		return;
	}
	s->in_multi = true;
	c->counters.requests++;
	c->counters.bytes_out += s->r.body_len;
}

static void s3_req_retry_handler(struct tevent_context *ev,
				 struct tevent_timer *te, struct timeval now,
				 void *private_data)
{
	struct s3_req_state *s = private_data;

	(void)ev;
	(void)te;
	(void)now;
	s->retry_timer = NULL;
	s3_req_start_attempt(s);
}

/* Full jitter: uniform in [0, base * 2^attempt], capped at 20 s. */
static unsigned s3_backoff_ms(const struct s3_client *c, unsigned attempt)
{
	uint64_t cap = (uint64_t)c->cfg.retry_base_ms << (attempt < 16 ? attempt : 16);
	uint32_t r = 0;

	if (cap > 20000) {
		cap = 20000;
	}
	if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != sizeof(r)) {
		r = (uint32_t)random();
	}
	return (unsigned)(cap / 2 + r % (cap / 2 + 1));
}

static void s3_req_attempt_done(struct s3_req_state *s, CURLcode rc)
{
	struct s3_client *c = s->c;
	struct s3_error_doc *doc = NULL;
	bool retry = false;
	int err = 0;

	curl_multi_remove_handle(c->multi, s->easy);
	s->in_multi = false;
	curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &s->http_status);
	s->st.http_status = s->http_status;
	s->st.attempts = s->attempt;
	memset(s->st.code, 0, sizeof(s->st.code));
	memset(s->st.message, 0, sizeof(s->st.message));
	memset(s->st.request_id, 0, sizeof(s->st.request_id));
	memset(s->st.region, 0, sizeof(s->st.region));
	s3_status_set(&s->st, NULL, NULL, s->request_id);
	if (s->bucket_region != NULL) {
		snprintf(s->st.region, sizeof(s->st.region), "%s",
			 s->bucket_region);
	}

	if (rc == CURLE_WRITE_ERROR && s->sink_err != 0) {
		s3_status_set(&s->st, "response body refused",
			      strerror(s->sink_err), NULL);
		s3_req_fail(s, s->sink_err);
		return;
	}
	if (rc != CURLE_OK) {
		s3_status_set(&s->st, curl_easy_strerror(rc),
			      s->errbuf[0] ? s->errbuf : NULL, NULL);
		err = s3_errno_from_curl(rc);
		retry = s3_curl_retryable(rc, s->r.idempotent);
	} else if (s->http_status < 200 || s->http_status > 299) {
		if (s->errbody_len > 0 &&
		    s3_xml_parse_error(s, s->errbody, s->errbody_len, &doc) == 0) {
			s3_status_set(&s->st, doc->code, doc->message,
				      doc->request_id);
			if (doc->region != NULL && s->st.region[0] == '\0') {
				snprintf(s->st.region, sizeof(s->st.region),
					 "%s", doc->region);
			}
		} else {
			snprintf(s->st.code, sizeof(s->st.code), "HTTP %ld",
				 s->http_status);
		}
		err = s3_errno_from_code(doc ? doc->code : NULL,
					 s->http_status);
		retry = s3_http_retryable(s->http_status,
					  doc ? doc->code : NULL,
					  s->r.idempotent);
	} else if (s->r.sink != NULL && s->r.sink->end != NULL &&
		   (err = s->r.sink->end(s->r.sink->priv, &(struct s3_body_info){
			.http_status = s->http_status, .etag = s->etag,
			.has_range = s->has_range,
			.etag_not_md5 = s->etag_not_md5,
			.cksum = s->cksum_value != NULL ? s->cksum :
							  S3_CKSUM_NONE,
			.cksum_value = s->cksum_value,
			.cksum_composite = s->cksum_composite,
			.meta = s->meta, .n_meta = s->n_meta,
			.range_first = s->range_first,
			.range_last = s->range_last,
			.range_total = s->range_total})) != 0) {
		if (err == ESTALE) {
			/* Another version's answer to an If-Match: as a 412. */
			s3_status_set(&s->st, "PreconditionFailed",
				      "answered with another ETag than the "
				      "If-Match asked for",
				      NULL);
			retry = false;
		} else {
			/* A body curl took whole but that is not what we
			 * asked for: a proxy or server got it wrong; ask
			 * again. */
			s3_status_set(&s->st, "BadResponseBody",
				      err == EBADMSG ? "body failed its check "
						       "(checksum or document)" :
						       "not the range asked for",
				      NULL);
			retry = s->r.idempotent;
		}
	} else {
		/* Success; curl has checked Content-Length against the body. */
		s->st.err = 0;
		tevent_req_done(s->req);
		return;
	}

	if (retry && s->attempt <= c->cfg.max_retries) {
		unsigned ms = s3_backoff_ms(c, s->attempt - 1);
		c->counters.retries++;
		s->retry_timer = tevent_add_timer(
			s->ev, s,
			tevent_timeval_current_ofs(ms / 1000, (ms % 1000) * 1000),
			s3_req_retry_handler, s);
		if (s->retry_timer != NULL) {
			return;
		}
	}
	s3_req_fail(s, err);
}

static void s3_client_note_latency(struct s3_client *c, CURL *easy)
{
	static const uint64_t bounds[S3_LATENCY_N] = S3_LATENCY_BUCKETS_MS;
	curl_off_t us = 0;
	unsigned i;

	curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME_T, &us);
	for (i = 0; i < S3_LATENCY_N && (uint64_t)us > bounds[i] * 1000; i++) {
	}
	c->counters.latency[i]++;
	c->counters.latency_us += (uint64_t)us;
}

static void s3_client_check_done(struct s3_client *c)
{
	CURLMsg *msg;
	int left = 0;

	while ((msg = curl_multi_info_read(c->multi, &left)) != NULL) {
		struct s3_req_state *s = NULL;

		if (msg->msg != CURLMSG_DONE) {
			continue;
		}
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
		s3_client_note_latency(c, msg->easy_handle);
		if (s != NULL) {
			/* msg points into curl: read it before removing. */
			CURLcode rc = msg->data.result;
			s3_req_attempt_done(s, rc);
		}
	}
}

int s3_request_recv(struct tevent_req *req, TALLOC_CTX *mem_ctx,
		    struct s3_response **resp, struct s3_status *st)
{
	struct s3_req_state *s = tevent_req_data(req, struct s3_req_state);
	enum tevent_req_state state;
	uint64_t err = 0;
	int ret = 0;

	if (tevent_req_is_error(req, &state, &err)) {
		ret = err != 0 ? (int)err : EIO;
	}
	if (st != NULL) {
		*st = s->st;
		st->err = ret;
	}
	if (ret == 0 && resp != NULL) {
		struct s3_response *r = talloc_zero(mem_ctx, struct s3_response);
		curl_off_t cl = -1;
		if (r == NULL) {
			tevent_req_received(req);
			return ENOMEM;
		}
		r->http_status = s->http_status;
		r->body = talloc_steal(r, s->body);
		r->body_len = s->body_len;
		r->etag = talloc_steal(r, s->etag);
		r->request_id = talloc_steal(r, s->request_id);
		r->last_modified = s->last_modified;
		r->date = s->date;
		r->meta = talloc_steal(r, s->meta);
		r->n_meta = s->n_meta;
		curl_easy_getinfo(s->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
		r->has_content_length = cl >= 0;
		r->content_length = cl >= 0 ? (uint64_t)cl : 0;
		*resp = r;
	}
	tevent_req_received(req);
	return ret;
}
