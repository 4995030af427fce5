#!/usr/bin/env bash
# make deb: build the Debian package with dpkg-buildpackage from a copy of
# the tracked files (as a fresh clone has them), then run lintian on it.
# The copy reuses the Samba headers make deps prepared (build/samba), which
# debian/rules would otherwise prepare itself.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out="$top/build/deb"
say() { printf 'deb: %s\n' "$*" >&2; }

for p in debhelper lintian; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
    missing="${missing:-} $p"
done
if [ -n "${missing:-}" ]; then
  say "installing$missing"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing \
    >"$top/build/apt-deb.log" 2>&1 || { tail -20 "$top/build/apt-deb.log"; exit 1; }
fi

ver=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)
src="$out/bucketfs-$ver"
rm -rf "$out" && mkdir -p "$src/build"
(cd "$top" && git ls-files -z | rsync -a --from0 --files-from=- ./ "$src/")
ln -s "$top/build/samba" "$src/build/samba"
cp -p "$top/build/samba.version" "$src/build/"

say "dpkg-buildpackage -us -uc in $src"
(cd "$src" && dpkg-buildpackage -us -uc) >"$out/build.log" 2>&1 ||
  { tail -40 "$out/build.log"; say "dpkg-buildpackage failed (log: $out/build.log)"; exit 1; }
deb=$(ls "$out"/bucketfs_"$ver"_*.deb)
say "built $deb"

# Errors fail the build; warnings and the rest are shown.
lintian --fail-on error "$out"/bucketfs_"$ver"_*.changes | tee "$out/lintian.log" >&2 ||
  { say "lintian found errors (above)"; exit 1; }
say "lintian: $(grep -c '^E:' "$out/lintian.log" || true) errors, $(grep -c '^W:' "$out/lintian.log" || true) warnings"
