"""A production S3 implementation as a second backend (issue 20, point 5).

Ceph's RADOS Gateway, started on loopback by scripts/rgw.sh (one monitor,
one OSD on memstore, beast), with an S3 user whose keys are the test keys.
The S3 client's own checks run against it, and a smbd of its own serves
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

import pytest

from smbls import parse_ls
from world import TOP, B, USER, PASSWORD, free_port, make_file, wait_port, sha256

BUCKET, CLIENT_BUCKET = "bucketfs-rgw", "bucketfs-rgw-client"


class RgwBackend:
    """Ceph RGW on loopback, the SigV4 front before it (logging), its
    objects and an smbd with its shares."""

    def __init__(self, w):
        self.w = w
        self.t = f"{w.tmp}/rgw"
        os.makedirs(self.t, exist_ok=True)
        self.rgw_port = free_port()
        started = time.monotonic()
        p = subprocess.run([os.path.join(TOP, "scripts/rgw.sh"), "start", f"{self.t}/ceph",
                            str(self.rgw_port), "S3RVER", "S3RVER"],
                           capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise AssertionError(f"Ceph RGW did not start: {p.stdout[-1500:]}{p.stderr[-1500:]}")
        w.cleanups = getattr(w, "cleanups", [])
        w.cleanups.append(lambda: subprocess.run(
            [os.path.join(TOP, "scripts/rgw.sh"), "stop", f"{self.t}/ceph"], timeout=60))
        print(f"    # Ceph RGW up in {time.monotonic() - started:.1f} s", flush=True)
        self.rgw_url = f"http://127.0.0.1:{self.rgw_port}"

        self.s3tool(BUCKET, "mb", "-")
        self.s3tool(CLIENT_BUCKET, "mb", "-")

        # The SigV4 front before RGW: a log of every request, nothing changed.
        self.front_port = free_port()
        w.spawn([sys.executable, os.path.join(TOP, "tests/integration/s3_front.py"),
                 str(self.front_port), str(self.rgw_port), "--transparent"], "front-rgw")
        wait_port(self.front_port, "front before RGW")
        self.front_log = f"{w.tmp}/front-rgw.log"

        self.sources = {}
        for name, size in (("empty", 0), ("one byte", 1), ("mib plus one.bin", (1 << 20) + 1),
                           ("twenty.bin", 20 << 20), ("dir/sub/deep.txt", 100),
                           ("caf\u00e9 \u00fcber.txt", 15)):
            path = f"{self.t}/src-{len(self.sources)}"
            with open(path, "wb") as f:
                f.write(os.urandom(size))
            self.s3tool(BUCKET, "put", f"data/{name}", path)
            self.sources[name] = path
        # More than one listing page (1,000 keys a page).
        self.s3tool(BUCKET, "putmany", "pages/k", "2345", "10")

        shares = (self.share("rgw", "data") + self.share("rgwpages", "pages") +
                  self.share("rgwrw", "rw", "read only = no", "bucketfs:close = s3",
                        "bucketfs:multipart threshold = 8M",
                        "bucketfs:part size = 5M", "bucketfs:multipart copy threshold = 6M") +
                  self.share("rgwstream", "stream", "read only = no", "bucketfs:close = s3",
                        "bucketfs:multipart threshold = 8M",
                        "bucketfs:part size = 5M", "bucketfs:stream parts = yes") +
                  self.share("rgwlocal", "local", "read only = no",
                        "bucketfs:part size = 5M", "bucketfs:multipart copy threshold = 6M"))
        # The dataloader row against a production S3: straight to RGW, as the
        # raw baseline's GETs are (the python front would be the bottleneck).
        shares += (f"[rgwloader]\n  path = /bucketfs/rgwloader\n  vfs objects = bucketfs\n"
                   f"  bucketfs:endpoint = {self.rgw_url}\n  bucketfs:path style = yes\n"
                   f"  bucketfs:bucket = {BUCKET}\n  bucketfs:prefix = loader\n"
                   f"  bucketfs:credentials file = {w.tmp}/creds\n"
                   f"  bucketfs:cache dir = {self.t}/cache-rgwloader\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.port, self.log_path = w.start_extra_smbd("rgw", shares, self.env)

    def s3tool(self, bucket, *args, check=True):
        e = dict(os.environ, S3_ENDPOINT=self.rgw_url, S3_BUCKET=bucket,
                 AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER")
        p = subprocess.run([f"{B}/s3tool", *args], capture_output=True, text=True,
                           env=e, timeout=300)
        if check and p.returncode != 0:
            raise AssertionError(f"s3tool {args}: {p.stdout[-800:]}{p.stderr[-800:]}")
        return p

    def share(self, name, prefix, *lines):
        return (f"[{name}]\n  path = /bucketfs/{name}\n  vfs objects = bucketfs\n"
                f"  bucketfs:endpoint = http://127.0.0.1:{self.front_port}\n"
                f"  bucketfs:path style = yes\n  bucketfs:bucket = {BUCKET}\n"
                f"  bucketfs:prefix = {prefix}\n"
                f"  bucketfs:credentials file = {self.w.tmp}/creds\n"
                f"  bucketfs:cache dir = {self.t}/cache-{name}\n" +
                "".join(f"  {line}\n" for line in lines))

    def smbclient(self, name, commands, check=True):
        return self.w.smbclient(name, commands, check=check, port=self.port)

    def s3_sha256(self, key):
        out = f"{self.t}/s3get"
        self.s3tool(BUCKET, "get", key, out)
        return sha256(out)

    def keys(self, prefix):
        return {line.split()[-1] for line in self.s3tool(BUCKET, "ls", prefix).stdout.splitlines()
                if line.strip()}

    def make(self, name, size):
        return make_file(f"{self.t}/{name}", size)

    def stop(self):
        """The smbd; Ceph goes with the world's cleanups, the front with
        its servers."""
        self.w.stop_extra_smbd("rgw")


@pytest.fixture(scope="module")
def rgw(world):
    r = RgwBackend(world)
    yield r
    r.stop()


def backend_cases():
    """The S3 client's checks that run against another server: the
    backend_tests table of tests/integration/s3_client_itest.c."""
    with open(os.path.join(TOP, "tests/integration/s3_client_itest.c")) as f:
        src = f.read()
    table = src[src.index("backend_tests[] = {"):]
    return re.findall(r"cmocka_unit_test\((\w+)\)", table[:table.index("};")])


@pytest.fixture(scope="module")
def client_on_rgw(rgw):
    """One run of the S3 client's own tests against RGW: {case: verdict},
    and the output."""
    os.makedirs(f"{rgw.t}/unit", exist_ok=True)
    p = subprocess.run([f"{B}/tests/s3_client_itest"], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, CMOCKA_MESSAGE_OUTPUT="TAP",
                                             S3_ENDPOINT=rgw.rgw_url, S3_BUCKET=CLIENT_BUCKET,
                                             S3_BACKEND="ceph rgw", TMPDIR=f"{rgw.t}/unit"))
    return ({name: verdict for verdict, name in
             re.findall(r"^(ok|not ok) \d+ - (\S+)", p.stdout, re.M)},
            f"exit {p.returncode}\n{p.stdout[-2000:]}{p.stderr[-1000:]}")


@pytest.mark.parametrize("case", backend_cases())
def test_the_s3_client_on_ceph_rgw(client_on_rgw, case):
    verdicts, out = client_on_rgw
    assert verdicts.get(case) == "ok", f"{case}: {verdicts.get(case, 'did not run')}\n{out}"


def test_rgw_every_object_reads_back_byte_identical_and_lists_with_its_size(rgw):
    out = f"{rgw.t}/got"
    for name, src in rgw.sources.items():
        rgw.smbclient("rgw", f'get "{name}" {out}')
        assert sha256(out) == sha256(src), f"{name} differs"
    top = parse_ls(rgw.smbclient("rgw", "ls").stdout)
    for name, src in rgw.sources.items():
        if "/" not in name:
            assert top.get(name) == (False, os.path.getsize(src)), (name, top)
    assert top.get("dir", (None,))[0] is True, top


def test_rgw_random_ranges_through_libsmbclient_match_the_source(rgw):
    data = open(rgw.sources["twenty.bin"], "rb").read()
    rnd = random.Random(20)
    url = f"smb://127.0.0.1:{rgw.port}/rgw/twenty.bin"
    for _ in range(20):
        off = rnd.randrange(len(data))
        n = rnd.randrange(1, 3 << 20)
        got = subprocess.run([f"{B}/tests/smbread", url, str(off), str(n)],
                             capture_output=True, timeout=120,
                             env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD)).stdout
        assert got == data[off:off + n], f"range {off}+{n}"


def test_rgw_a_listing_of_2345_objects_pages_through_every_one(rgw):
    listing = parse_ls(rgw.smbclient("rgwpages", "ls").stdout)
    names = [n for n in listing if n.startswith("k")]
    assert len(names) == 2345, len(names)
    with open(rgw.front_log) as f:
        pages = sum(1 for l in f if l.startswith("GET ") and "prefix=pages" in l
                    and "list-type=2" in l)
    assert pages >= 3, f"{pages} listing requests"


def test_rgw_files_written_small_and_multipart_are_in_s3_byte_for_byte(rgw):
    small, big = rgw.make("w-small", 300001), rgw.make("w-big", (13 << 20) + 11)
    rgw.smbclient("rgwrw", f"put {small} small.bin; put {big} big.bin")
    assert rgw.s3_sha256("rw/small.bin") == sha256(small)
    assert rgw.s3_sha256("rw/big.bin") == sha256(big)
    listing = parse_ls(rgw.smbclient("rgwrw", "ls").stdout)
    assert listing.get("big.bin") == (False, (13 << 20) + 11), listing
    # RGW completes a multipart upload with an empty ETag: the index
    # holds the one HEAD gives, and a reread (If-Match) works.
    out = f"{rgw.t}/got"
    rgw.smbclient("rgwrw", f"get big.bin {out}")
    assert sha256(out) == sha256(big)


def test_rgw_renames_copy_small_and_multipart_objects_and_deletes_remove_them(rgw):
    small, big = rgw.make("r-small", 4000), rgw.make("r-big", (13 << 20) + 3)
    rgw.smbclient("rgwrw", f"put {small} a.bin; put {big} b.bin; "
                       "rename a.bin a2.bin; rename b.bin b2.bin")
    have = rgw.keys("rw/")
    assert {"rw/a2.bin", "rw/b2.bin"} <= have and not {"rw/a.bin", "rw/b.bin"} & have, have
    assert rgw.s3_sha256("rw/a2.bin") == sha256(small)
    assert rgw.s3_sha256("rw/b2.bin") == sha256(big)
    with open(rgw.front_log) as f:
        copies = re.findall(r"PUT /\S+/rw/b2\.bin\?partNumber=(\d+)", f.read())
    assert sorted(set(copies)) == ["1", "2", "3"], f"part copies: {copies}"
    rgw.smbclient("rgwrw", "mkdir d; put %s d/x.bin; del a2.bin; del d/x.bin; rmdir d" % small)
    have = rgw.keys("rw/")
    assert "rw/a2.bin" not in have and not any(k.startswith("rw/d/") for k in have), have


def test_rgw_renames_through_the_engine_copy_small_and_multipart_objects(rgw):
    # close = local: the engine copies (CopyObject; UploadPartCopy in 5 MiB
    # parts above 6M), sending the renamed version's ETag in
    # x-amz-copy-source-if-match, then deletes the old names.  (RGW 16.2
    # does not check that header: a copy of a replaced source is tested
    # against the front, test_engine.)
    small, big = rgw.make("l-small", 4000), rgw.make("l-big", (13 << 20) + 3)
    for name, path in (("a.bin", small), ("b.bin", big)):
        rgw.s3tool(BUCKET, "put", f"local/{name}", path)
    rgw.smbclient("rgwlocal", "ls")  # listed: the index has their ETags
    rgw.smbclient("rgwlocal", "rename a.bin a2.bin; rename b.bin b2.bin")
    listing = parse_ls(rgw.smbclient("rgwlocal", "ls").stdout)
    assert listing.get("b2.bin") == (False, (13 << 20) + 3) and "b.bin" not in listing, listing
    want = {"local/a2.bin", "local/b2.bin"}
    end = time.monotonic() + 90  # not stuck
    while rgw.keys("local/") != want and time.monotonic() < end:
        time.sleep(0.5)
    assert rgw.keys("local/") == want, rgw.keys("local/")
    assert rgw.s3_sha256("local/a2.bin") == sha256(small)
    assert rgw.s3_sha256("local/b2.bin") == sha256(big)
    with open(rgw.front_log) as f:
        parts = re.findall(r"PUT /\S+/local/b2\.bin\?partNumber=(\d+)", f.read())
    assert sorted(set(parts)) == ["1", "2", "3"], f"part copies: {parts}"


def test_rgw_a_dataloader_with_32_samples_in_flight_reads_every_file_cold_and_hot(rgw):
    # issue 18's small-file row on a production S3 (bench/loader, one
    # connection, 32 samples in flight; 500 files of 100 KiB).  The
    # raw baseline (32 parallel GETs of other objects of the same
    # size) runs first, so neither side reads from a colder RGW.
    n, size = 500, 100 << 10
    rgw.s3tool(BUCKET, "putmany", "loader/small/f", str(n), str(size))
    rgw.s3tool(BUCKET, "putmany", "loader/raw/f", str(n), str(size))
    p = rgw.s3tool(BUCKET, "getmany", "loader/raw/f", str(n), "32")
    raw = float(dict(f.split("=", 1) for f in p.stdout.split())["files_per_s"])
    rgw.smbclient("rgwloader", "cd small; ls")  # a Dataset lists its folder first
    url = f"smb://127.0.0.1:{rgw.port}/rgwloader/small"
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


def test_rgw_kill_9_while_a_streamed_file_is_open_aborts_its_upload(rgw):
    src = rgw.make("k9s", 23 << 20)
    url = f"smb://127.0.0.1:{rgw.port}/rgwstream/k9s.bin"
    writer = subprocess.Popen([f"{B}/tests/smbwrite", url, "create", src],
                              env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD,
                                       SMBWRITE_HOLD="60"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            if rgw.s3tool(BUCKET, "uploads", "stream/").stdout.strip():
                with open(rgw.front_log) as f:
                    parts = set(re.findall(r"PUT /\S+/stream/k9s\.bin\?partNumber=(\d+)",
                                           f.read()))
                if len(parts) >= 2:
                    break
            time.sleep(0.1)
        assert "stream/k9s.bin" in rgw.s3tool(BUCKET, "uploads", "stream/").stdout, \
            "no upload in progress to abort"
        pgid = rgw.w.extra["rgw"].pid
        os.killpg(pgid, signal.SIGKILL)
        rgw.w.extra["rgw"].wait(timeout=30)
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
    rgw.w.extra["rgw"] = rgw.w.spawn(["smbd", "--foreground", "--no-process-group", "-s",
                              f"{rgw.w.tmp}/rgw/smb.conf"], "smbd-rgw-2", env=rgw.env)
    wait_port(rgw.port, "smbd rgw again")
    rgw.smbclient("rgwstream", "ls")  # the next connect replays the journal
    assert not rgw.s3tool(BUCKET, "uploads", "stream/").stdout.strip(), "the upload stayed"
    assert "stream/k9s.bin" not in rgw.keys("stream/"), "a file never closed was uploaded"


def test_rgw_the_cluster_lock_lease_uses_rgws_own_conditional_writes(rgw):
    """tools/bucketfs-lease straight against RGW (no front standing in):
    taken once, refused to a second helper, given back, taken again."""
    conf = f"{rgw.t}/lease.conf"
    with open(conf, "w") as f:
        f.write(f"[global]\n[lease]\n  path = /\n  vfs objects = bucketfs\n"
                f"  bucketfs:endpoint = {rgw.rgw_url}\n  bucketfs:path style = yes\n"
                f"  bucketfs:bucket = {BUCKET}\n"
                f"  bucketfs:credentials file = {rgw.w.tmp}/creds\n"
                f"  bucketfs:cache dir = {rgw.t}/lease-cache\n")

    def helper():
        p = subprocess.Popen(["/usr/local/sbin/bucketfs-lease", "-s", conf, "-k",
                              ".bucketfs/rgw-lease", "-t", "6", "lease"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return p, p.stdout.read(1)

    a, got = helper()
    assert got == b"0", a.stderr.read() if a.poll() is not None else got
    b, got = helper()
    assert got == b"1", b.stderr.read()
    assert b.wait(timeout=10) == 0
    time.sleep(3)  # a renews it meanwhile (every 2 s) with If-Match
    assert a.poll() is None, a.stderr.read()
    a.send_signal(signal.SIGTERM)
    assert a.wait(timeout=20) == 0, a.stderr.read()
    c, got = helper()
    assert got == b"0", c.stderr.read() if c.poll() is not None else got
    c.send_signal(signal.SIGTERM)
    assert c.wait(timeout=20) == 0
