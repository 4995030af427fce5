/*
 * Shared by the libFuzzer targets in this folder (one target a file,
 * built and run by `make fuzz`).  A broken invariant calls abort(): the
 * fuzzer then keeps the input as a crash, like any sanitizer report.
 */
#ifndef BUCKETFS_FUZZ_H
#define BUCKETFS_FUZZ_H

#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(cond)                                                      \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "%s:%d: invariant broken: %s\n",       \
				__FILE__, __LINE__, #cond);                   \
			abort();                                              \
		}                                                             \
	} while (0)

#endif
