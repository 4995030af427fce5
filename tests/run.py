#!/usr/bin/env python3
"""bucketfs's test runner (make test).

Unit tests (cmocka) first, then integration tests against real servers on
loopback, all state in one temporary folder that is removed at the end
(KEEP=1 keeps it):

  s3rver (the pinned npm package)  <-  s3_front.py (SigV4 check, If-Match,
                                        fault injection)  <-  bucketfs
  smbd (Debian's, private smb.conf, vfs objects = bucketfs)  <-  smbclient,
                                        libsmbclient (build/tests/smbread)

Ends with "N passed, N failed"; exits non-zero if anything failed.
"""
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET

# The sibling test files import as modules also when this file is loaded by
# path (the benchmarks do), not run as a script.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hardening import hardening


# procs as well: the benchmarks load this file and use world's names through it.
from world import (TOP, B, BUCKET, CLIENT_BUCKET, USER, PASSWORD, OTHER_USER,  # noqa: F401
                   procs, stop_procs, free_port, wait_port, sh, sha256, World, seed)

results = []  # (name, ok, detail)


durations = []  # (seconds, name) of each integration check


def record(name, ok, detail=""):
    results.append((name, ok, detail))
    print(f"{'ok' if ok else 'not ok'} - {name}" + (f"\n    {detail}" if detail and not ok else ""),
          flush=True)


def run_tap(name, argv, env=None):
    """Run a cmocka binary with TAP output; one result per test case."""
    e = dict(os.environ, CMOCKA_MESSAGE_OUTPUT="TAP", **(env or {}))
    try:
        p = subprocess.run(argv, env=e, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        record(f"{name}: finished in time", False, "timed out after 600 s")
        return
    seen = 0
    for line in p.stdout.splitlines():
        m = re.match(r"(not ok|ok) \d+ - (\S+)", line)
        if m:
            seen += 1
            detail = ""
            if m.group(1) == "not ok":
                detail = (p.stdout + p.stderr)[-2000:]
            record(f"{name}: {m.group(2)}", m.group(1) == "ok", detail)
    if seen == 0 or (p.returncode != 0 and all(r[1] for r in results[-seen:] if seen)):
        record(f"{name}: ran", False, f"exit {p.returncode}\n{p.stdout[-2000:]}{p.stderr[-2000:]}")


def test(fn):
    """Decorator: run an integration check, record its outcome."""
    name = fn.__name__.replace("_", " ")
    if os.environ.get("PICK", "") not in name:  # PICK=words: only those
        return fn
    start = time.monotonic()
    try:
        fn()
        record(name, True)
    except Exception as e:  # a failed check is a result, not the end
        record(name, False, f"{e}\n{traceback.format_exc(limit=2)}")
    durations.append((time.monotonic() - start, name))
    return fn


def main():
    tmp = tempfile.mkdtemp(prefix="bucketfs-test.")
    started = time.monotonic()
    world = None
    only = os.environ.get("ONLY", "")
    # T=<name or -k expression>: those of the tests moved to pytest, alone.
    pick = os.environ.get("T", "")
    try:
        if pick or only in PYTEST_AREAS:
            run_pytest(only, pick)
            return finish(started)
        # ---- unit tests ----------------------------------------------------
        os.makedirs(f"{tmp}/unit")
        for t in sorted(os.listdir(f"{B}/tests")) if not only else []:
            if t.startswith("test_"):
                run_tap(f"unit {t[5:]}", [f"{B}/tests/{t}"], env={"TMPDIR": f"{tmp}/unit"})
        if only in ("", "hardening"):
            hardening(tmp, record)

        # ---- the S3 client against the real server ------------------------------
        world = World(tmp)
        w = world
        if not only:
            run_tap("s3 client", [f"{B}/tests/s3_client_itest"], env={
                "S3_ENDPOINT": w.endpoint, "S3_BUCKET": CLIENT_BUCKET,
                # virtual-hosted style: BUCKET.s3.localhost resolves to loopback
                "S3_VHOST_ENDPOINT": f"http://s3.localhost:{w.front_port}",
                "S3_TLS_ENDPOINT": f"https://127.0.0.1:{w.tls_port}",
                "TMPDIR": f"{tmp}/unit",
                "S3_DEAD_ENDPOINT": f"http://127.0.0.1:{w.dead_port}",
                "S3_FAULT_503": f"http://127.0.0.1:{w.fault_ports['503']}",
                "S3_FAULT_TRUNC": f"http://127.0.0.1:{w.fault_ports['truncate']}",
                "S3_FAULT_RESET": f"http://127.0.0.1:{w.fault_ports['reset']}",
            })

        # ---- the module in smbd ---------------------------------------------------
        sources = seed(w)
        w.start_smbd()
        if only in ("", "read"):
            integration(w, sources)
        if only in ("", "write"):
            writeback(w, tmp)
    except Exception:
        record("test harness", False, traceback.format_exc())
    finally:
        for cleanup in getattr(world, "cleanups", []):
            cleanup()  # servers that are daemons of their own (Ceph)
        stop_procs()
        if os.environ.get("KEEP"):
            print(f"# state kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    # Its own servers, once ours are gone.
    run_pytest(only, os.environ.get("PICK", ""))
    return finish(started)


def finish(started):
    """The slowest checks (where the time goes, for keeping make test
    short) and the summary line; the exit status."""
    print(f"# {time.monotonic() - started:.0f} s in all; slowest checks: " +
          ", ".join(f"{n} {d:.0f} s" for d, n in sorted(durations, reverse=True)[:10]))
    passed = sum(1 for r in results if r[1])
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not results else 0


# The areas whose tests have moved to pytest (tests/test_*.py, fixtures in
# tests/conftest.py), by the ONLY name that selects them.
PYTEST_AREAS = {"asan": "tests/test_asan.py", "aws": "tests/test_aws.py",
                "docs": "tests/test_docs.py",
                "engine": "tests/test_engine.py", "reliability": "tests/test_reliability.py",
                "rgw": "tests/test_rgw.py", "security": "tests/test_security.py tests/test_soak.py",
                "semantics": "tests/test_semantics.py"}


def pytest_k(pick):
    """T (or PICK) as pytest's -k: an expression as it is, words as the
    name they are part of."""
    if re.search(r"\b(and|or|not)\b|[()]", pick):
        return pick
    return pick.strip().replace(" ", "_")


def run_pytest(only, pick):
    """The pytest areas ONLY selects, in a random order (the tests may not
    depend on one another), each test's outcome recorded as ours."""
    files = [f for area, fs in PYTEST_AREAS.items() if only in ("", area) for f in fs.split()]
    if not files:
        return
    fd, xml = tempfile.mkstemp(prefix="bucketfs-pytest.", suffix=".xml")
    os.close(fd)
    argv = ["/usr/bin/python3", "-m", "pytest", *files, "-o", f"cache_dir={B}/pytest-cache",
            "-p", "random_order", "--random-order", "-v", "-s", "--durations=10",
            f"--junitxml={xml}"]
    if pick:
        argv += ["-k", pytest_k(pick)]
    print(f"# pytest: {' '.join(argv[3:])}", flush=True)
    p = subprocess.run(argv, cwd=TOP)
    try:
        cases = ET.parse(xml).getroot().iter("testcase")
    except (OSError, ET.ParseError) as e:
        record("pytest: ran", False, f"exit {p.returncode}, no report: {e}")
        return
    finally:
        os.remove(xml)
    seen = 0
    for case in cases:
        # test_x_y[param] -> "x y [param]"
        name = case.get("name").removeprefix("test_").replace("_", " ").replace("[", " [")
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if case.find("skipped") is not None:
            continue
        seen += 1
        record(name, bad is None, "" if bad is None else (bad.text or bad.get("message", ""))[-2000:])
        durations.append((float(case.get("time", 0)), name))
    # 5: nothing selected, what -k may do; anything else unreported fails.
    if seen == 0 and p.returncode not in (0, 5):
        record("pytest: ran", False, f"exit {p.returncode}")


def integration(w, sources):
    def refused(share, *log_lines):
        """The tree connect to share fails, and the log says why."""
        p = w.smbclient(share, "ls", check=False)
        assert "tree connect failed: NT_STATUS_UNSUCCESSFUL" in p.stdout + p.stderr, p.stdout
        log = w.smb_log()
        for line in log_lines:
            assert re.search(line, log), f"no log line /{line}/ in: {log[-3000:]}"
        return log
    @test
    def root_listing_shows_every_object_with_its_size():
        got = w.ls("data")
        for key, src in sources.items():
            top = key.split("/")[0]
            if "/" in key:
                assert got.get(top, (False,))[0], f"{top} not listed as a directory: {got}"
            else:
                assert got.get(key) == (False, os.path.getsize(src)), \
                    f"{key}: listed as {got.get(key)}, source has {os.path.getsize(src)} bytes"
        assert len(got) == 10, f"unexpected entries: {sorted(got)}"

    @test
    def every_object_reads_back_byte_identical():
        out = os.path.join(w.tmp, "got")
        for key, src in sources.items():
            if os.path.exists(out):
                os.unlink(out)
            d, _, name = key.rpartition("/")
            cmd = (f'cd "{d}"; ' if d else "") + f'get "{name}" "{out}"'
            w.smbclient("data", cmd)
            assert sha256(out) == sha256(src), f"{key} differs from its source"

    @test
    def random_ranges_through_libsmbclient_match_the_source():
        p = sh([f"{B}/tests/smbread", f"smb://127.0.0.1:{w.smb_port}/data/fifty.bin",
                "--random", "300", "4242", sources["fifty.bin"]],
               env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD), check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        assert " 0 mismatches" in p.stdout, p.stdout
        print(f"    # {p.stdout.strip()}")

    @test
    def the_synchronous_read_path_reads_right_too():
        # "aio read size = 0": smbd calls pread, not pread_send.
        p = sh([f"{B}/tests/smbread", f"smb://127.0.0.1:{w.smb_port}/syncread/fifty.bin",
                "--random", "100", "77", sources["fifty.bin"]],
               env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD), check=False)
        assert p.returncode == 0 and " 0 mismatches" in p.stdout, p.stdout + p.stderr
        before = w.s3_gets("fifty.bin")
        p = sh([f"{B}/tests/smbread", f"smb://127.0.0.1:{w.smb_port}/syncread/fifty.bin",
                "--random", "100", "77", sources["fifty.bin"]],
               env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD), check=False)
        assert p.returncode == 0 and " 0 mismatches" in p.stdout, p.stdout + p.stderr
        assert w.s3_gets("fifty.bin") == before, "the same ranges again went to S3"
        assert re.search(r"share syncread: [1-9]\d* synchronous and 0 asynchronous preads",
                         w.smb_log()), "the synchronous path was not the one used"

    @test
    def reads_past_the_end_are_short_not_errors():
        p = sh([f"{B}/tests/smbread", f"smb://127.0.0.1:{w.smb_port}/data/one%20byte", "0", "100"],
               env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD))
        assert p.stdout == "x", repr(p.stdout)
        p = sh([f"{B}/tests/smbread", f"smb://127.0.0.1:{w.smb_port}/data/empty", "0", "10"],
               env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD))
        assert p.stdout == "", repr(p.stdout)

    @test
    def nested_and_implicit_directories_list_and_open():
        assert w.ls("data", "tree") == {"a": (True, 0), "x": (True, 0)}, w.ls("data", "tree")
        assert w.ls("data", "tree/a") == {"b": (True, 0), "sibling.txt": (False, 11)}
        assert w.ls("data", "tree/a/b/c") == {"deep.txt": (False, 30)}
        out = w.smbclient("data", 'cd tree\\a\\b\\c; get deep.txt -').stdout
        assert "deep in an implicit directory" in out, out

    @test
    def case_insensitive_lookup_finds_the_stored_name():
        out = w.smbclient("data", 'get "NAME WITH SPACES.TXT" -').stdout
        assert "spaces in the name" in out, out

    @test
    def prefix_share_is_rooted_at_its_prefix():
        assert w.ls("sub") == {"b": (True, 0), "sibling.txt": (False, 11)}, w.ls("sub")
        out = w.smbclient("sub", "cd b/c; get deep.txt -").stdout
        assert "deep in an implicit directory" in out, out
        # ".." at the root of the share stays inside it.
        assert w.ls("sub", "..") == w.ls("sub")

    @test
    def missing_names_are_not_found():
        p = w.smbclient("data", "get no-such-file -", check=False)
        assert "NT_STATUS_OBJECT_NAME_NOT_FOUND" in p.stdout + p.stderr, p.stdout + p.stderr
        p = w.smbclient("data", "cd no-such-dir", check=False)
        assert "NT_STATUS_OBJECT_" in p.stdout + p.stderr, p.stdout + p.stderr

    def writes_refused(share, status):
        before = w.s3tool("ls", "").stdout
        for cmd in ("put /etc/hostname newfile", "mkdir newdir", "rm empty",
                    'rename "one byte" renamed'):
            p = w.smbclient(share, cmd, check=False)
            out = p.stdout + p.stderr
            assert re.search(status, out), f"{cmd}: {out}"
        assert w.s3tool("ls", "").stdout == before, "the bucket changed"

    @test
    def writes_are_refused_and_change_nothing():
        # "read only = yes" (Samba's default): smbd refuses before us.
        writes_refused("data", r"NT_STATUS_(MEDIA_WRITE_PROTECTED|ACCESS_DENIED)")

    @test
    def wrong_secret_fails_the_tree_connect_with_a_clear_log_line():
        log = refused("badsecret", r"share badsecret: cannot serve bucket '%s' at .*: the S3 "
                      r"server refused the credentials \(SignatureDoesNotMatch" % BUCKET)
        assert "not-the-secret" not in log, "the secret reached the log"

    @test
    def the_same_smbd_keeps_serving_the_good_share():
        assert w.smbd.poll() is None, "smbd exited"
        assert "fifty.bin" in w.ls("data")

    @test
    def missing_bucket_fails_the_tree_connect_with_a_clear_log_line():
        refused("nobucket", r"share nobucket: cannot serve bucket 'no-such-bucket'.*"
                r"the bucket does not exist \(NoSuchBucket")

    @test
    def unreachable_endpoint_fails_the_tree_connect_quickly():
        start = time.time()
        refused("unreachable", r"share unreachable: cannot serve bucket .*"
                r"the S3 endpoint is unreachable")
        took = time.time() - start
        print(f"    # tree connect refused after {took:.1f} s")

    @test
    def unknown_profile_fails_the_tree_connect_with_a_clear_log_line():
        refused("noprofile",
                r"share noprofile: profile \[does-not-exist\] not found in credentials file")

    @test
    def credentials_from_smbds_environment_work():
        assert "fifty.bin" in w.ls("envcreds")

    @test
    def a_secret_in_smb_conf_is_refused_with_a_clear_log_line():
        refused("inlinesecret", r"share inlinesecret: 'bucketfs:secret access key' puts a "
                r"secret in smb.conf, which every local user can read: refused")

    @test
    def a_credentials_file_others_can_read_works_with_a_warning():
        assert "fifty.bin" in w.ls("loosecreds")
        assert re.search(r"share loosecreds: credentials file \S+/creds-loose can be read by "
                         r"other users: chmod 600 it", w.smb_log())

    @test
    def our_debug_class_sets_our_log_level():
        # "log level = 1 bucketfs:3": level-3 lines of ours, none of vfs's.
        w.ls("data")
        assert re.search(r"bucketfs: share data serves s3://", w.smb_log())

    @test
    def instance_role_credentials_come_from_imdsv2_and_are_refreshed():
        keys = "IMDSKEY1:imds-secret-1,IMDSKEY2:imds-secret-2"
        imds_port, front_port = free_port(), free_port()
        # Credentials valid 303 s: inside the 300 s margin after 3 s.
        imds = w.spawn([sys.executable, os.path.join(TOP, "tests/integration/imds_standin.py"),
                        str(imds_port), "--keys", keys, "--lifetime", "303"], "imds")
        w.spawn([sys.executable, os.path.join(TOP, "tests/integration/s3_front.py"),
                 str(front_port), str(w.s3_port), "--keys", keys], "front-imds")
        wait_port(imds_port, "imds stand-in")
        wait_port(front_port, "front for imds keys")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AWS_")}  # nothing before IMDS in the chain
        port, log = w.start_extra_smbd("imds", f"""[imds]
  path = /bucketfs/imds
  vfs objects = bucketfs
  bucketfs:endpoint = http://127.0.0.1:{front_port}
  bucketfs:path style = yes
  bucketfs:bucket = {BUCKET}
  bucketfs:cache dir = {w.tmp}/bfscache-imds
  bucketfs:imds endpoint = http://127.0.0.1:{imds_port}
  bucketfs:metadata ttl = 0
""", env)
        smb = ["smbclient", "//127.0.0.1/imds", "-p", str(port), "-U", f"{USER}%{PASSWORD}",
               "-m", "SMB3"]
        client = subprocess.Popen(smb, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            client.stdin.write("ls\n")
            client.stdin.flush()
            time.sleep(4.5)
            client.stdin.write("ls\n")
            client.stdin.flush()
            time.sleep(1.5)
        finally:
            out, _ = client.communicate("quit\n", timeout=30)
        assert "fifty.bin" in out, out
        front = open(f"{w.tmp}/front-imds.log").read()
        assert "ak=IMDSKEY1" in front, "the first role credentials were not used"
        assert "ak=IMDSKEY2" in front, "refreshed credentials were not used"
        issued = open(f"{w.tmp}/imds.log").read()
        assert issued.count("issued") >= 2 and "PUT /latest/api/token" in issued, issued
        assert re.search(r"refreshed the instance role's credentials", open(log).read())
        assert "imds-secret" not in open(log).read(), "a secret reached the log"
        # The metadata service goes away: the share's engine (which
        # refreshes on each 2 s pass while the credentials are inside
        # their margin) asks again every 10 s, not on every pass.
        engine_log = f"{w.tmp}/bfscache-imds/engine.log"
        assert os.path.exists(engine_log), "the share has no engine"
        imds.kill()
        imds.wait(timeout=30)
        start = len(open(engine_log).read())
        time.sleep(13)
        failed = open(engine_log).read()[start:].count(
            "cannot refresh the instance role's credentials")
        assert 1 <= failed <= 2, f"{failed} refresh attempts in 13 s"

    @test
    def ctl_warm_fills_the_cache_and_the_reads_that_follow_make_no_s3_request():
        files = {"a.bin": 2 << 20, "sub/b.bin": 3 << 20, "c.bin": (1 << 20) + 1}
        for name, size in files.items():
            with open(f"{w.tmp}/warm-src", "wb") as f:
                f.write(os.urandom(size))
            shutil.copy(f"{w.tmp}/warm-src", f"{w.tmp}/warm-{name.replace('/', '_')}")
            w.s3tool("put", f"warmset/{name}", f"{w.tmp}/warm-src")
        out = w.ctl("warmed", "warm", "").stdout
        assert re.search(r"^warmed 3 objects, 6\.0 MiB", out, re.M), out
        before = {n: w.s3_gets(f"warmset/{n}") for n in files}
        for name in files:
            w.smbclient("warmed", f"get {name} {w.tmp}/warm-back")
            assert sha256(f"{w.tmp}/warm-back") == \
                sha256(f"{w.tmp}/warm-{name.replace('/', '_')}"), name
        after = {n: w.s3_gets(f"warmset/{n}") for n in files}
        assert after == before, f"reads after warm went to S3: {before} -> {after}"
        stats = json.loads(w.ctl("warmed", "stats", "--json").stdout)
        assert stats["cache_bytes_used"] >= 6 << 20 and stats["pending_uploads"] == 0, stats
        assert stats["hit_ratio"] == 1.0 and stats["s3_requests"] > 0, stats
        assert "hit ratio          100.0%" in w.ctl("warmed", "stats").stdout

    @test
    def the_metrics_file_holds_prometheus_counters_and_a_latency_histogram():
        text = open(f"{w.tmp}/metrics-warm.prom").read()
        values = {}
        for line in text.splitlines():
            if line.startswith("#"):
                assert re.match(r"# (HELP|TYPE) bucketfs_\w+ ", line), line
                continue
            m = re.match(r'^(bucketfs_\w+)\{cache_dir="[^"]+"(?:,le="([^"]+)")?\} (\S+)$', line)
            assert m, f"not Prometheus text: {line!r}"
            values[(m.group(1), m.group(2))] = float(m.group(3))
        assert values[("bucketfs_cache_hit_blocks_total", None)] >= 6, values
        assert values[("bucketfs_s3_requests_total", None)] > 0, values
        buckets = [v for (n, le), v in values.items()
                   if n == "bucketfs_s3_request_duration_seconds_bucket"]
        assert buckets == sorted(buckets) and len(buckets) == 13, buckets
        assert buckets[-1] == values[("bucketfs_s3_request_duration_seconds_count", None)]
        assert values[("bucketfs_cache_limit_bytes", None)] == 64 << 20

    @test
    def the_metrics_file_is_written_0644_whatever_smbds_umask():
        # smbd runs with umask 0: a file it makes as root is 0666 unless
        # the module says otherwise.
        mode = os.stat(f"{w.tmp}/metrics-warm.prom").st_mode & 0o7777
        assert mode == 0o644, oct(mode)

    @test
    def ctl_fsck_finds_and_repairs_a_damaged_cache():
        out = w.ctl("warmed", "fsck").stdout
        assert out.rstrip().endswith("clean"), out
        blocks = f"{w.tmp}/bfscache-warm/cache/blocks"
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(blocks) for f in fs)
        assert len(files) >= 3, files
        os.remove(files[0])  # a cache file lost behind the cache's back
        stray = os.path.join(os.path.dirname(files[1]), "0" * 32)
        open(stray, "w").write("junk")  # and a file nobody recorded
        out = w.ctl("warmed", "fsck", "--dry-run").stdout
        assert "would drop" in out and "would remove" in out, out
        out = w.ctl("warmed", "fsck").stdout
        assert re.search(r"\d+ records whose bytes are not in their file: dropped", out), out
        assert "1 cache files without records: removed" in out, out
        assert not os.path.exists(stray)
        assert w.ctl("warmed", "fsck").stdout.rstrip().endswith("clean")
        for name in ("a.bin", "sub/b.bin", "c.bin"):  # refetched where needed
            w.smbclient("warmed", f"get {name} {w.tmp}/warm-back")
            assert sha256(f"{w.tmp}/warm-back") == \
                sha256(f"{w.tmp}/warm-{name.replace('/', '_')}"), name

    @test
    def ctl_fsck_drops_cached_versions_the_index_no_longer_names():
        # c.bin is replaced in S3 and the dataset warmed again: the old
        # version's blocks are named by nothing any more.
        with open(f"{w.tmp}/warm-c.bin", "wb") as f:
            f.write(os.urandom(2 << 20))
        w.s3tool("put", "warmset/c.bin", f"{w.tmp}/warm-c.bin")
        w.ctl("warmed", "warm", "")
        out = w.ctl("warmed", "fsck", "--dry-run").stdout
        assert re.search(r"^index: [1-9]\d* entries checked$", out, re.M), out
        assert re.search(r"^  1 object versions \([1-9]\d* blocks\) the index does not "
                         r"name \(replaced or deleted in S3\): would drop$", out, re.M), out
        out = w.ctl("warmed", "fsck").stdout
        assert re.search(r"^  1 object versions .*: dropped$", out, re.M), out
        assert w.ctl("warmed", "fsck").stdout.rstrip().endswith("clean")
        gets = w.s3_gets("warmset/c.bin")
        w.smbclient("warmed", f"get c.bin {w.tmp}/warm-back")
        assert sha256(f"{w.tmp}/warm-back") == sha256(f"{w.tmp}/warm-c.bin")
        assert w.s3_gets("warmset/c.bin") == gets, "the new version was not kept"

    @test
    def ctl_warm_says_when_the_dataset_does_not_fit():
        out = w.ctl("warmsmall", "warm", "").stdout
        assert "does not fit in the cache (3.0 MiB)" in out, out

    @test
    def ctl_warm_draws_a_progress_bar_on_a_terminal():
        # script(1) gives the tool a pseudo-terminal for its stdout.
        cmd = " ".join(shlex.quote(a) for a in
                       [f"{B}/bucketfs-ctl", "-s", w.conf, "warmsmall", "warm", ""])
        out = sh(["script", "-qec", cmd, "/dev/null"]).stdout
        # (read as text, the terminal's carriage returns arrive as newlines)
        bars = re.findall(r"^\[([#.]{30})\] +(\d+)%  \d+/\d+ objects", out, re.M)
        assert bars and bars[-1] == ("#" * 30, "100"), repr(out)
        assert re.search(r"^warmed \d+ objects", out, re.M), repr(out)

    @test
    def ctl_invalidate_makes_the_next_access_list_and_fetch_again():
        # listings of the share root (not the probe, which asks max-keys=1)
        lists = lambda: len(re.findall(r"^GET /\S+\?delimiter=%2F&encoding-type=url&list-type=2&prefix=warmset%2F ",
                                       open(f"{w.tmp}/front.log").read(), re.M))
        w.ls("warmed")
        before = lists()
        w.ls("warmed")
        assert lists() == before, "listed again within the TTL"
        w.smbclient("warmed", "get a.bin /dev/null")
        gets = w.s3_gets("warmset/a.bin")
        w.smbclient("warmed", "get a.bin /dev/null")
        assert w.s3_gets("warmset/a.bin") == gets, "a.bin was not cached"
        out = w.ctl("warmed", "invalidate", "").stdout
        assert re.search(r"invalidated s3://\S+: \d+ index records and [1-9]\d* cached "
                         r"blocks of \d+ objects dropped", out), out
        w.ls("warmed")
        assert lists() == before + 1, f"{lists() - before} listings after invalidate"
        w.smbclient("warmed", f"get a.bin {w.tmp}/warm-back")
        assert w.s3_gets("warmset/a.bin") > gets, "a.bin was not fetched again"
        assert sha256(f"{w.tmp}/warm-back") == sha256(f"{w.tmp}/warm-a.bin")

    @test
    def ctl_errors_are_one_line_and_a_non_zero_exit():
        p = w.ctl("nosuchshare", "stats", check=False)
        assert p.returncode == 1 and p.stderr.strip().count("\n") == 0 and \
            "has no share [nosuchshare]" in p.stderr, p.stderr
        p = w.ctl("data", "nosuchverb", check=False)
        assert p.returncode == 1 and "unknown verb" in p.stderr, p.stderr
        p = sh([f"{B}/bucketfs-ctl", "warm", "--help"])
        assert "--manifest FILE" in p.stdout, p.stdout

    @test
    def ctl_reads_parameters_as_the_module_does():
        # One table (lib/bfs_params) for both: Samba's "on" is yes (the
        # tool once read it as no and addressed bucket.127.0.0.1), and a
        # bad value is refused with the line the module logs.
        conf = f"{w.tmp}/smb-ctl.conf"
        common = (f"  vfs objects = bucketfs\n  bucketfs:endpoint = {w.endpoint}\n"
                  f"  bucketfs:credentials file = {w.tmp}/creds\n"
                  f"  bucketfs:bucket = {BUCKET}\n  bucketfs:prefix = tree\n")
        with open(conf, "w") as f:
            f.write(open(w.conf).read() +
                    f"[spelling]\n  path = /bucketfs/spelling\n{common}"
                    f"  bucketfs:path style = on\n  bucketfs:cache dir = {w.tmp}/bfscache-spell\n"
                    f"[spellbad]\n  path = /bucketfs/spellbad\n{common}"
                    f"  bucketfs:path style = On\n  bucketfs:retries = lots\n")
        p = sh([f"{B}/bucketfs-ctl", "-s", conf, "spelling", "warm", "a"], check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        p = sh([f"{B}/bucketfs-ctl", "-s", conf, "spellbad", "warm", "a"], check=False)
        assert p.returncode == 1 and "'bucketfs:retries' must be a whole number from 0 to 20, " \
            "not 'lots'" in p.stderr, p.stderr

    def ls_with_smbd_environment(name, **env_vars):
        """ls through a second smbd whose environment has env_vars and no
        other AWS_ variable; returns the listing and that smbd's log."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(env_vars)
        port, log = w.start_extra_smbd(name, f"""[{name}]
  path = /bucketfs/{name}
  vfs objects = bucketfs
  bucketfs:endpoint = {w.endpoint}
  bucketfs:path style = yes
  bucketfs:bucket = {BUCKET}
  bucketfs:cache dir = {w.tmp}/bfscache-{name}
  bucketfs:imds = no
""", env)
        p = sh(["smbclient", f"//127.0.0.1/{name}", "-p", str(port), "-U",
                f"{USER}%{PASSWORD}", "-m", "SMB3", "-c", "ls"])
        return p.stdout, open(log).read()

    @test
    def credentials_follow_aws_shared_credentials_file_and_aws_profile():
        with open(f"{w.tmp}/creds-profiles", "w") as f:
            f.write("[default]\naws_access_key_id = S3RVER\naws_secret_access_key = wrong\n"
                    "[training]\naws_access_key_id = S3RVER\naws_secret_access_key = S3RVER\n")
        os.chmod(f"{w.tmp}/creds-profiles", 0o600)
        out, log = ls_with_smbd_environment(
            "awsenv", AWS_SHARED_CREDENTIALS_FILE=f"{w.tmp}/creds-profiles",
            AWS_PROFILE="training")
        assert "fifty.bin" in out, out
        assert re.search(r"S3 credentials from \S+/creds-profiles", log), log

    @test
    def credentials_come_from_the_home_aws_credentials_file_last():
        home = f"{w.tmp}/awshome"
        os.makedirs(f"{home}/.aws", exist_ok=True)
        with open(f"{home}/.aws/credentials", "w") as f:
            f.write("[default]\naws_access_key_id = S3RVER\naws_secret_access_key = S3RVER\n")
        os.chmod(f"{home}/.aws/credentials", 0o600)
        out, log = ls_with_smbd_environment("awshome", HOME=home)
        assert "fifty.bin" in out, out
        assert f"S3 credentials from {home}/.aws/credentials" in log, log

    @test
    def ctl_warm_takes_a_manifest():
        with open(f"{w.tmp}/manifest", "w") as f:
            f.write("# two of the files\nfifty.bin\n/mib plus one.bin\n")
        out = w.ctl("manifestwarm", "warm", "--manifest", f"{w.tmp}/manifest").stdout
        assert re.search(r"^warmed 2 objects, 51\.0 MiB", out, re.M), out
        before = w.s3_gets("fifty.bin")
        w.smbclient("manifestwarm", f"get fifty.bin {w.tmp}/fifty.back")
        assert w.s3_gets("fifty.bin") == before, "read after warm went to S3"
        assert sha256(f"{w.tmp}/fifty.back") == sha256(sources["fifty.bin"])

    @test
    def a_reload_changes_ttl_cache_size_readahead_and_max_requests_of_a_running_connection():
        w.s3tool("put", "reloadttl/a", "/etc/hostname")
        for i in range(3):
            with open(f"{w.tmp}/reload-{i}.bin", "wb") as f:
                f.write(os.urandom(3 << 20))
            w.s3tool("put", f"reloadttl/r{i}.bin", f"{w.tmp}/reload-{i}.bin")
        lists = lambda: sum(1 for l in open(f"{w.tmp}/front.log")
                            if l.startswith("GET ") and "list-type=2" in l
                            and "prefix=reloadttl%2F" in l and "max-keys=1&" not in l)
        used = lambda: json.loads(w.ctl("reload", "stats", "--json").stdout)["cache_bytes_used"]
        client = subprocess.Popen(["smbclient", "//127.0.0.1/reload", "-p", str(w.smb_port),
                                   "-U", f"{USER}%{PASSWORD}", "-m", "SMB3"],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, text=True)
        conf = open(w.conf).read()
        log_start = os.path.getsize(f"{w.tmp}/log.smbd")
        try:
            def run_and_wait(command):
                client.stdin.write(command + "\n")
                client.stdin.flush()
                time.sleep(1.5)
            run_and_wait("ls")
            run_and_wait("ls")
            before = lists()
            run_and_wait("ls")
            assert lists() == before, "listed again within a TTL of 1000 s"
            run_and_wait("get r0.bin /dev/null")
            run_and_wait("get r1.bin /dev/null")
            assert used() == 6 << 20, f"{used()} bytes cached before the reload"
            with open(w.conf, "w") as f:
                f.write(conf.replace("bucketfs:metadata ttl = 1000\n", "bucketfs:metadata ttl = 0\n")
                        .replace("bucketfs:cache size = 64M", "bucketfs:cache size = 4M")
                        .replace("bucketfs:readahead = 4", "bucketfs:readahead = 2")
                        .replace("bucketfs:max requests = 4", "bucketfs:max requests = 2"))
            sh(["smbcontrol", "-s", w.conf, "smbd", "reload-config"])
            time.sleep(2)
            run_and_wait("ls")
            run_and_wait("ls")
            assert client.poll() is None, "the client connection was dropped"
            assert lists() >= before + 2, f"TTL 0 not followed: {lists() - before} listings"
            # The next fill evicts down to the new size.
            run_and_wait("get r2.bin /dev/null")
            assert used() <= 4 << 20, f"{used()} bytes cached for a new limit of 4 MiB"
            with open(f"{w.tmp}/log.smbd") as f:
                f.seek(log_start)
                log = f.read()
            for change in ("'metadata ttl' is now 0 (was 1000)",
                           "'cache size' is now 4194304 (was 67108864)",
                           "'readahead' is now 2 (was 4)",
                           "'max requests' is now 2 (was 4)"):
                assert f"share reload: {change}" in log, f"not followed: {change}"
            assert client.poll() is None, "the client connection was dropped"
        finally:
            with open(w.conf, "w") as f:
                f.write(conf)
            sh(["smbcontrol", "-s", w.conf, "smbd", "reload-config"], check=False)
            client.communicate("quit\n", timeout=30)

    @test
    def share_without_a_bucket_fails_with_a_clear_log_line():
        refused("nobucketparam", r"share nobucketparam: 'bucketfs:bucket' is not set")

    def session_page_faults(share, path, reads):
        """Minor page faults of the smbd process that served a session
        reading path `reads` times (hot): the parent adds a child's to its
        own cminflt when it reaps it."""
        def cminflt():
            return int(open(f"/proc/{w.smbd.pid}/stat").read().rsplit(")", 1)[1].split()[8])

        def children():
            return set(open(f"/proc/{w.smbd.pid}/task/{w.smbd.pid}/children").read().split())

        w.smbclient(share, f'get "{path}" /dev/null')  # warm
        idle = children()
        before = cminflt()
        w.smbclient(share, "; ".join([f'get "{path}" /dev/null'] * reads))
        for _ in range(100):
            if children() <= idle:
                break
            time.sleep(0.1)
        return cminflt() - before

    @test
    def large_reads_reuse_their_buffers():
        # smbd gives each 8 MiB read a fresh buffer; left to glibc's
        # defaults each one is mapped, faulted in and zeroed page by page.
        # Two sessions' whole-process faults differ by thousands for reasons
        # of their own (a child of an earlier check reaped in the window
        # adds its faults: 5,358 once in a full run): the pair is measured
        # up to three times, and one pair under the bound shows the reuse.
        for _ in range(3):
            reuse = [session_page_faults("data", "fifty.bin", n) for n in (1, 4)]
            if reuse[1] - reuse[0] < 2 * 2048:
                break
        fresh = [session_page_faults("noreuse", "fifty.bin", n) for n in (1, 4)]
        print(f"    # page faults of a session reading 50 MiB once / 4 times: "
              f"{reuse[0]} / {reuse[1]} reusing buffers, "
              f"{fresh[0]} / {fresh[1]} with glibc's defaults")
        # With reuse, three more reads of 50 MiB (18 buffers of 8 MiB) cost
        # less than two buffers' 2,048 pages each.  glibc's own dynamic mmap
        # threshold is inherited from smbd's parent, whose heap history the
        # whole suite shapes: without reuse a child sometimes reuses too
        # (9,449 faults against 12,735 in one full run, 46,264 against
        # 10,670 alone), so that side is shown, not asserted.
        assert reuse[1] - reuse[0] < 2 * 2048, f"reads with reuse grow by {reuse[1] - reuse[0]} faults"

    @test
    def a_repeated_read_makes_no_s3_request():
        first = w.smbread("data", "mib plus one.bin", 4096, 300000)
        before = w.s3_gets("mib%20plus%20one.bin")
        again = w.smbread("data", "mib plus one.bin", 4096, 300000)
        assert first == again, "the second read differs"
        with open(sources["mib plus one.bin"], "rb") as f:
            f.seek(4096)
            assert again == f.read(300000), "bytes differ from the source"
        assert w.s3_gets("mib%20plus%20one.bin") == before, "the repeated read went to S3"

    @test
    def ten_thousand_objects_list_once_each_with_their_size():
        w.s3tool("putmany", "many/obj", "10000", "37")
        # Added in S3 behind the share's back: the root, listed before and
        # past its TTL, is served as the index has it while the engine
        # relists it (stale-while-revalidate), so "many" shows up within
        # the TTL plus one relisting.
        deadline = time.time() + 30
        while "many" not in w.ls("data"):
            assert time.time() < deadline, "many/ never showed up in the root"
            time.sleep(0.5)
        start = time.time()
        got = w.ls("data", "many")
        print(f"    # first listing (from S3): {time.time() - start:.1f} s")
        assert len(got) == 10000, f"{len(got)} entries"
        for i in range(10000):
            assert got.get(f"obj{i:05d}") == (False, 37), f"obj{i:05d}: {got.get(f'obj{i:05d}')}"
        # Listed again from the index: no further S3 listing.
        lists = sum(1 for line in open(f"{w.tmp}/front.log") if "list-type=2" in line and "prefix=many" in line)
        start = time.time()
        assert len(w.ls("data", "many")) == 10000
        print(f"    # second listing (from the index): {time.time() - start:.1f} s")
        assert sum(1 for line in open(f"{w.tmp}/front.log") if "list-type=2" in line and "prefix=many" in line) == lists

    @test
    def a_dataset_three_times_the_cache_stays_within_it_and_reads_right():
        cache_blocks = os.path.join(w.tmp, "bfscache-small/cache/blocks")
        for name in ("one.bin", "two.bin", "three.bin", "one.bin"):
            out = os.path.join(w.tmp, "small.out")
            w.smbclient("small", f'get "{name}" "{out}"')
            assert sha256(out) == sha256(sources[f"bigset/{name}"]), f"{name} differs"
            used = int(sh(["du", "-sk", "--", cache_blocks]).stdout.split()[0]) * 1024
            assert used <= (8 << 20) + (1 << 20), f"cache holds {used} bytes, limit 8 MiB"
        print(f"    # cache folder holds {used >> 10} KiB for a limit of 8192 KiB")

    def three_readers_of_one_object(share):
        env = dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD)
        url = f"smb://127.0.0.1:{w.smb_port}/{share}/two.bin"
        procs_ = [subprocess.Popen([f"{B}/tests/smbread", url, "--random", "60", str(seed),
                                    sources["bigset/two.bin"]], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                  for seed in (1, 1, 2)]
        outs = [p.communicate(timeout=300)[0] for p in procs_]
        for p, out in zip(procs_, outs):
            assert p.returncode == 0 and " 0 mismatches" in out, out

    @test
    def two_clients_filling_the_same_cold_blocks_both_read_right():
        three_readers_of_one_object("small")

    @test
    def two_clients_filling_the_same_cold_blocks_through_the_engine_both_read_right():
        # The engine fills, smbd's worker threads copy, evictions unlink
        # files under them: an 8 MiB cache for 24 MiB objects.  Rounds of
        # whole reads first leave the cache full of old blocks, so the
        # engine's fills of 4 blocks evict their own blocks' old copies
        # (served as zeros until a fill no longer punched those).
        for _ in range(4):
            for name in ("one.bin", "two.bin", "three.bin", "one.bin"):
                out = os.path.join(w.tmp, "small.out")
                w.smbclient("smallengine", f'get "{name}" "{out}"')
                assert sha256(out) == sha256(sources[f"bigset/{name}"]), f"{name} differs"
            three_readers_of_one_object("smallengine")

    @test
    def an_object_replaced_in_s3_is_served_new_after_the_ttl_never_mixed():
        key, size = "changing/file.bin", 3 << 20
        old, new = b"A" * size, b"B" * size
        assert w.smbread("ttl", "file.bin", 0, size) == old
        src = os.path.join(w.tmp, "new.bin")
        with open(src, "wb") as f:
            f.write(new)
        w.s3tool("put", key, src)
        deadline = time.time() + 20
        seen_new = False
        while time.time() < deadline and not seen_new:
            p = subprocess.run([f"{B}/tests/smbread",
                                f"smb://127.0.0.1:{w.smb_port}/ttl/file.bin", "0", str(size)],
                               env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD),
                               capture_output=True, timeout=60)
            if p.returncode == 0:
                assert p.stdout in (old, new), "a read mixed the old and the new object"
                seen_new = p.stdout == new
            time.sleep(0.5)
        assert seen_new, "the new object was not served within 20 s (TTL 2 s)"

    @test
    def the_warm_cache_serves_after_an_smbd_restart_without_s3():
        w.smbread("data", "fifty.bin", 0, 4 << 20)
        w.restart_smbd()
        before = w.s3_gets("fifty.bin")
        data = w.smbread("data", "fifty.bin", 0, 4 << 20)
        with open(sources["fifty.bin"], "rb") as f:
            assert data == f.read(4 << 20)
        assert w.s3_gets("fifty.bin") == before, "the restarted smbd went to S3"

    @test
    def the_cache_belongs_to_the_server_whoever_reads():
        out = os.path.join(w.tmp, "multi.out")
        w.smbclient("multiuser", f'get "mib plus one.bin" "{out}"', user=OTHER_USER)
        assert sha256(out) == sha256(sources["mib plus one.bin"])
        before = w.s3_gets("mib%20plus%20one.bin")
        for user in (OTHER_USER, USER):
            w.smbclient("multiuser", f'get "mib plus one.bin" "{out}"', user=user)
            assert sha256(out) == sha256(sources["mib plus one.bin"])
        assert w.s3_gets("mib%20plus%20one.bin") == before, "a cached read went to S3"
        cache = os.path.join(w.tmp, "bfscache-multi")
        files = dirs = 0
        for root, ds, fs in os.walk(cache):
            for d in ds:
                st = os.stat(os.path.join(root, d))
                assert st.st_uid == 0 and st.st_mode & 0o777 == 0o700, (d, oct(st.st_mode), st.st_uid)
                dirs += 1
            for f in fs:
                st = os.stat(os.path.join(root, f))
                assert st.st_uid == 0 and st.st_mode & 0o077 == 0, (f, oct(st.st_mode), st.st_uid)
                files += 1
        assert files > 0 and dirs > 0
        print(f"    # {files} files and {dirs} folders in the cache, all root's, none open to others")

    @test
    def a_cache_folder_of_another_bucket_is_refused():
        w.ls("data")  # the folder is the front's bucket's
        refused("otherbucket", r"share otherbucket: cache dir .*holds the index of another bucket")

    @test
    def a_cache_folder_others_may_write_is_refused_naming_it():
        # Root opens files in the cache folder (issue 19 point 6): one
        # that group or others may change is refused, as sshd's
        # StrictModes refuses a home it cannot trust.
        loose = os.path.join(w.tmp, "bfscache-loose")
        os.makedirs(loose, exist_ok=True)
        os.chmod(loose, 0o777)
        refused("loosecache", rf"share loosecache: cache dir {re.escape(loose)}: "
                rf"{re.escape(loose)} is writable by group or others \(uid 0, mode 0777\)")
        os.chmod(loose, 0o700)
        w.ls("loosecache")  # once root's alone it serves

    @test
    def a_cache_folder_of_the_same_bucket_on_another_endpoint_is_refused():
        w.ls("data")  # the folder is the front's bucket's
        refused("otherendpoint", r"share otherendpoint: cache dir .*holds the index of another "
                rf"bucket or endpoint \(http://127.0.0.1:{w.front_port}/{BUCKET}, not "
                rf"http://127.0.0.1:{w.control_port}/{BUCKET}\)")

    @test
    def nothing_panicked():
        log = w.smb_log()
        assert "PANIC" not in log and "INTERNAL ERROR" not in log, log[-3000:]
        assert w.smbd.poll() is None, "smbd exited"

    @test
    def install_refuses_a_module_built_for_another_samba():
        fake = os.path.join(w.tmp, "other.so")
        with open(fake, "wb") as f:
            f.write(b"\0bucketfs-built-for: samba=2:4.16.0 vfs=46\0")
        p = sh([os.path.join(TOP, "scripts/check-samba.sh"), "install", fake], check=False)
        assert p.returncode != 0 and "was built for" in p.stderr, p.stderr
        p = sh([os.path.join(TOP, "scripts/check-samba.sh"), "install", f"{B}/bucketfs.so"],
               check=False)
        assert p.returncode == 0, p.stderr

    @test
    def the_installed_module_is_the_one_just_built():
        modules = sh(["smbd", "-b"]).stdout
        moddir = re.search(r"MODULESDIR: (\S+)", modules).group(1)
        assert sha256(f"{moddir}/vfs/bucketfs.so") == sha256(f"{B}/bucketfs.so")


def writeback(w, tmp):
    """The write path: staged writes, uploads on close, renames, the journal."""
    def make(name, size):
        path = f"{tmp}/{name}"
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, 1 << 20)
                f.write(os.urandom(n))
                left -= n
        return path

    def s3_keys(prefix):
        out = w.s3tool("ls", prefix).stdout
        return {line.split()[-1] for line in out.splitlines() if line.strip()}

    def journal_records(cache):
        p = sh(["mdb_dump", "-s", "jrn", "-p", f"{tmp}/{cache}/journal"], check=False)
        return [l for l in p.stdout.splitlines() if l.startswith(" ") and "\\" not in l[:2]]

    def assert_renamed(share, old, new, src):
        """S3 and the share have src's bytes under new and nothing under old."""
        keys = s3_keys(f"{share}/")
        assert f"{share}/{old}" not in keys, f"the old name stayed in S3: {keys}"
        assert w.s3_sha256(f"{share}/{new}") == sha256(src), "not all bytes under the new name"
        listing = w.ls(share)
        assert listing.get(new) == (False, os.path.getsize(src)), listing
        assert old not in listing, listing

    def slow_upload(src, name, delay):
        """Start smbclient putting src as rwfault/name with every PUT slowed
        by delay seconds; return once its first part is on its way."""
        w.fault(f"PUT delay:{delay} -1")
        p = subprocess.Popen(["smbclient", "//127.0.0.1/rwfault", "-p", str(w.smb_port),
                              "-U", f"{USER}%{PASSWORD}", "-m", "SMB3",
                              "-c", f"put {src} {name}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            with open(f"{tmp}/front-control.log") as f:
                if any(l.startswith("PUT /") and f"{name}?partNumber" in l for l in f):
                    break
            time.sleep(0.1)
        assert f"rwfault/{name}" not in s3_keys("rwfault/"), "upload already done"
        return p

    @test
    def a_file_written_through_the_share_is_in_s3_byte_for_byte():
        src = make("small.bin", 300001)
        w.smbclient("rw", f"put {src} small.bin")
        assert w.s3_sha256("rw/small.bin") == sha256(src)
        assert w.ls("rw").get("small.bin") == (False, 300001)

    def limits(share, name, *sizes):
        out = sh(["/usr/bin/python3", os.path.join(TOP, "tests/integration/smblimits.py"),
                  str(w.smb_port), share, USER, PASSWORD, name, *map(str, sizes)]).stdout
        lines = out.splitlines()
        total, avail = map(int, lines[0].split()[1:])
        return total, avail, lines[1:]

    @test
    def a_file_grown_past_max_file_size_is_refused_as_disk_full():
        # Issue 19 point 5: an end of file set to 2 TiB would have 2 TiB
        # of zeros uploaded.  Past 'bucketfs:max file size' (8M here) the
        # client is told the disk is full, and what was within it stays.
        M = 1 << 20
        _, _, got = limits("rwlimits", "grow.bin", 4 * M, 8 * M, 8 * M + 1, 2 << 40)
        assert got == [f"eof {4 * M} OK", f"write {4 * M} OK",
                       f"eof {8 * M} OK", f"write {8 * M} STATUS_DISK_FULL",
                       f"eof {8 * M + 1} STATUS_DISK_FULL", f"write {8 * M + 1} STATUS_DISK_FULL",
                       f"eof {2 << 40} STATUS_DISK_FULL", f"write {2 << 40} STATUS_DISK_FULL"], got
        assert "grow.bin would be 8388609 bytes, over 'bucketfs:max file size'" in w.smb_log()
        want = bytearray(8 * M)
        want[4 * M] = ord("x")
        want = hashlib.sha256(want).hexdigest()
        deadline = time.time() + 60
        while "grow.bin" in w.ctl("rwlimits", "pending").stdout and time.time() < deadline:
            time.sleep(0.2)  # close = local: the engine uploads it
        assert w.s3_sha256("rwlimits/grow.bin") == want

    @test
    def free_space_is_the_cache_folders_file_system_and_the_writeback_allowance():
        # Not 1 PiB: a client (Explorer, robocopy) checks free space
        # before a copy, and every byte is staged in the cache folder
        # first.  [rw] (close = s3) has the file system's room, [rwlimits]
        # at most its 40M writeback limit.
        fs = os.statvfs(w.tmp)
        total, rw_avail, _ = limits("rw", "space.bin")
        assert abs(total - fs.f_blocks * fs.f_frsize) < (1 << 20), (total, fs)
        assert abs(rw_avail - fs.f_bavail * fs.f_frsize) < (256 << 20), (rw_avail, fs)
        total, avail, _ = limits("rwlimits", "space.bin")
        assert 0 < avail <= 40 << 20, avail
        assert abs(total - fs.f_blocks * fs.f_frsize) < (1 << 20), (total, fs)
        print(f"    # [rw] {rw_avail >> 20} MiB free of {total >> 20} MiB; [rwlimits] {avail >> 20} MiB")

    @test
    def an_upload_holds_no_more_part_buffers_than_upload_memory():
        # 8 parts of 5 MiB may be in flight; 'upload memory' bounds what
        # one process holds, down to one part when a part is larger.
        src = make("partsmem.bin", 40 * (1 << 20) + 12345)
        peaks = {}
        for memory in (1 << 40, 12 << 20, 1):
            out = w.s3tool("putmp", "rw/partsmem.bin", src, str(5 << 20), "8", str(memory)).stdout
            peaks[memory] = int(out.split("peak_part_bytes=")[1])
            assert w.s3_sha256("rw/partsmem.bin") == sha256(src)
        assert peaks[1 << 40] > 12 << 20, peaks  # unbounded: several parts at once
        assert peaks[12 << 20] <= 12 << 20, peaks
        assert peaks[1] == 5 << 20, peaks  # one part at a time
        print(f"    # peak part buffers: {peaks[1 << 40] >> 20} MiB unbounded, "
              f"{peaks[12 << 20] >> 20} MiB with 12M, {peaks[1] >> 20} MiB with 1 byte")

    @test
    def s3_work_runs_as_the_connected_user_and_cache_files_stay_roots():
        # Issue 19 point 15: smbd talks to S3 with the user's rights and
        # lends root's only to the cache folder's file calls.  While an
        # upload (PUT held 3 s) and a cold read (GET held 3 s) of a user
        # are in flight, its smbd's effective uid is the user's: sampled
        # every 0.1 s, nearly always (smbd itself is root for a moment at
        # the tree connect, and lib/ for each cache file it opens); with
        # the S3 work under become_root, root's for the 3 s.
        import pwd
        uid = pwd.getpwnam(OTHER_USER).pw_uid
        src = make("asuser.bin", 3 << 20)

        def euids_while(fault, commands):
            w.fault(fault)
            seen = []
            try:
                p = subprocess.Popen(
                    ["smbclient", "//127.0.0.1/rwasuser", "-p", str(w.smb_port),
                     "-U", f"{OTHER_USER}%{PASSWORD}", "-m", "SMB3", "-c", commands],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                deadline, pid = time.time() + 60, None
                while p.poll() is None and time.time() < deadline:
                    if pid is None:  # the user's smbd, once it has a session
                        status = sh(["smbstatus", "-p", "-s", w.conf], check=False).stdout
                        pid = next((f[0] for f in map(str.split, status.splitlines())
                                    if len(f) > 2 and f[0].isdigit() and f[1] == OTHER_USER),
                                   None)
                        continue
                    try:
                        with open(f"/proc/{pid}/task/{pid}/status") as st:
                            seen += [int(l.split()[2]) for l in st if l.startswith("Uid:")]
                    except FileNotFoundError:
                        break
                    time.sleep(0.02)
                out = p.communicate(timeout=60)[0]
                assert p.returncode == 0, out
            finally:
                w.fault("")
            return seen

        def the_users(seen, what):
            assert len(seen) >= 30 and seen.count(uid) >= 0.8 * len(seen) and \
                set(seen) <= {uid, 0}, f"euids seen during the {what}: {seen}, the user's is {uid}"
            return f"{seen.count(uid)} of {len(seen)}"

        seen = euids_while("PUT delay:3 -1", f"put {src} asuser.bin")
        up = the_users(seen, "upload")
        assert w.s3_sha256("rwasuser/asuser.bin") == sha256(src)
        w.ctl("rwasuser", "invalidate", "")  # its blocks too: a cold read
        out = os.path.join(tmp, "asuser.out")
        seen = euids_while("GET delay:3 -1 asuser.bin", f"get asuser.bin {out}")
        down = the_users(seen, "read")
        print(f"    # samples with the user's uid: upload {up}, read {down}")
        assert sha256(out) == sha256(src)
        # The fill thread, started with root's rights, cached every block.
        def gets():
            with open(f"{w.tmp}/front-control.log") as f:
                return sum(1 for line in f if line.startswith("GET ")
                           and "rwasuser/asuser.bin" in line.split()[1])
        before = gets()
        w.smbclient("rwasuser", f"get asuser.bin {out}", user=OTHER_USER)
        assert sha256(out) == sha256(src)
        assert gets() == before, "a cached read went to S3"
        cache = os.path.join(w.tmp, "bfscache-rwasuser")
        for root, ds, fs in os.walk(cache):
            for name in ds + fs:
                st = os.lstat(os.path.join(root, name))
                assert st.st_uid == 0 and st.st_mode & 0o077 == 0, (name, oct(st.st_mode), st.st_uid)

    def volume_flags(share):
        out = sh(["/usr/bin/python3", os.path.join(TOP, "tests/integration/fsattr.py"),
                  str(w.smb_port), share, USER, PASSWORD]).stdout.split()
        return int(out[0], 16)

    @test
    def one_key_too_long_for_the_index_is_hidden_and_its_folder_still_works():
        # "<folder>\0<name>" over 511 bytes cannot be an index key (issue 19
        # point 4): hidden with a log line, its siblings served, and a name
        # that would make one refused before S3 is changed.  (s3rver keeps
        # a key as files: each component stays well under 255 bytes.)
        deep = "d" * 200 + "/" + "e" * 200  # rw/long/<deep>/: 410 bytes
        src = make("long-ok.bin", 1000)
        w.s3tool("put", f"rw/long/{deep}/ok.txt", src)
        w.s3tool("put", f"rw/long/{deep}/{'n' * 120}", src)  # 531 in the index
        w.ctl("rw", "invalidate", "")  # put behind the share's back
        listing = w.ls("rw", f"long/{deep}")
        assert set(listing) == {"ok.txt"}, listing
        assert "too long with its folder for the index" in w.smb_log()
        got = f"{tmp}/long-ok.back"
        w.smbclient("rw", f'get "long/{deep}/ok.txt" {got}')
        assert sha256(got) == sha256(src)
        before = s3_keys(f"rw/long/{deep}/")
        p = w.smbclient("rw", f'mkdir "long/{deep}/{"m" * 120}"', check=False)
        assert "NT_STATUS_" in p.stdout + p.stderr, p.stdout
        p = w.smbclient("rw", f'put {src} "long/{deep}/{"p" * 120}"', check=False)
        assert "NT_STATUS_" in p.stdout + p.stderr, p.stdout
        assert s3_keys(f"rw/long/{deep}/") == before, "S3 changed"

    @test
    def windows_is_told_a_writable_share_is_writable_and_a_read_only_one_is_not():
        # FileFsAttributeInformation, as Explorer asks when it maps a drive.
        read_only_volume = 0x00080000
        rw, ro = volume_flags("rw"), volume_flags("data")
        assert not rw & read_only_volume, f"writable share says read-only: 0x{rw:08x}"
        assert ro & read_only_volume, f"read-only share says writable: 0x{ro:08x}"
        for flags in (rw, ro):  # case-sensitive search, case-preserved, Unicode
            assert flags & 0x7 == 0x7, f"0x{flags:08x}"
        print(f"    # rw 0x{rw:08x}, read-only 0x{ro:08x}")

    @test
    def names_that_decode_to_dot_dot_or_past_veto_files_are_refused():
        # [rw] vetoes *.exe.  U+F029 is the mapping's final dot: only a final
        # one is a dot; anywhere else the name is no key's SMB form.
        src = make("names.bin", 1000)
        for name in ("\uf029\uf029", "a\uf029exe", "\uf029", "x\uf029\uf029"):
            p = w.smbclient("rw", f'put {src} "{name}"', check=False)
            assert "NT_STATUS_" in p.stdout + p.stderr, f"{name!r} was created: {p.stdout}"
        p = w.smbclient("rw", f'mkdir "\uf029\uf029"', check=False)
        assert "NT_STATUS_" in p.stdout + p.stderr, f"mkdir: {p.stdout}"
        p = w.smbclient("rw", f"put {src} a.exe", check=False)
        assert "NT_STATUS_" in p.stdout + p.stderr, "veto files is not on"
        keys = s3_keys("rw/")
        assert not {"rw/..", "rw/.", "rw/a.exe", "rw/x.\uf029", "rw/x\uf029."} & keys, keys
        assert not any(k.startswith("rw/../") or k.startswith("rw/./") for k in keys), keys
        # A final mapped dot is still the key's final dot.
        w.smbclient("rw", f'put {src} "end\uf029"')
        assert w.s3_sha256("rw/end.") == sha256(src)
        assert "end\uf029" in w.ls("rw"), w.ls("rw")
        assert "refused the name" in w.smb_log()

    @test
    def checkpoint_pattern_write_tmp_then_rename_over_the_final():
        old = make("old.pt", 1000)
        w.smbclient("rw", f"mkdir run1; put {old} run1/ckpt.pt")
        src = make("ckpt.pt", 200 << 20)
        start = time.time()
        w.smbclient("rw", f"put {src} run1/ckpt.pt.tmp; rename run1/ckpt.pt.tmp run1/ckpt.pt -f",
                    )
        print(f"    # 200 MiB write + rename, durable: {time.time() - start:.1f} s")
        assert w.s3_sha256("rw/run1/ckpt.pt") == sha256(src), "S3 object differs from the source"
        keys = s3_keys("rw/run1/")
        assert "rw/run1/ckpt.pt.tmp" not in keys, f"tmp object left: {keys}"
        got = w.ls("rw", "run1")
        assert got.get("ckpt.pt") == (False, 200 << 20) and "ckpt.pt.tmp" not in got, got
        p = sh(["smbclient", "//127.0.0.1/rw", "-p", str(w.smb_port), "-U",
                f"{USER}%{PASSWORD}", "-m", "SMB3", "-c", f"get run1/ckpt.pt {tmp}/back.pt"])
        assert sha256(f"{tmp}/back.pt") == sha256(src), "read back through SMB differs"
        assert not os.listdir(f"{tmp}/bfscache-rw/staging"), "staging files left behind"

    @test
    def append_truncate_and_partial_overwrite_change_the_object():
        base = make("base.bin", 5 << 20)
        w.smbclient("rw", f"put {base} edit.bin")
        patch = make("patch.bin", 4096)
        w.smbwrite("rw", "edit.bin", "write", "1000000", patch)
        tail = make("tail.bin", 12345)
        w.smbwrite("rw", "edit.bin", "append", tail)
        want = bytearray(open(base, "rb").read())
        want[1000000:1000000 + 4096] = open(patch, "rb").read()
        want += open(tail, "rb").read()
        assert w.s3_sha256("rw/edit.bin") == hashlib.sha256(want).hexdigest(), "after write+append"
        w.smbwrite("rw", "edit.bin", "truncate", "777")
        assert w.s3_sha256("rw/edit.bin") == hashlib.sha256(want[:777]).hexdigest(), "truncate"
        assert w.ls("rw").get("edit.bin") == (False, 777)

    @test
    def mkdir_rmdir_and_unlink_change_the_bucket():
        w.smbclient("rw", f"mkdir d1; put {tmp}/small.bin d1/f")
        assert {"rw/d1/", "rw/d1/f"} <= s3_keys("rw/d1/"), s3_keys("rw/d1/")
        p = w.smbclient("rw", "rmdir d1", check=False)
        assert "NT_STATUS_DIRECTORY_NOT_EMPTY" in p.stdout + p.stderr, p.stdout + p.stderr
        w.smbclient("rw", "rm d1/f; rmdir d1")
        assert not s3_keys("rw/d1/"), s3_keys("rw/d1/")
        assert "d1" not in w.ls("rw")
        # an implicit directory (no marker) is removed once empty
        w.s3tool("put", "rw/implicit/only", "/etc/hostname")
        w.smbclient("rw", "rm implicit/only; rmdir implicit")
        assert "implicit" not in w.ls("rw")

    @test
    def delete_on_close_leaves_nothing_in_s3():
        # smbclient's rm opens with FILE_DELETE_ON_CLOSE and closes.
        w.smbclient("rw", f"put {tmp}/small.bin doc.bin")
        w.smbclient("rw", "rm doc.bin")
        assert "rw/doc.bin" not in s3_keys("rw/"), s3_keys("rw/")
        assert "doc.bin" not in w.ls("rw")

    @test
    def a_directory_renames_with_its_objects():
        w.smbclient("rw", f"mkdir dA; put {tmp}/small.bin dA/x; mkdir dA/sub; "
                          f"put {tmp}/small.bin dA/sub/y; rename dA dB")
        keys = s3_keys("rw/d")
        assert {"rw/dB/x", "rw/dB/sub/y"} <= keys and not any(k.startswith("rw/dA") for k in keys), keys
        assert w.ls("rw", "dB/sub").get("y") == (False, 300001)

    @test
    def a_flush_returns_once_the_object_is_in_s3():
        src = make("flushed.bin", 3 << 20)
        url = f"smb://127.0.0.1:{w.smb_port}/rw/flushed.bin"
        p = subprocess.Popen([f"{B}/tests/smbflush", url, src], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD))
        try:
            line = p.stdout.readline().strip()
            assert line == "flushed", f"{line!r} {p.stderr.read() if p.poll() is not None else ''}"
            # The file is still open: only the flush can have put it there.
            assert w.s3_sha256("rw/flushed.bin") == sha256(src), "not in S3 after the flush"
        finally:
            p.communicate("\n", timeout=60)
        assert p.returncode == 0, p.stderr

    @test
    def other_clients_see_the_new_bytes_while_the_upload_runs():
        src = make("inflight.bin", 30 << 20)
        p = slow_upload(src, "inflight.bin", 3)
        try:
            assert w.ls("rwfault").get("inflight.bin") == (False, 30 << 20), w.ls("rwfault")
            w.smbclient("rwfault", f"get inflight.bin {tmp}/inflight.back")
            assert sha256(f"{tmp}/inflight.back") == sha256(src), "another client read other bytes"
            assert p.poll() is None, "the upload finished before the read: no overlap shown"
        finally:
            p.wait(timeout=120)
            w.fault("")
        assert p.returncode == 0
        assert w.s3_sha256("rwfault/inflight.bin") == sha256(src)

    @test
    def a_rename_by_another_client_waits_for_the_upload_and_moves_all_of_it():
        src = make("moving.bin", 30 << 20)
        p = slow_upload(src, "moving.bin", 3)
        try:
            # Another client (another smbd process) renames it mid-upload.
            # Its smbd waits for the upload (every PUT slowed 3 s), then
            # copies: past smbclient's 20 s timeout once in a full run
            # (27 s there, 7 s alone), so this client waits longer.
            sh(["smbclient", "//127.0.0.1/rwfault", "-p", str(w.smb_port), "-t", "120",
                "-U", f"{USER}%{PASSWORD}", "-m", "SMB3", "-c", "rename moving.bin moved.bin"])
        finally:
            p.wait(timeout=120)
            w.fault("")
        assert p.returncode == 0
        with open(f"{tmp}/front-control.log") as f:
            lines = [l.split()[:2] for l in f]
        done = max(i for i, (m, u) in enumerate(lines)
                   if m == "POST" and "/moving.bin?uploadId=" in u)
        copy = min(i for i, (m, u) in enumerate(lines) if "/moved.bin" in u)
        assert done < copy, "the copy started before the upload had finished"
        assert_renamed("rwfault", "moving.bin", "moved.bin", src)

    @test
    def a_file_renamed_while_open_and_dirty_is_uploaded_under_the_new_name():
        old = make("openmv.old", 1000)
        w.smbclient("rw", f"put {old} openmv.final")
        src = make("openmv.bin", 3 << 20)
        out = sh([f"{B}/tests/smbrenopen", f"smb://127.0.0.1:{w.smb_port}/rw",
                  "openmv.tmp", "openmv.final", src],
                 env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD)).stdout
        assert out.strip() == "closed", out
        assert_renamed("rw", "openmv.tmp", "openmv.final", src)

    def rename_open(share, src_name, dst_name, src, hold):
        """smbrenopen share/src_name -> dst_name with src's bytes, holding the
        file open `hold` seconds after the rename; returns once renamed."""
        p = subprocess.Popen([f"{B}/tests/smbrenopen", f"smb://127.0.0.1:{w.smb_port}/{share}",
                              src_name, dst_name, src],
                             env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD,
                                      SMBRENOPEN_HOLD=str(hold)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = p.stdout.readline()
        assert line.strip() == "renamed", line + p.communicate(timeout=60)[0]
        return p

    @test
    def kill_9_between_the_rename_of_an_open_written_file_and_its_close_loses_nothing():
        # logrotate renames an open log; smbd dies before the log is closed.
        old = make("rot.old", 5000)
        w.smbclient("rw", f"put {old} app.log")
        src = make("rot.new", 3 << 20)
        p = rename_open("rw", "app.log", "app.log.1", src, 60)
        try:
            # Until the new name is in S3, the old one keeps the last safe copy.
            assert w.s3_sha256("rw/app.log") == sha256(old), "the old name went first"
            assert "app.log.1" in w.ctl("rw", "pending").stdout
            w.restart_smbd(kill=True)
        finally:
            p.kill()
            p.communicate(timeout=60)
        w.smbclient("rw", "ls")  # the next connect replays the journal
        assert w.s3_sha256("rw/app.log.1") == sha256(src), "the renamed file was lost"
        assert "rw/app.log" not in s3_keys("rw/"), "the old name stayed"
        listing = w.ls("rw")
        assert listing.get("app.log.1") == (False, 3 << 20) and "app.log" not in listing, listing
        assert "app.log" not in w.ctl("rw", "pending").stdout

    @test
    def a_new_file_under_the_old_name_of_a_renamed_open_file_stays():
        # The old name is deleted after the renamed file's upload only if it
        # still holds the version the file started from.
        old = make("rot2.old", 5000)
        w.smbclient("rw", f"put {old} svc.log")
        src = make("rot2.new", 2 << 20)
        p = rename_open("rw", "svc.log", "svc.log.1", src, 4)
        newlog = make("rot2.next", 7000)
        w.smbclient("rw", f"put {newlog} svc.log")
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0 and out.strip() == "closed", out
        assert w.s3_sha256("rw/svc.log.1") == sha256(src)
        assert w.s3_sha256("rw/svc.log") == sha256(newlog), "the new file under the old name went"
        listing = w.ls("rw")
        assert listing.get("svc.log") == (False, 7000), listing

    @test
    def a_failed_close_then_a_reopen_for_writing_keeps_the_first_writes():
        base = make("reopen.base", 100000)
        w.smbclient("rwfault", f"put {base} reopen.bin")
        patch, tail = make("reopen.patch", 1000), make("reopen.tail", 500)
        w.fault("PUT deny -1")
        try:
            p = w.smbwrite("rwfault", "reopen.bin", "write", "0", patch, check=False)
            assert p.returncode != 0, "the first close did not fail"
            # A new connection: its recovery of the first close fails too;
            # the reopen must start from the journalled bytes, not S3's.
            p = w.smbwrite("rwfault", "reopen.bin", "write", "100000", tail, check=False)
            assert p.returncode != 0, "the second close did not fail"
        finally:
            w.fault("")
        want = open(patch, "rb").read() + open(base, "rb").read()[1000:] + \
            open(tail, "rb").read()
        for _ in range(50):
            w.smbclient("rwfault", "ls")  # recovery, once the writers' smbds are gone
            if "reopen.bin" not in w.ctl("rwfault", "pending").stdout:
                break
            time.sleep(0.2)
        assert w.s3_sha256("rwfault/reopen.bin") == hashlib.sha256(want).hexdigest(), \
            "the first close's bytes were lost"
        assert not os.listdir(f"{tmp}/bfscache-rwfault/staging"), "staging left"

    @test
    def a_writer_overwrites_a_change_made_in_s3_meanwhile_and_says_so():
        base = make("conflict.bin", 100000)
        w.smbclient("rw", f"put {base} conflict.bin")
        patch = make("conflict.patch", 10)
        writer = subprocess.Popen(
            [f"{B}/tests/smbwrite", f"smb://127.0.0.1:{w.smb_port}/rw/conflict.bin",
             "write", "0", patch],
            env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD, SMBWRITE_HOLD="3"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.5)
        other = make("conflict.other", 5000)
        w.s3tool("put", "rw/conflict.bin", other)
        out, _ = writer.communicate(timeout=60)
        assert writer.returncode == 0, out
        want = bytearray(open(base, "rb").read())
        want[0:10] = open(patch, "rb").read()
        assert w.s3_sha256("rw/conflict.bin") == hashlib.sha256(want).hexdigest(), \
            "the last writer's bytes are not in S3"
        assert re.search(r"s3://%s/rw/conflict.bin changed in S3 since it was opened for "
                         r"writing.*last writer wins" % BUCKET, w.smb_log()), "no log line"

    @test
    def a_rename_above_the_copy_threshold_is_a_multipart_copy():
        # rwfault copies objects above 6M part by part (UploadPartCopy), as
        # S3 needs above 5G.
        src = make("bigcopy.bin", 13 << 20)
        w.smbclient("rwfault", f"put {src} bigcopy.bin; rename bigcopy.bin bigcopy2.bin")
        assert w.s3_sha256("rwfault/bigcopy2.bin") == sha256(src)
        assert "rwfault/bigcopy.bin" not in s3_keys("rwfault/")
        # The front's threads may interleave log lines: find the parts anywhere.
        with open(f"{tmp}/front-control.log") as f:
            parts = set(re.findall(r"PUT /\S+/bigcopy2\.bin\?partNumber=(\d+)", f.read()))
        assert parts == {"1", "2", "3"}, f"part copies: {parts}"

    @test
    def a_directory_above_the_rename_limit_is_refused_and_left_alone():
        # rwfault: bucketfs:dir rename max = 3
        w.smbclient("rwfault", "mkdir many4; " +
                    "; ".join(f"put {tmp}/small.bin many4/f{i}" for i in range(4)))
        p = w.smbclient("rwfault", "rename many4 many5", check=False)
        assert "NT_STATUS_NOT_SUPPORTED" in p.stdout + p.stderr, p.stdout + p.stderr
        assert re.search(r"cannot rename many4: it holds more than 3 objects", w.smb_log())
        keys = s3_keys("rwfault/many")
        assert {f"rwfault/many4/f{i}" for i in range(4)} <= keys and \
            not any(k.startswith("rwfault/many5") for k in keys), keys

    def put_through_fault(name, fault):
        """Upload 20 MiB as rwfault/name while the front injects fault;
        assert S3 ends with the source's bytes; the front's log lines
        for that object."""
        src = make(name, 20 << 20)
        w.fault(fault)
        w.smbclient("rwfault", f"put {src} {name}")
        w.fault("")
        assert w.s3_sha256(f"rwfault/{name}") == sha256(src)
        with open(f"{tmp}/front-control.log") as f:
            return [l for l in f if f"/rwfault/{name}" in l]

    @test
    def an_injected_500_during_upload_is_retried():
        log = put_through_fault("r500.bin", "PUT 500 2")
        injected = sum(l.startswith("PUT ") and " fault=500 " in l for l in log)
        assert injected == 2, f"{injected} PUTs answered 500"
        print("    # 2 PUTs answered 500, upload retried")

    @test
    def a_lost_answer_to_completing_an_upload_is_not_a_failure():
        # S3 did complete it; the retry finds no upload, then the object.
        log = put_through_fault("lost.bin", "POST lost 1 uploadId=")
        posts = [l for l in log if l.startswith("POST ") and "uploadId=" in l]
        assert len(posts) == 2 and " fault=lost " in posts[0], posts
        after = log[log.index(posts[1]) + 1:]
        assert any(l.startswith("HEAD ") for l in after), "the object was not looked at"
        assert not any(re.match(r"(PUT|DELETE) ", l) for l in after), after
        assert "lost.bin" not in w.ctl("rwfault", "pending").stdout
        print("    # completion answered by nobody, retried: NoSuchUpload, then HEAD: ours")

    @test
    def a_permanent_failure_reaches_the_client_and_keeps_the_data():
        src = make("denied.bin", 3 << 20)
        w.fault("PUT deny -1")
        p = w.smbclient("rwfault", f"put {src} denied.bin", check=False)
        w.fault("")
        out = p.stdout + p.stderr
        assert "NT_STATUS_ACCESS_DENIED" in out, out
        staged = os.listdir(f"{tmp}/bfscache-rwfault/staging")
        assert any(sha256(f"{tmp}/bfscache-rwfault/staging/{n}") == sha256(src)
                   for n in staged), f"staging: {staged}"
        assert "rwfault/denied.bin" not in s3_keys("rwfault/")
        pending = w.ctl("rwfault", "pending").stdout
        assert re.search(r"upload s3://\S+/rwfault/denied\.bin .*failed: Permission denied",
                         pending), pending
        # The next smbd process on the share finishes the journalled upload.
        for _ in range(50):
            w.smbclient("rwfault", "ls")
            if "rwfault/denied.bin" in s3_keys("rwfault/"):
                break
            time.sleep(0.2)
        assert w.s3_sha256("rwfault/denied.bin") == sha256(src), "not recovered"

    def parts_sent(name):
        """Part numbers of every UploadPart for rwstream/name, in order."""
        with open(f"{tmp}/front-control.log") as f:
            return [int(m.group(1)) for m in
                    (re.match(rf"PUT /\S+/rwstream/{re.escape(name)}\?partNumber=(\d+)&", l)
                     for l in f) if m]

    def stream_write(name, src, hold, *more, pause=0, cut=None):
        """smbwrite creating rwstream/name from src, open for hold seconds."""
        url = f"smb://127.0.0.1:{w.smb_port}/rwstream/{name}"
        env = dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD,
                   SMBWRITE_HOLD=str(hold), SMBWRITE_PAUSE=str(pause))
        if cut is not None:
            env["SMBWRITE_CUT"] = str(cut)
        return subprocess.Popen([f"{B}/tests/smbwrite", url, "create", src, *more],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)

    def wait_parts(name, want, p):
        for _ in range(300):
            if sorted(set(parts_sent(name))) == want or p.poll() is not None:
                break
            time.sleep(0.1)
        assert sorted(set(parts_sent(name))) == want, parts_sent(name)

    @test
    def a_file_written_front_to_back_sends_its_parts_before_the_close():
        src = make("streamed.bin", 23 << 20)  # 4 whole parts of 5 MiB and 3 MiB
        p = stream_write("streamed.bin", src, 5)
        try:
            wait_parts("streamed.bin", [1, 2, 3, 4], p)
            assert p.poll() is None, "closed before its parts went up: nothing shown"
            pending = w.ctl("rwstream", "pending").stdout
            assert "abort" in pending and "rwstream/streamed.bin" in pending, pending
            assert "rwstream/streamed.bin" not in s3_keys("rwstream/"), "visible before the close"
        finally:
            out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert w.s3_sha256("rwstream/streamed.bin") == sha256(src)
        # The close sent only the last part: the streamed ones were kept.
        # Two parts go up at once, so the front may log 4 before 3.
        assert sorted(parts_sent("streamed.bin")) == [1, 2, 3, 4, 5], parts_sent("streamed.bin")
        assert "streamed.bin" not in w.ctl("rwstream", "pending").stdout
        assert not os.listdir(f"{tmp}/bfscache-rwstream/staging"), "staging left"

    @test
    def a_part_written_again_after_it_went_up_is_sent_again():
        src = make("rewrite.bin", 23 << 20)
        patch = make("rewrite.patch", 1 << 20)
        p = stream_write("rewrite.bin", src, 0, str(6 << 20), patch, pause=4)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        with open(src, "rb") as f:
            want = bytearray(f.read())
        with open(patch, "rb") as f:
            want[6 << 20:7 << 20] = f.read()
        with open(f"{tmp}/rewrite.want", "wb") as f:
            f.write(want)
        assert w.s3_sha256("rwstream/rewrite.bin") == sha256(f"{tmp}/rewrite.want")
        sent = parts_sent("rewrite.bin")
        assert sent.count(2) == 2 and sent.count(1) == 1, f"part 2 not resent once: {sent}"

    @test
    def a_streamed_file_cut_short_is_uploaded_at_its_new_size():
        src = make("cut.bin", 23 << 20)
        cut = (12 << 20) + 12345  # parts 1 and 2 stay, 3 and 4 went up for nothing
        p = stream_write("cut.bin", src, 0, str(23 << 20), src, pause=4, cut=cut)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        with open(src, "rb") as f:
            want = f.read(cut)
        with open(f"{tmp}/cut.want", "wb") as f:
            f.write(want)
        assert w.s3_sha256("rwstream/cut.bin") == sha256(f"{tmp}/cut.want")
        assert w.ls("rwstream").get("cut.bin") == (False, cut)
        sent = parts_sent("cut.bin")
        assert sent.count(1) == 1 and sent.count(2) == 1, f"kept parts sent again: {sent}"

    @test
    def a_streamed_file_renamed_while_open_goes_up_under_the_new_name():
        src = make("renstream.bin", 46 << 20)  # 23 MiB, rename, 23 MiB
        # The abort of the old name's upload cannot reach S3 at first.
        w.fault("DELETE reset -1 renstream.tmp?uploadId")
        try:
            out = sh([f"{B}/tests/smbrenopen", f"smb://127.0.0.1:{w.smb_port}/rwstream",
                      "renstream.tmp", "renstream.final", src],
                     env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD,
                              SMBRENOPEN_PAUSE="3")).stdout
        finally:
            w.fault("")
        assert out.strip() == "closed", out
        assert sorted(set(parts_sent("renstream.tmp"))) == [1, 2, 3, 4], \
            f"nothing streamed before the rename: {parts_sent('renstream.tmp')}"
        # The upload under the old name waits in the journal for an abort,
        # without the staging file, which was the renamed file's.
        pending = w.ctl("rwstream", "pending").stdout
        assert "abort  s3://" in pending and "renstream.tmp" in pending, pending
        for _ in range(50):  # the connection's smbd exits, then a connect recovers
            assert_renamed("rwstream", "renstream.tmp", "renstream.final", src)
            if "renstream.tmp" not in w.ctl("rwstream", "pending").stdout:
                break
            time.sleep(0.2)
        assert "renstream.tmp" not in w.ctl("rwstream", "pending").stdout
        with open(f"{tmp}/front-control.log") as f:
            assert re.search(r"DELETE /\S+/rwstream/renstream\.tmp\?uploadId=\S+ fault=- ",
                             f.read()), "the old name's upload was never aborted"
        assert not os.listdir(f"{tmp}/bfscache-rwstream/staging"), "staging left"

    @test
    def kill_9_while_a_streamed_file_is_open_aborts_its_upload():
        src = make("k9s.bin", 23 << 20)
        p = stream_write("k9s.bin", src, 60)
        try:
            wait_parts("k9s.bin", [1, 2, 3, 4], p)
            w.restart_smbd(kill=True)
        finally:
            p.kill()  # it holds the file open for a minute
            p.communicate(timeout=60)
        w.smbclient("rwstream", "ls")  # the next connect replays the journal
        with open(f"{tmp}/front-control.log") as f:
            assert re.search(r"DELETE /\S+/rwstream/k9s\.bin\?uploadId=", f.read()), \
                "the dead process's streamed upload was not aborted"
        assert "rwstream/k9s.bin" not in s3_keys("rwstream/"), "a file never closed was uploaded"
        assert "k9s.bin" not in w.ctl("rwstream", "pending").stdout
        assert not os.listdir(f"{tmp}/bfscache-rwstream/staging"), "staging left"

    @test
    def kill_9_right_after_close_loses_nothing():
        src = make("k9.bin", 30 << 20)
        w.smbclient("rw", f"put {src} k9.bin")
        w.restart_smbd(kill=True)
        assert w.s3_sha256("rw/k9.bin") == sha256(src)
        assert w.ls("rw").get("k9.bin") == (False, 30 << 20)

    @test
    def kill_9_during_an_upload_is_finished_by_the_next_smbd():
        src = make("k9b.bin", 30 << 20)
        p = slow_upload(src, "k9b.bin", 1)  # parts on their way: kill smbd
        w.restart_smbd(kill=True)
        p.wait(timeout=60)
        w.fault("")
        assert "rwfault/k9b.bin" not in s3_keys("rwfault/"), "uploaded before the kill"
        w.smbclient("rwfault", "ls")  # the next connect replays the journal
        assert w.s3_sha256("rwfault/k9b.bin") == sha256(src), "not finished after restart"
        with open(f"{tmp}/front-control.log") as f:
            assert re.search(r"DELETE /\S+/k9b\.bin\?uploadId=", f.read()), \
                "the dead process's multipart upload was not aborted"
        assert not os.listdir(f"{tmp}/bfscache-rwfault/staging"), "staging left"


if __name__ == "__main__":
    sys.exit(main())
