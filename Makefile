# bucketfs: a Samba VFS module serving an S3 bucket.
#
#   make deps     install packages, s3rver, and Samba's private headers
#   make          build/bucketfs.so and the unit tests
#   make install  copy bucketfs.so into smbd's MODULESDIR/vfs
#   make test     everything above, then unit + integration tests
#   make demo     a local S3 server with sample data, smbd on loopback
#   make intree   build the module inside the prepared Samba tree (wscript)
#   make deb      the Debian package in build/deb (dpkg-buildpackage, lintian)
#   make bench       bucketfs against plain Samba, s3fs, rclone and raw S3
#                    (bench/compare.py; not part of make test)
#   make bench-read  read-path benchmark (not part of make test)
#   make bench-write write-path (checkpoint) benchmark
#   make fuzz        libFuzzer targets (tests/fuzz), FUZZ_SECONDS each
#   make asan-unit   the unit tests built with ASan+UBSan
#   make valgrind-unit  the unit tests under valgrind
#   make asan        build/asan/bucketfs_asan.so: the module under ASan+UBSan,
#                    registered as "vfs objects = bucketfs_asan" (make test
#                    installs it and runs it in a preloaded smbd)

B        := build
SAMBA    := $(B)/samba
CC       ?= gcc
WARN     := -Wall -Wextra -Werror
OPT      ?= -O2 -g
PKGS     := talloc tevent libcurl openssl lmdb expat libisal zlib
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread
# Where the engine and the lease helper go, and what the module tells an admin
# when it meets another Samba: the Debian package (debian/rules) sets both.
SBINDIR  ?= /usr/local/sbin
REBUILD_HINT ?= rebuild and reinstall it: make install
DEFS      = -DBFS_SBINDIR='"$(SBINDIR)"'
LIB_CFLAGS = $(OPT) $(WARN) -fPIC -D_GNU_SOURCE $(DEFS) -Ilib $(PKG_CFLAGS)

LIB_SRC  := $(sort $(wildcard lib/*.c))
LIB_OBJ  := $(LIB_SRC:lib/%.c=$(B)/lib/%.o)
MOD_SRC  := modules/vfs_bucketfs.c
UNIT     := $(patsubst tests/unit/%.c,$(B)/tests/%,$(wildcard tests/unit/test_*.c))
ITEST    := $(B)/tests/s3_client_itest $(B)/tests/smbread $(B)/tests/smbwrite \
            $(B)/tests/smbflush $(B)/tests/smbrenopen $(B)/s3tool $(B)/bench/loader \
            $(B)/othersamba/bucketfs_othersamba.so

# Compile on every core unless the caller chose (make -jN).
ifeq ($(filter -j%,$(MAKEFLAGS)),)
MAKEFLAGS += -j$(shell nproc)
endif

MODULESDIR = $(shell smbd -b 2>/dev/null | awk '/MODULESDIR/{print $$2}')

.PHONY: all deps install test unit demo demo-stop cluster-demo cluster-stop intree deb clean bench bench-deps bench-read bench-write bench-cluster \
        fuzz fuzz-build asan-unit valgrind-unit \
        asan install-asan
all: $(B)/bucketfs.so $(B)/bucketfs-ctl $(B)/bucketfsd $(B)/bucketfs-lease $(UNIT) $(ITEST)

deps:
	@scripts/deps.sh

$(B)/.deps-ok: scripts/deps.sh scripts/samba-headers.sh tests/s3server/package-lock.json
	@scripts/deps.sh
	@touch $@

$(B)/lib/%.o: lib/%.c lib/*.h $(B)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(LIB_CFLAGS) -c $< -o $@

$(B)/libbucketfs.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

# Written by scripts/deps.sh (samba-headers.sh) with the headers.
$(B)/samba.version: $(B)/.deps-ok
	@test -s $@

# Samba's include paths, as its own build compiles a VFS module.
$(B)/samba.cflags: $(B)/.deps-ok
	@scripts/samba-headers.sh --cflags > $@

$(B)/modules/vfs_bucketfs.o: $(MOD_SRC) lib/*.h $(B)/samba.cflags $(B)/samba.version Makefile
	@scripts/check-samba.sh build
	@mkdir -p $(dir $@)
	$(CC) $(OPT) $(WARN) -Wno-unused-parameter $$(cat $(B)/samba.cflags) \
	  -Ilib $(PKG_CFLAGS) -DBUCKETFS_SAMBA_PKGVER='"$(shell cat $(B)/samba.version 2>/dev/null)"' \
	  $(DEFS) -DBFS_REBUILD_HINT='"$(REBUILD_HINT)"' -c $< -o $@

$(B)/bucketfs.so: $(B)/modules/vfs_bucketfs.o $(B)/libbucketfs.a
	$(CC) $(LDFLAGS) -shared -Wl,-Bsymbolic -o $@ $^ $(PKG_LIBS)

$(B)/tests/%: tests/unit/%.c tests/unit/*.h $(B)/libbucketfs.a
	@mkdir -p $(dir $@)
	$(CC) $(OPT) $(WARN) -D_GNU_SOURCE -Ilib $(PKG_CFLAGS) $< -o $@ \
	  $(B)/libbucketfs.a $(PKG_LIBS) -lcmocka

$(B)/tests/s3_client_itest: tests/integration/s3_client_itest.c $(B)/libbucketfs.a
	@mkdir -p $(dir $@)
	$(CC) $(OPT) $(WARN) -D_GNU_SOURCE -Ilib $(PKG_CFLAGS) $< -o $@ \
	  $(B)/libbucketfs.a $(PKG_LIBS) -lcmocka

$(B)/tests/smb%: tests/integration/smb%.c $(B)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(OPT) $(WARN) $$(pkg-config --cflags smbclient) $< -o $@ \
	  $$(pkg-config --libs smbclient)

# libsmbclient has no flush: Samba's own cli_flush() from the library
# libsmbclient is built on (see the tool's comment).
$(B)/tests/smbflush: tests/integration/smbflush.c $(B)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(OPT) $(WARN) $$(pkg-config --cflags smbclient) $< -o $@ \
	  $$(pkg-config --libs smbclient) -L$(MODULESDIR) -l:liblibsmb-samba4.so.0 \
	  -Wl,-rpath,$(MODULESDIR)

# Same library: a rename through an open handle's connection.
$(B)/tests/smbrenopen: tests/integration/smbrenopen.c $(B)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(OPT) $(WARN) $$(pkg-config --cflags smbclient) $< -o $@ \
	  $$(pkg-config --libs smbclient) -L$(MODULESDIR) -l:liblibsmb-samba4.so.0 \
	  -Wl,-rpath,$(MODULESDIR)

# Samba's libsmbconf (public, in samba-libs) reads smb.conf for the tool;
# its headers come from the prepared source tree.
$(B)/bucketfs-ctl: tools/bucketfs-ctl.c tools/ctl_share.c tools/*.h lib/*.h $(B)/libbucketfs.a $(B)/samba.cflags
	$(CC) $(OPT) $(WARN) $(LDFLAGS) -D_GNU_SOURCE $(DEFS) -Ilib -Itools -I$(SAMBA)/lib/smbconf $(PKG_CFLAGS) \
	  tools/bucketfs-ctl.c tools/ctl_share.c -o $@ $(B)/libbucketfs.a $(PKG_LIBS) -l:libsmbconf.so.0

# The S3 engine: the same share loading as bucketfs-ctl.
$(B)/bucketfsd: tools/bucketfsd.c tools/ctl_share.c tools/*.h lib/*.h $(B)/libbucketfs.a $(B)/samba.cflags
	$(CC) $(OPT) $(WARN) $(LDFLAGS) -Wno-unused-parameter -D_GNU_SOURCE $(DEFS) -Ilib -Itools -I$(SAMBA)/lib/smbconf $(PKG_CFLAGS) \
	  tools/bucketfsd.c tools/ctl_share.c -o $@ $(B)/libbucketfs.a $(PKG_LIBS) -l:libsmbconf.so.0

# CTDB's cluster lock as a lease object in the bucket (issue 22).
$(B)/bucketfs-lease: tools/bucketfs-lease.c tools/ctl_share.c tools/*.h lib/*.h $(B)/libbucketfs.a $(B)/samba.cflags
	$(CC) $(OPT) $(WARN) $(LDFLAGS) -D_GNU_SOURCE $(DEFS) -Ilib -Itools -I$(SAMBA)/lib/smbconf $(PKG_CFLAGS) \
	  tools/bucketfs-lease.c tools/ctl_share.c -o $@ $(B)/libbucketfs.a $(PKG_LIBS) -l:libsmbconf.so.0

# The module and lib/ again under ASan+UBSan, objects of their own, for
# tests/test_asan.py.  It registers as "bucketfs_asan" so it loads next
# to the real module (parameters stay "bucketfs:").  UBSan findings abort
# the smbd child rather than scroll by in a log nobody reads.
ASAN_CFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer \
               -fno-sanitize-recover=undefined -g -O1
ASAN_LIB_OBJ := $(LIB_SRC:lib/%.c=$(B)/asan/lib/%.o)

asan: $(B)/asan/bucketfs_asan.so

$(B)/asan/lib/%.o: lib/%.c lib/*.h $(B)/.deps-ok Makefile
	@mkdir -p $(dir $@)
	$(CC) $(ASAN_CFLAGS) $(WARN) -fPIC -D_GNU_SOURCE -Ilib $(PKG_CFLAGS) -c $< -o $@

$(B)/asan/vfs_bucketfs.o: $(MOD_SRC) lib/*.h $(B)/samba.cflags $(B)/samba.version Makefile
	@scripts/check-samba.sh build
	@mkdir -p $(dir $@)
	$(CC) $(ASAN_CFLAGS) $(WARN) -Wno-unused-parameter $$(cat $(B)/samba.cflags) \
	  -Ilib $(PKG_CFLAGS) -DBUCKETFS_SAMBA_PKGVER='"$(shell cat $(B)/samba.version 2>/dev/null)"' \
	  -DBFS_VFS_NAME='"bucketfs_asan"' -c $< -o $@

# Linked with -fsanitize so it names libasan; smbd itself is not
# instrumented and must run with libasan preloaded (tests/test_asan.py).
$(B)/asan/bucketfs_asan.so: $(B)/asan/vfs_bucketfs.o $(ASAN_LIB_OBJ)
	$(CC) -fsanitize=address,undefined -shared -o $@ $^ $(PKG_LIBS)

# The module as a Samba upgrade without a matching bucketfs leaves it: built
# for another Samba version string, registered as bucketfs_othersamba
# (tests/test_package.py installs it next to the real one).
$(B)/othersamba/bucketfs_othersamba.so: $(MOD_SRC) lib/*.h $(B)/libbucketfs.a $(B)/samba.cflags $(B)/samba.version Makefile
	@mkdir -p $(dir $@)
	$(CC) $(OPT) $(WARN) -Wno-unused-parameter $$(cat $(B)/samba.cflags) \
	  -Ilib $(PKG_CFLAGS) -DBUCKETFS_SAMBA_PKGVER='"other"' $(DEFS) \
	  -DBFS_TEST_BUILT_FOR='"4.16.99"' -DBFS_VFS_NAME='"bucketfs_othersamba"' \
	  -DBFS_REBUILD_HINT='"$(REBUILD_HINT)"' -shared -fPIC -Wl,-Bsymbolic $< -o $@ \
	  $(B)/libbucketfs.a $(PKG_LIBS)

install-asan: $(B)/asan/bucketfs_asan.so
	@scripts/check-samba.sh install $<
	install -d $(MODULESDIR)/vfs
	install -m 0644 $< $(MODULESDIR)/vfs/bucketfs_asan.so

install: $(B)/bucketfs.so $(B)/bucketfs-ctl $(B)/bucketfsd $(B)/bucketfs-lease
	@scripts/check-samba.sh install $(B)/bucketfs.so
	install -d $(MODULESDIR)/vfs
	install -m 0644 $(B)/bucketfs.so $(MODULESDIR)/vfs/bucketfs.so
	install -m 0755 $(B)/bucketfs-ctl /usr/local/bin/bucketfs-ctl
	install -d /usr/local/sbin
	install -m 0755 $(B)/bucketfsd /usr/local/sbin/bucketfsd
	install -m 0755 $(B)/bucketfs-lease /usr/local/sbin/bucketfs-lease
	install -d /usr/local/share/man/man8
	install -m 0644 docs/vfs_bucketfs.8 /usr/local/share/man/man8/vfs_bucketfs.8

# A whole make test also builds the module in Samba's tree (tests/run.py);
# on a fresh tree that tree's configure runs beside the headers' one
# (samba-headers.sh), which leaves a core idle.
test: export BFS_INTREE = $(if $(ONLY)$(T),,1)
test: all install install-asan
	@python3 tests/run.py

# The tests make their folders under TMPDIR: one of ours, removed after.
unit: $(UNIT)
	@d=$$(mktemp -d /tmp/bfs-unit.XXXXXX) && \
	for t in $(UNIT); do TMPDIR=$$d $$t || { rm -rf $$d; exit 1; }; done; \
	rm -rf $$d

demo: all install
	@scripts/demo.sh

demo-stop:
	@scripts/demo.sh stop

cluster-demo: all install
	@/usr/bin/python3 scripts/cluster_demo.py

cluster-stop:
	@/usr/bin/python3 scripts/cluster_demo.py stop

intree: $(B)/.deps-ok
	@scripts/intree-build.sh

# The Debian package (debian/), built from the tracked files into build/deb.
deb: $(B)/.deps-ok
	@scripts/make-deb.sh

clean:
	rm -rf $(B)/lib $(B)/modules $(B)/tests $(B)/bucketfs.so $(B)/libbucketfs.a $(B)/asan

$(B)/s3tool: tests/integration/s3tool.c $(B)/libbucketfs.a
	$(CC) $(OPT) $(WARN) -D_GNU_SOURCE -Ilib $(PKG_CFLAGS) $< -o $@ \
	  $(B)/libbucketfs.a $(PKG_LIBS)

# The alternatives users would pick (Debian's s3fs and rclone over FUSE)
# and matplotlib for the charts: only the benchmark needs them.
bench-deps:
	@for p in s3fs rclone fuse3 python3-matplotlib; do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || \
	  missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "bench: installing$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing \
	  >$(B)/apt-bench.log 2>&1 || { tail -20 $(B)/apt-bench.log; exit 1; }; fi

$(B)/bench/randread: bench/randread.c $(B)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(OPT) $(WARN) $$(pkg-config --cflags smbclient) $< -o $@ $$(pkg-config --libs smbclient)

# Samba's libsmb on tevent (see the tool's comment), as smbrenopen; the
# credit calls are libcli-smb-common's, nt_errstr() libsamba-errors'.
$(B)/bench/loader: bench/loader.c $(B)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(OPT) $(WARN) $$(pkg-config --cflags smbclient tevent talloc) $< -o $@ \
	  $$(pkg-config --libs smbclient tevent talloc) -l:libsamba-errors.so.1 \
	  -L$(MODULESDIR) -l:liblibsmb-samba4.so.0 -l:libcli-smb-common-samba4.so.0 \
	  -Wl,-rpath,$(MODULESDIR)

bench: all install bench-deps $(B)/bench/randread $(B)/bench/loader
	@python3 bench/compare.py
	@/usr/bin/python3 bench/cluster_bench.py

bench-cluster: all install
	@/usr/bin/python3 bench/cluster_bench.py

bench-read: all install
	@python3 bench/read_bench.py

bench-write: all install
	@python3 bench/write_bench.py

# ---- hardening: fuzzing, sanitizers, valgrind (tests/hardening.py) ----------
#
# Each has its own objects under build/: instrumented code must not be
# mixed with the gcc objects of the module.  A run prints one line per
# target or binary ("fuzz NAME: N runs, no crash", "asan NAME: ok", ...),
# which tests/hardening.py reads; its log is build/<kind>/NAME.log.  A
# failing target does not stop the others; the run fails at the end.

CLANG        ?= clang
FUZZ_SECONDS ?= 20
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_FLAGS   := -g -O1 -fno-omit-frame-pointer $(WARN) -D_GNU_SOURCE -Ilib
FUZZ_SRC     := $(sort $(wildcard tests/fuzz/*.c))
FUZZ_BIN     := $(FUZZ_SRC:tests/fuzz/%.c=$(B)/fuzz/%)
FUZZ_LIB_OBJ := $(LIB_SRC:lib/%.c=$(B)/fuzz/lib/%.o)

# lib/ with coverage instrumentation but without libFuzzer's main().
$(B)/fuzz/lib/%.o: lib/%.c lib/*.h $(B)/.deps-ok
	@mkdir -p $(dir $@)
	$(CLANG) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link $(FUZZ_SAN) $(PKG_CFLAGS) -c $< -o $@

$(B)/fuzz/libbucketfs.a: $(FUZZ_LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(B)/fuzz/%: tests/fuzz/%.c tests/fuzz/*.h $(B)/fuzz/libbucketfs.a
	$(CLANG) $(FUZZ_FLAGS) -fsanitize=fuzzer $(FUZZ_SAN) $(PKG_CFLAGS) $< -o $@ \
	  $(B)/fuzz/libbucketfs.a $(PKG_LIBS)

fuzz-build: $(FUZZ_BIN)

# Seeds from the repository, what the fuzzer finds in build/fuzz/corpus-NAME
# (kept between runs), crashing inputs in build/fuzz/artifacts/.
fuzz: fuzz-build
	@mkdir -p $(B)/fuzz/artifacts; fail=0; \
	for f in $(FUZZ_BIN); do n=$${f##*/}; log=$(B)/fuzz/$$n.log; \
	  mkdir -p $(B)/fuzz/corpus-$$n; \
	  if $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	       -artifact_prefix=$(B)/fuzz/artifacts/$$n- \
	       $(B)/fuzz/corpus-$$n tests/fuzz/corpus/$$n >$$log 2>&1 && \
	     runs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $$log) && \
	     [ "$${runs:-0}" -gt 0 ]; then \
	    echo "fuzz $$n: $$runs runs, no crash"; \
	  else echo "fuzz $$n: FAILED, see $$log"; fail=1; fi; \
	done; exit $$fail

SANUNIT_FLAGS   := -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer \
                   -fno-sanitize-recover=undefined
SANUNIT_LIB_OBJ := $(LIB_SRC:lib/%.c=$(B)/asan-unit/lib/%.o)
SANUNIT_BIN     := $(UNIT:$(B)/tests/%=$(B)/asan-unit/%)

$(B)/asan-unit/lib/%.o: lib/%.c lib/*.h $(B)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(SANUNIT_FLAGS) $(WARN) -D_GNU_SOURCE -Ilib $(PKG_CFLAGS) -c $< -o $@

$(B)/asan-unit/libbucketfs.a: $(SANUNIT_LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(B)/asan-unit/%: tests/unit/%.c tests/unit/*.h $(B)/asan-unit/libbucketfs.a
	$(CC) $(SANUNIT_FLAGS) $(WARN) -D_GNU_SOURCE -Ilib $(PKG_CFLAGS) $< -o $@ \
	  $(B)/asan-unit/libbucketfs.a $(PKG_LIBS) -lcmocka

# A sanitizer report fails the binary even where the test itself would
# not notice (LeakSanitizer reports at exit, with the exit code set).
asan-unit: $(SANUNIT_BIN)
	@fail=0; for t in $(SANUNIT_BIN); do n=$${t##*/}; log=$(B)/asan-unit/$$n.log; \
	  if ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=98 \
	     UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 $$t >$$log 2>&1 && \
	     ! grep -q 'Sanitizer\|runtime error:' $$log; then echo "asan $$n: ok"; \
	  else echo "asan $$n: FAILED, see $$log"; fail=1; fi; \
	done; exit $$fail

# The ordinary (gcc -O2 -g) unit binaries: valgrind sees the code as
# shipped.  The tests' forked children are stand-ins that only _exit; what
# they hold then is their parent's heap, not a leak, so they are not checked.
# valgrind runs one thread at a time; its default lock lets a busy thread
# take it back at once, so a test whose reader thread never pauses starved
# the thread that grows the index's map for minutes: --fair-sched=yes
# hands it round in turn, as the kernel would.
valgrind-unit: $(UNIT)
	@mkdir -p $(B)/valgrind; fail=0; \
	for t in $(UNIT); do n=$${t##*/}; log=$(B)/valgrind/$$n.log; \
	  if valgrind -q --fair-sched=yes --error-exitcode=99 --leak-check=full \
	       --errors-for-leak-kinds=definite --show-leak-kinds=definite \
	       --child-silent-after-fork=yes $$t >$$log 2>&1; then \
	    echo "valgrind $$n: ok"; \
	  else echo "valgrind $$n: FAILED, see $$log"; fail=1; fi; \
	done; exit $$fail
