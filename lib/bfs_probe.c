/*
 * Why a share's bucket cannot be served (see bfs_probe.h).
 */
#include "bfs_probe.h"

#include <errno.h>

const char *bfs_probe_cause(int err)
{
	switch (err) {
	case EACCES:
		return "the S3 server refused the credentials";
	case ENOENT:
		return "the bucket does not exist";
	case ECONNREFUSED:
	case EHOSTUNREACH:
	case ETIMEDOUT:
	case ECONNRESET:
		return "the S3 endpoint is unreachable";
	case EPROTO:
		return "TLS with the S3 endpoint failed";
	case ENXIO:
		return "the bucket is in another region or needs another "
		       "endpoint";
	default:
		return "the S3 server answered with an error";
	}
}
