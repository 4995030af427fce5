#!/usr/bin/env python3
"""make bench: bucketfs side by side with what users would pick instead.

One run, one machine, one S3 server (s3rver on loopback), the same data:

  (a) local    plain Samba serving a local copy (the limit of the SMB path)
  (b) bucketfs Samba with bucketfs on the S3 server
  (c) s3fs     Samba re-exporting an s3fs-fuse mount of the bucket
  (d) rclone   Samba re-exporting an `rclone mount --vfs-cache-mode full`
  (e) raw      S3 from the same machine (build/s3tool: parallel range GETs,
               parallel multipart PUT): the limit of the backend

Workloads (sizes from the environment, defaults as the issue asks):
  seq cold / seq hot   smbclient get of a BENCH_SEQ_MB (1024) MiB file;
                       cold = every cache emptied and smbd restarted, then
                       the file looked up once, untimed (smbclient's rate
                       counts from the open: the cold figure is the data
                       path; the listings are timed in "list N")
  rand 64K / 1M x1/x8  bench/randread (libsmbclient, one connection per
                       client) at random offsets for BENCH_RAND_S seconds:
                       throughput, p50 and p99 latency
  small files          BENCH_SMALL_N (10000) files of 100 KiB: list them
                       and read them all (smbclient, one session)
  small W=32 cold/hot  the same files read by build/bench/loader, a
                       DataLoader's 32 workers on one SMB connection as the
                       kernel client carries them: 32 open + read + close
                       in flight; files/s, p50 and p99 per file.  Cold as
                       seq cold (the folder listed once, untimed, as a
                       Dataset does), then hot.  Local and bucketfs only;
                       raw = 32 parallel GETs of the objects (s3tool
                       getmany), cold after the page cache is dropped
  list N               smbclient ls of 10,000 and BENCH_LIST_BIG (100,000)
  checkpoint           write BENCH_SEQ_MB MiB as runs/ckpt.tmp, rename over
                       runs/ckpt.pt, until the object is in S3 at full size:
                       for bucketfs until an SMB2 FLUSH of ckpt.pt answers
                       (what a job's fsync sends), for s3fs and rclone by
                       polling S3 (their fsync does not wait for S3);
                       "checkpoint to rename" is the same run timed until
                       the rename returned
                       (in a run directory, as training jobs keep them:
                       s3rver walks every key below a prefix to list it
                       with a delimiter, so a lookup in the bucket's root
                       would time s3rver listing the 120,000 benchmark
                       objects, which S3 answers in one page)
Cold reads and raw GETs both start with the page cache dropped.  The S3
server's store is in /dev/shm when that has room (16 GiB free), as if the
server were another machine: on the local disk, the S3 server would read
the object from the disk the bucketfs cache writes to, which a real S3
server does not share (worth about 0.1 of the cold ratio here).
BENCH_S3_DIR=DIR puts the store in DIR instead; BENCH_S3_DIR= (empty) on
the local disk, as runs before 2026-11-27 15:00 had it.
For every run: peak RSS of smbd without shared memory (and of the FUSE
daemon, or bucketfs's engine with its fetch arena), and the S3
requests and bytes the S3 server logged (read amplification).

Medians of RUNS (3) runs.  Writes bench/results/compare.md, PNG charts
(matplotlib, Debian's python3-matplotlib) and the README's Performance
section.  Not part of make test.
"""
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("runner", os.path.join(TOP, "tests/run.py"))
runner = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runner)
import world  # noqa: E402  (tests/, on the path once run.py is loaded)

B = runner.B
USER, PASSWORD = runner.USER, runner.PASSWORD
BUCKET = "bench"
RUNS = int(os.environ.get("RUNS", "3"))
SEQ_MB = int(os.environ.get("BENCH_SEQ_MB", "1024"))
SMALL_N = int(os.environ.get("BENCH_SMALL_N", "10000"))
SMALL_KB = 100
SMALL_W = 32  # DataLoader workers, samples in flight on one connection
LIST_BIG = int(os.environ.get("BENCH_LIST_BIG", "100000"))
if LIST_BIG == 10000:  # the listing workloads are named by their size
    sys.exit("bench: BENCH_LIST_BIG must differ from the fixed 10000 listing")
RAND_S = float(os.environ.get("BENCH_RAND_S", "10"))
SYSTEMS = ["local", "bucketfs", "s3fs", "rclone"]  # (a)-(d); (e) raw apart
# BENCH_ONLY=loader,checkpoint,...: measure these families alone (seq,
# rand, small, loader, list, checkpoint); the table keeps the other rows
# from bench/results/compare-runs.json and says where each row is from.
FAMILIES = ("seq", "rand", "small", "loader", "list", "checkpoint")
ONLY = [f for f in os.environ.get("BENCH_ONLY", "").split(",") if f]
if any(f not in FAMILIES for f in ONLY):
    sys.exit(f"bench: BENCH_ONLY takes {','.join(FAMILIES)}")


def wanted(family):
    return not ONLY or family in ONLY


def family_of(workload):
    if workload.startswith("small W="):
        return "loader"
    return {"seq": "seq", "ran": "rand", "sma": "small", "lis": "list",
            "che": "checkpoint"}[workload[:3]]
RESULTS = os.path.join(TOP, "bench/results")


def log(msg):
    print(f"bench: {msg}", flush=True)


def drop_page_cache():
    """Written back and dropped: the next read of any file is from disk."""
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def machine_cpu():
    """CPU seconds the whole machine has spent busy (all processes, the
    kernel, interrupts; not idle or waiting on I/O) since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def sh(argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


class S3Log:
    """Requests s3rver answered (it logs "PATH STATUS TIMEms SIZE" per
    response when not --silent) and bytes it wrote."""

    def __init__(self, path, pid):
        self.path, self.pid = path, pid

    def wchar(self):
        with open(f"/proc/{self.pid}/io") as f:
            return int(re.search(r"^wchar: (\d+)", f.read(), re.M).group(1))

    def mark(self):
        return os.path.getsize(self.path), self.wchar()

    def since(self, mark):
        """Requests answered, and bytes the server wrote (its sockets, for
        reads: the log's sizes count a HEAD as its object's size)."""
        with open(self.path, errors="replace") as f:
            f.seek(mark[0])
            text = f.read()
        reqs = len(re.findall(r"\s\d{3} \d+ms [\d.]+(?:b|kb|mb|gb)$", text, re.M))
        return reqs, max(0, self.wchar() - mark[1] - len(text))


class Peak(threading.Thread):
    """Peak resident memory of processes named `names` while it runs."""

    def __init__(self, names):
        super().__init__(daemon=True)
        self.names, self.peak, self.stop = names, {n: 0 for n in names}, False

    def run(self):
        while not self.stop:
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/status") as f:
                        st = f.read()
                except OSError:
                    continue
                name = re.search(r"^Name:\s+(\S+)", st, re.M).group(1)
                rss = re.search(r"^VmRSS:\s+(\d+)", st, re.M)
                # Shared memory is not counted: an smbd maps the engine's
                # fetch arena (a memfd) and copies from it, but those
                # pages are the engine's, there once for all smbds.
                shm = re.search(r"^RssShmem:\s+(\d+)", st, re.M)
                # smbd's children rename themselves ("smbd[127.0.0.1]").
                for n in self.names:
                    if name.startswith(n) and rss:
                        own = int(rss.group(1))
                        if n == "smbd" and shm:
                            own -= int(shm.group(1))
                        self.peak[n] = max(self.peak[n], own * 1024)
            time.sleep(0.1)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *a):
        self.stop = True
        self.join()


class Bench:
    def __init__(self, tmp):
        self.tmp = tmp
        self.results = []  # dicts: workload, system, value, unit, extra...
        self.s3_port = runner.free_port()
        store = os.environ.get("BENCH_S3_DIR")
        if store is None and os.path.isdir("/dev/shm"):
            st = os.statvfs("/dev/shm")
            store = "/dev/shm" if st.f_bavail * st.f_frsize >= 16 << 30 else None
        log(f"S3 server's store: {store or 'local disk'}")
        self.s3_store = tempfile.mkdtemp(prefix="bucketfs-s3.", dir=store) if store \
            else f"{tmp}/s3"
        os.makedirs(self.s3_store, exist_ok=True)
        argv, env = world.s3rver_argv(self.s3_store, self.s3_port, BUCKET)
        argv.remove("--silent")  # S3Log counts its requests from the log
        self.s3 = self.spawn(argv, "s3rver", env)
        runner.wait_port(self.s3_port, "s3rver")
        self.s3log = S3Log(f"{tmp}/s3rver.log", self.s3.pid)
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.env = dict(os.environ, S3_ENDPOINT=self.endpoint, S3_BUCKET=BUCKET,
                        AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER")
        self.smbd = None
        self.mounts = {}

    def spawn(self, argv, name, env=None):
        out = open(f"{self.tmp}/{name}.log", "a")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        runner.procs.append(p)
        return p

    def s3tool(self, *args):
        return sh([f"{B}/s3tool", *args], env=self.env).stdout

    # ---- data ----------------------------------------------------------------

    def seed(self):
        t = self.tmp
        loc = f"{t}/local"
        os.makedirs(f"{loc}/small")
        os.makedirs(f"{loc}/runs")
        log(f"data: {SEQ_MB} MiB file, {SMALL_N} x {SMALL_KB} KiB, listings of 10000 and {LIST_BIG}")
        with open(f"{loc}/seq.bin", "wb") as f:
            for _ in range(SEQ_MB):
                f.write(os.urandom(1 << 20))
        self.s3tool("putmp", "seq.bin", f"{loc}/seq.bin", str(16 << 20), "8")
        if wanted("small") or wanted("loader"):
            self.s3tool("putmany", "small/f", str(SMALL_N), str(SMALL_KB * 1024))
        open(f"{t}/empty", "wb").close()
        self.s3tool("put", "runs/", f"{t}/empty")  # the directory's marker
        body = b"x" * (SMALL_KB * 1024)
        for i in range(SMALL_N if wanted("small") or wanted("loader") else 0):
            with open(f"{loc}/small/f{i:05d}", "wb") as f:
                f.write(body)
        for n in (10000, LIST_BIG) if wanted("list") else ():
            d = f"list{n}"
            os.makedirs(f"{loc}/{d}")
            self.s3tool("putmany", f"{d}/o", str(n), "37")
            for i in range(n):
                with open(f"{loc}/{d}/o{i:05d}", "wb") as f:
                    f.write(b"x" * 37)
        self.src_sha = runner.sha256(f"{loc}/seq.bin")

    # ---- servers -------------------------------------------------------------

    def mount_s3fs(self):
        t, mnt = self.tmp, f"{self.tmp}/mnt-s3fs"
        os.makedirs(mnt, exist_ok=True)
        with open(f"{t}/s3fs.passwd", "w") as f:
            f.write("S3RVER:S3RVER\n")
        os.chmod(f"{t}/s3fs.passwd", 0o600)
        sh(["s3fs", BUCKET, mnt, "-o", f"url={self.endpoint}", "-o", "use_path_request_style",
            "-o", f"passwd_file={t}/s3fs.passwd", "-o", "allow_other",
            "-o", f"logfile={t}/s3fs.log",
            # s3rver has no UploadPartCopy, which s3fs's rename of a large
            # object uses: single-request uploads and copies instead.
            "-o", "nomultipart"] + os.environ.get("S3FS_EXTRA", "").split())
        self.mounts["s3fs"] = mnt

    def mount_rclone(self, fresh=False):
        t, mnt = self.tmp, f"{self.tmp}/mnt-rclone"
        if "rclone" in self.mounts:
            subprocess.run(["fusermount", "-u", mnt], capture_output=True)
            self.rclone.wait(timeout=30)
        if fresh:
            shutil.rmtree(f"{t}/rclone-cache", ignore_errors=True)
        os.makedirs(mnt, exist_ok=True)
        with open(f"{t}/rclone.conf", "w") as f:
            f.write(f"[s3]\ntype = s3\nprovider = Other\nendpoint = {self.endpoint}\n"
                    "access_key_id = S3RVER\nsecret_access_key = S3RVER\n"
                    "force_path_style = true\n")
        # rclone 1.60 cannot load AWS_CA_BUNDLE with its own HTTP client.
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        self.rclone = self.spawn(["rclone", "--config", f"{t}/rclone.conf", "mount",
                                  f"s3:{BUCKET}", mnt, "--vfs-cache-mode", "full",
                                  "--cache-dir", f"{t}/rclone-cache", "--allow-other"],
                                 "rclone", env)
        for _ in range(100):
            if os.path.ismount(mnt):
                break
            time.sleep(0.1)
        self.mounts["rclone"] = mnt

    def start_smbd(self):
        t = self.tmp
        for d in ("lock", "state", "cache", "pid", "private", "ncalrpc"):
            os.makedirs(f"{t}/{d}", exist_ok=True)
        with open(f"{t}/creds", "w") as f:
            f.write("[default]\naws_access_key_id = S3RVER\naws_secret_access_key = S3RVER\n")
        os.chmod(f"{t}/creds", 0o600)
        self.smb_port = runner.free_port()
        conf = world.smb_global(t, self.smb_port, "1") + f"""[local]
  path = {t}/local
  read only = no
[bucketfs]
  path = /bucketfs/bench
  vfs objects = bucketfs
  read only = no
  bucketfs:endpoint = {self.endpoint}
  bucketfs:path style = yes
  bucketfs:bucket = {BUCKET}
  bucketfs:credentials file = {t}/creds
  bucketfs:cache dir = {t}/bfscache
  bucketfs:cache size = {4 * SEQ_MB + 2 * SMALL_N * SMALL_KB // 1024}M
[s3fs]
  path = {t}/mnt-s3fs
  read only = no
[rclone]
  path = {t}/mnt-rclone
  read only = no
"""
        self.conf = f"{t}/smb.conf"
        with open(self.conf, "w") as f:
            f.write(conf)
        sh(["smbpasswd", "-c", self.conf, "-s", "-a", USER],
           input=f"{PASSWORD}\n{PASSWORD}\n")
        self.smbd = self.spawn(["smbd", "--foreground", "--no-process-group", "-s", self.conf],
                               "smbd")
        runner.wait_port(self.smb_port, "smbd")

    def restart_smbd(self):
        os.killpg(self.smbd.pid, signal.SIGTERM)
        self.smbd.wait(timeout=30)
        self.smbd = self.spawn(["smbd", "--foreground", "--no-process-group", "-s", self.conf],
                               "smbd")
        runner.wait_port(self.smb_port, "smbd")

    def make_cold(self, system):
        """Empty what caches system's bytes (and the page cache)."""
        if system == "bucketfs":
            shutil.rmtree(f"{self.tmp}/bfscache", ignore_errors=True)
        if system == "rclone":
            self.mount_rclone(fresh=True)
        self.restart_smbd()
        drop_page_cache()

    # ---- clients ---------------------------------------------------------------

    def smbclient(self, share, commands=None, stdin=None):
        argv = ["smbclient", f"//127.0.0.1/{share}", "-p", str(self.smb_port),
                "-U", f"{USER}%{PASSWORD}", "-m", "SMB3", "-t", "600"]
        if commands is not None:
            argv += ["-c", commands]
        out = sh(argv, input=stdin)
        # smbclient goes on after a failed command read from stdin.
        failed = re.search(r"NT_STATUS_\w+", out.stdout + out.stderr)
        if failed:
            raise RuntimeError(f"smbclient on {share}: {failed.group(0)}")
        return out

    def measure(self, workload, system, fn, unit):
        """fn() -> (value, extra dict); adds RSS and S3 traffic."""
        names = ["smbd", "s3fs", "rclone", "bucketfsd"]
        mark = self.s3log.mark()
        cpu0, wall0 = machine_cpu(), time.monotonic()
        try:
            with Peak(names) as peak:
                value, extra = fn()
        except Exception as e:  # one failure must not end the run
            log(f"{workload} on {system} failed: {e}")
            detail = getattr(e, "stderr", None) or getattr(e, "stdout", None) or str(e)
            status = re.search(r"NT_STATUS_\w+", f"{detail} {e}")
            value, extra = None, {"error": status.group(0) if status else
                                  (str(e).splitlines() or ["error"])[0][:160]}
            peak = None
        cpu, wall = machine_cpu() - cpu0, time.monotonic() - wall0
        reqs, nbytes = self.s3log.since(mark)
        row = {"workload": workload, "system": system, "value": value, "unit": unit,
               "s3_requests": reqs, "s3_bytes": nbytes,
               "cpu_s": cpu, "busy": cpu / (wall * os.cpu_count()),
               "rss_smbd": peak.peak["smbd"] if peak else 0,
               "rss_daemon": peak.peak.get("bucketfsd" if system == "bucketfs" else system, 0)
               if peak else 0}
        row.update(extra)
        self.results.append(row)
        log(f"{workload:22} {system:9} {value if value is None else round(value, 3)} {unit}"
            f"  (S3: {reqs} requests, {nbytes / 1e6:.1f} MB)")
        return value

    def seq_read(self, share):
        def fn():
            out = self.smbclient(share, "get seq.bin /dev/null")
            m = re.search(r"\(([\d.]+) KiloBytes/sec", out.stdout + out.stderr)
            return float(m.group(1)) * 1024 / 1e6, {}
        return fn

    def rand_read(self, share, size, clients):
        def fn():
            url = f"smb://127.0.0.1:{self.smb_port}/{share}/seq.bin"
            env = dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD)
            procs = [subprocess.Popen([f"{B}/bench/randread", url, str(size), str(RAND_S),
                                       str(random.randrange(1 << 30)),
                                       f"{self.tmp}/lat{i}"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env) for i in range(clients)]
            total, lat = 0, []
            for i, p in enumerate(procs):
                out, err = p.communicate(timeout=RAND_S * 10 + 120)
                if p.returncode != 0:
                    raise RuntimeError(err.strip())
                ops, nbytes, secs = out.split()
                total += int(nbytes) / float(secs)
                with open(f"{self.tmp}/lat{i}") as f:
                    lat += [int(x) for x in f]
            lat.sort()
            return total / 1e6, {"p50_ms": lat[len(lat) // 2] / 1000,
                                 "p99_ms": lat[min(len(lat) - 1, len(lat) * 99 // 100)] / 1000}
        return fn

    def small_files(self, share):
        def fn():
            start = time.monotonic()
            cmds = "cd small\nls\n" + "".join(f"get f{i:05d} /dev/null\n" for i in range(SMALL_N))
            self.smbclient(share, stdin=cmds)
            secs = time.monotonic() - start
            return SMALL_N * SMALL_KB * 1024 / secs / 1e6, {"seconds": secs}
        return fn

    def loader(self, share):
        """SMALL_W samples in flight on one connection (bench/loader.c)."""
        def fn():
            url = f"smb://127.0.0.1:{self.smb_port}/{share}/small"
            env = dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD)
            return loader_result(subprocess.run(
                [f"{B}/bench/loader", url, str(SMALL_W), str(SMALL_N)],
                capture_output=True, text=True, env=env))
        return fn

    def listing(self, share, n):
        def fn():
            start = time.monotonic()
            out = self.smbclient(share, f"cd list{n}; ls").stdout
            secs = time.monotonic() - start
            got = len(re.findall(r"^\s+o\d+ ", out, re.M))
            if got != n:
                raise RuntimeError(f"listed {got} of {n} entries")
            return secs, {}
        return fn

    def checkpoint(self, share):
        def fn():
            src = f"{self.tmp}/local/seq.bin"
            key = f"runs/ckpt-{share}.pt"
            if share != "local":
                # The last run's object would pass the durability check.
                sh([f"{B}/s3tool", "rm", key], env=self.env)
            start = time.monotonic()
            self.smbclient(share, f"cd runs; put {src} ckpt-{share}.tmp; "
                                  f"rename ckpt-{share}.tmp ckpt-{share}.pt -f")
            # What the training job waits for: its write and rename.
            renamed = time.monotonic() - start
            if share == "bucketfs":
                # Durable = what the job asks for it: fsync of the final
                # name, an SMB2 FLUSH, which answers once S3 has the object.
                world.smb_flush(self.smb_port, share, key)
            # The FUSE file systems' fsync does not wait for their upload
            # (rclone uploads after the close): S3 is polled for them.
            # Polling is not free: each HEAD that arrives while s3rver
            # joins the parts slows that join (about 1 s of 4 here).
            while share not in ("local", "bucketfs") and self.s3_size(key) != SEQ_MB << 20:
                if time.monotonic() - start > 1800:
                    raise RuntimeError("not in S3 after 30 min")
                time.sleep(0.2)
            secs = time.monotonic() - start
            if share == "bucketfs" and self.s3_size(key) != SEQ_MB << 20:
                raise RuntimeError(f"the flush answered with {key} not in S3 at full size")
            return SEQ_MB * 1.048576 / secs, {"seconds": secs, "renamed_s": renamed}
        return fn

    def s3_size(self, key):
        try:
            return int(self.s3tool("head", key).split()[0])
        except subprocess.CalledProcessError:
            return -1

    # ---- raw S3 ----------------------------------------------------------------

    def raw_seq(self):
        drop_page_cache()  # as make_cold does for the others
        out = self.s3tool("getpar", "seq.bin", "8").split()
        return SEQ_MB * 1.048576 / float(out[1]), {}

    def raw_seq_stored(self):
        """The raw GETs again, each range also written at its offset to a
        new file beside the cache folder: what storing the bytes costs on
        this machine, which any cache pays and the raw baseline does not."""
        drop_page_cache()
        path = f"{self.tmp}/raw-stored.bin"
        try:
            out = self.s3tool("getpar", "seq.bin", "8", path).split()
        finally:
            if os.path.exists(path):
                os.unlink(path)
        return SEQ_MB * 1.048576 / float(out[1]), {}

    def raw_small(self, cold):
        """SMALL_W parallel GETs of the small objects, whole."""
        def fn():
            if cold:
                drop_page_cache()  # as make_cold does for the others
            return loader_result(subprocess.run(
                [f"{B}/s3tool", "getmany", "small/f", str(SMALL_N), str(SMALL_W)],
                capture_output=True, text=True, env=self.env))
        return fn

    def raw_put(self):
        start = time.monotonic()
        self.s3tool("putmp", "raw-ckpt.bin", f"{self.tmp}/local/seq.bin", str(16 << 20), "8")
        secs = time.monotonic() - start
        return SEQ_MB * 1.048576 / secs, {"seconds": secs}


def loader_result(p):
    """The line "files=F bytes=B seconds=S files_per_s=X p50_ms=Y p99_ms=Z
    errors=E" of build/bench/loader (and s3tool getmany): files/s and the
    latencies; a failed file fails the measurement."""
    if p.returncode != 0:
        # The tool's own words: the first failure, with its NT status.
        raise RuntimeError((p.stderr.strip() or p.stdout.strip()
                            or f"exit status {p.returncode}").splitlines()[0])
    kv = dict(f.split("=", 1) for f in p.stdout.split())
    return float(kv["files_per_s"]), {"seconds": float(kv["seconds"]),
                                      "p50_ms": float(kv["p50_ms"]),
                                      "p99_ms": float(kv["p99_ms"])}


WORKLOADS = [  # name, unit, higher is better
    ("seq cold", "MB/s", True), ("seq hot", "MB/s", True),
    ("rand 64K x1", "MB/s", True), ("rand 64K x8", "MB/s", True),
    ("rand 1M x1", "MB/s", True), ("rand 1M x8", "MB/s", True),
    ("small files", "MB/s", True),
    (f"small W={SMALL_W} cold", "files/s", True), (f"small W={SMALL_W} hot", "files/s", True),
    ("list 10000", "s", False),
    (f"list {LIST_BIG}", "s", False), ("checkpoint to rename", "MB/s", True),
    ("checkpoint", "MB/s", True),
]


def run_all(b):
    for _ in range(RUNS if wanted("seq") else 0):
        for system in SYSTEMS:
            share = system
            if system != "local":
                b.make_cold(system)
                b.smbclient(share, "ls seq.bin")
                b.measure("seq cold", system, b.seq_read(share), "MB/s")
            b.measure("seq hot", system, b.seq_read(share), "MB/s")
        b.measure("seq cold", "raw", b.raw_seq, "MB/s")
        b.measure("seq cold", "raw stored", b.raw_seq_stored, "MB/s")
    for size, label in ((64 << 10, "64K"), (1 << 20, "1M")) if wanted("rand") else ():
        for clients in (1, 8):
            for _ in range(RUNS):
                for system in SYSTEMS:
                    b.measure(f"rand {label} x{clients}", system,
                              b.rand_read(system, size, clients), "MB/s")
    for _ in range(RUNS if wanted("small") else 0):
        for system in SYSTEMS:
            if system != "local":
                b.make_cold(system)
            b.measure("small files", system, b.small_files(system), "MB/s")
    for _ in range(RUNS if wanted("loader") else 0):
        for system in ("local", "bucketfs"):
            b.make_cold(system)
            b.smbclient(system, "cd small; ls")
            b.measure(f"small W={SMALL_W} cold", system, b.loader(system), "files/s")
            b.measure(f"small W={SMALL_W} hot", system, b.loader(system), "files/s")
        b.measure(f"small W={SMALL_W} cold", "raw", b.raw_small(True), "files/s")
        b.measure(f"small W={SMALL_W} hot", "raw", b.raw_small(False), "files/s")
    for n in (10000, LIST_BIG) if wanted("list") else ():
        for system in SYSTEMS:
            start = time.monotonic()
            try:  # the first listing fills whatever caches listings
                b.listing(system, n)()
            except Exception as e:
                log(f"first listing of {n} on {system} failed: {e}")
            # A system that takes minutes per listing is measured once:
            # repeats would not change the comparison, only the hour.
            slow = time.monotonic() - start > 120
            if slow:
                log(f"list {n} on {system}: over 2 minutes, measured once")
            for _ in range(1 if slow else RUNS):
                b.measure(f"list {n}", system, b.listing(system, n), "s")
    for _ in range(RUNS if wanted("checkpoint") else 0):
        for system in SYSTEMS:
            if b.measure("checkpoint", system, b.checkpoint(system), "MB/s") is None:
                continue
            # The same run, timed until the rename returned: what the GPU
            # waits for with close = local (the "checkpoint" row waits
            # until the object is in S3).
            row = dict(b.results[-1], workload="checkpoint to rename")
            row["value"] = SEQ_MB * 1.048576 / row["renamed_s"]
            b.results.append(row)
            log(f"{'checkpoint to rename':22} {system:9} {round(row['value'], 3)} MB/s")
        b.measure("checkpoint", "raw", b.raw_put, "MB/s")


def keep_earlier(b):
    """With BENCH_ONLY: the other families' runs from the last full run."""
    path = f"{RESULTS}/compare-runs.json"
    try:
        with open(path) as f:
            earlier = json.load(f)
    except (OSError, ValueError):
        return None
    source = earlier.get("source", "an earlier make bench")
    kept = [dict(r, source=r.get("source", source)) for r in earlier["runs"]
            if not wanted(family_of(r["workload"]))]
    now = f"make bench of {time.strftime('%Y-%m-%d %H:%M')} (BENCH_ONLY={','.join(ONLY)})"
    for r in b.results:
        r["source"] = now
    b.results = kept + b.results
    return sorted({r["source"] for r in kept})


def medians(b):
    """{(workload, system): row with median value and the worst RSS/S3}"""
    out = {}
    for w, _, _ in WORKLOADS:
        for s in SYSTEMS + ["raw", "raw stored"]:
            rows = [r for r in b.results if r["workload"] == w and r["system"] == s]
            if not rows:
                continue
            ok = [r for r in rows if r["value"] is not None]
            med = dict(ok[len(ok) // 2]) if ok else dict(rows[0])
            if ok:
                med["value"] = statistics.median(r["value"] for r in ok)
                for k in ("p50_ms", "p99_ms", "cpu_s", "busy"):
                    if all(k in r for r in ok):
                        med[k] = statistics.median(r[k] for r in ok)
            med["rss_smbd"] = max(r["rss_smbd"] for r in rows)
            med["rss_daemon"] = max(r["rss_daemon"] for r in rows)
            med["s3_requests"] = statistics.median(r["s3_requests"] for r in rows)
            med["s3_bytes"] = statistics.median(r["s3_bytes"] for r in rows)
            out[(w, s)] = med
    return out


def fmt(v, unit):
    if v is None:
        return "failed"
    return f"{v:.2f} s" if unit == "s" else f"{v:.0f} {unit}"


def ratio(m, w, higher, a, b):
    ra, rb = m.get((w, a)), m.get((w, b))
    if not ra or not rb or ra["value"] is None or rb["value"] is None or not rb["value"]:
        return None
    return ra["value"] / rb["value"] if higher else rb["value"] / ra["value"]


def report(b, m):
    best_fuse = {}
    lines = [f"# bucketfs against the alternatives ({time.strftime('%Y-%m-%d')}, one machine, loopback, "
             f"median of {RUNS} runs)", "",
             f"{os.cpu_count()} cores; S3 = s3rver (npm) on loopback; sequential file {SEQ_MB} MiB; "
             f"{SMALL_N} small files of {SMALL_KB} KiB; random reads {RAND_S:.0f} s per run.  "
             "s3fs runs with `nomultipart` (s3rver lacks UploadPartCopy, which its rename "
             "needs), rclone with `--vfs-cache-mode full`, both otherwise at their defaults; "
             "bucketfs at its defaults.", "",
             "| workload | (a) local | (b) bucketfs | (c) s3fs | (d) rclone | (e) raw S3 "
             "| b/a | b/best(c,d) | b/e |",
             "|---|---|---|---|---|---|---|---|---|"]
    for w, unit, higher in WORKLOADS:
        cells = []
        for s in SYSTEMS + ["raw"]:
            r = m.get((w, s))
            if r is None:
                cells.append("—")
                continue
            c = fmt(r["value"], unit)
            if "p99_ms" in r:
                # Hot 64 KiB reads take a tenth of a millisecond: two
                # decimals, or a p99 target of 1.5x cannot be read off.
                c += f" (p50 {r['p50_ms']:.2f} / p99 {r['p99_ms']:.2f} ms)"
            cells.append(c)
        fuse = [s for s in ("s3fs", "rclone") if m.get((w, s)) and m[(w, s)]["value"] is not None]
        if fuse:
            key = max if higher else min
            best_fuse[w] = key(fuse, key=lambda s: m[(w, s)]["value"])
        rs = [ratio(m, w, higher, "bucketfs", "local"),
              ratio(m, w, higher, "bucketfs", best_fuse[w]) if w in best_fuse else None,
              ratio(m, w, higher, "bucketfs", "raw")]
        rcells = ["—" if r is None else f"{r:.2f}" for r in rs]
        ra, rb = m.get((w, "local")), m.get((w, "bucketfs"))
        if ra and rb and ra.get("p99_ms") and rb.get("p99_ms") and rs[0] is not None:
            # The latency target is bucketfs's p99 over (a)'s: lower is better.
            rcells[0] += f" (p99 {rb['p99_ms'] / ra['p99_ms']:.2f}x)"
        lines.append(f"| {w} | " + " | ".join(cells) + " | " + " | ".join(rcells) + " |")
    lines += stored_note(m)
    lines += checkpoint_note(b, m)
    lines += ["", "Ratios: higher is better for bucketfs (for listings, time of the other / "
              "time of bucketfs; for p99 latency, bucketfs's over (a)'s: lower is better).  "
              "Every run's figures: `bench/results/compare-runs.json`.", "",
              "| workload | system | peak smbd RSS | peak FUSE daemon or engine RSS | S3 requests "
              "| S3 bytes "
              "| read amplification | machine CPU (busy) |",
              "|---|---|---|---|---|---|---|---|"]
    for w, unit, _ in WORKLOADS:
        for s in SYSTEMS + ["raw"]:
            r = m.get((w, s))
            if r is None:
                continue
            useful = None
            if w.startswith("seq"):
                useful = SEQ_MB << 20
            elif w.startswith("small"):
                useful = SMALL_N * SMALL_KB * 1024
            amp = f"{r['s3_bytes'] / useful:.2f}" if useful and r["s3_bytes"] else "—"
            daemon = (f"{r['rss_daemon'] / 2**20:.0f} MiB"
                      if s in ("s3fs", "rclone", "bucketfs") and r.get("rss_daemon") else "—")
            cpu = f"{r['cpu_s']:.1f} s ({r['busy']:.0%})" if "cpu_s" in r else "—"
            lines.append(f"| {w} | {s} | {r['rss_smbd'] / 2**20:.0f} MiB | "
                         f"{daemon} | {r['s3_requests']:.0f} | "
                         f"{r['s3_bytes'] / 1e6:.1f} MB | {amp} | {cpu} |")
    errors = sorted({(r["workload"], r["system"], r["error"]) for r in b.results if "error" in r})
    if errors:
        lines += ["", "Failures:", ""] + [f"- {w} on {s}: {e}" for w, s, e in errors]
    lines += ["", "Reproduce: `make bench` (RUNS, BENCH_SEQ_MB, BENCH_SMALL_N, BENCH_LIST_BIG, "
              "BENCH_RAND_S to change the sizes)."]
    return "\n".join(lines) + "\n"


def stored_note(m):
    """Cold sequential reads against raw GETs that also store the bytes."""
    b, e, f = (m.get(("seq cold", s)) for s in ("bucketfs", "raw", "raw stored"))
    if not (b and e and f and b["value"] and e["value"] and f["value"]):
        return []
    cpu = ""
    if all("cpu_s" in r for r in (b, e, f)):
        cpu = (f"  Machine CPU for the {SEQ_MB} MiB: bucketfs {b['cpu_s']:.1f} s "
               f"({b['busy']:.0%} of the cores busy), raw {e['cpu_s']:.1f} s ({e['busy']:.0%}), "
               f"raw stored {f['cpu_s']:.1f} s ({f['busy']:.0%}).")
    return ["", f"seq cold against (f), the raw GETs also writing each range at its offset "
            f"to a new file on the cache's disk (what any cache pays; the raw baseline "
            f"stores nothing): (f) {fmt(f['value'], 'MB/s')}, b/f {b['value'] / f['value']:.2f}, "
            f"f/e {f['value'] / e['value']:.2f}." + cpu]


def checkpoint_note(b, m):
    """How "in S3" is timed for each system, and every run's b/e."""
    if not m.get(("checkpoint", "bucketfs")):
        return []
    runs = lambda s: [r["value"] for r in b.results
                      if r["workload"] == "checkpoint" and r["system"] == s and r["value"]]
    per_run = ", ".join(f"{x / y:.2f}" for x, y in zip(runs("bucketfs"), runs("raw")))
    return ["", "checkpoint: until the object is in S3.  bucketfs: until the SMB2 FLUSH "
            "of ckpt.pt (opened after the rename) answers, which it does once S3 has "
            "the object; a job's fsync sends that FLUSH.  s3fs and rclone: S3 polled "
            "with a HEAD every 0.2 s (their fsync does not wait for their upload; "
            "each HEAD that arrives while s3rver joins the parts slows the join, about "
            "1 s of 4 here).  raw: until its CompleteMultipartUpload answers."
            + (f"  b/e per run: {per_run}." if per_run else "")]


def charts(m):
    """One bar chart per workload family, drawn by Debian's matplotlib."""
    code = f"""
import json, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
data = json.loads({json_payload(m)!r})
for name, ws in data["groups"].items():
    fig, ax = plt.subplots(figsize=(8, 4))
    systems = data["systems"]
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        vals = [data["values"].get(w + "|" + s) or 0 for w in ws]
        ax.bar([x + i * width for x in range(len(ws))], vals, width, label=s)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(ws))])
    ax.set_xticklabels(ws)
    ax.set_ylabel(data["units"][name])
    ax.set_title(name)
    ax.legend()
    fig.tight_layout()
    fig.savefig({RESULTS!r} + "/compare-" + name.replace(" ", "-") + ".png", dpi=100)
"""
    subprocess.run(["/usr/bin/python3", "-c", code], check=True)


def json_payload(m):
    groups = {"sequential read": ["seq cold", "seq hot"],
              "random read": ["rand 64K x1", "rand 64K x8", "rand 1M x1", "rand 1M x8"],
              "small files and checkpoint": ["small files", "checkpoint to rename", "checkpoint"],
              f"small files {SMALL_W} in flight": [f"small W={SMALL_W} cold",
                                                    f"small W={SMALL_W} hot"],
              "listing": ["list 10000", f"list {LIST_BIG}"]}
    units = {"sequential read": "MB/s", "random read": "MB/s",
             "small files and checkpoint": "MB/s", "listing": "seconds",
             f"small files {SMALL_W} in flight": "files/s"}
    values = {f"{w}|{s}": r["value"] for (w, s), r in m.items() if r["value"] is not None}
    return json.dumps({"groups": groups, "units": units, "values": values,
                       "systems": SYSTEMS + ["raw"]})


def update_readme(table):
    path = os.path.join(TOP, "README.md")
    text = open(path).read()
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    if begin not in text:
        return
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    # The table's title is a heading inside the README's Performance section.
    table = re.sub(r"^# ", "#### ", table, count=1)
    open(path, "w").write(head + begin + "\n" + table + end + tail)


def main():
    tmp = tempfile.mkdtemp(prefix="bucketfs-compare.")
    b = None
    try:
        b = Bench(tmp)
        b.seed()
        if any(wanted(f) for f in ("seq", "rand", "small", "list", "checkpoint")):
            b.mount_s3fs()
            b.mount_rclone()
        b.start_smbd()
        run_all(b)
        earlier = keep_earlier(b) if ONLY else None
        m = medians(b)
        table = report(b, m)
        if earlier:
            table = table.replace("\n\n", "\n\nRows of " + ", ".join(ONLY) +
                                  f" measured {time.strftime('%Y-%m-%d')}; the others are "
                                  "from " + "; ".join(earlier) + ".\n\n", 1)
        os.makedirs(RESULTS, exist_ok=True)
        with open(f"{RESULTS}/compare.md", "w") as f:
            f.write(table)
        with open(f"{RESULTS}/compare-runs.json", "w") as f:
            json.dump({"source": f"make bench of {time.strftime('%Y-%m-%d %H:%M')}"
                       + (f" (BENCH_ONLY={','.join(ONLY)})" if ONLY else ""),
                       "runs": b.results}, f, indent=1)
        charts(m)
        update_readme(table)
        print(table)
    finally:
        if b is not None:
            for mnt in b.mounts.values():
                subprocess.run(["fusermount", "-u", mnt], capture_output=True)
        runner.stop_procs()
        # The engines smbd started (their own sessions: stop_procs does
        # not reach them), or they outlive the run and its folder.
        subprocess.run(["pkill", "-f", f"bucketfsd -s {tmp}/"], check=False)
        if not os.environ.get("KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
            if b is not None:
                shutil.rmtree(b.s3_store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
