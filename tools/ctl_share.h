/*
 * A bucketfs share as the tools see it (bucketfs-ctl, bucketfsd): its
 * bucketfs parameters read from smb.conf with Samba's libsmbconf (text
 * backend; a parameter of the share, else of [global]) through the one
 * parameter table (lib/bfs_params), and the parts of its cache folder
 * opened with the same lib/ code smbd uses.
 *
 * Every error here is fatal to the tool: one clear line on stderr and
 * exit status 1 (ctl_die).
 */
#ifndef BUCKETFS_CTL_SHARE_H
#define BUCKETFS_CTL_SHARE_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <talloc.h>
#include <tevent.h>

#include "bfs_cache.h"
#include "bfs_index.h"
#include "bfs_journal.h"
#include "bfs_stats.h"
#include "s3_client.h"

#define CTL_DEFAULT_CONF "/etc/samba/smb.conf"

struct smbconf_ctx;

struct ctl {
	TALLOC_CTX *mem;
	const char *share;
	struct smbconf_ctx *conf;
	/* the share's parameters */
	const char *bucket, *prefix, *cache_dir;
	uint64_t cache_size;
	uint32_t block_size;
};

/*
 * Everything the tool opened hangs off this, freed on every exit (ctl_die's
 * too): a cache opener that vanishes without closing reads as a crash to
 * the next one, which then checks the whole cache.
 */
extern TALLOC_CTX *ctl_mem;
void ctl_close_all(void);

/* One clear line (prefixed with the program's name) and exit status 1. */
void ctl_die(const char *fmt, ...)
	__attribute__((noreturn, format(printf, 1, 2)));

/* Read share c->share's parameters from conf_path (or die). */
void ctl_load(struct ctl *c, const char *conf_path);

/* A Samba parameter of [global] (not bucketfs:), raw; NULL if unset. */
const char *ctl_global(struct ctl *c, const char *name);

/* A raw parameter value, else def; typed ones as the module reads them. */
const char *ctl_param(struct ctl *c, const char *name, const char *def);
bool ctl_bool(struct ctl *c, const char *name);
int64_t ctl_int(struct ctl *c, const char *name);
uint64_t ctl_size(struct ctl *c, const char *name);
const char *ctl_string(struct ctl *c, const char *name);

/* "<cache dir>/what". */
char *ctl_sub(struct ctl *c, const char *what);

struct bfs_index *ctl_index(struct ctl *c);
struct bfs_cache *ctl_cache(struct ctl *c);
struct bfs_stats *ctl_stats_db(struct ctl *c);
struct bfs_journal *ctl_journal(struct ctl *c);

/*
 * An S3 client with the share's endpoint and the credential chain.
 * *creds_expire (optional): when instance-role credentials expire, 0 if
 * the credentials do not (a file, or anonymous).
 */
struct s3_client *ctl_s3(struct ctl *c, struct tevent_context *ev,
			 time_t *creds_expire);

#endif
