#!/usr/bin/env bash
# Configure a Samba source tree (the current folder) minimally: what a VFS
# module needs, nothing that pulls in AD, printing or Python.  Output goes to
# the log file given as $1; further arguments go to configure.
set -euo pipefail
export PYTHONHASHSEED=1
./configure --disable-python --without-ad-dc --without-ads --without-ldap \
  --without-pam --disable-cups --disable-iprint --without-systemd \
  --without-json --without-libarchive --without-winbind --disable-avahi \
  --without-gpgme --without-quotas --without-acl-support --disable-glusterfs \
  --disable-cephfs --without-ldb-lmdb --bundled-libraries=NONE \
  --with-shared-modules='!vfs_snapper' "${@:2}" >"$1" 2>&1
