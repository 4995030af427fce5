#!/usr/bin/env python3
"""Read-path benchmark (make bench-read; not part of make test).

Everything on loopback, in one run, so the ratios compare like with like on
this (noisy) machine.  Each figure is the median of RUNS runs.

  hot sequential   smbclient get of a BENCH_MB object already in the cache,
                   against plain Samba serving a local copy (page cache warm)
  cold sequential  the same with an empty cache, against 8 parallel raw
                   range GETs of the object from the same S3 server; the
                   file is looked up first, untimed (smbclient's rate counts
                   from the open, which would add listing the bucket's root
                   to a read-throughput figure; make bench does the same)
  listing          smbclient ls of 10,000 objects (index warm), against
                   plain Samba listing a local folder of 10,000 files
  stale listing    smbclient ls of a folder of 20,000 objects past its
                   metadata TTL (3 s), against the same listing warm:
                   served from the index while the engine relists it (an
                   object put in S3 before each run must show up after)

Read rates are smbclient's own transfer figures (connection setup, paid
once per mount, excluded); the listing is timed whole (connect included).

bucketfs talks to s3rver directly here (no SigV4-checking front), so the
baseline and bucketfs see the same server.  BENCH_PIN=1 gives the S3 server
a core of its own (as if it were another machine) and everything else the
other.  BENCH_DROP=1 empties the page cache before each cold and raw run,
as make bench does (the S3 server then reads the object from the disk the
cache writes to); BENCH_CACHE_DIR puts the cache folder elsewhere (say
/dev/shm, to take its writes off that disk).  BENCH_BACKEND=rgw puts the
object on Ceph's RADOS Gateway (scripts/rgw.sh, memstore) instead of
s3rver, for both bucketfs and the raw baseline.  BENCH_CLOSE=local runs
the share with `bucketfs:close = local`: its misses go through the
engine (bucketfsd).  Writes
bench/results/read.md (read-variant.md for a run with any BENCH_ knob).
"""
import importlib.util
import os
import re
import shutil
import signal
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
MB = int(os.environ.get("BENCH_MB", "512"))
PIN = os.environ.get("BENCH_PIN") == "1"
DROP = os.environ.get("BENCH_DROP") == "1"
CACHE = None  # the cache folder, set in main()
KNOBS = ("BENCH_BLOCK", "BENCH_FETCH_MEMORY", "BENCH_READAHEAD", "BENCH_MAX_REQUESTS", "BENCH_PIN",
         "BENCH_DROP", "BENCH_CACHE_DIR", "BENCH_BACKEND", "BENCH_CLOSE")
BACKEND = os.environ.get("BENCH_BACKEND", "s3rver")
TTL = 3  # the [ttl] share's metadata ttl, seconds
USER, PASSWORD = runner.USER, runner.PASSWORD


def timed(argv, **kw):
    start = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.monotonic() - start


def transfer_seconds(argv):
    """Seconds smbclient reports for the transfer itself (connecting and
    authenticating excluded: a training job pays that once per mount)."""
    p = subprocess.run(argv, check=True, capture_output=True, text=True)
    m = re.search(r"\((\d+(?:\.\d+)?) KiloBytes/sec\)", p.stdout + p.stderr)
    if not m:
        raise RuntimeError("no transfer rate in smbclient's output: " + p.stdout + p.stderr)
    return MB * 1024 / float(m.group(1))


def main():
    global CACHE
    tmp = tempfile.mkdtemp(prefix="bucketfs-bench.")
    CACHE = os.path.join(os.environ.get("BENCH_CACHE_DIR", tmp), "benchcache")
    w = None
    try:
        w = runner.World(tmp)
        if PIN:
            # The S3 server on its own core, as it would be its own machine;
            # everything else (smbd, clients, the raw baseline) on the other.
            for p in runner.procs:
                subprocess.run(["taskset", "-a", "-p", "-c", "1", str(p.pid)],
                               check=True, stdout=subprocess.DEVNULL)
            os.sched_setaffinity(0, {0})
        direct = f"http://127.0.0.1:{w.s3_port}"
        if BACKEND == "rgw":
            rgw_port = runner.free_port()
            subprocess.run([os.path.join(TOP, "scripts/rgw.sh"), "start", f"{tmp}/ceph",
                            str(rgw_port), "S3RVER", "S3RVER"], check=True)
            direct = f"http://127.0.0.1:{rgw_port}"
        env = dict(w.env, S3_ENDPOINT=direct)
        if BACKEND == "rgw":
            subprocess.run([f"{B}/s3tool", "mb", "-"], env=env, check=True)

        src = os.path.join(tmp, "local")
        os.makedirs(f"{src}/many")
        with open(f"{src}/bench.bin", "wb") as f:
            for _ in range(MB):
                f.write(os.urandom(1 << 20))
        subprocess.run([f"{B}/s3tool", "put", "bench.bin", f"{src}/bench.bin"], env=env, check=True)
        subprocess.run([f"{B}/s3tool", "putmany", "many/obj", "10000", "37"], env=env, check=True)
        subprocess.run([f"{B}/s3tool", "putmany", "big/obj", "20000", "37"], env=env, check=True)
        for i in range(10000):
            with open(f"{src}/many/obj{i:05d}", "wb") as f:
                f.write(b"x" * 37)

        # smbd with a plain share and a bucketfs share straight on s3rver.
        w.endpoint = direct
        w.start_users()
        w = w.serve("bench", (
            f"[local]\n  path = {src}\n  read only = yes\n"
            f"[bench]\n  path = /bucketfs/bench\n  vfs objects = bucketfs\n"
            f"  bucketfs:endpoint = {direct}\n  bucketfs:path style = yes\n"
            f"  bucketfs:credentials file = {tmp}/creds\n"
            f"  bucketfs:bucket = {runner.BUCKET}\n"
            f"  bucketfs:cache dir = {CACHE}\n"
            f"  bucketfs:cache size = {2 * MB}M\n"
            f"[ttl]\n  path = /bucketfs/ttl\n  vfs objects = bucketfs\n"
            f"  bucketfs:endpoint = {direct}\n  bucketfs:path style = yes\n"
            f"  bucketfs:credentials file = {tmp}/creds\n"
            f"  bucketfs:bucket = {runner.BUCKET}\n"
            f"  bucketfs:cache dir = {tmp}/ttlcache\n"
            f"  bucketfs:metadata ttl = {TTL}\n"
            + "".join(f"  bucketfs:{k} = {os.environ[e]}\n"
                      for k, e in (("block size", "BENCH_BLOCK"),
                                   ("readahead", "BENCH_READAHEAD"),
                                   ("max requests", "BENCH_MAX_REQUESTS"),
                                   ("close", "BENCH_CLOSE"),
                                   ("fetch memory", "BENCH_FETCH_MEMORY"))
                      if e in os.environ)).replace("{", "{{").replace("}", "}}"))

        def get(share):
            return transfer_seconds(["smbclient", f"//127.0.0.1/{share}", "-p", str(w.smb_port),
                                     "-U", f"{USER}%{PASSWORD}", "-m", "SMB3",
                                     "-c", "get bench.bin /dev/null"])

        def ls(share, folder="many"):
            return timed(["smbclient", f"//127.0.0.1/{share}", "-p", str(w.smb_port),
                          "-U", f"{USER}%{PASSWORD}", "-m", "SMB3", "-c", f"cd {folder}; ls"])

        def listed(share, folder):
            p = subprocess.run(["smbclient", f"//127.0.0.1/{share}", "-p", str(w.smb_port),
                                "-U", f"{USER}%{PASSWORD}", "-m", "SMB3", "-c", f"cd {folder}; ls"],
                               check=True, capture_output=True, text=True)
            return p.stdout

        def drop_cache():
            os.killpg(w.smbd.pid, signal.SIGTERM)
            w.smbd.wait(timeout=30)
            # BENCH_CLOSE=local: the engine holds the cache folder open too.
            subprocess.run(["pkill", "-KILL", "-f", f"bucketfsd -s {w.conf} "])
            shutil.rmtree(CACHE, ignore_errors=True)
            w.smbd = w.spawn(["smbd", "--foreground", "--no-process-group", "-s", w.conf],
                             "smbd-bench")
            runner.wait_port(w.smb_port, "smbd")

        def drop_page_cache():
            if DROP:
                subprocess.run(["sync"], check=True)
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")

        cold, raw = [], []
        for _ in range(RUNS):
            drop_cache()
            drop_page_cache()
            subprocess.run(["smbclient", "//127.0.0.1/bench", "-p", str(w.smb_port),
                            "-U", f"{USER}%{PASSWORD}", "-m", "SMB3", "-c", "ls bench.bin"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cold.append(get("bench"))
            drop_page_cache()
            out = subprocess.run([f"{B}/s3tool", "getpar", "bench.bin", "8"], env=env,
                                 check=True, capture_output=True, text=True).stdout.split()
            raw.append(float(out[1]))
        get("bench")  # warm
        hot = [get("bench") for _ in range(RUNS)]
        local = [get("local") for _ in range(RUNS + 1)][1:]
        ls("bench")  # index warm
        ls_bfs = [ls("bench") for _ in range(RUNS)]
        ls("local")
        ls_local = [ls("local") for _ in range(RUNS)]
        # 20,000 entries: warm, then past the TTL (stale-while-revalidate).
        ls("ttl", "big")  # listed from S3 (seconds on s3rver)
        warm, stale = [], []
        for run in range(RUNS):
            warm.append(ls("ttl", "big"))
            new = f"new{run}"
            with open(f"{tmp}/small", "wb") as f:
                f.write(b"y")
            subprocess.run([f"{B}/s3tool", "put", f"big/{new}", f"{tmp}/small"], env=env,
                           check=True, stdout=subprocess.DEVNULL)
            time.sleep(TTL + 1)
            stale.append(ls("ttl", "big"))
            end = time.monotonic() + 60
            while new not in listed("ttl", "big"):
                if time.monotonic() > end:
                    raise RuntimeError(f"{new}, put in S3, never showed after the TTL")
                time.sleep(0.5)

        med = statistics.median
        mbps = lambda t: MB / t
        rows = [
            ("hot sequential read", f"{mbps(med(hot)):.0f} MB/s", f"{mbps(med(local)):.0f} MB/s (plain Samba, local copy)",
             med(local) / med(hot), "≥ 0.9"),
            ("cold sequential read", f"{mbps(med(cold)):.0f} MB/s", f"{mbps(med(raw)):.0f} MB/s (8 parallel raw range GETs)",
             med(raw) / med(cold), "≥ 0.8"),
            ("listing 10,000 entries", f"{med(ls_bfs):.2f} s", f"{med(ls_local):.2f} s (plain Samba, local folder)",
             med(ls_bfs) / med(ls_local), "≤ 1.5 (time ratio)"),
            ("listing 20,000 entries past the TTL", f"{med(stale):.2f} s",
             f"{med(warm):.2f} s (the same listing warm); bound 2 x warm + 0.5 s = {2 * med(warm) + 0.5:.2f} s",
             med(stale) / (2 * med(warm) + 0.5), "≤ 1 (of the bound)"),
        ]
        lines = [f"# Read path benchmark ({MB} MiB object on {BACKEND}, median of {RUNS} runs, "
                 "one machine, loopback)",
                 "", "| workload | bucketfs | baseline | ratio | target |", "|---|---|---|---|---|"]
        for name, ours, base, ratio, target in rows:
            lines.append(f"| {name} | {ours} | {base} | {ratio:.2f} | {target} |")
        lines.append("")
        knobs = " ".join(f"{e}={os.environ[e]}" for e in KNOBS if e in os.environ)
        if knobs:
            lines.append(f"Run with {knobs}.")
            lines.append("")
        lines.append("Reproduce: `make bench-read` (BENCH_MB, RUNS to change size and repeats).")
        text = "\n".join(lines)
        # A run with other settings is not the default table.
        name = ("read.md" if not knobs else
                "read-rgw.md" if knobs == "BENCH_BACKEND=rgw" else "read-variant.md")
        os.makedirs(os.path.join(TOP, "bench/results"), exist_ok=True)
        with open(os.path.join(TOP, "bench/results", name), "w") as f:
            f.write(text + "\n")
        print(text)
    finally:
        if BACKEND == "rgw":
            subprocess.run([os.path.join(TOP, "scripts/rgw.sh"), "stop", f"{tmp}/ceph"])
        for cleanup in getattr(locals().get("w"), "cleanups", []):
            cleanup()  # the engine smbd started (BENCH_CLOSE=local)
        runner.stop_procs()
        shutil.rmtree(tmp, ignore_errors=True)
        if CACHE is not None:
            shutil.rmtree(CACHE, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
