"""The concurrency soak (issue 8, point 4): 16 SMB clients for
SOAK_SECONDS (60) on a writable share: reads of the same and of different
objects, listings, writes + renames over a final name, every byte checked;
smbd's RSS sampled and bounded; the wall clock stepped forward and back
meanwhile, as a VM's time sync does; S3 holds exactly the acknowledged
objects; fsck --dry-run is clean.  The soak runs once (a module fixture); each test
asserts on what it did.
"""
import fcntl
import hashlib
import os
import queue
import random
import re
import subprocess
import sys
import termios
import threading
import time
import types

import pytest

from world import B, BUCKET, USER, PASSWORD, sh

# Steps the machine's clock while it runs.
pytestmark = pytest.mark.alone


def _sha(data):
    return hashlib.sha256(data).hexdigest()


class Session:
    """One long-lived smbclient (one smbd child) driven through stdin; each
    batch of commands ends with a shell echo of a marker."""

    def __init__(self, port, share):
        self.p = subprocess.Popen(
            ["stdbuf", "-o0", "-e0", "smbclient", f"//127.0.0.1/{share}", "-p", str(port),
             "-U", f"{USER}%{PASSWORD}", "-m", "SMB3"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1)
        self.lines = queue.Queue()
        self.n = 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _send(self, line, end):
        # smbclient reads stdin with its own buffer and then waits on the
        # descriptor: a second line read together with the first would sit
        # in that buffer unseen.  So one line per read: the next line goes
        # once the pipe is empty.
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        buf = bytearray(4)
        while True:
            fcntl.ioctl(self.p.stdin.fileno(), termios.FIONREAD, buf)
            if int.from_bytes(buf, sys.byteorder) == 0:
                return
            if time.monotonic() > end or self.p.poll() is not None:
                raise AssertionError(f"smbclient did not read {line!r}")
            time.sleep(0.005)

    def run(self, commands, timeout=180):
        """commands: lines (or one line); their output, once all are done."""
        self.n += 1
        marker = f"@@done-{self.n}"
        end = time.monotonic() + timeout
        for line in [commands] if isinstance(commands, str) else commands:
            self._send(line, end)
        self._send(f"!echo {marker}", end)
        out = []
        while True:
            try:
                line = self.lines.get(timeout=max(1, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no answer to {commands!r} within {timeout} s")
            if line is None:
                raise AssertionError(f"smbclient ended during {commands!r}: {out}")
            if line == marker:
                return "\n".join(out)
            out.append(line)

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
            self.p.wait(timeout=30)
        except Exception:
            self.p.kill()


def _failed(text):
    return re.search(r"NT_STATUS_|[Ff]ailed|[Ee]rror", text)



@pytest.fixture(scope="module")
def soak(world):
    """16 SMB clients for SOAK_SECONDS (60) on a writable share of an smbd
    of its own: what they did, what they were told is stored, and smbd's
    RSS sampled from /proc."""
    w = world
    seconds = int(os.environ.get("SOAK_SECONDS", "60"))
    nclients = 16
    tmp = f"{w.tmp}/soak-work"
    os.makedirs(tmp, exist_ok=True)
    rng = random.Random(7)
    # the read-only objects every client reads: one hot one, many others
    shared = {"hot.bin": os.urandom(6 << 20)}
    for i in range(24):
        shared[f"obj{i:02d}.bin"] = os.urandom(rng.choice([1, 777, 4096, 65536, 300001,
                                                          1 << 20, (2 << 20) + 5]))
    for name, body in shared.items():
        with open(f"{tmp}/seed", "wb") as f:
            f.write(body)
        w.s3tool("put", f"soak/shared/{name}", f"{tmp}/seed")
    shares = f"""[global]
  log level = 1 bucketfs:1
[soak]
  path = /bucketfs/soak
  vfs objects = bucketfs
  bucketfs:endpoint = {w.endpoint}
  bucketfs:path style = yes
  bucketfs:credentials file = {w.tmp}/creds
  bucketfs:bucket = {BUCKET}
  bucketfs:prefix = soak
  bucketfs:cache dir = {w.tmp}/soak-cache
  bucketfs:cache size = 24M
  bucketfs:multipart threshold = 6M
  bucketfs:part size = 5M
  read only = no
"""
    port, log = w.start_extra_smbd("soak", shares, dict(os.environ))
    conf = f"{w.tmp}/soak/smb.conf"
    url = f"smb://127.0.0.1:{port}/soak"

    lock = threading.Lock()
    counts = {k: 0 for k in ("read same", "read other", "read range", "read back",
                             "list", "write+rename", "write+rename (new connection)")}
    verified = [0]
    errors = []
    acked = {}      # key below soak/ -> (sha256, size, local copy)
    written = [0]
    connected = [0]
    deadline = time.monotonic() + seconds

    def count(kind, nbytes=0):
        with lock:
            counts[kind] += 1
            verified[0] += nbytes

    def error(msg):
        with lock:
            errors.append(msg)

    def worker(i):
        r = random.Random(i)
        d = f"{tmp}/w{i}"
        os.makedirs(d, exist_ok=True)
        mine = {}    # name -> (sha, size, local file)
        s = Session(port, "soak")
        try:
            out = s.run(f"mkdir w{i}")
            if _failed(out):
                error(f"w{i} mkdir: {out}")
                return
            with lock:
                connected[0] += 1
            n = 0
            while time.monotonic() < deadline:
                n += 1
                op = r.choices(["same", "other", "range", "back", "list", "write", "write1"],
                               [18, 18, 10, 14, 14, 18, 8])[0]
                if op in ("back",) and not mine:
                    op = "write"
                if op in ("same", "other", "back"):
                    if op == "back":
                        name = r.choice(sorted(mine))
                        remote, want_sha, size = f"w{i}/{name}", mine[name][0], mine[name][1]
                    else:
                        name = "hot.bin" if op == "same" else r.choice(sorted(shared)[1:])
                        remote = f"shared/{name}"
                        want_sha, size = _sha(shared[name]), len(shared[name])
                    local = f"{d}/get"
                    if os.path.exists(local):
                        os.remove(local)
                    out = s.run(f"get {remote} {local}")
                    got = open(local, "rb").read() if os.path.exists(local) else b""
                    if _failed(out) or _sha(got) != want_sha:
                        error(f"w{i} get {remote}: {len(got)} of {size} bytes, sha "
                              f"{'ok' if _sha(got) == want_sha else 'WRONG'}: {out}")
                    else:
                        count({"same": "read same", "other": "read other",
                               "back": "read back"}[op], size)
                elif op == "range":
                    if mine and r.random() < 0.4:
                        name = r.choice(sorted(mine))
                        path = f"w{i}/{name}"
                        body = open(mine[name][2], "rb").read()
                    else:
                        name = r.choice(sorted(shared))
                        path, body = f"shared/{name}", shared[name]
                    off = r.randrange(0, max(1, len(body)))
                    ln = r.choice([1, 4096, 65536, 1 << 20, 3 << 20])
                    p = subprocess.run([f"{B}/tests/smbread", f"{url}/{path}", str(off),
                                        str(ln)], capture_output=True, timeout=180,
                                       env=dict(os.environ, SMB_USER=USER,
                                                SMB_PASS=PASSWORD))
                    if p.returncode != 0 or p.stdout != body[off:off + ln]:
                        error(f"w{i} smbread {path} {off}+{ln}: exit {p.returncode}, "
                              f"{len(p.stdout)} bytes: {p.stderr[-300:]!r}")
                    else:
                        count("read range", len(p.stdout))
                elif op == "list":
                    if r.random() < 0.5:
                        out = s.run("ls shared/*")
                        want = {k: len(v) for k, v in shared.items()}
                    else:
                        out = s.run(f"ls w{i}/*")
                        want = {k: v[1] for k, v in mine.items()}
                    got = {m.group(1): int(m.group(2)) for m in re.finditer(
                        r"^  (.+?)\s+[ADHNSR]+\s+(\d+)\s+\w{3} \w{3} ", out, re.M)
                        if m.group(1) not in (".", "..")}
                    if got != want and not (not want and "NO_SUCH_FILE" in out):
                        error(f"w{i} listing: got {got}, want {want}: {out[-500:]}")
                    else:
                        count("list")
                else:
                    name = f"ckpt{r.randrange(3)}"
                    size = r.choice([1, 4096, 100000, 1 << 20, (2 << 20) + 3]) \
                        if r.random() > 0.08 else (7 << 20) + 11  # multipart now and then
                    local = f"{d}/{name}.{n}"
                    body = os.urandom(size)
                    with open(local, "wb") as f:
                        f.write(body)
                    cmds = f"put {local} w{i}/{name}.tmp; rename w{i}/{name}.tmp w{i}/{name} -f"
                    if op == "write":
                        out = s.run(cmds.split("; "))
                        failed = _failed(out) or "putting file" not in out
                    else:
                        p = subprocess.run(
                            ["smbclient", "//127.0.0.1/soak", "-p", str(port), "-U",
                             f"{USER}%{PASSWORD}", "-m", "SMB3", "-c", cmds],
                            capture_output=True, text=True, timeout=300)
                        out = p.stdout + p.stderr
                        failed = p.returncode != 0 or _failed(out)
                    if failed:
                        error(f"w{i} {cmds}: {out}")
                        continue
                    old = mine.get(name)
                    mine[name] = (_sha(body), size, local)
                    if old:
                        os.remove(old[2])
                    with lock:
                        acked[f"w{i}/{name}"] = mine[name]
                        written[0] += size
                    count("write+rename" if op == "write" else "write+rename (new connection)")
        except Exception as e:
            error(f"w{i}: {e}")
        finally:
            s.close()

    # RSS of smbd's children, sampled from /proc
    def smbd_parent():
        for f in os.listdir(f"{w.tmp}/soak/pid"):
            if f.endswith(".pid"):
                return int(open(f"{w.tmp}/soak/pid/{f}").read().split()[0])
        raise AssertionError("no smbd pid file")

    def rss_kb(pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
        return None

    samples = []   # [(time, {pid: rss_kb})]
    stop = threading.Event()

    def sampler(parent):
        # from the moment every session has its smbd child
        end = time.monotonic() + 60
        while connected[0] < nclients and time.monotonic() < end and not stop.is_set():
            time.sleep(0.1)
        while not stop.is_set():
            kids = {}
            for ent in os.listdir("/proc"):
                if not ent.isdigit():
                    continue
                try:
                    stat = open(f"/proc/{ent}/stat").read()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                    kb = rss_kb(int(ent))
                    if kb:
                        kids[int(ent)] = kb
            samples.append((time.time(), kids))
            stop.wait(1.0)

    # A VM's time sync steps the wall clock now and then.  Processes
    # started after such a step once took the engine for a dead process
    # (its start was stamped in wall-clock time), took its uploads over
    # and dropped staging files it was uploading from: CI lost
    # acknowledged checkpoints so.  Here the clock steps 2 s forward a
    # third of the way in and back at two thirds (as root).
    steps = []

    def step_clock():
        for frac, d in ((1 / 3, 2), (2 / 3, -2)):
            if stop.wait(max(0.0, started + seconds * frac - time.monotonic())):
                return
            time.clock_settime(time.CLOCK_REALTIME,
                               time.clock_gettime(time.CLOCK_REALTIME) + d)
            steps.append(d)

    parent = smbd_parent()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(nclients)]
    sam = threading.Thread(target=sampler, args=(parent,))
    stepper = threading.Thread(target=step_clock)
    started = time.monotonic()
    sam.start()
    if os.geteuid() == 0:
        stepper.start()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=seconds + 600)
    finally:
        stop.set()
        if stepper.is_alive() or steps:
            stepper.join()
        if sum(steps):
            time.clock_settime(time.CLOCK_REALTIME,
                               time.clock_gettime(time.CLOCK_REALTIME) - sum(steps))
    sam.join()
    took = time.monotonic() - started
    yield types.SimpleNamespace(w=w, nclients=nclients, seconds=seconds, counts=counts,
                                 steps=steps,
                                 verified=verified[0], errors=errors, acked=acked,
                                 written=written[0], samples=samples, threads=threads,
                                 shared=shared, conf=conf, log=log, took=took)
    w.stop_extra_smbd("soak")


def test_sixteen_clients_for_a_minute_read_write_list_rename_without_one_error(soak):
    nclients, samples, counts, errors = soak.nclients, soak.samples, soak.counts, soak.errors
    total_ops = sum(counts.values())
    print(f"    # {nclients} clients, {soak.took:.0f} s: {total_ops} operations: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"    # {soak.verified / 1e6:.1f} MB read back and verified, "
          f"{soak.written / 1e6:.1f} MB written and acknowledged, {len(errors)} errors; "
          f"wall clock stepped by {soak.steps} s meanwhile")

    # memory: the long-lived children (the 16 sessions) and the parent
    n = len(samples)
    assert n >= 9, f"only {n} RSS samples"
    seen = {}
    for _, kids in samples:
        for pid in kids:
            seen[pid] = seen.get(pid, 0) + 1
    lasting = [pid for pid, c in seen.items() if c >= 0.8 * n]
    assert len(lasting) >= nclients, f"only {len(lasting)} children lasted the soak"

    def mean(part):
        """Mean RSS (kB) of a long-lived child over the samples in part."""
        vals = [kids[pid] for _, kids in part for pid in lasting if pid in kids]
        return sum(vals) / len(vals)
    first, last = mean(samples[:n // 3]), mean(samples[-(n // 3):])
    worst = max(lasting, key=lambda pid: (
        max([k[pid] for _, k in samples[-(n // 3):] if pid in k], default=0)
        - max([k[pid] for _, k in samples[:n // 3] if pid in k], default=0)))
    series = [k.get(worst, 0) // 1024 for _, k in samples]
    peak_one = max(max(kids.values(), default=0) for _, kids in samples)
    peak_all = max(sum(kids.values()) for _, kids in samples)
    print(f"    # smbd RSS per long-lived child ({len(lasting)}): first third "
          f"{first / 1024:.1f} MiB, last third {last / 1024:.1f} MiB; peak "
          f"{peak_one / 1024:.0f} MiB in one process, {peak_all / 1024:.0f} MiB in all "
          f"({n} samples); the child that grew most (MiB): {series}")
    assert last <= first * 1.5 + 16 * 1024, \
        f"smbd's memory kept growing: {first / 1024:.1f} -> {last / 1024:.1f} MiB per child"
    assert not any(t.is_alive() for t in soak.threads), "a client hung"
    assert not errors, f"{len(errors)} errors, first: " + "\n".join(errors[:5]) + \
        logged_about(soak, errors[0])
    for kind, v in counts.items():
        assert v > 0, f"no '{kind}' operation ran"


def logged_about(soak, error):
    """What smbd's and the engine's logs say of the file the first error
    names (its test folder goes when the run ends): the lines naming it,
    the last 40 of each log."""
    m = re.match(r"(w\d+) \S+ (w\d+/ckpt\d)", error)
    return logged_naming(soak, m.group(2)) if m else ""


def logged_naming(soak, name):
    """The last 40 lines of smbd's and of the engine's log naming name."""
    out = []
    for path in (soak.log, f"{soak.w.tmp}/soak-cache/engine.log"):
        try:
            with open(path, errors="replace") as f:
                lines = [line.rstrip() for line in f if name in line]
        except OSError as e:
            lines = [f"({e})"]
        out.append(f"\n--- {path}, lines naming {name}:\n" + "\n".join(lines[-40:]))
    return "".join(out)


def test_after_the_soak_s3_holds_exactly_the_acknowledged_objects_and_fsck_is_clean(soak):
    w, acked, shared, conf, log = soak.w, soak.acked, soak.shared, soak.conf, soak.log
    nclients = soak.nclients
    assert acked, "the soak acknowledged no write"
    # close = local: the engine may still be uploading what the last
    # closes handed it; S3 is checked once nothing is pending.
    deadline = time.monotonic() + 120
    while sh([f"{B}/bucketfs-ctl", "-s", conf, "soak", "pending"]).stdout.strip():
        assert time.monotonic() < deadline, "uploads still pending after 2 minutes"
        time.sleep(0.2)
    out = w.s3tool("ls", "soak/").stdout
    keys = {line.split("\t", 1)[1] for line in out.splitlines() if line.strip()}
    want = {f"soak/shared/{k}" for k in shared} | {f"soak/{k}" for k in acked}
    markers = {f"soak/w{i}/" for i in range(nclients)}
    missing = sorted(want - keys)
    assert keys - markers == want, \
        f"missing {missing[:5]}, unexpected {sorted(keys - markers - want)[:5]}" + \
        (logged_naming(soak, missing[0].split("/", 1)[1]) if missing else "")
    checked = 0
    for key, (digest, size, _) in sorted(acked.items()):
        assert w.s3_sha256(f"soak/{key}") == digest, f"soak/{key}: not the last acknowledged"
        checked += size
    for name, body in shared.items():
        assert w.s3_sha256(f"soak/shared/{name}") == _sha(body), name
    fsck = [f"{B}/bucketfs-ctl", "-s", conf, "soak", "fsck"]
    p = sh(fsck + ["--dry-run"], check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    # Blocks of versions the soak replaced (rename over a final name) are
    # left to age out by design (README, "fsck"); fsck would drop them,
    # and the byte count follows.  Nothing else may be found.
    lines = [l.strip() for l in p.stdout.splitlines() if l.strip()]
    stale = [l for l in lines if re.fullmatch(
        r"\d+ object versions \(\d+ blocks\) the index does not name \(replaced or "
        r"deleted in S3\): would drop", l)]
    other = [l for l in lines if l not in stale and not re.fullmatch(
        r"index: \d+ entries checked|cache: \d+ block records checked|"
        r"journal: 0 pending record\(s\)|clean", l)
        and not (stale and re.fullmatch(r"bytes counted for the limit: .*: would correct", l))]
    assert not other, "fsck --dry-run found:\n" + p.stdout
    if stale:
        sh(fsck)
        p = sh(fsck + ["--dry-run"])
    assert p.stdout.rstrip().endswith("clean"), p.stdout + p.stderr
    p = sh([f"{B}/bucketfs-ctl", "-s", conf, "soak", "pending"], check=False)
    assert p.returncode == 0 and p.stdout.strip() == "", "pending: " + p.stdout + p.stderr
    assert not os.listdir(f"{w.tmp}/soak-cache/staging"), "staging files left"
    text = open(log, errors="replace").read()
    assert "PANIC" not in text and "INTERNAL ERROR" not in text, text[-3000:]
    # Reads of a client's own files that went to S3 without If-Match: an
    # open that found its file pending with neither a staging file nor an
    # ETag (DEVELOPERS.md, "a 1-byte checkpoint read back with an older
    # version's byte").  Counted, for the runs to compare.
    with open(f"{w.tmp}/front.log", errors="replace") as f:
        unversioned = sum(1 for l in f if re.match(
            r"GET /\S+/soak/w\d+/\S+ fault=\S+ if-match=None", l))
    print(f"    # {len(acked)} final objects ({checked / 1e6:.1f} MB) match their last "
          f"acknowledged sha256; fsck --dry-run clean"
          + (f" once the replaced versions' blocks went ({stale[0]})" if stale else "")
          + f"; {unversioned} reads of the clients' own files without If-Match")
