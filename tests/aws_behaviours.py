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

from smbls import parse_ls

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = os.path.join(TOP, "build")
PREFIX = "awsfront"


def aws_behaviours(w, test, free_port, wait_port, sha256):
    t = f"{w.tmp}/aws"
    os.makedirs(t, exist_ok=True)
    front = os.path.join(TOP, "tests/integration/s3_front.py")
    control = f"{t}/kms-control"
    ports, fronts = {}, {}
    for name, behaviours, extra in (
            ("kms", "kms,checksums,100-continue", ["--control", control]),
            ("burst", "slowdown=8", []),
            ("public", "public", []),
            ("pays", "requester-pays", []),
            ("region", "region=eu-west-1", []),
            ("redirect", "redirect=ap-south-1", []),
            ("nock", "nochecksums", []),
            ("outage", "", [])):
        ports[name] = port = free_port()
        fronts[name] = w.spawn([sys.executable, front, str(port), str(w.s3_port),
                                "--aws", behaviours, *extra], f"front-aws-{name}")
    for port in ports.values():
        wait_port(port, "an AWS-behaviour front")

    # Objects: single-part ones of one block and of several, and a
    # multipart one (its ETag is "...-N" on every server).
    sources = {}
    for name, size in (("small.bin", 100_000), ("one.bin", (1 << 20) + 3),
                       ("blocks.bin", (3 << 20) + 5), ("flip.bin", 200_000)):
        path = f"{t}/{name}"
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        w.s3tool("put", f"{PREFIX}/{name}", path)
        sources[name] = path
    burst = f"{t}/burst"
    os.makedirs(burst)
    for i in range(40):
        with open(f"{burst}/f{i:02d}.bin", "wb") as f:
            f.write(os.urandom(2000 + i))
        w.s3tool("put", f"awsburst/f{i:02d}.bin", f"{burst}/f{i:02d}.bin")
    path = f"{t}/multi.bin"
    with open(path, "wb") as f:
        f.write(os.urandom((11 << 20) + 7))
    w.s3tool("putmp", f"{PREFIX}/multi.bin", path, str(5 << 20), "2")
    sources["multi.bin"] = path

    def share(name, port, *lines, cache=True):
        body = "".join(f"  {line}\n" for line in lines)
        return (f"[{name}]\n  path = /bucketfs/{name}\n  vfs objects = bucketfs\n"
                f"  bucketfs:endpoint = http://127.0.0.1:{port}\n  bucketfs:path style = yes\n"
                f"  bucketfs:bucket = {w.env['S3_BUCKET']}\n"
                f"  bucketfs:block size = 1M\n  bucketfs:retries = 2\n" +
                (f"  bucketfs:cache dir = {t}/cache-{name}\n" if cache else "") + body)

    creds = f"  bucketfs:credentials file = {w.tmp}/creds"
    shares = "".join([
        share("kms", ports["kms"], f"bucketfs:prefix = {PREFIX}", creds.strip()),
        share("kmsrw", ports["kms"], "bucketfs:prefix = awskmsrw", creds.strip(),
              "read only = no", "bucketfs:multipart threshold = 8M",
              "bucketfs:part size = 5M", "bucketfs:close = s3"),
        share("public", ports["public"], f"bucketfs:prefix = {PREFIX}",
              "bucketfs:anonymous = yes"),
        share("nopay", ports["pays"], f"bucketfs:prefix = {PREFIX}", creds.strip()),
        share("pays", ports["pays"], f"bucketfs:prefix = {PREFIX}", creds.strip(),
              "bucketfs:requester pays = yes"),
        share("region", ports["region"], f"bucketfs:prefix = {PREFIX}", creds.strip()),
        share("regionroot", ports["region"], creds.strip()),
        share("regionset", ports["region"], f"bucketfs:prefix = {PREFIX}", creds.strip(),
              "bucketfs:region = us-west-2"),
        share("redirect", ports["redirect"], creds.strip()),
        share("regionrw", ports["region"], "bucketfs:prefix = awsregionrw", creds.strip(),
              "read only = no"),
        share("nockrw", ports["nock"], "bucketfs:prefix = awsnock", creds.strip(),
              "read only = no", "bucketfs:close = s3"),
        share("burst", ports["burst"], "bucketfs:prefix = awsburst", creds.strip(),
              "bucketfs:retries = 6"),
        share("outage", ports["outage"], f"bucketfs:prefix = {PREFIX}", creds.strip(),
              "bucketfs:metadata ttl = 1", "bucketfs:request timeout = 5"),
    ])
    # No credentials in this smbd's environment: the public share must not
    # need any, the others name their file.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    port, log_path = w.start_extra_smbd("aws", shares, env)

    def smbclient(name, commands, check=True):
        return w.smbclient(name, commands, check=check, port=port)

    def log():
        with open(log_path, errors="replace") as f:
            return f.read()

    def front_log(name):
        with open(f"{w.tmp}/front-aws-{name}.log") as f:
            return f.read()

    def reads_back(name, files):
        """Every file read through share `name` is byte-identical to its source."""
        out = f"{t}/got"
        for f in files:
            smbclient(name, f'get "{f}" {out}')
            assert sha256(out) == sha256(sources[f]), f"{name}/{f} differs from the source"
        listing = parse_ls(smbclient(name, "ls").stdout)
        for f in files:
            assert listing.get(f) == (False, os.path.getsize(sources[f])), listing

    @test
    def an_sse_kms_bucket_serves_every_object_byte_identical():
        # Opaque ETags: not the MD5 of the bytes, yet 32 hex digits.
        reads_back("kms", ["small.bin", "one.bin", "blocks.bin", "multi.bin"])
        flog = front_log("kms")
        assert re.search(r"GET /\S+/awsfront/small\.bin .*cksum=ENABLED", flog), \
            "no GET asked for the checksum"

    @test
    def checksum_mode_catches_a_corrupted_body_on_an_sse_kms_bucket():
        with open(control, "w") as f:
            f.write(f"GET flip 1 {PREFIX}/flip.bin")
        try:
            reads_back("kms", ["flip.bin"])
        finally:
            with open(control, "w") as f:
                f.write("")
        gets = [line for line in front_log("kms").splitlines()
                if line.startswith("GET ") and f"/{PREFIX}/flip.bin" in line.split()[1]]
        # The flipped answer was refused (its checksum) and asked again.
        assert len(gets) >= 2 and " fault=flip " in gets[0], gets

    @test
    def files_written_to_an_sse_kms_bucket_read_back_and_rename():
        src = f"{t}/kmsput.bin"
        with open(src, "wb") as f:
            f.write(os.urandom((12 << 20) + 9))  # multipart (threshold 8M)
        small = f"{t}/kmsput-small.bin"
        with open(small, "wb") as f:
            f.write(os.urandom(4000))
        smbclient("kmsrw", f"put {src} big.bin; put {small} small.bin; "
                           "rename small.bin renamed.bin")
        out = f"{t}/got"
        smbclient("kmsrw", f"get big.bin {out}")
        assert sha256(out) == sha256(src)
        smbclient("kmsrw", f"get renamed.bin {out}")
        assert sha256(out) == sha256(small)
        keys = w.s3tool("ls", "awskmsrw/").stdout
        assert "awskmsrw/small.bin" not in keys and "awskmsrw/renamed.bin" in keys, keys
        # Every upload said its CRC32C, which the front checked as S3 does.
        lines = [l for l in front_log("kms").splitlines() if "/awskmsrw/" in l.split()[1]]
        puts = [l for l in lines if l.startswith("PUT ") and " copy=yes" not in l]
        creates = [l for l in lines if l.startswith("POST ") and "?uploads" in l]
        assert creates and all(" crc32c=CRC32C" in l for l in creates), creates
        assert len(puts) >= 4 and all(" crc32c=-" not in l for l in puts), puts
        # No body waits a round trip for "100 Continue" (curl asks for one
        # above 1 MiB unless told not to): a part goes out at once.
        assert all(" expect=-" in l for l in puts), [l for l in puts if " expect=-" not in l]

    @test
    def a_server_that_refuses_upload_checksums_gets_content_md5_alone():
        src = f"{t}/nock.bin"
        with open(src, "wb") as f:
            f.write(os.urandom((9 << 20) + 1))  # multipart
        small = f"{t}/nock-small.bin"
        with open(small, "wb") as f:
            f.write(os.urandom(5000))
        smbclient("nockrw", f"put {src} big.bin; put {small} small.bin")
        out = f"{t}/got"
        for name, path in (("big.bin", src), ("small.bin", small)):
            smbclient("nockrw", f"get {name} {out}")
            assert sha256(out) == sha256(path), name
        assert re.search(r"refuses S3's additional checksums \(InvalidRequest", log()), \
            log()[-2000:]
        lines = [l for l in front_log("nock").splitlines()
                 if l.split()[0] in ("PUT", "POST") and "/awsnock/" in l.split()[1]]
        refused = [l for l in lines if " crc32c=-" not in l]
        assert len(refused) == 1, refused  # once, then never again

    @test
    def slowdown_bursts_on_one_prefix_are_retried_and_every_file_reads_right():
        # 40 files of one folder read at once: S3 (here, 8 a second per
        # prefix) answers 503 SlowDown to the excess; the engine backs off.
        out = f"{t}/burst-got"
        os.makedirs(out, exist_ok=True)
        smbclient("burst", f"lcd {out}; prompt off; mget *")
        for i in range(40):
            assert sha256(f"{out}/f{i:02d}.bin") == sha256(f"{burst}/f{i:02d}.bin"), i
        gets = [l for l in front_log("burst").splitlines()
                if l.startswith("GET ") and "/awsburst/f" in l.split()[1]]
        # The front logs every attempt: more GETs than files were retries.
        assert len(gets) > 40, f"no request was refused and asked again: {len(gets)} GETs"

    @test
    def an_s3_outage_still_lets_a_box_connect_list_and_read_what_is_cached():
        got = f"{t}/outage-got"
        smbclient("outage", f"get small.bin {got}")  # cached, and its folder listed
        fronts["outage"].kill()
        fronts["outage"].wait(timeout=30)
        time.sleep(1.5)  # the listing is past its TTL: S3 would be asked
        sess = subprocess.Popen(["/usr/bin/python3",
                                 os.path.join(TOP, "tests/integration/smbsession.py"),
                                 str(port), "outage", "root", "bucketfs-test-pw"],
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
            assert ask(f"get small.bin {got}") == f"ok {os.path.getsize(sources['small.bin'])}"
            assert sha256(got) == sha256(sources["small.bin"])
            start = time.monotonic()
            answer = ask(f"get one.bin {got}")  # never cached: S3 is needed
            took = time.monotonic() - start
            assert answer.startswith("err"), answer
            assert took < 30, f"a miss took {took:.1f} s to fail"
            # S3 back, same connection: the miss reads.
            fronts["outage"] = w.spawn([sys.executable, front, str(ports["outage"]),
                                        str(w.s3_port)], "front-aws-outage-2")
            wait_port(ports["outage"], "the outage front again")
            assert ask(f"get one.bin {got}").startswith("ok"), "not after S3 came back"
            assert sha256(got) == sha256(sources["one.bin"])
            ask("quit")
        finally:
            sess.kill()
            sess.wait(timeout=30)
        assert re.search(r"share outage: S3 at \S+ is unreachable .*serving what the cache "
                         r"holds", log()), log()[-2000:]
        print(f"    # a miss during the outage failed in {took:.1f} s")

    @test
    def a_public_bucket_is_served_with_unsigned_requests_and_no_credentials():
        reads_back("public", ["small.bin", "multi.bin"])
        lines = [l for l in front_log("public").splitlines() if f"/{PREFIX}/" in l or "prefix=" in l]
        assert lines and all(" ak=- " in l for l in lines), lines[:5]

    @test
    def a_requester_pays_bucket_is_refused_without_the_header_and_served_with_it():
        p = smbclient("nopay", "ls", check=False)
        assert "NT_STATUS_UNSUCCESSFUL" in p.stdout + p.stderr, p.stdout
        assert re.search(r"share nopay: cannot serve bucket .*AccessDenied", log()), log()[-2000:]
        reads_back("pays", ["small.bin", "blocks.bin"])

    @test
    def the_bucket_region_is_found_at_connect_and_an_explicit_one_is_kept():
        reads_back("region", ["small.bin"])
        reads_back("regionroot", [])
        # A 301 (HeadBucket: no document, only x-amz-bucket-region).
        smbclient("redirect", f"cd {PREFIX}; get small.bin {t}/got")
        assert sha256(f"{t}/got") == sha256(sources["small.bin"])
        assert re.search(r"share redirect: bucket '\S+' is in region ap-south-1", log()), \
            log()[-2000:]
        assert re.search(r"share region: bucket '\S+' is in region eu-west-1, not us-east-1",
                         log()), log()[-2000:]
        p = smbclient("regionset", "ls", check=False)
        assert "NT_STATUS_UNSUCCESSFUL" in p.stdout + p.stderr, p.stdout
        # The engine (close = local) finds the region as the smbd did, and
        # its upload is signed for it.
        smbclient("regionrw", f"put {sources['small.bin']} up.bin")
        deadline, got = time.time() + 60, None
        while time.time() < deadline:
            if w.s3tool("head", "awsregionrw/up.bin", check=False).returncode == 0:
                w.s3tool("get", "awsregionrw/up.bin", f"{t}/got-up")
                got = sha256(f"{t}/got-up")
                break
            time.sleep(0.3)
        with open(f"{t}/cache-regionrw/engine.log", errors="replace") as f:
            engine_log = f.read()
        assert got == sha256(sources["small.bin"]), engine_log[-2000:]
        assert re.search(r"share regionrw: bucket '\S+' is in region eu-west-1, not us-east-1",
                         engine_log), engine_log[-2000:]
        assert re.search(r"share regionset: cannot serve bucket .*"
                         r"AuthorizationHeaderMalformed.*the bucket is in region eu-west-1",
                         log()), log()[-2000:]

