#!/usr/bin/env bash
# make demo: a local S3 server with a small generated dataset, smbd with
# bucketfs on loopback, a listing and a file read through SMB.
#   scripts/demo.sh        start (or restart) and show it working
#   scripts/demo.sh stop   stop the demo's servers
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
B="$top/build"
D="$B/demo"
BUCKET=demo-datasets
S3_PORT=${DEMO_S3_PORT:-19000}
FRONT_PORT=${DEMO_S3_FRONT_PORT:-19001}
PUBLIC_PORT=${DEMO_S3_PUBLIC_PORT:-19002}   # the same bucket as a public one
PAYS_PORT=${DEMO_S3_PAYS_PORT:-19003}       # ... and as a requester-pays one
SMB_PORT=${DEMO_SMB_PORT:-19445}
PASS=demo

stop() {
  for p in "$D"/*.pid; do
    [ -f "$p" ] || continue
    kill "$(cat "$p")" 2>/dev/null || true
    rm -f "$p"
  done
  # The engines smbd started (bucketfsd, one per cache folder) outlive it.
  pkill -f "bucketfsd -s $D/" 2>/dev/null || true
}
if [ "${1:-}" = stop ]; then
  stop
  echo "demo: stopped"
  exit 0
fi

stop
rm -rf "$D"
mkdir -p "$D"/{s3,data,lock,state,cache,pid,private,ncalrpc,bfscache}
bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

bold "1. A local S3 server (s3rver on 127.0.0.1:$S3_PORT, SigV4 checked by a front on :$FRONT_PORT)"
NODE_OPTIONS=--openssl-legacy-provider setsid "$B/s3server/node_modules/.bin/s3rver" \
  -d "$D/s3" -a 127.0.0.1 -p "$S3_PORT" --silent --configure-bucket "$BUCKET" \
  >"$D/s3rver.log" 2>&1 & echo $! >"$D/s3rver.pid"
setsid python3 "$top/tests/integration/s3_front.py" "$FRONT_PORT" "$S3_PORT" \
  >"$D/front.log" 2>&1 & echo $! >"$D/front.pid"
# The same bucket behind fronts that behave as AWS does for a public
# bucket (unsigned reads) and a requester-pays one.
setsid python3 "$top/tests/integration/s3_front.py" "$PUBLIC_PORT" "$S3_PORT" --aws public \
  >"$D/front-public.log" 2>&1 & echo $! >"$D/front-public.pid"
setsid python3 "$top/tests/integration/s3_front.py" "$PAYS_PORT" "$S3_PORT" --aws requester-pays \
  >"$D/front-pays.log" 2>&1 & echo $! >"$D/front-pays.pid"
for port in $FRONT_PORT $PUBLIC_PORT $PAYS_PORT; do
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.2
  done
done

bold "2. A small dataset uploaded to s3://$BUCKET"
export S3_ENDPOINT="http://127.0.0.1:$FRONT_PORT" S3_BUCKET=$BUCKET
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER
for i in 0 1 2 3; do
  head -c $((4 << 20)) /dev/urandom >"$D/data/shard-$i.bin"
  "$B/s3tool" put "train/shard-000$i.bin" "$D/data/shard-$i.bin"
done
printf 'id,label\n1,cat\n2,dog\n3,caf\xc3\xa9\n' >"$D/data/labels.csv"
"$B/s3tool" put "train/labels.csv" "$D/data/labels.csv"
echo "A demo bucket served by bucketfs." >"$D/data/README.txt"
"$B/s3tool" put "README.txt" "$D/data/README.txt"
"$B/s3tool" put "val/2024/images/img 0001.bin" "$D/data/shard-0.bin"
"$B/s3tool" ls ""

bold "3. smbd with 'vfs objects = bucketfs' on 127.0.0.1:$SMB_PORT"
printf '[default]\naws_access_key_id = S3RVER\naws_secret_access_key = S3RVER\n' >"$D/credentials"
chmod 600 "$D/credentials"
cat >"$D/smb.conf" <<CONF
[global]
  smb ports = $SMB_PORT
  interfaces = 127.0.0.1
  bind interfaces only = yes
  lock directory = $D/lock
  state directory = $D/state
  cache directory = $D/cache
  pid directory = $D/pid
  private dir = $D/private
  ncalrpc dir = $D/ncalrpc
  log file = $D/log.smbd
  log level = 1
  passdb backend = tdbsam:$D/private/passdb.tdb
  server role = standalone server
  load printers = no
  printcap name = /dev/null
  disable spoolss = yes
[datasets]
  path = /bucketfs/datasets
  vfs objects = bucketfs
  bucketfs:bucket = $BUCKET
  bucketfs:endpoint = $S3_ENDPOINT
  bucketfs:path style = yes
  bucketfs:credentials file = $D/credentials
  bucketfs:cache dir = $D/bfscache
  bucketfs:metrics file = $D/metrics.prom
  bucketfs:metrics interval = 1
[checkpoints]
  path = /bucketfs/checkpoints
  vfs objects = bucketfs
  bucketfs:bucket = $BUCKET
  bucketfs:prefix = checkpoints
  bucketfs:endpoint = $S3_ENDPOINT
  bucketfs:path style = yes
  bucketfs:credentials file = $D/credentials
  bucketfs:cache dir = $D/bfscache
  read only = no
CONF
cat >>"$D/smb.conf" <<CONF
[opendata]
  # A public dataset: unsigned requests, no credentials.
  path = /bucketfs/opendata
  vfs objects = bucketfs
  bucketfs:bucket = $BUCKET
  bucketfs:endpoint = http://127.0.0.1:$PUBLIC_PORT
  bucketfs:path style = yes
  bucketfs:anonymous = yes
  bucketfs:cache dir = $D/bfscache-open
  read only = yes
[paid]
  # A requester-pays bucket: this account pays for what it reads.
  path = /bucketfs/paid
  vfs objects = bucketfs
  bucketfs:bucket = $BUCKET
  bucketfs:endpoint = http://127.0.0.1:$PAYS_PORT
  bucketfs:path style = yes
  bucketfs:credentials file = $D/credentials
  bucketfs:requester pays = yes
  bucketfs:cache dir = $D/bfscache-paid
  read only = yes
CONF
printf '%s\n%s\n' $PASS $PASS | smbpasswd -c "$D/smb.conf" -s -a root >/dev/null
setsid smbd --foreground --no-process-group -s "$D/smb.conf" >"$D/smbd.out" 2>&1 &
echo $! >"$D/smbd.pid"
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/$SMB_PORT) 2>/dev/null && break; sleep 0.2
done
echo "smbd pid $(cat "$D/smbd.pid"), config $D/smb.conf"

smb() { smbclient //127.0.0.1/datasets -p "$SMB_PORT" -U "root%$PASS" -m SMB3 -c "$1"; }
bold "4. Listing through SMB: smbclient -c 'ls; cd train; ls'"
smb 'ls; cd train; ls'

bold "5. Reading through SMB: get train/labels.csv and train/shard-0002.bin"
smb 'cd train; get labels.csv -'
smb "cd train; get shard-0002.bin $D/shard-0002.via-smb"
a=$(sha256sum <"$D/data/shard-2.bin" | cut -c1-64)
b=$(sha256sum <"$D/shard-0002.via-smb" | cut -c1-64)
echo "sha256 uploaded:      $a"
echo "sha256 read over SMB: $b"
[ "$a" = "$b" ] && echo "identical" || { echo "DIFFERENT"; exit 1; }

bold "6. Reading it again: from the local cache, no S3 request"
gets() { grep -c "^GET /$BUCKET/train/shard-0002.bin" "$D/front.log" || true; }
before=$(gets)
smb "cd train; get shard-0002.bin /dev/null"
echo "S3 GETs for shard-0002.bin: $before before the second read, $(gets) after"

bold "7. A checkpoint: write ckpt.tmp, rename it over ckpt.pt (close = local: the close answers once it is journalled; the engine uploads it)"
head -c $((24 << 20)) /dev/urandom >"$D/ckpt.bin"
t0=$(date +%s.%N)
smbclient //127.0.0.1/checkpoints -p "$SMB_PORT" -U "root%$PASS" -m SMB3 \
  -c "mkdir run1; put $D/ckpt.bin run1/ckpt.tmp; rename run1/ckpt.tmp run1/ckpt.pt -f; cd run1; ls"
echo "smbclient returned after $(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $t0 }") s; what the gateway holds for S3 now:"
"$B/bucketfs-ctl" -s "$D/smb.conf" checkpoints pending
for _ in $(seq 100); do
  [ -z "$("$B/bucketfs-ctl" -s "$D/smb.conf" checkpoints pending)" ] && break
  sleep 0.1
done
echo "in S3 after $(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $t0 }") s (the rename moved the upload: no server-side copy)"
"$B/s3tool" get checkpoints/run1/ckpt.pt "$D/ckpt.from-s3"
echo "sha256 written:  $(sha256sum <"$D/ckpt.bin" | cut -c1-64)"
echo "sha256 in S3:    $(sha256sum <"$D/ckpt.from-s3" | cut -c1-64)"
"$B/s3tool" ls checkpoints/

bold "8. bucketfs-ctl datasets stats (what the cache did; metrics in $D/metrics.prom)"
"$B/bucketfs-ctl" -s "$D/smb.conf" datasets stats

bold "9. A public dataset (no credentials, unsigned requests) and a requester-pays bucket"
smbclient //127.0.0.1/opendata -p "$SMB_PORT" -U "root%$PASS" -m SMB3 -c 'cd train; ls'
echo "requests to the public bucket that carried a signature: $(grep -vc ' ak=- ' "$D/front-public.log" || true) of $(wc -l <"$D/front-public.log")"
smbclient //127.0.0.1/paid -p "$SMB_PORT" -U "root%$PASS" -m SMB3 -c 'get README.txt -'
echo "(the requester-pays front refuses any request without x-amz-request-payer)"

bold "The demo keeps running"
cat <<MSG
Connect:   smbclient //127.0.0.1/datasets -p $SMB_PORT -U root%$PASS
           smbclient //127.0.0.1/checkpoints -p $SMB_PORT -U root%$PASS   (writable)
Operate:   $B/bucketfs-ctl -s $D/smb.conf datasets {stats|warm PREFIX|invalidate PREFIX|pending|fsck}
Mount:     mount -t cifs //127.0.0.1/datasets /mnt -o port=$SMB_PORT,username=root,password=$PASS,vers=3.0
Logs:      $D/log.smbd
Stop:      make demo-stop
MSG
