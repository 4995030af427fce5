/*
 * s3tool: a small S3 command line client on bucketfs's own lib/, used by
 * the test harness and the demo to seed and inspect a bucket.
 *
 *   s3tool put KEY FILE | get KEY FILE | rm KEY | ls PREFIX | head KEY
 *   s3tool mb -         make the bucket S3_BUCKET (CreateBucket)
 *   s3tool putmp KEY FILE PART PARALLEL [MEMORY]   a parallel multipart
 *                        upload (with MEMORY: that bound on part buffers,
 *                        and the peak held printed)
 *   s3tool uploads PREFIX   multipart uploads in progress: a key a line
 *   s3tool getmany PREFIX COUNT PARALLEL   GET PREFIX00000.. whole, PARALLEL
 *                        at once: files/s and latency (make bench)
 *
 * Endpoint and bucket from S3_ENDPOINT and S3_BUCKET (path style), keys
 * from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.  put stores the
 * user metadata S3_META names ("x-amz-meta-mtime=1.5 x-amz-meta-a=b", as
 * another S3 tool would); head prints an object's after its size and ETag.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "s3_creds.h"
#include "bfs_reader.h"
#include "s3_dirlist.h"
#include "bfs_upload.h"
#include "s3_ops.h"

#define PART (8u << 20)

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static int fail(const char *what, const struct s3_status *st, int ret)
{
	fprintf(stderr, "s3tool: %s: %s (HTTP %ld %s %s)\n", what,
		strerror(ret), st->http_status, st->code, st->message);
	return 1;
}

/* Run req to its end; a _send or the event loop failing ends s3tool. */
static void wait_req(struct tevent_req *req, struct tevent_context *ev)
{
	int ret = s3_wait_for(req, ev);

	if (ret != 0) {
		fprintf(stderr, "s3tool: %s\n", strerror(ret));
		exit(1);
	}
}

/* S3_META as headers: NAME=VALUE words, at most S3_META_MAX. */
static size_t meta_from_env(TALLOC_CTX *t, struct s3_kv *kv)
{
	const char *env = getenv("S3_META");
	char *copy, *save = NULL, *w;
	size_t n = 0;

	if (env == NULL || (copy = talloc_strdup(t, env)) == NULL) {
		return 0;
	}
	for (w = strtok_r(copy, " ", &save); w != NULL && n < S3_META_MAX;
	     w = strtok_r(NULL, " ", &save)) {
		char *eq = strchr(w, '=');
		if (eq != NULL) {
			*eq = '\0';
			kv[n++] = (struct s3_kv){w, eq + 1};
		}
	}
	return n;
}

static int put(TALLOC_CTX *t, struct tevent_context *ev, struct s3_client *c,
	       const char *key, const char *file)
{
	struct s3_kv meta[S3_META_MAX];
	size_t n_meta = meta_from_env(t, meta);
	struct s3_status st = {0};
	struct tevent_req *req;
	struct stat sb;
	void *data = NULL;
	char *etag = NULL;
	int fd = open(file, O_RDONLY), ret;

	if (fd < 0 || fstat(fd, &sb) != 0) {
		perror(file);
		return 1;
	}
	if (sb.st_size > 0) {
		data = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (data == MAP_FAILED) {
			perror("mmap");
			return 1;
		}
	}
	if ((size_t)sb.st_size <= PART) {
		req = s3_put_object_send(t, ev, c, key, data, (size_t)sb.st_size, meta, n_meta);
		wait_req(req, ev);
		ret = s3_put_object_recv(req, t, &etag, &st);
		return ret ? fail("put", &st, ret) : 0;
	} else {
		/* Multipart, all parts in flight at once (the engine bounds it). */
		size_t n = ((size_t)sb.st_size + PART - 1) / PART, i, done = 0;
		struct tevent_req **reqs = talloc_array(t, struct tevent_req *, n);
		struct s3_part *parts = talloc_array(t, struct s3_part, n);
		char *id = NULL;

		bool cksum;

		req = s3_mpu_create_send(t, ev, c, key, true, meta, n_meta);
		wait_req(req, ev);
		cksum = s3_mpu_create_cksum(req);
		if ((ret = s3_mpu_create_recv(req, t, &id, &st)) != 0) {
			return fail("create multipart", &st, ret);
		}
		for (i = 0; i < n; i++) {
			size_t off = i * PART, len = (size_t)sb.st_size - off;
			reqs[i] = s3_mpu_part_send(t, ev, c, key, id, (unsigned)i + 1,
						   (char *)data + off,
						   len > PART ? PART : len, cksum);
		}
		for (i = 0; i < n; i++) {
			wait_req(reqs[i], ev);
			parts[i] = (struct s3_part){.part_no = (unsigned)i + 1};
			ret = s3_mpu_part_recv(reqs[i], t, &parts[i], &st);
			if (ret != 0) {
				req = s3_mpu_abort_send(t, ev, c, key, id);
				wait_req(req, ev);
				s3_mpu_abort_recv(req, NULL);
				return fail("upload part", &st, ret);
			}
			done++;
		}
		req = s3_mpu_complete_send(t, ev, c, key, id, parts, done);
		wait_req(req, ev);
		ret = s3_mpu_complete_recv(req, t, &etag, &st);
		return ret ? fail("complete multipart", &st, ret) : 0;
	}
}

static int get(TALLOC_CTX *t, struct tevent_context *ev, struct s3_client *c,
	       const char *key, const char *file)
{
	struct s3_status st = {0};
	struct s3_object_info info = {0};
	struct tevent_req *req = s3_head_object_send(t, ev, c, key);
	uint8_t *buf;
	size_t got = 0;
	FILE *f;
	int ret;

	wait_req(req, ev);
	if ((ret = s3_head_object_recv(req, t, &info, &st)) != 0) {
		return fail("head", &st, ret);
	}
	buf = malloc(info.size + 1); /* talloc stops at 256 MiB */
	if (buf == NULL) {
		perror("malloc");
		return 1;
	}
	req = s3_get_range_send(t, ev, c, key, 0, info.size, buf, info.etag);
	wait_req(req, ev);
	if ((ret = s3_get_range_recv(req, &got, &st)) != 0) {
		return fail("get", &st, ret);
	}
	f = strcmp(file, "-") == 0 ? stdout : fopen(file, "w");
	if (f == NULL || fwrite(buf, 1, got, f) != got) {
		perror(file);
		return 1;
	}
	return f == stdout ? 0 : fclose(f);
}

int main(int argc, char **argv)
{
	TALLOC_CTX *t = talloc_new(NULL);
	struct tevent_context *ev = tevent_context_init(t);
	struct s3_client_config cfg = {
		.endpoint = getenv("S3_ENDPOINT"),
		.bucket = getenv("S3_BUCKET"),
		.region = "us-east-1",
		.path_style = true,
		.verify_tls = true,
		.max_requests = 16,
		.max_retries = 3,
	};
	struct s3_client *c;
	struct s3_status st = {0};
	struct tevent_req *req;
	int ret;

	if (argc < 3) {
		fprintf(stderr, "usage: s3tool put KEY FILE | get KEY FILE | rm KEY "
				"| ls PREFIX | lsdir PREFIX/ | head KEY | putmany PREFIX COUNT SIZE "
				"| getmany PREFIX COUNT PARALLEL "
				"| putmp KEY FILE PARTSIZE PARALLEL\n");
		return 2;
	}
	if (s3_creds_from_env(t, &cfg.creds) != 0 || cfg.bucket == NULL) {
		fprintf(stderr, "s3tool: set S3_ENDPOINT, S3_BUCKET, "
				"AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY\n");
		return 2;
	}
	c = s3_client_new(t, ev, &cfg);
	if (c == NULL) {
		perror("s3tool: client");
		return 1;
	}
	if (strcmp(argv[1], "put") == 0 && argc == 4) {
		return put(t, ev, c, argv[2], argv[3]);
	}
	if (strcmp(argv[1], "uploads") == 0) {
		/* ListMultipartUploads; the keys from the document as text. */
		const struct s3_kv q[] = {{"uploads", ""}, {"prefix", argv[2]}};
		const struct s3_request r = {.method = "GET", .query = q,
					     .n_query = 2, .idempotent = true};
		struct s3_response *resp = NULL;
		const char *p, *e;
		char *doc;

		req = s3_request_send(t, ev, c, &r);
		wait_req(req, ev);
		ret = s3_request_recv(req, t, &resp, &st);
		if (ret != 0) {
			return fail("uploads", &st, ret);
		}
		doc = talloc_strndup(t, (const char *)resp->body,
				     resp->body_len);
		for (p = doc; p != NULL && (p = strstr(p, "<Upload>")) != NULL;
		     p++) {
			const char *k = strstr(p, "<Key>");
			if (k == NULL || (e = strstr(k, "</Key>")) == NULL) {
				break;
			}
			printf("%.*s\n", (int)(e - k - 5), k + 5);
		}
		return 0;
	}
	if (strcmp(argv[1], "mb") == 0) {
		/* CreateBucket: a PUT of the bucket itself; an existing one
		 * of ours (BucketAlreadyOwnedByYou) is fine. */
		const struct s3_request r = {.method = "PUT", .idempotent = true};
		struct s3_response *resp = NULL;

		req = s3_request_send(t, ev, c, &r);
		wait_req(req, ev);
		ret = s3_request_recv(req, t, &resp, &st);
		if (ret != 0 && strcmp(st.code, "BucketAlreadyOwnedByYou") != 0) {
			return fail("mb", &st, ret);
		}
		return 0;
	}
	if (strcmp(argv[1], "get") == 0 && argc == 4) {
		return get(t, ev, c, argv[2], argv[3]);
	}
	if (strcmp(argv[1], "putmp") == 0 && (argc == 6 || argc == 7)) {
		/* Raw parallel multipart upload: the benchmark's baseline. */
		struct bfs_upload_params p = {
			.multipart_threshold = 0,
			.part_size = strtoull(argv[4], NULL, 10),
			.parallel = (unsigned)atoi(argv[5]),
		};
		int fd = open(argv[3], O_RDONLY);
		struct stat sb;

		if (fd < 0 || fstat(fd, &sb) != 0) {
			perror(argv[3]);
			return 1;
		}
		if (argc == 7) {
			bfs_upload_set_memory(strtoull(argv[6], NULL, 10));
		}
		req = bfs_upload_send(t, ev, c, argv[2], fd, (uint64_t)sb.st_size,
				      &p);
		wait_req(req, ev);
		ret = bfs_upload_recv(req, t, NULL, &st);
		close(fd);
		if (ret == 0 && argc == 7) {
			printf("peak_part_bytes=%" PRIu64 "\n",
			       bfs_upload_memory_peak());
		}
		return ret ? fail("putmp", &st, ret) : 0;
	}
	if (strcmp(argv[1], "rm") == 0) {
		req = s3_delete_object_send(t, ev, c, argv[2]);
		wait_req(req, ev);
		ret = s3_delete_object_recv(req, &st);
		return ret ? fail("rm", &st, ret) : 0;
	}
	if (strcmp(argv[1], "head") == 0) {
		struct s3_object_info info = {0};
		req = s3_head_object_send(t, ev, c, argv[2]);
		wait_req(req, ev);
		ret = s3_head_object_recv(req, t, &info, &st);
		if (ret != 0) {
			return fail("head", &st, ret);
		}
		printf("%" PRIu64 " %s", info.size, info.etag);
		for (size_t i = 0; i < info.n_meta; i++) {
			printf(" %s=%s", info.meta[i].name, info.meta[i].value);
		}
		printf("\n");
		return 0;
	}
	if (strcmp(argv[1], "putmany") == 0 && argc == 5) {
		/* COUNT objects PREFIX00000.. of SIZE bytes, many at a time. */
		long n = atol(argv[3]), i, done = 0, inflight = 0, next = 0;
		size_t size = (size_t)atol(argv[4]);
		struct tevent_req **reqs = talloc_zero_array(t, struct tevent_req *, n);
		char *body = talloc_size(t, size + 1);

		memset(body, 'x', size);
		while (done < n) {
			while (inflight < 32 && next < n) {
				char *key = talloc_asprintf(t, "%s%05ld", argv[2], next);
				reqs[next++] = s3_put_object_send(t, ev, c, key, body, size, NULL, 0);
				inflight++;
			}
			tevent_loop_once(ev);
			for (i = 0; i < next; i++) {
				if (reqs[i] != NULL && !tevent_req_is_in_progress(reqs[i])) {
					ret = s3_put_object_recv(reqs[i], t, NULL, &st);
					TALLOC_FREE(reqs[i]);
					if (ret != 0) {
						return fail("putmany", &st, ret);
					}
					done++;
					inflight--;
				}
			}
		}
		return 0;
	}
	if (strcmp(argv[1], "getmany") == 0 && argc == 5) {
		/*
		 * The raw-S3 baseline of small files: GET whole objects
		 * PREFIX00000.. (as putmany names them, at most 4 MiB each),
		 * PARALLEL at once, as a loader with that many workers
		 * would.  One line, as bench/loader prints it.
		 */
		const size_t room = 4u << 20;
		long n = atol(argv[3]), par = atol(argv[4]), next = 0, done = 0;
		long i, inflight = 0, errors = 0;
		struct tevent_req **reqs;
		struct timespec t0, t1, *sent;
		uint8_t **bufs;
		long *slot_of;
		double *lat, secs;
		uint64_t bytes = 0;

		if (n <= 0 || par <= 0) {
			fprintf(stderr, "s3tool: getmany PREFIX COUNT PARALLEL\n");
			return 2;
		}
		reqs = talloc_zero_array(t, struct tevent_req *, par);
		bufs = talloc_zero_array(t, uint8_t *, par);
		sent = talloc_zero_array(t, struct timespec, par);
		slot_of = talloc_zero_array(t, long, par);
		lat = talloc_zero_array(t, double, n);
		for (i = 0; i < par; i++) {
			bufs[i] = talloc_size(t, room);
		}
		clock_gettime(CLOCK_MONOTONIC, &t0);
		while (done + errors < n) {
			for (i = 0; i < par; i++) {
				if (reqs[i] == NULL && next < n) {
					char *key = talloc_asprintf(t, "%s%05ld",
								    argv[2], next);
					clock_gettime(CLOCK_MONOTONIC, &sent[i]);
					slot_of[i] = next++;
					reqs[i] = s3_get_range_send(t, ev, c, key, 0,
								    room, bufs[i],
								    NULL);
					inflight++;
				}
			}
			tevent_loop_once(ev);
			for (i = 0; i < par; i++) {
				size_t got = 0;

				if (reqs[i] == NULL ||
				    tevent_req_is_in_progress(reqs[i])) {
					continue;
				}
				ret = s3_get_range_recv(reqs[i], &got, &st);
				TALLOC_FREE(reqs[i]);
				inflight--;
				if (ret != 0) {
					if (errors++ == 0) {
						fprintf(stderr, "s3tool: getmany "
							"%s%05ld: %s (HTTP %ld)\n",
							argv[2], slot_of[i],
							strerror(ret),
							st.http_status);
					}
					continue;
				}
				clock_gettime(CLOCK_MONOTONIC, &t1);
				lat[done++] = (t1.tv_sec - sent[i].tv_sec) * 1e3 +
					      (t1.tv_nsec - sent[i].tv_nsec) / 1e6;
				bytes += got;
			}
		}
		clock_gettime(CLOCK_MONOTONIC, &t1);
		secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
		qsort(lat, (size_t)done, sizeof(*lat), cmp_double);
		printf("files=%ld bytes=%" PRIu64 " seconds=%.3f files_per_s=%.1f "
		       "p50_ms=%.2f p99_ms=%.2f errors=%ld\n", done, bytes, secs,
		       done / secs, done ? lat[done / 2] : 0.0,
		       done ? lat[done * 99 / 100] : 0.0, errors);
		return errors != 0;
	}
	if (strcmp(argv[1], "getpar") == 0 && (argc == 4 || argc == 5)) {
		/* The raw-S3 baseline: the whole object in 8 MiB range GETs,
		 * STREAMS at once; prints bytes and seconds.  With FILE, each
		 * range is also written there at its offset as it arrives:
		 * what storing the bytes locally costs, as any cache must. */
		unsigned streams = (unsigned)atoi(argv[3]), inflight = 0;
		int out = -1;
		struct s3_object_info info = {0};
		struct timespec t0, t1;
		uint64_t off = 0, done = 0, *offs;
		struct tevent_req **reqs;
		uint8_t **bufs;
		unsigned i;

		req = s3_head_object_send(t, ev, c, argv[2]);
		wait_req(req, ev);
		if ((ret = s3_head_object_recv(req, t, &info, &st)) != 0) {
			return fail("head", &st, ret);
		}
		reqs = talloc_zero_array(t, struct tevent_req *, streams);
		bufs = talloc_zero_array(t, uint8_t *, streams);
		offs = talloc_zero_array(t, uint64_t, streams);
		for (i = 0; i < streams; i++) {
			bufs[i] = talloc_size(t, PART);
		}
		if (argc == 5 &&
		    (out = open(argv[4], O_WRONLY | O_CREAT | O_TRUNC, 0600)) < 0) {
			perror(argv[4]);
			return 1;
		}
		clock_gettime(CLOCK_MONOTONIC, &t0);
		while (done < info.size) {
			for (i = 0; i < streams; i++) {
				if (reqs[i] == NULL && off < info.size) {
					size_t n = info.size - off > PART ? PART : info.size - off;
					reqs[i] = s3_get_range_send(t, ev, c, argv[2], off, n,
								    bufs[i], info.etag);
					offs[i] = off;
					off += n;
					inflight++;
				}
			}
			tevent_loop_once(ev);
			for (i = 0; i < streams; i++) {
				size_t got = 0;
				if (reqs[i] == NULL || tevent_req_is_in_progress(reqs[i])) {
					continue;
				}
				ret = s3_get_range_recv(reqs[i], &got, &st);
				TALLOC_FREE(reqs[i]);
				if (ret != 0) {
					return fail("getpar", &st, ret);
				}
				if (out >= 0 && pwrite(out, bufs[i], got,
						       (off_t)offs[i]) != (ssize_t)got) {
					perror(argv[4]);
					return 1;
				}
				done += got;
				inflight--;
			}
		}
		clock_gettime(CLOCK_MONOTONIC, &t1);
		if (out >= 0) {
			close(out);
		}
		printf("%" PRIu64 " %.6f\n", done,
		       (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
		return 0;
	}
	if (strcmp(argv[1], "cacheread") == 0 && argc == 5) {
		/* Read an object through bfs_reader and a cache in CACHEDIR the
		 * way smbd does for a sequential client: 8 MiB reads, two in
		 * flight, READAHEAD blocks ahead.  Prints bytes and seconds. */
		unsigned ra = (unsigned)atoi(argv[4]);
		struct s3_object_info info = {0};
		struct bfs_cache *cache = NULL;
		struct bfs_reader *r;
		struct bfs_object o = {.key = argv[2]};
		struct tevent_req *rq[2] = {NULL, NULL};
		uint8_t *buf[2];
		uint64_t off = 0, done = 0;
		struct timespec t0, t1;
		const char *why = NULL;
		unsigned i;

		req = s3_head_object_send(t, ev, c, argv[2]);
		wait_req(req, ev);
		if ((ret = s3_head_object_recv(req, t, &info, &st)) != 0) {
			return fail("head", &st, ret);
		}
		if (bfs_cache_open(t, argv[3], 4ULL << 30, 1 << 20, &cache, &why) != 0) {
			fprintf(stderr, "cache: %s\n", why);
			return 1;
		}
		o.etag = info.etag;
		o.size = info.size;
		bfs_cache_make_id("b", o.key, o.etag, 1 << 20, &o.id);
		r = bfs_reader_new(t, ev, c, cache, 1 << 20, true);
		buf[0] = talloc_size(t, PART);
		buf[1] = talloc_size(t, PART);
		clock_gettime(CLOCK_MONOTONIC, &t0);
		while (done < info.size) {
			for (i = 0; i < 2; i++) {
				if (rq[i] == NULL && off < info.size) {
					rq[i] = bfs_read_send(t, ev, r, &o, off, PART, buf[i]);
					off += PART;
					bfs_reader_prefetch(r, &o, off >> 20, ra);
				}
			}
			tevent_loop_once(ev);
			for (i = 0; i < 2; i++) {
				size_t got = 0;
				if (rq[i] == NULL || tevent_req_is_in_progress(rq[i])) {
					continue;
				}
				ret = bfs_read_recv(rq[i], &got, &st);
				TALLOC_FREE(rq[i]);
				if (ret != 0) {
					return fail("cacheread", &st, ret);
				}
				done += got;
			}
		}
		clock_gettime(CLOCK_MONOTONIC, &t1);
		printf("%" PRIu64 " %.6f\n", done,
		       (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
		return 0;
	}
	if (strcmp(argv[1], "lsdir") == 0) {
		struct s3_dir *d = NULL;
		size_t i;
		req = s3_dirlist_send(t, ev, c, argv[2]);
		wait_req(req, ev);
		ret = s3_dirlist_recv(req, t, &d, &st);
		if (ret != 0) {
			return fail("lsdir", &st, ret);
		}
		for (i = 0; i < d->n; i++) {
			printf("%s\t%" PRIu64 "\t%s\n", d->ents[i].is_dir ? "dir" : "file",
			       d->ents[i].size, d->ents[i].name);
		}
		return 0;
	}
	if (strcmp(argv[1], "ls") == 0) {
		const char *token = NULL;
		do {
			struct s3_listing *l = NULL;
			size_t i;
			req = s3_list_send(t, ev, c, argv[2], NULL, token, 0);
			wait_req(req, ev);
			ret = s3_list_recv(req, t, &l, &st);
			if (ret != 0) {
				return fail("ls", &st, ret);
			}
			for (i = 0; i < l->n_objects; i++) {
				printf("%" PRIu64 "\t%s\n", l->objects[i].size,
				       l->objects[i].key);
			}
			token = l->truncated ? l->next_token : NULL;
		} while (token != NULL);
		return 0;
	}
	fprintf(stderr, "s3tool: unknown command %s\n", argv[1]);
	return 2;
}
