/* A fresh folder under $TMPDIR (the test runner removes it afterwards). */
#ifndef BUCKETFS_TEST_TMPDIR_H
#define BUCKETFS_TEST_TMPDIR_H

#include <stdlib.h>
#include <talloc.h>

static inline char *test_tmpdir(TALLOC_CTX *t, const char *what)
{
	const char *base = getenv("TMPDIR");
	char *d = talloc_asprintf(t, "%s/%s.XXXXXX", base ? base : "/tmp", what);

	return d != NULL ? mkdtemp(d) : NULL;
}

#endif
