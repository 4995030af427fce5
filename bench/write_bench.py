#!/usr/bin/env python3
"""Write-path benchmark (make bench-write; not part of make test).

The checkpoint pattern a training job runs: write BENCH_MB (default 1024)
MiB as ckpt.tmp through SMB (smbclient put), then rename it over ckpt.pt,
timed until smbclient returns, which is when the object is durable in S3
(close uploads; the rename is a server-side copy).  The baseline, in the
same run on the same S3 server: a raw parallel multipart upload of the
same bytes from a local file (build/s3tool putmp, 16 MiB parts, 8 in
flight, the module's defaults).  Median of RUNS runs; bucketfs and the
baseline both talk to s3rver directly.  Writes bench/results/write.md.
"""
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("runner", os.path.join(TOP, "tests/run.py"))
runner = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runner)

B = runner.B
RUNS = int(os.environ.get("RUNS", "3"))
MB = int(os.environ.get("BENCH_MB", "1024"))
USER, PASSWORD = runner.USER, runner.PASSWORD


def timed(argv, **kw):
    start = time.monotonic()
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {p.stdout[-2000:]}")
    return time.monotonic() - start


def main():
    tmp = tempfile.mkdtemp(prefix="bucketfs-bench.")
    try:
        w = runner.World(tmp)
        direct = f"http://127.0.0.1:{w.s3_port}"
        env = dict(w.env, S3_ENDPOINT=direct)
        src = f"{tmp}/ckpt.bin"
        with open(src, "wb") as f:
            for _ in range(MB):
                f.write(os.urandom(1 << 20))
        digest = runner.sha256(src)

        w.endpoint = direct
        w.start_smbd()
        with open(w.conf, "a") as f:
            f.write(f"[bench]\n  path = /bucketfs/bench\n  vfs objects = bucketfs\n"
                    f"  bucketfs:endpoint = {direct}\n  bucketfs:path style = yes\n"
                    f"  bucketfs:credentials file = {tmp}/creds\n"
                    f"  bucketfs:bucket = {runner.BUCKET}\n  bucketfs:prefix = bench\n"
                    f"  bucketfs:cache dir = {tmp}/benchcache\n  read only = no\n")
        subprocess.run(["smbcontrol", "-s", w.conf, "smbd", "reload-config"], check=True)
        time.sleep(1)
        # A close answers once the upload is done: longer than smbclient's
        # default 20 s timeout for a large file on a slow machine.
        smb = ["smbclient", "//127.0.0.1/bench", "-p", str(w.smb_port),
               "-U", f"{USER}%{PASSWORD}", "-m", "SMB3", "-t", "600"]
        subprocess.run(smb + ["-c", f"put {src} ckpt.pt"], check=True, capture_output=True)

        ours, raw = [], []
        for i in range(RUNS):
            ours.append(timed(smb + ["-c", f"put {src} ckpt.tmp; rename ckpt.tmp ckpt.pt -f"]))
            raw.append(timed([f"{B}/s3tool", "putmp", f"raw/ckpt{i}.bin", src,
                              str(16 << 20), "8"], env=env))
        print(f"bucketfs {ours}, raw {raw}", flush=True)
        out = f"{tmp}/check.bin"
        subprocess.run([f"{B}/s3tool", "get", "bench/ckpt.pt", out], env=env, check=True)
        assert runner.sha256(out) == digest, "the checkpoint in S3 differs from the source"

        med = statistics.median
        ratio = med(raw) / med(ours)
        lines = [f"# Write path benchmark ({MB} MiB checkpoint, median of {RUNS} runs, one machine, loopback)",
                 "", "| workload | bucketfs | baseline | ratio | target |", "|---|---|---|---|---|",
                 f"| write + rename until durable in S3 | {MB / med(ours):.0f} MB/s ({med(ours):.1f} s) "
                 f"| {MB / med(raw):.0f} MB/s ({med(raw):.1f} s, raw parallel multipart upload) "
                 f"| {ratio:.2f} | ≥ 0.7 |",
                 "", "Reproduce: `make bench-write` (BENCH_MB, RUNS to change size and repeats)."]
        text = "\n".join(lines)
        os.makedirs(os.path.join(TOP, "bench/results"), exist_ok=True)
        with open(os.path.join(TOP, "bench/results/write.md"), "w") as f:
            f.write(text + "\n")
        print(text)
    finally:
        runner.stop_procs()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
