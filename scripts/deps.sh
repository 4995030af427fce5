#!/usr/bin/env bash
# Install, idempotently, everything bucketfs needs to build and test:
#   - Debian packages (smbd, clients, libraries, Samba's build deps)
#   - the pinned S3 test server from the npm registry (tests/s3server)
#   - Samba's private headers: the source package of the *installed* samba,
#     configured minimally, with the generated headers a VFS module needs.
# Everything lands under build/ (ignored), so a second run takes seconds.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
build="$top/build"
mkdir -p "$build"

log() { printf 'deps: %s\n' "$*" >&2; }

# Runtime and build packages.  Samba's build deps are the ones its minimal
# configure needs (see DEVELOPERS.md); the rest are ours (clang with its
# runtime, which has libFuzzer and is only recommended, and valgrind: the
# hardening tests; python3-impacket, for SMB requests smbclient cannot make;
# samba-testsuite, for smbtorture (Samba's conformance suites); pytest
# with its random-order plugin, the integration tests' runner;
# Ceph's monitor, OSD and RADOS Gateway: a production S3 server for the
# tests, started by scripts/rgw.sh; ctdb, with iptables and ethtool for
# its 10.interface event script (ethtool is only recommended by ctdb, and
# without it every monitor event fails: "No link on the public network
# interface", all nodes UNHEALTHY): the clustered gateway's tests and
# make cluster-demo, tests/cluster.py); MIT Kerberos's headers, for the
# in-tree build (scripts/intree-build.sh).
pkgs=(
  samba smbclient libsmbclient-dev
  libtalloc-dev libtevent-dev libcurl4-openssl-dev libssl-dev liblmdb-dev
  libexpat1-dev libcmocka-dev pkg-config lmdb-utils libisal-dev
  dpkg-dev python3 libgnutls28-dev libparse-yapp-perl flex bison libpopt-dev
  libtdb-dev libldb-dev libacl1-dev libjansson-dev zlib1g-dev libkeyutils-dev
  libkrb5-dev
  nodejs npm man-db rsync python3-impacket samba-testsuite
  python3-pytest python3-pytest-random-order
  clang libclang-rt-14-dev valgrind
  radosgw ceph-mon ceph-osd ceph-common
  ctdb iptables ethtool
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
    missing+=("$p")
done
# npm may come with nodejs itself (nodesource); only ask apt for it if no npm.
if command -v npm >/dev/null; then
  missing=("${missing[@]/npm}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # samba's postinst starts the daemons; keep the system's smbd/nmbd out of
  # the way of our loopback tests.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$build/apt.log" 2>&1 ||
    { tail -30 "$build/apt.log"; log "apt-get install failed"; exit 1; }
fi

# The S3 server for tests: s3rver, pinned by tests/s3server/package-lock.json.
s3dir="$build/s3server"
if ! cmp -s "$top/tests/s3server/package-lock.json" "$s3dir/package-lock.json" ||
   [ ! -x "$s3dir/node_modules/.bin/s3rver" ]; then
  log "installing s3rver (npm ci)"
  rm -rf "$s3dir"; mkdir -p "$s3dir"
  cp "$top/tests/s3server/package.json" "$top/tests/s3server/package-lock.json" "$s3dir/"
  (cd "$s3dir" && npm ci --no-audit --no-fund --loglevel=error >"$build/npm.log" 2>&1) ||
    { tail -30 "$build/npm.log"; log "npm ci failed"; exit 1; }
fi

# s3rver 3.7.1 prunes its directory walk below the first delimiter, so a
# prefix holding only deeper prefixes ("a/" for the single key "a/b/c") is
# missing from CommonPrefixes, unlike S3.  Walk the whole subtree instead
# (slower, but what S3 answers).  Idempotent; fails loudly if the code moved.
fs_store="$s3dir/node_modules/s3rver/lib/stores/filesystem.js"
if ! grep -q 'bucketfs: walk below common prefixes' "$fs_store"; then
  grep -q '^          delimiterEnc &&$' "$fs_store" ||
    { log "s3rver's filesystem store changed: cannot apply the listing fix"; exit 1; }
  sed -i 's|^          delimiterEnc &&$|          false /* bucketfs: walk below common prefixes */ \&\& delimiterEnc \&\&|' "$fs_store"
fi

# Its walk of the store stats every file to tell folders from objects:
# listing a bucket's root then costs a stat per key below it (2.9 s for
# 100,000 keys).  The directory entries already say which is a folder.
# Same files, same order.  Idempotent; fails loudly if the code moved.
utils_js="$s3dir/node_modules/s3rver/lib/utils.js"
if ! grep -q 'bucketfs: no stat per file' "$utils_js"; then
  grep -q '^  for (const filename of fs.readdirSync(dir)) {$' "$utils_js" &&
    grep -q '^    const stats = fs.statSync(filePath);$' "$utils_js" &&
    grep -q '^    if (!stats.isDirectory()) {$' "$utils_js" ||
    { log "s3rver's walk changed: cannot apply the stat fix"; exit 1; }
  sed -i -e 's|^  for (const filename of fs.readdirSync(dir)) {$|  for (const filename of fs.readdirSync(dir, { withFileTypes: true })) { // bucketfs: no stat per file|' \
    -e 's|^    const filePath = path.posix.join(dir, filename);$|    const filePath = path.posix.join(dir, filename.name);|' \
    -e 's|^    const stats = fs.statSync(filePath);$||' \
    -e 's|^    if (!stats.isDirectory()) {$|    if (!filename.isDirectory()) {|' "$utils_js"
fi

# Samba's private headers, from the source of exactly the installed version.
"$top/scripts/samba-headers.sh"
log "ok"
