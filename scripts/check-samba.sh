#!/usr/bin/env bash
# A module built for another Samba must never be loaded.  Compare what the
# prepared headers were made from with the smbd installed here.
#   check-samba.sh build             before compiling
#   check-samba.sh install MODULE.so before copying into MODULESDIR
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tree="$top/build/samba"
die() { printf 'bucketfs: %s\n' "$*" >&2; exit 1; }

installed=$(dpkg-query -W -f='${Version}' samba 2>/dev/null) ||
  die "samba is not installed (run: make deps)"
prepared=$(cat "$top/build/samba.version" 2>/dev/null) ||
  die "Samba headers not prepared (run: make deps)"
[ "$installed" = "$prepared" ] ||
  die "headers were prepared for samba $prepared but $installed is installed; run: make deps"

# smbd -V says e.g. "Version 4.17.12-Debian"; the tree's VERSION says 4.17.12.
smbd_ver=$(smbd -V | awk '{print $2}')
tree_ver=$(sed -n 's/^#[[:space:]]*define SAMBA_VERSION_STRING "\(.*\)"$/\1/p' "$tree/bin/default/version.h" | head -1)
case "$smbd_ver" in
  "$tree_ver"|"$tree_ver"-*) ;;
  *) die "smbd is $smbd_ver but the headers are from Samba $tree_ver; run: make deps" ;;
esac
iface=$(sed -n 's/^#define SMB_VFS_INTERFACE_VERSION \([0-9]*\).*/\1/p' "$tree/source3/include/vfs.h")

if [ "${1:-}" = install ]; then
  so=${2:?module path}
  # The module records what it was built against; it must match too.
  built=$(strings "$so" | sed -n 's/^bucketfs-built-for: //p' | head -1)
  [ "$built" = "samba=$prepared vfs=$iface" ] ||
    die "$so was built for '$built', smbd here is 'samba=$installed vfs=$iface'; run: make clean all"
fi
exit 0
