#!/usr/bin/python3
"""make cluster-demo: three clustered gateways (CTDB) on one bucket, on
this machine (tests/cluster.py says how), shown working:

  1. a listing and a read through each node's public address;
  2. a checkpoint written through node 0, read through node 1;
  3. the node holding 10.77.0.101 killed, the address answering from
     another node, the file read again byte-exact.

It stays up for you to try (smbclient //10.77.0.10x/data -U root%demo);
`make cluster-stop` ends it.  Needs root (namespaces, a bridge).
"""
import os
import signal
import subprocess
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "tests"))

import world  # noqa: E402
from cluster import NODES, Cluster, public_ip, share  # noqa: E402

import cluster as cluster_mod  # noqa: E402

cluster_mod.PASSWORD = "demo"  # the SMB password of root, as make demo's
D = os.path.join(TOP, "build/cluster-demo")
S3_PORT = 19050
SHARES = share("data", "demo/", "bucketfs:metadata ttl = 2", "read only = no")


def bold(text):
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def stop():
    pids = f"{D}/pids"
    if os.path.exists(pids):
        for pid in open(pids).read().split():
            try:
                os.killpg(int(pid), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        os.remove(pids)
    subprocess.run(["pkill", "-KILL", "-f", f"bucketfsd -s {D}/"])
    for i in range(NODES):
        for pid in subprocess.run(["ip", "netns", "pids", f"bfs-n{i}"], capture_output=True,
                                  text=True).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    Cluster.net_down()


def main():
    if sys.argv[1:] == ["stop"]:
        stop()
        print("cluster-demo: stopped")
        return 0
    stop()
    subprocess.run(["rm", "-rf", D])
    bold(f"1. S3 (s3rver on 127.0.0.1:{S3_PORT}), three nodes in namespaces bfs-n0..2")
    s3 = world.start_s3rver(f"{D}/s3", S3_PORT, f"{D}/s3rver.log")
    c = Cluster(D, S3_PORT, SHARES)
    c.start()
    with open(f"{D}/pids", "w") as f:
        f.write(" ".join(str(p.pid) for p in [s3, *c.procs.values()]))
    print(c.ctdb(0, "status").stdout)
    print(c.ctdb(0, "ip").stdout)
    s3env = dict(os.environ, S3_ENDPOINT=c.endpoint, S3_BUCKET=world.BUCKET,
                 AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER")
    src = world.make_file(f"{D}/shard-000.tar", 16 << 20)
    subprocess.run([f"{world.B}/s3tool", "put", "demo/shard-000.tar", src], env=s3env, check=True)
    time.sleep(1)

    bold("2. A listing and a read through each node's public address")
    for n in range(NODES):
        out = c.smbclient(public_ip(n), "data", f"ls; get shard-000.tar {D}/got-{n}.tar")
        same = world.sha256(f"{D}/got-{n}.tar") == world.sha256(src)
        print(f"-- {public_ip(n)} (node {c.holder(public_ip(n))}): "
              f"read {'byte-exact' if same else 'WRONG'}")
        print(out.stdout.rstrip())

    bold("3. A checkpoint written through node 0's address, read through node 1's")
    ck = world.make_file(f"{D}/ckpt.pt", 32 << 20)
    t = time.monotonic()
    c.smbclient(public_ip(0), "data", f"put {ck} ckpt.tmp; rename ckpt.tmp ckpt.pt")
    print(f"written and renamed in {time.monotonic() - t:.2f} s")
    t = time.monotonic()
    while c.smbclient(public_ip(1), "data", f"get ckpt.pt {D}/ckpt-b.pt",
                      check=False).returncode != 0:
        time.sleep(0.5)
    print(f"read through {public_ip(1)} {time.monotonic() - t:.1f} s later: "
          f"{'byte-exact' if world.sha256(f'{D}/ckpt-b.pt') == world.sha256(ck) else 'WRONG'}")

    bold(f"4. The node holding {public_ip(0)} dies (kill -9, link down)")
    victim = c.holder(public_ip(0))
    t = time.monotonic()
    c.kill_node(victim)
    while c.smbclient(public_ip(0), "data", f"get ckpt.pt {D}/ckpt-c.pt",
                      check=False).returncode != 0:
        time.sleep(0.5)
    other = (victim + 1) % NODES
    print(f"node {victim} killed; {public_ip(0)} answered from node "
          f"{c.holder(public_ip(0), asking=other)} after {time.monotonic() - t:.1f} s; read "
          f"{'byte-exact' if world.sha256(f'{D}/ckpt-c.pt') == world.sha256(ck) else 'WRONG'}")
    print(c.ctdb(other, "status").stdout)
    print(f"\nThe cluster stays up: smbclient //{public_ip(1)}/data -U root%demo ; "
          "make cluster-stop ends it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
