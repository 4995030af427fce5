"""Several gateways on one bucket: a CTDB-clustered Samba of three nodes
(issue 22), each with its own cache folder and engine, started on this
machine in network namespaces (tests/cluster.py).  Clients reach the
nodes' public addresses, which CTDB moves when a node dies."""
import fcntl
import os
import re
import subprocess
import threading
import time

import pytest
from impacket import smb as smb_v1
from impacket import smb3
from impacket import smb3structs as s3
from impacket.smbconnection import SMBConnection, SessionError

from cluster import NODES, Cluster, node_ip, public_ip, share
from world import PASSWORD, USER, make_file, sha256

SHARES = (share("data", "cluster/", "bucketfs:metadata ttl = 2", "read only = no") +
          share("now", "cluster-now/", "bucketfs:metadata ttl = 300", "bucketfs:close = s3",
                "read only = no") +
          share("nowlocal", "cluster-nowlocal/", "bucketfs:metadata ttl = 300",
                "read only = no") +
          share("quiet", "cluster-quiet/", "bucketfs:metadata ttl = 300", "bucketfs:close = s3",
                "read only = no") +
          share("leftlocal", "cluster-leftlocal/", "bucketfs:metadata ttl = 300",
                "read only = no"))


@pytest.fixture(scope="module")
def cl(world):
    c = Cluster(f"{world.tmp}/cluster", world.s3_port, SHARES, log_level="1 bucketfs:5")
    c.world = world
    try:
        c.start()
        yield c
    finally:
        c.stop()


def connect(ip, share_name="data"):
    """One SMB 3.0 connection to ip, its tree connected: (conn, tree id)."""
    conn = SMBConnection(ip, ip, preferredDialect=s3.SMB2_DIALECT_30, timeout=30)
    conn.login(USER, PASSWORD)
    return conn, conn.connectTree(share_name)


def mount_everywhere(cl, share_name):
    """Each node lists the share's root (fresh for its TTL) and keeps a
    client connected to it, as a training box's mount does: the smbd that
    hears other nodes' changes.  The connections, to log off."""
    mounts = []
    for n in range(NODES):
        cl.smbclient(node_ip(n), share_name, "ls")
        mounts.append(connect(node_ip(n), share_name)[0])
    return mounts


def wait_seen(cl, path):
    """Until every node shows path, put in S3 behind their backs: past
    their TTL one listing serves the index and revalidates in the
    background, the next shows the change."""
    folder, name = path.rsplit("/", 1) if "/" in path else ("", path)
    for n in range(NODES):
        end = time.monotonic() + 30
        while True:
            p = cl.smbclient(public_ip(n), "data", f'cd "{folder or "/"}"; ls', check=False)
            if f" {name} " in p.stdout or time.monotonic() > end:
                break
            time.sleep(0.5)
        assert f" {name} " in p.stdout, (n, p.stdout)


def file_ids(ip, folder):
    """name -> the FileId (inode) node ip shows for each entry of folder
    (FileIdBothDirectoryInformation, which Windows asks for)."""
    conn, tid = connect(ip)
    smb = conn.getSMBServer()
    ids = {}
    try:
        fid = smb.create(tid, folder, s3.FILE_READ_ATTRIBUTES | s3.FILE_READ_DATA,
                         s3.FILE_SHARE_READ | s3.FILE_SHARE_WRITE, s3.FILE_DIRECTORY_FILE,
                         s3.FILE_OPEN, 0)
        while True:
            try:
                res = smb.queryDirectory(tid, fid, "*", maxBufferSize=65535,
                                         informationClass=s3.FILEID_BOTH_DIRECTORY_INFORMATION)
            except smb3.SessionError as e:
                if e.get_error_code() != 0x80000006:  # STATUS_NO_MORE_FILES
                    raise
                break
            while res:
                info = smb_v1.SMBFindFileIdBothDirectoryInfo(smb_v1.SMB.FLAGS2_UNICODE)
                info.fromString(res)
                name = info["FileName"].decode("utf-16le")
                if name not in (".", ".."):
                    ids[name] = info["FileID"]
                res = res[info["NextEntryOffset"]:] if info["NextEntryOffset"] else b""
        smb.close(tid, fid)
    finally:
        conn.logoff()
    return ids


def test_each_node_lists_and_reads_the_bucket_alike_and_gives_names_the_same_file_ids(cl):
    w = cl.world
    src = w.make("cluster-seed.bin", 3 << 20)
    for i in range(60):
        w.s3tool("put", f"cluster/seed/{i:03d}-{'x' * (i % 7)}.bin", src)
    wait_seen(cl, "seed/059-xxx.bin")
    views = []
    for n in range(NODES):
        out = cl.smbclient(public_ip(n), "data", f"cd seed; ls; get 000-.bin {w.tmp}/c{n}.bin")
        assert sha256(f"{w.tmp}/c{n}.bin") == sha256(src), n
        views.append(file_ids(public_ip(n), "seed"))
        assert len(views[-1]) == 60, out.stdout
    # The same file ID for a name on every node (Samba keys share modes
    # and locks on it): derived from the key alone.
    assert views[0] == views[1] == views[2]
    assert len(set(views[0].values())) == 60


def versions_of(path, *versions, chunk=1 << 16):
    """Which of the versions each 64 KiB of path holds, as runs
    ("0-127: v0, 128-129: none"), and its size."""
    data = open(path, "rb").read()
    olds = [open(v, "rb").read() for v in versions]
    runs = []
    for i in range(0, (len(data) + chunk - 1) // chunk):
        piece = data[i * chunk:(i + 1) * chunk]
        which = next((f"v{n}" for n, o in enumerate(olds) if o[i * chunk:(i + 1) * chunk] == piece),
                     "none")
        if runs and runs[-1][2] == which:
            runs[-1][1] = i
        else:
            runs.append([i, i, which])
    return f"{len(data)} bytes; " + ", ".join(f"{a}-{b}: {v}" for a, b, v in runs)


def test_a_file_closed_on_one_node_is_read_on_another_within_its_ttl(cl):
    w = cl.world
    src = make_file(f"{w.tmp}/cluster-ckpt.bin", 8 << 20)
    cl.smbclient(public_ip(0), "data", f"put {src} ckpt-a.pt")
    start = time.monotonic()
    # Node A's engine uploads it (close = local), then B's TTL (2 s) runs
    # out: a generous bound, the point is that it comes.
    while time.monotonic() - start < 60:
        p = cl.smbclient(public_ip(1), "data", f"get ckpt-a.pt {w.tmp}/ckpt-b.bin", check=False)
        if p.returncode == 0:
            break
        time.sleep(0.5)
    assert p.returncode == 0, p.stdout
    assert sha256(f"{w.tmp}/ckpt-b.bin") == sha256(src)
    print(f"    # seen on node B {time.monotonic() - start:.1f} s after the close on node A")
    # Replaced through B: A serves the new bytes once its TTL is past,
    # never the old ones mixed in (ETag identity).  A read on A that meets
    # the new object under the old one's ETag fails (EIO) rather than mix
    # them, as on one node (test_an_object_replaced_in_s3_is_served_new_
    # after_the_ttl_never_mixed): CI, with the other lane busy, saw one.
    src2 = make_file(f"{w.tmp}/cluster-ckpt2.bin", 8 << 20)
    cl.smbclient(public_ip(1), "data", f"put {src2} ckpt-a.pt")
    start = time.monotonic()
    got = None
    while time.monotonic() - start < 60:
        p = cl.smbclient(public_ip(0), "data", f"get ckpt-a.pt {w.tmp}/ckpt-c.bin", check=False)
        if p.returncode == 0:
            got = sha256(f"{w.tmp}/ckpt-c.bin")
            if got not in (sha256(src), sha256(src2)):
                w.s3tool("get", "cluster/ckpt-a.pt", f"{w.tmp}/ckpt-s3.bin")
                raise AssertionError(
                    "a mix of two versions: node A served "
                    + versions_of(f"{w.tmp}/ckpt-c.bin", src, src2) + "; S3 holds "
                    + versions_of(f"{w.tmp}/ckpt-s3.bin", src, src2))
            if got == sha256(src2):
                break
        else:
            assert "NT_STATUS_IO_DEVICE_ERROR" in p.stdout + p.stderr, p.stdout + p.stderr
        time.sleep(0.5)
    assert got == sha256(src2), "node A did not serve the new bytes within 60 s"


def test_a_share_mode_and_a_byte_range_lock_taken_through_one_node_hold_on_another(cl):
    w = cl.world
    src = make_file(f"{w.tmp}/cluster-locked.bin", 1 << 20)
    w.s3tool("put", "cluster/locked.bin", src)
    wait_seen(cl, "locked.bin")
    a, ta = connect(public_ip(0))
    b, tb = connect(public_ip(1))
    try:
        # A opens it for writing, sharing only reads.
        fa = a.openFile(ta, "locked.bin", desiredAccess=s3.FILE_READ_DATA | s3.FILE_WRITE_DATA,
                        shareMode=s3.FILE_SHARE_READ)
        with pytest.raises(SessionError) as e:
            b.openFile(tb, "locked.bin", desiredAccess=s3.FILE_WRITE_DATA,
                       shareMode=s3.FILE_SHARE_READ | s3.FILE_SHARE_WRITE)
        assert e.value.getErrorCode() == 0xC0000043, hex(e.value.getErrorCode())  # SHARING_VIOLATION
        fb = b.openFile(tb, "locked.bin", desiredAccess=s3.FILE_READ_DATA,
                        shareMode=s3.FILE_SHARE_READ | s3.FILE_SHARE_WRITE)
        # A locks bytes 0..4095; B's lock of them is refused, of others not.
        lock(a, ta, fa, 0, 4096)
        with pytest.raises(SessionError) as e:
            lock(b, tb, fb, 0, 4096)
        assert e.value.getErrorCode() == 0xC0000055, hex(e.value.getErrorCode())  # LOCK_NOT_GRANTED
        lock(b, tb, fb, 8192, 4096)
        a.closeFile(ta, fa)
        # A's handle closed: its lock went with it.
        lock(b, tb, fb, 0, 4096)
        b.closeFile(tb, fb)
    finally:
        a.logoff()
        b.logoff()


def lock(conn, tid, fid, offset, length):
    """An exclusive byte-range lock that fails at once (SMB2 LOCK; impacket's
    own joins the elements as text)."""
    smb = conn.getSMBServer()
    el = s3.SMB2_LOCK_ELEMENT()
    el["Offset"], el["Length"] = offset, length
    el["Flags"] = s3.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | s3.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
    packet = smb.SMB_PACKET()
    packet["Command"] = s3.SMB2_LOCK
    packet["TreeID"] = tid
    req = s3.SMB2Lock()
    req["FileID"] = fid
    req["LockCount"] = 1
    req["Locks"] = el.getData()
    packet["Data"] = req
    try:
        smb.recvSMB(smb.sendSMB(packet)).isValidAnswer(0)  # raises if not
    except smb3.SessionError as e:
        raise SessionError(e.get_error_code(), e.get_error_packet())


def test_when_a_node_dies_its_address_moves_and_a_reader_goes_on_byte_exact(cl):
    w = cl.world
    src = make_file(f"{w.tmp}/cluster-big.bin", 48 << 20)
    w.s3tool("put", "cluster/big.bin", src)
    wait_seen(cl, "big.bin")
    with open(src, "rb") as f:
        want = f.read()
    ip = public_ip(2)
    victim = cl.holder(ip)
    done = {"offset": 0, "reconnects": 0, "error": None}

    def reader():
        """A client that reads in 1 MiB requests and, when its
        connection drops, connects again and goes on where it was."""
        conn = fid = None
        deadline = time.monotonic() + 120
        while done["offset"] < len(want) and time.monotonic() < deadline:
            try:
                if conn is None:
                    conn, tid = connect(ip)
                    fid = conn.openFile(tid, "big.bin", desiredAccess=s3.FILE_READ_DATA,
                                        shareMode=s3.FILE_SHARE_READ)
                data = conn.readFile(tid, fid, done["offset"], 1 << 20)
                if data != want[done["offset"]:done["offset"] + len(data)]:
                    done["error"] = f"wrong bytes at {done['offset']}"
                    return
                done["offset"] += len(data)
                time.sleep(0.05)  # slow enough for the node to die meanwhile
            except Exception:
                conn = None
                done["reconnects"] += 1
                time.sleep(0.5)

    t = threading.Thread(target=reader)
    t.start()
    while done["offset"] < (8 << 20) and t.is_alive():
        time.sleep(0.1)
    killed = time.monotonic()
    cl.kill_node(victim)
    t.join(timeout=150)
    try:
        assert not t.is_alive(), "the reader is stuck"
        assert done["error"] is None, done["error"]
        assert done["offset"] == len(want), done
        assert done["reconnects"] >= 1, "the reader never noticed the node go"
        taker = cl.holder(ip, asking=(victim + 1) % NODES)
        assert taker not in (victim, -1), taker
        print(f"    # node {victim} killed; {ip} answered from node {taker}; the reader "
              f"reconnected {done['reconnects']} time(s) and finished "
              f"{time.monotonic() - killed:.1f} s later")
    finally:
        cl.revive(victim)
    # Back: it serves again, and takes its share of addresses.
    out = cl.smbclient(node_ip(victim), "data", "ls")
    assert "big.bin" in out.stdout


# ---- the cluster lock in the bucket (tools/bucketfs-lease) ------------------

LEASE = "/usr/local/sbin/bucketfs-lease"


def lease_conf(w):
    """An smb.conf with one share on the world's front, for the helper."""
    conf = f"{w.tmp}/lease.conf"
    with open(conf, "w") as f:
        f.write(f"[global]\n[lease]\n  path = /\n  vfs objects = bucketfs\n"
                f"  bucketfs:endpoint = {w.endpoint}\n  bucketfs:path style = yes\n"
                f"  bucketfs:credentials file = {w.tmp}/creds\n"
                f"  bucketfs:bucket = bucketfs-test\n  bucketfs:cache dir = {w.tmp}/lease-cache\n")
    return conf


def helper(conf, key, seconds=6):
    """A helper as ctdbd runs it, and its one-byte answer."""
    p = subprocess.Popen([LEASE, "-s", conf, "-k", key, "-t", str(seconds), "lease"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return p, p.stdout.read(1)


def test_the_cluster_lock_lease_is_held_once_taken_over_after_its_holder_dies_and_given_back(world):
    conf, key = lease_conf(world), f".bucketfs/lease-{time.monotonic_ns()}"
    a, got = helper(conf, key)
    assert got == b"0", (got, a.stderr.read() if a.poll() is not None else "")
    b, got = helper(conf, key)
    assert got == b"1"  # held by a, alive
    assert b.wait(timeout=10) == 0
    a.kill()  # dies holding it: no renewal, no release
    a.wait()
    died = time.monotonic()
    while True:
        c, got = helper(conf, key)
        if got == b"0":
            break
        assert got == b"1", got
        c.wait(timeout=10)
        assert time.monotonic() - died < 30, "never taken over"
        time.sleep(0.5)
    took = time.monotonic() - died
    # a renewed every 2 s; the lease runs out 6 s (and Last-Modified's
    # rounding) after its last renewal by the server's clock.
    assert took >= 4, f"taken over {took:.1f} s after its holder died: before it ran out"
    print(f"    # taken over {took:.1f} s after its holder was killed (lease of 6 s)")
    c.terminate()  # ctdbd ends it: the lease is given back...
    assert c.wait(timeout=20) == 0, c.stderr.read()
    d, got = helper(conf, key)
    assert got == b"0"  # ...and taken at once
    # Taken from under it (as another node would, after a pause of d's):
    # d sees it at its next renewal and exits, which ctdbd reads as lost.
    sh_put(world, key)
    assert d.wait(timeout=15) == 1
    assert b"lost" in d.stderr.read()


def sh_put(world, key):
    src = f"{world.tmp}/lease-other.bin"
    with open(src, "w") as f:
        f.write("another writer\n")
    world.s3tool("put", key, src)


def test_a_helper_that_cannot_reach_s3_answers_error_not_taken(world):
    conf = f"{world.tmp}/lease-dead.conf"
    with open(lease_conf(world)) as f:
        text = f.read()
    with open(conf, "w") as f:
        f.write(text.replace(world.endpoint, f"http://127.0.0.1:{world.dead_port}"))
    p, got = helper(conf, ".bucketfs/lease-dead")
    assert got == b"3"
    assert p.wait(timeout=60) != 0
    assert b"lease s3 object" in p.stderr.read()


def test_with_close_local_a_dead_nodes_acknowledged_writes_go_up_when_it_comes_back(cl):
    """bucketfs:close = local: node A acknowledged the close, its engine
    had not uploaded it when A died.  Nothing is lost: the bytes wait in
    A's staging folder and A's engine uploads them once A is back (at
    its first tree connect, or with bucketfsd's systemd unit)."""
    w = cl.world
    src = make_file(f"{w.tmp}/cluster-pending.bin", 4 << 20)
    a = cl.holder(public_ip(1))
    cl.fault("PUT deny -1")  # A's uploads fail (and wait for a retry)
    try:
        started = time.monotonic()
        cl.smbclient(public_ip(1), "data", f"put {src} pending.pt")
        assert time.monotonic() - started < 30, "the close waited for S3"
        time.sleep(2)  # its engine tries (and fails) meanwhile
        cl.kill_node(a)
    finally:
        cl.fault("PUT deny 0")
    staged = os.listdir(f"{cl.node_dir(a)}/bfscache-data/staging")
    assert staged, "the acknowledged bytes are not in A's staging folder"
    assert "cluster/pending.pt" not in w.s3_keys("cluster/")
    cl.revive(a)
    cl.smbclient(node_ip(a), "data", "ls")  # its first tree connect
    end = time.monotonic() + 60
    while "cluster/pending.pt" not in w.s3_keys("cluster/") and time.monotonic() < end:
        time.sleep(0.5)
    assert w.s3_sha256("cluster/pending.pt") == sha256(src)
    other = (a + 1) % NODES
    wait_seen(cl, "pending.pt")
    cl.smbclient(node_ip(other), "data", f"get pending.pt {w.tmp}/pending-b.bin")
    assert sha256(f"{w.tmp}/pending-b.bin") == sha256(src)


def test_the_cluster_holds_its_lock_as_a_lease_in_the_bucket(cl):
    """CTDB's cluster lock is bucketfs-lease: the leader took the lease
    object and renews it (conditional PUTs, If-Match) every 2 s."""
    out = cl.ctdb(0, "getreclock").stdout
    assert "bucketfs-lease" in out, out
    before = cl.front_log().count(".bucketfs/test-cluster-lock")
    time.sleep(5)
    renewals = [line for line in cl.front_log().splitlines()
                if line.startswith("PUT ") and "test-cluster-lock" in line
                and "if-match=None" not in line]
    assert renewals, "no renewal of the lease"
    assert cl.front_log().count(".bucketfs/test-cluster-lock") > before, "not renewed meanwhile"


def test_a_change_through_one_node_shows_on_the_others_at_once_not_after_their_ttl(cl):
    """A TTL of 300 s: without word from node 0 (CTDB messaging), nodes 1
    and 2 would show their listing of 300 s ago.  Each node has a client
    connected to the share all along, as a training box's mount is: its
    smbd is the one that hears."""
    w = cl.world
    src = make_file(f"{w.tmp}/cluster-now.bin", 2 << 20)
    mounts = mount_everywhere(cl, "now")

    def shown(n, name, present=True, within=10):
        end = time.monotonic() + within
        while True:
            out = cl.smbclient(node_ip(n), "now", "ls").stdout
            if (f" {name} " in out) == present or time.monotonic() > end:
                return (f" {name} " in out) == present
            time.sleep(0.3)

    cl.smbclient(node_ip(0), "now", f"put {src} fresh.bin")
    assert shown(1, "fresh.bin"), "node 1 did not hear of the new file"
    cl.smbclient(node_ip(1), "now", f"get fresh.bin {w.tmp}/now-b.bin")
    assert sha256(f"{w.tmp}/now-b.bin") == sha256(src)
    cl.smbclient(node_ip(1), "now", "rename fresh.bin renamed.bin")
    assert shown(2, "renamed.bin") and shown(2, "fresh.bin", present=False)
    cl.smbclient(node_ip(2), "now", "del renamed.bin")
    assert shown(0, "renamed.bin", present=False), "node 0 still shows the deleted file"
    for conn in mounts:
        conn.logoff()


def test_a_node_with_no_client_when_a_change_was_told_lists_again_at_its_next_client(cl):
    """Node 1 listed the share, then its client left: no process of node 1
    heard when node 0 changed the folder.  Its next client is the first to
    hear again, and what node 1 kept from before is listed again at once
    (TTL 300 s: without that it would show the old listing)."""
    w = cl.world
    src = make_file(f"{w.tmp}/cluster-quiet.bin", 1 << 20)
    assert " late.bin " not in cl.smbclient(node_ip(1), "quiet", "ls").stdout
    # Its smbd has gone with the client: nobody holds the hearers' lock.
    lock = f"{cl.node_dir(1)}/bfscache-quiet/cluster-listeners.lock"
    end = time.monotonic() + 20
    with open(lock) as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                break
            except BlockingIOError:
                assert time.monotonic() < end, "node 1 still has a hearer of the share"
                time.sleep(0.2)
    cl.smbclient(node_ip(0), "quiet", f"put {src} late.bin")  # nobody on node 1 hears
    out = cl.smbclient(node_ip(1), "quiet", "ls").stdout
    assert " late.bin " in out, out
    log = cl.smb_log(1)
    assert re.search(r"share quiet: the first on this node to hear other nodes' changes: "
                     r"the \d+ folder listings kept from before are listed again", log), log[-2000:]


def test_an_upload_the_engine_ends_after_its_client_left_is_told_to_the_other_nodes(cl):
    """close = local, and the client leaves right after its close (S3 slow:
    the upload takes 3 s more): no smbd of node 0 is left to tell the other
    nodes when the engine's upload ends, so the engine tells ctdbd itself
    (TTL 300 s on nodes 1 and 2, which keep a client connected)."""
    w = cl.world
    src = make_file(f"{w.tmp}/cluster-left.bin", 2 << 20)
    mounts = []
    for n in (1, 2):
        cl.smbclient(node_ip(n), "leftlocal", "ls")
        mounts.append(connect(node_ip(n), "leftlocal")[0])
    cl.fault("PUT delay:3 1 left.bin")
    try:
        cl.smbclient(node_ip(0), "leftlocal", f"put {src} left.bin")  # and it leaves
        end = time.monotonic() + 30
        while True:
            out = [cl.smbclient(node_ip(n), "leftlocal", "ls").stdout for n in (1, 2)]
            if all(" left.bin " in o for o in out):
                break
            assert time.monotonic() < end, out
            time.sleep(0.3)
    finally:
        cl.fault("PUT delay:0 0")
        for conn in mounts:
            conn.logoff()
    with open(f"{cl.node_dir(0)}/bfscache-leftlocal/engine.log", errors="replace") as f:
        log = f.read()
    assert "told the other nodes that cluster-leftlocal/left.bin is in S3" in log, log[-2000:]
    assert w.s3_sha256("cluster-leftlocal/left.bin") == sha256(src)


def test_an_upload_or_a_delete_by_a_nodes_engine_shows_on_the_others_once_done_in_s3(cl):
    """close = local: node 0's engine uploads after the close; it tells
    one of node 0's smbds, which tells the other nodes (TTL 300 s).  A
    delete on node 1 is its engine's too, and told the same way."""
    w = cl.world
    src = make_file(f"{w.tmp}/cluster-nowlocal.bin", 3 << 20)
    mounts = mount_everywhere(cl, "nowlocal")
    try:
        cl.smbclient(node_ip(0), "nowlocal", f"put {src} local.bin")
        end = time.monotonic() + 20
        while True:
            out = [cl.smbclient(node_ip(n), "nowlocal", "ls").stdout for n in (1, 2)]
            if all(" local.bin " in o for o in out) or time.monotonic() > end:
                break
            time.sleep(0.3)
        assert all(" local.bin " in o for o in out), out
        cl.smbclient(node_ip(2), "nowlocal", f"get local.bin {w.tmp}/nowlocal-c.bin")
        assert sha256(f"{w.tmp}/nowlocal-c.bin") == sha256(src)
        cl.smbclient(node_ip(1), "nowlocal", "del local.bin")
        end = time.monotonic() + 20
        while True:
            out = [cl.smbclient(node_ip(n), "nowlocal", "ls").stdout for n in (0, 2)]
            if all(" local.bin " not in o for o in out) or time.monotonic() > end:
                break
            time.sleep(0.3)
        assert all(" local.bin " not in o for o in out), out
    finally:
        for conn in mounts:
            conn.logoff()



def test_a_file_replaced_again_and_again_through_two_nodes_is_read_whole_each_time(cl):
    """Two nodes take turns: one replaces an 8 MiB file (close = local),
    the other reads it until it has the new version.  Every read that
    succeeds gives one version whole, an older one or the newest; a read
    that meets the replacement under way fails with EIO, never a mix or a
    file cut short (with s3rver's in-place writes, tests/s3server/
    atomic.js, one read in the sixth round came back cut short)."""
    w = cl.world
    versions = [make_file(f"{w.tmp}/turns-0.bin", 8 << 20)]
    cl.smbclient(public_ip(0), "data", f"put {versions[0]} turns.pt")
    counts = {"old": 0, "eio": 0}
    for k in range(1, 9):
        versions.append(make_file(f"{w.tmp}/turns-{k}.bin", 8 << 20))
        hashes = [sha256(v) for v in versions]
        writer, reader = (1, 0) if k % 2 else (0, 1)
        cl.smbclient(public_ip(writer), "data", f"put {versions[-1]} turns.pt")
        start = time.monotonic()
        while True:
            assert time.monotonic() - start < 60, f"round {k}: node {reader} never served the new version"
            p = cl.smbclient(public_ip(reader), "data", f"get turns.pt {w.tmp}/turns-got.bin",
                             check=False)
            if p.returncode != 0:
                assert "NT_STATUS_IO_DEVICE_ERROR" in p.stdout + p.stderr, p.stdout + p.stderr
                counts["eio"] += 1
            else:
                got = sha256(f"{w.tmp}/turns-got.bin")
                assert got in hashes, (f"round {k}: node {reader} served "
                                       + versions_of(f"{w.tmp}/turns-got.bin", *versions))
                if got == hashes[-1]:
                    break
                counts["old"] += 1
            time.sleep(0.1)
    print(f"    # 8 rounds: {counts['old']} reads of an older version whole, "
          f"{counts['eio']} refused with EIO, none mixed or cut short")
