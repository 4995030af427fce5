"""Security (issue 8, point 8): a prefix share cannot be left; the cache
folder is root's and closed; TLS is verified; smbd's own access control
holds.  An smbd of its own (a module fixture) serves the shares:

- '..'-laden, absolute and encoded names through smbclient and
  libsmbclient fail, and the S3 front's log (w.tmp/front.log, one line per
  request) shows no key outside the prefix;
- the cache folder (LMDB files and staging files included) is 0700/0600
  and root's, also when an unprivileged user caused every fill;
- TLS is verified by default; 'bucketfs:ca file' trusts a given cert;
- read only and valid users still hold.

After each test smbd's log holds no PANIC.
"""
import hashlib
import os
import re
import subprocess
import sys
import time
import urllib.parse
from stat import S_ISSOCK

import pytest

from smbls import parse_ls
from world import (TOP, B, BUCKET, CLIENT_BUCKET, USER, OTHER_USER, PASSWORD, free_port,
                   wait_port, sh)


def _sha(data):
    return hashlib.sha256(data).hexdigest()


class Sec:
    """The shares of the security checks, on an smbd of their own, and a
    fault front whose PUTs a test can slow down (staging files visible)."""

    def __init__(self, w, sources):
        self.w = w
        self.sources = sources
        self.tmp = f"{w.tmp}/sec"
        os.makedirs(self.tmp, exist_ok=True)
        self.front = os.path.join(TOP, "tests/integration/s3_front.py")
        # A front of our own whose PUTs we can slow down (staging files visible).
        self.ctl_port = free_port()
        self.control = f"{self.tmp}/control"
        w.spawn([sys.executable, self.front, str(self.ctl_port), str(w.s3_port), "--control", self.control],
                "front-sec")
        wait_port(self.ctl_port, "s3 front (security)")
        # A certificate no share's server uses: trusting it must not help.
        sh(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
              "-subj", "/CN=127.0.0.1", "-keyout", f"{self.tmp}/other.key", "-out", f"{self.tmp}/other.crt"])

        self.tls = f"https://127.0.0.1:{w.tls_port}"
        shares = (
            self.share("escape", w.endpoint, BUCKET,
                    "  bucketfs:prefix = tree/a\n  read only = no\n  bucketfs:close = s3\n")
            + self.share("perm", f"http://127.0.0.1:{self.ctl_port}", BUCKET,
                    f"  bucketfs:prefix = perm\n  read only = no\n  bucketfs:close = s3\n"
                    f"  valid users = {USER} {OTHER_USER}\n")
            # The same, with a cache folder only the permissions test uses:
            # the unprivileged user must be the one who makes it.
            + self.share("permfill", f"http://127.0.0.1:{self.ctl_port}", BUCKET,
                    f"  bucketfs:prefix = perm\n  read only = no\n  bucketfs:close = s3\n"
                    f"  valid users = {USER} {OTHER_USER}\n")
            + self.share("tlsdefault", self.tls, CLIENT_BUCKET)
            + self.share("tlsca", self.tls, CLIENT_BUCKET,
                    f"  bucketfs:prefix = bfs-sec\n  bucketfs:ca file = {w.tmp}/tls.crt\n"
                    "  read only = no\n")
            + self.share("tlswrongca", self.tls, CLIENT_BUCKET, f"  bucketfs:ca file = {self.tmp}/other.crt\n")
            + self.share("ro", w.endpoint, BUCKET, "  bucketfs:prefix = tree\n  read only = yes\n")
            + self.share("onlyroot", w.endpoint, BUCKET, f"  valid users = {USER}\n")
        )
        self.port, self.log = w.start_extra_smbd("sec", shares, dict(os.environ))
        self.conf = f"{w.tmp}/sec/smb.conf"

    def share(self, name, endpoint, bucket, extra=""):
        return (f"[{name}]\n  path = /bucketfs/{name}\n  vfs objects = bucketfs\n"
                f"  bucketfs:endpoint = {endpoint}\n  bucketfs:path style = yes\n"
                f"  bucketfs:credentials file = {self.w.tmp}/creds\n"
                f"  bucketfs:bucket = {bucket}\n  bucketfs:cache dir = {self.tmp}/cache-{name}\n"
                + extra)

    def smbc(self, share_name, commands, user=USER, check=False):
        return sh(["smbclient", f"//127.0.0.1/{share_name}", "-p", str(self.port),
                     "-U", f"{user}%{PASSWORD}", "-m", "SMB3", "-c", commands], check=check)

    def smbread_url(self, url, offset=0, length=1 << 20):
        return subprocess.run([f"{B}/tests/smbread", url, str(offset), str(length)],
                              env=dict(os.environ, SMB_USER=USER, SMB_PASS=PASSWORD),
                              capture_output=True, timeout=120)

    def ctl(self, share_name, *args, check=True):
        return sh([f"{B}/bucketfs-ctl", "-s", self.conf, share_name, *args], check=check)

    def front_lines(self, start):
        with open(f"{self.w.tmp}/front.log") as f:
            return f.read().splitlines()[start:]

    def s3_listing(self, prefix):
        """[(key, size)] of every object below prefix."""
        out = self.w.s3tool("ls", prefix).stdout
        return sorted((line.split("\t", 1)[1], int(line.split("\t", 1)[0]))
                      for line in out.splitlines() if line.strip())

    def walk_cache(self, cache):
        """Every path below cache, asserting root owns it and only root may use it."""
        seen = set()
        for root, ds, fs in os.walk(cache):
            for name in [None, *ds, *fs]:
                p = root if name is None else os.path.join(root, name)
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue  # a staging file done meanwhile
                is_dir = os.path.isdir(p) and not os.path.islink(p)
                want = 0o700 if is_dir else 0o600
                if S_ISSOCK(st.st_mode):
                    # The engine's socket: root's alone, as the files.
                    assert st.st_uid == 0 and st.st_mode & 0o7777 == 0o600, \
                        f"{p}: {st.st_uid} {oct(st.st_mode & 0o7777)}"
                    seen.add(p)
                    continue
                assert st.st_uid == 0 and st.st_gid == 0, \
                    f"{p}: owned by {st.st_uid}:{st.st_gid}"
                assert st.st_mode & 0o7777 == want, f"{p}: mode {oct(st.st_mode & 0o7777)}"
                assert is_dir or os.path.isfile(p), f"{p}: neither file nor folder"
                seen.add(p)
        return seen

    def w_ls(self, text):
        return {name: size for name, (_, size) in parse_ls(text).items()}

    def escape_attempts(self, outside, before, bucket_before):
        out = f"{self.tmp}/escape.out"
        # control: the share works, so the log below is the share's traffic
        p = self.smbc("escape", f'get sibling.txt "{out}"', check=True)
        assert open(out, "rb").read() == open(self.sources["tree/a/sibling.txt"], "rb").read()
        attempts = [
            r'get "..\one byte" OUT', r'get "..\..\one byte" OUT', r'get "..\x\y.bin" OUT',
            r'get "..\..\tree\x\y.bin" OUT', r'get "\..\..\fifty.bin" OUT',
            r'get "/one byte" OUT', r'get "/etc/passwd" OUT', r'get "C:\Windows\win.ini" OUT',
            r'get "%2e%2e\x\y.bin" OUT', r'get "..%5cx%5cy.bin" OUT',
            r'get "%2E%2E%2Fone byte" OUT', r'get "b\..\..\x\y.bin" OUT',
            r'get "\\127.0.0.1\escape\..\x\y.bin" OUT', r'get "..\\..\\one byte" OUT',
            r'allinfo "..\x\y.bin"', r'allinfo "..\..\one byte"',
        ]
        refused = 0
        for cmd in attempts:
            if os.path.exists(out):
                os.remove(out)
            p = self.smbc("escape", cmd.replace("OUT", f'"{out}"'))
            text = p.stdout + p.stderr
            got = open(out, "rb").read() if os.path.exists(out) else None
            assert got is None or got not in outside.values(), f"{cmd}: read an outside object"
            assert "NT_STATUS_" in text, f"{cmd}: not refused: {text}"
            refused += 1
        # '..' above the share root stays at the share root
        inside = {"b", "sibling.txt"}
        for cmd in (r"cd ..; ls", r"cd ..\..\..; ls", r'ls "..\*"', r'ls "..\..\x\*"',
                    r"cd b; cd ..\..; ls"):
            p = self.smbc("escape", cmd)
            names = {m.group(1) for m in re.finditer(
                r"^  (.+?)\s+[ADHNSR]+\s+\d+\s+\w{3} \w{3} ", p.stdout, re.M)} - {".", ".."}
            assert names <= inside, f"{cmd}: listed {names} outside the prefix"
        # writes aimed outside land nowhere outside
        self.smbc("escape", "put /etc/hostname mine.txt", check=True)
        for cmd in (r'put /etc/hostname "..\escaped.txt"', r'mkdir "..\escdir"',
                    r'rename mine.txt "..\moved.txt"', r'rename mine.txt "..\..\moved.txt"',
                    r'put /etc/hostname "%2e%2e%2fescaped2.txt"'):
            self.smbc("escape", cmd)
        # libsmbclient, with encodings smbclient would not send
        base = f"smb://127.0.0.1:{self.port}/escape"
        urls = [f"{base}/..%2Fone%20byte", f"{base}/..%5Cone%20byte",
                f"{base}/%2E%2E/x/y.bin", f"{base}/%2e%2e%2fx%2fy.bin",
                f"{base}/../one%20byte", f"{base}/b/../../x/y.bin",
                f"{base}//etc/passwd", f"{base}/%2Fetc%2Fpasswd",
                f"{base}/\\..\\x\\y.bin", f"{base}/b/%2E%2E/%2E%2E/x/y.bin",
                f"{base}/..%c0%afx/y.bin", f"{base}/%252e%252e/x/y.bin"]
        for url in urls:
            p = self.smbread_url(url)
            assert p.returncode != 0 and p.stdout not in outside.values(), \
                f"{url}: read {len(p.stdout)} bytes"
            refused += 1
        ok = self.smbread_url(f"{base}/sibling.txt")
        assert ok.returncode == 0 and ok.stdout == open(self.sources["tree/a/sibling.txt"], "rb").read()

        lines = self.front_lines(before)
        inside_reqs, bad = 0, []
        for line in lines:
            method, target = line.split()[:2]
            u = urllib.parse.urlsplit(target)
            path = urllib.parse.unquote(u.path)
            if path.rstrip("/") == f"/{BUCKET}":
                q = urllib.parse.parse_qs(u.query, keep_blank_values=True)
                key = q.get("prefix", [""])[0]
            elif path.startswith(f"/{BUCKET}/"):
                key = path[len(BUCKET) + 2:]
            else:
                continue  # another bucket: not this share's traffic
            segs = key.split("/")
            if not key.startswith("tree/a/") or "." in segs or ".." in segs:
                bad.append(line)
            else:
                inside_reqs += 1
        assert not bad, "S3 requests outside the prefix:\n" + "\n".join(bad[:10])
        assert inside_reqs > 0, f"no request of the share in the front's log: {lines[:5]}"
        after = [e for e in self.s3_listing("") if not e[0].startswith("tree/a/")]
        assert after == bucket_before, "an object outside the prefix changed: " \
            f"{sorted(set(after) ^ set(bucket_before))}"
        print(f"    # {refused} escape attempts refused; {inside_reqs} S3 requests, "
              f"all under tree/a/")

    def stop(self):
        self.w.stop_extra_smbd("sec")


@pytest.fixture(scope="module")
def sec(world, sources):
    s = Sec(world, sources)
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def smbd_did_not_panic(sec):
    yield
    with open(sec.log, errors="replace") as f:
        text = f.read()
    assert "PANIC" not in text and "INTERNAL ERROR" not in text, text[-3000:]





def test_a_prefix_share_cannot_reach_keys_outside_its_prefix(sec):
    outside = {k: open(p, "rb").read() for k, p in sec.sources.items()
               if not k.startswith("tree/a/") and os.path.getsize(p) > 0}
    bucket_before = [e for e in sec.s3_listing("") if not e[0].startswith("tree/a/")]
    before = len(sec.front_lines(0))  # after our own listing
    try:
        sec.escape_attempts(outside, before, bucket_before)
    finally:
        # leave tree/a as seeded for the other shares
        for key, _ in sec.s3_listing("tree/a/"):
            if key not in ("tree/a/b/c/deep.txt", "tree/a/sibling.txt"):
                sec.w.s3tool("rm", key)


# ---- point 8: the cache folder is root's and closed ---------------------------


def test_cache_files_are_0600_and_folders_0700_and_roots_when_another_user_fills_them(sec):
    seeded = os.urandom(3 << 20)
    with open(f"{sec.tmp}/seeded.bin", "wb") as f:
        f.write(seeded)
    sec.w.s3tool("put", "perm/seeded.bin", f"{sec.tmp}/seeded.bin")
    cache = f"{sec.tmp}/cache-permfill"
    assert not os.path.exists(cache)
    out = f"{sec.tmp}/perm.out"
    # the unprivileged user makes the first connect (creates the folder),
    # the first fill and the first write
    sec.smbc("permfill", f'get seeded.bin "{out}"', user=OTHER_USER, check=True)
    assert open(out, "rb").read() == seeded
    up = os.urandom(2 << 20)
    with open(f"{sec.tmp}/up.bin", "wb") as f:
        f.write(up)
    with open(sec.control, "w") as f:
        f.write("PUT delay:4 -1")
    pput = subprocess.Popen(["smbclient", "//127.0.0.1/permfill", "-p", str(sec.port), "-U",
                             f"{OTHER_USER}%{PASSWORD}", "-m", "SMB3",
                             "-c", f"put {sec.tmp}/up.bin up.bin"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(300):
            with open(f"{sec.w.tmp}/front-sec.log") as f:
                if any(l.startswith(f"PUT /{BUCKET}/perm/up.bin") for l in f):
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("the upload never reached S3")
        staged = os.listdir(f"{cache}/staging")
        during = sec.walk_cache(cache)
    finally:
        pout = pput.communicate(timeout=120)[0]
        with open(sec.control, "w") as f:
            f.write("")
    assert pput.returncode == 0, pout
    assert staged, "no staging file while the upload ran"
    assert sec.w.s3_sha256("perm/up.bin") == _sha(up)
    after = sec.walk_cache(cache)
    names = {os.path.relpath(p, cache) for p in during | after}
    for want in ("index/data.mdb", "index/lock.mdb", "journal/data.mdb"):
        assert want in names, f"{want} not in the cache: {sorted(names)}"
    assert any(n.startswith("staging/") for n in names), sorted(names)
    assert any(n.startswith("cache/") and not os.path.isdir(os.path.join(cache, n))
               for n in names), sorted(names)
    print(f"    # {len(names)} paths (LMDB, blocks, staging) checked, all root's; "
          f"staged during the upload: {staged}")


# ---- point 8: TLS -----------------------------------------------------------


def test_tls_is_verified_by_default_and_a_ca_file_makes_a_self_signed_server_work(sec):
    for name in ("tlsdefault", "tlswrongca"):
        p = sec.smbc(name, "ls")
        assert "tree connect failed" in p.stdout + p.stderr, f"{name}: {p.stdout}"
        text = open(sec.log, errors="replace").read()
        assert re.search(rf"share {name}: cannot serve bucket '{CLIENT_BUCKET}' at "
                         rf"{re.escape(sec.tls)}: TLS with the S3 endpoint failed .*certificate",
                         text), f"{name}: no clear log line: {text[-2000:]}"
    body = os.urandom(300000)
    with open(f"{sec.tmp}/tls.bin", "wb") as f:
        f.write(body)
    sec.smbc("tlsca", f"mkdir tlsdir; put {sec.tmp}/tls.bin tlsdir/t.bin", check=True)
    assert sec.w_ls(sec.smbc("tlsca", "ls tlsdir/*", check=True).stdout) == {"t.bin": 300000}
    # The engine uploads it (close = local), over TLS with the CA file.
    deadline = time.time() + 60
    while sec.ctl("tlsca", "pending").stdout.strip():  # empty: nothing pending
        assert time.time() < deadline, sec.ctl("tlsca", "pending").stdout
        time.sleep(0.2)
    # forget the cached blocks: the read below comes over TLS again
    sec.ctl("tlsca", "invalidate", "tlsdir/")
    sec.smbc("tlsca", f"get tlsdir/t.bin {sec.tmp}/tls.back", check=True)
    assert open(f"{sec.tmp}/tls.back", "rb").read() == body
    sec.ctl("tlsca", "invalidate", "tlsdir/")
    out = sec.ctl("tlsca", "warm", "tlsdir/").stdout
    assert re.search(r"warmed 1 objects, .*; [1-9]\d* blocks fetched from S3", out), out
    p = sec.ctl("tlsdefault", "warm", "tlsdir/", check=False)
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    sec.smbc("tlsca", "rm tlsdir/t.bin; rmdir tlsdir", check=True)


# ---- point 8: smbd's access sec.control ---------------------------------------------


def test_a_read_only_share_refuses_every_change_and_s3_stays_the_same(sec):
    before = sec.s3_listing("")
    start = len(sec.front_lines(0))
    sec.smbc("ro", f"get a/sibling.txt {sec.tmp}/ro.out", check=True)  # the share works
    refused = 0
    for cmd in ("put /etc/hostname new.txt", "mkdir newdir", "mkdir a/newdir",
                "rename a/sibling.txt a/moved.txt", "rename x/y.bin y.bin",
                "rm x/y.bin", "rm a/sibling.txt", "rmdir a/b/c", "deltree x",
                "setmode a/sibling.txt +r"):
        p = sec.smbc("ro", cmd)
        out = p.stdout + p.stderr
        assert re.search(r"NT_STATUS_(MEDIA_WRITE_PROTECTED|ACCESS_DENIED)", out), \
            f"{cmd}: {out}"
        refused += 1
    assert sec.s3_listing("") == before, "the bucket changed"
    changes = [l for l in sec.front_lines(start) if l.split()[0] not in ("GET", "HEAD")]
    assert not changes, f"changing requests went to S3: {changes}"
    print(f"    # {refused} changes refused")


def test_a_user_not_in_valid_users_is_denied_the_tree_connect(sec):
    sec.smbc("onlyroot", "ls", check=True)
    sec.smbc("perm", "ls", user=OTHER_USER, check=True)  # that user can log in
    p = sec.smbc("onlyroot", "ls", user=OTHER_USER)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and re.search(
        r"tree connect failed: NT_STATUS_(ACCESS_DENIED|BAD_NETWORK_NAME)", out), out
    p = sec.smbread_url(f"smb://127.0.0.1:{sec.port}/onlyroot/one%20byte")
    assert p.returncode == 0 and p.stdout == b"x", p.stderr
    p = subprocess.run([f"{B}/tests/smbread", f"smb://127.0.0.1:{sec.port}/onlyroot/one%20byte",
                        "0", "1"], env=dict(os.environ, SMB_USER=OTHER_USER,
                                            SMB_PASS=PASSWORD),
                       capture_output=True, timeout=60)
    assert p.returncode != 0 and p.stdout == b"", p.stdout


def test_security_smbd_did_not_panic(sec):
    text = open(sec.log, errors="replace").read()
    assert "PANIC" not in text and "INTERNAL ERROR" not in text, text[-3000:]



