"""The write path through a real smbd: staged writes, uploads on close
(`close = s3` here, so a close returns with the object in S3), renames,
the journal and its recovery, limits, streamed parts, S3 faults during
uploads, kill -9 of smbd.  An smbd of its own serves SHARES; [rwfault],
[rwasuser] and [rwstream] go through the fault-switching front.
"""
import hashlib
import os
import re
import subprocess
import time

import pytest

from conftest import smbd_fixture
from world import TOP, B, BUCKET, USER, PASSWORD, OTHER_USER, session, sh, sha256

SHARES = """  # tests/integration/smbflush.c flushes with SMB1 (libsmb's cli_flush)
  server min protocol = NT1
[data]
  path = /bucketfs/data
{common}  bucketfs:bucket = {BUCKET}
[rw]
  path = /bucketfs/rw
{common}  bucketfs:bucket = {BUCKET}
  bucketfs:prefix = rw
  bucketfs:cache dir = {t}/bfscache-rw
  bucketfs:close = s3
  read only = no
  veto files = /*.exe/
[rwasuser]
  path = /bucketfs/rwasuser
{faulty}  bucketfs:prefix = rwasuser
  bucketfs:cache dir = {t}/bfscache-rwasuser
  bucketfs:close = s3
  valid users = {USER} {OTHER_USER}
[rwlimits]
  path = /bucketfs/rwlimits
{common}  bucketfs:bucket = {BUCKET}
  bucketfs:prefix = rwlimits
  bucketfs:cache dir = {t}/bfscache-rwlimits
  bucketfs:max file size = 8M
  bucketfs:writeback limit = 40M
  read only = no
[rwfault]
  path = /bucketfs/rwfault
{faulty}  bucketfs:prefix = rwfault
  bucketfs:cache dir = {t}/bfscache-rwfault
  bucketfs:close = s3
  bucketfs:retries = 3
  bucketfs:multipart copy threshold = 6M
  bucketfs:dir rename max = 3
[rwstream]
  path = /bucketfs/rwstream
{faulty}  bucketfs:prefix = rwstream
  bucketfs:cache dir = {t}/bfscache-rwstream
  bucketfs:close = s3
  bucketfs:stream parts = yes
"""
w = smbd_fixture("write", SHARES)


@pytest.fixture(autouse=True)
def nothing_panics(w):
    """After each test: smbd's log has no PANIC."""
    yield
    log = w.smb_log()
    assert "PANIC" not in log and "INTERNAL ERROR" not in log, log[-3000:]


def assert_renamed(w, share, old, new, src):
    """S3 and the share have src's bytes under new and nothing under old."""
    keys = w.s3_keys(f"{share}/")
    assert f"{share}/{old}" not in keys, f"the old name stayed in S3: {keys}"
    assert w.s3_sha256(f"{share}/{new}") == sha256(src), "not all bytes under the new name"
    listing = w.ls(share)
    assert listing.get(new) == (False, os.path.getsize(src)), listing
    assert old not in listing, listing


def slow_upload(w, src, name, delay):
    """Start smbclient putting src as rwfault/name with every PUT slowed
    by delay seconds; return once its first part is on its way."""
    w.fault(f"PUT delay:{delay} -1")
    p = subprocess.Popen(["smbclient", "//127.0.0.1/rwfault", "-p", str(w.smb_port),
                          "-U", f"{USER}%{PASSWORD}", "-m", "SMB3",
                          "-c", f"put {src} {name}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        w.wait_part_put(f"rwfault/{name}")
    except AssertionError:
        p.kill()
        w.fault("")
        raise
    assert f"rwfault/{name}" not in w.s3_keys("rwfault/"), "upload already done"
    return p


def test_a_file_written_through_the_share_is_in_s3_byte_for_byte(w):
    src = w.make("small.bin", 300001)
    w.smbclient("rw", f"put {src} small.bin")
    assert w.s3_sha256("rw/small.bin") == sha256(src)
    assert w.ls("rw").get("small.bin") == (False, 300001)


def limits(w, share, name, *sizes):
    out = sh(["/usr/bin/python3", os.path.join(TOP, "tests/integration/smblimits.py"),
              str(w.smb_port), share, USER, PASSWORD, name, *map(str, sizes)]).stdout
    lines = out.splitlines()
    total, avail = map(int, lines[0].split()[1:])
    return total, avail, lines[1:]


def test_a_file_grown_past_max_file_size_is_refused_as_disk_full(w):
    # Issue 19 point 5: an end of file set to 2 TiB would have 2 TiB
    # of zeros uploaded.  Past 'bucketfs:max file size' (8M here) the
    # client is told the disk is full, and what was within it stays.
    M = 1 << 20
    _, _, got = limits(w, "rwlimits", "grow.bin", 4 * M, 8 * M, 8 * M + 1, 2 << 40)
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


def test_free_space_is_the_cache_folders_file_system_and_the_writeback_allowance(w):
    # Not 1 PiB: a client (Explorer, robocopy) checks free space
    # before a copy, and every byte is staged in the cache folder
    # first.  [rw] (close = s3) has the file system's room, [rwlimits]
    # at most its 40M writeback limit.
    # The other lanes write and remove files of hundreds of MiB on the
    # same file system meanwhile (CI once saw 534 MiB come free between
    # one look and the answer): the share's answer must lie between a look
    # before it and one after.
    fs = os.statvfs(w.tmp)
    total, rw_avail, _ = limits(w, "rw", "space.bin")
    after = os.statvfs(w.tmp)
    assert abs(total - fs.f_blocks * fs.f_frsize) < (1 << 20), (total, fs)
    low = min(fs.f_bavail, after.f_bavail) * fs.f_frsize - (256 << 20)
    high = max(fs.f_bavail, after.f_bavail) * fs.f_frsize + (256 << 20)
    assert low < rw_avail < high, (rw_avail, fs, after)
    total, avail, _ = limits(w, "rwlimits", "space.bin")
    assert 0 < avail <= 40 << 20, avail
    assert abs(total - fs.f_blocks * fs.f_frsize) < (1 << 20), (total, fs)
    print(f"    # [rw] {rw_avail >> 20} MiB free of {total >> 20} MiB; [rwlimits] {avail >> 20} MiB")


def test_an_upload_holds_no_more_part_buffers_than_upload_memory(w):
    # 8 parts of 5 MiB may be in flight; 'upload memory' bounds what
    # one process holds, down to one part when a part is larger.
    src = w.make("partsmem.bin", 40 * (1 << 20) + 12345)
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


def test_s3_work_runs_as_the_connected_user_and_cache_files_stay_roots(w):
    # Issue 19 point 15: smbd talks to S3 with the user's rights and
    # lends root's only to the cache folder's file calls.  While an
    # upload (PUT held 3 s) and a cold read (GET held 3 s) of a user
    # are in flight, its smbd's effective uid is the user's: sampled
    # every 0.1 s, nearly always (smbd itself is root for a moment at
    # the tree connect, and lib/ for each cache file it opens); with
    # the S3 work under become_root, root's for the 3 s.
    import pwd
    uid = pwd.getpwnam(OTHER_USER).pw_uid
    src = w.make("asuser.bin", 3 << 20)

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
    out = os.path.join(w.tmp, "asuser.out")
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
    cache = os.path.join(w.dir, "bfscache-rwasuser")
    for root, ds, fs in os.walk(cache):
        for name in ds + fs:
            st = os.lstat(os.path.join(root, name))
            assert st.st_uid == 0 and st.st_mode & 0o077 == 0, (name, oct(st.st_mode), st.st_uid)


def volume_flags(w, share):
    out = sh(["/usr/bin/python3", os.path.join(TOP, "tests/integration/fsattr.py"),
              str(w.smb_port), share, USER, PASSWORD]).stdout.split()
    return int(out[0], 16)


def test_one_key_too_long_for_the_index_is_hidden_and_its_folder_still_works(w):
    # "<folder>\0<name>" over 511 bytes cannot be an index key (issue 19
    # point 4): hidden with a log line, its siblings served, and a name
    # that would make one refused before S3 is changed.  (s3rver keeps
    # a key as files: each component stays well under 255 bytes.)
    deep = "d" * 200 + "/" + "e" * 200  # rw/long/<deep>/: 410 bytes
    src = w.make("long-ok.bin", 1000)
    w.s3tool("put", f"rw/long/{deep}/ok.txt", src)
    w.s3tool("put", f"rw/long/{deep}/{'n' * 120}", src)  # 531 in the index
    w.ctl("rw", "invalidate", "")  # put behind the share's back
    listing = w.ls("rw", f"long/{deep}")
    assert set(listing) == {"ok.txt"}, listing
    assert "too long with its folder for the index" in w.smb_log()
    got = f"{w.tmp}/long-ok.back"
    w.smbclient("rw", f'get "long/{deep}/ok.txt" {got}')
    assert sha256(got) == sha256(src)
    before = w.s3_keys(f"rw/long/{deep}/")
    p = w.smbclient("rw", f'mkdir "long/{deep}/{"m" * 120}"', check=False)
    assert "NT_STATUS_" in p.stdout + p.stderr, p.stdout
    p = w.smbclient("rw", f'put {src} "long/{deep}/{"p" * 120}"', check=False)
    assert "NT_STATUS_" in p.stdout + p.stderr, p.stdout
    assert w.s3_keys(f"rw/long/{deep}/") == before, "S3 changed"


def test_windows_is_told_a_writable_share_is_writable_and_a_read_only_one_is_not(w):
    # FileFsAttributeInformation, as Explorer asks when it maps a drive.
    read_only_volume = 0x00080000
    rw, ro = volume_flags(w, "rw"), volume_flags(w, "data")
    assert not rw & read_only_volume, f"writable share says read-only: 0x{rw:08x}"
    assert ro & read_only_volume, f"read-only share says writable: 0x{ro:08x}"
    for flags in (rw, ro):  # case-sensitive search, case-preserved, Unicode
        assert flags & 0x7 == 0x7, f"0x{flags:08x}"
    print(f"    # rw 0x{rw:08x}, read-only 0x{ro:08x}")


def test_names_that_decode_to_dot_dot_or_past_veto_files_are_refused(w):
    # [rw] vetoes *.exe.  U+F029 is the mapping's final dot: only a final
    # one is a dot; anywhere else the name is no key's SMB form.
    src = w.make("names.bin", 1000)
    for name in ("\uf029\uf029", "a\uf029exe", "\uf029", "x\uf029\uf029"):
        p = w.smbclient("rw", f'put {src} "{name}"', check=False)
        assert "NT_STATUS_" in p.stdout + p.stderr, f"{name!r} was created: {p.stdout}"
    p = w.smbclient("rw", 'mkdir "\uf029\uf029"', check=False)
    assert "NT_STATUS_" in p.stdout + p.stderr, f"mkdir: {p.stdout}"
    p = w.smbclient("rw", f"put {src} a.exe", check=False)
    assert "NT_STATUS_" in p.stdout + p.stderr, "veto files is not on"
    keys = w.s3_keys("rw/")
    assert not {"rw/..", "rw/.", "rw/a.exe", "rw/x.\uf029", "rw/x\uf029."} & keys, keys
    assert not any(k.startswith("rw/../") or k.startswith("rw/./") for k in keys), keys
    # A final mapped dot is still the key's final dot.
    w.smbclient("rw", f'put {src} "end\uf029"')
    assert w.s3_sha256("rw/end.") == sha256(src)
    assert "end\uf029" in w.ls("rw"), w.ls("rw")
    assert "refused the name" in w.smb_log()


def test_checkpoint_pattern_write_tmp_then_rename_over_the_final(w):
    old = w.make("old.pt", 1000)
    w.smbclient("rw", f"mkdir run1; put {old} run1/ckpt.pt")
    src = w.make("ckpt.pt", 200 << 20)
    start = time.time()
    w.smbclient("rw", f"put {src} run1/ckpt.pt.tmp; rename run1/ckpt.pt.tmp run1/ckpt.pt -f",
                )
    print(f"    # 200 MiB write + rename, durable: {time.time() - start:.1f} s")
    assert w.s3_sha256("rw/run1/ckpt.pt") == sha256(src), "S3 object differs from the source"
    keys = w.s3_keys("rw/run1/")
    assert "rw/run1/ckpt.pt.tmp" not in keys, f"tmp object left: {keys}"
    got = w.ls("rw", "run1")
    assert got.get("ckpt.pt") == (False, 200 << 20) and "ckpt.pt.tmp" not in got, got
    sh(["smbclient", "//127.0.0.1/rw", "-p", str(w.smb_port), "-U",
            f"{USER}%{PASSWORD}", "-m", "SMB3", "-c", f"get run1/ckpt.pt {w.tmp}/back.pt"])
    assert sha256(f"{w.tmp}/back.pt") == sha256(src), "read back through SMB differs"
    assert not os.listdir(f"{w.dir}/bfscache-rw/staging"), "staging files left behind"


def test_append_truncate_and_partial_overwrite_change_the_object(w):
    base = w.make("base.bin", 5 << 20)
    w.smbclient("rw", f"put {base} edit.bin")
    patch = w.make("patch.bin", 4096)
    w.smbwrite("rw", "edit.bin", "write", "1000000", patch)
    tail = w.make("tail.bin", 12345)
    w.smbwrite("rw", "edit.bin", "append", tail)
    want = bytearray(open(base, "rb").read())
    want[1000000:1000000 + 4096] = open(patch, "rb").read()
    want += open(tail, "rb").read()
    assert w.s3_sha256("rw/edit.bin") == hashlib.sha256(want).hexdigest(), "after write+append"
    w.smbwrite("rw", "edit.bin", "truncate", "777")
    assert w.s3_sha256("rw/edit.bin") == hashlib.sha256(want[:777]).hexdigest(), "truncate"
    assert w.ls("rw").get("edit.bin") == (False, 777)


def test_mkdir_rmdir_and_unlink_change_the_bucket(w):
    w.make("small.bin", 300001)  # as the first write test makes it
    w.smbclient("rw", f"mkdir d1; put {w.tmp}/small.bin d1/f")
    assert {"rw/d1/", "rw/d1/f"} <= w.s3_keys("rw/d1/"), w.s3_keys("rw/d1/")
    p = w.smbclient("rw", "rmdir d1", check=False)
    assert "NT_STATUS_DIRECTORY_NOT_EMPTY" in p.stdout + p.stderr, p.stdout + p.stderr
    w.smbclient("rw", "rm d1/f; rmdir d1")
    assert not w.s3_keys("rw/d1/"), w.s3_keys("rw/d1/")
    assert "d1" not in w.ls("rw")
    # an implicit directory (no marker) is removed once empty
    w.s3tool("put", "rw/implicit/only", "/etc/hostname")
    w.ctl("rw", "invalidate", "")  # put behind the share's back
    w.smbclient("rw", "rm implicit/only; rmdir implicit")
    assert "implicit" not in w.ls("rw")


def test_delete_on_close_leaves_nothing_in_s3(w):
    w.make("small.bin", 300001)  # as the first write test makes it
    # smbclient's rm opens with FILE_DELETE_ON_CLOSE and closes.
    w.smbclient("rw", f"put {w.tmp}/small.bin doc.bin")
    w.smbclient("rw", "rm doc.bin")
    assert "rw/doc.bin" not in w.s3_keys("rw/"), w.s3_keys("rw/")
    assert "doc.bin" not in w.ls("rw")


def test_a_directory_renames_with_its_objects(w):
    w.make("small.bin", 300001)  # as the first write test makes it
    w.smbclient("rw", f"mkdir dA; put {w.tmp}/small.bin dA/x; mkdir dA/sub; "
                      f"put {w.tmp}/small.bin dA/sub/y; rename dA dB")
    keys = w.s3_keys("rw/d")
    assert {"rw/dB/x", "rw/dB/sub/y"} <= keys and not any(k.startswith("rw/dA") for k in keys), keys
    assert w.ls("rw", "dB/sub").get("y") == (False, 300001)


def test_a_flush_returns_once_the_object_is_in_s3(w):
    src = w.make("flushed.bin", 3 << 20)
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


def test_other_clients_see_the_new_bytes_while_the_upload_runs(w):
    src = w.make("inflight.bin", 30 << 20)
    p = slow_upload(w, src, "inflight.bin", 3)
    try:
        assert w.ls("rwfault").get("inflight.bin") == (False, 30 << 20), w.ls("rwfault")
        w.smbclient("rwfault", f"get inflight.bin {w.tmp}/inflight.back")
        assert sha256(f"{w.tmp}/inflight.back") == sha256(src), "another client read other bytes"
        assert p.poll() is None, "the upload finished before the read: no overlap shown"
    finally:
        p.wait(timeout=120)
        w.fault("")
    assert p.returncode == 0
    assert w.s3_sha256("rwfault/inflight.bin") == sha256(src)


def test_a_rename_by_another_client_during_a_close_is_refused_until_the_close_answers(w):
    # With close = s3 an SMB2 close answers once S3 has the file, and
    # smbd waits for the upload before it closes the handle (the hold):
    # until then the file is open, and another client's rename meets the
    # writer's share mode, as with any open file.  Then it moves all of it.
    src = w.make("moving.bin", 30 << 20)
    p = slow_upload(w, src, "moving.bin", 3)
    try:
        r = sh(["smbclient", "//127.0.0.1/rwfault", "-p", str(w.smb_port), "-t", "120",
                "-U", f"{USER}%{PASSWORD}", "-m", "SMB3", "-c", "rename moving.bin moved.bin"],
               check=False)
        assert "NT_STATUS_SHARING_VIOLATION" in r.stdout + r.stderr, r.stdout + r.stderr
        assert p.poll() is None, "the close answered before its upload was done"
    finally:
        p.wait(timeout=120)
        w.fault("")
    assert p.returncode == 0
    assert w.s3_sha256("rwfault/moving.bin") == sha256(src)
    w.smbclient("rwfault", "rename moving.bin moved.bin")
    assert_renamed(w, "rwfault", "moving.bin", "moved.bin", src)


def test_a_file_renamed_while_open_and_dirty_is_uploaded_under_the_new_name(w):
    old = w.make("openmv.old", 1000)
    w.smbclient("rw", f"put {old} openmv.final")
    src = w.make("openmv.bin", 3 << 20)
    out = sh([f"{B}/tests/smbrenopen", f"smb://127.0.0.1:{w.smb_port}/rw",
              "openmv.tmp", "openmv.final", src],
             env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD)).stdout
    assert out.strip() == "closed", out
    assert_renamed(w, "rw", "openmv.tmp", "openmv.final", src)


def rename_open(w, share, src_name, dst_name, src, hold):
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


def test_kill_9_between_the_rename_of_an_open_written_file_and_its_close_loses_nothing(w):
    # logrotate renames an open log; smbd dies before the log is closed.
    old = w.make("rot.old", 5000)
    w.smbclient("rw", f"put {old} app.log")
    src = w.make("rot.new", 3 << 20)
    p = rename_open(w, "rw", "app.log", "app.log.1", src, 60)
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
    assert "rw/app.log" not in w.s3_keys("rw/"), "the old name stayed"
    listing = w.ls("rw")
    assert listing.get("app.log.1") == (False, 3 << 20) and "app.log" not in listing, listing
    assert "app.log" not in w.ctl("rw", "pending").stdout


def test_a_new_file_under_the_old_name_of_a_renamed_open_file_stays(w):
    # The old name is deleted after the renamed file's upload only if it
    # still holds the version the file started from.
    old = w.make("rot2.old", 5000)
    w.smbclient("rw", f"put {old} svc.log")
    src = w.make("rot2.new", 2 << 20)
    p = rename_open(w, "rw", "svc.log", "svc.log.1", src, 4)
    newlog = w.make("rot2.next", 7000)
    w.smbclient("rw", f"put {newlog} svc.log")
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0 and out.strip() == "closed", out
    assert w.s3_sha256("rw/svc.log.1") == sha256(src)
    assert w.s3_sha256("rw/svc.log") == sha256(newlog), "the new file under the old name went"
    listing = w.ls("rw")
    assert listing.get("svc.log") == (False, 7000), listing


def test_a_failed_close_then_a_reopen_for_writing_keeps_the_first_writes(w):
    base = w.make("reopen.base", 100000)
    w.smbclient("rwfault", f"put {base} reopen.bin")
    patch, tail = w.make("reopen.patch", 1000), w.make("reopen.tail", 500)
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
    assert not os.listdir(f"{w.dir}/bfscache-rwfault/staging"), "staging left"


def test_a_writer_overwrites_a_change_made_in_s3_meanwhile_and_says_so(w):
    base = w.make("conflict.bin", 100000)
    w.smbclient("rw", f"put {base} conflict.bin")
    patch = w.make("conflict.patch", 10)
    writer = subprocess.Popen(
        [f"{B}/tests/smbwrite", f"smb://127.0.0.1:{w.smb_port}/rw/conflict.bin",
         "write", "0", patch],
        env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD, SMBWRITE_HOLD="3"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.5)
    other = w.make("conflict.other", 5000)
    w.s3tool("put", "rw/conflict.bin", other)
    out, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0, out
    want = bytearray(open(base, "rb").read())
    want[0:10] = open(patch, "rb").read()
    assert w.s3_sha256("rw/conflict.bin") == hashlib.sha256(want).hexdigest(), \
        "the last writer's bytes are not in S3"
    assert re.search(r"s3://%s/rw/conflict.bin changed in S3 since it was opened for "
                     r"writing.*last writer wins" % BUCKET, w.smb_log()), "no log line"


def test_a_rename_above_the_copy_threshold_is_a_multipart_copy(w):
    # rwfault copies objects above 6M part by part (UploadPartCopy), as
    # S3 needs above 5G.
    src = w.make("bigcopy.bin", 13 << 20)
    w.smbclient("rwfault", f"put {src} bigcopy.bin; rename bigcopy.bin bigcopy2.bin")
    assert w.s3_sha256("rwfault/bigcopy2.bin") == sha256(src)
    assert "rwfault/bigcopy.bin" not in w.s3_keys("rwfault/")
    # The front's threads may interleave log lines: find the parts anywhere.
    with open(f"{w.tmp}/front-control.log") as f:
        parts = set(re.findall(r"PUT /\S+/bigcopy2\.bin\?partNumber=(\d+)", f.read()))
    assert parts == {"1", "2", "3"}, f"part copies: {parts}"


def test_a_directory_above_the_rename_limit_is_refused_and_left_alone(w):
    w.make("small.bin", 300001)  # as the first write test makes it
    # rwfault: bucketfs:dir rename max = 3
    w.smbclient("rwfault", "mkdir many4; " +
                "; ".join(f"put {w.tmp}/small.bin many4/f{i}" for i in range(4)))
    p = w.smbclient("rwfault", "rename many4 many5", check=False)
    assert "NT_STATUS_NOT_SUPPORTED" in p.stdout + p.stderr, p.stdout + p.stderr
    assert re.search(r"cannot rename many4: it holds more than 3 objects", w.smb_log())
    keys = w.s3_keys("rwfault/many")
    assert {f"rwfault/many4/f{i}" for i in range(4)} <= keys and \
        not any(k.startswith("rwfault/many5") for k in keys), keys


def put_through_fault(w, name, fault):
    """Upload 20 MiB as rwfault/name while the front injects fault;
    assert S3 ends with the source's bytes; the front's log lines
    for that object."""
    src = w.make(name, 20 << 20)
    w.fault(fault)
    w.smbclient("rwfault", f"put {src} {name}")
    w.fault("")
    assert w.s3_sha256(f"rwfault/{name}") == sha256(src)
    with open(f"{w.tmp}/front-control.log") as f:
        return [l for l in f if f"/rwfault/{name}" in l]


def test_an_injected_500_during_upload_is_retried(w):
    log = put_through_fault(w, "r500.bin", "PUT 500 2")
    injected = sum(l.startswith("PUT ") and " fault=500 " in l for l in log)
    assert injected == 2, f"{injected} PUTs answered 500"
    print("    # 2 PUTs answered 500, upload retried")


def test_a_lost_answer_to_completing_an_upload_is_not_a_failure(w):
    # S3 did complete it; the retry finds no upload, then the object.
    log = put_through_fault(w, "lost.bin", "POST lost 1 uploadId=")
    posts = [l for l in log if l.startswith("POST ") and "uploadId=" in l]
    assert len(posts) == 2 and " fault=lost " in posts[0], posts
    after = log[log.index(posts[1]) + 1:]
    assert any(l.startswith("HEAD ") for l in after), "the object was not looked at"
    assert not any(re.match(r"(PUT|DELETE) ", l) for l in after), after
    assert "lost.bin" not in w.ctl("rwfault", "pending").stdout
    print("    # completion answered by nobody, retried: NoSuchUpload, then HEAD: ours")


def test_a_permanent_failure_reaches_the_client_and_keeps_the_data(w):
    src = w.make("denied.bin", 3 << 20)
    w.fault("PUT deny -1")
    p = w.smbclient("rwfault", f"put {src} denied.bin", check=False)
    w.fault("")
    out = p.stdout + p.stderr
    assert "NT_STATUS_ACCESS_DENIED" in out, out
    staged = os.listdir(f"{w.dir}/bfscache-rwfault/staging")
    assert any(sha256(f"{w.dir}/bfscache-rwfault/staging/{n}") == sha256(src)
               for n in staged), f"staging: {staged}"
    assert "rwfault/denied.bin" not in w.s3_keys("rwfault/")
    pending = w.ctl("rwfault", "pending").stdout
    assert re.search(r"upload s3://\S+/rwfault/denied\.bin .*failed: Permission denied",
                     pending), pending
    # The next smbd process on the share finishes the journalled upload.
    for _ in range(50):
        w.smbclient("rwfault", "ls")
        if "rwfault/denied.bin" in w.s3_keys("rwfault/"):
            break
        time.sleep(0.2)
    assert w.s3_sha256("rwfault/denied.bin") == sha256(src), "not recovered"


def parts_sent(w, name):
    """Part numbers of every UploadPart for rwstream/name, in order."""
    with open(f"{w.tmp}/front-control.log") as f:
        return [int(m.group(1)) for m in
                (re.match(rf"PUT /\S+/rwstream/{re.escape(name)}\?partNumber=(\d+)&", l)
                 for l in f) if m]


def stream_write(w, name, src, hold, *more, pause=0, cut=None):
    """smbwrite creating rwstream/name from src, open for hold seconds."""
    url = f"smb://127.0.0.1:{w.smb_port}/rwstream/{name}"
    env = dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD,
               SMBWRITE_HOLD=str(hold), SMBWRITE_PAUSE=str(pause))
    if cut is not None:
        env["SMBWRITE_CUT"] = str(cut)
    return subprocess.Popen([f"{B}/tests/smbwrite", url, "create", src, *more],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def wait_parts(w, name, want, p):
    for _ in range(300):
        if sorted(set(parts_sent(w, name))) == want or p.poll() is not None:
            break
        time.sleep(0.1)
    assert sorted(set(parts_sent(w, name))) == want, parts_sent(w, name)


def test_a_file_written_front_to_back_sends_its_parts_before_the_close(w):
    src = w.make("streamed.bin", 23 << 20)  # 4 whole parts of 5 MiB and 3 MiB
    p = stream_write(w, "streamed.bin", src, 5)
    try:
        wait_parts(w, "streamed.bin", [1, 2, 3, 4], p)
        assert p.poll() is None, "closed before its parts went up: nothing shown"
        pending = w.ctl("rwstream", "pending").stdout
        assert "abort" in pending and "rwstream/streamed.bin" in pending, pending
        assert "rwstream/streamed.bin" not in w.s3_keys("rwstream/"), "visible before the close"
    finally:
        out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert w.s3_sha256("rwstream/streamed.bin") == sha256(src)
    # The close sent only the last part: the streamed ones were kept.
    # Two parts go up at once, so the front may log 4 before 3.
    assert sorted(parts_sent(w, "streamed.bin")) == [1, 2, 3, 4, 5], parts_sent(w, "streamed.bin")
    assert "streamed.bin" not in w.ctl("rwstream", "pending").stdout
    assert not os.listdir(f"{w.dir}/bfscache-rwstream/staging"), "staging left"


def test_a_part_written_again_after_it_went_up_is_sent_again(w):
    src = w.make("rewrite.bin", 23 << 20)
    patch = w.make("rewrite.patch", 1 << 20)
    p = stream_write(w, "rewrite.bin", src, 0, str(6 << 20), patch, pause=4)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    with open(src, "rb") as f:
        want = bytearray(f.read())
    with open(patch, "rb") as f:
        want[6 << 20:7 << 20] = f.read()
    with open(f"{w.tmp}/rewrite.want", "wb") as f:
        f.write(want)
    assert w.s3_sha256("rwstream/rewrite.bin") == sha256(f"{w.tmp}/rewrite.want")
    sent = parts_sent(w, "rewrite.bin")
    assert sent.count(2) == 2 and sent.count(1) == 1, f"part 2 not resent once: {sent}"


def test_a_streamed_file_cut_short_is_uploaded_at_its_new_size(w):
    src = w.make("cut.bin", 23 << 20)
    cut = (12 << 20) + 12345  # parts 1 and 2 stay, 3 and 4 went up for nothing
    p = stream_write(w, "cut.bin", src, 0, str(23 << 20), src, pause=4, cut=cut)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    with open(src, "rb") as f:
        want = f.read(cut)
    with open(f"{w.tmp}/cut.want", "wb") as f:
        f.write(want)
    assert w.s3_sha256("rwstream/cut.bin") == sha256(f"{w.tmp}/cut.want")
    assert w.ls("rwstream").get("cut.bin") == (False, cut)
    sent = parts_sent(w, "cut.bin")
    assert sent.count(1) == 1 and sent.count(2) == 1, f"kept parts sent again: {sent}"


def test_a_streamed_file_renamed_while_open_goes_up_under_the_new_name(w):
    src = w.make("renstream.bin", 46 << 20)  # 23 MiB, rename, 23 MiB
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
    assert sorted(set(parts_sent(w, "renstream.tmp"))) == [1, 2, 3, 4], \
        f"nothing streamed before the rename: {parts_sent(w, 'renstream.tmp')}"
    # The upload under the old name waits in the journal for an abort,
    # without the staging file, which was the renamed file's.
    pending = w.ctl("rwstream", "pending").stdout
    assert "abort  s3://" in pending and "renstream.tmp" in pending, pending
    for _ in range(50):  # the connection's smbd exits, then a connect recovers
        assert_renamed(w, "rwstream", "renstream.tmp", "renstream.final", src)
        if "renstream.tmp" not in w.ctl("rwstream", "pending").stdout:
            break
        time.sleep(0.2)
    assert "renstream.tmp" not in w.ctl("rwstream", "pending").stdout
    with open(f"{w.tmp}/front-control.log") as f:
        assert re.search(r"DELETE /\S+/rwstream/renstream\.tmp\?uploadId=\S+ fault=- ",
                         f.read()), "the old name's upload was never aborted"
    assert not os.listdir(f"{w.dir}/bfscache-rwstream/staging"), "staging left"


def test_kill_9_while_a_streamed_file_is_open_aborts_its_upload(w):
    src = w.make("k9s.bin", 23 << 20)
    p = stream_write(w, "k9s.bin", src, 60)
    try:
        wait_parts(w, "k9s.bin", [1, 2, 3, 4], p)
        w.restart_smbd(kill=True)
    finally:
        p.kill()  # it holds the file open for a minute
        p.communicate(timeout=60)
    w.smbclient("rwstream", "ls")  # the next connect replays the journal
    with open(f"{w.tmp}/front-control.log") as f:
        assert re.search(r"DELETE /\S+/rwstream/k9s\.bin\?uploadId=", f.read()), \
            "the dead process's streamed upload was not aborted"
    assert "rwstream/k9s.bin" not in w.s3_keys("rwstream/"), "a file never closed was uploaded"
    assert "k9s.bin" not in w.ctl("rwstream", "pending").stdout
    assert not os.listdir(f"{w.dir}/bfscache-rwstream/staging"), "staging left"


def test_kill_9_right_after_close_loses_nothing(w):
    src = w.make("k9.bin", 30 << 20)
    w.smbclient("rw", f"put {src} k9.bin")
    w.restart_smbd(kill=True)
    assert w.s3_sha256("rw/k9.bin") == sha256(src)
    assert w.ls("rw").get("k9.bin") == (False, 30 << 20)


def test_kill_9_during_an_upload_is_finished_by_the_next_smbd(w):
    src = w.make("k9b.bin", 30 << 20)
    p = slow_upload(w, src, "k9b.bin", 1)  # parts on their way: kill smbd
    w.restart_smbd(kill=True)
    p.wait(timeout=60)
    w.fault("")
    assert "rwfault/k9b.bin" not in w.s3_keys("rwfault/"), "uploaded before the kill"
    w.smbclient("rwfault", "ls")  # the next connect replays the journal
    assert w.s3_sha256("rwfault/k9b.bin") == sha256(src), "not finished after restart"
    with open(f"{w.tmp}/front-control.log") as f:
        assert re.search(r"DELETE /\S+/k9b\.bin\?uploadId=", f.read()), \
            "the dead process's multipart upload was not aborted"
    assert not os.listdir(f"{w.dir}/bfscache-rwfault/staging"), "staging left"


def test_an_smb2_flush_uploads_a_snapshot_and_later_writes_go_up_with_the_close(w):
    # close = s3: the flush uploads what was written before it on smbd's
    # loop (a snapshot); a write after it leaves the file dirty, and the
    # close uploads the new bytes.
    first = w.make("snap-a.bin", 12 << 20)
    second = w.make("snap-b.bin", 13 << 20)
    p, ask = session(w, "rwfault")
    try:
        ask(f"write snap.bin {first}")
        ask("flush snap.bin")
        assert w.s3_sha256("rwfault/snap.bin") == sha256(first), "not in S3 after the flush"
        ask(f"rewrite snap.bin {second}")  # over it, longer, on the same open
        assert w.s3_sha256("rwfault/snap.bin") == sha256(first)
        ask("close snap.bin")
    finally:
        p.stdin.close()
        p.wait(timeout=60)
    assert w.s3_sha256("rwfault/snap.bin") == sha256(second), "the close did not upload"
    assert w.ls("rwfault").get("snap.bin") == (False, 13 << 20)
    assert "snap.bin" not in w.ctl("rwfault", "pending").stdout
    assert not os.listdir(f"{w.dir}/bfscache-rwfault/staging"), "staging left"


def test_kill_9_during_an_smb2_flush_is_finished_by_the_next_smbd(w):
    # The flush's snapshot is journalled before its upload starts.
    src = w.make("k9f.bin", 30 << 20)
    p, ask = session(w, "rwfault")
    try:
        ask(f"write k9f.bin {src}")
        w.fault("PUT delay:3 -1")  # the kill comes well before the end
        p.stdin.write("flush k9f.bin\n")  # not answered: smbd dies first
        p.stdin.flush()
        w.wait_part_put("rwfault/k9f.bin")
        assert "rwfault/k9f.bin" not in w.s3_keys("rwfault/"), "uploaded before the kill"
        w.restart_smbd(kill=True)
    finally:
        p.kill()
        p.communicate(timeout=60)
        w.fault("")
    w.smbclient("rwfault", "ls")  # the next connect replays the journal
    assert w.s3_sha256("rwfault/k9f.bin") == sha256(src), "not finished after restart"
    assert "k9f.bin" not in w.ctl("rwfault", "pending").stdout
    assert not os.listdir(f"{w.dir}/bfscache-rwfault/staging"), "staging left"


def test_a_close_through_a_second_open_takes_over_a_flush_still_uploading(w):
    # One connection, two opens of one file: the flush of the first is
    # still going up when the second writes newer bytes and closes.  The
    # close's upload is the newer: the flush's stops (it must not land in
    # S3 after it) and answers with the close's result.
    first = w.make("sup-a.bin", 12 << 20)
    second = w.make("sup-b.bin", 13 << 20)
    p, ask = session(w, "rwfault")
    try:
        ask(f"write sup.bin {first}")
        w.fault("PUT delay:2 -1")
        ask("sendflush sup.bin")
        w.wait_part_put("rwfault/sup.bin")  # the flush's upload is on its way
        ask("reopen sup2 sup.bin")
        ask(f"rewrite sup2 {second}")
        ask("close sup2")
        w.fault("")
        ask("waitflush sup.bin")
        ask("close sup.bin")
    finally:
        w.fault("")
        p.stdin.close()
        p.wait(timeout=60)
    assert w.s3_sha256("rwfault/sup.bin") == sha256(second), "an older upload landed last"
    assert w.ls("rwfault").get("sup.bin") == (False, 13 << 20)
    assert "sup.bin" not in w.ctl("rwfault", "pending").stdout
    assert not os.listdir(f"{w.dir}/bfscache-rwfault/staging"), "staging left"
