"""File semantics Windows and Linux clients expect (issue 23), measured
with Samba's own conformance suites (smbtorture, Debian's samba-testsuite).

[semantics] is a writable bucketfs share; [plainsemantics] a writable
folder of plain Samba in the same smbd (SHARES).  Each check runs smbtorture
against the bucketfs share and asserts the subtests it names pass; the
last one prints the pass counts of the issue's table for both shares.
"""
import calendar
import concurrent.futures
import os
import re
import subprocess
import time

import pytest

from conftest import smbd_fixture
from world import TOP, USER, PASSWORD

# Subtests bucketfs passes on every run (2026-12-03), per suite: since
# times and attributes are kept, all of timestamps, openattr and winattr.
FLOOR = {
    "smb2.timestamps": ["test_close_not_attrib", "time_t_15032385535", "time_t_10000000000",
                        "time_t_4294967295", "time_t_1", "time_t_0", "time_t_-1", "time_t_-2",
                        "time_t_1968", "freeze-thaw", "delayed-write-vs-seteof",
                        "delayed-write-vs-flush", "delayed-write-vs-setbasic",
                        "delayed-1write", "delayed-2write"],
    "smb2.delete-on-close-perms": ["BUG14427", "CREATE", "CREATE Existing", "CREATE_IF",
                                   "FIND_and_set_DOC", "OVERWRITE_IF", "READONLY"],
    "smb2.openattr": ["openattr"],
    "smb2.winattr": ["winattr"],
    "smb2.getinfo": ["fsinfo", "granted", "qsec_buffercheck"],
    "smb2.create": ["bench-path-contention-shared", "brlocked", "delete",
                   "dir-alloc-size", "dosattr_tmp_dir", "impersonation",
                   "leading-slash", "mkdir-dup", "multi", "quota-fake-file"],
    "smb2.session": ["bind1", "bind2", "bind_invalid_auth", "bind_negative_smb202",
                    "bind_negative_smb210d", "bind_negative_smb210s",
                    "bind_negative_smb2to3d", "bind_negative_smb2to3s",
                    "bind_negative_smb3encGtoCd", "bind_negative_smb3encGtoCs",
                    "bind_negative_smb3signC30toGd", "bind_negative_smb3signC30toGs",
                    "bind_negative_smb3signCtoGd", "bind_negative_smb3signCtoGs",
                    "bind_negative_smb3signCtoHs", "bind_negative_smb3signGtoC30d",
                    "bind_negative_smb3signGtoC30s", "bind_negative_smb3signGtoCd",
                    "bind_negative_smb3signGtoCs", "bind_negative_smb3signGtoH2Xd",
                    "bind_negative_smb3signGtoH2Xs", "bind_negative_smb3signGtoHd",
                    "bind_negative_smb3signGtoHs", "bind_negative_smb3signH2XtoGd",
                    "bind_negative_smb3signH2XtoGs", "bind_negative_smb3signHtoCs",
                    "bind_negative_smb3signHtoGd", "bind_negative_smb3signHtoGs",
                    "bind_negative_smb3sneCtoGd", "bind_negative_smb3sneCtoGs",
                    "bind_negative_smb3sneGtoCd", "bind_negative_smb3sneGtoCs",
                    "bind_negative_smb3sneGtoHd", "bind_negative_smb3sneGtoHs",
                    "bind_negative_smb3sneHtoGd", "bind_negative_smb3sneHtoGs",
                    "bind_negative_smb3to2d", "bind_negative_smb3to2s",
                    "bind_negative_smb3to3d", "bind_negative_smb3to3s",
                    "encryption-aes-128-ccm", "encryption-aes-128-gcm",
                    "encryption-aes-256-ccm", "encryption-aes-256-gcm",
                    "ntlmssp_bug14932", "reauth1", "reauth2", "reauth3", "reauth4",
                    "reauth6", "reconnect1", "reconnect2", "signing-aes-128-cmac",
                    "signing-aes-128-gmac", "signing-hmac-sha-256", "two_logoff"],
}
# The suites of issue 23's table.
SUITES = ("smb2.timestamps", "smb2.delete-on-close-perms", "smb2.getinfo",
          "smb2.session", "smb2.create", "smb2.openattr", "smb2.winattr")


SHARES = """
[semantics]
  path = /bucketfs/semantics
{common}  bucketfs:bucket = {BUCKET}
  bucketfs:prefix = semantics
  bucketfs:cache dir = {t}/bfscache-semantics
  read only = no
[plainsemantics]
  path = {t}/plainsemantics
  read only = no
[plainnoxattr]
  path = {t}/plainnoxattr
  read only = no
"""
smbd = smbd_fixture("semantics", SHARES)


@pytest.fixture(scope="module")
def w(smbd):
    os.makedirs(f"{smbd.dir}/plainsemantics", exist_ok=True)
    return smbd


def torture(w, share, suite):
    """{subtest: 'success' | 'failure' | 'error' | 'skip'} of one suite."""
    p = subprocess.run(["smbtorture", f"//127.0.0.1/{share}", "-p", str(w.smb_port),
                        "-U", f"{USER}%{PASSWORD}", suite],
                       capture_output=True, text=True, timeout=600)
    results = {}
    for line in p.stdout.splitlines():
        m = re.match(r"^(success|failure|error|skip): (.+?)( \[.*)?$", line)
        if m:
            results[m.group(2).strip()] = m.group(1)
    assert results, f"smbtorture {suite} ran nothing: {p.stdout[-800:]}{p.stderr[-800:]}"
    return results, p.stdout


def passes(w, suite, subtests):
    results, out = torture(w, "semantics", suite)
    failed = {s: results.get(s, "missing") for s in subtests
              if results.get(s) != "success"}
    assert not failed, f"{suite}: {failed}\n{out[-3000:]}"


def test_two_clients_making_the_same_directory_at_once_get_one_success_and_one_collision(w):
    # smb2.create.mkdir-dup: two connections (two smbd processes) send
    # CREATE of one directory at the same moment; multi: the same with
    # several opens.  The index claims the name before S3 is asked.
    passes(w, "smb2.create", ["mkdir-dup", "multi"])


def test_delete_on_close_works_in_each_create_disposition_after_a_security_descriptor_is_set(w):
    # Each subtest first sets a DACL on the folder (accepted, not kept:
    # the volume has no persistent ACLs), then opens with
    # DELETE_ON_CLOSE and checks the file is gone after the close.
    passes(w, "smb2.delete-on-close-perms",
           ["CREATE", "CREATE Existing", "CREATE_IF", "OVERWRITE_IF",
            "FIND_and_set_DOC"])


def test_every_file_system_information_level_answers_as_plain_samba_including_quota(w):
    passes(w, "smb2.getinfo", ["fsinfo"])


def test_a_new_file_shows_the_archive_attribute_as_on_windows(w):
    # Each of these creates a file and checks its attributes are
    # ARCHIVE (0x20), as Windows and plain Samba answer; bucketfs
    # answered NORMAL (0x80).  Set attributes are not kept yet.
    passes(w, "smb2.session", ["reconnect1", "reconnect2", "reauth1", "reauth2"])


def fileinfo(w, *args):
    """tests/integration/fileinfo.py on [semantics]: Windows' SETINFO
    and QUERY_INFO of times and attributes (impacket)."""
    p = subprocess.run(["/usr/bin/python3", os.path.join(TOP, "tests/integration/fileinfo.py"),
                        str(w.smb_port), "semantics", USER, PASSWORD, *map(str, args)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"fileinfo {args}: {p.stdout}{p.stderr[-1500:]}"
    return p.stdout.strip()


def nt(unix_seconds, hundred_ns=0):
    """NT time: 100 ns units since 1601."""
    return (int(unix_seconds) + 11644473600) * 10000000 + hundred_ns


def s3_meta(w, key, wait_for=None, seconds=30):
    """The object's user metadata in S3 ({name: value}), once it holds
    wait_for (the engine uploads after the close)."""
    deadline = time.monotonic() + seconds
    while True:
        p = w.s3tool("head", key, check=False)
        meta = dict(kv.split("=", 1) for kv in p.stdout.split()[2:]) if p.returncode == 0 else {}
        if wait_for is None or wait_for in meta or time.monotonic() > deadline:
            return meta
        time.sleep(0.2)


def test_times_and_attributes_a_copy_sets_are_kept_for_every_process_and_in_s3(w):
    # robocopy / Explorer / shutil.copy2: write, SETINFO of the create
    # and write times and attributes on the same handle, close.
    created = nt(calendar.timegm((2001, 2, 3, 4, 5, 6)), 1234567)
    written = nt(calendar.timegm((2002, 3, 4, 5, 6, 7)), 7654321)
    assert fileinfo(w, "copy", "kept.txt", created, written, "22") == "ok"
    # Another connection is another smbd process: it reads the index.
    got = fileinfo(w, "query", "kept.txt").split()
    assert got == [str(created), str(written), str(written), "0x22"], got
    # S3 has them as user metadata with the upload, in rclone's form.
    meta = s3_meta(w, "semantics/kept.txt", wait_for="x-amz-meta-dosattrib")
    assert meta.get("x-amz-meta-mtime") == "1015218367.765432100", meta
    assert meta.get("x-amz-meta-btime") == "981173106.123456700", meta
    assert meta.get("x-amz-meta-dosattrib") == "0x22", meta
    # A later change of the times alone: kept, and no upload; and
    # still there after smbd (and the index's users) restart.
    later = nt(calendar.timegm((2003, 1, 1, 0, 0, 0)))
    assert fileinfo(w, "set", "kept.txt", 0, later, "0") == "ok"
    w.restart_smbd()
    assert fileinfo(w, "query", "kept.txt").split() == [str(created), str(later), str(later),
                                                     "0x22"]


def test_times_and_attributes_another_s3_tool_stored_show_once_the_file_is_read(w):
    # rclone writes x-amz-meta-mtime as seconds with nine decimals; the
    # listing does not carry it, the first GET does.
    src = f"{w.tmp}/foreign.txt"
    with open(src, "w") as f:
        f.write("from another tool\n")
    env = dict(w.env, S3_META="x-amz-meta-mtime=1600000000.5 x-amz-meta-dosattrib=0x21")
    subprocess.run([f"{TOP}/build/s3tool", "put", "semantics/foreign/f.txt", src],
                   env=env, check=True, capture_output=True)
    w.ctl("semantics", "invalidate", "")  # a new folder in S3: list again
    w.smbclient("semantics", f"get foreign/f.txt {w.tmp}/foreign.back")
    deadline = time.monotonic() + 20
    while True:
        got = fileinfo(w, "query", "foreign/f.txt").split()
        if got[1] == str(nt(1600000000, 5000000)) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got[1:] == [str(nt(1600000000, 5000000)), str(nt(1600000000, 5000000)),
                       "0x21"], got


def test_a_read_only_file_refuses_writes_and_deletes_until_the_attribute_is_cleared(w):
    assert fileinfo(w, "copy", "ro.txt", 0, 0, "21") == "ok"
    assert fileinfo(w, "write", "ro.txt") == "0xc0000022"  # ACCESS_DENIED
    assert fileinfo(w, "delete", "ro.txt") == "0xc0000121"  # CANNOT_DELETE
    assert fileinfo(w, "set", "ro.txt", 0, 0, "20") == "ok"
    assert fileinfo(w, "write", "ro.txt") == "ok"
    assert fileinfo(w, "delete", "ro.txt") == "ok"


def test_a_temporary_file_written_and_closed_with_delete_on_close_is_gone_and_the_close_succeeds(w):
    # The close sets the write time of a file it then deletes.
    assert fileinfo(w, "temp", "scratch.tmp") == "ok"
    assert "scratch.tmp" not in w.ls("semantics")
    assert "semantics/scratch.tmp" not in w.s3tool("ls", "semantics/").stdout


def test_an_attribute_or_time_change_of_a_1_gib_object_copies_nothing(w):
    big = f"{w.tmp}/huge.bin"
    with open(big, "wb") as f:
        f.truncate(1 << 30)
    w.s3tool("putmp", "semantics/big/huge.bin", big, str(256 << 20), "4")
    os.unlink(big)
    w.ctl("semantics", "invalidate", "")
    w.smbclient("semantics", "cd big; ls")
    with open(f"{w.tmp}/front.log", errors="replace") as f:
        mark = len(f.readlines())
    assert fileinfo(w, "set", "big/huge.bin", 0, nt(1500000000), "23") == "ok"
    got = fileinfo(w, "query", "big/huge.bin").split()
    assert got[1:] == [str(nt(1500000000)), str(nt(1500000000)), "0x23"], got
    with open(f"{w.tmp}/front.log", errors="replace") as f:
        asked = [l for l in f.readlines()[mark:] if "big/huge.bin" in l]
    # Kept in the index for now; S3 gets them with the next upload.
    assert not asked, f"S3 was asked: {asked[:3]}"
    w.s3tool("rm", "semantics/big/huge.bin")


def test_a_create_with_extended_attributes_is_answered_as_plain_samba_on_a_file_system_without_them(w):
    # [plainnoxattr] is plain Samba on ramfs, which has no extended
    # attributes (setxattr: ENOTSUP): what Samba answers there is what
    # a file system without EAs gets, and bucketfs, keeping none, must
    # answer the same.  qfile_buffercheck creates a file with an EA
    # buffer; getinfo_access asks for its EAs.
    where = f"{w.dir}/plainnoxattr"
    os.makedirs(where, exist_ok=True)
    subprocess.run(["mount", "-t", "ramfs", "none", where], check=True)
    try:
        ours, out = torture(w, "semantics", "smb2.getinfo")
        plain, pout = torture(w, "plainnoxattr", "smb2.getinfo")
    finally:
        # Lazily: the smbd that served it may still have it open.
        subprocess.run(["umount", "-l", where], check=False)
    for sub in ("qfile_buffercheck", "getinfo_access"):
        assert ours.get(sub) == plain.get(sub), \
            f"{sub}: bucketfs {ours.get(sub)}, plain Samba without EAs {plain.get(sub)}\n{out[-1500:]}\n{pout[-1500:]}"
    print(f"    # smb2.getinfo, bucketfs / plain Samba on ramfs: "
          f"{sum(r == 'success' for r in ours.values())}/{sum(r == 'success' for r in plain.values())}",
          flush=True)


def subtest_output(out, name):
    """What smbtorture printed for one subtest: from its "test:" line to
    its outcome, with the reason of a failure."""
    n = re.escape(name)
    m = re.search(rf"^test: {n}$.*?^(?:success|failure|error|skip): {n}(?: \[$.*?^\]$)?",
                  out, re.M | re.S)
    return m.group(0)[-2000:] if m else f"(no output of {name})"


# smb2.create's bench-path-contention-shared, in the floor, is a benchmark:
# four connections open and close one path for 10 s.  Beside the other
# lane it failed once (CI, 2026-12-04, reason not kept; not reproduced in
# seven runs under CPU load or beside the kill loops): it runs alone.
@pytest.mark.alone
def test_smbtorture_suites_of_issue_23_pass_counts_against_plain_samba(w):
    rows, results_of, out_of, only_plain = [], {}, {}, []
    # Plain Samba's counts come from another share of the same smbd, in a
    # thread of their own meanwhile: smbtorture mostly waits for answers.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        plain = [pool.submit(torture, w, "plainsemantics", suite) for suite in SUITES]
        for suite in SUITES:
            results_of[suite], out_of[suite] = torture(w, "semantics", suite)
        plain = {suite: f.result()[0] for suite, f in zip(SUITES, plain)}
    for suite in SUITES:
        counts = []
        passed = []
        for results in (results_of[suite], plain[suite]):
            passed.append({n for n, r in results.items() if r == "success"})
            counts.append(len(passed[-1]))
        rows.append(f"{suite} {counts[0]}/{counts[1]}")
        if passed[1] - passed[0]:
            only_plain.append(f"{suite}: {sorted(passed[1] - passed[0])}")
    print("    # smbtorture passes, bucketfs/plain Samba: " + ", ".join(rows), flush=True)
    print("    # passed by plain Samba only: " + ("; ".join(only_plain) or "none"), flush=True)
    # What bucketfs passes every time is the floor: a change that loses
    # one of these is a regression of file semantics.  Named, not
    # counted: a count hides one subtest lost and another gained.
    missing = [(suite, name) for suite, names in FLOOR.items()
               for name in names if results_of[suite].get(name) != "success"]
    # A subtest smbtorture never reached (no line of it at all, twice in
    # ~25 CI runs: smb2.create's bench-path-contention-shared) runs
    # again alone, once; one that ran and failed counts as it is.
    for suite, name in [m for m in missing if m[1] not in results_of[m[0]]]:
        again, out = torture(w, "semantics", f"{suite}.{name}")
        print(f"    # {suite} {name}: not reached, run again alone: "
              f"{again.get(name, 'not reached')}", flush=True)
        if again.get(name) == "success":
            missing.remove((suite, name))
        else:
            out_of[suite] += out
    assert not missing, f"no longer pass: {[f'{s} {n}' for s, n in missing]}\n" + \
        "\n".join(subtest_output(out_of[s], n) for s, n in missing)
