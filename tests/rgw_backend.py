"""A production S3 implementation as a second backend (issue 20, point 5).

Ceph's RADOS Gateway, started on loopback by scripts/rgw.sh (one monitor,
one OSD on memstore, beast), with an S3 user whose keys are the test keys.
The S3 client's own checks run against it, then a smbd of its own serves
RGW buckets through the SigV4 front (which logs each request and hands it
on unchanged, --transparent): reads, random ranges, listing pagination, writes small and
multipart, renames by CopyObject and UploadPartCopy, deletes, directories,
and the abort of a streamed upload whose smbd was killed.
"""
import os
import random
import re
import signal
import subprocess
import sys
import time

from smbls import parse_ls

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = os.path.join(TOP, "build")
USER, PASSWORD = "root", "bucketfs-test-pw"
BUCKET, CLIENT_BUCKET = "bucketfs-rgw", "bucketfs-rgw-client"


def rgw_backend(w, test, run_tap, free_port, wait_port, sha256):
    t = f"{w.tmp}/rgw"
    os.makedirs(t, exist_ok=True)
    rgw_port = free_port()
    started = time.monotonic()
    p = subprocess.run([os.path.join(TOP, "scripts/rgw.sh"), "start", f"{t}/ceph",
                        str(rgw_port), "S3RVER", "S3RVER"],
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise AssertionError(f"Ceph RGW did not start: {p.stdout[-1500:]}{p.stderr[-1500:]}")
    w.cleanups = getattr(w, "cleanups", [])
    w.cleanups.append(lambda: subprocess.run(
        [os.path.join(TOP, "scripts/rgw.sh"), "stop", f"{t}/ceph"], timeout=60))
    print(f"    # Ceph RGW up in {time.monotonic() - started:.1f} s", flush=True)
    rgw = f"http://127.0.0.1:{rgw_port}"

    def s3tool(bucket, *args, check=True):
        env = dict(os.environ, S3_ENDPOINT=rgw, S3_BUCKET=bucket,
                   AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER")
        p = subprocess.run([f"{B}/s3tool", *args], capture_output=True, text=True,
                           env=env, timeout=300)
        if check and p.returncode != 0:
            raise AssertionError(f"s3tool {args}: {p.stdout[-800:]}{p.stderr[-800:]}")
        return p

    s3tool(BUCKET, "mb", "-")
    s3tool(CLIENT_BUCKET, "mb", "-")
    run_tap("s3 client on ceph rgw", [f"{B}/tests/s3_client_itest"], env={
        "S3_ENDPOINT": rgw, "S3_BUCKET": CLIENT_BUCKET, "S3_BACKEND": "ceph rgw",
        "TMPDIR": f"{w.tmp}/unit"})

    # The SigV4 front before RGW: a log of every request, nothing changed.
    front_port = free_port()
    w.spawn([sys.executable, os.path.join(TOP, "tests/integration/s3_front.py"),
             str(front_port), str(rgw_port), "--transparent"], "front-rgw")
    wait_port(front_port, "front before RGW")
    front_log = f"{w.tmp}/front-rgw.log"

    sources = {}
    for name, size in (("empty", 0), ("one byte", 1), ("mib plus one.bin", (1 << 20) + 1),
                       ("twenty.bin", 20 << 20), ("dir/sub/deep.txt", 100),
                       ("caf\u00e9 \u00fcber.txt", 15)):
        path = f"{t}/src-{len(sources)}"
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        s3tool(BUCKET, "put", f"data/{name}", path)
        sources[name] = path
    # More than one listing page (1,000 keys a page).
    s3tool(BUCKET, "putmany", "pages/k", "2345", "10")

    def share(name, prefix, *lines):
        return (f"[{name}]\n  path = /bucketfs/{name}\n  vfs objects = bucketfs\n"
                f"  bucketfs:endpoint = http://127.0.0.1:{front_port}\n"
                f"  bucketfs:path style = yes\n  bucketfs:bucket = {BUCKET}\n"
                f"  bucketfs:prefix = {prefix}\n"
                f"  bucketfs:credentials file = {w.tmp}/creds\n"
                f"  bucketfs:cache dir = {t}/cache-{name}\n" +
                "".join(f"  {line}\n" for line in lines))

    shares = (share("rgw", "data") + share("rgwpages", "pages") +
              share("rgwrw", "rw", "read only = no", "bucketfs:close = s3",
                    "bucketfs:multipart threshold = 8M",
                    "bucketfs:part size = 5M", "bucketfs:multipart copy threshold = 6M") +
              share("rgwstream", "stream", "read only = no", "bucketfs:close = s3",
                    "bucketfs:multipart threshold = 8M",
                    "bucketfs:part size = 5M", "bucketfs:stream parts = yes"))
    # The dataloader row against a production S3: straight to RGW, as the
    # raw baseline's GETs are (the python front would be the bottleneck).
    shares += (f"[rgwloader]\n  path = /bucketfs/rgwloader\n  vfs objects = bucketfs\n"
               f"  bucketfs:endpoint = {rgw}\n  bucketfs:path style = yes\n"
               f"  bucketfs:bucket = {BUCKET}\n  bucketfs:prefix = loader\n"
               f"  bucketfs:credentials file = {w.tmp}/creds\n"
               f"  bucketfs:cache dir = {t}/cache-rgwloader\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    port, log_path = w.start_extra_smbd("rgw", shares, env)

    def smbclient(name, commands, check=True):
        return w.smbclient(name, commands, check=check, port=port)

    def s3_sha256(key):
        out = f"{t}/s3get"
        s3tool(BUCKET, "get", key, out)
        return sha256(out)

    def keys(prefix):
        return {line.split()[-1] for line in s3tool(BUCKET, "ls", prefix).stdout.splitlines()
                if line.strip()}

    def make(name, size):
        path = f"{t}/{name}"
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        return path

    @test
    def rgw_every_object_reads_back_byte_identical_and_lists_with_its_size():
        out = f"{t}/got"
        for name, src in sources.items():
            smbclient("rgw", f'get "{name}" {out}')
            assert sha256(out) == sha256(src), f"{name} differs"
        top = parse_ls(smbclient("rgw", "ls").stdout)
        for name, src in sources.items():
            if "/" not in name:
                assert top.get(name) == (False, os.path.getsize(src)), (name, top)
        assert top.get("dir", (None,))[0] is True, top

    @test
    def rgw_random_ranges_through_libsmbclient_match_the_source():
        data = open(sources["twenty.bin"], "rb").read()
        rnd = random.Random(20)
        url = f"smb://127.0.0.1:{port}/rgw/twenty.bin"
        for _ in range(20):
            off = rnd.randrange(len(data))
            n = rnd.randrange(1, 3 << 20)
            got = subprocess.run([f"{B}/tests/smbread", url, str(off), str(n)],
                                 capture_output=True, timeout=120,
                                 env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD)).stdout
            assert got == data[off:off + n], f"range {off}+{n}"

    @test
    def rgw_a_listing_of_2345_objects_pages_through_every_one():
        listing = parse_ls(smbclient("rgwpages", "ls").stdout)
        names = [n for n in listing if n.startswith("k")]
        assert len(names) == 2345, len(names)
        with open(front_log) as f:
            pages = sum(1 for l in f if l.startswith("GET ") and "prefix=pages" in l
                        and "list-type=2" in l)
        assert pages >= 3, f"{pages} listing requests"

    @test
    def rgw_files_written_small_and_multipart_are_in_s3_byte_for_byte():
        small, big = make("w-small", 300001), make("w-big", (13 << 20) + 11)
        smbclient("rgwrw", f"put {small} small.bin; put {big} big.bin")
        assert s3_sha256("rw/small.bin") == sha256(small)
        assert s3_sha256("rw/big.bin") == sha256(big)
        listing = parse_ls(smbclient("rgwrw", "ls").stdout)
        assert listing.get("big.bin") == (False, (13 << 20) + 11), listing
        # RGW completes a multipart upload with an empty ETag: the index
        # holds the one HEAD gives, and a reread (If-Match) works.
        out = f"{t}/got"
        smbclient("rgwrw", f"get big.bin {out}")
        assert sha256(out) == sha256(big)

    @test
    def rgw_renames_copy_small_and_multipart_objects_and_deletes_remove_them():
        small, big = make("r-small", 4000), make("r-big", (13 << 20) + 3)
        smbclient("rgwrw", f"put {small} a.bin; put {big} b.bin; "
                           "rename a.bin a2.bin; rename b.bin b2.bin")
        have = keys("rw/")
        assert {"rw/a2.bin", "rw/b2.bin"} <= have and not {"rw/a.bin", "rw/b.bin"} & have, have
        assert s3_sha256("rw/a2.bin") == sha256(small)
        assert s3_sha256("rw/b2.bin") == sha256(big)
        with open(front_log) as f:
            copies = re.findall(r"PUT /\S+/rw/b2\.bin\?partNumber=(\d+)", f.read())
        assert sorted(set(copies)) == ["1", "2", "3"], f"part copies: {copies}"
        smbclient("rgwrw", "mkdir d; put %s d/x.bin; del a2.bin; del d/x.bin; rmdir d" % small)
        have = keys("rw/")
        assert "rw/a2.bin" not in have and not any(k.startswith("rw/d/") for k in have), have

    @test
    def rgw_a_dataloader_with_32_samples_in_flight_reads_every_file_cold_and_hot():
        # issue 18's small-file row on a production S3 (bench/loader, one
        # connection, 32 samples in flight; 500 files of 100 KiB).  The
        # raw baseline (32 parallel GETs of other objects of the same
        # size) runs first, so neither side reads from a colder RGW.
        n, size = 500, 100 << 10
        s3tool(BUCKET, "putmany", "loader/small/f", str(n), str(size))
        s3tool(BUCKET, "putmany", "loader/raw/f", str(n), str(size))
        p = s3tool(BUCKET, "getmany", "loader/raw/f", str(n), "32")
        raw = float(dict(f.split("=", 1) for f in p.stdout.split())["files_per_s"])
        smbclient("rgwloader", "cd small; ls")  # a Dataset lists its folder first
        url = f"smb://127.0.0.1:{port}/rgwloader/small"
        runs = []
        for _ in range(2):
            p = subprocess.run([f"{B}/bench/loader", url, "32", str(n)],
                               capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD))
            assert p.returncode == 0, p.stdout + p.stderr
            kv = dict(f.split("=", 1) for f in p.stdout.split())
            assert int(kv["files"]) == n and int(kv["errors"]) == 0, p.stdout
            runs.append(float(kv["files_per_s"]))
        cold, hot = runs
        print(f"    # RGW files/s: raw 32 GETs {raw:.0f}, bucketfs cold {cold:.0f}, "
              f"hot {hot:.0f}; cold/raw {cold / raw:.2f}", flush=True)

    @test
    def rgw_kill_9_while_a_streamed_file_is_open_aborts_its_upload():
        src = make("k9s", 23 << 20)
        url = f"smb://127.0.0.1:{port}/rgwstream/k9s.bin"
        writer = subprocess.Popen([f"{B}/tests/smbwrite", url, "create", src],
                                  env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD,
                                           SMBWRITE_HOLD="60"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                if s3tool(BUCKET, "uploads", "stream/").stdout.strip():
                    with open(front_log) as f:
                        parts = set(re.findall(r"PUT /\S+/stream/k9s\.bin\?partNumber=(\d+)",
                                               f.read()))
                    if len(parts) >= 2:
                        break
                time.sleep(0.1)
            assert "stream/k9s.bin" in s3tool(BUCKET, "uploads", "stream/").stdout, \
                "no upload in progress to abort"
            pgid = w.extra["rgw"].pid
            os.killpg(pgid, signal.SIGKILL)
            w.extra["rgw"].wait(timeout=30)
            # Its children too, reaped: until then kill(pid, 0) says the
            # journal's writer lives, and recovery leaves its record.
            for _ in range(100):
                if subprocess.run(["pgrep", "-g", str(pgid)],
                                  capture_output=True).returncode != 0:
                    break
                time.sleep(0.1)
        finally:
            writer.kill()
            writer.wait(timeout=60)
        w.extra["rgw"] = w.spawn(["smbd", "--foreground", "--no-process-group", "-s",
                                  f"{w.tmp}/rgw/smb.conf"], "smbd-rgw-2", env=env)
        wait_port(port, "smbd rgw again")
        smbclient("rgwstream", "ls")  # the next connect replays the journal
        assert not s3tool(BUCKET, "uploads", "stream/").stdout.strip(), "the upload stayed"
        assert "stream/k9s.bin" not in keys("stream/"), "a file never closed was uploaded"
