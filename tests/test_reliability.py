"""Reliability (issue 7): hostile key names, S3 faults, a full cache disk,
kill -9 at random moments.

Runs on an smbd of its own (so it can be killed), a module fixture, with
the world's servers: the same s3rver, the SigV4 front and the fault-switching front
(w.control, "METHOD MODE COUNT").  Every check reads back through a real
SMB client and compares sha256 with what was written to S3.
"""
import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
import types

import pytest

from smbls import parse_ls
from world import B, TOP, USER, PASSWORD, session

# The Services for Macintosh mapping the module documents (lib/bfs_name.h),
# written again here from the table, not from the C code.
SFM = {chr(c): chr(0xF000 + c) for c in range(1, 0x20)}
SFM.update({c: chr(0xF020 + i) for i, c in enumerate('"*:<>?\\|')})


# Shares with one bad value each: the tree connect is refused with a line
# naming the parameter and what it takes.
BAD_VALUES = {
    "badsize": ("cache size", "12Q", "a size of at least"),
    "badretries": ("retries", "lots", "a whole number from 0 to 20"),
    "badnegative": ("request timeout", "-5", "a whole number from 1"),
    "badblock": ("block size", "5000", "a power of two"),
    "badmode": ("file mode", "0999", "a whole number from 0 to 4095"),
    "badttl": ("metadata ttl", "10s", "a whole number from -1"),
    "badpart": ("part size", "1M", "a size from 5120K to 255M"),
    "badbool": ("verify tls", "maybe", "yes or no"),
}


def smb_name(key_name):
    out = "".join(SFM.get(c, c) for c in key_name)
    if out.endswith(" "):
        out = out[:-1] + "\uf028"
    elif out.endswith("."):
        out = out[:-1] + "\uf029"
    return out


def digest(data):
    return hashlib.sha256(data).hexdigest()


def file_digest(path):
    with open(path, "rb") as f:
        return digest(f.read())


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


class Rel:
    """A second smbd with the reliability shares, restartable with kill -9."""

    def __init__(self, w):
        self.w = w
        self.t = f"{w.tmp}/rel"
        self.bucket = w.env["S3_BUCKET"]
        os.makedirs(self.t, exist_ok=True)
        self.tinyfs = f"{self.t}/tinyfs"
        os.makedirs(self.tinyfs, exist_ok=True)
        # A 16 MiB disk under a cache allowed 64 MiB: the disk fills first.
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs",
                        self.tinyfs], check=True)

        # An S3 endpoint that takes connections and never answers (the
        # kernel completes them; nothing accepts or reads).
        self.silent = socket.socket()
        self.silent.bind(("127.0.0.1", 0))
        self.silent.listen(64)

        def share(name, prefix, extra="", endpoint=None):
            return (f"[{name}]\n  path = /bucketfs/{name}\n  vfs objects = bucketfs\n"
                    f"  bucketfs:endpoint = {endpoint or w.endpoint}\n"
                    f"  bucketfs:path style = yes\n"
                    f"  bucketfs:credentials file = {w.tmp}/creds\n"
                    f"  bucketfs:bucket = {self.bucket}\n  bucketfs:prefix = {prefix}\n"
                    f"  bucketfs:cache dir = {self.t}/cache-{name}\n{extra}")
        shares = (
            share("hostile", "hostile", "  read only = no\n  bucketfs:close = s3\n")
            + share("faulty", "faulty",
                    "  bucketfs:retries = 3\n  bucketfs:request timeout = 4\n"
                    "  bucketfs:metadata ttl = -1\n  bucketfs:readahead = 0\n",
                    endpoint=f"http://127.0.0.1:{w.control_port}")
            + share("tiny", "tiny", "  read only = no\n  bucketfs:close = s3\n  bucketfs:cache size = 64M\n"
                    "  bucketfs:block size = 1M\n").replace(
                        f"{self.t}/cache-tiny", self.tinyfs)
            + share("crash", "crash", "  read only = no\n  bucketfs:close = s3\n  bucketfs:cache size = 8M\n"
                    "  bucketfs:block size = 1M\n  bucketfs:multipart threshold = 8M\n"
                    "  bucketfs:part size = 5M\n")
            + share("crashlocal", "crashlocal",
                    "  read only = no\n  bucketfs:cache size = 8M\n"
                    "  bucketfs:block size = 1M\n  bucketfs:multipart threshold = 8M\n"
                    "  bucketfs:part size = 5M\n  bucketfs:close = local\n")
            + share("hx", "hx", "  bucketfs:metadata ttl = 0\n",
                    endpoint=f"http://127.0.0.1:{w.control_port}")
            + share("herd", "herd", "  bucketfs:metadata ttl = 3\n",
                    endpoint=f"http://127.0.0.1:{w.control_port}")
            # The bucket's root, whose probe is a HeadBucket: one share
            # probed at every connect (TTL 0), one trusting a probe within
            # its TTL (the default), with credentials of its own.
            + share("probe0", "", "  bucketfs:metadata ttl = 0\n  bucketfs:retries = 3\n",
                    endpoint=f"http://127.0.0.1:{w.control_port}").replace(
                        "  bucketfs:prefix = \n", "")
            + share("silent", "", "  bucketfs:request timeout = 60\n  bucketfs:retries = 4\n",
                    endpoint=f"http://127.0.0.1:{self.silent.getsockname()[1]}").replace(
                        "  bucketfs:prefix = \n", "")
            + share("proof", "", "  bucketfs:metadata ttl = 600\n",
                    endpoint=f"http://127.0.0.1:{w.control_port}").replace(
                        "  bucketfs:prefix = \n", "").replace(
                        f"credentials file = {w.tmp}/creds", f"credentials file = {self.t}/proofcreds")
            + "".join(share(name, "hostile", f"  bucketfs:{param} = {value}\n")
                      for name, (param, value, _) in BAD_VALUES.items()))
        self.env = dict(os.environ, AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER")
        self.proof_creds("S3RVER")
        self.port, self.log = w.start_extra_smbd("rel", shares, self.env)
        self.conf = f"{self.t}/smb.conf"
        self.smbd = w.extra["rel"]
        self.starts = 1

    def close(self):
        try:
            os.killpg(self.smbd.pid, signal.SIGKILL)
            self.smbd.wait(timeout=30)
        except ProcessLookupError:
            pass
        subprocess.run(["umount", "-l", self.tinyfs], capture_output=True)
        self.silent.close()
        # Engines this smbd started outlive it.
        subprocess.run(["pkill", "-KILL", "-f", f"bucketfsd -s {self.conf} "],
                       capture_output=True)

    def smbclient(self, share, commands, check=True, timeout=300):
        p = subprocess.run(["smbclient", f"//127.0.0.1/{share}", "-p", str(self.port),
                            "-U", f"{USER}%{PASSWORD}", "-m", "SMB3", "-t", "120",
                            "-c", commands], capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"smbclient {commands!r}: exit {p.returncode}: "
                                 f"{p.stdout[-1500:]}{p.stderr[-1500:]}")
        return p

    def get(self, share, name, dest):
        if os.path.exists(dest):
            os.remove(dest)
        return self.smbclient(share, f'get "{name}" "{dest}"', check=False)

    def ctl(self, share, *args):
        return subprocess.run([f"{B}/bucketfs-ctl", "-s", self.conf, share, *args],
                              capture_output=True, text=True, timeout=300)

    def kill_and_restart(self):
        pgid = self.smbd.pid
        os.killpg(pgid, signal.SIGKILL)
        self.smbd.wait(timeout=30)
        for _ in range(200):
            if subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True).returncode:
                break
            time.sleep(0.05)
        self.starts += 1
        self.smbd = self.w.spawn(["smbd", "--foreground", "--no-process-group", "-s",
                                  self.conf], f"smbd-rel-{self.starts}", env=self.env)
        wait_port(self.port)

    def proof_creds(self, secret):
        """The [proof] share's credentials file, with this secret."""
        path = f"{self.t}/proofcreds"
        with open(path, "w") as f:
            f.write(f"[default]\naws_access_key_id = S3RVER\naws_secret_access_key = {secret}\n")
        os.chmod(path, 0o600)

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()


@pytest.fixture(scope="module")
def rel(world):
    r = Rel(world)
    try:
        yield r
    finally:
        r.close()


put_n = [0]


def s3_put(rel, key, data):
    put_n[0] += 1
    src = f"{rel.t}/put-{put_n[0]}"
    with open(src, "wb") as f:
        f.write(data)
    p = subprocess.run([f"{B}/s3tool", "put", key, src], env=rel.w.env,
                       capture_output=True, timeout=120)
    os.remove(src)
    if p.returncode != 0:
        print(f"# s3tool put {key!r}: {p.stderr.decode(errors='replace')}", flush=True)
    return p.returncode == 0


def s3_get(rel, key):
    out = f"{rel.t}/s3get"
    p = subprocess.run([f"{B}/s3tool", "get", key, out], env=rel.w.env,
                       capture_output=True, timeout=120)
    if p.returncode != 0:
        return None
    with open(out, "rb") as f:
        data = f.read()
    os.remove(out)
    return data


def front_lines(rel):
    with open(f"{rel.w.tmp}/front-control.log", errors="replace") as f:
        return f.read().splitlines()


# ---- hostile names -------------------------------------------------------


def test_hostile_keys_get_the_documented_mapping_or_are_hidden_with_a_log_line(rel):
    # s3rver keeps objects as files named after the key, so keys with
    # dot segments, invalid UTF-8, control characters other than tab
    # (its XML cannot carry them) or components over 240 bytes cannot
    # be stored there at all: lib/bfs_name's unit tests and fuzz target
    # cover those.
    shown = ["back\\slash", "co:lon", "st*ar", "q?mark", 'quo"te', "<angle>",
             "pi|pe", "dot.", "space ", "tab\tx", "...", "caf\u00e9 ok"]
    hidden = {":" * 100 + "x": "longer than 255 bytes",
              "pua\uf022x": "a character of the SMB name mapping",
              "holds/": "ending in '/' that holds data",
              "same": "the name of a directory"}
    bodies = {}
    for name in shown + list(hidden) + ["same/inner"]:
        data = os.urandom(random.randint(1, 5000))
        assert s3_put(rel, "hostile/" + name, data), f"s3 put of {name!r} failed"
        bodies[name] = data
    # Put behind the share's back: a test before may have listed the folder
    # (within its TTL the share would still show that listing).
    inv = rel.ctl("hostile", "invalidate", "")
    assert inv.returncode == 0, inv.stdout + inv.stderr
    names = set(parse_ls(rel.smbclient("hostile", "ls").stdout))
    want = {smb_name(n) for n in shown} | {"holds", "same"}
    assert names == want, f"listing: missing {want - names}, extra {names - want}"
    for n in shown:
        dest = f"{rel.t}/got"
        p = rel.get("hostile", smb_name(n), dest)
        assert p.returncode == 0, f"get {n!r}: {p.stdout}{p.stderr}"
        assert file_digest(dest) == digest(bodies[n]), f"{n!r} read back wrong"
    # Names a client creates come back as the keys they stand for.
    with open(f"{rel.t}/new", "wb") as f:
        f.write(b"written through SMB\n")
    rel.smbclient("hostile", f'put "{rel.t}/new" "{smb_name("new:file.")}"')
    assert s3_get(rel, "hostile/new:file.") == b"written through SMB\n"
    rel.smbclient("hostile", "cd holds; ls")  # the marker with data
    log = rel.log_text()
    for key, why in hidden.items():
        assert why in log, f"no log line for hidden {key!r} ({why}):\n{log[-3000:]}"
    # Nothing was asked of S3 outside the share's prefix or with a dot segment.
    with open(f"{rel.w.tmp}/front.log", errors="replace") as f:
        dots = [line for line in f if "/hostile/../" in line or "/hostile/./" in line]
    assert all(not line.startswith("GET") or "list-type" in line for line in dots), dots


def test_dot_dot_from_a_client_stays_inside_the_share_prefix(rel):
    before = open(f"{rel.w.tmp}/front.log", errors="replace").read().count("\n")
    for path in ["..\\escape", "..\\..\\escape", "\\..\\escape", "a\\..\\..\\escape"]:
        p = rel.get("hostile", path, f"{rel.t}/esc")
        assert p.returncode != 0 and "NT_STATUS" in p.stdout + p.stderr, \
            f"{path!r} was served: {p.stdout}"
    with open(f"{rel.w.tmp}/front.log", errors="replace") as f:
        new = f.read().splitlines()[before:]
    outside = [line for line in new if len(line.split()) > 1
               and line.split()[1].startswith("/" + rel.bucket + "/")
               and not line.split()[1].startswith(f"/{rel.bucket}/hostile/")
               and "list-type" not in line]
    assert not outside, f"requests outside the prefix: {outside}"


def test_bad_smb_conf_values_refuse_the_tree_connect_with_a_clear_line(rel):
    for name, (param, value, want) in BAD_VALUES.items():
        p = rel.smbclient(name, "ls", check=False)
        assert p.returncode != 0 and "tree connect failed" in p.stdout + p.stderr, \
            f"{name}: {p.stdout}{p.stderr}"
        line = f"share {name}: 'bucketfs:{param}' must be {want}"
        log = rel.log_text()
        assert line in log and f"not '{value}'" in log, f"{name}: no line '{line}'"
    # And a good share of the same smbd still serves.
    rel.smbclient("hostile", "ls")

# Listings S3 could send but s3rver cannot store: served by the front.


def listing_doc(rel, keys, prefixes, encoded=True):
    parts = ['<?xml version="1.0" encoding="UTF-8"?>'
             '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
             f'<Name>{rel.bucket}</Name><Prefix>hx/</Prefix><Delimiter>/</Delimiter>'
             + ('<EncodingType>url</EncodingType>' if encoded else '')
             + '<IsTruncated>false</IsTruncated>']
    for k, size in keys:
        parts.append(f'<Contents><Key>{k}</Key><Size>{size}</Size>'
                     '<ETag>"0123456789abcdef0123456789abcdef"</ETag>'
                     '<LastModified>2026-01-01T00:00:00.000Z</LastModified></Contents>')
    for p in prefixes:
        parts.append(f'<CommonPrefixes><Prefix>{p}</Prefix></CommonPrefixes>')
    parts.append('</ListBucketResult>')
    return "".join(parts).encode()


def serve_listing(rel, name, doc):
    path = f"{rel.t}/{name}.xml"
    with open(path, "wb") as f:
        f.write(doc)
    rel.w.fault(f"GET body:{path} -1 list-type=2&prefix=hx%2F")


def test_keys_s3_may_hold_and_smb_cannot_are_mapped_or_hidden_from_a_real_listing(rel):
    # url-encoded, as asked with encoding-type=url
    serve_listing(rel, "hostile-keys", listing_doc(rel, 
        [("hx/ok.txt", 3), ("hx/ctl%01x", 4), ("hx/bad%FFname", 5),
         ("hx/" + "L" * 300, 6), ("hx/%2E%2E", 7), ("hx/", 8),
         ("hx/sp+ace.", 9)],
        ["hx/..%2F", "hx/sub%3A/", "hx/%2F"]))
    try:
        names = set(parse_ls(rel.smbclient("hx", "ls").stdout))
    finally:
        rel.w.fault("")
    want = {"ok.txt", "ctl\uf001x", "sp ace\uf029", "sub\uf022"}
    assert names == want, f"listing: missing {want - names}, extra {names - want}"
    log = rel.log_text()
    for why in ("'hx/bad\\xffname': not valid UTF-8", "longer than 255 bytes",
                "'hx/..': a '.' or '..' path segment", "'hx/../': a '.' or '..'",
                "'hx/': a key ending in '/' that holds data", "'hx//': an empty path"):
        assert why in log, f"no log line with {why!r}"


def test_hostile_listing_documents_are_refused_and_smbd_keeps_serving(rel):
    docs = {
        # a 20 MiB key: the parser holds at most 4 KiB of text
        "huge": listing_doc(rel, [("hx/" + "A" * (20 << 20), 1)], [], encoded=False),
        "deep": b"<ListBucketResult>" + b"<a>" * 100000 + b"</a>" * 100000
                + b"</ListBucketResult>",
        "laughs": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                  + b"".join(b'<!ENTITY %c "&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;">'
                             % ((98 + i,) + (97 + i,) * 10) for i in range(9))
                  + b']><ListBucketResult><Contents><Key>&j;</Key><Size>1</Size>'
                    b'</Contents></ListBucketResult>',
        "external": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY x SYSTEM '
                    b'"file:///etc/shadow">]><ListBucketResult><Contents><Key>&x;</Key>'
                    b'<Size>1</Size></Contents></ListBucketResult>',
        "notxml": b"\x00\xff" * 1000,
        "cut": listing_doc(rel, [("hx/a", 1)], [])[:-30],
        "badescape": listing_doc(rel, [("hx/a%00b", 1)], []),
        # pages without end: truncated, the same continuation token again
        "endless": listing_doc(rel, [("hx/a", 1)], []).replace(
            b"<IsTruncated>false</IsTruncated>",
            b"<IsTruncated>true</IsTruncated>"
            b"<NextContinuationToken>again</NextContinuationToken>"),
    }
    for name, doc in docs.items():
        before = rel.log_text().count("MalformedListing")
        log_at = len(rel.log_text())
        front_at = len(open(f"{rel.w.tmp}/front.log", errors="replace").read())
        serve_listing(rel, name, doc)
        try:
            p = rel.smbclient("hx", "ls", check=False)
        finally:
            rel.w.fault("")
        out = p.stdout + p.stderr
        # Seen once in CI (2026-12-06, "laughs"): the listing came back
        # as s3rver's empty one, cause unknown; what the front and smbd
        # said then is printed should it happen again.
        assert "NT_STATUS" in out and "AAAA" not in out and "root:" not in out, \
            f"{name}: {out[-500:]}\n--- front:\n" + "\n".join(
                l for l in open(f"{rel.w.tmp}/front.log", errors="replace").read()[
                    front_at:].splitlines() if "hx" in l)[-2000:] + \
            "\n--- smbd:\n" + rel.log_text()[log_at:][-3000:]
        assert rel.log_text().count("MalformedListing") > before, f"{name}: no log line"
        assert rel.smbd.poll() is None, f"{name}: smbd died"
        rel.smbclient("hx", "ls")  # s3rver's own (empty) answer again


# ---- S3 faults -------------------------------------------------------------
MODES = ["503", "500", "reset", "truncate", "midreset", "short", "flip"]


@pytest.fixture(scope="module")
def faulty(rel):
    """Objects behind the fault front: per mode one a fault is cured for,
    one it stays on for, one of several blocks; a slow one and a cached one."""
    f = types.SimpleNamespace(small={}, big={})
    for mode in MODES:
        for kind in ("ok", "fail"):
            f.small[(mode, kind)] = os.urandom(200 * 1024 + random.randint(0, 999))
            assert s3_put(rel, f"faulty/{mode}-{kind}.bin", f.small[(mode, kind)])
        f.big[mode] = os.urandom(3 * 1024 * 1024 + 12345)
        assert s3_put(rel, f"faulty/{mode}-big.bin", f.big[mode])
    f.delayed = os.urandom(300 * 1024)
    assert s3_put(rel, "faulty/delayed.bin", f.delayed)
    f.cached = os.urandom(100 * 1024)
    assert s3_put(rel, "faulty/cached.bin", f.cached)
    f.swapped = os.urandom(2 * 1024 * 1024 + 777)
    assert s3_put(rel, "faulty/swapped.bin", f.swapped)
    rel.w.fault("")
    # Listed once before any fault (ttl -1): faults below hit data GETs.
    rel.smbclient("faulty", "ls")
    return f


def count_faults(rel):
    """{fault: requests that got it} from the front's log."""
    faults = {}
    for line in front_lines(rel):
        m = re.search(r" fault=(\S+)", line)
        if m and m.group(1) != "-":
            kind = re.sub(r"^body:.*/(.*)\.xml$", r"listing:\1", m.group(1))
            faults[kind] = faults.get(kind, 0) + 1
    return faults


def test_each_s3_fault_is_retried_and_never_serves_a_wrong_byte(rel, faulty):
    for mode in MODES:
        if mode != "flip":
            # Listings too.
            rel.w.fault(f"GET {mode} 2 list-type")
            ls = rel.smbclient("faulty", "ls", check=False)
            assert ls.returncode == 0 and f"{mode}-ok.bin" in ls.stdout, \
                f"listing with {mode}: {ls.stdout}{ls.stderr}"
        rel.w.fault(f"GET {mode} 2 /faulty/{mode}-ok.bin")
        p = rel.get("faulty", f"{mode}-ok.bin", f"{rel.t}/f")
        assert p.returncode == 0, f"{mode}: {p.stdout}{p.stderr}"
        assert file_digest(f"{rel.t}/f") == digest(faulty.small[(mode, "ok")]), f"{mode}: wrong bytes"
        if mode != "flip":
            # Range GETs of a multi-block object (flips inside a range
            # carry no checksum in S3's protocol: see the README).
            rel.w.fault(f"GET {mode} 2 /faulty/{mode}-big.bin")
            p = rel.get("faulty", f"{mode}-big.bin", f"{rel.t}/f")
            assert p.returncode == 0, f"{mode} big: {p.stdout}{p.stderr}"
            assert file_digest(f"{rel.t}/f") == digest(faulty.big[mode]), f"{mode} big: wrong bytes"
        rel.w.fault("")
    # Each fault was injected: the front's log says which requests got one.
    faults = count_faults(rel)
    print(f"    # faults injected per class: {dict(sorted(faults.items()))}")
    assert not [m for m in MODES if not faults.get(m)], f"never injected: {faults}"


def test_clients_finding_a_listing_stale_together_share_one_s3_listing(rel):
    # Training workers start at once after the TTL ran out: each is
    # served the index at once, and the engine relists the folder once
    # for all of them.
    for i in range(3):
        assert s3_put(rel, f"herd/f{i}", b"x")
    listing = "list-type=2&prefix=herd%2F"  # not the probe (max-keys=1)
    lists = lambda: open(f"{rel.w.tmp}/front-control.log", errors="replace").read().count(listing)
    # The objects were put behind the share's back: a listing of [herd]
    # that another test made less than a TTL ago would still be trusted
    # (and, past it, served while revalidated), so drop it first.
    ctl = rel.ctl("herd", "invalidate", "")
    assert ctl.returncode == 0, ctl.stdout + ctl.stderr
    assert "f2" in rel.smbclient("herd", "ls").stdout
    time.sleep(4)  # the TTL (3 s) ran out
    before = lists()
    rel.w.fault(f"GET delay:3 1 {listing}")  # a slow listing: they pile up
    clients = [subprocess.Popen(["smbclient", "//127.0.0.1/herd", "-p", str(rel.port),
                                 "-U", f"{USER}%{PASSWORD}", "-m", "SMB3", "-t", "120",
                                 "-c", "ls"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for _ in range(6)]
    outs = [c.communicate(timeout=120)[0] for c in clients]
    rel.w.fault("")
    for c, out in zip(clients, outs):
        assert c.returncode == 0 and "f2" in out, out
    assert lists() - before == 1, f"{lists() - before} S3 listings for 6 clients"


def head_buckets(rel):
    """The HeadBucket requests the fault front has seen, with their faults."""
    return [line for line in front_lines(rel)
            if re.match(rf"HEAD /{re.escape(rel.bucket)}/? ", line)]


def test_the_connect_probe_retries_and_falls_back_to_a_listing(rel):
    # The tree connect's HeadBucket: answered 503 twice, it is retried;
    # refused for good (as by a server without HeadBucket), the listing
    # asked next proves the bucket instead.  [probe0] trusts no earlier
    # probe (TTL 0): each connect asks, retrying twice at most (its
    # 'retries = 3' is for other requests).
    for spec, fault, times in (("HEAD 503 2", "fault=503", 2), ("HEAD 500 -1", "fault=500", 3)):
        before = len(head_buckets(rel))
        rel.w.fault(spec)
        ls = rel.smbclient("probe0", "ls", check=False)
        rel.w.fault("")
        assert ls.returncode == 0, f"{spec}: {ls.stdout}{ls.stderr}"
        heads = head_buckets(rel)[before:]
        assert sum(fault in line for line in heads) == times, f"{spec}: {heads}"


def test_a_server_that_never_answers_fails_the_connect_in_seconds_not_minutes(rel):
    """The tree connect holds the client's whole connection.  With
    'request timeout = 60' and 'retries = 4' a HeadBucket that is never
    answered held it five minutes, and the listing asked after it five
    more; the probe gives each look 8 s and retries twice, and does not
    ask again as a listing."""
    refused = re.compile(r"share silent: cannot serve bucket .*the S3 endpoint is "
                         r"unreachable \(Timeout was reached")
    start = time.monotonic()
    p = rel.smbclient("silent", "ls", check=False)
    assert p.returncode != 0, p.stdout
    # smbclient may give up first (after 40 s): smbd's refusal is the end.
    while not refused.search(rel.log_text()):
        assert time.monotonic() - start < 120, "smbd still probes after 120 s"
        time.sleep(0.2)
    took = time.monotonic() - start
    print(f"    # a connect to an S3 server that never answers was refused in {took:.1f} s")
    assert took < 60, f"the connect took {took:.0f} s"


def test_a_client_connecting_again_within_the_ttl_is_not_probed_again(rel):
    """A connect trusts the bucket's answer to an earlier probe with the
    same settings and credentials for the share's TTL (600 s here, so that
    a slow run stays within it): no S3 round trip.  A changed secret is no such proof: asked, and
    refused; the right one again is trusted at once."""
    rel.proof_creds("S3RVER")
    before = len(head_buckets(rel))
    rel.smbclient("proof", "ls")
    assert len(head_buckets(rel)) > before, "the first connect did not probe"
    # The engines these connects start look up the bucket's region once
    # as they start: let them, then count.
    rel.smbclient("herd", "ls")
    for name in ("proof", "herd"):
        engine_log = f"{rel.t}/cache-{name}/engine.log"
        deadline = time.time() + 120
        while not (os.path.exists(engine_log) and "ready" in open(engine_log).read()):
            assert time.time() < deadline, f"[{name}]'s engine never started"
            time.sleep(0.1)
    before = len(head_buckets(rel))
    for _ in range(3):
        rel.smbclient("proof", "ls")
    heads = head_buckets(rel)[before:]
    assert heads == [], f"3 connects made {len(heads)} HeadBuckets: {heads}"
    before = len(head_buckets(rel))
    try:
        rel.proof_creds("not-the-secret")
        p = rel.smbclient("proof", "ls", check=False)
        assert p.returncode != 0, p.stdout
        assert re.search(r"share proof: cannot serve bucket .*the S3 server refused the "
                         r"credentials", rel.log_text()), rel.log_text()[-2000:]
        assert len(head_buckets(rel)) > before, "a new secret was not asked about"
    finally:
        rel.proof_creds("S3RVER")
    asked = len(head_buckets(rel))
    rel.smbclient("proof", "ls")
    assert len(head_buckets(rel)) == asked, "the right secret's proof was not trusted"
    # A box that mounts a second share over the connection it has (the
    # Linux client keeps one per server): with every HeadBucket held 5 s,
    # the tree connect of [proof] answers at once and sends none.
    script = (
        "import sys, time\n"
        "from impacket import smb3structs as s3\n"
        "from impacket.smbconnection import SMBConnection\n"
        f"conn = SMBConnection('127.0.0.1', '127.0.0.1', sess_port={rel.port},\n"
        "                     preferredDialect=s3.SMB2_DIALECT_30, timeout=120)\n"
        f"conn.login('{USER}', '{PASSWORD}')\n"
        "conn.connectTree('herd')\n"
        "conn.listPath('herd', '*')\n"
        "start = time.monotonic()\n"
        "conn.connectTree('proof')\n"
        "took = time.monotonic() - start\n"
        "conn.listPath('proof', '*')\n"
        "print(took)\n")
    rel.w.fault("HEAD delay:5 -1")
    try:
        p = subprocess.run(["/usr/bin/python3", "-c", script], capture_output=True,
                           text=True, timeout=120)
    finally:
        rel.w.fault("")
    assert p.returncode == 0, p.stdout + p.stderr
    took = float(p.stdout.split()[-1])
    print(f"    # second share's tree connect on one connection, HeadBuckets held 5 s: {took:.3f} s")
    assert took < 2.5, f"the second tree connect took {took:.1f} s"
    assert len(head_buckets(rel)) == asked, "the second tree connect asked S3"


def test_a_fault_that_does_not_go_away_is_a_clean_smb_error_then_heals(rel, faulty):
    for mode in MODES:
        rel.w.fault(f"GET {mode} -1 /faulty/{mode}-fail.bin")
        p = rel.get("faulty", f"{mode}-fail.bin", f"{rel.t}/f")
        out = p.stdout + p.stderr
        assert p.returncode != 0 and "NT_STATUS" in out, f"{mode}: {out}"
        # A partly written local file must not hold wrong bytes either.
        if os.path.exists(f"{rel.t}/f"):
            got = open(f"{rel.t}/f", "rb").read()
            assert faulty.small[(mode, "fail")].startswith(got), f"{mode}: wrong partial bytes"
        rel.w.fault("")
        p = rel.get("faulty", f"{mode}-fail.bin", f"{rel.t}/f")
        assert p.returncode == 0 and \
            file_digest(f"{rel.t}/f") == digest(faulty.small[(mode, "fail")]), f"{mode} after"
    assert "BadResponseBody" in rel.log_text() or "checksum" in rel.log_text()


def test_a_get_answered_with_another_version_than_its_if_match_is_refused_not_served(rel, faulty):
    """A server that ignores If-Match on GET (s3rver alone), or checks it
    apart from the GET it forwards (a proxy; our own front before, whose
    race CI met as a cluster read mixing two versions), answers the object
    as it is now.  Its ETag says so: the read fails and the next open lists
    again, never a byte of the new version under the old one's name."""
    new = os.urandom(len(faulty.swapped))
    assert s3_put(rel, "faulty/swapped.bin", new)  # the index (ttl -1) has the old
    rel.w.fault("GET stale -1 /faulty/swapped.bin")
    try:
        p = rel.get("faulty", "swapped.bin", f"{rel.t}/f")
        out = p.stdout + p.stderr
        assert p.returncode != 0 and "NT_STATUS_IO_DEVICE_ERROR" in out, out
        if os.path.exists(f"{rel.t}/f"):
            assert open(f"{rel.t}/f", "rb").read() == b"", "bytes of another version served"
        assert [line for line in front_lines(rel)
                if "/faulty/swapped.bin" in line and "fault=stale" in line
                and "if-match=None" not in line], "the GET carried no If-Match"
        assert "swapped.bin changed since it was opened" in rel.log_text()
        # The read forgot the listing: the next open finds the new object.
        p = rel.get("faulty", "swapped.bin", f"{rel.t}/f")
        assert p.returncode == 0, p.stdout + p.stderr
        assert file_digest(f"{rel.t}/f") == digest(new)
    finally:
        rel.w.fault("")


def test_a_stalled_s3_request_times_out_and_others_are_served_meanwhile(rel, faulty):
    p = rel.get("faulty", "cached.bin", f"{rel.t}/c")
    assert p.returncode == 0
    rel.w.fault("GET delay:9 1 /faulty/delayed.bin")
    slow = {}

    def slow_read():
        slow["p"] = rel.get("faulty", "delayed.bin", f"{rel.t}/d")
        slow["end"] = time.time()
    t = threading.Thread(target=slow_read)
    t.start()
    # The front logs a request as it comes: the stall has begun.
    stalled = re.compile(r"^GET /\S*faulty/delayed\.bin\S* fault=delay:", re.M)
    for _ in range(300):
        with open(f"{rel.w.tmp}/front-control.log") as f:
            if stalled.search(f.read()):
                break
        time.sleep(0.1)
    else:
        raise AssertionError("the read of delayed.bin never reached S3")
    others_end = []
    for _ in range(3):
        q = rel.get("faulty", "cached.bin", f"{rel.t}/c2")
        assert q.returncode == 0 and file_digest(f"{rel.t}/c2") == digest(faulty.cached)
        rel.smbclient("faulty", "ls")
        others_end.append(time.time())
    t.join(120)
    rel.w.fault("")
    assert not t.is_alive(), "the stalled read never ended"
    assert slow["p"].returncode == 0, slow["p"].stdout + slow["p"].stderr
    assert file_digest(f"{rel.t}/d") == digest(faulty.delayed)
    # Ordering, not timing: the first of the others, begun during the
    # stall, ended before it (one that waited for it would end after; the
    # later ones may outlast the 4 s timeout on a busy machine).
    assert others_end[0] < slow["end"], "other clients waited for the stalled request"


# ---- a full cache disk -----------------------------------------------------


def test_a_full_cache_disk_keeps_reads_right_and_fails_writes_with_disk_full(rel):
    data = {f"big{i}.bin": os.urandom(8 << 20) for i in range(4)}  # 2x the disk
    for name, body in data.items():
        assert s3_put(rel, f"tiny/{name}", body)
    # Put behind the share's back: a listing of its root younger than the
    # TTL (another test's) would not show them yet.
    inv = rel.ctl("tiny", "invalidate", "")
    assert inv.returncode == 0, inv.stdout + inv.stderr
    for _ in range(2):
        for name, body in data.items():
            p = rel.get("tiny", name, f"{rel.t}/t")
            assert p.returncode == 0, p.stdout + p.stderr
            assert file_digest(f"{rel.t}/t") == digest(body), f"{name} read wrong"
    st = os.statvfs(rel.tinyfs)
    free = st.f_bavail * st.f_frsize
    with open(f"{rel.t}/huge", "wb") as f:
        f.write(os.urandom(20 << 20))
    p = rel.smbclient("tiny", f'put "{rel.t}/huge" huge.bin', check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "NT_STATUS_DISK_FULL" in out, f"free {free}: {out}"
    assert s3_get(rel, "tiny/huge.bin") is None, "a failed write reached S3"
    log = rel.log_text()
    assert "cache folder is full" in log or "No space left" in log, \
        f"no log line for the full disk: {out}\n{log[-3000:]}"
    # Still serving, still right.
    for name, body in data.items():
        p = rel.get("tiny", name, f"{rel.t}/t")
        assert p.returncode == 0 and file_digest(f"{rel.t}/t") == digest(body)
    # Room made by the admin: writes work again.
    inv = rel.ctl("tiny", "invalidate", "")
    assert inv.returncode == 0, inv.stdout + inv.stderr
    with open(f"{rel.t}/after", "wb") as f:
        f.write(os.urandom(1 << 20))
    rel.smbclient("tiny", f'put "{rel.t}/after" after.bin')
    assert s3_get(rel, "tiny/after.bin") == open(f"{rel.t}/after", "rb").read()
    fsck = rel.ctl("tiny", "fsck", "--dry-run")
    assert fsck.returncode == 0 and fsck.stdout.rstrip().endswith("clean"), fsck.stdout


def test_a_flush_on_a_disk_too_full_for_its_copy_still_reaches_s3(rel):
    # A flush uploads a copy of the staging file; where the disk has no
    # room for one, it uploads the file itself (the connection waits).
    inv = rel.ctl("tiny", "invalidate", "")  # the cache gives its room back
    assert inv.returncode == 0, inv.stdout + inv.stderr
    body = os.urandom(10 << 20)  # the 16 MiB disk holds it once, not twice
    with open(f"{rel.t}/tenmb", "wb") as f:
        f.write(body)
    p, ask = session(rel.w, "tiny", rel.port)
    try:
        ask(f"write tenmb.bin {rel.t}/tenmb")
        ask("flush tenmb.bin")
        assert s3_get(rel, "tiny/tenmb.bin") == body, "not in S3 after the flush"
        ask("close tenmb.bin")
    finally:
        p.stdin.close()
        p.wait(timeout=60)
    assert "cannot copy its staging file" in rel.log_text()
    assert not os.listdir(f"{rel.tinyfs}/staging"), "staging left"


# ---- kill -9 at random moments -----------------------------------------------


def crash_loop(rel, share, loops, stats, kill):
    """Reads, uploads and renames through share, each cut by kill() at
    a random moment; nothing acknowledged may be lost, no wrong byte
    served."""
    seed = int(os.environ.get("CRASH_SEED", str(int(time.time()))))
    print(f"    # {share}: CRASH_SEED={seed} replays this loop", flush=True)
    rng = random.Random(seed)
    reads = {f"r{i}.bin": os.urandom((3 << 20) + i * 4099) for i in range(4)}
    for name, body in reads.items():
        assert s3_put(rel, f"{share}/{name}", body)
    acked = {}  # S3 key -> bytes a client was told are stored
    maybe = {}  # key -> bytes whose write was cut: either in S3 or not
    moved = []  # (old key, new key, bytes): renames of objects S3 had
    kinds = ["fill", "upload", "rename", "evict", "flush", "move", "movedir"]
    # Each scenario once (in the seed's order), then as the seed draws:
    # a run of 6 loops or more never leaves one out.
    order = rng.sample(kinds, len(kinds))
    for i in range(loops):
        scenario = order[i] if i < len(order) else rng.choice(kinds)
        stats["scenarios"][scenario] = stats["scenarios"].get(scenario, 0) + 1
        procs = []
        if scenario in ("fill", "evict"):
            if scenario == "fill":
                rel.ctl(share, "invalidate", "")
            for name in (list(reads) if scenario == "evict" else [rng.choice(list(reads))]):
                procs.append(("read", name, subprocess.Popen(
                    ["smbclient", f"//127.0.0.1/{share}", "-p", str(rel.port), "-U",
                     f"{USER}%{PASSWORD}", "-m", "SMB3", "-c",
                     f'get {name} "{rel.t}/crash-{name}"'],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
        else:
            size = rng.choice([100 << 10, 3 << 20, 12 << 20])  # 12M: multipart
            body = os.urandom(size)
            src = f"{rel.t}/crash-src-{i}"
            with open(src, "wb") as f:
                f.write(body)
            final = f"w{i}.bin"
            if scenario == "move":
                # A rename of an object S3 has: with close = local the
                # engine's copy and delete, journalled at the rename.
                assert s3_put(rel, f"{share}/tmp{i}.bin", body)
                rel.ctl(share, "invalidate", "")
            if scenario == "movedir":
                # A folder S3 has (a checkpoint folder renamed whole):
                # with close = local each object's copy and delete is the
                # engine's, journalled at the rename.  Half the time with
                # markers, half as another S3 client uploads it (no
                # markers: the rename gives the new folders theirs).
                small = os.urandom(70_000)
                markers = rng.random() < 0.5
                how = "movedir " + ("markers" if markers else "implied")
                stats["scenarios"][how] = stats["scenarios"].get(how, 0) + 1
                for key, data in ((f"d{i}/", b""), (f"d{i}/sub/", b""),
                                  (f"d{i}/a.bin", body), (f"d{i}/sub/b.bin", small)):
                    if markers or not key.endswith("/"):
                        assert s3_put(rel, f"{share}/{key}", data)
                rel.ctl(share, "invalidate", "")
                body = (body, small)
            if scenario == "flush":
                # An SMB2 flush of a file still open: durable once answered.
                with open(f"{src}.cmds", "w") as f:
                    f.write(f"write {final} {src}\nflush {final}\nclose {final}\nquit\n")
                with open(f"{src}.cmds") as cmds:
                    procs.append((scenario, (i, final, body), subprocess.Popen(
                        ["/usr/bin/python3",
                         os.path.join(TOP, "tests/integration/smbsession.py"),
                         str(rel.port), share, USER, PASSWORD],
                        stdin=cmds, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
            else:
                cmd = (f'put "{src}" {final}' if scenario == "upload" else
                       f'rename tmp{i}.bin {final}' if scenario == "move" else
                       f'rename d{i} e{i}' if scenario == "movedir" else
                       f'put "{src}" tmp{i}.bin; rename tmp{i}.bin {final}')
                procs.append((scenario, (i, final, body), subprocess.Popen(
                    ["smbclient", f"//127.0.0.1/{share}", "-p", str(rel.port), "-U",
                     f"{USER}%{PASSWORD}", "-m", "SMB3", "-t", "120", "-c", cmd],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
        time.sleep(rng.uniform(0.05, 2.5))
        # What was acknowledged before the kill counts; later is a race
        # with the client's own exit, so the kill decides.
        done_before = {id(p): p.poll() for _, _, p in procs}
        stats["killed"].append(kill(rel, rng))
        stats["crashes"] += 1
        for kind, what, p in procs:
            out = p.communicate(timeout=120)[0].decode(errors="replace")
            if kind == "flush":
                n, final, body = what
                key = f"{share}/{final}"
                # Lines: the login's, the write's, the flush's, the close's.
                # An answer printed at all came from the killed smbd before
                # it died.
                lines = out.splitlines()
                if len(lines) > 2 and lines[2].startswith("ok"):
                    acked[key] = body
                    stats["acked flushes"] += 1
                else:
                    maybe[key] = body
            elif kind == "move":
                n, final, body = what
                key, old = f"{share}/{final}", f"{share}/tmp{n}.bin"
                if done_before[id(p)] == 0 and "NT_STATUS" not in out:
                    acked[key] = body
                    stats["acked writes"] += 1
                else:
                    maybe[key] = body
                    maybe[old] = body
                moved.append((old, key, body, key in acked))
            elif kind == "movedir":
                n, _, bodies = what
                ok = done_before[id(p)] == 0 and "NT_STATUS" not in out
                for name, body in zip(("a.bin", "sub/b.bin"), bodies):
                    key, old = f"{share}/e{n}/{name}", f"{share}/d{n}/{name}"
                    if ok:
                        acked[key] = body
                    else:
                        maybe[key] = body
                        maybe[old] = body
                    moved.append((old, key, body, ok))
                stats["acked writes"] += ok
            elif kind in ("upload", "rename"):
                n, final, body = what
                key = f"{share}/{final}"
                if done_before[id(p)] == 0 and "NT_STATUS" not in out:
                    acked[key] = body
                    acked.pop(f"{share}/tmp{n}.bin", None)
                    stats["acked writes"] += 1
                else:
                    maybe[key] = body
                    if kind == "rename":
                        maybe[f"{share}/tmp{n}.bin"] = body
        # The next connect claims the dead process's journal.
        rel.smbclient(share, "ls")
        for _ in range(120):
            # Not on a terminal: one line per pending change, or none.
            pend = rel.ctl(share, "pending")
            if pend.returncode == 0 and pend.stdout.strip() == "":
                break
            time.sleep(0.5)
        assert pend.returncode == 0 and pend.stdout.strip() == "", \
            f"loop {i}: still pending: {pend.stdout}{pend.stderr}"
        # This loop's writes now; every earlier one again at the end (a
        # later kill must not lose them either), not after each loop.
        this_loop = {f"{share}/w{i}.bin", f"{share}/tmp{i}.bin",
                     f"{share}/d{i}/a.bin", f"{share}/d{i}/sub/b.bin",
                     f"{share}/e{i}/a.bin", f"{share}/e{i}/sub/b.bin"}
        check_in_s3(rel, {k: v for k, v in acked.items() if k in this_loop},
                    {k: v for k, v in maybe.items() if k in this_loop},
                    stats, f"loop {i} ({scenario})")
        for old, new, body, was_acked in moved:
            if old in this_loop:
                # Renamed: under the new name only; cut: under one of them.
                at_old, at_new = s3_get(rel, old), s3_get(rel, new)
                assert not was_acked or at_old is None, \
                    f"loop {i}: {old} still in S3 after its rename was acknowledged"
                assert at_old is not None or at_new is not None, \
                    f"loop {i}: the renamed {old} is under neither name"
        fsck = rel.ctl(share, "fsck", "--dry-run")
        assert fsck.returncode == 0 and fsck.stdout.rstrip().endswith("clean"), \
            f"loop {i} ({scenario}): fsck after kill -9:\n{fsck.stdout}{fsck.stderr}"
        # Cached blocks that survived the kill read right.
        for name, body in reads.items():
            p = rel.get(share, name, f"{rel.t}/v")
            assert p.returncode == 0, p.stdout + p.stderr
            assert file_digest(f"{rel.t}/v") == digest(body), \
                f"loop {i} ({scenario}): {name} read back wrong"
            stats["bytes verified"] += len(body)
        check_through_smb(rel, share, {k: v for k, v in acked.items() if k in this_loop},
                          stats, f"loop {i}")
    check_in_s3(rel, acked, maybe, stats, "after the last loop")
    check_through_smb(rel, share, acked, stats, "after the last loop")
    stats["smbd still the same"] = rel.smbd.poll() is None


def check_in_s3(rel, acked, maybe, stats, when):
    """Acknowledged bytes are in S3; bytes whose write was cut are there
    whole or not at all."""
    for key, body in acked.items():
        got = s3_get(rel, key)
        assert got is not None and digest(got) == digest(body), \
            f"{when}: acknowledged {key} lost or wrong in S3"
        stats["bytes verified"] += len(body)
    for key, body in maybe.items():
        got = s3_get(rel, key)
        assert got is None or digest(got) == digest(body), \
            f"{when}: {key} in S3 holds bytes never written"


def check_through_smb(rel, share, acked, stats, when):
    for key, body in acked.items():
        p = rel.get(share, key.split("/", 1)[1], f"{rel.t}/v")
        assert p.returncode == 0 and file_digest(f"{rel.t}/v") == digest(body), \
            f"{when}: {key} reads back wrong through SMB"
        stats["bytes verified"] += len(body)


def kill_smbd(rel, rng):
    rel.kill_and_restart()
    return "smbd"


def test_kill_9_at_random_moments_loses_no_acknowledged_write_and_serves_no_wrong_byte(rel):
    loops = int(os.environ.get("CRASH_LOOPS", "20"))
    stats = {"crashes": 0, "bytes verified": 0, "acked writes": 0, "acked flushes": 0,
             "scenarios": {}, "killed": []}
    crash_loop(rel, "crash", loops, stats, kill_smbd)
    print(f"    # kill -9 loop counts: {stats['crashes']} crashes survived "
          f"({stats['scenarios']}), {stats['acked writes']} acknowledged writes and "
          f"{stats['acked flushes']} flushes kept, "
          f"{stats['bytes verified'] >> 20} MiB verified")
    assert stats["crashes"] == loops, stats


# The same with `close = local`: the engine holds acknowledged closes,
# and the kill takes smbd, the engine, or both.

def kill_smbd_engine_or_both(rel, rng):
    victim = rng.choice(["smbd", "engine", "both"])
    if victim in ("engine", "both"):
        try:
            with open(f"{rel.t}/cache-crashlocal/engine.lock") as f:
                os.kill(int(f.read().split()[0]), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass  # none runs now: the kill found nothing to take
    if victim in ("smbd", "both"):
        rel.kill_and_restart()
    return victim


def test_kill_9_of_smbd_the_engine_or_both_loses_no_write_a_local_close_acknowledged(rel):
    loops = int(os.environ.get("CRASH_LOOPS_LOCAL", "10"))
    lstats = {"crashes": 0, "bytes verified": 0, "acked writes": 0, "acked flushes": 0,
              "scenarios": {}, "killed": []}
    crash_loop(rel, "crashlocal", loops, lstats,
               kill_smbd_engine_or_both)
    killed = {v: lstats["killed"].count(v) for v in set(lstats["killed"])}
    print(f"    # {lstats['crashes']} kills ({killed}; {lstats['scenarios']}), "
          f"{lstats['acked writes']} "
          f"acknowledged writes and {lstats['acked flushes']} flushes kept, "
          f"{lstats['bytes verified'] >> 20} MiB verified")
    assert lstats["crashes"] == loops, lstats
