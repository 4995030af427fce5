"""The S3 engine (issue 18): bucketfsd and `bucketfs:close = local`.

[rwlocal] and [rwlocal2] are two shares of one cache folder behind the
fault-injecting front, so a test can slow S3 down and see the close answer
before the upload, and see one engine serve both shares; [rwsync] is the
same with `close = s3`, what the engine is measured against.  Every check
goes through smbd with a real SMB client and compares the bytes S3 ends up
with.
"""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import smbd_fixture
from world import B, TOP, USER, PASSWORD, s3_has, session, sha256

SHARES = """
[rwlocal]
  path = /bucketfs/rwlocal
{faulty}  bucketfs:prefix = rwlocal
  bucketfs:cache dir = {t}/bfscache-rwlocal
  bucketfs:close = local
  bucketfs:metadata ttl = 3
  bucketfs:metrics interval = 1
  bucketfs:upload retry = 5
[rwlocal2]
  path = /bucketfs/rwlocal2
{faulty}  bucketfs:prefix = rwlocal
  bucketfs:cache dir = {t}/bfscache-rwlocal
  bucketfs:close = local
  bucketfs:metadata ttl = 3
  bucketfs:metrics interval = 1
  bucketfs:upload retry = 5
  bucketfs:writeback limit = 20M
[rwsync]
  path = /bucketfs/rwsync
{faulty}  bucketfs:prefix = rwsync
  bucketfs:cache dir = {t}/bfscache-rwsync
  bucketfs:close = s3
[rwnoengine]
  path = /bucketfs/rwnoengine
{faulty}  bucketfs:prefix = rwnoengine
  bucketfs:cache dir = {t}/bfscache-rwnoengine
  bucketfs:close = local
  bucketfs:engine = /nonexistent/bucketfsd
[rwguard]
  path = /bucketfs/rwguard
{faulty}  bucketfs:prefix = rwguard
  bucketfs:cache dir = {t}/bfscache-rwguard
  bucketfs:close = local
  bucketfs:engine = {t}/guard/bucketfsd
[slowstart]
  path = /bucketfs/slowstart
{common}  bucketfs:bucket = {BUCKET}
  bucketfs:prefix = slowstart
  bucketfs:cache dir = {t}/bfscache-slowstart
  bucketfs:close = local
  bucketfs:upload delay = 15000
  read only = no
[fetchmem]
  path = /bucketfs/fetchmem
{common}  bucketfs:bucket = {BUCKET}
  bucketfs:prefix = coldset
  bucketfs:cache dir = {t}/bfscache-fetchmem
  bucketfs:fetch memory = 32M
[fetchmem0]
  path = /bucketfs/fetchmem0
{common}  bucketfs:bucket = {BUCKET}
  bucketfs:prefix = coldset
  bucketfs:cache dir = {t}/bfscache-fetchmem0
  bucketfs:fetch memory = 0
[loader]
  path = /bucketfs/loader
{common}  bucketfs:bucket = {BUCKET}
  bucketfs:prefix = loader
  bucketfs:cache dir = {t}/bfscache-loader
[plainloader]
  path = {t}/plainloader
  read only = yes
"""
w = smbd_fixture("engine", SHARES)


def engine_pid(w):
    with open(f"{w.dir}/bfscache-rwlocal/engine.lock") as f:
        return int(f.read().split()[0])


def engines(w):
    """Live bucketfsd processes of the rwlocal cache folder (every share
    with the default close = local has one of its own folder's)."""
    p = subprocess.run(["pgrep", "-f", f"bucketfsd -s {w.conf} rwlocal2?$"],
                       capture_output=True, text=True)
    return [int(x) for x in p.stdout.split()]


def front_log(w):
    with open(f"{w.tmp}/front-control.log") as f:
        return f.read()


def put(w, share, src, name, check=True):
    start = time.monotonic()
    p = w.smbclient(share, f'put {src} "{name}"', check=check)
    return time.monotonic() - start, p


def test_a_close_with_close_local_answers_before_s3_has_the_file_and_the_engine_uploads_it(w):
    src = w.make("local-close.bin", 24 << 20)  # 2 parts of 16 MiB
    w.fault("PUT delay:3 -1")  # every PUT to S3 takes 3 s more
    try:
        took, _ = put(w, "rwlocal", src, "ckpt-a.bin")
        # The close came back before S3 could have the object.
        assert "rwlocal/ckpt-a.bin" not in w.s3_keys("rwlocal/"), "uploaded by the close"
        pending = w.ctl("rwlocal", "pending").stdout
        pid = engine_pid(w)
        assert "rwlocal/ckpt-a.bin" in pending and f"pid {pid}" in pending, pending
        # Readers see the new bytes at once, from the engine's staging file.
        got = f"{w.tmp}/local-close.back"
        w.smbclient("rwlocal2", f"get ckpt-a.bin {got}")
        assert sha256(got) == sha256(src), "a reader got other bytes"
    finally:
        w.fault("PUT delay:0 0")
    assert s3_has(w, "rwlocal/ckpt-a.bin", sha256(src)), "the engine never uploaded it"
    print(f"    # close (smbclient put of 24 MiB, PUTs slowed 3 s) took {took:.2f} s; "
          f"engine pid {pid}")
    for _ in range(50):
        if "ckpt-a.bin" not in w.ctl("rwlocal", "pending").stdout:
            break
        time.sleep(0.1)
    assert "ckpt-a.bin" not in w.ctl("rwlocal", "pending").stdout
    assert not [f for f in os.listdir(f"{w.dir}/bfscache-rwlocal/staging")], "staging left"


def test_the_folders_stats_count_the_engines_uploads(w):
    # bucketfs-ctl stats and the metrics file are the folder's: with
    # close = local the bytes go up from the engine, which adds its
    # counters (upload and fetch clients) every metrics interval.
    sent = lambda: json.loads(w.ctl("rwlocal", "stats", "--json").stdout)["s3_bytes_sent"]
    before = sent()
    src = w.make("counted.bin", 6 << 20)
    put(w, "rwlocal", src, "counted.bin")
    deadline = time.time() + 30
    while sent() < before + (6 << 20) and time.time() < deadline:
        time.sleep(0.3)
    assert sent() >= before + (6 << 20), (before, sent())
    assert s3_has(w, "rwlocal/counted.bin", sha256(src))
    print(f"    # bytes sent to S3: {before} -> {sent()}")


def test_one_engine_serves_every_share_and_smbd_process_of_a_cache_folder(w):
    src = w.make("one-engine.bin", 100_000)
    procs = [subprocess.Popen(["smbclient", f"//127.0.0.1/{share}", "-p", str(w.smb_port),
                               "-U", f"{USER}%{PASSWORD}", "-m", "SMB3",
                               "-c", f"put {src} one-{i}.bin"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i, share in enumerate(["rwlocal", "rwlocal2"] * 3)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    assert len(engines(w)) == 1, engines(w)
    for i in range(6):
        assert s3_has(w, f"rwlocal/one-{i}.bin", sha256(src))
    out = w.ctl("rwlocal2", "engine").stdout
    m = re.search(r"engine pid (\d+): (\d+) uploads waiting, (\d+) done", out)
    assert m and int(m.group(1)) == engines(w)[0] and int(m.group(3)) >= 6, out


def rss_fetch(pid):
    """The memory a process's fetch buffers can be in: anonymous pages,
    and shared ones (the engine's fetch arena is a memfd)."""
    total = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssShmem:")):
                total += int(line.split()[1]) * 1024
    return total


def sixteen_cold_readers(w, share):
    """16 clients read 16 cold objects at once through share's engine;
    the engine's anonymous and shared memory (from /proc), most above
    its idle."""
    w.smbclient(share, "ls")  # starts the engine
    with open(f"{w.dir}/bfscache-{share}/engine.lock") as f:
        pid = int(f.read().split()[0])
    idle = rss_fetch(pid)
    procs_ = [subprocess.Popen(
        ["smbclient", f"//127.0.0.1/{share}", "-p", str(w.smb_port), "-U",
         f"{USER}%{PASSWORD}", "-m", "SMB3", "-c", f"get c{i:02d}.bin /dev/null"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(16)]
    peak = idle
    while any(p.poll() is None for p in procs_):
        peak = max(peak, rss_fetch(pid))
        time.sleep(0.01)
    for p in procs_:
        assert p.returncode == 0, p.stdout.read()
    return peak - idle


def test_sixteen_cold_readers_keep_the_engine_within_its_fetch_memory(w):
    # 16 objects of 24 MiB, cold for both shares (own cache folders).
    src = w.make("coldset.bin", 24 << 20)
    for i in range(16):
        w.s3tool("put", f"coldset/c{i:02d}.bin", src)
    bounded = sixteen_cold_readers(w, "fetchmem")
    unbounded = sixteen_cold_readers(w, "fetchmem0")
    print(f"    # engine memory above idle, 16 cold readers: {bounded >> 20} MiB with "
          f"'fetch memory = 32M', {unbounded >> 20} MiB with none")
    # The budget is the fetch buffers; curl, TLS-free HTTP and talloc
    # take a few MiB besides (8 MiB of slack), and one buffer (8 MiB
    # here) may pass it while no GET is in flight.
    assert bounded <= (32 + 8 + 8) << 20, f"{bounded >> 20} MiB"


def loader(w, url, n):
    """bench/loader: 32 samples in flight on one SMB connection."""
    p = subprocess.run([f"{B}/bench/loader", url, "32", str(n)], capture_output=True,
                       text=True, env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD),
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    kv = dict(f.split("=", 1) for f in p.stdout.split())
    assert int(kv["files"]) == n and int(kv["errors"]) == 0, p.stdout
    return float(kv["files_per_s"]), float(kv["p50_ms"]), float(kv["p99_ms"])


def test_a_dataloader_with_32_samples_in_flight_on_one_connection_reads_every_file(w):
    # 1,000 files of 100 KiB: in S3 for [loader], on local disk for
    # plain Samba ([plainloader]); the raw baseline is 32 parallel GETs.
    n, size = 1000, 100 << 10
    w.s3tool("putmany", "loader/small/f", str(n), str(size))
    local = f"{w.dir}/plainloader/small"
    os.makedirs(local, exist_ok=True)
    body = b"x" * size  # putmany's bytes
    for i in range(n):
        with open(f"{local}/f{i:05d}", "wb") as f:
            f.write(body)
    base = f"smb://127.0.0.1:{w.smb_port}"
    # The raw baseline first: s3rver (node) is slower until its
    # compiler has warmed up, and the first reader would pay for it.
    p = w.s3tool("getmany", "loader/small/f", str(n), "32")
    raw = float(dict(f.split("=", 1) for f in p.stdout.split())["files_per_s"])
    # Put in S3 just now: another test may have listed the root already
    # (the lent read's), which would hide small/ for the share's TTL.
    w.ctl("loader", "invalidate", "")
    w.smbclient("loader", "cd small; ls")  # a Dataset lists its folder first
    cold = loader(w, f"{base}/loader/small", n)
    hot = loader(w, f"{base}/loader/small", n)
    plain = loader(w, f"{base}/plainloader/small", n)
    print(f"    # files/s (p50/p99 ms): bucketfs cold {cold[0]:.0f} ({cold[1]:.1f}/{cold[2]:.1f}), "
          f"hot {hot[0]:.0f} ({hot[1]:.1f}/{hot[2]:.1f}), plain Samba {plain[0]:.0f}, "
          f"raw S3 32 GETs {raw:.0f}; hot/plain {hot[0] / plain[0]:.2f}, "
          f"cold/raw {cold[0] / raw:.2f}")


def test_an_smb2_flush_answers_once_the_engine_has_the_object_in_s3(w):
    src = w.make("flushed-local.bin", 9 << 20)
    p, ask = session(w, "rwlocal")
    w.fault("PUT delay:2 -1")
    try:
        ask(f"write flushed.bin {src}")
        took = float(ask("flush flushed.bin"))
        # Durable when the flush answered: S3 has it now, not later.
        assert w.s3_sha256("rwlocal/flushed.bin") == sha256(src)
        assert took >= 2, f"the flush answered in {took:.2f} s: before its upload"
        closed = float(ask("close flushed.bin"))
    finally:
        w.fault("PUT delay:0 0")
        p.stdin.close()
        p.wait(timeout=60)
    print(f"    # flush {took:.2f} s (PUTs slowed 2 s), close after it {closed:.3f} s")
    assert "flushed.bin" not in w.ctl("rwlocal", "pending").stdout


def pipeline(w, share, path, src, cached, first="flush"):
    p = subprocess.run(["/usr/bin/python3",
                        os.path.join(TOP, "tests/integration/smbpipeline.py"),
                        str(w.smb_port), share, USER, PASSWORD, path, src, cached, first],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


def test_on_one_connection_an_echo_and_a_read_are_answered_while_a_flush_waits_for_s3(w):
    small = w.make("pipe-cached.bin", 100_000)
    w.smbclient("rwlocal", f"put {small} pipe-cached.bin")
    w.smbclient("rwsync", f"put {small} pipe-cached.bin")
    src = w.make("pipe-big.bin", 32 << 20)
    w.fault("PUT delay:3 -1")
    try:
        local = pipeline(w, "rwlocal", "pipe-big.bin", src, "pipe-cached.bin")
        before = len(front_log(w))
        synchronous = pipeline(w, "rwsync", "pipe-big.bin", src, "pipe-cached.bin")
        uploads = re.findall(r"^(?:POST /\S+?/rwsync/pipe-big\.bin\?uploads=|"
                             r"PUT /\S+?/rwsync/pipe-big\.bin )", front_log(w)[before:], re.M)
    finally:
        w.fault("PUT delay:0 0")
    print(f"    # close = local: answers in order {local['order']}, "
          f"seconds {local['seconds']}, close after {local['close_seconds']} s")
    print(f"    # close = s3 (the flush uploads on smbd's loop): order "
          f"{synchronous['order']}, seconds {synchronous['seconds']}, "
          f"close after {synchronous['close_seconds']} s")
    for run, share in ((local, "rwlocal"), (synchronous, "rwsync")):
        assert set(run["status"].values()) == {"0x00000000"}, run
        assert run["read_bytes"] == 65536, run
        # The echo and the read did not wait for S3; the flush did.
        assert run["order"][-1] == "flush", run
        assert run["seconds"]["flush"] >= 3, run
        assert w.s3_sha256(f"{share}/pipe-big.bin") == sha256(src)
    # Nothing written since the flush: the close with close = s3 has
    # nothing left to upload.  One upload, the flush's.
    assert len(uploads) == 1, uploads


def test_on_one_connection_an_echo_and_a_read_are_answered_while_a_close_with_close_s3_waits_for_s3(w):
    small = w.make("pipe-cached.bin", 100_000)
    w.smbclient("rwsync", f"put {small} pipe-cached.bin")
    src = w.make("pipe-closed.bin", 32 << 20)
    w.fault("PUT delay:3 -1")
    try:
        run = pipeline(w, "rwsync", "pipe-closed.bin", src, "pipe-cached.bin", "close")
    finally:
        w.fault("PUT delay:0 0")
    print(f"    # close = s3, the CLOSE first: answers in order {run['order']}, "
          f"seconds {run['seconds']}")
    assert set(run["status"].values()) == {"0x00000000"}, run
    assert run["read_bytes"] == 65536, run
    # smbd's close waited for the upload off its loop (our hold on the
    # file); the echo and the read were answered meanwhile.
    assert run["order"][-1] == "close", run
    assert run["seconds"]["close"] >= 3, run
    # Durable when the close answered.
    assert w.s3_sha256("rwsync/pipe-closed.bin") == sha256(src)
    assert "pipe-closed.bin" not in w.ctl("rwsync", "pending").stdout


def test_on_one_connection_an_echo_and_a_read_are_answered_while_a_write_fetches_the_files_old_bytes(w):
    # A write into an existing file (read-modify-write) needs the object's
    # bytes in its staging file first.  Fetched on smbd's loop, they made
    # every other request of the connection wait for S3's GETs.
    small = w.make("rmw-cached.bin", 100_000)
    w.smbclient("rwlocal", f"put {small} rmw-cached.bin")
    old = w.make("rmw-old.bin", (8 << 20) + 3)
    # In S3 only, in a folder not listed yet: not cached, and not hidden
    # by a listing of before.
    w.s3tool("put", "rwlocal/rmw/rmw-big.bin", old)
    w.ctl("rwlocal", "invalidate", "")
    patch = w.make("rmw-patch.bin", 4096)
    w.fault("GET delay:3 -1 rmw-big.bin")
    try:
        run = pipeline(w, "rwlocal", "rmw/rmw-big.bin", patch, "rmw-cached.bin", "rmw")
    finally:
        w.fault("GET delay:0 0")
    print(f"    # a write that fetches first: answers in order {run['order']}, "
          f"seconds {run['seconds']}")
    assert set(run["status"].values()) == {"0x00000000"}, run
    assert run["read_bytes"] == 65536, run
    # The echo and the read did not wait for the GETs; the write did.
    assert run["order"][-1] == "rmw", run
    assert run["seconds"]["rmw"] >= 3, run
    want = f"{w.tmp}/rmw-want.bin"
    with open(want, "wb") as out, open(patch, "rb") as p, open(old, "rb") as o:
        out.write(p.read())
        o.seek(4096)
        out.write(o.read())
    assert s3_has(w, "rwlocal/rmw/rmw-big.bin", sha256(want))


@pytest.mark.parametrize("how", ["tdis", "logoff"])
def test_a_tree_disconnect_or_a_logoff_with_a_written_file_open_uploads_it_and_smbd_lives_on(w, how):
    # smbd closes the file itself then, and would panic on a hold left on
    # it (assert_no_pending_aio): the holds go the turn before.
    src = w.make(f"leave-{how}.bin", (3 << 20) + 5)
    p = subprocess.run(["/usr/bin/python3",
                        os.path.join(TOP, "tests/integration/smbleave.py"),
                        str(w.smb_port), "rwsync", USER, PASSWORD, f"leave-{how}.bin",
                        src, how], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    run = json.loads(p.stdout)
    print(f"    # {how} with the file open took {run['seconds']} s")
    assert (run["sha256"], run["size"]) == (sha256(src), os.path.getsize(src)), run
    assert w.s3_sha256(f"rwsync/leave-{how}.bin") == sha256(src)
    log = w.smb_log()
    assert "PANIC" not in log and "outstanding aio" not in log, log[-3000:]
    assert w.smbd.poll() is None, "smbd exited"


def test_a_share_closed_by_the_admin_with_a_written_file_open_uploads_it_and_smbd_lives_on(w):
    # `smbcontrol smbd close-share`: smbd disconnects the tree itself
    # (conn_force_tdis), after waiting for the file's aio requests: a hold
    # left on it would make it wait for ever, the file never closed.
    src = w.make("leave-closed.bin", (2 << 20) + 7)
    p = subprocess.Popen(["/usr/bin/python3",
                          os.path.join(TOP, "tests/integration/smbleave.py"),
                          str(w.smb_port), "rwsync", USER, PASSWORD, "leave-closed.bin",
                          src, "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "written", p.stderr.read()[-2000:]
        subprocess.run(["smbcontrol", "-s", w.conf, "smbd", "close-share", "rwsync"],
                       check=True)
        assert s3_has(w, "rwsync/leave-closed.bin", sha256(src))
        out, err = p.communicate("\n", timeout=60)
        assert "echo ok" in out, err[-2000:]
    finally:
        if p.poll() is None:
            p.kill()
    log = w.smb_log()
    assert "PANIC" not in log and "outstanding aio" not in log, log[-3000:]
    assert w.smbd.poll() is None, "smbd exited"


def s3_gone(w, key, timeout=60):
    """Wait (not stuck: a generous bound) until S3 no longer lists key."""
    end = time.monotonic() + timeout
    while key in w.s3_keys(os.path.dirname(key) + "/"):
        assert time.monotonic() < end, f"{key} still in S3"
        time.sleep(0.3)


def test_a_delete_with_close_local_answers_before_s3_and_the_engine_deletes_it(w):
    a = w.make("del-a.bin", 100_000)
    b1, b2 = w.make("del-b1.bin", 5000), w.make("del-b2.bin", 7000)
    w.smbclient("rwlocal", f"put {a} del-a.bin; put {b1} del-b.bin; mkdir deldir; "
                           f"put {a} deldir/x.bin")
    for key in ("del-a.bin", "del-b.bin", "deldir/x.bin"):
        assert s3_has(w, f"rwlocal/{key}", sha256(a if key != "del-b.bin" else b1))
    w.fault("DELETE delay:3 -1")  # every DELETE to S3 takes 3 s more
    try:
        start = time.monotonic()
        w.smbclient("rwlocal", "rm del-a.bin")
        took = time.monotonic() - start
        # Answered before S3 deleted it: the engine does.
        assert "rwlocal/del-a.bin" in w.s3_keys("rwlocal/"), "the rm waited for S3"
        # A folder emptied with deletes still pending goes too (rm -r),
        # and stays out of its parent's listing while S3 lists it.
        w.smbclient("rwlocal", "rm deldir/x.bin; rmdir deldir")
        # Deleted, then written again at once: the new file stays.
        w.smbclient("rwlocal", f"rm del-b.bin; put {b2} del-b.bin")
        # Gone from the share now, and a listing from S3 (the object
        # still there) does not bring it back.
        w.ctl("rwlocal", "invalidate", "")
        listing = w.smbclient("rwlocal", "ls").stdout
        assert "del-a.bin" not in listing and "deldir" not in listing, listing
        assert "rwlocal/del-a.bin" in w.s3_keys("rwlocal/"), "deleted in S3 already"
    finally:
        w.fault("DELETE delay:0 0")
    print(f"    # rm with every DELETE slowed 3 s answered in {took:.2f} s")
    for key in ("del-a.bin", "deldir/x.bin", "deldir/"):
        s3_gone(w, f"rwlocal/{key}")
    assert s3_has(w, "rwlocal/del-b.bin", sha256(b2))
    w.ctl("rwlocal", "invalidate", "")
    listing = w.smbclient("rwlocal", "ls").stdout
    assert "del-a.bin" not in listing and "deldir" not in listing and "del-b.bin" in listing
    assert "del-" not in w.ctl("rwlocal", "pending").stdout


def test_an_mkdir_with_close_local_answers_before_s3_and_the_engine_puts_its_marker(w):
    w.fault("PUT delay:4 -1 mk-")  # every PUT of these names 4 s slower
    try:
        w.smbclient("rwlocal", "mkdir mk-a; mkdir mk-b; rmdir mk-b")
        # Answered before S3 had the marker: the engine puts it.
        keys = w.s3_keys("rwlocal/")
        assert "rwlocal/mk-a/" not in keys, "the mkdir waited for S3"
        # There at once, and usable: a file goes in, a listing from S3
        # (which has no marker yet) does not take the folder away.
        src = w.make("mk-file.bin", 10_000)
        w.smbclient("rwlocal", f"put {src} mk-a/f.bin")
        w.ctl("rwlocal", "invalidate", "")
        listing = w.ls("rwlocal")
        assert listing.get("mk-a", (None,))[0] is True, listing
        assert "mk-b" not in listing, listing
    finally:
        w.fault("PUT delay:0 0")
    assert s3_has(w, "rwlocal/mk-a/", sha256(os.devnull))
    assert s3_has(w, "rwlocal/mk-a/f.bin", sha256(src))
    end = time.monotonic() + 60
    while "mk-" in w.ctl("rwlocal", "pending").stdout:
        assert time.monotonic() < end, "the engine never finished"
        time.sleep(0.3)
    assert "rwlocal/mk-b/" not in w.s3_keys("rwlocal/")
    w.ctl("rwlocal", "invalidate", "")
    assert w.ls("rwlocal", "mk-a").get("f.bin") == (False, 10_000)


def test_a_rename_s3_refuses_to_copy_for_good_shows_the_file_under_its_old_name_again(w):
    # The client was told the rename was done (the engine copies later);
    # S3 answers the copy AccessDenied (a policy, a KMS key): the engine
    # gives it up, the file shows under its old name again, where S3 still
    # has it, and the old name is not deleted.
    src = w.make("rnd.bin", 10_000)
    w.s3tool("put", "rwlocal/rnd-a.bin", src)
    w.ctl("rwlocal", "invalidate", "")
    assert "rnd-a.bin" in w.ls("rwlocal")
    w.fault("PUT deny -1 rwlocal/rnd-b.bin")
    try:
        w.smbclient("rwlocal", "rename rnd-a.bin rnd-b.bin")
        end = time.monotonic() + 60  # not stuck
        while time.monotonic() < end:
            w.ctl("rwlocal", "invalidate", "")
            if "rnd-a.bin" in w.ls("rwlocal"):
                break
            time.sleep(0.5)
        listing = w.ls("rwlocal")
        assert listing.get("rnd-a.bin") == (False, 10_000), listing
        assert "rnd-b.bin" not in listing, listing
    finally:
        w.fault("")
    wait_engine_done(w, "rnd-")
    assert w.s3_sha256("rwlocal/rnd-a.bin") == sha256(src)
    assert "rwlocal/rnd-b.bin" not in w.s3_keys("rwlocal/")
    log = open(f"{w.dir}/bfscache-rwlocal/engine.log").read()
    assert "S3 refuses: AccessDenied" in log and "rnd-a.bin" in log, log[-2000:]


def test_a_rename_whose_source_another_client_replaced_is_given_up_and_their_file_stays(w):
    # The engine copies the version the client renamed, and only that
    # one (x-amz-copy-source-if-match): c replaced, and d removed, in S3
    # behind the gateway's back after it listed them.  Neither copy is
    # made, nothing of the other client's is deleted, and the names show
    # what S3 has.
    old = w.make("rpl-old.bin", 4000)
    other = w.make("rpl-other.bin", 3000)
    w.s3tool("put", "rwlocal/rpl-c.bin", old)
    w.s3tool("put", "rwlocal/rpl-d.bin", old)
    w.ctl("rwlocal", "invalidate", "")
    w.ls("rwlocal")
    w.s3tool("put", "rwlocal/rpl-c.bin", other)
    w.s3tool("rm", "rwlocal/rpl-d.bin")
    w.smbclient("rwlocal", "rename rpl-c.bin rpl-c2.bin; rename rpl-d.bin rpl-d2.bin")
    wait_engine_done(w, "rpl-")
    keys = {k for k in w.s3_keys("rwlocal/") if "rpl-" in k}
    assert keys == {"rwlocal/rpl-c.bin"}, keys
    assert w.s3_sha256("rwlocal/rpl-c.bin") == sha256(other), "another client's file was changed"
    w.ctl("rwlocal", "invalidate", "")
    listing = {k: v for k, v in w.ls("rwlocal").items() if k.startswith("rpl-")}
    assert listing == {"rpl-c.bin": (False, 3000)}, listing
    log = open(f"{w.dir}/bfscache-rwlocal/engine.log").read()
    assert "replaced in S3 by another client" in log and "S3 no longer has it" in log, log[-2000:]


def test_a_rename_over_a_file_whose_upload_runs_ends_with_the_renamed_file_in_s3(w):
    # write tmp; rename over final, twice.  The first final's upload (its
    # PUT held 4 s at the front) still runs when the second tmp, in S3
    # by then, is renamed over it: a copy to final.  That copy raced the
    # upload: the upload landed after it, then was taken back out as one
    # whose record had gone, and S3 was left with no final at all (the
    # 16-client soak lost an acknowledged checkpoint so, CI).
    first = w.make("rvu-first.bin", 200_000)
    second = w.make("rvu-second.bin", 3000)
    w.fault("PUT delay:4 1 rwlocal/rvu-final.bin")
    try:
        w.smbclient("rwlocal", f"put {first} rvu-tmp.bin; rename rvu-tmp.bin rvu-final.bin -f")
        end = time.monotonic() + 30  # not stuck
        held = re.compile(r"^PUT /\S+/rwlocal/rvu-final\.bin\S* fault=delay", re.M)
        while not held.search(front_log(w)):
            assert time.monotonic() < end, "the engine never sent the first upload"
            time.sleep(0.1)
        since = time.monotonic()
        w.smbclient("rwlocal", f"put {second} rvu-tmp.bin")
        assert s3_has(w, "rwlocal/rvu-tmp.bin", sha256(second))
        assert time.monotonic() - since < 4, "too slow to rename while the upload runs"
        w.smbclient("rwlocal", "rename rvu-tmp.bin rvu-final.bin -f")
    finally:
        w.fault("")
    time.sleep(max(0.0, since + 6 - time.monotonic()))  # the held PUT has landed
    wait_engine_done(w, "rvu-")
    keys = {k for k in w.s3_keys("rwlocal/") if "rvu-" in k}
    assert keys == {"rwlocal/rvu-final.bin"}, keys
    assert w.s3_sha256("rwlocal/rvu-final.bin") == sha256(second), "not the file renamed last"
    got = f"{w.tmp}/rvu-back"
    w.smbclient("rwlocal2", f"get rvu-final.bin {got}")
    assert sha256(got) == sha256(second)


def test_on_one_connection_a_checkpoint_renamed_over_its_final_name_200_times_reads_back_each_version(w):
    # One box's checkpoint loop on its one connection: write tmp, close,
    # rename over final, read final back, 200 times, the engine uploading
    # meanwhile.  Every read-back must be the version just written.  The
    # engine racing the renames left final pending with neither an ETag
    # nor a journal record: reads went to S3 without If-Match and were
    # cached as if versioned, and a soak read a checkpoint back with an
    # older version's byte.  The front's log says how many reads of final
    # went to S3 without If-Match (none should: S3 may not yet have the
    # version just written).
    before = len(front_log(w))
    p = subprocess.run(["/usr/bin/python3",
                        os.path.join(TOP, "tests/integration/smbckpt.py"),
                        str(w.smb_port), "rwlocal", USER, PASSWORD, "ocp-ckpt", "200"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    print(f"    # 200 cycles on one connection: median {r['median_s'] * 1000:.1f} ms, "
          f"worst {r['max_s'] * 1000:.1f} ms")
    assert not r["wrong"], f"read back another version: {r['wrong'][:5]}"
    wait_engine_done(w, "ocp-")
    assert w.s3_sha256("rwlocal/ocp-ckpt") == r["last_sha256"], "S3 ends without the last version"
    keys = {k for k in w.s3_keys("rwlocal/") if "ocp-" in k}
    assert keys == {"rwlocal/ocp-ckpt"}, keys
    unversioned = [l for l in front_log(w)[before:].splitlines()
                   if re.match(r"GET /\S+/rwlocal/ocp-ckpt fault=\S+ if-match=None", l)]
    assert not unversioned, f"read from S3 without If-Match: {unversioned[:3]}"


def test_two_files_swapped_through_a_temporary_name_while_the_copies_wait_end_swapped(w):
    # mv a t; mv b a; mv t b, the engine's copies held: the third rename
    # cannot copy from a (the second's copy overwrites it) and waits for
    # S3 instead; S3 ends with the two files swapped and no t.
    one = w.make("swp-one.bin", 40_000)
    two = w.make("swp-two.bin", 50_000)
    w.s3tool("put", "rwlocal/swp-a.bin", one)
    w.s3tool("put", "rwlocal/swp-b.bin", two)
    w.ctl("rwlocal", "invalidate", "")
    w.ls("rwlocal")
    w.fault("PUT delay:2 -1 rwlocal/swp-")
    try:
        w.smbclient("rwlocal", "rename swp-a.bin swp-t.bin; rename swp-b.bin swp-a.bin; "
                    "rename swp-t.bin swp-b.bin")
        listing = w.ls("rwlocal")
        assert listing.get("swp-a.bin") == (False, 50_000), listing
        assert listing.get("swp-b.bin") == (False, 40_000), listing
        assert "swp-t.bin" not in listing, listing
    finally:
        w.fault("")
    wait_engine_done(w, "swp-")
    keys = {k for k in w.s3_keys("rwlocal/") if "swp-" in k}
    assert keys == {"rwlocal/swp-a.bin", "rwlocal/swp-b.bin"}, keys
    assert w.s3_sha256("rwlocal/swp-a.bin") == sha256(two)
    assert w.s3_sha256("rwlocal/swp-b.bin") == sha256(one)
    for name, want in (("swp-a.bin", two), ("swp-b.bin", one)):
        got = f"{w.tmp}/{name}.back"
        w.smbclient("rwlocal2", f"get {name} {got}")
        assert sha256(got) == sha256(want), name


def test_an_rmdir_with_close_local_goes_by_the_listing_and_asks_s3_nothing(w):
    # The folder is listed (the client just emptied it): rmdir decides
    # by the index, on smbd's loop, without a LIST of the folder; the
    # engine deletes the marker.  A folder holding a file still refuses.
    src = w.make("rmq.bin", 1000)
    w.smbclient("rwlocal", f"mkdir rmq; mkdir rmq2; put {src} rmq/f.bin; put {src} rmq2/f.bin")
    assert s3_has(w, "rwlocal/rmq/f.bin", sha256(src))
    w.smbclient("rwlocal", "rm rmq/f.bin; ls rmq/*; ls rmq2/*")
    since = len(front_log(w))
    w.smbclient("rwlocal", "rmdir rmq")
    p = w.smbclient("rwlocal", "rmdir rmq2", check=False)
    assert "NT_STATUS_DIRECTORY_NOT_EMPTY" in p.stdout + p.stderr, p.stdout + p.stderr
    lists = [l for l in front_log(w)[since:].splitlines()
             if l.startswith("GET ") and "prefix=rwlocal%2Frmq" in l]
    assert not lists, f"rmdir asked S3: {lists}"
    assert "rmq" not in w.ls("rwlocal")
    wait_engine_done(w, "rmq")
    assert not w.s3_keys("rwlocal/rmq/"), w.s3_keys("rwlocal/rmq/")
    assert w.s3_keys("rwlocal/rmq2/") == {"rwlocal/rmq2/", "rwlocal/rmq2/f.bin"}


def test_a_delete_s3_refuses_for_good_shows_the_file_again(w):
    # The client was told the delete was done (the engine's, later); S3
    # answers AccessDenied (a policy, an object lock): the engine gives it
    # up and the file shows again, as S3 still has it, with a log line.
    src = w.make("refused.bin", 10_000)
    w.smbclient("rwlocal", f"put {src} refused.bin")
    assert s3_has(w, "rwlocal/refused.bin", sha256(src))
    w.fault("DELETE deny -1 rwlocal/refused.bin")
    try:
        w.smbclient("rwlocal", "rm refused.bin")
        end = time.monotonic() + 60  # not stuck
        while time.monotonic() < end:
            w.ctl("rwlocal", "invalidate", "")
            if " refused.bin " in w.smbclient("rwlocal", "ls").stdout:
                break
            time.sleep(0.5)
        assert " refused.bin " in w.smbclient("rwlocal", "ls").stdout, "still hidden"
    finally:
        w.fault("")
    assert w.s3_sha256("rwlocal/refused.bin") == sha256(src)
    assert "refused.bin" not in w.ctl("rwlocal", "pending").stdout
    log = open(f"{w.dir}/bfscache-rwlocal/engine.log").read()
    assert "S3 refuses to delete" in log and "refused.bin" in log, log[-2000:]


def get_bytes(w, key):
    """Bytes GET from S3 for key, by the front's log (ranges asked)."""
    total = 0
    for line in front_log(w).splitlines():
        m = re.match(r"GET /\S+?/" + re.escape(key) + r" .*range=bytes=(\d+)-(\d+)", line)
        if m:
            total += int(m.group(2)) - int(m.group(1)) + 1
    return total


def cold_readers(w, share, key, name, n):
    procs = [subprocess.Popen(["smbclient", f"//127.0.0.1/{share}", "-p", str(w.smb_port),
                               "-U", f"{USER}%{PASSWORD}", "-m", "SMB3",
                               "-c", f"get {name} {w.tmp}/cold-{share}-{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(n)]
    for p in procs:
        out = p.communicate(timeout=300)[0]
        assert p.returncode == 0, out[-2000:]
    return [sha256(f"{w.tmp}/cold-{share}-{i}") for i in range(n)]


def test_four_clients_cold_reading_one_object_pull_it_from_s3_about_once(w):
    # The size: a 256 MiB object, large enough that its first
    # reader's smbd claims it (lib/bfs_claim.h) and gives it back.
    size = 256 << 20
    src = w.make("cold4.bin", size)
    w.s3tool("put", "rwlocal/cold4/data.bin", src)
    w.s3tool("put", "rwsync/cold4/data.bin", src)
    # Put in S3 behind the shares' backs: their root listings, younger
    # than the TTL, do not show cold4/ yet.
    w.ctl("rwlocal", "invalidate", "")
    w.ctl("rwsync", "invalidate", "")
    digests = cold_readers(w, "rwlocal", "rwlocal/cold4/data.bin", "cold4/data.bin", 4)
    assert set(digests) == {sha256(src)}, "a reader got other bytes"
    with_engine = get_bytes(w, "rwlocal/cold4/data.bin")
    digests = cold_readers(w, "rwsync", "rwsync/cold4/data.bin", "cold4/data.bin", 4)
    assert set(digests) == {sha256(src)}
    without = get_bytes(w, "rwsync/cold4/data.bin")
    print(f"    # 4 clients, one cold {size >> 20} MiB object: {with_engine / size:.2f}x its size "
          f"from S3 through the engine, {without / size:.2f}x with each smbd fetching")
    assert with_engine <= 1.25 * size, f"{with_engine} bytes fetched for {size}"
    state = w.ctl("rwlocal", "engine").stdout
    assert re.search(r"fetched", state), state


def test_a_large_cold_object_is_fetched_by_its_readers_smbd_and_handed_back_when_others_come(w):
    # One cold reader of a large object fetches it in its own smbd (a
    # claim: no second process's copy of each byte).  A second reader
    # makes the engine ask for it back: the first stops reading ahead,
    # gives it back once what it fetched is cached, and both go on
    # through the engine, nothing fetched twice.  A claimer that goes
    # away (its client killed) gives it back by going.
    size = 96 << 20
    src = w.make("claim.bin", size)
    for name in ("claim/a.bin", "claim/b.bin"):
        w.s3tool("put", f"rwlocal/{name}", src)
    w.ctl("rwlocal", "invalidate", "")
    log = f"{w.dir}/bfscache-rwlocal/engine.log"
    start = len(open(log).read()) if os.path.exists(log) else 0

    def reader(name, i):
        return subprocess.Popen(
            ["smbclient", "//127.0.0.1/rwlocal", "-p", str(w.smb_port), "-U",
             f"{USER}%{PASSWORD}", "-m", "SMB3", "-c",
             f"get {name} {w.tmp}/claim-{i}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def engine_says(text, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(log) and text in open(log).read()[start:]:
                return True
            time.sleep(0.05)
        return False

    w.fault("GET delay:0.4 -1 rwlocal/claim/")  # S3 slow: readers overlap
    try:
        first = reader("claim/a.bin", 0)
        assert engine_says("rwlocal/claim/a.bin is claimed"), open(log).read()[start:]
        second = reader("claim/a.bin", 1)
        assert engine_says("another reader wants rwlocal/claim/a.bin")
        for p in (first, second):
            out = p.communicate(timeout=300)[0]
            assert p.returncode == 0, out[-2000:]
        assert engine_says("claim of rwlocal/claim/a.bin ended")

        # The claimer's client killed while the other reader waits.
        first = reader("claim/b.bin", 2)
        assert engine_says("rwlocal/claim/b.bin is claimed")
        second = reader("claim/b.bin", 3)
        assert engine_says("another reader wants rwlocal/claim/b.bin")
        first.kill()
        first.wait(timeout=30)
        out = second.communicate(timeout=300)[0]
        assert second.returncode == 0, out[-2000:]
    finally:
        w.fault("GET delay:0 0")
    for i in (0, 1, 3):
        assert sha256(f"{w.tmp}/claim-{i}") == sha256(src), f"reader {i}"
    a = get_bytes(w, "rwlocal/claim/a.bin")
    b = get_bytes(w, "rwlocal/claim/b.bin")
    print(f"    # 96 MiB, claimed then shared: {a / size:.2f}x its size from S3; "
          f"claimer killed: {b / size:.2f}x")
    assert a <= 1.1 * size, f"{a} bytes fetched for {size}"
    # What the killed smbd had in flight is lost with it and fetched
    # again (up to its readahead): the point is that the others go on.
    assert b <= 2 * size, f"{b} bytes fetched for {size}"


def engine_lent(w, share):
    """Bytes the share's engine says smbds copied from its memory."""
    out = w.ctl(share, "engine").stdout
    m = re.search(r"([\d.]+) (B|KiB|MiB|GiB) copied by smbds from its memory", out)
    assert m, out
    return float(m.group(1)) * {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[m.group(2)]


def test_a_cold_sequential_read_is_copied_from_the_engines_memory_byte_exact(w):
    # The engine lends what it fetched from its shared fetch arena: smbd
    # copies the blocks from there, not from the cache file once filled.
    size = 48 << 20
    src = w.make("lent.bin", size)
    w.s3tool("put", "loader/lent/data.bin", src)
    w.ctl("loader", "invalidate", "")
    before = engine_lent(w, "loader") if os.path.exists(
        f"{w.dir}/bfscache-loader/engine.sock") else 0
    w.smbclient("loader", f"get lent/data.bin {w.tmp}/lent-copy.bin")
    assert sha256(f"{w.tmp}/lent-copy.bin") == sha256(src)
    lent = engine_lent(w, "loader") - before
    print(f"    # cold 48 MiB read: {lent / size:.2f} of it copied from the engine's memory")
    # Most of it: what readahead fetched and no reader took in time may
    # be read back from the cache file instead.
    assert lent >= size / 2, f"{lent} bytes lent of {size}"
    # Read again (hot): byte exact again, with the fetches gone.
    w.smbclient("loader", f"get lent/data.bin {w.tmp}/lent-copy2.bin")
    assert sha256(f"{w.tmp}/lent-copy2.bin") == sha256(src)


def test_a_listing_past_its_ttl_is_served_at_once_and_revalidated_by_the_engine(w):
    src = w.make("swr.bin", 1000)
    for name in ("a.bin", "b.bin"):
        w.s3tool("put", f"rwlocal/swr/{name}", src)
    w.ctl("rwlocal", "invalidate", "")
    assert set(w.ls("rwlocal", "swr")) == {"a.bin", "b.bin"}
    w.s3tool("put", "rwlocal/swr/new.bin", src)
    time.sleep(4)  # past [rwlocal]'s metadata ttl of 3 s
    before = len(front_log(w))
    w.fault("GET delay:5 -1 prefix=rwlocal%2Fswr")  # S3 takes 5 s to list it
    try:
        start = time.monotonic()
        stale = w.ls("rwlocal", "swr")
        took = time.monotonic() - start
        # Served from the index: what it had, not S3's new listing.
        assert set(stale) == {"a.bin", "b.bin"}, stale
        # And it did not wait for S3's 5 s listing first (about 0.1 s here).
        assert took < 4, f"the stale listing took {took:.1f} s"
        again = w.ls("rwlocal2", "swr")  # another smbd, same folder
        assert set(again) == {"a.bin", "b.bin"}, \
            (again, took, front_log(w)[before:][-3000:])
        # The S3 listings asked for the two that found it stale (the front
        # logs a request as it comes, before its delay), counted before
        # the looks below: each of those may find the folder past its 3 s
        # TTL again and revalidate it once more (a CI run on a loaded
        # machine counted 2 when the looks were counted too).
        lists = [l for l in front_log(w)[before:].splitlines()
                 if "list-type=2" in l and "prefix=rwlocal%2Fswr" in l
                 and "max-keys=1&" not in l]
        for _ in range(150):  # the engine's relisting lands
            if "new.bin" in w.ls("rwlocal", "swr"):
                break
            time.sleep(0.2)
        assert "new.bin" in w.ls("rwlocal", "swr"), "never relisted"
    finally:
        w.fault("GET delay:0 0")
    print(f"    # a stale listing served in {took:.2f} s while S3 took 5 s to list; "
          f"{len(lists)} S3 listing(s) for the smbds that found it stale")
    assert len(lists) == 1, lists


def test_over_the_writeback_limit_a_close_waits_for_s3_instead_of_filling_the_disk(w):
    first, second = w.make("limit-1.bin", 16 << 20), w.make("limit-2.bin", 16 << 20)
    w.fault("PUT delay:3 -1")
    try:
        put(w, "rwlocal2", first, "limit-1.bin")  # 16 MiB held: under 20M
        assert "rwlocal/limit-1.bin" not in w.s3_keys("rwlocal/")
        took, _ = put(w, "rwlocal2", second, "limit-2.bin")  # 32 MiB: over
        # Held back: this close came back with the object in S3.
        assert w.s3_sha256("rwlocal/limit-2.bin") == sha256(second)
    finally:
        w.fault("PUT delay:0 0")
    assert s3_has(w, "rwlocal/limit-1.bin", sha256(first))
    assert "over 'bucketfs:writeback limit'" in w.smb_log()
    print(f"    # the close over the limit took {took:.1f} s (PUTs slowed 3 s)")


def test_without_an_engine_to_start_closes_upload_themselves_and_the_log_says_why(w):
    src = w.make("noengine.bin", 3 << 20)
    took, _ = put(w, "rwnoengine", src, "noengine.bin")
    # The close uploaded it, as with close = s3: in S3 when it returned.
    assert w.s3_sha256("rwnoengine/noengine.bin") == sha256(src)
    log = w.smb_log()
    assert "cannot start the engine /nonexistent/bucketfsd" in log, log[-2000:]
    assert "closes on this connection wait for S3" in log
    print(f"    # connect and put of 3 MiB without an engine: {took:.1f} s")


def test_a_flush_made_while_the_engine_was_away_is_taken_over_by_a_later_flush(w):
    # close = local.  While no engine can be started, a flush uploads in
    # smbd.  A later flush of the same file, once the engine is back, must
    # not hand the newer bytes to it: the engine's upload could land first
    # and the older one after it.  It uploads in smbd too, stopping the
    # older upload (its multipart upload aborted), and both flushes answer.
    link = f"{w.dir}/guard/bucketfsd"
    os.makedirs(os.path.dirname(link), exist_ok=True)
    engine = shutil.which("bucketfsd", path="/usr/local/sbin")
    if not os.path.lexists(link):
        os.symlink(engine, link)
    first = w.make("guard-a.bin", 12 << 20)  # 3 parts of 5 MiB
    second = w.make("guard-b.bin", 13 << 20)
    pattern = f"bucketfsd -s {w.conf} rwguard$"
    p, ask = session(w, "rwguard")
    try:
        ask(f"write guard.bin {first}")  # the tree connect started the engine
        assert subprocess.run(["pgrep", "-f", pattern]).returncode == 0
        os.unlink(link)  # no engine can be started now
        subprocess.run(["pkill", "-KILL", "-f", pattern], check=True)
        time.sleep(1)  # smbd has seen its socket close
        w.fault("PUT delay:5 -1")
        ask("sendflush guard.bin")
        w.wait_part_put("rwguard/guard.bin")  # the flush's parts, from smbd
        os.symlink(engine, link)  # the engine can come back
        ask("reopen g2 guard.bin")
        ask(f"rewrite g2 {second}")
        w.fault("")  # an upload by the engine would now land at once
        ask("flush g2")
        ask("waitflush guard.bin")
        ask("close g2")
        ask("close guard.bin")
    finally:
        w.fault("")
        if not os.path.lexists(link):
            os.symlink(engine, link)
        p.stdin.close()
        p.wait(timeout=60)
    time.sleep(6)  # past the older parts' delay: nothing of it lands later
    assert w.s3_sha256("rwguard/guard.bin") == sha256(second), "an older upload landed last"
    assert w.ls("rwguard").get("guard.bin") == (False, 13 << 20)
    log = w.smb_log()
    assert "a flush of rwguard/guard.bin made while no engine could be reached is still uploading" in log, \
        log[-3000:]


def test_a_flushed_file_goes_up_before_the_closes_queued_ahead_of_it(w):
    # Every upload thread busy (4, `upload files`' default) with a file
    # whose PUT the front holds 3 s, six closes queued, then a flushed
    # file: when the threads come free, the flushed file is among the
    # first four to go, though it sorts after the six.
    small = w.make("queued.bin", 100_000)
    threads = 4
    queued = [f"aa{i}.bin" for i in range(6)]
    w.fault("PUT delay:3 -1")
    try:
        w.smbclient("rwlocal", "; ".join(f"put {small} busy{i}.bin" for i in range(threads)))
        time.sleep(1.5)  # past the upload delay: every thread is busy
        before = len(front_log(w))
        w.smbclient("rwlocal", "; ".join(f"put {small} {n}" for n in queued))
        p, ask = session(w, "rwlocal")
        ask(f"write zz-flushed.bin {small}")
        ask("flush zz-flushed.bin")
        ask("close zz-flushed.bin")
        p.stdin.close()
        p.wait(timeout=60)
    finally:
        w.fault("PUT delay:0 0")
    for name in queued + ["zz-flushed.bin"]:
        assert s3_has(w, f"rwlocal/{name}", sha256(small)), name
    puts = [m.group(1) for m in re.finditer(r"^PUT /\S+?/rwlocal/(aa\d\.bin|zz-flushed\.bin)",
                                             front_log(w)[before:], re.M)]
    # Queued first, sorted first: still the flushed one went up in the
    # first wave (without the reordering it is the seventh).
    assert "zz-flushed.bin" in puts[:threads], puts


def test_the_engine_uploads_several_files_at_once(w):
    # Eight closed files whose PUTs the front holds 2 s each: one at a
    # time they take 16 s or more; with 4 upload threads about 4 s.
    small = w.make("together.bin", 50_000)
    names = [f"together{i}.bin" for i in range(8)]
    w.fault("PUT delay:2 -1")
    try:
        start = time.monotonic()
        w.smbclient("rwlocal", "; ".join(f"put {small} {n}" for n in names))
        for n in names:
            assert s3_has(w, f"rwlocal/{n}", sha256(small), timeout=60), n
        took = time.monotonic() - start
    finally:
        w.fault("PUT delay:0 0")
    print(f"    # 8 files, each PUT held 2 s: all in S3 after {took:.1f} s")
    # Generous: one at a time is at least 16 s.
    assert took < 12, f"{took:.1f} s: the files went up one at a time"


def test_a_rename_right_after_the_close_retargets_the_upload_and_copies_nothing(w):
    src = w.make("retarget.bin", 20 << 20)
    before = len(front_log(w))
    w.smbclient("rwlocal", f"put {src} ckpt.tmp; rename ckpt.tmp ckpt.pt")
    assert s3_has(w, "rwlocal/ckpt.pt", sha256(src))
    keys = w.s3_keys("rwlocal/")
    assert "rwlocal/ckpt.tmp" not in keys, keys
    log = front_log(w)[before:]
    copies = [l for l in log.splitlines() if "ckpt" in l and "copy=yes" in l]
    assert not copies, f"a server-side copy was made: {copies}"
    listing = w.ls("rwlocal")
    assert listing.get("ckpt.pt") == (False, 20 << 20), listing
    assert "ckpt.tmp" not in listing, listing


def test_a_new_file_under_the_old_name_of_a_file_renamed_before_its_upload_stays_and_an_old_one_goes(w):
    # f and h were in S3.  Each is overwritten and renamed before its
    # upload (a retarget: the index has no ETag of the version S3 holds);
    # a new f is written at once and goes up while the renamed uploads
    # wait.  Once they are up, their old names are deleted only where S3's
    # object predates the rename: the old h goes, the new f stays.
    old = w.make("rt-old.bin", 1000)
    w.s3tool("put", "rwlocal/rt-f.bin", old)
    w.s3tool("put", "rwlocal/rt-h.bin", old)
    # Listed (another test's listing of the root may still be fresh): the
    # overwrites below replace known objects.
    w.ctl("rwlocal", "invalidate", "")
    assert "rt-h.bin" in w.ls("rwlocal")
    time.sleep(3)  # S3's objects clearly older than the renames
    one = w.make("rt-one.bin", 100_000)
    two = w.make("rt-two.bin", 5000)
    w.fault("PUT delay:5 -1 rt-slow")
    try:
        w.smbclient("rwlocal", f"put {one} rt-f.bin; rename rt-f.bin rt-slow-g.bin; "
                    f"put {one} rt-h.bin; rename rt-h.bin rt-slow-k.bin; put {two} rt-f.bin")
        assert s3_has(w, "rwlocal/rt-f.bin", sha256(two))  # up while g waits
        assert s3_has(w, "rwlocal/rt-slow-g.bin", sha256(one))
        assert s3_has(w, "rwlocal/rt-slow-k.bin", sha256(one))
    finally:
        w.fault("PUT delay:0 0")
    end = time.monotonic() + 60
    while "rt-slow" in w.ctl("rwlocal", "pending").stdout:
        assert time.monotonic() < end, "the renamed uploads never ended"
        time.sleep(0.3)
    assert s3_gone_soon(w, "rwlocal/rt-h.bin")
    assert w.s3_sha256("rwlocal/rt-f.bin") == sha256(two)
    listing = w.ls("rwlocal")
    assert listing.get("rt-f.bin") == (False, 5000), listing


def s3_gone_soon(w, key, timeout=30):
    end = time.monotonic() + timeout
    while key in w.s3_keys(os.path.dirname(key) + "/"):
        if time.monotonic() > end:
            return False
        time.sleep(0.3)
    return True


def test_a_checkpoint_renamed_over_its_final_name_is_durable_when_a_flush_of_that_name_answers(w):
    # torch.save to a tmp name, os.replace over the final one, then the
    # job opens the final name and fsyncs it: that FLUSH waits for the
    # retargeted upload and answers once S3 has the bytes.  Nothing is
    # uploaded twice or copied on the server.
    src = w.make("durable.bin", 12 << 20)
    before = len(front_log(w))
    w.fault("PUT delay:4 -1")
    try:
        w.smbclient("rwlocal", f"put {src} dur.tmp; rename dur.tmp dur.pt")
        p, ask = session(w, "rwlocal")
        try:
            ask("open dur.pt")
            took = float(ask("flush dur.pt"))
            assert w.s3_sha256("rwlocal/dur.pt") == sha256(src), \
                "the flush answered before S3 had the checkpoint"
            ask("close dur.pt")
        finally:
            p.stdin.close()
            p.wait(timeout=60)
    finally:
        w.fault("PUT delay:0 0")
    assert "rwlocal/dur.tmp" not in w.s3_keys("rwlocal/")
    log = [l for l in front_log(w)[before:].splitlines() if "/dur." in l]
    assert not [l for l in log if "copy=yes" in l], log
    # One upload: one PUT, or one multipart upload's parts, never repeated.
    puts = [l.split()[1] for l in log if l.startswith("PUT ")]
    assert len(puts) == len(set(puts)) and puts, puts
    assert "dur.pt" not in w.ctl("rwlocal", "pending").stdout
    print(f"    # flush of the renamed checkpoint {took:.2f} s (PUTs slowed 4 s), "
          f"{len(puts)} PUT requests")


def test_a_folder_renamed_while_its_files_wait_for_upload_takes_them_along(w):
    # A checkpoint written as a folder (Orbax: files into step.tmp/, then
    # the folder renamed to step/): its files' uploads wait in the engine
    # (the 15 s upload delay) when the rename comes.  They go up under the
    # new folder, a file S3 already has is copied there, and nothing is
    # left under the old name.
    done, a, b = (w.make(f"fold-{n}.bin", size) for n, size in
                  (("done", 100 << 10), ("a", 1 << 20), ("b", 6 << 20)))
    w.s3tool("put", "slowstart/step.tmp/done.bin", done)  # S3 has this one
    w.ctl("slowstart", "invalidate", "")
    w.smbclient("slowstart", f"put {a} step.tmp/a.bin; put {b} step.tmp/b.bin; "
                             "rename step.tmp step")
    listing = w.ls("slowstart", "step")
    assert {n: listing.get(n) for n in ("done.bin", "a.bin", "b.bin")} == {
        "done.bin": (False, 100 << 10), "a.bin": (False, 1 << 20),
        "b.bin": (False, 6 << 20)}, listing
    assert "step.tmp" not in w.ls("slowstart"), "the old folder is still listed"
    for name, src in (("done.bin", done), ("a.bin", a), ("b.bin", b)):
        assert s3_has(w, f"slowstart/step/{name}", sha256(src), timeout=60), name
    end = time.monotonic() + 60
    while w.ctl("slowstart", "pending").stdout.strip() and time.monotonic() < end:
        time.sleep(0.5)
    assert not [k for k in w.s3_keys("slowstart/") if "step.tmp" in k], \
        w.s3_keys("slowstart/")
    listing = w.ls("slowstart", "step")
    assert sorted(n for n in listing if n not in (".", "..")) == \
        ["a.bin", "b.bin", "done.bin"], listing
    w.smbclient("slowstart", "get step/b.bin " + f"{w.tmp}/fold-b.out")
    assert sha256(f"{w.tmp}/fold-b.out") == sha256(b)


def test_a_folder_made_and_renamed_before_the_engine_put_its_markers_moves_whole(w):
    # mkdir's markers wait in the engine (the 15 s upload delay) as a
    # close's upload does: a rename of the new folder takes them along,
    # the subfolder's entry too, and leaves no ghost under the old name.
    f = w.make("mkren.bin", 5000)
    w.smbclient("slowstart", f"mkdir mkp; mkdir mkp/sub; put {f} mkp/sub/f.bin; "
                             "rename mkp mkq")
    assert "mkp" not in w.ls("slowstart")
    assert w.ls("slowstart", "mkq").get("sub", (None,))[0] is True
    end = time.monotonic() + 60
    while "mk" in w.ctl("slowstart", "pending").stdout:
        assert time.monotonic() < end, "the engine never finished"
        time.sleep(0.3)
    keys = w.s3_keys("slowstart/")
    for k in ("slowstart/mkq/", "slowstart/mkq/sub/", "slowstart/mkq/sub/f.bin"):
        assert k in keys, keys
    assert not [k for k in keys if k.startswith("slowstart/mkp")], keys
    # Made again: empty, with no ghost of the subfolder that moved.
    w.smbclient("slowstart", "mkdir mkp")
    w.ctl("slowstart", "invalidate", "")
    assert [n for n in w.ls("slowstart", "mkp") if n not in (".", "..")] == []
    assert w.ls("slowstart", "mkq/sub").get("f.bin") == (False, 5000)


def test_a_rename_after_the_close_ends_the_upload_delay_which_a_plain_close_waits_out(w):
    # The delay holds an upload for the rename that may follow its close
    # (write tmp, rename over final); once that rename has come there is
    # nothing left to wait for.  A file closed after it still waits.
    ckpt, other = w.make("ripe.bin", 1 << 20), w.make("unripe.bin", 1 << 20)
    start = time.monotonic()
    w.smbclient("slowstart", f"put {ckpt} ckpt.tmp; rename ckpt.tmp ckpt.pt; "
                             f"put {other} other.bin")
    assert s3_has(w, "slowstart/ckpt.pt", sha256(ckpt), timeout=60)
    # Generous: the point is that it did not wait out the 15 s delay.
    assert time.monotonic() - start < 10, "the renamed upload waited out the delay"
    assert "slowstart/other.bin" not in w.s3_keys("slowstart/"), \
        "a plain close did not wait for the upload delay"
    assert "slowstart/ckpt.tmp" not in w.s3_keys("slowstart/")


def test_a_rename_while_the_upload_runs_stops_it_and_the_file_goes_up_once_under_the_new_name(w):
    # A rename that comes after the engine began the upload (a slow
    # client): the rest of the bytes would go up under the old name
    # and again under the new one.  The engine stops and aborts it.
    src = w.make("restart.bin", 20 << 20)  # parts of 16 and 4 MiB
    before = len(front_log(w))
    w.fault("PUT delay:3 -1")
    try:
        put(w, "rwlocal", src, "ckpt2.tmp")
        w.wait_part_put("rwlocal/ckpt2.tmp", since=before, timeout=15)
        r = w.smbclient("rwlocal", "rename ckpt2.tmp ckpt2.pt", check=False)
        # Seen once in CI (ACCESS_DENIED), not reproduced since: say why.
        assert r.returncode == 0, (r.stdout, [
            l for l in (w.smb_log() + front_log(w)[before:]).splitlines()
            if re.search(r"ckpt2|mismatch|rename|denied|ERR", l, re.I)][-40:])
    finally:
        w.fault("PUT delay:0 0")
    assert s3_has(w, "rwlocal/ckpt2.pt", sha256(src))
    assert "rwlocal/ckpt2.tmp" not in w.s3_keys("rwlocal/")
    log = front_log(w)[before:]
    completed = re.findall(r"^POST /\S+/rwlocal/ckpt2\.tmp\?uploadId=", log, re.M)
    aborted = re.findall(r"^DELETE /\S+/rwlocal/ckpt2\.tmp\?uploadId=", log, re.M)
    assert not completed, "the upload under the old name went on to its end"
    assert aborted, "the upload under the old name was not aborted"
    # Under the new name each part is sent once: one upload, not two.
    parts = re.findall(r"^PUT /\S+/rwlocal/ckpt2\.pt\?partNumber=(\d+)", log, re.M)
    assert parts and len(parts) == len(set(parts)), \
        [l for l in log.splitlines() if "ckpt2" in l]
    for _ in range(50):
        if not os.listdir(f"{w.dir}/bfscache-rwlocal/staging"):
            break
        time.sleep(0.1)
    assert not os.listdir(f"{w.dir}/bfscache-rwlocal/staging"), "staging left"
    listing = w.ls("rwlocal")
    assert listing.get("ckpt2.pt") == (False, 20 << 20), listing
    assert "ckpt2.tmp" not in listing, listing


def test_a_file_deleted_while_the_engine_holds_its_upload_stays_deleted(w):
    src = w.make("gone.bin", 3 << 20)
    w.fault("PUT delay:2 -1")
    try:
        w.smbclient("rwlocal", f"put {src} gone.bin; del gone.bin")
    finally:
        w.fault("PUT delay:0 0")
    time.sleep(3)
    for _ in range(50):
        if "gone.bin" not in w.ctl("rwlocal", "pending").stdout:
            break
        time.sleep(0.2)
    assert "rwlocal/gone.bin" not in w.s3_keys("rwlocal/"), "the deleted file came back"
    assert "gone.bin" not in w.ls("rwlocal")


@pytest.mark.alone  # sets the machine's clock back
def test_a_failed_upload_is_tried_again_on_time_after_the_clock_is_set_back(w):
    # A time sync may set the wall clock back.  The engine tries a failed
    # upload again 5 s later ([rwlocal]'s upload retry) on a clock no such
    # step moves; on the wall clock, set back 2 minutes, the upload would
    # wait 2 minutes more.
    if os.geteuid() != 0:
        pytest.skip("setting the clock needs root")
    src = w.make("clockback.bin", 100000)
    log = f"{w.dir}/bfscache-rwlocal/engine.log"
    before = len(open(log).read()) if os.path.exists(log) else 0
    w.fault("PUT 503 -1 rwlocal/clockback.bin")
    back = 0
    try:
        put(w, "rwlocal", src, "clockback.bin")
        for _ in range(300):
            if re.search(r"upload of \S+/rwlocal/clockback\.bin failed", open(log).read()[before:]):
                break
            time.sleep(0.1)
        assert re.search(r"upload of \S+/rwlocal/clockback\.bin failed",
                         open(log).read()[before:]), "the upload did not fail"
        time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME) - 120)
        back = 120
        w.fault("PUT delay:0 0")
        start = time.monotonic()
        while time.monotonic() - start < 120 and \
                "clockback.bin" in w.ctl("rwlocal", "pending").stdout:
            time.sleep(0.5)
        took = time.monotonic() - start
    finally:
        w.fault("PUT delay:0 0")
        if back:
            time.clock_settime(time.CLOCK_REALTIME,
                               time.clock_gettime(time.CLOCK_REALTIME) + back)
    print(f"    # uploaded {took:.1f} s after the clock went back 120 s (retry after 5 s)")
    # Generous: the point is that it did not wait out the 120 s.
    assert took < 60, f"the retry waited {took:.0f} s"
    assert s3_has(w, "rwlocal/clockback.bin", sha256(src))


@pytest.mark.alone  # sets the machine's clock back
def test_a_relisting_sent_before_an_upload_ended_keeps_the_new_version_when_the_clock_steps_back(w):
    # A listing stored in the index keeps what this host changed after
    # the listing was sent.  That order was the wall clock's, and a clock
    # stepped back between the listing's start and an upload's end made
    # the listing look younger: its answer (the previous version's ETag)
    # replaced the new version's entry, and reads served the previous
    # version's cached bytes (the 16-client soak once read a checkpoint
    # back so).  Versions of the same size, as there.
    if os.geteuid() != 0:
        pytest.skip("setting the clock needs root")
    v1, v2 = w.make("stepback-v1.bin", 100000), w.make("stepback-v2.bin", 100000)
    w.smbclient("rwlocal", "mkdir stepback")
    put(w, "rwlocal", v1, "stepback/f.bin")
    assert s3_has(w, "rwlocal/stepback/f.bin", sha256(v1))
    got = f"{w.tmp}/stepback-got.bin"
    w.smbclient("rwlocal", f"get stepback/f.bin {got}")  # cached: v1's blocks
    assert sha256(got) == sha256(v1)
    time.sleep(4)  # past [rwlocal]'s metadata ttl of 3 s
    before = len(front_log(w))
    w.fault("GET late:4 -1 prefix=rwlocal%2Fstepback")  # S3's answer, held 4 s
    back = 0
    try:
        w.ls("rwlocal", "stepback")  # served from the index; the engine relists
        for _ in range(200):
            if "prefix=rwlocal%2Fstepback" in front_log(w)[before:]:
                break
            time.sleep(0.02)
        assert "prefix=rwlocal%2Fstepback" in front_log(w)[before:], "no relisting"
        time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME) - 3)
        back = 3
        put(w, "rwlocal", v2, "stepback/f.bin")
        for _ in range(100):  # the engine's upload ends while S3 lists
            if "stepback/f.bin" not in w.ctl("rwlocal", "pending").stdout:
                break
            time.sleep(0.05)
        time.sleep(5)  # the held listing is answered and stored
    finally:
        w.fault("GET delay:0 0")
        if back:
            time.clock_settime(time.CLOCK_REALTIME,
                               time.clock_gettime(time.CLOCK_REALTIME) + back)
    assert s3_has(w, "rwlocal/stepback/f.bin", sha256(v2))
    w.smbclient("rwlocal", f"get stepback/f.bin {got}")
    assert sha256(got) == sha256(v2), "read back the previous version"


def test_a_file_written_while_the_engine_runs_a_delete_of_its_name_is_kept(w):
    # A delete with close = local is the engine's (journalled in its pid's
    # name).  A close of the same name while the engine's DELETE is in
    # flight hands it a newer upload, in the same pid's name.  The
    # delete's end must leave that record and its index entry (it once
    # dropped both, and the new file never went up: HEAD 404), and the
    # upload must go up after the DELETE.
    old = w.make("rot-old.bin", 1 << 20)
    new = w.make("rot-new.bin", 3 << 20)
    w.smbclient("rwlocal", "mkdir delrace")
    put(w, "rwlocal", old, "delrace/rot.bin")
    assert s3_has(w, "rwlocal/delrace/rot.bin", sha256(old))
    since = len(front_log(w))
    held = re.compile(r"^DELETE /\S+/rwlocal/delrace/rot\.bin ", re.M)
    w.fault("DELETE delay:6 -1 rwlocal/delrace/rot.bin")
    try:
        w.smbclient("rwlocal", "del delrace/rot.bin")  # answers at once
        end = time.monotonic() + 30
        while not held.search(front_log(w)[since:]) and time.monotonic() < end:
            time.sleep(0.1)
        assert held.search(front_log(w)[since:]), "the engine sent no DELETE"
        put(w, "rwlocal", new, "delrace/rot.bin")  # while the engine's DELETE is held
    finally:
        w.fault("")
    assert s3_has(w, "rwlocal/delrace/rot.bin", sha256(new)), "the file written after the delete was lost"
    assert w.ls("rwlocal", "delrace").get("rot.bin") == (False, 3 << 20)
    assert "delrace/rot.bin" not in w.ctl("rwlocal", "pending").stdout
    log = open(f"{w.dir}/bfscache-rwlocal/engine.log").read()
    assert "was written again while its delete ran" in log, log[-2000:]


def test_a_file_written_while_the_engine_copies_a_rename_onto_its_name_is_kept(w):
    # A rename of a file already in S3 is the engine's with close = local
    # (a server-side copy, then a delete of the old name).  A close of the
    # new name while the copy is in flight hands the engine a newer
    # upload: the copy's end must leave it and its index entry, and S3
    # must end with the newer bytes.
    old = w.make("ren-old.bin", 1 << 20)
    new = w.make("ren-new.bin", 3 << 20)
    w.smbclient("rwlocal", "mkdir renrace")
    put(w, "rwlocal", old, "renrace/a.bin")
    assert s3_has(w, "rwlocal/renrace/a.bin", sha256(old))
    since = len(front_log(w))
    copy = re.compile(r"^PUT /\S+/rwlocal/renrace/b\.bin .*copy=yes", re.M)
    w.fault("PUT delay:6 -1 rwlocal/renrace/b.bin")
    try:
        w.smbclient("rwlocal", "rename renrace/a.bin renrace/b.bin")
        end = time.monotonic() + 30
        while not copy.search(front_log(w)[since:]) and time.monotonic() < end:
            time.sleep(0.1)
        assert copy.search(front_log(w)[since:]), "the engine sent no copy"
        put(w, "rwlocal", new, "renrace/b.bin")  # while the engine's copy is held
    finally:
        w.fault("")
    assert s3_has(w, "rwlocal/renrace/b.bin", sha256(new)), "the file written after the rename was lost"
    assert s3_gone_soon(w, "rwlocal/renrace/a.bin")
    assert w.ls("rwlocal", "renrace").get("b.bin") == (False, 3 << 20)
    end = time.monotonic() + 60
    while "renrace/" in w.ctl("rwlocal", "pending").stdout:
        assert time.monotonic() < end, "the engine never finished"
        time.sleep(0.3)
    assert w.s3_sha256("rwlocal/renrace/b.bin") == sha256(new)


def test_a_rename_over_a_name_whose_copy_runs_ends_with_the_newer_file(w):
    # b is the new name of a rename whose copy the engine is making (held
    # 4 s); two files are renamed over b meanwhile, one not yet uploaded
    # (its upload moves to b), then one S3 has (a second copy).  S3 ends
    # with the last one under b, and a, t, u gone.
    one = w.make("rov-one.bin", 200_000)
    two = w.make("rov-two.bin", 30_000)
    three = w.make("rov-three.bin", 70_000)
    w.s3tool("put", "rwlocal/rov-a.bin", one)
    w.s3tool("put", "rwlocal/rov-u.bin", three)
    w.ctl("rwlocal", "invalidate", "")
    w.ls("rwlocal")
    since = len(front_log(w))
    copy = re.compile(r"^PUT /\S+/rwlocal/rov-b\.bin .*copy=yes", re.M)
    w.fault("PUT delay:4 -1 rwlocal/rov-b.bin")
    try:
        w.smbclient("rwlocal", "rename rov-a.bin rov-b.bin")
        end = time.monotonic() + 30
        while not copy.search(front_log(w)[since:]) and time.monotonic() < end:
            time.sleep(0.1)
        assert copy.search(front_log(w)[since:]), "the engine sent no copy"
        w.smbclient("rwlocal", f"put {two} rov-t.bin; rename rov-t.bin rov-b.bin -f")
        assert w.ls("rwlocal").get("rov-b.bin") == (False, 30_000)
        w.smbclient("rwlocal", "rename rov-u.bin rov-b.bin -f")
        assert w.ls("rwlocal").get("rov-b.bin") == (False, 70_000)
    finally:
        w.fault("")
    wait_engine_done(w, "rov-")
    keys = {k for k in w.s3_keys("rwlocal/") if "rov-" in k}
    assert keys == {"rwlocal/rov-b.bin"}, keys
    assert w.s3_sha256("rwlocal/rov-b.bin") == sha256(three)
    w.ctl("rwlocal", "invalidate", "")
    assert w.ls("rwlocal").get("rov-b.bin") == (False, 70_000)
    got = f"{w.tmp}/rov-b.back"
    w.smbclient("rwlocal2", f"get rov-b.bin {got}")
    assert sha256(got) == sha256(three)


def wait_engine_done(w, part, timeout=60):
    end = time.monotonic() + timeout
    while part in w.ctl("rwlocal", "pending").stdout:
        assert time.monotonic() < end, f"the engine never finished {part}"
        time.sleep(0.3)


def test_a_rename_of_a_file_in_s3_answers_before_the_copy_and_readers_see_the_new_name_at_once(w):
    # A checkpoint made durable (FLUSH) before its rename over the final
    # name: S3 has it, so the rename is a server-side copy, minutes for
    # a big one.  With close = local the engine makes it: the rename
    # answers while S3 has only the old name, a reader (another share,
    # another smbd) reads the new name at once, listings from S3 change
    # nothing, and once the engine is done S3 has only the new name.
    src = w.make("rn-src.bin", 5 << 20)
    w.s3tool("put", "rwlocal/rn-a.bin", src)
    w.ctl("rwlocal", "invalidate", "")
    assert w.ls("rwlocal").get("rn-a.bin") == (False, 5 << 20)
    since = len(front_log(w))
    w.fault("PUT delay:5 -1 rwlocal/rn-b.bin")  # the copy held 5 s
    try:
        start = time.monotonic()
        w.smbclient("rwlocal", "rename rn-a.bin rn-b.bin")
        took = time.monotonic() - start
        keys = w.s3_keys("rwlocal/")
        assert "rwlocal/rn-b.bin" not in keys and "rwlocal/rn-a.bin" in keys, \
            "the rename waited for S3's copy"
        got = f"{w.tmp}/rn-b.back"
        w.smbclient("rwlocal2", f"get rn-b.bin {got}")
        assert sha256(got) == sha256(src), "a reader got other bytes"
        w.ctl("rwlocal", "invalidate", "")
        listing = w.ls("rwlocal")
        assert listing.get("rn-b.bin") == (False, 5 << 20), listing
        assert "rn-a.bin" not in listing, listing
        pending = w.ctl("rwlocal", "pending").stdout
        assert "rn-b.bin" in pending, pending
    finally:
        w.fault("")
    assert s3_has(w, "rwlocal/rn-b.bin", sha256(src)), "the engine never copied it"
    assert s3_gone_soon(w, "rwlocal/rn-a.bin"), "the old name stayed in S3"
    wait_engine_done(w, "rn-")
    w.ctl("rwlocal", "invalidate", "")
    listing = w.ls("rwlocal")
    assert listing.get("rn-b.bin") == (False, 5 << 20) and "rn-a.bin" not in listing, listing
    copies = [l for l in front_log(w)[since:].splitlines() if "rn-b.bin" in l and "copy=yes" in l]
    assert len(copies) == 1, copies
    print(f"    # rename of a 5 MiB object, the copy held 5 s: answered in {took:.2f} s")


def test_a_rename_of_a_folder_in_s3_answers_before_the_copies_and_shows_the_new_tree_at_once(w):
    # A checkpoint folder written, its files already up in S3, then
    # renamed whole (Orbax's tmp folder renamed to the step's name): with
    # close = local the engine copies every object and marker, and the
    # rename answers before the first copy.  Meanwhile the new tree lists
    # and reads from another smbd, and once the engine is done S3 holds
    # the new keys only.
    big, small = w.make("fr-big.bin", 6 << 20), w.make("fr-small.bin", 70_000)
    w.smbclient("rwlocal", f"mkdir fr-a; mkdir fr-a/sub; put {big} fr-a/big.bin; "
                           f"put {small} fr-a/sub/small.bin")
    wait_engine_done(w, "fr-a")
    old = {"rwlocal/fr-a/", "rwlocal/fr-a/sub/", "rwlocal/fr-a/big.bin",
           "rwlocal/fr-a/sub/small.bin"}
    assert old <= w.s3_keys("rwlocal/fr-a/"), "the folder never went up"
    w.ctl("rwlocal", "invalidate", "")
    since = len(front_log(w))
    w.fault("PUT delay:5 -1 rwlocal/fr-b/")  # every copy and marker held 5 s
    try:
        start = time.monotonic()
        w.smbclient("rwlocal", "rename fr-a fr-b")
        took = time.monotonic() - start
        assert not [k for k in w.s3_keys("rwlocal/") if k.startswith("rwlocal/fr-b")], \
            "the rename waited for S3's copies"
        top = w.ls("rwlocal2")
        assert top.get("fr-b", (None,))[0] is True and "fr-a" not in top, top
        assert w.ls("rwlocal2", "fr-b").get("big.bin") == (False, 6 << 20)
        assert w.ls("rwlocal2", "fr-b").get("sub", (None,))[0] is True
        assert w.ls("rwlocal2", "fr-b/sub").get("small.bin") == (False, 70_000)
        got = f"{w.tmp}/fr-small.back"
        w.smbclient("rwlocal2", f"get fr-b/sub/small.bin {got}")
        assert sha256(got) == sha256(small), "a reader got other bytes"
    finally:
        w.fault("")
    wait_engine_done(w, "fr-")
    new = {k.replace("fr-a", "fr-b") for k in old}
    end = time.monotonic() + 30
    while ({k for k in w.s3_keys("rwlocal/") if "/fr-" in k} != new
           and time.monotonic() < end):
        time.sleep(0.3)
    assert {k for k in w.s3_keys("rwlocal/") if "/fr-" in k} == new
    assert w.s3_sha256("rwlocal/fr-b/big.bin") == sha256(big)
    w.ctl("rwlocal", "invalidate", "")
    top = w.ls("rwlocal")
    assert top.get("fr-b", (None,))[0] is True and "fr-a" not in top, top
    assert w.ls("rwlocal", "fr-b/sub").get("small.bin") == (False, 70_000)
    copies = [l for l in front_log(w)[since:].splitlines() if "fr-b/big.bin" in l and "copy=yes" in l]
    assert len(copies) == 1, copies
    print(f"    # rename of a folder of 4 objects, each copy held 5 s: answered in {took:.2f} s")


def test_on_one_connection_an_echo_and_a_read_are_answered_while_a_folder_rename_is_copied(w):
    # The kernel client's one connection: a checkpoint folder renamed into
    # place, an ECHO and a READ of a cached file sent behind it without
    # waiting.  With close = local all three are answered while S3's
    # copies (each held 3 s) have not even begun; the engine copies after.
    small = w.make("prn-cached.bin", 100_000)
    part = w.make("prn-part.bin", 1 << 20)
    w.smbclient("rwlocal", f"put {small} prn-cached.bin; mkdir prn-a; mkdir prn-a/sub; "
                           f"put {part} prn-a/p0.bin; put {part} prn-a/sub/p1.bin")
    wait_engine_done(w, "prn-")
    w.fault("PUT delay:3 -1 rwlocal/prn-b/")
    try:
        run = pipeline(w, "rwlocal", "prn-a", "prn-b", "prn-cached.bin", "rename")
        early = [k for k in w.s3_keys("rwlocal/") if k.startswith("rwlocal/prn-b")]
    finally:
        w.fault("")
    print(f"    # answers in order {run['order']}, seconds {run['seconds']}")
    assert set(run["status"].values()) == {"0x00000000"}, run
    assert run["read_bytes"] == 65536, run
    assert early == [], f"the rename waited for S3's copies: {early}"
    assert w.ls("rwlocal", "prn-b/sub").get("p1.bin") == (False, 1 << 20)
    wait_engine_done(w, "prn-")
    keys = {k for k in w.s3_keys("rwlocal/") if "/prn-" in k and "cached" not in k}
    assert keys == {"rwlocal/prn-b/", "rwlocal/prn-b/sub/", "rwlocal/prn-b/p0.bin",
                    "rwlocal/prn-b/sub/p1.bin"}, keys


def test_a_rename_of_a_folder_s3_only_implies_answers_before_the_copies_and_gets_markers(w):
    # A dataset or checkpoint folder another S3 client uploaded (aws s3
    # cp: no marker objects, S3 only implies the folders) renamed whole
    # with close = local: the rename answers before the engine's copies,
    # and each folder gets a marker under its new name, which keeps it in
    # listings while its objects are still copied.  S3 ends with the new
    # tree only: the files and the two new markers.
    src = w.make("fi-x.bin", 50_000)
    w.s3tool("put", "rwlocal/fi-a/x.bin", src)
    w.s3tool("put", "rwlocal/fi-a/deep/er/y.bin", src)
    w.ctl("rwlocal", "invalidate", "")
    assert w.ls("rwlocal").get("fi-a", (None,))[0] is True
    w.fault("PUT delay:5 -1 rwlocal/fi-b/")  # every copy and marker held 5 s
    try:
        start = time.monotonic()
        w.smbclient("rwlocal", "rename fi-a fi-b")
        took = time.monotonic() - start
        assert not [k for k in w.s3_keys("rwlocal/") if k.startswith("rwlocal/fi-b")], \
            "the rename waited for S3"
        top = w.ls("rwlocal2")
        assert top.get("fi-b", (None,))[0] is True and "fi-a" not in top, top
        assert w.ls("rwlocal2", "fi-b").get("x.bin") == (False, 50_000)
        assert w.ls("rwlocal2", "fi-b/deep").get("er", (None,))[0] is True
        got = f"{w.tmp}/fi-y.back"
        w.smbclient("rwlocal2", f"get fi-b/deep/er/y.bin {got}")
        assert sha256(got) == sha256(src), "a reader got other bytes"
    finally:
        w.fault("")
    wait_engine_done(w, "fi-")
    new = {"rwlocal/fi-b/", "rwlocal/fi-b/x.bin", "rwlocal/fi-b/deep/",
           "rwlocal/fi-b/deep/er/", "rwlocal/fi-b/deep/er/y.bin"}
    end = time.monotonic() + 30
    while ({k for k in w.s3_keys("rwlocal/") if "/fi-" in k} != new
           and time.monotonic() < end):
        time.sleep(0.3)
    assert {k for k in w.s3_keys("rwlocal/") if "/fi-" in k} == new
    w.ctl("rwlocal", "invalidate", "")
    top = w.ls("rwlocal")
    assert top.get("fi-b", (None,))[0] is True and "fi-a" not in top, top
    assert w.ls("rwlocal", "fi-b/deep/er").get("y.bin") == (False, 50_000)
    print(f"    # rename of a folder S3 only implies, each copy held 5 s: answered in {took:.2f} s")


def test_a_write_into_a_file_opened_while_its_rename_copied_fills_from_the_copy_once_done(w):
    # A checkpoint renamed, then opened for writing (a job patching its
    # header) while the engine still copies it: the handle reads the old
    # name.  The copy ends and the old name goes before the first write,
    # whose read-modify-write fill then finds no object there; it moves
    # to the new object and fills from it instead of failing the write.
    src = w.make("rf-src.bin", 3 << 20)
    patch = w.make("rf-patch.bin", 4096)
    w.s3tool("put", "rwlocal/rf-a.bin", src)
    w.ctl("rwlocal", "invalidate", "")
    w.ls("rwlocal")
    w.fault("PUT delay:3 -1 rwlocal/rf-b.bin")
    p, ask = session(w, "rwlocal")
    try:
        w.smbclient("rwlocal", "rename rf-a.bin rf-b.bin")
        ask("open rf-b.bin")
        assert "rwlocal/rf-b.bin" not in w.s3_keys("rwlocal/"), "the copy was not held"
        w.fault("")
        assert s3_gone_soon(w, "rwlocal/rf-a.bin"), "the old name stayed in S3"
        wait_engine_done(w, "rf-")
        ask(f"rewrite rf-b.bin {patch}")
        ask("close rf-b.bin")
    finally:
        w.fault("")
        p.stdin.close()
        p.wait(timeout=60)
    with open(src, "rb") as f:
        want = bytearray(f.read())
    with open(patch, "rb") as f:
        want[:4096] = f.read()
    wait_engine_done(w, "rf-")
    got = f"{w.tmp}/rf-back.bin"
    w.smbclient("rwlocal2", f"get rf-b.bin {got}")
    with open(got, "rb") as f:
        assert f.read() == bytes(want), "the patched file reads back wrong"
    end = time.monotonic() + 30
    while w.s3_sha256("rwlocal/rf-b.bin") != hashlib.sha256(want).hexdigest():
        assert time.monotonic() < end, "S3 never got the patched file"
        time.sleep(0.3)


def test_changes_of_a_renamed_name_while_the_engine_copies_it_end_as_on_a_disk(w):
    # While the engine's copies are held: a renamed file deleted; a new
    # file written under the old name of another; a third renamed twice.
    # S3 ends as a disk would: the first gone under both names, the old
    # bytes under the second's new name and the new ones under its old
    # name, the third under its last name only.
    old = w.make("rnx-old.bin", 300_000)
    new = w.make("rnx-new.bin", 70_000)
    for n in ("d", "o", "t"):
        w.s3tool("put", f"rwlocal/rnx-{n}.bin", old)
    w.ctl("rwlocal", "invalidate", "")
    w.ls("rwlocal")
    w.fault("PUT delay:4 -1 rwlocal/rnx-")
    try:
        w.smbclient("rwlocal", "rename rnx-d.bin rnx-d2.bin; del rnx-d2.bin; "
                    "rename rnx-o.bin rnx-o2.bin; "
                    "rename rnx-t.bin rnx-t2.bin; rename rnx-t2.bin rnx-t3.bin")
        put(w, "rwlocal", new, "rnx-o.bin")
        listing = w.ls("rwlocal")
        assert not {"rnx-d.bin", "rnx-d2.bin", "rnx-t.bin", "rnx-t2.bin"} & set(listing), listing
        assert listing.get("rnx-o.bin") == (False, 70_000), listing
        assert listing.get("rnx-o2.bin") == (False, 300_000), listing
        assert listing.get("rnx-t3.bin") == (False, 300_000), listing
        got = f"{w.tmp}/rnx-t3.back"
        w.smbclient("rwlocal2", f"get rnx-t3.bin {got}")
        assert sha256(got) == sha256(old)
    finally:
        w.fault("")
    wait_engine_done(w, "rnx-")
    keys = {k for k in w.s3_keys("rwlocal/") if "rnx-" in k}
    assert keys == {"rwlocal/rnx-o.bin", "rwlocal/rnx-o2.bin", "rwlocal/rnx-t3.bin"}, keys
    assert w.s3_sha256("rwlocal/rnx-o.bin") == sha256(new), "the new file under the old name was lost"
    assert w.s3_sha256("rwlocal/rnx-o2.bin") == sha256(old)
    assert w.s3_sha256("rwlocal/rnx-t3.bin") == sha256(old)
    w.ctl("rwlocal", "invalidate", "")
    listing = w.ls("rwlocal")
    assert {k for k in listing if k.startswith("rnx-")} == {"rnx-o.bin", "rnx-o2.bin", "rnx-t3.bin"}, listing


def test_a_tree_connect_with_an_engine_sweeps_a_dead_processs_staging_file(w):
    # Recovery, which the engine now runs, used to end each tree connect
    # with the staging sweep; the connect still sweeps, locally.
    w.smbclient("rwlocal", "ls")  # the cache folder and its engine exist
    dead = subprocess.Popen(["true"])
    dead.wait()
    stray = f"{w.dir}/bfscache-rwlocal/staging/w-{dead.pid}-1-1-0"
    with open(stray, "wb") as f:
        f.write(b"never closed")
    w.smbclient("rwlocal", "ls")
    assert engines(w), "no engine: this test is about a share with one"
    assert not os.path.exists(stray), "a dead process's staging file stayed"


def test_kill_9_of_the_engine_during_an_upload_loses_nothing_and_the_next_one_finishes_it(w):
    src = w.make("engine-kill.bin", 24 << 20)
    w.fault("PUT delay:2 -1")
    try:
        put(w, "rwlocal", src, "killed.bin")
        victim = engine_pid(w)
        for _ in range(100):  # its upload is on its way
            if "rwlocal/killed.bin?partNumber" in front_log(w) or \
                    re.search(r"PUT /\S+/rwlocal/killed\.bin ", front_log(w)):
                break
            time.sleep(0.1)
        os.kill(victim, signal.SIGKILL)
        for _ in range(50):
            if victim not in engines(w):
                break
            time.sleep(0.1)
        assert victim not in engines(w)
    finally:
        w.fault("PUT delay:0 0")
    # The next tree connect that needs an engine starts one; it takes the
    # dead one's records over.
    w.smbclient("rwlocal", "ls")
    assert engines(w) and victim not in engines(w), engines(w)
    assert s3_has(w, "rwlocal/killed.bin", sha256(src)), "lost with the engine"
    assert re.search(r"took over \d+ change", open(f"{w.dir}/bfscache-rwlocal/engine.log").read())
