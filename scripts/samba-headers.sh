#!/usr/bin/env bash
# Prepare build/samba: the source tree of the installed samba package,
# configured minimally, with the generated headers that source3/include/vfs.h
# pulls in.  Records the version it was prepared for in build/samba.version.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build="$top/build"
tree="$build/samba"
log() { printf 'samba-headers: %s\n' "$*" >&2; }

if [ "${1:-}" = "--cflags" ]; then
  cat "$tree/.bucketfs-cflags"
  exit 0
fi

pkgver=$(dpkg-query -W -f='${Version}' samba 2>/dev/null) ||
  { log "samba is not installed; run make deps"; exit 1; }

if [ -f "$build/samba.version" ] && [ "$(cat "$build/samba.version")" = "$pkgver" ] &&
   [ -f "$tree/.bucketfs-ready" ]; then
  exit 0
fi

log "preparing headers for samba $pkgver (a few minutes, once)"
rm -f "$build/samba.version"
if [ ! -f "$tree/.bucketfs-extracted" ] || [ "$(cat "$tree/.bucketfs-extracted")" != "$pkgver" ]; then
rm -rf "$tree" "$build/samba-src"
mkdir -p "$build/samba-src"

# apt-get source needs a deb-src entry next to the Debian sources in use.
if ! apt-get source --print-uris "samba=$pkgver" >/dev/null 2>&1; then
  src=/etc/apt/sources.list.d/bucketfs-deb-src.sources
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$src"
  else
    grep -h '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' >"${src%.sources}.list"
  fi
  apt-get update -qq
fi
(cd "$build/samba-src" && apt-get source -qq --download-only "samba=$pkgver" >/dev/null 2>&1 ||
   apt-get source -qq --download-only "samba=$pkgver")
dsc=$(ls "$build"/samba-src/samba_*.dsc | head -1)
(cd "$build/samba-src" && dpkg-source -x --no-check "$(basename "$dsc")" tree >/dev/null 2>&1)
mv "$build/samba-src/tree" "$tree"
rm -rf "$build/samba-src"
echo "$pkgver" >"$tree/.bucketfs-extracted"
fi

# A whole make test builds the module in a copy of this tree too
# (scripts/intree-build.sh, tests/run.py).  That copy's configure runs now,
# beside ours: a configure is mostly one core's work, and the other is
# idle until the headers' generation.  Its compile comes later, beside the
# tests that run alone.
intree=
if [ "${BFS_INTREE:-}" = 1 ]; then
  nice -n 5 "$top/scripts/intree-build.sh" configure </dev/null \
    >"$build/intree-configure.log" 2>&1 &
  intree=$!
fi

cd "$tree"
# waf refuses to run without a fixed hash seed.
export PYTHONHASHSEED=1
if [ ! -f "$tree/.bucketfs-configured" ]; then
"$top/scripts/samba-configure.sh" "$build/samba-configure.log" ||
  { tail -30 "$build/samba-configure.log"; log "configure failed"; exit 1; }
touch "$tree/.bucketfs-configured"
fi

# Compiling one small VFS module generates every header vfs.h needs
# (IDL-generated NDR headers, param_proto.h, version.h, ...): waf runs every
# build group before the target's, and those groups hold the generators.
# Only its objects (".objlist"), not the module: linking it would build
# the libraries it links with, about 1,500 more files and 4 more minutes.
./buildtools/bin/waf build -j"$(nproc)" --targets=vfs_fake_perms.objlist \
  >"$build/samba-build.log" 2>&1 ||
  { tail -30 "$build/samba-build.log"; log "header generation failed"; exit 1; }

# Record the flags Samba's own build compiles a VFS module with, made
# absolute, for building ours outside the tree.
rm -f bin/default/source3/modules/vfs_fake_perms.c.*.o
./buildtools/bin/waf build -v --targets=vfs_fake_perms.objlist >"$build/samba-flags.log" 2>&1
python3 - "$tree" "$build/samba-flags.log" >"$tree/.bucketfs-cflags" <<'PY'
import ast, os, sys
tree, logf = sys.argv[1], sys.argv[2]
for line in open(logf):
    if "vfs_fake_perms.c" in line and "runner" in line:
        argv = ast.literal_eval(line[line.index("["):])
        break
else:
    sys.exit("no compiler line for vfs_fake_perms in " + logf)
out, bld = [], os.path.join(tree, "bin/default")
for a in argv[1:]:
    if a.startswith("-I"):
        out.append("-I" + os.path.normpath(os.path.join(bld, a[2:])))
    elif a.startswith("-D") and "STATIC_" not in a:
        out.append(a)
    elif a == "-fPIC":
        out.append(a)
print(" ".join(out))
PY
touch "$tree/.bucketfs-ready"
echo "$pkgver" >"$build/samba.version"
if [ -n "$intree" ] && ! wait "$intree"; then
  # Not ours to fail: make test's in-tree check configures again and says why.
  log "the in-tree copy's configure failed, see $build/intree-configure.log"
fi
log "done"
