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
absent, and the preload must be shown to have been active, or a quiet log
would prove nothing.
"""
import glob
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse

from smbls import parse_ls


def sanitized_smbd(w, sources, record, test):
    # run.py's constants and helpers, whether it runs as __main__ or not.
    h = sys.modules[type(w).__module__]
    t = f"{w.tmp}/asan-work"
    logs = f"{w.tmp}/asan-logs"
    os.makedirs(t, exist_ok=True)
    os.makedirs(logs, exist_ok=True)
    # A child that switched to another uid must still be able to write its report.
    os.chmod(logs, 0o1777)
    stats = {"files": 0, "bytes": 0}
    began = time.time()
    state = {}

    def runtime(name):
        """The real file of a sanitizer runtime, as the module's DT_NEEDED names it."""
        p = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True)
        path = os.path.realpath(p.stdout.strip())
        assert os.path.isabs(p.stdout.strip()) and os.path.exists(path), \
            f"gcc does not know {name}: {p.stdout}{p.stderr}"
        return path

    modulesdir = re.search(r"MODULESDIR: (\S+)", h.sh(["smbd", "-b"]).stdout).group(1)
    built = f"{h.B}/asan/bucketfs_asan.so"
    installed = f"{modulesdir}/vfs/bucketfs_asan.so"

    @test
    def asan_the_installed_sanitizer_module_is_the_one_just_built():
        assert os.path.exists(built), f"{built} missing: make asan"
        assert os.path.exists(installed) and h.sha256(installed) == h.sha256(built), \
            f"{installed} is not {built}: make install-asan"

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
                           f"log_path={logs}/asan")
    env["UBSAN_OPTIONS"] = f"print_stacktrace=1:halt_on_error=1:log_path={logs}/ubsan"

    common = (f"  vfs objects = bucketfs_asan\n  bucketfs:endpoint = {w.endpoint}\n"
              f"  bucketfs:path style = yes\n  bucketfs:credentials file = {w.tmp}/creds\n"
              f"  bucketfs:bucket = {h.BUCKET}\n")
    # Writable shares: multipart from 6M, in 5M parts.
    # close = s3: these tests look in S3 when the close returns.
    writable = (f"{common}  bucketfs:multipart threshold = 6M\n"
                "  bucketfs:part size = 5M\n  read only = no\n  bucketfs:close = s3\n")
    shares = f"""[asanread]
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

    def start():
        port, log = w.start_extra_smbd("asan", shares, env)
        # Its pid is smbd's parent process (--foreground, no wrapper).
        state.update(port=port, log=log, proc=w.extra["asan"], conf=f"{w.tmp}/asan/smb.conf")

    def smb(share, commands, check=True, timeout=20):
        # -t: smbclient's own per-request timeout (20 s unless told), which
        # a cold listing of 10,000 objects under ASan can outlast.
        return h.sh(["smbclient", f"//127.0.0.1/{share}", "-p", str(state["port"]),
                     "-U", f"{h.USER}%{h.PASSWORD}", "-m", "SMB3", "-t", str(timeout),
                     "-c", commands], check=check, timeout=max(300, timeout + 60))

    def url(share, path):
        return f"smb://127.0.0.1:{state['port']}/{share}/{urllib.parse.quote(path)}"

    def smb_env():
        return dict(os.environ, SMB_USER=h.USER, SMB_PASS=h.PASSWORD)

    def ls(share, path="", timeout=20):
        return parse_ls(smb(share, f'cd "{path}"; ls' if path else "ls",
                            timeout=timeout).stdout)

    def verified(path, want_sha, size):
        assert h.sha256(path) == want_sha, f"{path} differs"
        stats["files"] += 1
        stats["bytes"] += size

    def make(name, size):
        path = f"{t}/{name}"
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        return path

    def children():
        """pids of smbd's direct children (one per client, plus its helpers)."""
        pids = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(stat) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == state["proc"].pid:
                pids.append(int(stat.split("/")[2]))
        return pids

    def quit_client(client):
        try:
            client.communicate("quit\n", timeout=120)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            client.kill()  # its child ended under it; the logs will say why
            client.wait()

    def maps(pid):
        try:
            with open(f"/proc/{pid}/maps") as f:
                return f.read()
        except OSError:
            return ""

    try:
        start()
    except Exception as e:
        record("asan: smbd starts with the sanitizer runtimes preloaded", False, str(e))
        return

    @test
    def asan_the_preload_is_active_in_smbd_and_in_the_child_running_the_module():
        # The parent never tree-connects, so libasan in its map can only have
        # come from LD_PRELOAD (a runtime pulled in by dlopen of the module
        # would sit next to bucketfs_asan.so, and ASan would not own malloc).
        parent = maps(state["proc"].pid)
        assert "libasan.so" in parent, "libasan is not mapped in smbd: the preload failed"
        assert "bucketfs_asan.so" not in parent, "the parent loaded the module itself"
        # A client holding a tree connect keeps its child alive to look at.
        client = subprocess.Popen(["smbclient", "//127.0.0.1/asanread", "-p", str(state["port"]),
                                   "-U", f"{h.USER}%{h.PASSWORD}", "-m", "SMB3"],
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
                found = [pid for pid in children() if "bucketfs_asan.so" in maps(pid)]
            assert found, f"no child of smbd {state['proc'].pid} has the module mapped"
            for pid in found:
                assert "libasan.so" in maps(pid) and "libubsan.so" in maps(pid), \
                    f"child {pid} runs the module without the sanitizer runtimes"
                with open(f"/proc/{pid}/environ", "rb") as f:
                    assert b"LD_PRELOAD=" in f.read(), f"child {pid} has no LD_PRELOAD"
            print(f"    # children with bucketfs_asan.so and libasan mapped: {found}")
        finally:
            quit_client(client)

    @test
    def asan_listings_show_every_seeded_object_with_its_size():
        got = ls("asanread")
        for key, src in sources.items():
            top = key.split("/")[0]
            if "/" in key:
                assert got.get(top, (False,))[0], f"{top} not listed as a directory: {got}"
            else:
                assert got.get(key) == (False, os.path.getsize(src)), f"{key}: {got.get(key)}"
        deep = os.path.getsize(sources["tree/a/b/c/deep.txt"])
        assert ls("asanread", "tree/a/b/c") == {"deep.txt": (False, deep)}
        # The read section seeds it (seeding here would cost ONLY=asan most
        # of its time budget); cold from S3 into this share's own index.
        if "many" in got:
            many = ls("asanread", "many", timeout=240)
            assert len(many) == 10000, f"{len(many)} entries"
            assert all(many.get(f"obj{i:05d}") == (False, 37) for i in range(10000))
            print("    # listed the root, a deep directory and the 10,000 objects of many/")
        else:
            print("    # listed the root and a deep directory; many/ (10,000 objects) "
                  "is not seeded without the read section")

    @test
    def asan_every_seeded_object_reads_back_byte_identical():
        # One connection for all: a cold cache, readahead, every size down to 0.
        outs = {key: f"{t}/read{i}" for i, key in enumerate(sources)}
        cmds = []
        for key, out in outs.items():
            d, _, name = key.rpartition("/")
            cmds.append((f'cd "/{d}"; ' if d else 'cd /; ') + f'get "{name}" "{out}"')
        smb("asanread", "; ".join(cmds))
        for key, out in outs.items():
            # The read section replaces some objects in S3 (changing/):
            # what S3 holds now is the truth, whatever was seeded.
            verified(out, w.s3_sha256(key), os.path.getsize(out))
            os.unlink(out)

    @test
    def asan_random_ranges_asynchronous_and_synchronous_match_the_source():
        for share, n, seed in (("asanread", 200, 4243), ("asansync", 100, 78)):
            p = h.sh([f"{h.B}/tests/smbread", url(share, "fifty.bin"), "--random", str(n),
                      str(seed), sources["fifty.bin"]], env=smb_env(), check=False)
            assert p.returncode == 0 and " 0 mismatches" in p.stdout, p.stdout + p.stderr
            m = re.search(r"(\d+) ranges, (\d+) bytes compared", p.stdout)
            stats["bytes"] += int(m.group(2))
            print(f"    # {share}: {p.stdout.strip()}")

    @test
    def asan_writes_small_and_multipart_reach_s3_and_read_back():
        small = make("small.bin", 300001)
        big = make("big.bin", 13 << 20)  # 3 parts of 5M at a threshold of 6M
        smb("asanrw", f"put {small} small.bin; mkdir d; put {big} d/big.bin")
        for key, src in (("asan-rw/small.bin", small), ("asan-rw/d/big.bin", big)):
            assert w.s3_sha256(key) == h.sha256(src), f"{key} in S3 differs"
        with open(f"{w.tmp}/front.log") as f:
            parts = sum(1 for l in f if l.startswith("PUT /")
                        and "asan-rw/d/big.bin?partNumber" in l)
        assert parts == 3, f"{parts} parts uploaded, not a multipart upload of 3"
        smb("asanrw", f"get small.bin {t}/small.back; get d/big.bin {t}/big.back")
        verified(f"{t}/small.back", h.sha256(small), 300001)
        verified(f"{t}/big.back", h.sha256(big), 13 << 20)

    @test
    def asan_streamed_parts_rewritten_and_cut_reach_s3_right():
        src = make("stream.bin", 23 << 20)
        patch = make("stream.patch", 1 << 20)
        env = dict(smb_env(), SMBWRITE_PAUSE="3", SMBWRITE_HOLD="2",
                   SMBWRITE_CUT=str((17 << 20) + 5))
        h.sh([f"{h.B}/tests/smbwrite", url("asanstream", "s.bin"), "create", src,
              str(6 << 20), patch], env=env)
        want = bytearray(open(src, "rb").read())
        want[6 << 20:7 << 20] = open(patch, "rb").read()
        want = want[:(17 << 20) + 5]
        assert w.s3_sha256("asan-stream/s.bin") == hashlib.sha256(want).hexdigest()
        with open(f"{w.tmp}/front.log") as f:
            parts = [l for l in f if l.startswith("PUT /") and "asan-stream/s.bin?partNumber" in l]
        assert len(parts) > 4, f"only {len(parts)} parts: nothing streamed"

    @test
    def asan_partial_overwrite_append_and_truncate():
        base = make("base.bin", 2 << 20)
        smb("asanrw", f"put {base} edit.bin")
        patch = make("patch.bin", 4096)
        h.sh([f"{h.B}/tests/smbwrite", url("asanrw", "edit.bin"), "write", "1000000", patch],
             env=smb_env())
        tail = make("tail.bin", 12345)
        h.sh([f"{h.B}/tests/smbwrite", url("asanrw", "edit.bin"), "append", tail], env=smb_env())
        want = bytearray(open(base, "rb").read())
        want[1000000:1000000 + 4096] = open(patch, "rb").read()
        want += open(tail, "rb").read()
        assert w.s3_sha256("asan-rw/edit.bin") == hashlib.sha256(want).hexdigest()
        h.sh([f"{h.B}/tests/smbwrite", url("asanrw", "edit.bin"), "truncate", "777"],
             env=smb_env())
        assert w.s3_sha256("asan-rw/edit.bin") == hashlib.sha256(want[:777]).hexdigest()

    @test
    def asan_rename_over_an_existing_file_delete_mkdir_rmdir():
        old = make("old.pt", 1000)
        new = make("new.pt", 7 << 20)
        smb("asanrw", f"mkdir run; put {old} run/ckpt.pt; put {new} run/ckpt.pt.tmp; "
                      "rename run/ckpt.pt.tmp run/ckpt.pt -f")
        assert w.s3_sha256("asan-rw/run/ckpt.pt") == h.sha256(new), "not replaced"
        keys = w.s3tool("ls", "asan-rw/").stdout
        assert "asan-rw/run/ckpt.pt.tmp" not in keys, keys
        smb("asanrw", "rm small.bin; mkdir empty; rmdir empty")
        keys = w.s3tool("ls", "asan-rw/").stdout
        assert "asan-rw/small.bin" not in keys and "asan-rw/empty/" not in keys, keys
        p = smb("asanrw", "rmdir run", check=False)
        assert "NT_STATUS_DIRECTORY_NOT_EMPTY" in p.stdout + p.stderr, p.stdout + p.stderr
        smb("asanrw", "rm run/ckpt.pt; rmdir run")
        assert "run" not in ls("asanrw"), "run still listed"

    @test
    def asan_a_reload_is_followed_by_a_running_connection():
        conf = open(state["conf"]).read()
        log_start = os.path.getsize(state["log"])
        client = subprocess.Popen(["smbclient", "//127.0.0.1/asanread", "-p", str(state["port"]),
                                   "-U", f"{h.USER}%{h.PASSWORD}", "-m", "SMB3"],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, text=True)
        try:
            client.stdin.write(f"get fifty.bin {t}/r.tmp\n")
            client.stdin.flush()
            # Reload only once its child has connected: a child forked after
            # the reload starts with the new value and has no change to follow.
            end = time.time() + 60
            connected = False
            while not connected and time.time() < end and client.poll() is None:
                time.sleep(0.2)
                with open(state["log"], errors="replace") as f:
                    f.seek(log_start)
                    connected = "share asanread serves" in f.read()
            assert connected, "the client's tree connect is not in the log"
            with open(state["conf"], "w") as f:
                f.write(conf.replace("bucketfs:readahead = 8", "bucketfs:readahead = 2"))
            h.sh(["smbcontrol", "-s", state["conf"], "smbd", "reload-config"])
            # The module looks again when used, at most once a second: keep
            # using it until it says so (bounded; the assertion is on the line).
            want = "share asanread: 'readahead' is now 2 (was 8)"
            end = time.time() + 60
            seen = False
            while not seen and time.time() < end and client.poll() is None:
                client.stdin.write("ls\n")
                client.stdin.flush()
                time.sleep(0.5)
                with open(state["log"], errors="replace") as f:
                    f.seek(log_start)
                    seen = want in f.read()
            assert seen, f"not followed: {want}"
            assert client.poll() is None, "the client connection was dropped"
        finally:
            with open(state["conf"], "w") as f:
                f.write(conf)
            h.sh(["smbcontrol", "-s", state["conf"], "smbd", "reload-config"], check=False)
            quit_client(client)
        verified(f"{t}/r.tmp", h.sha256(sources["fifty.bin"]), 50 << 20)

    @test
    def asan_after_a_restart_the_caches_and_the_journal_serve():
        os.killpg(state["proc"].pid, signal.SIGTERM)  # the children end with it: disconnects
        state["proc"].wait(timeout=60)
        # The new smbd's output replaces this file: keep the first one's for the scan.
        os.replace(f"{w.tmp}/smbd-asan.log", f"{w.tmp}/smbd-asan-1.log")
        start()
        data = h.sh([f"{h.B}/tests/smbread", url("asanread", "mib plus one.bin"), "4096",
                     "300000"], env=smb_env(), text=False).stdout
        with open(sources["mib plus one.bin"], "rb") as f:
            f.seek(4096)
            assert data == f.read(300000), "warm range differs"
        stats["bytes"] += len(data)
        smb("asanrw", f"get d/big.bin {t}/big.back2")
        verified(f"{t}/big.back2", h.sha256(f"{t}/big.bin"), 13 << 20)
        assert ls("asanrw").get("edit.bin") == (False, 777)

    # Stop it, so that the children's disconnects have run before the logs are read.
    try:
        os.killpg(state["proc"].pid, signal.SIGTERM)
        state["proc"].wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired) as e:
        record("asan: the sanitized smbd stops on SIGTERM", False, repr(e))

    reports = sorted(glob.glob(f"{logs}/asan.*") + glob.glob(f"{logs}/ubsan.*"))
    detail = ""
    for path in reports:
        with open(path, errors="replace") as f:
            detail += f"--- {path}\n{f.read()[:6000]}\n"
    # smbd points its stderr at its log file: a report that missed log_path
    # lands there (or, before the log is open, in the output run.py keeps).
    report = re.compile(r"runtime error:|ERROR: AddressSanitizer|SUMMARY: \w+Sanitizer|"
                        r"==\d+==ERROR:|PANIC|INTERNAL ERROR")
    for path in (state["log"], f"{w.tmp}/smbd-asan-1.log", f"{w.tmp}/smbd-asan.log"):
        if not os.path.exists(path):
            continue
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            if report.search(line):
                detail += f"--- {path}:{i + 1}\n" + "\n".join(lines[i:i + 30]) + "\n"
                break
    record("asan: no AddressSanitizer or UndefinedBehaviorSanitizer report from smbd",
           not detail, detail)
    print(f"    # under ASan+UBSan: {stats['files']} files read back and "
          f"{stats['bytes']} bytes verified in {time.time() - began:.0f} s")
