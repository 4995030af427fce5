"""AWS behaviours s3rver lacks (issue 20), each shown through smbd.

The fronts here are tests/integration/s3_front.py with --aws: an SSE-KMS
bucket (opaque ETags) with S3's additional checksums, a public bucket, a
requester-pays bucket, a bucket in another region.  They stand before the
same s3rver as run.py's World; a smbd of their own serves one share per
behaviour, and every read is compared with the bytes put into S3.
"""
import os
import re
import subprocess
import sys
import time

import pytest

from smbls import parse_ls
from world import TOP, free_port, wait_port, sha256

PREFIX = "awsfront"


class AwsFronts:
    """The fronts of this file before the world's s3rver, the objects they
    serve, and an smbd with one share per behaviour."""

    def __init__(self, w):
        self.w = w
        self.t = f"{w.tmp}/aws"
        os.makedirs(self.t, exist_ok=True)
        self.front = os.path.join(TOP, "tests/integration/s3_front.py")
        self.control = f"{self.t}/kms-control"
        self.ports, self.fronts = {}, {}
        for name, behaviours, extra in (
                ("kms", "kms,checksums,100-continue", ["--control", self.control]),
                ("burst", "slowdown=8", []),
                ("public", "public", []),
                ("pays", "requester-pays", []),
                ("region", "region=eu-west-1", []),
                ("redirect", "redirect=ap-south-1", []),
                ("nock", "nochecksums", []),
                ("outage", "", [])):
            self.ports[name] = port = free_port()
            self.fronts[name] = w.spawn([sys.executable, self.front, str(port), str(w.s3_port),
                                         "--aws", behaviours, *extra], f"front-aws-{name}")
        for port in self.ports.values():
            wait_port(port, "an AWS-behaviour front")

        # Objects: single-part ones of one block and of several, and a
        # multipart one (its ETag is "...-N" on every server).
        self.sources = {}
        for name, size in (("small.bin", 100_000), ("one.bin", (1 << 20) + 3),
                           ("blocks.bin", (3 << 20) + 5), ("flip.bin", 200_000)):
            path = f"{self.t}/{name}"
            with open(path, "wb") as f:
                f.write(os.urandom(size))
            w.s3tool("put", f"{PREFIX}/{name}", path)
            self.sources[name] = path
        self.burst = f"{self.t}/burst"
        os.makedirs(self.burst)
        for i in range(40):
            with open(f"{self.burst}/f{i:02d}.bin", "wb") as f:
                f.write(os.urandom(2000 + i))
            w.s3tool("put", f"awsburst/f{i:02d}.bin", f"{self.burst}/f{i:02d}.bin")
        path = f"{self.t}/multi.bin"
        with open(path, "wb") as f:
            f.write(os.urandom((11 << 20) + 7))
        w.s3tool("putmp", f"{PREFIX}/multi.bin", path, str(5 << 20), "2")
        self.sources["multi.bin"] = path

        creds = f"  bucketfs:credentials file = {w.tmp}/creds"
        shares = "".join([
            self.share("kms", self.ports["kms"], f"bucketfs:prefix = {PREFIX}", creds.strip()),
            self.share("kmsrw", self.ports["kms"], "bucketfs:prefix = awskmsrw", creds.strip(),
                  "read only = no", "bucketfs:multipart threshold = 8M",
                  "bucketfs:part size = 5M", "bucketfs:close = s3"),
            self.share("public", self.ports["public"], f"bucketfs:prefix = {PREFIX}",
                  "bucketfs:anonymous = yes"),
            self.share("nopay", self.ports["pays"], f"bucketfs:prefix = {PREFIX}", creds.strip()),
            self.share("pays", self.ports["pays"], f"bucketfs:prefix = {PREFIX}", creds.strip(),
                  "bucketfs:requester pays = yes"),
            self.share("region", self.ports["region"], f"bucketfs:prefix = {PREFIX}", creds.strip()),
            self.share("regionroot", self.ports["region"], creds.strip()),
            self.share("regionset", self.ports["region"], f"bucketfs:prefix = {PREFIX}", creds.strip(),
                  "bucketfs:region = us-west-2"),
            self.share("redirect", self.ports["redirect"], creds.strip()),
            self.share("regionrw", self.ports["region"], "bucketfs:prefix = awsregionrw", creds.strip(),
                  "read only = no"),
            self.share("nockrw", self.ports["nock"], "bucketfs:prefix = awsnock", creds.strip(),
                  "read only = no", "bucketfs:close = s3"),
            self.share("burst", self.ports["burst"], "bucketfs:prefix = awsburst", creds.strip(),
                  "bucketfs:retries = 6"),
            self.share("outage", self.ports["outage"], f"bucketfs:prefix = {PREFIX}", creds.strip(),
                  "bucketfs:metadata ttl = 1", "bucketfs:request timeout = 5"),
        ])
        # No credentials in this smbd's environment: the public share must not
        # need any, the others name their file.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.port, self.log_path = w.start_extra_smbd("aws", shares, env)

    def share(self, name, port, *lines, cache=True):
        body = "".join(f"  {line}\n" for line in lines)
        return (f"[{name}]\n  path = /bucketfs/{name}\n  vfs objects = bucketfs\n"
                f"  bucketfs:endpoint = http://127.0.0.1:{port}\n  bucketfs:path style = yes\n"
                f"  bucketfs:bucket = {self.w.env['S3_BUCKET']}\n"
                f"  bucketfs:block size = 1M\n  bucketfs:retries = 2\n" +
                (f"  bucketfs:cache dir = {self.t}/cache-{name}\n" if cache else "") + body)

    def smbclient(self, name, commands, check=True):
        return self.w.smbclient(name, commands, check=check, port=self.port)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def front_log(self, name):
        with open(f"{self.w.tmp}/front-aws-{name}.log") as f:
            return f.read()

    def reads_back(self, name, files):
        """Every file read through share `name` is byte-identical to its source."""
        out = f"{self.t}/got"
        for f in files:
            self.smbclient(name, f'get "{f}" {out}')
            assert sha256(out) == sha256(self.sources[f]), f"{name}/{f} differs from the source"
        listing = parse_ls(self.smbclient(name, "ls").stdout)
        for f in files:
            assert listing.get(f) == (False, os.path.getsize(self.sources[f])), listing

    def stop(self):
        """The smbd; the fronts go with the world's servers."""
        self.w.stop_extra_smbd("aws")


@pytest.fixture(scope="module")
def aws(world):
    a = AwsFronts(world)
    yield a
    a.stop()


def test_an_sse_kms_bucket_serves_every_object_byte_identical(aws):
    # Opaque ETags: not the MD5 of the bytes, yet 32 hex digits.
    aws.reads_back("kms", ["small.bin", "one.bin", "blocks.bin", "multi.bin"])
    flog = aws.front_log("kms")
    assert re.search(r"GET /\S+/awsfront/small\.bin .*cksum=ENABLED", flog), \
        "no GET asked for the checksum"


def test_checksum_mode_catches_a_corrupted_body_on_an_sse_kms_bucket(aws):
    with open(aws.control, "w") as f:
        f.write(f"GET flip 1 {PREFIX}/flip.bin")
    try:
        aws.reads_back("kms", ["flip.bin"])
    finally:
        with open(aws.control, "w") as f:
            f.write("")
    gets = [line for line in aws.front_log("kms").splitlines()
            if line.startswith("GET ") and f"/{PREFIX}/flip.bin" in line.split()[1]]
    # The flipped answer was refused (its checksum) and asked again.
    assert len(gets) >= 2 and " fault=flip " in gets[0], gets


def test_files_written_to_an_sse_kms_bucket_read_back_and_rename(aws):
    src = f"{aws.t}/kmsput.bin"
    with open(src, "wb") as f:
        f.write(os.urandom((12 << 20) + 9))  # multipart (threshold 8M)
    small = f"{aws.t}/kmsput-small.bin"
    with open(small, "wb") as f:
        f.write(os.urandom(4000))
    aws.smbclient("kmsrw", f"put {src} big.bin; put {small} small.bin; "
                       "rename small.bin renamed.bin")
    out = f"{aws.t}/got"
    aws.smbclient("kmsrw", f"get big.bin {out}")
    assert sha256(out) == sha256(src)
    aws.smbclient("kmsrw", f"get renamed.bin {out}")
    assert sha256(out) == sha256(small)
    keys = aws.w.s3tool("ls", "awskmsrw/").stdout
    assert "awskmsrw/small.bin" not in keys and "awskmsrw/renamed.bin" in keys, keys
    # Every upload said its CRC32C, which the front checked as S3 does.
    lines = [l for l in aws.front_log("kms").splitlines() if "/awskmsrw/" in l.split()[1]]
    puts = [l for l in lines if l.startswith("PUT ") and " copy=yes" not in l]
    creates = [l for l in lines if l.startswith("POST ") and "?uploads" in l]
    assert creates and all(" crc32c=CRC32C" in l for l in creates), creates
    assert len(puts) >= 4 and all(" crc32c=-" not in l for l in puts), puts
    # No body waits a round trip for "100 Continue" (curl asks for one
    # above 1 MiB unless told not to): a part goes out at once.
    assert all(" expect=-" in l for l in puts), [l for l in puts if " expect=-" not in l]


def test_a_server_that_refuses_upload_checksums_gets_content_md5_alone(aws):
    src = f"{aws.t}/nock.bin"
    with open(src, "wb") as f:
        f.write(os.urandom((9 << 20) + 1))  # multipart
    small = f"{aws.t}/nock-small.bin"
    with open(small, "wb") as f:
        f.write(os.urandom(5000))
    aws.smbclient("nockrw", f"put {src} big.bin; put {small} small.bin")
    out = f"{aws.t}/got"
    for name, path in (("big.bin", src), ("small.bin", small)):
        aws.smbclient("nockrw", f"get {name} {out}")
        assert sha256(out) == sha256(path), name
    assert re.search(r"refuses S3's additional checksums \(InvalidRequest", aws.log()), \
        aws.log()[-2000:]
    lines = [l for l in aws.front_log("nock").splitlines()
             if l.split()[0] in ("PUT", "POST") and "/awsnock/" in l.split()[1]]
    refused = [l for l in lines if " crc32c=-" not in l]
    assert len(refused) == 1, refused  # once, then never again


def test_slowdown_bursts_on_one_prefix_are_retried_and_every_file_reads_right(aws):
    # 40 files of one folder read at once: S3 (here, 8 a second per
    # prefix) answers 503 SlowDown to the excess; the engine backs off.
    out = f"{aws.t}/burst-got"
    os.makedirs(out, exist_ok=True)
    aws.smbclient("burst", f"lcd {out}; prompt off; mget *")
    for i in range(40):
        assert sha256(f"{out}/f{i:02d}.bin") == sha256(f"{aws.burst}/f{i:02d}.bin"), i
    gets = [l for l in aws.front_log("burst").splitlines()
            if l.startswith("GET ") and "/awsburst/f" in l.split()[1]]
    # The front logs every attempt: more GETs than files were retries.
    assert len(gets) > 40, f"no request was refused and asked again: {len(gets)} GETs"


def test_an_s3_outage_still_lets_a_box_connect_list_and_read_what_is_cached(aws):
    got = f"{aws.t}/outage-got"
    aws.smbclient("outage", f"get small.bin {got}")  # cached, and its folder listed
    aws.fronts["outage"].kill()
    aws.fronts["outage"].wait(timeout=30)
    time.sleep(1.5)  # the listing is past its TTL: S3 would be asked
    sess = subprocess.Popen(["/usr/bin/python3",
                             os.path.join(TOP, "tests/integration/smbsession.py"),
                             str(aws.port), "outage", "root", "bucketfs-test-pw"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(command):
        sess.stdin.write(command + "\n")
        sess.stdin.flush()
        return sess.stdout.readline().strip()

    try:
        # One connection, as a mounted box keeps, through the outage.
        assert sess.stdout.readline().startswith("ok"), "no connection"
        names = ask("ls /").split()
        assert names[0] == "ok" and {"small.bin", "one.bin"} <= set(names), names
        assert ask(f"get small.bin {got}") == f"ok {os.path.getsize(aws.sources['small.bin'])}"
        assert sha256(got) == sha256(aws.sources["small.bin"])
        start = time.monotonic()
        answer = ask(f"get one.bin {got}")  # never cached: S3 is needed
        took = time.monotonic() - start
        assert answer.startswith("err"), answer
        assert took < 30, f"a miss took {took:.1f} s to fail"
        # S3 back, same connection: the miss reads.
        aws.fronts["outage"] = aws.w.spawn([sys.executable, aws.front, str(aws.ports["outage"]),
                                    str(aws.w.s3_port)], "front-aws-outage-2")
        wait_port(aws.ports["outage"], "the outage front again")
        assert ask(f"get one.bin {got}").startswith("ok"), "not after S3 came back"
        assert sha256(got) == sha256(aws.sources["one.bin"])
        ask("quit")
    finally:
        sess.kill()
        sess.wait(timeout=30)
    assert re.search(r"share outage: S3 at \S+ is unreachable .*serving what the cache "
                     r"holds", aws.log()), aws.log()[-2000:]
    print(f"    # a miss during the outage failed in {took:.1f} s")


def test_a_public_bucket_is_served_with_unsigned_requests_and_no_credentials(aws):
    aws.reads_back("public", ["small.bin", "multi.bin"])
    lines = [l for l in aws.front_log("public").splitlines() if f"/{PREFIX}/" in l or "prefix=" in l]
    assert lines and all(" ak=- " in l for l in lines), lines[:5]


def test_a_requester_pays_bucket_is_refused_without_the_header_and_served_with_it(aws):
    p = aws.smbclient("nopay", "ls", check=False)
    assert "NT_STATUS_UNSUCCESSFUL" in p.stdout + p.stderr, p.stdout
    assert re.search(r"share nopay: cannot serve bucket .*AccessDenied", aws.log()), aws.log()[-2000:]
    aws.reads_back("pays", ["small.bin", "blocks.bin"])


def test_the_bucket_region_is_found_at_connect_and_an_explicit_one_is_kept(aws):
    aws.reads_back("region", ["small.bin"])
    aws.reads_back("regionroot", [])
    # A 301 (HeadBucket: no document, only x-amz-bucket-region).
    aws.smbclient("redirect", f"cd {PREFIX}; get small.bin {aws.t}/got")
    assert sha256(f"{aws.t}/got") == sha256(aws.sources["small.bin"])
    assert re.search(r"share redirect: bucket '\S+' is in region ap-south-1", aws.log()), \
        aws.log()[-2000:]
    assert re.search(r"share region: bucket '\S+' is in region eu-west-1, not us-east-1",
                     aws.log()), aws.log()[-2000:]
    p = aws.smbclient("regionset", "ls", check=False)
    assert "NT_STATUS_UNSUCCESSFUL" in p.stdout + p.stderr, p.stdout
    # The engine (close = local) finds the region as the smbd did, and
    # its upload is signed for it.
    aws.smbclient("regionrw", f"put {aws.sources['small.bin']} up.bin")
    deadline, got = time.time() + 60, None
    while time.time() < deadline:
        if aws.w.s3tool("head", "awsregionrw/up.bin", check=False).returncode == 0:
            aws.w.s3tool("get", "awsregionrw/up.bin", f"{aws.t}/got-up")
            got = sha256(f"{aws.t}/got-up")
            break
        time.sleep(0.3)
    with open(f"{aws.t}/cache-regionrw/engine.log", errors="replace") as f:
        engine_log = f.read()
    assert got == sha256(aws.sources["small.bin"]), engine_log[-2000:]
    assert re.search(r"share regionrw: bucket '\S+' is in region eu-west-1, not us-east-1",
                     engine_log), engine_log[-2000:]
    assert re.search(r"share regionset: cannot serve bucket .*"
                     r"AuthorizationHeaderMalformed.*the bucket is in region eu-west-1",
                     aws.log()), aws.log()[-2000:]

