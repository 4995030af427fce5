#!/usr/bin/python3
"""make bench-cluster (also the last part of make bench): a cold dataset
read through 1, 2 and 3 nodes of the clustered gateway at once (issue 22
point 6), on this one machine (tests/cluster.py).

Three clients, each reading the whole dataset through smbclient, are
spread over the nodes used (with 2 nodes: two on one, one on the other).
Each run reads a dataset of its own, so every node starts cold.  Reported:
the clients' aggregate throughput, and the bytes each node fetched from S3
(the front logs every GET with its range and the node it came from), as a
multiple of the dataset: once per node is the target, however many
clients read through it.

This machine has 2 cores: one S3 server, three nodes and three clients
share them, so throughput does not scale here; the point is that it is
correct and that each object comes from S3 once per node.  Writes
bench/results/cluster.md.
"""
import os
import re
import subprocess
import sys
import threading
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "tests"))

import world  # noqa: E402
from cluster import NODES, Cluster, node_ip, public_ip, share  # noqa: E402

D = os.path.join(TOP, "build/bench-cluster")
S3_PORT = 19060
FILES, SIZE = 16, 16 << 20  # 256 MiB a dataset
CLIENTS = 3
SHARES = share("data", "bench/", "bucketfs:cache size = 2G")


def s3_bytes_by_node(log, prefix):
    """Bytes of GETs under prefix, by the node address they came from."""
    out = {}
    for line in log.splitlines():
        m = re.match(r"GET \S*/bench/" + re.escape(prefix) + r"\S* .*range=bytes=(\d+)-(\d+) .*"
                     r"from=(\S+)", line)
        if m:
            out[m.group(3)] = out.get(m.group(3), 0) + int(m.group(2)) - int(m.group(1)) + 1
    return out


def read_all(ip, folder, into, result, i):
    os.makedirs(into, exist_ok=True)
    start = time.monotonic()
    p = subprocess.run(["smbclient", f"//{ip}/data", "-U", f"{world.USER}%{world.PASSWORD}",
                        "-m", "SMB3", "-c", f'cd {folder}; lcd {into}; prompt off; mget *'],
                       capture_output=True, text=True, timeout=900)
    result[i] = (time.monotonic() - start, p.returncode, p.stdout[-300:] + p.stderr[-300:])


def main():
    subprocess.run(["rm", "-rf", D])
    s3 = world.start_s3rver(f"{D}/s3", S3_PORT, f"{D}/s3rver.log")
    c = Cluster(D, S3_PORT, SHARES, log_level="1")
    rows = []
    try:
        c.start()
        s3env = dict(os.environ, S3_ENDPOINT=c.endpoint, S3_BUCKET=world.BUCKET,
                     AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER")
        for k in (1, 2, 3):
            folder = f"ds{k}"
            subprocess.run([f"{world.B}/s3tool", "putmany", f"bench/{folder}/f", str(FILES),
                            str(SIZE)], env=s3env, check=True, capture_output=True)
            # Every node knows the new folder before the clock starts: past
            # the TTL a listing is served from the index and revalidated
            # behind it, so ask until each shows it.
            for n in range(NODES):
                end = time.monotonic() + 60
                while "NT_STATUS" in c.smbclient(node_ip(n), "data", f"cd {folder}; ls",
                                                 check=False).stdout:
                    if time.monotonic() > end:
                        raise SystemExit(f"bench-cluster: node {n} never showed {folder}")
                    time.sleep(0.5)
            before = len(c.front_log())
            result = {}
            threads = [threading.Thread(target=read_all,
                                        args=(public_ip(i % k), folder, f"{D}/out{k}-{i}",
                                              result, i))
                       for i in range(CLIENTS)]
            start = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - start
            bad = [r for r in result.values() if r[1] != 0]
            if bad:
                raise SystemExit(f"bench-cluster: a client failed: {bad[0][2]}")
            for i in range(CLIENTS):
                for f in os.listdir(f"{D}/out{k}-{i}"):
                    if os.path.getsize(f"{D}/out{k}-{i}/{f}") != SIZE:
                        raise SystemExit(f"bench-cluster: {f} read short by client {i}")
                subprocess.run(["rm", "-rf", f"{D}/out{k}-{i}"])
            by_node = s3_bytes_by_node(c.front_log()[before:], folder + "/")
            dataset = FILES * SIZE
            per_node = {ip: b / dataset for ip, b in sorted(by_node.items())}
            rows.append((k, CLIENTS * dataset / wall / 1e6, per_node,
                         sum(by_node.values()) / dataset, wall))
            print(f"bench-cluster: {k} node(s): {CLIENTS} clients read {CLIENTS} x "
                  f"{dataset >> 20} MiB in {wall:.1f} s = {rows[-1][1]:.0f} MB/s; S3 bytes "
                  f"per node (x dataset): {per_node}", flush=True)
    finally:
        c.stop()
        s3.kill()
    lines = ["# Cluster read benchmark (make bench-cluster)", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, this machine (2 cores): {CLIENTS} clients, "
             f"each reading a cold dataset of {FILES} x {SIZE >> 20} MiB through smbclient, "
             "spread over the nodes used.", "",
             "| nodes | aggregate MB/s | vs 1 node | S3 bytes per node (x dataset) | "
             "S3 bytes in all (x dataset) |", "|---|---|---|---|---|"]
    for k, mbs, per_node, total, wall in rows:
        lines.append(f"| {k} | {mbs:.0f} | {mbs / rows[0][1]:.2f}x | "
                     f"{', '.join(f'{v:.2f}' for v in per_node.values())} | {total:.2f} |")
    os.makedirs(f"{TOP}/bench/results", exist_ok=True)
    with open(f"{TOP}/bench/results/cluster.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
