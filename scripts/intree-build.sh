#!/usr/bin/env bash
# Build bucketfs inside a Samba source tree with its wscript, as README.md
# describes.  Works on a copy of the prepared tree (build/samba, without its
# build output) so the headers used by the normal build stay untouched.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
src="$top/build/samba"
tree="$top/build/samba-intree"
log="$top/build/intree.log"
say() { printf 'intree: %s\n' "$*" >&2; }

[ -f "$src/.bucketfs-ready" ] || { say "run 'make deps' first"; exit 1; }
say "copying the Samba tree (without build output)"
mkdir -p "$tree"
rsync -a --delete --exclude /bin/ --exclude '/.bucketfs-*' \
  --exclude /source3/modules/bucketfs/ "$src/" "$tree/"

# Our sources where a third-party module goes, and the two RECURSE lines.
mkdir -p "$tree/source3/modules/bucketfs"
rsync -a --delete "$top/wscript" "$top/modules" "$top/lib" "$tree/source3/modules/bucketfs/"
grep -q "source3/modules/bucketfs" "$tree/wscript" ||
  sed -i "s|^    conf.RECURSE('source3')$|&\n    conf.RECURSE('source3/modules/bucketfs')|" "$tree/wscript"
grep -q "source3/modules/bucketfs" "$tree/wscript_build" ||
  sed -i "s|^bld.RECURSE('source3')$|&\nbld.RECURSE('source3/modules/bucketfs')|" "$tree/wscript_build"
grep -q "source3/modules/bucketfs" "$tree/wscript" "$tree/wscript_build" >/dev/null ||
  { say "could not add the RECURSE lines"; exit 1; }

cd "$tree"
export PYTHONHASHSEED=1
if [ ! -f bin/c4che/default_cache.py ] || [ wscript -nt bin/c4che/default_cache.py ]; then
  say "configuring (about a minute)"
  "$top/scripts/samba-configure.sh" "$log" ||
    { tail -30 "$log"; say "configure failed"; exit 1; }
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
