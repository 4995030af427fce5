/*
 * The one table of bucketfs's smb.conf parameters ("bucketfs:NAME"):
 * their types, defaults, bounds and whether a running connection follows
 * a reload, with the parsing smb.conf's readers share (the module,
 * bucketfs-ctl, and the engine to come), so that they cannot disagree on
 * a value.  Where a value comes from is the caller's: a getter returns the
 * share's value, else [global]'s, else NULL.
 */
#ifndef BUCKETFS_BFS_PARAMS_H
#define BUCKETFS_BFS_PARAMS_H

/*
 * Where bucketfsd and bucketfs-lease are installed: /usr/local/sbin by
 * make install, /usr/sbin in the Debian package (debian/rules sets it).
 */
#ifndef BFS_SBINDIR
#define BFS_SBINDIR "/usr/local/sbin"
#endif

#include <stdbool.h>
#include <stdint.h>

enum bfs_ptype {
	BFS_PT_STRING,
	BFS_PT_BOOL,	/* yes/no, true/false, on/off, 1/0, as Samba reads */
	BFS_PT_INT,	/* decimal, 0x hex or 0 octal (modes: 0644) */
	BFS_PT_SIZE,	/* bytes, or with K, M, G, T, P (powers of 1024) */
};

struct bfs_pdef {
	const char *name;
	enum bfs_ptype type;
	const char *def;	/* as smb.conf would write it; NULL: unset */
	int64_t min, max;	/* INT, SIZE (bytes; SIZE_UNBOUNDED: none) */
	bool pow2;		/* SIZE: a power of two */
	bool reload;		/* a running connection follows a reload */
};

#define BFS_SIZE_UNBOUNDED INT64_MAX

/* Every parameter; the last entry's name is NULL. */
extern const struct bfs_pdef bfs_pdefs[];

const struct bfs_pdef *bfs_pdef_find(const char *name);

/* Where values come from: the share's, else [global]'s, else NULL. */
struct bfs_psrc {
	const char *(*get)(void *priv, const char *name);
	void *priv;
};

/* Why a value was refused: the value, and what it must be. */
struct bfs_pbad {
	const char *value;
	char want[128];
};

/*
 * The value of parameter name, or its default: 0, or EINVAL with *bad
 * filled (a value of the wrong form or out of bounds, or a name the table
 * does not have).
 */
int bfs_pget_string(const struct bfs_psrc *src, const char *name,
		    const char **out, struct bfs_pbad *bad);
int bfs_pget_bool(const struct bfs_psrc *src, const char *name, bool *out,
		  struct bfs_pbad *bad);
int bfs_pget_int(const struct bfs_psrc *src, const char *name, int64_t *out,
		 struct bfs_pbad *bad);
int bfs_pget_size(const struct bfs_psrc *src, const char *name,
		  uint64_t *out, struct bfs_pbad *bad);

/* The parsers alone: whether s is one of them, and its value. */
bool bfs_parse_bool(const char *s, bool *out);
bool bfs_parse_int(const char *s, int64_t *out);
bool bfs_parse_size(const char *s, uint64_t *out);

#endif
