/*
 * bucketfs-lease: CTDB's cluster lock held in the bucket (issue 22 point
 * 5), for a cluster of gateways with no shared file system.
 *
 *   bucketfs-lease [-s SMB_CONF] [-k KEY] [-t SECONDS] SHARE
 *
 * In /etc/ctdb/ctdb.conf:
 *   [cluster]
 *     cluster lock = !/usr/local/sbin/bucketfs-lease data
 *
 * SHARE's bucketfs parameters (endpoint, bucket, credentials) say where;
 * KEY (default ".bucketfs/ctdb-cluster-lock", from the bucket's root) is
 * the lease object, SECONDS (default 10) its life.  The lease logic is
 * lib/bfs_lease.
 *
 * CTDB's mutex helper protocol, as its ctdb_mutex_fcntl_helper speaks it:
 * one byte on stdout, '0' taken, '1' held by another node, '3' an error;
 * taken, the helper holds it until ctdbd kills it (SIGTERM: the lease is
 * given back) or ctdbd is gone, and exits if it loses it (ctdbd reads the
 * end of the pipe as the lock lost).
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <talloc.h>
#include <tevent.h>

#include "ctl_share.h"
#include "bfs_lease.h"
#include "bfs_params.h"
#include "bfs_log.h"

#define LEASE_DEFAULT_KEY ".bucketfs/ctdb-cluster-lock"
#define LEASE_DEFAULT_SECONDS 10

static volatile sig_atomic_t lease_stop;

static void lease_on_signal(int sig)
{
	(void)sig;
	lease_stop = 1;
}

static void lease_log(int level, const char *line)
{
	(void)level;
	fprintf(stderr, "bucketfs-lease[%d]: %s\n", (int)getpid(), line);
}

static void lease_usage(FILE *f)
{
	fprintf(f, "usage: bucketfs-lease [-s SMB_CONF] [-k KEY] [-t SECONDS] "
		"SHARE\n"
		"CTDB's cluster lock as a lease object in SHARE's bucket: in "
		"ctdb.conf,\n  cluster lock = !" BFS_SBINDIR "/bucketfs-lease "
		"SHARE\n");
}

/* Answer ctdbd: one byte. */
static void lease_answer(char c)
{
	if (write(STDOUT_FILENO, &c, 1) != 1) {
		exit(1); /* ctdbd is gone */
	}
}

/* Sleep s seconds unless a signal comes first. */
static void lease_sleep(unsigned s)
{
	struct timespec t = {.tv_sec = s};

	while (!lease_stop && nanosleep(&t, &t) != 0 && errno == EINTR) {
	}
}

int main(int argc, char **argv)
{
	const char *conf = CTL_DEFAULT_CONF, *key = LEASE_DEFAULT_KEY;
	unsigned seconds = LEASE_DEFAULT_SECONDS;
	struct tevent_context *ev;
	struct bfs_lease *l;
	struct ctl *c;
	char holder[320], host[256] = "";
	struct sigaction sa = {.sa_handler = lease_on_signal};
	pid_t ppid = getppid();
	int i, ret;

	ctl_mem = talloc_new(NULL);
	atexit(ctl_close_all);
	for (i = 1; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "-s") == 0 && i + 1 < argc) {
			conf = argv[++i];
		} else if (strcmp(argv[i], "-k") == 0 && i + 1 < argc) {
			key = argv[++i];
		} else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) {
			seconds = (unsigned)strtoul(argv[++i], NULL, 10);
		} else if (strcmp(argv[i], "-h") == 0 ||
			   strcmp(argv[i], "--help") == 0) {
			lease_usage(stdout);
			return 0;
		} else {
			lease_usage(stderr);
			lease_answer('3');
			return 2;
		}
	}
	if (i + 1 != argc || key[0] == '\0') {
		lease_usage(stderr);
		lease_answer('3');
		return 2;
	}
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	bfs_log_set(lease_log);
	c = talloc_zero(ctl_mem, struct ctl);
	c->mem = c;
	c->share = argv[i];
	ctl_load(c, conf);
	ev = tevent_context_init(c);
	gethostname(host, sizeof(host) - 1);
	srandom((unsigned)time(NULL) ^ (unsigned)getpid());
	snprintf(holder, sizeof(holder), "%s:%d:%08lx", host, (int)getpid(),
		 (unsigned long)random());
	l = ev != NULL ? bfs_lease_new(c, ev, ctl_s3(c, ev, NULL), key, holder,
				       seconds) : NULL;
	if (l == NULL) {
		lease_answer('3');
		return 1;
	}
	switch (bfs_lease_take(l)) {
	case BFS_LEASE_TAKEN:
		lease_answer('0');
		break;
	case BFS_LEASE_HELD:
		lease_answer('1');
		return 0;
	default:
		lease_answer('3');
		return 1;
	}
	fprintf(stderr, "bucketfs-lease[%d]: holding s3://%s/%s as %s\n",
		(int)getpid(), c->bucket, key, holder);
	while (!lease_stop) {
		lease_sleep(bfs_lease_renew_every(l));
		if (lease_stop) {
			break;
		}
		if (kill(ppid, 0) != 0 && errno == ESRCH) {
			fprintf(stderr, "bucketfs-lease[%d]: ctdbd is gone\n",
				(int)getpid());
			break;
		}
		ret = bfs_lease_renew(l);
		if (ret == ESTALE || ret == ETIMEDOUT) {
			return 1; /* lost: ctdbd sees the pipe close */
		}
	}
	ret = bfs_lease_release(l);
	return ret == 0 ? 0 : 1;
}
