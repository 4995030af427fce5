#!/usr/bin/env bash
# A single-node Ceph with its RADOS Gateway (S3) on loopback, every file in
# one private folder: no systemd, nothing in /etc/ceph or /var/lib/ceph.
#
#   scripts/rgw.sh start DIR RGW_PORT ACCESS_KEY SECRET
#   scripts/rgw.sh stop DIR
#
# One monitor, one OSD on memstore (objects in the OSD's memory), one RGW
# with beast on 127.0.0.1:RGW_PORT and an S3 user with the given keys
# (make buckets with build/s3tool mb).  The daemons fork into the
# background; stop ends them by their pid files.  No ceph-mgr: without it
# the cluster only warns.  Needs
# Debian's radosgw, ceph-mon, ceph-osd and ceph-common (Ceph 16, Pacific).
set -euo pipefail

log() { printf 'rgw: %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

stop() {
  local dir=$1 pid
  for f in "$dir"/run/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
  done
  for f in "$dir"/run/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

start() {
  local dir=$1 port=$2 ak=$3 sk=$4
  local mon_port fsid conf osd_uuid osd_key
  rm -rf "$dir"
  mkdir -p "$dir"/{run,log,mon,osd,rgw}
  mon_port=$(free_port)
  fsid=$(cat /proc/sys/kernel/random/uuid)
  conf=$dir/ceph.conf
  cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public addr = 127.0.0.1
ms bind ipv6 = false
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
keyring = $dir/admin.keyring
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
# Elections and proposals at loopback speed: start-up ~4 s, not ~16.
paxos propose interval = 0.05
mon lease = 1
[mon.a]
mon data = $dir/mon
[osd.0]
osd data = $dir/osd
osd objectstore = memstore
keyring = $dir/osd/keyring
[client.rgw.a]
keyring = $dir/rgw.keyring
rgw data = $dir/rgw
rgw frontends = beast endpoint=127.0.0.1:$port
rgw dns name = 127.0.0.1
EOF
  log "monitor on 127.0.0.1:$mon_port"
  ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$dir/admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/admin.keyring" >/dev/null
  monmaptool --create --addv a "[v2:127.0.0.1:$mon_port]" --fsid "$fsid" "$dir/monmap" >/dev/null
  ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.keyring"
  ceph-mon -c "$conf" -i a
  ceph -c "$conf" --connect-timeout 30 -s >/dev/null

  log "one OSD on memstore"
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  osd_key=$(ceph-authtool --gen-print-key)
  echo "{\"cephx_secret\": \"$osd_key\"}" |
    ceph -c "$conf" osd new "$osd_uuid" -i - >/dev/null
  # --mkfs --key does not write the keyring file: write it ourselves.
  printf '[osd.0]\n\tkey = %s\n' "$osd_key" >"$dir/osd/keyring"
  ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >/dev/null 2>&1
  ceph-osd -c "$conf" -i 0

  log "RGW on 127.0.0.1:$port"
  ceph -c "$conf" auth get-or-create client.rgw.a mon 'allow rw' osd 'allow rwx' \
    -o "$dir/rgw.keyring"
  radosgw -c "$conf" -n client.rgw.a
  local up=no
  for _ in $(seq 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=yes; break; fi
    sleep 0.1
  done
  [ "$up" = yes ] || { log "RGW does not listen on $port: see $dir/log"; exit 1; }
  radosgw-admin -c "$conf" user create --uid=bucketfs --display-name=bucketfs \
    --access-key="$ak" --secret="$sk" >/dev/null
  log "ready"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 start DIR PORT ACCESS_KEY SECRET | stop DIR" >&2; exit 2 ;;
esac
