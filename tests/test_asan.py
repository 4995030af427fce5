"""The module under AddressSanitizer and UndefinedBehaviorSanitizer, in a real smbd.

make builds build/asan/bucketfs_asan.so (module and lib/ compiled with
-fsanitize=address,undefined, registered as "vfs objects = bucketfs_asan")
and installs it next to the real module.  Debian's smbd is not
instrumented, so it runs with the sanitizer runtimes preloaded: ASan must
own malloc from the first allocation, which a runtime dlopen()ed with the
module at tree connect would be too late for.  smbd forks a child per
client; the children inherit the preloaded runtime and load the module.

The clients do what the other sections do, on shares of their own: list,
read every seeded object, random ranges, writes below and above the
multipart threshold, rename over an existing file, delete, mkdir/rmdir,
partial writes, a reload and a restart.  Then every sanitizer log must be
absent after each test and once smbd has stopped, and the preload must be
shown to have been active, or a quiet log would prove nothing.
"""
import glob
import hashlib
import os
import re
import signal
import subprocess
import time
import urllib.parse

import pytest

from smbls import parse_ls
from world import B, BUCKET, USER, PASSWORD, make_file, sh, sha256

# What a sanitizer report looks like where it missed log_path: smbd points
# its stderr at its log file (before the log is open, at the output the
# world keeps).
REPORT = re.compile(r"runtime error:|ERROR: AddressSanitizer|SUMMARY: \w+Sanitizer|"
                    r"==\d+==ERROR:|PANIC|INTERNAL ERROR")


def runtime(name):
    """The real file of a sanitizer runtime, as the module's DT_NEEDED names it."""
    p = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True)
    path = os.path.realpath(p.stdout.strip())
    assert os.path.isabs(p.stdout.strip()) and os.path.exists(path), \
        f"gcc does not know {name}: {p.stdout}{p.stderr}"
    return path


class Asan:
    """An smbd with the sanitizer runtimes preloaded and shares of the
    sanitized module (vfs objects = bucketfs_asan)."""

    def __init__(self, w):
        self.w = w
        self.t = f"{w.tmp}/asan-work"
        self.logs = f"{w.tmp}/asan-logs"
        os.makedirs(self.t, exist_ok=True)
        os.makedirs(self.logs, exist_ok=True)
        # A child that switched to another uid must still be able to write its report.
        os.chmod(self.logs, 0o1777)
        self.stats = {"files": 0, "bytes": 0}
        self.began = time.time()
        modulesdir = re.search(r"MODULESDIR: (\S+)", sh(["smbd", "-b"]).stdout).group(1)
        self.built = f"{B}/asan/bucketfs_asan.so"
        self.installed = f"{modulesdir}/vfs/bucketfs_asan.so"
        env = dict(os.environ)
        env.pop("AWS_ACCESS_KEY_ID", None)
        env.pop("AWS_SECRET_ACCESS_KEY", None)
        # GCC links the UBSan runtime apart from ASan's (the module names both).
        # libubsan goes first: with libasan first, UBSan's checks bind to the
        # copy inside libasan, which ignores log_path and writes to stderr (into
        # log.smbd).  libasan must still be loaded before smbd's first malloc,
        # not with the module at tree connect; verify_asan_link_order=0 accepts
        # it second (libubsan defines no allocator for it to miss).
        env["LD_PRELOAD"] = f"{runtime('libubsan.so')} {runtime('libasan.so')}"
        # detect_leaks=0: uninstrumented smbd keeps its talloc trees until exit
        # on purpose.  abort_on_error=0: a report ends the child with an exit
        # code instead of a core.  Reports go to files named by pid, one per child.
        env["ASAN_OPTIONS"] = (f"verify_asan_link_order=0:detect_leaks=0:abort_on_error=0:"
                               f"log_path={self.logs}/asan")
        env["UBSAN_OPTIONS"] = f"print_stacktrace=1:halt_on_error=1:log_path={self.logs}/ubsan"
        self.env = env
        common = (f"  vfs objects = bucketfs_asan\n  bucketfs:endpoint = {w.endpoint}\n"
                  f"  bucketfs:path style = yes\n  bucketfs:credentials file = {w.tmp}/creds\n"
                  f"  bucketfs:bucket = {BUCKET}\n")
        # Writable shares: multipart from 6M, in 5M parts.
        # close = s3: these tests look in S3 when the close returns.
        writable = (f"{common}  bucketfs:multipart threshold = 6M\n"
                    "  bucketfs:part size = 5M\n  read only = no\n  bucketfs:close = s3\n")
        t = self.t
        self.shares = f"""[asanread]
  path = /bucketfs/asanread
{common}  bucketfs:cache dir = {t}/cache-read
  bucketfs:readahead = 8
[asansync]
  path = /bucketfs/asansync
{common}  bucketfs:cache dir = {t}/cache-sync
  # smbd calls pread, not pread_send
  aio read size = 0
[asanrw]
  path = /bucketfs/asanrw
{writable}  bucketfs:prefix = asan-rw
  bucketfs:cache dir = {t}/cache-rw
[asanstream]
  path = /bucketfs/asanstream
{writable}  bucketfs:prefix = asan-stream
  bucketfs:cache dir = {t}/cache-stream
  bucketfs:stream parts = yes
"""
        self.starts = 0
        self.start()

    def start(self):
        self.starts += 1
        self.port, self.log = self.w.start_extra_smbd("asan", self.shares, self.env)
        # Its pid is smbd's parent process (--foreground, no wrapper).
        self.proc = self.w.extra["asan"]
        self.conf = f"{self.w.tmp}/asan/smb.conf"

    def stop(self):
        """SIGTERM, so that the children's disconnects have run before the
        logs are read; the smbd's own output kept for the scan."""
        os.killpg(self.proc.pid, signal.SIGTERM)  # the children end with it
        self.proc.wait(timeout=60)
        os.replace(f"{self.w.tmp}/smbd-asan.log", f"{self.w.tmp}/smbd-asan-{self.starts}.log")

    def reports(self):
        """Every sanitizer report so far, as text ("" if none)."""
        detail = ""
        for path in sorted(glob.glob(f"{self.logs}/asan.*") + glob.glob(f"{self.logs}/ubsan.*")):
            with open(path, errors="replace") as f:
                detail += f"--- {path}\n{f.read()[:6000]}\n"
        outputs = glob.glob(f"{self.w.tmp}/smbd-asan*.log")
        for path in [self.log, *outputs]:
            if not os.path.exists(path):
                continue
            with open(path, errors="replace") as f:
                lines = f.read().splitlines()
            for i, line in enumerate(lines):
                if REPORT.search(line):
                    detail += f"--- {path}:{i + 1}\n" + "\n".join(lines[i:i + 30]) + "\n"
                    break
        return detail

    def smb(self, share, commands, check=True, timeout=20):
        # -t: smbclient's own per-request timeout (20 s unless told), which
        # a cold listing of 10,000 objects under ASan can outlast.
        return sh(["smbclient", f"//127.0.0.1/{share}", "-p", str(self.port),
                   "-U", f"{USER}%{PASSWORD}", "-m", "SMB3", "-t", str(timeout),
                   "-c", commands], check=check, timeout=max(300, timeout + 60))

    def url(self, share, path):
        return f"smb://127.0.0.1:{self.port}/{share}/{urllib.parse.quote(path)}"

    def smb_env(self):
        return dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD)

    def ls(self, share, path="", timeout=20):
        return parse_ls(self.smb(share, f'cd "{path}"; ls' if path else "ls",
                                 timeout=timeout).stdout)

    def verified(self, path, want_sha, size):
        assert sha256(path) == want_sha, f"{path} differs"
        self.stats["files"] += 1
        self.stats["bytes"] += size

    def make(self, name, size):
        return make_file(f"{self.t}/{name}", size)

    def children(self):
        """pids of smbd's direct children (one per client, plus its helpers)."""
        pids = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(stat) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == self.proc.pid:
                pids.append(int(stat.split("/")[2]))
        return pids

    @staticmethod
    def quit_client(client):
        try:
            client.communicate("quit\n", timeout=120)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            client.kill()  # its child ended under it; the logs will say why
            client.wait()

    @staticmethod
    def maps(pid):
        try:
            with open(f"/proc/{pid}/maps") as f:
                return f.read()
        except OSError:
            return ""


@pytest.fixture(scope="module")
def asan(world, sources):
    a = Asan(world)  # once the seeded objects are in S3 (sources)
    yield a
    # The last word: no report once smbd has stopped and every child with it.
    a.stop()
    print(f"    # under ASan+UBSan: {a.stats['files']} files read back and "
          f"{a.stats['bytes']} bytes verified in {time.time() - a.began:.0f} s")
    detail = a.reports()
    assert not detail, detail


@pytest.fixture(autouse=True)
def no_sanitizer_report(asan):
    """After each test: no AddressSanitizer or UndefinedBehaviorSanitizer
    report from smbd (its children end with their clients' connections)."""
    yield
    detail = asan.reports()
    assert not detail, detail


def test_asan_the_installed_sanitizer_module_is_the_one_just_built(asan):
    assert os.path.exists(asan.built), f"{asan.built} missing: make asan"
    assert os.path.exists(asan.installed) and sha256(asan.installed) == sha256(asan.built), \
        f"{asan.installed} is not {asan.built}: make install-asan"


def test_asan_the_preload_is_active_in_smbd_and_in_the_child_running_the_module(asan):
    # The parent never tree-connects, so libasan in its map can only have
    # come from LD_PRELOAD (a runtime pulled in by dlopen of the module
    # would sit next to bucketfs_asan.so, and ASan would not own malloc).
    parent = asan.maps(asan.proc.pid)
    assert "libasan.so" in parent, "libasan is not mapped in smbd: the preload failed"
    assert "bucketfs_asan.so" not in parent, "the parent loaded the module itself"
    # A client holding a tree connect keeps its child alive to look at.
    client = subprocess.Popen(["smbclient", "//127.0.0.1/asanread", "-p", str(asan.port),
                               "-U", f"{USER}%{PASSWORD}", "-m", "SMB3"],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        client.stdin.write("ls\n")
        client.stdin.flush()
        # Until its child has connected the tree (bounded; the assertion
        # is on what is mapped, not on how long it took).
        end = time.time() + 60
        found = []
        while not found and time.time() < end and client.poll() is None:
            time.sleep(0.2)
            found = [pid for pid in asan.children() if "bucketfs_asan.so" in asan.maps(pid)]
        assert found, f"no child of smbd {asan.proc.pid} has the module mapped"
        for pid in found:
            assert "libasan.so" in asan.maps(pid) and "libubsan.so" in asan.maps(pid), \
                f"child {pid} runs the module without the sanitizer runtimes"
            with open(f"/proc/{pid}/environ", "rb") as f:
                assert b"LD_PRELOAD=" in f.read(), f"child {pid} has no LD_PRELOAD"
        print(f"    # children with bucketfs_asan.so and libasan mapped: {found}")
    finally:
        asan.quit_client(client)


def test_asan_listings_show_every_seeded_object_with_its_size(asan, sources):
    got = asan.ls("asanread")
    for key, src in sources.items():
        top = key.split("/")[0]
        if "/" in key:
            assert got.get(top, (False,))[0], f"{top} not listed as a directory: {got}"
        else:
            assert got.get(key) == (False, os.path.getsize(src)), f"{key}: {got.get(key)}"
    deep = os.path.getsize(sources["tree/a/b/c/deep.txt"])
    assert asan.ls("asanread", "tree/a/b/c") == {"deep.txt": (False, deep)}
    # The read section seeds it (seeding here would cost ONLY=asan most
    # of its time budget); cold from S3 into this share's own index.
    if "many" in got:
        many = asan.ls("asanread", "many", timeout=240)
        assert len(many) == 10000, f"{len(many)} entries"
        assert all(many.get(f"obj{i:05d}") == (False, 37) for i in range(10000))
        print("    # listed the root, a deep directory and the 10,000 objects of many/")
    else:
        print("    # listed the root and a deep directory; many/ (10,000 objects) "
              "is not seeded without the read section")


def test_asan_every_seeded_object_reads_back_byte_identical(asan, sources):
    # One connection for all: a cold cache, readahead, every size down to 0.
    outs = {key: f"{asan.t}/read{i}" for i, key in enumerate(sources)}
    cmds = []
    for key, out in outs.items():
        d, _, name = key.rpartition("/")
        cmds.append((f'cd "/{d}"; ' if d else 'cd /; ') + f'get "{name}" "{out}"')
    asan.smb("asanread", "; ".join(cmds))
    for key, out in outs.items():
        # The read section replaces some objects in S3 (changing/):
        # what S3 holds now is the truth, whatever was seeded.
        asan.verified(out, asan.w.s3_sha256(key), os.path.getsize(out))
        os.unlink(out)


def test_asan_random_ranges_asynchronous_and_synchronous_match_the_source(asan, sources):
    for share, n, seed in (("asanread", 200, 4243), ("asansync", 100, 78)):
        p = sh([f"{B}/tests/smbread", asan.url(share, "fifty.bin"), "--random", str(n),
                  str(seed), sources["fifty.bin"]], env=asan.smb_env(), check=False)
        assert p.returncode == 0 and " 0 mismatches" in p.stdout, p.stdout + p.stderr
        m = re.search(r"(\d+) ranges, (\d+) bytes compared", p.stdout)
        asan.stats["bytes"] += int(m.group(2))
        print(f"    # {share}: {p.stdout.strip()}")


def test_asan_writes_small_and_multipart_reach_s3_and_read_back(asan):
    small = asan.make("small.bin", 300001)
    big = asan.make("big.bin", 13 << 20)  # 3 parts of 5M at a threshold of 6M
    asan.smb("asanrw", f"put {small} small.bin; mkdir d; put {big} d/big.bin")
    for key, src in (("asan-rw/small.bin", small), ("asan-rw/d/big.bin", big)):
        assert asan.w.s3_sha256(key) == sha256(src), f"{key} in S3 differs"
    with open(f"{asan.w.tmp}/front.log") as f:
        parts = sum(1 for l in f if l.startswith("PUT /")
                    and "asan-rw/d/big.bin?partNumber" in l)
    assert parts == 3, f"{parts} parts uploaded, not a multipart upload of 3"
    asan.smb("asanrw", f"get small.bin {asan.t}/small.back; get d/big.bin {asan.t}/big.back")
    asan.verified(f"{asan.t}/small.back", sha256(small), 300001)
    asan.verified(f"{asan.t}/big.back", sha256(big), 13 << 20)


def test_asan_streamed_parts_rewritten_and_cut_reach_s3_right(asan):
    src = asan.make("stream.bin", 23 << 20)
    patch = asan.make("stream.patch", 1 << 20)
    env = dict(asan.smb_env(), SMBWRITE_PAUSE="3", SMBWRITE_HOLD="2",
               SMBWRITE_CUT=str((17 << 20) + 5))
    sh([f"{B}/tests/smbwrite", asan.url("asanstream", "s.bin"), "create", src,
          str(6 << 20), patch], env=env)
    want = bytearray(open(src, "rb").read())
    want[6 << 20:7 << 20] = open(patch, "rb").read()
    want = want[:(17 << 20) + 5]
    assert asan.w.s3_sha256("asan-stream/s.bin") == hashlib.sha256(want).hexdigest()
    with open(f"{asan.w.tmp}/front.log") as f:
        parts = [l for l in f if l.startswith("PUT /") and "asan-stream/s.bin?partNumber" in l]
    assert len(parts) > 4, f"only {len(parts)} parts: nothing streamed"


def test_asan_partial_overwrite_append_and_truncate(asan):
    base = asan.make("base.bin", 2 << 20)
    asan.smb("asanrw", f"put {base} edit.bin")
    patch = asan.make("patch.bin", 4096)
    sh([f"{B}/tests/smbwrite", asan.url("asanrw", "edit.bin"), "write", "1000000", patch],
         env=asan.smb_env())
    tail = asan.make("tail.bin", 12345)
    sh([f"{B}/tests/smbwrite", asan.url("asanrw", "edit.bin"), "append", tail], env=asan.smb_env())
    want = bytearray(open(base, "rb").read())
    want[1000000:1000000 + 4096] = open(patch, "rb").read()
    want += open(tail, "rb").read()
    assert asan.w.s3_sha256("asan-rw/edit.bin") == hashlib.sha256(want).hexdigest()
    sh([f"{B}/tests/smbwrite", asan.url("asanrw", "edit.bin"), "truncate", "777"],
         env=asan.smb_env())
    assert asan.w.s3_sha256("asan-rw/edit.bin") == hashlib.sha256(want[:777]).hexdigest()


def test_asan_rename_over_an_existing_file_delete_mkdir_rmdir(asan):
    old = asan.make("old.pt", 1000)
    new = asan.make("new.pt", 7 << 20)
    asan.smb("asanrw", f"mkdir run; put {old} run/ckpt.pt; put {new} run/ckpt.pt.tmp; "
                  "rename run/ckpt.pt.tmp run/ckpt.pt -f")
    assert asan.w.s3_sha256("asan-rw/run/ckpt.pt") == sha256(new), "not replaced"
    keys = asan.w.s3tool("ls", "asan-rw/").stdout
    assert "asan-rw/run/ckpt.pt.tmp" not in keys, keys
    asan.smb("asanrw", f"put {old} gone.bin; rm gone.bin; mkdir empty; rmdir empty")
    keys = asan.w.s3tool("ls", "asan-rw/").stdout
    assert "asan-rw/gone.bin" not in keys and "asan-rw/empty/" not in keys, keys
    p = asan.smb("asanrw", "rmdir run", check=False)
    assert "NT_STATUS_DIRECTORY_NOT_EMPTY" in p.stdout + p.stderr, p.stdout + p.stderr
    asan.smb("asanrw", "rm run/ckpt.pt; rmdir run")
    assert "run" not in asan.ls("asanrw"), "run still listed"


def test_asan_a_reload_is_followed_by_a_running_connection(asan, sources):
    conf = open(asan.conf).read()
    log_start = os.path.getsize(asan.log)
    client = subprocess.Popen(["smbclient", "//127.0.0.1/asanread", "-p", str(asan.port),
                               "-U", f"{USER}%{PASSWORD}", "-m", "SMB3"],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        client.stdin.write(f"get fifty.bin {asan.t}/r.tmp\n")
        client.stdin.flush()
        # Reload only once its child has connected: a child forked after
        # the reload starts with the new value and has no change to follow.
        end = time.time() + 60
        connected = False
        while not connected and time.time() < end and client.poll() is None:
            time.sleep(0.2)
            with open(asan.log, errors="replace") as f:
                f.seek(log_start)
                connected = "share asanread serves" in f.read()
        assert connected, "the client's tree connect is not in the log"
        with open(asan.conf, "w") as f:
            f.write(conf.replace("bucketfs:readahead = 8", "bucketfs:readahead = 2"))
        sh(["smbcontrol", "-s", asan.conf, "smbd", "reload-config"])
        # The module looks again when used, at most once a second: keep
        # using it until it says so (bounded; the assertion is on the line).
        want = "share asanread: 'readahead' is now 2 (was 8)"
        end = time.time() + 60
        seen = False
        while not seen and time.time() < end and client.poll() is None:
            client.stdin.write("ls\n")
            client.stdin.flush()
            time.sleep(0.5)
            with open(asan.log, errors="replace") as f:
                f.seek(log_start)
                seen = want in f.read()
        assert seen, f"not followed: {want}"
        assert client.poll() is None, "the client connection was dropped"
    finally:
        with open(asan.conf, "w") as f:
            f.write(conf)
        sh(["smbcontrol", "-s", asan.conf, "smbd", "reload-config"], check=False)
        asan.quit_client(client)
    asan.verified(f"{asan.t}/r.tmp", sha256(sources["fifty.bin"]), 50 << 20)


def test_asan_after_a_restart_the_caches_and_the_journal_serve(asan, sources):
    # What the first smbd leaves: a cached range, a multipart file, a file
    # cut to 777 bytes.
    big = asan.make("restart-big.bin", 13 << 20)
    cut = asan.make("restart-cut.bin", 5000)
    asan.smb("asanrw", f"mkdir restart; put {big} restart/big.bin; put {cut} restart/cut.bin")
    sh([f"{B}/tests/smbwrite", asan.url("asanrw", "restart/cut.bin"), "truncate", "777"],
       env=asan.smb_env())
    sh([f"{B}/tests/smbread", asan.url("asanread", "mib plus one.bin"), "4096", "300000"],
       env=asan.smb_env(), text=False)
    asan.stop()  # the children end with it: disconnects
    asan.start()
    data = sh([f"{B}/tests/smbread", asan.url("asanread", "mib plus one.bin"), "4096",
               "300000"], env=asan.smb_env(), text=False).stdout
    with open(sources["mib plus one.bin"], "rb") as f:
        f.seek(4096)
        assert data == f.read(300000), "warm range differs"
    asan.stats["bytes"] += len(data)
    asan.smb("asanrw", f"get restart/big.bin {asan.t}/big.back2")
    asan.verified(f"{asan.t}/big.back2", sha256(big), 13 << 20)
    assert asan.ls("asanrw", "restart").get("cut.bin") == (False, 777)
