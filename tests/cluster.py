"""A CTDB-clustered Samba of three nodes on this one machine (issue 22).

Each node is a network namespace (bfs-n0..2) with its own address on a
bridge (bfsbr0, 10.77.0.0/24): its own ctdbd, its own smbd with
`clustering = yes` on port 445, its own bucketfs cache folder and so its
own engine.  Namespaces rather than 127.0.0.x addresses because failover
is the point: CTDB moves a public address by adding it to the interface
of the node that takes it over (its 10.interface event script) and
announcing it with a gratuitous ARP, which needs an interface per node.
With every node on loopback, the address would stay on the one interface
all nodes share, and nothing would move.

The clients (smbclient, libsmb, impacket) run in the root namespace and
reach the public addresses 10.77.0.101..103 over the bridge; the S3 front
listens on the bridge's own address, 10.77.0.254.

tests/test_cluster.py and `make cluster-demo` (scripts/cluster_demo.py)
use it.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from world import BUCKET, PASSWORD, TOP, USER, sh, smb_global

BRIDGE, HOST_IP = "bfsbr0", "10.77.0.254"
NODES = 3
# CTDB's cluster lock: a lease object in the bucket (tools/bucketfs-lease).
LEASE_KEY = ".bucketfs/test-cluster-lock"
SCRIPTS = "/usr/share/ctdb/events/legacy"


def node_ip(i):
    return f"10.77.0.{i + 1}"


def public_ip(i):
    return f"10.77.0.{101 + i}"


def ns(i):
    return f"bfs-n{i}"


def in_ns(i, argv):
    return ["ip", "netns", "exec", ns(i), *argv]


# CTDB's folders are fixed at build time (/etc/ctdb, /run/ctdb,
# /var/lib/ctdb).  Its test mode (CTDB_TEST_MODE, CTDB_BASE) moves them,
# but also stops ctdbd checking which public addresses the kernel holds,
# and then a takeover fails ("Address already assigned") and bans nodes.
# So each node's processes get the node's own folders mounted over those
# three, in the mount namespace `ip netns exec` makes for each command.
NODE_MOUNTS = ('mkdir -p /run/ctdb && mount --bind "$B/etc" /etc/ctdb && '
               'mount --bind "$B/run" /run/ctdb && mount --bind "$B/var" /var/lib/ctdb && '
               'exec "$@"')


def share(name, prefix, *lines):
    """An smb.conf section of a bucketfs share on the test bucket under
    prefix, for Cluster's shares ({endpoint}, {creds}, {BUCKET} and
    {cache}, the node's own cache folder, are filled in per node)."""
    return (f"[{name}]\n  path = /\n  vfs objects = bucketfs\n"
            "  bucketfs:endpoint = {endpoint}\n  bucketfs:path style = yes\n"
            "  bucketfs:credentials file = {creds}\n  bucketfs:bucket = {BUCKET}\n"
            f"  bucketfs:prefix = {prefix}\n  bucketfs:cache dir = {{cache}}-{name}\n" +
            "".join(f"  {line}\n" for line in lines))


def port_open(ip, port, timeout=0.5):
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex((ip, port)) == 0


class Cluster:
    """Three nodes serving `shares` (smb.conf sections, as share() makes
    them; {cache} is the node's own folder for cache folders, {endpoint}
    the cluster's S3 front, {creds} its credentials file, {BUCKET} the
    test bucket)."""

    def __init__(self, root, s3_port, shares, log_level="1 bucketfs:3"):
        self.root = root
        self.s3_port = s3_port
        self.shares = shares
        self.log_level = log_level
        self.procs = {}
        self.front_port = None
        os.makedirs(root, exist_ok=True)

    # -- network ------------------------------------------------------------

    def net_up(self):
        self.net_down()
        sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
        sh(["ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE])
        sh(["ip", "link", "set", BRIDGE, "up"])
        for i in range(NODES):
            sh(["ip", "netns", "add", ns(i)])
            sh(["ip", "link", "add", f"bfsv{i}", "type", "veth", "peer", "name", "eth0",
                "netns", ns(i)])
            sh(["ip", "link", "set", f"bfsv{i}", "master", BRIDGE, "up"])
            sh(in_ns(i, ["ip", "addr", "add", f"{node_ip(i)}/24", "dev", "eth0"]))
            sh(in_ns(i, ["ip", "link", "set", "eth0", "up"]))
            sh(in_ns(i, ["ip", "link", "set", "lo", "up"]))

    @staticmethod
    def net_down():
        for i in range(NODES):
            subprocess.run(["ip", "netns", "pids", ns(i)], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns(i)], capture_output=True)
            subprocess.run(["ip", "link", "del", f"bfsv{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)

    # -- S3 -----------------------------------------------------------------

    def front_up(self):
        """The SigV4 front on the bridge's address, logging who asked."""
        self.front_port = 19100 + os.getpid() % 800
        front = os.path.join(TOP, "tests/integration/s3_front.py")
        # Faults a test switches while it runs (fault()), as the world's.
        self.control = f"{self.root}/front-control"
        self.spawn("front", [sys.executable, front, str(self.front_port), str(self.s3_port),
                             "--bind", HOST_IP, "--control", self.control])
        for _ in range(100):
            if port_open(HOST_IP, self.front_port):
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster's S3 front did not listen")

    def fault(self, text):
        """e.g. "PUT delay:30 -1"; "PUT delay:0 0" ends it."""
        with open(self.control, "w") as f:
            f.write(text)

    @property
    def endpoint(self):
        return f"http://{HOST_IP}:{self.front_port}"

    def front_log(self):
        with open(f"{self.root}/front.log") as f:
            return f.read()

    # -- nodes --------------------------------------------------------------

    def node_dir(self, i):
        return f"{self.root}/n{i}"

    def ctdb_base(self, i):
        return f"{self.node_dir(i)}/ctdb"

    def smb_log(self, i):
        with open(f"{self.node_dir(i)}/log.smbd", errors="replace") as f:
            return f.read()

    def node_exec(self, i, argv):
        """argv in node i's namespace, with its CTDB folders."""
        return in_ns(i, ["env", f"B={self.ctdb_base(i)}", "sh", "-c", NODE_MOUNTS, "sh",
                         *argv])

    def conf(self, i):
        return f"{self.node_dir(i)}/smb.conf"

    def write_ctdb_config(self, i):
        top = self.ctdb_base(i)
        base = f"{top}/etc"
        for d in ("run", "var/volatile", "var/persistent", "var/state", "etc/events/legacy"):
            os.makedirs(f"{top}/{d}", exist_ok=True)
        with open(f"{base}/nodes", "w") as f:
            f.write("".join(f"{node_ip(n)}\n" for n in range(NODES)))
        with open(f"{base}/public_addresses", "w") as f:
            f.write("".join(f"{public_ip(n)}/24 eth0\n" for n in range(NODES)))
        with open(f"{base}/ctdb.conf", "w") as f:
            f.write(f"""[logging]
  location = file:{self.node_dir(i)}/log.ctdb
  log level = NOTICE
[cluster]
  node address = {node_ip(i)}
  cluster lock = !/usr/local/sbin/bucketfs-lease -s /etc/ctdb/smb.conf -t 6 -k {LEASE_KEY} data
[legacy]
  realtime scheduling = false
  script log level = ERROR
""")
        # Quick to notice a node that went away (defaults: 25 s).  A node
        # CTDB blames for recoveries is banned for RecoveryBanPeriod
        # (default 300 s): on a loaded 2-core machine a revived node's
        # first recoveries can run late (seen in a full make test: node 2
        # BANNED after revive, the cluster not healthy within 90 s), so
        # the test cluster lets it back after 5 s instead.
        with open(f"{base}/ctdb.tunables", "w") as f:
            f.write("KeepaliveInterval=1\nKeepaliveLimit=3\nRecoverTimeout=30\n"
                    "MonitorInterval=5\nTakeoverTimeout=5\nRecoveryBanPeriod=5\n")
        shutil.copy("/etc/ctdb/functions", f"{base}/functions")
        for script in ("00.ctdb", "01.reclock", "05.system", "10.interface"):
            link = f"{base}/events/legacy/{script}.script"
            if not os.path.exists(link):
                os.symlink(f"{SCRIPTS}/{script}.script", link)

    def write_smb_config(self, i):
        d = self.node_dir(i)
        for sub in ("lock", "state", "cache", "pid", "private", "ncalrpc"):
            os.makedirs(f"{d}/{sub}", exist_ok=True)
        with open(f"{self.root}/creds", "w") as f:
            f.write("[default]\naws_access_key_id = S3RVER\naws_secret_access_key = S3RVER\n")
        os.chmod(f"{self.root}/creds", 0o600)
        with open(self.conf(i), "w") as f:
            f.write(smb_global(d, 445, self.log_level, loopback=False,
                               extra=("clustering = yes",
                                      f"ctdbd socket = {self.ctdb_base(i)}/run/ctdbd.socket",
                                      "netbios name = BFSCLUSTER"))
                    + self.shares.format(cache=f"{d}/bfscache", endpoint=self.endpoint,
                                         creds=f"{self.root}/creds", BUCKET=BUCKET))
        # The cluster lock's helper reads it at one path on every node (CTDB
        # wants the same `cluster lock` line everywhere): the node's own
        # /etc/ctdb, mounted over the real one (NODE_MOUNTS).
        shutil.copy(self.conf(i), f"{self.ctdb_base(i)}/etc/smb.conf")

    def spawn(self, name, argv, env=None):
        log = open(f"{self.root}/{name}.log", "a")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        self.procs[name] = p
        return p

    def start_ctdb(self, i):
        self.spawn(f"ctdbd-{i}", self.node_exec(i, ["ctdbd", "--interactive"]))

    def ctdb(self, i, *args, check=True, timeout=30):
        return sh(self.node_exec(i, ["ctdb", *args]), check=check, timeout=timeout)

    def start_smbd(self, i):
        env = dict(os.environ, AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER")
        # In the node's mounts: Samba opens the CTDB databases' files
        # where the node's ctdbd keeps them.
        self.spawn(f"smbd-{i}", self.node_exec(i, ["smbd", "--foreground",
                                                   "--no-process-group", "-s", self.conf(i)]),
                   env=env)

    def wait_healthy(self, nodes=None, timeout=90):
        """Every node in nodes OK in CTDB's view, each public address held."""
        nodes = list(range(NODES)) if nodes is None else nodes
        end = time.time() + timeout
        last = ""
        while time.time() < end:
            p = self.ctdb(nodes[0], "status", check=False)
            last = p.stdout + p.stderr
            ok = p.returncode == 0 and all(
                f"pnn:{n} {node_ip(n)}" in last and
                "OK" in last.split(f"pnn:{n} {node_ip(n)}")[1].split("\n")[0]
                for n in nodes)
            if ok and all(self.holder(public_ip(n), nodes[0]) in nodes for n in range(NODES)):
                return
            time.sleep(1)
        # Why: the monitor event's failures are in each node's ctdbd log.
        logs = ""
        for n in nodes:
            try:
                with open(f"{self.root}/ctdbd-{n}.log", errors="replace") as f:
                    logs += f"--- ctdbd-{n}.log, last lines:\n" + "".join(f.readlines()[-8:])
            except OSError:
                pass
        raise RuntimeError(f"the cluster did not become healthy:\n{last}\n{logs}")

    def holder(self, ip, asking=0):
        """The node holding public address ip, as node `asking` sees it."""
        p = self.ctdb(asking, "ip", "-X", check=False)
        for line in p.stdout.splitlines():
            f = line.strip("|").split("|")
            if len(f) >= 2 and f[0] == ip:
                return int(f[1])
        return -1

    def wait_smb(self, ip, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            if port_open(ip, 445):
                return
            time.sleep(0.2)
        raise RuntimeError(f"nothing answers SMB on {ip}")

    def start(self):
        # CTDB's 10.interface script checks each public interface's link
        # with ethtool; without it every monitor event fails.
        if shutil.which("ethtool") is None:
            raise RuntimeError("ethtool is missing (scripts/deps.sh installs it): "
                               "CTDB's 10.interface monitor needs it")
        self.net_up()
        self.front_up()
        for i in range(NODES):
            self.write_ctdb_config(i)
            self.write_smb_config(i)
            self.start_ctdb(i)
        self.wait_healthy()
        # passdb.tdb is a persistent CTDB database: set once, on every node.
        sh(self.node_exec(0, ["smbpasswd", "-c", self.conf(0), "-s", "-a", USER]),
           input=f"{PASSWORD}\n{PASSWORD}\n")
        for i in range(NODES):
            self.start_smbd_waiting(i)
        for i in range(NODES):
            self.wait_smb(public_ip(i))

    def start_smbd_waiting(self, i, tries=5):
        """smbd on node i, listening.  One at a time: smbds of one cluster
        starting together can find the version lock (a cluster-wide
        g_lock) busy and refuse to start (NT_STATUS_POSSIBLE_DEADLOCK)."""
        for _ in range(tries):
            self.start_smbd(i)
            p = self.procs[f"smbd-{i}"]
            end = time.time() + 30
            while time.time() < end and p.poll() is None:
                if port_open(node_ip(i), 445):
                    return
                time.sleep(0.2)
            if p.poll() is None:
                break
            time.sleep(1)
        raise RuntimeError(f"smbd of node {i} did not start: see {self.node_dir(i)}/log.smbd")

    def kill_node(self, i):
        """Node i is gone as a host goes: ctdbd and smbd killed (-9), its
        link down (its addresses with it)."""
        for name in (f"smbd-{i}", f"ctdbd-{i}"):
            p = self.procs.get(name)
            if p is not None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=30)
        subprocess.run(["pkill", "-KILL", "-f", f"bucketfsd -s {self.conf(i)} "])
        sh(in_ns(i, ["ip", "link", "set", "eth0", "down"]))

    def revive(self, i):
        """Node i back after kill_node: link up, ctdbd, smbd."""
        sh(in_ns(i, ["ip", "link", "set", "eth0", "up"]))
        self.start_ctdb(i)
        self.wait_healthy()
        self.start_smbd_waiting(i)

    def stop(self):
        for name, p in self.procs.items():
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for name, p in self.procs.items():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-KILL", "-f", f"bucketfsd -s {self.root}/"])
        # Processes ctdbd left in a namespace (event scripts, helpers).
        for i in range(NODES):
            pids = subprocess.run(["ip", "netns", "pids", ns(i)], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        self.net_down()

    # -- clients ------------------------------------------------------------

    def smbclient(self, ip, share, commands, check=True):
        return sh(["smbclient", f"//{ip}/{share}", "-U", f"{USER}%{PASSWORD}", "-m", "SMB3",
                   "-c", commands], check=check)
