"""The servers integration tests run against, on loopback: s3rver (the
pinned npm package) behind tests/integration/s3_front.py (SigV4 check,
If-Match, fault injection), an IMDS stand-in where a test needs one, and
private smbds with bucketfs shares, each with its own port and folders.

tests/run.py (the older groups) and tests/conftest.py (pytest) share it;
the benchmarks load it through run.py.
"""
import copy
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

from smbls import parse_ls

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = os.path.join(TOP, "build")
S3RVER = os.path.join(B, "s3server/node_modules/.bin/s3rver")
BUCKET = "bucketfs-test"
CLIENT_BUCKET = "bucketfs-client-test"  # the S3 client's own tests write here
USER, PASSWORD = "root", "bucketfs-test-pw"
OTHER_USER = "bfstest"  # an unprivileged account, created if missing


procs = []
spawned = {}  # pid -> (name, log path) of what World.spawn started


def smb_global(t, port, log_level, passdb=None, loopback=True, extra=()):
    """The [global] section of a private smbd on a loopback port (or every
    address, loopback=False), folders under t, extra lines first."""
    lines = "".join(f"  {line}\n" for line in extra)
    if loopback:
        lines += "  interfaces = 127.0.0.1\n  bind interfaces only = yes\n"
    return f"""[global]
{lines}  smb ports = {port}
  lock directory = {t}/lock
  state directory = {t}/state
  cache directory = {t}/cache
  pid directory = {t}/pid
  private dir = {t}/private
  ncalrpc dir = {t}/ncalrpc
  log file = {t}/log.smbd
  max log size = 0
  log level = {log_level}
  passdb backend = tdbsam:{passdb or t + "/private/passdb.tdb"}
  server role = standalone server
  load printers = no
  printcap name = /dev/null
  disable spoolss = yes
"""


def stop_procs():
    """Stop every server started through World.spawn.  An S3 server or
    front that died before (every later test then fails its tree connect,
    as one CI run of 2026-12-06 did) is told of, with its log's end."""
    for p in procs:
        name, log = spawned.get(p.pid, ("", ""))
        # The World's own servers; tests stop their extra fronts themselves.
        if p.poll() is not None and name in ("s3rver", "s3rver-tls", "front", "front-control"):
            try:
                with open(log, errors="replace") as f:
                    tail = f.read()[-2000:]
            except OSError as e:
                tail = str(e)
            print(f"# {name} (pid {p.pid}) had exited with {p.returncode} before "
                  f"the end; its log ends:\n{tail}", flush=True)
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def s3rver_argv(folder, port, *buckets, extra=()):
    """s3rver serving folder on 127.0.0.1:port with these buckets, and the
    environment it needs: its continuation tokens use DES, which OpenSSL 3
    keeps in the legacy provider; tests/s3server/atomic.js makes its
    object writes atomic, as S3's are."""
    argv = [S3RVER, "-d", folder, "-a", "127.0.0.1", "-p", str(port), "--silent", *extra]
    for b in buckets:
        argv += ["--configure-bucket", b]
    return argv, dict(os.environ, NODE_OPTIONS="--openssl-legacy-provider --require "
                      + os.path.join(TOP, "tests/s3server/atomic.js"))


def start_s3rver(folder, port, log):
    """An s3rver of its own (a demo's or a benchmark's, outside any World)
    with the test bucket, its output in log; returns the process once it
    answers."""
    os.makedirs(folder, exist_ok=True)
    argv, env = s3rver_argv(folder, port, BUCKET, extra=("--service-endpoint", "localhost"))
    proc = subprocess.Popen(argv, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_port(port, "s3rver")
    return proc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_port():
    """A port nothing listens on, for as long as the socket returned is
    open: bound but not listening, so a connect is refused, and no other
    server of a test running beside us can take it (a port free_port()
    handed out and closed could be bound again: a CI run's connect to
    its "dead" endpoint got an answer)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def wait_port(port, what, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port}")




def sh(argv, check=True, **kw):
    kw.setdefault("text", True)
    p = subprocess.run(argv, capture_output=True, timeout=kw.pop("timeout", 300), **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{argv[0]} exit {p.returncode}: {p.stdout[-1500:]}{p.stderr[-1500:]}")
    return p


def make_file(path, size):
    """path filled with size random bytes, a MiB at a time; returns path."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
    return path


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class World:
    """The servers and the data, set up once for all integration checks."""

    def __init__(self, tmp):
        self.tmp = tmp
        os.makedirs(f"{tmp}/s3", exist_ok=True)
        self.s3_port = free_port()
        self.front_port = free_port()
        self.dead_sock, self.dead_port = dead_port()  # nothing listens here
        self.fault_ports = {m: free_port() for m in ("503", "truncate", "reset")}
        argv, env = s3rver_argv(f"{tmp}/s3", self.s3_port, BUCKET, CLIENT_BUCKET,
                                extra=("--service-endpoint", "localhost"))
        self.spawn(argv, "s3rver", env=env)
        wait_port(self.s3_port, "s3rver")
        # The same server over TLS with a self-signed certificate.
        self.tls_port = free_port()
        sh(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-keyout", f"{tmp}/tls.key", "-out", f"{tmp}/tls.crt"])
        os.makedirs(f"{tmp}/s3tls")
        argv, env = s3rver_argv(f"{tmp}/s3tls", self.tls_port, CLIENT_BUCKET,
                                extra=("--key", f"{tmp}/tls.key", "--cert", f"{tmp}/tls.crt"))
        self.spawn(argv, "s3rver-tls", env=env)
        wait_port(self.tls_port, "s3rver over TLS")
        front = os.path.join(TOP, "tests/integration/s3_front.py")
        self.spawn([sys.executable, front, str(self.front_port), str(self.s3_port)], "front")
        for mode, port in self.fault_ports.items():
            self.spawn([sys.executable, front, str(port), str(self.s3_port),
                        "--fault", mode, "--count", "2"], f"fault-{mode}")
        # A front whose faults the write tests switch while they run.
        self.control_port = free_port()
        self.control = f"{tmp}/front-control"
        self.spawn([sys.executable, front, str(self.control_port), str(self.s3_port),
                    "--control", self.control], "front-control")
        for port in [self.front_port, self.control_port, *self.fault_ports.values()]:
            wait_port(port, "s3 front")
        self.endpoint = f"http://127.0.0.1:{self.front_port}"
        self.env = dict(os.environ, S3_ENDPOINT=self.endpoint, S3_BUCKET=BUCKET,
                        AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER")

    def spawn(self, argv, name, env=None):
        log = open(f"{self.tmp}/{name}.log", "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        procs.append(p)
        spawned[p.pid] = (name, log.name)
        return p

    def s3tool(self, *args, check=True):
        return sh([f"{B}/s3tool", *args], check=check, env=self.env)

    def s3_keys(self, prefix):
        """Every key under prefix in the test bucket."""
        out = self.s3tool("ls", prefix).stdout
        return {line.split()[-1] for line in out.splitlines() if line.strip()}

    def make(self, name, size):
        """A file of size random bytes in the world's folder; its path."""
        return make_file(f"{self.tmp}/{name}", size)

    # -- smbd ---------------------------------------------------------------

    def start_users(self):
        """The S3 credentials files and the SMB users every smbd here shares
        (one passdb): root and an unprivileged account."""
        t = self.tmp
        for d in ("lock", "state", "cache", "pid", "private", "ncalrpc", "bfscache"):
            os.makedirs(f"{t}/{d}", exist_ok=True)
        with open(f"{t}/creds", "w") as f:
            f.write("[default]\naws_access_key_id = S3RVER\naws_secret_access_key = S3RVER\n"
                    "[wrong]\naws_access_key_id = S3RVER\naws_secret_access_key = not-the-secret\n")
        os.chmod(f"{t}/creds", 0o600)
        shutil.copy(f"{t}/creds", f"{t}/creds-loose")
        os.chmod(f"{t}/creds-loose", 0o644)
        conf = f"{t}/users.conf"
        with open(conf, "w") as f:
            f.write(smb_global(t, free_port(), "1"))
        if subprocess.run(["id", OTHER_USER], capture_output=True).returncode != 0:
            # make test's lanes start at once: another may add it first (9).
            p = subprocess.run(["useradd", "--system", "--no-create-home",
                                "--shell", "/usr/sbin/nologin", OTHER_USER],
                               capture_output=True, text=True)
            if p.returncode not in (0, 9):
                raise RuntimeError(f"useradd {OTHER_USER}: {p.stderr.strip()}")
        for user in (USER, OTHER_USER):
            sh(["smbpasswd", "-c", conf, "-s", "-a", user], input=f"{PASSWORD}\n{PASSWORD}\n")
        self.cleanups = getattr(self, "cleanups", [])
        # Engines (bucketfsd) smbd started outlive it, as they do for an admin:
        # every one of this run (of every smbd here) goes at the end.
        self.cleanups.append(lambda: subprocess.run(
            ["pkill", "-KILL", "-f", f"bucketfsd -s {self.tmp}/"], check=False))

    def share_parts(self, t):
        """What share sections start with, for {common} and {faulty}: the
        plain front, or the fault-injecting one in 5 MiB parts (writable);
        cache folders under t."""
        common = (f"  vfs objects = bucketfs\n  bucketfs:endpoint = {self.endpoint}\n"
                  f"  bucketfs:path style = yes\n  bucketfs:credentials file = {self.tmp}/creds\n"
                  f"  bucketfs:cache dir = {t}/bfscache\n")
        faulty = (f"  vfs objects = bucketfs\n"
                  f"  bucketfs:endpoint = http://127.0.0.1:{self.control_port}\n"
                  f"  bucketfs:path style = yes\n  bucketfs:credentials file = {self.tmp}/creds\n"
                  f"  bucketfs:bucket = {BUCKET}\n  bucketfs:multipart threshold = 8M\n"
                  f"  bucketfs:part size = 5M\n  read only = no\n")
        return common, faulty

    def serve(self, name, shares, log_level="1 bucketfs:3"):
        """An smbd of its own for one test file: the smb.conf sections in
        shares, where {common} and {faulty} start a share (share_parts),
        {t} is its own folder (name, under the world's), {BUCKET} the test
        bucket, {creds} the credentials file, {endpoint} the front,
        {control} the fault front and {dead} an endpoint nobody serves.  Returns a copy of this World that speaks to it (smbclient,
        ctl, ls, smb_log, restart_smbd ...); stop it with its stop()."""
        v = copy.copy(self)
        t = v.dir = f"{self.tmp}/{name}"
        for d in ("lock", "state", "cache", "pid", "private", "ncalrpc"):
            os.makedirs(f"{t}/{d}", exist_ok=True)
        common, faulty = self.share_parts(t)
        v.smb_port = free_port()
        v.log_path = f"{t}/log.smbd"
        v.conf = f"{t}/smb.conf"
        with open(v.conf, "w") as f:
            f.write(smb_global(t, v.smb_port, log_level, passdb=f"{self.tmp}/private/passdb.tdb")
                    + shares.format(common=common, faulty=faulty, t=t, BUCKET=BUCKET,
                                    CLIENT_BUCKET=CLIENT_BUCKET, USER=USER,
                                    OTHER_USER=OTHER_USER, creds=f"{self.tmp}/creds",
                                    endpoint=self.endpoint,
                                    control=f"http://127.0.0.1:{self.control_port}",
                                    dead=f"http://127.0.0.1:{self.dead_port}"))
        env = dict(os.environ, AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER")
        v.smbd = self.spawn(["smbd", "--foreground", "--no-process-group", "-s", v.conf],
                            f"smbd-{name}", env=env)
        wait_port(v.smb_port, f"smbd {name}")
        return v

    def stop(self):
        """Stop this smbd and the engines its shares started."""
        try:
            os.killpg(self.smbd.pid, signal.SIGTERM)
            self.smbd.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.smbd.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-KILL", "-f", f"bucketfsd -s {self.conf} "], check=False)

    def start_extra_smbd(self, name, shares, env):
        """A second smbd with its own port and folders (another environment)."""
        t = f"{self.tmp}/{name}"
        for d in ("lock", "state", "cache", "pid", "private", "ncalrpc"):
            os.makedirs(f"{t}/{d}", exist_ok=True)
        port = free_port()
        conf = f"{t}/smb.conf"
        with open(conf, "w") as f:
            f.write(smb_global(t, port, "1 bucketfs:5", passdb=f"{self.tmp}/private/passdb.tdb")
                    + shares)
        self.extra = getattr(self, "extra", {})
        self.extra[name] = self.spawn(["smbd", "--foreground", "--no-process-group",
                                       "-s", conf], f"smbd-{name}", env=env)
        wait_port(port, f"smbd {name}")
        return port, f"{t}/log.smbd"

    def stop_extra_smbd(self, name):
        """Stop the smbd start_extra_smbd started as name (and its children,
        its process group)."""
        smbd = self.extra.pop(name)
        os.killpg(smbd.pid, signal.SIGTERM)
        smbd.wait(timeout=30)

    def restart_smbd(self, kill=False):
        os.killpg(self.smbd.pid, signal.SIGKILL if kill else signal.SIGTERM)
        self.smbd.wait(timeout=30)
        if kill:
            # The children are in smbd's process group too; wait them out.
            for _ in range(100):
                if subprocess.run(["pgrep", "-g", str(self.smbd.pid)],
                                  capture_output=True).returncode != 0:
                    break
                time.sleep(0.1)
        env = dict(os.environ, AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER")
        self.smbd = self.spawn(["smbd", "--foreground", "--no-process-group", "-s", self.conf],
                               "smbd-stdout-2", env=env)
        wait_port(self.smb_port, "smbd")

    def s3_gets(self, path_part):
        """GET requests the S3 server has seen whose path contains path_part."""
        with open(f"{self.tmp}/front.log") as f:
            return sum(1 for line in f if line.startswith("GET ") and path_part in line.split()[1])

    def smbread(self, share, path, offset, length):
        url = f"smb://127.0.0.1:{self.smb_port}/{share}/{urllib.parse.quote(path)}"
        return sh([f"{B}/tests/smbread", url, str(offset), str(length)],
                  env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD), text=False).stdout

    def smbclient(self, share, commands, check=True, user=USER, port=None):
        """smbclient on share of the main smbd, or of the one on port."""
        return sh(["smbclient", f"//127.0.0.1/{share}", "-p", str(port or self.smb_port),
                   "-U", f"{user}%{PASSWORD}", "-m", "SMB3", "-c", commands], check=check)

    def ctl(self, share, *args, check=True):
        return sh([f"{B}/bucketfs-ctl", "-s", self.conf, share, *args], check=check)

    def smbwrite(self, share, path, *args, check=True):
        url = f"smb://127.0.0.1:{self.smb_port}/{share}/{urllib.parse.quote(path)}"
        return sh([f"{B}/tests/smbwrite", url, *args], check=check,
                  env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD))

    def fault(self, text):
        with open(self.control, "w") as f:
            f.write(text)

    def wait_part_put(self, key, since=0, timeout=30):
        """Wait until the fault front (w.fault) has been sent a part of a
        multipart upload of key, after the first `since` characters of
        its log: an upload is on its way."""
        part = re.compile(rf"^PUT /\S+/{re.escape(key)}\?partNumber=", re.M)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with open(f"{self.tmp}/front-control.log") as f:
                if part.search(f.read()[since:]):
                    return
            time.sleep(0.1)
        raise AssertionError(f"no part of {key} was sent within {timeout} s")

    def s3_sha256(self, key):
        out = f"{self.tmp}/s3get.tmp"
        self.s3tool("get", key, out)
        digest = sha256(out)
        os.remove(out)
        return digest

    def smb_log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def ls(self, share, path=""):
        return parse_ls(self.smbclient(share, f'cd "{path}"; ls' if path else "ls").stdout)


def smb_flush(port, share, path, timeout=1800):
    """Open path for writing, send an SMB2 FLUSH, close it, on one SMB2
    connection (tests/integration/smbsession.py): what a job's fsync of
    a file it wrote sends.  Raises with smbsession's answers on failure."""
    p = subprocess.Popen(["/usr/bin/python3", os.path.join(TOP, "tests/integration/smbsession.py"),
                          str(port), share, USER, PASSWORD],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(f"open {path}\nflush {path}\nclose {path}\nquit\n",
                             timeout=timeout)
    answers = out.split("\n")
    if p.returncode != 0 or len(answers) < 4 or \
            not all(a.startswith("ok") for a in answers[:4]):
        raise RuntimeError(f"flush of {path}: {out.strip()} {err.strip()}")


def s3_has(w, key, digest, timeout=60):
    """Wait (not stuck: a generous bound) until S3 holds digest at key."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if key in w.s3_keys(os.path.dirname(key) + "/"):
            try:
                if w.s3_sha256(key) == digest:
                    return True
            except AssertionError:
                pass  # deleted between the listing and the GET: look again
        time.sleep(0.2)
    return False


def seed(w):
    """Objects of awkward sizes and names, and where they came from."""
    data = os.path.join(w.tmp, "data")
    os.makedirs(data)
    files = {
        "empty": b"",
        "one byte": b"x",
        "mib plus one.bin": os.urandom((1 << 20) + 1),
        "fifty.bin": os.urandom(50 << 20),
        "name with spaces.txt": b"spaces in the name\n",
        "caf\u00e9 \u00fcber \u65e5\u672c.txt": "non-ASCII name\n".encode(),
        "plus+and~tilde.txt": b"reserved characters\n",
        "tree/a/b/c/deep.txt": b"deep in an implicit directory\n",
        "tree/a/sibling.txt": b"next to b/\n",
        "tree/x/y.bin": os.urandom(4096),
        "bigset/one.bin": os.urandom(8 << 20),
        "bigset/two.bin": os.urandom(8 << 20),
        "bigset/three.bin": os.urandom(8 << 20),
        "changing/file.bin": b"A" * (3 << 20),
    }
    sources = {}
    for i, (key, body) in enumerate(files.items()):
        src = os.path.join(data, f"src{i}")
        with open(src, "wb") as f:
            f.write(body)
        w.s3tool("put", key, src)
        sources[key] = src
    return sources


def session(w, share, port=None):
    """One SMB2 connection (tests/integration/smbsession.py) to w's smbd,
    or to the one on port."""
    p = subprocess.Popen(["/usr/bin/python3",
                          os.path.join(TOP, "tests/integration/smbsession.py"),
                          str(port or w.smb_port), share, USER, PASSWORD],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("ok"), p.stderr.read()

    def ask(line):
        p.stdin.write(line + "\n")
        p.stdin.flush()
        out = p.stdout.readline().strip()
        if not out:  # it died: say why
            out = p.stderr.read()[-2000:]
        assert out.startswith("ok"), f"{line}: {out}"
        return out.split()[1] if len(out.split()) > 1 else ""
    return p, ask
