#!/usr/bin/env bash
# Build bucketfs inside a Samba source tree with its wscript, as README.md
# describes, in build/samba-intree: a copy of the source of the installed
# samba (build/samba, without its build output) with our files where a
# third-party module goes and the two RECURSE lines.
#
#   intree-build.sh configure   copy and configure the tree, once per Samba
#                               version and wscript of ours
#   intree-build.sh objects     the same if needed, then compile the module's
#                               objects with waf (what make test checks)
#   intree-build.sh             the same, and link the module (make intree)
#
# Configured as scripts/samba-configure.sh configures the headers' tree, but
# with the system's MIT Kerberos, as Debian builds its samba, instead of the
# bundled Heimdal that waf would otherwise compile first: the link builds
# smbd's libraries, and Heimdal was a third of them (5 min 20 s -> 4 min 25 s
# on the 2-core test machine).  The link builds smbd's libraries first,
# about 4 minutes of both cores, which make test cannot afford within its
# 20 minutes: it checks the objects (1 CPU-minute, the headers' generation
# mostly), beside the tests that run alone after the lanes (tests/run.py),
# which leave the CPU mostly idle.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
src="$top/build/samba"
tree="$top/build/samba-intree"
log="$top/build/intree.log"
say() { printf 'intree: %s\n' "$*" >&2; }

exec 9>"$top/build/intree.lock"
flock 9

pkgver=$(cat "$src/.bucketfs-extracted" 2>/dev/null) ||
  { say "run 'make deps' first"; exit 1; }
want="$pkgver $(sha256sum <"$top/wscript" | cut -c1-16)"
marker="$tree/.bucketfs-intree-configured"

if [ "$(cat "$marker" 2>/dev/null)" != "$want" ]; then
  say "copying the Samba tree (without build output)"
  rm -rf "$tree"
  mkdir -p "$tree"
  # The headers' configure may be writing its output meanwhile: not copied.
  rsync -a --exclude /bin/ --exclude '/.bucketfs-*' --exclude '/.lock-*' \
    --exclude __pycache__/ --exclude /source3/modules/bucketfs/ "$src/" "$tree/"
  mkdir -p "$tree/source3/modules/bucketfs"
  cp "$top/wscript" "$tree/source3/modules/bucketfs/"
  sed -i "s|^    conf.RECURSE('source3')$|&\n    conf.RECURSE('source3/modules/bucketfs')|" "$tree/wscript"
  sed -i "s|^bld.RECURSE('source3')$|&\nbld.RECURSE('source3/modules/bucketfs')|" "$tree/wscript_build"
  grep -q "source3/modules/bucketfs" "$tree/wscript" &&
    grep -q "source3/modules/bucketfs" "$tree/wscript_build" ||
    { say "could not add the RECURSE lines"; exit 1; }
  say "configuring (about a minute and a half)"
  (cd "$tree" && "$top/scripts/samba-configure.sh" "$log" --with-system-mitkrb5) ||
    { tail -30 "$log"; say "configure failed"; exit 1; }
  echo "$want" >"$marker"
fi
if [ "${1:-}" = "configure" ]; then exit 0; fi

# Our sources as they are now (the wscript is the one configured).
rsync -a --delete "$top/wscript" "$top/modules" "$top/lib" "$tree/source3/modules/bucketfs/"
cd "$tree"
export PYTHONHASHSEED=1
if [ "${1:-}" = "objects" ]; then
  say "compiling vfs_bucketfs's objects with waf"
  ./buildtools/bin/waf build -j"$(nproc)" --targets=vfs_bucketfs.objlist >>"$log" 2>&1 ||
    { tail -40 "$log"; say "waf build failed"; exit 1; }
  for c in "$top"/modules/*.c "$top"/lib/*.c; do
    rel=${c#"$top"/}
    ls bin/default/source3/modules/bucketfs/"${rel%.c}".c.*.o >/dev/null 2>&1 ||
      { say "waf made no object of $rel"; exit 1; }
  done
  say "compiled $(ls "$top"/modules/*.c "$top"/lib/*.c | wc -l) files of vfs_bucketfs in $tree"
  exit 0
fi
say "building vfs_bucketfs with waf (a few minutes the first time)"
./buildtools/bin/waf build -j"$(nproc)" --targets=vfs_bucketfs >>"$log" 2>&1 ||
  { tail -40 "$log"; say "waf build failed"; exit 1; }
so=$(find bin/default/source3/modules/bucketfs -name 'libvfs_module_bucketfs.so' | head -1)
[ -n "$so" ] || { say "no module was produced"; exit 1; }
syms=$(nm -D "$so")
grep -q ' T samba_init_module' <<<"$syms" ||
  { say "$so does not export samba_init_module"; exit 1; }
say "built $tree/$so"
